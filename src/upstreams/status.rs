//! The `/status` view of the upstreams.

use serde::Serialize;

use super::{Health, Upstream};

/// `/status` view of one upstream; `F` is its status page as last read, which the agent adds
/// from `fpm_status::monitor`'s reads with [`UpstreamStatus::with_fpm`].
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStatus<F = ()> {
    /// The address as written in `fpm.address`.
    pub address: String,
    /// `up`, or `down` (breaker open: it refused connections and is being probed).
    pub health: &'static str,
    /// Milliseconds since it was taken out, while down.
    pub down_for_ms: Option<u64>,
    /// Requests (and status reads) in flight on it.
    pub in_flight: usize,
    /// Leases waiting for room under its capacity.
    pub waiting: usize,
    /// Open connections no request uses (closed after `fpm.keep_alive_idle`).
    pub idle_connections: usize,
    /// Most requests at once: its `pm.max_children`, when known.
    pub capacity: Option<usize>,
    /// FPM's listen queue was not empty (or the status read timed out) lately: connections
    /// close after each request.
    pub contended: bool,
    /// Requests sent.
    pub requests: u64,
    /// Connections it refused.
    pub refused: u64,
    /// Requests given more time because they likely waited in FPM's backlog.
    pub backlog_waits: u64,
    /// Its status page, as last read.
    pub fpm: F,
}

impl UpstreamStatus {
    /// The same view with its status page.
    #[must_use]
    pub(crate) fn with_fpm<F>(self, fpm: F) -> UpstreamStatus<F> {
        UpstreamStatus {
            address: self.address,
            health: self.health,
            down_for_ms: self.down_for_ms,
            in_flight: self.in_flight,
            waiting: self.waiting,
            idle_connections: self.idle_connections,
            capacity: self.capacity,
            contended: self.contended,
            requests: self.requests,
            refused: self.refused,
            backlog_waits: self.backlog_waits,
            fpm,
        }
    }
}

impl Upstream {
    pub(super) fn status(&self) -> UpstreamStatus {
        let gate = self.gate.lock().expect("gate lock");
        let health = self.health();
        UpstreamStatus {
            address: self.label.clone(),
            health: if health.up() { "up" } else { "down" },
            down_for_ms: match health {
                Health::Up => None,
                Health::Down { since, .. } => {
                    Some(u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX))
                }
            },
            in_flight: gate.leased,
            waiting: gate.waiters.len(),
            idle_connections: gate.idle.len(),
            capacity: gate.cap,
            contended: self.contended(),
            requests: self.metrics.requests.get(),
            refused: self.metrics.refused.get(),
            backlog_waits: self.metrics.backlog_waits.get(),
            fpm: (),
        }
    }
}
