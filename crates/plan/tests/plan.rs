//! The rewritten workload command line for each kind of sidecar, exactly.

use std::path::Path;

use tether_plan::{EnvValue, WorkloadTarget, plan};
use tether_spec::{SourceText, load_texts, model::Declaration};

fn decl(yaml: &str) -> Declaration {
    load_texts(
        SourceText {
            name: "tether.yaml".into(),
            text: format!("version: 1\nproject: demo\n{yaml}"),
        },
        Vec::new(),
        Path::new("/work/demo"),
    )
    .map_err(|e| format!("{e:?}"))
    .unwrap()
    .declaration
}

fn argv(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn rewritten(yaml: &str, workload: &str) -> Vec<String> {
    plan(&decl(yaml), "s1", &argv(workload)).unwrap().argv
}

const LABELS: &str = "--label dev.tether.project=demo --label dev.tether.role=workload --label dev.tether.session=s1";

#[test]
fn no_sidecars_leaves_the_argv_byte_identical() {
    let original = vec![
        "docker".to_owned(),
        "run".into(),
        "--rm".into(),
        "-e".into(),
        "A=b c".into(),
        "img:1".into(),
        "sh".into(),
        "-c".into(),
        "echo  two  spaces".into(),
    ];
    let p = plan(&decl(""), "s1", &original).unwrap();
    assert_eq!(p.argv, original);
    assert!(p.sidecars.is_empty());
    // A disabled sidecar is not a sidecar either.
    let d = decl(
        "sidecars:\n  c:\n    image: x\n    disable: true\n    lifecycle: shared\n    interface: { kind: port, port: 1 }\n",
    );
    assert_eq!(plan(&d, "s1", &original).unwrap().argv, original);
}

#[test]
fn a_port_sidecar_adds_network_and_env_before_the_image() {
    let got = rewritten(
        "sidecars:\n  cache:\n    image: redis:7\n    lifecycle: shared\n    interface: { kind: port, port: 6379 }\n",
        "docker run --rm -it app:dev pytest -x",
    );
    let want = format!(
        "docker run --rm -it --network tether-demo {LABELS} -e TETHER_CACHE_HOST=cache -e TETHER_CACHE_PORT=6379 app:dev pytest -x"
    );
    assert_eq!(got, argv(&want));
}

#[test]
fn an_mcp_sidecar_adds_url_and_the_server_list() {
    let d = decl(
        "env_prefix: DEV\nsidecars:\n  docs:\n    image: docs:1\n    lifecycle: session\n    interface: { kind: mcp, port: 8000, name: docs-mcp }\n",
    );
    let p = plan(&d, "s1", &argv("docker run app")).unwrap();
    let want = format!(
        "docker run --network tether-demo {LABELS} -e DEV_DOCS_HOST=docs-mcp -e DEV_DOCS_PORT=8000 -e DEV_DOCS_URL=http://docs-mcp:8000/mcp -e DEV_MCP_CONFIG=/run/tether/mcp.json -v <mcp.json>:/run/tether/mcp.json:ro app"
    );
    assert_eq!(p.argv, argv(&want));
    let mcp = p.mcp.unwrap().render(&|_, _| None);
    assert_eq!(
        mcp,
        serde_json::json!({"mcpServers": {"docs-mcp": {"type": "http", "url": "http://docs-mcp:8000/mcp"}}})
    );
    assert_eq!(p.sidecars[0].name, "tether-demo-s1-docs");
    assert_eq!(p.sidecars[0].aliases, ["docs-mcp"]);
}

#[test]
fn a_volume_sidecar_mounts_the_volume_in_both() {
    let p = plan(
        &decl(
            "sidecars:\n  models:\n    image: fetcher:1\n    lifecycle: shared\n    interface: { kind: volume, volume: models, mountpoint: /models }\n    readiness: { mode: log, pattern: done }\n",
        ),
        "s1",
        &argv("docker run app"),
    )
    .unwrap();
    assert_eq!(
        p.argv,
        argv(&format!(
            "docker run --network tether-demo {LABELS} -v models:/models app"
        ))
    );
    assert_eq!(
        p.sidecars[0].mounts,
        [tether_plan::MountPlan::Volume {
            name: "models".into(),
            target: "/models".into(),
            read_only: false
        }]
    );
    assert!(p.sidecars[0].aliases.is_empty());
}

#[test]
fn a_session_sidecar_is_named_and_labelled_for_its_session() {
    let p = plan(
        &decl(
            "sidecars:\n  db:\n    image: postgres:16\n    lifecycle: session\n    interface: { kind: port, port: 5432 }\n    secrets: [{ name: pw, from: env:PGPASS }]\n",
        ),
        "s1",
        &argv("docker run app"),
    )
    .unwrap();
    let c = &p.sidecars[0];
    assert_eq!(c.name, "tether-demo-s1-db");
    assert_eq!(c.labels["dev.tether.session"], "s1");
    assert_eq!(c.labels["dev.tether.lifecycle"], "session");
    assert_eq!(c.labels["dev.tether.sidecar"], "db");
    assert_eq!(c.labels.len(), 6);
    assert!(c.labels.values().all(|v| !v.contains("PGPASS")));
    assert!(c.env.is_empty());
    assert_eq!(
        c.mounts,
        [tether_plan::MountPlan::Tmpfs {
            target: "/run/secrets".into()
        }]
    );
    assert_eq!(
        p.argv,
        argv(&format!(
            "docker run --network tether-demo {LABELS} -e TETHER_DB_HOST=db -e TETHER_DB_PORT=5432 app"
        ))
    );
}

#[test]
fn a_shared_namespace_workload_joins_the_sidecar_and_uses_localhost() {
    let got = rewritten(
        "sidecars:\n  bus:\n    image: tether:local\n    lifecycle: session\n    interface: { kind: port, port: 9191 }\nworkload:\n  network_mode: shared-namespace\n  sidecar: bus\n  env: { SIDECAR_ADDR: \"127.0.0.1:9191\" }\n",
        "docker run --rm plugin:dev",
    );
    let want = format!(
        "docker run --rm --network container:tether-demo-s1-bus {LABELS} -e TETHER_BUS_HOST=127.0.0.1 -e TETHER_BUS_PORT=9191 -e SIDECAR_ADDR=127.0.0.1:9191 plugin:dev"
    );
    assert_eq!(got, argv(&want));
}

/// A plugin (the workload in a bus sidecar's namespace) reaches the bus only through its
/// sidecar: it is told where the sidecar is, not where the Bus API is. Another workload beside
/// the same Bus API is told.
#[test]
fn a_plugin_is_not_told_where_the_bus_api_is() {
    let sidecars = "sidecars:\n  bus-api:\n    image: tether:local\n    command: [bus, serve]\n    lifecycle: shared\n    interface: { kind: port, port: 8443 }\n  bus:\n    image: tether:local\n    entrypoint: [tether-sidecar]\n    lifecycle: session\n    interface: { kind: port, port: 9191 }\n";
    let got = rewritten(
        &format!("{sidecars}workload:\n  network_mode: shared-namespace\n  sidecar: bus\n"),
        "docker run --rm plugin:dev",
    );
    let want = format!(
        "docker run --rm --network container:tether-demo-s1-bus {LABELS} -e TETHER_BUS_HOST=127.0.0.1 -e TETHER_BUS_PORT=9191 plugin:dev"
    );
    assert_eq!(got, argv(&want));

    let got = rewritten(sidecars, "docker run --rm app:dev");
    let want = format!(
        "docker run --rm --network tether-demo {LABELS} -e TETHER_BUS_API_HOST=bus-api -e TETHER_BUS_API_PORT=8443 -e TETHER_BUS_HOST=bus -e TETHER_BUS_PORT=9191 app:dev"
    );
    assert_eq!(got, argv(&want));
}

#[test]
fn arguments_after_the_image_are_never_read_or_changed() {
    let got = rewritten(
        "sidecars:\n  cache:\n    image: redis:7\n    lifecycle: shared\n    interface: { kind: port, port: 6379 }\n",
        "docker run --rm harness:1 --network host -e X=1 -v /:/host",
    );
    let want = format!(
        "docker run --rm --network tether-demo {LABELS} -e TETHER_CACHE_HOST=cache -e TETHER_CACHE_PORT=6379 harness:1 --network host -e X=1 -v /:/host"
    );
    assert_eq!(got, argv(&want));
}

#[test]
fn a_host_process_gets_published_ports_and_an_unchanged_argv() {
    let p = plan(
        &decl(
            "sidecars:\n  cache:\n    image: redis:7\n    lifecycle: shared\n    interface: { kind: port, port: 6379 }\n",
        ),
        "s1",
        &argv("cargo test --workspace"),
    )
    .unwrap();
    assert_eq!(p.target, WorkloadTarget::HostProcess);
    assert_eq!(p.argv, argv("cargo test --workspace"));
    assert_eq!(p.sidecars[0].publish, [6379]);
    let published = |s: &str, port: u16| (s == "cache" && port == 6379).then_some(49153);
    let env: Vec<(String, Option<String>)> = p
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.resolve(&published)))
        .collect();
    assert_eq!(
        env,
        [
            ("TETHER_CACHE_HOST".to_owned(), Some("127.0.0.1".to_owned())),
            ("TETHER_CACHE_PORT".to_owned(), Some("49153".to_owned())),
        ]
    );
    assert!(matches!(p.env[1].1, EnvValue::PublishedPort { .. }));
}

