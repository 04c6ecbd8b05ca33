//! A php-fpm config written by `scripts/lib/fpm-pool`, and the command that starts php-fpm on it; the one writer of php-fpm configs for the
//! tests, the bench, the soak, the demo and the scripts. Part of the test harness, and compiled
//! into `examples/bench` and `examples/soak` with `#[path]`.

use std::path::Path;
use std::process::{Command, Stdio};

/// `scripts/lib/fpm-pool`, to be given its options (and the environment variable of a secret
/// passed as `--env NAME`, which then stays out of the command line).
pub fn writer() -> Command {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lib/fpm-pool"))
}

/// php-fpm `bin` in the foreground on `conf` (`-R` as root: the writer then runs the children as
/// root), its input and output discarded.
pub fn command(bin: &Path, conf: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--nodaemonize").arg("--fpm-config").arg(conf);
    if unsafe { libc::geteuid() } == 0 {
        cmd.arg("-R");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Runs `writer` and writes the config it prints to `path`.
///
/// # Errors
/// The writer could not run or refused an option (the error holds its message, which names the
/// option), or `path` could not be written.
pub fn write_config(writer: &mut Command, path: &Path) -> std::io::Result<()> {
    let out = writer.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        )));
    }
    std::fs::write(path, out.stdout)
}
