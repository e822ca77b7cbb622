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
//! Who is online is shared differently: every [`HEARTBEAT_EVERY`] each node writes who is on it
//! (the feed's and each named room's people) to the key `PREFIX:presence:NODE`, which expires
//! after [`PRESENCE_TTL`], and reads the other nodes' keys. `{"who"}` and the rooms' online
//! counts add those people to the node's own. A node that dies stops renewing its key: its
//! people are gone from everyone's counts within `PRESENCE_TTL + HEARTBEAT_EVERY` (4 s).
//!
//! Publishing is done by a task of its own, from a bounded queue: the sequencer never waits
//! on Redis, and what cannot be published (Redis away, the queue full) is dropped, because
//! the catch-up will bring it.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prometheus_client::metrics::histogram::Histogram;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::Server;
use crate::message::{Author, Body, Channel, ChatMessage};
use crate::pairing::{self, Pairing};
use crate::sequencer::Sequenced;
use crate::store::StoredRoom;

/// The longest wait between two attempts to reach Redis again: well inside the 5 s in which a
/// node must be subscribed again after Redis is back.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long connecting to Redis and each command may take before it counts as failed.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// How often each node writes who is on it, and reads who is on the others.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// How long a node's presence key lasts without being renewed: three heartbeats, so that one
/// slow round does not make a node's people vanish and come back.
pub const PRESENCE_TTL: Duration = Duration::from_secs(3);

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

    /// Tells the other nodes that account `id` has a new display name or picture.
    pub fn profile_changed(&self, id: &str, name: &str) {
        if let Broker::Redis(redis) = self {
            let (id, name) = (id.to_owned(), name.to_owned());
            redis.send(Envelope::Profile { node: redis.node.clone(), id, name });
        }
    }

    /// Tells the other nodes that `author` is typing in the named room `channel`.
    pub fn typing(&self, channel: Channel, author: &Author) {
        if let (Broker::Redis(redis), Some(key)) = (self, channel.store_key()) {
            let (channel, author) = (key.to_owned(), Person::of(author));
            redis.send(Envelope::Typing { node: redis.node.clone(), channel, author });
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
    Messages {
        node: String,
        messages: Vec<WireMessage>,
    },
    Room {
        node: String,
        name: String,
        topic: String,
        owner: String,
        created_ms: i64,
    },
    Deleted {
        node: String,
        channel: String,
        seq: u64,
    },
    /// An account's new display name or picture.
    Profile {
        node: String,
        id: String,
        name: String,
    },
    /// Someone typing in a named room.
    Typing {
        node: String,
        channel: String,
        author: Person,
    },
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

/// Who is on one node, as its presence key holds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodePresence {
    pub feed: Vec<Person>,
    /// By room name; only rooms with someone in them.
    pub rooms: BTreeMap<String, Vec<Person>>,
}

/// One person (an account's tabs, or a guest's connection) in a [`NodePresence`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Person {
    pub id: String,
    pub name: Option<String>,
}

impl Person {
    pub fn of(author: &Author) -> Person {
        Person { id: author.id.to_string(), name: author.name.as_deref().map(str::to_owned) }
    }

    pub fn into_author(self) -> Author {
        Author { id: self.id.into(), name: self.name.map(Into::into) }
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
    /// Random pairing across nodes, through the same Redis.
    pub pairing: Arc<Pairing>,
    outgoing: mpsc::Sender<Envelope>,
    subscribed: Arc<AtomicBool>,
}

impl RedisBroker {
    fn send(&self, envelope: Envelope) {
        if self.outgoing.try_send(envelope).is_err() {
            tracing::debug!("a publish was dropped (Redis is slow or away); catch-up covers it");
        }
    }

