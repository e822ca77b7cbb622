//! The accept loop: every TCP connection from `accept` until it closes or becomes a WebSocket.
//!
//! warp's own server runs hyper without a timer, so a client that never finishes its headers
//! is never timed out, and only upgraded connections were counted. Here each connection is
//! counted the moment it is accepted (a [`Ticket`] from [`connections`](crate::connections));
//! one over a cap is answered with a one-line HTTP refusal, not a reset. The rest are served
//! by hyper's HTTP/1 (HTTP/2 is not offered) with a timer: headers must be complete within
//! `--header-timeout-secs`, and the same timeout closes a keep-alive connection idle between
//! requests, since hyper starts it as soon as it waits for the next request. Request heads are
//! capped at `--max-header-bytes`. warp's filters answer the requests, as a service.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::http::Request;

use crate::Server;
use crate::connections::{ClientAddress, Refusal, Ticket};

/// Refusals being answered at once at most; beyond this a refused socket is just closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// How long a refusal may take to be written and the client's request drained.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// How long accepting pauses after `accept` fails (out of file descriptors, usually), so that
/// the loop does not spin while connections close.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What a request knows of the connection it came on.
#[derive(Clone)]
pub struct Peer {
    /// The TCP peer's address.
    pub ip: IpAddr,
    /// This connection's place in the counts; a WebSocket session keeps it.
    pub ticket: Arc<Ticket>,
}

/// Accepts and serves connections until `stop` resolves; then stops accepting, asks the
/// HTTP connections still open to finish their current request, and returns when they have.
/// WebSocket sessions are not waited for here: they close through the hub.
pub async fn accept_loop(
    listener: TcpListener,
    server: Arc<Server>,
    routes: BoxedFilter<(warp::reply::Response,)>,
    stop: impl Future<Output = ()>,
) {
    let (stopping, stopped) = watch::channel(false);
    let refusing = Arc::new(AtomicUsize::new(0));
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    server.connections.refused().count_accept_error(&error);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let ip = peer.ip().to_canonical();
        let trusted_proxy = server.limits.trusted_proxies.contains(&ip);
        let address = (!trusted_proxy).then(|| ClientAddress::of(ip));
        match server.connections.admit(address) {
            Ok(ticket) => {
                let peer = Peer { ip, ticket: Arc::new(ticket) };
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    server.clone(),
                    routes.clone(),
                    stopped.clone(),
                ));
            }
            Err(refusal) => refuse(stream, refusal, &refusing),
        }
    }
    let _ = stopping.send(true);
    // Every connection task holds a receiver until it ends (or upgrades).
    drop(stopped);
    stopping.closed().await;
}

/// Serves HTTP/1 on one connection, with the timeouts and limits; an upgraded connection
/// leaves here and lives on in its WebSocket session.
async fn serve_connection(
    stream: TcpStream,
    peer: Peer,
    server: Arc<Server>,
    routes: BoxedFilter<(warp::reply::Response,)>,
    mut stopped: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let limits = &server.limits;
    let warp_service = warp::service(routes);
    let request_peer = peer.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let version = request.version();
        request.extensions_mut().insert(version);
        request.extensions_mut().insert(request_peer.clone());
        warp_service.clone().call(request)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout())
        .max_header_size(limits.max_header_bytes)
        // hyper's read buffer: never below its minimum, never far above a maximal head.
        .max_buf_size(limits.max_header_bytes.max(8192));
    let connection = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = async { stopped.wait_for(|stopped| *stopped).await.map(|_| ()) } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    drop(peer);
    if let Err(error) = result {
        if error.is_timeout() {
            server.connections.refused().count_header_timeout();
        }
        // A client that resets or sends junk is its own problem, not an operator's.
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// Answers a refused connection with its status and one line of reason, then closes it. The
/// request is drained first (within a bound), since closing a socket with unread data makes
/// the kernel reset it, which can destroy the answer on its way.
fn refuse(mut stream: TcpStream, refusal: Refusal, refusing: &Arc<AtomicUsize>) {
    if refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSALS_IN_FLIGHT {
        refusing.fetch_sub(1, Ordering::AcqRel);
        return; // dropped: a flood of refusals must not hold file descriptors for long
    }
    let refusing = refusing.clone();
    tokio::spawn(async move {
        let (status, reason) = refusal.answer();
        let title = if status == 429 { "Too Many Requests" } else { "Service Unavailable" };
        let response = format!(
            "HTTP/1.1 {status} {title}\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\nretry-after: 5\r\nconnection: close\r\n\r\n{reason}\n",
            reason.len() + 1
        );
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0; 1024];
            while stream.read(&mut sink).await? > 0 {}
            std::io::Result::Ok(())
        })
        .await;
        refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// The address a request comes from: its TCP peer, or, when that peer is a trusted proxy, the
/// rightmost address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: &Peer, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer.ip) {
        return peer.ip;
    }
    forwarded_for
        .into_iter()
        .flat_map(|list| list.rsplit(','))
        .map_while(|entry| entry.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer.ip)
}
