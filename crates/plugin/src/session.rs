//! The `PluginService` session, step by step as `bus.proto` tells: connect, Hello, Welcome,
//! on_start, health answers, deliveries, publishes, stop, reconnect.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tether_bus_proto::v1::plugin_service_client::PluginServiceClient;
use tether_bus_proto::v1::{
    Delivery, HealthAnswer, Hello, PluginAck, PluginMessage, PluginNack, SidecarMessage, Welcome,
    plugin_message, sidecar_message,
};
use tether_bus_proto::{PROTOCOL_MAJOR, with_major};
use tokio::sync::{Mutex as AsyncMutex, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tonic::transport::Endpoint;
use tonic::{Code, Request, Status, Streaming};

use crate::bus::{Out, OutTx, Shared};
use crate::error::{chain, code_and_message, code_name};
use crate::{BoxError, Bus, CLIENT, Error, Health, Message, Options, Plugin, millis_u32};

/// The first pause between connection attempts; it doubles up to [`BACKOFF_CAP`].
const BACKOFF_START: Duration = Duration::from_millis(100);
/// The longest pause between connection attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// How long the SDK waits, after its half-close, for the sidecar to end the call.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Where `on_start` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Not called yet, or running.
    Running,
    /// Returned `Ok`: health answers and deliveries may go ahead.
    Done,
    /// Returned an error or panicked: `run` ends with it.
    Failed,
}

pub(crate) async fn run<P: Plugin>(plugin: P, options: Options) -> Result<(), Error> {
    let endpoint = options.endpoint()?;
    let stop = Arc::new(watch::Sender::new(false));
    let mut helpers = Vec::new();
    if let Some(trigger) = options.stop {
        let stop = stop.clone();
        helpers.push(tokio::spawn(async move {
            trigger.await;
            tracing::info!("stop requested: stopping the plugin");
            stop.send_replace(true);
        }));
    }
    if options.signals {
        helpers.extend(spawn_signals(stop.clone()));
    }
    let hello = Hello {
        protocol_major: PROTOCOL_MAJOR,
        subscriptions: plugin
            .subscriptions()
            .iter()
            .map(|s| s.to_proto())
            .collect(),
        client: CLIENT.to_string(),
    };
    let mut runner = Runner {
        plugin: Arc::new(plugin),
        bus: Bus {
            shared: Arc::new(Shared::new()),
        },
        addr: options.addr,
        endpoint,
        connect_timeout: options.connect_timeout,
        hello,
        stop,
        started: Arc::new(watch::Sender::new(Start::Running)),
        start: None,
        start_spawned: false,
        stop_called: Arc::new(AtomicBool::new(false)),
        handler: Arc::new(AsyncMutex::new(())),
    };
    let result = runner.run().await;
    for helper in helpers {
        helper.abort();
    }
    result
}

/// SIGTERM and SIGINT set `stop`.
#[cfg(unix)]
fn spawn_signals(stop: Arc<watch::Sender<bool>>) -> Option<JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(
                "cannot handle SIGTERM and SIGINT ({e}); only the sidecar's Stop stops the plugin"
            );
            return None;
        }
    };
    Some(tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name}: stopping the plugin");
        stop.send_replace(true);
    }))
}

#[cfg(not(unix))]
fn spawn_signals(stop: Arc<watch::Sender<bool>>) -> Option<JoinHandle<()>> {
    Some(tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C: stopping the plugin");
            stop.send_replace(true);
        }
    }))
}

/// A session the sidecar welcomed.
struct Conn {
    out: OutTx,
    inbound: Streaming<SidecarMessage>,
    welcome: Welcome,
}

/// Why a connection attempt failed.
enum Failure {
    /// Worth another attempt: the sidecar is not up (yet), or busy.
    Retry(String),
    /// The sidecar ended the call at Hello with a code that another attempt would get again.
    Refused { code: &'static str, message: String },
    /// The sidecar broke the protocol.
    Protocol(String),
}

/// How a session ended.
enum End {
    /// The plugin stopped: `run` returns.
    Stopped,
    /// The connection was lost without a Stop: connect again.
    Lost(String),
}

struct Runner<P> {
    plugin: Arc<P>,
    bus: Bus,
    addr: String,
    endpoint: Endpoint,
    connect_timeout: Duration,
    hello: Hello,
    /// Set by the stop trigger and the signals.
    stop: Arc<watch::Sender<bool>>,
    started: Arc<watch::Sender<Start>>,
    /// `on_start`'s task while its result was not taken.
    start: Option<JoinHandle<Result<(), BoxError>>>,
    start_spawned: bool,
    stop_called: Arc<AtomicBool>,
    /// Held while an `on_message` runs: one at a time, also across sessions.
    handler: Arc<AsyncMutex<()>>,
}

impl<P: Plugin> Runner<P> {
    async fn run(&mut self) -> Result<(), Error> {
        let mut result = self.sessions().await;
        if result.is_ok() {
            result = self.finish().await;
        }
        self.bus.shared.close();
        if result.is_ok() {
            tracing::info!(addr = %self.addr, "plugin stopped");
        }
        result
    }

