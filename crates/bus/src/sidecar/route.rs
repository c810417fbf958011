//! The router: the plugin's session on one side, the Bus API on the other.
//!
//! - One plugin session at a time. Its subscriptions are checked against the grants before the
//!   Welcome; deliveries start only after its first healthy answer to a health check.
//! - A delivery the plugin holds is "in flight" until its ack or nack; at most
//!   `max_in_flight` at once. When the session ends, what it held is released to the bus.
//! - Publishes taken from the plugin and not yet answered to it weigh at most
//!   [`PUBLISH_BUDGET`] units of [`PUBLISH_UNIT`] bytes (16 MiB; each publish at least one
//!   unit, so at most 16,384 publishes; one larger than the budget takes all of it, alone).
//!   While the budget is spent the sidecar reads nothing more from the session, so HTTP/2 flow
//!   control holds the plugin's publishes back; its acks, nacks and health answers, on the same
//!   stream, wait behind them until the bus answers (a health check unanswered meanwhile is
//!   not counted as failed). In memory a publish taken weighs up to about twice its size (a
//!   copy is kept for the outbox while the bus has not answered).
//! - Acks go to the bus in batches. Publishes go straight to the bus, or to the outbox when the
//!   bus cannot take them (and while the outbox is not empty, to keep their order). Straight
//!   publishes share `PublishBatch` calls: a publish is sent at once when a call is free, and
//!   those that arrive while [`PUBLISH_CALLS`] calls are in flight go together in the next one
//!   (in their order), so a busy plugin costs the bus one call and one commit per batch.
//! - The outbox is forwarded in batches in its order, one `PublishBatch` call at a time: the
//!   bus stores a batch's publishes in their order, so every topic keeps its order.
//! - The drain (SIGTERM) follows the contract's order: no new deliveries, Stop to the plugin,
//!   in-flight work finished and acked, the rest released, deregistered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use tether_bus_proto::v1::plugin_service_server::{PluginService, PluginServiceServer};
use tether_bus_proto::v1::{
    self, Delivery, HealthAnswer, HealthCheck, PluginMessage, PublishAccepted, PublishRefused,
    PublishRequest, PublishResult, SidecarMessage, Stop, Welcome, plugin_message, publish_result,
    sidecar_message,
};
use tether_bus_proto::{check_major, check_metadata};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tonic::{Request, Response, Status, Streaming};

use super::backoff::Backoff;
use super::config::Config;
use super::link::{Link, status_line, transient};
use super::metrics::{Counters, Snapshot, prometheus};
use super::outbox::{Outbox, OutboxError};
use super::{Ended, Step};
use crate::policy::{Action, Grant};
use crate::topic;

/// Outbox entries the forwarder reads at once.
const FORWARD_BATCH: usize = 1024;
/// The most publishes one `PublishBatch` call carries (the bus takes up to 1024).
const PUBLISH_BATCH: usize = 256;
/// The most bytes of publishes one `PublishBatch` call carries, well under gRPC's 4 MiB; a
/// publish larger than this goes in a call of its own.
const PUBLISH_BATCH_BYTES: usize = 1 << 20;
/// `PublishBatch` calls of straight publishes in flight at once.
const PUBLISH_CALLS: usize = 4;
/// The bytes one unit of [`PUBLISH_BUDGET`] stands for.
const PUBLISH_UNIT: usize = 1024;
/// What the publishes taken from the plugin and not yet answered to it may weigh together, in
/// [`PUBLISH_UNIT`]s: 16 MiB, so a plugin that publishes faster than the bus answers (or a bus
/// that hangs) cannot grow the sidecar's memory without bound. See [`publish_units`].
const PUBLISH_BUDGET: u32 = 16 * 1024;

/// A publish's share of [`PUBLISH_BUDGET`]: one unit per [`PUBLISH_UNIT`] (or part of one) of
/// its encoded size, at least one, and at most the whole budget, so that a publish larger than
/// the budget still passes (alone).
fn publish_units(encoded_len: usize) -> u32 {
    let units = encoded_len.div_ceil(PUBLISH_UNIT).max(1);
    u32::try_from(units).map_or(PUBLISH_BUDGET, |u| u.min(PUBLISH_BUDGET))
}

/// A publish waiting for a `PublishBatch` call, and where its answer goes.
type Queued = (
    PublishRequest,
    oneshot::Sender<Result<v1::PublishResponse, Status>>,
);

/// Whether a publish of `n` bytes still fits a `PublishBatch` call that holds `count`
/// publishes of `bytes` (a first publish always does, whatever its size).
fn fits(count: usize, bytes: usize, n: usize) -> bool {
    count == 0 || (count < PUBLISH_BATCH && bytes + n <= PUBLISH_BATCH_BYTES)
}

/// Cuts publishes, in their order, into the `PublishBatch` calls that carry them.
fn batches<T>(items: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        match out.last_mut() {
            Some(last) if fits(last.len(), bytes, n) => {
                bytes += n;
                last.push(item);
            }
            _ => {
                bytes = n;
                out.push(vec![item]);
            }
        }
    }
    out
}

/// What the listener tells start-up about the first session.
pub enum Accepted {
    Plugin { client: String },
    Refused(String),
}

/// What `/readyz` and `/healthz` read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    pub registered: bool,
    pub grants_recovered: bool,
    pub plugin_connected: bool,
    pub plugin_healthy: bool,
    pub draining: bool,
    /// Failed health checks in a row.
    pub failures: u32,
    /// The failures that turn `/healthz` 503.
    pub failure_limit: u32,
}

impl Readiness {
    /// What keeps the sidecar from being ready, by name; empty when ready.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        for (ok, name) in [
            (self.registered, "registered"),
            (self.grants_recovered, "grants_recovered"),
            (self.plugin_connected, "plugin_connected"),
            (self.plugin_healthy, "plugin_healthy"),
            (!self.draining, "not_draining"),
        ] {
            if !ok {
                m.push(name);
            }
        }
        m
    }

    pub fn live(&self) -> bool {
        self.failures < self.failure_limit
    }
}

struct InFlight {
    session: u64,
    _permit: OwnedSemaphorePermit,
}

struct Conn {
    id: u64,
    client: String,
    tx: mpsc::Sender<Result<SidecarMessage, Status>>,
    subscriptions: Vec<v1::Subscription>,
    /// Set once routing started for this session; true cancels it.
    routing: Option<watch::Sender<bool>>,
    check: Option<(u64, oneshot::Sender<HealthAnswer>)>,
}

struct State {
    conn: Option<Conn>,
    next_conn: u64,
    in_flight: HashMap<String, InFlight>,
    readiness: Readiness,
    accepted_once: bool,
    routed_once: bool,
    /// The live session ended (the drain waits for it).
    ended: Arc<Notify>,
    /// Sessions that ended and are still giving back what they held.
    giving_back: usize,
    /// Routing tasks still running (each gives back what it received and did not hand over).
    routes: usize,
}

