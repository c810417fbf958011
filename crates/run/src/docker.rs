//! The Docker Engine behind [`Engine`], through bollard. `DOCKER_HOST` is honoured, and the API
//! version is negotiated down to what the engine speaks (Docker 20.10 speaks 1.41); Podman's
//! Docker-compatible socket works the same way.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::exec::StartExecResults;
use bollard::models::{
    ContainerCreateBody, DeviceRequest, EndpointSettings, ExecConfig, HealthConfig, HostConfig,
    Mount, MountTmpfsOptions, MountTypeEnum, NetworkConnectRequest, NetworkCreateRequest,
    NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, InspectNetworkOptions,
    ListContainersOptions, ListNetworksOptions, LogsOptions, RemoveContainerOptions,
    StartContainerOptions, StopContainerOptions, UploadToContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use tether_plan::{ContainerPlan, LABEL_PROJECT, LABEL_ROLE, MountPlan};

use crate::launch::LABEL_OWNER;

use crate::engine::{Container, Engine, EngineError, FileCopy, Result};

#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    endpoint: String,
    reach: std::sync::Arc<tokio::sync::OnceCell<Option<Reach>>>,
    /// Where the reach is remembered for the next run.
    memo: Option<std::path::PathBuf>,
    /// For `ssh://`: the ssh process forwarding the engine's socket, while tether runs.
    tunnel: Option<std::sync::Arc<Tunnel>>,
}

/// `ssh -L` from a socket of this run's own to the engine's socket on the other machine, run
/// with the user's own ssh configuration and keys (`TETHER_SSH_COMMAND` replaces `ssh`, as
/// `GIT_SSH_COMMAND` does for git). Gone, with its socket, when tether is.
struct Tunnel {
    local: std::path::PathBuf,
    _ssh: tokio::process::Child,
}

impl Tunnel {
    /// `ssh://[USER@]HOST[:PORT][/SOCKET]`, the socket `/var/run/docker.sock` by default (Podman's
    /// URLs name theirs).
    async fn open(endpoint: &str) -> Result<Tunnel> {
        let failed = |reason: String| EngineError::Unreachable {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let rest = endpoint.strip_prefix("ssh://").unwrap_or(endpoint);
        let (authority, remote) = match rest.split_once('/') {
            Some((a, path)) if !path.is_empty() => (a, format!("/{path}")),
            Some((a, _)) => (a, "/var/run/docker.sock".to_owned()),
            None => (rest, "/var/run/docker.sock".to_owned()),
        };
        let (destination, port) = match authority.rsplit_once(':') {
            Some((d, p)) if p.parse::<u16>().is_ok() => (d, Some(p)),
            _ => (authority, None),
        };
        let base = crate::launch::private_base().map_err(failed)?;
        let local = base.join(format!("ssh-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&local);
        let command = std::env::var("TETHER_SSH_COMMAND").unwrap_or_else(|_| "ssh".into());
        let mut args = vec![
            "-nNT".to_owned(),
            "-o".into(),
            "ExitOnForwardFailure=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-L".into(),
            format!("{}:{remote}", local.display()),
        ];
        if let Some(p) = port {
            args.extend(["-p".into(), p.to_owned()]);
        }
        args.extend(["--".into(), destination.to_owned()]);
        let mut ssh = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec {command} \"$@\""))
            .arg("ssh")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("cannot run ssh: {e}")))?;
        let ready = async {
            loop {
                if let Ok(Some(_)) = ssh.try_wait() {
                    return false;
                }
                if local.exists() && ping_version(&local.display().to_string()).await.is_some() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        match tokio::time::timeout(Duration::from_secs(20), ready).await {
            Ok(true) => Ok(Tunnel { local, _ssh: ssh }),
            Ok(false) => {
                let mut said = String::new();
                if let Some(mut err) = ssh.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = err.read_to_string(&mut said).await;
                }
                let last = said
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty() && !l.starts_with("Warning: Permanently added"))
                    .unwrap_or("ssh ended")
                    .trim()
                    .to_owned();
                Err(failed(format!("ssh: {last}")))
            }
            Err(_) => Err(failed(
                "ssh forwarded no engine socket within 20 s".to_owned(),
            )),
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.local);
    }
}

