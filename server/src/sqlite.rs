//! The SQLite store: one file (`chatterbox.db` unless `--database` says otherwise), written by
//! one background thread (see [`writer`](crate::writer): batches, group commit, retries, seq
//! reservations), in write-ahead-log mode with every commit synced to disk.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use subtle::ConstantTimeEq;

use crate::message::{Author, Body, Channel, ChatMessage, now_ms};
use crate::store::{
    AccountStore, Change, CreateAccountError, Loaded, StoreHealth, StoredAccount, StoredRoom,
    StoredSchedule,
};
use crate::writer::{Batches, WriteQueue, WriterOptions};

/// The schema this binary writes. A file with a higher `user_version` is refused.
pub const SCHEMA_VERSION: i64 = 4;

/// Written into every chatterbox database (`PRAGMA application_id`): "CBOX".
const APPLICATION_ID: i64 = 0x4342_4F58;

/// Why the store could not be opened: the one line the server prints before it exits.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: not a chatterbox database ({reason}); it was left untouched")]
    Foreign { path: String, reason: String },
    #[error(
        "{path}: its schema is version {found}, newer than this server knows ({SCHEMA_VERSION}); \
         use a newer server, or another --database. It was left untouched"
    )]
    Newer { path: String, found: i64 },
    #[error("{path}: cannot open it for writing: {reason}")]
    Unwritable { path: String, reason: String },
}

/// How the store is set up, from the command line.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub writer: WriterOptions,
}

pub struct SqliteStore {
    writes: WriteQueue,
    reader: Mutex<Connection>,
    /// Accounts and sessions are written here, at once (a sign-up must know whether its name
    /// is taken), not through the writer thread; SQLite serialises the two writers.
    accounts: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (or creates) the database and brings its schema up to date. A file that is not a
    /// chatterbox database, or has a newer schema, is refused before anything is written.
    pub fn open(options: SqliteOptions) -> Result<SqliteStore, OpenError> {
        let path = options.path.display().to_string();
        let unwritable = |reason: String| OpenError::Unwritable { path: path.clone(), reason };
        let foreign = |reason: String| OpenError::Foreign { path: path.clone(), reason };
        let connection = Connection::open_with_flags(
            &options.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|error| unwritable(error.to_string()))?;
        // Read before anything is written: these fail on a file that is not a database.
        let read = |sql: &str| connection.query_row(sql, [], |row| row.get::<_, i64>(0));
        let application_id = read("PRAGMA application_id").map_err(|e| foreign(e.to_string()))?;
        let version = read("PRAGMA user_version").map_err(|e| foreign(e.to_string()))?;
        let tables =
            read("SELECT count(*) FROM sqlite_master").map_err(|e| foreign(e.to_string()))?;
        if application_id != APPLICATION_ID && (tables > 0 || application_id != 0) {
            return Err(foreign("a SQLite database of another application".into()));
        }
        if version > SCHEMA_VERSION {
            return Err(OpenError::Newer { path, found: version });
        }
        configure(&connection).map_err(|error| unwritable(error.to_string()))?;
        migrate(&connection, version).map_err(|error| unwritable(error.to_string()))?;
        let reader = Connection::open_with_flags(
            &options.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|error| unwritable(error.to_string()))?;
        let accounts = Connection::open_with_flags(
            &options.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|error| unwritable(error.to_string()))?;
        accounts.busy_timeout(Duration::from_secs(5)).map_err(|e| unwritable(e.to_string()))?;
        let place = path.clone();
        let writes = WriteQueue::start(SqliteBatches { connection, place }, options.writer)
            .map_err(|error| unwritable(error.to_string()))?;
        Ok(SqliteStore { writes, reader: Mutex::new(reader), accounts: Mutex::new(accounts) })
    }
}

/// Write-ahead log, synced commits, and patience with the backup tool's locks.
fn configure(connection: &Connection) -> rusqlite::Result<()> {
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.busy_timeout(Duration::from_secs(5))?;
    Ok(())
}

