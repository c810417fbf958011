//! The bus sidecar (`tether sidecar`): the container contract of the plugin bus.
//!
//! A plugin reaches it on `SIDECAR_ADDR` (127.0.0.1:9191) with one `PluginService.Session`
//! stream; the sidecar speaks to the Bus API for it. Start-up runs eight steps in order, each
//! logged as it completes ([`Step`]); 1-3 and 7 are fatal ([`Fatal`]), 4-6 best-effort.
//!
//! - [`command`]: the sidecar as a command, for `tether sidecar` and `tether-sidecar`;
//! - [`config`]: the environment and `SIDECAR_CONFIG`, checked before anything starts;
//! - [`outbox`]: publishes kept on disk while the bus cannot take them;
//! - `link`: the Bus API client with the registered session;
//! - `route`: the plugin session, deliveries, acks, publishes, health;
//! - `health`: `/healthz` and `/readyz`.

pub mod command;
pub mod config;
pub mod outbox;

mod backoff;
#[cfg(test)]
mod fake;
mod health;
mod link;
mod metrics;
mod route;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_bus_proto::v1::RegisterRequest;
use tokio::sync::mpsc;

pub use config::Config;
use link::Link;
pub use link::status_line;
pub(crate) use link::{PING_EVERY, PING_TIMEOUT};
use route::{Accepted, Router};

use crate::policy::Grant;

/// The start-up steps, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Connect = 1,
    Register,
    RecoverGrants,
    RecoverState,
    HealthServer,
    Listener,
    AcceptPlugin,
    Route,
}

impl Step {
    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Connect => "connect to the Bus API",
            Self::Register => "register",
            Self::RecoverGrants => "recover grants",
            Self::RecoverState => "recover local state",
            Self::HealthServer => "start the health server",
            Self::Listener => "open the plugin listener",
            Self::AcceptPlugin => "accept the plugin",
            Self::Route => "begin routing",
        }
    }

    /// `step 3/8 (recover grants)`.
    pub fn label(self) -> String {
        format!("step {}/8 ({})", self.number(), self.title())
    }
}

/// A fatal start-up step failed; nothing is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal {
    pub step: Step,
    pub cause: String,
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "start-up {} failed: {}", self.step.label(), self.cause)
    }
}

impl std::error::Error for Fatal {}

/// How a sidecar that started ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// SIGTERM, drained in order: exit 0.
    Drained,
    /// A signal came before start-up finished; what was registered was deregistered.
    Interrupted { during: Step },
    /// The drain timeout passed; what was unacked was released to the bus.
    DrainTimedOut {
        timeout: Duration,
        in_flight: usize,
        outbox: u64,
    },
    /// A second signal (its number) during the drain: stopped at once.
    Forced { signal: i32, in_flight: usize },
}

/// Logs a completed step.
fn done(step: Step, started: Instant, detail: impl fmt::Display) {
    tracing::info!(
        "{}: {detail} ({} ms)",
        step.label(),
        started.elapsed().as_millis()
    );
}

