//! Exact error output for each validation rule: every file under `cases/` is loaded and its
//! rendered diagnostics are compared with the snapshot beside this file.

use std::path::Path;

use tether_spec::{LoadError, SourceText, load_texts};

fn render(name: &str, text: &str, extra: Vec<SourceText>) -> String {
    let main = SourceText {
        name: name.to_owned(),
        text: text.to_owned(),
    };
    match load_texts(main, extra, Path::new("/projects/demo")) {
        Ok(l) => format!("valid: {} sidecar(s)", l.declaration.sidecars.len()),
        Err(LoadError::Invalid {
            sources,
            diagnostics,
        }) => sources.render_all(&diagnostics, false),
        Err(e) => format!("unexpected: {e}"),
    }
}

#[test]
fn every_rule_reports_file_line_column_and_what_is_allowed() {
    insta::glob!("cases/*.yaml", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let name = format!("cases/{}", path.file_name().unwrap().to_string_lossy());
        let out = render(&name, &text, Vec::new());
        assert!(out.contains("error: found"), "{name} was accepted:\n{out}");
        insta::assert_snapshot!(out);
    });
}

#[test]
fn a_sidecar_declared_twice_names_both_files() {
    let main = "version: 1\nsidecars:\n  cache:\n    image: redis:7\n    lifecycle: shared\n    interface: { kind: port, port: 6379 }\n";
    let file = SourceText {
        name: ".tether/sidecars/cache.yaml".into(),
        text: "image: redis:6\nlifecycle: shared\ninterface: { kind: port, port: 6379 }\n".into(),
    };
    insta::assert_snapshot!(render("tether.yaml", main, vec![file]));
}

#[test]
fn sidecar_files_are_validated_with_their_own_positions() {
    let main = "version: 1\n";
    let good = SourceText {
        name: ".tether/sidecars/cache.yaml".into(),
        text: "image: redis:7\nlifecycle: shared\ninterface: { kind: port, port: 6379 }\n".into(),
    };
    let bad = SourceText {
        name: ".tether/sidecars/db.yaml".into(),
        text: "image: postgres\nlifecycle: shared\ninterface: { kind: port, port: 5432 }\nreadiness: { timeout: never }\n".into(),
    };
    insta::assert_snapshot!(render("tether.yaml", main, vec![good, bad]));
}

#[test]
fn a_valid_file_with_sidecar_files_merges_them_in_order() {
    let main = "version: 1\nsidecars:\n  a:\n    image: a\n    lifecycle: session\n    interface: { kind: port, port: 1 }\n";
    let b = SourceText {
        name: ".tether/sidecars/b.yaml".into(),
        text: "image: b\nlifecycle: shared\ninterface: { kind: port, port: 2 }\n".into(),
    };
    let loaded = load_texts(
        SourceText {
            name: "tether.yaml".into(),
            text: main.into(),
        },
        vec![b],
        Path::new("/projects/My Project"),
    )
    .unwrap();
    let d = &loaded.declaration;
    assert_eq!(d.project, "my-project");
    assert_eq!(d.sidecars.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(d.sidecars["b"].origin.file, ".tether/sidecars/b.yaml");
    assert_eq!(d.sidecars["a"].origin.line, 3);
}

#[test]
fn declared_twice_is_reported_even_when_the_first_copy_is_invalid() {
    let main = "version: 1\nsidecars:\n  db:\n    image: postgres\n    lifecycle: shard\n    interface: { kind: port, port: 5432 }\n";
    let file = SourceText {
        name: ".tether/sidecars/db.yaml".into(),
        text: "image: postgres\nlifecycle: shared\ninterface: { kind: port, port: 5432 }\n".into(),
    };
    let out = render("tether.yaml", main, vec![file]);
    assert!(out.contains("`shard` is not a lifecycle"), "{out}");
    assert!(out.contains("sidecar `db` is declared twice"), "{out}");
    assert!(out.ends_with("found 2 problems in the declaration; nothing was changed\n"));
}

#[test]
fn a_sidecar_file_that_does_not_parse_still_declares_its_name() {
    // The file's name is the sidecar's: the workload may join it, and declaring it twice is
    // reported beside the syntax error.
    let main = "version: 1\nsidecars:\n  cache:\n    image: redis:7\n    lifecycle: shared\n    interface: { kind: port, port: 6379 }\nworkload:\n  network_mode: shared-namespace\n  sidecar: vpn\n";
    let cache = SourceText {
        name: ".tether/sidecars/cache.yaml".into(),
        text: "image: [redis:6\n".into(),
    };
    let vpn = SourceText {
        name: ".tether/sidecars/vpn.yaml".into(),
        text: "image: vpn:1\n  lifecycle: shared\n".into(),
    };
    insta::assert_snapshot!(render("tether.yaml", main, vec![cache, vpn]));
}
