//! The FPM upstreams (`fpm.address`, one or several) and the agent's FastCGI connections to
//! them: who may send a request where, on which connection, and when a connection closes.
//!
//! php-fpm pins a child to a FastCGI connection until the client closes it. A connection that
//! stays open while it carries no request therefore takes a child from every other client (the
//! other workers, other agents, the status page), and their requests wait in FPM's listen
//! backlog until they time out and are retried, after which they may run twice. So:
//!
//! - connections are **leased** per request from a pool per upstream, shared by every worker
//!   of the agent; an unused connection is closed after `fpm.keep_alive_idle`;
//! - an upstream's leases are capped by its **capacity** (`pm.max_children` from its status
//!   page, or `fpm.max_children`): a worker over the cap waits in the agent, where no timeout
//!   runs, instead of in FPM's backlog, and open connections never outnumber the children;
//! - a connection is kept across requests for at most `fpm.keep_alive_max`, then closed after
//!   its request: its child then takes the oldest connection waiting in FPM's backlog, so under
//!   steady load other clients wait at most about that long, even where FPM cannot report its
//!   listen queue (Unix sockets) or no status page is read;
//! - while FPM's **listen queue** is not empty (another client waits for a child) or the status
//!   read itself timed out, the upstream is *contended*: every connection closes after its
//!   request, so that FPM's backlog is served first-come first-served across clients. A
//!   request that has read no byte at `fpm.timeout` on a contended upstream is most likely
//!   still in the backlog: it gets one more `fpm.timeout` instead of a retry that would run it
//!   twice ([`crate::fastcgi::FpmClient::request_patient`]);
//! - each upstream has its own **circuit breaker**: one that refuses connections is taken out,
//!   the request goes to another one (it never reached PHP, so nothing runs twice and no
//!   attempt is used up), and the breaker probes it back in.
//!
//! Invariant: per upstream, leased plus idle-open connections never exceed its known capacity
//! (a cap lowered below the leases in use takes effect as they come back); a lease waits its
//! turn in FIFO order; a request goes only to an upstream whose breaker is closed, and one
//! refused connection moves it to the next.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tracing::{info, warn};

use crate::config::{Config, FpmAddress, FpmConfig};
use crate::fastcgi::{FpmError, Reply};

mod health;
mod lease;
mod status;

pub(crate) use health::pick;
pub use health::{Health, View};
use lease::Gate;
pub use lease::Lease;
pub use status::UpstreamStatus;

/// First and largest delay between probes of an upstream whose breaker is open.
const PROBE_FIRST: Duration = Duration::from_millis(200);
const PROBE_MAX: Duration = Duration::from_secs(5);

/// `upstream` label of the FPM gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    /// The FPM address (`fpm.address`).
    pub upstream: String,
}

/// The upstreams of the `[fpm]` in force, and their metric families: the one owner of every
/// FastCGI connection pool the agent has. The agent holds it; each subject's runtime takes its
/// [`Upstreams`] from it, and the FPM monitor reads through what it is handed.
#[derive(Default)]
pub struct InForce {
    current: Mutex<Option<Arc<Upstreams>>>,
    up: prometheus_client::metrics::family::Family<UpstreamLabel, Gauge>,
    in_flight: prometheus_client::metrics::family::Family<UpstreamLabel, Gauge>,
    requests: prometheus_client::metrics::family::Family<UpstreamLabel, Counter>,
    refused: prometheus_client::metrics::family::Family<UpstreamLabel, Counter>,
    backlog_waits: prometheus_client::metrics::family::Family<UpstreamLabel, Counter>,
}

impl InForce {
    /// The upstreams of `config`'s `[fpm]`: the ones in use when they serve the same `[fpm]`,
    /// else new ones (a reload that changes `[fpm]` restarts the consumers, whose workers then
    /// take the new ones).
    pub fn for_config(&self, config: &Config) -> Arc<Upstreams> {
        let mut current = self.current.lock().expect("upstreams lock");
        if let Some(u) = current.as_ref().filter(|u| u.serves(config)) {
            return u.clone();
        }
        let upstreams = Arc::new(Upstreams::new(config, |label| UpstreamMetrics {
            up: self.up.get_or_create(label).clone(),
            in_flight: self.in_flight.get_or_create(label).clone(),
            requests: self.requests.get_or_create(label).clone(),
            refused: self.refused.get_or_create(label).clone(),
            backlog_waits: self.backlog_waits.get_or_create(label).clone(),
        }));
        *current = Some(upstreams.clone());
        upstreams
    }

