//! The hub: who is connected, the feed, the rooms for two, the pairing queue, and each
//! channel's place in its history.
//!
//! It is the one place that knows where a message must go. Publishing gives a message its
//! `seq` in its channel, encodes it once, pushes the same bytes into each recipient's bounded
//! outbound queue, keeps it among the channel's recent messages and hands it to the store;
//! nothing here waits. Everything runs under one `std::sync::Mutex`, held for a few
//! instructions and never across an `.await`. Pairing must look at the rooms and move a user
//! in one step, and a newcomer must get the history and then every later message with no gap
//! and no duplicate: one lock for all makes both simple, and with the work this small it is
//! not slower than finer locks.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use uuid::Uuid;

use crate::broker::{Broker, NodePresence, PRESENCE_TTL, Person};
use crate::frame::Frame;
use crate::message::{Author, Body, Channel, ChatMessage, now_ms};
use crate::metrics::Counters;
use crate::outbox::Outbox;
use crate::pairing::{PairEnvelope, Pairing, RoomAt};
use crate::protocol::{self, Notice};
use crate::sequencer::{Draft, Drafts, Sequenced};
use crate::store::{Change, Store, StoredRoom};

pub type PeerId = Uuid;

/// How many of a random room's newest messages can be taken back (`{"delete": SEQ}`).
pub const RANDOM_ROOM_KEEP: usize = 100;

/// Why the hub let go of a connection; the session turns it into a close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Its outbound queue was full: it stopped reading.
    SlowConsumer,
    /// The server is shutting down.
    ShuttingDown,
}

/// What a newcomer gets before the live messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catchup {
    /// The newest `--history` messages.
    Latest,
    /// Everything after this seq (`?after=SEQ`: a client resuming).
    After(u64),
}

/// The history settings, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    /// Messages a newcomer gets (`--history`).
    pub on_join: usize,
    /// Messages a resuming client gets at most (`--resume-max`).
    pub resume_max: usize,
}

struct Peer {
    outbox: Arc<Outbox>,
    channel: Channel,
    /// Who it speaks as (an account's display name kept current by [`Hub::update_profile`]).
    author: Author,
    /// Fired when the hub drops this peer on its own initiative.
    evict: oneshot::Sender<Eviction>,
    /// In a cluster: a client that resumed past what this node had delivered in the channel
    /// (it came from a node that was ahead) has the messages up to this seq; they are not
    /// sent to it again when they arrive here.
    floor: Option<(Channel, u64)>,
}

impl Peer {
    /// Whether message `seq` of `channel` (0: not a message) is to be sent to this peer.
    fn wants(&self, channel: Channel, seq: u64) -> bool {
        let had = |(floor_channel, floor): (Channel, u64)| floor_channel == channel && seq <= floor;
        seq == 0 || !self.floor.is_some_and(had)
    }
}

/// A channel's place in its history: the next seq to give and, for a durable channel, the
/// newest messages (enough for a newcomer and for a resume), in seq order.
struct Log {
    next_seq: u64,
    recent: VecDeque<Arc<ChatMessage>>,
    capacity: usize,
    /// Every message the channel has is in `recent` (none was ever let go).
    complete: bool,
    /// Seqs older than `recent` taken back lately: the store may not have written their
    /// deletion yet, and must not be believed if it still has them.
    taken_back: VecDeque<u64>,
    /// In a cluster: messages that arrived before an earlier one of the channel, by seq,
    /// until it comes (or the gap filler reads it, or finds it deleted).
    held: BTreeMap<u64, Held>,
}

/// A message waiting for an earlier one (see [`Log::held`]).
struct Held {
    message: Arc<ChatMessage>,
    /// Its sender, who does not get it back.
    skip: Option<PeerId>,
    arrived: Instant,
}

/// How many of a channel's older seqs taken back are remembered (see [`Log::taken_back`]):
/// far more than can be deleted while the store's writer catches up.
const TAKEN_BACK_KEPT: usize = 1024;

impl Log {
    fn new(next_seq: u64, capacity: usize) -> Log {
        Log {
            next_seq,
            recent: VecDeque::new(),
            capacity,
            complete: true,
            taken_back: VecDeque::new(),
            held: BTreeMap::new(),
        }
    }

    /// In a cluster: takes out the held messages that can go now, in seq order, keeping each
    /// among the recent ones. Those up to `known_below` go even with gaps before them: every
    /// seq below it has been read from the database, and one not found there was deleted.
    fn take_ready(&mut self, known_below: u64) -> Vec<Held> {
        let mut ready = Vec::new();
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            if seq < self.next_seq {
                // Delivered already (it came both from this node and through Redis).
                entry.remove();
            } else if seq == self.next_seq || seq <= known_below {
                let held = entry.remove();
                self.next_seq = seq + 1;
                self.keep(held.message.clone());
                ready.push(held);
            } else {
                break;
            }
        }
        self.next_seq = self.next_seq.max(known_below);
        ready
    }

    /// A random room's: its newest messages are kept only so that their authors can take them
    /// back; nobody is ever sent them again (a room keeps no history).
    fn random_room() -> Log {
        Log::new(1, RANDOM_ROOM_KEEP)
    }

    fn keep(&mut self, message: Arc<ChatMessage>) {
        if self.capacity == 0 {
            self.complete = false;
            return;
        }
        if self.recent.len() == self.capacity {
            self.recent.pop_front();
            self.complete = false;
        }
        self.recent.push_back(message);
    }

    /// The messages after `seq`, as far as they are here.
    fn after(&self, seq: u64) -> impl Iterator<Item = &Arc<ChatMessage>> {
        let start = self.recent.partition_point(|message| message.seq <= seq);
        self.recent.range(start..)
    }
}

struct State {
    peers: HashMap<PeerId, Peer>,
    /// One or two members each.
    rooms: HashMap<u64, Vec<PeerId>>,
    /// Rooms with one member waiting for a partner; the oldest is filled first.
    waiting: BTreeSet<u64>,
    next_room: u64,
    logs: HashMap<Channel, Log>,
    /// The named rooms, by name.
    named: BTreeMap<String, NamedRoom>,
    /// When each author's typing was last relayed (pruned as it grows).
    typing: HashMap<Arc<str>, Instant>,
    /// The feed's `{"who"}` answer and when it was made: counting the feed walks every
    /// connection, so it is done at most once per [`FEED_WHO_EVERY`].
    feed_who: Option<(Instant, Frame)>,
    /// In a cluster: who is on the other nodes, as their last heartbeats said.
    elsewhere: Elsewhere,
    /// In a cluster: how random rooms find partners on any node (see [`pairing`](crate::pairing)).
    pairing: Option<Arc<Pairing>>,
    /// In a cluster: rooms whose one member is on (or on its way to) Redis' waiting list, with
    /// the author its entry was made for (withdrawing needs the same entry).
    seeking: HashMap<u64, Author>,
    /// Of those, the rooms whose member asked for a partner and has not been told it waits yet
    /// (a member whose partner left is told only that, as on one node).
    untold: HashSet<u64>,
    /// In a cluster: rooms whose partner is on another node.
    partners: HashMap<u64, Partner>,
    closed: bool,
}

/// The partner, on another node, of a random room here.
struct Partner {
    at: RoomAt,
    author: Author,
    /// When they were paired (see [`Hub::nodes_alive`]).
    since: Instant,
    /// The partner's newest messages: their seq in its room, and here (for a deletion).
    seqs: VecDeque<(u64, u64)>,
}

/// The people on the other nodes of a cluster (see [`Hub::set_people_elsewhere`]).
#[derive(Default)]
struct Elsewhere {
    feed: Vec<Author>,
    /// By room name.
    rooms: HashMap<String, Vec<Author>>,
}

/// The feed's `{"who"}` answer is made at most this often (a flood of them from thousands of
/// connections would otherwise walk the whole feed each time, under the lock).
const FEED_WHO_EVERY: Duration = Duration::from_secs(1);

/// A person's `{"typing"}` is relayed at most this often.
const TYPING_EVERY: Duration = Duration::from_secs(2);

struct NamedRoom {
    channel: Channel,
    topic: String,
    owner: String,
    /// Its connections, in the order they joined (two tabs of an account: twice).
    members: Vec<PeerId>,
}

/// A named room as `GET /api/rooms` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomInfo {
    pub name: String,
    pub topic: String,
    /// People in it now (an account's tabs count once).
    pub online: usize,
}

/// Why a named room was not created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomRefused {
    Taken,
    /// A cap; the text says which.
    Full(String),
}

/// What became of a `{"delete": SEQ}` the hub could look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Taken back, and everyone in the channel told.
    Done,
    /// Older than the messages the hub holds, in a channel the store keeps: the store must be
    /// asked for its author, then [`Hub::delete_stored`] finishes.
    InStore(Channel),
}

/// How many are where, for `/healthz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Census {
    pub feed: usize,
    pub rooms: usize,
    pub waiting: usize,
}

pub struct Hub {
    state: Mutex<State>,
    store: Arc<dyn Store>,
    limits: HistoryLimits,
    counters: Counters,
    /// In a cluster: where messages of durable channels go for their seq, instead of being
    /// stamped here (see [`sequencer`](crate::sequencer)), and how the other nodes hear of a
    /// deletion. Unset for a server alone.
    sequencer: OnceLock<(Arc<Drafts>, Arc<Broker>)>,
}

/// What became of a message handed to [`Hub::publish_acked`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Sent, with this seq.
    Sent(u64),
    /// On its way to the sequencer: the hub delivers it (and acknowledges it) once it has its
    /// seq.
    Sequencing,
    /// Not taken; the text says why.
    Refused(String),
    /// The sender is no longer connected.
    Gone,
}

