//! The PostgreSQL store: `--database postgres://USER@HOST:PORT/DBNAME` (or `postgresql://`).
//!
//! The same tables, the same meaning and the same promises as the [`sqlite`](crate::sqlite)
//! store, so that several servers can later share one database. Writes go through the same
//! [`writer`](crate::writer) thread (batches, one transaction each, seq reservations, retried
//! while the database cannot be reached) on a connection of its own; reads (accounts,
//! sessions, pages of history) and the account writes that must answer at once take a
//! connection from a pool of `--database-pool`.
//!
//! The schema's version is kept in the table `chatterbox_schema`; at start the server brings
//! it up to date, one migration at a time, all in one transaction and under an advisory lock
//! (two servers starting at once do not both migrate). A database with a newer version, or
//! with tables but no `chatterbox_schema`, is refused and left untouched.
//!
//! The client is rust-postgres's synchronous one, which runs its own small runtime inside each
//! call: it must not be called on a tokio worker thread. The store's blocking methods are
//! called from blocking tasks (and the writer is a thread), and the few called once at start,
//! from the server's async `main`, go through [`off_the_runtime`].

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row, Statement};
use r2d2_postgres::PostgresConnectionManager;
use r2d2_postgres::r2d2;
use subtle::ConstantTimeEq;

use crate::message::{Author, Body, Channel, ChatMessage, now_ms};
use crate::store::{
    AccountStore, Change, CreateAccountError, Loaded, Store, StoreHealth, StoredAccount,
    StoredRoom, StoredSchedule,
};
use crate::writer::{Batches, WriteQueue, WriterOptions};

/// The migrations, in order: the schema's version is how many have run. Append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite store's version 4 has, in PostgreSQL's types. A message or a
    // schedule of an account keeps its display name beside the author's id (guests' have
    // none); sessions are kept only as their tokens' SHA-256; named rooms' messages are under
    // the channel `room:NAME`; avatars are the 256×256 PNG the server re-encoded.
    "CREATE TABLE messages (
         channel TEXT NOT NULL,
         seq BIGINT NOT NULL,
         author TEXT NOT NULL,
         name TEXT,
         type TEXT NOT NULL,
         body TEXT NOT NULL,
         at_ms BIGINT NOT NULL,
         late BOOLEAN NOT NULL DEFAULT false,
         PRIMARY KEY (channel, seq)
     );
     CREATE TABLE channels (
         name TEXT PRIMARY KEY,
         reserved BIGINT NOT NULL
     );
     CREATE TABLE schedules (
         id BIGINT PRIMARY KEY,
         due_ms BIGINT NOT NULL,
         channel TEXT NOT NULL,
         author TEXT NOT NULL,
         name TEXT,
         type TEXT NOT NULL,
         body TEXT NOT NULL,
         firing BOOLEAN NOT NULL DEFAULT false
     );
     CREATE TABLE accounts (
         id TEXT PRIMARY KEY,
         username TEXT NOT NULL,
         name TEXT NOT NULL,
         password TEXT NOT NULL,
         created_ms BIGINT NOT NULL
     );
     CREATE UNIQUE INDEX accounts_by_username ON accounts (lower(username));
     CREATE TABLE sessions (
         token_hash BYTEA PRIMARY KEY,
         account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
         created_ms BIGINT NOT NULL,
         used_ms BIGINT NOT NULL
     );
     CREATE INDEX sessions_by_account ON sessions (account);
     CREATE TABLE rooms (
         name TEXT PRIMARY KEY,
         topic TEXT NOT NULL,
         owner TEXT NOT NULL,
         created_ms BIGINT NOT NULL
     );
     CREATE TABLE avatars (
         account TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
         png BYTEA NOT NULL,
         updated_ms BIGINT NOT NULL
     );",
];

/// The schema this binary writes. A database with a higher version is refused.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Taken (for the migrating transaction) by every chatterbox server migrating a database:
/// "CBOX", as SQLite's application id.
const MIGRATION_LOCK: i64 = 0x4342_4F58;

