//! `[admin]`: the admin HTTP listener, its token and its bounds.

use std::time::Duration;

use serde::Deserialize;

use super::units::duration;
use super::{Config, ConfigError, invalid};

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` of the admin HTTP listener; empty string turns it off.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Bearer token that every command (POST) must carry, on any address; reads (GET) never
    /// need it. At least 16 bytes. Without it, commands are refused unless
    /// `allow_unauthenticated_commands` is set. `AMQP_AGENT_ADMIN_TOKEN` overrides it.
    #[serde(default)]
    pub token: Option<String>,
    /// Development only: accept commands without a token when none is configured. Refused on a
    /// listener that is not on loopback; `check-config` warns about it.
    #[serde(default)]
    pub allow_unauthenticated_commands: bool,
    /// Most admin connections open at once. One more is answered `503` and closed at once, so
    /// the listener never holds more file descriptors than this.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
    /// A connection must send its complete request head within this time, else it is closed.
    #[serde(
        default = "default_admin_header_timeout",
        deserialize_with = "duration"
    )]
    pub header_timeout: Duration,
    /// Longest time a request may take once its head has arrived (handler and response).
    #[serde(
        default = "default_admin_request_timeout",
        deserialize_with = "duration"
    )]
    pub request_timeout: Duration,
    /// Host names (without port) a request's `Host` header may carry, besides `localhost` and
    /// an IP address of the listener's own (its address, loopback, or the unspecified address
    /// it is bound to). Any other `Host` is refused on every route, which closes DNS rebinding:
    /// a web page whose name was made to resolve to the agent still sends its own name. Add the
    /// names your probes, scrapers and operators use (`agent.internal`); compared without case
    /// and without a trailing dot.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Link from a dead letter's trace id to a tracing UI: an `http://` or `https://` URL
    /// holding `{trace_id}`, replaced by the 32 hex digits (e.g.
    /// `https://jaeger.internal/trace/{trace_id}`). Unset: the trace id is shown as text.
    #[serde(default)]
    pub trace_url: Option<String>,
    /// Announce this agent to the others of the vhost, list them on the dashboard and take
    /// their commands (docs/dashboard.md, "The fleet"): a heartbeat every `fleet_interval` on
    /// the broker the agent already uses.
    #[serde(default)]
    pub fleet: bool,
    /// The secret that signs fleet heartbeats and commands (HMAC-SHA256), at least 16 bytes;
    /// every agent of the fleet needs the same. Unset: `token`. Without either, commands from
    /// other agents are refused. `AMQP_AGENT_FLEET_SECRET` overrides it.
    #[serde(default)]
    pub fleet_secret: Option<String>,
    /// How often the agent announces itself (1s to 60s); an agent not heard for three times its
    /// own interval is shown as unreachable.
    #[serde(default = "default_fleet_interval", deserialize_with = "duration")]
    pub fleet_interval: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token: None,
            allow_unauthenticated_commands: false,
            max_connections: default_admin_max_connections(),
            header_timeout: default_admin_header_timeout(),
            request_timeout: default_admin_request_timeout(),
            allowed_hosts: Vec::new(),
            trace_url: None,
            fleet: false,
            fleet_secret: None,
            fleet_interval: default_fleet_interval(),
        }
    }
}

impl AdminConfig {
    /// The secret of the fleet protocol: `fleet_secret`, else `token`.
    #[must_use]
    pub(crate) fn fleet_key(&self) -> Option<&str> {
        self.fleet_secret.as_deref().or(self.token.as_deref())
    }

    /// The link of a trace id (`trace_url` with it), when `trace_url` is set.
    #[must_use]
    pub(crate) fn trace_link(&self, trace_id: &str) -> Option<String> {
        self.trace_url.as_deref().map(|t| trace_link(t, trace_id))
    }
}

fn default_admin_max_connections() -> usize {
    64
}
fn default_admin_header_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_admin_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_admin_listen() -> String {
    "127.0.0.1:9466".to_owned()
}

fn default_fleet_interval() -> Duration {
    Duration::from_secs(5)
}

impl Config {
    pub(super) fn validate_admin(&self) -> Result<(), ConfigError> {
        if self
            .admin
            .fleet_secret
            .as_deref()
            .is_some_and(|t| t.len() < 16)
        {
            return Err(invalid("admin.fleet_secret", "must be at least 16 bytes"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.admin.fleet_interval)
        {
            return Err(invalid("admin.fleet_interval", "must be 1s to 60s"));
        }
        // Checked with or without a listener: the CLI and the fleet use the token too.
        if self.admin.token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(invalid("admin.token", "must be at least 16 bytes"));
        }
        if self.admin.listen.is_empty() {
            return Ok(());
        }
        let addr: std::net::SocketAddr = self.admin.listen.parse().map_err(|_| {
            invalid(
                "admin.listen",
                "is not `ip:port` (the value is not repeated here)",
            )
        })?;
        let loopback = addr.ip().is_loopback();
        let a = &self.admin;
        if a.token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(invalid("admin.token", "must be at least 16 bytes"));
        }
        if !loopback && a.token.is_none() {
            return Err(invalid(
                "admin.token",
                "required when admin.listen is not a loopback address",
            ));
        }
        if !loopback && a.allow_unauthenticated_commands {
            return Err(invalid(
                "admin.allow_unauthenticated_commands",
                "only allowed when admin.listen is a loopback address",
            ));
        }
        if !(1..=1024).contains(&a.max_connections) {
            return Err(invalid("admin.max_connections", "must be 1 to 1024"));
        }
        if !a.allowed_hosts.iter().all(|h| valid_host_name(h)) {
            return Err(invalid(
                "admin.allowed_hosts",
                "every entry must be a host name or IP address (letters, digits, `-`, `.`; no port)",
            ));
        }
        if let Some(url) = &a.trace_url
            && !valid_trace_url(url)
        {
            return Err(invalid(
                "admin.trace_url",
                "must be an http:// or https:// URL holding `{trace_id}`, without spaces or quotes",
            ));
        }
        for (key, value) in [
            ("admin.header_timeout", a.header_timeout),
            ("admin.request_timeout", a.request_timeout),
        ] {
            if value.is_zero() || value > Duration::from_secs(300) {
                return Err(invalid(key, "must be above 0 and at most 5m"));
            }
        }
        Ok(())
    }
}

/// `http(s)://…{trace_id}…`, printable ASCII without spaces, quotes or angle brackets.
fn valid_trace_url(url: &str) -> bool {
    (url.starts_with("https://") || url.starts_with("http://"))
        && url.contains("{trace_id}")
        && url.len() <= 2000
        && url
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'<' | b'>' | b'`'))
}

/// The link of a trace id: `template` with `{trace_id}` replaced.
#[must_use]
pub(super) fn trace_link(template: &str, trace_id: &str) -> String {
    template.replace("{trace_id}", trace_id)
}

/// A DNS name or an IP address, without port or scheme.
fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && (name.parse::<std::net::IpAddr>().is_ok()
            || name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
}
