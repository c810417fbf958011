//! The sidecar's configuration: the container contract's environment variables and the optional
//! `SIDECAR_CONFIG` file. Everything is checked before anything starts, and every problem is
//! reported at once: a variable by its name and what it allows, the file by line and column.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_spec::check::{Ctx, Shape};
use tether_spec::diag::{Diagnostic, Sources};
use tether_spec::yaml;

use crate::file_error::FileError;
use crate::policy::{Action, Grant, valid_name};
use crate::topic;

/// Where the sidecar dials the Bus API when `SIDECAR_BUS_API_URL` is not set.
pub const DEFAULT_BUS_API_URL: &str = "bus-api:8443";
/// Where the plugin reaches the sidecar when `SIDECAR_ADDR` is not set.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9191);
/// Where the health server listens when `SIDECAR_HEALTH_ADDR` is not set.
pub const DEFAULT_HEALTH_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9192);

/// A valid configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub instance_id: String,
    pub pool_type: String,
    pub image: String,
    pub requested_grants: Vec<Grant>,
    pub tags: Vec<String>,
    /// The Bus API's addresses, in the order given, each `http://HOST:PORT`, or all
    /// `https://` when the URL says so or a CA file is given. A name may resolve to several
    /// replicas: the sidecar resolves it when it connects ([`super::link`]).
    pub bus_api_urls: Vec<String>,
    /// The plugin's listener.
    pub addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub settings: Settings,
}

/// What `SIDECAR_CONFIG` may set; each has a default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The ack deadline of a subscription that names none.
    pub ack_deadline: Duration,
    /// Deliveries of one message before it goes to `dlq.<topic>`, for a subscription that
    /// names none.
    pub max_deliver: u32,
    /// How long a SIGTERM waits for in-flight messages.
    pub drain_timeout: Duration,
    pub health_interval: Duration,
    /// An answer later than this is a failed check.
    pub health_timeout: Duration,
    /// Failed checks in a row that turn `/healthz` 503.
    pub health_failures: u32,
    /// The most bytes the outbox holds; a publish past it is refused.
    pub outbox_size: u64,
    /// Where the outbox lives.
    pub data_dir: PathBuf,
    /// Step 1's deadline.
    pub connect_timeout: Duration,
    /// Step 7's deadline: how long to wait for the plugin.
    pub accept_timeout: Duration,
    /// Deliveries the plugin holds unacked at once.
    pub max_in_flight: u32,
    /// The token the policy asks this instance (or its pool) for, read from `token_file`.
    pub token: Option<Secret>,
    /// The CA that signs the Bus API's certificate; TLS when set.
    pub ca_file: Option<PathBuf>,
    /// The name to check in the Bus API's certificate [default: the URL's host].
    pub tls_server_name: Option<String>,
}

impl Settings {
    /// The defaults, with the outbox under `.tether/sidecar/INSTANCE`.
    pub fn defaults(instance_id: &str) -> Self {
        Self {
            ack_deadline: Duration::from_secs(30),
            max_deliver: 5,
            drain_timeout: Duration::from_secs(20),
            health_interval: Duration::from_secs(10),
            health_timeout: Duration::from_secs(5),
            health_failures: 3,
            outbox_size: 256 << 20,
            data_dir: Path::new(".tether/sidecar").join(instance_id),
            connect_timeout: Duration::from_secs(60),
            accept_timeout: Duration::from_secs(300),
            max_in_flight: 64,
            token: None,
            ca_file: None,
            tls_server_name: None,
        }
    }
}

/// A token: never printed, not even by `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One environment variable that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvError {
    pub variable: &'static str,
    pub message: String,
    /// What the variable allows.
    pub allowed: String,
}

impl EnvError {
    /// `INSTANCE_ID is not set`, `REQUESTED_GRANTS[0].action ...`.
    pub fn headline(&self) -> String {
        let gap = if self.message.starts_with('[') {
            ""
        } else {
            " "
        };
        format!("{}{gap}{}", self.variable, self.message)
    }
}

