//! deploy/prometheus and deploy/grafana against the real agent: promtool's unit tests pass, every
//! metric the rules and the dashboard name is in a live `/metrics`, and an alert fires and
//! resolves in a real Prometheus (Debian's `prometheus` package) scraping a running agent.
//!
//! Needs `promtool` and `prometheus` on PATH (scripts/test installs Debian's package).

use crate::common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestCtx;
use common::procs::{AgentProcess, PrivateFpm, TcpProxy};
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn rules_file() -> PathBuf {
    Path::new(ROOT).join("deploy/prometheus/amqp-agent.rules.yml")
}

fn dashboard_file() -> PathBuf {
    Path::new(ROOT).join("deploy/grafana/amqp-agent.json")
}

/// `name` on PATH, or a panic that says how to get it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: install Debian's prometheus package (scripts/test does)")
        })
}

/// A plain HTTP/1.0 GET (no chunked encoding, the body ends at close): (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Polls `cond` every 200 ms until it returns `Some`, at most `timeout`.
fn wait_for<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the agent's `/metrics` on `port` satisfies `cond`; on timeout, fails with them.
async fn wait_metrics(port: u16, what: &str, cond: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let text = common::metrics(port).await.unwrap_or_default();
        if cond(&text) {
            return;
        }
        if Instant::now() > deadline {
            let shown: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
                .collect();
            panic!(
                "timed out after {:?} waiting for {what}; /metrics:\n{}",
                common::WAIT,
                shown.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Tokens of `text` that name an amqp-agent series: `amqp_agent_…` metric names and recording
/// rules (`level:amqp_agent_…:operation`).
fn agent_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.contains("amqp_agent_"))
        .map(|t| t.trim_matches(':').to_owned())
        .collect()
}

/// The series names in a Prometheus text exposition.
fn exported_names(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let check = promtool(&["check", "rules", "deploy/prometheus/amqp-agent.rules.yml"]);
    assert!(check.contains("SUCCESS"), "{check}");
    let test = promtool(&[
        "test",
        "rules",
        "deploy/prometheus/tests/amqp-agent.rules.test.yml",
    ]);
    assert!(test.contains("SUCCESS"), "{test}");
    // Every alert of the file has a section in docs/alerting.md (its runbook annotation).
    let rules = std::fs::read_to_string(rules_file()).unwrap();
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/alerting.md")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in alerts {
        assert!(
            doc.contains(&format!("### {alert}")),
            "docs/alerting.md has no section for {alert}"
        );
        assert!(
            rules.contains(&format!(
                "runbook: docs/alerting.md#{}",
                alert.to_lowercase()
            )),
            "{alert} has no runbook annotation"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_and_the_dashboard_name_only_metrics_a_live_agent_exports() {
    let mut ctx = TestCtx::new("alert-names").await;
    let fpm = PrivateFpm::start_with("alert-names", 4, Some("/fpm-status"));
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    ctx.fpm_port = fpm.port;
    ctx.fpm_extra =
        "status_path = \"/fpm-status\"\nstatus_interval = \"200ms\"\nslow_after = \"300ms\"\n"
            .to_owned();
    ctx.amqp_url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let _agent = AgentProcess::start(&ctx.write_config(), &log);
    ctx.wait_ready().await;

    // Make the labelled families appear: a success, a retry, a dead letter (3 attempts of a
    // 500), a slow request; then a broken broker link for the reconnect counters.
    ctx.publish_json("event", "ok", "ok").await;
    ctx.publish_json("event", "retried", "fail-until:2").await;
    ctx.publish_json("event", "dead", "status:500").await;
    ctx.publish_json("command", "slow", "sleep:1500").await;
    let port = ctx.admin_port;
    wait_metrics(port, "a retry, a dead letter and a slow request", |m| {
        common::metric_sum(m, "amqp_agent_messages_dead_lettered_total", &[]) >= 1.0
            && common::metric_sum(m, "amqp_agent_messages_retried_total", &[]) >= 3.0
            && common::metric_sum(m, "amqp_agent_fpm_slow_messages_total", &[]) >= 1.0
    })
    .await;
    proxy.cut();
    wait_metrics(port, "subjects disconnected", |m| {
        common::metric_sum(m, "amqp_agent_consuming", &[]) == 0.0
    })
    .await;
    proxy.restore();
    wait_metrics(port, "both subjects reconnected", |m| {
        common::metric_sum(m, "amqp_agent_reconnects_total", &[]) >= 2.0
            && common::metric_sum(m, "amqp_agent_consuming", &[]) == 2.0
    })
    .await;
    let live = common::metrics(port).await.expect("/metrics");
    let exported = exported_names(&live);

    let rules = std::fs::read_to_string(rules_file()).unwrap();
    let recorded: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(str::to_owned)
        .collect();
    let dashboard = std::fs::read_to_string(dashboard_file()).unwrap();
    let doc: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut queries = 0;
    for panel in doc["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert!(
                target["expr"].as_str().is_some_and(
                    |e| e.contains("amqp_agent_") || e.contains("up{job=\"amqp-agent\"")
                ),
                "panel {}: {target}",
                panel["title"]
            );
            queries += 1;
        }
    }

    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for (file, text) in [("rules", &rules), ("dashboard", &dashboard)] {
        for name in agent_names(text) {
            if name.contains(':') {
                if !recorded.contains(&name) {
                    missing.push(format!("{file}: recording rule {name} is not defined"));
                }
            } else if exported.contains(&name) {
                used.insert(name);
            } else {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in the live /metrics:\n{}\n\nexported:\n{}",
        missing.join("\n"),
        exported.iter().cloned().collect::<Vec<_>>().join("\n")
    );
    eprintln!(
        "{} metric names used by the rules and {queries} dashboard queries, all in the live /metrics ({} series names)",
        used.len(),
        exported.len()
    );
    assert!(used.len() >= 25, "{used:?}");
}

/// A Prometheus server of the test's own: port, data directory, the rules of deploy/prometheus.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, target_port: u16) -> Self {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let port = common::free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: amqp-agent\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n",
                rules = rules_file().display()
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus starts");
        let me = Self { child, port, log };
        wait_for(Duration::from_secs(60), "Prometheus /-/ready", || {
            matches!(get(port, "/-/ready"), Some((200, _))).then_some(())
        });
        me
    }

    fn api(&self, path: &str) -> Value {
        let (status, body) = get(self.port, path).unwrap_or_else(|| {
            panic!(
                "no answer from Prometheus: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        });
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The state (`pending`, `firing`) of the active alert `name`, `None` when it is inactive.
    fn alert_state(&self, name: &str) -> Option<String> {
        let doc = self.api("/api/v1/alerts");
        doc["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap_or_default().to_owned())
    }

    /// The value of an instant query that returns one sample.
    fn query_one(&self, query: &str) -> Option<f64> {
        let doc = self.api(&format!("/api/v1/query?query={query}"));
        doc["data"]["result"].as_array()?.first()?["value"][1]
            .as_str()?
            .parse()
            .ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_fpm_fires_the_breaker_alert_in_a_real_prometheus_and_it_resolves() {
    let mut ctx = TestCtx::new("alert-e2e").await;
    let mut fpm = PrivateFpm::start_with("alert-e2e", 2, None);
    ctx.fpm_port = fpm.port;
    ctx.pool_size = 1;
    let log = common::fpm().dir.join(format!("{}.log", ctx.id));
    let _agent = AgentProcess::start(&ctx.write_config(), &log);
    ctx.wait_ready().await;
    let prom = Prometheus::start(
        &common::fpm().dir.join(format!("prometheus-{}", ctx.id)),
        ctx.admin_port,
    );
    let alert = "AmqpAgentFpmUpstreamDown";
    wait_for(
        Duration::from_secs(60),
        "Prometheus to scrape the agent",
        || (prom.query_one("amqp_agent_fpm_upstream_up") == Some(1.0)).then_some(()),
    );
    assert_eq!(prom.alert_state(alert), None);

    // FPM stops; a message makes the agent try it, the breaker opens.
    let started = Instant::now();
    fpm.down();
    ctx.publish_json("event", "while-down", "ok").await;
    wait_for(Duration::from_secs(60), "the breaker to open", || {
        (prom.query_one("amqp_agent_fpm_upstream_up") == Some(0.0)).then_some(())
    });
    let opened = started.elapsed();
    wait_for(Duration::from_secs(60), "the alert to be pending", || {
        prom.alert_state(alert).filter(|s| s == "pending")
    });
    // `for: 1m` in the rule: firing a minute after it turned pending.
    wait_for(Duration::from_secs(150), "the alert to fire", || {
        prom.alert_state(alert).filter(|s| s == "firing")
    });
    let fired = started.elapsed();
    let firing = prom.api("/api/v1/alerts");
    let labels = &firing["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == alert)
        .unwrap()["labels"];
    assert_eq!(labels["severity"], "critical", "{labels}");
    assert_eq!(
        labels["upstream"],
        format!("127.0.0.1:{}", fpm.port),
        "{labels}"
    );

    // FPM back: the breaker closes, the message is handled, the alert resolves.
    let restarted = Instant::now();
    fpm.up();
    wait_for(Duration::from_secs(90), "the alert to resolve", || {
        prom.alert_state(alert).is_none().then_some(())
    });
    let resolved = restarted.elapsed();
    ctx.wait_records(1, common::WAIT).await;
    let rules = prom.api("/api/v1/rules?type=alert");
    let rule = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .find(|r| r["name"] == alert)
        .unwrap();
    assert_eq!(rule["state"], "inactive", "{rule}");
    assert_eq!(rule["health"], "ok", "{rule}");
    eprintln!(
        "{alert}: breaker open {:.1}s after FPM stopped, firing after {:.1}s; resolved {:.1}s after FPM restarted",
        opened.as_secs_f64(),
        fired.as_secs_f64(),
        resolved.as_secs_f64()
    );
}
