//! What the sidecar counted since it started, served as `/metrics` (the Prometheus text format)
//! on its health listener, beside `/healthz` and `/readyz`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters the router adds to; the gauges are read from its state when asked.
#[derive(Debug, Default)]
pub struct Counters {
    /// Publishes of the plugin answered with the sequence the bus gave them.
    pub published: AtomicU64,
    /// Publishes of the plugin answered once kept in the outbox (the bus did not take them).
    pub kept: AtomicU64,
    /// Publishes of the plugin refused (outside the grants, a bad topic, refused by the bus, the
    /// outbox full).
    pub refused: AtomicU64,
    /// Publishes of the outbox the bus took.
    pub forwarded: AtomicU64,
    /// Publishes of the outbox the bus refused for what they carry, and so dropped.
    pub dropped: AtomicU64,
    /// Deliveries handed to the plugin, redeliveries included.
    pub delivered: AtomicU64,
    /// Of them, deliveries of a message delivered before.
    pub redelivered: AtomicU64,
    /// Deliveries the plugin acked, and nacked.
    pub acked: AtomicU64,
    pub nacked: AtomicU64,
    /// Health checks the plugin answered unhealthy or left unanswered.
    pub health_failed: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What `/metrics` shows at one moment.
pub struct Snapshot<'a> {
    pub counters: &'a Counters,
    /// Times the sidecar moved to another Bus API replica.
    pub replica_moves: u64,
    /// Times reading the plugin's session waited for the publish budget.
    pub budget_waits: u64,
    /// Now: publishes in the outbox, publishes taken from the plugin and not answered yet,
    /// deliveries handed to the plugin and not acked or nacked yet.
    pub outbox: u64,
    pub publishing: u64,
    pub in_flight: u64,
}

/// `/metrics`' body.
pub fn prometheus(s: &Snapshot<'_>) -> String {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let c = s.counters;
    crate::http::prometheus(&[
        (
            "tether_sidecar_publishes_sent_total",
            "counter",
            "Publishes of the plugin answered with the sequence the bus gave them.",
            get(&c.published),
        ),
        (
            "tether_sidecar_publishes_kept_total",
            "counter",
            "Publishes of the plugin answered once kept in the outbox (the bus did not take them).",
            get(&c.kept),
        ),
        (
            "tether_sidecar_publishes_refused_total",
            "counter",
            "Publishes of the plugin refused.",
            get(&c.refused),
        ),
        (
            "tether_sidecar_outbox_forwarded_total",
            "counter",
            "Publishes of the outbox the bus took.",
            get(&c.forwarded),
        ),
        (
            "tether_sidecar_outbox_dropped_total",
            "counter",
            "Publishes of the outbox the bus refused for what they carry, dropped.",
            get(&c.dropped),
        ),
        (
            "tether_sidecar_outbox_publishes",
            "gauge",
            "Publishes waiting in the outbox.",
            s.outbox,
        ),
        (
            "tether_sidecar_publishes_in_flight",
            "gauge",
            "Publishes taken from the plugin and not answered yet.",
            s.publishing,
        ),
        (
            "tether_sidecar_publish_budget_waits_total",
            "counter",
            "Times the sidecar stopped reading the plugin's session until the bus answered (16 MiB of publishes unanswered).",
            s.budget_waits,
        ),
        (
            "tether_sidecar_deliveries_total",
            "counter",
            "Deliveries handed to the plugin, redeliveries included.",
            get(&c.delivered),
        ),
        (
            "tether_sidecar_redeliveries_total",
            "counter",
            "Deliveries of a message delivered before.",
            get(&c.redelivered),
        ),
        (
            "tether_sidecar_deliveries_in_flight",
            "gauge",
            "Deliveries handed to the plugin and not acked or nacked yet.",
            s.in_flight,
        ),
        (
            "tether_sidecar_acks_total",
            "counter",
            "Deliveries the plugin acked.",
            get(&c.acked),
        ),
        (
            "tether_sidecar_nacks_total",
            "counter",
            "Deliveries the plugin nacked.",
            get(&c.nacked),
        ),
        (
            "tether_sidecar_health_checks_failed_total",
            "counter",
            "Health checks the plugin answered unhealthy or left unanswered.",
            get(&c.health_failed),
        ),
        (
            "tether_sidecar_bus_replica_moves_total",
            "counter",
            "Times the sidecar moved to another Bus API replica.",
            s.replica_moves,
        ),
    ])
}
