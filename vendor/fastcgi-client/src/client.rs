// Copyright 2022 jmjoy
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! FastCGI client implementation for async communication with FastCGI servers.
//!
//! This module provides the main `Client` struct that handles communication
//! with FastCGI servers in both short connection and keep-alive modes.
//! The client can execute requests and receive responses or response streams.

use crate::{
    ClientError, ClientResult, Response,
    conn::{KeepAlive, Mode, ShortConn},
    io::{self, AsyncRead, AsyncWrite, AsyncWriteExt},
    meta::{
        BeginRequest, BeginRequestRec, EndRequestRec, HEADER_LEN, Header, MAX_LENGTH, ParamPairs,
        RequestType, Role,
    },
    params::Params,
    request::Request,
    response::ResponseStream,
};
use std::marker::PhantomData;
use tracing::debug;

#[cfg(feature = "tokio")]
use crate::io::{TokioAsyncReadCompatExt, TokioCompat};

/// I refer to nginx fastcgi implementation, found the request id is always 1.
///
/// <https://github.com/nginx/nginx/blob/f7ea8c76b55f730daa3b63f5511feb564b44d901/src/http/modules/ngx_http_fastcgi_module.c>
const REQUEST_ID: u16 = 1;

/// Async client for handling communication between fastcgi server.
pub struct Client<S, M> {
    stream: S,
    _mode: PhantomData<M>,
}

impl<S, M> Client<S, M> {
    fn from_stream(stream: S) -> Self {
        Self {
            stream,
            _mode: PhantomData,
        }
    }
}

