//! tether's declaration: `tether.yaml` (plus `.tether/sidecars/NAME.yaml` beside it), read into a
//! positioned tree, validated field by field with every problem reported at once, and resolved
//! into [`model::Declaration`] with all defaults filled in.
//!
//! Pure: the only I/O is reading the declaration files.

pub mod bus;
pub mod check;
pub mod diag;
pub mod emit;
pub mod model;
pub mod validate;
pub mod values;
pub mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use check::Ctx;
pub use diag::{Diagnostic, Sources};
use diag::{FileId, Span};
pub use model::Declaration;
use model::{Condition, Origin, RestartPolicy};
use validate::SidecarAt;
use yaml::Value;

/// The JSON Schema of `tether.yaml`, for editors (`tether schema`).
pub const SCHEMA: &str = include_str!("../schema.json");

/// The declaration file tether looks for.
pub const FILE_NAME: &str = "tether.yaml";
/// Where one-sidecar-per-file declarations live, beside `tether.yaml`.
pub const SIDECARS_DIR: &str = ".tether/sidecars";

/// A declaration that passed validation, with the files it was read from.
#[derive(Debug)]
pub struct Loaded {
    pub declaration: Declaration,
    pub sources: Sources,
}

#[derive(Debug)]
pub enum LoadError {
    /// No `tether.yaml` in the folder or any parent.
    NotFound { start: PathBuf },
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The declaration has problems; nothing may be started.
    Invalid {
        sources: Sources,
        diagnostics: Vec<Diagnostic>,
    },
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound { start } => write!(
                f,
                "no {FILE_NAME} in {} or any folder above it",
                start.display()
            ),
            Self::Io { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            Self::Invalid { diagnostics, .. } => {
                write!(f, "the declaration has {} problem(s)", diagnostics.len())
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Finds `tether.yaml` in `start` or the nearest parent that has one.
pub fn find(start: &Path) -> Result<PathBuf, LoadError> {
    let mut dir = Some(start);
    while let Some(d) = dir {
        let candidate = d.join(FILE_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    Err(LoadError::NotFound {
        start: start.to_path_buf(),
    })
}

/// One declaration file's name (as shown to the user) and text.
pub struct SourceText {
    pub name: String,
    pub text: String,
}

/// Reads and validates the declaration at `path` and the sidecar files beside it.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|error| LoadError::Io {
            path: p.to_path_buf(),
            error,
        })
    };
    let main = SourceText {
        name: path.display().to_string(),
        text: read(path)?,
    };
    let parent = path.parent().unwrap_or(Path::new(""));
    let mut extra = Vec::new();
    let dir = parent.join(SIDECARS_DIR);
    if dir.is_dir() {
        let entries = std::fs::read_dir(&dir).map_err(|error| LoadError::Io {
            path: dir.clone(),
            error,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .collect();
        files.sort();
        for file in files {
            extra.push(SourceText {
                name: file.display().to_string(),
                text: read(&file)?,
            });
        }
    }
    let root = std::fs::canonicalize(if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    })
    .map_err(|error| LoadError::Io {
        path: parent.to_path_buf(),
        error,
    })?;
    load_texts(main, extra, &root)
}

/// The declaration a command works on: `file` when given (`-f FILE`), else [`FILE_NAME`] in the
/// current folder or the nearest parent (named relative to the current folder), read and
/// validated. What went wrong is for the binary to show ([`Refused::render`]).
pub fn open(file: Option<&Path>) -> Result<Loaded, Refused> {
    let path = match file {
        Some(p) => p.to_path_buf(),
        None => {
            let cwd = std::env::current_dir().map_err(Refused::NoFolder)?;
            let found = find(&cwd).map_err(Refused::Load)?;
            found
                .strip_prefix(&cwd)
                .map(Path::to_path_buf)
                .unwrap_or(found)
        }
    };
    load(&path).map_err(Refused::Load)
}

/// Why [`open`] found no declaration to work on.
#[derive(Debug)]
pub enum Refused {
    /// The current folder cannot be read: tether itself cannot work.
    NoFolder(std::io::Error),
    Load(LoadError),
}

impl Refused {
    /// What to tell the user: the error line (with a hint where one helps), or every
    /// diagnostic of an invalid declaration with its source snippet, then the count.
    pub fn render(&self, color: bool) -> String {
        match self {
            Self::NoFolder(e) => {
                diag::error_lines(&format!("cannot read the current folder: {e}"), None, &[])
            }
            Self::Load(LoadError::Invalid {
                sources,
                diagnostics,
            }) => sources.render_all(diagnostics, color),
            Self::Load(e @ LoadError::NotFound { .. }) => diag::error_lines(
                &e.to_string(),
                Some(&format!("create {FILE_NAME}, or name one with -f FILE")),
                &[],
            ),
            Self::Load(e) => diag::error_lines(&e.to_string(), None, &[]),
        }
    }

    /// Whether tether itself could not work, rather than the declaration being missing or
    /// wrong.
    pub fn is_internal(&self) -> bool {
        matches!(self, Self::NoFolder(_))
    }
}

/// Validates a declaration given as text. `root` is the project folder (its name is the default
/// project name). Sidecar files are named `.../NAME.yaml`; the sidecar is called NAME.
pub fn load_texts(
    main: SourceText,
    sidecar_files: Vec<SourceText>,
    root: &Path,
) -> Result<Loaded, LoadError> {
    // A byte order mark is not part of the YAML; dropping it keeps columns and carets aligned.
    let strip_bom = |mut t: SourceText| {
        if let Some(rest) = t.text.strip_prefix('\u{feff}') {
            t.text = rest.to_owned();
        }
        t
    };
    let main = strip_bom(main);
    let sidecar_files: Vec<SourceText> = sidecar_files.into_iter().map(strip_bom).collect();
    let mut sources = Sources::default();
    let mut diags = Vec::new();
    let main_id = sources.add(&main.name, &main.text);
    let main_tree = match yaml::parse(&main.text) {
        Ok(t) => Some(t),
        Err(d) => {
            diags.push(d.in_file(main_id));
            // No tree says where its secrets are: its lines do.
            for range in values::secret_values_by_line(&main.text) {
                sources.blank_range(main_id, range);
            }
            None
        }
    };

    let mut sidecars: Vec<SidecarAt> = Vec::new();
    let mut top = Top::default();
    if let Some(tree) = &main_tree {
        let mut cx = Ctx::new(main_id, &mut diags);
        top = top_level(&mut cx, tree, &main.name, &mut sidecars);
        for span in cx.secrets {
            sources.blank(main_id, span);
        }
    }

    for file in &sidecar_files {
        let id = sources.add(&file.name, &file.text);
        let mut cx = Ctx::new(id, &mut diags);
        let name = Path::new(&file.name)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_owned();
        let at = Span::point(diag::Point::start());
        let origin = Origin {
            file: file.name.clone(),
            line: 1,
        };
        // The file's name is the sidecar's: it is declared (and may be declared twice) even
        // when its YAML does not parse.
        let tree = yaml::parse(&file.text).map_err(|d| cx.diags.push(d.in_file(id)));
        if tree.is_err() {
            for range in values::secret_values_by_line(&file.text) {
                sources.blank_range(id, range);
            }
        }
        if let Some(i) = top.declared.iter().position(|d| *d == name) {
            let (prev_file, prev_span) = top.declared_at[i];
            cx.diags.push(
                Diagnostic::new(format!(
                    "sidecar `{name}` is declared twice: in {} and in this file",
                    sources
                        .get(prev_file)
                        .map(|f| f.name.as_str())
                        .unwrap_or("?")
                ))
                .path(format!("sidecars.{name}"))
                .at(at)
                .in_file(id)
                .also_in(prev_file, prev_span, "also declared here")
                .hint("keep one of the two declarations"),
            );
            continue;
        }
        top.declared.push(name.clone());
        top.declared_at.push((id, at));
        sidecars.push(match &tree {
            Ok(tree) => validate::sidecar(&mut cx, &name, tree, at, origin),
            Err(()) => SidecarAt::unread(&name, at, id),
        });
        for span in cx.secrets {
            sources.blank(id, span);
        }
    }

    cross_check(&mut diags, &sidecars, &top);

    if !diags.is_empty() {
        diags.sort_by_key(|d| (d.file, d.span.map(|s| s.start.offset)));
        return Err(LoadError::Invalid {
            sources,
            diagnostics: diags,
        });
    }
    let project = top.project.unwrap_or_else(|| {
        let folder = root
            .file_name()
            .and_then(|n| n.to_str())
            .map(values::sanitize_label)
            .unwrap_or_default();
        if folder.is_empty() {
            "tether".to_owned()
        } else {
            folder
        }
    });
    let declaration = Declaration {
        version: 1,
        project,
        env_prefix: top.env_prefix.unwrap_or_else(|| "TETHER".to_owned()),
        file: main.name,
        root: root.display().to_string(),
        sidecars: sidecars
            .into_iter()
            .filter_map(|s| s.sidecar)
            .map(|s| (s.name.clone(), s))
            .collect(),
        workload: top.workload,
        init: top.init.map(|i| i.init),
    };
    Ok(Loaded {
        declaration,
        sources,
    })
}

#[derive(Default)]
struct Top {
    file: FileId,
    /// Every sidecar name written, valid or not, with the file and place of its name.
    declared: Vec<String>,
    declared_at: Vec<(FileId, Span)>,
    project: Option<String>,
    env_prefix: Option<String>,
    workload: Option<model::Workload>,
    /// The sidecar whose namespace the workload joins, when `network_mode` and `sidecar` are
    /// both valid, whatever else is wrong with the workload.
    joins: Option<(String, Span)>,
    init: Option<validate::InitAt>,
}

fn top_level(
    cx: &mut Ctx<'_>,
    tree: &yaml::Node,
    file_name: &str,
    sidecars: &mut Vec<SidecarAt>,
) -> Top {
    let mut top = Top {
        file: cx.file,
        ..Top::default()
    };
    let start = Span::point(diag::Point::start());
    let Some(f) = cx.fields(tree, "", start, &validate::DECLARATION) else {
        return top;
    };
    match f.get("version") {
        Some(n) => {
            if let Some(v) = cx.int_in(n, "version", 1, i64::MAX)
                && v != 1
            {
                cx.error("version", n.span, format!("version {v} is not supported"))
                    .with_label("this tether reads version 1");
            }
        }
        None => {
            cx.error("version", start, "`version` is required")
                .with_hint("add `version: 1` at the top of the file");
        }
    }
    if let Some(n) = f.get("project")
        && let Some(p) = cx.string(n, "project")
        && cx.dns_label(&p, "project", n.span)
    {
        top.project = Some(p);
    }
    if let Some(n) = f.get("env_prefix")
        && let Some(p) = cx.string(n, "env_prefix")
    {
        let ok = p.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && p.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if ok {
            top.env_prefix = Some(p);
        } else {
            cx.error(
                "env_prefix",
                n.span,
                format!("`{p}` is not an environment prefix"),
            )
            .with_label("uppercase letters, digits and `_`, starting with a letter");
        }
    }
    if let Some(n) = f.get("sidecars") {
        match &n.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    top.declared.push(k.name.clone());
                    top.declared_at.push((cx.file, k.span));
                    let origin = Origin {
                        file: file_name.to_owned(),
                        line: k.span.start.line,
                    };
                    sidecars.push(validate::sidecar(cx, &k.name, v, k.span, origin));
                }
            }
            _ => {
                cx.error(
                    "sidecars",
                    n.span,
                    format!(
                        "expected a mapping of name: sidecar, found {}",
                        n.kind_name()
                    ),
                );
            }
        }
    }
    if let Some(n) = f.get("workload") {
        let owner = f.key("workload").map(|k| k.span).unwrap_or(start);
        (top.workload, top.joins) = validate::workload(cx, n, owner);
    }
    if let Some(n) = f.get("init") {
        let owner = f.key("init").map(|k| k.span).unwrap_or(start);
        top.init = validate::init(cx, n, owner);
    }
    top
}

