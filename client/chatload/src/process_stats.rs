//! What the server process costs, read from Linux's `/proc`: CPU time and resident memory.
//!
//! The benchmark measures the server from outside, so it works the same for every binary
//! (lesson05, the finished server, anything else) without instrumenting it. A cluster is
//! several processes (every node, plus redis-server): the `*_all` readings sum over them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

/// The CPU time a process has used so far, two ways.
#[derive(Debug, Clone, Copy)]
pub struct CpuTime {
    /// utime + stime from `/proc/PID/stat`, converted from clock ticks. It includes threads
    /// that have exited, but its resolution is one tick (10 ms at the usual 100 Hz): too coarse
    /// for a run in which a fast server spends 50 ms.
    pub stat_seconds: f64,
    /// The sum of the first field of `/proc/PID/task/*/schedstat`: nanoseconds on a CPU, per
    /// live thread. Precise, but it misses threads that have exited (a tokio server's worker
    /// threads live as long as the process). `None` if the kernel does not provide it.
    pub schedstat_seconds: Option<f64>,
}

impl CpuTime {
    pub fn read(pid: u32) -> Result<CpuTime> {
        Ok(CpuTime { stat_seconds: stat_cpu_seconds(pid)?, schedstat_seconds: schedstat(pid) })
    }

    /// The sum over `pids`: a cluster's nodes and its broker, counted as one server. schedstat
    /// only if every process has it, so that the sum is one kind of reading.
    pub fn read_all(pids: &[u32]) -> Result<CpuTime> {
        Ok(CpuTime::sum(&CpuTime::read_each(pids)?))
    }

    /// One reading per process of `pids`, in order.
    pub fn read_each(pids: &[u32]) -> Result<Vec<CpuTime>> {
        pids.iter().map(|&pid| CpuTime::read(pid)).collect()
    }

    pub fn sum(readings: &[CpuTime]) -> CpuTime {
        let mut total = CpuTime { stat_seconds: 0.0, schedstat_seconds: Some(0.0) };
        for one in readings {
            total.stat_seconds += one.stat_seconds;
            total.schedstat_seconds =
                total.schedstat_seconds.zip(one.schedstat_seconds).map(|(sum, one)| sum + one);
        }
        total
    }

    /// CPU seconds from `earlier` to `self`: schedstat when both readings have it, else stat.
    pub fn since(&self, earlier: &CpuTime) -> f64 {
        match (self.schedstat_seconds, earlier.schedstat_seconds) {
            (Some(now), Some(then)) if now >= then => now - then,
            _ => (self.stat_seconds - earlier.stat_seconds).max(0.0),
        }
    }
}

fn stat_cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) is in parentheses and may contain spaces or ')': the fields
    // that follow start after the *last* ')'. There, field 3 (state) is index 0, so utime
    // (field 14) is index 11 and stime (field 15) index 12.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or_else(|| anyhow!("bad {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> Result<u64> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| anyhow!("no CPU time in {path}"))
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn schedstat(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut nanoseconds: u64 = 0;
    for task in tasks.flatten() {
        // A thread may exit between the listing and the read: skip it rather than fail.
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
        nanoseconds += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(nanoseconds as f64 / 1e9)
}

/// Waits until the process uses less than `busy` of one CPU over a `period`, or until
/// `deadline`: a server that has caught up with its background work (a store writing a
/// backlog). Says whether it went quiet.
pub async fn wait_until_quiet(
    pid: u32,
    period: Duration,
    busy: f64,
    deadline: std::time::Instant,
) -> Result<bool> {
    let mut before = CpuTime::read(pid)?;
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(period).await;
        let now = CpuTime::read(pid)?;
        if now.since(&before) < busy * period.as_secs_f64() {
            return Ok(true);
        }
        before = now;
    }
    Ok(false)
}

/// Resident memory now (`VmRSS`) and at its peak so far (`VmHWM`), in KiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

impl Memory {
    pub fn read(pid: u32) -> Result<Memory> {
        let path = format!("/proc/{pid}/status");
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or_else(|| anyhow!("no {name} in {path}"))
        };
        Ok(Memory { rss_kib: field("VmRSS:")?, peak_kib: field("VmHWM:")? })
    }

    /// The sum over `pids`. Each process peaks at its own moment, so the summed peak is an
    /// upper bound of the processes' peak together.
    pub fn read_all(pids: &[u32]) -> Result<Memory> {
        let mut total = Memory { rss_kib: 0, peak_kib: 0 };
        for &pid in pids {
            let one = Memory::read(pid)?;
            total.rss_kib += one.rss_kib;
            total.peak_kib += one.peak_kib;
        }
        Ok(total)
    }
}

/// `read` of every process in `pids`, summed; `None` when no process is given (nothing to
/// measure), so that a run without `--server-pid` reports no server usage.
pub fn read_if_any<T>(pids: &[u32], read: fn(&[u32]) -> Result<T>) -> Result<Option<T>> {
    if pids.is_empty() { Ok(None) } else { read(pids).map(Some) }
}

/// Reads the server's resident memory (summed over its processes) every `period` in a
/// background task and keeps the largest value, as a second opinion next to the kernel's own
/// high-water mark.
pub struct RssSampler {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>, period: Duration) -> RssSampler {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (peak_kib, stop) = (peak_kib.clone(), stop.clone());
            async move {
                let mut ticks = tokio::time::interval(period);
                while !stop.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    match Memory::read_all(&pids) {
                        Ok(memory) => peak_kib.fetch_max(memory.rss_kib, Ordering::Relaxed),
                        Err(_) => break, // a process is gone
                    };
                }
            }
        });
        RssSampler { peak_kib, stop, task }
    }

    /// Stops sampling and returns the largest resident size seen, in KiB.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak_kib.load(Ordering::Relaxed)
    }
}

/// Checks up front that every pid names a process we can read, so that a typo fails at once.
pub fn check_readable(pids: &[u32]) -> Result<()> {
    for &pid in pids {
        Memory::read(pid).with_context(|| format!("server process {pid} is not readable"))?;
    }
    Ok(())
}
