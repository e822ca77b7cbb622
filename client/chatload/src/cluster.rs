//! `chatload compare --cluster` (issue 10): one `server` node on its SQLite store against two
//! nodes that act as one chat through one PostgreSQL database and one Redis, with the clients
//! split evenly over the two (connection `i` to node `i mod 2`, senders included).
//!
//! PostgreSQL and Redis are the machine's own, already running (see `--postgres` and
//! `--redis`; loopback only, as everything chatload touches). Each two-node run gets a fresh
//! database, created before its nodes start and dropped after they stop (services.rs, as for
//! `compare --store --postgres`), and a Redis prefix of its own, whose keys are deleted
//! afterwards: runs never see each other's data, nor anything else on those servers.
//!
//! What it costs is measured from outside, as for one server: CPU time and memory summed over
//! both nodes and redis-server (whose pid Redis itself reports, `INFO server`). PostgreSQL's
//! backends for the run's database (`pg_stat_activity`) are measured too, over the whole run
//! (connections and messages: a backend may be born during it), and reported apart: the
//! issue's target counts the nodes and Redis.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use client::RunningServer;

use crate::compare::{LoadTarget, Outcome, Workload};
use crate::services::{Postgres, Services, require_loopback_service, stdout_of, without_password};

/// How long a node may take to say that it hears the others (`"broker":"ok"` in `/healthz`).
const BROKER_READY_LIMIT: Duration = Duration::from_secs(10);

/// The services, checked once per `compare`.
pub struct Cluster {
    postgres: Postgres,
    redis: String,
    /// redis-server's process id, measured with the nodes.
    redis_pid: u32,
}

impl Cluster {
    /// Checks that both services are on this machine and answer, and finds redis-server's pid.
    pub async fn connect(services: &Services) -> Result<Cluster> {
        let postgres = services.cluster_postgres().await?;
        require_loopback_service(&services.redis, "redis").await?;
        let info = redis_cli(&services.redis, &["INFO", "server"])
            .context("Redis does not answer (is redis-cli installed?)")?;
        let redis_pid = info
            .lines()
            .find_map(|line| line.trim().strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
            .context("no process_id in Redis's INFO server")?;
        crate::process_stats::check_readable(&[redis_pid])
            .context("redis-server runs, but its /proc entries cannot be read")?;
        Ok(Cluster { postgres, redis: services.redis.clone(), redis_pid })
    }

    /// Says which processes the two-node column measures, for the record.
    pub fn describe(&self) -> String {
        format!(
            "Cluster: {}, Redis at {} (redis-server pid {}); in the two-node column, server CPU \
             and memory are summed over both nodes and redis-server; PostgreSQL's backends for \
             the run's database are measured apart, over the whole run (\"PostgreSQL backends' \
             CPU\" rows, not included in the server's).\n",
            self.postgres.describe(),
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
        let database = self.postgres.fresh_database()?;
        // The database's name is unique to the run: the Redis prefix too.
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
            let load = crate::compare::load(workload, target, 0, deadline);
            let (mut outcome, backends_seconds) = database.backends_cpu_during(load).await?;
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

/// Runs one command with `redis-cli` and returns its output.
fn redis_cli(url: &str, command: &[&str]) -> Result<String> {
    let mut redis_cli = Command::new("redis-cli");
    redis_cli.args(["-u", url]).args(command);
    stdout_of(redis_cli, &format!("redis-cli {command:?}"))
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
    fn nodes_are_named_in_turn() {
        let names: Vec<String> = node_names(3).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
