//! The backends the store suite runs against.
#![allow(dead_code, clippy::print_stderr)]

use std::future::Future;
use std::time::Duration;

use tether_bus::store::{RedbStore, Retention, Store, SyncMode};

/// A place to open fresh stores of one backend.
pub trait Backend {
    type S: Store;
    /// A new, empty store with this retention.
    fn open(&self, retention: Retention) -> impl Future<Output = Self::S>;
}

/// Waits for `f` at most 60 s: a case that hangs fails with a message instead.
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the case did not finish within 60 s")
}

/// The embedded store, each opened in a new folder.
pub struct RedbBackend {
    dir: tempfile::TempDir,
}

impl RedbBackend {
    pub async fn new() -> Option<Self> {
        Some(Self {
            dir: tempfile::tempdir().unwrap(),
        })
    }
}

impl Backend for RedbBackend {
    type S = RedbStore;
    async fn open(&self, retention: Retention) -> RedbStore {
        let dir = tempfile::tempdir_in(self.dir.path()).unwrap().keep();
        RedbStore::open(&dir, retention, SyncMode::Always).unwrap()
    }
}

/// The `nats-server` to run, if this machine has one.
pub fn nats_server_binary() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// A `nats-server -js` of this test alone: a free loopback port, a temporary store folder,
/// killed when dropped.
pub struct NatsServer {
    child: std::process::Child,
    pub url: String,
    port: u16,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one, or says why not: `None` when `nats-server` is not installed (a failure under
    /// `CI=true`, where `.ci/run` installs it).
    pub async fn start(extra: &[&str]) -> Option<Self> {
        let Some(binary) = nats_server_binary() else {
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
        let mut args: Vec<String> = ["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"]
            .map(str::to_owned)
            .into();
        args.push(dir.path().to_str().unwrap().to_owned());
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let child = spawn_nats(&binary, &args);
        let server = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            args,
            _dir: dir,
        };
        server.listening().await;
        Some(server)
    }

    /// Stops it as an operator would (SIGTERM: JetStream writes its state), and waits.
    pub fn stop(&mut self) {
        let status = std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap();
    }

    /// Freezes it (SIGSTOP): the connection stays open and nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets it run again after [`Self::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let status = std::process::Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Starts it again after [`Self::stop`]: the same port and store folder.
    pub async fn start_again(&mut self) {
        self.child = spawn_nats(&nats_server_binary().unwrap(), &self.args);
        self.listening().await;
    }

    async fn listening(&self) {
        let port = self.port;
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < until,
                "nats-server did not listen on {port} within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn spawn_nats(binary: &std::path::Path, args: &[String]) -> std::process::Child {
    std::process::Command::new(binary)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server starts")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(feature = "nats")]
pub struct NatsBackend {
    pub server: NatsServer,
    opened: std::sync::atomic::AtomicU32,
}

#[cfg(feature = "nats")]
impl NatsBackend {
    pub async fn new() -> Option<Self> {
        Some(Self {
            server: NatsServer::start(&[]).await?,
            opened: Default::default(),
        })
    }
}

#[cfg(feature = "nats")]
impl Backend for NatsBackend {
    type S = tether_bus::nats::NatsStore;
    /// Each store on its own stream, subjects and bucket of the one server.
    async fn open(&self, retention: Retention) -> Self::S {
        let n = self
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut options = tether_bus::nats::NatsOptions::new(vec![self.server.url.clone()]);
        options.retention = retention;
        options.stream = format!("TETHER{n}");
        options.prefix = format!("tether{n}.msg");
        options.bucket = format!("REGISTRY{n}");
        tether_bus::nats::NatsStore::connect(&options)
            .await
            .unwrap()
    }
}
