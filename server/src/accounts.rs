//! Accounts: the rules for usernames, passwords and display names, password hashing, session
//! tokens, and the login rate limit. The HTTP side is in [`api`](crate::api); what is kept is
//! behind [`AccountStore`](crate::store::AccountStore).
//!
//! - Passwords are kept only as Argon2id hashes (RustCrypto's `argon2`, parameters in
//!   [`ARGON2_PARAMS`]). Hashing runs on the blocking pool, at most `--max-hashing` at once,
//!   so that a flood of logins cannot take every core from the chat.
//! - A session is a random 256-bit token (from the OS, `getrandom`) in a cookie; the store
//!   keeps only its SHA-256, so a copy of the database logs nobody in.
//! - Logins (and sign-ups) are limited per username and per client address, each a token
//!   bucket ([`LoginLimiter`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, Version};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::connections::ClientAddress;
use crate::store::StoredAccount;

/// The cookie that carries the session token.
pub const SESSION_COOKIE: &str = "chatterbox_session";

/// Argon2id with 19 MiB of memory, 2 passes, 1 lane: OWASP's recommended minimum for
/// Argon2id (Password Storage Cheat Sheet), which keeps a login well under 100 ms here.
pub const ARGON2_PARAMS: (u32, u32, u32) = (19 * 1024, 2, 1);

/// Usernames: 3 to 32 of `a-z 0-9 _ -`.
const USERNAME_CHARS: std::ops::RangeInclusive<usize> = 3..=32;
/// Passwords: at least 8 characters, at most 1,024 bytes.
const PASSWORD_MIN_CHARS: usize = 8;
const PASSWORD_MAX_BYTES: usize = 1024;
/// Display names: 1 to 40 characters after trimming.
const NAME_MAX_CHARS: usize = 40;

/// How long a request waits for a hashing slot before it is answered `503`.
const HASH_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// A rule a request broke: the `400`'s reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub &'static str);

/// A username as it is kept: lower case. Letters may be sent in either case.
pub fn username(raw: &str) -> Result<String, Invalid> {
    let username = raw.to_ascii_lowercase();
    if !USERNAME_CHARS.contains(&username.len()) {
        return Err(Invalid("a username is 3 to 32 characters"));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if !username.chars().all(allowed) {
        return Err(Invalid("a username may only have letters a-z, digits, _ and -"));
    }
    Ok(username)
}

/// Checks a new password.
pub fn check_password(password: &str) -> Result<(), Invalid> {
    if password.chars().count() < PASSWORD_MIN_CHARS {
        return Err(Invalid("a password is at least 8 characters"));
    }
    if password.len() > PASSWORD_MAX_BYTES {
        return Err(Invalid("a password is at most 1024 bytes"));
    }
    Ok(())
}

/// A display name as it is kept: trimmed, 1 to 40 characters, with no control characters and
/// no bidirectional overrides or isolates (which could make a name read as someone else's).
pub fn display_name(raw: &str) -> Result<String, Invalid> {
    let name = raw.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > NAME_MAX_CHARS {
        return Err(Invalid("a name is 1 to 40 characters"));
    }
    if hides_text(name) {
        return Err(Invalid("a name may not have control or bidirectional-override characters"));
    }
    Ok(name.to_owned())
}

/// Whether `text` has control characters or bidirectional overrides or isolates.
fn hides_text(text: &str) -> bool {
    let bidi_control = |c: char| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    text.chars().any(|c| c.is_control() || bidi_control(c))
}

/// A named room's name: 1 to 32 of `a-z 0-9 -`.
pub fn room_name(raw: &str) -> Result<String, Invalid> {
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if raw.is_empty() || raw.len() > 32 || !raw.chars().all(valid) {
        return Err(Invalid("a room name is 1 to 32 of a-z, 0-9 and -"));
    }
    // A `{"deleted": {"channel": ...}}` frame names the feed, a random room or a named room.
    if matches!(raw, "feed" | "random") {
        return Err(Invalid("feed and random are not room names"));
    }
    Ok(raw.to_owned())
}

/// A room's topic: trimmed, at most 200 characters, with no control or bidirectional-override
/// characters (empty is allowed).
pub fn room_topic(raw: &str) -> Result<String, Invalid> {
    let topic = raw.trim();
    if topic.chars().count() > 200 {
        return Err(Invalid("a topic is at most 200 characters"));
    }
    if hides_text(topic) {
        return Err(Invalid("a topic may not have control or bidirectional-override characters"));
    }
    Ok(topic.to_owned())
}

/// A fresh account id: 32 lowercase hex digits.
pub fn new_account_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `{"id", "username", "name", "avatar"}`: what `GET /api/me` answers and the `{"me"}` frame
/// carries.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Profile {
    pub id: String,
    pub username: String,
    pub name: String,
    pub avatar: String,
}

impl Profile {
    pub fn of(account: &StoredAccount) -> Profile {
        Profile {
            id: account.id.clone(),
            username: account.username.clone(),
            name: account.name.clone(),
            avatar: format!("/avatars/{}", account.id),
        }
    }
}

