//! The Rust plugin SDK of the tether bus.
//!
//! A plugin talks to the bus only through its bus sidecar (`tether sidecar`, on
//! `127.0.0.1:9191` by default). The plugin's author writes callbacks — [`Plugin::on_start`],
//! [`Plugin::on_message`], [`Plugin::on_health_check`], [`Plugin::on_stop`] — and publishes
//! through a cloneable [`Bus`] handle; the SDK does the rest of the `tether.bus.v1`
//! `PluginService` session: it connects (retrying while the sidecar is not up yet), says Hello
//! with the plugin's [`Subscription`]s, answers health checks on their own task, calls
//! `on_message` for each delivery in order and acks (`Ok`) or nacks (`Err`) it, matches publish
//! results to publishes, drains on Stop, SIGTERM or SIGINT, and reconnects when the connection
//! drops.
//!
//! ```no_run
//! use tether_plugin::{Bus, BoxError, Message, Nack, Plugin, Subscription};
//!
//! struct Signals;
//!
//! impl Plugin for Signals {
//!     fn subscriptions(&self) -> Vec<Subscription> {
//!         vec![Subscription::new("orders.*").group("signals")]
//!     }
//!
//!     async fn on_start(&self, bus: &Bus) -> Result<(), BoxError> {
//!         tracing::info!(instance = %bus.instance_id(), "started");
//!         Ok(())
//!     }
//!
//!     async fn on_message(&self, bus: &Bus, msg: Message) -> Result<(), Nack> {
//!         if msg.data.is_empty() {
//!             // Nacked: delivered again in 5 s.
//!             return Err(Nack::new("an empty order").after(std::time::Duration::from_secs(5)));
//!         }
//!         // A refused publish nacks the order (`?` turns any error into a Nack).
//!         let published = bus
//!             .publish_with("signals.buy", msg.data, [("source-topic", msg.topic.as_str())])
//!             .await?;
//!         tracing::info!(sequence = published.sequence, "signalled");
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     // SIDECAR_ADDR and SIDECAR_CONNECT_TIMEOUT from the environment; SIGTERM or SIGINT stop.
//!     match tether_plugin::run(Signals).await {
//!         Ok(()) => std::process::ExitCode::SUCCESS,
//!         Err(e) => {
//!             tracing::error!("{e}");
//!             std::process::ExitCode::FAILURE
//!         }
//!     }
//! }
//! ```
//!
//! What the SDK promises, following the session contract in `bus.proto`:
//! - `on_start` runs once, after the first Welcome; no `on_message` and no health answer
//!   before it returned. An error from it ends [`run`] with [`Error::Start`].
//! - Deliveries are handled in order, one at a time. Health checks are answered apart from
//!   them, so a long `on_message` does not fail them.
//! - Every publish carries an idempotency key (a random one when the caller gives none).
//!   [`Bus::publish`] returns `Ok` once the sidecar accepted the message, which makes it
//!   durable; publishes waiting when the connection drops are sent again after the reconnect.
//! - Acks, nacks and health answers go to the sidecar ahead of the publishes still queued (the
//!   publishes keep their order among themselves), so that they do not wait behind a burst of
//!   publishes and miss their deadlines.
//! - What the plugin publishes is bounded: while the publishes queued or sent and not yet
//!   answered by the sidecar weigh 16 MiB (`PUBLISH_BUDGET`, the sidecar's own budget; a
//!   publish weighs its encoded size in started KiB, as the sidecar counts it), a further publish waits in
//!   [`Bus::publish`] until enough of them are answered (in the order the calls were made; one
//!   larger than 16 MiB goes alone). A publish dropped while it waits so is never sent; one that
//!   waits when the session ends for good fails with [`PublishError::Closed`].
//! - Stop (the sidecar's, SIGTERM or SIGINT, or [`Options::stop_when`]): `on_stop` runs once,
//!   the `on_message` in flight finishes and its ack or nack is sent, the publishes in flight
//!   get their results, then the SDK half-closes the session and [`run`] returns `Ok(())`.
//!   Deliveries that had not started are left to the sidecar, which gives them back to the bus.
//! - A connection lost without a Stop is dialled again (backoff up to 2 s) for at most the
//!   connect timeout, with a new Hello; `on_start` does not run again.
//!
//! Diagnostics go through `tracing`; the SDK prints nothing.

#![warn(missing_docs)]

