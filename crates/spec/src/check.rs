//! Typed access to a positioned YAML tree that records every problem instead of stopping at the
//! first. The section validators in `validate` are written on top of it.

use std::collections::BTreeMap;

use crate::diag::{Diagnostic, FileId, Span};
use crate::model::Duration;
use crate::values;
use crate::yaml::{Key, Node, Typed, Value};

/// Collects diagnostics for one file, and where it holds a secret.
pub struct Ctx<'d> {
    pub file: FileId,
    pub diags: &'d mut Vec<Diagnostic>,
    /// Where a secret value is written in this file: the caller blanks these in the source
    /// every snippet is shown from ([`crate::diag::Sources::blank`]).
    pub secrets: Vec<Span>,
}

/// `a.b` + `c` = `a.b.c`.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// One kind of mapping in the declaration: the fields it takes, what messages call it ("a
/// sidecar", "an interface") and the mappings written directly as its fields, so that a field
/// written one level too high or too low can be pointed to where it belongs.
pub struct Shape {
    pub what: &'static str,
    pub fields: &'static [&'static str],
    /// The mapping this one is a field of, if any (a sidecar is an entry of `sidecars`, not a
    /// field of the declaration, so it has none).
    pub parent: Option<&'static Shape>,
    /// The mappings that are fields of this one.
    pub children: &'static [&'static Shape],
}

impl Shape {
    /// `interface` for "an interface", `init section` for "the init section".
    pub fn noun(&self) -> &'static str {
        ["a ", "an ", "the "]
            .iter()
            .find_map(|a| self.what.strip_prefix(a))
            .unwrap_or(self.what)
    }

    /// Hints for `field`, unknown here, when it is a field of the mapping one level up or down.
    pub fn one_level_off(&self, field: &str) -> Vec<String> {
        let mut hints = Vec::new();
        if let Some(p) = self.parent
            && p.fields.contains(&field)
        {
            hints.push(format!(
                "`{field}` is a field of the {}, not of its {}",
                p.noun(),
                self.noun()
            ));
        }
        let owners: Vec<String> = self
            .children
            .iter()
            .filter(|c| c.fields.contains(&field))
            .map(|c| format!("its {}", c.noun()))
            .collect();
        if !owners.is_empty() {
            let owners: Vec<&str> = owners.iter().map(String::as_str).collect();
            hints.push(format!(
                "`{field}` is a field of {}, not of the {}",
                or_list(&owners),
                self.noun()
            ));
        }
        hints
    }
}

/// A mapping whose keys were checked against the allowed field names.
pub struct Fields<'n> {
    pub path: String,
    /// Where to point when a required field is missing: the key that holds this mapping.
    pub span: Span,
    pub entries: &'n [(Key, Node)],
}

impl<'n> Fields<'n> {
    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    }

    pub fn key(&self, name: &str) -> Option<&'n Key> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, _)| k)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn at(&self, name: &str) -> String {
        join(&self.path, name)
    }
}

impl<'d> Ctx<'d> {
    pub fn new(file: FileId, diags: &'d mut Vec<Diagnostic>) -> Self {
        Self {
            file,
            diags,
            secrets: Vec::new(),
        }
    }

    /// A secret value is written at `span`: no snippet of this file will show it.
    pub fn secret(&mut self, span: Span) {
        self.secrets.push(span);
    }

    pub fn error(&mut self, path: &str, span: Span, message: impl Into<String>) -> &mut Diagnostic {
        let mut d = Diagnostic::new(message).at(span).in_file(self.file);
        if !path.is_empty() {
            d = d.path(path);
        }
        self.diags.push(d);
        self.diags.last_mut().expect("just pushed")
    }

    fn wrong_type(&mut self, path: &str, node: &Node, expected: &str) {
        let found = node.kind_name();
        self.error(
            path,
            node.span,
            format!("expected {expected}, found {found}"),
        )
        .with_label(format!("expected {expected}"));
    }

    /// A section that resolved to nothing must have said why; if it did not, that is a bug in
    /// tether, reported rather than silently dropping the section.
    pub fn ensure<T>(&mut self, before: usize, path: &str, span: Span, r: Option<T>) -> Option<T> {
        if r.is_none() && self.diags.len() == before {
            self.error(
                path,
                span,
                "could not be resolved (this is a bug in tether; please report it)",
            );
        }
        r
    }

