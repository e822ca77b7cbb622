//! HTTP: the web page at `GET /`, the WebSocket at `/` and `/ws`, and `GET /healthz`.
//!
//! The WebSocket upgrade is done here rather than with `warp::ws()`: warp's `Ws` does not let
//! us size tungstenite's read buffer, whose 128 KiB default (zero-filled) would be most of an
//! idle connection's memory. The handshake itself is a few headers; hyper hands over the
//! connection, and tokio-tungstenite runs on it with our configuration.

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::{Response, StatusCode};
use warp::reply::Reply;

use client::web::{DefaultServer, page};

use crate::connections::Slot;
use crate::{Server, session};

/// Bytes read from the socket at a time; a larger frame grows the buffer while it arrives.
const READ_BUFFER_BYTES: usize = 1024;

/// Outbound bytes gathered before a write is issued (a flush writes them anyway).
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// Every route of the server.
pub fn routes(server: Arc<Server>) -> BoxedFilter<(warp::reply::Response,)> {
    let ws_server = server.clone();
    let websocket = warp::get()
        .and(warp::path::end().or(warp::path!("ws")).unify())
        .and(warp::header::headers_cloned())
        .and_then(|headers: HeaderMap| async move {
            websocket_key(&headers).ok_or_else(warp::reject::not_found)
        })
        .and(warp::ext::optional::<OnUpgrade>())
        .map(move |key: String, on_upgrade: Option<OnUpgrade>| {
            upgrade(ws_server.clone(), &key, on_upgrade)
        });
    let health = warp::get()
        .and(warp::path!("healthz"))
        .map(move || warp::reply::json(&Health::of(&server)).into_response());
    websocket.or(health).unify().or(page(DefaultServer::SameOrigin)).unify().boxed()
}

/// The client's `Sec-WebSocket-Key`, if this is a WebSocket upgrade request we can serve.
fn websocket_key(headers: &HeaderMap) -> Option<String> {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| value.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    if !(has(header::CONNECTION, "upgrade")
        && has(header::UPGRADE, "websocket")
        && has(header::SEC_WEBSOCKET_VERSION, "13"))
    {
        return None;
    }
    headers.get(header::SEC_WEBSOCKET_KEY)?.to_str().ok().map(str::to_owned)
}

/// Answers `101 Switching Protocols` and starts a session on the upgraded connection, or `503`
/// when every connection slot is taken.
fn upgrade(server: Arc<Server>, key: &str, on_upgrade: Option<OnUpgrade>) -> warp::reply::Response {
    let Some(on_upgrade) = on_upgrade else {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "this connection cannot be upgraded");
    };
    let Some(slot) = server.connections.reserve() else {
        tracing::warn!("refused a connection: --max-connections reached");
        return status(StatusCode::SERVICE_UNAVAILABLE, "too many connections, try again later");
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_frame_size(Some(server.limits.max_frame_bytes))
        .max_message_size(Some(server.limits.max_frame_bytes));
    tokio::spawn(async move {
        let _slot: Slot = slot; // held for as long as the session runs
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                session::run(server, socket).await;
            }
            Err(error) => tracing::debug!(%error, "upgrade failed"),
        }
    });
    let mut response = Response::new(warp::hyper::body::Bytes::new()).into_response();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

fn status(code: StatusCode, text: &'static str) -> warp::reply::Response {
    warp::reply::with_status(text, code).into_response()
}

/// `GET /healthz`.
#[derive(Serialize)]
struct Health {
    status: &'static str,
    /// Open WebSocket connections.
    connections: usize,
    /// Users in the feed.
    feed: usize,
    /// Rooms, with one user waiting or two paired.
    rooms: usize,
    /// Rooms with one user waiting for a partner.
    waiting: usize,
    /// Scheduled messages not yet delivered.
    scheduled: usize,
}

impl Health {
    fn of(server: &Server) -> Health {
        let census = server.hub.census();
        Health {
            status: "ok",
            connections: server.connections.open(),
            feed: census.feed,
            rooms: census.rooms,
            waiting: census.waiting,
            scheduled: server.scheduler.pending(),
        }
    }
}
