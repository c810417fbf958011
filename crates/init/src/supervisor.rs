//! The bundle supervisor: steps, then daemons gated on their dependencies, restarted by policy,
//! stopped in reverse dependency order. One event loop owns all state; everything that waits
//! (exits, probes, timers) runs in a task and reports back as a [`Msg`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tether_spec::model::{
    Check, Condition, Daemon, Forward, Init, OnExit, RestartPolicy, ShutdownOrder,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::exit;
use crate::health::{self, DaemonStatus, Snapshot};
use crate::logs::{self, Format, LogWatch, Output, Source, Stream};
use crate::notify::Notifier;
use crate::probe::{self, ExecContext};
use crate::proc::{self, Exit, Ids, Reaper, Signals, Spec};
use crate::show;

const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// Which daemons run: all, or the named ones and what they depend on.
#[derive(Debug, PartialEq, Eq)]
pub struct Selection {
    pub selected: Vec<bool>,
    /// A dependency started only because a selected daemon needs it: (dependency, needed by).
    pub added: Vec<(String, String)>,
}

/// Narrows the bundle to `names` plus their dependencies. Unknown names are an error that lists
/// the known ones.
pub fn select(init: &Init, names: &[String]) -> Result<Selection, String> {
    let all: Vec<&String> = init.daemons.keys().collect();
    if names.is_empty() {
        return Ok(Selection {
            selected: vec![true; all.len()],
            added: Vec::new(),
        });
    }
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !init.daemons.contains_key(*n))
        .collect();
    if !unknown.is_empty() {
        let known = all
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let list = unknown
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let hint = unknown
            .iter()
            .filter_map(|u| {
                tether_spec::values::did_you_mean(
                    u,
                    &all.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                )
            })
            .map(|s| format!("; did you mean `{s}`?"))
            .next()
            .unwrap_or_default();
        return Err(format!(
            "no daemon named {list} in this bundle (it has: {known}){hint}"
        ));
    }
    let mut selected = vec![false; all.len()];
    let mut added = Vec::new();
    let mut stack: Vec<(String, Option<String>)> =
        names.iter().map(|n| (n.clone(), None)).collect();
    while let Some((name, by)) = stack.pop() {
        let Some(i) = init.daemons.get_index_of(&name) else {
            continue;
        };
        if selected[i] {
            continue;
        }
        selected[i] = true;
        if let Some(by) = by
            && !names.contains(&name)
        {
            added.push((name.clone(), by));
        }
        for dep in init.daemons[i].depends_on.keys() {
            stack.push((dep.clone(), Some(name.clone())));
        }
    }
    added.sort();
    Ok(Selection { selected, added })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Steps,
    Running,
    Stopping,
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Waiting,
    /// Running, readiness not yet passed.
    Starting,
    /// Running and ready (or with no readiness check).
    Running,
    /// Waiting out the backoff before a restart.
    Backoff,
    /// Sent its stop signal.
    Stopping,
    Done(End),
}

#[derive(Clone, Debug, PartialEq)]
enum End {
    Completed,
    Failed,
    GaveUp,
    Stopped,
    Skipped,
    NotSelected,
}

#[derive(Clone, Debug, PartialEq)]
enum StopReason {
    Shutdown,
    NotReady,
    Unhealthy,
}

struct D {
    name: String,
    spec: Daemon,
    ids: Option<Ids>,
    state: State,
    run: u64,
    pid: Option<i32>,
    restarts: u32,
    total_restarts: u32,
    delay: Duration,
    started_at: Instant,
    ever_started: bool,
    last_exit: Option<Exit>,
    /// Probes and timers of the current generation; aborted when it ends.
    tasks: Vec<JoinHandle<()>>,
    stopping: Option<StopReason>,
    kill_sent: bool,
    following: bool,
    /// Set the moment the current run's process is reaped, before its last output is drained:
    /// from then on its pid (and process group id) may belong to someone else.
    reaped: Arc<std::sync::atomic::AtomicBool>,
}

impl D {
    fn has_check(&self) -> bool {
        self.spec.readiness.check != Check::None
    }

    fn alive(&self) -> bool {
        self.pid.is_some()
    }

