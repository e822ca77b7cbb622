//! `chatload fanout`: S senders, N-1 receivers per message, every delivery checked and timed.
//!
//! Each message carries a token `chatload:<sender>:<seq>:<sent>` (sent = nanoseconds since a
//! start instant shared by the whole run), inside an ordinary chat frame:
//! `{"type":"text","data":{"text":"chatload:3:17:123456789"}}`. The server relays it, with
//! `author` added, to every other connection in the feed; each receiver finds the token by its
//! prefix (no JSON parsing on the hot path: the token needs no escaping, so it appears verbatim
//! in whatever JSON the server writes), marks (sender, seq) in its own bitmap, and records the
//! latency.
//!
//! In-flight window: each message has a countdown of the receivers still to get it (N-1). The
//! receiver whose first copy brings it to zero counts the message as delivered for its sender
//! and wakes it. A sender with `window` messages sent but not yet delivered to everyone waits.
//!
//! End of run: after its last message a sender sends an end marker (`chatload:<sender>:end`).
//! Messages from one sender arrive in order, so a receiver that has every sender's end marker
//! has everything it will get; it stops then. The run also stops at the deadline, or when no
//! message has been delivered to everyone for `stall` (a server that drops messages would
//! otherwise hold a windowed sender until the deadline). What has not arrived by then is lost;
//! a second copy of a (sender, seq) is a duplicate, whenever it arrives before the end.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use client::connection::Socket;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

use crate::connections;
use crate::process_stats::{CpuTime, Memory, RssSampler};

const TOKEN_PREFIX: &str = "chatload:";

/// The most deliveries one run records (800 MB of latencies).
const MAX_DELIVERIES: u64 = 100_000_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct Fanout {
    /// Connection i goes to `urls[i % urls.len()]`: several URLs spread the clients over
    /// the nodes of a cluster.
    pub urls: Vec<String>,
    pub clients: usize,
    pub senders: usize,
    pub messages: u32,
    pub pace: Pace,
    pub server_pid: Option<u32>,
    pub concurrency: usize,
    pub deadline: Duration,
    /// Stop once no message has been delivered to every receiver for this long.
    pub stall: Duration,
}

/// How fast each sender sends.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pace {
    /// As fast as possible, with at most this many messages in flight per sender.
    Window(u32),
    /// This many messages per second per sender, whatever is in flight.
    Rate(f64),
}

