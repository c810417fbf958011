//! `tether render kubernetes` for every example: exact output, losses refused unless allowed,
//! secret values only when asked.

use std::path::Path;

use tether_render::kubernetes::{Options, render};
use tether_render::{Loss, RenderError};
use tether_spec::model::SecretSource;

mod common;
use common::{examples, load, load_text, name};

fn lossy() -> Options<'static> {
    Options {
        allow_lossy: true,
        secret_value: None,
        declaration_text: Some("# the declaration\n"),
        wait_image: None,
    }
}

#[test]
fn every_example_renders_exactly() {
    for file in examples() {
        let decl = load(&file);
        let text = render(&decl, &lossy()).unwrap().text;
        assert_eq!(
            text,
            render(&decl, &lossy()).unwrap().text,
            "same input, same bytes"
        );
        insta::assert_snapshot!(name(&file), text);
    }
}

#[test]
fn what_a_cluster_cannot_keep_is_refused_naming_the_field() {
    // The gateway example, its health endpoint on loopback only.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/gateway-bundle");
    let text = std::fs::read_to_string(dir.join("tether.yaml"))
        .unwrap()
        .replace(r#"listen: ":19090""#, r#"listen: "127.0.0.1:19090""#);
    assert!(text.contains("127.0.0.1:19090"));
    let decl = load_text(&text, &dir);
    let strict = Options {
        allow_lossy: false,
        ..lossy()
    };
    let Err(RenderError::Lossy(losses)) = render(&decl, &strict) else {
        panic!("expected losses");
    };
    assert_eq!(
        losses,
        [Loss {
            owner: "init.health".into(),
            field: "listen".into(),
            message: "127.0.0.1:19090 is loopback only: the kubelet's probes cannot reach it; listen on :19090".into(),
        }]
    );
    // Allowed, the same loss is a warning and a comment in the output.
    let r = render(&decl, &lossy()).unwrap();
    assert_eq!(r.warnings, losses);
    assert!(
        r.text
            .contains("# not kept: init.health.listen: 127.0.0.1:19090 is loopback only")
    );
}

#[test]
fn secret_values_are_written_only_when_asked() {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/dev-services/tether.yaml");
    let decl = load(&file);
    let placeholder = render(&decl, &lossy()).unwrap().text;
    assert!(
        placeholder.contains("  db-db-password: \"\"\n"),
        "{placeholder}"
    );
    let read = |from: &SecretSource| match from {
        SecretSource::Env(var) => Ok(format!("value-of-{var}")),
        SecretSource::File(path) => Ok(format!("contents-of-{path}")),
    };
    let with_values = render(
        &decl,
        &Options {
            secret_value: Some(&read),
            ..lossy()
        },
    )
    .unwrap()
    .text;
    assert!(
        with_values.contains("  db-db-password: value-of-DB_PASSWORD\n"),
        "{with_values}"
    );
    assert!(!with_values.contains("tether.dev/placeholder"));
}

/// plugin-bus's Bus API and bus sidecar both declare `signal-pool.token` from
/// `file:signal-pool.token`: one value, read once, under one key of the Secret, mounted in both
/// as `signal-pool.token`. Secrets of one name read from different sources keep a key each.
#[test]
fn a_secret_two_sidecars_read_from_one_source_is_in_the_secret_once() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugin-bus/tether.yaml");
    let decl = load(&file);
    let reads = std::cell::RefCell::new(Vec::new());
    let read = |from: &SecretSource| {
        reads.borrow_mut().push(format!("{from:?}"));
        match from {
            SecretSource::Env(var) => Ok(format!("value-of-{var}")),
            SecretSource::File(path) => Ok(format!("contents-of-{path}")),
        }
    };
    let text = render(
        &decl,
        &Options {
            secret_value: Some(&read),
            ..lossy()
        },
    )
    .unwrap()
    .text;
    let data: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "stringData:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(
        data,
        [
            "  bus-api-policy.yaml: contents-of-policy.yaml",
            "  bus-api-signal-pool.token: contents-of-signal-pool.token",
            "  bus-api-oms-pool.token: contents-of-oms-pool.token",
            "  bus-sidecar.yaml: contents-of-sidecar.yaml",
        ],
        "{text}"
    );
    assert_eq!(
        reads
            .borrow()
            .iter()
            .filter(|r| r.contains("signal-pool.token"))
            .count(),
        1,
        "{:?}",
        reads.borrow()
    );
    // The bus sidecar mounts the Bus API's key as its own file.
    assert!(
        text.contains("            items:\n              - key: bus-sidecar.yaml\n                path: sidecar.yaml\n              - key: bus-api-signal-pool.token\n                path: signal-pool.token\n"),
        "{text}"
    );

    // One name, two sources: two values, a key each.
    let two = "version: 1\nsidecars:\n  a:\n    image: a\n    lifecycle: shared\n    interface: { kind: port, port: 1 }\n    secrets: [{ name: t, from: \"file:a.token\" }]\n  b:\n    image: b\n    lifecycle: shared\n    interface: { kind: port, port: 2 }\n    secrets: [{ name: t, from: \"env:B_TOKEN\" }]\n";
    let decl = load_text(two, Path::new("/p/two"));
    let text = render(
        &decl,
        &Options {
            secret_value: Some(&read),
            ..lossy()
        },
    )
    .unwrap()
    .text;
    assert!(
        text.contains("stringData:\n  a-t: contents-of-a.token\n  b-t: value-of-B_TOKEN\n"),
        "{text}"
    );
}

