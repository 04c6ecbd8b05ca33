//! The admin API of the dead-letter queues (the dashboard's Dead letters page): browse, open,
//! and replay or discard as a background job whose progress the page polls. The work is
//! `dead_letters`'s, the same functions the CLI calls.
//!
//! Every endpoint here needs the bearer token, reads included: a dead letter's headers and body
//! are the application's data, and a text search over them would reveal them bit by bit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AdminState;
use crate::dead_letters::{
    self, Action, Budget, DeadLetterError, Filter, FilterText, Progress, Selection,
};

/// Most dead letters in one page of the list.
pub(super) const MAX_PAGE: usize = 500;
/// Most messages a browse or an open looks at (the rest of the queue is not seen).
pub(super) const MAX_SCAN: usize = 50_000;
/// Most keys one action names.
pub(super) const MAX_KEYS: usize = 500;
/// Jobs remembered (the oldest finished one is forgotten first).
const KEPT_JOBS: usize = 32;

/// The replay and discard jobs, running and finished.
#[derive(Default)]
pub(super) struct Jobs {
    jobs: BTreeMap<String, Job>,
    order: Vec<String>,
}

/// Shared by the handlers and the jobs' tasks.
pub(super) type SharedJobs = Arc<Mutex<Jobs>>;

/// One replay or discard.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Job {
    /// Its name (random).
    pub id: String,
    /// The subject whose dead letters it acts on.
    pub subject: String,
    /// `replay` or `discard`.
    pub action: Action,
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    /// Why it failed.
    pub error: Option<String>,
    /// How far it got.
    pub progress: Progress,
}

impl Jobs {
    fn running_for(&self, subject: &str) -> Option<&Job> {
        self.jobs
            .values()
            .find(|j| j.subject == subject && j.state == "running")
    }

    fn insert(&mut self, job: Job) {
        while self.order.len() >= KEPT_JOBS {
            let Some(at) = self
                .order
                .iter()
                .position(|id| self.jobs.get(id).is_none_or(|j| j.state != "running"))
            else {
                break;
            };
            let id = self.order.remove(at);
            self.jobs.remove(&id);
        }
        self.order.push(job.id.clone());
        self.jobs.insert(job.id.clone(), job);
    }

    fn update(&mut self, id: &str, f: impl FnOnce(&mut Job)) {
        if let Some(job) = self.jobs.get_mut(id) {
            f(job);
        }
    }
}

/// The query of the list and of the actions: the filter, and for the list a page.
#[derive(Debug, Default, Deserialize)]
pub(super) struct DeadQuery {
    reason: Option<String>,
    status: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    older_than: Option<String>,
    grep: Option<String>,
    /// List: matches skipped.
    offset: Option<usize>,
    /// List: page size; actions: most messages acted on.
    limit: Option<usize>,
    /// Actions: the dead letters named by their keys, comma-separated (the filter is then
    /// ignored).
    keys: Option<String>,
    /// Open: the key of the dead letter.
    key: Option<String>,
}

impl DeadQuery {
    fn filter(&self) -> Result<Filter, Box<Response>> {
        Filter::parse(FilterText {
            reason: self.reason.as_deref(),
            status: self.status.as_deref(),
            kind: self.kind.as_deref(),
            older_than: self.older_than.as_deref(),
            grep: self.grep.as_deref(),
        })
        .map_err(|e| Box::new(bad_request(&e.to_string())))
    }
}

fn bad_request(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
}

fn failed(e: &DeadLetterError) -> Response {
    match e {
        DeadLetterError::UnknownSubject(_) => bad_request(&e.to_string()),
        DeadLetterError::Broker(b) => {
            (StatusCode::BAD_GATEWAY, format!("the broker failed: {b}\n")).into_response()
        }
    }
}

/// The budget of a read: the deadline leaves room within `admin.request_timeout`.
fn budget(state: &AdminState) -> Budget {
    Budget {
        max_scan: MAX_SCAN,
        deadline: Some(Instant::now() + state.request_timeout.mul_f32(0.6)),
        count_all: true,
    }
}

/// Reads need the token here too (see the module's documentation).
fn refused(state: &AdminState, headers: &HeaderMap) -> Option<Response> {
    super::refusal(state, headers)
}

/// `GET /dead-letters/{subject}`: a page of the matches.
pub(super) async fn list(
    State(state): State<AdminState>,
    Path(subject): Path<String>,
    Query(q): Query<DeadQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refused(&state, &headers) {
        return r;
    }
    let filter = match q.filter() {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let config = state.agent.config();
    let now = crate::contract::unix_now();
    let budget = budget(&state);
    let offset = q.offset.unwrap_or(0);
    // A task of its own: should the request time out, the walk still ends cleanly (the
    // messages go back in order) instead of being dropped halfway.
    let walk = tokio::spawn(async move {
        dead_letters::browse(&config, &subject, &filter, offset, limit, budget, now).await
    });
    match walk.await {
        Ok(Ok(page)) => axum::Json(page).into_response(),
        Ok(Err(e)) => failed(&e),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "the walk failed\n").into_response(),
    }
}

/// A dead letter opened, with the link of its trace.
#[derive(Serialize)]
struct Opened {
    #[serde(flatten)]
    detail: dead_letters::Detail,
    trace_url: Option<String>,
}

