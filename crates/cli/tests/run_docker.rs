//! `tether run` against the machine's real Docker Engine, with an image built `FROM scratch`
//! from busybox-static (sh, httpd, nc, wget): nothing is pulled.

mod support;

use std::process::Command;

use support::*;

engine_tests![
    a_workload_container_reaches_a_shared_sidecar_by_name_and_the_next_run_reuses_it,
    a_shared_sidecar_with_replicas_is_one_container_here_and_tether_says_so,
    a_host_process_reaches_the_sidecar_through_the_injected_env,
    a_shared_namespace_workload_reaches_its_sidecar_on_loopback,
    every_readiness_mode_gates_the_workload,
    a_sidecar_that_never_gets_ready_fails_the_run_and_leaves_nothing,
    ctrl_c_stops_the_workload_and_removes_session_sidecars,
    a_secret_is_a_file_in_the_sidecar_and_nowhere_in_inspect,
    an_engine_elsewhere_gets_secrets_copied_and_readiness_probed_from_inside,
    the_web_sidecar_example_runs,
    a_sidecar_joins_its_extra_networks,
    a_workload_on_the_hosts_network_or_its_own_reaches_a_session_sidecar,
    up_prints_the_env_for_the_host_and_logs_shows_a_sidecars_output,
    a_volume_sidecar_shares_its_volume_and_an_mcp_sidecar_is_listed_in_the_mcp_file,
    an_engine_over_tcp_serves_a_run,
    the_engines_reach_is_asked_once_and_remembered,
    a_missing_image_is_pulled_with_progress_and_a_failed_pull_is_named => [Need::Registry],
    a_host_workload_is_refused_on_an_engine_elsewhere_before_anything_is_made,
    a_private_image_is_pulled_with_the_docker_clis_credentials => [Need::Registry],
    an_engine_over_ssh_serves_a_run_and_the_workload => [Need::Sshd],
    log_readiness_sees_its_line_however_late_the_engine_hands_the_log_over,
    a_container_removed_between_look_and_start_is_made_afresh,
    an_engine_too_slow_for_its_limit_is_named_and_the_limit_is_a_setting,
];

/// A project of its own per test, removed with everything in it at the end.
struct Project {
    bundle: Bundle,
    name: String,
}

impl Project {
    fn new(test: &str, body: &str) -> Project {
        let name = format!("rt-{test}-{}", std::process::id());
        let bundle = Bundle::new(&format!("version: 1\nproject: {name}\n{body}"));
        Project { bundle, name }
    }

    fn write(&self, body: &str) {
        std::fs::write(
            self.bundle.file(),
            format!("version: 1\nproject: {}\n{body}", self.name),
        )
        .unwrap();
    }

    /// tether with this project's declaration, and a docker CLI configuration of its own
    /// (empty: what this machine's user keeps there plays no part).
    fn command(&self, sub: &str, args: &[&str]) -> Command {
        let config = self.bundle.dir.path().join("docker-config");
        std::fs::create_dir_all(&config).unwrap();
        let mut c = Command::new(tether_bin());
        c.env("DOCKER_CONFIG", config)
            .arg(sub)
            .arg("-f")
            .arg(self.bundle.file())
            .args(args);
        c
    }

    /// `tether run -- ARGS`: (code, stdout, stderr).
    fn run(&self, argv: &[&str]) -> (i32, String, String) {
        let out = self
            .command("run", &[])
            .arg("--")
            .args(argv)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `tether run -- true` with one variable set for tether.
    fn run_true_with(&self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> std::process::Output {
        self.command("run", &[])
            .env(key, value)
            .args(["--", "true"])
            .output()
            .unwrap()
    }

    fn id(&self, sidecar: &str) -> String {
        text(&docker(&[
            "inspect",
            "-f",
            "{{.Id}}",
            &format!("tether-{}-{sidecar}", self.name),
        ]))
    }

    /// The project's containers, by name.
    fn containers(&self) -> Vec<String> {
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=dev.tether.project={}", self.name),
            "--format",
            "{{.Names}}",
        ]);
        let mut names: Vec<String> = text(&out).lines().map(str::to_owned).collect();
        names.sort();
        names
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.command("down", &["--all"]).output();
    }
}

/// `-- docker run` of a workload that prints the web sidecar's page, reached by name.
fn fetch_web(image: &str) -> [&str; 8] {
    [
        "--",
        "docker",
        "run",
        "--rm",
        image,
        "wget",
        "-qO-",
        "http://web:8080/",
    ]
}

