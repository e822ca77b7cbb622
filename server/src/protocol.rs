//! Every frame the server reads and writes, as serde types (docs/PROTOCOL.md).
//!
//! Inbound frames are parsed borrowing from the received bytes, checked against the limits,
//! and turned into an [`Inbound`]; fields the server does not know are dropped here, so they
//! can never be relayed. Outbound frames are serialised once into a [`Frame`], which every
//! recipient's queue shares by reference count.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::frame::Frame;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use wire::schedule::{self, Schedule};

use crate::config::Limits;
use crate::message::{Author, ChatMessage, WireChat};

/// A frame a client sent, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// `{"channel": "random"}`, `{"channel": "feed"}` or `{"channel": "room", "room": NAME}`.
    Join(ChannelRequest<'a>),
    /// A text or emoji message, to send now or after `delay`; `ack` (`"ack": true`): the
    /// sender is told the seq it was given (`{"sent": {"seq": N}}`), to take it back later.
    Chat { body: Body<'a>, delay: Option<Duration>, ack: bool },
    /// `{"history": {"before": SEQ, "limit": N}}`: the messages before SEQ in the sender's
    /// channel ("load earlier messages"); `limit` is already capped.
    History { before: u64, limit: usize },
    /// `{"delete": SEQ}`: takes back the sender's own message SEQ in its current channel.
    Delete(u64),
    /// `{"typing": true}` (`false`: nothing is sent).
    Typing(bool),
    /// `{"who": true}`: who is in the sender's channel.
    Who,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelRequest<'a> {
    Feed,
    Random,
    /// A named room; `after`: the last seq of it the client saw (a resume, as `?after` is for
    /// the feed).
    Named {
        name: Cow<'a, str>,
        after: Option<u64>,
    },
}

/// What a chat message says. Only this is relayed; everything else a client sent is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    Text(Cow<'a, str>),
    Emoji(Cow<'a, str>),
}

/// Why a frame was refused: the text of the `{"error": ...}` frame sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse<T>(reason: impl Into<String>) -> Result<T, FrameError> {
    Err(FrameError(reason.into()))
}

/// The shape of an inbound frame. Unknown fields (`author` included: the server stamps its
/// own) are ignored by serde and so never reach anyone else.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(default)]
    after: Option<u64>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<Object<RawData<'a>>>,
    #[serde(default)]
    history: Option<Object<RawHistory>>,
    #[serde(default)]
    delete: Option<u64>,
    #[serde(default)]
    ack: bool,
    #[serde(default)]
    typing: Option<bool>,
    #[serde(default)]
    who: Option<bool>,
}

#[derive(Deserialize)]
struct RawHistory {
    before: u64,
    #[serde(default)]
    limit: Option<u64>,
}

#[derive(Deserialize)]
struct RawData<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    emoji: Option<Cow<'a, str>>,
    /// Kept as a value so that its errors can say `schedule: ...`; `null` counts as given.
    #[serde(default, deserialize_with = "present")]
    schedule: Option<Value>,
}

/// What an inbound shape is called in the error when something else comes instead.
trait Expected {
    const EXPECTED: &'static str;
}

impl Expected for RawFrame<'_> {
    const EXPECTED: &'static str = "a JSON object";
}

impl Expected for RawHistory {
    const EXPECTED: &'static str =
        "\"history\" as an object, e.g. {\"before\": 120, \"limit\": 50}";
}

impl Expected for RawData<'_> {
    const EXPECTED: &'static str = "\"data\" as an object, e.g. {\"text\": \"hi\"}";
}

/// `T`, read only from a JSON object. serde's derived structs also accept an array, filling
/// the fields by position (`[null, "text", {"text": "hi"}]` would be a chat message), but a
/// frame is one JSON object (docs/PROTOCOL.md), and so is its `data`.
struct Object<T>(T);

impl<'de, T: Deserialize<'de> + Expected> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapOnly<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Expected> serde::de::Visitor<'de> for MapOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(T::EXPECTED)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(MapOnly(std::marker::PhantomData)).map(Object)
    }
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// Messages in a page of history when the request does not say.
pub const DEFAULT_PAGE: usize = 50;

