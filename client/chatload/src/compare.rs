//! `chatload compare`: two programs (or two setups of one) on the same load, alternately.
//!
//! The default comparison is lesson05 against the finished server; `--store` compares the
//! server's SQLite store against `--database memory`, a feed's history on join against none,
//! and start-up on a large stored feed against a small one. Each configuration names its two
//! columns: which program, on which database, with which `--history`.
//!
//! Each run starts a fresh server process (so memory readings start clean), runs one
//! configuration against it in this process, and stops it. Runs alternate first column,
//! second column, first, second, ... so that a slow moment of the machine hurts both alike.
//! The output is a markdown table of medians and the ratio second / first, then the targets.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use client::RunningServer;

use crate::fanout::{self, Fanout, FanoutReport, Pace};
use crate::feed::{Prefills, database_arguments, fill, stop_cleanly};
use crate::idle::{self, Idle, IdleReport};
use crate::start::{self, Join, StartReport};

#[derive(Args)]
pub struct CompareArgs {
    /// Runs of each configuration against each column.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Only these configurations, comma-separated: F1,F2,F3,I1,L1,I2 (with --store:
    /// F1,F2,F3,I1h,S1).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Use target/release/{lesson05,server} as they are, without running cargo build.
    #[arg(long)]
    no_build: bool,
    /// An extra argument for the server (repeat the flag for several), after the built-in
    /// `--message-rate 0`; in every column that runs the server.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Each run ends after this many seconds whatever happens.
    #[arg(long, default_value_t = 120)]
    deadline: u64,
    /// Compare the server against this binary instead of lesson05: an earlier build of the
    /// server, say, to measure what a change costs (`git worktree add`, build it there).
    #[arg(long, value_name = "BINARY")]
    baseline: Option<PathBuf>,
    /// An argument for the baseline binary (repeat the flag for several).
    #[arg(long = "baseline-arg", allow_hyphen_values = true)]
    baseline_args: Vec<String>,
    /// Compare the server's SQLite store (a fresh file in a temporary directory per run)
    /// against `--database memory`, history on join, and start-up on a large stored feed.
    #[arg(long, conflicts_with_all = ["baseline", "baseline_args"])]
    store: bool,
}

/// The programs under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Program {
    Lesson05,
    Server,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::Lesson05 => "lesson05",
            Program::Server => "server",
        }
    }
}

/// Where a column's server keeps its messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Database {
    /// As the arguments say. lesson05 keeps nothing; `server` started by chatload keeps
    /// nothing on disk either (`CHATTERBOX_DATABASE=memory`, see `RunningServer`).
    Unset,
    /// `--database memory`.
    Memory,
    /// A fresh SQLite file in a temporary directory of its own, removed after the run.
    Fresh,
    /// The SQLite file filled with this many feed messages once per `compare`, before the
    /// runs; every run starts on it and stops cleanly, so the next run finds it as it was.
    Prefilled(u32),
}

/// One side of a comparison.
#[derive(Clone, Copy, Debug)]
struct Column {
    label: &'static str,
    program: Program,
    database: Database,
    /// `--history N` for the server; `None` keeps its default.
    history: Option<usize>,
}

/// The finished server's `--history` default.
const DEFAULT_HISTORY: usize = 50;

impl Column {
    /// History frames a newcomer receives when the feed holds `feed` messages.
    fn history_on_join(&self, feed: u32) -> usize {
        match self.program {
            Program::Lesson05 => 0,
            Program::Server => self.history.unwrap_or(DEFAULT_HISTORY).min(feed as usize),
        }
    }

    /// Messages in the feed when the server starts.
    fn stored(&self) -> u32 {
        match self.database {
            Database::Prefilled(messages) => messages,
            _ => 0,
        }
    }

    fn label(&self, baseline: bool) -> &'static str {
        match self.program {
            Program::Lesson05 if baseline => "baseline",
            _ => self.label,
        }
    }
}

const LESSON05: Column = Column {
    label: "lesson05",
    program: Program::Lesson05,
    database: Database::Unset,
    history: None,
};
const SERVER: Column = server("server", Database::Unset, None);
const MEMORY: Column = server("memory", Database::Memory, None);
const SQLITE: Column = server("SQLite", Database::Fresh, None);
const HISTORY_0: Column = server("--history 0", Database::Fresh, Some(0));
const HISTORY_50: Column = server("--history 50", Database::Fresh, Some(DEFAULT_HISTORY));
const STORED_1K: Column = server("1,000 stored", Database::Prefilled(1000), None);
const STORED_1M: Column = server("1,000,000 stored", Database::Prefilled(1_000_000), None);