/// The run of [`fetch_web`] succeeded and printed the page.
fn assert_fetched(out: &std::process::Output) {
    assert_eq!(
        (out.status.code(), text(out).as_str()),
        (Some(0), "hello from the sidecar"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn web(image: &str, extra: &str) -> String {
    format!(
        r#"sidecars:
  web:
    image: {image}
    lifecycle: shared
    command: [httpd, -f, -p, "8080", -h, /www]
    interface: {{ kind: port, port: 8080 }}
    readiness: {{ mode: http, path: /, timeout: 20s }}{extra}
"#
    )
}

fn a_workload_container_reaches_a_shared_sidecar_by_name_and_the_next_run_reuses_it() {
    let Some(img) = busybox_image() else { return };
    let p = Project::new("alias", &web(img, ""));
    let (code, out, err) = p.run(&[
        "docker",
        "run",
        "--rm",
        img,
        "wget",
        "-qO-",
        "http://web:8080/",
    ]);
    assert_eq!(
        (code, out.as_str()),
        (0, "hello from the sidecar\n"),
        "{err}"
    );
    assert!(err.contains("tether: web: created\n"), "{err}");
    let first = p.id("web");

    let (code, out, err) = p.run(&[
        "docker",
        "run",
        "--rm",
        img,
        "sh",
        "-c",
        "echo $TETHER_WEB_HOST:$TETHER_WEB_PORT",
    ]);
    assert_eq!((code, out.as_str()), (0, "web:8080\n"), "{err}");
    assert!(
        err.contains("tether: web: reused (running, same configuration)\n"),
        "{err}"
    );
    assert_eq!(p.id("web"), first, "the same container, not a new one");

    // A changed declaration recreates it.
    p.write(&web(img, "\n    env: { GREETING: hi }"));
    let (code, _, err) = p.run(&["docker", "run", "--rm", img, "true"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("tether: web: recreated (its configuration changed)\n"),
        "{err}"
    );
    assert_ne!(p.id("web"), first);
}

fn a_shared_sidecar_with_replicas_is_one_container_here_and_tether_says_so() {
    let Some(img) = busybox_image() else { return };
    let p = Project::new("replicas", &web(img, "\n    replicas: 3"));
    let (code, out, err) = p.run(&fetch_web(img)[1..]);
    assert_eq!(
        (code, out.as_str()),
        (0, "hello from the sidecar\n"),
        "{err}"
    );
    assert!(
        err.contains(
            "tether: web: runs as one container here; its `replicas: 3` is for `tether render`\n"
        ),
        "{err}"
    );
    assert_eq!(p.containers(), [format!("tether-{}-web", p.name)]);
    // The count is a cluster's: changing it does not recreate the container here.
    p.write(&web(img, "\n    replicas: 2"));
    let (code, _, err) = p.run(&["true"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("tether: web: reused (running, same configuration)\n"),
        "{err}"
    );
    assert_eq!(p.containers(), [format!("tether-{}-web", p.name)]);
}

fn a_host_process_reaches_the_sidecar_through_the_injected_env() {
    let Some(img) = busybox_image() else { return };
    let p = Project::new("host", &web(img, ""));
    let (code, out, err) = p.run(&[
        "sh",
        "-c",
        "busybox wget -qO- \"$TETHER_WEB_URL\"; echo \"$TETHER_WEB_HOST\"",
    ]);
    assert_eq!(
        (code, out.as_str()),
        (0, "hello from the sidecar\n127.0.0.1\n"),
        "{err}"
    );
}

fn a_shared_namespace_workload_reaches_its_sidecar_on_loopback() {
    let Some(img) = busybox_image() else { return };
    let p = Project::new(
        "netns",
        &format!(
            "{}workload:\n  network_mode: shared-namespace\n  sidecar: web\n",
            web(img, "")
        ),
    );
    let (code, out, err) = p.run(&[
        "docker",
        "run",
        "--rm",
        img,
        "wget",
        "-qO-",
        "http://127.0.0.1:8080/",
    ]);
    assert_eq!(
        (code, out.as_str()),
        (0, "hello from the sidecar\n"),
        "{err}"
    );
}

fn every_readiness_mode_gates_the_workload() {
    let Some(img) = busybox_image() else { return };
    // Each sidecar becomes ready only after a delay; the workload fails unless all of them are.
    let body = format!(
        r#"sidecars:
  tcp:
    image: {img}
    lifecycle: session
    command: [sh, -c, "sleep 1; exec nc -ll -p 7000 -e echo tcp-ok"]
    interface: {{ kind: port, port: 7000 }}
    readiness: {{ mode: tcp, timeout: 20s, interval: 100ms }}
  http:
    image: {img}
    lifecycle: session
    command: [sh, -c, "sleep 1; exec httpd -f -p 8080 -h /www"]
    interface: {{ kind: port, port: 8080 }}
    readiness: {{ mode: http, path: /, timeout: 20s, interval: 100ms }}
  exec:
    image: {img}
    lifecycle: session
    command: [sh, -c, "sleep 1; touch /tmp/up; exec nc -ll -p 7001 -e echo exec-ok"]
    interface: {{ kind: port, port: 7001 }}
    readiness: {{ mode: exec, command: [test, -f, /tmp/up], timeout: 20s, interval: 100ms }}
  health:
    image: {img}
    lifecycle: session
    command: [sh, -c, "sleep 1; touch /tmp/up; exec nc -ll -p 7002 -e echo health-ok"]
    interface: {{ kind: port, port: 7002 }}
    readiness: {{ mode: healthcheck, command: [test, -f, /tmp/up], timeout: 20s, interval: 200ms }}
  log:
    image: {img}
    lifecycle: session
    # The line comes once the listener is up (a second after it started).
    command: [sh, -c, "nc -ll -p 7003 -e echo log-ok & sleep 1; echo warmed up; wait"]
    interface: {{ kind: port, port: 7003 }}
    readiness: {{ mode: log, pattern: "warmed up", timeout: 20s, interval: 100ms }}
"#
    );
    let p = Project::new("modes", &body);
    let (code, out, err) = p.run(&[
        "docker",
        "run",
        "--rm",
        img,
        "sh",
        "-c",
        // Every listener starts only after its sidecar became ready: each answers only if
        // the workload waited for all of them.
        "nc tcp 7000 </dev/null && wget -qO- http://http:8080/ && nc exec 7001 </dev/null \
         && nc health 7002 </dev/null && nc log 7003 </dev/null && echo all-ready",
    ]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "tcp-ok\nhello from the sidecar\nexec-ok\nhealth-ok\nlog-ok\nall-ready\n"
        ),
        "{err}"
    );
    for s in ["tcp", "http", "exec", "health", "log"] {
        assert!(err.contains(&format!("tether: {s}: ready in ")), "{err}");
    }
    // Session sidecars are gone after the run.
    assert_eq!(p.containers(), Vec::<String>::new());
}

fn a_sidecar_that_never_gets_ready_fails_the_run_and_leaves_nothing() {
    let Some(img) = busybox_image() else { return };
    let body = format!(
        r#"sidecars:
  stuck:
    image: {img}
    lifecycle: session
    command: [sh, -c, "echo starting up; exec sleep 1000"]
    interface: {{ kind: port, port: 9 }}
    readiness: {{ mode: tcp, timeout: 1s, interval: 100ms }}
"#
    );
    let p = Project::new("stuck", &body);
    let (code, _, err) = p.run(&["docker", "run", "--rm", img, "echo", "never"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("error: sidecar stuck: not ready within 1s (tcp :9"),
        "{err}"
    );
    assert!(err.contains("\n  | starting up\n"), "{err}");
    assert_eq!(p.containers(), Vec::<String>::new());
}

fn ctrl_c_stops_the_workload_and_removes_session_sidecars() {
    let Some(img) = busybox_image() else { return };
    let body = format!(
        r#"sidecars:
  helper:
    image: {img}
    lifecycle: session
    command: [sleep, "1000"]
    interface: {{ kind: none }}
    readiness: {{ mode: none }}
"#
    );
    let p = Project::new("ctrlc", &body);
    let mut cmd = p.command("run", &[]);
    // The plan labels the workload container with the project too.
    cmd.args(["--", "docker", "run", "--rm"]).args([
        img,
        "sh",
        "-c",
        "echo workload up; exec sleep 1000",
    ]);
    let mut run = Run::spawn(cmd);
    run.wait_for("workload up");
    assert_eq!(
        p.containers().len(),
        2,
        "the session sidecar and the workload"
    );
    run.signal(2);
    let (code, lines) = run.finish();
    assert_eq!(code, 130, "{}", lines.join("\n"));
    eventually("the workload container is gone too", || {
        p.containers().is_empty()
    });
}

fn a_secret_is_a_file_in_the_sidecar_and_nowhere_in_inspect() {
    let Some(img) = busybox_image() else { return };
    let body = format!(
        r#"sidecars:
  vault:
    image: {img}
    lifecycle: shared
    command: [sleep, "1000"]
    interface: {{ kind: none }}
    readiness: {{ mode: exec, command: [test, -f, /run/secrets/token] }}
    secrets: [{{ name: token, from: "env:RT_SECRET_TOKEN" }}]
"#
    );
    let p = Project::new("secret", &body);
    let out = p.run_true_with("RT_SECRET_TOKEN", "s3cr3t-v4lue");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = format!("tether-{}-vault", p.name);
    assert_eq!(
        text(&docker(&["exec", &name, "cat", "/run/secrets/token"])),
        "s3cr3t-v4lue"
    );
    // Readable by whatever user the sidecar's process runs as.
    let listing = text(&docker(&["exec", &name, "ls", "-l", "/run/secrets/token"]));
    assert!(listing.starts_with("-rw-r--r--"), "{listing}");
    let inspect = text(&docker(&["inspect", &name]));
    assert!(!inspect.contains("s3cr3t-v4lue"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cr3t-v4lue"));
    // `down` takes the file on this host away with the container.
    let kept = std::path::PathBuf::from(format!("/dev/shm/tether-{}/{name}", nix_uid()));
    assert!(kept.join("token").exists());
    let down = p.command("down", &["--all"]).output().unwrap();
    assert_eq!(down.status.code(), Some(0));
    assert!(!kept.exists());
}

/// An engine that is not on this host (forced here: the machine's own engine stands in for
/// it) gets secrets copied in and is probed from inside each sidecar's network namespace.
fn an_engine_elsewhere_gets_secrets_copied_and_readiness_probed_from_inside() {
    let Some(img) = busybox_image() else { return };
    let body = format!(
        r#"sidecars:
  web:
    image: {img}
    lifecycle: session
    command: [sh, -c, "sleep 1; exec httpd -f -p 8080 -h /www"]
    interface: {{ kind: port, port: 8080 }}
    readiness: {{ mode: http, path: /, timeout: 20s, interval: 100ms }}
    secrets: [{{ name: token, from: "env:RT_REMOTE_TOKEN" }}]
  echo:
    image: {img}
    lifecycle: session
    command: [sh, -c, "sleep 1; exec nc -ll -p 7000 -e cat"]
    interface: {{ kind: port, port: 7000 }}
    readiness: {{ mode: tcp, timeout: 20s, interval: 100ms }}
"#
    );
    let p = Project::new("remote", &body);
    let out = p
        .command("run", &[])
        .env("TETHER_ENGINE_REMOTE", "1")
        .env("TETHER_LOG", "tether_run=debug,tether_engine=debug")
        .env("RT_REMOTE_TOKEN", "r3mote-s3cret")
        .args([
            "--",
            "docker",
            "run",
            "--rm",
            img,
            "sh",
            "-c",
            // Both were ready when the workload started: no retry here.
            "wget -qO- http://web:8080/ && echo ping | nc echo 7000",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        (out.status.code(), text(&out).as_str()),
        (Some(0), "hello from the sidecar\nping"),
        "{err}"
    );
    for sidecar in ["web:8080", "echo:7000"] {
        let line = format!("probing tether-{}-", p.name);
        assert!(
            err.lines().any(|l| l.contains(&line)
                && l.contains(sidecar)
                && l.contains("from inside its network namespace")),
            "{err}"
        );
    }
    assert!(!err.contains("r3mote-s3cret"), "{err}");
    // Nothing is left: neither the session sidecars nor a probe helper.
    assert_eq!(p.containers(), Vec::<String>::new());

    // The secret: a file, not a bind mount from this host, and in no inspect output (`up`
    // keeps the sidecar to look at).
    let out = p
        .command("up", &["web"])
        .env("TETHER_ENGINE_REMOTE", "1")
        .env("RT_REMOTE_TOKEN", "r3mote-s3cret")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = p.containers().join(" ");
    assert!(name.ends_with("-web"), "{name}");
    assert_eq!(
        text(&docker(&["exec", &name, "cat", "/run/secrets/token"])),
        "r3mote-s3cret"
    );
    let listing = text(&docker(&["exec", &name, "ls", "-l", "/run/secrets/token"]));
    assert!(listing.starts_with("-r--r--r--"), "{listing}");
    let inspect = text(&docker(&["inspect", &name]));
    assert!(!inspect.contains("r3mote-s3cret"));
    assert!(!inspect.contains("/dev/shm"), "{inspect}");
}

/// The README's `tether run` quick start, as written.
fn the_web_sidecar_example_runs() {
    if busybox_image().is_none() {
        return;
    }
    let root = repo();
    let built = Command::new(root.join("examples/web-sidecar/build-image"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let file = root.join("examples/web-sidecar/tether.yaml");
    let out = Command::new(tether_bin())
        .args(["run", "-f"])
        .arg(&file)
        .args([
            "--",
            "docker",
            "run",
            "--rm",
            "tether-example/busybox",
            "sh",
            "-c",
            "wget -qO- http://web:8080/; echo ping | nc echo 7000",
        ])
        .output()
        .unwrap();
    let down = Command::new(tether_bin())
        .args(["down", "--all", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the web sidecar\nping\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&down.stderr),
        "removed tether-web-sidecar-web\nremoved network tether-web-sidecar\n"
    );
}

fn a_sidecar_joins_its_extra_networks() {
    let Some(img) = busybox_image() else { return };
    let net = format!("rt-extra-{}", std::process::id());
    assert!(docker(&["network", "create", &net]).status.success());
    let p = Project::new("extra", &web(img, &format!("\n    networks: [{net}]")));
    let (code, _, err) = p.run(&["true"]);
    assert_eq!(code, 0, "{err}");
    // Another container on that network (not the project's) reaches it by container name.
    let container = format!("tether-{}-web", p.name);
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        &net,
        img,
        "wget",
        "-qO-",
        &format!("http://{container}:8080/"),
    ]);
    drop(p);
    let _ = docker(&["network", "rm", &net]);
    assert_eq!(text(&out), "hello from the sidecar");
}

fn a_workload_on_the_hosts_network_or_its_own_reaches_a_session_sidecar() {
    let Some(img) = busybox_image() else { return };
    let session = web(img, "").replace("lifecycle: shared", "lifecycle: session");
    let p = Project::new("ownnet", &session);
    let fetch = "wget -qO- http://$TETHER_WEB_HOST:$TETHER_WEB_PORT/";

    // --network host: the port is published on 127.0.0.1 and the CLI passes the values on.
    let (code, out, err) = p.run(&[
        "docker",
        "run",
        "--rm",
        "--network",
        "host",
        img,
        "sh",
        "-c",
        fetch,
    ]);
    assert_eq!(
        (code, out.as_str()),
        (0, "hello from the sidecar\n"),
        "{err}"
    );

    // A network of the user's own: the sidecar joins it under its name.
    let net = format!("rt-ownnet-{}", std::process::id());
    assert!(docker(&["network", "create", &net]).status.success());
    let (code, out, err) = p.run(&[
        "docker",
        "run",
        "--rm",
        &format!("--network={net}"),
        img,
        "sh",
        "-c",
        &format!("echo $TETHER_WEB_HOST; {fetch}"),
    ]);
    let left = p.containers();
    let _ = docker(&["network", "rm", &net]);
    assert_eq!(
        (code, out.as_str()),
        (0, "web\nhello from the sidecar\n"),
        "{err}"
    );
    assert_eq!(left, Vec::<String>::new());

    // One that does not exist is named, and nothing is left behind.
    let (code, _, err) = p.run(&["docker", "run", "--rm", "--network", &net, img, "true"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("error: the network `{net}` does not exist\n")),
        "{err}"
    );
    assert_eq!(p.containers(), Vec::<String>::new());
}

fn up_prints_the_env_for_the_host_and_logs_shows_a_sidecars_output() {
    let Some(img) = busybox_image() else { return };
    let body = format!(
        r#"sidecars:
  chatty:
    image: {img}
    lifecycle: session
    # httpd goes to the background once it listens; only then is the line written.
    command: [sh, -c, "httpd -p 8080 -h /www && echo first line; echo second line >&2; exec sleep 100000"]
    interface: {{ kind: port, port: 8080 }}
    readiness: {{ mode: log, pattern: "first line" }}
"#
    );
    let p = Project::new("up", &body);
    let out = p.command("up", &["--env"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = env.lines().collect();
    assert_eq!(lines[0], "export TETHER_CHATTY_HOST=127.0.0.1");
    assert!(lines[1].starts_with("export TETHER_CHATTY_PORT="), "{env}");
    // The printed lines work as written in a shell on this host.
    let fetched = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{env}busybox wget -qO- http://$TETHER_CHATTY_HOST:$TETHER_CHATTY_PORT/"
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&fetched.stdout),
        "hello from the sidecar\n"
    );
    let logs = Command::new(tether_bin())
        .args(["logs", "--file"])
        .arg(p.bundle.file())
        .args(["chatty", "--tail", "5"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "first line\n");
    assert_eq!(String::from_utf8_lossy(&logs.stderr), "second line\n");
    // Made by `up`, owned by no run: still there until `tether down`, and ready.
    assert_eq!(p.containers(), [format!("tether-{}-up-chatty", p.name)]);
    let ps = p.command("ps", &["--json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    assert_eq!(rows[0]["sidecar"], "chatty");
    assert_eq!(rows[0]["state"], "running");
    assert_eq!(rows[0]["ready"], true);
}

fn a_volume_sidecar_shares_its_volume_and_an_mcp_sidecar_is_listed_in_the_mcp_file() {
    let Some(img) = busybox_image() else { return };
    let volume = format!("rt-vol-{}", std::process::id());
    let body = format!(
        r#"sidecars:
  data:
    image: {img}
    lifecycle: session
    command: [sh, -c, "echo shared-data > /data/hello; exec sleep 1000"]
    interface: {{ kind: volume, volume: {volume}, mountpoint: /data }}
    readiness: {{ mode: exec, command: [test, -f, /data/hello] }}
  docs:
    image: {img}
    lifecycle: session
    command: [httpd, -f, -p, "8000", -h, /www]
    interface: {{ kind: mcp, name: docs-mcp, port: 8000, path: /mcp }}
"#
    );
    let p = Project::new("volmcp", &body);
    let (code, out, err) = p.run(&[
        "docker",
        "run",
        "--rm",
        img,
        "sh",
        "-c",
        "cat /data/hello; cat $TETHER_MCP_CONFIG",
    ]);
    let _ = docker(&["volume", "rm", &volume]);
    assert_eq!(code, 0, "{err}");
    let (first, json) = out.split_once('\n').unwrap();
    assert_eq!(first, "shared-data");
    let mcp: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert!(
        mcp.to_string().contains("http://docs-mcp:8000/mcp"),
        "{mcp}"
    );
}

/// `DOCKER_HOST=tcp://…`: the engine reached over TCP (a relay to its socket stands in for an
/// engine listening on a port), with the same results.
fn an_engine_over_tcp_serves_a_run() {
    let Some(img) = busybox_image() else { return };
    let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = relay.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in relay.incoming().flatten() {
            let Ok(engine) = std::os::unix::net::UnixStream::connect("/var/run/docker.sock") else {
                continue;
            };
            let (mut c1, mut e1) = (client.try_clone().unwrap(), engine.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut e1);
                let _ = e1.shutdown(std::net::Shutdown::Write);
            });
            let (mut c2, mut e2) = (client, engine);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut e2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    let p = Project::new("tcp", &web(img, ""));
    let out = p
        .command("run", &[])
        .env("DOCKER_HOST", format!("tcp://127.0.0.1:{port}"))
        .args(fetch_web(img))
        .output()
        .unwrap();
    assert_fetched(&out);
}

/// The engine's info (milliseconds on every run) is asked once per engine: what it says of
/// this host is remembered beside the secrets, named after the engine's socket.
fn the_engines_reach_is_asked_once_and_remembered() {
    let Some(img) = busybox_image() else { return };
    // A path of this test's own to the engine's socket: a name no other run has remembered.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    std::os::unix::fs::symlink("/var/run/docker.sock", &socket).unwrap();
    let p = Project::new("reach", &web(img, ""));
    let run = || {
        p.command("run", &[])
            .env("DOCKER_HOST", format!("unix://{}", socket.display()))
            .env("TETHER_LOG", "tether_run=debug,tether_engine=debug")
            .args(["--", "true"])
            .output()
            .unwrap()
    };
    let memos = || -> Vec<(String, String)> {
        let base = format!("/dev/shm/tether-{}", nix_uid());
        let mut found: Vec<(String, String)> = std::fs::read_dir(&base)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("engine-"))
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect();
        found.sort();
        found
    };
    let before = memos();
    let first = run();
    let err = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(0), "{err}");
    assert!(
        err.contains("the engine's reach"),
        "asked the first time: {err}"
    );
    // This machine's own engine: files shared, addresses routable, ports here, probe runs.
    let new: Vec<(String, String)> = memos()
        .into_iter()
        .filter(|m| !before.contains(m))
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0].1, "1111");
    let second = run();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(0), "{err}");
    assert!(!err.contains("the engine's reach"), "remembered: {err}");
    let _ = std::fs::remove_file(format!("/dev/shm/tether-{}/{}", nix_uid(), new[0].0));
}

fn nix_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// A registry on this machine (Debian's docker-registry), stopped when dropped.
struct Registry {
    _server: Server,
    _dir: tempfile::TempDir,
    address: String,
}

impl Registry {
    fn start() -> Option<Registry> {
        Registry::start_with("")
    }

    /// With `user:password` (only that user may push or pull).
    fn private(user: &str, password: &str) -> Option<Registry> {
        let hash = bcrypt::hash(password, 5).unwrap();
        Registry::start_with(&format!("{user}:{hash}"))
    }

    fn start_with(htpasswd: &str) -> Option<Registry> {
        let installed = Command::new("docker-registry")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !require(
            installed,
            "no docker-registry (apt-get install docker-registry)",
        ) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        let auth = if htpasswd.is_empty() {
            String::new()
        } else {
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{htpasswd}\n")).unwrap();
            format!(
                "auth:\n  htpasswd:\n    realm: tether-test\n    path: {}\n",
                file.display()
            )
        };
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let server = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        eventually("the registry listens", || {
            std::net::TcpStream::connect(&address).is_ok()
        });
        Some(Registry {
            _server: Server(server),
            _dir: dir,
            address,
        })
    }
}

impl Registry {
    /// Pushes `img` here as `NAME:1` (with the docker CLI's configuration in `config`, when
    /// given) and removes the local tag: the image is then in this registry only.
    fn only_there(&self, img: &str, name: &str, config: Option<&std::path::Path>) -> String {
        let remote = format!("{}/{name}-{}:1", self.address, std::process::id());
        assert!(docker(&["tag", img, &remote]).status.success());
        let mut push = Command::new("docker");
        if let Some(c) = config {
            push.arg("--config").arg(c);
        }
        let pushed = push.args(["push", &remote]).output().unwrap();
        assert!(
            pushed.status.success(),
            "{}",
            String::from_utf8_lossy(&pushed.stderr)
        );
        assert!(docker(&["rmi", &remote]).status.success());
        remote
    }
}

fn a_missing_image_is_pulled_with_progress_and_a_failed_pull_is_named() {
    let Some(img) = busybox_image() else { return };
    let Some(registry) = Registry::start() else {
        return;
    };
    let remote = registry.only_there(img, "tether-pull", None);

    let p = Project::new("pull", &web(&remote, ""));
    let out = p
        .command("run", &["--json"])
        .args(fetch_web(img))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        (out.status.code(), text(&out).as_str()),
        (Some(0), "hello from the sidecar"),
        "{err}"
    );
    let first = err.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            r#"{{"sidecar":"web","status":"pulling","detail":{{"image":"{remote}","percent":null}}}}"#
        )
    );
    drop(p);
    let _ = docker(&["rmi", &remote]);

    // Not in the registry: the image and the registry's answer are named.
    let missing = format!("{}/tether-nope:1", registry.address);
    let p = Project::new("nopull", &web(&missing, ""));
    let (code, _, err) = p.run(&["true"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!(
            "error: sidecar web: cannot pull `{missing}`: manifest for {missing} not found"
        )),
        "{err}"
    );

    // --pull never: not even asked.
    let out = p
        .command("run", &["--pull", "never"])
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "error: sidecar web: there is no image `{missing}` on this engine (build it, or let tether pull it)"
        )),
        "{err}"
    );
}

