//! lesson03: every connection gets a fresh id first, and messages carry the sender's id.

use std::collections::HashSet;
use std::time::Duration;

use client::{Connection, RunningServer, message};
use serde_json::json;

async fn start() -> RunningServer {
    RunningServer::start(env!("CARGO_BIN_EXE_lesson03"), &[]).await.expect("lesson03 starts")
}

/// Connects and reads the `{"id"}` frame; once it has its id, a client is registered.
async fn join(server: &RunningServer) -> (Connection, String) {
    Connection::join(&server.ws_url()).await.unwrap()
}

#[tokio::test]
async fn each_connection_first_gets_a_fresh_uuid_as_32_lowercase_hex_chars() {
    let server = start().await;
    let mut ids = HashSet::new();
    for _ in 0..10 {
        // Several connections from one machine, as two browser tabs would be.
        let (_connection, id) = join(&server).await;
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{id}");
        assert!(ids.insert(id.clone()), "id {id} given twice");
    }
}

#[tokio::test]
async fn messages_reach_the_others_with_the_senders_id_as_author() {
    let server = start().await;
    let (mut alice, alice_id) = join(&server).await;
    let (mut bob, _) = join(&server).await;
    let (mut carol, _) = join(&server).await;

    // Alice claims to be someone else: the server knows better.
    let mut hello = message::text("Hello");
    hello["author"] = json!("not-alice");
    alice.send_json(&hello).await.unwrap();
    let expected = json!({"author": alice_id, "type": "text", "data": {"text": "Hello"}});
    assert_eq!(bob.recv_json().await.unwrap(), expected);
    assert_eq!(carol.recv_json().await.unwrap(), expected);

    alice.send_json(&message::emoji("😋")).await.unwrap();
    let expected = json!({"author": alice_id, "type": "emoji", "data": {"emoji": "😋"}});
    assert_eq!(bob.recv_json().await.unwrap(), expected);
    assert_eq!(carol.recv_json().await.unwrap(), expected);

    alice.expect_silence(Duration::from_millis(300)).await.unwrap();
}

#[tokio::test]
async fn a_frame_that_is_not_a_json_object_gets_an_error_and_the_connection_stays_open() {
    let server = start().await;
    let (mut alice, alice_id) = join(&server).await;
    let (mut bob, _) = join(&server).await;
    for bad in ["hello", "{not json", "[1, 2]", "\"text\"", "42", "null", ""] {
        alice.send_text(bad).await.unwrap();
        let reply = alice.recv_json().await.unwrap();
        let reason =
            reply["error"].as_str().unwrap_or_else(|| panic!("no error for {bad:?}: {reply}"));
        assert!(!reason.is_empty());
        assert_eq!(reply.as_object().unwrap().len(), 1, "{reply}");
    }
    // Nobody else heard any of it, and Alice can still chat.
    alice.send_json(&message::text("still here")).await.unwrap();
    let received = bob.recv_json().await.unwrap();
    assert_eq!(received["data"]["text"], "still here");
    assert_eq!(received["author"], alice_id.as_str());
}

#[tokio::test]
async fn a_departed_user_is_forgotten() {
    let server = start().await;
    let (mut alice, _) = join(&server).await;
    let (bob, _) = join(&server).await;
    let (mut carol, _) = join(&server).await;
    bob.close().await.unwrap();
    alice.send_json(&message::text("anyone?")).await.unwrap();
    assert_eq!(carol.recv_json().await.unwrap()["data"]["text"], "anyone?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_comes_first_even_while_others_are_chatting() {
    let server = start().await;
    let (mut chatter, _) = join(&server).await;
    let url = server.ws_url();
    let newcomers = tokio::spawn(async move {
        for _ in 0..200 {
            let mut newcomer = Connection::connect(&url).await.unwrap();
            let first = newcomer.recv_json().await.unwrap();
            assert!(first["id"].is_string(), "first frame was {first}");
        }
    });
    // Chat as fast as possible until every newcomer has checked its first frame.
    while !newcomers.is_finished() {
        chatter.send_json(&message::text("busy")).await.unwrap();
    }
    newcomers.await.unwrap();
}
