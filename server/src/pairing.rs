//! Random 1:1 pairing across the nodes of a cluster.
//!
//! Everyone waiting for a partner anywhere in the cluster is in one Redis list,
//! `PREFIX:waiting`, oldest first; each entry is a [`Seeker`]: a node, the number of the random
//! room there, and who waits in it. Seeking runs [`SEEK_SCRIPT`], one Lua script and so one
//! atomic step: it pops the oldest entry whose node is alive, or else pushes the seeker. Two
//! seekers can never take the same entry, so each waiting user gets exactly one partner.
//!
//! A node is alive for pairing while something is subscribed to its own channel
//! `PREFIX:node:NODE`: a node killed with `kill -9` (or crashed) vanishes at once, since the
//! kernel closes its Redis connection, and its entries are dropped by the next seeker. Its
//! presence key is not the test: it lives 3 s after a death, and a node just started may not
//! have written it yet. A node that hangs with its connection open may still be chosen; its
//! presence key then expires, and its partner is told it left as below.
//!
//! A pair across nodes is two random rooms, one on each node, each knowing the other's node
//! and room number. What one partner says is stamped into its own room (its sender's seq) and
//! sent on the partner's node channel, where it is stamped again into the partner's room: each
//! client sees one room numbered consistently by its own node, as a room on one node is.
//! "Partner left" crosses the same way. A node that dies tells nobody: its partners' nodes see
//! its presence key expire and tell them within `PRESENCE_TTL + HEARTBEAT_EVERY` (4 s; see
//! [`broker`](crate::broker)).
//!
//! Requests go through one task in order, so a user's withdrawal is always run after its own
//! seek, and a message never overtakes the pairing it belongs to. The queue is unbounded: each
//! request is one user's action (joining, leaving, a rate-limited message), not a flood.
//!
//! While Redis is away, seeking fails and the hub pairs on its own node, as a server alone
//! does; pairs across nodes end (the partner is told it left) once the presence keys cannot
//! be read for the presence TTL.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::Server;
use crate::broker::Person;
use crate::message::{Author, Body};

/// How long a seek may take before Redis counts as away (the hub then pairs locally).
const SEEK_TIMEOUT: Duration = Duration::from_secs(2);

/// KEYS[1]: the waiting list. ARGV[1]: the seeker's entry; ARGV[2]: the node channels' prefix.
/// Returns the partner's entry, or false (pushed).
/// An entry this script cannot read is dropped, as a dead node's is.
const SEEK_SCRIPT: &str = r#"
redis.call('LREM', KEYS[1], 0, ARGV[1])
while true do
  local entry = redis.call('LPOP', KEYS[1])
  if not entry then break end
  local ok, seeker = pcall(cjson.decode, entry)
  if ok and type(seeker) == 'table' and type(seeker['node']) == 'string' then
    if redis.call('PUBSUB', 'NUMSUB', ARGV[2] .. seeker['node'])[2] > 0 then
      return entry
    end
  end
end
redis.call('RPUSH', KEYS[1], ARGV[1])
return false
"#;

/// One random room of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomAt {
    pub node: String,
    pub room: u64,
}

/// An entry of the waiting list: a room and who waits in it (told to the partner on pairing).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seeker {
    node: String,
    room: u64,
    author: Person,
}

/// What one node tells another about a pair, on `PREFIX:node:NODE`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PairEnvelope {
    /// Your room `room` is paired with `partner`, where `author` waits.
    Paired { room: u64, partner: RoomAt, author: Person },
    /// The partner of your room `room`, in `partner`, left.
    PartnerLeft { room: u64, partner: RoomAt },
    /// The partner of your room `room` said this; `seq` is its number in the partner's room.
    Message { room: u64, partner: RoomAt, seq: u64, author: Person, kind: String, body: String },
    /// The partner of your room `room` took back its message `seq` (in the partner's room).
    Deleted { room: u64, partner: RoomAt, seq: u64 },
    /// The partner of your room `room` is typing.
    Typing { room: u64, partner: RoomAt, author: Person },
}

