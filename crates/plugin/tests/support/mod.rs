//! A fake sidecar (tonic's generated `PluginService` server on 127.0.0.1:0) that hands each
//! session to the test, and a test plugin that reports what the SDK called.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tether_bus_proto::v1::plugin_service_server::{PluginService, PluginServiceServer};
use tether_bus_proto::v1::{
    HealthCheck, Hello, PluginMessage, PublishAccepted, PublishRefused, PublishResult,
    SidecarMessage, Stop, Welcome, plugin_message, publish_result, sidecar_message,
};
use tether_plugin::{
    BoxError, Bus, Error, Health, Message, Nack, Options, Plugin, PublishError, Subscription,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// Waits for `f` at most 20 s: a test that hangs fails with a message instead.
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("no answer within 20 s")
}

type Outgoing = mpsc::UnboundedSender<Result<SidecarMessage, Status>>;

/// What the fake's handler waits for after Hello: `None` to answer with the stream, a status to
/// end the call.
type Decision = oneshot::Sender<Option<Status>>;

struct Fake {
    sessions: mpsc::UnboundedSender<Session>,
}

#[tonic::async_trait]
impl PluginService for Fake {
    type SessionStream = UnboundedReceiverStream<Result<SidecarMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<PluginMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(PluginMessage {
                kind: Some(plugin_message::Kind::Hello(hello)),
            }) => hello,
            other => {
                return Err(Status::invalid_argument(format!(
                    "the first message is not Hello: {other:?}"
                )));
            }
        };
        let (decide, decision) = oneshot::channel();
        let (out, out_rx) = mpsc::unbounded_channel();
        let _ = self.sessions.send(Session {
            metadata,
            hello,
            inbound,
            out,
            decide: Some(decide),
        });
        match decision.await {
            Ok(None) => Ok(Response::new(UnboundedReceiverStream::new(out_rx))),
            Ok(Some(status)) => Err(status),
            Err(_) => Err(Status::internal("the test dropped the session")),
        }
    }
}

/// A fake sidecar listening on 127.0.0.1.
pub struct Sidecar {
    pub addr: SocketAddr,
    sessions: mpsc::UnboundedReceiver<Session>,
    server: JoinHandle<()>,
}

impl Sidecar {
    pub async fn start() -> Sidecar {
        Sidecar::on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn on(addr: SocketAddr) -> Sidecar {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, sessions) = mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(PluginServiceServer::new(Fake { sessions: tx }))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Sidecar {
            addr,
            sessions,
            server,
        }
    }

