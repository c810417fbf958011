//! The event loop: reads the world (signals, exits, checks, timers), feeds it to the
//! [`Core`], and carries its actions out over [`Processes`]. Everything that waits runs in a
//! task and reports back as an [`Event`]; the decisions are all the core's.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tether_probe::{Attempt, Deadline, GaveUp, plain, show};
use tether_spec::model::{Check, DaemonReadiness, Init};
use tokio::net::UnixDatagram;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::control::{self, Answer, Ask, Asked, BindError, Handle, Rings};
use crate::core::{
    Action, CheckKind, CodeOf, Core, Event, Exit, Line, Outcome, Reply, Request, Run, SIGKILL,
    Selection, Target, Unit,
};
use crate::health::{self, Snapshot};
use crate::logs::{self, Format, LogWatch, Output, Source, Stream};
use crate::notify::Notifier;
use crate::probe::{self, ExecContext};
use crate::proc::{self, Ids, Reaper, Spawned, Spec};

/// What the loop needs from the operating system's processes.
pub trait Processes: Send + Sync {
    /// Starts a process in its own process group.
    fn spawn(&self, spec: Spec<'_>) -> std::io::Result<Spawned>;
    /// Signals a whole process group; one already gone is not an error.
    fn signal_group(&self, pgid: i32, signal: i32);
    /// Signals one process.
    fn signal_process(&self, pid: i32, signal: i32);
}

impl Processes for Reaper {
    fn spawn(&self, spec: Spec<'_>) -> std::io::Result<Spawned> {
        Reaper::spawn(self, spec)
    }

    fn signal_group(&self, pgid: i32, signal: i32) {
        proc::kill_group(pgid, signal);
    }

    fn signal_process(&self, pid: i32, signal: i32) {
        proc::signal_pid(pid, signal);
    }
}

/// What the loop keeps for one step or daemon.
#[derive(Default)]
struct Local {
    run: Run,
    pid: Option<i32>,
    /// Set the moment the current run's process is reaped, before its last output is drained:
    /// from then on its pid (and process group id) may belong to someone else.
    reaped: Arc<AtomicBool>,
    /// Whether the core was told.
    told: bool,
    /// Checks and timers of the current run.
    tasks: Vec<JoinHandle<()>>,
    /// What the current run's readiness check waits on (`log` and `notify` modes).
    log_rx: Option<oneshot::Receiver<()>>,
    notify: Option<(OwnedFd, UnixDatagram)>,
}

/// Where the control socket is, and the declaration a reload reads.
#[derive(Clone, Debug)]
pub struct ControlSetup {
    /// The declaration file, read again by `reload`.
    pub file: PathBuf,
    pub socket: PathBuf,
    /// Declared (`init.control.socket`): a socket that cannot be made is an error. The
    /// default path is used when it can be, with a warning when not.
    pub declared: bool,
}

pub struct Supervisor {
    init: Init,
    core: Core,
    /// Each daemon's user and group, by name.
    daemon_ids: HashMap<String, Option<Ids>>,
    step_ids: Vec<Option<Ids>>,
    /// The tasks following a daemon's `log_files`, by slot: started once, across restarts.
    following: HashMap<usize, Vec<JoinHandle<()>>>,
    control: ControlSetup,
    snapshots: watch::Sender<Snapshot>,
    asks: mpsc::UnboundedReceiver<Asked>,
    handle: Handle,
    rings: Rings,
    /// The core's answer to the request being fed.
    reply: Option<Reply>,
    /// How supervision ended, when a request ended it.
    finished: Option<Outcome>,
    units: HashMap<Unit, Local>,
    procs: Arc<dyn Processes>,
    signals: mpsc::UnboundedReceiver<std::io::Result<i32>>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    out: Output,
    format: Arc<Format>,
    notifier: Option<Notifier>,
    began: Instant,
}

impl Supervisor {
    pub fn new(
        init: Init,
        selection: Selection,
        code_of: CodeOf,
        signals: mpsc::UnboundedReceiver<std::io::Result<i32>>,
        procs: Arc<dyn Processes>,
        out: Output,
        control: ControlSetup,
    ) -> Result<Supervisor, String> {
        let user = |what: &str, name: &str, u: &Option<String>| {
            u.as_deref()
                .map(|u| {
                    proc::resolve_user(u).map_err(|e| format!("{what} `{name}`: user `{u}`: {e}"))
                })
                .transpose()
        };
        let daemon_ids = init
            .daemons
            .iter()
            .map(|(name, d)| Ok((name.clone(), user("daemon", name, &d.user)?)))
            .collect::<Result<HashMap<_, _>, String>>()?;
        let step_ids = init
            .steps
            .iter()
            .map(|s| user("step", &s.name, &s.user))
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (asks_tx, asks) = mpsc::unbounded_channel();
        let (snapshots, snap_rx) = watch::channel(Snapshot::default());
        let rings = Rings::default();
        Ok(Supervisor {
            core: Core::new(&init, selection, code_of),
            format: Arc::new(Format::new(&init.logs)),
            following: HashMap::new(),
            control,
            snapshots,
            asks,
            handle: Handle {
                asks: asks_tx,
                snapshots: snap_rx,
                rings: rings.clone(),
            },
            rings,
            reply: None,
            finished: None,
            init,
            daemon_ids,
            step_ids,
            units: HashMap::new(),
            procs,
            signals,
            tx,
            rx,
            out,
            notifier: None,
            began: Instant::now(),
        })
    }

