//! The package container: what the bytes of a package are before the tar
//! demux sees them. A package is a tar archive as it is, a tar archive
//! compressed as a whole (gzip, xz, zstd), or a zip archive (which
//! virt-v2v accepts as an OVA). [`Unpacker`] tells them apart by the magic
//! at the start of the stream and hands on [`Piece`]s: bytes of a tar
//! stream (the package itself, or decompressed) for the tar demux, or the
//! members of a zip as the events the import treats as tar entries.
//!
//! It is a push stage, like the demux: an HTTP upload feeds it body chunks
//! as they arrive.

use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};
use crate::limits;
use crate::ova::decompress::{Compression, Decompressor};
use crate::ova::demux::{EntryHeader, EntryType};
use crate::ova::zip::{self, MemberHeader, Method, ZipDemux, ZipError};

/// What a package is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// A tar archive as it is.
    Tar,
    /// A tar archive compressed as a whole.
    Compressed(Compression),
    /// A zip archive.
    Zip,
}

impl Container {
    /// How the package itself is compressed, as summaries say it: `none`,
    /// `gzip`, `xz` or `zstd` (a zip's members carry their own methods).
    pub fn compression(self) -> &'static str {
        match self {
            Container::Compressed(c) => c.name(),
            Container::Tar | Container::Zip => "none",
        }
    }

    /// The archive format: `tar` or `zip`.
    pub fn archive(self) -> &'static str {
        match self {
            Container::Zip => "zip",
            _ => "tar",
        }
    }
}

/// The longest magic looked for (xz's).
const MAGIC_LEN: usize = 6;

/// The magics that decide, and what they stand for.
const MAGICS: [(&[u8], Container); 5] = [
    (b"\x1f\x8b", Container::Compressed(Compression::Gzip)),
    (b"\xfd7zXZ\0", Container::Compressed(Compression::Xz)),
    (
        b"\x28\xb5\x2f\xfd",
        Container::Compressed(Compression::Zstd),
    ),
    (b"PK\x03\x04", Container::Zip),
    // An empty zip archive: its end record alone.
    (b"PK\x05\x06", Container::Zip),
];

/// Whether `head` starts (or, being shorter, may start) a zstd skippable
/// frame, which pzstd writes first: magic `0x184D2A5?`, little-endian.
fn skippable_zstd(head: &[u8]) -> bool {
    head.first().is_none_or(|&b| b & 0xf0 == 0x50)
        && head
            .iter()
            .skip(1)
            .zip(b"\x2a\x4d\x18")
            .all(|(a, b)| a == b)
}

/// The container `head`, the start of the stream, shows; `None` while a
/// longer head could still change the answer (never once `eof`).
pub fn sniff(head: &[u8], eof: bool) -> Option<Container> {
    for (magic, c) in MAGICS {
        if head.starts_with(magic) {
            return Some(c);
        }
    }
    if head.len() >= 4 && skippable_zstd(head) {
        return Some(Container::Compressed(Compression::Zstd));
    }
    let open = MAGICS.iter().any(|(m, _)| m.starts_with(head)) || skippable_zstd(head);
    if open && !eof && head.len() < MAGIC_LEN {
        return None;
    }
    Some(Container::Tar)
}

/// What the unpacker hands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes of a tar stream: the package itself, or decompressed.
    Tar(Bytes),
    /// A zip member starts.
    Begin(MemberHeader),
    /// Uncompressed bytes of the current zip member.
    Data(Bytes),
    /// The current zip member is complete (its CRC-32 and sizes verified).
    End,
}

impl MemberHeader {
    /// The member as a tar entry header: a directory member is a
    /// directory entry, anything else a regular file; the size is 0 when
    /// only a data descriptor gives it (see [`MemberHeader::size`]).
    pub fn entry_header(&self) -> EntryHeader {
        EntryHeader {
            name: self.name.clone(),
            size: self.size.unwrap_or(0),
            entry_type: if self.directory {
                EntryType::Directory
            } else {
                EntryType::Regular
            },
            header_offset: self.header_offset,
            data_offset: self.data_offset,
        }
    }

    /// Whether the member's data is inflated: offsets within it count
    /// inflated bytes, not bytes of the package.
    pub fn is_inflated(&self) -> bool {
        self.method == Method::Deflated
    }
}

#[derive(Debug)]
enum State {
    Sniffing,
    Tar,
    Compressed(Box<Decompressor>),
    Zip(Box<ZipDemux>),
}