/// Brings the schema from `version` up to [`SCHEMA_VERSION`], one step at a time, each in a
/// transaction of its own.
fn migrate(connection: &Connection, version: i64) -> rusqlite::Result<()> {
    if version < 1 {
        connection.execute_batch(&format!(
            "BEGIN;
             CREATE TABLE messages (
                 channel TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 author TEXT NOT NULL,
                 type TEXT NOT NULL,
                 body TEXT NOT NULL,
                 at_ms INTEGER NOT NULL,
                 late INTEGER NOT NULL DEFAULT 0,
                 PRIMARY KEY (channel, seq)
             ) WITHOUT ROWID;
             CREATE TABLE channels (
                 name TEXT PRIMARY KEY,
                 reserved INTEGER NOT NULL
             );
             CREATE TABLE schedules (
                 id INTEGER PRIMARY KEY,
                 due_ms INTEGER NOT NULL,
                 channel TEXT NOT NULL,
                 author TEXT NOT NULL,
                 type TEXT NOT NULL,
                 body TEXT NOT NULL,
                 firing INTEGER NOT NULL DEFAULT 0
             );
             PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = 1;
             COMMIT;"
        ))?;
    }
    if version < 2 {
        // Accounts: a message or schedule of an account keeps its display name beside the
        // author's id; guests' have none. Sessions are kept only as their tokens' SHA-256.
        connection.execute_batch(
            "BEGIN;
             ALTER TABLE messages ADD COLUMN name TEXT;
             ALTER TABLE schedules ADD COLUMN name TEXT;
             CREATE TABLE accounts (
                 id TEXT PRIMARY KEY,
                 username TEXT NOT NULL UNIQUE COLLATE NOCASE,
                 name TEXT NOT NULL,
                 password TEXT NOT NULL,
                 created_ms INTEGER NOT NULL
             );
             CREATE TABLE sessions (
                 token_hash BLOB PRIMARY KEY,
                 account TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
                 created_ms INTEGER NOT NULL,
                 used_ms INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX sessions_by_account ON sessions (account);
             PRAGMA user_version = 2;
             COMMIT;",
        )?;
    }
    if version < 3 {
        // Named rooms; their messages are in `messages` under the channel `room:NAME`.
        connection.execute_batch(
            "BEGIN;
             CREATE TABLE rooms (
                 name TEXT PRIMARY KEY,
                 topic TEXT NOT NULL,
                 owner TEXT NOT NULL,
                 created_ms INTEGER NOT NULL
             );
             PRAGMA user_version = 3;
             COMMIT;",
        )?;
    }
    if version < 4 {
        // Profile pictures: each account's, as the 256×256 PNG the server re-encoded.
        connection.execute_batch(
            "BEGIN;
             CREATE TABLE avatars (
                 account TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
                 png BLOB NOT NULL,
                 updated_ms INTEGER NOT NULL
             ) WITHOUT ROWID;
             PRAGMA user_version = 4;
             COMMIT;",
        )?;
    }
    Ok(())
}

fn channel_of(name: &str) -> Option<Channel> {
    Channel::from_store_key(name)
}

fn message_from_row(
    channel: Channel,
    row: &rusqlite::Row,
) -> rusqlite::Result<Option<ChatMessage>> {
    let seq: i64 = row.get("seq")?;
    let author = author_from_row(row)?;
    let kind: String = row.get("type")?;
    let body: String = row.get("body")?;
    let at_ms: i64 = row.get("at_ms")?;
    let late: bool = row.get("late")?;
    Ok(Body::from_parts(&kind, body)
        .map(|body| ChatMessage::new(channel, seq as u64, author, body, at_ms, late)))
}

/// The `author` and `name` columns of a message or a schedule.
fn author_from_row(row: &rusqlite::Row) -> rusqlite::Result<Author> {
    let id: String = row.get("author")?;
    let name: Option<String> = row.get("name")?;
    Ok(Author { id: id.into(), name: name.map(Into::into) })
}

fn account_from_row(row: &rusqlite::Row) -> rusqlite::Result<StoredAccount> {
    Ok(StoredAccount {
        id: row.get("id")?,
        username: row.get("username")?,
        name: row.get("name")?,
        password_hash: row.get("password")?,
    })
}

impl SqliteStore {
    fn accounts(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.accounts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn account_where(&self, condition: &str, value: &str) -> anyhow::Result<Option<StoredAccount>> {
        let connection = self.accounts();
        let mut statement =
            connection.prepare_cached(&format!("SELECT * FROM accounts WHERE {condition} = ?1"))?;
        Ok(statement.query_row([value], account_from_row).optional()?)
    }
}

/// An insert's result: a unique constraint broken is `Taken`.
fn inserted(result: rusqlite::Result<usize>) -> Result<(), CreateAccountError> {
    match result {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(error, _))
            if error.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(CreateAccountError::Taken)
        }
        Err(error) => Err(CreateAccountError::Failed(error.into())),
    }
}