/// How long connecting may take: an unreachable host at start is one line within seconds,
/// not a hang; at run time, how long a read waits for a connection before it fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the store could not be opened: the one line the server prints before it exits. It
/// names the database by [`place`], never with its password.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("--database: not a PostgreSQL URL this server can read: {0}")]
    BadUrl(String),
    #[error("{place}: cannot connect to PostgreSQL: {reason}")]
    Unreachable { place: String, reason: String },
    #[error(
        "{place}: not a chatterbox database (it has tables, and no chatterbox_schema); \
         it was left untouched"
    )]
    Foreign { place: String },
    #[error(
        "{place}: its schema is version {found}, newer than this server knows ({SCHEMA_VERSION}); \
         use a newer server, or another --database. It was left untouched"
    )]
    Newer { place: String, found: i64 },
    #[error("{place}: cannot set up the schema: {reason}")]
    Failed { place: String, reason: String },
}

/// Whether `--database` names a PostgreSQL database rather than a file.
pub fn is_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

/// How the store is set up, from the command line.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME[?OPTIONS]`.
    pub url: String,
    /// Connections for reads, besides the writer's.
    pub pool: u32,
    pub writer: WriterOptions,
}

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

pub struct PostgresStore {
    writes: WriteQueue,
    /// Taken out when the store closes: a connection must not be dropped on a tokio worker
    /// thread either (its drop runs the client's runtime), and the server drops the store there.
    reads: Mutex<Option<Pool>>,
}

/// The database as logs and errors name it: `postgres://USER@HOST:PORT/DBNAME`, without the
/// password.
pub(crate) fn place(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().map(|user| format!("{user}@")).unwrap_or_default();
    let dbname = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{host}:{port}/{dbname}")
}

/// `error` with its causes ("error connecting to server: Connection refused"): rust-postgres
/// keeps the reason in the source, and its own text is only the kind of error.
fn reason(error: &postgres::Error) -> String {
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    reason
}

/// How every connection of the server to `url` is made (the store's, the sequencer's).
pub(crate) fn connection_config(url: &str) -> Result<postgres::Config, OpenError> {
    let mut config: postgres::Config =
        url.parse().map_err(|error| OpenError::BadUrl(format!("{error}")))?;
    config.connect_timeout(CONNECT_TIMEOUT).application_name("chatterbox");
    // A peer that vanishes (a host down, a cable out) is noticed by TCP, not waited on.
    config.keepalives(true).keepalives_idle(Duration::from_secs(30));
    Ok(config)
}

/// Runs `work` on a thread of its own: the synchronous client cannot run on a tokio worker
/// thread, and the calls made once at start come from the async `main`.
fn off_the_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(work).join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

impl PostgresStore {
    /// Connects, and brings the schema up to date. A database that is not a chatterbox one,
    /// or has a newer schema, is refused before anything is written.
    pub fn open(options: PostgresOptions) -> Result<PostgresStore, OpenError> {
        let config = connection_config(&options.url)?;
        let place = place(&config);
        off_the_runtime(|| {
            let mut client = config.connect(NoTls).map_err(|error| OpenError::Unreachable {
                place: place.clone(),
                reason: reason(&error),
            })?;
            migrate(&mut client, &place)?;
            let manager = PostgresConnectionManager::new(config.clone(), NoTls);
            // Connections are made as reads need them, up to the pool's size; a broken one is
            // found when it is checked out, and replaced.
            let reads = r2d2::Pool::builder()
                .max_size(options.pool.max(1))
                .min_idle(Some(1))
                .connection_timeout(CONNECT_TIMEOUT)
                .build_unchecked(manager);
            // The writer goes on with the connection that migrated: connected from the start.
            let insert = prepare_writer(&mut client).map_err(|error| OpenError::Failed {
                place: place.clone(),
                reason: reason(&error),
            })?;
            let connected = Some((client, insert));
            let batches = PostgresBatches { config, place: place.clone(), connected };
            let writes = WriteQueue::start(batches, options.writer).map_err(|error| {
                OpenError::Failed { place: place.clone(), reason: error.to_string() }
            })?;
            Ok(PostgresStore { writes, reads: Mutex::new(Some(reads)) })
        })
    }

    /// Up to `limit` messages of `channel` with a seq above `after` and below `before`, oldest
    /// first: what a node of a cluster missed (a gap, or everything while Redis was away).
    /// Blocks: call it from a blocking task.
    pub fn messages_between(
        &self,
        channel: Channel,
        after: u64,
        before: u64,
        limit: usize,
    ) -> anyhow::Result<Vec<ChatMessage>> {
        let Some(name) = channel.store_key() else { return Ok(Vec::new()) };
        let [after, before] = [after, before].map(|seq| seq.min(i64::MAX as u64) as i64);
        let rows = self.read()?.query(
            "SELECT * FROM messages WHERE channel = $1 AND seq > $2 AND seq < $3
             ORDER BY seq LIMIT $4",
            &[&name, &after, &before, &(limit as i64)],
        )?;
        messages_from_rows(channel, &rows).context("reading missed messages")
    }

