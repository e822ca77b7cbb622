//! `chatload compare --cluster` (issue 10): one `server` node on its SQLite store against two
//! nodes that act as one chat through one PostgreSQL database and one Redis, with the clients
//! split evenly over the two (connection `i` to node `i mod 2`, senders included).
//!
//! PostgreSQL and Redis are the machine's own, already running (see `--postgres` and
//! `--redis`; loopback only, as everything chatload touches). Each two-node run gets a fresh
//! database, created before its nodes start and dropped after they stop, and a Redis prefix of
//! its own, whose keys are deleted afterwards: runs never see each other's data, nor anything
//! else on those servers.
//!
//! What it costs is measured from outside, as for one server: CPU time and memory summed over
//! both nodes and redis-server (whose pid Redis itself reports, `INFO server`). PostgreSQL's
//! backends for the run's database (`pg_stat_activity`) are measured too, over the whole run
//! (connections and messages: a backend may be born during it), and reported apart: the
//! issue's target counts the nodes and Redis.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use client::RunningServer;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::compare::{LoadTarget, Outcome, Workload};
use crate::connections;
use crate::process_stats::CpuTime;

/// How long a node may take to say that it hears the others (`"broker":"ok"` in `/healthz`).
const BROKER_READY_LIMIT: Duration = Duration::from_secs(10);

/// The PostgreSQL and Redis a cluster run uses.
#[derive(Args, Clone, Debug)]
pub struct Services {
    /// With --cluster: a PostgreSQL server (loopback) and a user that may CREATE DATABASE;
    /// each two-node run creates a database of its own there, and drops it.
    #[arg(
        long,
        env = "CHATTERBOX_TEST_POSTGRES",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres: String,
    /// With --cluster: the Redis server (loopback) the nodes share; each run uses a key prefix
    /// of its own.
    #[arg(long, env = "CHATTERBOX_TEST_REDIS", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// With --cluster: a setting of each run's database (`ALTER DATABASE ... SET`), to see
    /// what it changes: `--postgres-setting synchronous_commit=off`, say. Repeatable.
    #[arg(long = "postgres-setting", value_name = "NAME=VALUE", value_parser = postgres_setting)]
    postgres_settings: Vec<(String, String)>,
}

impl Services {
    /// The options that change what is measured, as typed, for the command line on record.
    pub fn command_suffix(&self) -> String {
        self.postgres_settings
            .iter()
            .map(|(name, value)| format!(" --postgres-setting {name}={value}"))
            .collect()
    }
}

