use super::slow::match_child;
use super::*;

#[test]
fn the_closest_busy_child_is_named() {
    let body = include_str!("../testdata/saturated.json");
    let mut status: FpmStatus = serde_json::from_str(body).unwrap();
    status.processes[0].state = "Running".to_owned();
    let durations: Vec<_> = status
        .busy_children("/fpm-status")
        .map(|p| (p.pid, p.request_duration_us))
        .collect();
    assert_eq!(durations.len(), 2);
    for (pid, us) in &durations {
        let found = match_child(&status, "/fpm-status", Duration::from_micros(us + 20_000));
        assert_eq!(found.map(|p| p.pid), Some(*pid), "{durations:?}");
    }
    // A child held by an idle keep-alive connection runs nothing.
    status.processes[0].state = "Reading headers".to_owned();
    let long = Duration::from_micros(status.processes[0].request_duration_us);
    assert_eq!(
        match_child(&status, "/fpm-status", long).map(|p| p.pid),
        Some(2079)
    );
    let idle: FpmStatus = serde_json::from_str(include_str!("../testdata/idle.json")).unwrap();
    assert!(match_child(&idle, "/fpm-status", Duration::from_secs(1)).is_none());
}
