//! Lesson 05: random 1:1 chat rooms.
//!
//! `{"channel": "random"}` takes a user out of the feed into a room for two: the room of
//! someone waiting alone, or a new room to wait in. `{"channel": "feed"}` brings them back.
//! Every message now goes to the sender's *channel* (the feed, or one room), never beyond it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use uuid::Uuid;
use warp::Filter;
use warp::ws::{Message, WebSocket, Ws};

/// Every user, by id, and the rooms. Each user's entry is the sending end of a channel whose
/// receiving end a task drains into that user's socket: a broadcast only *queues* the
/// message, so one slow connection never holds up the others. (The queue is unbounded to keep
/// the lesson short; the finished `server` bounds it and drops clients that stop reading.)
/// A room holds one user waiting for a partner, or two paired; a user in no room is in the feed.
/// Pairing changes all of it at once, so it lives under one lock, never held across an `.await`.
#[derive(Default)]
struct Hub {
    users: HashMap<String, mpsc::UnboundedSender<Message>>,
    rooms: BTreeMap<usize, Vec<String>>,
    room_of: HashMap<String, usize>,
    next_room: usize,
}

type Users = Arc<Mutex<Hub>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // `path::end()` matches only `/`; any other path is rejected, and a request that every
    // filter rejects becomes a 404.
    let hello =
        warp::path::end().and(warp::get()).map(|| warp::reply::json(&json!({"hello": "world"})));

    // Each connection gets its own handle (an `Arc` clone) to the one registry.
    let users = Users::default();
    let chat = warp::path::end().and(warp::ws()).map(move |ws: Ws| {
        let users = users.clone();
        ws.on_upgrade(move |socket| user_connected(socket, users))
    });

    // Try the WebSocket route first: a plain `GET /` fails `warp::ws()` and falls through
    // to `hello`.
    let routes = chat.or(hello);

    // Bind first, then print the address: with PORT=0 the system picks a free port, and
    // tests (and you) learn which one from this first line. A taken port is explained in one line.
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).await.unwrap_or_else(|error| {
        eprintln!("cannot listen on port {port} ({error}): stop the other server or use PORT=8001");
        std::process::exit(1)
    });
    println!("listening on http://{}", listener.local_addr()?);
    warp::serve(routes).incoming(listener).run().await;
    Ok(())
}

/// Runs for as long as one client stays connected.
async fn user_connected(socket: WebSocket, users: Users) {
    // The 2018 workshop derived the id from the client's IP address, so two tabs on one
    // machine (or everyone behind one Wi-Fi router) shared an id and saw each other's messages
    // as their own. A random UUID per connection is unique without asking anyone.
    let id = Uuid::new_v4().simple().to_string();

    // A WebSocket is a Stream of incoming frames and a Sink for outgoing ones; splitting it
    // gives us the two halves separately.
    let (mut ws_tx, mut ws_rx) = socket.split();

    // The writer: a task of its own that forwards this user's queue into its socket.
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if ws_tx.send(message).await.is_err() {
                break; // the client is gone; the reader below notices too
            }
        }
    });
    // Queue the id and register under one lock: the id is then the first frame the client
    // gets, and a client that has its id is sure to receive every broadcast from then on.
    {
        let mut registry = users.lock().unwrap();
        let _ = tx.send(Message::text(json!({"id": id}).to_string()));
        registry.users.insert(id.clone(), tx.clone());
    }

    // `next()` waits for the next frame; it gives `None` once the client has gone away.
    while let Some(Ok(message)) = ws_rx.next().await {
        // Chat is text. Pings, pongs and close frames are answered by warp itself.
        let Ok(text) = message.to_str() else { continue };
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(chat)) if chat.contains_key("channel") => {
                let mut hub = users.lock().unwrap();
                match chat["channel"].as_str() {
                    Some("random") => join_random(&mut hub, &id),
                    Some("feed") => {
                        leave_room(&mut hub, &id);
                        notify(&hub, &id, "feed", "joined");
                    }
                    _ => send_error(&tx, "channel must be \"random\" or \"feed\""),
                }
            }
            Ok(Value::Object(mut chat)) => {
                // Never trust the author a client claims: the server knows who sent this.
                chat.insert("author".into(), json!(id));
                let schedule = chat
                    .get_mut("data")
                    .and_then(Value::as_object_mut)
                    .and_then(|data| data.remove("schedule"));
                let message = Message::text(Value::Object(chat).to_string());
                // The channel the message was sent in, now: a scheduled message goes there.
                let room = users.lock().unwrap().room_of.get(&id).copied();
                match schedule.as_ref().map(schedule_delay) {
                    None => broadcast(&users.lock().unwrap(), room, Some(&id), message),
                    // Wait in a task of its own: sleeping here would stop this loop reading
                    // the sender's next messages for hours (the 2018 server did just that).
                    Some(Ok(delay)) => {
                        let users = users.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            broadcast(&users.lock().unwrap(), room, None, message);
                        });
                    }
                    Some(Err(reason)) => send_error(&tx, &format!("schedule: {reason}")),
                }
            }
            // A mistake in one frame is worth an explanation, not a dropped connection.
            Ok(_) => send_error(&tx, "a message must be a JSON object"),
            Err(error) => send_error(&tx, &format!("not valid JSON: {error}")),
        }
    }

    // Forget the user, or every later broadcast would queue messages nobody reads. Dropping
    // its sender also ends its writer task.
    let mut hub = users.lock().unwrap();
    leave_room(&mut hub, &id);
    hub.users.remove(&id);
}

