//! A rendered Compose file, run by docker-compose on the machine's engine: the workload reaches
//! its sidecar, and only once the sidecar's healthcheck (from its readiness) passed.

mod support;

use std::process::Command;

use support::*;

engine_tests![
    a_rendered_compose_file_runs_and_its_healthcheck_gates_the_workload => [Need::Compose],
];

fn a_rendered_compose_file_runs_and_its_healthcheck_gates_the_workload() {
    let Some(img) = busybox_image() else { return };
    let compose = Command::new("docker-compose").arg("version").output();
    if !require(
        compose.is_ok_and(|o| o.status.success()),
        "docker-compose is not installed",
    ) {
        return;
    }
    let project = format!("rendertest{}", std::process::id());
    // The sidecar serves only after 2 s; without the gate the workload's request would fail.
    let b = Bundle::new(&format!(
        r#"version: 1
project: {project}
sidecars:
  web:
    image: {img}
    lifecycle: shared
    command: [sh, -c, "sleep 2; touch /tmp/up; exec httpd -f -p 8080 -h /www"]
    interface: {{ kind: port, port: 8080 }}
    readiness: {{ mode: exec, command: [test, -f, /tmp/up], interval: 200ms, timeout: 30s }}
workload:
  image: {img}
  command: [sh, -c, "wget -qO- http://$TETHER_WEB_HOST:$TETHER_WEB_PORT/"]
"#
    ));
    let out_file = b.path("out/docker-compose.yml");
    let rendered = Command::new(tether_bin())
        .args(["render", "compose", "-f"])
        .arg(b.file())
        .arg("-o")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let compose = |args: &[&str]| {
        Command::new("docker-compose")
            .arg("-f")
            .arg(&out_file)
            .args(["-p", &project])
            .args(args)
            .output()
            .unwrap()
    };
    let up = compose(&["up", "--exit-code-from", "workload", "--no-color"]);
    let down = compose(&["down", "-v"]);
    let log = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(
        log.contains("hello from the sidecar"),
        "{log}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert_eq!(up.status.code(), Some(0), "{log}");
    assert!(down.status.success());
}
