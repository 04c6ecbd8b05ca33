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

        self.memory.resize(new_size, 0);
        self.capacity = new_size;

        if self.end <= self.position && self.available_data > 0 {
            // We have data and the "tail" was at the beginning of the buffer.
            // We need to move it in the new end.
            let (old, new) = self.memory.split_at_mut(old_capacity);
            if self.end < growth {
                // There is enough room in the new end for this whole "tail".
                new.copy_from_slice(&old[..self.end]);
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
        cnt
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
        buffer.fill(start);
        buffer.consume(start);
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
}
