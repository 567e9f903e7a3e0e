//! SPIFFE IDs, read exactly as go-spiffe v2.8.1 `spiffeid.FromString` reads them (the
//! version SPIRE v1.15.3 builds with): same checks, same order, same error texts
//! (`spiffeid/id.go` `FromString`, `spiffeid/path.go` `ValidatePath` and
//! `isValidPathSegmentChar`, `spiffeid/trustdomain.go` `isValidTrustDomainChar`,
//! `spiffeid/errors.go`). The `spiffeid_charset_backcompat` build tag is off, as in SPIRE:
//! no sub-delims, `~`, `:`, `@`, `[`, `]`.
//!
//! Used for `experimental.broker.brokers[].id` and for the broker's caller ID.

use std::fmt;

const SCHEME_PREFIX: &str = "spiffe://";

/// Why a string is not a SPIFFE ID; `Display` is go-spiffe's text (`spiffeid/errors.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("cannot be empty")]
    Empty,
    #[error("scheme is missing or invalid")]
    WrongScheme,
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"
    )]
    BadTrustDomainChar,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error(
        "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
    )]
    BadPathSegmentChar,
    #[error("path cannot contain dot segments")]
    DotSegment,
    #[error("path cannot contain empty segments")]
    EmptySegment,
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
}

/// A valid SPIFFE ID (`spiffe://<trust domain><path>`), kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    id: String,
    path_idx: usize,
}

impl SpiffeId {
    /// go-spiffe `spiffeid.FromString`.
    pub fn parse(id: &str) -> Result<SpiffeId, SpiffeIdError> {
        if id.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if !id.starts_with(SCHEME_PREFIX) {
            return Err(SpiffeIdError::WrongScheme);
        }
        let bytes = id.as_bytes();
        let mut path_idx = SCHEME_PREFIX.len();
        while path_idx < bytes.len() {
            let c = bytes[path_idx];
            if c == b'/' {
                break;
            }
            if !is_valid_trust_domain_char(c) {
                return Err(SpiffeIdError::BadTrustDomainChar);
            }
            path_idx += 1;
        }
        if path_idx == SCHEME_PREFIX.len() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        validate_path(&bytes[path_idx..])?;
        Ok(SpiffeId {
            id: id.to_string(),
            path_idx,
        })
    }

    /// The ID as written (go-spiffe `ID.String`).
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// `example.org` in `spiffe://example.org/a`.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME_PREFIX.len()..self.path_idx]
    }

    /// `/a` in `spiffe://example.org/a`; "" when there is no path.
    pub fn path(&self) -> &str {
        &self.id[self.path_idx..]
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

/// go-spiffe `ValidatePath` for what follows the trust domain: "" or a `/`-led path.
/// (Its "path must have a leading slash" cannot happen here, so it is not a variant.)
fn validate_path(path: &[u8]) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let mut segment_start = 0;
    for (end, &c) in path.iter().enumerate() {
        if c == b'/' {
            match &path[segment_start..end] {
                b"/" => return Err(SpiffeIdError::EmptySegment),
                b"/." | b"/.." => return Err(SpiffeIdError::DotSegment),
                _ => {}
            }
            segment_start = end;
            continue;
        }
        if !is_valid_path_segment_char(c) {
            return Err(SpiffeIdError::BadPathSegmentChar);
        }
    }
    match &path[segment_start..] {
        b"/" => Err(SpiffeIdError::TrailingSlash),
        b"/." | b"/.." => Err(SpiffeIdError::DotSegment),
        _ => Ok(()),
    }
}

fn is_valid_trust_domain_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.' | b'_')
}

fn is_valid_path_segment_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        SpiffeId::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn accepts_and_splits() {
        let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/x").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/default/sa/x");
        assert_eq!(id.to_string(), "spiffe://example.org/ns/default/sa/x");
        let id: SpiffeId = "spiffe://trustdomain".parse().unwrap();
        assert_eq!((id.trust_domain(), id.path()), ("trustdomain", ""));
        for ok in [
            "spiffe://trustdomain/.path",
            "spiffe://trustdomain/..path",
            "spiffe://trustdomain/...",
            "spiffe://a-b_c.d9/A-Z_a.z0-9",
        ] {
            assert_eq!(SpiffeId::parse(ok).unwrap().as_str(), ok);
        }
    }

    // go-spiffe v2.8.1 spiffeid/id_test.go TestFromString.
    #[test]
    fn go_spiffe_from_string_errors() {
        let td = "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores";
        let path = "path segment characters are limited to letters, numbers, dots, dashes, and underscores";
        for (input, want) in [
            ("", "cannot be empty"),
            ("s", "scheme is missing or invalid"),
            ("spiffe:/", "scheme is missing or invalid"),
            ("Spiffe://", "scheme is missing or invalid"),
            ("not-a-spiffe-id", "scheme is missing or invalid"),
            ("spiffe://", "trust domain is missing"),
            ("spiffe:///", "trust domain is missing"),
            ("spiffe://trustdomain/", "path cannot have a trailing slash"),
            (
                "spiffe://trustdomain//",
                "path cannot contain empty segments",
            ),
            (
                "spiffe://trustdomain//path",
                "path cannot contain empty segments",
            ),
            (
                "spiffe://trustdomain/path/",
                "path cannot have a trailing slash",
            ),
            ("spiffe://trustdomain/.", "path cannot contain dot segments"),
            (
                "spiffe://trustdomain/./path",
                "path cannot contain dot segments",
            ),
            (
                "spiffe://trustdomain/path/./other",
                "path cannot contain dot segments",
            ),
            (
                "spiffe://trustdomain/path/..",
                "path cannot contain dot segments",
            ),
            (
                "spiffe://trustdomain/..",
                "path cannot contain dot segments",
            ),
            (
                "spiffe://trustdomain/../path",
                "path cannot contain dot segments",
            ),
            (
                "spiffe://trustdomain/path/../other",
                "path cannot contain dot segments",
            ),
            ("spiffe://%F0%9F%A4%AF/path", td),
            ("spiffe://trustdomain/%F0%9F%A4%AF", path),
            ("spiffe://%62%61%64/path", td),
            ("spiffe://trustdomain/%62%61%64", path),
            ("spiffe://Example.org/a", td),
            ("spiffe://example.org:443/a", td),
            ("spiffe://user@example.org", td),
            ("spiffe://example.org/a?b", path),
            ("spiffe://example.org/a~b", path),
        ] {
            assert_eq!(err(input), want, "{input:?}");
        }
    }

    // As go-spiffe's loop over 0..256 (`string(rune(i))`, so UTF-8 above 127).
    #[test]
    fn every_char_in_trust_domain_and_path() {
        for i in 0u32..256 {
            let Some(ch) = char::from_u32(i) else {
                continue;
            };
            if ch == '/' {
                continue;
            }
            let td_ok = ch.is_ascii_lowercase() || ch.is_ascii_digit() || "-._".contains(ch);
            let r = SpiffeId::parse(&format!("spiffe://trustdomain{ch}/path"));
            assert_eq!(r.is_ok(), td_ok, "{i:#x}");
            if !td_ok {
                assert_eq!(r.unwrap_err(), SpiffeIdError::BadTrustDomainChar);
            }
            let path_ok = ch.is_ascii_alphanumeric() || "-._".contains(ch);
            let r = SpiffeId::parse(&format!("spiffe://trustdomain/path{ch}"));
            assert_eq!(r.is_ok(), path_ok, "{i:#x}");
            if !path_ok {
                assert_eq!(r.unwrap_err(), SpiffeIdError::BadPathSegmentChar);
            }
        }
    }
}
