//! The Bus API server: `BusApi` over tonic, on a [`Store`].
//!
//! Every call checks the protocol major (`tether-bus-protocol` metadata) first; every call but
//! Register is made for a session (`tether-bus-session` metadata) whose instance's grants are
//! enforced on Publish and Subscribe, whoever calls.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use tether_bus_proto::PROTOCOL_MAJOR;
use tether_bus_proto::v1::bus_api_server::{BusApi, BusApiServer};
use tether_bus_proto::v1::{
    AckRequest, AckResponse, Delivery, DeregisterRequest, DeregisterResponse, NackRequest,
    NackResponse, PublishBatchRequest, PublishBatchResponse, PublishFailure, PublishOutcome,
    PublishRequest, PublishResponse, RefusedGrant, RegisterRequest, RegisterResponse,
    ReleaseRequest, ReleaseResponse, SubscribeRequest, publish_outcome,
};
use tether_bus_proto::{SESSION_HEADER, check_major, check_metadata};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use crate::http::{Method, Reply};
use crate::policy::{Action, Grant, Policy, TokenCheck};
use crate::store::{
    ConsumerConfig, NewMessage, RedbStore, Registration, Retention, Store, StoreError, StoreStats,
    SyncMode,
};
use crate::topic;

/// The ack deadline of a subscription that names none.
pub const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(30);
/// The deliveries before a dead letter, for a subscription that names none.
pub const DEFAULT_MAX_DELIVER: u32 = 5;
/// The listen address on a host: this machine only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// The listen address as PID 1 or in a container, where 127.0.0.1 is unreachable from outside.
pub const DEFAULT_LISTEN_CONTAINER: &str = "0.0.0.0:8443";

/// The files a container engine leaves at the root: Docker's, then Podman's.
pub const CONTAINER_MARKERS: [&str; 2] = ["/.dockerenv", "/run/.containerenv"];

/// How often the Bus API pings each client's connection (HTTP/2 PING), and how long it waits for
/// the answer before closing it.
const CLIENT_PING_EVERY: Duration = Duration::from_secs(10);
const CLIENT_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// [`DEFAULT_LISTEN_CONTAINER`] when this process is PID 1 or runs in a container (a file of
/// [`CONTAINER_MARKERS`] exists), [`DEFAULT_LISTEN`] otherwise.
pub fn default_listen() -> SocketAddr {
    let in_container = CONTAINER_MARKERS
        .iter()
        .any(|m| std::path::Path::new(m).exists());
    default_listen_for(std::process::id() == 1, in_container)
}

/// [`default_listen`], decided from what it looked at.
pub fn default_listen_for(pid_1: bool, in_container: bool) -> SocketAddr {
    let addr = if pid_1 || in_container {
        DEFAULT_LISTEN_CONTAINER
    } else {
        DEFAULT_LISTEN
    };
    addr.parse().expect("a valid address")
}

/// How a bus is started.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`; `None`: nowhere.
    pub http: Option<SocketAddr>,
    /// Serve gRPC over TLS with this identity ([`crate::tls::server`]); `None`: plaintext.
    pub tls: Option<crate::tls::ServerTls>,
    pub data_dir: PathBuf,
    /// `None`: no policy file, every requested grant is given.
    pub policy: Option<Policy>,
    pub retention: Retention,
    /// The most unacked deliveries one subscriber holds at once.
    pub max_in_flight: usize,
    /// How often retention by age runs over every topic.
    pub sweep_every: Duration,
    /// When commits are made durable.
    pub sync: SyncMode,
    /// Where messages and the registry are kept.
    pub backend: Backend,
    /// How long calls in flight and open connections get to finish after the stop signal.
    pub drain: Duration,
}

impl Options {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            http: None,
            tls: None,
            data_dir,
            policy: None,
            retention: Retention::default(),
            max_in_flight: 256,
            sweep_every: Duration::from_secs(60),
            sync: SyncMode::Always,
            backend: Backend::Embedded,
            drain: Duration::from_secs(10),
        }
    }
}

/// Where the bus keeps its state.
#[derive(Clone, Debug, Default)]
pub enum Backend {
    /// A redb file in [`Options::data_dir`], with [`Options::retention`] per topic and
    /// [`Options::sync`].
    #[default]
    Embedded,
    /// NATS JetStream ([`crate::nats`]); [`Options::retention`] applies to the stream, the data
    /// folder and `sync` are not used, and the Bus API keeps no state of its own.
    #[cfg(feature = "nats")]
    Nats(Box<crate::nats::NatsOptions>),
}