/// What this host shares with the engine, found out once, when first needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reach {
    /// A file on this host can be bind-mounted into a container.
    files_shared: bool,
    /// A container's address on a bridge network can be dialled from this host.
    routable: bool,
    /// A port the engine publishes on 127.0.0.1 is reachable on this host's 127.0.0.1 (true
    /// on this machine, rootless or not, and through Docker Desktop's forwarding).
    ports_here: bool,
    /// The engine runs programs of this host's architecture, so the probe runs there.
    probe_runs: bool,
}

impl Reach {
    const ELSEWHERE: Reach = Reach {
        files_shared: false,
        routable: false,
        ports_here: false,
        probe_runs: true,
    };
    /// What tether assumes of an engine that would not say.
    const ASSUMED: Reach = Reach {
        files_shared: true,
        routable: true,
        ports_here: true,
        probe_runs: true,
    };
}

/// tether's readiness probe (probe/probe.c, built by build.rs): a static program with no libc,
/// copied into a helper container that shares a sidecar's network namespace. Empty where it
/// could not be built.
const PROBE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe"));
/// Where the probe is put in the helper container.
const PROBE_PATH: &str = "/.tether-probe";

/// An image reference as the engine's pull takes it: the repository, and the tag or digest
/// (`latest` when it names neither; an empty tag would pull every tag).
fn split_reference(image: &str) -> (&str, &str) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo, digest);
    }
    let last = image.rfind('/').map_or(0, |i| i + 1);
    match image[last..].rfind(':') {
        Some(i) => (&image[..last + i], &image[last + i + 1..]),
        None => (image, "latest"),
    }
}

/// `dir/NAME` for each file, with this mode, as a tar archive.
fn tar_of(dir: &str, files: &[FileCopy], mode: u32) -> std::io::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    let dir = dir.trim_matches('/');
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        let path = if dir.is_empty() {
            name.clone()
        } else {
            format!("{dir}/{name}")
        };
        archive.append_data(&mut header, path, bytes.as_slice())?;
    }
    archive.into_inner()
}

/// Where the reach of the engine behind this socket is remembered: a file named after the
/// socket's identity (a restarted engine makes a new socket, and is asked again). Only for
/// sockets: a TCP endpoint may lead anywhere from one run to the next.
fn reach_memo(endpoint: &str) -> Option<std::path::PathBuf> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let path = endpoint.strip_prefix("unix://")?;
    let m = std::fs::metadata(path).ok()?;
    let mut h = std::hash::DefaultHasher::new();
    let host = crate::launch::hostname();
    (path, m.dev(), m.ino(), m.ctime(), m.ctime_nsec(), host).hash(&mut h);
    let base = crate::launch::private_base().ok()?;
    Some(base.join(format!("engine-{:016x}", h.finish())))
}

