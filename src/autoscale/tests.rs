use super::*;

const LONG: Duration = Duration::from_secs(3600);

fn auto(current: u32, backlog: u64) -> SubjectInput {
    SubjectInput {
        mode: PoolMode::Auto,
        pinned: false,
        current,
        busy_peak: current,
        backlog,
        queued: 0,
        min: 1,
        max: 32,
        weight: 1,
        max_shift: 4,
        since_change: LONG,
        idle_for: Duration::ZERO,
        cooldown: Duration::from_secs(5),
    }
}

fn cap(max_children: u32, idle: u32) -> Option<Capacity> {
    Some(Capacity { max_children, idle })
}

fn sizes(t: &[Target]) -> Vec<u32> {
    t.iter().map(|t| t.size).collect()
}

/// Runs decisions until nothing changes (or 50 steps); FPM's idle children are what the
/// pools leave of `max_children`. Returns every step's sizes.
fn run(mut subjects: Vec<SubjectInput>, max_children: u32) -> Vec<Vec<u32>> {
    let mut steps = Vec::new();
    for _ in 0..50 {
        let used: u32 = subjects.iter().map(|s| s.current).sum();
        let out = sizes(&decide(
            &subjects,
            cap(max_children, max_children.saturating_sub(used)),
        ));
        let total: u32 = out.iter().sum();
        assert!(
            total <= max_children,
            "sum {total} above {max_children}: {out:?}"
        );
        let changed = subjects.iter().zip(&out).any(|(s, t)| s.current != *t);
        for (s, t) in subjects.iter_mut().zip(&out) {
            s.current = *t;
            s.busy_peak = *t;
        }
        steps.push(out);
        if !changed {
            break;
        }
    }
    steps
}

#[test]
fn does_not_start_at_max_but_steps_up_by_max_shift() {
    let out = decide(&[auto(1, 2000)], cap(8, 7));
    assert_eq!(sizes(&out), [5]);
    let steps = run(vec![auto(1, 2000)], 8);
    assert_eq!(steps, [vec![5], vec![8], vec![8]]);
}

#[test]
fn limits_are_respected() {
    let mut s = auto(2, 2000);
    s.max = 3;
    assert_eq!(sizes(&decide(&[s.clone()], cap(64, 62))), [3]);
    s.min = 2;
    s.backlog = 0;
    s.busy_peak = 0;
    s.idle_for = LONG;
    assert_eq!(sizes(&decide(&[s], cap(64, 62))), [2], "never below min");
    let mut big = auto(40, 0);
    big.max = 32;
    big.busy_peak = 0;
    assert_eq!(
        sizes(&decide(&[big], cap(64, 24))),
        [32],
        "back within max at once"
    );
}

#[test]
fn the_sum_never_exceeds_max_children() {
    for (a, b) in [(1, 1), (4, 4), (8, 8), (3, 12)] {
        for step in run(vec![auto(a, 500), auto(b, 500)], 8).iter().skip(1) {
            assert!(step.iter().sum::<u32>() <= 8, "{step:?}");
        }
    }
    let mut fixed = auto(3, 100);
    fixed.mode = PoolMode::Fixed;
    let last = run(vec![fixed, auto(1, 500)], 8).pop().unwrap();
    assert_eq!(last, [3, 5], "fixed pools count against max_children");
}

#[test]
fn weights_three_to_one_share_eight_as_six_to_two() {
    let mut heavy = auto(1, 1000);
    heavy.weight = 3;
    let last = run(vec![heavy.clone(), auto(1, 1000)], 8).pop().unwrap();
    assert_eq!(last, [6, 2]);
    // From an unfair start too: the light subject gives back what is over its share.
    heavy.current = 1;
    let last = run(vec![heavy, auto(7, 1000)], 8).pop().unwrap();
    assert_eq!(last, [6, 2]);
}

#[test]
fn no_flapping_under_a_steady_load() {
    let hold = |mut s: SubjectInput, capacity| {
        for round in 0..20 {
            let out = decide(&[s.clone()], capacity);
            assert_eq!(out[0].size, s.current, "round {round}: {:?}", out[0]);
            s.since_change = LONG;
            s.idle_for = LONG;
        }
    };
    // Every worker busy, nothing waiting: the pool is just right.
    let mut s = auto(4, 0);
    s.idle_for = LONG;
    hold(s, cap(8, 4));
    // Three of four busy, for long: one spare is kept.
    let mut s = auto(4, 0);
    s.busy_peak = 3;
    hold(s, cap(8, 4));
    // A backlog while FPM is full: nothing to take.
    hold(auto(8, 50), cap(8, 0));
    // Three of eight busy: shrink once, to four, then stay.
    let mut s = auto(8, 0);
    s.busy_peak = 3;
    s.idle_for = LONG;
    assert_eq!(sizes(&decide(&[s.clone()], cap(8, 5))), [4]);
    s.current = 4;
    hold(s, cap(8, 5));
}

