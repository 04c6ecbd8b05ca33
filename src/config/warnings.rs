//! Non-fatal remarks about legal but risky settings (`check-config` and the start log).

use std::time::Duration;

use super::Config;

/// RabbitMQ's default `consumer_timeout`: it closes a channel whose delivery stays unacked
/// longer.
const CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl Config {
    /// Non-fatal remarks an operator should read (printed by `check-config` and at start).
    #[must_use]
    pub(crate) fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.fpm.signing_secrets.is_empty() {
            out.push("fpm.signing_secrets is empty: requests to PHP are not signed".to_owned());
        }
        if self.fpm.timeout >= CONSUMER_TIMEOUT {
            out.push(
                "fpm.timeout is not below RabbitMQ's default consumer_timeout (30m)".to_owned(),
            );
        }
        if self.fpm.status_path.is_none() && self.fpm.max_children.is_none() {
            out.push(
                "neither fpm.status_path nor fpm.max_children is set: requests in flight are not \
                 capped at FPM's pm.max_children, so keep the pools' sum over all agents at or below it"
                    .to_owned(),
            );
        }
        if !self.fpm.require_ack_header {
            out.push("fpm.require_ack_header = false: any 2xx counts as success".to_owned());
        }
        if !self.admin.listen.is_empty() && self.admin.token.is_none() {
            out.push(if self.admin.allow_unauthenticated_commands {
                "admin.allow_unauthenticated_commands = true: any local process (or a request \
                 forged by one) can pause subjects and resize pools; development only"
                    .to_owned()
            } else {
                "admin.token is not set: the admin API refuses every command \
                 (pool set, pause, resume)"
                    .to_owned()
            });
        }
        if self.admin.token.is_some() && self.admin.allow_unauthenticated_commands {
            out.push(
                "admin.allow_unauthenticated_commands is ignored: admin.token is set".to_owned(),
            );
        }
        out.extend(self.rate_warnings());
        out.extend(self.amqp_warnings());
        out.extend(self.memory_warning());
        out
    }

    /// Each subject's bodies are held to its share of `limits.memory_budget` (`broker::gate`):
    /// a body over the share is let in only when the subject holds no other body, so under a
    /// steady flow of smaller messages it may wait long.
    fn memory_warning(&self) -> Option<String> {
        let subjects = self.subjects.len().max(1) as u64;
        let share = self.limits.memory_budget / subjects;
        let body = self.limits.max_body_bytes as u64;
        (body > share).then(|| {
            format!(
                "limits.max_body_bytes ({body} bytes) is over each subject's share of \
                 limits.memory_budget ({share} bytes: the budget over {subjects} subjects): a \
                 body larger than the share is received only when its subject holds no other \
                 body, and may wait long behind a steady flow; raise memory_budget or lower \
                 max_body_bytes"
            )
        })
    }

    /// A rate-limited subject holds its prefetch window unacked while it waits for tokens: when
    /// the window takes longer than RabbitMQ's default `consumer_timeout` (30 minutes) to pass
    /// at the limit, the last deliveries in it outlive it, the broker closes the channel and
    /// sends the window again. (Checked for the file's rate; `rate set` is not.)
    fn rate_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, s) in &self.subjects {
            let Some(rate) = s.rate_limit else { continue };
            let window = self.window(s);
            let seconds = f64::from(window) / rate.per_second();
            if seconds >= CONSUMER_TIMEOUT.as_secs_f64() {
                out.push(format!(
                    "subjects.{name}.rate_limit ({rate}) takes {:.0} minutes to pass its prefetch \
                     window ({window} deliveries: pool_size × the per-worker prefetch, two batches \
                     per worker with batches), over RabbitMQ's default consumer_timeout (30m): \
                     the deliveries waiting longest would be sent again; lower batch_max \
                     (batch_limit), amqp.prefetch_per_worker or pool_size, or raise the rate",
                    seconds / 60.0
                ));
            }
        }
        out
    }
}
