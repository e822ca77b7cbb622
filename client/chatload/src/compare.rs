//! `chatload compare`: lesson05 against the finished server, on the same load, alternately.
//!
//! Each run starts a fresh server process (so memory readings start clean), runs one
//! configuration against it in this process, and kills it. Runs alternate lesson05, server,
//! lesson05, server, ... so that a slow moment of the machine hurts both alike. The output is a
//! markdown table of medians and the ratio server / lesson05, then the targets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use client::RunningServer;

use crate::fanout::{self, Fanout, FanoutReport, Pace};
use crate::idle::{self, Idle, IdleReport};

#[derive(Args)]
pub struct CompareArgs {
    /// Runs of each configuration against each server.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Only these configurations, comma-separated: F1,F2,F3,I1,L1,I2.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Use target/release/{lesson05,server} as they are, without running cargo build.
    #[arg(long)]
    no_build: bool,
    /// An extra argument for the server (repeat the flag for several), after the built-in
    /// `--message-rate 0`.
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
}

/// The two programs under test.
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

#[derive(Clone, Copy)]
enum Workload {
    Fanout { clients: usize, senders: usize, messages: u32, rate: Option<f64> },
    Idle { clients: usize },
}

struct Configuration {
    name: &'static str,
    description: &'static str,
    workload: Workload,
    /// I2 (10,000 idle connections) is the finished server's target alone.
    programs: &'static [Program],
}

const BOTH: &[Program] = &[Program::Lesson05, Program::Server];

const CONFIGURATIONS: &[Configuration] = &[
    Configuration {
        name: "F1",
        description: "100 clients, 1 sender, 5,000 messages",
        workload: Workload::Fanout { clients: 100, senders: 1, messages: 5000, rate: None },
        programs: BOTH,
    },
    Configuration {
        name: "F2",
        description: "1,000 clients, 10 senders, 200 messages each",
        workload: Workload::Fanout { clients: 1000, senders: 10, messages: 200, rate: None },
        programs: BOTH,
    },
    Configuration {
        name: "F3",
        description: "100 clients, 100 senders, 100 messages each",
        workload: Workload::Fanout { clients: 100, senders: 100, messages: 100, rate: None },
        programs: BOTH,
    },
    Configuration {
        name: "I1",
        description: "5,000 idle connections",
        workload: Workload::Idle { clients: 5000 },
        programs: BOTH,
    },
    Configuration {
        name: "L1",
        description: "100 clients, 1 sender at 100 msg/s, 500 messages (unloaded latency)",
        workload: Workload::Fanout { clients: 100, senders: 1, messages: 500, rate: Some(100.0) },
        programs: BOTH,
    },
    Configuration {
        name: "I2",
        description: "10,000 idle connections, server only",
        workload: Workload::Idle { clients: 10_000 },
        programs: &[Program::Server],
    },
];

enum Outcome {
    Fanout(FanoutReport),
    Idle(IdleReport),
    Failed(String),
}

struct Results {
    /// (configuration index, program, outcome of one run)
    runs: Vec<(usize, Program, Outcome)>,
}

impl Results {
    fn of(&self, configuration: usize, program: Program) -> impl Iterator<Item = &Outcome> {
        self.runs
            .iter()
            .filter(move |(c, p, _)| *c == configuration && *p == program)
            .map(|(_, _, outcome)| outcome)
    }

    fn fanouts(&self, configuration: usize, program: Program) -> Vec<&FanoutReport> {
        self.of(configuration, program)
            .filter_map(|outcome| match outcome {
                Outcome::Fanout(report) => Some(report),
                _ => None,
            })
            .collect()
    }

    fn idles(&self, configuration: usize, program: Program) -> Vec<&IdleReport> {
        self.of(configuration, program)
            .filter_map(|outcome| match outcome {
                Outcome::Idle(report) => Some(report),
                _ => None,
            })
            .collect()
    }

    fn failures(&self, configuration: usize, program: Program) -> usize {
        self.of(configuration, program).filter(|o| matches!(o, Outcome::Failed(_))).count()
    }
}

