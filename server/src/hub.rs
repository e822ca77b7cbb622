//! The hub: who is connected, the feed, the rooms for two, and the pairing queue.
//!
//! It is the one place that knows where a frame must go. Sessions hand it frames already
//! serialised; it pushes the same bytes into each recipient's bounded outbound queue and never
//! waits: everything here runs under one `std::sync::Mutex`, held for a few instructions and
//! never across an `.await`. Pairing must look at the rooms and move a user in one step, so
//! one lock for all is simpler than finer locks and, with the work this small, not slower.
//!
//! Its surface (join, leave, publish, deliver, pair) is what a durable history or several
//! server processes would hook into later: publishing is the one place a message becomes
//! visible.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use crate::frame::Frame;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::outbox::Outbox;
use crate::protocol::Notice;

pub type PeerId = Uuid;

/// Where a user's messages go: the feed, or one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Feed,
    /// Room numbers are never reused, so a message scheduled for a room that has since
    /// emptied goes nowhere instead of into strangers' room.
    Room(u64),
}

/// Why the hub let go of a connection; the session turns it into a close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Its outbound queue was full: it stopped reading.
    SlowConsumer,
    /// The server is shutting down.
    ShuttingDown,
}

struct Peer {
    outbox: Arc<Outbox>,
    channel: Channel,
    /// Fired when the hub drops this peer on its own initiative.
    evict: oneshot::Sender<Eviction>,
}

#[derive(Default)]
struct State {
    peers: HashMap<PeerId, Peer>,
    /// One or two members each.
    rooms: HashMap<u64, Vec<PeerId>>,
    /// Rooms with one member waiting for a partner; the oldest is filled first.
    waiting: BTreeSet<u64>,
    next_room: u64,
    closed: bool,
}

/// How many are where, for `/healthz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Census {
    pub feed: usize,
    pub rooms: usize,
    pub waiting: usize,
}

#[derive(Default)]
pub struct Hub {
    state: Mutex<State>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the maps consistent enough to go on
        // (every change is a single insert or remove), so poisoning is not fatal.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts a new connection in the feed. Refused (`false`) once the server is shutting down.
    pub fn join(&self, id: PeerId, outbox: Arc<Outbox>, evict: oneshot::Sender<Eviction>) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        state.peers.insert(id, Peer { outbox, channel: Channel::Feed, evict });
        true
    }

    /// Forgets a connection; a partner left alone in its room is told and waits there.
    pub fn leave(&self, id: PeerId) {
        let mut state = self.lock();
        let mut evicted = Vec::new();
        state.remove(id, &mut evicted);
        state.evict_all(evicted, Eviction::SlowConsumer);
    }

    /// The channel `id` is in now, if it is still connected.
    pub fn channel_of(&self, id: PeerId) -> Option<Channel> {
        self.lock().peers.get(&id).map(|peer| peer.channel)
    }

    /// Sends `frame` to everyone else in the sender's channel.
    pub fn publish(&self, from: PeerId, frame: Frame) {
        let mut state = self.lock();
        let Some(channel) = state.peers.get(&from).map(|peer| peer.channel) else { return };
        let mut evicted = Vec::new();
        state.send_to_channel(channel, Some(from), frame, &mut evicted);
        state.evict_all(evicted, Eviction::SlowConsumer);
    }

    /// Sends `frame` to everyone in `channel` (a scheduled message: its sender included).
    pub fn deliver(&self, channel: Channel, frame: Frame) {
        let mut state = self.lock();
        let mut evicted = Vec::new();
        state.send_to_channel(channel, None, frame, &mut evicted);
        state.evict_all(evicted, Eviction::SlowConsumer);
    }

    /// `{"channel": "random"}`: pairs `id` with someone waiting alone, or opens a room for
    /// `id` to wait in. Already in a room: only tells `id` its status again.
    pub fn join_random(&self, id: PeerId) {
        let mut state = self.lock();
        let state = &mut *state;
        let mut evicted = Vec::new();
        let Some(peer) = state.peers.get(&id) else { return };
        if let Channel::Room(room) = peer.channel {
            let notice = match state.rooms.get(&room).map(Vec::len) {
                Some(2) => Notice::Paired,
                _ => Notice::Waiting,
            };
            state.send_to(id, notice.frame(), &mut evicted);
        } else {
            let room = match state.waiting.pop_first() {
                Some(room) => room,
                None => {
                    state.next_room += 1;
                    state.waiting.insert(state.next_room);
                    state.next_room
                }
            };
            if let Some(peer) = state.peers.get_mut(&id) {
                peer.channel = Channel::Room(room);
            }
            let members = state.rooms.entry(room).or_default();
            members.push(id);
            let (members, notice) = match members.as_slice() {
                &[first, second] => ([Some(first), Some(second)], Notice::Paired),
                _ => ([Some(id), None], Notice::Waiting),
            };
            if notice == Notice::Paired {
                tracing::info!(room, first = %simple(members[0]), second = %simple(members[1]), "paired");
            }
            for member in members.into_iter().flatten() {
                state.send_to(member, notice.frame(), &mut evicted);
            }
        }
        state.evict_all(evicted, Eviction::SlowConsumer);
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
        state.evict_all(evicted, Eviction::SlowConsumer);
    }

    pub fn census(&self) -> Census {
        let state = self.lock();
        Census {
            feed: state.peers.values().filter(|peer| peer.channel == Channel::Feed).count(),
            rooms: state.rooms.len(),
            waiting: state.waiting.len(),
        }
    }

    /// Lets go of everyone (each session then sends its close frame) and admits nobody new.
    pub fn shut_down(&self) {
        let mut state = self.lock();
        state.closed = true;
        // Nobody is told "partner_left" on the way out: everyone is leaving.
        state.rooms.clear();
        state.waiting.clear();
        let everyone: Vec<PeerId> = state.peers.keys().copied().collect();
        state.evict_all(everyone, Eviction::ShuttingDown);
    }
}

