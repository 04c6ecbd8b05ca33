//! The integration tests: one crate, so the library is linked into one test binary, not one per
//! file. Each module is one concern; `common` is the harness they share (a php-fpm pool started
//! once, a real RabbitMQ, the agent as a binary or in-process).
//!
//! `cargo test --test it` runs them all, `cargo test --test it faults::` one module, and
//! `cargo test --test it faults::kill_9` one test. They run side by side in one process
//! (`--test-threads`: four in `scripts/test`, one per core by default), except the few that
//! `common::turn` runs alone.

mod common;

mod acks;
mod admin;
mod alerts;
mod batches;
mod broker_restart;
mod cli;
mod cluster;
mod dashboard;
mod edges;
mod faults;
mod fpm_capacity;
mod fpm_pool;
mod fpm_upstreams;
mod hostile_frames;
mod laravel;
mod message_data;
mod message_ids;
mod observability;
mod operations;
mod php_way;
mod pipeline;
mod poison;
mod queues;
mod rate_limits;
mod secrets;
mod symfony;
mod tls;
