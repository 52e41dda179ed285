//! A decoder for V8's value serialization format (what `structuredClone` and Durable Object
//! storage write), turning stored values into JSON for `cinder do get` without an isolate.
//!
//! Covers the common tags (V8's `value-serializer.cc`): null, undefined, booleans, int32,
//! uint32, double, BigInt, strings (one-byte, two-byte, UTF-8), objects, dense and sparse
//! arrays, Date, RegExp, Map, Set, ArrayBuffer and its views, primitive wrappers, errors and
//! back-references. Values JSON has no form for are tagged objects
//! (`{"$type": "Date", "value": "…"}`). A tag outside that set stops decoding, since its length
//! is unknown: the whole value is then shown as base64 with the tag found
//! (`{"$type": "undecoded", …}`).

use base64::Engine as _;
use serde_json::{json, Map, Value};

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("unexpected end of data at byte {0}")]
    Truncated(usize),
    #[error("unsupported tag {tag:?} (0x{byte:02x}) at byte {offset}")]
    UnknownTag { tag: char, byte: u8, offset: usize },
    #[error("malformed data at byte {offset}: {what}")]
    Malformed { offset: usize, what: &'static str },
}

/// Decodes a whole serialized value; anything undecodable comes back as its bytes in base64
/// with the reason.
pub fn to_json(bytes: &[u8]) -> Value {
    match decode(bytes) {
        Ok(v) => v,
        Err(e) => {
            let mut out = json!({
                "$type": "undecoded",
                "error": e.to_string(),
                "base64": base64::engine::general_purpose::STANDARD.encode(bytes),
            });
            if let DecodeError::UnknownTag { tag, .. } = e {
                out["tag"] = Value::String(tag.to_string());
            }
            out
        }
    }
}

pub fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut r = Reader {
        buf: bytes,
        pos: 0,
        version: 0,
        objects: Vec::new(),
    };
    r.header()?;
    r.value()
}

mod tag {
    pub const VERSION: u8 = 0xFF;
    pub const PADDING: u8 = 0;
    pub const VERIFY_OBJECT_COUNT: u8 = b'?';
    pub const THE_HOLE: u8 = b'-';
    pub const UNDEFINED: u8 = b'_';
    pub const NULL: u8 = b'0';
    pub const TRUE: u8 = b'T';
    pub const FALSE: u8 = b'F';
    pub const INT32: u8 = b'I';
    pub const UINT32: u8 = b'U';
    pub const DOUBLE: u8 = b'N';
    pub const BIGINT: u8 = b'Z';
    pub const UTF8_STRING: u8 = b'S';
    pub const ONE_BYTE_STRING: u8 = b'"';
    pub const TWO_BYTE_STRING: u8 = b'c';
    pub const OBJECT_REFERENCE: u8 = b'^';
    pub const BEGIN_JS_OBJECT: u8 = b'o';
    pub const END_JS_OBJECT: u8 = b'{';
    pub const BEGIN_SPARSE_ARRAY: u8 = b'a';
    pub const END_SPARSE_ARRAY: u8 = b'@';
    pub const BEGIN_DENSE_ARRAY: u8 = b'A';
    pub const END_DENSE_ARRAY: u8 = b'$';
    pub const DATE: u8 = b'D';
    pub const TRUE_OBJECT: u8 = b'y';
    pub const FALSE_OBJECT: u8 = b'x';
    pub const NUMBER_OBJECT: u8 = b'n';
    pub const BIGINT_OBJECT: u8 = b'z';
    pub const STRING_OBJECT: u8 = b's';
    pub const REGEXP: u8 = b'R';
    pub const BEGIN_MAP: u8 = b';';
    pub const END_MAP: u8 = b':';
    pub const BEGIN_SET: u8 = b'\'';
    pub const END_SET: u8 = b',';
    pub const ARRAY_BUFFER: u8 = b'B';
    pub const RESIZABLE_ARRAY_BUFFER: u8 = b'~';
    pub const ARRAY_BUFFER_VIEW: u8 = b'V';
    pub const ERROR: u8 = b'r';
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Format version from the header (0 when there is none).
    version: u64,
    /// Objects by serialization id (V8 numbers every object in order of first appearance),
    /// for `^` back-references. `None` while the object is still being read (a cycle).
    objects: Vec<Option<Value>>,
}

