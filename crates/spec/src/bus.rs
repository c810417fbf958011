//! What the declaration knows of a sidecar that runs `tether bus serve`, read from its words
//! (entrypoint, then command) the way the command line would be.

/// A sidecar's words: its entrypoint, then its command, as the command line would have them.
pub fn words(s: &crate::model::Sidecar) -> Vec<String> {
    s.entrypoint
        .iter()
        .flatten()
        .chain(s.command.iter().flatten())
        .cloned()
        .collect()
}

/// Where the arguments of `bus serve` start, when the words run `tether bus serve`: `bus serve`
/// first (an image whose entrypoint is tether), or after a program named `tether`.
pub fn serve_args(words: &[String]) -> Option<usize> {
    let at = words
        .windows(2)
        .position(|w| w[0] == "bus" && w[1] == "serve")?;
    let runs_tether = match at {
        0 => true,
        _ => std::path::Path::new(&words[at - 1])
            .file_name()
            .is_some_and(|n| n == "tether"),
    };
    runs_tether.then_some(at + 2)
}

/// Whether the words run `tether sidecar`: `sidecar` first (an image whose entrypoint is
/// tether), or right after a program named `tether`; or a program named `tether-sidecar`, the
/// sidecar alone (also behind a wrapper: `tini -- tether-sidecar`). An image whose own
/// entrypoint is `tether-sidecar`, with no words declared, cannot be seen from here.
pub fn runs_sidecar(words: &[String]) -> bool {
    if words.iter().any(|w| {
        std::path::Path::new(w)
            .file_name()
            .is_some_and(|n| n == "tether-sidecar")
    }) {
        return true;
    }
    match words.iter().position(|w| w == "sidecar") {
        Some(0) => true,
        Some(at) => std::path::Path::new(&words[at - 1])
            .file_name()
            .is_some_and(|n| n == "tether"),
        None => false,
    }
}

/// The value of `--name VALUE` or `--name=VALUE` (the last one given, as clap takes it), with
/// the index of the word that holds it.
pub fn flag<'a>(args: &'a [String], name: &str) -> Option<(usize, &'a str)> {
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--" {
            break;
        }
        if args[i] == name {
            if let Some(v) = args.get(i + 1) {
                found = Some((i + 1, v.as_str()));
            }
            i += 2;
            continue;
        }
        if let Some(v) = args[i]
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
        {
            found = Some((i, v));
        }
        i += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn bus_serve_is_found_after_tether_or_first() {
        assert_eq!(
            serve_args(&words("bus serve --listen 0.0.0.0:8443")),
            Some(2)
        );
        assert_eq!(
            serve_args(&words("/usr/local/bin/tether bus serve")),
            Some(3)
        );
        assert_eq!(serve_args(&words("tether sidecar")), None);
        // Another program's `bus serve` is not tether's.
        assert_eq!(serve_args(&words("dbus bus serve")), None);
    }

    #[test]
    fn tether_sidecar_is_found_after_tether_or_first() {
        assert!(runs_sidecar(&words("sidecar")));
        assert!(runs_sidecar(&words("/bin/tether sidecar")));
        assert!(!runs_sidecar(&words("bus serve")));
        assert!(!runs_sidecar(&words("envoy sidecar")));
        assert!(runs_sidecar(&words("/bin/tether-sidecar")));
        assert!(runs_sidecar(&words("tether-sidecar")));
        assert!(runs_sidecar(&words("tini -- /bin/tether-sidecar")));
        assert!(!runs_sidecar(&words("my-tether-sidecar")));
    }

    #[test]
    fn a_flag_is_read_in_both_forms_and_the_last_one_counts() {
        let a = words("--backend nats --nats-url=nats://a:4222 --backend=embedded");
        assert_eq!(flag(&a, "--backend"), Some((3, "embedded")));
        assert_eq!(flag(&a, "--nats-url"), Some((2, "nats://a:4222")));
        assert_eq!(flag(&a, "--nats-ca"), None);
        // `--backend-x` is another flag.
        assert_eq!(flag(&words("--backend-x nats"), "--backend"), None);
    }
}