enum Request {
    Seek { room: u64, author: Person },
    Withdraw { room: u64, author: Person },
    Tell { node: String, envelope: PairEnvelope },
}

/// The hub's way to the pairing task; every call returns at once.
pub struct Pairing {
    node: String,
    requests: mpsc::UnboundedSender<Request>,
}

impl Pairing {
    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Looks for a partner for `author`, alone in `room`; the hub hears the answer.
    pub fn seek(&self, room: u64, author: &Author) {
        let _ = self.requests.send(Request::Seek { room, author: Person::of(author) });
    }

    /// Takes `room`'s entry (made for `author`) off the waiting list.
    pub fn withdraw(&self, room: u64, author: &Author) {
        let _ = self.requests.send(Request::Withdraw { room, author: Person::of(author) });
    }

    pub fn tell(&self, node: &str, envelope: PairEnvelope) {
        let _ = self.requests.send(Request::Tell { node: node.to_owned(), envelope });
    }

    /// This node's room `room`, as a partner sees it.
    pub fn here(&self, room: u64) -> RoomAt {
        RoomAt { node: self.node.clone(), room }
    }

    /// Message `seq` said in `room` to its partner `to`.
    pub fn message(&self, room: u64, to: &RoomAt, seq: u64, author: &Author, body: &Body) {
        let envelope = PairEnvelope::Message {
            room: to.room,
            partner: self.here(room),
            seq,
            author: Person::of(author),
            kind: body.kind().to_owned(),
            body: body.content().to_owned(),
        };
        self.tell(&to.node, envelope);
    }

    /// Starts the task that runs the requests against Redis, and reaches the hub through
    /// `server` once it exists.
    pub fn start(
        client: redis::Client,
        prefix: &str,
        node: String,
        server: Arc<OnceLock<Weak<Server>>>,
    ) -> Pairing {
        let (requests, queue) = mpsc::unbounded_channel();
        let names = Names {
            waiting: format!("{prefix}:waiting"),
            nodes: format!("{prefix}:node:"),
            node: node.clone(),
        };
        tokio::spawn(run(client, names, queue, server));
        Pairing { node, requests }
    }
}

/// The channel a node hears its pairs on.
pub fn node_channel(prefix: &str, node: &str) -> String {
    format!("{prefix}:node:{node}")
}

struct Names {
    waiting: String,
    nodes: String,
    node: String,
}

impl Names {
    fn entry(&self, room: u64, author: Person) -> String {
        let seeker = Seeker { node: self.node.clone(), room, author };
        serde_json::to_string(&seeker).unwrap_or_default()
    }
}

async fn run(
    client: redis::Client,
    names: Names,
    mut queue: mpsc::UnboundedReceiver<Request>,
    server: Arc<OnceLock<Weak<Server>>>,
) {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SEEK_TIMEOUT))
        .set_response_timeout(Some(SEEK_TIMEOUT));
    let mut connection: Option<redis::aio::MultiplexedConnection> = None;
    while let Some(request) = queue.recv().await {
        if connection.is_none() {
            connection = client.get_multiplexed_async_connection_with_config(&config).await.ok();
        }
        let Some(server) = server.get().and_then(Weak::upgrade) else { continue };
        let hub = &server.hub;
        if let Request::Seek { room, .. } = &request
            && !hub.is_seeking(*room)
        {
            // Paired or gone since it was asked (a seek repeated after Redis came back).
            continue;
        }
        let Some(redis) = connection.as_mut() else {
            if let Request::Seek { room, .. } = request {
                hub.pair_locally(room);
            }
            continue;
        };
        let done: redis::RedisResult<()> = match request {
            Request::Seek { room, author } => {
                let entry = names.entry(room, author);
                // EVAL rather than EVALSHA: the script is small, and nothing to reload after
                // Redis restarts.
                let found: redis::RedisResult<Option<String>> = redis::cmd("EVAL")
                    .arg(SEEK_SCRIPT)
                    .arg(1)
                    .arg(&names.waiting)
                    .arg(&entry)
                    .arg(&names.nodes)
                    .query_async(redis)
                    .await;
                match found {
                    Err(error) => {
                        hub.pair_locally(room);
                        Err(error)
                    }
                    Ok(None) => {
                        hub.waiting_in_cluster(room);
                        Ok(())
                    }
                    Ok(Some(partner)) => {
                        paired(&server, &names, redis, room, &entry, &partner).await
                    }
                }
            }
            Request::Withdraw { room, author } => {
                let entry = names.entry(room, author);
                redis::cmd("LREM").arg(&names.waiting).arg(0).arg(entry).exec_async(redis).await
            }
            Request::Tell { node, envelope } => publish(redis, &names, &node, &envelope).await,
        };
        if let Err(error) = done {
            tracing::debug!(%error, "pairing through Redis failed; reconnecting");
            connection = None;
        }
    }
}

