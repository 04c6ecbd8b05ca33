use super::*;
use crate::fastcgi::FpmClient;

fn view(up: bool, leased: usize, cap: Option<usize>) -> View {
    View { up, leased, cap }
}

#[test]
fn pick_takes_the_least_loaded_healthy_upstream() {
    let views = [
        view(true, 3, Some(4)),
        view(true, 1, Some(4)),
        view(false, 0, Some(4)),
    ];
    assert_eq!(pick(&views, 0, &[]), Some(1));
    // Load is relative to capacity: 4 of 8 is less than 3 of 4.
    let views = [view(true, 3, Some(4)), view(true, 4, Some(8))];
    assert_eq!(pick(&views, 0, &[]), Some(1));
    // Unknown capacity: the count of leases decides.
    let views = [view(true, 2, None), view(true, 1, None)];
    assert_eq!(pick(&views, 0, &[]), Some(1));
}

#[test]
fn equal_upstreams_take_turns_and_skipped_or_down_ones_are_left_out() {
    let views = [view(true, 0, Some(4)); 3];
    let picked: Vec<_> = (0..6).map(|s| pick(&views, s % 3, &[]).unwrap()).collect();
    assert_eq!(picked, [0, 1, 2, 0, 1, 2]);
    assert_eq!(pick(&views, 0, &[true, false, false]), Some(1));
    assert_eq!(pick(&views, 0, &[true, true, true]), None);
    let down = [view(false, 0, Some(4)), view(false, 0, None)];
    assert_eq!(pick(&down, 0, &[]), None);
    assert_eq!(pick(&[], 0, &[]), None);
}

#[test]
fn the_breaker_backs_off_and_keeps_its_start() {
    let t0 = Instant::now();
    let h = Health::Up.tripped(t0);
    assert!(!h.up());
    let Health::Down {
        since, next_probe, ..
    } = h
    else {
        unreachable!()
    };
    assert_eq!((since, next_probe), (t0, t0 + PROBE_FIRST));
    // A second refusal while down changes nothing.
    assert_eq!(h.tripped(t0 + Duration::from_secs(1)), h);
    let mut h = h;
    let mut delays = Vec::new();
    for _ in 0..8 {
        h = h.probe_failed(t0);
        let Health::Down { delay, since, .. } = h else {
            unreachable!()
        };
        assert_eq!(since, t0);
        delays.push(delay.as_millis());
    }
    assert_eq!(delays, [400, 800, 1600, 3200, 5000, 5000, 5000, 5000]);
    assert_eq!(Health::Up.probe_failed(t0), Health::Up);
}

fn upstream(cap: Option<usize>, keep_alive_idle: Duration) -> Arc<Upstream> {
    upstream_with(cap, keep_alive_idle, Duration::from_secs(60))
}

fn upstream_with(
    cap: Option<usize>,
    keep_alive_idle: Duration,
    keep_alive_max: Duration,
) -> Arc<Upstream> {
    Arc::new(Upstream {
        address: FpmAddress::Unix("/nonexistent/fpm.sock".into()),
        label: "unix:/nonexistent/fpm.sock".to_owned(),
        timeout: Duration::from_secs(1),
        max_response: 1 << 20,
        keep_alive_idle,
        keep_alive_max,
        gate: Mutex::new(Gate {
            cap,
            leased: 0,
            idle: Vec::new(),
            waiters: VecDeque::new(),
        }),
        health: Mutex::new(Health::Up),
        contended_until: Mutex::new(None),
        metrics: UpstreamMetrics::default(),
        wake: Arc::default(),
    })
}

fn leased(u: &Upstream) -> (usize, usize) {
    let gate = u.gate.lock().unwrap();
    (gate.leased, gate.waiters.len())
}

