//! The sidecar's side of the Bus API: the replica in use, the session Register answered with,
//! and the calls that carry it.
//!
//! `SIDECAR_BUS_API_URL` names one address or several, and a name may resolve to several
//! replicas (a headless Service, a Compose service with replicas): each resolved address is a
//! replica. The sidecar uses one at a time (sticky: one subscription stream per consumer, its
//! deliveries and acks on one connection). A call that finds the replica gone (unavailable, a
//! transport error, no answer in time) moves to the next one that answers, resolving the names
//! again, and is made once more there: every call may be repeated (a publish carries its
//! idempotency key, an ack or a nack repeated is harmless). With the NATS backend every replica
//! knows the session and can ack any delivery; a replica that does not know the session answers
//! `UNAUTHENTICATED`, and the sidecar registers again. Subscriptions are opened again by the
//! router when their stream breaks, on whichever replica is in use then.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tether_bus_proto::v1::bus_api_client::BusApiClient;
use tether_bus_proto::v1::{
    AckRequest, Delivery, DeregisterRequest, NackRequest, PublishBatchRequest, PublishRequest,
    PublishResponse, RegisterRequest, RegisterResponse, ReleaseRequest, SubscribeRequest,
    Subscription, publish_outcome,
};
use tether_bus_proto::{PROTOCOL_MAJOR, SESSION_HEADER, with_major};
use tokio::sync::{Mutex, RwLock};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status, Streaming};

use super::backoff::Backoff;

/// How long one call may take before it counts as failed (subscriptions excepted).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long dialing one replica may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the sidecar pings the replica it uses (HTTP/2 PING, also while no call is open),
/// and how long it waits for the answer. A replica that is gone without closing its connection
/// (its node lost or cut off, its process stopped) answers neither calls nor pings: the pings
/// close the connection within both, failing its calls and its subscription streams, and the
/// sidecar moves on (a subscription would otherwise wait for TCP to give up). A replica that is
/// only slow answers pings: they are answered below its service. The timeout leaves room for a
/// ping queued behind a large upload (the outbox forwarded over a slow link) and for a sidecar
/// paused for a few seconds on a busy node: a false alarm costs a move and new subscriptions.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(4);
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(6);

/// How to reach the Bus API: its addresses as configured and the TLS to speak.
#[derive(Clone)]
pub struct Dialer {
    /// `http://HOST:PORT` or `https://HOST:PORT`, one scheme for all.
    pub urls: Vec<String>,
    /// TLS trusting the CA file, for `https://`.
    pub tls: Option<ClientTlsConfig>,
    /// The name the certificates must carry [default: each address's host, also when it
    /// resolved to IP addresses].
    pub tls_server_name: Option<String>,
}

/// One replica: an address a configured one resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Replica {
    /// What the logs name: the configured URL, and the IP address when its host is a name.
    label: String,
    /// `scheme://IP:PORT`: what is dialed.
    uri: String,
    /// The configured host, the TLS server name unless one is configured.
    host: String,
}

/// The replica in use and a client on it.
struct Current {
    client: BusApiClient<Channel>,
    replica: Replica,
    /// Counts the moves: a caller that saw a failure on an older one does not move again.
    generation: u64,
}

struct Shared {
    dialer: Dialer,
    current: std::sync::RwLock<Current>,
    /// One move at a time.
    moving: Mutex<()>,
    /// The last move that found no replica: the generation it tried to leave, and when it
    /// ended. A caller that failed before then and waited for it does not dial again.
    failed_move: std::sync::Mutex<Option<(u64, Instant)>>,
    register: RegisterRequest,
    session: RwLock<String>,
    reregistering: Mutex<()>,
    /// Set by Deregister: a call failing afterwards must not register the instance again.
    closing: AtomicBool,
    /// Set when the Bus API answered PublishBatch with UNIMPLEMENTED (a bus older than the
    /// call): batches go as single publishes from then on.
    no_batches: AtomicBool,
    /// Moves to another replica so far.
    moves: AtomicU64,
}

#[derive(Clone)]
pub struct Link(Arc<Shared>);

