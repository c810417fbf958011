//! The bus's policy file: which grants each pool type and each instance may have, and the token
//! each must present.
//!
//! ```yaml
//! pools:
//!   SignalPool:
//!     grants:
//!       - { topic: "signals.>", action: publish }
//!       - { topic: "orders.*", action: subscribe }
//!     token_file: signal.token        # relative to the policy file
//! instances:
//!   oms-1:
//!     grants: [{ topic: "orders.>", action: publish }]
//!     token_file: oms-1.token
//! ```
//!
//! An instance's grants with no `token_file` of its own go to anyone who registers with its id:
//! a Register names its own pool type, and one without a token asks for none. [`load`] warns
//! of each such entry ([`Policy::unguarded`]).
//!
//! Validated on tether-spec's positioned YAML tree, so every problem is reported at once with its
//! file, line and column, in the same shape as `tether.yaml`'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tether_bus_proto::v1;
use tether_spec::diag::{Diagnostic, FileId, Sources, Span};
use tether_spec::yaml::{self, Node, Typed, Value};

use crate::file_error::FileError;
use crate::topic;

/// What a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Publish,
    Subscribe,
}

impl Action {
    pub fn word(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
        }
    }
}

impl Action {
    /// From the protocol's enum value; `None` for unspecified or unknown.
    pub fn from_proto(value: i32) -> Option<Self> {
        match v1::Action::try_from(value).ok()? {
            v1::Action::Publish => Some(Self::Publish),
            v1::Action::Subscribe => Some(Self::Subscribe),
            v1::Action::Unspecified => None,
        }
    }

    pub fn to_proto(self) -> v1::Action {
        match self {
            Self::Publish => v1::Action::Publish,
            Self::Subscribe => v1::Action::Subscribe,
        }
    }
}

/// An instance id, pool type or queue group's name: 1 to 128 letters, digits, `.`, `-`, `_`.
pub fn valid_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// `action` on the topics `topic` (a valid pattern) matches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    pub topic: String,
    pub action: Action,
}

impl Grant {
    pub fn to_proto(&self) -> v1::Grant {
        v1::Grant {
            topic: self.topic.clone(),
            action: self.action.to_proto() as i32,
        }
    }

    /// `None` when the action is unspecified or unknown.
    pub fn from_proto(g: &v1::Grant) -> Option<Self> {
        Some(Self {
            topic: g.topic.clone(),
            action: Action::from_proto(g.action)?,
        })
    }
}

/// What the policy says about one pool type or one instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub grants: Vec<Grant>,
    /// The token read from `token_file`, trimmed.
    pub token: Option<String>,
}

/// A validated policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub pools: BTreeMap<String, Entry>,
    pub instances: BTreeMap<String, Entry>,
    /// The `instances:` entries that give grants and name no `token_file`, in the order of the
    /// file: anyone who registers with that instance id gets their grants.
    pub unguarded: Vec<Unguarded>,
}

/// An `instances:` entry with grants and no `token_file`. No pool's token guards it: a
/// Register names its own pool type, and one the policy gives no token (or does not name at
/// all) asks for none, so whoever reaches the bus and registers as this instance is given its
/// grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unguarded {
    pub instance: String,
    /// Where its name is written: 1-based line and column.
    pub line: usize,
    pub column: usize,
}

impl Unguarded {
    /// The warning, naming the policy file as `file`.
    pub fn warning(&self, file: &str) -> String {
        format!(
            "{file}:{}:{}: instances.{}: no token_file: its grants go to anyone who registers as \
             instance `{}` (a Register names its own pool type, and one without a token asks for \
             none); give it a token_file",
            self.line, self.column, self.instance, self.instance
        )
    }
}

/// A requested grant the policy does not allow, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub grant: Grant,
    pub reason: String,
}

/// Whether a registering instance presented the token its policy asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    Ok,
    Missing { of: String },
    Wrong { of: String },
}

