//! The Docker Engine behind [`Engine`], through bollard. `DOCKER_HOST` is honoured, and the API
//! version is negotiated down to what the engine speaks (Docker 20.10 speaks 1.41); Podman's
//! Docker-compatible socket works the same way.

mod connect;
mod inside;
mod reach;
mod translate;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::exec::StartExecResults;
use bollard::models::{EndpointSettings, ExecConfig, NetworkConnectRequest, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, InspectNetworkOptions,
    ListContainersOptions, ListNetworksOptions, LogsOptions, RemoveContainerOptions,
    StopContainerOptions, UploadToContainerOptions,
};
use futures_util::StreamExt;
use tether_plan::ContainerPlan;

use crate::{Container, Engine, EngineError, FileCopy, Result};
use connect::Tunnel;

/// How long the engine may take to answer one call (until its answer begins: a pull's
/// progress or a followed log then streams for as long as it lasts) before tether says which
/// call was too slow, instead of waiting on a stuck engine for ever. `TETHER_ENGINE_TIMEOUT`
/// sets every limit; by default a call gets 2 minutes, a create 5 (the first container of an
/// image unpacks it) and an image pull 30; a stop gets its grace on top. The engine's API
/// client counts whole seconds: a limit is rounded up to one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub call: Duration,
    pub create: Duration,
    pub pull: Duration,
}

impl Limits {
    /// The limits `TETHER_ENGINE_TIMEOUT`'s value (if set) gives; `Err` says what is allowed.
    pub fn from_setting(value: Option<&str>) -> std::result::Result<Limits, String> {
        let Some(text) = value.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Limits {
                call: Duration::from_secs(120),
                create: Duration::from_secs(300),
                pull: Duration::from_secs(1800),
            });
        };
        let d = tether_spec::values::parse_duration(text)
            .map_err(|e| format!("{}=`{text}`: {e}", crate::TIMEOUT_VARIABLE))?
            .0;
        let d = Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0));
        Ok(Limits {
            call: d,
            create: d,
            pull: d,
        })
    }
}

/// A Docker Engine (or Podman's Docker-compatible API), reached with [`DockerEngine::connect`].
#[derive(Clone)]
pub struct DockerEngine {
    /// The client for most calls, limited to `limits.call`.
    docker: Docker,
    /// The same client, with the limits of creates and pulls.
    creating: Docker,
    pulling: Docker,
    limits: Limits,
    endpoint: String,
    reach: reach::Known,
    /// Where the reach is remembered for the next run.
    memo: Option<std::path::PathBuf>,
    /// For `ssh://`: the ssh process forwarding the engine's socket, while tether runs.
    tunnel: Option<std::sync::Arc<Tunnel>>,
}

