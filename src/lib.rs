//! amqp-agent: consumes RabbitMQ queues and has each message handled by PHP-FPM over FastCGI.
//!
//! # Layout
//! - [`config`]: the TOML file, its defaults and its validation.
//! - [`contract`]: the endpoint contract — which FastCGI params a message becomes.
//! - [`signature`]: HMAC signing of requests.
//! - [`outcome`]: pure decisions — a FastCGI reply or error becomes ack, retry or dead-letter.
//! - [`fastcgi`]: the only module that speaks FastCGI (connection, timeouts, reply limits).
//! - [`broker`]: the only module that speaks AMQP (connect, topology, confirmed publishing).
//! - [`agent`]: the running agent as a value: start, drain, stop, read its counters.
//! - [`actors`]: the supervision tree — root supervisor, one consumer per subject, FPM workers.
//! - [`cli`]: the command-line interface (`run`, `check-config`, `publish`).
//! - [`signals`]: Unix signals mapped onto a closed set of commands.
pub mod actors;
pub mod agent;
pub mod broker;
pub mod cli;
pub mod config;
pub mod contract;
pub mod fastcgi;
pub mod outcome;
pub mod signals;
pub mod signature;