const fn server(label: &'static str, database: Database, history: Option<usize>) -> Column {
    Column { label, program: Program::Server, database, history }
}

#[derive(Clone, Copy)]
enum Workload {
    Fanout {
        clients: usize,
        senders: usize,
        messages: u32,
        rate: Option<f64>,
    },
    /// `prefill` messages are put into the feed (one sender) before the connections open.
    Idle {
        clients: usize,
        prefill: u32,
    },
    /// Start-up on the column's stored feed, then this many joins one after another.
    Start {
        joins: usize,
    },
}

struct Configuration {
    name: &'static str,
    description: &'static str,
    workload: Workload,
    columns: [Column; 2],
    /// Only the second column runs (I2, 10,000 idle connections, is the server's target alone).
    second_only: bool,
}

const F1: Workload = Workload::Fanout { clients: 100, senders: 1, messages: 5000, rate: None };
const F2: Workload = Workload::Fanout { clients: 1000, senders: 10, messages: 200, rate: None };
const F3: Workload = Workload::Fanout { clients: 100, senders: 100, messages: 100, rate: None };
const F1_TEXT: &str = "100 clients, 1 sender, 5,000 messages";
const F2_TEXT: &str = "1,000 clients, 10 senders, 200 messages each";
const F3_TEXT: &str = "100 clients, 100 senders, 100 messages each";

const fn configuration(
    name: &'static str,
    description: &'static str,
    workload: Workload,
    columns: [Column; 2],
) -> Configuration {
    Configuration { name, description, workload, columns, second_only: false }
}

/// lesson05 (or `--baseline`) against the finished server.
const CONFIGURATIONS: &[Configuration] = &[
    configuration("F1", F1_TEXT, F1, [LESSON05, SERVER]),
    configuration("F2", F2_TEXT, F2, [LESSON05, SERVER]),
    configuration("F3", F3_TEXT, F3, [LESSON05, SERVER]),
    configuration(
        "I1",
        "5,000 idle connections",
        Workload::Idle { clients: 5000, prefill: 0 },
        [LESSON05, SERVER],
    ),
    configuration(
        "L1",
        "100 clients, 1 sender at 100 msg/s, 500 messages (unloaded latency)",
        Workload::Fanout { clients: 100, senders: 1, messages: 500, rate: Some(100.0) },
        [LESSON05, SERVER],
    ),
    Configuration {
        name: "I2",
        description: "10,000 idle connections, server only",
        workload: Workload::Idle { clients: 10_000, prefill: 0 },
        columns: [LESSON05, SERVER],
        second_only: true,
    },
];

/// `--store`: the server's SQLite store against memory, history on join, start-up.
const STORE_CONFIGURATIONS: &[Configuration] = &[
    configuration("F1", F1_TEXT, F1, [MEMORY, SQLITE]),
    configuration("F2", F2_TEXT, F2, [MEMORY, SQLITE]),
    configuration("F3", F3_TEXT, F3, [MEMORY, SQLITE]),
    configuration(
        "I1h",
        "50 messages into the feed (one sender), then 5,000 idle connections; server CPU while \
         they connect, each receiving the feed's history; both columns on SQLite",
        Workload::Idle { clients: 5000, prefill: 50 },
        [HISTORY_0, HISTORY_50],
    ),
    configuration(
        "S1",
        "start on a SQLite file of 1,000 / 1,000,000 feed messages (filled once, through the \
         protocol): spawn to `listening on` and to the first `/healthz` answer; then 20 \
         connections one after another, each until its id and 50 history frames",
        Workload::Start { joins: 20 },
        [STORED_1K, STORED_1M],
    ),
];

enum Outcome {
    Fanout(FanoutReport),
    Idle(IdleReport),
    Start(StartReport),
    Failed(String),
}

impl Outcome {
    fn fanout(&self) -> Option<&FanoutReport> {
        if let Outcome::Fanout(report) = self { Some(report) } else { None }
    }

    fn idle(&self) -> Option<&IdleReport> {
        if let Outcome::Idle(report) = self { Some(report) } else { None }
    }

    fn start(&self) -> Option<&StartReport> {
        if let Outcome::Start(report) = self { Some(report) } else { None }
    }
}