    /// Every channel's reservation: in a cluster, the highest seq given in it (every seq up to
    /// it is committed, or was deleted). Blocks: call it from a blocking task.
    pub fn reservations(&self) -> anyhow::Result<Vec<(Channel, u64)>> {
        let rows = self.read()?.query("SELECT name, reserved FROM channels", &[])?;
        let mut reservations = Vec::with_capacity(rows.len());
        for row in rows {
            let (name, reserved): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
            if let Some(channel) = Channel::from_store_key(&name) {
                reservations.push((channel, reserved.max(0) as u64));
            }
        }
        Ok(reservations)
    }

    fn read(&self) -> anyhow::Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>> {
        let pool = self.reads.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        pool.context("the store is closed")?.get().context("no connection to PostgreSQL")
    }

    /// Lets go of the pool's connections, on a thread where that is allowed.
    fn close_reads(&self) {
        let pool = self.reads.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        off_the_runtime(move || drop(pool));
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.close_reads();
    }
}

/// Brings the schema up to [`SCHEMA_VERSION`] in one transaction, or refuses the database.
fn migrate(client: &mut Client, place: &str) -> Result<(), OpenError> {
    let failed =
        |error: postgres::Error| OpenError::Failed { place: place.into(), reason: reason(&error) };
    let mut transaction = client.transaction().map_err(failed)?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).map_err(failed)?;
    let versioned: bool = transaction
        .query_one("SELECT to_regclass('chatterbox_schema') IS NOT NULL", &[])
        .and_then(|row| row.try_get(0))
        .map_err(failed)?;
    let version: i64 = if versioned {
        transaction
            .query_one("SELECT version FROM chatterbox_schema", &[])
            .and_then(|row| row.try_get(0))
            .map_err(failed)?
    } else {
        let tables: i64 = transaction
            .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()", &[])
            .and_then(|row| row.try_get(0))
            .map_err(failed)?;
        if tables > 0 {
            return Err(OpenError::Foreign { place: place.into() });
        }
        transaction
            .batch_execute(
                "CREATE TABLE chatterbox_schema (version BIGINT NOT NULL);
                 INSERT INTO chatterbox_schema VALUES (0);",
            )
            .map_err(failed)?;
        0
    };
    if version > SCHEMA_VERSION {
        return Err(OpenError::Newer { place: place.into(), found: version });
    }
    for migration in MIGRATIONS.iter().skip(version as usize) {
        transaction.batch_execute(migration).map_err(failed)?;
    }
    transaction
        .execute("UPDATE chatterbox_schema SET version = $1", &[&SCHEMA_VERSION])
        .map_err(failed)?;
    transaction.commit().map_err(failed)
}

pub(crate) fn message_from_row(
    channel: Channel,
    row: &Row,
) -> Result<Option<ChatMessage>, postgres::Error> {
    let seq: i64 = row.try_get("seq")?;
    let author = author_from_row(row)?;
    let kind: String = row.try_get("type")?;
    let body: String = row.try_get("body")?;
    let at_ms: i64 = row.try_get("at_ms")?;
    let late: bool = row.try_get("late")?;
    Ok(Body::from_parts(&kind, body)
        .map(|body| ChatMessage::new(channel, seq as u64, author, body, at_ms, late)))
}

/// The messages of `channel` in `rows`, skipping those this server cannot read.
fn messages_from_rows(channel: Channel, rows: &[Row]) -> Result<Vec<ChatMessage>, postgres::Error> {
    rows.iter().filter_map(|row| message_from_row(channel, row).transpose()).collect()
}

/// A row of `schedules`; `None` for one this server cannot read (a newer node's channel or
/// body kind).
pub(crate) fn schedule_from_row(row: &Row) -> Result<Option<StoredSchedule>, postgres::Error> {
    let channel: String = row.try_get("channel")?;
    let kind: String = row.try_get("type")?;
    let body: String = row.try_get("body")?;
    let (Some(channel), Some(body)) =
        (Channel::from_store_key(&channel), Body::from_parts(&kind, body))
    else {
        return Ok(None);
    };
    Ok(Some(StoredSchedule {
        id: row.try_get::<_, i64>("id")? as u64,
        due_ms: row.try_get("due_ms")?,
        channel,
        author: author_from_row(row)?,
        body,
    }))
}

