//! The FastCGI side: one keep-alive connection to PHP-FPM per client (the clients are leased
//! per request by `crate::upstreams`).
//!
//! Invariant: this is the only module that knows FastCGI. Every request is bounded by a timeout
//! and by a reply-size cap, and a connection that saw any error or timeout is dropped, never
//! reused (fastcgi-client has no multiplexing, so a half-read reply would poison the next one),
//! and dropped with a reset when its request was given up midway (PHP stops at its next write).
//!
//! Over 400 lines on purpose: the client (`request`, `request_patient`, `status_page`), the
//! connection types it wraps (`Watched`, the buffered stream) and `probe` share private types
//! and one error model, and the request path reads best in one place. Its unit tests are inline
//! (`mod tests` at the end).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fastcgi_client::conn::KeepAlive;
use fastcgi_client::io::TokioCompat;
use fastcgi_client::response::Content;
use fastcgi_client::{Client, ClientError, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::FpmAddress;

/// Bytes of stdout kept for parsing the head and quoting an excerpt; the rest is counted only.
const KEEP_STDOUT: usize = 64 * 1024;
/// Bytes of stderr kept for the last-error excerpt.
const KEEP_STDERR: usize = 8 * 1024;

/// Why a request produced no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum FpmError {
    /// Could not connect: FPM is down or refusing. The request never reached PHP.
    #[error("cannot connect to FPM at {address}: {source}")]
    Connect {
        /// Where we tried.
        address: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The connection broke before the reply was complete.
    #[error("FPM connection lost: {0}")]
    Io(#[source] std::io::Error),
    /// FPM closed the connection without an end-of-request record.
    #[error("FPM reply truncated (no end-of-request record) after {0} bytes")]
    Truncated(usize),
    /// The reply broke the FastCGI protocol or FPM refused the request.
    #[error("malformed FastCGI reply: {0}")]
    Protocol(String),
    /// The reply was larger than `limits.max_response_bytes`.
    #[error("FPM reply exceeds limits.max_response_bytes ({0})")]
    TooLarge(usize),
    /// No complete reply within `fpm.timeout`.
    #[error("FPM request timed out after {0:?}")]
    Timeout(Duration),
}

impl FpmError {
    /// Short machine-readable reason.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "fpm_unavailable",
            Self::Io(_) => "fpm_connection_lost",
            Self::Truncated(_) => "fpm_truncated_reply",
            Self::Protocol(_) => "fpm_protocol_error",
            Self::TooLarge(_) => "fpm_reply_too_large",
            Self::Timeout(_) => "timeout",
        }
    }

    /// True when the request certainly never reached PHP.
    #[must_use]
    pub(crate) fn unreached(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }

    /// True when FPM reset the connection (RST): the kernel then drops reply bytes that had
    /// arrived but were not read yet, so the reply read so far may be missing its tail (a
    /// killed child whose socket still held unread input resets instead of closing).
    #[must_use]
    pub(crate) fn reply_may_be_cut(&self) -> bool {
        matches!(self, Self::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// A complete FastCGI reply (possibly with stdout/stderr cut to what is kept).
#[derive(Debug, Default)]
pub struct Reply {
    /// The first bytes of stdout: CGI head and the start of the body.
    pub stdout: Vec<u8>,
    /// The first bytes of stderr.
    pub stderr: Vec<u8>,
    /// Total bytes of stdout + stderr received.
    pub size: usize,
}

type Stream = Pin<Box<dyn Io>>;
trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// A PHP-FPM endpoint and, once used, a kept-alive connection to it.
pub struct FpmClient {
    address: FpmAddress,
    timeout: Duration,
    max_response: usize,
    /// Bytes of stdout kept in [`Reply::stdout`].
    keep_stdout: usize,
    conn: Option<Connection>,
    /// Reply bytes read on any connection of this client: a request that read none at its
    /// deadline may still wait in FPM's listen backlog (see [`FpmClient::request_patient`]).
    received: Arc<AtomicU64>,
    /// A request started and did not finish: its future was dropped midway (a worker killed),
    /// so the connection may hold half a request or reply and must not be reused.
    in_request: bool,
}

struct Connection {
    client: Client<TokioCompat<Watched>, KeepAlive>,
    /// The socket, to see whether FPM closed it before it is used again (it lives as long as
    /// `client`, which owns it); `None` for a stream given by a test.
    fd: Option<std::os::fd::RawFd>,
    ends: Arc<AtomicU64>,
    opened: Instant,
}

impl FpmClient {
    /// A client for `address`; it connects lazily.
    #[must_use]
    pub fn new(address: FpmAddress, timeout: Duration, max_response: usize) -> Self {
        Self {
            address,
            timeout,
            max_response,
            keep_stdout: KEEP_STDOUT,
            conn: None,
            received: Arc::default(),
            in_request: false,
        }
    }

    /// Closes the kept-alive connection, if any. php-fpm pins a child to a connection until the
    /// client closes it, so a connection used now and then must not stay open.
    pub(crate) fn close(&mut self) {
        if self.in_request {
            self.abandon();
        }
        self.conn = None;
        self.in_request = false;
    }

    /// Drops the connection of a request given up midway (a timeout, an error, a worker
    /// stopped) with a reset (RST) instead of a FIN, so that PHP's next write to it fails at
    /// once and PHP stops there (an FPM child stops a script at its first failed write).
    ///
    /// Why: after a FIN, PHP's first write still succeeds (only the RST it draws makes the
    /// next one fail), so a batch that PHP goes on running after we gave up (an entry past
    /// `fpm.timeout`) ran one more entry before it noticed: the packages write an entry's
    /// outcome line and the next entry's `start` line in one write (docs/batches.md), and that
    /// next entry, which we have already returned to its queue, was then handled twice. After
    /// a reset nothing more runs. Nothing is lost by it: we read nothing more from a request we
    /// gave up.
    fn abandon(&mut self) {
        if let Some(fd) = self.conn.as_ref().and_then(|c| c.fd) {
            reset_on_close(fd);
        }
        self.conn = None;
    }

    /// True while a kept-alive connection is open (and so pins an FPM child), younger than
    /// `max_age` and fit for the next request; one whose request was abandoned midway, or older,
    /// is closed here.
    pub(crate) fn reusable(&mut self, max_age: Duration) -> bool {
        if self.in_request
            || self
                .conn
                .as_ref()
                .is_some_and(|c| c.opened.elapsed() >= max_age)
        {
            self.close();
        }
        self.conn.is_some()
    }

    /// Reads FPM's status page (the pool's `pm.status_path`) as JSON with the per-process list
    /// (`?json&full`), within `timeout` and `max_bytes` (kept whole) instead of the client's own
    /// bounds. The reply is FPM's (CGI head and JSON body); the caller parses it.
    ///
    /// # Errors
    /// [`FpmError`], as [`FpmClient::request`].
    pub async fn status_page(
        &mut self,
        path: &str,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Reply, FpmError> {
        // The page's limits go with this request only: nothing of the client's own is changed,
        // so a status read cancelled mid-way (a reload aborts the reader) leaves the pooled
        // client with the message limits it had.
        let limits = Limits {
            timeout,
            max_response: max_bytes,
            keep_stdout: max_bytes,
        };
        const QUERY: &str = "json&full";
        let params = [
            ("GATEWAY_INTERFACE", "FastCGI/1.0".into()),
            ("SERVER_SOFTWARE", "amqp-agent".into()),
            ("REQUEST_METHOD", "GET".into()),
            ("SCRIPT_FILENAME", path.into()),
            ("SCRIPT_NAME", path.into()),
            ("REQUEST_URI", format!("{path}?{QUERY}").into()),
            ("QUERY_STRING", QUERY.into()),
            ("SERVER_PROTOCOL", "HTTP/1.1".into()),
            ("CONTENT_LENGTH", "0".into()),
        ];
        self.send(limits, &params, b"", &|| false, &mut |_| Ok(()))
            .await
    }

    /// A client whose kept-alive connection is `stream`, already open: a fake FPM for tests and
    /// the fuzz targets (`fuzz/`). Once `stream` fails it connects to `address` like [`Self::new`].
    #[must_use]
    pub fn with_stream(
        address: FpmAddress,
        timeout: Duration,
        max_response: usize,
        stream: impl AsyncRead + AsyncWrite + Send + 'static,
    ) -> Self {
        let ends = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let watched = Watched::new(Box::pin(buffered(stream)), ends.clone(), received.clone());
        let mut client = Self::new(address, timeout, max_response);
        client.conn = Some(Connection {
            client: Client::new_keep_alive_tokio(watched),
            fd: None,
            ends,
            opened: Instant::now(),
        });
        client.received = received;
        client
    }

    /// Sends one request and reads the whole reply, within the timeout.
    ///
    /// A kept-alive connection that FPM closed while idle (restart, `pm.max_requests`) is
    /// found before the request is sent, and replaced; a request is never sent twice.
    ///
    /// # Errors
    /// [`FpmError`]; the connection is dropped in every error case.
    pub async fn request(
        &mut self,
        params: &[(&'static str, std::borrow::Cow<'_, str>)],
        body: &[u8],
    ) -> Result<Reply, FpmError> {
        self.request_patient(params, body, &|| false).await
    }

    /// [`FpmClient::request`], except that a request which has read no reply byte at its
    /// deadline, while `queued()` says FPM's listen backlog is not empty, gets one more
    /// `timeout`: it most likely waits for a child and has not run, and giving up would have it
    /// retried and then run twice.
    ///
    /// # Errors
    /// As [`FpmClient::request`].
    pub(crate) async fn request_patient(
        &mut self,
        params: &[(&'static str, std::borrow::Cow<'_, str>)],
        body: &[u8],
        queued: &(dyn Fn() -> bool + Sync),
    ) -> Result<Reply, FpmError> {
        self.request_streaming(params, body, queued, &mut |_| Ok(()))
            .await
    }

    /// [`FpmClient::request_patient`], handing each stdout record to `on_stdout` as it arrives
    /// (a batch's outcome lines). An `Err` from `on_stdout` abandons the request: the
    /// connection is dropped and the error is [`FpmError::Protocol`]. The timeout covers the
    /// whole request.
    ///
    /// # Errors
    /// As [`FpmClient::request`].
    pub async fn request_streaming(
        &mut self,
        params: &[(&'static str, std::borrow::Cow<'_, str>)],
        body: &[u8],
        queued: &(dyn Fn() -> bool + Sync),
        on_stdout: &mut (dyn FnMut(&[u8]) -> Result<(), String> + Send),
    ) -> Result<Reply, FpmError> {
        let limits = Limits {
            timeout: self.timeout,
            max_response: self.max_response,
            keep_stdout: self.keep_stdout,
        };
        self.send(limits, params, body, queued, on_stdout).await
    }

    async fn send(
        &mut self,
        limits: Limits,
        params: &[(&'static str, std::borrow::Cow<'_, str>)],
        body: &[u8],
        queued: &(dyn Fn() -> bool + Sync),
        on_stdout: &mut (dyn FnMut(&[u8]) -> Result<(), String> + Send),
    ) -> Result<Reply, FpmError> {
        let _in_flight = crate::wakeups::InFlight::new();
        self.in_request = true;
        let received = self.received.clone();
        let before = received.load(Ordering::Acquire);
        let timeout = limits.timeout;
        let mut deadline = Instant::now() + timeout;
        let mut extended = false;
        let result = {
            let request = self.request_inner(limits, params, body, on_stdout);
            tokio::pin!(request);
            loop {
                match tokio::time::timeout_at(deadline.into(), &mut request).await {
                    Ok(result) => break Some(result),
                    Err(_)
                        if !extended && received.load(Ordering::Acquire) == before && queued() =>
                    {
                        tracing::info!(
                            timeout = ?timeout,
                            "No reply byte at fpm.timeout while FPM's listen queue is not empty: \
                             the request likely waits for a child; waiting once more instead of retrying it"
                        );
                        extended = true;
                        deadline += timeout;
                    }
                    Err(_) => break None,
                }
            }
        };
        self.in_request = false;
        match result {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(e)) => {
                self.abandon();
                Err(e)
            }
            None => {
                self.abandon();
                Err(FpmError::Timeout(timeout))
            }
        }
    }

    async fn request_inner(
        &mut self,
        limits: Limits,
        params: &[(&'static str, std::borrow::Cow<'_, str>)],
        body: &[u8],
        on_stdout: &mut (dyn FnMut(&[u8]) -> Result<(), String> + Send),
    ) -> Result<Reply, FpmError> {
        // At most one run per attempt: a request is sent once. A kept-alive connection that FPM
        // closed while it sat idle (a child recycled by pm.max_requests, a pool reload) is seen
        // before anything is sent, and replaced. Once sent, a failure is the attempt's result,
        // even before the first reply byte: PHP may have run the message (a child killed
        // mid-handler), and sending it again would run it twice.
        if self
            .conn
            .as_ref()
            .and_then(|c| c.fd)
            .is_some_and(peer_closed)
        {
            tracing::debug!(
                "Kept-alive FPM connection was closed by FPM; reconnecting before sending"
            );
            self.conn = None;
        }
        self.attempt(limits, params, body, on_stdout).await
    }

    async fn attempt(
        &mut self,
        limits: Limits,
        params: &[(&'static str, std::borrow::Cow<'_, str>)],
        body: &[u8],
        on_stdout: &mut (dyn FnMut(&[u8]) -> Result<(), String> + Send),
    ) -> Result<Reply, FpmError> {
        if self.conn.is_none() {
            let (stream, fd) = connect(&self.address).await?;
            let ends = Arc::new(AtomicU64::new(0));
            let watched = Watched::new(stream, ends.clone(), self.received.clone());
            self.conn = Some(Connection {
                client: Client::new_keep_alive_tokio(watched),
                fd: Some(fd),
                ends,
                opened: Instant::now(),
            });
        }
        let conn = self.conn.as_mut().expect("connected above");
        let ends_before = conn.ends.load(Ordering::Acquire);
        debug_assert!(
            params
                .iter()
                .enumerate()
                .all(|(i, (name, _))| params[..i].iter().all(|(n, _)| n != name)),
            "each FastCGI param once"
        );
        // The whole request in one buffer and one write, its params in the order given
        // (vendor/fastcgi-client/PATCHES.md 8 and 9).
        let mut stream = conn
            .client
            .execute_stream_pairs(params.iter().map(|(n, v)| (*n, v.as_ref())), body)
            .await
            .map_err(client_error)?;
        let mut reply = Reply::default();
        while let Some(item) = stream.next().await {
            let content = item.map_err(client_error)?;
            let (bytes, kept, keep) = match &content {
                Content::Stdout(b) => (b, &mut reply.stdout, limits.keep_stdout),
                Content::Stderr(b) => (b, &mut reply.stderr, KEEP_STDERR),
            };
            reply.size += bytes.len();
            if reply.size > limits.max_response {
                return Err(FpmError::TooLarge(limits.max_response));
            }
            let room = keep.saturating_sub(kept.len());
            kept.extend_from_slice(&bytes[..room.min(bytes.len())]);
            if let Content::Stdout(b) = &content {
                on_stdout(b).map_err(FpmError::Protocol)?;
            }
        }
        drop(stream);
        if conn.ends.load(Ordering::Acquire) == ends_before {
            return Err(if reply.size == 0 {
                FpmError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "FPM closed the connection",
                ))
            } else {
                FpmError::Truncated(reply.size)
            });
        }
        Ok(reply)
    }
}

impl Drop for FpmClient {
    /// As [`FpmClient::close`]: a request still in progress (its worker stopped midway) is
    /// given up with a reset.
    fn drop(&mut self) {
        self.close();
    }
}

/// What one request may take: its deadline, its reply size, the stdout bytes kept.
#[derive(Clone, Copy)]
struct Limits {
    timeout: Duration,
    max_response: usize,
    keep_stdout: usize,
}

fn client_error(e: ClientError) -> FpmError {
    match e {
        ClientError::Io(io) => FpmError::Io(io),
        other => FpmError::Protocol(other.to_string()),
    }
}

/// Makes the close of `fd` abortive (`SO_LINGER` on with a zero timeout): the kernel sends a
/// reset and discards what it still holds for the socket. A failure only costs what
/// [`FpmClient::abandon`] avoids, so it is ignored.
fn reset_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = set_socket_option(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger);
}

