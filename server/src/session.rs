//! One WebSocket connection, from its `{"id"}` frame to its close frame.
//!
//! A single task both reads and writes, so an idle connection costs one small future and its
//! socket buffers. Reading: each frame passes the rate limit, is parsed by `protocol` and
//! handed to the hub or the scheduler. Writing: the hub pushes shared, already-serialised
//! frames into this connection's queue; the task drains whatever has accumulated into the
//! socket and flushes once, so one system call carries many frames under load.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FusedStream;
use futures::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::{debug, info};
use uuid::Uuid;

use crate::Server;
use crate::accounts::Profile;
use crate::command::{Command, Reply, Sender};
use crate::connections::ClientAddress;
use crate::frame::Frame;
use crate::frame_meter::FrameMeter;
use crate::hub::{Catchup, Eviction, PeerId};
use crate::message::{Author, Channel};
use crate::outbox::{Full, Outbox};
use crate::protocol;
use crate::rate_limit::{TokenBucket, Verdict};
use crate::scheduler::PendingCount;
use crate::store::StoredAccount;

pub type Socket = WebSocketStream<FrameMeter<TokioIo<Upgraded>>>;

/// How many times a write waits for more frames before it is flushed.
const MAX_YIELDS: usize = 4;

/// Frames handed to the kernel in one `writev` at most.
const MAX_FRAMES_PER_WRITE: usize = 256;

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
    /// Who this connection speaks as: a guest's fresh id, or its account's id and name.
    author: Author,
    /// Whether it speaks for an account (whose name may change while it is connected).
    account: bool,
    outbox: Arc<Outbox>,
    /// Frames taken from the outbox and not yet fully written; a frame cut short by an
    /// interrupted write stays at the front, trimmed to what is left of it.
    unwritten: VecDeque<Frame>,
    bucket: TokenBucket,
    pending: PendingCount,
    /// Where the client connects from, for the per-address cap on schedules.
    address: ClientAddress,
}

/// Serves one upgraded connection until it ends.
/// `account`: the account of the session cookie it was opened with; a guest without one.
pub async fn run(
    server: Arc<Server>,
    mut ws: Socket,
    address: ClientAddress,
    catchup: Catchup,
    account: Option<Box<StoredAccount>>,
) {
    let id = Uuid::new_v4();
    // The outbound queue, bounded; its policy for clients that stop reading is in `outbox`.
    let outbox = Arc::new(Outbox::new(server.limits.queue_frames));
    let (evict, mut evicted) = oneshot::channel();
    // Queued before joining, so the id (and an account's profile) come first and every
    // broadcast after the join follows.
    let author = match &account {
        None => Author::guest(id.simple().to_string().into()),
        Some(account) => {
            let name = server.accounts.names.set(&account.id, &account.name);
            Author { id: account.id.as_str().into(), name: Some(name) }
        }
    };
    let _ = outbox.offer(protocol::id_frame(&author.id));
    if let Some(account) = &account {
        let _ = outbox.offer(protocol::me_frame(&Profile::of(account)));
    }
    let is_account = account.is_some();
    // Not kept for the connection's life: it holds the password's hash.
    drop(account);
    if let (Catchup::After(seq), Some(filler)) = (catchup, &server.gap_filler) {
        filler.reach(Channel::Feed, seq).await;
    }
    if !server.hub.join(id, author.clone(), outbox.clone(), evict, catchup) {
        close(&mut ws, &mut VecDeque::new(), CloseCode::Away, "server shutting down").await;
        return;
    }
    info!(id = %author.id, "connected");
    let bucket = TokenBucket::new(
        server.limits.message_rate,
        server.limits.message_burst,
        Instant::now().into_std(),
    );
    let mut session = Session {
        server,
        id,
        author,
        account: is_account,
        outbox,
        unwritten: VecDeque::new(),
        bucket,
        pending: PendingCount::default(),
        address,
    };
    let end = session.serve(&mut ws, &mut evicted).await;
    session.server.hub.leave(id);
    let author = &session.author.id;
    let unwritten = &mut session.unwritten;
    match end {
        End::Gone => info!(id = %author, "disconnected"),
        End::WriteFailed(error) => info!(id = %author, %error, "disconnected: write failed"),
        End::Silent => info!(id = %author, "disconnected: no answer to pings"),
        End::Evicted(Eviction::SlowConsumer) => {
            info!(id = %author, "disconnected: slow consumer");
            close(&mut ws, unwritten, CloseCode::Policy, "too slow: outbound queue full").await;
        }
        End::Evicted(Eviction::ShuttingDown) => {
            info!(id = %author, "disconnected: server shutting down");
            close(&mut ws, unwritten, CloseCode::Away, "server shutting down").await;
        }
        End::Flooding => {
            info!(id = %author, "disconnected: flooding");
            close(&mut ws, unwritten, CloseCode::Policy, "too many messages").await;
        }
        End::Broken(error) => {
            info!(id = %author, %error, "disconnected: bad frame");
            if let Some((code, reason)) = close_for(&error, ws.get_ref()) {
                close(&mut ws, unwritten, code, reason).await;
            }
        }
    }
}

/// The close frame a read error deserves, if the peer is still there to get one.
fn close_for<IO>(error: &WsError, meter: &FrameMeter<IO>) -> Option<(CloseCode, &'static str)> {
    match error {
        WsError::Capacity(_) => Some((CloseCode::Size, "frame too large")),
        WsError::Utf8(_) if meter.saw_close() => {
            Some((CloseCode::Invalid, "close reason is not valid UTF-8"))
        }
        WsError::Utf8(_) => Some((CloseCode::Invalid, "text frame is not valid UTF-8")),
        WsError::Protocol(_) => Some((CloseCode::Protocol, "protocol error")),
        WsError::Io(_) => {
            meter.violation().map(|violation| (CloseCode::Policy, violation.reason()))
        }
        _ => None,
    }
}

