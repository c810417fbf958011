//! The declaration as a Compose file (the Compose Specification, which docker-compose 1.27+ and
//! Compose v2 read): one service per sidecar and one for the workload, on the project network,
//! with readiness as healthchecks where the image can run them.

use std::path::Path;

use serde_json::{Map, Value, json};
use tether_plan::{ContainerPlan, MountPlan, Plan, ReadinessMode, Role};
use tether_spec::model::{Declaration, Gpus, NetworkMode, SecretSource};

use crate::RenderError;

/// The name of the workload's service.
pub const WORKLOAD_SERVICE: &str = "workload";
/// Where a bundle's declaration is mounted in the workload service.
pub const INIT_DECLARATION: &str = "/etc/tether/tether.yaml";
/// Where the workload's MCP server list is expected, beside the Compose file.
pub const MCP_FILE: &str = ".tether/mcp.json";
/// Where secrets from environment variables are expected as files, beside the Compose file.
pub const SECRET_FILES: &str = ".tether/secrets";

/// Renders Compose YAML. `base` is the folder the file will live in: host paths under it are
/// written relative to it.
pub fn render(decl: &Declaration, base: &Path) -> Result<String, RenderError> {
    let workload = decl.workload.as_ref();
    let image = workload.and_then(|w| w.image.clone());
    if decl.init.is_some() && image.is_none() {
        return Err(RenderError::Field {
            owner: "init".into(),
            field: "workload.image".into(),
            message: "a bundle runs as the workload's container under `tether init`: declare the image that holds tether and the daemons".into(),
        });
    }
    let (_, plan) = crate::workload_plan(decl, "compose")?;

    let mut notes: Vec<String> = Vec::new();
    let mut services = Map::new();
    let mut volumes = Map::new();
    let mut secrets = Map::new();
    let mut depends = Map::new();
    for c in &plan.sidecars {
        let (service, condition) =
            sidecar(decl, &plan, c, base, &mut notes, &mut volumes, &mut secrets);
        services.insert(c.sidecar.clone(), service);
        depends.insert(c.sidecar.clone(), json!({ "condition": condition }));
    }
    if let Some(image) = image {
        let w = workload.expect("an image implies a workload");
        let mut s = Map::new();
        s.insert("image".into(), image.into());
        if decl.init.is_some() {
            s.insert(
                "entrypoint".into(),
                json!(["tether", "init", "-f", INIT_DECLARATION]),
            );
            s.insert(
                "volumes".into(),
                json!([format!(
                    "{}:{INIT_DECLARATION}:ro",
                    host_path(&declaration_path(decl), &decl.root, base)
                )]),
            );
            notes.push(format!(
                "{WORKLOAD_SERVICE}: runs the `init` bundle under `tether init` (the image must contain tether); the declaration is mounted at {INIT_DECLARATION}"
            ));
        } else if let Some(cmd) = &w.command {
            s.insert("command".into(), json!(cmd));
        }
        let mut env = Map::new();
        for (k, v) in &plan.env {
            if let Some(v) = v.resolve(&|_, _| None) {
                env.insert(k.clone(), v.into());
            }
        }
        if !env.is_empty() {
            s.insert("environment".into(), Value::Object(env));
        }
        let mut mounts: Vec<Value> = s
            .get("volumes")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        mounts.extend(plan.volumes.iter().map(|x| Value::from(x.clone())));
        if let Some(mcp) = &plan.mcp {
            let file = format!("./{MCP_FILE}");
            mounts.push(format!("{file}:{}:ro", mcp.target).into());
            let text = serde_json::to_string(&mcp.render(&|_, _| None)).unwrap_or_default();
            notes.push(format!(
                "{WORKLOAD_SERVICE}: the MCP server list is mounted from {file}; write it before starting: {text}"
            ));
        }
        if !mounts.is_empty() {
            s.insert("volumes".into(), Value::Array(mounts));
        }
        s.insert(
            "labels".into(),
            json!({
                tether_plan::LABEL_PROJECT: decl.project,
                tether_plan::LABEL_ROLE: Role::Workload.as_str(),
            }),
        );
        if !depends.is_empty() {
            s.insert("depends_on".into(), Value::Object(depends));
        }
        match (w.network_mode, w.sidecar.as_deref()) {
            (NetworkMode::SharedNamespace, Some(sidecar)) => {
                s.insert("network_mode".into(), format!("service:{sidecar}").into());
            }
            _ => {
                s.insert("networks".into(), json!(["tether"]));
            }
        }
        services.insert(WORKLOAD_SERVICE.into(), Value::Object(s));
    }

    let mut doc = Map::new();
    doc.insert("services".into(), Value::Object(services));
    let mut networks = Map::new();
    networks.insert(
        "tether".into(),
        json!({ "name": plan.network, "labels": { tether_plan::LABEL_PROJECT: decl.project } }),
    );
    // Extra networks are joined, not made: they exist already, as with `tether run`.
    for c in &plan.sidecars {
        for n in &c.extra_networks {
            networks.insert(n.clone(), json!({ "external": true }));
        }
    }
    doc.insert("networks".into(), Value::Object(networks));
    if !volumes.is_empty() {
        doc.insert("volumes".into(), Value::Object(volumes));
    }
    if !secrets.is_empty() {
        doc.insert("secrets".into(), Value::Object(secrets));
    }
    // Compose would read `$NAME` in any value as its own variable: tether has none, so each `$`
    // is written as `$$` and reaches the container as written in the declaration.
    let doc = escape_dollars(Value::Object(doc));
    let source = host_path(&declaration_path(decl), &decl.root, base);
    Ok(header(decl, &source, &plan, &notes) + &tether_spec::emit::to_yaml(&doc))
}

