//! The benchmark's smoke configuration: a small fanout and a small idle run of the real
//! `chatload` binary against lesson05 and the finished server. It fails on any lost,
//! duplicated or out-of-order delivery and on any dropped connection, never on a time.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use client::RunningServer;
use client::running::workspace_binary;
use serde_json::Value;
use tokio::process::Command;

/// Far more than a smoke run needs; chatload's own `--deadline` ends it sooner.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// Runs chatload with `args` plus `--json`, and returns its exit success and its report.
async fn chatload(args: &[&str]) -> Result<(bool, Value, String)> {
    let run = Command::new(env!("CARGO_BIN_EXE_chatload"))
        .args(args)
        .args(["--json", "--deadline", "30"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_LIMIT, run).await.context("chatload did not end")??;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let report = serde_json::from_str(last)
        .with_context(|| format!("no JSON report; stdout: {stdout}\nstderr: {stderr}"))?;
    Ok((output.status.success(), report, stdout))
}

fn count(report: &Value, key: &str) -> u64 {
    report[key].as_u64().unwrap_or(u64::MAX)
}

/// Every expected delivery arrived exactly once and in order, and nothing else arrived.
fn assert_clean_fanout(report: &Value, expected: u64, text: &str) {
    assert_eq!(count(report, "expected_deliveries"), expected, "{text}");
    assert_eq!(count(report, "deliveries"), expected, "{text}");
    for key in ["lost", "duplicates", "out_of_order", "unexpected_frames", "receivers_failed"] {
        assert_eq!(count(report, key), 0, "{key} in {text}");
    }
}

async fn smoke(program: &str, args: &[&str]) -> Result<()> {
    let server = RunningServer::start(workspace_binary(program)?, args).await?;
    let url = server.ws_url();
    let pid = server.pid().context("the server exited")?.to_string();

    // As fast as a small window allows: 20 clients, 2 senders x 50 messages, 19 receivers each.
    let (ok, report, text) = chatload(&[
        "fanout",
        "--url",
        &url,
        "--clients",
        "20",
        "--senders",
        "2",
        "--messages",
        "50",
        "--window",
        "4",
        "--server-pid",
        &pid,
    ])
    .await?;
    assert_clean_fanout(&report, 2 * 50 * 19, &text);
    assert!(report["server"]["cpu_us_per_delivery"].is_number(), "{text}");
    assert!(ok, "chatload fanout failed: {text}");

    // At a fixed rate, the other way of pacing.
    let (ok, report, text) = chatload(&[
        "fanout",
        "--url",
        &url,
        "--clients",
        "5",
        "--senders",
        "1",
        "--messages",
        "20",
        "--rate",
        "200",
    ])
    .await?;
    assert_clean_fanout(&report, 20 * 4, &text);
    assert!(ok, "chatload fanout --rate failed: {text}");

    let (ok, report, text) = chatload(&[
        "idle",
        "--url",
        &url,
        "--clients",
        "50",
        "--server-pid",
        &pid,
        "--hold",
        "0.2",
    ])
    .await?;
    assert_eq!(count(&report, "clients"), 50, "{text}");
    assert_eq!(count(&report, "dropped"), 0, "{text}");
    assert!(report["server"]["kib_per_connection"].is_number(), "{text}");
    assert!(ok, "chatload idle failed: {text}");
    if report["server"]["rss_after_kib"].as_u64().unwrap_or(0) == 0 {
        bail!("no server memory reading: {text}");
    }
    Ok(())
}

#[tokio::test]
async fn lesson05_delivers_every_message_exactly_once() -> Result<()> {
    smoke("lesson05", &[]).await
}

#[tokio::test]
async fn server_delivers_every_message_exactly_once() -> Result<()> {
    smoke("server", &["--message-rate", "0", "--frame-rate", "0"]).await
}

/// The pieces of `compare --store`'s I1h: messages put into the feed by a sender, then idle
/// connections that each receive them as history, and the server's CPU while they connect.
/// (`compare --store` itself builds release binaries and fills a million messages: not a smoke
/// test.)
#[tokio::test]
async fn idle_connections_receive_the_feed_history() -> Result<()> {
    let args = ["--message-rate", "0", "--frame-rate", "0", "--database", "memory"];
    let server = RunningServer::start(workspace_binary("server")?, &args).await?;
    let (url, pid) = (server.ws_url(), server.pid().context("the server exited")?.to_string());
    // Four messages and the sender's end marker: five in the feed.
    let (ok, _, text) =
        chatload(&["fanout", "--url", &url, "--clients", "2", "--senders", "1", "--messages", "4"])
            .await?;
    assert!(ok, "chatload fanout failed: {text}");
    let (ok, report, text) = chatload(&[
        "idle",
        "--url",
        &url,
        "--clients",
        "20",
        "--server-pid",
        &pid,
        "--hold",
        "0.1",
        "--history",
        "5",
    ])
    .await?;
    assert!(ok, "chatload idle --history failed: {text}");
    assert_eq!(count(&report, "history_expected"), 5, "{text}");
    assert_eq!(count(&report, "history_min"), 5, "{text}");
    assert_eq!(count(&report, "short_of_history"), 0, "{text}");
    assert!(report["server"]["connect_cpu_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{text}");
    Ok(())
}

/// The check must be able to fail: with its default rate limit (10 messages a second after a
/// burst of 20) the server refuses most of 50 messages sent at once, and chatload says so.
#[tokio::test]
async fn reports_the_messages_a_rate_limited_server_refuses() -> Result<()> {
    let server = RunningServer::start(workspace_binary("server")?, &[]).await?;
    let (ok, report, text) = chatload(&[
        "fanout",
        "--url",
        &server.ws_url(),
        "--clients",
        "3",
        "--senders",
        "1",
        "--messages",
        "50",
        "--stall",
        "2",
    ])
    .await?;
    assert!(!ok, "chatload succeeded although messages were refused: {text}");
    assert!(count(&report, "lost") > 0, "{text}");
    assert_eq!(
        count(&report, "deliveries") + count(&report, "lost"),
        count(&report, "expected_deliveries"),
        "{text}"
    );
    Ok(())
}

/// `chatload rooms` in small: rooms created through the API and listed, and presence frames
/// in a room counted per member per change. Only the counts are checked, never a time (R1's
/// 50 ms is for the release build: its verdict is left alone here).
#[tokio::test]
async fn rooms_are_listed_and_presence_frames_are_counted() -> Result<()> {
    let args = [
        "--max-rooms-per-account",
        "25",
        "--login-burst-per-address",
        "1000",
        "--message-rate",
        "0",
        "--frame-rate",
        "0",
    ];
    let server = RunningServer::start(workspace_binary("server")?, &args).await?;
    let (_, report, text) = chatload(&[
        "rooms",
        "--url",
        &server.ws_url(),
        "--rooms",
        "50",
        "--accounts",
        "2",
        "--gets",
        "3",
        "--members",
        "20",
    ])
    .await?;
    assert_eq!(count(&report["list"], "rooms"), 50, "{text}");
    assert_eq!(count(&report["list"], "gets"), 3, "{text}");
    let presence = &report["presence"];
    // 20 members: at the k-th join k - 1 others are told, at the k-th leave 20 - k.
    assert_eq!(count(presence, "joined_frames"), 190, "{text}");
    assert_eq!(count(presence, "left_frames"), 190, "{text}");
    assert_eq!(count(presence, "extra"), 0, "{text}");
    assert_eq!(count(presence, "repeated"), 0, "{text}");
    assert_eq!(presence["target_met"], true, "{text}");
    Ok(())
}

/// Several URLs, as for the nodes of a cluster: here two URLs of one server (`/` and `/ws`), so
/// that whatever crosses between them arrives for sure. The connections (senders included)
/// split evenly, in turn, and every delivery arrives once, on both; idle connections split
/// too. Two `--server-pid`s are summed: the server's own and this test's (a second process,
/// busy or not, only adds).
#[tokio::test]
async fn spreads_clients_over_several_urls() -> Result<()> {
    let args = ["--message-rate", "0", "--frame-rate", "0"];
    let server = RunningServer::start(workspace_binary("server")?, &args).await?;
    let (first, second) = (server.ws_url(), format!("{}ws", server.ws_url()));
    let pid = server.pid().context("the server exited")?.to_string();
    let own = std::process::id().to_string();
    let (ok, report, text) = chatload(&[
        "fanout",
        "--url",
        &first,
        "--url",
        &second,
        "--clients",
        "21",
        "--senders",
        "3",
        "--messages",
        "40",
        "--window",
        "4",
        "--server-pid",
        &pid,
        "--server-pid",
        &own,
    ])
    .await?;
    assert_clean_fanout(&report, 3 * 40 * 20, &text);
    assert!(ok, "chatload fanout over two URLs failed: {text}");
    // Connections 0, 2, 4, ... go to the first URL, 1, 3, 5, ... to the second: 11 and 10
    // clients, senders 0 and 2 on the first, sender 1 on the second.
    let shares = report["urls"].as_array().context("no per-URL report")?;
    let share = |index: usize, key: &str| count(&shares[index], key);
    assert_eq!(shares.len(), 2, "{text}");
    assert_eq!(shares[0]["url"], first.as_str(), "{text}");
    assert_eq!(shares[1]["url"], second.as_str(), "{text}");
    assert_eq!((share(0, "clients"), share(1, "clients")), (11, 10), "{text}");
    assert_eq!((share(0, "senders"), share(1, "senders")), (2, 1), "{text}");
    // A sender gets the other two senders' 80 messages, any other client all 120.
    assert_eq!(share(0, "expected_deliveries"), 2 * 80 + 9 * 120, "{text}");
    assert_eq!(share(1, "expected_deliveries"), 80 + 9 * 120, "{text}");
    for index in 0..2 {
        assert_eq!(share(index, "deliveries"), share(index, "expected_deliveries"), "{text}");
        assert_eq!(share(index, "lost"), 0, "{text}");
    }
    // Every receiver has senders on the other URL: the latency of those deliveries is apart.
    assert!(report["cross_url_latency_us"]["p50"].as_f64().is_some_and(|p| p > 0.0), "{text}");
    assert_eq!(report["server"]["processes"], 2, "{text}");
    let each =
        report["server_cpu_us_per_delivery_each"].as_array().context("no CPU per process")?;
    assert_eq!(each.len(), 2, "{text}");
    assert!(report["server"]["cpu_us_per_delivery"].is_number(), "{text}");

    let (ok, report, text) =
        chatload(&["idle", "--url", &first, "--url", &second, "--clients", "31", "--hold", "0.1"])
            .await?;
    assert!(ok, "chatload idle over two URLs failed: {text}");
    let shares = report["urls"].as_array().context("no per-URL report")?;
    assert_eq!((count(&shares[0], "clients"), count(&shares[1], "clients")), (16, 15), "{text}");
    assert_eq!(count(&shares[0], "dropped") + count(&shares[1], "dropped"), 0, "{text}");
    Ok(())
}

/// With one URL the report is as it always was: no per-URL part.
#[tokio::test]
async fn one_url_reports_no_split() -> Result<()> {
    let args = ["--message-rate", "0", "--frame-rate", "0"];
    let server = RunningServer::start(workspace_binary("server")?, &args).await?;
    let pid = server.pid().context("the server exited")?.to_string();
    let (ok, report, text) = chatload(&[
        "fanout",
        "--url",
        &server.ws_url(),
        "--clients",
        "4",
        "--messages",
        "5",
        "--server-pid",
        &pid,
    ])
    .await?;
    assert!(ok, "{text}");
    for key in ["urls", "cross_url_latency_us", "server_cpu_us_per_delivery_each"] {
        assert!(report.get(key).is_none(), "{key} in {text}");
    }
    assert!(report["server"].get("processes").is_none(), "{text}");
    assert!(!text.contains("processes summed"), "{text}");
    Ok(())
}

#[tokio::test]
async fn refuses_targets_that_are_not_loopback() -> Result<()> {
    for url in ["ws://192.0.2.1:9/", "ws://example.com:9/", "ws://[2001:db8::1]:9/"] {
        let output = Command::new(env!("CARGO_BIN_EXE_chatload"))
            .args(["fanout", "--url", url, "--clients", "2", "--deadline", "5"])
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(RUN_LIMIT, output).await.context("chatload hung")??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url} was accepted");
        assert!(stderr.contains("refusing"), "{url}: {stderr}");
    }
    Ok(())
}