struct Results {
    /// (configuration index, column 0 or 1, outcome of one run)
    runs: Vec<(usize, usize, Outcome)>,
}

impl Results {
    fn of(&self, configuration: usize, column: usize) -> impl Iterator<Item = &Outcome> {
        self.runs
            .iter()
            .filter(move |(c, p, _)| *c == configuration && *p == column)
            .map(|(_, _, outcome)| outcome)
    }

    /// The reports of one kind from one column's runs of a configuration.
    fn reports<R>(
        &self,
        configuration: usize,
        column: usize,
        kind: fn(&Outcome) -> Option<&R>,
    ) -> Vec<&R> {
        self.of(configuration, column).filter_map(kind).collect()
    }

    fn fanouts(&self, configuration: usize, column: usize) -> Vec<&FanoutReport> {
        self.reports(configuration, column, Outcome::fanout)
    }

    fn idles(&self, configuration: usize, column: usize) -> Vec<&IdleReport> {
        self.reports(configuration, column, Outcome::idle)
    }

    fn starts(&self, configuration: usize, column: usize) -> Vec<&StartReport> {
        self.reports(configuration, column, Outcome::start)
    }

    fn failures(&self, configuration: usize, column: usize) -> usize {
        self.of(configuration, column).filter(|o| matches!(o, Outcome::Failed(_))).count()
    }
}

/// The columns of a configuration that run: (column index, column).
fn columns(configuration: &Configuration) -> impl Iterator<Item = (usize, &Column)> {
    configuration.columns.iter().enumerate().skip(usize::from(configuration.second_only))
}

pub async fn run(args: CompareArgs) -> Result<()> {
    let all = if args.store { STORE_CONFIGURATIONS } else { CONFIGURATIONS };
    let selected: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(c.name))
        })
        .map(|(index, _)| index)
        .collect();
    if selected.is_empty() {
        let names: Vec<&str> = all.iter().map(|c| c.name).collect();
        bail!("--only matches none of {}", names.join(","));
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let limit = crate::connections::raise_open_file_limit()?;
    if limit < 10_100 {
        eprintln!("warning: the open-file limit is {limit}; 10,000 connections will not fit");
    }
    let mut programs: Vec<Program> = selected
        .iter()
        .flat_map(|&index| columns(&all[index]).map(|(_, column)| column.program))
        .collect();
    programs.sort_by_key(|program| program.name());
    programs.dedup();
    let binaries = binaries(!args.no_build, args.baseline.clone(), &programs)?;
    // The load comes from one address as fast as it can: the limits meant for abuse are off.
    let mut server_args: Vec<String> =
        ["--message-rate", "0", "--frame-rate", "0", "--max-connections-per-address", "1000000"]
            .map(str::to_owned)
            .into();
    server_args.extend(args.server_args.iter().cloned());

    // The record says when the measurement started.
    let machine = machine_description();
    let mut prefilled: Vec<u32> = selected
        .iter()
        .flat_map(|&index| all[index].columns.iter().map(Column::stored))
        .filter(|&messages| messages > 0)
        .collect();
    prefilled.sort_unstable();
    prefilled.dedup();
    let prefills = Prefills::create(&binaries.path(Program::Server), &server_args, &prefilled)
        .await
        .context("filling the databases for start-up failed")?;

    let mut results = Results { runs: Vec::new() };
    for &index in &selected {
        let configuration = &all[index];
        for run in 1..=args.runs {
            for (side, column) in columns(configuration) {
                let label = column.label(args.baseline.is_some());
                eprint!("{} run {run}/{} {label:>24}: ", configuration.name, args.runs);
                let mut arguments: Vec<String> = match column.program {
                    Program::Lesson05 => args.baseline_args.clone(),
                    Program::Server => server_args.clone(),
                };
                if let Some(history) = column.history {
                    arguments.extend(["--history".into(), history.to_string()]);
                }
                let outcome = run_once(
                    &binaries.path(column.program),
                    arguments,
                    column,
                    &prefills,
                    configuration.workload,
                    Duration::from_secs(args.deadline),
                )
                .await;
                eprintln!("{}", one_line(&outcome));
                results.runs.push((index, side, outcome));
            }
        }
    }

    println!("{machine}");
    println!("Command: `cargo run -p chatload --release -- compare{}`\n", command_suffix(&args));
    if !prefills.made.is_empty() {
        println!("{}", prefills.describe());
    }
    println!("{}", tables(all, &results, &selected, args.runs, args.baseline.is_some()));
    let targets = if args.store {
        store_targets(all, &results, &selected)
    } else {
        targets(all, &results, &selected)
    };
    println!("{targets}");
    Ok(())
}