    /// The upstreams in use, if any were made yet.
    #[must_use]
    pub(crate) fn get(&self) -> Option<Arc<Upstreams>> {
        self.current.lock().expect("upstreams lock").clone()
    }

    /// Registers the upstreams' gauges and counters (the registry observes, it does not own).
    pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "fpm_upstream_up",
            "1 while the upstream's circuit breaker is closed (it accepts connections)",
            self.up.clone(),
        );
        registry.register(
            "fpm_upstream_in_flight",
            "Requests and status reads in flight on the upstream (capped by its max_children)",
            self.in_flight.clone(),
        );
        registry.register(
            "fpm_upstream_requests",
            "Requests sent to the upstream",
            self.requests.clone(),
        );
        registry.register(
            "fpm_upstream_refused",
            "Connections the upstream refused",
            self.refused.clone(),
        );
        registry.register(
            "fpm_backlog_waits",
            "Requests with no reply byte at fpm.timeout while FPM's listen queue was not empty, given more time instead of a retry",
            self.backlog_waits.clone(),
        );
    }
}

/// Every upstream of one `[fpm]` configuration.
pub struct Upstreams {
    fpm: FpmConfig,
    max_response: usize,
    list: Vec<Arc<Upstream>>,
    next: AtomicUsize,
    /// What wakes [`Self::maintain`] (each upstream holds it too).
    wake: Arc<tokio::sync::Notify>,
}

/// Per-upstream metrics (handles into the agent's registry, see `fpm_status::monitor`).
#[derive(Clone, Default)]
pub struct UpstreamMetrics {
    /// `fpm_upstream_up`: 1 while the breaker is closed.
    pub up: Gauge,
    /// `fpm_upstream_in_flight`: leases in use (requests and status reads).
    pub in_flight: Gauge,
    /// `fpm_upstream_requests`: requests sent (refused connections not counted).
    pub requests: Counter,
    /// `fpm_upstream_refused`: connections refused (each opens the breaker or keeps it open).
    pub refused: Counter,
    /// `fpm_backlog_waits`: requests that read nothing by `fpm.timeout` on a contended upstream
    /// and were given more time instead of a retry.
    pub backlog_waits: Counter,
}

/// One FPM upstream: its connection pool, capacity, contention and breaker.
pub struct Upstream {
    /// Where it listens.
    pub address: FpmAddress,
    /// `address` as written in `fpm.address` (the metrics' `upstream` label).
    pub label: String,
    timeout: Duration,
    max_response: usize,
    keep_alive_idle: Duration,
    keep_alive_max: Duration,
    gate: Mutex<Gate>,
    health: Mutex<Health>,
    /// Contended until this instant (see the module doc).
    contended_until: Mutex<Option<Instant>>,
    metrics: UpstreamMetrics,
    /// Wakes [`Upstreams::maintain`] when it keeps a first connection open or goes down (shared
    /// by the upstreams of one [`Upstreams`]).
    wake: Arc<tokio::sync::Notify>,
}

/// A request's result and the upstream that answered it (or refused it last).
pub struct Sent {
    /// Index of the upstream in `fpm.address`.
    pub upstream: usize,
    /// The reply, or why there is none.
    pub result: Result<Reply, FpmError>,
}

/// When a down upstream is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Now (the circuit breaker asks whether any upstream is back).
    Now,
    /// When its backoff allows (the maintenance task's round).
    WhenDue,
}

impl Upstreams {
    /// The upstreams of `config` (`fpm.address`), with `metrics(label)` for each.
    #[must_use]
    pub(crate) fn new(
        config: &Config,
        metrics: impl Fn(&UpstreamLabel) -> UpstreamMetrics,
    ) -> Self {
        let fpm = &config.fpm;
        let wake = Arc::new(tokio::sync::Notify::new());
        let list = config
            .fpm_addresses()
            .into_iter()
            .zip(&fpm.address.0)
            .map(|(address, label)| {
                let m = metrics(&UpstreamLabel {
                    upstream: label.to_string(),
                });
                m.up.set(1);
                m.in_flight.set(0);
                Arc::new(Upstream {
                    address,
                    label: label.to_string(),
                    timeout: fpm.timeout,
                    max_response: config.limits.max_response_bytes,
                    keep_alive_idle: fpm.keep_alive_idle,
                    keep_alive_max: fpm.keep_alive_max,
                    gate: Mutex::new(Gate {
                        cap: fpm.max_children.map(|c| c as usize),
                        leased: 0,
                        idle: Vec::new(),
                        waiters: VecDeque::new(),
                    }),
                    health: Mutex::new(Health::Up),
                    contended_until: Mutex::new(None),
                    metrics: m,
                    wake: Arc::clone(&wake),
                })
            })
            .collect();
        Self {
            fpm: fpm.clone(),
            max_response: config.limits.max_response_bytes,
            list,
            next: AtomicUsize::new(0),
            wake,
        }
    }

