//! The dashboard's HTML, rendered with maud: every value is escaped by the template, nothing
//! is marked pre-escaped, and no element carries an inline script or style (the CSP forbids
//! them).

use maud::{DOCTYPE, Markup, html};

use super::history::Point;
use crate::agent::{Status, SubjectStatus};

/// The pages, in the navigation's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Page {
    /// `/`
    Overview,
    /// `/dashboard/metrics`
    Metrics,
    /// `/dashboard/fpm`
    Fpm,
    /// `/dashboard/actions`
    Actions,
    /// `/dashboard/dead-letters`
    DeadLetters,
    /// `/dashboard/fleet`
    Fleet,
}

impl Page {
    const ALL: [Self; 6] = [
        Self::Overview,
        Self::Fleet,
        Self::Metrics,
        Self::Fpm,
        Self::Actions,
        Self::DeadLetters,
    ];

    fn path(self) -> &'static str {
        match self {
            Self::Overview => "/",
            Self::Metrics => "/dashboard/metrics",
            Self::Fpm => "/dashboard/fpm",
            Self::Actions => "/dashboard/actions",
            Self::DeadLetters => "/dashboard/dead-letters",
            Self::Fleet => "/dashboard/fleet",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Overview => "Overview",
            Self::Metrics => "Metrics",
            Self::Fpm => "FPM",
            Self::Actions => "Actions",
            Self::DeadLetters => "Dead letters",
            Self::Fleet => "Fleet",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Self::Overview => "overview",
            Self::Metrics => "metrics",
            Self::Fpm => "fpm",
            Self::Actions => "actions",
            Self::DeadLetters => "dead-letters",
            Self::Fleet => "fleet",
        }
    }
}

/// Longest text shown of one value (a queue name, a URI): a 1 MiB line is cut, and says so.
pub(crate) const MAX_SHOWN: usize = 300;

