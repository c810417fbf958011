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

#[test]
fn an_engine_tether_cannot_speak_to_is_named_with_the_way_around() {
    let b = Bundle::new(
        "version: 1\nproject: p\nsidecars:\n  db:\n    image: db:1\n    lifecycle: shared\n    interface: { kind: port, port: 5432 }\n",
    );
    let run = |host: &str, tls: bool| {
        let mut c = Command::new(tether_bin());
        c.args(["run", "-f"])
            .arg(b.file())
            .args(["--", "true"])
            .env("DOCKER_HOST", host)
            .env_remove("DOCKER_TLS_VERIFY");
        if tls {
            c.env("DOCKER_TLS_VERIFY", "1");
        }
        c.output().unwrap()
    };
    let out = run("tcp://build-box:2376", true);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: cannot reach the container engine at tcp://build-box:2376: tether speaks to engines over unix://, tcp:// and ssh:// only (no TLS)\n\
         \x20 = hint: reach the engine over ssh instead: DOCKER_HOST=ssh://build-box\n"
    );
    // ssh:// is spoken, and what ssh said is passed on.
    let out = run("ssh://me@build-box.invalid", false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with(
            "error: cannot reach the container engine at ssh://me@build-box.invalid: ssh: ssh: Could not resolve hostname build-box.invalid"
        ),
        "{err}"
    );
}

/// On a terminal (a pty from `script`), Ctrl-C reaches the workload once, through the
/// terminal, and tether returns what the workload returns.
#[test]
fn ctrl_c_on_a_terminal_reaches_the_workload_once() {
    let has_script = Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(has_script, "`script` (util-linux) is not installed") {
        return;
    }
    let b = Bundle::new("version: 1\nproject: p\n");
    let inner = format!(
        "{} run -f {} -- sh -c 'trap \"echo got INT; exit 5\" INT; echo ready $$; while :; do sleep 0.1; done'",
        tether_bin().display(),
        b.file().display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qfec", &inner, "/dev/null"]);
    cmd.stdin(std::process::Stdio::piped());
    let (reader, writer) = std::io::pipe().unwrap();
    cmd.stdout(writer.try_clone().unwrap()).stderr(writer);
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let mut stdin = child.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(reader);
    let mut seen = String::new();
    use std::io::{BufRead, Write};
    while !seen.contains("ready") {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "no `ready`: {seen}");
        seen.push_str(&line);
    }
    // The workload's group is the terminal's foreground from its first instruction (its pgrp
    // is the terminal's, fields 5 and 8 of /proc/PID/stat): a ^C typed at once reaches it.
    let pid: i32 = seen
        .split("ready ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid after `ready`: {seen}"));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // After the command: state, ppid, pgrp, session, tty, tpgid.
    assert_eq!(fields[2], fields[5], "not yet the foreground: {stat}");
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    seen.push_str(&rest);
    assert_eq!(seen.matches("got INT").count(), 1, "{seen}");
    assert_eq!(status.code(), Some(5), "{seen}");
}