/// The `author` and `name` columns of a message or a schedule.
pub(crate) fn author_from_row(row: &Row) -> Result<Author, postgres::Error> {
    let id: String = row.try_get("author")?;
    let name: Option<String> = row.try_get("name")?;
    Ok(Author { id: id.into(), name: name.map(Into::into) })
}

fn account_from_row(row: &Row) -> Result<StoredAccount, postgres::Error> {
    Ok(StoredAccount {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        name: row.try_get("name")?,
        password_hash: row.try_get("password")?,
    })
}

/// An insert's result: a unique constraint broken is `Taken`.
fn inserted(result: Result<u64, postgres::Error>) -> Result<(), CreateAccountError> {
    match result {
        Ok(_) => Ok(()),
        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            Err(CreateAccountError::Taken)
        }
        Err(error) => Err(CreateAccountError::Failed(error.into())),
    }
}

impl PostgresStore {
    fn account_where(&self, condition: &str, value: &str) -> anyhow::Result<Option<StoredAccount>> {
        let row = self
            .read()?
            .query_opt(&format!("SELECT * FROM accounts WHERE {condition}"), &[&value])?;
        Ok(row.as_ref().map(account_from_row).transpose()?)
    }
}

impl AccountStore for PostgresStore {
    fn create_account(&self, account: &StoredAccount) -> Result<(), CreateAccountError> {
        inserted(self.read()?.execute(
            "INSERT INTO accounts (id, username, name, password, created_ms)
             VALUES ($1, $2, $3, $4, $5)",
            &[&account.id, &account.username, &account.name, &account.password_hash, &now_ms()],
        ))
    }

    fn account_by_username(&self, username: &str) -> anyhow::Result<Option<StoredAccount>> {
        self.account_where("lower(username) = lower($1)", username)
    }

    fn account_by_id(&self, id: &str) -> anyhow::Result<Option<StoredAccount>> {
        self.account_where("id = $1", id)
    }

    fn set_name(&self, id: &str, name: &str) -> anyhow::Result<()> {
        self.read()?.execute("UPDATE accounts SET name = $2 WHERE id = $1", &[&id, &name])?;
        Ok(())
    }

    fn set_password_hash(&self, id: &str, hash: &str, keep: &[u8; 32]) -> anyhow::Result<()> {
        let mut connection = self.read()?;
        let mut transaction = connection.transaction()?;
        transaction.execute("UPDATE accounts SET password = $2 WHERE id = $1", &[&id, &hash])?;
        transaction.execute(
            "DELETE FROM sessions WHERE account = $1 AND token_hash != $2",
            &[&id, &&keep[..]],
        )?;
        transaction.commit()?;
        Ok(())
    }

    fn create_session(
        &self,
        token_hash: &[u8; 32],
        account: &str,
        now_ms: i64,
        idle_ms: i64,
    ) -> anyhow::Result<()> {
        let mut connection = self.read()?;
        let mut transaction = connection.transaction()?;
        transaction.execute(
            "DELETE FROM sessions WHERE account = $1 AND used_ms < $2",
            &[&account, &(now_ms - idle_ms)],
        )?;
        transaction.execute(
            "INSERT INTO sessions (token_hash, account, created_ms, used_ms) VALUES ($1, $2, $3, $3)",
            &[&&token_hash[..], &account, &now_ms],
        )?;
        transaction.commit()?;
        Ok(())
    }

    fn session_account(
        &self,
        token_hash: &[u8; 32],
        now_ms: i64,
        idle_ms: i64,
    ) -> anyhow::Result<Option<StoredAccount>> {
        let mut connection = self.read()?;
        let found = connection.query_opt(
            "SELECT token_hash, account, used_ms FROM sessions WHERE token_hash = $1",
            &[&&token_hash[..]],
        )?;
        let Some(found) = found else { return Ok(None) };
        let stored: Vec<u8> = found.try_get(0)?;
        let account: String = found.try_get(1)?;
        let used_ms: i64 = found.try_get(2)?;
        // Found by its digest; the digest is then compared in constant time all the same.
        if !bool::from(stored.as_slice().ct_eq(&token_hash[..])) {
            return Ok(None);
        }
        if now_ms - used_ms > idle_ms {
            connection
                .execute("DELETE FROM sessions WHERE token_hash = $1", &[&&token_hash[..]])?;
            return Ok(None);
        }
        // Written at most once a minute per session, not on every request.
        connection.execute(
            "UPDATE sessions SET used_ms = $2 WHERE token_hash = $1 AND used_ms < $2::bigint - 60000",
            &[&&token_hash[..], &now_ms],
        )?;
        drop(connection);
        self.account_by_id(&account)
    }

