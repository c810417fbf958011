//! A signals plugin: for each order on `orders.<kind>` it publishes a signal on
//! `signals.<kind>` with the order's body and two headers that name the order.
//!
//! It reads nothing but the environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SIDECAR_ADDR` | `127.0.0.1:9191` | the bus sidecar |
//! | `SIDECAR_CONNECT_TIMEOUT` | `60s` | how long to wait for it |
//! | `SIGNALS_SUBSCRIBE` | `orders.*` | the pattern to subscribe to |
//! | `SIGNALS_GROUP` | `signals` | the queue group (instances share the orders) |
//! | `SIGNALS_PUBLISH_PREFIX` | `signals` | the first token of the published topics |
//! | `RUST_LOG` | `info` | what to log (to stderr) |
//!
//! Two of them exchange messages when one's prefix is the other's subscription, e.g. a second
//! instance with `SIGNALS_SUBSCRIBE='signals.*' SIGNALS_PUBLISH_PREFIX=audit`.
//!
//! ```text
//! SIDECAR_ADDR=127.0.0.1:9191 cargo run -p tether-plugin --example signals
//! ```
//!
//! SIGTERM or SIGINT (or the sidecar's Stop) stops it cleanly: exit 0. It exits 1 with an
//! `error: ...` line when the sidecar cannot be reached or refuses the session.

use std::process::ExitCode;

use tether_plugin::{BoxError, Bus, Message, Nack, Plugin, Publish, Subscription};

struct Signals {
    subscribe: String,
    group: String,
    prefix: String,
}

impl Signals {
    fn from_env() -> Signals {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        Signals {
            subscribe: var("SIGNALS_SUBSCRIBE", "orders.*"),
            group: var("SIGNALS_GROUP", "signals"),
            prefix: var("SIGNALS_PUBLISH_PREFIX", "signals"),
        }
    }
}

impl Plugin for Signals {
    fn subscriptions(&self) -> Vec<Subscription> {
        vec![Subscription::new(&self.subscribe).group(&self.group)]
    }

    async fn on_start(&self, bus: &Bus) -> Result<(), BoxError> {
        tracing::info!(
            instance = %bus.instance_id(),
            subscribe = %self.subscribe,
            publish = %format!("{}.<kind>", self.prefix),
            "signals plugin started"
        );
        Ok(())
    }

    async fn on_message(&self, bus: &Bus, order: Message) -> Result<(), Nack> {
        let kind = order.topic.rsplit('.').next().unwrap_or("unknown");
        let topic = format!("{}.{kind}", self.prefix);
        // Keyed by the order: a redelivered order does not signal twice.
        let signal = Publish::new(&topic, order.data.clone())
            .header("source-topic", &order.topic)
            .header("source-sequence", order.sequence.to_string())
            .idempotency_key(format!("{}-{}", order.topic, order.sequence));
        // A refused publish nacks the order: it comes back after a second.
        let published = bus
            .send(signal)
            .await
            .map_err(|e| Nack::from(e).after(std::time::Duration::from_secs(1)))?;
        tracing::info!(
            order = %format!("{}#{}", order.topic, order.sequence),
            signal = %format!("{topic}#{}", published.sequence),
            redelivered = order.redelivered,
            "signalled"
        );
        Ok(())
    }

    async fn on_stop(&self) {
        tracing::info!("signals plugin stopping");
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    #[allow(
        clippy::disallowed_methods,
        reason = "an example program: it logs to its own stderr"
    )]
    let stderr = std::io::stderr;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(stderr)
        .init();
    match tether_plugin::run(Signals::from_env()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "an example program: its error line")]
            {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
