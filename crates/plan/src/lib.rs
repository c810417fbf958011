//! Pure launch planning: from a validated declaration to the containers tether would create or
//! reuse, the labels and config hashes that find them again, the readiness each must pass, the
//! environment the workload receives, and the workload's rewritten command line.
//!
//! No engine calls and no I/O: everything here is a function of its arguments.

pub mod argv;

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tether_spec::model::{
    Declaration, Duration, Gpus, Interface, Lifecycle, Mount, NetworkMode, Probe, Secret, Sidecar,
};
use tether_spec::values::sanitize_label;

pub use argv::{ArgvError, Injection, WorkloadArgv};

pub const LABEL_PROJECT: &str = "dev.tether.project";
pub const LABEL_SIDECAR: &str = "dev.tether.sidecar";
pub const LABEL_LIFECYCLE: &str = "dev.tether.lifecycle";
pub const LABEL_SESSION: &str = "dev.tether.session";
pub const LABEL_CONFIG_HASH: &str = "dev.tether.config-hash";
pub const LABEL_ROLE: &str = "dev.tether.role";
/// Marks a session container with the process that owns it, so a later run can tell a
/// leftover of a killed run from a live one.
pub const LABEL_OWNER: &str = "dev.tether.owner";

/// What a container (or network) is to tether: the value of its [`LABEL_ROLE`] label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A declared sidecar.
    Sidecar,
    /// The workload's own container, when `tether run` starts one.
    Workload,
    /// A helper container that checks a sidecar's readiness from inside its network namespace.
    Probe,
    /// The project network.
    Network,
}

impl Role {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sidecar => "sidecar",
            Self::Workload => "workload",
            Self::Probe => "probe",
            Self::Network => "network",
        }
    }

    /// From a label value; `None` for one tether does not write.
    pub fn parse(value: &str) -> Option<Role> {
        [Self::Sidecar, Self::Workload, Self::Probe, Self::Network]
            .into_iter()
            .find(|r| r.as_str() == value)
    }

    /// The role a container's labels give it.
    pub fn of(labels: &BTreeMap<String, String>) -> Option<Role> {
        labels.get(LABEL_ROLE).and_then(|v| Role::parse(v))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The lifecycle a container's [`LABEL_LIFECYCLE`] label gives it.
pub fn lifecycle_of(labels: &BTreeMap<String, String>) -> Option<Lifecycle> {
    let value = labels.get(LABEL_LIFECYCLE)?;
    [Lifecycle::Shared, Lifecycle::Session]
        .into_iter()
        .find(|l| l.as_str() == value)
}

pub use tether_spec::model::SECRETS_DIR;
/// Where the MCP server list is mounted in a workload container.
pub const MCP_CONFIG_TARGET: &str = "/run/tether/mcp.json";
/// Stands for the MCP file's path on the host, which the launcher fills in once written.
pub const MCP_CONFIG_HOST: &str = "<mcp.json>";
/// Bumped when the hashed form changes, so containers from older plans are recreated.
const HASH_FORMAT: &str = "tether-config-v2";

/// `tether-<project>`, the network the project's sidecars and workload share.
pub fn network_name(project: &str) -> String {
    join_name(&["tether", project])
}

/// `tether-<project>-<sidecar>` for shared sidecars, `tether-<project>-<session>-<sidecar>` for
/// session sidecars. Parts that sanitise to nothing are left out, never leaving `--` or a
/// trailing `-`.
pub fn container_name(project: &str, sidecar: &str, session: Option<&str>) -> String {
    match session {
        Some(s) => join_name(&["tether", project, s, sidecar]),
        None => join_name(&["tether", project, sidecar]),
    }
}

fn join_name(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| sanitize_label(p))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// `<PREFIX>_<NAME>`: the name upper-cased with `-` as `_`.
pub fn env_stem(prefix: &str, sidecar: &str) -> String {
    format!(
        "{prefix}_{}",
        sidecar.to_ascii_uppercase().replace('-', "_")
    )
}

/// The SHA-256 of the sidecar's canonical form. The engine's image ID is added by the launcher so a
/// rebuilt tag is noticed. Descriptions, where the sidecar was written, `replicas` (a cluster's
/// count: `tether run` starts one whatever it says) and secret values (which never enter the
/// model) do not count.
pub fn config_hash(project: &str, sidecar: &Sidecar, image_id: Option<&str>) -> String {
    let mut value = serde_json::to_value(sidecar).expect("a sidecar serialises");
    if let serde_json::Value::Object(map) = &mut value {
        for ignored in ["description", "origin", "disable", "replicas"] {
            map.remove(ignored);
        }
        map.insert("project".into(), project.into());
        map.insert("format".into(), HASH_FORMAT.into());
        map.insert("image_id".into(), image_id.into());
    }
    let mut canonical = String::new();
    write_canonical(&value, &mut canonical);
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// JSON with object keys sorted at every level.
fn write_canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&map[*k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// How readiness is judged; the declaration's `readiness.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadinessMode {
    Tcp,
    Http,
    Exec,
    Healthcheck,
    Log,
    None,
}

impl ReadinessMode {
    pub fn of(probe: &Probe) -> ReadinessMode {
        match probe {
            Probe::Tcp => Self::Tcp,
            Probe::Http { .. } => Self::Http,
            Probe::Exec { .. } => Self::Exec,
            Probe::Healthcheck { .. } => Self::Healthcheck,
            Probe::Log { .. } => Self::Log,
            Probe::None => Self::None,
        }
    }

    /// The word the declaration uses, as in labels, JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Exec => "exec",
            Self::Healthcheck => "healthcheck",
            Self::Log => "log",
            Self::None => "none",
        }
    }
}

