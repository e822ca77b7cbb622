//! The finished server as the history tests of the page (`browser.rs`) and of the terminal
//! client (`chat.rs`) run it: on a database of their choosing, stopped as a deploy stops it.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use client::running::workspace_binary;
use client::{Connection, RunningServer};
use tokio::process::Command;

/// How long the server may take to exit after SIGTERM (it waits up to 2 s for its clients'
/// close frames).
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// A database file in a temporary directory, removed with it when this is dropped.
pub struct TempDatabase {
    _dir: tempfile::TempDir,
    path: String,
}

impl TempDatabase {
    pub fn new() -> Result<TempDatabase> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("chatterbox.db");
        let path = path.to_str().context("the temporary directory is not UTF-8")?.to_owned();
        Ok(TempDatabase { _dir: dir, path })
    }

    /// The file's path, for `--database`.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// The finished server on `database` (`memory`: nothing on disk), on `port` (0: a free one).
pub async fn finished_server(database: &str, port: u16, flags: &[&str]) -> Result<RunningServer> {
    let mut args = vec!["--database", database];
    args.extend_from_slice(flags);
    RunningServer::start_on_port(workspace_binary("server")?, &args, port).await
}

/// SIGTERM, as a deploy stops the server: it exits once what it accepted is written.
pub async fn terminate(mut server: RunningServer) -> Result<()> {
    let pid = server.pid().context("the server has no pid")?;
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
    ensure!(status.success(), "kill -TERM {pid} failed");
    let exit = server.wait_exit(EXIT_WAIT).await?;
    ensure!(exit.success(), "the server exited with {exit}");
    Ok(())
}

/// Says each of `texts` from a new connection to `server`, and waits until another one has
/// heard them all: the server has numbered them. Both connections are closed afterwards, so
/// that a SIGTERM right after does not wait for them. Returns the speaker's id.
pub async fn say_from_elsewhere<T: AsRef<str>>(
    server: &RunningServer,
    texts: &[T],
) -> Result<String> {
    let (mut speaker, speaker_id) = Connection::join(&server.ws_url()).await?;
    let (mut listener, _) = Connection::join(&server.ws_url()).await?;
    for text in texts {
        speaker.send_json(&client::message::text(text.as_ref())).await?;
    }
    for text in texts {
        let frame = loop {
            // What the listener got on joining is not what was said now.
            let frame = listener.recv_json().await?;
            if frame["history"] != true {
                break frame;
            }
        };
        ensure!(
            frame["data"]["text"] == text.as_ref(),
            "expected {:?}, got {frame}",
            text.as_ref()
        );
    }
    speaker.close().await?;
    listener.close().await?;
    Ok(speaker_id)
}

/// Says `texts` on `database` through a server of its own on a free port, stopped afterwards:
/// the messages a client of the usual port misses while that one is down. Returns the
/// speaker's id.
pub async fn say_while_away<T: AsRef<str>>(
    database: &str,
    flags: &[&str],
    texts: &[T],
) -> Result<String> {
    let meanwhile = finished_server(database, 0, flags).await?;
    let speaker_id = say_from_elsewhere(&meanwhile, texts).await?;
    terminate(meanwhile).await?;
    Ok(speaker_id)
}
