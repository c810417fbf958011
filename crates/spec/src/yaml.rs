//! A YAML tree that remembers where every node came from.
//!
//! The declaration is validated on this tree rather than through serde, so that every mistake in a
//! file is reported in one run, each with its exact line and column. Built from `saphyr-parser`
//! events; anchors and aliases are resolved by copying the anchored node, and `<<` merge keys are
//! applied the way YAML 1.1 tools (and Compose) apply them.

// A parse error is built once per file, on the error path; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as RawSpan};

use crate::diag::{Diagnostic, Span};

/// One node of the tree.
#[derive(Clone, Debug)]
pub struct Node {
    pub span: Span,
    pub value: Value,
}

#[derive(Clone, Debug)]
pub enum Value {
    Map(Vec<(Key, Node)>),
    Seq(Vec<Node>),
    Scalar(Scalar),
}

/// A mapping key: always a string in a declaration.
#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Scalar {
    pub text: String,
    /// Quoted and block scalars are always strings; plain ones are typed by the YAML 1.2 core schema.
    pub plain: bool,
}

/// The type a plain or quoted scalar resolves to.
#[derive(Clone, Debug, PartialEq)]
pub enum Typed<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl Scalar {
    pub fn typed(&self) -> Typed<'_> {
        if !self.plain {
            return Typed::Str(&self.text);
        }
        let t = self.text.as_str();
        match t {
            "" | "~" | "null" | "Null" | "NULL" => return Typed::Null,
            "true" | "True" | "TRUE" => return Typed::Bool(true),
            "false" | "False" | "FALSE" => return Typed::Bool(false),
            _ => {}
        }
        if let Some(i) = parse_int(t) {
            return Typed::Int(i);
        }
        if looks_like_float(t)
            && let Ok(f) = t.parse::<f64>()
        {
            return Typed::Float(f);
        }
        Typed::Str(t)
    }
}

fn parse_int(t: &str) -> Option<i64> {
    let (neg, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, body) = if let Some(hex) = digits.strip_prefix("0x") {
        (16, hex)
    } else if let Some(oct) = digits.strip_prefix("0o") {
        (8, oct)
    } else {
        (10, digits)
    };
    // Only digits of the radix: no second sign (from_str_radix would accept one).
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) || (radix != 10 && neg) {
        return None;
    }
    let v = i64::from_str_radix(body, radix).ok()?;
    if neg { v.checked_neg() } else { Some(v) }
}

fn looks_like_float(t: &str) -> bool {
    let body = t.trim_start_matches(['-', '+']);
    !body.is_empty()
        && body.bytes().any(|b| b.is_ascii_digit())
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
}

/// The most nodes alias expansion may copy in one file.
const MAX_EXPANDED: usize = 100_000;

impl Node {
    /// The number of nodes in this subtree.
    fn count(&self) -> usize {
        1 + match &self.value {
            Value::Map(m) => m.iter().map(|(_, v)| 1 + v.count()).sum(),
            Value::Seq(items) => items.iter().map(Node::count).sum(),
            Value::Scalar(_) => 0,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Map(_) => "a mapping",
            Value::Seq(_) => "a list",
            Value::Scalar(s) => match s.typed() {
                Typed::Null => "empty",
                Typed::Bool(_) => "a boolean",
                Typed::Int(_) => "an integer",
                Typed::Float(_) => "a number",
                Typed::Str(_) => "a string",
            },
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s) if s.typed() == Typed::Null)
    }
}

/// Parses `source` into a tree. An empty document is an empty mapping.
pub fn parse(source: &str) -> Result<Node, Diagnostic> {
    let index = LineIndex::new(source);
    let mut builder = Builder {
        index: &index,
        anchors: HashMap::new(),
        stack: Vec::new(),
        root: None,
        documents: 0,
        expanded: 0,
    };
    let mut parser = Parser::new_from_str(source);
    for item in &mut parser {
        let (event, span) = item.map_err(|e| {
            let at = index.point(e.marker().line(), e.marker().col());
            Diagnostic::new(format!("this is not valid YAML: {}", e.info())).at(Span::point(at))
        })?;
        builder.event(event, span)?;
    }
    Ok(builder.root.unwrap_or_else(|| Node {
        span: Span::point(crate::diag::Point::start()),
        value: Value::Map(Vec::new()),
    }))
}

enum Frame {
    Seq {
        start: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        start: Span,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        /// Entries brought in by `<<` merge keys; explicit entries win over them.
        merged: Vec<(Key, Node)>,
        pending_key: Option<Node>,
    },
}

struct Builder<'a> {
    index: &'a LineIndex,
    anchors: HashMap<usize, Node>,
    stack: Vec<Frame>,
    root: Option<Node>,
    documents: usize,
    /// Nodes copied by alias expansion so far, capped against "billion laughs" documents.
    expanded: usize,
}