/// A session token: 256 random bits. It leaves the server only in the cookie, as 64 hex
/// digits, and is kept only as its SHA-256.
pub struct Token([u8; 32]);

impl Token {
    pub fn generate() -> anyhow::Result<Token> {
        let mut bytes = [0; 32];
        getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
        Ok(Token(bytes))
    }

    /// From the cookie's value; `None` unless it is 64 hex digits.
    pub fn parse(value: &str) -> Option<Token> {
        if value.len() != 64 {
            return None;
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(value.as_bytes().chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Token(bytes))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// What the store keeps.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }
}

/// All hashing slots stayed taken for too long: the request is answered `503`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the server is busy checking passwords; try again in a moment")]
pub struct Busy;

/// Argon2id on the blocking pool, a bounded number at once.
pub struct Hasher {
    slots: Semaphore,
    /// Checked against when the username is unknown, so that the answer takes as long as for
    /// a wrong password.
    decoy: OnceLock<String>,
}

fn argon2() -> Argon2<'static> {
    let (memory_kib, passes, lanes) = ARGON2_PARAMS;
    let params = Params::new(memory_kib, passes, lanes, None).expect("valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Argon2id of `password` with a fresh random salt, in the PHC string format.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0; 16];
    getrandom::fill(&mut salt).map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|error| anyhow::anyhow!("{error}"))?;
    let hash = argon2().hash_password(password.as_bytes(), &salt);
    Ok(hash.map_err(|error| anyhow::anyhow!("hashing failed: {error}"))?.to_string())
}

/// Whether `password` matches `hash` (a PHC string; its own parameters are used).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|parsed| argon2().verify_password(password.as_bytes(), &parsed).is_ok())
}

impl Hasher {
    pub fn new(at_once: usize) -> Hasher {
        Hasher { slots: Semaphore::new(at_once.max(1)), decoy: OnceLock::new() }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let _slot = tokio::time::timeout(HASH_QUEUE_TIMEOUT, self.slots.acquire())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        tokio::task::spawn_blocking(work).await.map_err(|_| Busy)
    }

    /// Hashes a new password.
    pub async fn hash(&self, password: String) -> Result<anyhow::Result<String>, Busy> {
        self.run(move || hash_password(&password)).await
    }

    /// Checks `password` against `hash`; with no hash (an unknown user) against a decoy, so
    /// that both take the same time, and says no.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, Busy> {
        let known = hash.is_some();
        let hash = match hash {
            Some(hash) => hash,
            None => self.decoy(),
        };
        let matches = self.run(move || verify_password(&password, &hash)).await?;
        Ok(known && matches)
    }

    fn decoy(&self) -> String {
        self.decoy
            .get_or_init(|| hash_password("not anybody's password").unwrap_or_default())
            .clone()
    }
}

/// The login rate: a token bucket per username and one per client address.
#[derive(Debug, Clone, Copy)]
pub struct LoginRate {
    pub per_username_burst: u32,
    pub per_username_per_minute: f64,
    pub per_address_burst: u32,
    pub per_address_per_minute: f64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets not touched for this long are full again and forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Sizes past which the maps are swept of full buckets.
const SWEEP_AT: usize = 10_000;

struct Buckets<K> {
    burst: f64,
    per_second: f64,
    buckets: HashMap<K, Bucket>,
}

impl<K: std::hash::Hash + Eq> Buckets<K> {
    fn new(burst: u32, per_minute: f64) -> Buckets<K> {
        Buckets { burst: f64::from(burst), per_second: per_minute / 60.0, buckets: HashMap::new() }
    }

    fn level(&self, bucket: &Bucket, now: Instant) -> f64 {
        let refilled = now.duration_since(bucket.at).as_secs_f64() * self.per_second;
        (bucket.tokens + refilled).min(self.burst)
    }

    fn has_token(&self, key: &K, now: Instant) -> bool {
        self.buckets.get(key).is_none_or(|bucket| self.level(bucket, now) >= 1.0)
    }

    fn take(&mut self, key: K, now: Instant) {
        if self.buckets.len() >= SWEEP_AT {
            let (burst, per_second) = (self.burst, self.per_second);
            self.buckets.retain(|_, bucket| {
                let refilled = now.duration_since(bucket.at).as_secs_f64() * per_second;
                bucket.tokens + refilled < burst && now.duration_since(bucket.at) < FORGET_AFTER
            });
        }
        let level = self.buckets.get(&key).map_or(self.burst, |bucket| self.level(bucket, now));
        self.buckets.insert(key, Bucket { tokens: level - 1.0, at: now });
    }
}

/// Counts login attempts (and sign-ups, which hash too) per username and per address.
pub struct LoginLimiter {
    state: Mutex<(Buckets<String>, Buckets<ClientAddress>)>,
}

impl LoginLimiter {
    pub fn new(rate: LoginRate) -> LoginLimiter {
        let users = Buckets::new(rate.per_username_burst, rate.per_username_per_minute);
        let addresses = Buckets::new(rate.per_address_burst, rate.per_address_per_minute);
        LoginLimiter { state: Mutex::new((users, addresses)) }
    }

