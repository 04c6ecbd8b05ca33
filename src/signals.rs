//! Unix signals mapped onto a closed set of commands (vector's `src/signal.rs` pattern).

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// What an operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// SIGTERM / SIGINT: stop taking deliveries, finish in-flight work, exit 0.
    Drain,
    /// SIGQUIT: stop now; unfinished messages return to their queues.
    Quit,
    /// SIGHUP: re-read the config file.
    Reload,
    /// SIGTTIN: every pool grows by one.
    Grow,
    /// SIGTTOU: every pool shrinks by one.
    Shrink,
    /// SIGUSR1: log a status snapshot.
    Status,
}

/// Starts listening for signals; commands arrive on the returned channel, in order.
///
/// Signals of one kind that arrive close together may coalesce into one wake-up (the kernel keeps
/// one pending signal per kind); each wake-up yields one command.
///
/// # Errors
/// When a signal handler cannot be installed.
pub(crate) fn listen() -> std::io::Result<mpsc::UnboundedReceiver<Command>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let kinds = [
        (SignalKind::terminate(), Command::Drain),
        (SignalKind::interrupt(), Command::Drain),
        (SignalKind::quit(), Command::Quit),
        (SignalKind::hangup(), Command::Reload),
        (SignalKind::from_raw(21), Command::Grow), // SIGTTIN
        (SignalKind::from_raw(22), Command::Shrink), // SIGTTOU
        (SignalKind::user_defined1(), Command::Status),
    ];
    for (kind, command) in kinds {
        let mut stream = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(command).is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
}
