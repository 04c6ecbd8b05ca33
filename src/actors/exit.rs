//! Why a consumer stopped, typed: what its supervisor does about it is decided by the variant,
//! never by the wording of a stop reason.
//!
//! Invariant: every way a consumer ends (its start failed, a handler failed, it stopped itself)
//! is classified here, once, by [`ConsumerExit::of`].

use std::error::Error;

use crate::broker::BrokerError;

/// Why a consumer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConsumerExit {
    /// The broker cannot be reached, or the connection was lost: reconnect with backoff for as
    /// long as it takes; not a crash.
    Unreachable(String),
    /// The broker refused the configuration (a queue with other arguments, a missing queue with
    /// `amqp.declare = false`, an unreadable TLS file): a restart cannot fix it; the agent stops.
    Config(String),
    /// Anything else: restarted with backoff, and counted towards the restart intensity.
    Crash(String),
}

/// The consumer's connection to the broker is gone (the delivery stream ended with it).
#[derive(Debug, thiserror::Error)]
#[error("connection to RabbitMQ lost: {0}")]
pub(crate) struct ConnectionLost(pub String);

impl ConsumerExit {
    /// Classifies the error a consumer ended with.
    #[must_use]
    pub(crate) fn of(error: &(dyn Error + Send + Sync + 'static)) -> Self {
        let text = error.to_string();
        if error.is::<ConnectionLost>() {
            return Self::Unreachable(text);
        }
        // A client error straight from lapin (`basic_qos`, `basic_consume` of a re-subscribe
        // on a connection that just died) is judged like a broker error.
        if let Some(client) = error.downcast_ref::<lapin::Error>() {
            return if crate::broker::lost_connection(client) {
                Self::Unreachable(text)
            } else {
                Self::Crash(text)
            };
        }
        match error.downcast_ref::<BrokerError>() {
            Some(broker) if broker.is_config_error() => Self::Config(text),
            Some(broker) if broker.is_unreachable() => Self::Unreachable(text),
            _ => Self::Crash(text),
        }
    }

    /// True when the exit counts towards the restart intensity.
    #[must_use]
    pub(crate) fn is_crash(&self) -> bool {
        matches!(self, Self::Crash(_))
    }

    /// What happened, for logs.
    #[must_use]
    pub(crate) fn reason(&self) -> &str {
        match self {
            Self::Unreachable(r) | Self::Config(r) | Self::Crash(r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_classified_by_type_not_by_wording() {
        let lost: Box<dyn Error + Send + Sync> = Box::new(ConnectionLost("reset".into()));
        assert!(matches!(
            ConsumerExit::of(&*lost),
            ConsumerExit::Unreachable(_)
        ));
        let missing: Box<dyn Error + Send + Sync> = Box::new(BrokerError::Missing("q".into()));
        assert!(matches!(
            ConsumerExit::of(&*missing),
            ConsumerExit::Config(_)
        ));
        let timeout: Box<dyn Error + Send + Sync> = Box::new(BrokerError::Timeout("node".into()));
        assert!(matches!(
            ConsumerExit::of(&*timeout),
            ConsumerExit::Unreachable(_)
        ));
        // A raw client error from a re-subscribe on a dead connection (issue #20, case 8).
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let raw: Box<dyn Error + Send + Sync> = Box::new(lapin::Error::from(io));
        assert!(matches!(
            ConsumerExit::of(&*raw),
            ConsumerExit::Unreachable(_)
        ));
        let raw: Box<dyn Error + Send + Sync> =
            Box::new(lapin::Error::from(lapin::ErrorKind::MissingHeartbeatError));
        assert!(!ConsumerExit::of(&*raw).is_crash());
        // A message that merely reads like a lost connection is a crash.
        let text: Box<dyn Error + Send + Sync> = "connection to RabbitMQ lost: x".into();
        let exit = ConsumerExit::of(&*text);
        assert!(exit.is_crash(), "{exit:?}");
        assert_eq!(exit.reason(), "connection to RabbitMQ lost: x");
    }
}
