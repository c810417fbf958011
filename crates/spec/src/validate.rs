//! The section validators: tree in, model out, every problem recorded.

use indexmap::IndexMap;

use crate::check::{Ctx, Fields, Shape, join, one_of};
use crate::diag::Span;
use crate::model::*;
use crate::values;
use crate::yaml::{Node, Value};

pub const TOP_FIELDS: &[&str] = &[
    "version",
    "project",
    "env_prefix",
    "sidecars",
    "workload",
    "init",
];
pub const SIDECAR_FIELDS: &[&str] = &[
    "image",
    "entrypoint",
    "command",
    "description",
    "disable",
    "lifecycle",
    "replicas",
    "interface",
    "aliases",
    "readiness",
    "health",
    "env",
    "secrets",
    "mounts",
    "networks",
    "resources",
];
pub const INTERFACE_FIELDS: &[&str] = &[
    "kind",
    "port",
    "name",
    "path",
    "transport",
    "volume",
    "mountpoint",
];
pub const READINESS_FIELDS: &[&str] = &[
    "mode",
    "port",
    "path",
    "command",
    "pattern",
    "timeout",
    "interval",
    "start_period",
];
pub const SIDECAR_HEALTH_FIELDS: &[&str] = &["port", "live", "ready"];
pub const SECRET_FIELDS: &[&str] = &["name", "from"];
pub const RESOURCES_FIELDS: &[&str] = &["memory", "cpus", "gpus"];
pub const WORKLOAD_FIELDS: &[&str] = &["image", "command", "env", "network_mode", "sidecar"];
pub const INIT_FIELDS: &[&str] = &[
    "steps",
    "daemons",
    "select_env",
    "health",
    "control",
    "shutdown",
    "notify",
    "logs",
];
pub const STEP_FIELDS: &[&str] = &[
    "name", "command", "fatal", "timeout", "env", "workdir", "user",
];
pub const DAEMON_FIELDS: &[&str] = &[
    "command",
    "env",
    "workdir",
    "user",
    "depends_on",
    "readiness",
    "liveness",
    "restart",
    "on_exit",
    "forward_signals",
    "stop",
    "success_codes",
    "log_files",
];
pub const CHECK_FIELDS: &[&str] = &[
    "mode", "host", "port", "url", "command", "pattern", "timeout", "interval",
];
pub const LIVENESS_FIELDS: &[&str] = &[
    "mode",
    "host",
    "port",
    "url",
    "command",
    "interval",
    "timeout",
    "failure_threshold",
];
pub const RESTART_FIELDS: &[&str] = &["policy", "backoff", "max_restarts"];
pub const BACKOFF_FIELDS: &[&str] = &["initial", "max", "multiplier", "reset_after"];
pub const STOP_FIELDS: &[&str] = &["signal", "grace"];
pub const HEALTH_FIELDS: &[&str] = &["listen", "control"];
pub const CONTROL_FIELDS: &[&str] = &["socket"];
pub const SHUTDOWN_FIELDS: &[&str] = &["grace", "order"];
pub const NOTIFY_FIELDS: &[&str] = &["command", "url"];
pub const LOGS_FIELDS: &[&str] = &["prefix", "timestamps", "format"];

// The mappings of the declaration, each with the words messages use for it and the mappings
// one level up and down (for "`port` is a field of its interface, not of the sidecar").
const fn shape(
    what: &'static str,
    fields: &'static [&'static str],
    parent: Option<&'static Shape>,
    children: &'static [&'static Shape],
) -> Shape {
    Shape {
        what,
        fields,
        parent,
        children,
    }
}
pub static DECLARATION: Shape = shape("the declaration", TOP_FIELDS, None, &[&WORKLOAD, &INIT]);
pub static SIDECAR: Shape = shape(
    "a sidecar",
    SIDECAR_FIELDS,
    None,
    &[&INTERFACE, &READINESS, &SIDECAR_HEALTH, &RESOURCES],
);
pub static INTERFACE: Shape = shape("an interface", INTERFACE_FIELDS, Some(&SIDECAR), &[]);
pub static READINESS: Shape = shape("readiness", READINESS_FIELDS, Some(&SIDECAR), &[]);
pub static SIDECAR_HEALTH: Shape = shape(
    "health endpoint",
    SIDECAR_HEALTH_FIELDS,
    Some(&SIDECAR),
    &[],
);
pub static RESOURCES: Shape = shape("resources", RESOURCES_FIELDS, Some(&SIDECAR), &[]);
pub static SECRET: Shape = shape("a secret", SECRET_FIELDS, None, &[]);
pub static WORKLOAD: Shape = shape("the workload", WORKLOAD_FIELDS, Some(&DECLARATION), &[]);
pub static INIT: Shape = shape(
    "the init section",
    INIT_FIELDS,
    Some(&DECLARATION),
    &[&HEALTH, &CONTROL, &SHUTDOWN, &NOTIFY, &LOGS],
);
pub static STEP: Shape = shape("a step", STEP_FIELDS, None, &[]);
pub static DAEMON: Shape = shape(
    "a daemon",
    DAEMON_FIELDS,
    None,
    &[&CHECK, &LIVENESS, &RESTART, &STOP],
);
pub static CHECK: Shape = shape("readiness", CHECK_FIELDS, Some(&DAEMON), &[]);
pub static LIVENESS: Shape = shape("liveness", LIVENESS_FIELDS, Some(&DAEMON), &[]);
pub static RESTART: Shape = shape("restart", RESTART_FIELDS, Some(&DAEMON), &[&BACKOFF]);
pub static BACKOFF: Shape = shape("backoff", BACKOFF_FIELDS, Some(&RESTART), &[]);
pub static STOP: Shape = shape("stop", STOP_FIELDS, Some(&DAEMON), &[]);
pub static HEALTH: Shape = shape("health", HEALTH_FIELDS, Some(&INIT), &[]);
pub static CONTROL: Shape = shape("control", CONTROL_FIELDS, Some(&INIT), &[]);
pub static SHUTDOWN: Shape = shape("shutdown", SHUTDOWN_FIELDS, Some(&INIT), &[]);
pub static NOTIFY: Shape = shape("notify", NOTIFY_FIELDS, Some(&INIT), &[]);
pub static LOGS: Shape = shape("logs", LOGS_FIELDS, Some(&INIT), &[]);
/// Every shape, for the test that parents and children agree.
pub static SHAPES: &[&Shape] = &[
    &DECLARATION,
    &SIDECAR,
    &INTERFACE,
    &READINESS,
    &RESOURCES,
    &SECRET,
    &WORKLOAD,
    &INIT,
    &STEP,
    &DAEMON,
    &CHECK,
    &LIVENESS,
    &RESTART,
    &BACKOFF,
    &STOP,
    &HEALTH,
    &CONTROL,
    &SHUTDOWN,
    &NOTIFY,
    &LOGS,
];

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);

/// A sidecar as read from one file, with where its name was written and what the cross-checks
/// need, kept even when other fields of the sidecar are wrong so that a collision is reported
/// in the same run as, say, a bad timeout.
pub struct SidecarAt {
    pub name: String,
    pub name_span: Span,
    pub file: crate::diag::FileId,
    /// The whole sidecar, when every field of it is valid.
    pub sidecar: Option<Sidecar>,
    /// `disable` (absent is `false`); `None` when it is not valid.
    pub disable: Option<bool>,
    /// The DNS names it answers to, as far as the fields that give them are valid: the canonical
    /// alias first (the name for `port`, `interface.name` for `mcp`), then each valid alias.
    pub names: Vec<String>,
}

