//! Parsers for the request headers and query of the imageio-compatible data
//! API: `Range` (GET), `Content-Range` (PUT) and the `flush=` / `context=`
//! query options.
//!
//! Every input here comes from the network. The parsers accept digits only
//! in numbers (no sign, no `+`), reject values that overflow `u64`, use
//! checked arithmetic throughout and never panic.
//!
//! Whitespace (space and horizontal tab, HTTP's `OWS`) is tolerated around
//! every token: `bytes = 0 - 99` reads like `bytes=0-99`. Units are matched
//! case-insensitively, as RFC 9110 requires.
//!
//! How a [`RangeError`] maps to an HTTP answer is given by
//! [`RangeError::status`]: syntax errors are `400 Bad Request`, well-formed
//! ranges outside the resource and multiple ranges are
//! `416 Range Not Satisfiable`.

use std::fmt;

use http::StatusCode;

use crate::error::{Classify, ErrorKind};

/// Name used in errors about the `Range` header.
const RANGE: &str = "Range";
/// Name used in errors about the `Content-Range` header.
const CONTENT_RANGE: &str = "Content-Range";
/// Name used in errors about the query string.
const QUERY: &str = "query";
/// Longest piece of client input quoted back in an error message.
const QUOTE_MAX: usize = 32;

/// An inclusive byte range `start..=end`.
///
/// The parsers in this module only return ranges with `start <= end` and
/// `end < u64::MAX`, so `end + 1` (the exclusive end) never overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte offset.
    pub start: u64,
    /// Last byte offset, inclusive.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range, `end - start + 1`.
    ///
    /// For a hand-built range with `start > end` this is 0, and for
    /// `0..=u64::MAX` (one more than `u64` holds) it saturates at
    /// `u64::MAX`; the parsers never produce either.
    pub fn len(&self) -> u64 {
        match self.end.checked_sub(self.start) {
            Some(d) => d.saturating_add(1),
            None => 0,
        }
    }

    /// Whether the range holds no byte, which only a hand-built range with
    /// `start > end` does.
    pub fn is_empty(&self) -> bool {
        self.start > self.end
    }
}

/// Why a `Range`, `Content-Range` or query could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// A syntax error (HTTP 400); `reason` says what.
    #[error("invalid {header}: {reason}")]
    Invalid {
        /// `Range`, `Content-Range` or `query`.
        header: &'static str,
        /// What is wrong, quoting at most a short piece of the input.
        reason: String,
    },
    /// A well-formed range that lies outside a resource of `size` bytes
    /// (HTTP 416, with `Content-Range: bytes */size`).
    #[error("range not satisfiable for a resource of {size} bytes")]
    Unsatisfiable {
        /// Size of the resource, for the 416 answer's `Content-Range`.
        size: u64,
    },
    /// A well-formed request the data API does not serve, such as several
    /// ranges in one `Range` header (HTTP 416: the client may retry with a
    /// single range).
    #[error("unsupported {header}: {reason}")]
    Unsupported {
        /// The header concerned.
        header: &'static str,
        /// What is not supported.
        reason: &'static str,
    },
}

impl RangeError {
    /// The HTTP status to answer with: 400 for [`RangeError::Invalid`], 416
    /// for [`RangeError::Unsatisfiable`] and [`RangeError::Unsupported`].
    pub fn status(&self) -> StatusCode {
        match self {
            RangeError::Invalid { .. } => StatusCode::BAD_REQUEST,
            RangeError::Unsatisfiable { .. } | RangeError::Unsupported { .. } => {
                StatusCode::RANGE_NOT_SATISFIABLE
            }
        }
    }

    fn invalid(header: &'static str, reason: impl Into<String>) -> Self {
        RangeError::Invalid {
            header,
            reason: reason.into(),
        }
    }
}

impl Classify for RangeError {
    fn kind(&self) -> ErrorKind {
        match self {
            RangeError::Invalid { .. } | RangeError::Unsatisfiable { .. } => {
                ErrorKind::InvalidArgument
            }
            RangeError::Unsupported { .. } => ErrorKind::Unsupported,
        }
    }
}

/// Strips HTTP optional whitespace (space, horizontal tab) from both ends.
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// A short, escaped rendering of client input for an error message.
fn quote(s: &str) -> String {
    let mut cut = s.len().min(QUOTE_MAX);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut < s.len() {
        format!("{:?}...", &s[..cut])
    } else {
        format!("{s:?}")
    }
}

