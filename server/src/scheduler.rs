//! Scheduled messages: one timer task over every pending schedule, in order of when they are
//! due, delivering each to the channel it was sent in.
//!
//! A schedule outlives its sender's connection (the protocol delivers it to whoever is in the
//! channel then), so what one client may leave behind is capped three ways: per connection
//! (`--max-scheduled`), per client address, all its connections together
//! (`--max-scheduled-per-address`, so one address cannot take the server-wide capacity from
//! everyone), and in the whole server (`--max-scheduled-total`).
//!
//! Delivery is paced: at most `--schedule-delivery-rate` a second, however many came due at
//! once. Ten thousand schedules set for the same second then arrive over minutes instead of
//! landing in every reader's queue together and evicting readers that keep up with normal chat.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::connections::ClientAddress;
use crate::frame::Frame;
use crate::hub::{Channel, Hub};

/// The caps and the pace, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleLimits {
    pub per_connection: usize,
    pub per_address: usize,
    pub total: usize,
    /// Deliveries per second at most.
    pub delivery_rate: f64,
}

/// One connection's count of pending schedules.
#[derive(Default, Clone)]
pub struct PendingCount(Arc<AtomicUsize>);

struct Pending {
    channel: Channel,
    frame: Frame,
    sender: PendingCount,
    address: ClientAddress,
}

#[derive(Default)]
struct State {
    /// By due time, then by arrival: two due at once go in the order they were scheduled.
    queue: BTreeMap<(Instant, u64), Pending>,
    next_id: u64,
    per_address: HashMap<ClientAddress, usize>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the timer task when a schedule earlier than all others arrives.
    changed: Notify,
    limits: ScheduleLimits,
}

pub struct Scheduler {
    shared: Arc<Shared>,
    timer: tokio::task::JoinHandle<()>,
}

impl Scheduler {
    /// Starts the timer task, which delivers through `hub`.
    pub fn start(hub: Arc<Hub>, limits: ScheduleLimits) -> Scheduler {
        let shared = Arc::new(Shared { state: Mutex::default(), changed: Notify::new(), limits });
        let timer = tokio::spawn(run_timer(shared.clone(), hub));
        Scheduler { shared, timer }
    }

    /// Delivers `frame` to `channel` after `delay`, or says why not (the error frame's text).
    pub fn schedule(
        &self,
        sender: &PendingCount,
        address: ClientAddress,
        delay: Duration,
        channel: Channel,
        frame: Frame,
    ) -> Result<(), String> {
        let limits = &self.shared.limits;
        let mut state = self.shared.lock();
        if sender.0.load(Ordering::Relaxed) >= limits.per_connection {
            return Err(format!(
                "schedule: you already have {} scheduled messages waiting",
                limits.per_connection
            ));
        }
        let from_address = state.per_address.get(&address).copied().unwrap_or(0);
        if from_address >= limits.per_address {
            return Err(format!(
                "schedule: your address already has {} scheduled messages waiting",
                limits.per_address
            ));
        }
        if state.queue.len() >= limits.total {
            return Err("schedule: the server has too many scheduled messages waiting".into());
        }
        sender.0.fetch_add(1, Ordering::Relaxed);
        *state.per_address.entry(address).or_default() += 1;
        let due = Instant::now() + delay;
        let id = state.next_id;
        state.next_id += 1;
        let earliest = state.queue.keys().next().is_none_or(|&(first, _)| due < first);
        state.queue.insert((due, id), Pending { channel, frame, sender: sender.clone(), address });
        drop(state);
        if earliest {
            self.shared.changed.notify_one();
        }
        Ok(())
    }

