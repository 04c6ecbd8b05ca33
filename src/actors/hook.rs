//! The one seam for tests into the message path: a hook a worker calls with each delivery it is
//! given, before it does anything else with it. `amqp-agent run` starts the agent without one;
//! in-process tests inject one ([`crate::agent::Agent::start_with_hook`]) to make a worker fail
//! on a message they choose, and so test the supervision that replaces it.
//!
//! Invariant: only tests set a hook (nothing in the crate builds one); a hook sees a delivery and
//! cannot change it or its outcome, other than by panicking.

use std::sync::Arc;

use lapin::message::Delivery;

/// Called with each delivery a worker is given, before it is handled.
pub type DeliveryHook = Arc<dyn Fn(&Delivery) + Send + Sync>;