mod bus;
mod error;
mod options;
mod session;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use tether_bus_proto::v1;

pub use bus::{Bus, Publish, PublishError, Published};
pub use error::{BoxError, Error};
pub use options::{ADDR_VAR, CONNECT_TIMEOUT_VAR, DEFAULT_ADDR, DEFAULT_CONNECT_TIMEOUT, Options};

/// The client string the SDK sends in Hello, for the sidecar's logs.
pub const CLIENT: &str = concat!("tether-plugin-rust ", env!("CARGO_PKG_VERSION"));

/// A plugin: what it subscribes to and its callbacks. The SDK calls them from tokio tasks.
pub trait Plugin: Send + Sync + 'static {
    /// The topics to receive, sent in Hello (on every connect). Empty for a plugin that only
    /// publishes.
    fn subscriptions(&self) -> Vec<Subscription>;

    /// Runs once after the sidecar's first Welcome, before any delivery or health answer. It
    /// may publish. An error ends [`run`] with [`Error::Start`].
    fn on_start(&self, bus: &Bus) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = bus;
        async { Ok(()) }
    }

    /// Handles one delivery. `Ok` acks it; `Err` nacks it, and the bus delivers it again after
    /// the [`Nack`]'s delay (or sends it to `dlq.<topic>` after the subscription's
    /// `max_deliver`).
    fn on_message(&self, bus: &Bus, msg: Message) -> impl Future<Output = Result<(), Nack>> + Send;

    /// Answers the sidecar's health check. Runs apart from `on_message`; the sidecar counts an
    /// answer later than 5 s as a failure.
    fn on_health_check(&self) -> impl Future<Output = Health> + Send {
        async { Health::healthy() }
    }

    /// Runs once when the plugin is asked to stop, while the `on_message` in flight (if any)
    /// finishes; publishes are still possible.
    fn on_stop(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A subscription the plugin asks for in Hello.
///
/// ```
/// use std::time::Duration;
/// use tether_plugin::Subscription;
/// let s = Subscription::new("orders.*")
///     .group("signals")
///     .ack_deadline(Duration::from_secs(60))
///     .max_deliver(3);
/// assert_eq!(s.topic(), "orders.*");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    topic: String,
    group: String,
    ack_deadline: Option<Duration>,
    max_deliver: Option<u32>,
}

impl Subscription {
    /// A subscription to `topic`, a pattern (`orders.*`: one token, `signals.>`: one or more).
    /// Without a group every instance gets every message.
    pub fn new(topic: impl Into<String>) -> Subscription {
        Subscription {
            topic: topic.into(),
            group: String::new(),
            ack_deadline: None,
            max_deliver: None,
        }
    }

    /// Shares the messages among the subscribers of `group`: each message goes to one of them.
    pub fn group(mut self, group: impl Into<String>) -> Subscription {
        self.group = group.into();
        self
    }

    /// How long a delivery may stay unacknowledged before it is delivered again (the bus's
    /// default is 30 s). Whole milliseconds; at most `u32::MAX` ms.
    pub fn ack_deadline(mut self, deadline: Duration) -> Subscription {
        self.ack_deadline = Some(deadline);
        self
    }

    /// After this many deliveries without an ack the message goes to `dlq.<topic>` (the bus's
    /// default is 5).
    pub fn max_deliver(mut self, times: u32) -> Subscription {
        self.max_deliver = Some(times);
        self
    }

    /// The topic pattern.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub(crate) fn to_proto(&self) -> v1::Subscription {
        v1::Subscription {
            topic: self.topic.clone(),
            group: self.group.clone(),
            ack_deadline_ms: self.ack_deadline.map_or(0, millis_u32).max(
                // A zero deadline would mean the default: ask for the shortest instead.
                u32::from(self.ack_deadline.is_some()),
            ),
            max_deliver: self.max_deliver.unwrap_or(0),
        }
    }
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The concrete topic it was published on.
    pub topic: String,
    /// Its body.
    pub data: Vec<u8>,
    /// Its headers.
    pub headers: HashMap<String, String>,
    /// Its sequence in its topic's log (1, 2, ...).
    pub sequence: u64,
    /// How many times it was delivered to this consumer before (0 the first time).
    pub redelivered: u32,
    /// The subscription pattern this delivery answers.
    pub subscription: String,
}