impl std::fmt::Display for ReadinessMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A readiness declaration reduced to plain values.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReadinessPlan {
    pub mode: ReadinessMode,
    /// The container port to dial (tcp, http).
    pub port: Option<u16>,
    /// The HTTP path (http).
    pub path: Option<String>,
    /// The command (exec; healthcheck when it replaces the image's own).
    pub command: Option<Vec<String>>,
    /// The regular expression (log).
    pub pattern: Option<String>,
    pub timeout: Duration,
    pub interval: Duration,
    pub start_period: Option<Duration>,
}

impl ReadinessPlan {
    pub fn resolve(sidecar: &Sidecar) -> Self {
        let r = &sidecar.readiness;
        let mut plan = ReadinessPlan {
            mode: ReadinessMode::of(&r.probe),
            port: None,
            path: None,
            command: None,
            pattern: None,
            timeout: r.timeout,
            interval: r.interval,
            start_period: r.start_period,
        };
        match &r.probe {
            Probe::Tcp => plan.port = r.port.or(sidecar.port()),
            Probe::Http { path } => {
                plan.port = r.port.or(sidecar.port());
                plan.path = Some(path.clone());
            }
            Probe::Exec { command } => plan.command = Some(command.clone()),
            Probe::Healthcheck { command } => plan.command = command.clone(),
            Probe::Log { pattern } => plan.pattern = Some(pattern.clone()),
            Probe::None => {}
        }
        plan
    }

    /// One line for people: `tcp :6379, timeout 30s, every 250ms`.
    pub fn summary(&self) -> String {
        let what = match self.mode {
            ReadinessMode::Tcp => format!("tcp :{}", self.port.unwrap_or(0)),
            ReadinessMode::Http => format!(
                "http GET :{}{}",
                self.port.unwrap_or(0),
                self.path.as_deref().unwrap_or("/")
            ),
            ReadinessMode::Exec => format!(
                "exec {}",
                shell_words(self.command.as_deref().unwrap_or(&[]))
            ),
            ReadinessMode::Healthcheck => match &self.command {
                Some(c) => format!("healthcheck {}", shell_words(c)),
                None => "the image's healthcheck".to_owned(),
            },
            ReadinessMode::Log => format!(
                "log line matching /{}/",
                self.pattern.as_deref().unwrap_or("")
            ),
            ReadinessMode::None => return "none (ready once started)".to_owned(),
        };
        let mut s = format!("{what}, timeout {}, every {}", self.timeout, self.interval);
        if let Some(p) = self.start_period {
            s.push_str(&format!(", start period {p}"));
        }
        s
    }
}

