use std::path::Path;
use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
[fpm]
address = "127.0.0.1:9000"
script_filename = "/srv/app/public/index.php"
[subjects.event]
queue = "messages.event"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("test.toml"), |_| None)
}

fn error_of(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.subjects["event"].pool_size, 4);
    assert_eq!(c.retry.max_attempts, 5);
    assert_eq!(c.retry.delays.len(), 5);
    assert_eq!(c.fpm.timeout, Duration::from_secs(30));
    assert!(c.fpm.require_ack_header);
    assert_eq!(c.limits.max_body_bytes, 8 * 1024 * 1024);
    assert_eq!(c.agent.poison_after, 2);
    assert_eq!(c.agent.state_dir, Path::new("/var/lib/amqp-agent"));
}

#[test]
fn the_example_file_is_valid_once_its_placeholder_secret_is_replaced() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/amqp-agent.example.toml"
    ))
    .unwrap();
    // As shipped (and baked into the image) it is refused, naming the key.
    let e = error_of(&text);
    assert!(
        e.contains("fpm.signing_secrets[0]") && e.contains("placeholder"),
        "{e}"
    );
    let c = parse(&text.replace(
        "change-me-to-a-long-random-secret",
        "an-own-secret-0123456789",
    ))
    .unwrap();
    assert_eq!(c.subjects.len(), 2);
    // The environment override replaces it, as in `docker run -e AMQP_AGENT_SIGNING_SECRET=…`.
    Config::from_toml(&text, Path::new("t"), |name| {
        (name == ENV_SIGNING_SECRET).then(|| "an-own-secret-0123456789".to_owned())
    })
    .unwrap();
}

#[test]
fn placeholder_admin_token_is_refused() {
    let e = error_of(&format!(
        "{MINIMAL}[admin]\ntoken = \"a-long-random-admin-token\"\n"
    ));
    assert!(
        e.contains("admin.token") && e.contains("placeholder"),
        "{e}"
    );
}

#[test]
fn unknown_keys_are_named() {
    let e = error_of(&MINIMAL.replace("[fpm]", "[fpm]\ntimout = \"5s\""));
    assert!(e.contains("timout"), "{e}");
    let e = error_of(&format!(
        "{MINIMAL}\n[subjects.command]\nqueue = \"c\"\npoolsize = 3\n"
    ));
    assert!(e.contains("poolsize"), "{e}");
}

#[test]
fn bad_values_are_named() {
    let cases = [
        (MINIMAL.replace("127.0.0.1:9000", "nowhere"), "fpm.address"),
        (
            MINIMAL.replace("\"/srv/app/public/index.php\"", "\"index.php\""),
            "fpm.script_filename",
        ),
        (format!("{MINIMAL}[retry]\ndelays = []\n"), "retry.delays"),
        (
            format!("{MINIMAL}[retry]\nmax_attempts = 0\n"),
            "retry.max_attempts",
        ),
        (
            MINIMAL.replace("[subjects.event]", "[subjects.events]"),
            "subjects.events",
        ),
        (MINIMAL.replace("amqp://guest", "http://guest"), "amqp.url"),
        (
            format!("{MINIMAL}pool_size = 0\n"),
            "subjects.event.pool_size",
        ),
        (
            MINIMAL.replace("[fpm]", "[fpm]\nsigning_secrets = [\"short\"]"),
            "fpm.signing_secrets[0]",
        ),
        (
            format!("{MINIMAL}[agent]\nstate_dir = \"state\"\n"),
            "agent.state_dir",
        ),
    ];
    for (text, key) in cases {
        let e = error_of(&text);
        assert!(e.contains(key), "expected `{key}` in: {e}");
    }
    let e = error_of(&format!("{MINIMAL}[retry]\ndelays = [\"soon\"]\n"));
    assert!(
        e.contains("delays") && !e.contains("soon"),
        "named, not quoted: {e}"
    );
    let e = error_of(&MINIMAL.replace("[fpm]", "[fpm]\ntimeout = 30"));
    assert!(e.contains("timeout"), "{e}");
}

