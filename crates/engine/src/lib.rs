//! The engine seam: the few operations `tether run` needs, in tether's own terms. The Docker
//! Engine implements it ([`docker`]); so does an in-memory fake for orchestration tests
//! (`fake`, behind the cargo feature of that name).
//!
//! Every operation's future is `Send`, and so is every engine (`Send + Sync`): a multi-threaded
//! server can hold one engine and drive its calls from any of its tasks.

mod credentials;
pub mod docker;
#[cfg(feature = "fake")]
pub mod fake;
pub mod host;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tether_plan::ContainerPlan;

/// What went wrong talking to the engine, in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// The engine cannot be reached at all.
    Unreachable { endpoint: String, reason: String },
    /// `DOCKER_HOST` names a transport tether does not speak (TLS).
    Unsupported { endpoint: String, hint: String },
    /// No such image on this engine.
    NoImage { image: String },
    /// The engine could not pull the image.
    PullFailed { image: String, reason: String },
    /// Something tether cannot do with this engine.
    Unable { what: String, why: String },
    /// No such container or network.
    NotFound { what: String },
    /// A container name is taken (another run created it first).
    NameTaken { name: String },
    /// The engine refused a request.
    Refused { what: String, reason: String },
    /// The request conflicts with the object's state (HTTP 409: a container being removed, say).
    Conflict { what: String, reason: String },
    /// The engine answered, but not within the limit this operation has.
    Slow { what: String, limit: Duration },
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::Unreachable { endpoint, reason } => {
                write!(
                    f,
                    "cannot reach the container engine at {endpoint}: {reason}"
                )
            }
            EngineError::Unsupported { endpoint, .. } => write!(
                f,
                "cannot reach the container engine at {endpoint}: tether speaks to engines over unix://, tcp:// and ssh:// only (no TLS)"
            ),
            EngineError::NoImage { image } => {
                write!(f, "there is no image `{image}` on this engine")
            }
            EngineError::PullFailed { image, reason } => {
                write!(f, "cannot pull `{image}`: {reason}")
            }
            EngineError::Unable { what, why } => write!(f, "cannot {what}: {why}"),
            EngineError::NotFound { what } => write!(f, "{what} does not exist"),
            EngineError::NameTaken { name } => write!(f, "the name `{name}` is already taken"),
            EngineError::Refused { what, reason } | EngineError::Conflict { what, reason } => {
                write!(f, "the engine refused to {what}: {reason}")
            }
            EngineError::Slow { what, limit } => write!(
                f,
                "the engine took longer than {} to {what}",
                tether_probe::show(*limit)
            ),
        }
    }
}

impl std::error::Error for EngineError {}

impl EngineError {
    /// What a user can do about it, when tether can tell.
    pub fn hint(&self) -> Option<String> {
        match self {
            EngineError::Unreachable { .. } => {
                Some("is the Docker Engine running? DOCKER_HOST selects another one".into())
            }
            EngineError::Unsupported { hint, .. } => Some(hint.clone()),
            EngineError::Slow { limit, .. } => Some(format!(
                "the engine is reachable but slow (a busy machine?); {TIMEOUT_VARIABLE}={}s gives every engine call more time",
                (*limit * 4).as_secs().max(1)
            )),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// The variable that sets how long any one engine call may take (see [`docker::Limits`]).
pub const TIMEOUT_VARIABLE: &str = "TETHER_ENGINE_TIMEOUT";

/// A piece of what a container writes, as the engine hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

impl Chunk {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Stdout(b) | Chunk::Stderr(b) => b,
        }
    }
}

/// Lines from a stream of chunks: each whole line once, in order; a line split across chunks is
/// joined first. What a line says is decoded lossily.
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// The whole lines that this chunk completes.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(bytes);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(end + 1);
        let done = std::mem::replace(&mut self.partial, rest);
        String::from_utf8_lossy(&done)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A stream of what a container writes.
pub type Output = futures_util::stream::BoxStream<'static, Result<Chunk>>;

/// A file to copy into a container: its name and its bytes.
pub type FileCopy = (String, Vec<u8>);

/// A container as the engine reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// `created`, `running`, `exited`, …
    pub state: String,
    pub exit_code: Option<i64>,
    /// `starting`, `healthy`, `unhealthy` when the container has a healthcheck.
    pub health: Option<String>,
    /// Network name → the container's IPv4 address on it.
    pub addresses: BTreeMap<String, String>,
    /// Container port (tcp) → host port on 127.0.0.1.
    pub published: BTreeMap<u16, u16>,
    /// When it was created, RFC 3339.
    pub created: String,
}

