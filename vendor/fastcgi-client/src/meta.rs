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

//! Internal FastCGI protocol metadata structures and parsing.
//!
//! This module contains the internal structures and constants used
//! for parsing and generating FastCGI protocol messages.

use crate::{
    Params,
    error::{ClientError, ClientResult},
    io::{self, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
};
use std::{
    borrow::Cow,
    cmp::min,
    collections::HashMap,
    fmt::{self, Debug, Display},
    mem::size_of,
    ops::{Deref, DerefMut},
};

/// FastCGI protocol version 1
pub(crate) const VERSION_1: u8 = 1;
/// Maximum length for FastCGI content
pub(crate) const MAX_LENGTH: usize = 0xffff;
/// First read buffer of a record stream (amqp-agent patch).
const FIRST_CHUNK: usize = 4096;
/// Most content bytes of one `FCGI_PARAMS` record (amqp-agent patch). php-fpm parses each
/// params record on its own (`fcgi_read_request`: `fcgi_get_params` per record), so a
/// name-value pair must never be split across two records, and it refuses a record whose
/// content plus padding exceeds 65,535 bytes: 65,528 is the largest 8-aligned length.
pub const MAX_PARAMS_RECORD: usize = 0xfff8;
/// Length of FastCGI header in bytes
pub(crate) const HEADER_LEN: usize = size_of::<Header>();

/// FastCGI request types as defined in the protocol specification.
#[derive(Debug, Clone)]
#[repr(u8)]
pub enum RequestType {
    /// Begin request record type
    BeginRequest = 1,
    /// Abort request record type
    AbortRequest = 2,
    /// End request record type
    EndRequest = 3,
    /// Parameters record type
    Params = 4,
    /// Stdin record type
    Stdin = 5,
    /// Stdout record type
    Stdout = 6,
    /// Stderr record type
    Stderr = 7,
    /// Data record type
    Data = 8,
    /// Get values record type
    GetValues = 9,
    /// Get values result record type
    GetValuesResult = 10,
    /// Unknown type record type
    UnknownType = 11,
}

impl RequestType {
    /// Converts a u8 value to RequestType.
    ///
    /// # Arguments
    ///
    /// * `u` - The numeric value to convert
    fn from_u8(u: u8) -> Self {
        match u {
            1 => RequestType::BeginRequest,
            2 => RequestType::AbortRequest,
            3 => RequestType::EndRequest,
            4 => RequestType::Params,
            5 => RequestType::Stdin,
            6 => RequestType::Stdout,
            7 => RequestType::Stderr,
            8 => RequestType::Data,
            9 => RequestType::GetValues,
            10 => RequestType::GetValuesResult,
            _ => RequestType::UnknownType,
        }
    }
}

impl Display for RequestType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        Display::fmt(&(self.clone() as u8), f)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Header {
    /// FastCGI protocol version
    pub(crate) version: u8,
    /// Type of the FastCGI record
    pub(crate) r#type: RequestType,
    /// Request ID for this record
    pub(crate) request_id: u16,
    /// Length of the content data
    pub(crate) content_length: u16,
    /// Length of padding data
    pub(crate) padding_length: u8,
    /// Reserved byte
    pub(crate) reserved: u8,
}

impl Header {
    /// Writes data to a stream in batches with proper FastCGI headers.
    ///
    /// # Arguments
    ///
    /// * `r#type` - The type of FastCGI record
    /// * `request_id` - The request ID
    /// * `writer` - The writer to write to
    /// * `content` - The content to write
    /// * `before_write` - Optional callback to modify header before writing
    pub(crate) async fn write_to_stream_batches<F, R, W>(
        r#type: RequestType, request_id: u16, writer: &mut W, content: &mut R,
        before_write: Option<F>,
    ) -> io::Result<()>
    where
        F: Fn(Header) -> Header,
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // amqp-agent patch: start small and grow to a full record only for large content; the
        // original zeroed a 64 KiB buffer four times per request (~7% of the agent's CPU).
        let mut buf = vec![0; FIRST_CHUNK];
        let mut had_written = false;

        loop {
            let read = content.read(&mut buf).await?;
            if had_written && read == 0 {
                break;
            }
            let full = read == buf.len();

            let chunk = &buf[..read];
            let mut header = Self::new(r#type.clone(), request_id, chunk);
            if let Some(ref f) = before_write {
                header = f(header);
            }
            header.write_to_stream(writer, chunk).await?;

            had_written = true;
            if full && buf.len() < MAX_LENGTH {
                buf = vec![0; MAX_LENGTH];
            }
        }
        Ok(())
    }

    /// Creates a new header with given parameters.
    ///
    /// # Arguments
    ///
    /// * `r#type` - The type of FastCGI record
    /// * `request_id` - The request ID
    /// * `content` - The content data
    pub(crate) fn new(r#type: RequestType, request_id: u16, content: &[u8]) -> Self {
        let content_length = min(content.len(), MAX_LENGTH) as u16;
        Self {
            version: VERSION_1,
            r#type,
            request_id,
            content_length,
            padding_length: (0u16.wrapping_sub(content_length) & 7) as u8,
            reserved: 0,
        }
    }

    /// amqp-agent patch: the header's bytes as a record starts with them.
    fn bytes(&self) -> [u8; HEADER_LEN] {
        let [i0, i1] = self.request_id.to_be_bytes();
        let [l0, l1] = self.content_length.to_be_bytes();
        [
            self.version,
            self.r#type.clone() as u8,
            i0,
            i1,
            l0,
            l1,
            self.padding_length,
            self.reserved,
        ]
    }

    /// amqp-agent patch: appends the record of `content` (at most `MAX_LENGTH` bytes): this
    /// header, the content and its padding, the bytes `write_to_stream` writes.
    pub(crate) fn encode_record(
        r#type: RequestType, request_id: u16, content: &[u8], out: &mut Vec<u8>,
    ) {
        let header = Self::new(r#type, request_id, content);
        out.extend_from_slice(&header.bytes());
        out.extend_from_slice(&content[..usize::from(header.content_length)]);
        out.resize(out.len() + usize::from(header.padding_length), 0);
    }

    /// Writes the header and content to a stream.
    ///
    /// # Arguments
    ///
    /// * `writer` - The writer to write to
    /// * `content` - The content to write
    pub(crate) async fn write_to_stream<W: AsyncWrite + Unpin>(
        self, writer: &mut W, content: &[u8],
    ) -> io::Result<()> {
        writer.write_all(&self.bytes()).await?;
        writer.write_all(content).await?;
        if self.padding_length != 0 {
            writer
                .write_all(&vec![0; self.padding_length as usize])
                .await?;
        }

        Ok(())
    }

    /// Creates a new header by reading from a stream.
    ///
    /// # Arguments
    ///
    /// * `reader` - The reader to read from
    pub(crate) async fn new_from_stream<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Self> {
        let mut buf: [u8; HEADER_LEN] = [0; HEADER_LEN];
        reader.read_exact(&mut buf).await?;

        Ok(Self::new_from_buf(&buf))
    }

    /// Creates a new header from a buffer.
    ///
    /// # Arguments
    ///
    /// * `buf` - The buffer containing header data
    #[inline]
    pub(crate) fn new_from_buf(buf: &[u8; HEADER_LEN]) -> Self {
        Self {
            version: buf[0],
            r#type: RequestType::from_u8(buf[1]),
            request_id: be_buf_to_u16(&buf[2..4]),
            content_length: be_buf_to_u16(&buf[4..6]),
            padding_length: buf[6],
            reserved: buf[7],
        }
    }

    /// Reads content from a stream based on the header's content length.
    ///
    /// # Arguments
    ///
    /// * `reader` - The reader to read from
    pub(crate) async fn read_content_from_stream<R: AsyncRead + Unpin>(
        &self, reader: &mut R,
    ) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; self.content_length as usize];
        reader.read_exact(&mut buf).await?;
        let mut padding_buf = vec![0; self.padding_length as usize];
        reader.read_exact(&mut padding_buf).await?;
        Ok(buf)
    }
}

