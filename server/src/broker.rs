//! The broker: how the nodes of a cluster hear each other's live traffic.
//!
//! [`Broker`] is the seam. [`Broker::Local`] is one server on its own: there is nobody to tell.
//! [`Broker::Redis`] shares through Redis pub/sub: each batch the [`sequencer`](crate::sequencer)
//! commits is published once, on `PREFIX:messages`, and every node fans it out to its own
//! connections (a message crosses Redis once per node, never once per recipient). New named
//! rooms go on `PREFIX:rooms`. Redis only carries: PostgreSQL is the record, so Redis may
//! restart. Then:
//! - the subscription task reconnects with a backoff of at most [`MAX_BACKOFF`], and
//!   `/healthz` says `"broker": "reconnecting"` meanwhile;
//! - each node goes on: its own messages are sequenced and delivered locally, and others'
//!   arrive late through the hub's gap filling (a later seq held, the missing read back);
//! - once subscribed again, the node catches up every channel from PostgreSQL, so its clients
//!   get what was said meanwhile, in order, each once.
//!
//! Publishing is done by a task of its own, from a bounded queue: the sequencer never waits
//! on Redis, and what cannot be published (Redis away, the queue full) is dropped, because
//! the catch-up will bring it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prometheus_client::metrics::histogram::Histogram;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::hub::Hub;
use crate::message::{Author, Body, Channel, ChatMessage};
use crate::sequencer::{GapFiller, Sequenced};
use crate::store::StoredRoom;

/// The longest wait between two attempts to reach Redis again: well inside the 5 s in which a
/// node must be subscribed again after Redis is back.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long connecting to Redis and each command may take before it counts as failed.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Batches waiting to be published at most; more are dropped (the catch-up brings them).
const PUBLISH_BACKLOG: usize = 1024;

/// Whether a node hears the others, for `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerHealth {
    Ok,
    /// Not subscribed (Redis is away): this node serves its own clients meanwhile.
    Reconnecting,
}

pub enum Broker {
    /// One server alone.
    Local,
    Redis(RedisBroker),
}

impl Broker {
    /// Tells the other nodes about messages this node sequenced; never waits.
    pub fn publish(&self, batch: &[Sequenced]) {
        if let Broker::Redis(redis) = self {
            let messages = batch.iter().map(|sequenced| WireMessage::of(&sequenced.message));
            redis.send(Envelope::Messages {
                node: redis.node.clone(),
                messages: messages.collect(),
            });
        }
    }

    /// Tells the other nodes about a named room just created here.
    pub fn room_created(&self, room: &StoredRoom) {
        if let Broker::Redis(redis) = self {
            redis.send(Envelope::Room {
                node: redis.node.clone(),
                name: room.name.clone(),
                topic: room.topic.clone(),
                owner: room.owner.clone(),
                created_ms: room.created_ms,
            });
        }
    }

    /// Tells the other nodes that message `seq` of `channel` was taken back here.
    pub fn deleted(&self, channel: Channel, seq: u64) {
        if let (Broker::Redis(redis), Some(key)) = (self, channel.store_key()) {
            redis.send(Envelope::Deleted { node: redis.node.clone(), channel: key.into(), seq });
        }
    }

    /// `None` for a server alone.
    pub fn health(&self) -> Option<BrokerHealth> {
        match self {
            Broker::Local => None,
            Broker::Redis(redis) if redis.subscribed.load(Ordering::Relaxed) => {
                Some(BrokerHealth::Ok)
            }
            Broker::Redis(_) => Some(BrokerHealth::Reconnecting),
        }
    }
}

/// What crosses Redis, as JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Envelope {
    Messages { node: String, messages: Vec<WireMessage> },
    Room { node: String, name: String, topic: String, owner: String, created_ms: i64 },
    Deleted { node: String, channel: String, seq: u64 },
}

/// A sequenced message between nodes: the store's columns.
#[derive(Debug, Serialize, Deserialize)]
struct WireMessage {
    channel: String,
    seq: u64,
    author: String,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    body: String,
    at_ms: i64,
    late: bool,
}

impl WireMessage {
    fn of(message: &ChatMessage) -> WireMessage {
        WireMessage {
            channel: message.channel.store_key().unwrap_or_default().to_owned(),
            seq: message.seq,
            author: message.author.id.to_string(),
            name: message.author.name.as_deref().map(str::to_owned),
            kind: message.body.kind().to_owned(),
            body: message.body.content().to_owned(),
            at_ms: message.at_ms,
            late: message.late,
        }
    }

    /// `None` for what this server cannot read (a newer node's channel or body kind).
    fn into_message(self) -> Option<ChatMessage> {
        let channel = Channel::from_store_key(&self.channel)?;
        let body = Body::from_parts(&self.kind, self.body)?;
        let author = Author { id: self.author.into(), name: self.name.map(Into::into) };
        Some(ChatMessage::new(channel, self.seq, author, body, self.at_ms, self.late))
    }
}

/// How a node reaches Redis, from the command line.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub url: String,
    pub prefix: String,
    pub node: String,
}

pub struct RedisBroker {
    node: String,
    outgoing: mpsc::Sender<Envelope>,
    subscribed: Arc<AtomicBool>,
}