/// True when the peer closed the connection (or sent bytes nobody asked for): a non-blocking
/// peek that reads nothing. An idle kept-alive connection has nothing to read.
fn peer_closed(fd: std::os::fd::RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is an open socket owned by the connection's client, and `byte` is a valid
    // one-byte buffer; MSG_PEEK leaves the socket's data in place.
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
}

async fn connect(address: &FpmAddress) -> Result<(Stream, std::os::fd::RawFd), FpmError> {
    let err = |source| FpmError::Connect {
        address: address.to_string(),
        source,
    };
    match address {
        FpmAddress::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr.as_str())
                .await
                .map_err(err)?;
            // Without this every request waits ~40 ms on Nagle + delayed ACK.
            stream.set_nodelay(true).map_err(err)?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            if quick_ack_enabled() {
                Ok((Box::pin(buffered(QuickAck::new(stream, fd))), fd))
            } else {
                Ok((Box::pin(buffered(stream)), fd))
            }
        }
        FpmAddress::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await.map_err(err)?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            Ok((Box::pin(buffered(stream)), fd))
        }
    }
}

/// A TCP connection to FPM that ACKs a reply's pieces as soon as it reads them
/// (`TCP_QUICKACK`, armed again after each request we send).
///
/// Why: php-fpm leaves Nagle's algorithm on for its sockets (it never sets `TCP_NODELAY`), so
/// when PHP writes a reply in several pieces (a batch flushing each line as docs/batches.md
/// asks, or a handler calling `flush()`), the first piece leaves at once and every later one
/// waits in php-fpm's kernel until we have ACKed it (Linux's Nagle holds a small segment while
/// an earlier small one is unacknowledged; php-fpm's `write()` returns at once). And Linux
/// delays that ACK on our side: sending a request a moment after the previous reply arrived
/// puts our socket in "pingpong" (interactive) mode, where an ACK waits for data of ours to ride
/// on (none comes before the reply is complete) or for the delayed-ACK timer, at least 40 ms
/// (`TCP_DELACK_MIN`). So each reply written in pieces over TCP stalled ~40 ms, whatever its
/// size: a batch of 50 lost ~1 ms per entry, a single reply in two flushes 40 ms per message,
/// while php-fpm's child sat idle waiting for our next request. A Unix socket has no Nagle and
/// no ACKs. docs/performance.md ("Streamed replies over TCP") has the measurements.
///
/// A receiver cannot set options on php-fpm's socket, so the fix is on our side:
/// `TCP_QUICKACK` leaves pingpong mode and sends a pending ACK at once. It is not sticky (tcp(7):
/// "subsequent operation of the TCP protocol will once again enter/leave quickack mode"): every
/// request we send re-enters pingpong mode (data sent soon after data received), so it is armed
/// again after the first read of each reply, once per request; out of pingpong mode the kernel
/// then ACKs each small segment as we read it, and php-fpm's next piece leaves as soon as we
/// have read the previous one. It is not armed by a read that ends exactly with the reply's
/// `FCGI_END_REQUEST` (FPM has nothing more to send: the ACK may wait and ride on our next
/// request, as before), so a reply in one write, the usual single message, costs no syscall and
/// no ACK packet more than before.
///
/// Each read that does not end the reply is followed at once by a non-blocking `recv` of our
/// own (`read_now`): the ACK that read sent released what php-fpm's Nagle held, and on loopback
/// it is in our receive queue before the read returns, but tokio takes a short read for a
/// drained socket and would wait for the next readiness event, which the runtime sees only after
/// its pause before parking (`wakeups`). Without it, a batch reply ended about 1 ms later over
/// TCP than over a Unix socket (docs/performance.md, "The rest of a reply, read at once").
///
/// `AMQP_AGENT_TCP_QUICKACK=0` turns it off (to measure the stall; see docs/performance.md).
struct QuickAck<S> {
    inner: S,
    fd: std::os::fd::RawFd,
    /// Where the bytes read stand in the reply's records.
    records: RecordScanner,
    /// `TCP_QUICKACK` set since we last sent bytes.
    armed: bool,
    /// An error of a read made on our own (`read_now`), returned by the next `poll_read`.
    failed: Option<std::io::Error>,
}

