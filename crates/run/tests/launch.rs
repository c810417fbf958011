//! Orchestration against the in-memory engine: what is reused, started, recreated and removed.

use std::sync::Mutex;

use tether_engine::EngineError;
use tether_engine::fake::FakeEngine;
use tether_run::launch::{self, LaunchError, Status};
use tether_spec::model::Declaration;

const BASE: &str = r#"
version: 1
project: demo
sidecars:
  db:
    image: db:1
    lifecycle: shared
    interface: { kind: port, port: 5432 }
    readiness: { mode: tcp, timeout: 1s, interval: 10ms }
  cache:
    image: cache:1
    lifecycle: session
    interface: { kind: port, port: 6379 }
    readiness: { mode: log, pattern: "ready to accept", timeout: 1s, interval: 10ms }
"#;

fn declaration(yaml: &str) -> (tempfile::TempDir, Declaration) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tether.yaml");
    std::fs::write(&file, yaml).unwrap();
    let loaded = tether_spec::load(&file).unwrap_or_else(|e| panic!("{e}"));
    (dir, loaded.declaration)
}

fn engine() -> FakeEngine {
    let e = FakeEngine::new();
    e.add_image("db:1", "sha256:db1");
    e.add_image("cache:1", "sha256:cache1");
    e
}

struct Run {
    statuses: Mutex<Vec<String>>,
}

impl Run {
    fn new() -> Run {
        Run {
            statuses: Mutex::new(Vec::new()),
        }
    }

    fn report(&self) -> impl Fn(&str, Status) + Sync + '_ {
        move |sidecar: &str, status: Status| {
            let text = match status {
                Status::Ready { .. } => "ready".to_owned(),
                Status::Waiting { .. } => return,
                other => format!("{other:?}"),
            };
            self.statuses
                .lock()
                .unwrap()
                .push(format!("{sidecar}: {text}"));
        }
    }

    fn statuses(&self) -> Vec<String> {
        let mut s = self.statuses.lock().unwrap().clone();
        s.sort();
        s
    }
}

async fn up(
    engine: &FakeEngine,
    decl: &Declaration,
    session: &str,
    run: &Run,
) -> Result<launch::Launched, LaunchError> {
    let plan = tether_plan::plan(
        decl,
        session,
        &["docker".into(), "run".into(), "app".into()],
    )
    .unwrap();
    launch::up(engine, decl, &plan, "test:1:1", &run.report()).await
}

