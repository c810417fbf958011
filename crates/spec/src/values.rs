//! Parsers for the small value languages of the declaration: durations, sizes, names, mounts.
//! Each returns a message that says what is allowed.

use crate::model::{DEFAULT_WORKSPACE_TARGET, Duration, Mount};

pub const DURATION_HELP: &str = "use 500ms, 30s, 2m, 1h or a number of seconds";

/// `500ms`, `30s`, `2m`, `1h`, `1.5s`, or bare seconds. Zero and negative values are errors.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1_000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (t, 1_000.0)
    };
    let valid_number = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|b| *b == b'.').count() <= 1
        && !number.starts_with('.')
        && !number.ends_with('.');
    if !valid_number {
        if number.starts_with('-') {
            return Err(format!("`{text}` is negative; a duration must be positive"));
        }
        return Err(format!("`{text}` is not a duration ({DURATION_HELP})"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration ({DURATION_HELP})"))?;
    duration_from_ms(value * unit_ms, text)
}

/// `0`, `0.0`, `0s`, `0ms`, `0m`, `0h`.
pub fn is_zero_duration(text: &str) -> bool {
    let t = text.trim();
    let number = ["ms", "s", "m", "h"]
        .iter()
        .find_map(|u| t.strip_suffix(u))
        .unwrap_or(t);
    !number.is_empty()
        && number.bytes().all(|b| b == b'0' || b == b'.')
        && number.bytes().filter(|b| *b == b'.').count() <= 1
        && number.starts_with('0')
}

/// A bare YAML number as seconds.
pub fn duration_from_secs(secs: f64, text: &str) -> Result<Duration, String> {
    if secs < 0.0 {
        return Err(format!("`{text}` is negative; a duration must be positive"));
    }
    duration_from_ms(secs * 1000.0, text)
}

fn duration_from_ms(ms: f64, text: &str) -> Result<Duration, String> {
    if !ms.is_finite() || ms > 1.0e12 {
        return Err(format!("`{text}` is too long for a duration"));
    }
    if ms < 1.0 {
        return Err(format!("`{text}` is zero; a duration must be at least 1ms"));
    }
    Ok(Duration::from_millis(ms.round() as u64))
}

/// `256m`, `1g`, `512k`, `1.5g`, `1gb`, `1GiB`, or a number of bytes. Units are binary, as in Docker.
pub fn parse_size(text: &str) -> Result<u64, String> {
    const HELP: &str = "use a number of bytes or a size like 512k, 256m, 1g";
    let lower = text.trim().to_ascii_lowercase();
    let stripped = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (number, factor): (&str, u64) = match stripped.as_bytes().last() {
        Some(b'k') => (&stripped[..stripped.len() - 1], 1 << 10),
        Some(b'm') => (&stripped[..stripped.len() - 1], 1 << 20),
        Some(b'g') => (&stripped[..stripped.len() - 1], 1 << 30),
        Some(b't') => (&stripped[..stripped.len() - 1], 1 << 40),
        _ => (stripped, 1),
    };
    if number.starts_with('-') {
        return Err(format!("`{text}` is negative; a size must be positive"));
    }
    let ok = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|b| *b == b'.').count() <= 1;
    let value: f64 = if ok { number.parse().ok() } else { None }
        .ok_or_else(|| format!("`{text}` is not a size ({HELP})"))?;
    let bytes = value * factor as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("`{text}` is too large"));
    }
    if bytes < 1.0 {
        return Err(format!("`{text}` is zero; a size must be positive"));
    }
    Ok(bytes.round() as u64)
}

/// A DNS label: lowercase letters, digits and `-`, not starting or ending with `-`, at most 63.
pub fn check_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a name cannot be empty".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "`{name}` is {} characters long; a name has at most 63",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "`{name}` contains `{c}`; a name uses lowercase letters, digits and `-`"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("`{name}` starts or ends with `-`"));
    }
    Ok(())
}