    /// Opens a mapping and reports each key that is not in `allowed`.
    pub fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        owner: Span,
        shape: &Shape,
    ) -> Option<Fields<'n>> {
        let (allowed, what) = (shape.fields, shape.what);
        let Value::Map(entries) = &node.value else {
            if node.is_null() {
                return Some(Fields {
                    path: path.to_owned(),
                    span: owner,
                    entries: &[],
                });
            }
            self.wrong_type(path, node, "a mapping");
            return None;
        };
        for (key, _) in entries {
            if allowed.contains(&key.name.as_str()) {
                continue;
            }
            let d = self
                .error(
                    &join(path, &key.name),
                    key.span,
                    format!("unknown field `{}` in {what}", key.name),
                )
                .with_label("unknown field");
            // A field of the mapping one level up or down, by its exact name, says more than a
            // near spelling of a field here.
            let off = shape.one_level_off(&key.name);
            let near = values::did_you_mean(&key.name, allowed);
            let has_off = !off.is_empty();
            d.hints.extend(off);
            match near {
                Some(s) if !has_off => d.hints.push(format!("did you mean `{s}`?")),
                Some(_) => {}
                None => d
                    .hints
                    .push(format!("allowed fields: {}", allowed.join(", "))),
            }
        }
        Some(Fields {
            path: path.to_owned(),
            span: owner,
            entries,
        })
    }

    pub fn require<'n>(&mut self, f: &Fields<'n>, name: &str, what: &str) -> Option<&'n Node> {
        let node = f.get(name);
        if node.is_none() {
            let span = f.key(name).map(|k| k.span).unwrap_or(f.span);
            self.error(&f.at(name), span, format!("`{name}` is required"))
                .hints
                .push(what.to_owned());
        }
        node
    }

    /// A string. Numbers and booleans are not silently turned into strings here.
    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Scalar(s) => match s.typed() {
                Typed::Str(t) => Some(t.to_owned()),
                _ => {
                    self.wrong_type(path, node, "a string");
                    None
                }
            },
            _ => {
                self.wrong_type(path, node, "a string");
                None
            }
        }
    }

    /// A scalar taken as text: strings, numbers and booleans (as YAML users write `PORT: 8080`).
    pub fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Scalar(s) if s.typed() != Typed::Null => Some(s.text.clone()),
            _ => {
                self.wrong_type(path, node, "a string");
                None
            }
        }
    }

    pub fn nonempty_string(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.error(path, node.span, "cannot be empty");
            return None;
        }
        Some(s)
    }

    pub fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Scalar(s) => match s.typed() {
                Typed::Bool(b) => Some(b),
                _ => {
                    self.wrong_type(path, node, "true or false");
                    None
                }
            },
            _ => {
                self.wrong_type(path, node, "true or false");
                None
            }
        }
    }

    pub fn int_in(&mut self, node: &Node, path: &str, lo: i64, hi: i64) -> Option<i64> {
        let v = match &node.value {
            Value::Scalar(s) => match s.typed() {
                Typed::Int(i) => i,
                _ => {
                    self.wrong_type(path, node, "a whole number");
                    return None;
                }
            },
            _ => {
                self.wrong_type(path, node, "a whole number");
                return None;
            }
        };
        if v < lo || v > hi {
            self.error(path, node.span, format!("{v} is out of range"))
                .with_label(format!("expected {lo} to {hi}"));
            return None;
        }
        Some(v)
    }

    pub fn port(&mut self, node: &Node, path: &str) -> Option<u16> {
        self.int_in(node, path, 1, 65535).map(|p| p as u16)
    }

    pub fn number(&mut self, node: &Node, path: &str) -> Option<f64> {
        match &node.value {
            Value::Scalar(s) => match s.typed() {
                Typed::Int(i) => Some(i as f64),
                Typed::Float(f) => Some(f),
                _ => {
                    self.wrong_type(path, node, "a number");
                    None
                }
            },
            _ => {
                self.wrong_type(path, node, "a number");
                None
            }
        }
    }

    /// An optional field read with `read`, or `default` when it is absent.
    pub fn or<T>(
        &mut self,
        f: &Fields<'_>,
        name: &str,
        default: T,
        read: impl FnOnce(&mut Self, &Node, &str) -> Option<T>,
    ) -> Option<T> {
        match f.get(name) {
            Some(n) => read(self, n, &f.at(name)),
            None => Some(default),
        }
    }

    /// One of `options`.
    pub fn choice<'o>(
        &mut self,
        node: &Node,
        path: &str,
        options: &[&'o str],
        what: &str,
    ) -> Option<&'o str> {
        let text = self.string(node, path)?;
        if let Some(o) = options.iter().find(|o| **o == text) {
            return Some(o);
        }
        let d = self
            .error(path, node.span, format!("`{text}` is not {what}"))
            .with_label(format!("expected {}", one_of(options)));
        if let Some(s) = values::did_you_mean(&text, options) {
            d.hints.push(format!("did you mean `{s}`?"));
        }
        None
    }

    /// An optional field that is one of `options`, each naming its value; `default` when absent.
    pub fn pick<T: Copy>(
        &mut self,
        f: &Fields<'_>,
        name: &str,
        options: &[(&str, T)],
        default: T,
        what: &str,
    ) -> Option<T> {
        let Some(node) = f.get(name) else {
            return Some(default);
        };
        let words: Vec<&str> = options.iter().map(|(w, _)| *w).collect();
        let word = self.choice(node, &f.at(name), &words, what)?;
        options.iter().find(|(w, _)| *w == word).map(|(_, v)| *v)
    }

    /// A duration that may be zero (`0`, `0s`, `0ms`): restart delays.
    pub fn delay(&mut self, node: &Node, path: &str) -> Option<Duration> {
        if let Value::Scalar(s) = &node.value
            && values::is_zero_duration(&s.text)
        {
            return Some(Duration(std::time::Duration::ZERO));
        }
        self.duration(node, path)
    }

    pub fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let result = match &node.value {
            Value::Scalar(s) => match s.typed() {
                Typed::Int(i) => values::duration_from_secs(i as f64, &s.text),
                Typed::Float(f) => values::duration_from_secs(f, &s.text),
                Typed::Str(t) => values::parse_duration(t),
                _ => {
                    self.wrong_type(path, node, "a duration");
                    return None;
                }
            },
            _ => {
                self.wrong_type(path, node, "a duration");
                return None;
            }
        };
        match result {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(path, node.span, e)
                    .with_label(values::DURATION_HELP.to_owned());
                None
            }
        }
    }

    pub fn size(&mut self, node: &Node, path: &str) -> Option<u64> {
        let result = match &node.value {
            Value::Scalar(s) => match s.typed() {
                Typed::Int(i) if i > 0 => Ok(i as u64),
                Typed::Int(_) | Typed::Float(_) | Typed::Str(_) => values::parse_size(&s.text),
                _ => {
                    self.wrong_type(path, node, "a size");
                    return None;
                }
            },
            _ => {
                self.wrong_type(path, node, "a size");
                return None;
            }
        };
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(path, node.span, e);
                None
            }
        }
    }

    pub fn seq<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.wrong_type(path, node, "a list");
                None
            }
        }
    }

    /// A list of strings, such as a command. Scalars that YAML would type as numbers are kept as
    /// their text (`[sleep, 10]`).
    pub fn string_list(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let items = match &node.value {
            Value::Seq(items) => items,
            Value::Scalar(s) if matches!(s.typed(), Typed::Str(_)) => {
                self.error(
                    path,
                    node.span,
                    "expected a list of strings, found a string",
                )
                .with_hint(format!(
                    "write it as a list, for example [{}]",
                    s.text
                        .split_whitespace()
                        .map(|w| format!("{w:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                return None;
            }
            _ => {
                self.wrong_type(path, node, "a list of strings");
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.text(item, &format!("{path}[{i}]")) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A non-empty command list.
    pub fn command(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let cmd = self.string_list(node, path)?;
        if cmd.is_empty() || cmd[0].is_empty() {
            self.error(
                path,
                node.span,
                "a command needs at least the program to run",
            )
            .with_label("empty command");
            return None;
        }
        Some(cmd)
    }

    /// A map of environment variables; values may be strings, numbers or booleans.
    pub fn env(&mut self, node: &Node, path: &str) -> Option<BTreeMap<String, String>> {
        let Value::Map(entries) = &node.value else {
            if node.is_null() {
                return Some(BTreeMap::new());
            }
            self.wrong_type(path, node, "a mapping of NAME: value");
            return None;
        };
        let mut out = BTreeMap::new();
        for (k, v) in entries {
            let p = join(path, &k.name);
            if values::names_a_secret(&k.name) {
                self.secret(v.span);
            }
            if let Err(e) = values::check_env_name(&k.name) {
                self.error(&p, k.span, e);
                continue;
            }
            match &v.value {
                Value::Scalar(s) if s.typed() != Typed::Null => {
                    out.insert(k.name.clone(), s.text.clone());
                }
                Value::Scalar(_) => {
                    self.error(&p, k.span, "has no value")
                        .with_hint("give a value, or `\"\"` for an empty one; secrets belong in `secrets`, not `env`");
                }
                _ => self.wrong_type(&p, v, "a string, number or boolean"),
            }
        }
        Some(out)
    }

    /// A DNS label name, reported at `span`.
    pub fn dns_label(&mut self, name: &str, path: &str, span: Span) -> bool {
        match values::check_dns_label(name) {
            Ok(()) => true,
            Err(e) => {
                self.error(path, span, e).with_label("not a DNS label");
                false
            }
        }
    }
}

/// `a`, `a` or `b`, `a`, `b` or `c`.
pub fn one_of(options: &[&str]) -> String {
    let quoted: Vec<String> = options.iter().map(|o| format!("`{o}`")).collect();
    let quoted: Vec<&str> = quoted.iter().map(String::as_str).collect();
    or_list(&quoted)
}

/// a, a or b, a, b or c.
fn or_list(items: &[&str]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].to_owned(),
        n => format!("{} or {}", items[..n - 1].join(", "), items[n - 1]),
    }
}
