//! gRPC over TLS: a client that trusts the bus's CA publishes; a plaintext client fails.

#![allow(clippy::print_stderr)]

#[path = "support/certs.rs"]
mod certs;
mod support;

use certs::ca_and_server;

use support::*;
use tether_bus_proto::v1::bus_api_client::BusApiClient;
use tether_bus_proto::v1::{Action, RegisterRequest};
use tonic::transport::Channel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_the_ca_publishes_and_a_plaintext_one_fails() {
    let files = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_server();
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (ca, cert, key) = (
        write("ca.pem", &ca),
        write("cert.pem", &cert),
        write("key.pem", &key),
    );
    let tls = tether_bus::tls::server(&cert, &key).unwrap();
    let bus = Bus::start_with(|o| o.tls = Some(tls)).await;

    let register = |instance: &'static str| RegisterRequest {
        protocol_major: 1,
        instance_id: instance.into(),
        pool_type: "P".into(),
        requested_grants: vec![grant("t.*", Action::Publish)],
        ..Default::default()
    };
    for domain in [Some("localhost"), None] {
        let channel = Channel::from_shared(format!("https://127.0.0.1:{}", bus.addr.port()))
            .unwrap()
            .tls_config(tether_bus::tls::client_tls(&ca, domain).unwrap())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut api = BusApiClient::new(channel);
        let session = within(api.register(with_major(register("tls"), 1)))
            .await
            .unwrap()
            .into_inner()
            .session;
        let mut client = Client {
            api,
            session,
            registered: Default::default(),
        };
        assert!(client.publish("t.a", b"over tls", &[]).await.unwrap() >= 1);
    }

    // Plaintext HTTP/2 to a TLS port: the call fails, it does not hang.
    let mut plain = BusApiClient::connect(format!("http://{}", bus.addr))
        .await
        .unwrap();
    let err = within(plain.register(with_major(register("plain"), 1)))
        .await
        .unwrap_err();
    eprintln!("a plaintext client gets: {err}");
    // The server answers the plaintext preface with a TLS alert and closes: the client gets a
    // transport error at once (which one depends on when it notices: a closed connection, a
    // broken pipe, a frame it cannot read), never a session.
    assert_ne!(err.code(), tonic::Code::Ok);

    // A client that does not trust the CA is refused in the handshake.
    let other = ca_and_server().0;
    let other = write("other-ca.pem", &other);
    let refused = Channel::from_shared(format!("https://127.0.0.1:{}", bus.addr.port()))
        .unwrap()
        .tls_config(tether_bus::tls::client_tls(&other, None).unwrap())
        .unwrap()
        .connect()
        .await;
    assert!(refused.is_err());
    bus.stop().await;
}
