//! `tether run` before any engine is involved: validation first, and no engine at all when
//! there is nothing to start.

mod support;

use std::process::Command;

use support::*;

const NOWHERE: &str = "unix:///nonexistent/tether-test.sock";

fn run(b: &Bundle, argv: &[&str]) -> (i32, String, String) {
    let out = Command::new(tether_bin())
        .args(["run", "-f"])
        .arg(b.file())
        .arg("--")
        .args(argv)
        .env("DOCKER_HOST", NOWHERE)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_invalid_declaration_is_reported_before_any_engine_is_contacted() {
    let b = Bundle::new(
        "version: 1\nproject: p\nsidecars:\n  db:\n    image: db:1\n    lifecycle: forever\n    interface: { kind: none }\n    readiness: { mode: none }\n",
    );
    let (code, _, err) = run(&b, &["true"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: sidecars.db.lifecycle: "), "{err}");
    assert!(!err.contains("engine"), "{err}");
}

#[test]
fn with_no_sidecars_the_command_runs_as_given_without_an_engine() {
    let b = Bundle::new("version: 1\nproject: p\nworkload:\n  env: { GREETING: hi }\n");
    let (code, out, err) = run(&b, &["sh", "-c", "echo $GREETING; exit 7"]);
    assert_eq!((code, out.as_str(), err.as_str()), (7, "hi\n", ""));
}

#[test]
fn an_unreachable_engine_is_named_with_a_hint() {
    let b = Bundle::new(
        "version: 1\nproject: p\nsidecars:\n  db:\n    image: db:1\n    lifecycle: shared\n    interface: { kind: port, port: 5432 }\n",
    );
    let (code, _, err) = run(&b, &["true"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with(&format!(
            "error: cannot reach the container engine at {NOWHERE}: "
        )),
        "{err}"
    );
    assert!(
        err.contains("= hint: is the Docker Engine running? DOCKER_HOST selects another one"),
        "{err}"
    );
}