fn command_suffix(args: &CompareArgs) -> String {
    let mut suffix = String::new();
    if args.store {
        suffix += " --store";
    }
    if args.runs != 3 {
        suffix += &format!(" --runs {}", args.runs);
    }
    if !args.only.is_empty() {
        suffix += &format!(" --only {}", args.only.join(","));
    }
    for argument in &args.server_args {
        suffix += &format!(" --server-arg={argument}");
    }
    if let Some(baseline) = &args.baseline {
        suffix += &format!(" --baseline {}", baseline.display());
    }
    for argument in &args.baseline_args {
        suffix += &format!(" --baseline-arg={argument}");
    }
    suffix
}

struct Binaries {
    directory: PathBuf,
    /// Stands in for lesson05 when given.
    baseline: Option<PathBuf>,
}

impl Binaries {
    fn path(&self, program: Program) -> PathBuf {
        match (&self.baseline, program) {
            (Some(baseline), Program::Lesson05) => baseline.clone(),
            _ => self.directory.join(program.name()),
        }
    }
}

/// Builds `programs` in release mode into the target directory this binary lives in
/// (target/<profile>/chatload), and returns where they are.
fn binaries(build: bool, baseline: Option<PathBuf>, programs: &[Program]) -> Result<Binaries> {
    let exe = std::env::current_exe().context("cannot locate chatload itself")?;
    let target_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("chatload is not in a cargo target directory")?
        .to_path_buf();
    let binaries = Binaries { directory: target_dir.join("release"), baseline };
    // A baseline binary is given, not built.
    let to_build: Vec<&str> = programs
        .iter()
        .filter(|&&program| binaries.baseline.is_none() || program != Program::Lesson05)
        .map(|program| program.name())
        .collect();
    if build && !to_build.is_empty() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let packages = to_build.join(" and ");
        eprintln!("building {packages} (release) into {}", target_dir.display());
        let status = std::process::Command::new(&cargo)
            .args(["build", "--release"])
            .args(to_build.iter().flat_map(|name| ["-p", name]))
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir)
            .status()
            .with_context(|| format!("could not run {cargo}"))?;
        if !status.success() {
            bail!("cargo build --release of {packages} failed");
        }
    }
    for &program in programs {
        let path = binaries.path(program);
        if !path.exists() {
            bail!("{} does not exist (build it, or drop --no-build)", path.display());
        }
    }
    Ok(binaries)
}

/// Starts a fresh server, runs one workload against it, and stops it.
async fn run_once(
    binary: &Path,
    mut arguments: Vec<String>,
    column: &Column,
    prefills: &Prefills,
    workload: Workload,
    deadline: Duration,
) -> Outcome {
    let result = async {
        // A fresh database lives in its own directory for one run.
        let fresh = match column.database {
            Database::Fresh => Some(tempfile::Builder::new().prefix("chatload-store-").tempdir()?),
            _ => None,
        };
        match column.database {
            Database::Unset => {}
            Database::Memory => arguments.extend(["--database".into(), "memory".into()]),
            Database::Fresh => {
                let directory = fresh.as_ref().context("no temporary directory")?;
                let path = directory.path().join("chatterbox.db");
                arguments.extend(["--database".into(), path.display().to_string()]);
            }
            Database::Prefilled(messages) => {
                arguments.extend(database_arguments(prefills.path(messages)?));
            }
        }
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        let spawned = Instant::now();
        let server = RunningServer::start(binary, &arguments).await?;
        let listening = spawned.elapsed();
        let pid = server.pid().context("the server has already exited")?;
        let outcome = match workload {
            Workload::Fanout { clients, senders, messages, rate } => {
                let config = Fanout {
                    urls: vec![server.ws_url()],
                    clients,
                    senders,
                    messages,
                    pace: rate.map(Pace::Rate).unwrap_or_else(|| Pace::default_window(senders)),
                    server_pid: Some(pid),
                    concurrency: 64,
                    deadline,
                    stall: Duration::from_secs(10),
                };
                Outcome::Fanout(fanout::run(&config).await?)
            }
            Workload::Idle { clients, prefill } => {
                if prefill > 0 {
                    fill(&server, prefill, deadline).await?;
                }
                let config = Idle {
                    urls: vec![server.ws_url()],
                    clients,
                    server_pid: Some(pid),
                    concurrency: 64,
                    history: column.history_on_join(prefill),
                    hold: Duration::from_secs(1),
                    deadline,
                };
                Outcome::Idle(idle::run(&config).await?)
            }
            Workload::Start { joins } => {
                let join = Join {
                    joins,
                    history: column.history_on_join(column.stored()),
                    newest_seq: u64::from(column.stored()),
                };
                Outcome::Start(start::measure(&server, spawned, listening, join).await?)
            }
        };
        // Stop it and wait, so that its teardown does not overlap the next run. A prefilled
        // file is shared by the runs: its server stops cleanly, leaving it as it found it.
        match column.database {
            Database::Prefilled(_) => stop_cleanly(server).await?,
            _ => server.stop().await?,
        }
        if let Some(directory) = fresh {
            directory.close().context("removing the temporary database failed")?;
        }
        anyhow::Ok(outcome)
    };
    result.await.unwrap_or_else(|error| Outcome::Failed(format!("{error:#}")))
}

