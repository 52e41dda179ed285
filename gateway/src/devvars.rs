//! `.dev.vars`: local secrets in dotenv format, as wrangler reads them.
//!
//! `KEY=value` per line, `#` comments, an optional `export ` prefix, values in double quotes
//! (escapes `\n`, `\r`, `\t`, `\"`, `\\`; may span lines), single quotes or backticks (literal;
//! may span lines), or bare (trimmed, ` #` starts a comment).

/// Parsed entries in file order, and one message per line that could not be read.
#[derive(Debug, Default)]
pub struct DevVars {
    pub vars: Vec<(String, String)>,
    pub problems: Vec<String>,
}

pub fn parse(src: &str) -> DevVars {
    let mut out = DevVars::default();
    let lines: Vec<&str> = src.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let line = lines[i].trim();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, rest)) = line.split_once('=') else {
            out.problems.push(format!(
                "line {line_no}: expected KEY=value, found {line:?}"
            ));
            continue;
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        {
            out.problems
                .push(format!("line {line_no}: invalid name {key:?}"));
            continue;
        }
        let rest = rest.trim_start();
        let quote = rest
            .chars()
            .next()
            .filter(|c| matches!(c, '"' | '\'' | '`'));
        let value = match quote {
            None => {
                let bare = match rest.find(" #") {
                    Some(at) => &rest[..at],
                    None => rest,
                };
                bare.trim().to_string()
            }
            Some(q) => {
                // Collect until the closing quote, across lines if needed.
                let mut text = rest[1..].to_string();
                loop {
                    if let Some(end) = closing_quote(&text, q) {
                        text.truncate(end);
                        break;
                    }
                    if i >= lines.len() {
                        out.problems
                            .push(format!("line {line_no}: unterminated {q} quote for {key}"));
                        break;
                    }
                    text.push('\n');
                    text.push_str(lines[i]);
                    i += 1;
                }
                if q == '"' {
                    unescape(&text)
                } else {
                    text
                }
            }
        };
        out.vars.push((key.to_string(), value));
    }
    out
}

fn closing_quote(text: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' && q == '"' {
            escaped = true;
        } else if c == q {
            return Some(at);
        }
    }
    None
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn get<'a>(v: &'a super::DevVars, k: &str) -> &'a str {
        &v.vars.iter().find(|(key, _)| key == k).unwrap().1
    }

    #[test]
    fn reads_the_dotenv_forms() {
        let v = parse(
            "# secrets\nAPI_KEY=abc123\nexport TOKEN = tok # a comment\nQUOTED=\"line1\\nline2\"\n\
             SINGLE='no \\n escape'\nMULTI=\"first\nsecond\"\nEMPTY=\nURL=http://x/#frag\n",
        );
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert_eq!(get(&v, "API_KEY"), "abc123");
        assert_eq!(get(&v, "TOKEN"), "tok");
        assert_eq!(get(&v, "QUOTED"), "line1\nline2");
        assert_eq!(get(&v, "SINGLE"), "no \\n escape");
        assert_eq!(get(&v, "MULTI"), "first\nsecond");
        assert_eq!(get(&v, "EMPTY"), "");
        assert_eq!(get(&v, "URL"), "http://x/#frag");
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let v = parse("GOOD=1\nthis is not a pair\nB=\"open\n");
        assert_eq!(get(&v, "GOOD"), "1");
        assert_eq!(v.problems.len(), 2);
        assert!(v.problems[0].starts_with("line 2:"), "{:?}", v.problems);
        assert!(v.problems[1].contains("unterminated"), "{:?}", v.problems);
    }
}
