use super::*;

#[test]
fn rabbitmq_inequivalent_arg_message_names_argument_and_values() {
    let i = Inequivalence::parse(
        "q",
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'orders' in vhost '/': received none but current is the value 'quorum' of type 'longstr'",
    );
    assert_eq!(i.name, "orders");
    assert_eq!(i.argument.as_deref(), Some("x-queue-type"));
    assert_eq!(i.ours.as_deref(), Some("none (queue_type = \"classic\")"));
    assert_eq!(
        i.theirs.as_deref(),
        Some("the value 'quorum' of type 'longstr'")
    );
    let text = i.to_string();
    assert!(
        text.contains("`orders`") && text.contains("`x-queue-type`"),
        "{text}"
    );
}

#[test]
fn quorum_delay_queues_dead_letter_at_least_once() {
    let args = delay_queue_args(QueueType::Quorum, "q", Duration::from_secs(5));
    let get = |k: &str| args.inner().get(k).cloned();
    assert_eq!(get("x-queue-type"), Some(text("quorum")));
    assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(5000)));
    assert_eq!(get("x-dead-letter-strategy"), Some(text("at-least-once")));
    assert_eq!(get("x-overflow"), Some(text("reject-publish")));
    let classic = delay_queue_args(QueueType::Classic, "q", Duration::from_secs(5));
    assert!(classic.inner().get("x-queue-type").is_none());
    assert!(classic.inner().get("x-dead-letter-strategy").is_none());
}
