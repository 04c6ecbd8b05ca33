//! A consumer's say over which message bodies are held in memory (amqp-agent patch, see
//! `PATCHES.md`).
//!
//! AMQP announces a body's size in the content header, before the first body frame. A
//! [`BodyGate`] set on a channel ([`Channel::set_body_gate`](crate::Channel::set_body_gate)) is
//! asked at that moment; a body it refuses is not accumulated: its frames are dropped as they
//! arrive (each one at most `frame_max` bytes), and the delivery arrives with empty `data` and
//! [`Delivery::body_discarded`](crate::message::Delivery::body_discarded) set, still to be acked,
//! nacked or rejected like any other.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// What a gate answers for one announced body.
#[derive(Debug)]
pub enum Admission {
    /// Receive the body whole.
    Hold,
    /// Receive the body whole, and keep this permit with the delivery (dropped with it).
    HoldWith(BodyPermit),
    /// Do not keep the body: its frames are dropped as they arrive.
    Discard,
}

/// Asked once per delivery, with the body size its content header announces.
pub trait BodyGate: Send + Sync + 'static {
    /// The answer for one delivery's body of `size` bytes (called on the I/O loop: must not block).
    fn admit(&self, size: u64) -> Admission;
}

/// An opaque value a [`BodyGate`] keeps with the delivery it admitted, released when the delivery
/// is dropped.
#[derive(Clone)]
pub struct BodyPermit(Arc<dyn Any + Send + Sync>);

impl BodyPermit {
    /// Wraps a value whose `Drop` releases what the gate reserved.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Self(Arc::new(value))
    }
}

impl fmt::Debug for BodyPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BodyPermit")
    }
}

impl PartialEq for BodyPermit {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
