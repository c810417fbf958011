//! The core's decisions, event by event, with exact expected actions: no processes, no clock.

use std::path::Path;
use std::time::Duration;

use tether_spec::SourceText;
use tether_spec::model::Init;

use super::*;

/// Exit codes for these tests only: the real table is the CLI's. Different numbers show that
/// the core takes them as given.
fn code(o: &Outcome) -> u8 {
    match o {
        Outcome::Clean => 0,
        Outcome::Failed { exit, .. } => exit.code().clamp(1, 255) as u8,
        Outcome::StepFailed { .. } => 22,
        Outcome::GaveUp { .. } => 23,
        Outcome::CannotStart { error, .. } => match error {
            StartError::NotFound => 27,
            StartError::CannotExecute => 26,
        },
        Outcome::Internal { .. } => 2,
        Outcome::Command(exit) => exit.code() as u8,
    }
}

fn bundle(body: &str) -> Init {
    let main = SourceText {
        name: "tether.yaml".into(),
        text: format!("version: 1\ninit:\n{body}"),
    };
    match tether_spec::load_texts(main, Vec::new(), Path::new("/projects/demo")) {
        Ok(l) => l.declaration.init.expect("an init section"),
        Err(e) => panic!("{e:?}"),
    }
}

/// A core driven as the event loop drives it: every spawn answered at once, pids from 100.
struct Sim {
    init: Init,
    core: Core,
    now: Duration,
    next_pid: i32,
}

impl Sim {
    fn new(body: &str) -> Sim {
        Sim::selecting(body, &[])
    }

    fn selecting(body: &str, names: &[&str]) -> Sim {
        let init = bundle(body);
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let selection = select(&init, &names).unwrap();
        Sim {
            core: Core::new(&init, selection, code),
            init,
            now: Duration::ZERO,
            next_pid: 100,
        }
    }

    /// The latest slot of that name (a removed one too).
    fn daemon(&self, name: &str) -> usize {
        self.core
            .daemons
            .iter()
            .rposition(|d| d.name == name)
            .unwrap()
    }

    fn at_ms(&mut self, ms: u64) -> &mut Sim {
        self.now = Duration::from_millis(ms);
        self
    }

    /// Feeds `event`; each spawn is answered as started (or failed, for commands named
    /// `missing`). Returns every action, each spawn followed by what its answer brought.
    fn feed(&mut self, event: Event) -> Vec<String> {
        let mut shown = Vec::new();
        let mut queue: std::collections::VecDeque<Action> =
            self.core.handle(event, self.now).into();
        while let Some(action) = queue.pop_front() {
            shown.push(self.show(&action));
            if let Action::Spawn { unit, run } = action {
                let answer = if self.command(unit) == "missing" {
                    Event::SpawnFailed {
                        unit,
                        run,
                        error: StartError::NotFound,
                        why: "cannot run `missing`: No such file or directory".into(),
                    }
                } else {
                    self.next_pid += 1;
                    Event::Started {
                        unit,
                        run,
                        pid: self.next_pid - 1,
                    }
                };
                for a in self.core.handle(answer, self.now).into_iter().rev() {
                    queue.push_front(a);
                }
            }
        }
        shown
    }

    fn exit(&mut self, name: &str, exit: Exit) -> Vec<String> {
        let i = self.daemon(name);
        let run = self.core.daemons[i].run;
        let unit = Unit::Daemon(i);
        let mut shown = self.feed(Event::Reaped { unit, run });
        shown.extend(self.feed(Event::Exited { unit, run, exit }));
        shown
    }

    fn timer(&mut self, name: &str, timer: Timer) -> Vec<String> {
        let i = self.daemon(name);
        let run = self.core.daemons[i].run;
        self.feed(Event::Timer {
            unit: Unit::Daemon(i),
            run,
            timer,
        })
    }

    fn ready(&mut self, name: &str) -> Vec<String> {
        let i = self.daemon(name);
        let run = self.core.daemons[i].run;
        self.feed(Event::Ready { daemon: i, run })
    }

    fn command(&self, unit: Unit) -> &str {
        match unit {
            Unit::Step(k) => &self.init.steps[k].command[0],
            Unit::Daemon(i) => &self.core.spec(i).command[0],
        }
    }

    fn name(&self, unit: Unit) -> &str {
        match unit {
            Unit::Step(k) => &self.init.steps[k].name,
            Unit::Daemon(i) => &self.core.spec(i).name,
        }
    }

