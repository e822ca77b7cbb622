//! HTTP: the web page at `GET /`, the WebSocket at `/` and `/ws`, `GET /healthz` and
//! `GET /metrics`; `HEAD` wherever `GET` works.
//!
//! The WebSocket upgrade is done here rather than with `warp::ws()`: warp's `Ws` does not let
//! us size tungstenite's read buffer, whose 128 KiB default (zero-filled) would be most of an
//! idle connection's memory. The handshake itself is a few headers, checked here as RFC 6455
//! asks (a bad one gets `400` with the reason); hyper hands over the connection, and
//! tokio-tungstenite runs on it with our configuration.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::{Response, StatusCode, Version};
use warp::reply::Reply;

use client::web::{DefaultServer, page};

use crate::api::{self, ApiRequest};
use crate::connections::{ClientAddress, RefusalTotals, Ticket};
use crate::frame_meter::FrameMeter;
use crate::http::{Peer, client_ip};
use crate::hub::Catchup;
use crate::store::StoreHealth;
use crate::{Server, session};

/// Bytes read from the socket at a time; a larger frame grows the buffer while it arrives.
/// Allocated for every connection for as long as it lives, so it is small: a chat frame
/// (a few hundred bytes, 2,000 characters at most) takes one read or a few. 512 rather than
/// 1,024 pays for the frame meter and the connection's ticket (5,000 idle connections: 4.28
/// KiB each with 1,024, 3.8 KiB with 512; docs/PERFORMANCE.md).
const READ_BUFFER_BYTES: usize = 512;

/// Outbound bytes gathered before a write is issued (a flush writes them anyway).
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// Every route of the server.
pub fn routes(server: Arc<Server>) -> BoxedFilter<(warp::reply::Response,)> {
    let ws_server = server.clone();
    let websocket = warp::get()
        .and(warp::path::end().or(warp::path!("ws")).unify())
        .and(warp::header::headers_cloned())
        .and_then(|headers: HeaderMap| async move {
            if is_upgrade(&headers) { Ok(headers) } else { Err(warp::reject::not_found()) }
        })
        .and(warp::ext::optional::<Version>())
        .and(warp::ext::optional::<Peer>())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .map(move |headers, version, peer, on_upgrade, query: String| {
            let Some(catchup) = catchup(&query) else {
                return refuse_upgrade(StatusCode::BAD_REQUEST, "after must be a message seq");
            };
            upgrade(ws_server.clone(), &headers, version, peer, on_upgrade, catchup)
        });
    let health_server = server.clone();
    let api_server = server.clone();
    let api = warp::path("api")
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<Peer>())
        .and(warp::body::stream())
        .then(move |tail: warp::path::Tail, method, headers, peer, body| {
            let request = ApiRequest { method, path: tail.as_str().to_owned(), headers, peer };
            api::handle(api_server.clone(), request, body)
        });
    let avatar_server = server.clone();
    let avatars = warp::get()
        .or(warp::head())
        .unify()
        .and(warp::path!("avatars" / String))
        .and(warp::header::headers_cloned())
        .then(move |id: String, headers| api::avatar(avatar_server.clone(), id, headers));
    let health = warp::get()
        .or(warp::head())
        .unify()
        .and(warp::path!("healthz"))
        .map(move || warp::reply::json(&Health::of(&health_server)).into_response());
    let metrics = warp::get().or(warp::head()).unify().and(warp::path!("metrics")).map(move || {
        let mut response = server.metrics.render().into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        response
    });
    websocket
        .or(api)
        .unify()
        .or(avatars)
        .unify()
        .or(health)
        .unify()
        .or(metrics)
        .unify()
        .or(page(DefaultServer::SameOrigin))
        .unify()
        .map(|mut response: warp::reply::Response| {
            // Nothing this server sends is to be sniffed into another type.
            response
                .headers_mut()
                .insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            response
        })
        .boxed()
}

/// `?after=SEQ`: a client resuming after the last feed message it saw; without it, a
/// newcomer. `None` when `after` is not a number.
fn catchup(query: &str) -> Option<Catchup> {
    let after = query.split('&').find_map(|pair| pair.strip_prefix("after="));
    match after {
        None => Some(Catchup::Latest),
        Some(seq) => seq.parse().ok().map(Catchup::After),
    }
}

/// Whether the client asks to switch to WebSocket (whether it asks well is checked later, so
/// that a bad handshake gets a reason rather than the web page).
fn is_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, header::UPGRADE, "websocket")
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
}

/// Checks an upgrade request as RFC 6455 (4.2.1) asks; the error is the `400`'s reason.
fn checked_key(headers: &HeaderMap, version: Option<Version>) -> Result<&str, &'static str> {
    if version.is_none_or(|version| version < Version::HTTP_11) {
        return Err("a WebSocket upgrade needs HTTP/1.1");
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err("a WebSocket upgrade needs `Connection: Upgrade`");
    }
    if !has_token(headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return Err("only WebSocket version 13 is supported (Sec-WebSocket-Version: 13)");
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|key| key.to_str().ok())
        .ok_or("a WebSocket upgrade needs a Sec-WebSocket-Key")?;
    match BASE64.decode(key.trim()) {
        Ok(bytes) if bytes.len() == 16 => Ok(key.trim()),
        _ => Err("Sec-WebSocket-Key must be 16 bytes in base64"),
    }
}