/// Sends a close frame and waits briefly for the client's answering close, dropping whatever
/// comes before it. After a read error tungstenite reads no more, so the socket itself is read
/// and drained (the rest of an oversized frame, say): closing a socket with unread data makes
/// the kernel reset the connection, which can destroy the close frame on its way.
async fn close(
    ws: &mut Socket,
    unwritten: &mut VecDeque<Frame>,
    code: CloseCode,
    reason: &'static str,
) {
    // Frames already taken for this client go first; a frame cut short by an interrupted write
    // must be finished before any other frame may follow. If that cannot be done in time (a
    // client that stopped reading), the connection is dropped without a close frame.
    if !unwritten.is_empty() {
        let finished =
            timeout(CLOSE_TIMEOUT, write_frames(ws.get_mut().inner_mut(), unwritten)).await;
        if !matches!(finished, Ok(Ok(()))) {
            return;
        }
    }
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
    let io = ws.get_mut().inner_mut();
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
    async fn serve(&mut self, ws: &mut Socket, evicted: &mut oneshot::Receiver<Eviction>) -> End {
        let ping_interval = self.server.limits.ping_interval();
        let ping_timeout = self.server.limits.ping_timeout();
        let mut last_heard = Instant::now();
        let mut ping = interval_at(last_heard + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
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
                _ = self.outbox.ready() => {}
                _ = ping.tick() => {
                    if last_heard.elapsed() >= ping_timeout {
                        return End::Silent;
                    }
                    self.unwritten.push_back(Frame::ping());
                }
            }
            // A client that stops reading blocks this write; meanwhile the hub may evict it
            // (its queue filled up) or it may stay silent past the ping timeout.
            tokio::select! {
                biased;
                written = write_batch(ws, &self.outbox, &mut self.unwritten, &self.server.counters.frames_out) => {
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
        self.server.counters.frames_in.inc();
        let text = match &message {
            Message::Text(text) => Some(text.as_str()),
            Message::Binary(_) | Message::Ping(_) => None,
            // tungstenite answers pings and close frames itself; a pong only proves life.
            Message::Pong(_) | Message::Close(_) | Message::Frame(_) => return None,
        };
        match self.bucket.take(Instant::now().into_std()) {
            Verdict::Allowed => {}
            Verdict::Refused { first } => {
                debug!(id = %self.author.id, "refused: over the message rate");
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
        debug!(id = %self.author.id, frame = text, "received");
        let command = match Command::from_frame(text, &self.server) {
            Ok(command) => command,
            Err(error) => return self.reply(protocol::error_frame(&error.0)),
        };
        if self.account
            && let Some(name) = self.server.accounts.names.get(&self.author.id)
        {
            self.author.name = Some(name);
        }
        let sender = Sender {
            server: &self.server,
            id: self.id,
            author: &self.author,
            outbox: &self.outbox,
            pending: &self.pending,
            address: self.address,
        };
        match command.apply(&sender) {
            Reply::None => None,
            Reply::Frame(frame) => self.reply(frame),
        }
    }

    /// Queues a frame for this client only; its own full queue makes it a slow consumer too.
    fn reply(&self, frame: Frame) -> Option<End> {
        match self.outbox.offer(frame) {
            Err(Full) => Some(End::Evicted(Eviction::SlowConsumer)),
            Ok(()) => None,
        }
    }
}

/// Writes whatever is queued for this client. Under load more frames are on their way, so it
/// first lets the tasks producing them run, taking what they queue into the same write, for as
/// long as that keeps finding more: many frames then go out in one system call.
async fn write_batch(
    ws: &mut Socket,
    outbox: &Outbox,
    unwritten: &mut VecDeque<Frame>,
    frames_out: &prometheus_client::metrics::counter::Counter,
) -> Result<(), WsError> {
    outbox.take_all(unwritten);
    if unwritten.is_empty() {
        return Ok(()); // a wake-up for frames an earlier batch already took
    }
    for _ in 0..MAX_YIELDS {
        tokio::task::yield_now().await;
        let before = unwritten.len();
        outbox.take_all(unwritten);
        if unwritten.len() == before {
            break;
        }
    }
    // tungstenite may hold bytes of its own for the client (the pong it owes for a ping): they
    // go out first and whole, so frames never interleave.
    ws.flush().await?;
    let frames = unwritten.len() as u64;
    write_frames(ws.get_mut().inner_mut(), unwritten).await?;
    frames_out.inc_by(frames);
    Ok(())
}

/// Writes `frames` to the socket, up to [`MAX_FRAMES_PER_WRITE`] per `writev`. A frame written
/// only in part stays at the front, trimmed, so that an interrupted write can be finished.
async fn write_frames(
    io: &mut TokioIo<Upgraded>,
    frames: &mut VecDeque<Frame>,
) -> std::io::Result<()> {
    while !frames.is_empty() {
        // On the heap, not in this future: every idle connection's task would carry the array.
        let slices: Vec<IoSlice> = frames
            .iter()
            .take(MAX_FRAMES_PER_WRITE)
            .map(|frame| IoSlice::new(frame.as_bytes()))
            .collect();
        let mut written = io.write_vectored(&slices).await?;
        drop(slices);
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while let Some(frame) = frames.front_mut() {
            if written < frame.len() {
                frame.advance(written);
                break;
            }
            written -= frame.len();
            frames.pop_front();
        }
    }
    Ok(())
}
