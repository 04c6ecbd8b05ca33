//! The autoscaler task: samples each subject's busy workers and backlog (prefetched, and ready
//! in the queue: the consumer reads its depth), and after every read
//! of FPM's status page feeds them to [`crate::autoscale::decide`] and applies its answer.
//!
//! Invariant: the only code that resizes pools without an operator; it never resizes a subject
//! that is `fixed` or pinned, and it logs every change with the inputs that led to it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::info;

use super::AgentHandle;
use crate::autoscale::{self, Capacity, PoolMode, SubjectInput};

/// What the task remembers of a subject between two decisions.
struct Seen {
    busy_peak: u32,
    backlog_peak: u64,
    /// Last time the subject had a backlog or every worker busy.
    last_used: Instant,
    last_change: Instant,
}

/// Shortest time between a decision and a status read the autoscaler asks for: the workers it
/// just added take their FPM children first, so the read counts them as busy.
const RAMP_READ_GAP: Duration = Duration::from_millis(50);

/// How often the subjects' busy workers and backlogs are sampled.
const SAMPLE: Duration = Duration::from_millis(50);

/// Runs until aborted (on reload and stop). Returns at once when every subject's pool is
/// `fixed` (the default): nothing to sample or decide until a reload brings an `auto` one, and
/// each reload starts this task again. An idle agent's thread then wakes 20 times a second fewer.
pub(super) async fn run(agent: AgentHandle) {
    if !any_auto(&agent.config()) {
        return;
    }
    let monitor = agent.monitor();
    let mut reads = monitor.subscribe();
    let now = Instant::now();
    let mut seen: BTreeMap<String, Seen> = agent
        .config()
        .subjects
        .keys()
        .map(|name| {
            let s = Seen {
                busy_peak: 0,
                backlog_peak: 0,
                last_used: now,
                last_change: now,
            };
            (name.clone(), s)
        })
        .collect();
    let mut sample = tokio::time::interval(SAMPLE);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A pool that may grow gets a status read soon instead of at the next interval: right after
    // RAMP_READ_GAP when the last decision grew a pool, at the next sample when a backlog turned
    // deep. Not when the last decision found no idle FPM child for it: then at the interval.
    let (mut blocked, mut asked, mut decided) = (false, false, now);
    let mut ramp = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut ramping = false;
    loop {
        let due = tokio::select! {
            _ = sample.tick() => {
                observe(&agent, &mut seen);
                !blocked && !asked && decided.elapsed() >= RAMP_READ_GAP
            }
            () = &mut ramp, if ramping => {
                ramping = false;
                !asked
            }
            changed = reads.changed() => {
                if changed.is_err() {
                    return;
                }
                observe(&agent, &mut seen);
                let (grew, may_grow) = decide(&agent, &mut seen);
                blocked = may_grow && !grew;
                (asked, decided) = (false, Instant::now());
                if grew && may_grow {
                    ramp.as_mut().reset((decided + RAMP_READ_GAP).into());
                    ramping = true;
                }
                false
            }
        };
        if due {
            let config = agent.config();
            let (_, inputs) = inputs(&agent, &config, &seen, Instant::now());
            if inputs.iter().any(autoscale::may_grow) {
                monitor.read_soon();
                asked = true;
            }
        }
    }
}

/// Whether some subject's pool is sized by the autoscaler (`pool_mode = "auto"`).
fn any_auto(config: &crate::config::Config) -> bool {
    config
        .subjects
        .values()
        .any(|s| s.pool_mode == PoolMode::Auto)
}

fn observe(agent: &AgentHandle, seen: &mut BTreeMap<String, Seen>) {
    let now = Instant::now();
    for (name, stats) in agent.subject_stats_all() {
        let Some(s) = seen.get_mut(name) else {
            continue;
        };
        let snap = stats.snapshot();
        let busy = u32::try_from(snap.busy).unwrap_or(u32::MAX);
        let backlog = snap.in_flight.saturating_sub(snap.busy);
        s.busy_peak = s.busy_peak.max(busy);
        s.backlog_peak = s.backlog_peak.max(backlog);
        if backlog > 0 || snap.queued > 0 || (snap.pool_size > 0 && snap.busy >= snap.pool_size) {
            s.last_used = now;
        }
    }
}

/// FPM's capacity: the sum over the upstreams that are up and whose status page was read.
///
/// No child is kept free for the status page any more: the status read takes a lease of its
/// upstream's connection pool like a message (it may reuse a connection already open to a
/// child), and connections are released when unused, so it never waits behind children held
/// by idle keep-alive connections.
fn capacity(agent: &AgentHandle, config: &crate::config::Config) -> Option<Capacity> {
    let path = config.fpm.status_path.as_deref()?;
    let monitor = agent.monitor();
    let upstreams = agent.fpm_upstreams()?;
    let reads = monitor.snapshots();
    let healthy = upstreams
        .list()
        .iter()
        .zip(&reads)
        .filter(|(u, _)| u.health().up())
        .filter_map(|(_, read)| read.status.as_deref());
    total_capacity(healthy, path, config.fpm.max_children)
}

