//! Canonical JSON written directly into a buffer: object keys in sorted
//! order, no spaces, strings and numbers as serde_json writes them. The
//! one writer of every text an audit hash covers — an entry, a verdict's
//! detail, a traffic change's detail — so they cannot drift apart, and
//! none walks a `serde_json::Value` tree (a verdict is written at every
//! measurement).

use serde::Serialize;

/// `value` as serde_json writes it, appended to `out`. Writing into a
/// vector cannot fail, and the crate's values always serialize.
pub(crate) fn push_json(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    let _ = serde_json::to_writer(out, value);
}

/// `s` as a JSON string, as serde_json writes it. Most strings of an entry
/// hold no character JSON escapes, and are then copied whole.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Sixteen bytes at a time with no early exit, which the compiler checks
    // in a few vector steps; the tail padded with a byte needing none.
    fn escaped(chunk: [u8; 16]) -> bool {
        chunk
            .iter()
            .fold(false, |any, &b| any | (b < 0x20) | (b == b'"') | (b == b'\\'))
    }
    let chunks = s.as_bytes().chunks_exact(16);
    let mut tail = [b' '; 16];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    let plain = !escaped(tail) && !chunks.into_iter().any(|c| c.try_into().is_ok_and(escaped));
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        push_json(out, s);
    }
}

/// A JSON object being written into a buffer. The caller adds its fields
/// in sorted key order (checked in debug builds) and ends it with
/// [`Object::end`].
#[must_use = "an object must be ended"]
pub(crate) struct Object<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
    #[cfg(debug_assertions)]
    last: Option<String>,
}

impl<'a> Object<'a> {
    /// Open an object at the end of `out`.
    #[inline]
    pub(crate) fn begin(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Object {
            out,
            empty: true,
            #[cfg(debug_assertions)]
            last: None,
        }
    }

    #[inline]
    fn separate(&mut self, key: &str) {
        #[cfg(debug_assertions)]
        {
            debug_assert!(
                self.last.as_deref().is_none_or(|last| last < key),
                "canonical JSON keys out of order: {:?} after {:?}",
                key,
                self.last
            );
            self.last = Some(key.to_owned());
        }
        #[cfg(not(debug_assertions))]
        let _ = key;
        if !std::mem::take(&mut self.empty) {
            self.out.push(b',');
        }
    }

    /// Start the field `name`, a plain identifier (nothing to escape).
    #[inline]
    fn name(&mut self, name: &'static str) -> &mut Vec<u8> {
        debug_assert!(!name.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'), "{name:?}");
        self.separate(name);
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    /// Start the field keyed `key`, any string (escaped as needed).
    #[inline]
    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        self.separate(key);
        push_json_str(self.out, key);
        self.out.push(b':');
        self.out
    }

    /// The field `name` holding the string `value`.
    #[inline]
    pub(crate) fn str(&mut self, name: &'static str, value: &str) {
        let out = self.name(name);
        push_json_str(out, value);
    }

    /// The field `name` holding `value` as serde_json writes it.
    #[inline]
    pub(crate) fn value(&mut self, name: &'static str, value: &(impl Serialize + ?Sized)) {
        let out = self.name(name);
        push_json(out, value);
    }

    /// The field `name` holding `value`.
    #[inline]
    pub(crate) fn bool(&mut self, name: &'static str, value: bool) {
        let out = self.name(name);
        out.extend_from_slice(if value { b"true" } else { b"false" });
    }

    /// The field `name` holding `text`, already canonical JSON.
    #[inline]
    pub(crate) fn raw(&mut self, name: &'static str, text: &str) {
        let out = self.name(name);
        out.extend_from_slice(text.as_bytes());
    }

    /// The field keyed by the string `key` (a map's key: a revision id, a
    /// statistic's name) holding `value` as serde_json writes it.
    #[inline]
    pub(crate) fn entry(&mut self, key: &str, value: &(impl Serialize + ?Sized)) {
        let out = self.key(key);
        push_json(out, value);
    }

    /// The field `name` holding an object, written through the returned
    /// one (ended before this one goes on).
    #[inline]
    pub(crate) fn object(&mut self, name: &'static str) -> Object<'_> {
        Object::begin(self.name(name))
    }

    /// Close the object.
    #[inline]
    pub(crate) fn end(self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_reads_as_the_compact_text_of_its_value() {
        let mut out = Vec::new();
        let mut o = Object::begin(&mut out);
        o.bool("a", true);
        let mut m = o.object("b");
        m.entry("rev \"1\"", &25u8);
        m.entry("rev-2", &75u8);
        m.end();
        o.raw("c", "{\"x\":null}");
        o.str("d", "tab\there");
        o.value("e", &[0.5, 1e300]);
        o.end();
        let want = serde_json::json!({
            "a": true,
            "b": {"rev \"1\"": 25, "rev-2": 75},
            "c": {"x": null},
            "d": "tab\there",
            "e": [0.5, 1e300],
        });
        assert_eq!(String::from_utf8(out).unwrap(), want.to_string());
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for s in [
            "",
            "plain",
            "sixteen-bytes-ok",
            "a\"b",
            "back\\slash",
            "\u{1}",
            "ünïcode",
            &"x".repeat(40),
        ] {
            let mut out = Vec::new();
            push_json_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "keys out of order")]
    fn keys_out_of_order_are_caught() {
        let mut out = Vec::new();
        let mut o = Object::begin(&mut out);
        o.bool("b", true);
        o.bool("a", true);
        o.end();
    }
}
