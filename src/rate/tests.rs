use std::time::{Duration, Instant};

use super::*;

fn limit(text: &str, burst: u32) -> RateLimit {
    RateLimit {
        rate: Rate::parse(text).unwrap(),
        burst,
    }
}

#[test]
fn a_bucket_holds_the_rate_over_any_window() {
    let start = Instant::now();
    let mut bucket = Bucket::new(limit("50/s", 1), start);
    // A backlog that always wants more: count what goes in 10 simulated seconds, stepping by
    // the bucket's own next_in (as the consumer's timer does) plus a jitter.
    let mut now = start;
    let mut sent = 0;
    let end = start + Duration::from_secs(10);
    let mut step = 0u64;
    while now < end {
        sent += bucket.take(8, now);
        step += 1;
        now += bucket.next_in(now) + Duration::from_micros(step % 7 * 100);
    }
    assert!((495..=501).contains(&sent), "{sent} in 10 s at 50/s");
}

#[test]
fn a_burst_goes_at_once_then_the_rate() {
    let start = Instant::now();
    let mut bucket = Bucket::new(limit("10/s", 5), start);
    assert_eq!(bucket.take(8, start), 5);
    assert_eq!(bucket.take(8, start), 0);
    assert_eq!(bucket.next_in(start), Duration::from_millis(100));
    assert_eq!(bucket.take(8, start + Duration::from_millis(250)), 2);
    // A long quiet spell refills to the burst and one token of slack for a late timer, no more.
    assert_eq!(bucket.take(100, start + Duration::from_secs(60)), 6);
}

#[test]
fn a_new_limit_applies_at_once() {
    let start = Instant::now();
    let mut bucket = Bucket::new(limit("1/s", 1), start);
    assert_eq!(bucket.take(1, start), 1);
    assert_eq!(bucket.next_in(start), Duration::from_secs(1));
    bucket.set(limit("100/s", 1), start);
    assert_eq!(bucket.next_in(start), Duration::from_millis(10));
    assert_eq!(bucket.limit(), limit("100/s", 1));
}