fn one_line(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Fanout(report) => format!(
            "{:.0} deliveries/s, p50 {:.0} us, p99 {:.0} us, {} us CPU/delivery, lost {}, dup {}",
            report.deliveries_per_second,
            report.latency_us.p50,
            report.latency_us.p99,
            report.server.map_or("?".into(), |s| format!("{:.3}", s.cpu_us_per_delivery)),
            report.lost,
            report.duplicates,
        ),
        Outcome::Idle(report) => format!(
            "{:.1} KiB per connection, {:.0} ms CPU connecting, {} dropped, {} short of history",
            report.server.map_or(f64::NAN, |s| s.kib_per_connection),
            report.server.map_or(f64::NAN, |s| s.connect_cpu_ms),
            report.dropped,
            report.short_of_history,
        ),
        Outcome::Start(report) => format!(
            "listening {:.0} ms, /healthz {:.0} ms, first join {:.2} ms, join median {:.2} ms, \
             {} wrong histories",
            report.listening_ms,
            report.healthz_ms,
            report.first_join_ms,
            report.join_ms,
            report.wrong_history,
        ),
        Outcome::Failed(error) => format!("FAILED: {error}"),
    }
}

pub(crate) fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    })
}

/// One row of the table: a metric, how to read it from a report, and how to print it.
struct Metric<R> {
    name: &'static str,
    value: fn(&R) -> f64,
    /// Summed over all runs instead of a median (counts of failures).
    total: bool,
    decimals: usize,
}

impl<R> Metric<R> {
    /// The median over the runs, printed with `decimals`.
    fn median(name: &'static str, decimals: usize, value: fn(&R) -> f64) -> Metric<R> {
        Metric { name, value, total: false, decimals }
    }

    /// Summed over all runs: counts of failures.
    fn total(name: &'static str, value: fn(&R) -> f64) -> Metric<R> {
        Metric { name, value, total: true, decimals: 0 }
    }
}

fn fanout_metrics(latency_only: bool) -> Vec<Metric<FanoutReport>> {
    let mut metrics = vec![
        Metric::median("deliveries/s", 0, |r: &FanoutReport| r.deliveries_per_second),
        Metric::median("latency p50 (ms)", 2, |r: &FanoutReport| r.latency_us.p50 / 1e3),
        Metric::median("latency p90 (ms)", 2, |r: &FanoutReport| r.latency_us.p90 / 1e3),
        Metric::median("latency p99 (ms)", 2, |r: &FanoutReport| r.latency_us.p99 / 1e3),
        Metric::median("latency max (ms)", 2, |r: &FanoutReport| r.latency_us.max / 1e3),
        Metric::median("server CPU per delivery (us)", 3, |r: &FanoutReport| {
            r.server.map_or(f64::NAN, |s| s.cpu_us_per_delivery)
        }),
        Metric::median("server peak RSS (MiB)", 1, |r: &FanoutReport| {
            r.server.map_or(f64::NAN, |s| s.peak_rss_kib as f64 / 1024.0)
        }),
        Metric::total("lost + duplicate + out of order (all runs)", |r: &FanoutReport| {
            (r.lost + r.duplicates + r.out_of_order) as f64
        }),
    ];
    if !latency_only {
        metrics.retain(|m| m.name != "latency p90 (ms)" && m.name != "latency max (ms)");
    }
    metrics
}

