//! `tether bus serve --backend nats` as a real process on a real `nats-server -js` (started by
//! the test on a free loopback port; skipped with the reason when nats-server is missing, a
//! failure under CI=true): flags and credentials checked at start-up, and the bus's state kept
//! in NATS, so that a second Bus API process carries on where the first stopped, and sidecars
//! given two replicas move to the other when theirs is killed.
#![allow(clippy::print_stderr)]

#[path = "support/sidecar.rs"]
mod sidecar_support;

#[path = "../../bus/tests/support/certs.rs"]
mod certs;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_bus_proto::v1::bus_api_client::BusApiClient;
use tether_bus_proto::v1::{
    AckRequest, Action, Grant, PublishRequest, RegisterRequest, SubscribeRequest, Subscription,
};
use tether_bus_proto::{PROTOCOL_HEADER, SESSION_HEADER};
use tonic::transport::Channel;

const HANG: Duration = Duration::from_secs(60);

fn tether() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tether"));
    for var in [
        "NATS_USER",
        "NATS_PASSWORD",
        "NATS_USER_FILE",
        "NATS_PASSWORD_FILE",
    ] {
        c.env_remove(var);
    }
    c
}

/// A `nats-server -js` of this test alone, killed when dropped.
struct NatsServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    fn start(extra: &[&str]) -> Option<Self> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let Some(binary) = std::env::split_paths(&path)
            .chain(["/usr/sbin".into()])
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
        else {
            let why = "nats-server is not installed (apt-get install nats-server)";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("skipped: {why}");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let until = std::time::Instant::now() + HANG;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < until,
                "nats-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn nats_flags_are_checked_before_anything_starts() {
    /// Flags, environment, the first line of stderr.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 7] = [
        (
            &["--nats-url", "nats://127.0.0.1:1"],
            &[],
            "error: --nats-url is for --backend nats",
        ),
        (
            &["--backend", "nats"],
            &[],
            "error: --backend nats needs --nats-url",
        ),
        (
            &["--backend", "kafka"],
            &[],
            "error: --backend `kafka` is not a backend",
        ),
        (
            &["--backend", "nats", "--nats-url", "nats://127.0.0.1:1"],
            &[("NATS_USER", "u")],
            "error: NATS_USER and NATS_PASSWORD go together: set both, or neither",
        ),
        (
            &[
                "--backend",
                "nats",
                "--nats-url",
                "nats://127.0.0.1:1",
                "--replicas",
                "7",
            ],
            &[],
            "error: --replicas 7 is not 1 to 5",
        ),
        (
            &["--backend", "nats", "--nats-url", "nats://127.0.0.1:1"],
            &[
                ("NATS_USER", "u"),
                ("NATS_PASSWORD_FILE", "/no/such/nats-password"),
            ],
            "error: NATS_PASSWORD_FILE: cannot read /no/such/nats-password: entity not found",
        ),
        (
            &["--backend", "nats", "--nats-url", "nats://127.0.0.1:1"],
            &[("NATS_USER", "u"), ("NATS_USER_FILE", "/no/such/nats-user")],
            "error: NATS_USER and NATS_USER_FILE are both set: give one",
        ),
    ];
    for (args, env, first) in cases {
        let out = tether()
            .args(["bus", "serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().next(), Some(first), "{args:?}: {stderr}");
    }
}

#[test]
fn a_wrong_or_missing_credential_stops_the_start_up_naming_the_server() {
    let Some(nats) = NatsServer::start(&["--user", "bus", "--pass", "right-password"]) else {
        return;
    };
    for env in [
        vec![("NATS_USER", "bus"), ("NATS_PASSWORD", "wrong-password")],
        vec![],
    ] {
        let out = tether()
            .args([
                "bus",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--backend",
                "nats",
            ])
            .args(["--nats-url", &nats.url])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let first = stderr.lines().next().unwrap();
        assert!(
            first.starts_with(&format!("error: NATS at {}: the server refused ", nats.url))
                && first.contains("authorization violation"),
            "{stderr}"
        );
        assert!(!stderr.contains("listening on"), "{stderr}");
        // The password is never repeated back.
        assert!(!stderr.contains("password\n") && !stderr.contains("wrong-password"));
    }
    let out = tether()
        .args([
            "bus",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "nats",
        ])
        .args(["--nats-url", &nats.url, "--nats-creds", "/no/such.creds"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot use the NATS credentials file /no/such.creds: "),
        "{stderr}"
    );
}

#[test]
fn the_user_and_password_may_come_from_files_as_secrets_are_mounted() {
    let Some(nats) = NatsServer::start(&["--user", "bus", "--pass", "right-password"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (user, password) = (
        dir.path().join("nats-user"),
        dir.path().join("nats-password"),
    );
    // As `printf '%s\n'` or an editor writes them: the trailing newline is not part of it.
    std::fs::write(&user, "bus\n").unwrap();
    std::fs::write(&password, "right-password\n").unwrap();
    let served = serve(
        &nats,
        &[
            ("NATS_USER_FILE", user.to_str().unwrap()),
            ("NATS_PASSWORD_FILE", password.to_str().unwrap()),
        ],
    );
    drop(served);
    // A wrong one in the file is refused by the server, as from the environment.
    std::fs::write(&password, "wrong-password").unwrap();
    let out = tether()
        .args([
            "bus",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "nats",
        ])
        .args(["--nats-url", &nats.url])
        .env("NATS_USER_FILE", &user)
        .env("NATS_PASSWORD_FILE", &password)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "the server refused the user `bus` and its password (NATS_USER_FILE, NATS_PASSWORD_FILE) (nats: authorization violation)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-password"), "{stderr}");
}

/// A nats-server whose config file requires TLS (a certificate for 127.0.0.1 signed by a CA of
/// the test's) and a user and password: `tether bus serve` given the CA and the right password
/// serves (a publish comes back through a subscription); a wrong password, no credential or no
/// CA stop the start-up with one line naming the server and what was wrong, never the password.
#[test]
fn a_secured_nats_with_tls_and_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certs::ca_and_server();
    let (other_ca, _, _) = certs::ca_and_server();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (ca, other_ca) = (file("ca.pem", &ca), file("other-ca.pem", &other_ca));
    let config = file(
        "nats.conf",
        &format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n\
             authorization {{\n  user: bus\n  password: \"right-password\"\n}}\n",
            file("server.pem", &cert),
            file("server.key", &key)
        ),
    );
    let Some(nats) = NatsServer::start(&["-c", &config]) else {
        return;
    };
    let url = nats.url.replace("nats://", "tls://");
    let right = [("NATS_USER", "bus"), ("NATS_PASSWORD", "right-password")];

    let served = serve_at(&url, &["--nats-ca", &ca], &right);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut api, session) = register(served.addr, "secured").await;
        let seq = publish(&mut api, &session, "over tls").await;
        let mut stream = api
            .subscribe(req(
                SubscribeRequest {
                    subscription: Some(Subscription {
                        topic: "jobs.*".into(),
                        ..Default::default()
                    }),
                },
                &session,
            ))
            .await
            .unwrap()
            .into_inner();
        let d = tokio::time::timeout(HANG, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((d.sequence, d.data.as_slice()), (seq, &b"over tls"[..]));
    });
    drop(served);

    let refused = |args: &[&str], env: &[(&str, &str)]| {
        let out = tether()
            .args([
                "bus",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--backend",
                "nats",
            ])
            .args(["--nats-url", &url])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(!stderr.contains("listening on"), "{stderr}");
        assert!(!stderr.contains("password\n") && !stderr.contains("-password"));
        stderr.lines().next().unwrap().to_owned()
    };
    let named = format!("error: NATS at {url}: ");
    let wrong = [("NATS_USER", "bus"), ("NATS_PASSWORD", "wrong-password")];
    /// Flags, environment, what the first line says after the server's name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (
            &["--nats-ca", &ca],
            &wrong,
            "the server refused the user `bus` and its password (NATS_USER, NATS_PASSWORD) (nats: authorization violation)",
        ),
        (
            &["--nats-ca", &ca],
            &[],
            "the server refused a connection without a credential (nats: authorization violation): give --nats-creds, or NATS_USER and NATS_PASSWORD",
        ),
        (
            &[],
            &right,
            "TLS failed: invalid peer certificate: UnknownIssuer (--nats-ca names the CA that signed the servers' certificates)",
        ),
        (
            &["--nats-ca", &other_ca],
            &right,
            &format!("TLS failed with the CA file {other_ca}: invalid peer certificate: "),
        ),
    ];
    for (args, env, said) in cases {
        let first = refused(args, env);
        assert!(first.starts_with(&format!("{named}{said}")), "{first}");
    }
}

