//! A small pull scanner over JSON bytes: walk objects and arrays, read the few strings the
//! search needs, and skip everything else without allocating.
//!
//! Why not `serde_json` for the whole list: a kubelet `/pods` body is ~10 KB per pod and the
//! search needs ~3 strings per container from it. Skipping with serde (`IgnoredAny`,
//! `RawValue`) still runs its full tokenizer. This scanner checks the full grammar (RFC 8259)
//! on the levels the search walks (the list, each pod, `metadata`, `status`, the status
//! entries) and only strings and bracket nesting inside the subtrees it skips
//! ([`Scanner::skip`]); it finds the end of strings eight bytes at a time. The one matched pod
//! is then decoded by `serde_json`, which checks everything in it (UTF-8 included).

use std::borrow::Cow;

/// Deeper nesting than this is refused rather than risking the stack on hostile input
/// (pods nest ~10 levels; serde_json's own limit is 128).
const MAX_DEPTH: usize = 128;

/// A syntax error with the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanError {
    pub offset: usize,
    pub what: &'static str,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.offset)
    }
}

pub(crate) type ScanResult<T> = Result<T, ScanError>;

pub(crate) struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Scanner<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Scanner {
            b,
            pos: 0,
            depth: 0,
        }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    fn err<T>(&self, what: &'static str) -> ScanResult<T> {
        Err(ScanError {
            offset: self.pos,
            what,
        })
    }

    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// Next non-whitespace byte, not consumed.
    pub fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8, what: &'static str) -> ScanResult<()> {
        match self.peek() {
            Some(found) if found == c => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => self.err(what),
            None => self.err("unexpected end of input"),
        }
    }

    /// Consumes `null` if it is next; true if it did.
    pub fn null(&mut self) -> ScanResult<bool> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Only whitespace may follow the top-level value.
    pub fn end(&mut self) -> ScanResult<()> {
        if self.peek().is_some() {
            return self.err("trailing characters after the JSON value");
        }
        Ok(())
    }

    /// Walks an object, calling `field(key, scanner)` with the scanner positioned at each
    /// value; `field` must consume exactly that value (read it or [`Scanner::skip`] it).
    pub fn object(
        &mut self,
        mut field: impl FnMut(&str, &mut Scanner<'a>) -> ScanResult<()>,
    ) -> ScanResult<()> {
        self.expect(b'{', "expected an object")?;
        self.enter()?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return self.err("expected a string key");
            }
            let key = self.string()?;
            self.expect(b':', "expected ':' after an object key")?;
            self.ws();
            field(&key, self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return self.err("expected ',' or '}' in an object"),
            }
        }
    }

    /// Walks an array, calling `elem(index, scanner)` at each element (which it must consume).
    pub fn array(
        &mut self,
        mut elem: impl FnMut(usize, &mut Scanner<'a>) -> ScanResult<()>,
    ) -> ScanResult<()> {
        self.expect(b'[', "expected an array")?;
        self.enter()?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        let mut i = 0;
        loop {
            self.ws();
            elem(i, self)?;
            i += 1;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return self.err("expected ',' or ']' in an array"),
            }
        }
    }

    fn enter(&mut self) -> ScanResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err("JSON nested too deeply");
        }
        Ok(())
    }

    /// Reads a string value; borrowed unless it contains escapes.
    pub fn string(&mut self) -> ScanResult<Cow<'a, str>> {
        self.ws();
        let start = self.pos;
        let has_escape = self.skip_string()?;
        let raw = &self.b[start..self.pos];
        if has_escape {
            // Rare in kubelet output: let serde_json do the unescaping.
            match serde_json::from_slice::<String>(raw) {
                Ok(s) => Ok(Cow::Owned(s)),
                Err(_) => Err(ScanError {
                    offset: start,
                    what: "invalid string",
                }),
            }
        } else {
            match std::str::from_utf8(&raw[1..raw.len() - 1]) {
                Ok(s) => Ok(Cow::Borrowed(s)),
                Err(_) => Err(ScanError {
                    offset: start,
                    what: "string is not valid UTF-8",
                }),
            }
        }
    }

    /// Skips one value of any kind.
    pub fn skip(&mut self) -> ScanResult<()> {
        match self.peek() {
            Some(b'"') => self.skip_string().map(drop),
            Some(b'{' | b'[') => self.skip_container(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.err("expected a JSON value"),
            None => self.err("unexpected end of input"),
        }
    }

    /// Skips an object or array the search does not look into (a pod's `spec`, annotations,
    /// container `state`…), which is most of the body. Checked: strings (terminated, valid
    /// escapes, no control characters), bracket nesting and that only JSON characters occur
    /// between strings; not checked: where commas and colons go and number/literal spelling
    /// (the pod that yields selectors is fully checked by serde_json, and the levels the search
    /// walks are checked by `object`/`array`). This is what makes the search ~2× faster.
    fn skip_container(&mut self) -> ScanResult<()> {
        // Hot loop: work on locals, one bit per open bracket (1 = object) instead of a stack.
        let b = self.b;
        let mut i = self.pos;
        let mut objects: u128 = 0;
        let mut depth = 0usize;
        let fail = |offset: usize, what: &'static str| Err(ScanError { offset, what });
        loop {
            let Some(&c) = b.get(i) else {
                return fail(i, "unexpected end of input");
            };
            match CLASS[usize::from(c)] {
                BORING => i += 1,
                QUOTE => match string_end(b, i + 1) {
                    Ok((end, _)) => i = end,
                    Err(e) => return Err(e),
                },
                OPEN => {
                    if self.depth + depth >= MAX_DEPTH {
                        return fail(i, "JSON nested too deeply");
                    }
                    objects = (objects << 1) | u128::from(c == b'{');
                    depth += 1;
                    i += 1;
                }
                CLOSE => {
                    let is_object = objects & 1 == 1;
                    if depth == 0 || is_object != (c == b'}') {
                        return fail(i, "mismatched bracket");
                    }
                    objects >>= 1;
                    depth -= 1;
                    i += 1;
                    if depth == 0 {
                        self.pos = i;
                        return Ok(());
                    }
                }
                _ => return fail(i, "unexpected character"),
            }
        }
    }

    fn literal(&mut self, lit: &'static [u8]) -> ScanResult<()> {
        if self.b[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            Ok(())
        } else {
            self.err("invalid literal")
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.b.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> ScanResult<()> {
        if self.b.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.b.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("invalid number"),
        }
        if self.b.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.err("invalid number");
            }
        }
        if matches!(self.b.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.b.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.err("invalid number");
            }
        }
        Ok(())
    }

    /// Skips a string starting at `"`; returns whether it had escapes.
    fn skip_string(&mut self) -> ScanResult<bool> {
        if self.b.get(self.pos) != Some(&b'"') {
            return self.err("expected a string");
        }
        let (end, escaped) = string_end(self.b, self.pos + 1)?;
        self.pos = end;
        Ok(escaped)
    }
}

