//! The KV API of SQLite-backed objects, stored in the hidden table `_cf_KV` of the object's own
//! database (workerd's `SqliteKv`), so KV writes and SQL writes of a turn, or of one
//! `transaction_sync`, commit together.
//!
//! Same limits, texts and order as cinder-storage's KV API: keys ≤ 2,048 bytes, values ≤
//! 131,072 bytes (plus the serialisation header allowance), 128 keys per call, listing in UTF-8
//! byte order (SQLite's `BINARY` collation is `memcmp` on UTF-8).

use bytes::Bytes;
use cinder_storage::{
    ListOptions, StorageError, ENFORCED_MAX_VALUE_BYTES, MAX_KEYS_PER_CALL, MAX_KEY_BYTES,
};
use rusqlite::types::Value;
use rusqlite::OptionalExtension;

use crate::db::{sqlite_err, SqlStorage};
use crate::error::SqlError;

/// Borrowed KV view of a [`SqlStorage`]; see [`SqlStorage::kv`].
pub struct Kv<'a> {
    db: &'a SqlStorage,
}

impl SqlStorage {
    /// The `ctx.storage` KV API of this SQLite-backed object.
    pub fn kv(&self) -> Kv<'_> {
        Kv { db: self }
    }
}

fn check_key(key: &str) -> Result<(), SqlError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StorageError::KeyTooLarge { size: key.len() }.into());
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), SqlError> {
    if value.len() > ENFORCED_MAX_VALUE_BYTES {
        return Err(StorageError::ValueTooLarge { size: value.len() }.into());
    }
    Ok(())
}

fn check_count(count: usize) -> Result<(), SqlError> {
    if count > MAX_KEYS_PER_CALL {
        return Err(StorageError::TooManyKeys { count }.into());
    }
    Ok(())
}

/// The first string after every string that starts with `prefix`, if one exists: the prefix
/// with its last non-maximal character incremented (UTF-8 order is code point order).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        let mut n = c as u32 + 1;
        if (0xD800..0xE000).contains(&n) {
            n = 0xE000;
        }
        if let Some(next) = char::from_u32(n) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl Kv<'_> {
    fn ensure_table(&self) -> Result<(), SqlError> {
        if !self.db.inner.kv_ready.get() {
            self.db.inner.size_may_change();
            self.db.trusted(
                "CREATE TABLE IF NOT EXISTS _cf_KV (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID",
            )?;
            self.db.inner.kv_ready.set(true);
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Result<Option<Bytes>, SqlError> {
        check_key(key)?;
        if !self.db.inner.kv_ready.get() {
            return Ok(None);
        }
        let conn = self.db.conn();
        let mut st = conn
            .prepare_cached("SELECT value FROM _cf_KV WHERE key = ?1")
            .map_err(sqlite_err)?;
        let v: Option<Vec<u8>> = st
            .query_row([key], |r| r.get(0))
            .optional()
            .map_err(sqlite_err)?;
        Ok(v.map(Bytes::from))
    }

    /// Found keys only, in key order.
    pub fn get_many(&self, keys: &[String]) -> Result<Vec<(String, Bytes)>, SqlError> {
        check_count(keys.len())?;
        for k in keys {
            check_key(k)?;
        }
        let mut sorted: Vec<&String> = keys.iter().collect();
        sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        sorted.dedup();
        let mut out = Vec::new();
        for k in sorted {
            if let Some(v) = self.get(k)? {
                out.push((k.clone(), v));
            }
        }
        Ok(out)
    }

    pub fn put(&self, key: &str, value: Bytes) -> Result<(), SqlError> {
        check_key(key)?;
        check_value(&value)?;
        self.ensure_table()?;
        let conn = self.db.conn();
        let mut st = conn
            .prepare_cached("INSERT OR REPLACE INTO _cf_KV VALUES (?1, ?2)")
            .map_err(sqlite_err)?;
        st.execute(rusqlite::params![key, &value[..]])
            .map_err(sqlite_err)?;
        drop(st);
        drop(conn);
        self.db.inner.size_may_change();
        self.db.wrote();
        Ok(())
    }

    /// All or nothing: every limit is checked first, and the writes run in one savepoint.
    pub fn put_many(&self, entries: Vec<(String, Bytes)>) -> Result<(), SqlError> {
        check_count(entries.len())?;
        for (k, v) in &entries {
            check_key(k)?;
            check_value(v)?;
        }
        self.db.transaction_sync(|| {
            for (k, v) in entries {
                self.put(&k, v)?;
            }
            Ok(())
        })
    }

    pub fn delete(&self, key: &str) -> Result<bool, SqlError> {
        check_key(key)?;
        if !self.db.inner.kv_ready.get() {
            return Ok(false);
        }
        let conn = self.db.conn();
        let mut st = conn
            .prepare_cached("DELETE FROM _cf_KV WHERE key = ?1")
            .map_err(sqlite_err)?;
        let deleted = st.execute([key]).map_err(sqlite_err)? > 0;
        drop(st);
        drop(conn);
        self.db.inner.size_may_change();
        self.db.wrote();
        Ok(deleted)
    }

    /// Number of keys that existed.
    pub fn delete_many(&self, keys: &[String]) -> Result<usize, SqlError> {
        check_count(keys.len())?;
        for k in keys {
            check_key(k)?;
        }
        self.db.transaction_sync(|| {
            let mut n = 0;
            for k in keys {
                n += usize::from(self.delete(k)?);
            }
            Ok(n)
        })
    }

    /// `list()`: bounds and prefix intersect; `reverse` returns the last `limit` keys first.
    pub fn list(&self, opts: &ListOptions) -> Result<Vec<(String, Bytes)>, SqlError> {
        if opts.start.is_some() && opts.start_after.is_some() {
            return Err(StorageError::StartAndStartAfter.into());
        }
        if opts.limit == Some(0) {
            return Err(StorageError::ListLimit.into());
        }
        if !self.db.inner.kv_ready.get() {
            return Ok(Vec::new());
        }
        let mut sql = String::from("SELECT key, value FROM _cf_KV WHERE 1");
        let mut params: Vec<Value> = Vec::new();
        let mut bound = |sql: &mut String, op: &str, v: String| {
            params.push(Value::Text(v));
            sql.push_str(&format!(" AND key {op} ?{}", params.len()));
        };
        if let Some(s) = &opts.start {
            bound(&mut sql, ">=", s.clone());
        }
        if let Some(s) = &opts.start_after {
            bound(&mut sql, ">", s.clone());
        }
        if let Some(e) = &opts.end {
            bound(&mut sql, "<", e.clone());
        }
        if let Some(p) = &opts.prefix {
            bound(&mut sql, ">=", p.clone());
            if let Some(e) = prefix_end(p) {
                bound(&mut sql, "<", e);
            }
        }
        sql.push_str(if opts.reverse {
            " ORDER BY key DESC"
        } else {
            " ORDER BY key ASC"
        });
        if let Some(l) = opts.limit {
            params.push(Value::Integer(i64::try_from(l).unwrap_or(i64::MAX)));
            sql.push_str(&format!(" LIMIT ?{}", params.len()));
        }
        let conn = self.db.conn();
        let mut st = conn.prepare_cached(&sql).map_err(sqlite_err)?;
        let rows = st
            .query_map(rusqlite::params_from_iter(params), |r| {
                Ok((r.get::<_, String>(0)?, Bytes::from(r.get::<_, Vec<u8>>(1)?)))
            })
            .map_err(sqlite_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sqlite_err)
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_string_after_the_prefix_range() {
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        assert_eq!(prefix_end(""), None);
    }
}
