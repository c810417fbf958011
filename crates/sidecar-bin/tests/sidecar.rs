//! `tether-sidecar` is `tether sidecar`: the same checks of the environment, and a plugin's
//! messages through it to a real bus (in this process) and back, then a clean drain on SIGTERM.
//! The contract itself is tested at length through `tether sidecar` (crates/cli/tests/sidecar.rs).

use std::process::{Command, Stdio};
use std::time::Duration;

use tether_plugin::{Bus, Message, Nack, Options, Plugin, Subscription};
use tokio::sync::mpsc;

fn sidecar() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tether-sidecar"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn help_version_and_a_malformed_environment() {
    let out = sidecar().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("tether-sidecar {}\n", env!("CARGO_PKG_VERSION"))
    );
    let dir = tempfile::tempdir().unwrap();
    let out = sidecar()
        .env_clear()
        .env("NO_COLOR", "1")
        .env("POOL_TYPE", "P")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: INSTANCE_ID is not set\n  = hint: allowed: 1 to 128 letters, digits, `.`, `-` or `_`, unique per instance: oms-1\n\
         error: the environment is not usable; nothing was started\n"
    );
    let out = sidecar().arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: unexpected argument `serve`: tether-sidecar is configured by the environment\n  = hint: tether-sidecar --help\n"
    );
}

/// Publishes `t.one` once it started and reports every message it gets.
struct Echo(mpsc::UnboundedSender<String>);

impl Plugin for Echo {
    fn subscriptions(&self) -> Vec<Subscription> {
        vec![Subscription::new("t.*")]
    }
    async fn on_start(&self, bus: &Bus) -> Result<(), tether_plugin::BoxError> {
        bus.publish("t.one", "hello").await?;
        Ok(())
    }
    async fn on_message(&self, _bus: &Bus, msg: Message) -> Result<(), Nack> {
        let _ = self.0.send(format!(
            "{} {}",
            msg.topic,
            String::from_utf8_lossy(&msg.data)
        ));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_gets_its_message_through_it_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let options = tether_bus::Options::new("127.0.0.1:0".parse().unwrap(), dir.path().join("bus"));
    let bound = tether_bus::bind(options).await.unwrap();
    let bus = bound.local_addr();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.run(async {
        let _ = stopped.await;
    }));

    let plugin_addr = format!("127.0.0.1:{}", free_port());
    let child = sidecar()
        .env_clear()
        .env("NO_COLOR", "1")
        .env("INSTANCE_ID", "echo-1")
        .env("POOL_TYPE", "Echo")
        .env(
            "REQUESTED_GRANTS",
            r#"[{"topic":"t.>","action":"publish"},{"topic":"t.*","action":"subscribe"}]"#,
        )
        .env("SIDECAR_BUS_API_URL", format!("http://{bus}"))
        .env("SIDECAR_ADDR", &plugin_addr)
        .env("SIDECAR_HEALTH_ADDR", format!("127.0.0.1:{}", free_port()))
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();

    let (tx, mut got) = mpsc::unbounded_channel();
    let plugin = tokio::spawn(tether_plugin::run_with(
        Echo(tx),
        Options::new(plugin_addr).connect_timeout(Duration::from_secs(30)),
    ));
    let first = tokio::time::timeout(Duration::from_secs(30), got.recv())
        .await
        .expect("the message within 30 s");
    assert_eq!(first.as_deref(), Some("t.one hello"));

    let term = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("step 8/8 (begin routing)"), "{stderr}");
    assert!(
        stderr.ends_with("tether-sidecar: drained and deregistered\n"),
        "{stderr}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), plugin)
        .await
        .expect("the plugin stops with its sidecar")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
}
