//! A raw AMQP 0-9-1 publisher, written frame by frame: it sends what a client library would
//! clean or refuse (bytes that are not UTF-8 in short strings, headers that fill `frame_max`,
//! any property combination), as a careless publisher or an attacker would.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A minimal AMQP 0-9-1 publisher: PLAIN login as guest, one channel in confirm mode.
pub struct RawPublisher {
    stream: TcpStream,
    /// The negotiated `frame_max`.
    pub frame_max: u32,
}

/// Appends a short string.
pub fn short(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).unwrap());
    out.extend_from_slice(s.as_bytes());
}

impl RawPublisher {
    pub async fn connect() -> Self {
        let stream = TcpStream::connect("127.0.0.1:5672").await.unwrap();
        let mut p = Self {
            stream,
            frame_max: 0,
        };
        p.stream.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        p.expect_method(0, 10, 10).await; // connection.start
        let mut start_ok = vec![0, 0, 0, 0]; // client-properties: empty table
        short(&mut start_ok, "PLAIN");
        let response = b"\0guest\0guest";
        start_ok.extend_from_slice(&u32::try_from(response.len()).unwrap().to_be_bytes());
        start_ok.extend_from_slice(response);
        short(&mut start_ok, "en_US");
        p.send_method(0, 10, 11, &start_ok).await;
        let tune = p.expect_method(0, 10, 30).await;
        p.frame_max = u32::from_be_bytes(tune[2..6].try_into().unwrap());
        let mut tune_ok = tune[..6].to_vec();
        tune_ok.extend_from_slice(&[0, 0]); // no heartbeats
        p.send_method(0, 10, 31, &tune_ok).await;
        let mut open = Vec::new();
        short(&mut open, "/");
        short(&mut open, "");
        open.push(0);
        p.send_method(0, 10, 40, &open).await;
        p.expect_method(0, 10, 41).await;
        p.send_method(1, 20, 10, &[0]).await; // channel.open
        p.expect_method(1, 20, 11).await;
        p.send_method(1, 85, 10, &[0]).await; // confirm.select
        p.expect_method(1, 85, 11).await;
        p
    }

    async fn send_frame(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        let mut frame = vec![kind];
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(0xCE);
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn send_method(&mut self, channel: u16, class: u16, method: u16, args: &[u8]) {
        let mut payload = class.to_be_bytes().to_vec();
        payload.extend_from_slice(&method.to_be_bytes());
        payload.extend_from_slice(args);
        self.send_frame(1, channel, &payload).await;
    }

    /// Reads frames until a method frame arrives; it must be `class.method` on `channel`.
    async fn expect_method(&mut self, channel: u16, class: u16, method: u16) -> Vec<u8> {
        let (got_channel, got_class, got_method, args) = self.next_method().await;
        assert_eq!(
            (got_channel, got_class, got_method),
            (channel, class, method),
            "unexpected method from RabbitMQ: {:?}",
            String::from_utf8_lossy(&args)
        );
        args
    }

    /// Publishes to `queue` with `headers` (an encoded field table) and `message_id`, and waits
    /// for the broker's confirm.
    pub async fn publish(&mut self, queue: &str, headers: &[u8], message_id: &str, body: &[u8]) {
        let mut publish = vec![0, 0];
        short(&mut publish, "");
        short(&mut publish, queue);
        publish.push(0);
        self.send_method(1, 60, 40, &publish).await;
        let header = content_header(headers, message_id, body.len());
        assert!(
            header.len() + 8 <= self.frame_max as usize,
            "content header of {} bytes over frame_max {}",
            header.len() + 8,
            self.frame_max
        );
        self.send_frame(2, 1, &header).await;
        self.send_frame(3, 1, body).await;
        self.expect_method(1, 60, 80).await; // basic.ack
    }
}

/// The payload of a content-header frame: headers, delivery mode 2, message id.
pub fn content_header(headers: &[u8], message_id: &str, body_len: usize) -> Vec<u8> {
    let mut out = 60u16.to_be_bytes().to_vec();
    out.extend_from_slice(&[0, 0]); // weight
    out.extend_from_slice(&(body_len as u64).to_be_bytes());
    out.extend_from_slice(&((1u16 << 13) | (1 << 12) | (1 << 7)).to_be_bytes());
    out.extend_from_slice(headers);
    out.push(2);
    short(&mut out, message_id);
    out
}

impl RawPublisher {
    /// Publishes a content header made of `flags` and the encoded property list `props` (in the
    /// order of the AMQP spec), and `body`, to `queue` on the default exchange. `Ok` once the
    /// broker confirmed it, `Err` with the broker's close text when it closed the channel or
    /// the connection instead.
    pub async fn publish_raw(
        &mut self,
        queue: &str,
        flags: u16,
        props: &[u8],
        body: &[u8],
    ) -> Result<(), String> {
        let mut publish = vec![0, 0];
        short(&mut publish, "");
        short(&mut publish, queue);
        publish.push(0);
        self.send_method(1, 60, 40, &publish).await;
        let mut header = 60u16.to_be_bytes().to_vec();
        header.extend_from_slice(&[0, 0]);
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend_from_slice(&flags.to_be_bytes());
        header.extend_from_slice(props);
        self.send_frame(2, 1, &header).await;
        if !body.is_empty() {
            self.send_frame(3, 1, body).await;
        }
        let (_, class, method, args) = self.next_method().await;
        match (class, method) {
            (60, 80) => Ok(()),
            _ => Err(String::from_utf8_lossy(&args).into_owned()),
        }
    }

