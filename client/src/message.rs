//! The frames a chat client sends, as JSON values (docs/PROTOCOL.md).

use serde_json::{Value, json};

use crate::schedule::Schedule;

/// `{"type":"text","data":{"text":...}}`. The server fills in `author`.
pub fn text(text: &str) -> Value {
    json!({"type": "text", "data": {"text": text}})
}

/// `{"type":"emoji","data":{"emoji":...}}`.
pub fn emoji(emoji: &str) -> Value {
    json!({"type": "emoji", "data": {"emoji": emoji}})
}

/// A text message delivered after `schedule`: what `/schedule ... message TEXT` becomes.
pub fn scheduled(schedule: &Schedule, text: &str) -> Value {
    json!({"type": "text", "data": {"schedule": schedule, "text": text}})
}

/// `{"channel":"random"}` or `{"channel":"feed"}` (lesson05 on).
pub fn join(channel: &str) -> Value {
    json!({"channel": channel})
}
