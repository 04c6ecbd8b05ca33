//! FastCGI replies: a fake FPM answers a real `FpmClient` request with fuzz bytes, read in
//! chunks of a fuzzed size; the reply's CGI head is then parsed and classified.
//!
//! Covers the vendored fastcgi-client's response parsing, the agent's end-of-request watcher,
//! its size caps, `outcome::parse_head`, `classify_reply` and the retry decision. Checked: no
//! panic; caps hold; and a well-formed record sequence yields exactly the stdout and stderr it
//! carried.
#![no_main]

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use amqp_agent::config::FpmAddress;
use amqp_agent::fastcgi::{FpmClient, Reply};
use amqp_agent::outcome::{self, Decision, RetryPolicy, Verdict};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of stdout and stderr the client keeps (`fastcgi.rs`).
const KEEP_STDOUT: usize = 64 * 1024;
const KEEP_STDERR: usize = 8 * 1024;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
});

#[derive(Debug, Arbitrary)]
struct Case {
    /// Bytes per read of the fake socket (0 is taken as 1).
    chunk: u16,
    /// `limits.max_response_bytes`.
    max_response: u16,
    /// The socket fails after this many bytes.
    fail_at: Option<u16>,
    reply: Reply_,
    require_ack: bool,
    attempt: u32,
    extra_queues: bool,
}

#[derive(Debug, Arbitrary)]
enum Reply_ {
    /// Any bytes at all.
    Raw(Vec<u8>),
    /// A sequence of records.
    Records(Vec<Record>),
}

#[derive(Debug, Arbitrary)]
enum Record {
    Stdout(Vec<u8>, u8),
    Stderr(Vec<u8>, u8),
    End {
        app_status: u32,
        protocol_status: u8,
        /// Content length of the record (a correct one is 8).
        len: u8,
    },
    Other {
        kind: u8,
        request_id: u16,
        content: Vec<u8>,
    },
}

/// Appends one record; returns the content written (cut to the 65,535 bytes a record holds).
fn record<'a>(
    kind: u8,
    request_id: u16,
    content: &'a [u8],
    padding: u8,
    out: &mut Vec<u8>,
) -> &'a [u8] {
    let len = u16::try_from(content.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&[1, kind]);
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[padding, 0]);
    out.extend_from_slice(&content[..usize::from(len)]);
    out.extend(std::iter::repeat_n(0, usize::from(padding)));
    &content[..usize::from(len)]
}

/// What a correct client must return for `records`, when that is certain.
enum Expected {
    Reply { stdout: Vec<u8>, stderr: Vec<u8> },
    Error,
    Unknown,
}

fn encode(records: &[Record], max_response: usize) -> (Vec<u8>, Expected) {
    let mut bytes = Vec::new();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut expected = None;
    for r in records {
        match r {
            Record::Stdout(content, padding) => {
                stdout.extend_from_slice(record(6, 1, content, *padding, &mut bytes));
            }
            Record::Stderr(content, padding) => {
                stderr.extend_from_slice(record(7, 1, content, *padding, &mut bytes));
            }
            Record::End {
                app_status,
                protocol_status,
                len,
            } => {
                let mut body = app_status.to_be_bytes().to_vec();
                body.extend_from_slice(&[*protocol_status, 0, 0, 0]);
                body.resize(usize::from(*len), 0);
                record(3, 1, &body, 0, &mut bytes);
                if expected.is_none() {
                    expected = Some(if *len >= 8 && *protocol_status == 0 {
                        Expected::Reply {
                            stdout: stdout.clone(),
                            stderr: stderr.clone(),
                        }
                    } else {
                        Expected::Error
                    });
                }
            }
            Record::Other {
                kind,
                request_id,
                content,
            } => {
                record(*kind, *request_id, content, 0, &mut bytes);
                if expected.is_none() {
                    expected = Some(Expected::Unknown);
                }
            }
        }
    }
    let expected = match expected {
        Some(Expected::Reply { stdout, stderr }) if stdout.len() + stderr.len() > max_response => {
            Expected::Error
        }
        Some(e) => e,
        None => Expected::Error,
    };
    (bytes, expected)
}

