//! The global `fetch()`: outbound HTTP through `deno_fetch`'s hyper client, refusing
//! loopback, private and link-local destinations unless the host allows them.
//!
//! The check runs on the addresses a name actually resolves to (a custom resolver), and on IP
//! literals in the URL, so `http://localtest.me/` and `http://[::1]/` are refused alike.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use deno_core::JsBuffer;
use deno_error::JsErrorBox;
use deno_fetch::dns::{Resolve, Resolving};
use deno_fetch::ReqBody;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::dns::Name;

use crate::state::IsolateState;
use crate::Body;

/// The flag named in the refusal message (the gateway's CLI flag).
pub const ALLOW_FLAG: &str = "--allow-private-fetch";

fn refusal(target: &str) -> String {
    format!(
        "fetch() to {target} refused: loopback, private and link-local addresses are not \
         reachable from a worker (start cinder with {ALLOW_FLAG} to allow them)"
    )
}

/// True for addresses a worker's `fetch()` must not reach by default: loopback, private,
/// link-local, unique-local, carrier-grade NAT, unspecified, broadcast, multicast and reserved
/// ranges, and the NAT64 prefixes (a translator is a gateway inside the network; an address in
/// them can reach any IPv4 host, internal ones included).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(v4);
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast() // ff00::/8
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] // NAT64 64:ff9b::/96
                || s[..3] == [0x64, 0xff9b, 1] // local-use NAT64 64:ff9b:1::/48
                || s[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible ::a.b.c.d (deprecated)
                || s[..2] == [0x2001, 0x0db8] // documentation 2001:db8::/32
        }
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // carrier-grade NAT 100.64/10
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || v4.is_multicast() // 224.0.0.0/4
        || o[0] >= 240 // reserved 240.0.0.0/4 (and broadcast)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments 192.0.0/24
}

/// Resolves with the system resolver, then drops internal addresses; a name with only
/// internal addresses fails with the refusal message.
#[derive(Debug)]
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| !is_internal(a.ip()))
                .collect();
            if public.is_empty() && !addrs.is_empty() {
                let shown = addrs[0].ip();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    refusal(&format!("{host} ({shown})")),
                ));
            }
            Ok(public.into_iter())
        })
    }
}

/// The outbound client of one worker.
pub(crate) fn client(allow_private: bool) -> Result<deno_fetch::Client, String> {
    let mut opts = deno_fetch::CreateHttpClientOptions::default();
    if !allow_private {
        opts.dns_resolver = deno_fetch::dns::Resolver::custom(Arc::new(PublicOnly));
    }
    deno_fetch::create_http_client("Cloudflare-Workers", opts).map_err(|e| e.to_string())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}

pub(crate) async fn fetch(
    st: &IsolateState,
    method: http::Method,
    url: &str,
    headers: http::HeaderMap,
    kind: u32,
    bytes: &JsBuffer,
    sink: u32,
) -> Result<http::Response<Body>, JsErrorBox> {
    let parsed = deno_core::url::Url::parse(url)
        .map_err(|e| JsErrorBox::type_error(format!("Invalid URL {url:?}: {e}")))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(JsErrorBox::type_error(format!(
            "fetch() of {url:?}: only http: and https: URLs are supported"
        )));
    }
    if !st.worker.allow_private_fetch {
        let literal = match parsed.host() {
            Some(deno_core::url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(deno_core::url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal.filter(|ip| is_internal(*ip)) {
            return Err(JsErrorBox::type_error(refusal(&ip.to_string())));
        }
    }
    let client = st
        .worker
        .fetch_client
        .clone()
        .ok_or_else(|| JsErrorBox::type_error("fetch() is unavailable: no HTTP client"))?;
    let body = match kind {
        1 => ReqBody::full(bytes::Bytes::copy_from_slice(bytes)),
        2 => match crate::ops::take_sink_body(st, sink) {
            Some(b) => ReqBody::streaming(b.map_err(|e| JsErrorBox::generic(e.to_string()))),
            None => ReqBody::empty(),
        },
        _ => ReqBody::empty(),
    };
    let mut req = http::Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = url
        .parse()
        .map_err(|e| JsErrorBox::type_error(format!("Invalid URL {url:?}: {e}")))?;
    *req.headers_mut() = headers;
    let resp = client
        .send(req)
        .await
        .map_err(|e| JsErrorBox::type_error(format!("fetch failed: {}", error_chain(&e))))?;
    Ok(resp.map(Body::new))
}
