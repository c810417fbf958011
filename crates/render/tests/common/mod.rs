//! What both renderers' tests read: the examples.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Every `examples/*/tether.yaml`, sorted.
pub fn examples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut all: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path().join("tether.yaml"))
        .filter(|p| p.exists())
        .collect();
    all.sort();
    all
}

pub fn load(file: &Path) -> tether_spec::model::Declaration {
    tether_spec::load(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .declaration
}

/// A declaration from its text, as `tether.yaml` in `root`.
pub fn load_text(text: &str, root: &Path) -> tether_spec::model::Declaration {
    tether_spec::load_texts(
        tether_spec::SourceText {
            name: "tether.yaml".into(),
            text: text.into(),
        },
        Vec::new(),
        root,
    )
    .unwrap_or_else(|e| panic!("{e:?}"))
    .declaration
}

/// The example's folder name, for snapshot names.
pub fn name(file: &Path) -> String {
    file.parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}
