use super::*;

fn plan(ledger: &mut Ledger, hold: usize) -> (Option<(u64, u64)>, Vec<u64>) {
    let p = ledger.plan(hold);
    (p.multiple, p.single.into_iter().map(|(t, _)| t).collect())
}

#[test]
fn in_order_tags_become_one_multiple_ack() {
    let mut l = Ledger::default();
    for t in 1..=5 {
        l.done(t, true);
    }
    assert_eq!(plan(&mut l, 8), (Some((5, 5)), vec![]));
    assert_eq!(l.through, 5);
    assert_eq!(plan(&mut l, 8), (None, vec![]));
}

#[test]
fn a_tag_in_flight_holds_later_ones_back_up_to_the_limit() {
    let mut l = Ledger::default();
    l.done(1, true);
    l.done(3, true);
    l.done(4, false);
    // 2 is still with a worker: only 1 may go in the multiple ack.
    assert_eq!(plan(&mut l, 2), (Some((1, 1)), vec![]));
    l.done(5, true);
    // Three wait behind 2, over the limit of 2: acked one by one.
    assert_eq!(plan(&mut l, 2), (None, vec![3, 4, 5]));
    // When 2 finishes, the floor passes the tags already sent without acking them again.
    l.done(2, true);
    assert_eq!(plan(&mut l, 2), (Some((2, 1)), vec![]));
    assert_eq!(l.through, 5);
    assert!(l.sent.is_empty());
}

#[test]
fn the_multiple_ack_ends_on_a_tag_that_is_still_unacked() {
    let mut l = Ledger::default();
    l.done(2, true);
    assert_eq!(plan(&mut l, 0), (None, vec![2]));
    l.done(1, true);
    // 1 is the last unacked tag of the prefix; 2 was sent already.
    assert_eq!(plan(&mut l, 0), (Some((1, 1)), vec![]));
    assert_eq!(l.through, 2);
}

#[test]
fn nacked_tags_are_passed_over_never_acked() {
    let mut l = Ledger::default();
    l.done(1, true);
    assert!(l.release(2));
    l.done(3, true);
    assert_eq!(plan(&mut l, 4), (Some((3, 2)), vec![]));
    // A late duplicate report of a settled tag is ignored.
    l.done(2, true);
    l.done(3, true);
    assert_eq!(plan(&mut l, 4), (None, vec![]));
}

#[test]
fn a_tag_already_acked_or_done_is_never_nacked() {
    let mut l = Ledger::default();
    l.done(1, true);
    assert_eq!(plan(&mut l, 4), (Some((1, 1)), vec![]));
    // Acked in the multiple ack: a nack would be an unknown tag for the broker.
    assert!(!l.release(1));
    // Done but not sent yet (a worker that failed after reporting success): acked.
    l.done(3, true);
    assert!(!l.release(3));
    // Acked singly: no nack either; a nack twice only once.
    l.done(5, true);
    assert_eq!(plan(&mut l, 0), (None, vec![3, 5]));
    assert!(!l.release(5));
    assert!(l.release(2));
    assert!(!l.release(2));
    assert_eq!(plan(&mut l, 0), (None, vec![]));
    assert_eq!(l.through, 3);
}

#[test]
fn runs_behave_like_a_set_of_tags() {
    use std::collections::BTreeSet;
    let mut runs = Runs::default();
    let mut model = BTreeSet::new();
    // A fixed pseudo-random walk over 1..=64: inserts, lookups and run removals.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let tag = x % 64 + 1;
        if x.is_multiple_of(5) {
            let expected = model.contains(&tag).then(|| {
                let mut end = tag;
                while model.remove(&end) {
                    end += 1;
                }
                end - 1
            });
            // Only a run that starts at `tag` can be taken.
            let starts_here = tag == 1 || !runs.contains(tag - 1);
            if starts_here {
                assert_eq!(runs.take_run_at(tag), expected, "take at {tag}");
            } else if let Some(end) = expected {
                // Put the model back: the run does not start here.
                model.extend(tag..=end);
            }
        } else {
            runs.insert(tag);
            model.insert(tag);
        }
        for t in 1..=65 {
            assert_eq!(runs.contains(t), model.contains(&t), "contains {t}");
        }
    }
}

#[test]
fn a_long_stuck_message_keeps_the_ledger_small() {
    let mut l = Ledger::default();
    // Tag 1 runs for a long time; 100,000 later ones finish and are acked singly.
    for t in 2..=100_001 {
        l.done(t, true);
        if t.is_multiple_of(100) {
            let (multiple, single) = plan(&mut l, 8);
            assert_eq!(multiple, None);
            assert!(!single.is_empty());
        }
    }
    assert_eq!(l.sent.0.len(), 1, "one run, not one entry per message");
    // 1 finishes: one multiple ack settles it and 100,001 (still held), passing the run.
    l.done(1, true);
    assert_eq!(plan(&mut l, 8), (Some((100_001, 2)), vec![]));
    assert_eq!(l.through, 100_001);
    assert!(l.sent.is_empty());
}

#[test]
fn hold_zero_sends_everything() {
    let mut l = Ledger::default();
    l.done(7, false);
    l.done(9, true);
    assert_eq!(plan(&mut l, 0), (None, vec![7, 9]));
    assert_eq!(plan(&mut l, 0), (None, vec![]));
}

#[test]
fn take_queued_applies_what_is_queued_and_tells_a_closed_channel() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    for tag in 1..=3 {
        tx.send(Cmd::Nack(tag)).unwrap();
    }
    let mut seen = Vec::new();
    let mut record = |cmd| {
        if let Cmd::Nack(tag) = cmd {
            seen.push(tag);
        }
    };
    assert!(
        !take_queued(&mut rx, &mut record),
        "senders remain: not closed"
    );
    assert!(
        !take_queued(&mut rx, &mut record),
        "nothing queued: returns at once"
    );
    tx.send(Cmd::Nack(4)).unwrap();
    drop(tx);
    assert!(
        take_queued(&mut rx, &mut record),
        "what was queued, then closed"
    );
    assert_eq!(seen, [1, 2, 3, 4]);
}