/// FastCGI application roles.
#[derive(Debug, Clone, Copy)]
#[repr(u16)]
#[allow(dead_code)]
pub enum Role {
    /// Responder role - handles requests and returns responses
    Responder = 1,
    /// Authorizer role - performs authorization checks
    Authorizer = 2,
    /// Filter role - filters data between web server and application
    Filter = 3,
}

/// Begin request record body data.
#[derive(Debug)]
pub(crate) struct BeginRequest {
    /// The role of the application
    pub(crate) role: Role,
    /// Flags byte (bit 0 = keep alive flag)
    pub(crate) flags: u8,
    /// Reserved bytes
    pub(crate) reserved: [u8; 5],
}

impl BeginRequest {
    /// Creates a new begin request record.
    ///
    /// # Arguments
    ///
    /// * `role` - The role of the application
    /// * `keep_alive` - Whether to keep the connection alive
    pub(crate) fn new(role: Role, keep_alive: bool) -> Self {
        Self {
            role,
            flags: keep_alive as u8,
            reserved: [0; 5],
        }
    }

    /// Converts the begin request to bytes.
    pub(crate) async fn to_content(&self) -> io::Result<Vec<u8>> {
        Ok(self.bytes().to_vec())
    }

    /// amqp-agent patch: the begin request's 8 bytes (role, flags, reserved), synchronously.
    pub(crate) fn bytes(&self) -> [u8; 8] {
        let [r0, r1] = (self.role as u16).to_be_bytes();
        let [a, b, c, d, e] = self.reserved;
        [r0, r1, self.flags, a, b, c, d, e]
    }
}

