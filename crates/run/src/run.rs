//! `tether run`: sidecars up, then the workload in the foreground, then session sidecars gone,
//! whatever way the run ends.

use std::io::IsTerminal;
use std::time::Duration;

use tether_engine::Engine;
use tether_plan::{
    LABEL_PROJECT, LABEL_ROLE, LABEL_SESSION, MCP_CONFIG_HOST, Plan, Role, WorkloadTarget,
};
use tether_spec::model::Declaration;
use tokio::signal::unix::{SignalKind, signal};

use crate::launch::{self, LaunchError, Status};

/// Exit codes of `tether run` besides the workload's own.
pub mod exit {
    /// The declaration or the command line is wrong; nothing was started.
    pub const INVALID: i32 = 1;
    /// The engine is unreachable or refused a request.
    pub const ENGINE: i32 = 2;
    /// A sidecar could not be started or did not become ready.
    pub const SIDECAR: i32 = 3;
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

/// One line of progress, on stderr.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "tether: {line}");
}

/// How progress is shown: a live line per sidecar on a terminal, plain lines otherwise, or
/// one JSON object per change for scripts. Always on stderr: stdout is the workload's.
pub enum Progress {
    Plain,
    Live(std::sync::Mutex<Vec<(String, String)>>),
    Json,
}

impl Progress {
    pub fn new(json: bool) -> Progress {
        if json {
            Progress::Json
        } else if std::io::stderr().is_terminal()
            && std::env::var_os("TERM").is_some_and(|t| t != "dumb")
        {
            Progress::Live(std::sync::Mutex::new(Vec::new()))
        } else {
            Progress::Plain
        }
    }

    pub fn update(&self, sidecar: &str, status: &Status) {
        use std::io::Write;
        match self {
            // Off a terminal, a pull is one line, not one per percent.
            Progress::Plain => {
                if !matches!(
                    status,
                    Status::Pulling {
                        percent: Some(_),
                        ..
                    }
                ) {
                    say(&describe(sidecar, status));
                }
            }
            Progress::Json => {
                let (state, detail) = match status {
                    Status::Reused => ("reused", serde_json::Value::Null),
                    Status::Started => ("started", serde_json::Value::Null),
                    Status::Pulling { image, percent } => (
                        "pulling",
                        serde_json::json!({"image": image, "percent": percent}),
                    ),
                    Status::Created { why } => ("created", serde_json::json!(why)),
                    Status::Waiting { summary } => ("waiting", serde_json::json!(summary)),
                    Status::Ready { took } => ("ready", serde_json::json!(took.as_millis() as u64)),
                    Status::Failed { why } => ("failed", serde_json::json!(why)),
                };
                let line =
                    serde_json::json!({"sidecar": sidecar, "status": state, "detail": detail});
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            Progress::Live(lines) => {
                let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                let drawn = lines.len();
                let text = describe(sidecar, status);
                match lines.iter_mut().find(|(s, _)| s == sidecar) {
                    Some(l) => l.1 = text,
                    None => lines.push((sidecar.to_owned(), text)),
                }
                // Back to the top of the block, then every line again, each cleared first.
                let mut out = String::new();
                if drawn > 0 {
                    out.push_str(&format!("\x1b[{drawn}A"));
                }
                for (_, l) in lines.iter() {
                    out.push_str("\r\x1b[2Ktether: ");
                    // One screen line each, or moving up would miss: long ones are cut.
                    if l.chars().count() > 90 {
                        out.extend(l.chars().take(89));
                        out.push('\u{2026}');
                    } else {
                        out.push_str(l);
                    }
                    out.push('\n');
                }
                let _ = std::io::stderr().write_all(out.as_bytes());
            }
        }
    }
}

pub fn describe(sidecar: &str, status: &Status) -> String {
    match status {
        Status::Reused => format!("{sidecar}: reused (running, same configuration)"),
        Status::Started => format!("{sidecar}: started (stopped, same configuration)"),
        Status::Pulling {
            image,
            percent: None,
        } => format!("{sidecar}: pulling {image}"),
        Status::Pulling {
            image,
            percent: Some(p),
        } => format!("{sidecar}: pulling {image} ({p}%)"),
        Status::Created { why: None } => format!("{sidecar}: created"),
        Status::Created { why: Some(w) } => format!("{sidecar}: recreated ({w})"),
        Status::Waiting { summary } => format!("{sidecar}: waiting for readiness ({summary})"),
        Status::Ready { took } => format!("{sidecar}: ready in {:.1}s", took.as_secs_f64()),
        Status::Failed { why } => format!("{sidecar}: failed: {why}"),
    }
}

/// A workload on this host reaches sidecars through ports published on 127.0.0.1: of no use
/// when the engine publishes them on another machine's. Says so, before anything is made.
async fn refuse_ports_elsewhere<E: Engine>(engine: &E, plan: &Plan) -> bool {
    let published = plan.sidecars.iter().any(|c| !c.publish.is_empty());
    if plan.target.on_host() && published && !engine.ports_here().await {
        say(&format!(
            "error: the engine at {} runs on another machine: the ports it publishes are on that machine's 127.0.0.1, not this one's",
            engine.endpoint()
        ));
        say(
            "  = hint: run the workload as a container (`tether run -- docker run …`), which reaches the sidecars by name",
        );
        return true;
    }
    false
}

/// Starts the sidecars, runs the workload, cleans up; returns the exit code.
pub async fn run<E: Engine>(
    engine: &E,
    decl: &Declaration,
    plan: &Plan,
    progress: &Progress,
) -> i32 {
    let mut stops = Stops::new();
    if refuse_ports_elsewhere(engine, plan).await {
        return exit::ENGINE;
    }
    let owner = tether_engine::host::owner_id();
    let report = |sidecar: &str, status: Status| progress.update(sidecar, &status);
    let launched = tokio::select! {
        r = launch::up(engine, decl, plan, &owner, &report) => r,
        sig = stops.next() => {
            remove_session(engine, plan).await;
            return 128 + sig;
        }
    };
    let launched = match launched {
        Ok(l) => l,
        Err(e) => {
            report_failure(&e);
            return match e {
                LaunchError::Engine(_) => exit::ENGINE,
                LaunchError::Sidecar { .. } => exit::SIDECAR,
            };
        }
    };
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
            say(&format!("error: cannot write the MCP configuration: {e}"));
            launch::cleanup(engine, &launched.session).await;
            return exit::ENGINE;
        }
    };
    let code = workload(Some(engine), plan, &argv, &env, &mut stops).await;
    launch::cleanup(engine, &launched.session).await;
    if let Some(dir) = mcp_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    code
}

