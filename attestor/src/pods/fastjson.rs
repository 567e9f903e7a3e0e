//! What SPIRE's JSON parser says about a pod-list body our scanner refused.
//!
//! SPIRE v1.15.3 (`podlistfetcher.go`, `podListFetcher.parsePodList`) parses the whole
//! `/pods` body with `github.com/valyala/fastjson` (`Parser.ParseBytes`) before it looks at
//! the shape, and reports a syntax error as "unable to parse kubelet response: " followed by
//! fastjson's own text, e.g. `cannot parse JSON: cannot parse array: unexpected end of
//! array; unparsed tail: ""`. Operators match on those texts, so when a list is refused we
//! re-run fastjson's grammar here to give the same words, then classify the shape the way
//! SPIRE does (top-level object? first `items` an array or `null`?).
//!
//! This is a port of fastjson's `Parser.Parse` and the functions it calls (`parseValue`,
//! `parseArray`, `parseObject`, `parseRawString`, `parseRawKey`, `parseRawNumber`,
//! `startEndString`; `parser.go`/`util.go`), checked against the Go code: the texts in the
//! tests below were produced by fastjson itself. It is only run on a body that is already
//! known to be refused, so it favours being literal over being fast. fastjson is laxer than
//! RFC 8259 (no escape or UTF-8 checks in strings, `NaN`/`inf`, numbers such as `1e`); that
//! laxness is ported too, since it decides which bodies SPIRE accepts.
//!
//! Two deliberate differences: Go's `%q` is rendered exactly for ASCII and approximately for
//! non-ASCII characters Go would escape (see [`go_quote`]); and the "unexpected value found"
//! text, which in Go quotes the *whole* rest of the body, is cut at [`MAX_QUOTED`] bytes so
//! that a large body cannot make a megabyte-sized gRPC status.

use std::fmt::Write as _;

/// fastjson's `MaxDepth`: every value, scalars included, counts one level.
const MAX_DEPTH: usize = 300;
/// fastjson's `maxStartEndStringLen` (the "unparsed tail" excerpt).
const MAX_START_END: usize = 80;
/// Longest input quoted in "unexpected value found" (Go: unbounded).
pub(crate) const MAX_QUOTED: usize = 1024;

/// JSON value kinds, as fastjson's `Value.Type` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Object,
    Array,
    String,
    Number,
    True,
    False,
    Null,
}

impl Kind {
    /// With an article, for messages ("got an array").
    pub(crate) fn described(self) -> &'static str {
        match self {
            Kind::Object => "an object",
            Kind::Array => "an array",
            Kind::String => "a string",
            Kind::Number => "a number",
            Kind::True | Kind::False => "a boolean",
            Kind::Null => "null",
        }
    }
}

/// The top-level value of a body fastjson accepts, as far as SPIRE's checks look at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Top {
    pub kind: Kind,
    /// For an object: the kind of the value `Object.Get("items")` returns (`None`: no such
    /// key).
    pub items: Option<Kind>,
}

/// fastjson's verdict on `body`: `Err` holds the text of its `Parse` error, word for word.
pub(crate) fn parse(body: &[u8]) -> Result<Top, String> {
    let s = skip_ws(body);
    match parse_value(s, 0) {
        Err((e, tail)) => Err(format!(
            "cannot parse JSON: {e}; unparsed tail: {}",
            go_quote(&start_end(tail))
        )),
        Ok((top, tail)) => {
            let tail = skip_ws(tail);
            if tail.is_empty() {
                Ok(top)
            } else {
                Err(format!("unexpected tail: {}", go_quote(&start_end(tail))))
            }
        }
    }
}

/// An error text and the unparsed tail it leaves, as fastjson's functions return them.
type Fail<'a> = (String, &'a [u8]);
type Parsed<'a, T> = Result<(T, &'a [u8]), Fail<'a>>;

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .position(|c| !matches!(c, b' ' | b'\n' | b'\t' | b'\r'))
        .unwrap_or(s.len());
    &s[n..]
}

