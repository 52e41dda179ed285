//! Request bodies as S3 clients send them: plain (with a signed SHA-256, or unsigned), or
//! aws-chunked (`STREAMING-*` payloads: per-chunk signatures, optional trailing checksum
//! with its own signature). Whatever the body promises (payload hash, chunk signatures,
//! `x-amz-checksum-*`, `Content-MD5`-free checks) is verified while it streams; a broken
//! promise ends the stream with an error, so the put that consumes it fails and keeps
//! nothing.

use std::pin::Pin;

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::request::Parts;
use http::StatusCode;
use sha2::{Digest, Sha256};

use super::auth::{Authorized, ChunkSigning, Payload};
use super::error::S3Error;

/// A decoded request body.
pub(crate) type S3Body = Pin<Box<dyn Stream<Item = Result<Bytes, S3Error>> + Send>>;

/// Largest chunk header line accepted (`<hex>;chunk-signature=<64 hex>\r\n` is ~90 bytes).
const MAX_LINE: usize = 4096;
/// Largest trailer block.
const MAX_TRAILER: usize = 16 * 1024;

/// The full-object checksums S3 clients send (`x-amz-checksum-<name>`, base64 big-endian).
pub(crate) enum ChecksumHasher {
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Crc64Nvme(crc64fast_nvme::Digest),
    Sha1(sha1::Sha1),
    Sha256(Sha256),
}

impl ChecksumHasher {
    /// For a header name such as `x-amz-checksum-crc32`.
    pub(crate) fn for_header(name: &str) -> Option<ChecksumHasher> {
        Some(match name.to_ascii_lowercase().as_str() {
            "x-amz-checksum-crc32" => Self::Crc32(crc32fast::Hasher::new()),
            "x-amz-checksum-crc32c" => Self::Crc32c(0),
            "x-amz-checksum-crc64nvme" => Self::Crc64Nvme(crc64fast_nvme::Digest::new()),
            "x-amz-checksum-sha1" => Self::Sha1(Default::default()),
            "x-amz-checksum-sha256" => Self::Sha256(Default::default()),
            _ => return None,
        })
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Self::Crc32(h) => h.update(b),
            Self::Crc32c(c) => *c = crc32c::crc32c_append(*c, b),
            Self::Crc64Nvme(h) => h.write(b),
            Self::Sha1(h) => h.update(b),
            Self::Sha256(h) => h.update(b),
        }
    }

    fn finish_b64(self) -> String {
        let raw: Vec<u8> = match self {
            Self::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            Self::Crc32c(c) => c.to_be_bytes().to_vec(),
            Self::Crc64Nvme(h) => h.sum64().to_be_bytes().to_vec(),
            Self::Sha1(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
        };
        base64::engine::general_purpose::STANDARD.encode(raw)
    }
}

fn checksum_mismatch(name: &str) -> S3Error {
    let alg = name
        .strip_prefix("x-amz-checksum-")
        .unwrap_or(name)
        .to_ascii_uppercase();
    S3Error::new(
        StatusCode::BAD_REQUEST,
        "BadDigest",
        format!("The {alg} you specified did not match the calculated checksum."),
    )
}

fn sha_mismatch() -> S3Error {
    S3Error::new(
        StatusCode::BAD_REQUEST,
        "XAmzContentSHA256Mismatch",
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
    )
}

