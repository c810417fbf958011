//! Where the engine is relative to this host (same kernel? rootless? another architecture?),
//! found out once and remembered in this user's private folder in /dev/shm for the next run.

use std::path::PathBuf;
use std::sync::Arc;

use bollard::Docker;
use tokio::sync::OnceCell;

use super::DockerEngine;
use crate::host::{hostname, private_base};

/// What this host shares with the engine, found out once, when first needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Reach {
    /// A file on this host can be bind-mounted into a container.
    pub(super) files_shared: bool,
    /// A container's address on a bridge network can be dialled from this host.
    pub(super) routable: bool,
    /// A port the engine publishes on 127.0.0.1 is reachable on this host's 127.0.0.1 (true
    /// on this machine, rootless or not, and through Docker Desktop's forwarding).
    pub(super) ports_here: bool,
    /// The engine runs programs of this host's architecture, so the probe runs there.
    pub(super) probe_runs: bool,
}

impl Reach {
    const ELSEWHERE: Reach = Reach {
        files_shared: false,
        routable: false,
        ports_here: false,
        probe_runs: true,
    };
    /// What tether assumes of an engine that would not say.
    pub(super) const ASSUMED: Reach = Reach {
        files_shared: true,
        routable: true,
        ports_here: true,
        probe_runs: true,
    };
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
    let host = hostname();
    (path, m.dev(), m.ino(), m.ctime(), m.ctime_nsec(), host).hash(&mut h);
    let base = private_base().ok()?;
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
    let host = hostname();
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

/// The reach once found out: `None` inside when the engine would not say.
pub(super) type Known = Arc<OnceCell<Option<Reach>>>;

/// Known from an earlier run (by `endpoint`'s memo, when `memorable`), or asked now, in the
/// background, so that the answer is there when the first sidecar needs it. Also where the
/// answer is to be remembered.
pub(super) fn begin(docker: &Docker, endpoint: &str, memorable: bool) -> (Known, Option<PathBuf>) {
    let reach = Known::default();
    let forced = std::env::var("TETHER_ENGINE_REMOTE").as_deref() == Ok("1");
    let memo = reach_memo(endpoint).filter(|_| !forced && memorable);
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
    (reach, memo)
}

impl DockerEngine {
    /// What this host shares with the engine.
    pub(super) async fn reach(&self) -> Reach {
        let (docker, memo) = (self.docker.clone(), self.memo.clone());
        self.reach
            .get_or_init(|| reach_of(docker, memo))
            .await
            .unwrap_or(Reach::ASSUMED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memo_keeps_the_four_flags_in_order_and_refuses_anything_else() {
        let dir = std::env::temp_dir().join(format!("tether-reach-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let memo = dir.join("engine-test");
        let reach = Reach {
            files_shared: true,
            routable: false,
            ports_here: true,
            probe_runs: false,
        };
        remember(&memo, reach);
        assert_eq!(std::fs::read_to_string(&memo).unwrap(), "1010");
        assert_eq!(recall(&memo), Some(reach));
        for bad in ["101", "10101", "1x10", ""] {
            std::fs::write(&memo, bad).unwrap();
            assert_eq!(recall(&memo), None, "{bad:?}");
        }
        assert_eq!(recall(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
