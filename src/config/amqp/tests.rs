use super::*;

const BASE: &str = "[fpm]\naddress = \"127.0.0.1:9000\"\nscript_filename = \"/srv/index.php\"\n\
                    [subjects.event]\nqueue = \"q\"\n";

fn error_of(amqp: &str, subject: &str) -> String {
    let text = format!("[amqp]\n{amqp}\n{BASE}{subject}");
    Config::from_toml(&text, std::path::Path::new("t.toml"), |_| None)
        .unwrap_err()
        .to_string()
}

#[test]
fn endpoints_tls_and_arguments_are_validated_naming_the_key() {
    let e = error_of("url = \"amqp://a\"\nurls = [\"amqp://b\"]", "");
    assert!(e.contains("amqp.urls"), "{e}");
    let e = error_of("urls = [\"amqp://a\", \"http://b\"]", "");
    assert!(e.contains("amqp.urls[1]"), "{e}");
    let e = error_of("url = \"amqp://a\"\n[amqp.tls]\nca_file = \"/x\"", "");
    assert!(e.contains("amqp.tls") && e.contains("amqps"), "{e}");
    let e = error_of(
        "url = \"amqps://a\"\n[amqp.tls]\nca_file = \"/nonexistent.pem\"",
        "",
    );
    assert!(
        e.contains("amqp.tls.ca_file") && e.contains("/nonexistent.pem"),
        "{e}"
    );
    let e = error_of(
        "url = \"amqp://a\"",
        "arguments = { \"x-delivery-limit\" = 3 }\n",
    );
    assert!(
        e.contains("subjects.event.arguments.x-delivery-limit") && e.contains("quorum"),
        "{e}"
    );
    let ok = format!(
        "[amqp]\nurls = [\"amqp://a\", \"amqp://b\"]\nqueue_type = \"quorum\"\n{BASE}arguments = {{ \"x-delivery-limit\" = 3 }}\n"
    );
    let c = Config::from_toml(&ok, std::path::Path::new("t.toml"), |_| None).unwrap();
    assert_eq!(c.amqp_urls(), ["amqp://a", "amqp://b"]);
    assert_eq!(c.amqp_url(), "amqp://a");
    assert_eq!(c.queue_type(&c.subjects["event"]), QueueType::Quorum);
}

#[test]
fn integers_stay_integers_and_strings_stay_strings() {
    assert_eq!(
        amqp_value(&toml::Value::Integer(5)).unwrap(),
        AMQPValue::LongLongInt(5)
    );
    assert_eq!(
        amqp_value(&toml::Value::String("reject-publish".into())).unwrap(),
        AMQPValue::LongString("reject-publish".into())
    );
    assert_eq!(
        amqp_value(&toml::Value::Boolean(true)).unwrap(),
        AMQPValue::Boolean(true)
    );
    assert!(amqp_value(&toml::Value::Array(vec![])).is_err());
}

#[test]
fn arguments_are_checked_by_name_type_and_queue_type() {
    let int = toml::Value::Integer(5);
    let text = toml::Value::String("5".into());
    assert!(check_argument("x-delivery-limit", &int, QueueType::Quorum).is_ok());
    let quoted = check_argument("x-delivery-limit", &text, QueueType::Quorum).unwrap_err();
    assert!(quoted.contains("integer"), "{quoted}");
    let classic = check_argument("x-delivery-limit", &int, QueueType::Classic).unwrap_err();
    assert!(classic.contains("only applies to quorum"), "{classic}");
    let conflict = check_argument("x-queue-type", &text, QueueType::Quorum).unwrap_err();
    assert!(conflict.contains("queue_type"), "{conflict}");
    let dlx = check_argument("x-dead-letter-exchange", &text, QueueType::Classic).unwrap_err();
    assert!(dlx.contains("conflicts"), "{dlx}");
    let unknown = check_argument("x-max-lenght", &int, QueueType::Classic).unwrap_err();
    assert!(unknown.contains("x-max-length"), "{unknown}");
    let overflow = toml::Value::String("drop-tail".into());
    assert!(check_argument("x-overflow", &overflow, QueueType::Classic).is_err());
}
