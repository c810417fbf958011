//! The plugin bus example (`examples/plugin-bus`) on the machine's real Docker Engine, from
//! images built `FROM scratch` by its `build-images` (a static tether, the Rust SDK's example
//! plugin built static): nothing is pulled.
//!
//! A bus client in the test, on the Bus API's port published on 127.0.0.1, publishes an order
//! and subscribes to the signals; the plugin, which has no network of its own and is told of
//! nothing but its bus sidecar on 127.0.0.1:9191, turns the order into a signal. Once under
//! `tether run`, once from the Compose file `tether render compose` writes, under docker-compose.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;
use tether_bus_proto::v1::bus_api_client::BusApiClient;
use tether_bus_proto::v1::{
    AckRequest, Action, Delivery, Grant, PublishRequest, RegisterRequest, SubscribeRequest,
    Subscription,
};
use tether_bus_proto::{PROTOCOL_HEADER, SESSION_HEADER};
use tonic::transport::Channel;

engine_tests![
    the_plugin_bus_example_runs_under_tether_run => [Need::StaticTether, Need::StaticPlugin],
    the_plugin_bus_example_runs_from_its_rendered_compose_file => [Need::StaticTether, Need::StaticPlugin, Need::Compose],
];

/// How long the message may take to make its way round. Never a measurement.
const ROUND_TRIP: Duration = Duration::from_secs(120);

/// The example with a project, images and volume of the test's own, removed with everything the
/// test made when dropped.
struct Example {
    dir: tempfile::TempDir,
    project: String,
    tether_image: String,
    plugin_image: String,
    volume: String,
}

impl Example {
    fn new(test: &str) -> Example {
        let id = format!("{test}-{}", std::process::id());
        let e = Example {
            dir: tempfile::tempdir().unwrap(),
            project: format!("bt-{id}"),
            tether_image: format!("tether-bus-test:{id}"),
            plugin_image: format!("tether-bus-test-plugin:{id}"),
            volume: format!("bt-{id}-data"),
        };
        let example = repo().join("examples/plugin-bus");
        let built = Command::new(example.join("build-images"))
            .env("TETHER_IMAGE", &e.tether_image)
            .env("PLUGIN_IMAGE", &e.plugin_image)
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        // The example as written, with the test's names.
        let text = std::fs::read_to_string(example.join("tether.yaml"))
            .unwrap()
            .replace("project: plugin-bus", &format!("project: {}", e.project))
            .replace("tether-example/signals:local", &e.plugin_image)
            .replace("tether:local", &e.tether_image)
            .replace("tether-plugin-bus-data", &e.volume);
        assert!(text.contains(&e.project) && text.contains(&e.volume));
        std::fs::write(e.file(), text).unwrap();
        e
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("tether.yaml")
    }

    fn tether(&self, sub: &str) -> Command {
        let mut c = Command::new(tether_bin());
        c.arg(sub).arg("-f").arg(self.file());
        c
    }

    /// Every container of the project, running or not (sidecars and the Compose services carry
    /// the project's label).
    fn containers(&self) -> Vec<String> {
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=dev.tether.project={}", self.project),
            "--format",
            "{{.Names}}",
        ]);
        let mut names: Vec<String> = text(&out).lines().map(str::to_owned).collect();
        names.sort();
        names
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        for c in self.containers() {
            let _ = docker(&["rm", "-f", "-v", &c]);
        }
        let _ = self.tether("down").arg("--all").output();
        let _ = docker(&["network", "rm", &format!("tether-{}", self.project)]);
        let _ = docker(&["volume", "rm", "-f", &self.volume]);
        let _ = docker(&["rmi", "-f", &self.tether_image, &self.plugin_image]);
    }
}

/// `127.0.0.1:PORT` from `docker port`'s answer.
fn published(answer: &str) -> String {
    let line = answer
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("not published on 127.0.0.1: {answer:?}"));
    line.trim().to_owned()
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

