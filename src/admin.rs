//! The admin HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/status`, and operator commands.
//!
//! Invariant: nothing secret is ever rendered (no AMQP password, no signing secret, no token),
//! so reads are open to probes and scrapers; the dead letters (`dead`) are the application's
//! data, and their reads need the token like a command. Every command (any method but `GET` and `HEAD`)
//! needs the bearer token, on loopback too; without a configured token commands are refused,
//! unless `admin.allow_unauthenticated_commands` (loopback only) opts out. A request with an
//! `Origin` header other than the listener's own (a browser on another site) is refused
//! whatever it asks for, and so is one whose `Host` is not the listener's own address or one
//! of `admin.allowed_hosts` (DNS rebinding, `host`). The web dashboard (`dashboard`) is served
//! at `/` with its assets; its script sends the commands with the token the operator typed,
//! as a header (never a cookie), so a same-origin command needs the token like any other.
//! Every response carries a strict Content-Security-Policy and `X-Content-Type-Options`. `/status`
//! shows FPM children's request URIs without their query strings unless the token is given. At
//! most `admin.max_connections` connections are open at once, and each is closed at the latest
//! `header_timeout + request_timeout` after it was accepted: the listener's file descriptors
//! stay bounded. At the cap, a new connection closes the oldest one that has not sent its
//! request yet (`conns`), so idle connections cannot keep `/healthz` and `/readyz` from
//! answering.

mod conns;
pub(crate) mod dashboard;
mod dead;
mod fleet;
mod host;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Router;
use axum::body::HttpBody;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::agent::AgentHandle;
use conns::{Admission, Conn, Conns};

/// No endpoint reads a body; a client may still send a small one (`{}`), nothing larger.
pub(crate) const MAX_BODY_BYTES: u64 = 4096;
/// Request line plus headers must fit in hyper's read buffer of this size (its minimum is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in one request.
const MAX_HEADERS: usize = 32;
/// What a connection over `admin.max_connections` gets before it is closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
    Content-Length: 27\r\nConnection: close\r\n\r\ntoo many admin connections\n";

#[derive(Clone)]
struct AdminState {
    agent: AgentHandle,
    /// The bearer token every command must carry.
    token: Option<Arc<str>>,
    /// `admin.allow_unauthenticated_commands`: commands pass without a token when none is set.
    open_commands: bool,
    /// `admin.request_timeout`: bound on one request's handling.
    request_timeout: Duration,
    /// `admin.allowed_hosts`, lowercased: names a `Host` header may carry.
    allowed_hosts: Arc<[String]>,
    /// The dashboard's last hour.
    history: dashboard::SharedHistory,
    /// Dead-letter replays and discards, running and finished.
    jobs: dead::SharedJobs,
}