/// With no sidecars there is nothing to start: the command runs as given, with the declared
/// environment, and no engine is contacted.
pub async fn passthrough(plan: &Plan) -> i32 {
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

fn report_failure(e: &LaunchError) {
    match e {
        LaunchError::Engine(e) => {
            say(&format!("error: {e}"));
            if let Some(hint) = e.hint() {
                say(&format!("  = hint: {hint}"));
            }
        }
        LaunchError::Sidecar {
            sidecar,
            message,
            logs,
        } => {
            say(&format!("error: sidecar {sidecar}: {message}"));
            if !logs.is_empty() {
                say(&format!("  its last {} lines:", logs.len()));
                for l in logs {
                    say(&format!("  | {l}"));
                }
            }
        }
    }
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
) -> i32 {
    let Some((program, args)) = argv.split_first() else {
        say("error: no workload command");
        return exit::INVALID;
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
            say(&format!("error: cannot run `{program}`: {e}"));
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
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
            return code_of(status);
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
            128 + sig
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
    signalled
}

/// The hidden subcommand that hands the terminal to its own process group, then execs.
pub const FOREGROUND: &str = "__foreground";

/// `tether __foreground -- PROGRAM ARGS`: makes this process's group the terminal's foreground
/// (when there is a terminal), then becomes PROGRAM. Returns only when that fails: 127 not
/// found, 126 not executable.
pub fn foreground_exec(argv: &[String]) -> i32 {
    let Some(program) = argv.first() else {
        say("error: no workload command");
        return exit::INVALID;
    };
    if let Ok(tty) = std::fs::File::open("/dev/tty") {
        quietly(|| nix::unistd::tcsetpgrp(&tty, nix::unistd::getpgrp()));
    }
    let c_args: Result<Vec<std::ffi::CString>, _> = argv
        .iter()
        .map(|a| std::ffi::CString::new(a.as_bytes()))
        .collect();
    let Ok(c_args) = c_args else {
        say(&format!(
            "error: cannot run `{program}`: an argument holds a NUL byte"
        ));
        return 126;
    };
    let err = match nix::unistd::execvp(&c_args[0], &c_args) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    say(&format!(
        "error: cannot run `{program}`: {}",
        std::io::Error::from(err)
    ));
    if err == nix::errno::Errno::ENOENT {
        127
    } else {
        126
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

fn code_of(status: std::io::Result<std::process::ExitStatus>) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Err(_) => exit::ENGINE,
    }
}

/// `tether up`: starts and readies sidecars with no workload. Session sidecars made here are
/// owned by no run, so they stay until `tether down`. With `print_env`, prints `export` lines
/// for the host's shell (ports published on 127.0.0.1).
pub async fn up<E: Engine>(
    engine: &E,
    decl: &Declaration,
    plan: &mut Plan,
    names: &[String],
    print_env: bool,
    progress: &Progress,
) -> i32 {
    if !names.is_empty() {
        let known: Vec<&str> = plan.sidecars.iter().map(|c| c.sidecar.as_str()).collect();
        for n in names {
            if !known.contains(&n.as_str()) {
                let hint = tether_spec::values::did_you_mean(n, &known)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                say(&format!(
                    "error: no sidecar named `{n}` (declared: {}){hint}",
                    known.join(", ")
                ));
                return exit::INVALID;
            }
        }
        plan.sidecars.retain(|c| names.contains(&c.sidecar));
    }
    if print_env && refuse_ports_elsewhere(engine, plan).await {
        return exit::ENGINE;
    }
    let report = |sidecar: &str, status: Status| progress.update(sidecar, &status);
    match launch::up(engine, decl, plan, launch::UP_OWNER, &report).await {
        Ok(launched) => {
            if print_env {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                for (k, v) in &launched.env {
                    let _ = writeln!(out, "export {k}={}", shell_quote(v));
                }
            }
            0
        }
        Err(e) => {
            report_failure(&e);
            match e {
                LaunchError::Engine(_) => exit::ENGINE,
                LaunchError::Sidecar { .. } => exit::SIDECAR,
            }
        }
    }
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