impl Hub {
    /// A hub that goes on from what the store had: each durable channel's next seq and newest
    /// messages, as [`Store::load`] gives them.
    pub fn new(
        store: Arc<dyn Store>,
        limits: HistoryLimits,
        channels: Vec<(Channel, u64, Vec<ChatMessage>)>,
        rooms: Vec<StoredRoom>,
        counters: Counters,
    ) -> Hub {
        let capacity = limits.on_join.max(limits.resume_max);
        let mut logs = HashMap::new();
        logs.insert(Channel::Feed, Log::new(1, capacity));
        for (channel, next_seq, messages) in channels {
            let mut log = Log::new(next_seq, capacity);
            // Loaded as many as it holds: older ones may be in the store.
            log.complete = messages.len() < capacity;
            for message in messages {
                log.keep(Arc::new(message));
            }
            logs.insert(channel, log);
        }
        let mut state = State {
            peers: HashMap::new(),
            rooms: HashMap::new(),
            waiting: BTreeSet::new(),
            next_room: 0,
            logs,
            named: BTreeMap::new(),
            typing: HashMap::new(),
            feed_who: None,
            elsewhere: Elsewhere::default(),
            pairing: None,
            seeking: HashMap::new(),
            untold: HashSet::new(),
            partners: HashMap::new(),
            closed: false,
        };
        for room in rooms {
            state.add_room(room, capacity);
        }
        Hub { state: Mutex::new(state), store, limits, counters, sequencer: OnceLock::new() }
    }

    /// Cluster mode: from now on messages of durable channels get their seq from `drafts`,
    /// and deletions are told to the other nodes through `broker`.
    pub fn use_sequencer(&self, drafts: Arc<Drafts>, broker: Arc<Broker>) {
        let _ = self.sequencer.set((drafts, broker));
    }

    /// The sequencer, if `channel`'s messages must go through it.
    fn sequencer_for(&self, channel: Channel) -> Option<&Drafts> {
        self.sequencer.get().filter(|_| channel.is_durable()).map(|(drafts, _)| &**drafts)
    }

    /// In a cluster: message SEQ of `channel` was taken back on another node (which checked
    /// its author and told the store): it goes from the recent ones here, and everyone here in
    /// the channel is told.
    pub fn deleted_elsewhere(&self, channel: Channel, seq: u64) {
        let mut state = self.lock();
        let Some(log) = state.logs.get_mut(&channel) else { return };
        log.recent.retain(|message| message.seq != seq);
        if log.taken_back.len() == TAKEN_BACK_KEPT {
            log.taken_back.pop_front();
        }
        log.taken_back.push_back(seq);
        let frame = protocol::deleted_frame(channel.wire_name(), seq);
        let mut evicted = Vec::new();
        state.send_to_channel(channel, None, 0, &frame, &mut evicted);
        self.evict(&mut state, evicted);
    }

    /// In a cluster: messages with their seqs, from this node's sequencer or (through the
    /// broker) another node's. Each channel's go out in seq order: a later one is held until
    /// those before it come, one already delivered is dropped. A local sender is told
    /// `{"sent"}` if it asked, and does not get its message back.
    pub fn deliver_sequenced(&self, batch: &[Sequenced]) {
        let capacity = self.limits.on_join.max(self.limits.resume_max);
        let mut state = self.lock();
        let mut evicted = Vec::new();
        let now = Instant::now();
        for sequenced in batch {
            let message = &sequenced.message;
            if let Some((sender, true)) = sequenced.sender {
                state.send_to(sender, protocol::sent_frame(message.seq), &mut evicted);
            }
            // A named room another node created, that this one has not heard of yet.
            let log = state
                .logs
                .entry(message.channel)
                .or_insert_with(|| Log::new(message.seq, capacity));
            if message.seq < log.next_seq {
                continue;
            }
            let skip = sequenced.sender.map(|(sender, _)| sender);
            log.held.insert(message.seq, Held { message: message.clone(), skip, arrived: now });
            let ready = log.take_ready(0);
            self.send_ready(&mut state, ready, &mut evicted);
        }
        self.evict(&mut state, evicted);
    }

    fn send_ready(&self, state: &mut State, ready: Vec<Held>, evicted: &mut Vec<PeerId>) {
        for held in ready {
            let message = held.message;
            let (channel, seq) = (message.channel, message.seq);
            let sent = state.send_to_channel(channel, held.skip, seq, message.frame(), evicted);
            self.count(sent);
        }
    }

    /// In a cluster: the channels whose oldest held message has waited `older_than`, each with
    /// the range to read from the database (seqs above the first and below the second).
    pub fn gaps(&self, older_than: Duration) -> Vec<(Channel, u64, u64)> {
        let state = self.lock();
        let now = Instant::now();
        state
            .logs
            .iter()
            .filter_map(|(&channel, log)| {
                let (&seq, held) = log.held.first_key_value()?;
                (now - held.arrived >= older_than).then(|| (channel, log.next_seq - 1, seq))
            })
            .collect()
    }

    /// In a cluster: `found`, read from the database (oldest first), goes out in order with
    /// what was held; with `known_below`, every seq below it is known (a missing one was
    /// deleted), and so are those below the newest found.
    pub fn fill(&self, channel: Channel, found: Vec<ChatMessage>, known_below: Option<u64>) {
        let mut state = self.lock();
        let Some(log) = state.logs.get_mut(&channel) else { return };
        let newest = found.last().map_or(0, |message| message.seq + 1);
        let now = Instant::now();
        for message in found {
            if message.seq >= log.next_seq {
                let held = Held { message: Arc::new(message), skip: None, arrived: now };
                log.held.entry(held.message.seq).or_insert(held);
            }
        }
        let ready = log.take_ready(newest.max(known_below.unwrap_or(0)));
        let mut evicted = Vec::new();
        self.send_ready(&mut state, ready, &mut evicted);
        self.evict(&mut state, evicted);
    }

    /// Who is on this node, for the other nodes' counts: the feed's people and each named
    /// room's, each person once.
    pub fn presence(&self) -> NodePresence {
        let state = self.lock();
        let feed: Vec<PeerId> = state
            .peers
            .iter()
            .filter(|(_, peer)| peer.channel == Channel::Feed)
            .map(|(&id, _)| id)
            .collect();
        let people = |members: &[PeerId]| -> Vec<Person> {
            state.people(members).into_iter().map(Person::of).collect()
        };
        let rooms = state
            .named
            .iter()
            .filter(|(_, room)| !room.members.is_empty())
            .map(|(name, room)| (name.clone(), people(&room.members)))
            .collect();
        NodePresence { feed: people(&feed), rooms }
    }

    /// In a cluster: who is on the other nodes now (`others`, from their heartbeats). It
    /// counts in `{"who"}` and the rooms' online counts; in a named room here, someone who
    /// appeared there (and is not here already) is announced to its members as joined, someone
    /// who disappeared (left it, or their node died) as left.
    pub fn set_people_elsewhere(&self, others: Vec<NodePresence>) {
        let mut next = Elsewhere::default();
        for presence in others {
            next.feed.extend(presence.feed.into_iter().map(Person::into_author));
            for (name, people) in presence.rooms {
                let people = people.into_iter().map(Person::into_author);
                next.rooms.entry(name).or_default().extend(people);
            }
        }
        let mut state = self.lock();
        let mut evicted = Vec::new();
        let names: HashSet<String> =
            state.elsewhere.rooms.keys().chain(next.rooms.keys()).cloned().collect();
        for name in names {
            let Some(channel) = state.named.get(&name).map(|room| room.channel) else { continue };
            let before = state.elsewhere.rooms.get(&name).map_or(&[][..], Vec::as_slice);
            let after = next.rooms.get(&name).map_or(&[][..], Vec::as_slice);
            let ids = |people: &[Author]| -> HashSet<Arc<str>> {
                people.iter().map(|author| author.id.clone()).collect()
            };
            let (was, is) = (ids(before), ids(after));
            let mut changes: Vec<(bool, Author)> = Vec::new();
            changes
                .extend(after.iter().filter(|a| !was.contains(&a.id)).map(|a| (true, a.clone())));
            changes
                .extend(before.iter().filter(|a| !is.contains(&a.id)).map(|a| (false, a.clone())));
            let mut told = HashSet::new();
            for (joined, author) in changes {
                if state.present_here(channel, &author.id) || !told.insert(author.id.clone()) {
                    continue;
                }
                let frame = protocol::presence_frame(joined, &author);
                state.send_to_others(channel, &author.id, &frame, &mut evicted);
            }
        }
        state.elsewhere = next;
        self.evict(&mut state, evicted);
    }

    /// The last seq delivered in `channel`, if this node knows it.
    pub fn position(&self, channel: Channel) -> Option<u64> {
        self.lock().logs.get(&channel).map(|log| log.next_seq - 1)
    }

    /// Each durable channel and the last seq delivered in it (for the catch-up).
    pub fn positions(&self) -> Vec<(Channel, u64)> {
        let state = self.lock();
        let durable = state.logs.iter().filter(|(channel, _)| channel.is_durable());
        durable.map(|(&channel, log)| (channel, log.next_seq - 1)).collect()
    }

    /// One message, and how many copies of it were queued: two atomic adds per message, none
    /// per recipient.
    fn count(&self, copies: usize) {
        self.counters.messages.inc();
        self.counters.deliveries.inc_by(copies as u64);
    }

