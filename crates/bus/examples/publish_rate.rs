//! Publishes per second with many publishes in flight, against a bus served in this process on
//! a fresh data folder (or against `--addr ADDR`, a bus already running).
//!
//! ```text
//! cargo run -p tether-bus --release --example publish_rate -- [--in-flight 64] [--count 20000]
//!     [--size 1024] [--addr 127.0.0.1:8443]
//! ```
//!
//! A measurement for a person to read, never a test assertion.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tether_bus_proto::v1::bus_api_client::BusApiClient;
use tether_bus_proto::v1::{Action, Grant, PublishRequest, RegisterRequest};
use tether_bus_proto::{PROTOCOL_HEADER, SESSION_HEADER};

struct Args {
    in_flight: usize,
    count: usize,
    size: usize,
    addr: Option<SocketAddr>,
}

fn args() -> Args {
    let mut a = Args {
        in_flight: 64,
        count: 20_000,
        size: 1024,
        addr: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--in-flight" => a.in_flight = value.parse().expect("--in-flight: a number"),
            "--count" => a.count = value.parse().expect("--count: a number"),
            "--size" => a.size = value.parse().expect("--size: a number of bytes"),
            "--addr" => a.addr = Some(value.parse().expect("--addr: an address")),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn req<T>(msg: T, session: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert(PROTOCOL_HEADER, "1".parse().unwrap());
    if !session.is_empty() {
        r.metadata_mut()
            .insert(SESSION_HEADER, session.parse().unwrap());
    }
    r
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop) = match a.addr {
        Some(addr) => (addr, None),
        None => {
            let options =
                tether_bus::Options::new("127.0.0.1:0".parse().unwrap(), dir.path().into());
            let bound = tether_bus::bind(options).await.unwrap();
            let addr = bound.local_addr();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(bound.run(async {
                let _ = stopped.await;
            }));
            (addr, Some((stop, task)))
        }
    };
    let mut api = BusApiClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let session = api
        .register(req(
            RegisterRequest {
                protocol_major: 1,
                instance_id: "bench".into(),
                pool_type: "Bench".into(),
                requested_grants: vec![Grant {
                    topic: "bench.>".into(),
                    action: Action::Publish as i32,
                }],
                ..Default::default()
            },
            "",
        ))
        .await
        .unwrap()
        .into_inner()
        .session;
    let next = Arc::new(AtomicUsize::new(0));
    let data = vec![b'x'; a.size];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.in_flight {
        let mut api = api.clone();
        let (next, session, data, count) = (next.clone(), session.clone(), data.clone(), a.count);
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let r = req(
                    PublishRequest {
                        topic: "bench.rate".into(),
                        data: data.clone(),
                        ..Default::default()
                    },
                    &session,
                );
                api.publish(r).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} publishes of {} bytes, {} in flight: {:.2} s, {:.0} publishes/s",
        a.count,
        a.size,
        a.in_flight,
        secs,
        a.count as f64 / secs
    );
    if let Some((stop, task)) = stop {
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }
}