impl Policy {
    /// Checks the token an instance presented: the instance's token_file wins over its pool's.
    pub fn check_token(&self, instance: &str, pool: &str, token: Option<&str>) -> TokenCheck {
        let (expected, of) = match (self.instances.get(instance), self.pools.get(pool)) {
            (Some(Entry { token: Some(t), .. }), _) => (t, format!("instance `{instance}`")),
            (_, Some(Entry { token: Some(t), .. })) => (t, format!("pool `{pool}`")),
            _ => return TokenCheck::Ok,
        };
        match token {
            None => TokenCheck::Missing { of },
            Some(t) if constant_time_eq(t.trim().as_bytes(), expected.as_bytes()) => TokenCheck::Ok,
            Some(_) => TokenCheck::Wrong { of },
        }
    }

    /// Splits the requested grants into those the policy allows for this instance of this pool
    /// and those it does not, each refused by name.
    pub fn decide(
        &self,
        instance: &str,
        pool: &str,
        requested: &[Grant],
    ) -> (Vec<Grant>, Vec<Refused>) {
        let pool_entry = self.pools.get(pool);
        let inst_entry = self.instances.get(instance);
        let allowed: Vec<&Grant> = pool_entry
            .into_iter()
            .chain(inst_entry)
            .flat_map(|e| &e.grants)
            .collect();
        let mut granted = Vec::new();
        let mut refused = Vec::new();
        for g in requested {
            if allowed
                .iter()
                .any(|a| a.action == g.action && topic::covers(&a.topic, &g.topic))
            {
                granted.push(g.clone());
                continue;
            }
            let reason = if pool_entry.is_none() && inst_entry.is_none() {
                format!("the policy names neither pool type `{pool}` nor instance `{instance}`")
            } else {
                format!(
                    "the policy gives pool type `{pool}` and instance `{instance}` no grant to {} on `{}`",
                    g.action.word(),
                    g.topic
                )
            };
            refused.push(Refused {
                grant: g.clone(),
                reason,
            });
        }
        (granted, refused)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A policy file that cannot be used: every problem found, with the sources to render them.
pub type PolicyError = FileError;

/// Reads and validates the policy file at `path`; token files are read relative to its folder.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let name = path.display().to_string();
    let mut sources = Sources::default();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let file = sources.add(name.clone(), "");
            return Err(PolicyError {
                what: "policy file",
                sources,
                diagnostics: vec![
                    Diagnostic::new(format!("cannot read the policy file {name}: {e}"))
                        .in_file(file),
                ],
            });
        }
    };
    let file = sources.add(name.clone(), text.clone());
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let policy = parse(&text, file, &base).map_err(|diagnostics| PolicyError {
        what: "policy file",
        sources,
        diagnostics,
    })?;
    for u in &policy.unguarded {
        tracing::warn!("{}", u.warning(&name));
    }
    Ok(policy)
}

/// Validates policy text; `file` names it in the diagnostics, `base` resolves token files.
pub fn parse(text: &str, file: FileId, base: &Path) -> Result<Policy, Vec<Diagnostic>> {
    let root = yaml::parse(text).map_err(|d| vec![d.in_file(file)])?;
    let mut cx = Cx {
        file,
        base: base.to_path_buf(),
        diags: Vec::new(),
    };
    let mut policy = Policy::default();
    if let Some(fields) = cx.map(&root, "", &["pools", "instances"]) {
        for (key, node) in fields {
            let Value::Map(entries) = &node.value else {
                if !node.is_null() {
                    cx.error(
                        node.span,
                        key,
                        format!("must be a mapping of names, not {}", node.kind_name()),
                    );
                }
                continue;
            };
            for (name, entry) in entries {
                let path = format!("{key}.{}", name.name);
                if let Some(e) = cx.entry(entry, &path) {
                    if key == "instances" && e.token.is_none() && !e.grants.is_empty() {
                        policy.unguarded.push(Unguarded {
                            instance: name.name.clone(),
                            line: name.span.start.line,
                            column: name.span.start.column,
                        });
                    }
                    let out = if key == "pools" {
                        &mut policy.pools
                    } else {
                        &mut policy.instances
                    };
                    out.insert(name.name.clone(), e);
                }
            }
        }
    }
    if cx.diags.is_empty() {
        Ok(policy)
    } else {
        // In the order of the file, as a reader goes.
        cx.diags
            .sort_by_key(|d| d.span.map(|s| (s.start.line, s.start.column)));
        Err(cx.diags)
    }
}

