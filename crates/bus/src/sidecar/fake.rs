//! A fake Bus API for the sidecar's unit tests: publishes numbered and noted in order, and
//! PublishBatch answered with a chosen failure (by default UNIMPLEMENTED, as a bus from before
//! the call answers it) or, with none chosen, each of its publishes stored; PublishBatch calls
//! can be held. Every other call is UNIMPLEMENTED.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tether_bus_proto::v1::bus_api_server::{BusApi, BusApiServer};
use tether_bus_proto::v1::{
    AckRequest, AckResponse, Delivery, DeregisterRequest, DeregisterResponse, NackRequest,
    NackResponse, PublishBatchRequest, PublishBatchResponse, PublishOutcome, PublishRequest,
    PublishResponse, RegisterRequest, RegisterResponse, ReleaseRequest, ReleaseResponse,
    SubscribeRequest, publish_outcome,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct FakeBus {
    /// PublishBatch calls received.
    pub batches: Arc<AtomicUsize>,
    /// Publishes received in PublishBatch calls (held ones too).
    pub batched: Arc<AtomicUsize>,
    /// The topics of the publishes stored (single or in a batch), in order: a publish's
    /// sequence is its place here, from 1.
    pub published: Arc<Mutex<Vec<String>>>,
    /// How PublishBatch fails; `None`: it stores every publish it carries.
    pub batch_answer: Arc<Mutex<Option<Status>>>,
    /// While true, PublishBatch calls wait (counted in `batches` and `batched` as they arrive)
    /// and answer once it turns false.
    pub hold: Arc<watch::Sender<bool>>,
}

impl Default for FakeBus {
    fn default() -> Self {
        Self {
            batches: Arc::default(),
            batched: Arc::default(),
            published: Arc::default(),
            batch_answer: Arc::new(Mutex::new(Some(Status::unimplemented(
                "Method not found: tether.bus.v1.BusApi/PublishBatch",
            )))),
            hold: Arc::new(watch::Sender::new(false)),
        }
    }
}

impl FakeBus {
    /// Serves it on 127.0.0.1; answers its `http://` address.
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let uri = format!("http://{}", listener.local_addr().expect("its address"));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(BusApiServer::new(self.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        uri
    }
}

fn not_here<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this test"))
}

#[tonic::async_trait]
impl BusApi for FakeBus {
    async fn register(
        &self,
        _: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        not_here()
    }
    async fn deregister(
        &self,
        _: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        not_here()
    }
    /// Numbers it; the topic `bad` fails INTERNAL (after it is noted).
    async fn publish(
        &self,
        r: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let mut published = self.published.lock().expect("published");
        let topic = r.into_inner().topic;
        published.push(topic.clone());
        if topic == "bad" {
            return Err(Status::internal("the store failed"));
        }
        Ok(Response::new(PublishResponse {
            sequence: published.len() as u64,
            duplicate: false,
        }))
    }
    async fn publish_batch(
        &self,
        r: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let publishes = r.into_inner().publishes;
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.batched.fetch_add(publishes.len(), Ordering::SeqCst);
        let _ = self.hold.subscribe().wait_for(|held| !held).await;
        if let Some(s) = self.batch_answer.lock().expect("answer").clone() {
            return Err(s);
        }
        let mut published = self.published.lock().expect("published");
        let results = publishes
            .into_iter()
            .map(|p| {
                published.push(p.topic);
                PublishOutcome {
                    result: Some(publish_outcome::Result::Published(PublishResponse {
                        sequence: published.len() as u64,
                        duplicate: false,
                    })),
                }
            })
            .collect();
        Ok(Response::new(PublishBatchResponse { results }))
    }
    type SubscribeStream = tokio_stream::Empty<Result<Delivery, Status>>;
    async fn subscribe(
        &self,
        _: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        not_here()
    }
    async fn ack(&self, _: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        not_here()
    }
    async fn nack(&self, _: Request<NackRequest>) -> Result<Response<NackResponse>, Status> {
        not_here()
    }
    async fn release(
        &self,
        _: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        not_here()
    }
}
