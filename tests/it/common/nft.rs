//! Silent partitions with nftables (Debian's `nft`): packets to and from one loopback port are
//! dropped, no RST, as a dead network path does. The table is the test's own and is removed
//! when the [`Blackhole`] is dropped, on a failed test too.

use std::process::Command;

/// Drops every TCP packet from or to one port on loopback while it lives.
pub struct Blackhole {
    table: String,
}

fn nft(script: &str) -> (bool, String) {
    let out = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(script.as_bytes())?;
            child.wait_with_output()
        });
    match out {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ),
        Err(e) => (false, e.to_string()),
    }
}

impl Blackhole {
    /// Starts dropping the traffic of `port` on the loopback interface.
    pub fn port(port: u16) -> Self {
        let table = format!("amqp_agent_test_{}_{port}", std::process::id());
        let (ok, err) = nft(&format!(
            "table inet {table} {{\n  chain input {{\n    type filter hook input priority -10; policy accept;\n    \
             iifname \"lo\" tcp dport {port} drop\n    iifname \"lo\" tcp sport {port} drop\n  }}\n}}\n"
        ));
        assert!(ok, "nft: {err} (install Debian's nftables)");
        Self { table }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table inet {}\n", self.table));
    }
}