#[test]
fn secrets_come_from_env_and_files() {
    let dir = std::env::temp_dir().join(format!("amqp-agent-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secrets");
    std::fs::write(&secret_file, "from-file-0123456789\n\n").unwrap();
    let text = MINIMAL.replace(
        "[fpm]",
        &format!(
            "[fpm]\nsigning_secrets_file = \"{}\"",
            secret_file.display()
        ),
    );
    let c = Config::from_toml(&text, Path::new("t"), |name| match name {
        ENV_AMQP_URL => Some("amqp://u:p@rabbit:5672/%2f".to_owned()),
        ENV_SIGNING_SECRET => Some("env-secret-0123456789, second-secret-0123".to_owned()),
        _ => None,
    })
    .unwrap();
    assert_eq!(c.amqp_url(), "amqp://u:p@rabbit:5672/%2f");
    assert_eq!(
        c.fpm.signing_secrets,
        [
            "env-secret-0123456789",
            "second-secret-0123",
            "from-file-0123456789"
        ]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn passwords_are_redacted() {
    assert_eq!(
        redact_url("amqp://guest:secret@host:5672/%2f"),
        "amqp://guest:***@host:5672/%2f"
    );
    assert_eq!(redact_url("amqp://host"), "amqp://host");
}

#[test]
fn a_rate_limit_too_slow_for_the_prefetch_window_warns() {
    let rate = |extra: &str| {
        parse(&format!("{MINIMAL}rate_limit = \"1/s\"\n{extra}"))
            .unwrap()
            .warnings()
            .into_iter()
            .filter(|w| w.contains("rate_limit"))
            .collect::<Vec<_>>()
    };
    // Pool 4 × 8 deliveries at 1/s: 32 s.
    assert!(rate("").is_empty(), "{:?}", rate(""));
    // Pool 4 × two batches of 500 at 1/s: 4,000 s, past 30 minutes.
    let w = rate("batch_max = 500\n");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("subjects.event.rate_limit") && w[0].contains("4000 deliveries"),
        "{w:?}"
    );
    // Pool 4 × two batches of 200 at 1/s: 1,600 s, within it.
    assert!(rate("batch_max = 200\n").is_empty());
}

#[test]
fn timeout_above_consumer_timeout_warns() {
    let c = parse(&MINIMAL.replace("[fpm]", "[fpm]\ntimeout = \"45m\"")).unwrap();
    assert!(c.warnings().iter().any(|w| w.contains("consumer_timeout")));
}

#[test]
fn a_syntax_error_does_not_quote_the_password() {
    let e = error_of(&MINIMAL.replace(
        "url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"",
        "url = \"amqp://guest:s3cret@127.0.0.1:5672/%2f\" oops",
    ));
    assert!(!e.contains("s3cret"), "{e}");
    assert!(e.contains("invalid config file"), "{e}");
}

#[test]
fn admin_commands_need_a_token_or_the_loopback_opt_out() {
    let c = parse(MINIMAL).unwrap();
    assert!(!c.admin.allow_unauthenticated_commands);
    assert_eq!(
        (
            c.admin.max_connections,
            c.admin.header_timeout,
            c.admin.request_timeout
        ),
        (64, Duration::from_secs(5), Duration::from_secs(10))
    );
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("refuses every command"))
    );
    let open = parse(&format!(
        "{MINIMAL}[admin]\nallow_unauthenticated_commands = true\n"
    ))
    .unwrap();
    assert!(
        open.warnings()
            .iter()
            .any(|w| w.contains("development only"))
    );
    let token = parse(&format!("{MINIMAL}[admin]\ntoken = \"0123456789abcdef\"\n")).unwrap();
    assert!(!token.warnings().iter().any(|w| w.contains("admin")));
    let off = parse(&format!("{MINIMAL}[admin]\nlisten = \"\"\n")).unwrap();
    assert!(!off.warnings().iter().any(|w| w.contains("admin")));
}

