//! PostgreSQL and Redis for tests, through `CHATTERBOX_TEST_POSTGRES` and
//! `CHATTERBOX_TEST_REDIS`: each test gets a database (and a Redis key prefix) of its own, so
//! that tests running in parallel never see each other.
//!
//! Without the variable a test says how to run it, in one line, and passes as skipped; with
//! `CI` set it fails instead, so that CI cannot skip them by accident. The server's in-process
//! tests use this file too (by path), so it needs nothing but std, `postgres` and `anyhow`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// The PostgreSQL server tests may use.
pub const POSTGRES_VARIABLE: &str = "CHATTERBOX_TEST_POSTGRES";

/// The Redis server tests may use.
pub const REDIS_VARIABLE: &str = "CHATTERBOX_TEST_REDIS";

/// The URL in `variable`; `None` (having said so in one line) where it is unset outside CI.
fn service_url(variable: &str, example: &str) -> Result<Option<String>> {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => Ok(Some(url)),
        _ if std::env::var_os("CI").is_some() => {
            bail!("{variable} is not set, and CI must run this test (e.g. {variable}={example})")
        }
        _ => {
            // Straight to stderr, not through the test harness's capture: the line is the point.
            let _ =
                writeln!(std::io::stderr(), "skipped: set {variable}={example} to run this test");
            Ok(None)
        }
    }
}

/// A name no other test (in this run or a crashed earlier one) has.
fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{n}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// Runs `work` on a connection to `url`, on a thread of its own: the synchronous client must
/// not run on a tokio worker thread, and tests are async.
pub fn with_postgres<T: Send + 'static>(
    url: &str,
    work: impl FnOnce(&mut postgres::Client) -> Result<T> + Send + 'static,
) -> Result<T> {
    let mut config: postgres::Config = url.parse().context("a PostgreSQL URL")?;
    config.connect_timeout(Duration::from_secs(5));
    std::thread::spawn(move || {
        let mut client = config.connect(postgres::NoTls).context("connecting to PostgreSQL")?;
        work(&mut client)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the PostgreSQL work panicked"))?
}

/// A database of the test's own on the server `CHATTERBOX_TEST_POSTGRES` names, dropped when
/// this is dropped.
pub struct TestDatabase {
    /// The URL the test was given: where the database is created and dropped from.
    admin: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates it; `None` where the test is to be skipped.
    pub fn create() -> Result<Option<TestDatabase>> {
        let example = "postgres://postgres@127.0.0.1:5432/postgres";
        let Some(admin) = service_url(POSTGRES_VARIABLE, example)? else { return Ok(None) };
        let name = unique_name("chatterbox_test");
        let url = with_database(&admin, &name)?;
        let create = format!("CREATE DATABASE {name}");
        with_postgres(&admin, move |client| Ok(client.batch_execute(&create)?))?;
        Ok(Some(TestDatabase { admin, name, url }))
    }

    /// `postgres://...` for `--database`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `work` on a connection to this database (not through the server).
    pub fn with_client<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut postgres::Client) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        with_postgres(&self.url, work)
    }

    /// Runs `sql` on the server as the test's user, from its own database (`ALTER DATABASE`
    /// and the like, that cannot run inside the database they change).
    pub fn admin(&self, sql: &str) -> Result<()> {
        let sql = sql.to_owned();
        with_postgres(&self.admin, move |client| Ok(client.batch_execute(&sql)?))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // FORCE ends the connections of a server the test left running.
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(error) =
            with_postgres(&self.admin, move |client| Ok(client.batch_execute(&drop)?))
        {
            eprintln!("could not drop the test database {}: {error:#}", self.name);
        }
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> Result<String> {
    let (scheme, rest) = url.split_once("://").context("a URL: postgres://...")?;
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, format!("?{query}")),
        None => (rest, String::new()),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    Ok(format!("{scheme}://{authority}/{name}{query}"))
}

/// The Redis server and a key prefix of the test's own; `None` where the test is to be skipped.
pub fn test_redis() -> Result<Option<(String, String)>> {
    let Some(url) = service_url(REDIS_VARIABLE, "redis://127.0.0.1:6379")? else {
        return Ok(None);
    };
    Ok(Some((url, format!("{}:", unique_name("chatterbox-test")))))
}