impl SidecarAt {
    /// A sidecar known only by its name: its file or its mapping could not be read.
    pub fn unread(name: &str, name_span: Span, file: crate::diag::FileId) -> Self {
        Self {
            name: name.to_owned(),
            name_span,
            file,
            sidecar: None,
            disable: None,
            names: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sidecars

pub fn sidecar(
    cx: &mut Ctx<'_>,
    name: &str,
    node: &Node,
    name_span: Span,
    origin: Origin,
) -> SidecarAt {
    let path = format!("sidecars.{name}");
    let name_ok = cx.dns_label(name, &path, name_span);
    let mut at = SidecarAt::unread(name, name_span, cx.file);
    let Some(f) = cx.fields(node, &path, name_span, &SIDECAR) else {
        return at;
    };
    let before = cx.diags.len();

    let image = cx
        .require(&f, "image", "the image to run, for example `redis:7`")
        .and_then(|n| cx.nonempty_string(n, &f.at("image")));
    let entrypoint = f
        .get("entrypoint")
        .and_then(|n| cx.command(n, &f.at("entrypoint")));
    let command = f
        .get("command")
        .and_then(|n| cx.string_list(n, &f.at("command")));
    let description = f
        .get("description")
        .and_then(|n| cx.string(n, &f.at("description")));
    let disable = cx.or(&f, "disable", false, Ctx::bool);
    let lifecycle = cx
        .require(
            &f,
            "lifecycle",
            "`shared` (one container reused across runs) or `session` (one per run)",
        )
        .and_then(|n| cx.choice(n, &f.at("lifecycle"), &["shared", "session"], "a lifecycle"))
        .map(|l| {
            if l == "shared" {
                Lifecycle::Shared
            } else {
                Lifecycle::Session
            }
        });
    let replicas = replicas(cx, &f, lifecycle);
    let interface = cx
        .require(
            &f,
            "interface",
            "`kind` is one of port, mcp, volume, none, for example `{ kind: port, port: 6379 }`",
        )
        .map(|n| interface(cx, n, &f))
        .unwrap_or_default();
    let (aliases, aliases_ok) = aliases(cx, &f, interface.kind);
    let readiness = readiness(cx, &f, interface.kind);
    let health = match f.get("health") {
        Some(n) => sidecar_health(cx, n, &f).map(Some),
        None => Some(None),
    };
    let env = cx.or(&f, "env", Default::default(), Ctx::env);
    let secrets = secrets(cx, &f);
    let mounts = mounts(cx, &f, lifecycle);
    let networks = networks(cx, &f);
    let resources = f.get("resources").and_then(|n| {
        resources(
            cx,
            n,
            &f.at("resources"),
            f.key("resources").map(|k| k.span).unwrap_or(f.span),
        )
    });

    if let (Some(replicas), Some(secrets), Some(env), Some(health)) =
        (replicas, &secrets, &env, &health)
    {
        bus_serve(cx, &f, replicas, secrets, env, health.as_ref());
    }
    at.disable = disable;
    // A `volume` or `none` sidecar answers to no name; one whose kind is unknown still answers
    // to its aliases (they are an error of their own if it turns out not to be network-facing).
    at.names = match (interface.kind, interface.mcp_name) {
        (Some("port"), _) if name_ok => vec![name.to_owned()],
        (Some("mcp"), Some(n)) => vec![n],
        _ => Vec::new(),
    };
    at.names.extend(aliases.iter().cloned());
    if cx.diags.len() != before || !name_ok {
        return at;
    }
    let built = (|| {
        Some(Sidecar {
            name: name.to_owned(),
            origin,
            image: image?,
            entrypoint,
            command,
            description,
            disable: disable?,
            lifecycle: lifecycle?,
            replicas: replicas?,
            interface: interface.whole?,
            aliases: aliases_ok.then_some(aliases)?,
            readiness: readiness?,
            health: health?,
            env: env?,
            secrets: secrets?,
            mounts: mounts?,
            networks: networks?,
            resources: resources.unwrap_or_default(),
        })
    })();
    at.sidecar = cx.ensure(before, &path, name_span, built);
    at
}

/// `replicas`: how many copies of a shared sidecar a cluster runs. A session sidecar runs once
/// per run, beside its workload (in its Pod on a cluster), so it has none.
fn replicas(cx: &mut Ctx<'_>, f: &Fields<'_>, lifecycle: Option<Lifecycle>) -> Option<u32> {
    let Some(node) = f.get("replicas") else {
        return Some(1);
    };
    let path = f.at("replicas");
    let n = cx.int_in(node, &path, 1, 1000)? as u32;
    if lifecycle == Some(Lifecycle::Session) {
        let span = f.key("replicas").map(|k| k.span).unwrap_or(node.span);
        cx.error(&path, span, "`replicas` applies to a `shared` sidecar only")
            .with_label("this sidecar is `lifecycle: session`")
            .with_hint("a session sidecar runs once per run, beside its workload (in the workload's Pod on a cluster); make it `lifecycle: shared` to run several behind one name, or leave `replicas` out");
        return None;
    }
    Some(n)
}

/// A sidecar that runs `tether bus serve`: several replicas need the NATS backend, the files it
/// is given under the secrets folder must be declared secrets, and a NATS password is one. One
/// that runs `tether sidecar`: its `SIDECAR_CONFIG` under the secrets folder (where its token
/// file is too) must be a declared secret.
fn bus_serve(
    cx: &mut Ctx<'_>,
    f: &Fields<'_>,
    replicas: u32,
    secrets: &[Secret],
    env: &std::collections::BTreeMap<String, String>,
    health: Option<&SidecarHealth>,
) {
    // Each word with the field and node it was written in: the entrypoint's, then the command's.
    let mut words: Vec<(String, &str, Span)> = Vec::new();
    for field in ["entrypoint", "command"] {
        if let Some(Node {
            value: Value::Seq(items),
            ..
        }) = f.get(field)
        {
            for item in items {
                if let Value::Scalar(s) = &item.value {
                    words.push((s.text.clone(), field, item.span));
                }
            }
        }
    }
    let texts: Vec<String> = words.iter().map(|(w, _, _)| w.clone()).collect();
    // The name of an undeclared secret that `path` names.
    let undeclared = |path: &str| -> Option<String> {
        let name = path.strip_prefix(SECRETS_DIR)?.strip_prefix('/')?;
        (!secrets.iter().any(|s| s.name == name)).then(|| name.to_owned())
    };
    // An env variable naming a file under the secrets folder that no secret puts there.
    // `first` and `other`: the secret sources the hint offers.
    let undeclared_file = |cx: &mut Ctx<'_>, var: &str, first: &str, other: &str| {
        let Some(value) = env.get(var) else { return };
        let Some(name) = undeclared(value) else {
            return;
        };
        let Some(Node {
            value: Value::Map(entries),
            ..
        }) = f.get("env")
        else {
            return;
        };
        let Some((_, node)) = entries.iter().find(|(k, _)| k.name == var) else {
            return;
        };
        cx.error(
            &join(&f.at("env"), var),
            node.span,
            format!("{var} {value}: no secret `{name}` is declared, so nothing puts a file there"),
        )
        .with_hint(format!(
            "add `secrets: [{{ name: {name}, from: {first} }}]` (or `from: {other}`) to this sidecar"
        ));
    };
    if crate::bus::runs_sidecar(&texts) {
        undeclared_file(cx, "SIDECAR_CONFIG", "file:PATH", "env:VAR");
        return;
    }
    let Some(start) = crate::bus::serve_args(&texts) else {
        return;
    };
    let args = &texts[start..];
    let backend = crate::bus::flag(args, "--backend");
    if replicas > 1
        && backend.map(|(_, v)| v) != Some("nats")
        && let Some(node) = f.get("replicas")
    {
        let d = cx
            .error(
                &f.at("replicas"),
                node.span,
                format!("{replicas} replicas of `tether bus serve` need `--backend nats`"),
            )
            .with_label("each replica would have a store of its own")
            .with_hint("with the embedded store (the default backend) every replica keeps its own messages, registry and grants, so plugins connected to different replicas would not see each other's messages; add `--backend nats --nats-url nats://HOST:4222` to `command` (the NATS servers are yours), or leave `replicas` out");
        match backend {
            Some((i, _)) => {
                d.with_also(words[start + i].2, "not `nats`");
            }
            None => {
                if let Some(k) = f.key("command").or(f.key("entrypoint")) {
                    d.with_also(k.span, "no `--backend nats` here");
                }
            }
        }
    }
    // The health endpoint is the bus's `--http` listener: /healthz and /readyz.
    if let Some(h) = health {
        let http = crate::bus::flag(args, "--http");
        let port = http.and_then(|(_, a)| a.rsplit_once(':')?.1.parse::<u16>().ok());
        let at = f.get("health").map(|n| match &n.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.name == "port")
                .map_or(n.span, |(_, v)| v.span),
            _ => n.span,
        });
        match (http, port, at) {
            (None, _, Some(span)) => {
                cx.error(
                    &f.at("health"),
                    span,
                    "`tether bus serve` serves /healthz and /readyz only with `--http ADDR`",
                )
                .with_label("nothing would answer here")
                .with_hint(format!("add `--http, \"0.0.0.0:{}\"` to `command`", h.port));
            }
            (Some((i, addr)), Some(p), Some(span)) if p != h.port => {
                cx.error(
                    &join(&f.at("health"), "port"),
                    span,
                    format!("{} is not the port of the bus's `--http {addr}`", h.port),
                )
                .with_also(words[start + i].2, "the bus serves its health here")
                .with_hint(format!("`health: {{ port: {p} }}`"));
            }
            _ => {}
        }
    }
    for flag in [
        "--nats-creds",
        "--nats-ca",
        "--policy",
        "--tls-cert",
        "--tls-key",
    ] {
        if let Some((i, value)) = crate::bus::flag(args, flag)
            && let Some(name) = undeclared(value)
        {
            let (_, field, span) = words[start + i];
            cx.error(
                &f.at(field),
                span,
                format!("{flag} {value}: no secret `{name}` is declared, so nothing puts a file there"),
            )
            .with_hint(format!(
                "add `secrets: [{{ name: {name}, from: file:PATH }}]` (or `from: env:VAR`) to this sidecar"
            ));
        }
    }
    let Some(Node {
        value: Value::Map(entries),
        ..
    }) = f.get("env")
    else {
        return;
    };
    for (key, _) in entries {
        let var = key.name.as_str();
        let path = join(&f.at("env"), var);
        if var == "NATS_PASSWORD" {
            // Its value is blanked in every snippet (`Ctx::env`): an error never repeats it.
            cx.error(
                &path,
                key.span,
                "a NATS password written in the declaration, where `docker inspect` shows it too",
            )
            .with_label("its value is not shown")
            .with_hint("declare it as a secret, `secrets: [{ name: nats-password, from: env:NATS_PASSWORD }]`, and set `NATS_PASSWORD_FILE: /run/secrets/nats-password` instead");
        } else if matches!(var, "NATS_USER_FILE" | "NATS_PASSWORD_FILE") {
            undeclared_file(cx, var, "env:VAR", "file:PATH");
        }
    }
}