#[test]
fn admin_settings_are_checked() {
    let cases = [
        ("token = \"short\"", "admin.token"),
        ("listen = \"0.0.0.0:9466\"", "admin.token"),
        (
            "listen = \"0.0.0.0:9466\"\ntoken = \"0123456789abcdef\"\nallow_unauthenticated_commands = true",
            "admin.allow_unauthenticated_commands",
        ),
        ("max_connections = 0", "admin.max_connections"),
        ("max_connections = 5000", "admin.max_connections"),
        ("header_timeout = \"0s\"", "admin.header_timeout"),
        ("request_timeout = \"1h\"", "admin.request_timeout"),
        (
            "trace_url = \"https://jaeger.internal/trace/\"",
            "admin.trace_url",
        ),
        (
            "trace_url = \"javascript:alert(1)//{trace_id}\"",
            "admin.trace_url",
        ),
        (
            "trace_url = \"https://j/\\\"><b>{trace_id}\"",
            "admin.trace_url",
        ),
    ];
    for (lines, key) in cases {
        let e = error_of(&format!("{MINIMAL}[admin]\n{lines}\n"));
        assert!(e.contains(key), "`{key}` not named for {lines}: {e}");
    }
    assert!(
        parse(&format!(
            "{MINIMAL}[admin]\nlisten = \"0.0.0.0:9466\"\ntoken = \"0123456789abcdef\"\n"
        ))
        .is_ok()
    );
    let traced = parse(&format!(
        "{MINIMAL}[admin]\ntrace_url = \"https://jaeger.internal/trace/{{trace_id}}?x=1\"\n"
    ))
    .unwrap();
    assert_eq!(
        super::admin::trace_link(traced.admin.trace_url.as_deref().unwrap(), "ab12"),
        "https://jaeger.internal/trace/ab12?x=1"
    );
}

#[test]
fn max_header_depth_stays_below_the_parser_cap() {
    let limits = |depth: usize| format!("{MINIMAL}[limits]\nmax_header_depth = {depth}\n");
    let cap = crate::contract::PARSER_MAX_DEPTH;
    assert_eq!(
        parse(&limits(cap - 1)).unwrap().limits.max_header_depth,
        cap - 1
    );
    let e = error_of(&limits(cap));
    assert!(
        e.contains("limits.max_header_depth") && e.contains("64"),
        "{e}"
    );
}

/// Errors name the key, never the value (it may be a secret pasted in the wrong place).
#[test]
fn errors_never_quote_a_value() {
    let secret = "s3cr3t-Value-9";
    let cases = [
        MINIMAL.replace("[fpm]\n", &format!("[fpm]\ntimeout = \"{secret}\"\n")),
        format!("{MINIMAL}[admin]\nlisten = \"{secret}\"\n"),
        format!("{MINIMAL}[telemetry]\nlog_level = \"{secret}=x=y\"\n"),
        MINIMAL.replace(
            "address = \"127.0.0.1:9000\"",
            &format!("address = [\"127.0.0.1:9{0}\", \"127.0.0.1:9{0}\"]", 123),
        ),
        format!("{MINIMAL}[limits]\nmemory_budget = \"{secret}\"\n"),
    ];
    for (i, text) in cases.iter().enumerate() {
        let e = error_of(text);
        assert!(!e.contains(secret) && !e.contains("9123"), "case {i}: {e}");
    }
}

#[test]
fn prefetch_per_worker_zero_is_refused_without_tls_too() {
    let e = error_of(&MINIMAL.replace("[amqp]\n", "[amqp]\nprefetch_per_worker = 0\n"));
    assert!(e.contains("amqp.prefetch_per_worker"), "{e}");
}

