//! A Bus API client for tests, against a bus served on 127.0.0.1:0 in this process.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tether_bus::policy::Policy;
use tether_bus_proto::v1::bus_api_client::BusApiClient;
use tether_bus_proto::v1::{
    self, AckRequest, Delivery, PublishRequest, RegisterRequest, RegisterResponse,
    SubscribeRequest, Subscription,
};
use tether_bus_proto::{PROTOCOL_HEADER, SESSION_HEADER};
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

pub struct Bus {
    pub addr: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` are served, when asked for.
    pub http: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<tether_bus::Stopped, tether_bus::ServeError>>>,
}

impl Bus {
    pub async fn start(policy: Option<&str>, max_in_flight: usize) -> Bus {
        Self::start_with(|options| {
            options.policy = policy
                .map(|text| tether_bus::policy::parse(text, 0, std::path::Path::new("/")).unwrap());
            options.max_in_flight = max_in_flight;
        })
        .await
    }

    /// A bus on 127.0.0.1:0 in a new folder, with options changed by `change`.
    pub async fn start_with(change: impl FnOnce(&mut tether_bus::Options)) -> Bus {
        let dir = tempfile::tempdir().unwrap();
        let mut options =
            tether_bus::Options::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
        change(&mut options);
        let bound = tether_bus::bind(options).await.unwrap();
        let addr = bound.local_addr();
        let http = bound.http_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(bound.run(async {
            let _ = stopped.await;
        }));
        Bus {
            addr,
            http,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the bus and waits until `run` returned, every client having let go in time.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let stopped = within(self.task.take().unwrap()).await.unwrap().unwrap();
        assert_eq!(stopped, tether_bus::Stopped { cut_off: false });
    }
}

pub fn unused_policy() -> Option<Policy> {
    None
}

/// Waits for `f` at most 20 s: a test that hangs fails with a message instead.
pub async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("no answer within 20 s")
}

pub struct Client {
    pub api: BusApiClient<Channel>,
    pub session: String,
    pub registered: RegisterResponse,
}

pub fn grant(topic: &str, action: v1::Action) -> v1::Grant {
    v1::Grant {
        topic: topic.into(),
        action: action as i32,
    }
}

pub fn with_major<T>(msg: T, major: u32) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(PROTOCOL_HEADER, major.to_string().parse().unwrap());
    r
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> BusApiClient<Channel> {
        BusApiClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
    }

    pub async fn register(
        addr: SocketAddr,
        instance: &str,
        pool: &str,
        grants: Vec<v1::Grant>,
    ) -> Client {
        let mut api = Self::connect(addr).await;
        let registered = api
            .register(with_major(
                RegisterRequest {
                    protocol_major: 1,
                    instance_id: instance.into(),
                    pool_type: pool.into(),
                    requested_grants: grants,
                    ..Default::default()
                },
                1,
            ))
            .await
            .unwrap()
            .into_inner();
        Client {
            api,
            session: registered.session.clone(),
            registered,
        }
    }

    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = with_major(msg, 1);
        r.metadata_mut()
            .insert(SESSION_HEADER, self.session.parse().unwrap());
        r
    }

    pub async fn publish(
        &mut self,
        topic: &str,
        data: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<u64, Status> {
        let r = self.req(PublishRequest {
            topic: topic.into(),
            data: data.to_vec(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            idempotency_key: String::new(),
        });
        Ok(self.api.publish(r).await?.into_inner().sequence)
    }

    pub async fn subscribe(
        &mut self,
        topic: &str,
        group: &str,
        ack_deadline_ms: u32,
        max_deliver: u32,
    ) -> Result<Streaming<Delivery>, Status> {
        let r = self.req(SubscribeRequest {
            subscription: Some(Subscription {
                topic: topic.into(),
                group: group.into(),
                ack_deadline_ms,
                max_deliver,
            }),
        });
        Ok(self.api.subscribe(r).await?.into_inner())
    }

    pub async fn ack(&mut self, ids: Vec<String>) -> u32 {
        let r = self.req(AckRequest { delivery_ids: ids });
        self.api.ack(r).await.unwrap().into_inner().acked
    }
}

/// The next delivery of a stream, waiting at most 20 s.
pub async fn next(stream: &mut Streaming<Delivery>) -> Delivery {
    within(stream.message())
        .await
        .expect("the stream failed")
        .expect("the stream ended")
}

/// `GET path` over HTTP/1.0: the status line, then the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    within(stream.read_to_string(&mut answer)).await.unwrap();
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    format!("{status}\n{body}")
}