/// The container stage of a package stream; see the module documentation.
#[derive(Debug)]
pub struct Unpacker {
    state: State,
    /// The start of the stream while sniffing; then what of it the chosen
    /// stage has not yet taken.
    head: Vec<u8>,
    /// The tar archive inside a compressed package has ended.
    tar_ended: bool,
    /// Decompressed bytes handed on since.
    after_end: u64,
}

impl Default for Unpacker {
    fn default() -> Self {
        Unpacker {
            state: State::Sniffing,
            head: Vec::with_capacity(MAGIC_LEN),
            tar_ended: false,
            after_end: 0,
        }
    }
}

/// A zip error, placed in its member.
fn zip_error(e: ZipError) -> Error {
    let member = e.member().map(str::to_owned);
    let e = Error::from(e);
    match member {
        Some(m) => e.in_entry(&m),
        None => e,
    }
}

impl Unpacker {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// What the package is, once its first bytes have told.
    pub fn container(&self) -> Option<Container> {
        match &self.state {
            State::Sniffing => None,
            State::Tar => Some(Container::Tar),
            State::Compressed(d) => Some(Container::Compressed(d.compression())),
            State::Zip(_) => Some(Container::Zip),
        }
    }

    /// Whether the package is (so far) a plain tar archive, whose offsets
    /// are offsets in the source.
    pub fn is_plain(&self) -> bool {
        matches!(self.state, State::Sniffing | State::Tar)
    }

    /// Says that the tar demux has read the end-of-archive marker: from
    /// now on the decompressed bytes of a compressed package are counted
    /// against [`limits::MAX_AFTER_TAR_END`].
    pub fn tar_ended(&mut self) {
        self.tar_ended = true;
    }

    /// `e`, an error of the tar stream, saying that its offsets count the
    /// decompressed tar when the package is compressed.
    pub fn in_tar(&self, e: Error) -> Error {
        match self.state {
            State::Compressed(_) => e.in_decompressed(),
            _ => e,
        }
    }

    /// Consumes a prefix of `input`; returns how many bytes were consumed
    /// and at most one piece.
    ///
    /// With non-empty input the result is never `(0, None)`. A piece may
    /// come with 0 bytes consumed; call again with the rest. Once the
    /// input is used up, call `step` with empty input until it returns
    /// `None`; when the source ends, call [`Unpacker::finish`] until it
    /// returns `None`.
    pub fn step(&mut self, input: &Bytes) -> Result<(usize, Option<Piece>)> {
        let mut used = 0;
        if let State::Sniffing = self.state {
            let take = (MAGIC_LEN - self.head.len()).min(input.len());
            self.head.extend_from_slice(&input[..take]);
            used = take;
            match sniff(&self.head, false) {
                None => return Ok((used, None)),
                Some(c) => self.choose(c)?,
            }
        }
        if let Some(p) = self.replay()? {
            return Ok((used, Some(p)));
        }
        let (n, piece) = self.stage(input, used)?;
        Ok((used + n, piece))
    }

    /// The source ended: what the stages still hold, piece by piece, then
    /// `None` once the container is known to be complete; an error if it
    /// is not (a compressed stream or a zip archive cut short). A plain
    /// tar archive's completeness is the demux's to judge.
    pub fn finish(&mut self) -> Result<Option<Piece>> {
        if let State::Sniffing = self.state {
            let c = sniff(&self.head, true).unwrap_or(Container::Tar);
            self.choose(c)?;
        }
        if let Some(p) = self.replay()? {
            return Ok(Some(p));
        }
        let empty = Bytes::new();
        if let (_, Some(p)) = self.stage(&empty, 0)? {
            return Ok(Some(p));
        }
        match &mut self.state {
            State::Sniffing | State::Tar => Ok(None),
            State::Compressed(d) => {
                let consumed = d.consumed();
                match d.finish().map_err(Error::from)? {
                    Some(b) => self
                        .count_after_end(b.len(), consumed)
                        .map(|()| Some(Piece::Tar(b))),
                    None => Ok(None),
                }
            }
            State::Zip(z) => {
                z.finish().map_err(zip_error)?;
                Ok(None)
            }
        }
    }

    fn choose(&mut self, c: Container) -> Result<()> {
        self.state = match c {
            Container::Tar => State::Tar,
            Container::Compressed(c) => {
                State::Compressed(Box::new(Decompressor::new(c).map_err(Error::from)?))
            }
            Container::Zip => State::Zip(Box::new(ZipDemux::new())),
        };
        Ok(())
    }