/// A DNS name made of labels: each label at most 63 characters, the whole at most 253.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!(
            "`{name}` is {} characters long; a DNS name has at most 253",
            name.len()
        ));
    }
    for label in name.split('.') {
        let lower = label.to_ascii_lowercase();
        check_dns_label(&lower).map_err(|e| {
            if label.is_empty() {
                format!("`{name}` has an empty label")
            } else {
                e
            }
        })?;
    }
    Ok(())
}

/// A name turned into a DNS label: lowercase, runs of other characters as `-`, at most 63.
pub fn sanitize_label(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out = out.trim_matches('-').to_owned();
    out.truncate(63);
    out.trim_end_matches('-').to_owned()
}

/// An environment variable name: letters, digits and `_`, not starting with a digit.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not an environment variable name (letters, digits and `_`, not starting with a digit)"
        ))
    }
}

/// Whether an environment variable's name says its value is a secret (`NATS_PASSWORD`,
/// `API_TOKEN`, `aws_secret_access_key`): such a value is never shown in an error's snippet.
/// A name ending in `_FILE`, `_PATH` or `_DIR` holds where a secret is, not the secret.
pub fn names_a_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let where_it_is = ["_FILE", "_PATH", "_DIR"]
        .iter()
        .any(|s| upper.ends_with(s));
    !where_it_is
        && [
            "PASSWORD",
            "PASSWD",
            "SECRET",
            "TOKEN",
            "API_KEY",
            "APIKEY",
            "PRIVATE_KEY",
            "CREDENTIAL",
        ]
        .iter()
        .any(|w| upper.contains(w))
}

/// Where a file that does not parse as YAML may hold a secret value, as byte ranges to blank
/// ([`crate::diag::Sources::blank_range`]): with no tree to walk, found line by line. The value
/// of a `KEY: value` entry (block or flow) or of a `KEY=value` item whose KEY names a secret by
/// [`names_a_secret`], as validation blanks an `env` entry's; a `from:` that is neither
/// `env:VAR` nor `file:PATH`, as validation blanks a secret's bad source. A block scalar's, an
/// open quote's or an open bracket's further lines go with it, and so do more-indented lines
/// after such a value that look like no entry of their own (a plain scalar's continuation).
/// `secrets` is a field of the declaration, not a variable: its value is scanned, not blanked.
pub fn secret_values_by_line(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    // The column of the key whose value goes on, and whether every more-indented line is part
    // of it (a block scalar, an open quote or bracket) or only those that look like no entry.
    let mut goes_on: Option<(usize, bool)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let body = line.trim_end_matches(['\n', '\r']);
        let content = body.trim_start_matches([' ', '\t']);
        let indent = body.len() - content.len();
        if let Some((column, whole)) = goes_on {
            if content.is_empty() {
                continue;
            }
            if indent > column && (whole || !looks_like_an_entry(content)) {
                out.push(start + indent..start + body.len());
                continue;
            }
        }
        goes_on = scan_line(body, start, &mut out);
    }
    out
}

/// A line that starts an entry of its own: a sequence item, a comment, or `KEY:`.
fn looks_like_an_entry(content: &str) -> bool {
    content.starts_with("- ")
        || content == "-"
        || content.starts_with('#')
        || key_at(content.as_bytes(), 0).is_some_and(|(_, end)| {
            let rest = &content.as_bytes()[end..];
            let rest = &rest[rest.iter().take_while(|b| **b == b' ').count()..];
            rest.first() == Some(&b':')
        })
}

/// A key at `i`: quoted (its text without quotes), or a plain run of bytes up to a space or an
/// indicator. Answers the key and where it ends.
fn key_at(b: &[u8], i: usize) -> Option<(String, usize)> {
    match b.get(i)? {
        b'"' | b'\'' => {
            let end = closing_quote(b, i)?;
            Some((
                String::from_utf8_lossy(&b[i + 1..end]).into_owned(),
                end + 1,
            ))
        }
        _ => {
            let n = b[i..]
                .iter()
                .take_while(|c| {
                    !matches!(
                        c,
                        b' ' | b'\t'
                            | b':'
                            | b'='
                            | b','
                            | b'{'
                            | b'}'
                            | b'['
                            | b']'
                            | b'#'
                            | b'"'
                            | b'\''
                    )
                })
                .count();
            (n > 0).then(|| (String::from_utf8_lossy(&b[i..i + n]).into_owned(), i + n))
        }
    }
}

