//! Splitting SQL text into statements the way SQLite's own tokenizer sees them.

use std::ffi::CString;

use libsqlite3_sys as ffi;

/// The statements of `sql`, each with its terminating `;`, in order. Boundaries come from
/// `sqlite3_complete`, so semicolons inside strings, identifiers, comments and trigger bodies
/// (`BEGIN … END;`) do not split. A trailing part with no terminating `;` is kept as the last
/// statement unless it is only whitespace and comments. Statements that are only comments are
/// dropped (as `wrangler d1 execute` drops them).
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in sql.bytes().enumerate() {
        if b != b';' {
            continue;
        }
        let candidate = &sql[start..=i];
        if is_complete(candidate) {
            if !is_blank(candidate) {
                out.push(candidate.trim().to_owned());
            }
            start = i + 1;
        }
    }
    let rest = &sql[start..];
    if !is_blank(rest) {
        out.push(rest.trim().to_owned());
    }
    out
}

fn is_complete(sql: &str) -> bool {
    match CString::new(sql) {
        // SAFETY: a NUL-terminated string that outlives the call.
        Ok(c) => unsafe { ffi::sqlite3_complete(c.as_ptr()) != 0 },
        Err(_) => false,
    }
}

/// Whether `sql` holds nothing but whitespace, `;` and comments.
pub fn is_blank(sql: &str) -> bool {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | b';' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
            }
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn splits_where_sqlite_would() {
        let sql = "CREATE TABLE t (a TEXT); -- one\nINSERT INTO t VALUES ('x;y');\n\
                   CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM t; END;\n\
                   /* only a comment */;\n-- trailing comment\n";
        assert_eq!(
            split_statements(sql),
            vec![
                "CREATE TABLE t (a TEXT);",
                "-- one\nINSERT INTO t VALUES ('x;y');",
                "CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM t; END;",
            ]
        );
        assert_eq!(split_statements("SELECT 1"), vec!["SELECT 1"]);
        assert!(split_statements("  -- nothing\n").is_empty());
    }
}
