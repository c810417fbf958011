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

/// A secret written in the declaration (a NATS password or any `*PASSWORD*`, `*TOKEN*`,
/// `*SECRET*` variable in `env`, a value given as a secret's `from`) appears nowhere in the
/// rendered errors: not in their messages, not in the snippet of any error that shows its line
/// (as the caret of another error on the same line, or a line between two carets); its place
/// is blanked with `*`, one per byte.
#[test]
fn a_secret_written_inline_is_in_no_snippet_of_the_report() {
    let secrets = [
        "hunter2-flow",
        "pässwörd-flow",
        "hunter2-block",
        "tok-123456",
        "s3cr3t-inline",
    ];
    let flow = "version: 1
sidecars:
  flow:
    image: tether:local
    command: [bus, serve, --backend, nats, --nats-url, \"nats://nats:4222\"]
    lifecycle: shared
    interface: { kind: port, port: 8443 }
    env: { NATS_USER_FILE: /run/secrets/nats-user, NATS_PASSWORD: hunter2-flow, DB_PASSWORD: \"pässwörd-flow\", X: [1] }
  block:
    image: tether:local
    command: [bus, serve]
    env:
      NATS_PASSWORD: hunter2-block
      API_TOKEN: [tok-123456]
      NATS_USER_FILE: /run/secrets/nats-user
    lifecycle: shared
    replicas: 2
    interface: { kind: port, port: 8443 }
  web:
    image: nginx
    lifecycle: shared
    interface: { kind: port, port: 80 }
    secrets:
      - { name: pw, from: \"s3cr3t-inline\" }
";
    let out = render("tether.yaml", flow, Vec::new());
    for s in secrets {
        assert!(!out.contains(s), "{s} is in the errors:\n{out}");
    }
    // The lines are still shown, blanked: the other errors on them keep their carets.
    assert!(
        out.contains(&format!(
            "NATS_PASSWORD: ************, DB_PASSWORD: {}, X: [1]",
            "*".repeat("\"pässwörd-flow\"".len())
        )),
        "{out}"
    );
    assert!(out.contains("NATS_PASSWORD: *************\n"), "{out}");
    assert!(out.contains("API_TOKEN: ************\n"), "{out}");
    assert!(out.contains("{ name: pw, from: ***************"), "{out}");
    // Each of those errors is reported.
    for expected in [
        "error: sidecars.flow.env.NATS_USER_FILE: NATS_USER_FILE /run/secrets/nats-user: no secret `nats-user` is declared",
        "error: sidecars.flow.env.X: expected a string, number or boolean",
        "error: sidecars.flow.env.NATS_PASSWORD: a NATS password written in the declaration",
        "error: sidecars.block.env.NATS_PASSWORD: a NATS password written in the declaration",
        "error: sidecars.block.env.API_TOKEN: expected a string, number or boolean",
        "error: sidecars.block.replicas: 2 replicas of `tether bus serve` need `--backend nats`",
        "error: sidecars.web.secrets[0].from: not a secret source",
    ] {
        assert!(out.contains(expected), "no {expected:?} in:\n{out}");
    }
    // The same file as a sidecar file of its own.
    let file = SourceText {
        name: ".tether/sidecars/bus.yaml".into(),
        text: "image: tether:local\ncommand: [bus, serve]\nlifecycle: shared\ninterface: { kind: port, port: 8443 }\nenv: { NATS_PASSWORD: hunter2-flow, NATS_USER_FILE: /run/secrets/u }\n".into(),
    };
    let out = render("tether.yaml", "version: 1\n", vec![file]);
    assert!(!out.contains("hunter2-flow"), "{out}");
    assert!(
        out.contains("NATS_PASSWORD: ************, NATS_USER_FILE"),
        "{out}"
    );
}

/// A file that does not parse has no tree to say where its secrets are: its lines do. The
/// snippet of the syntax error shows the line it is on blanked as validation would blank it
/// (an `environment:` entry whose name says it is a secret, as `KEY: value` or `- KEY=value`),
/// in `tether.yaml` and in a sidecar file alike.
#[test]
fn a_secret_on_the_line_of_a_syntax_error_is_blanked() {
    let on_its_line = "version: 1\nsidecars:\n  db:\n    image: postgres\n    environment:\n      USER: bob\n      DB_PASSWORD: hunter2: x\n";
    assert_eq!(
        render("tether.yaml", on_its_line, Vec::new()),
        "error: this is not valid YAML: mapping values are not allowed in this context
 --> tether.yaml:7:27
  |
7 |       DB_PASSWORD: **********
  |                           ^

error: found 1 problem in the declaration; nothing was changed
"
    );
    let next_line = "version: 1\nsidecars:\n  db:\n    image: postgres\n    environment:\n      DB_PASSWORD: hunter2\n      - API_TOKEN=tok-123\n";
    let out = render("tether.yaml", next_line, Vec::new());
    assert!(
        out.contains(" --> tether.yaml:7:9\n  |\n7 |       - API_TOKEN=*******\n"),
        "{out}"
    );
    let file = SourceText {
        name: ".tether/sidecars/db.yaml".into(),
        text: "image: postgres\nenv: { DB_PASSWORD: \"hunter2\", USER: bob\n".into(),
    };
    let out = render("tether.yaml", "version: 1\n", vec![file]);
    assert!(
        out.contains("2 | env: { DB_PASSWORD: *********, USER: bob\n"),
        "{out}"
    );
    for out in [
        render("tether.yaml", on_its_line, Vec::new()),
        render("tether.yaml", next_line, Vec::new()),
    ] {
        assert!(
            !out.contains("hunter2") && !out.contains("tok-123"),
            "{out}"
        );
    }
}

/// The sidecar-only binary runs `tether sidecar` too: its SIDECAR_CONFIG under the secrets
/// folder must be a declared secret, as for `tether sidecar`.
#[test]
fn a_tether_sidecar_entrypoint_is_checked_as_tether_sidecar() {
    let yaml = "version: 1
sidecars:
  bus:
    image: tether-sidecar:local
    entrypoint: [/bin/tether-sidecar]
    lifecycle: session
    interface: { kind: port, port: 9191 }
    env: { INSTANCE_ID: p-1, POOL_TYPE: P, SIDECAR_CONFIG: /run/secrets/sidecar.yaml }
";
    let out = render("tether.yaml", yaml, Vec::new());
    assert!(
        out.contains("error: sidecars.bus.env.SIDECAR_CONFIG: SIDECAR_CONFIG /run/secrets/sidecar.yaml: no secret `sidecar.yaml` is declared, so nothing puts a file there"),
        "{out}"
    );
}
