//! The OVA manifest (`.mf`): one digest per package entry, checked against
//! the digests computed while the entries stream past.
//!
//! Lines look like `SHA256(disk1.vmdk)= 0123…` (what ovaio writes) or the
//! spaced form `SHA1 (disk1.vmdk) = 0123…` (what some writers emit). Hex is
//! case-insensitive, lines end in LF or CRLF, blank lines are ignored.
//!
//! [`ManifestParser`] is a no-I/O parser fed pieces of any size; [`parse`]
//! is the whole-buffer shorthand.

use std::collections::HashSet;

use crate::error::{Classify, ErrorKind};
use crate::limits;

/// A digest algorithm a manifest may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-1 (20 bytes); OVF 1.x packages.
    Sha1,
    /// SHA-256 (32 bytes); OVF 2.0 and what ovaio writes.
    Sha256,
    /// SHA-512 (64 bytes).
    Sha512,
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Algorithm {
    /// Every algorithm, in a fixed order.
    pub const ALL: [Algorithm; 3] = [Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512];

    /// The name used in manifest lines (`SHA256`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }

    /// Length of a digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }

    /// Parses a manifest algorithm name, ignoring case and one `-`
    /// (`SHA256`, `sha-256`).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        let n: String = name
            .chars()
            .filter(|&c| c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        match n.as_str() {
            "SHA1" => Some(Algorithm::Sha1),
            "SHA256" => Some(Algorithm::Sha256),
            "SHA512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// One manifest line: the digest of one package entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Algorithm of `digest`.
    pub algorithm: Algorithm,
    /// The package entry name, as written between the parentheses.
    pub name: String,
    /// The raw digest bytes (`algorithm.digest_len()` of them).
    pub digest: Vec<u8>,
}

/// A parsed manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Entries in file order; names are unique.
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// The entry for a package entry name, if listed.
    pub fn get(&self, name: &str) -> Option<&ManifestEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The distinct algorithms used, in [`Algorithm::ALL`] order.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .filter(|a| self.entries.iter().any(|e| e.algorithm == *a))
            .collect()
    }
}

/// What is wrong with a manifest. `line` counts from 1; `offset` is the
/// byte offset of the line's start within the manifest entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The manifest is larger than [`limits::MAX_MANIFEST_SIZE`].
    #[error("manifest is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The line is not `ALG(name)= hex`.
    #[error("manifest line {line}: {reason}")]
    BadLine {
        /// Line number.
        line: usize,
        /// Byte offset of the line.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The line names an algorithm ovaio does not compute.
    #[error("manifest line {line}: unsupported digest algorithm '{name}'")]
    UnknownAlgorithm {
        /// Line number.
        line: usize,
        /// Byte offset of the line.
        offset: u64,
        /// The algorithm as written.
        name: String,
    },
    /// The digest has the wrong length for its algorithm.
    #[error("manifest line {line}: {algorithm} digest must be {expected} bytes, found {found}")]
    DigestLength {
        /// Line number.
        line: usize,
        /// Byte offset of the line.
        offset: u64,
        /// The algorithm named on the line.
        algorithm: Algorithm,
        /// The algorithm's digest length.
        expected: usize,
        /// The decoded length.
        found: usize,
    },
    /// A name is listed twice.
    #[error("manifest line {line}: '{name}' is listed twice")]
    Duplicate {
        /// Line number.
        line: usize,
        /// Byte offset of the line.
        offset: u64,
        /// The repeated entry name.
        name: String,
    },
}

impl Classify for ManifestError {
    /// Offset of the line within the manifest.
    fn offset(&self) -> Option<u64> {
        match *self {
            ManifestError::TooLarge { .. } => None,
            ManifestError::BadLine { offset, .. }
            | ManifestError::UnknownAlgorithm { offset, .. }
            | ManifestError::DigestLength { offset, .. }
            | ManifestError::Duplicate { offset, .. } => Some(offset),
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            ManifestError::TooLarge { .. } => ErrorKind::LimitExceeded,
            ManifestError::UnknownAlgorithm { .. } => ErrorKind::Unsupported,
            _ => ErrorKind::InvalidFormat,
        }
    }
}

