//! PHP-FPM's status page (`pm.status_path`, read as `?json&full`): its typed form, the pure
//! parser, and the state the agent shows (`/status`, metrics, `amqp-agent status`).
//!
//! Invariant: the parser is pure, and a status page that cannot be read (not configured, 404,
//! timeout, FPM down, unreadable JSON) is a [`StatusState`], never a panic or an error that
//! stops anything. The FastCGI request itself is [`crate::fastcgi::FpmClient::status_page`];
//! the polling task and the slow-request watch live in [`monitor`].

pub mod monitor;

use serde::{Deserialize, Serialize};

/// FPM's pool status, as its JSON status page reports it (`?json&full`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FpmStatus {
    /// Pool name (`[www]`).
    pub pool: String,
    /// `static`, `dynamic` or `ondemand`.
    #[serde(rename(deserialize = "process manager"))]
    pub process_manager: String,
    /// Connections accepted since FPM started.
    #[serde(rename(deserialize = "accepted conn"))]
    pub accepted_conn: u64,
    /// Connections waiting in the listen backlog for a free child: requests that are not
    /// running yet although their client is waiting.
    #[serde(rename(deserialize = "listen queue"))]
    pub listen_queue: u64,
    /// Highest `listen_queue` since FPM started.
    #[serde(rename(deserialize = "max listen queue"))]
    pub max_listen_queue: u64,
    /// Size of the listen backlog.
    #[serde(rename(deserialize = "listen queue len"))]
    pub listen_queue_len: u64,
    /// Children waiting for a request.
    #[serde(rename(deserialize = "idle processes"))]
    pub idle_processes: u64,
    /// Children handling a request (the status request itself included).
    #[serde(rename(deserialize = "active processes"))]
    pub active_processes: u64,
    /// Children alive.
    #[serde(rename(deserialize = "total processes"))]
    pub total_processes: u64,
    /// Highest `active_processes` since FPM started.
    #[serde(rename(deserialize = "max active processes"))]
    pub max_active_processes: u64,
    /// Times `pm.max_children` was reached (dynamic and ondemand pools only).
    #[serde(rename(deserialize = "max children reached"))]
    pub max_children_reached: u64,
    /// Requests that ran past FPM's own `request_slowlog_timeout`.
    #[serde(rename(deserialize = "slow requests"))]
    pub slow_requests: u64,
    /// One entry per child (only with `full`).
    #[serde(default)]
    pub processes: Vec<FpmProcess>,
}

/// One FPM child in the `full` status.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FpmProcess {
    /// The child's pid.
    pub pid: u32,
    /// `Idle`, `Running`, `Reading headers`, `Finishing`, …
    pub state: String,
    /// Requests this child served.
    pub requests: u64,
    /// Duration of the current request (or of the last one, when idle), in microseconds.
    #[serde(rename(deserialize = "request duration"))]
    pub request_duration_us: u64,
    /// `GET`, `POST`, or `-`.
    #[serde(rename(deserialize = "request method"))]
    pub request_method: String,
    /// FPM's request URI: `SCRIPT_NAME` and query string, not the `REQUEST_URI` param.
    #[serde(rename(deserialize = "request uri"))]
    pub request_uri: String,
    /// The script run (`SCRIPT_FILENAME`), `-` when none.
    pub script: String,
    /// CPU share of the last request, in percent.
    #[serde(rename(deserialize = "last request cpu"))]
    pub last_request_cpu: f64,
    /// Peak memory of the last request, in bytes.
    #[serde(rename(deserialize = "last request memory"))]
    pub last_request_memory: u64,
}

impl FpmProcess {
    /// True while the child handles a request (any state but `Idle`).
    #[must_use]
    pub(crate) fn busy(&self) -> bool {
        self.state != "Idle"
    }
}

impl FpmStatus {
    /// `pm.max_children`: `configured` (`fpm.max_children`) when set, else the number of
    /// children of a `static` pool; unknown for `dynamic` and `ondemand` pools.
    ///
    /// The per-process list is preferred to the counters: php-fpm 8.2 was seen here to report
    /// `total processes` 5 and 6 for a static pool of 4 while its list had 4 entries.
    #[must_use]
    pub fn max_children(&self, configured: Option<u32>) -> Option<u64> {
        let children = if self.processes.is_empty() {
            self.total_processes
        } else {
            self.processes.len() as u64
        };
        configured
            .map(u64::from)
            .or_else(|| (self.process_manager == "static").then_some(children))
    }

    /// Children busy with something other than the status request that produced this page
    /// (the status request is the one serving `status_path`).
    #[must_use]
    pub fn active_without_probe(&self, status_path: &str) -> u64 {
        if self.processes.is_empty() {
            self.active_processes.saturating_sub(1)
        } else {
            self.busy_children(status_path).count() as u64
        }
    }

    /// Idle children (from the per-process list when there is one), the one that served this
    /// status request included: it is free again once the page is read.
    #[must_use]
    pub(crate) fn idle(&self, status_path: &str) -> u64 {
        if self.processes.is_empty() {
            self.idle_processes + 1
        } else {
            self.processes
                .iter()
                .filter(|p| !p.busy() || p.request_uri.starts_with(status_path))
                .count() as u64
        }
    }

    /// Busy children, without those serving `status_path` (the status request itself).
    pub(crate) fn busy_children<'a>(
        &'a self,
        status_path: &'a str,
    ) -> impl Iterator<Item = &'a FpmProcess> {
        self.processes
            .iter()
            .filter(move |p| p.busy() && !p.request_uri.starts_with(status_path))
    }
}

