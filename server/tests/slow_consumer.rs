//! A client that never reads while another sends 100,000 messages: the server's memory stays
//! bounded, the slow client is disconnected, and everyone else receives everything.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use client::message::text;
use common::{connect, rss_kib, start, wait_health};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const MESSAGES: usize = 100_000;
/// Messages sent before the reader catches up: well under the reader's queue, so only a
/// client that does not read at all can fill its queue.
const WINDOW: usize = 500;

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_memory_stays_bounded() -> Result<()> {
    let server =
        start(&["--message-rate", "0", "--frame-rate", "0", "--queue-frames", "1024"]).await?;
    let pid = server.pid().context("no pid")?;

    // Connected, handshake done, and then never polled again: it reads nothing, not even pings.
    let (slow, _) = tokio_tungstenite::connect_async(server.ws_url()).await?;
    let mut reader = connect(&server).await?;
    let sender = connect(&server).await?;
    wait_health(&server, |h| h["connections"] == 3).await?;
    let mut sender = sender.conn.into_socket();
    let before = rss_kib(pid)?;
    let mut peak = before;

    let filler = "x".repeat(200);
    let mut received = 0;
    while received < MESSAGES {
        let batch = WINDOW.min(MESSAGES - received);
        for n in received..received + batch {
            sender
                .feed(Message::text(format!(
                    "{{\"type\":\"text\",\"data\":{{\"text\":\"{n} {filler}\"}}}}"
                )))
                .await?;
        }
        sender.flush().await?;
        for n in received..received + batch {
            let frame = reader.conn.recv_json().await?;
            let got = frame["data"]["text"].as_str().unwrap_or_default();
            assert!(got.starts_with(&format!("{n} ")), "expected message {n}, got {got:.20}");
        }
        received += batch;
        peak = peak.max(rss_kib(pid)?);
    }

    // The slow client is gone; the other two remain.
    let health = wait_health(&server, |h| h["connections"] == 2).await?;
    assert_eq!(health["feed"], 2);
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(growth_mib < 100, "the server grew by {growth_mib} MiB ({before} KiB → {peak} KiB)");

    // What the slow client's socket still holds ends (with or without a close frame).
    let mut slow = slow;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        let mut frames = 0usize;
        while let Some(Ok(message)) = slow.next().await {
            if message.is_close() {
                break;
            }
            frames += 1;
        }
        frames
    })
    .await
    .context("the slow client's connection never ended")?;
    assert!(ended < MESSAGES, "the slow client got everything ({ended}): it was never dropped");

    // And the others still chat.
    sender.send(Message::text(text("after").to_string())).await?;
    assert_eq!(reader.conn.recv_json().await?["data"]["text"], "after");
    Ok(())
}