/// The memo is four flags, `1` or `0`, in the order of [`Reach`]'s fields.
fn recall(memo: &std::path::Path) -> Option<Reach> {
    let text = std::fs::read_to_string(memo).ok()?;
    let flags: Vec<bool> = text
        .trim()
        .chars()
        .map(|c| match c {
            '1' => Some(true),
            '0' => Some(false),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let [files_shared, routable, ports_here, probe_runs] = flags[..] else {
        return None;
    };
    Some(Reach {
        files_shared,
        routable,
        ports_here,
        probe_runs,
    })
}

fn remember(memo: &std::path::Path, r: Reach) {
    let flags: String = [r.files_shared, r.routable, r.ports_here, r.probe_runs]
        .iter()
        .map(|&f| if f { '1' } else { '0' })
        .collect();
    let _ = std::fs::write(memo, flags);
}

/// An engine shares this host's files and routes its containers' addresses when it runs on this
/// host's own kernel, as root, outside Docker Desktop's VM. `TETHER_ENGINE_REMOTE=1` says it
/// does neither (an engine in a VM that looks like this host).
/// `None` when the engine would not say (then tether takes it for local, and asks again next
/// time); otherwise the answer is remembered in `memo`.
async fn reach_of(docker: Docker, memo: Option<std::path::PathBuf>) -> Option<Reach> {
    if std::env::var("TETHER_ENGINE_REMOTE").as_deref() == Ok("1") {
        return Some(Reach::ELSEWHERE);
    }
    let info = match docker.info().await {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!("cannot read the engine's info, taking it for local: {e}");
            return None;
        }
    };
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let host = crate::launch::hostname();
    let desktop = info
        .operating_system
        .as_deref()
        .unwrap_or_default()
        .contains("Docker Desktop");
    let same_machine = info.kernel_version.as_deref() == Some(kernel.as_str())
        && info.name.as_deref() == Some(host.as_str())
        && !desktop;
    let rootless = info
        .security_options
        .unwrap_or_default()
        .iter()
        .any(|o| o.contains("rootless"));
    // Docker says x86_64 and aarch64; Podman says amd64 and arm64.
    let arch = match info.architecture.as_deref().unwrap_or_default() {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        other => other,
    };
    let reach = Reach {
        files_shared: same_machine,
        routable: same_machine && !rootless,
        ports_here: same_machine || desktop,
        probe_runs: arch.is_empty() || arch == std::env::consts::ARCH,
    };
    tracing::debug!(?reach, "the engine's reach");
    if let Some(memo) = memo {
        remember(&memo, reach);
    }
    Some(reach)
}

/// The API version to speak with the engine behind this socket: the lower of its own (the
/// `Api-Version` header of `/_ping`) and bollard's.
async fn ping_version(path: &str) -> Option<bollard::ClientVersion> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(path).await.ok()?;
        stream
            .write_all(b"GET /_ping HTTP/1.0\r\nHost: engine\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        Some(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()??;
    let text = String::from_utf8_lossy(&answer);
    let (head, _) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.") || head.get(9..12) != Some("200") {
        return None;
    }
    let version = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("api-version")
            .then(|| value.trim().to_owned())
    })?;
    let (major, minor) = version.split_once('.')?;
    let theirs = (major.parse::<usize>().ok()?, minor.parse::<usize>().ok()?);
    let ours = bollard::API_DEFAULT_VERSION;
    let (major_version, minor_version) = theirs.min((ours.major_version, ours.minor_version));
    Some(bollard::ClientVersion {
        major_version,
        minor_version,
    })
}

impl DockerEngine {
    /// Connects as the `docker` CLI would (`DOCKER_HOST`, else the local socket) and agrees on
    /// an API version with the engine.
    pub async fn connect() -> Result<DockerEngine> {
        let endpoint =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let unreachable = |reason: String| EngineError::Unreachable {
            endpoint: endpoint.clone(),
            reason,
        };
        let scheme = endpoint.split_once("://").map_or("", |(s, _)| s);
        if !matches!(scheme, "unix" | "tcp" | "http" | "ssh")
            || std::env::var_os("DOCKER_TLS_VERIFY").is_some()
        {
            let host = endpoint
                .split_once("://")
                .map_or(endpoint.as_str(), |(_, h)| h);
            return Err(EngineError::Unsupported {
                endpoint: endpoint.clone(),
                hint: format!(
                    "reach the engine over ssh instead: DOCKER_HOST=ssh://{}",
                    host.split(['/', ':']).next().unwrap_or(host)
                ),
            });
        }
        // ssh://: the engine's socket, forwarded to one of this run's own by ssh.
        let tunnel = match scheme {
            "ssh" => Some(std::sync::Arc::new(Tunnel::open(&endpoint).await?)),
            _ => None,
        };
        let socket = match &tunnel {
            Some(t) => format!("unix://{}", t.local.display()),
            None => endpoint.clone(),
        };
        // A socket: the engine's API version from the headers of one cheap /_ping, as the
        // docker CLI does; otherwise (or if that fails) bollard's negotiation through /version.
        let pinged = match socket.strip_prefix("unix://") {
            Some(path) => ping_version(path).await,
            None => None,
        };
        let docker = match (pinged, scheme) {
            (Some(version), _) => Docker::connect_with_unix(&socket, 120, &version)
                .map_err(|e| unreachable(e.to_string()))?,
            (None, "tcp" | "http") => Docker::connect_with_defaults()
                .map_err(|e| unreachable(e.to_string()))?
                .negotiate_version()
                .await
                .map_err(|e| unreachable(plain(&e)))?,
            (None, _) => Docker::connect_with_unix(&socket, 120, bollard::API_DEFAULT_VERSION)
                .map_err(|e| unreachable(e.to_string()))?
                .negotiate_version()
                .await
                .map_err(|e| unreachable(plain(&e)))?,
        };
        // Known from an earlier run, or asked now, in the background, so that the answer is
        // there when the first sidecar needs it.
        let reach = std::sync::Arc::new(tokio::sync::OnceCell::new());
        let forced = std::env::var("TETHER_ENGINE_REMOTE").as_deref() == Ok("1");
        // (A tunnel's socket is this run's own: nothing to remember it by.)
        let memo = reach_memo(&endpoint).filter(|_| !forced && tunnel.is_none());
        match memo.as_deref().and_then(recall) {
            Some(known) => {
                let _ = reach.set(Some(known));
            }
            None => {
                let (cell, client, memo) = (reach.clone(), docker.clone(), memo.clone());
                tokio::spawn(async move {
                    cell.get_or_init(|| reach_of(client, memo)).await;
                });
            }
        }
        Ok(DockerEngine {
            docker,
            endpoint,
            reach,
            memo,
            tunnel,
        })
    }