struct Inner {
    config: Arc<Config>,
    link: Link,
    granted: Vec<Grant>,
    outbox: Mutex<Option<Outbox>>,
    outbox_wake: Notify,
    state: Mutex<State>,
    permits: Arc<Semaphore>,
    /// Acks queued for the bus, not yet answered.
    acks_pending: AtomicUsize,
    acks_flushed: Notify,
    ack_tx: mpsc::UnboundedSender<String>,
    ack_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    /// Publishes taken from the plugin, not yet answered.
    publishing: AtomicUsize,
    /// [`PUBLISH_BUDGET`]: each publish taken from the plugin holds its share until it is
    /// answered to the plugin.
    publish_budget: Arc<Semaphore>,
    /// Times `read_plugin` waited for the budget, and whether it waits now: while it does, it
    /// reads nothing from the plugin, health answers included.
    budget_waits: AtomicU64,
    budget_waiting: AtomicBool,
    published: Notify,
    /// Straight publishes waiting for a `PublishBatch` call.
    publish_tx: mpsc::UnboundedSender<Queued>,
    publish_rx: Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
    new_session: Notify,
    key_prefix: String,
    key_counter: AtomicU64,
    accepted: Mutex<Option<mpsc::UnboundedSender<Accepted>>>,
    /// What `/metrics` counts.
    counters: Counters,
}

#[derive(Clone)]
pub struct Router(Arc<Inner>);

fn nonce() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        u64::from_le_bytes(b)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id())
    }
}

fn refused(code: &str, message: impl Into<String>) -> publish_result::Result {
    publish_result::Result::Refused(PublishRefused {
        code: code.into(),
        message: message.into(),
    })
}

/// The proto's name of a status code: `PERMISSION_DENIED`.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

fn message(kind: sidecar_message::Kind) -> Result<SidecarMessage, Status> {
    Ok(SidecarMessage { kind: Some(kind) })
}

