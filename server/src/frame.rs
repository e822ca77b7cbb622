//! Outbound WebSocket frames, encoded once and shared by every recipient.
//!
//! A server's frames are not masked (RFC 6455, section 5.1), so a frame's bytes are the same
//! for everyone who gets it. A broadcast is therefore encoded once, header and JSON payload in
//! one buffer, and each recipient's queue holds a reference to it; sessions write those bytes
//! straight to their sockets (many frames per system call), with no framing or copying per
//! recipient. Frames *from* clients are still read and checked by tungstenite.

use bytes::{Buf, Bytes};
use serde::Serialize;

/// The longest WebSocket frame header: 2 bytes, then an 8-byte length.
const MAX_HEADER: usize = 10;

const FIN: u8 = 0x80;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_PING: u8 = 0x9;

/// One complete, unmasked WebSocket frame, ready for the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// A text frame holding `value` as JSON, serialised straight into the frame's buffer.
    pub fn json(value: &impl Serialize) -> Frame {
        let mut buffer = vec![0; MAX_HEADER];
        // Only structs of strings are serialised here, which cannot fail.
        serde_json::to_writer(&mut buffer, value).expect("a frame of strings always serialises");
        Frame::with_header(OPCODE_TEXT, buffer)
    }

    /// A text frame holding `text`, which must be valid UTF-8 (a `&str` is).
    pub fn text(text: &str) -> Frame {
        let mut buffer = Vec::with_capacity(MAX_HEADER + text.len());
        buffer.resize(MAX_HEADER, 0);
        buffer.extend_from_slice(text.as_bytes());
        Frame::with_header(OPCODE_TEXT, buffer)
    }

    /// An empty ping.
    pub fn ping() -> Frame {
        Frame(Bytes::from_static(&[FIN | OPCODE_PING, 0]))
    }

    /// Writes the header into the space left for it before the payload in `buffer`, so the
    /// payload is never moved.
    fn with_header(opcode: u8, buffer: Vec<u8>) -> Frame {
        let length = buffer.len() - MAX_HEADER;
        let mut header = [0; MAX_HEADER];
        header[0] = FIN | opcode;
        let header_length = match length {
            0..=125 => {
                header[1] = length as u8;
                2
            }
            126..=0xFFFF => {
                header[1] = 126;
                header[2..4].copy_from_slice(&(length as u16).to_be_bytes());
                4
            }
            _ => {
                header[1] = 127;
                header[2..10].copy_from_slice(&(length as u64).to_be_bytes());
                10
            }
        };
        let start = MAX_HEADER - header_length;
        let mut buffer = buffer;
        buffer[start..MAX_HEADER].copy_from_slice(&header[..header_length]);
        Frame(Bytes::from(buffer).slice(start..))
    }

    /// The frame's bytes, header included (or what is left of them to write).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Drops the first `count` bytes, once they are written.
    pub fn advance(&mut self, count: usize) {
        self.0.advance(count);
    }

    /// The text a text frame carries (for tests and logs).
    pub fn payload(&self) -> &str {
        let header_length = match self.0.get(1) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        std::str::from_utf8(&self.0[header_length.min(self.0.len())..]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    /// Every length class decodes, with tungstenite's own parser, to the text that went in.
    #[test]
    fn frames_decode_as_tungstenite_reads_them() {
        for length in [0, 1, 125, 126, 127, 65_535, 65_536, 200_000] {
            let text = "x".repeat(length);
            let frame = Frame::text(&text);
            let mut cursor = std::io::Cursor::new(frame.0.as_ref());
            let (header, payload_length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final);
            assert!(header.mask.is_none(), "a server never masks");
            assert_eq!(payload_length, length as u64);
            assert_eq!(&frame.0[cursor.position() as usize..], text.as_bytes());
            assert_eq!(frame.payload(), text);
        }
        assert_eq!(Frame::json(&serde_json::json!({"a": 1})).payload(), r#"{"a":1}"#);
        assert_eq!(Frame::ping().as_bytes(), [0x89, 0]);
    }
}
