//! lapin's field-table parser (`amq-protocol-types`, as `Cargo.toml` resolves it) alone.
//!
//! Checked: no panic; what parses re-encodes to bytes that parse to the same table (the agent
//! re-publishes parsed headers on retry and dead-letter copies); and parsing never recurses
//! without bound. For the last, an input starting with `D` is nested 10,000 levels deep (arrays
//! or tables, as the next byte chooses) around a table made of the rest, and parsed twice:
//! - on a thread with a 256 MiB stack, where the result must be at most `BOUND` levels deep (the
//!   vendored parser cuts at 64 and puts a marker string in place of what is deeper): a parser
//!   without a depth limit returns all 10,000 levels, and the target fails cleanly, input kept;
//! - on a 2 MiB stack, the smallest lapin parses frames on (its I/O thread's, or a Tokio worker's
//!   when the loop runs as a task on a multi-thread runtime): a depth limit too high for
//!   that stack overflows it. That kills the process without a saved input (the targets have no
//!   Rust runtime to turn a stack overflow into an abort); `scripts/fuzz` reports `exit 139`.
#![no_main]

use std::sync::Arc;

use amq_protocol_types::FieldTable;
use amq_protocol_types::generation::gen_field_table;
use amq_protocol_types::parsing::parse_field_table;
use amqp_agent_fuzz::nesting;
use libfuzzer_sys::fuzz_target;

const DEEP_LEVELS: usize = 10_000;
/// Deepest result accepted: far below `DEEP_LEVELS`, far above any sane limit.
const BOUND: usize = 1_000;
const ROOMY_STACK: usize = 256 * 1024 * 1024;
const LAPIN_STACK: usize = 2 * 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    if let [b'D', pattern, rest @ ..] = data {
        let deep = Arc::new(nest(*pattern, rest));
        if let Some(depth) = parsed_depth_on_stack(ROOMY_STACK, deep.clone()) {
            assert!(
                depth <= BOUND,
                "{DEEP_LEVELS} levels parsed {depth} deep: no depth limit"
            );
        }
        parsed_depth_on_stack(LAPIN_STACK, deep);
        return;
    }
    let Ok((_, table)) = parse_field_table(data) else {
        return;
    };
    let encoded = encode(&table);
    let (rest, again) = parse_field_table(encoded.as_slice()).expect("own encoding parses");
    assert!(rest.is_empty());
    // Compared as bytes: NaN floats make `PartialEq` on tables useless.
    assert_eq!(encode(&again), encoded);
});

/// Parses `input` on a thread with a `stack`-byte stack; the nesting depth of what it parsed.
fn parsed_depth_on_stack(stack: usize, input: Arc<Vec<u8>>) -> Option<usize> {
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            let (_, table) = parse_field_table(input.as_slice()).ok()?;
            let depth = nesting(&table);
            if depth > BOUND {
                // Dropping a deep table recurses too; the caller fails anyway.
                std::mem::forget(table);
            }
            Some(depth)
        })
        .expect("spawn")
        .join()
        .expect("parser thread")
}

fn encode(table: &FieldTable) -> Vec<u8> {
    cookie_factory::gen_simple(gen_field_table(table), Vec::new()).expect("encodes")
}

/// `DEEP_LEVELS` levels of arrays (bit set in `pattern`) or one-entry tables around a table
/// whose body is `inner`, as the body of a one-entry field table.
fn nest(pattern: u8, inner: &[u8]) -> Vec<u8> {
    // Each level is a prefix whose length field counts the value inside it, so the prefixes are
    // made from the inside out. `len` is the size of the value the next level wraps.
    let mut prefixes = Vec::with_capacity(DEEP_LEVELS);
    let mut len = 1 + 4 + inner.len();
    for level in 0..DEEP_LEVELS {
        let mut prefix = Vec::with_capacity(7);
        if pattern >> (level % 8) & 1 == 1 {
            // An array holding the value: 'A', length.
            prefix.push(b'A');
            prefix.extend_from_slice(&be32(len));
        } else {
            // A table holding one entry `k` = the value: 'F', length, key.
            prefix.push(b'F');
            prefix.extend_from_slice(&be32(len + 2));
            prefix.extend_from_slice(&[1, b'k']);
        }
        len += prefix.len();
        prefixes.push(prefix);
    }
    let mut out = Vec::with_capacity(len + 16);
    out.extend_from_slice(&be32(len + 2));
    out.extend_from_slice(&[1, b'k']);
    for prefix in prefixes.iter().rev() {
        out.extend_from_slice(prefix);
    }
    out.push(b'F');
    out.extend_from_slice(&be32(inner.len()));
    out.extend_from_slice(inner);
    out
}

fn be32(n: usize) -> [u8; 4] {
    u32::try_from(n).expect("under 4 GiB").to_be_bytes()
}