/// Serves the admin API on `listener` until `shutdown` resolves. Connections still open then
/// end on their own deadline.
///
/// # Errors
/// Never today; accept errors (e.g. out of file descriptors) are logged and retried.
pub(crate) async fn serve(
    listener: TcpListener,
    agent: AgentHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = agent.config();
    let admin = config.admin.clone();
    let history = dashboard::new_history(&agent);
    let sampler = AbortOnDrop(tokio::spawn(dashboard::sample(
        agent.clone(),
        Arc::clone(&history),
    )));
    let app = router(AdminState {
        history,
        jobs: dead::SharedJobs::default(),
        token: admin.token.as_deref().map(Arc::from),
        open_commands: admin.allow_unauthenticated_commands,
        request_timeout: admin.request_timeout,
        allowed_hosts: host::normalized(&admin.allowed_hosts).into(),
        agent,
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(admin.header_timeout)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let conns = Conns::new(admin.max_connections);
    let lifetime = admin.header_timeout + admin.request_timeout;
    // At most one warning per 10 s for a flood of refused or failed connections.
    let complaints = crate::telemetry::log_limit::LogEvery::new(Duration::from_secs(10));
    tokio::pin!(shutdown);
    let _sampler = sampler;
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: retrying at once would spin on the same error.
                    if let Some(count) = complaints.note(Instant::now()) {
                        warn!(error = %e, count, "Admin listener cannot accept a connection");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = match conns.admit(stream.local_addr().ok()) {
            Admission::Admitted(slot) => slot,
            Admission::Evicted(slot) => {
                if let Some(count) = complaints.note(Instant::now()) {
                    warn!(
                        max_connections = admin.max_connections,
                        count,
                        "Admin connections at the cap: closing the oldest one that sent no request"
                    );
                }
                slot
            }
            Admission::Full => {
                if let Some(count) = complaints.note(Instant::now()) {
                    warn!(
                        max_connections = admin.max_connections,
                        count, "Admin connection refused: admin.max_connections are being answered"
                    );
                }
                refuse(stream);
                continue;
            }
        };
        let conn = Arc::clone(&slot.conn);
        let service = app.clone().layer(Extension(Arc::clone(&conn)));
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        tokio::spawn(async move {
            tokio::select! {
                // Covers a client that never reads the response, which no hyper timeout does.
                _ = tokio::time::timeout(lifetime, connection) => {}
                () = conn.evicted() => {}
            }
            drop(slot);
        });
    }
}

/// Aborts the task when dropped (the dashboard's sampler ends with the listener).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route(
            "/",
            get(|State(s): State<AdminState>| async move {
                dashboard::overview(&s.agent, &s.history)
            }),
        )
        .route(
            "/dashboard/metrics",
            get(|State(s): State<AdminState>| async move {
                dashboard::metrics(&s.agent, &s.history)
            }),
        )
        .route(
            "/dashboard/fpm",
            get(|State(s): State<AdminState>| async move { dashboard::fpm(&s.agent) }),
        )
        .route(
            "/dashboard/fleet",
            get(|State(s): State<AdminState>| async move { dashboard::fleet(&s.agent) }),
        )
        .route(
            "/dashboard/actions",
            get(|State(s): State<AdminState>| async move { dashboard::actions(&s.agent) }),
        )
        .route(
            "/dashboard/data.json",
            get(|State(s): State<AdminState>| async move {
                dashboard::data(&s.agent, &s.history)
            }),
        )
        .route(
            "/dashboard/history.json",
            get(|State(s): State<AdminState>| async move { dashboard::history(&s.history) }),
        )
        .route(
            "/dashboard/dead-letters",
            get(
                |State(s): State<AdminState>, Query(q): Query<dashboard::DeadPageQuery>| async move {
                    dashboard::dead_letters(&s.agent, q)
                },
            ),
        )
        .route("/dead-letter-jobs/{id}", get(dead::job))
        .route("/dead-letters/{subject}", get(dead::list))
        .route("/dead-letters/{subject}/message", get(dead::message))
        .route("/dead-letters/{subject}/replay", post(dead::replay))
        .route("/dead-letters/{subject}/discard", post(dead::discard))
        .route("/assets/{name}", get(dashboard::asset))
        .route("/favicon.ico", get(dashboard::favicon))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/pools/{subject}", post(set_pool))
        .route("/pools/{subject}/auto", post(pool_auto))
        .route("/subjects/{subject}/pause", post(pause))
        .route("/subjects/{subject}/rate", post(set_rate))
        .route("/subjects/{subject}/resume", post(resume))
        .route("/fleet", get(fleet::list))
        .route(
            "/fleet/{agent}/subjects/{subject}/pause",
            post(fleet::pause),
        )
        .route(
            "/fleet/{agent}/subjects/{subject}/resume",
            post(fleet::resume),
        )
        .route("/fleet/{agent}/pools/{subject}", post(fleet::set_pool))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Answers a connection over the cap and closes it, without waiting for anything.
fn refuse(stream: TcpStream) {
    use std::io::{Read as _, Write as _};
    // Plain non-blocking syscalls: the reactor has not seen this socket yet, so Tokio's
    // `try_*` would report "not ready". Reading what already arrived lets the close be a FIN
    // rather than a reset that could discard the answer; a fresh send buffer takes the write.
    let Ok(mut socket) = stream.into_std() else {
        return;
    };
    let _ = socket.read(&mut [0u8; 1024]);
    let _ = socket.write(TOO_MANY);
}

/// Every request passes here before routing: foreign `Host`s, browsers, oversized bodies and
/// unauthorized commands are refused, and the handler is bounded by `admin.request_timeout`.
async fn guard(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let conn = request.extensions().get::<Arc<Conn>>();
    if let Some(conn) = conn {
        conn.head_read();
    }
    let host = request.headers().get(header::HOST).map(|h| h.as_bytes());
    if !host::allowed(host, conn.and_then(|c| c.local), &state.allowed_hosts) {
        return (
            StatusCode::FORBIDDEN,
            "the Host header names neither this listener's address nor one of admin.allowed_hosts\n",
        )
            .into_response();
    }
    if !same_origin(request.headers()) {
        return (
            StatusCode::FORBIDDEN,
            "requests from another Origin (a browser on another site) are refused\n",
        )
            .into_response();
    }
    if request
        .body()
        .size_hint()
        .upper()
        .is_none_or(|n| n > MAX_BODY_BYTES)
    {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes with a Content-Length\n"),
        )
            .into_response();
    }
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    if !read && let Some(refused) = refusal(&state, request.headers()) {
        return refused;
    }
    let mut response = match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "admin request timed out\n").into_response(),
    };
    secure(response.headers_mut());
    response
}

