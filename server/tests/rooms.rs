//! Named rooms over real HTTP and WebSocket, against the server binary: creating and listing
//! them (`/api/rooms`), entering one, its members, history and messages kept apart from the
//! feed, and rooms and their messages across a restart.

mod common;

use anyhow::Result;
use client::RunningServer;
use client::message::{join, text};
use common::api::*;
use common::{connect, database_in, recv_error, recv_json, start, start_with, terminate};
use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn create(server: &RunningServer, cookie: &str, room: &Value) -> Result<Response> {
    post(server, "/api/rooms", &[("Cookie", cookie)], room).await
}

async fn list(server: &RunningServer) -> Result<Value> {
    request(server.port(), "GET", "/api/rooms", &[], None).await?.json()
}

fn enter(room: &str) -> Value {
    json!({"channel": "room", "room": room})
}

#[tokio::test]
async fn accounts_create_rooms_within_the_rules_and_everyone_lists_them() -> Result<()> {
    let server = start(&["--max-rooms-per-account", "2", "--max-rooms", "3"]).await?;
    assert_eq!(list(&server).await?, json!([]));
    let (ada, _) = account(&server, "ada").await?;
    let room = json!({"name": "rust", "topic": "<img src=x onerror=alert(1)>"});
    let guest = post(&server, "/api/rooms", &[], &room).await?;
    assert_eq!((guest.status, guest.error()), (401, "not logged in".into()));
    let created = create(&server, &ada, &room).await?;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json()?, json!({"name": "rust", "topic": room["topic"], "online": 0}));
    let again = create(&server, &ada, &json!({"name": "rust"})).await?;
    assert_eq!((again.status, again.error()), (409, "that room name is taken".into()));
    for (bad, reason) in [
        (json!({"name": ""}), "a room name is 1 to 32 of a-z, 0-9 and -"),
        (json!({"name": "Rust"}), "a room name is 1 to 32 of a-z, 0-9 and -"),
        (json!({"name": "a".repeat(33)}), "a room name is 1 to 32 of a-z, 0-9 and -"),
        (json!({"name": "random"}), "feed and random are not room names"),
        (json!({"name": "ok", "topic": "t".repeat(201)}), "a topic is at most 200 characters"),
    ] {
        let refused = create(&server, &ada, &bad).await?;
        assert_eq!((refused.status, refused.error()), (400, reason.into()), "{bad}");
    }
    let foreign = post(
        &server,
        "/api/rooms",
        &[("Cookie", &ada), ("Origin", "http://evil.example")],
        &json!({"name": "evil"}),
    )
    .await?;
    assert_eq!(foreign.status, 403);
    assert_eq!(create(&server, &ada, &json!({"name": "go-2"})).await?.status, 201);
    let third = create(&server, &ada, &json!({"name": "zig"})).await?;
    assert_eq!((third.status, third.error()), (400, "you already have 2 rooms".into()));
    let (bob, _) = account(&server, "bob").await?;
    assert_eq!(create(&server, &bob, &json!({"name": "zig"})).await?.status, 201);
    let full = create(&server, &bob, &json!({"name": "odin"})).await?;
    assert_eq!((full.status, full.error()), (400, "the server already has 3 rooms".into()));
    let names: Vec<Value> = list(&server).await?.as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = names.iter().filter_map(|room| room["name"].as_str()).collect();
    assert_eq!(names, ["go-2", "rust", "zig"]);
    Ok(())
}

