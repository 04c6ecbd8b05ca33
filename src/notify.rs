//! The systemd notify protocol (`sd_notify`): READY, RELOADING, STOPPING, WATCHDOG, STATUS.
//!
//! Invariant: every message is one datagram to `$NOTIFY_SOCKET`; without the variable every call
//! is a no-op, so the agent runs the same under supervisord or a shell.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A connection to the service manager, if there is one.
pub(crate) struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (and `WATCHDOG_PID`, which must be ours).
    #[must_use]
    pub(crate) fn from_env() -> Self {
        Self::new(
            std::env::var("NOTIFY_SOCKET").ok().as_deref(),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        )
    }

    /// Builds a notifier from the variables' values.
    #[must_use]
    pub(crate) fn new(
        socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Self {
        let socket = socket.and_then(|path| {
            let addr = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                std::os::unix::net::SocketAddr::from_pathname(path).ok()?
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        let for_us =
            watchdog_pid.is_none_or(|pid| pid.parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = watchdog_usec
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        Self { socket, watchdog }
    }

    /// How often to send `WATCHDOG=1` (half the configured timeout), if the watchdog is on.
    #[must_use]
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// Sends one notification, e.g. `READY=1`. Errors are ignored (the manager may be gone).
    pub(crate) fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.socket {
            let _ = socket.send_to_addr(state.as_bytes(), addr);
        }
    }

    /// `RELOADING=1` with the `CLOCK_MONOTONIC` timestamp systemd asks for.
    pub(crate) fn reloading(&self) {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        }
        let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000;
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_the_socket() {
        let dir = std::env::temp_dir().join(format!("amqp-agent-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str(), Some("4000000"), None);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(2)));
        n.notify("READY=1");
        n.reloading();
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let len = server.recv(&mut buf).unwrap();
        assert!(
            std::str::from_utf8(&buf[..len])
                .unwrap()
                .starts_with("RELOADING=1\nMONOTONIC_USEC=")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn without_a_socket_nothing_happens_and_foreign_watchdogs_are_ignored() {
        let n = Notifier::new(None, Some("1000"), Some("1"));
        n.notify("READY=1");
        assert_eq!(n.watchdog_interval(), None);
    }
}