    fn show(&self, a: &Action) -> String {
        match a {
            Action::Spawn { unit, .. } => format!("spawn {}", self.name(*unit)),
            Action::Check { daemon, kind, .. } => {
                format!("{kind:?} check of {}", self.core.spec(*daemon).name)
            }
            Action::Signal {
                unit,
                signal,
                target,
            } => {
                let whose = if *target == Target::Group {
                    "'s group"
                } else {
                    ""
                };
                format!("{} to {}{whose}", signal_name(*signal), self.name(*unit))
            }
            Action::Kill { unit } => format!("SIGKILL to {}'s group", self.name(*unit)),
            Action::Arm {
                unit, timer, after, ..
            } => format!(
                "{timer:?} timer of {} for {}",
                self.name(*unit),
                show(*after)
            ),
            Action::Cancel { unit } => format!("cancel {}", self.name(*unit)),
            Action::Emit(l) => match &l.daemon {
                Some(d) => format!("[tether] {d}: {}", l.message),
                None => format!("[tether] {}", l.message),
            },
            Action::Reply(Reply::Refused(why)) => format!("refused: {why}"),
            Action::Reply(Reply::Done(changes)) => {
                let each: Vec<String> = changes
                    .iter()
                    .map(|c| match &c.why {
                        Some(w) => format!("{} {} ({w})", c.what, c.daemon),
                        None => format!("{} {}", c.what, c.daemon),
                    })
                    .collect();
                format!("reply: {}", each.join("; "))
            }
            Action::Finish(o) => format!("finish: {o:?}"),
        }
    }
}

fn begin(sim: &mut Sim) -> Vec<String> {
    sim.feed(Event::Begin { pid: 1 })
}

#[test]
fn daemons_start_as_each_condition_allows() {
    let mut sim = Sim::new(
        r#"
  daemons:
    db:
      command: [db]
      readiness: { mode: tcp, port: 5432 }
    migrate:
      command: [migrate]
      depends_on: { db: ready }
    api:
      command: [api]
      depends_on: { migrate: completed }
    side:
      command: [side]
      depends_on: { api: started }
"#,
    );
    assert_eq!(
        begin(&mut sim),
        [
            "[tether] 0 steps, daemons: db, migrate, api, side",
            "spawn db",
            "[tether] db: started (pid 100)",
            "Readiness check of db",
        ]
    );
    assert_eq!(
        sim.at_ms(250).ready("db"),
        [
            "[tether] db: ready in 250ms",
            "spawn migrate",
            "[tether] migrate: started (pid 101)",
        ]
    );
    assert_eq!(
        sim.exit("migrate", Exit::Code(0)),
        [
            "cancel migrate",
            "[tether] migrate: exited with code 0",
            "[tether] migrate: completed",
            "spawn api",
            "[tether] api: started (pid 102)",
            "spawn side",
            "[tether] side: started (pid 103)",
        ]
    );
}

#[test]
fn a_started_dependency_lets_an_earlier_daemon_start_in_the_next_pass() {
    let mut sim = Sim::new(
        r#"
  daemons:
    x: { command: [x], depends_on: { z: started } }
    z: { command: [z] }
    w: { command: [w] }
"#,
    );
    let spawns: Vec<String> = begin(&mut sim)
        .into_iter()
        .filter(|l| l.starts_with("spawn"))
        .collect();
    assert_eq!(spawns, ["spawn z", "spawn w", "spawn x"]);
}

#[test]
fn restarts_back_off_up_to_the_max_and_reset_after_a_long_run() {
    let mut sim = Sim::new(
        r#"
  daemons:
    flaky:
      command: [flaky]
      restart: { policy: always, backoff: { initial: 1s, max: 3s, reset_after: 60s } }
"#,
    );
    begin(&mut sim);
    assert_eq!(
        sim.at_ms(100).exit("flaky", Exit::Code(1)),
        [
            "cancel flaky",
            "[tether] flaky: exited with code 1",
            "[tether] flaky: restarting in 1s (restart 1)",
            "Backoff timer of flaky for 1s",
        ]
    );
    assert_eq!(
        sim.at_ms(1100).timer("flaky", Timer::Backoff),
        [
            "spawn flaky",
            "[tether] flaky: started (pid 101, restart 1)"
        ]
    );
    let delays: Vec<String> = (0..3)
        .flat_map(|_| {
            let mut lines = sim.exit("flaky", Exit::Code(1));
            lines.extend(sim.timer("flaky", Timer::Backoff));
            lines
        })
        .filter(|l| l.contains("restarting"))
        .collect();
    assert_eq!(
        delays,
        [
            "[tether] flaky: restarting in 2s (restart 2)",
            "[tether] flaky: restarting in 3s (restart 3)",
            "[tether] flaky: restarting in 3s (restart 4)",
        ]
    );
    // Up for a minute since its last start: the backoff and the count start over.
    assert_eq!(
        sim.at_ms(61_100).exit("flaky", Exit::Code(1))[2],
        "[tether] flaky: restarting in 1s (restart 1)"
    );
    // The only daemon is in backoff: a signal stops the bundle, cleanly.
    assert_eq!(
        sim.feed(Event::Signal(SIGTERM)),
        [
            "[tether] stopping: received SIGTERM",
            "cancel flaky",
            "[tether] exiting: all daemons stopped",
            "finish: Clean",
        ]
    );
}