impl Router {
    pub fn new(config: Arc<Config>, link: Link, granted: Vec<Grant>) -> Self {
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (publish_tx, publish_rx) = mpsc::unbounded_channel();
        let failure_limit = config.settings.health_failures;
        let permits = Arc::new(Semaphore::new(config.settings.max_in_flight as usize));
        let key_prefix = format!("{}-{:016x}-", config.instance_id, nonce());
        Self(Arc::new(Inner {
            config,
            link,
            granted,
            outbox: Mutex::new(None),
            outbox_wake: Notify::new(),
            state: Mutex::new(State {
                conn: None,
                next_conn: 1,
                in_flight: HashMap::new(),
                readiness: Readiness {
                    failure_limit,
                    ..Readiness::default()
                },
                accepted_once: false,
                routed_once: false,
                ended: Arc::new(Notify::new()),
                giving_back: 0,
                routes: 0,
            }),
            permits,
            acks_pending: AtomicUsize::new(0),
            acks_flushed: Notify::new(),
            ack_tx,
            ack_rx: Mutex::new(Some(ack_rx)),
            publishing: AtomicUsize::new(0),
            publish_budget: Arc::new(Semaphore::new(PUBLISH_BUDGET as usize)),
            budget_waits: AtomicU64::new(0),
            counters: Counters::default(),
            budget_waiting: AtomicBool::new(false),
            published: Notify::new(),
            publish_tx,
            publish_rx: Mutex::new(Some(publish_rx)),
            new_session: Notify::new(),
            key_prefix,
            key_counter: AtomicU64::new(0),
            accepted: Mutex::new(None),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().expect("router state")
    }

    /// `/metrics`' body.
    pub fn metrics(&self) -> String {
        let in_flight = self.in_flight() as u64;
        prometheus(&Snapshot {
            counters: &self.0.counters,
            replica_moves: self.0.link.moves(),
            budget_waits: self.0.budget_waits.load(Ordering::SeqCst),
            outbox: self.outbox().map_or(0, |o| o.len()),
            publishing: self.0.publishing.load(Ordering::SeqCst) as u64,
            in_flight,
        })
    }

    pub fn readiness(&self) -> Readiness {
        self.state().readiness.clone()
    }

    pub fn set_registered(&self) {
        let mut st = self.state();
        st.readiness.registered = true;
        st.readiness.grants_recovered = true;
    }

    /// Step 4: opens the outbox; answers how many publishes wait in it.
    pub fn open_outbox(&self) -> Result<u64, OutboxError> {
        let s = &self.0.config.settings;
        let outbox = Outbox::open(&s.data_dir, s.outbox_size)?;
        let n = outbox.len();
        *self.0.outbox.lock().expect("outbox") = Some(outbox);
        Ok(n)
    }

    pub fn outbox_path(&self) -> String {
        self.outbox()
            .map_or_else(String::new, |o| o.path().display().to_string())
    }

    fn outbox(&self) -> Option<Outbox> {
        self.0.outbox.lock().expect("outbox").clone()
    }

    /// Step 6-7: serves the plugin service on `listener`; the first session's fate arrives on
    /// the answer.
    pub fn serve_plugins(&self, listener: TcpListener) -> mpsc::UnboundedReceiver<Accepted> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.0.accepted.lock().expect("accepted") = Some(tx);
        if let Some(rx) = self.0.publish_rx.lock().expect("publish rx").take() {
            let this = self.clone();
            tokio::spawn(async move { this.publisher(rx).await });
        }
        let service = PluginServiceServer::new(self.clone());
        tokio::spawn(async move {
            let incoming = // No Nagle: a delivery or an answer waiting for the peer's delayed ACK costs up to
            // 40 ms.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::error!("the plugin listener failed: {e}");
            }
        });
        rx
    }

    /// After step 7: the health checks, the acker and the outbox's forwarder.
    pub fn start_background(&self) {
        let this = self.clone();
        tokio::spawn(async move { this.health_loop().await });
        if let Some(rx) = self.0.ack_rx.lock().expect("ack rx").take() {
            let this = self.clone();
            tokio::spawn(async move { this.acker(rx).await });
        }
    }

    /// After step 4: publishes a previous run left in the outbox go to the bus at once.
    pub fn forward_outbox_in_background(&self) {
        let this = self.clone();
        tokio::spawn(async move { this.forward_outbox().await });
    }

    fn tell_start(&self, a: Accepted) {
        let mut st = self.0.accepted.lock().expect("accepted");
        if let Some(tx) = st.take() {
            let _ = tx.send(a);
        }
    }

    // ---------------------------------------------------------------------------------------
    // The plugin session
    // ---------------------------------------------------------------------------------------

    /// Checks a Hello; `Err` is the status that ends the call.
    fn check_hello(&self, hello: &v1::Hello) -> Result<(), Status> {
        if hello.protocol_major != 0 {
            check_major(hello.protocol_major).map_err(Status::failed_precondition)?;
        }
        for s in &hello.subscriptions {
            topic::validate_pattern(&s.topic)
                .map_err(|e| Status::invalid_argument(format!("subscription: {e}")))?;
            let group_ok = s.group.is_empty() || crate::policy::valid_name(&s.group);
            if !group_ok {
                return Err(Status::invalid_argument(format!(
                    "subscription to `{}`: group `{}` is not valid: 1 to 128 letters, digits, `.`, `-` or `_`",
                    s.topic, s.group
                )));
            }
            self.allowed(Action::Subscribe, &s.topic)
                .map_err(Status::permission_denied)?;
        }
        Ok(())
    }

    fn allowed(&self, action: Action, topic_or_pattern: &str) -> Result<(), String> {
        if self
            .0
            .granted
            .iter()
            .any(|g| g.action == action && topic::covers(&g.topic, topic_or_pattern))
        {
            Ok(())
        } else {
            Err(format!(
                "instance `{}` has no grant to {} on `{topic_or_pattern}`",
                self.0.config.instance_id,
                action.word()
            ))
        }
    }

    async fn open_session(
        &self,
        mut inbound: Streaming<PluginMessage>,
    ) -> Result<mpsc::Receiver<Result<SidecarMessage, Status>>, Status> {
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await;
        let hello = match first {
            Ok(Ok(Some(PluginMessage {
                kind: Some(plugin_message::Kind::Hello(h)),
            }))) => h,
            Ok(Ok(Some(_))) => {
                return Err(Status::invalid_argument(
                    "the plugin's first message must be Hello",
                ));
            }
            Ok(Ok(None)) => return Err(Status::cancelled("the plugin closed before Hello")),
            Ok(Err(s)) => return Err(s),
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "the plugin sent no Hello within 10s",
                ));
            }
        };
        self.check_hello(&hello)?;
        let cap = self.0.config.settings.max_in_flight as usize + 64;
        let (tx, rx) = mpsc::channel(cap);
        let welcome = Welcome {
            protocol_major: tether_bus_proto::PROTOCOL_MAJOR,
            instance_id: self.0.config.instance_id.clone(),
            granted: self.0.granted.iter().map(Grant::to_proto).collect(),
        };
        let client = if hello.client.is_empty() {
            "unnamed".to_owned()
        } else {
            hello.client.clone()
        };
        // Queued before the session is visible to the health loop: its first check follows.
        let _ = tx.try_send(message(sidecar_message::Kind::Welcome(welcome)));
        let id = {
            let mut st = self.state();
            if st.readiness.draining {
                return Err(Status::unavailable("the sidecar is stopping"));
            }
            if let Some(c) = &st.conn {
                return Err(Status::already_exists(format!(
                    "another plugin session (`{}`) is live; one at a time",
                    c.client
                )));
            }
            let id = st.next_conn;
            st.next_conn += 1;
            st.conn = Some(Conn {
                id,
                client: client.clone(),
                tx: tx.clone(),
                subscriptions: hello.subscriptions.clone(),
                routing: None,
                check: None,
            });
            st.readiness.plugin_connected = true;
            st.readiness.plugin_healthy = false;
            st.accepted_once = true;
            id
        };
        tracing::info!(
            "plugin `{client}` connected (session {id}), subscribing to {}",
            if hello.subscriptions.is_empty() {
                "nothing".to_owned()
            } else {
                hello
                    .subscriptions
                    .iter()
                    .map(|s| s.topic.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        self.tell_start(Accepted::Plugin { client });
        self.0.new_session.notify_one();
        let this = self.clone();
        tokio::spawn(async move { this.read_plugin(id, inbound, tx).await });
        Ok(rx)
    }

    async fn read_plugin(
        self,
        id: u64,
        mut inbound: Streaming<PluginMessage>,
        tx: mpsc::Sender<Result<SidecarMessage, Status>>,
    ) {
        loop {
            match inbound.message().await {
                Ok(Some(m)) => match m.kind {
                    Some(plugin_message::Kind::Publish(p)) => {
                        // Its share of the budget first. While the budget is spent nothing more
                        // is read from the session: HTTP/2 flow control then holds the plugin's
                        // publishes back, and memory stays bounded. Its acks, nacks and health
                        // answers (on this stream too) wait as well, which is acceptable only
                        // because the budget frees as the bus answers: each `PublishBatch` call
                        // ends within the link's call timeout, and a publish the bus did not take
                        // is answered once it is in the outbox (or refused).
                        //
                        // The session ending (the plugin's connection closed: the receiver of
                        // its answers is dropped) ends the wait, so that `session_ended` and the
                        // drain do not wait for the bus. That publish is not made: it was not
                        // answered, and the SDKs send it again, with its idempotency key, on
                        // their next session.
                        let units = publish_units(p.encoded_len());
                        let budget = self.0.publish_budget.clone();
                        let share = match budget.clone().try_acquire_many_owned(units) {
                            Ok(share) => Some(share),
                            Err(_) => {
                                // Held back: a health answer queued behind this publish is late
                                // for the sidecar's own reason (see `health_loop`).
                                self.0.budget_waits.fetch_add(1, Ordering::SeqCst);
                                self.0.budget_waiting.store(true, Ordering::SeqCst);
                                let share = tokio::select! {
                                    share = budget.acquire_many_owned(units) => share.ok(),
                                    () = tx.closed() => None,
                                };
                                self.0.budget_waiting.store(false, Ordering::SeqCst);
                                share
                            }
                        };
                        let Some(share) = share else {
                            tracing::info!(
                                "the plugin's session {id} ended while a publish on `{}` waited for the sidecar's publish budget; not published",
                                p.topic
                            );
                            break;
                        };
                        self.0.publishing.fetch_add(1, Ordering::SeqCst);
                        let this = self.clone();
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let _share = share;
                            let request_id = p.request_id;
                            let result = this.publish(p).await;
                            let c = &this.0.counters;
                            Counters::add(
                                match &result {
                                    publish_result::Result::Accepted(a) if a.sequence == 0 => {
                                        &c.kept
                                    }
                                    publish_result::Result::Accepted(_) => &c.published,
                                    publish_result::Result::Refused(_) => &c.refused,
                                },
                                1,
                            );
                            let _ = tx
                                .send(message(sidecar_message::Kind::PublishResult(
                                    PublishResult {
                                        request_id,
                                        result: Some(result),
                                    },
                                )))
                                .await;
                            this.0.publishing.fetch_sub(1, Ordering::SeqCst);
                            this.0.published.notify_waiters();
                        });
                    }
                    Some(plugin_message::Kind::Ack(a)) => {
                        if self.state().in_flight.remove(&a.delivery_id).is_some() {
                            Counters::add(&self.0.counters.acked, 1);
                            self.0.acks_pending.fetch_add(1, Ordering::SeqCst);
                            let _ = self.0.ack_tx.send(a.delivery_id);
                        } else {
                            tracing::debug!("ack of `{}`, not in flight", a.delivery_id);
                        }
                    }
                    Some(plugin_message::Kind::Nack(n)) => {
                        if self.state().in_flight.remove(&n.delivery_id).is_some() {
                            Counters::add(&self.0.counters.nacked, 1);
                            tracing::debug!("nack of `{}`: {}", n.delivery_id, n.reason);
                            // Counted with the acks: the drain waits for it to reach the bus.
                            self.0.acks_pending.fetch_add(1, Ordering::SeqCst);
                            let this = self.clone();
                            tokio::spawn(async move {
                                if let Err(s) =
                                    this.0.link.nack(n.delivery_id.clone(), n.delay_ms).await
                                {
                                    tracing::warn!(
                                        "cannot nack `{}` (delivered again after its ack deadline): {}",
                                        n.delivery_id,
                                        status_line(&s)
                                    );
                                }
                                this.0.acks_pending.fetch_sub(1, Ordering::SeqCst);
                                this.0.acks_flushed.notify_waiters();
                            });
                        }
                    }
                    Some(plugin_message::Kind::Health(h)) => {
                        let mut st = self.state();
                        if let Some(conn) = st.conn.as_mut().filter(|c| c.id == id)
                            && conn.check.as_ref().is_some_and(|(cid, _)| *cid == h.id)
                            && let Some((_, answer)) = conn.check.take()
                        {
                            let _ = answer.send(h);
                        }
                    }
                    Some(plugin_message::Kind::Hello(_)) | None => {
                        tracing::debug!("an unexpected message from the plugin, ignored");
                    }
                },
                Ok(None) => {
                    tracing::info!("the plugin closed its session {id}");
                    break;
                }
                Err(s) => {
                    tracing::info!("the plugin's session {id} ended: {}", status_line(&s));
                    break;
                }
            }
        }
        self.session_ended(id).await;
    }

    /// The plugin's session ended: stop its routing, release what it held.
    async fn session_ended(&self, id: u64) {
        let (held, ended) = {
            let mut st = self.state();
            if st.conn.as_ref().is_none_or(|c| c.id != id) {
                return;
            }
            let conn = st.conn.take().expect("checked");
            if let Some(cancel) = conn.routing {
                let _ = cancel.send(true);
            }
            st.readiness.plugin_connected = false;
            st.readiness.plugin_healthy = false;
            let held: Vec<String> = st
                .in_flight
                .iter()
                .filter(|(_, f)| f.session == id)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &held {
                st.in_flight.remove(k);
            }
            st.giving_back += 1;
            (held, st.ended.clone())
        };
        self.give_back(held, Duration::from_secs(10)).await;
        self.state().giving_back -= 1;
        ended.notify_waiters();
    }

    /// Gives back deliveries the plugin held and did not finish: nacked, so that the bus
    /// delivers them again at once and counts this delivery (`redelivered` tells the next
    /// plugin it may have been partly processed). What never reached the plugin is released
    /// instead, uncounted.
    async fn give_back(&self, held: Vec<String>, timeout: Duration) {
        if held.is_empty() {
            return;
        }
        let n = held.len();
        let mut calls = tokio::task::JoinSet::new();
        for id in held {
            let link = self.0.link.clone();
            calls.spawn(async move { tokio::time::timeout(timeout, link.nack(id, 0)).await });
        }
        let mut failed = None;
        while let Some(done) = calls.join_next().await {
            match done {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(s))) => failed = Some(status_line(&s)),
                Ok(Err(_)) => failed = Some(format!("no answer within {}s", timeout.as_secs())),
                Err(e) => failed = Some(e.to_string()),
            }
        }
        match failed {
            None => tracing::info!(
                "gave back {n} deliveries the plugin held unacked; the bus delivers them again"
            ),
            Some(why) => tracing::warn!(
                "cannot give back every one of {n} deliveries (those are delivered again after their ack deadline): {why}"
            ),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Health
    // ---------------------------------------------------------------------------------------

    async fn health_loop(self) {
        let s = self.0.config.settings.clone();
        let mut next_check = 0u64;
        loop {
            let check = {
                let mut st = self.state();
                if st.readiness.draining {
                    None
                } else if let Some(conn) = st.conn.as_mut() {
                    next_check += 1;
                    let (tx, rx) = oneshot::channel();
                    conn.check = Some((next_check, tx));
                    Some((conn.id, conn.tx.clone(), rx, next_check))
                } else {
                    if st.accepted_once {
                        st.readiness.failures = st.readiness.failures.saturating_add(1);
                    }
                    None
                }
            };
            let deadline = tokio::time::Instant::now() + s.health_interval;
            let waits_before = self.0.budget_waits.load(Ordering::SeqCst);
            if let Some((conn, tx, rx, id)) = check {
                let sent = tx
                    .send(message(sidecar_message::Kind::HealthCheck(HealthCheck {
                        id,
                    })))
                    .await
                    .is_ok();
                // A session that ends before it answers (its plugin stopped or went away) is
                // no failed check: it is gone, and a missing plugin is counted below.
                let answer = if sent {
                    tokio::time::timeout(s.health_timeout, rx)
                        .await
                        .map(Result::ok)
                } else {
                    Ok(None)
                };
                // An answer that may be queued behind publishes the sidecar is not reading (its
                // publish budget spent: the bus answers slower than the plugin publishes) is
                // late for the sidecar's reason, not the plugin's: not a failed check, or a
                // liveness probe would restart a healthy plugin for a slow bus.
                let held_back = || {
                    self.0.budget_waiting.load(Ordering::SeqCst)
                        || self.0.budget_waits.load(Ordering::SeqCst) != waits_before
                };
                match answer {
                    Ok(Some(a)) => self.health_answer(conn, Some(a), s.health_timeout),
                    Ok(None) => {}
                    Err(_) if held_back() => tracing::info!(
                        "no health answer within {}ms while the plugin's publishes wait for the bus (the sidecar reads nothing more until the bus answers): not counted as a failed check",
                        s.health_timeout.as_millis()
                    ),
                    Err(_) => self.health_answer(conn, None, s.health_timeout),
                }
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = self.0.new_session.notified() => {}
            }
        }
    }

    fn health_answer(&self, conn: u64, answer: Option<HealthAnswer>, timeout: Duration) {
        let start_routing = {
            let mut st = self.state();
            let r = &mut st.readiness;
            match &answer {
                Some(a) if a.healthy => {
                    r.failures = 0;
                    r.plugin_healthy = true;
                }
                Some(a) => {
                    r.failures = r.failures.saturating_add(1);
                    r.plugin_healthy = false;
                    Counters::add(&self.0.counters.health_failed, 1);
                    tracing::warn!(
                        "the plugin answered unhealthy{} ({} in a row)",
                        if a.detail.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", a.detail)
                        },
                        r.failures
                    );
                }
                None => {
                    r.failures = r.failures.saturating_add(1);
                    r.plugin_healthy = false;
                    Counters::add(&self.0.counters.health_failed, 1);
                    tracing::warn!(
                        "the plugin did not answer a health check within {}ms ({} in a row)",
                        timeout.as_millis(),
                        r.failures
                    );
                }
            }
            let healthy = r.plugin_healthy && !r.draining;
            match st.conn.as_mut() {
                Some(c) if c.id == conn && c.routing.is_none() && healthy => {
                    let (cancel, cancelled) = watch::channel(false);
                    c.routing = Some(cancel);
                    let first = !st.routed_once;
                    st.routed_once = true;
                    let c = st.conn.as_ref().expect("just matched");
                    Some((c.subscriptions.clone(), c.tx.clone(), cancelled, first))
                }
                _ => None,
            }
        };
        if let Some((subs, tx, cancelled, first)) = start_routing {
            let started = Instant::now();
            let names: Vec<String> = subs.iter().map(|s| s.topic.clone()).collect();
            for sub in subs {
                let this = self.clone();
                let tx = tx.clone();
                let cancelled = cancelled.clone();
                this.state().routes += 1;
                tokio::spawn(async move {
                    this.clone().route(conn, sub, tx, cancelled).await;
                    let ended = {
                        let mut st = this.state();
                        st.routes -= 1;
                        st.ended.clone()
                    };
                    ended.notify_waiters();
                });
            }
            let detail = if names.is_empty() {
                "no subscriptions; publishes only".to_owned()
            } else {
                format!("delivering {}", names.join(", "))
            };
            if first {
                super::done(Step::Route, started, detail);
            } else {
                tracing::info!("routing to session {conn}: {detail}");
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Deliveries: bus -> plugin
    // ---------------------------------------------------------------------------------------

    fn subscription(&self, mut sub: v1::Subscription) -> v1::Subscription {
        let s = &self.0.config.settings;
        if sub.ack_deadline_ms == 0 {
            sub.ack_deadline_ms = s.ack_deadline.as_millis().min(u128::from(u32::MAX)) as u32;
        }
        if sub.max_deliver == 0 {
            sub.max_deliver = s.max_deliver;
        }
        sub
    }

    async fn route(
        self,
        conn: u64,
        sub: v1::Subscription,
        tx: mpsc::Sender<Result<SidecarMessage, Status>>,
        mut cancelled: watch::Receiver<bool>,
    ) {
        let sub = self.subscription(sub);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if *cancelled.borrow() {
                return;
            }
            let opened = tokio::select! {
                r = self.0.link.subscribe(sub.clone()) => r,
                _ = cancelled.changed() => return,
            };
            let mut stream = match opened {
                Ok(s) => s,
                Err(s) => {
                    tracing::warn!(
                        "cannot subscribe to `{}` on the bus (trying again): {}",
                        sub.topic,
                        status_line(&s)
                    );
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next()) => continue,
                        _ = cancelled.changed() => return,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    m = stream.message() => m,
                    _ = cancelled.changed() => {
                        self.release_unread(&mut stream).await;
                        return;
                    }
                };
                let delivery = match next {
                    Ok(Some(d)) => d,
                    Ok(None) => {
                        tracing::info!("the bus ended the subscription to `{}`", sub.topic);
                        break;
                    }
                    Err(s) => {
                        tracing::warn!(
                            "the subscription to `{}` broke: {}",
                            sub.topic,
                            status_line(&s)
                        );
                        break;
                    }
                };
                backoff.reset();
                if !self.hand_over(conn, delivery, &tx, &mut cancelled).await {
                    self.release_unread(&mut stream).await;
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next()) => {}
                _ = cancelled.changed() => return,
            }
        }
    }

    /// Routing ended: deliveries that reached this sidecar and were not read yet are released
    /// by name (uncounted), so that any replica, not only the one that sent them, gives them
    /// back. What is still on its way is the drain's to release.
    async fn release_unread(&self, stream: &mut Streaming<Delivery>) {
        let mut ids = Vec::new();
        // A zero timeout polls once: what arrived already, without waiting for more.
        while let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::ZERO, stream.message()).await {
            ids.push(d.delivery_id);
        }
        if ids.is_empty() {
            return;
        }
        let n = ids.len();
        match self.0.link.release(ids, Duration::from_secs(5)).await {
            Ok(_) => tracing::debug!("released {n} deliveries received and not handed over"),
            Err(s) => tracing::debug!(
                "cannot release {n} deliveries received and not handed over (delivered again after their ack deadline): {}",
                status_line(&s)
            ),
        }
    }

    /// Sends one delivery to the plugin once a slot is free; false when routing ended (the
    /// delivery is then released at once).
    async fn hand_over(
        &self,
        conn: u64,
        delivery: Delivery,
        tx: &mpsc::Sender<Result<SidecarMessage, Status>>,
        cancelled: &mut watch::Receiver<bool>,
    ) -> bool {
        let id = delivery.delivery_id.clone();
        let permit = tokio::select! {
            p = self.0.permits.clone().acquire_owned() => p.ok(),
            _ = cancelled.changed() => None,
        };
        // A slot in the session's channel first, so that the check below and the send are one
        // step under the lock: the drain takes `routing` and then queues Stop, and no delivery
        // may follow the Stop.
        let slot = match permit {
            Some(_) => tokio::select! {
                s = tx.reserve() => s.ok(),
                _ = cancelled.changed() => None,
            },
            None => None,
        };
        if let (Some(permit), Some(slot)) = (permit, slot) {
            let mut st = self.state();
            let live = st
                .conn
                .as_ref()
                .is_some_and(|c| c.id == conn && c.routing.is_some());
            if live {
                let c = &self.0.counters;
                Counters::add(&c.delivered, 1);
                if delivery.redelivered > 0 {
                    Counters::add(&c.redelivered, 1);
                }
                st.in_flight.insert(
                    id.clone(),
                    InFlight {
                        session: conn,
                        _permit: permit,
                    },
                );
                slot.send(message(sidecar_message::Kind::Delivery(delivery)));
                return true;
            }
        }
        self.state().in_flight.remove(&id);
        if let Err(s) = self.0.link.release(vec![id], Duration::from_secs(5)).await {
            tracing::debug!(
                "cannot release a delivery not handed over: {}",
                status_line(&s)
            );
        }
        false
    }

    // ---------------------------------------------------------------------------------------
    // Acks and publishes: plugin -> bus
    // ---------------------------------------------------------------------------------------

    async fn acker(self, mut rx: mpsc::UnboundedReceiver<String>) {
        while let Some(first) = rx.recv().await {
            let mut ids = vec![first];
            while ids.len() < 1024 {
                match rx.try_recv() {
                    Ok(id) => ids.push(id),
                    Err(_) => break,
                }
            }
            let n = ids.len();
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
            for attempt in 1.. {
                match self.0.link.ack(ids.clone()).await {
                    Ok(_) => break,
                    Err(s) if attempt >= 30 => {
                        tracing::warn!(
                            "cannot ack {n} deliveries, giving up (delivered again after their ack deadline): {}",
                            status_line(&s)
                        );
                        break;
                    }
                    Err(s) => {
                        tracing::debug!("cannot ack {n} deliveries yet: {}", status_line(&s));
                        tokio::time::sleep(backoff.next()).await;
                    }
                }
            }
            self.0.acks_pending.fetch_sub(n, Ordering::SeqCst);
            self.0.acks_flushed.notify_waiters();
        }
    }

    fn key(&self) -> String {
        format!(
            "{}{}",
            self.0.key_prefix,
            self.0.key_counter.fetch_add(1, Ordering::Relaxed)
        )
    }

    async fn publish(&self, p: v1::PluginPublish) -> publish_result::Result {
        if let Err(e) = topic::validate_topic(&p.topic) {
            return refused("INVALID_ARGUMENT", e.to_string());
        }
        if let Err(e) = self.allowed(Action::Publish, &p.topic) {
            return refused("PERMISSION_DENIED", e);
        }
        let request = PublishRequest {
            idempotency_key: if p.idempotency_key.is_empty() {
                self.key()
            } else {
                p.idempotency_key
            },
            topic: p.topic,
            data: p.data,
            headers: p.headers,
        };
        let outbox = self.outbox();
        if outbox.as_ref().is_none_or(Outbox::is_empty) {
            match self.send(request.clone()).await {
                Ok(r) => {
                    return publish_result::Result::Accepted(PublishAccepted {
                        sequence: r.sequence,
                    });
                }
                // A refusal the bus would repeat is the plugin's to know, not the outbox's.
                Err(s) if !transient(&s) => return refused(code_name(s.code()), s.message()),
                Err(s) => {
                    if self.state().readiness.draining {
                        return refused(
                            "UNAVAILABLE",
                            format!(
                                "the sidecar is stopping and the Bus API at {} cannot take the publish: {}",
                                self.0.link.url(),
                                status_line(&s)
                            ),
                        );
                    }
                    tracing::debug!(
                        "the bus did not take a publish on `{}`, keeping it in the outbox: {}",
                        request.topic,
                        status_line(&s)
                    );
                }
            }
        }
        let Some(outbox) = outbox else {
            return refused(
                "UNAVAILABLE",
                format!(
                    "the Bus API at {} cannot take the publish and there is no outbox (step 4 failed)",
                    self.0.link.url()
                ),
            );
        };
        match outbox.push(&request).await {
            Ok(_) => {
                self.0.outbox_wake.notify_one();
                publish_result::Result::Accepted(PublishAccepted { sequence: 0 })
            }
            Err(e @ OutboxError::Full { .. }) => refused("RESOURCE_EXHAUSTED", e.to_string()),
            Err(e) => refused("UNAVAILABLE", e.to_string()),
        }
    }

    /// Sends a straight publish in the next `PublishBatch` call.
    async fn send(&self, request: PublishRequest) -> Result<v1::PublishResponse, Status> {
        let (reply, answer) = oneshot::channel();
        if self.0.publish_tx.send((request, reply)).is_err() {
            return Err(Status::unavailable("the sidecar's publisher has stopped"));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the sidecar's publisher has stopped")))
    }

    /// Sends straight publishes in `PublishBatch` calls, up to [`PUBLISH_CALLS`] at once: each
    /// call takes every publish that waits (up to a batch), so batches grow with the load and a
    /// lone publish goes at once.
    async fn publisher(self, mut rx: mpsc::UnboundedReceiver<Queued>) {
        let calls = Arc::new(Semaphore::new(PUBLISH_CALLS));
        let mut carried: Option<Queued> = None;
        loop {
            let Ok(call) = calls.clone().acquire_owned().await else {
                return;
            };
            let first = match carried.take() {
                Some(q) => q,
                None => match rx.recv().await {
                    Some(q) => q,
                    None => return,
                },
            };
            let mut bytes = first.0.encoded_len();
            let mut batch = vec![first];
            while batch.len() < PUBLISH_BATCH {
                let Ok(q) = rx.try_recv() else { break };
                let n = q.0.encoded_len();
                if !fits(batch.len(), bytes, n) {
                    carried = Some(q);
                    break;
                }
                bytes += n;
                batch.push(q);
            }
            let this = self.clone();
            tokio::spawn(async move {
                let _call = call;
                let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                match this.0.link.publish_batch(requests).await {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(result);
                        }
                    }
                    Err(s) => {
                        for reply in replies {
                            let _ = reply.send(Err(s.clone()));
                        }
                    }
                }
            });
        }
    }

    /// Forwards the outbox to the bus in its order, backing off with jitter while it cannot.
    /// It reads up to [`FORWARD_BATCH`] of the oldest entries at once and sends them in
    /// `PublishBatch` calls, one after another: the bus stores each call's publishes in their
    /// order, so every topic keeps its order. A call that fails leaves its entries and the
    /// later ones for the next round; what went through, or was refused for good, is removed
    /// in one write without an fsync of its own (see the outbox's doc: an entry forwarded twice
    /// after a crash is stored once).
    async fn forward_outbox(self) {
        let Some(outbox) = self.outbox() else {
            return;
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut failing_since: Option<Instant> = None;
        let mut forwarded = 0u64;
        loop {
            let entries = match outbox.oldest(FORWARD_BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("cannot read the outbox: {e}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            if entries.is_empty() {
                if forwarded > 0 {
                    tracing::info!(
                        "the outbox is empty: {forwarded} publish{} forwarded to the bus",
                        if forwarded == 1 { "" } else { "es" }
                    );
                    forwarded = 0;
                }
                self.0.outbox_wake.notified().await;
                continue;
            }
            let mut done = Vec::new();
            let mut failed = None;
            let mut sent = 0u64;
            let oldest = entries.first().map(|(key, _)| *key);
            for batch in batches(entries, |(_, r)| r.encoded_len()) {
                let (keys, requests): (Vec<u64>, Vec<PublishRequest>) = batch.into_iter().unzip();
                let topics: Vec<String> = requests.iter().map(|r| r.topic.clone()).collect();
                let one = requests.len() == 1;
                let results = match self.0.link.publish_batch(requests).await {
                    Ok(results) => results,
                    // A call of one publish refused for what it carries (too large for the bus)
                    // is that publish's refusal: dropped, or it would stop the outbox for ever.
                    // Any other failure of the call (another protocol major, say) keeps it.
                    Err(s)
                        if one
                            && matches!(
                                s.code(),
                                tonic::Code::InvalidArgument | tonic::Code::OutOfRange
                            ) =>
                    {
                        vec![Err(s)]
                    }
                    Err(s) => {
                        failed = Some(s);
                        break;
                    }
                };
                for ((key, topic), result) in keys.into_iter().zip(topics).zip(results) {
                    match result {
                        Ok(_) => {
                            sent += 1;
                            done.push(key);
                        }
                        Err(s) if !transient(&s) => {
                            Counters::add(&self.0.counters.dropped, 1);
                            tracing::error!(
                                "the bus refused a publish on `{topic}` kept in the outbox; dropped: {}",
                                status_line(&s)
                            );
                            done.push(key);
                        }
                        // Kept for the next round. The bus stores a batch in order and stops at
                        // a failure (see PublishBatch), so what follows it here failed too.
                        Err(s) => failed = failed.or(Some(s)),
                    }
                }
                if failed.is_some() {
                    break;
                }
            }
            let moved = oldest.is_some_and(|key| done.contains(&key));
            if let Err(e) = outbox.remove(done).await {
                tracing::error!("cannot remove forwarded publishes from the outbox: {e}");
            }
            forwarded += sent;
            Counters::add(&self.0.counters.forwarded, sent);
            if let Some(s) = failed {
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    tracing::warn!(
                        "the bus does not take publishes ({}); {} wait in the outbox",
                        status_line(&s),
                        outbox.len()
                    );
                }
                // The outbox moved (its oldest entry went through): what failed after it need
                // not wait a long backoff. An oldest entry that keeps failing backs off.
                if moved {
                    backoff.reset();
                }
                tokio::time::sleep(backoff.next()).await;
            } else if sent > 0 {
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        "the bus takes publishes again after {}s; forwarding the outbox",
                        since.elapsed().as_secs()
                    );
                }
                backoff.reset();
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // The drain
    // ---------------------------------------------------------------------------------------

    fn in_flight(&self) -> usize {
        self.state().in_flight.len()
    }

    /// SIGTERM: in the contract's order. A second signal, or the drain timeout, ends it at once.
    pub async fn drain(&self, signals: &mut mpsc::UnboundedReceiver<i32>) -> Ended {
        let timeout = self.0.config.settings.drain_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        tracing::info!(
            "stopping: no new deliveries; draining for up to {}s",
            timeout.as_secs()
        );
        // 1. No new deliveries, 2. Stop to the plugin.
        let (tx, ended) = {
            let mut st = self.state();
            st.readiness.draining = true;
            let ended = st.ended.clone();
            let tx = st.conn.as_mut().map(|c| {
                if let Some(cancel) = c.routing.take() {
                    let _ = cancel.send(true);
                }
                c.tx.clone()
            });
            (tx, ended)
        };
        // 3. In-flight work finished and acked, the session closed, the outbox forwarded. The
        // Stop is sent inside the timed part: a plugin that stopped reading must not hold the
        // drain beyond its timeout or a second signal.
        let settled = async {
            if let Some(tx) = tx {
                let stop = Stop {
                    drain_timeout_ms: timeout.as_millis().min(u128::from(u32::MAX)) as u32,
                };
                let _ = tx.send(message(sidecar_message::Kind::Stop(stop))).await;
                tracing::info!("sent stop to the plugin; waiting for its in-flight work");
            }
            loop {
                let ended = ended.notified();
                {
                    let st = self.state();
                    if st.conn.is_none() && st.giving_back == 0 && st.routes == 0 {
                        break;
                    }
                }
                ended.await;
            }
            loop {
                let flushed = self.0.acks_flushed.notified();
                let published = self.0.published.notified();
                if self.0.acks_pending.load(Ordering::SeqCst) == 0
                    && self.0.publishing.load(Ordering::SeqCst) == 0
                {
                    break;
                }
                tokio::select! {
                    () = flushed => {}
                    () = published => {}
                }
            }
            if let Some(outbox) = self.outbox() {
                while !outbox.is_empty() {
                    self.0.outbox_wake.notify_one();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let timed_out = tokio::select! {
            () = settled => false,
            () = tokio::time::sleep_until(deadline) => true,
            signal = signals.recv() => {
                return Ended::Forced { signal: signal.unwrap_or(15), in_flight: self.in_flight() };
            }
        };
        // 4. Release what is still unacked, 5. deregister.
        let in_flight = self.in_flight();
        let grace = if timed_out {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        };
        let held: Vec<String> = self.state().in_flight.drain().map(|(k, _)| k).collect();
        self.give_back(held, grace).await;
        // The deliveries it knows were given back by name (nacked from the plugin's hands,
        // released by routing as it ended, see `release_unread`), on whichever replica is in
        // use. What the replica in use sent and this sidecar never read (still in transit) only
        // the replica knows: released by the session, without ids. A replica that failed
        // earlier takes its share with it: redelivered after the ack deadline.
        match self.0.link.release(Vec::new(), grace).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("released {n} deliveries that never reached the plugin"),
            Err(s) => tracing::warn!("cannot release unacked deliveries: {}", status_line(&s)),
        }
        match self.0.link.deregister(grace).await {
            Ok(()) => tracing::info!("deregistered from the Bus API"),
            Err(s) => tracing::warn!("cannot deregister: {}", status_line(&s)),
        }
        if timed_out {
            Ended::DrainTimedOut {
                timeout,
                in_flight,
                outbox: self.outbox().map_or(0, |o| o.len()),
            }
        } else {
            Ended::Drained
        }
    }
}

type SessionStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<SidecarMessage, Status>> + Send>>;

#[tonic::async_trait]
impl PluginService for Router {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<PluginMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer: Option<SocketAddr> = request.remote_addr();
        let result = match check_metadata(request.metadata()) {
            Ok(()) => self.open_session(request.into_inner()).await,
            Err(s) => Err(s),
        };
        match result {
            Ok(rx) => Ok(Response::new(Box::pin(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))),
            Err(s) => {
                tracing::warn!(
                    "refused a plugin session{}: {}",
                    peer.map_or_else(String::new, |p| format!(" from {p}")),
                    status_line(&s)
                );
                if !matches!(
                    s.code(),
                    tonic::Code::AlreadyExists | tonic::Code::Unavailable
                ) {
                    self.tell_start(Accepted::Refused(status_line(&s)));
                }
                Err(s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use tether_bus_proto::v1::plugin_service_client::PluginServiceClient;
    use tether_bus_proto::with_major;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    use super::*;
    use crate::sidecar::fake::FakeBus;

    /// A router on `bus`, granted `granted`, without an outbox.
    /// Its health checks (once `start_background` runs them) every 100 ms, answered within 50.
    async fn router_on(bus: &FakeBus, dir: &Path, granted: Vec<Grant>) -> Router {
        let file = dir.join("sidecar.yaml");
        let yaml = format!(
            "data_dir: {}\nhealth_interval: 100ms\nhealth_timeout: 50ms\n",
            dir.join("data").display()
        );
        std::fs::write(&file, yaml).unwrap();
        let vars = BTreeMap::from([
            ("INSTANCE_ID".to_owned(), "p-1".to_owned()),
            ("POOL_TYPE".to_owned(), "P".to_owned()),
            ("SIDECAR_CONFIG".to_owned(), file.display().to_string()),
        ]);
        let config = crate::sidecar::config::from_env(&vars, dir).unwrap();
        Router::new(Arc::new(config), Link::to_fake(bus.serve().await), granted)
    }

    /// A router on `bus` whose outbox holds one publish.
    async fn router_keeping_one(bus: &FakeBus, dir: &Path) -> Router {
        let router = router_on(bus, dir, vec![]).await;
        router.open_outbox().unwrap();
        let kept = PublishRequest {
            topic: "t.a".into(),
            idempotency_key: "k1".into(),
            ..Default::default()
        };
        router.outbox().unwrap().push(&kept).await.unwrap();
        router
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "not within 20 s: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A one-publish PublishBatch the bus fails for a reason that is not the publish's own
    /// (another protocol major) keeps it in the outbox, tried again; one the bus refuses for
    /// what it carries (OUT_OF_RANGE: over its message size) is dropped, or it would stop the
    /// outbox for ever.
    #[tokio::test]
    async fn the_outbox_drops_a_publish_only_for_what_it_carries() {
        let dir = tempfile::tempdir().unwrap();
        let bus = FakeBus::default();
        *bus.batch_answer.lock().unwrap() = Some(Status::failed_precondition(
            "the Bus API speaks tether.bus.v2",
        ));
        let router = router_keeping_one(&bus, dir.path()).await;
        let forwarding = tokio::spawn(router.clone().forward_outbox());
        until("the publish tried three times", || {
            bus.batches.load(Ordering::SeqCst) >= 3
        })
        .await;
        assert_eq!(router.outbox().unwrap().len(), 1);
        forwarding.abort();

        let dir = tempfile::tempdir().unwrap();
        let bus = FakeBus::default();
        *bus.batch_answer.lock().unwrap() =
            Some(Status::out_of_range("decoded message length too large"));
        let router = router_keeping_one(&bus, dir.path()).await;
        let forwarding = tokio::spawn(router.clone().forward_outbox());
        let outbox = router.outbox().unwrap();
        until("the publish dropped", || outbox.is_empty()).await;
        assert_eq!(bus.batches.load(Ordering::SeqCst), 1);
        forwarding.abort();
    }

    #[test]
    fn a_publish_counts_one_unit_per_started_kib_within_the_budget() {
        let units: Vec<u32> = [
            0,
            1,
            1024,
            1025,
            64 * 1024,
            16 << 20,
            (16 << 20) + 1,
            1 << 30,
        ]
        .into_iter()
        .map(publish_units)
        .collect();
        assert_eq!(units, [1, 1, 1, 2, 64, 16 * 1024, 16 * 1024, 16 * 1024]);
    }

    /// A plugin's session on `router`'s plugin service (served on 127.0.0.1), opened as the SDK
    /// opens it: the protocol major in the metadata, a Hello first, the Welcome read. Its
    /// connection goes through a proxy, so that it can vanish as a plugin that died does.
    struct Plugin {
        proxy: tokio::task::JoinHandle<()>,
        _client: PluginServiceClient<tonic::transport::Channel>,
        /// `None` once the plugin half-closed.
        out: Option<mpsc::UnboundedSender<PluginMessage>>,
        inbound: Streaming<SidecarMessage>,
    }

    impl Plugin {
        async fn connect(router: &Router) -> Plugin {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let sidecar = listener.local_addr().unwrap();
            drop(router.serve_plugins(listener));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let proxy = tokio::spawn(async move {
                let (mut plugin, _) = listener.accept().await.unwrap();
                let mut to = tokio::net::TcpStream::connect(sidecar).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut plugin, &mut to).await;
            });
            let mut client = PluginServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let (out, rx) = mpsc::unbounded_channel();
            let hello = v1::Hello {
                protocol_major: tether_bus_proto::PROTOCOL_MAJOR,
                client: "test".into(),
                ..Default::default()
            };
            out.send(PluginMessage {
                kind: Some(plugin_message::Kind::Hello(hello)),
            })
            .unwrap();
            let request = with_major(Request::new(UnboundedReceiverStream::new(rx)));
            let mut inbound = client.session(request).await.unwrap().into_inner();
            let first = inbound.message().await.unwrap().and_then(|m| m.kind);
            assert!(
                matches!(first, Some(sidecar_message::Kind::Welcome(_))),
                "{first:?}"
            );
            Plugin {
                proxy,
                _client: client,
                out: Some(out),
                inbound,
            }
        }

        /// Its connection closes, as when the plugin's process ends.
        fn vanish(self) {
            self.proxy.abort();
        }

        /// Sends `n` publishes ([`publish`]), `request_id` 0 to n-1.
        fn publish(&self, n: u64) {
            let out = self.out.as_ref().expect("not half-closed");
            for i in 0..n {
                let m = PluginMessage {
                    kind: Some(plugin_message::Kind::Publish(publish(i))),
                };
                out.send(m).unwrap();
            }
        }

        /// The next message from the sidecar.
        async fn next(&mut self) -> Option<sidecar_message::Kind> {
            let next = tokio::time::timeout(Duration::from_secs(20), self.inbound.message());
            let message = next.await.expect("a message within 20 s");
            message.unwrap().and_then(|m| m.kind)
        }

        /// Reads until `n` publishes were answered: each one's sequence by `request_id`, or
        /// its refusal.
        async fn results(&mut self, n: usize) -> BTreeMap<u64, Result<u64, String>> {
            let mut results = BTreeMap::new();
            while results.len() < n {
                let Some(sidecar_message::Kind::PublishResult(r)) = self.next().await else {
                    continue;
                };
                let result = match r.result {
                    Some(publish_result::Result::Accepted(a)) => Ok(a.sequence),
                    other => Err(format!("{other:?}")),
                };
                results.insert(r.request_id, result);
            }
            results
        }
    }

    /// 64 KiB with its fields: 64 units of the budget.
    fn publish(request_id: u64) -> v1::PluginPublish {
        v1::PluginPublish {
            request_id,
            topic: "t.a".into(),
            data: vec![7; 64 * 1024 - 64],
            ..Default::default()
        }
    }

    /// The budget's worth of [`publish`]es: 16 MiB of 64 KiB.
    fn budget_worth() -> usize {
        let units = publish_units(publish(u64::MAX).encoded_len());
        assert_eq!(units, 64);
        (PUBLISH_BUDGET / units) as usize
    }

    /// How many publishes the sidecar took from the plugin and has not answered.
    fn publishing(router: &Router) -> usize {
        router.0.publishing.load(Ordering::SeqCst)
    }

    /// A router on a bus that holds every PublishBatch call, with a plugin session that sent
    /// 300 publishes, once the sidecar took the budget's worth of them (256).
    async fn held_with_300_sent(bus: &FakeBus, dir: &Path) -> (Router, Plugin) {
        *bus.batch_answer.lock().unwrap() = None;
        bus.hold.send_replace(true);
        let granted = vec![Grant {
            topic: "t.>".into(),
            action: Action::Publish,
        }];
        let router = router_on(bus, dir, granted).await;
        let plugin = Plugin::connect(&router).await;
        plugin.publish(300);
        until("the sidecar took the budget's worth", || {
            publishing(&router) >= budget_worth()
        })
        .await;
        (router, plugin)
    }

    /// A plugin that publishes faster than the bus answers (here: a bus that holds every
    /// PublishBatch call) is held back once the budget is spent: the sidecar takes the budget's
    /// worth and reads nothing more until the bus answers; then every publish is answered,
    /// stored by the bus. Before, the sidecar took all 300 at once (and would take any number).
    #[tokio::test]
    async fn a_plugin_that_publishes_faster_than_the_bus_answers_is_held_back() {
        let dir = tempfile::tempdir().unwrap();
        let bus = FakeBus::default();
        let (router, mut plugin) = held_with_300_sent(&bus, dir.path()).await;
        assert_eq!(publishing(&router), 256);
        // Time to take more if it would: it must not.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(publishing(&router), 256);
        assert!(bus.batched.load(Ordering::SeqCst) <= 256);

        bus.hold.send_replace(false);
        let results = plugin.results(300).await;
        let sequences: std::collections::BTreeSet<u64> = results
            .into_values()
            .map(|r| r.expect("accepted"))
            .collect();
        assert_eq!(sequences, (1..=300).collect());
        assert_eq!(bus.batched.load(Ordering::SeqCst), 300);
        until("every answer sent", || publishing(&router) == 0).await;
    }

    /// The plugin goes away while the sidecar waits for the budget: the wait ends, and the
    /// session with it (the drain waits for that), without waiting for the bus; the publish
    /// that waited is not made. What was taken is still sent to the bus.
    #[tokio::test]
    async fn a_session_that_ends_while_the_budget_is_spent_ends_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let bus = FakeBus::default();
        let (router, plugin) = held_with_300_sent(&bus, dir.path()).await;
        assert!(router.readiness().plugin_connected);
        plugin.vanish();
        until("the session ended", || !router.readiness().plugin_connected).await;
        assert!(router.state().conn.is_none());
        // Ended while the bus still holds every publish taken: not because they were answered.
        assert_eq!(publishing(&router), 256);

        bus.hold.send_replace(false);
        until("every publish answered", || publishing(&router) == 0).await;
        assert_eq!(bus.batched.load(Ordering::SeqCst), 256);
    }

    /// SIGTERM while the budget is spent: the Stop reaches the plugin at once; once the plugin
    /// half-closed and the bus answered, every publish is answered and the drain ends in order.
    #[tokio::test]
    async fn the_drain_ends_in_order_while_the_budget_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let bus = FakeBus::default();
        let (router, mut plugin) = held_with_300_sent(&bus, dir.path()).await;
        let (_signal, mut signals) = mpsc::unbounded_channel();
        let draining = {
            let router = router.clone();
            tokio::spawn(async move { router.drain(&mut signals).await })
        };
        let stop = plugin.next().await;
        assert!(
            matches!(stop, Some(sidecar_message::Kind::Stop(_))),
            "{stop:?}"
        );
        assert_eq!(publishing(&router), 256);

        plugin.out = None;
        bus.hold.send_replace(false);
        let results = plugin.results(300).await;
        assert!(results.values().all(Result::is_ok), "{results:?}");
        let ended = tokio::time::timeout(Duration::from_secs(20), draining).await;
        assert_eq!(
            ended.expect("the drain within 20 s").unwrap(),
            Ended::Drained
        );
    }

    /// A health answer that may be queued behind publishes the sidecar does not read (its
    /// budget spent: the bus answers slowly) is no failed check, or a liveness probe would
    /// restart a healthy plugin for a slow bus; once the sidecar reads again, a plugin that
    /// does not answer fails its checks as before. (This plugin never answers.)
    #[tokio::test]
    async fn a_health_check_is_not_failed_while_the_budget_holds_the_plugin_back() {
        let dir = tempfile::tempdir().unwrap();
        let bus = FakeBus::default();
        let (router, mut plugin) = held_with_300_sent(&bus, dir.path()).await;
        router.start_background();
        let mut checks = 0;
        while checks < 5 {
            if let Some(sidecar_message::Kind::HealthCheck(_)) = plugin.next().await {
                checks += 1;
            }
        }
        // At least four checks went unanswered past their 50 ms.
        assert_eq!(router.readiness().failures, 0);

        bus.hold.send_replace(false);
        let results = plugin.results(300).await;
        assert!(results.values().all(Result::is_ok), "{results:?}");
        until(
            "a failed check, now that nothing holds the plugin back",
            || router.readiness().failures >= 1,
        )
        .await;
    }
}
