//! `chatload idle`: hold N quiet connections and see what they cost the server in memory.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::connections;
use crate::process_stats::{self, Memory};

#[derive(Debug, Clone)]
pub struct Idle {
    pub url: String,
    pub clients: usize,
    pub server_pid: Option<u32>,
    pub concurrency: usize,
    /// How long to hold the connections once all are open, before measuring.
    pub hold: Duration,
    pub deadline: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub mode: &'static str,
    pub clients: usize,
    pub connect_seconds: f64,
    /// Connections the server closed (or that failed) while they were held.
    pub dropped: u64,
    pub server: Option<IdleServerMemory>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct IdleServerMemory {
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// (after - before) / clients.
    pub kib_per_connection: f64,
    /// VmHWM at the end.
    pub peak_rss_kib: u64,
}

pub async fn run(config: &Idle) -> Result<IdleReport> {
    connections::require_loopback(&config.url).await?;
    connections::raise_open_file_limit()?;
    if let Some(pid) = config.server_pid {
        process_stats::check_readable(pid)?;
    }
    let deadline = Instant::now() + config.deadline;
    let before = config.server_pid.map(Memory::read).transpose()?;
    let (sockets, connect_time) =
        connections::open(&config.url, config.clients, config.concurrency, deadline).await?;

    // Each connection is read by a small task, so that a connection the server drops is
    // noticed (and so that pings would be answered) while all are held.
    let mut readers = JoinSet::new();
    for socket in sockets {
        readers.spawn(async move {
            let (_sink, mut stream) = socket.split();
            while let Some(Ok(_)) = stream.next().await {}
        });
    }
    // Holding is the point of this mode: the wait is the measurement, not a synchronisation.
    let hold_until = (Instant::now() + config.hold).min(deadline);
    tokio::time::sleep_until(tokio::time::Instant::from_std(hold_until)).await;

    let after = config.server_pid.map(Memory::read).transpose()?;
    let mut dropped = 0;
    while readers.try_join_next().is_some() {
        dropped += 1;
    }
    readers.abort_all();

    let server = match (before, after) {
        (Some(before), Some(after)) => Some(IdleServerMemory {
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
        server,
    })
}

impl IdleReport {
    pub fn describe(&self) -> String {
        let mut text = format!(
            "idle: {} connections opened in {:.2} s, {} dropped while held",
            self.clients, self.connect_seconds, self.dropped
        );
        if let Some(server) = &self.server {
            text += &format!(
                "\nserver: RSS {:.1} MiB -> {:.1} MiB, {:.1} KiB per connection; peak {:.1} MiB",
                server.rss_before_kib as f64 / 1024.0,
                server.rss_after_kib as f64 / 1024.0,
                server.kib_per_connection,
                server.peak_rss_kib as f64 / 1024.0,
            );
        }
        text
    }
}