#[test]
fn max_headers_bytes_fits_one_fastcgi_params_record() {
    let limits = |n: usize| format!("{MINIMAL}[limits]\nmax_headers_bytes = {n}\n");
    assert_eq!(parse(MINIMAL).unwrap().limits.max_headers_bytes, 65_500);
    assert_eq!(
        parse(&limits(65_500)).unwrap().limits.max_headers_bytes,
        65_500
    );
    let e = error_of(&limits(65_501));
    assert!(
        e.contains("limits.max_headers_bytes") && e.contains("65500"),
        "{e}"
    );
}

fn memory_warnings(text: &str) -> Vec<String> {
    parse(text)
        .unwrap()
        .warnings()
        .into_iter()
        .filter(|w| w.contains("memory_budget"))
        .collect()
}

#[test]
fn the_memory_budget_bounds_bytes_not_the_prefetch_window() {
    // A window of 8 MiB bodies far over the budget: the gate holds the bytes (`broker::gate`),
    // so the window is not cut and nothing is warned about.
    let pools = "pool_size = 64\n";
    let tiny = format!("{MINIMAL}{pools}[limits]\nmemory_budget = \"16MiB\"\n");
    let c = parse(&tiny).unwrap();
    assert_eq!(c.limits.memory_budget, 16 << 20);
    assert_eq!(c.window(&c.subjects["event"]), 64 * 100);
    assert!(memory_warnings(&tiny).is_empty());
    assert!(memory_warnings(MINIMAL).is_empty());
}

#[test]
fn a_body_limit_over_a_subjects_share_of_the_budget_warns() {
    // One subject: its share is the whole budget.
    let fits = format!("{MINIMAL}[limits]\nmemory_budget = 8388608\n");
    assert!(memory_warnings(&fits).is_empty());
    let over = format!("{MINIMAL}[limits]\nmemory_budget = 8388607\n");
    let w = memory_warnings(&over);
    assert_eq!(w.len(), 1, "{w:?}");
    for part in [
        "8388608 bytes",
        "8388607 bytes",
        "1 subjects",
        "max_body_bytes",
    ] {
        assert!(w[0].contains(part), "`{part}` in {}", w[0]);
    }
    // Two subjects share it.
    let two = format!(
        "{MINIMAL}[subjects.command]\nqueue = \"c\"\n[limits]\nmemory_budget = \"16MiB\"\n"
    );
    assert!(memory_warnings(&two).is_empty());
    let two = two.replace("16MiB", "15MiB");
    assert!(memory_warnings(&two)[0].contains("over 2 subjects"));
}

#[test]
fn sizes_take_units() {
    let budget = |v: &str| {
        parse(&format!("{MINIMAL}[limits]\nmemory_budget = {v}\n")).map(|c| c.limits.memory_budget)
    };
    assert_eq!(budget("1048576").unwrap(), 1 << 20);
    assert_eq!(budget("\"2GiB\"").unwrap(), 2 << 30);
    assert_eq!(budget("\"512 MiB\"").unwrap(), 512 << 20);
    assert_eq!(budget("\"3GB\"").unwrap(), 3_000_000_000);
    assert_eq!(budget("\"100kb\"").unwrap(), 100_000);
    let e = budget("\"lots\"").unwrap_err().to_string();
    assert!(
        e.contains("memory_budget") && e.contains("not a size"),
        "{e}"
    );
    assert!(budget("\"5 parsecs\"").is_err());
    assert_eq!(parse(MINIMAL).unwrap().limits.memory_budget, 1 << 30);
}

#[test]
fn a_relative_state_dir_is_fine_when_crash_loop_protection_is_off() {
    let c = parse(&format!(
        "{MINIMAL}[agent]\npoison_after = 0\nstate_dir = \"state\"\n"
    ))
    .unwrap();
    assert_eq!(c.agent.poison_after, 0);
}