fn idle_metrics(history: bool) -> Vec<Metric<IdleReport>> {
    let mut metrics = vec![
        Metric::median("server RSS per connection (KiB)", 1, |r: &IdleReport| {
            r.server.map_or(f64::NAN, |s| s.kib_per_connection)
        }),
        Metric::median("server RSS with all connections (MiB)", 1, |r: &IdleReport| {
            r.server.map_or(f64::NAN, |s| s.rss_after_kib as f64 / 1024.0)
        }),
        Metric::median("connect time (s)", 2, |r: &IdleReport| r.connect_seconds),
        Metric::median("server CPU while connecting (ms)", 1, |r: &IdleReport| {
            r.server.map_or(f64::NAN, |s| s.connect_cpu_ms)
        }),
        Metric::total("dropped (all runs)", |r: &IdleReport| r.dropped as f64),
    ];
    if history {
        metrics.extend([
            Metric::median("fewest history frames on a connection", 0, |r: &IdleReport| {
                r.history_min as f64
            }),
            Metric::total("connections short of history (all runs)", |r: &IdleReport| {
                r.short_of_history as f64
            }),
        ]);
    }
    metrics
}

fn start_metrics() -> Vec<Metric<StartReport>> {
    vec![
        Metric::median("spawn to `listening on` (ms)", 1, |r: &StartReport| r.listening_ms),
        Metric::median("spawn to first /healthz answer (ms)", 1, |r: &StartReport| r.healthz_ms),
        Metric::median("first join: id + 50 history frames (ms)", 2, |r: &StartReport| {
            r.first_join_ms
        }),
        Metric::median("join, median of 20 (ms)", 2, |r: &StartReport| r.join_ms),
        Metric::total("joins with a wrong history (all runs)", |r: &StartReport| {
            r.wrong_history as f64
        }),
    ]
}

fn summarize<R>(reports: &[&R], metric: &Metric<R>) -> Option<f64> {
    let values: Vec<f64> = reports.iter().map(|r| (metric.value)(r)).collect();
    if metric.total { (!values.is_empty()).then(|| values.iter().sum()) } else { median(values) }
}

/// Medians (or totals) of each metric over each column's runs of a configuration; `None` for
/// a column that does not run.
fn rows<R>(
    configuration: &Configuration,
    reports: [Vec<&R>; 2],
    metrics: &[Metric<R>],
) -> Vec<(&'static str, [Option<f64>; 2], usize)> {
    let runs = |side: usize| !(side == 0 && configuration.second_only);
    metrics
        .iter()
        .map(|metric| {
            let value = |side: usize| runs(side).then(|| summarize(&reports[side], metric));
            (metric.name, [value(0).flatten(), value(1).flatten()], metric.decimals)
        })
        .collect()
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.decimals$}"))
}

/// One markdown table per run of configurations with the same two columns.
fn tables(
    all: &[Configuration],
    results: &Results,
    selected: &[usize],
    runs: usize,
    baseline: bool,
) -> String {
    let mut out = String::new();
    let mut header: Option<[&str; 2]> = None;
    for &index in selected {
        let configuration = &all[index];
        let name = configuration.name;
        let labels = configuration.columns.map(|column| column.label(baseline));
        if header != Some(labels) {
            if header.is_some() {
                out += "\n";
            }
            let [first, second] = labels;
            out += &format!(
                "| config | metric | {first} (median of {runs}) | {second} (median of {runs}) \
                 | {second} / {first} |\n|---|---|---:|---:|---:|\n"
            );
            header = Some(labels);
        }
        let rows = match configuration.workload {
            Workload::Fanout { rate, .. } => rows(
                configuration,
                [results.fanouts(index, 0), results.fanouts(index, 1)],
                &fanout_metrics(rate.is_some()),
            ),
            Workload::Idle { prefill, .. } => rows(
                configuration,
                [results.idles(index, 0), results.idles(index, 1)],
                &idle_metrics(prefill > 0),
            ),
            Workload::Start { .. } => rows(
                configuration,
                [results.starts(index, 0), results.starts(index, 1)],
                &start_metrics(),
            ),
        };
        let mut row = |metric: &str, [a, b]: [Option<f64>; 2], decimals: usize| {
            let ratio = match (a, b) {
                (Some(a), Some(b)) if a > 0.0 => format!("{:.3}", b / a),
                _ => "n/a".into(),
            };
            out += &format!(
                "| {name} | {metric} | {} | {} | {ratio} |\n",
                cell(a, decimals),
                cell(b, decimals)
            );
        };
        for (metric, values, decimals) in rows {
            row(metric, values, decimals);
        }
        for (side, column) in columns(configuration) {
            let failed = results.failures(index, side);
            if failed > 0 {
                let mut values = [None, None];
                values[side] = Some(failed as f64);
                row(&format!("FAILED runs ({})", column.label(baseline)), values, 0);
            }
        }
    }
    out += "\n";
    for &index in selected {
        let configuration = &all[index];
        out += &format!("- {}: {}\n", configuration.name, configuration.description);
    }
    out
}