    /// Feeds the stage what it has not taken of the head of the stream.
    fn replay(&mut self) -> Result<Option<Piece>> {
        while !self.head.is_empty() {
            let head = Bytes::from(std::mem::take(&mut self.head));
            let (n, piece) = self.stage(&head, 0)?;
            self.head = head[n..].to_vec();
            if piece.is_some() {
                return Ok(piece);
            }
            if n == 0 {
                break;
            }
        }
        Ok(None)
    }

    /// One step of the chosen stage over `input[from..]`.
    fn stage(&mut self, input: &Bytes, from: usize) -> Result<(usize, Option<Piece>)> {
        let rest = &input[from..];
        match &mut self.state {
            State::Sniffing => Err(Error::new(
                ErrorKind::InvalidArgument,
                "the package container is not known yet",
            )),
            State::Tar => Ok(if rest.is_empty() {
                (0, None)
            } else {
                (rest.len(), Some(Piece::Tar(input.slice(from..))))
            }),
            State::Compressed(d) => {
                let consumed = d.consumed();
                let (n, b) = d.step(rest).map_err(Error::from)?;
                match b {
                    Some(b) => {
                        self.count_after_end(b.len(), consumed)?;
                        Ok((n, Some(Piece::Tar(b))))
                    }
                    None => Ok((n, None)),
                }
            }
            State::Zip(z) => {
                let mut used = 0;
                loop {
                    let (n, ev) = z.step(&rest[used..]).map_err(zip_error)?;
                    used += n;
                    let piece = match ev {
                        None => return Ok((used, None)),
                        // The end record needs no handling: finish says
                        // whether it came.
                        Some(zip::Event::Eof) => continue,
                        Some(zip::Event::Begin(h)) => Piece::Begin(h),
                        Some(zip::Event::Data(d)) => Piece::Data(d),
                        Some(zip::Event::End) => Piece::End,
                    };
                    return Ok((used, Some(piece)));
                }
            }
        }
    }

    fn count_after_end(&mut self, n: usize, consumed: u64) -> Result<()> {
        if !self.tar_ended {
            return Ok(());
        }
        self.after_end += n as u64;
        if self.after_end > limits::MAX_AFTER_TAR_END {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the decompressed package goes on for more than {} MiB after the end of its tar archive",
                    limits::MAX_AFTER_TAR_END >> 20
                ),
            )
            .at_offset(consumed));
        }
        Ok(())
    }
}