/// The sum of the capacities of the status pages given (those of the upstreams that are up);
/// `None` when none of them tells its `max_children`.
fn total_capacity<'a>(
    statuses: impl Iterator<Item = &'a crate::fpm_status::FpmStatus>,
    path: &str,
    configured: Option<u32>,
) -> Option<Capacity> {
    let mut total: Option<Capacity> = None;
    for status in statuses {
        let Some(max) = status.max_children(configured) else {
            continue;
        };
        let sum = total.get_or_insert(Capacity {
            max_children: 0,
            idle: 0,
        });
        sum.max_children = sum
            .max_children
            .saturating_add(u32::try_from(max).unwrap_or(u32::MAX));
        sum.idle = sum
            .idle
            .saturating_add(u32::try_from(status.idle(path)).unwrap_or(u32::MAX));
    }
    total
}

/// What [`autoscale::decide`] is given: the subjects' names and inputs, in config order.
fn inputs(
    agent: &AgentHandle,
    config: &crate::config::Config,
    seen: &BTreeMap<String, Seen>,
    now: Instant,
) -> (Vec<String>, Vec<SubjectInput>) {
    let pins = agent.pins();
    let all = agent.subject_stats_all();
    let mut names = Vec::new();
    let mut inputs = Vec::new();
    for (name, cfg) in &config.subjects {
        let (Some(s), Some(stats)) = (seen.get(name), all.get(name)) else {
            continue;
        };
        names.push(name.clone());
        inputs.push(SubjectInput {
            mode: cfg.pool_mode,
            pinned: pins.contains(name),
            current: agent
                .target(name)
                .map_or(u32::MAX, |t| u32::try_from(t).unwrap_or(u32::MAX)),
            busy_peak: s.busy_peak,
            backlog: s.backlog_peak,
            queued: stats.queued.load(Ordering::Relaxed),
            min: u32::from(cfg.min_pool_size),
            max: u32::from(cfg.max_pool_size),
            weight: cfg.weight,
            max_shift: cfg.max_shift,
            since_change: now.saturating_duration_since(s.last_change),
            idle_for: now.saturating_duration_since(s.last_used),
            cooldown: cfg.cooldown,
        });
    }
    (names, inputs)
}

/// Decides and applies. Returns whether a pool grew, and whether a pool may grow (before this
/// decision's sizes; a pool that grew may want more).
fn decide(agent: &AgentHandle, seen: &mut BTreeMap<String, Seen>) -> (bool, bool) {
    let config = agent.config();
    if !any_auto(&config) {
        return (false, false);
    }
    let capacity = capacity(agent, &config);
    let now = Instant::now();
    let (names, inputs) = inputs(agent, &config, seen, now);
    let targets = autoscale::decide(&inputs, capacity);
    let mut grew = false;
    for ((name, input), target) in names.iter().zip(&inputs).zip(&targets) {
        if let Some(s) = seen.get_mut(name) {
            s.busy_peak = 0;
            s.backlog_peak = 0;
            if target.size != input.current {
                s.last_change = now;
            }
        }
        if target.size == input.current {
            continue;
        }
        grew |= target.size > input.current;
        info!(
            subject = %name,
            from = input.current,
            to = target.size,
            why = target.why,
            backlog = input.backlog,
            queued = input.queued,
            busy_peak = input.busy_peak,
            idle_for_ms = u64::try_from(input.idle_for.as_millis()).unwrap_or(u64::MAX),
            fpm_max_children = capacity.map(|c| c.max_children),
            fpm_idle = capacity.map(|c| c.idle),
            "Autoscale: pool resized"
        );
        agent.resize(name, target.size as usize);
    }
    (grew, inputs.iter().any(autoscale::may_grow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fpm_status::FpmStatus;

    #[test]
    fn the_task_has_work_only_when_some_pool_is_auto() {
        let config = |modes: &str| {
            let text = format!(
                "[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
                 [fpm]\naddress = \"127.0.0.1:9000\"\nscript_filename = \"/srv/index.php\"\n\
                 status_path = \"/fpm-status\"\n{modes}"
            );
            crate::config::Config::from_toml(&text, std::path::Path::new("t.toml"), |_| None)
                .unwrap()
        };
        let fixed = "[subjects.event]\nqueue = \"e\"\n[subjects.command]\nqueue = \"c\"\n";
        assert!(!any_auto(&config(fixed)), "fixed is the default");
        let one_auto = format!("{fixed}pool_mode = \"auto\"\n");
        let c = config(&one_auto);
        assert_eq!(c.subjects["command"].pool_mode, PoolMode::Auto);
        assert!(any_auto(&c));
    }

    #[test]
    fn capacity_is_summed_over_the_upstreams_given() {
        let parse = |text: &str| serde_json::from_str::<FpmStatus>(text).unwrap();
        let idle = parse(include_str!("../fpm_status/testdata/idle.json"));
        let saturated = parse(include_str!("../fpm_status/testdata/saturated.json"));
        let one = total_capacity([&idle].into_iter(), "/fpm-status", None).unwrap();
        let both = total_capacity([&idle, &saturated].into_iter(), "/fpm-status", None).unwrap();
        assert_eq!(one.max_children, 3);
        assert_eq!(both.max_children, 6);
        assert!(
            both.idle > one.idle,
            "the saturated pool's status child counts as idle"
        );
        assert_eq!(
            total_capacity(std::iter::empty(), "/fpm-status", None),
            None
        );
        // A dynamic pool tells no max_children: it counts only with fpm.max_children.
        let mut dynamic = idle.clone();
        dynamic.process_manager = "dynamic".to_owned();
        assert_eq!(
            total_capacity([&dynamic].into_iter(), "/fpm-status", None),
            None
        );
        let known = total_capacity([&dynamic, &saturated].into_iter(), "/fpm-status", Some(5));
        assert_eq!(known.map(|c| c.max_children), Some(10));
    }
}