/// A targets table, one line at a time.
struct Targets {
    lines: Vec<String>,
}

impl Targets {
    fn new() -> Targets {
        Targets {
            lines: vec!["| target | measured | met |".to_owned(), "|---|---|---|".to_owned()],
        }
    }

    fn check(&mut self, target: String, measured: Option<f64>, unit: &str, met: fn(f64) -> bool) {
        let (measured, verdict) = match measured {
            // Four decimals, so that a ratio of 0.2006 does not print as a failing "0.200".
            Some(value) => (format!("{value:.4}{unit}"), if met(value) { "yes" } else { "**no**" }),
            None => ("not measured".into(), "n/a"),
        };
        self.lines.push(format!("| {target} | {measured} | {verdict} |"));
    }

    fn holds(&mut self, target: &str, measured: String, met: bool) {
        self.lines
            .push(format!("| {target} | {measured} | {} |", if met { "yes" } else { "**no**" }));
    }

    /// No loss, duplicate, reordering, dropped connection, missing history or failed run, in
    /// any run of any column that runs the finished server.
    fn no_faults(&mut self, all: &[Configuration], results: &Results, selected: &[usize]) {
        let mut faults = 0u64;
        let mut failed = 0usize;
        for &index in selected {
            for (side, column) in columns(&all[index]) {
                if column.program != Program::Server {
                    continue;
                }
                faults += results
                    .fanouts(index, side)
                    .iter()
                    .map(|r| r.lost + r.duplicates + r.out_of_order + r.unexpected_frames)
                    .sum::<u64>();
                faults += results
                    .idles(index, side)
                    .iter()
                    .map(|r| r.dropped + r.short_of_history)
                    .sum::<u64>();
                faults += results.starts(index, side).iter().map(|r| r.wrong_history).sum::<u64>();
                failed += results.failures(index, side);
            }
        }
        self.holds(
            "server: no loss, duplicate, reordering, dropped connection or missing history in any \
             run",
            format!("{faults} faults, {failed} failed runs"),
            faults == 0 && failed == 0,
        );
    }

    fn finish(self) -> String {
        self.lines.join("\n") + "\n"
    }
}

fn index_of(all: &[Configuration], selected: &[usize], name: &str) -> Option<usize> {
    all.iter().position(|c| c.name == name).filter(|i| selected.contains(i))
}

/// Median server CPU per delivery of one column's runs.
fn cpu(results: &Results, index: usize, side: usize) -> Option<f64> {
    median(
        results
            .fanouts(index, side)
            .iter()
            .map(|r| r.server.map_or(f64::NAN, |s| s.cpu_us_per_delivery))
            .collect(),
    )
}

/// second / first, of two medians.
fn ratio(first: Option<f64>, second: Option<f64>) -> Option<f64> {
    match (first, second) {
        (Some(a), Some(b)) if a > 0.0 => Some(b / a),
        _ => None,
    }
}