/// An interface as far as it is valid: its kind and mcp name are known even when, say, its port
/// is out of range.
#[derive(Default)]
struct InterfaceAt {
    kind: Option<&'static str>,
    /// `name` of an mcp interface, when it is valid.
    mcp_name: Option<String>,
    /// The whole interface, when every field of it is valid.
    whole: Option<Interface>,
}

fn interface(cx: &mut Ctx<'_>, node: &Node, parent: &Fields<'_>) -> InterfaceAt {
    let mut at = InterfaceAt::default();
    at.whole = interface_fields(cx, node, parent, &mut at);
    at
}

fn interface_fields(
    cx: &mut Ctx<'_>,
    node: &Node,
    parent: &Fields<'_>,
    at: &mut InterfaceAt,
) -> Option<Interface> {
    let path = parent.at("interface");
    let owner = parent
        .key("interface")
        .map(|k| k.span)
        .unwrap_or(parent.span);
    let f = cx.fields(node, &path, owner, &INTERFACE)?;
    let kinds = ["port", "mcp", "volume", "none"];
    let kind = cx
        .require(&f, "kind", "one of port, mcp, volume, none")
        .and_then(|n| cx.choice(n, &f.at("kind"), &kinds, "an interface kind"))?;
    at.kind = Some(kind);
    let allowed: &[&str] = match kind {
        "port" => &["kind", "port"],
        "mcp" => &["kind", "port", "name", "path", "transport"],
        "volume" => &["kind", "volume", "mountpoint"],
        _ => &["kind"],
    };
    let mut ok = true;
    for (k, _) in f.entries {
        if INTERFACE_FIELDS.contains(&k.name.as_str()) && !allowed.contains(&k.name.as_str()) {
            cx.error(
                &f.at(&k.name),
                k.span,
                format!(
                    "`{}` does not apply to an interface of kind `{kind}`",
                    k.name
                ),
            )
            .with_hint(format!("kind `{kind}` takes: {}", allowed.join(", ")));
            ok = false;
        }
    }
    let result = match kind {
        "port" => {
            let port = cx
                .require(&f, "port", "the port the sidecar listens on, 1 to 65535")
                .and_then(|n| cx.port(n, &f.at("port")));
            Interface::Port { port: port? }
        }
        "mcp" => {
            let port = cx
                .require(&f, "port", "the port the MCP server listens on, 1 to 65535")
                .and_then(|n| cx.port(n, &f.at("port")));
            let name = cx
                .require(
                    &f,
                    "name",
                    "the MCP server's name, also its DNS name on the network",
                )
                .and_then(|n| {
                    let s = cx.string(n, &f.at("name"))?;
                    match values::check_dns_name(&s) {
                        Ok(()) => Some(s),
                        Err(e) => {
                            cx.error(&f.at("name"), n.span, e)
                                .with_label("not a DNS name");
                            None
                        }
                    }
                });
            let path = match f.get("path") {
                Some(n) => cx.string(n, &f.at("path")).and_then(|p| {
                    if p.starts_with('/') {
                        Some(p)
                    } else {
                        cx.error(&f.at("path"), n.span, format!("`{p}` must start with `/`"));
                        None
                    }
                }),
                None => Some("/mcp".to_owned()),
            };
            let transport = match f.get("transport") {
                Some(n) => cx
                    .choice(
                        n,
                        &f.at("transport"),
                        &["http"],
                        "a supported MCP transport",
                    )
                    .map(str::to_owned),
                None => Some("http".to_owned()),
            };
            at.mcp_name.clone_from(&name);
            Interface::Mcp {
                port: port?,
                name: name?,
                path: path?,
                transport: transport?,
            }
        }
        "volume" => {
            let volume = cx
                .require(
                    &f,
                    "volume",
                    "the name of the volume shared with the workload",
                )
                .and_then(|n| {
                    let s = cx.string(n, &f.at("volume"))?;
                    match values::check_engine_name(&s) {
                        Ok(()) => Some(s),
                        Err(e) => {
                            cx.error(&f.at("volume"), n.span, e);
                            None
                        }
                    }
                });
            let mountpoint = cx
                .require(
                    &f,
                    "mountpoint",
                    "an absolute path inside the containers, for example `/data`",
                )
                .and_then(|n| absolute_path(cx, n, &f.at("mountpoint")));
            Interface::Volume {
                volume: volume?,
                mountpoint: mountpoint?,
            }
        }
        _ => Interface::None,
    };
    ok.then_some(result)
}