#[test]
fn two_session_sidecars_on_one_port_cannot_share_a_pod() {
    let dir = std::env::temp_dir().join(format!("tether-k8s-ports-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tether.yaml");
    std::fs::write(
        &file,
        "version: 1\nproject: ports\nworkload: { image: app:1 }\nsidecars:\n  a: { image: a:1, lifecycle: session, interface: { kind: port, port: 8080 } }\n  b: { image: b:1, lifecycle: session, interface: { kind: port, port: 8080 }, mounts: [\"volume:Data_Dir:/data\"] }\n",
    )
    .unwrap();
    let decl = load(&file);
    let strict = Options {
        allow_lossy: false,
        ..lossy()
    };
    let Err(RenderError::Lossy(losses)) = render(&decl, &strict) else {
        panic!("expected a loss");
    };
    assert_eq!(losses.len(), 1);
    assert_eq!(
        losses[0].to_string(),
        "sidecars.b.interface.port: a listens on 8080 too, and in one Pod they share the network: only one can"
    );
    // A Docker volume name becomes a valid Pod volume name.
    let text = render(&decl, &lossy()).unwrap().text;
    assert!(text.contains("- name: data-dir\n"), "{text}");
}

#[test]
fn a_name_a_service_cannot_take_is_reported() {
    let dir = std::env::temp_dir().join(format!("tether-k8s-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tether.yaml");
    std::fs::write(
        &file,
        "version: 1\nproject: names\nsidecars:\n  db: { image: db:1, lifecycle: shared, interface: { kind: port, port: 5432 }, aliases: [2nd-db] }\n",
    )
    .unwrap();
    let strict = Options {
        allow_lossy: false,
        ..lossy()
    };
    let Err(RenderError::Lossy(losses)) = render(&load(&file), &strict) else {
        panic!("expected a loss");
    };
    assert_eq!(
        losses[0].to_string(),
        "sidecars.db.aliases: `2nd-db` cannot name a Service, whose names start with a letter; it is left out"
    );
}

/// The Deployment's one container of a shared sidecar, as rendered.
fn shared_container(yaml: &str) -> String {
    let dir = tempfile_dir("health");
    let file = dir.join("tether.yaml");
    std::fs::write(&file, yaml).unwrap();
    let text = render(&load(&file), &lossy()).unwrap().text;
    let start = text.find("      containers:\n").expect("a Pod template");
    let end = text[start..]
        .find("---\n")
        .map_or(text.len(), |i| start + i);
    text[start..end].to_owned()
}

fn tempfile_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-k8s-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_health_endpoint_gives_liveness_and_readiness_and_readiness_becomes_the_startup_gate() {
    // A shared sidecar with a health endpoint: its readiness gates the start (startupProbe), the
    // endpoint says whether it lives and serves afterwards; the readiness dials its own port.
    assert_eq!(
        shared_container(
            "version: 1\nproject: health\nsidecars:\n  api:\n    image: api:1\n    lifecycle: shared\n    interface: { kind: port, port: 8443 }\n    readiness: { mode: http, port: 9000, path: /started, interval: 2s, timeout: 10s }\n    health: { port: 9000, live: /live }\n"
        ),
        r#"      containers:
        - name: api
          image: "api:1"
          ports:
            - containerPort: 9000
              protocol: TCP
          startupProbe:
            httpGet:
              path: /started
              port: 9000
            periodSeconds: 2
            timeoutSeconds: 2
            failureThreshold: 5
          livenessProbe:
            httpGet:
              path: /live
              port: 9000
            periodSeconds: 10
          readinessProbe:
            httpGet:
              path: /readyz
              port: 9000
            periodSeconds: 2
"#
    );
    // Without one, readiness stays the readinessProbe, as before.
    assert_eq!(
        shared_container(
            "version: 1\nproject: nohealth\nsidecars:\n  api:\n    image: api:1\n    lifecycle: shared\n    interface: { kind: port, port: 8443 }\n"
        ),
        r#"      containers:
        - name: api
          image: "api:1"
          ports:
            - containerPort: 8443
              protocol: TCP
          readinessProbe:
            tcpSocket:
              port: 8443
            periodSeconds: 1
            timeoutSeconds: 1
            failureThreshold: 30
"#
    );
}