fn parse_value(s: &[u8], depth: usize) -> Parsed<'_, Top> {
    let scalar = |kind| Top { kind, items: None };
    let Some(&first) = s.first() else {
        return Err(("cannot parse empty string".to_string(), s));
    };
    let depth = depth + 1;
    if depth > MAX_DEPTH {
        return Err((
            format!("too big depth for the nested JSON; it exceeds {MAX_DEPTH}"),
            s,
        ));
    }
    let unexpected = || {
        Err((
            format!(
                "unexpected value found: {}",
                go_quote(&s[..s.len().min(MAX_QUOTED)])
            ),
            s,
        ))
    };
    match first {
        b'{' => parse_object(&s[1..], depth)
            .map(|(items, tail)| {
                (
                    Top {
                        kind: Kind::Object,
                        items,
                    },
                    tail,
                )
            })
            .map_err(|(e, tail)| (format!("cannot parse object: {e}"), tail)),
        b'[' => parse_array(&s[1..], depth)
            .map(|tail| (scalar(Kind::Array), tail))
            .map_err(|(e, tail)| (format!("cannot parse array: {e}"), tail)),
        b'"' => parse_raw_string(&s[1..])
            .map(|(_, tail)| (scalar(Kind::String), tail))
            .map_err(|(e, tail)| (format!("cannot parse string: {e}"), tail)),
        b't' if s.starts_with(b"true") => Ok((scalar(Kind::True), &s[4..])),
        b'f' if s.starts_with(b"false") => Ok((scalar(Kind::False), &s[5..])),
        b'n' if s.starts_with(b"null") => Ok((scalar(Kind::Null), &s[4..])),
        b'n' if s.len() >= 3 && s[..3].eq_ignore_ascii_case(b"nan") => {
            Ok((scalar(Kind::Number), &s[3..]))
        }
        b't' | b'f' | b'n' => unexpected(),
        _ => parse_raw_number(s)
            .map(|tail| (scalar(Kind::Number), tail))
            .map_err(|(e, tail)| (format!("cannot parse number: {e}"), tail)),
    }
}

fn parse_array(s: &[u8], depth: usize) -> Result<&[u8], Fail<'_>> {
    let mut s = skip_ws(s);
    match s.first() {
        None => return Err(("missing ']'".to_string(), s)),
        Some(b']') => return Ok(&s[1..]),
        Some(_) => {}
    }
    loop {
        let (_, tail) = parse_value(skip_ws(s), depth)
            .map_err(|(e, tail)| (format!("cannot parse array value: {e}"), tail))?;
        s = skip_ws(tail);
        match s.first() {
            None => return Err(("unexpected end of array".to_string(), s)),
            Some(b',') => s = &s[1..],
            Some(b']') => return Ok(&s[1..]),
            Some(_) => return Err(("missing ',' after array value".to_string(), s)),
        }
    }
}

/// Also returns the kind of the first value whose key is `items`, as `Object.Get` finds it:
/// first by the raw key bytes, then (only if that fails) by the unescaped keys.
fn parse_object(s: &[u8], depth: usize) -> Parsed<'_, Option<Kind>> {
    let mut s = skip_ws(s);
    match s.first() {
        None => return Err(("missing '}'".to_string(), s)),
        Some(b'}') => return Ok((None, &s[1..])),
        Some(_) => {}
    }
    let mut raw_items = None;
    let mut unescaped_items = None;
    loop {
        s = skip_ws(s);
        if s.first() != Some(&b'"') {
            return Err((r#"cannot find opening '"" for object key"#.to_string(), s));
        }
        let (key, tail) = parse_raw_key(&s[1..])
            .map_err(|(e, tail)| (format!("cannot parse object key: {e}"), tail))?;
        s = skip_ws(tail);
        if s.first() != Some(&b':') {
            return Err(("missing ':' after object key".to_string(), s));
        }
        let (value, tail) = parse_value(skip_ws(&s[1..]), depth)
            .map_err(|(e, tail)| (format!("cannot parse object value: {e}"), tail))?;
        if key == b"items" {
            raw_items.get_or_insert(value.kind);
        } else if key.contains(&b'\\') && unescapes_to_items(key) {
            unescaped_items.get_or_insert(value.kind);
        }
        s = skip_ws(tail);
        match s.first() {
            None => return Err(("unexpected end of object".to_string(), s)),
            Some(b',') => s = &s[1..],
            Some(b'}') => return Ok((raw_items.or(unescaped_items), &s[1..])),
            Some(_) => return Err(("missing ',' after object value".to_string(), s)),
        }
    }
}

/// Whether an escaped key means `items` (fastjson unescapes best-effort; a key that is not
/// a valid JSON string cannot spell `items` anyway).
fn unescapes_to_items(raw: &[u8]) -> bool {
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k == "items")
}

