//! One attempt of a tcp, http or exec check. tcp and http are `tether_probe`'s; exec checks
//! run here, as children of the supervisor's reaper.

use std::sync::Arc;
use std::time::Duration;

use tether_spec::model::Check;
use tokio::io::AsyncReadExt;

use crate::core::{Exit, SIGKILL};
use crate::proc::{self, Spec};
use crate::supervisor::Processes;

/// What an exec check runs with: the daemon's own env, directory and user.
pub struct ExecContext {
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub ids: Option<proc::Ids>,
}

/// One attempt within `limit`; `Err` says why it failed, in words for the event log.
pub async fn attempt_within(
    check: &Check,
    procs: &Arc<dyn Processes>,
    ctx: &ExecContext,
    limit: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(limit, attempt(check, procs, ctx)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}", tether_probe::show(limit))),
    }
}

/// One attempt, as long as it takes.
pub async fn attempt(
    check: &Check,
    procs: &Arc<dyn Processes>,
    ctx: &ExecContext,
) -> Result<(), String> {
    match check {
        Check::Tcp { host, port } => tether_probe::tcp(host, *port).await,
        Check::Http { url } => tether_probe::http(url).await,
        Check::Exec { command } => exec(command, procs, ctx).await,
        Check::Log { .. } | Check::Notify | Check::None => Ok(()),
    }
}

/// Runs a check command to its end; its last output explains a failure.
async fn exec(
    command: &[String],
    procs: &Arc<dyn Processes>,
    ctx: &ExecContext,
) -> Result<(), String> {
    let spawned = procs
        .spawn(Spec {
            argv: command,
            env: ctx.env.clone(),
            workdir: ctx.workdir.as_deref(),
            ids: ctx.ids,
            capture: true,
            stdin_pipe: false,
            keep_fd: None,
            foreground: false,
            new_session: false,
        })
        .map_err(|e| format!("cannot run `{}`: {}", command[0], tether_probe::plain(&e)))?;
    let pid = spawned.pid;
    // Kill the check's group if this attempt is abandoned (timeout or the daemon went away).
    let mut guard = KillOnDrop(Some((procs.clone(), pid)));
    /// Reads to the end (a check that prints a lot must not block on a full pipe), keeping
    /// the last 4 KiB to explain a failure.
    async fn drain(fd: Option<std::os::fd::OwnedFd>) -> Vec<u8> {
        let mut tail = Vec::new();
        if let Some(mut p) =
            fd.and_then(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok())
        {
            let mut buf = [0u8; 8192];
            while let Ok(n) = p.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 8192 {
                    tail.drain(..tail.len() - 4096);
                }
            }
        }
        tail
    }
    let (mut text, err) = tokio::join!(drain(spawned.stdout), drain(spawned.stderr));
    text.extend_from_slice(&err);
    let exit = spawned
        .exit
        .await
        .map_err(|_| "the check vanished".to_owned())?;
    guard.0 = None;
    if exit == Exit::Code(0) {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&text);
    let last = said.trim().lines().last().unwrap_or("").trim();
    let mut why = format!("`{}` {}", command.join(" "), exit.describe());
    if !last.is_empty() {
        why.push_str(": ");
        why.push_str(&last.chars().take(200).collect::<String>());
    }
    Err(why)
}

/// Kills the check's process group when dropped armed.
struct KillOnDrop(Option<(Arc<dyn Processes>, i32)>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some((procs, pid)) = self.0.take() {
            procs.signal_group(pid, SIGKILL);
        }
    }
}
