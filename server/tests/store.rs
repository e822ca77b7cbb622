//! A chat that remembers, tested with real processes: the store survives SIGTERM and
//! `kill -9`, history and resume give exactly what was missed, schedules survive restarts and
//! fire once, a file the server does not understand is refused and left untouched, and a disk
//! that fails at run time does not stop the chat. The durability tests run on SQLite and again
//! on PostgreSQL (`CHATTERBOX_TEST_POSTGRES`, see tests/common/databases.rs; postgres.rs has
//! PostgreSQL's own).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use client::Connection;
use client::message::text;
use common::databases::TestDatabase;
use common::{database_in, health, recv_json, start_on, start_with, terminate, wait_health};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

/// Connects to `url` (with any query), reads the id, then every frame until `count` chat
/// frames have come; returns them.
async fn connect_and_read(url: &str, count: usize) -> Result<(Connection, Vec<Value>)> {
    let (mut conn, _) = Connection::join(url).await?;
    let mut frames = Vec::new();
    while frames.len() < count {
        frames.push(recv_json(&mut conn).await?);
    }
    Ok((conn, frames))
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|frame| frame["seq"].as_u64().unwrap_or(0)).collect()
}

fn texts(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(|frame| frame["data"]["text"].as_str().unwrap_or("?")).collect()
}

/// Sends `texts` from a fresh connection and waits until `reader` has them all; returns the
/// frames the reader got.
async fn say(url: &str, reader: &mut Connection, say: &[&str]) -> Result<Vec<Value>> {
    let (mut sender, _) = Connection::join(url).await?;
    // The sender's own history is not in the way: it only reads its id.
    for line in say {
        sender.send_json(&text(line)).await?;
    }
    let mut frames = Vec::new();
    for _ in say {
        frames.push(recv_json(reader).await?);
    }
    sender.close().await?;
    Ok(frames)
}

/// A SQLite file in `dir`, as `--database` names it.
fn sqlite_in(dir: &tempfile::TempDir) -> Result<String> {
    Ok(database_in(dir).to_str().context("a UTF-8 path")?.to_owned())
}

#[tokio::test]
async fn after_sigterm_and_a_restart_the_history_has_the_same_seqs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    history_survives_sigterm(&sqlite_in(&dir)?).await
}

#[tokio::test]
async fn on_postgres_after_sigterm_and_a_restart_the_history_has_the_same_seqs() -> Result<()> {
    let Some(database) = TestDatabase::create()? else { return Ok(()) };
    history_survives_sigterm(database.url()).await
}

async fn history_survives_sigterm(database: &str) -> Result<()> {
    let mut server = start_on(database, 0, &[]).await?;
    let (mut reader, _) = Connection::join(&server.ws_url()).await?;
    let live = say(&server.ws_url(), &mut reader, &["one", "two", "three"]).await?;
    assert_eq!(seqs(&live), [1, 2, 3]);
    terminate(&mut server).await?;

    let server = start_on(database, 0, &[]).await?;
    let (mut newcomer, history) = connect_and_read(&server.ws_url(), 3).await?;
    assert_eq!(seqs(&history), [1, 2, 3]);
    assert_eq!(texts(&history), ["one", "two", "three"]);
    assert!(history.iter().all(|frame| frame["history"] == true), "{history:?}");
    assert_eq!(history[0]["at"], live[0]["at"]);
    // Numbering goes on where it stopped: no gap after a clean stop.
    let next = say(&server.ws_url(), &mut newcomer, &["four"]).await?;
    assert_eq!(seqs(&next), [4]);
    assert!(next[0].get("history").is_none());
    Ok(())
}