pub async fn run(args: CompareArgs) -> Result<()> {
    let selected: Vec<usize> = CONFIGURATIONS
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(c.name))
        })
        .map(|(index, _)| index)
        .collect();
    if selected.is_empty() {
        bail!("--only matches none of F1,F2,F3,I1,L1,I2");
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let limit = crate::connections::raise_open_file_limit()?;
    if limit < 10_100 {
        eprintln!("warning: the open-file limit is {limit}; 10,000 connections will not fit");
    }
    let binaries = binaries(!args.no_build, args.baseline.clone())?;
    // The load comes from one address as fast as it can: the limits meant for abuse are off.
    let mut server_args: Vec<String> =
        ["--message-rate", "0", "--frame-rate", "0", "--max-connections-per-address", "1000000"]
            .map(str::to_owned)
            .into();
    server_args.extend(args.server_args.iter().cloned());

    // The record says when the measurement started.
    let machine = machine_description();
    let mut results = Results { runs: Vec::new() };
    for &index in &selected {
        let configuration = &CONFIGURATIONS[index];
        for run in 1..=args.runs {
            for &program in configuration.programs {
                eprint!("{} run {run}/{} {:>8}: ", configuration.name, args.runs, program.name());
                let arguments: Vec<&str> = match program {
                    Program::Lesson05 => args.baseline_args.iter().map(String::as_str).collect(),
                    Program::Server => server_args.iter().map(String::as_str).collect(),
                };
                let outcome = run_once(
                    &binaries.path(program),
                    &arguments,
                    configuration.workload,
                    Duration::from_secs(args.deadline),
                )
                .await;
                eprintln!("{}", one_line(&outcome));
                results.runs.push((index, program, outcome));
            }
        }
    }

    println!("{machine}");
    println!("Command: `cargo run -p chatload --release -- compare{}`\n", command_suffix(&args));
    let first = if args.baseline.is_some() { "baseline" } else { "lesson05" };
    println!("{}", table(&results, &selected, args.runs, first));
    println!("{}", targets(&results, &selected));
    Ok(())
}

