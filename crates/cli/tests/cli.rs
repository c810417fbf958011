//! The `tether` binary end to end: exit codes, stdout and stderr, on the real example files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn tether(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .current_dir(cwd)
        .env_remove("NO_COLOR")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_passes_check() {
    let examples: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path().join("tether.yaml"))
        .filter(|p| p.is_file())
        .collect();
    assert!(examples.len() >= 3, "expected at least three examples");
    for e in examples {
        let out = tether(&["check", "-f", e.to_str().unwrap()], &repo());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            e.display(),
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains(": valid (project "));
    }
}

#[test]
fn schema_good_and_bad_files_agree_with_check() {
    let dir = repo().join("tests/schema");
    let good = yaml_files(&dir.join("good"));
    let bad = yaml_files(&dir.join("bad"));
    assert!(!good.is_empty() && bad.len() >= 4);
    for f in good {
        let out = tether(&["check", "-f", f.to_str().unwrap()], &repo());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            f.display(),
            text(&out.stderr)
        );
    }
    for f in bad {
        let out = tether(&["check", "-f", f.to_str().unwrap()], &repo());
        assert_eq!(out.status.code(), Some(1), "{} was accepted", f.display());
        assert!(text(&out.stderr).contains("problem"), "{}", f.display());
    }
}

#[test]
fn check_reports_every_mistake_with_its_position_and_exits_1() {
    let dir = tempdir("several-mistakes");
    std::fs::write(
        dir.join("tether.yaml"),
        "version: 1\nsidecars:\n  cache:\n    image: redis:7\n    lifecycle: forever\n    interface: { kind: port, port: 70000 }\n    readiness: { timeout: soon }\n",
    )
    .unwrap();
    // Found from a subfolder, as `tether` looks in parent folders.
    std::fs::create_dir_all(dir.join("src/deep")).unwrap();
    let out = tether(&["check"], &dir.join("src/deep"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    let err = text(&out.stderr);
    let positions: Vec<&str> = err
        .lines()
        .filter(|l| l.trim_start().starts_with("-->"))
        .collect();
    let name = dir.join("tether.yaml").display().to_string();
    assert_eq!(
        positions,
        [
            format!(" --> {name}:5:16"),
            format!(" --> {name}:6:36"),
            format!(" --> {name}:7:27"),
        ]
    );
    assert!(err.ends_with("error: found 3 problems in the declaration; nothing was changed\n"));

    let out = tether(&["check", "--json"], &dir);
    assert_eq!(out.status.code(), Some(1));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "sidecars.cache.lifecycle",
            "sidecars.cache.interface.port",
            "sidecars.cache.readiness.timeout"
        ]
    );
    assert_eq!(list[0]["line"], 5);
    assert_eq!(list[0]["file"], "tether.yaml");
}

/// A declaration that does not parse shows the syntax error's line with the secret on it
/// blanked, as a validated one would: `tether check` never prints the value.
#[test]
fn check_blanks_a_secret_on_the_line_of_a_syntax_error() {
    let dir = tempdir("syntax-secret");
    std::fs::write(
        dir.join("tether.yaml"),
        "version: 1\nsidecars:\n  db:\n    image: postgres\n    environment:\n      USER: bob\n      DB_PASSWORD: hunter2: x\n",
    )
    .unwrap();
    let out = tether(&["check"], &dir);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: this is not valid YAML: mapping values are not allowed in this context
 --> tether.yaml:7:27
  |
7 |       DB_PASSWORD: **********
  |                           ^

error: found 1 problem in the declaration; nothing was changed
"
    );
    let out = tether(&["check", "--json"], &dir);
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("mapping values are not allowed"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn a_missing_declaration_is_a_clear_error() {
    let dir = tempdir("empty");
    let out = tether(&["check"], &dir);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "error: no tether.yaml in {} or any folder above it\n",
            dir.display()
        )),
        "{err}"
    );
    let out = tether(&["check", "-f", "nope.yaml"], &dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: cannot read nope.yaml: "));
}