impl Reader<'_> {
    fn malformed<T>(&self, what: &'static str) -> Result<T, DecodeError> {
        Err(DecodeError::Malformed {
            offset: self.pos,
            what,
        })
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(DecodeError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated(self.buf.len()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut out: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        self.malformed("varint longer than 64 bits")
    }

    fn varint_usize(&mut self) -> Result<usize, DecodeError> {
        let v = self.varint()?;
        usize::try_from(v).or_else(|_| self.malformed("length out of range"))
    }

    fn zigzag32(&mut self) -> Result<i32, DecodeError> {
        let v = self.varint()? as u32;
        Ok(((v >> 1) as i32) ^ -((v & 1) as i32))
    }

    fn double(&mut self) -> Result<f64, DecodeError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_le_bytes(a))
    }

    fn header(&mut self) -> Result<(), DecodeError> {
        if self.peek() == Some(tag::VERSION) {
            self.pos += 1;
            self.version = self.varint()?;
        }
        Ok(())
    }

    /// The next tag, skipping padding and object-count checks (which carry no value).
    fn tag(&mut self) -> Result<u8, DecodeError> {
        loop {
            match self.byte()? {
                tag::PADDING => continue,
                tag::VERIFY_OBJECT_COUNT => {
                    self.varint()?;
                }
                t => return Ok(t),
            }
        }
    }

    fn new_object(&mut self) -> usize {
        self.objects.push(None);
        self.objects.len() - 1
    }

    fn finish(&mut self, id: usize, v: Value) -> Value {
        self.objects[id] = Some(v.clone());
        v
    }

    fn value(&mut self) -> Result<Value, DecodeError> {
        let at = self.pos;
        let t = self.tag()?;
        self.value_of(t, at)
    }

    fn value_of(&mut self, t: u8, at: usize) -> Result<Value, DecodeError> {
        Ok(match t {
            tag::UNDEFINED | tag::THE_HOLE => json!({"$type": "undefined"}),
            tag::NULL => Value::Null,
            tag::TRUE => Value::Bool(true),
            tag::FALSE => Value::Bool(false),
            tag::INT32 => Value::from(self.zigzag32()?),
            tag::UINT32 => Value::from(self.varint()? as u32),
            tag::DOUBLE => number(self.double()?),
            tag::BIGINT => json!({"$type": "BigInt", "value": self.bigint()?}),
            tag::UTF8_STRING | tag::ONE_BYTE_STRING | tag::TWO_BYTE_STRING => {
                Value::String(self.string_of(t)?)
            }
            tag::OBJECT_REFERENCE => {
                let id = self.varint_usize()?;
                match self.objects.get(id) {
                    Some(Some(v)) => v.clone(),
                    Some(None) => json!({"$type": "circular"}),
                    None => return self.malformed("reference to an unknown object"),
                }
            }
            tag::BEGIN_JS_OBJECT => {
                let id = self.new_object();
                let mut map = Map::new();
                let n = self.properties(&mut map, tag::END_JS_OBJECT)?;
                if self.varint_usize()? != n {
                    return self.malformed("object property count mismatch");
                }
                self.finish(id, Value::Object(map))
            }
            tag::BEGIN_DENSE_ARRAY => {
                let id = self.new_object();
                let len = self.varint_usize()?;
                let mut items = Vec::with_capacity(len.min(1 << 16));
                for _ in 0..len {
                    items.push(self.value()?);
                }
                let mut extra = Map::new();
                self.properties(&mut extra, tag::END_DENSE_ARRAY)?;
                self.varint()?; // property count
                self.varint()?; // length
                self.finish(id, Value::Array(items))
            }
            tag::BEGIN_SPARSE_ARRAY => {
                let id = self.new_object();
                let len = self.varint_usize()?;
                let mut props = Map::new();
                self.properties(&mut props, tag::END_SPARSE_ARRAY)?;
                self.varint()?; // property count
                self.varint()?; // length
                let mut items = vec![json!({"$type": "undefined"}); len.min(1 << 20)];
                // Named properties of an array have no JSON form; only its elements are shown.
                for (k, v) in props {
                    if let Some(slot) = k.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                        *slot = v;
                    }
                }
                self.finish(id, Value::Array(items))
            }
            tag::DATE => {
                let id = self.new_object();
                let ms = self.double()?;
                let v = json!({"$type": "Date", "value": date_text(ms)});
                self.finish(id, v)
            }
            tag::TRUE_OBJECT | tag::FALSE_OBJECT => {
                let id = self.new_object();
                let v = json!({"$type": "Boolean", "value": t == tag::TRUE_OBJECT});
                self.finish(id, v)
            }
            tag::NUMBER_OBJECT => {
                let id = self.new_object();
                let v = json!({"$type": "Number", "value": number(self.double()?)});
                self.finish(id, v)
            }
            tag::BIGINT_OBJECT => {
                let id = self.new_object();
                let v = json!({"$type": "BigInt", "value": self.bigint()?});
                self.finish(id, v)
            }
            tag::STRING_OBJECT => {
                let id = self.new_object();
                let st = self.tag()?;
                let v = json!({"$type": "String", "value": self.string_of(st)?});
                self.finish(id, v)
            }
            tag::REGEXP => {
                let id = self.new_object();
                let st = self.tag()?;
                let source = self.string_of(st)?;
                let flags = regexp_flags(self.varint()?);
                let v = json!({"$type": "RegExp", "source": source, "flags": flags});
                self.finish(id, v)
            }
            tag::BEGIN_MAP => {
                let id = self.new_object();
                let mut entries = Vec::new();
                while self.peek_tag()? != tag::END_MAP {
                    let k = self.value()?;
                    let v = self.value()?;
                    entries.push(json!([k, v]));
                }
                self.tag()?;
                if self.varint_usize()? != entries.len() * 2 {
                    return self.malformed("map length mismatch");
                }
                self.finish(id, json!({"$type": "Map", "entries": entries}))
            }
            tag::BEGIN_SET => {
                let id = self.new_object();
                let mut values = Vec::new();
                while self.peek_tag()? != tag::END_SET {
                    values.push(self.value()?);
                }
                self.tag()?;
                if self.varint_usize()? != values.len() {
                    return self.malformed("set length mismatch");
                }
                self.finish(id, json!({"$type": "Set", "values": values}))
            }
            tag::ARRAY_BUFFER | tag::RESIZABLE_ARRAY_BUFFER => {
                let id = self.new_object();
                let len = self.varint_usize()?;
                if t == tag::RESIZABLE_ARRAY_BUFFER {
                    self.varint()?; // max byte length
                }
                let data = self.bytes(len)?.to_vec();
                let buffer = json!({"$type": "ArrayBuffer", "base64": b64(&data)});
                self.objects[id] = Some(buffer.clone());
                // A view over it follows directly when the value was a typed array.
                if self.peek_tag_opt() == Some(tag::ARRAY_BUFFER_VIEW) {
                    self.tag()?;
                    let view_id = self.new_object();
                    let v = self.view(&data)?;
                    return Ok(self.finish(view_id, v));
                }
                buffer
            }
            tag::ERROR => {
                let id = self.new_object();
                let v = self.error()?;
                self.finish(id, v)
            }
            other => {
                return Err(DecodeError::UnknownTag {
                    tag: other as char,
                    byte: other,
                    offset: at,
                })
            }
        })
    }

    /// Key/value pairs up to the `end` tag; returns how many were read.
    fn properties(&mut self, map: &mut Map<String, Value>, end: u8) -> Result<usize, DecodeError> {
        let mut n = 0;
        loop {
            if self.peek_tag()? == end {
                self.tag()?;
                return Ok(n);
            }
            let k = match self.value()? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let v = self.value()?;
            map.insert(k, v);
            n += 1;
        }
    }

    /// The next tag without consuming it (padding is consumed).
    fn peek_tag(&mut self) -> Result<u8, DecodeError> {
        while self.peek() == Some(tag::PADDING) {
            self.pos += 1;
        }
        self.peek().ok_or(DecodeError::Truncated(self.pos))
    }

    fn peek_tag_opt(&mut self) -> Option<u8> {
        self.peek_tag().ok()
    }

    fn string_of(&mut self, t: u8) -> Result<String, DecodeError> {
        let len = self.varint_usize()?;
        let raw = self.bytes(len)?;
        match t {
            tag::UTF8_STRING => Ok(String::from_utf8_lossy(raw).into_owned()),
            tag::ONE_BYTE_STRING => Ok(raw.iter().map(|&b| b as char).collect()),
            tag::TWO_BYTE_STRING => {
                if len % 2 != 0 {
                    return self.malformed("two-byte string of odd length");
                }
                let units: Vec<u16> = raw
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                Ok(String::from_utf16_lossy(&units))
            }
            _ => self.malformed("expected a string"),
        }
    }

    /// BigInt: a bitfield (bit 0 sign, the rest the byte length), then little-endian digits.
    fn bigint(&mut self) -> Result<String, DecodeError> {
        let bitfield = self.varint()?;
        let negative = bitfield & 1 == 1;
        let len = usize::try_from(bitfield >> 1).or_else(|_| self.malformed("bigint length"))?;
        let digits = self.bytes(len)?;
        Ok(format!(
            "{}{}",
            if negative { "-" } else { "" },
            le_bytes_to_decimal(digits)
        ))
    }

    fn view(&mut self, buffer: &[u8]) -> Result<Value, DecodeError> {
        let subtag = self.byte()?;
        let offset = self.varint_usize()?;
        let len = self.varint_usize()?;
        // Version 14+ writes the view's flags (length-tracking, backed by resizable buffer).
        if self.version >= 14 {
            self.varint()?;
        }
        let name = match subtag {
            b'b' => "Int8Array",
            b'B' => "Uint8Array",
            b'C' => "Uint8ClampedArray",
            b'w' => "Int16Array",
            b'W' => "Uint16Array",
            b'd' => "Int32Array",
            b'D' => "Uint32Array",
            b'h' => "Float16Array",
            b'f' => "Float32Array",
            b'F' => "Float64Array",
            b'q' => "BigInt64Array",
            b'Q' => "BigUint64Array",
            b'?' => "DataView",
            _ => return self.malformed("unknown array buffer view type"),
        };
        let data = offset
            .checked_add(len)
            .and_then(|end| buffer.get(offset..end))
            .ok_or(DecodeError::Malformed {
                offset: self.pos,
                what: "view outside its buffer",
            })?;
        Ok(json!({"$type": name, "base64": b64(data)}))
    }

    /// Errors: a sequence of sub-tags (prototype, message, stack, cause) ended by '.'.
    fn error(&mut self) -> Result<Value, DecodeError> {
        let mut name = "Error";
        let mut out = Map::new();
        loop {
            match self.byte()? {
                b'E' => name = "EvalError",
                b'R' => name = "RangeError",
                b'F' => name = "ReferenceError",
                b'S' => name = "SyntaxError",
                b'T' => name = "TypeError",
                b'U' => name = "URIError",
                b'm' => {
                    let t = self.tag()?;
                    out.insert("message".into(), Value::String(self.string_of(t)?));
                }
                b's' => {
                    let t = self.tag()?;
                    out.insert("stack".into(), Value::String(self.string_of(t)?));
                }
                b'c' => {
                    let cause = self.value()?;
                    out.insert("cause".into(), cause);
                }
                b'.' => break,
                _ => return self.malformed("unknown error sub-tag"),
            }
        }
        out.insert("$type".into(), Value::String(name.into()));
        Ok(Value::Object(out))
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// JSON numbers where possible; NaN and the infinities as tagged values.
fn number(d: f64) -> Value {
    if d.is_finite() {
        if d.fract() == 0.0
            && d.abs() < 9.007_199_254_740_992e15
            && !(d == 0.0 && d.is_sign_negative())
        {
            Value::from(d as i64)
        } else {
            Value::from(d)
        }
    } else {
        let text = if d.is_nan() {
            "NaN"
        } else if d > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        };
        json!({"$type": "number", "value": text})
    }
}