impl<S> QuickAck<S> {
    fn new(inner: S, fd: std::os::fd::RawFd) -> Self {
        Self {
            inner,
            fd,
            records: RecordScanner::default(),
            armed: false,
            failed: None,
        }
    }
}

/// False when `AMQP_AGENT_TCP_QUICKACK=0` (read once).
fn quick_ack_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("AMQP_AGENT_TCP_QUICKACK").map_or(true, |v| v != "0"))
}

/// Sets `TCP_QUICKACK` on `fd`: leaves delayed-ACK (pingpong) mode and sends a pending ACK now.
/// A failure only costs the stall it avoids, so it is ignored.
fn quick_ack(fd: std::os::fd::RawFd) {
    let on: libc::c_int = 1;
    let _ = set_socket_option(fd, libc::IPPROTO_TCP, libc::TCP_QUICKACK, &on);
}

/// Reads what `fd` holds now into `buf`'s unfilled part without waiting (`MSG_DONTWAIT`);
/// returns the bytes read: 0 when there were none (`EAGAIN`), at the end of the stream (which
/// the next read sees again) or when `buf` is full. An error is returned as such: the kernel
/// reports a socket error once, so the caller must hand it on.
fn read_now(fd: std::os::fd::RawFd, buf: &mut ReadBuf<'_>) -> std::io::Result<usize> {
    let room = buf.remaining();
    if room == 0 {
        return Ok(0);
    }
    // SAFETY: `unfilled_mut` is `room` writable bytes owned by `buf`; `recv` writes at most
    // `room` of them and returns how many, and exactly those are then marked initialized and
    // filled. An `fd` that is no longer a socket makes the call fail (-1), nothing more.
    let n = unsafe {
        let unfilled = buf.unfilled_mut();
        libc::recv(fd, unfilled.as_mut_ptr().cast(), room, libc::MSG_DONTWAIT)
    };
    let Ok(n) = usize::try_from(n) else {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(0),
            _ => Err(e),
        };
    };
    // SAFETY: the kernel initialized the first `n` (≤ `room`) unfilled bytes.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