#[tokio::test]
async fn a_room_has_its_members_history_and_messages_apart_from_the_feed() -> Result<()> {
    let server = start(&[]).await?;
    let (cookie, profile) = account(&server, "ada").await?;
    create(&server, &cookie, &json!({"name": "rust"})).await?;
    let mut feed = connect(&server).await?;
    let mut guest = connect(&server).await?;
    guest.conn.send_json(&enter("nowhere")).await?;
    assert_eq!(recv_error(&mut guest.conn).await?, "there is no room named \"nowhere\"");

    let (mut ada, _, _) = account_socket(&server, &cookie).await?;
    ada.send(Message::text(enter("rust").to_string())).await?;
    let ada_member = json!({"id": profile["id"], "name": "ada"});
    let joined =
        json!({"channel": "room", "room": "rust", "status": "joined", "members": [ada_member]});
    assert_eq!(next_json(&mut ada).await?, joined);
    let mut first = text("first in rust");
    first["ack"] = json!(true);
    ada.send(Message::text(first.to_string())).await?;
    assert_eq!(next_json(&mut ada).await?, json!({"sent": {"seq": 1}}), "before the guest comes");

    guest.conn.send_json(&enter("rust")).await?;
    let joined = recv_json(&mut guest.conn).await?;
    assert_eq!(joined["members"], json!([ada_member, {"id": guest.id}]));
    let history = recv_json(&mut guest.conn).await?;
    assert_eq!(
        (history["data"]["text"].clone(), history["seq"].clone(), history["history"].clone()),
        (json!("first in rust"), json!(1), json!(true)),
        "a room numbers its own messages"
    );
    let rooms = list(&server).await?;
    assert_eq!(rooms, json!([{"name": "rust", "topic": "", "online": 2}]));

    guest.conn.send_json(&text("hello ada")).await?;
    assert_eq!(next_json(&mut ada).await?, json!({"presence": {"joined": {"id": guest.id}}}));
    let heard = next_json(&mut ada).await?;
    assert_eq!(
        (heard["data"]["text"].clone(), heard["seq"].clone()),
        (json!("hello ada"), json!(2))
    );
    // A deletion stays in the room, named by it.
    guest.conn.send_json(&json!({"delete": 2})).await?;
    let deleted = json!({"deleted": {"channel": "rust", "seq": 2}});
    assert_eq!(next_json(&mut ada).await?, deleted);
    assert_eq!(recv_json(&mut guest.conn).await?, deleted);
    // A schedule is delivered in the room it was sent in.
    guest.conn.send_json(&text("/schedule seconds 1 message later")).await?;
    assert_eq!(next_json(&mut ada).await?["data"]["text"], "later");

    // The feed heard none of it: its next frame is the next feed message.
    guest.conn.send_json(&join("feed")).await?;
    recv_json(&mut guest.conn).await?; // later, to its sender too
    recv_json(&mut guest.conn).await?; // joined the feed
    guest.conn.send_json(&text("back in the feed")).await?;
    assert_eq!(recv_json(&mut feed.conn).await?["data"]["text"], "back in the feed");
    let rooms = list(&server).await?;
    assert_eq!(rooms[0]["online"], 1);
    Ok(())
}

#[tokio::test]
async fn rooms_and_their_messages_survive_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = database_in(&dir);
    let mut server = start_with(&path, 0, &[]).await?;
    let (cookie, _) = account(&server, "ada").await?;
    let topic = json!({"name": "rust", "topic": "crabs"});
    assert_eq!(create(&server, &cookie, &topic).await?.status, 201);
    let mut guest = connect(&server).await?;
    guest.conn.send_json(&enter("rust")).await?;
    recv_json(&mut guest.conn).await?;
    for line in ["one", "two"] {
        guest.conn.send_json(&text(line)).await?;
    }
    guest.conn.send_json(&json!({"delete": 1})).await?;
    assert_eq!(recv_json(&mut guest.conn).await?["deleted"]["seq"], 1);
    terminate(&mut server).await?;

    let server = start_with(&path, 0, &[]).await?;
    assert_eq!(list(&server).await?, json!([{"name": "rust", "topic": "crabs", "online": 0}]));
    let mut newcomer = connect(&server).await?;
    newcomer.conn.send_json(&enter("rust")).await?;
    recv_json(&mut newcomer.conn).await?;
    let history = recv_json(&mut newcomer.conn).await?;
    assert_eq!((history["data"]["text"].clone(), history["seq"].clone()), (json!("two"), json!(2)));
    newcomer.conn.send_json(&json!({"history": {"before": 3}})).await?;
    let page = recv_json(&mut newcomer.conn).await?;
    assert_eq!(page["history"]["messages"].as_array().map(Vec::len), Some(1), "{page}");
    // The room's numbering goes on; the feed's is its own.
    let mut other = connect(&server).await?;
    other.conn.send_json(&enter("rust")).await?;
    recv_json(&mut other.conn).await?;
    recv_json(&mut other.conn).await?;
    newcomer.conn.send_json(&text("three")).await?;
    assert_eq!(recv_json(&mut other.conn).await?["seq"], 3);
    let mut feed = connect(&server).await?;
    other.conn.send_json(&join("feed")).await?;
    recv_json(&mut other.conn).await?;
    other.conn.send_json(&text("feed one")).await?;
    assert_eq!(recv_json(&mut feed.conn).await?["seq"], 1);
    // Coming back to a room with the last seq seen gives what was missed, not the newest.
    // (It has seen the feed too: no feed history comes first.)
    let url = format!("{}?after=1", server.ws_url());
    let mut resumed = common::connect_url(&url).await?;
    resumed.conn.send_json(&json!({"channel": "room", "room": "rust", "after": 2})).await?;
    assert_eq!(recv_json(&mut resumed.conn).await?["status"], "joined");
    let missed = recv_json(&mut resumed.conn).await?;
    assert_eq!((missed["seq"].clone(), missed["history"].clone()), (json!(3), json!(true)));
    Ok(())
}