/// A running `tether bus serve` and the address it listens on.
struct Served {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(nats: &NatsServer, env: &[(&str, &str)]) -> Served {
    serve_at(&nats.url, &[], env)
}

/// `tether bus serve --backend nats --nats-url URL ARGS...` once it says it listens.
#[allow(clippy::zombie_processes, reason = "Drop kills and waits for it")]
fn serve_at(url: &str, args: &[&str], env: &[(&str, &str)]) -> Served {
    let mut child = tether()
        .args([
            "bus",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "nats",
        ])
        .args(["--nats-url", url])
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx.recv_timeout(HANG).expect("no `listening on` line");
        if let Some(rest) = line.strip_prefix("tether bus: listening on ") {
            assert!(line.ends_with("data in NATS JetStream"), "{line}");
            let addr = rest.split(' ').next().unwrap().parse().unwrap();
            return Served { child, addr };
        }
    }
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

async fn register(addr: SocketAddr, instance: &str) -> (BusApiClient<Channel>, String) {
    let mut api = BusApiClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let grants = [Action::Publish, Action::Subscribe].map(|a| Grant {
        topic: "jobs.*".into(),
        action: a as i32,
    });
    let answer = api
        .register(req(
            RegisterRequest {
                protocol_major: 1,
                instance_id: instance.into(),
                pool_type: "Test".into(),
                requested_grants: grants.to_vec(),
                ..Default::default()
            },
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    (api, answer.session)
}

async fn publish(api: &mut BusApiClient<Channel>, session: &str, data: &str) -> u64 {
    api.publish(req(
        PublishRequest {
            topic: "jobs.a".into(),
            data: data.as_bytes().to_vec(),
            ..Default::default()
        },
        session,
    ))
    .await
    .unwrap()
    .into_inner()
    .sequence
}

#[test]
fn a_second_bus_api_on_the_same_nats_carries_on_where_the_first_stopped() {
    let Some(nats) = NatsServer::start(&["--user", "bus", "--pass", "right-password"]) else {
        return;
    };
    let env = [("NATS_USER", "bus"), ("NATS_PASSWORD", "right-password")];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let first = serve(&nats, &env);
        let (mut api, session) = register(first.addr, "worker").await;
        let s1 = publish(&mut api, &session, "one").await;
        let s2 = publish(&mut api, &session, "two").await;
        let sub = || SubscribeRequest {
            subscription: Some(Subscription {
                topic: "jobs.*".into(),
                group: "workers".into(),
                // What the first bus sent and nobody acked comes again after this.
                ack_deadline_ms: 2_000,
                ..Default::default()
            }),
        };
        let mut stream = api
            .subscribe(req(sub(), &session))
            .await
            .unwrap()
            .into_inner();
        let d = tokio::time::timeout(HANG, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((d.sequence, d.data.as_slice()), (s1, &b"one"[..]));
        let acked = api
            .ack(req(
                AckRequest {
                    delivery_ids: vec![d.delivery_id],
                },
                &session,
            ))
            .await
            .unwrap()
            .into_inner()
            .acked;
        assert_eq!(acked, 1);
        drop(stream);

        // Another Bus API process: the session and the group's position are in NATS.
        let second = serve(&nats, &env);
        drop(first);
        let mut api2 = BusApiClient::connect(format!("http://{}", second.addr))
            .await
            .unwrap();
        let mut stream = api2
            .subscribe(req(sub(), &session))
            .await
            .unwrap()
            .into_inner();
        let d = tokio::time::timeout(HANG, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((d.sequence, d.data.as_slice()), (s2, &b"two"[..]));
    });
}

/// What NATS cannot take (a header value with a line break, a payload over its max_payload)
/// is the publisher's fault: INVALID_ARGUMENT, which a sidecar refuses to its plugin or drops
/// from its outbox, not INTERNAL, which it would retry for ever ahead of everything after it.
#[test]
fn a_publish_nats_cannot_take_is_refused_as_invalid() {
    let Some(nats) = NatsServer::start(&[]) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = serve(&nats, &[]);
        let (mut api, session) = register(bus.addr, "publisher").await;
        let refused = |headers: BTreeMap<String, String>, data: Vec<u8>| {
            let mut api = api.clone();
            let session = session.clone();
            async move {
                api.publish(req(
                    PublishRequest {
                        topic: "jobs.a".into(),
                        data,
                        headers: headers.into_iter().collect(),
                        ..Default::default()
                    },
                    &session,
                ))
                .await
                .expect_err("NATS cannot take this publish")
            }
        };
        let line_break = BTreeMap::from([("note".to_string(), "two\nlines".to_string())]);
        let s = refused(line_break, b"x".to_vec()).await;
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        assert!(
            s.message()
                .contains("the value of header `note` cannot be sent to NATS"),
            "{s:?}"
        );
        // nats-server's default max_payload is 1 MiB; gRPC takes up to 4 MiB.
        let s = refused(BTreeMap::new(), vec![7; 2 << 20]).await;
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("max_payload"), "{s:?}");
        // The refusals left nothing behind: the next publish goes through.
        assert!(publish(&mut api, &session, "after").await > 0);
    });
}