/// Answers `101 Switching Protocols` and starts a session on the upgraded connection; `400`
/// for a bad handshake; `429` when the client's forwarded address is over its cap.
fn upgrade(
    server: Arc<Server>,
    headers: &HeaderMap,
    version: Option<Version>,
    peer: Option<Peer>,
    on_upgrade: Option<OnUpgrade>,
    catchup: Catchup,
) -> warp::reply::Response {
    let key = match checked_key(headers, version) {
        Ok(key) => key,
        Err(reason) => return refuse_upgrade(StatusCode::BAD_REQUEST, reason),
    };
    // A page of another site must not open a socket with the visitor's session (cross-site
    // WebSocket hijacking). Guests are not asked: they have nothing to steal.
    let has_session = api::session_cookie(headers).is_some();
    if has_session && api::foreign_origin(headers, &server.limits.accounts.allowed_origins) {
        return refuse_upgrade(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    let (Some(peer), Some(on_upgrade)) = (peer, on_upgrade) else {
        return refuse_upgrade(StatusCode::BAD_REQUEST, "this connection cannot be upgraded");
    };
    let trusted = &server.limits.trusted_proxies;
    let forwarded = headers.get("x-forwarded-for").and_then(|value| value.to_str().ok());
    let address = ClientAddress::of(client_ip(&peer, forwarded, trusted));
    // Through a proxy, the proxy's connection is counted already; its client is counted here.
    let forwarded_ticket: Option<Ticket> = if trusted.contains(&peer.ip) {
        match server.connections.admit_forwarded(address) {
            Ok(ticket) => Some(ticket),
            Err(refusal) => {
                let (code, reason) = refusal.answer();
                return refuse_upgrade(StatusCode::from_u16(code).unwrap_or_default(), reason);
            }
        }
    } else {
        None
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_frame_size(Some(server.limits.max_frame_bytes))
        .max_message_size(Some(server.limits.max_frame_bytes));
    let meter = server.meter.clone();
    let accept = derive_accept_key(key.as_bytes());
    // Boxed: whatever the task captures, it keeps for the whole session.
    let session_headers = has_session.then(|| Box::new(headers.clone()));
    tokio::spawn(async move {
        // Held for as long as the session runs: the connection's places in the counts.
        let _tickets = (peer.ticket, forwarded_ticket);
        let _session = server.connections.session();
        let account = match session_headers {
            Some(headers) => api::session_account(&server, &headers).await.map(Box::new),
            None => None,
        };
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = FrameMeter::new(TokioIo::new(upgraded), meter);
                let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                session::run(server, socket, address, catchup, account).await;
            }
            Err(error) => tracing::debug!(%error, "upgrade failed"),
        }
    });
    let mut response = Response::new(warp::hyper::body::Bytes::new()).into_response();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// A refused upgrade: the status, one line of reason, and the connection closed after it (a
/// client that asked to switch protocols has nothing else to say on it).
fn refuse_upgrade(code: StatusCode, reason: &'static str) -> warp::reply::Response {
    let mut response = warp::reply::with_status(format!("{reason}\n"), code).into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `GET /healthz`.
#[derive(Serialize)]
struct Health {
    status: &'static str,
    /// Open WebSocket connections.
    connections: usize,
    /// Open TCP connections of every kind (plain HTTP, this request's own included, and
    /// WebSocket), the count that `--max-connections` caps.
    sockets: usize,
    /// Users in the feed.
    feed: usize,
    /// Rooms, with one user waiting or two paired.
    rooms: usize,
    /// Rooms with one user waiting for a partner.
    waiting: usize,
    /// Scheduled messages not yet delivered.
    scheduled: usize,
    /// Connections turned away or timed out since the start, by reason.
    refused: RefusalTotals,
    /// `ok`, or `failing` while the store cannot write.
    store: StoreHealth,
    /// People in each named room that has anyone in it, by name.
    named_rooms: std::collections::BTreeMap<String, usize>,
    /// This server's name (`--node`).
    node: String,
    /// In a cluster only: `ok`, or `reconnecting` while Redis cannot be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    broker: Option<crate::broker::BrokerHealth>,
}

impl Health {
    fn of(server: &Server) -> Health {
        let census = server.hub.census();
        Health {
            status: "ok",
            connections: server.connections.websockets(),
            sockets: server.connections.open(),
            feed: census.feed,
            rooms: census.rooms,
            waiting: census.waiting,
            scheduled: server.scheduler.pending(),
            refused: server.connections.refused().totals(),
            store: server.store_health(),
            node: server.node.clone(),
            broker: server.broker.health(),
            named_rooms: server
                .hub
                .rooms()
                .into_iter()
                .filter(|room| room.online > 0)
                .map(|room| (room.name, room.online))
                .collect(),
        }
    }
}
