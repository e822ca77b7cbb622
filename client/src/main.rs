//! `cargo run -p client`: serves the chat page on http://localhost:3000 (port from `PORT`).
//! The page talks to a lesson on port 8000 unless told otherwise.

use std::net::{Ipv4Addr, SocketAddr};

use client::web::{self, DefaultServer};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 3000,
    };
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await?;
    println!("listening on http://{}", listener.local_addr()?);
    warp::serve(web::page(DefaultServer::Port(8000))).incoming(listener).run().await;
    Ok(())
}
