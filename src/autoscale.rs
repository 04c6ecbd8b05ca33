//! Pool autoscaling: the pure decision (subjects' state and FPM's capacity in, target pool
//! sizes out). The task that feeds it and applies its answer is [`crate::agent`]'s.
//!
//! Invariant: no I/O, no clock. A subject that is `fixed` or pinned by an operator keeps its
//! size; an `auto` subject stays within `min..=max`; the sum of all pools never goes above FPM's
//! `max_children` (unless the `min` sizes and fixed pools alone already do); with FPM's capacity
//! unknown, nothing changes.

use std::time::Duration;

pub use crate::config::PoolMode;

/// One subject, as the decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectInput {
    /// `fixed` or `auto`.
    pub mode: PoolMode,
    /// An operator set its size (`pool set`, SIGTTIN, SIGTTOU) and has not released it.
    pub pinned: bool,
    /// Workers now.
    pub current: u32,
    /// Most workers busy at once since the last decision.
    pub busy_peak: u32,
    /// Deliveries prefetched by the agent and not started (waiting for a worker).
    pub backlog: u64,
    /// Messages ready in the queue (its depth at the last read; 0 when unknown).
    pub queued: u64,
    /// `min_pool_size`.
    pub min: u32,
    /// `max_pool_size`.
    pub max: u32,
    /// Share of the capacity when several subjects have a backlog.
    pub weight: u32,
    /// Most workers added or removed in one step.
    pub max_shift: u32,
    /// Time since this pool's size last changed.
    pub since_change: Duration,
    /// Time since this subject last had a backlog or every worker busy.
    pub idle_for: Duration,
    /// Wait between two changes, and idle time before shrinking.
    pub cooldown: Duration,
}

/// FPM's capacity, from its status page (summed over the healthy upstreams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// `pm.max_children`.
    pub max_children: u32,
    /// Children idle now (not held by anyone, this agent included).
    pub idle: u32,
}

/// The decision for one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Pool size to apply.
    pub size: u32,
    /// Why (for the log line).
    pub why: &'static str,
}

/// Target sizes, in the order of `subjects`. `capacity` is `None` when FPM's status is unknown:
/// then every pool keeps its size.
#[must_use]
pub(crate) fn decide(subjects: &[SubjectInput], capacity: Option<Capacity>) -> Vec<Target> {
    let hold = |s: &SubjectInput, why| Target {
        size: s.current,
        why,
    };
    let Some(cap) = capacity else {
        return subjects
            .iter()
            .map(|s| hold(s, "FPM capacity unknown"))
            .collect();
    };
    let auto = |s: &SubjectInput| s.mode == PoolMode::Auto && !s.pinned;
    let fixed: u32 = subjects
        .iter()
        .filter(|s| !auto(s))
        .map(|s| s.current)
        .sum();
    let auto_now: u32 = subjects.iter().filter(|s| auto(s)).map(|s| s.current).sum();
    // What the auto pools may hold together: FPM's children minus the fixed pools, and no more
    // than they hold now plus the children nobody uses (other agents may share the pool).
    let ceiling = cap.max_children.saturating_sub(fixed);
    let budget = ceiling.min(auto_now.saturating_add(cap.idle));
    let demand: Vec<u32> = subjects.iter().map(demand).collect();
    let fair = share(subjects, &demand, budget, auto);
    let mut out: Vec<Target> = subjects
        .iter()
        .zip(&fair)
        .map(|(s, &ideal)| {
            if !auto(s) {
                return hold(s, if s.pinned { "pinned" } else { "fixed" });
            }
            step(s, ideal)
        })
        .zip(&demand)
        .zip(subjects)
        .map(|((t, &d), s)| match t.why {
            "steady" if d > s.current => Target {
                why: "no free FPM child",
                ..t
            },
            _ => t,
        })
        .collect();
    // Growth only into what is free after this step's sizes.
    let mut room = budget.saturating_sub(
        subjects
            .iter()
            .zip(&out)
            .filter(|(s, _)| auto(s))
            .map(|(s, t)| t.size.min(s.current))
            .sum(),
    );
    for (s, t) in subjects.iter().zip(out.iter_mut()) {
        if auto(s) && t.size > s.current {
            let grow = (t.size - s.current).min(room);
            room -= grow;
            t.size = s.current + grow;
            if grow == 0 {
                t.why = "no free FPM child";
            }
        }
    }
    enforce_ceiling(subjects, &mut out, ceiling, auto);
    out
}

/// Messages waiting for a worker: prefetched, and ready in the queue.
fn waiting(s: &SubjectInput) -> u64 {
    s.backlog.saturating_add(s.queued)
}