/// `GET /dead-letters/{subject}/message?key=K`: one dead letter, body included.
pub(super) async fn message(
    State(state): State<AdminState>,
    Path(subject): Path<String>,
    Query(q): Query<DeadQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refused(&state, &headers) {
        return r;
    }
    let Some(key) = q.key.filter(|k| valid_key(k)) else {
        return bad_request("key: 16 hex digits");
    };
    let config = state.agent.config();
    let now = crate::contract::unix_now();
    let budget = budget(&state);
    let walk = {
        let config = Arc::clone(&config);
        // A task of its own, as for the list.
        tokio::spawn(async move { dead_letters::open(&config, &subject, &key, budget, now).await })
    };
    let Ok(found) = walk.await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "the walk failed\n").into_response();
    };
    match found {
        Ok(Some(detail)) => {
            let trace_url = detail
                .summary
                .trace_id
                .as_deref()
                .and_then(|id| config.admin.trace_link(id));
            axum::Json(Opened { detail, trace_url }).into_response()
        }
        Ok(None) => (
            StatusCode::NOT_FOUND,
            "no such dead letter (replayed, discarded, or not among the first ones)\n",
        )
            .into_response(),
        Err(e) => failed(&e),
    }
}

fn valid_key(key: &str) -> bool {
    key.len() == 16 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `POST /dead-letters/{subject}/replay`
pub(super) async fn replay(
    State(state): State<AdminState>,
    Path(subject): Path<String>,
    Query(q): Query<DeadQuery>,
) -> Response {
    start(&state, subject, Action::Replay, &q)
}

/// `POST /dead-letters/{subject}/discard`
pub(super) async fn discard(
    State(state): State<AdminState>,
    Path(subject): Path<String>,
    Query(q): Query<DeadQuery>,
) -> Response {
    start(&state, subject, Action::Discard, &q)
}

/// Starts a job (the guard checked the token: these are commands); `202` with the job.
fn start(state: &AdminState, subject: String, action: Action, q: &DeadQuery) -> Response {
    let config = state.agent.config();
    if let Err(e) = dead_letters::queues(&config, &subject) {
        return failed(&e);
    }
    let selection = match &q.keys {
        Some(keys) => {
            let keys: Vec<String> = keys
                .split(',')
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect();
            if keys.is_empty() || keys.len() > MAX_KEYS || !keys.iter().all(|k| valid_key(k)) {
                return bad_request(&format!(
                    "keys: 1 to {MAX_KEYS} keys of 16 hex digits, comma-separated"
                ));
            }
            Selection::Keys(keys)
        }
        None => match q.filter() {
            Ok(f) => Selection::Matching(f),
            Err(r) => return *r,
        },
    };
    let mut jobs = state.jobs.lock().expect("jobs lock");
    if let Some(running) = jobs.running_for(&subject) {
        return (
            StatusCode::CONFLICT,
            format!(
                "job {} is still working on {subject}'s dead letters\n",
                running.id
            ),
        )
            .into_response();
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let job = Job {
        id: id.clone(),
        subject: subject.clone(),
        action,
        state: "running",
        error: None,
        progress: Progress::default(),
    };
    jobs.insert(job.clone());
    drop(jobs);
    let shared = Arc::clone(&state.jobs);
    let limit = q.limit;
    tokio::spawn(async move {
        let now = crate::contract::unix_now();
        let update = |p: &Progress| {
            shared
                .lock()
                .expect("jobs lock")
                .update(&id, |j| j.progress = *p);
        };
        let result =
            dead_letters::act(&config, &subject, action, &selection, limit, now, update).await;
        shared
            .lock()
            .expect("jobs lock")
            .update(&id, |j| match result {
                Ok(p) => {
                    j.progress = p;
                    j.state = "done";
                }
                Err(e) => {
                    j.state = "failed";
                    j.error = Some(e.to_string());
                }
            });
    });
    (StatusCode::ACCEPTED, axum::Json(job)).into_response()
}

/// `GET /dead-letter-jobs/{id}`
pub(super) async fn job(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refused(&state, &headers) {
        return r;
    }
    let jobs = state.jobs.lock().expect("jobs lock");
    match jobs.jobs.get(&id) {
        Some(job) => axum::Json(job.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "no such job\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: usize, subject: &str, state: &'static str) -> Job {
        Job {
            id: format!("{id:016x}"),
            subject: subject.to_owned(),
            action: Action::Replay,
            state,
            error: None,
            progress: Progress::default(),
        }
    }

    #[test]
    fn finished_jobs_are_forgotten_oldest_first_and_running_ones_never() {
        let mut jobs = Jobs::default();
        jobs.insert(job(0, "event", "running"));
        for i in 1..=40 {
            jobs.insert(job(i, "command", "done"));
        }
        assert_eq!(jobs.jobs.len(), KEPT_JOBS);
        assert!(jobs.jobs.contains_key(&format!("{:016x}", 0)));
        assert!(!jobs.jobs.contains_key(&format!("{:016x}", 1)));
        assert!(jobs.jobs.contains_key(&format!("{:016x}", 40)));
        assert_eq!(
            jobs.running_for("event").map(|j| j.id.clone()),
            Some(format!("{:016x}", 0))
        );
        assert!(jobs.running_for("command").is_none());
        jobs.update(&format!("{:016x}", 0), |j| j.state = "done");
        assert!(jobs.running_for("event").is_none());
    }

    #[test]
    fn keys_are_16_hex_digits() {
        assert!(valid_key("0123456789abcdef"));
        assert!(!valid_key("0123456789abcde"));
        assert!(!valid_key("0123456789abcdeg"));
        assert!(!valid_key("0123456789abcdef0"));
    }
}
