//! AMQP headers → `HTTP_X_AGENT_HEADERS` JSON and the FastCGI params of one attempt.
//!
//! The header table comes either from lapin's own field-table parser fed with fuzz bytes (which
//! fuzzes that parser too) or is built directly from the bytes (any shape, deep nesting).
//! Checked: no panic; the JSON is an object that says the same as the table; the depth and size
//! limits hold exactly; params have fixed names, no CR/LF/NUL in values, and a signature that
//! verifies.
#![no_main]

use std::borrow::Cow;
use std::path::Path;
use std::sync::LazyLock;

use amq_protocol_types::FieldTable;
use amqp_agent::config::Config;
use amqp_agent::contract::{self, ContractError, Envelope, RequestTemplate};
use amqp_agent::signature::{self, Signed};
use amqp_agent_fuzz::{MAX_BUILT_DEPTH, nesting, parse_table_body, same_table, table};
use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const SECRETS: [&str; 2] = ["0123456789abcdef-new", "0123456789abcdef-old"];

static CONFIG: LazyLock<Config> = LazyLock::new(|| {
    let text = format!(
        r#"
        [amqp]
        url = "amqp://guest:guest@127.0.0.1:5672/%2f"
        [fpm]
        address = "127.0.0.1:9000"
        script_filename = "/srv/app/public/index.php"
        signing_secrets = ["{}", "{}"]
        [subjects.event]
        queue = "messages.event"
        [subjects.command]
        queue = "messages.command"
        "#,
        SECRETS[0], SECRETS[1]
    );
    Config::from_toml(&text, Path::new("fuzz.toml"), |_| None).expect("fuzz config is valid")
});

/// The request-level param names the contract sends; with `batch::wire::ENTRY_FIELDS` (the
/// per-message ones, kept exact by that module's tests) every name it may send (the module
/// invariant: none comes from a message).
const REQUEST_NAMES: &[&str] = &[
    "GATEWAY_INTERFACE",
    "SERVER_SOFTWARE",
    "SERVER_PROTOCOL",
    "REQUEST_METHOD",
    "SCRIPT_FILENAME",
    "SCRIPT_NAME",
    "DOCUMENT_ROOT",
    "REQUEST_URI",
    "QUERY_STRING",
    "SERVER_NAME",
    "SERVER_PORT",
    "REMOTE_ADDR",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "HTTP_X_AGENT_SUBJECT",
];

fn is_contract_name(name: &str) -> bool {
    REQUEST_NAMES.contains(&name) || amqp_agent::batch::wire::is_entry_field(name)
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let max_depth: usize = u.int_in_range(0..=24)?;
    let max_bytes: usize = if u.arbitrary()? {
        u.int_in_range(0..=512)?
    } else {
        64 * 1024
    };
    let max_body: usize = u.int_in_range(0..=64)?;
    let subject = if u.arbitrary()? { "event" } else { "command" };
    let message_id: &str = u.arbitrary()?;
    let routing_key: &str = u.arbitrary()?;
    let exchange: &str = u.arbitrary()?;
    let content_type: Option<&str> = u.arbitrary()?;
    let kind: Option<&str> = u.arbitrary()?;
    let correlation_id: Option<&str> = u.arbitrary()?;
    let trace: (Option<&str>, Option<&str>) = u.arbitrary()?;
    let attempt: u32 = u.arbitrary()?;
    let redelivered: bool = u.arbitrary()?;
    let timestamp: Option<u64> = u.arbitrary()?;
    let now: u64 = u.arbitrary()?;
    let body: &[u8] = u.arbitrary()?;
    let headers: Option<FieldTable> = match u.int_in_range(0..=2u8)? {
        0 => None,
        1 => Some(table(u, MAX_BUILT_DEPTH)?),
        _ => {
            let Some(table) = parse_table_body(u.bytes(u.len())?) else {
                return Ok(());
            };
            Some(table)
        }
    };

    // Other readers of the same headers.
    if let Ok(n) = contract::attempt_from_headers(headers.as_ref()) {
        assert!(n >= 1);
    }
    let _ = contract::string_header(headers.as_ref(), "traceparent");
    let short = amqp_agent::broker::short(routing_key);
    assert!(short.as_str().len() <= 255 && routing_key.starts_with(short.as_str()));

    let json = check_headers_json(headers.as_ref(), max_depth, max_bytes);

    let mut config = CONFIG.clone();
    config.limits.max_header_depth = max_depth;
    config.limits.max_headers_bytes = max_bytes;
    config.limits.max_body_bytes = max_body;
    let template = RequestTemplate::new(&config, subject);
    let env = Envelope {
        subject,
        message_id: Cow::Borrowed(message_id),
        message_id_generated: false,
        attempt,
        redelivered,
        routing_key,
        exchange,
        content_type,
        kind,
        correlation_id,
        timestamp,
        headers: headers.as_ref(),
    };
    match template.params(&env, body, trace, now) {
        Err(ContractError::BodyTooLarge { size, limit }) => {
            assert!(size == body.len() && size > max_body && limit == max_body);
        }
        Err(ContractError::Headers(_)) => assert!(body.len() <= max_body && json.is_err()),
        // Bytes that are not UTF-8 in a header value (the string fields here are `&str`).
        Err(ContractError::NotUtf8 { field, .. }) => {
            assert!(body.len() <= max_body && field.contains("headers"));
        }
        // Only the patched lapin's marker of a content header it could not parse.
        Err(ContractError::Unparsed { .. }) => assert!(headers.as_ref().is_some_and(|h| {
            h.inner()
                .keys()
                .any(|k| k.as_str() == "\u{FFFD}amqp-unparsed-properties")
        })),
        Ok(params) => {
            assert!(body.len() <= max_body);
            check_params(&params, json.as_deref().expect("params built"), body, now);
            // Quorum queues' x-delivery-count reaches PHP exactly when it is an integer.
            let sent = params
                .iter()
                .find(|(n, _)| *n == "HTTP_X_AGENT_DELIVERY_COUNT");
            let count = contract::delivery_count(headers.as_ref());
            assert_eq!(
                sent.map(|(_, v)| v.to_string()),
                count.map(|c| c.to_string())
            );
        }
    }
    Ok(())
}

