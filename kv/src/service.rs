//! [`Kv`] (the node's KV engine) and [`KvNamespace`] (one namespace, what a binding wraps).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use cinder_core::{ActorContext, IdFactory, Namespace, NamespaceSpec, ObjectError, Runtime, Stub};
use futures::{Stream, StreamExt};

use crate::budget::OperationBudget;
use crate::cache::NodeCache;
use crate::clock::{Clock, SystemClock};
use crate::error::KvError;
use crate::limits::{self, MAX_BULK_BYTES, MAX_BULK_GET_KEYS, MAX_VALUE_BYTES};
use crate::shard::{KvEntry, ListedKey, Shard, ShardOp, ShardPage, ShardReply};

/// Name of the internal Durable Object namespace that holds every KV namespace's shards.
pub const INTERNAL_NAMESPACE: &str = "cinder:kv";

/// Configuration of a node's KV engine.
#[derive(Clone)]
pub struct KvConfig {
    /// Shard objects per KV namespace. Part of the data layout: keep it fixed for a store.
    pub shards: u32,
    /// Time source for expirations and the read cache.
    pub clock: Arc<dyn Clock>,
    /// Budget of the node's read cache in bytes (default 64 MiB).
    pub cache_bytes: usize,
    /// Largest entry the read cache keeps (default 1 MiB); larger values are always read from
    /// their shard.
    pub cache_entry_max_bytes: usize,
    /// How long a read is cached when the caller gives no `cacheTtl`, in seconds (default 60).
    pub default_cache_ttl_s: i64,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            shards: 16,
            clock: Arc::new(SystemClock),
            cache_bytes: 64 << 20,
            cache_entry_max_bytes: 1 << 20,
            default_cache_ttl_s: limits::DEFAULT_CACHE_TTL_S,
        }
    }
}

impl fmt::Debug for KvConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvConfig")
            .field("shards", &self.shards)
            .field("cache_bytes", &self.cache_bytes)
            .field("cache_entry_max_bytes", &self.cache_entry_max_bytes)
            .field("default_cache_ttl_s", &self.default_cache_ttl_s)
            .finish_non_exhaustive()
    }
}

/// Whether a read was answered by the node's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the node's read cache.
    Hit,
    /// From the shard object.
    Miss,
}

impl CacheStatus {
    /// The `cacheStatus` string.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
        }
    }
}

/// `get` / `getWithMetadata` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// `cacheTtl` in seconds (at least 30).
    pub cache_ttl: Option<i64>,
}

/// `put` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Absolute expiration, seconds since the epoch.
    pub expiration: Option<i64>,
    /// Expiration relative to now, seconds (at least 60). Wins over `expiration`.
    pub expiration_ttl: Option<i64>,
    /// Metadata as JSON text (at most 1,024 bytes).
    pub metadata: Option<String>,
}

/// `list` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Page size, at most 1,000 (default); 0 or less means the default, as in workerd.
    pub limit: Option<i64>,
    /// The `cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `get` / `getWithMetadata` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResult {
    /// The entry, or `None` (absent or expired).
    pub entry: Option<KvEntry>,
    /// Where the answer came from.
    pub cache_status: CacheStatus,
}

/// A `list()` page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    /// Keys in UTF-8 byte order.
    pub keys: Vec<ListedKey>,
    /// No keys after this page.
    pub list_complete: bool,
    /// Where the next page starts (only when `!list_complete`). A page may be short, even
    /// empty, and still not complete (expired keys were skipped), as on Cloudflare.
    pub cursor: Option<String>,
    /// Lists are not cached on this node: always `None` (`cacheStatus: null`).
    pub cache_status: Option<CacheStatus>,
}

struct KvInner {
    cfg: KvConfig,
    ns: OnceLock<Namespace>,
    cache: NodeCache,
    stubs: Mutex<HashMap<String, Arc<[Stub]>>>,
}

