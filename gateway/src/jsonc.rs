//! JSON with comments and trailing commas (`wrangler.jsonc`), reduced to plain JSON.
//!
//! Comments and trailing commas are overwritten with spaces rather than removed, so every byte
//! keeps its offset: a `serde_json` error's line and column point into the user's file.

/// Returns `src` with `//` and `/* */` comments and trailing commas blanked out.
pub fn to_json(src: &str) -> String {
    let mut out = strip_comments(src.as_bytes());
    blank_trailing_commas(&mut out);
    // Only ASCII bytes were replaced by ASCII spaces (a multi-byte character inside a comment
    // becomes several spaces), so the result is still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn strip_comments(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len());
    let mut i = 0;
    while i < src.len() {
        let b = src[i];
        if b == b'"' {
            let end = string_end(src, i);
            out.extend_from_slice(&src[i..end]);
            i = end;
        } else if b == b'/' && src.get(i + 1) == Some(&b'/') {
            while i < src.len() && src[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if b == b'/' && src.get(i + 1) == Some(&b'*') {
            out.extend_from_slice(b"  ");
            i += 2;
            while i < src.len() && !(src[i] == b'*' && src.get(i + 1) == Some(&b'/')) {
                // Newlines survive so that line numbers after the comment stay right.
                out.push(if src[i] == b'\n' { b'\n' } else { b' ' });
                i += 1;
            }
            if i < src.len() {
                out.extend_from_slice(b"  ");
                i += 2;
            }
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// Index just past the string literal starting at `start` (an opening quote).
fn string_end(src: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < src.len() {
        match src[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    src.len()
}

fn blank_trailing_commas(buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'"' => i = string_end(buf, i),
            b',' => {
                let next = buf[i + 1..]
                    .iter()
                    .find(|c| !c.is_ascii_whitespace())
                    .copied();
                if matches!(next, Some(b'}') | Some(b']')) {
                    buf[i] = b' ';
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::to_json;

    #[test]
    fn comments_and_trailing_commas_become_spaces() {
        let src = "{\n  // the name\n  \"name\": \"a\", /* inline */\n  \"list\": [1, 2,],\n}\n";
        let json = to_json(src);
        assert_eq!(json.len(), src.len());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["name"], "a");
        assert_eq!(v["list"], serde_json::json!([1, 2]));
    }

    #[test]
    fn comment_markers_inside_strings_are_kept() {
        let src = r#"{"url": "http://x/*y*/", "s": "a\"// b",}"#;
        let v: serde_json::Value = serde_json::from_str(&to_json(src)).unwrap();
        assert_eq!(v["url"], "http://x/*y*/");
        assert_eq!(v["s"], "a\"// b");
    }

    #[test]
    fn errors_keep_their_line_numbers() {
        let src = "{\n/* a\n multi-line\n comment */\n\"a\": 1,\n\"b\": oops\n}";
        let err = serde_json::from_str::<serde_json::Value>(&to_json(src)).unwrap_err();
        assert_eq!(err.line(), 6);
    }
}