    /// Starts the publishing, heartbeat and subscription tasks. They reach the server (its hub,
    /// gap filler and account names) through `server`, set once it exists.
    pub fn start(
        options: RedisOptions,
        round_trip: Histogram,
        server: Arc<OnceLock<Weak<Server>>>,
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
        tokio::spawn(run_heartbeat(
            client.clone(),
            channel("presence"),
            options.node.clone(),
            server.clone(),
        ));
        let own = pairing::node_channel(&options.prefix, &options.node);
        let pairing = Arc::new(Pairing::start(
            client.clone(),
            &options.prefix,
            options.node.clone(),
            server.clone(),
        ));
        tokio::spawn(run_subscriber(
            client,
            [channel("messages"), channel("rooms"), own],
            options.node.clone(),
            subscribed.clone(),
            server,
        ));
        Ok(RedisBroker { node: options.node, pairing, outgoing, subscribed })
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
            Envelope::Messages { .. }
            | Envelope::Deleted { .. }
            | Envelope::Profile { .. }
            | Envelope::Typing { .. } => &messages,
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

/// Every [`HEARTBEAT_EVERY`]: writes who is on this node under `PREFIX:presence:NODE` (expiring
/// after [`PRESENCE_TTL`]) and hands the other nodes' keys to the hub. While Redis is away the
/// last answer stands for `PRESENCE_TTL`, then nobody is elsewhere: each node counts its own.
async fn run_heartbeat(
    client: redis::Client,
    keys: String,
    node: String,
    server: Arc<OnceLock<Weak<Server>>>,
) {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    let own = format!("{keys}:{node}");
    let mut connection = None;
    let mut heard = Instant::now();
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let checked = Instant::now();
        let Some(server) = server.get().and_then(Weak::upgrade) else { continue };
        let Ok(mine) = serde_json::to_string(&server.hub.presence()) else { continue };
        if connection.is_none() {
            connection = client.get_multiplexed_async_connection_with_config(&config).await.ok();
        }
        let result = match connection.as_mut() {
            Some(redis) => heartbeat(redis, &keys, &own, mine).await,
            None => Err(redis::RedisError::from((redis::ErrorKind::Io, "not connected"))),
        };
        match result {
            Ok((others, alive)) => {
                heard = Instant::now();
                server.hub.set_people_elsewhere(others);
                server.hub.nodes_alive(&alive, checked);
            }
            Err(error) => {
                tracing::debug!(%error, "presence heartbeat failed; reconnecting");
                connection = None;
                if heard.elapsed() >= PRESENCE_TTL {
                    server.hub.set_people_elsewhere(Vec::new());
                    server.hub.nodes_alive(&HashSet::new(), checked);
                }
            }
        }
    }
}

/// Scan rounds for presence keys at most (100 keys a round): far more nodes than a cluster has.
const SCAN_ROUNDS: usize = 100;

/// One heartbeat: this node's key written, the others' read (SCAN, then MGET). Says who is on
/// the other nodes, and which nodes are alive.
async fn heartbeat(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &str,
    own: &str,
    mine: String,
) -> redis::RedisResult<(Vec<NodePresence>, HashSet<String>)> {
    let ttl = PRESENCE_TTL.as_millis() as u64;
    redis::cmd("SET").arg(own).arg(mine).arg("PX").arg(ttl).exec_async(redis).await?;
    let (pattern, mut cursor, mut found) = (format!("{keys}:*"), 0_u64, Vec::new());
    for _ in 0..SCAN_ROUNDS {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(100)
            .query_async(redis)
            .await?;
        found.extend(page.into_iter().filter(|key| key != own));
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    if found.is_empty() {
        return Ok((Vec::new(), HashSet::new()));
    }
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&found).query_async(redis).await?;
    // A key that expired between SCAN and MGET is a node gone: skipped.
    let node_of = |key: &String| key.get(keys.len() + 1..).unwrap_or_default().to_owned();
    let alive =
        found.iter().zip(&values).filter(|(_, value)| value.is_some()).map(|(key, _)| node_of(key));
    let alive = alive.collect();
    let others = values.into_iter().flatten().filter_map(|json| serde_json::from_str(&json).ok());
    Ok((others.collect(), alive))
}

async fn run_subscriber(
    client: redis::Client,
    channels: [String; 3],
    node: String,
    subscribed: Arc<AtomicBool>,
    server: Arc<OnceLock<Weak<Server>>>,
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
            let running = server.get().and_then(Weak::upgrade);
            if let Some(running) = running {
                // Those waiting here may have been dropped from the list meanwhile.
                running.hub.seek_again();
                if let Some(filler) = running.gap_filler.clone() {
                    tokio::spawn(async move { filler.catch_up().await });
                }
            }
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Ok(payload) = message.get_payload::<String>() else { continue };
                let Some(server) = server.get().and_then(Weak::upgrade) else { continue };
                if message.get_channel_name() == channels[2] {
                    pairing::receive(&server, &payload);
                } else {
                    receive(&server, &node, &payload);
                }
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
fn receive(server: &Server, node: &str, payload: &str) {
    let hub = &server.hub;
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
        | Envelope::Profile { node: from, .. }
        | Envelope::Typing { node: from, .. }
            if from == node => {}
        Envelope::Typing { channel, author, .. } => {
            if let Some(channel) = Channel::from_store_key(&channel) {
                hub.typing_elsewhere(channel, &author.into_author());
            }
        }
        Envelope::Profile { id, name, .. } => {
            // Its open sockets here speak with the new name from their next message on.
            let name = server.accounts.names.set(&id, &name);
            hub.update_profile(&id, name);
        }
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
