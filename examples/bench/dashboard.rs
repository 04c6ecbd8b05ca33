//! A dashboard left open during a run (`--quick --dashboard`): what a browser tab on the
//! overview and one on the metrics page ask the agent for (`assets/dashboard.js`): the page
//! once, then its data and history every `every` (5 s on the page).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// One HTTP/1.1 GET on a new connection, read to the end; true for a 200.
async fn get(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    reply.starts_with(b"HTTP/1.1 200")
}

/// Runs until aborted, counting successful fetches in `fetches`.
pub async fn open(port: u16, every: Duration, fetches: Arc<AtomicU64>) {
    // The agent's listener may not be up yet: the page is loaded once it answers.
    for path in [
        "/",
        "/assets/dashboard.js",
        "/assets/dashboard.css",
        "/dashboard/metrics",
    ] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !get(port, path).await && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fetches.fetch_add(1, Ordering::Relaxed);
    }
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        for path in ["/dashboard/data.json", "/dashboard/history.json"] {
            if get(port, path).await {
                fetches.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