fuzz_target!(|case: Case| {
    let max_response = usize::from(case.max_response);
    let (bytes, expected) = match &case.reply {
        Reply_::Raw(bytes) => (bytes.clone(), Expected::Unknown),
        Reply_::Records(records) => encode(records, max_response),
    };
    let expected = match case.fail_at {
        Some(n) if usize::from(n) < bytes.len() => Expected::Unknown,
        _ => expected,
    };
    let fake = FakeFpm {
        reply: bytes,
        read: 0,
        chunk: usize::from(case.chunk.max(1)),
        fail_at: case.fail_at.map(usize::from),
    };
    let address = FpmAddress::Unix("/nonexistent/amqp-agent-fuzz.sock".into());
    let mut client = FpmClient::with_stream(address, Duration::from_secs(5), max_response, fake);
    let params = [("SCRIPT_FILENAME", Cow::Borrowed("/srv/app/index.php"))];
    let result = RUNTIME.block_on(client.request(&params, b"{}"));

    let verdict = match &result {
        Ok(reply) => {
            assert!(reply.size <= max_response);
            assert!(reply.stdout.len() <= KEEP_STDOUT && reply.stderr.len() <= KEEP_STDERR);
            if let Expected::Reply { stdout, stderr } = &expected {
                check_kept(reply, stdout, stderr);
            }
            assert!(!matches!(expected, Expected::Error), "{result:?}");
            classify(reply, case.require_ack)
        }
        Err(e) => {
            assert!(!matches!(expected, Expected::Reply { .. }), "{e}");
            assert!(!e.reason().is_empty());
            return;
        }
    };
    let policy = RetryPolicy {
        delays: vec![Duration::from_secs(1), Duration::from_secs(30)],
        max_attempts: 5,
        max_retry_after: Duration::from_secs(3600),
        extra_queues: case.extra_queues,
    };
    match policy.decide(&verdict, case.attempt) {
        Decision::Ack => assert_eq!(verdict, Verdict::Success),
        Decision::Retry {
            delay,
            next_attempt,
        } => {
            assert!(delay <= Duration::from_secs(3600));
            assert!(next_attempt >= case.attempt);
        }
        Decision::DeadLetter { reason } => assert!(!reason.is_empty()),
    }
});

fn check_kept(reply: &Reply, stdout: &[u8], stderr: &[u8]) {
    assert_eq!(reply.size, stdout.len() + stderr.len());
    assert_eq!(reply.stdout, stdout[..stdout.len().min(KEEP_STDOUT)]);
    assert_eq!(reply.stderr, stderr[..stderr.len().min(KEEP_STDERR)]);
}

fn classify(reply: &Reply, require_ack: bool) -> Verdict {
    let Ok(head) = outcome::parse_head(&reply.stdout) else {
        return Verdict::Permanent {
            reason: "bad_reply",
            detail: String::new(),
            status: None,
        };
    };
    assert!((100..=999).contains(&head.status));
    let verdict = outcome::classify_reply(&head, require_ack, || {
        String::from_utf8_lossy(&reply.stdout).into_owned()
    });
    if verdict == Verdict::Success {
        assert!((200..=299).contains(&head.status) && (head.acked || !require_ack));
    }
    verdict
}

/// A fake FPM: swallows the request, answers with `reply`, `chunk` bytes per read.
struct FakeFpm {
    reply: Vec<u8>,
    read: usize,
    chunk: usize,
    fail_at: Option<usize>,
}

impl AsyncRead for FakeFpm {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let end = this.fail_at.unwrap_or(usize::MAX).min(this.reply.len());
        if this.read >= end && this.fail_at.is_some_and(|f| f < this.reply.len()) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        let n = (end - this.read).min(this.chunk).min(buf.remaining());
        buf.put_slice(&this.reply[this.read..this.read + n]);
        this.read += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FakeFpm {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
