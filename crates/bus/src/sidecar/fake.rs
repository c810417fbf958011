//! A fake Bus API for the sidecar's unit tests: single publishes numbered and noted in order,
//! and PublishBatch answered with a chosen failure (by default UNIMPLEMENTED, as a bus from
//! before the call answers it). Every other call is UNIMPLEMENTED.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tether_bus_proto::v1::bus_api_server::{BusApi, BusApiServer};
use tether_bus_proto::v1::{
    AckRequest, AckResponse, Delivery, DeregisterRequest, DeregisterResponse, NackRequest,
    NackResponse, PublishBatchRequest, PublishBatchResponse, PublishRequest, PublishResponse,
    RegisterRequest, RegisterResponse, ReleaseRequest, ReleaseResponse, SubscribeRequest,
};
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct FakeBus {
    /// PublishBatch calls received.
    pub batches: Arc<AtomicUsize>,
    /// The topics of the single publishes received, in order.
    pub published: Arc<Mutex<Vec<String>>>,
    /// How PublishBatch fails.
    pub batch_answer: Arc<Mutex<Status>>,
}

impl Default for FakeBus {
    fn default() -> Self {
        Self {
            batches: Arc::default(),
            published: Arc::default(),
            batch_answer: Arc::new(Mutex::new(Status::unimplemented(
                "Method not found: tether.bus.v1.BusApi/PublishBatch",
            ))),
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
        _: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        Err(self.batch_answer.lock().expect("answer").clone())
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
