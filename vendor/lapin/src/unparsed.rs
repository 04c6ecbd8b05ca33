//! amqp-agent patch: a content header whose properties cannot be parsed is delivered with its
//! property bytes kept, instead of killing the connection.
//!
//! A content-header frame carries the publisher's properties and headers, and is the only frame
//! a publisher writes that the broker passes on as it was written (RabbitMQ builds every method
//! frame it delivers itself, and a body frame is never parsed). The original treated a header
//! it could not parse as a connection error: the message came first again on the next
//! connection, killed it too, and stalled its queue for good. Here such a frame, when it is
//! complete and long enough to hold its class, weight and body size, becomes a content header
//! with no properties but one header, [`UNPARSED_PROPERTIES_HEADER`], whose value is the frame's
//! property bytes (flags and list) as a byte array. The body that follows is received as usual;
//! the application decides what to do with the message (amqp-agent dead-letters it as
//! `malformed_properties`, keeping those bytes).

use amq_protocol::{
    frame::{
        AMQPContentHeader, AMQPFrame, AMQPFrameType,
        parsing::{parse_frame_type, parse_raw_frame, traits::ParsableInput},
    },
    protocol::BasicProperties,
    types::{AMQPValue, ByteArray, FieldTable},
};

/// The one header of a delivery whose content header could not be parsed: its property flags
/// and property list, as they arrived. The name starts with U+FFFD, which no parsed header name
/// of a real message is likely to start with; a publisher could still send a header of this
/// name, and its message would then only be treated as unparsed.
pub const UNPARSED_PROPERTIES_HEADER: &str = "\u{FFFD}amqp-unparsed-properties";

/// Class id (2), weight (2) and body size (8) before the property flags.
const FIXED: usize = 12;

/// The frame at the start of `i`, when it is a complete content-header frame whose payload
/// holds at least the class, weight, body size and one property-flags word: the frame with its
/// properties replaced as described in the module doc, and the input after it. `None` for any
/// other frame, or one that is incomplete.
pub(crate) fn salvage_content_header<I: ParsableInput>(i: I) -> Option<(I, AMQPFrame)> {
    let (rest, frame_type) = parse_frame_type(i).ok()?;
    if frame_type != AMQPFrameType::Header {
        return None;
    }
    let (rest, raw) = parse_raw_frame(AMQPFrameType::Header)(rest).ok()?;
    let payload: Vec<u8> = raw.payload.iter_elements().collect();
    if payload.len() < FIXED + 2 {
        return None;
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let mut size = [0; 8];
    size.copy_from_slice(&payload[4..FIXED]);
    let body_size = u64::from_be_bytes(size);
    let mut headers = FieldTable::default();
    headers.insert(
        UNPARSED_PROPERTIES_HEADER.into(),
        AMQPValue::ByteArray(ByteArray::from(payload[FIXED..].to_vec())),
    );
    let header = AMQPContentHeader {
        class_id,
        body_size,
        properties: BasicProperties::default().with_headers(headers),
    };
    Some((rest, AMQPFrame::Header(raw.channel_id, header)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::{gen_frame, parse_frame};

    /// A content-header frame on channel 3 for a body of `body_size` bytes with `props`.
    fn header_frame(props: &[u8], body_size: u64) -> Vec<u8> {
        let mut payload = vec![0, 60, 0, 0];
        payload.extend_from_slice(&body_size.to_be_bytes());
        payload.extend_from_slice(props);
        let mut frame = vec![2, 0, 3];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(0xCE);
        frame
    }

    /// Headers flag, then a table with one entry of the unknown field type `Z`.
    fn unknown_type_props() -> Vec<u8> {
        let entry = [&[1u8, b'k', b'Z'][..], &[0, 0, 0, 0]].concat();
        let mut props = vec![0x20, 0x00];
        props.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        props.extend_from_slice(&entry);
        props
    }

    #[test]
    fn an_unparseable_header_keeps_its_property_bytes_and_body_size() {
        let props = unknown_type_props();
        let mut input = header_frame(&props, 1234);
        input.extend_from_slice(&[3, 0, 3, 0, 0, 0, 1, b'x', 0xCE]);
        assert!(parse_frame(&input[..]).is_err(), "the parser refuses it");
        let (rest, frame) = salvage_content_header(&input[..]).expect("salvaged");
        assert_eq!(rest, &[3, 0, 3, 0, 0, 0, 1, b'x', 0xCE][..], "the body frame is left");
        let AMQPFrame::Header(channel, header) = frame else {
            panic!("a header frame: {frame:?}")
        };
        assert_eq!((channel, header.class_id, header.body_size), (3, 60, 1234));
        let headers = header.properties.headers().clone().unwrap();
        assert_eq!(headers.inner().len(), 1);
        assert_eq!(
            headers.inner().get(UNPARSED_PROPERTIES_HEADER),
            Some(&AMQPValue::ByteArray(ByteArray::from(props)))
        );
        assert_eq!(header.properties.message_id(), &None);
    }

    #[test]
    fn the_salvaged_header_can_be_generated_and_parsed_again() {
        let (_, frame) = salvage_content_header(&header_frame(&unknown_type_props(), 7)[..])
            .expect("salvaged");
        let out = gen_frame(&frame)(Vec::new().into()).unwrap().write;
        let (_, again) = parse_frame(&out[..]).unwrap();
        assert_eq!(again, frame);
    }

    #[test]
    fn other_frames_and_incomplete_ones_are_not_salvaged() {
        let frame = header_frame(&unknown_type_props(), 1);
        assert!(salvage_content_header(&frame[..frame.len() - 1]).is_none(), "incomplete");
        let mut wrong_end = frame.clone();
        *wrong_end.last_mut().unwrap() = 0;
        assert!(salvage_content_header(&wrong_end[..]).is_none(), "no frame end");
        let mut method = frame.clone();
        method[0] = 1;
        assert!(salvage_content_header(&method[..]).is_none(), "a method frame");
        let short = header_frame(&[0x20], 1);
        assert!(salvage_content_header(&short[..]).is_none(), "no flags word");
        let body = [3, 0, 1, 0, 0, 0, 1, b'x', 0xCE];
        assert!(salvage_content_header(&body[..]).is_none(), "a body frame");
    }

    #[test]
    fn a_parseable_header_is_salvaged_the_same_way_but_is_never_asked() {
        // The io loop only asks when the parser failed; this pins that the function itself
        // does not look at the properties.
        let frame = header_frame(&[0x00, 0x00], 5);
        assert!(parse_frame(&frame[..]).is_ok());
        let (_, salvaged) = salvage_content_header(&frame[..]).unwrap();
        let AMQPFrame::Header(_, header) = salvaged else {
            panic!()
        };
        assert_eq!(header.body_size, 5);
    }
}
