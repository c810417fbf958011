//! Running `tether init` as a real process and reading its merged output line by line.
#![allow(dead_code, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any wait may take before the test fails as hung. Never a measurement.
pub const HANG: Duration = Duration::from_secs(60);

pub fn tether_bin() -> PathBuf {
    // The cli's tests have it; crates/init-bin, which compiles this module too, does not.
    match option_env!("CARGO_BIN_EXE_tether") {
        Some(path) => PathBuf::from(path),
        None => panic!("this build of the tests has no tether binary"),
    }
}

/// The program and first arguments that run `tether init`: `tether init` in the cli's tests;
/// the init-only `tether-init` when the same tests are built in crates/init-bin (which has
/// that binary), so that both binaries pass every init test. There `TETHER_INIT_BIN` names
/// another build of it to test instead (`TETHER_INIT_BIN=$(scripts/static-init)`).
pub fn init_argv() -> Vec<std::ffi::OsString> {
    match option_env!("CARGO_BIN_EXE_tether-init") {
        Some(init_only) => {
            vec![std::env::var_os("TETHER_INIT_BIN").unwrap_or_else(|| init_only.into())]
        }
        None => vec![tether_bin().into(), "init".into()],
    }
}

/// `tether init`, or `tether-init` (see [`init_argv`]), ready for its arguments.
pub fn init_command() -> Command {
    let argv = init_argv();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// A folder for one test, with the declaration in it. `$DIR` in the YAML becomes its path.
pub struct Bundle {
    pub dir: tempfile::TempDir,
}

impl Bundle {
    pub fn new(yaml: &str) -> Bundle {
        let dir = tempfile::tempdir().unwrap();
        let text = yaml.replace("$DIR", dir.path().to_str().unwrap());
        std::fs::write(dir.path().join("tether.yaml"), text).unwrap();
        Bundle { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn file(&self) -> PathBuf {
        self.path("tether.yaml")
    }

    /// `tether init -f tether.yaml ARGS…`, its default control socket in this folder
    /// (`XDG_RUNTIME_DIR`), so that tests running side by side do not meet.
    pub fn start(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = init_command();
        cmd.arg("-f").arg(self.file()).args(args);
        cmd.env("XDG_RUNTIME_DIR", self.dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run::spawn(cmd)
    }

    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, Vec<String>) {
        self.start(args, env).finish()
    }

    /// `tether ctl ARGS…` against this bundle's default socket; the code, stdout and stderr.
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(tether_bin())
            .arg("ctl")
            .args(args)
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A running tether whose stdout and stderr arrive, merged and in order, as lines.
pub struct Run {
    pub child: Child,
    lines: mpsc::Receiver<Vec<u8>>,
    pub seen: Vec<String>,
    pub raw: Vec<Vec<u8>>,
}

impl Run {
    pub fn spawn(mut cmd: Command) -> Run {
        let (reader, writer) = std::io::pipe().unwrap();
        let writer2 = writer.try_clone().unwrap();
        cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
        let child = cmd.spawn().unwrap();
        drop(cmd);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            loop {
                let mut line = Vec::new();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if line.last() == Some(&b'\n') {
                            line.pop();
                        }
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Run {
            child,
            lines: rx,
            seen: Vec::new(),
            raw: Vec::new(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn take(&mut self, line: Vec<u8>) -> String {
        let s = String::from_utf8_lossy(&line).into_owned();
        self.raw.push(line);
        self.seen.push(s.clone());
        s
    }

    /// Reads until a line contains `needle`; returns that line.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let end = Instant::now() + HANG;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let s = self.take(line);
                    if s.contains(needle) {
                        return s;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Reads until every needle has been in a line, in whatever order they come.
    pub fn wait_for_all(&mut self, needles: &[&str]) {
        let mut missing: Vec<&str> = needles.to_vec();
        let end = Instant::now() + HANG;
        while !missing.is_empty() {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let s = self.take(line);
                    missing.retain(|n| !s.contains(n));
                }
                Err(_) => panic!(
                    "no line with {missing:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// Waits for the exit; returns the code and every line.
    pub fn finish(self) -> (i32, Vec<String>) {
        let (code, lines, _) = self.finish_raw();
        (code, lines)
    }

    /// Like [`Run::finish`], with the lines' bytes as written.
    pub fn finish_raw(mut self) -> (i32, Vec<String>, Vec<Vec<u8>>) {
        let end = Instant::now() + HANG;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.take(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("tether did not exit; output:\n{}", self.seen.join("\n"));
                }
            }
        }
        let status = self.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        (code, self.seen, self.raw)
    }
}

/// The position of the first line containing `needle`.
pub fn pos(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", lines.join("\n")))
}

/// Asserts that the needles appear in this order.
pub fn in_order(lines: &[String], needles: &[&str]) {
    let at: Vec<usize> = needles.iter().map(|n| pos(lines, n)).collect();
    for w in at.windows(2).zip(needles.windows(2)) {
        assert!(
            w.0[0] < w.0[1],
            "{:?} should come before {:?} in:\n{}",
            w.1[0],
            w.1[1],
            lines.join("\n")
        );
    }
}

/// The lines tether wrote about one daemon, without the `[tether] name: ` part.
pub fn events(lines: &[String], daemon: &str) -> Vec<String> {
    let head = format!("[tether] {daemon}: ");
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(&head).map(str::to_owned))
        .collect()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// Children of `pid` with their state letters, read from /proc.
pub fn children(pid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) S ppid ...: comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: i32 = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if ppid == pid {
            out.push((p, state));
        }
    }
    out
}

/// Waits until `cond` holds, failing as hung after [`HANG`].
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + HANG;
    while !cond() {
        assert!(Instant::now() < end, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Skips (returns false with a printed reason) unless under CI=true, where it fails instead.
pub fn require(available: bool, reason: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("required under CI=true: {reason}");
    }
    eprintln!("skipped: {reason}");
    false
}

pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    s
}

const APPLETS: &[&str] = &[
    "sh", "httpd", "nc", "wget", "sleep", "cat", "echo", "test", "touch", "env", "ls", "true",
];

pub fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().unwrap()
}

/// A command's stdout, trimmed.
pub fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Debian's busybox-static, the one binary a FROM-scratch test image needs for a shell.
pub fn static_busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            Command::new("file")
                .arg(p)
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("statically linked"))
        })
}

/// A folder to build the test image from: busybox-static with its applets, a page to serve
/// at /www, and a Dockerfile `FROM scratch`.
pub fn busybox_rootfs() -> Option<tempfile::TempDir> {
    let busybox = static_busybox()?;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::create_dir_all(d.join("www")).unwrap();
    std::fs::create_dir_all(d.join("tmp")).unwrap();
    std::fs::copy(busybox, d.join("bin/busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", d.join("bin").join(a)).unwrap();
    }
    std::fs::write(d.join("www/index.html"), "hello from the sidecar\n").unwrap();
    std::fs::write(
        d.join("Dockerfile"),
        "FROM scratch\nCOPY . /\nENV PATH=/bin\nCMD [\"sh\"]\n",
    )
    .unwrap();
    Some(dir)
}

/// The test image, built once per test binary; `None` (skipped, or failed under CI) when no
/// engine or busybox-static is available.
pub fn busybox_image() -> Option<&'static str> {
    static IMAGE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let built = IMAGE.get_or_init(|| {
        let engine = docker(&["version", "--format", "{{.Server.APIVersion}}"]);
        if !engine.status.success() {
            return None;
        }
        let dir = busybox_rootfs()?;
        let d = dir.path();
        let tag = "tether-run-test:busybox".to_owned();
        let out = docker(&["build", "-q", "-t", &tag, d.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(tag)
    });
    match built {
        Some(tag) => Some(tag.as_str()),
        None => {
            require(
                false,
                "no Docker Engine reachable, or no static busybox (apt-get install busybox-static)",
            );
            None
        }
    }
}

/// A server a test started (a registry, sshd, Podman's API): killed and reaped when dropped.
pub struct Server(pub std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's nats-server, on PATH or in /usr/sbin.
pub fn nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into()])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// What an engine test needs from this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Need {
    /// A reachable Docker Engine and Debian's busybox-static (for the FROM-scratch test image).
    Engine,
    /// docker-compose.
    Compose,
    /// Debian's docker-registry.
    Registry,
    /// An sshd to start, as root.
    Sshd,
    /// podman.
    Podman,
    /// A static tether (scripts/static-tether, or TETHER_STATIC_BIN).
    StaticTether,
    /// The Rust SDK's example plugin, static (PLUGIN_STATIC_BIN from scripts/static-plugin).
    StaticPlugin,
    /// The load plugin (crates/plugin/examples/stream.rs), static (STREAM_PLUGIN_STATIC_BIN).
    StaticStreamPlugin,
    /// Debian's nats-server.
    NatsServer,
}

fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Need {
    /// Why this machine cannot meet the need, or `None`.
    pub fn missing(self) -> Option<&'static str> {
        let met = match self {
            Need::Engine => runs("docker", "version") && static_busybox().is_some(),
            Need::Compose => runs("docker-compose", "version"),
            Need::Registry => runs("docker-registry", "--version"),
            Need::Sshd => {
                Path::new("/usr/sbin/sshd").exists() && {
                    use std::os::unix::fs::MetadataExt;
                    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
                }
            }
            Need::Podman => runs("podman", "--version"),
            Need::StaticTether => std::env::var_os("TETHER_STATIC_BIN").is_some(),
            Need::StaticPlugin => std::env::var_os("PLUGIN_STATIC_BIN").is_some(),
            Need::StaticStreamPlugin => std::env::var_os("STREAM_PLUGIN_STATIC_BIN").is_some(),
            Need::NatsServer => nats_server().is_some(),
        };
        (!met).then_some(match self {
            Need::Engine => {
                "no Docker Engine reachable, or no static busybox (apt-get install busybox-static)"
            }
            Need::Compose => "docker-compose is not installed",
            Need::Registry => "no docker-registry (apt-get install docker-registry)",
            Need::Sshd => "no sshd, or not root (apt-get install openssh-server)",
            Need::Podman => "podman is not installed (apt-get install podman)",
            Need::StaticTether => {
                "no static tether: TETHER_STATIC_BIN=\"$(scripts/static-tether)\""
            }
            Need::StaticPlugin => {
                "no static example plugin: PLUGIN_STATIC_BIN=\"$(scripts/static-plugin)\""
            }
            Need::StaticStreamPlugin => {
                "no static load plugin: STREAM_PLUGIN_STATIC_BIN=\"$(scripts/static-plugin stream)\""
            }
            Need::NatsServer => "nats-server is not installed (apt-get install nats-server)",
        })
    }
}

