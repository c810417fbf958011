//! Diagnostics: what was wrong, where, and what is allowed, rendered with the source line and a
//! caret under the offending text.

use std::fmt::Write as _;

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use serde::Serialize;

/// The one error format of tether's binaries: `error: MESSAGE`, then `  = hint: HINT` when there
/// is one, then any detail lines indented by two spaces.
pub fn error_lines(message: &str, hint: Option<&str>, details: &[String]) -> String {
    let mut out = format!("error: {message}\n");
    if let Some(h) = hint {
        let _ = writeln!(out, "  = hint: {h}");
    }
    for d in details {
        let _ = writeln!(out, "  {d}");
    }
    out
}

/// Whether errors written to `stream` get colours: a terminal, and no `NO_COLOR`.
pub fn color(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A position in a source file: byte offset, 1-based line and 1-based column (in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Point {
    #[serde(skip)]
    pub offset: usize,
    pub line: usize,
    pub column: usize,
}

impl Point {
    pub fn start() -> Self {
        Self {
            offset: 0,
            line: 1,
            column: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: Point,
    pub end: Point,
}

impl Span {
    pub fn new(start: Point, end: Point) -> Self {
        if end.offset < start.offset {
            return Self { start, end: start };
        }
        Self { start, end }
    }

    pub fn point(at: Point) -> Self {
        Self { start: at, end: at }
    }

    /// From the start of `self` to the end of `other`.
    pub fn to(self, other: Span) -> Self {
        Self::new(self.start, other.end)
    }
}

/// Index of a file in a [`Sources`] list.
pub type FileId = usize;

/// A secondary place a diagnostic points at ("first declared here").
#[derive(Clone, Debug, PartialEq)]
pub struct Also {
    pub file: Option<FileId>,
    pub span: Span,
    pub label: String,
}

/// One problem found in a declaration.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// The file the problem is in, once known.
    pub file: Option<FileId>,
    /// The field path, such as `sidecars.cache.readiness.timeout`.
    pub path: Option<String>,
    pub message: String,
    pub span: Option<Span>,
    /// A short label under the caret.
    pub label: Option<String>,
    pub also: Option<(Span, String)>,
    pub also_file: Option<FileId>,
    pub hints: Vec<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            file: None,
            path: None,
            message: message.into(),
            span: None,
            label: None,
            also: None,
            also_file: None,
            hints: Vec::new(),
        }
    }

    pub fn at(mut self, span: Span) -> Self {
        self.span = Some(span);
        self
    }

    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }

    pub fn with_label(&mut self, label: impl Into<String>) -> &mut Self {
        self.label = Some(label.into());
        self
    }

    pub fn with_hint(&mut self, hint: impl Into<String>) -> &mut Self {
        self.hints.push(hint.into());
        self
    }

    pub fn with_also(&mut self, span: Span, label: impl Into<String>) -> &mut Self {
        self.also = Some((span, label.into()));
        self
    }

    pub fn also(mut self, span: Span, label: impl Into<String>) -> Self {
        self.also = Some((span, label.into()));
        self
    }

    pub fn also_in(mut self, file: FileId, span: Span, label: impl Into<String>) -> Self {
        self.also = Some((span, label.into()));
        self.also_file = Some(file);
        self
    }

    pub fn in_file(mut self, file: FileId) -> Self {
        self.file.get_or_insert(file);
        if self.also.is_some() {
            self.also_file.get_or_insert(file);
        }
        self
    }

    /// The headline: `sidecars.cache.readiness.timeout: ...`.
    pub fn headline(&self) -> String {
        match &self.path {
            Some(p) => format!("{p}: {}", self.message),
            None => self.message.clone(),
        }
    }
}

/// The files a declaration was read from, for rendering diagnostics.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The path as shown to the user.
    pub name: String,
    pub text: String,
}

