//! The little XML S3 needs: escaping for responses, and reading the two request documents
//! with lists in them (DeleteObjects, CompleteMultipartUpload).

use quick_xml::events::Event;
use quick_xml::Reader;

use super::error::S3Error;

/// Escapes text for element content.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters even escaped as text; S3 emits
            // them as character references.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' && c != '\r' => {
                out.push_str(&format!("&#x{:X};", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// An element with text content.
pub(crate) fn el(name: &str, text: &str) -> String {
    format!("<{name}>{}</{name}>", escape(text))
}

pub(crate) const HEADER: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
pub(crate) const NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// Child elements as `(name, text)` pairs.
type Fields = Vec<(String, String)>;

/// The records of a document: for each element named `record` (at any depth), the text of
/// its direct children, as `(child name, text)` pairs; plus top-level leaves named in `flags`.
fn records(xml: &[u8], record: &str) -> Result<(Vec<Fields>, Fields), S3Error> {
    let mut reader = Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut top = Vec::new();
    let mut current: Option<Vec<(String, String)>> = None;
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if name == record {
                    current = Some(Vec::new());
                }
                path.push(name);
                text.clear();
            }
            Ok(Event::End(_)) => {
                let Some(name) = path.pop() else {
                    return Err(S3Error::malformed_xml());
                };
                if name == record {
                    if let Some(r) = current.take() {
                        out.push(r);
                    }
                } else if let Some(r) = current.as_mut() {
                    r.push((name, std::mem::take(&mut text)));
                } else if path.len() == 1 {
                    top.push((name, std::mem::take(&mut text)));
                }
                text.clear();
            }
            Ok(Event::Empty(e)) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if let Some(r) = current.as_mut() {
                    r.push((name, String::new()));
                }
            }
            Ok(Event::Text(t)) => {
                let raw = t.decode().map_err(|_| S3Error::malformed_xml())?;
                let s = quick_xml::escape::unescape(&raw).map_err(|_| S3Error::malformed_xml())?;
                text.push_str(&s);
            }
            Ok(Event::GeneralRef(r)) => {
                let name = r.decode().map_err(|_| S3Error::malformed_xml())?;
                let entity = format!("&{name};");
                let s =
                    quick_xml::escape::unescape(&entity).map_err(|_| S3Error::malformed_xml())?;
                text.push_str(&s);
            }
            Ok(Event::CData(t)) => text.push_str(&String::from_utf8_lossy(&t)),
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(_) => return Err(S3Error::malformed_xml()),
        }
        buf.clear();
    }
    if !path.is_empty() {
        return Err(S3Error::malformed_xml());
    }
    Ok((out, top))
}

/// DeleteObjects: the keys and whether the reply is quiet.
pub(crate) fn parse_delete(xml: &[u8]) -> Result<(Vec<String>, bool), S3Error> {
    let (objects, top) = records(xml, "Object")?;
    let mut keys = Vec::with_capacity(objects.len());
    for o in objects {
        let key = o
            .into_iter()
            .find(|(n, _)| n == "Key")
            .map(|(_, v)| v)
            .ok_or_else(S3Error::malformed_xml)?;
        keys.push(key);
    }
    let quiet = top
        .iter()
        .any(|(n, v)| n == "Quiet" && v.trim().eq_ignore_ascii_case("true"));
    Ok((keys, quiet))
}

/// CompleteMultipartUpload: `(part number, etag)` in document order.
pub(crate) fn parse_complete(xml: &[u8]) -> Result<Vec<(u32, String)>, S3Error> {
    let (parts, _) = records(xml, "Part")?;
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let mut n = None;
        let mut etag = None;
        for (name, v) in p {
            match name.as_str() {
                "PartNumber" => n = v.trim().parse::<u32>().ok(),
                "ETag" => etag = Some(v.trim().trim_matches('"').to_owned()),
                _ => {}
            }
        }
        match (n, etag) {
            (Some(n), Some(e)) => out.push((n, e)),
            _ => return Err(S3Error::malformed_xml()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_document() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>a &amp; b</Key></Object><Object><Key>c</Key><VersionId>x</VersionId></Object><Quiet>true</Quiet></Delete>"#;
        let (keys, quiet) = parse_delete(xml).expect("valid");
        assert_eq!(keys, vec!["a & b".to_owned(), "c".to_owned()]);
        assert!(quiet);
        assert!(parse_delete(b"<Delete><Object>").is_err());
    }

    #[test]
    fn complete_document() {
        let xml = br#"<CompleteMultipartUpload><Part><ETag>"abc"</ETag><PartNumber>2</PartNumber></Part><Part><PartNumber>1</PartNumber><ETag>def</ETag></Part></CompleteMultipartUpload>"#;
        assert_eq!(
            parse_complete(xml).expect("valid"),
            vec![(2, "abc".to_owned()), (1, "def".to_owned())]
        );
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("<a&'\"\u{1}>"), "&lt;a&amp;&apos;&quot;&#x1;&gt;");
    }
}