/// Given the index just after an opening `"`, the index just after the closing one and
/// whether the string had escapes.
#[inline]
fn string_end(b: &[u8], mut i: usize) -> ScanResult<(usize, bool)> {
    let fail = |offset: usize, what: &'static str| Err(ScanError { offset, what });
    let mut escaped = false;
    loop {
        i = find_special(b, i);
        match b.get(i) {
            None => return fail(i, "unterminated string"),
            Some(b'"') => return Ok((i + 1, escaped)),
            Some(b'\\') => {
                escaped = true;
                match b.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                    Some(b'u') => {
                        let hex = b.get(i + 2..i + 6);
                        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                            return fail(i, "invalid \\u escape in string");
                        }
                        i += 6;
                    }
                    _ => return fail(i, "invalid escape in string"),
                }
            }
            Some(_) => return fail(i, "control character in string"),
        }
    }
}

const INVALID: u8 = 0;
const BORING: u8 = 1;
const QUOTE: u8 = 2;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;

/// Byte classes for [`Scanner::skip_container`]: what may appear between strings.
static CLASS: [u8; 256] = {
    let mut t = [INVALID; 256];
    let boring = b" \t\r\n,:-+.0123456789eEtrufalsn";
    let mut i = 0;
    while i < boring.len() {
        t[boring[i] as usize] = BORING;
        i += 1;
    }
    t[b'"' as usize] = QUOTE;
    t[b'{' as usize] = OPEN;
    t[b'[' as usize] = OPEN;
    t[b'}' as usize] = CLOSE;
    t[b']' as usize] = CLOSE;
    t
};

