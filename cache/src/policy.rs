//! Whether and for how long a response may be stored, as Cloudflare decides it for the Cache
//! API: `Cache-Control` (`s-maxage` over `max-age`; `no-store`, `no-cache` and `private`
//! refuse), then `Expires`, then Cloudflare's default edge TTL by status code; a `Set-Cookie`
//! response is refused unless `Cache-Control: private=Set-Cookie` asks to strip the cookie.

use http::header::{CACHE_CONTROL, DATE, EXPIRES, SET_COOKIE};
use http::{HeaderMap, StatusCode};

/// The verdict on a response given to `put()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Store for this many ms; `strip_set_cookie` when `private=Set-Cookie` allowed it.
    Store { ttl_ms: i64, strip_set_cookie: bool },
    /// Not stored, and why.
    Skip(&'static str),
}

struct Directives {
    no_store: bool,
    no_cache: bool,
    private: bool,
    private_set_cookie: bool,
    max_age: Option<i64>,
    s_maxage: Option<i64>,
}

fn directives(headers: &HeaderMap) -> Directives {
    let mut d = Directives {
        no_store: false,
        no_cache: false,
        private: false,
        private_set_cookie: false,
        max_age: None,
        s_maxage: None,
    };
    for v in headers.get_all(CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(',') {
            let part = part.trim();
            let (name, arg) = match part.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (part, None),
            };
            let secs = || arg.and_then(|a| a.parse::<i64>().ok()).map(|s| s.max(0));
            match name.to_ascii_lowercase().as_str() {
                "no-store" => d.no_store = true,
                // `no-cache="field"` only restricts those fields; bare no-cache refuses.
                "no-cache" if arg.is_none() => d.no_cache = true,
                "private" => match arg {
                    Some(fields)
                        if fields
                            .split(',')
                            .all(|f| f.trim().eq_ignore_ascii_case("set-cookie")) =>
                    {
                        d.private_set_cookie = true
                    }
                    _ => d.private = true,
                },
                "max-age" => d.max_age = secs(),
                "s-maxage" => d.s_maxage = secs(),
                _ => {}
            }
        }
    }
    d
}

/// Cloudflare's edge TTL for a status without explicit freshness, in seconds.
fn default_ttl_s(status: StatusCode) -> Option<i64> {
    match status.as_u16() {
        200 | 206 | 301 => Some(7200),
        302 | 303 => Some(1200),
        404 | 410 => Some(180),
        _ => None,
    }
}

fn http_date_ms(headers: &HeaderMap, name: http::HeaderName) -> Option<i64> {
    let v = headers.get(name)?.to_str().ok()?;
    parse_http_date_ms(v)
}

pub(crate) fn parse_http_date_ms(v: &str) -> Option<i64> {
    let t = httpdate::parse_http_date(v.trim()).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(d.as_millis() as i64)
}

pub(crate) fn verdict(status: StatusCode, headers: &HeaderMap, now_ms: i64) -> Verdict {
    let d = directives(headers);
    if d.no_store {
        return Verdict::Skip("Cache-Control: no-store");
    }
    if d.no_cache {
        return Verdict::Skip("Cache-Control: no-cache");
    }
    if d.private {
        return Verdict::Skip("Cache-Control: private");
    }
    let strip_set_cookie = headers.contains_key(SET_COOKIE) && d.private_set_cookie;
    if headers.contains_key(SET_COOKIE) && !strip_set_cookie {
        return Verdict::Skip("Set-Cookie");
    }
    let ttl_ms = if let Some(s) = d.s_maxage.or(d.max_age) {
        s.saturating_mul(1000)
    } else if let Some(exp) = http_date_ms(headers, EXPIRES).or_else(|| {
        // An unparsable Expires means "already expired" (RFC 9111 §5.3).
        headers.get(EXPIRES).map(|_| i64::MIN)
    }) {
        if exp == i64::MIN {
            0
        } else {
            let base = http_date_ms(headers, DATE).unwrap_or(now_ms);
            exp - base
        }
    } else if let Some(s) = default_ttl_s(status) {
        s * 1000
    } else {
        return Verdict::Skip("status not cacheable without explicit freshness");
    };
    if ttl_ms <= 0 {
        return Verdict::Skip("already stale");
    }
    Verdict::Store {
        ttl_ms,
        strip_set_cookie,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn cache_control_expires_and_status_defaults() {
        let ok = StatusCode::OK;
        let store = |ttl_ms| Verdict::Store {
            ttl_ms,
            strip_set_cookie: false,
        };
        assert_eq!(
            verdict(ok, &h(&[("cache-control", "max-age=60")]), 0),
            store(60_000)
        );
        assert_eq!(
            verdict(
                ok,
                &h(&[("cache-control", "public, max-age=60, s-maxage=10")]),
                0
            ),
            store(10_000)
        );
        assert_eq!(verdict(ok, &h(&[]), 0), store(7_200_000));
        assert_eq!(verdict(StatusCode::NOT_FOUND, &h(&[]), 0), store(180_000));
        assert!(matches!(
            verdict(StatusCode::INTERNAL_SERVER_ERROR, &h(&[]), 0),
            Verdict::Skip(_)
        ));
        assert_eq!(
            verdict(
                StatusCode::INTERNAL_SERVER_ERROR,
                &h(&[("cache-control", "max-age=5")]),
                0
            ),
            store(5_000)
        );
        for cc in ["no-store", "no-cache", "private", "max-age=0"] {
            assert!(matches!(
                verdict(ok, &h(&[("cache-control", cc)]), 0),
                Verdict::Skip(_)
            ));
        }
        assert!(matches!(
            verdict(
                ok,
                &h(&[("cache-control", "no-cache=\"x-foo\", max-age=9")]),
                0
            ),
            Verdict::Store { .. }
        ));
        // Expires relative to Date.
        let e = h(&[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
        ]);
        assert_eq!(verdict(ok, &e, 0), store(60_000));
        assert!(matches!(
            verdict(ok, &h(&[("expires", "0")]), 0),
            Verdict::Skip(_)
        ));
        // Set-Cookie.
        assert_eq!(
            verdict(ok, &h(&[("set-cookie", "a=b")]), 0),
            Verdict::Skip("Set-Cookie")
        );
        assert_eq!(
            verdict(
                ok,
                &h(&[
                    ("set-cookie", "a=b"),
                    ("cache-control", "private=Set-Cookie, max-age=3")
                ]),
                0
            ),
            Verdict::Store {
                ttl_ms: 3000,
                strip_set_cookie: true
            }
        );
    }
}