#[tokio::test(flavor = "current_thread")]
async fn a_first_run_creates_everything_and_a_second_reuses_the_shared_sidecar() {
    let (_d, decl) = declaration(BASE);
    let e = engine();
    let run = Run::new();
    let launched = up(&e, &decl, "s1", &run).await.unwrap();
    // Sidecars are ensured concurrently: their calls interleave in any order.
    let mut changes = e.changes();
    changes.sort();
    assert_eq!(
        changes,
        [
            "create tether-demo-db",
            "create tether-demo-s1-cache",
            "network tether-demo",
            "start tether-demo-db",
            "start tether-demo-s1-cache",
        ]
    );
    assert_eq!(
        run.statuses(),
        [
            "cache: Created { why: None }",
            "cache: ready",
            "db: Created { why: None }",
            "db: ready"
        ]
    );
    assert_eq!(launched.session.len(), 1);
    // The workload is told where to find them, by alias on the project network.
    assert_eq!(
        launched.env,
        [
            ("TETHER_DB_HOST".to_owned(), "db".to_owned()),
            ("TETHER_DB_PORT".to_owned(), "5432".to_owned()),
            ("TETHER_CACHE_HOST".to_owned(), "cache".to_owned()),
            ("TETHER_CACHE_PORT".to_owned(), "6379".to_owned()),
        ]
    );
    launch::cleanup(&e, &launched.session).await;
    assert_eq!(e.names(), ["tether-demo-db"]);

    e.clear_calls();
    let again = Run::new();
    let launched = up(&e, &decl, "s2", &again).await.unwrap();
    assert_eq!(
        e.changes(),
        ["create tether-demo-s2-cache", "start tether-demo-s2-cache"]
    );
    assert!(again.statuses().contains(&"db: Reused".to_owned()));
    launch::cleanup(&e, &launched.session).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_stopped_shared_sidecar_is_started_not_recreated() {
    let (_d, decl) = declaration(BASE);
    let e = engine();
    up(&e, &decl, "s1", &Run::new()).await.unwrap();
    e.kill("tether-demo-db");
    e.clear_calls();
    let run = Run::new();
    up(&e, &decl, "s2", &run).await.unwrap();
    assert!(e.changes().contains(&"start tether-demo-db".to_owned()));
    assert!(!e.changes().contains(&"create tether-demo-db".to_owned()));
    assert!(run.statuses().contains(&"db: Started".to_owned()));
}

#[tokio::test(flavor = "current_thread")]
async fn a_stale_shared_sidecar_is_recreated_with_the_reason() {
    let (_d, decl) = declaration(BASE);
    let e = engine();
    up(&e, &decl, "s1", &Run::new()).await.unwrap();

    // The same tag now names another image.
    e.add_image("db:1", "sha256:db2");
    e.clear_calls();
    let run = Run::new();
    up(&e, &decl, "s2", &run).await.unwrap();
    assert!(
        run.statuses()
            .contains(&"db: Created { why: Some(\"its image changed\") }".to_owned())
    );
    let changes = e.changes();
    let removed = changes
        .iter()
        .position(|c| c == "remove tether-demo-db")
        .unwrap();
    let created = changes
        .iter()
        .position(|c| c == "create tether-demo-db")
        .unwrap();
    assert!(removed < created, "{changes:?}");

    // A changed declaration.
    let (_d2, changed) = declaration(&BASE.replace(
        "    lifecycle: shared\n",
        "    lifecycle: shared\n    env: { POSTGRES_DB: app }\n",
    ));
    let run = Run::new();
    up(&e, &changed, "s3", &run).await.unwrap();
    assert!(
        run.statuses()
            .contains(&"db: Created { why: Some(\"its configuration changed\") }".to_owned())
    );
    let spec = e.container("tether-demo-db").unwrap().1;
    assert!(spec.env.contains(&"POSTGRES_DB=app".to_owned()));
}

#[tokio::test(flavor = "current_thread")]
async fn a_readiness_timeout_removes_the_session_sidecars_and_keeps_the_shared_ones() {
    let (_d, decl) = declaration(BASE);
    let e = engine();
    e.never_ready("tether-demo-s1-cache");
    let run = Run::new();
    let err = up(&e, &decl, "s1", &run).await.unwrap_err();
    match err {
        LaunchError::Sidecar {
            sidecar,
            message,
            logs,
        } => {
            assert_eq!(sidecar, "cache");
            assert_eq!(
                message,
                "not ready within 1s (log line matching /ready to accept/, timeout 1s, every 10ms)"
            );
            assert_eq!(logs, ["booting"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.names(), ["tether-demo-db"]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_sidecar_that_exits_stops_the_launch_with_its_last_lines() {
    let (_d, decl) = declaration(BASE);
    let e = engine();
    e.crashing("tether-demo-db");
    let err = up(&e, &decl, "s1", &Run::new()).await.unwrap_err();
    let LaunchError::Sidecar {
        sidecar, message, ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(
        (sidecar.as_str(), message.as_str()),
        ("db", "exited with code 1 before it was ready")
    );
    // The session sidecar that did start is gone again.
    assert_eq!(e.names(), ["tether-demo-db"]);
}

#[tokio::test(flavor = "current_thread")]
async fn two_runs_at_once_share_one_container_and_both_succeed() {
    let (_d, decl) = declaration(BASE);
    let e = engine();
    let (a, b) = (Run::new(), Run::new());
    let (ra, rb) = tokio::join!(up(&e, &decl, "s1", &a), up(&e, &decl, "s2", &b));
    ra.unwrap();
    rb.unwrap();
    let creates: Vec<String> = e
        .calls()
        .into_iter()
        .filter(|c| c == "create tether-demo-db")
        .collect();
    // Both tried; one won, the other found the winner's container.
    assert_eq!(creates.len(), 2);
    assert_eq!(
        e.names(),
        [
            "tether-demo-db",
            "tether-demo-s1-cache",
            "tether-demo-s2-cache"
        ]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn no_sidecars_means_no_engine_call() {
    let (_d, decl) = declaration("version: 1\nproject: bare\n");
    let e = FakeEngine::new();
    e.unreachable();
    let launched = up(&e, &decl, "s1", &Run::new()).await.unwrap();
    assert!(launched.containers.is_empty());
    assert_eq!(e.calls(), Vec::<String>::new());
}

#[tokio::test(flavor = "current_thread")]
async fn an_unreachable_engine_is_an_engine_error() {
    let (_d, decl) = declaration(BASE);
    let e = engine();
    e.unreachable();
    let err = up(&e, &decl, "s1", &Run::new()).await.unwrap_err();
    assert!(matches!(
        err,
        LaunchError::Engine(EngineError::Unreachable { .. })
    ));
    assert_eq!(e.calls(), ["ping"]);
}

#[tokio::test(flavor = "current_thread")]
async fn session_leftovers_of_a_killed_run_are_removed_by_the_next() {
    let (_d, decl) = declaration(BASE);
    let e = engine();
    let argv = ["docker".to_owned(), "run".to_owned(), "app".to_owned()];
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    // A run on this host whose process is gone (no such pid), and one that is alive (us).
    let dead = tether_plan::plan(&decl, "dead", &argv).unwrap();
    let gone = format!("{}:4194305:1", host.trim());
    launch::up(&e, &decl, &dead, &gone, &|_, _| {})
        .await
        .unwrap();
    e.clear_calls();
    let live = tether_plan::plan(&decl, "live", &argv).unwrap();
    launch::up(
        &e,
        &decl,
        &live,
        &tether_engine::host::owner_id(),
        &|_, _| {},
    )
    .await
    .unwrap();
    assert!(
        e.changes()
            .contains(&"remove tether-demo-dead-cache".to_owned())
    );
    // A live run's session sidecars are left alone by the next run.
    let next = tether_plan::plan(&decl, "next", &argv).unwrap();
    launch::up(
        &e,
        &decl,
        &next,
        &tether_engine::host::owner_id(),
        &|_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(
        e.names(),
        [
            "tether-demo-db",
            "tether-demo-live-cache",
            "tether-demo-next-cache"
        ]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_container_that_will_not_start_is_removed_not_left_behind() {
    let (_d, decl) = declaration(BASE);
    let e = engine();
    e.unstartable("tether-demo-s1-cache");
    let err = up(&e, &decl, "s1", &Run::new()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "sidecar cache: the engine refused to start container tether-demo-s1-cache: no GPU runtime (HTTP 500)"
    );
    assert!(
        e.changes()
            .contains(&"remove tether-demo-s1-cache".to_owned())
    );
    assert_eq!(e.names(), ["tether-demo-db"]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_second_up_reuses_its_session_sidecars() {
    let (_d, decl) = declaration(BASE);
    let e = engine();
    let argv = ["true".to_owned()];
    let plan = tether_plan::plan(&decl, "up", &argv).unwrap();
    launch::up(&e, &decl, &plan, launch::UP_OWNER, &|_, _| {})
        .await
        .unwrap();
    e.clear_calls();
    let run = Run::new();
    launch::up(&e, &decl, &plan, launch::UP_OWNER, &run.report())
        .await
        .unwrap();
    assert_eq!(
        run.statuses(),
        ["cache: Reused", "cache: ready", "db: Reused", "db: ready"]
    );
    assert!(e.changes().is_empty(), "{:?}", e.changes());
}

#[tokio::test(flavor = "current_thread")]
async fn a_container_tether_did_not_make_is_never_removed() {
    let (_d, decl) = declaration(BASE);
    let e = engine();
    e.foreign("tether-demo-db", "sha256:someone-elses");
    let err = up(&e, &decl, "s1", &Run::new()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "sidecar db: the name tether-demo-db is taken by a container tether did not make for this project; remove or rename it"
    );
    assert!(!e.changes().contains(&"remove tether-demo-db".to_owned()));
    assert!(e.names().contains(&"tether-demo-db".to_owned()));
}

#[tokio::test(flavor = "current_thread")]
async fn sidecars_join_the_workloads_own_network_and_a_missing_one_leaves_nothing() {
    let (_d, decl) = declaration(BASE);
    let e = engine();
    e.add_network("mine");
    let argv = |net: &str| -> Vec<String> {
        ["docker", "run", "--network", net, "app"]
            .map(str::to_owned)
            .to_vec()
    };
    let plan = tether_plan::plan(&decl, "s1", &argv("mine")).unwrap();
    let run = Run::new();
    let launched = launch::up(&e, &decl, &plan, "test:1:1", &run.report())
        .await
        .unwrap();
    let mut connects: Vec<String> = e
        .changes()
        .into_iter()
        .filter(|c| c.starts_with("connect "))
        .collect();
    connects.sort();
    assert_eq!(
        connects,
        [
            "connect tether-demo-db mine",
            "connect tether-demo-s1-cache mine"
        ]
    );
    // Reached by the same names as on the project network.
    assert_eq!(launched.env[0], ("TETHER_DB_HOST".into(), "db".into()));
    launch::cleanup(&e, &launched.session).await;

    // A network that does not exist: the error names it, and this run's containers are gone.
    let plan = tether_plan::plan(&decl, "s2", &argv("missing")).unwrap();
    let err = launch::up(&e, &decl, &plan, "test:1:1", &Run::new().report())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "the network `missing` does not exist");
    assert_eq!(e.names(), ["tether-demo-db"]);
}

#[tokio::test(flavor = "current_thread")]
async fn an_engine_elsewhere_gets_secrets_copied_in_before_the_start() {
    let (_d, decl) = declaration(
        r#"
version: 1
project: demo
sidecars:
  vault:
    image: db:1
    lifecycle: session
    interface: { kind: none }
    readiness: { mode: none }
    secrets: [{ name: token, from: "file:token.txt" }]
"#,
    );
    std::fs::write(std::path::Path::new(&decl.root).join("token.txt"), "t0ken").unwrap();
    let e = engine();
    e.remote();
    let run = Run::new();
    let launched = up(&e, &decl, "s1", &run).await.unwrap();
    assert_eq!(
        e.changes(),
        [
            "network tether-demo",
            "create tether-demo-s1-vault",
            "upload tether-demo-s1-vault /run/secrets/{token}",
            "start tether-demo-s1-vault",
        ]
    );
    assert_eq!(
        e.file("tether-demo-s1-vault", "/run/secrets/token")
            .as_deref(),
        Some(b"t0ken".as_slice())
    );
    // Neither a bind mount from this host nor a tmpfs that would hide the copy.
    let (_, spec) = e.container("tether-demo-s1-vault").unwrap();
    assert_eq!(spec.mounts, []);
    launch::cleanup(&e, &launched.session).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_missing_image_is_pulled_and_the_pull_policy_is_followed() {
    let (_d, decl) = declaration(BASE);
    let e = FakeEngine::new();
    e.add_image("db:1", "sha256:db1");
    e.in_registry("cache:1", "sha256:cache1");
    let plan_with = |session: &str, pull: tether_plan::PullPolicy| {
        let mut p = tether_plan::plan(
            &decl,
            session,
            &["docker".into(), "run".into(), "app".into()],
        )
        .unwrap();
        p.pull = pull;
        p
    };

    // missing (the default): only the image the engine lacks is pulled, with its progress.
    let run = Run::new();
    let plan = plan_with("s1", tether_plan::PullPolicy::Missing);
    let launched = launch::up(&e, &decl, &plan, "test:1:1", &run.report())
        .await
        .unwrap();
    let pulls: Vec<String> = e
        .changes()
        .into_iter()
        .filter(|c| c.starts_with("pull "))
        .collect();
    assert_eq!(pulls, ["pull cache:1"]);
    let statuses = run.statuses();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| s.starts_with("cache: Pulling"))
            .collect::<Vec<_>>(),
        [
            r#"cache: Pulling { image: "cache:1", percent: None }"#,
            r#"cache: Pulling { image: "cache:1", percent: Some(100) }"#,
            r#"cache: Pulling { image: "cache:1", percent: Some(50) }"#,
        ]
    );
    launch::cleanup(&e, &launched.session).await;

    // always: pulled on every run; the tag moved, so the shared sidecar is made anew.
    e.in_registry("db:1", "sha256:db2");
    e.clear_calls();
    let run = Run::new();
    let plan = plan_with("s2", tether_plan::PullPolicy::Always);
    let launched = launch::up(&e, &decl, &plan, "test:1:1", &run.report())
        .await
        .unwrap();
    let mut pulls: Vec<String> = e
        .changes()
        .into_iter()
        .filter(|c| c.starts_with("pull "))
        .collect();
    pulls.sort();
    assert_eq!(pulls, ["pull cache:1", "pull db:1"]);
    assert!(
        run.statuses()
            .contains(&r#"db: Created { why: Some("its image changed") }"#.to_owned()),
        "{:?}",
        run.statuses()
    );
    launch::cleanup(&e, &launched.session).await;

    // never: a missing image is an error, and nothing is asked of a registry.
    let e = FakeEngine::new();
    e.add_image("db:1", "sha256:db1");
    e.in_registry("cache:1", "sha256:cache1");
    let plan = plan_with("s3", tether_plan::PullPolicy::Never);
    let err = launch::up(&e, &decl, &plan, "test:1:1", &Run::new().report())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "sidecar cache: there is no image `cache:1` on this engine (build it, or let tether pull it)"
    );
    assert!(!e.calls().iter().any(|c| c.starts_with("pull ")));

    // A pull that fails names the image and what the registry said.
    let e = FakeEngine::new();
    e.add_image("db:1", "sha256:db1");
    let plan = plan_with("s4", tether_plan::PullPolicy::Missing);
    let err = launch::up(&e, &decl, &plan, "test:1:1", &Run::new().report())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "sidecar cache: cannot pull `cache:1`: manifest unknown (check the name, and for a registry that needs a login, `docker login` to it)"
    );
    assert_eq!(e.names(), ["tether-demo-db"]);
}
