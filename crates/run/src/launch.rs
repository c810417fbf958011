//! Bringing the plan's sidecars up on an engine: shared ones reused when their configuration
//! (image ID included) still matches, session ones created for this run; all of them probed
//! concurrently, each against its own deadline. Whatever fails, nothing is left half-started.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::{join_all, try_join_all};
use tether_engine::host::{owner_alive, private_base_path, private_dir};
use tether_engine::{Container, Engine, EngineError, FileCopy, Lines};
use tether_plan::{
    ContainerPlan, LABEL_CONFIG_HASH, LABEL_OWNER, LABEL_PROJECT, LABEL_ROLE, MountPlan, Plan,
    PullPolicy, ReadinessMode, Role, SECRETS_DIR, config_hash, lifecycle_of,
};
use tether_spec::model::{Declaration, Lifecycle};

/// The owner of sidecars started by `tether up`: no run, so never swept as a leftover.
pub const UP_OWNER: &str = "tether-up";

/// How one sidecar is getting on, for the progress display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// A running container with the same configuration was found.
    Reused,
    /// A stopped container with the same configuration was started.
    Started,
    /// Its image is being pulled: `percent` done, when the engine has said.
    Pulling {
        image: String,
        percent: Option<u8>,
    },
    /// A new container was made; `why` says what was wrong with the old one, if any.
    Created {
        why: Option<String>,
    },
    /// Waiting for readiness (`summary` says how).
    Waiting {
        summary: String,
    },
    Ready {
        took: Duration,
    },
    Failed {
        why: String,
    },
    /// Its old container is being removed: a new one is made once it is gone.
    Removing,
}

#[derive(Debug)]
pub enum LaunchError {
    Engine(EngineError),
    Sidecar {
        sidecar: String,
        message: String,
        /// The container's last lines, when it has any.
        logs: Vec<String>,
    },
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaunchError::Engine(e) => write!(f, "{e}"),
            LaunchError::Sidecar {
                sidecar, message, ..
            } => write!(f, "sidecar {sidecar}: {message}"),
        }
    }
}

impl From<EngineError> for LaunchError {
    fn from(e: EngineError) -> Self {
        LaunchError::Engine(e)
    }
}

/// The sidecars as they run now.
#[derive(Debug, Default)]
pub struct Launched {
    /// Sidecar name → its container, inspected once ready.
    pub containers: BTreeMap<String, Container>,
    /// This run's session containers, by name, to remove when it ends.
    pub session: Vec<String>,
    /// The workload's environment, published ports filled in.
    pub env: Vec<(String, String)>,
}

pub type Report<'a> = &'a (dyn Fn(&str, Status) + Sync);

