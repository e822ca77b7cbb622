//! Several real `server` processes on one PostgreSQL database and one Redis act as one chat
//! (`--redis`): every message reaches every node once, in one order, with one seq per
//! channel; history, resume, named rooms, deletions, renames, typing and online counts work
//! across nodes; a schedule fires once even when its node is killed; a killed node's clients
//! resume elsewhere and its people leave the counts; Redis restarting loses nothing; random
//! pairing spans the nodes (exactly one partner each, never a dead node's user, and a partner
//! whose node dies is told it left); PostgreSQL away holds the feed's messages on their node,
//! says so in `/healthz`, and delivers them in order once it is back; past what a node can hold
//! its senders are told it is busy, and nothing it accepted is lost.
//!
//! Each test has a database and a Redis channel prefix of its own (`CHATTERBOX_TEST_POSTGRES`,
//! `CHATTERBOX_TEST_REDIS`, see tests/common/databases.rs); the test that restarts Redis runs
//! its own `redis-server` on a free port. Without the variables they are skipped, in CI they
//! fail.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use client::message::text;
use client::{Connection, RunningServer};
use common::api::{account, account_tab, enter_room, post, request};
use common::databases::{TestDatabase, test_redis};
use common::{health, recv_json, start_on, wait_health};
use serde_json::{Value, json};

/// How long any one wait for a message may take.
const PATIENCE: Duration = Duration::from_secs(10);

/// A database and a Redis prefix of the test's own, and the nodes started on them.
struct Cluster {
    database: TestDatabase,
    redis: String,
    prefix: String,
}

impl Cluster {
    /// `None` where the test is to be skipped (the services' variables are unset).
    fn create() -> Result<Option<Cluster>> {
        let Some(database) = TestDatabase::create()? else { return Ok(None) };
        let Some((redis, prefix)) = test_redis()? else { return Ok(None) };
        Ok(Some(Cluster { database, redis, prefix }))
    }

    /// A node named `name`, once it hears the others (its broker is subscribed).
    async fn node(&self, name: &str) -> Result<RunningServer> {
        let node = self.node_on(name, 0).await?;
        wait_health(&node, |h| h["broker"] == "ok").await?;
        Ok(node)
    }

    /// A node on `port` (0: a free one), whether or not Redis answers.
    async fn node_on(&self, name: &str, port: u16) -> Result<RunningServer> {
        let args = [
            "--redis",
            &self.redis,
            "--redis-prefix",
            &self.prefix,
            "--node",
            name,
            // Traffic tests send faster than one person types.
            "--message-rate",
            "0",
        ];
        start_on(self.database.url(), port, &args).await
    }
}

/// A chat frame's seq and text.
fn seq_text(frame: &Value) -> Option<(u64, String)> {
    let seq = frame["seq"].as_u64()?;
    Some((seq, frame["data"]["text"].as_str().unwrap_or_default().to_owned()))
}

/// Reads chat frames until `count` have come (other frames are skipped); each wait bounded.
async fn read_chat(conn: &mut Connection, count: usize) -> Result<Vec<(u64, String)>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + PATIENCE * 3;
    while got.len() < count {
        ensure!(Instant::now() < deadline, "only {} of {count} messages came: {got:?}", got.len());
        if let Some(message) = seq_text(&recv_json(conn).await?) {
            got.push(message);
        }
    }
    Ok(got)
}

/// Reads frames until the chat message `text` comes (a tab of an account gets the feed's
/// history first); its seq and whether it came as history.
async fn read_until(conn: &mut Connection, text: &str) -> Result<(u64, bool)> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        ensure!(Instant::now() < deadline, "{text:?} never came");
        let frame = recv_json(conn).await?;
        if let Some((seq, said)) = seq_text(&frame)
            && said == text
        {
            return Ok((seq, frame["history"] == true));
        }
    }
}

/// Says that `seqs` are `first..` with no gap and no duplicate.
fn consecutive(got: &[(u64, String)], first: u64) -> Result<()> {
    for (index, (seq, text)) in got.iter().enumerate() {
        ensure!(*seq == first + index as u64, "seq {seq} ({text}) at place {index}: {got:?}");
    }
    Ok(())
}