/// Index of the first byte at or after `from` that is `"`, `\` or a control character
/// (< 0x20), or `b.len()`. Eight bytes at a time with the classic "has zero byte" bit tricks.
#[inline]
fn find_special(b: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let quote = x ^ (LO * u64::from(b'"'));
        let backslash = x ^ (LO * u64::from(b'\\'));
        // A byte is zero in `quote`/`backslash`, or below 0x20 in `x`, iff the subtraction
        // borrows into its high bit while the byte's own high bit is clear.
        let hits = (quote.wrapping_sub(LO) & !quote)
            | (backslash.wrapping_sub(LO) & !backslash)
            | (x.wrapping_sub(LO * 0x20) & !x);
        let hits = hits & HI;
        if hits != 0 {
            // Borrows only propagate upwards from a real hit, so the lowest flagged byte is
            // the first special one.
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip_all(s: &str) -> ScanResult<()> {
        let mut sc = Scanner::new(s.as_bytes());
        sc.skip()?;
        sc.end()
    }

    #[test]
    fn accepts_valid_json() {
        for ok in [
            "{}",
            "[]",
            r#"{"a":[1,-2.5e+3,0,true,false,null,"x\"\\\u00e9"],"b":{"c":{}}}"#,
            " [ 1 , 2 ] ",
            "\"a long string with no escapes at all, longer than eight bytes\"",
        ] {
            assert_eq!(skip_all(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_invalid_json() {
        for bad in [
            "{",
            "[",
            "[}",
            "{]",
            "[[]",
            "]",
            "01",
            "1.",
            "-",
            "tru",
            "\"abc",
            "\"a\\x\"",
            "\"a\u{1}b\"",
            "[\"a\u{1}\"]",
            "[\"\\q\"]",
            "{} x",
            "\"\\u12\"",
            "[x]",
            "{\"a\":'b'}",
        ] {
            assert!(skip_all(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn walked_levels_check_the_grammar() {
        // Skipped containers only check strings and brackets, but objects and arrays the
        // search walks check commas, colons and keys.
        for bad in ["{\"a\" 1}", "{\"a\":1,}", "{1:2}", "{\"a\":1 \"b\":2}"] {
            let mut sc = Scanner::new(bad.as_bytes());
            assert!(sc.object(|_, s| s.skip()).is_err(), "{bad:?} accepted");
        }
        for bad in ["[1,]", "[1 2]", "[,1]"] {
            let mut sc = Scanner::new(bad.as_bytes());
            assert!(sc.array(|_, s| s.skip()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn depth_is_limited() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(skip_all(&deep).unwrap_err().what, "JSON nested too deeply");
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert_eq!(skip_all(&ok), Ok(()));
    }

    #[test]
    fn find_special_matches_bytewise_search() {
        let text = b"abcdefghijklmnop\"qrstuvwx\\yz\x01 \xff\xfe";
        for from in 0..text.len() {
            let want = text[from..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .map_or(text.len(), |p| p + from);
            assert_eq!(find_special(text, from), want, "from {from}");
        }
    }

    #[test]
    fn strings_are_borrowed_or_unescaped() {
        let mut sc = Scanner::new(br#""plain""#);
        assert!(matches!(sc.string(), Ok(Cow::Borrowed("plain"))));
        let mut sc = Scanner::new(br#""a\nb\u0041""#);
        assert_eq!(sc.string().unwrap(), "a\nbA");
    }

    proptest::proptest! {
        #[test]
        fn accepts_whatever_serde_json_accepts(s in "[\\[\\]{}\",:0-9a-z\\\\. -]{0,40}") {
            if serde_json::from_str::<serde_json::Value>(&s).is_ok() {
                proptest::prop_assert!(skip_all(&s).is_ok(), "{:?}", s);
            }
        }

        #[test]
        fn walking_agrees_with_serde_json(s in "[\\[\\]{}\",:0-9a-z\\\\. -]{0,40}") {
            // Walking every level (no container skipped) is the full JSON grammar.
            fn walk(sc: &mut Scanner<'_>) -> ScanResult<()> {
                match sc.peek() {
                    Some(b'{') => sc.object(|_, s| walk(s)),
                    Some(b'[') => sc.array(|_, s| walk(s)),
                    _ => sc.skip(),
                }
            }
            let mut sc = Scanner::new(s.as_bytes());
            let ours = walk(&mut sc).and_then(|()| sc.end()).is_ok();
            let serde = serde_json::from_str::<serde_json::Value>(&s).is_ok();
            proptest::prop_assert_eq!(ours, serde, "{:?}", s);
        }
    }
}