fn absolute_path(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<String> {
    let s = cx.string(node, path)?;
    if s.starts_with('/') {
        Some(s)
    } else {
        cx.error(path, node.span, format!("`{s}` is not an absolute path"))
            .with_label("expected a path starting with `/`");
        None
    }
}

/// The valid aliases, and whether all of them were.
fn aliases(cx: &mut Ctx<'_>, f: &Fields<'_>, kind: Option<&str>) -> (Vec<String>, bool) {
    let Some(node) = f.get("aliases") else {
        return (Vec::new(), true);
    };
    let path = f.at("aliases");
    if let Some(kind @ ("volume" | "none")) = kind {
        cx.error(
            &path,
            f.key("aliases").map(|k| k.span).unwrap_or(node.span),
            format!("aliases do not apply to an interface of kind `{kind}`"),
        )
        .with_hint("only `port` and `mcp` sidecars are reachable by name");
        return (Vec::new(), false);
    }
    let Some(items) = cx.seq(node, &path) else {
        return (Vec::new(), false);
    };
    let mut out: Vec<String> = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(s) = cx.string(item, &p) else {
            ok = false;
            continue;
        };
        if let Err(e) = values::check_dns_name(&s) {
            cx.error(&p, item.span, e).with_label("not a DNS name");
            ok = false;
        } else if out.contains(&s) {
            cx.error(&p, item.span, format!("alias `{s}` is listed twice"));
            ok = false;
        } else {
            out.push(s);
        }
    }
    (out, ok)
}

fn readiness(cx: &mut Ctx<'_>, f: &Fields<'_>, kind: Option<&str>) -> Option<Readiness> {
    let path = f.at("readiness");
    let owner = f.key("readiness").map(|k| k.span).unwrap_or(f.span);
    let has_port = kind.map(|k| matches!(k, "port" | "mcp"));
    let modes = ["tcp", "http", "exec", "healthcheck", "log", "none"];
    let r = match f.get("readiness") {
        Some(n) => cx.fields(n, &path, owner, &READINESS)?,
        None => Fields {
            path: path.clone(),
            span: owner,
            entries: &[],
        },
    };
    let mode = match r.get("mode") {
        Some(n) => cx
            .choice(n, &r.at("mode"), &modes, "a readiness mode")
            .unwrap_or("?"),
        None => match (has_port, kind) {
            (Some(true), _) => "tcp",
            (Some(false), Some(kind)) => {
                cx.error(&r.at("mode"), owner, format!("a sidecar of kind `{kind}` must say how it becomes ready"))
                    .with_hint("add `readiness: { mode: exec, command: [...] }`, `mode: healthcheck`, `mode: log` or `mode: none`");
                return None;
            }
            // The interface kind is wrong or missing (already reported): check the rest anyway.
            _ => "?",
        },
    };
    if matches!(mode, "tcp" | "http")
        && has_port == Some(false)
        && r.get("port").is_none()
        && let Some(n) = r.get("mode")
    {
        cx.error(&r.at("mode"), n.span, format!("`{mode}` readiness needs a port, and this sidecar's interface has none"))
            .with_hint("use `exec`, `healthcheck`, `log` or `none`, give readiness a `port`, or give the sidecar a `port` or `mcp` interface");
        return None;
    }
    let applies: &[(&str, &[&str])] = &[
        ("port", &["tcp", "http"]),
        ("path", &["http"]),
        ("command", &["exec", "healthcheck"]),
        ("pattern", &["log"]),
    ];
    let mut ok = true;
    for (field, modes_for) in applies {
        if mode != "?"
            && let Some(k) = r.key(field)
            && !modes_for.contains(&mode)
        {
            cx.error(
                &r.at(field),
                k.span,
                format!("`{field}` does not apply to readiness mode `{mode}`"),
            )
            .with_hint(format!("`{field}` is used by mode {}", one_of(modes_for)));
            ok = false;
        }
    }
    let probe = match mode {
        "tcp" => Some(Probe::Tcp),
        "http" => {
            let p = match r.get("path") {
                Some(n) => cx.string(n, &r.at("path")).and_then(|p| {
                    if p.starts_with('/') {
                        Some(p)
                    } else {
                        cx.error(&r.at("path"), n.span, format!("`{p}` must start with `/`"));
                        None
                    }
                }),
                None => Some("/".to_owned()),
            };
            p.map(|path| Probe::Http { path })
        }
        "exec" => cx
            .require(
                &r,
                "command",
                "the command run inside the sidecar; exit 0 means ready",
            )
            .and_then(|n| cx.command(n, &r.at("command")))
            .map(|command| Probe::Exec { command }),
        "healthcheck" => match r.get("command") {
            Some(n) => cx
                .command(n, &r.at("command"))
                .map(|c| Probe::Healthcheck { command: Some(c) }),
            None => Some(Probe::Healthcheck { command: None }),
        },
        "log" => cx
            .require(
                &r,
                "pattern",
                "a regular expression matched against each line the sidecar prints",
            )
            .and_then(|n| regex(cx, n, &r.at("pattern")))
            .map(|pattern| Probe::Log { pattern }),
        "none" => Some(Probe::None),
        _ => None,
    };
    let port = match r.get("port") {
        Some(n) => cx.port(n, &r.at("port")).map(Some),
        None => Some(None),
    };
    let timeout = cx.or(&r, "timeout", DEFAULT_TIMEOUT, Ctx::duration);
    let interval = cx.or(&r, "interval", DEFAULT_INTERVAL, Ctx::duration);
    let start_period = match r.get("start_period") {
        Some(n) => Some(Some(cx.duration(n, &r.at("start_period"))?)),
        None => Some(None),
    };
    if !ok {
        return None;
    }
    Some(Readiness {
        probe: probe?,
        port: port?,
        timeout: timeout?,
        interval: interval?,
        start_period: start_period?,
    })
}

/// `health: { port, live, ready }`: the sidecar's own HTTP health endpoint.
fn sidecar_health(cx: &mut Ctx<'_>, node: &Node, parent: &Fields<'_>) -> Option<SidecarHealth> {
    let path = parent.at("health");
    let owner = parent.key("health").map(|k| k.span).unwrap_or(parent.span);
    let f = cx.fields(node, &path, owner, &SIDECAR_HEALTH)?;
    let port = cx
        .require(
            &f,
            "port",
            "the port the health endpoint listens on, 1 to 65535",
        )
        .and_then(|n| cx.port(n, &f.at("port")));
    let mut http_path = |field: &str, default: &str| match f.get(field) {
        Some(n) => cx.string(n, &f.at(field)).and_then(|p| {
            if p.starts_with('/') {
                Some(p)
            } else {
                cx.error(&f.at(field), n.span, format!("`{p}` must start with `/`"));
                None
            }
        }),
        None => Some(default.to_owned()),
    };
    let live = http_path("live", "/healthz");
    let ready = http_path("ready", "/readyz");
    Some(SidecarHealth {
        port: port?,
        live: live?,
        ready: ready?,
    })
}