/// Parses a non-empty run of ASCII digits into a `u64`.
fn parse_num(header: &'static str, what: &str, s: &str) -> Result<u64, RangeError> {
    if s.is_empty() {
        return Err(RangeError::invalid(header, format!("missing {what}")));
    }
    let mut n: u64 = 0;
    for b in s.bytes() {
        if !b.is_ascii_digit() {
            return Err(RangeError::invalid(
                header,
                format!("{what} {} is not a decimal number", quote(s)),
            ));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| {
                RangeError::invalid(header, format!("{what} {} is too large", quote(s)))
            })?;
    }
    Ok(n)
}

/// One `range-spec` of a `Range` header, before it meets the resource size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `a-b`
    FromTo(u64, u64),
    /// `a-`
    From(u64),
    /// `-n`
    Suffix(u64),
}

fn parse_spec(s: &str) -> Result<Spec, RangeError> {
    let (first, last) = s
        .split_once('-')
        .ok_or_else(|| RangeError::invalid(RANGE, format!("expected '-' in range {}", quote(s))))?;
    let (first, last) = (trim_ows(first), trim_ows(last));
    match (first.is_empty(), last.is_empty()) {
        (true, true) => Err(RangeError::invalid(RANGE, "range '-' has no positions")),
        (true, false) => Ok(Spec::Suffix(parse_num(RANGE, "suffix length", last)?)),
        (false, true) => Ok(Spec::From(parse_num(RANGE, "first byte position", first)?)),
        (false, false) => {
            let a = parse_num(RANGE, "first byte position", first)?;
            let b = parse_num(RANGE, "last byte position", last)?;
            if b < a {
                return Err(RangeError::invalid(
                    RANGE,
                    format!("last byte position {b} is before first byte position {a}"),
                ));
            }
            Ok(Spec::FromTo(a, b))
        }
    }
}

/// Parses a `Range` header value (`bytes=a-b`, `bytes=a-` or `bytes=-n`)
/// against a resource of `size` bytes, the way RFC 9110 section 14.1.2
/// resolves it:
///
/// * `a-b` and `a-`: a last position at or beyond the end is clamped to
///   `size - 1`; `a >= size` is [`RangeError::Unsatisfiable`].
/// * `-n`: the last `n` bytes, or the whole resource when `n > size`;
///   `-0` is [`RangeError::Unsatisfiable`].
/// * A resource of 0 bytes satisfies no range: an inclusive range cannot
///   express zero bytes, so every well-formed range is
///   [`RangeError::Unsatisfiable`] there.
///
/// Syntax errors are [`RangeError::Invalid`]: a unit other than `bytes`,
/// `b < a`, a missing or non-decimal number, a number beyond `u64`.
/// Several ranges (`bytes=0-1,5-6`) are [`RangeError::Unsupported`] once
/// each of them parses; empty list elements (`bytes=0-1,`) are skipped.
pub fn parse_range(value: &str, size: u64) -> Result<ByteRange, RangeError> {
    let v = trim_ows(value);
    if v.is_empty() {
        return Err(RangeError::invalid(RANGE, "empty value"));
    }
    let (unit, set) = v.split_once('=').ok_or_else(|| {
        RangeError::invalid(RANGE, format!("expected 'bytes=<range>', got {}", quote(v)))
    })?;
    let unit = trim_ows(unit);
    if !unit.eq_ignore_ascii_case("bytes") {
        return Err(RangeError::invalid(
            RANGE,
            format!("unit {} is not 'bytes'", quote(unit)),
        ));
    }
    let mut first = None;
    let mut count = 0usize;
    for elem in set.split(',').map(trim_ows).filter(|e| !e.is_empty()) {
        let spec = parse_spec(elem)?;
        count = count.saturating_add(1);
        first.get_or_insert(spec);
    }
    let spec = first.ok_or_else(|| RangeError::invalid(RANGE, "no range given"))?;
    if count > 1 {
        return Err(RangeError::Unsupported {
            header: RANGE,
            reason: "multiple ranges in one request",
        });
    }
    resolve(spec, size)
}

