//! lesson04: scheduled messages arrive later, to everyone, and never hold up the sender.

use std::time::Duration;

use client::{Connection, RunningServer, message};
use serde_json::{Value, json};

async fn start() -> RunningServer {
    RunningServer::start(env!("CARGO_BIN_EXE_lesson04"), &[]).await.expect("lesson04 starts")
}

async fn join(server: &RunningServer) -> (Connection, String) {
    Connection::join(&server.ws_url()).await.unwrap()
}

fn scheduled(schedule: Value, text: &str) -> Value {
    json!({"type": "text", "data": {"schedule": schedule, "text": text}})
}

#[tokio::test]
async fn a_scheduled_message_arrives_later_for_everyone_including_the_sender() {
    let server = start().await;
    let (mut alice, alice_id) = join(&server).await;
    let (mut bob, _) = join(&server).await;

    alice.send_json(&scheduled(json!({"seconds": 1}), "from the past")).await.unwrap();
    // It is not delivered at once...
    bob.expect_silence(Duration::from_millis(300)).await.unwrap();
    // ...but after the delay, without its schedule, with its author, to both.
    let expected = json!({"author": alice_id, "type": "text", "data": {"text": "from the past"}});
    assert_eq!(bob.recv_json().await.unwrap(), expected);
    assert_eq!(alice.recv_json().await.unwrap(), expected);
}

#[tokio::test]
async fn units_may_be_digit_strings_as_the_2018_client_sent_them() {
    let server = start().await;
    let (mut alice, _) = join(&server).await;
    let (mut bob, _) = join(&server).await;
    alice.send_json(&scheduled(json!({"minutes": "0", "seconds": "1"}), "strings")).await.unwrap();
    assert_eq!(bob.recv_json().await.unwrap()["data"], json!({"text": "strings"}));
    assert_eq!(alice.recv_json().await.unwrap()["data"], json!({"text": "strings"}));
}

#[tokio::test]
async fn a_pending_schedule_never_holds_up_the_senders_next_messages() {
    let server = start().await;
    let (mut alice, _) = join(&server).await;
    let (mut bob, _) = join(&server).await;
    alice.send_json(&scheduled(json!({"hours": 1}), "much later")).await.unwrap();
    alice.send_json(&scheduled(json!({"seconds": 1}), "soon")).await.unwrap();
    alice.send_json(&message::text("right now")).await.unwrap();
    assert_eq!(bob.recv_json().await.unwrap()["data"]["text"], "right now");
    assert_eq!(bob.recv_json().await.unwrap()["data"]["text"], "soon");
    // Plain messages still go only to the others.
    assert_eq!(alice.recv_json().await.unwrap()["data"]["text"], "soon");
}

#[tokio::test]
async fn a_bad_schedule_gets_an_error_and_is_never_delivered() {
    let server = start().await;
    let (mut alice, _) = join(&server).await;
    let (mut bob, _) = join(&server).await;
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
        alice.send_json(&scheduled(schedule.clone(), "never")).await.unwrap();
        let reply = alice.recv_json().await.unwrap();
        assert!(reply["error"].is_string(), "no error for {schedule}: {reply}");
    }
    // "seconds": 0 would be delivered at once if any bad schedule had slipped through.
    bob.expect_silence(Duration::from_millis(300)).await.unwrap();
    alice.expect_silence(Duration::from_millis(100)).await.unwrap();
}

#[tokio::test]
async fn unscheduled_messages_behave_as_in_lesson03() {
    let server = start().await;
    let (mut alice, alice_id) = join(&server).await;
    let (mut bob, _) = join(&server).await;
    alice.send_json(&message::text("plain")).await.unwrap();
    let expected = json!({"author": alice_id, "type": "text", "data": {"text": "plain"}});
    assert_eq!(bob.recv_json().await.unwrap(), expected);
    alice.send_text("not json").await.unwrap();
    assert!(alice.recv_json().await.unwrap()["error"].is_string());
    alice.expect_silence(Duration::from_millis(200)).await.unwrap();
}