    fn delete_session(&self, token_hash: &[u8; 32]) -> anyhow::Result<()> {
        self.read()?.execute("DELETE FROM sessions WHERE token_hash = $1", &[&&token_hash[..]])?;
        Ok(())
    }

    fn create_room(&self, room: &StoredRoom) -> Result<(), CreateAccountError> {
        inserted(self.read()?.execute(
            "INSERT INTO rooms (name, topic, owner, created_ms) VALUES ($1, $2, $3, $4)",
            &[&room.name, &room.topic, &room.owner, &room.created_ms],
        ))
    }

    fn rooms(&self) -> anyhow::Result<Vec<StoredRoom>> {
        // Also called once at start, from the async `main`.
        off_the_runtime(|| {
            let rows = self.read()?.query("SELECT * FROM rooms ORDER BY created_ms, name", &[])?;
            let rooms = rows.iter().map(|row| {
                Ok(StoredRoom {
                    name: row.try_get("name")?,
                    topic: row.try_get("topic")?,
                    owner: row.try_get("owner")?,
                    created_ms: row.try_get("created_ms")?,
                })
            });
            Ok(rooms.collect::<Result<_, postgres::Error>>()?)
        })
    }

    fn set_avatar(&self, id: &str, png: &[u8]) -> anyhow::Result<()> {
        self.read()?.execute(
            "INSERT INTO avatars (account, png, updated_ms) VALUES ($1, $2, $3)
             ON CONFLICT (account) DO UPDATE SET png = excluded.png, updated_ms = excluded.updated_ms",
            &[&id, &png, &now_ms()],
        )?;
        Ok(())
    }

    fn avatar(&self, id: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let row = self.read()?.query_opt("SELECT png FROM avatars WHERE account = $1", &[&id])?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
    }
}

/// Per durable channel, its next seq and newest `recent` messages; the schedules, pending and
/// interrupted.
fn load(client: &mut impl GenericClient, recent: usize) -> anyhow::Result<Loaded> {
    let mut loaded = Loaded::default();
    let mut names: Vec<String> = client
        .query("SELECT name FROM channels UNION SELECT DISTINCT channel FROM messages", &[])?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    if !names.iter().any(|name| name == "feed") {
        names.push("feed".into());
    }
    for name in names {
        let Some(channel) = Channel::from_store_key(&name) else { continue };
        let last: i64 = client
            .query_one(
                "SELECT greatest(
                     (SELECT max(seq) FROM messages WHERE channel = $1),
                     (SELECT reserved FROM channels WHERE name = $1),
                     0)",
                &[&name],
            )?
            .try_get(0)?;
        let rows = client.query(
            "SELECT * FROM (SELECT * FROM messages WHERE channel = $1 ORDER BY seq DESC LIMIT $2)
             AS newest ORDER BY seq",
            &[&name, &(recent as i64)],
        )?;
        let messages = messages_from_rows(channel, &rows)?;
        loaded.channels.push((channel, last as u64 + 1, messages));
    }
    for row in client.query("SELECT * FROM schedules ORDER BY due_ms, id", &[])? {
        let Some(schedule) = schedule_from_row(&row)? else { continue };
        if row.try_get("firing")? {
            loaded.interrupted.push(schedule);
        } else {
            loaded.schedules.push(schedule);
        }
    }
    Ok(loaded)
}

impl Store for PostgresStore {
    fn load(&self, recent: usize) -> anyhow::Result<Loaded> {
        let loaded = off_the_runtime(|| load(&mut *self.read()?, recent))?;
        // Interrupted deliveries are settled now: removed, not delivered again.
        for schedule in &loaded.interrupted {
            self.record(Change::Delivered { id: schedule.id, message: None });
        }
        Ok(loaded)
    }

    fn record(&self, change: Change) {
        self.writes.record(change);
    }

