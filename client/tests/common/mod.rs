//! The finished server as the history tests of the page (`browser.rs`) and of the terminal
//! client (`chat.rs`) run it: on a database of their choosing, stopped as a deploy stops it.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use client::running::workspace_binary;
use client::{Connection, RunningServer};
use serde_json::Value;
use tokio::process::Command;

/// How long the server may take to exit after SIGTERM (it waits up to 2 s for its clients'
/// close frames).
const EXIT_WAIT: Duration = Duration::from_secs(10);

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

/// `speaker` says each of `texts`, and `listener` hears them all: the server has numbered
/// them. Returns the frames heard.
pub async fn say_and_hear<T: AsRef<str>>(
    speaker: &mut Connection,
    listener: &mut Connection,
    texts: &[T],
) -> Result<Vec<Value>> {
    for text in texts {
        speaker.send_json(&client::message::text(text.as_ref())).await?;
    }
    let mut heard = Vec::new();
    for text in texts {
        let frame = listener.recv_json().await?;
        ensure!(
            frame["data"]["text"] == text.as_ref(),
            "expected {:?}, got {frame}",
            text.as_ref()
        );
        heard.push(frame);
    }
    Ok(heard)
}