/// Words joined for display, quoted where a shell would need it.
pub fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A mount in engine terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum MountPlan {
    Bind {
        source: String,
        target: String,
        read_only: bool,
    },
    Volume {
        name: String,
        target: String,
        read_only: bool,
    },
    Tmpfs {
        target: String,
    },
}

/// A container healthcheck to install (healthcheck readiness with a declared command).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthcheckPlan {
    /// `["CMD", prog, args…]`, as the engine expects.
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Option<Duration>,
    pub retries: u32,
}

/// Everything needed to create one sidecar container.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContainerPlan {
    pub sidecar: String,
    pub name: String,
    pub image: String,
    pub lifecycle: Lifecycle,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE`, sorted.
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// The project network and the names the sidecar answers to on it.
    pub network: String,
    pub aliases: Vec<String>,
    pub extra_networks: Vec<String>,
    pub mounts: Vec<MountPlan>,
    /// Read on the host at start and written as files under `/run/secrets/`; never env or labels.
    pub secrets: Vec<Secret>,
    /// Container ports to publish on 127.0.0.1: always for shared sidecars, for session ones
    /// when the workload is a host process.
    pub publish: Vec<u16>,
    pub memory: Option<u64>,
    pub nano_cpus: Option<i64>,
    pub gpus: Option<Gpus>,
    pub healthcheck: Option<HealthcheckPlan>,
    pub readiness: ReadinessPlan,
    /// The hash without the image ID; the launcher recomputes it with the engine's image ID.
    pub config_hash: String,
}

/// How the workload runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadTarget {
    /// A container on the project network, in a sidecar's namespace, or on a network of the
    /// user's own that the sidecars join.
    Container,
    /// A container given `--network host`: like a host process, it reaches the sidecars on
    /// ports published on 127.0.0.1.
    HostNetwork,
    /// A process on the host: sidecar ports are published on 127.0.0.1.
    HostProcess,
}

impl WorkloadTarget {
    /// Whether the workload reaches sidecars through ports published on the host.
    pub fn on_host(&self) -> bool {
        matches!(self, Self::HostNetwork | Self::HostProcess)
    }
}

/// When a sidecar's image is pulled, as with `docker run --pull`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Only when the engine does not have it.
    #[default]
    Missing,
    /// On every run, so that a moved tag is followed.
    Always,
    /// Never: a missing image is an error.
    Never,
}

/// A value for the workload's environment that may only be known once containers run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "kebab-case")]
pub enum EnvValue {
    Literal(String),
    /// The host port the engine published for this sidecar's container port.
    PublishedPort {
        sidecar: String,
        port: u16,
    },
    /// `http://127.0.0.1:<published>/path`.
    PublishedUrl {
        sidecar: String,
        port: u16,
        path: String,
    },
}

impl EnvValue {
    /// The value, given the published ports (`(sidecar, container port) -> host port`).
    pub fn resolve(&self, published: &dyn Fn(&str, u16) -> Option<u16>) -> Option<String> {
        match self {
            Self::Literal(s) => Some(s.clone()),
            Self::PublishedPort { sidecar, port } => {
                published(sidecar, *port).map(|p| p.to_string())
            }
            Self::PublishedUrl {
                sidecar,
                port,
                path,
            } => published(sidecar, *port).map(|p| format!("http://127.0.0.1:{p}{path}")),
        }
    }

    pub fn display(&self) -> String {
        match self {
            Self::Literal(s) => s.clone(),
            Self::PublishedPort { sidecar, port } => format!("<host port for {sidecar}:{port}>"),
            Self::PublishedUrl {
                sidecar,
                port,
                path,
            } => format!("http://127.0.0.1:<host port for {sidecar}:{port}>{path}"),
        }
    }
}

