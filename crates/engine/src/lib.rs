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
            EngineError::Refused { what, reason } => {
                write!(f, "the engine refused to {what}: {reason}")
            }
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
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

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
