//! The open admin connections, and which one gives way when they are at the cap.
//!
//! A connection that has not sent its request head yet holds a slot without doing anything:
//! 64 of them (the default `admin.max_connections`), opened by anyone who reaches the port,
//! would make every liveness probe answer `503` until their `header_timeout` runs out. So a
//! new connection at the cap closes the oldest one still waiting for its head, and only when
//! every open connection is being answered is the new one refused. A probe sends its head at
//! once and is answered within `request_timeout`, so idle connections cannot keep it out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// One open connection.
#[derive(Debug)]
pub(super) struct Conn {
    /// Tells it apart in [`Conns`].
    id: u64,
    /// The address the client connected to: a `Host` naming it is this listener's own.
    pub local: Option<SocketAddr>,
    /// Its request head has arrived: it is being answered and is not evicted.
    head_read: AtomicBool,
    /// Signalled when a newer connection takes its slot.
    evicted: Notify,
}

impl Conn {
    /// Called with its request: from now on it is not idle.
    pub(super) fn head_read(&self) {
        self.head_read.store(true, Ordering::Relaxed);
    }

    /// Resolves when a newer connection took its slot: the connection must be closed.
    pub(super) async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

/// The open connections, oldest first, at most `max`.
#[derive(Debug)]
pub(super) struct Conns {
    max: usize,
    open: Mutex<VecDeque<Arc<Conn>>>,
    next: AtomicU64,
}

/// A slot held by an accepted connection; dropping it frees the slot.
pub(super) struct Slot {
    conns: Arc<Conns>,
    /// The connection holding it.
    pub conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let id = self.conn.id;
        self.conns.lock().retain(|c| c.id != id);
    }
}

/// What [`Conns::admit`] did.
pub(super) enum Admission {
    /// A free slot.
    Admitted(Slot),
    /// The oldest idle connection was told to close; the new one has its slot.
    Evicted(Slot),
    /// Every open connection is being answered.
    Full,
}

impl Conns {
    /// Room for `max` connections.
    #[must_use]
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(VecDeque::with_capacity(max)),
            next: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Conn>>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a connection just accepted (see the module documentation).
    pub(super) fn admit(self: &Arc<Self>, local: Option<SocketAddr>) -> Admission {
        let conn = Arc::new(Conn {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            local,
            head_read: AtomicBool::new(false),
            evicted: Notify::new(),
        });
        let mut open = self.lock();
        let mut evicted = false;
        if open.len() >= self.max {
            let Some(at) = open
                .iter()
                .position(|c| !c.head_read.load(Ordering::Relaxed))
            else {
                return Admission::Full;
            };
            if let Some(idle) = open.remove(at) {
                // A stored permit: the connection's task sees it even if not waiting yet.
                idle.evicted.notify_one();
            }
            evicted = true;
        }
        open.push_back(Arc::clone(&conn));
        drop(open);
        let slot = Slot {
            conns: Arc::clone(self),
            conn,
        };
        if evicted {
            Admission::Evicted(slot)
        } else {
            Admission::Admitted(slot)
        }
    }

    /// Connections holding a slot.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(a: Admission) -> Slot {
        match a {
            Admission::Admitted(s) | Admission::Evicted(s) => s,
            Admission::Full => panic!("refused"),
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_idle_connection_gives_way() {
        let conns = Conns::new(2);
        let first = slot(conns.admit(None));
        let second = slot(conns.admit(None));
        second.conn.head_read();
        // The first is idle: it is told to close, the third takes its slot.
        let third = match conns.admit(None) {
            Admission::Evicted(s) => s,
            _ => panic!("the idle connection should give way"),
        };
        tokio::time::timeout(std::time::Duration::from_secs(1), first.conn.evicted())
            .await
            .expect("the evicted connection is told");
        assert_eq!(conns.len(), 2);
        drop(first);
        assert_eq!(conns.len(), 2, "an evicted slot is not freed twice");
        // Both open ones are answering now: the next is refused.
        third.conn.head_read();
        assert!(matches!(conns.admit(None), Admission::Full));
        drop(second);
        assert!(matches!(conns.admit(None), Admission::Admitted(_)));
    }
}
