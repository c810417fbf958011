//! A small YAML writer for JSON values, for `tether config` and rendered files: block style,
//! keys in the order given, strings quoted only where YAML would read them as something else.

use serde_json::Value;

/// YAML text for `value`, ending with a newline.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => write_map(m, 0, &mut out),
        Value::Array(a) if !a.is_empty() => write_seq(a, 0, &mut out),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn indent(n: usize, out: &mut String) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn write_map(m: &serde_json::Map<String, Value>, depth: usize, out: &mut String) {
    for (k, v) in m {
        indent(depth, out);
        out.push_str(&string(k));
        out.push(':');
        write_child(v, depth, out);
    }
}

fn write_seq(a: &[Value], depth: usize, out: &mut String) {
    for v in a {
        indent(depth, out);
        out.push('-');
        match v {
            Value::Object(m) if !m.is_empty() => {
                // The first key goes on the dash's line.
                let mut inner = String::new();
                write_map(m, depth + 2, &mut inner);
                out.push(' ');
                out.push_str(&inner[depth + 2..]);
            }
            Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                write_seq(a, depth + 2, out);
            }
            other => {
                out.push(' ');
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

fn write_child(v: &Value, depth: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(m, depth + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(a, depth + 2, out);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(_) => "[]".to_owned(),
        Value::Object(_) => "{}".to_owned(),
    }
}

/// A string as a YAML scalar: plain when that reads back as the same string, else double-quoted
/// (JSON string syntax is valid YAML).
pub fn string(s: &str) -> String {
    const RESERVED: &[&str] = &[
        "", "~", "null", "true", "false", "yes", "no", "on", "off", "y", "n",
    ];
    let plain = !RESERVED.contains(&s.to_ascii_lowercase().as_str())
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./@".contains(c))
        && s.parse::<f64>().is_err();
    if plain {
        s.to_owned()
    } else {
        Value::String(s.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_block_yaml_that_reads_back_the_same() {
        let v = serde_json::json!({
            "name": "cache",
            "port": 6379,
            "on": "yes",
            "list": ["a", "1", 2, {"k": "v", "j": [1]}],
            "empty": {},
            "none": [],
            "nested": {"x": null, "url": "http://a:1/b"}
        });
        let text = to_yaml(&v);
        assert_eq!(
            text,
            "name: cache\nport: 6379\n\"on\": \"yes\"\nlist:\n  - a\n  - \"1\"\n  - 2\n  - k: v\n    j:\n      - 1\nempty: {}\nnone: []\nnested:\n  x: null\n  url: \"http://a:1/b\"\n"
        );
        let back = crate::yaml::parse(&text).unwrap();
        assert!(matches!(back.value, crate::yaml::Value::Map(ref m) if m.len() == 7));
    }
}