/// Complete begin request record with header and content.
pub(crate) struct BeginRequestRec {
    /// The FastCGI header
    pub(crate) header: Header,
    /// The begin request data
    pub(crate) begin_request: BeginRequest,
    /// The serialized content
    pub(crate) content: Vec<u8>,
}

impl BeginRequestRec {
    /// Creates a new begin request record.
    ///
    /// # Arguments
    ///
    /// * `request_id` - The request ID
    /// * `role` - The role of the application
    /// * `keep_alive` - Whether to keep the connection alive
    pub(crate) async fn new(request_id: u16, role: Role, keep_alive: bool) -> io::Result<Self> {
        let begin_request = BeginRequest::new(role, keep_alive);
        let content = begin_request.to_content().await?;
        let header = Header::new(RequestType::BeginRequest, request_id, &content);
        Ok(Self {
            header,
            begin_request,
            content,
        })
    }

    /// Writes the begin request record to a stream.
    ///
    /// # Arguments
    ///
    /// * `writer` - The writer to write to
    pub(crate) async fn write_to_stream<W: AsyncWrite + Unpin>(
        self, writer: &mut W,
    ) -> io::Result<()> {
        self.header.write_to_stream(writer, &self.content).await
    }
}

impl Debug for BeginRequestRec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        Debug::fmt(
            &format!(
                "BeginRequestRec {{header: {:?}, begin_request: {:?}}}",
                self.header, self.begin_request
            ),
            f,
        )
    }
}

/// Parameter length encoding for FastCGI.
#[derive(Debug, Clone, Copy)]
pub enum ParamLength {
    /// Short length (0-127 bytes)
    Short(u8),
    /// Long length (128+ bytes)
    Long(u32),
}

impl ParamLength {
    /// Creates a new parameter length encoding.
    ///
    /// # Arguments
    ///
    /// * `length` - The length to encode
    pub fn new(length: usize) -> Self {
        if length < 128 {
            ParamLength::Short(length as u8)
        } else {
            let mut length = length;
            length |= 1 << 31;
            ParamLength::Long(length as u32)
        }
    }

    /// Appends the encoded length to `buf` (amqp-agent patch: no allocation).
    fn encode_into(self, buf: &mut Vec<u8>) {
        match self {
            ParamLength::Short(l) => buf.push(l),
            ParamLength::Long(l) => buf.extend_from_slice(&l.to_be_bytes()),
        }
    }

    /// Encoded size in bytes.
    fn encoded_len(self) -> usize {
        match self {
            ParamLength::Short(_) => 1,
            ParamLength::Long(_) => 4,
        }
    }
}

