//! Opening many WebSocket connections to a loopback server, fast and within bounds.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use client::connection::Socket;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// How long one connection may take to open and receive its `{"id"}`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client's read buffer per connection. tungstenite's default, 128 KiB, is allocated and
/// zero-filled up front: 10,000 idle connections would cost the load generator 1.3 GB. Chat
/// frames are ~150 bytes, so 8 KiB still holds dozens of them per read.
const READ_BUFFER: usize = 8 * 1024;

/// The benchmark floods whatever it points at, so it only points at this machine: the host
/// must be a loopback address (127.0.0.0/8, ::1) or `localhost` resolving only to those.
pub async fn require_loopback(url: &str) -> Result<()> {
    let uri: Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    if uri.scheme_str() != Some("ws") {
        bail!("{url:?}: only ws:// URLs are supported");
    }
    let host = uri.host().ok_or_else(|| anyhow!("{url:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        if ip.to_canonical().is_loopback() {
            return Ok(());
        }
        bail!("refusing {url:?}: {ip} is not a loopback address; chatload only loads this machine");
    }
    if host.eq_ignore_ascii_case("localhost") {
        let port = uri.port_u16().unwrap_or(80);
        let addresses: Vec<_> = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .collect();
        if !addresses.is_empty() && addresses.iter().all(|a| a.ip().to_canonical().is_loopback()) {
            return Ok(());
        }
        bail!("refusing {url:?}: localhost resolves to {addresses:?}, not only loopback addresses");
    }
    bail!("refusing {url:?}: the host must be 127.0.0.0/8, ::1 or localhost");
}

/// Raises this process's soft limit on open files to its hard limit, so that 10,000
/// connections fit (the usual soft limit is 1,024). A server started from this process
/// inherits the raised limit. Returns the limit now in force.
pub fn raise_open_file_limit() -> Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit failed")
}

/// Opens `count` connections, the i-th to `urls[i % urls.len()]`, at most `concurrency` handshakes at a time, and waits
/// for each to receive its `{"id":..}` frame (from then on the server broadcasts to it).
/// Returns the sockets in a stable order and the time it took.
pub async fn open(
    urls: &[String],
    count: usize,
    concurrency: usize,
    deadline: Instant,
) -> Result<(Vec<Socket>, Duration)> {
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    anyhow::ensure!(!urls.is_empty(), "no URL to connect to");
    for index in 0..count {
        let (url, permits) = (urls[index % urls.len()].clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (index, connect_one(&url).await)
        });
    }
    let mut sockets: Vec<Option<Socket>> = (0..count).map(|_| None).collect();
    let limit = tokio::time::Instant::from_std(deadline);
    while let Some(joined) = tokio::time::timeout_at(limit, tasks.join_next())
        .await
        .map_err(|_| anyhow!("the deadline passed while opening connections"))?
    {
        let (index, socket) = joined.context("a connecting task failed")?;
        let socket = socket.with_context(|| format!("connection {index} of {count} failed"))?;
        sockets[index] = Some(socket);
    }
    let sockets = sockets.into_iter().flatten().collect();
    Ok((sockets, started.elapsed()))
}

/// Opens one connection and waits for its `{"id":..}` frame, within [`CONNECT_TIMEOUT`].
pub async fn connect_one(url: &str) -> Result<Socket> {
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let attempt = async {
        // Nagle's algorithm off: small chat frames should leave at once, as a browser's do.
        let (mut socket, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
        wait_for_id(&mut socket).await?;
        anyhow::Ok(socket)
    };
    timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| anyhow!("no handshake and {{\"id\"}} within {CONNECT_TIMEOUT:?}"))?
}

/// Reads frames until the `{"id":"..."}` frame; anything before it is a protocol error.
async fn wait_for_id(socket: &mut Socket) -> Result<()> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("expected {{\"id\"}}, got {text:?}"))?;
                return match frame.get("id").and_then(|id| id.as_str()) {
                    Some(_) => Ok(()),
                    None => bail!("expected {{\"id\"}}, got {text:?}"),
                };
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => bail!("expected {{\"id\"}}, got {other:?}"),
            Some(Err(error)) => return Err(error_context(error)),
            None => bail!("the server closed the connection before sending an id"),
        }
    }
}

/// Whether a frame is a message the finished server replays to a newcomer (`"history": true`,
/// last in the frame) rather than a live one.
pub fn is_history(text: &str) -> bool {
    text.ends_with(r#","history":true}"#)
}

/// Reads frames until `count` history frames have arrived, within [`CONNECT_TIMEOUT`];
/// anything else before them is a protocol error. Returns the `seq` of the last one.
pub async fn read_history(socket: &mut Socket, count: usize) -> Result<Option<u64>> {
    let attempt = async {
        let mut last_seq = None;
        for index in 0..count {
            let text = loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => break text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(other)) => bail!("expected history frame {index}, got {other:?}"),
                    Some(Err(error)) => return Err(anyhow!(error).context("reading history")),
                    None => bail!("the server closed the connection after {index} history frames"),
                }
            };
            if !is_history(&text) {
                bail!("expected {count} history frames, got {text:?} after {index}");
            }
            let frame: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("history frame {index} is not JSON: {text:?}"))?;
            last_seq = frame.get("seq").and_then(serde_json::Value::as_u64);
        }
        anyhow::Ok(last_seq)
    };
    timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| anyhow!("{count} history frames did not arrive within {CONNECT_TIMEOUT:?}"))?
}

fn error_context(error: tungstenite::Error) -> anyhow::Error {
    anyhow!(error).context("reading the {\"id\"} frame failed")
}
