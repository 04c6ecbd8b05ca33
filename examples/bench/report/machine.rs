//! The machine and the software versions the report names.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::args::Args;

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub rustc: String,
    pub php_fpm: String,
    pub rabbitmq: String,
    pub agent: String,
    pub commit: String,
    pub date: String,
}

pub fn machine(args: &Args, php_fpm: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
            let kib: f64 = line
                .trim_start_matches("MemTotal:")
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let dirty = !command_line("git", &["status", "--porcelain", "--untracked-files=no"])
        .trim()
        .is_empty();
    let php = command_line(&php_fpm.display().to_string(), &["-v"]);
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model,
        memory,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned()),
        rustc: command_line("rustc", &["-V"]),
        php_fpm: format!(
            "{}{}",
            php.lines().next().unwrap_or("unknown"),
            if php.contains("OPcache") {
                ", OPcache"
            } else {
                ""
            }
        ),
        rabbitmq: command_line("rabbitmqctl", &["version"]),
        agent: format!(
            "{} @ {}{}",
            command_line(&args.agent_bin.display().to_string(), &["--version"]),
            command_line("git", &["rev-parse", "--short", "HEAD"]),
            if dirty { " (uncommitted changes)" } else { "" }
        ),
        commit: command_line("git", &["rev-parse", "HEAD"]),
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    }
}