#[test]
fn a_daemon_gives_up_after_max_restarts() {
    let mut sim = Sim::new(
        r#"
  daemons:
    flaky:
      command: [flaky]
      restart: { policy: on-failure, backoff: { initial: 0s }, max_restarts: 2 }
    other:
      command: [other]
"#,
    );
    begin(&mut sim);
    assert_eq!(
        sim.exit("flaky", Exit::Code(1)),
        [
            "cancel flaky",
            "[tether] flaky: exited with code 1",
            "[tether] flaky: restarting in 0ms (restart 1 of 2)",
            "spawn flaky",
            "[tether] flaky: started (pid 102, restart 1)",
        ]
    );
    sim.exit("flaky", Exit::Code(1));
    assert_eq!(
        sim.exit("flaky", Exit::Signal(11)),
        [
            "cancel flaky",
            "[tether] flaky: exited with code 1",
            "[tether] flaky: gave up after 2 restarts",
        ]
        .map(|s| s.replace("exited with code 1", "killed by SIGSEGV"))
    );
    // on_exit: ignore (the default): the bundle goes on, and the give-up decides the code.
    sim.feed(Event::Signal(SIGTERM));
    assert_eq!(
        sim.exit("other", Exit::Signal(SIGTERM)),
        [
            "cancel other",
            "[tether] other: stopped (killed by SIGTERM)",
            "[tether] exiting: exit code 23",
            "finish: GaveUp { daemon: \"flaky\" }",
        ]
    );
}

const QUITTER: &str = r#"
  daemons:
    quitter:
      command: [quitter]
      restart: { policy: never }
      readiness: { mode: tcp, port: 9 }
      on_exit: ON_EXIT
    needs:
      command: [needs]
      depends_on: [quitter]
    other:
      command: [other]
"#;

#[test]
fn on_exit_ignore_keeps_the_others_and_skips_dependents() {
    let mut sim = Sim::new(&QUITTER.replace("ON_EXIT", "ignore"));
    begin(&mut sim);
    assert_eq!(
        sim.exit("quitter", Exit::Code(5)),
        [
            "cancel quitter",
            "[tether] quitter: exited with code 5",
            "[tether] needs: will not start: quitter did not become ready (exited with code 5)",
        ]
    );
    assert_eq!(
        sim.feed(Event::Signal(SIGTERM)),
        [
            "[tether] stopping: received SIGTERM",
            "cancel other",
            "SIGTERM to other's group",
            "Grace timer of other for 8s",
        ]
    );
    assert_eq!(
        sim.exit("other", Exit::Signal(SIGTERM))[2..],
        [
            "[tether] exiting: exit code 5",
            "finish: Failed { name: \"quitter\", exit: Code(5) }",
        ]
    );
}

#[test]
fn on_exit_shutdown_takes_the_bundle_down_with_its_code() {
    let mut sim = Sim::new(&QUITTER.replace("ON_EXIT", "shutdown"));
    begin(&mut sim);
    assert_eq!(
        sim.exit("quitter", Exit::Code(5)),
        [
            "cancel quitter",
            "[tether] quitter: exited with code 5",
            "[tether] stopping: quitter ended and has on_exit: shutdown",
            "cancel needs",
            "cancel other",
            "SIGTERM to other's group",
            "Grace timer of other for 8s",
        ]
    );
    // It ignores SIGTERM and is killed: a failure, but the first one decides the code.
    assert_eq!(
        sim.at_ms(8000).timer("other", Timer::Grace),
        [
            "SIGKILL to other's group",
            "[tether] other: still running 8s after SIGTERM; sent SIGKILL",
        ]
    );
    assert_eq!(
        sim.exit("other", Exit::Signal(SIGKILL)),
        [
            "cancel other",
            "[tether] other: killed by SIGKILL while stopping",
            "[tether] exiting: exit code 5",
            "finish: Failed { name: \"quitter\", exit: Code(5) }",
        ]
    );
}

#[test]
fn the_highest_failure_decides_and_a_clean_stop_is_zero() {
    let body = r#"
  daemons:
    a: { command: [a], restart: { policy: never } }
    b: { command: [b], restart: { policy: never } }
    c: { command: [c] }
"#;
    let mut sim = Sim::new(body);
    begin(&mut sim);
    sim.exit("a", Exit::Code(7));
    sim.exit("b", Exit::Code(3));
    sim.feed(Event::Signal(SIGINT));
    assert_eq!(
        sim.exit("c", Exit::Code(0))[1..],
        [
            "[tether] c: stopped (exited with code 0)",
            "[tether] exiting: exit code 7",
            "finish: Failed { name: \"a\", exit: Code(7) }",
        ]
    );
    let mut sim = Sim::new(body);
    begin(&mut sim);
    sim.feed(Event::Signal(SIGTERM));
    sim.exit("a", Exit::Code(143));
    sim.exit("b", Exit::Signal(SIGTERM));
    assert_eq!(
        sim.exit("c", Exit::Code(0))[1..],
        [
            "[tether] c: stopped (exited with code 0)",
            "[tether] exiting: all daemons stopped",
            "finish: Clean",
        ]
    );
}

