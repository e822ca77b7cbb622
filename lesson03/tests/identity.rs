//! lesson03: every connection gets a fresh id first, and messages carry the sender's id.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use client::{Conversation, RunningServer, message};
use serde_json::json;

async fn start() -> (RunningServer, Conversation) {
    let server =
        RunningServer::start(env!("CARGO_BIN_EXE_lesson03"), &[]).await.expect("lesson03 starts");
    let conversation = Conversation::new(&server.ws_url());
    (server, conversation)
}

#[tokio::test]
async fn each_connection_first_gets_a_fresh_uuid_as_32_lowercase_hex_chars() -> Result<()> {
    let (_server, conversation) = start().await;
    let mut ids = HashSet::new();
    for number in 0..10 {
        // Several connections from one machine, as two browser tabs would be.
        let (_connection, id) = conversation.join(&format!("client {number}")).await?;
        let hex = id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ensure!(id.len() == 32 && hex, "the id {id:?} is not 32 lowercase hex digits");
        ensure!(ids.insert(id.clone()), "the id {id} was given to two connections");
    }
    Ok(())
}

#[tokio::test]
async fn messages_reach_the_others_with_the_senders_id_as_author() -> Result<()> {
    let (_server, conversation) = start().await;
    let (mut alice, alice_id) = conversation.join("alice").await?;
    let (mut bob, _) = conversation.join("bob").await?;
    let (mut carol, _) = conversation.join("carol").await?;

    // Alice claims to be someone else: the server knows better.
    let mut hello = message::text("Hello");
    hello["author"] = json!("not-alice");
    alice.send_json(&hello).await?;
    let expected = json!({"author": alice_id, "type": "text", "data": {"text": "Hello"}});
    bob.expect_json(&expected).await?;
    carol.expect_json(&expected).await?;

    alice.send_json(&message::emoji("😋")).await?;
    let expected = json!({"author": alice_id, "type": "emoji", "data": {"emoji": "😋"}});
    bob.expect_json(&expected).await?;
    carol.expect_json(&expected).await?;

    alice.expect_silence(Duration::from_millis(300)).await
}

#[tokio::test]
async fn a_frame_that_is_not_a_json_object_gets_an_error_and_the_connection_stays_open()
-> Result<()> {
    let (_server, conversation) = start().await;
    let (mut alice, alice_id) = conversation.join("alice").await?;
    let (mut bob, _) = conversation.join("bob").await?;
    for bad in ["hello", "{not json", "[1, 2]", "\"text\"", "42", "null", ""] {
        alice.send_text(bad).await?;
        alice.expect_error().await?;
    }
    // Nobody else heard any of it, and Alice can still chat.
    alice.send_json(&message::text("still here")).await?;
    let expected = json!({"author": alice_id, "type": "text", "data": {"text": "still here"}});
    bob.expect_json(&expected).await
}

#[tokio::test]
async fn a_departed_user_is_forgotten() -> Result<()> {
    let (_server, conversation) = start().await;
    let (mut alice, alice_id) = conversation.join("alice").await?;
    let (bob, _) = conversation.join("bob").await?;
    let (mut carol, _) = conversation.join("carol").await?;
    bob.close().await?;
    alice.send_json(&message::text("anyone?")).await?;
    carol
        .expect_json(&json!({"author": alice_id, "type": "text", "data": {"text": "anyone?"}}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_comes_first_even_while_others_are_chatting() -> Result<()> {
    let (_server, conversation) = start().await;
    let (mut chatter, _) = conversation.join("chatter").await?;
    let newcomers = tokio::spawn(async move {
        for number in 0..200 {
            conversation.join(&format!("newcomer {number}")).await?;
        }
        anyhow::Ok(())
    });
    // Chat as fast as possible until every newcomer has checked its first frame.
    while !newcomers.is_finished() {
        chatter.send_json(&message::text("busy")).await?;
    }
    newcomers.await?
}

#[tokio::test]
async fn a_taken_port_is_explained_in_one_line() -> anyhow::Result<()> {
    client::running::expect_taken_port_explained(env!("CARGO_BIN_EXE_lesson03")).await
}
