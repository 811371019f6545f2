//! Decoding of single tar header blocks and of extension-header contents
//! (PAX records, GNU long names). Pure functions over byte slices; the
//! state machine in the parent module decides when they run.
//!
//! Every rule here leans towards rejecting a field that two common readers
//! (GNU tar, Python's `tarfile`) would decode differently: a header that
//! one reader sizes differently from another is how tar streams get
//! desynchronized.

use super::TarError;

/// Size of a tar block.
pub(crate) const BLOCK: usize = 512;

const NAME: std::ops::Range<usize> = 0..100;
const SIZE: std::ops::Range<usize> = 124..136;
const CHKSUM: std::ops::Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const MAGIC: std::ops::Range<usize> = 257..263;
const PREFIX: std::ops::Range<usize> = 345..500;

/// Number of padding bytes that follow `size` content bytes.
pub(crate) fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// True for an all-zero block (end-of-archive marker).
pub(crate) fn is_zero(block: &[u8; BLOCK]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// The typeflag byte.
pub(crate) fn typeflag(block: &[u8; BLOCK]) -> u8 {
    block[TYPEFLAG]
}

/// Verifies the header checksum. Both the unsigned sum (POSIX) and the
/// signed-char sum (some historic writers) are accepted.
pub(crate) fn verify_checksum(block: &[u8; BLOCK], offset: u64) -> Result<(), TarError> {
    let stored = parse_octal(&block[CHKSUM]).map_err(|reason| TarError::BadField {
        offset,
        field: "checksum",
        reason,
    })?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if CHKSUM.contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(TarError::BadChecksum {
            offset,
            stored,
            computed: unsigned,
        })
    }
}

/// The size field: octal, or GNU base-256 when the first byte has its high
/// bit set.
pub(crate) fn size_field(block: &[u8; BLOCK], offset: u64) -> Result<u64, TarError> {
    parse_numeric(&block[SIZE]).map_err(|reason| TarError::BadField {
        offset,
        field: "size",
        reason,
    })
}

/// The entry name from the header alone: `prefix/name` for POSIX ustar,
/// `name` for GNU and v7 headers (whose bytes 345.. hold other fields).
pub(crate) fn header_name(block: &[u8; BLOCK]) -> String {
    let name = until_nul(&block[NAME]);
    if &block[MAGIC] == b"ustar\0" {
        let prefix = until_nul(&block[PREFIX]);
        if !prefix.is_empty() {
            let mut joined = Vec::with_capacity(prefix.len() + 1 + name.len());
            joined.extend_from_slice(prefix);
            joined.push(b'/');
            joined.extend_from_slice(name);
            return String::from_utf8_lossy(&joined).into_owned();
        }
    }
    String::from_utf8_lossy(name).into_owned()
}

/// The bytes of `field` up to its first NUL.
pub(crate) fn until_nul(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

/// Parses a numeric header field: octal or GNU base-256. The result never
/// exceeds `i64::MAX` (the largest `off_t`).
pub(crate) fn parse_numeric(field: &[u8]) -> Result<u64, &'static str> {
    match field.first() {
        Some(&b) if b & 0x80 != 0 => parse_base256(field),
        _ => parse_octal(field),
    }
}

/// GNU base-256: the first byte's high bit marks the encoding, its next bit
/// is the sign (two's complement); all remaining bits are the big-endian
/// value. Negative values and values above `i64::MAX` are rejected.
fn parse_base256(field: &[u8]) -> Result<u64, &'static str> {
    let (&first, rest) = field.split_first().ok_or("empty field")?;
    if first & 0x40 != 0 {
        return Err("negative base-256 value");
    }
    let mut value = u64::from(first & 0x3f);
    for &b in rest {
        if value > (u64::MAX >> 8) {
            return Err("base-256 value too large");
        }
        value = (value << 8) | u64::from(b);
    }
    if value > i64::MAX as u64 {
        return Err("base-256 value too large");
    }
    Ok(value)
}

/// Octal: optional leading spaces, at least one digit, then only spaces or
/// NULs. A field of NULs only reads as 0 (GNU tar and Python agree on that).
///
/// A leading NUL followed by digits, or digits after a terminator, are
/// rejected: GNU tar and Python decode those differently.
fn parse_octal(field: &[u8]) -> Result<u64, &'static str> {
    if field.first() == Some(&0) {
        return if field.iter().all(|&b| b == 0 || b == b' ') {
            Ok(0)
        } else {
            Err("digits after a leading NUL")
        };
    }
    let start = field
        .iter()
        .position(|&b| b != b' ')
        .ok_or("no octal digits")?;
    let digits = &field[start..];
    let end = digits
        .iter()
        .position(|b| !(b'0'..=b'7').contains(b))
        .unwrap_or(digits.len());
    if end == 0 {
        return Err("no octal digits");
    }
    if !digits[end..].iter().all(|&b| b == 0 || b == b' ') {
        return Err("not an octal number");
    }
    let mut value: u64 = 0;
    for &d in &digits[..end] {
        value = value
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or("octal value too large")?;
    }
    if value > i64::MAX as u64 {
        return Err("octal value too large");
    }
    Ok(value)
}

/// What a PAX extended header says about the next entry (or, for a
/// global header, what it would say).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PaxRecords {
    /// `path`.
    pub(crate) path: Option<String>,
    /// `size`.
    pub(crate) size: Option<u64>,
}