/// True for a request a browser did not send from another site: no `Origin` (curl, the CLI,
/// Prometheus, a browser's same-origin GET), or an `Origin` that is this very listener as the
/// request names it (`http://` + its `Host`, which `host::allowed` vetted), and no
/// `Sec-Fetch-Site` saying otherwise. The dashboard's own commands pass; a page elsewhere
/// (even one whose name resolves here) cannot.
fn same_origin(headers: &HeaderMap) -> bool {
    let fetch_site_ok = headers
        .get("sec-fetch-site")
        .is_none_or(|v| matches!(v.as_bytes(), b"same-origin" | b"none"));
    let Some(origin) = headers.get(header::ORIGIN) else {
        return fetch_site_ok;
    };
    let Some(host) = headers.get(header::HOST) else {
        return false;
    };
    let origin = origin.as_bytes();
    fetch_site_ok
        && origin.len() == "http://".len() + host.len()
        && origin[.."http://".len()].eq_ignore_ascii_case(b"http://")
        && origin["http://".len()..].eq_ignore_ascii_case(host.as_bytes())
}

/// Headers on every admin response: the dashboard's Content-Security-Policy, no framing, no
/// content sniffing, no referrer, nothing cached.
fn secure(headers: &mut HeaderMap) {
    use axum::http::HeaderValue;
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(dashboard::CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

/// Why a command is refused, if it is: it passes with the right bearer token, or with none
/// configured and the explicit development opt-out.
fn refusal(state: &AdminState, headers: &HeaderMap) -> Option<Response> {
    if state.token.is_none() {
        return (!state.open_commands).then(|| {
            (
                StatusCode::FORBIDDEN,
                "commands are disabled: admin.token is not set in the agent's config\n",
            )
                .into_response()
        });
    }
    (!has_token(state, headers)).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong bearer token\n",
        )
            .into_response()
    })
}