/// Ensures the network and every sidecar, then waits until all are ready. On failure the
/// session containers made so far are removed before the error is returned.
pub async fn up<E: Engine>(
    engine: &E,
    decl: &Declaration,
    plan: &Plan,
    owner: &str,
    report: Report<'_>,
) -> Result<Launched, LaunchError> {
    let mut launched = Launched::default();
    if plan.sidecars.is_empty() {
        launched.env = resolve_env(plan, &launched.containers);
        return Ok(launched);
    }
    engine.ping().await?;
    let labels = BTreeMap::from([
        (LABEL_PROJECT.to_owned(), plan.project.clone()),
        (LABEL_ROLE.to_owned(), Role::Network.as_str().to_owned()),
    ]);
    futures_util::try_join!(remove_orphans(engine, &plan.project), async {
        Ok(engine.ensure_network(&plan.network, &labels).await?)
    })?;
    tracing::debug!("network and leftovers checked");
    let ensured = join_all(plan.sidecars.iter().map(|c| async move {
        let id = ensure(engine, decl, plan, c, owner, report).await?;
        // The workload's own network: the sidecars it reaches join it under the same names.
        if let Some(network) = &plan.workload_network
            && !c.aliases.is_empty()
            && let Err(e) = engine.connect(&id, network, &c.aliases).await
        {
            if c.lifecycle == Lifecycle::Session {
                let _ = engine.remove(&id).await;
            }
            return Err(e.into());
        }
        Ok::<_, LaunchError>(id)
    }))
    .await;
    let mut failure = None;
    for (c, result) in plan.sidecars.iter().zip(ensured) {
        match result {
            Ok(_) => {
                if c.lifecycle == Lifecycle::Session {
                    launched.session.push(c.name.clone());
                }
            }
            Err(e) => {
                report(&c.sidecar, Status::Failed { why: e.to_string() });
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        abandon(engine, plan, &launched.session).await;
        return Err(e);
    }
    tracing::debug!("sidecars in place");
    // All at once; the first failure ends the wait for the others.
    let readied = try_join_all(plan.sidecars.iter().map(|c| async move {
        report(
            &c.sidecar,
            Status::Waiting {
                summary: c.readiness.summary(),
            },
        );
        let r = wait_ready(engine, c).await;
        match &r {
            Ok((took, _)) => report(&c.sidecar, Status::Ready { took: *took }),
            Err(e) => report(&c.sidecar, Status::Failed { why: message(e) }),
        }
        r.map(|(_, container)| (c.sidecar.clone(), container))
    }))
    .await;
    match readied {
        Ok(ready) => launched.containers.extend(ready),
        Err(e) => {
            abandon(engine, plan, &launched.session).await;
            return Err(e);
        }
    }
    launched.env = resolve_env(plan, &launched.containers);
    Ok(launched)
}

fn message(e: &LaunchError) -> String {
    match e {
        LaunchError::Engine(e) => e.to_string(),
        LaunchError::Sidecar { message, .. } => message.clone(),
    }
}

/// Removes session containers (by name) and their secret files; errors are logged, not fatal.
pub async fn cleanup<E: Engine>(engine: &E, names: &[String]) {
    join_all(names.iter().map(|name| async move {
        if let Err(e) = engine.remove(name).await {
            tracing::warn!("removing {name}: {e}");
        }
    }))
    .await;
    forget_secrets(names);
}

/// A launch that failed: the session containers it made go, and the secret files written for
/// all of its session sidecars (some written before their container could be made).
async fn abandon<E: Engine>(engine: &E, plan: &Plan, made: &[String]) {
    cleanup(engine, made).await;
    forget_secrets(&session_names(plan));
}

/// Session containers of this project left by runs that were killed (their owner process is
/// gone) are removed.
async fn remove_orphans<E: Engine>(engine: &E, project: &str) -> Result<(), LaunchError> {
    let orphans: Vec<String> = engine
        .list(&[(LABEL_PROJECT, project)])
        .await?
        .into_iter()
        .filter(|c| {
            if lifecycle_of(&c.labels) == Some(Lifecycle::Session) {
                return c.labels.get(LABEL_OWNER).is_some_and(|o| !owner_alive(o));
            }
            Role::of(&c.labels) == Some(Role::Probe) && is_leftover_probe(c)
        })
        .map(|c| c.name)
        .collect();
    cleanup(engine, &orphans).await;
    Ok(())
}

/// A readiness probe helper that outlived the run that made it (killed while it waited).
pub(crate) fn is_leftover_probe(c: &Container) -> bool {
    match c.labels.get(LABEL_OWNER) {
        Some(owner) => !owner_alive(owner),
        None => !c.running(),
    }
}

/// The ID of the sidecar's image, pulled first as the policy says.
async fn image_of<E: Engine>(
    engine: &E,
    policy: PullPolicy,
    c: &ContainerPlan,
    report: Report<'_>,
) -> Result<String, LaunchError> {
    let pull = || async {
        let status = |percent| Status::Pulling {
            image: c.image.clone(),
            percent,
        };
        report(&c.sidecar, status(None));
        engine
            .pull(&c.image, &|p| report(&c.sidecar, status(Some(p))))
            .await
            .map_err(|e| sidecar_error(c, e))
    };
    match policy {
        PullPolicy::Always => pull().await?,
        PullPolicy::Missing => match engine.image_id(&c.image).await {
            Err(EngineError::NoImage { .. }) => pull().await?,
            found => return found.map_err(|e| sidecar_error(c, e)),
        },
        PullPolicy::Never => {}
    }
    engine
        .image_id(&c.image)
        .await
        .map_err(|e| sidecar_error(c, e))
}

fn sidecar_error(c: &ContainerPlan, e: EngineError) -> LaunchError {
    let message = match &e {
        // The engine's own trouble, with its hint (the setting that allows more time).
        EngineError::Slow { .. } => return LaunchError::Engine(e),
        EngineError::NoImage { image } => {
            format!("there is no image `{image}` on this engine (build it, or let tether pull it)")
        }
        EngineError::PullFailed { .. } => format!(
            "{e} (check the name, and for a registry that needs a login, `docker login` to it)"
        ),
        _ => e.to_string(),
    };
    LaunchError::Sidecar {
        sidecar: c.sidecar.clone(),
        message,
        logs: Vec::new(),
    }
}

/// Makes sure the sidecar's container exists, with this configuration, and is started.
/// Returns its id.
async fn ensure<E: Engine>(
    engine: &E,
    decl: &Declaration,
    plan: &Plan,
    c: &ContainerPlan,
    owner: &str,
    report: Report<'_>,
) -> Result<String, LaunchError> {
    let image_id = image_of(engine, plan.pull, c, report).await?;
    let Some(sidecar) = decl.sidecars.get(&c.sidecar) else {
        return Err(LaunchError::Sidecar {
            sidecar: c.sidecar.clone(),
            message: "is not in the declaration".into(),
            logs: Vec::new(),
        });
    };
    let hash = config_hash(&plan.project, sidecar, Some(&image_id));
    // Only secrets need to know whether the engine sees this host's files.
    let files_shared = c.secrets.is_empty() || engine.shares_files().await;
    let (mut spec, secrets) =
        spec_for(c, &hash, &decl.root, files_shared).map_err(|message| LaunchError::Sidecar {
            sidecar: c.sidecar.clone(),
            message,
            logs: Vec::new(),
        })?;
    if c.lifecycle == Lifecycle::Session {
        spec.labels.insert(LABEL_OWNER.into(), owner.into());
    }
    // `tether up` owns its session sidecars for good: a second `up` reuses them like shared ones.
    if c.lifecycle == Lifecycle::Session && owner != UP_OWNER {
        let id = engine
            .create(&spec)
            .await
            .map_err(|e| sidecar_error(c, e))?;
        start_or_remove(engine, c, &id, &secrets).await?;
        report(&c.sidecar, Status::Created { why: None });
        return Ok(id);
    }
    let mut why = None;
    // Another run may be doing the same at this moment: a taken name means it won, and its
    // container is inspected again.
    for _ in 0..5 {
        match engine.inspect(&c.name).await? {
            // `tether down` (or another run) is removing it: wait until it is gone, then make
            // a new one.
            Some(going) if going.removing() => {
                report(&c.sidecar, Status::Removing);
                wait_gone(engine, c).await?;
                why = Some("its old container was being removed".into());
            }
            Some(found) if found.labels.get(LABEL_CONFIG_HASH) == Some(&hash) => {
                // Copied secrets are copied again: a changed value reaches the container as
                // a rewritten file does through a bind mount.
                if !secrets.is_empty() {
                    engine
                        .upload(&found.id, SECRETS_DIR, &secrets)
                        .await
                        .map_err(|e| sidecar_error(c, e))?;
                }
                if found.running() {
                    report(&c.sidecar, Status::Reused);
                    return Ok(found.id);
                }
                match engine.start(&found.id).await {
                    Ok(()) => {
                        report(&c.sidecar, Status::Started);
                        return Ok(found.id);
                    }
                    // Removed, or marked for removal, between the look and the start: look
                    // again (and wait it out).
                    Err(EngineError::NotFound { .. } | EngineError::Conflict { .. })
                        if engine
                            .inspect(&c.name)
                            .await?
                            .is_none_or(|again| again.removing()) =>
                    {
                        why = Some("its old container was being removed".into());
                    }
                    Err(e) => return Err(sidecar_error(c, e)),
                }
            }
            Some(other)
                if other.labels.get(LABEL_PROJECT) != Some(&plan.project)
                    || other.labels.get(tether_plan::LABEL_SIDECAR) != Some(&c.sidecar) =>
            {
                // Not one of ours: never removed behind its owner's back.
                return Err(LaunchError::Sidecar {
                    sidecar: c.sidecar.clone(),
                    message: format!(
                        "the name {} is taken by a container tether did not make for this project; remove or rename it",
                        c.name
                    ),
                    logs: Vec::new(),
                });
            }
            Some(stale) => {
                why = Some(if stale.image != image_id {
                    "its image changed".to_owned()
                } else {
                    "its configuration changed".to_owned()
                });
                engine.remove(&stale.id).await?;
            }
            None => match engine.create(&spec).await {
                Ok(id) => {
                    start_or_remove(engine, c, &id, &secrets).await?;
                    report(&c.sidecar, Status::Created { why });
                    return Ok(id);
                }
                Err(EngineError::NameTaken { .. }) => continue,
                Err(e) => return Err(sidecar_error(c, e)),
            },
        }
    }
    Err(LaunchError::Sidecar {
        sidecar: c.sidecar.clone(),
        message: format!("the container {} keeps changing under another run", c.name),
        logs: Vec::new(),
    })
}

/// Waits until the sidecar's container is no longer being removed: gone, or (a removal that
/// failed) left as it is, for the caller to look at again.
async fn wait_gone<E: Engine>(engine: &E, c: &ContainerPlan) -> Result<(), LaunchError> {
    let limit = Duration::from_secs(120);
    let deadline = tether_probe::Deadline::new(limit, Duration::from_millis(250));
    loop {
        if !engine.inspect(&c.name).await?.is_some_and(|c| c.removing()) {
            return Ok(());
        }
        if !deadline.next().await {
            return Err(LaunchError::Sidecar {
                sidecar: c.sidecar.clone(),
                message: format!(
                    "its old container {} is still being removed after {}",
                    c.name,
                    tether_probe::show(limit)
                ),
                logs: Vec::new(),
            });
        }
    }
}

/// Starts a container just created, its secrets copied in first when the engine cannot see
/// this host's files; one that will not start is removed, not left behind.
async fn start_or_remove<E: Engine>(
    engine: &E,
    c: &ContainerPlan,
    id: &str,
    secrets: &[FileCopy],
) -> Result<(), LaunchError> {
    let started = async {
        if !secrets.is_empty() {
            engine.upload(id, SECRETS_DIR, secrets).await?;
        }
        engine.start(id).await
    };
    if let Err(e) = started.await {
        let _ = engine.remove(id).await;
        return Err(sidecar_error(c, e));
    }
    Ok(())
}

/// The engine request for a planned container, and the secrets to copy into it.
///
/// Secrets are read on the host now. With an engine on this host they are written to files on
/// a tmpfs (/dev/shm) and bound read-only under /run/secrets; otherwise they are returned, to
/// be copied into the container's /run/secrets before it starts. Their values go nowhere else.
fn spec_for(
    c: &ContainerPlan,
    hash: &str,
    root: &str,
    files_shared: bool,
) -> Result<(ContainerPlan, Vec<FileCopy>), String> {
    let mut labels = c.labels.clone();
    labels.insert(LABEL_CONFIG_HASH.into(), hash.into());
    let mut mounts = c.mounts.clone();
    let mut copies = Vec::new();
    if !c.secrets.is_empty() {
        let dir = if files_shared {
            Some(secrets_dir(&c.name)?)
        } else {
            // Copied before the container starts, when no tmpfs is mounted yet: the files are
            // in the container's own layer, on the engine's machine, and go with the container.
            mounts.retain(|m| !matches!(m, MountPlan::Tmpfs { target } if target == SECRETS_DIR));
            None
        };
        for s in &c.secrets {
            let value = s
                .from
                .read(root)
                .map_err(|e| format!("secret {}: {e}", s.name))?;
            let Some(dir) = &dir else {
                copies.push((s.name.clone(), value.into_bytes()));
                continue;
            };
            let file = dir.join(&s.name);
            write_private(&file, value.as_bytes()).map_err(|e| {
                format!("secret {}: cannot write it for the container: {e}", s.name)
            })?;
            mounts.push(MountPlan::Bind {
                source: file.display().to_string(),
                target: format!("{SECRETS_DIR}/{}", s.name),
                read_only: true,
            });
        }
    }
    Ok((
        ContainerPlan {
            labels,
            mounts,
            ..c.clone()
        },
        copies,
    ))
}

/// `<base>/<container>`, made if missing, and refused unless it and the base are real
/// folders owned by this user and closed to everyone else (another user could otherwise have
/// made them first, to read or redirect what is written there).
fn secrets_dir(container: &str) -> Result<std::path::PathBuf, String> {
    let base = private_base_path();
    let dir = base.join(container);
    for d in [&base, &dir] {
        private_dir(d).map_err(|e| format!("refusing to keep secrets in {}: {e}", d.display()))?;
    }
    Ok(dir)
}

/// The container names of the plan's session sidecars.
pub fn session_names(plan: &Plan) -> Vec<String> {
    plan.sidecars
        .iter()
        .filter(|c| c.lifecycle == Lifecycle::Session)
        .map(|c| c.name.clone())
        .collect()
}

/// Removes the secret files of these containers (session sidecars, once removed).
pub fn forget_secrets(containers: &[String]) {
    for c in containers {
        let _ = std::fs::remove_dir_all(private_base_path().join(c));
    }
}

/// Writes in place (a running container bound to the file sees the new value), never through
/// a symbolic link. The file is readable by any user inside the container (a sidecar that drops
/// to its own user must read it); on the host, the 0700 folder keeps everyone else out.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    f.write_all(bytes)
}

/// One readiness check's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    Ready,
    NotYet,
    /// It will not become ready (an unhealthy healthcheck, a healthcheck that does not exist).
    Failed(String),
}