    /// The pid to signal: none once the process is reaped.
    fn live_pid(&self) -> Option<i32> {
        self.pid
            .filter(|_| !self.reaped.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn state_name(&self) -> &'static str {
        match &self.state {
            State::Waiting => "waiting",
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Done(End::Completed) => "completed",
            State::Done(End::Failed) => "failed",
            State::Done(End::GaveUp) => "gave-up",
            State::Done(End::Stopped) => "stopped",
            State::Done(End::Skipped) => "skipped",
            State::Done(End::NotSelected) => "not-selected",
        }
    }

    fn abort_tasks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

#[derive(Debug)]
enum Msg {
    Exited { i: usize, run: u64, exit: Exit },
    Ready { i: usize, run: u64 },
    NotReady { i: usize, run: u64, why: String },
    Unhealthy { i: usize, run: u64, why: String },
    RestartDue { i: usize, run: u64 },
    GraceOver { i: usize, run: u64 },
}

pub struct Supervisor {
    init: Init,
    daemons: Vec<D>,
    reaper: Arc<Reaper>,
    signals: mpsc::UnboundedReceiver<std::io::Result<i32>>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    out: Output,
    format: Arc<Format>,
    phase: Phase,
    /// Set by the failure that ended the bundle; later failures do not override it.
    exit_code: Option<i32>,
    /// Failures that did not end the bundle by themselves.
    failures: Vec<i32>,
    health: Option<health::Shared>,
    notifier: Option<Notifier>,
    added: Vec<(String, String)>,
    /// SIGTERMs and SIGINTs received: the second one kills at once.
    stop_signals: u32,
}

impl Supervisor {
    pub fn new(
        init: Init,
        selection: Selection,
        signals: Signals,
        out: Output,
    ) -> Result<Supervisor, String> {
        let format = Arc::new(Format::new(&init.logs));
        let mut daemons = Vec::new();
        for (i, (name, spec)) in init.daemons.iter().enumerate() {
            let ids = match &spec.user {
                Some(u) => Some(
                    proc::resolve_user(u)
                        .map_err(|e| format!("daemon `{name}`: user `{u}`: {e}"))?,
                ),
                None => None,
            };
            daemons.push(D {
                name: name.clone(),
                spec: spec.clone(),
                ids,
                state: if selection.selected[i] {
                    State::Waiting
                } else {
                    State::Done(End::NotSelected)
                },
                run: 0,
                pid: None,
                restarts: 0,
                total_restarts: 0,
                delay: spec.restart.backoff.initial.0,
                started_at: Instant::now(),
                ever_started: false,
                last_exit: None,
                tasks: Vec::new(),
                stopping: None,
                kill_sent: false,
                following: false,
                reaped: Arc::default(),
            });
        }
        for step in &init.steps {
            if let Some(u) = &step.user {
                proc::resolve_user(u)
                    .map_err(|e| format!("step `{}`: user `{u}`: {e}", step.name))?;
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let reaper = Arc::new(Reaper::default());
        Ok(Supervisor {
            init,
            daemons,
            signals: proc::dispatch(signals, reaper.clone()),
            reaper,
            tx,
            rx,
            out,
            format,
            phase: Phase::Steps,
            exit_code: None,
            failures: Vec::new(),
            health: None,
            notifier: None,
            added: selection.added,
            stop_signals: 0,
        })
    }

    fn source(&self, name: &str) -> Source {
        Source {
            name: name.to_owned(),
            prefix: self.format.prefix(name),
            format: self.format.clone(),
            out: self.out.clone(),
        }
    }

    /// One line of tether's own, on stderr; the same event goes to `notify` when declared.
    fn event(&self, daemon: Option<&str>, kind: &str, message: String, extra: Value) {
        let text = match daemon {
            Some(d) => format!("{d}: {message}"),
            None => message.clone(),
        };
        let mut out = Vec::new();
        if self.format.is_json() {
            let mut obj = json!({"time": logs::now(), "name": "tether", "event": kind, "daemon": daemon, "message": message});
            if let (Some(o), Value::Object(e)) = (obj.as_object_mut(), &extra) {
                o.extend(e.clone());
            }
            out = obj.to_string().into_bytes();
            out.push(b'\n');
        } else {
            self.format.line(
                &mut out,
                &self.format.prefix("tether"),
                "tether",
                "stderr",
                logs::Piece::Whole,
                text.as_bytes(),
            );
        }
        self.out.send_now(Stream::Stderr, out);
        if let Some(n) = &self.notifier {
            let mut ev =
                json!({"time": logs::now(), "event": kind, "daemon": daemon, "message": message});
            if let (Some(o), Value::Object(e)) = (ev.as_object_mut(), extra) {
                o.extend(e);
            }
            n.send(ev);
        }
    }

    pub async fn run(mut self) -> i32 {
        if let Some(h) = &self.init.health {
            let shared = Arc::new(Mutex::new(Snapshot::default()));
            if let Err(e) = health::serve(&h.listen, shared.clone()).await {
                self.event(
                    None,
                    "error",
                    format!("cannot serve health on {}: {}", h.listen, probe::plain(&e)),
                    json!({}),
                );
                return exit::INTERNAL;
            }
            self.health = Some(shared);
        }
        if let Some(target) = self.init.notify.clone() {
            self.notifier = Some(Notifier::start(
                target,
                self.reaper.clone(),
                self.source("notify"),
            ));
        }
        let selected: Vec<&str> = self
            .daemons
            .iter()
            .filter(|d| d.state != State::Done(End::NotSelected))
            .map(|d| d.name.as_str())
            .collect();
        let mut intro = format!(
            "{} step{}, daemon{}: {}",
            self.init.steps.len(),
            if self.init.steps.len() == 1 { "" } else { "s" },
            if selected.len() == 1 { "" } else { "s" },
            if selected.is_empty() {
                "none".to_owned()
            } else {
                selected.join(", ")
            },
        );
        for (dep, by) in &self.added {
            intro.push_str(&format!("; {dep} also starts, {by} depends on it"));
        }
        self.event(None, "start", intro, json!({"pid": std::process::id()}));
        self.publish();
        if let Some(code) = self.run_steps().await {
            return self.finish(code).await;
        }
        self.phase = Phase::Running;
        self.start_waiting();
        self.publish();
        while !self.all_done() {
            tokio::select! {
                Some(sig) = self.signals.recv() => match sig {
                    Ok(sig) => self.on_signal(sig),
                    Err(e) => {
                        tracing::error!("reading signals: {e}");
                        self.begin_shutdown("cannot read signals".into(), Some(exit::INTERNAL));
                    }
                },
                Some(msg) = self.rx.recv() => self.on_msg(msg),
            }
            self.publish();
        }
        let code = self
            .exit_code
            .unwrap_or_else(|| self.failures.iter().copied().max().unwrap_or(exit::OK));
        self.finish(code).await
    }

    async fn finish(mut self, code: i32) -> i32 {
        self.phase = Phase::Stopping;
        self.publish();
        let how = if code == 0 {
            "all daemons stopped".to_owned()
        } else {
            format!("exit code {code}")
        };
        self.event(
            None,
            "exit",
            format!("exiting: {how}"),
            json!({"code": code}),
        );
        if let Some(n) = self.notifier.take() {
            n.finish(Duration::from_secs(2)).await;
        }
        code
    }

    fn all_done(&self) -> bool {
        self.daemons
            .iter()
            .all(|d| matches!(d.state, State::Done(_)) && !d.alive())
    }

    // ----- steps -----

    /// Runs the steps in order. `Some(code)`: stop here with that code.
    async fn run_steps(&mut self) -> Option<i32> {
        let steps = self.init.steps.clone();
        for step in &steps {
            let ids = step
                .user
                .as_deref()
                .and_then(|u| proc::resolve_user(u).ok());
            let spawned = self.reaper.spawn(Spec {
                argv: &step.command,
                env: step
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                workdir: step.workdir.as_deref(),
                ids,
                capture: true,
                stdin_pipe: false,
                keep_fd: None,
                foreground: false,
            });
            let spawned = match spawned {
                Ok(s) => s,
                Err(e) => {
                    let code = proc::spawn_error_code(&e);
                    let msg = format!("cannot run `{}`: {}", step.command[0], probe::plain(&e));
                    if step.fatal {
                        self.event(
                            Some(&step.name),
                            "step-failed",
                            format!("{msg}; no daemon starts"),
                            json!({"code": code}),
                        );
                        return Some(code);
                    }
                    self.event(
                        Some(&step.name),
                        "step-failed",
                        format!("{msg}; going on (fatal: false)"),
                        json!({"code": code}),
                    );
                    continue;
                }
            };
            let pid = spawned.pid;
            let began = Instant::now();
            self.event(
                Some(&step.name),
                "step-started",
                format!("step started (pid {pid})"),
                json!({"pid": pid}),
            );
            let mut pumps = Vec::new();
            for (fd, stream) in [(spawned.stdout, "stdout"), (spawned.stderr, "stderr")] {
                if let Some(fd) = fd {
                    pumps.push(tokio::spawn(logs::pump(
                        fd,
                        self.source(&step.name),
                        stream,
                        None,
                    )));
                }
            }
            let mut exit_rx = spawned.exit;
            let deadline = step.timeout.map(|t| tokio::time::Instant::now() + t.0);
            let mut timed_out = false;
            let mut stop_signal: Option<i32> = None;
            let mut grace_end: Option<tokio::time::Instant> = None;
            let exit = loop {
                let timeout_at = if timed_out { None } else { deadline };
                tokio::select! {
                    e = &mut exit_rx => break e.unwrap_or(Exit::Code(exit::INTERNAL)),
                    Some(sig) = self.signals.recv() => match sig {
                        Ok(s @ (SIGTERM | SIGINT)) => {
                            if stop_signal.is_some() {
                                proc::kill_group(pid, SIGKILL);
                            } else {
                                self.event(None, "stopping", format!("received {}; stopping step {}", proc::signal_name(s), step.name), json!({}));
                                proc::kill_group(pid, s);
                                stop_signal = Some(s);
                                grace_end = Some(tokio::time::Instant::now() + self.init.shutdown.grace.0);
                            }
                        }
                        Ok(s) => proc::kill_group(pid, s),
                        Err(_) => proc::kill_group(pid, SIGKILL),
                    },
                    _ = sleep_until(timeout_at) => {
                        timed_out = true;
                        proc::kill_group(pid, SIGKILL);
                    }
                    _ = sleep_until(grace_end) => {
                        grace_end = None;
                        proc::kill_group(pid, SIGKILL);
                    }
                }
            };
            // What the step left behind in its group does not outlive it.
            proc::kill_group(pid, SIGKILL);
            for p in pumps {
                let _ = tokio::time::timeout(Duration::from_secs(1), p).await;
            }
            if let Some(sig) = stop_signal {
                let clean = exit == Exit::Signal(sig)
                    || exit == Exit::Code(0)
                    || exit == Exit::Code(128 + sig);
                return Some(if clean { exit::OK } else { exit.code() });
            }
            let took = show(began.elapsed());
            if exit == Exit::Code(0) && !timed_out {
                self.event(
                    Some(&step.name),
                    "step-completed",
                    format!("step completed in {took}"),
                    json!({}),
                );
                continue;
            }
            let what = if timed_out {
                format!(
                    "step timed out after {}",
                    show(step.timeout.map(|t| t.0).unwrap_or_default())
                )
            } else {
                format!("step failed: {}", exit.describe())
            };
            let extra = json!({"exit": exit_json(exit)});
            if step.fatal {
                self.event(
                    Some(&step.name),
                    "step-failed",
                    format!("{what}; no daemon starts (fatal step)"),
                    extra,
                );
                return Some(exit::STEP_FAILED);
            }
            self.event(
                Some(&step.name),
                "step-failed",
                format!("{what}; going on (fatal: false)"),
                extra,
            );
        }
        None
    }

    // ----- daemons -----

    /// Starts every waiting daemon whose dependencies are satisfied; skips those whose
    /// dependencies can no longer be. Repeats until nothing changes.
    fn start_waiting(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        loop {
            let mut changed = false;
            for i in 0..self.daemons.len() {
                if self.daemons[i].state != State::Waiting {
                    continue;
                }
                let mut ready = true;
                let mut blocked: Option<String> = None;
                for (dep, cond) in &self.daemons[i].spec.depends_on {
                    let Some(j) = self.init.daemons.get_index_of(dep) else {
                        continue;
                    };
                    let d = &self.daemons[j];
                    let met = match cond {
                        Condition::Started => d.ever_started,
                        Condition::Ready => d.state == State::Running,
                        Condition::Completed => d.state == State::Done(End::Completed),
                    };
                    if !met {
                        ready = false;
                        if let State::Done(end) = &d.state {
                            let cond = match cond {
                                Condition::Started => "start",
                                Condition::Ready => "become ready",
                                Condition::Completed => "complete",
                            };
                            let how = match end {
                                End::Completed => "completed".to_owned(),
                                End::GaveUp => "gave up".to_owned(),
                                End::Skipped => "did not start".to_owned(),
                                _ => d
                                    .last_exit
                                    .map(|e| e.describe())
                                    .unwrap_or_else(|| "ended".into()),
                            };
                            blocked = Some(format!("{dep} did not {cond} ({how})"));
                        }
                    }
                }
                if let Some(why) = blocked {
                    self.daemons[i].state = State::Done(End::Skipped);
                    let name = self.daemons[i].name.clone();
                    self.event(
                        Some(&name),
                        "skipped",
                        format!("will not start: {why}"),
                        json!({}),
                    );
                    changed = true;
                } else if ready {
                    self.start(i);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    fn start(&mut self, i: usize) {
        let tx = self.tx.clone();
        let source = self.source(&self.daemons[i].name.clone());
        let d = &mut self.daemons[i];
        d.run += 1;
        let run = d.run;
        let mut env: Vec<(String, String)> = d
            .spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Readiness by notification: a pipe (NOTIFY_FD) and a datagram socket (NOTIFY_SOCKET).
        let mut notify = None;
        let mut keep_write_end = None;
        if d.spec.readiness.check == Check::Notify {
            match notify_channels(&d.name, run) {
                Ok((read, write, sock, sock_name)) => {
                    let number = proc::notify_fd_number(proc::raw(&write));
                    env.push(("NOTIFY_FD".into(), number.to_string()));
                    env.push(("NOTIFY_SOCKET".into(), sock_name));
                    keep_write_end = Some((write, number));
                    notify = Some((read, sock));
                }
                Err(e) => tracing::warn!(
                    "daemon {}: cannot set up readiness notification: {e}",
                    d.name
                ),
            }
        }
        let watch = match &d.spec.readiness.check {
            Check::Log { pattern } => {
                let (wtx, wrx) = oneshot::channel();
                regex::Regex::new(pattern)
                    .ok()
                    .map(|regex| (Arc::new(Mutex::new(Some(LogWatch { regex, tx: wtx }))), wrx))
            }
            _ => None,
        };
        let spawned = self.reaper.spawn(Spec {
            argv: &d.spec.command,
            env: env.clone(),
            workdir: d.spec.workdir.as_deref(),
            ids: d.ids,
            capture: true,
            stdin_pipe: false,
            keep_fd: keep_write_end
                .as_ref()
                .map(|(w, number)| (proc::raw(w), *number)),
            foreground: false,
        });
        drop(keep_write_end);
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                let code = proc::spawn_error_code(&e);
                let msg = format!("cannot run `{}`: {}", d.spec.command[0], probe::plain(&e));
                d.state = State::Done(End::Failed);
                let name = d.name.clone();
                self.event(
                    Some(&name),
                    "exec-failed",
                    msg.clone(),
                    json!({"code": code}),
                );
                self.begin_shutdown(format!("{name} could not be started"), Some(code));
                return;
            }
        };
        let pid = spawned.pid;
        d.pid = Some(pid);
        d.started_at = Instant::now();
        d.ever_started = true;
        d.stopping = None;
        d.kill_sent = false;
        let mut pumps = Vec::new();
        for (fd, stream) in [(spawned.stdout, "stdout"), (spawned.stderr, "stderr")] {
            if let Some(fd) = fd {
                pumps.push(tokio::spawn(logs::pump(
                    fd,
                    source.clone(),
                    stream,
                    watch.as_ref().map(|w| w.0.clone()),
                )));
            }
        }
        // The exit is reported after the daemon's last lines are out.
        let exit_rx = spawned.exit;
        let etx = tx.clone();
        let reaped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        d.reaped = reaped.clone();
        tokio::spawn(async move {
            let exit = exit_rx.await.unwrap_or(Exit::Code(exit::INTERNAL));
            // What the daemon left in its group goes with it; the group id is still ours
            // until the last member is gone.
            proc::kill_group(pid, SIGKILL);
            reaped.store(true, std::sync::atomic::Ordering::SeqCst);
            // Its last lines first, then the exit: all pipes drained under one deadline.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                futures_util::future::join_all(pumps),
            )
            .await;
            let _ = etx.send(Msg::Exited { i, run, exit });
        });
        if !d.following {
            d.following = true;
            for file in &d.spec.log_files {
                tokio::spawn(logs::follow(file.into(), source.clone()));
            }
        }
        let restart_note = if d.total_restarts > 0 {
            format!(", restart {}", d.total_restarts)
        } else {
            String::new()
        };
        let name = d.name.clone();
        if d.has_check() {
            d.state = State::Starting;
            let ctx = ExecContext {
                env,
                workdir: d.spec.workdir.clone(),
                ids: d.ids,
            };
            let readiness = d.spec.readiness.clone();
            let reaper = self.reaper.clone();
            let log_rx = watch.map(|w| w.1);
            d.tasks.push(tokio::spawn(async move {
                let result = wait_ready(&readiness, &reaper, &ctx, log_rx, notify).await;
                let _ = tx.send(match result {
                    Ok(()) => Msg::Ready { i, run },
                    Err(why) => Msg::NotReady { i, run, why },
                });
            }));
            self.event(
                Some(&name),
                "started",
                format!("started (pid {pid}{restart_note})"),
                json!({"pid": pid}),
            );
        } else {
            d.state = State::Running;
            self.event(
                Some(&name),
                "started",
                format!("started (pid {pid}{restart_note})"),
                json!({"pid": pid}),
            );
            self.start_liveness(i);
        }
    }

    fn start_liveness(&mut self, i: usize) {
        let d = &mut self.daemons[i];
        let Some(live) = d.spec.liveness.clone() else {
            return;
        };
        let (tx, run, reaper) = (self.tx.clone(), d.run, self.reaper.clone());
        let ctx = ExecContext {
            env: d
                .spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            workdir: d.spec.workdir.clone(),
            ids: d.ids,
        };
        d.tasks.push(tokio::spawn(async move {
            let mut failures = 0;
            loop {
                tokio::time::sleep(live.interval.0).await;
                match probe::attempt(&live.check, &reaper, &ctx, live.timeout.0).await {
                    Ok(()) => failures = 0,
                    Err(why) => {
                        failures += 1;
                        if failures >= live.failure_threshold {
                            let why = format!(
                                "{failures} liveness checks failed in a row, the last: {why}"
                            );
                            let _ = tx.send(Msg::Unhealthy { i, run, why });
                            return;
                        }
                    }
                }
            }
        }));
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Ready { i, run } => {
                let d = &mut self.daemons[i];
                if d.run != run || d.state != State::Starting {
                    return;
                }
                d.state = State::Running;
                let took = show(d.started_at.elapsed());
                let name = d.name.clone();
                self.event(Some(&name), "ready", format!("ready in {took}"), json!({}));
                self.start_liveness(i);
                self.start_waiting();
            }
            Msg::NotReady { i, run, why } => {
                if self.daemons[i].run != run || self.daemons[i].state != State::Starting {
                    return;
                }
                let name = self.daemons[i].name.clone();
                self.event(
                    Some(&name),
                    "not-ready",
                    format!("not ready: {why}"),
                    json!({"reason": why}),
                );
                self.stop(i, StopReason::NotReady);
            }
            Msg::Unhealthy { i, run, why } => {
                if self.daemons[i].run != run
                    || !self.daemons[i].alive()
                    || self.daemons[i].stopping.is_some()
                {
                    return;
                }
                let name = self.daemons[i].name.clone();
                self.event(
                    Some(&name),
                    "unhealthy",
                    format!("unhealthy: {why}; restarting it"),
                    json!({"reason": why}),
                );
                self.stop(i, StopReason::Unhealthy);
            }
            Msg::RestartDue { i, run } => {
                if self.daemons[i].run == run && self.daemons[i].state == State::Backoff {
                    self.start(i);
                }
            }
            Msg::GraceOver { i, run } => {
                let d = &mut self.daemons[i];
                let Some(pid) = d.live_pid().filter(|_| d.run == run && !d.kill_sent) else {
                    return;
                };
                d.kill_sent = true;
                let grace = show(
                    d.spec
                        .stop
                        .grace
                        .map(|g| g.0)
                        .unwrap_or(self.init.shutdown.grace.0),
                );
                let sig = d.spec.stop.signal.name;
                let name = d.name.clone();
                proc::kill_group(pid, SIGKILL);
                self.event(
                    Some(&name),
                    "killed",
                    format!("still running {grace} after {sig}; sent SIGKILL"),
                    json!({}),
                );
            }
            Msg::Exited { i, run, exit } => self.on_exit(i, run, exit),
        }
    }

    /// Sends the stop signal to the daemon's process group and arms its grace timer.
    fn stop(&mut self, i: usize, reason: StopReason) {
        let grace = self.daemons[i]
            .spec
            .stop
            .grace
            .map(|g| g.0)
            .unwrap_or(self.init.shutdown.grace.0);
        let tx = self.tx.clone();
        let d = &mut self.daemons[i];
        if d.pid.is_none() {
            return;
        }
        if d.stopping.is_some() {
            // Already signalled (readiness or liveness): it now ends as part of the shutdown.
            d.stopping = Some(reason);
            return;
        }
        d.abort_tasks();
        d.stopping = Some(reason);
        d.state = State::Stopping;
        if let Some(pid) = d.live_pid() {
            proc::kill_group(pid, d.spec.stop.signal.number);
        }
        let run = d.run;
        d.tasks.push(tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = tx.send(Msg::GraceOver { i, run });
        }));
    }

    fn on_exit(&mut self, i: usize, run: u64, exit: Exit) {
        let phase = self.phase;
        let d = &mut self.daemons[i];
        if d.run != run {
            return;
        }
        d.pid = None;
        d.abort_tasks();
        d.last_exit = Some(exit);
        let ran = d.started_at.elapsed();
        let name = d.name.clone();
        let stop_sig = d.spec.stop.signal.number;
        let extra = json!({"exit": exit_json(exit), "restarts": d.total_restarts});
        let reason = d.stopping.take();
        if reason == Some(StopReason::Shutdown) || phase == Phase::Stopping {
            let asked = reason == Some(StopReason::Shutdown);
            // A success code is clean whether or not it had been asked to stop yet.
            let clean = !d.kill_sent
                && (matches!(exit, Exit::Code(c) if d.spec.success_codes.contains(&c))
                    || (asked
                        && (exit == Exit::Signal(stop_sig) || exit == Exit::Code(128 + stop_sig))));
            d.state = State::Done(End::Stopped);
            if clean {
                self.event(
                    Some(&name),
                    "stopped",
                    format!("stopped ({})", exit.describe()),
                    extra,
                );
            } else {
                let code = if d.kill_sent {
                    128 + SIGKILL
                } else {
                    exit.code()
                };
                self.failures.push(code.max(1));
                self.event(
                    Some(&name),
                    "exited",
                    format!("{} while stopping", exit.describe()),
                    extra,
                );
            }
            self.continue_shutdown();
            return;
        }
        let success =
            reason.is_none() && matches!(exit, Exit::Code(c) if d.spec.success_codes.contains(&c));
        let why = match reason {
            Some(StopReason::NotReady) => " after failing readiness",
            Some(StopReason::Unhealthy) => " after failing liveness",
            _ => "",
        };
        self.event(
            Some(&name),
            "exited",
            format!("{}{why}", exit.describe()),
            extra,
        );
        let d = &mut self.daemons[i];
        let restart = match d.spec.restart.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        };
        if restart {
            let backoff = d.spec.restart.backoff.clone();
            if ran >= backoff.reset_after.0 {
                d.restarts = 0;
                d.delay = backoff.initial.0;
            }
            if let Some(max) = d.spec.restart.max_restarts
                && d.restarts >= max
            {
                d.state = State::Done(End::GaveUp);
                let plural = if max == 1 { "" } else { "s" };
                self.event(
                    Some(&name),
                    "gave-up",
                    format!("gave up after {max} restart{plural}"),
                    json!({"restarts": max}),
                );
                self.ended(i, exit::GAVE_UP);
                return;
            }
            d.restarts += 1;
            d.total_restarts += 1;
            let delay = d.delay;
            d.delay = backoff.max.0.min(delay.mul_f64(backoff.multiplier));
            d.state = State::Backoff;
            let of = d
                .spec
                .restart
                .max_restarts
                .map(|m| format!(" of {m}"))
                .unwrap_or_default();
            let n = d.restarts;
            self.event(
                Some(&name),
                "restarting",
                format!("restarting in {} (restart {n}{of})", show(delay)),
                json!({"delay_ms": delay.as_millis() as u64, "restart": n}),
            );
            if delay.is_zero() {
                self.start(i);
            } else {
                let tx = self.tx.clone();
                self.daemons[i].tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(Msg::RestartDue { i, run });
                }));
            }
            return;
        }
        if success {
            d.state = State::Done(End::Completed);
            self.event(Some(&name), "completed", "completed".into(), json!({}));
            self.ended(i, exit::OK);
        } else {
            d.state = State::Done(End::Failed);
            self.ended(i, exit.code().max(1));
        }
    }

    /// A daemon ended for good with `code` (0: completed).
    fn ended(&mut self, i: usize, code: i32) {
        let d = &self.daemons[i];
        if d.spec.on_exit == OnExit::Shutdown {
            let name = d.name.clone();
            self.begin_shutdown(
                format!("{name} ended and has on_exit: shutdown"),
                Some(code),
            );
            return;
        }
        if code != 0 {
            self.failures.push(code);
        }
        self.start_waiting();
    }

    fn on_signal(&mut self, sig: i32) {
        match sig {
            SIGTERM | SIGINT if self.stop_signals > 0 => {
                self.event(
                    None,
                    "killing",
                    format!(
                        "received {} again: killing everything now",
                        proc::signal_name(sig)
                    ),
                    json!({}),
                );
                for d in &mut self.daemons {
                    if let Some(pid) = d.live_pid() {
                        d.kill_sent = true;
                        proc::kill_group(pid, SIGKILL);
                    }
                }
            }
            SIGTERM | SIGINT => {
                self.stop_signals += 1;
                if self.phase == Phase::Stopping {
                    // Already stopping on its own: this is the request, not the impatience.
                    self.event(
                        None,
                        "stopping",
                        format!("received {}; already stopping", proc::signal_name(sig)),
                        json!({}),
                    );
                } else {
                    self.begin_shutdown(format!("received {}", proc::signal_name(sig)), None)
                }
            }
            other => {
                for d in &self.daemons {
                    match (d.live_pid(), d.spec.forward_signals) {
                        (Some(pid), Forward::Group) => proc::kill_group(pid, other),
                        (Some(pid), Forward::Process) => proc::signal_pid(pid, other),
                        _ => {}
                    }
                }
            }
        }
    }

    fn begin_shutdown(&mut self, why: String, code: Option<i32>) {
        // A daemon that completed does not decide the code: later failures still may.
        if let Some(c) = code.filter(|c| *c != 0) {
            self.exit_code.get_or_insert(c);
        }
        if self.phase == Phase::Stopping {
            return;
        }
        self.phase = Phase::Stopping;
        self.event(None, "stopping", format!("stopping: {why}"), json!({}));
        for d in &mut self.daemons {
            if matches!(d.state, State::Waiting | State::Backoff) {
                d.abort_tasks();
                d.state = State::Done(End::Skipped);
            }
        }
        self.continue_shutdown();
    }

    /// Stops every running daemon that no running daemon depends on (all of them with
    /// `order: parallel`).
    fn continue_shutdown(&mut self) {
        if self.phase != Phase::Stopping {
            return;
        }
        let parallel = self.init.shutdown.order == ShutdownOrder::Parallel;
        let mut to_stop = Vec::new();
        for (i, d) in self.daemons.iter().enumerate() {
            if !d.alive() || d.stopping == Some(StopReason::Shutdown) {
                continue;
            }
            let needed = !parallel
                && self
                    .daemons
                    .iter()
                    .any(|other| other.alive() && other.spec.depends_on.contains_key(&d.name));
            if !needed {
                to_stop.push(i);
            }
        }
        for i in to_stop {
            self.stop(i, StopReason::Shutdown);
        }
    }

    fn publish(&self) {
        let Some(shared) = &self.health else { return };
        let snap = Snapshot {
            phase: match self.phase {
                Phase::Steps => "steps",
                Phase::Running => "running",
                Phase::Stopping => "stopping",
            },
            daemons: self
                .daemons
                .iter()
                .filter(|d| d.state != State::Done(End::NotSelected))
                .map(|d| DaemonStatus {
                    name: d.name.clone(),
                    state: d.state_name(),
                    pid: d.pid,
                    restarts: d.total_restarts,
                    last_exit: d.last_exit.map(|e| e.describe()),
                    ready: d.has_check().then_some(d.state == State::Running),
                    // Not ready while start-up is unfinished: a daemon still waiting for its
                    // dependencies counts, with or without a check of its own.
                    awaited: d.state == State::Waiting
                        || (d.has_check() && !matches!(d.state, State::Done(_))),
                })
                .collect(),
        };
        *shared.lock().unwrap_or_else(|e| e.into_inner()) = snap;
    }
}

