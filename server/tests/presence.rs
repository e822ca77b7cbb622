//! Presence over real sockets: who comes and goes in a named room or a random pair (an
//! account's tabs once), typing relayed at most every 2 s, `{"who"}` anywhere, online counts in
//! `/api/rooms` and `/healthz`, and nothing of it pushed in the feed.

mod common;

use std::time::Duration;

use anyhow::Result;
use client::message::{join, text};
use common::api::*;
use common::{connect, health, recv_json, start};
use serde_json::json;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_room_hears_who_comes_goes_and_types_and_an_account_counts_once() -> Result<()> {
    let server = start(&[]).await?;
    let (cookie, profile) = account(&server, "ada").await?;
    let room = json!({"name": "rust"});
    let created = post(&server, "/api/rooms", &[("Cookie", &cookie)], &room).await?;
    assert_eq!(created.status, 201);
    let mut feed = connect(&server).await?;
    let mut guest = connect(&server).await?;
    enter_room(&mut guest.conn, "rust").await?;
    let ada = json!({"id": profile["id"], "name": "ada"});

    let mut tab1 = account_tab(&server, &cookie).await?;
    enter_room(&mut tab1, "rust").await?;
    assert_eq!(recv_json(&mut guest.conn).await?, json!({"presence": {"joined": ada}}));
    let mut tab2 = account_tab(&server, &cookie).await?;
    let joined = enter_room(&mut tab2, "rust").await?;
    assert_eq!(joined["members"], json!([{"id": guest.id}, ada]), "one member for two tabs");
    guest.conn.expect_silence(QUIET).await?; // the second tab is not news
    tab1.expect_silence(QUIET).await?;

    tab1.send_json(&json!({"typing": true})).await?;
    assert_eq!(recv_json(&mut guest.conn).await?, json!({"typing": ada}));
    tab2.send_json(&json!({"typing": true})).await?; // the same person, within 2 s
    guest.conn.expect_silence(QUIET).await?;
    tab2.expect_silence(Duration::ZERO).await?;
    guest.conn.send_json(&json!({"typing": true})).await?;
    for ada_tab in [&mut tab1, &mut tab2] {
        assert_eq!(recv_json(ada_tab).await?, json!({"typing": {"id": guest.id}}));
    }

    guest.conn.send_json(&json!({"who": true})).await?;
    let who = json!({"who": {"count": 2, "members": [{"id": guest.id}, ada]}});
    assert_eq!(recv_json(&mut guest.conn).await?, who);
    let rooms = request(server.port(), "GET", "/api/rooms", &[], None).await?.json()?;
    assert_eq!(rooms[0]["online"], 2);
    assert_eq!(health(&server).await?["named_rooms"], json!({"rust": 2}));

    tab1.close().await?;
    guest.conn.expect_silence(QUIET).await?; // the other tab is still there
    tab2.send_json(&join("feed")).await?;
    assert_eq!(recv_json(&mut guest.conn).await?, json!({"presence": {"left": ada}}));

    // The feed: nothing of this was pushed, typing is not relayed, but who answers.
    feed.conn.send_json(&json!({"typing": true})).await?;
    feed.conn.send_json(&json!({"who": true})).await?;
    let who = recv_json(&mut feed.conn).await?;
    assert_eq!(who["who"]["count"], 2, "{who}"); // feed itself and ada's second tab
    recv_json(&mut tab2).await?; // joined the feed
    tab2.expect_silence(QUIET).await?;

    // A rename shows in the next presence frame.
    let rename = json!({"name": "Countess"}).to_string();
    request(server.port(), "PATCH", "/api/me", &[("Cookie", &cookie)], Some(&rename)).await?;
    assert_eq!(recv_json(&mut tab2).await?["profile"]["name"], "Countess");
    enter_room(&mut tab2, "rust").await?;
    let countess = json!({"id": profile["id"], "name": "Countess"});
    assert_eq!(recv_json(&mut guest.conn).await?, json!({"presence": {"joined": countess}}));
    Ok(())
}

#[tokio::test]
async fn a_random_pair_is_told_who_the_other_is_and_when_it_leaves() -> Result<()> {
    let server = start(&[]).await?;
    let mut a = connect(&server).await?;
    let mut b = connect(&server).await?;
    let mut feed = connect(&server).await?;
    a.conn.send_json(&join("random")).await?;
    recv_json(&mut a.conn).await?; // waiting
    b.conn.send_json(&join("random")).await?;
    let paired = json!({"channel": "random", "status": "paired"});
    assert_eq!(recv_json(&mut a.conn).await?, paired);
    assert_eq!(recv_json(&mut a.conn).await?, json!({"presence": {"joined": {"id": b.id}}}));
    assert_eq!(recv_json(&mut b.conn).await?, paired);
    assert_eq!(recv_json(&mut b.conn).await?, json!({"presence": {"joined": {"id": a.id}}}));
    b.conn.send_json(&json!({"typing": true})).await?;
    assert_eq!(recv_json(&mut a.conn).await?, json!({"typing": {"id": b.id}}));
    b.conn.close().await?;
    assert_eq!(recv_json(&mut a.conn).await?, json!({"presence": {"left": {"id": b.id}}}));
    let left = json!({"channel": "random", "status": "partner_left"});
    assert_eq!(recv_json(&mut a.conn).await?, left);
    // A guest in the feed saw none of it: its next frame is the next feed message.
    a.conn.send_json(&join("feed")).await?;
    recv_json(&mut a.conn).await?;
    a.conn.send_json(&text("hello feed")).await?;
    assert_eq!(recv_json(&mut feed.conn).await?["data"]["text"], "hello feed");
    Ok(())
}
