//! [`CacheStorage`] (`caches`) and [`Cache`] (`caches.default`, `caches.open(name)`): the Cache
//! API's storage, per node, under a directory the host gives. Bodies are streamed to and from
//! files, never held whole in memory.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use http::header::{
    CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RANGE,
    SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::clock::{Clock, SystemClock};
use crate::entry::{self, Meta};
use crate::error::CacheError;
use crate::policy::{self, Verdict};

/// Lock stripes per cache: puts, deletes and sweeps of one URL are serialized.
const STRIPES: usize = 64;
const READ_CHUNK: u64 = 64 * 1024;

/// Configuration of a node's Cache API storage.
#[derive(Clone)]
pub struct CacheConfig {
    /// Time source for freshness.
    pub clock: Arc<dyn Clock>,
    /// Largest body stored (default 512 MiB, Cloudflare's Cache API object limit); larger
    /// responses are not stored, as on Cloudflare.
    pub max_entry_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            clock: Arc::new(SystemClock),
            max_entry_bytes: 512 << 20,
        }
    }
}

/// `caches`: the node's caches. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct CacheStorage {
    root: Arc<PathBuf>,
    cfg: CacheConfig,
    caches: Arc<Mutex<HashMap<String, Cache>>>,
}

impl std::fmt::Debug for CacheStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStorage")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// `match()` / `delete()` options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MatchOptions {
    /// `ignoreMethod`: treat the request as a GET whatever its method.
    pub ignore_method: bool,
}

/// What `put()` did. Cloudflare resolves `put()` either way; the reason is for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored.
    Stored,
    /// Not stored (`no-store`, `private`, `Set-Cookie`, a 304, too large...).
    NotStored(&'static str),
}

/// A matched response's body, streamed from its file.
pub struct CacheBody {
    len: u64,
    stream: Option<BoxStream<'static, io::Result<Bytes>>>,
}

impl std::fmt::Debug for CacheBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBody").field("len", &self.len).finish()
    }
}

impl CacheBody {
    fn empty() -> CacheBody {
        CacheBody {
            len: 0,
            stream: None,
        }
    }

    /// Bytes the stream yields.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// No body (a 304, a 416).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The body as a stream of chunks.
    pub fn into_stream(self) -> BoxStream<'static, io::Result<Bytes>> {
        self.stream
            .unwrap_or_else(|| futures::stream::empty().boxed())
    }

    /// Reads the whole body (small bodies, tests).
    pub async fn bytes(self) -> io::Result<Bytes> {
        let mut out = Vec::with_capacity(self.len as usize);
        let mut s = self.into_stream();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(Bytes::from(out))
    }
}

impl CacheStorage {
    /// Opens (or creates) the caches under `dir`. Files a crash left half-written are never
    /// served (a torn entry reads as a miss) and are removed by [`Cache::purge_expired`].
    pub fn open(dir: impl AsRef<Path>, cfg: CacheConfig) -> Result<CacheStorage, CacheError> {
        let root = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&root)?;
        Ok(CacheStorage {
            root: Arc::new(root),
            cfg,
            caches: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn cache_for(&self, dir_name: String) -> Cache {
        let mut map = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(dir_name.clone())
            .or_insert_with(|| Cache {
                inner: Arc::new(CacheInner {
                    dir: self.root.join(dir_name),
                    clock: self.cfg.clock.clone(),
                    max_entry_bytes: self.cfg.max_entry_bytes,
                    locks: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
                }),
            })
            .clone()
    }

    /// `caches.default`.
    pub fn default_cache(&self) -> Cache {
        self.cache_for("default".into())
    }

    /// `caches.open(name)`: a cache separate from `caches.default` and from other names.
    pub fn open_cache(&self, name: &str) -> Cache {
        self.cache_for(format!("named-{}", entry::hash_hex(name.as_bytes())))
    }

    /// [`Cache::purge_expired`] over every cache on disk, including those no worker opened
    /// since the process started. Returns how many files were removed.
    pub async fn purge_expired(&self) -> Result<usize, CacheError> {
        let mut rd = match tokio::fs::read_dir(self.root.as_path()).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut removed = 0;
        while let Some(d) = rd.next_entry().await? {
            if !d.file_type().await?.is_dir() {
                continue;
            }
            let name = d.file_name().to_string_lossy().into_owned();
            removed += self.cache_for(name).purge_expired().await?;
        }
        Ok(removed)
    }
}

struct CacheInner {
    dir: PathBuf,
    clock: Arc<dyn Clock>,
    max_entry_bytes: u64,
    locks: Vec<tokio::sync::Mutex<()>>,
}

/// One cache. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<CacheInner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

fn cache_key<B>(req: &Request<B>) -> String {
    req.uri().to_string()
}

fn vary_names(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn request_values(headers: &HeaderMap, names: &[String]) -> Vec<(String, Option<String>)> {
    names
        .iter()
        .map(|n| {
            let vals: Vec<&str> = headers
                .get_all(n.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let v = (!vals.is_empty()).then(|| vals.join(", "));
            (n.clone(), v)
        })
        .collect()
}

fn vary_matches(meta: &Meta, req_headers: &HeaderMap) -> bool {
    let names: Vec<String> = meta.vary.iter().map(|(n, _)| n.clone()).collect();
    request_values(req_headers, &names) == meta.vary
}

async fn drain<S, E>(body: S)
where
    S: Stream<Item = Result<Bytes, E>> + Send,
{
    let mut body = std::pin::pin!(body);
    while let Some(c) = body.next().await {
        if c.is_err() {
            break;
        }
    }
}

fn opaque(tag: &str) -> &str {
    let t = tag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    t.trim_matches('"')
}

/// A single `bytes=` range against `size`: `Ok(None)` to ignore the header (malformed or
/// several ranges), `Err(())` if unsatisfiable.
fn parse_range(v: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return Ok(None);
        };
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.min(size.saturating_sub(1)),
                _ => return Ok(None),
            }
        };
        if start >= size {
            return Err(());
        }
        (start, end)
    };
    Ok(Some(range))
}

