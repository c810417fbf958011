//! Processes: spawning into their own process group, reaping every child (owned or orphaned),
//! and the blocked-signal set read through a signalfd.
//!
//! This is the only module with `unsafe`: the `pre_exec` hook that runs between fork and exec.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

pub use crate::core::{Exit, StartError};

/// The user and group a process runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// What to start and how.
pub struct Spec<'a> {
    pub argv: &'a [String],
    pub env: Vec<(String, String)>,
    pub workdir: Option<&'a str>,
    pub ids: Option<Ids>,
    /// Pipes for stdout and stderr; otherwise both are inherited.
    pub capture: bool,
    /// A pipe for stdin (notify commands); otherwise /dev/null, or inherited with `foreground`.
    pub stdin_pipe: bool,
    /// The write end of a readiness pipe, and the number it gets in the child (`NOTIFY_FD`).
    pub keep_fd: Option<(RawFd, RawFd)>,
    /// Make the child's process group the terminal's foreground group (tini-style mode).
    pub foreground: bool,
    /// Start the child in a new session (`setsid`) instead of a new process group of tether's
    /// session; with a terminal on stdin that no session holds, it becomes the child's.
    pub new_session: bool,
}

pub struct Spawned {
    pub pid: i32,
    pub exit: oneshot::Receiver<Exit>,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Every child's exit goes through here: one owner per pid, and orphans reaped silently.
#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
}

impl Reaper {
    /// Starts a process in its own process group, with every signal unblocked.
    pub fn spawn(&self, spec: Spec<'_>) -> io::Result<Spawned> {
        let (program, args) = spec
            .argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        // A missing folder would fail inside exec as "not found", blaming the program.
        if let Some(dir) = spec.workdir
            && !std::path::Path::new(dir).is_dir()
        {
            return Err(io::Error::other(format!(
                "the working folder {dir} does not exist"
            )));
        }
        let mut cmd = Command::new(program);
        cmd.args(args);
        // setsid makes a new group too, and fails in a process that already leads one.
        if !spec.new_session {
            cmd.process_group(0);
        }
        cmd.envs(
            spec.env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        if let Some(dir) = spec.workdir {
            cmd.current_dir(dir);
        }
        if let Some(ids) = spec.ids {
            // std sets the group first, clears supplementary groups when root, then the user.
            cmd.gid(ids.gid).uid(ids.uid);
        }
        if spec.capture {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        if spec.stdin_pipe {
            cmd.stdin(Stdio::piped());
        } else if !spec.foreground {
            cmd.stdin(Stdio::null());
        }
        let keep_fd = spec.keep_fd;
        let foreground = spec.foreground && !spec.new_session;
        let new_session = spec.new_session;
        // SAFETY: the hook runs in the forked child before exec and only makes
        // async-signal-safe calls (fcntl, dup2, setsid, ioctl, isatty, tcsetpgrp, getpgrp,
        // signal, sigemptyset, pthread_sigmask); it allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || {
                if let Some((fd, target)) = keep_fd {
                    // dup2 leaves the copy open across exec; the same number needs its flag
                    // cleared instead.
                    let failed = if fd == target {
                        nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) == -1
                    } else {
                        nix::libc::dup2(fd, target) == -1
                    };
                    if failed {
                        return Err(io::Error::last_os_error());
                    }
                }
                if new_session {
                    if nix::libc::setsid() == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    // A terminal no other session holds becomes the child's; one that is held
                    // (tether's own, say) stays where it is, and tether passes its signals on.
                    if nix::libc::isatty(0) == 1 {
                        nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0);
                    }
                }
                if foreground && nix::libc::isatty(0) == 1 {
                    // A background group calling tcsetpgrp gets SIGTTOU unless it is blocked,
                    // and every signal is still blocked here.
                    nix::libc::tcsetpgrp(0, nix::libc::getpgrp());
                }
                // The child starts clean: default dispositions (an ignored signal would stay
                // ignored across exec) and nothing blocked (the mask survives exec too).
                for sig in 1..32 {
                    if sig != nix::libc::SIGKILL && sig != nix::libc::SIGSTOP {
                        nix::libc::signal(sig, nix::libc::SIG_DFL);
                    }
                }
                let mut empty: nix::libc::sigset_t = std::mem::zeroed();
                nix::libc::sigemptyset(&mut empty);
                if nix::libc::pthread_sigmask(nix::libc::SIG_SETMASK, &empty, std::ptr::null_mut())
                    != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // Registering under the same lock the reaper takes means no exit is reaped unowned.
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        Ok(Spawned {
            pid,
            exit: rx,
            stdin: child.stdin.take().map(OwnedFd::from),
            stdout: child.stdout.take().map(OwnedFd::from),
            stderr: child.stderr.take().map(OwnedFd::from),
        })
        // `child` is dropped without waiting: `reap` collects its status.
    }