    /// Drops the slow consumers a fan-out found, and counts them.
    fn evict(&self, state: &mut State, evicted: Vec<PeerId>) {
        if !evicted.is_empty() {
            self.counters.evictions.inc_by(state.evict_all(evicted, Eviction::SlowConsumer));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the maps consistent enough to go on
        // (every change is a single insert or remove), so poisoning is not fatal.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts a new connection in the feed, after queueing what it missed (`catchup`): in one
    /// step, so every message published after the history follows it, none twice, none lost.
    /// Refused (`false`) once the server is shutting down.
    pub fn join(
        &self,
        id: PeerId,
        author: Author,
        outbox: Arc<Outbox>,
        evict: oneshot::Sender<Eviction>,
        catchup: Catchup,
    ) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        let mut floor = None;
        if let Some(log) = state.logs.get(&Channel::Feed) {
            let catchup = self.behind(log, Channel::Feed, catchup, &mut floor);
            for frame in catchup_frames(log, catchup, &self.limits) {
                // A queue too small for the history keeps what fits: the client can ask
                // for the rest page by page.
                if outbox.offer(frame).is_err() {
                    break;
                }
            }
        }
        let peer = Peer { outbox, channel: Channel::Feed, author, evict, floor };
        state.peers.insert(id, peer);
        true
    }

    /// In a cluster, a resume past the newest seq this node has delivered in `channel` is a
    /// client that saw more on a node that was ahead (not a wiped store, as it is for a server
    /// alone): it gets nothing now, and later only what follows its seq (`floor`).
    fn behind(
        &self,
        log: &Log,
        channel: Channel,
        catchup: Catchup,
        floor: &mut Option<(Channel, u64)>,
    ) -> Catchup {
        match catchup {
            Catchup::After(seq) if self.sequencer.get().is_some() && seq >= log.next_seq => {
                *floor = Some((channel, seq));
                Catchup::After(log.next_seq - 1)
            }
            catchup => catchup,
        }
    }

    /// Forgets a connection; a partner left alone in its room is told and waits there.
    pub fn leave(&self, id: PeerId) {
        let mut state = self.lock();
        let mut evicted = Vec::new();
        state.remove(id, &mut evicted);
        self.evict(&mut state, evicted);
    }

    /// The channel `id` is in now, if it is still connected.
    pub fn channel_of(&self, id: PeerId) -> Option<Channel> {
        self.lock().peers.get(&id).map(|peer| peer.channel)
    }

    /// Says `body` from `from` to everyone else in its channel; its seq, if it was sent.
    #[cfg(test)]
    pub fn publish(&self, from: PeerId, author: Author, body: Body) -> Option<u64> {
        match self.publish_acked(from, author, body, false) {
            Published::Sent(seq) => Some(seq),
            _ => None,
        }
    }

    /// Says `body` from `from` to everyone else in its channel. In a cluster a message of a
    /// durable channel goes to the sequencer first; `ack` then asks for `{"sent"}` once it
    /// has its seq (a server alone gives the seq at once, and the caller acknowledges).
    pub fn publish_acked(&self, from: PeerId, author: Author, body: Body, ack: bool) -> Published {
        let mut state = self.lock();
        let Some(channel) = state.peers.get(&from).map(|peer| peer.channel) else {
            return Published::Gone;
        };
        if let Some(sequencer) = self.sequencer_for(channel) {
            let sender = Some((from, ack));
            let draft = Draft { channel, author, body, late: false, sender, schedule: None };
            return match sequencer.send(draft) {
                Ok(()) => Published::Sequencing,
                Err(refused) => Published::Refused(refused.to_string()),
            };
        }
        let message = state.stamp(channel, author, body, false);
        let seq = message.seq;
        let mut evicted = Vec::new();
        let sent = state.send_to_channel(channel, Some(from), seq, message.frame(), &mut evicted);
        self.count(sent);
        state.tell_partner(channel, &message);
        if channel.is_durable() {
            self.store.record(Change::Message(message));
        }
        self.evict(&mut state, evicted);
        Published::Sent(seq)
    }

    /// Delivers a scheduled message to everyone in `channel` (its sender included). The
    /// store is told the schedule `id` is done in the same change that keeps the message.
    pub fn deliver_scheduled(
        &self,
        id: Option<u64>,
        channel: Channel,
        author: Author,
        body: Body,
        late: bool,
    ) {
        if let Some(sequencer) = self.sequencer_for(channel) {
            // Sent only if this node is the one that deletes the schedule's row.
            let draft = Draft { channel, author, body, late, sender: None, schedule: id };
            if let Err(refused) = sequencer.send(draft) {
                // Still in the database: the sweep of some node delivers it, late.
                tracing::warn!(?id, %refused, "a due schedule could not be sequenced now");
            }
            return;
        }
        let mut state = self.lock();
        if !state.logs.contains_key(&channel) {
            // A room that has emptied: nobody to deliver to, and never anyone again.
            if let Some(id) = id {
                self.store.record(Change::Delivered { id, message: None });
            }
            return;
        }
        let message = state.stamp(channel, author, body, late);
        let mut evicted = Vec::new();
        let seq = message.seq;
        let sent = state.send_to_channel(channel, None, seq, message.frame(), &mut evicted);
        self.count(sent);
        state.tell_partner(channel, &message);
        let durable = channel.is_durable().then_some(message);
        match (id, durable) {
            (Some(id), message) => self.store.record(Change::Delivered { id, message }),
            (None, Some(message)) => self.store.record(Change::Message(message)),
            (None, None) => {}
        }
        self.evict(&mut state, evicted);
    }

    /// `{"history": {"before": SEQ}}`, answered from the recent messages when they reach
    /// back far enough; `None` when the store must be asked.
    pub fn page(
        &self,
        channel: Channel,
        before: u64,
        limit: usize,
    ) -> Option<Vec<Arc<ChatMessage>>> {
        if !channel.is_durable() {
            // A random room keeps no history (what it holds is only for taking back).
            return Some(Vec::new());
        }
        let state = self.lock();
        let log = state.logs.get(&channel)?;
        let end = log.recent.partition_point(|message| message.seq < before);
        let start = match end.checked_sub(limit) {
            Some(start) => start,
            None if log.complete => 0,
            None => return None,
        };
        Some(log.recent.range(start..end).cloned().collect())
    }

    /// `{"delete": SEQ}` from `from`, whose messages are those whose author id is `owner`:
    /// takes message SEQ of its current channel out of the recent ones and the store, and
    /// tells everyone in the channel (`from` included). A message older than the recent ones
    /// of a channel the store keeps is left to the caller to look up there (never under this
    /// lock). The error is the refusal's text.
    pub fn delete(&self, from: PeerId, owner: &str, seq: u64) -> Result<Deletion, String> {
        let mut state = self.lock();
        let Some(channel) = state.peers.get(&from).map(|peer| peer.channel) else {
            return Ok(Deletion::Done);
        };
        let Some(log) = state.logs.get_mut(&channel) else { return Err(unknown_message(seq)) };
        let index = log.recent.partition_point(|message| message.seq < seq);
        match log.recent.get(index) {
            Some(message) if message.seq == seq => {
                if *message.author.id != *owner {
                    return Err(not_yours(seq));
                }
                log.recent.remove(index);
            }
            // Before everything kept here, and some were let go: it may be in the store.
            _ if index == 0 && !log.complete && seq > 0 && seq < log.next_seq => {
                if channel.is_durable() {
                    return Ok(Deletion::InStore(channel));
                }
                return Err(format!(
                    "delete: message {seq} is too old to take back (only the newest {} can be)",
                    log.capacity
                ));
            }
            _ => return Err(unknown_message(seq)),
        }
        self.announce_deletion(&mut state, from, channel, seq);
        Ok(Deletion::Done)
    }

    /// Finishes a [`Deletion::InStore`]: `author` is the id of the author of message SEQ of
    /// `channel` as the store has it (`None`: it has no such message).
    pub fn delete_stored(
        &self,
        from: PeerId,
        owner: &str,
        channel: Channel,
        seq: u64,
        author: Option<&str>,
    ) -> Result<(), String> {
        let mut state = self.lock();
        let Some(log) = state.logs.get_mut(&channel) else { return Err(unknown_message(seq)) };
        match author {
            // Taken back already: the store's writer has not caught up yet.
            _ if log.taken_back.contains(&seq) => return Err(unknown_message(seq)),
            None => return Err(unknown_message(seq)),
            Some(author) if author != owner => return Err(not_yours(seq)),
            Some(_) => {}
        }
        if log.taken_back.len() == TAKEN_BACK_KEPT {
            log.taken_back.pop_front();
        }
        log.taken_back.push_back(seq);
        self.announce_deletion(&mut state, from, channel, seq);
        Ok(())
    }

    /// Tells everyone in `channel` that message SEQ is gone (and `from`, if it has moved on
    /// meanwhile), and the store to forget it.
    fn announce_deletion(&self, state: &mut State, from: PeerId, channel: Channel, seq: u64) {
        let frame = protocol::deleted_frame(channel.wire_name(), seq);
        let mut evicted = Vec::new();
        state.send_to_channel(channel, None, 0, &frame, &mut evicted);
        if state.peers.get(&from).is_some_and(|peer| peer.channel != channel) {
            state.send_to(from, frame, &mut evicted);
        }
        if let (Channel::Room(room), Some(pairing)) = (channel, &state.pairing)
            && let Some(partner) = state.partners.get(&room)
        {
            let envelope =
                PairEnvelope::Deleted { room: partner.at.room, partner: pairing.here(room), seq };
            pairing.tell(&partner.at.node, envelope);
        }
        if channel.is_durable() {
            self.store.record(Change::Deleted { channel, seq });
            if let Some((_, broker)) = self.sequencer.get() {
                broker.deleted(channel, seq);
            }
        }
        self.evict(state, evicted);
    }

    /// An account's new display name or picture (`name` is its display name now): each of its
    /// connections speaks with that name from now on (presence, `who`, typing), and everyone
    /// in a channel where one of them is, and each of them, is told once with a
    /// `{"profile"}` frame; in the feed that is everyone there, as a deletion is.
    pub fn update_profile(&self, id: &str, name: Arc<str>) {
        let mut state = self.lock();
        let mut channels = HashSet::new();
        let mut recipients = HashSet::new();
        for (&peer_id, peer) in state.peers.iter_mut() {
            if *peer.author.id == *id {
                peer.author.name = Some(name.clone());
                channels.insert(peer.channel);
                recipients.insert(peer_id);
            }
        }
        for channel in channels {
            if channel == Channel::Feed {
                let feed = state.peers.iter().filter(|(_, peer)| peer.channel == Channel::Feed);
                recipients.extend(feed.map(|(&peer_id, _)| peer_id));
            } else {
                recipients.extend(state.members_of(channel));
            }
        }
        let frame = protocol::profile_frame(id, &name);
        let mut evicted = Vec::new();
        for peer_id in recipients {
            state.send_to(peer_id, frame.clone(), &mut evicted);
        }
        self.evict(&mut state, evicted);
    }

    /// `{"channel": "random"}`: pairs `id` with someone waiting alone, or opens a room for
    /// `id` to wait in. Already in a room: only tells `id` its status again.
    pub fn join_random(&self, id: PeerId) {
        let mut state = self.lock();
        let state = &mut *state;
        let mut evicted = Vec::new();
        let Some(peer) = state.peers.get(&id) else { return };
        if let Channel::Room(room) = peer.channel {
            let paired = state.rooms.get(&room).map(Vec::len) == Some(2)
                || state.partners.contains_key(&room);
            let notice = if paired { Notice::Paired } else { Notice::Waiting };
            state.send_to(id, notice.frame(), &mut evicted);
        } else if state.pairing.is_some() && state.waiting.is_empty() {
            // In a cluster the partner may be on any node: Redis' waiting list decides, and
            // the frames follow once it has (see `waiting_in_cluster`, `paired_elsewhere`).
            state.next_room += 1;
            let room = state.next_room;
            state.logs.insert(Channel::Room(room), Log::random_room());
            state.rooms.insert(room, vec![id]);
            if let Some(peer) = state.peers.get_mut(&id) {
                peer.channel = Channel::Room(room);
            }
            state.untold.insert(room);
            state.seek(room);
        } else {
            let room = match state.waiting.pop_first() {
                Some(room) => room,
                None => {
                    state.next_room += 1;
                    state.waiting.insert(state.next_room);
                    state.logs.insert(Channel::Room(state.next_room), Log::random_room());
                    state.next_room
                }
            };
            if let Some(peer) = state.peers.get_mut(&id) {
                peer.channel = Channel::Room(room);
            }
            let members = state.rooms.entry(room).or_default();
            members.push(id);
            if members.len() == 2 {
                state.announce_pair(room, &mut evicted);
            } else {
                state.send_to(id, Notice::Waiting.frame(), &mut evicted);
            }
        }
        self.evict(state, evicted);
    }

    /// In a cluster: pairs across nodes through `pairing` from now on.
    pub fn use_pairing(&self, pairing: Arc<Pairing>) {
        self.lock().pairing = Some(pairing);
    }

    pub fn pairing(&self) -> Option<Arc<Pairing>> {
        self.lock().pairing.clone()
    }

    /// In a cluster: whether `room` still waits for Redis to find it a partner.
    pub fn is_seeking(&self, room: u64) -> bool {
        self.lock().seeking.contains_key(&room)
    }

    /// In a cluster: `room`'s member is on Redis' waiting list now, and is told it waits.
    pub fn waiting_in_cluster(&self, room: u64) {
        let mut state = self.lock();
        let mut evicted = Vec::new();
        if let (true, Some(&[member])) =
            (state.untold.remove(&room), state.rooms.get(&room).map(Vec::as_slice))
        {
            state.send_to(member, Notice::Waiting.frame(), &mut evicted);
        }
        self.evict(&mut state, evicted);
    }

    /// Redis could not be asked: `room` pairs on this node, as with a server alone.
    pub fn pair_locally(&self, room: u64) {
        let mut state = self.lock();
        let state = &mut *state;
        let mut evicted = Vec::new();
        if state.seeking.remove(&room).is_some() {
            match state.waiting.pop_first() {
                Some(older) => state.pair_rooms(older, room, &mut evicted),
                None => {
                    state.waiting.insert(room);
                    let member = state.rooms.get(&room).and_then(|members| members.first());
                    if let (true, Some(&member)) = (state.untold.remove(&room), member) {
                        state.send_to(member, Notice::Waiting.frame(), &mut evicted);
                    }
                }
            }
        }
        self.evict(state, evicted);
    }

    /// In a cluster: Redis matched `room` with `older`, waiting on this node too.
    pub fn pair_here(&self, older: u64, room: u64) {
        let mut state = self.lock();
        let mut evicted = Vec::new();
        let (older_waits, room_waits) =
            (state.seeking.remove(&older).is_some(), state.seeking.remove(&room).is_some());
        match (older_waits, room_waits) {
            (true, true) => state.pair_rooms(older, room, &mut evicted),
            // One left meanwhile (its entry was taken): the other looks again.
            (true, false) => state.seek(older),
            (false, true) => state.seek(room),
            (false, false) => {}
        }
        self.evict(&mut state, evicted);
    }

    /// In a cluster: `room` is paired with `partner` on another node, where `author` waits
    /// or arrived; its member is told as for a pair here. `false`: it left meanwhile.
    pub fn paired_elsewhere(&self, room: u64, partner: RoomAt, author: Author) -> bool {
        let mut state = self.lock();
        let mut evicted = Vec::new();
        let Some(&[member]) = state.rooms.get(&room).map(Vec::as_slice) else { return false };
        if state.seeking.remove(&room).is_none() {
            return false;
        }
        state.untold.remove(&room);
        tracing::info!(room, node = %partner.node, partner = partner.room, "paired across nodes");
        state.send_to(member, Notice::Paired.frame(), &mut evicted);
        if state.peers.get(&member).is_some_and(|peer| peer.author.id != author.id) {
            state.send_to(member, protocol::presence_frame(true, &author), &mut evicted);
        }
        let since = Instant::now();
        let partner = Partner { at: partner, author, since, seqs: VecDeque::new() };
        state.partners.insert(room, partner);
        self.evict(&mut state, evicted);
        true
    }

    /// In a cluster: the partner of `room`, `partner` on another node, left; its member is
    /// told, and waits again.
    pub fn partner_left_elsewhere(&self, room: u64, partner: &RoomAt) {
        let mut state = self.lock();
        let mut evicted = Vec::new();
        if state.partners.get(&room).is_some_and(|kept| kept.at == *partner) {
            state.partner_gone(room, &mut evicted);
        }
        self.evict(&mut state, evicted);
    }

    /// In a cluster: the partner of `room`, `partner` on another node, said `body`; it is
    /// numbered in `room` here, as a message said here is.
    pub fn said_elsewhere(
        &self,
        room: u64,
        partner: &RoomAt,
        their_seq: u64,
        author: Author,
        body: Body,
    ) {
        let mut state = self.lock();
        if !state.partners.get(&room).is_some_and(|kept| kept.at == *partner) {
            return;
        }
        let channel = Channel::Room(room);
        let message = state.stamp(channel, author, body, false);
        if let Some(kept) = state.partners.get_mut(&room) {
            if kept.seqs.len() == RANDOM_ROOM_KEEP {
                kept.seqs.pop_front();
            }
            kept.seqs.push_back((their_seq, message.seq));
        }
        let mut evicted = Vec::new();
        let sent = state.send_to_channel(channel, None, message.seq, message.frame(), &mut evicted);
        self.count(sent);
        self.evict(&mut state, evicted);
    }

    /// In a cluster: the partner of `room`, on another node, took back its message numbered
    /// `their_seq` there: gone here too, under the number it has here.
    pub fn deleted_in_pair(&self, room: u64, partner: &RoomAt, their_seq: u64) {
        let mut state = self.lock();
        let Some(kept) = state.partners.get(&room).filter(|kept| kept.at == *partner) else {
            return;
        };
        let Some(&(_, seq)) = kept.seqs.iter().find(|(theirs, _)| *theirs == their_seq) else {
            return;
        };
        let channel = Channel::Room(room);
        if let Some(log) = state.logs.get_mut(&channel) {
            log.recent.retain(|message| message.seq != seq);
        }
        let mut evicted = Vec::new();
        let frame = protocol::deleted_frame(channel.wire_name(), seq);
        state.send_to_channel(channel, None, 0, &frame, &mut evicted);
        self.evict(&mut state, evicted);
    }

    /// In a cluster: the partner of `room`, on another node, is typing.
    pub fn typing_in_pair(&self, room: u64, partner: &RoomAt, author: &Author) {
        let mut state = self.lock();
        if !state.partners.get(&room).is_some_and(|kept| kept.at == *partner) {
            return;
        }
        let mut evicted = Vec::new();
        let frame = protocol::typing_frame(author);
        state.send_to_others(Channel::Room(room), &author.id, &frame, &mut evicted);
        self.evict(&mut state, evicted);
    }

    /// In a cluster: the nodes whose presence keys a heartbeat that started at `checked` found.
    /// A partner on any other node is gone (its node died, or Redis is away): told as left.
    /// Only a pair at least `PRESENCE_TTL` old: a node just started may not have written its
    /// key yet, and a node that dies keeps its key that long anyway, so this delays nothing.
    pub fn nodes_alive(&self, alive: &HashSet<String>, checked: Instant) {
        let mut state = self.lock();
        let settled = |since: Instant| checked.saturating_duration_since(since) >= PRESENCE_TTL;
        let gone: Vec<u64> = state
            .partners
            .iter()
            .filter(|(_, partner)| settled(partner.since) && !alive.contains(&partner.at.node))
            .map(|(&room, _)| room)
            .collect();
        let mut evicted = Vec::new();
        for room in gone {
            state.partner_gone(room, &mut evicted);
        }
        self.evict(&mut state, evicted);
    }

    /// In a cluster, subscribed again after Redis was away: every room waiting here goes on
    /// the waiting list again (Redis may have restarted empty, or dropped them meanwhile), and
    /// so do those that waited on this node alone while it was away.
    pub fn seek_again(&self) {
        let mut state = self.lock();
        let mut rooms: Vec<u64> = state.seeking.keys().copied().collect();
        if state.pairing.is_some() {
            rooms.extend(std::mem::take(&mut state.waiting));
        }
        for room in rooms {
            state.seek(room);
        }
    }

    /// `{"channel": "feed"}`: leaves any room and returns to the feed.
    pub fn join_feed(&self, id: PeerId) {
        let mut state = self.lock();
        let mut evicted = Vec::new();
        state.leave_room(id, &mut evicted);
        if let Some(peer) = state.peers.get_mut(&id) {
            peer.channel = Channel::Feed;
        }
        state.send_to(id, Notice::FeedJoined.frame(), &mut evicted);
        self.evict(&mut state, evicted);
    }

    /// A new named room, if its name is free and the caps allow: `per_account` rooms of one
    /// owner, `total` in all.
    pub fn add_room(
        &self,
        room: StoredRoom,
        per_account: usize,
        total: usize,
    ) -> Result<(), RoomRefused> {
        let mut state = self.lock();
        if state.named.contains_key(&room.name) {
            return Err(RoomRefused::Taken);
        }
        if state.named.len() >= total {
            return Err(RoomRefused::Full(format!("the server already has {total} rooms")));
        }
        let owned = state.named.values().filter(|kept| kept.owner == room.owner).count();
        if owned >= per_account {
            return Err(RoomRefused::Full(format!("you already have {per_account} rooms")));
        }
        state.add_room(room, self.limits.on_join.max(self.limits.resume_max));
        Ok(())
    }

    /// Takes back a room just added (the store could not keep it); nobody can be in it yet
    /// but a joiner as quick as the store: it is sent back to the feed.
    pub fn remove_room(&self, name: &str) {
        let mut state = self.lock();
        let Some(room) = state.named.get(name) else { return };
        let (channel, members) = (room.channel, room.members.clone());
        for id in members {
            if let Some(peer) = state.peers.get_mut(&id) {
                peer.channel = Channel::Feed;
            }
        }
        state.named.remove(name);
        state.logs.remove(&channel);
    }

    /// Every named room, by name, with how many people are in it.
    pub fn rooms(&self) -> Vec<RoomInfo> {
        let state = self.lock();

        state
            .named
            .iter()
            .map(|(name, room)| RoomInfo {
                name: name.clone(),
                topic: room.topic.clone(),
                online: count_people(
                    state.people(&room.members),
                    state.people_elsewhere(room.channel),
                ),
            })
            .collect()
    }

    /// `{"channel": "room", "room": NAME, "after"?: SEQ}`: leaves any room, enters the named
    /// room `name`, and is sent its members, then its newest messages or (`after`) what it
    /// missed, as a newcomer to the feed or a resume is. The error is the refusal's text.
    pub fn join_named(
        &self,
        id: PeerId,
        author: &Author,
        name: &str,
        catchup: Catchup,
    ) -> Result<(), String> {
        let mut state = self.lock();
        let Some(channel) = state.named.get(name).map(|room| room.channel) else {
            return Err(format!("there is no room named {name:?}"));
        };
        let Some(peer) = state.peers.get_mut(&id) else { return Ok(()) };
        // Its display name as it is now (an account may have been renamed).
        peer.author = author.clone();
        let already = peer.channel == channel;
        let mut evicted = Vec::new();
        if !already {
            state.leave_room(id, &mut evicted);
            if let Some(peer) = state.peers.get_mut(&id) {
                peer.channel = channel;
            }
            if let Some(room) = state.named.get_mut(name) {
                room.members.push(id);
            }
            if !state.present(channel, &author.id, id) {
                let frame = protocol::presence_frame(true, author);
                state.send_to_others(channel, &author.id, &frame, &mut evicted);
            }
        }
        let members = state.members_of(channel).to_vec();
        let mut people = state.people(&members);
        let mut seen: HashSet<&str> = people.iter().map(|author| &*author.id).collect();
        let elsewhere = state.people_elsewhere(channel);
        people.extend(elsewhere.iter().filter(|author| seen.insert(&author.id)));
        let joined = protocol::room_joined_frame(name, &people);
        state.send_to(id, joined, &mut evicted);
        if already {
            // Told again where it is; its history it has.
            self.evict(&mut state, evicted);
            return Ok(());
        }
        if let Some(log) = state.logs.get(&channel) {
            let mut floor = None;
            let catchup = self.behind(log, channel, catchup, &mut floor);
            for frame in catchup_frames(log, catchup, &self.limits) {
                state.send_to(id, frame, &mut evicted);
            }
            if let Some(peer) = state.peers.get_mut(&id) {
                peer.floor = floor;
            }
        }
        self.evict(&mut state, evicted);
        Ok(())
    }

    /// `{"typing": true}`: tells the others in `id`'s room (named or random; never the feed)
    /// that its author is typing, at most once per [`TYPING_EVERY`] per author.
    pub fn typing(&self, id: PeerId, author: &Author) {
        let mut state = self.lock();
        let Some(peer) = state.peers.get_mut(&id) else { return };
        peer.author = author.clone();
        let channel = peer.channel;
        if channel == Channel::Feed {
            return;
        }
        let now = Instant::now();
        if state.typing.get(&author.id).is_some_and(|last| now - *last < TYPING_EVERY) {
            return;
        }
        if state.typing.len() >= 4096 {
            state.typing.retain(|_, last| now - *last < TYPING_EVERY);
        }
        state.typing.insert(author.id.clone(), now);
        let mut evicted = Vec::new();
        state.send_to_others(channel, &author.id, &protocol::typing_frame(author), &mut evicted);
        if let (Channel::Room(room), Some(pairing)) = (channel, &state.pairing)
            && let Some(partner) = state.partners.get(&room)
        {
            let envelope = PairEnvelope::Typing {
                room: partner.at.room,
                partner: pairing.here(room),
                author: Person::of(author),
            };
            pairing.tell(&partner.at.node, envelope);
        }
        self.evict(&mut state, evicted);
        if let (Some((_, broker)), Channel::Named(_)) = (self.sequencer.get(), channel) {
            broker.typing(channel, author);
        }
    }

    /// In a cluster: `author` is typing in the named room `channel` on another node (which
    /// paced it): the others here are told.
    pub fn typing_elsewhere(&self, channel: Channel, author: &Author) {
        let mut state = self.lock();
        let mut evicted = Vec::new();
        state.send_to_others(channel, &author.id, &protocol::typing_frame(author), &mut evicted);
        self.evict(&mut state, evicted);
    }

    /// `{"who": true}`: who is in `id`'s channel, the feed included (each person once).
    pub fn who(&self, id: PeerId) -> Frame {
        let mut state = self.lock();
        let members: Vec<PeerId> = match state.peers.get(&id).map(|peer| peer.channel) {
            Some(Channel::Feed) => {
                if let Some((made, frame)) = &state.feed_who
                    && made.elapsed() < FEED_WHO_EVERY
                {
                    return frame.clone();
                }
                let feed = state.peers.iter().filter(|(_, peer)| peer.channel == Channel::Feed);
                let members: Vec<PeerId> = feed.map(|(&id, _)| id).collect();
                let frame =
                    who_frame(state.people(&members), state.people_elsewhere(Channel::Feed));
                state.feed_who = Some((Instant::now(), frame.clone()));
                return frame;
            }
            Some(channel) => state.members_of(channel).to_vec(),
            None => Vec::new(),
        };
        let channel = state.peers.get(&id).map(|peer| peer.channel);
        let elsewhere = channel.map_or(&[][..], |channel| state.people_elsewhere(channel));
        who_frame(state.people(&members), elsewhere)
    }

    pub fn census(&self) -> Census {
        let state = self.lock();
        Census {
            feed: state.peers.values().filter(|peer| peer.channel == Channel::Feed).count(),
            rooms: state.rooms.len(),
            waiting: state.waiting.len() + state.seeking.len(),
        }
    }

    /// Lets go of everyone (each session then sends its close frame) and admits nobody new.
    pub fn shut_down(&self) {
        let mut state = self.lock();
        state.closed = true;
        // Nobody is told "partner_left" on the way out: everyone is leaving.
        state.rooms.clear();
        state.waiting.clear();
        state.seeking.clear();
        state.untold.clear();
        state.partners.clear();
        for room in state.named.values_mut() {
            room.members.clear();
        }
        let everyone: Vec<PeerId> = state.peers.keys().copied().collect();
        state.evict_all(everyone, Eviction::ShuttingDown);
    }
}

/// The frames a newcomer gets before the live ones.
fn catchup_frames(log: &Log, catchup: Catchup, limits: &HistoryLimits) -> Vec<Frame> {
    let newest = log.next_seq - 1;
    let newest_kept = |count: usize| log.recent.range(log.recent.len().saturating_sub(count)..);
    let (notice, messages): (Option<Frame>, Vec<&Arc<ChatMessage>>) = match catchup {
        Catchup::Latest => (None, newest_kept(limits.on_join).collect()),
        Catchup::After(seq) if seq > newest => {
            // The client saw more than there is: the store was wiped or replaced.
            let notice = protocol::history_reset_frame(seq, newest);
            (Some(notice), newest_kept(limits.on_join).collect())
        }
        Catchup::After(seq) => {
            let missed: Vec<_> = log.after(seq).collect();
            // Everything after `seq` is here if something at or before it is, or if nothing
            // was ever let go. (Seqs may have gaps, after a crash: count messages, not seqs.)
            let whole = missed.len() < log.recent.len() || log.complete;
            if whole && missed.len() <= limits.resume_max {
                (None, missed)
            } else {
                let sent = &missed[missed.len().saturating_sub(limits.resume_max)..];
                let skipped = whole.then(|| (missed.len() - sent.len()) as u64);
                let first = sent.first().map_or(log.next_seq, |message| message.seq);
                (Some(protocol::history_skipped_frame(seq, skipped, first)), sent.to_vec())
            }
        }
    };
    notice
        .into_iter()
        .chain(messages.into_iter().map(|message| message.history_frame().clone()))
        .collect()
}

/// `{"who"}`: this node's `people` and those `elsewhere` in the cluster, each person once.
fn who_frame<'a>(mut people: Vec<&'a Author>, elsewhere: &'a [Author]) -> Frame {
    let mut seen: HashSet<&str> = people.iter().map(|author| &*author.id).collect();
    people.extend(elsewhere.iter().filter(|author| seen.insert(&author.id)));
    protocol::who_frame(people.len(), &people)
}