const CHAIN: &str = r#"
  shutdown: { order: ORDER, grace: 2s }
  daemons:
    base: { command: [base] }
    middle: { command: [middle], depends_on: { base: started } }
    top: { command: [top], depends_on: { middle: started }, stop: { signal: SIGINT, grace: 1s } }
"#;

#[test]
fn shutdown_stops_dependents_before_their_dependencies() {
    let mut sim = Sim::new(&CHAIN.replace("ORDER", "reverse-dependency"));
    begin(&mut sim);
    assert_eq!(
        sim.feed(Event::Signal(SIGTERM)),
        [
            "[tether] stopping: received SIGTERM",
            "cancel top",
            "SIGINT to top's group",
            "Grace timer of top for 1s",
        ]
    );
    assert_eq!(
        sim.exit("top", Exit::Signal(SIGINT)),
        [
            "cancel top",
            "[tether] top: stopped (killed by SIGINT)",
            "cancel middle",
            "SIGTERM to middle's group",
            "Grace timer of middle for 2s",
        ]
    );
    assert_eq!(
        sim.exit("middle", Exit::Code(143))[1..],
        [
            "[tether] middle: stopped (exited with code 143)",
            "cancel base",
            "SIGTERM to base's group",
            "Grace timer of base for 2s",
        ]
    );
}

#[test]
fn parallel_shutdown_signals_every_daemon_at_once() {
    let mut sim = Sim::new(&CHAIN.replace("ORDER", "parallel"));
    begin(&mut sim);
    let signalled: Vec<String> = sim
        .feed(Event::Signal(SIGTERM))
        .into_iter()
        .filter(|l| l.contains(" to "))
        .collect();
    assert_eq!(
        signalled,
        [
            "SIGTERM to base's group",
            "SIGTERM to middle's group",
            "SIGINT to top's group",
        ]
    );
}

#[test]
fn a_second_signal_kills_everything_and_a_reaped_process_is_left_alone() {
    let mut sim = Sim::new(&CHAIN.replace("ORDER", "parallel"));
    begin(&mut sim);
    sim.feed(Event::Signal(SIGTERM));
    let base = sim.daemon("base");
    sim.feed(Event::Reaped {
        unit: Unit::Daemon(base),
        run: 1,
    });
    assert_eq!(
        sim.feed(Event::Signal(SIGINT)),
        [
            "[tether] received SIGINT again: killing everything now",
            "SIGKILL to middle's group",
            "SIGKILL to top's group",
        ]
    );
    // Killed: no grace line later, and the kill counts as the exit.
    assert_eq!(sim.timer("top", Timer::Grace), Vec::<String>::new());
    sim.exit("base", Exit::Signal(SIGTERM));
    sim.exit("middle", Exit::Signal(SIGKILL));
    assert_eq!(
        sim.exit("top", Exit::Code(0))[1..],
        [
            "[tether] top: exited with code 0 while stopping",
            "[tether] exiting: exit code 137",
            "finish: Failed { name: \"top\", exit: Signal(9) }",
        ]
    );
}

#[test]
fn other_signals_go_where_each_daemon_asks() {
    let mut sim = Sim::new(
        r#"
  daemons:
    g: { command: [g] }
    p: { command: [p], forward_signals: process }
    n: { command: [n], forward_signals: none }
"#,
    );
    begin(&mut sim);
    assert_eq!(
        sim.feed(Event::Signal(1)),
        ["SIGHUP to g's group", "SIGHUP to p"]
    );
}

#[test]
fn a_requested_stop_is_neither_a_failure_nor_a_restart() {
    let mut sim = Sim::new(
        r#"
  daemons:
    web:
      command: [web]
      restart: { policy: always }
      on_exit: shutdown
    other: { command: [other] }
"#,
    );
    begin(&mut sim);
    let web = sim.daemon("web");
    assert_eq!(
        sim.feed(Event::Control(Request::Stop(vec![web]))),
        [
            "[tether] web: stopping (requested)",
            "reply: stop web",
            "cancel web",
            "SIGTERM to web's group",
            "Grace timer of web for 8s",
        ]
    );
    assert_eq!(
        sim.exit("web", Exit::Code(1)),
        ["cancel web", "[tether] web: stopped (exited with code 1)"]
    );
    assert_eq!(sim.core.snapshot().daemons[0].state, "stopped");
    assert_eq!(
        sim.feed(Event::Control(Request::Start(vec![web]))),
        [
            "cancel web",
            "spawn web",
            "[tether] web: started (pid 102)",
            "reply: start web"
        ]
    );
    assert_eq!(
        sim.feed(Event::Control(Request::Restart(vec![web])))[0],
        "[tether] web: restarting (requested)"
    );
    assert_eq!(
        sim.exit("web", Exit::Signal(SIGTERM))[1..],
        [
            "[tether] web: stopped (killed by SIGTERM)",
            "spawn web",
            "[tether] web: started (pid 103)"
        ]
    );
}