/// Decodes and verifies the body of a request authorized as `auth`.
pub(crate) fn decode(
    parts: &Parts,
    body: axum::body::Body,
    auth: &Authorized,
) -> Result<S3Body, S3Error> {
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    let raw = body
        .into_data_stream()
        .map(|r| r.map_err(|_| S3Error::incomplete_body()));
    // A full-object checksum in a header (not a trailer): checked at the end.
    let header_checksum = parts
        .headers
        .keys()
        .map(|k| k.as_str())
        .find(|k| {
            k.starts_with("x-amz-checksum-")
                && *k != "x-amz-checksum-type"
                && *k != "x-amz-checksum-algorithm"
        })
        .and_then(|k| {
            let value = header(k)?.to_owned();
            Some((k.to_owned(), ChecksumHasher::for_header(k)?, value))
        });
    match &auth.payload {
        Payload::Unsigned => Ok(verify(Box::pin(raw), None, header_checksum)),
        Payload::Sha256(want) => Ok(verify(Box::pin(raw), Some(*want), header_checksum)),
        Payload::Chunked { signed, trailer } => {
            let decoded_len = match header("x-amz-decoded-content-length") {
                Some(v) => Some(v.parse::<u64>().map_err(|_| {
                    S3Error::invalid_argument("x-amz-decoded-content-length must be a number")
                })?),
                None => None,
            };
            let trailer_checksum = if *trailer {
                header("x-amz-trailer")
                    .map(|t| t.trim().to_ascii_lowercase())
                    .and_then(|t| ChecksumHasher::for_header(&t).map(|h| (t, h)))
            } else {
                None
            };
            let decoder = Chunked {
                input: Box::pin(raw),
                buf: BytesMut::new(),
                state: State::Header,
                signing: signed.then(|| auth.signing.clone()),
                previous: auth.signing.seed.clone(),
                trailer: *trailer,
                trailer_checksum,
                decoded: 0,
                decoded_len,
            };
            Ok(verify(decoder.into_stream(), None, header_checksum))
        }
    }
}

