//! `tether run`: sidecars up, then the workload in the foreground, then session sidecars gone,
//! whatever way the run ends.

use std::time::Duration;

use tether_engine::Engine;
use tether_plan::{
    LABEL_PROJECT, LABEL_ROLE, LABEL_SESSION, MCP_CONFIG_HOST, Plan, Role, WorkloadTarget,
};
use tether_spec::model::Declaration;
use tokio::signal::unix::{SignalKind, signal};

use crate::launch::{self, LaunchError, Status};

/// Why `tether run` or `tether up` ended without the workload's own exit code. The CLI says
/// it and maps it to the documented exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The command line or the declaration asks for what cannot be; nothing was started.
    Invalid {
        message: String,
        hint: Option<String>,
    },
    /// The engine is unreachable, refused a request, or cannot do what this run needs.
    Engine {
        message: String,
        hint: Option<String>,
    },
    /// A sidecar could not be started or did not become ready; its last lines explain.
    Sidecar {
        sidecar: String,
        message: String,
        logs: Vec<String>,
    },
    /// The workload's command could not be run (`not_found`: no such program).
    CannotRun {
        program: String,
        reason: String,
        not_found: bool,
    },
}

impl From<LaunchError> for Failure {
    fn from(e: LaunchError) -> Failure {
        match e {
            LaunchError::Engine(e) => Failure::Engine {
                message: e.to_string(),
                hint: e.hint(),
            },
            LaunchError::Sidecar {
                sidecar,
                message,
                logs,
            } => Failure::Sidecar {
                sidecar,
                message,
                logs,
            },
        }
    }
}

/// How a run ended, when it got as far as the workload or was stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The workload ended with this code (128 + N when killed by signal N).
    Workload(i32),
    /// tether was sent signal N (Ctrl-C, SIGTERM, SIGHUP) and stopped the run.
    Stopped(i32),
}

/// What `tether run` and `tether up` report as they go; the CLI shows it.
pub trait Report: Sync {
    /// A sidecar's status changed.
    fn status(&self, sidecar: &str, status: &Status);
}

/// The signals that end a run: Ctrl-C, SIGTERM, and SIGHUP (the terminal went away).
pub struct Stops {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Stops {
    fn new() -> Stops {
        Stops {
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            hup: signal(SignalKind::hangup()).expect("SIGHUP handler"),
        }
    }

    /// The next one, as its number.
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => 2,
            _ = self.term.recv() => 15,
            _ = self.hup.recv() => 1,
        }
    }
}

/// How long the workload gets to stop after Ctrl-C or SIGTERM before it is stopped by force.
const WORKLOAD_GRACE: Duration = Duration::from_secs(10);

/// A workload on this host reaches sidecars through ports published on 127.0.0.1: of no use
/// when the engine publishes them on another machine's. Says so, before anything is made.
async fn refuse_ports_elsewhere<E: Engine>(engine: &E, plan: &Plan) -> Result<(), Failure> {
    let published = plan.sidecars.iter().any(|c| !c.publish.is_empty());
    if plan.target.on_host() && published && !engine.ports_here().await {
        return Err(Failure::Engine {
            message: format!(
                "the engine at {} runs on another machine: the ports it publishes are on that machine's 127.0.0.1, not this one's",
                engine.endpoint()
            ),
            hint: Some(
                "run the workload as a container (`tether run -- docker run …`), which reaches the sidecars by name".into(),
            ),
        });
    }
    Ok(())
}

/// Starts the sidecars, runs the workload, cleans up; returns how it ended.
pub async fn run<E: Engine>(
    engine: &E,
    decl: &Declaration,
    plan: &Plan,
    report: &dyn Report,
) -> Result<Ended, Failure> {
    let mut stops = Stops::new();
    refuse_ports_elsewhere(engine, plan).await?;
    let owner = tether_engine::host::owner_id();
    let status = |sidecar: &str, status: Status| report.status(sidecar, &status);
    let launched = tokio::select! {
        r = launch::up(engine, decl, plan, &owner, &status) => r,
        sig = stops.next() => {
            remove_session(engine, plan).await;
            return Ok(Ended::Stopped(sig));
        }
    };
    let launched = launched?;
    let mut argv = plan.argv.clone();
    // A process on the host, or the engine's CLI passing values on to a host-network container.
    let mut env = if plan.target.on_host() {
        launched.env.clone()
    } else {
        Vec::new()
    };
    // The workload's engine CLI goes through the same ssh tunnel as tether.
    if let Some(host) = engine.workload_docker_host() {
        env.push(("DOCKER_HOST".into(), host));
    }
    let mcp_dir = match write_mcp(plan, &launched, &mut argv, &mut env) {
        Ok(d) => d,
        Err(e) => {
            launch::cleanup(engine, &launched.session).await;
            return Err(Failure::Engine {
                message: format!("cannot write the MCP configuration: {e}"),
                hint: None,
            });
        }
    };
    let ended = workload(Some(engine), plan, &argv, &env, &mut stops).await;
    launch::cleanup(engine, &launched.session).await;
    if let Some(dir) = mcp_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    ended
}