fn file_stream(file: tokio::fs::File, len: u64) -> BoxStream<'static, io::Result<Bytes>> {
    futures::stream::unfold((file, len), |(mut f, rem)| async move {
        if rem == 0 {
            return None;
        }
        let mut buf = vec![0u8; rem.min(READ_CHUNK) as usize];
        match f.read(&mut buf).await {
            Ok(0) => Some((
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cached body is shorter than recorded",
                )),
                (f, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (f, rem - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    })
    .boxed()
}

async fn read_metas(dir: &Path) -> io::Result<Vec<(PathBuf, Meta)>> {
    let mut out = Vec::new();
    let mut rd = match tokio::fs::read_dir(dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    while let Some(e) = rd.next_entry().await? {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("meta") {
            continue;
        }
        let raw = match tokio::fs::read(&path).await {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match serde_json::from_slice::<Meta>(&raw) {
            Ok(m) => out.push((path, m)),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "dropping an unreadable cache entry");
                let _ = tokio::fs::remove_file(&path).await;
            }
        }
    }
    Ok(out)
}

async fn remove_entry(dir: &Path, meta_path: &Path, meta: &Meta) {
    let _ = tokio::fs::remove_file(meta_path).await;
    let _ = tokio::fs::remove_file(dir.join(&meta.body)).await;
}

impl Cache {
    fn lock_for(&self, url_dir: &Path) -> &tokio::sync::Mutex<()> {
        let name = url_dir
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or(b"");
        let h = blake3::hash(name);
        &self.inner.locks[h.as_bytes()[0] as usize % STRIPES]
    }

    /// `cache.put(request, response)`. Refuses (as `TypeError`) a non-GET request, a 206 and
    /// `Vary: *`; resolves without storing what Cloudflare does not store. The body is
    /// streamed to a file.
    pub async fn put<B, S, E>(
        &self,
        req: &Request<B>,
        response: Response<S>,
    ) -> Result<PutOutcome, CacheError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        if req.method() != Method::GET {
            return Err(CacheError::NonGet);
        }
        let (parts, body) = response.into_parts();
        if parts.status == StatusCode::PARTIAL_CONTENT {
            return Err(CacheError::Partial);
        }
        let vary = vary_names(&parts.headers);
        if vary.iter().any(|n| n.contains('*')) {
            return Err(CacheError::VaryStar);
        }
        if parts.status == StatusCode::NOT_MODIFIED {
            drain(body).await;
            return Ok(PutOutcome::NotStored("304 Not Modified"));
        }
        let now = self.inner.clock.now_ms();
        let (ttl_ms, strip) = match policy::verdict(parts.status, &parts.headers, now) {
            Verdict::Skip(why) => {
                drain(body).await;
                return Ok(PutOutcome::NotStored(why));
            }
            Verdict::Store {
                ttl_ms,
                strip_set_cookie,
            } => (ttl_ms, strip_set_cookie),
        };
        let url = cache_key(req);
        let dir = entry::url_dir(&self.inner.dir, &url);
        let _guard = self.lock_for(&dir).lock().await;
        tokio::fs::create_dir_all(&dir).await?;
        let body_name = format!("{}.body", hex::encode(rand::random::<[u8; 12]>()));
        let body_path = dir.join(&body_name);
        let size = match self.write_body(&body_path, body).await {
            Ok(Some(size)) => size,
            Ok(None) => {
                let _ = tokio::fs::remove_file(&body_path).await;
                return Ok(PutOutcome::NotStored("larger than the cache's entry limit"));
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&body_path).await;
                return Err(e);
            }
        };
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        for (k, v) in &parts.headers {
            if strip && *k == SET_COOKIE {
                continue;
            }
            headers.push((k.as_str().to_string(), v.as_bytes().to_vec()));
        }
        let vary_values = request_values(req.headers(), &vary);
        let meta = Meta {
            url: url.clone(),
            vary: vary_values,
            status: parts.status.as_u16(),
            headers,
            stored_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
            size,
            body: body_name,
        };
        let name = entry::variant_name(&meta.vary);
        let meta_path = dir.join(&name);
        // Entries this request would match (its variant, or all of them when the new
        // response does not vary) are replaced, as the Cache spec's put() does.
        let replaced: Vec<(PathBuf, Meta)> = read_metas(&dir)
            .await?
            .into_iter()
            .filter(|(p, m)| m.url == url && (*p == meta_path || vary_matches(m, req.headers())))
            .collect();
        let raw = serde_json::to_vec(&meta).map_err(|e| CacheError::Corrupt(e.to_string()))?;
        let tmp = dir.join(format!(
            "{name}.tmp{}",
            hex::encode(rand::random::<[u8; 6]>())
        ));
        tokio::fs::write(&tmp, raw).await?;
        tokio::fs::rename(&tmp, &meta_path).await?;
        for (p, m) in replaced {
            if p != meta_path {
                let _ = tokio::fs::remove_file(&p).await;
            }
            let _ = tokio::fs::remove_file(dir.join(&m.body)).await;
        }
        Ok(PutOutcome::Stored)
    }

    /// Streams `body` into `path`; `None` if it outgrew the entry limit.
    async fn write_body<S, E>(&self, path: &Path, body: S) -> Result<Option<u64>, CacheError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut file = tokio::fs::File::create(path).await?;
        let mut body = std::pin::pin!(body);
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| CacheError::Body(e.to_string()))?;
            size += chunk.len() as u64;
            if size > self.inner.max_entry_bytes {
                drop(file);
                drain(body).await;
                return Ok(None);
            }
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok(Some(size))
    }

    /// `cache.match(request, {ignoreMethod})`: the stored response, or `None`. Honours
    /// `If-None-Match` / `If-Modified-Since` (304) and a single `Range` (206, 416); adds
    /// `CF-Cache-Status: HIT`.
    pub async fn match_request<B>(
        &self,
        req: &Request<B>,
        opts: MatchOptions,
    ) -> Result<Option<Response<CacheBody>>, CacheError> {
        if req.method() != Method::GET && !opts.ignore_method {
            return Ok(None);
        }
        let url = cache_key(req);
        let dir = entry::url_dir(&self.inner.dir, &url);
        let now = self.inner.clock.now_ms();
        let mut found = None;
        for (path, meta) in read_metas(&dir).await? {
            if meta.url != url || !vary_matches(&meta, req.headers()) {
                continue;
            }
            if meta.expires_at_ms <= now {
                let _g = self.lock_for(&dir).lock().await;
                remove_entry(&dir, &path, &meta).await;
                continue;
            }
            if found
                .as_ref()
                .is_none_or(|(_, f): &(PathBuf, Meta)| f.stored_at_ms < meta.stored_at_ms)
            {
                found = Some((path, meta));
            }
        }
        let Some((_, meta)) = found else {
            return Ok(None);
        };
        let mut file = match tokio::fs::File::open(dir.join(&meta.body)).await {
            Ok(f) => f,
            // Replaced or purged between reading the meta and opening the body.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if file.metadata().await?.len() != meta.size {
            return Ok(None);
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &meta.headers {
            let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_bytes(v),
            ) else {
                return Err(CacheError::Corrupt(format!("header {k:?} of {url}")));
            };
            headers.append(k, v);
        }
        headers.insert(
            HeaderName::from_static("cf-cache-status"),
            HeaderValue::from_static("HIT"),
        );
        let status = StatusCode::from_u16(meta.status)
            .map_err(|_| CacheError::Corrupt(format!("status {}", meta.status)))?;
        if not_modified(req.headers(), &headers) {
            headers.remove(CONTENT_LENGTH);
            return Ok(Some(build(
                StatusCode::NOT_MODIFIED,
                headers,
                CacheBody::empty(),
            )));
        }
        let range = req
            .headers()
            .get(RANGE)
            .and_then(|v| v.to_str().ok())
            .map(|v| parse_range(v, meta.size));
        match range {
            Some(Err(())) => {
                headers.insert(
                    CONTENT_RANGE,
                    header_value(format!("bytes */{}", meta.size)),
                );
                headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
                Ok(Some(build(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    headers,
                    CacheBody::empty(),
                )))
            }
            Some(Ok(Some((start, end)))) => {
                let len = end - start + 1;
                file.seek(io::SeekFrom::Start(start)).await?;
                headers.insert(
                    CONTENT_RANGE,
                    header_value(format!("bytes {start}-{end}/{}", meta.size)),
                );
                headers.insert(CONTENT_LENGTH, header_value(len.to_string()));
                let body = CacheBody {
                    len,
                    stream: Some(file_stream(file, len)),
                };
                Ok(Some(build(StatusCode::PARTIAL_CONTENT, headers, body)))
            }
            _ => {
                headers.insert(CONTENT_LENGTH, header_value(meta.size.to_string()));
                let body = CacheBody {
                    len: meta.size,
                    stream: Some(file_stream(file, meta.size)),
                };
                Ok(Some(build(status, headers, body)))
            }
        }
    }

    /// `cache.delete(request, {ignoreMethod})`: removes every stored variant of the URL;
    /// `true` if there was one.
    pub async fn delete<B>(
        &self,
        req: &Request<B>,
        opts: MatchOptions,
    ) -> Result<bool, CacheError> {
        if req.method() != Method::GET && !opts.ignore_method {
            return Ok(false);
        }
        let url = cache_key(req);
        let dir = entry::url_dir(&self.inner.dir, &url);
        let _g = self.lock_for(&dir).lock().await;
        let now = self.inner.clock.now_ms();
        let mut any = false;
        for (path, meta) in read_metas(&dir).await? {
            if meta.url != url {
                continue;
            }
            any |= meta.expires_at_ms > now;
            remove_entry(&dir, &path, &meta).await;
        }
        Ok(any)
    }

    /// Removes expired entries and files no entry refers to (left by a crash mid-put).
    /// Returns how many files were removed.
    pub async fn purge_expired(&self) -> Result<usize, CacheError> {
        let mut removed = 0;
        let mut rd = match tokio::fs::read_dir(&self.inner.dir).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let now = self.inner.clock.now_ms();
        while let Some(d) = rd.next_entry().await? {
            let dir = d.path();
            if !d.file_type().await?.is_dir() {
                continue;
            }
            let _g = self.lock_for(&dir).lock().await;
            let metas = read_metas(&dir).await?;
            let mut live_bodies = std::collections::HashSet::new();
            for (path, meta) in metas {
                if meta.expires_at_ms <= now {
                    remove_entry(&dir, &path, &meta).await;
                    removed += 2;
                } else {
                    live_bodies.insert(meta.body);
                }
            }
            let mut files = tokio::fs::read_dir(&dir).await?;
            while let Some(f) = files.next_entry().await? {
                let name = f.file_name().to_string_lossy().into_owned();
                let stray = name.contains(".meta.tmp")
                    || (name.ends_with(".body") && !live_bodies.contains(&name));
                if stray && tokio::fs::remove_file(f.path()).await.is_ok() {
                    removed += 1;
                }
            }
            let _ = tokio::fs::remove_dir(&dir).await;
        }
        Ok(removed)
    }
}

fn header_value(s: String) -> HeaderValue {
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn build(status: StatusCode, headers: HeaderMap, body: CacheBody) -> Response<CacheBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// RFC 9110 §13.2.2: `If-None-Match` (weak comparison) decides when present; otherwise
/// `If-Modified-Since` against `Last-Modified`.
fn not_modified(req: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(inm) = req.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = stored.get(ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        if inm.trim() == "*" {
            return true;
        }
        return inm.split(',').any(|t| opaque(t) == opaque(etag));
    }
    let ims = req
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(policy::parse_http_date_ms);
    let lm = stored
        .get(LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(policy::parse_http_date_ms);
    matches!((ims, lm), (Some(ims), Some(lm)) if lm <= ims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
        assert_eq!(parse_range("bytes=9-3", 100), Ok(None));
    }
}