fn simple(id: Option<PeerId>) -> String {
    id.map(|id| id.simple().to_string()).unwrap_or_default()
}

impl State {
    fn send_to_channel(
        &mut self,
        channel: Channel,
        skip: Option<PeerId>,
        frame: Frame,
        evicted: &mut Vec<PeerId>,
    ) {
        match channel {
            Channel::Feed => {
                for (&id, peer) in &self.peers {
                    if peer.channel == Channel::Feed && Some(id) != skip {
                        offer(id, peer, &frame, evicted);
                    }
                }
            }
            Channel::Room(room) => {
                for &id in self.rooms.get(&room).into_iter().flatten() {
                    if Some(id) != skip
                        && let Some(peer) = self.peers.get(&id)
                    {
                        offer(id, peer, &frame, evicted);
                    }
                }
            }
        }
    }

    fn send_to(&self, id: PeerId, frame: Frame, evicted: &mut Vec<PeerId>) {
        if let Some(peer) = self.peers.get(&id) {
            offer(id, peer, &frame, evicted);
        }
    }

    /// Takes `id` out of any room; a partner left behind is told and waits for the next seeker.
    fn leave_room(&mut self, id: PeerId, evicted: &mut Vec<PeerId>) {
        let Some(Channel::Room(room)) = self.peers.get(&id).map(|peer| peer.channel) else {
            return;
        };
        let Some(members) = self.rooms.get_mut(&room) else { return };
        members.retain(|member| *member != id);
        match members.first().copied() {
            Some(partner) => {
                self.waiting.insert(room);
                self.send_to(partner, Notice::PartnerLeft.frame(), evicted);
            }
            None => {
                self.rooms.remove(&room);
                self.waiting.remove(&room);
            }
        }
    }

    fn remove(&mut self, id: PeerId, evicted: &mut Vec<PeerId>) -> Option<Peer> {
        self.leave_room(id, evicted);
        self.peers.remove(&id)
    }

    /// Drops every peer in `evicted` and tells its session why. Dropping one may tell its
    /// partner, whose queue may be full too: the list grows until nobody else is affected.
    fn evict_all(&mut self, mut evicted: Vec<PeerId>, why: Eviction) {
        while let Some(id) = evicted.pop() {
            if let Some(peer) = self.remove(id, &mut evicted) {
                if why == Eviction::SlowConsumer {
                    tracing::warn!(id = %id.simple(), "disconnecting: outbound queue full (slow consumer)");
                }
                let _ = peer.evict.send(why);
            }
        }
    }
}

/// Queues `frame` for one peer without waiting. A full queue means the peer stopped reading:
/// it is evicted rather than allowed to grow the server's memory (see `outbox`).
fn offer(id: PeerId, peer: &Peer, frame: &Frame, evicted: &mut Vec<PeerId>) {
    if peer.outbox.offer(frame.clone()).is_err() {
        evicted.push(id);
    }
}