impl Pace {
    /// About 256 messages in flight in all, at least one per sender: enough to keep a server
    /// busy, few enough that a bounded server queue is never the thing being measured.
    pub fn default_window(senders: usize) -> Pace {
        Pace::Window((256 / senders.max(1)).max(1) as u32)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub mode: &'static str,
    pub clients: usize,
    pub senders: usize,
    pub messages: u32,
    pub pace: Pace,
    pub connect_seconds: f64,
    /// From the first message sent to the last one received.
    pub send_seconds: f64,
    pub expected_deliveries: u64,
    /// First copies of (sender, seq) received.
    pub deliveries: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// First copies that arrived after a later message of the same sender.
    pub out_of_order: u64,
    /// Text frames without a token, tokens from a connection's own sender, and non-text frames.
    pub unexpected_frames: u64,
    /// Receivers whose connection ended or failed before the end of the run.
    pub receivers_failed: u64,
    pub deadline_reached: bool,
    /// The run was stopped because nothing was delivered for `stall`.
    pub stalled: bool,
    pub deliveries_per_second: f64,
    pub latency_us: Latency,
    pub server: Option<ServerUsage>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerUsage {
    /// Server CPU while connections opened.
    pub connect_cpu_seconds: f64,
    /// Server CPU from the first message to the last delivery.
    pub cpu_seconds: f64,
    pub cpu_us_per_delivery: f64,
    /// The kernel's high-water mark of resident memory (VmHWM) at the end, in KiB.
    pub peak_rss_kib: u64,
    /// The largest VmRSS seen by sampling every 100 ms, in KiB.
    pub sampled_peak_rss_kib: u64,
}

/// State every task of a run shares.
struct Shared {
    start: Instant,
    senders: usize,
    messages: u32,
    /// Per (sender, seq): how many receivers have yet to get it.
    pending: Vec<AtomicU32>,
    /// Per sender: how many of its messages every receiver has got (or, for a receiver whose
    /// connection ended, given up on).
    delivered: Vec<AtomicU32>,
    /// Per sender: woken when one of its messages is delivered to everyone.
    wakeups: Vec<Notify>,
    /// Receivers still reading; the last one to finish wakes `all_received`.
    receivers_running: AtomicUsize,
    all_received: Notify,
}

impl Shared {
    /// Messages delivered to everyone plus receivers finished: while this grows, the run is
    /// making progress.
    fn progress(&self) -> (u64, usize) {
        let settled = self.delivered.iter().map(|d| u64::from(d.load(Ordering::Relaxed))).sum();
        (settled, self.receivers_running.load(Ordering::Relaxed))
    }
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

pub async fn run(config: &Fanout) -> Result<FanoutReport> {
    if config.clients < 2 {
        bail!("--clients must be at least 2: a message goes to every connection but its sender");
    }
    if config.senders == 0 || config.senders > config.clients {
        bail!("--senders must be between 1 and --clients");
    }
    if let Pace::Rate(rate) = config.pace
        && !(0.001..=1e9).contains(&rate)
    {
        bail!("--rate must be between 0.001 and 1e9 messages per second");
    }
    if let Pace::Window(0) = config.pace {
        bail!("--window must be at least 1");
    }
    // Every delivery costs 8 bytes of latency record, and each receiver one bit per message:
    // refuse runs that would need gigabytes rather than fail half-way.
    let expected = (config.senders as u64 * u64::from(config.messages))
        .saturating_mul(config.clients as u64 - 1);
    if expected > MAX_DELIVERIES {
        bail!("{expected} deliveries is more than one run records (at most {MAX_DELIVERIES})");
    }
    for url in &config.urls {
        connections::require_loopback(url).await?;
    }
    connections::raise_open_file_limit()?;
    if let Some(pid) = config.server_pid {
        crate::process_stats::check_readable(pid)?;
    }

    let start = Instant::now();
    let deadline = start + config.deadline;
    let sampler = config.server_pid.map(|pid| RssSampler::start(pid, Duration::from_millis(100)));
    let cpu_before_connect = config.server_pid.map(CpuTime::read).transpose()?;

    let (sockets, connect_time) =
        connections::open(&config.urls, config.clients, config.concurrency, deadline).await?;

    let cpu_before_send = config.server_pid.map(CpuTime::read).transpose()?;
    let total_messages = config.senders * config.messages as usize;
    let receivers_per_message = u32::try_from(config.clients - 1)?;
    let shared = Arc::new(Shared {
        start,
        senders: config.senders,
        messages: config.messages,
        pending: (0..total_messages).map(|_| AtomicU32::new(receivers_per_message)).collect(),
        delivered: (0..config.senders).map(|_| AtomicU32::new(0)).collect(),
        wakeups: (0..config.senders).map(|_| Notify::new()).collect(),
        receivers_running: AtomicUsize::new(
            (0..config.clients).filter(|&index| expects_messages(index, config.senders)).count(),
        ),
        all_received: Notify::new(),
    });

    let (stop, stopped) = watch::channel(false);
    let send_started_ns = shared.now_ns();
    let mut receivers = Vec::with_capacity(config.clients);
    let mut senders = Vec::with_capacity(config.senders);
    for (index, socket) in sockets.into_iter().enumerate() {
        let (sink, stream) = socket.split();
        receivers.push(tokio::spawn(receive(stream, index, shared.clone(), stopped.clone())));
        if index < config.senders {
            let (shared, stopped) = (shared.clone(), stopped.clone());
            senders.push(tokio::spawn(send(sink, index, shared, config.pace, stopped)));
        }
    }
    let stall = match config.pace {
        // A slow rate delivers rarely: give it three intervals.
        Pace::Rate(rate) => config.stall.max(Duration::from_secs_f64(3.0 / rate)),
        Pace::Window(_) => config.stall,
    };
    let ending = watch_progress(&shared, deadline, stall).await;
    // Also ends the receivers that expect nothing (a lone sender), which read until now so
    // that any frame the server sends them counts as unexpected.
    stop.send_replace(true);

    let mut stats = ReceiverStats::default();
    let mut latencies: Vec<u64> = Vec::new();
    let mut receivers_failed = 0;
    for receiver in receivers {
        let mut received = receiver.await?;
        receivers_failed += u64::from(received.failed);
        latencies.append(&mut received.latencies_ns);
        stats.merge(&received);
    }
    let cpu_after = config.server_pid.map(CpuTime::read).transpose()?;
    let memory = config.server_pid.map(Memory::read).transpose()?;
    let sampled_peak = match sampler {
        Some(sampler) => Some(sampler.finish().await),
        None => None,
    };
    for sender in senders {
        sender.await?;
    }

    let send_seconds = stats.last_delivery_ns.saturating_sub(send_started_ns) as f64 / 1e9;
    let server = match (cpu_before_connect, cpu_before_send, cpu_after, memory) {
        (Some(before_connect), Some(before_send), Some(after), Some(memory)) => {
            let cpu_seconds = after.since(&before_send);
            Some(ServerUsage {
                connect_cpu_seconds: before_send.since(&before_connect),
                cpu_seconds,
                cpu_us_per_delivery: cpu_seconds * 1e6 / stats.unique.max(1) as f64,
                peak_rss_kib: memory.peak_kib,
                sampled_peak_rss_kib: sampled_peak.unwrap_or(0),
            })
        }
        _ => None,
    };
    Ok(FanoutReport {
        mode: "fanout",
        clients: config.clients,
        senders: config.senders,
        messages: config.messages,
        pace: config.pace,
        connect_seconds: connect_time.as_secs_f64(),
        send_seconds,
        expected_deliveries: expected,
        deliveries: stats.unique,
        lost: expected.saturating_sub(stats.unique),
        duplicates: stats.duplicates,
        out_of_order: stats.out_of_order,
        unexpected_frames: stats.unexpected,
        receivers_failed,
        deadline_reached: ending == Ending::Deadline,
        stalled: ending == Ending::Stalled,
        deliveries_per_second: if send_seconds > 0.0 {
            stats.unique as f64 / send_seconds
        } else {
            0.0
        },
        latency_us: latency_summary(&mut latencies),
        server,
    })
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Every receiver has every sender's end marker (or its connection ended).
    Complete,
    Deadline,
    /// Nothing was delivered to everyone, and no receiver finished, for the stall time.
    Stalled,
}

/// Waits for every receiver to finish, checking a few times a second that the run still makes
/// progress and is within its deadline.
async fn watch_progress(shared: &Shared, deadline: Instant, stall: Duration) -> Ending {
    let mut all_received = pin!(shared.all_received.notified());
    let mut last_progress = shared.progress();
    let mut last_change = Instant::now();
    loop {
        tokio::select! {
            _ = &mut all_received => return Ending::Complete,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Ending::Deadline;
        }
        let progress = shared.progress();
        if progress != last_progress {
            (last_progress, last_change) = (progress, now);
        } else if now - last_change >= stall {
            return Ending::Stalled;
        }
    }
}

/// Sends this sender's messages, then its end marker, unless the run is stopped first.
async fn send(
    mut sink: SplitSink<Socket, Message>,
    me: usize,
    shared: Arc<Shared>,
    pace: Pace,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticks = match pace {
        Pace::Rate(rate) => {
            // At least a nanosecond: an interval of zero panics.
            let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
            let mut ticks = tokio::time::interval(period);
            // A stall is followed by a catch-up burst, so the average rate stays as asked.
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            Some(ticks)
        }
        Pace::Window(_) => None,
    };
    for seq in 0..shared.messages {
        match (pace, ticks.as_mut()) {
            (Pace::Window(window), _) => {
                if seq - shared.delivered[me].load(Ordering::Acquire) >= window {
                    // Out of window: push out what is buffered, then wait for a delivery.
                    if sink.flush().await.is_err() {
                        return;
                    }
                    while seq - shared.delivered[me].load(Ordering::Acquire) >= window {
                        // notify_one keeps a permit if the wake-up comes before we wait.
                        tokio::select! {
                            _ = shared.wakeups[me].notified() => {}
                            _ = stopped.changed() => return,
                        }
                    }
                }
            }
            (Pace::Rate(_), Some(ticks)) => {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped.changed() => return,
                }
            }
            (Pace::Rate(_), None) => unreachable!("a rate always has its interval"),
        }
        let frame = format!(
            r#"{{"type":"text","data":{{"text":"{TOKEN_PREFIX}{me}:{seq}:{}"}}}}"#,
            shared.now_ns()
        );
        // In a window, `feed` lets several messages share one write; a rate sends each alone.
        let sent = match pace {
            Pace::Window(_) => sink.feed(Message::text(frame)).await,
            Pace::Rate(_) => sink.send(Message::text(frame)).await,
        };
        if sent.is_err() {
            return; // the receiving half sees the connection end and reports it
        }
    }
    let end = format!(r#"{{"type":"text","data":{{"text":"{TOKEN_PREFIX}{me}:end"}}}}"#);
    let _ = sink.send(Message::text(end)).await;
}

#[derive(Debug, Default)]
struct ReceiverStats {
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
    unexpected: u64,
    failed: bool,
    last_delivery_ns: u64,
    latencies_ns: Vec<u64>,
}

impl ReceiverStats {
    fn merge(&mut self, other: &ReceiverStats) {
        self.unique += other.unique;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.unexpected += other.unexpected;
        self.last_delivery_ns = self.last_delivery_ns.max(other.last_delivery_ns);
    }
}

/// One token, read from a received frame.
#[derive(Debug, PartialEq, Eq)]
enum Token {
    Message { sender: usize, seq: u32, sent_ns: u64 },
    End { sender: usize },
}

/// Finds and reads the token in a frame, without parsing the JSON around it.
fn parse_token(frame: &str) -> Option<Token> {
    let start = frame.find(TOKEN_PREFIX)? + TOKEN_PREFIX.len();
    let rest = &frame[start..];
    let end = rest.find('"')?;
    let mut fields = rest[..end].split(':');
    let sender = fields.next()?.parse().ok()?;
    let second = fields.next()?;
    let token = if second == "end" {
        Token::End { sender }
    } else {
        Token::Message { sender, seq: second.parse().ok()?, sent_ns: fields.next()?.parse().ok()? }
    };
    fields.next().is_none().then_some(token)
}

/// Reads one connection's frames until every other sender's end marker, or until stopped.
async fn receive(
    stream: SplitStream<Socket>,
    me: usize,
    shared: Arc<Shared>,
    stopped: watch::Receiver<bool>,
) -> ReceiverStats {
    let stats = read_tokens(stream, me, &shared, stopped).await;
    if expects_messages(me, shared.senders)
        && shared.receivers_running.fetch_sub(1, Ordering::AcqRel) == 1
    {
        shared.all_received.notify_one();
    }
    stats
}

/// Whether connection `index` receives any messages: all do but a lone sender.
fn expects_messages(index: usize, senders: usize) -> bool {
    senders - usize::from(index < senders) > 0
}

async fn read_tokens(
    mut stream: SplitStream<Socket>,
    me: usize,
    shared: &Shared,
    mut stopped: watch::Receiver<bool>,
) -> ReceiverStats {
    let mut stats = ReceiverStats::default();
    let messages = shared.messages as usize;
    let is_sender = me < shared.senders;
    let expects = expects_messages(me, shared.senders);
    let mut ends_to_see = shared.senders - usize::from(is_sender);
    // One bit per (sender, seq), and the highest seq seen so far from each sender, plus one.
    let mut seen = vec![0u64; (shared.senders * messages).div_ceil(64)];
    let mut next_seq = vec![0u32; shared.senders];
    let mut ended = vec![false; shared.senders];
    while ends_to_see > 0 || !expects {
        let message = tokio::select! {
            biased;
            message = stream.next() => message,
            _ = stopped.changed() => break,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(_)) => {
                stats.unexpected += 1;
                continue;
            }
            Some(Err(_)) | None => {
                stats.failed = true;
                break;
            }
        };
        // The finished server replays recent messages to a newcomer (`"history": true`, last
        // in the frame): earlier runs' traffic, not this run's deliveries.
        if connections::is_history(&text) {
            continue;
        }
        match parse_token(&text) {
            Some(Token::Message { sender, seq, sent_ns })
                if sender < shared.senders && sender != me && (seq as usize) < messages =>
            {
                let now = shared.now_ns();
                let bit = sender * messages + seq as usize;
                let (word, mask) = (bit / 64, 1u64 << (bit % 64));
                if seen[word] & mask != 0 {
                    stats.duplicates += 1;
                    continue;
                }
                seen[word] |= mask;
                stats.unique += 1;
                stats.last_delivery_ns = now;
                stats.latencies_ns.push(now.saturating_sub(sent_ns));
                if seq < next_seq[sender] {
                    stats.out_of_order += 1;
                } else {
                    next_seq[sender] = seq + 1;
                }
                if shared.pending[bit].fetch_sub(1, Ordering::AcqRel) == 1 {
                    shared.delivered[sender].fetch_add(1, Ordering::Release);
                    shared.wakeups[sender].notify_one();
                }
            }
            Some(Token::End { sender })
                if sender < shared.senders && sender != me && !ended[sender] =>
            {
                ended[sender] = true;
                ends_to_see -= 1;
            }
            _ => stats.unexpected += 1,
        }
    }
    if stats.failed {
        give_up_unseen(&seen, me, shared);
    }
    stats
}

/// A receiver whose connection ended will get nothing more: count every message it has not
/// seen as settled for it, so that senders waiting on their window go on (those messages are
/// still counted lost) instead of stalling until the deadline.
fn give_up_unseen(seen: &[u64], me: usize, shared: &Shared) {
    let messages = shared.messages as usize;
    for sender in (0..shared.senders).filter(|&sender| sender != me) {
        for bit in sender * messages..(sender + 1) * messages {
            if seen[bit / 64] & (1u64 << (bit % 64)) == 0
                && shared.pending[bit].fetch_sub(1, Ordering::AcqRel) == 1
            {
                shared.delivered[sender].fetch_add(1, Ordering::Release);
                shared.wakeups[sender].notify_one();
            }
        }
    }
}

/// Percentiles by the nearest-rank method, in microseconds.
fn latency_summary(latencies_ns: &mut [u64]) -> Latency {
    if latencies_ns.is_empty() {
        return Latency::default();
    }
    latencies_ns.sort_unstable();
    let at = |fraction: f64| {
        let rank = (fraction * latencies_ns.len() as f64).ceil() as usize;
        latencies_ns[rank.clamp(1, latencies_ns.len()) - 1] as f64 / 1e3
    };
    Latency { p50: at(0.50), p90: at(0.90), p99: at(0.99), max: at(1.0) }
}

impl FanoutReport {
    /// A few lines for a person to read.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "fanout: {} clients, {} senders x {} messages, {:?}\n\
             connect: {:.2} s; send: {:.2} s; {:.0} deliveries/s\n\
             deliveries: {} of {} (lost {}, duplicates {}, out of order {}, unexpected frames {}, \
             failed receivers {}{})\n\
             latency: p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us",
            self.clients,
            self.senders,
            self.messages,
            self.pace,
            self.connect_seconds,
            self.send_seconds,
            self.deliveries_per_second,
            self.deliveries,
            self.expected_deliveries,
            self.lost,
            self.duplicates,
            self.out_of_order,
            self.unexpected_frames,
            self.receivers_failed,
            match (self.deadline_reached, self.stalled) {
                (true, _) => ", DEADLINE REACHED",
                (_, true) => ", STOPPED: nothing delivered for the stall time",
                _ => "",
            },
            self.latency_us.p50,
            self.latency_us.p90,
            self.latency_us.p99,
            self.latency_us.max,
        );
        if let Some(server) = &self.server {
            text += &format!(
                "\nserver: {:.3} us CPU per delivery ({:.3} s while sending, {:.3} s while \
                 connecting); peak RSS {:.1} MiB (sampled {:.1} MiB)",
                server.cpu_us_per_delivery,
                server.cpu_seconds,
                server.connect_cpu_seconds,
                server.peak_rss_kib as f64 / 1024.0,
                server.sampled_peak_rss_kib as f64 / 1024.0,
            );
        }
        text
    }