fn a_host_workload_is_refused_on_an_engine_elsewhere_before_anything_is_made() {
    let Some(img) = busybox_image() else { return };
    let p = Project::new("hostelsewhere", &web(img, ""));
    let out = p.run_true_with("TETHER_ENGINE_REMOTE", "1");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: the engine at unix:///var/run/docker.sock runs on another machine: the ports it publishes are on that machine's 127.0.0.1, not this one's\n\
         \x20 = hint: run the workload as a container (`tether run -- docker run …`), which reaches the sidecars by name\n"
    );
    assert_eq!(p.containers(), Vec::<String>::new());
}

/// The engine pulls with the credentials the docker CLI keeps (`$DOCKER_CONFIG/config.json`).
fn a_private_image_is_pulled_with_the_docker_clis_credentials() {
    let Some(img) = busybox_image() else { return };
    let Some(registry) = Registry::private("tether", "s3cret-pa55") else {
        return;
    };
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "dGV0aGVyOnMzY3JldC1wYTU1"}}}}}}"#,
            registry.address
        ),
    )
    .unwrap();
    let private = registry.only_there(img, "tether-private", Some(config.path()));

    let p = Project::new("private", &web(&private, ""));
    // Without them, the registry's refusal is named.
    let nowhere = tempfile::tempdir().unwrap();
    let out = p.run_true_with("DOCKER_CONFIG", nowhere.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("cannot pull `{private}`: ")), "{err}");
    assert!(err.contains("no basic auth credentials"), "{err}");

    // With every diagnostic on: the password shows nowhere, plain or as config.json has it.
    let out = p
        .command("run", &[])
        .env("DOCKER_CONFIG", config.path())
        .env("TETHER_LOG", "trace")
        .args(fetch_web(img))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        (out.status.code(), text(&out).as_str()),
        (Some(0), "hello from the sidecar"),
        "{}",
        err.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    assert!(err.contains("TRACE"), "diagnostics were on");
    for output in [&out.stdout, &out.stderr] {
        let output = String::from_utf8_lossy(output);
        assert!(!output.contains("s3cret-pa55"));
        assert!(!output.contains("dGV0aGVyOnMzY3JldC1wYTU1"));
    }

    // The same through a credential helper (`credsStore`), asked for this registry.
    assert!(p.command("down", &["--all"]).status().unwrap().success());
    let untagged = docker(&["rmi", &private]);
    assert!(
        untagged.status.success(),
        "{}",
        String::from_utf8_lossy(&untagged.stderr)
    );
    let helpers = tempfile::tempdir().unwrap();
    let helper = helpers.path().join("docker-credential-tethertest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n[ \"$server\" = \"{}\" ] || exit 1\n\
             echo '{{\"ServerURL\":\"'$server'\",\"Username\":\"tether\",\"Secret\":\"s3cret-pa55\"}}'\n",
            registry.address
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let store = tempfile::tempdir().unwrap();
    std::fs::write(
        store.path().join("config.json"),
        r#"{"credsStore": "tethertest"}"#,
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        helpers.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = p
        .command("run", &[])
        .env("DOCKER_CONFIG", store.path())
        .env("PATH", path)
        .args(fetch_web(img))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        (out.status.code(), text(&out).as_str()),
        (Some(0), "hello from the sidecar"),
        "{err}"
    );
    assert!(err.contains(&format!("web: pulling {private}")), "{err}");
    drop(p);
    let _ = docker(&["rmi", &private]);
}