/// Reads one text frame. Errors name what was wrong, ready to send back.
pub fn parse<'a>(frame: &'a str, limits: &Limits) -> Result<Inbound<'a>, FrameError> {
    let raw: RawFrame<'a> = match serde_json::from_str(frame) {
        Ok(Object(raw)) => raw,
        Err(error) if error.is_syntax() || error.is_eof() => {
            return refuse(format!("not valid JSON: {error}"));
        }
        Err(error) => return refuse(format!("bad message: {error}")),
    };
    if let Some(channel) = raw.channel {
        return match &*channel {
            "random" => Ok(Inbound::Join(ChannelRequest::Random)),
            "feed" => Ok(Inbound::Join(ChannelRequest::Feed)),
            "room" => match raw.room {
                Some(name) => Ok(Inbound::Join(ChannelRequest::Named { name, after: raw.after })),
                None => refuse("\"channel\": \"room\" needs \"room\": NAME"),
            },
            _ => refuse("channel must be \"random\", \"feed\" or \"room\""),
        };
    }
    if let Some(seq) = raw.delete {
        return Ok(Inbound::Delete(seq));
    }
    if let Some(typing) = raw.typing {
        return Ok(Inbound::Typing(typing));
    }
    if raw.who.is_some() {
        return Ok(Inbound::Who);
    }
    if let Some(Object(history)) = raw.history {
        let limit = history.limit.unwrap_or(DEFAULT_PAGE as u64).min(limits.page_max as u64);
        return Ok(Inbound::History { before: history.before, limit: limit as usize });
    }
    let Some(kind) = raw.kind else {
        return refuse(
            "a message needs \"type\": \"text\" or \"emoji\" (or \"channel\": \"random\" or \"feed\")",
        );
    };
    let Some(Object(data)) = raw.data else {
        return refuse(format!("a {kind} message needs \"data\""));
    };
    let mut delay = match &data.schedule {
        Some(schedule) => Some(schedule_delay(schedule, limits)?),
        None => None,
    };
    let body = match &*kind {
        "text" => {
            let Some(mut text) = data.text else {
                return refuse("a text message needs \"data\": {\"text\": ...}");
            };
            // Clients that do not parse `/schedule` themselves (terminal, scripts) can still
            // schedule: the server reads the command, unless the client already did.
            if delay.is_none()
                && let Some(command) = schedule::parse(&text)
            {
                let command = command.map_err(|error| {
                    FrameError(format!("schedule: {error}; for example: {}", schedule::EXAMPLE))
                })?;
                delay = Some(checked_delay(&command.schedule, limits)?);
                text = Cow::Owned(command.text);
            }
            if text.chars().count() > limits.max_text_chars {
                return refuse(format!("text is longer than {} characters", limits.max_text_chars));
            }
            Body::Text(text)
        }
        "emoji" => {
            let Some(emoji) = data.emoji else {
                return refuse("an emoji message needs \"data\": {\"emoji\": ...}");
            };
            if emoji.chars().count() > limits.max_emoji_chars {
                return refuse(format!(
                    "emoji is longer than {} characters",
                    limits.max_emoji_chars
                ));
            }
            Body::Emoji(emoji)
        }
        _ => return refuse("type must be \"text\" or \"emoji\""),
    };
    Ok(Inbound::Chat { body, delay, ack: raw.ack })
}

/// A wire schedule such as `{"hours": 1, "seconds": "9"}`, read by `wire::schedule`.
fn schedule_delay(value: &Value, limits: &Limits) -> Result<Duration, FrameError> {
    let Value::Object(units) = value else {
        return refuse("schedule: must be an object such as {\"minutes\": 5}");
    };
    // Name an unknown unit ourselves: serde's "unknown field" would not say "unit".
    if let Some(unit) =
        units.keys().find(|unit| !matches!(unit.as_str(), "hours" | "minutes" | "seconds"))
    {
        return refuse(format!("schedule: unknown unit '{unit}' (use hours, minutes or seconds)"));
    }
    let schedule =
        Schedule::deserialize(value).map_err(|error| FrameError(format!("schedule: {error}")))?;
    checked_delay(&schedule, limits)
}