#[tokio::test]
async fn history_on_join_then_live_with_no_gap_and_no_duplicate() -> Result<()> {
    let server = common::start(&["--history", "5", "--message-rate", "0"]).await?;
    let url = server.ws_url();
    let (mut sender, _) = Connection::join(&url).await?;
    // Messages keep coming while newcomers join.
    let sending = tokio::spawn(async move {
        for n in 0..300 {
            sender.send_json(&text(&n.to_string())).await?;
            tokio::task::yield_now().await;
        }
        anyhow::Ok(sender)
    });
    let mut joins = 0;
    while !sending.is_finished() && joins < 30 {
        let (mut conn, _) = Connection::join(&url).await?;
        let first = recv_json(&mut conn).await?;
        let mut last = first["seq"].as_u64().context("no seq")?;
        let mut live = first["history"] != true;
        // The next twenty are consecutive, whether history or live, and history comes first.
        for _ in 0..20 {
            let frame = match timeout(Duration::from_millis(500), recv_json(&mut conn)).await {
                Ok(frame) => frame?,
                Err(_) => break, // the sender has finished
            };
            let seq = frame["seq"].as_u64().context("no seq")?;
            ensure!(seq == last + 1, "after {last} came {seq}");
            if frame["history"] == true {
                ensure!(!live, "a history frame after a live one");
            } else {
                live = true;
            }
            last = seq;
        }
        joins += 1;
    }
    sending.await??;
    ensure!(joins > 0);
    // A newcomer now gets the newest five, marked, oldest first.
    let (_, history) = connect_and_read(&url, 5).await?;
    assert_eq!(seqs(&history), [296, 297, 298, 299, 300]);
    // And `--history 0` gives none.
    let quiet = common::start(&["--history", "0"]).await?;
    let (mut a, _) = Connection::join(&quiet.ws_url()).await?;
    let (mut b, _) = Connection::join(&quiet.ws_url()).await?;
    a.send_json(&text("hi")).await?;
    recv_json(&mut b).await?;
    let (mut c, _) = Connection::join(&quiet.ws_url()).await?;
    c.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn resume_gives_exactly_what_was_missed_also_across_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = database_in(&dir);
    let mut server = start_with(&path, 0, &["--resume-max", "4"]).await?;
    let port = server.port();
    let url = server.ws_url();
    let (mut reader, _) = Connection::join(&url).await?;
    say(&url, &mut reader, &["a", "b"]).await?;
    // The reader drops; three messages are said meanwhile.
    reader.close().await?;
    let (mut witness, _) = connect_and_read(&url, 2).await?;
    say(&url, &mut witness, &["c", "d", "e"]).await?;
    let (mut resumed, missed) = connect_and_read(&format!("{url}?after=2"), 3).await?;
    assert_eq!(texts(&missed), ["c", "d", "e"]);
    assert_eq!(seqs(&missed), [3, 4, 5]);
    assert!(missed.iter().all(|frame| frame["history"] == true));
    // Then live, nothing twice.
    let live = say(&url, &mut resumed, &["f"]).await?;
    assert_eq!(seqs(&live), [6]);
    resumed.expect_silence(Duration::from_millis(200)).await?;

    // Across a restart, on the same address.
    terminate(&mut server).await?;
    let server = start_with(&path, port, &["--resume-max", "4"]).await?;
    let (_, missed) = connect_and_read(&format!("{url}?after=4"), 2).await?;
    assert_eq!(texts(&missed), ["e", "f"]);

    // More missing than --resume-max: a frame says how many were skipped, then the newest 4.
    let (mut conn, _) = Connection::join(&format!("{url}?after=0")).await?;
    assert_eq!(
        recv_json(&mut conn).await?,
        json!({"history": {"after": 0, "skipped": 2, "first": 3}})
    );
    let mut newest = Vec::new();
    for _ in 0..4 {
        newest.push(recv_json(&mut conn).await?);
    }
    assert_eq!(seqs(&newest), [3, 4, 5, 6]);

    // Beyond the newest (the store was replaced): a frame says so, then the latest.
    let (mut conn, _) = Connection::join(&format!("{url}?after=99")).await?;
    assert_eq!(
        recv_json(&mut conn).await?,
        json!({"history": {"reset": true, "after": 99, "newest": 6}})
    );
    assert_eq!(recv_json(&mut conn).await?["seq"], 1);
    drop(server);
    Ok(())
}

#[tokio::test]
async fn earlier_pages_come_from_memory_and_from_the_store() -> Result<()> {
    let dir = tempfile::tempdir()?;
    earlier_pages(&sqlite_in(&dir)?).await
}

#[tokio::test]
async fn on_postgres_earlier_pages_come_from_memory_and_from_the_store() -> Result<()> {
    let Some(database) = TestDatabase::create()? else { return Ok(()) };
    earlier_pages(database.url()).await
}