/// Queues `message` for every user but `skip` (a sender's page shows its message already), in
/// `room` only (`None`: the feed): the feed and the rooms never see each other's messages.
fn broadcast(hub: &Hub, room: Option<usize>, skip: Option<&str>, message: Message) {
    for (id, tx) in &hub.users {
        if hub.room_of.get(id).copied() == room && Some(id.as_str()) != skip {
            // This fails only if that user's writer has stopped; its reader cleans up.
            let _ = tx.send(message.clone());
        }
    }
}

/// Pairs `id` with someone waiting alone, or opens a room for `id` to wait in.
fn join_random(hub: &mut Hub, id: &str) {
    if let Some(&room) = hub.room_of.get(id) {
        let status = if hub.rooms[&room].len() == 2 { "paired" } else { "waiting" };
        return notify(hub, id, "random", status); // already in a room: only say where
    }
    let waiting = hub.rooms.iter().find(|(_, members)| members.len() == 1);
    let room = waiting.map_or(hub.next_room + 1, |(&room, _)| room);
    hub.next_room = hub.next_room.max(room); // a new room takes the next number: none is reused
    hub.room_of.insert(id.to_owned(), room);
    let members = hub.rooms.entry(room).or_default();
    members.push(id.to_owned());
    let status = if members.len() == 2 { "paired" } else { "waiting" };
    for member in members.clone() {
        notify(hub, &member, "random", status);
    }
}

/// Takes `id` out of its room into the feed; a partner left behind waits for the next seeker.
fn leave_room(hub: &mut Hub, id: &str) {
    let Some(room) = hub.room_of.remove(id) else { return };
    let members = hub.rooms.get_mut(&room).unwrap();
    members.retain(|member| member != id);
    match members.first().cloned() {
        Some(partner) => notify(hub, &partner, "random", "partner_left"),
        None => drop(hub.rooms.remove(&room)),
    }
}

fn notify(hub: &Hub, id: &str, channel: &str, status: &str) {
    let notice = json!({"channel": channel, "status": status}).to_string();
    let _ = hub.users[id].send(Message::text(notice));
}

/// Tells only this user what was wrong with its frame.
fn send_error(tx: &mpsc::UnboundedSender<Message>, reason: &str) {
    let _ = tx.send(Message::text(json!({"error": reason}).to_string()));
}

/// Reads a schedule such as `{"hours": 1, "seconds": "9"}` into a delay: hours, minutes or
/// seconds, at least one, each a whole number or (as the 2018 client sent them) a string of
/// digits. Anything else is refused with a reason.
fn schedule_delay(schedule: &Value) -> Result<Duration, String> {
    let units = schedule.as_object().filter(|units| !units.is_empty());
    let units = units.ok_or("expected at least one unit, as in {\"seconds\": 9}")?;
    let mut seconds: u64 = 0;
    for (unit, value) in units {
        let scale = match unit.as_str() {
            "hours" => 3600,
            "minutes" => 60,
            "seconds" => 1,
            _ => return Err(format!("unknown unit '{unit}'")),
        };
        let count = match value {
            Value::String(text) if text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok(),
            _ => value.as_u64(), // None for -1, 1.5, true, null, ...
        };
        // Checked arithmetic: a client can send numbers big enough to overflow.
        seconds = (count.and_then(|count| count.checked_mul(scale)))
            .and_then(|delay| delay.checked_add(seconds))
            .ok_or(format!("{unit}: {value} is not a whole number of a sane size"))?;
    }
    Ok(Duration::from_secs(seconds))
}