#[test]
fn config_hash_ignores_descriptions_and_follows_what_matters() {
    let base = "sidecars:\n  cache:\n    image: redis:7\n    lifecycle: shared\n    interface: { kind: port, port: 6379 }\n";
    let h = |yaml: &str, image_id: Option<&str>| {
        let d = decl(yaml);
        tether_plan::config_hash(&d.project, &d.sidecars["cache"], image_id)
    };
    let h0 = h(base, None);
    assert_eq!(h0.len(), 64);
    assert_eq!(h0, h(&format!("{base}    description: the cache\n"), None));
    assert_eq!(
        h0,
        h(&format!("\n\n{base}"), None),
        "moving it in the file changes nothing"
    );
    assert_ne!(h0, h(&base.replace("redis:7", "redis:8"), None));
    assert_ne!(h0, h(&format!("{base}    env: {{ A: b }}\n"), None));
    assert_ne!(
        h0,
        h(base, Some("sha256:abc")),
        "a rebuilt image is noticed"
    );
    // Where a secret comes from counts; its value never enters the model.
    let with_secret = format!("{base}    secrets: [{{ name: t, from: env:TOKEN }}]\n");
    assert_ne!(h0, h(&with_secret, None));
}

#[test]
fn container_names_stay_valid_for_degenerate_parts() {
    assert_eq!(
        tether_plan::container_name("demo", "db", None),
        "tether-demo-db"
    );
    assert_eq!(
        tether_plan::container_name("demo", "db", Some("s1")),
        "tether-demo-s1-db"
    );
    assert_eq!(
        tether_plan::container_name("__", "db", Some("--")),
        "tether-db"
    );
    assert_eq!(tether_plan::container_name("", "", None), "tether");
    assert_eq!(tether_plan::env_stem("TETHER", "my-db"), "TETHER_MY_DB");
}

