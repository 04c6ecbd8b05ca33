//! A subject's dead-letter queue (`<queue>.dead`) for the operator: browse it with a
//! [`Filter`], open one dead letter, and replay or discard the ones meant. The CLI
//! (`dead-letters list|replay|discard`) and the admin API (the dashboard's Dead letters page)
//! both call these functions; neither has logic of its own.
//!
//! AMQP has no way to read a queue without taking its messages, so every operation is a *walk*:
//! one session takes the messages with `basic.get`, one at a time, at most as many as the
//! queue held when the walk began (a message that comes back while it runs, such as a replay
//! that failed again, is not seen twice). The messages not acted on stay unacked until the walk
//! ends, then go back with one `basic.nack` (`multiple`, requeue), and the order of the queue
//! is kept as far as AMQP allows:
//! - a classic queue puts a requeued message back at its original position, so a walk may stop
//!   early (a full page, a key found, the limit reached);
//! - a quorum queue (RabbitMQ 3.x, no delivery limit) puts it at its back, so a walk that
//!   stops early first takes the rest of what the queue held, and all go back in their order;
//! - either way, a message that arrived while the walk ran (dead-lettered meanwhile) ends up
//!   ahead of the messages put back on a quorum queue, behind them on a classic one.
//!
//! If the session ends early (an error, a lost connection), the broker requeues what it held
//! all the same (on a quorum queue, behind what it did not take). A walk must end within the
//! broker's `consumer_timeout` (30 min by default). A replayed or discarded message is gone
//! from the queue; the others keep their relative order.
//!
//! Invariant: a replayed dead letter is acked only after its copy was confirmed by the broker
//! (mandatory publish to the subject's queue); a discarded one is acked and nothing else. A dead
//! letter not meant is never acked.

pub(crate) mod filter;
pub(crate) mod letter;

use std::collections::BTreeMap;
use std::time::Instant;

use lapin::types::FieldTable;
use tracing::warn;

use crate::broker::session::{Session, Taken};
use crate::broker::{self, BrokerError};
use crate::config::{Config, QueueType};
use crate::contract;
use crate::printable::printable;
use crate::provenance;

pub use filter::{Filter, FilterError, FilterText, StatusFilter};
pub use letter::{Body, Detail, Letter, Summary};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// No such subject in the config.
    #[error("subject `{0}` is not configured")]
    UnknownSubject(String),
    /// The broker failed or refused.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The queue a subject's messages are replayed to, and its dead-letter queue.
///
/// # Errors
/// [`DeadLetterError::UnknownSubject`].
pub(crate) fn queues(config: &Config, subject: &str) -> Result<(String, String), DeadLetterError> {
    let s = config
        .subjects
        .get(subject)
        .ok_or_else(|| DeadLetterError::UnknownSubject(subject.to_owned()))?;
    Ok((s.queue.clone(), broker::dead_queue_name(&s.queue)))
}

/// How far a browse may go.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Most messages looked at.
    pub max_scan: usize,
    /// When to stop looking (the admin API answers within its request timeout).
    pub deadline: Option<Instant>,
    /// Whether to go on past a full page, to count every match.
    pub count_all: bool,
}

impl Budget {
    /// No bound but the queue's length; every match counted.
    pub const UNBOUNDED: Self = Self {
        max_scan: usize::MAX,
        deadline: None,
        count_all: true,
    };

    /// No bound, but the walk ends with the page (the CLI's `list`).
    pub const PAGE: Self = Self {
        count_all: false,
        ..Self::UNBOUNDED
    };

    fn spent(&self, scanned: usize) -> bool {
        scanned >= self.max_scan || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// A page of dead letters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Browse {
    /// The dead-letter queue.
    pub queue: String,
    /// Messages it held when the walk began.
    pub total: usize,
    /// Messages looked at.
    pub scanned: usize,
    /// Whether every message it held was looked at (else the budget ran out first).
    pub complete: bool,
    /// Matches skipped before the page (`offset`).
    pub offset: usize,
    /// Matches found, the page's included (all of them when `complete`).
    pub matched: usize,
    /// The page: at most `limit` matches after the first `offset`.
    pub letters: Vec<Summary>,
}

/// One walk over a dead-letter queue (see the module's documentation).
struct Walk {
    session: Session,
    queue: String,
    /// A quorum queue puts a returned message at its back: to keep the order, a walk takes
    /// every message the queue held before it returns them.
    whole: bool,
    /// Messages the queue held when the walk began (known at the first take).
    total: Option<usize>,
    scanned: usize,
    /// The last message kept back (it and every one before it go back at the end).
    kept: Option<Taken>,
    kept_count: usize,
}

impl Walk {
    async fn open(
        config: &Config,
        subject: &str,
        queue: String,
        confirm: bool,
    ) -> Result<Self, BrokerError> {
        let whole = config
            .subjects
            .get(subject)
            .is_some_and(|s| config.queue_type(s) == QueueType::Quorum);
        Ok(Self {
            session: Session::open(config, "dead-letters", confirm).await?,
            queue,
            whole,
            total: None,
            scanned: 0,
            kept: None,
            kept_count: 0,
        })
    }

