//! Taking a message back (`{"delete": SEQ}`), tested with real processes and sockets: the
//! author's own message only, told to everyone in its channel, gone from history and resume,
//! and still gone after a restart.

mod common;

use anyhow::Result;
use client::Connection;
use client::message::{join, text};
use common::{connect, database_in, pair, recv_error, recv_json, start, start_with, terminate};
use serde_json::{Value, json};

/// Sends `line` asking for its seq (`"ack": true`); returns the seq.
async fn say_with_ack(conn: &mut Connection, line: &str) -> Result<u64> {
    let mut frame = text(line);
    frame["ack"] = json!(true);
    conn.send_json(&frame).await?;
    let sent = recv_json(conn).await?;
    sent["sent"]["seq"].as_u64().ok_or_else(|| anyhow::anyhow!("expected a receipt, got {sent}"))
}

fn deleted(channel: &str, seq: u64) -> Value {
    json!({"deleted": {"channel": channel, "seq": seq}})
}

#[tokio::test]
async fn a_guest_takes_back_its_own_message_and_only_its_own() -> Result<()> {
    let server = start(&["--history", "10"]).await?;
    let mut ada = connect(&server).await?;
    let mut bob = connect(&server).await?;
    let one = say_with_ack(&mut ada.conn, "one").await?;
    assert_eq!(recv_json(&mut bob.conn).await?["seq"], one);
    let two = say_with_ack(&mut bob.conn, "two").await?;
    assert_eq!(recv_json(&mut ada.conn).await?["data"]["text"], "two");

    bob.conn.send_json(&json!({"delete": one})).await?;
    assert_eq!(recv_error(&mut bob.conn).await?, format!("delete: message {one} is not yours"));
    bob.conn.send_json(&json!({"delete": 999})).await?;
    assert_eq!(recv_error(&mut bob.conn).await?, "delete: there is no message 999 in this channel");

    ada.conn.send_json(&json!({"delete": one})).await?;
    assert_eq!(recv_json(&mut ada.conn).await?, deleted("feed", one));
    assert_eq!(recv_json(&mut bob.conn).await?, deleted("feed", one));
    ada.conn.send_json(&json!({"delete": one})).await?;
    assert!(recv_error(&mut ada.conn).await?.starts_with("delete: there is no message"));

    // A newcomer's history and a resume no longer have it.
    let mut newcomer = connect(&server).await?;
    let history = recv_json(&mut newcomer.conn).await?;
    assert_eq!((history["seq"].as_u64(), history["history"].as_bool()), (Some(two), Some(true)));
    let (mut resumed, _) = Connection::join(&format!("{}?after=0", server.ws_url())).await?;
    assert_eq!(recv_json(&mut resumed).await?["seq"], two);
    // Nothing else came: the next frame is the next message.
    bob.conn.send_json(&text("three")).await?;
    assert_eq!(recv_json(&mut newcomer.conn).await?["data"]["text"], "three");
    assert_eq!(recv_json(&mut resumed).await?["data"]["text"], "three");
    Ok(())
}

#[tokio::test]
async fn in_a_random_room_the_partner_is_told_and_the_feed_hears_nothing() -> Result<()> {
    let server = start(&[]).await?;
    let mut ada = connect(&server).await?;
    let mut bob = connect(&server).await?;
    let mut feed = connect(&server).await?;
    pair(&mut ada, &mut bob).await?;
    let seq = say_with_ack(&mut ada.conn, "psst").await?;
    assert_eq!(recv_json(&mut bob.conn).await?["seq"], seq);
    ada.conn.send_json(&json!({"delete": seq})).await?;
    assert_eq!(recv_json(&mut bob.conn).await?, deleted("random", seq));
    assert_eq!(recv_json(&mut ada.conn).await?, deleted("random", seq));
    // The feed's guests get no new frame: the next one is the next feed message.
    bob.conn.send_json(&join("feed")).await?;
    recv_json(&mut bob.conn).await?;
    bob.conn.send_json(&text("back")).await?;
    assert_eq!(recv_json(&mut feed.conn).await?["data"]["text"], "back");
    Ok(())
}

#[tokio::test]
async fn a_deleted_message_stays_deleted_after_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = database_in(&dir);
    let mut server = start_with(&path, 0, &[]).await?;
    let mut ada = connect(&server).await?;
    let one = say_with_ack(&mut ada.conn, "one").await?;
    let two = say_with_ack(&mut ada.conn, "two").await?;
    ada.conn.send_json(&json!({"delete": one})).await?;
    assert_eq!(recv_json(&mut ada.conn).await?, deleted("feed", one));
    terminate(&mut server).await?;

    let server = start_with(&path, 0, &[]).await?;
    let mut newcomer = connect(&server).await?;
    assert_eq!(recv_json(&mut newcomer.conn).await?["seq"], two);
    // Not from the store either, and its seq is not given again.
    newcomer.conn.send_json(&json!({"history": {"before": two + 1}})).await?;
    let page = recv_json(&mut newcomer.conn).await?;
    assert_eq!(page["history"]["messages"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(say_with_ack(&mut newcomer.conn, "three").await?, two + 1);
    Ok(())
}