/// A status as one line: its code and message.
pub fn status_line(s: &Status) -> String {
    // A failure on this side (the connection broke, a ping went unanswered) says what it was
    // only in its source: `http2 error` alone names nothing.
    let message = crate::causes(s.message(), std::error::Error::source(s));
    let code = format!("{:?}", s.code());
    if message.is_empty() {
        code
    } else {
        format!("{message} ({code})")
    }
}

/// One publish's result in a batch's answer.
fn outcome(o: tether_bus_proto::v1::PublishOutcome) -> Result<PublishResponse, Status> {
    match o.result {
        Some(publish_outcome::Result::Published(p)) => Ok(p),
        Some(publish_outcome::Result::Failed(f)) => Err(Status::new(f.code.into(), f.message)),
        None => Err(Status::internal(
            "the Bus API answered a publish without its result",
        )),
    }
}

/// A failure the bus may not repeat: worth keeping the publish and trying again. `INTERNAL`
/// too: a publish the outbox holds was acknowledged to the plugin, and only a refusal of the
/// publish itself may drop it (the bus answers `INVALID_ARGUMENT` for what its store cannot
/// take, such as a header NATS refuses or a payload over NATS's max_payload).
pub fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Internal
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unauthenticated
            | tonic::Code::Cancelled
            | tonic::Code::Aborted
            | tonic::Code::Unknown
    )
}

/// Whether a call's failure says the replica is gone or unusable (rather than the call being
/// refused): the next replica is tried.
fn replica_failed(s: &Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded
    )
}

impl Dialer {
    /// Every replica the configured addresses name now, in their order; and what could not be
    /// resolved, by address.
    async fn resolve(&self) -> (Vec<Replica>, Vec<String>) {
        let mut replicas: Vec<Replica> = Vec::new();
        let mut failures = Vec::new();
        for url in &self.urls {
            let (scheme, authority) = url.split_once("://").unwrap_or(("http", url));
            let Some((host, port)) = authority.rsplit_once(':') else {
                failures.push(format!("{url}: no port"));
                continue;
            };
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let addrs: Vec<SocketAddr> = match (bare.parse::<IpAddr>(), port.parse::<u16>()) {
                (_, Err(_)) => {
                    failures.push(format!("{url}: `{port}` is not a port"));
                    continue;
                }
                (Ok(ip), Ok(port)) => vec![SocketAddr::new(ip, port)],
                (Err(_), Ok(port)) => match tokio::net::lookup_host((bare, port)).await {
                    Ok(found) => found.collect(),
                    Err(e) => {
                        failures.push(format!("{url}: cannot resolve `{bare}`: {e}"));
                        continue;
                    }
                },
            };
            let literal = bare.parse::<IpAddr>().is_ok();
            for addr in addrs {
                let uri = format!("{scheme}://{addr}");
                if replicas.iter().any(|r| r.uri == uri) {
                    continue;
                }
                replicas.push(Replica {
                    label: if literal {
                        url.clone()
                    } else {
                        format!("{url} ({addr})")
                    },
                    uri,
                    host: bare.to_owned(),
                });
            }
        }
        (replicas, failures)
    }

    /// Dials one replica, for at most `timeout`.
    async fn dial(&self, replica: &Replica, timeout: Duration) -> Result<Channel, String> {
        let mut endpoint = Endpoint::from_shared(replica.uri.clone())
            .map_err(|e| {
                format!(
                    "`{}` is not a usable address: {}",
                    replica.uri,
                    crate::error_chain(&e)
                )
            })?
            .connect_timeout(timeout.min(DIAL_TIMEOUT))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            let name = self.tls_server_name.as_deref().unwrap_or(&replica.host);
            endpoint = endpoint
                .tls_config(tls.clone().domain_name(name))
                .map_err(|e| format!("TLS to {}: {}", replica.label, crate::error_chain(&e)))?;
        }
        let connect = endpoint.connect();
        match tokio::time::timeout(timeout.max(Duration::from_millis(100)), connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(crate::error_chain(&e)),
            Err(_) => Err(format!("no connection within {}ms", timeout.as_millis())),
        }
    }
}

impl Link {
    /// A link to the bus at `uri` with the session `s`, for tests with a fake bus.
    #[cfg(test)]
    pub(crate) fn to_fake(uri: String) -> Link {
        let dialer = Dialer {
            urls: vec![uri.clone()],
            tls: None,
            tls_server_name: None,
        };
        let link = Self::lazy(dialer, &uri);
        *link.0.session.try_write().expect("a new link") = "s".into();
        link
    }