/// With no sidecars there is nothing to start: the command runs as given, with the declared
/// environment, and no engine is contacted.
pub async fn passthrough(plan: &Plan) -> Result<Ended, Failure> {
    let mut stops = Stops::new();
    let env: Vec<(String, String)> = if plan.target.on_host() {
        plan.env
            .iter()
            .filter_map(|(k, v)| v.resolve(&|_, _| None).map(|v| (k.clone(), v)))
            .collect()
    } else {
        Vec::new()
    };
    // No engine: a workload that will not stop is killed, with no container to look for.
    workload::<tether_engine::docker::DockerEngine>(None, plan, &plan.argv, &env, &mut stops).await
}

/// Removes this session's containers by label: also those an interrupted start left behind.
pub async fn remove_session<E: Engine>(engine: &E, plan: &Plan) {
    if let Ok(found) = engine
        .list(&[
            (LABEL_PROJECT, plan.project.as_str()),
            (LABEL_SESSION, plan.session.as_str()),
        ])
        .await
    {
        let names: Vec<String> = found.into_iter().map(|c| c.name).collect();
        launch::cleanup(engine, &names).await;
    }
    // Secret files written for sidecars whose container was not made yet.
    launch::forget_secrets(&launch::session_names(plan));
}

/// Writes the MCP server list and points the workload at it.
fn write_mcp(
    plan: &Plan,
    launched: &launch::Launched,
    argv: &mut [String],
    env: &mut [(String, String)],
) -> std::io::Result<Option<std::path::PathBuf>> {
    let Some(mcp) = &plan.mcp else {
        return Ok(None);
    };
    let published = |sidecar: &str, port: u16| {
        launched
            .containers
            .get(sidecar)
            .and_then(|c| c.published.get(&port).copied())
    };
    let dir = std::env::temp_dir().join(format!("tether-{}-{}", plan.project, plan.session));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("mcp.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&mcp.render(&published))?)?;
    let path = file.display().to_string();
    for a in argv.iter_mut() {
        if a.contains(MCP_CONFIG_HOST) {
            *a = a.replace(MCP_CONFIG_HOST, &path);
        }
    }
    for (_, v) in env.iter_mut() {
        if v.contains(MCP_CONFIG_HOST) {
            *v = v.replace(MCP_CONFIG_HOST, &path);
        }
    }
    Ok(Some(dir))
}

/// Runs the workload with the terminal; Ctrl-C and SIGTERM stop it (by force after a grace).
async fn workload<E: Engine>(
    engine: Option<&E>,
    plan: &Plan,
    argv: &[String],
    env: &[(String, String)],
    stops: &mut Stops,
) -> Result<Ended, Failure> {
    let Some((program, args)) = argv.split_first() else {
        return Err(no_workload());
    };
    // The workload gets a process group of its own, and the terminal (when tether has it):
    // Ctrl-C there reaches the workload exactly once, and a signal sent to tether is
    // forwarded to the group exactly once.
    let terminal = Terminal::ours();
    // With a terminal, the workload takes it before its first instruction: it starts as
    // `tether __foreground -- ARGV`, which makes its own group the foreground, then execs the
    // workload (a Ctrl-C typed at once then reaches the workload, not tether).
    let mut command = match (&terminal, std::env::current_exe()) {
        (Some(_), Ok(tether)) => {
            let mut c = tokio::process::Command::new(tether);
            c.arg(FOREGROUND).arg("--").arg(program).args(args);
            c
        }
        _ => {
            let mut c = tokio::process::Command::new(program);
            c.args(args);
            c
        }
    };
    let mut child = match command.envs(env.iter().cloned()).process_group(0).spawn() {
        Ok(c) => c,
        Err(e) => {
            return Err(Failure::CannotRun {
                program: program.clone(),
                reason: e.to_string(),
                not_found: e.kind() == std::io::ErrorKind::NotFound,
            });
        }
    };
    let group = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(nix::unistd::Pid::from_raw);
    if let (Some(t), Some(g)) = (&terminal, group) {
        t.give(g);
    }
    let signalled = tokio::select! {
        status = child.wait() => {
            if let Some(t) = &terminal {
                t.take_back();
            }
            return code_of(status).map(Ended::Workload);
        }
        sig = stops.next() => {
            use nix::sys::signal::Signal;
            let signal = match sig {
                2 => Signal::SIGINT,
                1 => Signal::SIGHUP,
                _ => Signal::SIGTERM,
            };
            if let Some(g) = group {
                let _ = nix::sys::signal::killpg(g, signal);
            }
            sig
        }
    };
    match tokio::time::timeout(WORKLOAD_GRACE, child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            // Still there: stop its container (if it is one) and the command.
            if plan.target != WorkloadTarget::HostProcess
                && let Some(engine) = engine
                && let Ok(found) = engine
                    .list(&[
                        (LABEL_PROJECT, plan.project.as_str()),
                        (LABEL_SESSION, plan.session.as_str()),
                        (LABEL_ROLE, Role::Workload.as_str()),
                    ])
                    .await
            {
                for c in found {
                    let _ = engine.stop(&c.id, Duration::from_secs(1)).await;
                }
            }
            let _ = child.kill().await;
        }
    }
    if let Some(t) = &terminal {
        t.take_back();
    }
    Ok(Ended::Stopped(signalled))
}