/// A backlog of at least one message per worker: growing into idle FPM children cannot be a
/// flap, so the cooldown does not hold it (`max_shift` still does).
fn deep(s: &SubjectInput) -> bool {
    waiting(s) >= u64::from(s.current.max(1))
}

/// An auto subject below its `max_pool_size` with a deep backlog: it would grow if FPM has
/// idle children. The agent then reads FPM's status again soon instead of at its interval, so
/// a drain ramps up in a few reads ~50 ms apart whatever `fpm.status_interval` is.
#[must_use]
pub(crate) fn may_grow(s: &SubjectInput) -> bool {
    s.mode == PoolMode::Auto && !s.pinned && s.current < s.max && deep(s)
}

/// Workers a subject could use now.
fn demand(s: &SubjectInput) -> u32 {
    let wanted = if waiting(s) > 0 {
        u64::from(s.busy_peak.max(s.current)).saturating_add(waiting(s))
    } else if s.idle_for >= s.cooldown {
        // One spare worker: a pool that is just big enough does not shrink and grow back.
        u64::from(s.busy_peak.saturating_add(1).min(s.current))
    } else {
        u64::from(s.current)
    };
    u32::try_from(wanted)
        .unwrap_or(u32::MAX)
        .clamp(s.min, s.max.max(s.min))
}

/// Weighted max-min share of `budget` among the auto subjects: each starts at its `min`; each
/// further worker goes to the subject furthest below its weighted share that still wants one.
fn share(
    subjects: &[SubjectInput],
    demand: &[u32],
    budget: u32,
    auto: impl Fn(&SubjectInput) -> bool,
) -> Vec<u32> {
    let mut alloc: Vec<u32> = subjects.iter().map(|s| s.min).collect();
    let mut left = budget.saturating_sub(subjects.iter().filter(|s| auto(s)).map(|s| s.min).sum());
    while left > 0 {
        let next = subjects
            .iter()
            .enumerate()
            .filter(|(i, s)| auto(s) && alloc[*i] < demand[*i])
            .min_by(|(i, a), (j, b)| {
                // alloc_i / w_i < alloc_j / w_j, without division; ties go to the heavier weight.
                let (wa, wb) = (u64::from(a.weight.max(1)), u64::from(b.weight.max(1)));
                (u64::from(alloc[*i]) * wb)
                    .cmp(&(u64::from(alloc[*j]) * wa))
                    .then(wb.cmp(&wa))
            })
            .map(|(i, _)| i);
        let Some(i) = next else { break };
        alloc[i] += 1;
        left -= 1;
    }
    alloc
}

/// One step from `current` towards `ideal`: at most `max_shift`, none during the cooldown
/// (except growth into a deep backlog).
fn step(s: &SubjectInput, ideal: u32) -> Target {
    let current = s.current;
    let bounded = ideal.clamp(s.min, s.max.max(s.min));
    if bounded == current {
        return Target {
            size: current,
            why: "steady",
        };
    }
    if !(s.min..=s.max.max(s.min)).contains(&current) {
        return Target {
            size: bounded,
            why: "back within min_pool_size..=max_pool_size",
        };
    }
    if s.since_change < s.cooldown && !(bounded > current && deep(s)) {
        return Target {
            size: current,
            why: "cooldown",
        };
    }
    let shift = s.max_shift.max(1);
    if bounded > current {
        Target {
            size: bounded.min(current.saturating_add(shift)),
            why: if s.queued > 0 {
                "queue backlog and free FPM children"
            } else {
                "backlog and free FPM children"
            },
        }
    } else {
        Target {
            size: bounded.max(current.saturating_sub(shift)),
            why: if waiting(s) > 0 {
                "fair share of FPM children"
            } else {
                "idle"
            },
        }
    }
}

/// Shrinks auto pools (largest share first, never below `min`) until they fit `ceiling`.
fn enforce_ceiling(
    subjects: &[SubjectInput],
    out: &mut [Target],
    ceiling: u32,
    auto: impl Fn(&SubjectInput) -> bool,
) {
    loop {
        let total: u32 = subjects
            .iter()
            .zip(out.iter())
            .filter(|(s, _)| auto(s))
            .map(|(_, t)| t.size)
            .sum();
        if total <= ceiling {
            return;
        }
        let victim = subjects
            .iter()
            .enumerate()
            .filter(|(i, s)| auto(s) && out[*i].size > s.min)
            .max_by(|(i, a), (j, b)| {
                let (wa, wb) = (u64::from(a.weight.max(1)), u64::from(b.weight.max(1)));
                (u64::from(out[*i].size) * wb).cmp(&(u64::from(out[*j].size) * wa))
            })
            .map(|(i, _)| i);
        let Some(i) = victim else { return };
        out[i].size -= 1;
        out[i].why = "above FPM's max_children";
    }
}

#[cfg(test)]
mod tests;