/// Through a sidecar: the plugin gets the refusal of a publish NATS cannot take, and its next
/// publish goes through (the refused one is not kept ahead of it).
#[test]
fn a_sidecar_refuses_to_its_plugin_a_publish_nats_cannot_take() {
    use sidecar_support::{Plugin, accepted, send, sidecar};
    use tether_bus_proto::v1::{PluginPublish, plugin_message, publish_result, sidecar_message};
    let Some(nats) = NatsServer::start(&[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bus = serve(&nats, &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut pair = sidecar(dir.path(), bus.addr, "pub", &["publish:feed.>"], "");
        let mut plugin = Plugin::connect(pair.addr, &[], "").await.unwrap();
        pair.proc.wait_for("step 8/8");
        plugin
            .tx
            .send(send(plugin_message::Kind::Publish(PluginPublish {
                request_id: 1_000,
                topic: "feed.x".into(),
                data: b"bad".to_vec(),
                headers: [("note".to_string(), "two\nlines".to_string())].into(),
                ..Default::default()
            })))
            .await
            .unwrap();
        let refusal = loop {
            match plugin.next().await {
                Some(sidecar_message::Kind::PublishResult(r)) if r.request_id == 1_000 => {
                    break r.result.unwrap();
                }
                Some(_) => {}
                None => panic!("the session ended before the publish's result"),
            }
        };
        let publish_result::Result::Refused(r) = refusal else {
            panic!("accepted: {refusal:?}");
        };
        assert_eq!(r.code, "INVALID_ARGUMENT", "{r:?}");
        assert!(r.message.contains("header `note`"), "{r:?}");
        let (after, _) = plugin.publish("feed.x", b"good").await;
        assert!(accepted(&after) > 0, "taken by the bus, not the outbox");
    });
}

/// What the subscribing plugin of the failover test saw.
#[derive(Default)]
struct Seen {
    /// Message number -> the sequences of its deliveries, in order.
    deliveries: BTreeMap<usize, Vec<u64>>,
    /// Messages the plugin acked (sent its ack to the sidecar).
    acked: BTreeSet<usize>,
    /// Messages delivered again after the plugin acked them.
    again_after_ack: Vec<usize>,
    /// Set at the kill -9.
    killed: bool,
    /// Deliveries that arrived before the kill and were acked after it (through the other
    /// replica: the one that handed them out was gone).
    acked_across: usize,
}

/// Message `i` of the failover test.
fn numbered(i: usize) -> Vec<u8> {
    format!("m-{i:06}").into_bytes()
}

/// How the failover tests take away the Bus API replica the sidecars use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `kill -9`: its connections are closed at once.
    Kill,
    /// `kill -STOP`: its connections stay open and nothing answers on them, as when its node is
    /// lost or cut off. The sidecars notice by the pings they send (it is killed at the end).
    Stop,
}

