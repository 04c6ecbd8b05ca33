//! `[fpm]`: the PHP-FPM pool, the request it gets, signing secrets and its status page.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::units::{duration, opt_duration};
use super::{Config, ConfigError, default_true, invalid, report};

/// `[fpm]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FpmConfig {
    /// `host:port` for TCP, or `unix:/path/to.sock`; or a list of them (several upstreams:
    /// workers are spread over the healthy ones, docs/fpm-capacity.md). Parsed when the file is
    /// read.
    pub address: AddressList,
    /// Absolute path of the PHP front controller, as FPM sees it.
    pub script_filename: String,
    /// `REQUEST_URI` sent to PHP; `{subject}` is replaced by the subject name.
    #[serde(default = "default_request_uri")]
    pub request_uri: String,
    /// `DOCUMENT_ROOT`; defaults to the directory of `script_filename`.
    #[serde(default)]
    pub document_root: Option<String>,
    /// `SERVER_NAME` sent to PHP (some frameworks build URLs from it).
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Upper bound for one FastCGI request, connect to last byte.
    #[serde(default = "default_fpm_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// HMAC secrets. The first signs; all are sent during a rotation.
    #[serde(default)]
    pub signing_secrets: Vec<String>,
    /// A file with one secret per line, used in addition to `signing_secrets`.
    #[serde(default)]
    pub signing_secrets_file: Option<PathBuf>,
    /// Also sign with the legacy `v1` HMAC (for receivers older than the `v2` signature).
    #[serde(default)]
    pub signature_v1: bool,
    /// Success requires the response header `X-Agent-Ack: 1` besides a 2xx status.
    #[serde(default = "default_true")]
    pub require_ack_header: bool,
    /// FPM's status page, as the pool's `pm.status_path` (e.g. `/fpm-status`); unset: not read.
    #[serde(default)]
    pub status_path: Option<String>,
    /// How often the status page is read (on a FastCGI connection of its own).
    #[serde(default = "default_status_interval", deserialize_with = "duration")]
    pub status_interval: Duration,
    /// A request running longer than this is logged once and counted (default: `timeout` / 2).
    #[serde(default, deserialize_with = "opt_duration")]
    pub slow_after: Option<Duration>,
    /// The pool's `pm.max_children`, when the status page cannot tell it (`pm = dynamic` or
    /// `ondemand`); with `pm = static` it is read from the status page.
    #[serde(default)]
    pub max_children: Option<u32>,
    /// How long an FPM connection no request uses stays open ("0s": closed after every
    /// request). php-fpm pins a child to an open connection, so an idle one starves others.
    #[serde(default = "default_keep_alive_idle", deserialize_with = "duration")]
    pub keep_alive_idle: Duration,
    /// Longest time an FPM connection is kept across requests; it is then closed after its
    /// request, so that the child serves the connections waiting in FPM's backlog in turn.
    #[serde(default = "default_keep_alive_max", deserialize_with = "duration")]
    pub keep_alive_max: Duration,
}

fn default_request_uri() -> String {
    "/_agent/messages/{subject}".to_owned()
}
fn default_server_name() -> String {
    "amqp-agent".to_owned()
}
fn default_fpm_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_keep_alive_idle() -> Duration {
    Duration::from_millis(100)
}
fn default_keep_alive_max() -> Duration {
    Duration::from_secs(1)
}
fn default_status_interval() -> Duration {
    Duration::from_secs(2)
}

/// `fpm.address`: one address (a string) or several (a list), as written, each parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressList(pub Vec<FpmAddress>);

impl<'de> Deserialize<'de> for AddressList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let texts = match OneOrMany::deserialize(d) {
            Ok(OneOrMany::One(a)) => vec![a],
            Ok(OneOrMany::Many(list)) => list,
            Err(_) => {
                return Err(serde::de::Error::custom(
                    "expected an address (\"host:port\" or \"unix:/path\") or a list of them",
                ));
            }
        };
        texts
            .iter()
            .map(|text| FpmAddress::parse(text).map_err(serde::de::Error::custom))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl std::fmt::Display for AddressList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, address) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{address}")?;
        }
        Ok(())
    }
}

/// Where PHP-FPM listens (one entry of `fpm.address`), parsed when the file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FpmAddress {
    /// `host:port`
    Tcp(String),
    /// `unix:/path`
    Unix(PathBuf),
}

impl FpmAddress {
    /// Parses `host:port` or `unix:/path`.
    ///
    /// # Errors
    /// When the address has neither form.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a socket path".into());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Self::Tcp(text.to_owned()))
            }
            _ => Err("is neither `host:port` nor `unix:/path`".to_owned()),
        }
    }
}

impl std::fmt::Display for FpmAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Config {
    pub(super) fn validate_fpm(&self) -> Result<(), ConfigError> {
        let addresses = &self.fpm.address.0;
        if addresses.is_empty() {
            return Err(invalid("fpm.address", "needs at least one address"));
        }
        for (i, address) in addresses.iter().enumerate() {
            if addresses[..i].contains(address) {
                return Err(invalid(
                    "fpm.address",
                    format!("entry {} repeats an earlier one", i + 1),
                ));
            }
        }
        if !self.fpm.script_filename.starts_with('/') {
            return Err(invalid("fpm.script_filename", "must be an absolute path"));
        }
        if !self.fpm.request_uri.starts_with('/') {
            return Err(invalid("fpm.request_uri", "must start with `/`"));
        }
        if self.fpm.timeout.is_zero() {
            return Err(invalid("fpm.timeout", "must be greater than zero"));
        }
        self.validate_fpm_status()?;
        for (i, secret) in self.fpm.signing_secrets.iter().enumerate() {
            if let Some(problem) = report::secret_problem(secret) {
                return Err(invalid(format!("fpm.signing_secrets[{i}]"), problem));
            }
        }
        Ok(())
    }

    fn validate_fpm_status(&self) -> Result<(), ConfigError> {
        if self
            .fpm
            .status_path
            .as_deref()
            .is_some_and(|p| !p.starts_with('/') || p.contains(['?', '\r', '\n', '\0']))
        {
            return Err(invalid(
                "fpm.status_path",
                "must start with `/` and hold no query (as the pool's pm.status_path)",
            ));
        }
        if self.fpm.status_interval < Duration::from_millis(100) {
            return Err(invalid("fpm.status_interval", "must be at least 100ms"));
        }
        if self.fpm.slow_after.is_some_and(|d| d.is_zero()) {
            return Err(invalid("fpm.slow_after", "must be greater than zero"));
        }
        if self.fpm.max_children == Some(0) {
            return Err(invalid("fpm.max_children", "must be at least 1"));
        }
        Ok(())
    }

    /// The FPM addresses (parsed at load): one per upstream, in the order written.
    #[must_use]
    pub fn fpm_addresses(&self) -> Vec<FpmAddress> {
        self.fpm.address.0.clone()
    }

    /// `fpm.slow_after`, or half of `fpm.timeout`.
    #[must_use]
    pub(crate) fn slow_after(&self) -> Duration {
        self.fpm.slow_after.unwrap_or(self.fpm.timeout / 2)
    }
}