async fn earlier_pages(database: &str) -> Result<()> {
    // The server remembers only the newest 3 in memory (`--history 3 --resume-max 3`).
    let args = ["--history", "3", "--resume-max", "3", "--message-rate", "0"];
    let mut server = start_on(database, 0, &args).await?;
    let (mut reader, _) = Connection::join(&server.ws_url()).await?;
    let lines: Vec<String> = (1..=10).map(|n| format!("m{n}")).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    say(&server.ws_url(), &mut reader, &lines).await?;
    terminate(&mut server).await?;
    let server = start_on(database, 0, &args).await?;
    let (mut conn, history) = connect_and_read(&server.ws_url(), 3).await?;
    assert_eq!(seqs(&history), [8, 9, 10]);
    for (before, limit, expected, more) in
        [(8, 2, vec![6, 7], true), (3, 50, vec![1, 2], false), (10, 2, vec![8, 9], true)]
    {
        conn.send_json(&json!({"history": {"before": before, "limit": limit}})).await?;
        let page = recv_json(&mut conn).await?;
        let messages = page["history"]["messages"].as_array().context("no messages")?;
        assert_eq!(seqs(messages), expected, "{page}");
        assert_eq!(page["history"]["more"], more, "{page}");
        assert!(messages.iter().all(|m| m["history"] == true && m["author"].is_string()));
    }
    // The limit is capped (--page-max, 200): asking for a million is not an error.
    conn.send_json(&json!({"history": {"before": 11, "limit": 1_000_000}})).await?;
    assert_eq!(
        recv_json(&mut conn).await?["history"]["messages"].as_array().map(Vec::len),
        Some(10)
    );
    conn.send_json(&json!({"history": {"before": "x"}})).await?;
    assert!(recv_json(&mut conn).await?["error"].is_string());
    Ok(())
}

#[tokio::test]
async fn a_schedule_survives_a_restart_and_fires_once_at_its_time() -> Result<()> {
    let dir = tempfile::tempdir()?;
    schedule_survives_restart(&sqlite_in(&dir)?).await
}

#[tokio::test]
async fn on_postgres_a_schedule_survives_a_restart_and_fires_once_at_its_time() -> Result<()> {
    let Some(database) = TestDatabase::create()? else { return Ok(()) };
    schedule_survives_restart(database.url()).await
}

async fn schedule_survives_restart(database: &str) -> Result<()> {
    let mut server = start_on(database, 0, &[]).await?;
    let (mut sender, _) = Connection::join(&server.ws_url()).await?;
    sender.send_json(&text("/schedule seconds 4 message remember me")).await?;
    wait_health(&server, |h| h["scheduled"] == 1).await?;
    let scheduled_at = Instant::now();
    sender.close().await?; // so that the stop does not wait for it
    terminate(&mut server).await?;

    let mut server = start_on(database, 0, &[]).await?;
    assert_eq!(health(&server).await?["scheduled"], 1);
    let (mut reader, _) = Connection::join(&server.ws_url()).await?;
    let frame = recv_json(&mut reader).await?;
    assert_eq!(frame["data"]["text"], "remember me");
    assert!(frame.get("late").is_none(), "on time is not late: {frame}");
    ensure!(scheduled_at.elapsed() >= Duration::from_millis(3900), "fired early");
    reader.expect_silence(Duration::from_millis(300)).await?;
    terminate(&mut server).await?;

    // Delivered is delivered: not again after another restart, and in the history once.
    let server = start_on(database, 0, &[]).await?;
    assert_eq!(health(&server).await?["scheduled"], 0);
    let (mut conn, history) = connect_and_read(&server.ws_url(), 1).await?;
    assert_eq!(texts(&history), ["remember me"]);
    conn.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

#[tokio::test]
async fn an_overdue_schedule_fires_once_at_start_marked_late() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = database_in(&dir);
    let mut server = start_with(&path, 0, &[]).await?;
    let (mut sender, _) = Connection::join(&server.ws_url()).await?;
    sender.send_json(&text("/schedule seconds 1 message while you were out")).await?;
    wait_health(&server, |h| h["scheduled"] == 1).await?;
    let scheduled_at = Instant::now();
    terminate(&mut server).await?;
    // The server is down while it comes due (the passing of time is the point here).
    tokio::time::sleep_until(scheduled_at + Duration::from_millis(1500)).await;

    let mut server = start_with(&path, 0, &[]).await?;
    wait_health(&server, |h| h["scheduled"] == 0).await?;
    let (mut conn, history) = connect_and_read(&server.ws_url(), 1).await?;
    assert_eq!(texts(&history), ["while you were out"]);
    assert_eq!(history[0]["late"], true);
    conn.expect_silence(Duration::from_millis(300)).await?;
    terminate(&mut server).await?;
    let server = start_with(&path, 0, &[]).await?;
    let (mut conn, history) = connect_and_read(&server.ws_url(), 1).await?;
    assert_eq!(texts(&history), ["while you were out"]);
    conn.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

#[tokio::test]
async fn after_kill_9_what_was_received_100_ms_before_is_kept_and_no_seq_is_reused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    kill_9_keeps_what_was_received(&sqlite_in(&dir)?).await
}