/// The closing quote of the quoted scalar opening at `i`, on this line.
fn closing_quote(b: &[u8], i: usize) -> Option<usize> {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if q == b'"' => j += 1,
            c if c == q => {
                // '' is a quote inside a single-quoted scalar.
                if q == b'\'' && b.get(j + 1) == Some(&b'\'') {
                    j += 1;
                } else {
                    return Some(j);
                }
            }
            _ => {}
        }
        j += 1;
    }
    None
}

/// The bracket closing the flow collection opening at `i`, on this line.
fn closing_bracket(b: &[u8], i: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            b'"' | b'\'' => j = closing_quote(b, j)?,
            _ => {}
        }
        j += 1;
    }
    None
}

/// Whether the value written for `key` (its first line, `value`) is a secret.
fn secret_entry(key: &str, value: &str) -> bool {
    if key == "from" {
        let v = value.trim_matches(['"', '\'']);
        return !(v.starts_with("env:") || v.strip_prefix("file:").is_some_and(|p| !p.is_empty()));
    }
    key != "secrets" && names_a_secret(key)
}

/// Blanks the secret values of one line (at byte `start` of the file); answers the column of
/// the key whose value goes on past the line, if one does, and whether all of what follows it
/// more indented is its.
fn scan_line(
    body: &str,
    start: usize,
    out: &mut Vec<std::ops::Range<usize>>,
) -> Option<(usize, bool)> {
    let b = body.as_bytes();
    let skip_spaces = |mut i: usize| {
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        i
    };
    let mut depth = 0usize;
    let mut i = skip_spaces(0);
    // Whether an entry may start at `i`: after the indentation, `- `, `{`, `[` or `,`.
    let mut entry_start = true;
    while i < b.len() {
        if entry_start && b[i] == b'-' && matches!(b.get(i + 1), None | Some(b' ' | b'\t')) {
            i = skip_spaces(i + 1);
            continue;
        }
        if entry_start && let Some((key, end)) = key_at(b, i) {
            let column = i;
            let after = skip_spaces(end);
            // `KEY=value` (an item of a list of variables), quoted as a whole or not.
            let assignment = if matches!(b[i], b'"' | b'\'') {
                key.split_once('=')
                    .map(|(k, _)| (k.to_owned(), i + 1 + k.len() + 1, end - 1))
            } else if b.get(end) == Some(&b'=') {
                let mut stop = if depth > 0 {
                    b[end..]
                        .iter()
                        .position(|c| matches!(c, b',' | b'}' | b']'))
                        .map_or(b.len(), |p| end + p)
                } else {
                    b.len()
                };
                while stop > end + 1 && matches!(b[stop - 1], b' ' | b'\t') {
                    stop -= 1;
                }
                Some((key.clone(), end + 1, stop))
            } else {
                None
            };
            if let Some((name, from, to)) = assignment {
                if name != "secrets" && names_a_secret(&name) && from < to {
                    out.push(start + from..start + to);
                }
                i = to.max(end);
                entry_start = false;
                continue;
            }
            let colon = b.get(after) == Some(&b':')
                && matches!(
                    b.get(after + 1),
                    None | Some(b' ' | b'\t' | b',' | b'}' | b']')
                );
            if !colon {
                i = end;
                entry_start = false;
                continue;
            }
            let v = skip_spaces(after + 1);
            let value_end = |from: usize| -> (usize, bool) {
                // Where the value ends on this line, and whether it goes on past it.
                match b.get(from) {
                    None | Some(b'#') => (from, true),
                    Some(b'|' | b'>') => (b.len(), true),
                    Some(b'{' | b'[') => match closing_bracket(b, from) {
                        Some(e) => (e + 1, false),
                        None => (b.len(), true),
                    },
                    Some(b'"' | b'\'') => match closing_quote(b, from) {
                        Some(e) => (e + 1, false),
                        None => (b.len(), true),
                    },
                    _ if depth > 0 => {
                        let mut end = b[from..]
                            .iter()
                            .position(|c| matches!(c, b',' | b'}' | b']'))
                            .map_or(b.len(), |p| from + p);
                        while end > from && matches!(b[end - 1], b' ' | b'\t') {
                            end -= 1;
                        }
                        (end, false)
                    }
                    _ => (b.len(), false),
                }
            };
            let (to, open) = value_end(v);
            let value = &body[v..to];
            let blocky = open || matches!(b.get(v), Some(b'|' | b'>'));
            let secret = if blocky && key == "from" {
                // A block scalar or an open quote: its text is not on this line.
                v < b.len() && b[v] != b'#'
            } else {
                secret_entry(&key, value)
            };
            if secret {
                if v < to {
                    out.push(start + v..start + to);
                }
                if depth == 0 {
                    // The value goes on in more-indented lines: all of them for a block scalar,
                    // an open quote or bracket, else those that are no entry of their own.
                    return Some((column, open && v < b.len() && b[v] != b'#'));
                }
                i = to;
                entry_start = false;
                continue;
            }
            i = v;
            entry_start = matches!(b.get(v), Some(b'{' | b'['));
            if entry_start {
                depth += 1;
                i = skip_spaces(v + 1);
            }
            continue;
        }
        match b[i] {
            b'{' | b'[' => {
                depth += 1;
                entry_start = true;
                i = skip_spaces(i + 1);
                continue;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth > 0 => {
                entry_start = true;
                i = skip_spaces(i + 1);
                continue;
            }
            b'"' | b'\'' => match closing_quote(b, i) {
                Some(e) => i = e,
                None => return None,
            },
            b'#' if i == 0 || matches!(b[i - 1], b' ' | b'\t') => return None,
            _ => {}
        }
        entry_start = false;
        i += 1;
    }
    None
}

/// A Docker volume or network name.
pub fn check_engine_name(name: &str) -> Result<(), String> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid name (letters, digits, `_`, `.`, `-`, starting with a letter or digit)"
        ))
    }
}

