//! `tether init` as PID 1 of a real container on the machine's Docker Engine, from an image
//! built `FROM scratch` with the static tether (scripts/static-tether) and busybox-static.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

engine_tests![
    tether_init_is_pid_1_of_a_scratch_container => [Need::StaticTether],
];

fn ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn static_tether() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TETHER_STATIC_BIN") {
        return Some(p.into());
    }
    let host = String::from_utf8(Command::new("rustc").arg("-vV").output().ok()?.stdout).ok()?;
    let host = host
        .lines()
        .find_map(|l| l.strip_prefix("host: "))?
        .to_owned();
    let p = repo().join(format!("target/static/{host}/debug/tether"));
    p.exists().then_some(p)
}

/// Removes the container and image whatever the test's outcome.
struct Cleanup {
    container: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.container]);
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

fn build_image(dir: &Path, tether: &Path, busybox: &Path, bundle: &str, tag: &str) {
    std::fs::copy(tether, dir.join("tether")).unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "cat", "tr", "echo", "kill"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("bundle.yaml"), bundle).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY . /\nENV PATH=/bin\nENTRYPOINT [\"/tether\", \"init\", \"-f\", \"/bundle.yaml\"]\n",
    )
    .unwrap();
    ok(&["build", "-q", "-t", tag, dir.to_str().unwrap()]);
}

/// Processes in the container as (pid, state, ppid), read from its /proc.
fn processes(container: &str) -> Vec<(i32, char, i32)> {
    let out = docker(&[
        "exec",
        container,
        "sh",
        "-c",
        "cat /proc/[0-9]*/stat 2>/dev/null",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let pid = l.split_whitespace().next()?.parse().ok()?;
            let mut f = l.rsplit_once(')')?.1.split_whitespace();
            let state = f.next()?.chars().next()?;
            let ppid = f.next()?.parse().ok()?;
            Some((pid, state, ppid))
        })
        .collect()
}

fn tether_init_is_pid_1_of_a_scratch_container() {
    let engine = docker(&["version", "--format", "{{.Server.APIVersion}}"]);
    if !require(
        engine.status.success(),
        "no Docker Engine is reachable (docker version failed)",
    ) {
        return;
    }
    let Some(tether) = static_tether() else {
        require(false, "no static tether: run scripts/static-tether first");
        return;
    };
    let Some(busybox) = static_busybox() else {
        require(false, "no static busybox: apt-get install busybox-static");
        return;
    };
    let tag = format!("tether-init-test:{}", std::process::id());
    let name = format!("tether-init-test-{}", std::process::id());
    let _cleanup = Cleanup {
        container: name.clone(),
        image: tag.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    build_image(
        dir.path(),
        &tether,
        &busybox,
        r#"version: 1
project: scratch
init:
  steps:
    - { name: setup, command: [sh, -c, "echo configured"] }
  daemons:
    spawner:
      command: [sh, -c, "(i=0; while [ $i -lt 1000 ]; do sleep 0.2 & i=$((i+1)); done); echo abandoned; exec sleep 1000"]
    quiet:
      depends_on: { spawner: started }
      command: [sleep, "1000"]
"#,
        &tag,
    );
    ok(&["run", "-d", "--name", &name, &tag]);
    eventually("the spawner abandons its children", || {
        ok(&["logs", &name]).contains("[spawner] abandoned")
    });
    let cmdline = ok(&["exec", &name, "cat", "/proc/1/cmdline"]);
    assert_eq!(cmdline, "/tether\0init\0-f\0/bundle.yaml\0");
    // The 1000 orphans landed on PID 1 and were reaped: only the two daemons remain its
    // children, and no zombie is left anywhere.
    eventually("PID 1 has reaped every orphan", || {
        let ps = processes(&name);
        let under_1 = ps.iter().filter(|p| p.2 == 1).count();
        under_1 == 2 && ps.iter().all(|p| p.1 != 'Z')
    });
    ok(&["stop", "-t", "30", &name]);
    let code = ok(&["inspect", "-f", "{{.State.ExitCode}}", &name]);
    assert_eq!(code.trim(), "0");
    let out = docker(&["logs", &name]);
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .map(str::to_owned)
        .collect();
    assert!(lines.contains(&"[setup] configured".to_owned()));
    assert!(lines.contains(&"[tether] stopping: received SIGTERM".to_owned()));
    assert!(lines.contains(&"[tether] quiet: stopped (killed by SIGTERM)".to_owned()));
    assert!(lines.contains(&"[tether] spawner: stopped (killed by SIGTERM)".to_owned()));
    assert!(lines.contains(&"[tether] exiting: all daemons stopped".to_owned()));
}