/// An ssh server on this machine, for one test, that lets in one key; stopped when dropped.
struct Sshd {
    _server: Server,
    dir: tempfile::TempDir,
    port: u16,
}

impl Sshd {
    fn start() -> Option<Sshd> {
        let sshd = std::path::Path::new("/usr/sbin/sshd");
        if !require(
            sshd.exists() && nix_uid() == 0,
            "no sshd, or not root (apt-get install openssh-server)",
        ) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for key in ["host_key", "client_key"] {
            let made = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .unwrap();
            assert!(made.success());
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nStrictModes no\n\
                 AllowStreamLocalForwarding yes\nPidFile none\n",
                d.join("host_key").display(),
                d.join("authorized_keys").display()
            ),
        )
        .unwrap();
        // The client side: this key, and no known-hosts file of the user's touched.
        std::fs::write(
            d.join("ssh_config"),
            format!(
                "Host *\n  IdentityFile {}\n  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  LogLevel ERROR\n",
                d.join("client_key").display()
            ),
        )
        .unwrap();
        let server = Command::new(sshd)
            .arg("-D")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .arg("-E")
            .arg(d.join("sshd.log"))
            .spawn()
            .unwrap();
        eventually("sshd listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(Sshd {
            _server: Server(server),
            dir,
            port,
        })
    }

    fn ssh_command(&self) -> String {
        format!("ssh -F {}", self.dir.path().join("ssh_config").display())
    }
}