fn words(grants: &[Grant]) -> String {
    if grants.is_empty() {
        return "none".into();
    }
    grants
        .iter()
        .map(|g| format!("{} {}", g.action.word(), g.topic))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the sidecar until a signal arrives on `signals` (each item one SIGTERM or SIGINT) and
/// the drain ends.
pub async fn run(
    config: Config,
    mut signals: mpsc::UnboundedReceiver<i32>,
) -> Result<Ended, Fatal> {
    let config = Arc::new(config);
    tracing::info!(
        "tether sidecar for instance `{}` of pool `{}` (tether.bus.v{})",
        config.instance_id,
        config.pool_type,
        tether_bus_proto::PROTOCOL_MAJOR
    );

    // 1. Connect to the Bus API.
    let started = Instant::now();
    let register = RegisterRequest {
        protocol_major: tether_bus_proto::PROTOCOL_MAJOR,
        instance_id: config.instance_id.clone(),
        pool_type: config.pool_type.clone(),
        image: config.image.clone(),
        tags: config.tags.clone(),
        requested_grants: config
            .requested_grants
            .iter()
            .map(Grant::to_proto)
            .collect(),
        token: config.settings.token.as_ref().map(|t| t.0.clone()),
    };
    let dialer = dialer(&config).map_err(|cause| Fatal {
        step: Step::Connect,
        cause,
    })?;
    let link = tokio::select! {
        r = Link::connect(dialer, config.settings.connect_timeout, register) => {
            r.map_err(|cause| Fatal { step: Step::Connect, cause })?
        }
        _ = signals.recv() => return Ok(Ended::Interrupted { during: Step::Connect }),
    };
    done(
        Step::Connect,
        started,
        format_args!("connected to {}", link.url()),
    );

    // 2. Register.
    let started = Instant::now();
    let answer = tokio::select! {
        r = link.register() => r.map_err(|s| Fatal {
            step: Step::Register,
            cause: format!("the Bus API at {} refused: {}", link.url(), status_line(&s)),
        })?,
        _ = signals.recv() => {
            // The bus may have committed the registration before the signal.
            deregister(&link).await;
            return Ok(Ended::Interrupted { during: Step::Register });
        }
    };
    done(
        Step::Register,
        started,
        format_args!(
            "instance `{}` of pool `{}`",
            config.instance_id, config.pool_type
        ),
    );

    // 3. Recover grants: what the bus gave, and each refusal by name.
    let started = Instant::now();
    let granted: Vec<Grant> = answer
        .granted
        .iter()
        .filter_map(Grant::from_proto)
        .collect();
    for r in &answer.refused {
        let what = r.grant.as_ref().and_then(Grant::from_proto).map_or_else(
            || "a grant".to_owned(),
            |g| format!("{} {}", g.action.word(), g.topic),
        );
        tracing::warn!("the bus refused the grant to {what}: {}", r.reason);
    }
    if granted.is_empty() && !config.requested_grants.is_empty() {
        let reasons: Vec<String> = answer.refused.iter().map(|r| r.reason.clone()).collect();
        deregister(&link).await;
        return Err(Fatal {
            step: Step::RecoverGrants,
            cause: format!(
                "the bus gave none of the {} requested grants: {}",
                config.requested_grants.len(),
                reasons.join("; ")
            ),
        });
    }
    done(
        Step::RecoverGrants,
        started,
        format_args!("granted: {}", words(&granted)),
    );

    let router = Router::new(config.clone(), link.clone(), granted);
    router.set_registered();

    // 4. Recover local state: the outbox and what it holds.
    let started = Instant::now();
    match router.open_outbox() {
        Ok(n) => {
            router.forward_outbox_in_background();
            done(
                Step::RecoverState,
                started,
                format_args!(
                    "outbox {} with {n} publish{} to forward",
                    router.outbox_path(),
                    if n == 1 { "" } else { "es" }
                ),
            );
        }
        Err(e) => tracing::warn!(
            "{} failed, going on without an outbox (publishes fail while the bus is unreachable): {e}",
            Step::RecoverState.label()
        ),
    }

    // 5. The health server.
    let started = Instant::now();
    match health::serve(router.clone(), config.health_addr).await {
        Ok(addr) => done(
            Step::HealthServer,
            started,
            format_args!("/healthz, /readyz and /metrics on http://{addr}"),
        ),
        Err(e) => tracing::warn!(
            "{} failed, going on without it: cannot listen on {}: {e}",
            Step::HealthServer.label(),
            config.health_addr
        ),
    }

    // 6. The plugin listener.
    let started = Instant::now();
    if !config.addr.ip().is_loopback() {
        tracing::warn!(
            "SIDECAR_ADDR {} is not a loopback address: anything that reaches it can act as the plugin",
            config.addr
        );
    }
    let listener = match tokio::net::TcpListener::bind(config.addr).await {
        Ok(l) => {
            let bound = l.local_addr().unwrap_or(config.addr);
            done(
                Step::Listener,
                started,
                format_args!("plugins connect to {bound}"),
            );
            Some(l)
        }
        Err(e) => {
            tracing::warn!(
                "{} failed: cannot listen on {}: {e}",
                Step::Listener.label(),
                config.addr
            );
            None
        }
    };

    // 7. Accept the plugin.
    let started = Instant::now();
    let Some(listener) = listener else {
        deregister(&link).await;
        return Err(Fatal {
            step: Step::AcceptPlugin,
            cause: format!(
                "no plugin can connect: the listener on {} could not be opened (step 6)",
                config.addr
            ),
        });
    };
    let bound = listener.local_addr().unwrap_or(config.addr);
    let mut accepted = router.serve_plugins(listener);
    let first = tokio::select! {
        r = tokio::time::timeout(config.settings.accept_timeout, accepted.recv()) => r,
        _ = signals.recv() => {
            deregister(&link).await;
            return Ok(Ended::Interrupted { during: Step::AcceptPlugin });
        }
    };
    match first {
        Ok(Some(Accepted::Plugin { client })) => done(
            Step::AcceptPlugin,
            started,
            format_args!("plugin `{client}` connected"),
        ),
        Ok(Some(Accepted::Refused(why))) => {
            deregister(&link).await;
            return Err(Fatal {
                step: Step::AcceptPlugin,
                cause: format!("the plugin's session was refused: {why}"),
            });
        }
        Ok(None) | Err(_) => {
            deregister(&link).await;
            return Err(Fatal {
                step: Step::AcceptPlugin,
                cause: format!(
                    "no plugin connected to {bound} within {}s (the sidecar config's accept_timeout)",
                    config.settings.accept_timeout.as_secs()
                ),
            });
        }
    }
    // 8. Routing begins once the plugin answered a health check (logged by the router).
    router.start_background();

    // Until SIGTERM or SIGINT.
    if signals.recv().await.is_none() {
        std::future::pending::<()>().await;
    }
    Ok(router.drain(&mut signals).await)
}

async fn deregister(link: &Link) {
    if let Err(s) = link.deregister(Duration::from_secs(5)).await {
        tracing::warn!("cannot deregister from the Bus API: {}", status_line(&s));
    }
}

/// How to reach the Bus API: its addresses and, for `https://`, TLS that trusts `ca_file` (the
/// system's roots are not consulted) and checks the certificate names `tls_server_name` or the
/// address's host (the configured name, also when it resolved to IP addresses).
fn dialer(config: &Config) -> Result<link::Dialer, String> {
    let urls = config.bus_api_urls.clone();
    let tls = if urls.iter().any(|u| u.starts_with("https://")) {
        let Some(ca_file) = &config.settings.ca_file else {
            return Err(format!(
                "{} asks for TLS and the sidecar config names no ca_file to trust",
                urls.join(",")
            ));
        };
        Some(crate::tls::client_tls(ca_file, None).map_err(|e| e.to_string())?)
    } else {
        None
    };
    Ok(link::Dialer {
        urls,
        tls,
        tls_server_name: config.settings.tls_server_name.clone(),
    })
}