/// One attempt of the sidecar's readiness check against a running container.
pub async fn probe_once<E: Engine>(
    engine: &E,
    c: &ContainerPlan,
    now: &Container,
    pattern: Option<&regex_lite::Regex>,
) -> Result<Probe, EngineError> {
    let r = &c.readiness;
    let port = r.port.unwrap_or(0);
    let yes = |b: bool| if b { Probe::Ready } else { Probe::NotYet };
    Ok(match r.mode {
        ReadinessMode::Tcp => yes(engine.reachable(now, &c.network, port, None).await?),
        ReadinessMode::Http => {
            let path = r.path.as_deref().unwrap_or("/");
            yes(engine.reachable(now, &c.network, port, Some(path)).await?)
        }
        ReadinessMode::Exec => {
            let command = r.command.clone().unwrap_or_default();
            yes(engine.exec(&now.id, &command).await?.0 == 0)
        }
        ReadinessMode::Healthcheck => match now.health.as_deref() {
            Some("healthy") => Probe::Ready,
            Some("unhealthy") => Probe::Failed("its healthcheck reports unhealthy".into()),
            Some(_) => Probe::NotYet,
            None => Probe::Failed(
                "has healthcheck readiness but its image declares no HEALTHCHECK; give `readiness.command`".into(),
            ),
        },
        ReadinessMode::Log => {
            let lines = engine.logs(&now.id, 0).await?;
            yes(pattern.is_some_and(|p| lines.iter().any(|l| p.is_match(l))))
        }
        ReadinessMode::None => Probe::Ready,
    })
}

