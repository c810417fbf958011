//! Readiness from inside a sidecar's network namespace, for an engine whose container addresses
//! this host cannot dial: a helper container made from the sidecar's own image runs tether's
//! probe (probe/probe.c, built by build.rs) there.

use std::collections::HashMap;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, StartContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use tether_plan::{LABEL_OWNER, LABEL_PROJECT, LABEL_ROLE, Role};

use super::DockerEngine;
use super::reach::Reach;
use crate::{Container, EngineError, Result};

/// tether's readiness probe (probe/probe.c, built by build.rs): a static program with no libc,
/// copied into a helper container that shares a sidecar's network namespace. Empty where it
/// could not be built.
const PROBE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe"));
/// Where the probe is put in the helper container.
const PROBE_PATH: &str = "/.tether-probe";

impl DockerEngine {
    /// Runs the probe once in a helper container that joins the sidecar's network namespace:
    /// made from the sidecar's own image (already on the engine), the probe copied in. The
    /// helper's life runs in a task of its own, so that it is removed even when the attempt
    /// is given up; one a killed run leaves is removed by the next run (its owner is gone).
    pub(super) async fn probe_inside(
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
        let body = helper_body(c, port, path, &crate::host::owner_id());
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
}

/// The helper container that runs the probe in `c`'s network namespace, owned by `owner` (so a
/// leftover of a killed run is known for one), and in `c`'s project (so `tether down` finds it).
fn helper_body(c: &Container, port: u16, path: Option<&str>, owner: &str) -> ContainerCreateBody {
    // One helper keeps trying for about 2 s, every 100 ms: a sidecar that becomes ready
    // meanwhile is seen within 100 ms, without a container per try.
    let mut cmd = vec![
        if path.is_some() { "http" } else { "tcp" }.to_owned(),
        port.to_string(),
    ];
    cmd.extend(path.map(str::to_owned));
    cmd.extend(["20".to_owned(), "100".to_owned()]);
    let mut labels = HashMap::from([
        (LABEL_ROLE.to_owned(), Role::Probe.as_str().to_owned()),
        (LABEL_OWNER.to_owned(), owner.to_owned()),
    ]);
    if let Some(project) = c.labels.get(LABEL_PROJECT) {
        labels.insert(LABEL_PROJECT.to_owned(), project.clone());
    }
    ContainerCreateBody {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_joins_the_sidecars_namespace_as_root_with_the_probes_arguments() {
        let c = Container {
            id: "abc123".into(),
            name: "tether-demo-web".into(),
            image: "sha256:web".into(),
            labels: [(LABEL_PROJECT.to_owned(), "demo".to_owned())].into(),
            ..Default::default()
        };
        let body = helper_body(&c, 8080, Some("/ready"), "host:42:7");
        assert_eq!(
            body,
            ContainerCreateBody {
                image: Some("sha256:web".into()),
                entrypoint: Some(vec!["/.tether-probe".into()]),
                cmd: Some(
                    ["http", "8080", "/ready", "20", "100"]
                        .map(String::from)
                        .to_vec()
                ),
                labels: Some(HashMap::from([
                    ("dev.tether.role".to_owned(), "probe".to_owned()),
                    ("dev.tether.owner".to_owned(), "host:42:7".to_owned()),
                    ("dev.tether.project".to_owned(), "demo".to_owned()),
                ])),
                user: Some("0".into()),
                host_config: Some(HostConfig {
                    network_mode: Some("container:abc123".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }
        );
        let tcp = helper_body(&Container::default(), 6379, None, "o");
        assert_eq!(
            tcp.cmd,
            Some(["tcp", "6379", "20", "100"].map(String::from).to_vec())
        );
        assert_eq!(
            tcp.labels.map(|l| l.contains_key(LABEL_PROJECT)),
            Some(false)
        );
    }
}
