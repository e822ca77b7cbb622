//! The finished chatterbox server: lesson05's protocol, typed, bounded, observable and fast.
//!
//! How the pieces fit, from the socket inwards:
//! - [`http`] is the accept loop: every TCP connection takes a [`connections`] ticket when it
//!   is accepted (the caps in total and per address), then hyper serves it with timeouts.
//! - [`routes`] answers HTTP with warp (the web page, `/healthz`) and performs the WebSocket
//!   upgrade itself, checking the handshake.
//! - [`session`] runs one connection in one task and only moves frames: bytes in pass the
//!   [`frame_meter`] (a budget for every frame, a deadline for fragmented messages) and the
//!   [`rate_limit`], and become a [`command`]; frames out come from its bounded [`outbox`].
//! - [`command`] is where a frame becomes its effects: [`protocol`] reads it (with the
//!   `/schedule` grammar from `wire::schedule`), and it goes to the hub or the scheduler.
//! - [`hub`] knows the feed, the rooms and the pairing queue: it gives each [`message`] its
//!   `seq`, encodes it once into a [`frame`], fans it out to the queues of those who should get
//!   it (evicting any whose queue is full), keeps the recent ones for newcomers and resumes,
//!   and hands it to the [`store`].
//! - [`store`] is the seam for what is kept: [`sqlite`] (a file), [`postgres`] (a PostgreSQL
//!   database, for several nodes later) or in memory; both real ones are written in batches by
//!   one thread, the [`writer`].
//! - [`scheduler`] holds scheduled messages in one timer task (kept in the store too) and
//!   hands them to the hub, paced, when they are due.
//! - [`metrics`] counts what happens and reads the states for `GET /metrics` (Prometheus).
//! - [`accounts`] holds the rules for accounts, password hashing and session tokens; `api` is
//!   their HTTP JSON API under `/api`, and a WebSocket opened with a session cookie speaks as
//!   its account.
//! - In a cluster (`--redis`, on `--database postgres://`), the [`sequencer`] gives the durable
//!   channels' seqs from PostgreSQL (and claims due schedules there), and the [`broker`]
//!   shares what it sequenced with the other nodes through Redis; the hub delivers each
//!   channel in seq order whichever node a message came from, reading what it missed back
//!   from PostgreSQL; `pairing` pairs random partners across the nodes through a waiting
//!   list in Redis.
//! - [`config`] is the command line; [`serve`] puts it all together and shuts down gracefully.

pub mod accounts;
mod api;
mod avatar;
pub mod broker;
mod command;
pub mod config;
mod connections;
pub mod frame;
pub mod frame_meter;
mod http;
mod hub;
pub mod message;
pub mod metrics;
mod outbox;
mod pairing;
pub mod postgres;
pub mod protocol;
mod rate_limit;
mod routes;
mod scheduler;
pub mod sequencer;
mod session;
pub mod sqlite;
pub mod store;
pub mod writer;

use std::future::Future;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::accounts::Accounts;
use crate::broker::{Broker, RedisBroker, RedisOptions};
use crate::config::Limits;
use crate::connections::Connections;
use crate::frame_meter::MeterLimits;
use crate::hub::{HistoryLimits, Hub};
use crate::metrics::{Counters, Metrics};
use crate::scheduler::{ScheduleLimits, Scheduler};
use crate::sequencer::{Drafts, GapFiller};
use crate::store::{MemoryStore, Store};

/// How long shutdown waits for the store to write what was accepted.
const STORE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection shares.
pub struct Server {
    hub: Arc<Hub>,
    scheduler: Scheduler,
    connections: Arc<Connections>,
    store: Arc<dyn Store>,
    /// The frame meter's limits, shared by every connection.
    meter: Arc<MeterLimits>,
    counters: Counters,
    metrics: Metrics,
    accounts: Accounts,
    limits: Limits,
    /// This server's name (`--node`).
    node: String,
    broker: Arc<Broker>,
    /// In a cluster: the sequencer, closed at shutdown after the scheduler.
    sequencer: Option<Arc<Drafts>>,
    /// In a cluster: reads what this node missed back from PostgreSQL.
    gap_filler: Option<Arc<GapFiller>>,
}

/// A server alone, or one node of several.
pub enum Deployment {
    Alone,
    /// `--redis`: the store is PostgreSQL, shared by every node.
    Cluster {
        store: Arc<postgres::PostgresStore>,
        database_url: String,
        redis: RedisOptions,
    },
}

