//! One attempt at FPM: the request's params, its `fastcgi` span, the request on a leased
//! connection, and the reply judged as a verdict.

use std::borrow::Cow;
use std::time::Instant;

use tracing::Instrument;

use super::entry::Entry;
use super::settle::describe;
use super::{EXCERPT, truncate};
use crate::actors::SubjectRuntime;
use crate::batch::auto::Observed;
use crate::contract;
use crate::fastcgi::Reply;
use crate::outcome::{self, Verdict};
use crate::telemetry::{self, events::Event};

/// The `FastCGI POST` span of a request (a `none` span without trace export); a batch records
/// its size on it.
pub(in crate::actors) fn fastcgi_span(runtime: &SubjectRuntime) -> tracing::Span {
    if telemetry::enabled() {
        tracing::info_span!(
            "fastcgi",
            otel.name = "FastCGI POST",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            server.address = %runtime.config.fpm.address,
            http.request.method = "POST",
            url.path = %runtime.template.request_uri(),
            http.response.status_code = tracing::field::Empty,
            http.response.body.size = tracing::field::Empty,
            error.type = tracing::field::Empty,
            amqp_agent.batch.size = tracing::field::Empty,
        )
    } else {
        tracing::Span::none()
    }
}

/// What one attempt at FPM came to.
pub(super) struct Attempt {
    pub(super) verdict: Verdict,
    /// FPM could not be reached (opens the circuit breaker).
    pub(super) unreached: bool,
    /// What `batch::auto` learns from it: the request's duration when FPM ran it.
    pub(super) observed: Option<Observed>,
}

impl Attempt {
    /// A verdict reached without sending a request.
    pub(super) fn unsent(verdict: Verdict) -> Self {
        Self {
            verdict,
            unreached: false,
            observed: None,
        }
    }
}

/// Builds the attempt's params and sends them to FPM inside a `fastcgi` span; a message that
/// cannot become a request is a permanent verdict.
pub(super) async fn request(runtime: &SubjectRuntime, entry: &Entry<'_>) -> Attempt {
    let fcgi_span = fastcgi_span(runtime);
    // PHP continues the trace from the FastCGI span when traces are exported; otherwise it gets
    // the publisher's context unchanged.
    let exported = telemetry::context_of(&fcgi_span);
    match entry.params(runtime, exported.as_ref(), contract::unix_now()) {
        Err(verdict) => Attempt::unsent(verdict),
        Ok(params) => {
            let running = runtime
                .monitor
                .running(&runtime.name, &entry.envelope.message_id);
            attempt_fpm(runtime, &running, &params, &entry.delivery.data)
                .instrument(fcgi_span)
                .await
        }
    }
}

/// One FastCGI request, timed and classified; records status and size on the current span.
async fn attempt_fpm(
    runtime: &SubjectRuntime,
    running: &crate::fpm_status::monitor::RunningGuard<'_>,
    params: &[contract::Param<'_>],
    body: &[u8],
) -> Attempt {
    let span = tracing::Span::current();
    let started = Instant::now();
    let sent = runtime
        .upstreams
        .request(params, body, |i| running.set_upstream(i))
        .await;
    let result = sent.result;
    let elapsed = started.elapsed();
    let require_ack = runtime.config.fpm.require_ack_header;
    let Judged {
        verdict,
        unreached,
        status,
        batches,
    } = judged(result, require_ack, &span);
    runtime.events.emit(Event::FpmReplied {
        status: &status,
        elapsed,
    });
    if !matches!(verdict, Verdict::Success) {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", describe(&verdict).0);
    }
    // A handled message times its handler; a failed one took at least this long (a timeout
    // shows `batch::auto` a handler turned slow).
    let observed = match (&verdict, unreached) {
        (_, true) => None,
        (Verdict::Success, false) => Some(Observed::Single {
            took: elapsed,
            batches,
        }),
        (_, false) => Some(Observed::Cut {
            lines: 0,
            first: None,
            last: None,
            ended: elapsed,
        }),
    };
    Attempt {
        verdict,
        unreached,
        observed,
    }
}

/// What a FastCGI result amounts to.
struct Judged {
    verdict: Verdict,
    /// FPM could not be reached.
    unreached: bool,
    /// The `status` label of the `fpm_responses` metric.
    status: Cow<'static, str>,
    /// The reply said the receiver takes batches of this agent's version.
    batches: bool,
}

/// A FastCGI result as a verdict, whether FPM was unreachable, the `status` label of the
/// `fpm_responses` metric and the reply's `X-Agent-Accepts-Batches`; the reply's status and
/// size are recorded on `span`.
fn judged(
    result: Result<Reply, crate::fastcgi::FpmError>,
    require_ack: bool,
    span: &tracing::Span,
) -> Judged {
    let failed = |verdict, unreached, status| Judged {
        verdict,
        unreached,
        status,
        batches: false,
    };
    let reply = match result {
        Ok(reply) => reply,
        Err(e) => {
            let unreached = e.unreached();
            let verdict = Verdict::Transient {
                reason: e.reason(),
                detail: e.to_string(),
                status: None,
                retry_after: None,
                counts: !unreached,
            };
            return failed(verdict, unreached, Cow::Borrowed(e.reason()));
        }
    };
    span.record("http.response.body.size", reply.size);
    let head = match outcome::parse_head(&reply.stdout) {
        Ok(head) => head,
        Err(e) => {
            let verdict = Verdict::Transient {
                reason: "fpm_malformed_reply",
                detail: format!("{e}: {}", excerpt(&reply)),
                status: None,
                retry_after: None,
                counts: true,
            };
            return failed(verdict, false, Cow::Borrowed("fpm_malformed_reply"));
        }
    };
    span.record("http.response.status_code", head.status);
    let verdict =
        outcome::classify_full_reply(&head, &reply.stdout, require_ack, || excerpt(&reply));
    let status = if head.status == 200 {
        Cow::Borrowed("200")
    } else {
        Cow::Owned(head.status.to_string())
    };
    Judged {
        verdict,
        unreached: false,
        status,
        batches: head.accepts_batches == Some(crate::batch::wire::VERSION),
    }
}

fn excerpt(reply: &Reply) -> String {
    let out = String::from_utf8_lossy(&reply.stdout);
    let body = out.split_once("\r\n\r\n").map_or(out.as_ref(), |(_, b)| b);
    let mut s = truncate(outcome::reply_text(body).trim(), EXCERPT / 2);
    if !reply.stderr.is_empty() {
        s.push_str(" | stderr: ");
        s.push_str(&truncate(
            String::from_utf8_lossy(&reply.stderr).trim(),
            EXCERPT / 2,
        ));
    }
    if s.is_empty() {
        "(empty body)".to_owned()
    } else {
        s
    }
}