/// A single parameter name-value pair.
#[derive(Debug)]
pub struct ParamPair<'a> {
    /// Length of the parameter name
    name_length: ParamLength,
    /// Length of the parameter value
    value_length: ParamLength,
    /// The parameter name
    name_data: Cow<'a, str>,
    /// The parameter value
    value_data: Cow<'a, str>,
}

impl<'a> ParamPair<'a> {
    /// Creates a new parameter pair.
    ///
    /// # Arguments
    ///
    /// * `name` - The parameter name
    /// * `value` - The parameter value
    fn new(name: Cow<'a, str>, value: Cow<'a, str>) -> Self {
        let name_length = ParamLength::new(name.len());
        let value_length = ParamLength::new(value.len());
        Self {
            name_length,
            value_length,
            name_data: name,
            value_data: value,
        }
    }

    /// Appends the encoded pair to `buf` (amqp-agent patch: the original wrote the two
    /// lengths, each in a fresh `Vec`, and the name and value through four async `write_all`).
    fn encode_into(&self, buf: &mut Vec<u8>) {
        self.name_length.encode_into(buf);
        self.value_length.encode_into(buf);
        buf.extend_from_slice(self.name_data.as_bytes());
        buf.extend_from_slice(self.value_data.as_bytes());
    }

    fn encoded_len(&self) -> usize {
        self.name_length.encoded_len()
            + self.value_length.encoded_len()
            + self.name_data.len()
            + self.value_data.len()
    }
}

/// Collection of parameter pairs.
#[derive(Debug)]
pub(crate) struct ParamPairs<'a>(Vec<ParamPair<'a>>);

impl<'a> ParamPairs<'a> {
    /// Creates parameter pairs from a Params object.
    ///
    /// # Arguments
    ///
    /// * `params` - The parameters to convert
    pub(crate) fn new(params: Params<'a>) -> Self {
        let params: HashMap<Cow<'a, str>, Cow<'a, str>> = params.into();
        let mut param_pairs = Vec::with_capacity(params.len());
        for (name, value) in params.into_iter() {
            let param_pair = ParamPair::new(name, value);
            param_pairs.push(param_pair);
        }

        Self(param_pairs)
    }

    /// amqp-agent patch: pairs in the order given, without a `Params` map.
    pub(crate) fn from_pairs<'p: 'a>(pairs: impl IntoIterator<Item = (&'p str, &'p str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(name, value)| ParamPair::new(Cow::Borrowed(name), Cow::Borrowed(value)))
                .collect(),
        )
    }

    /// amqp-agent patch: the contents of the `FCGI_PARAMS` records, each holding whole pairs
    /// and at most [`MAX_PARAMS_RECORD`] bytes (the original cut the encoded pairs every 4 KiB
    /// and 64 KiB, splitting a pair across records, and php-fpm reset the connection).
    ///
    /// # Errors
    /// `InvalidInput` when one pair alone is larger than a record can hold.
    pub(crate) fn to_records(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut current: Vec<u8> = Vec::new();
        for pair in self.iter() {
            let len = pair.encoded_len();
            if len > MAX_PARAMS_RECORD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "FastCGI param {} is {len} bytes encoded; one params record holds at most {MAX_PARAMS_RECORD}",
                        pair.name_data
                    ),
                ));
            }
            if current.len() + len > MAX_PARAMS_RECORD {
                records.push(std::mem::take(&mut current));
            }
            if current.is_empty() {
                current.reserve_exact(
                    self.iter()
                        .map(ParamPair::encoded_len)
                        .sum::<usize>()
                        .min(MAX_PARAMS_RECORD),
                );
            }
            pair.encode_into(&mut current);
        }
        if !current.is_empty() {
            records.push(current);
        }
        Ok(records)
    }

    /// Converts the parameter pairs to bytes.
    #[cfg(test)]
    pub(crate) async fn to_content(&self) -> io::Result<Vec<u8>> {
        // amqp-agent patch: one allocation of the exact size, encoded synchronously.
        let mut buf: Vec<u8> = Vec::with_capacity(self.iter().map(ParamPair::encoded_len).sum());

        for param_pair in self.iter() {
            param_pair.encode_into(&mut buf);
        }

        Ok(buf)
    }
}