    pub async fn run(mut self) -> Outcome {
        // The control socket and the health listener are made before anything starts: a
        // second init on a live socket, or a taken port, starts nothing.
        let bound = match control::bind(&self.control.socket) {
            Ok(b) => Some(b),
            Err(BindError::Unavailable(why)) if !self.control.declared => {
                self.emit(Line {
                    kind: "warning",
                    daemon: None,
                    message: format!("no control socket ({why}); `tether ctl` cannot reach this init; declare `init.control.socket` to choose the path"),
                    extra: json!({}),
                });
                None
            }
            Err(BindError::Unavailable(why) | BindError::Fatal(why)) => {
                self.emit(Line {
                    kind: "error",
                    daemon: None,
                    message: why.clone(),
                    extra: json!({}),
                });
                return Outcome::Internal { why };
            }
        };
        if let Some(h) = &self.init.health {
            let control = h.control.then(|| self.handle.clone());
            if let Err(e) = health::serve(&h.listen, self.handle.snapshots.clone(), control).await {
                let why = format!("cannot serve health on {}: {}", h.listen, plain(&e));
                self.emit(Line {
                    kind: "error",
                    daemon: None,
                    message: why.clone(),
                    extra: json!({}),
                });
                return Outcome::Internal { why };
            }
        }
        if let Some(bound) = bound {
            control::serve(bound, self.handle.clone());
        }
        if let Some(target) = self.init.notify.clone() {
            let source = self.source("notify");
            self.notifier = Some(Notifier::start(target, self.procs.clone(), source));
        }
        let mut event = Event::Begin {
            pid: std::process::id(),
        };
        let outcome = 'run: loop {
            if let Some(outcome) = self.feed(event) {
                break outcome;
            }
            event = loop {
                tokio::select! {
                    Some(sig) = self.signals.recv() => break match sig {
                        Ok(sig) => Event::Signal(sig),
                        Err(e) => {
                            tracing::error!("reading signals: {e}");
                            Event::SignalsLost
                        }
                    },
                    Some(ev) = self.rx.recv() => break ev,
                    Some(asked) = self.asks.recv() => {
                        self.ask(asked);
                        if let Some(outcome) = self.finished.take() {
                            break 'run outcome;
                        }
                    }
                }
            };
            if let Some(outcome) = self.tell_reaped() {
                break outcome;
            }
        };
        if let Some(n) = self.notifier.take() {
            n.finish(Duration::from_secs(2)).await;
        }
        outcome
    }

    /// Tells the core which processes were reaped since the last event, before it decides on
    /// the next one: their output may still be draining, but they are no longer to be signalled.
    fn tell_reaped(&mut self) -> Option<Outcome> {
        let reaped: Vec<Event> = self
            .units
            .iter_mut()
            .filter(|(_, l)| !l.told && l.reaped.load(Ordering::SeqCst))
            .map(|(unit, l)| {
                l.told = true;
                Event::Reaped {
                    unit: *unit,
                    run: l.run,
                }
            })
            .collect();
        reaped.into_iter().find_map(|event| self.feed(event))
    }