impl Message {
    /// A message as the SDK would deliver it, for a plugin's own tests.
    pub fn new(topic: impl Into<String>, data: impl Into<Vec<u8>>) -> Message {
        let topic = topic.into();
        Message {
            subscription: topic.clone(),
            topic,
            data: data.into(),
            headers: HashMap::new(),
            sequence: 1,
            redelivered: 0,
        }
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn from_delivery(d: v1::Delivery) -> Message {
        Message {
            topic: d.topic,
            data: d.data,
            headers: d.headers,
            sequence: d.sequence,
            redelivered: d.redelivered,
            subscription: d.subscription,
        }
    }
}

/// A refusal of a delivery: the bus delivers it again after `delay`. Any error converts into a
/// `Nack` (with its message as the reason and no delay), so `?` works in `on_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    reason: String,
    delay: Duration,
}

impl Nack {
    /// A nack with this reason (for the sidecar's logs), delivered again at once.
    pub fn new(reason: impl Into<String>) -> Nack {
        Nack {
            reason: reason.into(),
            delay: Duration::ZERO,
        }
    }

    /// Delivered again after `delay` (whole milliseconds).
    pub fn after(mut self, delay: Duration) -> Nack {
        self.delay = delay;
        self
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The delay before the message is delivered again.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

impl<E: fmt::Display> From<E> for Nack {
    fn from(error: E) -> Nack {
        Nack::new(error.to_string())
    }
}

/// A health check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    healthy: bool,
    detail: String,
}

impl Health {
    /// Healthy.
    pub fn healthy() -> Health {
        Health {
            healthy: true,
            detail: String::new(),
        }
    }

    /// Unhealthy, and why.
    pub fn unhealthy(detail: impl Into<String>) -> Health {
        Health {
            healthy: false,
            detail: detail.into(),
        }
    }

    /// Adds a detail (for the sidecar's logs) to either answer.
    pub fn detail(mut self, detail: impl Into<String>) -> Health {
        self.detail = detail.into();
        self
    }

    /// Whether the answer is healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }
}

impl From<bool> for Health {
    fn from(healthy: bool) -> Health {
        Health {
            healthy,
            detail: String::new(),
        }
    }
}

/// Runs `plugin` against the sidecar at `SIDECAR_ADDR` (default `127.0.0.1:9191`), waiting for
/// it at most `SIDECAR_CONNECT_TIMEOUT` (default 60 s), until the sidecar's Stop, SIGTERM or
/// SIGINT. Returns `Ok(())` after a clean stop. Call it inside a tokio runtime.
pub async fn run<P: Plugin>(plugin: P) -> Result<(), Error> {
    run_with(plugin, Options::from_env()?).await
}

/// [`run`] with explicit [`Options`]: the address, the connect timeout, and a stop trigger
/// instead of (or beside) the signals; several plugins can run in one process this way.
pub async fn run_with<P: Plugin>(plugin: P, options: Options) -> Result<(), Error> {
    session::run(plugin, options).await
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_become_proto() {
        let s = Subscription::new("orders.*")
            .group("g")
            .ack_deadline(Duration::from_millis(1500))
            .max_deliver(3);
        assert_eq!(
            s.to_proto(),
            v1::Subscription {
                topic: "orders.*".into(),
                group: "g".into(),
                ack_deadline_ms: 1500,
                max_deliver: 3
            }
        );
        let plain = Subscription::new("a.>").to_proto();
        assert_eq!((plain.ack_deadline_ms, plain.max_deliver), (0, 0));
        let tiny = Subscription::new("a").ack_deadline(Duration::from_micros(10));
        assert_eq!(tiny.to_proto().ack_deadline_ms, 1);
    }

    #[test]
    fn errors_become_nacks() {
        fn parse(s: &str) -> Result<u32, Nack> {
            Ok(s.parse::<u32>()?)
        }
        let nack = parse("x").unwrap_err();
        assert_eq!(nack.reason(), "invalid digit found in string");
        assert_eq!(nack.delay(), Duration::ZERO);
        let nack = Nack::new("later").after(Duration::from_secs(2));
        assert_eq!(
            (nack.reason(), nack.delay()),
            ("later", Duration::from_secs(2))
        );
    }

    #[test]
    fn client_names_the_sdk_and_version() {
        assert_eq!(
            CLIENT,
            format!("tether-plugin-rust {}", env!("CARGO_PKG_VERSION"))
        );
    }
}