#[test]
fn batches_wait_for_the_receiver_by_default_and_are_bounded() {
    let c = parse(MINIMAL).unwrap();
    let s = &c.subjects["event"];
    // Not set: "auto" once the receiver says it takes batches (`batch::auto::Receiver`).
    assert_eq!(s.batch_max, BatchMax::AutoIfAccepted);
    // Its prefetch: two batches of the ceiling, as with "auto" (the memory budget bounds the
    // bodies' bytes, not the window: `broker::gate`).
    assert_eq!((s.batch_ceiling(), c.prefetch_per_worker(s)), (50, 100));
    let two = format!("{MINIMAL}[subjects.command]\nqueue = \"c\"\npool_size = 8\n");
    let c = parse(&two).unwrap();
    assert_eq!(c.prefetch_per_worker(&c.subjects["event"]), 100);
    let tight = format!("{MINIMAL}[limits]\nmemory_budget = \"64MiB\"\n");
    let c = parse(&tight).unwrap();
    assert_eq!(c.prefetch_per_worker(&c.subjects["event"]), 100);
    let limit = format!("{MINIMAL}batch_limit = 2\n");
    let c = parse(&limit).unwrap();
    assert_eq!(
        c.prefetch_per_worker(&c.subjects["event"]),
        8,
        "never below prefetch_per_worker"
    );
    let c = parse(&format!("{MINIMAL}batch_max = \"auto\"\n")).unwrap();
    assert_eq!(c.prefetch_per_worker(&c.subjects["event"]), 100);
    let c = parse(MINIMAL).unwrap();
    let s = &c.subjects["event"];
    assert_eq!(s.batch_wait, Duration::ZERO);
    let c = parse(&format!("{MINIMAL}batch_max = 1\n")).unwrap();
    let s = &c.subjects["event"];
    assert_eq!(s.batch_max, BatchMax::Fixed(1));
    assert_eq!(c.prefetch_per_worker(s), c.amqp.prefetch_per_worker);
    assert_eq!(c.limits.max_batch_bytes, 16 * 1024 * 1024);
    let c = parse(&format!("{MINIMAL}batch_max = 50\nbatch_wait = \"20ms\"\n")).unwrap();
    assert_eq!(c.subjects["event"].batch_max, BatchMax::Fixed(50));
    assert_eq!(c.subjects["event"].batch_wait, Duration::from_millis(20));
    // The per-worker prefetch holds the batch running and the next one.
    assert_eq!(c.prefetch_per_worker(&c.subjects["event"]), 100);
    let c = parse(&format!("{MINIMAL}batch_max = 2\n")).unwrap();
    assert_eq!(
        c.prefetch_per_worker(&c.subjects["event"]),
        8,
        "never below prefetch_per_worker"
    );
    let c = parse(&format!("{MINIMAL}batch_max = 1000\n")).unwrap();
    assert_eq!(c.prefetch_per_worker(&c.subjects["event"]), 2000);
    assert_eq!(
        crate::config::batch_window(1),
        1,
        "one message per request: no batch to keep full"
    );
    // "auto": up to batch_limit (default 50), within batch_latency (default 100 ms).
    let c = parse(&format!("{MINIMAL}batch_max = \"auto\"\n")).unwrap();
    let s = &c.subjects["event"];
    assert_eq!(s.batch_max, BatchMax::Auto);
    assert_eq!((s.batch_limit, s.batch_ceiling()), (50, 50));
    assert_eq!(s.batch_latency, Duration::from_millis(100));
    assert_eq!(c.prefetch_per_worker(s), 100);
    let c = parse(&format!(
        "{MINIMAL}batch_max = \"auto\"\nbatch_limit = 200\nbatch_latency = \"20ms\"\n"
    ))
    .unwrap();
    assert_eq!(c.subjects["event"].batch_ceiling(), 200);
    for (extra, key) in [
        ("batch_max = 0\n", "subjects.event.batch_max"),
        ("batch_max = 1001\n", "subjects.event.batch_max"),
        ("batch_max = -1\n", "subjects.event.batch_max"),
        ("batch_max = \"fast\"\n", "batch_max"),
        ("batch_wait = \"11s\"\n", "subjects.event.batch_wait"),
        ("batch_limit = 0\n", "subjects.event.batch_limit"),
        ("batch_latency = \"61s\"\n", "subjects.event.batch_latency"),
        (
            "batch_max = \"auto\"\nbatch_wait = \"5ms\"\n",
            "subjects.event.batch_wait",
        ),
        // Not set is "auto" too: it never waits for a batch to fill.
        ("batch_wait = \"5ms\"\n", "subjects.event.batch_wait"),
    ] {
        let e = error_of(&format!("{MINIMAL}{extra}"));
        assert!(e.contains(key), "expected `{key}` in: {e}");
    }
    let e = error_of(&format!("{MINIMAL}[limits]\nmax_batch_bytes = 0\n"));
    assert!(e.contains("limits.max_batch_bytes"), "{e}");
}