#[test]
fn shrinks_an_idle_pool_after_the_cooldown_by_max_shift() {
    let mut s = auto(8, 0);
    s.busy_peak = 0;
    s.idle_for = Duration::from_secs(1);
    assert_eq!(
        sizes(&decide(&[s.clone()], cap(8, 8))),
        [8],
        "not idle long enough"
    );
    s.idle_for = LONG;
    let out = decide(&[s.clone()], cap(8, 8));
    assert_eq!((out[0].size, out[0].why), (4, "idle"));
    s.current = 4;
    assert_eq!(sizes(&decide(&[s], cap(8, 8))), [1]);
}

#[test]
fn cooldown_holds_a_change_but_not_growth_into_a_deep_backlog() {
    // One message waiting for two workers: not deep, the cooldown holds the growth.
    let mut s = auto(2, 1);
    s.since_change = Duration::from_secs(1);
    let out = decide(&[s.clone()], cap(8, 6));
    assert_eq!((out[0].size, out[0].why), (2, "cooldown"));
    // A message or more per worker, and idle children: grow by max_shift at once.
    s.backlog = 2;
    let out = decide(&[s.clone()], cap(8, 6));
    assert_eq!(
        (out[0].size, out[0].why),
        (4, "backlog and free FPM children")
    );
    // No idle child: nothing to grow into, deep or not.
    assert_eq!(sizes(&decide(&[s.clone()], cap(8, 0))), [2]);
    // The cooldown still holds a shrink.
    let mut idle = auto(8, 0);
    idle.busy_peak = 0;
    idle.idle_for = LONG;
    idle.since_change = Duration::from_secs(1);
    let out = decide(&[idle], cap(8, 8));
    assert_eq!((out[0].size, out[0].why), (8, "cooldown"));
}

#[test]
fn a_deep_queue_grows_the_pool_even_with_a_small_prefetch() {
    // prefetch_per_worker = 1: the one worker holds the only delivery, nothing is prefetched.
    let mut s = auto(1, 0);
    s.since_change = Duration::ZERO;
    assert_eq!(
        sizes(&decide(&[s.clone()], cap(8, 7))),
        [1],
        "the prefetch alone shows no backlog"
    );
    s.queued = 2000;
    let out = decide(&[s.clone()], cap(8, 7));
    assert_eq!(
        (out[0].size, out[0].why),
        (5, "queue backlog and free FPM children")
    );
    // One status read later (the cooldown not over), up to FPM's 8 children, then steady.
    s.current = 5;
    s.busy_peak = 5;
    assert_eq!(sizes(&decide(&[s.clone()], cap(8, 3))), [8]);
    s.current = 8;
    s.busy_peak = 8;
    let out = decide(&[s.clone()], cap(8, 0));
    assert_eq!((out[0].size, out[0].why), (8, "no free FPM child"));
    // Within max_pool_size, however deep the queue.
    s.max = 6;
    s.current = 4;
    assert_eq!(sizes(&decide(&[s], cap(64, 60))), [6]);
}

#[test]
fn a_queue_backlog_is_shared_by_weight() {
    // Two deep queues, nothing prefetched: weights 3 and 1 still share 8 as 6 and 2.
    let mut heavy = auto(1, 0);
    heavy.queued = 1000;
    heavy.weight = 3;
    let mut light = auto(1, 0);
    light.queued = 1000;
    let last = run(vec![heavy, light], 8).pop().unwrap();
    assert_eq!(last, [6, 2]);
}

#[test]
fn grows_only_into_idle_children() {
    // Another agent holds 6 of 8 children: only the 2 idle ones are taken.
    assert_eq!(sizes(&decide(&[auto(1, 100)], cap(8, 1))), [2]);
    let out = decide(&[auto(2, 100)], cap(8, 0));
    assert_eq!((out[0].size, out[0].why), (2, "no free FPM child"));
}

#[test]
fn pinned_fixed_and_unknown_capacity_hold() {
    let mut pinned = auto(5, 1000);
    pinned.pinned = true;
    let mut fixed = auto(3, 1000);
    fixed.mode = PoolMode::Fixed;
    let out = decide(&[pinned.clone(), fixed.clone()], cap(64, 56));
    assert_eq!(sizes(&out), [5, 3]);
    assert_eq!(out[0].why, "pinned");
    let out = decide(&[auto(1, 1000), pinned], None);
    assert_eq!(sizes(&out), [1, 5]);
    assert_eq!(out[0].why, "FPM capacity unknown");
}

#[test]
fn a_smaller_fpm_forces_a_shrink_at_once() {
    let mut a = auto(8, 100);
    a.since_change = Duration::ZERO;
    let mut b = auto(8, 100);
    b.since_change = Duration::ZERO;
    let out = decide(&[a, b], cap(8, 0));
    assert_eq!(sizes(&out), [4, 4]);
    assert_eq!(out[0].why, "above FPM's max_children");
}

#[test]
fn only_an_auto_pool_below_max_with_a_deep_backlog_may_grow() {
    let mut s = auto(4, 3);
    assert!(!may_grow(&s), "3 waiting for 4 workers is not deep");
    s.queued = 1;
    assert!(may_grow(&s));
    s.current = 32;
    assert!(!may_grow(&s), "at max_pool_size");
    s.current = 4;
    s.pinned = true;
    assert!(!may_grow(&s), "pinned");
    s.pinned = false;
    s.mode = PoolMode::Fixed;
    assert!(!may_grow(&s), "fixed");
}