    async fn sessions(&mut self) -> Result<(), Error> {
        let mut reconnecting = false;
        loop {
            let Some(conn) = self.connect(reconnecting).await? else {
                return Ok(());
            };
            match self.session(conn).await? {
                End::Stopped => return Ok(()),
                End::Lost(cause) => {
                    tracing::warn!(addr = %self.addr, "lost the session with the sidecar ({cause}); connecting again");
                    reconnecting = true;
                }
            }
        }
    }

    /// After the last session: `on_start` finished, `on_stop` ran, no `on_message` runs.
    async fn finish(&mut self) -> Result<(), Error> {
        if let Some(start) = self.start.take() {
            start_result(start.await).map_err(|source| Error::Start {
                addr: self.addr.clone(),
                source,
            })?;
        }
        if *self.started.borrow() == Start::Done {
            call_on_stop(&self.plugin, &self.stop_called).await;
        }
        drop(self.handler.lock().await);
        Ok(())
    }

    /// Dials until the sidecar welcomes the plugin, refuses it, or the connect timeout ran out;
    /// `None` when the plugin was asked to stop meanwhile.
    async fn connect(&mut self, reconnecting: bool) -> Result<Option<Conn>, Error> {
        let deadline = Instant::now() + self.connect_timeout;
        let mut backoff = BACKOFF_START;
        let mut stop = self.stop.subscribe();
        let mut cause = None;
        loop {
            let attempt = attempt(&self.endpoint, &self.hello, reconnecting);
            let outcome = tokio::select! {
                biased;
                () = stop_requested(&mut stop) => return Ok(None),
                outcome = tokio::time::timeout_at(deadline, attempt) => outcome,
            };
            match outcome {
                Ok(Ok(conn)) => return Ok(Some(conn)),
                Ok(Err(Failure::Retry(why))) => {
                    tracing::debug!(addr = %self.addr, "the sidecar is not reachable yet: {why}");
                    cause = Some(why);
                }
                Ok(Err(Failure::Refused { code, message })) => {
                    return Err(Error::Refused {
                        addr: self.addr.clone(),
                        code: code.to_string(),
                        message,
                    });
                }
                Ok(Err(Failure::Protocol(problem))) => {
                    return Err(Error::Protocol {
                        addr: self.addr.clone(),
                        problem,
                    });
                }
                Err(_elapsed) => return Err(self.connect_error(cause, reconnecting)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.connect_error(cause, reconnecting));
            }
            tokio::select! {
                biased;
                () = stop_requested(&mut stop) => return Ok(None),
                () = tokio::time::sleep_until((now + backoff).min(deadline)) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_CAP);
        }
    }

    fn connect_error(&self, cause: Option<String>, reconnecting: bool) -> Error {
        Error::Connect {
            addr: self.addr.clone(),
            timeout: self.connect_timeout,
            cause: cause.unwrap_or_else(|| "the sidecar did not answer".to_string()),
            reconnecting,
        }
    }