#[test]
fn readiness_and_liveness_failures_stop_the_daemon_then_policy_decides() {
    let mut sim = Sim::new(
        r#"
  daemons:
    app:
      command: [app]
      readiness: { mode: http, url: "http://127.0.0.1:8080/" }
      liveness: { mode: tcp, port: 8080 }
      restart: { policy: on-failure, backoff: { initial: 0s } }
"#,
    );
    begin(&mut sim);
    let app = sim.daemon("app");
    assert_eq!(
        sim.feed(Event::NotReady {
            daemon: app,
            run: 1,
            why: "not ready within 30s".into(),
        }),
        [
            "[tether] app: not ready: not ready within 30s",
            "cancel app",
            "SIGTERM to app's group",
            "Grace timer of app for 8s",
        ]
    );
    assert_eq!(
        sim.exit("app", Exit::Signal(SIGTERM))[1..],
        [
            "[tether] app: killed by SIGTERM after failing readiness",
            "[tether] app: restarting in 0ms (restart 1)",
            "spawn app",
            "[tether] app: started (pid 101, restart 1)",
            "Readiness check of app",
        ]
    );
    assert_eq!(sim.ready("app")[1..], ["Liveness check of app"]);
    assert_eq!(
        sim.feed(Event::LivenessFailed {
            daemon: app,
            run: 2,
            failures: 3,
            last: "refused".into(),
        })[0],
        "[tether] app: unhealthy: 3 liveness checks failed in a row, the last: refused; restarting it"
    );
}

#[test]
fn a_daemon_that_cannot_start_stops_the_bundle() {
    let mut sim = Sim::new(
        r#"
  daemons:
    ok: { command: [ok] }
    broken: { command: [missing], depends_on: { ok: started } }
    later: { command: [later], depends_on: { ok: started } }
"#,
    );
    assert_eq!(
        begin(&mut sim)[1..],
        [
            "spawn ok",
            "[tether] ok: started (pid 100)",
            "spawn broken",
            "[tether] broken: cannot run `missing`: No such file or directory",
            "[tether] stopping: broken could not be started",
            "cancel later",
            "cancel ok",
            "SIGTERM to ok's group",
            "Grace timer of ok for 8s",
        ]
    );
    assert_eq!(
        sim.exit("ok", Exit::Signal(SIGTERM))[2..],
        [
            "[tether] exiting: exit code 27",
            "finish: CannotStart { name: \"broken\", error: NotFound }",
        ]
    );
}

#[test]
fn steps_run_in_order_and_a_fatal_failure_starts_no_daemon() {
    let mut sim = Sim::new(
        r#"
  steps:
    - { name: optional, fatal: false, command: [opt] }
    - { name: config, command: [config], timeout: 200ms }
  daemons:
    never: { command: [never] }
"#,
    );
    assert_eq!(
        begin(&mut sim),
        [
            "[tether] 2 steps, daemon: never",
            "spawn optional",
            "[tether] optional: step started (pid 100)",
        ]
    );
    let step = |k| Unit::Step(k);
    sim.feed(Event::Reaped {
        unit: step(0),
        run: 1,
    });
    assert_eq!(
        sim.at_ms(50).feed(Event::Exited {
            unit: step(0),
            run: 1,
            exit: Exit::Code(4),
        }),
        [
            "cancel optional",
            "[tether] optional: step failed: exited with code 4; going on (fatal: false)",
            "spawn config",
            "[tether] config: step started (pid 101)",
            "Timeout timer of config for 200ms",
        ]
    );
    assert_eq!(
        sim.feed(Event::Timer {
            unit: step(1),
            run: 1,
            timer: Timer::Timeout,
        }),
        ["SIGKILL to config's group"]
    );
    assert_eq!(
        sim.feed(Event::Exited {
            unit: step(1),
            run: 1,
            exit: Exit::Signal(SIGKILL),
        }),
        [
            "cancel config",
            "[tether] config: step timed out after 200ms; no daemon starts (fatal step)",
            "[tether] exiting: exit code 22",
            "finish: StepFailed { step: \"config\" }",
        ]
    );
}