/// Why the status page gave no usable status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// FPM answered 404: the pool has no `pm.status_path`, or another path.
    #[error(
        "FPM answered 404 for the status page: set the pool's pm.status_path to fpm.status_path"
    )]
    NotFound,
    /// FPM answered another HTTP status.
    #[error("FPM answered HTTP {0} for the status page")]
    Http(u16),
    /// The reply was not FPM's JSON status.
    #[error("the status page is not FPM's JSON status: {0}")]
    Invalid(String),
    /// The FastCGI request failed (FPM down, refused, timed out, cut off).
    #[error("{0}")]
    Fpm(String),
}

impl StatusError {
    /// Short machine-readable state for `/status` and metrics.
    #[must_use]
    pub(crate) fn state(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Http(_) => "http_error",
            Self::Invalid(_) => "invalid",
            Self::Fpm(reason) if reason.contains("timed out") => "timeout",
            Self::Fpm(_) => "down",
        }
    }
}

/// Parses FPM's reply to a status request: the CGI head (`Status:` 200 when absent) and the
/// JSON body.
///
/// # Errors
/// [`StatusError`] for a 404, another status, or a body that is not FPM's JSON status.
pub fn parse_reply(stdout: &[u8]) -> Result<FpmStatus, StatusError> {
    let head = crate::outcome::parse_head(stdout).map_err(StatusError::Invalid)?;
    match head.status {
        200 => {}
        404 => return Err(StatusError::NotFound),
        other => return Err(StatusError::Http(other)),
    }
    let body = body_of(stdout);
    serde_json::from_slice(body).map_err(|e| StatusError::Invalid(e.to_string()))
}

fn body_of(stdout: &[u8]) -> &[u8] {
    for sep in [&b"\r\n\r\n"[..], b"\n\n"] {
        if let Some(at) = stdout.windows(sep.len()).position(|w| w == sep) {
            return &stdout[at + sep.len()..];
        }
    }
    stdout
}

/// What the agent knows of FPM's status, as shown in `/status` under `fpm`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusState {
    /// The FPM address read.
    pub address: String,
    /// `not_configured`, `pending` (not read yet), `ok`, or why the last read failed:
    /// `not_found`, `http_error`, `invalid`, `timeout`, `down`.
    pub state: &'static str,
    /// The last read's error, when it failed.
    pub error: Option<String>,
    /// `pm.max_children` as known (see [`FpmStatus::max_children`]).
    pub max_children: Option<u64>,
    /// Children busy with messages or other work (the status request not counted).
    pub active: Option<u64>,
    /// Idle children.
    pub idle: Option<u64>,
    /// Requests waiting in FPM's listen backlog.
    pub listen_queue: Option<u64>,
    /// FPM's `max children reached` counter.
    pub max_children_reached: Option<u64>,
    /// FPM's `slow requests` counter.
    pub slow_requests: Option<u64>,
    /// Busy children: pid, request duration and URI.
    pub busy: Vec<BusyChild>,
    /// Every child: the last request's memory and CPU.
    pub children: Vec<ChildLast>,
    /// Milliseconds since the last successful read.
    pub last_ok_ms_ago: Option<u64>,
}

/// A busy child in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct BusyChild {
    /// Child pid.
    pub pid: u32,
    /// Running time of its request, in milliseconds.
    pub duration_ms: u64,
    /// FPM's request URI (`SCRIPT_NAME` and query).
    pub uri: String,
    /// `Running`, `Reading headers`, …
    pub state: String,
}

/// A child's last request in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ChildLast {
    /// Child pid.
    pub pid: u32,
    /// Requests served.
    pub requests: u64,
    /// Peak memory of the last request, in bytes.
    pub last_request_memory: u64,
    /// CPU of the last request, in percent.
    pub last_request_cpu: f64,
}

impl StatusState {
    /// Cuts each busy child's URI at its `?`: on a pool the web app shares, the query belongs to
    /// someone else's request (`/reset-password?token=…`). `/status` shows it only to a caller
    /// with the admin token.
    pub(crate) fn hide_queries(&mut self) {
        for child in &mut self.busy {
            if let Some(at) = child.uri.find('?') {
                child.uri.truncate(at);
            }
        }
    }

    /// The state without any read: `not_configured` or `pending`.
    #[must_use]
    pub(crate) fn empty(address: String, state: &'static str) -> Self {
        Self {
            address,
            state,
            error: None,
            max_children: None,
            active: None,
            idle: None,
            listen_queue: None,
            max_children_reached: None,
            slow_requests: None,
            busy: Vec::new(),
            children: Vec::new(),
            last_ok_ms_ago: None,
        }
    }

    /// The state after a read of `status`.
    #[must_use]
    pub(crate) fn from_status(
        address: String,
        status: &FpmStatus,
        status_path: &str,
        max_children: Option<u32>,
    ) -> Self {
        Self {
            state: "ok",
            max_children: status.max_children(max_children),
            active: Some(status.active_without_probe(status_path)),
            idle: Some(status.idle(status_path)),
            listen_queue: Some(status.listen_queue),
            max_children_reached: Some(status.max_children_reached),
            slow_requests: Some(status.slow_requests),
            busy: status
                .busy_children(status_path)
                .map(|p| BusyChild {
                    pid: p.pid,
                    duration_ms: p.request_duration_us / 1000,
                    uri: p.request_uri.clone(),
                    state: p.state.clone(),
                })
                .collect(),
            children: status
                .processes
                .iter()
                .map(|p| ChildLast {
                    pid: p.pid,
                    requests: p.requests,
                    last_request_memory: p.last_request_memory,
                    last_request_cpu: p.last_request_cpu,
                })
                .collect(),
            last_ok_ms_ago: Some(0),
            ..Self::empty(address, "ok")
        }
    }
}

#[cfg(test)]
mod tests;
