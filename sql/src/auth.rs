//! The SQLite authorizer: what user SQL may do, decided per action as SQLite compiles it.
//!
//! A port of workerd's `SqliteDatabase::isAuthorized` (src/workerd/util/sqlite.c++) with
//! `SqlStorageRegulator` (src/workerd/api/sql.c++): names starting `_cf_` are reserved, only
//! `main` (and reads of `temp`) may be touched, `ATTACH`/`DETACH`, temp objects and virtual
//! tables other than FTS5/R*Tree are refused, functions and PRAGMAs come from allowlists, and
//! transaction statements are refused with the message pointing at `transactionSync()`.
//! Checks run inside SQLite's compiler, so quoting, comments or odd spellings cannot slip past
//! them as they would past string matching. The engine's own statements run in trusted mode.
//! One gap of the unpatched bundled SQLite: the authorizer is not told the new name of
//! `ALTER TABLE … RENAME TO`, so user `ALTER TABLE` statements run under a savepoint guard
//! that refuses them if a reserved name appears (`crate::stmt`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

/// Shared between the connection's authorizer callback and the engine.
#[derive(Default)]
pub(crate) struct AuthState {
    /// Statements being compiled come from the user (`exec`), not from the engine.
    user: AtomicBool,
    /// A user statement tried to begin/end a transaction or savepoint.
    transaction_refused: AtomicBool,
    /// A user `ALTER TABLE` was authorized. The bundled SQLite does not tell the authorizer
    /// the new name of a `RENAME TO` (workerd patches SQLite for that), so such statements run
    /// under a guard that checks no reserved name appeared ([`crate::stmt`]).
    altered: AtomicBool,
}

impl AuthState {
    pub(crate) fn enter_user(self: &Arc<Self>) -> UserScope {
        let was = self.user.swap(true, Ordering::Relaxed);
        self.transaction_refused.store(false, Ordering::Relaxed);
        self.altered.store(false, Ordering::Relaxed);
        UserScope {
            state: self.clone(),
            was,
        }
    }

    /// Whether a user `ALTER TABLE` was authorized since the last call.
    pub(crate) fn take_altered(&self) -> bool {
        self.altered.swap(false, Ordering::Relaxed)
    }

    /// While alive, statements compile as the engine's own (trusted).
    pub(crate) fn enter_trusted(self: &Arc<Self>) -> UserScope {
        let was = self.user.swap(false, Ordering::Relaxed);
        UserScope {
            state: self.clone(),
            was,
        }
    }

    /// Whether the last refusal was a transaction statement (so the error gets workerd's
    /// transaction message instead of "not authorized").
    pub(crate) fn take_transaction_refused(&self) -> bool {
        self.transaction_refused.swap(false, Ordering::Relaxed)
    }

    pub(crate) fn callback(self: &Arc<Self>) -> impl FnMut(AuthContext<'_>) -> Authorization {
        let state = self.clone();
        move |ctx| {
            let user = state.user.load(Ordering::Relaxed);
            let (ok, txn) = authorize(&ctx, user);
            if txn && !ok {
                state.transaction_refused.store(true, Ordering::Relaxed);
            }
            if ok && user && matches!(ctx.action, AuthAction::AlterTable { .. }) {
                state.altered.store(true, Ordering::Relaxed);
            }
            if ok {
                Authorization::Allow
            } else {
                Authorization::Deny
            }
        }
    }
}

/// While alive, statements compile as user statements.
pub(crate) struct UserScope {
    state: Arc<AuthState>,
    was: bool,
}

impl Drop for UserScope {
    fn drop(&mut self) {
        self.state.user.store(self.was, Ordering::Relaxed);
    }
}

/// workerd `SqlStorageRegulator::isAllowedName`.
pub(crate) fn is_allowed_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() < 4 || !b[..4].eq_ignore_ascii_case(b"_cf_")
}