    /// Collects every exited child. Owned ones are reported to their owner; orphans re-parented
    /// to us are simply reaped. Returns how many orphans were reaped.
    pub fn reap(&self) -> usize {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let mut orphans = 0;
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("waitpid: {e}");
                    break;
                }
            };
            match waiters.remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => {
                    orphans += 1;
                    tracing::trace!(pid = pid.as_raw(), ?exit, "reaped an orphan");
                }
            }
        }
        orphans
    }
}

/// Passes a signal from outside to a command's whole process group. The job-control stops
/// (SIGTSTP, SIGTTIN, SIGTTOU) then stop tether too, so that the shell that started it sees
/// its job stopped; the SIGCONT that resumes tether is passed on like any other signal. A group
/// in a session of its own is orphaned, and the kernel discards those three signals sent to an
/// orphaned group: it gets SIGSTOP instead (as dumb-init does).
pub fn pass_on(group: i32, signal: i32, own_session: bool) {
    let stop = matches!(
        signal,
        nix::libc::SIGTSTP | nix::libc::SIGTTIN | nix::libc::SIGTTOU
    );
    kill_group(
        group,
        if stop && own_session {
            nix::libc::SIGSTOP
        } else {
            signal
        },
    );
    if stop {
        // As PID 1 of a PID namespace the kernel ignores this, as it should.
        let _ = kill(nix::unistd::getpid(), Signal::SIGSTOP);
    }
}

/// Whether any process is left in a process group (zombies count until they are reaped).
pub fn group_alive(group: i32) -> bool {
    kill(Pid::from_raw(-group), None).is_ok()
}

/// After a command exited: what is left of its process group gets SIGTERM (and SIGCONT, in case
/// it is stopped), then SIGKILL once `grace` passed; returns when the group is empty (orphans
/// come to tether, the subreaper, and are reaped as they end).
pub async fn end_group(group: i32, grace: std::time::Duration) {
    if !group_alive(group) {
        return;
    }
    tracing::debug!(group, "the command exited; ending the rest of its group");
    kill_group(group, nix::libc::SIGTERM);
    kill_group(group, nix::libc::SIGCONT);
    let tick = std::time::Duration::from_millis(5);
    let deadline = tokio::time::Instant::now() + grace;
    while group_alive(group) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(tick).await;
    }
    if group_alive(group) {
        kill_group(group, nix::libc::SIGKILL);
        // SIGKILL cannot be refused; the wait is for the reaping, bounded all the same.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while group_alive(group) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(tick).await;
        }
    }
}

/// Sends a signal to a whole process group; a group that is already gone is not an error.
pub fn kill_group(pgid: i32, signal: i32) {
    signal_pid(-pgid, signal);
}

pub fn signal_pid(pid: i32, signal: i32) {
    let Ok(sig) = Signal::try_from(signal) else {
        return;
    };
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, signal, "kill: {e}"),
    }
}

/// Blocks every signal in this thread (and so in every thread started after), to be read
/// through a signalfd. Must run before any thread starts. Children get an empty mask back
/// before exec.
///
/// SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS and SIGABRT are blocked too: sent from
/// outside with kill(), they are ordinary signals to pass on, and must not kill tether (and
/// orphan its children). A real fault of tether's own thread still ends it: the kernel
/// delivers a synchronous fault even when blocked, and abort() unblocks SIGABRT first.
///
/// SIGPIPE stays unblocked and ignored (as Rust programs start): a write to a closed pipe is
/// an EPIPE error for tether, never a signal to forward. SIGCHLD gets its default disposition
/// back, because an inherited SIG_IGN would make the kernel reap children unseen.
pub fn block_signals() -> io::Result<SigSet> {
    let mut set = SigSet::all();
    set.remove(Signal::SIGPIPE);
    // SAFETY: resetting SIGCHLD to its default disposition installs no handler; it runs before
    // any child exists.
    unsafe {
        nix::libc::signal(nix::libc::SIGCHLD, nix::libc::SIG_DFL);
    }
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(io::Error::from)?;
    Ok(set)
}

