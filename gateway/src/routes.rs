//! Workers routes and custom domains: which worker of a node answers a request.
//!
//! A route pattern is written as on Cloudflare: `[http://|https://]HOST[/PATH]`, where `*` may
//! open the host (`*.example.com` matches every subdomain, `*example.com` the apex too) and close
//! the path (`/api/*`); `*` matches zero or more characters and nowhere else is allowed. The path
//! is compared with the request's path *and query string*, as Cloudflare does, so
//! `example.com/` matches only the bare root and `example.com/*` everything on the host. A
//! custom domain (`{ pattern = "shop.example.com", custom_domain = true }`) takes every path of
//! exactly that host.
//!
//! When several patterns match, the most specific wins: an exact host before a wildcard one
//! (the longer literal suffix first), then the longer literal path, an exact path before a
//! wildcard path of the same length; a route before a custom domain on the same host. (The
//! [known quirk](https://developers.cloudflare.com/workers/platform/known-issues/#route-specificity)
//! where `example.com/images*` beats `example.com/images/*` is not reproduced.)

use std::cmp::Ordering;

/// One route or custom domain of a worker, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    /// As written, for messages.
    pub text: String,
    scheme: Option<Scheme>,
    host: Wild,
    /// `None` for a custom domain: every path.
    path: Option<Wild>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// A literal with an optional `*` on one side (the host's start, the path's end).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wild {
    literal: String,
    wildcard: bool,
}