impl std::fmt::Display for EnvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.headline(), self.allowed)
    }
}

/// Everything wrong with the environment and the config file.
#[derive(Debug)]
pub struct ConfigError {
    pub env: Vec<EnvError>,
    pub file: Option<FileError>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut lines: Vec<String> = self.env.iter().map(ToString::to_string).collect();
        if let Some(file) = &self.file {
            lines.extend(file.lines());
        }
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

const INSTANCE_ALLOWED: &str =
    "1 to 128 letters, digits, `.`, `-` or `_`, unique per instance: oms-1";
const POOL_ALLOWED: &str = "1 to 128 letters, digits, `.`, `-` or `_`: SignalPool";
const GRANTS_ALLOWED: &str = "a JSON array of {\"topic\": PATTERN, \"action\": \"publish\" or \"subscribe\"}: [{\"topic\":\"signals.>\",\"action\":\"publish\"}]";
const ADDR_ALLOWED: &str = "an IP address and a port: 127.0.0.1:9191";
const URL_ALLOWED: &str = "HOST:PORT, or http://HOST:PORT, or https://HOST:PORT: bus-api:8443";
const URLS_ALLOWED: &str = "a comma-separated list of HOST:PORT, http://HOST:PORT or https://HOST:PORT, one scheme for all: bus-api-1:8443,bus-api-2:8443";

/// Reads the configuration from environment variables (`vars`) and the file `SIDECAR_CONFIG`
/// names, relative to `cwd`.
pub fn from_env(vars: &BTreeMap<String, String>, cwd: &Path) -> Result<Config, ConfigError> {
    let mut errors = Vec::new();
    let mut err = |variable, message: String, allowed: &str| {
        errors.push(EnvError {
            variable,
            message,
            allowed: allowed.to_owned(),
        });
    };
    let get = |name: &str| vars.get(name).map(String::as_str);

    let mut name = |variable: &'static str, allowed: &str| match get(variable) {
        None => {
            err(variable, "is not set".into(), allowed);
            String::new()
        }
        Some(v) if !valid_name(v) => {
            err(variable, format!("`{v}` is not a valid name"), allowed);
            String::new()
        }
        Some(v) => v.to_owned(),
    };
    let instance_id = name("INSTANCE_ID", INSTANCE_ALLOWED);
    let pool_type = name("POOL_TYPE", POOL_ALLOWED);
    let image = get("IMAGE").unwrap_or_default().to_owned();

    let requested_grants = match get("REQUESTED_GRANTS") {
        None => Vec::new(),
        Some(v) if v.trim().is_empty() => Vec::new(),
        Some(v) => match parse_grants(v) {
            Ok(g) => g,
            Err(message) => {
                err("REQUESTED_GRANTS", message, GRANTS_ALLOWED);
                Vec::new()
            }
        },
    };
    let tags: Vec<String> = get("TAGS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();

    let mut addr = |variable: &'static str, default: SocketAddr| match get(variable) {
        None => default,
        Some(v) => match parse_addr(v) {
            Some(a) => a,
            None => {
                err(variable, format!("`{v}` is not an address"), ADDR_ALLOWED);
                default
            }
        },
    };
    let listen = addr("SIDECAR_ADDR", DEFAULT_ADDR);
    let health_addr = addr("SIDECAR_HEALTH_ADDR", DEFAULT_HEALTH_ADDR);

    let url = get("SIDECAR_BUS_API_URL").unwrap_or(DEFAULT_BUS_API_URL);
    let bus_targets = match parse_targets(url) {
        Ok(t) => Some(t),
        Err((message, allowed)) => {
            err("SIDECAR_BUS_API_URL", message, allowed);
            None
        }
    };

    let mut settings = Settings::defaults(if instance_id.is_empty() {
        "unnamed"
    } else {
        &instance_id
    });
    let mut file_error = None;
    if let Some(path) = get("SIDECAR_CONFIG").filter(|p| !p.is_empty()) {
        let path = cwd.join(path);
        if let Err(e) = load_settings(&path, &mut settings) {
            file_error = Some(e);
        }
    }

