//! The PostgreSQL (and Redis) that `compare` runs against: `compare --store --postgres URL`
//! (F1p–F3p, one server on PostgreSQL against one on SQLite) and `compare --cluster` (two nodes
//! on one PostgreSQL database and one Redis, see cluster.rs).
//!
//! Both use the machine's own PostgreSQL, already running (loopback only, as everything
//! chatload touches: its processes are measured through /proc). Each PostgreSQL run gets a
//! database of its own, created before its server starts and dropped after it stops (also
//! when the run fails), so that runs never see each other's data, nor anything else on that
//! server. A few statements a run need no client library: they go through `psql`.
//!
//! The CPU time of the PostgreSQL backends serving the run's database (`pg_stat_activity`) is
//! read around the load: the store comparison adds it to the server's, the cluster comparison
//! reports it apart.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, ensure};
use clap::Args;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::connections;
use crate::process_stats::CpuTime;

/// The PostgreSQL the cluster uses when neither `--postgres` nor `$CHATTERBOX_TEST_POSTGRES`
/// says otherwise.
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The PostgreSQL and Redis a `--store --postgres` or `--cluster` comparison uses.
#[derive(Args, Clone, Debug)]
pub struct Services {
    /// A PostgreSQL server (loopback) and a user that may CREATE DATABASE; each PostgreSQL run
    /// creates a database of its own there, and drops it. With --store: also F1p–F3p, SQLite
    /// against PostgreSQL (only when given). With --cluster: the nodes' PostgreSQL (default:
    /// $CHATTERBOX_TEST_POSTGRES, else postgres://postgres@127.0.0.1:5432/postgres).
    #[arg(long, value_name = "URL", requires = "mode")]
    postgres: Option<String>,
    /// With --cluster: the Redis server (loopback) the nodes share; each run uses a key prefix
    /// of its own.
    #[arg(long, env = "CHATTERBOX_TEST_REDIS", default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// A setting of each PostgreSQL run's database (`ALTER DATABASE ... SET`), to see what it
    /// changes: `--postgres-setting synchronous_commit=off`, say. Repeatable.
    #[arg(
        long = "postgres-setting",
        value_name = "NAME=VALUE",
        value_parser = postgres_setting,
        requires = "mode"
    )]
    postgres_settings: Vec<(String, String)>,
}

impl Services {
    /// The options that change what is measured, as typed (without a password), for the
    /// command line on record.
    pub fn command_suffix(&self) -> String {
        let mut suffix = String::new();
        if let Some(url) = &self.postgres {
            suffix += &format!(" --postgres {}", without_password(url));
        }
        for (name, value) in &self.postgres_settings {
            suffix += &format!(" --postgres-setting {name}={value}");
        }
        suffix
    }

    /// `--postgres`, if it was given: the store comparison's PostgreSQL columns run only then.
    pub fn postgres_given(&self) -> Option<&str> {
        self.postgres.as_deref()
    }

    /// The PostgreSQL at `--postgres`, checked.
    pub async fn given_postgres(&self) -> Result<Option<Postgres>> {
        match &self.postgres {
            Some(url) => Ok(Some(Postgres::connect(url, &self.postgres_settings).await?)),
            None => Ok(None),
        }
    }