#[test]
fn a_step_is_stopped_like_a_daemon_signal_grace_then_sigkill() {
    let mut sim = Sim::new(
        r#"
  shutdown: { grace: 3s }
  steps:
    - { name: slow, command: [slow] }
  daemons:
    never: { command: [never] }
"#,
    );
    begin(&mut sim);
    let slow = Unit::Step(0);
    assert_eq!(
        sim.feed(Event::Signal(SIGTERM)),
        [
            "[tether] received SIGTERM; stopping step slow",
            "SIGTERM to slow's group",
            "Grace timer of slow for 3s",
        ]
    );
    assert_eq!(
        sim.feed(Event::Timer {
            unit: slow,
            run: 1,
            timer: Timer::Grace,
        }),
        ["SIGKILL to slow's group"]
    );
    assert_eq!(
        sim.feed(Event::Exited {
            unit: slow,
            run: 1,
            exit: Exit::Signal(SIGKILL),
        })[1..],
        [
            "[tether] exiting: exit code 137",
            "finish: Failed { name: \"slow\", exit: Signal(9) }",
        ]
    );
}

#[test]
fn health_shows_what_is_awaited() {
    let mut sim = Sim::new(
        r#"
  daemons:
    db: { command: [db], readiness: { mode: tcp, port: 5432 } }
    app: { command: [app], depends_on: [db] }
"#,
    );
    begin(&mut sim);
    let snap = sim.core.snapshot();
    let states: Vec<_> = snap
        .daemons
        .iter()
        .map(|d| (d.name.as_str(), d.state, d.pid, d.ready, d.awaited))
        .collect();
    assert_eq!(
        (snap.phase, states),
        (
            "running",
            vec![
                ("db", "starting", Some(100), Some(false), true),
                ("app", "waiting", None, None, true),
            ]
        )
    );
    sim.ready("db");
    assert!(sim.core.snapshot().is_ready());
}

#[test]
fn selection_adds_dependencies_and_suggests_for_unknown_names() {
    let init = bundle(
        r#"
  daemons:
    db: { command: [db] }
    api: { command: [api], depends_on: [db] }
    other: { command: [other] }
"#,
    );
    let names = selected_names(" api, ,");
    assert_eq!(names, ["api"]);
    assert_eq!(
        select(&init, &names),
        Ok(Selection {
            selected: vec![true, true, false],
            added: vec![("db".into(), "api".into())],
        })
    );
    assert_eq!(
        select(&init, &["apj".into(), "nope".into()]),
        Err("no daemon named `apj`, `nope` in this bundle (it has: db, api, other); did you mean `api`?".into())
    );
    assert_eq!(select(&init, &[]).unwrap().selected, [true, true, true]);
    let mut sim = Sim::selecting(
        r#"
  daemons:
    db: { command: [db] }
    api: { command: [api], depends_on: [db] }
    other: { command: [other] }
"#,
        &["api"],
    );
    assert_eq!(
        begin(&mut sim)[0],
        "[tether] 0 steps, daemons: db, api; db also starts, api depends on it"
    );
}

fn control(sim: &mut Sim, request: Request) -> Vec<String> {
    sim.feed(Event::Control(request))
}

const STACK: &str = r#"
  daemons:
    db: { command: [db] }
    api: { command: [api], depends_on: { db: started } }
    web: { command: [web], depends_on: { api: started } }
    other: { command: [other] }
"#;

#[test]
fn a_requested_stop_stops_what_depends_on_it_first_and_says_so() {
    let mut sim = Sim::new(STACK);
    begin(&mut sim);
    let db = sim.daemon("db");
    assert_eq!(
        control(&mut sim, Request::Stop(vec![db])),
        [
            "[tether] web: stopping (requested: it depends on api)",
            "[tether] api: stopping (requested: it depends on db)",
            "[tether] db: stopping (requested)",
            "reply: stop web (it depends on api); stop api (it depends on db); stop db",
            "cancel web",
            "SIGTERM to web's group",
            "Grace timer of web for 8s",
        ]
    );
    let states = |sim: &Sim| -> Vec<(&'static str, bool)> {
        sim.core
            .snapshot()
            .daemons
            .iter()
            .map(|d| (d.state, d.settled))
            .collect()
    };
    assert_eq!(
        states(&sim),
        [
            ("stopping", false),
            ("stopping", false),
            ("stopping", false),
            ("running", true)
        ]
    );
    assert_eq!(
        sim.exit("web", Exit::Signal(SIGTERM)),
        [
            "cancel web",
            "[tether] web: stopped (killed by SIGTERM)",
            "cancel api",
            "SIGTERM to api's group",
            "Grace timer of api for 8s",
        ]
    );
    sim.exit("api", Exit::Signal(SIGTERM));
    assert_eq!(
        sim.exit("db", Exit::Code(0)),
        ["cancel db", "[tether] db: stopped (exited with code 0)"]
    );
    assert_eq!(
        states(&sim),
        [
            ("stopped", true),
            ("stopped", true),
            ("stopped", true),
            ("running", true)
        ]
    );
    // What is already stopped is said so.
    assert_eq!(
        control(&mut sim, Request::Stop(vec![db])),
        ["reply: stopped db (stopped)"]
    );
}

