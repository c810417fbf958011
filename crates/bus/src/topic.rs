//! Topics and topic patterns, with NATS subject semantics.
//!
//! A topic is dot-separated tokens (`orders.eu.created`); a token is letters, digits, `-` and `_`.
//! A pattern may also use `*` for exactly one token and `>` for one or more tokens, last only.
//! Pure: no I/O.

use std::fmt;

/// Why a topic or a pattern is not valid; its message names the topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicError {
    pub topic: String,
    pub reason: String,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "topic `{}`: {}", self.topic, self.reason)
    }
}

impl std::error::Error for TopicError {}

/// The longest topic or pattern accepted, in bytes.
pub const MAX_LEN: usize = 255;

fn error(topic: &str, reason: impl Into<String>) -> TopicError {
    TopicError {
        topic: topic.to_owned(),
        reason: reason.into(),
    }
}

fn check(topic: &str, wildcards: bool) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(error(topic, "is empty"));
    }
    if topic.len() > MAX_LEN {
        return Err(error(topic, format!("is longer than {MAX_LEN} bytes")));
    }
    let tokens: Vec<&str> = topic.split('.').collect();
    let last = tokens.len() - 1;
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err(error(
                topic,
                format!("token {} is empty (two dots, or a dot at an end)", i + 1),
            ));
        }
        if *t == "*" || *t == ">" {
            if !wildcards {
                return Err(error(
                    topic,
                    format!("`{t}` is a wildcard: a message's topic names one topic"),
                ));
            }
            if *t == ">" && i != last {
                return Err(error(topic, "`>` may only be the last token"));
            }
            continue;
        }
        if let Some(c) = t
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(error(
                topic,
                format!(
                    "`{c}` is not allowed: tokens are letters, digits, `-` and `_`{}",
                    if wildcards {
                        ", or a whole `*` or `>`"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a concrete topic: no wildcards.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    check(topic, false)
}

/// Checks a pattern: a topic that may use `*` and a last `>`.
pub fn validate_pattern(pattern: &str) -> Result<(), TopicError> {
    check(pattern, true)
}

/// Whether a valid `pattern` matches a valid concrete `topic`.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic `inner` matches is also matched by `outer` (both valid patterns): a grant
/// `outer` allows a subscription `inner`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('.');
    let mut i = inner.split('.');
    loop {
        match (o.next(), i.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(x)) if x != ">" => {}
            (Some(a), Some(b)) if a == b && a != "*" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("dlq.{topic}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concrete_topics() {
        for ok in [
            "a",
            "orders",
            "orders.eu.created",
            "a-b_c.D9",
            "dlq.orders.x",
        ] {
            assert_eq!(validate_topic(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("", "topic ``: is empty"),
            (
                "a..b",
                "topic `a..b`: token 2 is empty (two dots, or a dot at an end)",
            ),
            (
                ".a",
                "topic `.a`: token 1 is empty (two dots, or a dot at an end)",
            ),
            (
                "a.",
                "topic `a.`: token 2 is empty (two dots, or a dot at an end)",
            ),
            (
                "a.*",
                "topic `a.*`: `*` is a wildcard: a message's topic names one topic",
            ),
            (
                "a.>",
                "topic `a.>`: `>` is a wildcard: a message's topic names one topic",
            ),
            (
                "a b",
                "topic `a b`: ` ` is not allowed: tokens are letters, digits, `-` and `_`",
            ),
            (
                "a.b*",
                "topic `a.b*`: `*` is not allowed: tokens are letters, digits, `-` and `_`",
            ),
            (
                "ordérs",
                "topic `ordérs`: `é` is not allowed: tokens are letters, digits, `-` and `_`",
            ),
        ];
        for (topic, message) in cases {
            assert_eq!(validate_topic(topic).unwrap_err().to_string(), message);
        }
        let long = "a".repeat(MAX_LEN + 1);
        assert_eq!(
            validate_topic(&long).unwrap_err().reason,
            "is longer than 255 bytes"
        );
        assert_eq!(validate_topic(&"a".repeat(MAX_LEN)), Ok(()));
    }

    #[test]
    fn patterns() {
        for ok in ["a", "*", ">", "a.*", "a.>", "*.b.>", "a.*.c", "*.*"] {
            assert_eq!(validate_pattern(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("a.>.b", "topic `a.>.b`: `>` may only be the last token"),
            (">.a", "topic `>.a`: `>` may only be the last token"),
            (
                "a.b>",
                "topic `a.b>`: `>` is not allowed: tokens are letters, digits, `-` and `_`, or a whole `*` or `>`",
            ),
            (
                "a..*",
                "topic `a..*`: token 2 is empty (two dots, or a dot at an end)",
            ),
            ("", "topic ``: is empty"),
        ];
        for (p, message) in cases {
            assert_eq!(validate_pattern(p).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn matching_follows_nats() {
        let cases = [
            ("a", "a", true),
            ("a", "b", false),
            ("a", "a.b", false),
            ("a.b", "a", false),
            ("*", "a", true),
            ("*", "a.b", false),
            ("a.*", "a.b", true),
            ("a.*", "a", false),
            ("a.*", "a.b.c", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            (">", "a", true),
            (">", "a.b.c", true),
            ("*.b.>", "a.b.c", true),
            ("*.b.>", "a.b", false),
            ("*.b.>", "a.c.d", false),
            ("a.*.c", "a.x.c", true),
            ("a.*.c", "a.x.d", false),
            ("orders.*", "dlq.orders.x", false),
            ("dlq.>", "dlq.orders.x", true),
        ];
        for (p, t, expected) in cases {
            assert_eq!(matches(p, t), expected, "{p} ~ {t}");
        }
    }

    #[test]
    fn covering_is_pattern_inclusion() {
        let cases = [
            ("a.>", "a.b", true),
            ("a.>", "a.*", true),
            ("a.>", "a.>", true),
            ("a.>", "a.b.>", true),
            ("a.>", "a", false),
            ("a.>", ">", false),
            ("a.>", "*.b", false),
            ("a.*", "a.b", true),
            ("a.*", "a.*", true),
            ("a.*", "a.>", false),
            ("a.*", "a.b.c", false),
            ("a.b", "a.b", true),
            ("a.b", "a.*", false),
            ("a.b", "a.>", false),
            (">", ">", true),
            (">", "a.*.c", true),
            ("*", ">", false),
            ("*", "*", true),
            ("*.b", "a.b", true),
            ("*.b", "*.c", false),
        ];
        for (outer, inner, expected) in cases {
            assert_eq!(covers(outer, inner), expected, "{outer} ⊇ {inner}");
        }
    }

    #[test]
    fn covering_agrees_with_matching_on_concrete_topics() {
        let patterns = ["a", "*", ">", "a.*", "a.>", "*.b", "a.b.c", "*.*.c"];
        let topics = ["a", "b", "a.b", "a.c", "x.b", "a.b.c", "z.y.c"];
        for p in patterns {
            for t in topics {
                assert_eq!(covers(p, t), matches(p, t), "{p} / {t}");
            }
        }
    }

    #[test]
    fn dead_letters_go_to_dlq() {
        assert_eq!(dead_letter_topic("orders.eu"), "dlq.orders.eu");
    }
}
