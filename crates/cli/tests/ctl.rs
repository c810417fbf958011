//! `tether ctl` end to end: a real `tether init`, real daemons, its real control socket.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::*;

const SIGTERM: i32 = 15;

fn bundle(body: &str) -> Bundle {
    Bundle::new(&format!("version: 1\nproject: t\ninit:\n{body}"))
}

fn status(b: &Bundle) -> Value {
    status_at(b, &[])
}

fn status_at(b: &Bundle, socket: &[&str]) -> Value {
    let mut args = socket.to_vec();
    args.extend(["status", "--json"]);
    let (code, out, err) = b.ctl(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn pids(b: &Bundle) -> BTreeMap<String, Option<i64>> {
    pids_at(b, "")
}

/// Each daemon's pid (none when it does not run), from `ctl [--socket SOCKET] status --json`.
fn pids_at(b: &Bundle, socket: &str) -> BTreeMap<String, Option<i64>> {
    let socket: &[&str] = if socket.is_empty() {
        &[]
    } else {
        &["--socket", socket]
    };
    status_at(b, socket)["daemons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap().to_owned(), d["pid"].as_i64()))
        .collect()
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

const CHAIN: &str = r#"
  daemons:
    db: { command: [sleep, "1000"] }
    api: { command: [sleep, "1001"], depends_on: { db: started } }
    other: { command: [sleep, "1002"] }
"#;

#[test]
fn status_lists_each_daemon_with_exact_fields_on_a_0600_socket() {
    let b = bundle(CHAIN);
    let mut run = b.start(&[], &[]);
    run.wait_for("other: started");
    // The default socket: $XDG_RUNTIME_DIR/tether/init.sock, its folder made 0700.
    let sock = b.dir.path().join("tether/init.sock");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sock), 0o600);
    assert_eq!(mode(&b.dir.path().join("tether")), 0o700);
    let v = status(&b);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["phase", "ready", "daemons", "ok", "code"]);
    let db = &v["daemons"][0];
    let keys: Vec<&str> = db.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "name",
            "state",
            "pid",
            "uptime_ms",
            "restarts",
            "last_exit",
            "ready"
        ]
    );
    let pid: i64 = pid_line_of(&run.seen, "db").into();
    assert_eq!(
        (&db["name"], &db["state"], &db["pid"], &db["restarts"]),
        (&json!("db"), &json!("running"), &json!(pid), &json!(0))
    );
    assert_eq!(
        (&db["last_exit"], &db["ready"]),
        (&Value::Null, &Value::Null)
    );
    assert!(db["uptime_ms"].is_u64());
    assert_eq!(
        (&v["phase"], &v["ready"], &v["code"]),
        (&json!("running"), &json!(true), &json!(0))
    );
    // The table for people.
    let (code, out, _) = b.ctl(&["status"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "NAME", "STATE", "PID", "UPTIME", "RESTARTS", "READY", "LAST", "EXIT"
        ]
    );
    assert!(
        lines[1].starts_with("db ") && lines[1].contains(" running "),
        "{out}"
    );
    run.signal(SIGTERM);
    assert_eq!(run.finish().0, 0);
    assert!(!sock.exists(), "the socket is removed at exit");
}