#[test]
fn engine_requests_carry_resources_healthcheck_and_mounts() {
    let p = plan(
        &decl(
            "sidecars:\n  w:\n    image: w:1\n    lifecycle: session\n    interface: { kind: port, port: 80 }\n    readiness: { mode: healthcheck, command: [wget, -q, localhost], interval: 2s }\n    resources: { memory: 256m, cpus: 0.5, gpus: all }\n    mounts: [workspace:/src:ro, docker-socket, volume:cache:/cache]\n    networks: [extra]\n",
        ),
        "s1",
        &argv("docker run app"),
    )
    .unwrap();
    let c = &p.sidecars[0];
    assert_eq!(c.memory, Some(256 << 20));
    assert_eq!(c.nano_cpus, Some(500_000_000));
    assert_eq!(c.gpus, Some(tether_spec::model::Gpus::All));
    assert_eq!(c.extra_networks, ["extra"]);
    let hc = c.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, ["CMD", "wget", "-q", "localhost"]);
    assert_eq!(hc.interval.to_string(), "2s");
    use tether_plan::MountPlan::*;
    assert_eq!(
        c.mounts,
        [
            Bind {
                source: "/work/demo".into(),
                target: "/src".into(),
                read_only: true
            },
            Bind {
                source: "/var/run/docker.sock".into(),
                target: "/var/run/docker.sock".into(),
                read_only: false
            },
            Volume {
                name: "cache".into(),
                target: "/cache".into(),
                read_only: false
            },
        ]
    );
    assert_eq!(
        c.readiness.summary(),
        "healthcheck wget -q localhost, timeout 30s, every 2s"
    );
}

const CACHE: &str = "sidecars:\n  cache:\n    image: redis:7\n    lifecycle: session\n    interface: { kind: port, port: 6379 }\n";

#[test]
fn a_host_network_container_gets_published_ports_through_its_engines_environment() {
    let p = plan(&decl(CACHE), "s1", &argv("docker run --net=host app")).unwrap();
    assert_eq!(p.target, WorkloadTarget::HostNetwork);
    assert_eq!(p.workload_network, None);
    // A session sidecar is published too, and the values reach the container by name only:
    // the engine's CLI takes them from the environment tether gives it.
    assert_eq!(p.sidecars[0].publish, [6379]);
    assert_eq!(
        p.argv,
        argv(&format!(
            "docker run --net=host {LABELS} -e TETHER_CACHE_HOST -e TETHER_CACHE_PORT app"
        ))
    );
    assert_eq!(
        p.env[1].1,
        EnvValue::PublishedPort {
            sidecar: "cache".into(),
            port: 6379
        }
    );
}

