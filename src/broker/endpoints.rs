//! Cluster endpoints: which node to connect to next, and how (TLS, heartbeat).
//!
//! Every (re)connection walks the endpoints once, starting after the node used last time, from
//! a per-process random start: agents spread over the nodes, and a reconnection moves away from
//! the node that just failed instead of waiting for it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::LongString;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

use super::{BrokerError, amqp};
use crate::config::{Config, TlsConfig};

/// Upper bound of one connection attempt when the URL sets no `connection_timeout`: a node
/// that drops packets silently must not stall the walk to the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The order in which to try `n` endpoints, starting at `start`.
pub(crate) fn rotation(n: usize, start: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (start + i) % n.max(1))
}

/// A per-process random offset, so that agents sharing one config start on different nodes.
fn offset() -> usize {
    static OFFSET: OnceLock<usize> = OnceLock::new();
    *OFFSET.get_or_init(|| rand::random::<u32>() as usize)
}

/// `host:port` of an endpoint: what `/status` and the `node` metric label show.
#[must_use]
pub(crate) fn node_of(url: &str) -> String {
    url.parse::<AMQPUri>().map_or_else(
        |_| crate::config::redact_url(url),
        |u| format!("{}:{}", u.authority.host, u.authority.port),
    )
}

/// Reads the PEM files of `[amqp.tls]` (again on every connection, so renewed files are used).
///
/// # Errors
/// An I/O error naming the key and file.
pub(crate) fn tls_config(tls: Option<&TlsConfig>) -> Result<OwnedTLSConfig, String> {
    let Some(tls) = tls else {
        return Ok(OwnedTLSConfig::default());
    };
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| format!("amqp.tls.{key}: cannot read {}: {e}", path.display()))
    };
    let cert_chain = match &tls.ca_file {
        Some(path) => Some(
            String::from_utf8(read("ca_file", path)?)
                .map_err(|_| format!("amqp.tls.ca_file: {} is not PEM text", path.display()))?,
        ),
        None => None,
    };
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read("cert_file", cert)?,
            key: read("key_file", key)?,
        }),
        _ => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Connects to the first endpoint of the rotation that answers; returns the connection and the
/// node (`host:port`) it reached. `cursor` remembers where the next (re)connection starts.
///
/// # Errors
/// The last endpoint's error when none could be reached.
pub(crate) async fn connect(
    config: &Config,
    role: &str,
    cursor: &AtomicUsize,
) -> Result<(Connection, String), BrokerError> {
    let urls = config.amqp_urls();
    let n = urls.len();
    let start = cursor.load(Ordering::Relaxed).wrapping_add(offset()) % n.max(1);
    let mut last = None;
    for i in rotation(n, start) {
        match connect_one(config, urls[i], role).await {
            Ok(connection) => {
                // Next time, start after this node.
                cursor.fetch_add((i + n - start) % n + 1, Ordering::Relaxed);
                return Ok((connection, node_of(urls[i])));
            }
            Err(e) => {
                tracing::warn!(node = %node_of(urls[i]), error = %e, "Cannot connect to this node; trying the next one");
                last = Some(e);
            }
        }
    }
    cursor.fetch_add(1, Ordering::Relaxed);
    Err(last.expect("at least one endpoint (validated)"))
}

async fn connect_one(config: &Config, url: &str, role: &str) -> Result<Connection, BrokerError> {
    let context = format!("cannot connect to {}", crate::config::redact_url(url));
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e: String| BrokerError::Config(format!("{context}: {e}")))?;
    if let (None, Some(heartbeat)) = (uri.query.heartbeat, config.amqp.heartbeat) {
        uri.query.heartbeat = Some(u16::try_from(heartbeat.as_secs()).unwrap_or(u16::MAX));
    }
    let timeout = uri
        .query
        .connection_timeout
        .map_or(CONNECT_TIMEOUT, Duration::from_millis);
    let name = format!("amqp-agent {role} (pid {})", std::process::id());
    // The I/O loop runs on the agent's runtime, beside the consumer it feeds: no thread
    // hand-off per socket read and per dispatched delivery (vendor/lapin/PATCHES.md 7).
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(name))
        .with_io_loop_task();
    let tls = if uri.scheme == AMQPScheme::AMQPS {
        tls_config(config.amqp.tls.as_ref()).map_err(BrokerError::Config)?
    } else {
        OwnedTLSConfig::default()
    };
    let server_name = config
        .amqp
        .tls
        .as_ref()
        .and_then(|t| t.server_name.clone())
        .filter(|_| uri.scheme == AMQPScheme::AMQPS);
    let runtime = lapin::runtime::default_runtime().map_err(amqp(context.clone()))?;
    let attempt = async {
        match server_name {
            None => Connection::connect_uri_with_config(uri, props, tls, runtime).await,
            Some(server_name) => {
                let (host, port) = (uri.authority.host.clone(), uri.authority.port);
                Connection::connector(
                    uri,
                    runtime,
                    async move |_uri, runtime| {
                        let addrs: Vec<std::net::SocketAddr> =
                            tokio::net::lookup_host((host.as_str(), port))
                                .await?
                                .collect();
                        let stream = lapin::tcp::AsyncTcpStream::connect(&runtime, addrs).await?;
                        // Verify the certificate against `server_name`, not the URL's host.
                        Ok(stream.into_tls(&server_name, tls.as_ref()).await?)
                    },
                    props,
                )
                .await
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result.map_err(amqp(context)),
        Err(_) => Err(BrokerError::Timeout(format!(
            "{context}: no answer within {timeout:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_visits_every_endpoint_once_from_the_start() {
        assert_eq!(rotation(3, 1).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(rotation(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(rotation(1, 7).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn nodes_are_host_and_port_without_credentials() {
        assert_eq!(
            node_of("amqp://u:secret@rabbit-2:5673/%2f"),
            "rabbit-2:5673"
        );
        assert_eq!(node_of("amqps://u:p@rabbit-1/%2f"), "rabbit-1:5671");
    }

    #[test]
    fn a_missing_tls_file_names_the_key() {
        let tls = TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsConfig::default()
        };
        let e = tls_config(Some(&tls)).unwrap_err();
        assert!(e.starts_with("amqp.tls.ca_file"), "{e}");
    }
}
