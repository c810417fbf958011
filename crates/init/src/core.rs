//! The supervisor's decisions, and nothing else: a state machine fed [`Event`]s that answers
//! with [`Action`]s. No I/O, no clock, no processes: the event loop (`supervisor.rs`) reads the
//! world, feeds it here, and carries the actions out.
//!
//! The one protocol rule: every [`Action::Spawn`] is answered with [`Event::Started`] or
//! [`Event::SpawnFailed`] before any other event, because what starts next depends on it.

use std::time::Duration;

use serde_json::{Value, json};
use tether_probe::show;
use tether_spec::model::{Condition, Daemon, Forward, Init, OnExit, RestartPolicy, ShutdownOrder};

use crate::health::{DaemonStatus, Snapshot};
use crate::steps::{Steps, StepsEnd};

pub const SIGINT: i32 = 2;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The shell's convention: the code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Exit::Code(c) => format!("exited with code {c}"),
            Exit::Signal(s) => format!("killed by {}", signal_name(s)),
        }
    }
}

pub fn signal_name(n: i32) -> String {
    tether_spec::model::SIGNALS
        .iter()
        .find(|(_, num)| *num == n)
        .map(|(name, _)| (*name).to_owned())
        .unwrap_or_else(|| format!("signal {n}"))
}

pub(crate) fn exit_json(exit: Exit) -> Value {
    match exit {
        Exit::Code(c) => json!({"code": c}),
        Exit::Signal(s) => json!({"signal": signal_name(s), "code": 128 + s}),
    }
}

/// Why a command could not be started, as a shell tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartError {
    NotFound,
    CannotExecute,
}

/// How a run of `tether init` ended. The CLI turns it into an exit code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A requested shutdown in which every daemon stopped cleanly, or every daemon completed.
    Clean,
    /// A daemon failed (or a step stopped by a signal did not end cleanly); `exit` is how it
    /// ended (SIGKILL when it had to be killed after its grace).
    Failed { name: String, exit: Exit },
    /// A fatal step failed or timed out; no daemon was started.
    StepFailed { step: String },
    /// A daemon gave up after `max_restarts`.
    GaveUp { daemon: String },
    /// A step's or daemon's command could not be started.
    CannotStart { name: String, error: StartError },
    /// tether itself could not go on.
    Internal { why: String },
    /// `tether init -- COMMAND`: how the command ended.
    Command(Exit),
}

/// Maps an outcome to its exit code; given by the CLI, which owns the numbers. The core uses it
/// to pick the failure that decides and for the codes in its event lines.
pub type CodeOf = fn(&Outcome) -> u8;

/// A process the supervisor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    Step(usize),
    Daemon(usize),
}

/// Generation of a unit: events of an earlier run are stale.
pub type Run = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The delay before a restart.
    Backoff,
    /// The time a stopping process has before SIGKILL.
    Grace,
    /// A step's `timeout`.
    Timeout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Group,
    Process,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    Readiness,
    Liveness,
}

/// One event line of tether's own (and one `notify` event).
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub kind: &'static str,
    pub daemon: Option<String>,
    pub message: String,
    pub extra: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Spawn {
        unit: Unit,
        run: Run,
    },
    Check {
        daemon: usize,
        run: Run,
        kind: CheckKind,
    },
    Signal {
        unit: Unit,
        signal: i32,
        target: Target,
    },
    /// SIGKILL to the unit's process group.
    Kill {
        unit: Unit,
    },
    Arm {
        unit: Unit,
        run: Run,
        timer: Timer,
        after: Duration,
    },
    /// Abandon the unit's checks and timers.
    Cancel {
        unit: Unit,
    },
    Emit(Line),
    /// The answer to an [`Event::Control`] request; exactly one per request.
    Reply(Reply),
    Finish(Outcome),
}

/// An operation asked for while the bundle runs (`tether ctl`). Daemons by index; names are
/// turned into indexes by [`Core::resolve`].
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Starts them and what they depend on.
    Start(Vec<usize>),
    /// Stops them, after what depends on them.
    Stop(Vec<usize>),
    /// Stops them (after what depends on them) and starts them all again.
    Restart(Vec<usize>),
    Signal {
        daemon: usize,
        signal: i32,
    },
    /// Applies a new declaration: adds, removes and restarts what differs.
    Reload(Box<Init>),
    /// Stops the bundle, as SIGTERM does.
    Shutdown,
}

/// What a request did, daemon by daemon.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Done(Vec<Change>),
    Refused(String),
}

/// One daemon's part in a request: `what` is `start`, `stop`, `restart`, `signal`, `add`,
/// `remove`, `unchanged`, `running` (nothing to start) or `stopped` (nothing to stop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub daemon: String,
    pub what: &'static str,
    /// Why it is touched when it was not named (`it depends on db`), or a detail.
    pub why: Option<String>,
}

