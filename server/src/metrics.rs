//! `GET /metrics`: what an operator graphs and alerts on, in the Prometheus text format
//! (OpenMetrics), through the Prometheus project's own client crate.
//!
//! Two kinds of numbers. Counters of events are kept as they happen, cheaply: one atomic add
//! per message in, per batch written to a socket, per message fanned out (by its number of
//! recipients, not once per recipient), per eviction, and a histogram of the store's batch
//! write times. Everything that is a state (connections open, schedules pending, refusals so
//! far, the store's health) is read when Prometheus scrapes, from the same places `/healthz`
//! reads it, so it can never drift from the truth.

use std::borrow::Cow;
use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Server;
use crate::store::StoreHealth;

/// The counters the server's parts add to as things happen.
#[derive(Clone)]
pub struct Counters {
    /// WebSocket messages received (text, binary, ping; what passes the frame meter).
    pub frames_in: Counter,
    /// Frames written to sockets.
    pub frames_out: Counter,
    /// Chat messages given a seq (published or delivered from a schedule).
    pub messages: Counter,
    /// Copies of chat messages queued for their recipients.
    pub deliveries: Counter,
    /// Connections dropped because their outbound queue was full.
    pub evictions: Counter,
    /// Seconds the store took to write one batch (one transaction).
    pub store_writes: Histogram,
    /// In a cluster: seconds one PUBLISH to Redis took, there and back.
    pub broker_round_trip: Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            messages: Counter::default(),
            deliveries: Counter::default(),
            evictions: Counter::default(),
            // 100 µs to about 1.6 s.
            store_writes: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            // 50 µs to about 0.8 s.
            broker_round_trip: Histogram::new(exponential_buckets(0.00005, 2.0, 15)),
        }
    }
}

/// The registry behind `/metrics`.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Registers `counters`, and the states read from `server` at each scrape. In a cluster
    /// (`node` given) every metric has a `node` label, and the broker's round trip is there.
    pub fn new(counters: &Counters, server: Weak<Server>, node: Option<&str>) -> Metrics {
        let mut registry = match node {
            None => Registry::with_prefix("chatterbox"),
            Some(node) => {
                let label = (Cow::Borrowed("node"), Cow::Owned(node.to_owned()));
                let mut registry =
                    Registry::with_prefix_and_labels("chatterbox", std::iter::once(label));
                registry.register(
                    "broker_round_trip_seconds",
                    "Time for one PUBLISH to Redis, there and back",
                    counters.broker_round_trip.clone(),
                );
                registry
            }
        };
        registry.register("frames_in", "WebSocket messages received", counters.frames_in.clone());
        registry.register("frames_out", "WebSocket frames written", counters.frames_out.clone());
        registry.register("messages", "Chat messages given a seq", counters.messages.clone());
        registry.register(
            "deliveries",
            "Copies of chat messages queued for their recipients",
            counters.deliveries.clone(),
        );
        registry.register(
            "evictions",
            "Connections dropped as slow consumers (outbound queue full)",
            counters.evictions.clone(),
        );
        registry.register(
            "store_write_seconds",
            "Time to write one batch of changes to the store",
            counters.store_writes.clone(),
        );
        registry.register_collector(Box::new(States(server)));
        Metrics { registry }
    }

    /// The text Prometheus scrapes.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The states, read at each scrape.
struct States(Weak<Server>);

impl std::fmt::Debug for States {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("States")
    }
}

impl Collector for States {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(server) = self.0.upgrade() else { return Ok(()) };
        let census = server.hub.census();
        let gauges: [(&str, &str, i64); 7] = [
            ("connections", "Open WebSocket connections", server.connections.websockets() as i64),
            ("sockets", "Open TCP connections of every kind", server.connections.open() as i64),
            ("feed_members", "Connections in the feed", census.feed as i64),
            ("rooms", "Random 1:1 rooms, waiting or paired", census.rooms as i64),
            (
                "scheduled",
                "Scheduled messages not yet delivered",
                server.scheduler.pending() as i64,
            ),
            (
                "store_ok",
                "1 while the store writes, 0 while it fails",
                i64::from(server.store_health() == StoreHealth::Ok),
            ),
            ("up", "1: the server answers", 1),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let refused = server.connections.refused().totals();
        let counters: [(&str, &str, u64); 4] = [
            (
                "refused_server_full",
                "Connections refused: --max-connections reached",
                refused.server_full,
            ),
            (
                "refused_address_full",
                "Connections refused: --max-connections-per-address reached",
                refused.address_full,
            ),
            (
                "header_timeouts",
                "Connections closed: no complete request head in time",
                refused.header_timeouts,
            ),
            (
                "accept_errors",
                "accept() failures (out of file descriptors, usually)",
                refused.accept_errors,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
