//! The store: where messages of the durable channels and pending schedules are kept.
//!
//! [`Store`] is the seam. The hub and the scheduler hand it [`Change`]s that never wait (it
//! may write them later, in batches); at start the server [`load`](Store::load)s what it
//! needs; "load earlier messages" reads [`page`](Store::page)s. Two implementations:
//! - [`sqlite`](crate::sqlite): a file, written by one background thread in batches, one
//!   transaction each (write-ahead log, group commit);
//! - [`MemoryStore`]: `--database memory`, nothing on disk; history lasts as long as the
//!   process.
//!
//! A PostgreSQL store plugs in here without touching the hub or the sessions.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::message::{Author, Body, Channel, ChatMessage};

/// A schedule as the store keeps it: only those for durable channels are kept.
#[derive(Debug, Clone)]
pub struct StoredSchedule {
    pub id: u64,
    /// When it is due, in milliseconds since the Unix epoch.
    pub due_ms: i64,
    pub channel: Channel,
    pub author: Author,
    pub body: Body,
}

/// A change to what is kept.
#[derive(Debug)]
pub enum Change {
    /// A message of a durable channel, as it was fanned out.
    Message(Arc<ChatMessage>),
    /// A schedule just accepted.
    Schedule(StoredSchedule),
    /// A schedule about to be delivered; `written` is told once that is on disk (or could not
    /// be written). A schedule still marked when the server starts was being delivered when
    /// the server stopped: it is not delivered again (see the scheduler).
    Firing { id: u64, written: oneshot::Sender<bool> },
    /// A schedule delivered: it is removed and its message (if its channel is durable) added,
    /// in one transaction, so that it is never both pending and delivered.
    Delivered { id: u64, message: Option<Arc<ChatMessage>> },
    /// A message of a durable channel taken back by its author (`{"delete": SEQ}`).
    Deleted { channel: Channel, seq: u64 },
}

/// What the server needs at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Per durable channel: the next seq to give, and its newest messages, oldest first.
    pub channels: Vec<(Channel, u64, Vec<ChatMessage>)>,
    /// Pending schedules.
    pub schedules: Vec<StoredSchedule>,
    /// Schedules that were being delivered when the server stopped; removed at load.
    pub interrupted: Vec<StoredSchedule>,
}

/// Whether writes are going through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreHealth {
    Ok,
    /// Writes fail (disk full, read-only, I/O errors); they are retried, and what is waiting
    /// stays in memory up to the backlog bound.
    Failing,
}

/// An account as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAccount {
    /// 32 lowercase hex digits, for good.
    pub id: String,
    /// Lower case; unique.
    pub username: String,
    /// The display name.
    pub name: String,
    /// The Argon2id hash, in the PHC string format.
    pub password_hash: String,
}

/// A named room as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoom {
    /// 1–32 of `a-z 0-9 -`; unique.
    pub name: String,
    pub topic: String,
    /// The id of the account that created it.
    pub owner: String,
    pub created_ms: i64,
}

/// Why an account could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateAccountError {
    #[error("that username is taken")]
    Taken,
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// What accounts and their sessions need kept. Every method blocks (a disk may be behind it):
/// call them from a blocking task. A session is known only by its token's SHA-256.
pub trait AccountStore: Send + Sync {
    fn create_account(&self, account: &StoredAccount) -> Result<(), CreateAccountError>;

    /// By username, ignoring case.
    fn account_by_username(&self, username: &str) -> anyhow::Result<Option<StoredAccount>>;

    fn account_by_id(&self, id: &str) -> anyhow::Result<Option<StoredAccount>>;

    fn set_name(&self, id: &str, name: &str) -> anyhow::Result<()>;

    /// Replaces the password hash and revokes every session of the account except `keep`.
    fn set_password_hash(&self, id: &str, hash: &str, keep: &[u8; 32]) -> anyhow::Result<()>;

    /// Starts a session; the account's sessions unused for longer than `idle_ms` are removed
    /// on the way (an ended session is otherwise removed only when it is presented again).
    fn create_session(
        &self,
        token_hash: &[u8; 32],
        account: &str,
        now_ms: i64,
        idle_ms: i64,
    ) -> anyhow::Result<()>;

