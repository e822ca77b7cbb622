//! What the server's integration tests share: starting the real binary, and connecting to it.

#![allow(dead_code)] // each test file uses its own part of this

pub mod api;
pub mod databases;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use client::{Connection, Frame, RunningServer};
use serde_json::Value;

/// Starts the server binary on a free port with the given flags.
pub async fn start(args: &[&str]) -> Result<RunningServer> {
    RunningServer::start(env!("CARGO_BIN_EXE_server"), args).await
}

/// The server on the database at `path`, on `port` (0: a free one), with extra flags.
pub async fn start_with(path: &Path, port: u16, args: &[&str]) -> Result<RunningServer> {
    start_on(path.to_str().context("a UTF-8 path")?, port, args).await
}

/// The server on `--database DATABASE` (a file, or a PostgreSQL URL), on `port` (0: a free
/// one), with extra flags.
pub async fn start_on(database: &str, port: u16, args: &[&str]) -> Result<RunningServer> {
    let mut all = vec!["--database", database];
    all.extend_from_slice(args);
    RunningServer::start_on_port(env!("CARGO_BIN_EXE_server"), &all, port).await
}

/// SIGTERM, and the process must exit cleanly.
pub async fn terminate(server: &mut RunningServer) -> Result<()> {
    let pid = server.pid().context("no pid")?;
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    ensure!(status.success(), "kill -TERM failed");
    let exit = server.wait_exit(Duration::from_secs(10)).await?;
    ensure!(exit.success(), "the server exited with {exit:?}");
    Ok(())
}

/// Runs the server binary on `--database DATABASE` expecting a refusal: exit status, and
/// stderr. A server that does not exit within 10 s started after all: it is killed, and that
/// is an error.
pub async fn refused(database: &str) -> Result<(std::process::ExitStatus, String)> {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--database", database, "--port", "0"])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let Ok(output) = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await
    else {
        bail!("the server on {database} did not refuse it: it started");
    };
    let output = output?;
    Ok((output.status, String::from_utf8_lossy(&output.stderr).into_owned()))
}

pub fn database_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("chatterbox.db")
}

/// A connection that has read its `{"id"}` frame.
pub struct Client {
    pub conn: Connection,
    pub id: String,
}

pub async fn connect(server: &RunningServer) -> Result<Client> {
    connect_url(&server.ws_url()).await
}

pub async fn connect_url(url: &str) -> Result<Client> {
    let (conn, id) = Connection::join(url).await?;
    Ok(Client { conn, id })
}

/// Pairs `a` (waiting) with `b` in a random room, and reads past the notices and each one's
/// `{"presence": {"joined"}}` about the other.
pub async fn pair(a: &mut Client, b: &mut Client) -> Result<()> {
    a.conn.send_json(&client::message::join("random")).await?;
    a.conn.recv_json().await?; // waiting
    b.conn.send_json(&client::message::join("random")).await?;
    for conn in [&mut a.conn, &mut b.conn] {
        conn.recv_json().await?; // paired
        conn.recv_json().await?; // who the other is
    }
    Ok(())
}

/// GET `path` on the server; returns the status and the body.
pub async fn http_get(server: &RunningServer, path: &str) -> Result<(u16, String)> {
    let response = client::http::get(server.port(), path, &[]).await?;
    Ok((response.status, response.body))
}

/// `GET /healthz` as JSON.
pub async fn health(server: &RunningServer) -> Result<Value> {
    let (status, body) = http_get(server, "/healthz").await?;
    if status != 200 {
        bail!("/healthz answered {status}");
    }
    serde_json::from_str(&body).with_context(|| format!("/healthz is not JSON: {body:?}"))
}

/// Polls `/healthz` until `check` holds (the server's state changes asynchronously, e.g. a
/// disconnect is noticed a moment after the socket closes), failing after 10 s.
pub async fn wait_health(server: &RunningServer, check: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let value = health(server).await?;
        if check(&value) {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("/healthz never reached the expected state; last: {value}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A chat frame as the lessons define it: checks the finished server's `seq` (a positive
/// integer) and `at` (RFC 3339, UTC, milliseconds), then takes them out.
pub fn lesson_fields(mut frame: Value) -> Value {
    let object = frame.as_object_mut().expect("a chat frame is an object");
    let seq = object.remove("seq").and_then(|seq| seq.as_u64());
    assert!(seq.is_some_and(|seq| seq > 0), "no seq in {frame}");
    let at = object.remove("at");
    let at = at.as_ref().and_then(Value::as_str).unwrap_or_default();
    assert!(at.len() == 24 && at.ends_with('Z'), "bad at {at:?}");
    frame
}

/// Reads frames until one is a text frame; a close or the end is an error.
pub async fn recv_json(conn: &mut Connection) -> Result<Value> {
    conn.recv_json().await
}

/// The next frame must be `{"error": ...}`; returns its text.
pub async fn recv_error(conn: &mut Connection) -> Result<String> {
    let frame = conn.recv_json().await?;
    match frame["error"].as_str() {
        Some(error) => Ok(error.to_owned()),
        None => bail!("expected an error frame, got {frame}"),
    }
}

/// Waits for the connection to end, skipping any frames still on their way; returns the close
/// code if a close frame came.
pub async fn wait_closed(conn: &mut Connection) -> Result<Option<u16>> {
    loop {
        match conn.recv().await {
            Ok(Frame::Close(code, _)) => return Ok(code),
            Ok(_) => continue,
            // Only a timeout is a failure; a reset or a plain end is the connection ending.
            Err(error) if error.to_string().starts_with("no frame arrived") => return Err(error),
            Err(_) => return Ok(None),
        }
    }
}

/// Resident memory of a process, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).context("no VmRSS")?;
    line.split_whitespace().nth(1).context("no VmRSS value")?.parse().context("bad VmRSS")
}