/// `setsockopt(2)` with a plain value: option `name` at `level` of `fd` set to `value`.
fn set_socket_option<T>(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: `value` is a live `T` and the length given is its size; the kernel only reads it.
    // An `fd` that is not an open socket makes the call fail, nothing more.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for QuickAck<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && !this.records.ends_reply(&buf.filled()[before..])
        {
            if !this.armed {
                quick_ack(this.fd);
                this.armed = true;
            }
            // The ACK this read sent (or the one `quick_ack` just sent) released what php-fpm's
            // Nagle held, and on loopback it is in our receive queue already. tokio took the
            // short read for a drained socket and would wait for the next readiness event,
            // after the runtime's pause before parking (`wakeups`): take it now.
            let start = buf.filled().len();
            match read_now(this.fd, buf) {
                Ok(0) => {}
                Ok(_) => {
                    this.records.ends_reply(&buf.filled()[start..]);
                }
                Err(e) => this.failed = Some(e),
            }
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for QuickAck<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            // Data sent a moment after data received puts the socket back in pingpong mode.
            self.armed = false;
        }
        poll
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// fastcgi-client writes each record (begin, params, stdin chunks, terminators) separately and
/// flushes once at the end: a write buffer turns a request into one or two syscalls and packets
/// instead of a dozen (with `TCP_NODELAY`, each small write would be its own packet). It also
/// reads every record header, content and padding with its own `read_exact`: a read buffer
/// turns a small reply into one `read` instead of six or more.
fn buffered<S: AsyncRead + AsyncWrite>(stream: S) -> tokio::io::BufStream<S> {
    tokio::io::BufStream::with_capacity(16 * 1024, 64 * 1024, stream)
}

/// Checks that FPM accepts connections (used by the circuit breaker's probe).
///
/// # Errors
/// The connect error.
pub(crate) async fn probe(address: &FpmAddress, timeout: Duration) -> Result<(), FpmError> {
    match tokio::time::timeout(timeout, connect(address)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(FpmError::Timeout(timeout)),
    }
}

/// Follows FastCGI record boundaries in a byte stream read in pieces of any size.
#[derive(Default)]
struct RecordScanner {
    header: [u8; 8],
    header_len: usize,
    remaining: usize,
    in_end_record: bool,
}

impl RecordScanner {
    /// Scans the next bytes of the stream; returns how many `FCGI_END_REQUEST` records they
    /// completed.
    fn scan(&mut self, mut data: &[u8]) -> u64 {
        const END_REQUEST: u8 = 3;
        let mut ends = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                if self.remaining == 0 && self.in_end_record {
                    self.in_end_record = false;
                    ends += 1;
                }
                continue;
            }
            let n = (8 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 8 {
                self.header_len = 0;
                let content = usize::from(u16::from_be_bytes([self.header[4], self.header[5]]));
                self.remaining = content + usize::from(self.header[6]);
                self.in_end_record = self.header[1] == END_REQUEST;
                if self.remaining == 0 && self.in_end_record {
                    self.in_end_record = false;
                    ends += 1;
                }
            }
        }
        ends
    }

    /// Scans the next bytes; true when they end exactly with the end of a reply (an
    /// `FCGI_END_REQUEST` record complete, nothing after it): FPM has nothing more to send.
    fn ends_reply(&mut self, data: &[u8]) -> bool {
        self.scan(data) > 0 && self.header_len == 0 && self.remaining == 0
    }
}