/// The MCP server list given to a workload, as JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct McpConfig {
    /// Where it is mounted in a workload container (or the env var's value for a host process,
    /// filled in by the launcher with the file it wrote).
    pub target: String,
    pub servers: Vec<McpServer>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct McpServer {
    pub name: String,
    pub sidecar: String,
    pub url: EnvValue,
}

impl McpConfig {
    /// `{"mcpServers": {NAME: {"type": "http", "url": URL}}}`, the shape MCP clients read.
    pub fn render(&self, published: &dyn Fn(&str, u16) -> Option<u16>) -> serde_json::Value {
        let mut servers = serde_json::Map::new();
        for s in &self.servers {
            let url = s.url.resolve(published).unwrap_or_else(|| s.url.display());
            servers.insert(
                s.name.clone(),
                serde_json::json!({ "type": "http", "url": url }),
            );
        }
        serde_json::json!({ "mcpServers": servers })
    }
}

/// The whole launch, before any engine is touched.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub project: String,
    pub session: String,
    pub network: String,
    pub target: WorkloadTarget,
    /// The workload's own `--network`, a user-defined one: the network-facing sidecars join it
    /// too, under the same aliases.
    pub workload_network: Option<String>,
    /// When the sidecars' images are pulled (set from the command line).
    pub pull: PullPolicy,
    pub sidecars: Vec<ContainerPlan>,
    /// Injected into the workload, in order.
    pub env: Vec<(String, EnvValue)>,
    /// Named volumes mounted into the workload (`volume` interfaces): `NAME:MOUNTPOINT`.
    pub volumes: Vec<String>,
    pub mcp: Option<McpConfig>,
    /// The workload's command line after injection (for a container workload).
    pub argv: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PlanError {
    Argv(ArgvError),
    /// The workload's `--network` cannot reach its sidecars.
    Network {
        given: String,
        reason: String,
    },
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Argv(e) => e.fmt(f),
            Self::Network { given, reason } => {
                write!(f, "the workload's `--network {given}` {reason}")
            }
        }
    }
}

/// What the workload's own `--network` means for reaching its sidecars: the target and the
/// user-defined network the sidecars must join, if any.
fn workload_network(
    given: &str,
    project_network: &str,
    namespace_of: Option<&str>,
    network_facing: Option<&str>,
) -> Result<(WorkloadTarget, Option<String>), PlanError> {
    let refuse = |reason: String| {
        Err(PlanError::Network {
            given: given.to_owned(),
            reason,
        })
    };
    if given == project_network {
        return Ok((WorkloadTarget::Container, None));
    }
    if let Some(ns) = namespace_of {
        return refuse(format!(
            "conflicts with `workload.network_mode: shared-namespace`, which runs it in sidecar {ns}'s namespace; remove the option"
        ));
    }
    let mode = given.split_once(':').map_or(given, |(m, _)| m);
    match (mode, network_facing) {
        ("host", _) => Ok((WorkloadTarget::HostNetwork, None)),
        (_, None) => Ok((WorkloadTarget::Container, None)),
        ("none", Some(s)) => refuse(format!(
            "leaves it no network, but sidecar {s} is reached over one; remove the option"
        )),
        ("bridge" | "default", Some(_)) => refuse(format!(
            "is the default bridge, where sidecars have no names; remove the option (tether joins it to `{project_network}`) or name a network of your own"
        )),
        ("container" | "ns" | "slirp4netns" | "pasta" | "private" | "service", Some(_)) => {
            refuse(format!(
                "cannot reach the sidecars; remove the option (tether joins it to `{project_network}`), or declare `workload.network_mode: shared-namespace`"
            ))
        }
        _ => Ok((WorkloadTarget::Container, Some(given.to_owned()))),
    }
}

impl std::error::Error for PlanError {}

