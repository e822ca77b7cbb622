//! Start-up and join on a stored feed (S1 of `chatload compare --store`): how long the finished
//! server takes from spawning to answering, and a newcomer to receive its id and its history.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use client::RunningServer;
use serde::Serialize;

use crate::connections;

/// How long the server may take to answer `GET /healthz` once it has printed its address.
const HEALTHZ_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct StartReport {
    /// From spawning the process to its `listening on` line.
    pub listening_ms: f64,
    /// From spawning the process to the first answer of `GET /healthz`.
    pub healthz_ms: f64,
    /// The first connection after start: handshake, `{"id"}` and every history frame.
    pub first_join_ms: f64,
    /// The same, median over `joins` connections opened one after another.
    pub join_ms: f64,
    pub joins: usize,
    /// Joins whose history did not end with the expected newest message.
    pub wrong_history: u64,
}

/// What to expect of each join.
#[derive(Debug, Clone, Copy)]
pub struct Join {
    /// Connections to open, one after another.
    pub joins: usize,
    /// History frames each one receives after its id.
    pub history: usize,
    /// The `seq` of the newest stored message, which the last history frame carries.
    pub newest_seq: u64,
}

/// Measures a server that `spawned` at the given instant and printed its address `listening`
/// later: waits for `/healthz`, then opens `join.joins` connections one at a time, each until
/// its history has arrived.
pub async fn measure(
    server: &RunningServer,
    spawned: Instant,
    listening: Duration,
    join: Join,
) -> Result<StartReport> {
    let healthz_deadline = Instant::now() + HEALTHZ_LIMIT;
    loop {
        match client::http::get(server.port(), "/healthz", &[]).await {
            Ok(response) if response.status == 200 => break,
            answer if Instant::now() >= healthz_deadline => {
                bail!("GET /healthz did not answer 200 within {HEALTHZ_LIMIT:?}: {answer:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    let healthz = spawned.elapsed();

    let url = server.ws_url();
    let mut times = Vec::with_capacity(join.joins);
    let mut wrong_history = 0;
    for index in 0..join.joins.max(1) {
        let started = Instant::now();
        let mut socket = connections::connect_one(&url)
            .await
            .with_context(|| format!("join {index}: connecting failed"))?;
        let newest = connections::read_history(&mut socket, join.history)
            .await
            .with_context(|| format!("join {index}"))?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        if join.history > 0 && newest != Some(join.newest_seq) {
            wrong_history += 1;
        }
    }
    Ok(StartReport {
        listening_ms: listening.as_secs_f64() * 1e3,
        healthz_ms: healthz.as_secs_f64() * 1e3,
        first_join_ms: times[0],
        join_ms: crate::compare::median(times.clone()).unwrap_or(f64::NAN),
        joins: times.len(),
        wrong_history,
    })
}