    fn page(
        &self,
        channel: Channel,
        before: u64,
        limit: usize,
    ) -> anyhow::Result<Vec<ChatMessage>> {
        let Some(name) = channel.store_key() else { return Ok(Vec::new()) };
        let before = before.min(i64::MAX as u64) as i64;
        let rows = self.read()?.query(
            "SELECT * FROM (SELECT * FROM messages WHERE channel = $1 AND seq < $2
                            ORDER BY seq DESC LIMIT $3) AS page
             ORDER BY seq",
            &[&name, &before, &(limit as i64)],
        )?;
        messages_from_rows(channel, &rows).context("reading a page of history")
    }

    /// By its primary key, rather than as a page of one.
    fn message(&self, channel: Channel, seq: u64) -> anyhow::Result<Option<ChatMessage>> {
        let Some(name) = channel.store_key() else { return Ok(None) };
        let seq = seq.min(i64::MAX as u64) as i64;
        let row = self
            .read()?
            .query_opt("SELECT * FROM messages WHERE channel = $1 AND seq = $2", &[&name, &seq])?;
        let message = row.as_ref().map(|row| message_from_row(channel, row)).transpose()?;
        Ok(message.flatten())
    }

    fn flush(&self, limit: Duration) -> bool {
        self.writes.flush(limit)
    }

    fn close(&self, limit: Duration) -> bool {
        let written = self.writes.close(limit);
        self.close_reads();
        written
    }

    fn health(&self) -> StoreHealth {
        self.writes.health()
    }
}

/// What the writer thread writes through: a connection of its own, made again after it broke.
struct PostgresBatches {
    config: postgres::Config,
    place: String,
    connected: Option<(Client, Statement)>,
}

/// Every message of a batch in one statement: one array per column, whatever the number of rows
/// (replacing a row with the same seq, as a retried batch may bring it again).
pub(crate) const INSERT_MESSAGES: &str = "
    INSERT INTO messages (channel, seq, author, name, type, body, at_ms, late)
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::bigint[], $8::boolean[])
    ON CONFLICT (channel, seq) DO UPDATE SET author = excluded.author, name = excluded.name,
        type = excluded.type, body = excluded.body, at_ms = excluded.at_ms, late = excluded.late";

/// Sets up the writer's connection; returns its prepared insert.
fn prepare_writer(client: &mut Client) -> Result<Statement, postgres::Error> {
    // The durability promise holds whatever the server's default: a commit returns once it is
    // on PostgreSQL's disk.
    client.batch_execute("SET synchronous_commit = on")?;
    client.prepare(INSERT_MESSAGES)
}

impl PostgresBatches {
    /// The writer's connection and its prepared insert; connects first if it has none.
    fn connection(&mut self) -> anyhow::Result<&mut (Client, Statement)> {
        if self.connected.as_ref().is_some_and(|(client, _)| client.is_closed()) {
            self.connected = None;
        }
        if self.connected.is_none() {
            let mut client = self.config.connect(NoTls).context("connecting")?;
            let insert = prepare_writer(&mut client)?;
            self.connected = Some((client, insert));
        }
        self.connected.as_mut().context("no connection")
    }

    /// Runs `work` on the connection; a connection that failed is let go, to be made again.
    fn with_connection<T>(
        &mut self,
        work: impl FnOnce(&mut Client, &Statement) -> Result<T, postgres::Error>,
    ) -> anyhow::Result<T> {
        let (client, insert) = self.connection()?;
        let result = work(client, insert);
        if result.is_err() {
            self.connected = None;
        }
        Ok(result?)
    }
}

