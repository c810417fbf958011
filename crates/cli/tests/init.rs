//! `tether init` end to end: real processes, real signals, real sockets.

mod support;

use support::*;

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
const SIGHUP: i32 = 1;

fn bundle(body: &str) -> Bundle {
    Bundle::new(&format!("version: 1\nproject: t\ninit:\n{body}"))
}

#[test]
fn steps_run_in_order_then_daemons_start_once_their_dependency_is_ready() {
    let b = bundle(
        r#"
  steps:
    - { name: first, command: [sh, -c, "echo one"] }
    - { name: second, command: [sh, -c, "echo two"] }
  daemons:
    db:
      command: [sh, -c, "sleep 0.3; echo accepting connections; exec sleep 100"]
      readiness: { mode: log, pattern: "^accepting" }
    app:
      depends_on: [db]
      command: [sh, -c, "echo app up"]
      restart: { policy: never }
      on_exit: shutdown
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    assert_eq!(code, 0, "{}", lines.join("\n"));
    in_order(
        &lines,
        &[
            "[first] one",
            "[tether] first: step completed",
            "[second] two",
            "[tether] db: started",
            "[db] accepting connections",
            "[tether] db: ready",
            "[tether] app: started",
            "[app] app up",
            "[tether] app: completed",
            "[tether] stopping: app ended and has on_exit: shutdown",
            "[tether] db: stopped (killed by SIGTERM)",
            "[tether] exiting: all daemons stopped",
        ],
    );
}

/// A server that becomes reachable only after a delay, and a client that fails unless the
/// server is already there when it starts: the client's success proves the gate held.
fn gated(server: &str, readiness: &str, client: &str) {
    let b = bundle(&format!(
        r#"
  daemons:
    server:
      command: {server}
      readiness: {readiness}
    client:
      depends_on: {{ server: ready }}
      command: {client}
      restart: {{ policy: never }}
      on_exit: shutdown
"#
    ));
    let (code, lines) = b.run(&[], &[]);
    assert_eq!(code, 0, "{}", lines.join("\n"));
    in_order(
        &lines,
        &[
            "[tether] server: ready",
            "[tether] client: started",
            "[client] reached",
        ],
    );
}

#[test]
fn tcp_readiness_gates_dependents() {
    let port = free_port();
    gated(
        &format!(
            r#"[python3, -c, "import socket,time; time.sleep(0.3); s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1',{port})); s.listen(); time.sleep(100)"]"#
        ),
        &format!("{{ mode: tcp, port: {port}, interval: 50ms }}"),
        &format!(
            r#"[python3, -c, "import socket; socket.create_connection(('127.0.0.1',{port})); print('reached')"]"#
        ),
    );
}

#[test]
fn http_readiness_gates_dependents() {
    let port = free_port();
    gated(
        &format!(r#"[sh, -c, "sleep 0.3; exec python3 -m http.server {port} --bind 127.0.0.1"]"#),
        &format!("{{ mode: http, url: 'http://127.0.0.1:{port}/', interval: 50ms }}"),
        &format!(
            r#"[python3, -c, "import urllib.request as u; u.urlopen('http://127.0.0.1:{port}/'); print('reached')"]"#
        ),
    );
}

#[test]
fn exec_readiness_gates_dependents() {
    let b = tempfile::tempdir().unwrap();
    let flag = b.path().join("up");
    let flag = flag.display();
    gated(
        &format!(r#"[sh, -c, "sleep 0.3; touch {flag}; exec sleep 100"]"#),
        &format!("{{ mode: exec, command: [test, -f, '{flag}'], interval: 50ms }}"),
        &format!(r#"[sh, -c, "test -f {flag} && echo reached"]"#),
    );
}

#[test]
fn notify_fd_readiness_gates_dependents() {
    let b = tempfile::tempdir().unwrap();
    let flag = b.path().join("up");
    let flag = flag.display();
    gated(
        &format!(r#"[sh, -c, "sleep 0.3; touch {flag}; echo ready >&$NOTIFY_FD; exec sleep 100"]"#),
        "{ mode: notify }",
        &format!(r#"[sh, -c, "test -f {flag} && echo reached"]"#),
    );
}

#[test]
fn notify_socket_readiness_gates_dependents() {
    let b = tempfile::tempdir().unwrap();
    let flag = b.path().join("up");
    let flag = flag.display();
    let server = format!(
        r#"[python3, -c, "import os,socket,time; time.sleep(0.3); open('{flag}','w').close(); a=os.environ['NOTIFY_SOCKET']; a='\\0'+a[1:] if a[0]=='@' else a; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'STATUS=warming\\nREADY=1', a); time.sleep(100)"]"#
    );
    gated(
        &server,
        "{ mode: notify }",
        &format!(r#"[sh, -c, "test -f {flag} && echo reached"]"#),
    );
}

#[test]
fn a_readiness_timeout_is_a_failure_with_the_reason() {
    let b = bundle(
        r#"
  daemons:
    slow:
      command: [sleep, "100"]
      readiness: { mode: exec, command: ["false"], timeout: 300ms, interval: 50ms }
      restart: { policy: never }
      on_exit: shutdown
    after:
      depends_on: [slow]
      command: [sleep, "100"]
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    assert_eq!(
        events(&lines, "slow"),
        [
            "started (pid PID)",
            "not ready: not ready within 300ms; the last check: `false` exited with code 1",
            "killed by SIGTERM after failing readiness",
        ]
        .map(|s| s.replace("PID", &pid_in(&lines, "slow")))
    );
    assert!(events(&lines, "after").is_empty(), "{}", lines.join("\n"));
    assert_eq!(code, 143);
}

fn pid_in(lines: &[String], daemon: &str) -> String {
    let l = &lines[pos(lines, &format!("[tether] {daemon}: started (pid "))];
    l.rsplit_once("(pid ")
        .unwrap()
        .1
        .trim_end_matches(')')
        .split(',')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn restarts_back_off_exponentially_then_give_up() {
    let b = bundle(
        r#"
  daemons:
    flaky:
      command: [sh, -c, "echo try; exit 3"]
      restart:
        policy: on-failure
        backoff: { initial: 10ms, multiplier: 2, max: 30ms }
        max_restarts: 3
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    let ev: Vec<String> = events(&lines, "flaky")
        .into_iter()
        .filter(|e| !e.starts_with("started"))
        .collect();
    assert_eq!(
        ev,
        [
            "exited with code 3",
            "restarting in 10ms (restart 1 of 3)",
            "exited with code 3",
            "restarting in 20ms (restart 2 of 3)",
            "exited with code 3",
            "restarting in 30ms (restart 3 of 3)",
            "exited with code 3",
            "gave up after 3 restarts",
        ]
    );
    assert_eq!(lines.iter().filter(|l| *l == "[flaky] try").count(), 4);
    assert_eq!(code, 123, "a daemon that gave up");
}

#[test]
fn on_exit_ignore_keeps_the_others_running() {
    let b = bundle(
        r#"
  daemons:
    keeper:
      command: [sleep, "100"]
    quitter:
      command: [sh, -c, "exit 5"]
      restart: { policy: never }
      on_exit: ignore
"#,
    );
    let mut run = b.start(&[], &[]);
    run.wait_for("[tether] quitter: exited with code 5");
    // The keeper is still there: the bundle is waiting for a signal.
    assert_eq!(children(run.pid()).len(), 1);
    run.signal(SIGTERM);
    let (code, lines) = run.finish();
    in_order(
        &lines,
        &[
            "quitter: exited with code 5",
            "stopping: received SIGTERM",
            "keeper: stopped (killed by SIGTERM)",
        ],
    );
    assert_eq!(code, 5, "the failed daemon's code");
}

#[test]
fn on_exit_shutdown_takes_the_bundle_down_with_the_code() {
    let b = bundle(
        r#"
  daemons:
    keeper:
      command: [sleep, "100"]
    quitter:
      command: [sh, -c, "sleep 0.2; exit 5"]
      restart: { policy: never }
      on_exit: shutdown
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    in_order(
        &lines,
        &[
            "quitter: exited with code 5",
            "stopping: quitter ended and has on_exit: shutdown",
            "keeper: stopped (killed by SIGTERM)",
            "exiting: exit code 5",
        ],
    );
    assert_eq!(code, 5);
}

#[test]
fn failing_liveness_restarts_the_daemon() {
    let b = bundle(
        r#"
  daemons:
    web:
      command: [sh, -c, "if [ -f $DIR/ran ]; then touch $DIR/healthy; echo second run; else touch $DIR/ran; echo first run; fi; exec sleep 100"]
      liveness: { mode: exec, command: [test, -f, $DIR/healthy], interval: 50ms, timeout: 1s, failure_threshold: 2 }
      restart: { policy: on-failure, backoff: { initial: 0s } }
"#,
    );
    let mut run = b.start(&[], &[]);
    run.wait_for("[web] second run");
    run.signal(SIGTERM);
    let (code, lines) = run.finish();
    let dir = b.dir.path().display().to_string();
    let ev: Vec<String> = events(&lines, "web")
        .into_iter()
        .filter(|e| !e.starts_with("started"))
        .collect();
    assert_eq!(
        ev,
        [
            format!(
                "unhealthy: 2 liveness checks failed in a row, the last: `test -f {dir}/healthy` exited with code 1; restarting it"
            ),
            "killed by SIGTERM after failing liveness".into(),
            "restarting in 0ms (restart 1)".into(),
            "stopped (killed by SIGTERM)".into(),
        ]
    );
    assert_eq!(code, 0);
}

#[test]
fn events_reach_the_notify_command_as_json_lines() {
    let b = bundle(
        r#"
  daemons:
    job:
      command: [sh, -c, "exit 0"]
      restart: { policy: never }
      on_exit: shutdown
  notify: { command: [sh, -c, "cat >> $DIR/events.jsonl"] }
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    assert_eq!(code, 0, "{}", lines.join("\n"));
    let text = std::fs::read_to_string(b.path("events.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(&str, Option<&str>)> = events
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["daemon"].as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("start", None),
            ("started", Some("job")),
            ("exited", Some("job")),
            ("completed", Some("job")),
            ("stopping", None),
            ("exit", None),
        ]
    );
    assert_eq!(events[2]["exit"], serde_json::json!({"code": 0}));
    assert!(events.iter().all(|e| e["time"].as_str().is_some()));
}

#[test]
fn events_reach_the_notify_url_as_posts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut bodies = Vec::new();
        for stream in listener.incoming().take(4) {
            let mut s = BufReader::new(stream.unwrap());
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut l = String::new();
                s.read_line(&mut l).unwrap();
                if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if l == "\r\n" {
                    break;
                }
                head.push_str(&l);
            }
            let mut body = vec![0; len];
            s.read_exact(&mut body).unwrap();
            s.get_mut()
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .unwrap();
            bodies.push((head.lines().next().unwrap().to_owned(), body));
        }
        bodies
    });
    let b = bundle(&format!(
        r#"
  daemons:
    job:
      command: [sh, -c, "exit 0"]
      restart: {{ policy: never }}
  notify: {{ url: "http://127.0.0.1:{port}/hook" }}
"#
    ));
    let (code, lines) = b.run(&[], &[]);
    assert_eq!(code, 0, "{}", lines.join("\n"));
    let got = server.join().unwrap();
    let kinds: Vec<String> = got
        .iter()
        .map(|(line, body)| {
            assert_eq!(line, "POST /hook HTTP/1.1");
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            v["event"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kinds, ["start", "started", "exited", "completed"]);
}

#[test]
fn output_lines_keep_their_prefix_even_when_partial_long_or_not_utf8() {
    let b = bundle(
        r#"
  daemons:
    out:
      command: [sh, -c, "printf 'a\\nb\\n'; printf 'err\\n' >&2; printf '\\377bytes\\n'; head -c 40000 /dev/zero | tr '\\0' x; echo; printf 'no newline'"]
      restart: { policy: never }
      on_exit: shutdown
  logs: { prefix: "{name} | " }
"#,
    );
    let (code, _, raw) = b.start(&[], &[]).finish_raw();
    assert_eq!(code, 0);
    // The daemon's lines as bytes, tether's own left out.
    let raw: Vec<Vec<u8>> = raw
        .into_iter()
        .filter(|l| l.starts_with(b"out | "))
        .collect();
    let mut expected: Vec<Vec<u8>> = vec![
        b"out | a".to_vec(),
        b"out | b".to_vec(),
        b"out | err".to_vec(),
        b"out | \xffbytes".to_vec(),
    ];
    // 40000 bytes: two 16 KiB pieces marked as continued, then the rest.
    let mark = "\u{21b5}".as_bytes();
    expected.push([b"out | ".as_slice(), &[b'x'; 16384], mark].concat());
    expected.push([b"out | ".as_slice(), &[b'x'; 16384], mark].concat());
    expected.push([b"out | ".as_slice(), &[b'x'; 40000 - 32768]].concat());
    expected.push(b"out | no newline".to_vec());
    // stdout and stderr are separate pipes: the stderr line may come anywhere.
    let mut got = raw.clone();
    let err_at = got.iter().position(|l| l == b"out | err").unwrap();
    got.remove(err_at);
    expected.remove(2);
    assert_eq!(got, expected);
}

#[test]
fn log_files_are_followed_across_truncation_and_rotation() {
    let b = bundle(
        r#"
  daemons:
    app:
      command: [sleep, "100"]
      log_files: [$DIR/app.log]
"#,
    );
    let log = b.path("app.log");
    std::fs::write(&log, "old line, before the start\n").unwrap();
    let mut run = b.start(&[], &[]);
    run.wait_for("[tether] app: started");
    let append = |text: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    append("first\n");
    run.wait_for("[app] first");
    std::fs::write(&log, "").unwrap();
    append("after truncation\n");
    run.wait_for("[app] after truncation");
    std::fs::rename(&log, b.path("app.log.1")).unwrap();
    append("in the new file\n");
    run.wait_for("[app] in the new file");
    run.signal(SIGTERM);
    let (code, lines) = run.finish();
    assert_eq!(code, 0);
    assert!(!lines.iter().any(|l| l.contains("old line")));
}

#[test]
fn shutdown_stops_dependents_before_their_dependencies() {
    let daemon = |name: &str, dep: &str| {
        format!(
            r#"
    {name}:
      command: [sh, -c, "trap 'echo stopping; exit 0' TERM; echo up; sleep 100 & wait"]
      readiness: {{ mode: log, pattern: up }}{dep}"#
        )
    };
    let b = bundle(&format!(
        "  daemons:{}{}{}\n",
        daemon("base", ""),
        daemon("middle", "\n      depends_on: [base]"),
        daemon("top", "\n      depends_on: [middle]")
    ));
    let mut run = b.start(&[], &[]);
    run.wait_for("[tether] top: ready");
    run.signal(SIGINT);
    let (code, lines) = run.finish();
    in_order(
        &lines,
        &[
            "[top] stopping",
            "[tether] top: stopped (exited with code 0)",
            "[middle] stopping",
            "[tether] middle: stopped",
            "[base] stopping",
            "[tether] base: stopped",
        ],
    );
    assert_eq!(code, 0);
}

#[test]
fn a_daemon_that_ignores_its_stop_signal_is_killed_after_its_grace() {
    let b = bundle(
        r#"
  daemons:
    stubborn:
      command: [sh, -c, "trap '' TERM; echo up; while :; do sleep 1; done"]
      readiness: { mode: log, pattern: up }
      stop: { grace: 200ms }
"#,
    );
    let mut run = b.start(&[], &[]);
    run.wait_for("stubborn: ready");
    run.signal(SIGTERM);
    let (code, lines) = run.finish();
    in_order(
        &lines,
        &[
            "stubborn: still running 200ms after SIGTERM; sent SIGKILL",
            "stubborn: killed by SIGKILL while stopping",
            "exiting: exit code 137",
        ],
    );
    assert_eq!(code, 137);
}

#[test]
fn a_second_signal_kills_at_once() {
    let b = bundle(
        r#"
  daemons:
    stubborn:
      command: [sh, -c, "trap '' TERM INT; echo up; while :; do sleep 1; done"]
      readiness: { mode: log, pattern: up }
      stop: { grace: 1h }
"#,
    );
    let mut run = b.start(&[], &[]);
    run.wait_for("stubborn: ready");
    run.signal(SIGTERM);
    run.wait_for("stopping: received SIGTERM");
    run.signal(SIGINT);
    let (code, lines) = run.finish();
    in_order(
        &lines,
        &[
            "received SIGINT again: killing everything now",
            "stubborn: killed by SIGKILL",
        ],
    );
    assert_eq!(code, 137);
}

#[test]
fn other_signals_are_forwarded_as_each_daemon_asks() {
    let b = bundle(
        r#"
  daemons:
    group:
      command: [sh, -c, "trap 'echo got HUP' HUP; echo up; while :; do sleep 1 & wait $!; done"]
      readiness: { mode: log, pattern: up }
    main:
      command: [sh, -c, "trap 'echo got HUP' HUP; echo up; while :; do sleep 1 & wait $!; done"]
      readiness: { mode: log, pattern: up }
      forward_signals: process
    untouched:
      command: [sleep, "100"]
      forward_signals: none
"#,
    );
    let mut run = b.start(&[], &[]);
    run.wait_for_all(&["group: ready", "main: ready"]);
    run.signal(SIGHUP);
    // Each daemon answers in its own time.
    run.wait_for_all(&["[group] got HUP", "[main] got HUP"]);
    run.signal(SIGTERM);
    let (code, lines) = run.finish();
    // Had SIGHUP reached `untouched`, sleep would have died of it.
    assert_eq!(
        events(&lines, "untouched"),
        [
            format!("started (pid {})", pid_in(&lines, "untouched")),
            "stopped (killed by SIGTERM)".into()
        ]
    );
    assert_eq!(code, 0);
}

#[test]
fn a_fatal_step_failure_starts_no_daemon() {
    let b = bundle(
        r#"
  steps:
    - { name: optional, fatal: false, command: [sh, -c, "exit 4"] }
    - { name: config, command: [sh, -c, "echo bad config >&2; exit 2"] }
  daemons:
    never:
      command: [sleep, "100"]
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    assert_eq!(
        events(&lines, "optional")[1],
        "step failed: exited with code 4; going on (fatal: false)"
    );
    assert_eq!(
        events(&lines, "config")[1],
        "step failed: exited with code 2; no daemon starts (fatal step)"
    );
    assert!(events(&lines, "never").is_empty());
    assert_eq!(code, 122);
}

#[test]
fn a_step_that_runs_too_long_is_killed() {
    let b = bundle(
        r#"
  steps:
    - { name: hang, timeout: 200ms, command: [sleep, "100"] }
  daemons:
    never:
      command: [sleep, "100"]
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    assert_eq!(
        events(&lines, "hang")[1],
        "step timed out after 200ms; no daemon starts (fatal step)"
    );
    assert_eq!(code, 122);
}

#[test]
fn a_daemon_that_cannot_be_executed_stops_the_bundle() {
    let b = bundle(
        r#"
  daemons:
    ok:
      command: [sleep, "100"]
    missing:
      depends_on: { ok: started }
      command: [/no/such/program]
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    assert_eq!(
        events(&lines, "missing"),
        ["cannot run `/no/such/program`: No such file or directory"]
    );
    assert_eq!(code, 127);
    let b = bundle(
        r#"
  daemons:
    noexec:
      command: [$DIR/tether.yaml]
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    assert!(
        events(&lines, "noexec")[0].ends_with("Permission denied"),
        "{}",
        lines.join("\n")
    );
    assert_eq!(code, 126);
}

#[test]
fn selection_adds_dependencies_and_rejects_unknown_names() {
    let b = bundle(
        r#"
  daemons:
    db: { command: [sleep, "100"] }
    api: { command: [sleep, "100"], depends_on: { db: started } }
    other: { command: [sleep, "100"] }
  select_env: PICK
"#,
    );
    for (args, env) in [
        (&["--only", "api"][..], &[][..]),
        (&[][..], &[("PICK", "api")][..]),
    ] {
        let mut run = b.start(args, env);
        let intro = run.wait_for("daemons:");
        assert_eq!(
            intro,
            "[tether] 0 steps, daemons: db, api; db also starts, api depends on it"
        );
        run.wait_for("api: started");
        run.signal(SIGTERM);
        let (code, lines) = run.finish();
        assert_eq!(code, 0);
        assert!(events(&lines, "other").is_empty());
    }
    let out = init_command()
        .arg("-f")
        .arg(b.file())
        .args(["--only", "apl,db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --only: no daemon named `apl` in this bundle (it has: db, api, other); did you mean `api`?\n"
    );
}

#[test]
fn the_health_endpoint_reports_readiness_and_status() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let b = bundle(&format!(
        r#"
  daemons:
    gate:
      command: [sleep, "100"]
      readiness: {{ mode: exec, command: [test, -f, $DIR/go], interval: 20ms, timeout: 1m }}
    plain:
      command: [sleep, "100"]
  health: {{ listen: "{addr}" }}
"#
    ));
    let mut run = b.start(&[], &[]);
    run.wait_for("gate: started");
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert_eq!(
        http_get(&addr, "/readyz"),
        (
            503,
            r#"{"ready":false,"phase":"running","not_ready":[{"name":"gate","state":"starting"}]}"#
                .to_owned()
                + "\n"
        )
    );
    std::fs::write(b.path("go"), "").unwrap();
    run.wait_for("gate: ready");
    assert_eq!(
        http_get(&addr, "/readyz"),
        (200, "{\"ready\":true}\n".into())
    );
    let (status, body) = http_get(&addr, "/status");
    assert_eq!(status, 200);
    let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pid: i64 = pid_in(&run.seen, "gate").parse().unwrap();
    // How long it has run: a number, never compared with a clock.
    let uptime = v["daemons"][0]
        .as_object_mut()
        .unwrap()
        .remove("uptime_ms")
        .unwrap();
    assert!(uptime.is_u64(), "{uptime}");
    assert_eq!(
        v["daemons"][0],
        serde_json::json!({"name": "gate", "state": "running", "pid": pid, "restarts": 0, "last_exit": null, "ready": true})
    );
    assert_eq!(v["daemons"][1]["ready"], serde_json::Value::Null);
    assert_eq!(http_get(&addr, "/nope").0, 404);
    run.signal(SIGTERM);
    assert_eq!(run.finish().0, 0);
}

#[test]
fn orphans_are_reaped_when_not_pid_1() {
    let b = bundle(
        r#"
  daemons:
    spawner:
      command: [sh, -c, "(i=0; while [ $i -lt 1000 ]; do sleep 1 & i=$((i+1)); done); echo abandoned; exec sleep 100"]
"#,
    );
    let mut run = b.start(&[], &[]);
    run.wait_for("[spawner] abandoned");
    let pid = run.pid();
    // The orphans are tether's children now (it is their subreaper)…
    eventually("the orphans are re-parented to tether", || {
        children(pid).len() > 100
    });
    // The 1000 sleeps were re-parented to tether (a subreaper); once they end, only the
    // daemon itself is left: no zombie, no stray child.
    eventually("only the daemon is left under tether", || {
        let kids = children(pid);
        kids.len() == 1 && kids[0].1 != 'Z'
    });
    run.signal(SIGTERM);
    assert_eq!(run.finish().0, 0);
}

#[test]
fn single_command_mode_returns_the_commands_code() {
    let run = |args: &[&str]| {
        let out = init_command().arg("--").args(args).output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(
        run(&["sh", "-c", "echo hi; exit 7"]),
        (7, "hi\n".into(), "".into())
    );
    assert_eq!(run(&["sh", "-c", "kill -TERM $$"]).0, 143);
    assert_eq!(
        run(&["/no/such/thing"]),
        (
            127,
            "".into(),
            "error: cannot run `/no/such/thing`: No such file or directory\n".into()
        )
    );
}

#[test]
fn single_command_mode_forwards_signals() {
    let mut cmd = init_command();
    cmd.args([
        "--",
        "sh",
        "-c",
        "trap 'echo got TERM; exit 3' TERM; echo up; while :; do sleep 1 & wait $!; done",
    ]);
    let mut run = Run::spawn(cmd);
    run.wait_for("up");
    run.signal(SIGTERM);
    let (code, mut lines) = run.finish();
    // The whole group gets SIGTERM: the shell may also report its `sleep` `Terminated`.
    lines.retain(|l| l != "Terminated");
    assert_eq!(lines, ["up", "got TERM"]);
    assert_eq!(code, 3);
}

/// `tether init -- CMD`: the command starts in the folder tether was started in; tether itself
/// moves to `/` and pins no mount.
#[test]
fn single_command_mode_leaves_its_start_folder_to_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let start = dir.path().canonicalize().unwrap();
    let mut cmd = init_command();
    cmd.current_dir(&start)
        .args(["--", "sh", "-c", "echo pid $$; exec sleep 1000"]);
    let mut run = Run::spawn(cmd);
    let line = run.wait_for("pid ");
    let child = line.trim_start_matches("pid ").trim().to_owned();
    let cwd = |pid: &str| std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    // tether moves right after the command started: look until it has (or 10 s passed).
    let tether = run.pid().to_string();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cwd(&tether) != std::path::Path::new("/") && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(cwd(&tether), std::path::PathBuf::from("/"));
    assert_eq!(cwd(&child), start);
    run.signal(SIGTERM);
    let (code, _) = run.finish();
    assert_eq!(code, 128 + SIGTERM);
}

/// The signals that report a fault, sent to tether from outside, are ordinary signals: each
/// reaches the child, and tether keeps running.
#[test]
fn fault_signals_sent_from_outside_are_passed_on_not_fatal() {
    let names = ["ILL", "ABRT", "SEGV", "BUS", "FPE", "TRAP", "SYS"];
    let traps: String = names
        .iter()
        .map(|n| format!("trap 'echo got {n}' {n}; "))
        .collect();
    let mut cmd = init_command();
    cmd.args([
        "--",
        "sh",
        "-c",
        &format!("{traps}trap 'exit 7' TERM; echo up; while :; do sleep 1 & wait $!; done"),
    ]);
    let mut run = Run::spawn(cmd);
    run.wait_for("up");
    for (n, number) in names.iter().zip([4, 6, 11, 7, 8, 5, 31]) {
        run.signal(number);
        run.wait_for(&format!("got {n}"));
    }
    run.signal(SIGTERM);
    let (code, mut lines) = run.finish();
    // The whole group gets each signal: the shell also reports its `sleep` killed by some
    // (`Illegal instruction`); that is the shell's line, not tether's.
    lines.retain(|l| l == "up" || l.starts_with("got "));
    let expected: Vec<String> = std::iter::once("up".to_owned())
        .chain(names.iter().map(|n| format!("got {n}")))
        .collect();
    assert_eq!(lines, expected);
    assert_eq!(code, 7);
}

/// PID 1 in a new PID namespace: zombies of abandoned grandchildren are reaped, and SIGTERM
/// from outside still stops the bundle.
#[test]
fn as_pid_1_in_a_new_pid_namespace() {
    let probe = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output();
    if !require(
        probe.is_ok_and(|o| o.status.success()),
        "`unshare --pid --fork --mount-proc` is not available (needs root or user namespaces)",
    ) {
        return;
    }
    let b = bundle(
        r#"
  daemons:
    spawner:
      command: [sh, -c, "echo pid1=$(tr '\\0' ' ' < /proc/1/cmdline); (i=0; while [ $i -lt 1000 ]; do sleep 0.2 & i=$((i+1)); done); echo abandoned; exec sleep 100"]
"#,
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .args(init_argv())
        .arg("-f")
        .arg(b.file())
        .env("XDG_RUNTIME_DIR", b.dir.path());
    let mut run = Run::spawn(cmd);
    let line = run.wait_for("pid1=");
    assert!(line.contains("init -f "), "{line}");
    assert!(
        line.starts_with("[spawner] pid1=") && line.contains("tether"),
        "{line}"
    );
    run.wait_for("[spawner] abandoned");
    // unshare's only child is tether, PID 1 inside.
    let unshare = run.pid();
    let tether = children(unshare)[0].0;
    eventually("only the daemon is left under PID 1", || {
        let kids = children(tether);
        kids.len() == 1 && kids[0].1 != 'Z'
    });
    assert!(
        support::read_all(std::fs::File::open(format!("/proc/{tether}/status")).unwrap())
            .contains("NSpid:\t")
    );
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &tether.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (code, lines) = run.finish();
    in_order(
        &lines,
        &[
            "stopping: received SIGTERM",
            "spawner: stopped (killed by SIGTERM)",
        ],
    );
    assert_eq!(code, 0);
}

#[test]
fn completed_and_started_conditions_gate_as_declared() {
    let b = bundle(
        r#"
  daemons:
    migrate:
      command: [sh, -c, "echo migrating; sleep 0.2; echo migrated"]
      restart: { policy: on-failure }
    api:
      depends_on: { migrate: completed }
      command: [sh, -c, "echo serving; exec sleep 100"]
    sidecar:
      depends_on: { api: started }
      command: [sh, -c, "echo watching"]
      restart: { policy: never }
      on_exit: shutdown
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    in_order(
        &lines,
        &[
            "[migrate] migrated",
            "[tether] migrate: completed",
            "[tether] api: started",
            "[tether] sidecar: started",
            "[sidecar] watching",
            "[tether] api: stopped (killed by SIGTERM)",
        ],
    );
    assert_eq!(code, 0);
}

#[test]
fn parallel_shutdown_signals_every_daemon_at_once() {
    // `top` depends on `base`, yet with order: parallel `base` is signalled without waiting
    // for `top`, which holds out until its grace runs out.
    let b = bundle(
        r#"
  daemons:
    base:
      command: [sh, -c, "trap 'echo base stopping; exit 0' TERM; echo up; sleep 100 & wait"]
      readiness: { mode: log, pattern: up }
    top:
      depends_on: [base]
      command: [sh, -c, "trap '' TERM; echo up; while :; do sleep 1; done"]
      readiness: { mode: log, pattern: up }
      stop: { grace: 1h }
  shutdown: { order: parallel }
"#,
    );
    let mut run = b.start(&[], &[]);
    run.wait_for("top: ready");
    run.signal(SIGTERM);
    run.wait_for("[tether] base: stopped (exited with code 0)");
    // `top` is still running: stop it for good.
    run.signal(SIGTERM);
    let (code, lines) = run.finish();
    in_order(
        &lines,
        &[
            "[base] base stopping",
            "received SIGTERM again",
            "top: killed by SIGKILL",
        ],
    );
    assert_eq!(code, 137);
}

#[test]
fn daemons_get_their_env_folder_and_user() {
    let b = bundle(
        r#"
  steps:
    - { name: who, user: "65534:65534", command: [sh, -c, "echo step as $(id -u):$(id -g)"] }
  daemons:
    app:
      command: [sh, -c, "echo greeting=$GREETING in $(pwd) as $(id -u):$(id -g) groups $(id -G)"]
      env: { GREETING: hello }
      workdir: /tmp
      user: "65534:65534"
      restart: { policy: never }
      on_exit: shutdown
"#,
    );
    if !require(
        nix_is_root(),
        "dropping privileges needs root; this test runs as another user",
    ) {
        return;
    }
    let (code, lines) = b.run(&[], &[]);
    assert!(
        lines.contains(&"[who] step as 65534:65534".to_owned()),
        "{}",
        lines.join("\n")
    );
    assert!(
        lines.contains(&"[app] greeting=hello in /tmp as 65534:65534 groups 65534".to_owned()),
        "{}",
        lines.join("\n")
    );
    assert_eq!(code, 0);
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[test]
fn json_logs_are_one_object_per_line_with_time() {
    let b = bundle(
        r#"
  daemons:
    app:
      command: [sh, -c, "echo hello; echo oops >&2"]
      restart: { policy: never }
      on_exit: shutdown
  logs: { format: json }
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    assert_eq!(code, 0);
    let objs: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let app: Vec<(String, String)> = objs
        .iter()
        .filter(|o| o["name"] == "app")
        .map(|o| {
            assert!(o["time"].as_str().unwrap().ends_with('Z'));
            (
                o["stream"].as_str().unwrap().into(),
                o["line"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut app = app;
    app.sort();
    assert_eq!(
        app,
        [
            ("stderr".into(), "oops".into()),
            ("stdout".into(), "hello".into())
        ]
    );
    let events: Vec<&str> = objs
        .iter()
        .filter(|o| o["name"] == "tether")
        .map(|o| o["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "start",
            "started",
            "exited",
            "completed",
            "stopping",
            "exit"
        ]
    );
}

#[test]
fn timestamps_come_before_the_prefix() {
    let b = bundle(
        r#"
  daemons:
    app:
      command: [sh, -c, "echo hello"]
      restart: { policy: never }
      on_exit: shutdown
  logs: { timestamps: true }
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    assert_eq!(code, 0);
    let line = &lines[pos(&lines, "[app] hello")];
    let (time, rest) = line.split_once(' ').unwrap();
    assert_eq!(rest, "[app] hello");
    assert_eq!(time.len(), "2026-11-22T02:31:52.123Z".len(), "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
}

#[test]
fn a_taken_health_port_is_reported_before_anything_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let b = bundle(&format!(
        r#"
  steps:
    - {{ name: never, command: [sh, -c, "echo should not run"] }}
  daemons:
    app: {{ command: [sleep, "100"] }}
  health: {{ listen: "{addr}" }}
"#
    ));
    let (code, lines) = b.run(&[], &[]);
    // The reason is the C library's: glibc says "Address already in use", musl (a static
    // tether-init) "Address in use".
    let said = format!("[tether] cannot serve health on {addr}: Address ");
    assert!(
        lines.len() == 1 && lines[0].starts_with(&said) && lines[0].ends_with("in use"),
        "{lines:?}"
    );
    assert_eq!(code, 2);
}

#[test]
fn an_invalid_declaration_starts_nothing() {
    let b = bundle(
        r#"
  daemons:
    app:
      command: [sleep, "100"]
      restart: { policy: sometimes }
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    assert_eq!(code, 1);
    assert!(
        lines[0].starts_with("error: init.daemons.app.restart.policy: "),
        "{}",
        lines.join("\n")
    );
    assert!(!lines.iter().any(|l| l.contains("[tether]")));
}

/// The README's quick start: the gateway example runs on the host, /readyz turns true once
/// both servers are ready, and the proxy's access log file reaches the output.
#[test]
fn the_gateway_example_runs_on_the_host() {
    let file = repo().join("examples/gateway-bundle/tether.yaml");
    let runtime = tempfile::tempdir().unwrap();
    let mut cmd = init_command();
    cmd.arg("-f")
        .arg(&file)
        .env("XDG_RUNTIME_DIR", runtime.path());
    let mut run = Run::spawn(cmd);
    run.wait_for("[tether] render-config: step completed");
    run.wait_for("[tether] prober: started");
    assert_eq!(
        http_get("127.0.0.1:19090", "/readyz"),
        (200, "{\"ready\":true}\n".into())
    );
    // The prober's requests show up in the access log the proxy writes to a file.
    run.wait_for("[proxy] 127.0.0.1 - - ");
    run.signal(SIGINT);
    let (code, lines) = run.finish();
    in_order(
        &lines,
        &[
            "[tether] stopping: received SIGINT",
            "[tether] prober: stopped",
            "[tether] proxy: stopped",
        ],
    );
    assert!(
        lines
            .iter()
            .any(|l| l == "[tether] router: stopped (killed by SIGTERM)")
    );
    assert_eq!(code, 0);
}

#[test]
fn a_closed_output_pipe_does_not_disturb_the_daemons() {
    let b = bundle(
        r#"
  daemons:
    talker:
      command: [sh, -c, "while :; do echo chatter; echo x >> $DIR/count; sleep 0.02; done"]
"#,
    );
    let (out_r, out_w) = std::io::pipe().unwrap();
    drop(out_r);
    let (err_r, err_w) = std::io::pipe().unwrap();
    let mut child = init_command()
        .arg("-f")
        .arg(b.file())
        .env("XDG_RUNTIME_DIR", b.dir.path())
        .stdout(out_w)
        .stderr(err_w)
        .spawn()
        .unwrap();
    eventually("the daemon has written 30 lines into a closed pipe", || {
        std::fs::read_to_string(b.path("count")).is_ok_and(|t| t.lines().count() >= 30)
    });
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let err = support::read_all(err_r);
    let lines: Vec<String> = err.lines().map(str::to_owned).collect();
    // No SIGPIPE reached the daemon: it was started once and stopped once.
    assert_eq!(
        events(&lines, "talker"),
        [
            format!("started (pid {})", pid_in(&lines, "talker")),
            "stopped (killed by SIGTERM)".into()
        ],
        "{err}"
    );
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigterm_during_a_shutdown_of_its_own_is_not_a_second_signal() {
    let b = bundle(
        r#"
  daemons:
    slow:
      command: [sh, -c, "trap 'echo draining; sleep 0.5; echo drained; exit 0' TERM; echo up; sleep 100 & wait"]
      readiness: { mode: log, pattern: up }
    quitter:
      depends_on: [slow]
      command: [sh, -c, "exit 0"]
      restart: { policy: never }
      on_exit: shutdown
"#,
    );
    let mut run = b.start(&[], &[]);
    run.wait_for("[slow] draining");
    run.signal(SIGTERM);
    let (code, lines) = run.finish();
    in_order(
        &lines,
        &[
            "stopping: quitter ended and has on_exit: shutdown",
            "received SIGTERM; already stopping",
            "[slow] drained",
            "slow: stopped (exited with code 0)",
        ],
    );
    assert!(!lines.iter().any(|l| l.contains("killing everything")));
    assert_eq!(code, 0);
}

#[test]
fn a_completed_daemon_does_not_hide_a_later_kill() {
    let b = bundle(
        r#"
  daemons:
    stubborn:
      command: [sh, -c, "trap '' TERM; echo up; while :; do sleep 1; done"]
      readiness: { mode: log, pattern: up }
      stop: { grace: 200ms }
    job:
      depends_on: [stubborn]
      command: [sh, -c, "exit 0"]
      restart: { policy: never }
      on_exit: shutdown
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    in_order(
        &lines,
        &[
            "job: completed",
            "stubborn: killed by SIGKILL while stopping",
        ],
    );
    assert_eq!(code, 137);
}

#[test]
fn a_missing_working_folder_is_named_not_blamed_on_the_program() {
    let b = bundle(
        r#"
  daemons:
    app:
      command: [sleep, "100"]
      workdir: /no/such/folder
"#,
    );
    let (code, lines) = b.run(&[], &[]);
    assert_eq!(
        events(&lines, "app"),
        ["cannot run `sleep`: the working folder /no/such/folder does not exist"]
    );
    assert_eq!(code, 126);
}

/// `/proc/PID/stat`: (state, process group, session) of a process, if it exists.
fn stat(pid: i32) -> Option<(char, i32, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last `)`.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some((f[0].chars().next()?, f[2].parse().ok()?, f[3].parse().ok()?))
}

/// Every live process whose process group is `group` (zombies left out).
fn members(group: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| matches!(stat(*pid), Some((state, g, _)) if g == group && state != 'Z'))
        .collect()
}

fn pid_line(line: &str) -> i32 {
    line.rsplit(' ').next().unwrap().trim().parse().unwrap()
}

/// `tether init -- sh -c 'sleep & sleep'`: SIGTERM reaches the whole group, not only `sh`, and
/// nothing of it outlives tether.
#[test]
fn single_command_mode_signals_and_ends_the_whole_process_group() {
    let mut cmd = init_command();
    cmd.args(["--", "sh", "-c", "echo group $$; sleep 1000 & sleep 1000"]);
    let mut run = Run::spawn(cmd);
    let group = pid_line(&run.wait_for("group "));
    // The command leads a new session and group of its own.
    let (_, g, session) = stat(group).unwrap();
    assert_eq!((g, session), (group, group));
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while members(group).len() < 3 && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(members(group).len(), 3, "sh and two sleeps");
    run.signal(SIGTERM);
    let (code, _) = run.finish();
    assert_eq!(code, 128 + SIGTERM);
    assert_eq!(members(group), Vec::<i32>::new());
}

/// What hung a test harness for 45 minutes: pipelines left running after `sh` died held the
/// harness's output pipe open. Now the whole group gets the signal, and the pipe closes.
#[test]
fn single_command_mode_leaves_no_pipeline_holding_the_output_open() {
    let mut cmd = init_command();
    cmd.args([
        "--",
        "sh",
        "-c",
        "echo group $$; yes a | tail & yes b | tail >&2",
    ]);
    let mut run = Run::spawn(cmd);
    let group = pid_line(&run.wait_for("group "));
    run.signal(SIGTERM);
    // finish() reads the output to its end: it returns only once no process holds it.
    let (code, _) = run.finish();
    assert_eq!(code, 128 + SIGTERM);
    assert_eq!(members(group), Vec::<i32>::new());
}

/// When the command exits, the rest of its group gets SIGTERM, then SIGKILL after --grace, and
/// tether exits with the command's code.
#[test]
fn single_command_mode_ends_what_the_command_left_behind() {
    let mut cmd = init_command();
    cmd.args([
        "--grace",
        "300ms",
        "--",
        "sh",
        "-c",
        "echo group $$; sh -c 'trap \"\" TERM; exec sleep 1000' & sleep 1000 & sleep 0.2; exit 5",
    ]);
    let mut run = Run::spawn(cmd);
    let group = pid_line(&run.wait_for("group "));
    let (code, _) = run.finish();
    assert_eq!(code, 5);
    assert_eq!(members(group), Vec::<i32>::new());
}

/// --no-setsid keeps tether's session: the command gets its own process group in it.
#[test]
fn single_command_mode_without_setsid_keeps_the_session() {
    let mut cmd = init_command();
    cmd.args([
        "--no-setsid",
        "--",
        "sh",
        "-c",
        "echo group $$; exec sleep 1000",
    ]);
    let mut run = Run::spawn(cmd);
    let group = pid_line(&run.wait_for("group "));
    let (_, g, session) = stat(group).unwrap();
    let (_, _, tether_session) = stat(run.pid()).unwrap();
    assert_eq!(g, group);
    assert_eq!(session, tether_session);
    assert_ne!(session, group);
    run.signal(SIGTERM);
    assert_eq!(run.finish().0, 128 + SIGTERM);
}

/// SIGTSTP is passed on and tether stops too; SIGCONT resumes both.
#[test]
fn single_command_mode_passes_job_control_on() {
    const SIGTSTP: i32 = 20;
    const SIGCONT: i32 = 18;
    let mut cmd = init_command();
    cmd.args(["--", "sh", "-c", "echo group $$; exec sleep 1000"]);
    let mut run = Run::spawn(cmd);
    let child = pid_line(&run.wait_for("group "));
    let state = |pid: i32| stat(pid).map(|s| s.0);
    let until = |pid: i32, want: char| {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while state(pid) != Some(want) && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(state(pid), Some(want), "pid {pid}");
    };
    run.signal(SIGTSTP);
    until(child, 'T');
    until(run.pid(), 'T');
    run.signal(SIGCONT);
    until(child, 'S');
    until(run.pid(), 'S');
    run.signal(SIGTERM);
    assert_eq!(run.finish().0, 128 + SIGTERM);
}

#[test]
fn setsid_and_grace_are_for_the_single_command_only() {
    let out = init_command()
        .args(["--no-setsid", "-f", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --no-setsid and --grace apply to `tether init -- COMMAND`\n  = hint: a bundle's daemons take `stop: {signal, grace}` and `forward_signals` in the declaration\n"
    );
}

/// Started with SIGTERM ignored (as some harnesses do), tether still passes SIGTERM on.
#[test]
fn single_command_mode_forwards_sigterm_even_when_started_with_it_ignored() {
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "trap '' TERM; exec \"$0\" \"$@\" -- sh -c 'trap \"echo got TERM; exit 3\" TERM; echo up; while :; do sleep 1 & wait $!; done'",
    ])
    .args(init_argv());
    let mut run = Run::spawn(cmd);
    run.wait_for("up");
    run.signal(SIGTERM);
    let (code, mut lines) = run.finish();
    // The whole group gets SIGTERM: the shell may also report its `sleep` `Terminated`.
    lines.retain(|l| l != "Terminated");
    assert_eq!(lines, ["up", "got TERM"]);
    assert_eq!(code, 3);
}
