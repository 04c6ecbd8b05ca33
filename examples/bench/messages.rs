//! The messages of a run and their names: run ids, queue names, message ids and JSON bodies.

/// `{"id":"<i>","run":"<run>","published_us":<µs>,"sleep_ms":<ms>,"pad":"…"}` of `size` bytes.
pub fn body(run: &str, index: usize, published_us: u64, sleep_ms: u64, size: usize) -> String {
    let head = format!(
        r#"{{"id":"{index}","run":"{run}","published_us":{published_us},"sleep_ms":{sleep_ms},"pad":""#
    );
    let pad = size.saturating_sub(head.len() + 2);
    let mut out = String::with_capacity(size);
    out.push_str(&head);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

pub fn message_id(run: &str, index: usize) -> String {
    format!("{run}-{index}")
}

pub fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

pub fn queue_name(run: &str, subject: &str) -> String {
    format!("bench.{run}.{subject}")
}