    /// What this host shares with the engine.
    async fn reach(&self) -> Reach {
        let (docker, memo) = (self.docker.clone(), self.memo.clone());
        self.reach
            .get_or_init(|| reach_of(docker, memo))
            .await
            .unwrap_or(Reach::ASSUMED)
    }

    /// Copies files into a container under `dir`, with this mode.
    async fn copy_in(&self, id: &str, dir: &str, files: &[FileCopy], mode: u32) -> Result<()> {
        let what = format!("copy files into {id}");
        let archive = tar_of(dir, files, mode).map_err(|e| EngineError::Refused {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        // Unpacked at the root, so that the archive's paths make `dir` when it is missing.
        let options = UploadToContainerOptions {
            path: "/".into(),
            ..Default::default()
        };
        self.docker
            .upload_to_container(id, Some(options), bollard::body_full(archive.into()))
            .await
            .map_err(|e| self.error(&what, e))
    }

    /// Runs the probe once in a helper container that joins the sidecar's network namespace:
    /// made from the sidecar's own image (already on the engine), the probe copied in. The
    /// helper's life runs in a task of its own, so that it is removed even when the attempt
    /// is given up; one a killed run leaves is removed by the next run (its owner is gone).
    async fn probe_inside(
        &self,
        reach: Reach,
        c: &Container,
        port: u16,
        path: Option<&str>,
    ) -> Result<bool> {
        if PROBE.is_empty() || !reach.probe_runs {
            return Err(EngineError::Unable {
                what: format!("check {}:{port} from inside its network namespace", c.name),
                why: if PROBE.is_empty() {
                    "this tether was built without its probe (no C compiler for its target)"
                } else {
                    "the engine runs another architecture than this tether"
                }
                .into(),
            });
        }
        // One helper keeps trying for about 2 s, every 100 ms: a sidecar that becomes ready
        // meanwhile is seen within 100 ms, without a container per try.
        let mut cmd = vec![
            if path.is_some() { "http" } else { "tcp" }.to_owned(),
            port.to_string(),
        ];
        cmd.extend(path.map(str::to_owned));
        cmd.extend(["20".to_owned(), "100".to_owned()]);
        let mut labels = HashMap::from([
            (LABEL_ROLE.to_owned(), "probe".to_owned()),
            (LABEL_OWNER.to_owned(), crate::launch::owner_id()),
        ]);
        if let Some(project) = c.labels.get(LABEL_PROJECT) {
            labels.insert(LABEL_PROJECT.to_owned(), project.clone());
        }
        let body = ContainerCreateBody {
            image: Some(c.image.clone()),
            entrypoint: Some(vec![PROBE_PATH.to_owned()]),
            cmd: Some(cmd),
            labels: Some(labels),
            user: Some("0".into()),
            host_config: Some(HostConfig {
                network_mode: Some(format!("container:{}", c.id)),
                ..Default::default()
            }),
            ..Default::default()
        };
        tracing::debug!(
            "probing {}:{port} from inside its network namespace",
            c.name
        );
        let what = format!("probe {} from inside", c.name);
        let engine = self.clone();
        let helper = tokio::spawn(async move {
            let id = engine
                .docker
                .create_container(None::<CreateContainerOptions>, body)
                .await
                .map_err(|e| engine.error(&what, e))?
                .id;
            let code = async {
                let probe = [(PROBE_PATH[1..].to_owned(), PROBE.to_vec())];
                engine.copy_in(&id, "/", &probe, 0o755).await?;
                engine
                    .docker
                    .start_container(&id, None::<StartContainerOptions>)
                    .await
                    .map_err(|e| engine.error(&what, e))?;
                let mut wait = engine
                    .docker
                    .wait_container(&id, None::<WaitContainerOptions>);
                Ok::<_, EngineError>(
                    match tokio::time::timeout(Duration::from_secs(5), wait.next()).await {
                        Ok(Some(Ok(r))) => r.status_code,
                        Ok(Some(Err(BollardError::DockerContainerWaitError { code, .. }))) => code,
                        _ => -1,
                    },
                )
            }
            .await;
            // With the anonymous volumes the sidecar's image may declare.
            let options = RemoveContainerOptions {
                force: true,
                v: true,
                link: false,
            };
            let _ = engine.docker.remove_container(&id, Some(options)).await;
            code
        });
        match helper.await {
            Ok(code) => Ok(code? == 0),
            Err(e) => Err(EngineError::Unable {
                what: format!("check {}:{port} from inside its network namespace", c.name),
                why: e.to_string(),
            }),
        }
    }

    fn error(&self, what: &str, e: BollardError) -> EngineError {
        match e {
            BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            } => EngineError::NotFound {
                what: format!("{what}: {message}"),
            },
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => EngineError::Refused {
                what: what.to_owned(),
                reason: format!("{message} (HTTP {status_code})"),
            },
            other => EngineError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: plain(&other),
            },
        }
    }
}