pub const MOUNT_HELP: &str =
    "allowed: workspace[:TARGET][:ro|rw], docker-socket[:ro|rw], volume:NAME:TARGET[:ro|rw]";

/// The mount words: `workspace[:TARGET][:ro|rw]`, `docker-socket[:ro|rw]`,
/// `volume:NAME:TARGET[:ro|rw]`. Raw host paths are refused.
pub fn parse_mount(text: &str) -> Result<Mount, String> {
    let mut parts: Vec<&str> = text.split(':').collect();
    let read_only = match parts.last() {
        Some(&"ro") if parts.len() > 1 => {
            parts.pop();
            Some(true)
        }
        Some(&"rw") if parts.len() > 1 => {
            parts.pop();
            Some(false)
        }
        _ => None,
    };
    let target = |t: &str| -> Result<String, String> {
        if t.starts_with('/') && !t.contains("..") {
            Ok(t.to_owned())
        } else {
            Err(format!(
                "the target `{t}` in `{text}` must be an absolute path inside the container"
            ))
        }
    };
    match parts.as_slice() {
        ["workspace"] => Ok(Mount::Workspace {
            target: DEFAULT_WORKSPACE_TARGET.into(),
            read_only: read_only.unwrap_or(false),
        }),
        ["workspace", t] => Ok(Mount::Workspace {
            target: target(t)?,
            read_only: read_only.unwrap_or(false),
        }),
        ["docker-socket"] => Ok(Mount::DockerSocket {
            read_only: read_only.unwrap_or(false),
        }),
        ["volume", name, t] => {
            check_engine_name(name).map_err(|e| format!("volume {e}"))?;
            Ok(Mount::Volume {
                name: (*name).to_owned(),
                target: target(t)?,
                read_only: read_only.unwrap_or(false),
            })
        }
        [first, ..]
            if first.starts_with('/') || first.starts_with('.') || first.starts_with('~') =>
        {
            Err(format!(
                "`{text}` is a host path; tether mounts only named things, never a raw host path"
            ))
        }
        _ => Err(format!("`{text}` is not a mount word")),
    }
}