impl Container {
    pub fn running(&self) -> bool {
        self.state == "running"
    }

    /// Whether the engine is removing it (it cannot be started, and will be gone).
    pub fn removing(&self) -> bool {
        self.state == "removing"
    }
}

/// The operations tether needs from a container engine.
pub trait Engine: Send + Sync {
    /// Where the engine is, for messages.
    fn endpoint(&self) -> String;
    /// Reaches the engine; returns its API version.
    fn ping(&self) -> impl Future<Output = Result<String>> + Send;
    /// The image's ID, or `NoImage`.
    fn image_id(&self, image: &str) -> impl Future<Output = Result<String>> + Send;
    /// Pulls the image from its registry, telling the percentage done as it goes.
    fn pull(
        &self,
        image: &str,
        progress: &(dyn Fn(u8) + Sync),
    ) -> impl Future<Output = Result<()>> + Send;
    /// Creates the network with these labels unless it exists.
    fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Removes the network; a missing one is not an error.
    fn remove_network(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Connects a container to an existing network under these aliases; a container already
    /// on it is left as it is. A missing network is `NotFound`.
    fn connect(
        &self,
        id: &str,
        network: &str,
        aliases: &[String],
    ) -> impl Future<Output = Result<()>> + Send;
    fn inspect(&self, name_or_id: &str) -> impl Future<Output = Result<Option<Container>>> + Send;
    /// Containers (running or not) carrying every one of these labels.
    fn list(&self, labels: &[(&str, &str)]) -> impl Future<Output = Result<Vec<Container>>> + Send;
    /// Creates the planned container (labels and mounts final: config hash and secret files
    /// included); `NameTaken` when the name is in use.
    fn create(&self, spec: &ContainerPlan) -> impl Future<Output = Result<String>> + Send;
    fn start(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn stop(&self, id: &str, grace: Duration) -> impl Future<Output = Result<()>> + Send;
    /// Removes a container, stopping it first; a missing one is not an error.
    fn remove(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Runs a command in a running container: its exit code and output.
    fn exec(
        &self,
        id: &str,
        command: &[String],
    ) -> impl Future<Output = Result<(i64, String)>> + Send;
    /// What the container writes, as it writes it: everything from its start (or its last
    /// `tail` lines), then, with `follow`, what it writes next, until it stops.
    fn output(&self, id: &str, follow: bool, tail: Option<usize>) -> Output;
    /// The last `tail` lines the container printed (0: all).
    fn logs(&self, id: &str, tail: usize) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Whether the container's `port` accepts a TCP connection (`path: None`) or answers
    /// `GET path` with a status from 200 to 399; dialled the way that works for this engine,
    /// with no tool inside the image.
    fn reachable(
        &self,
        container: &Container,
        network: &str,
        port: u16,
        path: Option<&str>,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Whether the engine sees this host's files, so that a bind mount of one works.
    fn shares_files(&self) -> impl Future<Output = bool> + Send;
    /// The `DOCKER_HOST` a workload's engine CLI should use to reach the same engine, when it
    /// differs from tether's own (an ssh tunnel of this run).
    fn workload_docker_host(&self) -> Option<String> {
        None
    }
    /// Whether a port the engine publishes on 127.0.0.1 is reachable on this host's 127.0.0.1.
    fn ports_here(&self) -> impl Future<Output = bool> + Send;
    /// Copies files into a container (created or running) under `dir`, readable by all.
    fn upload(
        &self,
        id: &str,
        dir: &str,
        files: &[FileCopy],
    ) -> impl Future<Output = Result<()>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_whole_once_and_in_order_across_chunks() {
        let mut l = Lines::default();
        assert_eq!(l.feed(b"boot"), Vec::<String>::new());
        assert_eq!(l.feed(b"ing\nlisten"), ["booting"]);
        assert_eq!(
            l.feed(b"ing\r\nok\n\xff\n"),
            ["listening", "ok", "\u{fffd}"]
        );
        assert_eq!(l.feed(b""), Vec::<String>::new());
    }

    #[test]
    fn a_slow_engine_names_the_operation_the_limit_and_the_setting() {
        let e = EngineError::Slow {
            what: "create container tether-demo-db".into(),
            limit: Duration::from_secs(30),
        };
        assert_eq!(
            e.to_string(),
            "the engine took longer than 30s to create container tether-demo-db"
        );
        assert_eq!(
            e.hint().unwrap(),
            "the engine is reachable but slow (a busy machine?); TETHER_ENGINE_TIMEOUT=120s gives every engine call more time"
        );
    }
}