fn regex(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<String> {
    let s = cx.string(node, path)?;
    match regex_lite::Regex::new(&s) {
        Ok(_) => Some(s),
        Err(e) => {
            let text = e.to_string();
            let last = text.lines().last().unwrap_or("invalid").trim();
            let first = last.strip_prefix("error: ").unwrap_or(last).to_owned();
            cx.error(
                path,
                node.span,
                format!("`{s}` is not a valid regular expression: {first}"),
            );
            None
        }
    }
}

fn secrets(cx: &mut Ctx<'_>, f: &Fields<'_>) -> Option<Vec<Secret>> {
    let Some(node) = f.get("secrets") else {
        return Some(Vec::new());
    };
    let path = f.at("secrets");
    let items = cx.seq(node, &path)?;
    let mut out: Vec<Secret> = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(s) = cx.fields(item, &p, Span::point(item.span.start), &SECRET) else {
            ok = false;
            continue;
        };
        let name = cx
            .require(&s, "name", "the file name under /run/secrets/")
            .and_then(|n| {
                let v = cx.string(n, &s.at("name"))?;
                let valid = v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if !valid {
                    cx.error(&s.at("name"), n.span, format!("`{v}` is not a secret name"))
                        .with_label("letters, digits, `.`, `_` and `-`");
                    return None;
                }
                if let Some(prev) = out.iter().find(|x| x.name == v) {
                    cx.error(
                        &s.at("name"),
                        n.span,
                        format!("secret `{}` is declared twice", prev.name),
                    );
                    return None;
                }
                Some(v)
            });
        let from = cx
            .require(&s, "from", "`env:VAR` (a host environment variable) or `file:PATH` (a host file)")
            .and_then(|n| {
                let v = cx.string(n, &s.at("from"))?;
                if let Some(var) = v.strip_prefix("env:") {
                    match values::check_env_name(var) {
                        Ok(()) => Some(SecretSource::Env(var.to_owned())),
                        Err(e) => {
                            cx.error(&s.at("from"), n.span, e);
                            None
                        }
                    }
                } else if let Some(p) = v.strip_prefix("file:").filter(|p| !p.is_empty()) {
                    Some(SecretSource::File(p.to_owned()))
                } else {
                    // It may be the secret itself: neither the message nor the snippet shows it.
                    cx.secret(n.span);
                    cx.error(&s.at("from"), n.span, "not a secret source (the value written is not shown: it may be the secret)")
                        .with_label("expected `env:VAR` or `file:PATH`")
                        .with_hint("secret values are never written in the declaration; name where to read them");
                    None
                }
            });
        match (name, from) {
            (Some(name), Some(from)) => out.push(Secret { name, from }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn mounts(cx: &mut Ctx<'_>, f: &Fields<'_>, lifecycle: Option<Lifecycle>) -> Option<Vec<Mount>> {
    let Some(node) = f.get("mounts") else {
        return Some(Vec::new());
    };
    let path = f.at("mounts");
    let items = cx.seq(node, &path)?;
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(s) = cx.string(item, &p) else {
            ok = false;
            continue;
        };
        match values::parse_mount(&s) {
            Ok(m @ Mount::Workspace { .. }) if lifecycle == Some(Lifecycle::Shared) => {
                cx.error(&p, item.span, "a `shared` sidecar may not mount the workspace")
                    .with_label("reused across runs")
                    .with_hint("a shared container outlives the run, so it would show one run's workspace to the next; make this sidecar `lifecycle: session`");
                drop(m);
                ok = false;
            }
            Ok(m) => out.push(m),
            Err(e) => {
                cx.error(&p, item.span, e).with_hint(values::MOUNT_HELP);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn networks(cx: &mut Ctx<'_>, f: &Fields<'_>) -> Option<Vec<String>> {
    let Some(node) = f.get("networks") else {
        return Some(Vec::new());
    };
    let path = f.at("networks");
    let items = cx.string_list(node, &path)?;
    let mut ok = true;
    let Value::Seq(nodes) = &node.value else {
        return None;
    };
    for (i, (name, n)) in items.iter().zip(nodes).enumerate() {
        if let Err(e) = values::check_engine_name(name) {
            cx.error(&format!("{path}[{i}]"), n.span, format!("network {e}"));
            ok = false;
        }
    }
    ok.then_some(items)
}

fn resources(cx: &mut Ctx<'_>, node: &Node, path: &str, owner: Span) -> Option<Resources> {
    let f = cx.fields(node, path, owner, &RESOURCES)?;
    let memory = match f.get("memory") {
        Some(n) => Some(cx.size(n, &f.at("memory"))?),
        None => None,
    };
    let cpus = match f.get("cpus") {
        Some(n) => {
            let v = cx.number(n, &f.at("cpus"))?;
            if v <= 0.0 || !v.is_finite() {
                cx.error(
                    &f.at("cpus"),
                    n.span,
                    format!("{v} is not a positive number of CPUs"),
                )
                .with_label("for example 0.5 or 2");
                return None;
            }
            Some(v)
        }
        None => None,
    };
    let gpus = match f.get("gpus") {
        Some(n) => Some(gpus(cx, n, &f.at("gpus"))?),
        None => None,
    };
    Some(Resources { memory, cpus, gpus })
}

fn gpus(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<Gpus> {
    const HELP: &str = "expected `all`, a count, or `device=ID,...`";
    if let Value::Scalar(s) = &node.value
        && let crate::yaml::Typed::Int(_) = s.typed()
    {
        return cx
            .int_in(node, path, 1, 1024)
            .map(|n| Gpus::Count(n as u32));
    }
    let s = cx.string(node, path)?;
    if s == "all" {
        return Some(Gpus::All);
    }
    if let Some(ids) = s.strip_prefix("device=") {
        let ids: Vec<String> = ids.split(',').map(str::to_owned).collect();
        if ids.iter().all(|i| !i.is_empty()) {
            return Some(Gpus::Devices(ids));
        }
    }
    cx.error(path, node.span, format!("`{s}` is not a GPU request"))
        .with_label(HELP);
    None
}

// ---------------------------------------------------------------------------------------------
// workload

/// The workload, when it is valid, and the sidecar whose namespace it joins, when `network_mode`
/// and `sidecar` say so validly (for the cross-checks, whatever else is wrong).
pub fn workload(
    cx: &mut Ctx<'_>,
    node: &Node,
    owner: Span,
) -> (Option<Workload>, Option<(String, Span)>) {
    let Some(f) = cx.fields(node, "workload", owner, &WORKLOAD) else {
        return (None, None);
    };
    let image = f
        .get("image")
        .and_then(|n| cx.nonempty_string(n, &f.at("image")));
    let command = f
        .get("command")
        .and_then(|n| cx.string_list(n, &f.at("command")));
    let env = cx.or(&f, "env", Default::default(), Ctx::env);
    let mode = cx.pick(
        &f,
        "network_mode",
        &[
            ("network", NetworkMode::Network),
            ("shared-namespace", NetworkMode::SharedNamespace),
        ],
        NetworkMode::Network,
        "a network mode",
    );
    let sidecar = match f.get("sidecar") {
        Some(n) => cx.string(n, &f.at("sidecar")).map(|s| Some((s, n.span))),
        None => Some(None),
    };
    let (Some(mode), Some(sidecar)) = (mode, sidecar) else {
        return (None, None);
    };
    match (mode, &sidecar) {
        (NetworkMode::SharedNamespace, None) => {
            let span = f.key("network_mode").map(|k| k.span).unwrap_or(owner);
            cx.error(&f.at("sidecar"), span, "`shared-namespace` needs `sidecar`: the sidecar whose network namespace the workload joins")
                .with_hint("add `sidecar: NAME`");
            return (None, None);
        }
        (NetworkMode::Network, Some((_, span))) => {
            cx.error(
                &f.at("sidecar"),
                *span,
                "`sidecar` only applies with `network_mode: shared-namespace`",
            )
            .with_hint("with `network_mode: network` the workload reaches every sidecar by name");
            return (None, None);
        }
        _ => {}
    }
    let workload = env.map(|env| Workload {
        image,
        command,
        env,
        network_mode: mode,
        sidecar: sidecar.as_ref().map(|(s, _)| s.clone()),
    });
    (workload, sidecar)
}

// ---------------------------------------------------------------------------------------------
// init

/// The init section, plus what the dependency checks need.
pub struct InitAt {
    pub init: Init,
    /// Every daemon declared under a valid name, valid or not, in declaration order.
    pub daemons: IndexMap<String, DaemonAt>,
    /// Every step name that is valid, including steps with other errors.
    pub steps: Vec<String>,
}

/// What the dependency checks need of a daemon, kept even when other fields of it are wrong.
#[derive(Default)]
pub struct DaemonAt {
    /// Each valid `depends_on` entry, with its condition and where it is written.
    pub depends_on: IndexMap<String, (Condition, Span)>,
    /// `restart.policy` (absent is `on-failure`); `None` when it is not valid.
    pub policy: Option<RestartPolicy>,
}

pub fn init(cx: &mut Ctx<'_>, node: &Node, owner: Span) -> Option<InitAt> {
    let f = cx.fields(node, "init", owner, &INIT)?;
    let before = cx.diags.len();
    let mut names: IndexMap<String, Span> = IndexMap::new();
    let mut declared = IndexMap::new();

    let mut steps = Vec::new();
    if let Some(n) = f.get("steps")
        && let Some(items) = cx.seq(n, "init.steps")
    {
        for (i, item) in items.iter().enumerate() {
            if let Some(s) = step(cx, item, &format!("init.steps[{i}]"), &mut names) {
                steps.push(s);
            }
        }
    }
    let step_names: Vec<String> = names.keys().cloned().collect();
    let mut daemons = IndexMap::new();
    if let Some(n) = f.get("daemons") {
        match &n.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    let path = format!("init.daemons.{}", k.name);
                    if !cx.dns_label(&k.name, &path, k.span) {
                        continue;
                    }
                    if let Some(prev) = names.get(&k.name) {
                        cx.error(
                            &path,
                            k.span,
                            format!("`{}` is already the name of a step", k.name),
                        )
                        .with_also(*prev, "step named here");
                        continue;
                    }
                    names.insert(k.name.clone(), k.span);
                    let (d, at) = daemon(cx, &k.name, v, k.span);
                    declared.insert(k.name.clone(), at);
                    if let Some(d) = d {
                        daemons.insert(k.name.clone(), d);
                    }
                }
            }
            _ => {
                cx.error(
                    "init.daemons",
                    n.span,
                    format!(
                        "expected a mapping of name: daemon, found {}",
                        n.kind_name()
                    ),
                );
            }
        }
    }
    if !f.has("steps") && !f.has("daemons") {
        cx.error("init", owner, "declares no steps and no daemons")
            .with_hint("add `daemons:` (long-running processes) or `steps:` (one-shot commands)");
    }
    let select_env = match f.get("select_env") {
        Some(n) => cx
            .string(n, "init.select_env")
            .and_then(|s| match values::check_env_name(&s) {
                Ok(()) => Some(s),
                Err(e) => {
                    cx.error("init.select_env", n.span, e);
                    None
                }
            }),
        None => Some("TETHER_DAEMONS".to_owned()),
    };
    let health = match f.get("health") {
        Some(n) => {
            let owner = f.key("health").map(|k| k.span).unwrap_or(owner);
            cx.fields(n, "init.health", owner, &HEALTH).and_then(|h| {
                let listen = cx.require(&h, "listen", "the address to serve /healthz, /readyz and /status on, for example `0.0.0.0:9090`")?;
                let listen = listen_address(cx, listen, "init.health.listen");
                let control = cx.or(&h, "control", false, Ctx::bool);
                Some(Health { listen: listen?, control: control? })
            })
        }
        None => None,
    };
    let control = match f.get("control") {
        Some(n) => {
            let owner = f.key("control").map(|k| k.span).unwrap_or(owner);
            cx.fields(n, "init.control", owner, &CONTROL).and_then(|c| {
                let socket = cx.require(&c, "socket", "the path of the control socket `tether ctl` speaks to, for example `/run/tether/init.sock`")?;
                socket_path(cx, socket, "init.control.socket").map(|socket| Control { socket })
            })
        }
        None => None,
    };
    let shutdown = match f.get("shutdown") {
        Some(n) => {
            let owner = f.key("shutdown").map(|k| k.span).unwrap_or(owner);
            cx.fields(n, "init.shutdown", owner, &SHUTDOWN)
                .and_then(|s| {
                    let grace = cx.or(&s, "grace", Duration::from_secs(8), Ctx::duration);
                    let order = cx.pick(
                        &s,
                        "order",
                        &[
                            ("reverse-dependency", ShutdownOrder::ReverseDependency),
                            ("parallel", ShutdownOrder::Parallel),
                        ],
                        ShutdownOrder::ReverseDependency,
                        "a shutdown order",
                    );
                    Some(Shutdown {
                        grace: grace?,
                        order: order?,
                    })
                })
        }
        None => Some(Shutdown {
            grace: Duration::from_secs(8),
            order: ShutdownOrder::ReverseDependency,
        }),
    };
    let notify = match f.get("notify") {
        Some(n) => {
            let owner = f.key("notify").map(|k| k.span).unwrap_or(owner);
            cx.fields(n, "init.notify", owner, &NOTIFY).and_then(|nf| {
                match (nf.get("command"), nf.get("url")) {
                    (Some(c), None) => cx.command(c, "init.notify.command").map(Notify::Command),
                    (None, Some(u)) => http_url(cx, u, "init.notify.url").map(Notify::Url),
                    _ => {
                        cx.error("init.notify", owner, "give exactly one of `command` or `url`")
                            .with_hint("`command` receives each event as JSON on stdin; `url` receives it as an HTTP POST");
                        None
                    }
                }
            })
        }
        None => None,
    };
    let logs = match f.get("logs") {
        Some(n) => {
            let owner = f.key("logs").map(|k| k.span).unwrap_or(owner);
            cx.fields(n, "init.logs", owner, &LOGS).and_then(|l| {
                let prefix = match l.get("prefix") {
                    Some(n) => {
                        let p = cx.text(n, "init.logs.prefix")?;
                        let unknown = p.replace("{name}", "");
                        if unknown.contains('{') || unknown.contains('}') {
                            cx.error("init.logs.prefix", n.span, format!("`{p}` has a placeholder other than `{{name}}`"))
                                .with_hint("`{name}` is replaced by the daemon's name, for example `[{name}] `");
                            return None;
                        }
                        Some(p)
                    }
                    None => Some("[{name}] ".to_owned()),
                };
                let timestamps = cx.or(&l, "timestamps", false, Ctx::bool);
                let format = cx.pick(
                    &l,
                    "format",
                    &[("text", LogFormat::Text), ("json", LogFormat::Json)],
                    LogFormat::Text,
                    "a log format",
                );
                Some(Logs { prefix: prefix?, timestamps: timestamps?, format: format? })
            })
        }
        None => Some(Logs {
            prefix: "[{name}] ".to_owned(),
            timestamps: false,
            format: LogFormat::Text,
        }),
    };
    // Daemons that validated are kept even when other parts failed, so that the dependency
    // checks still run and every problem is reported together.
    let built = Some(InitAt {
        init: Init {
            steps,
            daemons,
            select_env: select_env.unwrap_or_else(|| "TETHER_DAEMONS".to_owned()),
            health,
            control,
            shutdown: shutdown.unwrap_or(Shutdown {
                grace: Duration::from_secs(8),
                order: ShutdownOrder::ReverseDependency,
            }),
            notify,
            logs: logs.unwrap_or(Logs {
                prefix: "[{name}] ".to_owned(),
                timestamps: false,
                format: LogFormat::Text,
            }),
        },
        daemons: declared,
        steps: step_names,
    });
    cx.ensure(before, "init", owner, built)
}

fn listen_address(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<String> {
    let s = cx.text(node, path)?;
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => ("", s.as_str()),
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = host.is_empty()
        || host.parse::<std::net::IpAddr>().is_ok()
        || (host.starts_with('[')
            && host.ends_with(']')
            && host[1..host.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_ok())
        || values::check_dns_name(&host.to_ascii_lowercase()).is_ok();
    if !port_ok || !host_ok {
        cx.error(path, node.span, format!("`{s}` is not a listen address"))
            .with_label("expected HOST:PORT, for example `0.0.0.0:9090` or `:9090`");
        return None;
    }
    if host.is_empty() {
        return Some(format!("0.0.0.0:{port}"));
    }
    Some(s)
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

fn socket_path(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<String> {
    let s = cx.text(node, path)?;
    if !s.starts_with('/') {
        cx.error(path, node.span, format!("`{s}` is not an absolute path"))
            .with_label("give an absolute path, for example `/run/tether/init.sock`");
        return None;
    }
    if s.ends_with('/') {
        cx.error(
            path,
            node.span,
            format!("`{s}` names a folder, not a socket"),
        )
        .with_label("end it with the socket's name, for example `/run/tether/init.sock`");
        return None;
    }
    if s.len() > MAX_SOCKET_PATH {
        cx.error(path, node.span, format!("`{s}` is {} bytes long", s.len()))
            .with_label(format!(
                "a Unix socket's path holds at most {MAX_SOCKET_PATH} bytes"
            ));
        return None;
    }
    Some(s)
}

fn http_url(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<String> {
    let s = cx.string(node, path)?;
    if s.starts_with("https://") {
        cx.error(
            path,
            node.span,
            format!("`{s}`: tether init speaks plain http://"),
        )
        .with_label("checks and notifications go to local endpoints over plain HTTP")
        .with_hint(
            "for an https:// endpoint, use a command instead, for example `[curl, -fsS, URL]`",
        );
        return None;
    }
    match s.strip_prefix("http://") {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Some(s),
        _ => {
            cx.error(path, node.span, format!("`{s}` is not an http:// URL"))
                .with_label("for example `http://127.0.0.1:8080/ready`");
            None
        }
    }
}

fn step(
    cx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    names: &mut IndexMap<String, Span>,
) -> Option<Step> {
    let f = cx.fields(node, path, Span::point(node.span.start), &STEP)?;
    let before = cx.diags.len();
    let name = cx
        .require(&f, "name", "a DNS label naming the step in logs")
        .and_then(|n| {
            let s = cx.string(n, &f.at("name"))?;
            if !cx.dns_label(&s, &f.at("name"), n.span) {
                return None;
            }
            if let Some(prev) = names.get(&s) {
                cx.error(
                    &f.at("name"),
                    n.span,
                    format!("the name `{s}` is used twice"),
                )
                .with_also(*prev, "first used here");
                return None;
            }
            names.insert(s.clone(), n.span);
            Some(s)
        });
    let command = cx
        .require(
            &f,
            "command",
            "the command to run, as a list: [program, arg, ...]",
        )
        .and_then(|n| cx.command(n, &f.at("command")));
    let fatal = cx.or(&f, "fatal", true, Ctx::bool);
    let timeout = match f.get("timeout") {
        Some(n) => Some(Some(cx.duration(n, &f.at("timeout"))?)),
        None => Some(None),
    };
    let env = cx.or(&f, "env", Default::default(), Ctx::env);
    let workdir = f
        .get("workdir")
        .and_then(|n| absolute_path(cx, n, &f.at("workdir")));
    let user = f.get("user").and_then(|n| user(cx, n, &f.at("user")));
    let built = (|| {
        Some(Step {
            name: name?,
            command: command?,
            fatal: fatal?,
            timeout: timeout?,
            env: env?,
            workdir,
            user,
        })
    })();
    cx.ensure(before, path, node.span, built)
}

fn user(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<String> {
    let s = cx.text(node, path)?;
    let ok = !s.is_empty()
        && s.split(':').count() <= 2
        && s.split(':').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        });
    if !ok {
        cx.error(path, node.span, format!("`{s}` is not a user"))
            .with_label("expected USER, UID, USER:GROUP or UID:GID");
        return None;
    }
    Some(s)
}

fn daemon(
    cx: &mut Ctx<'_>,
    name: &str,
    node: &Node,
    name_span: Span,
) -> (Option<Daemon>, DaemonAt) {
    let path = format!("init.daemons.{name}");
    let mut at = DaemonAt::default();
    let Some(f) = cx.fields(node, &path, name_span, &DAEMON) else {
        return (None, at);
    };
    let before = cx.diags.len();
    let command = cx
        .require(
            &f,
            "command",
            "the program to run, as a list: [program, arg, ...]",
        )
        .and_then(|n| cx.command(n, &f.at("command")));
    let env = cx.or(&f, "env", Default::default(), Ctx::env);
    let workdir = f
        .get("workdir")
        .and_then(|n| absolute_path(cx, n, &f.at("workdir")));
    let user = f.get("user").and_then(|n| user(cx, n, &f.at("user")));
    if let Some(n) = f.get("depends_on") {
        let p = f.at("depends_on");
        match &n.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(dep) = cx.string(item, &format!("{p}[{i}]")) {
                        at.depends_on.insert(dep, (Condition::Ready, item.span));
                    }
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    let c = cx.choice(
                        v,
                        &join(&p, &k.name),
                        &["started", "ready", "completed"],
                        "a dependency condition",
                    );
                    if let Some(c) = c {
                        let c = match c {
                            "started" => Condition::Started,
                            "ready" => Condition::Ready,
                            _ => Condition::Completed,
                        };
                        at.depends_on.insert(k.name.clone(), (c, k.span));
                    }
                }
            }
            _ => {
                cx.error(
                    &p,
                    n.span,
                    format!(
                        "expected a list of daemon names, or name: condition, found {}",
                        n.kind_name()
                    ),
                );
            }
        }
    }
    let readiness = match f.get("readiness") {
        Some(n) => {
            let owner = f.key("readiness").map(|k| k.span).unwrap_or(name_span);
            cx.fields(n, &f.at("readiness"), owner, &CHECK)
                .and_then(|r| {
                    let check = check(
                        cx,
                        &r,
                        &["tcp", "http", "exec", "log", "notify", "none"],
                        owner,
                    )?;
                    let timeout = cx.or(&r, "timeout", DEFAULT_TIMEOUT, Ctx::duration)?;
                    let interval = cx.or(&r, "interval", DEFAULT_INTERVAL, Ctx::duration)?;
                    Some(DaemonReadiness {
                        check,
                        timeout,
                        interval,
                    })
                })
        }
        None => Some(DaemonReadiness {
            check: Check::None,
            timeout: DEFAULT_TIMEOUT,
            interval: DEFAULT_INTERVAL,
        }),
    };
    let liveness = match f.get("liveness") {
        Some(n) => {
            let owner = f.key("liveness").map(|k| k.span).unwrap_or(name_span);
            cx.fields(n, &f.at("liveness"), owner, &LIVENESS)
                .and_then(|r| {
                    let check = check(cx, &r, &["tcp", "http", "exec"], owner)?;
                    let interval = cx.or(&r, "interval", Duration::from_secs(10), Ctx::duration)?;
                    let timeout = cx.or(&r, "timeout", Duration::from_secs(5), Ctx::duration)?;
                    let failure_threshold = r
                        .get("failure_threshold")
                        .map(|n| cx.int_in(n, &r.at("failure_threshold"), 1, 1000))
                        .unwrap_or(Some(3))? as u32;
                    Some(Some(Liveness {
                        check,
                        interval,
                        timeout,
                        failure_threshold,
                    }))
                })
        }
        None => Some(None),
    };
    let (policy, restart) = match f.get("restart") {
        Some(n) => {
            let owner = f.key("restart").map(|k| k.span).unwrap_or(name_span);
            match cx.fields(n, &f.at("restart"), owner, &RESTART) {
                Some(r) => restart(cx, &r),
                None => (None, None),
            }
        }
        None => (Some(RestartPolicy::OnFailure), Some(default_restart())),
    };
    at.policy = policy;
    let on_exit = cx.pick(
        &f,
        "on_exit",
        &[("ignore", OnExit::Ignore), ("shutdown", OnExit::Shutdown)],
        OnExit::Ignore,
        "an exit policy",
    );
    let forward_signals = cx.pick(
        &f,
        "forward_signals",
        &[
            ("group", Forward::Group),
            ("process", Forward::Process),
            ("none", Forward::None),
        ],
        Forward::Group,
        "where forwarded signals go",
    );
    let stop = match f.get("stop") {
        Some(n) => {
            let owner = f.key("stop").map(|k| k.span).unwrap_or(name_span);
            cx.fields(n, &f.at("stop"), owner, &STOP).and_then(|s| {
                let signal = match s.get("signal") {
                    Some(n) => {
                        let t = cx.text(n, &s.at("signal"))?;
                        match Signal::parse(&t) {
                            Some(sig) => sig,
                            None => {
                                cx.error(&s.at("signal"), n.span, format!("`{t}` is not a signal"))
                                    .with_label("for example SIGTERM, SIGINT, SIGQUIT or 15");
                                return None;
                            }
                        }
                    }
                    None => Signal::TERM,
                };
                let grace = match s.get("grace") {
                    Some(n) => Some(cx.duration(n, &s.at("grace"))?),
                    None => None,
                };
                Some(Stop { signal, grace })
            })
        }
        None => Some(Stop {
            signal: Signal::TERM,
            grace: None,
        }),
    };
    let success_codes = match f.get("success_codes") {
        Some(n) => {
            let p = f.at("success_codes");
            cx.seq(n, &p).and_then(|items| {
                let codes: Vec<Option<i64>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| cx.int_in(it, &format!("{p}[{i}]"), 0, 255))
                    .collect();
                codes
                    .into_iter()
                    .map(|c| c.map(|c| c as i32))
                    .collect::<Option<Vec<_>>>()
            })
        }
        None => Some(vec![0]),
    };
    let log_files = match f.get("log_files") {
        Some(n) => {
            let p = f.at("log_files");
            cx.seq(n, &p).and_then(|items| {
                let files: Vec<Option<String>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| absolute_path(cx, it, &format!("{p}[{i}]")))
                    .collect();
                files.into_iter().collect::<Option<Vec<_>>>()
            })
        }
        None => Some(Vec::new()),
    };
    if cx.diags.len() != before {
        return (None, at);
    }
    let built = (|| {
        Some(Daemon {
            name: name.to_owned(),
            command: command?,
            env: env?,
            workdir,
            user,
            depends_on: at
                .depends_on
                .iter()
                .map(|(d, (c, _))| (d.clone(), *c))
                .collect(),
            readiness: readiness?,
            liveness: liveness?,
            restart: restart?,
            on_exit: on_exit?,
            forward_signals: forward_signals?,
            stop: stop?,
            success_codes: success_codes?,
            log_files: log_files?,
        })
    })();
    (cx.ensure(before, &path, name_span, built), at)
}

pub fn default_restart() -> Restart {
    Restart {
        policy: RestartPolicy::OnFailure,
        backoff: default_backoff(),
        max_restarts: None,
    }
}

fn default_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(30),
        multiplier: 2.0,
        reset_after: Duration::from_secs(60),
    }
}

/// The policy when it is valid (the dependency checks need it), and the whole restart section
/// when all of it is.
fn restart(cx: &mut Ctx<'_>, r: &Fields<'_>) -> (Option<RestartPolicy>, Option<Restart>) {
    let policy = cx.pick(
        r,
        "policy",
        &[
            ("never", RestartPolicy::Never),
            ("on-failure", RestartPolicy::OnFailure),
            ("always", RestartPolicy::Always),
        ],
        RestartPolicy::OnFailure,
        "a restart policy",
    );
    let backoff = match r.get("backoff") {
        Some(n) => {
            let owner = r.key("backoff").map(|k| k.span).unwrap_or(r.span);
            cx.fields(n, &r.at("backoff"), owner, &BACKOFF)
                .and_then(|b| {
                    let d = default_backoff();
                    let initial = cx.or(&b, "initial", d.initial, Ctx::delay);
                    let max = cx.or(&b, "max", d.max, Ctx::delay);
                    let multiplier = match b.get("multiplier") {
                        Some(n) => cx.number(n, &b.at("multiplier")).and_then(|m| {
                            if (1.0..=100.0).contains(&m) {
                                Some(m)
                            } else {
                                cx.error(
                                    &b.at("multiplier"),
                                    n.span,
                                    format!("{m} is out of range"),
                                )
                                .with_label("expected a number from 1 to 100");
                                None
                            }
                        }),
                        None => Some(d.multiplier),
                    };
                    let reset_after = cx.or(&b, "reset_after", d.reset_after, Ctx::duration);
                    let (initial, max) = (initial?, max?);
                    if initial > max {
                        let span = b
                            .key("max")
                            .or(b.key("initial"))
                            .map(|k| k.span)
                            .unwrap_or(owner);
                        cx.error(
                            &b.at("max"),
                            span,
                            format!(
                                "the longest backoff ({max}) is shorter than the first ({initial})"
                            ),
                        );
                        return None;
                    }
                    Some(Backoff {
                        initial,
                        max,
                        multiplier: multiplier?,
                        reset_after: reset_after?,
                    })
                })
        }
        None => Some(default_backoff()),
    };
    let max_restarts = match r.get("max_restarts") {
        Some(n) => cx
            .int_in(n, &r.at("max_restarts"), 0, u32::MAX as i64)
            .map(|m| Some(m as u32)),
        None => Some(None),
    };
    let whole = (|| {
        Some(Restart {
            policy: policy?,
            backoff: backoff?,
            max_restarts: max_restarts?,
        })
    })();
    (policy, whole)
}

/// A daemon readiness or liveness check; `modes` are the ones allowed here.
fn check(cx: &mut Ctx<'_>, r: &Fields<'_>, modes: &[&str], owner: Span) -> Option<Check> {
    let mode = match r.get("mode") {
        Some(n) => cx.choice(n, &r.at("mode"), modes, "a check mode")?,
        None => {
            cx.error(&r.at("mode"), owner, "`mode` is required")
                .with_hint(format!("one of {}", one_of(modes)));
            return None;
        }
    };
    let applies: &[(&str, &[&str])] = &[
        ("host", &["tcp"]),
        ("port", &["tcp"]),
        ("url", &["http"]),
        ("command", &["exec"]),
        ("pattern", &["log"]),
    ];
    let mut ok = true;
    for (field, for_modes) in applies {
        if let Some(k) = r.key(field)
            && !for_modes.contains(&mode)
        {
            cx.error(
                &r.at(field),
                k.span,
                format!("`{field}` does not apply to mode `{mode}`"),
            )
            .with_hint(format!("`{field}` is used by mode {}", one_of(for_modes)));
            ok = false;
        }
    }
    let check = match mode {
        "tcp" => {
            let port = cx
                .require(r, "port", "the port to dial, 1 to 65535")
                .and_then(|n| cx.port(n, &r.at("port")));
            let host = match r.get("host") {
                Some(n) => cx.nonempty_string(n, &r.at("host")),
                None => Some("127.0.0.1".to_owned()),
            };
            Check::Tcp {
                host: host?,
                port: port?,
            }
        }
        "http" => {
            let url = cx
                .require(r, "url", "the URL to GET; a 2xx answer passes")
                .and_then(|n| http_url(cx, n, &r.at("url")));
            Check::Http { url: url? }
        }
        "exec" => Check::Exec {
            command: cx
                .require(r, "command", "the command to run; exit 0 passes")
                .and_then(|n| cx.command(n, &r.at("command")))?,
        },
        "log" => Check::Log {
            pattern: cx
                .require(
                    r,
                    "pattern",
                    "a regular expression matched against each line the daemon prints",
                )
                .and_then(|n| regex(cx, n, &r.at("pattern")))?,
        },
        "notify" => Check::Notify,
        _ => Check::None,
    };
    ok.then_some(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_is_the_parent_of_its_children() {
        for s in SHAPES {
            for c in s.children {
                assert!(
                    c.parent.is_some_and(|p| std::ptr::eq(p, *s)),
                    "{} lists {} as a child, but it names another parent",
                    s.what,
                    c.what
                );
            }
            if let Some(p) = s.parent {
                assert!(
                    p.children.iter().any(|c| std::ptr::eq(*c, *s)),
                    "{} names {} as its parent, which does not list it",
                    s.what,
                    p.what
                );
            }
        }
    }

    #[test]
    fn a_field_one_level_off_is_named_with_the_words_of_the_messages() {
        assert_eq!(
            INTERFACE.one_level_off("aliases"),
            ["`aliases` is a field of the sidecar, not of its interface"]
        );
        assert_eq!(
            DAEMON.one_level_off("timeout"),
            ["`timeout` is a field of its readiness or its liveness, not of the daemon"]
        );
        assert!(SIDECAR.one_level_off("colour").is_empty());
    }
}
