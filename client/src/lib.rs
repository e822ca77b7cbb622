//! The chatterbox client side.
//!
//! - [`web`]: the browser chat page (files under `web/`, embedded at compile time) as a warp filter;
//!   `cargo run -p client` serves it, and the finished server serves it at its own `/`.
//! - [`schedule`]: the `/schedule hours 1 seconds 9 message ...` grammar, from the `wire`
//!   package that the server shares (re-exported here for the clients).
//! - [`Connection`]: a typed WebSocket connection whose every wait has a timeout; the lesson tests,
//!   the server tests, the terminal client (`chat`) and the benchmark all talk through it.
//!   [`Conversation`] names a test's connections and waits 2 s per frame, so that a lesson test
//!   fails fast with one line: who sent what, what was expected, what came instead.
//! - [`message`]: the frames a chat client sends; [`http`]: a bare `GET` for the HTTP side.
//! - [`RunningServer`]: starts a chatterbox binary on a free port and reads its address, the way
//!   an attendee runs it.

pub mod connection;
pub mod http;
pub mod message;
pub mod running;
pub mod web;

pub use connection::{Connection, Conversation, Frame};
pub use running::RunningServer;
/// The `/schedule` grammar, from the `wire` package the server shares.
pub use wire::schedule;
