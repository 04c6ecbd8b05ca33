//! Leasing connections: an upstream's pool of open connections and the leases on it, capped by
//! its capacity, handed over first-come first-served.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::{Upstream, gauge};
use crate::fastcgi::FpmClient;

/// The connection pool and lease count of one upstream. Pure bookkeeping, no I/O.
pub(super) struct Gate {
    /// Most leases at once; `None` while FPM's capacity is unknown.
    pub(super) cap: Option<usize>,
    pub(super) leased: usize,
    /// Connections no lease uses, most recently returned last.
    pub(super) idle: Vec<(FpmClient, Instant)>,
    /// Leases waiting for room, oldest first.
    pub(super) waiters: VecDeque<oneshot::Sender<FpmClient>>,
}

impl Gate {
    pub(super) fn room(&self) -> bool {
        self.cap.is_none_or(|c| self.leased < c)
    }
}

/// One connection slot on an upstream, returned when dropped.
pub struct Lease {
    upstream: Arc<Upstream>,
    client: Option<FpmClient>,
}

impl Lease {
    /// The lease's FastCGI client (its connection may be open from an earlier request).
    pub(crate) fn client(&mut self) -> &mut FpmClient {
        self.client.as_mut().expect("present until drop")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            self.upstream.release(client);
        }
    }
}

impl Upstream {
    /// A connection slot on this upstream, waiting (FIFO) while its capacity is in use.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Lease {
        loop {
            let waiting = {
                let mut gate = self.gate.lock().expect("gate lock");
                if gate.waiters.is_empty() && gate.room() {
                    gate.leased += 1;
                    let client = gate.idle.pop().map_or_else(|| self.client(), |(c, _)| c);
                    self.metrics.in_flight.set(gauge(gate.leased));
                    return self.lease(client);
                }
                let (tx, rx) = oneshot::channel();
                gate.waiters.push_back(tx);
                rx
            };
            // A sender dropped without a handover cannot happen while `self` lives; retry.
            if let Ok(client) = waiting.await {
                return self.lease(client);
            }
        }
    }

    pub(super) fn lease(self: &Arc<Self>, client: FpmClient) -> Lease {
        Lease {
            upstream: self.clone(),
            client: Some(client),
        }
    }

    pub(super) fn client(&self) -> FpmClient {
        FpmClient::new(self.address.clone(), self.timeout, self.max_response)
    }

    /// Takes a lease's connection back: to the oldest waiter if there is room, else to the
    /// idle pool (while keep-alive is on and the upstream not contended), else closed.
    pub(super) fn release(&self, mut client: FpmClient) {
        let keep = !self.keep_alive_idle.is_zero() && !self.contended() && self.health().up();
        if !keep || !client.reusable(self.keep_alive_max) {
            client.close();
        }
        let mut gate = self.gate.lock().expect("gate lock");
        if gate.cap.is_none_or(|c| gate.leased <= c) {
            while let Some(waiter) = gate.waiters.pop_front() {
                match waiter.send(client) {
                    Ok(()) => return,
                    Err(back) => client = back,
                }
            }
        }
        gate.leased -= 1;
        self.metrics.in_flight.set(gauge(gate.leased));
        let room = gate.cap.is_none_or(|c| gate.leased + gate.idle.len() < c);
        if client.reusable(self.keep_alive_max) && room {
            gate.idle.push((client, Instant::now()));
            if gate.idle.len() == 1 {
                // The first one kept: `maintain` may be waiting, and closes it once idle too long.
                self.wake.notify_one();
            }
        }
    }
}