fn checked_delay(schedule: &Schedule, limits: &Limits) -> Result<Duration, FrameError> {
    if *schedule == Schedule::default() {
        return refuse("schedule: give at least one of hours, minutes, seconds");
    }
    match schedule.delay() {
        Some(delay) if delay <= limits.max_delay() => Ok(delay),
        _ => refuse(format!(
            "schedule: the delay is longer than the limit of {} seconds",
            limits.max_delay_secs
        )),
    }
}

// ---- outbound ----

#[derive(Serialize)]
struct IdFrame<'a> {
    id: &'a str,
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    error: &'a str,
}

/// `{"id": ...}`, the first frame of every connection.
pub fn id_frame(id: &str) -> Frame {
    Frame::json(&IdFrame { id })
}

/// `{"me": {"id", "username", "name", "avatar"}}`: right after the id frame, to a connection
/// opened with a session.
pub fn me_frame(profile: &crate::accounts::Profile) -> Frame {
    #[derive(Serialize)]
    struct Me<'a> {
        me: &'a crate::accounts::Profile,
    }
    Frame::json(&Me { me: profile })
}

/// `{"error": ...}`, to the offending sender only.
pub fn error_frame(reason: &str) -> Frame {
    Frame::json(&ErrorFrame { error: reason })
}

#[derive(Serialize)]
struct HistoryFrame<T: Serialize> {
    history: T,
}

#[derive(Serialize)]
struct Skipped {
    after: u64,
    /// How many were skipped, when the server knows without reading the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<u64>,
    /// The seq of the first message sent after this frame.
    first: u64,
}

#[derive(Serialize)]
struct Reset {
    reset: bool,
    after: u64,
    newest: u64,
}

#[derive(Serialize)]
struct Page<'a> {
    before: u64,
    messages: Vec<WireChat<'a>>,
    more: bool,
}

fn history_frame<T: Serialize>(history: T) -> Frame {
    Frame::json(&HistoryFrame { history })
}

/// `{"history": {"after": A, "skipped": K, "first": F}}`: a resuming client missed more than
/// `--resume-max`; it gets the newest ones only, from seq F on, and K were skipped (`skipped`
/// is left out when the count is not known without reading the store). Earlier pages can be
/// asked for with `before: F`.
pub fn history_skipped_frame(after: u64, skipped: Option<u64>, first: u64) -> Frame {
    history_frame(Skipped { after, skipped, first })
}

/// `{"history": {"reset": true, "after": A, "newest": N}}`: a resuming client saw more than
/// the server has (its store was wiped or replaced); the latest messages follow as for a
/// newcomer.
pub fn history_reset_frame(after: u64, newest: u64) -> Frame {
    history_frame(Reset { reset: true, after, newest })
}

/// `{"history": {"before": B, "messages": [...], "more": bool}}`: one page of earlier
/// messages, oldest first, each a chat frame with `"history": true`; `more` when older ones
/// may exist.
pub fn history_page_frame(
    before: u64,
    messages: &[impl std::borrow::Borrow<ChatMessage>],
    more: bool,
) -> Frame {
    let messages = messages.iter().map(|message| message.borrow().wire(true)).collect();
    history_frame(Page { before, messages, more })
}

/// `{"sent": {"seq": N}}`: to the sender of a message that asked for it (`"ack": true`), the
/// seq its message was given.
pub fn sent_frame(seq: u64) -> Frame {
    Frame::text(&format!(r#"{{"sent":{{"seq":{seq}}}}}"#))
}

#[derive(Serialize)]
struct Deleted<'a> {
    channel: &'a str,
    seq: u64,
}

/// `{"deleted": {"channel": "feed" | "random", "seq": SEQ}}`: message SEQ of that channel was
/// taken back by its author; to everyone in the channel, the author included.
pub fn deleted_frame(channel: &str, seq: u64) -> Frame {
    #[derive(Serialize)]
    struct DeletedFrame<'a> {
        deleted: Deleted<'a>,
    }
    Frame::json(&DeletedFrame { deleted: Deleted { channel, seq } })
}

