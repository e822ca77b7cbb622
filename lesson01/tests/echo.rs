//! lesson01: every text frame comes back, unchanged, to its sender only.

use std::time::Duration;

use client::{Connection, RunningServer, http};

async fn start() -> RunningServer {
    RunningServer::start(env!("CARGO_BIN_EXE_lesson01"), &[]).await.expect("lesson01 starts")
}

#[tokio::test]
async fn text_frames_come_back_unchanged_and_in_order() {
    let server = start().await;
    let mut alice = Connection::connect(&server.ws_url()).await.unwrap();
    let frames = ["hello", "", "  spaces  ", "{\"type\":\"text\"}", "한글 😋", &"x".repeat(10_000)];
    for frame in frames {
        alice.send_text(frame).await.unwrap();
    }
    for frame in frames {
        assert_eq!(alice.recv_text().await.unwrap(), frame);
    }
}

#[tokio::test]
async fn nobody_else_hears_the_echo() {
    let server = start().await;
    let mut alice = Connection::connect(&server.ws_url()).await.unwrap();
    let mut bob = Connection::connect(&server.ws_url()).await.unwrap();
    alice.send_text("only for alice").await.unwrap();
    assert_eq!(alice.recv_text().await.unwrap(), "only for alice");
    bob.expect_silence(Duration::from_millis(300)).await.unwrap();
}

#[tokio::test]
async fn plain_get_still_says_hello() {
    let server = start().await;
    let response = http::get(server.port(), "/", &[]).await.unwrap();
    assert_eq!((response.status, response.body.as_str()), (200, r#"{"hello":"world"}"#));
}