impl RedisBroker {
    fn send(&self, envelope: Envelope) {
        if self.outgoing.try_send(envelope).is_err() {
            tracing::debug!("a publish was dropped (Redis is slow or away); catch-up covers it");
        }
    }

    /// Starts the publishing and the subscription tasks. The subscription hands other nodes'
    /// messages to the hub (set later, once the hub exists) and catches up through `filler`.
    pub fn start(
        options: RedisOptions,
        round_trip: Histogram,
        hub: Arc<OnceLock<(Arc<Hub>, Arc<GapFiller>)>>,
    ) -> anyhow::Result<RedisBroker> {
        let client = redis::Client::open(options.url.as_str())
            .map_err(|error| anyhow::anyhow!("--redis: {error}"))?;
        let (outgoing, queue) = mpsc::channel(PUBLISH_BACKLOG);
        let subscribed = Arc::new(AtomicBool::new(false));
        let channel = |name: &str| format!("{}:{name}", options.prefix);
        tokio::spawn(run_publisher(
            client.clone(),
            channel("messages"),
            channel("rooms"),
            queue,
            round_trip,
        ));
        tokio::spawn(run_subscriber(
            client,
            [channel("messages"), channel("rooms")],
            options.node.clone(),
            subscribed.clone(),
            hub,
        ));
        Ok(RedisBroker { node: options.node, outgoing, subscribed })
    }
}

async fn run_publisher(
    client: redis::Client,
    messages: String,
    rooms: String,
    mut queue: mpsc::Receiver<Envelope>,
    round_trip: Histogram,
) {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    let mut connection = None;
    while let Some(envelope) = queue.recv().await {
        if connection.is_none() {
            match client.get_multiplexed_async_connection_with_config(&config).await {
                Ok(connected) => connection = Some(connected),
                // Dropped: the subscription's catch-up brings it to the others.
                Err(_) => continue,
            }
        }
        let Some(redis) = connection.as_mut() else { continue };
        let target = match envelope {
            Envelope::Messages { .. } | Envelope::Deleted { .. } => &messages,
            Envelope::Room { .. } => &rooms,
        };
        let Ok(payload) = serde_json::to_string(&envelope) else { continue };
        let started = Instant::now();
        let published: redis::RedisResult<i64> = redis.publish(target, payload).await;
        match published {
            Ok(_) => round_trip.observe(started.elapsed().as_secs_f64()),
            Err(error) => {
                tracing::debug!(%error, "publishing failed; reconnecting");
                connection = None;
            }
        }
    }
}

async fn run_subscriber(
    client: redis::Client,
    channels: [String; 2],
    node: String,
    subscribed: Arc<AtomicBool>,
    hub: Arc<OnceLock<(Arc<Hub>, Arc<GapFiller>)>>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut logged_down = false;
    loop {
        let connected = tokio::time::timeout(REDIS_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            for channel in &channels {
                pubsub.subscribe(channel).await?;
            }
            redis::RedisResult::Ok(pubsub)
        })
        .await;
        if let Ok(Ok(pubsub)) = connected {
            backoff = Duration::from_millis(50);
            subscribed.store(true, Ordering::Relaxed);
            if logged_down {
                tracing::warn!("subscribed to Redis again; catching up from PostgreSQL");
                logged_down = false;
            }
            // Whatever was committed before the subscription took effect is read back.
            if let Some((_, filler)) = hub.get() {
                let filler = filler.clone();
                tokio::spawn(async move { filler.catch_up().await });
            }
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Ok(payload) = message.get_payload::<String>() else { continue };
                let Some((hub, _)) = hub.get() else { continue };
                receive(hub, &node, &payload);
            }
            subscribed.store(false, Ordering::Relaxed);
        }
        if !logged_down {
            tracing::warn!("lost Redis; serving this node's clients and reconnecting");
            logged_down = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One publication from Redis: another node's messages (this node's own come back too, and
/// are skipped), or a named room.
fn receive(hub: &Hub, node: &str, payload: &str) {
    let envelope: Envelope = match serde_json::from_str(payload) {
        Ok(envelope) => envelope,
        Err(error) => {
            tracing::warn!(%error, "ignoring a publication this server cannot read");
            return;
        }
    };
    match envelope {
        Envelope::Messages { node: from, .. }
        | Envelope::Room { node: from, .. }
        | Envelope::Deleted { node: from, .. }
            if from == node => {}
        Envelope::Deleted { channel, seq, .. } => {
            if let Some(channel) = Channel::from_store_key(&channel) {
                hub.deleted_elsewhere(channel, seq);
            }
        }
        Envelope::Messages { messages, .. } => {
            let batch: Vec<Sequenced> = messages
                .into_iter()
                .filter_map(WireMessage::into_message)
                .map(|message| Sequenced { message: Arc::new(message), sender: None })
                .collect();
            hub.deliver_sequenced(&batch);
        }
        Envelope::Room { name, topic, owner, created_ms, .. } => {
            // Its caps were checked where it was created.
            let _ =
                hub.add_room(StoredRoom { name, topic, owner, created_ms }, usize::MAX, usize::MAX);
        }
    }
}