/// Plans a launch of `decl` around the workload `argv` in session `session`.
///
/// `workload_env` of the declaration is injected too. With no enabled sidecars and no workload
/// env, a container workload's argv comes back byte-identical.
/// The workload command the declaration gives when none follows `--`: `docker run --rm IMAGE
/// [COMMAND…]` from `workload.image` and `workload.command`; `None` without an image.
pub fn declared_workload(decl: &Declaration) -> Option<Vec<String>> {
    let w = decl.workload.as_ref()?;
    let image = w.image.clone()?;
    let mut argv = vec!["docker".into(), "run".into(), "--rm".into(), image];
    argv.extend(w.command.clone().unwrap_or_default());
    Some(argv)
}

pub fn plan(decl: &Declaration, session: &str, argv: &[String]) -> Result<Plan, PlanError> {
    let kind = argv::classify(argv).map_err(PlanError::Argv)?;
    let network = network_name(&decl.project);
    let workload = decl.workload.as_ref();
    let namespace_of = workload
        .filter(|w| w.network_mode == NetworkMode::SharedNamespace)
        .and_then(|w| w.sidecar.as_deref());
    let network_facing = decl
        .enabled_sidecars()
        .find(|s| s.port().is_some())
        .map(|s| s.name.as_str());
    // A plugin: the workload in the network namespace of a bus sidecar. It reaches the bus
    // only through its sidecar, on 127.0.0.1, so it is not told where a Bus API is.
    let plugin = namespace_of
        .and_then(|ns| decl.enabled_sidecars().find(|s| s.name == ns))
        .is_some_and(|s| tether_spec::bus::runs_sidecar(&tether_spec::bus::words(s)));
    let (target, workload_network) = match kind {
        WorkloadArgv::HostProcess => (WorkloadTarget::HostProcess, None),
        WorkloadArgv::Container { network: None, .. } => (WorkloadTarget::Container, None),
        WorkloadArgv::Container {
            network: Some(given),
            ..
        } => workload_network(&given, &network, namespace_of, network_facing)?,
    };

    let mut sidecars = Vec::new();
    let mut env: Vec<(String, EnvValue)> = Vec::new();
    let mut volumes = Vec::new();
    let mut mcp_servers = Vec::new();
    for s in decl.enabled_sidecars() {
        let session_part = (s.lifecycle == Lifecycle::Session).then_some(session);
        let name = container_name(&decl.project, &s.name, session_part);
        // A shared container serves container and host-process runs alike, so its port is
        // always published (on 127.0.0.1 only); a session one only when the workload needs it.
        let publish = match s.port() {
            Some(p) if target.on_host() || s.lifecycle == Lifecycle::Shared => vec![p],
            _ => Vec::new(),
        };
        sidecars.push(container_plan(decl, s, name, session, publish));

        // How the workload reaches it.
        let stem = env_stem(&decl.env_prefix, &s.name);
        let hidden = plugin && tether_spec::bus::serve_args(&tether_spec::bus::words(s)).is_some();
        if let Some(port) = s.port().filter(|_| !hidden) {
            let in_namespace = namespace_of == Some(s.name.as_str());
            let (host, port_value) = match target {
                WorkloadTarget::HostProcess | WorkloadTarget::HostNetwork => (
                    "127.0.0.1".to_owned(),
                    EnvValue::PublishedPort {
                        sidecar: s.name.clone(),
                        port,
                    },
                ),
                WorkloadTarget::Container if in_namespace => {
                    ("127.0.0.1".to_owned(), EnvValue::Literal(port.to_string()))
                }
                WorkloadTarget::Container => (
                    s.canonical_alias().unwrap_or(&s.name).to_owned(),
                    EnvValue::Literal(port.to_string()),
                ),
            };
            let url_path = match &s.interface {
                Interface::Mcp { path, .. } => Some(path.clone()),
                _ => match &s.readiness.probe {
                    Probe::Http { .. } => Some(String::new()),
                    _ => None,
                },
            };
            let url = url_path.map(|path| match &port_value {
                EnvValue::Literal(p) => EnvValue::Literal(format!("http://{host}:{p}{path}")),
                _ => EnvValue::PublishedUrl {
                    sidecar: s.name.clone(),
                    port,
                    path,
                },
            });
            env.push((format!("{stem}_HOST"), EnvValue::Literal(host)));
            env.push((format!("{stem}_PORT"), port_value));
            if let Some(url) = url {
                if let Interface::Mcp { name, .. } = &s.interface {
                    mcp_servers.push(McpServer {
                        name: name.clone(),
                        sidecar: s.name.clone(),
                        url: url.clone(),
                    });
                }
                env.push((format!("{stem}_URL"), url));
            }
        }
        if let Interface::Volume { volume, mountpoint } = &s.interface {
            volumes.push(format!("{volume}:{mountpoint}"));
        }
    }
    let mcp = (!mcp_servers.is_empty()).then(|| McpConfig {
        // A host process reads the file where the launcher writes it.
        target: match target {
            WorkloadTarget::HostProcess => MCP_CONFIG_HOST.to_owned(),
            _ => MCP_CONFIG_TARGET.to_owned(),
        },
        servers: mcp_servers,
    });
    if let Some(m) = &mcp {
        env.push((
            format!("{}_MCP_CONFIG", decl.env_prefix),
            EnvValue::Literal(m.target.clone()),
        ));
    }
    if let Some(w) = workload {
        for (k, v) in &w.env {
            env.push((k.clone(), EnvValue::Literal(v.clone())));
        }
    }

    let argv = match target {
        WorkloadTarget::HostProcess => argv.to_vec(),
        WorkloadTarget::Container | WorkloadTarget::HostNetwork => {
            let mut injection = Injection::default();
            if !sidecars.is_empty() {
                injection.network = Some(match namespace_of {
                    Some(ns) => {
                        let s = &decl.sidecars[ns];
                        let session_part = (s.lifecycle == Lifecycle::Session).then_some(session);
                        format!(
                            "container:{}",
                            container_name(&decl.project, ns, session_part)
                        )
                    }
                    None => network.clone(),
                });
                injection.labels = vec![
                    (LABEL_PROJECT.to_owned(), decl.project.clone()),
                    (LABEL_ROLE.to_owned(), Role::Workload.as_str().to_owned()),
                    (LABEL_SESSION.to_owned(), session.to_owned()),
                ];
            }
            if target == WorkloadTarget::HostNetwork {
                // Published ports are known only once the sidecars run: the engine's CLI
                // passes the values on from the environment tether gives it.
                injection.pass_env = env.iter().map(|(k, _)| k.clone()).collect();
            } else {
                injection.env = env.iter().map(|(k, v)| (k.clone(), v.display())).collect();
            }
            injection.volumes = volumes.clone();
            if let Some(m) = &mcp {
                injection
                    .volumes
                    .push(format!("{MCP_CONFIG_HOST}:{}:ro", m.target));
            }
            argv::inject(argv, &injection).map_err(PlanError::Argv)?
        }
    };
    Ok(Plan {
        project: decl.project.clone(),
        session: session.to_owned(),
        network,
        target,
        workload_network,
        pull: PullPolicy::default(),
        sidecars,
        env,
        volumes,
        mcp,
        argv,
    })
}

