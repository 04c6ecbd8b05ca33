//! amqp-agent: consumes RabbitMQ queues and has each message handled by PHP-FPM over FastCGI.
//!
//! # Layout
//! - [`config`]: the TOML file, its defaults and its validation.
//! - [`contract`]: the endpoint contract — which FastCGI params a message becomes.
//! - [`signature`]: HMAC signing of requests.
//! - [`provenance`]: which agent state headers of a delivery are believed (the agent's seal).
//! - [`printable`]: message-derived text escaped and capped for logs and terminals.
//! - [`outcome`]: pure decisions — a FastCGI reply or error becomes ack, retry or dead-letter.
//! - [`batch`]: several messages per request — the wire format, the streamed outcomes, the retry rule.
//! - [`fastcgi`]: the only module that speaks FastCGI (connection, timeouts, reply limits).
//! - [`upstreams`]: the FPM upstreams (`fpm.address`) and the FastCGI connections leased to them.
//! - [`fpm_status`]: FPM's status page (typed, parsed), its polling task and the slow-request watch.
//! - [`broker`]: the only module that connects to RabbitMQ, declares queues or publishes
//!   (confirmed); also the CLI's one-off sessions. Consuming and settling are the actors'.
//! - [`dead_letters`]: a subject's dead-letter queue for the operator — browse with filters, open,
//!   replay or discard (shared by the CLI and the admin API).
//! - [`autoscale`]: the pure pool-sizing decision (backlogs and FPM capacity in, pool sizes out).
//! - [`agent`]: the running agent as a value: start, drain, stop, read its counters; its
//!   autoscaler task (`agent::sizer`) applies [`autoscale`]'s decisions.
//! - [`actors`]: the supervision tree — root supervisor, one consumer per subject, FPM workers.
//! - [`trace_context`]: W3C trace context read from AMQP headers (pure).
//! - [`telemetry`]: logs, OpenTelemetry traces (context in and out) and Prometheus metrics.
//! - [`admin`]: the admin HTTP listener — `/metrics`, `/healthz`, `/readyz`, `/status`, commands.
//! - [`cli`]: the command line: `run`, `check-config`, `publish`, and operator commands
//!   (`status`, `pool set`, `pause`, `resume`, `dead-letters`).
//! - [`stats`]: per-subject counters and gauges the actors update and status output reads.
//! - [`poison`]: crash-loop protection — the in-flight journal and the `poison` decision.
//! - [`notify`]: the systemd notify protocol (READY, RELOADING, WATCHDOG, STOPPING).
//! - [`signals`]: Unix signals mapped onto a closed set of commands.
//! - [`wakeups`]: the runtime thread waits a little before parking while every FastCGI request in
//!   flight is mid-batch (fewer wake-ups per batch line).
//!
//! # Public API
//! `pub` is kept for what a target outside this library uses: `main.rs` ([`cli::main`]), the
//! integration tests (`tests/it`), the bench and soak (`examples/`) and the fuzz targets
//! (`fuzz/`). Everything else is `pub(crate)`, and what only a unit test needs is
//! `#[cfg(test)]`; the modules stay `pub` so those targets can name the types they use.
#![warn(unreachable_pub)]
pub mod actors;
pub(crate) mod admin;
pub mod agent;
pub mod autoscale;
pub mod batch;
pub mod broker;
pub mod cli;
pub mod config;
pub mod contract;
pub mod dead_letters;
pub mod fastcgi;
pub mod fleet;
pub mod fpm_status;
pub(crate) mod notify;
pub mod outcome;
pub mod poison;
pub(crate) mod printable;
pub(crate) mod provenance;
pub mod rate;
pub mod settings;
pub(crate) mod signals;
pub mod signature;
pub mod stats;
pub mod telemetry;
pub(crate) mod trace_context;
pub mod upstreams;
pub mod wakeups;
