//! A sweep of a few thousand random and malformed frames from many connections at once, while
//! a well-behaved pair keeps chatting: nothing panics, every offender gets an error frame or a
//! close, and the pair never misses a message.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use client::message::text;
use client::{Connection, Frame};
use common::{connect, start};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame as WsFrame, FrameHeader};
use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};

const OFFENDERS: usize = 16;
const FRAMES_EACH: usize = 200;
const MAX_FRAME: usize = 4096;

/// xorshift64*: deterministic, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// What the server must answer a bad frame with.
enum Expect {
    Error,
    Close(u16),
}

fn bad_frame(rng: &mut Rng) -> (Message, Expect) {
    let text = |s: String| Message::Text(Utf8Bytes::from(s));
    let depth = 1 + rng.below(20_000).min(MAX_FRAME / 2 - 2);
    let control = char::from(rng.below(0x20) as u8);
    let binary_len = rng.below(300);
    let garbage: String =
        (0..rng.below(200)).map(|_| char::from(32 + rng.below(95) as u8)).collect();
    match rng.below(14) {
        0 => (Message::Binary(Bytes::from(rng.bytes(binary_len))), Expect::Error),
        1 => (text(format!("{}{}", "[".repeat(depth), "]".repeat(depth))), Expect::Error),
        2 => (
            text(format!(
                "{{\"type\":\"text\",\"data\":{{\"text\":\"x\",\"schedule\":{}{}}}}}",
                "{\"a\":".repeat(depth / 6),
                "}".repeat(depth / 6)
            )),
            Expect::Error,
        ),
        3 => (
            text(format!(
                "{{\"type\":\"text\",\"data\":{{\"text\":{}}}}}",
                "9".repeat(1 + rng.below(400))
            )),
            Expect::Error,
        ),
        4 => (text(format!("{{\"channel\":1e{}}}", rng.below(100_000))), Expect::Error),
        5 => (
            text(format!("{{\"type\":\"text\",\"data\":{{\"text\":\"a{control}b\"}}}}")),
            Expect::Error,
        ),
        6 => (
            text(format!(
                "{{\"type\":{}}}",
                ["[]", "{}", "1", "true", "null", "\"\""][rng.below(6)]
            )),
            Expect::Error,
        ),
        7 => (
            text(format!(
                "{{\"type\":\"text\",\"data\":{}}}",
                ["[]", "1", "\"x\"", "{\"text\":[]}", "{\"text\":{}}", "{\"text\":null}"]
                    [rng.below(6)]
            )),
            Expect::Error,
        ),
        8 => (text(garbage), Expect::Error),
        9 => (
            text(format!(
                "{{\"type\":\"text\",\"data\":{{\"text\":\"x\",\"schedule\":{{\"seconds\":{}}}}}}}",
                ["-1", "1.5", "\"1x\"", "1e3", "99999999999999999999", "[1]", "{}"][rng.below(7)]
            )),
            Expect::Error,
        ),
        10 => (
            text(format!(
                "{{\"type\":\"text\",\"data\":{{\"text\":\"/schedule {}\"}}}}",
                ["", "days 1 message x", "hours", "hours x message y", "seconds 1"][rng.below(5)]
            )),
            Expect::Error,
        ),
        11 => {
            // Invalid UTF-8 in a *text* frame: a protocol-level error, close 1007.
            let mut payload = b"{\"type\":\"text\",\"data\":{\"text\":\"".to_vec();
            payload.extend([0xc3, 0x28, 0xff]);
            payload.extend(b"\"}}");
            let frame = WsFrame::from_payload(
                FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() },
                Bytes::from(payload),
            );
            (Message::Frame(frame), Expect::Close(1007))
        }
        12 => (text("x".repeat(MAX_FRAME + 1 + rng.below(10_000))), Expect::Close(1009)),
        _ => (
            text(format!(
                "{{\"type\":\"{}\",\"data\":{{}}}}",
                ["", "TEXT", "img", "text\u{0}"][rng.below(4)]
            )),
            Expect::Error,
        ),
    }
}

async fn offend(url: String, seed: u64) -> Result<usize> {
    let mut rng = Rng(seed);
    let mut conn = Connection::connect(&url).await?;
    conn.recv_id().await?;
    let mut answered = 0;
    for i in 0..FRAMES_EACH {
        let (frame, expect) = bad_frame(&mut rng);
        conn.send(frame).await.with_context(|| format!("seed {seed} frame {i}"))?;
        match (expect, conn.recv().await.with_context(|| format!("seed {seed} frame {i}"))?) {
            (Expect::Error, Frame::Text(reply)) if reply.starts_with("{\"error\":") => {}
            (Expect::Close(code), Frame::Close(Some(got), _)) if got == code => {
                conn = Connection::connect(&url).await?;
                conn.recv_id().await?;
            }
            (_, other) => bail!("seed {seed} frame {i}: unexpected answer {other:?}"),
        }
        answered += 1;
    }
    Ok(answered)
}

#[tokio::test]
async fn malformed_frames_from_many_connections_never_hurt_the_chat() -> Result<()> {
    let max_frame = MAX_FRAME.to_string();
    let server = start(&["--message-rate", "0", "--max-frame-bytes", &max_frame]).await?;
    let url = server.ws_url();
    let mut alice = connect(&server).await?;
    let mut bob = connect(&server).await?;
    // They chat in a room, so that every frame an offender receives is an answer to it.
    common::pair(&mut alice, &mut bob).await?;
    let offenders: Vec<_> = (0..OFFENDERS)
        .map(|n| tokio::spawn(offend(url.clone(), 0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1))))
        .collect();

    let mut n = 0;
    while offenders.iter().any(|task| !task.is_finished()) || n < 20 {
        alice.conn.send_json(&text(&format!("hello {n}"))).await?;
        assert_eq!(
            common::lesson_fields(bob.conn.recv_json().await?),
            serde_json::json!({"author": alice.id, "type": "text", "data": {"text": format!("hello {n}")}})
        );
        bob.conn.send_json(&text(&format!("hi {n}"))).await?;
        assert_eq!(alice.conn.recv_json().await?["data"]["text"], format!("hi {n}"));
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await; // pacing, not synchronisation
        assert!(n < 100_000, "the sweep never finished");
    }
    let mut total = 0;
    for task in offenders {
        total += task.await??;
    }
    assert_eq!(total, OFFENDERS * FRAMES_EACH);
    alice.conn.expect_silence(Duration::from_millis(100)).await?;
    bob.conn.expect_silence(Duration::from_millis(100)).await?;
    // The offenders have hung up; the pair is still there, in its room.
    let health = common::wait_health(&server, |h| h["connections"] == 2).await?;
    assert_eq!(health["rooms"], 1);
    Ok(())
}
