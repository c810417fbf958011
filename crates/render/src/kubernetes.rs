//! The declaration as Kubernetes manifests: the workload's Deployment with session sidecars as
//! native sidecars (init containers that keep running, with a startup probe from their
//! readiness, so the workload starts only once they are ready), shared sidecars as their own
//! Deployment (of `replicas` Pods, spread over nodes, with a disruption budget when several) and
//! Service, secrets as a Secret mounted as files.

use std::path::Path;

use serde_json::{Map, Value, json};
use tether_plan::{
    ContainerPlan, LABEL_PROJECT, LABEL_ROLE, LABEL_SIDECAR, Plan, ReadinessMode, ReadinessPlan,
    Role,
};
use tether_spec::model::{Declaration, Gpus, Lifecycle, NetworkMode, SecretSource};

use crate::{Loss, RenderError};

/// Where a bundle's declaration is mounted.
pub const INIT_DECLARATION: &str = "/etc/tether/tether.yaml";

/// Reads a secret's value on this host.
pub type ReadSecret<'a> = &'a dyn Fn(&SecretSource) -> Result<String, String>;

pub struct Options<'a> {
    /// Losses become warnings instead of errors.
    pub allow_lossy: bool,
    /// Reads a secret's value on this host; `None`: placeholders (empty values) only.
    pub secret_value: Option<ReadSecret<'a>>,
    /// The declaration's text, carried into a ConfigMap for `tether init` bundles.
    pub declaration_text: Option<&'a str>,
    /// An image whose entrypoint is tether: the workload's Pod then waits, with `tether wait`
    /// in an init container, until each shared sidecar's Service answers.
    pub wait_image: Option<&'a str>,
}

pub struct Rendered {
    pub text: String,
    /// What could not be expressed, when `allow_lossy` let it pass.
    pub warnings: Vec<Loss>,
}