    /// One welcomed session, until the plugin stopped or the connection was lost.
    async fn session(&mut self, conn: Conn) -> Result<End, Error> {
        let Conn {
            out,
            mut inbound,
            welcome,
        } = conn;
        tracing::info!(addr = %self.addr, instance = %welcome.instance_id, "the sidecar welcomed the plugin");
        self.bus.shared.set_instance_id(welcome.instance_id);
        self.bus.shared.attach(&out);
        if !self.start_spawned {
            self.start_spawned = true;
            self.start = Some(self.spawn_start());
        }

        let (health_tx, health_rx) = mpsc::unbounded_channel();
        tokio::spawn(answer_health(
            self.plugin.clone(),
            self.started.subscribe(),
            health_rx,
            out.clone(),
        ));
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let halt = Arc::new(watch::Sender::new(false));
        let mut worker = Some(tokio::spawn(handle_deliveries(
            self.plugin.clone(),
            self.bus.clone(),
            self.started.subscribe(),
            self.handler.clone(),
            jobs_rx,
            halt.subscribe(),
            out.clone(),
        )));

        let mut start = self.start.take();
        let mut stop = self.stop.subscribe();
        let mut drain: Option<JoinHandle<()>> = None;
        let mut stopping = false;
        let mut closed: Option<Pin<Box<Sleep>>> = None;
        let ended = loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => match message.kind {
                        Some(sidecar_message::Kind::Delivery(delivery)) => {
                            if stopping {
                                tracing::debug!(topic = %delivery.topic, "a delivery after the stop began: left to the sidecar");
                            } else {
                                let _ = jobs_tx.send(delivery);
                            }
                        }
                        Some(sidecar_message::Kind::HealthCheck(check)) => {
                            let _ = health_tx.send(check.id);
                        }
                        Some(sidecar_message::Kind::PublishResult(result)) => {
                            self.bus.shared.resolve(result);
                        }
                        Some(sidecar_message::Kind::Stop(s)) => {
                            if !stopping {
                                tracing::info!(drain_timeout_ms = s.drain_timeout_ms, "the sidecar asks the plugin to stop");
                                stopping = true;
                                drain = Some(self.spawn_drain(halt.clone(), worker.take(), out.clone()));
                            }
                        }
                        Some(sidecar_message::Kind::Welcome(_)) => {
                            tracing::warn!("the sidecar sent a second Welcome; ignored");
                        }
                        None => tracing::debug!("a message of a kind this SDK does not know; ignored"),
                    },
                    Ok(None) => break None,
                    Err(status) => break Some(status),
                },
                result = async { start.as_mut().expect("enabled while Some").await }, if start.is_some() => {
                    start = None;
                    if let Err(source) = start_result(result) {
                        halt.send_replace(true);
                        let _ = out.send(Out::Close);
                        return Err(Error::Start { addr: self.addr.clone(), source });
                    }
                    tracing::debug!("on_start returned");
                }
                () = stop_requested(&mut stop), if !stopping => {
                    stopping = true;
                    drain = Some(self.spawn_drain(halt.clone(), worker.take(), out.clone()));
                }
                _ = async { drain.as_mut().expect("enabled while Some").await }, if drain.is_some() && closed.is_none() => {
                    tracing::debug!("drained: half-closed the session");
                    closed = Some(Box::pin(tokio::time::sleep(CLOSE_WAIT)));
                }
                () = async { closed.as_mut().expect("enabled while Some").await }, if closed.is_some() => {
                    tracing::warn!(addr = %self.addr, "the sidecar did not end the session within {}s of the half-close", CLOSE_WAIT.as_secs());
                    break None;
                }
            }
        };
        // Whatever `on_start` still does, the next session or `finish` waits for it.
        self.start = start;

        if closed.is_some() {
            if let Some(status) = ended.filter(|s| s.code() != Code::Ok) {
                tracing::warn!(addr = %self.addr, "the sidecar ended the session with {} after the plugin's half-close", status_text(&status));
            }
            return Ok(End::Stopped);
        }
        if stopping {
            tracing::warn!(addr = %self.addr, "the sidecar ended the session before the plugin finished stopping");
            self.bus.shared.close();
            if let Some(drain) = drain {
                let _ = drain.await;
            }
            return Ok(End::Stopped);
        }
        halt.send_replace(true);
        self.bus.shared.detach();
        Ok(End::Lost(match ended {
            Some(status) => status_text(&status),
            None => "the sidecar ended the session without a Stop".to_string(),
        }))
    }

    /// Runs `on_start` on its own task and records how it went in `started`.
    fn spawn_start(&self) -> JoinHandle<Result<(), BoxError>> {
        let (plugin, bus, started) = (self.plugin.clone(), self.bus.clone(), self.started.clone());
        let task = tokio::spawn(async move { plugin.on_start(&bus).await });
        tokio::spawn(async move {
            let result = match task.await {
                Ok(result) => result,
                Err(e) => Err(format!("on_start panicked: {}", panic_text(e)).into()),
            };
            started.send_replace(if result.is_ok() {
                Start::Done
            } else {
                Start::Failed
            });
            result
        })
    }

    /// Stops taking deliveries, runs `on_stop`, waits for the `on_message` in flight (its ack or
    /// nack is then queued) and for the publishes' results, then half-closes.
    fn spawn_drain(
        &self,
        halt: Arc<watch::Sender<bool>>,
        worker: Option<JoinHandle<()>>,
        out: OutTx,
    ) -> JoinHandle<()> {
        let plugin = self.plugin.clone();
        let called = self.stop_called.clone();
        let shared = self.bus.shared.clone();
        let handler = self.handler.clone();
        let mut started = self.started.subscribe();
        tokio::spawn(async move {
            halt.send_replace(true);
            if start_done(&mut started).await {
                call_on_stop(&plugin, &called).await;
            }
            if let Some(worker) = worker {
                let _ = worker.await;
            }
            // An on_message of a lost session may still run (and publish): wait for it too.
            drop(handler.lock().await);
            loop {
                shared.idle().await;
                if shared.close_if_idle(&out) {
                    break;
                }
            }
        })
    }
}