/// The innermost cause, which is what a user can act on.
fn plain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl DockerEngine {
    /// Copies a container's output to ours, stdout to stdout and stderr to stderr; with
    /// `follow`, until the container stops.
    pub async fn print_logs(&self, id: &str, follow: bool, tail: Option<usize>) -> Result<()> {
        use std::io::Write;
        let options = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: tail.map_or_else(|| "all".to_owned(), |t| t.to_string()),
            ..Default::default()
        };
        let mut stream = self.docker.logs(id, Some(options));
        while let Some(item) = stream.next().await {
            match item {
                Ok(bollard::container::LogOutput::StdErr { message }) => {
                    let _ = std::io::stderr().write_all(&message);
                }
                Ok(other) => {
                    let _ = std::io::stdout().write_all(&other.into_bytes());
                    let _ = std::io::stdout().flush();
                }
                Err(e) => return Err(self.error(&format!("read the logs of {id}"), e)),
            }
        }
        Ok(())
    }
}

impl Engine for DockerEngine {
    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    async fn ping(&self) -> Result<String> {
        self.docker
            .ping()
            .await
            .map_err(|e| self.error("answer a ping", e))?;
        Ok(self.docker.client_version().to_string())
    }

    async fn image_id(&self, image: &str) -> Result<String> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(i.id.unwrap_or_default()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(EngineError::NoImage {
                image: image.to_owned(),
            }),
            Err(e) => Err(self.error(&format!("inspect image {image}"), e)),
        }
    }

    async fn pull(&self, image: &str, progress: &(dyn Fn(u8) + Sync)) -> Result<()> {
        let (from, tag) = split_reference(image);
        let options = CreateImageOptions {
            from_image: Some(from.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let failed = |reason: String| EngineError::PullFailed {
            image: image.to_owned(),
            reason,
        };
        // The engine pulls with what the docker CLI would send: credentials from its config.
        let credentials = crate::credentials::for_image(image).await;
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        // Layer → (bytes done, bytes in all), as the engine reports them.
        let mut layers: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut shown = None;
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(BollardError::DockerStreamError { error }) => return Err(failed(error)),
                Err(BollardError::DockerResponseServerError { message, .. }) => {
                    return Err(failed(message));
                }
                Err(e) => return Err(self.error(&format!("pull {image}"), e)),
            };
            if let Some(error) = info.error_detail.and_then(|d| d.message).or(info.error) {
                return Err(failed(error));
            }
            let (Some(layer), Some(status)) = (info.id, info.status) else {
                continue;
            };
            let detail = info.progress_detail.unwrap_or_default();
            let entry = layers.entry(layer).or_insert((0, 0));
            match status.as_str() {
                "Downloading" => {
                    entry.1 = detail.total.unwrap_or(entry.1);
                    entry.0 = detail.current.unwrap_or(entry.0);
                }
                "Download complete" | "Pull complete" | "Already exists" => entry.0 = entry.1,
                _ => continue,
            }
            // Wide sums: an engine's byte counts are not to be trusted not to overflow.
            let (done, all) = layers.values().fold((0i128, 0i128), |(d, a), (ld, la)| {
                (d + i128::from(*ld), a + i128::from(*la))
            });
            if all > 0 {
                let percent = u8::try_from((done * 100 / all).clamp(0, 100)).unwrap_or(100);
                if shown != Some(percent) {
                    shown = Some(percent);
                    progress(percent);
                }
            }
        }
        Ok(())
    }

    async fn ensure_network(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        let exists = self
            .docker
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await;
        match exists {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(self.error(&format!("inspect network {name}"), e)),
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => {}
            // Newer engines refuse a second network of one name: another run made it first.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => return Ok(()),
            Err(e) => return Err(self.error(&format!("create network {name}"), e)),
        }
        // Older engines allow two networks of one name; runs that raced here all keep the one
        // with the smallest ID and remove the others, so every container joins the same one.
        let filters = HashMap::from([("name".to_owned(), vec![name.to_owned()])]);
        let list = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| self.error(&format!("list networks named {name}"), e))?;
        let mut same: Vec<String> = list
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| n.id)
            .collect();
        same.sort();
        for extra in same.iter().skip(1) {
            let _ = self.docker.remove_network(extra).await;
        }
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<()> {
        match self.docker.remove_network(name).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.error(&format!("remove network {name}"), e)),
        }
    }

    async fn connect(&self, id: &str, network: &str, aliases: &[String]) -> Result<()> {
        let request = NetworkConnectRequest {
            container: Some(id.to_owned()),
            endpoint_config: Some(EndpointSettings {
                aliases: (!aliases.is_empty()).then(|| aliases.to_vec()),
                ..Default::default()
            }),
        };
        match self.docker.connect_network(network, request).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            }) if message.contains("network") => Err(EngineError::NotFound {
                what: format!("the network `{network}`"),
            }),
            // Already on it (another run connected it first).
            Err(BollardError::DockerResponseServerError {
                status_code: 403 | 409,
                message,
            }) if message.contains("already exists") => Ok(()),
            Err(e) => Err(self.error(&format!("connect {id} to network {network}"), e)),
        }
    }

    async fn inspect(&self, name_or_id: &str) -> Result<Option<Container>> {
        let c = match self
            .docker
            .inspect_container(name_or_id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(self.error(&format!("inspect container {name_or_id}"), e)),
        };
        let text = |v: Option<serde_json::Value>| {
            v.and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let state = c.state.unwrap_or_default();
        let config = c.config.unwrap_or_default();
        let net = c.network_settings.unwrap_or_default();
        let mut published = BTreeMap::new();
        for (port, bindings) in net.ports.unwrap_or_default() {
            let Some(container_port) = port
                .strip_suffix("/tcp")
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            if let Some(host_port) = bindings
                .unwrap_or_default()
                .iter()
                .filter_map(|b| b.host_port.as_deref()?.parse::<u16>().ok())
                .next()
            {
                published.insert(container_port, host_port);
            }
        }
        Ok(Some(Container {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            image: c.image.clone().unwrap_or_default(),
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            state: text(
                state
                    .status
                    .map(|s| serde_json::to_value(s).unwrap_or_default()),
            ),
            exit_code: state.exit_code,
            health: state
                .health
                .and_then(|h| h.status)
                .map(|s| text(Some(serde_json::to_value(s).unwrap_or_default())))
                .filter(|s| !s.is_empty() && s != "none"),
            addresses: net
                .networks
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(n, e)| e.ip_address.filter(|ip| !ip.is_empty()).map(|ip| (n, ip)))
                .collect(),
            published,
            created: c.created.map(|d| d.to_string()).unwrap_or_default(),
        }))
    }

    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<Container>> {
        let filters = HashMap::from([(
            "label".to_owned(),
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        )]);
        let found = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| self.error("list containers", e))?;
        let inspected = futures_util::future::try_join_all(
            found
                .iter()
                .filter_map(|c| c.id.as_deref())
                .map(|id| self.inspect(id)),
        )
        .await?;
        // One removed meanwhile is simply not there any more.
        let mut out: Vec<Container> = inspected.into_iter().flatten().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn create(&self, spec: &ContainerPlan) -> Result<String> {
        let mounts = spec
            .mounts
            .iter()
            .map(|m| match m {
                MountPlan::Bind {
                    source: from,
                    target,
                    read_only,
                }
                | MountPlan::Volume {
                    name: from,
                    target,
                    read_only,
                } => Mount {
                    typ: Some(if matches!(m, MountPlan::Bind { .. }) {
                        MountTypeEnum::BIND
                    } else {
                        MountTypeEnum::VOLUME
                    }),
                    source: Some(from.clone()),
                    target: Some(target.clone()),
                    read_only: Some(*read_only),
                    ..Default::default()
                },
                MountPlan::Tmpfs { target } => Mount {
                    typ: Some(MountTypeEnum::TMPFS),
                    target: Some(target.clone()),
                    tmpfs_options: Some(MountTmpfsOptions {
                        mode: Some(0o755),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            })
            .collect();
        let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
            .publish
            .iter()
            .map(|p| {
                (
                    format!("{p}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                )
            })
            .collect();
        let exposed: HashMap<String, HashMap<(), ()>> = spec
            .publish
            .iter()
            .map(|p| (format!("{p}/tcp"), HashMap::new()))
            .collect();
        let healthcheck = spec.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: Some(nanos(h.interval.0)),
            timeout: Some(nanos(h.timeout.0)),
            start_period: h.start_period.map(|d| nanos(d.0)),
            retries: Some(i64::from(h.retries)),
            ..Default::default()
        });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.command.clone(),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            healthcheck,
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                memory: spec.memory.and_then(|m| i64::try_from(m).ok()),
                nano_cpus: spec.nano_cpus,
                device_requests: spec.gpus.as_ref().map(|g| {
                    use tether_spec::model::Gpus;
                    let (count, device_ids) = match g {
                        Gpus::All => (Some(-1), None),
                        Gpus::Count(n) => (Some(i64::from(*n)), None),
                        Gpus::Devices(ids) => (None, Some(ids.clone())),
                    };
                    vec![DeviceRequest {
                        count,
                        device_ids,
                        capabilities: Some(vec![vec!["gpu".into()]]),
                        ..Default::default()
                    }]
                }),
                network_mode: Some(spec.network.clone()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    spec.network.clone(),
                    EndpointSettings {
                        aliases: Some(spec.aliases.clone()),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        match self.docker.create_container(Some(options), body).await {
            Ok(r) => {
                for extra in &spec.extra_networks {
                    if let Err(e) = self.connect(&r.id, extra, &[]).await {
                        let _ = self.remove(&r.id).await;
                        return Err(e);
                    }
                }
                Ok(r.id)
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Err(EngineError::NameTaken {
                name: spec.name.clone(),
            }),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(EngineError::NoImage {
                image: spec.image.clone(),
            }),
            Err(e) => Err(self.error(&format!("create container {}", spec.name), e)),
        }
    }

    async fn start(&self, id: &str) -> Result<()> {
        match self
            .docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
        {
            // 304: already running.
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.error(&format!("start container {id}"), e)),
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let options = StopContainerOptions {
            t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)),
            signal: None,
        };
        match self.docker.stop_container(id, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(e) => Err(self.error(&format!("stop container {id}"), e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let options = RemoveContainerOptions {
            force: true,
            v: false,
            link: false,
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // Already being removed by another run.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(self.error(&format!("remove container {id}"), e)),
        }
    }

    async fn exec(&self, id: &str, command: &[String]) -> Result<(i64, String)> {
        let created = self
            .docker
            .create_exec(
                id,
                ExecConfig {
                    cmd: Some(command.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.error(&format!("run a command in {id}"), e))?;
        let mut text = String::new();
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| self.error(&format!("run a command in {id}"), e))?
        {
            while let Some(Ok(chunk)) = output.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        }
        let code = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| self.error(&format!("inspect a command in {id}"), e))?
            .exit_code
            .unwrap_or(-1);
        Ok((code, text))
    }

    async fn logs(&self, id: &str, tail: usize) -> Result<Vec<String>> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: if tail == 0 {
                "all".into()
            } else {
                tail.to_string()
            },
            ..Default::default()
        };
        let mut stream = self.docker.logs(id, Some(options));
        let mut text = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => text.push_str(&String::from_utf8_lossy(&chunk.into_bytes())),
                Err(e) => return Err(self.error(&format!("read the logs of {id}"), e)),
            }
        }
        Ok(text.lines().map(str::to_owned).collect())
    }

    /// On an engine whose container addresses this host can route to (a rootful engine on this
    /// Linux host), dialled from here; otherwise from inside the container's network namespace,
    /// by a helper container that runs tether's probe there.
    async fn reachable(
        &self,
        container: &Container,
        network: &str,
        port: u16,
        path: Option<&str>,
    ) -> Result<bool> {
        let reach = self.reach().await;
        if !reach.routable {
            return self.probe_inside(reach, container, port, path).await;
        }
        let Some(ip) = container.addresses.get(network) else {
            return Ok(false);
        };
        let Some(path) = path else {
            return Ok(matches!(
                tokio::time::timeout(Duration::from_secs(2), tether_probe::tcp(ip, port)).await,
                Ok(Ok(()))
            ));
        };
        let url = format!("http://{ip}:{port}{path}");
        Ok(matches!(
            tokio::time::timeout(Duration::from_secs(5), tether_probe::http(&url)).await,
            Ok(Ok(()))
        ))
    }

    async fn shares_files(&self) -> bool {
        self.reach().await.files_shared
    }

    fn workload_docker_host(&self) -> Option<String> {
        self.tunnel
            .as_ref()
            .map(|t| format!("unix://{}", t.local.display()))
    }

    async fn ports_here(&self) -> bool {
        self.reach().await.ports_here
    }

    async fn upload(&self, id: &str, dir: &str, files: &[FileCopy]) -> Result<()> {
        self.copy_in(id, dir, files, 0o444).await
    }
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn a_reference_splits_into_what_the_pull_takes() {
        assert_eq!(split_reference("redis"), ("redis", "latest"));
        assert_eq!(split_reference("redis:7"), ("redis", "7"));
        assert_eq!(
            split_reference("127.0.0.1:5000/team/tool"),
            ("127.0.0.1:5000/team/tool", "latest")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/team/tool:1.2"),
            ("127.0.0.1:5000/team/tool", "1.2")
        );
        assert_eq!(
            split_reference("ghcr.io/a/b@sha256:0123"),
            ("ghcr.io/a/b", "sha256:0123")
        );
    }
}