    if !errors.is_empty() || file_error.is_some() {
        return Err(ConfigError {
            env: errors,
            file: file_error,
        });
    }
    let (scheme, authorities) = bus_targets.expect("checked above");
    let scheme = if scheme == "https" || settings.ca_file.is_some() {
        "https"
    } else {
        "http"
    };
    Ok(Config {
        instance_id,
        pool_type,
        image,
        requested_grants,
        tags,
        bus_api_urls: authorities
            .iter()
            .map(|a| format!("{scheme}://{a}"))
            .collect(),
        addr: listen,
        health_addr,
        settings,
    })
}

/// `[{"topic": "...", "action": "publish"}]`, each checked.
fn parse_grants(text: &str) -> Result<Vec<Grant>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("is not valid JSON: {e}"))?;
    let serde_json::Value::Array(items) = value else {
        return Err("is not a JSON array".into());
    };
    let mut grants = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let serde_json::Value::Object(fields) = item else {
            return Err(format!("[{i}] is not an object with `topic` and `action`"));
        };
        if let Some(k) = fields.keys().find(|k| *k != "topic" && *k != "action") {
            return Err(format!(
                "[{i}] has an unknown field `{k}`: a grant has `topic` and `action`"
            ));
        }
        let topic = match fields.get("topic") {
            Some(serde_json::Value::String(t)) => t.clone(),
            Some(_) => return Err(format!("[{i}].topic is not a string")),
            None => return Err(format!("[{i}] has no `topic`")),
        };
        topic::validate_pattern(&topic).map_err(|e| format!("[{i}].topic: {e}"))?;
        let action = match fields.get("action") {
            Some(serde_json::Value::String(a)) if a == "publish" => Action::Publish,
            Some(serde_json::Value::String(a)) if a == "subscribe" => Action::Subscribe,
            Some(serde_json::Value::String(a)) => {
                return Err(format!("[{i}].action `{a}` is not an action"));
            }
            Some(_) => return Err(format!("[{i}].action is not a string")),
            None => return Err(format!("[{i}] has no `action`")),
        };
        grants.push(Grant { topic, action });
    }
    Ok(grants)
}

/// An IP address and a port; `localhost:PORT` is 127.0.0.1.
pub fn parse_addr(v: &str) -> Option<SocketAddr> {
    let v = v.trim();
    if let Some(port) = v.strip_prefix("localhost:") {
        return Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port.parse().ok()?,
        ));
    }
    v.parse().ok()
}

/// `(scheme, [host:port, ...])` of `SIDECAR_BUS_API_URL`: one address, or a comma-separated
/// list of them with one scheme. An error is the message and what is allowed: a single
/// address's messages are those of [`parse_target`].
fn parse_targets(value: &str) -> Result<(&'static str, Vec<String>), (String, &'static str)> {
    if !value.contains(',') {
        return parse_target(value)
            .map(|(scheme, a)| (scheme, vec![a]))
            .map_err(|m| (m, URL_ALLOWED));
    }
    let mut scheme = None;
    let mut out = Vec::new();
    for (i, item) in value.split(',').map(str::trim).enumerate() {
        let n = i + 1;
        if item.is_empty() {
            return Err((
                format!("`{value}` has an empty address (number {n})"),
                URLS_ALLOWED,
            ));
        }
        let (s, authority) = parse_target(item)
            .map_err(|m| (format!("`{value}`: address {n}: {m}"), URLS_ALLOWED))?;
        match scheme {
            Some(first) if first != s => {
                return Err((
                    format!(
                        "`{value}` mixes the schemes {first} and {s} (address {n}): one scheme for all"
                    ),
                    URLS_ALLOWED,
                ));
            }
            _ => scheme = Some(s),
        }
        if !out.contains(&authority) {
            out.push(authority);
        }
    }
    Ok((scheme.unwrap_or("http"), out))
}