/// An engine test: its name, what it needs, and the test.
pub type EngineTest = (&'static str, &'static [Need], fn());

/// Runs a test file's engine tests (a `harness = false` test). A test whose needs this machine
/// lacks is reported as ignored, with the reason printed, so `cargo test` never counts it as
/// passed; under CI=true it runs anyway, and fails on what is missing.
#[allow(dead_code)]
pub fn run_engine_tests(tests: Vec<EngineTest>) -> std::process::ExitCode {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let mut known: Vec<(Need, Option<&'static str>)> = Vec::new();
    let trials = tests
        .into_iter()
        .map(|(name, needs, test)| {
            let missing: Vec<&'static str> = needs
                .iter()
                .filter_map(|n| match known.iter().find(|(k, _)| k == n) {
                    Some((_, m)) => *m,
                    None => {
                        let m = n.missing();
                        known.push((*n, m));
                        m
                    }
                })
                .collect();
            let ignored = !missing.is_empty() && !ci;
            if ignored {
                eprintln!("ignored {name}: {}", missing.join("; "));
            }
            libtest_mimic::Trial::test(name, move || {
                test();
                Ok(())
            })
            .with_ignored_flag(ignored)
        })
        .collect();
    let mut args = libtest_mimic::Arguments::from_args();
    // What CI=true requires must run even when `--ignored` was not asked for.
    if ci {
        args.include_ignored = true;
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// `engine_tests![a, b => [Need::Registry], …]`: the `main` of a `harness = false` engine test file.
/// Every test needs the engine; more needs are listed after `=>`.
#[macro_export]
macro_rules! engine_tests {
    ($($name:ident $(=> [$($need:expr),*])?),* $(,)?) => {
        fn main() -> std::process::ExitCode {
            support::run_engine_tests(vec![
                $((
                    stringify!($name),
                    &[support::Need::Engine $($(, $need)*)?],
                    $name as fn(),
                )),*
            ])
        }
    };
}

/// A proxy in front of the engine's socket, for tests that make the engine slow or racy on
/// purpose: before each API request is passed on, `before(method, path)` runs on the request's
/// own thread, and may sleep (a slow engine) or act on the real engine first (a race made
/// certain). Requests are passed on with `Connection: close`, so each one is seen; upgraded
/// connections (exec, attach) are passed on as they are. Point a tether at it with
/// `DOCKER_HOST=unix://{socket}`.
#[allow(dead_code)]
pub struct EngineProxy {
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl EngineProxy {
    pub fn start(before: impl Fn(&str, &str) + Send + Sync + 'static) -> EngineProxy {
        use std::os::unix::net::{UnixListener, UnixStream};
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("engine.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let before = std::sync::Arc::new(before);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { break };
                let before = before.clone();
                std::thread::spawn(move || {
                    let Some((method, path, head)) = read_head(&mut client) else {
                        return;
                    };
                    before(&method, &path);
                    let Ok(mut upstream) = UnixStream::connect("/var/run/docker.sock") else {
                        return;
                    };
                    use std::io::Write;
                    if upstream.write_all(&head).is_err() {
                        return;
                    }
                    let (mut c2, mut u2) =
                        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c2, &mut u2);
                        let _ = u2.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut upstream, &mut client);
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    let _ = up.join();
                });
            }
        });
        EngineProxy { socket, _dir: dir }
    }

    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

/// Reads one request's head; returns its method, its path (without the API version prefix and
/// the query) and the head to send on, with `Connection: close` unless it asks for an upgrade.
fn read_head(client: &mut impl Read) -> Option<(String, String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request = lines.next()?;
    let mut words = request.split(' ');
    let method = words.next()?.to_owned();
    let target = words.next()?;
    let path = target.split('?').next().unwrap_or(target);
    let path = match path.strip_prefix("/v") {
        Some(rest) => rest.find('/').map_or(path, |i| &rest[i..]),
        None => path,
    };
    let upgrade = text.to_ascii_lowercase().contains("\r\nupgrade:");
    let mut out = format!("{request}\r\n");
    for l in lines.filter(|l| !l.is_empty()) {
        if !upgrade && l.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    if !upgrade {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    Some((method, path.to_owned(), out.into_bytes()))
}