/// True when the request carries the configured bearer token (never without one configured).
fn has_token(state: &AdminState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        return false;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz(State(state): State<AdminState>) -> Response {
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

async fn readyz(State(state): State<AdminState>) -> Response {
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

async fn metrics(State(state): State<AdminState>) -> Response {
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

/// The query strings of FPM's busy children belong to other requests on the pool (a web
/// app's `?token=…`): only a caller with the token sees them.
async fn status(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let status = state.agent.status();
    if has_token(&state, &headers) {
        axum::Json(status).into_response()
    } else {
        axum::Json(status.without_queries()).into_response()
    }
}

#[derive(Deserialize)]
struct SizeQuery {
    size: usize,
}

async fn set_pool(
    State(state): State<AdminState>,
    Path(subject): Path<String>,
    Query(q): Query<SizeQuery>,
) -> Response {
    match state.agent.set_pool(&subject, q.size) {
        Ok(size) => (StatusCode::OK, format!("{subject}: pool size {size}\n")).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn pool_auto(State(state): State<AdminState>, Path(subject): Path<String>) -> Response {
    match state.agent.pool_auto(&subject) {
        Ok(()) => (
            StatusCode::OK,
            format!("{subject}: pool sized by the autoscaler\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

#[derive(Deserialize)]
struct RateQuery {
    /// `50/s`, `300/m`, `3600/h`, or `none` to lift the limit.
    limit: String,
    /// The bucket's size (default 1).
    burst: Option<u32>,
}

async fn set_rate(
    State(state): State<AdminState>,
    Path(subject): Path<String>,
    Query(q): Query<RateQuery>,
) -> Response {
    let rate = if q.limit == "none" {
        None
    } else {
        let burst = q.burst.unwrap_or(1);
        if !(1..=100_000).contains(&burst) {
            return (StatusCode::BAD_REQUEST, "burst must be 1 to 100000\n").into_response();
        }
        match crate::config::Rate::parse(&q.limit) {
            Ok(rate) => Some(crate::rate::RateLimit { rate, burst }),
            Err(e) => return (StatusCode::BAD_REQUEST, format!("limit: {e}\n")).into_response(),
        }
    };
    match state.agent.set_rate(&subject, rate) {
        Ok(()) => {
            let shown = rate.map_or_else(
                || "no rate limit".to_owned(),
                |l| format!("rate limit {}, burst {}", l.rate, l.burst),
            );
            (StatusCode::OK, format!("{subject}: {shown}\n")).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

#[derive(Deserialize)]
struct PauseQuery {
    /// How long (`90s`, `15m`, `2h`): the subject resumes by itself after it. Absent: until
    /// resumed.
    #[serde(rename = "for")]
    duration: Option<String>,
}

/// The longest timed pause: a typo (`15h` for `15m`) should not hold a queue for weeks.
const MAX_PAUSE: Duration = Duration::from_secs(7 * 24 * 3600);

async fn pause(
    State(state): State<AdminState>,
    Path(subject): Path<String>,
    Query(q): Query<PauseQuery>,
) -> Response {
    let Some(text) = q.duration.filter(|t| !t.is_empty()) else {
        return command_pause(&state, &subject, true);
    };
    let duration = match humantime::parse_duration(&text) {
        Ok(d) if d >= Duration::from_secs(1) && d <= MAX_PAUSE => d,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "for: a duration from 1s to 7d, such as 90s, 15m or 2h\n",
            )
                .into_response();
        }
    };
    match state.agent.pause_for(&subject, duration) {
        Ok(()) => (
            StatusCode::OK,
            format!(
                "{subject}: paused for {}\n",
                humantime::format_duration(duration)
            ),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn resume(State(state): State<AdminState>, Path(subject): Path<String>) -> Response {
    command_pause(&state, &subject, false)
}

fn command_pause(state: &AdminState, subject: &str, pause: bool) -> Response {
    match state.agent.set_paused(subject, pause) {
        Ok(()) => (
            StatusCode::OK,
            format!("{subject}: {}\n", if pause { "paused" } else { "resumed" }),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_content_and_length() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!constant_time_eq(b"0123456789abcdef", b"0123456789abcde"));
    }
}