/// `(scheme, host:port)` of one Bus API address.
pub(crate) fn parse_target(url: &str) -> Result<(&'static str, String), String> {
    let (scheme, rest) = match url.split_once("://") {
        None => ("http", url),
        Some(("http", rest)) => ("http", rest),
        Some(("https", rest)) => ("https", rest),
        Some((other, _)) => return Err(format!("`{url}` has the scheme `{other}`")),
    };
    let rest = rest.trim_end_matches('/');
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(format!("`{url}` has no port"));
    };
    if host.is_empty() || rest.contains('/') || port.parse::<u16>().is_err() {
        return Err(format!("`{url}` is not HOST:PORT"));
    }
    Ok((scheme, rest.to_owned()))
}

const FIELDS: &[&str] = &[
    "ack_deadline",
    "max_deliver",
    "drain_timeout",
    "health_interval",
    "health_timeout",
    "health_failures",
    "outbox_size",
    "data_dir",
    "connect_timeout",
    "accept_timeout",
    "max_in_flight",
    "token_file",
    "ca_file",
    "tls_server_name",
];

static SHAPE: Shape = Shape {
    what: "the sidecar config",
    fields: FIELDS,
    parent: None,
    children: &[],
};

/// Reads the YAML file at `path` over `settings`; paths in it are relative to its folder.
pub fn load_settings(path: &Path, settings: &mut Settings) -> Result<(), FileError> {
    let name = path.display().to_string();
    let mut sources = Sources::default();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let file = sources.add(name.clone(), "");
            return Err(FileError {
                what: "sidecar config",
                sources,
                diagnostics: vec![
                    Diagnostic::new(format!(
                        "cannot read the sidecar config {name} (SIDECAR_CONFIG): {e}"
                    ))
                    .in_file(file),
                ],
            });
        }
    };
    let file = sources.add(name, text.clone());
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut diags = Vec::new();
    match yaml::parse(&text) {
        Err(d) => diags.push(d.in_file(file)),
        Ok(root) => apply(&root, &base, settings, &mut Ctx::new(file, &mut diags)),
    }
    // In the order of the file, as a reader goes.
    diags.sort_by_key(|d| d.span.map(|s| (s.start.line, s.start.column)));
    if diags.is_empty() {
        Ok(())
    } else {
        Err(FileError {
            what: "sidecar config",
            sources,
            diagnostics: diags,
        })
    }
}

