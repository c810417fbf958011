//! Requests and answers translated between tether's terms and the engine's: pure functions,
//! no engine calls.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, DeviceRequest, EndpointSettings, HealthConfig,
    HostConfig, Mount, MountTmpfsOptions, MountTypeEnum, NetworkingConfig, PortBinding,
};
use tether_plan::{ContainerPlan, MountPlan};

use crate::{Container, FileCopy};

/// An image reference as the engine's pull takes it: the repository, and the tag or digest
/// (`latest` when it names neither; an empty tag would pull every tag).
pub(super) fn split_reference(image: &str) -> (&str, &str) {
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
pub(super) fn tar_of(dir: &str, files: &[FileCopy], mode: u32) -> std::io::Result<Vec<u8>> {
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

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The engine's create request for a planned container. (Extra networks are connected after.)
pub(super) fn create_body(spec: &ContainerPlan) -> ContainerCreateBody {
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
    ContainerCreateBody {
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
    }
}

/// A container as tether sees it, from the engine's inspect answer: published tcp ports only,
/// addresses only on networks where it has one, no health when it has no healthcheck.
pub(super) fn container_of(c: ContainerInspectResponse) -> Container {
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
    Container {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_plan::{HealthcheckPlan, ReadinessMode, ReadinessPlan};
    use tether_spec::model::{Duration as Span, Gpus, Lifecycle};

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    fn plan() -> ContainerPlan {
        ContainerPlan {
            sidecar: "cache".into(),
            name: "tether-demo-cache".into(),
            image: "redis:7".into(),
            lifecycle: Lifecycle::Shared,
            entrypoint: None,
            command: None,
            env: strings(&["A=1"]),
            labels: [("dev.tether.project".to_owned(), "demo".to_owned())].into(),
            network: "tether-demo".into(),
            aliases: strings(&["cache"]),
            extra_networks: Vec::new(),
            mounts: Vec::new(),
            secrets: Vec::new(),
            publish: Vec::new(),
            memory: None,
            nano_cpus: None,
            gpus: None,
            healthcheck: None,
            readiness: ReadinessPlan {
                mode: ReadinessMode::Tcp,
                port: Some(6379),
                path: None,
                command: None,
                pattern: None,
                timeout: Span(Duration::from_secs(30)),
                interval: Span(Duration::from_millis(250)),
                start_period: None,
            },
            config_hash: "0123".into(),
        }
    }

    #[test]
    fn a_plain_plan_becomes_a_container_on_the_project_network_under_its_aliases() {
        assert_eq!(
            create_body(&plan()),
            ContainerCreateBody {
                image: Some("redis:7".into()),
                env: Some(strings(&["A=1"])),
                labels: Some(HashMap::from([(
                    "dev.tether.project".to_owned(),
                    "demo".to_owned()
                )])),
                host_config: Some(HostConfig {
                    mounts: Some(Vec::new()),
                    network_mode: Some("tether-demo".into()),
                    ..Default::default()
                }),
                networking_config: Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(
                        "tether-demo".to_owned(),
                        EndpointSettings {
                            aliases: Some(strings(&["cache"])),
                            ..Default::default()
                        },
                    )])),
                }),
                ..Default::default()
            }
        );
    }

    #[test]
    fn mounts_ports_resources_gpus_and_healthcheck_are_translated() {
        let spec = ContainerPlan {
            entrypoint: Some(strings(&["/bin/sh"])),
            command: Some(strings(&["-c", "serve"])),
            mounts: vec![
                MountPlan::Bind {
                    source: "/home/me/src".into(),
                    target: "/src".into(),
                    read_only: true,
                },
                MountPlan::Volume {
                    name: "cache".into(),
                    target: "/cache".into(),
                    read_only: false,
                },
                MountPlan::Tmpfs {
                    target: "/run/secrets".into(),
                },
            ],
            publish: vec![6379],
            memory: Some(256 * 1024 * 1024),
            nano_cpus: Some(500_000_000),
            gpus: Some(Gpus::Devices(strings(&["0", "1"]))),
            healthcheck: Some(HealthcheckPlan {
                test: strings(&["CMD", "redis-cli", "ping"]),
                interval: Span(Duration::from_secs(2)),
                timeout: Span(Duration::from_millis(1500)),
                start_period: Some(Span(Duration::from_secs(10))),
                retries: 3,
            }),
            ..plan()
        };
        let body = create_body(&spec);
        assert_eq!(body.entrypoint, Some(strings(&["/bin/sh"])));
        assert_eq!(body.cmd, Some(strings(&["-c", "serve"])));
        assert_eq!(
            body.exposed_ports,
            Some(HashMap::from([("6379/tcp".to_owned(), HashMap::new())]))
        );
        assert_eq!(
            body.healthcheck,
            Some(HealthConfig {
                test: Some(strings(&["CMD", "redis-cli", "ping"])),
                interval: Some(2_000_000_000),
                timeout: Some(1_500_000_000),
                start_period: Some(10_000_000_000),
                retries: Some(3),
                ..Default::default()
            })
        );
        let host = body.host_config.unwrap();
        assert_eq!(
            host.mounts,
            Some(vec![
                Mount {
                    typ: Some(MountTypeEnum::BIND),
                    source: Some("/home/me/src".into()),
                    target: Some("/src".into()),
                    read_only: Some(true),
                    ..Default::default()
                },
                Mount {
                    typ: Some(MountTypeEnum::VOLUME),
                    source: Some("cache".into()),
                    target: Some("/cache".into()),
                    read_only: Some(false),
                    ..Default::default()
                },
                Mount {
                    typ: Some(MountTypeEnum::TMPFS),
                    target: Some("/run/secrets".into()),
                    tmpfs_options: Some(MountTmpfsOptions {
                        mode: Some(0o755),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ])
        );
        // Published on 127.0.0.1 only, on a port the engine picks.
        assert_eq!(
            host.port_bindings,
            Some(HashMap::from([(
                "6379/tcp".to_owned(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new()),
                }])
            )]))
        );
        assert_eq!(host.memory, Some(268_435_456));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(
            host.device_requests,
            Some(vec![DeviceRequest {
                count: None,
                device_ids: Some(strings(&["0", "1"])),
                capabilities: Some(vec![strings(&["gpu"])]),
                ..Default::default()
            }])
        );
        let gpus = |g| {
            create_body(&ContainerPlan {
                gpus: Some(g),
                ..plan()
            })
            .host_config
            .and_then(|h| h.device_requests)
            .map(|d| (d[0].count, d[0].device_ids.clone()))
        };
        assert_eq!(gpus(Gpus::All), Some((Some(-1), None)));
        assert_eq!(gpus(Gpus::Count(2)), Some((Some(2), None)));
    }

    /// From a real answer of Docker 20.10 (API 1.41), trimmed to what tether reads.
    fn inspected(extra: serde_json::Value) -> ContainerInspectResponse {
        let mut answer = serde_json::json!({
            "Id": "9264373701a43e26c7f5a59aff4570bae70680fc4437c5db2477efe6ba88b370",
            "Created": "2026-12-01T21:29:03.527414857Z",
            "Name": "/tether-demo-cache",
            "Image": "sha256:0a1a983bf285fd1722c7a172111546008f33bb16b5c7ec11cc2902b40c444a83",
            "State": {
                "Status": "running", "Running": true, "ExitCode": 0,
                "Health": { "Status": "healthy", "FailingStreak": 0, "Log": [] }
            },
            "Config": { "Labels": { "dev.tether.project": "demo" } },
            "NetworkSettings": {
                "Ports": {
                    "6379/tcp": [{ "HostIp": "127.0.0.1", "HostPort": "32768" }],
                    "8080/tcp": null,
                    "53/udp": [{ "HostIp": "127.0.0.1", "HostPort": "32769" }]
                },
                "Networks": {
                    "tether-demo": { "IPAddress": "172.21.0.2", "NetworkID": "01d4f63a7f0e" },
                    "extra": { "IPAddress": "", "NetworkID": "7f0e01d4f63a" }
                }
            }
        });
        if let (Some(a), serde_json::Value::Object(extra)) = (answer.as_object_mut(), extra) {
            a.extend(extra);
        }
        serde_json::from_value(answer).unwrap()
    }

    #[test]
    fn an_inspect_answer_becomes_a_container() {
        assert_eq!(
            container_of(inspected(serde_json::json!({}))),
            Container {
                id: "9264373701a43e26c7f5a59aff4570bae70680fc4437c5db2477efe6ba88b370".into(),
                name: "tether-demo-cache".into(),
                image: "sha256:0a1a983bf285fd1722c7a172111546008f33bb16b5c7ec11cc2902b40c444a83"
                    .into(),
                labels: [("dev.tether.project".to_owned(), "demo".to_owned())].into(),
                state: "running".into(),
                exit_code: Some(0),
                health: Some("healthy".into()),
                // Only networks it has an address on.
                addresses: [("tether-demo".to_owned(), "172.21.0.2".to_owned())].into(),
                // Only tcp ports bound on the host.
                published: [(6379, 32768)].into(),
                created: "2026-12-01T21:29:03.527414857Z".into(),
            }
        );
    }

    #[test]
    fn an_exited_container_without_healthcheck_has_a_code_and_no_health() {
        let c = container_of(inspected(serde_json::json!({
            "State": { "Status": "exited", "Running": false, "ExitCode": 137 },
            "Config": {},
            "NetworkSettings": {}
        })));
        assert_eq!(
            (c.state.as_str(), c.exit_code, c.health, c.labels.len()),
            ("exited", Some(137), None, 0)
        );
        assert!(c.addresses.is_empty() && c.published.is_empty());
        let none = container_of(inspected(serde_json::json!({
            "State": { "Status": "running", "Health": { "Status": "none" } }
        })));
        assert_eq!(none.health, None);
    }

    #[test]
    fn files_are_archived_under_the_folder_with_the_mode() {
        let files = [("token".to_owned(), b"s3cret".to_vec())];
        let archive = tar_of("/run/secrets/", &files, 0o444).unwrap();
        let mut read = tar::Archive::new(archive.as_slice());
        let entries: Vec<(String, u32, Vec<u8>)> = read
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                    bytes,
                )
            })
            .collect();
        assert_eq!(
            entries,
            [("run/secrets/token".to_owned(), 0o444, b"s3cret".to_vec())]
        );
        let at_root = tar_of("/", &files, 0o755).unwrap();
        let mut read = tar::Archive::new(at_root.as_slice());
        let first = read.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(first.path().unwrap().display().to_string(), "token");
    }

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
