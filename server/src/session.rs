//! One WebSocket connection, from its `{"id"}` frame to its close frame.
//!
//! A single task both reads and writes, so an idle connection costs one small future and its
//! socket buffers. Reading: each frame passes the rate limit, is parsed by `protocol` and
//! handed to the hub or the scheduler. Writing: the hub pushes shared, already-serialised
//! frames into this connection's queue; the task drains whatever has accumulated into the
//! socket and flushes once, so one system call carries many frames under load.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::FusedStream;
use futures::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use tracing::{debug, info};
use uuid::Uuid;

use crate::Server;
use crate::hub::{Eviction, PeerId};
use crate::protocol::{self, ChannelRequest, Inbound};
use crate::rate_limit::{TokenBucket, Verdict};
use crate::scheduler::PendingCount;

pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Frames written before one flush: enough to fill a system call, few enough that reading
/// this connection is not put off for long.
const MAX_BATCH: usize = 256;

/// How long a close frame may take to leave, and the client's answer to arrive.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// The client closed or went away.
    Gone,
    /// Reading failed: an oversized frame, invalid UTF-8, a protocol violation, a reset.
    Broken(WsError),
    /// Writing failed: the client is gone.
    WriteFailed(WsError),
    /// The hub let go of this connection.
    Evicted(Eviction),
    /// The client kept sending far over its rate.
    Flooding,
    /// Nothing heard (not even a pong) within the ping timeout.
    Silent,
}

struct Session {
    server: Arc<Server>,
    id: PeerId,
    author: String,
    outbox: mpsc::Sender<Utf8Bytes>,
    bucket: TokenBucket,
    pending: PendingCount,
}

/// Serves one upgraded connection until it ends.
pub async fn run(server: Arc<Server>, mut ws: Socket) {
    let id = Uuid::new_v4();
    let author = id.simple().to_string();
    // The outbound queue. POLICY: it is bounded (`--queue-frames`) and nothing ever waits for
    // room in it. A client whose queue is full has stopped reading: it is disconnected with
    // close 1008 (logged as a slow consumer) rather than allowed to grow the server's memory,
    // and everyone else keeps receiving. The frames in it are shared with every other
    // recipient, so a full queue costs little more than its slots.
    let (outbox, mut queue) = mpsc::channel(server.limits.queue_frames.max(2));
    let (evict, mut evicted) = oneshot::channel();
    // Queued before joining, so the id comes first and every broadcast after the join follows.
    let _ = outbox.try_send(protocol::id_frame(&author));
    if !server.hub.join(id, outbox.clone(), evict) {
        close(&mut ws, CloseCode::Away, "server shutting down").await;
        return;
    }
    info!(id = %author, "connected");
    let bucket = TokenBucket::new(
        server.limits.message_rate,
        server.limits.message_burst,
        Instant::now().into_std(),
    );
    let mut session =
        Session { server, id, author, outbox, bucket, pending: PendingCount::default() };
    let end = session.serve(&mut ws, &mut queue, &mut evicted).await;
    session.server.hub.leave(id);
    let author = &session.author;
    match end {
        End::Gone => info!(id = %author, "disconnected"),
        End::WriteFailed(error) => info!(id = %author, %error, "disconnected: write failed"),
        End::Silent => info!(id = %author, "disconnected: no answer to pings"),
        End::Evicted(Eviction::SlowConsumer) => {
            info!(id = %author, "disconnected: slow consumer");
            close(&mut ws, CloseCode::Policy, "too slow: outbound queue full").await;
        }
        End::Evicted(Eviction::ShuttingDown) => {
            info!(id = %author, "disconnected: server shutting down");
            close(&mut ws, CloseCode::Away, "server shutting down").await;
        }
        End::Flooding => {
            info!(id = %author, "disconnected: flooding");
            close(&mut ws, CloseCode::Policy, "too many messages").await;
        }
        End::Broken(error) => {
            info!(id = %author, %error, "disconnected: bad frame");
            if let Some((code, reason)) = close_for(&error) {
                close(&mut ws, code, reason).await;
            }
        }
    }
}

/// The close frame a read error deserves, if the peer is still there to get one.
fn close_for(error: &WsError) -> Option<(CloseCode, &'static str)> {
    match error {
        WsError::Capacity(_) => Some((CloseCode::Size, "frame too large")),
        WsError::Utf8(_) => Some((CloseCode::Invalid, "text frame is not valid UTF-8")),
        WsError::Protocol(_) => Some((CloseCode::Protocol, "protocol error")),
        _ => None,
    }
}

