//! Every WebSocket frame a client sends, counted as its bytes arrive, below tungstenite.
//!
//! tungstenite answers pings, swallows pongs and glues fragments together before the session
//! sees a message, so a flood of pongs or of empty continuation frames never reaches the
//! session's rate limit, and a message whose last fragment never comes holds its buffer for
//! as long as the client keeps the connection alive. This reader sits between the socket and
//! tungstenite and reads just the frame headers as they go by (payloads are skipped, not
//! copied). It enforces two limits and fails the read, which ends the session with 1008:
//! - a budget of frames of every kind (`--frame-rate`, `--frame-burst`), a token bucket;
//! - a deadline for a fragmented message (`--fragment-timeout-secs`), from its first fragment
//!   to its last, whatever else (pongs) arrives meanwhile.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Why the meter cut a connection off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// Frames came faster than the budget allows.
    TooManyFrames,
    /// A fragmented message was not completed in time.
    UnfinishedMessage,
}

impl Violation {
    /// The close frame's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Violation::TooManyFrames => "too many frames",
            Violation::UnfinishedMessage => "fragmented message not completed in time",
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for Violation {}

/// What a frame header says, as far as the meter cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
}

const OPCODE_CONTINUATION: u8 = 0x0;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;

/// Reads frame headers out of a byte stream, skipping payloads. Client frames are masked, so
/// a header is 2 bytes, an extended length of 0, 2 or 8, and a 4-byte mask: 14 at most.
#[derive(Debug, Default, Clone)]
pub struct HeaderScanner {
    header: [u8; 14],
    have: u8,
    payload_left: u64,
}

impl HeaderScanner {
    /// Feeds `bytes`, calling `on_header` for every header completed in them.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(Header)) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min(bytes.len() as u64) as usize;
                self.payload_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            self.header[self.have as usize] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if let Some((header, payload)) = self.complete() {
                self.have = 0;
                self.payload_left = payload;
                on_header(header);
            }
        }
    }

    /// The header and payload length once every header byte is in.
    fn complete(&self) -> Option<(Header, u64)> {
        let have = self.have as usize;
        if have < 2 {
            return None;
        }
        let masked = self.header[1] & 0x80 != 0;
        let mask_len = if masked { 4 } else { 0 };
        let (length_len, short) = match self.header[1] & 0x7F {
            126 => (2, None),
            127 => (8, None),
            short => (0, Some(u64::from(short))),
        };
        if have < 2 + length_len + mask_len {
            return None;
        }
        let payload = short.unwrap_or_else(|| {
            self.header[2..2 + length_len].iter().fold(0u64, |n, &b| (n << 8) | u64::from(b))
        });
        let header = Header { fin: self.header[0] & 0x80 != 0, opcode: self.header[0] & 0x0F };
        Some((header, payload))
    }
}

/// The limits, from the command line; one copy shared by every connection.
#[derive(Debug, Clone, Copy)]
pub struct MeterLimits {
    /// Frames a second, sustained; 0 turns the budget off.
    pub frame_rate: f64,
    /// Frames at once.
    pub frame_burst: u32,
    pub fragment_timeout: Duration,
}

/// A socket whose inbound frames are counted and timed (see the module's documentation). It
/// lives as long as its connection, so it is kept small: the limits are shared, the budget is
/// a token count and a time (a token bucket with no warning stage: a client over it is not
/// typing, and is closed).
pub struct FrameMeter<IO> {
    io: IO,
    limits: Arc<MeterLimits>,
    scanner: HeaderScanner,
    tokens: f32,
    refilled: Instant,
    /// Armed while a fragmented message is unfinished; on the heap, and only then, so an idle
    /// connection does not carry a timer.
    fragment_deadline: Option<Pin<Box<Sleep>>>,
    violation: Option<Violation>,
    /// A fragmented message has begun and not ended.
    in_message: bool,
    saw_close: bool,
}

impl<IO> FrameMeter<IO> {
    pub fn new(io: IO, limits: Arc<MeterLimits>) -> FrameMeter<IO> {
        FrameMeter {
            io,
            tokens: limits.frame_burst.max(1) as f32,
            limits,
            scanner: HeaderScanner::default(),
            refilled: Instant::now(),
            fragment_deadline: None,
            violation: None,
            in_message: false,
            saw_close: false,
        }
    }