pub fn render(decl: &Declaration, options: &Options<'_>) -> Result<Rendered, RenderError> {
    let workload = decl.workload.as_ref();
    let (image, plan) = crate::workload_plan(decl, "k8s")?;
    let mut losses = Vec::new();
    let project = decl.project.clone();
    let has_session = plan
        .sidecars
        .iter()
        .any(|c| c.lifecycle == Lifecycle::Session);
    if image.is_none() && (has_session || decl.init.is_some()) {
        return Err(RenderError::Field {
            owner: if decl.init.is_some() {
                "init".into()
            } else {
                "sidecars".into()
            },
            field: "workload.image".into(),
            message:
                "session sidecars and `init` bundles run in the workload's Pod: declare its image"
                    .into(),
        });
    }

    let mut docs: Vec<Value> = Vec::new();
    let mut secret_data = Map::new();
    for c in &plan.sidecars {
        for s in &c.secrets {
            let key = crate::secret_key(&plan, c, &s.name);
            if secret_data.contains_key(&key) {
                // Read from the same source as one before it: the same value, kept once.
                continue;
            }
            let value = match options.secret_value {
                Some(read) => read(&s.from).map_err(|e| RenderError::Field {
                    owner: format!("sidecars.{}", c.sidecar),
                    field: format!("secrets.{}", s.name),
                    message: e,
                })?,
                None => String::new(),
            };
            secret_data.insert(key, value.into());
        }
    }
    let secret_name = format!("{project}-secrets");
    if !secret_data.is_empty() {
        let mut meta = metadata(&secret_name, &project, None);
        if options.secret_value.is_none() {
            meta["annotations"] = json!({
                "tether.dev/placeholder": "the values are empty: fill them in (kubectl create secret … --dry-run=client -o yaml | kubectl apply -f -), or render with --include-secret-values"
            });
        }
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "Opaque",
            "stringData": secret_data,
        }));
    }

    // Shared sidecars: a Deployment and a Service each (one Service per name it answers to).
    for c in plan
        .sidecars
        .iter()
        .filter(|c| c.lifecycle == Lifecycle::Shared)
    {
        let decl_s = &decl.sidecars[&c.sidecar];
        let owner = format!("sidecars.{}", c.sidecar);
        let mut container = container(c, &owner, &mut losses);
        if let Some(p) = probe(&c.readiness, &owner, &mut losses) {
            // With a health endpoint of its own, readiness is the gate at start and the
            // endpoint says whether it serves afterwards.
            let kind = if decl_s.health.is_some() {
                "startupProbe"
            } else {
                "readinessProbe"
            };
            container.insert(kind.into(), p);
        }
        health_probes(decl_s.health.as_ref(), &mut container);
        let mut volumes = Vec::new();
        secret_volume(&plan, c, &secret_name, &mut container, &mut volumes);
        if matches!(
            decl_s.interface,
            tether_spec::model::Interface::Volume { .. }
        ) {
            losses.push(Loss {
                owner: owner.clone(),
                field: "interface.volume".into(),
                message: "a shared sidecar runs in its own Pod, so its volume cannot be mounted in the workload's; it becomes an emptyDir of its own".into(),
            });
        }
        volume_mounts(c, &owner, &mut container, &mut volumes, &mut losses);
        let selector = json!({ LABEL_PROJECT: project, LABEL_SIDECAR: c.sidecar });
        let mut pod_spec = json!({ "containers": [Value::Object(container)] });
        if !volumes.is_empty() {
            pod_spec["volumes"] = Value::Array(volumes);
        }
        let replicated = decl_s.replicas > 1;
        if replicated {
            // Replicas are there to outlive a node: spread them over nodes where the cluster
            // can (a preference, so that a one-node cluster still runs them all).
            pod_spec["topologySpreadConstraints"] = json!([{
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": { "matchLabels": selector },
            }]);
        }
        let name = format!("{project}-{}", c.sidecar);
        docs.push(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(&name, &project, Some(&c.sidecar)),
            "spec": {
                "replicas": decl_s.replicas,
                "selector": { "matchLabels": selector },
                "template": {
                    "metadata": { "labels": pod_labels(&project, Some(&c.sidecar)) },
                    "spec": pod_spec,
                }
            }
        }));
        if let Some(port) = decl_s.port() {
            for alias in &c.aliases {
                if !alias.starts_with(|ch: char| ch.is_ascii_lowercase()) {
                    losses.push(Loss {
                        owner: owner.clone(),
                        field: "aliases".into(),
                        message: format!("`{alias}` cannot name a Service, whose names start with a letter; it is left out"),
                    });
                    continue;
                }
                docs.push(json!({
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": metadata(alias, &project, Some(&c.sidecar)),
                    "spec": {
                        "selector": selector,
                        "ports": [{ "name": "main", "port": port, "targetPort": port, "protocol": "TCP" }],
                    }
                }));
            }
        }
        if replicated {
            // A node drain or an upgrade takes one replica away at a time.
            docs.push(json!({
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": metadata(&name, &project, Some(&c.sidecar)),
                "spec": { "maxUnavailable": 1, "selector": { "matchLabels": selector } },
            }));
        }
    }

    if let Some(image) = &image {
        let w = workload.expect("an image implies a workload");
        docs.extend(workload_objects(
            decl,
            &plan,
            w,
            image,
            &secret_name,
            options,
            &mut losses,
        )?);
    }

    if !losses.is_empty() && !options.allow_lossy {
        return Err(RenderError::Lossy(losses));
    }
    let mut text = format!(
        "# Rendered by tether from {} (project {}); edit that file, not this one.\n\
         # Apply with: kubectl apply -f <this file>\n",
        Path::new(&decl.file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        project
    );
    for l in &losses {
        text.push_str(&format!(
            "# not kept: {}.{}: {}\n",
            l.owner, l.field, l.message
        ));
    }
    // Shared sidecars run in Pods of their own, which the workload's does not wait for unless
    // told how.
    let unwaited: Vec<&str> = plan
        .sidecars
        .iter()
        .filter(|c| c.lifecycle == Lifecycle::Shared && !c.aliases.is_empty())
        .map(|c| c.sidecar.as_str())
        .collect();
    if workload.is_some() && image.is_some() && options.wait_image.is_none() && !unwaited.is_empty()
    {
        text.push_str(&format!(
            "# note: the workload does not wait for {}: --wait-image IMAGE (an image whose entrypoint is tether) adds init containers that do\n",
            unwaited.join(", ")
        ));
    }
    for d in &docs {
        text.push_str("---\n");
        text.push_str(&tether_spec::emit::to_yaml(d));
    }
    Ok(Rendered {
        text,
        warnings: losses,
    })
}