    /// Hands one event to the core and carries out what it decides, answering each spawn at
    /// once. `Some`: supervision is over.
    fn feed(&mut self, event: Event) -> Option<Outcome> {
        let mut queue = VecDeque::from(self.core.handle(event, self.began.elapsed()));
        while let Some(action) = queue.pop_front() {
            if let Action::Finish(outcome) = action {
                self.publish();
                return Some(outcome);
            }
            if let Action::Reply(reply) = action {
                self.reply = Some(reply);
                continue;
            }
            if let Some(answer) = self.carry(action) {
                let more = self.core.handle(answer, self.began.elapsed());
                for a in more.into_iter().rev() {
                    queue.push_front(a);
                }
            }
        }
        self.publish();
        None
    }

    fn carry(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Spawn { unit, run } => return Some(self.spawn(unit, run)),
            Action::Check { daemon, run, kind } => self.check(daemon, run, kind),
            Action::Signal {
                unit,
                signal,
                target,
            } => {
                if let Some(pid) = self.live_pid(unit) {
                    match target {
                        Target::Group => self.procs.signal_group(pid, signal),
                        Target::Process => self.procs.signal_process(pid, signal),
                    }
                }
            }
            Action::Kill { unit } => {
                if let Some(pid) = self.live_pid(unit) {
                    self.procs.signal_group(pid, SIGKILL);
                }
            }
            Action::Arm {
                unit,
                run,
                timer,
                after,
            } => {
                let tx = self.tx.clone();
                let task = tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = tx.send(Event::Timer { unit, run, timer });
                });
                self.units.entry(unit).or_default().tasks.push(task);
            }
            Action::Cancel { unit } => {
                if let Some(l) = self.units.get_mut(&unit) {
                    for t in l.tasks.drain(..) {
                        t.abort();
                    }
                }
            }
            Action::Emit(line) => self.emit(line),
            Action::Reply(_) | Action::Finish(_) => {}
        }
        None
    }

    /// The pid to signal: none once the process is reaped.
    fn live_pid(&self, unit: Unit) -> Option<i32> {
        let l = self.units.get(&unit)?;
        l.pid.filter(|_| !l.reaped.load(Ordering::SeqCst))
    }

    fn source(&self, name: &str) -> Source {
        Source {
            name: name.to_owned(),
            prefix: self.format.prefix(name),
            format: self.format.clone(),
            out: self.out.clone(),
            ring: None,
        }
    }

    /// Turns a control request into an event for the core, answering at once what it
    /// refuses. `None`: answered already.
    fn ask(&mut self, asked: Asked) {
        let Asked { ask, reply } = asked;
        let refuse = |message: String| Answer::Refused {
            message,
            detail: None,
            diagnostics: Vec::new(),
        };
        let resolved = |core: &Core, names: &[String]| core.resolve(names);
        let request = match ask {
            Ask::Start(names) => resolved(&self.core, &names).map(Request::Start),
            Ask::Stop(names) => resolved(&self.core, &names).map(Request::Stop),
            Ask::Restart(names) => resolved(&self.core, &names).map(Request::Restart),
            Ask::Signal(name, signal) => {
                resolved(&self.core, std::slice::from_ref(&name)).map(|d| Request::Signal {
                    daemon: d[0],
                    signal,
                })
            }
            Ask::Shutdown => Ok(Request::Shutdown),
            Ask::Reload => return self.reload(reply),
        };
        match request {
            Ok(r) => self.answer_with(reply, Event::Control(r), Vec::new()),
            Err(e) => {
                let _ = reply.send(refuse(e));
            }
        }
    }

    /// Feeds a request and sends the core's reply.
    fn answer_with(&mut self, reply: oneshot::Sender<Answer>, event: Event, notes: Vec<String>) {
        self.reply = None;
        if let Some(outcome) = self.feed(event) {
            self.finished = Some(outcome);
        }
        let answer = match self.reply.take() {
            Some(Reply::Done(changes)) => Answer::Done { changes, notes },
            Some(Reply::Refused(message)) => Answer::Refused {
                message,
                detail: None,
                diagnostics: Vec::new(),
            },
            None => Answer::Refused {
                message: "tether init is ending".into(),
                detail: None,
                diagnostics: Vec::new(),
            },
        };
        let _ = reply.send(answer);
    }

    /// `reload`: reads the declaration again; an invalid one changes nothing.
    fn reload(&mut self, reply: oneshot::Sender<Answer>) {
        let file = self.control.file.clone();
        let refuse =
            |message: String, detail: Option<String>, diagnostics: Vec<Value>| Answer::Refused {
                message,
                detail,
                diagnostics,
            };
        let loaded = match tether_spec::load(&file) {
            Ok(l) => l,
            Err(tether_spec::LoadError::Invalid {
                sources,
                diagnostics,
            }) => {
                let detail = sources.render_all(&diagnostics, false);
                let json = diagnostics.iter().map(|d| sources.to_json(d)).collect();
                let n = diagnostics.len();
                let message = format!(
                    "{}: {n} problem{} in the declaration; nothing was changed",
                    file.display(),
                    if n == 1 { "" } else { "s" }
                );
                let _ = reply.send(refuse(message, Some(detail), json));
                return;
            }
            Err(e) => {
                let _ = reply.send(refuse(
                    format!("{e}; nothing was changed"),
                    None,
                    Vec::new(),
                ));
                return;
            }
        };
        let Some(new) = loaded.declaration.init else {
            let message = format!(
                "{}: there is no `init` section any more; nothing was changed",
                file.display()
            );
            let _ = reply.send(refuse(message, None, Vec::new()));
            return;
        };
        // Users are looked up before anything changes, as at start.
        let mut ids = HashMap::new();
        for (name, d) in &new.daemons {
            match d.user.as_deref().map(proc::resolve_user).transpose() {
                Ok(id) => {
                    ids.insert(name.clone(), id);
                }
                Err(e) => {
                    let user = d.user.as_deref().unwrap_or_default();
                    let message =
                        format!("daemon `{name}`: user `{user}`: {e}; nothing was changed");
                    let _ = reply.send(refuse(message, None, Vec::new()));
                    return;
                }
            }
        }
        let mut notes = Vec::new();
        let old = &self.init;
        let sections: [(&str, bool); 6] = [
            ("steps", old.steps != new.steps),
            ("health", old.health != new.health),
            ("control", old.control != new.control),
            ("notify", old.notify != new.notify),
            ("logs", old.logs != new.logs),
            ("select_env", old.select_env != new.select_env),
        ];
        for (section, differs) in sections {
            if differs {
                notes.push(format!(
                    "init.{section} changed; it takes effect when tether init starts again"
                ));
            }
        }
        // Followers of log files stop for daemons removed or changed; they follow again at
        // the next start.
        for i in 0..self.core.len() {
            let name = &self.core.spec(i).name;
            let same = new.daemons.get(name) == Some(self.core.spec(i));
            if !same && let Some(tasks) = self.following.remove(&i) {
                for t in tasks {
                    t.abort();
                }
            }
        }
        self.daemon_ids = ids;
        let request = Request::Reload(Box::new(new.clone()));
        self.init = new;
        self.answer_with(reply, Event::Control(request), notes);
    }

    /// One line of tether's own, on stderr; the same event goes to `notify` when declared.
    fn emit(&self, line: Line) {
        let Line {
            kind,
            daemon,
            message,
            extra,
        } = line;
        let daemon = daemon.as_deref();
        let mut out = Vec::new();
        if self.format.is_json() {
            let mut obj = json!({"time": logs::now(), "name": "tether", "event": kind, "daemon": daemon, "message": message});
            if let (Some(o), Value::Object(e)) = (obj.as_object_mut(), &extra) {
                o.extend(e.clone());
            }
            out = obj.to_string().into_bytes();
            out.push(b'\n');
        } else {
            let text = match daemon {
                Some(d) => format!("{d}: {message}"),
                None => message.clone(),
            };
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

    fn publish(&self) {
        let mut snap = self.core.snapshot();
        snap.began = Some(self.began);
        self.snapshots.send_replace(snap);
    }

    fn exec_context(&self, i: usize) -> ExecContext {
        let d = self.core.spec(i);
        ExecContext {
            env: d.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            workdir: d.workdir.clone(),
            ids: self.daemon_ids.get(&d.name).copied().flatten(),
        }
    }

    /// Starts a step or a daemon, its output pumps and the task that reports its exit.
    fn spawn(&mut self, unit: Unit, run: Run) -> Event {
        let (name, argv, env, workdir, ids) = match unit {
            Unit::Step(k) => {
                let s = &self.init.steps[k];
                (&s.name, &s.command, &s.env, &s.workdir, self.step_ids[k])
            }
            Unit::Daemon(i) => {
                let d = self.core.spec(i);
                let ids = self.daemon_ids.get(&d.name).copied().flatten();
                (&d.name, &d.command, &d.env, &d.workdir, ids)
            }
        };
        let name = name.clone();
        let mut env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let check = match unit {
            Unit::Daemon(i) => &self.core.spec(i).readiness.check,
            Unit::Step(_) => &Check::None,
        };
        // Readiness by notification: a pipe (NOTIFY_FD) and a datagram socket (NOTIFY_SOCKET).
        let mut notify = None;
        let mut keep_write_end = None;
        if *check == Check::Notify {
            match notify_channels(&name, run) {
                Ok((read, write, sock, sock_name)) => {
                    let number = proc::notify_fd_number(proc::raw(&write));
                    env.push(("NOTIFY_FD".into(), number.to_string()));
                    env.push(("NOTIFY_SOCKET".into(), sock_name));
                    keep_write_end = Some((write, number));
                    notify = Some((read, sock));
                }
                Err(e) => {
                    tracing::warn!("daemon {name}: cannot set up readiness notification: {e}")
                }
            }
        }
        let watch = match check {
            Check::Log { pattern } => {
                let (wtx, wrx) = oneshot::channel();
                regex_lite::Regex::new(pattern)
                    .ok()
                    .map(|regex| (Arc::new(Mutex::new(Some(LogWatch { regex, tx: wtx }))), wrx))
            }
            _ => None,
        };
        let spawned = self.procs.spawn(Spec {
            argv,
            env,
            workdir: workdir.as_deref(),
            ids,
            capture: true,
            stdin_pipe: false,
            keep_fd: keep_write_end
                .as_ref()
                .map(|(w, number)| (proc::raw(w), *number)),
            foreground: false,
            new_session: false,
        });
        drop(keep_write_end);
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                return Event::SpawnFailed {
                    unit,
                    run,
                    error: proc::start_error(&e),
                    why: format!("cannot run `{}`: {}", argv[0], plain(&e)),
                };
            }
        };
        let pid = spawned.pid;
        let mut source = self.source(&name);
        if let Unit::Daemon(_) = unit {
            let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
            source.ring = Some(rings.entry(name.clone()).or_default().clone());
        }
        let pumps: Vec<_> = [(spawned.stdout, "stdout"), (spawned.stderr, "stderr")]
            .into_iter()
            .filter_map(|(fd, stream)| {
                let watch = watch.as_ref().map(|w| w.0.clone());
                fd.map(|fd| tokio::spawn(logs::pump(fd, source.clone(), stream, watch)))
            })
            .collect();
        if let Unit::Daemon(i) = unit
            && !self.following.contains_key(&i)
        {
            let tasks = self
                .core
                .spec(i)
                .log_files
                .iter()
                .map(|file| tokio::spawn(logs::follow(file.into(), source.clone())))
                .collect();
            self.following.insert(i, tasks);
        }
        // The exit is reported after the last lines are out.
        let reaped = Arc::new(AtomicBool::new(false));
        let (tx, procs, exit_rx) = (self.tx.clone(), self.procs.clone(), spawned.exit);
        let flag = reaped.clone();
        tokio::spawn(async move {
            // The reaper keeps every waiter until its process is reaped.
            let exit = exit_rx.await.unwrap_or(Exit::Signal(SIGKILL));
            // What it left in its group goes with it; the group id is still ours until the
            // last member is gone.
            procs.signal_group(pid, SIGKILL);
            flag.store(true, Ordering::SeqCst);
            // Its last lines first, then the exit: all pipes drained under one deadline.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                futures_util::future::join_all(pumps),
            )
            .await;
            let _ = tx.send(Event::Exited { unit, run, exit });
        });
        let local = self.units.entry(unit).or_default();
        local.run = run;
        local.pid = Some(pid);
        local.reaped = reaped;
        local.told = false;
        local.log_rx = watch.map(|w| w.1);
        local.notify = notify;
        Event::Started { unit, run, pid }
    }

    /// Starts a daemon's readiness or liveness check in a task.
    fn check(&mut self, i: usize, run: Run, kind: CheckKind) {
        let (tx, procs, ctx) = (self.tx.clone(), self.procs.clone(), self.exec_context(i));
        let spec = self.core.spec(i);
        let local = self.units.entry(Unit::Daemon(i)).or_default();
        let task = match kind {
            CheckKind::Readiness => {
                let readiness = spec.readiness.clone();
                let (log_rx, notify) = (local.log_rx.take(), local.notify.take());
                tokio::spawn(async move {
                    let result = wait_ready(&readiness, &procs, &ctx, log_rx, notify).await;
                    let _ = tx.send(match result {
                        Ok(()) => Event::Ready { daemon: i, run },
                        Err(why) => Event::NotReady {
                            daemon: i,
                            run,
                            why,
                        },
                    });
                })
            }
            CheckKind::Liveness => {
                let Some(live) = spec.liveness.clone() else {
                    return;
                };
                tokio::spawn(async move {
                    let mut failures = 0;
                    loop {
                        tokio::time::sleep(live.interval.0).await;
                        match probe::attempt_within(&live.check, &procs, &ctx, live.timeout.0).await
                        {
                            Ok(()) => failures = 0,
                            Err(last) => {
                                failures += 1;
                                if failures >= live.failure_threshold {
                                    let _ = tx.send(Event::LivenessFailed {
                                        daemon: i,
                                        run,
                                        failures,
                                        last,
                                    });
                                    return;
                                }
                            }
                        }
                    }
                })
            }
        };
        local.tasks.push(task);
    }
}