/// The node's KV engine. Cheap to clone, `Send + Sync`.
///
/// ```no_run
/// # fn demo(store: std::sync::Arc<cinder_storage::Store>) -> Result<(), Box<dyn std::error::Error>> {
/// use cinder_kv::{Kv, KvConfig};
/// let kv = Kv::new(KvConfig::default());
/// let rt = cinder_core::Runtime::start(store, Default::default(), kv.namespaces())?;
/// kv.attach(&rt)?;
/// let ns = kv.namespace("my-namespace-id");
/// # Ok(()) }
/// ```
///
/// The runtime keeps the engine alive (its objects' factory holds it) and the engine keeps the
/// runtime: stop it with [`Runtime::shutdown`].
#[derive(Clone)]
pub struct Kv {
    inner: Arc<KvInner>,
}

impl fmt::Debug for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kv")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl Kv {
    /// A KV engine; register [`Kv::namespaces`] with the runtime, then [`Kv::attach`].
    pub fn new(cfg: KvConfig) -> Kv {
        let cache = NodeCache::new(cfg.cache_bytes, cfg.cache_entry_max_bytes);
        Kv {
            inner: Arc::new(KvInner {
                cfg: KvConfig {
                    shards: cfg.shards.max(1),
                    ..cfg
                },
                ns: OnceLock::new(),
                cache,
                stubs: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The internal namespace to pass to [`Runtime::start`]. Register it once per runtime:
    /// another [`Kv`] of the same node (or a second node's, in tests) attaches to it.
    pub fn namespaces(&self) -> Vec<NamespaceSpec> {
        let clock = self.inner.cfg.clock.clone();
        vec![NamespaceSpec {
            name: INTERNAL_NAMESPACE.into(),
            ids: IdFactory::from_unique_key(INTERNAL_NAMESPACE),
            factory: Arc::new(move |ctx: ActorContext| {
                Ok(Box::new(Shard {
                    ctx,
                    clock: clock.clone(),
                }) as Box<dyn cinder_core::Actor>)
            }),
        }]
    }

    /// Connects the engine to the runtime that hosts its objects.
    pub fn attach(&self, rt: &Runtime) -> Result<(), KvError> {
        let ns = rt
            .namespace(INTERNAL_NAMESPACE)
            .ok_or(KvError::NotAttached)?;
        let _ = self.inner.ns.set(ns);
        Ok(())
    }

    /// The KV namespace `id` (the wrangler `kv_namespaces[].id`), a handle without an
    /// operation budget.
    pub fn namespace(&self, id: &str) -> KvNamespace {
        KvNamespace {
            kv: self.clone(),
            id: Arc::from(id),
            stubs: OnceLock::new(),
            budget: None,
        }
    }
}

/// One KV namespace: what the binding `env.MY_KV` wraps. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct KvNamespace {
    kv: Kv,
    id: Arc<str>,
    stubs: OnceLock<Arc<[Stub]>>,
    budget: Option<OperationBudget>,
}

impl fmt::Debug for KvNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvNamespace")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn shard_of(key: &str, shards: u32) -> usize {
    let h = blake3::hash(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(b) % shards as u64) as usize
}

fn encode_cursor(key: &str) -> String {
    let mut v = Vec::with_capacity(key.len() + 1);
    v.push(1u8);
    v.extend_from_slice(key.as_bytes());
    hex::encode(v)
}

fn decode_cursor(cursor: &str) -> Result<String, KvError> {
    let bad = || KvError::failed("GET", 400, format!("Invalid cursor {cursor:?}"));
    let raw = hex::decode(cursor).map_err(|_| bad())?;
    match raw.split_first() {
        Some((1, key)) => String::from_utf8(key.to_vec()).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

fn object_error(op: &'static str, e: ObjectError) -> KvError {
    KvError::internal(op, e)
}

impl KvNamespace {
    /// The same namespace, counting every operation against `budget` (one per invocation).
    pub fn with_budget(&self, budget: OperationBudget) -> KvNamespace {
        KvNamespace {
            budget: Some(budget),
            ..self.clone()
        }
    }

    /// The namespace id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn charge(&self) -> Result<(), KvError> {
        match &self.budget {
            Some(b) => b.charge(),
            None => Ok(()),
        }
    }

    fn stubs(&self) -> Result<&Arc<[Stub]>, KvError> {
        if let Some(s) = self.stubs.get() {
            return Ok(s);
        }
        let inner = &self.kv.inner;
        let ns = inner.ns.get().ok_or(KvError::NotAttached)?;
        let mut map = inner.stubs.lock().unwrap_or_else(|p| p.into_inner());
        let stubs = map
            .entry(self.id.to_string())
            .or_insert_with(|| {
                (0..inner.cfg.shards)
                    .map(|i| ns.get_by_name(&format!("{}:{}/{i}", self.id.len(), self.id)))
                    .collect()
            })
            .clone();
        drop(map);
        Ok(self.stubs.get_or_init(|| stubs))
    }

    async fn call(
        &self,
        op_name: &'static str,
        shard: usize,
        op: ShardOp,
    ) -> Result<ShardReply, KvError> {
        let stub = self.stubs()?[shard].clone();
        let reply = stub
            .call(Box::new(op))
            .await
            .map_err(|e| object_error(op_name, e))?;
        reply
            .downcast::<ShardReply>()
            .map(|r| *r)
            .map_err(|_| KvError::internal(op_name, "unexpected reply from a KV shard"))
    }

    fn cache_key(&self, key: &str) -> String {
        format!("{}:{}{key}", self.id.len(), self.id)
    }

    fn now_ms(&self) -> i64 {
        self.kv.inner.cfg.clock.now_ms()
    }

    fn shard_of(&self, key: &str) -> usize {
        shard_of(key, self.kv.inner.cfg.shards)
    }

    fn live(entry: Option<KvEntry>, now_ms: i64) -> Option<KvEntry> {
        entry.filter(|e| !matches!(e.expiration, Some(x) if x <= now_ms.div_euclid(1000)))
    }

    /// `get(key, {cacheTtl})` / `getWithMetadata`: the entry (value, metadata, expiration) or
    /// `None`. Reads are answered by this node's cache while fresh (see [`crate::cache`]).
    pub async fn get(&self, key: &str, opts: &GetOptions) -> Result<GetResult, KvError> {
        self.charge()?;
        limits::check_key("GET", key)?;
        limits::check_cache_ttl("GET", opts.cache_ttl)?;
        let now = self.now_ms();
        let ck = self.cache_key(key);
        let token = match self.kv.inner.cache.lookup(&ck, now) {
            Ok(v) => {
                return Ok(GetResult {
                    entry: Self::live(v, now),
                    cache_status: CacheStatus::Hit,
                })
            }
            Err(t) => t,
        };
        let reply = self
            .call(
                "GET",
                self.shard_of(key),
                ShardOp::Get(vec![key.to_string()]),
            )
            .await?;
        let ShardReply::Entries(mut entries) = reply else {
            return Err(KvError::internal("GET", "unexpected reply from a KV shard"));
        };
        let entry = entries.pop().flatten();
        let ttl = opts
            .cache_ttl
            .unwrap_or(self.kv.inner.cfg.default_cache_ttl_s);
        self.kv
            .inner
            .cache
            .fill(token, ck, entry.clone(), now.saturating_add(ttl * 1000));
        Ok(GetResult {
            entry,
            cache_status: CacheStatus::Miss,
        })
    }

    /// Bulk `get([keys])` / `getWithMetadata([keys])`: one entry (or `None`) per requested key,
    /// in request order. 1 to 100 keys; one operation.
    pub async fn get_many(
        &self,
        keys: &[String],
        opts: &GetOptions,
    ) -> Result<Vec<(String, Option<KvEntry>)>, KvError> {
        const OP: &str = "GET_BULK";
        self.charge()?;
        if keys.len() > MAX_BULK_GET_KEYS {
            return Err(KvError::failed(
                OP,
                400,
                format!("You can request a maximum of {MAX_BULK_GET_KEYS} keys"),
            ));
        }
        if keys.is_empty() {
            return Err(KvError::failed(
                OP,
                400,
                "You must request a minimum of 1 key",
            ));
        }
        for k in keys {
            limits::check_bulk_key(k)?;
        }
        limits::check_cache_ttl(OP, opts.cache_ttl)?;
        let now = self.now_ms();
        let ttl = opts
            .cache_ttl
            .unwrap_or(self.kv.inner.cfg.default_cache_ttl_s);
        let mut found: HashMap<&str, Option<KvEntry>> = HashMap::new();
        let mut misses: HashMap<usize, Vec<(String, _)>> = HashMap::new();
        for k in keys {
            if found.contains_key(k.as_str()) {
                continue;
            }
            match self.kv.inner.cache.lookup(&self.cache_key(k), now) {
                Ok(v) => {
                    found.insert(k, Self::live(v, now));
                }
                Err(token) => {
                    let group = misses.entry(self.shard_of(k)).or_default();
                    if !group.iter().any(|(m, _)| m == k) {
                        group.push((k.clone(), token));
                    }
                }
            }
        }
        let calls = misses.into_iter().map(|(shard, group)| async move {
            let names: Vec<String> = group.iter().map(|(k, _)| k.clone()).collect();
            match self.call(OP, shard, ShardOp::Get(names)).await? {
                ShardReply::Entries(entries) => Ok((group, entries)),
                _ => Err(KvError::internal(OP, "unexpected reply from a KV shard")),
            }
        });
        let mut fetched = Vec::new();
        for r in futures::future::join_all(calls).await {
            let (group, entries) = r?;
            for ((k, token), e) in group.into_iter().zip(entries) {
                self.kv.inner.cache.fill(
                    token,
                    self.cache_key(&k),
                    e.clone(),
                    now.saturating_add(ttl * 1000),
                );
                fetched.push((k, e));
            }
        }
        for (k, e) in &fetched {
            found.insert(k.as_str(), e.clone());
        }
        let out: Vec<(String, Option<KvEntry>)> = keys
            .iter()
            .map(|k| (k.clone(), found.get(k.as_str()).cloned().flatten()))
            .collect();
        let total: usize = out
            .iter()
            .filter_map(|(_, e)| e.as_ref().map(|e| e.value.len()))
            .sum();
        if total > MAX_BULK_BYTES {
            return Err(KvError::failed(
                OP,
                413,
                format!(
                    "Total size of request exceeds the limit of {}MB",
                    MAX_BULK_BYTES / 1024 / 1024
                ),
            ));
        }
        Ok(out)
    }

    fn check_put(&self, key: &str, opts: &PutOptions) -> Result<Option<i64>, KvError> {
        limits::check_key("PUT", key)?;
        let now_s = self.now_ms().div_euclid(1000);
        let exp = limits::resolve_expiration(now_s, opts.expiration, opts.expiration_ttl)?;
        limits::check_metadata(opts.metadata.as_deref())?;
        Ok(exp)
    }

    /// `put(key, value, {expiration, expirationTtl, metadata})`. Resolves once the write is
    /// durable; visible to reads on this node at once.
    pub async fn put(&self, key: &str, value: Bytes, opts: &PutOptions) -> Result<(), KvError> {
        self.charge()?;
        let exp = self.check_put(key, opts)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(limits::value_too_large(value.len()));
        }
        self.put_checked(key, value, exp, opts.metadata.clone())
            .await
    }

    /// `put(key, stream, options)`: reads the stream, keeping at most 25 MiB; past that it
    /// reads on only to report the length, as Cloudflare does, and stores nothing.
    pub async fn put_stream<S, E>(
        &self,
        key: &str,
        stream: S,
        opts: &PutOptions,
    ) -> Result<(), KvError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: fmt::Display,
    {
        self.charge()?;
        let exp = self.check_put(key, opts)?;
        let mut stream = std::pin::pin!(stream);
        let mut buf = BytesMut::new();
        let mut total = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| KvError::internal("PUT", format!("reading the value: {e}")))?;
            total = total.saturating_add(chunk.len());
            if total <= MAX_VALUE_BYTES {
                buf.extend_from_slice(&chunk);
            } else if !buf.is_empty() {
                buf = BytesMut::new();
            }
        }
        if total > MAX_VALUE_BYTES {
            return Err(limits::value_too_large(total));
        }
        self.put_checked(key, buf.freeze(), exp, opts.metadata.clone())
            .await
    }

    async fn put_checked(
        &self,
        key: &str,
        value: Bytes,
        expiration: Option<i64>,
        metadata: Option<String>,
    ) -> Result<(), KvError> {
        let entry = KvEntry {
            value: value.clone(),
            metadata: metadata.clone(),
            expiration,
        };
        self.call(
            "PUT",
            self.shard_of(key),
            ShardOp::Put {
                key: key.to_string(),
                value,
                expiration,
                metadata,
            },
        )
        .await?;
        let ttl = self.kv.inner.cfg.default_cache_ttl_s;
        self.kv.inner.cache.write(
            self.cache_key(key),
            Some(entry),
            self.now_ms().saturating_add(ttl * 1000),
        );
        Ok(())
    }

    /// `delete(key)`. Resolves once durable; deleting an absent key is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.charge()?;
        limits::check_key("DELETE", key)?;
        self.call(
            "DELETE",
            self.shard_of(key),
            ShardOp::Delete(key.to_string()),
        )
        .await?;
        let ttl = self.kv.inner.cfg.default_cache_ttl_s;
        self.kv.inner.cache.write(
            self.cache_key(key),
            None,
            self.now_ms().saturating_add(ttl * 1000),
        );
        Ok(())
    }

    /// `list({prefix, limit, cursor})`: keys in UTF-8 byte order, merged over the shards.
    pub async fn list(&self, opts: &ListOptions) -> Result<ListResult, KvError> {
        const OP: &str = "GET";
        self.charge()?;
        let limit = limits::list_limit(opts.limit)?;
        let prefix = opts.prefix.clone().unwrap_or_default();
        limits::check_list_prefix(&prefix)?;
        let start_after = opts.cursor.as_deref().map(decode_cursor).transpose()?;
        let shards = self.kv.inner.cfg.shards as usize;
        let calls = (0..shards).map(|s| {
            self.call(
                OP,
                s,
                ShardOp::List {
                    prefix: prefix.clone(),
                    start_after: start_after.clone(),
                    limit,
                },
            )
        });
        let mut pages: Vec<ShardPage> = Vec::with_capacity(shards);
        for r in futures::future::join_all(calls).await {
            match r? {
                ShardReply::Page(p) => pages.push(p),
                _ => return Err(KvError::internal(OP, "unexpected reply from a KV shard")),
            }
        }
        // Keys past the first point where some shard stopped scanning cannot be emitted yet:
        // that shard may hold keys before them.
        let bound = pages
            .iter()
            .filter(|p| p.more)
            .filter_map(|p| p.scanned_until.clone())
            .min();
        let mut keys: Vec<ListedKey> = pages
            .into_iter()
            .flat_map(|p| p.keys)
            .filter(|k| bound.as_ref().is_none_or(|b| k.name <= *b))
            .collect();
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        let (list_complete, cursor) = if keys.len() > limit {
            keys.truncate(limit);
            (false, keys.last().map(|k| encode_cursor(&k.name)))
        } else if let Some(b) = bound {
            (false, Some(encode_cursor(&b)))
        } else {
            (true, None)
        };
        Ok(ListResult {
            keys,
            list_complete,
            cursor,
            cache_status: None,
        })
    }

    /// Removes expired entries now, in every shard: what each shard's alarm does when the
    /// earliest expiration comes. For tests and operators.
    pub async fn sweep_expired(&self) -> Result<(), KvError> {
        for s in 0..self.kv.inner.cfg.shards as usize {
            self.call("DELETE", s, ShardOp::Sweep).await?;
        }
        Ok(())
    }

    /// Diagnostics: storage keys the namespace's shards hold (records, value chunks and
    /// expiration index lines, expired or not).
    pub async fn stored_keys(&self) -> Result<usize, KvError> {
        let mut n = 0;
        for s in 0..self.kv.inner.cfg.shards as usize {
            if let ShardReply::Count(c) = self.call("GET", s, ShardOp::StoredKeys).await? {
                n += c;
            }
        }
        Ok(n)
    }

    /// The internal object that holds `key` (diagnostics and tests: its alarm is the next
    /// expiration sweep).
    pub fn shard_id(&self, key: &str) -> Result<cinder_core::ObjectId, KvError> {
        Ok(self.stubs()?[self.shard_of(key)].id().clone())
    }
}