/// The blocked signals, delivered one at a time as the event loop reads them.
pub struct Signals {
    fd: AsyncFd<SignalFd>,
}

impl Signals {
    pub fn new(set: &SigSet) -> io::Result<Signals> {
        let sfd = SignalFd::with_flags(set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        // SAFETY: the SignalFd owns its descriptor and moves into the AsyncFd, so the
        // descriptor stays open and unchanged for as long as it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(sfd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Signals { fd })
    }

    pub async fn recv(&mut self) -> io::Result<i32> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            match guard.get_inner_mut().read_signal() {
                Ok(Some(info)) => return Ok(info.ssi_signo as i32),
                Ok(None) => guard.clear_ready(),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Reads signals for as long as the runtime lives: SIGCHLD reaps at once, whatever the
/// supervisor is doing; every other signal is passed on in order.
pub fn dispatch(
    mut signals: Signals,
    reaper: std::sync::Arc<Reaper>,
) -> tokio::sync::mpsc::UnboundedReceiver<io::Result<i32>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match signals.recv().await {
                Ok(n) if n == nix::libc::SIGCHLD => {
                    reaper.reap();
                }
                other => {
                    let failed = other.is_err();
                    if tx.send(other).is_err() || failed {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Becomes the reaper of orphaned descendants when not PID 1.
pub fn become_subreaper() {
    if std::process::id() != 1
        && let Err(e) = nix::sys::prctl::set_child_subreaper(true)
    {
        tracing::warn!("cannot become a child subreaper: {e}; orphans will go to PID 1");
    }
}

/// A pipe whose read end tether keeps and whose write end a child inherits.
pub fn notify_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// The number a child sees its notification pipe as: 3, a single digit that any shell can
/// redirect to (`echo >&3`), as s6 services commonly use. 3 is taken over in the child only when
/// it is open in tether (tether's own first descriptor), so it can never be the pipe that
/// reports a failed exec; otherwise the pipe keeps its own number.
pub fn notify_fd_number(write_end: RawFd) -> RawFd {
    // SAFETY: F_GETFD only reads the flags of descriptor 3, if it exists; nothing is borrowed
    // or closed.
    let three_is_ours = unsafe { nix::libc::fcntl(3, nix::libc::F_GETFD) } != -1;
    if three_is_ours { 3 } else { write_end }
}

pub fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}

/// Resolves `USER`, `UID`, `USER:GROUP` or `UID:GID` against /etc/passwd and /etc/group, read
/// directly so that a static binary in an image without NSS resolves names too.
pub fn resolve_user(spec: &str) -> Result<Ids, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => {
            let primary = passwd_entries(&passwd)
                .find(|f| f[2].parse() == Ok(uid))
                .and_then(|f| f[3].parse().ok());
            (uid, primary)
        }
        Err(_) => {
            let f = passwd_entries(&passwd)
                .find(|f| f[0] == user)
                .ok_or_else(|| format!("no user `{user}` in /etc/passwd"))?;
            let uid = f[2]
                .parse()
                .map_err(|_| format!("user `{user}` has a bad uid in /etc/passwd"))?;
            (uid, f[3].parse().ok())
        }
    };
    let gid = match group {
        None => primary.unwrap_or(uid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
                passwd_entries(&groups)
                    .find(|f| f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| format!("no group `{g}` in /etc/group"))?
            }
        },
    };
    Ok(Ids { uid, gid })
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
}

/// Why a command could not be started, as a shell tells them apart.
pub fn start_error(e: &io::Error) -> StartError {
    if e.kind() == io::ErrorKind::NotFound {
        StartError::NotFound
    } else {
        StartError::CannotExecute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_map_to_shell_codes() {
        assert_eq!(Exit::Code(3).code(), 3);
        assert_eq!(Exit::Signal(15).code(), 143);
        assert_eq!(Exit::Signal(9).describe(), "killed by SIGKILL");
        assert_eq!(Exit::Code(1).describe(), "exited with code 1");
    }

    #[test]
    fn numeric_users_need_no_passwd_entry() {
        assert_eq!(
            resolve_user("4242:4343"),
            Ok(Ids {
                uid: 4242,
                gid: 4343
            })
        );
        assert_eq!(resolve_user("root").map(|i| i.uid), Ok(0));
        assert_eq!(
            resolve_user("no-such-user-here"),
            Err("no user `no-such-user-here` in /etc/passwd".into())
        );
    }
}