#[test]
fn a_workload_on_its_own_network_keeps_it_and_the_sidecars_join() {
    let p = plan(&decl(CACHE), "s1", &argv("docker run --network mine app")).unwrap();
    assert_eq!(p.target, WorkloadTarget::Container);
    assert_eq!(p.workload_network.as_deref(), Some("mine"));
    assert!(p.sidecars[0].publish.is_empty());
    assert_eq!(
        p.argv,
        argv(&format!(
            "docker run --network mine {LABELS} -e TETHER_CACHE_HOST=cache -e TETHER_CACHE_PORT=6379 app"
        ))
    );
    // The project network itself is no network of the user's own.
    let p = plan(
        &decl(CACHE),
        "s1",
        &argv("docker run --network tether-demo app"),
    )
    .unwrap();
    assert_eq!(p.workload_network, None);
}

#[test]
fn networks_that_cannot_reach_the_sidecars_are_refused_with_the_way_out() {
    let refused = |yaml: &str, network: &str| {
        plan(
            &decl(yaml),
            "s1",
            &argv(&format!("docker run --network {network} app")),
        )
        .unwrap_err()
        .to_string()
    };
    assert_eq!(
        refused(CACHE, "none"),
        "the workload's `--network none` leaves it no network, but sidecar cache is reached over one; remove the option"
    );
    assert_eq!(
        refused(CACHE, "bridge"),
        "the workload's `--network bridge` is the default bridge, where sidecars have no names; remove the option (tether joins it to `tether-demo`) or name a network of your own"
    );
    assert_eq!(
        refused(CACHE, "container:db"),
        "the workload's `--network container:db` cannot reach the sidecars; remove the option (tether joins it to `tether-demo`), or declare `workload.network_mode: shared-namespace`"
    );
    let shared = format!("{CACHE}workload:\n  network_mode: shared-namespace\n  sidecar: cache\n");
    assert_eq!(
        refused(&shared, "host"),
        "the workload's `--network host` conflicts with `workload.network_mode: shared-namespace`, which runs it in sidecar cache's namespace; remove the option"
    );
    // With no sidecar to reach over a network, any network will do.
    let volume = "sidecars:\n  models:\n    image: m:1\n    lifecycle: session\n    interface: { kind: volume, volume: models, mountpoint: /models }\n    readiness: { mode: none }\n";
    let p = plan(&decl(volume), "s1", &argv("docker run --network none app")).unwrap();
    assert_eq!(
        p.argv,
        argv(&format!(
            "docker run --network none {LABELS} -v models:/models app"
        ))
    );
}

#[test]
fn a_host_process_reads_the_mcp_file_where_it_is_written() {
    let yaml = "sidecars:\n  docs:\n    image: d:1\n    lifecycle: session\n    interface: { kind: mcp, port: 8000, path: /mcp, name: docs }\n";
    let p = plan(&decl(yaml), "s1", &argv("claude")).unwrap();
    assert_eq!(
        p.env.last().unwrap(),
        &(
            "TETHER_MCP_CONFIG".to_owned(),
            EnvValue::Literal(tether_plan::MCP_CONFIG_HOST.to_owned())
        )
    );
}

#[test]
fn readiness_dials_its_own_port_when_it_names_one() {
    let d = decl(
        "sidecars:\n  bus:\n    image: tether:1\n    lifecycle: session\n    interface: { kind: port, port: 9191 }\n    readiness: { mode: http, port: 9192, path: \"/readyz?bus\" }\n    health: { port: 9192 }\n  plain:\n    image: redis:7\n    lifecycle: shared\n    interface: { kind: port, port: 6379 }\n",
    );
    let r = tether_plan::ReadinessPlan::resolve(&d.sidecars["bus"]);
    assert_eq!(r.port, Some(9192));
    assert_eq!(
        r.summary(),
        "http GET :9192/readyz?bus, timeout 30s, every 250ms"
    );
    assert_eq!(
        tether_plan::ReadinessPlan::resolve(&d.sidecars["plain"]).port,
        Some(6379)
    );
    // Absent, neither field enters the serialised sidecar: config hashes of declarations
    // written before they existed stay the same.
    let plain = serde_json::to_value(&d.sidecars["plain"]).unwrap();
    assert_eq!(plain.get("health"), None);
    assert_eq!(
        plain["readiness"],
        serde_json::json!({ "mode": "tcp", "timeout": "30s", "interval": "250ms", "start_period": null })
    );
}