impl Sources {
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.push(SourceFile {
            name: name.into(),
            text: text.into(),
        });
        self.files.len() - 1
    }

    pub fn get(&self, id: FileId) -> Option<&SourceFile> {
        self.files.get(id)
    }

    /// Blanks what file `id` holds at `span`, a secret: every byte but line ends becomes `*`, so
    /// no snippet rendered from here shows it, and offsets and line numbers stay where they
    /// were (columns too, for ASCII).
    pub fn blank(&mut self, id: FileId, span: Span) {
        self.blank_range(id, span.start.offset..span.end.offset);
    }

    /// [`Sources::blank`] by byte offsets.
    pub fn blank_range(&mut self, id: FileId, range: std::ops::Range<usize>) {
        let Some(file) = self.files.get_mut(id) else {
            return;
        };
        let text = &mut file.text;
        let mut start = range.start.min(text.len());
        let mut end = range.end.min(text.len()).max(start);
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        while !text.is_char_boundary(end) {
            end += 1;
        }
        let stars: String = text.as_bytes()[start..end]
            .iter()
            .map(|&b| {
                if matches!(b, b'\n' | b'\r') {
                    b as char
                } else {
                    '*'
                }
            })
            .collect();
        text.replace_range(start..end, &stars);
    }

    /// Renders one diagnostic the way a compiler would: headline, `--> file:line:col`, the source
    /// line with a caret, then `hint:` lines.
    pub fn render(&self, d: &Diagnostic, color: bool) -> String {
        let headline = d.headline();
        let mut group = Group::with_title(Level::ERROR.primary_title(headline.as_str()));
        let primary = d.file.and_then(|f| self.get(f));
        if let (Some(file), Some(span)) = (primary, d.span) {
            let mut ann = AnnotationKind::Primary.span(clamp(span, &file.text));
            if let Some(label) = &d.label {
                ann = ann.label(label.as_str());
            }
            let mut snippet = Snippet::source(file.text.as_str())
                .path(file.name.as_str())
                .annotation(ann);
            if let Some((aspan, alabel)) = &d.also
                && d.also_file.is_none_or(|f| Some(f) == d.file)
            {
                snippet = snippet.annotation(
                    AnnotationKind::Context
                        .span(clamp(*aspan, &file.text))
                        .label(alabel.as_str()),
                );
            }
            group = group.element(snippet);
        } else if let Some(file) = primary {
            group = group.element(annotate_snippets::Origin::path(file.name.as_str()));
        }
        if let (Some((aspan, alabel)), Some(af)) = (&d.also, d.also_file)
            && Some(af) != d.file
            && let Some(file) = self.get(af)
        {
            group = group.element(
                Snippet::source(file.text.as_str())
                    .path(file.name.as_str())
                    .annotation(
                        AnnotationKind::Context
                            .span(clamp(*aspan, &file.text))
                            .label(alabel.as_str()),
                    ),
            );
        }
        for h in &d.hints {
            group = group.element(Level::HELP.with_name("hint").message(h.as_str()));
        }
        let renderer = if color {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        renderer.render(&[group])
    }

    /// Renders a list of diagnostics followed by a count line.
    pub fn render_all(&self, diags: &[Diagnostic], color: bool) -> String {
        let mut out = String::new();
        for d in diags {
            out.push_str(&self.render(d, color));
            out.push_str("\n\n");
        }
        let n = diags.len();
        let _ = writeln!(
            out,
            "error: found {n} problem{} in the declaration; nothing was changed",
            if n == 1 { "" } else { "s" }
        );
        out
    }

    /// One JSON object per diagnostic, for `--json`.
    pub fn to_json(&self, d: &Diagnostic) -> serde_json::Value {
        let file = d.file.and_then(|f| self.get(f)).map(|f| f.name.clone());
        serde_json::json!({
            "file": file,
            "line": d.span.map(|s| s.start.line),
            "column": d.span.map(|s| s.start.column),
            "path": d.path,
            "message": d.message,
            "hints": d.hints,
        })
    }
}

/// A caret under an empty span would vanish; widen it to one character inside the text.
fn clamp(span: Span, text: &str) -> std::ops::Range<usize> {
    let start = span.start.offset.min(text.len());
    let mut end = span.end.offset.min(text.len()).max(start);
    if end == start {
        end = text[start..]
            .chars()
            .next()
            .filter(|c| *c != '\n')
            .map(|c| start + c.len_utf8())
            .unwrap_or(start);
    }
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_one_line_then_its_hint_then_details() {
        assert_eq!(error_lines("it broke", None, &[]), "error: it broke\n");
        assert_eq!(
            error_lines(
                "sidecar db: exited",
                Some("look at its logs"),
                &["its last 1 lines:".into(), "| boom".into()]
            ),
            "error: sidecar db: exited\n  = hint: look at its logs\n  its last 1 lines:\n  | boom\n"
        );
    }
}