impl Change {
    fn new(daemon: &str, what: &'static str, why: Option<String>) -> Change {
        Change {
            daemon: daemon.to_owned(),
            what,
            why,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Supervision begins; `pid` is tether's own.
    Begin {
        pid: u32,
    },
    Started {
        unit: Unit,
        run: Run,
        pid: i32,
    },
    /// `why` says what happened, in words (`cannot run ...`).
    SpawnFailed {
        unit: Unit,
        run: Run,
        error: StartError,
        why: String,
    },
    Ready {
        daemon: usize,
        run: Run,
    },
    NotReady {
        daemon: usize,
        run: Run,
        why: String,
    },
    LivenessFailed {
        daemon: usize,
        run: Run,
        failures: u32,
        last: String,
    },
    /// The process was reaped; its last output may still be on its way.
    Reaped {
        unit: Unit,
        run: Run,
    },
    /// The process ended and its output is drained.
    Exited {
        unit: Unit,
        run: Run,
        exit: Exit,
    },
    Timer {
        unit: Unit,
        run: Run,
        timer: Timer,
    },
    Signal(i32),
    /// Signals can no longer be read.
    SignalsLost,
    /// A requested operation (the control socket), answered by one [`Action::Reply`]. A
    /// requested stop is not a failure: no restart policy or `on_exit` acts on it.
    Control(Request),
}

/// One running process as the core sees it, and the one way every process is stopped: a
/// signal to its group with a grace timer, then SIGKILL to the group when the grace runs out
/// or when asked again.
#[derive(Clone, Debug, Default)]
pub(crate) struct Proc {
    pub pid: Option<i32>,
    /// Reaped: its pid (and group id) may be someone else's now.
    pub reaped: bool,
    pub killed: bool,
}

impl Proc {
    pub fn started(pid: i32) -> Proc {
        Proc {
            pid: Some(pid),
            ..Proc::default()
        }
    }

    /// Not yet reported as exited (its output may still be draining).
    pub fn alive(&self) -> bool {
        self.pid.is_some()
    }

    /// Still ours to signal.
    pub fn live(&self) -> bool {
        self.pid.is_some() && !self.reaped
    }

    /// Sends `signal` to the group and arms the grace timer.
    pub fn stop(&self, unit: Unit, run: Run, signal: i32, grace: Duration, out: &mut Vec<Action>) {
        if self.live() {
            out.push(Action::Signal {
                unit,
                signal,
                target: Target::Group,
            });
        }
        out.push(Action::Arm {
            unit,
            run,
            timer: Timer::Grace,
            after: grace,
        });
    }

    /// SIGKILL to the group, once; `false` when already sent or nothing is left to kill.
    pub fn kill(&mut self, unit: Unit, out: &mut Vec<Action>) -> bool {
        if !self.live() || self.killed {
            return false;
        }
        self.killed = true;
        out.push(Action::Kill { unit });
        true
    }
}

pub(crate) fn emit(
    out: &mut Vec<Action>,
    kind: &'static str,
    who: Option<&str>,
    message: String,
    extra: Value,
) {
    out.push(Action::Emit(Line {
        kind,
        daemon: who.map(str::to_owned),
        message,
        extra,
    }));
}

// ----- selection -----

/// Which daemons run: all, or the named ones and what they depend on.
#[derive(Debug, PartialEq, Eq)]
pub struct Selection {
    pub selected: Vec<bool>,
    /// A dependency started only because a selected daemon needs it: (dependency, needed by).
    pub added: Vec<(String, String)>,
}

/// The names in a `select_env` value: `a, b,,c` is `a`, `b`, `c`.
pub fn selected_names(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Narrows the bundle to `names` plus their dependencies. Unknown names are an error that lists
/// the known ones.
pub fn select(init: &Init, names: &[String]) -> Result<Selection, String> {
    let all: Vec<&str> = init.daemons.keys().map(String::as_str).collect();
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
        let list = unknown
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let hint = unknown
            .iter()
            .find_map(|u| tether_spec::values::did_you_mean(u, &all))
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        return Err(format!(
            "no daemon named {list} in this bundle (it has: {}){hint}",
            all.join(", ")
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

// ----- the state machine -----

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

#[derive(Clone, Copy, Debug, PartialEq)]
enum StopReason {
    Shutdown,
    NotReady,
    Unhealthy,
    /// Asked for (a control socket): not a failure, no restart, no `on_exit`.
    Requested,
    /// Asked to restart: started again once it is gone.
    Restart,
}

struct Slot {
    name: String,
    spec: Daemon,
    /// Resolved `depends_on`.
    deps: Vec<(usize, Condition)>,
    grace: Duration,
    state: State,
    run: Run,
    proc: Proc,
    restarts: u32,
    total_restarts: u32,
    delay: Duration,
    started_at: Duration,
    ever_started: bool,
    last_exit: Option<Exit>,
    stopping: Option<StopReason>,
    /// A requested stop or restart that waits until what depends on it is gone.
    pending: Option<StopReason>,
    /// The declaration it takes on at its next start (a reload changed it).
    next: Option<Box<Daemon>>,
    /// No longer declared (a reload): stopped, then kept only so that its index stays valid.
    removed: bool,
}

impl Slot {
    fn new(name: &str, spec: &Daemon, grace: Duration, state: State) -> Slot {
        Slot {
            name: name.to_owned(),
            spec: spec.clone(),
            deps: Vec::new(),
            grace: spec.stop.grace.map_or(grace, |g| g.0),
            state,
            run: 0,
            proc: Proc::default(),
            restarts: 0,
            total_restarts: 0,
            delay: spec.restart.backoff.initial.0,
            started_at: Duration::ZERO,
            ever_started: false,
            last_exit: None,
            stopping: None,
            pending: None,
            next: None,
            removed: false,
        }
    }

    /// Running, or about to: what a stop has to act on.
    fn active(&self) -> bool {
        self.proc.alive() || !matches!(self.state, State::Done(_))
    }

    /// Where a requested operation leaves it to rest: running, backing off, or done.
    fn settled(&self) -> bool {
        self.pending.is_none()
            && self.stopping.is_none()
            && match self.state {
                State::Running | State::Backoff => true,
                State::Done(_) => !self.proc.alive(),
                _ => false,
            }
    }

    fn has_check(&self) -> bool {
        self.spec.readiness.check != tether_spec::model::Check::None
    }

    fn state_name(&self) -> &'static str {
        if self.pending.is_some() {
            return "stopping";
        }
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
}

/// The supervisor's state: the bundle's static facts and where every daemon and step is.
pub struct Core {
    daemons: Vec<Slot>,
    steps: Steps,
    order: ShutdownOrder,
    /// `shutdown.grace`: a daemon's grace unless its `stop.grace` says otherwise.
    grace: Duration,
    added: Vec<(String, String)>,
    phase: Phase,
    /// The failure that ended the bundle; later ones do not override it.
    cause: Option<Outcome>,
    /// Failures that did not end the bundle by themselves.
    failures: Vec<Outcome>,
    /// SIGTERMs and SIGINTs received: the second one kills at once.
    stop_signals: u32,
    code_of: CodeOf,
    /// A start-up pass waiting for a spawn's answer: where it goes on, and whether it changed
    /// anything so far.
    pass: Option<(usize, bool)>,
    finished: bool,
}

impl Core {
    pub fn new(init: &Init, selection: Selection, code_of: CodeOf) -> Core {
        let daemons = init
            .daemons
            .iter()
            .enumerate()
            .map(|(i, (name, spec))| {
                let state = if selection.selected[i] {
                    State::Waiting
                } else {
                    State::Done(End::NotSelected)
                };
                Slot::new(name, spec, init.shutdown.grace.0, state)
            })
            .collect();
        let mut core = Core {
            daemons,
            steps: Steps::new(&init.steps, init.shutdown.grace.0, code_of),
            order: init.shutdown.order,
            grace: init.shutdown.grace.0,
            added: selection.added,
            phase: Phase::Steps,
            cause: None,
            failures: Vec::new(),
            stop_signals: 0,
            code_of,
            pass: None,
            finished: false,
        };
        for i in 0..core.daemons.len() {
            core.daemons[i].deps = core.resolve_deps(&core.daemons[i].spec);
        }
        core
    }

    /// `depends_on` as indexes of the daemons declared now.
    fn resolve_deps(&self, spec: &Daemon) -> Vec<(usize, Condition)> {
        spec.depends_on
            .iter()
            .filter_map(|(dep, c)| self.index_of(dep).map(|j| (j, *c)))
            .collect()
    }

    /// The declared daemon of that name (not one a reload removed).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.daemons
            .iter()
            .position(|d| d.name == name && !d.removed)
    }

    /// How many daemon slots there are (a reload adds some; none is ever taken away).
    pub fn len(&self) -> usize {
        self.daemons.len()
    }

    /// The declaration a daemon's next process is started from.
    pub fn spec(&self, i: usize) -> &Daemon {
        &self.daemons[i].spec
    }

    /// The daemons named, for a request; unknown (or not selected) names are an error that
    /// lists the known ones.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<usize>, String> {
        if names.is_empty() {
            return Err("name at least one daemon".into());
        }
        let known: Vec<&str> = self
            .daemons
            .iter()
            .filter(|d| !d.removed && d.state != State::Done(End::NotSelected))
            .map(|d| d.name.as_str())
            .collect();
        let mut found = Vec::new();
        let mut unknown = Vec::new();
        for n in names {
            match self.index_of(n) {
                Some(i) if known.contains(&n.as_str()) => {
                    if !found.contains(&i) {
                        found.push(i);
                    }
                }
                _ => unknown.push(n),
            }
        }
        if unknown.is_empty() {
            return Ok(found);
        }
        let list = unknown
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let hint = unknown
            .iter()
            .find_map(|u| tether_spec::values::did_you_mean(u, &known))
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        let has = if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        };
        Err(format!(
            "no daemon named {list} in this bundle (it has: {has}){hint}"
        ))
    }

    /// Feeds one event; `now` is the time since supervision began.
    pub fn handle(&mut self, event: Event, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        if self.phase == Phase::Steps
            && let Event::Control(req) = &event
        {
            if *req != Request::Shutdown {
                out.push(Action::Reply(Reply::Refused(
                    "the start-up steps are still running; the daemons have not started".into(),
                )));
                return out;
            }
            out.push(Action::Reply(Reply::Done(Vec::new())));
            let mut more = self.handle(Event::Signal(SIGTERM), now);
            out.append(&mut more);
            return out;
        }
        if self.phase == Phase::Steps {
            let end = match event {
                Event::Begin { pid } => {
                    self.intro(pid, &mut out);
                    self.steps.begin(&mut out)
                }
                ev => self.steps.handle(ev, now, &mut out),
            };
            match end {
                None => return out,
                Some(StepsEnd::Finish(outcome)) => {
                    self.finish(outcome, &mut out);
                    return out;
                }
                Some(StepsEnd::Done) => {
                    self.phase = Phase::Running;
                    self.start_waiting(&mut out);
                }
            }
        } else {
            self.on_event(event, now, &mut out);
            if self.pass.is_none() {
                self.advance_requested(&mut out);
            }
        }
        // Signals that came while the last step's output drained, once start-up has spawned
        // what it could.
        if self.pass.is_none() {
            for s in self.steps.take_pending() {
                self.signal(s, &mut out);
            }
        }
        if !self.finished && self.all_done() {
            let outcome = self.cause.clone().unwrap_or_else(|| {
                let code_of = self.code_of;
                self.failures
                    .iter()
                    .max_by_key(|o| code_of(o))
                    .cloned()
                    .unwrap_or(Outcome::Clean)
            });
            self.finish(outcome, &mut out);
        }
        out
    }

    fn intro(&self, pid: u32, out: &mut Vec<Action>) {
        let selected: Vec<&str> = self
            .daemons
            .iter()
            .filter(|d| d.state != State::Done(End::NotSelected))
            .map(|d| d.name.as_str())
            .collect();
        let steps = self.steps.len();
        let mut intro = format!(
            "{steps} step{}, daemon{}: {}",
            if steps == 1 { "" } else { "s" },
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
        emit(out, "start", None, intro, json!({"pid": pid}));
    }

    fn finish(&mut self, outcome: Outcome, out: &mut Vec<Action>) {
        self.phase = Phase::Stopping;
        self.finished = true;
        let code = (self.code_of)(&outcome);
        let how = if code == 0 {
            "all daemons stopped".to_owned()
        } else {
            format!("exit code {code}")
        };
        emit(
            out,
            "exit",
            None,
            format!("exiting: {how}"),
            json!({"code": code}),
        );
        out.push(Action::Finish(outcome));
    }

    /// Every daemon ended, and the bundle with them. Daemons stopped on request (or removed)
    /// do not end a running bundle: it waits, with none running, for a start, a reload, a
    /// `shutdown` or SIGTERM, as supervisorctl users expect.
    fn all_done(&self) -> bool {
        let ended = |d: &Slot| matches!(d.state, State::Done(_)) && !d.proc.alive();
        let steered = |d: &Slot| d.removed || d.state == State::Done(End::Stopped);
        self.phase != Phase::Steps
            && self.daemons.iter().all(ended)
            && (self.phase == Phase::Stopping || !self.daemons.iter().any(steered))
    }

    /// What `/status` and `/readyz` show.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            phase: match self.phase {
                Phase::Steps => "steps",
                Phase::Running => "running",
                Phase::Stopping => "stopping",
            },
            daemons: self
                .daemons
                .iter()
                .filter(|d| d.state != State::Done(End::NotSelected))
                .filter(|d| !d.removed || d.proc.alive())
                .map(|d| DaemonStatus {
                    name: d.name.clone(),
                    state: d.state_name(),
                    pid: d.proc.pid,
                    since: d.proc.alive().then_some(d.started_at),
                    settled: d.settled(),
                    removed: d.removed,
                    restarts: d.total_restarts,
                    last_exit: d.last_exit.map(|e| e.describe()),
                    ready: d.has_check().then_some(d.state == State::Running),
                    // Not ready while start-up is unfinished: a daemon still waiting for its
                    // dependencies counts, with or without a check of its own.
                    awaited: d.state == State::Waiting
                        || (d.has_check() && !matches!(d.state, State::Done(_))),
                })
                .collect(),
            began: None,
        }
    }

    fn on_event(&mut self, event: Event, now: Duration, out: &mut Vec<Action>) {
        match event {
            Event::Begin { .. } => {}
            Event::Started {
                unit: Unit::Daemon(i),
                run,
                pid,
            } => {
                if self.daemons[i].run == run {
                    self.started(i, pid, now, out);
                    if self.pass.is_some() {
                        self.start_waiting(out);
                    }
                }
            }
            Event::SpawnFailed {
                unit: Unit::Daemon(i),
                run,
                error,
                why,
            } => {
                let d = &mut self.daemons[i];
                if d.run != run {
                    return;
                }
                d.state = State::Done(End::Failed);
                let name = d.name.clone();
                let outcome = Outcome::CannotStart {
                    name: name.clone(),
                    error,
                };
                let code = (self.code_of)(&outcome);
                emit(out, "exec-failed", Some(&name), why, json!({"code": code}));
                self.begin_shutdown(format!("{name} could not be started"), Some(outcome), out);
                self.start_waiting(out);
            }
            Event::Ready { daemon: i, run } => {
                let d = &mut self.daemons[i];
                if d.run != run || d.state != State::Starting {
                    return;
                }
                d.state = State::Running;
                let took = show(now.saturating_sub(d.started_at));
                let name = d.name.clone();
                emit(
                    out,
                    "ready",
                    Some(&name),
                    format!("ready in {took}"),
                    json!({}),
                );
                self.start_liveness(i, out);
                self.start_waiting(out);
            }
            Event::NotReady {
                daemon: i,
                run,
                why,
            } => {
                let d = &self.daemons[i];
                if d.run != run || d.state != State::Starting {
                    return;
                }
                let message = format!("not ready: {why}");
                self.check_failed(i, "not-ready", message, why, StopReason::NotReady, out);
            }
            Event::LivenessFailed {
                daemon: i,
                run,
                failures,
                last,
            } => {
                let d = &self.daemons[i];
                if d.run != run || !d.proc.alive() || d.stopping.is_some() {
                    return;
                }
                let why = format!("{failures} liveness checks failed in a row, the last: {last}");
                let message = format!("unhealthy: {why}; restarting it");
                self.check_failed(i, "unhealthy", message, why, StopReason::Unhealthy, out);
            }
            Event::Reaped {
                unit: Unit::Daemon(i),
                run,
            } => {
                if self.daemons[i].run == run {
                    self.daemons[i].proc.reaped = true;
                }
            }
            Event::Exited {
                unit: Unit::Daemon(i),
                run,
                exit,
            } => self.exited(i, run, exit, now, out),
            Event::Timer {
                unit: Unit::Daemon(i),
                run,
                timer,
            } => self.timer(i, run, timer, out),
            Event::Signal(sig) => self.signal(sig, out),
            Event::SignalsLost => {
                let why = "cannot read signals".to_owned();
                let outcome = Outcome::Internal { why: why.clone() };
                self.begin_shutdown(why, Some(outcome), out);
            }
            Event::Control(req) => {
                let reply = self.control(req, out);
                out.push(Action::Reply(reply));
            }
            // Steps are over: their late events are stale.
            Event::Started { .. }
            | Event::SpawnFailed { .. }
            | Event::Reaped { .. }
            | Event::Exited { .. }
            | Event::Timer { .. } => {}
        }
    }

    // ----- daemons -----

    /// Starts every waiting daemon whose dependencies are satisfied; skips those whose
    /// dependencies can no longer be. Repeats until nothing changes. A spawn pauses the pass
    /// until its answer comes back ([`Event::Started`]).
    fn start_waiting(&mut self, out: &mut Vec<Action>) {
        if self.phase != Phase::Running {
            self.pass = None;
            return;
        }
        let (mut i, mut changed) = self.pass.take().unwrap_or((0, false));
        loop {
            while i < self.daemons.len() {
                if self.daemons[i].state == State::Waiting {
                    match self.gate(i) {
                        Gate::Blocked(why) => {
                            self.daemons[i].state = State::Done(End::Skipped);
                            let name = self.daemons[i].name.clone();
                            emit(
                                out,
                                "skipped",
                                Some(&name),
                                format!("will not start: {why}"),
                                json!({}),
                            );
                            changed = true;
                        }
                        Gate::Open => {
                            self.pass = Some((i + 1, true));
                            self.spawn(i, out);
                            return;
                        }
                        Gate::Wait => {}
                    }
                }
                i += 1;
            }
            if !changed {
                return;
            }
            (i, changed) = (0, false);
        }
    }

    fn gate(&self, i: usize) -> Gate {
        let mut gate = Gate::Open;
        for &(j, cond) in &self.daemons[i].deps {
            let d = &self.daemons[j];
            let leaving = d.pending.is_some() || d.stopping.is_some();
            let met = !leaving
                && match cond {
                    Condition::Started => d.ever_started && d.state != State::Waiting,
                    Condition::Ready => d.state == State::Running,
                    Condition::Completed => d.state == State::Done(End::Completed),
                };
            if met {
                continue;
            }
            let State::Done(end) = &d.state else {
                if gate == Gate::Open {
                    gate = Gate::Wait;
                }
                continue;
            };
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
            // The last blocked dependency names the reason.
            gate = Gate::Blocked(format!("{} did not {cond} ({how})", d.name));
        }
        gate
    }

    fn spawn(&mut self, i: usize, out: &mut Vec<Action>) {
        let d = &mut self.daemons[i];
        d.run += 1;
        out.push(Action::Spawn {
            unit: Unit::Daemon(i),
            run: d.run,
        });
    }

    fn started(&mut self, i: usize, pid: i32, now: Duration, out: &mut Vec<Action>) {
        let d = &mut self.daemons[i];
        d.proc = Proc::started(pid);
        d.started_at = now;
        d.ever_started = true;
        d.stopping = None;
        let restart_note = if d.total_restarts > 0 {
            format!(", restart {}", d.total_restarts)
        } else {
            String::new()
        };
        let name = d.name.clone();
        let has_check = d.has_check();
        let run = d.run;
        emit(
            out,
            "started",
            Some(&name),
            format!("started (pid {pid}{restart_note})"),
            json!({"pid": pid}),
        );
        if has_check {
            self.daemons[i].state = State::Starting;
            out.push(Action::Check {
                daemon: i,
                run,
                kind: CheckKind::Readiness,
            });
        } else {
            self.daemons[i].state = State::Running;
            self.start_liveness(i, out);
        }
    }

    fn start_liveness(&self, i: usize, out: &mut Vec<Action>) {
        let d = &self.daemons[i];
        if d.spec.liveness.is_some() {
            out.push(Action::Check {
                daemon: i,
                run: d.run,
                kind: CheckKind::Liveness,
            });
        }
    }

    fn timer(&mut self, i: usize, run: Run, timer: Timer, out: &mut Vec<Action>) {
        let d = &mut self.daemons[i];
        if d.run != run {
            return;
        }
        match timer {
            Timer::Backoff if d.state == State::Backoff => self.spawn(i, out),
            Timer::Grace => {
                if !d.proc.kill(Unit::Daemon(i), out) {
                    return;
                }
                let (grace, sig) = (show(d.grace), d.spec.stop.signal.name);
                let name = d.name.clone();
                emit(
                    out,
                    "killed",
                    Some(&name),
                    format!("still running {grace} after {sig}; sent SIGKILL"),
                    json!({}),
                );
            }
            _ => {}
        }
    }

    /// A failed readiness or liveness check stops the daemon; its exit then counts as a failure.
    fn check_failed(
        &mut self,
        i: usize,
        kind: &'static str,
        message: String,
        why: String,
        reason: StopReason,
        out: &mut Vec<Action>,
    ) {
        let name = self.daemons[i].name.clone();
        emit(out, kind, Some(&name), message, json!({"reason": why}));
        self.stop(i, reason, out);
    }

    /// Sends the stop signal to the daemon's process group and arms its grace timer.
    fn stop(&mut self, i: usize, reason: StopReason, out: &mut Vec<Action>) {
        let d = &mut self.daemons[i];
        if !d.proc.alive() {
            return;
        }
        if d.stopping.is_some() {
            // Already signalled: it now ends for this reason.
            d.stopping = Some(reason);
            return;
        }
        out.push(Action::Cancel {
            unit: Unit::Daemon(i),
        });
        d.stopping = Some(reason);
        d.state = State::Stopping;
        d.proc.stop(
            Unit::Daemon(i),
            d.run,
            d.spec.stop.signal.number,
            d.grace,
            out,
        );
    }

    fn exited(&mut self, i: usize, run: Run, exit: Exit, now: Duration, out: &mut Vec<Action>) {
        let phase = self.phase;
        let d = &mut self.daemons[i];
        if d.run != run {
            return;
        }
        let killed = d.proc.killed;
        d.proc = Proc::default();
        out.push(Action::Cancel {
            unit: Unit::Daemon(i),
        });
        d.last_exit = Some(exit);
        let ran = now.saturating_sub(d.started_at);
        let name = d.name.clone();
        let stop_sig = d.spec.stop.signal.number;
        let extra = json!({"exit": exit_json(exit), "restarts": d.total_restarts});
        let reason = d.stopping.take();
        let success_code = matches!(exit, Exit::Code(c) if d.spec.success_codes.contains(&c));
        if reason == Some(StopReason::Shutdown) || phase == Phase::Stopping {
            let asked = reason == Some(StopReason::Shutdown);
            // A success code is clean whether or not it had been asked to stop yet.
            let clean = !killed
                && (success_code
                    || (asked
                        && (exit == Exit::Signal(stop_sig) || exit == Exit::Code(128 + stop_sig))));
            d.state = State::Done(End::Stopped);
            if clean {
                let message = format!("stopped ({})", exit.describe());
                emit(out, "stopped", Some(&name), message, extra);
            } else {
                // One killed after its grace counts as killed, whatever its last words were.
                let counted = if killed { Exit::Signal(SIGKILL) } else { exit };
                self.failures.push(Outcome::Failed {
                    name: name.clone(),
                    exit: counted,
                });
                let message = format!("{} while stopping", exit.describe());
                emit(out, "exited", Some(&name), message, extra);
            }
            self.continue_shutdown(out);
            return;
        }
        if let Some(r @ (StopReason::Requested | StopReason::Restart)) = reason {
            let message = format!("stopped ({})", exit.describe());
            emit(out, "stopped", Some(&name), message, extra);
            if r == StopReason::Restart && !d.removed {
                self.take_next(i);
                let d = &mut self.daemons[i];
                d.state = State::Waiting;
                d.restarts = 0;
                d.delay = d.spec.restart.backoff.initial.0;
            } else {
                d.state = State::Done(End::Stopped);
            }
            self.advance_requested(out);
            return;
        }
        let success = reason.is_none() && success_code;
        let why = match reason {
            Some(StopReason::NotReady) => " after failing readiness",
            Some(StopReason::Unhealthy) => " after failing liveness",
            _ => "",
        };
        emit(
            out,
            "exited",
            Some(&name),
            format!("{}{why}", exit.describe()),
            extra,
        );
        let restart = match d.spec.restart.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        };
        if restart {
            let backoff = &d.spec.restart.backoff;
            if ran >= backoff.reset_after.0 {
                d.restarts = 0;
                d.delay = backoff.initial.0;
            }
            if let Some(max) = d.spec.restart.max_restarts
                && d.restarts >= max
            {
                d.state = State::Done(End::GaveUp);
                let plural = if max == 1 { "" } else { "s" };
                emit(
                    out,
                    "gave-up",
                    Some(&name),
                    format!("gave up after {max} restart{plural}"),
                    json!({"restarts": max}),
                );
                self.ended(i, Outcome::GaveUp { daemon: name }, out);
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
            emit(
                out,
                "restarting",
                Some(&name),
                format!("restarting in {} (restart {n}{of})", show(delay)),
                json!({"delay_ms": delay.as_millis() as u64, "restart": n}),
            );
            if delay.is_zero() {
                self.spawn(i, out);
            } else {
                out.push(Action::Arm {
                    unit: Unit::Daemon(i),
                    run,
                    timer: Timer::Backoff,
                    after: delay,
                });
            }
            return;
        }
        if success {
            d.state = State::Done(End::Completed);
            emit(out, "completed", Some(&name), "completed".into(), json!({}));
            self.ended(i, Outcome::Clean, out);
        } else {
            d.state = State::Done(End::Failed);
            self.ended(i, Outcome::Failed { name, exit }, out);
        }
    }

    /// A daemon ended for good.
    fn ended(&mut self, i: usize, outcome: Outcome, out: &mut Vec<Action>) {
        let d = &self.daemons[i];
        if d.spec.on_exit == OnExit::Shutdown {
            let why = format!("{} ended and has on_exit: shutdown", d.name);
            self.begin_shutdown(why, Some(outcome), out);
            return;
        }
        if outcome != Outcome::Clean {
            self.failures.push(outcome);
        }
        self.start_waiting(out);
    }

    fn signal(&mut self, sig: i32, out: &mut Vec<Action>) {
        match sig {
            SIGTERM | SIGINT if self.stop_signals > 0 => {
                let message = format!(
                    "received {} again: killing everything now",
                    signal_name(sig)
                );
                emit(out, "killing", None, message, json!({}));
                for (i, d) in self.daemons.iter_mut().enumerate() {
                    d.proc.kill(Unit::Daemon(i), out);
                }
            }
            SIGTERM | SIGINT => {
                self.stop_signals += 1;
                if self.phase == Phase::Stopping {
                    // Already stopping on its own: this is the request, not the impatience.
                    let message = format!("received {}; already stopping", signal_name(sig));
                    emit(out, "stopping", None, message, json!({}));
                } else {
                    self.begin_shutdown(format!("received {}", signal_name(sig)), None, out)
                }
            }
            other => {
                for (i, d) in self.daemons.iter().enumerate() {
                    let target = match d.spec.forward_signals {
                        Forward::Group => Target::Group,
                        Forward::Process => Target::Process,
                        Forward::None => continue,
                    };
                    if d.proc.live() {
                        out.push(Action::Signal {
                            unit: Unit::Daemon(i),
                            signal: other,
                            target,
                        });
                    }
                }
            }
        }
    }

    fn begin_shutdown(&mut self, why: String, cause: Option<Outcome>, out: &mut Vec<Action>) {
        // A daemon that completed does not decide the outcome: later failures still may.
        if let Some(c) = cause.filter(|c| *c != Outcome::Clean) {
            self.cause.get_or_insert(c);
        }
        if self.phase == Phase::Stopping {
            return;
        }
        self.phase = Phase::Stopping;
        self.pass = None;
        emit(out, "stopping", None, format!("stopping: {why}"), json!({}));
        for (i, d) in self.daemons.iter_mut().enumerate() {
            if matches!(d.state, State::Waiting | State::Backoff) {
                out.push(Action::Cancel {
                    unit: Unit::Daemon(i),
                });
                d.state = State::Done(End::Skipped);
            }
        }
        self.continue_shutdown(out);
    }

    /// Stops every running daemon that no running daemon depends on (all of them with
    /// `order: parallel`).
    fn continue_shutdown(&mut self, out: &mut Vec<Action>) {
        if self.phase != Phase::Stopping {
            return;
        }
        let parallel = self.order == ShutdownOrder::Parallel;
        let to_stop: Vec<usize> = (0..self.daemons.len())
            .filter(|&i| {
                let d = &self.daemons[i];
                d.proc.alive()
                    && d.stopping != Some(StopReason::Shutdown)
                    && (parallel
                        || !self
                            .daemons
                            .iter()
                            .any(|o| o.proc.alive() && o.deps.iter().any(|(j, _)| *j == i)))
            })
            .collect();
        for i in to_stop {
            self.stop(i, StopReason::Shutdown, out);
        }
    }

    // ----- requested operations -----

    fn control(&mut self, req: Request, out: &mut Vec<Action>) -> Reply {
        if self.phase != Phase::Running {
            if req == Request::Shutdown {
                return Reply::Done(Vec::new());
            }
            return Reply::Refused("tether init is stopping".into());
        }
        let changes = match req {
            Request::Start(targets) => self.request_start(&targets, out),
            Request::Stop(targets) => self.request_stop(&targets, StopReason::Requested, None, out),
            Request::Restart(targets) => {
                // What is not running is started; the rest restarted.
                let (live, idle): (Vec<usize>, Vec<usize>) =
                    targets.into_iter().partition(|&i| self.daemons[i].active());
                let mut changes = self.request_stop(&live, StopReason::Restart, None, out);
                changes.extend(self.request_start(&idle, out));
                changes
            }
            Request::Signal { daemon, signal } => {
                let d = &self.daemons[daemon];
                if !d.proc.live() {
                    return Reply::Refused(format!(
                        "{} is not running ({})",
                        d.name,
                        d.state_name()
                    ));
                }
                let target = match d.spec.forward_signals {
                    Forward::Process => Target::Process,
                    Forward::Group | Forward::None => Target::Group,
                };
                out.push(Action::Signal {
                    unit: Unit::Daemon(daemon),
                    signal,
                    target,
                });
                let name = d.name.clone();
                let whom = if target == Target::Group {
                    "its process group"
                } else {
                    "its main process"
                };
                let sig = signal_name(signal);
                emit(
                    out,
                    "signal",
                    Some(&name),
                    format!("sent {sig} to {whom} (requested)"),
                    json!({"signal": sig}),
                );
                vec![Change::new(
                    &name,
                    "signal",
                    Some(format!("{sig} to {whom}")),
                )]
            }
            Request::Reload(init) => self.reload(&init, out),
            Request::Shutdown => {
                self.begin_shutdown("requested by tether ctl".into(), None, out);
                Vec::new()
            }
        };
        Reply::Done(changes)
    }

    /// The active daemons that depend on any of `roots`, directly or not, each with the one
    /// it depends on; in the order found.
    fn dependants(&self, roots: &[usize]) -> Vec<(usize, usize)> {
        let mut found: Vec<(usize, usize)> = Vec::new();
        let mut queue: Vec<usize> = roots.to_vec();
        while let Some(k) = queue.pop() {
            for (j, d) in self.daemons.iter().enumerate() {
                let depends = d.deps.iter().any(|(x, _)| *x == k);
                if depends
                    && d.active()
                    && !roots.contains(&j)
                    && !found.iter().any(|(f, _)| *f == j)
                {
                    found.push((j, k));
                    queue.push(j);
                }
            }
        }
        found
    }

    /// Stops (or restarts) `targets` and, first, every active daemon that depends on them.
    fn request_stop(
        &mut self,
        targets: &[usize],
        reason: StopReason,
        why: Option<&str>,
        out: &mut Vec<Action>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut marked = Vec::new();
        for &i in targets {
            if self.daemons[i].active() {
                marked.push((i, why.map(str::to_owned)));
            } else {
                let d = &self.daemons[i];
                changes.push(Change::new(&d.name, "stopped", Some(d.state_name().into())));
            }
        }
        let roots: Vec<usize> = marked.iter().map(|(i, _)| *i).collect();
        for (j, k) in self.dependants(&roots) {
            marked.push((j, Some(format!("it depends on {}", self.daemons[k].name))));
        }
        // Dependants first, as they will stop.
        marked.reverse();
        for (i, why) in marked {
            if let Some(c) = self.mark(i, reason, why, out) {
                changes.push(c);
            }
        }
        changes
    }

    /// Asks an active daemon to stop or restart once nothing that depends on it is left.
    fn mark(
        &mut self,
        i: usize,
        reason: StopReason,
        why: Option<String>,
        out: &mut Vec<Action>,
    ) -> Option<Change> {
        let d = &mut self.daemons[i];
        // A restart wins over a stop, except for a daemon that is no longer declared.
        let reason = match (d.pending.or(d.stopping), reason) {
            (Some(StopReason::Restart), StopReason::Requested) if !d.removed => StopReason::Restart,
            (_, StopReason::Restart) if d.removed => StopReason::Requested,
            _ => reason,
        };
        if d.stopping.is_some() {
            // Already signalled: it now ends for this reason.
            d.stopping = Some(reason);
        } else {
            d.pending = Some(reason);
        }
        let (what, word) = if reason == StopReason::Restart {
            ("restart", "restarting")
        } else if d.removed {
            ("remove", "stopping")
        } else {
            ("stop", "stopping")
        };
        let name = d.name.clone();
        let message = match &why {
            Some(w) => format!("{word} (requested: {w})"),
            None => format!("{word} (requested)"),
        };
        if d.proc.alive() {
            emit(out, "stopping", Some(&name), message, json!({}));
        }
        Some(Change::new(&name, what, why))
    }

    /// Carries out the requested stops and restarts whose dependants are gone.
    fn advance_requested(&mut self, out: &mut Vec<Action>) {
        if self.phase != Phase::Running {
            return;
        }
        loop {
            let ready = (0..self.daemons.len()).find(|&i| {
                self.daemons[i].pending.is_some()
                    && !self.daemons.iter().enumerate().any(|(j, o)| {
                        j != i && o.proc.alive() && o.deps.iter().any(|(x, _)| *x == i)
                    })
            });
            let Some(i) = ready else { break };
            let reason = self.daemons[i].pending.take().expect("found pending");
            if self.daemons[i].proc.alive() {
                self.stop(i, reason, out);
                continue;
            }
            // Not running (waiting for its dependencies, or backing off): no process to stop.
            out.push(Action::Cancel {
                unit: Unit::Daemon(i),
            });
            if reason == StopReason::Restart {
                self.take_next(i);
                let d = &mut self.daemons[i];
                d.state = State::Waiting;
                d.restarts = 0;
                d.delay = d.spec.restart.backoff.initial.0;
            } else {
                let d = &mut self.daemons[i];
                d.state = State::Done(End::Stopped);
                let name = d.name.clone();
                emit(
                    out,
                    "stopped",
                    Some(&name),
                    "stopped (requested; it was not running)".into(),
                    json!({}),
                );
            }
        }
        self.start_waiting(out);
    }

    /// A reload's new declaration of the daemon, taken on now that it does not run.
    fn take_next(&mut self, i: usize) {
        if let Some(spec) = self.daemons[i].next.take() {
            let grace = spec.stop.grace.map_or(self.grace, |g| g.0);
            let deps = self.resolve_deps(&spec);
            let d = &mut self.daemons[i];
            d.spec = *spec;
            d.grace = grace;
            d.deps = deps;
        }
    }

    /// Starts `targets` and what they depend on that is not running.
    fn request_start(&mut self, targets: &[usize], out: &mut Vec<Action>) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut start: Vec<(usize, Option<String>)> = Vec::new();
        let mut queue: Vec<(usize, Option<String>)> = targets.iter().map(|&i| (i, None)).collect();
        while let Some((i, why)) = queue.pop() {
            if start.iter().any(|(s, _)| *s == i) {
                continue;
            }
            let d = &mut self.daemons[i];
            // A completed daemon runs again when named; as a dependency, its completion stands.
            let startable = match &d.state {
                State::Backoff => true,
                State::Done(End::Completed) => why.is_none(),
                State::Done(end) => *end != End::NotSelected,
                _ => false,
            };
            if d.pending.is_some() || d.stopping.is_some() {
                // Being stopped: it starts again once it is gone.
                if d.pending.is_some() {
                    d.pending = Some(StopReason::Restart);
                } else {
                    d.stopping = Some(StopReason::Restart);
                }
                changes.push(Change::new(&d.name, "restart", why));
                continue;
            }
            if !startable || d.proc.alive() {
                if why.is_none() {
                    // Running, or on its way (waiting for its dependencies, starting).
                    changes.push(Change::new(&d.name, "running", Some(d.state_name().into())));
                }
                continue;
            }
            let name = d.name.clone();
            for (j, _) in d.deps.clone() {
                queue.push((j, Some(format!("{name} depends on it"))));
            }
            start.push((i, why));
        }
        // Dependencies first, as they will start.
        start.reverse();
        for (i, why) in start {
            out.push(Action::Cancel {
                unit: Unit::Daemon(i),
            });
            self.take_next(i);
            let d = &mut self.daemons[i];
            d.state = State::Waiting;
            d.restarts = 0;
            d.delay = d.spec.restart.backoff.initial.0;
            changes.push(Change::new(&d.name, "start", why));
        }
        self.start_waiting(out);
        changes
    }