#[test]
fn enumerated_values_are_checked_when_parsed_and_name_their_key() {
    let cases = [
        (
            format!("{MINIMAL}exchange = \"x\"\nexchange_type = \"topik\"\n"),
            "subjects.event.exchange_type",
        ),
        (
            format!("{MINIMAL}[telemetry]\nlog_format = \"xml\"\n"),
            "telemetry.log_format",
        ),
        (
            format!("{MINIMAL}[telemetry]\notlp_protocol = \"http\"\n"),
            "telemetry.otlp_protocol",
        ),
        (
            format!("{MINIMAL}[telemetry]\nsampler = \"sometimes\"\n"),
            "telemetry.sampler",
        ),
        (MINIMAL.replace("127.0.0.1:9000", "unix:"), "fpm.address"),
    ];
    for (text, key) in cases {
        let e = error_of(&text);
        assert!(e.contains(key), "expected `{key}` in: {e}");
    }
    let c = parse(&format!(
        "{MINIMAL}exchange = \"x\"\nexchange_type = \"fanout\"\n[telemetry]\nlog_format = \"json\"\notlp_protocol = \"http/protobuf\"\nsampler = \"traceidratio\"\n"
    ))
    .unwrap();
    assert_eq!(c.subjects["event"].exchange_type, ExchangeType::Fanout);
    assert_eq!(c.telemetry.log_format, Some(LogFormat::Json));
    assert_eq!(c.telemetry.otlp_protocol, Some(OtlpProtocol::HttpProtobuf));
    assert_eq!(c.telemetry.sampler, Some(SamplerKind::TraceIdRatio));
    assert_eq!(
        parse(MINIMAL).unwrap().fpm.address.0,
        [FpmAddress::Tcp("127.0.0.1:9000".to_owned())]
    );
    assert_eq!(
        parse(&MINIMAL.replace("127.0.0.1:9000", "unix:/run/php/fpm.sock"))
            .unwrap()
            .fpm
            .address
            .0,
        [FpmAddress::Unix("/run/php/fpm.sock".into())]
    );
}

#[test]
fn fpm_address_is_one_string_or_a_list_of_distinct_addresses() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.fpm.address.0, [FpmAddress::Tcp("127.0.0.1:9000".into())]);
    assert_eq!(c.fpm.keep_alive_idle, Duration::from_millis(100));
    assert_eq!(c.fpm.keep_alive_max, Duration::from_secs(1));
    let list = MINIMAL.replace(
        "address = \"127.0.0.1:9000\"",
        "address = [\"10.0.0.1:9000\", \"unix:/run/php/fpm.sock\"]\nkeep_alive_idle = \"0s\"",
    );
    let c = parse(&list).unwrap();
    assert_eq!(
        c.fpm_addresses(),
        [
            FpmAddress::Tcp("10.0.0.1:9000".into()),
            FpmAddress::Unix("/run/php/fpm.sock".into())
        ]
    );
    assert_eq!(
        c.fpm.address.to_string(),
        "10.0.0.1:9000, unix:/run/php/fpm.sock"
    );
    assert_eq!(c.fpm.keep_alive_idle, Duration::ZERO);
    for (address, why) in [
        ("[]", "at least one"),
        (
            "[\"127.0.0.1:9000\", \"127.0.0.1:9000\"]",
            "entry 2 repeats",
        ),
        ("[\"127.0.0.1:9000\", \"nowhere\"]", "neither"),
        ("42", "list of them"),
    ] {
        let text = MINIMAL.replace("\"127.0.0.1:9000\"", address);
        let error = error_of(&text);
        assert!(
            error.contains("fpm.address") && error.contains(why),
            "{address}: {error}"
        );
    }
}

