use crate::parsing::ParsingContext;
use amq_protocol::frame::{
    AMQPFrame, BackToTheBuffer, GenError, GenResult, ParserError, WriteContext, parse_frame,
};
use futures_io::{AsyncRead, AsyncWrite};
use std::{
    cmp,
    io::{self, IoSlice, IoSliceMut},
    pin::Pin,
    task::{Context, Poll},
};

/// amqp-agent patch: the most unread data `Buffer::poll_read_from` moves to the front of the
/// ring before it reads (a frame cut by the previous read, mostly).
const COMPACT_AT_MOST: usize = 16 * 1024;

#[derive(Debug, PartialEq, Clone)]
pub(crate) struct Buffer {
    memory: Vec<u8>,
    capacity: usize,
    position: usize,
    end: usize,
    available_data: usize,
}

pub(crate) struct Checkpoint {
    end: usize,
    backwards: bool,
}

impl Buffer {
    pub(crate) fn with_capacity(capacity: usize) -> Buffer {
        Buffer {
            memory: vec![0; capacity],
            capacity,
            position: 0,
            end: 0,
            available_data: 0,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.position = 0;
        self.end = 0;
        self.available_data = 0;
    }

    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            end: self.end,
            backwards: true,
        }
    }

    pub(crate) fn rollback(&mut self, checkpoint: Checkpoint) {
        if checkpoint.end == self.end {
            return;
        }
        if checkpoint.backwards {
            if self.end > checkpoint.end {
                self.available_data -= self.end - checkpoint.end;
            } else {
                self.available_data -= self.end + (self.capacity - checkpoint.end);
            }
        } else if self.end > checkpoint.end {
            self.available_data += (self.capacity - self.end) + checkpoint.end;
        } else {
            self.available_data += checkpoint.end - self.end;
        }
        self.end = checkpoint.end;
    }

    pub(crate) fn grow(&mut self, new_size: usize) -> bool {
        if self.capacity >= new_size {
            return false;
        }

        let old_capacity = self.capacity;
        let growth = new_size - old_capacity;

        // amqp-agent patch: a new zeroed allocation (`calloc`: the kernel's zero pages, touched
        // only when used) instead of `resize`, which wrote every byte of the new capacity.
        let mut memory = vec![0; new_size];
        memory[..old_capacity].copy_from_slice(&self.memory);
        self.memory = memory;
        self.capacity = new_size;

        if self.end <= self.position && self.available_data > 0 {
            // We have data and the "tail" was at the beginning of the buffer.
            // We need to move it in the new end.
            let (old, new) = self.memory.split_at_mut(old_capacity);
            if self.end < growth {
                // There is enough room in the new end for this whole "tail".
                // amqp-agent patch: into as many bytes as the tail has (the original copied into
                // all of `new`, which panics unless the tail is exactly `growth` bytes long).
                new[..self.end].copy_from_slice(&old[..self.end]);
                self.end += old_capacity;
            } else {
                // Fill the new end with as much data as we can.
                new.copy_from_slice(&old[..growth]);
                // We still have [growth..old_end] to move into [0..new_end]
                // copy_within handles the overlap correctly, if any.
                self.memory.copy_within(growth..self.end, 0);
                // We also update the end pointer to the right location.
                self.end -= growth;
            }
        }

        true
    }

    pub(crate) fn available_data(&self) -> usize {
        self.available_data
    }

    pub(crate) fn available_space(&self) -> usize {
        self.capacity - self.available_data
    }

    pub(crate) fn consume(&mut self, count: usize) -> usize {
        let cnt = cmp::min(count, self.available_data());
        self.position += cnt;
        self.position %= self.capacity;
        self.available_data -= cnt;
        if self.available_data == 0 {
            // amqp-agent patch: nothing left, so the next write starts at the front again. The
            // original went on round the whole ring (32 frames of `frame_max`, 4 MiB at
            // RabbitMQ's default), so that every byte passed through memory long out of cache.
            self.position = 0;
            self.end = 0;
        }
        cnt
    }

    /// amqp-agent patch: moves unread data of at most [`COMPACT_AT_MOST`] bytes, in one piece,
    /// to the front of the ring, so that reads keep using the same few pages (see `consume`)
    /// also when a read ends inside a frame, as it mostly does under load.
    fn compact(&mut self) {
        if self.position > 0 && self.end > self.position && self.available_data <= COMPACT_AT_MOST {
            self.memory.copy_within(self.position..self.end, 0);
            self.position = 0;
            self.end = self.available_data;
        }
    }

    pub(crate) fn fill(&mut self, count: usize) -> usize {
        let cnt = cmp::min(count, self.available_space());
        self.end += cnt;
        self.end %= self.capacity;
        self.available_data += cnt;
        cnt
    }

    pub(crate) fn poll_write_to<T: AsyncWrite + ?Sized>(
        &self,
        cx: &mut Context<'_>,
        writer: Pin<&mut T>,
    ) -> Poll<io::Result<usize>> {
        if self.available_data() == 0 {
            Poll::Ready(Ok(0))
        } else if self.end > self.position {
            writer.poll_write(cx, &self.memory[self.position..self.end])
        } else {
            writer.poll_write_vectored(
                cx,
                &[
                    IoSlice::new(&self.memory[self.position..]),
                    IoSlice::new(&self.memory[..self.end]),
                ],
            )
        }
    }

    pub(crate) fn poll_read_from<T: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut T>,
    ) -> Poll<io::Result<usize>> {
        self.compact();
        if self.available_space() == 0 {
            Poll::Ready(Ok(0))
        } else if self.end >= self.position {
            let (start, end) = self.memory.split_at_mut(self.end);
            reader.poll_read_vectored(
                cx,
                &mut [
                    IoSliceMut::new(&mut *end),
                    IoSliceMut::new(&mut start[..self.position]),
                ][..],
            )
        } else {
            reader.poll_read(cx, &mut self.memory[self.end..self.position])
        }
    }

    pub(crate) fn offset(&self, buf: ParsingContext<'_>) -> usize {
        let dataptr = self.memory[self.position..].as_ptr() as usize;
        let bufptr = buf.as_ptr() as usize;

        if dataptr < bufptr {
            bufptr - dataptr
        } else {
            let start = &self.memory[..0];
            let startptr = start.as_ptr() as usize;
            bufptr + self.capacity - self.position - startptr
        }
    }

    /// amqp-agent patch: parses the next frame of the unread data; returns the bytes it took
    /// and the frame. Data in one piece (the usual case: it does not wrap around the end of the
    /// ring) is parsed as a plain slice, so nom's slice fast paths apply (copies by `memcpy`,
    /// integers read in one go); data that wraps is parsed through `parsing_context`, which
    /// walks the two pieces byte by byte. Both give the same frame (`tests` below).
    pub(crate) fn parse_frame(&self) -> Result<(usize, AMQPFrame), ParserError> {
        if self.available_data() > 0 && self.end <= self.position {
            return parse_frame(self.parsing_context()).map(|(rest, f)| (self.offset(rest), f));
        }
        let data = &self.memory[self.position..self.position + self.available_data()];
        parse_frame(data).map(|(rest, f)| (data.len() - rest.len(), f))
    }

    pub(crate) fn parsing_context(&self) -> ParsingContext<'_> {
        if self.available_data() == 0 {
            self.memory[self.end..self.end].into()
        } else if self.end > self.position {
            self.memory[self.position..self.end].into()
        } else {
            [&self.memory[self.position..], &self.memory[..self.end]].into()
        }
    }
}