/// Resolves a syntactically valid spec against the resource size.
fn resolve(spec: Spec, size: u64) -> Result<ByteRange, RangeError> {
    let unsatisfiable = RangeError::Unsatisfiable { size };
    // Last byte of the resource; none when it is empty.
    let last = size.checked_sub(1).ok_or(unsatisfiable.clone())?;
    match spec {
        Spec::FromTo(a, _) | Spec::From(a) if a >= size => Err(unsatisfiable),
        Spec::FromTo(a, b) => Ok(ByteRange {
            start: a,
            end: b.min(last),
        }),
        Spec::From(a) => Ok(ByteRange {
            start: a,
            end: last,
        }),
        Spec::Suffix(0) => Err(unsatisfiable),
        Spec::Suffix(n) => Ok(ByteRange {
            start: size.saturating_sub(n),
            end: last,
        }),
    }
}

/// A `Content-Range` header of a request: the bytes the body carries and,
/// when the client gave it, the complete length of the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// The bytes of the resource the body carries.
    pub range: ByteRange,
    /// The complete length after `/`; `None` for `*`.
    pub complete: Option<u64>,
}

/// Formats as a header value, `bytes a-b/N` or `bytes a-b/*`, which
/// [`parse_content_range`] reads back to the same value.
impl fmt::Display for ContentRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bytes {}-{}/", self.range.start, self.range.end)?;
        match self.complete {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("*"),
        }
    }
}

/// Parses a request's `Content-Range` header value: `bytes a-b/N` or
/// `bytes a-b/*` (the form ovirt-imageio's client sends on PUT).
///
/// All errors are [`RangeError::Invalid`]: a unit other than `bytes`,
/// `b < a`, `b >= N` when the complete length is given, `b == u64::MAX`
/// (its exclusive end would not fit), and `bytes */N`, a form that only
/// appears in 416 responses.
pub fn parse_content_range(value: &str) -> Result<ContentRange, RangeError> {
    let bad = |reason: String| RangeError::invalid(CONTENT_RANGE, reason);
    let v = trim_ows(value);
    if v.is_empty() {
        return Err(bad("empty value".into()));
    }
    let (unit, rest) = v.split_once([' ', '\t']).ok_or_else(|| {
        bad(format!(
            "expected 'bytes <first>-<last>/<length>', got {}",
            quote(v)
        ))
    })?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return Err(bad(format!("unit {} is not 'bytes'", quote(unit))));
    }
    let (range, complete) = rest
        .split_once('/')
        .ok_or_else(|| bad("missing '/<length>' or '/*'".into()))?;
    let (range, complete) = (trim_ows(range), trim_ows(complete));
    if range == "*" {
        return Err(bad(
            "'*/<length>' is only valid in a 416 response, not in a request".into(),
        ));
    }
    let complete = match complete {
        "*" => None,
        n => Some(parse_num(CONTENT_RANGE, "complete length", n)?),
    };
    let (first, last) = range
        .split_once('-')
        .ok_or_else(|| bad(format!("expected '<first>-<last>', got {}", quote(range))))?;
    let start = parse_num(CONTENT_RANGE, "first byte position", trim_ows(first))?;
    let end = parse_num(CONTENT_RANGE, "last byte position", trim_ows(last))?;
    if end < start {
        return Err(bad(format!(
            "last byte position {end} is before first byte position {start}"
        )));
    }
    if end == u64::MAX {
        return Err(bad(format!("last byte position {end} is too large")));
    }
    if let Some(n) = complete
        && end >= n
    {
        return Err(bad(format!(
            "last byte position {end} is not below the complete length {n}"
        )));
    }
    Ok(ContentRange {
        range: ByteRange { start, end },
        complete,
    })
}

/// Options of the data API taken from the request's query string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageQuery {
    /// `flush=`: whether to flush after a write; `None` when not given.
    pub flush: Option<bool>,
    /// `context=`: `"zero"` or `"dirty"` for extents; `None` when not given.
    pub context: Option<String>,
    /// `algorithm=` of a checksum, as given (the checksum checks it).
    pub algorithm: Option<String>,
    /// `block_size=` of a checksum, as given (the checksum checks it).
    pub block_size: Option<String>,
}