#[cfg(feature = "tokio")]
impl<S> Client<TokioCompat<S>, ShortConn>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    /// Construct a `Client` Object with a Tokio stream under short connection
    /// mode.
    ///
    /// Requires the optional `tokio` feature, which exists purely as a
    /// convenience adapter: Tokio defines its own I/O traits, so the stream is
    /// wrapped with [`tokio_util::compat`](crate::io::TokioAsyncReadCompatExt)
    /// before being handed to the runtime agnostic core. Without the feature,
    /// bridge the stream yourself and call [`Client::new`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")]
    /// # async fn example() {
    /// use fastcgi_client::Client;
    /// use tokio::net::TcpStream;
    /// # #[cfg(unix)]
    /// # use tokio::net::UnixStream;
    ///
    /// let tcp_stream = TcpStream::connect(("127.0.0.1", 9000)).await.unwrap();
    /// let _tcp_client = Client::new_tokio(tcp_stream);
    ///
    /// # #[cfg(unix)]
    /// # {
    /// let unix_stream = UnixStream::connect("/run/php-fpm.sock").await.unwrap();
    /// let _unix_client = Client::new_tokio(unix_stream);
    /// # }
    /// # }
    /// # #[cfg(not(feature = "tokio"))]
    /// # fn example() {}
    /// ```
    pub fn new_tokio(stream: S) -> Self {
        Self::from_stream(stream.compat())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S, ShortConn> {
    /// Construct a `Client` object under short connection mode.
    ///
    /// This constructor is runtime agnostic: it accepts any stream implementing
    /// the [`futures_io`](crate::io) `AsyncRead` + `AsyncWrite` traits, such as
    /// `smol::net::TcpStream`, `async_net::TcpStream`, or a Tokio stream
    /// wrapped by [`tokio_util::compat`](https://docs.rs/tokio-util/latest/tokio_util/compat/index.html).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn example() {
    /// use fastcgi_client::Client;
    /// use smol::net::TcpStream;
    ///
    /// let stream = TcpStream::connect(("127.0.0.1", 9000)).await.unwrap();
    /// let _client = Client::new(stream);
    /// # }
    /// ```
    pub fn new(stream: S) -> Self {
        Self::from_stream(stream)
    }

    /// Send request and receive response from fastcgi server, under short
    /// connection mode.
    pub async fn execute_once<I: AsyncRead + Unpin>(
        mut self, request: Request<'_, I>,
    ) -> ClientResult<Response> {
        self.inner_execute(request).await
    }

    /// Send request and receive response stream from fastcgi server, under
    /// short connection mode.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")]
    /// # async fn stream() {
    /// use fastcgi_client::{io, response::Content, Client, Params, Request, StreamExt};
    /// use tokio::net::TcpStream;
    ///
    ///     let stream = TcpStream::connect(("127.0.0.1", 9000)).await.unwrap();
    ///     let client = Client::new_tokio(stream);
    ///     let mut stream = client
    ///         .execute_once_stream(Request::new(Params::default(), io::empty()))
    ///         .await
    ///         .unwrap();
    ///
    ///     while let Some(content) = stream.next().await {
    ///         let content = content.unwrap();
    ///
    ///         match content {
    ///             Content::Stdout(out) => todo!(),
    ///             Content::Stderr(out) => todo!(),
    ///         }
    ///     }
    /// }
    /// # #[cfg(not(feature = "tokio"))]
    /// # fn stream() {}
    /// ```
    pub async fn execute_once_stream<I: AsyncRead + Unpin>(
        mut self, request: Request<'_, I>,
    ) -> ClientResult<ResponseStream<S>> {
        self.send_request(request).await?;
        Ok(ResponseStream::new(self.stream, REQUEST_ID))
    }
}

#[cfg(feature = "tokio")]
impl<S> Client<TokioCompat<S>, KeepAlive>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    /// Construct a `Client` Object with a Tokio stream under keep-alive mode.
    ///
    /// Requires the optional `tokio` feature, which exists purely as a
    /// convenience adapter: Tokio defines its own I/O traits, so the stream is
    /// wrapped with [`tokio_util::compat`](crate::io::TokioAsyncReadCompatExt)
    /// before being handed to the runtime agnostic core. Without the feature,
    /// bridge the stream yourself and call [`Client::new_keep_alive`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")]
    /// # async fn example() {
    /// use fastcgi_client::Client;
    /// use tokio::net::TcpStream;
    /// # #[cfg(unix)]
    /// # use tokio::net::UnixStream;
    ///
    /// let tcp_stream = TcpStream::connect(("127.0.0.1", 9000)).await.unwrap();
    /// let _tcp_client = Client::new_keep_alive_tokio(tcp_stream);
    ///
    /// # #[cfg(unix)]
    /// # {
    /// let unix_stream = UnixStream::connect("/run/php-fpm.sock").await.unwrap();
    /// let _unix_client = Client::new_keep_alive_tokio(unix_stream);
    /// # }
    /// # }
    /// # #[cfg(not(feature = "tokio"))]
    /// # fn example() {}
    /// ```
    pub fn new_keep_alive_tokio(stream: S) -> Self {
        Self::from_stream(stream.compat())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S, KeepAlive> {
    /// Construct a `Client` object under keep-alive mode.
    ///
    /// This constructor is runtime agnostic: it accepts any stream implementing
    /// the [`futures_io`](crate::io) `AsyncRead` + `AsyncWrite` traits, such as
    /// `smol::net::TcpStream`, `async_net::TcpStream`, or a Tokio stream
    /// wrapped by [`tokio_util::compat`](https://docs.rs/tokio-util/latest/tokio_util/compat/index.html).
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn example() {
    /// use fastcgi_client::Client;
    /// use smol::net::TcpStream;
    ///
    /// let stream = TcpStream::connect(("127.0.0.1", 9000)).await.unwrap();
    /// let _client = Client::new_keep_alive(stream);
    /// # }
    /// ```
    pub fn new_keep_alive(stream: S) -> Self {
        Self::from_stream(stream)
    }

    /// Send request and receive response from fastcgi server, under keep alive
    /// connection mode.
    pub async fn execute<I: AsyncRead + Unpin>(
        &mut self, request: Request<'_, I>,
    ) -> ClientResult<Response> {
        self.inner_execute(request).await
    }

    /// Send request and receive response stream from fastcgi server, under
    /// keep alive connection mode.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")]
    /// # async fn stream() {
    /// use fastcgi_client::{io, response::Content, Client, Params, Request, StreamExt};
    /// use tokio::net::TcpStream;
    ///
    ///     let stream = TcpStream::connect(("127.0.0.1", 9000)).await.unwrap();
    ///     let mut client = Client::new_keep_alive_tokio(stream);
    ///
    ///     for _ in (0..3) {
    ///         let mut stream = client
    ///             .execute_stream(Request::new(Params::default(), io::empty()))
    ///             .await
    ///             .unwrap();
    ///
    ///         while let Some(content) = stream.next().await {
    ///             let content = content.unwrap();
    ///
    ///             match content {
    ///                 Content::Stdout(out) => todo!(),
    ///                 Content::Stderr(out) => todo!(),
    ///             }
    ///         }
    ///     }
    /// }
    /// # #[cfg(not(feature = "tokio"))]
    /// # fn stream() {}
    /// ```
    pub async fn execute_stream<I: AsyncRead + Unpin>(
        &mut self, request: Request<'_, I>,
    ) -> ClientResult<ResponseStream<&mut S>> {
        self.send_request(request).await?;
        Ok(ResponseStream::new(&mut self.stream, REQUEST_ID))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S, KeepAlive> {
    /// amqp-agent patch: sends a request whose body is in memory, encoded into one buffer and
    /// written with one `write_all` (for a body over [`PIECE`], one per piece of that size, so
    /// a large body is never held twice), and returns the response stream as
    /// [`Client::execute_stream`] does. The records are those `execute_stream` sends for the
    /// same params and body (params records of whole pairs, an empty params record, stdin
    /// records of at most 65,535 bytes, an empty stdin record), except that the body is cut
    /// into full records from its start instead of a first 4 KiB one. `execute_stream` reads the
    /// body into a zeroed 64 KiB buffer and writes each record in three writes, so a batch
    /// request of about 60 KB took two `sendto` calls and two copies of its body; this takes
    /// one of each.
    ///
    /// The params are name and value pairs, sent in their order, as given (patch 9): no
    /// `Params` map is built (it hashed every name with SipHash and allocated its table for
    /// each request). The caller gives each name once.
    pub async fn execute_stream_pairs<'p>(
        &mut self, params: impl IntoIterator<Item = (&'p str, &'p str)>, body: &[u8],
    ) -> ClientResult<ResponseStream<&mut S>> {
        let pairs = ParamPairs::from_pairs(params);
        let mut request = Encoded::new(REQUEST_ID, true, pairs, body, PIECE)?;
        while let Some(piece) = request.next_piece() {
            self.stream.write_all(piece).await?;
        }
        self.stream.flush().await?;
        Ok(ResponseStream::new(&mut self.stream, REQUEST_ID))
    }
}

/// amqp-agent patch: the most stdin content [`Encoded`] puts in one piece (four full records).
pub(crate) const PIECE: usize = 4 * MAX_LENGTH;

/// amqp-agent patch: the records of one request, in order, in pieces: the first holds the
/// begin request and params records, and each holds at most `piece` bytes of stdin content
/// (whole records); the last ends with the empty stdin record.
pub(crate) struct Encoded<'b> {
    id: u16,
    body: &'b [u8],
    piece: usize,
    buf: Vec<u8>,
    started: bool,
    done: bool,
}

impl<'b> Encoded<'b> {
    pub(crate) fn new(
        id: u16, keep_conn: bool, params: ParamPairs<'_>, body: &'b [u8], piece: usize,
    ) -> ClientResult<Self> {
        let piece = piece.max(MAX_LENGTH) / MAX_LENGTH * MAX_LENGTH;
        let records = params.to_records()?;
        let content = body.len().min(piece);
        let capacity = (3 + records.len() + content.div_ceil(MAX_LENGTH)) * (HEADER_LEN + 7)
            + 8
            + records.iter().map(Vec::len).sum::<usize>()
            + content;
        let mut buf = Vec::with_capacity(capacity);
        let begin = BeginRequest::new(Role::Responder, keep_conn).bytes();
        Header::encode_record(RequestType::BeginRequest, id, &begin, &mut buf);
        for record in &records {
            Header::encode_record(RequestType::Params, id, record, &mut buf);
        }
        Header::encode_record(RequestType::Params, id, &[], &mut buf);
        Ok(Self {
            id,
            body,
            piece,
            buf,
            started: false,
            done: false,
        })
    }

    /// The next piece, `None` once the last has been given.
    pub(crate) fn next_piece(&mut self) -> Option<&[u8]> {
        if self.done {
            return None;
        }
        if self.started {
            self.buf.clear();
        }
        self.started = true;
        let (now, rest) = self.body.split_at(self.body.len().min(self.piece));
        for chunk in now.chunks(MAX_LENGTH) {
            Header::encode_record(RequestType::Stdin, self.id, chunk, &mut self.buf);
        }
        self.body = rest;
        if rest.is_empty() {
            Header::encode_record(RequestType::Stdin, self.id, &[], &mut self.buf);
            self.done = true;
        }
        Some(&self.buf)
    }
}

/// amqp-agent patch: every record of one request, in order, in one buffer (the pieces of
/// [`Encoded`] joined).
#[cfg(test)]
pub(crate) fn encode_request(
    id: u16, keep_conn: bool, params: Params<'_>, body: &[u8], piece: usize,
) -> ClientResult<(Vec<u8>, usize)> {
    let mut encoded = Encoded::new(id, keep_conn, ParamPairs::new(params), body, piece)?;
    let (mut out, mut pieces) = (Vec::new(), 0);
    while let Some(p) = encoded.next_piece() {
        out.extend_from_slice(p);
        pieces += 1;
    }
    Ok((out, pieces))
}

impl<S: AsyncRead + AsyncWrite + Unpin, M: Mode> Client<S, M> {
    /// Internal method to execute a request and return a complete response.
    ///
    /// # Arguments
    ///
    /// * `request` - The request to execute
    async fn inner_execute<I: AsyncRead + Unpin>(
        &mut self, request: Request<'_, I>,
    ) -> ClientResult<Response> {
        self.send_request(request).await?;
        handle_response(&mut self.stream, REQUEST_ID).await
    }

    /// Sends a complete request, using the `FCGI_KEEP_CONN` flag of the
    /// connection mode `M`.
    ///
    /// This is the only place where the connection mode is observed; everything
    /// else in the protocol handling is mode agnostic.
    ///
    /// # Arguments
    ///
    /// * `request` - The request to send
    async fn send_request<I: AsyncRead + Unpin>(
        &mut self, request: Request<'_, I>,
    ) -> ClientResult<()> {
        handle_request(
            &mut self.stream,
            REQUEST_ID,
            M::KEEP_CONN,
            request.params,
            request.stdin,
        )
        .await
    }
}

/// Handles the complete request process.
///
/// # Arguments
/// * `stream` - The stream to write to
/// * `id` - The request ID
/// * `keep_conn` - Value of the `FCGI_KEEP_CONN` flag
/// * `params` - The request parameters
/// * `body` - The request body stream
async fn handle_request<S: AsyncWrite + Unpin, I: AsyncRead + Unpin>(
    stream: &mut S, id: u16, keep_conn: bool, params: Params<'_>, mut body: I,
) -> ClientResult<()> {
    handle_request_start(stream, id, keep_conn).await?;
    handle_request_params(stream, id, params).await?;
    handle_request_body(stream, id, &mut body).await?;
    handle_request_flush(stream).await?;
    Ok(())
}

/// Handles the start of a request by sending the begin request record.
///
/// # Arguments
///
/// * `stream` - The stream to write to
/// * `id` - The request ID
/// * `keep_conn` - Value of the `FCGI_KEEP_CONN` flag
async fn handle_request_start<S: AsyncWrite + Unpin>(
    stream: &mut S, id: u16, keep_conn: bool,
) -> ClientResult<()> {
    debug!(id, "Start handle request");

    let begin_request_rec = BeginRequestRec::new(id, Role::Responder, keep_conn).await?;

    debug!(id, ?begin_request_rec, "Send to stream.");

    begin_request_rec.write_to_stream(stream).await?;

    Ok(())
}

/// Handles sending request parameters to the stream.
///
/// # Arguments
///
/// * `stream` - The stream to write to
/// * `id` - The request ID
/// * `params` - The request parameters
async fn handle_request_params<S: AsyncWrite + Unpin>(
    stream: &mut S, id: u16, params: Params<'_>,
) -> ClientResult<()> {
    let param_pairs = ParamPairs::new(params);
    debug!(id, ?param_pairs, "Params will be sent.");

    // amqp-agent patch: one record per group of whole pairs (see `ParamPairs::to_records`).
    for record in param_pairs.to_records()? {
        let header = Header::new(RequestType::Params, id, &record);
        debug!(id, ?header, "Send to stream for Params.");
        header.write_to_stream(stream, &record).await?;
    }

    Header::write_to_stream_batches(
        RequestType::Params,
        id,
        stream,
        &mut io::empty(),
        Some(|header| {
            debug!(id, ?header, "Send to stream for Params.");
            header
        }),
    )
    .await?;

    Ok(())
}

/// Handles sending the request body to the stream.
///
/// # Arguments
///
/// * `stream` - The stream to write to
/// * `id` - The request ID
/// * `body` - The request body stream
async fn handle_request_body<S: AsyncWrite + Unpin, I: AsyncRead + Unpin>(
    stream: &mut S, id: u16, body: &mut I,
) -> ClientResult<()> {
    Header::write_to_stream_batches(
        RequestType::Stdin,
        id,
        stream,
        body,
        Some(|header| {
            debug!(id, ?header, "Send to stream for Stdin.");
            header
        }),
    )
    .await?;

    Header::write_to_stream_batches(
        RequestType::Stdin,
        id,
        stream,
        &mut io::empty(),
        Some(|header| {
            debug!(id, ?header, "Send to stream for Stdin.");
            header
        }),
    )
    .await?;

    Ok(())
}

/// Flushes the stream to ensure all data is sent.
///
/// # Arguments
///
/// * `stream` - The stream to flush
async fn handle_request_flush<S: AsyncWrite + Unpin>(stream: &mut S) -> ClientResult<()> {
    stream.flush().await?;

    Ok(())
}

/// Handles reading and processing the response from the stream.
///
/// # Arguments
///
/// * `stream` - The stream to read from
/// * `id` - The request ID to match
async fn handle_response<S: AsyncRead + Unpin>(stream: &mut S, id: u16) -> ClientResult<Response> {
    let mut response = Response::default();

    let mut stderr = Vec::new();
    let mut stdout = Vec::new();

    loop {
        let header = Header::new_from_stream(stream).await?;
        if header.request_id != id {
            return Err(ClientError::ResponseNotFound { id });
        }
        debug!(id, ?header, "Receive from stream.");

        match header.r#type {
            RequestType::Stdout => {
                stdout.extend(header.read_content_from_stream(stream).await?);
            }
            RequestType::Stderr => {
                stderr.extend(header.read_content_from_stream(stream).await?);
            }
            RequestType::EndRequest => {
                let end_request_rec = EndRequestRec::from_header(&header, stream).await?;
                debug!(id, ?end_request_rec, "Receive from stream.");

                end_request_rec
                    .end_request
                    .protocol_status
                    .convert_to_client_result(end_request_rec.end_request.app_status)?;

                response.stdout = if stdout.is_empty() {
                    None
                } else {
                    Some(stdout)
                };
                response.stderr = if stderr.is_empty() {
                    None
                } else {
                    Some(stderr)
                };

                return Ok(response);
            }
            r#type => {
                return Err(ClientError::UnknownRequestType {
                    request_type: r#type,
                });
            }
        }
    }
}

/// amqp-agent patch: `encode_request` against the records `handle_request` writes.
#[cfg(test)]
mod amqp_agent_patch_tests {
    use super::*;
    use std::{
        future::Future,
        task::{Context, Poll, Waker},
    };

    /// Runs a future that never waits (writes into a `Vec`, reads from a `Cursor`).
    fn now<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("a write into a Vec waited"),
        }
    }

    fn params() -> Params<'static> {
        Params::default()
            .custom("SCRIPT_FILENAME", "/srv/app/public/index.php")
            .custom("REQUEST_METHOD", "POST")
            .custom("HTTP_X_AGENT_HEADERS", "{\"type\":\"App\\\\Event\"}")
            .custom("EMPTY", "")
    }

    /// The records of a request, read as the FastCGI spec lays them out: (type, request id,
    /// content); checks the version, the padding to a multiple of 8 and that nothing is left.
    fn records(mut bytes: &[u8]) -> Vec<(u8, u16, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert!(bytes.len() >= 8, "a cut header");
            assert_eq!(bytes[0], 1, "version");
            let id = u16::from_be_bytes([bytes[2], bytes[3]]);
            let len = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
            let pad = usize::from(bytes[6]);
            assert_eq!((len + pad) % 8, 0, "padded to 8");
            assert!(pad < 8);
            out.push((bytes[1], id, bytes[8..8 + len].to_vec()));
            assert!(bytes[8 + len..8 + len + pad].iter().all(|&b| b == 0));
            bytes = &bytes[8 + len + pad..];
        }
        out
    }

    /// Each record type's contents joined, in the order the types first appear, and where each
    /// type's records end with an empty one.
    fn streams(records: &[(u8, u16, Vec<u8>)]) -> Vec<(u8, Vec<u8>)> {
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        for (kind, id, content) in records {
            assert_eq!(*id, REQUEST_ID);
            match out.last_mut() {
                Some((k, joined)) if k == kind => joined.extend_from_slice(content),
                _ => out.push((*kind, content.clone())),
            }
        }
        out
    }

    #[test]
    fn a_request_in_memory_is_the_records_execute_stream_sends() {
        for len in [
            0,
            1,
            7,
            8,
            9,
            4095,
            4096,
            4097,
            65534,
            65535,
            65536,
            65537,
            131070,
            200_001,
            PIECE - 1,
            PIECE,
            PIECE + 1,
            3 * PIECE + 17,
        ] {
            let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let p = params();
            let mut sent = Vec::new();
            now(handle_request(
                &mut sent,
                REQUEST_ID,
                true,
                p.clone(),
                io::Cursor::new(body.clone()),
            ))
            .unwrap();
            let (ours, pieces) = encode_request(REQUEST_ID, true, p.clone(), &body, PIECE).unwrap();
            assert_eq!(pieces, len.div_ceil(PIECE).max(1), "body of {len} bytes");
            // Pieces of one record each join to the same bytes.
            let (small, small_pieces) =
                encode_request(REQUEST_ID, true, p, &body, MAX_LENGTH).unwrap();
            assert_eq!(small, ours);
            assert_eq!(small_pieces, len.div_ceil(MAX_LENGTH).max(1));
            if len == 0 {
                // For an empty body the original sends its empty stdin record twice (once for
                // the body, once to end it); the second is left over in the connection after
                // the request has ended. This sends it once.
                let (once, again) = sent.split_at(sent.len() - 8);
                assert_eq!(again, &once[once.len() - 8..]);
                assert_eq!(ours, once);
                continue;
            }
            if len <= 4096 {
                // Up to the original's first chunk, the very same bytes.
                assert_eq!(ours, sent, "body of {len} bytes");
            }
            let (a, b) = (records(&ours), records(&sent));
            assert_eq!(streams(&a), streams(&b), "body of {len} bytes");
            assert_eq!(a[0], b[0], "the begin request record");
            // Stdin in full records from its start, then the empty one that ends it.
            let stdin: Vec<usize> = a
                .iter()
                .filter(|r| r.0 == RequestType::Stdin as u8)
                .map(|r| r.2.len())
                .collect();
            let mut expected: Vec<usize> = body.chunks(MAX_LENGTH).map(<[u8]>::len).collect();
            expected.push(0);
            assert_eq!(stdin, expected, "body of {len} bytes");
            assert_eq!(a.last().unwrap().0, RequestType::Stdin as u8);
        }
    }

    /// FastCGI name-value pairs as the spec lays them out: each length in one byte below 128,
    /// else in four with the high bit set.
    fn pairs_of(mut content: &[u8]) -> Vec<(String, String)> {
        fn len(c: &mut &[u8]) -> usize {
            if c[0] < 128 {
                let n = usize::from(c[0]);
                *c = &c[1..];
                n
            } else {
                let n = u32::from_be_bytes([c[0] & 0x7f, c[1], c[2], c[3]]) as usize;
                *c = &c[4..];
                n
            }
        }
        let mut out = Vec::new();
        while !content.is_empty() {
            let (n, v) = (len(&mut content), len(&mut content));
            let name = String::from_utf8(content[..n].to_vec()).unwrap();
            let value = String::from_utf8(content[n..n + v].to_vec()).unwrap();
            content = &content[n + v..];
            out.push((name, value));
        }
        out
    }

    #[test]
    fn pairs_go_in_their_order_and_as_params_would() {
        use crate::conn::KeepAlive;
        let long = "v".repeat(300);
        let pairs = [
            ("SCRIPT_FILENAME", "/srv/app/public/index.php"),
            ("REQUEST_METHOD", "POST"),
            ("EMPTY", ""),
            ("HTTP_X_AGENT_HEADERS", long.as_str()),
        ];
        let body = b"{\"a\":1}";
        let mut client: Client<io::Cursor<Vec<u8>>, KeepAlive> =
            Client::from_stream(io::Cursor::new(Vec::new()));
        drop(now(client.execute_stream_pairs(pairs, body)).unwrap());
        let ours = records(client.stream.get_ref());
        // Without the three defaults `Params::default` adds (amqp-agent's params set all three).
        let mut by_map = Params::default();
        by_map.clear();
        for (n, v) in pairs {
            by_map = by_map.custom(n, v);
        }
        let (theirs, _) = encode_request(REQUEST_ID, true, by_map, body, PIECE).unwrap();
        let theirs = records(&theirs);
        let params = |r: &[(u8, u16, Vec<u8>)]| {
            let content: Vec<u8> = r
                .iter()
                .filter(|r| r.0 == RequestType::Params as u8)
                .flat_map(|r| r.2.clone())
                .collect();
            pairs_of(&content)
        };
        let expected: Vec<(String, String)> =
            pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        assert_eq!(params(&ours), expected, "in the order given");
        let mut map_order = params(&theirs);
        map_order.sort();
        let mut sorted = expected.clone();
        sorted.sort();
        assert_eq!(map_order, sorted, "the same pairs as a Params map sends");
        // Everything else, record by record: begin request, the params' end, stdin.
        let others = |r: &[(u8, u16, Vec<u8>)]| -> Vec<(u8, u16, Vec<u8>)> {
            r.iter()
                .filter(|r| r.0 != RequestType::Params as u8 || r.2.is_empty())
                .cloned()
                .collect()
        };
        assert_eq!(others(&ours), others(&theirs));
    }

    #[test]
    fn a_keep_alive_flag_and_a_pair_too_large_are_as_in_execute_stream() {
        let p = params();
        let (short, _) = encode_request(REQUEST_ID, false, p.clone(), b"x", PIECE).unwrap();
        let mut sent = Vec::new();
        now(handle_request(
            &mut sent,
            REQUEST_ID,
            false,
            p,
            io::Cursor::new(b"x".to_vec()),
        ))
        .unwrap();
        assert_eq!(short, sent);
        let big = Params::default().custom("BIG", "x".repeat(crate::MAX_PARAMS_RECORD));
        assert!(matches!(
            encode_request(REQUEST_ID, true, big, b"", PIECE),
            Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidInput
        ));
    }
}