impl Builder<'_> {
    fn span(&self, raw: RawSpan) -> Span {
        let start = self.index.point(raw.start.line(), raw.start.col());
        let end = self.index.point(raw.end.line(), raw.end.col());
        Span::new(start, end)
    }

    fn event(&mut self, event: Event<'_>, raw: RawSpan) -> Result<(), Diagnostic> {
        let span = self.span(raw);
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(Diagnostic::new(
                        "a declaration file holds one YAML document; this is a second one",
                    )
                    .at(span)
                    .hint("remove the `---` separator, or split the file"));
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let node = Node {
                    span,
                    value: Value::Scalar(Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    }),
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push(node)?;
            }
            Event::Alias(id) => {
                let mut node = self.anchors.get(&id).cloned().ok_or_else(|| {
                    Diagnostic::new("this alias names an anchor that is not defined").at(span)
                })?;
                self.expanded += node.count();
                if self.expanded > MAX_EXPANDED {
                    return Err(Diagnostic::new(format!(
                        "aliases expand to more than {MAX_EXPANDED} nodes; this file is too large to be a declaration"
                    ))
                    .at(span));
                }
                node.span = span;
                self.push(node)?;
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                start: span,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                start: span,
                anchor,
                entries: Vec::new(),
                merged: Vec::new(),
                pending_key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        start,
                        anchor,
                        items,
                    }) => (
                        Node {
                            span: start.to(span),
                            value: Value::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        start,
                        anchor,
                        mut entries,
                        merged,
                        ..
                    }) => {
                        for (k, v) in merged {
                            if !entries.iter().any(|(e, _)| e.name == k.name) {
                                entries.push((k, v));
                            }
                        }
                        (
                            Node {
                                span: start.to(span),
                                value: Value::Map(entries),
                            },
                            anchor,
                        )
                    }
                    None => return Ok(()),
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push(node)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn push(&mut self, node: Node) -> Result<(), Diagnostic> {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                merged,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => insert_entry(entries, merged, key, node)?,
            },
        }
        Ok(())
    }
}

fn insert_entry(
    entries: &mut Vec<(Key, Node)>,
    merged: &mut Vec<(Key, Node)>,
    key: Node,
    value: Node,
) -> Result<(), Diagnostic> {
    let name = match &key.value {
        Value::Scalar(s) => s.text.clone(),
        _ => {
            return Err(Diagnostic::new("a mapping key must be a plain name")
                .at(key.span)
                .hint("write the key as a string, for example `name:`"));
        }
    };
    if name == "<<" && matches!(&key.value, Value::Scalar(s) if s.plain) {
        // Merge key: the entries of the merged mapping(s) fill in what this mapping lacks.
        let sources = match value.value {
            Value::Map(m) => vec![m],
            Value::Seq(items) => {
                let mut maps = Vec::new();
                for item in items {
                    match item.value {
                        Value::Map(m) => maps.push(m),
                        _ => {
                            return Err(Diagnostic::new(
                                "a `<<` merge takes a mapping or a list of mappings",
                            )
                            .at(item.span));
                        }
                    }
                }
                maps
            }
            _ => {
                return Err(
                    Diagnostic::new("a `<<` merge takes a mapping or a list of mappings")
                        .at(value.span),
                );
            }
        };
        for source in sources {
            for (k, v) in source {
                if !merged.iter().any(|(e, _)| e.name == k.name) {
                    merged.push((k, v));
                }
            }
        }
        return Ok(());
    }
    if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == name) {
        return Err(
            Diagnostic::new(format!("`{name}` is given twice in this mapping"))
                .at(key.span)
                .also(first.span, "first given here"),
        );
    }
    entries.push((
        Key {
            name,
            span: key.span,
        },
        value,
    ));
    Ok(())
}

/// Maps the parser's (line, column in characters) to byte offsets.
struct LineIndex {
    starts: Vec<usize>,
    source: String,
    /// The last point looked up, to walk forward from on the same line (keeps long lines linear).
    last: std::cell::Cell<(usize, usize, usize)>,
}

