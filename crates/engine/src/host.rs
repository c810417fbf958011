//! Facts about this host that the engine and the launcher both lean on: which process owns a
//! container (so a later run can tell a killed run's leftovers from a live run's), and the
//! private folder in memory where tether keeps what it writes between runs.

use std::path::{Path, PathBuf};

/// `host:pid:start`, where start is the process's start time in clock ticks since boot: a
/// reused pid does not look alive.
pub fn owner_id() -> String {
    let pid = std::process::id();
    format!("{}:{pid}:{}", hostname(), start_ticks(pid).unwrap_or(0))
}

/// Whether the process an [`owner_id`] names may still be running; anything tether cannot judge
/// (another machine, a malformed owner, a process it may not see) counts as alive.
pub fn owner_alive(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return true;
    };
    if host != hostname() {
        // Another machine's run: not ours to judge.
        return true;
    }
    let Ok(pid) = pid.parse::<i32>() else {
        return true;
    };
    // Gone for sure only when the kernel says so; a process we may not see (another PID
    // namespace, hidepid) counts as alive.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Err(nix::errno::Errno::ESRCH) => false,
        _ => match start_ticks(pid as u32) {
            Some(t) => t.to_string() == start,
            None => true,
        },
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the command name in parentheses.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// `/dev/shm/tether-<uid>`: memory, never disk; a folder only this user can enter. Not made or
/// checked here: see [`private_base`] and [`private_dir`].
pub fn private_base_path() -> PathBuf {
    Path::new("/dev/shm").join(format!("tether-{}", nix::unistd::getuid()))
}

/// The base folder, made if missing and checked like [`private_dir`]: for what tether
/// remembers between runs of this user.
pub fn private_base() -> Result<PathBuf, String> {
    let base = private_base_path();
    private_dir(&base)?;
    Ok(base)
}

/// Makes the folder if missing, and refuses it unless it is a real folder owned by this user and
/// closed to everyone else (another user could otherwise have made it first, to read or redirect
/// what is written there).
pub fn private_dir(d: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.to_string()),
    }
    let meta = std::fs::symlink_metadata(d).map_err(|e| e.to_string())?;
    if !meta.file_type().is_dir() {
        return Err("it is not a folder".into());
    }
    if meta.uid() != nix::unistd::getuid().as_raw() {
        return Err(format!("it belongs to uid {}", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "others may use it (mode {:o})",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_malformed_or_foreign_owner_counts_as_alive() {
        assert!(owner_alive(&owner_id()));
        assert!(owner_alive("nonsense"));
        assert!(owner_alive("another-host:1:1"));
        // This host, this pid, another start time: a reused pid.
        let pid = std::process::id();
        assert!(!owner_alive(&format!("{}:{pid}:1", hostname())));
    }
}
