//! lesson01: every text frame comes back, unchanged, to its sender only.

use std::time::Duration;

use anyhow::Result;
use client::{Conversation, RunningServer, http};

async fn start() -> RunningServer {
    RunningServer::start(env!("CARGO_BIN_EXE_lesson01"), &[]).await.expect("lesson01 starts")
}

#[tokio::test]
async fn text_frames_come_back_unchanged_and_in_order() -> Result<()> {
    let server = start().await;
    let mut alice = Conversation::new(&server.ws_url()).connect("alice").await?;
    let frames = ["hello", "", "  spaces  ", "{\"type\":\"text\"}", "한글 😋", &"x".repeat(10_000)];
    for frame in frames {
        alice.send_text(frame).await?;
    }
    for frame in frames {
        alice.expect_text(frame).await?;
    }
    Ok(())
}

#[tokio::test]
async fn nobody_else_hears_the_echo() -> Result<()> {
    let server = start().await;
    let conversation = Conversation::new(&server.ws_url());
    let mut alice = conversation.connect("alice").await?;
    let mut bob = conversation.connect("bob").await?;
    alice.send_text("only for alice").await?;
    alice.expect_text("only for alice").await?;
    bob.expect_silence(Duration::from_millis(300)).await
}

#[tokio::test]
async fn plain_get_still_says_hello() -> Result<()> {
    let server = start().await;
    let response = http::get(server.port(), "/", &[]).await?;
    let got = (response.status, response.body.as_str());
    assert_eq!(got, (200, r#"{"hello":"world"}"#), "GET / without an upgrade");
    Ok(())
}

#[tokio::test]
async fn a_taken_port_is_explained_in_one_line() -> anyhow::Result<()> {
    client::running::expect_taken_port_explained(env!("CARGO_BIN_EXE_lesson01")).await
}
