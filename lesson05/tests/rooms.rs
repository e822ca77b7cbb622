//! lesson05: random 1:1 rooms beside the feed, and notices to the users concerned.

use std::time::Duration;

use anyhow::Result;
use client::{Connection, Conversation, RunningServer, message};
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(300);

async fn start() -> (RunningServer, Conversation) {
    let server =
        RunningServer::start(env!("CARGO_BIN_EXE_lesson05"), &[]).await.expect("lesson05 starts");
    let conversation = Conversation::new(&server.ws_url());
    (server, conversation)
}

struct User {
    connection: Connection,
    id: String,
}

impl User {
    async fn join(conversation: &Conversation, name: &str) -> Result<User> {
        let (connection, id) = conversation.join(name).await?;
        Ok(User { connection, id })
    }

    async fn send(&mut self, frame: Value) -> Result<()> {
        self.connection.send_json(&frame).await
    }

    async fn say(&mut self, text: &str) -> Result<()> {
        self.send(message::text(text)).await
    }

    async fn expect_text(&mut self, from: &str, text: &str) -> Result<()> {
        let expected = json!({"author": from, "type": "text", "data": {"text": text}});
        self.connection.expect_json(&expected).await
    }

    async fn expect_status(&mut self, channel: &str, status: &str) -> Result<()> {
        self.connection.expect_json(&json!({"channel": channel, "status": status})).await
    }

    async fn expect_silence(&mut self) -> Result<()> {
        self.connection.expect_silence(QUIET).await
    }

    /// `{"channel":"random"}` and the notice it is answered with.
    async fn go_random(&mut self, status: &str) -> Result<()> {
        self.send(message::join("random")).await?;
        self.expect_status("random", status).await
    }
}

#[tokio::test]
async fn random_pairs_a_seeker_with_someone_waiting_alone() -> Result<()> {
    let (_server, conversation) = start().await;
    let mut alice = User::join(&conversation, "alice").await?;
    let mut bob = User::join(&conversation, "bob").await?;
    alice.go_random("waiting").await?;
    bob.go_random("paired").await?;
    alice.expect_status("random", "paired").await?;

    alice.say("hi stranger").await?;
    bob.expect_text(&alice.id, "hi stranger").await?;
    bob.say("hello!").await?;
    alice.expect_text(&bob.id, "hello!").await?;
    alice.expect_silence().await?;
    bob.expect_silence().await
}

#[tokio::test]
async fn four_users_make_two_rooms_that_never_see_each_other_or_the_feed() -> Result<()> {
    let (_server, conversation) = start().await;
    let mut feed = User::join(&conversation, "feed").await?;
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(
            User::join(&conversation, ["user a", "user b", "user c", "user d"][users.len()])
                .await?,
        );
    }
    let [a, b, c, d] = &mut users[..] else { unreachable!() };
    a.go_random("waiting").await?;
    b.go_random("paired").await?;
    a.expect_status("random", "paired").await?;
    c.go_random("waiting").await?;
    d.go_random("paired").await?;
    c.expect_status("random", "paired").await?;

    a.say("a in room one").await?;
    c.say("c in room two").await?;
    feed.say("feed only").await?;
    b.expect_text(&a.id, "a in room one").await?;
    d.expect_text(&c.id, "c in room two").await?;
    for user in [a, b, c, d] {
        user.expect_silence().await?;
    }
    feed.expect_silence().await
}

#[tokio::test]
async fn going_back_to_the_feed_leaves_the_partner_waiting_for_the_next_seeker() -> Result<()> {
    let (_server, conversation) = start().await;
    let mut alice = User::join(&conversation, "alice").await?;
    let mut bob = User::join(&conversation, "bob").await?;
    let mut carol = User::join(&conversation, "carol").await?;
    alice.go_random("waiting").await?;
    bob.go_random("paired").await?;
    alice.expect_status("random", "paired").await?;

    bob.send(message::join("feed")).await?;
    bob.expect_status("feed", "joined").await?;
    alice.expect_status("random", "partner_left").await?;

    // Bob is back in the feed with Carol; Alice hears none of it.
    bob.say("back in the feed").await?;
    carol.expect_text(&bob.id, "back in the feed").await?;
    alice.expect_silence().await?;

    // The next seeker finds Alice waiting.
    carol.go_random("paired").await?;
    alice.expect_status("random", "paired").await?;
    carol.say("hi alice").await?;
    alice.expect_text(&carol.id, "hi alice").await?;
    bob.expect_silence().await
}

#[tokio::test]
async fn a_partner_who_disconnects_frees_the_place() -> Result<()> {
    let (_server, conversation) = start().await;
    let mut alice = User::join(&conversation, "alice").await?;
    let bob = {
        let mut bob = User::join(&conversation, "bob").await?;
        alice.go_random("waiting").await?;
        bob.go_random("paired").await?;
        bob
    };
    alice.expect_status("random", "paired").await?;
    bob.connection.close().await?;
    alice.expect_status("random", "partner_left").await?;

    let mut dave = User::join(&conversation, "dave").await?;
    dave.go_random("paired").await?;
    alice.expect_status("random", "paired").await
}

#[tokio::test]
async fn notices_go_only_to_the_users_concerned_and_asking_twice_changes_nothing() -> Result<()> {
    let (_server, conversation) = start().await;
    let mut alice = User::join(&conversation, "alice").await?;
    let mut bob = User::join(&conversation, "bob").await?;
    let mut feed = User::join(&conversation, "feed").await?;
    alice.go_random("waiting").await?;
    alice.go_random("waiting").await?; // already waiting: same answer, no second room
    bob.go_random("paired").await?;
    alice.expect_status("random", "paired").await?;
    bob.go_random("paired").await?; // already paired: only Bob is told
    alice.expect_silence().await?;
    feed.send(message::join("feed")).await?;
    feed.expect_status("feed", "joined").await?;
    feed.expect_silence().await
}

#[tokio::test]
async fn a_message_scheduled_in_a_room_is_delivered_to_that_room() -> Result<()> {
    let (_server, conversation) = start().await;
    let mut alice = User::join(&conversation, "alice").await?;
    let mut bob = User::join(&conversation, "bob").await?;
    let mut feed = User::join(&conversation, "feed").await?;
    alice.go_random("waiting").await?;
    bob.go_random("paired").await?;
    alice.expect_status("random", "paired").await?;

    alice
        .send(json!({"type": "text", "data": {"schedule": {"seconds": 1}, "text": "later"}}))
        .await?;
    bob.expect_text(&alice.id, "later").await?;
    let alice_id = alice.id.clone();
    alice.expect_text(&alice_id, "later").await?;
    feed.expect_silence().await
}

#[tokio::test]
async fn an_unknown_channel_is_an_error() -> Result<()> {
    let (_server, conversation) = start().await;
    let mut alice = User::join(&conversation, "alice").await?;
    for channel in [json!("lobby"), json!(1), json!(null)] {
        alice.send(json!({"channel": channel})).await?;
        alice.connection.expect_error().await?;
    }
    // Still in the feed, still chatting.
    let mut bob = User::join(&conversation, "bob").await?;
    alice.say("fine").await?;
    bob.expect_text(&alice.id, "fine").await
}

#[tokio::test]
async fn a_taken_port_is_explained_in_one_line() -> anyhow::Result<()> {
    client::running::expect_taken_port_explained(env!("CARGO_BIN_EXE_lesson05")).await
}