/// Formats one manifest line in the form ovaio writes:
/// `SHA256(name)= hex\n`, lowercase hex.
pub fn format_line(alg: Algorithm, name: &str, digest: &[u8]) -> String {
    format!("{}({})= {}\n", alg.name(), name, hex::encode(digest))
}

/// Parses a whole manifest.
pub fn parse(text: &[u8]) -> Result<Manifest, ManifestError> {
    let mut p = ManifestParser::new();
    p.feed(text)?;
    p.finish()
}

/// Incremental manifest parser: feed pieces of any size, then
/// [`finish`](Self::finish). After an error the parser must be dropped.
#[derive(Debug, Default)]
pub struct ManifestParser {
    /// Bytes of the current, incomplete line.
    partial: Vec<u8>,
    /// Byte offset of `partial`'s first byte.
    line_offset: u64,
    /// Number of the current line (1-based).
    line: usize,
    /// Total bytes fed.
    total: u64,
    names: HashSet<String>,
    entries: Vec<ManifestEntry>,
}

impl ManifestParser {
    /// A parser at the start of a manifest.
    pub fn new() -> Self {
        ManifestParser {
            line: 1,
            ..Default::default()
        }
    }

    /// Consumes the next piece of the manifest.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ManifestError> {
        let len = data.len() as u64;
        if self.total.saturating_add(len) > limits::MAX_MANIFEST_SIZE {
            return Err(ManifestError::TooLarge {
                limit: limits::MAX_MANIFEST_SIZE,
            });
        }
        self.total += len;
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let (head, rest) = data.split_at(nl);
            let line_len = (self.partial.len() + nl + 1) as u64;
            if self.partial.is_empty() {
                self.line_done(head)?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.line_done(&line)?;
            }
            // Skip the newline itself.
            data = &rest[1..];
            self.line_offset += line_len;
            self.line += 1;
        }
        self.partial.extend_from_slice(data);
        Ok(())
    }

    /// Ends the input (a last line without a newline is accepted).
    pub fn finish(mut self) -> Result<Manifest, ManifestError> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line_done(&line)?;
        }
        Ok(Manifest {
            entries: self.entries,
        })
    }

    /// Parses one complete line (without its `\n`).
    fn line_done(&mut self, raw: &[u8]) -> Result<(), ManifestError> {
        let (line, offset) = (self.line, self.line_offset);
        let bad = |reason| ManifestError::BadLine {
            line,
            offset,
            reason,
        };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let raw = if line == 1 {
            raw.strip_prefix(b"\xef\xbb\xbf").unwrap_or(raw)
        } else {
            raw
        };
        let text = std::str::from_utf8(raw).map_err(|_| bad("not valid UTF-8"))?;
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        let open = text
            .find('(')
            .ok_or_else(|| bad("expected 'ALG(name)= digest'"))?;
        let eq = text
            .rfind('=')
            .ok_or_else(|| bad("missing '=' before the digest"))?;
        let before_eq = text[..eq].trim_end();
        let close = before_eq
            .len()
            .checked_sub(1)
            .filter(|&c| c > open && before_eq.as_bytes().get(c) == Some(&b')'));
        let Some(close) = close else {
            return Err(bad("expected ')' before '='"));
        };
        let alg_name = text[..open].trim_end();
        let name = &text[open + 1..close];
        let hex_text = text[eq + 1..].trim_start();
        if alg_name.is_empty() {
            return Err(bad("missing algorithm name"));
        }
        if name.is_empty() {
            return Err(bad("empty entry name"));
        }
        let algorithm =
            Algorithm::from_name(alg_name).ok_or_else(|| ManifestError::UnknownAlgorithm {
                line,
                offset,
                name: alg_name.to_owned(),
            })?;
        if hex_text.is_empty() {
            return Err(bad("missing digest"));
        }
        let digest = hex::decode(hex_text).map_err(|_| bad("digest is not hexadecimal"))?;
        if digest.len() != algorithm.digest_len() {
            return Err(ManifestError::DigestLength {
                line,
                offset,
                algorithm,
                expected: algorithm.digest_len(),
                found: digest.len(),
            });
        }
        if !self.names.insert(name.to_owned()) {
            return Err(ManifestError::Duplicate {
                line,
                offset,
                name: name.to_owned(),
            });
        }
        self.entries.push(ManifestEntry {
            algorithm,
            name: name.to_owned(),
            digest,
        });
        Ok(())
    }
}

