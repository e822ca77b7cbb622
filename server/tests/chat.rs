//! Every behaviour of docs/PROTOCOL.md, over real sockets against the server binary.

mod common;

use std::time::Duration;

use anyhow::Result;
use client::Connection;
use client::message::text;
use common::{connect, connect_url, health, http_get, recv_error, start, wait_health};
use serde_json::json;
use tokio_tungstenite::tungstenite::{Bytes, Message};

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn the_first_frame_is_a_fresh_id() -> Result<()> {
    let server = start(&[]).await?;
    let a = connect(&server).await?;
    let b = connect(&server).await?;
    for id in [&a.id, &b.id] {
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{id}");
    }
    assert_ne!(a.id, b.id);
    Ok(())
}

#[tokio::test]
async fn messages_go_to_everyone_else_with_the_author_stamped() -> Result<()> {
    let server = start(&[]).await?;
    let mut a = connect(&server).await?;
    let mut b = connect(&server).await?;
    let mut c = connect(&server).await?;
    // A claimed author is replaced; unknown fields are not relayed.
    a.conn
        .send_json(&json!({"author": "mallory", "type": "text", "data": {"text": "hi", "x": 1}, "extra": true}))
        .await?;
    let expected = json!({"author": a.id, "type": "text", "data": {"text": "hi"}});
    assert_eq!(common::lesson_fields(b.conn.recv_json().await?), expected);
    assert_eq!(common::lesson_fields(c.conn.recv_json().await?), expected);
    a.conn.expect_silence(QUIET).await?;

    c.conn.send_json(&json!({"type": "emoji", "data": {"emoji": "😋"}})).await?;
    let expected = json!({"author": c.id, "type": "emoji", "data": {"emoji": "😋"}});
    assert_eq!(common::lesson_fields(a.conn.recv_json().await?), expected);
    assert_eq!(common::lesson_fields(b.conn.recv_json().await?), expected);
    Ok(())
}

