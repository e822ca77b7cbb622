//! `GET /metrics`: the Prometheus text an operator scrapes, counting what happened.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use client::message::text;
use common::{connect, start};

/// The value of the sample called `name` (no labels) in the scraped text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Scrapes until `check` holds (counters move a moment after the frames that cause them).
async fn scrape_until(port: u16, check: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = client::http::get(port, "/metrics", &[]).await?;
        if response.status != 200 {
            bail!("/metrics answered {}", response.status);
        }
        let content_type = response.header("content-type").unwrap_or_default();
        if !content_type.starts_with("application/openmetrics-text") {
            bail!("/metrics is {content_type}");
        }
        if check(&response.body) {
            return Ok(response.body);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("/metrics never showed the expected values:\n{}", response.body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // polling, as wait_health does
    }
}

#[tokio::test]
async fn metrics_count_messages_deliveries_frames_and_connections() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let database = dir.path().join("chatterbox.db");
    let server = start(&["--database", database.to_str().context("a UTF-8 path")?]).await?;
    let mut a = connect(&server).await?;
    let mut b = connect(&server).await?;
    let mut c = connect(&server).await?;
    for n in 0..3 {
        a.conn.send_json(&text(&n.to_string())).await?;
        b.conn.recv_json().await?;
        c.conn.recv_json().await?;
    }
    let text = scrape_until(server.port(), |text| {
        sample(text, "chatterbox_store_write_seconds_count").unwrap_or(0.0) >= 1.0
    })
    .await?;
    assert_eq!(sample(&text, "chatterbox_messages_total"), Some(3.0), "{text}");
    assert_eq!(sample(&text, "chatterbox_deliveries_total"), Some(6.0), "{text}");
    assert_eq!(sample(&text, "chatterbox_connections"), Some(3.0), "{text}");
    assert_eq!(sample(&text, "chatterbox_store_ok"), Some(1.0), "{text}");
    assert!(sample(&text, "chatterbox_frames_in_total") >= Some(3.0), "{text}");
    // Three id frames and six chat frames, at least, went out.
    assert!(sample(&text, "chatterbox_frames_out_total") >= Some(9.0), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    c.conn.close().await?;
    scrape_until(server.port(), |text| sample(text, "chatterbox_connections") == Some(2.0)).await?;
    Ok(())
}