/// Dials, says Hello and waits for the Welcome.
async fn attempt(endpoint: &Endpoint, hello: &Hello, reconnecting: bool) -> Result<Conn, Failure> {
    let channel = endpoint.connect().await.map_err(|e| {
        // tonic's top-level "transport error" says nothing its sources do not.
        let text = chain(&e);
        Failure::Retry(match text.strip_prefix("transport error: ") {
            Some(rest) => rest.to_string(),
            None => text,
        })
    })?;
    let (out, rx) = OutTx::new();
    let _ = out.send(Out::Msg(PluginMessage {
        kind: Some(plugin_message::Kind::Hello(hello.clone())),
    }));
    // The plugin's half of the call: control messages first, then publishes in order, until
    // Out::Close (the half-close, after the publishes queued before it).
    let outgoing = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.next().await.map(|message| (message, rx))
    });
    let mut client = PluginServiceClient::new(channel);
    let response = client
        .session(with_major(Request::new(outgoing)))
        .await
        .map_err(|s| classify(&s, reconnecting))?;
    let mut inbound = response.into_inner();
    match inbound.message().await {
        Ok(Some(SidecarMessage {
            kind: Some(sidecar_message::Kind::Welcome(welcome)),
        })) => {
            if welcome.protocol_major != PROTOCOL_MAJOR {
                return Err(Failure::Protocol(format!(
                    "its Welcome speaks protocol major {}, this SDK speaks {PROTOCOL_MAJOR}",
                    welcome.protocol_major
                )));
            }
            Ok(Conn {
                out,
                inbound,
                welcome,
            })
        }
        Ok(Some(other)) => Err(Failure::Protocol(format!(
            "it sent {} before its Welcome",
            kind_name(&other)
        ))),
        Ok(None) => Err(Failure::Retry(
            "the sidecar ended the session before its Welcome".to_string(),
        )),
        Err(status) => Err(classify(&status, reconnecting)),
    }
}

/// Which ends of a call at Hello are worth another attempt. ALREADY_EXISTS is, after a lost
/// connection: the sidecar may not have noticed yet that the old session ended.
fn classify(status: &Status, reconnecting: bool) -> Failure {
    let final_code = matches!(
        status.code(),
        Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::NotFound
            | Code::OutOfRange
    ) || (status.code() == Code::AlreadyExists && !reconnecting);
    if final_code {
        Failure::Refused {
            code: code_name(status.code()),
            message: status.message().to_string(),
        }
    } else {
        Failure::Retry(status_text(status))
    }
}

/// `UNAVAILABLE: message: its source`.
fn status_text(status: &Status) -> String {
    let mut text = code_and_message(code_name(status.code()), status.message());
    if let Some(source) = std::error::Error::source(status) {
        let source = chain(source);
        if !text.contains(&source) {
            text.push_str(": ");
            text.push_str(&source);
        }
    }
    text
}

fn kind_name(message: &SidecarMessage) -> &'static str {
    match message.kind {
        Some(sidecar_message::Kind::Welcome(_)) => "a Welcome",
        Some(sidecar_message::Kind::Delivery(_)) => "a Delivery",
        Some(sidecar_message::Kind::HealthCheck(_)) => "a HealthCheck",
        Some(sidecar_message::Kind::Stop(_)) => "a Stop",
        Some(sidecar_message::Kind::PublishResult(_)) => "a PublishResult",
        None => "a message of an unknown kind",
    }
}

fn start_result(
    joined: Result<Result<(), BoxError>, tokio::task::JoinError>,
) -> Result<(), BoxError> {
    joined.unwrap_or_else(|e| Err(format!("on_start's task ended: {e}").into()))
}

