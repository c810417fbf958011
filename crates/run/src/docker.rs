//! The Docker Engine behind [`Engine`], through bollard. `DOCKER_HOST` is honoured, and the API
//! version is negotiated down to what the engine speaks (Docker 20.10 speaks 1.41); Podman's
//! Docker-compatible socket works the same way.

use std::collections::{BTreeMap, HashMap};
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
    CreateContainerOptions, InspectContainerOptions, InspectNetworkOptions, ListContainersOptions,
    ListNetworksOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use tether_plan::{ContainerPlan, MountPlan};

use crate::engine::{Container, Engine, EngineError, Result};

pub struct DockerEngine {
    docker: Docker,
    endpoint: String,
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
        let docker = Docker::connect_with_defaults().map_err(|e| unreachable(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(plain(&e)))?;
        Ok(DockerEngine { docker, endpoint })
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
        let v = self
            .docker
            .version()
            .await
            .map_err(|e| self.error("report its version", e))?;
        Ok(v.api_version.unwrap_or_default())
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
        let mut out = Vec::new();
        for c in found {
            if let Some(id) = c.id
                && let Some(c) = self.inspect(&id).await?
            {
                out.push(c);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn create(&self, spec: &ContainerPlan) -> Result<String> {
        let mounts = spec
            .mounts
            .iter()
            .map(|m| match m {
                MountPlan::Bind {
                    source,
                    target,
                    read_only,
                } => Mount {
                    typ: Some(MountTypeEnum::BIND),
                    source: Some(source.clone()),
                    target: Some(target.clone()),
                    read_only: Some(*read_only),
                    ..Default::default()
                },
                MountPlan::Volume {
                    name,
                    target,
                    read_only,
                } => Mount {
                    typ: Some(MountTypeEnum::VOLUME),
                    source: Some(name.clone()),
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
                    let request = NetworkConnectRequest {
                        container: Some(r.id.clone()),
                        endpoint_config: None,
                    };
                    if let Err(e) = self.docker.connect_network(extra, request).await {
                        let _ = self.remove(&r.id).await;
                        return Err(
                            self.error(&format!("connect {} to network {extra}", spec.name), e)
                        );
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

    /// From the host to the container's address on the project network: on Linux a bridge
    /// network's addresses are routable from the host, so no tool inside the image is needed.
    async fn dial(&self, container: &Container, network: &str, port: u16) -> Result<bool> {
        let Some(ip) = container.addresses.get(network) else {
            return Ok(false);
        };
        let addr = format!("{ip}:{port}");
        Ok(matches!(
            tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(&addr)
            )
            .await,
            Ok(Ok(_))
        ))
    }

    async fn http_get(
        &self,
        container: &Container,
        network: &str,
        port: u16,
        path: &str,
    ) -> Result<Option<u16>> {
        let Some(ip) = container.addresses.get(network) else {
            return Ok(None);
        };
        let url = format!("http://{ip}:{port}{path}");
        Ok(tokio::time::timeout(
            Duration::from_secs(5),
            tether_init::http_request(&url, "GET", None),
        )
        .await
        .ok()
        .and_then(|r| r.ok()))
    }
}
