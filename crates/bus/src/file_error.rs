//! A configuration file that cannot be used (the bus's policy file, the sidecar's config): every
//! problem found, with the sources to render them as `tether check` renders `tether.yaml`'s.

use tether_spec::diag::{Diagnostic, Sources};

/// Every problem found in one file, with its sources.
#[derive(Debug)]
pub struct FileError {
    /// What the file is, for the count line: `policy file`, `sidecar config`.
    pub what: &'static str,
    pub sources: Sources,
    pub diagnostics: Vec<Diagnostic>,
}

impl FileError {
    /// Every problem rendered with its snippet, then a count line.
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            out.push_str(&self.sources.render(d, color));
            out.push_str("\n\n");
        }
        let n = self.diagnostics.len();
        out.push_str(&format!(
            "error: found {n} problem{} in the {}; nothing was started\n",
            if n == 1 { "" } else { "s" },
            self.what
        ));
        out
    }

    /// `file:line:col: message`, one line per problem (for logs and tests).
    pub fn lines(&self) -> Vec<String> {
        self.diagnostics
            .iter()
            .map(|d| {
                let file = d
                    .file
                    .and_then(|f| self.sources.get(f))
                    .map_or("?", |f| f.name.as_str());
                match d.span {
                    Some(s) => format!(
                        "{file}:{}:{}: {}",
                        s.start.line,
                        s.start.column,
                        d.headline()
                    ),
                    None => format!("{file}: {}", d.headline()),
                }
            })
            .collect()
    }
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

impl std::error::Error for FileError {}
