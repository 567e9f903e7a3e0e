//! Stage 1 of config reading: `plugin_data` text → a raw [`Value`] tree, no meaning attached.
//!
//! SPIRE's agent hands a plugin its `plugin_data` re-printed as HCL v1 text. When the agent's
//! own config was JSON, the printer quotes the keys (`"node_name_env" = "N"`), which
//! `hcl-rs` (HCL 2) rejects; HCL 2 also differs from v1 in block and list syntax. SPIRE itself
//! decodes with HashiCorp's HCL v1 (`hcl.Decode`). So this is a small HCL v1 reader, just
//! what `plugin_data` uses:
//! * keys: identifiers (letters, digits, `_`, `-`, `.`) or quoted strings;
//! * `key = value`, and blocks `key { … }` / `key "label" { … }` (a label nests one level);
//! * values: strings with Go escapes, heredocs (`<<EOF`, `<<-EOF`), integers and floats,
//!   `true`/`false`, lists `[a, b,]`, objects `{ … }`;
//! * comments `#`, `//`, `/* */`; items separated by newlines or commas.
//!
//! JSON (`plugin_data_file` with JSON content; SPIRE's `hcl.Decode` accepts JSON too) is read
//! with `serde_json` into the same tree by [`parse_json_object`].
//!
//! Repeated keys are kept in order; `config` decides what repetition means.

/// A parsed value. Numbers keep their source text so `config` can apply Go's integer rules.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Number(String),
    Bool(bool),
    List(Vec<Value>),
    Object(Vec<(String, Value)>),
    /// JSON `null` only.
    Null,
}

impl Value {
    /// What the value is, for "expected X, got Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Bool(_) => "bool",
            Value::List(_) => "list",
            Value::Object(_) => "object",
            Value::Null => "null",
        }
    }
}

/// A syntax error with its 1-based position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {msg}")]
pub struct HclError {
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

/// Parses HCL v1 text as the body of an object (the top level of `plugin_data`).
pub fn parse(text: &str) -> Result<Vec<(String, Value)>, HclError> {
    let mut p = Parser {
        s: text.as_bytes(),
        text,
        pos: 0,
        depth: 0,
    };
    let items = p.body(None)?;
    Ok(items)
}

/// Parses `text` as JSON if it is a JSON object; `None` if it is not (then it is HCL).
pub fn parse_json_object(text: &str) -> Option<Vec<(String, Value)>> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => {
            Some(map.into_iter().map(|(k, v)| (k, from_json(v))).collect())
        }
        _ => None,
    }
}

fn from_json(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => Value::Number(n.to_string()),
        serde_json::Value::String(s) => Value::String(s),
        serde_json::Value::Array(a) => Value::List(a.into_iter().map(from_json).collect()),
        serde_json::Value::Object(m) => {
            Value::Object(m.into_iter().map(|(k, v)| (k, from_json(v))).collect())
        }
    }
}

