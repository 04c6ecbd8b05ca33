//! Operator commands on the pools: resize, step (SIGTTIN/SIGTTOU), pin and release an auto pool,
//! pause and resume.

use std::sync::Arc;

use tracing::info;

use super::AgentHandle;
use crate::actors::root::RootMsg;
use crate::config::Config;
use crate::settings::{Pause, Setting};
use crate::stats::SubjectStats;

impl AgentHandle {
    /// Subjects pinned by an operator.
    #[must_use]
    pub fn pins(&self) -> std::collections::BTreeSet<String> {
        self.inner
            .stats
            .keys()
            .filter(|name| self.setting(name).is_some_and(|s| s.pinned))
            .cloned()
            .collect()
    }

    /// A subject's run-time settings (the agent's record of them).
    #[must_use]
    pub(crate) fn setting(&self, subject: &str) -> Option<Setting> {
        self.inner.settings.get(subject)
    }

    /// Releases an operator's pin: the subject's pool is sized by the autoscaler again.
    ///
    /// # Errors
    /// Unknown subject, or a subject with `pool_mode = "fixed"`.
    pub fn pool_auto(&self, subject: &str) -> anyhow::Result<()> {
        self.subject_stats(subject)?;
        let config = self.config();
        if config.subjects[subject].pool_mode != crate::autoscale::PoolMode::Auto {
            anyhow::bail!("`{subject}` has pool_mode = \"fixed\" (subjects.{subject}.pool_mode)");
        }
        self.inner.settings.update(subject, |s| s.pinned = false);
        info!(subject, "Pool released to the autoscaler");
        Ok(())
    }

    /// Resizes without pinning (the autoscaler's path; bounds are the caller's).
    pub(crate) fn resize(&self, subject: &str, size: usize) {
        if self
            .inner
            .settings
            .update(subject, |s| s.target = size)
            .is_some()
        {
            let _ = self
                .inner
                .root
                .cast(RootMsg::Resize(subject.to_owned(), size));
        }
    }

    /// The pool size asked for `subject`.
    #[must_use]
    pub(crate) fn target(&self, subject: &str) -> Option<usize> {
        self.setting(subject).map(|s| s.target)
    }

    /// Applies a reload to the record (`Setting::reloaded`); returns the subjects whose rate
    /// limit changed, with the new one.
    pub(super) fn reload_settings(
        &self,
        old: &Config,
        new: &Config,
    ) -> Vec<(String, Option<crate::rate::RateLimit>)> {
        let mut changed = Vec::new();
        for name in new.subjects.keys() {
            let Some(before) = self.setting(name) else {
                continue;
            };
            let after = before.reloaded(old, new, name);
            self.inner.settings.update(name, |s| *s = after);
            if after.rate != before.rate {
                changed.push((name.clone(), after.rate));
            }
        }
        changed
    }

    fn subject_stats(&self, subject: &str) -> anyhow::Result<&Arc<SubjectStats>> {
        self.inner
            .stats
            .get(subject)
            .ok_or_else(|| anyhow::anyhow!("unknown subject `{subject}`"))
    }

    /// Sets a subject's pool size (within `min_pool_size..=max_pool_size`).
    ///
    /// # Errors
    /// Unknown subject or size out of bounds.
    pub fn set_pool(&self, subject: &str, size: usize) -> anyhow::Result<usize> {
        let config = self.config();
        let cfg = config
            .subjects
            .get(subject)
            .ok_or_else(|| anyhow::anyhow!("unknown subject `{subject}`"))?;
        let (min, max) = (
            usize::from(cfg.min_pool_size),
            usize::from(cfg.max_pool_size),
        );
        if !(min..=max).contains(&size) {
            anyhow::bail!(
                "pool size {size} for `{subject}` is outside {min}..={max} (subjects.{subject}.min_pool_size / max_pool_size)"
            );
        }
        let auto = cfg.pool_mode == crate::autoscale::PoolMode::Auto;
        self.inner.settings.update(subject, |s| {
            s.target = size;
            s.pinned |= auto;
        });
        self.inner
            .root
            .cast(RootMsg::Resize(subject.to_owned(), size))?;
        info!(subject, size, "Pool resized");
        Ok(size)
    }

    /// Grows (`delta` > 0) or shrinks every pool by `delta`, clamped to each subject's bounds.
    pub(crate) fn step_pools(&self, delta: i64) {
        let config = self.config();
        for name in self.inner.stats.keys() {
            let (Some(cfg), Some(current)) = (config.subjects.get(name), self.target(name)) else {
                continue;
            };
            let current = current as i64;
            let next =
                (current + delta).clamp(i64::from(cfg.min_pool_size), i64::from(cfg.max_pool_size));
            if next != current {
                let _ = self.set_pool(name, next as usize);
            }
        }
    }

    /// Sets (or lifts, `None`) a subject's rate limit (operator command). It applies at once
    /// and is kept over reloads unless the file's `rate_limit` changes.
    ///
    /// # Errors
    /// Unknown subject.
    pub fn set_rate(
        &self,
        subject: &str,
        rate: Option<crate::rate::RateLimit>,
    ) -> anyhow::Result<()> {
        self.subject_stats(subject)?;
        self.inner.settings.update(subject, |s| s.rate = rate);
        self.inner
            .root
            .cast(RootMsg::SetRate(subject.to_owned(), rate))?;
        Ok(())
    }

    /// Pauses or resumes consumption of a subject (operator command).
    ///
    /// # Errors
    /// Unknown subject.
    pub(crate) fn set_paused(&self, subject: &str, paused: bool) -> anyhow::Result<()> {
        self.pause(subject, paused, None)
    }

    /// Pauses a subject for `duration`, after which it resumes by itself (operator command).
    /// The pause is the agent's (`settings`, and its own timer): it survives consumer restarts
    /// and reloads (SIGHUP). A later pause or resume replaces it.
    ///
    /// # Errors
    /// Unknown subject.
    pub(crate) fn pause_for(
        &self,
        subject: &str,
        duration: std::time::Duration,
    ) -> anyhow::Result<()> {
        self.pause(subject, true, Some(duration))
    }

    fn pause(
        &self,
        subject: &str,
        paused: bool,
        duration: Option<std::time::Duration>,
    ) -> anyhow::Result<()> {
        self.subject_stats(subject)?;
        let pause = match (paused, duration) {
            (false, _) => Pause::Off,
            (true, None) => Pause::On,
            (true, Some(d)) => Pause::Until(std::time::SystemTime::now() + d),
        };
        let setting = self.inner.settings.update(subject, |s| {
            s.pause = pause;
            s.pause_generation += 1;
        });
        self.inner
            .root
            .cast(RootMsg::SetPaused(subject.to_owned(), paused))?;
        if let (Some(d), Some(setting)) = (duration.filter(|_| paused), setting) {
            let (agent, subject) = (self.clone(), subject.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                agent.pause_ran_out(&subject, setting.pause_generation);
            });
        }
        Ok(())
    }

    /// A timed pause ran out: the subject resumes, unless a pause or resume came in between.
    fn pause_ran_out(&self, subject: &str, generation: u64) {
        let mut resumed = false;
        self.inner.settings.update(subject, |s| {
            if s.pause_generation == generation && s.pause.is_on() {
                s.pause = Pause::Off;
                s.pause_generation += 1;
                resumed = true;
            }
        });
        if resumed {
            info!(subject, "Timed pause ran out: resuming consumption");
            let _ = self
                .inner
                .root
                .cast(RootMsg::SetPaused(subject.to_owned(), false));
        }
    }
}
