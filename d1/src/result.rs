//! Statements and results in D1's shapes: `{success, meta, results}` ([`D1Result`]),
//! `{count, duration}` ([`ExecResult`]), and the JSON D1 puts on the wire.

use cinder_sql::SqlValue;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::D1Error;

/// One statement and its bound values, already converted by the binding (see the crate doc's
/// conversion table).
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<SqlValue>,
}

impl Statement {
    pub fn new(sql: impl Into<String>) -> Statement {
        Statement {
            sql: sql.into(),
            params: Vec::new(),
        }
    }

    /// `.bind(...values)`.
    pub fn bind(mut self, params: impl IntoIterator<Item = SqlValue>) -> Statement {
        self.params = params.into_iter().collect();
        self
    }
}

/// `meta.timings`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timings {
    /// Time spent running the SQL, in milliseconds.
    pub sql_duration_ms: f64,
}

/// `result.meta`, in the order Cloudflare's D1 prints its fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct D1Meta {
    /// Which database instance answered (`"cinder.db"`; Miniflare says `"miniflare.db"`).
    pub served_by: String,
    /// The region of the instance that answered; none here (one node, no regions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by_region: Option<String>,
    /// Whether the primary answered: always, there are no read replicas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by_primary: Option<bool>,
    pub timings: Timings,
    /// Milliseconds the query took in the database.
    pub duration: f64,
    /// Rows changed (`total_changes()` delta, triggers included).
    pub changes: i64,
    pub last_row_id: i64,
    /// Whether the query changed anything (rows, the last row id, or the file's size).
    pub changed_db: bool,
    /// Bytes of the database after the query.
    pub size_after: u64,
    pub rows_read: u64,
    pub rows_written: u64,
}

/// The result of one statement (`all()`, `run()`, `raw()`, `first()`, one entry of
/// `batch()`): its columns, rows and meta. `success` is always `true`: failures are
/// [`D1Error`]s.
#[derive(Debug, Clone, PartialEq)]
pub struct D1Result {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
    pub meta: D1Meta,
}

/// What `first()` returns when it finds a row.
#[derive(Debug, Clone, PartialEq)]
pub enum First {
    /// `first()`: the row, as (column, value) pairs in column order (a later duplicate
    /// column name wins when the binding builds the object, as in D1).
    Row(Vec<(String, SqlValue)>),
    /// `first(column)`: that column's value.
    Value(SqlValue),
}

impl D1Result {
    /// `first(column?)`: `None` without rows; `D1_COLUMN_NOTFOUND` for an unknown column.
    pub fn first(&self, column: Option<&str>) -> Result<Option<First>, D1Error> {
        let Some(row) = self.rows.first() else {
            return Ok(None);
        };
        match column {
            None => Ok(Some(First::Row(
                self.columns
                    .iter()
                    .cloned()
                    .zip(row.iter().cloned())
                    .collect(),
            ))),
            Some(c) => match self.columns.iter().rposition(|n| n == c) {
                Some(i) => Ok(Some(First::Value(row[i].clone()))),
                None => Err(D1Error::ColumnNotFound(c.to_owned())),
            },
        }
    }

    /// `raw({columnNames})`: the rows as arrays, preceded by the column names if asked.
    pub fn raw(&self, column_names: bool) -> Vec<Vec<SqlValue>> {
        let mut out = Vec::with_capacity(self.rows.len() + usize::from(column_names));
        if column_names {
            out.push(self.columns.iter().cloned().map(SqlValue::Text).collect());
        }
        out.extend(self.rows.iter().cloned());
        out
    }

    /// The rows as JSON objects keyed by column (`results` of `all()`/`run()`/`batch()`).
    pub fn results_json(&self) -> Vec<Value> {
        self.rows
            .iter()
            .map(|row| {
                let mut obj = Map::new();
                for (c, v) in self.columns.iter().zip(row) {
                    obj.insert(c.clone(), value_json(v));
                }
                Value::Object(obj)
            })
            .collect()
    }

    /// The whole result as D1 returns it from `all()`: `{success, meta, results}`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "success": true,
            "meta": self.meta,
            "results": self.results_json(),
        })
    }

    /// The rows-and-columns wire form of workerd's D1 binding contract:
    /// `{meta, data: {kind: "raw", columns, rows}}`.
    pub fn to_raw_json(&self) -> Value {
        serde_json::json!({
            "meta": self.meta,
            "data": {
                "kind": "raw",
                "columns": self.columns,
                "rows": self.rows.iter().map(|r| r.iter().map(value_json).collect::<Vec<_>>()).collect::<Vec<_>>(),
            },
        })
    }
}

/// `exec()`'s result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecResult {
    /// Statements executed.
    pub count: usize,
    /// Milliseconds, summed over the statements.
    pub duration: f64,
}

/// A value as D1 returns it in JSON: integers and reals as numbers (a whole real as an
/// integer, as `JSON.stringify` prints it), BLOBs as arrays of byte values.
pub fn value_json(v: &SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::from(*i),
        SqlValue::Real(x) => number_json(*x),
        SqlValue::Text(s) => Value::String(s.clone()),
        SqlValue::Blob(b) => Value::Array(b.iter().map(|x| Value::from(*x)).collect()),
    }
}

fn number_json(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 {
        Value::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// `String(value)` in JavaScript, for the table output of `d1 execute` (BLOBs print as
/// `[1, 2, 3]`, as wrangler formats them).
pub fn value_display(v: &SqlValue) -> String {
    match v {
        SqlValue::Null => "null".into(),
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Real(x) => js_number(*x),
        SqlValue::Text(s) => s.clone(),
        SqlValue::Blob(b) => format!(
            "[{}]",
            b.iter().map(u8::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// JavaScript's `Number.prototype.toString()` for the values SQLite produces.
fn js_number(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-6..1e21).contains(&a) {
        // Exponent form: `1e+21`, `1.5e-7`.
        let s = format!("{x:e}");
        return match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
            _ => s,
        };
    }
    // Rust prints the shortest round-tripping digits, as JS does, and `1` for `1.0`.
    format!("{x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_javascript_would() {
        assert_eq!(value_display(&SqlValue::Real(1.0)), "1");
        assert_eq!(value_display(&SqlValue::Real(0.5)), "0.5");
        assert_eq!(value_display(&SqlValue::Real(1e21)), "1e+21");
        assert_eq!(value_display(&SqlValue::Real(1.5e-7)), "1.5e-7");
        assert_eq!(value_display(&SqlValue::Blob(vec![1, 2])), "[1, 2]");
        assert_eq!(value_display(&SqlValue::Null), "null");
        assert_eq!(value_json(&SqlValue::Real(3.0)), serde_json::json!(3));
        assert_eq!(value_json(&SqlValue::Real(0.25)), serde_json::json!(0.25));
    }
}