/// Refuse absurd nesting instead of overflowing the stack.
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, HclError> {
        self.err_at(self.pos, msg)
    }

    fn err_at<T>(&self, at: usize, msg: impl Into<String>) -> Result<T, HclError> {
        let before = &self.s[..at.min(self.s.len())];
        let line = before.iter().filter(|&&c| c == b'\n').count() + 1;
        let col = at
            - before
                .iter()
                .rposition(|&c| c == b'\n')
                .map_or(0, |p| p + 1)
            + 1;
        Err(HclError {
            line,
            col,
            msg: msg.into(),
        })
    }

    fn peek_byte(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    /// Skips whitespace (newlines included) and comments.
    fn skip_trivia(&mut self) -> Result<(), HclError> {
        loop {
            match self.peek_byte() {
                Some(b' ' | b'\t' | b'\r' | b'\n') => self.pos += 1,
                Some(b'#') => self.skip_line(),
                Some(b'/') if self.s.get(self.pos + 1) == Some(&b'/') => self.skip_line(),
                Some(b'/') if self.s.get(self.pos + 1) == Some(&b'*') => {
                    let start = self.pos;
                    match self.text[self.pos + 2..].find("*/") {
                        Some(end) => self.pos += 2 + end + 2,
                        None => return self.err_at(start, "comment not terminated"),
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.peek_byte() {
            if c == b'\n' {
                break;
            }
            self.pos += 1;
        }
    }

    /// Items up to `close` (or end of input at top level).
    fn body(&mut self, close: Option<u8>) -> Result<Vec<(String, Value)>, HclError> {
        let mut items = Vec::new();
        loop {
            self.skip_trivia()?;
            match (self.peek_byte(), close) {
                (None, None) => return Ok(items),
                (None, Some(_)) => return self.err("object not closed: expected '}'"),
                (Some(c), Some(want)) if c == want => {
                    self.pos += 1;
                    return Ok(items);
                }
                _ => {}
            }
            let item = self.item()?;
            items.push(item);
            self.skip_trivia()?;
            if self.peek_byte() == Some(b',') {
                self.pos += 1;
            }
        }
    }

    /// `key = value`, `key { … }` or `key "label" … { … }`.
    fn item(&mut self) -> Result<(String, Value), HclError> {
        let mut keys = vec![self.key()?];
        loop {
            self.skip_trivia()?;
            match self.peek_byte() {
                Some(b'=') if keys.len() == 1 => {
                    self.pos += 1;
                    self.skip_trivia()?;
                    let value = self.value()?;
                    return Ok((keys.remove(0), value));
                }
                Some(b'{') => {
                    self.pos += 1;
                    let mut value = Value::Object(self.nested_body()?);
                    // `a "b" { … }` means `a = { b = { … } }`.
                    while keys.len() > 1 {
                        let label = keys.pop().unwrap_or_default();
                        value = Value::Object(vec![(label, value)]);
                    }
                    return Ok((keys.remove(0), value));
                }
                Some(b'"') | Some(b'a'..=b'z' | b'A'..=b'Z' | b'_') => keys.push(self.key()?),
                _ => {
                    let key = &keys[0];
                    return self.err(format!("expected '=' or '{{' after key {key:?}"));
                }
            }
        }
    }

    fn nested_body(&mut self) -> Result<Vec<(String, Value)>, HclError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err("configuration nested too deeply");
        }
        let items = self.body(Some(b'}'))?;
        self.depth -= 1;
        Ok(items)
    }

    fn key(&mut self) -> Result<String, HclError> {
        match self.peek_byte() {
            Some(b'"') => self.string(),
            Some(b'a'..=b'z' | b'A'..=b'Z' | b'_') => Ok(self.ident().to_string()),
            _ => self.err("expected a key (an identifier or a quoted string)"),
        }
    }

    fn ident(&mut self) -> &str {
        let start = self.pos;
        while let Some(c) = self.peek_byte() {
            if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.') {
                self.pos += 1;
            } else {
                break;
            }
        }
        &self.text[start..self.pos]
    }

    fn value(&mut self) -> Result<Value, HclError> {
        match self.peek_byte() {
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'<') if self.text[self.pos..].starts_with("<<") => {
                Ok(Value::String(self.heredoc()?))
            }
            Some(b'{') => {
                self.pos += 1;
                Ok(Value::Object(self.nested_body()?))
            }
            Some(b'[') => {
                self.pos += 1;
                self.list()
            }
            Some(b'-' | b'+' | b'0'..=b'9' | b'.') => self.number(),
            Some(b'a'..=b'z' | b'A'..=b'Z' | b'_') => {
                let start = self.pos;
                match self.ident() {
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    other => {
                        let other = other.to_string();
                        self.err_at(
                            start,
                            format!("unexpected {other:?}: strings must be quoted"),
                        )
                    }
                }
            }
            Some(_) => self.err("expected a value"),
            None => self.err("expected a value, found end of input"),
        }
    }

    fn list(&mut self) -> Result<Value, HclError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err("configuration nested too deeply");
        }
        let mut out = Vec::new();
        loop {
            self.skip_trivia()?;
            if self.peek_byte() == Some(b']') {
                self.pos += 1;
                self.depth -= 1;
                return Ok(Value::List(out));
            }
            out.push(self.value()?);
            self.skip_trivia()?;
            match self.peek_byte() {
                Some(b',') => self.pos += 1,
                Some(b']') => {}
                _ => return self.err("expected ',' or ']' in a list"),
            }
        }
    }

    fn number(&mut self) -> Result<Value, HclError> {
        let start = self.pos;
        while let Some(c) = self.peek_byte() {
            if c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'_') {
                self.pos += 1;
            } else {
                break;
            }
        }
        let text = &self.text[start..self.pos];
        // Rust's float parser also takes "inf" and "nan"; HCL has neither.
        let numeric = text.bytes().any(|c| c.is_ascii_digit())
            && text
                .bytes()
                .all(|c| c.is_ascii_hexdigit() || b"xXoO._+-".contains(&c));
        if !numeric || (text.parse::<f64>().is_err() && parse_go_int(text).is_none()) {
            return self.err_at(start, format!("invalid number {text:?}"));
        }
        Ok(Value::Number(text.to_string()))
    }

    /// A double-quoted string with Go escapes (`\n`, `\"`, `\\`, `\t`, `\r`, `\a`, `\b`, `\f`,
    /// `\v`, `\xHH`, `\NNN` octal, `\uHHHH`, `\UHHHHHHHH`). Newlines are not allowed inside.
    fn string(&mut self) -> Result<String, HclError> {
        let start = self.pos;
        self.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek_byte() else {
                return self.err_at(start, "string not terminated");
            };
            match c {
                b'"' => {
                    self.pos += 1;
                    return match String::from_utf8(out) {
                        Ok(s) => Ok(s),
                        Err(_) => self.err_at(start, "string is not valid UTF-8"),
                    };
                }
                b'\n' => return self.err_at(start, "string not terminated before end of line"),
                b'\\' => {
                    let esc_at = self.pos;
                    self.pos += 1;
                    let Some(e) = self.peek_byte() else {
                        return self.err_at(start, "string not terminated");
                    };
                    self.pos += 1;
                    let simple = match e {
                        b'n' => Some(b'\n'),
                        b't' => Some(b'\t'),
                        b'r' => Some(b'\r'),
                        b'a' => Some(0x07),
                        b'b' => Some(0x08),
                        b'f' => Some(0x0c),
                        b'v' => Some(0x0b),
                        b'\\' => Some(b'\\'),
                        b'"' => Some(b'"'),
                        _ => None,
                    };
                    if let Some(b) = simple {
                        out.push(b);
                        continue;
                    }
                    let (len, radix) = match e {
                        b'x' => (2, 16),
                        b'u' => (4, 16),
                        b'U' => (8, 16),
                        b'0'..=b'7' => {
                            self.pos -= 1;
                            (3, 8)
                        }
                        _ => return self.err_at(esc_at, "unknown escape sequence"),
                    };
                    let digits = self.text.get(self.pos..self.pos + len);
                    let n = digits.and_then(|d| u32::from_str_radix(d, radix).ok());
                    let Some(n) = n else {
                        return self.err_at(esc_at, "invalid escape sequence");
                    };
                    self.pos += len;
                    if matches!(e, b'x' | b'0'..=b'7') {
                        let Ok(byte) = u8::try_from(n) else {
                            return self.err_at(esc_at, "octal escape value > 255");
                        };
                        out.push(byte);
                    } else {
                        let Some(ch) = char::from_u32(n) else {
                            return self.err_at(esc_at, "escape is not a valid Unicode code point");
                        };
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                }
                _ => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// `<<EOF` … `EOF` (text kept verbatim) or `<<-EOF` (common leading indentation removed).
    fn heredoc(&mut self) -> Result<String, HclError> {
        let start = self.pos;
        self.pos += 2;
        let indent = self.peek_byte() == Some(b'-');
        if indent {
            self.pos += 1;
        }
        let marker = self.ident().to_string();
        if marker.is_empty() || self.peek_byte().is_some_and(|c| c != b'\n' && c != b'\r') {
            return self.err_at(
                start,
                "heredoc marker must be an identifier followed by a newline",
            );
        }
        self.skip_line();
        self.pos += 1;
        let mut lines = Vec::new();
        loop {
            if self.pos >= self.s.len() {
                return self.err_at(start, format!("heredoc not terminated: missing {marker:?}"));
            }
            let line_start = self.pos;
            self.skip_line();
            let line = self.text[line_start..self.pos].trim_end_matches('\r');
            self.pos = (self.pos + 1).min(self.s.len());
            if line.trim_start() == marker && (indent || line == marker) {
                break;
            }
            lines.push(line);
        }
        if indent {
            let strip = lines
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.len() - l.trim_start().len())
                .min()
                .unwrap_or(0);
            let stripped: Vec<&str> = lines
                .iter()
                .map(|l| l.get(strip..).unwrap_or_default())
                .collect();
            return Ok(stripped.iter().map(|l| format!("{l}\n")).collect());
        }
        Ok(lines.iter().map(|l| format!("{l}\n")).collect())
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: optional sign, `0x`/`0o`/`0b`/leading-`0` octal
/// prefixes, `_` separators only with a prefix.
pub fn parse_go_int(text: &str) -> Option<i64> {
    let (neg, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string(), true)
    } else {
        (10, lower.clone(), false)
    };
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') {
        return None;
    }
    if digits.contains('_') && !prefixed {
        return None;
    }
    let digits = digits.replace('_', "");
    if digits.starts_with(['+', '-']) {
        return None;
    }
    let magnitude = i128::from_str_radix(&digits, radix).ok()?;
    let value = if neg { -magnitude } else { magnitude };
    i64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::String(v.to_string())
    }

    fn n(v: &str) -> Value {
        Value::Number(v.to_string())
    }

    #[test]
    fn bare_and_quoted_keys() {
        let text = "kubelet_read_only_port = 10255\n\"node_name_env\" = \"N\"\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                ("kubelet_read_only_port".into(), n("10255")),
                ("node_name_env".into(), s("N")),
            ]
        );
    }

    #[test]
    fn blocks_with_and_without_equals() {
        let a = parse("experimental = {\n  api_server = {\n    cache = {\n      enabled = true\n    }\n  }\n}\n").unwrap();
        let b = parse(
            "experimental {\n  api_server {\n    cache {\n      enabled = true\n    }\n  }\n}\n",
        )
        .unwrap();
        let c = parse("\"experimental\" = {\n  \"api_server\" = {\n    \"cache\" = {\n      \"enabled\" = true\n    }\n  }\n}\n").unwrap();
        let want = vec![(
            "experimental".to_string(),
            Value::Object(vec![(
                "api_server".into(),
                Value::Object(vec![(
                    "cache".into(),
                    Value::Object(vec![("enabled".into(), Value::Bool(true))]),
                )]),
            )]),
        )];
        assert_eq!(a, want);
        assert_eq!(b, want);
        assert_eq!(c, want);
    }

    #[test]
    fn labelled_blocks_nest() {
        assert_eq!(
            parse("a \"b\" { c = 1 }").unwrap(),
            vec![(
                "a".into(),
                Value::Object(vec![(
                    "b".into(),
                    Value::Object(vec![("c".into(), n("1"))])
                )])
            )]
        );
    }

    #[test]
    fn lists_numbers_bools_and_commas() {
        assert_eq!(
            parse("l = [1, -2.5, \"x\", true, false, [], {a = 1},]\nx = 1, y = 0x1F").unwrap(),
            vec![
                (
                    "l".into(),
                    Value::List(vec![
                        n("1"),
                        n("-2.5"),
                        s("x"),
                        Value::Bool(true),
                        Value::Bool(false),
                        Value::List(vec![]),
                        Value::Object(vec![("a".into(), n("1"))]),
                    ])
                ),
                ("x".into(), n("1")),
                ("y".into(), n("0x1F")),
            ]
        );
    }

    #[test]
    fn string_escapes() {
        let text = r#"a = "q\"b\\s\n\t\u00e9\x41\101\U0001F600""#;
        assert_eq!(
            parse(text).unwrap(),
            vec![("a".into(), s("q\"b\\s\n\té\u{41}A😀"))]
        );
        assert!(parse(r#"a = "\q""#).is_err());
        assert!(parse(r#"a = "\u12""#).is_err());
    }

    #[test]
    fn comments() {
        let text =
            "# hash\n// slash\n/* block\n comment */ a = 1 # trailing\nb = \"#not a comment\"";
        assert_eq!(
            parse(text).unwrap(),
            vec![("a".into(), n("1")), ("b".into(), s("#not a comment"))]
        );
        assert!(parse("/* open").is_err());
    }

    #[test]
    fn heredocs() {
        assert_eq!(
            parse("a = <<EOF\nline 1\n  line 2\nEOF\nb = 1").unwrap(),
            vec![("a".into(), s("line 1\n  line 2\n")), ("b".into(), n("1"))]
        );
        assert_eq!(
            parse("a = <<-EOT\n    x\n      y\n    EOT\n").unwrap(),
            vec![("a".into(), s("x\n  y\n"))]
        );
        assert!(parse("a = <<EOF\nno end\n").is_err());
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a = 1\nb = \n").unwrap_err();
        assert_eq!((err.line, err.col), (3, 1), "{err}");
        let err = parse("a = bare").unwrap_err();
        assert_eq!(
            err.to_string(),
            "1:5: unexpected \"bare\": strings must be quoted"
        );
        assert!(parse("a = \"open").is_err());
        assert!(parse("a { b = 1").is_err());
        assert!(parse("a b = 1").is_err());
        assert!(parse("= 1").is_err());
        assert!(parse("a = [1 2]").is_err());
        assert!(parse("a = 1x").is_err());
        assert!(parse(&"a = [".repeat(100)).is_err());
    }

    #[test]
    fn json_objects() {
        assert_eq!(
            parse_json_object(r#"{"a": 1, "b": {"c": [true, null, "x"]}}"#),
            Some(vec![
                ("a".into(), n("1")),
                (
                    "b".into(),
                    Value::Object(vec![(
                        "c".into(),
                        Value::List(vec![Value::Bool(true), Value::Null, s("x")])
                    )])
                ),
            ])
        );
        assert_eq!(parse_json_object("a = 1"), None);
        assert_eq!(parse_json_object("[1]"), None);
    }

    #[test]
    fn go_ints() {
        assert_eq!(parse_go_int("10250"), Some(10250));
        assert_eq!(parse_go_int("-5"), Some(-5));
        assert_eq!(parse_go_int("0x10"), Some(16));
        assert_eq!(parse_go_int("010"), Some(8));
        assert_eq!(parse_go_int("0b1_0"), Some(2));
        assert_eq!(parse_go_int("1_0"), None);
        assert_eq!(parse_go_int("1.5"), None);
        assert_eq!(parse_go_int(""), None);
        assert_eq!(parse_go_int("99999999999999999999"), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "(.|\n){0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_hcl_like_text(text in "[a-z_\"={}\\[\\],.#/*<>\\\\ \n0-9-]{0,120}") {
            let _ = parse(&text);
        }
    }
}