/// `kill -9`, and waits until it is gone.
async fn kill_hard(server: &mut RunningServer) -> Result<()> {
    let pid = server.pid().context("no pid")?;
    let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
    ensure!(status.success(), "kill -KILL failed");
    server.wait_exit(PATIENCE).await?;
    Ok(())
}

/// A connection with a longer patience than the default for a frame (a cluster delivers
/// across processes).
async fn join(url: &str) -> Result<Connection> {
    let (mut conn, _) = Connection::join(url).await?;
    conn.set_timeout(PATIENCE);
    Ok(conn)
}

#[tokio::test]
async fn senders_on_three_nodes_are_seen_by_everyone_in_one_order_with_one_seq() -> Result<()> {
    let Some(cluster) = Cluster::create()? else { return Ok(()) };
    let nodes = [cluster.node("n1").await?, cluster.node("n2").await?, cluster.node("n3").await?];
    let mut readers = Vec::new();
    for node in &nodes {
        readers.push(join(&node.ws_url()).await?);
    }
    const EACH: usize = 40;
    let mut senders = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let mut sender = join(&node.ws_url()).await?;
        senders.push(tokio::spawn(async move {
            for n in 0..EACH {
                sender.send_json(&text(&format!("s{index}-{n:02}"))).await?;
            }
            // Its own messages do not come back to it; the others' do.
            read_chat(&mut sender, 2 * EACH).await
        }));
    }
    let mut seen: Vec<Vec<(u64, String)>> = Vec::new();
    for reader in &mut readers {
        seen.push(read_chat(reader, 3 * EACH).await?);
    }
    for sender in senders {
        let others = sender.await??;
        ensure!(others.windows(2).all(|pair| pair[0].0 < pair[1].0), "out of order: {others:?}");
    }
    consecutive(&seen[0], 1)?;
    ensure!(seen[1] == seen[0] && seen[2] == seen[0], "the nodes saw different orders");
    // Each sender's messages in the order it sent them.
    for index in 0..3 {
        let prefix = format!("s{index}-");
        let own: Vec<&String> =
            seen[0].iter().map(|(_, text)| text).filter(|text| text.starts_with(&prefix)).collect();
        let expected: Vec<String> = (0..EACH).map(|n| format!("{prefix}{n:02}")).collect();
        ensure!(own.iter().map(|text| text.as_str()).eq(expected.iter().map(String::as_str)));
    }
    for reader in &mut readers {
        reader.expect_silence(Duration::from_millis(300)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn history_resume_and_named_rooms_work_on_any_node() -> Result<()> {
    let Some(cluster) = Cluster::create()? else { return Ok(()) };
    let (one, two) = (cluster.node("n1").await?, cluster.node("n2").await?);
    let mut sender = join(&one.ws_url()).await?;
    for n in 1..=5 {
        sender.send_json(&text(&format!("m{n}"))).await?;
    }
    // A newcomer on the other node gets the history, a resume what it missed.
    let mut watcher = join(&one.ws_url()).await?;
    read_chat(&mut watcher, 5).await?;
    let mut resumed = join(&format!("{}?after=2", two.ws_url())).await?;
    let missed = read_chat(&mut resumed, 3).await?;
    ensure!(missed == [(3, "m3".into()), (4, "m4".into()), (5, "m5".into())], "{missed:?}");
    let page = {
        resumed.send_json(&json!({"history": {"before": 3, "limit": 10}})).await?;
        recv_json(&mut resumed).await?
    };
    ensure!(page.to_string().contains("m1") && page.to_string().contains("m2"), "{page}");
    // Taken back on one node: gone on the other too.
    sender.send_json(&json!({"delete": 5})).await?;
    let deleted = recv_json(&mut resumed).await?;
    ensure!(deleted == json!({"deleted": {"channel": "feed", "seq": 5}}), "{deleted}");
    let mut newcomer = join(&format!("{}?after=3", two.ws_url())).await?;
    ensure!(read_chat(&mut newcomer, 1).await? == [(4, "m4".into())]);
    newcomer.expect_silence(Duration::from_millis(300)).await?;

    // A room made on one node is there on the other; the accounts are the same everywhere.
    let (cookie, _) = account(&one, "ada").await?;
    let created =
        post(&one, "/api/rooms", &[("Cookie", &cookie)], &json!({"name": "rust"})).await?;
    ensure!(created.status == 201, "{created:?}");
    let deadline = Instant::now() + PATIENCE;
    while !request(two.port(), "GET", "/api/rooms", &[], None).await?.body.contains("rust") {
        ensure!(Instant::now() < deadline, "the room never reached the other node");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut here = account_tab(&one, &cookie).await?;
    let mut there = account_tab(&two, &cookie).await?;
    there.set_timeout(PATIENCE);
    enter_room(&mut here, "rust").await?;
    enter_room(&mut there, "rust").await?;
    here.send_json(&text("in the room")).await?;
    let got = read_until(&mut there, "in the room").await?;
    ensure!(got == (1, false), "the room's own seqs start at 1, live: {got:?}");
    // Resumed in the room on the other node, from before its first message.
    let mut later = account_tab(&two, &cookie).await?;
    later.set_timeout(PATIENCE);
    later.send_json(&json!({"channel": "room", "room": "rust", "after": 0})).await?;
    ensure!(read_until(&mut later, "in the room").await? == (1, true));
    Ok(())
}

#[tokio::test]
async fn a_schedule_fires_once_in_the_cluster_even_when_its_node_is_killed() -> Result<()> {
    let Some(cluster) = Cluster::create()? else { return Ok(()) };
    let mut one = cluster.node("n1").await?;
    let mut sender = join(&one.ws_url()).await?;
    // Held by both nodes' timers (the second loads it at start): one of them delivers it.
    sender.send_json(&text("/schedule seconds 3 message both hold me")).await?;
    // Held only by the node about to die: another node claims it once it is overdue.
    sender.send_json(&text("/schedule seconds 1 message orphaned")).await?;
    wait_health(&one, |h| h["scheduled"] == 2).await?;
    let two = cluster.node("n2").await?;
    let three = cluster.node("n3").await?;
    ensure!(health(&two).await?["scheduled"] == 2, "the second node loads what is pending");
    let mut readers = [join(&two.ws_url()).await?, join(&three.ws_url()).await?];
    kill_hard(&mut one).await?;
    for reader in &mut readers {
        let mut got = read_chat(reader, 2).await?;
        got.sort_by(|a, b| a.1.cmp(&b.1));
        ensure!(got[0].1 == "both hold me" && got[1].1 == "orphaned", "{got:?}");
        reader.expect_silence(Duration::from_millis(1500)).await?;
    }
    let left = cluster.database.with_client(|client| {
        Ok(client.query_one("SELECT count(*) FROM schedules", &[])?.get::<_, i64>(0))
    })?;
    ensure!(left == 0, "{left} schedules are still pending");
    Ok(())
}

#[tokio::test]
async fn a_killed_nodes_clients_resume_on_another_losing_nothing() -> Result<()> {
    let Some(cluster) = Cluster::create()? else { return Ok(()) };
    let mut one = cluster.node("n1").await?;
    let two = cluster.node("n2").await?;
    let mut reader = join(&one.ws_url()).await?;
    let mut sender = join(&two.ws_url()).await?;
    const TOTAL: usize = 100;
    let sending = tokio::spawn(async move {
        for n in 0..TOTAL {
            sender.send_json(&text(&format!("m{n:03}"))).await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok(sender)
    });
    let mut got = read_chat(&mut reader, 20).await?;
    kill_hard(&mut one).await?;
    // What it had before the node died (frames already in its socket) counts.
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(PATIENCE, reader.next_frame()).await {
        if let client::Frame::Text(payload) = frame
            && let Some(message) = serde_json::from_str(&payload).ok().as_ref().and_then(seq_text)
        {
            got.push(message);
        }
    }
    let last = got.last().map_or(0, |(seq, _)| *seq);
    let mut resumed = join(&format!("{}?after={last}", two.ws_url())).await?;
    got.extend(read_chat(&mut resumed, TOTAL - got.len()).await?);
    let _sender = sending.await??;
    consecutive(&got, 1)?;
    let texts: Vec<String> = (0..TOTAL).map(|n| format!("m{n:03}")).collect();
    ensure!(got.iter().map(|(_, text)| text).eq(texts.iter()), "{got:?}");
    resumed.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

/// A `redis-server` of the test's own, on a free port, keeping nothing on disk.
struct OwnRedis {
    port: u16,
    child: tokio::process::Child,
}

impl OwnRedis {
    async fn start(port: u16) -> Result<OwnRedis> {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (the Debian package redis-server)")?;
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            ensure!(Instant::now() < deadline, "redis-server did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(OwnRedis { port, child })
    }

    async fn kill(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::test]
async fn redis_restarted_under_traffic_loses_nothing_and_each_node_serves_meanwhile() -> Result<()>
{
    let Some(mut cluster) = Cluster::create()? else { return Ok(()) };
    let redis = OwnRedis::start(free_port()?).await?;
    cluster.redis = format!("redis://127.0.0.1:{}", redis.port);
    let nodes = [cluster.node("n1").await?, cluster.node("n2").await?];
    let mut readers = [join(&nodes[0].ws_url()).await?, join(&nodes[1].ws_url()).await?];
    let mut senders = [join(&nodes[0].ws_url()).await?, join(&nodes[1].ws_url()).await?];
    senders[0].send_json(&text("before")).await?;
    for reader in &mut readers {
        ensure!(read_chat(reader, 1).await?[0].1 == "before");
    }

    let port = redis.port;
    redis.kill().await?;
    for node in &nodes {
        wait_health(node, |h| h["broker"] == "reconnecting").await?;
    }
    // Each node goes on serving its own clients.
    senders[0].send_json(&text("while away on n1")).await?;
    ensure!(read_chat(&mut readers[0], 1).await?[0].1 == "while away on n1");
    senders[1].send_json(&text("while away on n2")).await?;
    let on_two = read_chat(&mut readers[1], 2).await?;
    ensure!(on_two.iter().any(|(_, text)| text == "while away on n2"), "{on_two:?}");

    let back = Instant::now();
    let _redis = OwnRedis::start(port).await?;
    for node in &nodes {
        wait_health(node, |h| h["broker"] == "ok").await?;
    }
    ensure!(back.elapsed() < Duration::from_secs(5), "resubscribed after {:?}", back.elapsed());
    // Caught up from PostgreSQL, with nothing new said: n1 had not heard n2's message.
    let caught_up = read_chat(&mut readers[0], 1).await?;
    ensure!(caught_up == [(3, "while away on n2".into())], "{caught_up:?}");
    senders[1].send_json(&text("after")).await?;
    // Everything reaches everyone, in seq order, each once.
    let mut first = None;
    for (index, reader) in readers.iter_mut().enumerate() {
        let rest = read_chat(reader, 1).await?;
        ensure!(rest.last().is_some_and(|(_, text)| text == "after"), "{rest:?}");
        reader.expect_silence(Duration::from_millis(300)).await?;
        let mut resumed = join(&format!("{}?after=0", nodes[index].ws_url())).await?;
        let all = read_chat(&mut resumed, 4).await?;
        consecutive(&all, 1)?;
        if let Some(first) = &first {
            ensure!(&all == first, "the nodes have different histories");
        }
        first = Some(all);
    }
    Ok(())
}

#[tokio::test]
async fn redis_without_a_postgresql_database_is_refused_with_one_line() -> Result<()> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--database", "memory", "--redis", "redis://127.0.0.1:6379", "--port", "0"])
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "it started");
    ensure!(stderr.lines().count() == 1 && stderr.contains("--redis needs --database postgres://"));
    if !output.stdout.is_empty() {
        bail!("it printed an address: {:?}", String::from_utf8_lossy(&output.stdout));
    }
    Ok(())
}

/// Asks `{"who"}` until its count is `count` (other frames are skipped); how long it took.
async fn wait_who(conn: &mut Connection, count: u64) -> Result<Duration> {
    let started = Instant::now();
    loop {
        conn.send_json(&json!({"who": true})).await?;
        let frame = recv_json(conn).await?;
        if frame["who"]["count"] == count {
            return Ok(started.elapsed());
        }
        ensure!(started.elapsed() < PATIENCE, "who never counted {count}: {frame}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn presence_typing_and_counts_span_the_nodes_and_a_dead_nodes_people_leave() -> Result<()> {
    let Some(cluster) = Cluster::create()? else { return Ok(()) };
    let mut one = cluster.node("n1").await?;
    let two = cluster.node("n2").await?;
    let (cookie, _) = account(&one, "ada").await?;
    let created =
        post(&one, "/api/rooms", &[("Cookie", &cookie)], &json!({"name": "rust"})).await?;
    ensure!(created.status == 201, "{created:?}");
    let _guest_on_one = join(&one.ws_url()).await?;
    let mut ada_on_one = account_tab(&one, &cookie).await?;
    enter_room(&mut ada_on_one, "rust").await?;
    let mut here = join(&two.ws_url()).await?;
    // The feed: a guest on each node.
    wait_who(&mut here, 2).await?;
    // The room, in /api/rooms on the other node.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rooms = request(two.port(), "GET", "/api/rooms", &[], None).await?.json()?;
        if rooms.to_string().contains(r#""online":1"#) {
            break;
        }
        ensure!(Instant::now() < deadline, "the room's person never counted on n2: {rooms}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Typing in the room crosses nodes too.
    let mut mate = join(&two.ws_url()).await?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        // Ada, in the room on the other node, is among its members once n2 has heard of her.
        let joined = enter_room(&mut mate, "rust").await?;
        if joined.to_string().contains(r#""name":"ada""#) {
            break;
        }
        ensure!(Instant::now() < deadline, "ada never listed in the room: {joined}");
        mate.send_json(&json!({"channel": "feed"})).await?;
        recv_json(&mut mate).await?; // back in the feed
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ada_on_one.send_json(&json!({"typing": true})).await?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let frame = recv_json(&mut mate).await?;
        if frame.get("typing").is_some() {
            ensure!(frame["typing"]["name"] == "ada", "{frame}");
            break;
        }
        ensure!(Instant::now() < deadline, "no typing came: {frame}");
    }
    kill_hard(&mut one).await?;
    // Ada's node died: the room's people elsewhere are told she left.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let frame = recv_json(&mut mate).await?;
        if frame.get("presence").is_some() {
            ensure!(frame["presence"]["left"]["name"] == "ada", "{frame}");
            break;
        }
        ensure!(Instant::now() < deadline, "no presence came: {frame}");
    }
    let gone = wait_who(&mut here, 1).await?;
    // The key's 3 s, a heartbeat and the feed's answer made at most once a second (4-5 s),
    // with room for a loaded machine.
    ensure!(gone < Duration::from_secs(8), "the dead node's people stayed {gone:?}");
    Ok(())
}

#[tokio::test]
async fn a_rename_on_one_node_reaches_the_accounts_tabs_and_the_feed_on_another() -> Result<()> {
    let Some(cluster) = Cluster::create()? else { return Ok(()) };
    let (one, two) = (cluster.node("n1").await?, cluster.node("n2").await?);
    let (cookie, profile) = account(&one, "ada").await?;
    let id = profile["id"].as_str().unwrap_or_default().to_owned();
    let mut tab = account_tab(&two, &cookie).await?;
    tab.set_timeout(PATIENCE);
    let mut reader = join(&two.ws_url()).await?;
    let rename = json!({"name": "Countess"}).to_string();
    let renamed =
        request(one.port(), "PATCH", "/api/me", &[("Cookie", &cookie)], Some(&rename)).await?;
    ensure!(renamed.status == 200, "{}", renamed.body);
    let changed =
        json!({"profile": {"id": id, "name": "Countess", "avatar": format!("/avatars/{id}")}});
    ensure!(recv_json(&mut reader).await? == changed);
    ensure!(recv_json(&mut tab).await? == changed);
    // The tab on the other node speaks with the new name from its next message on.
    tab.send_json(&text("renamed")).await?;
    let next = recv_json(&mut reader).await?;
    ensure!(next["name"] == "Countess" && next["data"]["text"] == "renamed", "{next}");
    Ok(())
}

#[tokio::test]
async fn a_message_committed_but_never_published_still_reaches_the_nodes() -> Result<()> {
    let Some(cluster) = Cluster::create()? else { return Ok(()) };
    let node = cluster.node("n1").await?;
    let mut reader = join(&node.ws_url()).await?;
    // What a node's sequencer does, by a node that died before its PUBLISH: nothing follows.
    let seq = cluster.database.with_client(|client| {
        let mut transaction = client.transaction()?;
        let seq: i64 = transaction
            .query_one(
                "INSERT INTO channels (name, reserved) VALUES ('feed', 1)
                 ON CONFLICT (name) DO UPDATE SET reserved = channels.reserved + 1
                 RETURNING reserved",
                &[],
            )?
            .get(0);
        transaction.execute(
            "INSERT INTO messages (channel, seq, author, type, body, at_ms, late)
             VALUES ('feed', $1, 'ghost', 'text', 'never published', 0, false)",
            &[&seq],
        )?;
        transaction.commit()?;
        Ok(seq as u64)
    })?;
    let got = read_chat(&mut reader, 1).await?;
    ensure!(got == [(seq, "never published".into())], "{got:?}");
    Ok(())
}

/// Reads frames until a random room's `{"status"}` comes (others are skipped); its status.
async fn next_status(conn: &mut Connection) -> Result<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        ensure!(Instant::now() < deadline, "no random room status came");
        let frame = recv_json(conn).await?;
        if frame["channel"] == "random"
            && let Some(status) = frame["status"].as_str()
        {
            return Ok(status.to_owned());
        }
    }
}

/// Reads frames until one has the key `key` (others are skipped); that frame.
async fn next_with(conn: &mut Connection, key: &str) -> Result<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        ensure!(Instant::now() < deadline, "no {key:?} frame came");
        let frame = recv_json(conn).await?;
        if frame.get(key).is_some() {
            return Ok(frame);
        }
    }
}

/// Asks for a random partner; the first status it is told.
async fn seek_partner(conn: &mut Connection) -> Result<String> {
    conn.send_json(&json!({"channel": "random"})).await?;
    next_status(conn).await
}

/// A newcomer on `node` who is paired at once with `waiting`, which is told so too.
async fn newcomer_pairs_with(waiting: &mut Connection, node: &RunningServer) -> Result<Connection> {
    let mut newcomer = join(&node.ws_url()).await?;
    ensure!(seek_partner(&mut newcomer).await? == "paired");
    expect_status(waiting, "paired").await?;
    Ok(newcomer)
}

async fn expect_status(conn: &mut Connection, expected: &str) -> Result<()> {
    let status = next_status(conn).await?;
    ensure!(status == expected, "told {status:?}, expected {expected:?}");
    Ok(())
}

#[tokio::test]
async fn a_waiting_user_pairs_with_a_newcomer_on_another_node_and_partner_left_crosses()
-> Result<()> {
    let Some(cluster) = Cluster::create()? else { return Ok(()) };
    let one = cluster.node("n1").await?;
    let two = cluster.node("n2").await?;
    let mut waiting = join(&one.ws_url()).await?;
    ensure!(seek_partner(&mut waiting).await? == "waiting");
    let mut newcomer = newcomer_pairs_with(&mut waiting, &two).await?;
    // Each is told who the other is, as on one node.
    for conn in [&mut waiting, &mut newcomer] {
        let frame = recv_json(conn).await?;
        ensure!(frame["presence"]["joined"].is_object(), "{frame}");
    }
    waiting.send_json(&text("hello from n1")).await?;
    let (seq, history) = read_until(&mut newcomer, "hello from n1").await?;
    ensure!(seq == 1 && !history, "seq {seq}, history {history}");
    newcomer.send_json(&text("hello from n2")).await?;
    let (seq, _) = read_until(&mut waiting, "hello from n2").await?;
    // Numbered in the room as its own node sees it: after its own message.
    ensure!(seq == 2, "seq {seq}");
    // Typing and taking back cross too.
    waiting.send_json(&json!({"typing": true})).await?;
    let frame = next_with(&mut newcomer, "typing").await?;
    ensure!(frame["typing"].is_object(), "{frame}");
    newcomer.send_json(&json!({"delete": 2})).await?;
    let frame = next_with(&mut waiting, "deleted").await?;
    ensure!(frame == json!({"deleted": {"channel": "random", "seq": 2}}), "{frame}");
    newcomer.send_json(&json!({"channel": "feed"})).await?;
    // As on one node: who left, then the status.
    let frame = recv_json(&mut waiting).await?;
    ensure!(frame["presence"]["left"].is_object(), "{frame}");
    expect_status(&mut waiting, "partner_left").await?;
    // Left alone, it waits again, for anyone on any node.
    newcomer_pairs_with(&mut waiting, &two).await?;
    Ok(())
}

#[tokio::test]
async fn seekers_on_three_nodes_each_get_exactly_one_partner() -> Result<()> {
    let Some(cluster) = Cluster::create()? else { return Ok(()) };
    let nodes = [cluster.node("n1").await?, cluster.node("n2").await?, cluster.node("n3").await?];
    let mut first = join(&nodes[0].ws_url()).await?;
    ensure!(seek_partner(&mut first).await? == "waiting");
    // Two arrive at once, on two other nodes: one of them gets the one waiting.
    let mut second = join(&nodes[1].ws_url()).await?;
    let mut third = join(&nodes[2].ws_url()).await?;
    second.send_json(&json!({"channel": "random"})).await?;
    third.send_json(&json!({"channel": "random"})).await?;
    let (told_second, told_third) =
        (next_status(&mut second).await?, next_status(&mut third).await?);
    let mut told = [told_second.as_str(), told_third.as_str()];
    told.sort_unstable();
    ensure!(told == ["paired", "waiting"], "told {told:?}");
    expect_status(&mut first, "paired").await?;
    let (mut partner, mut alone) =
        if told_second == "paired" { (second, third) } else { (third, second) };
    // Only the partner hears the first one.
    first.send_json(&text("to my one partner")).await?;
    read_until(&mut partner, "to my one partner").await?;
    // The one left waiting pairs with a fourth, and nobody is paired twice.
    let mut fourth = newcomer_pairs_with(&mut alone, &nodes[0]).await?;
    fourth.send_json(&text("to the one who waited")).await?;
    read_until(&mut alone, "to the one who waited").await?;
    for conn in [&mut first, &mut partner, &mut alone] {
        let more = statuses_within(conn, Duration::from_millis(500)).await?;
        ensure!(more.is_empty(), "told more: {more:?}");
    }
    Ok(())
}

/// The random room statuses that come within `window` (other frames are skipped).
async fn statuses_within(conn: &mut Connection, window: Duration) -> Result<Vec<String>> {
    conn.set_timeout(window);
    let mut statuses = Vec::new();
    loop {
        match conn.recv_json().await {
            Ok(frame) => statuses.extend(frame["status"].as_str().map(str::to_owned)),
            Err(error) if error.to_string().starts_with("no frame arrived") => break,
            Err(error) => return Err(error),
        }
    }
    conn.set_timeout(PATIENCE);
    Ok(statuses)
}

#[tokio::test]
async fn a_killed_nodes_waiting_user_is_never_a_partner() -> Result<()> {
    let Some(cluster) = Cluster::create()? else { return Ok(()) };
    let mut one = cluster.node("n1").await?;
    let two = cluster.node("n2").await?;
    let mut ghost = join(&one.ws_url()).await?;
    ensure!(seek_partner(&mut ghost).await? == "waiting");
    kill_hard(&mut one).await?;
    // At once, well before its presence key expires: the newcomer waits.
    let mut newcomer = join(&two.ws_url()).await?;
    ensure!(seek_partner(&mut newcomer).await? == "waiting", "paired with a dead node's user");
    newcomer_pairs_with(&mut newcomer, &two).await?;
    Ok(())
}

#[tokio::test]
async fn a_partner_whose_node_is_killed_is_told_it_left_within_seconds() -> Result<()> {
    let Some(cluster) = Cluster::create()? else { return Ok(()) };
    let mut one = cluster.node("n1").await?;
    let two = cluster.node("n2").await?;
    let mut doomed = join(&one.ws_url()).await?;
    ensure!(seek_partner(&mut doomed).await? == "waiting");
    let mut survivor = newcomer_pairs_with(&mut doomed, &two).await?;
    kill_hard(&mut one).await?;
    let killed = Instant::now();
    expect_status(&mut survivor, "partner_left").await?;
    // The key's 3 s and a heartbeat (4 s, as documented), with room for a loaded machine.
    let took = killed.elapsed();
    ensure!(took < Duration::from_secs(8), "told after {took:?}");
    // It waits again: a newcomer pairs with it, not with the dead node's user.
    newcomer_pairs_with(&mut survivor, &two).await?;
    Ok(())
}

/// PostgreSQL goes away for `database` only: no new connections, and the nodes' are cut.
fn cut_off(database: &TestDatabase) -> Result<()> {
    let name = database.name();
    database.admin(&format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = '{name}' AND pid <> pg_backend_pid();"
    ))
}

/// PostgreSQL is back for `database`.
fn reconnect(database: &TestDatabase) -> Result<()> {
    database.admin(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", database.name()))
}

#[tokio::test]
async fn postgres_away_holds_the_feed_in_order_while_random_rooms_go_on() -> Result<()> {
    let Some(cluster) = Cluster::create()? else { return Ok(()) };
    let one = cluster.node("n1").await?;
    let two = cluster.node("n2").await?;
    let mut reader = join(&two.ws_url()).await?;
    let mut sender = join(&one.ws_url()).await?;
    sender.send_json(&text("before")).await?;
    ensure!(read_chat(&mut reader, 1).await? == [(1, "before".into())]);

    cut_off(&cluster.database)?;
    const AWAY: usize = 5;
    let said: Vec<String> = (0..AWAY).map(|n| format!("while away {n}")).collect();
    for line in &said {
        sender.send_json(&text(line)).await?;
    }
    // Both nodes say their store is failing (n1 holds the messages, n2's sequencer fails its
    // sweep for orphaned schedules), and nothing can get a seq meanwhile.
    for node in [&one, &two] {
        wait_health(node, |h| h["store"] == "failing").await?;
    }
    reader.expect_silence(Duration::from_millis(500)).await?;
    // A random room needs no seq from PostgreSQL: a pair on one node goes on chatting.
    let mut waiting = join(&one.ws_url()).await?;
    ensure!(seek_partner(&mut waiting).await? == "waiting");
    let mut partner = newcomer_pairs_with(&mut waiting, &one).await?;
    partner.send_json(&text("random goes on")).await?;
    read_until(&mut waiting, "random goes on").await?;

    // Back: what waited on n1 reaches n2's reader in order, each once, with the next seqs.
    reconnect(&cluster.database)?;
    let got = read_chat(&mut reader, AWAY).await?;
    consecutive(&got, 2)?;
    ensure!(got.iter().map(|(_, text)| text).eq(said.iter()), "{got:?}");
    for node in [&one, &two] {
        wait_health(node, |h| h["store"] == "ok").await?;
    }
    sender.send_json(&text("after")).await?;
    ensure!(read_chat(&mut reader, 1).await? == [(AWAY as u64 + 2, "after".into())]);
    reader.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

#[tokio::test]
async fn postgres_away_long_enough_tells_senders_the_server_is_busy_and_loses_nothing_accepted()
-> Result<()> {
    let Some(cluster) = Cluster::create()? else { return Ok(()) };
    let one = cluster.node("n1").await?;
    let mut sender = join(&one.ws_url()).await?;
    cut_off(&cluster.database)?;
    wait_health(&one, |h| h["store"] == "failing").await?;
    // More than the node can hold: 10,000 queued and up to 1,024 in the batch being retried.
    const SENT: u64 = 10_000 + 1_024 + 50;
    for n in 0..SENT {
        sender.send_json(&text(&format!("m{n}"))).await?;
    }
    // Frames are answered in order: every refusal comes before the answer to this.
    sender.send_json(&json!({"who": true})).await?;
    let mut busy = 0;
    let deadline = Instant::now() + PATIENCE * 3;
    loop {
        ensure!(Instant::now() < deadline, "no answer to who");
        let frame = recv_json(&mut sender).await?;
        if frame.get("who").is_some() {
            break;
        }
        let error = frame["error"].as_str().unwrap_or_default();
        ensure!(error.starts_with("the server is busy (its database is slow or unreachable)"));
        busy += 1;
    }
    ensure!((1..=SENT - 10_000).contains(&busy), "{busy} refused of {SENT}");
    // Back: every message accepted gets its seq, and none that was refused.
    reconnect(&cluster.database)?;
    wait_health(&one, |h| h["store"] == "ok").await?;
    // (A batch is at most 1,024 messages: the backlog takes a few commits.)
    let reserved = || {
        cluster.database.with_client(|client| {
            let row = client.query_one("SELECT reserved FROM channels WHERE name = 'feed'", &[])?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    };
    let deadline = Instant::now() + PATIENCE;
    loop {
        let given = reserved()?;
        if given == SENT - busy {
            break;
        }
        ensure!(Instant::now() < deadline, "{given} seqs given, {} accepted", SENT - busy);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And no more: one message after, with the next seq.
    let mut reader = join(&one.ws_url()).await?;
    sender.send_json(&text("after")).await?;
    let (seq, _) = read_until(&mut reader, "after").await?;
    ensure!(seq == SENT - busy + 1, "seq {seq} after {} accepted", SENT - busy);
    Ok(())
}