impl AccountStore for SqliteStore {
    fn create_account(&self, account: &StoredAccount) -> Result<(), CreateAccountError> {
        inserted(self.accounts().execute(
            "INSERT INTO accounts (id, username, name, password, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![account.id, account.username, account.name, account.password_hash, now_ms()],
        ))
    }

    fn create_room(&self, room: &StoredRoom) -> Result<(), CreateAccountError> {
        inserted(self.accounts().execute(
            "INSERT INTO rooms (name, topic, owner, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![room.name, room.topic, room.owner, room.created_ms],
        ))
    }

    fn rooms(&self) -> anyhow::Result<Vec<StoredRoom>> {
        let connection = self.accounts();
        let mut statement =
            connection.prepare_cached("SELECT * FROM rooms ORDER BY created_ms, name")?;
        let rooms = statement.query_map([], |row| {
            Ok(StoredRoom {
                name: row.get("name")?,
                topic: row.get("topic")?,
                owner: row.get("owner")?,
                created_ms: row.get("created_ms")?,
            })
        })?;
        Ok(rooms.collect::<rusqlite::Result<_>>()?)
    }

    fn set_avatar(&self, id: &str, png: &[u8]) -> anyhow::Result<()> {
        self.accounts().execute(
            "INSERT INTO avatars (account, png, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (account) DO UPDATE SET png = excluded.png, updated_ms = excluded.updated_ms",
            params![id, png, now_ms()],
        )?;
        Ok(())
    }

    fn avatar(&self, id: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let connection = self.accounts();
        let mut statement =
            connection.prepare_cached("SELECT png FROM avatars WHERE account = ?1")?;
        Ok(statement.query_row([id], |row| row.get(0)).optional()?)
    }

    fn account_by_username(&self, username: &str) -> anyhow::Result<Option<StoredAccount>> {
        self.account_where("username", username)
    }

    fn account_by_id(&self, id: &str) -> anyhow::Result<Option<StoredAccount>> {
        self.account_where("id", id)
    }

    fn set_name(&self, id: &str, name: &str) -> anyhow::Result<()> {
        self.accounts()
            .execute("UPDATE accounts SET name = ?2 WHERE id = ?1", params![id, name])?;
        Ok(())
    }