#[test]
fn no_known_fpm_capacity_is_a_warning() {
    let c = parse(MINIMAL).unwrap();
    assert!(c.warnings().iter().any(|w| w.contains("pm.max_children")));
    let known = MINIMAL.replace("[subjects.event]", "max_children = 8\n[subjects.event]");
    assert!(
        !parse(&known)
            .unwrap()
            .warnings()
            .iter()
            .any(|w| w.contains("pm.max_children"))
    );
}

/// The demo configs' secrets are public (issue #22, hole 6): a copied demo config must not run
/// with them. `scripts/demo` and the compose stacks pass generated ones in the environment.
#[test]
fn the_demo_configs_are_refused_with_their_public_secrets() {
    for file in [
        "config/demo.toml",
        "deploy/amqp-agent.toml",
        "deploy/cluster/amqp-agent.toml",
    ] {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let e = error_of(&text);
        assert!(e.contains("placeholder"), "{file}: {e}");
        // With secrets of its own from the environment, as the demo passes them, it loads.
        Config::from_toml(&text, Path::new(file), |name| match name {
            ENV_SIGNING_SECRET => Some("a-generated-secret-0123456789".to_owned()),
            ENV_ADMIN_TOKEN => Some("a-generated-admin-token-0123456789".to_owned()),
            _ => None,
        })
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

/// The Kubernetes example's prefetched bodies fit its container's memory limit: every subject's
/// share of `limits.memory_budget` (`broker::gate` holds the bodies within it), plus one message
/// of RabbitMQ's default `max_message_size` (128 MiB), within the agent container's
/// `limits.memory` in deployment.yaml.
#[test]
fn the_kubernetes_example_holds_its_bodies_within_the_containers_memory_limit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text =
        std::fs::read_to_string(root.join("deploy/kubernetes/base/amqp-agent.toml")).unwrap();
    let c = Config::from_toml(&text, Path::new("amqp-agent.toml"), |name| match name {
        "AMQP_AGENT_AMQP_URL" => Some("amqp://agent:secret@rabbitmq:5672/%2f".to_owned()),
        ENV_SIGNING_SECRET => Some("a-generated-secret-0123456789".to_owned()),
        ENV_ADMIN_TOKEN => Some("a-generated-admin-token-0123456789".to_owned()),
        _ => None,
    })
    .unwrap();
    let bodies = c.limits.memory_budget + (128 << 20);
    // The agent container's limit: the `memory:` line after the comment on prefetched bodies.
    let deployment =
        std::fs::read_to_string(root.join("deploy/kubernetes/base/deployment.yaml")).unwrap();
    let after = &deployment[deployment.find("prefetched bodies").expect("the comment")..];
    let limit_mi: u64 = after
        .lines()
        .find_map(|l| l.trim().strip_prefix("memory: "))
        .and_then(|v| v.strip_suffix("Mi"))
        .expect("memory: <n>Mi")
        .parse()
        .unwrap();
    assert!(
        bodies <= limit_mi << 20,
        "memory_budget {} MiB + 128 MiB, over the container's {limit_mi}Mi",
        c.limits.memory_budget >> 20
    );
}

/// The configuration reference (`docs/configuration.md`) lists every key of every section, and
/// no key the sections do not have: the fields are read from the structs' sources, the keys from
/// the first column of each section's table (`tls.*` rows belong to `[amqp.tls]`).
#[test]
fn the_configuration_reference_lists_every_key_and_nothing_else() {
    let docs = include_str!("../../docs/configuration.md");
    let sources = [
        ("amqp", include_str!("amqp.rs"), "AmqpConfig", ""),
        ("amqp", include_str!("amqp.rs"), "TlsConfig", "tls."),
        ("fpm", include_str!("fpm.rs"), "FpmConfig", ""),
        ("retry", include_str!("limits.rs"), "RetryConfig", ""),
        (
            "subjects.<name>",
            include_str!("subject.rs"),
            "SubjectConfig",
            "",
        ),
        ("limits", include_str!("limits.rs"), "LimitsConfig", ""),
        ("agent", include_str!("agent.rs"), "AgentConfig", ""),
        (
            "telemetry",
            include_str!("telemetry.rs"),
            "TelemetryConfig",
            "",
        ),
        ("admin", include_str!("admin.rs"), "AdminConfig", ""),
    ];
    let fields = |src: &str, name: &str| -> Vec<String> {
        let start = src
            .find(&format!("pub struct {name} {{"))
            .unwrap_or_else(|| panic!("struct {name}"));
        let body = &src[start..];
        let body = &body[..body.find("\n}").expect("end of struct")];
        body.lines()
            .filter_map(|l| l.strip_prefix("    pub "))
            .filter_map(|l| l.split_once(':').map(|(f, _)| f.to_owned()))
            .collect()
    };
    // The keys of a section's table: every `code` span of the first column.
    let keys = |section: &str| -> Vec<String> {
        let head = format!("## `[{section}]`");
        let start = docs
            .find(&head)
            .unwrap_or_else(|| panic!("no section {head}"));
        let text = &docs[start + head.len()..];
        let text = &text[..text.find("\n## ").unwrap_or(text.len())];
        text.lines()
            .filter(|l| l.starts_with("| `"))
            .flat_map(|l| {
                let first = l[1..].split(" | ").next().unwrap_or("");
                first
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut documented_by_section: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut fields_by_section: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (section, src, name, prefix) in sources {
        documented_by_section
            .entry(section)
            .or_insert_with(|| keys(section));
        let entry = fields_by_section.entry(section).or_default();
        for f in fields(src, name) {
            // `amqp.tls` is a table of its own, documented by its keys.
            if !(name == "AmqpConfig" && f == "tls") {
                entry.push(format!("{prefix}{f}"));
            }
        }
    }
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    for (section, fields) in &fields_by_section {
        let documented = &documented_by_section[section];
        assert!(!documented.is_empty(), "[{section}] has no table");
        missing.extend(
            fields
                .iter()
                .filter(|f| !documented.contains(f))
                .map(|f| format!("{section}.{f}")),
        );
        stale.extend(
            documented
                .iter()
                .filter(|k| !fields.contains(k))
                .map(|k| format!("{section}.{k}")),
        );
    }
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "in docs/configuration.md but not a key: {stale:?}"
    );
}

#[test]
fn bounds_hold_without_a_listener_and_for_the_largest_pool() {
    let e = error_of(&format!("{MINIMAL}max_pool_size = 1025\n"));
    assert!(e.contains("subjects.event.max_pool_size"), "{e}");
    let e = error_of(&format!(
        "{MINIMAL}[admin]\nlisten = \"\"\ntoken = \"short\"\n"
    ));
    assert!(e.contains("admin.token"), "{e}");
    let e = error_of(&format!(
        "{MINIMAL}[admin]\nfleet = true\nfleet_secret = \"short\"\n"
    ));
    assert!(e.contains("admin.fleet_secret"), "{e}");
    let e = error_of(&format!("{MINIMAL}[admin]\nfleet_interval = \"61s\"\n"));
    assert!(e.contains("admin.fleet_interval"), "{e}");
}
