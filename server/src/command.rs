//! The command layer: where a frame from a client becomes its effects.
//!
//! `Command::from_frame` reads a text frame (through `protocol`), and `apply` carries it out:
//! a message to the hub, a schedule to the scheduler, a channel change, a page of history
//! from the hub's recent messages or, further back, from the store. The session around it
//! only moves frames between the socket and this layer; the hub only knows who gets what.

use std::borrow::Borrow;
use std::sync::Arc;
use std::time::Duration;

use crate::Server;
use crate::connections::ClientAddress;
use crate::frame::Frame;
use crate::hub::{Catchup, Deletion, PeerId, Published};
use crate::message::{Author, Body, Channel, ChatMessage};
use crate::outbox::{Full, Outbox};
use crate::protocol::{self, ChannelRequest, FrameError, Inbound};
use crate::scheduler::PendingCount;
use crate::store::Store;

/// A frame from a client, understood.
pub struct Command<'a>(Inbound<'a>);

/// Who sent a command, and where its answers go.
pub struct Sender<'s> {
    pub server: &'s Arc<Server>,
    pub id: PeerId,
    pub author: &'s Author,
    pub outbox: &'s Arc<Outbox>,
    pub pending: &'s PendingCount,
    pub address: ClientAddress,
}

/// What the sender is told right away, if anything.
pub enum Reply {
    None,
    /// A frame for the sender only (an error, a page of history).
    Frame(Frame),
}

impl<'a> Command<'a> {
    /// Reads one text frame; the error is the text of the `{"error": ...}` frame to send back.
    pub fn from_frame(text: &'a str, server: &Server) -> Result<Command<'a>, FrameError> {
        protocol::parse(text, &server.limits).map(Command)
    }

    /// Carries the command out.
    pub fn apply(self, from: &Sender) -> Reply {
        let server = from.server;
        let hub = &server.hub;
        match self.0 {
            Inbound::Join(ChannelRequest::Random) => hub.join_random(from.id),
            Inbound::Join(ChannelRequest::Feed) => hub.join_feed(from.id),
            Inbound::Join(ChannelRequest::Named { name, after }) => {
                let catchup = after.map_or(Catchup::Latest, Catchup::After);
                if let Err(reason) = hub.join_named(from.id, from.author, &name, catchup) {
                    return Reply::Frame(protocol::error_frame(&reason));
                }
            }
            Inbound::Chat { body, delay: None, ack } => {
                match hub.publish_acked(from.id, from.author.clone(), owned(body), ack) {
                    Published::Sent(seq) if ack => {
                        return Reply::Frame(protocol::sent_frame(seq));
                    }
                    Published::Refused(reason) => {
                        return Reply::Frame(protocol::error_frame(&reason));
                    }
                    // In a cluster the hub acknowledges once the message has its seq.
                    Published::Sent(_) | Published::Sequencing | Published::Gone => {}
                }
            }
            // A scheduled message comes back to its sender when it is delivered, with its seq.
            Inbound::Chat { body, delay: Some(delay), .. } => {
                // The channel it was sent in, now: that is where it will be delivered.
                let Some(channel) = hub.channel_of(from.id) else { return Reply::None };
                let scheduled = server.scheduler.schedule(
                    from.pending,
                    from.address,
                    delay,
                    channel,
                    from.author.clone(),
                    owned(body),
                );
                if let Err(reason) = scheduled {
                    return Reply::Frame(protocol::error_frame(&reason));
                }
            }
            Inbound::History { before, limit } => return page(from, before, limit),
            Inbound::Typing(true) => hub.typing(from.id, from.author),
            Inbound::Typing(false) => {}
            Inbound::Who => return Reply::Frame(hub.who(from.id)),
            Inbound::Delete(seq) => match hub.delete(from.id, &from.author.id, seq) {
                Ok(Deletion::Done) => {}
                Ok(Deletion::InStore(channel)) => delete_stored(from, channel, seq),
                Err(reason) => return Reply::Frame(protocol::error_frame(&reason)),
            },
        }
        Reply::None
    }
}

fn owned(body: protocol::Body) -> Body {
    match body {
        protocol::Body::Text(text) => Body::Text(text.into_owned()),
        protocol::Body::Emoji(emoji) => Body::Emoji(emoji.into_owned()),
    }
}

/// A page of earlier messages in the sender's channel: from the hub if it still has them,
/// else read from the store in a blocking task and queued when it is ready.
fn page(from: &Sender, before: u64, limit: usize) -> Reply {
    let server = from.server;
    let Some(channel) = server.hub.channel_of(from.id) else { return Reply::None };
    // One more than asked, to know whether there are more.
    if let Some(messages) = server.hub.page(channel, before, limit + 1) {
        return Reply::Frame(page_frame(before, &messages, limit));
    }
    let store = server.store.clone();
    let outbox = from.outbox.clone();
    tokio::task::spawn_blocking(move || {
        let frame = match store.page(channel, before, limit + 1) {
            Ok(messages) => page_frame(before, &messages, limit),
            Err(error) => {
                tracing::warn!(%error, "reading earlier messages failed");
                protocol::error_frame("history: earlier messages cannot be read right now")
            }
        };
        // A client whose queue is full is being dropped as a slow consumer anyway.
        let _: Result<(), Full> = outbox.offer(frame);
    });
    Reply::None
}

/// How long a deletion that did not find its message in the store waits for the store's
/// writer to catch up before it looks again.
const STORE_CATCH_UP: Duration = Duration::from_secs(2);

/// `{"delete": SEQ}` of a message older than those the hub holds: its author is read from
/// the store in a blocking task (never under the hub's lock, never on the session's task),
/// then the hub takes it back as it does a recent one; a refusal is queued for the sender.
fn delete_stored(from: &Sender, channel: Channel, seq: u64) {
    let server = from.server.clone();
    let outbox = from.outbox.clone();
    let (id, owner) = (from.id, from.author.id.clone());
    tokio::task::spawn_blocking(move || {
        let refusal = match author_in_store(&*server.store, channel, seq) {
            Ok(author) => {
                server.hub.delete_stored(id, &owner, channel, seq, author.as_deref()).err()
            }
            Err(error) => {
                tracing::warn!(%error, "reading a message to take back failed");
                Some(format!("delete: message {seq} cannot be read right now"))
            }
        };
        if let Some(reason) = refusal {
            // A client whose queue is full is being dropped as a slow consumer anyway.
            let _: Result<(), Full> = outbox.offer(protocol::error_frame(&reason));
        }
    });
}

/// The author id of message `seq` of `channel` in the store. A message the hub let go of
/// just now may not be written yet: when it is not found, the writer is waited for once.
fn author_in_store(
    store: &dyn Store,
    channel: Channel,
    seq: u64,
) -> anyhow::Result<Option<Arc<str>>> {
    if let Some(message) = store.message(channel, seq)? {
        return Ok(Some(message.author.id));
    }
    store.flush(STORE_CATCH_UP);
    Ok(store.message(channel, seq)?.map(|message| message.author.id))
}

fn page_frame<M: Borrow<ChatMessage>>(before: u64, messages: &[M], limit: usize) -> Frame {
    let more = messages.len() > limit;
    let messages = &messages[messages.len().saturating_sub(limit)..];
    protocol::history_page_frame(before, messages, more)
}
