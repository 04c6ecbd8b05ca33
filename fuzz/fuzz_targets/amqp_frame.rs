//! lapin's frame parser (`amq-protocol`, with the vendored `amq-protocol-types`) on whatever
//! bytes a broker could deliver, then what the agent does with a parsed content header.
//!
//! Checked: parsing never panics; a content header's properties, after
//! `contract::copy::sanitized` (what every retry and dead-letter copy goes through), encode
//! again without panicking (a stand-in for bytes that are not UTF-8 must never reach the
//! generator, whose length byte would be cut) and parse back to the same bytes; and a short
//! string that is not UTF-8 is found by `first_not_utf8` and read back to its original bytes.
#![no_main]

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, gen_frame, parse_frame};
use amqp_agent::contract::copy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((_, frame)) = parse_frame(data) else {
        return;
    };
    if let AMQPFrame::Header(channel, header) = frame {
        let (clean, _moved) = copy::sanitized(&header.properties);
        let len = copy::header_frame_len(&clean);
        assert!(len < usize::MAX, "a sanitized copy encodes");
        let again = AMQPFrame::Header(
            channel,
            AMQPContentHeader {
                class_id: header.class_id,
                body_size: header.body_size,
                properties: clean.clone(),
            },
        );
        let bytes = gen_frame(&again)(Vec::new().into())
            .expect("a sanitized content header encodes")
            .write;
        let (_, parsed) = parse_frame(&bytes[..]).expect("what the agent encodes parses");
        let AMQPFrame::Header(_, parsed) = parsed else {
            panic!("a header frame parses as a header frame")
        };
        // Compared as bytes: a NaN float header (RabbitMQ refuses it, but a parser sees it) is
        // never equal to itself as a value.
        let round_trip = gen_frame(&AMQPFrame::Header(channel, parsed))(Vec::new().into())
            .expect("what parsed encodes")
            .write;
        assert_eq!(round_trip, bytes, "a copy's properties survive the round trip");
        if let Some(id) = header.properties.message_id() {
            if let Some(bytes) = copy::not_utf8(id.as_str()) {
                assert!(std::str::from_utf8(&bytes).is_err(), "only bytes that are not UTF-8");
                assert!(copy::first_not_utf8([("message_id", Some(id.as_str()))], None).is_some());
            }
        }
    }
});