#[test]
fn config_prints_the_resolved_declaration_with_defaults_and_origins() {
    let out = tether(
        &["config", "--json", "-f", "examples/plugin-bus/tether.yaml"],
        &repo(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bus = &v["sidecars"]["bus"];
    assert_eq!(bus["origin"]["file"], "examples/plugin-bus/tether.yaml");
    assert!(bus["origin"]["line"].as_u64().unwrap() > 1);
    assert_eq!(bus["readiness"]["mode"], "http");
    assert_eq!(bus["readiness"]["port"], 9192);
    assert_eq!(bus["readiness"]["interval"], "250ms");
    // Defaults filled in: the declared health endpoint's ready path.
    assert_eq!(bus["health"]["ready"], "/readyz");
    assert_eq!(v["env_prefix"], "TETHER");
    assert_eq!(v["workload"]["network_mode"], "shared-namespace");

    let yaml = tether(
        &["config", "-f", "examples/plugin-bus/tether.yaml"],
        &repo(),
    );
    assert_eq!(yaml.status.code(), Some(0));
    assert!(text(&yaml.stdout).contains(
        "\n  bus:\n    name: bus\n    origin:\n      file: examples/plugin-bus/tether.yaml\n"
    ));
}

#[test]
fn schema_prints_the_published_schema() {
    let out = tether(&["schema"], &repo());
    assert_eq!(out.status.code(), Some(0));
    let on_disk = std::fs::read_to_string(repo().join("crates/spec/schema.json")).unwrap();
    assert_eq!(text(&out.stdout), on_disk);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["properties"]["version"]["const"], 1);
}

#[test]
fn plan_prints_containers_readiness_and_the_rewritten_command() {
    let out = tether(
        &[
            "plan",
            "-f",
            "examples/plugin-bus/tether.yaml",
            "--session",
            "t1",
            "--",
            "docker",
            "run",
            "--rm",
            "plugin:dev",
            "--network",
            "x",
        ],
        &repo(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    insta::assert_snapshot!(text(&out.stdout));

    let out = tether(
        &[
            "plan",
            "--json",
            "-f",
            "examples/dev-services/tether.yaml",
            "--session",
            "t1",
            "--",
            "pytest",
            "-x",
        ],
        &repo(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["target"], "host-process");
    assert_eq!(v["argv"], serde_json::json!(["pytest", "-x"]));
    assert_eq!(v["sidecars"][0]["publish"], serde_json::json!([5432]));
}

#[test]
fn plan_refuses_a_conflicting_network_and_a_bad_session() {
    let out = tether(
        &[
            "plan",
            "-f",
            "examples/dev-services/tether.yaml",
            "--session",
            "t1",
            "--",
            "docker",
            "run",
            "--network",
            "bridge",
            "app",
        ],
        &repo(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: the workload's `--network bridge` is the default bridge, where sidecars have no names; remove the option (tether joins it to `tether-dev-services`) or name a network of your own\n"
    );
    let out = tether(
        &[
            "plan",
            "-f",
            "examples/dev-services/tether.yaml",
            "--session",
            "Bad!",
            "--",
            "x",
        ],
        &repo(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: --session: `Bad!` contains `B`"));
}

#[test]
fn every_command_has_help_with_examples_and_a_version() {
    for cmd in ["check", "config", "schema", "plan"] {
        let out = tether(&[cmd, "--help"], &repo());
        assert_eq!(out.status.code(), Some(0));
        assert!(
            text(&out.stdout).contains("Examples:"),
            "{cmd} --help has no examples"
        );
    }
    let out = tether(&["--version"], &repo());
    assert_eq!(
        text(&out.stdout),
        format!("tether {}\n", env!("CARGO_PKG_VERSION"))
    );
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP server on a free port answering every request with `status`, from a thread.
fn http_server(status: u16) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.0 {status} X\r\nContent-Length: 0\r\n\r\n");
        }
    });
    port
}

#[test]
fn wait_returns_once_every_target_answers() {
    // A TCP port that starts listening only later, and an HTTP endpoint that answers 200.
    let later = free_port();
    let opener = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let l = std::net::TcpListener::bind(("127.0.0.1", later)).unwrap();
        // Kept open until a connection came.
        let _ = l.accept();
    });
    let http = http_server(200);
    let tcp = format!("127.0.0.1:{later}");
    let url = format!("http://127.0.0.1:{http}/healthz");
    let out = tether(&["wait", "--interval", "50ms", &tcp, &url], &repo());
    opener.join().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let mut names: Vec<&str> = err
        .lines()
        .map(|l| {
            l.strip_prefix("tether: ")
                .and_then(|l| l.split(" is ready (").next())
                .unwrap_or(l)
        })
        .collect();
    names.sort();
    let mut want = vec![tcp.as_str(), url.as_str()];
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn wait_names_what_was_not_ready_in_time() {
    let closed = format!("127.0.0.1:{}", free_port());
    let refusing = format!("http://127.0.0.1:{}/", http_server(503));
    let out = tether(
        &[
            "wait",
            "-q",
            "--timeout",
            "300ms",
            "--interval",
            "50ms",
            &closed,
            &refusing,
        ],
        &repo(),
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        text(&out.stderr),
        format!("error: not ready after 300ms: {closed}, {refusing}\n")
    );
    let out = tether(&["wait", "db"], &repo());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: `db` is not something to wait for (use HOST:PORT, tcp://HOST:PORT or http://HOST:PORT/PATH)\n"
    );
}