    /// The next method frame's channel, class, method and arguments (heartbeats skipped).
    async fn next_method(&mut self) -> (u16, u16, u16, Vec<u8>) {
        loop {
            let mut head = [0u8; 7];
            self.stream.read_exact(&mut head).await.unwrap();
            let size = u32::from_be_bytes(head[3..7].try_into().unwrap()) as usize;
            let mut payload = vec![0u8; size + 1];
            self.stream.read_exact(&mut payload).await.unwrap();
            payload.pop();
            if head[0] == 1 {
                let channel = u16::from_be_bytes([head[1], head[2]]);
                let class = u16::from_be_bytes([payload[0], payload[1]]);
                let method = u16::from_be_bytes([payload[2], payload[3]]);
                return (channel, class, method, payload[4..].to_vec());
            }
        }
    }
}

/// Property flags of the AMQP basic class, in wire order.
#[allow(dead_code, reason = "the whole table, also the flags no test sets")]
pub mod flag {
    pub const CONTENT_TYPE: u16 = 1 << 15;
    pub const CONTENT_ENCODING: u16 = 1 << 14;
    pub const HEADERS: u16 = 1 << 13;
    pub const DELIVERY_MODE: u16 = 1 << 12;
    pub const PRIORITY: u16 = 1 << 11;
    pub const CORRELATION_ID: u16 = 1 << 10;
    pub const REPLY_TO: u16 = 1 << 9;
    pub const EXPIRATION: u16 = 1 << 8;
    pub const MESSAGE_ID: u16 = 1 << 7;
    pub const TIMESTAMP: u16 = 1 << 6;
    pub const TYPE: u16 = 1 << 5;
    pub const USER_ID: u16 = 1 << 4;
    pub const APP_ID: u16 = 1 << 3;
    pub const CLUSTER_ID: u16 = 1 << 2;
}

/// Appends a short string of raw bytes (which need not be UTF-8).
pub fn short_bytes(out: &mut Vec<u8>, s: &[u8]) {
    out.push(u8::try_from(s.len()).unwrap());
    out.extend_from_slice(s);
}

/// An encoded field table of the given raw entries (each: short-string key, type, value).
pub fn table(entries: &[Vec<u8>]) -> Vec<u8> {
    let content: Vec<u8> = entries.concat();
    let mut out = u32::try_from(content.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(&content);
    out
}

/// One field-table entry: key bytes, type tag, value bytes.
pub fn entry(key: &[u8], kind: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    short_bytes(&mut out, key);
    out.push(kind);
    out.extend_from_slice(value);
    out
}

/// A long-string value (`S`): length then bytes.
pub fn long_string(bytes: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}
