//! Overrides applied after parsing: the environment (URL, signing secrets, admin token and
//! listener) and the files named in the config (`amqp.url_file`, `fpm.signing_secrets_file`).

use super::{
    Config, ConfigError, ENV_ADMIN_LISTEN, ENV_ADMIN_TOKEN, ENV_AMQP_URL, ENV_SIGNING_SECRET,
    invalid, report,
};

impl Config {
    pub(super) fn resolve_secrets(
        &mut self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(url) = env(ENV_AMQP_URL).filter(|u| !u.is_empty()) {
            if let Some(problem) = report::uri_problem(&url) {
                return Err(invalid("amqp.url", format!("{ENV_AMQP_URL}: {problem}")));
            }
            self.amqp.url = Some(url);
            self.amqp.urls.clear();
        } else if let (None, Some(file)) = (&self.amqp.url, &self.amqp.url_file) {
            let url = std::fs::read_to_string(file).map_err(|e| {
                invalid(
                    "amqp.url_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            if let Some(problem) = report::uri_problem(url.trim()) {
                return Err(invalid(
                    "amqp.url_file",
                    format!("{}: {problem}", file.display()),
                ));
            }
            self.amqp.url = Some(url.trim().to_owned());
        }
        if let Some(token) = env(ENV_ADMIN_TOKEN).filter(|t| !t.is_empty()) {
            self.admin.token = Some(token);
        }
        if let Some(secret) = env(super::ENV_FLEET_SECRET).filter(|t| !t.is_empty()) {
            self.admin.fleet_secret = Some(secret);
        }
        if self
            .admin
            .token
            .as_deref()
            .is_some_and(|t| report::PLACEHOLDER_SECRETS.contains(&t))
        {
            return Err(invalid(
                "admin.token",
                "is a placeholder or public demo value; set a long random token of your own",
            ));
        }
        if let Some(listen) = env(ENV_ADMIN_LISTEN) {
            self.admin.listen = listen;
        }
        if let Some(secrets) = env(ENV_SIGNING_SECRET).filter(|s| !s.is_empty()) {
            self.fpm.signing_secrets = secrets
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            for (i, secret) in self.fpm.signing_secrets.iter().enumerate() {
                if let Some(problem) = report::secret_problem(secret) {
                    let n = i + 1;
                    return Err(invalid(
                        "fpm.signing_secrets",
                        format!("{ENV_SIGNING_SECRET}: secret {n} {problem}"),
                    ));
                }
            }
        }
        if let Some(file) = &self.fpm.signing_secrets_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                invalid(
                    "fpm.signing_secrets_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            for (i, line) in text.lines().enumerate() {
                let secret = line.trim();
                if secret.is_empty() {
                    continue;
                }
                if let Some(problem) = report::secret_problem(secret) {
                    let n = i + 1;
                    return Err(invalid(
                        "fpm.signing_secrets_file",
                        format!("{}: the secret on line {n} {problem}", file.display()),
                    ));
                }
                self.fpm.signing_secrets.push(secret.to_owned());
            }
        }
        Ok(())
    }
}