    /// The next session the plugin opened, after its Hello.
    pub async fn next(&mut self) -> Session {
        within(self.sessions.recv())
            .await
            .expect("the fake stopped")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One session as the fake sidecar sees it.
pub struct Session {
    pub metadata: MetadataMap,
    pub hello: Hello,
    inbound: Streaming<PluginMessage>,
    out: Outgoing,
    decide: Option<Decision>,
}

impl Session {
    /// Answers the call with the stream and sends Welcome.
    pub fn welcome(&mut self) {
        self.decide.take().unwrap().send(None).unwrap();
        self.send(sidecar_message::Kind::Welcome(Welcome {
            protocol_major: 1,
            instance_id: "plugin-1".into(),
            granted: vec![],
        }));
    }

    /// Answers the call with the stream, without a Welcome.
    pub fn answer(&mut self) {
        self.decide.take().unwrap().send(None).unwrap();
    }

    /// Ends the call at Hello with `status`.
    pub fn refuse(mut self, status: Status) {
        self.decide.take().unwrap().send(Some(status)).unwrap();
    }

    pub fn send(&self, kind: sidecar_message::Kind) {
        self.out
            .send(Ok(SidecarMessage { kind: Some(kind) }))
            .expect("the call ended");
    }

    pub fn health_check(&self, id: u64) {
        self.send(sidecar_message::Kind::HealthCheck(HealthCheck { id }));
    }

    pub fn deliver(&self, id: &str, data: &str) {
        self.send(sidecar_message::Kind::Delivery(delivery(id, data)));
    }

    pub fn stop(&self) {
        self.send(sidecar_message::Kind::Stop(Stop {
            drain_timeout_ms: 10_000,
        }));
    }

    pub fn accept(&self, request_id: u64, sequence: u64) {
        self.send(sidecar_message::Kind::PublishResult(PublishResult {
            request_id,
            result: Some(publish_result::Result::Accepted(PublishAccepted {
                sequence,
            })),
        }));
    }

    pub fn refuse_publish(&self, request_id: u64, code: &str, message: &str) {
        self.send(sidecar_message::Kind::PublishResult(PublishResult {
            request_id,
            result: Some(publish_result::Result::Refused(PublishRefused {
                code: code.into(),
                message: message.into(),
            })),
        }));
    }

    /// The plugin's next message.
    pub async fn recv(&mut self) -> plugin_message::Kind {
        match within(self.inbound.message()).await {
            Ok(Some(PluginMessage { kind: Some(kind) })) => kind,
            other => panic!("expected a message from the plugin, got {other:?}"),
        }
    }

    /// Waits for the plugin's half-close.
    pub async fn half_closed(&mut self) {
        match within(self.inbound.message()).await {
            Ok(None) => {}
            other => panic!("expected the plugin's half-close, got {other:?}"),
        }
    }

    /// Ends the call with OK, as the sidecar does after the half-close.
    pub fn end(self) {}

    /// Ends the call with an error status, as a crash or a lost connection looks.
    pub fn fail(self, status: Status) {
        let _ = self.out.send(Err(status));
    }
}

pub fn delivery(id: &str, data: &str) -> tether_bus_proto::v1::Delivery {
    tether_bus_proto::v1::Delivery {
        delivery_id: id.into(),
        topic: "orders.eu".into(),
        data: data.as_bytes().to_vec(),
        headers: [("trace".to_string(), id.to_string())].into(),
        sequence: 41,
        redelivered: 2,
        subscription: "orders.*".into(),
    }
}

/// What the test plugin reports.
#[derive(Debug)]
pub enum Event {
    Start,
    StartPublished(Result<u64, PublishError>),
    Entered(Message),
    Published(Result<u64, PublishError>),
    Done(String),
    Health,
    Stop,
}

/// A plugin steered by the deliveries' data: steps separated by `+`, each `slow` (wait for a
/// permit of `gate`), `panic`, `nack`, `publish:<topic>`, `burst:<n>` (n publishes at once from n
/// tasks), `flood:<n>:<bytes>` (n publishes of `bytes` bytes on `flood.0`, `flood.1`, ...,
/// each called before on_message goes on, their results reported later, in order, by a task of
/// their own); anything else acks.
pub struct TestPlugin {
    pub subscriptions: Vec<Subscription>,
    pub events: mpsc::UnboundedSender<Event>,
    pub gate: Arc<Semaphore>,
    pub publish_on_start: Option<String>,
    pub fail_start: bool,
}

impl TestPlugin {
    pub fn new() -> (TestPlugin, mpsc::UnboundedReceiver<Event>, Arc<Semaphore>) {
        let (events, rx) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        (
            TestPlugin {
                subscriptions: vec![Subscription::new("orders.*")],
                events,
                gate: gate.clone(),
                publish_on_start: None,
                fail_start: false,
            },
            rx,
            gate,
        )
    }

    fn report(&self, event: Event) {
        let _ = self.events.send(event);
    }
}

impl Plugin for TestPlugin {
    fn subscriptions(&self) -> Vec<Subscription> {
        self.subscriptions.clone()
    }

    async fn on_start(&self, bus: &Bus) -> Result<(), BoxError> {
        self.report(Event::Start);
        if self.fail_start {
            return Err("no configuration at /etc/plugin.yaml".into());
        }
        if let Some(topic) = &self.publish_on_start {
            let result = bus.publish(topic.clone(), b"up".to_vec()).await;
            self.report(Event::StartPublished(result.map(|p| p.sequence)));
        }
        Ok(())
    }

    async fn on_message(&self, bus: &Bus, msg: Message) -> Result<(), Nack> {
        self.report(Event::Entered(msg.clone()));
        let data = String::from_utf8(msg.data.clone()).unwrap();
        let mut outcome = Ok(());
        for step in data.split('+') {
            if step == "panic" {
                panic!("the order is a trap");
            } else if step == "slow" {
                self.gate.acquire().await.unwrap().forget();
            } else if step == "nack" {
                outcome =
                    Err(Nack::new("cannot parse the order").after(Duration::from_millis(1500)));
            } else if let Some(topic) = step.strip_prefix("publish:") {
                let result = bus
                    .publish_with(topic, msg.data.clone(), [("source", msg.topic.as_str())])
                    .await;
                self.report(Event::Published(result.clone().map(|p| p.sequence)));
                if let Err(e) = result {
                    outcome = Err(e.into());
                }
            } else if let Some(n) = step.strip_prefix("burst:") {
                let tasks: Vec<_> = (0..n.parse::<u32>().unwrap())
                    .map(|i| {
                        let bus = bus.clone();
                        tokio::spawn(async move { bus.publish(format!("burst.{i}"), vec![]).await })
                    })
                    .collect();
                for task in tasks {
                    self.report(Event::Published(task.await.unwrap().map(|p| p.sequence)));
                }
            } else if let Some(spec) = step.strip_prefix("flood:") {
                let (n, bytes) = spec.split_once(':').unwrap();
                let (n, bytes) = (n.parse::<usize>().unwrap(), bytes.parse::<usize>().unwrap());
                let mut calls = Vec::new();
                for i in 0..n {
                    let bus = bus.clone();
                    let mut call = Box::pin(async move {
                        bus.publish(format!("flood.{i}"), vec![b'x'; bytes]).await
                    });
                    // Polled once here: the SDK has queued the publish (or held it back) when
                    // this returns, so the calls are made in order, before on_message returns.
                    let first =
                        std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx)))
                            .await;
                    assert!(first.is_pending(), "flood.{i} answered before it was sent");
                    calls.push(call);
                }
                let events = self.events.clone();
                tokio::spawn(async move {
                    for call in calls {
                        let _ = events.send(Event::Published(call.await.map(|p| p.sequence)));
                    }
                });
            }
        }
        self.report(Event::Done(data));
        outcome
    }

    async fn on_health_check(&self) -> Health {
        self.report(Event::Health);
        Health::healthy().detail("ok")
    }

    async fn on_stop(&self) {
        self.report(Event::Stop);
    }
}

/// Runs `plugin` against `addr` on its own task.
pub fn spawn_plugin(plugin: TestPlugin, options: Options) -> JoinHandle<Result<(), Error>> {
    tokio::spawn(tether_plugin::run_with(plugin, options))
}

/// The next event of the test plugin.
pub async fn event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    within(events.recv()).await.expect("the plugin is gone")
}