/// Kubernetes expands `$(NAME)` in commands and arguments; tether does not, so `$(` is
/// written as `$$(` and reaches the container as declared.
fn kube_words(words: &[String]) -> Vec<String> {
    words.iter().map(|w| w.replace("$(", "$$(")).collect()
}

/// A Docker volume name as a Pod volume name: an RFC 1123 label.
fn volume_name(name: &str) -> String {
    let mut n: String = tether_spec::values::sanitize_label(name);
    if n.is_empty() {
        n = "volume".into();
    }
    n
}

fn metadata(name: &str, project: &str, sidecar: Option<&str>) -> Value {
    json!({ "name": name, "labels": pod_labels(project, sidecar) })
}

fn pod_labels(project: &str, sidecar: Option<&str>) -> Value {
    let mut l = Map::new();
    l.insert("app.kubernetes.io/part-of".into(), project.into());
    l.insert("app.kubernetes.io/managed-by".into(), "tether".into());
    l.insert(LABEL_PROJECT.into(), project.into());
    match sidecar {
        Some(s) => {
            l.insert("app.kubernetes.io/name".into(), s.into());
            l.insert(LABEL_SIDECAR.into(), s.into());
        }
        None => {
            l.insert("app.kubernetes.io/name".into(), project.into());
            l.insert(LABEL_ROLE.into(), Role::Workload.as_str().into());
        }
    }
    Value::Object(l)
}

/// Seconds, at least 1 (the API's smallest period).
fn secs(d: std::time::Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// The readiness check as a probe, or `None` for `none`; a loss when it has no equivalent.
fn probe(r: &ReadinessPlan, owner: &str, losses: &mut Vec<Loss>) -> Option<Value> {
    let port = r.port.unwrap_or(0);
    let handler = match (r.mode, &r.command) {
        (ReadinessMode::Tcp, _) => json!({ "tcpSocket": { "port": port } }),
        (ReadinessMode::Http, _) => {
            json!({ "httpGet": { "path": r.path.as_deref().unwrap_or("/"), "port": port } })
        }
        (ReadinessMode::Exec | ReadinessMode::Healthcheck, Some(cmd)) => {
            json!({ "exec": { "command": cmd } })
        }
        (ReadinessMode::Healthcheck, None) => {
            losses.push(Loss {
                owner: owner.into(),
                field: "readiness".into(),
                message: "Kubernetes ignores an image's HEALTHCHECK: give `readiness.command`"
                    .into(),
            });
            return None;
        }
        (ReadinessMode::Log, _) => {
            losses.push(Loss {
                owner: owner.into(),
                field: "readiness".into(),
                message:
                    "a probe cannot watch a container's output: use tcp, http or exec readiness"
                        .into(),
            });
            return None;
        }
        (ReadinessMode::None, _) | (ReadinessMode::Exec, None) => return None,
    };
    let period = secs(r.interval.0);
    let total = r.timeout.0 + r.start_period.map(|d| d.0).unwrap_or_default();
    let mut p = handler;
    p["periodSeconds"] = period.into();
    p["timeoutSeconds"] = secs(r.interval.0).into();
    p["failureThreshold"] = ((total.as_secs_f64() / period as f64).ceil().max(1.0) as u64).into();
    Some(p)
}

/// A sidecar's own health endpoint, checked while it runs: `livenessProbe` on its `live` path
/// (the kubelet restarts it after 3 failures in a row), `readinessProbe` on its `ready` path.
/// Periods as for an `init` bundle's health endpoint.
fn health_probes(
    health: Option<&tether_spec::model::SidecarHealth>,
    container: &mut Map<String, Value>,
) {
    let Some(h) = health else { return };
    container.insert(
        "livenessProbe".into(),
        json!({ "httpGet": { "path": h.live, "port": h.port }, "periodSeconds": 10 }),
    );
    container.insert(
        "readinessProbe".into(),
        json!({ "httpGet": { "path": h.ready, "port": h.port }, "periodSeconds": 2 }),
    );
}

/// The sidecar's container: image, command, env, resources.
fn container(c: &ContainerPlan, owner: &str, losses: &mut Vec<Loss>) -> Map<String, Value> {
    let mut k = Map::new();
    k.insert("name".into(), c.sidecar.clone().into());
    k.insert("image".into(), c.image.clone().into());
    if let Some(e) = &c.entrypoint {
        k.insert("command".into(), json!(kube_words(e)));
    }
    if let Some(cmd) = &c.command {
        k.insert("args".into(), json!(kube_words(cmd)));
    }
    let env: Vec<Value> = c
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(n, v)| json!({ "name": n, "value": v.replace("$(", "$$(") }))
        .collect();
    if !env.is_empty() {
        k.insert("env".into(), Value::Array(env));
    }
    if let Some(port) = c.readiness.port.filter(|p| *p > 0) {
        k.insert(
            "ports".into(),
            json!([{ "containerPort": port, "protocol": "TCP" }]),
        );
    }
    let mut res = Map::new();
    if let Some(m) = c.memory {
        res.insert("memory".into(), m.to_string().into());
    }
    if let Some(n) = c.nano_cpus {
        res.insert("cpu".into(), format!("{}m", n / 1_000_000).into());
    }
    match &c.gpus {
        Some(Gpus::Count(n)) => {
            res.insert("nvidia.com/gpu".into(), (*n).into());
        }
        Some(_) => losses.push(Loss {
            owner: owner.into(),
            field: "resources.gpus".into(),
            message: "only a count of GPUs can be requested from a cluster (nvidia.com/gpu)".into(),
        }),
        None => {}
    }
    if !c.extra_networks.is_empty() {
        losses.push(Loss {
            owner: owner.into(),
            field: "networks".into(),
            message: "a Pod has one network; extra networks are not joined".into(),
        });
    }
    if !res.is_empty() {
        let res = Value::Object(res);
        k.insert(
            "resources".into(),
            json!({ "requests": res, "limits": res }),
        );
    }
    k
}