/// `NAME=VALUE` of a PostgreSQL setting: a name of lowercase letters, digits, `_` and `.`, a
/// value of letters, digits, `_`, `.` and `-`, so that both go into SQL as they are.
fn postgres_setting(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once('=').ok_or("expected NAME=VALUE")?;
    let name_ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.".contains(c);
    let value_ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
    if name.is_empty() || !name.chars().all(name_ok) {
        return Err(format!("{name:?} is not a PostgreSQL setting's name"));
    }
    if value.is_empty() || !value.chars().all(value_ok) {
        return Err(format!("{value:?}: only letters, digits, '_', '.' and '-'"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// The services, checked once per `compare`.
pub struct Cluster {
    postgres: String,
    /// Each run's database gets these (`ALTER DATABASE ... SET name = 'value'`).
    postgres_settings: Vec<(String, String)>,
    redis: String,
    /// redis-server's process id, measured with the nodes.
    redis_pid: u32,
}

impl Cluster {
    /// Checks that both services are on this machine and answer, and finds redis-server's pid.
    pub async fn connect(services: &Services) -> Result<Cluster> {
        require_loopback_service(&services.postgres, "postgres").await?;
        require_loopback_service(&services.redis, "redis").await?;
        psql(&services.postgres, "SELECT 1").context("PostgreSQL does not answer")?;
        let info = redis_cli(&services.redis, &["INFO", "server"])
            .context("Redis does not answer (is redis-cli installed?)")?;
        let redis_pid = info
            .lines()
            .find_map(|line| line.trim().strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
            .context("no process_id in Redis's INFO server")?;
        crate::process_stats::check_readable(&[redis_pid])
            .context("redis-server runs, but its /proc entries cannot be read")?;
        Ok(Cluster {
            postgres: services.postgres.clone(),
            postgres_settings: services.postgres_settings.clone(),
            redis: services.redis.clone(),
            redis_pid,
        })
    }

    /// Says which processes the two-node column measures, for the record.
    pub fn describe(&self) -> String {
        let settings: Vec<String> = self
            .postgres_settings
            .iter()
            .map(|(name, value)| format!("{name} = {value}"))
            .collect();
        let settings = match settings.is_empty() {
            true => String::new(),
            false => format!(" (each run's database with {})", settings.join(", ")),
        };
        format!(
            "Cluster: PostgreSQL at {}{settings}, Redis at {} (redis-server pid {}); in the two-node \
             column, server CPU and memory are summed over both nodes and redis-server; \
             PostgreSQL's backends for the run's database are measured apart, over the whole run \
             (\"PostgreSQL backends' CPU\" rows, not included in the server's).\n",
            without_password(&self.postgres),
            without_password(&self.redis),
            self.redis_pid
        )
    }

    /// Starts `nodes` nodes of `binary` on a fresh database, runs `workload` with the clients
    /// split over them, stops them and drops the database.
    pub async fn run_once(
        &self,
        binary: &Path,
        arguments: &[String],
        nodes: usize,
        workload: Workload,
        deadline: Duration,
    ) -> Result<Outcome> {
        let database = FreshDatabase::create(&self.postgres, &self.postgres_settings)?;
        let prefix = database.name.clone();
        let result = async {
            let mut servers = Vec::with_capacity(nodes);
            for node in node_names(nodes) {
                let mut node_arguments = arguments.to_vec();
                node_arguments.extend(
                    [
                        "--database",
                        &database.url,
                        "--redis",
                        &self.redis,
                        "--redis-prefix",
                        &prefix,
                        "--node",
                        &node,
                    ]
                    .map(str::to_owned),
                );
                let node_arguments: Vec<&str> = node_arguments.iter().map(String::as_str).collect();
                servers.push(RunningServer::start(binary, &node_arguments).await?);
            }
            for server in &servers {
                wait_for_broker(server).await?;
            }
            let mut server_pids = servers
                .iter()
                .map(|server| server.pid().context("a node has already exited"))
                .collect::<Result<Vec<u32>>>()?;
            server_pids.push(self.redis_pid);
            let target = LoadTarget {
                urls: servers.iter().map(RunningServer::ws_url).collect(),
                server_pids,
            };
            let backends_before = database.backends_cpu()?;
            let mut outcome = crate::compare::load(workload, target, 0, deadline).await?;
            let backends_seconds = database.backends_cpu_since(&backends_before)?;
            if let Outcome::Fanout(report) = &mut outcome {
                report.database_cpu_us_per_delivery =
                    Some(backends_seconds * 1e6 / report.deliveries.max(1) as f64);
            }
            for server in servers {
                server.stop().await?;
            }
            anyhow::Ok(outcome)
        }
        .await;
        // Whatever happened, nothing of the run stays behind.
        let cleaned = database.drop_now().and(delete_keys(&self.redis, &prefix));
        let outcome = result?;
        cleaned?;
        Ok(outcome)
    }
}

/// `a`, `b`, `c`, ...: the nodes' `--node` names.
fn node_names(nodes: usize) -> impl Iterator<Item = String> {
    (0..nodes).map(|index| {
        let letter = (b'a' + (index % 26) as u8) as char;
        if index < 26 { letter.to_string() } else { format!("{letter}{}", index / 26) }
    })
}

/// Waits until the node's `/healthz` says it hears the others, so that no message of the run
/// is sent before every node is subscribed.
async fn wait_for_broker(server: &RunningServer) -> Result<()> {
    let limit = Instant::now() + BROKER_READY_LIMIT;
    loop {
        let answer = client::http::get(server.port(), "/healthz", &[]).await;
        match answer {
            Ok(response)
                if response.status == 200 && response.body.contains(r#""broker":"ok""#) =>
            {
                return Ok(());
            }
            _ if Instant::now() >= limit => bail!(
                "node on port {} did not report \"broker\":\"ok\" in /healthz within \
                 {BROKER_READY_LIMIT:?}: {answer:?}",
                server.port()
            ),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A database of one run's own, dropped (connections and all) when the run ends.
struct FreshDatabase {
    /// The `--postgres` URL, where it is created and dropped from.
    admin: String,
    name: String,
    /// The URL the nodes are given.
    url: String,
    dropped: bool,
}

impl FreshDatabase {
    fn create(admin: &str, settings: &[(String, String)]) -> Result<FreshDatabase> {
        let name = unique_name();
        let url = with_database(admin, &name)?;
        psql(admin, &format!("CREATE DATABASE {name}"))?;
        let database = FreshDatabase { admin: admin.to_owned(), name, url, dropped: false };
        // The names and values are checked by `postgres_setting`: nothing to quote.
        for (setting, value) in settings {
            psql(admin, &format!("ALTER DATABASE {} SET {setting} = '{value}'", database.name))?;
        }
        Ok(database)
    }

    /// The CPU time so far of each PostgreSQL backend serving this database (the nodes' pools
    /// and store writers). A backend whose /proc entries cannot be read (gone already, or a
    /// hardened /proc) is left out rather than failing the run.
    fn backends_cpu(&self) -> Result<HashMap<u32, CpuTime>> {
        let query = format!("SELECT pid FROM pg_stat_activity WHERE datname = '{}'", self.name);
        let output = psql(&self.admin, &query)?;
        Ok(output
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .filter_map(|pid| CpuTime::read(pid).ok().map(|cpu| (pid, cpu)))
            .collect())
    }

    /// The CPU seconds the backends used since `before`. A node may connect after the load
    /// has started (a store writer's first write): a backend born since then counts whole.
    /// One that has ended since is missed.
    fn backends_cpu_since(&self, before: &HashMap<u32, CpuTime>) -> Result<f64> {
        let unborn = CpuTime { stat_seconds: 0.0, schedstat_seconds: Some(0.0) };
        Ok(self
            .backends_cpu()?
            .iter()
            .map(|(pid, now)| now.since(before.get(pid).unwrap_or(&unborn)))
            .sum())
    }

    fn drop_now(mut self) -> Result<()> {
        self.dropped = true;
        psql(&self.admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .map(drop)
            .with_context(|| format!("dropping the run's database {}", self.name))
    }
}

impl Drop for FreshDatabase {
    /// A run that failed half-way (or panicked) drops its database too.
    fn drop(&mut self) {
        if !self.dropped {
            let _ =
                psql(&self.admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

/// A database name no other run (of this process, or of another, or an earlier one) has; also
/// the run's Redis prefix.
fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let run = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("chatload_{}_{run}_{nanos}", std::process::id())
}

/// `url` with its database (the path) replaced by `name`, keeping any `?options`.
fn with_database(url: &str, name: &str) -> Result<String> {
    let (base, options) = match url.split_once('?') {
        Some((base, options)) => (base, Some(options)),
        None => (url, None),
    };
    let rest = base
        .strip_prefix("postgres://")
        .or_else(|| base.strip_prefix("postgresql://"))
        .with_context(|| format!("{url:?} is not a postgres:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let mut with = format!("postgres://{authority}/{name}");
    if let Some(options) = options {
        with += &format!("?{options}");
    }
    Ok(with)
}

/// The URL as it may be printed: without a password.
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) => {
            let credentials = &rest[..at - scheme.len() - 3];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{}", &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Refuses a service that is not on this machine: chatload measures its processes through
/// /proc, and loads nothing but this machine.
async fn require_loopback_service(url: &str, scheme: &str) -> Result<()> {
    let uri: Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    ensure!(
        uri.scheme_str().is_some_and(|given| given.starts_with(scheme)),
        "{url:?}: expected a {scheme}:// URL"
    );
    let host = uri.host().with_context(|| format!("{url:?} has no host"))?;
    // The same rule as for the chat's own URLs, written as one.
    connections::require_loopback(&format!("ws://{host}:{}/", uri.port_u16().unwrap_or(1)))
        .await
        .with_context(|| format!("{} URL", without_password(url)))
}

/// Runs one SQL statement with `psql` (no client library needed for a few statements a run),
/// and returns its unaligned, tuples-only output.
fn psql(url: &str, statement: &str) -> Result<String> {
    let mut psql = Command::new("psql");
    psql.args(["--no-psqlrc", "--quiet", "--tuples-only", "--no-align", "-v", "ON_ERROR_STOP=1"])
        .args(["--dbname", url, "--command", statement])
        // psql never asks for a password: with none in the URL, it fails instead of waiting.
        .arg("--no-password")
        .env("PGCONNECT_TIMEOUT", "5");
    stdout_of(psql, &format!("psql {statement:?}"))
}

/// Runs one command with `redis-cli` and returns its output.
fn redis_cli(url: &str, command: &[&str]) -> Result<String> {
    let mut redis_cli = Command::new("redis-cli");
    redis_cli.args(["-u", url]).args(command);
    stdout_of(redis_cli, &format!("redis-cli {command:?}"))
}

/// Runs a client program to the end; its stdout, or an error with its stderr.
fn stdout_of(mut command: Command, what: &str) -> Result<String> {
    let output = command.output().with_context(|| format!("could not run {what}"))?;
    ensure!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Deletes the keys a run's nodes left under its prefix (presence and the like; pub/sub
/// itself keeps nothing). SCAN visits every key once, so this ends.
fn delete_keys(redis: &str, prefix: &str) -> Result<()> {
    let pattern = format!("{prefix}*");
    let keys = redis_cli(redis, &["--scan", "--pattern", &pattern])?;
    let keys: Vec<&str> = keys.lines().map(str::trim).filter(|key| !key.is_empty()).collect();
    for batch in keys.chunks(100) {
        let mut command = vec!["DEL"];
        command.extend_from_slice(batch);
        redis_cli(redis, &command)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_names_the_runs_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "run1").unwrap(),
            "postgres://postgres@127.0.0.1:5432/run1"
        );
        assert_eq!(
            with_database("postgresql://u:p@localhost/db?sslmode=disable", "run1").unwrap(),
            "postgres://u:p@localhost/run1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://127.0.0.1", "x").unwrap(), "postgres://127.0.0.1/x");
        assert!(with_database("redis://127.0.0.1", "x").is_err());
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            without_password("postgres://user:secret@127.0.0.1/db"),
            "postgres://user@127.0.0.1/db"
        );
        assert_eq!(without_password("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn settings_go_into_sql_only_when_harmless() {
        assert_eq!(
            postgres_setting("synchronous_commit=off"),
            Ok(("synchronous_commit".into(), "off".into()))
        );
        assert!(postgres_setting("commit_delay=100").is_ok());
        for bad in ["synchronous_commit", "=off", "a=", "x=1'; DROP TABLE t; --", "A=b", "a b=c"] {
            assert!(postgres_setting(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nodes_are_named_in_turn() {
        let names: Vec<String> = node_names(3).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn run_names_are_unique_and_safe_as_identifiers() {
        let (first, second) = (unique_name(), unique_name());
        assert_ne!(first, second);
        assert!(first.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }

    #[tokio::test]
    async fn services_elsewhere_are_refused() {
        assert!(require_loopback_service("postgres://u@192.0.2.1/db", "postgres").await.is_err());
        assert!(require_loopback_service("redis://example.com:6379", "redis").await.is_err());
        assert!(require_loopback_service("redis://127.0.0.1:6379", "postgres").await.is_err());
        assert!(require_loopback_service("redis://127.0.0.1:6379", "redis").await.is_ok());
        assert!(
            require_loopback_service("postgres://postgres@localhost/x", "postgres").await.is_ok()
        );
    }
}