/// How many people are `here` and `elsewhere` together, each once.
fn count_people(here: Vec<&Author>, elsewhere: &[Author]) -> usize {
    let mut seen: HashSet<&str> = here.iter().map(|author| &*author.id).collect();
    here.len() + elsewhere.iter().filter(|author| seen.insert(&author.id)).count()
}

fn unknown_message(seq: u64) -> String {
    format!("delete: there is no message {seq} in this channel")
}

fn not_yours(seq: u64) -> String {
    format!("delete: message {seq} is not yours")
}

impl State {
    fn add_room(&mut self, room: StoredRoom, capacity: usize) {
        let channel = Channel::named(&room.name);
        self.logs.entry(channel).or_insert_with(|| Log::new(1, capacity));
        let named =
            NamedRoom { channel, topic: room.topic, owner: room.owner, members: Vec::new() };
        self.named.insert(room.name, named);
    }

    /// The connections in a named or random room (none for the feed: it is not listed).
    fn members_of(&self, channel: Channel) -> &[PeerId] {
        match channel {
            Channel::Named(_) => {
                self.named.get(channel.wire_name()).map_or(&[], |room| room.members.as_slice())
            }
            Channel::Room(room) => self.rooms.get(&room).map_or(&[], Vec::as_slice),
            Channel::Feed => &[],
        }
    }