fn secret_volume(
    plan: &Plan,
    c: &ContainerPlan,
    secret_name: &str,
    container: &mut Map<String, Value>,
    volumes: &mut Vec<Value>,
) {
    if c.secrets.is_empty() {
        return;
    }
    let vol = volume_name(&format!("secrets-{}", c.sidecar));
    let items: Vec<Value> = c
        .secrets
        .iter()
        .map(|s| json!({ "key": crate::secret_key(plan, c, &s.name), "path": s.name }))
        .collect();
    volumes.push(json!({ "name": vol, "secret": { "secretName": secret_name, "items": items, "defaultMode": 0o444 } }));
    push_mount(
        container,
        json!({ "name": vol, "mountPath": tether_plan::SECRETS_DIR, "readOnly": true }),
    );
}

/// A file a container reads, carried in a ConfigMap `<project>-<volume>` of its own.
struct ConfigFile<'a> {
    volume: &'a str,
    key: &'a str,
    text: &'a str,
    /// Where the container sees it.
    path: &'a str,
}

impl ConfigFile<'_> {
    fn add(
        &self,
        project: &str,
        docs: &mut Vec<Value>,
        volumes: &mut Vec<Value>,
        container: &mut Map<String, Value>,
    ) {
        let cm = format!("{project}-{}", self.volume);
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(&cm, project, None),
            "data": { self.key: self.text },
        }));
        volumes.push(json!({ "name": self.volume, "configMap": { "name": cm } }));
        push_mount(
            container,
            json!({ "name": self.volume, "mountPath": self.path, "subPath": self.key, "readOnly": true }),
        );
    }
}

fn push_mount(container: &mut Map<String, Value>, mount: Value) {
    match container.get_mut("volumeMounts") {
        Some(Value::Array(a)) => a.push(mount),
        _ => {
            container.insert("volumeMounts".into(), json!([mount]));
        }
    }
}

