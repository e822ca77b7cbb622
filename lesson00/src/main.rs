//! Lesson 00: an HTTP server that answers `GET /` with `{"hello":"world"}`.
//!
//! warp builds a server out of *filters*: small pieces that each look at a request and
//! either extract something from it or reject it. Combine them with `and` / `or`, finish
//! with `map` to turn what they extracted into a reply, and hand the whole thing to
//! `warp::serve`.

use serde_json::json;
use tokio::net::TcpListener;
use warp::Filter;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // `path::end()` matches only `/`; any other path is rejected, and a request that every
    // filter rejects becomes a 404.
    let hello =
        warp::path::end().and(warp::get()).map(|| warp::reply::json(&json!({"hello": "world"})));

    let routes = hello;

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