/// A short random node name, when `--node` is not given: 8 hex digits.
pub fn random_node_name() -> String {
    let mut bytes = [0; 4];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Why `--database` could not be opened: one line, naming the file or the host and the reason.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    #[error(transparent)]
    Sqlite(#[from] sqlite::OpenError),
    #[error(transparent)]
    Postgres(#[from] postgres::OpenError),
}

/// Opens the store `--database` names: `memory`, a PostgreSQL URL, or a SQLite file.
pub fn open_store(
    database: &str,
    limits: &Limits,
    counters: &Counters,
) -> Result<Arc<dyn Store>, OpenStoreError> {
    if postgres::is_url(database) {
        return Ok(open_postgres(database, limits, counters)?);
    }
    let writer = writer_options(limits, counters);
    match sqlite::database_path(database) {
        None => Ok(Arc::new(MemoryStore::new(limits.history_keep))),
        Some(path) => Ok(Arc::new(sqlite::SqliteStore::open(sqlite::SqliteOptions {
            path: path.to_path_buf(),
            writer,
        })?)),
    }
}

fn writer_options(limits: &Limits, counters: &Counters) -> writer::WriterOptions {
    writer::WriterOptions {
        keep: limits.history_keep,
        backlog: limits.store_backlog,
        write_seconds: Some(counters.store_writes.clone()),
    }
}

/// Opens the PostgreSQL database `database` (a `postgres://` URL) names.
pub fn open_postgres(
    database: &str,
    limits: &Limits,
    counters: &Counters,
) -> Result<Arc<postgres::PostgresStore>, postgres::OpenError> {
    let options = postgres::PostgresOptions {
        url: database.to_owned(),
        pool: limits.database_pool,
        writer: writer_options(limits, counters),
    };
    Ok(Arc::new(postgres::PostgresStore::open(options)?))
}

impl Server {
    /// The store's health as `/healthz` and `/metrics` show it: in a cluster, also failing
    /// while the sequencer cannot commit (the messages it holds are not written yet).
    pub(crate) fn store_health(&self) -> store::StoreHealth {
        let sequencer = self.sequencer.as_ref().map(|drafts| drafts.health());
        sequencer
            .filter(|health| *health == store::StoreHealth::Failing)
            .unwrap_or_else(|| self.store.health())
    }

    /// A server alone: see [`Server::load_as`].
    pub fn load(
        limits: Limits,
        store: Arc<dyn Store>,
        counters: Counters,
    ) -> anyhow::Result<Arc<Server>> {
        Server::load_as(limits, store, counters, random_node_name(), Deployment::Alone)
    }

    /// The server's state, going on from what `store` kept (its channels' newest messages and
    /// pending schedules are loaded here, before anyone can connect). Starts the scheduler's
    /// timer, so it must be called within a tokio runtime.
    /// In a cluster it also starts the broker's tasks, the sequencer thread and the gap filler.
    pub fn load_as(
        limits: Limits,
        store: Arc<dyn Store>,
        counters: Counters,
        node: String,
        deployment: Deployment,
    ) -> anyhow::Result<Arc<Server>> {
        let history = HistoryLimits { on_join: limits.history, resume_max: limits.resume_max };
        let loaded = store.load(history.on_join.max(history.resume_max))?;
        for schedule in &loaded.interrupted {
            tracing::warn!(
                id = schedule.id,
                "a scheduled message was being delivered when the server stopped; \
                 it is not delivered again (it may not have reached everyone)"
            );
        }
        let rooms = store.rooms()?;
        let hub =
            Arc::new(Hub::new(store.clone(), history, loaded.channels, rooms, counters.clone()));
        let cluster = matches!(deployment, Deployment::Cluster { .. });
        // The broker's tasks reach the server through this once it exists.
        let started: Arc<OnceLock<Weak<Server>>> = Arc::new(OnceLock::new());
        let (broker, sequencer, gap_filler) = match deployment {
            Deployment::Alone => (Arc::new(Broker::Local), None, None),
            Deployment::Cluster { store: postgres, database_url, redis } => {
                let redis =
                    RedisBroker::start(redis, counters.broker_round_trip.clone(), started.clone())?;
                hub.use_pairing(redis.pairing.clone());
                let broker = Arc::new(Broker::Redis(redis));
                let keep = limits.history_keep;
                let drafts = sequencer::start(&database_url, keep, hub.clone(), broker.clone())?;
                hub.use_sequencer(drafts.clone(), broker.clone());
                let filler = GapFiller::start(hub.clone(), postgres);
                // What was committed between loading and subscribing.
                tokio::spawn({
                    let filler = filler.clone();
                    async move { filler.catch_up().await }
                });
                (broker, Some(drafts), Some(filler))
            }
        };
        let scheduler = Scheduler::start(
            hub.clone(),
            store.clone(),
            ScheduleLimits {
                per_connection: limits.max_scheduled,
                per_address: limits.max_scheduled_per_address,
                total: limits.max_scheduled_total,
                delivery_rate: limits.schedule_delivery_rate,
                cluster,
            },
            loaded.schedules,
        );
        let connections =
            Connections::new(limits.max_connections, limits.max_connections_per_address);
        let meter = Arc::new(MeterLimits {
            frame_rate: limits.frame_rate,
            frame_burst: limits.frame_burst,
            fragment_timeout: limits.fragment_timeout(),
        });
        let accounts = Accounts::new(&limits.accounts);
        let server = Arc::new_cyclic(|server| Server {
            hub,
            scheduler,
            connections,
            store,
            meter,
            accounts,
            metrics: Metrics::new(&counters, server.clone(), cluster.then_some(node.as_str())),
            node,
            broker,
            sequencer,
            gap_filler,
            counters,
            limits,
        });
        let _ = started.set(Arc::downgrade(&server));
        Ok(server)
    }
}

/// Serves on `listener` until `shutdown` resolves; then stops accepting, sends every client a
/// close frame (1001, going away), waits for them up to the grace period, and writes
/// everything the store was handed before it returns.
pub async fn serve(listener: TcpListener, server: Arc<Server>, shutdown: impl Future<Output = ()>) {
    let store = server.store.clone();
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
    let grace = server.limits.shutdown_grace();
    server.scheduler.stop(grace).await;
    server.hub.shut_down();
    if let Some(sequencer) = server.sequencer.clone() {
        // Drafts already taken are sequenced (and so kept) before the store closes.
        let _ = tokio::task::spawn_blocking(move || sequencer.close(grace)).await;
    }
    if !server.connections.wait_all_closed(grace).await {
        tracing::warn!(
            open = server.connections.websockets(),
            "shutdown: some clients did not close in time"
        );
    }
    let _ = tokio::time::timeout(grace, http).await;
    // Everything accepted is in the store's hands by now: write it before the process ends.
    let closed = tokio::task::spawn_blocking(move || store.close(STORE_FLUSH_TIMEOUT)).await;
    if !matches!(closed, Ok(true)) {
        tracing::error!("shutdown: the store could not write everything it was given");
    }
}