/// Named volumes become emptyDirs shared within the Pod; host paths are losses.
fn volume_mounts(
    c: &ContainerPlan,
    owner: &str,
    container: &mut Map<String, Value>,
    volumes: &mut Vec<Value>,
    losses: &mut Vec<Loss>,
) {
    for m in &c.mounts {
        match m {
            tether_plan::MountPlan::Volume {
                name,
                target,
                read_only,
            } => {
                let name = volume_name(name);
                if !volumes.iter().any(|v| v["name"] == name.as_str()) {
                    volumes.push(json!({ "name": name, "emptyDir": {} }));
                }
                push_mount(container, json!({ "name": name, "mountPath": target, "readOnly": read_only }));
            }
            tether_plan::MountPlan::Bind { source, target, .. } => losses.push(Loss {
                owner: owner.into(),
                field: "mounts".into(),
                message: if target == tether_spec::model::DOCKER_SOCKET {
                    "docker-socket: a cluster node's container engine is not the developer's; it is left out".into()
                } else {
                    format!("{source} is a path on this host, which a cluster does not have; it is left out")
                },
            }),
            tether_plan::MountPlan::Tmpfs { .. } => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn workload_objects(
    decl: &Declaration,
    plan: &Plan,
    w: &tether_spec::model::Workload,
    image: &str,
    secret_name: &str,
    options: &Options<'_>,
    losses: &mut Vec<Loss>,
) -> Result<Vec<Value>, RenderError> {
    let project = &decl.project;
    let mut docs = Vec::new();
    let mut volumes: Vec<Value> = Vec::new();
    let mut init_containers = Vec::new();
    // Shared sidecars run in Pods of their own: with a tether image, the workload's Pod waits
    // until each answers through its Service (an init container that fails is run again).
    let shared = plan
        .sidecars
        .iter()
        .filter(|c| c.lifecycle == Lifecycle::Shared);
    for c in shared {
        let (Some(alias), Some(port), Some(image)) = (
            c.aliases.first(),
            decl.sidecars[&c.sidecar].port(),
            options.wait_image,
        ) else {
            continue;
        };
        let target = match c.readiness.mode {
            ReadinessMode::Http => {
                let path = c.readiness.path.as_deref().unwrap_or("/");
                format!("http://{alias}:{port}{path}")
            }
            ReadinessMode::Tcp
            | ReadinessMode::Exec
            | ReadinessMode::Healthcheck
            | ReadinessMode::Log
            | ReadinessMode::None => format!("tcp://{alias}:{port}"),
        };
        let limit =
            c.readiness.timeout.0 + c.readiness.start_period.map(|d| d.0).unwrap_or_default();
        init_containers.push(json!({
            "name": format!("wait-{}", c.sidecar),
            "image": image,
            "args": ["wait", "--timeout", format!("{}s", limit.as_secs().max(1)), target],
        }));
    }
    // Session sidecars run in the workload's Pod: native sidecars, reached on 127.0.0.1.
    for c in plan
        .sidecars
        .iter()
        .filter(|c| c.lifecycle == Lifecycle::Session)
    {
        let owner = format!("sidecars.{}", c.sidecar);
        let mut k = container(c, &owner, losses);
        k.insert("restartPolicy".into(), "Always".into());
        if let Some(p) = probe(&c.readiness, &owner, losses) {
            k.insert("startupProbe".into(), p);
        }
        health_probes(decl.sidecars[&c.sidecar].health.as_ref(), &mut k);
        secret_volume(plan, c, secret_name, &mut k, &mut volumes);
        volume_mounts(c, &owner, &mut k, &mut volumes, losses);
        init_containers.push(Value::Object(k));
    }
    // One Pod, one network namespace: two session sidecars on one port cannot both listen.
    let mut ports: std::collections::BTreeMap<u16, &str> = std::collections::BTreeMap::new();
    for c in plan
        .sidecars
        .iter()
        .filter(|c| c.lifecycle == Lifecycle::Session)
    {
        if let Some(port) = decl.sidecars[&c.sidecar].port()
            && let Some(first) = ports.insert(port, &c.sidecar)
        {
            losses.push(Loss {
                owner: format!("sidecars.{}", c.sidecar),
                field: "interface.port".into(),
                message: format!(
                    "{first} listens on {port} too, and in one Pod they share the network: only one can"
                ),
            });
        }
    }
    let local = |sidecar: &str| {
        plan.sidecars
            .iter()
            .any(|c| c.sidecar == sidecar && c.lifecycle == Lifecycle::Session)
    };
    if w.network_mode == NetworkMode::SharedNamespace
        && let Some(s) = w.sidecar.as_deref()
        && !local(s)
    {
        losses.push(Loss {
            owner: "workload".into(),
            field: "network_mode".into(),
            message: format!("{s} is shared, so it runs in its own Pod: the workload reaches it through its Service, not on 127.0.0.1"),
        });
    }
    let mut env: Vec<Value> = Vec::new();
    for (k, v) in &plan.env {
        let Some(mut value) = v.resolve(&|_, _| None) else {
            continue;
        };
        // A session sidecar shares the Pod's network: it is on 127.0.0.1.
        for c in plan.sidecars.iter().filter(|c| local(&c.sidecar)) {
            let stem = tether_plan::env_stem(&decl.env_prefix, &c.sidecar);
            if let Some(alias) = c.aliases.first() {
                if *k == format!("{stem}_HOST") {
                    value = "127.0.0.1".into();
                } else if *k == format!("{stem}_URL") {
                    value = value.replacen(&format!("://{alias}:"), "://127.0.0.1:", 1);
                }
            }
        }
        env.push(json!({ "name": k, "value": value.replace("$(", "$$(") }));
    }
    let mut main = Map::new();
    main.insert("name".into(), "workload".into());
    main.insert("image".into(), image.into());
    if let Some(init) = &decl.init {
        main.insert(
            "command".into(),
            json!(["tether", "init", "-f", INIT_DECLARATION]),
        );
        let text = options.declaration_text.unwrap_or("");
        let file = ConfigFile {
            volume: "declaration",
            key: "tether.yaml",
            text,
            path: INIT_DECLARATION,
        };
        file.add(project, &mut docs, &mut volumes, &mut main);
        match &init.health {
            Some(h) => {
                let port: u16 = h
                    .listen
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
                    .unwrap_or(0);
                main.insert(
                    "livenessProbe".into(),
                    json!({ "httpGet": { "path": "/healthz", "port": port }, "periodSeconds": 10 }),
                );
                main.insert(
                    "readinessProbe".into(),
                    json!({ "httpGet": { "path": "/readyz", "port": port }, "periodSeconds": 2 }),
                );
                if h.listen.starts_with("127.")
                    || h.listen.starts_with("localhost")
                    || h.listen.starts_with("[::1]")
                {
                    losses.push(Loss {
                        owner: "init.health".into(),
                        field: "listen".into(),
                        message: format!("{} is loopback only: the kubelet's probes cannot reach it; listen on :{port}", h.listen),
                    });
                }
            }
            None => losses.push(Loss {
                owner: "init".into(),
                field: "health".into(),
                message: "without `health.listen` the Pod gets no liveness or readiness probe"
                    .into(),
            }),
        }
    } else if let Some(cmd) = &w.command {
        main.insert("args".into(), json!(kube_words(cmd)));
    }
    if !env.is_empty() {
        main.insert("env".into(), Value::Array(env));
    }
    for v in &plan.volumes {
        if let Some((name, target)) = v.split_once(':') {
            let name = volume_name(name);
            if !volumes.iter().any(|x| x["name"] == name.as_str()) {
                volumes.push(json!({ "name": name, "emptyDir": {} }));
            }
            push_mount(&mut main, json!({ "name": name, "mountPath": target }));
        }
    }
    if let Some(mcp) = &plan.mcp {
        let mut rendered = mcp.render(&|_, _| None).to_string();
        for c in plan.sidecars.iter().filter(|c| local(&c.sidecar)) {
            if let Some(alias) = c.aliases.first() {
                rendered = rendered.replace(&format!("://{alias}:"), "://127.0.0.1:");
            }
        }
        let file = ConfigFile {
            volume: "mcp",
            key: "mcp.json",
            text: &rendered,
            path: &mcp.target,
        };
        file.add(project, &mut docs, &mut volumes, &mut main);
    }
    let mut spec = Map::new();
    if !init_containers.is_empty() {
        spec.insert("initContainers".into(), Value::Array(init_containers));
    }
    spec.insert("containers".into(), json!([Value::Object(main)]));
    if !volumes.is_empty() {
        spec.insert("volumes".into(), Value::Array(volumes));
    }
    if let Some(init) = &decl.init {
        let longest = init
            .daemons
            .values()
            .filter_map(|d| d.stop.grace)
            .map(|g| g.0)
            .chain([init.shutdown.grace.0])
            .max()
            .unwrap_or_default();
        // Above the bundle's own grace, so tether's SIGKILL comes before the kubelet's.
        spec.insert(
            "terminationGracePeriodSeconds".into(),
            (longest.as_secs() + 5).into(),
        );
    }
    docs.push(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(project, project, None),
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { LABEL_PROJECT: project, LABEL_ROLE: Role::Workload.as_str() } },
            "template": {
                "metadata": { "labels": pod_labels(project, None) },
                "spec": spec,
            }
        }
    }));
    Ok(docs)
}