impl DockerEngine {
    /// Copies files into a container under `dir`, with this mode.
    async fn copy_in(&self, id: &str, dir: &str, files: &[FileCopy], mode: u32) -> Result<()> {
        let what = format!("copy files into {id}");
        let archive = translate::tar_of(dir, files, mode).map_err(|e| EngineError::Refused {
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

    /// The networks a container is on, by name and by ID; `None` when it cannot be inspected.
    async fn networks_of(&self, id: &str) -> Option<Vec<String>> {
        let c = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .ok()?;
        let networks = c.network_settings?.networks.unwrap_or_default();
        Some(
            networks
                .into_iter()
                .flat_map(|(name, e)| [Some(name), e.network_id].into_iter().flatten())
                .collect(),
        )
    }

    fn error(&self, what: &str, e: BollardError) -> EngineError {
        self.error_within(what, e, self.limits.call)
    }

    /// An error of a call whose limit was `limit`.
    fn error_within(&self, what: &str, e: BollardError, limit: Duration) -> EngineError {
        match e {
            BollardError::RequestTimeoutError => EngineError::Slow {
                what: what.to_owned(),
                limit,
            },
            BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            } => EngineError::Conflict {
                what: what.to_owned(),
                reason: format!("{message} (HTTP 409)"),
            },
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
        let (from, tag) = translate::split_reference(image);
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
        let mut stream = self.pulling.create_image(Some(options), None, credentials);
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
                Err(e) => {
                    return Err(self.error_within(&format!("pull {image}"), e, self.limits.pull));
                }
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
        let what = format!("connect {id} to network {network}");
        match self.docker.connect_network(network, request).await {
            Ok(()) => Ok(()),
            // Not found: the network, or the container. The network's own inspect tells which.
            Err(
                e @ BollardError::DockerResponseServerError {
                    status_code: 404, ..
                },
            ) => match self
                .docker
                .inspect_network(network, None::<InspectNetworkOptions>)
                .await
            {
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => Err(EngineError::NotFound {
                    what: format!("the network `{network}`"),
                }),
                _ => Err(self.error(&what, e)),
            },
            // Forbidden (Docker 20.10) or a conflict (newer engines): fine when the container is
            // on it already (another run connected it first).
            Err(
                e @ BollardError::DockerResponseServerError {
                    status_code: 403 | 409,
                    ..
                },
            ) => match self.networks_of(id).await {
                Some(on) if on.iter().any(|n| n == network) => Ok(()),
                _ => Err(self.error(&what, e)),
            },
            Err(e) => Err(self.error(&what, e)),
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
        Ok(Some(translate::container_of(c)))
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
        let body = translate::create_body(spec);
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        match self.creating.create_container(Some(options), body).await {
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
            // No image, or no network (removed by `tether down --all` a moment ago).
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => match self
                .docker
                .inspect_network(&spec.network, None::<InspectNetworkOptions>)
                .await
            {
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => Err(EngineError::NotFound {
                    what: format!("the network `{}`", spec.network),
                }),
                _ => Err(EngineError::NoImage {
                    image: spec.image.clone(),
                }),
            },
            Err(e) => Err(self.error_within(
                &format!("create container {}", spec.name),
                e,
                self.limits.create,
            )),
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
        // The engine answers once the container stopped: its grace, then the call's own limit.
        let docker = self.docker.clone().with_timeout(grace + self.limits.call);
        match docker.stop_container(id, Some(options)).await {
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

    fn output(&self, id: &str, follow: bool, tail: Option<usize>) -> crate::Output {
        let options = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: tail.map_or_else(|| "all".to_owned(), |t| t.to_string()),
            ..Default::default()
        };
        let this = self.clone();
        let what = format!("read the output of {id}");
        self.docker
            .logs(id, Some(options))
            .map(move |item| match item {
                Ok(bollard::container::LogOutput::StdErr { message }) => {
                    Ok(crate::Chunk::Stderr(message.to_vec()))
                }
                Ok(other) => Ok(crate::Chunk::Stdout(other.into_bytes().to_vec())),
                Err(e) => Err(this.error(&what, e)),
            })
            .boxed()
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
    use super::*;

    #[test]
    fn limits_are_per_operation_unless_the_setting_says_one_for_all() {
        let s = Duration::from_secs;
        assert_eq!(
            Limits::from_setting(None),
            Ok(Limits {
                call: s(120),
                create: s(300),
                pull: s(1800)
            })
        );
        let all = |d| Limits {
            call: d,
            create: d,
            pull: d,
        };
        assert_eq!(Limits::from_setting(Some("45s")), Ok(all(s(45))));
        assert_eq!(Limits::from_setting(Some("2m")), Ok(all(s(120))));
        // The engine's client counts whole seconds: a part of one is a whole one.
        assert_eq!(Limits::from_setting(Some("500ms")), Ok(all(s(1))));
        assert_eq!(Limits::from_setting(Some("")), Limits::from_setting(None));
        let bad = Limits::from_setting(Some("soon")).unwrap_err();
        assert!(bad.starts_with("TETHER_ENGINE_TIMEOUT=`soon`: "), "{bad}");
    }
}