fn container_plan(
    decl: &Declaration,
    s: &Sidecar,
    name: String,
    session: &str,
    publish: Vec<u16>,
) -> ContainerPlan {
    let config_hash = config_hash(&decl.project, s, None);
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_PROJECT.to_owned(), decl.project.clone());
    labels.insert(LABEL_SIDECAR.to_owned(), s.name.clone());
    labels.insert(LABEL_LIFECYCLE.to_owned(), s.lifecycle.as_str().to_owned());
    labels.insert(LABEL_ROLE.to_owned(), Role::Sidecar.as_str().to_owned());
    labels.insert(LABEL_CONFIG_HASH.to_owned(), config_hash.clone());
    if s.lifecycle == Lifecycle::Session {
        labels.insert(LABEL_SESSION.to_owned(), session.to_owned());
    }
    let mut mounts: Vec<MountPlan> = s
        .mounts
        .iter()
        .map(|m| match m {
            Mount::Workspace { target, read_only } => MountPlan::Bind {
                source: decl.root.clone(),
                target: target.clone(),
                read_only: *read_only,
            },
            Mount::DockerSocket { read_only } => MountPlan::Bind {
                source: tether_spec::model::DOCKER_SOCKET.to_owned(),
                target: tether_spec::model::DOCKER_SOCKET.to_owned(),
                read_only: *read_only,
            },
            Mount::Volume {
                name,
                target,
                read_only,
            } => MountPlan::Volume {
                name: name.clone(),
                target: target.clone(),
                read_only: *read_only,
            },
        })
        .collect();
    if let Interface::Volume { volume, mountpoint } = &s.interface {
        mounts.push(MountPlan::Volume {
            name: volume.clone(),
            target: mountpoint.clone(),
            read_only: false,
        });
    }
    if !s.secrets.is_empty() {
        mounts.push(MountPlan::Tmpfs {
            target: SECRETS_DIR.to_owned(),
        });
    }
    let readiness = ReadinessPlan::resolve(s);
    let healthcheck = match &s.readiness.probe {
        Probe::Healthcheck { command: Some(c) } => Some(HealthcheckPlan {
            test: std::iter::once("CMD".to_owned())
                .chain(c.iter().cloned())
                .collect(),
            interval: s.readiness.interval,
            timeout: s.readiness.interval.max(Duration::from_secs(1)),
            // Failures while it starts up do not count (the engine's start period ends at the
            // first success): readiness has its own timeout; afterwards, 3 in a row mean
            // unhealthy.
            start_period: Some(Duration(
                s.readiness.timeout.0 + s.readiness.start_period.map(|d| d.0).unwrap_or_default(),
            )),
            retries: 3,
        }),
        _ => None,
    };
    ContainerPlan {
        sidecar: s.name.clone(),
        name,
        image: s.image.clone(),
        lifecycle: s.lifecycle,
        entrypoint: s.entrypoint.clone(),
        command: s.command.clone(),
        env: s.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        labels,
        network: network_name(&decl.project),
        aliases: s.all_aliases().into_iter().map(str::to_owned).collect(),
        extra_networks: s.networks.clone(),
        mounts,
        secrets: s.secrets.clone(),
        publish,
        memory: s.resources.memory,
        nano_cpus: s.resources.cpus.map(|c| (c * 1e9).round() as i64),
        gpus: s.resources.gpus.clone(),
        healthcheck,
        readiness,
        config_hash,
    }
}