type NotifyChannels = (OwnedFd, OwnedFd, UnixDatagram, String);

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
    let sock = UnixDatagram::from_std(sock)?;
    Ok((read, write, sock, format!("@{abstract_name}")))
}

/// The longest one readiness attempt may take.
const ATTEMPT_CAP: Duration = Duration::from_secs(5);

/// Waits until the readiness check passes or its timeout runs out.
async fn wait_ready(
    r: &DaemonReadiness,
    procs: &Arc<dyn Processes>,
    ctx: &ExecContext,
    log: Option<oneshot::Receiver<()>>,
    notify: Option<(OwnedFd, UnixDatagram)>,
) -> Result<(), String> {
    let deadline = Deadline::new(r.timeout.0, r.interval.0);
    let within = format!("within {}", show(r.timeout.0));
    match &r.check {
        Check::Log { pattern } => {
            let Some(rx) = log else {
                return Err(format!("`{pattern}` is not a valid pattern"));
            };
            match tokio::time::timeout_at(deadline.instant(), rx).await {
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
            match tokio::time::timeout_at(deadline.instant(), notified(pipe, sock)).await {
                Ok(()) => Ok(()),
                Err(_) => Err(format!(
                    "no readiness notification (a line on NOTIFY_FD or READY=1 on NOTIFY_SOCKET) {within}"
                )),
            }
        }
        Check::None => Ok(()),
        check => {
            let attempt = || async move {
                match probe::attempt(check, procs, ctx).await {
                    Ok(()) => Attempt::Ready(()),
                    Err(why) => Attempt::<(), std::convert::Infallible>::NotYet(why),
                }
            };
            match tether_probe::poll(deadline, ATTEMPT_CAP, attempt).await {
                Ok(()) => Ok(()),
                Err(GaveUp::TimedOut(why)) => {
                    Err(format!("not ready {within}; the last check: {why}"))
                }
                Err(GaveUp::Fatal(never)) => match never {},
            }
        }
    }
}

/// Resolves on a line written to the notify pipe or a `READY=1` datagram.
async fn notified(pipe: OwnedFd, sock: UnixDatagram) {
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