    /// A link that dials `uri` on its first call, for tests.
    #[cfg(test)]
    fn lazy(dialer: Dialer, uri: &str) -> Link {
        let channel = Endpoint::from_shared(uri.to_owned())
            .expect("a test's address")
            .connect_lazy();
        let replica = Replica {
            label: uri.to_owned(),
            uri: uri.to_owned(),
            host: "127.0.0.1".into(),
        };
        Self::on(dialer, channel, replica, RegisterRequest::default())
    }

    /// Step 1: resolves the addresses and dials each replica in turn until one answers or
    /// `deadline` passes, backing off between rounds and resolving again for each.
    pub async fn connect(
        dialer: Dialer,
        deadline: Duration,
        register: RegisterRequest,
    ) -> Result<Self, String> {
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let (channel, replica) = 'dialed: loop {
            let (replicas, mut failures) = dialer.resolve().await;
            let single = replicas.len() == 1 && failures.is_empty();
            for r in &replicas {
                let left = deadline.saturating_sub(started.elapsed());
                match dialer.dial(r, left).await {
                    Ok(c) => break 'dialed (c, r.clone()),
                    Err(e) if single => failures.push(e),
                    Err(e) => failures.push(format!("{}: {e}", r.label)),
                }
            }
            let waited = started.elapsed();
            if waited >= deadline {
                return Err(format!(
                    "cannot reach the Bus API at {} within {}s: {}",
                    dialer.urls.join(","),
                    deadline.as_secs(),
                    failures.join("; ")
                ));
            }
            tracing::debug!("the Bus API does not answer yet: {}", failures.join("; "));
            tokio::time::sleep(backoff.next().min(deadline - waited)).await;
        };
        Ok(Self::on(dialer, channel, replica, register))
    }

    /// A link using `replica` through `channel`, with no session yet.
    fn on(dialer: Dialer, channel: Channel, replica: Replica, register: RegisterRequest) -> Link {
        Link(Arc::new(Shared {
            dialer,
            current: std::sync::RwLock::new(Current {
                client: BusApiClient::new(channel),
                replica,
                generation: 0,
            }),
            moving: Mutex::new(()),
            failed_move: std::sync::Mutex::new(None),
            register,
            session: RwLock::new(String::new()),
            reregistering: Mutex::new(()),
            closing: AtomicBool::new(false),
            no_batches: AtomicBool::new(false),
            moves: AtomicU64::new(0),
        }))
    }

    /// How many times the sidecar moved to another replica.
    pub fn moves(&self) -> u64 {
        self.0.moves.load(Ordering::Relaxed)
    }

    /// The replica in use, as the logs name it.
    pub fn url(&self) -> String {
        self.current().1.label
    }

    /// The client on the replica in use, the replica, and the generation.
    fn current(&self) -> (BusApiClient<Channel>, Replica, u64) {
        let c = self
            .0
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (c.client.clone(), c.replica.clone(), c.generation)
    }

    /// The replica of `generation` failed (`why`): moves to the next replica that answers,
    /// trying the failed one last, until `deadline` (the call's own). Answers whether a call
    /// should be made again: the replica in use is not the failed one's connection any more.
    /// Callers that fail together make one round of dials: one that waited for a move that
    /// found nothing answers false at once (a publish then goes to the outbox), instead of
    /// dialing every replica again after it.
    async fn moved_on(&self, generation: u64, why: &Status, deadline: Instant) -> bool {
        let asked = Instant::now();
        let Ok(_one) = tokio::time::timeout_at(deadline.into(), self.0.moving.lock()).await else {
            return false;
        };
        let (_, failed, now) = self.current();
        if now != generation {
            return true;
        }
        let failed_move = *self
            .0
            .failed_move
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failed_move.is_some_and(|(g, ended)| g == generation && ended >= asked) {
            return false;
        }
        let (mut replicas, unresolved) = self.0.dialer.resolve().await;
        // The ones after the failed one first, then from the start, the failed one last.
        if let Some(i) = replicas.iter().position(|r| r.uri == failed.uri) {
            replicas.rotate_left(i + 1);
        }
        let mut failures = unresolved;
        for r in &replicas {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                failures.push(format!("{}: not tried, the call's time ran out", r.label));
                break;
            }
            match self.0.dialer.dial(r, left.min(DIAL_TIMEOUT)).await {
                Ok(channel) => {
                    let mut c = self
                        .0
                        .current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    c.client = BusApiClient::new(channel);
                    c.generation += 1;
                    // The next replica may have PublishBatch (a rolling upgrade): ask again.
                    self.0.no_batches.store(false, Ordering::Relaxed);
                    if c.replica != *r {
                        tracing::info!(
                            "using the Bus API at {} (the one at {} failed: {})",
                            r.label,
                            failed.label,
                            status_line(why)
                        );
                        c.replica = r.clone();
                        self.0.moves.fetch_add(1, Ordering::Relaxed);
                    }
                    return true;
                }
                Err(e) => failures.push(format!("{}: {e}", r.label)),
            }
        }
        tracing::debug!("no Bus API replica answers: {}", failures.join("; "));
        *self
            .0
            .failed_move
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((generation, Instant::now()));
        false
    }

    /// Makes a call on the replica in use (`f` sends a copy of `message` with `client`) and, when the
    /// replica failed, once more on the next one. Answers the session the last try carried.
    async fn attempt<T, R, F, Fut>(
        &self,
        message: &T,
        timeout: Option<Duration>,
        with_session: bool,
        f: F,
    ) -> (Result<R, Status>, String)
    where
        T: Clone,
        F: Fn(BusApiClient<Channel>, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<R, Status>>,
    {
        let mut moved = false;
        let deadline = Instant::now() + timeout.unwrap_or(CALL_TIMEOUT);
        loop {
            let (client, _, generation) = self.current();
            let session = if with_session {
                self.0.session.read().await.clone()
            } else {
                String::new()
            };
            let mut request = with_major(Request::new(message.clone()));
            if with_session && let Ok(v) = session.parse() {
                request.metadata_mut().insert(SESSION_HEADER, v);
            }
            if let Some(t) = timeout {
                request.set_timeout(t);
            }
            let result = f(client, request).await;
            match &result {
                Err(s)
                    if !moved
                        && replica_failed(s)
                        && self.moved_on(generation, s, deadline).await =>
                {
                    moved = true;
                }
                _ => return (result, session),
            }
        }
    }

    /// [`Self::attempt`] for a session; `UNAUTHENTICATED` (the bus forgot it) registers again.
    async fn call<T, R, F, Fut>(
        &self,
        message: &T,
        timeout: Option<Duration>,
        f: F,
    ) -> Result<R, Status>
    where
        T: Clone,
        F: Fn(BusApiClient<Channel>, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<R, Status>>,
    {
        let (result, session) = self.attempt(message, timeout, true, f).await;
        if let Err(s) = &result
            && s.code() == tonic::Code::Unauthenticated
            && !self.0.closing.load(Ordering::SeqCst)
        {
            self.reregister(&session).await;
        }
        result
    }

    /// Step 2, and again whenever the bus forgot the session.
    pub async fn register(&self) -> Result<RegisterResponse, Status> {
        let (answer, _) = self
            .attempt(
                &self.0.register,
                Some(CALL_TIMEOUT),
                false,
                |mut c, r| async move { c.register(r).await },
            )
            .await;
        let answer = answer?.into_inner();
        if answer.protocol_major != 0 && answer.protocol_major != PROTOCOL_MAJOR {
            return Err(Status::failed_precondition(format!(
                "the Bus API speaks tether.bus.v{} and this sidecar tether.bus.v{PROTOCOL_MAJOR}",
                answer.protocol_major
            )));
        }
        *self.0.session.write().await = answer.session.clone();
        Ok(answer)
    }

    /// Registers again after `UNAUTHENTICATED`, once for all callers that saw the same session
    /// fail.
    async fn reregister(&self, failed: &str) {
        let _one = self.0.reregistering.lock().await;
        if *self.0.session.read().await != failed {
            return;
        }
        match self.register().await {
            Ok(_) => tracing::info!("registered again with the Bus API at {}", self.url()),
            Err(s) => tracing::warn!(
                "cannot register again with the Bus API at {}: {}",
                self.url(),
                status_line(&s)
            ),
        }
    }

    pub async fn publish(&self, message: PublishRequest) -> Result<PublishResponse, Status> {
        self.call(&message, Some(CALL_TIMEOUT), |mut c, r| async move {
            c.publish(r).await.map(tonic::Response::into_inner)
        })
        .await
    }

    /// Publishes several messages in one call, stored in this order; one result per publish.
    /// The call fails as a whole only for what fails every publish (the replica gone, no
    /// session, the store unreachable: then those before the failure may be stored, and a
    /// retry stores each once by its idempotency key). A bus without the call gets them one
    /// by one, in order.
    pub async fn publish_batch(
        &self,
        publishes: Vec<PublishRequest>,
    ) -> Result<Vec<Result<PublishResponse, Status>>, Status> {
        if !self.0.no_batches.load(Ordering::Relaxed) {
            let n = publishes.len();
            let message = PublishBatchRequest { publishes };
            let answer = self
                .call(&message, Some(CALL_TIMEOUT), |mut c, r| async move {
                    c.publish_batch(r).await.map(tonic::Response::into_inner)
                })
                .await;
            match answer {
                Ok(answer) if answer.results.len() == n => {
                    return Ok(answer.results.into_iter().map(outcome).collect());
                }
                Ok(answer) => {
                    return Err(Status::internal(format!(
                        "the Bus API answered {} results to a batch of {n} publishes",
                        answer.results.len()
                    )));
                }
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    if !self.0.no_batches.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            "the Bus API at {} does not take batches of publishes (an older tether): publishing one at a time",
                            self.url()
                        );
                    }
                    return self.publish_each(message.publishes).await;
                }
                Err(s) => return Err(s),
            }
        }
        self.publish_each(publishes).await
    }

    /// A batch as single publishes, one after another (their order kept). After one that
    /// failed for a reason that may pass ([`transient`]) none is sent: a later publish of its
    /// topic must not be stored before it. The rest are answered with its failure.
    async fn publish_each(
        &self,
        publishes: Vec<PublishRequest>,
    ) -> Result<Vec<Result<PublishResponse, Status>>, Status> {
        let mut results = Vec::with_capacity(publishes.len());
        let mut stopped: Option<Status> = None;
        for p in publishes {
            if let Some(s) = &stopped {
                results.push(Err(s.clone()));
                continue;
            }
            let r = self.publish(p).await;
            if let Err(s) = &r
                && transient(s)
            {
                stopped = Some(s.clone());
            }
            results.push(r);
        }
        Ok(results)
    }

    pub async fn subscribe(
        &self,
        subscription: Subscription,
    ) -> Result<Streaming<Delivery>, Status> {
        let message = SubscribeRequest {
            subscription: Some(subscription),
        };
        self.call(&message, None, |mut c, r| async move {
            c.subscribe(r).await.map(tonic::Response::into_inner)
        })
        .await
    }

    pub async fn ack(&self, delivery_ids: Vec<String>) -> Result<u32, Status> {
        self.call(
            &AckRequest { delivery_ids },
            Some(CALL_TIMEOUT),
            |mut c, r| async move { c.ack(r).await.map(|r| r.into_inner().acked) },
        )
        .await
    }

    pub async fn nack(&self, delivery_id: String, delay_ms: u32) -> Result<(), Status> {
        let message = NackRequest {
            delivery_id,
            delay_ms,
        };
        self.call(&message, Some(CALL_TIMEOUT), |mut c, r| async move {
            c.nack(r).await.map(|_| ())
        })
        .await
    }

    /// Gives deliveries back at once; none named: every delivery this session holds on the
    /// replica in use (another replica's holdings are not its to know).
    pub async fn release(
        &self,
        delivery_ids: Vec<String>,
        timeout: Duration,
    ) -> Result<u32, Status> {
        let (result, _) = self
            .attempt(
                &ReleaseRequest { delivery_ids },
                Some(timeout),
                true,
                |mut c, r| async move { c.release(r).await.map(|r| r.into_inner().released) },
            )
            .await;
        result
    }

    pub async fn deregister(&self, timeout: Duration) -> Result<(), Status> {
        self.0.closing.store(true, Ordering::SeqCst);
        let (result, _) = self
            .attempt(
                &DeregisterRequest {},
                Some(timeout),
                true,
                |mut c, r| async move { c.deregister(r).await.map(|_| ()) },
            )
            .await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::fake::FakeBus;
    use std::sync::atomic::AtomicUsize;

    /// A replica that takes connections and drops them at once (a TLS dial to it fails),
    /// counting them.
    async fn dropping_replica() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        (url, count)
    }

    /// A bus older than PublishBatch answers it UNIMPLEMENTED: the batch goes as single
    /// publishes in its order, and later batches go so at once, without asking again.
    #[tokio::test]
    async fn a_bus_without_batches_gets_single_publishes_in_order() {
        let bus = FakeBus::default();
        let link = Link::to_fake(bus.serve().await);
        let batch = |topics: &[&str]| -> Vec<PublishRequest> {
            topics
                .iter()
                .map(|t| PublishRequest {
                    topic: (*t).into(),
                    ..Default::default()
                })
                .collect()
        };
        let sequences = |r: Vec<Result<PublishResponse, Status>>| -> Vec<u64> {
            r.into_iter().map(|r| r.unwrap().sequence).collect()
        };
        let first = link.publish_batch(batch(&["a", "b", "a"])).await.unwrap();
        assert_eq!(sequences(first), [1, 2, 3]);
        let second = link.publish_batch(batch(&["c", "d"])).await.unwrap();
        assert_eq!(sequences(second), [4, 5]);
        assert_eq!(bus.batches.load(Ordering::SeqCst), 1);
        assert_eq!(*bus.published.lock().unwrap(), ["a", "b", "a", "c", "d"]);
        // After a failure that may pass, nothing more is sent: `y` may not be stored before
        // `bad` is; both are answered with its failure.
        let third = link.publish_batch(batch(&["x", "bad", "y"])).await.unwrap();
        let answers: Vec<String> = third
            .into_iter()
            .map(|r| match r {
                Ok(p) => p.sequence.to_string(),
                Err(s) => status_line(&s),
            })
            .collect();
        assert_eq!(
            answers,
            [
                "6",
                "the store failed (Internal)",
                "the store failed (Internal)"
            ]
        );
        assert_eq!(
            *bus.published.lock().unwrap(),
            ["a", "b", "a", "c", "d", "x", "bad"]
        );
    }

    /// Eight calls fail on the replica in use together while no replica answers: one round of
    /// dials (one per replica) is made for all of them, and each answers that it found none.
    /// Before, each waiting caller dialed every replica again after the one before it.
    /// (Current-thread runtime: every caller is queued on the move before it starts.)
    #[tokio::test]
    async fn callers_that_fail_together_make_one_round_of_dials() {
        let (a, dialed_a) = dropping_replica().await;
        let (b, dialed_b) = dropping_replica().await;
        let dialer = Dialer {
            urls: vec![a, b],
            tls: Some(ClientTlsConfig::new()),
            tls_server_name: None,
        };
        let link = Link::lazy(dialer, "http://127.0.0.1:9");
        let held = link.0.moving.lock().await;
        let (queued, mut started) = tokio::sync::mpsc::unbounded_channel();
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (link, queued) = (link.clone(), queued.clone());
            callers.spawn(async move {
                queued.send(()).unwrap();
                let why = Status::unavailable("gone");
                link.moved_on(0, &why, Instant::now() + Duration::from_secs(60))
                    .await
            });
        }
        for _ in 0..8 {
            started.recv().await.unwrap();
        }
        drop(held);
        let mut answers = Vec::new();
        while let Some(moved) = callers.join_next().await {
            answers.push(moved.unwrap());
        }
        assert_eq!(answers, [false; 8]);
        assert_eq!(
            (
                dialed_a.load(Ordering::SeqCst),
                dialed_b.load(Ordering::SeqCst)
            ),
            (1, 1)
        );
        // A call that fails after that round makes a round of its own.
        let why = Status::unavailable("gone");
        assert!(
            !link
                .moved_on(0, &why, Instant::now() + Duration::from_secs(60))
                .await
        );
        assert_eq!(dialed_a.load(Ordering::SeqCst), 2);
    }
}