fn date_text(ms: f64) -> Value {
    if !ms.is_finite() {
        return Value::String("Invalid Date".into());
    }
    match chrono::DateTime::from_timestamp_millis(ms as i64) {
        Some(t) => Value::String(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()),
        None => Value::from(ms),
    }
}

fn regexp_flags(bits: u64) -> String {
    const FLAGS: [(u64, char); 9] = [
        (1 << 5, 'd'), // hasIndices sorts first in JS's `flags`
        (1 << 0, 'g'),
        (1 << 1, 'i'),
        (1 << 7, 'l'),
        (1 << 2, 'm'),
        (1 << 4, 's'),
        (1 << 3, 'u'),
        (1 << 8, 'v'),
        (1 << 6, 'y'),
    ];
    FLAGS
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|&(_, c)| c)
        .collect()
}

/// Little-endian magnitude bytes to a decimal string (schoolbook division by 10).
fn le_bytes_to_decimal(le: &[u8]) -> String {
    let mut digits: Vec<u8> = le.iter().rev().copied().skip_while(|&b| b == 0).collect();
    if digits.is_empty() {
        return "0".into();
    }
    let mut out = Vec::new();
    while !digits.is_empty() {
        let mut rem: u32 = 0;
        let mut next = Vec::with_capacity(digits.len());
        for &d in &digits {
            let cur = (rem << 8) | u32::from(d);
            let q = cur / 10;
            rem = cur % 10;
            if !(next.is_empty() && q == 0) {
                next.push(q as u8);
            }
        }
        out.push(b'0' + rem as u8);
        digits = next;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes as V8 (version 15) writes them for the values named; checked against
    /// `v8.serialize` in Node.
    #[test]
    fn decodes_the_common_tags() {
        let cases: Vec<(&[u8], Value)> = vec![
            (b"\xff\x0f0", Value::Null),
            (b"\xff\x0f_", json!({"$type": "undefined"})),
            (b"\xff\x0fT", json!(true)),
            (b"\xff\x0fI\x54", json!(42)),
            (b"\xff\x0fI\x53", json!(-42)),
            (b"\xff\x0fN\x00\x00\x00\x00\x00\x00\xf8\x3f", json!(1.5)),
            (b"\xff\x0f\"\x02hi", json!("hi")),
            (b"\xff\x0fc\x04\xe9\x00t\x00", json!("ét")),
            (b"\xff\x0fS\x03\xe2\x82\xac", json!("€")),
            (
                b"\xff\x0fo\"\x01aI\x02\"\x01bA\x02T0$\x00\x02{\x02",
                json!({"a": 1, "b": [true, null]}),
            ),
            (
                b"\xff\x0fZ\x10\xd2\x02\x96\x49\x00\x00\x00\x00",
                json!({"$type": "BigInt", "value": "1234567890"}),
            ),
            (
                b"\xff\x0fZ\x11\x01\x00\x00\x00\x00\x00\x00\x00",
                json!({"$type": "BigInt", "value": "-1"}),
            ),
            (
                b"\xff\x0fD\x00\x00\x00\x00\x00\x00\x00\x00",
                json!({"$type": "Date", "value": "1970-01-01T00:00:00.000Z"}),
            ),
            (
                b"\xff\x0fB\x03abc",
                json!({"$type": "ArrayBuffer", "base64": "YWJj"}),
            ),
            (
                b"\xff\x0fB\x03abcVB\x01\x02\x00",
                json!({"$type": "Uint8Array", "base64": "YmM="}),
            ),
            (
                b"\xff\x0f;\"\x01kI\x02:\x02",
                json!({"$type": "Map", "entries": [["k", 1]]}),
            ),
            (
                b"\xff\x0f'I\x02I\x04,\x02",
                json!({"$type": "Set", "values": [1, 2]}),
            ),
            (
                b"\xff\x0fo\"\x01s^\x00{\x01",
                json!({"s": {"$type": "circular"}}),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode(bytes), Ok(want), "{bytes:?}");
        }
    }

    #[test]
    fn unknown_tags_and_truncation_fall_back_to_base64() {
        let v = to_json(b"\xff\x0f\\\x01");
        assert_eq!(v["$type"], "undecoded");
        assert_eq!(v["tag"], "\\");
        assert_eq!(v["base64"], b64(b"\xff\x0f\\\x01"));
        let v = to_json(b"\xff\x0f\"\x05ab");
        assert_eq!(v["$type"], "undecoded");
        assert!(v["error"].as_str().unwrap().contains("end of data"), "{v}");
    }

    #[test]
    fn bigint_digits_to_decimal() {
        assert_eq!(le_bytes_to_decimal(&[0]), "0");
        assert_eq!(le_bytes_to_decimal(&[0xff, 0xff]), "65535");
        assert_eq!(
            le_bytes_to_decimal(&[0, 0, 0, 0, 0, 0, 0, 0, 1]),
            "18446744073709551616"
        );
    }
}
