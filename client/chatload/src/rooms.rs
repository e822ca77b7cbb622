//! `chatload rooms`: issue 9's targets for named rooms and presence, on the finished server.
//!
//! - R1: `GET /api/rooms` with 10,000 rooms (created first through `POST /api/rooms` by a few
//!   accounts) answers in under 50 ms: the time of each of several GETs, from connecting to the
//!   last byte of the list, as p50 / p99 / max.
//! - P1: a room of 1,000 members, joining one by one and then leaving one by one, sends no more
//!   than one presence frame per member per change: every presence frame every member receives
//!   is counted, and must be exactly one `joined` per member already there at each join and one
//!   `left` per member still there at each leave, none repeated.
//!
//! Without `--url` it builds the server in release mode and starts it with the limits these
//! loads need raised (rooms per account, sign-ups and logins per address, connections per
//! address, message and frame rates); with `--url` it loads a server started so by hand. With
//! `--url` given several times (the nodes of a cluster), sign-ups, room creations, GETs and
//! members go to each in turn.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Args;
use client::RunningServer;
use client::connection::Socket;
use futures::{SinkExt, StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::compare::{Program, binaries, machine_description};
use crate::connections;
use crate::fanout::{Latency, latency_summary};

/// `GET /api/rooms` must answer within this (issue 9).
const LIST_TARGET_MS: f64 = 50.0;

/// How long one join or leave may take to be acknowledged, all its presence frames sent.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /api/rooms` requests in flight at once while the rooms are created.
const CREATING_AT_ONCE: usize = 16;

/// With several URLs (nodes), how long P1 waits after the last leave for presence frames that
/// crossed from another node: far more than a hop through a broker on loopback takes.
const CROSS_NODE_SETTLE: Duration = Duration::from_secs(1);

/// The name of P1's room.
const PRESENCE_ROOM: &str = "presence";

#[derive(Args)]
pub struct RoomsArgs {
    /// The finished server's WebSocket URL (loopback only), started with the limits raised as
    /// `chatload rooms` would (see docs/PERFORMANCE.md); without it, chatload builds and starts
    /// target/release/server itself. Several times: the nodes of a cluster, used in turn.
    #[arg(long)]
    url: Vec<String>,
    /// Use target/release/server as it is, without running cargo build.
    #[arg(long)]
    no_build: bool,
    /// Only these checks, comma-separated: R1,P1.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// R1: named rooms to create before timing the list.
    #[arg(long, default_value_t = 10_000)]
    rooms: usize,
    /// R1: accounts that create them, each an equal share.
    #[arg(long, default_value_t = 10)]
    accounts: usize,
    /// R1: `GET /api/rooms` requests to time, one after another.
    #[arg(long, default_value_t = 200)]
    gets: usize,
    /// P1: members of the room that they join and leave one by one.
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// The run ends after this many seconds whatever happens.
    #[arg(long, default_value_t = 300)]
    deadline: u64,
    /// Print the report as one line of JSON at the end, too.
    #[arg(long)]
    pub json: bool,
}

impl RoomsArgs {
    fn runs(&self, check: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|only| only.eq_ignore_ascii_case(check))
    }

    /// What the server needs for these loads from one address, the rest as it comes.
    fn server_arguments(&self) -> Vec<String> {
        let per_account = self.rooms.div_ceil(self.accounts.max(1));
        let connections = self.members + 100;
        [
            ("--max-rooms", (self.rooms + 1).max(10_000)),
            ("--max-rooms-per-account", per_account.max(10)),
            ("--login-burst-per-address", 1_000_000),
            ("--login-per-minute-per-address", 1_000_000),
            ("--max-connections-per-address", connections),
            ("--max-connections", connections.max(20_000)),
            ("--message-rate", 0),
            ("--frame-rate", 0),
        ]
        .iter()
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ListReport {
    pub rooms: usize,
    pub accounts: usize,
    /// Creating them all through the API, sign-ups included.
    pub create_seconds: f64,
    pub gets: usize,
    /// Each GET from connecting to the last byte, in milliseconds.
    pub get_ms: Latency,
    /// The size of one answer.
    pub body_bytes: usize,
    pub target_met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PresenceReport {
    pub members: usize,
    /// Joins and leaves: two per member.
    pub changes: usize,
    /// `{"presence":{"joined"}}` frames received by all members, and how many there must be:
    /// one per member already in the room, at each join.
    pub joined_frames: u64,
    pub joined_expected: u64,
    pub left_frames: u64,
    pub left_expected: u64,
    /// A member told twice of the same person's joining (or leaving).
    pub repeated: u64,
    /// Presence frames received over one per member per change.
    pub extra: u64,
    /// Presence frames received per member still there, per change: 1 when all is well.
    pub frames_per_member_per_change: f64,
    pub seconds: f64,
    pub target_met: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RoomsReport {
    pub list: Option<ListReport>,
    pub presence: Option<PresenceReport>,
}

impl RoomsReport {
    pub fn describe(&self) -> String {
        let mut lines = Vec::new();
        if let Some(list) = &self.list {
            lines.push(format!(
                "R1 GET /api/rooms with {} rooms ({} accounts created them in {:.1} s): {} GETs \
                 of {} KiB each, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; target p99 < {} ms: {}",
                list.rooms,
                list.accounts,
                list.create_seconds,
                list.gets,
                list.body_bytes / 1024,
                list.get_ms.p50,
                list.get_ms.p99,
                list.get_ms.max,
                LIST_TARGET_MS,
                met(list.target_met),
            ));
        }
        if let Some(presence) = &self.presence {
            lines.push(format!(
                "P1 presence in a room of {} members joining then leaving one by one ({} \
                 changes, {:.1} s): {} joined frames (expected {}), {} left frames (expected \
                 {}), {} repeated, {} extra: {:.3} frames per member per change; target at \
                 most 1: {}",
                presence.members,
                presence.changes,
                presence.seconds,
                presence.joined_frames,
                presence.joined_expected,
                presence.left_frames,
                presence.left_expected,
                presence.repeated,
                presence.extra,
                presence.frames_per_member_per_change,
                met(presence.target_met),
            ));
        }
        lines.join("\n")
    }

    pub fn targets_met(&self) -> bool {
        self.list.as_ref().is_none_or(|list| list.target_met)
            && self.presence.as_ref().is_none_or(|presence| presence.target_met)
    }
}

fn met(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

pub async fn run(args: &RoomsArgs) -> Result<RoomsReport> {
    let deadline = Duration::from_secs(args.deadline);
    let limit = connections::raise_open_file_limit()?;
    if limit < args.members as u64 * 2 + 100 {
        eprintln!("warning: the open-file limit is {limit}; {} members may not fit", args.members);
    }
    let binary = if args.url.is_empty() {
        let binaries = binaries(!args.no_build, None, &[Program::Server])?;
        Some(binaries.path(Program::Server))
    } else {
        connections::require_all_loopback(&args.url).await?;
        None
    };
    let mut report = RoomsReport::default();
    if args.runs("R1") {
        let list = on_a_server(args, binary.as_ref(), |urls| list_rooms(urls, args));
        report.list = Some(timeout(deadline, list).await.context("R1 ran past --deadline")??);
    }
    if args.runs("P1") {
        let presence = on_a_server(args, binary.as_ref(), |urls| presence(urls, args.members));
        report.presence =
            Some(timeout(deadline, presence).await.context("P1 ran past --deadline")??);
    }
    if report.list.is_none() && report.presence.is_none() {
        bail!("--only matches none of R1,P1");
    }
    if args.url.is_empty() {
        println!("{}", machine_description());
    }
    Ok(report)
}

/// Runs `check` against the `--url`s, or against a fresh server of its own started from
/// `binary`.
async fn on_a_server<T, F>(
    args: &RoomsArgs,
    binary: Option<&PathBuf>,
    check: impl FnOnce(Vec<String>) -> F,
) -> Result<T>
where
    F: Future<Output = Result<T>>,
{
    let Some(binary) = binary else {
        return check(args.url.clone()).await;
    };
    let arguments = args.server_arguments();
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    let server = RunningServer::start(binary, &arguments).await?;
    let outcome = check(vec![server.ws_url()]).await;
    server.stop().await?;
    outcome
}

/// `HOST:PORT` of a ws:// URL, where the server's HTTP API is.
fn authority(url: &str) -> Result<String> {
    let rest = url.strip_prefix("ws://").context("a ws:// URL")?;
    Ok(rest.split('/').next().unwrap_or_default().to_owned())
}

/// Signs up `username`; returns its session cookie (`chatterbox_session=...`).
async fn sign_up(authority: &str, username: &str) -> Result<String> {
    let body = json!({"username": username, "password": "a benchmark password"}).to_string();
    let response = client::http::request(authority, "POST", "/api/signup", &[], Some(&body))
        .await
        .with_context(|| format!("signing {username} up"))?;
    ensure!(response.status == 201, "signing {username} up: {} {}", response.status, response.body);
    let cookie = response.header("set-cookie").and_then(|cookie| cookie.split(';').next());
    Ok(cookie.context("no session cookie")?.to_owned())
}

/// `POST /api/rooms` as the account of `cookie`.
async fn create_room(authority: &str, cookie: &str, name: &str) -> Result<()> {
    let body = json!({"name": name, "topic": format!("the topic of {name}")}).to_string();
    let headers = [("Cookie", cookie)];
    let response =
        client::http::request(authority, "POST", "/api/rooms", &headers, Some(&body)).await?;
    ensure!(response.status == 201, "creating {name}: {} {}", response.status, response.body);
    Ok(())
}

/// A fresh username for this run (a server given with `--url` may have had runs before).
fn unique(prefix: &str, index: usize) -> String {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() % 1_000_000);
    format!("{prefix}{stamp}-{index}")
}

/// R1: creates `--rooms` rooms from `--accounts` accounts, then times `--gets` GETs of the list;
/// with several URLs, each sign-up, creation and GET goes to the next one in turn (a session
/// made on one node is good on every node).
async fn list_rooms(urls: Vec<String>, args: &RoomsArgs) -> Result<ListReport> {
    let authorities = urls.iter().map(|url| authority(url)).collect::<Result<Vec<_>>>()?;
    let authority = |index: usize| &authorities[connections::url_index(index, authorities.len())];
    let started = Instant::now();
    let accounts = args.accounts.max(1);
    let mut cookies = Vec::with_capacity(accounts);
    for index in 0..accounts {
        cookies.push(sign_up(authority(index), &unique("bench", index)).await?);
    }
    let prefix = unique("r", 0);
    let creations = (0..args.rooms).map(|index| {
        let (authority, cookie) = (authority(index), &cookies[index % accounts]);
        let name = format!("{prefix}-{index}");
        async move { create_room(authority, cookie, &name).await }
    });
    futures::stream::iter(creations).buffer_unordered(CREATING_AT_ONCE).try_collect::<()>().await?;
    let create_seconds = started.elapsed().as_secs_f64();

    let mut times_ns = Vec::with_capacity(args.gets);
    let mut body_bytes = 0;
    for index in 0..args.gets.max(1) {
        let asked = Instant::now();
        let response =
            client::http::request(authority(index), "GET", "/api/rooms", &[], None).await?;
        times_ns.push(asked.elapsed().as_nanos() as u64);
        ensure!(response.status == 200, "GET /api/rooms: {}", response.status);
        let listed: Vec<Value> =
            serde_json::from_str(&response.body).context("the list is not a JSON array")?;
        ensure!(listed.len() >= args.rooms, "{} rooms listed of {}", listed.len(), args.rooms);
        body_bytes = response.body.len();
    }
    // The summary is in microseconds; the report in milliseconds.
    let micros = latency_summary(&mut times_ns);
    let get_ms = Latency {
        p50: micros.p50 / 1e3,
        p90: micros.p90 / 1e3,
        p99: micros.p99 / 1e3,
        max: micros.max / 1e3,
    };
    Ok(ListReport {
        rooms: args.rooms,
        accounts,
        create_seconds,
        gets: times_ns.len(),
        get_ms,
        body_bytes,
        target_met: get_ms.p99 < LIST_TARGET_MS,
    })
}

/// What a member is asked to do; the sender is answered once the server has acknowledged it.
enum Step {
    Join(oneshot::Sender<()>),
    Leave(oneshot::Sender<()>),
}

/// The presence frames one member received.
#[derive(Default)]
struct Heard {
    joined: u64,
    left: u64,
    repeated: u64,
}

/// P1: `members` guests join the room one by one, each after the previous one's joined frame,
/// then leave in the same order, each after the previous one is back in the feed; every
/// presence frame each receives is counted. With several URLs the members go to each in turn.
async fn presence(urls: Vec<String>, members: usize) -> Result<PresenceReport> {
    let authority = authority(urls.first().context("no URL")?)?;
    let owner = sign_up(&authority, &unique("owner", 0)).await?;
    create_room(&authority, &owner, PRESENCE_ROOM).await.or_else(|error| {
        // A server given with --url may have it from an earlier run.
        if error.to_string().contains("409") { Ok(()) } else { Err(error) }
    })?;
    let opened_by = Instant::now() + Duration::from_secs(60);
    let (sockets, _) = connections::open(&urls, members, 64, opened_by).await?;
    let mut tasks = JoinSet::new();
    let mut steps = Vec::with_capacity(members);
    for socket in sockets {
        let (sender, receiver) = mpsc::channel(1);
        steps.push(sender);
        tasks.spawn(member(socket, receiver));
    }

    let started = Instant::now();
    for (phase, make) in [("joining", Step::Join as fn(_) -> Step), ("leaving", Step::Leave)] {
        for (index, member) in steps.iter().enumerate() {
            let (done, acknowledged) = oneshot::channel();
            member.send(make(done)).await.map_err(|_| anyhow!("member {index} ended"))?;
            timeout(STEP_TIMEOUT, acknowledged)
                .await
                .with_context(|| format!("member {index} {phase}: no answer in time"))?
                .with_context(|| format!("member {index} ended while {phase}"))?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // Every member is back in the feed: whatever its own node sent it has arrived before that.
    // A frame from another node has no such order with the answer: give those time to land.
    if urls.len() > 1 {
        tokio::time::sleep(CROSS_NODE_SETTLE).await;
    }
    drop(steps);
    let mut heard = Heard::default();
    while let Some(finished) = tasks.join_next().await {
        let one = finished.context("a member's task failed")??;
        heard.joined += one.joined;
        heard.left += one.left;
        heard.repeated += one.repeated;
    }

    // At the k-th join (and the k-th leave) k - 1 (and members - k) others are there.
    let others = (members * members.saturating_sub(1) / 2) as u64;
    let received = heard.joined + heard.left;
    let extra = received.saturating_sub(2 * others);
    Ok(PresenceReport {
        members,
        changes: 2 * members,
        joined_frames: heard.joined,
        joined_expected: others,
        left_frames: heard.left,
        left_expected: others,
        repeated: heard.repeated,
        extra,
        frames_per_member_per_change: if others == 0 {
            0.0
        } else {
            received as f64 / (2 * others) as f64
        },
        seconds,
        target_met: heard.joined == others
            && heard.left == others
            && heard.repeated == 0
            && extra == 0,
    })
}

/// One member: does the steps it is given and counts the presence frames it reads, until the
/// steps end.
async fn member(mut socket: Socket, mut steps: mpsc::Receiver<Step>) -> Result<Heard> {
    let mut heard = Heard::default();
    // Whom it was told of (joined: true), to find a person told twice.
    let mut told: HashSet<(bool, String)> = HashSet::new();
    // The channel whose joined frame acknowledges the step in progress.
    let mut pending: Option<(&'static str, oneshot::Sender<()>)> = None;
    loop {
        tokio::select! {
            step = steps.recv() => {
                let (frame, channel, done) = match step {
                    None => break,
                    Some(Step::Join(done)) => {
                        (json!({"channel": "room", "room": PRESENCE_ROOM}), "room", done)
                    }
                    Some(Step::Leave(done)) => (json!({"channel": "feed"}), "feed", done),
                };
                socket.send(Message::text(frame.to_string())).await?;
                pending = Some((channel, done));
            }
            frame = socket.next() => {
                let text = match frame.context("the server closed the connection")?? {
                    Message::Text(text) => text,
                    _ => continue,
                };
                let frame: Value = serde_json::from_str(&text)?;
                if let Some(presence) = frame.get("presence") {
                    let (joined, who) = match (presence.get("joined"), presence.get("left")) {
                        (Some(who), _) => (true, who),
                        (None, Some(who)) => (false, who),
                        (None, None) => bail!("a presence frame of another kind: {text}"),
                    };
                    *(if joined { &mut heard.joined } else { &mut heard.left }) += 1;
                    let id = who["id"].as_str().unwrap_or_default().to_owned();
                    if !told.insert((joined, id)) {
                        heard.repeated += 1;
                    }
                } else if frame["status"] == "joined"
                    && let Some((channel, _)) = &pending
                    && frame["channel"] == *channel
                    && let Some((_, done)) = pending.take()
                {
                    let _ = done.send(());
                }
            }
        }
    }
    let _ = socket.close(None).await;
    Ok(heard)
}