impl Plan {
    /// The plan for people, as `tether plan` prints it.
    pub fn render_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "project {}, network {}, session {}",
            self.project, self.network, self.session
        );
        let _ = writeln!(
            out,
            "workload: {}",
            match self.target {
                WorkloadTarget::Container => match &self.workload_network {
                    Some(n) =>
                        format!("a container on its own network {n}, which the sidecars join"),
                    None => "a container".to_owned(),
                },
                WorkloadTarget::HostNetwork =>
                    "a container on the host's network (sidecar ports published on 127.0.0.1)"
                        .to_owned(),
                WorkloadTarget::HostProcess =>
                    "a process on this host (sidecar ports published on 127.0.0.1)".to_owned(),
            }
        );
        if self.sidecars.is_empty() {
            let _ = writeln!(out, "\nno sidecars: the workload runs exactly as given");
        }
        for c in &self.sidecars {
            let _ = writeln!(out, "\nsidecar {} ({})", c.sidecar, c.lifecycle.as_str());
            let action = match c.lifecycle {
                Lifecycle::Shared => format!(
                    "reuse if running with config hash {}, start if stopped and matching, else create",
                    &c.config_hash[..12]
                ),
                Lifecycle::Session => "create for this session, remove when it ends".to_owned(),
            };
            let _ = writeln!(out, "  container  {}", c.name);
            let _ = writeln!(out, "  action     {action}");
            let _ = writeln!(out, "  image      {}", c.image);
            if !c.aliases.is_empty() {
                let _ = writeln!(out, "  aliases    {}", c.aliases.join(", "));
            }
            if !c.publish.is_empty() {
                let ports: Vec<String> = c
                    .publish
                    .iter()
                    .map(|p| format!("127.0.0.1:<free>->{p}"))
                    .collect();
                let _ = writeln!(out, "  publish    {}", ports.join(", "));
            }
            for m in &c.mounts {
                let m = match m {
                    MountPlan::Bind {
                        source,
                        target,
                        read_only,
                    } => {
                        format!(
                            "{source} -> {target}{}",
                            if *read_only { " (ro)" } else { "" }
                        )
                    }
                    MountPlan::Volume {
                        name,
                        target,
                        read_only,
                    } => {
                        format!(
                            "volume {name} -> {target}{}",
                            if *read_only { " (ro)" } else { "" }
                        )
                    }
                    MountPlan::Tmpfs { target } => format!("tmpfs -> {target}"),
                };
                let _ = writeln!(out, "  mount      {m}");
            }
            for s in &c.secrets {
                let _ = writeln!(out, "  secret     {SECRETS_DIR}/{} from {}", s.name, s.from);
            }
            let _ = writeln!(out, "  readiness  {}", c.readiness.summary());
        }
        if !self.env.is_empty() {
            let _ = writeln!(out, "\nworkload environment");
            for (k, v) in &self.env {
                let _ = writeln!(out, "  {k}={}", v.display());
            }
        }
        if !self.volumes.is_empty() {
            let _ = writeln!(out, "\nworkload volumes");
            for v in &self.volumes {
                let _ = writeln!(out, "  {v}");
            }
        }
        if let Some(m) = &self.mcp {
            let _ = writeln!(out, "\nMCP servers ({})", m.target);
            for s in &m.servers {
                let _ = writeln!(out, "  {} -> {}", s.name, s.url.display());
            }
        }
        let _ = writeln!(out, "\nworkload command");
        let _ = writeln!(out, "  {}", shell_words(&self.argv));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_modes_read_and_serialise_as_the_declarations_words() {
        let all = [
            (ReadinessMode::Tcp, "tcp"),
            (ReadinessMode::Http, "http"),
            (ReadinessMode::Exec, "exec"),
            (ReadinessMode::Healthcheck, "healthcheck"),
            (ReadinessMode::Log, "log"),
            (ReadinessMode::None, "none"),
        ];
        for (mode, word) in all {
            assert_eq!(mode.as_str(), word);
            assert_eq!(mode.to_string(), word);
            assert_eq!(serde_json::to_value(mode).unwrap(), word);
        }
        assert_eq!(
            ReadinessMode::of(&Probe::Http { path: "/".into() }),
            ReadinessMode::Http
        );
    }

    #[test]
    fn roles_and_lifecycles_are_read_back_from_labels() {
        for role in [Role::Sidecar, Role::Workload, Role::Probe, Role::Network] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            let labels = BTreeMap::from([(LABEL_ROLE.to_owned(), role.to_string())]);
            assert_eq!(Role::of(&labels), Some(role));
        }
        assert_eq!(Role::parse("Sidecar"), None);
        assert_eq!(Role::of(&BTreeMap::new()), None);
        let labels = |v: &str| BTreeMap::from([(LABEL_LIFECYCLE.to_owned(), v.to_owned())]);
        assert_eq!(lifecycle_of(&labels("session")), Some(Lifecycle::Session));
        assert_eq!(lifecycle_of(&labels("shared")), Some(Lifecycle::Shared));
        assert_eq!(lifecycle_of(&labels("other")), None);
    }
}
