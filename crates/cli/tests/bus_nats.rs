//! `tether bus serve --backend nats` as a real process on a real `nats-server -js` (started by
//! the test on a free loopback port; skipped with the reason when nats-server is missing, a
//! failure under CI=true): flags and credentials checked at start-up, and the bus's state kept
//! in NATS, so that a second Bus API process carries on where the first stopped.
#![allow(clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
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
            first.starts_with(&format!("error: NATS at {}: cannot connect: ", nats.url))
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
    assert!(stderr.contains("authorization violation"), "{stderr}");
    assert!(!stderr.contains("wrong-password"), "{stderr}");
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

#[allow(clippy::zombie_processes, reason = "Drop kills and waits for it")]
fn serve(nats: &NatsServer, env: &[(&str, &str)]) -> Served {
    let mut child = tether()
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