fn apply(root: &yaml::Node, base: &Path, s: &mut Settings, cx: &mut Ctx<'_>) {
    let Some(fields) = cx.fields(root, "", root.span, &SHAPE) else {
        return;
    };
    for (key, node) in fields.entries {
        if node.is_null() || !FIELDS.contains(&key.name.as_str()) {
            continue;
        }
        let p = key.name.as_str();
        let duration = |cx: &mut Ctx<'_>, out: &mut Duration| {
            if let Some(d) = cx.duration(node, p) {
                *out = d.0;
            }
        };
        match p {
            "ack_deadline" => duration(cx, &mut s.ack_deadline),
            "drain_timeout" => duration(cx, &mut s.drain_timeout),
            "health_interval" => duration(cx, &mut s.health_interval),
            "health_timeout" => duration(cx, &mut s.health_timeout),
            "connect_timeout" => duration(cx, &mut s.connect_timeout),
            "accept_timeout" => duration(cx, &mut s.accept_timeout),
            "max_deliver" => {
                if let Some(n) = cx.int_in(node, p, 1, 1000) {
                    s.max_deliver = n as u32;
                }
            }
            "health_failures" => {
                if let Some(n) = cx.int_in(node, p, 1, 100) {
                    s.health_failures = n as u32;
                }
            }
            "max_in_flight" => {
                if let Some(n) = cx.int_in(node, p, 1, 10_000) {
                    s.max_in_flight = n as u32;
                }
            }
            "outbox_size" => {
                if let Some(n) = cx.size(node, p) {
                    s.outbox_size = n;
                }
            }
            "data_dir" => {
                if let Some(d) = cx.nonempty_string(node, p) {
                    s.data_dir = base.join(d);
                }
            }
            "ca_file" => {
                if let Some(f) = cx.nonempty_string(node, p) {
                    let full = base.join(f);
                    match std::fs::metadata(&full) {
                        Ok(_) => s.ca_file = Some(full),
                        Err(e) => {
                            cx.error(
                                p,
                                node.span,
                                format!("cannot read the CA file {}: {e}", full.display()),
                            )
                            .with_hint(
                                "a path relative to the config file's folder, or an absolute one",
                            );
                        }
                    }
                }
            }
            "tls_server_name" => {
                if let Some(n) = cx.nonempty_string(node, p) {
                    s.tls_server_name = Some(n);
                }
            }
            "token_file" => {
                if let Some(f) = cx.nonempty_string(node, p) {
                    let full = base.join(f);
                    match std::fs::read_to_string(&full) {
                        Ok(t) if !t.trim().is_empty() => s.token = Some(Secret(t.trim().into())),
                        Ok(_) => {
                            cx.error(
                                p,
                                node.span,
                                format!("the token file {} is empty", full.display()),
                            );
                        }
                        Err(e) => {
                            cx.error(
                                p,
                                node.span,
                                format!("cannot read the token file {}: {e}", full.display()),
                            )
                            .with_hint(
                                "a path relative to the config file's folder, or an absolute one",
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }
    // Pointed at whichever of the two the file sets (the other is its default).
    if s.health_timeout > s.health_interval
        && let Some((k, _)) = fields
            .entries
            .iter()
            .find(|(k, _)| k.name == "health_timeout")
            .or_else(|| {
                fields
                    .entries
                    .iter()
                    .find(|(k, _)| k.name == "health_interval")
            })
    {
        let path = k.name.clone();
        cx.error(
            &path,
            k.span,
            format!(
                "health_timeout ({}) is longer than health_interval ({})",
                humanize(s.health_timeout),
                humanize(s.health_interval)
            ),
        )
        .with_hint("a check must end before the next one starts");
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn errors(pairs: &[(&str, &str)]) -> Vec<String> {
        from_env(&env(pairs), Path::new("/nonexistent"))
            .unwrap_err()
            .to_string()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_minimum_is_an_instance_and_a_pool() {
        let c = from_env(
            &env(&[("INSTANCE_ID", "oms-1"), ("POOL_TYPE", "OMSPool")]),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(c.instance_id, "oms-1");
        assert_eq!(c.pool_type, "OMSPool");
        assert_eq!(c.bus_api_urls, ["http://bus-api:8443"]);
        assert_eq!(c.addr, "127.0.0.1:9191".parse().unwrap());
        assert_eq!(c.health_addr, "0.0.0.0:9192".parse().unwrap());
        assert!(c.requested_grants.is_empty());
        assert_eq!(c.settings, Settings::defaults("oms-1"));
        assert_eq!(c.settings.data_dir, Path::new(".tether/sidecar/oms-1"));
    }

    #[test]
    fn every_variable_is_read() {
        let c = from_env(
            &env(&[
                ("INSTANCE_ID", "sig-1"),
                ("POOL_TYPE", "SignalPool"),
                ("IMAGE", "signals:1.2"),
                (
                    "REQUESTED_GRANTS",
                    r#"[{"topic":"signals.>","action":"publish"},{"topic":"orders.*","action":"subscribe"}]"#,
                ),
                ("TAGS", "eu, fast,,"),
                ("SIDECAR_BUS_API_URL", "https://bus.internal:9443/"),
                ("SIDECAR_ADDR", "localhost:7000"),
                ("SIDECAR_HEALTH_ADDR", "127.0.0.1:7001"),
            ]),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(c.image, "signals:1.2");
        assert_eq!(
            c.requested_grants,
            vec![
                Grant {
                    topic: "signals.>".into(),
                    action: Action::Publish
                },
                Grant {
                    topic: "orders.*".into(),
                    action: Action::Subscribe
                },
            ]
        );
        assert_eq!(c.tags, vec!["eu", "fast"]);
        assert_eq!(c.bus_api_urls, ["https://bus.internal:9443"]);
        assert_eq!(c.addr, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.health_addr, "127.0.0.1:7001".parse().unwrap());
    }

    #[test]
    fn bad_values_are_each_named_with_what_is_allowed() {
        assert_eq!(
            errors(&[
                ("POOL_TYPE", "Signal Pool"),
                ("REQUESTED_GRANTS", r#"[{"topic":"a.b","action":"pub"}]"#),
                ("SIDECAR_ADDR", "9191"),
                ("SIDECAR_BUS_API_URL", "grpc://bus:1"),
            ]),
            vec![
                format!("INSTANCE_ID is not set ({INSTANCE_ALLOWED})"),
                format!("POOL_TYPE `Signal Pool` is not a valid name ({POOL_ALLOWED})"),
                format!("REQUESTED_GRANTS[0].action `pub` is not an action ({GRANTS_ALLOWED})"),
                format!("SIDECAR_ADDR `9191` is not an address ({ADDR_ALLOWED})"),
                "SIDECAR_BUS_API_URL `grpc://bus:1` has the scheme `grpc` (HOST:PORT, or http://HOST:PORT, or https://HOST:PORT: bus-api:8443)".to_owned(),
            ]
        );
    }

    #[test]
    fn the_bus_api_may_be_a_list_of_addresses_with_one_scheme() {
        let base = [("INSTANCE_ID", "a"), ("POOL_TYPE", "P")];
        let urls = |value: &str| {
            let mut e = base.to_vec();
            e.push(("SIDECAR_BUS_API_URL", value));
            from_env(&env(&e), Path::new("/")).map(|c| c.bus_api_urls)
        };
        assert_eq!(
            urls("bus-api-1:8443,bus-api-2:8443").unwrap(),
            ["http://bus-api-1:8443", "http://bus-api-2:8443"]
        );
        assert_eq!(
            urls(" https://a:1/ , https://b:2,https://a:1").unwrap(),
            ["https://a:1", "https://b:2"],
            "spaces, a trailing slash and a repeated address"
        );
        assert_eq!(
            urls("http://127.0.0.1:1,127.0.0.1:2").unwrap(),
            ["http://127.0.0.1:1", "http://127.0.0.1:2"],
            "HOST:PORT is http://"
        );

        let one = |value: &str| {
            let mut e = base.to_vec();
            e.push(("SIDECAR_BUS_API_URL", value));
            errors(&e)
        };
        let allowed = format!("({URLS_ALLOWED})");
        for (value, message) in [
            (
                "http://a:1,https://b:2",
                "`http://a:1,https://b:2` mixes the schemes http and https (address 2): one scheme for all",
            ),
            (
                "https://a:1,b:2",
                "`https://a:1,b:2` mixes the schemes https and http (address 2): one scheme for all",
            ),
            ("a:1,,b:2", "`a:1,,b:2` has an empty address (number 2)"),
            ("a:1,", "`a:1,` has an empty address (number 2)"),
            ("a:1,b", "`a:1,b`: address 2: `b` has no port"),
            (
                "grpc://a:1,a:2",
                "`grpc://a:1,a:2`: address 1: `grpc://a:1` has the scheme `grpc`",
            ),
            (
                "a:1,b:99999",
                "`a:1,b:99999`: address 2: `b:99999` is not HOST:PORT",
            ),
        ] {
            assert_eq!(
                one(value),
                vec![format!("SIDECAR_BUS_API_URL {message} {allowed}")],
                "{value}"
            );
        }
        // One address keeps its messages and what it allows.
        assert_eq!(
            one("bus"),
            vec![format!(
                "SIDECAR_BUS_API_URL `bus` has no port ({URL_ALLOWED})"
            )]
        );
    }

    #[test]
    fn malformed_grants_say_where() {
        let base = [("INSTANCE_ID", "a"), ("POOL_TYPE", "P")];
        let one = |grants: &str| {
            let mut e = base.to_vec();
            e.push(("REQUESTED_GRANTS", grants));
            errors(&e)[0].clone()
        };
        assert!(
            one("[{topic").starts_with(
                "REQUESTED_GRANTS is not valid JSON: key must be a string at line 1 column 3 ("
            ),
            "{}",
            one("[{topic")
        );
        assert!(one(r#"{"topic":"a"}"#).starts_with("REQUESTED_GRANTS is not a JSON array ("));
        assert!(
            one(r#"[{"topic":"a..b","action":"publish"}]"#).starts_with(
                "REQUESTED_GRANTS[0].topic: topic `a..b`: token 2 is empty (two dots, or a dot at an end) ("
            )
        );
        assert!(
            one(r#"[{"topic":"a","action":"publish","qos":1}]"#)
                .starts_with("REQUESTED_GRANTS[0] has an unknown field `qos`")
        );
        assert!(one(r#"[{"action":"publish"}]"#).starts_with("REQUESTED_GRANTS[0] has no `topic`"));
    }

    #[test]
    fn the_config_file_is_read_and_checked_with_positions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
        std::fs::write(
            dir.path().join("sidecar.yaml"),
            "drain_timeout: 5s\nhealth_interval: 1s\nhealth_timeout: 500ms\noutbox_size: 1MiB\ntoken_file: token\ndata_dir: state\n",
        )
        .unwrap();
        let c = from_env(
            &env(&[
                ("INSTANCE_ID", "a"),
                ("POOL_TYPE", "P"),
                ("SIDECAR_CONFIG", "sidecar.yaml"),
            ]),
            dir.path(),
        )
        .unwrap();
        assert_eq!(c.settings.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.settings.health_interval, Duration::from_secs(1));
        assert_eq!(c.settings.health_timeout, Duration::from_millis(500));
        assert_eq!(c.settings.outbox_size, 1 << 20);
        assert_eq!(c.settings.token, Some(Secret("s3cret".into())));
        assert_eq!(c.settings.data_dir, dir.path().join("state"));
        assert!(!format!("{:?}", c.settings).contains("s3cret"));

        std::fs::write(
            dir.path().join("bad.yaml"),
            "drain_timeout: soon\nhealth_intervall: 1s\nmax_in_flight: 0\n",
        )
        .unwrap();
        let e = from_env(
            &env(&[
                ("INSTANCE_ID", "a"),
                ("POOL_TYPE", "P"),
                ("SIDECAR_CONFIG", "bad.yaml"),
            ]),
            dir.path(),
        )
        .unwrap_err();
        let file = e.file.unwrap();
        let name = dir.path().join("bad.yaml").display().to_string();
        let lines = file.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines,
            vec![
                format!(
                    "{name}:1:16: drain_timeout: `soon` is not a duration (use 500ms, 30s, 2m, 1h or a number of seconds)"
                ),
                format!(
                    "{name}:2:1: health_intervall: unknown field `health_intervall` in the sidecar config"
                ),
                format!("{name}:3:16: max_in_flight: 0 is out of range"),
            ]
        );
    }

    #[test]
    fn a_health_interval_shorter_than_the_default_timeout_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.yaml"), "health_interval: 2s\n").unwrap();
        let e = from_env(
            &env(&[
                ("INSTANCE_ID", "a"),
                ("POOL_TYPE", "P"),
                ("SIDECAR_CONFIG", "s.yaml"),
            ]),
            dir.path(),
        )
        .unwrap_err();
        let name = dir.path().join("s.yaml").display().to_string();
        assert_eq!(
            e.file.unwrap().lines(),
            vec![format!(
                "{name}:1:1: health_interval: health_timeout (5s) is longer than health_interval (2s)"
            )]
        );
    }

    #[test]
    fn a_missing_config_file_is_named() {
        let e = errors(&[
            ("INSTANCE_ID", "a"),
            ("POOL_TYPE", "P"),
            ("SIDECAR_CONFIG", "/nonexistent/sidecar.yaml"),
        ]);
        assert!(
            e[0].starts_with("/nonexistent/sidecar.yaml: cannot read the sidecar config /nonexistent/sidecar.yaml (SIDECAR_CONFIG): "),
            "{e:?}"
        );
    }
}