impl LineIndex {
    fn new(source: &str) -> Self {
        // Line breaks as YAML counts them: `\n`, `\r\n`, and a bare `\r`.
        let mut starts = vec![0];
        let bytes = source.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            match b {
                b'\n' => starts.push(i + 1),
                b'\r' if bytes.get(i + 1) != Some(&b'\n') => starts.push(i + 1),
                _ => {}
            }
        }
        Self {
            starts,
            source: source.to_owned(),
            last: std::cell::Cell::new((0, 0, 0)),
        }
    }

    /// `line` is 1-based, `col` 0-based in characters.
    fn point(&self, line: usize, col: usize) -> crate::diag::Point {
        let line = line.max(1);
        let Some(&start) = self.starts.get(line - 1) else {
            return crate::diag::Point {
                offset: self.source.len(),
                line,
                column: col + 1,
            };
        };
        let (last_line, last_col, last_offset) = self.last.get();
        let (mut offset, mut at) = if last_line == line && last_col <= col {
            (last_offset, last_col)
        } else {
            (start, 0)
        };
        let rest = &self.source[offset..];
        for c in rest.chars() {
            if at == col || c == '\n' || c == '\r' {
                break;
            }
            offset += c.len_utf8();
            at += 1;
        }
        self.last.set((line, at, offset));
        crate::diag::Point {
            offset,
            line,
            column: col + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(n: &Node) -> &str {
        match &n.value {
            Value::Scalar(s) => &s.text,
            _ => panic!("not a scalar"),
        }
    }

    #[test]
    fn positions_are_one_based_and_in_bytes() {
        let src = "a: 1\nbé: x\n  # c\nc:\n  - q\n";
        let root = parse(src).unwrap();
        let Value::Map(entries) = &root.value else {
            panic!()
        };
        let (k, v) = &entries[1];
        assert_eq!(k.name, "bé");
        assert_eq!((k.span.start.line, k.span.start.column), (2, 1));
        assert_eq!((v.span.start.line, v.span.start.column), (2, 5));
        assert_eq!(&src[v.span.start.offset..v.span.end.offset], "x");
        let Value::Seq(items) = &entries[2].1.value else {
            panic!()
        };
        assert_eq!(scalar(&items[0]), "q");
        assert_eq!(items[0].span.start.line, 5);
    }

    #[test]
    fn typed_scalars_follow_the_core_schema() {
        let root = parse("[1, '1', 1.5, true, ~, '', 0x10, 1e3, abc, -7]").unwrap();
        let Value::Seq(items) = &root.value else {
            panic!()
        };
        let typed: Vec<Typed<'_>> = items
            .iter()
            .map(|n| match &n.value {
                Value::Scalar(s) => s.typed(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            typed,
            vec![
                Typed::Int(1),
                Typed::Str("1"),
                Typed::Float(1.5),
                Typed::Bool(true),
                Typed::Null,
                Typed::Str(""),
                Typed::Int(16),
                Typed::Float(1000.0),
                Typed::Str("abc"),
                Typed::Int(-7),
            ]
        );
    }

    #[test]
    fn duplicate_keys_name_both_places() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.message, "`a` is given twice in this mapping");
        assert_eq!(err.span.unwrap().start.line, 3);
        assert_eq!(err.also.unwrap().0.start.line, 1);
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let root = parse("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n").unwrap();
        let Value::Map(entries) = &root.value else {
            panic!()
        };
        let Value::Map(other) = &entries[1].1.value else {
            panic!()
        };
        let names: Vec<(&str, &str)> = other
            .iter()
            .map(|(k, v)| (k.name.as_str(), scalar(v)))
            .collect();
        assert_eq!(names, vec![("y", "3"), ("x", "1")]);
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.message.starts_with("this is not valid YAML: "));
        assert!(err.span.is_some());
    }

    #[test]
    fn odd_integers_and_hostile_documents_are_errors_not_panics() {
        let root =
            parse("[-0x-8000000000000000, 0x+1, -0x10, 0x1F, -9223372036854775807]").unwrap();
        let Value::Seq(items) = &root.value else {
            panic!()
        };
        let typed: Vec<Typed<'_>> = items
            .iter()
            .map(|n| match &n.value {
                Value::Scalar(s) => s.typed(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            typed,
            [
                Typed::Str("-0x-8000000000000000"),
                Typed::Str("0x+1"),
                Typed::Str("-0x10"),
                Typed::Int(31),
                Typed::Int(-i64::MAX),
            ]
        );
        let mut laughs = String::from("a0: &a0 [x,x,x,x,x,x,x,x,x,x]\n");
        for i in 1..9 {
            let prev = format!("*a{}", i - 1);
            laughs += &format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(","));
        }
        let err = parse(&laughs).unwrap_err();
        assert!(
            err.message
                .starts_with("aliases expand to more than 100000 nodes")
        );
    }

    #[test]
    fn bare_carriage_returns_are_line_breaks() {
        let src = "a: 1\rb: x\r";
        let root = parse(src).unwrap();
        let Value::Map(entries) = &root.value else {
            panic!()
        };
        let v = &entries[1].1;
        assert_eq!((v.span.start.line, v.span.start.column), (2, 4));
        assert_eq!(&src[v.span.start.offset..v.span.end.offset], "x");
    }

    #[test]
    fn empty_document_is_an_empty_mapping() {
        assert!(matches!(parse("").unwrap().value, Value::Map(ref m) if m.is_empty()));
        assert!(
            matches!(parse("# only a comment\n").unwrap().value, Value::Map(ref m) if m.is_empty())
        );
    }
}