    /// Spends `frames` tokens of the budget; false once it is overdrawn.
    fn spend(&mut self, frames: u32) -> bool {
        let rate = self.limits.frame_rate;
        if !(rate > 0.0 && rate.is_finite()) {
            return true;
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        let burst = f64::from(self.limits.frame_burst.max(1));
        let tokens = (f64::from(self.tokens) + elapsed * rate).min(burst) - f64::from(frames);
        self.tokens = tokens as f32;
        tokens >= 0.0
    }

    /// The socket itself, for writing frames that are already encoded and for draining it.
    pub fn inner_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Why reading failed, if the meter failed it.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Whether the client has sent a close frame (so a UTF-8 error is about its reason).
    pub fn saw_close(&self) -> bool {
        self.saw_close
    }

    fn fail(&mut self, violation: Violation) -> io::Error {
        self.violation = Some(violation);
        self.fragment_deadline = None;
        io::Error::other(violation)
    }

    /// Accounts for bytes just read; an error once a limit is broken.
    fn account(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        let mut frames = 0u32;
        let mut in_message = self.in_message;
        let mut saw_close = self.saw_close;
        self.scanner.feed(bytes, |header| {
            frames = frames.saturating_add(1);
            match header.opcode {
                OPCODE_TEXT | OPCODE_BINARY if !header.fin => in_message = true,
                OPCODE_CONTINUATION if header.fin => in_message = false,
                OPCODE_CLOSE => saw_close = true,
                _ => {}
            }
        });
        self.saw_close = saw_close;
        if frames > 0 && !self.spend(frames) {
            return Err(Violation::TooManyFrames);
        }
        if in_message && !self.in_message {
            let timeout = self.limits.fragment_timeout;
            self.fragment_deadline = Some(Box::pin(tokio::time::sleep(timeout)));
        } else if !in_message {
            self.fragment_deadline = None;
        }
        self.in_message = in_message;
        Ok(())
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FrameMeter<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(violation) = this.violation {
            return Poll::Ready(Err(io::Error::other(violation)));
        }
        if let Some(deadline) = this.fragment_deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(this.fail(Violation::UnfinishedMessage)));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if let Err(violation) = this.account(&buf.filled()[before..]) {
            buf.set_filled(before); // a failed read hands over nothing
            return Poll::Ready(Err(this.fail(violation)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FrameMeter<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A masked client frame, as a browser sends it.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n @ 0..=125 => bytes.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                bytes.push(0x80 | 127);
                bytes.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]));
        bytes
    }

    #[test]
    fn finds_every_header_however_the_bytes_are_cut() {
        let mut stream = Vec::new();
        let sizes = [0usize, 1, 125, 126, 65_535, 65_536, 3];
        for (i, size) in sizes.iter().enumerate() {
            stream.extend(frame(i % 2 == 0, OPCODE_TEXT, &vec![b'x'; *size]));
        }
        for chunk in [1, 2, 7, 1000, stream.len()] {
            let mut scanner = HeaderScanner::default();
            let mut seen = Vec::new();
            for piece in stream.chunks(chunk) {
                scanner.feed(piece, |header| seen.push(header.fin));
            }
            assert_eq!(seen, [true, false, true, false, true, false, true], "chunks of {chunk}");
        }
    }

    fn limits(rate: f64, burst: u32, fragment_secs: u64) -> Arc<MeterLimits> {
        Arc::new(MeterLimits {
            frame_rate: rate,
            frame_burst: burst,
            fragment_timeout: Duration::from_secs(fragment_secs),
        })
    }

    #[tokio::test]
    async fn a_flood_of_pongs_overdraws_the_budget() {
        let pongs: Vec<u8> = (0..11).flat_map(|_| frame(true, 0xA, b"")).collect();
        let mut meter = FrameMeter::new(&pongs[..], limits(1.0, 10, 10));
        let mut sink = Vec::new();
        let error = meter.read_to_end(&mut sink).await.unwrap_err();
        assert_eq!(meter.violation(), Some(Violation::TooManyFrames), "{error}");
        // Ten pass.
        let ten: Vec<u8> = (0..10).flat_map(|_| frame(true, 0xA, b"")).collect();
        let mut meter = FrameMeter::new(&ten[..], limits(1.0, 10, 10));
        meter.read_to_end(&mut sink).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfinished_message_times_out_whatever_else_arrives() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut meter = FrameMeter::new(server, limits(0.0, 1, 10));
        use tokio::io::AsyncWriteExt;
        client.write_all(&frame(false, OPCODE_TEXT, b"part")).await.unwrap();
        let mut buf = [0; 4096];
        assert!(meter.read(&mut buf).await.unwrap() > 0);
        for _ in 0..9 {
            tokio::time::advance(Duration::from_secs(1)).await;
            client.write_all(&frame(true, 0xA, b"")).await.unwrap();
            assert!(meter.read(&mut buf).await.unwrap() > 0);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(meter.read(&mut buf).await.is_err());
        assert_eq!(meter.violation(), Some(Violation::UnfinishedMessage));
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_message_disarms_the_deadline() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut meter = FrameMeter::new(server, limits(0.0, 1, 10));
        use tokio::io::AsyncWriteExt;
        client.write_all(&frame(false, OPCODE_TEXT, b"a")).await.unwrap();
        client.write_all(&frame(true, OPCODE_CONTINUATION, b"b")).await.unwrap();
        let mut buf = [0; 4096];
        assert!(meter.read(&mut buf).await.unwrap() > 0);
        tokio::time::advance(Duration::from_secs(60)).await;
        client.write_all(&frame(true, 0xA, b"")).await.unwrap();
        assert!(meter.read(&mut buf).await.unwrap() > 0);
        assert_eq!(meter.violation(), None);
    }
}
