//! Live profile updates over real sockets: a rename (`PATCH /api/me`) is pushed as
//! `{"profile"}` to everyone who shares a channel with one of the account's connections and to
//! those connections, each once; another room hears nothing; the account's connections speak
//! with the new name at once (messages, who, typing, presence) without reconnecting. A new
//! picture sends the same frame: see avatars.rs.

mod common;

use anyhow::Result;
use client::Connection;
use client::message::{join, text};
use common::api::*;
use common::{connect, recv_json, start};
use serde_json::{Value, json};

/// Asks `{"who"}`: the answer is the next frame only if nothing else was queued before it, so
/// it also proves that nothing was.
async fn who(conn: &mut Connection) -> Result<Value> {
    conn.send_json(&json!({"who": true})).await?;
    let answer = recv_json(conn).await?;
    anyhow::ensure!(answer.get("who").is_some(), "expected the who answer, got {answer}");
    Ok(answer)
}

#[tokio::test]
async fn a_rename_reaches_the_room_and_the_accounts_tabs_once_and_names_what_follows() -> Result<()>
{
    let server = start(&[]).await?;
    let (cookie, profile) = account(&server, "ada").await?;
    let id = profile["id"].as_str().unwrap_or_default().to_owned();
    for room in ["rust", "go"] {
        let created =
            post(&server, "/api/rooms", &[("Cookie", &cookie)], &json!({"name": room})).await?;
        assert_eq!(created.status, 201);
    }
    let mut mate = connect(&server).await?;
    enter_room(&mut mate.conn, "rust").await?;
    let mut elsewhere = connect(&server).await?;
    enter_room(&mut elsewhere.conn, "go").await?;
    let mut feed = connect(&server).await?;
    let mut tab1 = account_tab(&server, &cookie).await?;
    enter_room(&mut tab1, "rust").await?;
    recv_json(&mut mate.conn).await?; // ada joined
    let mut tab2 = account_tab(&server, &cookie).await?;
    enter_room(&mut tab2, "rust").await?;

    let rename = json!({"name": "Countess"}).to_string();
    let renamed =
        request(server.port(), "PATCH", "/api/me", &[("Cookie", &cookie)], Some(&rename)).await?;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    let changed =
        json!({"profile": {"id": id, "name": "Countess", "avatar": format!("/avatars/{id}")}});
    for conn in [&mut mate.conn, &mut tab1, &mut tab2] {
        assert_eq!(recv_json(conn).await?, changed);
    }

    // Once each: the room-mate's next frame is the next message, which has the new name.
    tab1.send_json(&text("renamed")).await?;
    let next = recv_json(&mut mate.conn).await?;
    assert_eq!(
        (next["name"].clone(), next["data"]["text"].clone()),
        (json!("Countess"), json!("renamed"))
    );
    assert_eq!(
        recv_json(&mut tab2).await?["data"]["text"],
        "renamed",
        "once for the other tab too"
    );
    // Another room and the feed, where ada is not, were not told.
    who(&mut elsewhere.conn).await?;
    who(&mut feed.conn).await?;

    // Who, typing and presence have the new name without a reconnection.
    let countess = json!({"id": id, "name": "Countess"});
    let who_answer = who(&mut mate.conn).await?;
    assert_eq!(who_answer["who"]["members"], json!([{"id": mate.id}, countess]));
    tab2.send_json(&json!({"typing": true})).await?;
    assert_eq!(recv_json(&mut mate.conn).await?, json!({"typing": countess}));
    tab1.close().await?;
    tab2.send_json(&join("feed")).await?;
    assert_eq!(recv_json(&mut mate.conn).await?, json!({"presence": {"left": countess}}));

    // Now ada is in the feed: a rename goes to the feed, and no longer to the room.
    let rename = json!({"name": "Ada"}).to_string();
    request(server.port(), "PATCH", "/api/me", &[("Cookie", &cookie)], Some(&rename)).await?;
    let changed = json!({"profile": {"id": id, "name": "Ada", "avatar": format!("/avatars/{id}")}});
    assert_eq!(recv_json(&mut feed.conn).await?, changed);
    who(&mut mate.conn).await?;
    Ok(())
}

#[tokio::test]
async fn a_random_partner_is_told_of_a_rename() -> Result<()> {
    let server = start(&[]).await?;
    let (cookie, profile) = account(&server, "bob").await?;
    let mut stranger = connect(&server).await?;
    stranger.conn.send_json(&join("random")).await?;
    recv_json(&mut stranger.conn).await?; // waiting
    let mut bob = account_tab(&server, &cookie).await?;
    bob.send_json(&join("random")).await?;
    recv_json(&mut bob).await?; // paired
    recv_json(&mut bob).await?; // who the stranger is
    recv_json(&mut stranger.conn).await?; // paired
    recv_json(&mut stranger.conn).await?; // who bob is

    let rename = json!({"name": "Robert"}).to_string();
    request(server.port(), "PATCH", "/api/me", &[("Cookie", &cookie)], Some(&rename)).await?;
    let changed = recv_json(&mut stranger.conn).await?;
    assert_eq!(changed["profile"]["id"], profile["id"]);
    assert_eq!(changed["profile"]["name"], "Robert");
    assert_eq!(recv_json(&mut bob).await?, changed, "and bob's own connection");
    Ok(())
}
