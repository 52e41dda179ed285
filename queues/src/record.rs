//! How a queue object stores its messages: `m<seq:16 hex>` holds a small header (id,
//! timestamp, content type, attempts so far, when it becomes deliverable) and `b<seq:16 hex>`
//! the body, so loading the queue's index reads headers only. `n` holds the queue's name, for
//! an activation by alarm (whose id carries no name).

use bytes::{BufMut, Bytes, BytesMut};

pub(crate) const NAME_KEY: &str = "n";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) id: String,
    pub(crate) timestamp_ms: i64,
    pub(crate) content_type: String,
    /// Deliveries started so far (bumped before each delivery, so a crash mid-delivery counts).
    pub(crate) attempts: u32,
    pub(crate) visible_at_ms: i64,
}

pub(crate) fn header_key(seq: u64) -> String {
    format!("m{seq:016x}")
}

pub(crate) fn body_key(seq: u64) -> String {
    format!("b{seq:016x}")
}

pub(crate) fn parse_header_key(k: &str) -> Option<u64> {
    u64::from_str_radix(k.strip_prefix('m')?, 16).ok()
}

impl Header {
    pub(crate) fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        b.put_u8(1);
        b.put_i64_le(self.timestamp_ms);
        b.put_i64_le(self.visible_at_ms);
        b.put_u32_le(self.attempts);
        b.put_u8(self.id.len() as u8);
        b.put_slice(self.id.as_bytes());
        b.put_u8(self.content_type.len() as u8);
        b.put_slice(self.content_type.as_bytes());
        b.freeze()
    }

    pub(crate) fn decode(raw: &[u8]) -> Result<Header, String> {
        let bad = || "corrupt queue message header".to_string();
        let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
            let s = raw.get(*at..*at + n).ok_or_else(bad)?;
            *at += n;
            Ok(s)
        };
        let mut at = 0;
        if take(&mut at, 1)?[0] != 1 {
            return Err(bad());
        }
        let i64_at = |s: &[u8]| i64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
        let timestamp_ms = i64_at(take(&mut at, 8)?);
        let visible_at_ms = i64_at(take(&mut at, 8)?);
        let attempts = u32::from_le_bytes(take(&mut at, 4)?.try_into().map_err(|_| bad())?);
        let n = take(&mut at, 1)?[0] as usize;
        let id = String::from_utf8(take(&mut at, n)?.to_vec()).map_err(|_| bad())?;
        let n = take(&mut at, 1)?[0] as usize;
        let content_type = String::from_utf8(take(&mut at, n)?.to_vec()).map_err(|_| bad())?;
        Ok(Header {
            id,
            timestamp_ms,
            content_type,
            attempts,
            visible_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = Header {
            id: "0123456789abcdef0123456789abcdef".into(),
            timestamp_ms: 1_700_000_000_123,
            content_type: "json".into(),
            attempts: 3,
            visible_at_ms: 1_700_000_005_000,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        assert!(Header::decode(&h.encode()[..10]).is_err());
        assert_eq!(parse_header_key(&header_key(42)), Some(42));
    }
}