/// The store a bus runs on: one of the backends.
#[derive(Clone)]
pub enum AnyStore {
    Redb(RedbStore),
    #[cfg(feature = "nats")]
    Nats(crate::nats::NatsStore),
}

impl AnyStore {
    /// Why the store cannot take writes now, if it cannot.
    pub fn problem(&self) -> Option<String> {
        match self {
            Self::Redb(s) => s.stats().problem(),
            #[cfg(feature = "nats")]
            Self::Nats(s) => s.problem(),
        }
    }

    /// The embedded store's counters; none for NATS.
    fn stats(&self) -> Option<&StoreStats> {
        match self {
            Self::Redb(s) => Some(s.stats()),
            #[cfg(feature = "nats")]
            Self::Nats(_) => None,
        }
    }
}

macro_rules! each_store {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Redb($s) => $e,
            #[cfg(feature = "nats")]
            AnyStore::Nats($s) => $e,
        }
    };
}

impl Store for AnyStore {
    async fn register(&self, reg: Registration) -> crate::store::Result<()> {
        each_store!(self, s => s.register(reg).await)
    }
    async fn deregister(&self, instance: String) -> crate::store::Result<bool> {
        each_store!(self, s => s.deregister(instance).await)
    }
    async fn session(&self, session: String) -> crate::store::Result<Option<Registration>> {
        each_store!(self, s => s.session(session).await)
    }
    async fn registered_pool(&self, instance: String) -> crate::store::Result<Option<String>> {
        each_store!(self, s => s.registered_pool(instance).await)
    }
    async fn publish(
        &self,
        msg: NewMessage,
        now_ms: u64,
    ) -> crate::store::Result<crate::store::Published> {
        each_store!(self, s => s.publish(msg, now_ms).await)
    }
    async fn publish_batch(
        &self,
        msgs: Vec<NewMessage>,
        now_ms: u64,
    ) -> Vec<crate::store::Result<crate::store::Published>> {
        each_store!(self, s => s.publish_batch(msgs, now_ms).await)
    }
    async fn open_consumer(
        &self,
        name: String,
        config: ConsumerConfig,
    ) -> crate::store::Result<()> {
        each_store!(self, s => s.open_consumer(name, config).await)
    }
    async fn claim(
        &self,
        consumer: String,
        holder: String,
        now_ms: u64,
        max: usize,
    ) -> crate::store::Result<crate::store::Claimed> {
        each_store!(self, s => s.claim(consumer, holder, now_ms, max).await)
    }
    async fn ack(&self, ids: Vec<String>) -> crate::store::Result<u32> {
        each_store!(self, s => s.ack(ids).await)
    }
    async fn nack(&self, id: String, available_at_ms: u64) -> crate::store::Result<bool> {
        each_store!(self, s => s.nack(id, available_at_ms).await)
    }
    async fn release(&self, holder: String, ids: Vec<String>) -> crate::store::Result<u32> {
        each_store!(self, s => s.release(holder, ids).await)
    }
    async fn sweep(&self, now_ms: u64) -> crate::store::Result<u64> {
        each_store!(self, s => s.sweep(now_ms).await)
    }
    async fn flush(&self) -> crate::store::Result<()> {
        each_store!(self, s => s.flush().await)
    }
    fn wake_with(&self, wake: Arc<watch::Sender<u64>>) {
        each_store!(self, s => s.wake_with(wake))
    }
    fn delivery_consumer(&self, id: &str) -> Option<String> {
        each_store!(self, s => s.delivery_consumer(id))
    }
}