/// `DOCKER_HOST=ssh://…`: tether forwards the engine's socket with ssh (the user's own, here
/// told which key to use) and hands the same tunnel to the workload's docker CLI.
fn an_engine_over_ssh_serves_a_run_and_the_workload() {
    let Some(img) = busybox_image() else { return };
    let Some(sshd) = Sshd::start() else { return };
    let p = Project::new("ssh", &web(img, ""));
    let out = p
        .command("run", &[])
        .env("DOCKER_HOST", format!("ssh://root@127.0.0.1:{}", sshd.port))
        .env("TETHER_SSH_COMMAND", sshd.ssh_command())
        .args(fetch_web(img))
        .output()
        .unwrap();
    assert_fetched(&out);
    // The tunnel's socket went with the run.
    let base = format!("/dev/shm/tether-{}", nix_uid());
    let left: Vec<String> = std::fs::read_dir(&base)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ssh-"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}

/// A session sidecar that says `listening` at once, with log readiness.
fn talker(img: &str, lifecycle: &str) -> String {
    format!(
        r#"sidecars:
  talker:
    image: {img}
    lifecycle: {lifecycle}
    command: [sh, -c, "echo listening; exec sleep 1000"]
    interface: {{ kind: none }}
    readiness: {{ mode: log, pattern: "^listening$", timeout: 60s, interval: 100ms }}
"#
    )
}

fn log_readiness_sees_its_line_however_late_the_engine_hands_the_log_over() {
    let Some(img) = busybox_image() else { return };
    let p = Project::new("slowlog", &talker(img, "session"));
    // Every read of a container's log is answered 6 s late: later than one readiness attempt
    // may take (5 s). Reading the whole log again each attempt never saw the line; following
    // it sees it once the engine hands it over.
    let proxy = EngineProxy::start(|method, path| {
        if method == "GET" && path.ends_with("/logs") {
            std::thread::sleep(std::time::Duration::from_secs(6));
        }
    });
    let out = p.run_true_with("DOCKER_HOST", proxy.docker_host());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("tether: talker: ready in "), "{err}");
    assert_eq!(p.containers(), Vec::<String>::new());
}