struct Cx {
    file: FileId,
    base: PathBuf,
    diags: Vec<Diagnostic>,
}

impl Cx {
    fn error(&mut self, span: Span, path: &str, message: impl Into<String>) -> &mut Diagnostic {
        let mut d = Diagnostic::new(message).at(span).in_file(self.file);
        if !path.is_empty() {
            d = d.path(path);
        }
        self.diags.push(d);
        self.diags.last_mut().expect("just pushed")
    }

    /// The fields of a mapping, each known; unknown ones are reported.
    fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        known: &[&str],
    ) -> Option<Vec<(&'n str, &'n Node)>> {
        let Value::Map(entries) = &node.value else {
            if node.is_null() && path.is_empty() {
                return Some(Vec::new());
            }
            self.error(
                node.span,
                path,
                format!("must be a mapping, not {}", node.kind_name()),
            );
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            if known.contains(&k.name.as_str()) {
                out.push((k.name.as_str(), v));
            } else {
                let p = tether_spec::check::join(path, &k.name);
                self.error(k.span, &p, "unknown field")
                    .with_hint(format!("allowed here: {}", known.join(", ")));
            }
        }
        Some(out)
    }

    fn string<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n str> {
        if let Value::Scalar(s) = &node.value
            && !node.is_null()
            && let Typed::Str(t) = s.typed()
        {
            return Some(t);
        }
        self.error(
            node.span,
            path,
            format!("must be a string, not {}", node.kind_name()),
        );
        None
    }

    fn entry(&mut self, node: &Node, path: &str) -> Option<Entry> {
        let fields = self.map(node, path, &["grants", "token_file"])?;
        let mut entry = Entry::default();
        let mut ok = true;
        for (key, value) in fields {
            let p = format!("{path}.{key}");
            if key == "grants" {
                let Value::Seq(items) = &value.value else {
                    self.error(
                        value.span,
                        &p,
                        format!(
                            "must be a list of {{topic, action}}, not {}",
                            value.kind_name()
                        ),
                    );
                    ok = false;
                    continue;
                };
                for (i, item) in items.iter().enumerate() {
                    match self.grant(item, &format!("{p}[{i}]")) {
                        Some(g) => entry.grants.push(g),
                        None => ok = false,
                    }
                }
            } else {
                let Some(file) = self.string(value, &p) else {
                    ok = false;
                    continue;
                };
                let full = self.base.join(file);
                match std::fs::read_to_string(&full) {
                    Ok(t) if !t.trim().is_empty() => entry.token = Some(t.trim().to_owned()),
                    Ok(_) => {
                        self.error(
                            value.span,
                            &p,
                            format!("the token file {} is empty", full.display()),
                        );
                        ok = false;
                    }
                    Err(e) => {
                        self.error(
                            value.span,
                            &p,
                            format!("cannot read the token file {}: {e}", full.display()),
                        )
                        .with_hint(
                            "a path relative to the policy file's folder, or an absolute one",
                        );
                        ok = false;
                    }
                }
            }
        }
        ok.then_some(entry)
    }

    fn grant(&mut self, node: &Node, path: &str) -> Option<Grant> {
        let fields = self.map(node, path, &["topic", "action"])?;
        let mut topic_value = None;
        let mut action = None;
        let mut ok = true;
        for (key, value) in &fields {
            let p = format!("{path}.{key}");
            let Some(text) = self.string(value, &p) else {
                ok = false;
                continue;
            };
            if *key == "topic" {
                match topic::validate_pattern(text) {
                    Ok(()) => topic_value = Some(text.to_owned()),
                    Err(e) => {
                        self.error(value.span, &p, e.to_string())
                            .with_hint("dot-separated tokens; `*` stands for one token, a last `>` for the rest");
                        ok = false;
                    }
                }
            } else {
                match text {
                    "publish" => action = Some(Action::Publish),
                    "subscribe" => action = Some(Action::Subscribe),
                    other => {
                        self.error(value.span, &p, format!("unknown action `{other}`"))
                            .with_hint("allowed: publish, subscribe");
                        ok = false;
                    }
                }
            }
        }
        for (key, got) in [
            ("topic", topic_value.is_some()),
            ("action", action.is_some()),
        ] {
            if !got && !fields.iter().any(|(k, _)| *k == key) {
                self.error(node.span, path, format!("a grant needs `{key}`"));
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        Some(Grant {
            topic: topic_value?,
            action: action?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        let mut sources = Sources::default();
        let file = sources.add("policy.yaml", text);
        let diagnostics = parse(text, file, Path::new("/nonexistent")).unwrap_err();
        PolicyError {
            what: "policy file",
            sources,
            diagnostics,
        }
        .lines()
    }

    fn ok(text: &str) -> Policy {
        parse(text, 0, Path::new("/nonexistent")).unwrap()
    }

    fn grant(topic: &str, action: Action) -> Grant {
        Grant {
            topic: topic.into(),
            action,
        }
    }

    #[test]
    fn a_valid_policy() {
        let p = ok(
            "pools:\n  SignalPool:\n    grants:\n      - { topic: \"signals.>\", action: publish }\n      - { topic: \"orders.*\", action: subscribe }\ninstances:\n  oms-1:\n    grants: [{ topic: orders.eu, action: publish }]\n",
        );
        assert_eq!(
            p.pools["SignalPool"].grants,
            vec![
                grant("signals.>", Action::Publish),
                grant("orders.*", Action::Subscribe)
            ]
        );
        assert_eq!(
            p.instances["oms-1"].grants,
            vec![grant("orders.eu", Action::Publish)]
        );
        assert_eq!(ok(""), Policy::default());
    }

    #[test]
    fn every_problem_is_reported_with_its_position() {
        let text = "pools:\n  P:\n    grants:\n      - { topic: \"a..b\", action: publish }\n      - { topic: x, action: fly }\n      - { action: publish }\n    tokn: x\nextra: 1\n";
        assert_eq!(
            lines(text),
            vec![
                "policy.yaml:4:18: pools.P.grants[0].topic: topic `a..b`: token 2 is empty (two dots, or a dot at an end)",
                "policy.yaml:5:29: pools.P.grants[1].action: unknown action `fly`",
                "policy.yaml:6:9: pools.P.grants[2]: a grant needs `topic`",
                "policy.yaml:7:5: pools.P.tokn: unknown field",
                "policy.yaml:8:1: extra: unknown field",
            ]
        );
    }

    #[test]
    fn malformed_yaml_is_positioned() {
        let l = lines("pools:\n  P: [\n");
        assert_eq!(l.len(), 1);
        assert!(l[0].starts_with("policy.yaml:"), "{l:?}");
    }

    #[test]
    fn a_missing_token_file_is_named() {
        let l = lines("instances:\n  a:\n    token_file: missing.token\n");
        assert_eq!(l.len(), 1);
        assert!(
            l[0].starts_with("policy.yaml:3:17: instances.a.token_file: cannot read the token file /nonexistent/missing.token:"),
            "{l:?}"
        );
    }

    #[test]
    fn an_instance_whose_grants_no_token_guards_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("oms-2.token"), "s3cret\n").unwrap();
        let text = "pools:\n  OMSPool:\n    grants: [{ topic: \"orders.>\", action: publish }]\n    token_file: oms-2.token\ninstances:\n  oms-1:\n    grants:\n      - { topic: \"dlq.orders.>\", action: subscribe }\n  oms-2:\n    grants: [{ topic: audit, action: publish }]\n    token_file: oms-2.token\n  idle: {}\n  \"oms-3\":\n    grants: [{ topic: x, action: publish }]\n";
        let p = parse(text, 0, dir.path()).unwrap();
        let warnings: Vec<String> = p
            .unguarded
            .iter()
            .map(|u| u.warning("policy.yaml"))
            .collect();
        assert_eq!(
            warnings,
            [
                "policy.yaml:6:3: instances.oms-1: no token_file: its grants go to anyone who registers as instance `oms-1` (a Register names its own pool type, and one without a token asks for none); give it a token_file",
                "policy.yaml:13:3: instances.oms-3: no token_file: its grants go to anyone who registers as instance `oms-3` (a Register names its own pool type, and one without a token asks for none); give it a token_file",
            ]
        );
        // What it warns of: a pool the policy does not name asks for no token, and the
        // instance's grants come with it; oms-2's token is asked for whatever the pool.
        assert_eq!(p.check_token("oms-1", "Anything", None), TokenCheck::Ok);
        let dlq = grant("dlq.orders.new", Action::Subscribe);
        assert_eq!(
            p.decide("oms-1", "Anything", std::slice::from_ref(&dlq)).0,
            [dlq]
        );
        assert_eq!(
            p.check_token("oms-2", "Anything", None),
            TokenCheck::Missing {
                of: "instance `oms-2`".into()
            }
        );
        assert!(ok("instances:\n  a: { grants: [] }\n").unguarded.is_empty());
    }

    #[test]
    fn granted_is_requested_and_allowed() {
        let p = ok(
            "pools:\n  SignalPool:\n    grants:\n      - { topic: \"signals.>\", action: publish }\n      - { topic: \"orders.*\", action: subscribe }\ninstances:\n  s-1:\n    grants: [{ topic: audit.s1, action: publish }]\n",
        );
        let requested = vec![
            grant("signals.eu.x", Action::Publish),
            grant("orders.*", Action::Subscribe),
            grant("orders.>", Action::Subscribe),
            grant("signals.x", Action::Subscribe),
            grant("audit.s1", Action::Publish),
        ];
        let (granted, refused) = p.decide("s-1", "SignalPool", &requested);
        assert_eq!(
            granted,
            vec![
                grant("signals.eu.x", Action::Publish),
                grant("orders.*", Action::Subscribe),
                grant("audit.s1", Action::Publish),
            ]
        );
        let reasons: Vec<String> = refused
            .iter()
            .map(|r| format!("{} {}: {}", r.grant.action.word(), r.grant.topic, r.reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                "subscribe orders.>: the policy gives pool type `SignalPool` and instance `s-1` no grant to subscribe on `orders.>`",
                "subscribe signals.x: the policy gives pool type `SignalPool` and instance `s-1` no grant to subscribe on `signals.x`",
            ]
        );
        let (granted, refused) = p.decide("x", "Unknown", &requested[..1]);
        assert!(granted.is_empty());
        assert_eq!(
            refused[0].reason,
            "the policy names neither pool type `Unknown` nor instance `x`"
        );
    }

    #[test]
    fn the_instance_token_wins_over_the_pool_token() {
        let mut p = Policy::default();
        p.pools.insert(
            "P".into(),
            Entry {
                grants: vec![],
                token: Some("pool-secret".into()),
            },
        );
        p.instances.insert(
            "i".into(),
            Entry {
                grants: vec![],
                token: Some("inst-secret".into()),
            },
        );
        assert_eq!(p.check_token("i", "P", Some("inst-secret")), TokenCheck::Ok);
        assert_eq!(
            p.check_token("i", "P", Some("pool-secret")),
            TokenCheck::Wrong {
                of: "instance `i`".into()
            }
        );
        assert_eq!(p.check_token("j", "P", Some("pool-secret")), TokenCheck::Ok);
        assert_eq!(
            p.check_token("j", "P", None),
            TokenCheck::Missing {
                of: "pool `P`".into()
            }
        );
        assert_eq!(p.check_token("j", "Q", None), TokenCheck::Ok);
    }
}