#[test]
fn a_requested_start_starts_what_it_depends_on_first() {
    let mut sim = Sim::new(STACK);
    begin(&mut sim);
    let (db, web) = (sim.daemon("db"), sim.daemon("web"));
    control(&mut sim, Request::Stop(vec![db]));
    sim.exit("web", Exit::Signal(SIGTERM));
    sim.exit("api", Exit::Signal(SIGTERM));
    sim.exit("db", Exit::Signal(SIGTERM));
    assert_eq!(
        control(&mut sim, Request::Start(vec![web])),
        [
            "cancel db",
            "cancel api",
            "cancel web",
            "spawn db",
            "[tether] db: started (pid 104)",
            "spawn api",
            "[tether] api: started (pid 105)",
            "spawn web",
            "[tether] web: started (pid 106)",
            "reply: start db (api depends on it); start api (web depends on it); start web",
        ]
    );
    // Starting what runs is nothing to do.
    assert_eq!(
        control(&mut sim, Request::Start(vec![web])),
        ["reply: running web (running)"]
    );
}

#[test]
fn a_completed_daemon_runs_again_when_named_but_not_as_a_dependency() {
    let mut sim = Sim::new(
        r#"
  daemons:
    migrate: { command: [migrate], restart: { policy: never } }
    app: { command: [app], depends_on: { migrate: completed } }
"#,
    );
    begin(&mut sim);
    sim.exit("migrate", Exit::Code(0));
    let (migrate, app) = (sim.daemon("migrate"), sim.daemon("app"));
    control(&mut sim, Request::Stop(vec![app]));
    sim.exit("app", Exit::Signal(SIGTERM));
    assert_eq!(
        control(&mut sim, Request::Start(vec![app])),
        [
            "cancel app",
            "spawn app",
            "[tether] app: started (pid 102)",
            "reply: start app"
        ]
    );
    assert_eq!(
        control(&mut sim, Request::Start(vec![migrate])),
        [
            "cancel migrate",
            "spawn migrate",
            "[tether] migrate: started (pid 103)",
            "reply: start migrate"
        ]
    );
}

#[test]
fn stopping_every_daemon_keeps_the_bundle_until_a_shutdown() {
    let mut sim = Sim::new(
        r#"
  daemons:
    a: { command: [a] }
    b: { command: [b] }
"#,
    );
    begin(&mut sim);
    let (a, b) = (sim.daemon("a"), sim.daemon("b"));
    control(&mut sim, Request::Stop(vec![a, b]));
    sim.exit("a", Exit::Signal(SIGTERM));
    // No `finish`: the bundle waits with no daemon running.
    assert_eq!(
        sim.exit("b", Exit::Signal(SIGTERM)),
        ["cancel b", "[tether] b: stopped (killed by SIGTERM)"]
    );
    assert_eq!(sim.core.snapshot().phase, "running");
    assert_eq!(
        control(&mut sim, Request::Shutdown),
        [
            "[tether] stopping: requested by tether ctl",
            "reply: ",
            "[tether] exiting: all daemons stopped",
            "finish: Clean",
        ]
    );
}

#[test]
fn a_requested_restart_restarts_what_depends_on_it_after_it() {
    let mut sim = Sim::new(
        r#"
  daemons:
    db:
      command: [db]
      readiness: { mode: tcp, port: 5432 }
    api: { command: [api], depends_on: [db] }
"#,
    );
    begin(&mut sim);
    sim.ready("db");
    let db = sim.daemon("db");
    assert_eq!(
        control(&mut sim, Request::Restart(vec![db])),
        [
            "[tether] api: restarting (requested: it depends on db)",
            "[tether] db: restarting (requested)",
            "reply: restart api (it depends on db); restart db",
            "cancel api",
            "SIGTERM to api's group",
            "Grace timer of api for 8s",
        ]
    );
    // api waits while db restarts, and starts again once db is ready.
    assert_eq!(
        sim.exit("api", Exit::Signal(SIGTERM)),
        [
            "cancel api",
            "[tether] api: stopped (killed by SIGTERM)",
            "cancel db",
            "SIGTERM to db's group",
            "Grace timer of db for 8s",
        ]
    );
    assert_eq!(
        sim.exit("db", Exit::Signal(SIGTERM)),
        [
            "cancel db",
            "[tether] db: stopped (killed by SIGTERM)",
            "spawn db",
            "[tether] db: started (pid 102)",
            "Readiness check of db",
        ]
    );
    assert_eq!(
        sim.ready("db"),
        [
            "[tether] db: ready in 0ms",
            "spawn api",
            "[tether] api: started (pid 103)",
        ]
    );
}

