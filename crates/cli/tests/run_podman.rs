//! `tether run` against Podman's Docker-compatible API, served by `podman system service` on a
//! socket of the test's own: the same client code as for the Docker Engine, another engine.
//! The image is built `FROM scratch` from busybox-static by `podman build`: nothing is pulled.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use support::*;

engine_tests![
    podman_runs_the_sidecars_gates_the_workload_and_cleans_up => [Need::Podman],
];

/// A Podman API service for one test, stopped when dropped.
struct Podman {
    _service: Server,
    dir: tempfile::TempDir,
    image: String,
}

impl Podman {
    fn start() -> Option<Podman> {
        let installed = Command::new("podman")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !require(
            installed,
            "podman is not installed (apt-get install podman)",
        ) {
            return None;
        }
        let Some(rootfs) = busybox_rootfs() else {
            require(false, "no static busybox (apt-get install busybox-static)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        // Containers get limits no higher than this machine allows (Podman's defaults exceed
        // a sandbox's hard limits), and cgroups are managed without systemd.
        let runtime = if Command::new("runc").arg("--version").output().is_ok() {
            "runtime = \"runc\"\n"
        } else {
            ""
        };
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\n{runtime}"
            ),
        )
        .unwrap();
        let image = "localhost/tether-run-test:podman".to_owned();
        let mut build = Command::new("podman");
        build
            .env("CONTAINERS_CONF", dir.path().join("containers.conf"))
            .args(["build", "-q", "-t", &image])
            .arg(rootfs.path());
        let out = build.output().unwrap();
        assert!(
            out.status.success(),
            "podman build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = dir.path().join("podman.sock");
        let service = Command::new("podman")
            .env("CONTAINERS_CONF", dir.path().join("containers.conf"))
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let podman = Podman {
            _service: Server(service),
            dir,
            image,
        };
        eventually("the Podman API answers", || {
            podman.cli(&["version"]).status.success()
        });
        Some(podman)
    }

    fn socket(&self) -> String {
        format!("unix://{}", self.dir.path().join("podman.sock").display())
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("containers.conf")
    }

    /// The podman CLI, as a client of this service.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new("podman")
            .env("CONTAINERS_CONF", self.conf())
            .args(["--url", &self.socket()])
            .args(args)
            .output()
            .unwrap()
    }

    /// tether with this service as its engine.
    fn tether(&self, args: &[&str]) -> Command {
        let mut c = Command::new(tether_bin());
        c.env("DOCKER_HOST", self.socket())
            .env("CONTAINERS_CONF", self.conf())
            .args(args);
        c
    }

    fn containers(&self, project: &str) -> String {
        text(&self.cli(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=dev.tether.project={project}"),
            "--format",
            "{{.Names}}",
        ]))
    }
}

fn podman_runs_the_sidecars_gates_the_workload_and_cleans_up() {
    let Some(podman) = Podman::start() else {
        return;
    };
    let project = format!("rp-{}", std::process::id());
    let bundle = Bundle::new(&format!(
        r#"version: 1
project: {project}
sidecars:
  web:
    image: {img}
    lifecycle: session
    command: [sh, -c, "sleep 1; exec httpd -f -p 8080 -h /www"]
    interface: {{ kind: port, port: 8080 }}
    readiness: {{ mode: http, path: /, timeout: 30s, interval: 100ms }}
    secrets: [{{ name: token, from: "env:RP_TOKEN" }}]
"#,
        img = podman.image
    ));
    let file = bundle.file();
    let file = file.to_str().unwrap();
    let socket = podman.socket();
    let workload = [
        "podman",
        "--url",
        &socket,
        "run",
        "--rm",
        &podman.image,
        "sh",
        "-c",
        "echo $TETHER_WEB_HOST; wget -qO- http://web:8080/",
    ];

    // Podman's containers are routable from here like Docker's: dialled at their address.
    let out = podman
        .tether(&["run", "-f", file, "--"])
        .args(workload)
        .env("RP_TOKEN", "p0dman-s3cret")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        (out.status.code(), text(&out).as_str()),
        (Some(0), "web\nhello from the sidecar"),
        "{err}"
    );
    assert!(err.contains("tether: web: ready in"), "{err}");
    assert_eq!(podman.containers(&project), "");

    // As an engine elsewhere: probed from inside the namespace, the secret copied in.
    let out = podman
        .tether(&["up", "-f", file])
        .env("TETHER_ENGINE_REMOTE", "1")
        .env("TETHER_LOG", "tether_run=debug,tether_engine=debug")
        .env("RP_TOKEN", "p0dman-s3cret")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("from inside its network namespace"), "{err}");
    let name = podman.containers(&project);
    assert_eq!(
        text(&podman.cli(&["exec", &name, "cat", "/run/secrets/token"])),
        "p0dman-s3cret"
    );

    let down = podman
        .tether(&["down", "--all", "-f", file])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&down.stderr),
        format!("removed {name}\nremoved network tether-{project}\n")
    );
    assert_eq!(podman.containers(&project), "");
}
