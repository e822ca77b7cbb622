//! Putting messages into a server's feed through the protocol, and the SQLite files that
//! `chatload compare --store` fills once and starts servers on (S1).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use client::RunningServer;
use tempfile::TempDir;

use crate::fanout::{self, Fanout, Pace};
use crate::process_stats::wait_until_quiet;

/// Messages kept per channel when a feed is filled or started on: more than any prefill, so
/// that the background pruning never changes a prefilled file.
const KEEP_EVERYTHING: &str = "2000000";

/// How long filling a feed may take (a million messages, one sender).
const PREFILL_DEADLINE: Duration = Duration::from_secs(600);

/// How long a server may take to stop cleanly (writing what it has accepted) after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// Messages put into the feed before waiting for the server to go quiet: its store writes in
/// the background from a queue without a bound, which one fast sender would grow without one.
const FILL_CHUNK: u32 = 100_000;

/// What filling a feed took.
pub struct Filled {
    seconds: f64,
    /// The server's VmHWM at the end, in KiB.
    peak_rss_kib: u64,
}

/// Puts exactly `messages` messages into the server's feed through the protocol, in chunks of
/// [`FILL_CHUNK`]: one sender, and one receiver that checks that each arrived, with at most 512
/// in flight; after each chunk, waits until the server is quiet (its store has caught up).
pub async fn fill(server: &RunningServer, messages: u32, deadline: Duration) -> Result<Filled> {
    let pid = server.pid().context("the server has already exited")?;
    let started = Instant::now();
    let end = started + deadline;
    let mut peak_rss_kib = 0;
    let mut left = messages;
    while left > 0 {
        let chunk = left.min(FILL_CHUNK);
        let config = Fanout {
            urls: vec![server.ws_url()],
            clients: 2,
            senders: 1,
            // The sender's end marker is a message of the feed too.
            messages: chunk - 1,
            pace: Pace::Window(512),
            server_pid: Some(pid),
            concurrency: 2,
            deadline: end.saturating_duration_since(Instant::now()),
            stall: Duration::from_secs(10),
        };
        let report = fanout::run(&config).await?;
        if !report.is_clean() {
            bail!("filling the feed with {messages} messages failed: {}", report.describe());
        }
        peak_rss_kib = report.server.map_or(peak_rss_kib, |s| s.peak_rss_kib);
        // Quiet: below 10 % of a CPU over 50 ms.
        if !wait_until_quiet(pid, Duration::from_millis(50), 0.1, end).await? {
            bail!("the server was still busy at the deadline while filling the feed");
        }
        left -= chunk;
    }
    Ok(Filled { seconds: started.elapsed().as_secs_f64(), peak_rss_kib })
}

/// Stops a server with SIGTERM, so that it writes everything it accepted, and waits for it.
pub async fn stop_cleanly(mut server: RunningServer) -> Result<()> {
    let pid = server.pid().context("the server has already exited")?;
    let pid = libc::pid_t::try_from(pid).context("process id out of range")?;
    // SAFETY: kill only sends a signal, to a child of ours that has not been waited for.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        bail!("could not send SIGTERM to the server: {}", std::io::Error::last_os_error());
    }
    let status = server.wait_exit(STOP_LIMIT).await?;
    if !status.success() {
        bail!("the server stopped with {status}");
    }
    Ok(())
}

/// The databases filled once per `compare`, in a temporary directory removed at the end.
pub struct Prefills {
    _directory: Option<TempDir>,
    pub made: Vec<Prefill>,
}

pub struct Prefill {
    messages: u32,
    path: PathBuf,
    /// From the first message to the server quiet after the last one.
    fill: Filled,
    /// From SIGTERM to the server's clean exit.
    stop_seconds: f64,
    file_bytes: u64,
}

impl Prefills {
    /// Fills one SQLite file per count: a server on it with rate limits off and retention
    /// above the count, one sender through the protocol, then a clean stop (SIGTERM), which
    /// writes everything accepted.
    pub async fn create(server: &Path, server_args: &[String], counts: &[u32]) -> Result<Prefills> {
        if counts.is_empty() {
            return Ok(Prefills { _directory: None, made: Vec::new() });
        }
        let directory = tempfile::Builder::new().prefix("chatload-prefill-").tempdir()?;
        let mut made = Vec::new();
        for &messages in counts {
            let path = directory.path().join(format!("feed-{messages}.db"));
            eprint!("filling {} with {messages} messages: ", path.display());
            let mut arguments = server_args.to_vec();
            arguments.extend(database_arguments(&path));
            arguments.extend(["--history".into(), "0".into()]);
            let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
            let running = RunningServer::start(server, &arguments).await?;
            let fill = fill(&running, messages, PREFILL_DEADLINE).await?;
            let stopping = Instant::now();
            stop_cleanly(running).await?;
            let prefill = Prefill {
                messages,
                fill,
                stop_seconds: stopping.elapsed().as_secs_f64(),
                file_bytes: std::fs::metadata(&path)?.len(),
                path,
            };
            eprintln!("{}", prefill.describe());
            made.push(prefill);
        }
        Ok(Prefills { _directory: Some(directory), made })
    }

    pub fn path(&self, messages: u32) -> Result<&Path> {
        self.made
            .iter()
            .find(|prefill| prefill.messages == messages)
            .map(|prefill| prefill.path.as_path())
            .with_context(|| format!("no database of {messages} messages was filled"))
    }

    pub fn describe(&self) -> String {
        let lines: Vec<String> = self
            .made
            .iter()
            .map(|prefill| format!("- {} messages: {}", prefill.messages, prefill.describe()))
            .collect();
        format!(
            "Prefill (once, before the runs; one sender, a window of 512, in chunks of \
             {FILL_CHUNK} each followed by a wait for the server to go quiet):\n{}\n",
            lines.join("\n")
        )
    }
}

impl Prefill {
    fn describe(&self) -> String {
        format!(
            "{:.1} s to fill ({:.0} messages/s), {:.1} s to stop cleanly; server peak RSS \
             {:.1} MiB; file {:.1} MiB",
            self.fill.seconds,
            f64::from(self.messages) / self.fill.seconds,
            self.stop_seconds,
            self.fill.peak_rss_kib as f64 / 1024.0,
            self.file_bytes as f64 / 1024.0 / 1024.0,
        )
    }
}

/// `--database PATH`, and retention and a store backlog above any prefill, so that no run
/// prunes the file and a fill that outruns the writer keeps every message.
pub fn database_arguments(path: &Path) -> [String; 6] {
    [
        "--database".into(),
        path.display().to_string(),
        "--history-keep".into(),
        KEEP_EVERYTHING.into(),
        "--store-backlog".into(),
        KEEP_EVERYTHING.into(),
    ]
}
