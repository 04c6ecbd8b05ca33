use super::*;

const IDLE: &str = include_str!("testdata/idle.json");
const BUSY: &str = include_str!("testdata/busy.json");
const SATURATED: &str = include_str!("testdata/saturated.json");

fn reply(status: &str, body: &str) -> Vec<u8> {
    format!("{status}Expires: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Type: application/json\r\n\r\n{body}")
        .into_bytes()
}

#[test]
fn parses_an_idle_pool() {
    let s = parse_reply(&reply("", IDLE)).unwrap();
    assert_eq!(s.pool, "p");
    assert_eq!(s.process_manager, "static");
    assert_eq!(
        (s.idle_processes, s.active_processes, s.total_processes),
        (2, 1, 3)
    );
    assert_eq!(s.max_children(None), Some(3));
    assert_eq!(s.max_children(Some(16)), Some(16));
    assert_eq!(s.active_without_probe("/fpm-status"), 0);
    assert_eq!(
        s.idle("/fpm-status"),
        3,
        "the status request's child is free again"
    );
    assert_eq!(s.processes.len(), 3);
    assert_eq!(
        s.busy_children("/fpm-status").count(),
        0,
        "the status request is not busy work"
    );
}

#[test]
fn parses_busy_children_with_duration_and_uri() {
    let s = parse_reply(&reply("", BUSY)).unwrap();
    let busy: Vec<_> = s.busy_children("/fpm-status").collect();
    assert_eq!(busy.len(), 1);
    assert_eq!(busy[0].pid, 2080);
    assert_eq!(busy[0].request_uri, "/sleep.php?agent_message_id=m-42");
    assert_eq!(busy[0].request_method, "POST");
    assert!(
        busy[0].request_duration_us > 400_000,
        "{}",
        busy[0].request_duration_us
    );
    let idle = s.processes.iter().find(|p| p.pid == 2078).unwrap();
    assert_eq!(idle.last_request_memory, 2_097_152);
    let state = StatusState::from_status("127.0.0.1:9000".into(), &s, "/fpm-status", None);
    assert_eq!(state.state, "ok");
    assert_eq!(state.active, Some(1));
    assert_eq!(state.busy.len(), 1);
    assert!(state.busy[0].duration_ms >= 400);
    assert_eq!(state.children.len(), 3);
}

#[test]
fn parses_a_saturated_pool_with_a_listen_queue() {
    let s = parse_reply(&reply("", SATURATED)).unwrap();
    assert_eq!(s.listen_queue, 2);
    assert_eq!(s.idle("/fpm-status"), 1);
    assert_eq!(s.idle_processes, 0);
    assert_eq!(
        s.busy_children("/fpm-status").count(),
        2,
        "Finishing counts as busy"
    );
}

#[test]
fn the_short_form_has_no_processes() {
    let short = IDLE.split(", \"processes\"").next().unwrap().to_owned() + "}";
    let s = parse_reply(&reply("", &short)).unwrap();
    assert!(s.processes.is_empty());
    assert_eq!(
        (
            s.max_children(None),
            s.active_without_probe("/x"),
            s.idle("/x")
        ),
        (Some(3), 0, 3)
    );
}

#[test]
fn errors_are_states() {
    let not_found = parse_reply(
        b"Status: 404 Not Found\r\nContent-type: text/html; charset=UTF-8\r\n\r\nFile not found.\n",
    );
    assert_eq!(not_found, Err(StatusError::NotFound));
    assert_eq!(not_found.unwrap_err().state(), "not_found");
    assert_eq!(
        parse_reply(&reply("Status: 500 Internal Server Error\r\n", "")),
        Err(StatusError::Http(500))
    );
    let html = parse_reply(&reply("", "<html>pool: www</html>")).unwrap_err();
    assert_eq!(html.state(), "invalid");
    assert_eq!(parse_reply(b"no head").unwrap_err().state(), "invalid");
    assert_eq!(
        StatusError::Fpm("FPM request timed out after 1s".into()).state(),
        "timeout"
    );
    assert_eq!(
        StatusError::Fpm("cannot connect to FPM".into()).state(),
        "down"
    );
}