fn parse_raw_key(s: &[u8]) -> Parsed<'_, &[u8]> {
    for (i, &c) in s.iter().enumerate() {
        if c == b'"' {
            return Ok((&s[..i], &s[i + 1..]));
        }
        if c == b'\\' {
            return parse_raw_string(s);
        }
    }
    Err((r#"missing closing '"'"#.to_string(), b""))
}

/// A string's raw contents up to the first `"` preceded by an even number of backslashes
/// (fastjson checks nothing else in strings).
fn parse_raw_string(s: &[u8]) -> Parsed<'_, &[u8]> {
    let missing = || Err((r#"missing closing '"'"#.to_string(), &b""[..]));
    let mut from = 0;
    loop {
        let Some(n) = s[from..].iter().position(|&c| c == b'"').map(|n| from + n) else {
            return missing();
        };
        let backslashes = s[from..n].iter().rev().take_while(|&&c| c == b'\\').count();
        if backslashes % 2 == 0 {
            return Ok((&s[..n], &s[n + 1..]));
        }
        from = n + 1;
    }
}

fn parse_raw_number(s: &[u8]) -> Result<&[u8], Fail<'_>> {
    for (i, &c) in s.iter().enumerate() {
        if c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'e' | b'E' | b'+') {
            continue;
        }
        if i == 0 || (i == 1 && matches!(s[0], b'-' | b'+')) {
            if let Some(word) = s.get(i..i + 3)
                && (word.eq_ignore_ascii_case(b"inf") || word.eq_ignore_ascii_case(b"nan"))
            {
                return Ok(&s[i + 3..]);
            }
            return Err((format!("unexpected char: {}", go_quote(&s[..1])), s));
        }
        return Ok(&s[i..]);
    }
    Ok(b"")
}

/// fastjson's `startEndString`: short tails whole, long ones as 40 bytes, `...`, 40 bytes
/// (bytes, not characters, as in Go).
fn start_end(s: &[u8]) -> Vec<u8> {
    if s.len() <= MAX_START_END {
        return s.to_vec();
    }
    let mut out = s[..40].to_vec();
    out.extend_from_slice(b"...");
    out.extend_from_slice(&s[s.len() - 40..]);
    out
}

/// Go's `%q` of a byte string (`strconv.Quote`). Exact for ASCII and for invalid UTF-8
/// (`\x..`); for other characters Go's `IsPrint` table is approximated: control, format and
/// non-space whitespace characters are escaped as `\u`/`\U`, everything else kept.
pub(crate) fn go_quote(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() + 2);
    out.push('"');
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{b}' => out.push_str("\\v"),
                ' '..='~' => out.push(c),
                c if (c as u32) < 0x80 => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if go_prints(c) => out.push(c),
                c if (c as u32) < 0x1_0000 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out.push('"');
    out
}

