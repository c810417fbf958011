//! The plugin bus example (`examples/plugin-bus`) on the machine's real Docker Engine, from
//! images built `FROM scratch` by its `build-images` (a static tether, the Rust SDK's example
//! plugin built static): nothing is pulled.
//!
//! A bus client in the test, on the Bus API's port published on 127.0.0.1, registers as pool
//! OMSPool with that pool's token (the example's policy asks every pool for one), publishes an
//! order and subscribes to the signals; the plugin, which has no network of its own and is told
//! of nothing but its bus sidecar on 127.0.0.1:9191, turns the order into a signal. From the
//! plugin's position (its sidecar's network namespace, its user, no secret) a Register with the
//! Bus API is refused: UNAUTHENTICATED as pool SignalPool without the token, no grant as any
//! other pool. Once under `tether run`, once from the Compose file `tether render compose`
//! writes, under docker-compose.

mod support;

use std::os::unix::fs::PermissionsExt;
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
        // The tokens as build-images writes them for a developer, here in the test's folder.
        let built = Command::new(example.join("build-images"))
            .env("TETHER_IMAGE", &e.tether_image)
            .env("PLUGIN_IMAGE", &e.plugin_image)
            .env("PLUGIN_BUS_TOKENS", e.dir.path())
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        for pool in ["signal-pool", "oms-pool"] {
            let token = e.token(pool);
            assert_eq!(token.len(), 64, "32 random bytes in hex: {pool}");
            let mode = std::fs::metadata(e.dir.path().join(format!("{pool}.token")))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{pool}.token");
        }
        assert_ne!(e.token("signal-pool"), e.token("oms-pool"));
        // The example's own policy and sidecar config, beside the declaration as in the example.
        for file in ["policy.yaml", "sidecar.yaml"] {
            std::fs::copy(example.join(file), e.dir.path().join(file)).unwrap();
        }
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

    /// The token build-images wrote for `pool` (`signal-pool`, `oms-pool`).
    fn token(&self, pool: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{pool}.token"))).unwrap()
    }

    /// Neither token appears in what the engine shows of the project's containers (their
    /// configuration, env, command, labels) nor in what they logged.
    fn assert_no_token_shown(&self) {
        for c in self.containers() {
            let logs = docker(&["logs", &c]);
            let shown = format!(
                "{}{}{}",
                text(&docker(&["inspect", &c])),
                text(&logs),
                String::from_utf8_lossy(&logs.stderr)
            );
            for pool in ["signal-pool", "oms-pool"] {
                assert!(
                    !shown.contains(&self.token(pool)),
                    "the {pool} token is shown by {c}"
                );
            }
        }
    }

    /// A Register with the Bus API from the plugin's position: the network namespace of the bus
    /// sidecar `sidecar` (a container id), the plugin's user, no secret. A `tether sidecar` sends
    /// it, as pool `pool`, with no token (a plugin that skipped its sidecar has none): its
    /// start-up ends at register (step 2) or at recovering the grants (step 3). Its exit code and
    /// stderr.
    fn register_from_the_plugins_position(&self, sidecar: &str, pool: &str) -> (i32, String) {
        let name = format!("{}-intruder", self.project);
        let mut run = Command::new("docker");
        run.args([
            "run",
            "--rm",
            "--name",
            &name,
            &format!("--network=container:{sidecar}"),
            "--user=10001:10001",
            "-e",
            "INSTANCE_ID=intruder",
            "-e",
            &format!("POOL_TYPE={pool}"),
            "-e",
            r#"REQUESTED_GRANTS=[{"topic": "orders.>", "action": "publish"}, {"topic": "signals.>", "action": "subscribe"}]"#,
            "-e",
            "SIDECAR_BUS_API_URL=bus-api:8443",
            // Beside the real sidecar's ports in the same namespace.
            "-e",
            "SIDECAR_ADDR=127.0.0.1:9291",
            "-e",
            "SIDECAR_HEALTH_ADDR=127.0.0.1:9292",
            &self.tether_image,
            "sidecar",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        let mut child = run.spawn().unwrap();
        // Refused, it ends in moments; let in, it would wait minutes for a plugin.
        let deadline = std::time::Instant::now() + ROUND_TRIP;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = docker(&["rm", "-f", &name]);
                let out = child.wait_with_output().unwrap();
                panic!(
                    "a Register from the plugin's position as pool {pool} was not refused:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let err = read_all(child.stderr.take().unwrap());
        (status.code().unwrap_or(-1), err)
    }

    /// Both refusals of [`Self::register_from_the_plugins_position`], exactly.
    fn assert_the_plugin_cannot_use_the_bus_directly(&self, sidecar: &str) {
        // The one error line, its address part (`(IP:PORT)` the name resolved to) aside.
        let refusal = |pool: &str| -> (String, String) {
            let (code, err) = self.register_from_the_plugins_position(sidecar, pool);
            assert_eq!(code, 3, "{err}");
            let line = err
                .lines()
                .find(|l| l.starts_with("error: "))
                .unwrap_or_else(|| panic!("no error line: {err}"));
            let (step, rest) = line
                .split_once(" failed: the Bus API at http://bus-api:8443 (")
                .unwrap_or_else(|| panic!("{err}"));
            let (_, cause) = rest.split_once(") ").unwrap_or_else(|| panic!("{err}"));
            (step.to_owned(), cause.to_owned())
        };
        assert_eq!(
            refusal("SignalPool"),
            (
                "error: start-up step 2/8 (register)".to_owned(),
                "refused: the policy asks pool `SignalPool` for a token and the Register carries none (Unauthenticated)".to_owned()
            )
        );
        // Any other pool, one the policy does not name, registers and is given nothing.
        let (code, err) = self.register_from_the_plugins_position(sidecar, "Intruder");
        assert_eq!(code, 3, "{err}");
        let why = "the policy names neither pool type `Intruder` nor instance `intruder`";
        assert!(
            err.contains(&format!("error: start-up step 3/8 (recover grants) failed: the bus gave none of the 2 requested grants: {why}; {why}\n")),
            "{err}"
        );
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
    /// Registers as instance `checker` of pool OMSPool, with that pool's `token`.
    async fn connect(addr: &str, token: &str) -> Checker {
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
                    pool_type: "OMSPool".into(),
                    token: Some(token.into()),
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
    let mut checker = rt.block_on(Checker::connect(&addr, &e.token("oms-pool")));
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
    // No secret reaches the plugin: nothing is mounted in it (the sidecar's /run/secrets is
    // its own mount namespace's); the Bus API and the sidecar have theirs as files.
    assert_eq!(p["Mounts"], serde_json::json!([]), "{p}");
    let secrets_of = |container: &str| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(&text(&docker(&["inspect", container]))).unwrap();
        let mut targets: Vec<String> = v[0]["Mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["Destination"].as_str())
            .filter(|d| d.starts_with("/run/secrets/"))
            .map(str::to_owned)
            .collect();
        targets.sort();
        targets
    };
    assert_eq!(
        secrets_of(&bus_api),
        [
            "/run/secrets/oms-pool.token",
            "/run/secrets/policy.yaml",
            "/run/secrets/signal-pool.token"
        ]
    );
    assert_eq!(
        secrets_of(sidecar.trim()),
        [
            "/run/secrets/sidecar.yaml",
            "/run/secrets/signal-pool.token"
        ]
    );
    e.assert_no_token_shown();
    // From where the plugin is, the Bus API refuses it.
    e.assert_the_plugin_cannot_use_the_bus_directly(sidecar.trim());
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
        let mut checker = rt.block_on(Checker::connect(&addr, &e.token("oms-pool")));
        let order = rt.block_on(checker.publish_order("eod", "buy 100 ACME"));
        let signal = rt.block_on(checker.next_signal());
        assert_signal_of_order(&signal, order);
        // The plugin's container has no secret; from its place the Bus API refuses it.
        let plugin = text(&compose(&file, &over, project, &["ps", "-q", "workload"]));
        let mounts = text(&docker(&[
            "inspect",
            "-f",
            "{{json .Mounts}}",
            plugin.trim(),
        ]));
        assert_eq!(mounts.trim(), "[]");
        e.assert_no_token_shown();
        let sidecar = text(&compose(&file, &over, project, &["ps", "-q", "bus"]));
        e.assert_the_plugin_cannot_use_the_bus_directly(sidecar.trim());
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
