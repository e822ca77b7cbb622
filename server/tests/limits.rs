//! Every limit, with small values set by flags so each test is quick.

mod common;

use std::time::Duration;

use anyhow::{Result, bail};
use client::message::text;
use common::{connect, recv_error, start, wait_closed, wait_health};
use serde_json::json;

#[tokio::test]
async fn an_oversized_frame_closes_with_1009() -> Result<()> {
    let server = start(&["--max-frame-bytes", "1024"]).await?;
    let mut a = connect(&server).await?;
    let mut b = connect(&server).await?;
    // Just under the limit is fine (the text limit is raised so the frame limit is what bites).
    a.conn.send_json(&text(&"x".repeat(900))).await?;
    assert_eq!(b.conn.recv_json().await?["data"]["text"].as_str().map(str::len), Some(900));
    a.conn.send_json(&text(&"x".repeat(100_000))).await?;
    assert_eq!(wait_closed(&mut a.conn).await?, Some(1009));
    b.conn.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn texts_and_emoji_have_a_length_limit() -> Result<()> {
    let server = start(&["--max-text-chars", "10", "--max-emoji-chars", "2"]).await?;
    let mut a = connect(&server).await?;
    let mut b = connect(&server).await?;
    a.conn.send_json(&text("0123456789")).await?;
    assert_eq!(b.conn.recv_json().await?["data"]["text"], "0123456789");
    a.conn.send_json(&text("0123456789a")).await?;
    assert!(recv_error(&mut a.conn).await?.contains("longer than 10 characters"));
    a.conn.send_json(&json!({"type": "emoji", "data": {"emoji": "😋😋😋"}})).await?;
    assert!(recv_error(&mut a.conn).await?.contains("longer than 2 characters"));
    b.conn.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn a_flood_gets_an_error_then_close_1008() -> Result<()> {
    let server = start(&["--message-rate", "2", "--message-burst", "5"]).await?;
    let mut flooder = connect(&server).await?;
    let mut other = connect(&server).await?;
    // Send until the error frame comes back (bounded); the first five pass.
    let mut sent = 0;
    for n in 0..5 {
        flooder.conn.send_json(&text(&n.to_string())).await?;
        sent += 1;
    }
    for n in 0..5 {
        assert_eq!(other.conn.recv_json().await?["data"]["text"], n.to_string());
    }
    flooder.conn.send_json(&text("one too many")).await?;
    let error = recv_error(&mut flooder.conn).await?;
    assert!(error.starts_with("too many messages"), "{error}");
    // Keep going: sustained abuse is disconnected. Sending may fail once the server closes.
    while sent < 100 {
        if flooder.conn.send_json(&text("more")).await.is_err() {
            break;
        }
        sent += 1;
    }
    assert_eq!(wait_closed(&mut flooder.conn).await?, Some(1008));
    // Only the burst reached the other client.
    other.conn.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn schedules_are_capped_per_connection_and_in_delay() -> Result<()> {
    let server = start(&["--max-scheduled", "3", "--max-delay-secs", "60"]).await?;
    let mut a = connect(&server).await?;
    for _ in 0..3 {
        a.conn.send_json(&text("/schedule seconds 30 message later")).await?;
    }
    a.conn.send_json(&text("/schedule seconds 30 message one too many")).await?;
    let error = recv_error(&mut a.conn).await?;
    assert!(error.contains("already have 3 scheduled messages"), "{error}");
    wait_health(&server, |h| h["scheduled"] == 3).await?;

    let mut b = connect(&server).await?;
    b.conn.send_json(&text("/schedule minutes 2 message too late")).await?;
    let error = recv_error(&mut b.conn).await?;
    assert!(error.contains("longer than the limit of 60 seconds"), "{error}");
    b.conn
        .send_json(&json!({"type": "text", "data": {"schedule": {"seconds": 61}, "text": "x"}}))
        .await?;
    assert!(recv_error(&mut b.conn).await?.starts_with("schedule: "));
    Ok(())
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_with_503() -> Result<()> {
    // Every TCP connection counts, plain HTTP too: two WebSockets and one /healthz fill three.
    let server = start(&["--max-connections", "3"]).await?;
    let a = connect(&server).await?;
    let _b = connect(&server).await?;
    assert_eq!(common::health(&server).await?["connections"], 2);
    let _c = connect_when_a_place_is_free(&server).await?;
    match tokio_tungstenite::connect_async(server.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
        }
        Err(other) => bail!("expected HTTP 503, got {other}"),
        Ok(_) => bail!("a fourth connection was accepted"),
    }
    // Once a has gone, its place is free again (until then /healthz itself may be refused).
    a.conn.close().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = client::http::get(server.port(), "/healthz", &[]).await?;
        if answer.status == 200 {
            let health: serde_json::Value = serde_json::from_str(&answer.body)?;
            assert_eq!(health["connections"], 2);
            assert!(health["refused"]["server_full"].as_u64() >= Some(1), "{health}");
            break;
        }
        assert_eq!(answer.status, 503, "{}", answer.body);
        assert!(tokio::time::Instant::now() < deadline, "a's place was never given back");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling, as wait_health does
    }
    connect_when_a_place_is_free(&server).await?;
    Ok(())
}

/// Connects, retrying while refused: a /healthz connection's place comes back a moment after
/// its answer, and until then the next connection may itself be over the cap.
async fn connect_when_a_place_is_free(server: &client::RunningServer) -> Result<common::Client> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match connect(server).await {
            Ok(client) => return Ok(client),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await; // polling for the freed place
            }
            Err(error) => return Err(error),
        }
    }
}
