//! `tether render compose|kubernetes`: the declaration as files other engines run.

use std::path::{Path, PathBuf};

use crate::args::{FileArg, RenderTarget};
use crate::load::load;
use crate::{exit, output};

pub struct Options<'a> {
    pub output: Option<PathBuf>,
    pub allow_lossy: bool,
    pub include_secret_values: bool,
    pub wait_image: Option<&'a str>,
}

pub fn render(target: RenderTarget, file: &FileArg, o: Options<'_>) -> u8 {
    let loaded = match load(file, false) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let decl = &loaded.declaration;
    let base = match &o.output {
        Some(out) => out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        None => PathBuf::from("."),
    };
    let base = base.canonicalize().unwrap_or(base);
    let read_secret = |from: &tether_spec::model::SecretSource| from.read(&decl.root);
    let text = match target {
        RenderTarget::Compose => tether_render::compose::render(decl, &base),
        RenderTarget::Kubernetes => {
            let declaration_text = std::fs::read_to_string(&decl.file).ok();
            let options = tether_render::kubernetes::Options {
                allow_lossy: o.allow_lossy,
                secret_value: o.include_secret_values.then_some(&read_secret as _),
                declaration_text: declaration_text.as_deref(),
                wait_image: o.wait_image,
            };
            tether_render::kubernetes::render(decl, &options).map(|r| {
                for w in &r.warnings {
                    output::warning(w);
                }
                r.text
            })
        }
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            output::error(format!("{}: {e}", decl.file));
            return exit::INVALID;
        }
    };
    let Some(path) = o.output else {
        print!("{text}");
        return exit::OK;
    };
    // Secret values, when asked for, make the file for its owner's eyes only.
    let mode = if o.include_secret_values {
        0o600
    } else {
        0o644
    };
    match write(&path, &text, mode) {
        Ok(()) => {
            eprintln!("wrote {}", path.display());
            exit::OK
        }
        Err(e) => {
            output::error(format!("cannot write {}: {e}", path.display()));
            exit::INTERNAL
        }
    }
}

/// Writes `text` to `path` with `mode`, making its folder first.
fn write(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?
        .write_all(text.as_bytes())
}
