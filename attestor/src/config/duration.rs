//! Go's `time.ParseDuration`, message for message, because SPIRE's config errors embed its
//! text (`unable to parse poll retry interval: time: invalid duration "x"`).

use crate::goquote::go_quote;

const OVERFLOW: u64 = 1 << 63;

/// Parses a Go duration (`500ms`, `1h30m`, `1.5s`, `-2m`, `0`) into signed nanoseconds.
pub fn parse_go_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {}", go_quote(orig));
    let mut s = orig;
    let mut neg = false;
    if let Some(c) = s.chars().next()
        && (c == '-' || c == '+')
    {
        neg = c == '-';
        s = &s[1..];
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let first = s.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        // Integer part.
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let mut v: u64 = 0;
        for c in s[..int_len].bytes() {
            if v > OVERFLOW / 10 {
                return Err(invalid());
            }
            v = v * 10 + u64::from(c - b'0');
            if v > OVERFLOW {
                return Err(invalid());
            }
        }
        let pre = int_len > 0;
        s = &s[int_len..];
        // Fraction: digits past what fits are read but ignored, as Go does.
        let mut f: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut post = false;
        if let Some(rest) = s.strip_prefix('.') {
            s = rest;
            let frac_len = s.bytes().take_while(u8::is_ascii_digit).count();
            let mut overflow = false;
            for c in s[..frac_len].bytes() {
                if overflow {
                    continue;
                }
                if f > (OVERFLOW - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let y = f * 10 + u64::from(c - b'0');
                if y > OVERFLOW {
                    overflow = true;
                    continue;
                }
                f = y;
                scale *= 10.0;
            }
            post = frac_len > 0;
            s = &s[frac_len..];
        }
        if !pre && !post {
            return Err(invalid());
        }
        // Unit: up to the next digit or dot.
        let unit_len = s
            .char_indices()
            .find(|&(_, c)| c == '.' || c.is_ascii_digit())
            .map_or(s.len(), |(i, _)| i);
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", go_quote(orig)));
        }
        let unit_text = &s[..unit_len];
        s = &s[unit_len..];
        let unit: u64 = match unit_text {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    go_quote(unit_text),
                    go_quote(orig)
                ));
            }
        };
        if v > OVERFLOW / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            // Go: v += uint64(float64(f) * (float64(unit) / scale)); truncation intended.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let add = (f as f64 * (unit as f64 / scale)) as u64;
            v = v.saturating_add(add);
            if v > OVERFLOW {
                return Err(invalid());
            }
        }
        total = total.saturating_add(v);
        if total > OVERFLOW {
            return Err(invalid());
        }
    }
    if neg {
        // total ≤ 2^63 here, so the negation fits (i64::MIN for exactly 2^63).
        return Ok((-(i128::from(total))) as i64);
    }
    i64::try_from(total).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;
    const S: i64 = 1_000 * MS;

    #[test]
    fn valid_durations() {
        for (text, want) in [
            ("0", 0),
            ("-0", 0),
            ("500ms", 500 * MS),
            ("1m", 60 * S),
            ("1h30m", 5400 * S),
            ("1.5s", 1500 * MS),
            (".5s", 500 * MS),
            ("1.s", S),
            ("-2m", -120 * S),
            ("+3s", 3 * S),
            ("10us", 10_000),
            ("10µs", 10_000),
            ("10μs", 10_000),
            ("7ns", 7),
            ("1h1m1s1ms", 3661 * S + MS),
            ("2562047h47m16.854775807s", i64::MAX),
            ("-2562047h47m16.854775808s", i64::MIN),
        ] {
            assert_eq!(parse_go_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn invalid_durations_have_go_messages() {
        for (text, want) in [
            ("", r#"time: invalid duration """#),
            ("abc", r#"time: invalid duration "abc""#),
            ("1", r#"time: missing unit in duration "1""#),
            ("1x", r#"time: unknown unit "x" in duration "1x""#),
            ("1s2", r#"time: missing unit in duration "1s2""#),
            (".s", r#"time: invalid duration ".s""#),
            ("-", r#"time: invalid duration "-""#),
            ("1 s", r#"time: unknown unit " s" in duration "1 s""#),
            (
                "2562047h47m16.854775808s",
                r#"time: invalid duration "2562047h47m16.854775808s""#,
            ),
            (
                "9999999999999999999h",
                r#"time: invalid duration "9999999999999999999h""#,
            ),
        ] {
            assert_eq!(parse_go_duration(text), Err(want.to_string()), "{text}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "[0-9.hmsuµnx+ -]{0,30}") {
            let _ = parse_go_duration(&text);
        }
    }
}
