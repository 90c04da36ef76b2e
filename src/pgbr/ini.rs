//! pgBackRest's INI-with-JSON files (`backup.info`, `archive.info`, `backup.manifest`): sections of
//! `key=<JSON>` lines, a repeated `[backrest]` section merged, and the `backrest-checksum` — SHA-1 of
//! the file re-rendered as one compact JSON object with the values' text hashed as written.

use std::collections::BTreeMap;

use serde_json::Value;
use sha1::{Digest, Sha1};

use crate::error::{Error, Result};

/// The only repository format pgBackRest 2.x writes.
pub const REPOSITORY_FORMAT: u64 = 5;

/// A parsed INI-with-JSON file whose checksum matched.
#[derive(Debug, Clone, Default)]
pub struct Ini {
    /// Section name → its keys in file order, with their parsed values.
    sections: BTreeMap<String, Vec<(String, Value)>>,
}

impl Ini {
    /// Parses `bytes` (the decrypted file), verifies its `backrest-checksum` and `backrest-format`;
    /// `what` names the file in errors ("backup.info of stanza demo").
    pub fn parse(bytes: &[u8], what: &str) -> Result<Ini> {
        let text = std::str::from_utf8(bytes).map_err(|_| Error::invalid(what, "not UTF-8 text"))?;
        let mut sections: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
        let mut hasher = Sha1::new();
        hasher.update(b"{");
        let mut current: Option<&str> = None;
        let mut last_hashed: Option<&str> = None;
        let mut stored: Option<String> = None;
        for (number, line) in text.split('\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            if line.len() >= 2 && line.starts_with('[') && line.ends_with(']') {
                current = line.get(1..line.len() - 1);
                continue;
            }
            let line_what = || format!("{what}, line {}", number + 1);
            let section = current.ok_or_else(|| Error::invalid(line_what(), "key before the first section"))?;
            let (key, raw, value) = split_key_value(line).ok_or_else(|| {
                Error::invalid(line_what(), "not a key=value line with a JSON value (damaged or wrong passphrase?)")
            })?;
            if section == "backrest" && key == "backrest-checksum" {
                let Value::String(sum) = value else {
                    return Err(Error::invalid(line_what(), "backrest-checksum is not a string"));
                };
                stored = Some(sum);
                continue;
            }
            if last_hashed == Some(section) {
                hasher.update(b",");
            } else {
                if last_hashed.is_some() {
                    hasher.update(b"},");
                }
                hasher.update(json_quote(section).as_bytes());
                hasher.update(b":{");
                last_hashed = Some(section);
            }
            hasher.update(json_quote(key).as_bytes());
            hasher.update(b":");
            hasher.update(raw.as_bytes());
            sections.entry(section.to_string()).or_default().push((key.to_string(), value));
        }
        hasher.update(b"}}");
        let computed = to_hex(&hasher.finalize());
        match stored {
            None => return Err(Error::invalid(what, "no backrest-checksum (truncated file?)")),
            Some(stored) if stored != computed => {
                return Err(Error::invalid(
                    what,
                    format!("checksum mismatch (backrest-checksum {stored}, content hashes to {computed})"),
                ));
            }
            Some(_) => {}
        }
        let ini = Ini { sections };
        match ini.get("backrest", "backrest-format").and_then(Value::as_u64) {
            Some(REPOSITORY_FORMAT) => Ok(ini),
            Some(other) => Err(Error::refused(
                format!("{what}: repository format {other}, pgfork reads pgBackRest's format {REPOSITORY_FORMAT}"),
                None,
            )),
            None => Err(Error::invalid(what, "no backrest-format")),
        }
    }

    /// The value of `key` in `section`.
    pub fn get(&self, section: &str, key: &str) -> Option<&Value> {
        self.sections.get(section)?.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Every key of `section` in file order (empty when the section is absent).
    pub fn section(&self, section: &str) -> &[(String, Value)] {
        self.sections.get(section).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether the file has `section`.
    pub fn has_section(&self, section: &str) -> bool {
        self.sections.contains_key(section)
    }
}

/// Splits at the first `=` whose remainder is valid JSON (keys may contain `=`); returns the key,
/// the value's text and the value.
fn split_key_value(line: &str) -> Option<(&str, &str, Value)> {
    let mut from = 0;
    while let Some(found) = line.get(from..)?.find('=') {
        let at = from + found;
        let raw = line.get(at + 1..)?;
        if at > 0
            && let Ok(value) = serde_json::from_str::<Value>(raw)
        {
            return Some((line.get(..at)?, raw, value));
        }
        from = at + 1;
    }
    None
}

/// A JSON string as pgBackRest writes it: only `"`, `\` and five control characters escaped.
fn json_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    crate::repo::crypto::to_hex(bytes)
}

/// The SHA-1 of `bytes`, lower-case hex.
pub fn sha1_hex(bytes: &[u8]) -> String {
    to_hex(&Sha1::digest(bytes))
}