    /// Whether `author` has a connection other than `except` in `channel` (a room), here or
    /// (a named room) on another node of a cluster.
    fn present(&self, channel: Channel, author: &str, except: PeerId) -> bool {
        let here = self.members_of(channel).iter().any(|&member| {
            member != except
                && self.peers.get(&member).is_some_and(|peer| *peer.author.id == *author)
        });
        here || self.people_elsewhere(channel).iter().any(|person| *person.id == *author)
    }

    /// Whether `author` has a connection in `channel` on this node.
    fn present_here(&self, channel: Channel, author: &str) -> bool {
        self.members_of(channel)
            .iter()
            .any(|member| self.peers.get(member).is_some_and(|peer| *peer.author.id == *author))
    }

    /// The people in `channel` on the other nodes of a cluster, as last heard.
    fn people_elsewhere(&self, channel: Channel) -> &[Author] {
        match channel {
            Channel::Feed => &self.elsewhere.feed,
            Channel::Named(_) => {
                self.elsewhere.rooms.get(channel.wire_name()).map_or(&[], Vec::as_slice)
            }
            // A partner on another node counts in `{"who"}` as one here does.
            Channel::Room(room) => self
                .partners
                .get(&room)
                .map_or(&[], |partner| std::slice::from_ref(&partner.author)),
        }
    }