impl io::Write for &mut Buffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let amt = if self.available_space() == 0 {
            0
        } else if self.end >= self.position {
            let mut space = &mut self.memory[self.end..];
            let mut amt = space.write(data)?;
            if amt == self.capacity - self.end {
                let mut space = &mut self.memory[..self.position];
                amt += space.write(&data[amt..])?;
            }
            amt
        } else {
            let mut space = &mut self.memory[self.end..self.position];
            space.write(data)?
        };
        self.fill(amt);
        Ok(amt)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BackToTheBuffer for &mut Buffer {
    fn reserve_write_use<
        Tmp,
        Gen: Fn(WriteContext<Self>) -> Result<(WriteContext<Self>, Tmp), GenError>,
        Before: Fn(WriteContext<Self>, Tmp) -> GenResult<Self>,
    >(
        s: WriteContext<Self>,
        reserved: usize,
        generator: &Gen,
        before: &Before,
    ) -> Result<WriteContext<Self>, GenError> {
        if s.write.available_space() < reserved {
            return Err(GenError::BufferTooSmall(
                reserved - s.write.available_space(),
            ));
        }
        let start = s.write.checkpoint();
        s.write.fill(reserved);
        generator(s).and_then(|(s, tmp)| {
            let mut end = s.write.checkpoint();
            end.backwards = false;
            s.write.rollback(start);
            #[allow(clippy::manual_inspect)]
            before(s, tmp).map(|s| {
                s.write.rollback(end);
                s
            })
        })
    }
}

