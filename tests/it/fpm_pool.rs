//! `scripts/lib/fpm-pool`, the one writer of php-fpm configs: what it writes passes
//! `php-fpm -t`, and php-fpm reads its values as given (`-tt` prints the parsed config); a bad
//! option is refused with a message naming it, and nothing is written.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{fpm_pool, php_fpm_binary};

/// A directory of its own for one test's configs, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fpm-pool-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What `php-fpm -tt -y conf` printed (the config as php-fpm parsed it), after checking that
/// the config passed. `-R` as root, where the writer runs the children as root.
fn parsed(conf: &Path) -> String {
    let mut cmd = Command::new(php_fpm_binary());
    cmd.arg("-n").arg("-tt").arg("-y").arg(conf);
    if unsafe { libc::geteuid() } == 0 {
        cmd.arg("-R");
    }
    let out = cmd.output().expect("php-fpm");
    // php-fpm -t reports on stderr.
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && report.contains("test is successful"),
        "php-fpm -t refused {}:\n{report}\n{}",
        conf.display(),
        std::fs::read_to_string(conf).unwrap_or_default()
    );
    report
}

/// `line` ("key = value", "[pool]") among the lines php-fpm printed.
fn has_line(report: &str, line: &str) -> bool {
    report.lines().any(|l| {
        l.trim_end()
            .strip_suffix(line)
            .is_some_and(|head| head.ends_with([' ', '\t']))
    })
}

/// Writes `dir`'s `fpm.conf` with `writer`, checks that php-fpm read each of `lines` from it,
/// and returns what php-fpm printed.
fn write_and_read(writer: &mut Command, dir: &Dir, lines: &[&str]) -> String {
    let conf = dir.0.join("fpm.conf");
    fpm_pool::write_config(writer, &conf).unwrap();
    let report = parsed(&conf);
    for line in lines {
        assert!(
            has_line(&report, line),
            "php-fpm did not read `{line}`:\n{report}"
        );
    }
    report
}

#[test]
fn a_tcp_pool_passes_php_fpm_test_with_its_values_intact() {
    let dir = Dir::new("tcp");
    let tricky = "a b;c&d!e|f~g(h)$i{j}'k=l";
    let report = write_and_read(
        fpm_pool::writer()
            .env("FPM_POOL_TEST_SECRET", "from-the-environment")
            .args(["--pid", &dir.path("fpm.pid")])
            .args(["--error-log", &dir.path("fpm.log")])
            .args(["--pool", "tcp"])
            .args(["--listen", "127.0.0.1:1"])
            .args(["--children", "3"])
            .args(["--listen-backlog", "511"])
            .args(["--max-requests", "0"])
            .args(["--request-terminate-timeout", "30s"])
            .args(["--clear-env", "no"])
            .args(["--env", &format!("TRICKY={tricky}")])
            .args(["--env", "FPM_POOL_TEST_SECRET"])
            .args(["--admin-value", "memory_limit=256M"])
            .args(["--admin-flag", "log_errors=on"]),
        &dir,
        &[
            "daemonize = no",
            "listen = 127.0.0.1:1",
            "listen.backlog = 511",
            "pm = static",
            "pm.max_children = 3",
            "pm.max_requests = 0",
            "request_terminate_timeout = 30s",
            "clear_env = no",
            &format!("env[TRICKY] = {tricky}"),
            "env[FPM_POOL_TEST_SECRET] = from-the-environment",
            "php_admin_value[memory_limit] = 256M",
            "php_admin_value[log_errors] = 1",
        ],
    );
    let root = unsafe { libc::geteuid() } == 0;
    assert_eq!(has_line(&report, "user = root"), root, "{report}");
}

#[test]
fn two_pools_one_on_a_unix_socket_pass_php_fpm_test() {
    let dir = Dir::new("unix");
    let socket = dir.path("fpm.sock");
    let report = write_and_read(
        fpm_pool::writer()
            .args(["--error-log", &dir.path("fpm.log")])
            .args(["--pool", "unix"])
            .args(["--listen", &socket])
            .args(["--listen-mode", "0666"])
            .args(["--children", "2"])
            .args(["--status-path", "/fpm-status"])
            .args(["--pool", "tcp"])
            .args(["--listen", "127.0.0.1:2"])
            .args(["--children", "1"])
            .args(["--user", "nobody"]),
        &dir,
        &[
            "[unix]",
            &format!("listen = {socket}"),
            "listen.mode = 0666",
            "pm.status_path = /fpm-status",
            "[tcp]",
            "listen = 127.0.0.1:2",
        ],
    );
    let root = unsafe { libc::geteuid() } == 0;
    assert_eq!(has_line(&report, "user = nobody"), root, "{report}");
}

#[test]
fn a_bad_option_is_refused_naming_it() {
    let pool = ["--error-log", "/tmp/fpm.log", "--pool", "p"];
    let tcp = ["--listen", "127.0.0.1:9000", "--children", "2"];
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus", "1"], "--bogus"),
        (&["--listen", "127.0.0.1", "--children", "2"], "--listen"),
        (
            &["--listen", "127.0.0.1:9000", "--children", "0"],
            "--children",
        ),
        (&["--children", "2"], "--listen is required"),
        (&["--listen-mode", "0666"], "--listen-mode"),
        (&["--env", "A=say \"hi\""], "--env A"),
        (&["--env", "A=${HOME}"], "--env A"),
        (&["--env", "UNSET_FPM_POOL_TEST_VARIABLE"], "--env UNSET"),
        (
            &["--admin-flag", "log_errors=maybe"],
            "--admin-flag log_errors",
        ),
        (&["--clear-env", "maybe"], "--clear-env"),
        (&["--env", "A=1", "--env", "A=2"], "env[A] given twice"),
        (
            &["--request-terminate-timeout", "soon"],
            "--request-terminate-timeout",
        ),
        (&["--user", "Root;"], "--user"),
    ];
    for (extra, named) in cases {
        let mut writer = fpm_pool::writer();
        writer.args(pool);
        // The cases on --listen and --children give their own; the others add a valid pair.
        if !extra.iter().any(|a| *a == "--listen" || *a == "--children") {
            writer.args(tcp);
        }
        let out = writer
            .args(*extra)
            .env_remove("UNSET_FPM_POOL_TEST_VARIABLE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{extra:?}: `{named}` not in: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{extra:?} printed a config");
    }
    let err = fpm_pool::write_config(
        fpm_pool::writer().args(["--pool", "p", "--children", "1"]),
        Path::new("/nonexistent/never-written.conf"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--listen"), "{err}");
}
