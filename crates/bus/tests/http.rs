//! `/healthz`, `/readyz` and `/metrics` of a bus served with `Options::http`.

mod support;

use support::*;
use tether_bus_proto::v1::{Action, NackRequest};

fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_bus_did() {
    let bus = Bus::start_with(|o| o.http = Some("127.0.0.1:0".parse().unwrap())).await;
    let http = bus.http.unwrap();
    assert_eq!(http_get(http, "/healthz").await, "HTTP/1.0 200 OK\nok\n");
    assert_eq!(
        http_get(http, "/readyz").await,
        "HTTP/1.0 200 OK\n{\"ready\":true}\n"
    );

    let mut p = Client::register(bus.addr, "p", "P", vec![grant("m.*", Action::Publish)]).await;
    let mut s = Client::register(bus.addr, "s", "S", vec![grant("m.*", Action::Subscribe)]).await;
    for i in 0..3 {
        p.publish("m.a", format!("{i}").as_bytes(), &[])
            .await
            .unwrap();
    }
    let mut stream = s.subscribe("m.*", "", 0, 0).await.unwrap();
    let (a, b, c) = (
        next(&mut stream).await,
        next(&mut stream).await,
        next(&mut stream).await,
    );
    assert_eq!(s.ack(vec![a.delivery_id, b.delivery_id]).await, 2);
    let r = s.req(NackRequest {
        delivery_id: c.delivery_id,
        delay_ms: 0,
    });
    s.api.nack(r).await.unwrap();
    let again = next(&mut stream).await;
    assert_eq!((again.sequence, again.redelivered), (c.sequence, 1));

    let body = http_get(http, "/metrics").await;
    assert!(body.starts_with("HTTP/1.0 200 OK\n"), "{body}");
    assert_eq!(metric(&body, "tether_bus_messages_published_total"), 3);
    assert_eq!(metric(&body, "tether_bus_messages_delivered_total"), 4);
    assert_eq!(metric(&body, "tether_bus_redeliveries_total"), 1);
    assert_eq!(metric(&body, "tether_bus_acks_total"), 2);
    assert_eq!(metric(&body, "tether_bus_nacks_total"), 1);
    assert_eq!(metric(&body, "tether_bus_dead_letters_total"), 0);
    assert_eq!(metric(&body, "tether_bus_consumers"), 1);
    assert!(metric(&body, "tether_bus_store_size_bytes") > 0);
    assert!(metric(&body, "tether_bus_store_syncs_total") > 0);

    drop(stream);
    bus.stop().await;
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}