/// `{"profile": {"id", "name", "avatar"}}`: an account changed its display name or picture; to
/// everyone who shares a channel with one of its connections, and to its own connections. The
/// picture's address stays the same, so a client fetches it again to see a new one.
pub fn profile_frame(id: &str, name: &str) -> Frame {
    #[derive(Serialize)]
    struct Changed<'a> {
        id: &'a str,
        name: &'a str,
        avatar: String,
    }
    #[derive(Serialize)]
    struct ProfileFrame<'a> {
        profile: Changed<'a>,
    }
    Frame::json(&ProfileFrame { profile: Changed { id, name, avatar: format!("/avatars/{id}") } })
}

/// A person as frames about people show them: `{"id", "name"?}` (`name` only for an account).
#[derive(Serialize)]
struct Member<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

impl<'a> Member<'a> {
    fn of(author: &'a Author) -> Member<'a> {
        Member { id: &author.id, name: author.name.as_deref() }
    }
}

/// `{"channel": "room", "room": NAME, "status": "joined", "members": [{"id", "name"?}, ...]}`:
/// to a connection that entered a named room; every person in it once (itself included), in
/// the order they came.
pub fn room_joined_frame(room: &str, members: &[&Author]) -> Frame {
    #[derive(Serialize)]
    struct Joined<'a> {
        channel: &'static str,
        room: &'a str,
        status: &'static str,
        members: Vec<Member<'a>>,
    }
    let members = members.iter().map(|author| Member::of(author)).collect();
    Frame::json(&Joined { channel: "room", room, status: "joined", members })
}

/// `{"presence": {"joined": {"id", "name"?}}}` or `{"presence": {"left": ...}}`.
pub fn presence_frame(joined: bool, who: &Author) -> Frame {
    #[derive(Serialize)]
    #[serde(rename_all = "lowercase")]
    enum Presence<'a> {
        Joined(Member<'a>),
        Left(Member<'a>),
    }
    #[derive(Serialize)]
    struct PresenceFrame<'a> {
        presence: Presence<'a>,
    }
    let member = Member::of(who);
    let presence = if joined { Presence::Joined(member) } else { Presence::Left(member) };
    Frame::json(&PresenceFrame { presence })
}

/// `{"typing": {"id", "name"?}}`.
pub fn typing_frame(who: &Author) -> Frame {
    #[derive(Serialize)]
    struct Typing<'a> {
        typing: Member<'a>,
    }
    Frame::json(&Typing { typing: Member::of(who) })
}

/// `{"who": {"count": N, "members": [{"id", "name"?}, ...]}}`: `members` holds the first
/// [`WHO_MAX`] of the `count`.
pub fn who_frame(count: usize, members: &[&Author]) -> Frame {
    #[derive(Serialize)]
    struct Who<'a> {
        count: usize,
        members: Vec<Member<'a>>,
    }
    #[derive(Serialize)]
    struct WhoFrame<'a> {
        who: Who<'a>,
    }
    let members = members.iter().take(WHO_MAX).map(|author| Member::of(author)).collect();
    Frame::json(&WhoFrame { who: Who { count, members } })
}

/// People listed in a `{"who"}` answer at most.
pub const WHO_MAX: usize = 100;

/// The channel notices: a fixed text each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Waiting,
    Paired,
    PartnerLeft,
    FeedJoined,
}

impl Notice {
    pub fn frame(self) -> Frame {
        Frame::text(match self {
            Notice::Waiting => r#"{"channel":"random","status":"waiting"}"#,
            Notice::Paired => r#"{"channel":"random","status":"paired"}"#,
            Notice::PartnerLeft => r#"{"channel":"random","status":"partner_left"}"#,
            Notice::FeedJoined => r#"{"channel":"feed","status":"joined"}"#,
        })
    }
}