#[tokio::test]
async fn leases_are_capped_and_handed_over_in_arrival_order() {
    let u = upstream(Some(2), Duration::from_millis(100));
    let a = u.acquire().await;
    let b = u.acquire().await;
    assert_eq!(leased(&u), (2, 0));
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiting = Vec::new();
    for n in 0..3 {
        let (u2, order) = (u.clone(), order.clone());
        waiting.push(tokio::spawn(async move {
            let lease = u2.acquire().await;
            order.lock().unwrap().push(n);
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(lease);
        }));
        // Each waiter queues before the next one starts.
        while leased(&u).1 < n + 1 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(leased(&u), (2, 3), "the third and later wait in the agent");
    drop(a);
    drop(b);
    for w in waiting {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
    assert_eq!(leased(&u), (0, 0));
}

#[tokio::test]
async fn a_raised_capacity_admits_waiters_and_a_lowered_one_applies_as_leases_return() {
    let u = upstream(Some(1), Duration::from_millis(100));
    let a = u.acquire().await;
    let u2 = u.clone();
    let waiter = tokio::spawn(async move { u2.acquire().await });
    while leased(&u).1 == 0 {
        tokio::task::yield_now().await;
    }
    u.set_capacity(Some(2));
    let b = waiter.await.unwrap();
    assert_eq!(leased(&u), (2, 0));
    u.set_capacity(Some(1));
    let u3 = u.clone();
    let waiter = tokio::spawn(async move { u3.acquire().await });
    while leased(&u).1 == 0 {
        tokio::task::yield_now().await;
    }
    // Two leases over a cap of 1: the first one back is not handed over.
    drop(a);
    assert_eq!(leased(&u), (1, 1));
    drop(b);
    let c = waiter.await.unwrap();
    assert_eq!(leased(&u), (1, 0));
    drop(c);
    // Unknown capacity: no cap.
    u.set_capacity(None);
    let many: Vec<_> = futures_util::future::join_all((0..50).map(|_| u.acquire())).await;
    assert_eq!(leased(&u), (50, 0));
    drop(many);
    assert_eq!(leased(&u), (0, 0));
}

#[tokio::test]
async fn a_contended_upstream_keeps_no_connection_open() {
    let u = upstream(Some(4), Duration::from_secs(60));
    assert!(!u.contended());
    u.note_status(Some(0), false, Duration::from_secs(1));
    assert!(!u.contended(), "an empty listen queue is no contention");
    u.note_status(Some(3), false, Duration::from_secs(1));
    assert!(u.contended());
    u.note_status(None, true, Duration::from_secs(1));
    assert!(u.contended(), "a timed-out status read counts");
    *u.contended_until.lock().unwrap() = Some(Instant::now());
    assert!(!u.contended(), "contention is held only for a while");
}

#[tokio::test]
async fn idle_connections_close_after_keep_alive_idle() {
    use tokio::io::AsyncWriteExt as _;
    let u = upstream(Some(4), Duration::from_millis(50));
    // A lease whose client holds an (in-memory) open connection.
    let mut lease = u.acquire().await;
    let (agent_side, mut fpm_side) = tokio::io::duplex(1024);
    fpm_side.write_all(b"").await.unwrap();
    *lease.client() = FpmClient::with_stream(u.address.clone(), u.timeout, 1 << 20, agent_side);
    drop(lease);
    assert_eq!(u.gate.lock().unwrap().idle.len(), 1, "kept for reuse");
    // Reused by the next lease.
    let lease = u.acquire().await;
    assert_eq!(u.gate.lock().unwrap().idle.len(), 0);
    drop(lease);
    u.reap(Instant::now());
    assert_eq!(
        u.gate.lock().unwrap().idle.len(),
        1,
        "not idle long enough yet"
    );
    u.reap(Instant::now() + Duration::from_millis(60));
    assert_eq!(u.gate.lock().unwrap().idle.len(), 0, "closed once idle");
    // With keep_alive_idle = 0 nothing is kept.
    let u = upstream(Some(4), Duration::ZERO);
    let mut lease = u.acquire().await;
    let (agent_side, _fpm_side) = tokio::io::duplex(1024);
    *lease.client() = FpmClient::with_stream(u.address.clone(), u.timeout, 1 << 20, agent_side);
    drop(lease);
    assert_eq!(u.gate.lock().unwrap().idle.len(), 0);
}

#[tokio::test]
async fn maintenance_waits_while_nothing_is_open_and_closes_a_connection_kept_later() {
    use tokio::io::AsyncWriteExt as _;
    let text = "[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
                [fpm]\naddress = \"unix:/nonexistent/fpm.sock\"\n\
                script_filename = \"/srv/index.php\"\nkeep_alive_idle = \"40ms\"\n\
                [subjects.event]\nqueue = \"e\"\n";
    let config =
        crate::config::Config::from_toml(text, std::path::Path::new("t.toml"), |_| None).unwrap();
    let ups = Arc::new(Upstreams::new(&config, |_| UpstreamMetrics::default()));
    assert!(ups.quiet(), "nothing open and every upstream up");
    let task = tokio::spawn(Arc::clone(&ups).maintain());
    // On this one-thread runtime the task runs until it waits: it found nothing to do.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let u = &ups.list()[0];
    let mut lease = u.acquire().await;
    let (agent_side, mut fpm_side) = tokio::io::duplex(1024);
    fpm_side.write_all(b"").await.unwrap();
    *lease.client() = FpmClient::with_stream(u.address.clone(), u.timeout, 1 << 20, agent_side);
    drop(lease);
    assert_eq!(u.gate.lock().unwrap().idle.len(), 1, "kept for reuse");
    assert!(!ups.quiet());
    // Keeping it woke the task: it closes the connection once idle past keep_alive_idle.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !u.gate.lock().unwrap().idle.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the idle connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(ups.quiet(), "quiet again");
    task.abort();
}

#[tokio::test]
async fn a_connection_whose_request_was_abandoned_is_not_reused() {
    let u = upstream(Some(4), Duration::from_secs(60));
    let mut lease = u.acquire().await;
    // FPM never answers; the request's future is dropped midway (a worker killed).
    let (agent_side, _fpm_side) = tokio::io::duplex(64 * 1024);
    *lease.client() = FpmClient::with_stream(u.address.clone(), u.timeout, 1 << 20, agent_side);
    let params = [("SCRIPT_FILENAME", "/srv/index.php".into())];
    let abandoned = tokio::time::timeout(
        Duration::from_millis(20),
        lease.client().request(&params, b"{}"),
    )
    .await;
    assert!(abandoned.is_err(), "still waiting for FPM");
    drop(lease);
    assert_eq!(u.gate.lock().unwrap().idle.len(), 0, "closed, not pooled");
}

#[tokio::test]
async fn a_connection_is_not_kept_past_keep_alive_max() {
    let u = upstream_with(Some(4), Duration::from_secs(60), Duration::from_millis(30));
    let open = |lease: &mut Lease| {
        let (agent_side, fpm_side) = tokio::io::duplex(1024);
        *lease.client() = FpmClient::with_stream(u.address.clone(), u.timeout, 1 << 20, agent_side);
        fpm_side
    };
    let mut lease = u.acquire().await;
    let _fpm = open(&mut lease);
    drop(lease);
    assert_eq!(u.gate.lock().unwrap().idle.len(), 1, "young: kept");
    tokio::time::sleep(Duration::from_millis(40)).await;
    drop(u.acquire().await);
    assert_eq!(
        u.gate.lock().unwrap().idle.len(),
        0,
        "past keep_alive_max: closed"
    );
}
