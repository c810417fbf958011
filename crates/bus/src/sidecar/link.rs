//! The sidecar's side of the Bus API: one channel, the session Register answered with, and the
//! calls that carry it. A call answered `UNAUTHENTICATED` (the bus no longer knows the session)
//! registers again; transport failures are the caller's to retry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_bus_proto::v1::bus_api_client::BusApiClient;
use tether_bus_proto::v1::{
    AckRequest, Delivery, DeregisterRequest, NackRequest, PublishRequest, PublishResponse,
    RegisterRequest, RegisterResponse, ReleaseRequest, SubscribeRequest, Subscription,
};
use tether_bus_proto::{PROTOCOL_MAJOR, SESSION_HEADER, with_major};
use tokio::sync::{Mutex, RwLock};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

use super::backoff::Backoff;

/// How long one call may take before it counts as failed (subscriptions excepted).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Link {
    client: BusApiClient<Channel>,
    register: Arc<RegisterRequest>,
    session: Arc<RwLock<String>>,
    reregistering: Arc<Mutex<()>>,
    /// Set by Deregister: a call failing afterwards must not register the instance again.
    closing: Arc<std::sync::atomic::AtomicBool>,
    url: Arc<str>,
}

/// A status as one line: its code and message.
pub fn status_line(s: &Status) -> String {
    let message = s.message();
    let code = format!("{:?}", s.code());
    if message.is_empty() {
        code
    } else {
        format!("{message} ({code})")
    }
}

impl Link {
    /// Step 1: dials `url` until it answers or `deadline` passes, backing off between tries.
    pub async fn connect(
        url: &str,
        tls: Option<tonic::transport::ClientTlsConfig>,
        deadline: Duration,
        register: RegisterRequest,
    ) -> Result<Self, String> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| {
                format!(
                    "`{url}` is not a usable address: {}",
                    crate::error_chain(&e)
                )
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20));
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("TLS to {url}: {}", crate::error_chain(&e)))?;
        }
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let channel = loop {
            match endpoint.connect().await {
                Ok(c) => break c,
                Err(e) => {
                    let waited = started.elapsed();
                    if waited >= deadline {
                        return Err(format!(
                            "cannot reach the Bus API at {url} within {}s: {}",
                            deadline.as_secs(),
                            crate::error_chain(&e)
                        ));
                    }
                    tracing::debug!(
                        "the Bus API at {url} does not answer yet: {}",
                        crate::error_chain(&e)
                    );
                    tokio::time::sleep(backoff.next().min(deadline - waited)).await;
                }
            }
        };
        Ok(Self {
            client: BusApiClient::new(channel),
            register: Arc::new(register),
            session: Arc::new(RwLock::new(String::new())),
            reregistering: Arc::new(Mutex::new(())),
            closing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            url: url.into(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn request<T>(&self, message: T, timeout: Option<Duration>) -> (Request<T>, String) {
        let session = self.session.read().await.clone();
        let mut request = with_major(Request::new(message));
        if let Ok(v) = session.parse() {
            request.metadata_mut().insert(SESSION_HEADER, v);
        }
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        (request, session)
    }

    /// Step 2, and again whenever the bus forgot the session.
    pub async fn register(&self) -> Result<RegisterResponse, Status> {
        let mut request = with_major(Request::new((*self.register).clone()));
        request.set_timeout(CALL_TIMEOUT);
        let answer = self.client.clone().register(request).await?.into_inner();
        if answer.protocol_major != 0 && answer.protocol_major != PROTOCOL_MAJOR {
            return Err(Status::failed_precondition(format!(
                "the Bus API speaks tether.bus.v{} and this sidecar tether.bus.v{PROTOCOL_MAJOR}",
                answer.protocol_major
            )));
        }
        *self.session.write().await = answer.session.clone();
        Ok(answer)
    }

    /// Registers again after `UNAUTHENTICATED`, once for all callers that saw the same session
    /// fail.
    async fn reregister(&self, failed: &str) {
        let _one = self.reregistering.lock().await;
        if *self.session.read().await != failed {
            return;
        }
        match self.register().await {
            Ok(_) => tracing::info!("registered again with the Bus API at {}", self.url),
            Err(s) => tracing::warn!(
                "cannot register again with the Bus API at {}: {}",
                self.url,
                status_line(&s)
            ),
        }
    }

    async fn after<T>(&self, result: Result<T, Status>, session: &str) -> Result<T, Status> {
        if let Err(s) = &result
            && s.code() == tonic::Code::Unauthenticated
            && !self.closing.load(std::sync::atomic::Ordering::SeqCst)
        {
            self.reregister(session).await;
        }
        result
    }

    pub async fn publish(&self, message: PublishRequest) -> Result<PublishResponse, Status> {
        let (request, session) = self.request(message, Some(CALL_TIMEOUT)).await;
        let result = self
            .client
            .clone()
            .publish(request)
            .await
            .map(tonic::Response::into_inner);
        self.after(result, &session).await
    }

    pub async fn subscribe(
        &self,
        subscription: Subscription,
    ) -> Result<Streaming<Delivery>, Status> {
        let (request, session) = self
            .request(
                SubscribeRequest {
                    subscription: Some(subscription),
                },
                None,
            )
            .await;
        let result = self
            .client
            .clone()
            .subscribe(request)
            .await
            .map(tonic::Response::into_inner);
        self.after(result, &session).await
    }

    pub async fn ack(&self, delivery_ids: Vec<String>) -> Result<u32, Status> {
        let (request, session) = self
            .request(AckRequest { delivery_ids }, Some(CALL_TIMEOUT))
            .await;
        let result = self
            .client
            .clone()
            .ack(request)
            .await
            .map(|r| r.into_inner().acked);
        self.after(result, &session).await
    }

    pub async fn nack(&self, delivery_id: String, delay_ms: u32) -> Result<(), Status> {
        let (request, session) = self
            .request(
                NackRequest {
                    delivery_id,
                    delay_ms,
                },
                Some(CALL_TIMEOUT),
            )
            .await;
        let result = self.client.clone().nack(request).await.map(|_| ());
        self.after(result, &session).await
    }

    /// Gives deliveries back at once; none named: every delivery this session holds.
    pub async fn release(
        &self,
        delivery_ids: Vec<String>,
        timeout: Duration,
    ) -> Result<u32, Status> {
        let (request, _) = self
            .request(ReleaseRequest { delivery_ids }, Some(timeout))
            .await;
        self.client
            .clone()
            .release(request)
            .await
            .map(|r| r.into_inner().released)
    }

    pub async fn deregister(&self, timeout: Duration) -> Result<(), Status> {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let (request, _) = self.request(DeregisterRequest {}, Some(timeout)).await;
        self.client.clone().deregister(request).await.map(|_| ())
    }
}
