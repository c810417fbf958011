//! The loader never panics, whatever it is fed, and never drops a declared sidecar silently.

use std::path::Path;

use proptest::prelude::*;
use tether_spec::{LoadError, SourceText, load_texts};

fn load(text: &str) -> Result<tether_spec::Loaded, LoadError> {
    load_texts(
        SourceText {
            name: "tether.yaml".into(),
            text: text.to_owned(),
        },
        Vec::new(),
        Path::new("/p/x"),
    )
}

/// Every diagnostic points into the file.
fn assert_well_formed(r: &Result<tether_spec::Loaded, LoadError>) {
    if let Err(LoadError::Invalid {
        sources,
        diagnostics,
    }) = r
    {
        assert!(!diagnostics.is_empty());
        for d in diagnostics {
            assert_eq!(d.file, Some(0), "{d:?}");
            let span = d.span.expect("every diagnostic has a position");
            assert!(span.start.line >= 1 && span.start.column >= 1);
            // Rendering must not panic either.
            let _ = sources.render(d, false);
        }
    }
}

/// A scalar that is sometimes right for a field and often not.
fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("redis:7".to_owned()),
        Just("shared".to_owned()),
        Just("session".to_owned()),
        Just("30s".to_owned()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("6379".to_owned()),
        Just("70000".to_owned()),
        Just("tcp".to_owned()),
        Just("http".to_owned()),
        Just("exec".to_owned()),
        Just("none".to_owned()),
        Just("port".to_owned()),
        Just("mcp".to_owned()),
        Just("volume".to_owned()),
        Just("workspace".to_owned()),
        Just("~".to_owned()),
        Just("[a, b]".to_owned()),
        Just("{}".to_owned()),
        Just("\"\"".to_owned()),
        Just("é ü 中".to_owned()),
        "[a-z0-9:/._-]{0,12}",
    ]
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("image"),
        Just("lifecycle"),
        Just("command"),
        Just("entrypoint"),
        Just("aliases"),
        Just("env"),
        Just("mounts"),
        Just("secrets"),
        Just("networks"),
        Just("disable"),
        Just("colour"),
    ]
    .prop_map(str::to_owned)
}

fn sidecar() -> impl Strategy<Value = String> {
    (
        prop::option::of(scalar()),
        prop::option::of(prop_oneof![Just("port"), Just("mcp"), Just("volume"), Just("none"), Just("bogus")]),
        prop::option::of(scalar()),
        prop::option::of(prop_oneof![Just("tcp"), Just("http"), Just("exec"), Just("healthcheck"), Just("log"), Just("none")]),
        prop::option::of(scalar()),
        prop::collection::vec((field(), scalar()), 0..3),
    )
        .prop_map(|(image, kind, port, mode, timeout, extra)| {
            let mut s = String::new();
            if let Some(i) = image {
                s += &format!("    image: {i}\n");
            }
            s += "    lifecycle: session\n";
            if let Some(k) = kind {
                s += &format!("    interface: {{ kind: {k}, port: {}, name: x, volume: v, mountpoint: /m }}\n", port.unwrap_or_default());
            }
            if mode.is_some() || timeout.is_some() {
                s += "    readiness:\n";
                if let Some(m) = mode {
                    s += &format!("      mode: {m}\n      command: [x]\n      pattern: y\n");
                }
                if let Some(t) = timeout {
                    s += &format!("      timeout: {t}\n");
                }
            }
            for (k, v) in extra {
                if !s.contains(&format!("    {k}:")) {
                    s += &format!("    {k}: {v}\n");
                }
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        assert_well_formed(&load(&text));
    }

    #[test]
    fn yaml_shaped_noise_never_panics(lines in prop::collection::vec("[ ]{0,4}[a-z_-]{1,8}:[ ]?[\\[\\]{}a-z0-9,:&*!|>'\" -]{0,12}", 0..12)) {
        assert_well_formed(&load(&lines.join("\n")));
    }

    /// Lines whose keys name secrets, in a file that seldom parses: blanked line by line.
    #[test]
    fn secret_shaped_noise_never_panics(lines in prop::collection::vec("[ ]{0,4}(- )?(DB_PASSWORD|API_TOKEN|from|x)[:=][ ]?[\\[\\]{}a-zé0-9,:=#|>'\" -]{0,12}", 0..12)) {
        let text = lines.join("\n");
        for range in tether_spec::values::secret_values_by_line(&text) {
            assert!(range.start <= range.end && range.end <= text.len(), "{range:?}");
        }
        assert_well_formed(&load(&text));
    }

    #[test]
    fn declarations_load_or_explain_and_never_drop_a_sidecar(
        sidecars in prop::collection::vec(sidecar(), 0..4),
        names in prop::collection::vec("[a-z][a-z0-9-]{0,6}", 4),
    ) {
        let mut text = String::from("version: 1\nsidecars:\n");
        let mut declared = Vec::new();
        for (i, body) in sidecars.iter().enumerate() {
            let name = format!("{}{i}", names[i]);
            text += &format!("  {name}:\n{body}");
            declared.push(name);
        }
        if sidecars.is_empty() {
            text = "version: 1\n".into();
        }
        let r = load(&text);
        assert_well_formed(&r);
        if let Ok(l) = &r {
            let got: Vec<&String> = l.declaration.sidecars.keys().collect();
            prop_assert_eq!(got, declared.iter().collect::<Vec<_>>());
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!(
        "version: 1\nsidecars: {}{}",
        "[".repeat(2000),
        "]".repeat(2000)
    );
    let r = load(&deep);
    assert!(matches!(r, Err(LoadError::Invalid { .. })));
}
