//! `chatload`: the chatterbox load benchmark.
//!
//! - `chatload fanout --url ws://127.0.0.1:PORT/ --clients N --senders S --messages M`: S of N
//!   connections send M messages each; every other connection must get each exactly once.
//!   `--url A --url B` (or `--url A,B`) spreads the connections over the nodes of a cluster.
//! - `chatload idle --url ... --clients N --server-pid PID`: server memory per idle connection.
//! - `chatload compare`: builds `lesson05` and `server` in release mode and runs the standard
//!   configurations against both, printing a markdown table (see docs/PERFORMANCE.md);
//!   `chatload compare --store`: the server's SQLite store against `--database memory`.
//!
//! It only ever targets loopback addresses, and every run ends by itself within `--deadline`.

mod compare;
mod connections;
mod fanout;
mod feed;
mod idle;
mod process_stats;
mod start;

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use fanout::{Fanout, Pace};
use idle::Idle;

#[derive(Parser)]
#[command(about = "Load benchmark for chatterbox servers (loopback only)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// S senders send M messages each; every other connection checks and times each delivery.
    Fanout(FanoutArgs),
    /// Hold N idle connections and report the server's resident memory per connection.
    Idle(IdleArgs),
    /// Build lesson05 and server (release), run the standard configurations against both
    /// alternately, and print medians and ratios as a markdown table.
    Compare(compare::CompareArgs),
}

#[derive(Args)]
struct Target {
    /// The server's WebSocket URL; its host must be a loopback address. Repeat it (or separate
    /// URLs with commas) to spread the clients over the nodes of a cluster, in turn.
    #[arg(long = "url", required = true, value_delimiter = ',')]
    urls: Vec<String>,
    /// How many connections to open.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// The server's process id, to read its CPU time and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// At most this many handshakes at a time.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The run ends after this many seconds whatever happens; what has not arrived is lost.
    #[arg(long, default_value_t = 120)]
    deadline: u64,
    /// Print the report as one line of JSON at the end, too.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    target: Target,
    /// How many of the connections send.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Messages per sender.
    #[arg(long, default_value_t = 1000)]
    messages: u32,
    /// At most this many messages per sender sent but not yet received by every receiver
    /// [default: 256 / senders, at least 1].
    #[arg(long, conflicts_with = "rate")]
    window: Option<u32>,
    /// Send at this many messages per second per sender instead of as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// Stop early once no message has been delivered to every receiver for this many seconds
    /// (at least three intervals with --rate); what has not arrived then is lost.
    #[arg(long, default_value_t = 10.0)]
    stall: f64,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    target: Target,
    /// Seconds to hold the connections open before measuring.
    #[arg(long, default_value_t = 1.0)]
    hold: f64,
    /// History frames each connection is to receive after its id (the finished server's
    /// `--history`, if the feed has that many messages); fail if any connection gets fewer.
    #[arg(long, default_value_t = 0)]
    history: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Every connection is a small task; two worker threads or more share them.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Fanout(args) => {
                let pace = match (args.rate, args.window) {
                    (Some(rate), _) => Pace::Rate(rate),
                    (None, Some(window)) => Pace::Window(window),
                    (None, None) => Pace::default_window(args.senders),
                };
                let config = Fanout {
                    urls: args.target.urls,
                    clients: args.target.clients,
                    senders: args.senders,
                    messages: args.messages,
                    pace,
                    server_pid: args.target.server_pid,
                    concurrency: args.target.concurrency,
                    deadline: Duration::from_secs(args.target.deadline),
                    stall: seconds(args.stall),
                };
                let report = fanout::run(&config).await?;
                println!("{}", report.describe());
                if args.target.json {
                    println!("{}", serde_json::to_string(&report)?);
                }
                if !report.is_clean() {
                    anyhow::bail!(
                        "some deliveries were lost, duplicated, out of order or unexpected"
                    );
                }
            }
            Command::Idle(args) => {
                let config = Idle {
                    urls: args.target.urls,
                    clients: args.target.clients,
                    server_pid: args.target.server_pid,
                    concurrency: args.target.concurrency,
                    history: args.history,
                    hold: seconds(args.hold),
                    deadline: Duration::from_secs(args.target.deadline),
                };
                let report = idle::run(&config).await?;
                println!("{}", report.describe());
                if args.target.json {
                    println!("{}", serde_json::to_string(&report)?);
                }
                if report.dropped > 0 {
                    anyhow::bail!("{} connections ended while they were held", report.dropped);
                }
                if report.short_of_history > 0 {
                    anyhow::bail!(
                        "{} connections received fewer than {} history frames",
                        report.short_of_history,
                        report.history_expected
                    );
                }
            }
            Command::Compare(args) => compare::run(args).await?,
        }
        Ok(())
    })
}

/// A duration from a number of seconds typed by a person: negative or NaN is zero, and too
/// large to represent is a day (longer than any deadline).
fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::from_secs(86_400))
}