    /// Schedules waiting in the whole server.
    pub fn pending(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Stops the timer; whatever is pending is dropped with the server.
    pub fn stop(&self) {
        self.timer.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is a map insert or remove: a panic elsewhere cannot leave it torn.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the first schedule if it is due at `now`; otherwise says when the first is due.
    fn take_due(&self, now: Instant) -> Result<Pending, Option<Instant>> {
        let mut state = self.lock();
        let Some(entry) = state.queue.first_entry() else { return Err(None) };
        let due = entry.key().0;
        if due > now {
            return Err(Some(due));
        }
        let pending = entry.remove();
        if let Some(count) = state.per_address.get_mut(&pending.address) {
            *count -= 1;
            if *count == 0 {
                state.per_address.remove(&pending.address);
            }
        }
        pending.sender.0.fetch_sub(1, Ordering::Relaxed);
        Ok(pending)
    }
}

/// The one timer: sleeps until the first schedule is due (or an earlier one arrives), delivers
/// it, and waits out the pace before the next.
async fn run_timer(shared: Arc<Shared>, hub: Arc<Hub>) {
    let rate = shared.limits.delivery_rate;
    let spacing = if rate > 0.0 && rate.is_finite() {
        Duration::from_secs_f64(1.0 / rate)
    } else {
        Duration::ZERO
    };
    let mut next_delivery = Instant::now();
    loop {
        let changed = shared.changed.notified();
        match shared.take_due(Instant::now().max(next_delivery)) {
            Ok(pending) => {
                tokio::time::sleep_until(next_delivery).await;
                hub.deliver(pending.channel, pending.frame);
                next_delivery = Instant::now().max(next_delivery) + spacing;
            }
            Err(Some(due)) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.max(next_delivery)) => {}
                    _ = changed => {}
                }
            }
            Err(None) => changed.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use std::collections::VecDeque;

    fn limits(per_connection: usize, per_address: usize, total: usize) -> ScheduleLimits {
        ScheduleLimits { per_connection, per_address, total, delivery_rate: 10.0 }
    }

    fn address(last: u8) -> ClientAddress {
        ClientAddress::of([127, 0, 0, last].into())
    }

    /// A hub with one member in the feed, and that member's queue.
    fn hub_with_reader() -> (Arc<Hub>, Arc<Outbox>) {
        let hub = Arc::new(Hub::default());
        let outbox = Arc::new(Outbox::new(10_000));
        let (evict, _) = tokio::sync::oneshot::channel();
        assert!(hub.join(uuid::Uuid::new_v4(), outbox.clone(), evict));
        (hub, outbox)
    }

    fn received(outbox: &Outbox) -> Vec<String> {
        let mut batch = VecDeque::new();
        outbox.take_all(&mut batch);
        batch.iter().map(|frame| frame.payload().to_owned()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn delivers_in_due_order_once_each() {
        let (hub, outbox) = hub_with_reader();
        let scheduler = Scheduler::start(hub, limits(10, 10, 10));
        let mine = PendingCount::default();
        for (text, secs) in [("c", 3), ("a", 1), ("b", 2)] {
            let frame = Frame::text(text);
            scheduler
                .schedule(&mine, address(1), Duration::from_secs(secs), Channel::Feed, frame)
                .unwrap();
        }
        assert_eq!(scheduler.pending(), 3);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(received(&outbox), ["a"]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(received(&outbox), ["b", "c"]);
        assert_eq!(scheduler.pending(), 0);
        assert_eq!(mine.0.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pile_due_at_once_is_paced() {
        let (hub, outbox) = hub_with_reader();
        let scheduler = Scheduler::start(hub, limits(100, 100, 100));
        let mine = PendingCount::default();
        for n in 0..50 {
            let frame = Frame::text(&n.to_string());
            scheduler
                .schedule(&mine, address(1), Duration::from_secs(1), Channel::Feed, frame)
                .unwrap();
        }
        // 10 a second: after the due time and one more second, about eleven are out.
        tokio::time::sleep(Duration::from_millis(2050)).await;
        let first = received(&outbox);
        assert!((10..=12).contains(&first.len()), "{} delivered", first.len());
        tokio::time::sleep(Duration::from_secs(10)).await;
        let all: Vec<String> = first.into_iter().chain(received(&outbox)).collect();
        assert_eq!(all, (0..50).map(|n| n.to_string()).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn caps_per_connection_per_address_and_in_total() {
        let (hub, _outbox) = hub_with_reader();
        let scheduler = Scheduler::start(hub, limits(2, 3, 5));
        let later = Duration::from_secs(60);
        let schedule = |count: &PendingCount, last: u8| {
            scheduler.schedule(count, address(last), later, Channel::Feed, Frame::text("x"))
        };
        let (one, two) = (PendingCount::default(), PendingCount::default());
        assert!(schedule(&one, 1).is_ok() && schedule(&one, 1).is_ok());
        assert!(schedule(&one, 1).unwrap_err().contains("you already have 2"));
        assert!(schedule(&two, 1).is_ok());
        assert!(schedule(&two, 1).unwrap_err().contains("your address already has 3"));
        let (three, four) = (PendingCount::default(), PendingCount::default());
        assert!(schedule(&three, 2).is_ok() && schedule(&three, 2).is_ok());
        assert!(schedule(&four, 3).unwrap_err().contains("the server has too many"));
        assert_eq!(scheduler.pending(), 5);
    }
}