/// amqp-agent patch: `Buffer::parse_frame` reads the same frames from a plain slice as from data
/// that wraps around the ring, wherever the ring's end falls.
#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::{AMQPContentHeader, gen_frame};
    use amq_protocol::protocol::{AMQPClass, BasicProperties, basic};
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
    use std::io::Write as _;

    /// A delivery as RabbitMQ sends it (method, content header with a table of every common
    /// value type, body), a heartbeat, and a body that is not UTF-8.
    fn frames() -> Vec<AMQPFrame> {
        let mut table = FieldTable::default();
        table.insert(
            "type".into(),
            AMQPValue::LongString(LongString::from("App\\Message\\Event")),
        );
        table.insert("x-agent-attempt".into(), AMQPValue::LongLongInt(-3));
        table.insert("flag".into(), AMQPValue::Boolean(true));
        table.insert(
            "bytes".into(),
            AMQPValue::ByteArray(vec![0, 0xFF, 0xCE].into()),
        );
        let mut inner = FieldTable::default();
        inner.insert("count".into(), AMQPValue::LongUInt(7));
        let array: FieldArray = vec![AMQPValue::FieldTable(inner), AMQPValue::Double(1.5)].into();
        table.insert("x-death".into(), AMQPValue::FieldArray(array));
        let properties = BasicProperties::default()
            .with_message_id("id-\u{e9}".into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(1_700_000_000)
            .with_headers(table);
        vec![
            AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: "amq.ctag-1".into(),
                    delivery_tag: 4_000_000_001,
                    redelivered: true,
                    exchange: "".into(),
                    routing_key: "orders.events".into(),
                })),
            ),
            AMQPFrame::Header(
                1,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 300,
                    properties,
                },
            ),
            AMQPFrame::Body(1, (0..300u32).map(|i| (i * 7) as u8).collect()),
            AMQPFrame::Heartbeat,
            AMQPFrame::Body(2, vec![0xCE; 3]),
        ]
    }

    fn bytes_of(frames: &[AMQPFrame]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|f| gen_frame(f)(Vec::new().into()).unwrap().write)
            .collect()
    }

    /// A ring of `capacity` bytes whose unread data is `data`, starting at `start`.
    fn ring(capacity: usize, start: usize, data: &[u8]) -> Buffer {
        let mut buffer = Buffer::with_capacity(capacity);
        buffer.position = start;
        buffer.end = start;
        let mut writer = &mut buffer;
        assert_eq!(writer.write(data).unwrap(), data.len());
        assert_eq!(buffer.available_data(), data.len());
        buffer
    }

    #[test]
    fn frames_parse_the_same_wherever_the_ring_wraps() {
        let expected = frames();
        let stream = bytes_of(&expected);
        let capacity = stream.len() + 5;
        for start in 0..capacity {
            let mut buffer = ring(capacity, start, &stream);
            let mut parsed = Vec::new();
            while buffer.available_data() > 0 {
                let (used, frame) = buffer
                    .parse_frame()
                    .unwrap_or_else(|e| panic!("start {start}: {e:?}"));
                assert!(used > 0);
                buffer.consume(used);
                parsed.push(frame);
            }
            assert_eq!(parsed, expected, "ring starting at {start}");
        }
    }

    #[test]
    fn a_cut_frame_is_incomplete_and_a_broken_one_an_error_either_way() {
        let stream = bytes_of(&frames()[..2]);
        let capacity = stream.len() + 3;
        let first = bytes_of(&frames()[..1]).len();
        for cut in 0..stream.len() {
            for start in [0, capacity / 2, capacity - 1] {
                let buffer = ring(capacity, start, &stream[..cut]);
                match buffer.parse_frame() {
                    Err(e) if cut < first => assert!(e.is_incomplete(), "cut {cut} start {start}"),
                    Ok((used, _)) if cut >= first => assert_eq!(used, first),
                    other => panic!("cut {cut}, start {start}: {other:?}"),
                }
            }
        }
        // The same bytes with a wrong frame end: refused on both paths, not delivered.
        let mut broken = bytes_of(&frames()[..1]);
        *broken.last_mut().unwrap() = 0;
        for start in 0..broken.len() + 2 {
            let buffer = ring(broken.len() + 2, start, &broken);
            let e = buffer
                .parse_frame()
                .expect_err("a frame end other than 0xCE");
            assert!(!e.is_incomplete(), "start {start}");
        }
    }
    /// Hands out `data` in reads of at most `chunk` bytes.
    struct Chunks<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl AsyncRead for Chunks<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let n = self.chunk.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Poll::Ready(Ok(n))
        }
    }

    /// Reads `stream` into `buffer` in reads of `chunk` bytes, parsing every whole frame after
    /// each read, as `IoLoop` does; returns the frames and where in the ring each read began.
    fn read_all(buffer: &mut Buffer, stream: &[u8], chunk: usize) -> (Vec<AMQPFrame>, Vec<usize>) {
        let mut reader = Chunks {
            data: stream,
            chunk,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let (mut parsed, mut positions) = (Vec::new(), Vec::new());
        while !reader.data.is_empty() {
            match buffer.poll_read_from(&mut cx, Pin::new(&mut reader)) {
                Poll::Ready(Ok(n)) => buffer.fill(n),
                other => panic!("read: {other:?}"),
            };
            positions.push(buffer.position);
            loop {
                match buffer.parse_frame() {
                    Ok((used, frame)) => {
                        buffer.consume(used);
                        parsed.push(frame);
                    }
                    Err(e) if e.is_incomplete() => break,
                    Err(e) => panic!("parse: {e:?}"),
                }
            }
        }
        assert_eq!(buffer.available_data(), 0, "every byte parsed");
        (parsed, positions)
    }

    #[test]
    fn a_drained_ring_starts_again_at_the_front() {
        let stream = bytes_of(&frames());
        let mut buffer = ring(4 * stream.len(), 100, &stream);
        while buffer.available_data() > 0 {
            let (used, _) = buffer.parse_frame().unwrap();
            buffer.consume(used);
        }
        assert_eq!((buffer.position, buffer.end), (0, 0));
        // The next data lands at the front and parses as before.
        let mut writer = &mut buffer;
        writer.write_all(&stream).unwrap();
        assert_eq!((buffer.position, buffer.end), (0, stream.len()));
        assert_eq!(buffer.parse_frame().unwrap().1, frames()[0]);
    }

    #[test]
    fn a_frame_cut_by_a_read_is_moved_to_the_front_before_the_next_read() {
        let expected: Vec<AMQPFrame> = (0..40).flat_map(|_| frames()).collect();
        let stream = bytes_of(&expected);
        for chunk in [1, 7, 100, 333, 4096] {
            let mut buffer = Buffer::with_capacity(8192);
            let (parsed, positions) = read_all(&mut buffer, &stream, chunk);
            assert_eq!(parsed, expected, "reads of {chunk} bytes");
            // Every read wrote right after the unread rest of a cut frame, at the front: the
            // ring never wrapped.
            assert!(
                positions.iter().all(|&p| p == 0),
                "reads of {chunk}: {positions:?}"
            );
        }
    }

    #[test]
    fn unread_data_over_the_limit_stays_where_it_is_and_still_parses() {
        // A body frame three times COMPACT_AT_MOST, read in pieces of twice that: what the
        // first read leaves of it is over the limit, so the next read goes on after it, round
        // the ring's end for the later starts, and the frames come out the same.
        let mut expected = frames();
        expected.push(AMQPFrame::Body(1, vec![0x5A; 3 * COMPACT_AT_MOST]));
        expected.extend(frames());
        let stream = bytes_of(&expected);
        for start in [0, 5000, 5 * COMPACT_AT_MOST] {
            let mut buffer = ring(6 * COMPACT_AT_MOST, start, &[]);
            let (parsed, positions) = read_all(&mut buffer, &stream, 2 * COMPACT_AT_MOST);
            assert_eq!(parsed, expected, "ring starting at {start}");
            assert!(
                positions.iter().any(|&p| p > 0),
                "the large frame was not moved"
            );
        }
    }

    #[test]
    fn grow_keeps_unread_data_wherever_it_wraps() {
        let stream = bytes_of(&frames());
        let capacity = stream.len() + 5;
        for start in 0..capacity {
            let mut buffer = ring(capacity, start, &stream);
            assert!(buffer.grow(3 * capacity));
            let mut parsed = Vec::new();
            while buffer.available_data() > 0 {
                let (used, frame) = buffer.parse_frame().unwrap();
                buffer.consume(used);
                parsed.push(frame);
            }
            assert_eq!(parsed, frames(), "ring starting at {start}");
        }
    }
}
