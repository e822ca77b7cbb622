//! Lesson 01: a WebSocket echo server.
//!
//! A WebSocket starts life as an ordinary HTTP request carrying `Upgrade: websocket`. The
//! server answers `101 Switching Protocols`, and from then on the same TCP connection carries
//! WebSocket frames in both directions, for as long as either side wants.

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpListener;
use warp::Filter;
use warp::ws::{WebSocket, Ws};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // `path::end()` matches only `/`; any other path is rejected, and a request that every
    // filter rejects becomes a 404.
    let hello =
        warp::path::end().and(warp::get()).map(|| warp::reply::json(&json!({"hello": "world"})));

    // `warp::ws()` matches only an upgrade request; `on_upgrade` answers 101 and, once the
    // connection has switched, runs `user_connected` with the WebSocket.
    let chat = warp::path::end().and(warp::ws()).map(|ws: Ws| ws.on_upgrade(user_connected));

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
async fn user_connected(socket: WebSocket) {
    // A WebSocket is a Stream of incoming frames and a Sink for outgoing ones; splitting it
    // gives us the two halves separately.
    let (mut ws_tx, mut ws_rx) = socket.split();

    // `next()` waits for the next frame; it gives `None` once the client has gone away.
    while let Some(Ok(message)) = ws_rx.next().await {
        // Chat is text. Pings, pongs and close frames are answered by warp itself.
        if message.is_text() && ws_tx.send(message).await.is_err() {
            break;
        }
    }
}