/// The pid in `NAME: started (pid N…`.
fn pid_line_of(lines: &[String], daemon: &str) -> i32 {
    let line = &lines[pos(lines, &format!("[tether] {daemon}: started (pid "))];
    line.split("(pid ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .split([',', ')'])
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_stop_cascades_to_dependants_and_says_so_and_the_bundle_outlives_it() {
    let b = bundle(CHAIN);
    let mut run = b.start(&[], &[]);
    run.wait_for("other: started");
    let before = pids(&b);
    let (code, out, err) = b.ctl(&["stop", "db"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "stopping api (it depends on db)\nstopping db\napi: stopped (killed by SIGTERM)\ndb: stopped (killed by SIGTERM)\n"
    );
    // Gone by the time ctl returns, api before db.
    for name in ["db", "api"] {
        assert!(!alive(before[name].unwrap()), "{name} still runs");
    }
    run.wait_for("[tether] db: stopped");
    in_order(
        &run.seen,
        &[
            "[tether] api: stopping (requested: it depends on db)",
            "[tether] api: stopped",
            "[tether] db: stopped",
        ],
    );
    // Every daemon stopped on request: the bundle keeps running with none.
    let (code, _, _) = b.ctl(&["stop", "other"]);
    assert_eq!(code, 0);
    let v = status(&b);
    assert_eq!(v["phase"], "running");
    assert!(
        v["daemons"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "stopped")
    );
    assert!(run.child.try_wait().unwrap().is_none(), "tether init ended");
    // Starting api starts db first.
    let (code, out, err) = b.ctl(&["start", "api"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..2],
        ["starting db (api depends on it)", "starting api"]
    );
    assert!(lines[2].starts_with("db: running (pid "), "{out}");
    assert!(lines[3].starts_with("api: running (pid "), "{out}");
    // A restart gives a new process.
    let api = pids(&b)["api"].unwrap();
    let (code, out, _) = b.ctl(&["restart", "api"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("restarting api\napi: running (pid "),
        "{out}"
    );
    let again = pids(&b)["api"].unwrap();
    assert_ne!(api, again);
    assert!(!alive(api));
    // shutdown stops the rest and tether exits 0.
    let (code, out, _) = b.ctl(&["shutdown"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "tether init stopped every daemon\n")
    );
    let (code, lines) = run.finish();
    assert_eq!(code, 0, "{}", lines.join("\n"));
    assert!(
        lines
            .iter()
            .any(|l| l == "[tether] stopping: requested by tether ctl")
    );
}

#[test]
fn unknown_names_and_bad_signals_are_refused_with_what_is_known() {
    let b = bundle(CHAIN);
    let mut run = b.start(&[], &[]);
    run.wait_for("other: started");
    let (code, out, err) = b.ctl(&["stop", "dbb", "other"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "error: no daemon named `dbb` in this bundle (it has: db, api, other); did you mean `db`?\n"
    );
    // Nothing was stopped, not even the known one.
    assert!(pids(&b).values().all(Option::is_some));
    let (code, _, err) = b.ctl(&["signal", "db", "SIGNOPE"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: `SIGNOPE` is not a signal"), "{err}");
    let (code, _, err) = b.ctl(&["logs", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("(it has: db, api, other)"), "{err}");
    run.signal(SIGTERM);
    assert_eq!(run.finish().0, 0);
}

#[test]
fn a_signal_reaches_the_daemon_and_one_not_running_is_refused() {
    let b = bundle(
        r#"
  daemons:
    trapper:
      command: [sh, -c, "trap 'echo got usr1' USR1; echo waiting; while :; do sleep 0.05; done"]
    idle: { command: [sleep, "1000"] }
"#,
    );
    let mut run = b.start(&[], &[]);
    run.wait_for("[trapper] waiting");
    let (code, out, err) = b.ctl(&["signal", "trapper", "USR1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "trapper: sent SIGUSR1 to its process group\n");
    run.wait_for("[trapper] got usr1");
    b.ctl(&["stop", "idle"]);
    let (code, _, err) = b.ctl(&["signal", "idle", "HUP"]);
    assert_eq!(
        (code, err.as_str()),
        (1, "error: idle is not running (stopped)\n")
    );
    run.signal(SIGTERM);
    assert_eq!(run.finish().0, 0);
}

#[test]
fn logs_come_from_memory_with_tail_and_follow() {
    let b = bundle(
        r#"
  daemons:
    talker:
      command: [sh, -c, "for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; while [ ! -e $DIR/more ]; do sleep 0.05; done; echo line 6; exec sleep 1000"]
"#,
    );
    let mut run = b.start(&[], &[]);
    run.wait_for("[talker] oops");
    let (code, out, _) = b.ctl(&["logs", "talker", "--tail", "2"]);
    assert_eq!((code, out.as_str()), (0, "line 5\noops\n"));
    let (code, out, _) = b.ctl(&["logs", "talker"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "line 1\nline 2\nline 3\nline 4\nline 5\noops\n")
    );
    let (_, out, _) = b.ctl(&["logs", "talker", "--tail", "1", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(out.lines().next().unwrap()).unwrap(),
        json!({"line": "oops", "stream": "stderr"})
    );
    // -f: the tail, then what comes, until interrupted.
    let mut follow = Command::new(tether_bin())
        .args(["ctl", "logs", "talker", "-f", "--tail", "1"])
        .env("XDG_RUNTIME_DIR", b.dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "oops");
    std::fs::write(b.path("more"), "").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "line 6");
    follow.kill().unwrap();
    follow.wait().unwrap();
    run.signal(SIGTERM);
    assert_eq!(run.finish().0, 0);
}

const BEFORE: &str = r#"version: 1
init:
  control: { socket: $DIR/ctl.sock }
  daemons:
    same: { command: [sleep, "1000"] }
    gone: { command: [sleep, "1001"] }
    changed: { command: [sh, -c, "echo version 1; exec sleep 1000"] }
"#;

#[test]
fn a_reload_applies_the_difference_and_an_unchanged_daemon_keeps_its_pid() {
    let b = Bundle::new(BEFORE);
    let sock = b.path("ctl.sock");
    let sock = sock.to_str().unwrap();
    let mut run = b.start(&[], &[]);
    run.wait_for("[changed] version 1");
    let ctl = |args: &[&str]| {
        let mut all = vec!["--socket", sock];
        all.extend(args);
        b.ctl(&all)
    };
    let before = pids_at(&b, sock);
    std::fs::write(
        b.file(),
        BEFORE
            .replace("$DIR", b.dir.path().to_str().unwrap())
            .replace("    gone: { command: [sleep, \"1001\"] }\n", "")
            .replace("version 1", "version 2")
            + "    new: { command: [sh, -c, \"echo new here; exec sleep 1000\"] }\n",
    )
    .unwrap();
    let (code, out, err) = ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "unchanged same",
            "removing gone (no longer declared)",
            "restarting changed (its declaration changed)",
            "adding new (new in the declaration)",
        ],
        "{out}"
    );
    run.wait_for_all(&["[changed] version 2", "[new] new here"]);
    let after = pids_at(&b, sock);
    assert_eq!(after.keys().collect::<Vec<_>>(), ["changed", "new", "same"]);
    assert_eq!(
        after["same"], before["same"],
        "the unchanged daemon kept its process"
    );
    assert!(alive(after["same"].unwrap()));
    assert_ne!(after["changed"], before["changed"]);
    assert!(!alive(before["gone"].unwrap()) && !alive(before["changed"].unwrap()));

    // An invalid file changes nothing, and every error is printed as `tether check` does.
    std::fs::write(
        b.file(),
        "version: 1\ninit:\n  daemons:\n    same: { command: [sleep, \"1000\"], restart: { policy: sometimes } }\n    new: { comand: [x] }\n",
    )
    .unwrap();
    let (code, out, err) = ctl(&["reload"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    let file = b.file();
    let file = file.display();
    let at: Vec<&str> = err.lines().filter(|l| l.starts_with(" --> ")).collect();
    assert_eq!(
        at,
        [
            format!(" --> {file}:4:58"),
            format!(" --> {file}:5:5"),
            format!(" --> {file}:5:12"),
        ]
    );
    assert!(
        err.starts_with(
            "error: init.daemons.same.restart.policy: `sometimes` is not a restart policy\n"
        ),
        "{err}"
    );
    assert!(
        err.contains("error: init.daemons.new.comand: unknown field `comand` in a daemon\n"),
        "{err}"
    );
    assert!(
        err.ends_with("\nerror: found 3 problems in the declaration; nothing was changed\n"),
        "{err}"
    );
    assert_eq!(pids_at(&b, sock), after, "nothing changed");
    run.signal(SIGTERM);
    assert_eq!(run.finish().0, 0);
}

#[test]
fn a_second_init_on_a_live_socket_is_refused_and_a_stale_one_is_replaced() {
    let b = bundle(CHAIN);
    let sock = b.dir.path().join("tether/init.sock");
    // A socket left by an init that was killed: nobody answers on it.
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut run = b.start(&[], &[]);
    run.wait_for("other: started");
    assert_eq!(b.ctl(&["status"]).0, 0, "the stale socket was replaced");
    // A second init on the same socket starts nothing.
    let (code, lines) = b.run(&[], &[]);
    assert_eq!(code, 2, "{}", lines.join("\n"));
    assert_eq!(
        lines,
        [format!(
            "[tether] another tether init is listening on the control socket {}",
            sock.display()
        )]
    );
    // The first one is untouched.
    assert!(pids(&b).values().all(Option::is_some));
    run.signal(SIGTERM);
    assert_eq!(run.finish().0, 0);
    // With no init, ctl says so.
    let (code, _, err) = b.ctl(&["status"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with(&format!(
            "error: no tether init is listening on {}",
            sock.display()
        )),
        "{err}"
    );
}

fn http_post(addr: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap())
}

#[test]
fn control_over_http_is_off_by_default_and_on_with_health_control() {
    for on in [false, true] {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let b = bundle(&format!(
            "{CHAIN}  health: {{ listen: \"{addr}\", control: {on} }}\n"
        ));
        let mut run = b.start(&[], &[]);
        run.wait_for("other: started");
        let (code, v) = http_post(&addr, "/control", r#"{"op": "stop", "daemons": ["db"]}"#);
        if !on {
            assert_eq!(code, 403);
            assert_eq!(v["error"], "control over HTTP is off");
            assert!(pids(&b).values().all(Option::is_some), "nothing stopped");
        } else {
            assert_eq!(code, 200, "{v}");
            assert_eq!(
                v["changes"],
                json!([
                    {"daemon": "api", "what": "stop", "why": "it depends on db"},
                    {"daemon": "db", "what": "stop", "why": null}
                ])
            );
            assert_eq!(v["daemons"][0]["state"], "stopped");
            let (code, v) = http_post(&addr, "/control", r#"{"op": "status"}"#);
            assert_eq!(code, 200);
            assert_eq!(v["daemons"][2]["state"], "running");
            let (code, v) = http_post(&addr, "/control", r#"{"op": "start", "daemons": ["nope"]}"#);
            assert_eq!(code, 400);
            assert!(
                v["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("no daemon named `nope`")
            );
            let (code, _) = http_post(&addr, "/control", r#"{"op": "shutdown"}"#);
            assert_eq!(code, 200);
            assert_eq!(run.finish().0, 0);
            continue;
        }
        run.signal(SIGTERM);
        assert_eq!(run.finish().0, 0);
    }
}
