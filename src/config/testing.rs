//! Test fixtures for the crate's unit tests: a valid configuration to build on.

use super::Config;

/// The secret the fixture signs with.
pub(crate) const SECRET: &str = "0123456789abcdef";

/// A configuration with a local broker, FPM on 127.0.0.1:9000 signing with [`SECRET`], the
/// `[fpm]` lines `fpm` added, and then `rest` (subjects and other tables).
///
/// # Panics
/// When the result is not a valid configuration.
pub(crate) fn config(fpm: &str, rest: &str) -> Config {
    let text = format!(
        "[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n\
         [fpm]\naddress = \"127.0.0.1:9000\"\nscript_filename = \"/srv/app/public/index.php\"\n\
         signing_secrets = [\"{SECRET}\"]\n{fpm}\n{rest}"
    );
    Config::from_toml(&text, std::path::Path::new("t.toml"), |_| None).unwrap()
}