/// Why the bus could not start or stopped with an error.
#[derive(Debug)]
pub enum ServeError {
    /// The listen address cannot be bound.
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The `--http` address cannot be bound.
    BindHttp {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The data folder's store cannot be opened.
    Store { dir: PathBuf, error: StoreError },
    /// NATS cannot be reached or used (its message names the servers).
    Nats(StoreError),
    /// The store could not make its last writes durable when the bus stopped.
    Sync { dir: PathBuf, error: StoreError },
    /// The gRPC server failed.
    Transport(String),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            Self::BindHttp { addr, error } => {
                write!(f, "cannot listen for HTTP on {addr}: {error}")
            }
            Self::Store { dir, error } => {
                write!(
                    f,
                    "cannot open the bus's store in {}: {error}",
                    dir.display()
                )
            }
            Self::Nats(error) => write!(f, "{}", error.message),
            Self::Sync { dir, error } => write!(
                f,
                "cannot sync the bus's store in {} when stopping: {error}",
                dir.display()
            ),
            Self::Transport(e) => write!(f, "the gRPC server failed: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// What the bus counted since it started, for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Publishes answered with a new sequence (duplicates by idempotency key excluded).
    pub published: AtomicU64,
    /// Deliveries sent to subscribers, redeliveries included.
    pub delivered: AtomicU64,
    /// Of them, deliveries of a message delivered before.
    pub redelivered: AtomicU64,
    /// Messages moved to their dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Deliveries acked (that were still pending).
    pub acked: AtomicU64,
    /// Deliveries nacked.
    pub nacked: AtomicU64,
    /// Subscription streams open now.
    pub consumers: AtomicU64,
}

impl Metrics {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Where the bus is in its life, for `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    Stopping,
}

/// A bus whose sockets are bound and whose store is open, not yet serving.
pub struct Bound {
    listener: TcpListener,
    http: Option<TcpListener>,
    tls: Option<crate::tls::ServerTls>,
    service: Service<AnyStore>,
    stopping: watch::Sender<bool>,
    sweep_every: Duration,
    drain: Duration,
    data_dir: PathBuf,
}

/// Opens the store and binds the listen address; nothing is served until [`Bound::run`].
pub async fn bind(options: Options) -> Result<Bound, ServeError> {
    let store = match &options.backend {
        Backend::Embedded => AnyStore::Redb(
            RedbStore::open(&options.data_dir, options.retention, options.sync).map_err(
                |error| ServeError::Store {
                    dir: options.data_dir.clone(),
                    error,
                },
            )?,
        ),
        #[cfg(feature = "nats")]
        Backend::Nats(nats) => {
            let mut nats = nats.clone();
            nats.retention = options.retention;
            AnyStore::Nats(
                crate::nats::NatsStore::connect(&nats)
                    .await
                    .map_err(ServeError::Nats)?,
            )
        }
    };
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|error| ServeError::Bind {
            addr: options.listen,
            error,
        })?;
    let http = match options.http {
        None => None,
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|error| ServeError::BindHttp { addr, error })?,
        ),
    };
    let (stopping, stopping_rx) = watch::channel(false);
    let wake = Arc::new(watch::channel(0u64).0);
    store.wake_with(wake.clone());
    Ok(Bound {
        listener,
        http,
        tls: options.tls,
        service: Service {
            store: Arc::new(store),
            metrics: Arc::new(Metrics::default()),
            policy: options.policy.map(Arc::new),
            wake,
            stopping: stopping_rx,
            max_in_flight: options.max_in_flight.max(1),
        },
        stopping,
        sweep_every: options.sweep_every,
        drain: options.drain,
        data_dir: options.data_dir,
    })
}

impl Bound {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served, if anywhere.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    /// Serves until `shutdown` completes: then it stops accepting, ends the subscription
    /// streams, lets calls in flight finish (for at most [`Options::drain`]), makes every write
    /// durable, and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Stopped, ServeError> {
        let Bound {
            listener,
            http,
            tls,
            service,
            stopping,
            sweep_every,
            drain,
            data_dir,
        } = self;
        // A client gone without closing its connection (a sidecar's node lost or cut off)
        // answers no ping: its connection is closed, and with it its subscription streams,
        // instead of being held open for ever.
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(CLIENT_PING_EVERY))
            .http2_keepalive_timeout(Some(CLIENT_PING_TIMEOUT));
        if let Some(tls) = tls {
            // Checked by tls::server already.
            builder = builder
                .tls_config(tls.config)
                .map_err(|e| ServeError::Transport(format!("TLS: {e}")))?;
        }
        // The listeners are bound and the store open: connections are accepted from here on.
        let (phase, phase_rx) = watch::channel(Phase::Serving);
        let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let http = http.map(|listener| {
            let routes = routes(
                phase_rx,
                service.store.clone(),
                service.metrics.clone(),
                data_dir.clone(),
            );
            tokio::spawn(crate::http::serve(listener, routes, async {
                let _ = http_stopped.await;
            }))
        });
        let sweeper = {
            let store = service.store.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(sweep_every);
                loop {
                    tick.tick().await;
                    if let Err(e) = store.sweep(now_ms()).await {
                        tracing::warn!("retention sweep failed: {e}");
                    }
                }
            })
        };
        let incoming = // No Nagle: a delivery or an answer waiting for the peer's delayed ACK costs up to
            // 40 ms.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let (signalled, signal_seen) = tokio::sync::oneshot::channel::<()>();
        let signal = {
            let phase = phase.clone();
            async move {
                shutdown.await;
                phase.send_replace(Phase::Stopping);
                let _ = stopping.send(true);
                let _ = signalled.send(());
            }
        };
        // A client that never closes its connection must not keep the bus from stopping.
        let drain_bound = async move {
            match signal_seen.await {
                Ok(()) => tokio::time::sleep(drain).await,
                Err(_) => std::future::pending().await,
            }
        };
        let store = service.store.clone();
        let server = builder
            .add_service(BusApiServer::new(service))
            .serve_with_incoming_shutdown(incoming, signal);
        let result = tokio::select! {
            r = server => r
                .map(|()| Stopped { cut_off: false })
                .map_err(|e| ServeError::Transport(e.to_string())),
            () = drain_bound => Ok(Stopped { cut_off: true }),
        };
        sweeper.abort();
        // Claims, releases and (with a periodic sync) everything else: on disk before we return.
        let flushed = store.flush().await.map_err(|error| ServeError::Sync {
            dir: data_dir,
            error,
        });
        let _ = http_stop.send(());
        if let Some(http) = http {
            let _ = http.await;
        }
        flushed.and(result)
    }
}

/// How the bus stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// Some clients still held connections when [`Options::drain`] ran out: they were cut off
    /// (what they had been answered is committed; what was not answered may not be).
    pub cut_off: bool,
}

/// Binds and serves until `shutdown`.
pub async fn serve(
    options: Options,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Stopped, ServeError> {
    bind(options).await?.run(shutdown).await
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn new_session() -> Result<String, Status> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Status::internal(format!("cannot make a session id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The most publishes one PublishBatch call may carry.
const MAX_PUBLISH_BATCH: usize = 1024;

/// A store's failure as the Bus API answers it: `UNAVAILABLE` when the store cannot be reached
/// now (the sidecar then tries another replica, or keeps a publish in its outbox), `INTERNAL`
/// otherwise.
fn internal(e: StoreError) -> Status {
    if e.transient {
        Status::unavailable(e.to_string())
    } else if e.invalid {
        Status::invalid_argument(e.to_string())
    } else {
        Status::internal(e.to_string())
    }
}

/// An instance id, pool type or group name ([`crate::policy::valid_name`]).
fn check_name(what: &str, value: &str) -> Result<(), Status> {
    if crate::policy::valid_name(value) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{what} `{value}` is not valid: 1 to 128 letters, digits, `.`, `-` or `_`"
        )))
    }
}

/// `/healthz`: 200 while the process serves. `/readyz`: 200 while the store takes writes and
/// the gRPC listener accepts; 503 with a JSON reason otherwise. `/metrics`: Prometheus text.
fn routes(
    phase: watch::Receiver<Phase>,
    store: Arc<AnyStore>,
    metrics: Arc<Metrics>,
    data_dir: PathBuf,
) -> impl Fn(&Method, &str, Option<&str>) -> Reply + Clone + Send + Sync + 'static {
    move |_method: &Method, path: &str, _query: Option<&str>| match path {
        "/healthz" => Reply::text(200, "ok\n"),
        "/readyz" => {
            let why = match *phase.borrow() {
                Phase::Stopping => Some(
                    "stopping: the bus got its stop signal and is finishing the calls in flight"
                        .to_owned(),
                ),
                Phase::Serving => store.problem(),
            };
            match why {
                None => Reply::json(200, "{\"ready\":true}\n"),
                Some(reason) => Reply::json(
                    503,
                    format!("{{\"ready\":false,\"reason\":{}}}\n", json_string(&reason)),
                ),
            }
        }
        "/metrics" => Reply {
            status: 200,
            content_type: crate::http::PROMETHEUS,
            body: prometheus(
                &metrics,
                store.stats().unwrap_or(&StoreStats::default()),
                match &*store {
                    AnyStore::Redb(_) => RedbStore::file_size(&data_dir),
                    #[cfg(feature = "nats")]
                    AnyStore::Nats(_) => 0,
                },
            ),
        },
        _ => Reply::not_found(path),
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The metrics in the Prometheus text format.
fn prometheus(m: &Metrics, store: &StoreStats, store_bytes: u64) -> String {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    crate::http::prometheus(&[
        (
            "tether_bus_messages_published_total",
            "counter",
            "Messages published (answered with a new sequence).",
            get(&m.published),
        ),
        (
            "tether_bus_messages_delivered_total",
            "counter",
            "Deliveries sent to subscribers, redeliveries included.",
            get(&m.delivered),
        ),
        (
            "tether_bus_redeliveries_total",
            "counter",
            "Deliveries of a message delivered before.",
            get(&m.redelivered),
        ),
        (
            "tether_bus_dead_letters_total",
            "counter",
            "Messages moved to their dead-letter topic.",
            get(&m.dead_lettered),
        ),
        (
            "tether_bus_acks_total",
            "counter",
            "Deliveries acked.",
            get(&m.acked),
        ),
        (
            "tether_bus_nacks_total",
            "counter",
            "Deliveries nacked.",
            get(&m.nacked),
        ),
        (
            "tether_bus_consumers",
            "gauge",
            "Subscription streams open.",
            get(&m.consumers),
        ),
        (
            "tether_bus_store_size_bytes",
            "gauge",
            "Bytes the store file takes.",
            store_bytes,
        ),
        (
            "tether_bus_store_commits_total",
            "counter",
            "Store transactions committed (each holds every write that was waiting).",
            get(&store.commits),
        ),
        (
            "tether_bus_store_syncs_total",
            "counter",
            "Times the store made its commits durable (one fsync each: of its journal, or of the store file at a checkpoint).",
            get(&store.syncs),
        ),
        (
            "tether_bus_store_checkpoints_total",
            "counter",
            "Durable commits of the store file (each lets the journal start again).",
            get(&store.checkpoints),
        ),
    ])
}

struct Service<S> {
    store: Arc<S>,
    metrics: Arc<Metrics>,
    policy: Option<Arc<Policy>>,
    /// Bumped after every write that can make something deliverable.
    wake: Arc<watch::Sender<u64>>,
    stopping: watch::Receiver<bool>,
    max_in_flight: usize,
}

impl<S> Clone for Service<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            policy: self.policy.clone(),
            wake: self.wake.clone(),
            stopping: self.stopping.clone(),
            max_in_flight: self.max_in_flight,
        }
    }
}

impl<S: Store> Service<S> {
    fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The registration of the calling session, after the protocol check.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Registration, Status> {
        check_metadata(request.metadata())?;
        let Some(session) = request
            .metadata()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(Status::unauthenticated(format!(
                "the call carries no `{SESSION_HEADER}` metadata: Register first and send the session it answers"
            )));
        };
        self.store
            .session(session.to_owned())
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                Status::unauthenticated(
                    "the session is not known to this bus (deregistered, or replaced by a newer Register of its instance): Register again",
                )
            })
    }
}

fn allowed(reg: &Registration, action: Action, pattern: &str) -> Result<(), Status> {
    if reg
        .granted
        .iter()
        .any(|g| g.action == action && topic::covers(&g.topic, pattern))
    {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "instance `{}` has no grant to {} on `{pattern}`",
            reg.instance,
            action.word()
        )))
    }
}

/// Whether a consumer is the caller's to ack, nack and release: its own instance's
/// (`instance:I:P`), or a queue group's on a pattern the caller may subscribe to
/// (`group:G:P`: any such instance may join the group).
fn owns(reg: &Registration, consumer: &str) -> bool {
    match consumer.split_once(':') {
        Some(("instance", rest)) => rest.split_once(':').is_some_and(|(i, _)| i == reg.instance),
        Some(("group", rest)) => rest
            .split_once(':')
            .is_some_and(|(_, p)| allowed(reg, Action::Subscribe, p).is_ok()),
        _ => false,
    }
}

/// Refuses delivery ids of another instance's consumers (a client that bypasses the sidecar);
/// an id that is no delivery of this bus is left to the store, which ignores it.
fn check_deliveries<'a, S: Store>(
    store: &S,
    reg: &Registration,
    ids: impl IntoIterator<Item = &'a String>,
) -> Result<(), Status> {
    for id in ids {
        if let Some(consumer) = store.delivery_consumer(id)
            && !owns(reg, &consumer)
        {
            return Err(Status::permission_denied(format!(
                "delivery `{id}` is of the consumer `{consumer}`, not one of instance `{}`",
                reg.instance
            )));
        }
    }
    Ok(())
}

type DeliveryStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Delivery, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Store> BusApi for Service<S> {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        check_metadata(request.metadata())?;
        let r = request.into_inner();
        if r.protocol_major != 0 {
            check_major(r.protocol_major).map_err(Status::failed_precondition)?;
        }
        check_name("instance_id", &r.instance_id)?;
        check_name("pool_type", &r.pool_type)?;
        let mut requested = Vec::new();
        let mut refused = Vec::new();
        for g in &r.requested_grants {
            let reason = match (
                Action::from_proto(g.action),
                topic::validate_pattern(&g.topic),
            ) {
                (None, _) => Some("the action is neither publish nor subscribe".to_owned()),
                (_, Err(e)) => Some(e.to_string()),
                (Some(action), Ok(())) => {
                    requested.push(Grant {
                        topic: g.topic.clone(),
                        action,
                    });
                    None
                }
            };
            if let Some(reason) = reason {
                refused.push(RefusedGrant {
                    grant: Some(g.clone()),
                    reason,
                });
            }
        }
        let granted = match &self.policy {
            None => requested,
            Some(policy) => {
                match policy.check_token(&r.instance_id, &r.pool_type, r.token.as_deref()) {
                    TokenCheck::Ok => {}
                    TokenCheck::Missing { of } => {
                        return Err(Status::unauthenticated(format!(
                            "the policy asks {of} for a token and the Register carries none"
                        )));
                    }
                    TokenCheck::Wrong { of } => {
                        return Err(Status::unauthenticated(format!(
                            "the token does not match the one the policy gives {of}"
                        )));
                    }
                }
                // A Register replaces the instance's registration (and its session): as another
                // pool, it must also pass the token check of the pool the instance is registered
                // with, or a client sharing the sidecar's network could take the instance over
                // (and ack its deliveries) by naming a pool that asks for no token.
                if let Some(pool) = self
                    .store
                    .registered_pool(r.instance_id.clone())
                    .await
                    .map_err(internal)?
                    && pool != r.pool_type
                    && policy.check_token(&r.instance_id, &pool, r.token.as_deref())
                        != TokenCheck::Ok
                {
                    return Err(Status::permission_denied(format!(
                        "instance `{}` is registered as pool `{pool}`, whose token this Register \
                         (as pool `{}`) does not carry: it cannot replace that registration",
                        r.instance_id, r.pool_type
                    )));
                }
                let (granted, denied) = policy.decide(&r.instance_id, &r.pool_type, &requested);
                refused.extend(denied.into_iter().map(|d| RefusedGrant {
                    grant: Some(d.grant.to_proto()),
                    reason: d.reason,
                }));
                granted
            }
        };
        let session = new_session()?;
        let reg = Registration {
            instance: r.instance_id,
            pool_type: r.pool_type,
            image: r.image,
            tags: r.tags,
            granted,
            session: session.clone(),
        };
        let answer = RegisterResponse {
            protocol_major: PROTOCOL_MAJOR,
            session,
            granted: reg.granted.iter().map(Grant::to_proto).collect(),
            refused,
        };
        self.store.register(reg).await.map_err(internal)?;
        Ok(Response::new(answer))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let reg = self.caller(&request).await?;
        self.store
            .release(reg.session.clone(), Vec::new())
            .await
            .map_err(internal)?;
        self.store
            .deregister(reg.instance)
            .await
            .map_err(internal)?;
        self.wake();
        Ok(Response::new(DeregisterResponse {}))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let reg = self.caller(&request).await?;
        let p = request.into_inner();
        topic::validate_topic(&p.topic).map_err(|e| Status::invalid_argument(e.to_string()))?;
        allowed(&reg, Action::Publish, &p.topic)?;
        // The commit runs on a blocking thread: it finishes even if this call is cancelled.
        let published = self
            .store
            .publish(
                NewMessage {
                    topic: p.topic,
                    data: p.data,
                    headers: p.headers.into_iter().collect::<BTreeMap<_, _>>(),
                    idempotency_key: p.idempotency_key,
                },
                now_ms(),
            )
            .await
            .map_err(internal)?;
        if !published.duplicate {
            Metrics::add(&self.metrics.published, 1);
        }
        self.wake();
        Ok(Response::new(PublishResponse {
            sequence: published.sequence,
            duplicate: published.duplicate,
        }))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let reg = self.caller(&request).await?;
        let publishes = request.into_inner().publishes;
        if publishes.len() > MAX_PUBLISH_BATCH {
            return Err(Status::invalid_argument(format!(
                "a batch holds at most {MAX_PUBLISH_BATCH} publishes; this one holds {}",
                publishes.len()
            )));
        }
        // Each publish is checked alone; those that pass go to the store together, in order.
        let mut results: Vec<Option<Result<PublishResponse, Status>>> =
            Vec::with_capacity(publishes.len());
        let mut messages = Vec::with_capacity(publishes.len());
        for p in publishes {
            let checked = topic::validate_topic(&p.topic)
                .map_err(|e| Status::invalid_argument(e.to_string()))
                .and_then(|()| allowed(&reg, Action::Publish, &p.topic));
            match checked {
                Ok(()) => {
                    results.push(None);
                    messages.push(NewMessage {
                        topic: p.topic,
                        data: p.data,
                        headers: p.headers.into_iter().collect::<BTreeMap<_, _>>(),
                        idempotency_key: p.idempotency_key,
                    });
                }
                Err(status) => results.push(Some(Err(status))),
            }
        }
        let stored = self.store.publish_batch(messages, now_ms()).await;
        let new = stored
            .iter()
            .filter(|p| p.as_ref().is_ok_and(|p| !p.duplicate))
            .count() as u64;
        if new > 0 {
            Metrics::add(&self.metrics.published, new);
            self.wake();
        }
        // The store cannot take publishes now: the whole call fails, so that the sidecar tries
        // another replica or keeps them (those stored before are stored once again by key).
        if let Some(e) = stored
            .iter()
            .find_map(|p| p.as_ref().err().filter(|e| e.transient))
        {
            return Err(internal(e.clone()));
        }
        let mut stored = stored.into_iter();
        let results = results
            .into_iter()
            .map(|checked| {
                let result = checked.unwrap_or_else(|| {
                    match stored.next().expect("one answer per stored publish") {
                        Ok(published) => Ok(PublishResponse {
                            sequence: published.sequence,
                            duplicate: published.duplicate,
                        }),
                        Err(e) => Err(internal(e)),
                    }
                });
                PublishOutcome {
                    result: Some(match result {
                        Ok(published) => publish_outcome::Result::Published(published),
                        Err(status) => publish_outcome::Result::Failed(PublishFailure {
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                        }),
                    }),
                }
            })
            .collect();
        Ok(Response::new(PublishBatchResponse { results }))
    }

    type SubscribeStream = DeliveryStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let reg = self.caller(&request).await?;
        let Some(sub) = request.into_inner().subscription else {
            return Err(Status::invalid_argument("Subscribe needs a subscription"));
        };
        topic::validate_pattern(&sub.topic).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !sub.group.is_empty() {
            check_name("group", &sub.group)?;
        }
        allowed(&reg, Action::Subscribe, &sub.topic)?;
        let consumer = if sub.group.is_empty() {
            format!("instance:{}:{}", reg.instance, sub.topic)
        } else {
            format!("group:{}:{}", sub.group, sub.topic)
        };
        let config = ConsumerConfig {
            pattern: sub.topic.clone(),
            ack_deadline: if sub.ack_deadline_ms == 0 {
                DEFAULT_ACK_DEADLINE
            } else {
                Duration::from_millis(u64::from(sub.ack_deadline_ms))
            },
            max_deliver: if sub.max_deliver == 0 {
                DEFAULT_MAX_DELIVER
            } else {
                sub.max_deliver
            },
        };
        self.store
            .open_consumer(consumer.clone(), config)
            .await
            .map_err(internal)?;
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            this.pump(consumer, reg.session, sub.topic, tx).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let reg = self.caller(&request).await?;
        let ids = request.into_inner().delivery_ids;
        check_deliveries(&*self.store, &reg, &ids)?;
        let acked = self.store.ack(ids).await.map_err(internal)?;
        Metrics::add(&self.metrics.acked, u64::from(acked));
        self.wake();
        Ok(Response::new(AckResponse { acked }))
    }

    async fn nack(&self, request: Request<NackRequest>) -> Result<Response<NackResponse>, Status> {
        let reg = self.caller(&request).await?;
        let n = request.into_inner();
        check_deliveries(&*self.store, &reg, [&n.delivery_id])?;
        let found = self
            .store
            .nack(n.delivery_id.clone(), now_ms() + u64::from(n.delay_ms))
            .await
            .map_err(internal)?;
        if !found {
            return Err(Status::not_found(format!(
                "delivery `{}` is not pending (acked already, or its message left by retention)",
                n.delivery_id
            )));
        }
        Metrics::add(&self.metrics.nacked, 1);
        self.wake();
        Ok(Response::new(NackResponse {}))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let reg = self.caller(&request).await?;
        let ids = request.into_inner().delivery_ids;
        check_deliveries(&*self.store, &reg, &ids)?;
        let released = self
            .store
            .release(reg.session, ids)
            .await
            .map_err(internal)?;
        self.wake();
        Ok(Response::new(ReleaseResponse { released }))
    }
}

/// Runs a closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

impl<S: Store> Service<S> {
    /// Feeds one subscription stream: claims what is deliverable, sends it, and waits for a
    /// publish, an ack, a nack, a release or the next deadline. Ends when the subscriber goes
    /// away or the bus stops; what was claimed and not sent is given back at once.
    async fn pump(
        self,
        consumer: String,
        holder: String,
        pattern: String,
        tx: mpsc::Sender<Result<Delivery, Status>>,
    ) {
        let mut wake = self.wake.subscribe();
        let mut stopping = self.stopping.clone();
        Metrics::add(&self.metrics.consumers, 1);
        let _open = OnDrop(|| {
            self.metrics.consumers.fetch_sub(1, Ordering::Relaxed);
        });
        loop {
            if *stopping.borrow() {
                return;
            }
            wake.borrow_and_update();
            let claimed = match self
                .store
                .claim(
                    consumer.clone(),
                    holder.clone(),
                    now_ms(),
                    self.max_in_flight,
                )
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(internal(e))).await;
                    return;
                }
            };
            if claimed.dead_lettered > 0 {
                Metrics::add(
                    &self.metrics.dead_lettered,
                    u64::from(claimed.dead_lettered),
                );
                self.wake();
            }
            let mut unsent = Vec::new();
            for d in claimed.deliveries {
                if !unsent.is_empty() || tx.is_closed() {
                    unsent.push(d.id);
                    continue;
                }
                let id = d.id.clone();
                let again = d.redelivered > 0;
                let delivery = Delivery {
                    delivery_id: d.id,
                    topic: d.topic,
                    data: d.data,
                    headers: d.headers.into_iter().collect(),
                    sequence: d.sequence,
                    redelivered: d.redelivered,
                    subscription: pattern.clone(),
                };
                // Counted before it can reach the subscriber, taken back if it does not.
                let counters = [
                    Some(&self.metrics.delivered),
                    again.then_some(&self.metrics.redelivered),
                ];
                for c in counters.iter().flatten() {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                if tx.send(Ok(delivery)).await.is_err() {
                    for c in counters.iter().flatten() {
                        c.fetch_sub(1, Ordering::Relaxed);
                    }
                    unsent.push(id);
                }
            }
            if !unsent.is_empty() {
                let _ = self.store.release(holder.clone(), unsent).await;
                self.wake();
                return;
            }
            let sleep = match claimed.next_wake_ms {
                Some(at) => Duration::from_millis(at.saturating_sub(now_ms())),
                None => Duration::from_secs(5),
            }
            .min(Duration::from_secs(5));
            if sleep.is_zero() {
                continue;
            }
            tokio::select! {
                _ = wake.changed() => {}
                _ = stopping.changed() => {}
                () = tokio::time::sleep(sleep) => {}
                () = tx.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_says_why_not_and_metrics_are_prometheus_text() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(AnyStore::Redb(
            RedbStore::open(dir.path(), Retention::default(), SyncMode::Always).unwrap(),
        ));
        let metrics = Arc::new(Metrics::default());
        // The listeners are bound and the store open: connections are accepted from here on.
        let (phase, phase_rx) = watch::channel(Phase::Serving);
        let routes = routes(phase_rx, store, metrics.clone(), dir.path().to_path_buf());
        let get = |path: &str| routes(&Method::GET, path, None);
        assert_eq!(get("/healthz"), Reply::text(200, "ok\n"));
        assert_eq!(get("/readyz"), Reply::json(200, "{\"ready\":true}\n"));
        phase.send_replace(Phase::Stopping);
        assert_eq!(
            get("/readyz"),
            Reply::json(
                503,
                "{\"ready\":false,\"reason\":\"stopping: the bus got its stop signal and is finishing the calls in flight\"}\n"
            )
        );
        Metrics::add(&metrics.published, 3);
        Metrics::add(&metrics.consumers, 2);
        let m = get("/metrics");
        assert_eq!((m.status, m.content_type), (200, crate::http::PROMETHEUS));
        for line in [
            "# TYPE tether_bus_messages_published_total counter\ntether_bus_messages_published_total 3\n",
            "# TYPE tether_bus_consumers gauge\ntether_bus_consumers 2\n",
            "tether_bus_messages_delivered_total 0\n",
            "tether_bus_redeliveries_total 0\n",
            "tether_bus_dead_letters_total 0\n",
            "tether_bus_acks_total 0\n",
            "tether_bus_nacks_total 0\n",
        ] {
            assert!(m.body.contains(line), "{line:?} not in:\n{}", m.body);
        }
        let size = RedbStore::file_size(dir.path());
        assert!(size > 0);
        assert!(
            m.body
                .contains(&format!("tether_bus_store_size_bytes {size}\n")),
            "{}",
            m.body
        );
        assert_eq!(get("/other"), Reply::not_found("/other"));
    }

    #[test]
    fn the_default_address_is_every_interface_only_as_pid_1_or_in_a_container() {
        let host: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let all: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        assert_eq!(default_listen_for(false, false), host);
        assert_eq!(default_listen_for(true, false), all);
        assert_eq!(default_listen_for(false, true), all);
        assert_eq!(default_listen_for(true, true), all);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a \"b\" \\ \n"), "\"a \\\"b\\\" \\\\ \\u000a\"");
    }
}