/// Rules that span several fields or files. Each runs over every sidecar and daemon whose fields
/// it needs are valid, whatever else is wrong with them, so that one run reports every problem.
fn cross_check(diags: &mut Vec<Diagnostic>, sidecars: &[SidecarAt], top: &Top) {
    // Two network-facing sidecars may not answer to the same DNS name.
    // DNS names are case-insensitive: `DB` and `db` collide.
    let mut seen: HashMap<String, &SidecarAt> = HashMap::new();
    for s in sidecars.iter().filter(|s| s.disable == Some(false)) {
        for alias in &s.names {
            match seen.get(&alias.to_ascii_lowercase()) {
                Some(prev) if prev.name != s.name => {
                    diags.push(
                        Diagnostic::new(format!(
                            "sidecars `{}` and `{}` both answer to the name `{alias}`",
                            prev.name, s.name
                        ))
                        .path(format!("sidecars.{}", s.name))
                        .at(s.name_span)
                        .in_file(s.file)
                        .also_in(prev.file, prev.name_span, format!("`{alias}` is taken here"))
                        .hint("the canonical alias is the sidecar name, or `interface.name` for mcp; rename one, or change its `aliases`"),
                    );
                }
                Some(_) => {}
                None => {
                    seen.insert(alias.to_ascii_lowercase(), s);
                }
            }
        }
    }

    if let Some((name, span)) = &top.joins {
        match sidecars.iter().find(|s| &s.name == name) {
            None => {
                let names: Vec<&str> = top.declared.iter().map(String::as_str).collect();
                let mut d = Diagnostic::new(format!("no sidecar is named `{name}`"))
                    .path("workload.sidecar")
                    .at(*span)
                    .in_file(top.file);
                d.hints.push(match values::did_you_mean(name, &names) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if names.is_empty() => "declare the sidecar under `sidecars:`".to_owned(),
                    None => format!("declared sidecars: {}", names.join(", ")),
                });
                diags.push(d);
            }
            Some(s) if s.disable == Some(true) => diags.push(
                Diagnostic::new(format!(
                    "sidecar `{name}` is disabled, so its namespace cannot be joined"
                ))
                .path("workload.sidecar")
                .at(*span)
                .in_file(top.file),
            ),
            Some(_) => {}
        }
    }

    if let Some(init) = &top.init {
        check_dependencies(diags, top.file, init);
    }
}

