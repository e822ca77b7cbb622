//! The finished chatterbox server: lesson05's protocol, typed, bounded, observable and fast.
//!
//! How the pieces fit, from the socket inwards:
//! - [`http`] is the accept loop: every TCP connection takes a [`connections`] ticket when it
//!   is accepted (the caps in total and per address), then hyper serves it with timeouts.
//! - [`routes`] answers HTTP with warp (the web page, `/healthz`) and performs the WebSocket
//!   upgrade itself, checking the handshake.
//! - [`session`] runs one connection in one task: bytes in pass the [`frame_meter`] (a budget
//!   for every frame, a deadline for fragmented messages), messages pass the [`rate_limit`],
//!   are read by [`protocol`] (which also uses `client::schedule` for `/schedule` commands)
//!   and go to the [`hub`] or the [`scheduler`]; frames out come from its bounded [`outbox`].
//! - [`hub`] knows the feed, the rooms and the pairing queue, and fans each [`frame`] (encoded
//!   once) out to the queues of those who should get it, evicting any whose queue is full.
//! - [`scheduler`] holds scheduled messages in one timer task and hands them to the hub, paced,
//!   when they are due.
//! - [`config`] is the command line; [`serve`] puts it all together and shuts down gracefully.

pub mod config;
pub mod connections;
pub mod frame;
pub mod frame_meter;
pub mod http;
pub mod hub;
pub mod outbox;
pub mod protocol;
pub mod rate_limit;
pub mod routes;
pub mod scheduler;
pub mod session;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Limits;
use crate::connections::Connections;
use crate::hub::Hub;
use crate::scheduler::{ScheduleLimits, Scheduler};

/// What every connection shares.
pub struct Server {
    pub hub: Arc<Hub>,
    pub scheduler: Scheduler,
    pub connections: Arc<Connections>,
    pub limits: Limits,
}

impl Server {
    pub fn new(limits: Limits) -> Arc<Server> {
        let hub = Arc::new(Hub::default());
        let scheduler = Scheduler::start(
            hub.clone(),
            ScheduleLimits {
                per_connection: limits.max_scheduled,
                per_address: limits.max_scheduled_per_address,
                total: limits.max_scheduled_total,
                delivery_rate: limits.schedule_delivery_rate,
            },
        );
        let connections =
            Connections::new(limits.max_connections, limits.max_connections_per_address);
        Arc::new(Server { hub, scheduler, connections, limits })
    }
}

/// Serves on `listener` until `shutdown` resolves; then stops accepting, sends every client a
/// close frame (1001, going away) and returns once they are closed or the grace period is over.
/// Must be called within a tokio runtime.
pub async fn serve(listener: TcpListener, limits: Limits, shutdown: impl Future<Output = ()>) {
    let server = Server::new(limits);
    let (stop_accepting, stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(http::accept_loop(
        listener,
        server.clone(),
        routes::routes(server.clone()),
        async {
            let _ = stopped.await;
        },
    ));
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_accepting.send(());
    server.scheduler.stop();
    server.hub.shut_down();
    let grace = server.limits.shutdown_grace();
    if !server.connections.wait_all_closed(grace).await {
        tracing::warn!(
            open = server.connections.websockets(),
            "shutdown: some clients did not close in time"
        );
    }
    let _ = tokio::time::timeout(grace, http).await;
}