    /// Applies a new declaration: daemons that are new start, those no longer declared stop,
    /// those whose declaration changed restart (and what depends on them), the rest are left
    /// alone, processes and all.
    fn reload(&mut self, init: &Init, out: &mut Vec<Action>) -> Vec<Change> {
        let mut changes = Vec::new();
        self.order = init.shutdown.order;
        self.grace = init.shutdown.grace.0;
        let mut removed = Vec::new();
        for i in 0..self.daemons.len() {
            let d = &mut self.daemons[i];
            if d.removed || init.daemons.contains_key(&d.name) {
                continue;
            }
            d.removed = true;
            d.next = None;
            if d.active() {
                removed.push(i);
            } else {
                changes.push(Change::new(
                    &d.name,
                    "remove",
                    Some("no longer declared".into()),
                ));
            }
        }
        let mut changed = Vec::new();
        let mut added = Vec::new();
        for (name, spec) in &init.daemons {
            match self.index_of(name) {
                Some(i) => {
                    let grace = spec.stop.grace.map_or(self.grace, |g| g.0);
                    let d = &mut self.daemons[i];
                    if d.spec == *spec {
                        d.grace = grace;
                        d.next = None;
                        changes.push(Change::new(name, "unchanged", None));
                    } else if d.active() {
                        d.next = Some(Box::new(spec.clone()));
                        changed.push(i);
                    } else {
                        d.next = Some(Box::new(spec.clone()));
                        let why = format!(
                            "not running ({}); changed for its next start",
                            d.state_name()
                        );
                        changes.push(Change::new(name, "unchanged", Some(why)));
                    }
                }
                None => {
                    let slot = Slot::new(name, spec, self.grace, State::Waiting);
                    self.daemons.push(slot);
                    added.push(self.daemons.len() - 1);
                }
            }
        }
        // New names resolve now; a changed daemon keeps the dependencies it runs with until
        // it restarts.
        for i in 0..self.daemons.len() {
            if !self.daemons[i].removed && self.daemons[i].next.is_none() {
                self.daemons[i].deps = self.resolve_deps(&self.daemons[i].spec);
            }
        }
        let mut touched = self.request_stop(
            &removed,
            StopReason::Requested,
            Some("no longer declared"),
            out,
        );
        let restarted = self.request_stop(
            &changed,
            StopReason::Restart,
            Some("its declaration changed"),
            out,
        );
        // A daemon named twice (removed, then restarted as a dependant) keeps its last word.
        touched.retain(|c| !restarted.iter().any(|r| r.daemon == c.daemon));
        changes.retain(|c| {
            !touched
                .iter()
                .chain(&restarted)
                .any(|t| t.daemon == c.daemon)
        });
        changes.extend(touched);
        changes.extend(restarted);
        for &i in &added {
            let name = self.daemons[i].name.clone();
            emit(
                out,
                "added",
                Some(&name),
                "added by a reload".into(),
                json!({}),
            );
            changes.push(Change::new(
                &name,
                "add",
                Some("new in the declaration".into()),
            ));
        }
        self.start_waiting(out);
        changes
    }
}

#[derive(Debug, PartialEq)]
enum Gate {
    Open,
    Wait,
    Blocked(String),
}

#[cfg(test)]
mod tests;