/// Approximates Go's `strconv.IsPrint` for non-ASCII characters.
fn go_prints(c: char) -> bool {
    let format = matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}');
    !(c.is_control() || c.is_whitespace() || format)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (body, fastjson's `Parse` error) — the texts were produced by running fastjson
    /// (the newest version in the local snapshot of valyala/fastjson) on these bodies.
    const FASTJSON: &[(&str, &str)] = &[
        (
            "not json",
            r#"cannot parse JSON: unexpected value found: "not json"; unparsed tail: "not json""#,
        ),
        (
            "<html>",
            r#"cannot parse JSON: cannot parse number: unexpected char: "<"; unparsed tail: "<html>""#,
        ),
        (
            "",
            r#"cannot parse JSON: cannot parse empty string; unparsed tail: """#,
        ),
        (
            r#"{"items":[{"a":1}"#,
            r#"cannot parse JSON: cannot parse object: cannot parse object value: cannot parse array: unexpected end of array; unparsed tail: """#,
        ),
        (
            r#"{"items": [ this is <html> not json"#,
            r#"cannot parse JSON: cannot parse object: cannot parse object value: cannot parse array: cannot parse array value: unexpected value found: "this is <html> not json"; unparsed tail: "this is <html> not json""#,
        ),
    ];

    #[test]
    fn error_texts_are_fastjsons() {
        for (body, want) in FASTJSON {
            assert_eq!(parse(body.as_bytes()), Err(want.to_string()), "{body:?}");
        }
    }

    #[test]
    fn shapes() {
        let top = |kind, items| Ok(Top { kind, items });
        assert_eq!(parse(b" [] "), top(Kind::Array, None));
        assert_eq!(parse(b"{}"), top(Kind::Object, None));
        assert_eq!(
            parse(br#"{"items":5}"#),
            top(Kind::Object, Some(Kind::Number))
        );
        // The first `items` wins, as with `Object.Get`; raw keys before unescaped ones.
        assert_eq!(
            parse(br#"{"items":null,"items":[]}"#),
            top(Kind::Object, Some(Kind::Null))
        );
        assert_eq!(
            parse(br#"{"it\u0065ms":5,"items":[]}"#),
            top(Kind::Object, Some(Kind::Array))
        );
        assert_eq!(
            parse(br#"{"it\u0065ms":"x"}"#),
            top(Kind::Object, Some(Kind::String))
        );
        // fastjson's laxness: NaN, inf, sloppy numbers, raw control bytes in strings.
        assert_eq!(parse(b"[NaN,-inf,1e,\"\x01\"]"), top(Kind::Array, None));
    }

    #[test]
    fn tails_and_depth() {
        assert_eq!(parse(b"{} x"), Err(r#"unexpected tail: "x""#.to_string()));
        let long = format!("[1]{}", "y".repeat(100));
        let want = format!(
            "unexpected tail: \"{}...{}\"",
            "y".repeat(40),
            "y".repeat(40)
        );
        assert_eq!(parse(long.as_bytes()), Err(want));
        let ok = "[".repeat(MAX_DEPTH - 1) + "1" + &"]".repeat(MAX_DEPTH - 1);
        assert!(parse(ok.as_bytes()).is_ok());
        let deep = "[".repeat(MAX_DEPTH) + "1" + &"]".repeat(MAX_DEPTH);
        let err = parse(deep.as_bytes()).unwrap_err();
        assert!(
            err.contains("too big depth for the nested JSON; it exceeds 300"),
            "{err}"
        );
    }

    #[test]
    fn escaped_quotes_in_strings() {
        assert_eq!(
            parse(br#"["a\"b\\"]"#),
            Ok(Top {
                kind: Kind::Array,
                items: None
            })
        );
        assert_eq!(
            parse(br#"["a\\\"]"#),
            Err(r#"cannot parse JSON: cannot parse array: cannot parse array value: cannot parse string: missing closing '"'; unparsed tail: """#.to_string())
        );
    }

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote(b"a\"\\\n\x01\x7f"), r#""a\"\\\n\x01\x7f""#);
        assert_eq!(go_quote("é\u{a0}".as_bytes()), "\"é\\u00a0\"");
        assert_eq!(go_quote(b"\xff"), r#""\xff""#);
    }

    #[test]
    fn long_unexpected_values_are_cut() {
        let body = format!("nope{}", "z".repeat(5000));
        let err = parse(body.as_bytes()).unwrap_err();
        assert!(err.len() < MAX_QUOTED + 200, "{} bytes", err.len());
    }
}