#[tokio::test]
async fn on_postgres_after_kill_9_what_was_received_100_ms_before_is_kept_and_no_seq_is_reused()
-> Result<()> {
    let Some(database) = TestDatabase::create()? else { return Ok(()) };
    kill_9_keeps_what_was_received(database.url()).await
}

async fn kill_9_keeps_what_was_received(database: &str) -> Result<()> {
    let args = ["--message-rate", "0", "--history", "1000"];
    let server = start_on(database, 0, &args).await?;
    let url = server.ws_url();
    let (mut reader, _) = Connection::join(&url).await?;
    let (mut sender, _) = Connection::join(&url).await?;
    for n in 0..500 {
        sender.send_json(&text(&format!("burst {n}"))).await?;
    }
    let mut received = Vec::new();
    for _ in 0..500 {
        received.push(recv_json(&mut reader).await?);
    }
    let last_received = Instant::now();
    // More is said right up to the kill: that may be lost, and that is the promise's window.
    for n in 0..50 {
        sender.send_json(&text(&format!("late {n}"))).await?;
    }
    tokio::time::sleep_until(last_received + Duration::from_millis(150)).await;
    let highest_seen = seqs(&received).into_iter().max().unwrap_or(0);
    server.stop().await?; // SIGKILL

    let server = start_on(database, 0, &args).await?;
    let (mut conn, _) = Connection::join(&format!("{}?after=0", server.ws_url())).await?;
    let mut kept = Vec::new();
    while let Ok(frame) = timeout(Duration::from_millis(500), recv_json(&mut conn)).await {
        kept.push(frame?);
    }
    let kept_texts = texts(&kept);
    for frame in &received {
        let said = frame["data"]["text"].as_str().unwrap_or_default();
        ensure!(kept_texts.contains(&said), "{said:?} was received but is not in the history");
    }
    // Whatever was lost, its seqs are not given to new messages.
    let next = say(&server.ws_url(), &mut conn, &["after the crash"]).await?;
    ensure!(next[0]["seq"].as_u64() > Some(highest_seen), "a seq was reused: {}", next[0]);
    Ok(())
}

/// Runs the server binary on `path` expecting a refusal: exit status, and stderr.
async fn refused(path: &Path) -> Result<(std::process::ExitStatus, String)> {
    common::refused(path.to_str().context("a UTF-8 path")?).await
}