/// Suggests the closest of `candidates` to `word`, if one is close enough to be a typo.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_named_by_its_variable_not_where_it_is() {
        for secret in [
            "NATS_PASSWORD",
            "db_passwd",
            "API_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "OPENAI_API_KEY",
            "GIT_CREDENTIALS",
        ] {
            assert!(names_a_secret(secret), "{secret}");
        }
        for not in [
            "NATS_PASSWORD_FILE",
            "TOKEN_PATH",
            "SECRETS_DIR",
            "NATS_USER",
            "PATH",
            "KEYBOARD",
        ] {
            assert!(!names_a_secret(not), "{not}");
        }
    }

    /// The text with what [`secret_values_by_line`] finds blanked.
    fn blanked(text: &str) -> String {
        let mut sources = crate::diag::Sources::default();
        let id = sources.add("f", text);
        for range in secret_values_by_line(text) {
            sources.blank_range(id, range);
        }
        sources.get(id).unwrap().text.clone()
    }

    #[test]
    fn secret_values_are_found_line_by_line() {
        // Block entries, by the name rule validation uses (`_FILE` holds where a secret is).
        assert_eq!(
            blanked("env:\n  DB_PASSWORD: hunter2\n  USER: bob\n  NATS_PASSWORD_FILE: /run/x\n"),
            "env:\n  DB_PASSWORD: *******\n  USER: bob\n  NATS_PASSWORD_FILE: /run/x\n"
        );
        // A list of KEY=value, plain or quoted.
        assert_eq!(
            blanked(
                "environment:\n  - DB_PASSWORD=hunter2\n  - \"API_TOKEN=tok 1\"\n  - PATH=/bin\n"
            ),
            "environment:\n  - DB_PASSWORD=*******\n  - \"API_TOKEN=*****\"\n  - PATH=/bin\n"
        );
        // Flow mappings and lists: each value up to its `,`, quote or bracket.
        assert_eq!(
            blanked("env: { NATS_PASSWORD: pw, X: 1, API_KEY: \"a, b\", T_TOKEN: [1, 2] }\n"),
            "env: { NATS_PASSWORD: **, X: 1, API_KEY: ******, T_TOKEN: ****** }\n"
        );
        assert_eq!(
            blanked("environment: [DB_PASSWORD=x1, \"SECRET=y2\", A=b]\n"),
            "environment: [DB_PASSWORD=**, \"SECRET=**\", A=b]\n"
        );
        // A secret's `from` that is no source may be the secret; `secrets` itself is a field.
        assert_eq!(
            blanked(
                "secrets:\n  - { name: a, from: s3cr3t }\n  - name: b\n    from: \"env:B\"\n  - name: c\n    from: hunter2\n  - { name: d, from: \"file:d.txt\" }\n"
            ),
            "secrets:\n  - { name: a, from: ****** }\n  - name: b\n    from: \"env:B\"\n  - name: c\n    from: *******\n  - { name: d, from: \"file:d.txt\" }\n"
        );
        // What goes on past the line: a block scalar, an open quote, a plain continuation.
        assert_eq!(
            blanked("env:\n  API_TOKEN: |\n    line1\n\n    line2\n  USER: bob\n"),
            "env:\n  API_TOKEN: *\n    *****\n\n    *****\n  USER: bob\n"
        );
        assert_eq!(
            blanked("env:\n  DB_PASSWORD: \"hun\n    ter2\"\n  USER: bob\n"),
            "env:\n  DB_PASSWORD: ****\n    *****\n  USER: bob\n"
        );
        assert_eq!(
            blanked("env:\n  DB_PASSWORD: hun\n    ter2\n    NOT: this\n  USER: bob\n"),
            "env:\n  DB_PASSWORD: ***\n    ****\n    NOT: this\n  USER: bob\n"
        );
        // Comments and other values are left alone.
        let plain = "# DB_PASSWORD: example\nimage: redis # API_TOKEN: x\ncommand: [serve, --port, \"1\"]\n";
        assert_eq!(blanked(plain), plain);
    }

    #[test]
    fn durations() {
        let ok = |t: &str| parse_duration(t).unwrap().as_millis();
        assert_eq!(ok("500ms"), 500);
        assert_eq!(ok("30s"), 30_000);
        assert_eq!(ok("2m"), 120_000);
        assert_eq!(ok("1h"), 3_600_000);
        assert_eq!(ok("1.5s"), 1_500);
        assert_eq!(ok("45"), 45_000);
        assert_eq!(
            parse_duration("0s").unwrap_err(),
            "`0s` is zero; a duration must be at least 1ms"
        );
        assert_eq!(
            parse_duration("-5s").unwrap_err(),
            "`-5s` is negative; a duration must be positive"
        );
        assert_eq!(
            parse_duration("soon").unwrap_err(),
            "`soon` is not a duration (use 500ms, 30s, 2m, 1h or a number of seconds)"
        );
        for bad in ["", "s", "1.s", ".5s", "1..2s", "5 m", "1d", "1e3s", "1m30s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_duration("99999999999999h").is_err());
        assert!(duration_from_secs(-1.0, "-1").is_err());
        assert!(duration_from_secs(0.0, "0").is_err());
        assert_eq!(duration_from_secs(0.25, "0.25").unwrap().as_millis(), 250);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256m").unwrap(), 256 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512kb").unwrap(), 512 << 10);
        assert!(parse_size("0m").is_err());
        assert!(parse_size("-1g").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999t").is_err());
    }

    #[test]
    fn labels() {
        assert!(check_dns_label("cache-1").is_ok());
        assert!(check_dns_label("Cache").is_err());
        assert!(check_dns_label("-a").is_err());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
        assert!(check_dns_name("db.internal").is_ok());
        assert!(check_dns_name("db..internal").is_err());
        assert!(check_dns_name(&format!("{}.x", "a".repeat(63))).is_ok());
        assert!(check_dns_name(&["a"; 128].join(".")).is_err());
        assert_eq!(sanitize_label("My_Project.v2"), "my-project-v2");
        assert_eq!(sanitize_label("___"), "");
        assert_eq!(sanitize_label(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn mounts() {
        assert_eq!(
            parse_mount("workspace").unwrap(),
            Mount::Workspace {
                target: "/workspace".into(),
                read_only: false
            }
        );
        assert_eq!(
            parse_mount("workspace:/src:ro").unwrap(),
            Mount::Workspace {
                target: "/src".into(),
                read_only: true
            }
        );
        assert_eq!(
            parse_mount("workspace:ro").unwrap(),
            Mount::Workspace {
                target: "/workspace".into(),
                read_only: true
            }
        );
        assert_eq!(
            parse_mount("docker-socket:ro").unwrap(),
            Mount::DockerSocket { read_only: true }
        );
        assert_eq!(
            parse_mount("volume:cache-data:/data").unwrap(),
            Mount::Volume {
                name: "cache-data".into(),
                target: "/data".into(),
                read_only: false
            }
        );
        assert_eq!(
            parse_mount("/etc:/etc").unwrap_err(),
            "`/etc:/etc` is a host path; tether mounts only named things, never a raw host path"
        );
        assert!(parse_mount("workspace:src").is_err());
        assert!(parse_mount("volume:x").is_err());
        assert!(parse_mount("home").is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("imag", &["image", "env"]), Some("image"));
        assert_eq!(
            did_you_mean("lifecyle", &["lifecycle", "image"]),
            Some("lifecycle")
        );
        assert_eq!(did_you_mean("zzzzzz", &["image", "env"]), None);
    }

    #[test]
    fn zero_delays_are_recognised() {
        for z in ["0", "0.0", "0s", "0ms", "00m", " 0h "] {
            assert!(is_zero_duration(z), "{z}");
        }
        for nz in ["", "s", "0.5s", "10ms", ".0", "-0", "0x"] {
            assert!(!is_zero_duration(nz), "{nz}");
        }
    }
}