impl RoutePattern {
    /// Parses a route pattern (`custom_domain` false) or a custom domain's host.
    pub fn parse(text: &str, custom_domain: bool) -> Result<RoutePattern, String> {
        let bad = |why: &str| Err(format!("route pattern {text:?} {why}"));
        let trimmed = text.trim();
        let (scheme, rest) = if let Some(r) = strip_prefix_ignore_case(trimmed, "https://") {
            (Some(Scheme::Https), r)
        } else if let Some(r) = strip_prefix_ignore_case(trimmed, "http://") {
            (Some(Scheme::Http), r)
        } else {
            (None, trimmed)
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        if host.is_empty() || host == "*" {
            return bad("needs a host name (like example.com/* or *.example.com/*)");
        }
        let host_literal = host.strip_prefix('*').unwrap_or(host);
        if host_literal.contains('*') {
            return bad("may have a wildcard only at the start of the host name");
        }
        if host_literal.contains(':') {
            return bad("must not name a port");
        }
        let host = Wild {
            literal: host_literal.to_ascii_lowercase(),
            wildcard: host.starts_with('*'),
        };
        if custom_domain {
            if host.wildcard || path.is_some_and(|p| p != "/") {
                return bad(
                    "is a custom domain: it must be a plain host name, without wildcard or path",
                );
            }
            return Ok(RoutePattern {
                text: text.to_string(),
                scheme,
                host,
                path: None,
            });
        }
        // A pattern without a path would match no URL (every URL has one); read it as the
        // whole host, which is what people mean by it.
        let path = path.unwrap_or("/*");
        let path_literal = path.strip_suffix('*').unwrap_or(path);
        if path_literal.contains('*') {
            return bad("may have a wildcard only at the end of the path");
        }
        Ok(RoutePattern {
            text: text.to_string(),
            scheme,
            host,
            path: Some(Wild {
                literal: path_literal.to_string(),
                wildcard: path.ends_with('*'),
            }),
        })
    }

    /// Whether a request to `host` (no port), `https`, `path_and_query` matches.
    pub fn matches(&self, host: &str, https: bool, path_and_query: &str) -> bool {
        match self.scheme {
            Some(Scheme::Https) if !https => return false,
            Some(Scheme::Http) if https => return false,
            _ => {}
        }
        let host = host.to_ascii_lowercase();
        let host_ok = if self.host.wildcard {
            host.ends_with(&self.host.literal)
        } else {
            host == self.host.literal
        };
        if !host_ok {
            return false;
        }
        match &self.path {
            None => true,
            Some(p) if p.wildcard => path_and_query.starts_with(&p.literal),
            Some(p) => path_and_query == p.literal,
        }
    }

    /// `Greater` when `self` is more specific than `other`.
    fn specificity(&self, other: &RoutePattern) -> Ordering {
        let host = (!self.host.wildcard, self.host.literal.len())
            .cmp(&(!other.host.wildcard, other.host.literal.len()));
        let route_first = self.path.is_some().cmp(&other.path.is_some());
        let path_key = |p: &Option<Wild>| p.as_ref().map(|w| (w.literal.len(), !w.wildcard));
        host.then(route_first)
            .then(path_key(&self.path).cmp(&path_key(&other.path)))
            .then(self.scheme.is_some().cmp(&other.scheme.is_some()))
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Every route of a node and the worker it leads to.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    routes: Vec<(RoutePattern, String)>,
}

impl RouteTable {
    /// Adds `worker`'s pattern; the same pattern for two workers is refused, as Cloudflare
    /// allows one worker per route.
    pub fn add(&mut self, pattern: RoutePattern, worker: &str) -> Result<(), String> {
        if let Some((_, other)) = self.routes.iter().find(|(p, _)| *p == pattern) {
            return Err(format!(
                "route {:?} is claimed by both {other:?} and {worker:?}",
                pattern.text
            ));
        }
        self.routes.push((pattern, worker.to_string()));
        Ok(())
    }

    pub fn patterns(&self) -> impl Iterator<Item = (&RoutePattern, &str)> {
        self.routes.iter().map(|(p, w)| (p, w.as_str()))
    }

    /// The worker of the most specific matching pattern.
    pub fn lookup(&self, host: &str, https: bool, path_and_query: &str) -> Option<&str> {
        self.routes
            .iter()
            .filter(|(p, _)| p.matches(host, https, path_and_query))
            .max_by(|(a, _), (b, _)| a.specificity(b))
            .map(|(_, w)| w.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, bool, &str)]) -> RouteTable {
        let mut t = RouteTable::default();
        for (p, custom, w) in entries {
            t.add(RoutePattern::parse(p, *custom).unwrap(), w).unwrap();
        }
        t
    }

    #[test]
    fn wildcards_open_the_host_and_close_the_path() {
        let p = RoutePattern::parse("*.example.com/images/*", false).unwrap();
        assert!(p.matches("cdn.example.com", true, "/images/a.png"));
        assert!(p.matches("a.b.example.com", false, "/images/"));
        assert!(!p.matches("example.com", true, "/images/a.png"));
        assert!(!p.matches("cdn.example.com", true, "/image"));
        let apex_too = RoutePattern::parse("*example.com/*", false).unwrap();
        assert!(apex_too.matches("example.com", true, "/"));
        assert!(apex_too.matches("www.example.com", true, "/x?y=1"));
        assert!(!apex_too.matches("example.org", true, "/"));
    }

    #[test]
    fn an_exact_path_includes_the_query_string() {
        let p = RoutePattern::parse("example.com/", false).unwrap();
        assert!(p.matches("EXAMPLE.com", false, "/"));
        assert!(!p.matches("example.com", false, "/?a=1"));
        assert!(!p.matches("example.com", false, "/a"));
        let q = RoutePattern::parse("example.com/api*", false).unwrap();
        assert!(q.matches("example.com", false, "/api?x=1"));
        assert!(q.matches("example.com", false, "/apiv2/x"));
    }

    #[test]
    fn a_scheme_restricts_the_match() {
        let p = RoutePattern::parse("https://example.com/*", false).unwrap();
        assert!(p.matches("example.com", true, "/"));
        assert!(!p.matches("example.com", false, "/"));
    }

    #[test]
    fn infix_wildcards_ports_and_bare_wildcards_are_refused() {
        for bad in [
            "example.com/*.jpg",
            "ex*ample.com/*",
            "*",
            "/*",
            "example.com:8080/*",
        ] {
            let err = RoutePattern::parse(bad, false).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        assert!(RoutePattern::parse("*.example.com", true).is_err());
        assert!(RoutePattern::parse("example.com/api", true).is_err());
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let t = table(&[
            ("*.example.com/*", false, "wild"),
            ("www.example.com/*", false, "www"),
            ("www.example.com/api/*", false, "api"),
            ("www.example.com/api/health", false, "health"),
            ("shop.example.com", true, "shop-domain"),
            ("shop.example.com/admin/*", false, "shop-admin"),
        ]);
        assert_eq!(t.lookup("www.example.com", true, "/"), Some("www"));
        assert_eq!(t.lookup("www.example.com", true, "/api/x"), Some("api"));
        assert_eq!(
            t.lookup("www.example.com", true, "/api/health"),
            Some("health")
        );
        assert_eq!(t.lookup("blog.example.com", true, "/"), Some("wild"));
        assert_eq!(
            t.lookup("shop.example.com", true, "/cart"),
            Some("shop-domain")
        );
        assert_eq!(
            t.lookup("shop.example.com", true, "/admin/x"),
            Some("shop-admin")
        );
        assert_eq!(t.lookup("example.com", true, "/"), None);
        assert_eq!(t.lookup("other.org", true, "/"), None);
    }

    #[test]
    fn one_pattern_belongs_to_one_worker() {
        let mut t = table(&[("example.com/*", false, "a")]);
        let err = t
            .add(RoutePattern::parse("example.com/*", false).unwrap(), "b")
            .unwrap_err();
        assert!(err.contains("\"a\"") && err.contains("\"b\""), "{err}");
    }
}