/// Parses the records `"%d %s=%s\n"` of a PAX extended header whose
/// content starts at stream offset `base`.
///
/// Malformed records, a repeated `path` or `size`, and GNU sparse keys are
/// errors: the first two are ambiguous between readers, the last means the
/// entry's content is not the file's bytes.
pub(crate) fn parse_pax(data: &[u8], base: u64) -> Result<PaxRecords, TarError> {
    let mut out = PaxRecords::default();
    let mut i = 0usize;
    while i < data.len() {
        let at = base + i as u64;
        let bad = |reason: &'static str| TarError::BadPax { offset: at, reason };
        let digits = data[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad("record does not start with a length"));
        }
        if digits > 20 {
            return Err(bad("record length too long"));
        }
        let mut len: usize = 0;
        for &d in &data[i..i + digits] {
            len = len
                .checked_mul(10)
                .and_then(|v| v.checked_add(usize::from(d - b'0')))
                .ok_or_else(|| bad("record length too large"))?;
        }
        let space = i + digits;
        if data.get(space) != Some(&b' ') {
            return Err(bad("no space after the record length"));
        }
        let end = i
            .checked_add(len)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| bad("record runs past the end of the header"))?;
        // Shortest record: length, space, "k=", newline.
        if end < space + 4 || data[end - 1] != b'\n' {
            return Err(bad("record does not end with a newline"));
        }
        let kv = &data[space + 1..end - 1];
        let eq = kv
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("record has no '='"))?;
        let (key, value) = (&kv[..eq], &kv[eq + 1..]);
        if key.is_empty() {
            return Err(bad("record has an empty key"));
        }
        match key {
            b"size" => {
                if out.size.is_some() {
                    return Err(bad("repeated size record"));
                }
                out.size = Some(parse_pax_size(value).ok_or_else(|| bad("invalid size value"))?);
            }
            b"path" => {
                if out.path.is_some() {
                    return Err(bad("repeated path record"));
                }
                if value.is_empty() || value.contains(&0) {
                    return Err(bad("empty path or NUL in path"));
                }
                out.path = Some(String::from_utf8_lossy(value).into_owned());
            }
            k if k.starts_with(b"GNU.sparse.") => {
                return Err(TarError::Unsupported {
                    offset: at,
                    what: "GNU sparse file (PAX GNU.sparse records)",
                });
            }
            _ => {}
        }
        i = end;
    }
    Ok(out)
}

/// A PAX `size` value: decimal digits only, at most `i64::MAX`.
fn parse_pax_size(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in value {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    (v <= i64::MAX as u64).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_forms() {
        assert_eq!(parse_numeric(b"00000001750\0"), Ok(1000));
        assert_eq!(parse_numeric(b"     1750 \0\0"), Ok(1000));
        assert_eq!(parse_numeric(b"1750        "), Ok(1000));
        assert_eq!(parse_numeric(b"777777777777"), Ok(0o777777777777));
        assert_eq!(parse_numeric(b"\0\0\0\0\0\0\0\0\0\0\0\0"), Ok(0));
        assert!(parse_numeric(b"            ").is_err());
        assert!(parse_numeric(b"\0 1750\0\0\0\0\0").is_err());
        assert!(parse_numeric(b"17 50\0\0\0\0\0\0\0").is_err());
        assert!(parse_numeric(b"1789\0\0\0\0\0\0\0\0").is_err());
        assert!(parse_numeric(b"-1\0\0\0\0\0\0\0\0\0\0").is_err());
    }

    #[test]
    fn base256_forms() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[4..].copy_from_slice(&(8u64 << 30).to_be_bytes());
        assert_eq!(parse_numeric(&f), Ok(8 << 30));
        f[0] = 0xff;
        assert_eq!(parse_numeric(&f), Err("negative base-256 value"));
        let huge = [
            0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        assert_eq!(parse_numeric(&huge), Err("base-256 value too large"));
        let over = [0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_numeric(&over), Err("base-256 value too large"));
        let max = [
            0x80, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        assert_eq!(parse_numeric(&max), Ok(i64::MAX as u64));
    }

    #[test]
    fn pax_records() {
        let r = parse_pax(b"14 path=a/b/c\n12 size=123\n13 mtime=1.5\n", 0).unwrap();
        assert_eq!(r.path.as_deref(), Some("a/b/c"));
        assert_eq!(r.size, Some(123));
        // A value may contain '=' and newlines: records are length-prefixed.
        let r = parse_pax(b"13 path=a=\nb\n", 0).unwrap();
        assert_eq!(r.path.as_deref(), Some("a=\nb"));
        for bad in [
            &b"12 size=12a\n"[..],
            b"14 size=123\n",
            b"11 size=123\n",
            b"x size=1\n",
            b"8 size=\n",
            b"12 size=123",
            b"7 =abc\n",
            b"6 abc\n",
            b"10 size=1\n10 size=2\n",
            b"29 size=99999999999999999999\n",
            b"99999999999999999999999 size=1\n",
            b"12 size=123\n\0\0",
        ] {
            assert!(
                matches!(parse_pax(bad, 1000), Err(TarError::BadPax { .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse_pax(b"22 GNU.sparse.major=1\n", 0),
            Err(TarError::Unsupported { .. })
        ));
    }
}