/// Returns (allowed, was a transaction/savepoint action).
fn authorize(ctx: &AuthContext<'_>, user: bool) -> (bool, bool) {
    let is_txn = matches!(
        ctx.action,
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. }
    );
    // DETACH and ALTER TABLE carry the database name as their first argument.
    let db = match ctx.action {
        AuthAction::AlterTable { database_name, .. } => Some(database_name),
        AuthAction::Detach { .. } => None,
        _ => ctx.database_name,
    };
    if let Some(db) = db {
        if db == "temp" {
            return (user && authorize_temp(&ctx.action), is_txn);
        } else if db != "main" {
            // One database per object: the storage engine tracks no other files.
            return (false, is_txn);
        }
    }
    if !user {
        return (true, is_txn);
    }
    (authorize_user(&ctx.action), is_txn)
}

fn authorize_temp(action: &AuthAction<'_>) -> bool {
    match action {
        AuthAction::Read { table_name, .. } | AuthAction::Update { table_name, .. } => {
            is_allowed_name(table_name)
        }
        _ => false,
    }
}

fn authorize_user(action: &AuthAction<'_>) -> bool {
    use AuthAction as A;
    match *action {
        A::Select | A::Recursive => true,
        A::CreateTable { table_name: n }
        | A::Delete { table_name: n }
        | A::DropTable { table_name: n }
        | A::Insert { table_name: n }
        | A::CreateView { view_name: n }
        | A::DropView { view_name: n }
        | A::Reindex { index_name: n }
        | A::Read { table_name: n, .. }
        | A::Update { table_name: n, .. }
        | A::AlterTable { table_name: n, .. } => is_allowed_name(n),
        // `PRAGMA optimize` analyzes every table; the statistics leak no row data.
        A::Analyze { .. } => true,
        A::CreateIndex {
            index_name: a,
            table_name: b,
        }
        | A::DropIndex {
            index_name: a,
            table_name: b,
        }
        | A::CreateTrigger {
            trigger_name: a,
            table_name: b,
        }
        | A::DropTrigger {
            trigger_name: a,
            table_name: b,
        } => is_allowed_name(a) && is_allowed_name(b),
        A::Transaction { .. } | A::Savepoint { .. } => false,
        A::Pragma {
            pragma_name,
            pragma_value,
        } => pragma_allowed(pragma_name, pragma_value),
        A::Function { function_name } => ALLOWED_FUNCTIONS.contains(&function_name),
        A::CreateVtable {
            table_name,
            module_name,
        }
        | A::DropVtable {
            table_name,
            module_name,
        } => {
            ["fts5", "fts5vocab", "rtree", "rtree_i32"]
                .iter()
                .any(|m| m.eq_ignore_ascii_case(module_name))
                && is_allowed_name(table_name)
        }
        // ATTACH/DETACH, temp tables/indexes/triggers/views, and anything unknown.
        _ => false,
    }
}

#[derive(Clone, Copy)]
enum PragmaSig {
    NoArg,
    Boolean,
    ObjectName,
    OptionalObjectName,
    NullOrNumber,
    NullNumberOrObjectName,
}

/// workerd's `ALLOWED_PRAGMAS`.
const ALLOWED_PRAGMAS: &[(&str, PragmaSig)] = &[
    ("data_version", PragmaSig::NoArg),
    ("page_size", PragmaSig::NoArg),
    ("case_sensitive_like", PragmaSig::Boolean),
    ("foreign_keys", PragmaSig::Boolean),
    ("defer_foreign_keys", PragmaSig::Boolean),
    ("ignore_check_constraints", PragmaSig::Boolean),
    ("legacy_alter_table", PragmaSig::Boolean),
    ("recursive_triggers", PragmaSig::Boolean),
    ("reverse_unordered_selects", PragmaSig::Boolean),
    ("foreign_key_check", PragmaSig::OptionalObjectName),
    ("foreign_key_list", PragmaSig::ObjectName),
    ("index_info", PragmaSig::ObjectName),
    ("index_list", PragmaSig::ObjectName),
    ("index_xinfo", PragmaSig::ObjectName),
    ("quick_check", PragmaSig::NullNumberOrObjectName),
    ("optimize", PragmaSig::NullOrNumber),
];

