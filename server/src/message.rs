//! The typed chat message: what the hub fans out, the store keeps and the scheduler delivers.
//!
//! A message is made once, when the hub gives it its place in its channel (the `seq`), and is
//! encoded to its wire frame once, then: every recipient's queue shares the same bytes. Its
//! history frame (the same with `"history": true`) is encoded the first time someone needs it.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::frame::Frame;

/// Where a message is said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// The feed everyone shares: kept in the store.
    Feed,
    /// A random 1:1 room: private and ephemeral, never written anywhere. Room numbers are
    /// never reused, so a message scheduled for a room that has since emptied goes nowhere
    /// instead of into strangers' room.
    Room(u64),
    /// A named room (`POST /api/rooms`): kept in the store like the feed. It holds the room's
    /// store key, `room:NAME`, interned (see [`Channel::named`]).
    Named(&'static str),
}

/// The prefix of a named room's store key.
const ROOM_PREFIX: &str = "room:";

impl Channel {
    /// The named room `name`. Its key is interned once per name for the process's life: only
    /// names of rooms that exist are interned, and their number is capped (`--max-rooms`).
    pub fn named(name: &str) -> Channel {
        static KEYS: std::sync::Mutex<BTreeSet<&'static str>> =
            std::sync::Mutex::new(BTreeSet::new());
        let key = format!("{ROOM_PREFIX}{name}");
        let mut keys = KEYS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(&interned) = keys.get(key.as_str()) {
            return Channel::Named(interned);
        }
        let interned: &'static str = Box::leak(key.into_boxed_str());
        keys.insert(interned);
        Channel::Named(interned)
    }

    /// The channel a store key names, if this server knows it.
    pub fn from_store_key(key: &str) -> Option<Channel> {
        match key {
            "feed" => Some(Channel::Feed),
            _ => key.strip_prefix(ROOM_PREFIX).map(Channel::named),
        }
    }

    /// Whether its messages are kept (history, resume, the store).
    pub fn is_durable(self) -> bool {
        matches!(self, Channel::Feed | Channel::Named(_))
    }

    /// Its name in frames about it (`{"deleted": {"channel": ...}}`): `feed`, `random` for a
    /// random room (a connection is in one room at a time, so the room needs no number), or a
    /// named room's name.
    pub fn wire_name(self) -> &'static str {
        match self {
            Channel::Feed => "feed",
            Channel::Room(_) => "random",
            Channel::Named(key) => &key[ROOM_PREFIX.len()..],
        }
    }

    /// Its name in the store; only durable channels have one.
    pub fn store_key(self) -> Option<&'static str> {
        match self {
            Channel::Feed => Some("feed"),
            Channel::Room(_) => None,
            Channel::Named(key) => Some(key),
        }
    }
}

/// What a chat message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Text(String),
    Emoji(String),
}

impl Body {
    /// The wire `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Text(_) => "text",
            Body::Emoji(_) => "emoji",
        }
    }

    /// The text or the emoji.
    pub fn content(&self) -> &str {
        match self {
            Body::Text(text) | Body::Emoji(text) => text,
        }
    }

    /// From the store's `type` and content; `None` for a type this server does not know.
    pub fn from_parts(kind: &str, content: String) -> Option<Body> {
        match kind {
            "text" => Some(Body::Text(content)),
            "emoji" => Some(Body::Emoji(content)),
            _ => None,
        }
    }
}

/// Who said a message: the sender's id (a guest's per connection, an account's for good) and,
/// for an account, its display name at the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub id: Arc<str>,
    pub name: Option<Arc<str>>,
}

impl Author {
    /// A guest: an id and no name.
    pub fn guest(id: Arc<str>) -> Author {
        Author { id, name: None }
    }
}

impl From<&str> for Author {
    fn from(id: &str) -> Author {
        Author::guest(id.into())
    }
}

/// Milliseconds since the Unix epoch, the server's clock.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as i64)
}

/// A chat message with its place in its channel.
#[derive(Debug)]
pub struct ChatMessage {
    pub channel: Channel,
    /// 1, 2, 3, … per channel.
    pub seq: u64,
    pub author: Author,
    pub body: Body,
    /// When the server accepted it (a scheduled one: when it was delivered).
    pub at_ms: i64,
    /// A scheduled message whose time passed while the server was down.
    pub late: bool,
    live: OnceLock<Frame>,
    history: OnceLock<Frame>,
}

/// `{"author", "name"?, "type", "data", "seq", "at", "history"?, "late"?}`: the lessons' chat
/// frame with the finished server's fields beside it (`name` only for an account's message).
#[derive(Serialize)]
pub struct WireChat<'a> {
    pub author: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub data: WireData<'a>,
    pub seq: u64,
    pub at: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub history: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum WireData<'a> {
    Text { text: &'a str },
    Emoji { emoji: &'a str },
}

impl ChatMessage {
    pub fn new(
        channel: Channel,
        seq: u64,
        author: Author,
        body: Body,
        at_ms: i64,
        late: bool,
    ) -> ChatMessage {
        ChatMessage {
            channel,
            seq,
            author,
            body,
            at_ms,
            late,
            live: OnceLock::new(),
            history: OnceLock::new(),
        }
    }

    /// As it is fanned out live.
    pub fn frame(&self) -> &Frame {
        self.live.get_or_init(|| Frame::json(&self.wire(false)))
    }

    /// As it is replayed: the same with `"history": true`.
    pub fn history_frame(&self) -> &Frame {
        self.history.get_or_init(|| Frame::json(&self.wire(true)))
    }

    /// The frame's fields, to serialise alone or inside another frame.
    pub fn wire(&self, history: bool) -> WireChat<'_> {
        let data = match &self.body {
            Body::Text(text) => WireData::Text { text },
            Body::Emoji(emoji) => WireData::Emoji { emoji },
        };
        WireChat {
            author: &self.author.id,
            name: self.author.name.as_deref(),
            kind: self.body.kind(),
            data,
            seq: self.seq,
            at: rfc3339_millis(self.at_ms),
            history,
            late: self.late,
        }
    }
}

/// `2026-12-01T15:04:05.123Z`.
pub fn rfc3339_millis(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_keeps_the_lessons_fields_and_adds_seq_and_at() {
        let message =
            ChatMessage::new(Channel::Feed, 7, "ab".into(), Body::Text("hi".into()), 1_000, false);
        assert_eq!(
            message.frame().payload(),
            r#"{"author":"ab","type":"text","data":{"text":"hi"},"seq":7,"at":"1970-01-01T00:00:01.000Z"}"#
        );
        assert!(message.history_frame().payload().ends_with(r#","history":true}"#));
        let late =
            ChatMessage::new(Channel::Feed, 1, "ab".into(), Body::Emoji("🎉".into()), 0, true);
        assert!(late.frame().payload().ends_with(r#","late":true}"#));
        let account = Author { id: "ab".into(), name: Some("Ada".into()) };
        let named = ChatMessage::new(Channel::Feed, 2, account, Body::Text("x".into()), 0, false);
        assert!(
            named.frame().payload().starts_with(r#"{"author":"ab","name":"Ada","type":"text""#)
        );
    }
}
