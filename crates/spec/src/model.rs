//! The resolved declaration: every field validated, every default filled in.

use std::collections::BTreeMap;
use std::fmt;

use indexmap::IndexMap;
use serde::{Serialize, Serializer};

/// A positive span of time, written `500ms`, `30s`, `2m`, `1h` or as bare seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    pub fn as_millis(&self) -> u128 {
        self.0.as_millis()
    }
}

impl fmt::Display for Duration {
    /// The shortest exact form: `500ms`, `30s`, `2m`, `1h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where a piece of the declaration was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Declaration {
    pub version: u32,
    pub project: String,
    pub env_prefix: String,
    /// The main declaration file.
    pub file: String,
    /// The folder holding it: the project root that `workspace` mounts.
    pub root: String,
    pub sidecars: IndexMap<String, Sidecar>,
    pub workload: Option<Workload>,
    pub init: Option<Init>,
}

impl Declaration {
    /// Sidecars that are not disabled, in declaration order.
    pub fn enabled_sidecars(&self) -> impl Iterator<Item = &Sidecar> {
        self.sidecars.values().filter(|s| !s.disable)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lifecycle {
    Shared,
    Session,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Session => "session",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sidecar {
    pub name: String,
    pub origin: Origin,
    pub image: String,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub description: Option<String>,
    pub disable: bool,
    pub lifecycle: Lifecycle,
    /// How many copies of a shared sidecar a cluster runs (`tether render`); `tether run` starts
    /// one. Left out of the serialised form when 1.
    #[serde(skip_serializing_if = "is_one")]
    pub replicas: u32,
    pub interface: Interface,
    pub aliases: Vec<String>,
    pub readiness: Readiness,
    /// An HTTP health endpoint the sidecar serves while it runs, for a cluster's liveness and
    /// readiness probes. Left out of the serialised form (and so of the config hash) when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<SidecarHealth>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<Secret>,
    pub mounts: Vec<Mount>,
    pub networks: Vec<String>,
    pub resources: Resources,
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// Where secrets appear inside a sidecar: one file per secret, on a tmpfs.
pub const SECRETS_DIR: &str = "/run/secrets";

/// A sidecar's own health endpoint: `live` answers 2xx while it should not be restarted, `ready`
/// while it serves. Unlike `readiness` (the gate before the workload starts), it is checked for
/// as long as the sidecar runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SidecarHealth {
    pub port: u16,
    pub live: String,
    pub ready: String,
}

impl Sidecar {
    /// The DNS name the workload reaches this sidecar by: `interface.name` for mcp, else the name.
    /// `None` for sidecars that are not network-facing.
    pub fn canonical_alias(&self) -> Option<&str> {
        match &self.interface {
            Interface::Port { .. } => Some(&self.name),
            Interface::Mcp { name, .. } => Some(name),
            Interface::Volume { .. } | Interface::None => None,
        }
    }

    /// Every DNS name the sidecar answers to on the project network.
    pub fn all_aliases(&self) -> Vec<&str> {
        match self.canonical_alias() {
            Some(c) => std::iter::once(c)
                .chain(self.aliases.iter().map(String::as_str))
                .collect(),
            None => Vec::new(),
        }
    }

    pub fn port(&self) -> Option<u16> {
        self.interface.port()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Interface {
    Port {
        port: u16,
    },
    Mcp {
        port: u16,
        name: String,
        path: String,
        transport: String,
    },
    Volume {
        volume: String,
        mountpoint: String,
    },
    None,
}

impl Interface {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Port { .. } => "port",
            Self::Mcp { .. } => "mcp",
            Self::Volume { .. } => "volume",
            Self::None => "none",
        }
    }

    pub fn port(&self) -> Option<u16> {
        match self {
            Self::Port { port } | Self::Mcp { port, .. } => Some(*port),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Readiness {
    #[serde(flatten)]
    pub probe: Probe,
    /// The container port `tcp` and `http` dial, when it is not the interface's (a health
    /// endpoint of its own). Left out of the serialised form when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub timeout: Duration,
    pub interval: Duration,
    pub start_period: Option<Duration>,
}

/// How a sidecar is judged ready.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Probe {
    Tcp,
    Http {
        path: String,
    },
    Exec {
        command: Vec<String>,
    },
    /// The image's own HEALTHCHECK, or `command` installed as the container's healthcheck.
    Healthcheck {
        command: Option<Vec<String>>,
    },
    Log {
        pattern: String,
    },
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Secret {
    pub name: String,
    pub from: SecretSource,
}

/// Where a secret's value is read on the host when a sidecar starts. The value itself never enters
/// the declaration model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(String),
}

impl SecretSource {
    /// Reads the value on this host: the variable, or the file relative to `root` (the
    /// declaration's folder). `Err` says why in words that never include the value.
    pub fn read(&self, root: &str) -> Result<String, String> {
        match self {
            Self::Env(var) => std::env::var(var)
                .map_err(|_| format!("the variable {var} is not set on this host")),
            Self::File(path) => {
                // The path as read, so that a relative one says which folder it was taken in.
                let full = std::path::Path::new(root).join(path);
                std::fs::read_to_string(&full)
                    .map_err(|e| format!("cannot read {}: {}", full.display(), e.kind()))
            }
        }
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(v) => write!(f, "env:{v}"),
            Self::File(p) => write!(f, "file:{p}"),
        }
    }
}

impl Serialize for SecretSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Mount {
    /// The project root.
    Workspace { target: String, read_only: bool },
    /// The engine's socket, for sidecars that start containers themselves.
    DockerSocket { read_only: bool },
    Volume {
        name: String,
        target: String,
        read_only: bool,
    },
}

pub const DEFAULT_WORKSPACE_TARGET: &str = "/workspace";
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Resources {
    /// Bytes.
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub gpus: Option<Gpus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gpus {
    All,
    Count(u32),
    Devices(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// A project network on which sidecars answer to their aliases.
    Network,
    /// The workload joins the network namespace of one sidecar and reaches it on 127.0.0.1.
    SharedNamespace,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Workload {
    pub image: Option<String>,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub network_mode: NetworkMode,
    /// For `shared-namespace`: the sidecar whose namespace the workload joins.
    pub sidecar: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// init

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Init {
    pub steps: Vec<Step>,
    pub daemons: IndexMap<String, Daemon>,
    pub select_env: String,
    pub health: Option<Health>,
    /// The control socket `tether ctl` speaks to; `None`: the default path.
    pub control: Option<Control>,
    pub shutdown: Shutdown,
    pub notify: Option<Notify>,
    pub logs: Logs,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub name: String,
    pub command: Vec<String>,
    pub fatal: bool,
    pub timeout: Option<Duration>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    Started,
    Ready,
    Completed,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Daemon {
    pub name: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub depends_on: IndexMap<String, Condition>,
    pub readiness: DaemonReadiness,
    pub liveness: Option<Liveness>,
    pub restart: Restart,
    pub on_exit: OnExit,
    pub forward_signals: Forward,
    pub stop: Stop,
    pub success_codes: Vec<i32>,
    pub log_files: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Check {
    Tcp {
        host: String,
        port: u16,
    },
    Http {
        url: String,
    },
    Exec {
        command: Vec<String>,
    },
    Log {
        pattern: String,
    },
    /// The daemon reports readiness itself: a line on `NOTIFY_FD` or `READY=1` on `NOTIFY_SOCKET`.
    Notify,
    None,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DaemonReadiness {
    #[serde(flatten)]
    pub check: Check,
    pub timeout: Duration,
    pub interval: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Liveness {
    #[serde(flatten)]
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Restart {
    pub policy: RestartPolicy,
    pub backoff: Backoff,
    /// `None`: no limit.
    pub max_restarts: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    /// A daemon that stayed up this long has its backoff reset to `initial`.
    pub reset_after: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnExit {
    Ignore,
    Shutdown,
}

/// Where the signals tether init receives (other than SIGTERM and SIGINT) go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forward {
    /// The daemon's whole process group.
    Group,
    /// Only the daemon's main process.
    Process,
    /// Not forwarded.
    None,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stop {
    pub signal: Signal,
    /// `None`: the bundle's `shutdown.grace`.
    pub grace: Option<Duration>,
}

/// A signal by its canonical name and number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    pub name: &'static str,
    pub number: i32,
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

/// The Linux signals a daemon may be stopped with, by number.
pub const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGILL", 4),
    ("SIGTRAP", 5),
    ("SIGABRT", 6),
    ("SIGBUS", 7),
    ("SIGFPE", 8),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGSEGV", 11),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGSTKFLT", 16),
    ("SIGCHLD", 17),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGTTIN", 21),
    ("SIGTTOU", 22),
    ("SIGURG", 23),
    ("SIGXCPU", 24),
    ("SIGXFSZ", 25),
    ("SIGVTALRM", 26),
    ("SIGPROF", 27),
    ("SIGWINCH", 28),
    ("SIGIO", 29),
    ("SIGPWR", 30),
    ("SIGSYS", 31),
    ("SIGIOT", 6),
    ("SIGPOLL", 29),
];

impl Signal {
    pub const TERM: Signal = Signal {
        name: "SIGTERM",
        number: 15,
    };

    /// `SIGTERM`, `TERM`, `sigterm` or `15`.
    pub fn parse(text: &str) -> Option<Signal> {
        if let Ok(n) = text.parse::<i32>() {
            return SIGNALS
                .iter()
                .find(|(_, num)| *num == n)
                .map(|(name, number)| Signal {
                    name,
                    number: *number,
                });
        }
        let upper = text.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        SIGNALS
            .iter()
            .find(|(name, _)| *name == full)
            .map(|(name, number)| Signal {
                name,
                number: *number,
            })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Health {
    pub listen: String,
    /// The control operations as JSON over HTTP on the same listener (`/control`).
    pub control: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Control {
    /// An absolute path for the Unix socket.
    pub socket: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownOrder {
    ReverseDependency,
    Parallel,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Shutdown {
    pub grace: Duration,
    pub order: ShutdownOrder,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Notify {
    /// Receives each event as JSON on stdin.
    Command(Vec<String>),
    /// Receives each event as a JSON POST.
    Url(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Logs {
    /// `{name}` is replaced by the daemon's name.
    pub prefix: String,
    pub timestamps: bool,
    pub format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_their_shortest_exact_form() {
        let shown: Vec<String> = [500, 30_000, 120_000, 3_600_000, 90_000, 1_500]
            .iter()
            .map(|ms| Duration::from_millis(*ms).to_string())
            .collect();
        assert_eq!(shown, ["500ms", "30s", "2m", "1h", "90s", "1500ms"]);
    }

    #[test]
    fn signals_parse_by_name_short_name_or_number() {
        assert_eq!(Signal::parse("SIGTERM"), Some(Signal::TERM));
        assert_eq!(Signal::parse("term"), Some(Signal::TERM));
        assert_eq!(Signal::parse("15"), Some(Signal::TERM));
        assert_eq!(Signal::parse("HUP").map(|s| s.number), Some(1));
        assert_eq!(Signal::parse("SIGFOO"), None);
        assert_eq!(Signal::parse("99"), None);
    }

    #[test]
    fn a_secret_file_that_cannot_be_read_is_named_with_its_folder() {
        let from = SecretSource::File("signal-pool.token".into());
        assert_eq!(
            from.read("/nonexistent/example"),
            Err("cannot read /nonexistent/example/signal-pool.token: entity not found".into())
        );
        let from = SecretSource::Env("TETHER_TEST_NO_SUCH_VARIABLE".into());
        assert_eq!(
            from.read("/"),
            Err("the variable TETHER_TEST_NO_SUCH_VARIABLE is not set on this host".into())
        );
    }
}