#[tokio::test]
async fn frames_from_one_sender_arrive_in_order_and_a_closed_connection_is_forgotten() -> Result<()>
{
    let server = start(&["--message-rate", "0"]).await?;
    let mut a = connect(&server).await?;
    let mut b = connect(&server).await?;
    let gone = connect(&server).await?;
    gone.conn.close().await?;
    wait_health(&server, |h| h["connections"] == 2).await?;
    for n in 0..200 {
        a.conn.send_json(&text(&n.to_string())).await?;
    }
    for n in 0..200 {
        assert_eq!(b.conn.recv_json().await?["data"]["text"], n.to_string());
    }
    Ok(())
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_connection_stays_open() -> Result<()> {
    let server = start(&[]).await?;
    let mut a = connect(&server).await?;
    let mut b = connect(&server).await?;
    let table = [
        ("not json", "not valid JSON"),
        ("[1, 2]", "bad message"),
        ("\"string\"", "bad message"),
        ("42", "bad message"),
        ("{}", "needs \"type\""),
        (r#"{"channel": "lobby"}"#, "channel must be"),
        (r#"{"type": "text", "data": {"text": 5}}"#, "bad message"),
        (r#"{"type": "video", "data": {}}"#, "type must be"),
    ];
    for (frame, reason) in table {
        a.conn.send_text(frame).await?;
        let error = recv_error(&mut a.conn).await?;
        assert!(error.contains(reason), "{frame}: {error}");
    }
    a.conn.send(Message::Binary(Bytes::from_static(&[0xff, 0xfe, 0]))).await?;
    assert!(recv_error(&mut a.conn).await?.contains("binary"));
    b.conn.expect_silence(QUIET).await?;
    a.conn.send_json(&text("still here")).await?;
    assert_eq!(b.conn.recv_json().await?["data"]["text"], "still here");
    Ok(())
}

#[tokio::test]
async fn scheduled_messages_reach_everyone_in_the_channel_later() -> Result<()> {
    let server = start(&[]).await?;
    let mut a = connect(&server).await?;
    let mut b = connect(&server).await?;
    // The wire form, with a digit string as the 2018 client sent it.
    a.conn
        .send_json(
            &json!({"type": "text", "data": {"schedule": {"seconds": "1"}, "text": "later"}}),
        )
        .await?;
    // A pending schedule never delays the sender's next messages.
    a.conn.send_json(&text("now")).await?;
    assert_eq!(b.conn.recv_json().await?["data"]["text"], "now");
    let expected = json!({"author": a.id, "type": "text", "data": {"text": "later"}});
    assert_eq!(common::lesson_fields(b.conn.recv_json().await?), expected);
    assert_eq!(
        common::lesson_fields(a.conn.recv_json().await?),
        expected,
        "the sender gets it too"
    );

    // The server reads /schedule itself for clients that do not.
    b.conn.send_json(&text("/schedule seconds 1 message from the terminal")).await?;
    let expected = json!({"author": b.id, "type": "text", "data": {"text": "from the terminal"}});
    assert_eq!(common::lesson_fields(a.conn.recv_json().await?), expected);
    assert_eq!(common::lesson_fields(b.conn.recv_json().await?), expected);
    Ok(())
}

#[tokio::test]
async fn bad_schedules_are_refused_and_never_delivered() -> Result<()> {
    let server = start(&[]).await?;
    let mut a = connect(&server).await?;
    let mut b = connect(&server).await?;
    let schedules = [
        json!("abc"),
        json!(-1),
        json!({"hours": 1.5}),
        json!({"days": 1}),
        json!({}),
        json!({"seconds": "x"}),
    ];
    for schedule in schedules {
        a.conn
            .send_json(&json!({"type": "text", "data": {"schedule": schedule, "text": "no"}}))
            .await?;
        let error = recv_error(&mut a.conn).await?;
        assert!(error.starts_with("schedule: "), "{schedule}: {error}");
    }
    a.conn.send_json(&text("/schedule days 1 message no")).await?;
    let error = recv_error(&mut a.conn).await?;
    assert!(error.starts_with("schedule: unknown unit 'days'"), "{error}");
    assert!(error.contains(client::schedule::EXAMPLE), "{error}");
    b.conn.expect_silence(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn random_rooms_pair_two_and_keep_the_feed_apart() -> Result<()> {
    let server = start(&[]).await?;
    let mut a = connect(&server).await?;
    let mut b = connect(&server).await?;
    let mut feed = connect(&server).await?;
    let waiting = json!({"channel": "random", "status": "waiting"});
    let paired = json!({"channel": "random", "status": "paired"});

    a.conn.send_json(&json!({"channel": "random"})).await?;
    assert_eq!(a.conn.recv_json().await?, waiting);
    // Asking again changes nothing and answers the status.
    a.conn.send_json(&json!({"channel": "random"})).await?;
    assert_eq!(a.conn.recv_json().await?, waiting);
    b.conn.send_json(&json!({"channel": "random"})).await?;
    // Each is told it is paired, then who the other is (presence).
    let joined = |id: &str| json!({"presence": {"joined": {"id": id}}});
    let left = |id: &str| json!({"presence": {"left": {"id": id}}});
    assert_eq!(a.conn.recv_json().await?, paired);
    assert_eq!(a.conn.recv_json().await?, joined(&b.id));
    assert_eq!(b.conn.recv_json().await?, paired);
    assert_eq!(b.conn.recv_json().await?, joined(&a.id));
    b.conn.send_json(&json!({"channel": "random"})).await?;
    assert_eq!(b.conn.recv_json().await?, paired);
    let h = health(&server).await?;
    assert_eq!(
        (h["feed"].as_u64(), h["rooms"].as_u64(), h["waiting"].as_u64()),
        (Some(1), Some(1), Some(0))
    );

    // In a room, only the partner hears; the feed never does, and the other way round.
    a.conn.send_json(&text("psst")).await?;
    assert_eq!(
        common::lesson_fields(b.conn.recv_json().await?),
        json!({"author": a.id, "type": "text", "data": {"text": "psst"}})
    );
    feed.conn.send_json(&text("public")).await?;
    feed.conn.expect_silence(QUIET).await?;
    a.conn.expect_silence(QUIET).await?;
    b.conn.expect_silence(Duration::from_millis(10)).await?;

    // A scheduled message goes to the room it was sent in.
    a.conn.send_json(&text("/schedule seconds 1 message in the room")).await?;
    assert_eq!(b.conn.recv_json().await?["data"]["text"], "in the room");
    assert_eq!(a.conn.recv_json().await?["data"]["text"], "in the room");
    feed.conn.expect_silence(QUIET).await?;

    // Leaving frees the place: the partner is told and waits for the next seeker.
    a.conn.send_json(&json!({"channel": "feed"})).await?;
    assert_eq!(a.conn.recv_json().await?, json!({"channel": "feed", "status": "joined"}));
    assert_eq!(b.conn.recv_json().await?, left(&a.id));
    assert_eq!(b.conn.recv_json().await?, json!({"channel": "random", "status": "partner_left"}));
    feed.conn.send_json(&text("back")).await?;
    assert_eq!(a.conn.recv_json().await?["data"]["text"], "back");
    b.conn.expect_silence(QUIET).await?;
    feed.conn.send_json(&json!({"channel": "random"})).await?;
    assert_eq!(feed.conn.recv_json().await?, paired);
    assert_eq!(feed.conn.recv_json().await?, joined(&b.id));
    assert_eq!(b.conn.recv_json().await?, paired);
    assert_eq!(b.conn.recv_json().await?, joined(&feed.id));

    // Disconnecting frees it too.
    let feed_id = feed.id.clone();
    feed.conn.close().await?;
    assert_eq!(b.conn.recv_json().await?, left(&feed_id));
    assert_eq!(b.conn.recv_json().await?, json!({"channel": "random", "status": "partner_left"}));
    // Joining the feed from the feed still answers.
    a.conn.send_json(&json!({"channel": "feed"})).await?;
    assert_eq!(a.conn.recv_json().await?, json!({"channel": "feed", "status": "joined"}));
    Ok(())
}

#[tokio::test]
async fn http_routes_serve_the_page_the_socket_and_health() -> Result<()> {
    let server = start(&[]).await?;
    let (status, body) = http_get(&server, "/").await?;
    assert_eq!(status, 200);
    assert!(body.to_lowercase().contains("<html"), "{body:.200}");
    assert_eq!(http_get(&server, "/nothing-here").await?.0, 404);

    let mut a = connect_url(&format!("ws://127.0.0.1:{}/ws", server.port())).await?;
    let mut b = connect(&server).await?;
    b.conn.send_json(&text("across endpoints")).await?;
    assert_eq!(a.conn.recv_json().await?["data"]["text"], "across endpoints");

    let h = health(&server).await?;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["connections"], 2);
    assert_eq!(h["feed"], 2);
    assert_eq!(h["rooms"], 0);
    a.conn.close().await?;
    wait_health(&server, |h| h["connections"] == 1 && h["feed"] == 1).await?;
    Ok(())
}

#[tokio::test]
async fn pings_are_answered_and_a_close_is_answered() -> Result<()> {
    let server = start(&[]).await?;
    let a = connect(&server).await?;
    let mut socket = a.conn.into_socket();
    use futures::{SinkExt, StreamExt};
    socket.send(Message::Ping(Bytes::from_static(b"hello"))).await?;
    let pong = tokio::time::timeout(Duration::from_secs(10), socket.next()).await?;
    assert!(matches!(pong, Some(Ok(Message::Pong(ref data))) if &data[..] == b"hello"), "{pong:?}");
    let mut conn_b = Connection::connect(&server.ws_url()).await?;
    conn_b.recv_id().await?;
    conn_b.close().await?; // waits for the server's answering close
    Ok(())
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_and_a_silent_one_is_dropped() -> Result<()> {
    let server = start(&["--ping-interval-secs", "1", "--ping-timeout-secs", "2"]).await?;
    let mut alive = connect(&server).await?;
    // A raw socket that is never polled never answers the server's pings.
    let (silent, _) = tokio_tungstenite::connect_async(server.ws_url()).await?;
    wait_health(&server, |h| h["connections"] == 2).await?;
    // Reading answers pings: three seconds is past the timeout.
    alive.conn.expect_silence(Duration::from_secs(3)).await?;
    wait_health(&server, |h| h["connections"] == 1).await?;
    drop(silent);
    let mut other = connect(&server).await?;
    other.conn.send_json(&text("still connected?")).await?;
    assert_eq!(alive.conn.recv_json().await?["data"]["text"], "still connected?");
    Ok(())
}