/// Fuzzing entry point: parses `data` whole and split, and must never panic.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_entry(data: &[u8]) {
    let whole = parse(data);
    let mut p = ManifestParser::new();
    let mid = data.len() / 2;
    let split = p
        .feed(&data[..mid])
        .and_then(|()| p.feed(&data[mid..]))
        .and_then(|()| p.finish());
    if let (Ok(a), Ok(b)) = (&whole, &split) {
        assert_eq!(a, b, "split parse differs");
    }
    if let Ok(m) = whole {
        for e in &m.entries {
            let line = format_line(e.algorithm, &e.name, &e.digest);
            let _ = parse(line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Rng;

    const SHA1_ABC: &str = "a9993e364706816aba3e25717850c26c9cd0d89d";
    const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const SHA512_ABC: &str = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                              2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";

    fn sample() -> String {
        format!(
            "SHA256(vm.ovf)= {SHA256_ABC}\r\n\
             \r\n\
             SHA1 (disk1.vmdk) = {}\n\
             SHA512(disk (2).qcow2)={SHA512_ABC}\n\
             \n",
            SHA1_ABC.to_uppercase()
        )
    }

    fn parse_pieces(
        data: &[u8],
        sizes: &mut dyn FnMut() -> usize,
    ) -> Result<Manifest, ManifestError> {
        let mut p = ManifestParser::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = sizes().clamp(1, rest.len());
            p.feed(&rest[..n])?;
            rest = &rest[n..];
        }
        p.finish()
    }

    #[test]
    fn both_forms_and_all_algorithms() {
        let m = parse(sample().as_bytes()).unwrap();
        assert_eq!(m.entries.len(), 3);
        let e = m.get("vm.ovf").unwrap();
        assert_eq!(e.algorithm, Algorithm::Sha256);
        assert_eq!(hex::encode(&e.digest), SHA256_ABC);
        let e = m.get("disk1.vmdk").unwrap();
        assert_eq!(e.algorithm, Algorithm::Sha1);
        assert_eq!(hex::encode(&e.digest), SHA1_ABC);
        let e = m.get("disk (2).qcow2").unwrap();
        assert_eq!(e.algorithm, Algorithm::Sha512);
        assert_eq!(hex::encode(&e.digest), SHA512_ABC);
        assert!(m.get("other").is_none());
        assert_eq!(
            m.algorithms(),
            vec![Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512]
        );
    }

    #[test]
    fn pieces_and_every_split_give_the_same_result() {
        let text = sample();
        let data = text.as_bytes();
        let whole = parse(data);
        for cut in 0..=data.len() {
            let mut p = ManifestParser::new();
            p.feed(&data[..cut]).unwrap();
            p.feed(&data[cut..]).unwrap();
            assert_eq!(p.finish(), whole, "split at {cut}");
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200 {
            let got = parse_pieces(data, &mut || (rng.next() % 9) as usize);
            assert_eq!(got, whole);
        }
        // Errors, too, are the same however the input is cut.
        let bad = b"SHA1(a)= 00\nSHA256(b)= zz\n";
        let whole = parse(bad);
        for cut in 0..=bad.len() {
            let mut p = ManifestParser::new();
            let got = p
                .feed(&bad[..cut])
                .and_then(|()| p.feed(&bad[cut..]))
                .and_then(|()| p.finish());
            assert_eq!(got, whole, "split at {cut}");
        }
    }

    #[test]
    fn last_line_without_newline() {
        let text = format!("SHA1(a)= {SHA1_ABC}");
        assert_eq!(parse(text.as_bytes()).unwrap().entries.len(), 1);
        assert_eq!(parse(b"").unwrap(), Manifest::default());
        assert_eq!(parse(b"\n\r\n  \n").unwrap(), Manifest::default());
    }

    #[test]
    fn format_line_round_trips() {
        let d = hex::decode(SHA256_ABC).unwrap();
        let line = format_line(Algorithm::Sha256, "disk1.qcow2", &d);
        assert_eq!(line, format!("SHA256(disk1.qcow2)= {SHA256_ABC}\n"));
        let m = parse(line.as_bytes()).unwrap();
        assert_eq!(m.entries[0].digest, d);
    }

    #[test]
    fn bad_lines_name_the_line() {
        let good = format!("SHA1(a)= {SHA1_ABC}\n");
        let cases: Vec<(String, ManifestError)> = vec![
            (
                format!("{good}garbage\n"),
                ManifestError::BadLine {
                    line: 2,
                    offset: good.len() as u64,
                    reason: "expected 'ALG(name)= digest'",
                },
            ),
            (
                format!("{good}SHA1(b) {SHA1_ABC}\n"),
                ManifestError::BadLine {
                    line: 2,
                    offset: good.len() as u64,
                    reason: "missing '=' before the digest",
                },
            ),
            (
                format!("SHA1(b= {SHA1_ABC}\n"),
                ManifestError::BadLine {
                    line: 1,
                    offset: 0,
                    reason: "expected ')' before '='",
                },
            ),
            (
                format!("SHA1()= {SHA1_ABC}\n"),
                ManifestError::BadLine {
                    line: 1,
                    offset: 0,
                    reason: "empty entry name",
                },
            ),
            (
                format!("(a)= {SHA1_ABC}\n"),
                ManifestError::BadLine {
                    line: 1,
                    offset: 0,
                    reason: "missing algorithm name",
                },
            ),
            (
                "SHA1(a)=\n".to_owned(),
                ManifestError::BadLine {
                    line: 1,
                    offset: 0,
                    reason: "missing digest",
                },
            ),
            (
                "SHA1(a)= xyz\n".to_owned(),
                ManifestError::BadLine {
                    line: 1,
                    offset: 0,
                    reason: "digest is not hexadecimal",
                },
            ),
            (
                format!("MD5(a)= {SHA1_ABC}\n"),
                ManifestError::UnknownAlgorithm {
                    line: 1,
                    offset: 0,
                    name: "MD5".into(),
                },
            ),
            (
                format!("\n\nSHA256(a)= {SHA1_ABC}\n"),
                ManifestError::DigestLength {
                    line: 3,
                    offset: 2,
                    algorithm: Algorithm::Sha256,
                    expected: 32,
                    found: 20,
                },
            ),
            (
                format!("{good}{good}"),
                ManifestError::Duplicate {
                    line: 2,
                    offset: good.len() as u64,
                    name: "a".into(),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text.as_bytes()), Err(want), "{text:?}");
        }
        let mut not_utf8 = b"SHA1(\xff)= ".to_vec();
        not_utf8.extend_from_slice(SHA1_ABC.as_bytes());
        assert!(matches!(
            parse(&not_utf8),
            Err(ManifestError::BadLine {
                line: 1,
                reason: "not valid UTF-8",
                ..
            })
        ));
    }

    #[test]
    fn oversized_is_rejected() {
        let big = vec![b'\n'; limits::MAX_MANIFEST_SIZE as usize + 1];
        assert_eq!(
            parse(&big),
            Err(ManifestError::TooLarge {
                limit: limits::MAX_MANIFEST_SIZE
            })
        );
        let e: crate::Error = ManifestError::TooLarge { limit: 1 }.into();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    }

    #[test]
    fn fuzz_entry_survives_odd_input() {
        for s in [
            &b"SHA1(a)=)"[..],
            b"(=)",
            b")(=",
            b"SHA1((()))= 00",
            b"\xef\xbb\xbfSHA1(x)= 00",
            b"=",
            b"\r",
            b"SHA1 ( a ) = ",
        ] {
            fuzz_entry(s);
        }
        let mut rng = Rng(42);
        for _ in 0..2000 {
            let len = (rng.next() % 40) as usize;
            let alphabet = b"SHA1256(=) \r\nab0f";
            let v: Vec<u8> = (0..len)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect();
            fuzz_entry(&v);
        }
    }
}