/// Waits until `on_start` returned; true when it succeeded.
async fn start_done(started: &mut watch::Receiver<Start>) -> bool {
    matches!(
        started.wait_for(|s| *s != Start::Running).await.map(|s| *s),
        Ok(Start::Done)
    )
}

/// Returns once the plugin was asked to stop.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn call_on_stop<P: Plugin>(plugin: &Arc<P>, called: &AtomicBool) {
    if called.swap(true, Ordering::SeqCst) {
        return;
    }
    tracing::debug!("on_stop");
    let plugin = plugin.clone();
    if let Err(e) = tokio::spawn(async move { plugin.on_stop().await }).await {
        tracing::error!("on_stop panicked: {}", panic_text(e));
    }
}

/// Answers health checks once `on_start` succeeded, one after the other, apart from deliveries.
async fn answer_health<P: Plugin>(
    plugin: Arc<P>,
    mut started: watch::Receiver<Start>,
    mut checks: mpsc::UnboundedReceiver<u64>,
    out: OutTx,
) {
    if !start_done(&mut started).await {
        return;
    }
    while let Some(id) = checks.recv().await {
        let p = plugin.clone();
        let health = match tokio::spawn(async move { p.on_health_check().await }).await {
            Ok(health) => health,
            Err(e) => Health::unhealthy(format!("on_health_check panicked: {}", panic_text(e))),
        };
        let answer = PluginMessage {
            kind: Some(plugin_message::Kind::Health(HealthAnswer {
                id,
                healthy: health.healthy,
                detail: health.detail,
            })),
        };
        if out.send(Out::Msg(answer)).is_err() {
            return;
        }
    }
}

/// Calls `on_message` for each delivery, in order, one at a time, once `on_start` succeeded;
/// acks or nacks each. After `halt` it takes no new delivery.
async fn handle_deliveries<P: Plugin>(
    plugin: Arc<P>,
    bus: Bus,
    mut started: watch::Receiver<Start>,
    handler: Arc<AsyncMutex<()>>,
    mut jobs: mpsc::UnboundedReceiver<Delivery>,
    mut halt: watch::Receiver<bool>,
    out: OutTx,
) {
    let go = tokio::select! {
        biased;
        () = halted(&mut halt) => false,
        done = start_done(&mut started) => done,
    };
    if !go {
        return;
    }
    loop {
        let delivery = tokio::select! {
            biased;
            () = halted(&mut halt) => return,
            delivery = jobs.recv() => match delivery {
                Some(delivery) => delivery,
                None => return,
            },
        };
        // A lost session's on_message may still run: wait for it.
        let _running = tokio::select! {
            biased;
            () = halted(&mut halt) => return,
            guard = handler.lock() => guard,
        };
        let delivery_id = delivery.delivery_id.clone();
        let message = Message::from_delivery(delivery);
        let (p, b) = (plugin.clone(), bus.clone());
        let outcome = tokio::spawn(async move { p.on_message(&b, message).await }).await;
        let reply = match outcome {
            Ok(Ok(())) => plugin_message::Kind::Ack(PluginAck { delivery_id }),
            Ok(Err(nack)) => plugin_message::Kind::Nack(PluginNack {
                delivery_id,
                delay_ms: millis_u32(nack.delay),
                reason: nack.reason,
            }),
            Err(e) => {
                let reason = format!("on_message panicked: {}", panic_text(e));
                tracing::error!("{reason}");
                plugin_message::Kind::Nack(PluginNack {
                    delivery_id,
                    delay_ms: 0,
                    reason,
                })
            }
        };
        if out
            .send(Out::Msg(PluginMessage { kind: Some(reply) }))
            .is_err()
        {
            tracing::debug!(
                "the session ended before the ack or nack was sent; the bus delivers the message again"
            );
        }
    }
}

/// Returns once `halt` was set (or its sender is gone).
async fn halted(halt: &mut watch::Receiver<bool>) {
    let _ = halt.wait_for(|h| *h).await;
}

/// What a callback's task panicked with (its message when it is text).
fn panic_text(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => match payload.downcast::<String>() {
            Ok(text) => *text,
            Err(payload) => match payload.downcast::<&'static str>() {
                Ok(text) => (*text).to_string(),
                Err(_) => "a panic without a message".to_string(),
            },
        },
        Err(error) => error.to_string(),
    }
}
