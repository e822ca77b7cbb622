//! What the finished server and every client share, so that both sides read the protocol the
//! same way and neither depends on the other:
//!
//! - [`schedule`]: the `/schedule hours 1 seconds 9 message ...` grammar and the wire
//!   `Schedule` (the web page has the same grammar in JavaScript, and the client's tests hold
//!   the two to one table).

pub mod schedule;