impl<'a> Deref for ParamPairs<'a> {
    type Target = Vec<ParamPair<'a>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for ParamPairs<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// FastCGI protocol status codes.
#[derive(Debug)]
#[repr(u8)]
pub enum ProtocolStatus {
    /// Request completed successfully
    RequestComplete = 0,
    /// This app can't multiplex connections
    CantMpxConn = 1,
    /// New request rejected; too busy
    Overloaded = 2,
    /// Role value not known
    UnknownRole = 3,
}

impl ProtocolStatus {
    /// Converts a u8 value to ProtocolStatus.
    ///
    /// # Arguments
    ///
    /// * `u` - The numeric value to convert
    pub fn from_u8(u: u8) -> Self {
        match u {
            0 => ProtocolStatus::RequestComplete,
            1 => ProtocolStatus::CantMpxConn,
            2 => ProtocolStatus::Overloaded,
            _ => ProtocolStatus::UnknownRole,
        }
    }

    /// Converts the protocol status to a client result.
    ///
    /// # Arguments
    ///
    /// * `app_status` - The application status code
    pub(crate) fn convert_to_client_result(self, app_status: u32) -> ClientResult<()> {
        match self {
            ProtocolStatus::RequestComplete => Ok(()),
            _ => Err(ClientError::new_end_request_with_protocol_status(
                self, app_status,
            )),
        }
    }
}

/// End request record body data.
#[derive(Debug)]
pub struct EndRequest {
    /// The application status code
    pub(crate) app_status: u32,
    /// The protocol status
    pub(crate) protocol_status: ProtocolStatus,
    /// Reserved bytes
    #[allow(dead_code)]
    reserved: [u8; 3],
}

/// Complete end request record with header and content.
#[derive(Debug)]
pub(crate) struct EndRequestRec {
    /// The FastCGI header
    #[allow(dead_code)]
    header: Header,
    /// The end request data
    pub(crate) end_request: EndRequest,
}

impl EndRequestRec {
    /// Creates an end request record from a header and reader.
    ///
    /// # Arguments
    ///
    /// * `header` - The FastCGI header
    /// * `reader` - The reader to read content from
    pub(crate) async fn from_header<R: AsyncRead + Unpin>(
        header: &Header, reader: &mut R,
    ) -> ClientResult<Self> {
        let header = header.clone();
        let content = &*header.read_content_from_stream(reader).await?;
        Self::new_from_buf(header, content)
    }

    /// Creates an end request record from a header and buffer.
    ///
    /// # Arguments
    ///
    /// * `header` - The FastCGI header
    /// * `buf` - The buffer containing the end request data
    ///
    /// amqp-agent patch: a record shorter than its 8-byte body is an error. The original
    /// indexed `buf[0..8]` and panicked on a short record from the server.
    pub(crate) fn new_from_buf(header: Header, buf: &[u8]) -> ClientResult<Self> {
        let Some(body) = buf.first_chunk::<8>() else {
            return Err(ClientError::MalformedEndRequest { length: buf.len() });
        };
        let app_status = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let protocol_status = ProtocolStatus::from_u8(body[4]);
        let reserved = [body[5], body[6], body[7]];
        Ok(Self {
            header,
            end_request: EndRequest {
                app_status,
                protocol_status,
                reserved,
            },
        })
    }
}

/// Converts big-endian bytes to u16.
///
/// # Arguments
///
/// * `buf` - The buffer containing the bytes
fn be_buf_to_u16(buf: &[u8]) -> u16 {
    u16::from_be_bytes(<[u8; 2]>::try_from(buf).unwrap())
}

#[cfg(test)]
mod amqp_agent_patch_tests {
    use super::*;