/// Sets `done` once `body` has been read to its end.
pub(crate) fn track_end(
    body: S3Body,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> S3Body {
    Box::pin(futures::stream::unfold(Some(body), move |body| {
        let done = done.clone();
        async move {
            let mut body = body?;
            match body.next().await {
                Some(item) => Some((item, Some(body))),
                None => {
                    done.store(true, std::sync::atomic::Ordering::Release);
                    None
                }
            }
        }
    }))
}

/// Checks a payload SHA-256 and/or a header checksum once the stream ends.
fn verify(
    input: S3Body,
    sha256: Option<[u8; 32]>,
    checksum: Option<(String, ChecksumHasher, String)>,
) -> S3Body {
    if sha256.is_none() && checksum.is_none() {
        return input;
    }
    struct V {
        input: S3Body,
        sha: Option<(Sha256, [u8; 32])>,
        checksum: Option<(String, ChecksumHasher, String)>,
        done: bool,
    }
    let v = V {
        input,
        sha: sha256.map(|w| (Sha256::new(), w)),
        checksum,
        done: false,
    };
    Box::pin(futures::stream::unfold(v, |mut v| async move {
        if v.done {
            return None;
        }
        match v.input.next().await {
            Some(Ok(b)) => {
                if let Some((h, _)) = v.sha.as_mut() {
                    h.update(&b);
                }
                if let Some((_, h, _)) = v.checksum.as_mut() {
                    h.update(&b);
                }
                Some((Ok(b), v))
            }
            Some(Err(e)) => {
                v.done = true;
                Some((Err(e), v))
            }
            None => {
                v.done = true;
                if let Some((h, want)) = v.sha.take() {
                    if h.finalize().as_slice() != want {
                        return Some((Err(sha_mismatch()), v));
                    }
                }
                if let Some((name, h, want)) = v.checksum.take() {
                    if h.finish_b64() != want {
                        return Some((Err(checksum_mismatch(&name)), v));
                    }
                }
                None
            }
        }
    }))
}

enum State {
    /// Expecting `<hex size>[;chunk-signature=<sig>]\r\n`.
    Header,
    /// Inside a chunk's data.
    Data {
        left: u64,
        signature: Option<String>,
        hasher: Sha256,
    },
    /// Expecting the `\r\n` after a chunk's data, then its signature check.
    DataEnd {
        signature: Option<String>,
        digest: [u8; 32],
    },
    /// After the last (empty) chunk: trailer lines up to an empty line.
    Trailer,
    Done,
}

struct Chunked {
    input: S3Body,
    buf: BytesMut,
    state: State,
    signing: Option<ChunkSigning>,
    previous: String,
    trailer: bool,
    trailer_checksum: Option<(String, ChecksumHasher)>,
    decoded: u64,
    decoded_len: Option<u64>,
}

fn bad_chunk(what: &str) -> S3Error {
    S3Error::invalid_argument(format!("Malformed aws-chunked body: {what}."))
}

impl Chunked {
    fn into_stream(self) -> S3Body {
        Box::pin(futures::stream::unfold(Some(self), |st| async move {
            let mut st = st?;
            match st.step().await {
                Ok(Some(b)) => Some((Ok(b), Some(st))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        }))
    }

    /// Reads more input; false at its end.
    async fn fill(&mut self) -> Result<bool, S3Error> {
        match self.input.next().await {
            Some(Ok(b)) => {
                self.buf.extend_from_slice(&b);
                Ok(true)
            }
            Some(Err(e)) => Err(e),
            None => Ok(false),
        }
    }

    /// One `\r\n`-terminated line (without it).
    async fn line(&mut self, max: usize) -> Result<Bytes, S3Error> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(pos).freeze();
                self.buf.advance(2);
                return Ok(line);
            }
            if self.buf.len() > max {
                return Err(bad_chunk("line too long"));
            }
            if !self.fill().await? {
                return Err(S3Error::incomplete_body());
            }
        }
    }

    fn check_signature(&mut self, signature: Option<String>, digest: &[u8]) -> Result<(), S3Error> {
        if let Some(s) = &self.signing {
            let Some(given) = signature else {
                return Err(S3Error::signature_mismatch());
            };
            let want = s.chunk(&self.previous, digest);
            if want != given.to_ascii_lowercase() {
                return Err(S3Error::signature_mismatch());
            }
            self.previous = want;
        }
        Ok(())
    }

    /// The next piece of decoded data, or `None` at the (verified) end.
    async fn step(&mut self) -> Result<Option<Bytes>, S3Error> {
        loop {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Header => {
                    let line = self.line(MAX_LINE).await?;
                    let line =
                        std::str::from_utf8(&line).map_err(|_| bad_chunk("bad chunk header"))?;
                    let mut fields = line.split(';');
                    let size = fields.next().unwrap_or_default().trim();
                    let size =
                        u64::from_str_radix(size, 16).map_err(|_| bad_chunk("bad chunk size"))?;
                    let signature = fields
                        .find_map(|f| f.trim().strip_prefix("chunk-signature=").map(str::to_owned));
                    if size == 0 {
                        self.check_signature(signature, &Sha256::digest(b""))?;
                        if let Some(n) = self.decoded_len {
                            if n != self.decoded {
                                return Err(S3Error::incomplete_body());
                            }
                        }
                        self.state = State::Trailer;
                        continue;
                    }
                    self.state = State::Data {
                        left: size,
                        signature,
                        hasher: Sha256::new(),
                    };
                }
                State::Data {
                    mut left,
                    signature,
                    mut hasher,
                } => {
                    if self.buf.is_empty() && !self.fill().await? {
                        return Err(S3Error::incomplete_body());
                    }
                    let n = (left as usize).min(self.buf.len());
                    let data = self.buf.split_to(n).freeze();
                    left -= n as u64;
                    hasher.update(&data);
                    if let Some((_, h)) = self.trailer_checksum.as_mut() {
                        h.update(&data);
                    }
                    self.decoded += n as u64;
                    if self.decoded_len.is_some_and(|max| self.decoded > max) {
                        return Err(S3Error::incomplete_body());
                    }
                    self.state = if left == 0 {
                        State::DataEnd {
                            signature,
                            digest: hasher.finalize().into(),
                        }
                    } else {
                        State::Data {
                            left,
                            signature,
                            hasher,
                        }
                    };
                    return Ok(Some(data));
                }
                State::DataEnd { signature, digest } => {
                    let rest = self.line(2).await?;
                    if !rest.is_empty() {
                        return Err(bad_chunk("chunk longer than its size"));
                    }
                    self.check_signature(signature, &digest)?;
                    self.state = State::Header;
                }
                State::Trailer => {
                    let mut block = Vec::new();
                    let mut checksum_value = None;
                    let mut trailer_signature = None;
                    loop {
                        let line = match self.line(MAX_TRAILER).await {
                            Ok(l) => l,
                            // The final CRLF may be missing when no trailer was sent.
                            Err(_) if !self.trailer => break,
                            Err(e) => return Err(e),
                        };
                        if line.is_empty() {
                            break;
                        }
                        let text = String::from_utf8_lossy(&line).into_owned();
                        let (name, value) = text
                            .split_once(':')
                            .ok_or_else(|| bad_chunk("bad trailer"))?;
                        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                        if name == "x-amz-trailer-signature" {
                            trailer_signature = Some(value.to_owned());
                        } else {
                            block.extend_from_slice(format!("{name}:{value}\n").as_bytes());
                            if self
                                .trailer_checksum
                                .as_ref()
                                .is_some_and(|(n, _)| *n == name)
                            {
                                checksum_value = Some(value.to_owned());
                            }
                        }
                        if block.len() > MAX_TRAILER {
                            return Err(bad_chunk("trailer too long"));
                        }
                    }
                    if self.trailer {
                        if let Some(s) = &self.signing {
                            let want = s.trailer(&self.previous, &block);
                            if trailer_signature.map(|t| t.to_ascii_lowercase()) != Some(want) {
                                return Err(S3Error::signature_mismatch());
                            }
                        }
                    }
                    if let Some((name, h)) = self.trailer_checksum.take() {
                        match checksum_value {
                            Some(v) if h.finish_b64() == v => {}
                            Some(_) => return Err(checksum_mismatch(&name)),
                            None => {
                                return Err(S3Error::invalid_request(format!(
                                    "The trailer {name} announced in x-amz-trailer is missing."
                                )))
                            }
                        }
                    }
                    self.state = State::Done;
                    return Ok(None);
                }
                State::Done => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::auth::{authorize, tests::aws_example};

    fn body_of(chunks: Vec<Vec<u8>>) -> axum::body::Body {
        let s = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
        );
        axum::body::Body::from_stream(s)
    }

    fn documented_body(last_sig: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n");
        b.extend(vec![b'a'; 65536]);
        b.extend_from_slice(b"\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n");
        b.extend(vec![b'a'; 1024]);
        b.extend_from_slice(format!("\r\n0;chunk-signature={last_sig}\r\n\r\n").as_bytes());
        b
    }

    async fn collect(mut s: S3Body) -> Result<Vec<u8>, S3Error> {
        let mut out = Vec::new();
        while let Some(b) = s.next().await {
            out.extend_from_slice(&b?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn documented_chunked_upload_decodes_in_any_split() {
        let (creds, parts, now) = aws_example();
        let auth = authorize(&creds, &parts, now).expect("documented request");
        let body =
            documented_body("b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9");
        assert_eq!(body.len(), 66824);
        for split in [1usize, 7, 1000, 70000] {
            let chunks: Vec<Vec<u8>> = body.chunks(split).map(|c| c.to_vec()).collect();
            let out = collect(decode(&parts, body_of(chunks), &auth).expect("decoder"))
                .await
                .expect("verified body");
            assert_eq!(out, vec![b'a'; 66560], "split {split}");
        }
    }

    #[tokio::test]
    async fn a_wrong_chunk_signature_fails_the_body() {
        let (creds, parts, now) = aws_example();
        let auth = authorize(&creds, &parts, now).expect("documented request");
        let body = documented_body(&"0".repeat(64));
        let err = collect(decode(&parts, body_of(vec![body]), &auth).expect("decoder"))
            .await
            .err()
            .map(|e| e.code);
        assert_eq!(err, Some("SignatureDoesNotMatch"));
    }
}