/// `text`, cut at [`MAX_SHOWN`] bytes (on a character boundary) with a note of its length.
#[must_use]
pub(crate) fn shown(text: &str) -> String {
    if text.len() <= MAX_SHOWN {
        return text.to_owned();
    }
    let mut end = MAX_SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

fn layout(page: Page, status: &Status, body: &Markup) -> String {
    let ready = if status.ready { "ready" } else { "not ready" };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { "amqp-agent · " (page.title()) }
                link rel="icon" href="/assets/icon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/assets/uPlot.min.css";
                link rel="stylesheet" href="/assets/dashboard.css";
                script src="/assets/uPlot.iife.min.js" defer {}
                script src="/assets/dashboard.js" defer {}
            }
            body data-page=(page.id()) {
                header {
                    div.brand {
                        strong { "amqp-agent" }
                        span.meta {
                            " " (status.version) " · up " (uptime(status.uptime_seconds)) " · "
                            span.ready data-ready=(status.ready) { (ready) }
                        }
                    }
                    nav {
                        @for p in Page::ALL {
                            @if p == page {
                                a href=(p.path()) aria-current="page" { (p.title()) }
                            } @else {
                                a href=(p.path()) { (p.title()) }
                            }
                        }
                    }
                    div.controls {
                        label.refresh {
                            input #autorefresh type="checkbox" checked;
                            " Auto-refresh"
                        }
                        form #token-form autocomplete="off" {
                            label for="token" { "Admin token" }
                            input #token type="password" placeholder="for actions";
                            button type="submit" { "Unlock" }
                        }
                        span #auth-state { "read-only" }
                        button #lock type="button" hidden { "Forget token" }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

fn uptime(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn number(x: f32, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "—".to_owned()
    }
}

/// The state as the overview shows it.
#[must_use]
pub(crate) fn state_text(s: &SubjectStatus) -> String {
    match s.state {
        "paused" => s
            .paused_until
            .as_ref()
            .map_or_else(|| "paused".to_owned(), |t| format!("paused until {t}")),
        "circuit_open" => "circuit open".to_owned(),
        other => other.to_owned(),
    }
}

/// One overview row: (field, text) pairs, in column order. The page and
/// `/dashboard/data.json` both come from here, so a refresh shows what a reload would.
#[must_use]
pub(crate) fn row(s: &SubjectStatus, latest: Option<Point>) -> Vec<(&'static str, String)> {
    let p = latest.unwrap_or_else(Point::gap);
    vec![
        ("queue", shown(&s.queue)),
        ("state", state_text(s)),
        (
            "queue_depth",
            s.queue_depth
                .map_or_else(|| "—".to_owned(), |d| d.to_string()),
        ),
        ("delayed", s.stats.delayed.to_string()),
        ("dead", s.stats.dead.to_string()),
        ("in_flight", s.stats.in_flight.to_string()),
        ("pool_size", s.stats.pool_size.to_string()),
        ("target_pool_size", s.target_pool_size.to_string()),
        (
            "min_max",
            format!("{}–{}", s.min_pool_size, s.max_pool_size),
        ),
        (
            "pool_mode",
            if s.pinned {
                format!("{} (pinned)", s.pool_mode)
            } else {
                s.pool_mode.to_owned()
            },
        ),
        ("busy", s.stats.busy.to_string()),
        ("idle", s.idle.to_string()),
        ("rate", number(p.rate, 1)),
        ("runtime_ms", number(p.runtime_ms, 1)),
        (
            "wait",
            if s.long_wait {
                format!("{} s (long wait)", s.stats.queue_wait_last_seconds)
            } else {
                format!("{} s", s.stats.queue_wait_last_seconds)
            },
        ),
        (
            "runtime_quantiles",
            quantiles(s.runtime_ms_last_minute, "ms"),
        ),
        ("wait_quantiles", quantiles(s.wait_s_last_minute, "s")),
        ("retries_pm", number(p.retries_pm, 1)),
        ("dead_pm", number(p.dead_pm, 1)),
        ("received", s.stats.received.to_string()),
        ("acked", s.stats.acked.to_string()),
        (
            "rate_limit",
            s.rate_limit
                .as_deref()
                .map_or_else(|| "—".to_owned(), shown),
        ),
    ]
}

/// `p50 / p99 / max unit` of a last-minute window, or a dash without values.
fn quantiles(q: Option<crate::stats::Quantiles>, unit: &str) -> String {
    q.map_or_else(
        || "—".to_owned(),
        |q| format!("{} / {} / {} {unit}", trim(q.p50), trim(q.p99), trim(q.max)),
    )
}

/// A value with at most one decimal, without a trailing `.0`.
fn trim(v: f32) -> String {
    let text = format!("{v:.1}");
    text.strip_suffix(".0").map_or(text.clone(), str::to_owned)
}

const COLUMNS: [(&str, &str); 23] = [
    ("queue", "Queue"),
    ("state", "State"),
    ("queue_depth", "Ready"),
    ("delayed", "Delayed"),
    ("dead", "Dead"),
    ("in_flight", "In flight"),
    ("pool_size", "Pool"),
    ("target_pool_size", "Target"),
    ("min_max", "Min–max"),
    ("pool_mode", "Mode"),
    ("busy", "Busy"),
    ("idle", "Idle"),
    ("rate", "msg/s"),
    ("spark", "Last hour"),
    ("runtime_ms", "FPM ms"),
    ("runtime_quantiles", "FPM ms p50 / p99 / max (1 min)"),
    ("wait", "Last wait"),
    ("wait_quantiles", "Wait p50 / p99 / oldest (1 min)"),
    ("retries_pm", "Retries/min"),
    ("dead_pm", "Dead/min"),
    ("received", "Received"),
    ("acked", "Acked"),
    ("rate_limit", "Rate limit"),
];

/// `/`: one row per subject.
#[must_use]
pub(crate) fn overview(status: &Status, latest: impl Fn(&str) -> Option<Point>) -> String {
    let body = html! {
        h1 { "Subjects" }
        p.hint {
            "msg/s, FPM ms, retries and dead letters are over the last "
            (super::history::SAMPLE_EVERY.as_secs()) " s; the sparkline is the last hour of msg/s."
        }
        div.scroll {
            table #overview {
                thead { tr {
                    th { "Subject" }
                    @for (_, title) in COLUMNS { th { (title) } }
                } }
                tbody {
                    @for (name, s) in &status.subjects {
                        @let cells = row(s, latest(name));
                        tr data-subject=(name) data-state=(s.state) {
                            th scope="row" { (shown(name)) }
                            @for (field, _) in COLUMNS {
                                @if field == "spark" {
                                    td.spark { div.sparkline data-subject=(name) {} }
                                } @else {
                                    td data-field=(field) {
                                        (cells.iter().find(|(f, _)| *f == field).map_or("", |(_, v)| v.as_str()))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p #updated.hint {}
    };
    layout(Page::Overview, status, &body)
}

/// `/dashboard/metrics`: charts per subject, drawn by the page's script from the history.
#[must_use]
pub(crate) fn metrics(status: &Status, history_bytes: usize) -> String {
    let charts = [
        ("throughput", "Throughput (msg/s)"),
        ("runtime", "FPM runtime (mean ms)"),
        ("wait", "Queue wait (mean s)"),
        ("failures", "Retries and dead letters (per min)"),
        ("pool", "Pool, busy, in flight"),
    ];
    let body = html! {
        h1 { "Last hour" }
        p.hint {
            "One point every " (super::history::SAMPLE_EVERY.as_secs()) " s, "
            (super::history::SAMPLES) " per subject, kept in memory ("
            (history_bytes / 1024) " KiB for every subject); the history starts when the agent does."
        }
        @for name in status.subjects.keys() {
            section.subject {
                h2 { (shown(name)) }
                div.charts {
                    @for (chart, title) in charts {
                        figure {
                            figcaption { (title) }
                            div.chart data-subject=(name) data-chart=(chart) {}
                        }
                    }
                }
            }
        }
    };
    layout(Page::Metrics, status, &body)
}

/// `/dashboard/fpm`: each upstream and its children; requests running longer than
/// `slow_ms` are marked.
#[must_use]
pub(crate) fn fpm(status: &Status, slow_ms: u64) -> String {
    let body = html! {
        h1 { "FPM upstreams" }
        p.hint { "Requests running for " (slow_ms) " ms or more (fpm.slow_after) are marked slow. "
            "Query strings are hidden: the page is read without the admin token." }
        @if status.upstreams.is_empty() { p { "No upstream." } }
        @for u in &status.upstreams {
            section.upstream data-health=(u.health) {
                h2 { (shown(&u.address)) " " span.badge data-health=(u.health) { (u.health) } }
                dl.facts {
                    dt { "Breaker" } dd { @if let Some(ms) = u.down_for_ms { "open for " (ms) " ms" } @else { "closed" } }
                    dt { "Capacity" } dd { (u.capacity.map_or_else(|| "unknown".to_owned(), |c| c.to_string())) }
                    dt { "In flight" } dd { (u.in_flight) }
                    dt { "Waiting" } dd { (u.waiting) }
                    dt { "Idle connections" } dd { (u.idle_connections) }
                    dt { "Contended" } dd { (u.contended) }
                    dt { "Requests" } dd { (u.requests) }
                    dt { "Refused" } dd { (u.refused) }
                    dt { "Status page" } dd { (u.fpm.state) @if let Some(e) = &u.fpm.error { " — " (shown(e)) } }
                    dt { "Active / idle" } dd { (opt(u.fpm.active)) " / " (opt(u.fpm.idle)) }
                    dt { "Listen queue" } dd { (opt(u.fpm.listen_queue)) }
                    dt { "Max children" } dd { (opt(u.fpm.max_children)) " (reached " (opt(u.fpm.max_children_reached)) " times)" }
                    dt { "Slow requests" } dd { (opt(u.fpm.slow_requests)) }
                }
                table.children {
                    thead { tr { th { "PID" } th { "State" } th { "Current request" } th { "Duration" } th { "Requests" } th { "Last memory" } th { "Last CPU" } } }
                    tbody {
                        @for c in &u.fpm.children {
                            @let busy = u.fpm.busy.iter().find(|b| b.pid == c.pid);
                            @let slow = busy.is_some_and(|b| b.duration_ms >= slow_ms);
                            tr data-slow=(slow) {
                                td { (c.pid) }
                                td { (busy.map_or_else(|| "Idle".to_owned(), |b| shown(&b.state))) }
                                td.uri { (busy.map_or_else(String::new, |b| shown(&b.uri))) }
                                td { @if let Some(b) = busy { (b.duration_ms) " ms" @if slow { " " span.slow { "slow" } } } }
                                td { (c.requests) }
                                td { (c.last_request_memory / 1024) " KiB" }
                                td { (format!("{:.1}", c.last_request_cpu)) " %" }
                            }
                        }
                        @for b in u.fpm.busy.iter().filter(|b| !u.fpm.children.iter().any(|c| c.pid == b.pid)) {
                            @let slow = b.duration_ms >= slow_ms;
                            tr data-slow=(slow) {
                                td { (b.pid) } td { (shown(&b.state)) } td.uri { (shown(&b.uri)) }
                                td { (b.duration_ms) " ms" @if slow { " " span.slow { "slow" } } }
                                td {} td {} td {}
                            }
                        }
                    }
                }
            }
        }
    };
    layout(Page::Fpm, status, &body)
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| v.to_string())
}

/// `/dashboard/actions`: the operator's commands; the page's script sends them with the token.
#[must_use]
pub(crate) fn actions(status: &Status) -> String {
    let select = html! {
        select name="subject" required {
            @for name in status.subjects.keys() { option value=(name) { (shown(name)) } }
        }
    };
    let body = html! {
        h1 { "Actions" }
        p.hint { "Every action needs the admin token (typed above, kept for this tab only)." }
        div.actions {
            form.action data-action="pause" {
                h2 { "Pause" }
                label { "Subject " (select) }
                label { "For " input name="for" type="text" placeholder="15m (empty: until resumed)" maxlength="20"; }
                button type="submit" { "Pause" }
            }
            form.action data-action="resume" {
                h2 { "Resume" }
                label { "Subject " (select) }
                button type="submit" { "Resume" }
            }
            form.action data-action="pool" {
                h2 { "Pool size" }
                label { "Subject " (select) }
                label { "Size " input name="size" type="number" min="1" max="1024" required; }
                button type="submit" { "Set pool size" }
                button type="submit" name="auto" value="1" formnovalidate { "Release to auto" }
            }
            form.action data-action="rate" {
                h2 { "Rate limit" }
                label { "Subject " (select) }
                label { "Limit " input name="limit" type="text" placeholder="50/s, 300/m, 3600/h" maxlength="30"; }
                label { "Burst " input name="burst" type="number" min="1" max="100000" value="1"; }
                button type="submit" { "Set rate limit" }
                button type="submit" name="clear" value="1" { "Clear rate limit" }
            }
        }
        h2 { "Result" }
        output #result role="status" {}
    };
    layout(Page::Actions, status, &body)
}

/// `/dashboard/fleet`: every agent of the vhost heard over the broker (`admin.fleet`), each
/// subject with its state and counters, and pause or resume for each, sent to its agent over the
/// broker. `fleet` is `None` when the fleet is off here.
#[must_use]
pub(crate) fn fleet(
    status: &Status,
    fleet: Option<(&str, bool, &[crate::fleet::Member])>,
) -> String {
    let body = html! {
        h1 { "Fleet" }
        @match fleet {
            None => {
                p.hint {
                    "The fleet is off on this agent. With " code { "admin.fleet = true" }
                    " every agent of the vhost announces itself on the broker and is listed here."
                }
            }
            Some((me, connected, members)) => {
                p.hint {
                    "Every agent with " code { "admin.fleet = true" } " on this vhost, as heard over the broker"
                    @if !connected { " (the link to the broker is down: what is shown may be old)" }
                    ". An agent not heard for three of its intervals is unreachable, and its figures are its last known. Commands go over the broker, signed with the fleet secret, and need the admin token."
                }
                p #updated.hint {}
                table #fleet {
                    thead { tr {
                        th { "Agent" } th { "Host" } th { "PID" } th { "Version" } th { "Heard" }
                        th { "Subject" } th { "Queue" } th { "State" } th { "Pool" } th { "Busy" }
                        th { "In flight" } th { "Acked" } th { "Retried" } th { "Dead" } th { "Command" }
                    } }
                    tbody {
                        @for m in members {
                            @let hb = &m.heartbeat;
                            @for (name, s) in &hb.subjects {
                                tr data-agent=(hb.agent) data-subject=(name)
                                   data-reachable=(m.reachable) data-state=(s.state) {
                                    td { (shown(&hb.agent)) @if hb.agent == me { " (this agent)" } }
                                    td { (shown(&hb.host)) }
                                    td { (hb.pid) }
                                    td { (shown(&hb.version)) }
                                    td data-field="heard" {
                                        @if m.reachable { (m.heard_ms_ago / 1000) " s ago" }
                                        @else { "unreachable (" (m.heard_ms_ago / 1000) " s)" }
                                    }
                                    td { (shown(name)) }
                                    td { (shown(&s.queue)) }
                                    td data-field="state" {
                                        (shown(&s.state))
                                        @if let Some(until) = &s.paused_until { " until " (shown(until)) }
                                    }
                                    td { (s.pool_size) } td { (s.busy) } td { (s.in_flight) }
                                    td { (s.acked) } td { (s.retried) } td { (s.dead_lettered) }
                                    td {
                                        form.action.fleet data-action="fleet-pause" data-agent=(hb.agent) {
                                            input type="hidden" name="subject" value=(name);
                                            input name="for" type="text" placeholder="15m" maxlength="20" size="5" aria-label="for";
                                            button type="submit" { "Pause" }
                                            button type="submit" name="resume" value="1" { "Resume" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Result" }
        output #result role="status" {}
    };
    layout(Page::Fleet, status, &body)
}

/// The filter a Dead letters page opens with (from its URL), shown in its form.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub(crate) struct DeadPageQuery {
    /// The subject (default: the first).
    pub subject: Option<String>,
    /// `reason`
    pub reason: Option<String>,
    /// `status`
    pub status: Option<String>,
    /// `type`
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `older_than`
    pub older_than: Option<String>,
    /// `grep`
    pub grep: Option<String>,
}

/// `/dashboard/dead-letters`: the page's script lists the dead letters through the admin API
/// with the token (reading them needs it), opens one, and replays or discards them.
#[must_use]
pub(crate) fn dead_letters(status: &Status, q: &DeadPageQuery) -> String {
    let current = q
        .subject
        .as_deref()
        .filter(|s| status.subjects.contains_key(*s))
        .or_else(|| status.subjects.keys().next().map(String::as_str))
        .unwrap_or("");
    let value = |v: &Option<String>| v.as_deref().map_or_else(String::new, shown);
    let field = |label: &str, name: &str, v: &Option<String>, hint: &str| {
        html! {
            label { (label) " " input name=(name) type="text" maxlength="200" placeholder=(hint) value=(value(v)); }
        }
    };
    let body = html! {
        h1 { "Dead letters" }
        p.hint {
            "A subject's dead-letter queue, read without removing anything (every message taken "
            "goes back, in its order). Listing, opening, replaying and discarding need the admin "
            "token (typed above, kept for this tab only). A replay puts the message back on the "
            "subject's queue, attempt counter reset, and removes the dead letter only once the "
            "broker confirmed the copy."
        }
        form #dead-filter autocomplete="off" {
            label { "Subject "
                select name="subject" {
                    @for name in status.subjects.keys() {
                        @if name == current {
                            option value=(name) selected { (shown(name)) }
                        } @else {
                            option value=(name) { (shown(name)) }
                        }
                    }
                }
            }
            (field("Reason", "reason", &q.reason, "rejected, max_attempts"))
            (field("Status", "status", &q.status, "404, 5xx, 0"))
            (field("Type", "type", &q.kind, "App\\Message\\SendEmail"))
            (field("Older than", "older_than", &q.older_than, "15m, 2d"))
            (field("Text", "grep", &q.grep, "in headers and body"))
            button type="submit" .needs-token { "Search" }
        }
        div.dead-actions {
            button #dead-replay-selected type="button" .needs-token data-act="replay" data-what="selected" { "Replay selected" }
            button #dead-discard-selected type="button" .needs-token data-act="discard" data-what="selected" { "Discard selected" }
            button #dead-replay-all type="button" .needs-token data-act="replay" data-what="matching" { "Replay all matching" }
            button #dead-discard-all type="button" .needs-token data-act="discard" data-what="matching" { "Discard all matching" }
        }
        div #dead-confirm hidden {
            span #dead-confirm-text {}
            " "
            button #dead-confirm-yes type="button" { "Yes" }
            " "
            button #dead-confirm-no type="button" { "Cancel" }
        }
        div #dead-job hidden {
            progress #dead-progress max="1" value="0" {}
            " "
            output #dead-result role="status" {}
        }
        p #dead-summary.hint { "Type the admin token above to list the dead letters." }
        div.scroll {
            table #dead-list {
                thead { tr {
                    th { input #dead-all type="checkbox" title="Select every row shown"; }
                    th { "Message id" } th { "Type" } th { "Reason" } th { "Status" }
                    th { "Attempts" } th { "Age" } th { "Last error" } th {}
                } }
                tbody {}
            }
        }
        p.dead-pages {
            button #dead-prev type="button" disabled { "Previous" }
            " "
            button #dead-next type="button" disabled { "Next" }
        }
        section #dead-detail hidden {
            h2 { "Message " span #dd-id {} }
            p.dead-actions {
                button #dd-replay type="button" .needs-token { "Replay" }
                " "
                button #dd-discard type="button" .needs-token { "Discard" }
                " "
                button #dd-close type="button" { "Close" }
            }
            dl.facts #dd-facts {}
            h3 { "Last error" }
            pre #dd-error.text {}
            h3 { "Properties" }
            table.kv #dd-props { tbody {} }
            h3 { "Headers" }
            table.kv #dd-headers { tbody {} }
            h3 { "Body " span #dd-body-size.hint {} }
            p.views {
                button type="button" data-view="json" { "JSON" }
                " "
                button type="button" data-view="text" { "Text" }
                " "
                button type="button" data-view="hex" { "Hex" }
            }
            pre #dd-body.text {}
        }
    };
    layout(Page::DeadLetters, status, &body)
}