    /// True when these upstreams were built for the same `[fpm]` and limits as `config`.
    #[must_use]
    pub(crate) fn serves(&self, config: &Config) -> bool {
        self.fpm == config.fpm && self.max_response == config.limits.max_response_bytes
    }

    /// The upstreams, in `fpm.address` order.
    #[must_use]
    pub(crate) fn list(&self) -> &[Arc<Upstream>] {
        &self.list
    }

    /// Sends one request to a healthy upstream. A refused connection takes that upstream out
    /// (its breaker opens) and the request goes to the next healthy one; when none is left,
    /// the last refusal is returned (the consumer's own circuit then pauses consumption).
    /// `on_pick` is told each upstream tried.
    pub(crate) async fn request(
        &self,
        params: &[crate::contract::Param<'_>],
        body: &[u8],
        on_pick: impl FnMut(usize),
    ) -> Sent {
        self.request_streaming(params, body, on_pick, &mut |_| Ok(()))
            .await
    }

    /// [`Upstreams::request`], handing each stdout record to `on_stdout` as it arrives (a
    /// batch's outcome lines, `FpmClient::request_streaming`). A refused connection read no
    /// byte, so the next upstream starts `on_stdout` afresh.
    pub(crate) async fn request_streaming(
        &self,
        params: &[crate::contract::Param<'_>],
        body: &[u8],
        mut on_pick: impl FnMut(usize),
        on_stdout: &mut (dyn FnMut(&[u8]) -> Result<(), String> + Send),
    ) -> Sent {
        let mut skip = vec![false; self.list.len()];
        let mut last: Option<Sent> = None;
        loop {
            let choice = if let [only] = self.list.as_slice() {
                // One upstream (the common case): nothing to weigh.
                (only.health().up() && !skip[0]).then_some(0)
            } else {
                let views: Vec<View> = self.list.iter().map(|u| u.view()).collect();
                let start = self.next.fetch_add(1, Ordering::Relaxed) % self.list.len();
                pick(&views, start, &skip)
            };
            let Some(i) = choice else {
                return last.unwrap_or_else(|| self.all_down());
            };
            on_pick(i);
            let upstream = &self.list[i];
            let mut lease = upstream.acquire().await;
            let queued = || {
                let queued = upstream.contended();
                if queued {
                    upstream.metrics.backlog_waits.inc();
                }
                queued
            };
            let result = lease
                .client()
                .request_streaming(params, body, &queued, on_stdout)
                .await;
            match result {
                Err(error) if error.unreached() => {
                    drop(lease);
                    upstream.refused(&error);
                    skip[i] = true;
                    last = Some(Sent {
                        upstream: i,
                        result: Err(error),
                    });
                }
                result => {
                    upstream.metrics.requests.inc();
                    return Sent {
                        upstream: i,
                        result,
                    };
                }
            }
        }
    }

    fn all_down(&self) -> Sent {
        Sent {
            upstream: 0,
            result: Err(FpmError::Connect {
                address: self.fpm.address.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "every FPM upstream is taken out by its circuit breaker",
                ),
            }),
        }
    }

    /// Probes every upstream that is down (`Probe::Now`) or down and due (`Probe::WhenDue`);
    /// returns true when at least one is up afterwards.
    pub(crate) async fn probe(&self, when: Probe) -> bool {
        for upstream in &self.list {
            upstream.probe(when).await;
        }
        self.list.iter().any(|u| u.health().up())
    }

    /// Closes connections idle past `fpm.keep_alive_idle` (all of them on a contended
    /// upstream), and probes the upstreams that are down. Runs until aborted. While no
    /// connection is open and every upstream is up it has nothing to do, and waits (an idle
    /// agent's thread would otherwise wake every `keep_alive_idle` / 2) until a connection is
    /// kept open or an upstream goes down.
    pub(crate) async fn maintain(self: Arc<Self>) {
        let tick = (self.fpm.keep_alive_idle / 2)
            .clamp(Duration::from_millis(10), Duration::from_millis(100));
        let mut every = tokio::time::interval(tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.quiet() {
                // A wake-up sent since the check is kept as a permit: none is lost.
                self.wake.notified().await;
                every.reset();
            }
            every.tick().await;
            for upstream in &self.list {
                upstream.reap(Instant::now());
            }
            self.probe(Probe::WhenDue).await;
        }
    }

    /// No connection open and every upstream up: nothing for [`Self::maintain`] to close or
    /// probe.
    fn quiet(&self) -> bool {
        self.list
            .iter()
            .all(|u| u.health().up() && u.gate.lock().expect("gate lock").idle.is_empty())
    }

    /// Every upstream in `/status` (without its status page: see [`UpstreamStatus::with_fpm`]).
    #[must_use]
    pub(crate) fn status(&self) -> Vec<UpstreamStatus> {
        self.list.iter().map(|u| u.status()).collect()
    }
}

impl Upstream {
    fn view(&self) -> View {
        let gate = self.gate.lock().expect("gate lock");
        View {
            up: self.health().up(),
            leased: gate.leased + gate.waiters.len(),
            cap: gate.cap,
        }
    }

