//! The fleet over the admin API: `GET /fleet` (every agent heard from, this one marked) and
//! commands to another agent, carried over the broker and answered
//! (`POST /fleet/{agent}/subjects/{subject}/pause?for=`, `…/resume`,
//! `POST /fleet/{agent}/pools/{subject}?size=`). Commands need the admin token, as every `POST`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use serde::Serialize;

use super::{AdminState, MAX_PAUSE, PauseQuery, SizeQuery};
use crate::fleet::{Action, Member};

/// `GET /fleet`.
#[derive(Serialize)]
struct FleetDoc {
    /// `admin.fleet` is on.
    enabled: bool,
    /// This agent's fleet id.
    me: Option<String>,
    /// The link to the broker is up.
    connected: bool,
    /// Every agent heard from.
    agents: Vec<Member>,
}

pub(super) async fn list(State(state): State<AdminState>) -> Response {
    let doc = match state.agent.fleet() {
        None => FleetDoc {
            enabled: false,
            me: None,
            connected: false,
            agents: Vec::new(),
        },
        Some(fleet) => FleetDoc {
            enabled: true,
            me: Some(fleet.me().to_owned()),
            connected: fleet.connected(),
            agents: fleet.members(),
        },
    };
    Json(doc).into_response()
}

async fn send(state: &AdminState, agent: &str, action: Action) -> Response {
    let Some(fleet) = state.agent.fleet() else {
        return (
            StatusCode::NOT_FOUND,
            "the fleet is off here (admin.fleet)\n",
        )
            .into_response();
    };
    match fleet.command(agent, action).await {
        Ok(reply) if reply.ok => {
            (StatusCode::OK, format!("{agent}: {}\n", reply.message)).into_response()
        }
        Ok(reply) => (
            StatusCode::CONFLICT,
            format!("{agent}: {}\n", reply.message),
        )
            .into_response(),
        Err(e) => (StatusCode::GATEWAY_TIMEOUT, format!("{e}\n")).into_response(),
    }
}

pub(super) async fn pause(
    State(state): State<AdminState>,
    Path((agent, subject)): Path<(String, String)>,
    Query(q): Query<PauseQuery>,
) -> Response {
    let for_secs = match q.duration.filter(|t| !t.is_empty()) {
        None => None,
        Some(text) => match humantime::parse_duration(&text) {
            Ok(d) if d >= std::time::Duration::from_secs(1) && d <= MAX_PAUSE => Some(d.as_secs()),
            _ => {
                return (
                    StatusCode::BAD_REQUEST,
                    "for: a duration from 1s to 7d, such as 90s, 15m or 2h\n",
                )
                    .into_response();
            }
        },
    };
    send(&state, &agent, Action::Pause { subject, for_secs }).await
}

pub(super) async fn resume(
    State(state): State<AdminState>,
    Path((agent, subject)): Path<(String, String)>,
) -> Response {
    send(&state, &agent, Action::Resume { subject }).await
}

pub(super) async fn set_pool(
    State(state): State<AdminState>,
    Path((agent, subject)): Path<(String, String)>,
    Query(q): Query<SizeQuery>,
) -> Response {
    send(
        &state,
        &agent,
        Action::SetPool {
            subject,
            size: q.size,
        },
    )
    .await
}