/// Reads a JSON value that must be an unsigned integer.
pub fn as_u64(value: Option<&Value>, what: &str, key: &str) -> Result<u64> {
    value.and_then(Value::as_u64).ok_or_else(|| Error::invalid(what, format!("{key} missing or not a number")))
}

/// Reads a JSON value that must be a string.
pub fn as_str<'a>(value: Option<&'a Value>, what: &str, key: &str) -> Result<&'a str> {
    value.and_then(Value::as_str).ok_or_else(|| Error::invalid(what, format!("{key} missing or not a string")))
}

/// Appends the closing `[backrest]` section with the checksum of `body`, as pgBackRest writes it
/// (for tests and fuzzing seeds that build repositories).
pub(crate) fn render(body: &str) -> String {
    let mut hasher = Sha1::new();
    let mut last: Option<String> = None;
    let mut section = String::new();
    hasher.update(b"{");
    for line in body.lines().filter(|l| !l.is_empty()) {
        if line.starts_with('[') {
            section = line[1..line.len() - 1].to_string();
            continue;
        }
        let (key, raw, _) = split_key_value(line).unwrap();
        if last.as_deref() == Some(section.as_str()) {
            hasher.update(b",");
        } else {
            if last.is_some() {
                hasher.update(b"},");
            }
            hasher.update(format!("{}:{{", json_quote(&section)));
            last = Some(section.clone());
        }
        hasher.update(format!("{}:{raw}", json_quote(key)));
    }
    hasher.update(b"}}");
    format!("{body}\n[backrest]\nbackrest-checksum=\"{}\"\n", to_hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn garbage_is_an_error_not_a_panic(text in "(\\[[a-z:]{0,8}\\]|[a-z=\"{}0-9\\[\\]]{0,12}|\n){0,30}") {
            let _ = Ini::parse(text.as_bytes(), "x");
        }
    }

    const BODY: &str = "[backrest]\nbackrest-format=5\nbackrest-version=\"2.45\"\n\n\
        [target:file]\npg_data/a=b={\"size\":3,\"timestamp\":1}\npg_data/\"q\"={\"size\":0,\"timestamp\":2}\n\n\
        [target:file:default]\nmode=\"0600\"\nuser=false\n";

    #[test]
    fn parses_sections_keys_with_equals_and_defaults() {
        let ini = Ini::parse(render(BODY).as_bytes(), "test").unwrap();
        assert_eq!(ini.get("backrest", "backrest-version").unwrap(), "2.45");
        assert_eq!(ini.get("backrest", "backrest-checksum"), None);
        let files = ini.section("target:file");
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].0, "pg_data/a=b");
        assert_eq!(files[1].0, "pg_data/\"q\"");
        assert_eq!(ini.get("target:file:default", "user"), Some(&Value::Bool(false)));
        assert!(ini.has_section("target:file:default") && !ini.has_section("target:link"));
    }

    #[test]
    fn real_checksum_matches() {
        // archive.info of the gz-plain fixture, verbatim.
        let text = "[backrest]\nbackrest-format=5\nbackrest-version=\"2.45\"\n\n[db]\ndb-id=1\n\
            db-system-id=7713645710856087452\ndb-version=\"15\"\n\n[db:history]\n\
            1={\"db-id\":7713645710856087452,\"db-version\":\"15\"}\n\n[backrest]\n\
            backrest-checksum=\"c201d37cbff08f9be6b1c191cd76093288ae9b2d\"\n";
        let ini = Ini::parse(text.as_bytes(), "archive.info").unwrap();
        assert_eq!(ini.get("db", "db-system-id").and_then(Value::as_u64), Some(7713645710856087452));
        assert!(Ini::parse(text.replace("db-id=1", "db-id=2").as_bytes(), "archive.info").is_err());
    }

    #[test]
    fn checksum_mismatch_and_garbage_are_errors() {
        let good = render(BODY);
        let bad = good.replace("\"size\":3", "\"size\":4");
        let err = Ini::parse(bad.as_bytes(), "backup.info of stanza demo").unwrap_err().to_string();
        assert!(err.contains("backup.info of stanza demo") && err.contains("checksum mismatch"), "{err}");
        let truncated = &good[..good.find("[backrest]\nbackrest-checksum").unwrap()];
        assert!(Ini::parse(truncated.as_bytes(), "x").unwrap_err().to_string().contains("no backrest-checksum"));
        assert!(Ini::parse(b"\xff\xfe garbage", "x").is_err());
        assert!(Ini::parse(b"[s]\nnovalue\n", "x").is_err());
        assert!(Ini::parse(b"key=1\n", "x").is_err());
        let v4 = render(&BODY.replace("backrest-format=5", "backrest-format=4"));
        assert!(matches!(Ini::parse(v4.as_bytes(), "x"), Err(Error::Refused { .. })));
    }

    #[test]
    fn quoting_follows_pgbackrest() {
        assert_eq!(json_quote("a/b\"c\\\t"), "\"a/b\\\"c\\\\\\t\"");
        assert_eq!(json_quote("é\u{1}"), "\"é\u{1}\"");
    }
}
