//! What crash-loop protection costs per message, without RabbitMQ or FPM: the tracker's work
//! for one message (key, start record written, done record) with 8 messages in flight, as in a
//! busy pool, against the tracker turned off (`agent.poison_after = 0`).
//!
//!   cargo run --release --example poison_cost [-- MESSAGES]
//!
//! Prints CPU time (user + system, from getrusage) per message for both.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Instant;

use amqp_agent::config::Config;
use amqp_agent::poison::journal::Tracker;

const IN_FLIGHT: usize = 8;

fn cpu_us() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

fn config(dir: &Path, poison_after: u32) -> Config {
    let text = format!(
        "[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n[fpm]\naddress = \"127.0.0.1:9000\"\n\
         script_filename = \"/srv/index.php\"\n[subjects.event]\nqueue = \"poison-cost\"\n\
         [agent]\npoison_after = {poison_after}\nstate_dir = \"{}\"\n",
        dir.display()
    );
    Config::from_toml(&text, Path::new("poison_cost.toml"), |_| None).expect("valid config")
}

/// Runs `messages` through the tracker with [`IN_FLIGHT`] at a time; returns (CPU µs, wall µs)
/// per message.
async fn run(tracker: &Tracker, ids: &[String]) -> (f64, f64) {
    let (cpu, wall) = (cpu_us(), Instant::now());
    let mut flying = VecDeque::with_capacity(IN_FLIGHT);
    for id in ids {
        if flying.len() == IN_FLIGHT {
            flying.pop_front();
        }
        let key = amqp_agent::poison::key(Some(id), "rk", None, b"");
        assert!(matches!(key, std::borrow::Cow::Borrowed(_)));
        flying.push_back(tracker.begin(id, false).await);
    }
    drop(flying);
    let n = ids.len() as f64;
    ((cpu_us() - cpu) / n, wall.elapsed().as_secs_f64() * 1e6 / n)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let messages: usize = std::env::args()
        .nth(1)
        .map_or(200_000, |n| n.parse().expect("MESSAGES is a number"));
    let dir = std::env::temp_dir().join(format!("amqp-agent-poison-cost-{}", std::process::id()));
    let ids: Vec<String> = (0..messages)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let on = Tracker::open(&config(&dir, 2)).expect("journal");
    let off = Tracker::open(&config(&dir, 0)).expect("disabled");
    // Warm-up, then alternate so that machine noise hits both alike.
    run(&on, &ids[..messages / 10]).await;
    let (mut on_cpu, mut off_cpu, mut on_wall, mut off_wall) = (vec![], vec![], vec![], vec![]);
    for _ in 0..5 {
        let (c, w) = run(&on, &ids).await;
        on_cpu.push(c);
        on_wall.push(w);
        let (c, w) = run(&off, &ids).await;
        off_cpu.push(c);
        off_wall.push(w);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("messages per round: {messages}, {IN_FLIGHT} in flight, 5 rounds, medians");
    println!(
        "poison_after = 2: {:.2} µs CPU/msg ({:.2} µs wall)",
        median(&mut on_cpu),
        median(&mut on_wall)
    );
    println!(
        "poison_after = 0: {:.2} µs CPU/msg ({:.2} µs wall)",
        median(&mut off_cpu),
        median(&mut off_wall)
    );
    println!(
        "journal: {} ({} bytes now)",
        on.path().expect("on").display(),
        std::fs::metadata(on.path().expect("on")).map_or(0, |m| m.len())
    );
    on.close();
    let _ = std::fs::remove_dir_all(&dir);
}