#[test]
fn sidecars_move_to_another_bus_api_replica_when_theirs_is_killed() {
    failover(Fault::Kill);
}

#[test]
fn sidecars_move_to_another_bus_api_replica_when_theirs_stops_answering() {
    failover(Fault::Stop);
}

/// Two replicas, a publishing and a subscribing sidecar with their plugins, 2,000 messages;
/// `fault` strikes the replica in use when half are answered.
fn failover(fault: Fault) {
    use sidecar_support::{Plugin, send, sidecar};
    use tether_bus_proto::v1::{PluginPublish, plugin_message, publish_result, sidecar_message};

    /// Messages in the stream, publishes in flight at once, and deliveries the subscribing
    /// plugin holds unacked until the fault (it acks the oldest when one more comes).
    const MESSAGES: usize = 2_000;
    const WINDOW: usize = 32;
    const HOLD: usize = 32;
    // The subscription's ack deadline: what the failed replica sent and nobody saw comes again
    // after it, and so would a delivery whose ack was lost. The deliveries held at the fault are
    // acked at once, but a stopped replica holds their acks until the sidecar finds it gone
    // (its pings: 10 s at most): the deadline must not pass meanwhile, or they would rightly
    // come again (before the ack is through).
    let ack_deadline = match fault {
        Fault::Kill => Duration::from_secs(5),
        Fault::Stop => Duration::from_secs(30),
    };
    let Some(nats) = NatsServer::start(&[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut first = serve(&nats, &[]);
    let second = serve(&nats, &[]);
    let urls = format!("{},{}", first.addr, second.addr);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut publishing = sidecar(dir.path(), &urls, "feed-pub", &["publish:feed.>"], "");
        let mut consuming = sidecar(
            dir.path(),
            &urls,
            "feed-sub",
            &["subscribe:feed.>"],
            &format!(
                "ack_deadline: {}s\nmax_deliver: 1000\n",
                ack_deadline.as_secs()
            ),
        );
        for s in [&mut publishing, &mut consuming] {
            s.proc.wait_for(&format!(
                "step 1/8 (connect to the Bus API): connected to http://{} (",
                first.addr
            ));
        }
        let mut publisher = Plugin::connect(publishing.addr, &[], "").await.unwrap();
        let mut subscriber = Plugin::connect(consuming.addr, &["feed.>"], "")
            .await
            .unwrap();
        publishing.proc.wait_for("step 8/8");
        consuming.proc.wait_for("step 8/8");

        let seen = Arc::new(Mutex::new(Seen::default()));
        let (flush, mut flushed) = tokio::sync::watch::channel(false);
        let consumer = tokio::spawn({
            let seen = seen.clone();
            async move {
                // (message, delivery id, arrived before the kill), oldest first.
                let mut held: VecDeque<(usize, String, bool)> = VecDeque::new();
                let mut hold = HOLD;
                loop {
                    let next = tokio::select! {
                        d = subscriber.delivery() => Some(d),
                        _ = flushed.changed(), if hold > 0 => None,
                    };
                    if let Some(d) = next {
                        let i: usize = std::str::from_utf8(&d.data)
                            .ok()
                            .and_then(|t| t.strip_prefix("m-"))
                            .and_then(|n| n.parse().ok())
                            .unwrap_or_else(|| panic!("not a message of the test: {d:?}"));
                        let mut seen = seen.lock().unwrap();
                        if seen.acked.contains(&i) {
                            seen.again_after_ack.push(i);
                        }
                        seen.deliveries.entry(i).or_default().push(d.sequence);
                        held.push_back((i, d.delivery_id, !seen.killed));
                    } else {
                        // The end of the stream: ack what is held, and from now on at once.
                        hold = 0;
                    }
                    while held.len() > hold {
                        let (i, id, before) = held.pop_front().unwrap();
                        {
                            let mut seen = seen.lock().unwrap();
                            seen.acked.insert(i);
                            if before && seen.killed {
                                seen.acked_across += 1;
                            }
                        }
                        subscriber.ack(&id).await;
                    }
                }
            }
        });

        // Publishes, WINDOW in flight; the fault strikes the replica in use once half are answered.
        let mut answered = BTreeSet::new();
        let mut to_outbox = 0usize;
        let mut in_flight: HashMap<u64, usize> = HashMap::new();
        let mut next = 0usize;
        let mut killed_at = None;
        while next < MESSAGES || !in_flight.is_empty() {
            while next < MESSAGES && in_flight.len() < WINDOW {
                let request_id = next as u64 + 1;
                publisher
                    .tx
                    .send(send(plugin_message::Kind::Publish(PluginPublish {
                        request_id,
                        topic: "feed.x".into(),
                        data: numbered(next),
                        ..Default::default()
                    })))
                    .await
                    .unwrap();
                in_flight.insert(request_id, next);
                next += 1;
            }
            let Some(sidecar_message::Kind::PublishResult(r)) = publisher.next().await else {
                continue;
            };
            let i = in_flight
                .remove(&r.request_id)
                .expect("a result of a publish sent");
            match r.result.unwrap() {
                publish_result::Result::Accepted(a) => {
                    answered.insert(i);
                    to_outbox += usize::from(a.sequence == 0);
                }
                publish_result::Result::Refused(r) => {
                    panic!("publish {i} refused: {} {}", r.code, r.message)
                }
            }
            if killed_at.is_none() && answered.len() >= MESSAGES / 2 {
                // The subscriber holds deliveries of the first replica unacked.
                until("deliveries before the kill", || {
                    seen.lock().unwrap().deliveries.len() > HOLD
                })
                .await;
                // The kill is marked under the lock the subscriber takes to record each
                // delivery and each ack, so what it holds at the kill is exactly what it held
                // before: nothing of it is acked, nor is anything new taken, between the two.
                {
                    let mut seen = seen.lock().unwrap();
                    match fault {
                        Fault::Kill => first.child.kill().unwrap(),
                        Fault::Stop => {
                            let pid = first.child.id().to_string();
                            let stop = std::process::Command::new("kill")
                                .args(["-STOP", &pid])
                                .status()
                                .unwrap();
                            assert!(stop.success(), "kill -STOP {pid}: {stop}");
                        }
                    }
                    seen.killed = true;
                    killed_at = Some((answered.len(), seen.deliveries.len()));
                }
                // What it holds is acked now, through the other replica, well inside its ack
                // deadline however slowly new deliveries come on a busy machine (held past
                // the deadline, a delivery would rightly come again before its late ack).
                flush.send_replace(true);
            }
        }
        assert_eq!(answered.len(), MESSAGES);

        // Both sidecars moved to the other replica, said so, and counted it (a false alarm on
        // a busy machine may add a move: at least one).
        for s in [&mut publishing, &mut consuming] {
            s.proc.wait_for(&format!(
                "using the Bus API at http://{} (the one at http://{} failed: ",
                second.addr, first.addr
            ));
            let moves = sidecar_support::metric(s.health, "tether_sidecar_bus_replica_moves_total");
            assert!(moves >= 1, "{moves} moves counted");
        }
        // A subscription stream has no timeout of its own: on a replica that stopped answering
        // it ends when its connection is closed (by the sidecar's pings, or as it moves), and
        // is opened again on the other.
        if fault == Fault::Stop {
            consuming
                .proc
                .wait_for("the subscription to `feed.>` broke: ");
        }
        // Every answered publish is delivered, and acked.
        until("every answered publish delivered", || {
            let seen = seen.lock().unwrap();
            answered.iter().all(|i| seen.deliveries.contains_key(i))
        })
        .await;
        until("every delivery acked", || {
            seen.lock().unwrap().acked.len() == MESSAGES
        })
        .await;
        // A lost ack shows as a delivery again after the ack deadline: wait past it (not a
        // measurement; a correct bus delivers nothing more).
        tokio::time::sleep(ack_deadline + Duration::from_secs(2)).await;
        consumer.abort();
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.again_after_ack,
            Vec::<usize>::new(),
            "delivered again after the plugin acked them"
        );
        // Each message is in the stream once: its deliveries share one sequence (a publish
        // repeated on the second replica was deduplicated by its idempotency key).
        let published_twice: Vec<(&usize, &Vec<u64>)> = seen
            .deliveries
            .iter()
            .filter(|(_, s)| s.iter().any(|q| *q != s[0]))
            .collect();
        assert_eq!(published_twice, Vec::<(&usize, &Vec<u64>)>::new());
        assert!(
            seen.acked_across >= HOLD,
            "{} deliveries of the failed replica acked through the other",
            seen.acked_across
        );
        let again = seen.deliveries.values().filter(|s| s.len() > 1).count();
        let (answered_at_kill, delivered_at_kill) = killed_at.unwrap();
        eprintln!(
            "{MESSAGES} publishes answered ({to_outbox} kept in the outbox first), \
             {answered_at_kill} before the fault struck the replica in use, when \
             {delivered_at_kill} were delivered; {} deliveries of the failed replica acked \
             through the other; every message delivered, {again} of them more than once, \
             none after its ack",
            seen.acked_across
        );
    });
}

/// Waits until `done` holds, failing as hung after [`HANG`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