/// Probes until the sidecar is ready, it exits, or its deadline passes.
async fn wait_ready<E: Engine>(
    engine: &E,
    c: &ContainerPlan,
) -> Result<(Duration, Container), LaunchError> {
    let r = &c.readiness;
    let limit = r.timeout.0 + r.start_period.map(|d| d.0).unwrap_or_default();
    let pattern = match &r.pattern {
        Some(p) => Some(regex_lite::Regex::new(p).map_err(|e| LaunchError::Sidecar {
            sidecar: c.sidecar.clone(),
            message: format!("readiness pattern: {e}"),
            logs: Vec::new(),
        })?),
        None => None,
    };
    let fail = |message: String, logs: Vec<String>| LaunchError::Sidecar {
        sidecar: c.sidecar.clone(),
        message,
        logs,
    };
    let deadline = tether_probe::Deadline::new(limit, r.interval.0);
    // Log readiness follows the output from the container's start: each line is matched once,
    // as it arrives, however slow the engine is to hand it over (reading the whole log again
    // each time, against a time limit, can miss a line that is there on a slow engine).
    let mut follow: Option<(tether_engine::Output, Lines)> = None;
    loop {
        let Some(now) = engine.inspect(&c.name).await? else {
            return Err(fail(
                "its container was removed while starting".into(),
                Vec::new(),
            ));
        };
        if !now.running() {
            let logs = engine.logs(&now.id, 20).await.unwrap_or_default();
            let code = now
                .exit_code
                .map(|c| format!(" with code {c}"))
                .unwrap_or_default();
            return Err(fail(format!("exited{code} before it was ready"), logs));
        }
        // One attempt may not outlast the deadline (a check that hangs is a check that has not
        // passed); an engine error may just mean the container stopped meanwhile: look again.
        // (A probe from inside a namespace is a helper container: seconds on a slow engine.)
        let attempt = deadline.attempt_limit(r.interval.0.max(Duration::from_secs(5)));
        let ready = if let (ReadinessMode::Log, Some(pattern)) = (r.mode, &pattern) {
            let (output, lines) = follow
                .get_or_insert_with(|| (engine.output(&now.id, true, None), Lines::default()));
            match tokio::time::timeout(attempt, matched(output, lines, pattern)).await {
                Ok(Ok(true)) => true,
                // Not yet (what was read stays read), or the output ended: the container stopped,
                // which the next look sees, or the engine dropped it: followed again.
                Err(_) => false,
                Ok(Ok(false)) => {
                    follow = None;
                    false
                }
                // An engine error while the container runs is the engine's: say it (a slow
                // engine is given the rest of the readiness timeout instead).
                Ok(Err(e)) => {
                    follow = None;
                    if !matches!(e, EngineError::Slow { .. })
                        && engine.inspect(&c.name).await?.is_some_and(|c| c.running())
                    {
                        return Err(e.into());
                    }
                    false
                }
            }
        } else {
            match tokio::time::timeout(attempt, probe_once(engine, c, &now, pattern.as_ref())).await
            {
                Ok(Ok(Probe::Ready)) => true,
                Ok(Ok(Probe::NotYet)) | Err(_) => false,
                Ok(Ok(Probe::Failed(why))) => {
                    let logs = engine.logs(&now.id, 20).await.unwrap_or_default();
                    return Err(fail(why, logs));
                }
                Ok(Err(e)) => match engine.inspect(&c.name).await? {
                    Some(again) if again.running() => return Err(e.into()),
                    _ => continue,
                },
            }
        };
        if ready {
            return Ok((deadline.elapsed(), now));
        }
        if !deadline.next().await {
            let logs = engine.logs(&now.id, 20).await.unwrap_or_default();
            return Err(fail(
                format!("not ready within {} ({})", r.timeout, r.summary()),
                logs,
            ));
        }
    }
}

/// Reads the output until a line matches (`true`) or it ends (`false`).
async fn matched(
    output: &mut tether_engine::Output,
    lines: &mut Lines,
    pattern: &regex_lite::Regex,
) -> Result<bool, EngineError> {
    use futures_util::StreamExt;
    while let Some(chunk) = output.next().await {
        if lines
            .feed(chunk?.bytes())
            .iter()
            .any(|l| pattern.is_match(l))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The workload's environment with each published port looked up.
fn resolve_env(plan: &Plan, containers: &BTreeMap<String, Container>) -> Vec<(String, String)> {
    let published = |sidecar: &str, port: u16| {
        containers
            .get(sidecar)
            .and_then(|c| c.published.get(&port).copied())
    };
    plan.env
        .iter()
        .filter_map(|(k, v)| v.resolve(&published).map(|v| (k.clone(), v)))
        .collect()
}