    fn set_password_hash(&self, id: &str, hash: &str, keep: &[u8; 32]) -> anyhow::Result<()> {
        let mut connection = self.accounts();
        let transaction = connection.transaction()?;
        transaction
            .execute("UPDATE accounts SET password = ?2 WHERE id = ?1", params![id, hash])?;
        transaction.execute(
            "DELETE FROM sessions WHERE account = ?1 AND token_hash != ?2",
            params![id, &keep[..]],
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
        let mut connection = self.accounts();
        let transaction = connection.transaction()?;
        transaction.execute(
            "DELETE FROM sessions WHERE account = ?1 AND used_ms < ?2",
            params![account, now_ms - idle_ms],
        )?;
        transaction.execute(
            "INSERT INTO sessions (token_hash, account, created_ms, used_ms) VALUES (?1, ?2, ?3, ?3)",
            params![&token_hash[..], account, now_ms],
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
        let connection = self.accounts();
        let found: Option<(Vec<u8>, String, i64)> = connection
            .prepare_cached(
                "SELECT token_hash, account, used_ms FROM sessions WHERE token_hash = ?1",
            )?
            .query_row([&token_hash[..]], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .optional()?;
        let Some((stored, account, used_ms)) = found else { return Ok(None) };
        // Found by its digest; the digest is then compared in constant time all the same.
        if !bool::from(stored.as_slice().ct_eq(&token_hash[..])) {
            return Ok(None);
        }
        if now_ms - used_ms > idle_ms {
            connection.execute("DELETE FROM sessions WHERE token_hash = ?1", [&token_hash[..]])?;
            return Ok(None);
        }
        // Written at most once a minute per session, not on every request.
        connection.execute(
            "UPDATE sessions SET used_ms = ?2 WHERE token_hash = ?1 AND used_ms < ?2 - 60000",
            params![&token_hash[..], now_ms],
        )?;
        drop(connection);
        self.account_by_id(&account)
    }

    fn delete_session(&self, token_hash: &[u8; 32]) -> anyhow::Result<()> {
        self.accounts().execute("DELETE FROM sessions WHERE token_hash = ?1", [&token_hash[..]])?;
        Ok(())
    }
}

impl crate::store::Store for SqliteStore {
    fn load(&self, recent: usize) -> anyhow::Result<Loaded> {
        let reader = self.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut loaded = Loaded::default();
        let mut names: Vec<String> = reader
            .prepare("SELECT name FROM channels UNION SELECT DISTINCT channel FROM messages")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !names.iter().any(|name| name == "feed") {
            names.push("feed".into());
        }
        for name in names {
            let Some(channel) = channel_of(&name) else { continue };
            let newest: Option<i64> = reader.query_row(
                "SELECT max(seq) FROM messages WHERE channel = ?1",
                [&name],
                |row| row.get(0),
            )?;
            let reserved: Option<i64> = reader
                .query_row("SELECT reserved FROM channels WHERE name = ?1", [&name], |row| {
                    row.get(0)
                })
                .optional()?;
            let last = newest.unwrap_or(0).max(reserved.unwrap_or(0)) as u64;
            let mut statement = reader.prepare(
                "SELECT * FROM (SELECT * FROM messages WHERE channel = ?1 ORDER BY seq DESC LIMIT ?2)
                 ORDER BY seq",
            )?;
            let messages = statement
                .query_map(params![name, recent as i64], |row| message_from_row(channel, row))?
                .filter_map(|message| message.transpose())
                .collect::<rusqlite::Result<Vec<_>>>()?;
            loaded.channels.push((channel, last + 1, messages));
        }
        let mut statement = reader.prepare("SELECT * FROM schedules ORDER BY due_ms, id")?;
        let rows = statement.query_map([], |row| {
            let channel: String = row.get("channel")?;
            let kind: String = row.get("type")?;
            let body: String = row.get("body")?;
            let author = author_from_row(row)?;
            let schedule = match (channel_of(&channel), Body::from_parts(&kind, body)) {
                (Some(channel), Some(body)) => Some(StoredSchedule {
                    id: row.get::<_, i64>("id")? as u64,
                    due_ms: row.get("due_ms")?,
                    channel,
                    author,
                    body,
                }),
                _ => None,
            };
            Ok((schedule, row.get::<_, bool>("firing")?))
        })?;
        for row in rows {
            match row? {
                (Some(schedule), false) => loaded.schedules.push(schedule),
                (Some(schedule), true) => loaded.interrupted.push(schedule),
                (None, _) => {}
            }
        }
        drop(statement);
        drop(reader);
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
        let reader = self.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut statement = reader.prepare_cached(
            "SELECT * FROM (SELECT * FROM messages WHERE channel = ?1 AND seq < ?2
                            ORDER BY seq DESC LIMIT ?3)
             ORDER BY seq",
        )?;
        let messages = statement
            .query_map(params![name, before.min(i64::MAX as u64) as i64, limit as i64], |row| {
                message_from_row(channel, row)
            })?
            .filter_map(|message| message.transpose())
            .collect::<rusqlite::Result<Vec<_>>>()
            .context("reading a page of history")?;
        Ok(messages)
    }

    /// By its primary key, rather than as a page of one.
    fn message(&self, channel: Channel, seq: u64) -> anyhow::Result<Option<ChatMessage>> {
        let Some(name) = channel.store_key() else { return Ok(None) };
        let reader = self.reader.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut statement =
            reader.prepare_cached("SELECT * FROM messages WHERE channel = ?1 AND seq = ?2")?;
        let mut rows = statement.query(params![name, seq.min(i64::MAX as u64) as i64])?;
        let message = match rows.next()? {
            Some(row) => message_from_row(channel, row)?,
            None => None,
        };
        Ok(message)
    }

    fn flush(&self, limit: Duration) -> bool {
        self.writes.flush(limit)
    }

    fn close(&self, limit: Duration) -> bool {
        self.writes.close(limit)
    }

    fn health(&self) -> StoreHealth {
        self.writes.health()
    }
}

/// What the writer thread writes through: its own connection.
struct SqliteBatches {
    connection: Connection,
    /// The file's path, for the log.
    place: String,
}

impl Batches for SqliteBatches {
    fn write(
        &mut self,
        changes: &[Change],
        reservations: &[(&'static str, u64)],
    ) -> anyhow::Result<()> {
        Ok(write_batch(&mut self.connection, changes, reservations)?)
    }

    fn prune(&mut self, name: &str, keep: usize) -> anyhow::Result<()> {
        delete_older(&self.connection, name, keep as i64)?;
        Ok(())
    }

    fn release(&mut self, last_given: &[(&'static str, u64)]) -> anyhow::Result<()> {
        write_batch(&mut self.connection, &[], last_given)?;
        self.connection.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
        Ok(())
    }

    fn place(&self) -> String {
        self.place.clone()
    }
}

/// Deletes all but the newest `keep` messages of channel `name` (a range of its primary key).
fn delete_older(connection: &Connection, name: &str, keep: i64) -> rusqlite::Result<usize> {
    connection.execute(
        "DELETE FROM messages WHERE channel = ?1
           AND seq <= (SELECT max(seq) FROM messages WHERE channel = ?1) - ?2",
        params![name, keep],
    )
}

/// Rows per multi-row `INSERT`: one statement for many rows costs far less than a statement
/// each (the binding and stepping, not the B-tree, is most of a small row's cost).
const ROWS_PER_INSERT: usize = 32;

/// `INSERT ... VALUES (...), (...), ...` for `rows` messages.
fn insert_statement(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT OR REPLACE INTO messages (channel, seq, author, name, type, body, at_ms, late) VALUES ",
    );
    let row = "(?, ?, ?, ?, ?, ?, ?, ?)";
    sql.push_str(&vec![row; rows].join(", "));
    sql
}

fn text(text: &str) -> rusqlite::types::ToSqlOutput<'_> {
    rusqlite::types::ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(text.as_bytes()))
}

/// Inserts `messages` (of durable channels; others are skipped), `ROWS_PER_INSERT` at a time.
fn insert_messages(
    transaction: &rusqlite::Transaction,
    messages: &[&ChatMessage],
) -> rusqlite::Result<()> {
    use rusqlite::types::{ToSqlOutput, Value};
    let kept: Vec<(&str, &ChatMessage)> = messages
        .iter()
        .filter_map(|message| message.channel.store_key().map(|name| (name, *message)))
        .collect();
    for chunk in kept.chunks(ROWS_PER_INSERT) {
        let mut statement = transaction.prepare_cached(&insert_statement(chunk.len()))?;
        let mut values: Vec<ToSqlOutput> = Vec::with_capacity(chunk.len() * 8);
        for &(name, message) in chunk {
            values.extend([
                text(name),
                ToSqlOutput::Owned(Value::Integer(message.seq as i64)),
                text(&message.author.id),
                message.author.name.as_deref().map_or(ToSqlOutput::Owned(Value::Null), text),
                text(message.body.kind()),
                text(message.body.content()),
                ToSqlOutput::Owned(Value::Integer(message.at_ms)),
                ToSqlOutput::Owned(Value::Integer(i64::from(message.late))),
            ]);
        }
        statement.execute(rusqlite::params_from_iter(values.iter()))?;
    }
    Ok(())
}

/// One transaction: every change, then the reservations that move ahead.
fn write_batch(
    connection: &mut Connection,
    changes: &[Change],
    reservations: &[(&'static str, u64)],
) -> rusqlite::Result<()> {
    let transaction = connection.transaction()?;
    {
        let mut insert_schedule = transaction.prepare_cached(
            "INSERT OR REPLACE INTO schedules (id, due_ms, channel, author, name, type, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut mark =
            transaction.prepare_cached("UPDATE schedules SET firing = 1 WHERE id = ?1")?;
        let mut remove = transaction.prepare_cached("DELETE FROM schedules WHERE id = ?1")?;
        let mut delete_message =
            transaction.prepare_cached("DELETE FROM messages WHERE channel = ?1 AND seq = ?2")?;
        // Messages in a row are inserted together, many rows per statement.
        let mut messages: Vec<&ChatMessage> = Vec::new();
        for change in changes {
            if let Change::Message(message) = change {
                messages.push(message);
                continue;
            }
            insert_messages(&transaction, &messages)?;
            messages.clear();
            match change {
                Change::Message(_) => {}
                Change::Schedule(schedule) => {
                    let Some(name) = schedule.channel.store_key() else { continue };
                    insert_schedule.execute(params![
                        schedule.id as i64,
                        schedule.due_ms,
                        name,
                        &*schedule.author.id,
                        schedule.author.name.as_deref(),
                        schedule.body.kind(),
                        schedule.body.content(),
                    ])?;
                }
                Change::Firing { id, .. } => {
                    mark.execute([*id as i64])?;
                }
                Change::Deleted { channel, seq } => {
                    let Some(name) = channel.store_key() else { continue };
                    delete_message.execute(params![name, *seq as i64])?;
                }
                Change::Delivered { id, message } => {
                    remove.execute([*id as i64])?;
                    if let Some(message) = message {
                        insert_messages(&transaction, &[message])?;
                    }
                }
            }
        }
        insert_messages(&transaction, &messages)?;
        for (name, reserved) in reservations {
            transaction.execute(
                "INSERT INTO channels (name, reserved) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET reserved = excluded.reserved",
                params![name, *reserved as i64],
            )?;
        }
    }
    transaction.commit()?;
    Ok(())
}

/// The path `--database` names, or `None` for `memory`.
pub fn database_path(argument: &str) -> Option<&Path> {
    (argument != "memory").then(|| Path::new(argument))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AccountStore, Store, store_checks};

    fn open(path: &Path) -> SqliteStore {
        let options = SqliteOptions {
            path: path.to_path_buf(),
            writer: WriterOptions { keep: 100, backlog: 1000, write_seconds: None },
        };
        SqliteStore::open(options).unwrap()
    }

    #[test]
    fn accounts_and_sessions_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        crate::store::check_account_store(&open(&path));
        // Another process's view after a restart: the account and its name are there.
        let store = open(&path);
        let ada = store.account_by_username("ada").unwrap().unwrap();
        assert_eq!((ada.id.len(), ada.name.as_str()), (32, "Ada Lovelace"));
    }

    /// Each check on a new file of its own; `open` opens it again as a restart would.
    fn check(run: impl FnOnce(&dyn Fn() -> Box<dyn Store>)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        run(&|| Box::new(open(&path)));
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store = open(&path);
        store.load(10).unwrap();
        for seq in 1..=20 {
            store.record(store_checks::message(seq, "x"));
        }
        assert!(store.close(Duration::from_secs(5)));
        let connection = Connection::open(&path).unwrap();
        assert_eq!(delete_older(&connection, "feed", 5).unwrap(), 15);
        let oldest: i64 =
            connection.query_row("SELECT min(seq) FROM messages", [], |row| row.get(0)).unwrap();
        assert_eq!(oldest, 16);
    }

    #[test]
    fn foreign_and_newer_files_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.txt");
        std::fs::write(
            &text,
            "not a database, just some words that go on for a while\n".repeat(100),
        )
        .unwrap();
        let options = |path: &Path| SqliteOptions {
            path: path.to_path_buf(),
            writer: WriterOptions { keep: 1, backlog: 1, write_seconds: None },
        };
        assert!(matches!(SqliteStore::open(options(&text)), Err(OpenError::Foreign { .. })));
        let newer = dir.path().join("newer.db");
        drop(open(&newer));
        let newer_version = SCHEMA_VERSION + 1;
        Connection::open(&newer)
            .unwrap()
            .pragma_update(None, "user_version", newer_version)
            .unwrap();
        let error = SqliteStore::open(options(&newer)).err().unwrap();
        assert!(
            matches!(error, OpenError::Newer { found, .. } if found == newer_version),
            "{error}"
        );
    }
}