fn command_suffix(args: &CompareArgs) -> String {
    let mut suffix = String::new();
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

/// Builds lesson05 and server in release mode into the target directory this binary lives in
/// (target/<profile>/chatload), and returns where they are.
fn binaries(build: bool, baseline: Option<PathBuf>) -> Result<Binaries> {
    let exe = std::env::current_exe().context("cannot locate chatload itself")?;
    let target_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("chatload is not in a cargo target directory")?
        .to_path_buf();
    if build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        eprintln!("building lesson05 and server (release) into {}", target_dir.display());
        let status = std::process::Command::new(&cargo)
            .args(["build", "--release", "-p", "lesson05", "-p", "server", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir)
            .status()
            .with_context(|| format!("could not run {cargo}"))?;
        if !status.success() {
            bail!("cargo build --release -p lesson05 -p server failed");
        }
    }
    let binaries = Binaries { directory: target_dir.join("release"), baseline };
    for program in [Program::Lesson05, Program::Server] {
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
    arguments: &[&str],
    workload: Workload,
    deadline: Duration,
) -> Outcome {
    let result = async {
        let server = RunningServer::start(binary, arguments).await?;
        let pid = server.pid().context("the server has already exited")?;
        let outcome = match workload {
            Workload::Fanout { clients, senders, messages, rate } => {
                let config = Fanout {
                    url: server.ws_url(),
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
            Workload::Idle { clients } => {
                let config = Idle {
                    url: server.ws_url(),
                    clients,
                    server_pid: Some(pid),
                    concurrency: 64,
                    history: 0,
                    hold: Duration::from_secs(1),
                    deadline,
                };
                Outcome::Idle(idle::run(&config).await?)
            }
        };
        // Stop it and wait, so that its teardown does not overlap the next run.
        server.stop().await?;
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
            "{:.1} KiB per connection, {} dropped",
            report.server.map_or(f64::NAN, |s| s.kib_per_connection),
            report.dropped
        ),
        Outcome::Failed(error) => format!("FAILED: {error}"),
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
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

fn fanout_metrics(latency_only: bool) -> Vec<Metric<FanoutReport>> {
    let mut metrics = vec![
        Metric {
            name: "deliveries/s",
            value: |r: &FanoutReport| r.deliveries_per_second,
            total: false,
            decimals: 0,
        },
        Metric {
            name: "latency p50 (ms)",
            value: |r: &FanoutReport| r.latency_us.p50 / 1e3,
            total: false,
            decimals: 2,
        },
        Metric {
            name: "latency p90 (ms)",
            value: |r: &FanoutReport| r.latency_us.p90 / 1e3,
            total: false,
            decimals: 2,
        },
        Metric {
            name: "latency p99 (ms)",
            value: |r: &FanoutReport| r.latency_us.p99 / 1e3,
            total: false,
            decimals: 2,
        },
        Metric {
            name: "latency max (ms)",
            value: |r: &FanoutReport| r.latency_us.max / 1e3,
            total: false,
            decimals: 2,
        },
        Metric {
            name: "server CPU per delivery (us)",
            value: |r: &FanoutReport| r.server.map_or(f64::NAN, |s| s.cpu_us_per_delivery),
            total: false,
            decimals: 3,
        },
        Metric {
            name: "server peak RSS (MiB)",
            value: |r: &FanoutReport| r.server.map_or(f64::NAN, |s| s.peak_rss_kib as f64 / 1024.0),
            total: false,
            decimals: 1,
        },
        Metric {
            name: "lost + duplicate + out of order (all runs)",
            value: |r: &FanoutReport| (r.lost + r.duplicates + r.out_of_order) as f64,
            total: true,
            decimals: 0,
        },
    ];
    if !latency_only {
        metrics.retain(|m| m.name != "latency p90 (ms)" && m.name != "latency max (ms)");
    }
    metrics
}

fn idle_metrics() -> Vec<Metric<IdleReport>> {
    vec![
        Metric {
            name: "server RSS per connection (KiB)",
            value: |r: &IdleReport| r.server.map_or(f64::NAN, |s| s.kib_per_connection),
            total: false,
            decimals: 1,
        },
        Metric {
            name: "server RSS with all connections (MiB)",
            value: |r: &IdleReport| r.server.map_or(f64::NAN, |s| s.rss_after_kib as f64 / 1024.0),
            total: false,
            decimals: 1,
        },
        Metric {
            name: "connect time (s)",
            value: |r: &IdleReport| r.connect_seconds,
            total: false,
            decimals: 2,
        },
        Metric {
            name: "dropped (all runs)",
            value: |r: &IdleReport| r.dropped as f64,
            total: true,
            decimals: 0,
        },
    ]
}

fn summarize<R>(reports: &[&R], metric: &Metric<R>) -> Option<f64> {
    let values: Vec<f64> = reports.iter().map(|r| (metric.value)(r)).collect();
    if metric.total { (!values.is_empty()).then(|| values.iter().sum()) } else { median(values) }
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.decimals$}"))
}

fn table(results: &Results, selected: &[usize], runs: usize, first: &str) -> String {
    let mut out = format!(
        "| config | metric | {first} (median of {runs}) | server (median of {runs}) \
         | server / {first} |\n|---|---|---:|---:|---:|\n"
    );
    let mut row = |name: &str, metric: &str, a: Option<f64>, b: Option<f64>, decimals: usize| {
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
    for &index in selected {
        let configuration = &CONFIGURATIONS[index];
        let name = configuration.name;
        let has = |p: Program| configuration.programs.contains(&p);
        match configuration.workload {
            Workload::Fanout { rate, .. } => {
                let lesson = results.fanouts(index, Program::Lesson05);
                let server = results.fanouts(index, Program::Server);
                for metric in fanout_metrics(rate.is_some()) {
                    let a = if has(Program::Lesson05) { summarize(&lesson, &metric) } else { None };
                    row(name, metric.name, a, summarize(&server, &metric), metric.decimals);
                }
            }
            Workload::Idle { .. } => {
                let lesson = results.idles(index, Program::Lesson05);
                let server = results.idles(index, Program::Server);
                for metric in idle_metrics() {
                    let a = if has(Program::Lesson05) { summarize(&lesson, &metric) } else { None };
                    row(name, metric.name, a, summarize(&server, &metric), metric.decimals);
                }
            }
        }
        for &program in configuration.programs {
            let failed = results.failures(index, program);
            if failed > 0 {
                row(
                    name,
                    &format!("FAILED runs ({})", program.name()),
                    None,
                    Some(failed as f64),
                    0,
                );
            }
        }
    }
    out += "\n";
    for &index in selected {
        let configuration = &CONFIGURATIONS[index];
        out += &format!("- {}: {}\n", configuration.name, configuration.description);
    }
    out
}

/// The targets for `server`, checked against the medians just measured.
fn targets(results: &Results, selected: &[usize]) -> String {
    let index_of = |name: &str| {
        CONFIGURATIONS.iter().position(|c| c.name == name).filter(|i| selected.contains(i))
    };
    let cpu = |index: usize, program: Program| {
        median(
            results
                .fanouts(index, program)
                .iter()
                .map(|r| r.server.map_or(f64::NAN, |s| s.cpu_us_per_delivery))
                .collect(),
        )
    };
    let mut lines = vec!["| target | measured | met |".to_owned(), "|---|---|---|".to_owned()];
    let mut check = |target: String, measured: Option<f64>, unit: &str, met: fn(f64) -> bool| {
        let (measured, verdict) = match measured {
            // Four decimals, so that a ratio of 0.2006 does not print as a failing "0.200".
            Some(value) => (format!("{value:.4}{unit}"), if met(value) { "yes" } else { "**no**" }),
            None => ("not measured".into(), "n/a"),
        };
        lines.push(format!("| {target} | {measured} | {verdict} |"));
    };
    for name in ["F1", "F2", "F3"] {
        if let Some(index) = index_of(name) {
            let ratio = match (cpu(index, Program::Lesson05), cpu(index, Program::Server)) {
                (Some(a), Some(b)) if a > 0.0 => Some(b / a),
                _ => None,
            };
            check(format!("{name}: server CPU/delivery <= 1/5 of lesson05's"), ratio, "x", |r| {
                r <= 0.2
            });
        }
    }
    if let Some(index) = index_of("F2") {
        check("F2: server CPU/delivery < 0.5 us".into(), cpu(index, Program::Server), " us", |v| {
            v < 0.5
        });
    }
    if let Some(index) = index_of("I1") {
        let per_connection = median(
            results
                .idles(index, Program::Server)
                .iter()
                .map(|r| r.server.map_or(f64::NAN, |s| s.kib_per_connection))
                .collect(),
        );
        check("I1: server <= 16 KiB per idle connection".into(), per_connection, " KiB", |v| {
            v <= 16.0
        });
    }
    if let Some(index) = index_of("L1") {
        let server = results.fanouts(index, Program::Server);
        let p50 = median(server.iter().map(|r| r.latency_us.p50 / 1e3).collect());
        let p99 = median(server.iter().map(|r| r.latency_us.p99 / 1e3).collect());
        check("L1: server p50 < 2 ms".into(), p50, " ms", |v| v < 2.0);
        check("L1: server p99 < 10 ms".into(), p99, " ms", |v| v < 10.0);
    }
    if let Some(index) = index_of("I2") {
        let servers = results.idles(index, Program::Server);
        let peak = servers
            .iter()
            .map(|r| r.server.map_or(f64::NAN, |s| s.peak_rss_kib as f64 / 1024.0))
            .fold(None, |max: Option<f64>, v| Some(max.map_or(v, |m| m.max(v))));
        let held = servers.iter().all(|r| r.dropped == 0) && !servers.is_empty();
        check(
            "I2: 10,000 idle connections, server peak RSS < 200 MiB (worst run)".into(),
            peak,
            " MiB",
            |v| v < 200.0,
        );
        lines.push(format!(
            "| I2: all 10,000 connections held | {} | {} |",
            if held { "all runs" } else { "dropped or failed" },
            if held { "yes" } else { "**no**" }
        ));
    }
    // Loss and duplicates: every run of every configuration against the server.
    let mut faults = 0u64;
    let mut failed = 0usize;
    for &index in selected {
        faults += results
            .fanouts(index, Program::Server)
            .iter()
            .map(|r| r.lost + r.duplicates + r.out_of_order + r.unexpected_frames)
            .sum::<u64>();
        faults += results.idles(index, Program::Server).iter().map(|r| r.dropped).sum::<u64>();
        failed += results.failures(index, Program::Server);
    }
    lines.push(format!(
        "| server: no loss, duplicate, reordering or dropped connection in any run \
         | {faults} faults, {failed} failed runs | {} |",
        if faults == 0 && failed == 0 { "yes" } else { "**no**" }
    ));
    lines.join("\n") + "\n"
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