fn check_dependencies(diags: &mut Vec<Diagnostic>, file: FileId, init: &validate::InitAt) {
    // Every daemon declared under a valid name takes part, whatever else is wrong with it: its
    // valid `depends_on` entries are checked and can close a cycle.
    let daemons = &init.daemons;
    let names: Vec<&str> = daemons.keys().map(String::as_str).collect();
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, d) in daemons {
        for (dep, (cond, span)) in &d.depends_on {
            let path = format!("init.daemons.{name}.depends_on.{dep}");
            let Some(target) = daemons.get(dep) else {
                let mut diag = Diagnostic::new(format!("no daemon is named `{dep}`"))
                    .path(path)
                    .at(*span)
                    .in_file(file);
                if init.steps.contains(dep) {
                    diag.hints.push(format!(
                        "`{dep}` is a step; steps all finish before any daemon starts"
                    ));
                } else if let Some(s) = values::did_you_mean(dep, &names) {
                    diag.hints.push(format!("did you mean `{s}`?"));
                } else {
                    diag.hints.push(format!("daemons: {}", names.join(", ")));
                }
                diags.push(diag);
                continue;
            };
            if *cond == Condition::Completed && target.policy == Some(RestartPolicy::Always) {
                diags.push(
                    Diagnostic::new(format!(
                        "`{dep}` restarts always, so it never completes"
                    ))
                    .path(path)
                    .at(*span)
                    .in_file(file)
                    .hint(format!("wait for `ready` or `started`, or give `{dep}` restart policy `on-failure` or `never`")),
                );
            }
            graph.entry(name.as_str()).or_default().push(dep.as_str());
        }
    }
    if let Some(cycle) = find_cycle(&names, &graph) {
        let first = cycle[0];
        let second = cycle[1];
        let (_, span) = daemons[first].depends_on[second];
        diags.push(
            Diagnostic::new(format!(
                "daemons depend on each other in a cycle: {}",
                cycle.join(" -> ")
            ))
            .path(format!("init.daemons.{first}.depends_on"))
            .at(span)
            .in_file(file)
            .hint("remove one of these dependencies"),
        );
    }
}

/// The first dependency cycle in declaration order, as `a, b, ..., a`.
fn find_cycle<'a>(
    names: &[&'a str],
    graph: &BTreeMap<&'a str, Vec<&'a str>>,
) -> Option<Vec<&'a str>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks: IndexMap<&str, Mark> = names.iter().map(|n| (*n, Mark::New)).collect();
    fn visit<'a>(
        n: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        marks: &mut IndexMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        marks.insert(n, Mark::Active);
        stack.push(n);
        for dep in graph.get(n).map(Vec::as_slice).unwrap_or_default() {
            match marks.get(dep).copied() {
                Some(Mark::Active) => {
                    let from = stack.iter().position(|s| s == dep).unwrap_or(0);
                    let mut cycle: Vec<&str> = stack[from..].to_vec();
                    cycle.push(dep);
                    return Some(cycle);
                }
                Some(Mark::New) => {
                    if let Some(c) = visit(dep, graph, marks, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        marks.insert(n, Mark::Done);
        None
    }
    for n in names {
        if marks[n] == Mark::New {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, graph, &mut marks, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}
