//! `chatload idle`: hold N quiet connections and see what they cost the server in memory, and
//! in CPU time while they connect (with the history the finished server sends each newcomer).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::connections;
use crate::process_stats::{self, CpuTime, Memory};

#[derive(Debug, Clone)]
pub struct Idle {
    /// Connection i goes to `urls[i % urls.len()]`: several URLs spread the clients over
    /// the nodes of a cluster.
    pub urls: Vec<String>,
    pub clients: usize,
    pub server_pid: Option<u32>,
    pub concurrency: usize,
    /// History frames (`"history": true`) each connection is to receive after its id; the
    /// connections count as open once all have them.
    pub history: usize,
    /// How long to hold the connections once all are open, before measuring.
    pub hold: Duration,
    pub deadline: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub mode: &'static str,
    pub clients: usize,
    /// From the first handshake until every connection has its id and its history.
    pub connect_seconds: f64,
    /// Connections the server closed (or that failed) while they were held.
    pub dropped: u64,
    /// History frames each connection was to receive.
    pub history_expected: usize,
    /// The fewest history frames one connection received.
    pub history_min: usize,
    /// Connections that received fewer than `history_expected` history frames.
    pub short_of_history: u64,
    pub server: Option<IdleServerUsage>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct IdleServerUsage {
    /// The server's CPU time while the connections opened (and received their history), in
    /// milliseconds.
    pub connect_cpu_ms: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// (after - before) / clients.
    pub kib_per_connection: f64,
    /// VmHWM at the end.
    pub peak_rss_kib: u64,
}

pub async fn run(config: &Idle) -> Result<IdleReport> {
    for url in &config.urls {
        connections::require_loopback(url).await?;
    }
    connections::raise_open_file_limit()?;
    if let Some(pid) = config.server_pid {
        process_stats::check_readable(pid)?;
    }
    let started = Instant::now();
    let deadline = started + config.deadline;
    let before = config.server_pid.map(Memory::read).transpose()?;
    let cpu_before = config.server_pid.map(CpuTime::read).transpose()?;
    let (sockets, _) =
        connections::open(&config.urls, config.clients, config.concurrency, deadline).await?;

    // Each connection is read by a small task, which counts its history frames, notices a
    // connection the server drops, and lets pings be answered, while all are held. A task
    // adds a permit to `complete` once it has its history (or its connection has ended).
    let complete = Arc::new(Semaphore::new(0));
    let counts: Arc<[AtomicUsize]> = (0..sockets.len()).map(|_| AtomicUsize::new(0)).collect();
    let mut readers = JoinSet::new();
    for (index, socket) in sockets.into_iter().enumerate() {
        let (complete, counts, history) = (complete.clone(), counts.clone(), config.history);
        readers.spawn(async move {
            let (_sink, mut stream) = socket.split();
            let mut told = history == 0;
            if told {
                complete.add_permits(1);
            }
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = message
                    && connections::is_history(&text)
                    && counts[index].fetch_add(1, Ordering::Relaxed) + 1 == history
                {
                    complete.add_permits(1);
                    told = true;
                }
            }
            if !told {
                complete.add_permits(1);
            }
        });
    }
    // A connection short of its history at the deadline is reported, not waited for longer.
    let all = u32::try_from(config.clients).map_err(|_| anyhow!("too many clients"))?;
    let limit = tokio::time::Instant::from_std(deadline);
    if let Ok(permits) = tokio::time::timeout_at(limit, complete.acquire_many(all)).await {
        permits?.forget();
    }
    let connect_time = started.elapsed();
    let cpu_after = config.server_pid.map(CpuTime::read).transpose()?;

    // Holding is the point of this mode: the wait is the measurement, not a synchronisation.
    let hold_until = (Instant::now() + config.hold).min(deadline);
    tokio::time::sleep_until(tokio::time::Instant::from_std(hold_until)).await;

    let after = config.server_pid.map(Memory::read).transpose()?;
    let mut dropped = 0;
    while readers.try_join_next().is_some() {
        dropped += 1;
    }
    readers.abort_all();
    let received: Vec<usize> = counts.iter().map(|count| count.load(Ordering::Relaxed)).collect();

    let server = match (before, after, cpu_before, cpu_after) {
        (Some(before), Some(after), Some(cpu_before), Some(cpu_after)) => Some(IdleServerUsage {
            connect_cpu_ms: cpu_after.since(&cpu_before) * 1e3,
            rss_before_kib: before.rss_kib,
            rss_after_kib: after.rss_kib,
            kib_per_connection: after.rss_kib.saturating_sub(before.rss_kib) as f64
                / config.clients.max(1) as f64,
            peak_rss_kib: after.peak_kib,
        }),
        _ => None,
    };
    Ok(IdleReport {
        mode: "idle",
        clients: config.clients,
        connect_seconds: connect_time.as_secs_f64(),
        dropped,
        history_expected: config.history,
        history_min: received.iter().copied().min().unwrap_or(0),
        short_of_history: received.iter().filter(|&&count| count < config.history).count() as u64,
        server,
    })
}

impl IdleReport {
    pub fn describe(&self) -> String {
        let mut text = format!(
            "idle: {} connections opened in {:.2} s, {} dropped while held",
            self.clients, self.connect_seconds, self.dropped
        );
        if self.history_expected > 0 {
            text += &format!(
                "\nhistory: {} frames expected per connection, fewest received {}, {} short",
                self.history_expected, self.history_min, self.short_of_history
            );
        }
        if let Some(server) = &self.server {
            text += &format!(
                "\nserver: {:.1} ms CPU while connecting; RSS {:.1} MiB -> {:.1} MiB, {:.1} KiB per \
                 connection; peak {:.1} MiB",
                server.connect_cpu_ms,
                server.rss_before_kib as f64 / 1024.0,
                server.rss_after_kib as f64 / 1024.0,
                server.kib_per_connection,
                server.peak_rss_kib as f64 / 1024.0,
            );
        }
        text
    }
}