impl Batches for PostgresBatches {
    fn write(
        &mut self,
        changes: &[Change],
        reservations: &[(&'static str, u64)],
    ) -> anyhow::Result<()> {
        self.with_connection(|client, insert| write_batch(client, insert, changes, reservations))
    }

    fn prune(&mut self, name: &str, keep: usize) -> anyhow::Result<()> {
        self.with_connection(|client, _| prune_channel(client, name, keep))?;
        Ok(())
    }

    fn release(&mut self, last_given: &[(&'static str, u64)]) -> anyhow::Result<()> {
        self.write(&[], last_given)
    }

    fn place(&self) -> String {
        self.place.clone()
    }
}

/// Deletes all but the newest `keep` messages of the channel named `name`.
pub(crate) fn prune_channel(
    client: &mut Client,
    name: &str,
    keep: usize,
) -> Result<u64, postgres::Error> {
    client.execute(
        "DELETE FROM messages WHERE channel = $1
           AND seq <= (SELECT max(seq) FROM messages WHERE channel = $1) - $2",
        &[&name, &(keep as i64)],
    )
}

/// Inserts `messages` (of durable channels; others are skipped) with one statement.
pub(crate) fn insert_messages(
    transaction: &mut postgres::Transaction,
    insert: &Statement,
    messages: &[&ChatMessage],
) -> Result<(), postgres::Error> {
    let kept: Vec<(&str, &ChatMessage)> = messages
        .iter()
        .filter_map(|message| message.channel.store_key().map(|name| (name, *message)))
        .collect();
    if kept.is_empty() {
        return Ok(());
    }
    let channels: Vec<&str> = kept.iter().map(|(name, _)| *name).collect();
    let seqs: Vec<i64> = kept.iter().map(|(_, message)| message.seq as i64).collect();
    let authors: Vec<&str> = kept.iter().map(|(_, message)| &*message.author.id).collect();
    let names: Vec<Option<&str>> =
        kept.iter().map(|(_, message)| message.author.name.as_deref()).collect();
    let kinds: Vec<&str> = kept.iter().map(|(_, message)| message.body.kind()).collect();
    let bodies: Vec<&str> = kept.iter().map(|(_, message)| message.body.content()).collect();
    let ats: Vec<i64> = kept.iter().map(|(_, message)| message.at_ms).collect();
    let lates: Vec<bool> = kept.iter().map(|(_, message)| message.late).collect();
    let columns: [&(dyn ToSql + Sync); 8] =
        [&channels, &seqs, &authors, &names, &kinds, &bodies, &ats, &lates];
    transaction.execute(insert, &columns)?;
    Ok(())
}

/// One transaction: every change, in order, then the reservations that move ahead.
fn write_batch(
    client: &mut Client,
    insert: &Statement,
    changes: &[Change],
    reservations: &[(&'static str, u64)],
) -> Result<(), postgres::Error> {
    let mut transaction = client.transaction()?;
    // Messages in a row are inserted together, in one statement.
    let mut messages: Vec<&ChatMessage> = Vec::new();
    for change in changes {
        if let Change::Message(message) = change {
            messages.push(message);
            continue;
        }
        insert_messages(&mut transaction, insert, &messages)?;
        messages.clear();
        match change {
            Change::Message(_) => {}
            Change::Schedule(schedule) => {
                let Some(name) = schedule.channel.store_key() else { continue };
                transaction.execute(
                    "INSERT INTO schedules (id, due_ms, channel, author, name, type, body)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (id) DO UPDATE SET due_ms = excluded.due_ms,
                         channel = excluded.channel, author = excluded.author,
                         name = excluded.name, type = excluded.type, body = excluded.body,
                         firing = false",
                    &[
                        &(schedule.id as i64),
                        &schedule.due_ms,
                        &name,
                        &&*schedule.author.id,
                        &schedule.author.name.as_deref(),
                        &schedule.body.kind(),
                        &schedule.body.content(),
                    ],
                )?;
            }
            Change::Firing { id, .. } => {
                transaction.execute(
                    "UPDATE schedules SET firing = true WHERE id = $1",
                    &[&(*id as i64)],
                )?;
            }
            Change::Deleted { channel, seq } => {
                let Some(name) = channel.store_key() else { continue };
                transaction.execute(
                    "DELETE FROM messages WHERE channel = $1 AND seq = $2",
                    &[&name, &(*seq as i64)],
                )?;
            }
            Change::Delivered { id, message } => {
                transaction.execute("DELETE FROM schedules WHERE id = $1", &[&(*id as i64)])?;
                if let Some(message) = message {
                    insert_messages(&mut transaction, insert, &[message])?;
                }
            }
        }
    }
    insert_messages(&mut transaction, insert, &messages)?;
    for (name, reserved) in reservations {
        transaction.execute(
            "INSERT INTO channels (name, reserved) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET reserved = excluded.reserved",
            &[name, &(*reserved as i64)],
        )?;
    }
    transaction.commit()
}

/// The integration tests' helper for a database of each test's own, shared by path.
#[cfg(test)]
#[allow(dead_code)] // the integration tests use the rest
#[path = "../tests/common/databases.rs"]
mod databases;

#[cfg(test)]
mod tests {
    use super::databases::TestDatabase;
    use super::*;
    use crate::store::{check_account_store, store_checks};

    fn options(url: &str) -> PostgresOptions {
        PostgresOptions {
            url: url.to_owned(),
            pool: 2,
            writer: WriterOptions { keep: 100, backlog: 1000, write_seconds: None },
        }
    }

    fn open(url: &str) -> PostgresStore {
        PostgresStore::open(options(url)).unwrap()
    }

    /// Each check on a database of its own (skipped without `CHATTERBOX_TEST_POSTGRES`);
    /// `open` opens it again as a restart would.
    fn check(run: impl FnOnce(&dyn Fn() -> Box<dyn Store>)) {
        let Some(database) = TestDatabase::create().unwrap() else { return };
        run(&|| Box::new(open(database.url())));
    }

    #[test]
    fn accounts_and_sessions_are_kept() {
        check(|open| {
            check_account_store(&*open());
            // Another process's view after a restart: the account and its name are there.
            let ada = open().account_by_username("ADA").unwrap().unwrap();
            assert_eq!((ada.id.len(), ada.name.as_str()), (32, "Ada Lovelace"));
        });
    }

    #[test]
    fn messages_and_seqs_survive_a_clean_close() {
        check(store_checks::messages_and_seqs_survive_a_clean_close);
    }

    #[test]
    fn a_deleted_message_stays_deleted_and_its_seq_is_not_given_again() {
        check(store_checks::a_deleted_message_stays_deleted_and_its_seq_is_not_given_again);
    }

    #[test]
    fn one_message_is_found_by_its_channel_and_seq_once_written() {
        check(store_checks::one_message_is_found_by_its_channel_and_seq_once_written);
    }

    #[test]
    fn after_a_crash_seqs_go_on_past_the_reservation() {
        check(store_checks::after_a_crash_seqs_go_on_past_the_reservation);
    }

    #[test]
    fn a_schedule_is_kept_until_delivered_and_an_interrupted_one_is_settled() {
        check(store_checks::a_schedule_is_kept_until_delivered_and_an_interrupted_one_is_settled);
    }

    #[test]
    fn old_messages_are_deleted_down_to_the_newest_kept() {
        let Some(database) = TestDatabase::create().unwrap() else { return };
        let store = open(database.url());
        store.load(10).unwrap();
        for seq in 1..=20 {
            store.record(store_checks::message(seq, "x"));
        }
        assert!(store.flush(Duration::from_secs(5)));
        let mut batches = PostgresBatches {
            config: database.url().parse().unwrap(),
            place: String::new(),
            connected: None,
        };
        batches.prune("feed", 5).unwrap();
        assert_eq!(store.page(Channel::Feed, 100, 100).unwrap()[0].seq, 16);
    }

    #[test]
    fn foreign_and_newer_databases_are_refused_before_anything_is_written() {
        let Some(database) = TestDatabase::create().unwrap() else { return };
        database
            .with_client(|client| Ok(client.batch_execute("CREATE TABLE notes (x int)")?))
            .unwrap();
        let error = PostgresStore::open(options(database.url())).err().unwrap();
        assert!(matches!(error, OpenError::Foreign { .. }), "{error}");
        let tables = |database: &TestDatabase| {
            database
                .with_client(|client| {
                    let rows = client.query(
                        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
                         ORDER BY tablename",
                        &[],
                    )?;
                    Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<_>>())
                })
                .unwrap()
        };
        assert_eq!(tables(&database), ["notes"]);

        let Some(database) = TestDatabase::create().unwrap() else { return };
        drop(open(database.url()));
        let newer = SCHEMA_VERSION + 1;
        database
            .with_client(move |client| {
                Ok(client.execute("UPDATE chatterbox_schema SET version = $1", &[&newer])?)
            })
            .unwrap();
        let error = PostgresStore::open(options(database.url())).err().unwrap();
        assert!(matches!(error, OpenError::Newer { found, .. } if found == newer), "{error}");
        assert!(error.to_string().contains(database.name()), "{error}");
    }

    #[test]
    fn a_url_is_named_without_its_password() {
        let config: postgres::Config =
            "postgres://ada:secret@db.example:6543/chat".parse().unwrap();
        assert_eq!(place(&config), "postgres://ada@db.example:6543/chat");
        assert!(is_url("postgresql://x/y") && is_url("postgres://x") && !is_url("chat.db"));
        let unreachable = PostgresStore::open(options("postgres://ada:secret@127.0.0.1:1/chat"));
        let line = unreachable.err().unwrap().to_string();
        assert!(line.contains("127.0.0.1:1") && !line.contains("secret"), "{line}");
    }
}