    /// True when every expected message arrived exactly once, in order, and nothing else did.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.unexpected_frames == 0
            && self.receivers_failed == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tokens_from_any_json_around_them() {
        let relayed =
            r#"{"author":"ab12","data":{"text":"chatload:3:17:123456789"},"type":"text"}"#;
        assert_eq!(
            parse_token(relayed),
            Some(Token::Message { sender: 3, seq: 17, sent_ns: 123456789 })
        );
        assert_eq!(
            parse_token(r#"{"data":{"text":"chatload:0:end"},"type":"text"}"#),
            Some(Token::End { sender: 0 })
        );
        assert_eq!(parse_token(r#"{"id":"ab12"}"#), None);
        assert_eq!(parse_token(r#"{"text":"chatload:1:2"}"#), None);
        assert_eq!(parse_token(r#"{"text":"chatload:1:2:3:4"}"#), None);
        assert_eq!(parse_token(r#"{"text":"chatload:x:2:3"}"#), None);
        assert_eq!(parse_token("chatload:1:2:3"), None); // no closing quote
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut latencies: Vec<u64> = (1..=100).map(|n| n * 1000).collect();
        let summary = latency_summary(&mut latencies);
        assert_eq!((summary.p50, summary.p90, summary.p99, summary.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(latency_summary(&mut []).max, 0.0);
    }
}
