//! Lesson 02: broadcast. Every text frame goes to every *other* connected user.
//!
//! To reach other users, a connection must know who else is connected: a registry of users,
//! shared by every connection, that each one joins when it connects and leaves when it goes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use warp::Filter;
use warp::ws::{Message, WebSocket, Ws};

/// Every connected user, by a number. Each entry is the sending end of a channel whose
/// receiving end a task drains into that user's socket: a broadcast only *queues* the
/// message, so one slow connection never holds up the others. (The queue is unbounded to keep
/// the lesson short; the finished `server` bounds it and drops clients that stop reading.)
///
/// The lock is a plain `std::sync::Mutex`: it is only ever held for a few instructions and
/// never across an `.await`, which is exactly when a blocking mutex is the right tool.
type Users = Arc<Mutex<HashMap<usize, mpsc::UnboundedSender<Message>>>>;

static NEXT_USER_ID: AtomicUsize = AtomicUsize::new(1);

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
    let id = NEXT_USER_ID.fetch_add(1, Ordering::Relaxed);

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
    users.lock().unwrap().insert(id, tx);

    // `next()` waits for the next frame; it gives `None` once the client has gone away.
    while let Some(Ok(message)) = ws_rx.next().await {
        // Chat is text. Pings, pongs and close frames are answered by warp itself.
        if message.is_text() {
            broadcast(&users, id, message);
        }
    }

    // Forget the user, or every later broadcast would queue messages nobody reads. Dropping
    // its sender also ends its writer task.
    users.lock().unwrap().remove(&id);
}

/// Queues `message` for every user but its sender (the sender's page shows it already).
fn broadcast(users: &Users, sender: usize, message: Message) {
    for (&id, tx) in users.lock().unwrap().iter() {
        if id != sender {
            // This fails only if that user's writer has stopped; its reader cleans up.
            let _ = tx.send(message.clone());
        }
    }
}