fn no_workload() -> Failure {
    Failure::Invalid {
        message: "no workload command".into(),
        hint: None,
    }
}

/// The hidden subcommand that hands the terminal to its own process group, then execs.
pub const FOREGROUND: &str = "__foreground";

/// `tether __foreground -- PROGRAM ARGS`: makes this process's group the terminal's foreground
/// (when there is a terminal), then becomes PROGRAM. Returns only when that fails.
pub fn foreground_exec(argv: &[String]) -> Failure {
    let Some(program) = argv.first() else {
        return no_workload();
    };
    if let Ok(tty) = std::fs::File::open("/dev/tty") {
        quietly(|| nix::unistd::tcsetpgrp(&tty, nix::unistd::getpgrp()));
    }
    let c_args: Result<Vec<std::ffi::CString>, _> = argv
        .iter()
        .map(|a| std::ffi::CString::new(a.as_bytes()))
        .collect();
    let Ok(c_args) = c_args else {
        return Failure::CannotRun {
            program: program.clone(),
            reason: "an argument holds a NUL byte".into(),
            not_found: false,
        };
    };
    let err = match nix::unistd::execvp(&c_args[0], &c_args) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    Failure::CannotRun {
        program: program.clone(),
        reason: std::io::Error::from(err).to_string(),
        not_found: err == nix::errno::Errno::ENOENT,
    }
}

/// The controlling terminal, when tether's process group is in its foreground.
struct Terminal {
    tty: std::fs::File,
}

impl Terminal {
    fn ours() -> Option<Terminal> {
        let tty = std::fs::File::open("/dev/tty").ok()?;
        let fg = nix::unistd::tcgetpgrp(&tty).ok()?;
        (fg == nix::unistd::getpgrp()).then_some(Terminal { tty })
    }

    /// Makes `group` the foreground; a workload that touched the terminal a moment before
    /// (and was stopped for it) is continued.
    fn give(&self, group: nix::unistd::Pid) {
        quietly(|| nix::unistd::tcsetpgrp(&self.tty, group));
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGCONT);
    }

    fn take_back(&self) {
        quietly(|| nix::unistd::tcsetpgrp(&self.tty, nix::unistd::getpgrp()));
    }
}

/// Runs a terminal call with SIGTTOU blocked: a background group changing the foreground
/// would otherwise be stopped by it.
fn quietly(f: impl FnOnce() -> nix::Result<()>) {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTTOU);
    let mut old = SigSet::empty();
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old));
    let _ = f();
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
}

fn code_of(status: std::io::Result<std::process::ExitStatus>) -> Result<i32, Failure> {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => Ok(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))),
        Err(e) => Err(Failure::Engine {
            message: format!("cannot wait for the workload: {e}"),
            hint: None,
        }),
    }
}

/// `tether up`: starts and readies sidecars with no workload. Session sidecars made here are
/// owned by no run, so they stay until `tether down`. Returns the environment a process on
/// this host would get (ports published on 127.0.0.1), for `--env`.
pub async fn up<E: Engine>(
    engine: &E,
    decl: &Declaration,
    plan: &mut Plan,
    names: &[String],
    print_env: bool,
    report: &dyn Report,
) -> Result<Vec<(String, String)>, Failure> {
    if !names.is_empty() {
        let known: Vec<&str> = plan.sidecars.iter().map(|c| c.sidecar.as_str()).collect();
        for n in names {
            if !known.contains(&n.as_str()) {
                let hint = tether_spec::values::did_you_mean(n, &known)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                return Err(Failure::Invalid {
                    message: format!(
                        "no sidecar named `{n}` (declared: {}){hint}",
                        known.join(", ")
                    ),
                    hint: None,
                });
            }
        }
        plan.sidecars.retain(|c| names.contains(&c.sidecar));
    }
    if print_env {
        refuse_ports_elsewhere(engine, plan).await?;
    }
    let status = |sidecar: &str, status: Status| report.status(sidecar, &status);
    let launched = launch::up(engine, decl, plan, launch::UP_OWNER, &status).await?;
    Ok(launched.env)
}

/// `export NAME=VALUE` lines for a POSIX shell, one per variable.
pub fn exports(env: &[(String, String)]) -> String {
    env.iter()
        .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
        .collect()
}

/// A value a POSIX shell reads back unchanged.
fn shell_quote(v: &str) -> String {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@%+=,".contains(&b))
    {
        return v.to_owned();
    }
    format!("'{}'", v.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_one_line_each() {
        let env = [
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "x y".to_owned()),
        ];
        assert_eq!(exports(&env), "export A=1\nexport B='x y'\n");
    }

    #[test]
    fn values_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(shell_quote("127.0.0.1"), "127.0.0.1");
        assert_eq!(
            shell_quote("http://127.0.0.1:5/mcp"),
            "http://127.0.0.1:5/mcp"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
