//! `tether render compose` for every example: exact output, and accepted by docker-compose.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{examples, load, load_text, name};

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

/// A value two sidecars read from one source is one top-level secret, mounted in both under
/// their own names (and asked for once); one name read from two sources stays two secrets.
#[test]
fn a_secret_two_sidecars_read_from_one_source_is_declared_once() {
    let text = "version: 1\nsidecars:\n  a:\n    image: a\n    lifecycle: shared\n    interface: { kind: port, port: 1 }\n    secrets: [{ name: t, from: \"env:TOKEN\" }, { name: k, from: \"file:k.pem\" }]\n  b:\n    image: b\n    lifecycle: shared\n    interface: { kind: port, port: 2 }\n    secrets: [{ name: token, from: \"env:TOKEN\" }, { name: k, from: \"file:other.pem\" }]\n";
    let decl = load_text(text, Path::new("/p/two"));
    let out = tether_render::compose::render(&decl, Path::new("/p/two")).unwrap();
    let top: Vec<&str> = out
        .lines()
        .skip_while(|l| *l != "secrets:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(
        top,
        [
            "  a-t:",
            "    file: \"./.tether/secrets/a-t\"",
            "  a-k:",
            "    file: \"./k.pem\"",
            "  b-k:",
            "    file: \"./other.pem\"",
        ],
        "{out}"
    );
    assert!(
        out.contains("    secrets:\n      - source: a-t\n        target: token\n      - source: b-k\n        target: k\n"),
        "{out}"
    );
    assert_eq!(
        out.matches("comes from $TOKEN on the host").count(),
        1,
        "{out}"
    );

    // Two sources whose keys would be one keep a key each.
    let text = "version: 1\nsidecars:\n  a:\n    image: a\n    lifecycle: shared\n    interface: { kind: port, port: 1 }\n    secrets: [{ name: b-t, from: \"file:x\" }]\n  a-b:\n    image: b\n    lifecycle: shared\n    interface: { kind: port, port: 2 }\n    secrets: [{ name: t, from: \"file:y\" }]\n";
    let root = Path::new("/p/two");
    let out = tether_render::compose::render(&load_text(text, root), root).unwrap();
    assert!(
        out.ends_with("secrets:\n  a-b-t:\n    file: \"./x\"\n  a-b-t-2:\n    file: \"./y\"\n"),
        "{out}"
    );
    assert!(
        out.contains("    secrets:\n      - source: a-b-t-2\n        target: t\n"),
        "{out}"
    );
}
