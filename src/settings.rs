//! What an operator or the autoscaler changes in a subject at run time — its pool size, an
//! operator's pin, pause and rate limit — and the one record of it.
//!
//! Invariant: the agent is the only writer (`agent/pools`, its reload); the root reads a
//! subject's record when it starts or restarts its consumer, a running consumer is told of each
//! change by a message, and `/status` shows the record. No other copy of these values exists.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::config::{Config, PoolMode, RateLimit};

/// One subject's run-time settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The pool size asked for (config, reload, signals, `pool set`, the autoscaler).
    pub target: usize,
    /// An operator set the size of an auto pool: the autoscaler leaves it until `pool auto`.
    pub pinned: bool,
    /// An operator's pause.
    pub pause: Pause,
    /// Counts operator pauses and resumes: a timed pause ends by itself only if nothing was
    /// commanded since.
    pub pause_generation: u64,
    /// The rate limit in force: the file's, or an operator's.
    pub rate: Option<RateLimit>,
}

/// An operator's pause of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pause {
    /// Not paused by an operator.
    #[default]
    Off,
    /// Paused until resumed.
    On,
    /// Paused until this time, or until resumed.
    Until(SystemTime),
}

impl Pause {
    /// True while paused.
    #[must_use]
    pub(crate) fn is_on(self) -> bool {
        self != Self::Off
    }

    /// When a timed pause ends.
    #[must_use]
    pub(crate) fn until(self) -> Option<SystemTime> {
        match self {
            Self::Until(t) => Some(t),
            _ => None,
        }
    }
}

impl Setting {
    /// A subject's settings at start-up: an auto pool starts at its minimum and grows on
    /// evidence (Horizon starts at max), a fixed one at `pool_size`; the file's rate limit.
    #[must_use]
    pub(crate) fn initial(config: &Config, subject: &str) -> Option<Self> {
        let s = config.subjects.get(subject)?;
        let target = match s.pool_mode {
            PoolMode::Fixed => s.pool_size,
            PoolMode::Auto => s.min_pool_size,
        };
        Some(Self {
            target: usize::from(target),
            pinned: false,
            pause: Pause::Off,
            pause_generation: 0,
            rate: s.rate(),
        })
    }

    /// The settings under a reloaded configuration: a `pool_size` changed in the file becomes
    /// the target (else the size set at run time stays), clamped to the new bounds; a rate
    /// limit changed in the file replaces the one in force (an operator's too), an unchanged
    /// one leaves it; the pin and the pause stay.
    #[must_use]
    pub(crate) fn reloaded(self, old: &Config, new: &Config, subject: &str) -> Self {
        let (Some(before), Some(after)) = (old.subjects.get(subject), new.subjects.get(subject))
        else {
            return self;
        };
        let asked = if after.pool_size == before.pool_size {
            self.target
        } else {
            usize::from(after.pool_size)
        };
        let target = asked.clamp(
            usize::from(after.min_pool_size),
            usize::from(after.max_pool_size),
        );
        let rate = if before.rate() == after.rate() {
            self.rate
        } else {
            after.rate()
        };
        Self {
            target,
            rate,
            ..self
        }
    }
}

/// The record of every subject's run-time settings.
#[derive(Debug, Default)]
pub struct Settings {
    subjects: Mutex<BTreeMap<String, Setting>>,
}

impl Settings {
    /// Every subject of `config` with its start-up settings.
    #[must_use]
    pub(crate) fn new(config: &Config) -> Self {
        let subjects = config
            .subjects
            .keys()
            .filter_map(|name| Some((name.clone(), Setting::initial(config, name)?)))
            .collect();
        Self {
            subjects: Mutex::new(subjects),
        }
    }

    /// A subject's settings.
    #[must_use]
    pub(crate) fn get(&self, subject: &str) -> Option<Setting> {
        self.lock().get(subject).copied()
    }

    /// Changes a subject's settings; returns them as changed (`None`: unknown subject).
    pub(crate) fn update(
        &self,
        subject: &str,
        change: impl FnOnce(&mut Setting),
    ) -> Option<Setting> {
        let mut subjects = self.lock();
        let setting = subjects.get_mut(subject)?;
        change(setting);
        Some(*setting)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Setting>> {
        self.subjects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pool_size: u16, rate: &str) -> Config {
        crate::config::testing::config(
            "status_path = \"/fpm-status\"",
            &format!(
                "[subjects.event]\nqueue = \"messages.event\"\npool_size = {pool_size}\n\
                 max_pool_size = 8\n{rate}\n\
                 [subjects.command]\nqueue = \"messages.command\"\npool_mode = \"auto\"\n\
                 min_pool_size = 2\nmax_pool_size = 6\n"
            ),
        )
    }

    #[test]
    fn a_fixed_pool_starts_at_its_size_and_an_auto_one_at_its_minimum() {
        let settings = Settings::new(&config(3, ""));
        assert_eq!(settings.get("event").unwrap().target, 3);
        assert_eq!(settings.get("command").unwrap().target, 2);
        assert_eq!(settings.get("nope"), None);
        assert_eq!(settings.update("nope", |s| s.target = 1), None);
    }

    #[test]
    fn a_reload_keeps_what_the_file_did_not_change() {
        let old = config(3, r#"rate_limit = "10/s""#);
        let operator = Setting {
            target: 7,
            pinned: true,
            pause: Pause::On,
            pause_generation: 4,
            rate: Some(RateLimit {
                rate: crate::config::Rate::parse("2/s").unwrap(),
                burst: 1,
            }),
        };
        // Same file: everything an operator set stays.
        assert_eq!(operator.reloaded(&old, &old, "event"), operator);
        // A new pool_size replaces the run-time size; a new rate limit the operator's.
        let new = config(5, r#"rate_limit = "20/s""#);
        let after = operator.reloaded(&old, &new, "event");
        assert_eq!(after.target, 5);
        assert_eq!(after.rate, new.subjects["event"].rate());
        assert_eq!(
            (after.pinned, after.pause, after.pause_generation),
            (true, Pause::On, 4)
        );
        // The run-time size is clamped to the new bounds.
        let smaller = config(3, r#"rate_limit = "10/s""#).tap_max(2);
        assert_eq!(operator.reloaded(&old, &smaller, "event").target, 2);
    }

    trait TapMax {
        fn tap_max(self, max: u16) -> Self;
    }

    impl TapMax for Config {
        fn tap_max(mut self, max: u16) -> Self {
            let s = self.subjects.get_mut("event").unwrap();
            s.max_pool_size = max;
            s.pool_size = s.pool_size.min(max);
            self
        }
    }
}
