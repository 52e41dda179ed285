//! AWS Signature Version 4: the `Authorization` header and presigned URLs (query
//! parameters), checked against the credentials the host configured.
//!
//! Canonicalisation follows the S3 flavour of SigV4: the path is used as sent (single
//! encoding, no dot-segment normalisation), query parameters are decoded and re-encoded with
//! AWS's unreserved set and sorted, signed headers are trimmed with inner whitespace
//! collapsed. The payload line is the `x-amz-content-sha256` header (`UNSIGNED-PAYLOAD` for
//! presigned URLs); what that promises about the body is checked while the body streams
//! (see `body.rs`).

use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use http::request::Parts;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::S3Error;

type HmacSha256 = Hmac<Sha256>;

/// Everything but AWS's unreserved characters (`A-Z a-z 0-9 - _ . ~`).
pub(crate) const AWS_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// As [`AWS_ENCODE`], keeping `/` (paths).
pub(crate) const AWS_ENCODE_PATH: &AsciiSet = &AWS_ENCODE.remove(b'/');

/// How far a request's date may be from ours.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// Longest validity of a presigned URL (7 days).
const MAX_PRESIGN: u64 = 7 * 24 * 3600;

pub(crate) const EMPTY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// An access key the endpoint accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// What the signed `x-amz-content-sha256` says about the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Payload {
    /// `UNSIGNED-PAYLOAD` (and presigned URLs).
    Unsigned,
    /// The body's SHA-256.
    Sha256([u8; 32]),
    /// aws-chunked: `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]` (`signed`) or
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`.
    Chunked { signed: bool, trailer: bool },
}

/// What chunk and trailer signatures are checked with.
#[derive(Clone)]
pub(crate) struct ChunkSigning {
    key: [u8; 32],
    amz_date: String,
    scope: String,
    /// The request's own signature: the first chunk's "previous signature".
    pub(crate) seed: String,
}

impl ChunkSigning {
    fn sign(&self, kind: &str, previous: &str, tail: &str) -> String {
        let sts = format!(
            "{kind}\n{}\n{}\n{previous}\n{tail}",
            self.amz_date, self.scope
        );
        hex::encode(hmac(&self.key, sts.as_bytes()))
    }

    /// The signature of a chunk whose data hashes to `data_sha256`.
    pub(crate) fn chunk(&self, previous: &str, data_sha256: &[u8]) -> String {
        self.sign(
            "AWS4-HMAC-SHA256-PAYLOAD",
            previous,
            &format!("{EMPTY_SHA256}\n{}", hex::encode(data_sha256)),
        )
    }

    /// The signature of the trailer block `trailer` (`name:value\n` lines).
    pub(crate) fn trailer(&self, previous: &str, trailer: &[u8]) -> String {
        self.sign(
            "AWS4-HMAC-SHA256-TRAILER",
            previous,
            &hex::encode(Sha256::digest(trailer)),
        )
    }
}

/// An authenticated request.
pub(crate) struct Authorized {
    pub(crate) payload: Payload,
    pub(crate) signing: ChunkSigning,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length: new_from_slice cannot fail.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ").ok()?;
    let secs = u64::try_from(t.and_utc().timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn skew(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b)
        .or_else(|_| b.duration_since(a))
        .unwrap_or_default()
}

/// `k=v` pairs of a raw query string, decoded (no `+` → space: SigV4 clients encode spaces
/// as `%20`).
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode_str(k).decode_utf8_lossy().into_owned(),
                percent_decode_str(v).decode_utf8_lossy().into_owned(),
            )
        })
        .collect()
}

fn canonical_query(pairs: &[(String, String)], skip_signature: bool) -> String {
    let mut enc: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| !(skip_signature && k == "X-Amz-Signature"))
        .map(|(k, v)| {
            (
                utf8_percent_encode(k, AWS_ENCODE).to_string(),
                utf8_percent_encode(v, AWS_ENCODE).to_string(),
            )
        })
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn canonical_headers(parts: &Parts, signed: &[&str]) -> Result<String, S3Error> {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = parts
            .headers
            .get_all(*name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let value = if values.is_empty() && *name == "host" {
            parts
                .uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .ok_or_else(S3Error::signature_mismatch)?
        } else if values.is_empty() {
            return Err(S3Error::signature_mismatch());
        } else {
            values.join(",")
        };
        out.push_str(name);
        out.push(':');
        out.push_str(&value);
        out.push('\n');
    }
    Ok(out)
}

/// The canonical URIs to try: the path as sent, then re-encoded from its decoded form (a
/// client may have encoded fewer characters than AWS's rules require).
fn canonical_paths(parts: &Parts) -> Vec<String> {
    let raw = parts.uri.path().to_owned();
    let decoded = percent_decode_str(&raw).collect::<Vec<u8>>();
    let reencoded = percent_encoding::percent_encode(&decoded, AWS_ENCODE_PATH).to_string();
    if reencoded == raw {
        vec![raw]
    } else {
        vec![raw, reencoded]
    }
}

struct Credential<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
}

fn parse_credential(c: &str) -> Option<Credential<'_>> {
    let mut it = c.split('/');
    let cred = Credential {
        access_key: it.next()?,
        date: it.next()?,
        region: it.next()?,
        service: it.next()?,
    };
    (it.next()? == "aws4_request" && it.next().is_none()).then_some(cred)
}

fn payload_of(header: Option<&str>) -> Result<Payload, S3Error> {
    let Some(h) = header else {
        return Err(S3Error::invalid_request(
            "Missing required header for this request: x-amz-content-sha256",
        ));
    };
    Ok(match h {
        "UNSIGNED-PAYLOAD" => Payload::Unsigned,
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" => Payload::Chunked {
            signed: true,
            trailer: false,
        },
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => Payload::Chunked {
            signed: true,
            trailer: true,
        },
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => Payload::Chunked {
            signed: false,
            trailer: true,
        },
        other => {
            let mut d = [0u8; 32];
            hex::decode_to_slice(other, &mut d).map_err(|_| {
                S3Error::invalid_argument(
                    "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, or a valid sha256 value.",
                )
            })?;
            Payload::Sha256(d)
        }
    })
}

/// Checks the request's signature (header or presigned URL) at time `now`.
pub(crate) fn authorize(
    creds: &[Credentials],
    parts: &Parts,
    now: SystemTime,
) -> Result<Authorized, S3Error> {
    let query = query_pairs(parts.uri.query().unwrap_or(""));
    let q = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let presigned = q("X-Amz-Algorithm").is_some();
    let (credential, signed_headers, signature, amz_date, payload_hash) = if presigned {
        if q("X-Amz-Algorithm") != Some("AWS4-HMAC-SHA256") {
            return Err(S3Error::invalid_argument(
                "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"",
            ));
        }
        let need = |n: &str| {
            q(n).ok_or_else(|| {
                S3Error::new(
                    http::StatusCode::FORBIDDEN,
                    "AuthorizationQueryParametersError",
                    format!("Query-string authentication requires the {n} parameter."),
                )
            })
        };
        let (cred, signed, sig, date) = (
            need("X-Amz-Credential")?,
            need("X-Amz-SignedHeaders")?,
            need("X-Amz-Signature")?,
            need("X-Amz-Date")?,
        );
        let expires: u64 = need("X-Amz-Expires")?.parse().map_err(|_| {
            S3Error::new(
                http::StatusCode::FORBIDDEN,
                "AuthorizationQueryParametersError",
                "X-Amz-Expires should be a number",
            )
        })?;
        if expires > MAX_PRESIGN {
            return Err(S3Error::new(
                http::StatusCode::FORBIDDEN,
                "AuthorizationQueryParametersError",
                "X-Amz-Expires must be less than a week (in seconds) that is 604800",
            ));
        }
        let t = parse_amz_date(date).ok_or_else(S3Error::access_denied)?;
        if now > t + Duration::from_secs(expires) {
            return Err(S3Error::new(
                http::StatusCode::FORBIDDEN,
                "AccessDenied",
                "Request has expired",
            ));
        }
        if t > now + MAX_SKEW {
            return Err(S3Error::new(
                http::StatusCode::FORBIDDEN,
                "AccessDenied",
                "Request is not valid yet",
            ));
        }
        let payload = header("x-amz-content-sha256").unwrap_or("UNSIGNED-PAYLOAD");
        (cred, signed, sig, date, payload)
    } else {
        let Some(auth) = header("authorization") else {
            return Err(S3Error::access_denied());
        };
        let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256") else {
            return Err(S3Error::invalid_request(
                "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.",
            ));
        };
        let (mut cred, mut signed, mut sig) = (None, None, None);
        for field in rest.split(',') {
            let field = field.trim();
            if let Some(v) = field.strip_prefix("Credential=") {
                cred = Some(v);
            } else if let Some(v) = field.strip_prefix("SignedHeaders=") {
                signed = Some(v);
            } else if let Some(v) = field.strip_prefix("Signature=") {
                sig = Some(v);
            }
        }
        let malformed = || {
            S3Error::new(
                http::StatusCode::BAD_REQUEST,
                "AuthorizationHeaderMalformed",
                "The authorization header is malformed.",
            )
        };
        let (cred, signed, sig) = (
            cred.ok_or_else(malformed)?,
            signed.ok_or_else(malformed)?,
            sig.ok_or_else(malformed)?,
        );
        let date = header("x-amz-date").ok_or_else(|| {
            S3Error::access_denied().with(
                "Detail",
                "AWS authentication requires a valid Date or x-amz-date header",
            )
        })?;
        let t = parse_amz_date(date).ok_or_else(S3Error::access_denied)?;
        if skew(t, now) > MAX_SKEW {
            return Err(S3Error::new(
                http::StatusCode::FORBIDDEN,
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
            ));
        }
        let payload = header("x-amz-content-sha256");
        payload_of(payload)?;
        (cred, signed, sig, date, payload.unwrap_or_default())
    };
    let payload = payload_of(Some(payload_hash))?;
    let c = parse_credential(credential).ok_or_else(|| {
        S3Error::new(
            http::StatusCode::BAD_REQUEST,
            "AuthorizationHeaderMalformed",
            "The Credential is malformed.",
        )
    })?;
    let Some(secret) = creds.iter().find(|k| k.access_key_id == c.access_key) else {
        return Err(S3Error::new(
            http::StatusCode::FORBIDDEN,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        ));
    };
    if !amz_date.starts_with(c.date) || c.date.len() != 8 {
        return Err(S3Error::signature_mismatch());
    }
    let signed: Vec<&str> = signed_headers.split(';').collect();
    if !signed.contains(&"host") {
        return Err(S3Error::signature_mismatch());
    }
    let headers = canonical_headers(parts, &signed)?;
    let cquery = canonical_query(&query, presigned);
    let scope = format!("{}/{}/{}/aws4_request", c.date, c.region, c.service);
    let key = signing_key(&secret.secret_access_key, c.date, c.region, c.service);
    let wanted = signature.to_ascii_lowercase();
    for path in canonical_paths(parts) {
        let creq = format!(
            "{}\n{path}\n{cquery}\n{headers}\n{signed_headers}\n{payload_hash}",
            parts.method.as_str()
        );
        let sts = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(creq.as_bytes()))
        );
        let sig = hex::encode(hmac(&key, sts.as_bytes()));
        if bool::from(sig.as_bytes().ct_eq(wanted.as_bytes())) {
            return Ok(Authorized {
                payload,
                signing: ChunkSigning {
                    key,
                    amz_date: amz_date.to_owned(),
                    scope,
                    seed: sig,
                },
            });
        }
    }
    Err(S3Error::signature_mismatch())
}

/// A presigned URL for `method` on `url` (`http://host:port/bucket/key`), valid for
/// `expires` seconds from `now`, as an SDK's `generate_presigned_url` makes it. For tools and
/// benchmarks that talk to the endpoint with a plain HTTP client.
pub fn presign_url(
    creds: &Credentials,
    method: &str,
    url: &str,
    region: &str,
    expires: u64,
    now: SystemTime,
) -> Result<String, S3Error> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| S3Error::invalid_argument("not a URL"))?;
    let host = uri
        .authority()
        .ok_or_else(|| S3Error::invalid_argument("URL without a host"))?
        .as_str()
        .to_owned();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t = chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(0), 0)
        .ok_or_else(|| S3Error::invalid_argument("time out of range"))?;
    let amz_date = t.format("%Y%m%dT%H%M%SZ").to_string();
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/s3/aws4_request");
    let mut pairs = query_pairs(uri.query().unwrap_or(""));
    pairs.extend([
        ("X-Amz-Algorithm".to_owned(), "AWS4-HMAC-SHA256".to_owned()),
        (
            "X-Amz-Credential".to_owned(),
            format!("{}/{scope}", creds.access_key_id),
        ),
        ("X-Amz-Date".to_owned(), amz_date.clone()),
        ("X-Amz-Expires".to_owned(), expires.to_string()),
        ("X-Amz-SignedHeaders".to_owned(), "host".to_owned()),
    ]);
    let cquery = canonical_query(&pairs, true);
    let creq = format!(
        "{method}\n{}\n{cquery}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD",
        uri.path()
    );
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(creq.as_bytes()))
    );
    let key = signing_key(&creds.secret_access_key, date, region, "s3");
    let sig = hex::encode(hmac(&key, sts.as_bytes()));
    let scheme = uri.scheme_str().unwrap_or("http");
    Ok(format!(
        "{scheme}://{host}{}?{cquery}&X-Amz-Signature={sig}",
        uri.path()
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The chunk-signed upload of AWS's SigV4 streaming documentation
    /// (`PUT /examplebucket/chunkObject.txt`, 66,560 bytes of `a`).
    pub(crate) fn aws_example() -> (Vec<Credentials>, Parts, SystemTime) {
        let req = http::Request::builder()
            .method("PUT")
            .uri("/examplebucket/chunkObject.txt")
            .header("host", "s3.amazonaws.com")
            .header("x-amz-date", "20130524T000000Z")
            .header("x-amz-storage-class", "REDUCED_REDUNDANCY")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
            )
            .header("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
            .header("content-encoding", "aws-chunked")
            .header("x-amz-decoded-content-length", "66560")
            .header("content-length", "66824")
            .body(())
            .unwrap_or_default();
        let creds = vec![Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        }];
        let now = parse_amz_date("20130524T000100Z").unwrap_or(SystemTime::UNIX_EPOCH);
        (creds, req.into_parts().0, now)
    }

    #[test]
    fn documented_seed_and_chunk_signatures() {
        let (creds, parts, now) = aws_example();
        let a = match authorize(&creds, &parts, now) {
            Ok(a) => a,
            Err(e) => panic!("documented request refused: {e}"),
        };
        assert_eq!(
            a.payload,
            Payload::Chunked {
                signed: true,
                trailer: false
            }
        );
        let s = &a.signing;
        let c1 = s.chunk(&s.seed, &Sha256::digest(vec![b'a'; 65536]));
        assert_eq!(
            c1,
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
        let c2 = s.chunk(&c1, &Sha256::digest(vec![b'a'; 1024]));
        assert_eq!(
            c2,
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
        );
        let c3 = s.chunk(&c2, &Sha256::digest(b""));
        assert_eq!(
            c3,
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
        );
    }

    #[test]
    fn documented_trailer_signatures() {
        // AWS's signed-trailer example: same key and date, seed given by the documentation.
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "20130524",
            "us-east-1",
            "s3",
        );
        let s = ChunkSigning {
            key,
            amz_date: "20130524T000000Z".into(),
            scope: "20130524/us-east-1/s3/aws4_request".into(),
            seed: "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e".into(),
        };
        let c1 = s.chunk(&s.seed, &Sha256::digest(vec![b'a'; 65536]));
        assert_eq!(
            c1,
            "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2"
        );
        let c2 = s.chunk(&c1, &Sha256::digest(vec![b'a'; 1024]));
        assert_eq!(
            c2,
            "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7"
        );
        let c3 = s.chunk(&c2, &Sha256::digest(b""));
        assert_eq!(
            c3,
            "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"
        );
        let t = s.trailer(&c3, b"x-amz-checksum-crc32c:sOO8/Q==\n");
        assert_eq!(
            t,
            "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
        );
    }

    #[test]
    fn presigned_urls_verify_until_they_expire() {
        let creds = vec![Credentials {
            access_key_id: "AK".into(),
            secret_access_key: "SK".into(),
        }];
        let now = SystemTime::now();
        let url = presign_url(
            &creds[0],
            "GET",
            "http://127.0.0.1:9000/b/a%20key",
            "auto",
            60,
            now,
        )
        .expect("presign");
        let parts = |u: &str| {
            let req = http::Request::builder()
                .uri(u)
                .header("host", "127.0.0.1:9000")
                .body(())
                .unwrap_or_default();
            req.into_parts().0
        };
        assert!(authorize(&creds, &parts(&url), now).is_ok());
        let late = now + Duration::from_secs(61);
        assert_eq!(
            authorize(&creds, &parts(&url), late)
                .err()
                .map(|e| e.message),
            Some("Request has expired".to_owned())
        );
        let tampered = url.replace("/b/a%20key", "/b/other");
        assert_eq!(
            authorize(&creds, &parts(&tampered), now)
                .err()
                .map(|e| e.code),
            Some("SignatureDoesNotMatch")
        );
    }

    #[test]
    fn tampered_request_is_refused() {
        let (creds, mut parts, now) = aws_example();
        parts.headers.insert(
            "x-amz-storage-class",
            http::HeaderValue::from_static("STANDARD"),
        );
        assert_eq!(
            authorize(&creds, &parts, now).err().map(|e| e.code),
            Some("SignatureDoesNotMatch")
        );
        let (creds, parts, _) = aws_example();
        let later = parse_amz_date("20130524T010000Z").unwrap_or(SystemTime::UNIX_EPOCH);
        assert_eq!(
            authorize(&creds, &parts, later).err().map(|e| e.code),
            Some("RequestTimeTooSkewed")
        );
    }
}