/// Checks `headers_json` against the table; returns its result.
fn check_headers_json(
    headers: Option<&FieldTable>,
    max_depth: usize,
    max_bytes: usize,
) -> std::result::Result<String, ContractError> {
    let result = contract::headers_json(headers, max_depth, max_bytes);
    let Some(table) = headers else {
        assert_eq!(result.as_deref(), Ok("{}"));
        return result;
    };
    let deep = nesting(table) > max_depth;
    match &result {
        Ok(json) => {
            assert!(
                !deep,
                "nesting {} over {max_depth} accepted",
                nesting(table)
            );
            assert!(json.len() <= max_bytes);
            let value: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
            assert!(
                same_table(table, &value),
                "JSON {json} differs from {table:?}"
            );
        }
        Err(e) => {
            assert_eq!(e.reason(), "headers_unencodable");
            let unlimited = contract::headers_json(headers, max_depth, usize::MAX);
            if deep {
                assert!(unlimited.is_err(), "nesting over {max_depth} accepted");
            } else {
                // Refused for size only: without the size limit it encodes, and is too big.
                let json = unlimited.expect("within the depth limit");
                assert!(json.len() > max_bytes);
            }
        }
    }
    result
}

fn check_params(params: &[(&'static str, Cow<'_, str>)], headers: &str, body: &[u8], now: u64) {
    for (i, (name, value)) in params.iter().enumerate() {
        assert!(is_contract_name(name), "unexpected param {name}");
        assert!(
            params[..i].iter().all(|(other, _)| other != name),
            "{name} twice"
        );
        assert!(
            !value.contains(['\r', '\n', '\0']),
            "{name} = {value:?} has CR, LF or NUL"
        );
    }
    let get = |wanted: &str| {
        params
            .iter()
            .find(|(name, _)| *name == wanted)
            .map_or_else(|| panic!("{wanted} not sent"), |(_, v)| v.as_ref())
    };
    assert_eq!(get("HTTP_X_AGENT_HEADERS"), headers);
    assert_eq!(get("CONTENT_LENGTH"), body.len().to_string());
    // The signature covers the param values exactly as sent.
    let fields = Signed {
        subject: get("HTTP_X_AGENT_SUBJECT"),
        message_id: get("HTTP_X_AGENT_MESSAGE_ID"),
        attempt: get("HTTP_X_AGENT_ATTEMPT").parse().expect("a number"),
        routing_key: get("HTTP_X_AGENT_ROUTING_KEY"),
        exchange: get("HTTP_X_AGENT_EXCHANGE"),
        content_type: get("HTTP_X_AGENT_CONTENT_TYPE"),
        headers_json: get("HTTP_X_AGENT_HEADERS"),
        body,
    };
    let old = [SECRETS[1].to_owned()];
    let signature = get("HTTP_X_AGENT_SIGNATURE");
    assert!(signature::verify(signature, &old, now, 0, &fields, false));
}
