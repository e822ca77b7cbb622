//! Any text a client may send in a WebSocket text frame: `protocol::parse` must answer with a
//! command or an error, never panic, and an accepted chat message must respect the limits.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use server::config::Limits;
use server::protocol::{Body, Inbound, parse};

static LIMITS: LazyLock<Limits> = LazyLock::new(Limits::default);

fuzz_target!(|text: &str| {
    if let Ok(Inbound::Chat { body, delay }) = parse(text, &LIMITS) {
        match body {
            Body::Text(text) => assert!(text.chars().count() <= LIMITS.max_text_chars),
            Body::Emoji(emoji) => assert!(emoji.chars().count() <= LIMITS.max_emoji_chars),
        }
        if let Some(delay) = delay {
            assert!(delay <= LIMITS.max_delay());
        }
    }
});
