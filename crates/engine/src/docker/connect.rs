//! Reaching the engine: `DOCKER_HOST` (unix, tcp, or ssh through a tunnel of this run's own),
//! and the API version agreed from the engine's `/_ping` before anything else.

use std::process::Stdio;
use std::time::Duration;

use bollard::Docker;

use super::reach;
use super::{DockerEngine, plain};
use crate::host::private_base;
use crate::{EngineError, Result};

/// `ssh -L` from a socket of this run's own to the engine's socket on the other machine, run
/// with the user's own ssh configuration and keys (`TETHER_SSH_COMMAND` replaces `ssh`, as
/// `GIT_SSH_COMMAND` does for git). Gone, with its socket, when tether is.
pub(super) struct Tunnel {
    pub(super) local: std::path::PathBuf,
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
        let base = private_base().map_err(failed)?;
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
        let setting = std::env::var(crate::TIMEOUT_VARIABLE).ok();
        let limits =
            super::Limits::from_setting(setting.as_deref()).map_err(|why| EngineError::Unable {
                what: format!("use the engine at {endpoint}"),
                why,
            })?;
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
        // tether's own limits, not the client's default, say when the engine is too slow.
        let docker = docker.with_timeout(limits.call);
        let creating = docker.clone().with_timeout(limits.create);
        let pulling = docker.clone().with_timeout(limits.pull);
        // (A tunnel's socket is this run's own: nothing to remember its reach by.)
        let (reach, memo) = reach::begin(&docker, &endpoint, tunnel.is_none());
        Ok(DockerEngine {
            docker,
            creating,
            pulling,
            limits,
            endpoint,
            reach,
            memo,
            tunnel,
        })
    }
}