    fn lock(&self) -> MutexGuard<'_, (Buckets<String>, Buckets<ClientAddress>)> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one attempt for `username` (if any) from `address`; `false` (and nothing
    /// counted) when either is over its rate.
    pub fn attempt(&self, username: Option<&str>, address: ClientAddress) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        let (users, addresses) = &mut *state;
        let user_ok = username.is_none_or(|username| users.has_token(&username.to_owned(), now));
        if !user_ok || !addresses.has_token(&address, now) {
            return false;
        }
        if let Some(username) = username {
            users.take(username.to_owned(), now);
        }
        addresses.take(address, now);
        true
    }
}

/// What the account endpoints and sessions share.
pub struct Accounts {
    pub hasher: Hasher,
    pub limiter: LoginLimiter,
    pub names: Names,
}

impl Accounts {
    pub fn new(options: &crate::config::AccountOptions) -> Accounts {
        Accounts {
            hasher: Hasher::new(options.hashes_at_once()),
            limiter: LoginLimiter::new(options.login_rate()),
            names: Names::default(),
        }
    }
}

/// Display names of accounts, as they are now: a rename reaches the messages its open
/// connections send next.
#[derive(Default)]
pub struct Names(Mutex<HashMap<String, Arc<str>>>);

impl Names {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<str>>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set(&self, id: &str, name: &str) -> Arc<str> {
        let name: Arc<str> = name.into();
        self.lock().insert(id.to_owned(), name.clone());
        name
    }

    pub fn get(&self, id: &str) -> Option<Arc<str>> {
        self.lock().get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_3_to_32_of_a_few_characters_kept_in_lower_case() {
        assert_eq!(username("Ada_Lovelace-1").unwrap(), "ada_lovelace-1");
        assert_eq!(username(&"a".repeat(32)).unwrap().len(), 32);
        for bad in ["ab", &"a".repeat(33), "ada lovelace", "adä", "ada.l", "", "ada\n"] {
            assert!(username(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn passwords_are_8_characters_to_1024_bytes() {
        assert!(check_password("12345678").is_ok());
        assert!(check_password("ääääääää").is_ok(), "characters, not bytes, count to 8");
        assert!(check_password("1234567").is_err());
        assert!(check_password(&"x".repeat(1024)).is_ok());
        assert!(check_password(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn names_are_trimmed_and_refused_with_controls_or_bidi_overrides() {
        assert_eq!(display_name("  Ada  ").unwrap(), "Ada");
        assert_eq!(display_name(&"é".repeat(40)).unwrap().chars().count(), 40);
        for bad in ["", "   ", &"x".repeat(41), "a\u{7}b", "a\nb", "evil\u{202E}gnp", "x\u{2067}"] {
            assert!(display_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_password_hash_is_argon2id_salted_and_verifies_only_its_password() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert_ne!(hash, hash_password("correct horse").unwrap(), "a fresh salt each time");
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horsE", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[tokio::test]
    async fn an_unknown_user_is_checked_against_a_decoy_and_refused() {
        let hasher = Hasher::new(1);
        assert!(!hasher.verify("whatever1".into(), None).await.unwrap());
        let hash = hash_password("whatever1").unwrap();
        assert!(hasher.verify("whatever1".into(), Some(hash)).await.unwrap());
    }

    #[tokio::test]
    async fn no_more_hashes_run_than_there_are_slots() {
        let hasher = Hasher::new(1);
        let taken = hasher.slots.acquire().await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(200), hasher.hash("x".repeat(8)));
        assert!(waiting.await.is_err(), "hashed while the only slot was taken");
        drop(taken);
        assert!(hasher.hash("x".repeat(8)).await.unwrap().is_ok());
    }

    #[test]
    fn tokens_are_256_random_bits_in_hex_and_kept_as_their_digest() {
        let token = Token::generate().unwrap();
        let hex = token.to_hex();
        assert_eq!(hex.len(), 64);
        let parsed = Token::parse(&hex).unwrap();
        assert_eq!(parsed.digest(), token.digest());
        assert_ne!(Token::generate().unwrap().to_hex(), hex);
        assert!(Token::parse(&hex[1..]).is_none());
        assert!(Token::parse(&"g".repeat(64)).is_none());
    }

    #[test]
    fn the_limiter_counts_per_username_and_per_address() {
        let rate = LoginRate {
            per_username_burst: 2,
            per_username_per_minute: 0.0,
            per_address_burst: 3,
            per_address_per_minute: 0.0,
        };
        let limiter = LoginLimiter::new(rate);
        let here = ClientAddress::of([127, 0, 0, 1].into());
        let there = ClientAddress::of([10, 0, 0, 1].into());
        assert!(limiter.attempt(Some("ada"), here));
        assert!(limiter.attempt(Some("ada"), there));
        assert!(!limiter.attempt(Some("ada"), here), "ada's burst is spent");
        assert!(limiter.attempt(Some("bob"), here));
        assert!(limiter.attempt(Some("cy"), here));
        assert!(!limiter.attempt(Some("dee"), here), "this address's burst is spent");
        assert!(limiter.attempt(Some("dee"), there));
    }
}
