//! The PostgreSQL store with real processes, beyond what store.rs runs on both stores: a
//! database the server does not understand is refused and left untouched, and PostgreSQL
//! unreachable at start is one line, unreachable at run time a failing store that the chat
//! goes on through. Each test has a database of its own (`CHATTERBOX_TEST_POSTGRES`, see
//! tests/common/databases.rs); without the variable they are skipped, in CI they fail.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use client::Connection;
use client::message::text;
use common::databases::TestDatabase;
use common::{recv_json, refused, start_on, terminate, wait_health};

/// Waits (up to 10 s) until the database holds `count` messages.
async fn wait_written(database: &TestDatabase, count: i64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let written = database.with_client(|client| {
            Ok(client.query_one("SELECT count(*) FROM messages", &[])?.get::<_, i64>(0))
        })?;
        if written == count {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{written} messages written, not {count}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_one_line_and_left_untouched() -> Result<()> {
    let Some(database) = TestDatabase::create()? else { return Ok(()) };
    let mut server = start_on(database.url(), 0, &[]).await?;
    let (mut reader, _) = Connection::join(&server.ws_url()).await?;
    let (mut sender, _) = Connection::join(&server.ws_url()).await?;
    sender.send_json(&text("kept")).await?;
    recv_json(&mut reader).await?;
    terminate(&mut server).await?;
    // "Upgraded" by a future server.
    let contents = |database: &TestDatabase| {
        database.with_client(|client| {
            let row = client.query_one(
                "SELECT (SELECT version FROM chatterbox_schema),
                        (SELECT string_agg(body, ',' ORDER BY seq) FROM messages),
                        (SELECT string_agg(name || '=' || reserved, ',') FROM channels)",
                &[],
            )?;
            Ok((row.get::<_, i64>(0), row.get::<_, String>(1), row.get::<_, String>(2)))
        })
    };
    database.with_client(|client| {
        Ok(client.batch_execute("UPDATE chatterbox_schema SET version = 99")?)
    })?;
    let before = contents(&database)?;
    assert_eq!((before.0, before.1.as_str()), (99, "kept"));

    let (status, stderr) = refused(database.url())?;
    ensure!(!status.success(), "the server started on a newer schema");
    let line = stderr.trim();
    ensure!(line.lines().count() == 1, "more than one line: {stderr}");
    ensure!(line.contains(database.name()) && line.contains("version 99"), "{line}");
    assert_eq!(contents(&database)?, before, "the database was changed");
    Ok(())
}

#[tokio::test]
async fn postgres_unreachable_at_start_is_one_line_naming_the_host_and_a_failed_start() -> Result<()>
{
    // A port nothing listens on (this one was just free), and a password that must not show.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("postgres://chatterbox:s3cret@127.0.0.1:{port}/chat");
    let started = Instant::now();
    let (status, stderr) = refused(&url)?;
    ensure!(!status.success(), "the server started without its database");
    ensure!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let line = stderr.trim();
    ensure!(line.lines().count() == 1, "more than one line: {stderr}");
    ensure!(line.contains(&format!("127.0.0.1:{port}")), "no host in {line}");
    ensure!(line.contains("cannot connect") && line.contains("refused"), "{line}");
    ensure!(!line.contains("s3cret"), "the password is in {line}");
    // Not a URL at all.
    let (status, stderr) = refused("postgres://[::1")?;
    ensure!(!status.success() && stderr.trim().lines().count() == 1, "{stderr}");
    Ok(())
}

#[tokio::test]
async fn postgres_unreachable_at_run_time_is_a_failing_store_and_nothing_accepted_is_lost()
-> Result<()> {
    let Some(database) = TestDatabase::create()? else { return Ok(()) };
    let server = start_on(database.url(), 0, &["--message-rate", "0"]).await?;
    let url = server.ws_url();
    let (mut reader, _) = Connection::join(&url).await?;
    let (mut sender, _) = Connection::join(&url).await?;
    sender.send_json(&text("before")).await?;
    recv_json(&mut reader).await?;
    wait_written(&database, 1).await?;

    // PostgreSQL goes away for this database: no new connections, and the server's are cut.
    let name = database.name().to_owned();
    database.admin(&format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = '{name}' AND pid <> pg_backend_pid();"
    ))?;
    // Chat goes on, live; the store tries, fails, and says so.
    let mut said = Vec::new();
    for n in 0..20 {
        let line = format!("while away {n}");
        sender.send_json(&text(&line)).await?;
        let frame = recv_json(&mut reader).await?;
        ensure!(frame["data"]["text"] == line.as_str(), "{frame}");
        said.push(line);
    }
    wait_health(&server, |h| h["store"] == "failing").await?;

    // Back: the backlog is written, and the store says so.
    database.admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))?;
    wait_health(&server, |h| h["store"] == "ok").await?;
    let mut server = server;
    terminate(&mut server).await?;

    let server = start_on(database.url(), 0, &[]).await?;
    let (mut conn, _) = Connection::join(&format!("{}?after=0", server.ws_url())).await?;
    let mut kept = Vec::new();
    for _ in 0..=said.len() {
        kept.push(recv_json(&mut conn).await?["data"]["text"].as_str().unwrap_or("?").to_owned());
    }
    assert_eq!(kept[0], "before");
    assert_eq!(kept[1..], said[..]);
    conn.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}