#[test]
fn signals_go_to_a_running_daemon_and_unknown_names_list_the_known_ones() {
    let mut sim = Sim::new(
        r#"
  daemons:
    web: { command: [web] }
    worker: { command: [worker], forward_signals: process }
"#,
    );
    begin(&mut sim);
    let (web, worker) = (sim.daemon("web"), sim.daemon("worker"));
    assert_eq!(
        control(
            &mut sim,
            Request::Signal {
                daemon: web,
                signal: 1
            }
        ),
        [
            "SIGHUP to web's group",
            "[tether] web: sent SIGHUP to its process group (requested)",
            "reply: signal web (SIGHUP to its process group)",
        ]
    );
    assert_eq!(
        control(
            &mut sim,
            Request::Signal {
                daemon: worker,
                signal: 10
            }
        )[0],
        "SIGUSR1 to worker"
    );
    control(&mut sim, Request::Stop(vec![web]));
    sim.exit("web", Exit::Signal(SIGTERM));
    assert_eq!(
        control(
            &mut sim,
            Request::Signal {
                daemon: web,
                signal: 1
            }
        ),
        ["refused: web is not running (stopped)"]
    );
    assert_eq!(
        sim.core.resolve(&["wrker".into(), "web".into()]),
        Err(
            "no daemon named `wrker` in this bundle (it has: web, worker); did you mean `worker`?"
                .into()
        )
    );
    assert_eq!(
        sim.core.resolve(&["worker".into(), "web".into()]),
        Ok(vec![worker, web])
    );
}

#[test]
fn requests_wait_for_the_steps_but_a_shutdown_does_not() {
    let mut sim = Sim::new(
        r#"
  steps:
    - { name: setup, command: [setup] }
  daemons:
    web: { command: [web] }
"#,
    );
    begin(&mut sim);
    assert_eq!(
        control(&mut sim, Request::Stop(vec![0])),
        ["refused: the start-up steps are still running; the daemons have not started"]
    );
    assert_eq!(
        control(&mut sim, Request::Shutdown)[..2],
        ["reply: ", "[tether] received SIGTERM; stopping step setup"]
    );
}

fn reload(sim: &mut Sim, body: &str) -> Vec<String> {
    let init = bundle(body);
    sim.init = init.clone();
    control(sim, Request::Reload(Box::new(init)))
}

#[test]
fn a_reload_adds_removes_and_restarts_what_differs_and_leaves_the_rest() {
    let mut sim = Sim::new(
        r#"
  daemons:
    same: { command: [same] }
    gone: { command: [gone] }
    changed: { command: [changed, "1"] }
    follower: { command: [follower], depends_on: { changed: started } }
"#,
    );
    begin(&mut sim);
    let before: Vec<Option<i32>> = sim.core.snapshot().daemons.iter().map(|d| d.pid).collect();
    assert_eq!(before, [Some(100), Some(101), Some(102), Some(103)]);
    assert_eq!(
        reload(
            &mut sim,
            r#"
  daemons:
    same: { command: [same] }
    changed: { command: [changed, "2"] }
    follower: { command: [follower], depends_on: { changed: started } }
    new: { command: [new] }
"#,
        ),
        [
            "[tether] gone: stopping (requested: no longer declared)",
            "[tether] follower: restarting (requested: it depends on changed)",
            "[tether] changed: restarting (requested: its declaration changed)",
            "[tether] new: added by a reload",
            "spawn new",
            "[tether] new: started (pid 104)",
            // Once the spawn is answered, what nothing depends on any more is signalled.
            "cancel gone",
            "SIGTERM to gone's group",
            "Grace timer of gone for 8s",
            "cancel follower",
            "SIGTERM to follower's group",
            "Grace timer of follower for 8s",
            "reply: unchanged same; remove gone (no longer declared); restart follower (it depends on changed); restart changed (its declaration changed); add new (new in the declaration)",
        ]
    );
    sim.exit("gone", Exit::Signal(SIGTERM));
    sim.exit("follower", Exit::Signal(SIGTERM));
    assert_eq!(
        sim.exit("changed", Exit::Signal(SIGTERM)),
        [
            "cancel changed",
            "[tether] changed: stopped (killed by SIGTERM)",
            "spawn changed",
            "[tether] changed: started (pid 105)",
            "spawn follower",
            "[tether] follower: started (pid 106)",
        ]
    );
    // The new declaration is the one started; the unchanged daemon kept its process.
    assert_eq!(
        sim.core.spec(sim.core.index_of("changed").unwrap()).command,
        ["changed", "2"]
    );
    let after: Vec<(String, Option<i32>)> = sim
        .core
        .snapshot()
        .daemons
        .iter()
        .map(|d| (d.name.clone(), d.pid))
        .collect();
    assert_eq!(
        after,
        [
            ("same".into(), Some(100)),
            ("changed".into(), Some(105)),
            ("follower".into(), Some(106)),
            ("new".into(), Some(104)),
        ]
    );
    assert_eq!(sim.core.index_of("gone"), None);
}