/// A stream wrapper that follows FastCGI record boundaries in what it reads and counts complete
/// `FCGI_END_REQUEST` records, so a reply cut off by a closed connection is told apart from a
/// complete one (fastcgi-client reports both as the end of the stream).
struct Watched {
    inner: Stream,
    ends: Arc<AtomicU64>,
    /// Bytes read, shared with the client.
    received: Arc<AtomicU64>,
    records: RecordScanner,
}

impl Watched {
    fn new(inner: Stream, ends: Arc<AtomicU64>, received: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            ends,
            received,
            records: RecordScanner::default(),
        }
    }

    fn observe(&mut self, data: &[u8]) {
        let ends = self.records.scan(data);
        if ends > 0 {
            self.ends.fetch_add(ends, Ordering::Release);
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = this.inner.as_mut().poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let read = buf.filled().len() - before;
            this.received.fetch_add(read as u64, Ordering::Release);
            this.observe(&buf.filled()[before..]);
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.inner.as_mut().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_headers_param_fits_one_params_record() {
        // The pair: two 4-byte lengths, the name, the value (see config's MAX_HEADERS_PARAM).
        let pair = 8 + "HTTP_X_AGENT_HEADERS".len() + crate::config::MAX_HEADERS_PARAM;
        assert_eq!(pair, fastcgi_client::MAX_PARAMS_RECORD);
    }

    fn record(kind: u8, content: &[u8], padding: u8) -> Vec<u8> {
        let len = u16::try_from(content.len()).unwrap().to_be_bytes();
        let mut r = vec![1, kind, 0, 1, len[0], len[1], padding, 0];
        r.extend_from_slice(content);
        r.extend(std::iter::repeat_n(0, usize::from(padding)));
        r
    }

    fn watcher() -> (Watched, Arc<AtomicU64>) {
        let ends = Arc::new(AtomicU64::new(0));
        let (a, _b) = tokio::io::duplex(8);
        (
            Watched::new(Box::pin(a), ends.clone(), Arc::default()),
            ends,
        )
    }

    #[tokio::test]
    async fn counts_end_request_records_split_at_any_byte() {
        let mut stream = record(6, b"Status: 200\r\n\r\nhello", 3);
        stream.extend(record(7, b"warning", 1));
        stream.extend(record(3, &[0; 8], 0));
        for chunk in 1..stream.len() {
            let (mut w, ends) = watcher();
            for part in stream.chunks(chunk) {
                w.observe(part);
            }
            assert_eq!(ends.load(Ordering::Acquire), 1, "chunk size {chunk}");
        }
    }

    /// Found by `fuzz/` (target `fastcgi_reply`): fastcgi-client panicked on an end-of-request
    /// record shorter than 8 bytes (vendor/fastcgi-client/PATCHES.md).
    #[tokio::test]
    async fn a_short_end_request_record_is_a_protocol_error() {
        use tokio::io::AsyncWriteExt as _;
        for length in 0..8 {
            let (agent_side, mut fpm_side) = tokio::io::duplex(64 * 1024);
            let mut reply = record(6, b"Status: 200\r\n\r\nok", 0);
            reply.extend(record(3, &[0; 8][..length], 0));
            fpm_side.write_all(&reply).await.unwrap();
            let address = FpmAddress::Unix("/nonexistent/fpm.sock".into());
            let mut client =
                FpmClient::with_stream(address, Duration::from_secs(5), 1 << 20, agent_side);
            let params = [("SCRIPT_FILENAME", "/srv/index.php".into())];
            let error = client.request(&params, b"{}").await.unwrap_err();
            assert_eq!(
                error.reason(),
                "fpm_protocol_error",
                "length {length}: {error}"
            );
        }
    }

    /// A status read cancelled mid-way (a reload aborts the reader) leaves the pooled client with
    /// the limits of its messages, not the status page's (issue #20, case 8).
    #[tokio::test]
    async fn a_cancelled_status_read_keeps_the_client_limits() {
        let mut client = late_reply(Duration::from_secs(60));
        let limits = (client.timeout, client.max_response, client.keep_stdout);
        let read = client.status_page("/status", Duration::from_secs(1), 4 << 20);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), read)
                .await
                .is_err(),
            "cancelled before any reply"
        );
        assert_eq!(
            (client.timeout, client.max_response, client.keep_stdout),
            limits
        );
    }

    /// A fake FPM that sends a complete reply after `delay`, on an open connection.
    fn late_reply(delay: Duration) -> FpmClient {
        use tokio::io::AsyncWriteExt as _;
        let (agent_side, mut fpm_side) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut reply = record(6, b"Status: 200\r\n\r\nok", 0);
            reply.extend(record(3, &[0; 8], 0));
            let _ = fpm_side.write_all(&reply).await;
            // Keep the connection open until the client is done.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let address = FpmAddress::Unix("/nonexistent/fpm.sock".into());
        FpmClient::with_stream(address, Duration::from_millis(300), 1 << 20, agent_side)
    }

    #[tokio::test]
    async fn a_request_without_a_reply_byte_waits_once_more_only_while_fpm_has_a_backlog() {
        let params = [("SCRIPT_FILENAME", "/srv/index.php".into())];
        let in_backlog = || true;
        let no_backlog = || false;
        let mut client = late_reply(Duration::from_millis(450));
        let reply = client.request_patient(&params, b"{}", &in_backlog).await;
        assert!(reply.is_ok(), "{reply:?}");
        // Without a backlog; and with one, only once: past twice the timeout it times out too.
        let cases: [(u64, &(dyn Fn() -> bool + Sync)); 2] =
            [(450, &no_backlog), (900, &in_backlog)];
        for (delay, queued) in cases {
            let mut client = late_reply(Duration::from_millis(delay));
            let error = client
                .request_patient(&params, b"{}", queued)
                .await
                .unwrap_err();
            assert_eq!(error.reason(), "timeout", "reply after {delay} ms");
        }
    }

    /// A batch's outcome lines reach the callback record by record, before the reply ends; an
    /// error from the callback abandons the request as a protocol error.
    #[tokio::test]
    async fn stdout_is_streamed_to_the_callback_and_it_can_abandon_the_request() {
        use tokio::io::AsyncWriteExt as _;
        let (agent_side, mut fpm_side) = tokio::io::duplex(64 * 1024);
        let mut reply = record(6, b"Status: 200\r\nX-Agent-Batch: 1\r\n\r\n0 ack\n", 0);
        reply.extend(record(6, b"1 ack\n", 2));
        reply.extend(record(7, b"a warning", 0));
        reply.extend(record(6, b"done 2\n", 0));
        reply.extend(record(3, &[0; 8], 0));
        fpm_side.write_all(&reply).await.unwrap();
        let address = FpmAddress::Unix("/nonexistent/fpm.sock".into());
        let mut client =
            FpmClient::with_stream(address, Duration::from_secs(5), 1 << 20, agent_side);
        let params = [("SCRIPT_FILENAME", "/srv/index.php".into())];
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let reply = client
            .request_streaming(&params, b"", &|| false, &mut |c| {
                chunks.push(c.to_vec());
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(
            chunks.len(),
            3,
            "one call per stdout record, stderr left out"
        );
        assert_eq!(chunks[1], b"1 ack\n");
        assert_eq!(reply.stderr, b"a warning");

        let (agent_side, mut fpm_side) = tokio::io::duplex(64 * 1024);
        let mut reply = record(6, b"Status: 200\r\n\r\n0 ack\n", 0);
        reply.extend(record(3, &[0; 8], 0));
        fpm_side.write_all(&reply).await.unwrap();
        let address = FpmAddress::Unix("/nonexistent/fpm.sock".into());
        let mut client =
            FpmClient::with_stream(address, Duration::from_secs(5), 1 << 20, agent_side);
        let error = client
            .request_streaming(&params, b"", &|| false, &mut |_| {
                Err("duplicate outcome".to_owned())
            })
            .await
            .unwrap_err();
        assert_eq!(error.reason(), "fpm_protocol_error");
        assert!(client.conn.is_none(), "the connection is dropped");
    }

    /// A request given up (here at its deadline) leaves with a reset, not a FIN: PHP's next
    /// write then fails at once, and the FPM child stops the script there instead of running
    /// one more batch entry that the agent has already returned to its queue. A FIN would show
    /// here as an end of file.
    #[tokio::test]
    async fn a_request_given_up_resets_the_connection() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = FpmAddress::Tcp(listener.local_addr().unwrap().to_string());
        // A child that reads the request and never answers.
        let fpm = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 64 * 1024];
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) => return "FIN",
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return "RST",
                    Err(e) => panic!("{e}"),
                }
            }
        });
        let mut client = FpmClient::new(address, Duration::from_millis(200), 1 << 20);
        let params = [("SCRIPT_FILENAME", "/srv/index.php".into())];
        let error = client.request(&params, b"body").await.unwrap_err();
        assert_eq!(error.reason(), "timeout");
        let end = tokio::time::timeout(Duration::from_secs(30), fpm)
            .await
            .expect("the connection ends")
            .unwrap();
        assert_eq!(end, "RST");
    }

    /// Whether the socket is in quick-ACK mode (Linux reports "not in pingpong mode").
    fn quick_ack_on(fd: std::os::fd::RawFd) -> bool {
        let mut value: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `fd` is an open TCP socket; `value` and `len` are valid for the call.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        value == 1
    }

    /// Puts `fd` in delayed-ACK (pingpong) mode, as Linux does when we send a request shortly
    /// after a reply.
    fn delay_acks(fd: std::os::fd::RawFd) {
        let off: libc::c_int = 0;
        set_socket_option(fd, libc::IPPROTO_TCP, libc::TCP_QUICKACK, &off).expect("TCP_QUICKACK 0");
        assert!(!quick_ack_on(fd), "pingpong mode set");
    }

    /// A loopback TCP connection as `connect` makes one to FPM (`TCP_NODELAY` on our side,
    /// wrapped in `QuickAck`), php-fpm's end of it, and our socket's descriptor.
    async fn quick_ack_pair() -> (
        QuickAck<tokio::net::TcpStream>,
        tokio::net::TcpStream,
        std::os::fd::RawFd,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent_side = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        agent_side.set_nodelay(true).unwrap();
        let (fpm_side, _) = listener.accept().await.unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&agent_side);
        (QuickAck::new(agent_side, fd), fpm_side, fd)
    }

    /// Issue #24, item 0: on the agent's TCP connection to FPM, the first read of part of a
    /// reply leaves delayed-ACK (pingpong) mode, into which each request we send puts the socket
    /// (forced here, as Linux does it only when the request follows a reply within its ACK
    /// timeout), so php-fpm's next write (held by its Nagle until we ACK) is not held ~40 ms by
    /// our delayed-ACK timer (see `QuickAck`). Without the re-arm the socket is still in pingpong
    /// mode when the read returns (the test could then pass only if that timer had fired first,
    /// 40 ms later: it cannot fail by being slow). Later reads of the same reply need no
    /// re-arm: the kernel leaves the mode off until we send again (checked here too).
    #[tokio::test]
    async fn a_read_of_part_of_a_reply_re_arms_quick_ack_once_per_request() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut stream, mut fpm_side, fd) = quick_ack_pair().await;
        let mut reply = record(
            6,
            b"Status: 200\r\nX-Agent-Batch: 2\r\n\r\nabc 0 start\n",
            0,
        );
        reply.extend(record(6, b"abc 0 ack\n", 0));
        reply.extend(record(3, &[0; 8], 0));
        let parts = [&reply[..48], &reply[48..70], &reply[70..]];
        for request in 0..2 {
            stream.write_all(b"request").await.unwrap();
            let mut sent = [0; 7];
            fpm_side.read_exact(&mut sent).await.unwrap();
            delay_acks(fd);
            let mut read = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                fpm_side.write_all(part).await.unwrap();
                let mut buf = vec![0; 64 * 1024];
                while read.len() < parts[..=i].iter().map(|p| p.len()).sum() {
                    let n = stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "connection open");
                    read.extend_from_slice(&buf[..n]);
                }
                assert!(
                    quick_ack_on(fd),
                    "request {request}, part {i}: out of pingpong mode"
                );
            }
            assert_eq!(read, reply);
        }
    }

    /// Issue #24, item 0: the rest of a reply that php-fpm's Nagle held until we ACKed its first
    /// part is read together with that part, in the same `poll_read`. Our ACK (sent by the read
    /// or by the quick-ACK re-arm) releases it, and on loopback it reaches our receive queue
    /// before the call returns; tokio took the short read for a drained socket, so without
    /// `read_now` it waited for the next readiness event, which comes only after the runtime's
    /// pause before parking (`wakeups`): about 1 ms more per batch reply in the bench.
    ///
    /// php-fpm's side keeps Nagle on, as php-fpm does; ours is in delayed-ACK mode before each
    /// reply, as after a request, so part 2 stays held until we ACK part 1 (or our delayed-ACK
    /// timer fires, 40 ms later). Without `read_now` no read returns both parts unless that
    /// timer fired first; the kernel may defer the release to its softirq thread under load, so
    /// half of the replies must come whole, not all.
    #[tokio::test]
    async fn what_our_ack_releases_is_read_with_the_part_before_it() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut stream, mut fpm_side, fd) = quick_ack_pair().await;
        assert!(!fpm_side.nodelay().unwrap(), "php-fpm's Nagle is on");
        let first = record(
            6,
            b"Status: 200\r\nX-Agent-Batch: 2\r\n\r\nabc 0 start\n",
            0,
        );
        let mut rest = record(6, b"abc 0 ack\n", 0);
        rest.extend(record(3, &[0; 8], 0));
        let whole_len = first.len() + rest.len();
        let (replies, mut whole) = (20, 0);
        for _ in 0..replies {
            stream.write_all(b"request").await.unwrap();
            let mut sent = [0; 7];
            fpm_side.read_exact(&mut sent).await.unwrap();
            delay_acks(fd);
            fpm_side.write_all(&first).await.unwrap();
            fpm_side.write_all(&rest).await.unwrap();
            let mut buf = vec![0; 64 * 1024];
            let mut read = stream.read(&mut buf).await.unwrap();
            assert!(read >= first.len(), "the first part leaves at once");
            if read == whole_len {
                whole += 1;
            }
            while read < whole_len {
                let n = stream.read(&mut buf[read..]).await.unwrap();
                assert!(n > 0, "connection open");
                read += n;
            }
            assert_eq!(buf[..read], [first.as_slice(), &rest].concat());
        }
        assert!(
            whole * 2 >= replies,
            "{whole} of {replies} replies read whole in one poll_read"
        );
    }

    /// A fake FPM on loopback TCP: reads whole requests and answers each in two writes (as PHP
    /// flushing a line, then the rest), on one kept-alive connection.
    async fn two_write_fpm() -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            loop {
                // Records until the empty FCGI_STDIN that ends a request.
                loop {
                    let mut header = [0u8; 8];
                    if socket.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
                    let mut content = vec![0; len + usize::from(header[6])];
                    socket.read_exact(&mut content).await.unwrap();
                    if header[1] == 5 && len == 0 {
                        break;
                    }
                }
                let first = record(6, b"Status: 200\r\nX-Agent-Ack: 1\r\n\r\npart 1\n", 0);
                socket.write_all(&first).await.unwrap();
                let mut rest = record(6, b"ok\n", 0);
                rest.extend(record(3, &[0; 8], 0));
                socket.write_all(&rest).await.unwrap();
            }
        });
        address
    }

    /// Replies in two writes come back whole through the TCP connection's layers (`QuickAck`
    /// under the buffer), request after request on the kept-alive connection.
    #[tokio::test]
    async fn replies_in_two_writes_over_tcp_are_read_whole() {
        let address = FpmAddress::Tcp(two_write_fpm().await);
        let mut client = FpmClient::new(address, Duration::from_secs(5), 1 << 20);
        let params = [("SCRIPT_FILENAME", "/srv/index.php".into())];
        for round in 0..3 {
            let reply = client.request(&params, b"{}").await.unwrap();
            assert_eq!(
                reply.stdout, b"Status: 200\r\nX-Agent-Ack: 1\r\n\r\npart 1\nok\n",
                "round {round}"
            );
        }
    }

    /// `QuickAck` skips the re-arm only after a read that ends exactly with the reply's end
    /// record, wherever the reads split the reply; every other read re-arms it.
    #[test]
    fn only_a_read_that_ends_the_reply_skips_the_quick_ack() {
        let mut reply = record(6, b"Status: 200\r\n\r\nabc 0 start\n", 3);
        reply.extend(record(7, b"warning", 1));
        reply.extend(record(6, b"abc 0 ack\n", 0));
        reply.extend(record(3, &[0; 8], 0));
        for split in 1..reply.len() {
            let mut records = RecordScanner::default();
            assert!(
                !records.ends_reply(&reply[..split]),
                "first read of {split}"
            );
            assert!(records.ends_reply(&reply[split..]), "rest after {split}");
        }
        let mut records = RecordScanner::default();
        assert!(records.ends_reply(&reply), "the whole reply in one read");
        // The next reply on the kept-alive connection starts afresh.
        assert!(!records.ends_reply(&reply[..20]));
        assert!(records.ends_reply(&reply[20..]));
    }

    #[tokio::test]
    async fn a_cut_reply_has_no_end() {
        let mut stream = record(6, b"Status: 200\r\n\r\nhello", 0);
        stream.extend(&record(3, &[0; 8], 0)[..12]);
        let (mut w, ends) = watcher();
        w.observe(&stream);
        assert_eq!(ends.load(Ordering::Acquire), 0);
    }
}
