//! Taking a message back (`{"delete": SEQ}`), tested with real processes and sockets: the
//! author's own message only, told to everyone in its channel, gone from history and resume,
//! and still gone after a restart; one older than the server holds in memory, from the store.

mod common;

use anyhow::Result;
use client::Connection;
use client::message::{join, text};
use common::api::{account, account_tab, enter_room, post};
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

/// The seqs of a `{"history": {"before": ...}}` page.
fn page_seqs(page: &Value) -> Vec<u64> {
    let messages = page["history"]["messages"].as_array().cloned().unwrap_or_default();
    messages.iter().filter_map(|message| message["seq"].as_u64()).collect()
}

/// Memory holds the newest 2 (`--history 2 --resume-max 2`): older ones are in the store.
const SMALL_MEMORY: [&str; 4] = ["--history", "2", "--resume-max", "2"];

#[tokio::test]
async fn a_message_older_than_memory_holds_is_taken_back_from_the_store() -> Result<()> {
    let server = start(&SMALL_MEMORY).await?;
    let mut ada = connect(&server).await?;
    let mut bob = connect(&server).await?;
    let bobs = say_with_ack(&mut bob.conn, "from bob").await?;
    recv_json(&mut ada.conn).await?;
    let mut adas = Vec::new();
    for n in 0..5 {
        adas.push(say_with_ack(&mut ada.conn, &format!("from ada {n}")).await?);
        recv_json(&mut bob.conn).await?;
    }
    let (oldest, second) = (adas[0], adas[1]);

    ada.conn.send_json(&json!({"delete": oldest})).await?;
    assert_eq!(recv_json(&mut ada.conn).await?, deleted("feed", oldest));
    assert_eq!(recv_json(&mut bob.conn).await?, deleted("feed", oldest));
    ada.conn.send_json(&json!({"delete": oldest})).await?;
    let unknown = format!("delete: there is no message {oldest} in this channel");
    assert_eq!(recv_error(&mut ada.conn).await?, unknown, "only once");
    ada.conn.send_json(&json!({"delete": bobs})).await?;
    assert_eq!(recv_error(&mut ada.conn).await?, format!("delete: message {bobs} is not yours"));

    // The store no longer has it: a page shows the rest.
    let newest = adas[4];
    bob.conn.send_json(&json!({"history": {"before": newest + 1, "limit": 10}})).await?;
    let page = recv_json(&mut bob.conn).await?;
    assert_eq!(page_seqs(&page), [bobs, second, adas[2], adas[3], newest], "{page}");
    Ok(())
}

#[tokio::test]
async fn an_old_message_in_a_named_room_is_taken_back_after_a_restart_and_stays_gone() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let path = database_in(&dir);
    let mut server = start_with(&path, 0, &SMALL_MEMORY).await?;
    let (cookie, _) = account(&server, "ada").await?;
    let room = json!({"name": "old"});
    let created = post(&server, "/api/rooms", &[("Cookie", &cookie)], &room).await?;
    assert_eq!(created.status, 201);
    let mut guest = connect(&server).await?;
    enter_room(&mut guest.conn, "old").await?;
    let guests = say_with_ack(&mut guest.conn, "from a guest").await?;
    let mut ada = account_tab(&server, &cookie).await?;
    enter_room(&mut ada, "old").await?;
    recv_json(&mut ada).await?; // the guest's message, as history
    let mut adas = Vec::new();
    for n in 0..3 {
        adas.push(say_with_ack(&mut ada, &format!("from ada {n}")).await?);
    }
    terminate(&mut server).await?;

    // After a restart, memory holds the newest 2: ada's first is only in the file.
    let mut server = start_with(&path, 0, &SMALL_MEMORY).await?;
    let mut ada = account_tab(&server, &cookie).await?;
    let mut other = connect(&server).await?;
    for conn in [&mut ada, &mut other.conn] {
        enter_room(conn, "old").await?;
        for _ in 0..2 {
            assert_eq!(recv_json(conn).await?["history"], true);
        }
    }
    recv_json(&mut ada).await?; // the other joined
    ada.send_json(&json!({"delete": adas[0]})).await?;
    assert_eq!(recv_json(&mut ada).await?, deleted("old", adas[0]));
    assert_eq!(recv_json(&mut other.conn).await?, deleted("old", adas[0]));
    ada.send_json(&json!({"delete": guests})).await?;
    assert_eq!(recv_error(&mut ada).await?, format!("delete: message {guests} is not yours"));
    terminate(&mut server).await?;

    let server = start_with(&path, 0, &SMALL_MEMORY).await?;
    let mut ada = account_tab(&server, &cookie).await?;
    enter_room(&mut ada, "old").await?;
    for _ in 0..2 {
        recv_json(&mut ada).await?;
    }
    ada.send_json(&json!({"delete": adas[0]})).await?;
    let unknown = format!("delete: there is no message {} in this channel", adas[0]);
    assert_eq!(recv_error(&mut ada).await?, unknown, "deleted for good");
    ada.send_json(&json!({"history": {"before": adas[2] + 1}})).await?;
    let page = recv_json(&mut ada).await?;
    assert_eq!(page_seqs(&page), [guests, adas[1], adas[2]], "{page}");
    Ok(())
}
