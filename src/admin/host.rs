//! Which `Host` a request to the admin listener may name (DNS rebinding).
//!
//! A web page on `evil.example` can make its name resolve to the agent's address; the browser
//! then sends its simple GETs to the agent with `Host: evil.example` and, for a same-origin
//! request, no `Origin`. Refusing every `Host` but the listener's own address and the names
//! the operator configured closes that door for every route.

use std::net::{IpAddr, SocketAddr};

/// True when `host` (the `Host` header's value, `None` when absent) names this listener:
/// `localhost`, an IP address that is loopback, unspecified or the one the client connected
/// to (`local`), or one of `allowed` (lowercase, no trailing dot). A request without `Host`
/// (HTTP/1.0 probes) passes: every browser sends one.
#[must_use]
pub(super) fn allowed(host: Option<&[u8]>, local: Option<SocketAddr>, allowed: &[String]) -> bool {
    let Some(host) = host else {
        return true;
    };
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = name_of(host).trim_end_matches('.').to_ascii_lowercase();
    if let Ok(ip) = name.parse::<IpAddr>() {
        let ip = ip.to_canonical();
        if ip.is_loopback()
            || ip.is_unspecified()
            || local.is_some_and(|l| l.ip().to_canonical() == ip)
        {
            return true;
        }
    }
    name == "localhost" || allowed.contains(&name)
}

/// The names of `admin.allowed_hosts` as [`allowed`] compares them.
#[must_use]
pub(super) fn normalized(names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect()
}

/// The host part of a `Host` value: `[v6]:port`, `name:port` or a bare name.
fn name_of(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or("", |(name, _)| name);
    }
    match host.split_once(':') {
        // More than one `:` is a bare IPv6 address, which a client should not send: taken whole.
        Some((name, port)) if !port.contains(':') => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listeners_own_addresses_and_configured_names_pass() {
        let local: SocketAddr = "10.0.0.7:9466".parse().unwrap();
        let names = normalized(&["Agent.Internal.".to_owned()]);
        let ok = |h: &str| allowed(Some(h.as_bytes()), Some(local), &names);
        for host in [
            "10.0.0.7:9466",
            "10.0.0.7",
            "127.0.0.1:9466",
            "127.9.9.9",
            "[::1]:9466",
            "0.0.0.0:9466",
            "localhost:9466",
            "LOCALHOST.",
            "agent.internal:9466",
            "AGENT.INTERNAL",
        ] {
            assert!(ok(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9466",
            "10.0.0.8:9466",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "agent.internal.evil.example",
            "",
            "[10.0.0.7",
        ] {
            assert!(!ok(host), "{host}");
        }
        assert!(allowed(None, Some(local), &names), "no Host: HTTP/1.0");
        assert!(!allowed(Some(b"\xff"), Some(local), &names));
        // [::]-bound listener, IPv4 client: the mapped local address is the client's.
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:9466".parse().unwrap();
        assert!(allowed(Some(b"10.0.0.7"), Some(mapped), &[]));
    }
}