fn exit_json(exit: Exit) -> Value {
    match exit {
        Exit::Code(c) => json!({"code": c}),
        Exit::Signal(s) => json!({"signal": proc::signal_name(s), "code": 128 + s}),
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

type NotifyChannels = (
    std::os::fd::OwnedFd,
    std::os::fd::OwnedFd,
    tokio::net::UnixDatagram,
    String,
);

fn notify_channels(name: &str, run: u64) -> std::io::Result<NotifyChannels> {
    use std::os::linux::net::SocketAddrExt;
    let (read, write) = proc::notify_pipe()?;
    // Abstract names are shared by every process in the network namespace (a pod, a
    // host-network container): a random part keeps two tethers apart and the name unguessable.
    let nonce = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(run);
        h.finish()
    };
    let abstract_name = format!("tether/{}/{name}/{run}/{nonce:016x}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())?;
    let sock = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
    sock.set_nonblocking(true)?;
    let sock = tokio::net::UnixDatagram::from_std(sock)?;
    Ok((read, write, sock, format!("@{abstract_name}")))
}

/// Waits until the readiness check passes or its timeout runs out.
async fn wait_ready(
    r: &tether_spec::model::DaemonReadiness,
    reaper: &Arc<Reaper>,
    ctx: &ExecContext,
    log: Option<oneshot::Receiver<()>>,
    notify: Option<(std::os::fd::OwnedFd, tokio::net::UnixDatagram)>,
) -> Result<(), String> {
    let timeout = r.timeout.0;
    let deadline = tokio::time::Instant::now() + timeout;
    let within = format!("within {}", show(timeout));
    match &r.check {
        Check::Log { pattern } => {
            let Some(rx) = log else {
                return Err(format!("`{pattern}` is not a valid pattern"));
            };
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(format!(
                    "its output ended without a line matching `{pattern}`"
                )),
                Err(_) => Err(format!("no output line matched `{pattern}` {within}")),
            }
        }
        Check::Notify => {
            let Some((pipe, sock)) = notify else {
                return Err("notification could not be set up".into());
            };
            match tokio::time::timeout_at(deadline, notified(pipe, sock)).await {
                Ok(()) => Ok(()),
                Err(_) => Err(format!(
                    "no readiness notification (a line on NOTIFY_FD or READY=1 on NOTIFY_SOCKET) {within}"
                )),
            }
        }
        Check::None => Ok(()),
        check => loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let limit = left
                .min(Duration::from_secs(5))
                .max(Duration::from_millis(10));
            let why = match probe::attempt(check, reaper, ctx, limit).await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if tokio::time::Instant::now() + r.interval.0 >= deadline {
                return Err(format!("not ready {within}; the last check: {why}"));
            }
            tokio::time::sleep(r.interval.0).await;
        },
    }
}

/// Resolves on a line written to the notify pipe or a `READY=1` datagram.
async fn notified(pipe: std::os::fd::OwnedFd, sock: tokio::net::UnixDatagram) {
    use tokio::io::AsyncReadExt;
    let by_fd = async move {
        if let Ok(mut p) = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) {
            let mut buf = [0u8; 512];
            loop {
                match p.read(&mut buf).await {
                    Ok(n) if n > 0 && buf[..n].contains(&b'\n') => return,
                    Ok(n) if n > 0 => continue,
                    // Closed without a line: the daemon does not use it; wait for the socket.
                    _ => break,
                }
            }
        }
        std::future::pending::<()>().await
    };
    let by_socket = async move {
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = sock.recv(&mut buf).await
                && String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l.trim() == "READY=1")
            {
                return;
            }
        }
    };
    tokio::select! {
        _ = by_fd => {}
        _ = by_socket => {}
    }
}