/// `room` was matched with the waiting `partner` (an entry of the list).
async fn paired(
    server: &Server,
    names: &Names,
    redis: &mut redis::aio::MultiplexedConnection,
    room: u64,
    entry: &str,
    partner_entry: &str,
) -> redis::RedisResult<()> {
    let Ok(partner) = serde_json::from_str::<Seeker>(partner_entry) else {
        server.hub.pair_locally(room);
        return Ok(());
    };
    if partner.node == names.node {
        server.hub.pair_here(partner.room, room);
        return Ok(());
    }
    let at = RoomAt { node: partner.node.clone(), room: partner.room };
    let here = RoomAt { node: names.node.clone(), room };
    if !server.hub.paired_elsewhere(room, at, partner.author.into_author()) {
        // The seeker left meanwhile: the partner, never told, keeps its place at the front.
        return redis::cmd("LPUSH").arg(&names.waiting).arg(partner_entry).exec_async(redis).await;
    }
    let Ok(me) = serde_json::from_str::<Seeker>(entry) else { return Ok(()) };
    let envelope = PairEnvelope::Paired { room: partner.room, partner: here, author: me.author };
    publish(redis, names, &partner.node, &envelope).await
}

async fn publish(
    redis: &mut redis::aio::MultiplexedConnection,
    names: &Names,
    node: &str,
    envelope: &PairEnvelope,
) -> redis::RedisResult<()> {
    let Ok(payload) = serde_json::to_string(envelope) else { return Ok(()) };
    let channel = format!("{}{node}", names.nodes);
    redis::cmd("PUBLISH").arg(channel).arg(payload).exec_async(redis).await
}

/// One publication on this node's channel.
pub fn receive(server: &Server, payload: &str) {
    let envelope: PairEnvelope = match serde_json::from_str(payload) {
        Ok(envelope) => envelope,
        Err(error) => {
            tracing::warn!(%error, "ignoring a pairing message this server cannot read");
            return;
        }
    };
    let hub = &server.hub;
    match envelope {
        PairEnvelope::Paired { room, partner, author } => {
            if !hub.paired_elsewhere(room, partner.clone(), author.into_author())
                && let Some(pairing) = hub.pairing()
            {
                let here = pairing.here(room);
                let envelope = PairEnvelope::PartnerLeft { room: partner.room, partner: here };
                pairing.tell(&partner.node, envelope);
            }
        }
        PairEnvelope::PartnerLeft { room, partner } => hub.partner_left_elsewhere(room, &partner),
        PairEnvelope::Message { room, partner, seq, author, kind, body } => {
            if let Some(body) = Body::from_parts(&kind, body) {
                hub.said_elsewhere(room, &partner, seq, author.into_author(), body);
            }
        }
        PairEnvelope::Deleted { room, partner, seq } => hub.deleted_in_pair(room, &partner, seq),
        PairEnvelope::Typing { room, partner, author } => {
            hub.typing_in_pair(room, &partner, &author.into_author());
        }
    }
}