/// The test's own instance on the bus: it publishes orders and reads signals.
struct Checker {
    api: BusApiClient<Channel>,
    session: String,
    signals: tonic::Streaming<Delivery>,
}

impl Checker {
    async fn connect(addr: &str) -> Checker {
        let url = format!("http://{addr}");
        let deadline = tokio::time::Instant::now() + ROUND_TRIP;
        let mut api = loop {
            match BusApiClient::connect(url.clone()).await {
                Ok(api) => break api,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no Bus API on {url}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let grant = |topic: &str, action: Action| Grant {
            topic: topic.into(),
            action: action as i32,
        };
        let session = api
            .register(req(
                RegisterRequest {
                    protocol_major: 1,
                    instance_id: "checker".into(),
                    pool_type: "Checker".into(),
                    requested_grants: vec![
                        grant("orders.>", Action::Publish),
                        grant("signals.>", Action::Subscribe),
                    ],
                    ..Default::default()
                },
                "",
            ))
            .await
            .unwrap()
            .into_inner()
            .session;
        let signals = api
            .subscribe(req(
                SubscribeRequest {
                    subscription: Some(Subscription {
                        topic: "signals.*".into(),
                        ..Default::default()
                    }),
                },
                &session,
            ))
            .await
            .unwrap()
            .into_inner();
        Checker {
            api,
            session,
            signals,
        }
    }

    async fn publish_order(&mut self, kind: &str, body: &str) -> u64 {
        self.api
            .publish(req(
                PublishRequest {
                    topic: format!("orders.{kind}"),
                    data: body.as_bytes().to_vec(),
                    ..Default::default()
                },
                &self.session,
            ))
            .await
            .unwrap()
            .into_inner()
            .sequence
    }

    /// The next signal, acknowledged.
    async fn next_signal(&mut self) -> Delivery {
        let d = tokio::time::timeout(ROUND_TRIP, self.signals.message())
            .await
            .expect("no signal came back in time")
            .unwrap()
            .expect("the subscription ended");
        self.api
            .ack(req(
                AckRequest {
                    delivery_ids: vec![d.delivery_id.clone()],
                },
                &self.session,
            ))
            .await
            .unwrap();
        d
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The order went through the plugin and came back as its signal.
fn assert_signal_of_order(d: &Delivery, order_sequence: u64) {
    assert_eq!(d.topic, "signals.eod");
    assert_eq!(String::from_utf8_lossy(&d.data), "buy 100 ACME");
    assert_eq!(
        d.headers.get("source-topic").map(String::as_str),
        Some("orders.eod")
    );
    assert_eq!(
        d.headers.get("source-sequence"),
        Some(&order_sequence.to_string())
    );
}

/// `sh -c SCRIPT` in a busybox container on `network`: (success, stdout and stderr).
fn on_network(network: &str, script: &str) -> (bool, String) {
    let img = busybox_image().expect("the engine tests need busybox-static");
    let out = docker(&[
        "run",
        "--rm",
        &format!("--network={network}"),
        img,
        "sh",
        "-c",
        script,
    ]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn the_plugin_bus_example_runs_under_tether_run() {
    let e = Example::new("run");
    // The Bus API first (a shared sidecar: `tether run` would start it too; up makes it
    // reachable for the checker before the plugin runs).
    let up = e.tether("up").arg("bus-api").output().unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let bus_api = format!("tether-{}-bus-api", e.project);
    let addr = published(&text(&docker(&["port", &bus_api, "8443"])));

    let rt = runtime();
    let mut checker = rt.block_on(Checker::connect(&addr));
    let order = rt.block_on(checker.publish_order("eod", "buy 100 ACME"));

    let plugin = format!("{}-plugin", e.project);
    let mut run = e.tether("run");
    run.args([
        "--",
        "docker",
        "run",
        "--rm",
        "--name",
        &plugin,
        &e.plugin_image,
    ]);
    let mut run = Run::spawn(run);
    let signal = rt.block_on(checker.next_signal());
    assert_signal_of_order(&signal, order);
    run.wait_for("signalled");

    // The plugin has no network of its own: it is in its bus sidecar's namespace, and told
    // only of 127.0.0.1:9191.
    let sidecar = text(&docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=dev.tether.project={}", e.project),
        "--filter",
        "label=dev.tether.sidecar=bus",
    ]));
    assert_eq!(sidecar.lines().count(), 1, "{sidecar}");
    let inspect: serde_json::Value =
        serde_json::from_str(&text(&docker(&["inspect", &plugin]))).unwrap();
    let p = &inspect[0];
    assert_eq!(
        p["HostConfig"]["NetworkMode"],
        format!("container:{sidecar}")
    );
    assert_eq!(p["NetworkSettings"]["Networks"], serde_json::json!({}));
    assert!(
        p["Config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&"SIDECAR_ADDR=127.0.0.1:9191".into())
    );
    // What the plugin is served on is loopback in that namespace: nothing else on the project
    // network can act as the plugin; the sidecar's health port is open to probes.
    let network = format!("tether-{}", e.project);
    let (_, refused) = on_network(&network, "nc -w 5 bus 9191 </dev/null");
    assert!(refused.contains("Connection refused"), "{refused}");
    let (healthy, answer) = on_network(&network, "wget -qO- http://bus:9192/healthz");
    assert!(healthy, "{answer}");

    // Stopping the run stops the plugin; the session sidecar is removed, the Bus API stays.
    run.signal(15);
    let (code, lines) = run.finish();
    assert!(
        [0, 143].contains(&code),
        "exit {code}:\n{}",
        lines.join("\n")
    );
    assert_eq!(e.containers(), vec![bus_api], "{}", lines.join("\n"));
}

fn compose(file: &Path, over: &Path, project: &str, args: &[&str]) -> std::process::Output {
    Command::new("docker-compose")
        .arg("-f")
        .arg(file)
        .arg("-f")
        .arg(over)
        .args(["-p", project])
        .args(args)
        .output()
        .unwrap()
}

fn the_plugin_bus_example_runs_from_its_rendered_compose_file() {
    let e = Example::new("compose");
    let file = e.dir.path().join("compose.yml");
    let out = Command::new(tether_bin())
        .args(["render", "compose", "-f"])
        .arg(e.file())
        .arg("-o")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = std::fs::read_to_string(&file).unwrap();
    assert!(
        yaml.contains("    network_mode: \"service:bus\"\n"),
        "{yaml}"
    );
    // The test's only addition: the Bus API's port, published for the checker.
    let over = e.dir.path().join("test-ports.yml");
    std::fs::write(
        &over,
        "services:\n  bus-api:\n    ports: [\"127.0.0.1::8443\"]\n",
    )
    .unwrap();
    let project = &e.project;
    let up = compose(&file, &over, project, &["up", "-d", "--no-color"]);
    let result = std::panic::catch_unwind(|| {
        assert!(
            up.status.success(),
            "{}",
            String::from_utf8_lossy(&up.stderr)
        );
        let port = compose(&file, &over, project, &["port", "bus-api", "8443"]);
        let addr = published(&text(&port));
        let rt = runtime();
        let mut checker = rt.block_on(Checker::connect(&addr));
        let order = rt.block_on(checker.publish_order("eod", "buy 100 ACME"));
        let signal = rt.block_on(checker.next_signal());
        assert_signal_of_order(&signal, order);
    });
    let logs = compose(&file, &over, project, &["logs", "--no-color"]);
    let down = compose(&file, &over, project, &["down", "-v", "--timeout", "20"]);
    if let Err(panic) = result {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        panic!(
            "{why}\nthe services' output:\n{}",
            String::from_utf8_lossy(&logs.stdout)
        );
    }
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(e.containers(), Vec::<String>::new());
}
