//! Operator commands on the pools: resize, step (SIGTTIN/SIGTTOU), pin and release an auto pool,
//! pause and resume.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::info;

use super::AgentHandle;
use crate::actors::root::RootMsg;
use crate::config::Config;
use crate::stats::SubjectStats;
use std::collections::BTreeMap;

impl AgentHandle {
    /// Subjects pinned by an operator.
    #[must_use]
    pub fn pins(&self) -> std::collections::BTreeSet<String> {
        self.inner.pins.lock().expect("pins lock").clone()
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
        self.inner.pins.lock().expect("pins lock").remove(subject);
        info!(subject, "Pool released to the autoscaler");
        Ok(())
    }

    /// Resizes without pinning (the autoscaler's path; bounds are the caller's).
    pub fn resize(&self, subject: &str, size: usize) {
        if self.inner.stats.contains_key(subject) {
            self.record_target(subject, size);
            let _ = self
                .inner
                .root
                .cast(RootMsg::Resize(subject.to_owned(), size));
        }
    }

    /// The pool size asked for `subject`.
    #[must_use]
    pub fn target(&self, subject: &str) -> Option<usize> {
        self.inner
            .targets
            .lock()
            .expect("targets lock")
            .get(subject)
            .copied()
    }

    /// Records the pool size asked for `subject`, and shows it in `/status`.
    pub(super) fn record_target(&self, subject: &str, size: usize) {
        self.inner
            .targets
            .lock()
            .expect("targets lock")
            .insert(subject.to_owned(), size);
        if let Some(stats) = self.inner.stats.get(subject) {
            stats.target_pool.store(size as u64, Ordering::Relaxed);
        }
    }

    /// Applies a reload to the sizes asked for: a `pool_size` changed in the file becomes the
    /// new target (else the size set at run time stays), clamped to the new bounds. Returns
    /// the targets for the root.
    pub(super) fn reload_targets(&self, old: &Config, new: &Config) -> BTreeMap<String, usize> {
        let mut targets = BTreeMap::new();
        for (name, subject) in &new.subjects {
            let (Some(current), Some(before)) = (self.target(name), old.subjects.get(name)) else {
                continue;
            };
            let asked = if subject.pool_size == before.pool_size {
                current
            } else {
                usize::from(subject.pool_size)
            };
            let target = asked.clamp(
                usize::from(subject.min_pool_size),
                usize::from(subject.max_pool_size),
            );
            self.record_target(name, target);
            targets.insert(name.clone(), target);
        }
        targets
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
        self.subject_stats(subject)?;
        self.record_target(subject, size);
        self.inner
            .root
            .cast(RootMsg::Resize(subject.to_owned(), size))?;
        if cfg.pool_mode == crate::autoscale::PoolMode::Auto {
            self.inner
                .pins
                .lock()
                .expect("pins lock")
                .insert(subject.to_owned());
        }
        info!(subject, size, "Pool resized");
        Ok(size)
    }

    /// Grows (`delta` > 0) or shrinks every pool by `delta`, clamped to each subject's bounds.
    pub fn step_pools(&self, delta: i64) {
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
        self.inner
            .root
            .cast(RootMsg::SetRate(subject.to_owned(), rate))?;
        Ok(())
    }

    /// Pauses or resumes consumption of a subject (operator command).
    ///
    /// # Errors
    /// Unknown subject.
    pub fn set_paused(&self, subject: &str, paused: bool) -> anyhow::Result<()> {
        self.pause(subject, paused, None)
    }

    /// Pauses a subject for `duration`, after which it resumes by itself (operator command).
    /// The pause is the root's: it survives consumer restarts and reloads (SIGHUP). A later
    /// pause or resume replaces it.
    ///
    /// # Errors
    /// Unknown subject.
    pub fn pause_for(&self, subject: &str, duration: std::time::Duration) -> anyhow::Result<()> {
        self.pause(subject, true, Some(duration))
    }

    fn pause(
        &self,
        subject: &str,
        paused: bool,
        duration: Option<std::time::Duration>,
    ) -> anyhow::Result<()> {
        self.subject_stats(subject)?;
        self.inner
            .root
            .cast(RootMsg::SetPaused(subject.to_owned(), paused, duration))?;
        Ok(())
    }
}