fn pragma_allowed(name: &str, arg: Option<&str>) -> bool {
    match name {
        "table_list" => return true,
        "table_info" | "table_xinfo" => return arg.is_some_and(is_allowed_name),
        _ => {}
    }
    let Some(&(_, sig)) = ALLOWED_PRAGMAS.iter().find(|(n, _)| *n == name) else {
        return false;
    };
    match sig {
        PragmaSig::NoArg => arg.is_none(),
        PragmaSig::Boolean => {
            let Some(mut v) = arg else { return true };
            let b = v.as_bytes();
            if b.len() >= 2 && (b[0] == b'\'' || b[0] == b'"') && b[b.len() - 1] == b[0] {
                v = &v[1..v.len() - 1];
            }
            // workerd compares prefixes case-insensitively (strncasecmp with the word's length).
            ["true", "false", "yes", "no", "on", "off", "1", "0"]
                .iter()
                .any(|w| {
                    v.len() >= w.len() && v.as_bytes()[..w.len()].eq_ignore_ascii_case(w.as_bytes())
                })
        }
        PragmaSig::ObjectName => arg.is_some_and(is_allowed_name),
        PragmaSig::OptionalObjectName => arg.is_none_or(is_allowed_name),
        PragmaSig::NullOrNumber => arg.is_none_or(|v| v.parse::<i32>().is_ok()),
        PragmaSig::NullNumberOrObjectName => {
            arg.is_none_or(|v| v.parse::<u32>().is_ok() || is_allowed_name(v))
        }
    }
}

/// workerd's `ALLOWED_SQLITE_FUNCTIONS`. (`load_extension` is listed there too; it fails
/// anyway because extension loading is never enabled on the connection.)
const ALLOWED_FUNCTIONS: &[&str] = &[
    "abs",
    "changes",
    "char",
    "coalesce",
    "concat",
    "concat_ws",
    "format",
    "glob",
    "hex",
    "ifnull",
    "iif",
    "instr",
    "last_insert_rowid",
    "length",
    "like",
    "likelihood",
    "likely",
    "load_extension",
    "lower",
    "ltrim",
    "max_scalar",
    "min_scalar",
    "nullif",
    "octet_length",
    "printf",
    "quote",
    "random",
    "randomblob",
    "replace",
    "round",
    "rtrim",
    "sign",
    "soundex",
    "substr",
    "substring",
    "total_changes",
    "trim",
    "typeof",
    "unhex",
    "unicode",
    "unlikely",
    "upper",
    "zeroblob",
    "date",
    "time",
    "datetime",
    "julianday",
    "unixepoch",
    "strftime",
    "timediff",
    "current_date",
    "current_time",
    "current_timestamp",
    "avg",
    "count",
    "group_concat",
    "max",
    "min",
    "string_agg",
    "sum",
    "total",
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "ceil",
    "cos",
    "cosh",
    "degrees",
    "exp",
    "floor",
    "ln",
    "log",
    "log2",
    "mod",
    "pi",
    "pow",
    "radians",
    "sin",
    "sinh",
    "sqrt",
    "tan",
    "tanh",
    "trunc",
    "json",
    "jsonb",
    "json_array",
    "jsonb_array",
    "json_array_length",
    "json_extract",
    "jsonb_extract",
    "->",
    "->>",
    "json_insert",
    "jsonb_insert",
    "json_object",
    "jsonb_object",
    "json_patch",
    "jsonb_patch",
    "json_remove",
    "jsonb_remove",
    "json_replace",
    "jsonb_replace",
    "json_set",
    "jsonb_set",
    "json_type",
    "json_valid",
    "json_quote",
    "json_group_array",
    "jsonb_group_array",
    "json_group_object",
    "jsonb_group_object",
    "json_each",
    "json_tree",
    "match",
    "highlight",
    "bm25",
    "snippet",
    "rtreecheck",
    "sqlite_rename_column",
    "sqlite_rename_table",
    "sqlite_rename_test",
    "sqlite_drop_column",
    "sqlite_rename_quotefix",
];