    /// The encoding of the FastCGI spec (section 3.4): 1-byte lengths below 128, else 4 bytes
    /// with the high bit set; then name, then value.
    fn reference(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in pairs {
            for len in [name.len(), value.len()] {
                if len < 128 {
                    out.push(len as u8);
                } else {
                    out.extend_from_slice(&((len as u32) | (1 << 31)).to_be_bytes());
                }
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    #[test]
    fn pairs_encode_as_the_spec_says() {
        let long = "x".repeat(300);
        let pairs = [("SHORT", "v"), ("LONG_VALUE", long.as_str()), ("EMPTY", "")];
        let encoded = ParamPairs(
            pairs
                .iter()
                .map(|(n, v)| ParamPair::new(Cow::Borrowed(*n), Cow::Borrowed(*v)))
                .collect(),
        );
        let content = futures_util::FutureExt::now_or_never(encoded.to_content())
            .unwrap()
            .unwrap();
        assert_eq!(content, reference(&pairs));
        assert_eq!(content.capacity(), content.len());
    }

    fn pairs(list: &[(String, String)]) -> ParamPairs<'static> {
        ParamPairs(
            list.iter()
                .map(|(n, v)| ParamPair::new(Cow::Owned(n.clone()), Cow::Owned(v.clone())))
                .collect(),
        )
    }

    /// Decodes one record's content into pairs, as php-fpm's `fcgi_get_params` does: a pair
    /// that runs past the record's end is an error.
    fn decode_record(mut content: &[u8]) -> Result<Vec<(String, String)>, String> {
        fn len(input: &mut &[u8]) -> Result<usize, String> {
            let first = *input.first().ok_or("length past the record")?;
            if first < 128 {
                *input = &input[1..];
                Ok(usize::from(first))
            } else {
                let bytes: [u8; 4] = input
                    .get(..4)
                    .ok_or("length past the record")?
                    .try_into()
                    .unwrap();
                *input = &input[4..];
                Ok((u32::from_be_bytes(bytes) & 0x7fff_ffff) as usize)
            }
        }
        let mut out = Vec::new();
        while !content.is_empty() {
            let n = len(&mut content)?;
            let v = len(&mut content)?;
            if content.len() < n + v {
                return Err(format!("pair of {} bytes split at the record end", n + v));
            }
            out.push((
                String::from_utf8(content[..n].to_vec()).unwrap(),
                String::from_utf8(content[n..n + v].to_vec()).unwrap(),
            ));
            content = &content[n + v..];
        }
        Ok(out)
    }

    #[test]
    fn records_never_split_a_pair_and_fit_php_fpm() {
        // Sizes around the old 4 KiB and 64 KiB cuts, and many pairs that add up past 64 KiB.
        for size in [0, 1, 127, 128, 4_000, 4_090, 4_096, 8_192, 65_000, 65_500] {
            let list: Vec<(String, String)> = vec![
                ("SCRIPT_FILENAME".into(), "/srv/app.php".into()),
                ("HTTP_X_AGENT_HEADERS".into(), "h".repeat(size)),
                ("HTTP_X_AGENT_MESSAGE_ID".into(), "m".repeat(size / 3)),
                ("REQUEST_METHOD".into(), "POST".into()),
            ];
            let records = pairs(&list).to_records().unwrap();
            let mut decoded = Vec::new();
            for record in &records {
                assert!(!record.is_empty());
                assert!(record.len() <= MAX_PARAMS_RECORD, "{} bytes", record.len());
                let header = Header::new(RequestType::Params, 1, record);
                assert!(
                    usize::from(header.content_length) + usize::from(header.padding_length)
                        <= 0xffff
                );
                decoded
                    .extend(decode_record(record).unwrap_or_else(|e| panic!("size {size}: {e}")));
            }
            let mut expected = list.clone();
            expected.sort();
            decoded.sort();
            assert_eq!(decoded, expected, "size {size}");
        }
        let many: Vec<(String, String)> = (0..40)
            .map(|i| (format!("P{i}"), "v".repeat(3_000)))
            .collect();
        let records = pairs(&many).to_records().unwrap();
        assert_eq!(records.len(), 2, "120 KB of pairs take two records");
        let total: usize = records
            .iter()
            .map(|r| decode_record(r).unwrap().len())
            .sum();
        assert_eq!(total, 40);
    }

    #[test]
    fn a_pair_larger_than_a_record_is_an_error() {
        let list = vec![("BIG".to_string(), "x".repeat(MAX_PARAMS_RECORD))];
        let err = pairs(&list).to_records().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("BIG"), "{err}");
        assert!(pairs(&[]).to_records().unwrap().is_empty());
    }
}