    /// The cluster's PostgreSQL, checked: `--postgres`, else `$CHATTERBOX_TEST_POSTGRES`, else
    /// the machine's default.
    pub async fn cluster_postgres(&self) -> Result<Postgres> {
        let url = match &self.postgres {
            Some(url) => url.clone(),
            None => std::env::var("CHATTERBOX_TEST_POSTGRES")
                .unwrap_or_else(|_| DEFAULT_POSTGRES.to_owned()),
        };
        Postgres::connect(&url, &self.postgres_settings).await
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

/// A PostgreSQL server on this machine that answers, checked once per `compare`.
pub struct Postgres {
    url: String,
    /// Each run's database gets these (`ALTER DATABASE ... SET name = 'value'`).
    settings: Vec<(String, String)>,
}

impl Postgres {
    async fn connect(url: &str, settings: &[(String, String)]) -> Result<Postgres> {
        require_loopback_service(url, "postgres").await?;
        psql(url, "SELECT 1").context("PostgreSQL does not answer")?;
        Ok(Postgres { url: url.to_owned(), settings: settings.to_vec() })
    }

    /// Where it is and what each run's database is given, for the record.
    pub fn describe(&self) -> String {
        let settings: Vec<String> =
            self.settings.iter().map(|(name, value)| format!("{name} = {value}")).collect();
        let settings = match settings.is_empty() {
            true => String::new(),
            false => format!(" (each run's database with {})", settings.join(", ")),
        };
        format!("PostgreSQL at {}{settings}", without_password(&self.url))
    }

    /// A database of the run's own, with the settings.
    pub fn fresh_database(&self) -> Result<FreshDatabase> {
        let name = unique_name();
        let url = with_database(&self.url, &name)?;
        psql(&self.url, &format!("CREATE DATABASE {name}"))?;
        let database = FreshDatabase { admin: self.url.clone(), name, url, dropped: false };
        // The names and values are checked by `postgres_setting`: nothing to quote.
        for (setting, value) in &self.settings {
            let statement = format!("ALTER DATABASE {} SET {setting} = '{value}'", database.name);
            psql(&self.url, &statement)?;
        }
        Ok(database)
    }
}

/// A database of one run's own, dropped (connections and all) when the run ends.
pub struct FreshDatabase {
    /// The `--postgres` URL, where it is created and dropped from.
    admin: String,
    /// Also a name no other run has, for whatever else the run must keep apart.
    pub name: String,
    /// The URL the servers are given (`--database`).
    pub url: String,
    dropped: bool,
}

impl FreshDatabase {
    /// Runs `work` and returns its result with the CPU seconds that the PostgreSQL backends
    /// serving this database (the servers' pools and store writers) used meanwhile. A server
    /// may connect after the work has started (a store writer's first write): a backend born
    /// since then counts whole. One that has ended since is missed.
    pub async fn backends_cpu_during<T>(
        &self,
        work: impl Future<Output = Result<T>>,
    ) -> Result<(T, f64)> {
        let before = self.backends_cpu()?;
        let result = work.await?;
        let unborn = CpuTime { stat_seconds: 0.0, schedstat_seconds: Some(0.0) };
        let spent = self
            .backends_cpu()?
            .iter()
            .map(|(pid, now)| now.since(before.get(pid).unwrap_or(&unborn)))
            .sum();
        Ok((result, spent))
    }

    /// The CPU time so far of each PostgreSQL backend serving this database. A backend whose
    /// /proc entries cannot be read (gone already, or a hardened /proc) is left out rather than
    /// failing the run.
    fn backends_cpu(&self) -> Result<HashMap<u32, CpuTime>> {
        let query = format!("SELECT pid FROM pg_stat_activity WHERE datname = '{}'", self.name);
        let output = psql(&self.admin, &query)?;
        Ok(output
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .filter_map(|pid| CpuTime::read(pid).ok().map(|cpu| (pid, cpu)))
            .collect())
    }

    /// Drops it now, reporting a failure (dropping it on `Drop` ignores one).
    pub fn drop_now(mut self) -> Result<()> {
        self.dropped = true;
        self.drop_database().with_context(|| format!("dropping the run's database {}", self.name))
    }

    fn drop_database(&self) -> Result<()> {
        psql(&self.admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).map(drop)
    }
}

impl Drop for FreshDatabase {
    /// A run that failed half-way (or panicked) drops its database too.
    fn drop(&mut self) {
        if !self.dropped {
            let _ = self.drop_database();
        }
    }
}

/// A database name no other run (of this process, or of another, or an earlier one) has.
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
pub fn without_password(url: &str) -> String {
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
pub async fn require_loopback_service(url: &str, scheme: &str) -> Result<()> {
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

/// Runs one SQL statement with `psql` and returns its unaligned, tuples-only output.
fn psql(url: &str, statement: &str) -> Result<String> {
    let mut psql = Command::new("psql");
    psql.args(["--no-psqlrc", "--quiet", "--tuples-only", "--no-align", "-v", "ON_ERROR_STOP=1"])
        .args(["--dbname", url, "--command", statement])
        // psql never asks for a password: with none in the URL, it fails instead of waiting.
        .arg("--no-password")
        .env("PGCONNECT_TIMEOUT", "5");
    stdout_of(psql, &format!("psql {statement:?}"))
}

/// Runs a client program to the end; its stdout, or an error with its stderr.
pub fn stdout_of(mut command: Command, what: &str) -> Result<String> {
    let output = command.output().with_context(|| format!("could not run {what}"))?;
    ensure!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
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