/// The targets for `server` against lesson05, checked against the medians just measured.
fn targets(all: &[Configuration], results: &Results, selected: &[usize]) -> String {
    let index_of = |name: &str| index_of(all, selected, name);
    let mut targets = Targets::new();
    for name in ["F1", "F2", "F3"] {
        if let Some(index) = index_of(name) {
            let ratio = ratio(cpu(results, index, 0), cpu(results, index, 1));
            targets.check(
                format!("{name}: server CPU/delivery <= 1/5 of lesson05's"),
                ratio,
                "x",
                |r| r <= 0.2,
            );
        }
    }
    if let Some(index) = index_of("F2") {
        targets.check(
            "F2: server CPU/delivery < 0.5 us".into(),
            cpu(results, index, 1),
            " us",
            |v| v < 0.5,
        );
    }
    if let Some(index) = index_of("I1") {
        let per_connection = median(
            results
                .idles(index, 1)
                .iter()
                .map(|r| r.server.map_or(f64::NAN, |s| s.kib_per_connection))
                .collect(),
        );
        targets.check(
            "I1: server <= 16 KiB per idle connection".into(),
            per_connection,
            " KiB",
            |v| v <= 16.0,
        );
    }
    if let Some(index) = index_of("L1") {
        let server = results.fanouts(index, 1);
        let p50 = median(server.iter().map(|r| r.latency_us.p50 / 1e3).collect());
        let p99 = median(server.iter().map(|r| r.latency_us.p99 / 1e3).collect());
        targets.check("L1: server p50 < 2 ms".into(), p50, " ms", |v| v < 2.0);
        targets.check("L1: server p99 < 10 ms".into(), p99, " ms", |v| v < 10.0);
    }
    if let Some(index) = index_of("I2") {
        let servers = results.idles(index, 1);
        let peak = servers
            .iter()
            .map(|r| r.server.map_or(f64::NAN, |s| s.peak_rss_kib as f64 / 1024.0))
            .fold(None, |max: Option<f64>, v| Some(max.map_or(v, |m| m.max(v))));
        let held = servers.iter().all(|r| r.dropped == 0) && !servers.is_empty();
        targets.check(
            "I2: 10,000 idle connections, server peak RSS < 200 MiB (worst run)".into(),
            peak,
            " MiB",
            |v| v < 200.0,
        );
        targets.holds(
            "I2: all 10,000 connections held",
            if held { "all runs" } else { "dropped or failed" }.into(),
            held,
        );
    }
    targets.no_faults(all, results, selected);
    targets.finish()
}

/// The store's targets (issue 8): SQLite against memory, history on join, start-up.
fn store_targets(all: &[Configuration], results: &Results, selected: &[usize]) -> String {
    let index_of = |name: &str| index_of(all, selected, name);
    let mut targets = Targets::new();
    for name in ["F1", "F2", "F3"] {
        if let Some(index) = index_of(name) {
            targets.check(
                format!("{name}: SQLite CPU/delivery <= 1.15x memory's"),
                ratio(cpu(results, index, 0), cpu(results, index, 1)),
                "x",
                |r| r <= 1.15,
            );
        }
    }
    if let Some(index) = index_of("I1h") {
        let connect_cpu = |side: usize| {
            median(
                results
                    .idles(index, side)
                    .iter()
                    .map(|r| r.server.map_or(f64::NAN, |s| s.connect_cpu_ms))
                    .collect(),
            )
        };
        targets.check(
            "I1h: server CPU connecting 5,000 with --history 50 <= 2x with --history 0".into(),
            ratio(connect_cpu(0), connect_cpu(1)),
            "x",
            |r| r <= 2.0,
        );
        let histories = results.idles(index, 1);
        let complete = !histories.is_empty()
            && histories.iter().all(|r| r.short_of_history == 0 && r.history_expected == 50);
        targets.holds(
            "I1h: every connection received 50 history frames (--history 50, all runs)",
            format!(
                "fewest {}",
                histories
                    .iter()
                    .map(|r| r.history_min)
                    .min()
                    .map_or("n/a".into(), |m| m.to_string())
            ),
            complete,
        );
    }
    if let Some(index) = index_of("S1") {
        let worst_start = results
            .starts(index, 1)
            .iter()
            .map(|r| r.healthz_ms / 1e3)
            .fold(None, |max: Option<f64>, v| Some(max.map_or(v, |m| m.max(v))));
        targets.check(
            "S1: 1,000,000 stored, spawn to /healthz answer < 2 s (worst run)".into(),
            worst_start,
            " s",
            |v| v < 2.0,
        );
        let join =
            |side: usize| median(results.starts(index, side).iter().map(|r| r.join_ms).collect());
        targets.check(
            "S1: join (id + 50 history) with 1,000,000 stored <= 1.5x with 1,000 (medians)".into(),
            ratio(join(0), join(1)),
            "x",
            |r| r <= 1.5,
        );
    }
    targets.no_faults(all, results, selected);
    targets.finish()
}

/// Date, CPU, memory and kernel, for the record next to the numbers.
fn machine_description() -> String {
    let date = std::process::Command::new("date")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let kib: f64 = info
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("Date: {date}\nMachine: {cpus} CPUs ({model}), {memory} memory, Linux {kernel}\n")
}