    /// The account of the session whose token hashes to `token_hash`, if it was used within
    /// `idle_ms` of `now_ms` (it then counts as used now); an expired one is removed.
    fn session_account(
        &self,
        token_hash: &[u8; 32],
        now_ms: i64,
        idle_ms: i64,
    ) -> anyhow::Result<Option<StoredAccount>>;

    fn delete_session(&self, token_hash: &[u8; 32]) -> anyhow::Result<()>;

    /// Keeps a new named room; `Taken` when one has its name.
    fn create_room(&self, room: &StoredRoom) -> Result<(), CreateAccountError>;

    /// Every named room, oldest first.
    fn rooms(&self) -> anyhow::Result<Vec<StoredRoom>>;

    /// Keeps `png` as the account's picture, replacing the one it had.
    fn set_avatar(&self, id: &str, png: &[u8]) -> anyhow::Result<()>;

    /// The account's picture, if it has set one.
    fn avatar(&self, id: &str) -> anyhow::Result<Option<Vec<u8>>>;
}

/// The store, whichever it is.
pub trait Store: AccountStore + Send + Sync {
    /// Per durable channel, its next seq and newest `recent` messages; the pending schedules.
    /// Called once, at start, before anything is recorded.
    fn load(&self, recent: usize) -> anyhow::Result<Loaded>;

    /// Keeps `change`, now or soon; never waits.
    fn record(&self, change: Change);

    /// Up to `limit` messages of `channel` before `before`, oldest first. Blocks: call it
    /// from a blocking task.
    fn page(&self, channel: Channel, before: u64, limit: usize)
    -> anyhow::Result<Vec<ChatMessage>>;

    /// Message `seq` of `channel`, if it is kept (`{"delete": SEQ}` of one older than the
    /// hub holds). Blocks: call it from a blocking task. A change recorded but not yet written
    /// may not show: [`Store::flush`] first to be sure.
    fn message(&self, channel: Channel, seq: u64) -> anyhow::Result<Option<ChatMessage>> {
        let page = self.page(channel, seq.saturating_add(1), 1)?;
        Ok(page.into_iter().find(|message| message.seq == seq))
    }

    /// Writes everything recorded so far; waits up to `limit`. Says whether all was written.
    fn flush(&self, limit: Duration) -> bool;

    /// Writes everything recorded so far and lets go of the file (the server is stopping);
    /// nothing can be recorded after. Waits up to `limit`; says whether all was written.
    fn close(&self, limit: Duration) -> bool {
        self.flush(limit)
    }

    fn health(&self) -> StoreHealth;

    /// Lets go of the store as a process that crashed would: nothing more is written and no
    /// reservation is brought back. For the tests of what a crash leaves behind.
    #[cfg(test)]
    fn abandon(self: Box<Self>) {
        std::mem::forget(self);
    }
}

/// `--database memory`: history for as long as the process runs, `--history-keep` per channel.
pub struct MemoryStore {
    keep: usize,
    channels: Mutex<HashMap<Channel, VecDeque<Arc<ChatMessage>>>>,
    accounts: Mutex<MemoryAccounts>,
}

#[derive(Default)]
struct MemoryAccounts {
    /// By id.
    accounts: HashMap<String, StoredAccount>,
    /// Token hash → (account id, last used).
    sessions: HashMap<[u8; 32], (String, i64)>,
    rooms: Vec<StoredRoom>,
    /// Account id → its picture (PNG).
    avatars: HashMap<String, Arc<[u8]>>,
}

impl MemoryAccounts {
    fn by_username(&self, username: &str) -> Option<&StoredAccount> {
        self.accounts.values().find(|account| account.username.eq_ignore_ascii_case(username))
    }
}

