//! Counting connections from the moment they are accepted: the cap on all of them
//! (`--max-connections`), the cap per client address (`--max-connections-per-address`), the
//! WebSocket sessions that a graceful shutdown waits for, and the refusals.
//!
//! Every TCP connection takes a [`Ticket`] at `accept`, before a byte is read: an idle socket
//! or one that trickles its headers counts like any other, so nobody can hold more than their
//! share of the server's file descriptors. A connection that upgrades carries its ticket into
//! its WebSocket session; dropping the ticket is what closing the connection means here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

/// Refusals are logged at most this often, with how many there were since the last line.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Who a client is, for the per-address caps: its IPv4 address, or the /64 network of its IPv6
/// address (one IPv6 host usually holds a whole /64, so counting single addresses would not
/// count anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddress(IpAddr);

impl ClientAddress {
    pub fn of(ip: IpAddr) -> ClientAddress {
        match ip {
            IpAddr::V4(v4) => ClientAddress(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientAddress(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientAddress(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

impl std::fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a connection was turned away; each is answered over HTTP with a one-line reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` are open.
    ServerFull,
    /// `--max-connections-per-address` are open from this address.
    AddressFull,
}

impl Refusal {
    /// The HTTP status and the one-line reason.
    pub fn answer(self) -> (u16, &'static str) {
        match self {
            Refusal::ServerFull => (503, "too many connections, try again later"),
            Refusal::AddressFull => (429, "too many connections from your address"),
        }
    }
}

#[derive(Default)]
struct Counts {
    open: usize,
    per_address: HashMap<ClientAddress, usize>,
}

pub struct Connections {
    counts: Mutex<Counts>,
    max: usize,
    max_per_address: usize,
    websockets: AtomicUsize,
    all_closed: Notify,
    refused: RefusalCounts,
}

/// One TCP connection's place (or, behind a proxy, one WebSocket's place in its forwarded
/// address's count); given back on drop.
pub struct Ticket {
    connections: Arc<Connections>,
    counts_toward_total: bool,
    address: Option<ClientAddress>,
}

/// One WebSocket session, for `/healthz` and for shutdown to wait on.
pub struct Session(Arc<Connections>);

impl Connections {
    pub fn new(max: usize, max_per_address: usize) -> Arc<Connections> {
        Arc::new(Connections {
            counts: Mutex::default(),
            max,
            max_per_address,
            websockets: AtomicUsize::new(0),
            all_closed: Notify::new(),
            refused: RefusalCounts::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Every change is one increment or decrement: a panic elsewhere cannot leave it torn.
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for a connection just accepted from `address` (`None`: a trusted proxy, whose
    /// clients are counted when they upgrade), unless the server or the address is full.
    pub fn admit(self: &Arc<Self>, address: Option<ClientAddress>) -> Result<Ticket, Refusal> {
        let mut counts = self.lock();
        if counts.open >= self.max {
            return Err(self.refuse(Refusal::ServerFull));
        }
        if let Some(address) = address {
            let from_address = counts.per_address.entry(address).or_default();
            if *from_address >= self.max_per_address {
                return Err(self.refuse(Refusal::AddressFull));
            }
            *from_address += 1;
        }
        counts.open += 1;
        Ok(Ticket { connections: self.clone(), counts_toward_total: true, address })
    }

    /// A place in `address`'s count for a WebSocket that came through a trusted proxy (its
    /// TCP connection is counted already, as the proxy's).
    pub fn admit_forwarded(self: &Arc<Self>, address: ClientAddress) -> Result<Ticket, Refusal> {
        let mut counts = self.lock();
        let from_address = counts.per_address.entry(address).or_default();
        if *from_address >= self.max_per_address {
            drop(counts);
            return Err(self.refuse(Refusal::AddressFull));
        }
        *from_address += 1;
        Ok(Ticket { connections: self.clone(), counts_toward_total: false, address: Some(address) })
    }

    /// Counts a WebSocket session for as long as the returned value lives.
    pub fn session(self: &Arc<Self>) -> Session {
        self.websockets.fetch_add(1, Ordering::AcqRel);
        Session(self.clone())
    }

    fn refuse(&self, refusal: Refusal) -> Refusal {
        self.refused.count(refusal);
        refusal
    }

    /// Open TCP connections, plain HTTP and WebSocket alike.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    /// Open WebSocket sessions.
    pub fn websockets(&self) -> usize {
        self.websockets.load(Ordering::Acquire)
    }

    pub fn refused(&self) -> &RefusalCounts {
        &self.refused
    }

    /// Waits until no WebSocket session is open, up to `limit`; says whether that happened.
    pub async fn wait_all_closed(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.all_closed.notified();
                if self.websockets() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.connections.lock();
        if self.counts_toward_total {
            counts.open -= 1;
        }
        if let Some(address) = self.address
            && let Some(from_address) = counts.per_address.get_mut(&address)
        {
            *from_address -= 1;
            if *from_address == 0 {
                counts.per_address.remove(&address);
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.0.websockets.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// How many connections were turned away or cut off, and why: shown in `/healthz`, and logged
/// at most once per [`REFUSAL_LOG_INTERVAL`] with the counts since the last line, so that a
/// flood of junk connections cannot flood the log too.
#[derive(Default)]
pub struct RefusalCounts {
    server_full: AtomicU64,
    address_full: AtomicU64,
    header_timeouts: AtomicU64,
    accept_errors: AtomicU64,
    last_logged: Mutex<Option<(Instant, RefusalTotals)>>,
}

/// A snapshot of [`RefusalCounts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RefusalTotals {
    /// Turned away: `--max-connections` were open.
    pub server_full: u64,
    /// Turned away: `--max-connections-per-address` were open from the same address.
    pub address_full: u64,
    /// Closed: headers not complete within `--header-timeout-secs` (or idle that long).
    pub header_timeouts: u64,
    /// `accept` failed (out of file descriptors, usually).
    pub accept_errors: u64,
}

impl RefusalCounts {
    pub fn count(&self, refusal: Refusal) {
        match refusal {
            Refusal::ServerFull => &self.server_full,
            Refusal::AddressFull => &self.address_full,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.log();
    }

    pub fn count_header_timeout(&self) {
        self.header_timeouts.fetch_add(1, Ordering::Relaxed);
        self.log();
    }

    pub fn count_accept_error(&self, error: &std::io::Error) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%error, "accept failed");
        self.log();
    }

    pub fn totals(&self) -> RefusalTotals {
        RefusalTotals {
            server_full: self.server_full.load(Ordering::Relaxed),
            address_full: self.address_full.load(Ordering::Relaxed),
            header_timeouts: self.header_timeouts.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
        }
    }

    /// One warning line per interval at most, counting what happened since the previous one.
    fn log(&self) {
        let now = Instant::now();
        let Ok(mut last) = self.last_logged.try_lock() else { return };
        let since = match *last {
            Some((at, _)) if now.duration_since(at) < REFUSAL_LOG_INTERVAL => return,
            Some((_, totals)) => totals,
            None => RefusalTotals::default(),
        };
        let totals = self.totals();
        *last = Some((now, totals));
        drop(last);
        tracing::warn!(
            server_full = totals.server_full - since.server_full,
            address_full = totals.address_full - since.address_full,
            header_timeouts = totals.header_timeouts - since.header_timeouts,
            accept_errors = totals.accept_errors - since.accept_errors,
            "connections refused or timed out since the last report"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> ClientAddress {
        ClientAddress::of(text.parse().unwrap())
    }

    #[test]
    fn caps_the_total_and_each_address() {
        let connections = Connections::new(3, 2);
        let a1 = connections.admit(Some(ip("127.0.0.1"))).unwrap();
        let _a2 = connections.admit(Some(ip("127.0.0.1"))).unwrap();
        assert_eq!(connections.admit(Some(ip("127.0.0.1"))).err(), Some(Refusal::AddressFull));
        let _b = connections.admit(Some(ip("127.0.0.2"))).unwrap();
        assert_eq!(connections.admit(Some(ip("127.0.0.3"))).err(), Some(Refusal::ServerFull));
        drop(a1);
        assert_eq!(connections.open(), 2);
        let _a3 = connections.admit(Some(ip("127.0.0.1"))).unwrap();
        let totals = connections.refused().totals();
        assert_eq!((totals.server_full, totals.address_full), (1, 1));
    }

    #[test]
    fn a_forwarded_address_counts_only_toward_its_address() {
        let connections = Connections::new(1, 1);
        let _proxy = connections.admit(None).unwrap();
        let _client = connections.admit_forwarded(ip("10.0.0.1")).unwrap();
        assert_eq!(connections.admit_forwarded(ip("10.0.0.1")).err(), Some(Refusal::AddressFull));
        assert_eq!(connections.open(), 1);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(ip("2001:db8::1"), ip("2001:db8::ffff:1"));
        assert_ne!(ip("2001:db8::1"), ip("2001:db8:0:1::1"));
        assert_eq!(ip("::ffff:127.0.0.1"), ip("127.0.0.1"));
    }
}
