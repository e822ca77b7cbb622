//! Lesson 03: identity. Each connection gets an id, and every message says who wrote it.
//!
//! The server hands each connection a fresh random id (a UUID) in its first frame,
//! `{"id": "..."}`, and stamps that id as `author` on everything the connection sends. From
//! here on every frame is one JSON object, so the server has to read what it relays.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use uuid::Uuid;
use warp::Filter;
use warp::ws::{Message, WebSocket, Ws};

/// Every connected user, by id. Each entry is the sending end of a channel whose
/// receiving end a task drains into that user's socket: a broadcast only *queues* the
/// message, so one slow connection never holds up the others. (The queue is unbounded to keep
/// the lesson short; the finished `server` bounds it and drops clients that stop reading.)
///
/// The lock is a plain `std::sync::Mutex`: it is only ever held for a few instructions and
/// never across an `.await`, which is exactly when a blocking mutex is the right tool.
type Users = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>>;

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
        registry.insert(id.clone(), tx.clone());
    }

    // `next()` waits for the next frame; it gives `None` once the client has gone away.
    while let Some(Ok(message)) = ws_rx.next().await {
        // Chat is text. Pings, pongs and close frames are answered by warp itself.
        let Ok(text) = message.to_str() else { continue };
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(mut chat)) => {
                // Never trust the author a client claims: the server knows who sent this.
                chat.insert("author".into(), json!(id));
                broadcast(&users, &id, Message::text(Value::Object(chat).to_string()));
            }
            // A mistake in one frame is worth an explanation, not a dropped connection.
            Ok(_) => send_error(&tx, "a message must be a JSON object"),
            Err(error) => send_error(&tx, &format!("not valid JSON: {error}")),
        }
    }

    // Forget the user, or every later broadcast would queue messages nobody reads. Dropping
    // its sender also ends its writer task.
    users.lock().unwrap().remove(&id);
}

/// Queues `message` for every user but its sender (the sender's page shows it already).
fn broadcast(users: &Users, sender: &str, message: Message) {
    for (id, tx) in users.lock().unwrap().iter() {
        if id != sender {
            // This fails only if that user's writer has stopped; its reader cleans up.
            let _ = tx.send(message.clone());
        }
    }
}

/// Tells only this user what was wrong with its frame.
fn send_error(tx: &mpsc::UnboundedSender<Message>, reason: &str) {
    let _ = tx.send(Message::text(json!({"error": reason}).to_string()));
}