impl MemoryStore {
    pub fn new(keep: usize) -> MemoryStore {
        MemoryStore { keep, channels: Mutex::default(), accounts: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Channel, VecDeque<Arc<ChatMessage>>>> {
        self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn forget(&self, channel: Channel, seq: u64) {
        if let Some(kept) = self.lock().get_mut(&channel) {
            kept.retain(|message| message.seq != seq);
        }
    }

    fn keep(&self, message: Arc<ChatMessage>) {
        let mut channels = self.lock();
        let kept = channels.entry(message.channel).or_default();
        kept.push_back(message);
        while kept.len() > self.keep {
            kept.pop_front();
        }
    }
}

impl MemoryStore {
    fn accounts(&self) -> MutexGuard<'_, MemoryAccounts> {
        self.accounts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl AccountStore for MemoryStore {
    fn create_account(&self, account: &StoredAccount) -> Result<(), CreateAccountError> {
        let mut accounts = self.accounts();
        if accounts.by_username(&account.username).is_some() {
            return Err(CreateAccountError::Taken);
        }
        accounts.accounts.insert(account.id.clone(), account.clone());
        Ok(())
    }

    fn account_by_username(&self, username: &str) -> anyhow::Result<Option<StoredAccount>> {
        Ok(self.accounts().by_username(username).cloned())
    }

    fn account_by_id(&self, id: &str) -> anyhow::Result<Option<StoredAccount>> {
        Ok(self.accounts().accounts.get(id).cloned())
    }

    fn set_name(&self, id: &str, name: &str) -> anyhow::Result<()> {
        if let Some(account) = self.accounts().accounts.get_mut(id) {
            account.name = name.to_owned();
        }
        Ok(())
    }

    fn set_password_hash(&self, id: &str, hash: &str, keep: &[u8; 32]) -> anyhow::Result<()> {
        let mut accounts = self.accounts();
        if let Some(account) = accounts.accounts.get_mut(id) {
            account.password_hash = hash.to_owned();
        }
        accounts.sessions.retain(|token, (account, _)| account != id || token == keep);
        Ok(())
    }

    fn create_session(
        &self,
        token_hash: &[u8; 32],
        account: &str,
        now_ms: i64,
        idle_ms: i64,
    ) -> anyhow::Result<()> {
        let mut accounts = self.accounts();
        accounts
            .sessions
            .retain(|_, (owner, used_ms)| owner != account || now_ms - *used_ms <= idle_ms);
        accounts.sessions.insert(*token_hash, (account.to_owned(), now_ms));
        Ok(())
    }

    fn session_account(
        &self,
        token_hash: &[u8; 32],
        now_ms: i64,
        idle_ms: i64,
    ) -> anyhow::Result<Option<StoredAccount>> {
        let mut accounts = self.accounts();
        let Some((account, used_ms)) = accounts.sessions.get_mut(token_hash) else {
            return Ok(None);
        };
        if now_ms - *used_ms > idle_ms {
            accounts.sessions.remove(token_hash);
            return Ok(None);
        }
        *used_ms = now_ms;
        let account = account.clone();
        Ok(accounts.accounts.get(&account).cloned())
    }

    fn delete_session(&self, token_hash: &[u8; 32]) -> anyhow::Result<()> {
        self.accounts().sessions.remove(token_hash);
        Ok(())
    }

    fn create_room(&self, room: &StoredRoom) -> Result<(), CreateAccountError> {
        let mut accounts = self.accounts();
        if accounts.rooms.iter().any(|kept| kept.name == room.name) {
            return Err(CreateAccountError::Taken);
        }
        accounts.rooms.push(room.clone());
        Ok(())
    }

    fn set_avatar(&self, id: &str, png: &[u8]) -> anyhow::Result<()> {
        self.accounts().avatars.insert(id.to_owned(), png.into());
        Ok(())
    }

    fn avatar(&self, id: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.accounts().avatars.get(id).map(|png| png.to_vec()))
    }

    fn rooms(&self) -> anyhow::Result<Vec<StoredRoom>> {
        Ok(self.accounts().rooms.clone())
    }
}

impl Store for MemoryStore {
    fn load(&self, _recent: usize) -> anyhow::Result<Loaded> {
        Ok(Loaded::default())
    }

    fn record(&self, change: Change) {
        match change {
            Change::Message(message) | Change::Delivered { message: Some(message), .. } => {
                self.keep(message)
            }
            Change::Firing { written, .. } => {
                let _ = written.send(true);
            }
            Change::Deleted { channel, seq } => self.forget(channel, seq),
            Change::Schedule(_) | Change::Delivered { message: None, .. } => {}
        }
    }

    fn page(
        &self,
        channel: Channel,
        before: u64,
        limit: usize,
    ) -> anyhow::Result<Vec<ChatMessage>> {
        let channels = self.lock();
        let Some(kept) = channels.get(&channel) else { return Ok(Vec::new()) };
        let end = kept.partition_point(|message| message.seq < before);
        let start = end.saturating_sub(limit);
        Ok(kept
            .range(start..end)
            .map(|message| {
                ChatMessage::new(
                    message.channel,
                    message.seq,
                    message.author.clone(),
                    message.body.clone(),
                    message.at_ms,
                    message.late,
                )
            })
            .collect())
    }

    fn flush(&self, _limit: Duration) -> bool {
        true
    }

    fn health(&self) -> StoreHealth {
        StoreHealth::Ok
    }
}

/// What every [`AccountStore`] must do; each implementation's tests run it.
#[cfg(test)]
pub(crate) fn check_account_store(store: &dyn AccountStore) {
    const DAY: i64 = 24 * 3600 * 1000;
    let ada = StoredAccount {
        id: "0123456789abcdef0123456789abcdef".into(),
        username: "ada".into(),
        name: "ada".into(),
        password_hash: "$argon2id$...".into(),
    };
    store.create_account(&ada).unwrap();
    let shouting = StoredAccount { id: "f".repeat(32), username: "ADA".into(), ..ada.clone() };
    assert!(matches!(store.create_account(&shouting), Err(CreateAccountError::Taken)));
    assert_eq!(store.account_by_username("AdA").unwrap().as_ref(), Some(&ada));
    assert_eq!(store.account_by_id(&ada.id).unwrap().as_ref(), Some(&ada));
    assert_eq!(store.account_by_username("bob").unwrap(), None);
    store.set_name(&ada.id, "Ada Lovelace").unwrap();
    assert_eq!(store.account_by_id(&ada.id).unwrap().unwrap().name, "Ada Lovelace");
    assert_eq!(store.avatar(&ada.id).unwrap(), None);
    store.set_avatar(&ada.id, b"first").unwrap();
    store.set_avatar(&ada.id, b"second").unwrap();
    assert_eq!(store.avatar(&ada.id).unwrap().as_deref(), Some(&b"second"[..]));

    let (first, second, third) = ([1; 32], [2; 32], [3; 32]);
    store.create_session(&first, &ada.id, 0, 30 * DAY).unwrap();
    store.create_session(&second, &ada.id, 0, 30 * DAY).unwrap();
    let found = store.session_account(&first, 29 * DAY, 30 * DAY).unwrap();
    assert_eq!(found.map(|account| account.id), Some(ada.id.clone()));
    // Used on day 29, so it lasts until day 59; the second, unused since day 0, has ended.
    assert!(store.session_account(&first, 58 * DAY, 30 * DAY).unwrap().is_some());
    assert!(store.session_account(&second, 31 * DAY, 30 * DAY).unwrap().is_none());
    assert!(store.session_account(&[9; 32], 0, 30 * DAY).unwrap().is_none());

    store.create_session(&third, &ada.id, 58 * DAY, 30 * DAY).unwrap();
    store.set_password_hash(&ada.id, "$argon2id$new", &third).unwrap();
    assert_eq!(store.account_by_id(&ada.id).unwrap().unwrap().password_hash, "$argon2id$new");
    assert!(store.session_account(&first, 58 * DAY, 30 * DAY).unwrap().is_none(), "revoked");
    assert!(store.session_account(&third, 58 * DAY, 30 * DAY).unwrap().is_some(), "kept");
    store.delete_session(&third).unwrap();
    assert!(store.session_account(&third, 58 * DAY, 30 * DAY).unwrap().is_none());

    let room = StoredRoom { name: "rust".into(), topic: "t".into(), owner: ada.id, created_ms: 1 };
    store.create_room(&room).unwrap();
    assert!(matches!(store.create_room(&room), Err(CreateAccountError::Taken)));
    assert_eq!(store.rooms().unwrap(), [room]);
}

/// What every [`Store`] that keeps messages on disk must do; each implementation's tests run
/// these, each with an `open` that opens a new database of its own again, as a restart would.
#[cfg(test)]
pub(crate) mod store_checks {
    use super::*;
    use crate::writer::SEQ_RESERVE;

    pub(crate) fn message(seq: u64, text: &str) -> Change {
        let body = Body::Text(text.into());
        Change::Message(Arc::new(ChatMessage::new(Channel::Feed, seq, "a".into(), body, 7, false)))
    }

    fn schedule(id: u64) -> StoredSchedule {
        let body = Body::Text(format!("s{id}"));
        StoredSchedule {
            id,
            due_ms: 1_000 * id as i64,
            channel: Channel::Feed,
            author: Author { id: "a".into(), name: Some("Ada".into()) },
            body,
        }
    }

    fn seqs(messages: &[ChatMessage]) -> Vec<u64> {
        messages.iter().map(|message| message.seq).collect()
    }

    /// Messages 1, 2 and 3 of the feed ("m1", "m2", "m3").
    fn record_three(store: &dyn Store) {
        for seq in 1..=3 {
            store.record(message(seq, &format!("m{seq}")));
        }
    }

    pub(crate) fn messages_and_seqs_survive_a_clean_close(open: &dyn Fn() -> Box<dyn Store>) {
        let store = open();
        let loaded = store.load(10).unwrap();
        assert_eq!(loaded.channels[0].1, 1, "a new database starts at seq 1");
        record_three(&*store);
        assert!(store.close(Duration::from_secs(5)));
        let store = open();
        let loaded = store.load(2).unwrap();
        let (channel, next, recent) = &loaded.channels[0];
        assert_eq!((*channel, *next), (Channel::Feed, 4), "no gap after a clean close");
        assert_eq!(seqs(recent), [2, 3]);
        assert_eq!(recent[1].body, Body::Text("m3".into()));
        assert_eq!((recent[1].at_ms, recent[1].late, &*recent[1].author.id), (7, false, "a"));
        assert_eq!(seqs(&store.page(Channel::Feed, 3, 10).unwrap()), [1, 2]);
        assert_eq!(seqs(&store.page(Channel::Feed, 4, 1).unwrap()), [3]);
        assert!(store.page(Channel::Room(1), 4, 10).unwrap().is_empty());
    }

    pub(crate) fn a_deleted_message_stays_deleted_and_its_seq_is_not_given_again(
        open: &dyn Fn() -> Box<dyn Store>,
    ) {
        let store = open();
        store.load(10).unwrap();
        record_three(&*store);
        // In the same batch as the message it takes back, and after it was written.
        store.record(Change::Deleted { channel: Channel::Feed, seq: 3 });
        assert!(store.flush(Duration::from_secs(5)));
        store.record(Change::Deleted { channel: Channel::Feed, seq: 1 });
        assert!(store.close(Duration::from_secs(5)));
        let store = open();
        let loaded = store.load(10).unwrap();
        let (_, next, recent) = &loaded.channels[0];
        assert_eq!(*next, 4);
        assert_eq!(seqs(recent), [2]);
        assert_eq!(store.page(Channel::Feed, 4, 10).unwrap().len(), 1);
    }

    pub(crate) fn one_message_is_found_by_its_channel_and_seq_once_written(
        open: &dyn Fn() -> Box<dyn Store>,
    ) {
        let store = open();
        store.load(10).unwrap();
        record_three(&*store);
        assert!(store.flush(Duration::from_secs(5)));
        let found = store.message(Channel::Feed, 2).unwrap().expect("written");
        assert_eq!((found.seq, &*found.author.id, found.body), (2, "a", Body::Text("m2".into())));
        assert!(store.message(Channel::Feed, 4).unwrap().is_none(), "never said");
        assert!(store.message(Channel::named("x"), 2).unwrap().is_none(), "another channel");
        assert!(store.message(Channel::Room(1), 2).unwrap().is_none(), "rooms are not kept");
        store.record(Change::Deleted { channel: Channel::Feed, seq: 2 });
        assert!(store.flush(Duration::from_secs(5)));
        assert!(store.message(Channel::Feed, 2).unwrap().is_none(), "deleted");
    }

    pub(crate) fn after_a_crash_seqs_go_on_past_the_reservation(open: &dyn Fn() -> Box<dyn Store>) {
        let store = open();
        store.load(10).unwrap();
        store.record(message(1, "m1"));
        assert!(store.flush(Duration::from_secs(5)));
        // No clean close: the process "dies" with its reservation still ahead.
        store.abandon();
        let loaded = open().load(10).unwrap();
        assert_eq!(loaded.channels[0].1, 2 + SEQ_RESERVE);
        assert_eq!(loaded.channels[0].2.len(), 1);
    }

    pub(crate) fn a_schedule_is_kept_until_delivered_and_an_interrupted_one_is_settled(
        open: &dyn Fn() -> Box<dyn Store>,
    ) {
        let store = open();
        store.load(10).unwrap();
        for id in 1..=3 {
            store.record(Change::Schedule(schedule(id)));
        }
        let (written, marked) = oneshot::channel();
        store.record(Change::Firing { id: 2, written });
        store.record(Change::Firing { id: 3, written: oneshot::channel().0 });
        store.record(Change::Delivered { id: 3, message: None });
        assert!(store.flush(Duration::from_secs(5)));
        assert_eq!(marked.blocking_recv(), Ok(true));
        assert!(store.close(Duration::from_secs(5)));
        let store = open();
        let loaded = store.load(10).unwrap();
        assert_eq!(loaded.schedules.iter().map(|s| s.id).collect::<Vec<_>>(), [1]);
        assert_eq!(loaded.schedules[0].author, schedule(1).author);
        assert_eq!(
            (loaded.schedules[0].due_ms, &loaded.schedules[0].body),
            (1_000, &schedule(1).body)
        );
        assert_eq!(loaded.interrupted.iter().map(|s| s.id).collect::<Vec<_>>(), [2]);
        assert!(store.close(Duration::from_secs(5)));
        // Settled: not interrupted a second time.
        let loaded = open().load(10).unwrap();
        assert!(loaded.interrupted.is_empty());
        assert_eq!(loaded.schedules.len(), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_store_keeps_accounts_and_sessions() {
        check_account_store(&MemoryStore::new(1));
    }

    fn message(seq: u64) -> Arc<ChatMessage> {
        Arc::new(ChatMessage::new(
            Channel::Feed,
            seq,
            "a".into(),
            Body::Text(seq.to_string()),
            0,
            false,
        ))
    }

    #[test]
    fn the_memory_store_keeps_the_newest_and_pages_back() {
        let store = MemoryStore::new(5);
        for seq in 1..=8 {
            store.record(Change::Message(message(seq)));
        }
        let seqs = |page: Vec<ChatMessage>| page.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(store.page(Channel::Feed, 9, 3).unwrap()), [6, 7, 8]);
        assert_eq!(seqs(store.page(Channel::Feed, 6, 10).unwrap()), [4, 5]);
        assert_eq!(seqs(store.page(Channel::Room(1), 6, 10).unwrap()), Vec::<u64>::new());
        store.record(Change::Deleted { channel: Channel::Feed, seq: 7 });
        assert_eq!(seqs(store.page(Channel::Feed, 9, 3).unwrap()), [5, 6, 8]);
    }

    #[test]
    fn the_memory_store_finds_one_message_by_its_seq() {
        let store = MemoryStore::new(5);
        for seq in 1..=8 {
            store.record(Change::Message(message(seq)));
        }
        let found = store.message(Channel::Feed, 6).unwrap().expect("kept");
        assert_eq!((found.seq, &*found.author.id), (6, "a"));
        assert!(store.message(Channel::Feed, 2).unwrap().is_none(), "no longer kept");
        assert!(store.message(Channel::Feed, 9).unwrap().is_none(), "never said");
        assert!(store.message(Channel::named("x"), 6).unwrap().is_none(), "another channel");
        store.record(Change::Deleted { channel: Channel::Feed, seq: 6 });
        assert!(store.message(Channel::Feed, 6).unwrap().is_none(), "deleted");
    }
}