#[tokio::test]
async fn a_file_that_is_not_a_chatterbox_database_is_refused_and_left_untouched() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let garbage = dir.path().join("notes.db");
    let content = b"These are my notes, not a database.\n".repeat(300);
    std::fs::write(&garbage, &content)?;
    let before = std::fs::metadata(&garbage)?.modified()?;
    let (status, stderr) = refused(&garbage).await?;
    ensure!(!status.success(), "the server started on a text file");
    let line = stderr.trim();
    ensure!(line.lines().count() == 1, "more than one line: {stderr}");
    ensure!(line.contains("notes.db") && line.contains("not a chatterbox database"), "{line}");
    assert_eq!(std::fs::read(&garbage)?, content);
    assert_eq!(std::fs::metadata(&garbage)?.modified()?, before);
    let names: Vec<_> = std::fs::read_dir(dir.path())?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names.len(), 1, "files were added beside it: {names:?}");

    // Another application's SQLite database is not ours either.
    let foreign = dir.path().join("other.db");
    rusqlite::Connection::open(&foreign)?
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")?;
    let content = std::fs::read(&foreign)?;
    let (status, stderr) = refused(&foreign).await?;
    ensure!(!status.success() && stderr.contains("another application"), "{stderr}");
    assert_eq!(std::fs::read(&foreign)?, content);
    Ok(())
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_untouched() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = database_in(&dir);
    // A database this server made, then "upgraded" by a future one.
    let mut server = start_with(&path, 0, &[]).await?;
    terminate(&mut server).await?;
    rusqlite::Connection::open(&path)?.pragma_update(None, "user_version", 99)?;
    let content = std::fs::read(&path)?;
    let (status, stderr) = refused(&path).await?;
    ensure!(!status.success(), "the server started on a newer schema");
    let line = stderr.trim();
    ensure!(line.lines().count() == 1, "more than one line: {stderr}");
    ensure!(line.contains("chatterbox.db") && line.contains("version 99"), "{line}");
    assert_eq!(std::fs::read(&path)?, content);
    // A directory that does not exist cannot hold a database.
    let (status, stderr) = refused(&dir.path().join("missing").join("chatterbox.db")).await?;
    ensure!(!status.success() && stderr.contains("cannot open it for writing"), "{stderr}");
    Ok(())
}

/// A tmpfs of `size`, mounted for the test (root only); `None` where mounting is not allowed.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_disk_that_fills_up_does_not_stop_the_chat_and_what_was_said_is_written_later()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(disk) = SmallDisk::mount(dir.path(), "2m") else {
        if std::env::var_os("CI").is_some() {
            bail!("this test mounts a small tmpfs, which needs root; CI must run it");
        }
        eprintln!(
            "skipped: mounting a tmpfs needs root (run `sudo cargo test -p server --test store`)"
        );
        return Ok(());
    };
    let path = disk.0.join("chatterbox.db");
    let server = start_with(&path, 0, &["--message-rate", "0"]).await?;
    let url = server.ws_url();
    let (mut reader, _) = Connection::join(&url).await?;
    say(&url, &mut reader, &["before"]).await?;
    // Fill the disk to the last byte.
    let filler = disk.0.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler)?;
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.write_all(&[0; 512]);
        let _ = file.sync_all();
    }
    // Chat goes on; enough is said that the store must write, and fail.
    let lines: Vec<String> =
        (0..200).map(|n| format!("while full {n} {}", "x".repeat(500))).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let live = say(&url, &mut reader, &lines).await?;
    assert_eq!(live.len(), 200);
    wait_health(&server, |h| h["store"] == "failing").await?;
    // Room again: the backlog is written, and the store says so.
    std::fs::remove_file(&filler)?;
    wait_health(&server, |h| h["store"] == "ok").await?;
    // On disk: a restart finds all of it.
    let mut server = server;
    terminate(&mut server).await?;
    let server = start_with(&path, 0, &[]).await?;
    let (mut conn, history) =
        connect_and_read(&format!("{}?after=0", server.ws_url()), 201).await?;
    assert_eq!(texts(&history)[0], "before");
    assert_eq!(texts(&history)[1..], texts(&live)[..]);
    conn.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn a_second_server_on_the_same_file_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = database_in(&dir);
    let mut server = start_with(&path, 0, &[]).await?;
    let (mut reader, _) = Connection::join(&server.ws_url()).await?;
    say(&server.ws_url(), &mut reader, &["kept by the first"]).await?;
    let content = std::fs::read(&path)?;
    // Two writers would give out the same seqs; the second must not start.
    let (status, stderr) = refused(&path).await?;
    ensure!(!status.success(), "a second server started on the same file");
    let line = stderr.trim();
    ensure!(line.lines().count() == 1, "more than one line: {stderr}");
    ensure!(
        line.contains("chatterbox.db") && line.contains("another server is using it"),
        "{line}"
    );
    assert_eq!(std::fs::read(&path)?, content, "the refused server wrote to the file");
    terminate(&mut server).await?;
    // Once the first has stopped, the file is free again, even after a kill -9.
    start_with(&path, 0, &[]).await?.stop().await?; // SIGKILL
    let mut server = start_with(&path, 0, &[]).await?;
    terminate(&mut server).await?;
    Ok(())
}