/// Sends a close frame and waits briefly for the client's answering close, dropping whatever
/// comes before it. After a read error tungstenite reads no more, so the socket itself is read
/// and drained (the rest of an oversized frame, say): closing a socket with unread data makes
/// the kernel reset the connection, which can destroy the close frame on its way.
async fn close(ws: &mut Socket, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
    let read_failed = ws.is_terminated();
    let _ = timeout(CLOSE_TIMEOUT, async {
        ws.send(Message::Close(Some(frame))).await?;
        while let Some(Ok(_)) = ws.next().await {}
        Ok::<_, WsError>(())
    })
    .await;
    if !read_failed {
        return;
    }
    let io = ws.get_mut();
    let _ = timeout(CLOSE_TIMEOUT, async {
        io.shutdown().await?;
        // On the heap: a buffer in the future would cost every idle connection its size.
        let mut sink = vec![0; 4096];
        let mut budget: usize = 1 << 20;
        while budget > 0 {
            match io.read(&mut sink).await? {
                0 => break,
                n => budget = budget.saturating_sub(n),
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

impl Session {
    async fn serve(
        &mut self,
        ws: &mut Socket,
        queue: &mut mpsc::Receiver<Utf8Bytes>,
        evicted: &mut oneshot::Receiver<Eviction>,
    ) -> End {
        let ping_interval = self.server.limits.ping_interval();
        let ping_timeout = self.server.limits.ping_timeout();
        let mut last_heard = Instant::now();
        let mut ping = interval_at(last_heard + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                why = &mut *evicted => return End::Evicted(why.unwrap_or(Eviction::ShuttingDown)),
                frame = ws.next() => {
                    match frame {
                        None => return End::Gone,
                        Some(Err(error)) => return End::Broken(error),
                        Some(Ok(message)) => {
                            last_heard = Instant::now();
                            if let Some(end) = self.handle(message) {
                                return end;
                            }
                            continue;
                        }
                    }
                }
                Some(frame) = queue.recv() => Message::Text(frame),
                _ = ping.tick() => {
                    if last_heard.elapsed() >= ping_timeout {
                        return End::Silent;
                    }
                    Message::Ping(Bytes::new())
                }
            };
            // A client that stops reading blocks this write; meanwhile the hub may evict it
            // (its queue filled up) or it may stay silent past the ping timeout.
            tokio::select! {
                biased;
                written = write_batch(ws, first, queue) => {
                    if let Err(error) = written {
                        return End::WriteFailed(error);
                    }
                }
                why = &mut *evicted => return End::Evicted(why.unwrap_or(Eviction::ShuttingDown)),
                _ = sleep_until(last_heard + ping_timeout) => return End::Silent,
            }
        }
    }

    /// Acts on one frame from the client; `Some` ends the session.
    fn handle(&mut self, message: Message) -> Option<End> {
        let text = match &message {
            Message::Text(text) => Some(text.as_str()),
            Message::Binary(_) | Message::Ping(_) => None,
            // tungstenite answers pings and close frames itself; a pong only proves life.
            Message::Pong(_) | Message::Close(_) | Message::Frame(_) => return None,
        };
        match self.bucket.take(Instant::now().into_std()) {
            Verdict::Allowed => {}
            Verdict::Refused { first } => {
                debug!(id = %self.author, "refused: over the message rate");
                if first {
                    let reason = format!(
                        "too many messages: at most {} a second (bursts of {})",
                        self.server.limits.message_rate, self.server.limits.message_burst
                    );
                    return self.reply(protocol::error_frame(&reason));
                }
                return None;
            }
            Verdict::Flooding => return Some(End::Flooding),
        }
        match (text, &message) {
            (Some(text), _) => self.handle_text(text),
            (None, Message::Binary(_)) => self.reply(protocol::error_frame(
                "binary frames are not supported: send JSON in text frames",
            )),
            _ => None,
        }
    }

    fn handle_text(&mut self, text: &str) -> Option<End> {
        debug!(id = %self.author, frame = text, "received");
        let hub = &self.server.hub;
        match protocol::parse(text, &self.server.limits) {
            Err(error) => return self.reply(protocol::error_frame(&error.0)),
            Ok(Inbound::Join(ChannelRequest::Random)) => hub.join_random(self.id),
            Ok(Inbound::Join(ChannelRequest::Feed)) => hub.join_feed(self.id),
            Ok(Inbound::Chat { body, delay: None }) => {
                hub.publish(self.id, protocol::chat_frame(&self.author, &body));
            }
            Ok(Inbound::Chat { body, delay: Some(delay) }) => {
                // The channel it was sent in, now: that is where it will be delivered.
                let channel = hub.channel_of(self.id)?;
                let frame = protocol::chat_frame(&self.author, &body);
                let scheduled =
                    self.server.scheduler.schedule(&self.pending, delay, channel, frame);
                if let Err(reason) = scheduled {
                    return self.reply(protocol::error_frame(&reason));
                }
            }
        }
        None
    }

    /// Queues a frame for this client only; its own full queue makes it a slow consumer too.
    fn reply(&self, frame: Utf8Bytes) -> Option<End> {
        match self.outbox.try_send(frame) {
            Err(mpsc::error::TrySendError::Full(_)) => Some(End::Evicted(Eviction::SlowConsumer)),
            _ => None,
        }
    }
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn write_batch(
    ws: &mut Socket,
    first: Message,
    queue: &mut mpsc::Receiver<Utf8Bytes>,
) -> Result<(), WsError> {
    ws.feed(first).await?;
    for _ in 1..MAX_BATCH {
        match queue.try_recv() {
            Ok(frame) => ws.feed(Message::Text(frame)).await?,
            Err(_) => break,
        }
    }
    ws.flush().await
}