    /// Queues `frame` for everyone in a room whose author is not `author`.
    fn send_to_others(
        &self,
        channel: Channel,
        author: &str,
        frame: &Frame,
        evicted: &mut Vec<PeerId>,
    ) {
        for &member in self.members_of(channel) {
            if let Some(peer) = self.peers.get(&member)
                && *peer.author.id != *author
            {
                offer(member, peer, frame, evicted);
            }
        }
    }

    /// The distinct authors among `members`, in the order they joined.
    fn people(&self, members: &[PeerId]) -> Vec<&Author> {
        let mut seen = HashSet::new();
        members
            .iter()
            .filter_map(|id| self.peers.get(id))
            .map(|peer| &peer.author)
            .filter(|author| seen.insert(author.id.clone()))
            .collect()
    }

    /// Gives a message its seq in `channel` and keeps it among the recent ones.
    fn stamp(
        &mut self,
        channel: Channel,
        author: Author,
        body: Body,
        late: bool,
    ) -> Arc<ChatMessage> {
        let log = self.logs.entry(channel).or_insert_with(Log::random_room);
        let seq = log.next_seq;
        log.next_seq += 1;
        let message = Arc::new(ChatMessage::new(channel, seq, author, body, now_ms(), late));
        log.keep(message.clone());
        message
    }

    /// Queues `frame` for everyone in `channel` but `skip` (and those who have message `seq`
    /// already; 0: the frame is not a message); says for how many.
    fn send_to_channel(
        &mut self,
        channel: Channel,
        skip: Option<PeerId>,
        seq: u64,
        frame: &Frame,
        evicted: &mut Vec<PeerId>,
    ) -> usize {
        let mut sent = 0;
        match channel {
            Channel::Feed => {
                for (&id, peer) in &self.peers {
                    if peer.channel == Channel::Feed && Some(id) != skip && peer.wants(channel, seq)
                    {
                        offer(id, peer, frame, evicted);
                        sent += 1;
                    }
                }
            }
            Channel::Named(key) => {
                let name = &key["room:".len()..];
                for &id in self.named.get(name).map(|room| &room.members).into_iter().flatten() {
                    if Some(id) != skip
                        && let Some(peer) = self.peers.get(&id)
                        && peer.wants(channel, seq)
                    {
                        offer(id, peer, frame, evicted);
                        sent += 1;
                    }
                }
            }
            Channel::Room(room) => {
                for &id in self.rooms.get(&room).into_iter().flatten() {
                    if Some(id) != skip
                        && let Some(peer) = self.peers.get(&id)
                        && peer.wants(channel, seq)
                    {
                        offer(id, peer, frame, evicted);
                        sent += 1;
                    }
                }
            }
        }
        sent
    }

    fn send_to(&self, id: PeerId, frame: Frame, evicted: &mut Vec<PeerId>) {
        if let Some(peer) = self.peers.get(&id) {
            offer(id, peer, &frame, evicted);
        }
    }

    /// Takes `id` out of any room; a partner left behind is told and waits for the next seeker.
    fn leave_room(&mut self, id: PeerId, evicted: &mut Vec<PeerId>) {
        let Some(peer) = self.peers.get(&id) else { return };
        let (channel, author) = (peer.channel, peer.author.clone());
        if !self.present(channel, &author.id, id) {
            // Its author's last connection here: the others are told it left.
            let frame = protocol::presence_frame(false, &author);
            self.send_to_others(channel, &author.id, &frame, evicted);
        }
        let room = match channel {
            Channel::Room(room) => room,
            Channel::Named(_) => {
                if let Some(room) = self.named.get_mut(channel.wire_name()) {
                    room.members.retain(|member| *member != id);
                }
                return;
            }
            Channel::Feed => return,
        };
        let Some(members) = self.rooms.get_mut(&room) else { return };
        members.retain(|member| *member != id);
        match members.first().copied() {
            Some(partner) => {
                self.send_to(partner, Notice::PartnerLeft.frame(), evicted);
                self.seek(room);
            }
            None => {
                self.rooms.remove(&room);
                self.waiting.remove(&room);
                self.logs.remove(&Channel::Room(room));
                self.untold.remove(&room);
                if let (Some(author), Some(pairing)) = (self.seeking.remove(&room), &self.pairing) {
                    pairing.withdraw(room, &author);
                }
                if let (Some(partner), Some(pairing)) = (self.partners.remove(&room), &self.pairing)
                {
                    let envelope = PairEnvelope::PartnerLeft {
                        room: partner.at.room,
                        partner: pairing.here(room),
                    };
                    pairing.tell(&partner.at.node, envelope);
                }
            }
        }
    }

    /// `room`, with one member, waits for a partner: on Redis' waiting list in a cluster (the
    /// answer comes back to the hub), else in this node's `waiting`.
    fn seek(&mut self, room: u64) {
        let Some(author) = self.alone_in(room) else { return };
        match &self.pairing {
            Some(pairing) => {
                pairing.seek(room, &author);
                self.seeking.insert(room, author);
            }
            None => {
                self.waiting.insert(room);
            }
        }
    }

    /// The author of `room`'s member, if it has exactly one.
    fn alone_in(&self, room: u64) -> Option<Author> {
        match self.rooms.get(&room).map(Vec::as_slice) {
            Some(&[member]) => self.peers.get(&member).map(|peer| peer.author.clone()),
            _ => None,
        }
    }

    /// The partner of `room` on another node is gone: its member is told, with the frames a
    /// partner leaving on this node gives, and waits again.
    fn partner_gone(&mut self, room: u64, evicted: &mut Vec<PeerId>) {
        let Some(partner) = self.partners.remove(&room) else { return };
        if let Some(&member) = self.rooms.get(&room).and_then(|members| members.first()) {
            if self.peers.get(&member).is_some_and(|peer| peer.author.id != partner.author.id) {
                self.send_to(member, protocol::presence_frame(false, &partner.author), evicted);
            }
            self.send_to(member, Notice::PartnerLeft.frame(), evicted);
        }
        self.seek(room);
    }

    /// A message said here in a random room goes to its partner on another node, if any.
    fn tell_partner(&self, channel: Channel, message: &ChatMessage) {
        let (Channel::Room(room), Some(pairing)) = (channel, &self.pairing) else { return };
        if let Some(partner) = self.partners.get(&room) {
            pairing.message(room, &partner.at, message.seq, &message.author, &message.body);
        }
    }

    /// Moves the one member of `room` into `older`, whose member waits alone, and tells both.
    fn pair_rooms(&mut self, older: u64, room: u64, evicted: &mut Vec<PeerId>) {
        let Some(moved) = self.rooms.remove(&room) else { return };
        self.logs.remove(&Channel::Room(room));
        self.waiting.remove(&room);
        self.untold.remove(&room);
        self.untold.remove(&older);
        for &id in &moved {
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.channel = Channel::Room(older);
            }
        }
        self.rooms.entry(older).or_default().extend(moved);
        self.announce_pair(older, evicted);
    }

    /// Tells both members of `room` they are paired, and each who the other is (unless both
    /// are tabs of one account).
    fn announce_pair(&mut self, room: u64, evicted: &mut Vec<PeerId>) {
        let Some(&[first, second]) = self.rooms.get(&room).map(Vec::as_slice) else { return };
        tracing::info!(room, first = %first.simple(), second = %second.simple(), "paired");
        for member in [first, second] {
            self.send_to(member, Notice::Paired.frame(), evicted);
        }
        for (to, about) in [(first, second), (second, first)] {
            let Some(about) = self.peers.get(&about).map(|peer| peer.author.clone()) else {
                continue;
            };
            if self.peers.get(&to).is_some_and(|peer| peer.author.id != about.id) {
                self.send_to(to, protocol::presence_frame(true, &about), evicted);
            }
        }
    }

    fn remove(&mut self, id: PeerId, evicted: &mut Vec<PeerId>) -> Option<Peer> {
        self.leave_room(id, evicted);
        self.peers.remove(&id)
    }

    /// Drops every peer in `evicted` and tells its session why. Dropping one may tell its
    /// partner, whose queue may be full too: the list grows until nobody else is affected.
    /// Says how many were dropped.
    fn evict_all(&mut self, mut evicted: Vec<PeerId>, why: Eviction) -> u64 {
        let mut dropped = 0;
        while let Some(id) = evicted.pop() {
            if let Some(peer) = self.remove(id, &mut evicted) {
                if why == Eviction::SlowConsumer {
                    tracing::warn!(id = %id.simple(), "disconnecting: outbound queue full (slow consumer)");
                }
                let _ = peer.evict.send(why);
                dropped += 1;
            }
        }
        dropped
    }
}

