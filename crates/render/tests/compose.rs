//! `tether render compose` for every example: exact output, and accepted by docker-compose.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{examples, load, name};

fn render(file: &Path) -> String {
    let decl = load(file);
    let root = PathBuf::from(&decl.root);
    tether_render::compose::render(&decl, &root).unwrap()
}

#[test]
fn every_example_renders_exactly() {
    for file in examples() {
        let text = render(&file);
        // Same input, same bytes.
        assert_eq!(text, render(&file));
        insta::assert_snapshot!(name(&file), text);
    }
}

#[test]
fn every_rendered_file_passes_docker_compose_config() {
    let available = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("docker-compose is required under CI=true");
        }
        return;
    }
    for file in examples() {
        let dir = tempfile_dir();
        let out = dir.join(format!("{}.yml", name(&file)));
        std::fs::write(&out, render(&file)).unwrap();
        let check = Command::new("docker-compose")
            .args(["-f"])
            .arg(&out)
            .args(["config", "-q"])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}: {}",
            name(&file),
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-render-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