    /// The next message of those the queue held when the walk began.
    async fn next(&mut self) -> Result<Option<Taken>, BrokerError> {
        if self.total.is_some_and(|t| self.scanned >= t) {
            return Ok(None);
        }
        let Some(msg) = self.session.get(&self.queue).await? else {
            self.total.get_or_insert(self.scanned);
            return Ok(None);
        };
        if self.total.is_none() {
            let remaining = usize::try_from(msg.remaining()).unwrap_or(usize::MAX);
            self.total = Some(remaining.saturating_add(1));
        }
        self.scanned += 1;
        Ok(Some(msg))
    }

    /// Leaves `msg` in the queue (it goes back when the walk ends).
    fn keep(&mut self, msg: Taken) {
        self.kept = Some(msg);
        self.kept_count += 1;
    }

    fn total(&self) -> usize {
        self.total.unwrap_or(0)
    }

    /// Puts back what was kept and closes the session. On a quorum queue, the messages not
    /// looked at yet are taken first, so that all go back in their order.
    async fn finish(mut self) -> Result<(), BrokerError> {
        if self.whole && self.kept.is_some() {
            loop {
                match self.next().await {
                    Ok(Some(msg)) => self.keep(msg),
                    Ok(None) => break,
                    Err(e) => {
                        self.session.close().await;
                        return Err(e);
                    }
                }
            }
        }
        let result = match &self.kept {
            Some(last) => last.requeue_through().await,
            None => Ok(()),
        };
        self.session.close().await;
        result
    }
}

/// Looks through `subject`'s dead letters and returns the matches after the first `offset`, at
/// most `limit`, within `budget`. Nothing leaves the queue.
///
/// # Errors
/// An unknown subject, or a broker error (the messages taken go back to the queue).
pub async fn browse(
    config: &Config,
    subject: &str,
    filter: &Filter,
    offset: usize,
    limit: usize,
    budget: Budget,
    now: u64,
) -> Result<Browse, DeadLetterError> {
    let (_, queue) = queues(config, subject)?;
    let mut walk = Walk::open(config, subject, queue.clone(), false).await?;
    let mut letters = Vec::new();
    let mut matched = 0;
    let result: Result<bool, BrokerError> = async {
        loop {
            if budget.spent(walk.scanned) || !budget.count_all && letters.len() >= limit {
                return Ok(false);
            }
            let Some(msg) = walk.next().await? else {
                return Ok(true);
            };
            let d = msg.delivery();
            let letter = Letter::new(&d.properties, &d.data);
            if filter.matches(&letter, now) {
                matched += 1;
                if matched > offset && letters.len() < limit {
                    letters.push(letter.summary(now));
                }
            }
            walk.keep(msg);
        }
    }
    .await;
    let scanned = walk.scanned;
    let total = walk.total();
    let complete = match result {
        Ok(complete) => complete,
        Err(e) => {
            walk.session.close().await;
            return Err(e.into());
        }
    };
    walk.finish().await?;
    Ok(Browse {
        queue,
        total,
        scanned,
        complete,
        offset,
        matched,
        letters,
    })
}

/// The dead letter named `key` ([`Letter::key`]), looked for within `budget`; it stays in the
/// queue.
///
/// # Errors
/// An unknown subject, or a broker error.
pub async fn open(
    config: &Config,
    subject: &str,
    key: &str,
    budget: Budget,
    now: u64,
) -> Result<Option<Detail>, DeadLetterError> {
    let (_, queue) = queues(config, subject)?;
    let mut walk = Walk::open(config, subject, queue, false).await?;
    let found: Result<Option<Detail>, BrokerError> = async {
        while !budget.spent(walk.scanned) {
            let Some(msg) = walk.next().await? else {
                break;
            };
            let d = msg.delivery();
            let letter = Letter::new(&d.properties, &d.data);
            let detail = (letter.key() == key).then(|| letter.detail(now));
            walk.keep(msg);
            if detail.is_some() {
                return Ok(detail);
            }
        }
        Ok(None)
    }
    .await;
    match found {
        Ok(detail) => {
            walk.finish().await?;
            Ok(detail)
        }
        Err(e) => {
            walk.session.close().await;
            Err(e.into())
        }
    }
}

/// What to do with the dead letters meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Back to the subject's queue, the attempt counter reset; the copy confirmed first.
    Replay,
    /// Removed.
    Discard,
}

impl Action {}

/// Which dead letters an action is for.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every one that matches.
    Matching(Filter),
    /// Those named by their keys ([`Letter::key`]): each key stands for one dead letter (of two
    /// alike in every byte, the first).
    Keys(Vec<String>),
}

/// How far an action got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// Messages the queue held when the walk began.
    pub total: usize,
    /// Messages looked at.
    pub scanned: usize,
    /// Messages meant (selected or matching), acted on or not yet.
    pub matched: usize,
    /// Messages replayed (copy confirmed, dead letter acked) or discarded.
    pub done: usize,
    /// Replays whose original route was dropped: its seal did not verify.
    pub routes_dropped: usize,
    /// Messages left in the queue (not meant, or over the limit).
    pub left: usize,
}