    /// The breaker's state.
    #[must_use]
    pub(crate) fn health(&self) -> Health {
        *self.health.lock().expect("health lock")
    }

    /// Sets the capacity (`pm.max_children` as read); waiters that now fit get a slot.
    pub(crate) fn set_capacity(&self, cap: Option<usize>) {
        let mut gate = self.gate.lock().expect("gate lock");
        if gate.cap == cap {
            return;
        }
        gate.cap = cap;
        while gate.room() {
            let Some(waiter) = gate.waiters.pop_front() else {
                break;
            };
            let client = gate.idle.pop().map_or_else(|| self.client(), |(c, _)| c);
            if waiter.send(client).is_ok() {
                gate.leased += 1;
            }
        }
        let over = cap.map_or(0, |c| (gate.leased + gate.idle.len()).saturating_sub(c));
        let keep = gate.idle.len().saturating_sub(over);
        gate.idle.truncate(keep);
        self.metrics.in_flight.set(gauge(gate.leased));
    }

    /// Notes a status read: a non-empty listen queue, or a read that timed out, means other
    /// requests wait for a child.
    pub(crate) fn note_status(&self, listen_queue: Option<u64>, timed_out: bool, hold: Duration) {
        if timed_out || listen_queue.is_some_and(|q| q > 0) {
            let mut until = self.contended_until.lock().expect("contended lock");
            if until.is_none_or(|t| t <= Instant::now()) {
                info!(upstream = %self.label, ?listen_queue, timed_out, "FPM's listen queue is not empty: closing connections after each request");
            }
            *until = Some(Instant::now() + hold);
            drop(until);
            self.reap(Instant::now());
        }
    }

    /// True while the upstream counts as contended.
    #[must_use]
    pub(crate) fn contended(&self) -> bool {
        self.contended_until
            .lock()
            .expect("contended lock")
            .is_some_and(|t| t > Instant::now())
    }

    fn refused(&self, error: &FpmError) {
        self.metrics.refused.inc();
        let mut health = self.health.lock().expect("health lock");
        if health.up() {
            warn!(upstream = %self.label, %error, "FPM upstream refuses connections: taken out (circuit breaker), its requests go to the other upstreams");
            self.metrics.up.set(0);
        }
        *health = health.tripped(Instant::now());
        drop(health);
        self.reap(Instant::now());
        self.wake.notify_one();
    }

    /// Closes the breaker: the upstream answered (a probe, or a status read).
    pub(crate) fn answered(&self) {
        let mut health = self.health.lock().expect("health lock");
        if let Health::Down { since, .. } = *health {
            info!(upstream = %self.label, down_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX), "FPM upstream accepts connections again: back in use");
        }
        *health = Health::Up;
        self.metrics.up.set(1);
    }

    async fn probe(&self, when: Probe) {
        let Health::Down { next_probe, .. } = self.health() else {
            return;
        };
        if when == Probe::WhenDue && Instant::now() < next_probe {
            return;
        }
        let ok = crate::fastcgi::probe(&self.address, self.timeout.min(PROBE_MAX))
            .await
            .is_ok();
        if ok {
            self.answered();
        } else {
            let mut health = self.health.lock().expect("health lock");
            *health = health.probe_failed(Instant::now());
        }
    }

    /// Closes idle connections past `keep_alive_idle` (every idle one when contended or down).
    fn reap(&self, now: Instant) {
        let all = self.contended() || !self.health().up();
        let mut gate = self.gate.lock().expect("gate lock");
        let idle = self.keep_alive_idle;
        gate.idle
            .retain(|(_, since)| !all && now.saturating_duration_since(*since) < idle);
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