fn a_container_removed_between_look_and_start_is_made_afresh() {
    let Some(img) = busybox_image() else { return };
    let p = Project::new("vanish", &talker(img, "shared"));
    let (code, _, err) = p.run(&["true"]);
    assert_eq!(code, 0, "{err}");
    let old = p.id("talker");
    assert!(docker(&["stop", "-t", "0", &old]).status.success());
    // The next run finds it stopped with the same configuration and starts it; just before the
    // start reaches the engine, the container is removed (as a concurrent `tether down` would).
    let (id, start) = (old.clone(), format!("/containers/{old}/start"));
    let once = std::sync::atomic::AtomicBool::new(false);
    let proxy = EngineProxy::start(move |method, path| {
        let matches = method == "POST" && path == start;
        if matches && !once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            assert!(docker(&["rm", "-f", &id]).status.success());
        }
    });
    let out = p.run_true_with("DOCKER_HOST", proxy.docker_host());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("tether: talker: recreated (its old container was being removed)\n"),
        "{err}"
    );
    let new = p.id("talker");
    assert!(!new.is_empty() && new != old, "{old} {new}");
}

fn an_engine_too_slow_for_its_limit_is_named_and_the_limit_is_a_setting() {
    let Some(img) = busybox_image() else { return };
    let p = Project::new("slowcreate", &talker(img, "shared"));
    // Every create is answered 3 s late.
    let proxy = EngineProxy::start(|method, path| {
        if method == "POST" && path == "/containers/create" {
            std::thread::sleep(std::time::Duration::from_secs(3));
        }
    });
    let run = |limit: Option<&str>| {
        let mut c = p.command("run", &[]);
        c.env("DOCKER_HOST", proxy.docker_host())
            .env_remove("TETHER_ENGINE_TIMEOUT");
        if let Some(l) = limit {
            c.env("TETHER_ENGINE_TIMEOUT", l);
        }
        c.args(["--", "true"]).output().unwrap()
    };
    let out = run(Some("1s"));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "tether: talker: failed: the engine took longer than 1s to create container tether-{0}-talker\n\
             error: the engine took longer than 1s to create container tether-{0}-talker\n  \
             = hint: the engine is reachable but slow (a busy machine?); TETHER_ENGINE_TIMEOUT=4s gives every engine call more time\n",
            p.name
        )
    );
    // A create that outlived its limit may still have been made: the next run finds it by name
    // and label. With the default limits, the slow engine is waited out.
    let out = run(None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("tether: talker: ready in "), "{err}");
    // A setting that is not a duration is refused before anything is made.
    let out = run(Some("soon"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: TETHER_ENGINE_TIMEOUT=`soon`: "),
        "{err}"
    );
    assert!(
        err.ends_with("\n  = hint: give a duration: 90s, 5m\n"),
        "{err}"
    );
}