/// Replays or discards the dead letters `selection` means, at most `limit`, calling
/// `progress` after each message looked at. Stops at the first broker error: what was done
/// stays done, the message at hand and the rest stay in the queue.
///
/// # Errors
/// An unknown subject, or a broker error.
pub async fn act(
    config: &Config,
    subject: &str,
    action: Action,
    selection: &Selection,
    limit: Option<usize>,
    now: u64,
    mut progress: impl FnMut(&Progress),
) -> Result<Progress, DeadLetterError> {
    let (main, queue) = queues(config, subject)?;
    let mut walk = Walk::open(config, subject, queue, action == Action::Replay).await?;
    let mut wanted: BTreeMap<&str, usize> = BTreeMap::new();
    if let Selection::Keys(keys) = selection {
        for key in keys {
            *wanted.entry(key.as_str()).or_default() += 1;
        }
    }
    let limit = limit.unwrap_or(usize::MAX);
    let mut p = Progress::default();
    let result: Result<(), BrokerError> = async {
        loop {
            if p.done >= limit {
                return Ok(());
            }
            if let Selection::Keys(_) = selection
                && wanted.is_empty()
            {
                return Ok(());
            }
            let Some(msg) = walk.next().await? else {
                return Ok(());
            };
            p.total = walk.total();
            p.scanned = walk.scanned;
            let d = msg.delivery();
            let letter = Letter::new(&d.properties, &d.data);
            let meant = match selection {
                Selection::Matching(filter) => filter.matches(&letter, now),
                Selection::Keys(_) => {
                    let key = letter.key();
                    match wanted.get_mut(key.as_str()) {
                        Some(n) => {
                            *n -= 1;
                            if *n == 0 {
                                wanted.remove(key.as_str());
                            }
                            true
                        }
                        None => false,
                    }
                }
            };
            if !meant {
                walk.keep(msg);
                progress(&p);
                continue;
            }
            p.matched += 1;
            if action == Action::Replay {
                let (props, dropped) = replay_properties(&msg, &main, &config.fpm.signing_secrets);
                p.routes_dropped += usize::from(dropped);
                walk.session.publish(&main, &d.data, props).await?;
            }
            msg.ack().await?;
            p.done += 1;
            progress(&p);
        }
    }
    .await;
    p.total = walk.total();
    p.scanned = walk.scanned;
    // What was not looked at stays where it is, as does what was kept back.
    p.left = p.total.saturating_sub(p.done);
    if let Err(e) = result {
        walk.session.close().await;
        return Err(e.into());
    }
    walk.finish().await?;
    progress(&p);
    Ok(p)
}

/// The properties of a dead letter's replay: the same, without the agent's attempt and failure
/// headers and the broker's `x-death`, with the original route kept (and sealed again) only when
/// the dead letter's seal verifies with a configured secret. Anyone who may publish to the
/// default exchange can put a message with made-up route headers into `Q.dead`, and a replay
/// must not launder them; such a route is dropped (logged; `true` is returned).
fn replay_properties(
    msg: &Taken,
    main: &str,
    secrets: &[String],
) -> (lapin::BasicProperties, bool) {
    let delivery = msg.delivery();
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map_or("", |id| id.as_str());
    let binding = provenance::Binding {
        queue: main,
        message_id,
        body: &delivery.data,
    };
    let original = delivery.properties.headers().as_ref();
    let route = match provenance::read(original, secrets, &binding) {
        // Without a secret nothing can be verified: the route is not kept either.
        (_, None) if secrets.is_empty() => Route::Unverifiable,
        (_, None) => Route::Verified,
        (_, Some(why)) => {
            warn!(
                message_id = %printable(message_id).capped(64),
                why = why.reason(),
                "Dropped the unverified route of a replayed dead letter"
            );
            Route::Dropped
        }
    };
    let kept: BTreeMap<_, _> = original
        .map(|h| h.inner().clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !is_agent_state(k.as_str()))
        .filter(|(k, _)| route == Route::Verified || !is_route(k.as_str()))
        .collect();
    let mut headers = FieldTable::from(kept);
    // Sealed again so the agent keeps believing the original route it recorded.
    provenance::seal(&mut headers, secrets, &binding);
    (
        delivery.properties.clone().with_headers(headers),
        route == Route::Dropped,
    )
}

/// Whether a dead letter's original route may travel with its replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Its seal verifies (or it claims no state at all).
    Verified,
    /// No seal that verifies: made up by whoever published it, or altered.
    Dropped,
    /// No signing secret configured: nothing can be verified, nothing is kept.
    Unverifiable,
}

fn is_route(name: &str) -> bool {
    name == contract::ORIGINAL_EXCHANGE_HEADER || name == contract::ORIGINAL_ROUTING_KEY_HEADER
}

/// Headers the agent writes to track attempts and failures (not the original-route ones), and
/// the broker's dead-lettering records.
fn is_agent_state(name: &str) -> bool {
    name.starts_with(contract::AGENT_HEADER_PREFIX) && !is_route(name)
        || name == "x-death"
        || name.starts_with("x-first-death")
        || name.starts_with("x-last-death")
}

#[cfg(test)]
mod tests;