/// Queues `frame` for one peer without waiting. A full queue means the peer stopped reading:
/// it is evicted rather than allowed to grow the server's memory (see `outbox`).
fn offer(id: PeerId, peer: &Peer, frame: &Frame, evicted: &mut Vec<PeerId>) {
    if peer.outbox.offer(frame.clone()).is_err() {
        evicted.push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::collections::VecDeque;

    fn hub(on_join: usize, resume_max: usize) -> Hub {
        let store = Arc::new(MemoryStore::new(100));
        let limits = HistoryLimits { on_join, resume_max };
        Hub::new(store, limits, Vec::new(), Vec::new(), Counters::default())
    }

    /// A member joined with `catchup`, and its queue.
    fn member(hub: &Hub, catchup: Catchup) -> (PeerId, Arc<Outbox>) {
        member_as(hub, "x", catchup)
    }

    /// A member speaking as `author`.
    fn member_as(hub: &Hub, author: &str, catchup: Catchup) -> (PeerId, Arc<Outbox>) {
        let id = Uuid::new_v4();
        let outbox = Arc::new(Outbox::new(1000));
        let (evict, _) = oneshot::channel();
        assert!(hub.join(id, Author::from(author), outbox.clone(), evict, catchup));
        (id, outbox)
    }

    fn frames(outbox: &Outbox) -> Vec<serde_json::Value> {
        let mut batch = VecDeque::new();
        outbox.take_all(&mut batch);
        batch.iter().map(|frame| serde_json::from_str(frame.payload()).unwrap()).collect()
    }

    fn say(hub: &Hub, from: PeerId, count: usize) {
        let author = Author::from("a");
        for n in 0..count {
            hub.publish(from, author.clone(), Body::Text(n.to_string()));
        }
    }

    fn seqs(frames: &[serde_json::Value]) -> Vec<u64> {
        frames.iter().filter_map(|frame| frame["seq"].as_u64()).collect()
    }

    fn sequenced(seq: u64, sender: Option<(PeerId, bool)>) -> Sequenced {
        let body = Body::Text(format!("m{seq}"));
        let message = ChatMessage::new(Channel::Feed, seq, Author::from("a"), body, 0, false);
        Sequenced { message: Arc::new(message), sender }
    }

    #[test]
    fn in_a_cluster_each_channel_goes_out_in_seq_order_once_and_gaps_are_filled() {
        let hub = hub(3, 5);
        let (sender, sender_box) = member(&hub, Catchup::Latest);
        let (_, reader) = member(&hub, Catchup::Latest);
        // Its own message came back through Redis too, and another node's overtook it.
        let batch = [2, 1, 1, 2, 3].map(|seq| sequenced(seq, (seq == 1).then_some((sender, true))));
        hub.deliver_sequenced(&batch);
        assert_eq!(seqs(&frames(&reader)), [1, 2, 3]);
        let own = frames(&sender_box);
        assert_eq!(own[0]["sent"]["seq"], 1, "acknowledged once it has its seq");
        assert_eq!(seqs(&own), [2, 3], "a sender does not get its own message back");
        // 4 never comes (it was deleted): 5 and 6 wait until the database says so.
        hub.deliver_sequenced(&[sequenced(6, None), sequenced(5, None)]);
        assert!(seqs(&frames(&reader)).is_empty());
        assert!(hub.gaps(Duration::from_secs(60)).is_empty(), "not yet overdue");
        assert_eq!(hub.gaps(Duration::ZERO), [(Channel::Feed, 3, 5)]);
        hub.fill(Channel::Feed, Vec::new(), Some(5));
        assert_eq!(seqs(&frames(&reader)), [5, 6]);
        assert!(hub.gaps(Duration::ZERO).is_empty());
        // A catch-up brings what Redis lost, with a deleted one (8) missing.
        let found = [7, 9]
            .into_iter()
            .map(|seq| {
                let body = Body::Text(format!("m{seq}"));
                ChatMessage::new(Channel::Feed, seq, Author::from("a"), body, 0, false)
            })
            .collect();
        hub.fill(Channel::Feed, found, None);
        assert_eq!(seqs(&frames(&reader)), [7, 9]);
        assert_eq!(hub.position(Channel::Feed), Some(9));
        hub.deliver_sequenced(&[sequenced(9, None), sequenced(10, None)]);
        assert_eq!(seqs(&frames(&reader)), [10]);
    }

    #[test]
    fn in_a_cluster_a_resume_from_a_node_that_was_ahead_gets_only_what_follows() {
        let hub = hub(3, 5);
        hub.use_sequencer(Drafts::detached(), Arc::new(Broker::Local));
        hub.deliver_sequenced(&[1, 2, 3].map(|seq| sequenced(seq, None)));
        // It saw 5 on another node; this one has delivered 3 so far.
        let (_, resumed) = member(&hub, Catchup::After(5));
        assert!(frames(&resumed).is_empty(), "no reset: it saw more elsewhere");
        hub.deliver_sequenced(&[4, 5, 6].map(|seq| sequenced(seq, None)));
        assert_eq!(seqs(&frames(&resumed)), [6]);
        // A server alone still says its store was replaced.
        let alone = hub_alone_with(3);
        let (_, resumed) = member(&alone, Catchup::After(5));
        assert_eq!(frames(&resumed)[0]["history"]["reset"], true);
    }

    fn hub_alone_with(messages: usize) -> Hub {
        let hub = hub(3, 5);
        let (speaker, _) = member(&hub, Catchup::Latest);
        say(&hub, speaker, messages);
        hub
    }

    #[test]
    fn a_newcomer_gets_the_latest_then_live_and_a_resume_gets_what_it_missed() {
        let hub = hub(3, 5);
        let (speaker, _) = member(&hub, Catchup::Latest);
        say(&hub, speaker, 8);
        let (_, newcomer) = member(&hub, Catchup::Latest);
        let (_, resumed) = member(&hub, Catchup::After(6));
        say(&hub, speaker, 1);
        let newcomer = frames(&newcomer);
        assert_eq!(seqs(&newcomer), [6, 7, 8, 9]);
        assert!(newcomer[..3].iter().all(|f| f["history"] == true));
        assert!(newcomer[3].get("history").is_none());
        assert_eq!(seqs(&frames(&resumed)), [7, 8, 9]);
    }

    #[test]
    fn a_resume_past_the_limit_is_told_what_was_skipped_and_one_past_the_newest_is_reset() {
        // Memory holds 3 of 5: the server cannot count what it skips, and says where it starts.
        let hub = hub(2, 3);
        let (speaker, _) = member(&hub, Catchup::Latest);
        say(&hub, speaker, 5);
        let (_, far_behind) = member(&hub, Catchup::After(0));
        let far_behind = frames(&far_behind);
        assert_eq!(far_behind[0], serde_json::json!({"history": {"after": 0, "first": 3}}));
        assert_eq!(seqs(&far_behind[1..]), [3, 4, 5]);
        // Memory holds 10: it can.
        let counted = self::hub(10, 3);
        let (speaker, _) = member(&counted, Catchup::Latest);
        say(&counted, speaker, 5);
        let (_, far_behind) = member(&counted, Catchup::After(0));
        let first = &frames(&far_behind)[0];
        assert_eq!(*first, serde_json::json!({"history": {"after": 0, "skipped": 2, "first": 3}}));
        let (_, ahead) = member(&hub, Catchup::After(50));
        let ahead = frames(&ahead);
        assert_eq!(
            ahead[0],
            serde_json::json!({"history": {"reset": true, "after": 50, "newest": 5}})
        );
        assert_eq!(seqs(&ahead[1..]), [4, 5]);
    }

    #[test]
    fn rooms_number_their_own_messages_and_pages_come_from_memory_when_they_can() {
        let hub = hub(0, 4);
        let (a, _) = member(&hub, Catchup::Latest);
        let (b, b_frames) = member(&hub, Catchup::Latest);
        say(&hub, a, 6);
        hub.join_random(a);
        hub.join_random(b);
        frames(&b_frames);
        say(&hub, a, 2);
        assert_eq!(seqs(&frames(&b_frames)), [1, 2], "a room counts from 1");
        // The feed keeps its newest 4: pages within them come from memory, older ones do not.
        let page = hub.page(Channel::Feed, 7, 2).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [5, 6]);
        assert!(hub.page(Channel::Feed, 4, 2).is_none());
    }

    #[test]
    fn an_author_takes_back_its_own_message_in_its_channel_and_nobody_gets_it_again() {
        let hub = hub(10, 10);
        let (a, a_frames) = member(&hub, Catchup::Latest);
        let (b, b_frames) = member(&hub, Catchup::Latest);
        hub.publish(a, Author::from("a"), Body::Text("one".into()));
        hub.publish(b, Author::from("b"), Body::Text("two".into()));
        frames(&a_frames);
        frames(&b_frames);
        assert_eq!(hub.delete(b, "b", 1), Err("delete: message 1 is not yours".into()));
        assert_eq!(
            hub.delete(a, "a", 9),
            Err("delete: there is no message 9 in this channel".into())
        );
        assert_eq!(hub.delete(a, "a", 1), Ok(Deletion::Done));
        let deleted = serde_json::json!({"deleted": {"channel": "feed", "seq": 1}});
        assert_eq!(frames(&a_frames), std::slice::from_ref(&deleted), "the author is told too");
        assert_eq!(frames(&b_frames), [deleted]);
        assert!(hub.delete(a, "a", 1).is_err(), "only once");
        let (_, newcomer) = member(&hub, Catchup::Latest);
        assert_eq!(seqs(&frames(&newcomer)), [2]);
        assert_eq!(hub.page(Channel::Feed, 3, 10).unwrap().len(), 1);
        // In a random room: told as "random", to both; the feed hears nothing of it.
        hub.join_random(a);
        hub.join_random(b);
        hub.publish(a, Author::from("a"), Body::Text("psst".into()));
        frames(&a_frames);
        frames(&b_frames);
        assert_eq!(hub.delete(a, "a", 1), Ok(Deletion::Done));
        let deleted = serde_json::json!({"deleted": {"channel": "random", "seq": 1}});
        assert_eq!(frames(&b_frames), [deleted]);
        assert!(hub.page(Channel::Room(1), 5, 10).unwrap().is_empty(), "no history in a room");
    }

    #[test]
    fn a_message_older_than_those_kept_in_memory_is_looked_up_in_the_store_once() {
        let hub = hub(2, 2);
        let (a, a_frames) = member(&hub, Catchup::Latest);
        say(&hub, a, 4);
        assert_eq!(hub.delete(a, "a", 3), Ok(Deletion::Done));
        assert_eq!(hub.delete(a, "a", 1), Ok(Deletion::InStore(Channel::Feed)));
        assert_eq!(hub.delete(a, "a", 9), Err(unknown_message(9)), "never given: not asked");
        frames(&a_frames);
        let feed = Channel::Feed;
        assert_eq!(hub.delete_stored(a, "a", feed, 1, Some("b")), Err(not_yours(1)));
        assert_eq!(hub.delete_stored(a, "a", feed, 2, None), Err(unknown_message(2)));
        assert_eq!(hub.delete_stored(a, "a", feed, 1, Some("a")), Ok(()));
        let deleted = serde_json::json!({"deleted": {"channel": "feed", "seq": 1}});
        assert_eq!(frames(&a_frames), [deleted]);
        // The store may still have it until its writer catches up: it is not taken twice.
        assert_eq!(hub.delete_stored(a, "a", feed, 1, Some("a")), Err(unknown_message(1)));
    }

    #[test]
    fn a_random_rooms_message_older_than_those_kept_is_too_old() {
        let hub = hub(0, 0);
        let (a, _) = member(&hub, Catchup::Latest);
        let (b, _) = member(&hub, Catchup::Latest);
        hub.join_random(a);
        hub.join_random(b);
        say(&hub, a, RANDOM_ROOM_KEEP + 1);
        let refused = hub.delete(a, "a", 1).unwrap_err();
        assert!(refused.contains("too old"), "{refused}");
        assert_eq!(hub.delete(a, "a", 2), Ok(Deletion::Done));
    }

    fn room(name: &str, owner: &str) -> StoredRoom {
        StoredRoom { name: name.into(), topic: String::new(), owner: owner.into(), created_ms: 0 }
    }

    #[test]
    fn named_rooms_keep_their_caps_count_an_account_once_and_keep_their_messages() {
        let hub = hub(10, 10);
        assert_eq!(hub.add_room(room("a", "ada"), 2, 3), Ok(()));
        assert_eq!(hub.add_room(room("a", "bob"), 2, 3), Err(RoomRefused::Taken));
        assert_eq!(hub.add_room(room("b", "ada"), 2, 3), Ok(()));
        assert!(matches!(hub.add_room(room("c", "ada"), 2, 3), Err(RoomRefused::Full(_))));
        assert_eq!(hub.add_room(room("c", "bob"), 2, 3), Ok(()));
        assert!(matches!(hub.add_room(room("d", "bob"), 2, 3), Err(RoomRefused::Full(_))));

        let (tab1, tab1_frames) = member(&hub, Catchup::Latest);
        let (tab2, _) = member(&hub, Catchup::Latest);
        let (feed, feed_frames) = member(&hub, Catchup::Latest);
        assert!(hub.join_named(tab1, &Author::from("x"), "zzz", Catchup::Latest).is_err());
        hub.join_named(tab1, &Author::from("x"), "a", Catchup::Latest).unwrap();
        hub.join_named(tab2, &Author::from("x"), "a", Catchup::Latest).unwrap();
        // `member` joins everyone as the author "x": two tabs of one account.
        let joined = frames(&tab1_frames);
        assert_eq!(joined[0]["members"], serde_json::json!([{"id": "x"}]));
        assert_eq!(hub.rooms()[0], RoomInfo { name: "a".into(), topic: "".into(), online: 1 });
        say(&hub, tab2, 2);
        assert_eq!(seqs(&frames(&tab1_frames)), [1, 2]);
        assert!(frames(&feed_frames).is_empty(), "the feed hears nothing of a room");
        assert_eq!(hub.channel_of(tab1), Some(Channel::named("a")));
        hub.join_feed(tab1);
        hub.leave(tab2);
        assert_eq!(hub.rooms()[0].online, 0);
        hub.join_named(feed, &Author::from("x"), "a", Catchup::Latest).unwrap();
        let history = frames(&feed_frames);
        assert_eq!(seqs(&history[1..]), [1, 2]);
    }

    #[test]
    fn presence_and_typing_go_to_the_others_in_a_room_once_per_person() {
        let hub = hub(0, 0);
        hub.add_room(room("a", "o"), 1, 1).unwrap();
        let (first, first_frames) = member(&hub, Catchup::Latest);
        let bob = Uuid::new_v4();
        let bob_frames = Arc::new(Outbox::new(100));
        let (evict, _) = oneshot::channel();
        assert!(hub.join(bob, Author::from("bob"), bob_frames.clone(), evict, Catchup::Latest));
        let (second, _) = member(&hub, Catchup::Latest);
        hub.join_named(bob, &Author::from("bob"), "a", Catchup::Latest).unwrap();
        hub.join_named(first, &Author::from("x"), "a", Catchup::Latest).unwrap();
        hub.join_named(second, &Author::from("x"), "a", Catchup::Latest).unwrap();
        let joined = serde_json::json!({"presence": {"joined": {"id": "x"}}});
        assert_eq!(frames(&bob_frames)[1..], [joined], "x's second tab is not news");
        assert_eq!(frames(&first_frames).len(), 1, "only its joined frame");
        hub.typing(first, &Author::from("x"));
        hub.typing(second, &Author::from("x"));
        hub.typing(first, &Author::from("x"));
        assert_eq!(frames(&bob_frames), [serde_json::json!({"typing": {"id": "x"}})]);
        assert!(frames(&first_frames).is_empty(), "not to the typist's own tabs");
        let who = hub.who(bob);
        assert_eq!(who.payload(), r#"{"who":{"count":2,"members":[{"id":"bob"},{"id":"x"}]}}"#);
        hub.leave(first);
        assert!(frames(&bob_frames).is_empty());
        hub.join_feed(second);
        let left = serde_json::json!({"presence": {"left": {"id": "x"}}});
        assert_eq!(frames(&bob_frames), [left]);
        hub.typing(second, &Author::from("x"));
        assert!(frames(&bob_frames).is_empty(), "typing in the feed goes nowhere");
    }

    #[test]
    fn a_profile_change_reaches_the_accounts_channels_once_and_names_it_from_then_on() {
        let hub = hub(0, 0);
        hub.add_room(room("a", "o"), 2, 2).unwrap();
        hub.add_room(room("b", "o"), 2, 2).unwrap();
        let (tab1, tab1_frames) = member(&hub, Catchup::Latest);
        let (tab2, tab2_frames) = member(&hub, Catchup::Latest);
        let (mate, mate_frames) = member_as(&hub, "mate", Catchup::Latest);
        let (elsewhere, elsewhere_frames) = member_as(&hub, "elsewhere", Catchup::Latest);
        let (_, feed_frames) = member_as(&hub, "feed", Catchup::Latest);
        for (id, author, room) in
            [(tab1, "x", "a"), (tab2, "x", "a"), (mate, "mate", "a"), (elsewhere, "elsewhere", "b")]
        {
            hub.join_named(id, &Author::from(author), room, Catchup::Latest).unwrap();
        }
        for outbox in [&tab1_frames, &tab2_frames, &mate_frames, &elsewhere_frames] {
            frames(outbox);
        }
        hub.update_profile("x", "Ada".into());
        let profile =
            serde_json::json!({"profile": {"id": "x", "name": "Ada", "avatar": "/avatars/x"}});
        assert_eq!(frames(&mate_frames), std::slice::from_ref(&profile), "once for two tabs");
        assert_eq!(frames(&tab1_frames), std::slice::from_ref(&profile));
        assert_eq!(frames(&tab2_frames), std::slice::from_ref(&profile));
        assert!(frames(&elsewhere_frames).is_empty(), "another room hears nothing");
        assert!(frames(&feed_frames).is_empty(), "nor does the feed, where x is not");
        let who = hub.who(mate);
        assert_eq!(
            who.payload(),
            r#"{"who":{"count":2,"members":[{"id":"x","name":"Ada"},{"id":"mate"}]}}"#
        );
        hub.join_feed(tab1);
        hub.join_feed(tab2);
        let left = serde_json::json!({"presence": {"left": {"id": "x", "name": "Ada"}}});
        assert_eq!(frames(&mate_frames), [left]);
        hub.update_profile("x", "Countess".into());
        assert_eq!(frames(&feed_frames).len(), 1, "now x is in the feed: the feed is told");
        assert!(frames(&mate_frames).is_empty());
    }
}