/// Everything the unpacker hands on for `data` fed in pieces of the sizes
/// `cuts` yields (cycled), tar bytes and member data merged, and how it
/// ended; checks the step contract on the way.
#[cfg(any(test, feature = "fuzzing"))]
fn run_split(data: &[u8], cuts: &[usize]) -> (Vec<Piece>, std::result::Result<(), String>) {
    let mut u = Unpacker::new();
    let mut out: Vec<Piece> = Vec::new();
    let push = |p: Piece, out: &mut Vec<Piece>| match (out.last_mut(), p) {
        (Some(Piece::Tar(a)), Piece::Tar(b)) => *a = [&a[..], &b[..]].concat().into(),
        (Some(Piece::Data(a)), Piece::Data(b)) => *a = [&a[..], &b[..]].concat().into(),
        (_, p) => out.push(p),
    };
    let mut rest = data;
    let mut i = 0;
    let mut feed = |piece: &[u8], out: &mut Vec<Piece>| -> Result<()> {
        let mut input = Bytes::copy_from_slice(piece);
        loop {
            let (n, p) = u.step(&input)?;
            assert!(n <= input.len(), "consumed more than given");
            assert!(n > 0 || p.is_some() || input.is_empty(), "(0, None)");
            let _ = input.split_to(n);
            match p {
                Some(p) => push(p, out),
                None if input.is_empty() => return Ok(()),
                None => {}
            }
        }
    };
    let mut result = Ok(());
    while !rest.is_empty() {
        let cut = cuts
            .get(i % cuts.len().max(1))
            .copied()
            .unwrap_or(usize::MAX);
        i += 1;
        let piece = &rest[..cut.clamp(1, rest.len())];
        rest = &rest[piece.len()..];
        if let Err(e) = feed(piece, &mut out) {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        result = loop {
            match u.finish() {
                Ok(Some(p)) => push(p, &mut out),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
    }
    let result = result.map_err(|e| e.to_string());
    if result.is_err() {
        // How much passed before the damage was noticed depends on the
        // cuts; what was verified does not.
        while matches!(out.last(), Some(Piece::Tar(_) | Piece::Data(_))) {
            out.pop();
        }
    }
    (out, result)
}

/// Fuzzing entry point: the container stage (the magic, then gzip, xz,
/// zstd or zip) over `data` whole and cut two other ways must hand on the
/// same pieces and end the same way, and keep its step contract. Not a
/// stable API.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_entry(data: &[u8]) {
    let whole = run_split(data, &[usize::MAX]);
    let seed = data
        .iter()
        .fold(11usize, |a, &b| a.wrapping_mul(31) ^ usize::from(b));
    let odd: Vec<usize> = (0..16).map(|k| 1 + (seed >> (k % 8)) % 900).collect();
    assert_eq!(run_split(data, &odd), whole, "split changed the result");
    assert_eq!(
        run_split(data, &[1, 5, 2, 64]),
        whole,
        "split changed the result"
    );
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Every piece of `data` fed in pieces of `piece` bytes, then the end.
    fn pieces(data: &[u8], piece: usize) -> Result<Vec<Piece>> {
        let mut u = Unpacker::new();
        let mut out = Vec::new();
        let push = |p: Piece, out: &mut Vec<Piece>| match (out.last_mut(), p) {
            (Some(Piece::Tar(a)), Piece::Tar(b)) => *a = [&a[..], &b[..]].concat().into(),
            (Some(Piece::Data(a)), Piece::Data(b)) => *a = [&a[..], &b[..]].concat().into(),
            (_, p) => out.push(p),
        };
        for chunk in data.chunks(piece.max(1)) {
            let mut input = Bytes::copy_from_slice(chunk);
            loop {
                let (n, p) = u.step(&input)?;
                assert!(n > 0 || p.is_some() || input.is_empty(), "(0, None)");
                let _ = input.split_to(n);
                match p {
                    Some(p) => push(p, &mut out),
                    None if input.is_empty() => break,
                    None => {}
                }
            }
        }
        while let Some(p) = u.finish()? {
            push(p, &mut out);
        }
        Ok(out)
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn sniffing_decides_on_the_magic() {
        let c = |h: &[u8]| sniff(h, false);
        assert_eq!(
            c(b"\x1f\x8b\x08"),
            Some(Container::Compressed(Compression::Gzip))
        );
        assert_eq!(
            c(b"\xfd7zXZ\0"),
            Some(Container::Compressed(Compression::Xz))
        );
        assert_eq!(
            c(b"\x28\xb5\x2f\xfd"),
            Some(Container::Compressed(Compression::Zstd))
        );
        assert_eq!(
            c(b"\x5e\x2a\x4d\x18"),
            Some(Container::Compressed(Compression::Zstd))
        );
        assert_eq!(c(b"PK\x03\x04"), Some(Container::Zip));
        assert_eq!(c(b"PK\x05\x06"), Some(Container::Zip));
        assert_eq!(c(b"vm.ovf\0\0"), Some(Container::Tar));
        // A prefix of a magic waits, unless the stream ended.
        assert_eq!(c(b"\xfd7zX"), None);
        assert_eq!(c(b"PK"), None);
        assert_eq!(c(b""), None);
        assert_eq!(sniff(b"PK", true), Some(Container::Tar));
        assert_eq!(c(b"PKzz"), Some(Container::Tar));
        assert_eq!(c(b"v"), Some(Container::Tar));
    }

    #[test]
    fn plain_tar_passes_through_whatever_the_feed() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        for piece in [1, 2, 5, 6, 7, 512, 4096] {
            assert_eq!(
                pieces(&data, piece).unwrap(),
                vec![Piece::Tar(Bytes::from(data.clone()))],
                "piece {piece}"
            );
        }
        // Shorter than a magic, and a prefix of one.
        assert_eq!(
            pieces(b"PK", 1).unwrap(),
            vec![Piece::Tar(Bytes::from_static(b"PK"))]
        );
        assert_eq!(pieces(b"", 1).unwrap(), Vec::new());
    }

    #[test]
    fn compressed_tar_is_decompressed_in_every_split() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 13) as u8).collect();
        let z = gz(&data);
        let want = vec![Piece::Tar(Bytes::from(data.clone()))];
        let mut u = Unpacker::new();
        let _ = u.step(&Bytes::from(z.clone())).unwrap();
        assert_eq!(
            u.container(),
            Some(Container::Compressed(Compression::Gzip))
        );
        for cut in 1..z.len() {
            let mut u = Unpacker::new();
            let mut got = Vec::new();
            for part in [&z[..cut], &z[cut..]] {
                let mut input = Bytes::copy_from_slice(part);
                loop {
                    let (n, p) = u.step(&input).unwrap();
                    let _ = input.split_to(n);
                    match p {
                        Some(Piece::Tar(b)) => got.extend_from_slice(&b),
                        Some(other) => panic!("{other:?}"),
                        None if input.is_empty() => break,
                        None => {}
                    }
                }
            }
            while let Some(Piece::Tar(b)) = u.finish().unwrap() {
                got.extend_from_slice(&b);
            }
            assert_eq!(got, data, "cut at {cut}");
        }
        for piece in [1, 3, 6, 7] {
            assert_eq!(pieces(&z, piece).unwrap(), want, "piece {piece}");
        }
        // Cut short: the compressed stream says so at the end.
        let e = pieces(&z[..z.len() - 2], 100).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn zip_members_come_as_entries() {
        // A one-member zip with a stored member, written by hand.
        let data = b"<Envelope/>";
        let mut c = flate2::Crc::new();
        c.update(data);
        let mut z = Vec::new();
        z.extend_from_slice(b"PK\x03\x04\x14\0\0\0\0\0\0\0\0\0");
        z.extend_from_slice(&c.sum().to_le_bytes());
        z.extend_from_slice(&(data.len() as u32).to_le_bytes());
        z.extend_from_slice(&(data.len() as u32).to_le_bytes());
        z.extend_from_slice(&6u16.to_le_bytes());
        z.extend_from_slice(&0u16.to_le_bytes());
        z.extend_from_slice(b"vm.ovf");
        z.extend_from_slice(data);
        let cd = z.len() as u32;
        z.extend_from_slice(b"PK\x01\x02\x14\0\x14\0\0\0\0\0\0\0\0\0");
        z.extend_from_slice(&c.sum().to_le_bytes());
        z.extend_from_slice(&(data.len() as u32).to_le_bytes());
        z.extend_from_slice(&(data.len() as u32).to_le_bytes());
        z.extend_from_slice(&6u16.to_le_bytes());
        z.extend_from_slice(&[0; 12]);
        z.extend_from_slice(&0u32.to_le_bytes());
        z.extend_from_slice(b"vm.ovf");
        let cd_len = z.len() as u32 - cd;
        z.extend_from_slice(b"PK\x05\x06\0\0\0\0\x01\0\x01\0");
        z.extend_from_slice(&cd_len.to_le_bytes());
        z.extend_from_slice(&cd.to_le_bytes());
        z.extend_from_slice(&0u16.to_le_bytes());
        for piece in [1, 4, 5, 7, 1000] {
            let got = pieces(&z, piece).unwrap();
            let [Piece::Begin(h), Piece::Data(d), Piece::End] = &got[..] else {
                panic!("piece {piece}: {got:?}");
            };
            assert_eq!(h.entry_header().name, "vm.ovf");
            assert_eq!(h.entry_header().size, 11);
            assert_eq!(h.entry_header().data_offset, 36);
            assert!(!h.is_inflated());
            assert_eq!(&d[..], data);
        }
        // Without its central directory the archive is cut short.
        let e = pieces(&z[..cd as usize], 64).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn seeded_damage_never_breaks_the_contract() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 97) as u8).collect();
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::bulk::compress(&data, 3).unwrap();
        let mut rng = crate::test_support::Rng(0x000a_5eed);
        for input in [gz(&data), xz, zst] {
            fuzz_entry(&input);
            for _ in 0..150 {
                let mut bad = input.clone();
                match rng.below(3) {
                    0 => bad.truncate(rng.below(input.len() as u64) as usize),
                    1 => {
                        let at = rng.below(input.len() as u64) as usize;
                        bad[at] ^= 1 << rng.below(8);
                    }
                    _ => {
                        let at = rng.below(input.len() as u64) as usize;
                        bad.insert(at, rng.next() as u8);
                    }
                }
                fuzz_entry(&bad);
            }
        }
    }

    #[test]
    fn a_compressed_tail_after_the_tar_is_bounded() {
        let z = gz(&vec![0u8; (limits::MAX_AFTER_TAR_END + (1 << 20)) as usize]);
        let mut u = Unpacker::new();
        let mut input = Bytes::from(z);
        let mut first = true;
        let e = loop {
            match u.step(&input) {
                Ok((n, p)) => {
                    let _ = input.split_to(n);
                    if first && p.is_some() {
                        // As if the tar ended in the first piece.
                        u.tar_ended();
                        first = false;
                    }
                    if p.is_none() && input.is_empty() {
                        panic!("the whole tail was accepted");
                    }
                }
                Err(e) => break e,
            }
        };
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
        assert!(
            e.to_string().contains("after the end of its tar archive"),
            "{e}"
        );
    }
}
