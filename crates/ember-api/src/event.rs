//! The one check every event passes before any instance is touched, on Ember's invoke and
//! Lambda's (all three invocation types): it is UTF-8 JSON that nests at most
//! [`MAX_DEPTH`] arrays and objects deep. Nothing is built: the text is checked for UTF-8,
//! parsed into nothing (`IgnoredAny`) and scanned once for its depth.
//!
//! An empty (or all-whitespace) body is the event `{}`.

use bytes::Bytes;

/// Deepest nesting of arrays and objects an event may have. Runtimes parse events
/// recursively (Rust's serde_json stops at 128, Python at its recursion limit): deeper
/// events would fail inside the function, or crash it.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum EventError {
    #[error(
        "the event is not valid UTF-8 (byte {0} is not): JSON text, strings included, must be UTF-8"
    )]
    NotUtf8(usize),
    #[error("the event is not valid JSON: {0}")]
    NotJson(String),
    #[error("the event nests arrays and objects more than {MAX_DEPTH} levels deep; flatten it")]
    TooDeep,
}

/// The event to hand to the function, or why there is none.
pub(crate) fn check(body: Bytes) -> Result<Bytes, EventError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Bytes::from_static(b"{}"));
    }
    let text = std::str::from_utf8(&body).map_err(|e| EventError::NotUtf8(e.valid_up_to()))?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| EventError::NotJson(e.to_string()))?;
    if depth(text.as_bytes()) > MAX_DEPTH {
        return Err(EventError::TooDeep);
    }
    Ok(body)
}

/// The deepest nesting of a syntactically valid JSON text (brackets inside strings do not
/// count).
fn depth(json: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> Bytes {
        Bytes::from(format!("{}{}", "[".repeat(n), "]".repeat(n)))
    }

    #[test]
    fn valid_events_pass_unchanged() {
        for ok in [
            r#"{"a": [1, 2.5e300, -0, null, true, "h\u00e9 \ud83d\udd25 [{"]}"#,
            "\"caf\u{e9} \u{1F525}\"",
            "1e400",
            " [ ] ",
        ] {
            assert_eq!(check(Bytes::from(ok)), Ok(Bytes::from(ok)), "{ok}");
        }
        assert_eq!(check(Bytes::from("  \n")), Ok(Bytes::from("{}")));
        assert_eq!(check(nested(MAX_DEPTH)), Ok(nested(MAX_DEPTH)));
        // Brackets inside strings, escaped quotes included, are not nesting.
        let s = Bytes::from(format!(r#"["\"{}"]"#, "[".repeat(1000)));
        assert_eq!(check(s.clone()), Ok(s));
    }

    #[test]
    fn malformed_events_are_refused() {
        assert_eq!(
            check(Bytes::from_static(b"{\"a\": \"\xff\xfe\"}")),
            Err(EventError::NotUtf8(7))
        );
        // A lone continuation byte, an overlong encoding, a UTF-16 surrogate in UTF-8.
        for bad in [&b"\"\x80\""[..], b"\"\xc0\xaf\"", b"\"\xed\xa0\x80\""] {
            assert!(matches!(
                check(Bytes::copy_from_slice(bad)),
                Err(EventError::NotUtf8(1))
            ));
        }
        assert_eq!(check(nested(MAX_DEPTH + 1)), Err(EventError::TooDeep));
        assert_eq!(check(nested(100_000)), Err(EventError::TooDeep));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(100), "}".repeat(100));
        assert_eq!(check(Bytes::from(objects)), Err(EventError::TooDeep));
        for bad in ["{not json", "[1,]", "\"\u{1}\"", "1 2", "[[[[", "]"] {
            assert!(
                matches!(check(Bytes::from(bad)), Err(EventError::NotJson(_))),
                "{bad}"
            );
        }
    }
}
