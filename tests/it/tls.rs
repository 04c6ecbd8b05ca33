//! `amqps://` with a private CA and a client certificate, against a RabbitMQ node of the test's
//! own with a TLS listener that requires peer certificates. A wrong CA is refused clearly.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cluster::Cluster;
use common::procs::AgentProcess;
use common::{TestCtx, free_port, set_key};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for `localhost` (not for 127.0.0.1) and a client certificate.
fn make_pki(dir: &Path, prefix: &str) {
    let p = |s: &str| format!("{prefix}{s}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=amqp-agent test CA",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    for (name, cn, ext) in [
        (
            "server",
            "localhost",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "amqp-agent", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(p(&format!("{name}.ext"))), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &p(&format!("{name}.key")),
                "-out",
                &p(&format!("{name}.csr")),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &p(&format!("{name}.csr")),
                "-CA",
                &p("ca.pem"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &p(&format!("{name}.pem")),
                "-extfile",
                &p(&format!("{name}.ext")),
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_consumes_over_tls_with_a_client_certificate_and_refuses_a_wrong_ca() {
    let ctx = TestCtx::new("tls").await;
    let pki = common::fpm().dir.join(format!("pki-{}", ctx.id));
    std::fs::create_dir_all(&pki).unwrap();
    make_pki(&pki, "");
    make_pki(&pki, "other-");
    // The node (user rabbitmq) reads its certificate and key.
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&pki)
        .status()
        .unwrap();
    let tls_port = free_port();
    let d = pki.display().to_string();
    let node = Cluster::start_with(1, "i13t", |_| {
        format!(
            "listeners.ssl.local = 127.0.0.1:{tls_port}\nssl_options.cacertfile = {d}/ca.pem\n\
             ssl_options.certfile = {d}/server.pem\nssl_options.keyfile = {d}/server.key\n\
             ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n"
        )
    });
    // The URL names 127.0.0.1, which the certificate does not: `server_name` says what to verify.
    let url = format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f");
    let toml = |ca: &str| {
        ctx.toml_with(|doc| {
            set_key(doc, "amqp.url", url.as_str());
            set_key(doc, "amqp.tls.server_name", "localhost");
            set_key(doc, "amqp.tls.ca_file", format!("{d}/{ca}"));
            set_key(doc, "amqp.tls.cert_file", format!("{d}/client.pem"));
            set_key(doc, "amqp.tls.key_file", format!("{d}/client.key"));
        })
    };
    // A wrong CA: the handshake is refused, and the log says why.
    let wrong = pki.join("wrong.toml");
    std::fs::write(&wrong, toml("other-ca.pem")).unwrap();
    let agent = AgentProcess::start(&wrong, &pki.join("wrong.log"));
    // A second start of a consumer follows a failed first one.
    ctx.wait_status("a failed connection", |s| {
        common::any_subject(s, |s| s["consumer_starts"].as_u64() >= Some(2))
    })
    .await;
    let text = agent.log_text();
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "{text}"
    );
    drop(agent);

    // The right CA and a client certificate: the agent consumes over TLS.
    let right = pki.join("right.toml");
    std::fs::write(&right, toml("ca.pem")).unwrap();
    let agent = AgentProcess::start(&right, &pki.join("right.log"));
    ctx.wait_ready().await;
    let publisher = lapin::Connection::connect(&node.nodes[0].url(), Default::default())
        .await
        .unwrap();
    let channel = publisher.create_channel().await.unwrap();
    let body = serde_json::json!({"id": "tls-1", "behave": "ok"}).to_string();
    channel
        .basic_publish(
            "".into(),
            ctx.queue("event").as_str().into(),
            Default::default(),
            body.as_bytes(),
            lapin::BasicProperties::default().with_message_id("tls-1".into()),
        )
        .await
        .unwrap();
    let records = ctx.wait_records(1, Duration::from_secs(60)).await;
    assert_eq!(records[0]["json_id"], "tls-1");
    // The broker sees a TLS connection with the client certificate's subject.
    let (_, conns) = common::cluster::ctl(
        &node.nodes[0].name,
        &[
            "list_connections",
            "-q",
            "--no-table-headers",
            "ssl",
            "peer_cert_subject",
        ],
    );
    assert!(
        conns.contains("true") && conns.contains("CN=amqp-agent"),
        "{conns}"
    );
    drop(agent);
}
