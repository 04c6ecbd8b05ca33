//! The admin HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/status`, and operator commands.
//!
//! Invariant: nothing secret is ever rendered (no AMQP password, no signing secret, no token),
//! so reads are open to probes and scrapers; commands (POST) require the bearer token whenever
//! one is configured — always when the listener is not on loopback (config validation enforces it).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::agent::AgentHandle;

#[derive(Clone)]
struct AdminState {
    agent: AgentHandle,
    token: Option<Arc<str>>,
    /// The listener is not on loopback: commands are refused without a token.
    guard_reads: bool,
}

/// Serves the admin API on `listener` until `shutdown` resolves.
///
/// # Errors
/// When serving fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    agent: AgentHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = agent.config();
    let guard_reads = listener
        .local_addr()
        .map(|a| !a.ip().is_loopback())
        .unwrap_or(true);
    let state = AdminState {
        token: config.admin.token.as_deref().map(Arc::from),
        guard_reads,
        agent,
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/pools/{subject}", post(set_pool))
        .route("/subjects/{subject}/pause", post(pause))
        .route("/subjects/{subject}/resume", post(resume))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Reads (health, metrics, status) are open: they are meant for probes and scrapers and carry
/// no secrets. Commands need the bearer token when one is configured, and one must be
/// configured when the listener is not on loopback.
fn authorized(state: &AdminState, headers: &HeaderMap, write: bool) -> Result<(), Box<Response>> {
    if !write {
        return Ok(());
    }
    let Some(token) = &state.token else {
        return if state.guard_reads {
            Err(Box::new(
                (StatusCode::FORBIDDEN, "commands need admin.token\n").into_response(),
            ))
        } else {
            Ok(())
        };
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(Box::new(
            (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response(),
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&state, &headers, false) {
        return *r;
    }
    if state.agent.alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "supervision tree stopped\n",
        )
            .into_response()
    }
}

async fn readyz(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&state, &headers, false) {
        return *r;
    }
    let problems = state.agent.not_ready();
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&state, &headers, false) {
        return *r;
    }
    let body = state.agent.metrics().encode();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn status(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&state, &headers, false) {
        return *r;
    }
    axum::Json(state.agent.status()).into_response()
}

#[derive(Deserialize)]
struct SizeQuery {
    size: usize,
}

async fn set_pool(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    Query(q): Query<SizeQuery>,
) -> Response {
    if let Err(r) = authorized(&state, &headers, true) {
        return *r;
    }
    match state.agent.set_pool(&subject, q.size) {
        Ok(size) => (StatusCode::OK, format!("{subject}: pool size {size}\n")).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn pause(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(subject): Path<String>,
) -> Response {
    command_pause(state, headers, subject, true)
}

async fn resume(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(subject): Path<String>,
) -> Response {
    command_pause(state, headers, subject, false)
}

fn command_pause(state: AdminState, headers: HeaderMap, subject: String, pause: bool) -> Response {
    if let Err(r) = authorized(&state, &headers, true) {
        return *r;
    }
    match state.agent.set_paused(&subject, pause) {
        Ok(()) => (
            StatusCode::OK,
            format!("{subject}: {}\n", if pause { "paused" } else { "resumed" }),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}
