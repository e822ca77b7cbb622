//! lesson04: scheduled messages arrive later, to everyone, and never hold up the sender.

use std::time::Duration;

use anyhow::Result;
use client::{Conversation, RunningServer, message};
use serde_json::{Value, json};

async fn start() -> (RunningServer, Conversation) {
    let server =
        RunningServer::start(env!("CARGO_BIN_EXE_lesson04"), &[]).await.expect("lesson04 starts");
    let conversation = Conversation::new(&server.ws_url());
    (server, conversation)
}

fn scheduled(schedule: Value, text: &str) -> Value {
    json!({"type": "text", "data": {"schedule": schedule, "text": text}})
}

fn text_from(author: &str, text: &str) -> Value {
    json!({"author": author, "type": "text", "data": {"text": text}})
}

#[tokio::test]
async fn a_scheduled_message_arrives_later_for_everyone_including_the_sender() -> Result<()> {
    let (_server, conversation) = start().await;
    let (mut alice, alice_id) = conversation.join("alice").await?;
    let (mut bob, _) = conversation.join("bob").await?;

    alice.send_json(&scheduled(json!({"seconds": 1}), "from the past")).await?;
    // It is not delivered at once...
    bob.expect_silence(Duration::from_millis(300)).await?;
    // ...but after the delay, without its schedule, with its author, to both.
    let expected = text_from(&alice_id, "from the past");
    bob.expect_json(&expected).await?;
    alice.expect_json(&expected).await
}

#[tokio::test]
async fn units_may_be_digit_strings_as_the_2018_client_sent_them() -> Result<()> {
    let (_server, conversation) = start().await;
    let (mut alice, alice_id) = conversation.join("alice").await?;
    let (mut bob, _) = conversation.join("bob").await?;
    alice.send_json(&scheduled(json!({"minutes": "0", "seconds": "1"}), "strings")).await?;
    bob.expect_json(&text_from(&alice_id, "strings")).await?;
    alice.expect_json(&text_from(&alice_id, "strings")).await
}

#[tokio::test]
async fn a_pending_schedule_never_holds_up_the_senders_next_messages() -> Result<()> {
    let (_server, conversation) = start().await;
    let (mut alice, alice_id) = conversation.join("alice").await?;
    let (mut bob, _) = conversation.join("bob").await?;
    alice.send_json(&scheduled(json!({"hours": 1}), "much later")).await?;
    alice.send_json(&scheduled(json!({"seconds": 1}), "soon")).await?;
    alice.send_json(&message::text("right now")).await?;
    bob.expect_json(&text_from(&alice_id, "right now")).await?;
    bob.expect_json(&text_from(&alice_id, "soon")).await?;
    // Plain messages still go only to the others.
    alice.expect_json(&text_from(&alice_id, "soon")).await
}

#[tokio::test]
async fn a_bad_schedule_gets_an_error_and_is_never_delivered() -> Result<()> {
    let (_server, conversation) = start().await;
    let (mut alice, _) = conversation.join("alice").await?;
    let (mut bob, _) = conversation.join("bob").await?;
    let bad_schedules = [
        json!({"seconds": "abc"}),
        json!({"seconds": -1}),
        json!({"seconds": 1.5}),
        json!({"seconds": "1.5"}),
        json!({"seconds": ""}),
        json!({"seconds": null}),
        json!({"days": 1}),
        json!({"seconds": 0, "weeks": 1}),
        json!({}),
        json!("1 second"),
        json!({"hours": u64::MAX}),
        json!({"hours": 5_124_095_576_030_432_u64}), // overflows 64-bit seconds
    ];
    for schedule in bad_schedules {
        alice.send_json(&scheduled(schedule, "never")).await?;
        alice.expect_error().await?;
    }
    // "seconds": 0 would be delivered at once if any bad schedule had slipped through.
    bob.expect_silence(Duration::from_millis(300)).await?;
    alice.expect_silence(Duration::from_millis(100)).await
}

#[tokio::test]
async fn unscheduled_messages_behave_as_in_lesson03() -> Result<()> {
    let (_server, conversation) = start().await;
    let (mut alice, alice_id) = conversation.join("alice").await?;
    let (mut bob, _) = conversation.join("bob").await?;
    alice.send_json(&message::text("plain")).await?;
    bob.expect_json(&text_from(&alice_id, "plain")).await?;
    alice.send_text("not json").await?;
    alice.expect_error().await?;
    alice.expect_silence(Duration::from_millis(200)).await
}

#[tokio::test]
async fn a_taken_port_is_explained_in_one_line() -> anyhow::Result<()> {
    client::running::expect_taken_port_explained(env!("CARGO_BIN_EXE_lesson04")).await
}
