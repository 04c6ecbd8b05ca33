//! The operator's web dashboard on the admin listener: `/` (overview), `/dashboard/metrics`,
//! `/dashboard/fpm`, `/dashboard/fleet`, `/dashboard/actions`, `/dashboard/dead-letters`, their data (`/dashboard/data.json`,
//! `/dashboard/history.json`) and static assets (`/assets/…`), all inside the binary.
//!
//! Invariant: the dashboard only reads. Its pages and data are as open as `/status` (no
//! secret, query strings hidden); its actions are the admin API's commands, sent by the
//! page's script with the token the operator typed (a header, never a cookie), so they pass
//! the same guard as `curl`. Every value is escaped by the templates (`pages`) or set with
//! `textContent` by the script; the Content-Security-Policy the listener sends with every
//! response allows scripts and styles from these assets only.

pub(crate) mod history;
pub(crate) mod pages;

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::agent::AgentHandle;
use history::{History, HistoryView, SAMPLE_EVERY};

/// The history shared by the sampler and the handlers.
pub(crate) type SharedHistory = Arc<Mutex<History>>;

/// The Content-Security-Policy of every admin response: scripts, styles, images and fetches
/// from the listener itself only; no inline script or style attribute, no framing, no form
/// posted anywhere (the script sends the commands).
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Assets compiled in: (name, content type, bytes). uPlot is vendored with its licence.
const ASSETS: [(&str, &str, &[u8]); 6] = [
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("../../assets/icon.svg"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/dashboard.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/uplot/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/uplot/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../../assets/uplot/LICENSE"),
    ),
];

/// A new, empty history for the agent's subjects.
#[must_use]
pub(crate) fn new_history(agent: &AgentHandle) -> SharedHistory {
    let names: Vec<String> = agent.stats().into_keys().collect();
    Arc::new(Mutex::new(History::new(&names)))
}

/// Samples the agent's counters into `history` every [`SAMPLE_EVERY`], forever (the caller
/// aborts the task).
pub(crate) async fn sample(agent: AgentHandle, history: SharedHistory) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stats = agent.stats();
        history
            .lock()
            .expect("history lock")
            .record(Instant::now(), unix_now(), &stats);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// `/`
pub(crate) fn overview(agent: &AgentHandle, history: &SharedHistory) -> Response {
    let status = agent.status().without_queries();
    let history = history.lock().expect("history lock");
    html(pages::overview(&status, |name| history.latest(name)))
}

/// `/dashboard/metrics`
pub(crate) fn metrics(agent: &AgentHandle, history: &SharedHistory) -> Response {
    let bytes = history.lock().expect("history lock").bytes();
    html(pages::metrics(&agent.status(), bytes))
}

/// `/dashboard/fpm`
pub(crate) fn fpm(agent: &AgentHandle) -> Response {
    let slow = agent.config().slow_after();
    let slow_ms = u64::try_from(slow.as_millis()).unwrap_or(u64::MAX);
    html(pages::fpm(&agent.status().without_queries(), slow_ms))
}

/// `/dashboard/fleet`
pub(crate) fn fleet(agent: &AgentHandle) -> Response {
    let status = agent.status().without_queries();
    match agent.fleet() {
        None => html(pages::fleet(&status, None)),
        Some(fleet) => {
            let members = fleet.members();
            html(pages::fleet(
                &status,
                Some((fleet.me(), fleet.connected(), &members)),
            ))
        }
    }
}

/// `/dashboard/actions`
pub(crate) fn actions(agent: &AgentHandle) -> Response {
    html(pages::actions(&agent.status()))
}

pub(crate) use pages::DeadPageQuery;

/// `/dashboard/dead-letters`
pub(crate) fn dead_letters(agent: &AgentHandle, q: DeadPageQuery) -> Response {
    html(pages::dead_letters(&agent.status(), &q))
}

/// `/dashboard/data.json`: the overview's rows and the sparklines' series.
#[derive(Serialize)]
struct Data {
    ready: bool,
    uptime_seconds: u64,
    subjects: std::collections::BTreeMap<String, Row>,
    history: HistoryView,
}

#[derive(Serialize)]
struct Row {
    state: &'static str,
    cells: std::collections::BTreeMap<&'static str, String>,
}

/// `/dashboard/data.json`
pub(crate) fn data(agent: &AgentHandle, history: &SharedHistory) -> Response {
    let status = agent.status();
    let history = history.lock().expect("history lock");
    let subjects = status
        .subjects
        .iter()
        .map(|(name, s)| {
            let cells = pages::row(s, history.latest(name)).into_iter().collect();
            let row = Row {
                state: s.state,
                cells,
            };
            (name.clone(), row)
        })
        .collect();
    axum::Json(Data {
        ready: status.ready,
        uptime_seconds: status.uptime_seconds,
        subjects,
        history: history.view(true),
    })
    .into_response()
}

/// `/dashboard/history.json`
pub(crate) fn history(history: &SharedHistory) -> Response {
    axum::Json(history.lock().expect("history lock").view(false)).into_response()
}

/// `/favicon.ico`, which browsers ask for whatever the page says.
pub(crate) async fn favicon() -> Response {
    asset(Path("icon.svg".to_owned())).await
}

/// `/assets/{name}`
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, bytes)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

#[cfg(test)]
mod tests;
