//! SIGTERM: every client gets close 1001 (going away) and the process exits promptly.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{connect, start, wait_closed};
use serde_json::json;

#[tokio::test]
async fn sigterm_sends_1001_to_everyone_and_exits() -> Result<()> {
    let mut server = start(&[]).await?;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&server).await?);
    }
    // One in a room, waiting: everyone goes, wherever they are.
    clients[0].conn.send_json(&json!({"channel": "random"})).await?;
    clients[0].conn.recv_json().await?;

    let pid = server.pid().context("no pid")?;
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    ensure!(status.success(), "kill failed");
    for client in &mut clients {
        assert_eq!(wait_closed(&mut client.conn).await?, Some(1001));
    }
    let exit = server.wait_exit(Duration::from_secs(5)).await?;
    assert!(exit.success(), "{exit:?}");
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", server.port())).await.is_err());
    Ok(())
}