/// Parses the query string (the part after `?`, without it) into the data
/// API's options.
///
/// * `flush=y|yes|true|1` or `flush=n|no|false|0` (imageio itself sends
///   `y` and `n`); values are case-sensitive.
/// * `context=zero|dirty`.
/// * `algorithm=` and `block_size=`, kept as given for the checksum.
/// * Unknown keys are ignored, as are empty pairs (`a&&b`).
///
/// Errors are [`RangeError::Invalid`]: another value for a known key, a
/// known key without a value or given twice, and a `%` escape in a known
/// key's value (no value the API accepts needs one, so none is decoded).
/// `None` and the empty string give the default.
pub fn parse_query(query: Option<&str>) -> Result<ImageQuery, RangeError> {
    let mut out = ImageQuery::default();
    let Some(query) = query else {
        return Ok(out);
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !["flush", "context", "algorithm", "block_size"].contains(&key) {
            continue;
        }
        if value.contains('%') {
            return Err(RangeError::invalid(
                QUERY,
                format!("{key}={}: percent-escapes are not supported", quote(value)),
            ));
        }
        if key == "algorithm" || key == "block_size" {
            let slot = if key == "algorithm" {
                &mut out.algorithm
            } else {
                &mut out.block_size
            };
            if slot.replace(value.to_owned()).is_some() {
                return Err(RangeError::invalid(QUERY, format!("{key} given twice")));
            }
        } else if key == "flush" {
            if out.flush.is_some() {
                return Err(RangeError::invalid(QUERY, "flush given twice"));
            }
            out.flush = Some(match value {
                "y" | "yes" | "true" | "1" => true,
                "n" | "no" | "false" | "0" => false,
                _ => {
                    return Err(RangeError::invalid(
                        QUERY,
                        format!("flush={} is not one of y, n", quote(value)),
                    ));
                }
            });
        } else {
            if out.context.is_some() {
                return Err(RangeError::invalid(QUERY, "context given twice"));
            }
            match value {
                "zero" | "dirty" => out.context = Some(value.to_owned()),
                _ => {
                    return Err(RangeError::invalid(
                        QUERY,
                        format!("context={} is not one of zero, dirty", quote(value)),
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Fuzz entry (see `fuzz/`): the first byte `k` (mod 9) says how many
/// following bytes form the resource size (little-endian), the rest is the
/// header text, fed to all three parsers. Checks the invariants the parsers
/// promise and that accepted values format back to the same value.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_entry(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(k % 9).min(rest.len());
    let (size_bytes, text) = rest.split_at(k);
    let mut le = [0u8; 8];
    le[..k].copy_from_slice(size_bytes);
    let size = u64::from_le_bytes(le);
    let text = String::from_utf8_lossy(text);

    match parse_range(&text, size) {
        Ok(r) => {
            assert!(r.start <= r.end && r.end < size, "{r:?} outside {size}");
            assert!(!r.is_empty() && r.len() <= size, "{r:?} len vs {size}");
            let again = parse_range(&format!("bytes={}-{}", r.start, r.end), size);
            assert_eq!(again, Ok(r), "range does not round-trip");
        }
        Err(RangeError::Unsatisfiable { size: s }) => assert_eq!(s, size),
        Err(_) => {}
    }
    if let Ok(c) = parse_content_range(&text) {
        let r = c.range;
        assert!(r.start <= r.end && r.end < u64::MAX, "{c:?}");
        if let Some(n) = c.complete {
            assert!(r.end < n, "{c:?}");
        }
        assert_eq!(parse_content_range(&c.to_string()), Ok(c));
    }
    if let Ok(q) = parse_query(Some(&text))
        && let Some(ctx) = &q.context
    {
        assert!(ctx == "zero" || ctx == "dirty", "{q:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::test_support::Rng;

    const MAX: u64 = u64::MAX;

    fn br(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    fn is_invalid(r: &Result<impl fmt::Debug, RangeError>) -> bool {
        matches!(r, Err(RangeError::Invalid { .. }))
    }

    #[test]
    fn range_satisfiable() {
        let cases: &[(&str, u64, ByteRange)] = &[
            ("bytes=0-0", 1, br(0, 0)),
            ("bytes=0-99", 100, br(0, 99)),
            ("bytes=10-19", 100, br(10, 19)),
            // Last position clamped to the end.
            ("bytes=0-100", 100, br(0, 99)),
            ("bytes=50-18446744073709551615", 100, br(50, 99)),
            ("bytes=99-99", 100, br(99, 99)),
            // Open end.
            ("bytes=0-", 100, br(0, 99)),
            ("bytes=99-", 100, br(99, 99)),
            // Suffix.
            ("bytes=-1", 100, br(99, 99)),
            ("bytes=-10", 100, br(90, 99)),
            ("bytes=-100", 100, br(0, 99)),
            ("bytes=-101", 100, br(0, 99)),
            ("bytes=-18446744073709551615", 100, br(0, 99)),
            ("bytes=-5", 1, br(0, 0)),
            // Whitespace and case.
            ("  bytes=0-9  ", 100, br(0, 9)),
            ("bytes = 0 - 9", 100, br(0, 9)),
            ("\tbytes\t=\t-3\t", 100, br(97, 99)),
            ("Bytes=0-9", 100, br(0, 9)),
            ("BYTES=0-9", 100, br(0, 9)),
            // Leading zeros are plain digits.
            ("bytes=0000000000000000000000000007-0008", 100, br(7, 8)),
            // Empty list elements are skipped.
            ("bytes=0-9,", 100, br(0, 9)),
            ("bytes=, ,0-9, ,", 100, br(0, 9)),
            // Huge resources.
            ("bytes=0-", MAX, br(0, MAX - 1)),
            ("bytes=-1", MAX, br(MAX - 1, MAX - 1)),
            ("bytes=-18446744073709551615", MAX, br(0, MAX - 1)),
            ("bytes=18446744073709551614-", MAX, br(MAX - 1, MAX - 1)),
            (
                "bytes=18446744073709551613-18446744073709551615",
                MAX,
                br(MAX - 2, MAX - 1),
            ),
        ];
        for &(value, size, want) in cases {
            let got = parse_range(value, size);
            assert_eq!(got, Ok(want), "{value:?} size {size}");
            let r = got.unwrap_or(br(1, 0));
            assert!(r.end < size && r.len() <= size, "{value:?}");
        }
    }

    #[test]
    fn range_unsatisfiable() {
        let cases: &[(&str, u64)] = &[
            ("bytes=100-", 100),
            ("bytes=100-200", 100),
            ("bytes=18446744073709551615-", 100),
            ("bytes=18446744073709551615-18446744073709551615", MAX),
            ("bytes=-0", 100),
            ("bytes=-000", 100),
            // A resource of 0 bytes satisfies nothing.
            ("bytes=0-0", 0),
            ("bytes=0-", 0),
            ("bytes=-1", 0),
            ("bytes=-0", 0),
            ("bytes=-18446744073709551615", 0),
        ];
        for &(value, size) in cases {
            let got = parse_range(value, size);
            assert_eq!(
                got,
                Err(RangeError::Unsatisfiable { size }),
                "{value:?} size {size}"
            );
        }
    }

    #[test]
    fn range_invalid() {
        let cases: &[&str] = &[
            "",
            "   ",
            "bytes",
            "bytes=",
            "bytes= ",
            "bytes=,",
            "=0-1",
            "items=0-1",
            "bytesx=0-1",
            "byte s=0-1",
            "bytes=-",
            "bytes= - ",
            "bytes=5",
            "bytes=abc",
            "bytes=1-2-3",
            "bytes=--5",
            "bytes=-5-",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=-+2",
            "bytes=-1-2",
            "bytes=1 0-20",
            "bytes=0x10-20",
            "bytes=1.5-2",
            "bytes=١-٢",
            "bytes=10-9",
            "bytes=1-0",
            "bytes=0-1;x",
            "bytes==0-1",
            // Overflow of u64 in each position.
            "bytes=18446744073709551616-",
            "bytes=0-18446744073709551616",
            "bytes=-18446744073709551616",
            "bytes=99999999999999999999999999999999999999-",
            // A syntax error wins over "multiple ranges".
            "bytes=0-1,x",
            "bytes=0-1,5-4",
        ];
        for &value in cases {
            for size in [0, 1, 100, MAX] {
                let got = parse_range(value, size);
                assert!(is_invalid(&got), "{value:?} size {size}: {got:?}");
            }
        }
    }

    #[test]
    fn range_multiple_is_unsupported() {
        for value in [
            "bytes=0-1,5-6",
            "bytes=0-1, -5",
            "bytes= 0-,0-",
            "bytes=0-1,2-3,4-5",
        ] {
            for size in [0, 10, MAX] {
                let got = parse_range(value, size);
                assert!(
                    matches!(
                        got,
                        Err(RangeError::Unsupported {
                            header: "Range",
                            ..
                        })
                    ),
                    "{value:?}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn content_range_valid() {
        let cases: &[(&str, ByteRange, Option<u64>)] = &[
            ("bytes 0-99/100", br(0, 99), Some(100)),
            ("bytes 0-99/*", br(0, 99), None),
            ("bytes 5-5/6", br(5, 5), Some(6)),
            ("bytes 5-5/18446744073709551615", br(5, 5), Some(MAX)),
            ("  bytes   0 - 9 / 10  ", br(0, 9), Some(10)),
            ("bytes\t0-9/*", br(0, 9), None),
            ("BYTES 0-9/*", br(0, 9), None),
            ("bytes 0-18446744073709551614/*", br(0, MAX - 1), None),
            (
                "bytes 18446744073709551614-18446744073709551614/18446744073709551615",
                br(MAX - 1, MAX - 1),
                Some(MAX),
            ),
            ("bytes 007-008/009", br(7, 8), Some(9)),
        ];
        for &(value, range, complete) in cases {
            let got = parse_content_range(value);
            let want = ContentRange { range, complete };
            assert_eq!(got, Ok(want), "{value:?}");
            assert_eq!(parse_content_range(&want.to_string()), Ok(want));
        }
    }

    #[test]
    fn content_range_invalid() {
        let cases: &[&str] = &[
            "",
            " ",
            "bytes",
            "bytes ",
            "bytes0-9/10",
            "bytes=0-9/10",
            "items 0-9/10",
            "bytes 0-9",
            "bytes 0-9/",
            "bytes /10",
            "bytes */10",
            "bytes */*",
            "bytes * / 10",
            "bytes 0/10",
            "bytes -9/10",
            "bytes 0-/10",
            "bytes 9-0/10",
            "bytes 0-10/10",
            "bytes 0-0/0",
            "bytes 0-9/-1",
            "bytes +0-9/10",
            "bytes 0-+9/10",
            "bytes 0-9/+10",
            "bytes 0-9/1 0",
            "bytes 0-9/10/11",
            "bytes 0-9,10-19/20",
            "bytes 0-9/x",
            "bytes 0-1-2/10",
            // Overflow and the unrepresentable exclusive end.
            "bytes 0-18446744073709551615/*",
            "bytes 0-18446744073709551616/*",
            "bytes 18446744073709551616-18446744073709551617/*",
            "bytes 0-9/18446744073709551616",
            "bytes 0-9/99999999999999999999999999999999",
        ];
        for &value in cases {
            let got = parse_content_range(value);
            assert!(is_invalid(&got), "{value:?}: {got:?}");
        }
    }

    #[test]
    fn query_valid() {
        let q = |flush, context: Option<&str>| ImageQuery {
            flush,
            context: context.map(str::to_owned),
            ..ImageQuery::default()
        };
        let sum = |algorithm: Option<&str>, block_size: Option<&str>| ImageQuery {
            algorithm: algorithm.map(str::to_owned),
            block_size: block_size.map(str::to_owned),
            ..ImageQuery::default()
        };
        let cases: &[(Option<&str>, ImageQuery)] = &[
            (None, ImageQuery::default()),
            (Some(""), ImageQuery::default()),
            (Some("&&"), ImageQuery::default()),
            (Some("flush=y"), q(Some(true), None)),
            (Some("flush=yes"), q(Some(true), None)),
            (Some("flush=true"), q(Some(true), None)),
            (Some("flush=1"), q(Some(true), None)),
            (Some("flush=n"), q(Some(false), None)),
            (Some("flush=no"), q(Some(false), None)),
            (Some("flush=false"), q(Some(false), None)),
            (Some("flush=0"), q(Some(false), None)),
            (Some("context=zero"), q(None, Some("zero"))),
            (Some("context=dirty"), q(None, Some("dirty"))),
            (Some("flush=n&context=zero"), q(Some(false), Some("zero"))),
            (
                Some("context=dirty&&flush=y&"),
                q(Some(true), Some("dirty")),
            ),
            // Unknown keys are ignored, whatever their value.
            (Some("foo=bar&flush=y"), q(Some(true), None)),
            (Some("x=%zz&y&=z&flush=n"), q(Some(false), None)),
            (Some("Flush=maybe"), ImageQuery::default()),
            (Some("flushy=1"), ImageQuery::default()),
            // Checksum options are kept as given; the checksum judges them.
            (Some("algorithm=sha256"), sum(Some("sha256"), None)),
            (
                Some("block_size=1048576&algorithm=x"),
                sum(Some("x"), Some("1048576")),
            ),
            (Some("block_size="), sum(None, Some(""))),
        ];
        for (query, want) in cases {
            assert_eq!(parse_query(*query).as_ref(), Ok(want), "{query:?}");
        }
    }

    #[test]
    fn query_invalid() {
        let cases: &[&str] = &[
            "flush",
            "flush=",
            "flush=Y",
            "flush=maybe",
            "flush=yy",
            "flush= y",
            "flush=y=",
            "flush=%79",
            "context",
            "context=",
            "context=ZERO",
            "context=other",
            "context=z%65ro",
            "flush=y&flush=y",
            "flush=y&flush=n",
            "context=zero&context=dirty",
            "foo=1&flush=x",
            "algorithm=sha256&algorithm=md5",
            "block_size=1&block_size=1",
            "algorithm=sha%32",
        ];
        for &query in cases {
            let got = parse_query(Some(query));
            assert!(is_invalid(&got), "{query:?}: {got:?}");
            assert!(matches!(
                got,
                Err(RangeError::Invalid {
                    header: "query",
                    ..
                })
            ));
        }
        let msg = parse_query(Some("flush=%79")).map_err(|e| e.to_string());
        assert!(
            matches!(&msg, Err(m) if m.contains("percent-escapes")),
            "{msg:?}"
        );
    }

    #[test]
    fn byte_range_len() {
        assert_eq!(br(0, 0).len(), 1);
        assert_eq!(br(10, 19).len(), 10);
        assert_eq!(br(0, MAX - 1).len(), MAX);
        assert_eq!(br(0, MAX).len(), MAX);
        assert_eq!(br(1, MAX).len(), MAX);
        assert_eq!(br(MAX, MAX).len(), 1);
        assert_eq!(br(5, 4).len(), 0);
        assert!(br(5, 4).is_empty());
        assert!(!br(4, 4).is_empty());
    }

    #[test]
    fn errors_classify_and_map_to_status() {
        let invalid = parse_range("bytes=x", 10).unwrap_err();
        let unsat = parse_range("bytes=10-", 10).unwrap_err();
        let multi = parse_range("bytes=0-1,2-3", 10).unwrap_err();
        assert_eq!(invalid.kind(), ErrorKind::InvalidArgument);
        assert_eq!(unsat.kind(), ErrorKind::InvalidArgument);
        assert_eq!(multi.kind(), ErrorKind::Unsupported);
        assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
        assert_eq!(unsat.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(multi.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        let e: Error = unsat.into();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            e.to_string(),
            "range not satisfiable for a resource of 10 bytes"
        );
    }

    #[test]
    fn error_messages_quote_little_input() {
        let long = format!("bytes={}-", "x".repeat(10_000));
        let msg = parse_range(&long, 10).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.starts_with("invalid Range: "), "{msg}");
        // Multi-byte characters are never cut in half.
        let wide = format!("bytes={}-", "é".repeat(100));
        let msg = parse_range(&wide, 10).unwrap_err().to_string();
        assert!(msg.contains('é') && msg.contains("..."), "{msg}");
        // Control characters are escaped.
        let msg = parse_range("bytes=\n1-", 10).unwrap_err().to_string();
        assert!(!msg.contains('\n'), "{msg:?}");
    }

    #[test]
    fn fuzz_entry_survives_odd_input() {
        for s in [
            &b""[..],
            b"\x00",
            b"\x08\xff\xff\xff\xff\xff\xff\xff\xffbytes=-18446744073709551615",
            b"\x01\x00bytes=0-",
            b"\x01\x64bytes 0-99/100",
            b"\x00flush=y&context=zero",
            b"\x00bytes 0-18446744073709551614/*",
            b"\x05\xffbytes=\xff-",
        ] {
            fuzz_entry(s);
        }
        let mut rng = Rng(7);
        let alphabet = b"bytes=-,/* 0123456789\t&flush=context=zero%";
        for _ in 0..20_000 {
            let head = 1 + rng.below(9) as usize;
            let mut v = rng.bytes(head);
            let len = rng.below(40) as usize;
            v.extend((0..len).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]));
            fuzz_entry(&v);
        }
    }
}