fn escape_dollars(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace('$', "$$")),
        Value::Array(a) => Value::Array(a.into_iter().map(escape_dollars).collect()),
        Value::Object(m) => {
            Value::Object(m.into_iter().map(|(k, v)| (k, escape_dollars(v))).collect())
        }
        other => other,
    }
}

fn header(decl: &Declaration, source: &str, plan: &Plan, notes: &[String]) -> String {
    let mut out = format!(
        "# Rendered by tether from {source} (project {}); edit that file, not this one.\n\
         # Run it with: docker compose -p {} up   (or docker-compose)\n",
        decl.project, decl.project
    );
    if plan
        .sidecars
        .iter()
        .any(|c| c.lifecycle == tether_spec::model::Lifecycle::Session)
    {
        out.push_str(
            "# Compose has no session sidecars: every service lives as long as the project.\n",
        );
    }
    for n in notes {
        out.push_str("#\n");
        for line in wrap(n, 94) {
            out.push_str("# ");
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let last = lines.last_mut().expect("one line at least");
        if !last.is_empty() && last.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

/// The main declaration file: it lives in the project root.
fn declaration_path(decl: &Declaration) -> String {
    let name = Path::new(&decl.file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| tether_spec::FILE_NAME.to_owned());
    Path::new(&decl.root).join(name).display().to_string()
}

/// A host path as the Compose file should say it: relative to `base` when under it.
fn host_path(path: &str, root: &str, base: &Path) -> String {
    let abs = if Path::new(path).is_absolute() {
        Path::new(path).to_path_buf()
    } else {
        Path::new(root).join(path)
    };
    match abs.strip_prefix(base) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".into(),
        Ok(rel) => format!("./{}", rel.display()),
        Err(_) => abs.display().to_string(),
    }
}

/// One sidecar's service, and the condition the workload waits for.
fn sidecar(
    decl: &Declaration,
    plan: &Plan,
    c: &ContainerPlan,
    base: &Path,
    notes: &mut Vec<String>,
    volumes: &mut Map<String, Value>,
    secrets: &mut Map<String, Value>,
) -> (Value, &'static str) {
    let mut s = Map::new();
    s.insert("image".into(), c.image.clone().into());
    if let Some(e) = &c.entrypoint {
        s.insert("entrypoint".into(), json!(e));
    }
    if let Some(cmd) = &c.command {
        s.insert("command".into(), json!(cmd));
    }
    if !c.env.is_empty() {
        let env: Map<String, Value> = c
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), Value::from(v)))
            .collect();
        s.insert("environment".into(), Value::Object(env));
    }
    // Labels, without the per-run ones (session, config hash): Compose tracks changes itself.
    let labels: Map<String, Value> = c
        .labels
        .iter()
        .filter(|(k, _)| {
            k.as_str() != tether_plan::LABEL_SESSION && k.as_str() != tether_plan::LABEL_CONFIG_HASH
        })
        .map(|(k, v)| (k.clone(), Value::from(v.clone())))
        .collect();
    s.insert("labels".into(), Value::Object(labels));

    let mut networks = Map::new();
    networks.insert(
        "tether".into(),
        if c.aliases.is_empty() {
            Value::Null
        } else {
            json!({ "aliases": c.aliases })
        },
    );
    for n in &c.extra_networks {
        networks.insert(n.clone(), Value::Null);
    }
    s.insert("networks".into(), Value::Object(networks));

    let mut mounts: Vec<Value> = Vec::new();
    for m in &c.mounts {
        match m {
            MountPlan::Bind {
                source,
                target,
                read_only,
            } => mounts.push(
                format!(
                    "{}:{target}{}",
                    host_path(source, &decl.root, base),
                    if *read_only { ":ro" } else { "" }
                )
                .into(),
            ),
            MountPlan::Volume {
                name,
                target,
                read_only,
            } => {
                volumes.insert(name.clone(), json!({ "name": name }));
                mounts
                    .push(format!("{name}:{target}{}", if *read_only { ":ro" } else { "" }).into());
            }
            // Compose mounts secrets under /run/secrets itself.
            MountPlan::Tmpfs { .. } => {}
        }
    }
    if !mounts.is_empty() {
        s.insert("volumes".into(), Value::Array(mounts));
    }

    if !c.secrets.is_empty() {
        let mut list = Vec::new();
        for secret in &c.secrets {
            let key = crate::secret_key(plan, c, &secret.name);
            list.push(json!({ "source": key, "target": secret.name }));
            if secrets.contains_key(&key) {
                // Read from the same source as one before it: the same value, declared once.
                continue;
            }
            let file = match &secret.from {
                SecretSource::File(path) => host_path(path, &decl.root, base),
                SecretSource::Env(var) => {
                    let file = format!("./{SECRET_FILES}/{key}");
                    notes.push(format!(
                        "{}: secret {} comes from ${var} on the host; write it to {file} before starting, e.g. printf %s \"${var}\" > {file} (tether never writes secret values into files it renders)",
                        c.sidecar, secret.name
                    ));
                    file
                }
            };
            secrets.insert(key, json!({ "file": file }));
        }
        s.insert("secrets".into(), Value::Array(list));
    }

    if let Some(m) = c.memory {
        s.insert("mem_limit".into(), m.into());
    }
    if let Some(n) = c.nano_cpus {
        s.insert("cpus".into(), json!(n as f64 / 1e9));
    }
    if let Some(g) = &c.gpus {
        let mut device = Map::new();
        device.insert("capabilities".into(), json!(["gpu"]));
        match g {
            Gpus::All => {
                device.insert("count".into(), "all".into());
            }
            Gpus::Count(n) => {
                device.insert("count".into(), (*n).into());
            }
            Gpus::Devices(ids) => {
                device.insert("device_ids".into(), json!(ids));
            }
        }
        s.insert(
            "deploy".into(),
            json!({ "resources": { "reservations": { "devices": [Value::Object(device)] } } }),
        );
    }
    // Several containers of one service: each answers to the service's names on the network
    // (Compose names them itself, and no host port is published, so none collide).
    let replicas = decl.sidecars[&c.sidecar].replicas;
    if replicas > 1 {
        match s.get_mut("deploy") {
            Some(Value::Object(deploy)) => {
                deploy.insert("replicas".into(), replicas.into());
            }
            _ => {
                s.insert("deploy".into(), json!({ "replicas": replicas }));
            }
        }
    }

    // Readiness: a healthcheck when the image itself can run the check.
    let r = &c.readiness;
    let healthcheck = |command: &[String]| {
        let mut hc = Map::new();
        hc.insert(
            "test".into(),
            json!(
                std::iter::once("CMD".to_owned())
                    .chain(command.iter().cloned())
                    .collect::<Vec<_>>()
            ),
        );
        hc.insert("interval".into(), r.interval.to_string().into());
        hc.insert(
            "timeout".into(),
            tether_spec::model::Duration(r.interval.0.max(std::time::Duration::from_secs(1)))
                .to_string()
                .into(),
        );
        hc.insert("retries".into(), 3.into());
        hc.insert(
            "start_period".into(),
            tether_spec::model::Duration(
                r.timeout.0 + r.start_period.map(|d| d.0).unwrap_or_default(),
            )
            .to_string()
            .into(),
        );
        Value::Object(hc)
    };
    let condition = match (r.mode, &r.command) {
        (ReadinessMode::Exec | ReadinessMode::Healthcheck, Some(cmd)) => {
            s.insert("healthcheck".into(), healthcheck(cmd));
            "service_healthy"
        }
        (ReadinessMode::Healthcheck, None) => "service_healthy",
        (ReadinessMode::None, _) => "service_started",
        (
            mode @ (ReadinessMode::Tcp
            | ReadinessMode::Http
            | ReadinessMode::Exec
            | ReadinessMode::Log),
            _,
        ) => {
            notes.push(format!(
                "{}: readiness `{}` ({}) cannot be checked by Compose without a tool inside the image, so the workload waits only for it to start; give it `readiness.mode: exec` with a command the image has, to wait for it properly",
                c.sidecar,
                mode,
                r.summary()
            ));
            "service_started"
        }
    };
    (Value::Object(s), condition)
}
