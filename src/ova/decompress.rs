//! Whole-package decompression: the push stage in front of the tar demux
//! for a package compressed as a whole (`.ova.gz`, `.ova.xz`, `.ova.zst`).
//!
//! [`Decompressor::step`] is fed compressed bytes in pieces of any size and
//! hands out the decompressed bytes in pieces of at most
//! [`limits::DECOMPRESSED_CHUNK`], whatever the expansion: memory is that
//! buffer plus the codec's own window (xz's dictionary and zstd's window
//! are capped at [`limits::MAX_DECOMPRESSOR_WINDOW`]), never the image.
//! Concatenations read as one stream, as the command-line tools read them:
//! gzip members (and zero bytes after the last, which gzip ignores), xz
//! streams (and their padding), zstd frames (skippable ones too).
//!
//! gzip is framed here (RFC 1952 header and trailer, CRC-32 and length
//! checked) around a raw inflater, [`Inflate`], which the zip reader
//! shares; xz is liblzma, the library of xz-utils itself, driven through
//! its push interface; zstd is libzstd's streaming decoder.

use std::fmt;

use bytes::{Bytes, BytesMut};
use flate2::{Crc, Decompress, FlushDecompress, Status};
use liblzma::stream::{Action, Stream as XzStream};
use zstd::stream::raw::{DParameter, Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

use crate::error::{Classify, ErrorKind};
use crate::limits;

/// How a whole package is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (RFC 1952), possibly several members.
    Gzip,
    /// xz, possibly several streams.
    Xz,
    /// Zstandard, possibly several frames.
    Zstd,
}

impl Compression {
    /// The name used in summaries and messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a compressed package could not be decompressed. Offsets count
/// compressed bytes: bytes of the package as it was given. They do not
/// depend on how the input was cut: corrupt data is placed at the start
/// of its gzip member, or not placed (xz and zstd do not say where).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    /// The compressed data is invalid.
    #[error("corrupt {compression} data in the compressed package: {reason}")]
    Corrupt {
        /// The compression.
        compression: Compression,
        /// Where, when known.
        offset: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// The compressed data ends before its stream does.
    #[error(
        "the {compression}-compressed package is truncated: its compressed data ends inside {what}"
    )]
    Truncated {
        /// The compression.
        compression: Compression,
        /// Where the data ended.
        offset: u64,
        /// The part of the stream that was cut.
        what: &'static str,
    },
    /// The stream needs a larger dictionary or window than accepted.
    #[error(
        "the {compression} data needs more than {limit} MiB of memory to decompress (its dictionary or window); ovaio accepts up to {limit} MiB",
        limit = limits::MAX_DECOMPRESSOR_WINDOW >> 20
    )]
    Memory {
        /// The compression.
        compression: Compression,
        /// Compressed bytes consumed when it was found.
        offset: u64,
    },
}

impl Classify for DecompressError {
    fn kind(&self) -> ErrorKind {
        match self {
            DecompressError::Memory { .. } => ErrorKind::LimitExceeded,
            _ => ErrorKind::CorruptImage,
        }
    }

    /// Offset in the package (compressed bytes).
    fn offset(&self) -> Option<u64> {
        match *self {
            DecompressError::Corrupt { offset, .. } => offset,
            DecompressError::Truncated { offset, .. } | DecompressError::Memory { offset, .. } => {
                Some(offset)
            }
        }
    }
}

/// Raw deflate (RFC 1951), pushed: what gzip members and deflated zip
/// members hold. It keeps the CRC-32 and the length of what it inflated,
/// and stops exactly at the end of the deflate stream, so the bytes after
/// it (a gzip trailer, a zip data descriptor) are left to the caller.
pub(crate) struct Inflate {
    z: Decompress,
    crc: Crc,
    done: bool,
}

impl fmt::Debug for Inflate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inflate")
            .field("total_in", &self.z.total_in())
            .field("total_out", &self.z.total_out())
            .field("done", &self.done)
            .finish()
    }
}

impl Inflate {
    pub(crate) fn new() -> Self {
        Inflate {
            z: Decompress::new(false),
            crc: Crc::new(),
            done: false,
        }
    }

    /// Inflates from `input` into `out`; returns the bytes consumed and
    /// produced. Both are 0 only when `out` is empty, the stream is done,
    /// or the inflater needs more input than `input` holds (`input` empty).
    pub(crate) fn run(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), String> {
        if self.done || out.is_empty() {
            return Ok((0, 0));
        }
        let (in0, out0) = (self.z.total_in(), self.z.total_out());
        let status = self
            .z
            .decompress(input, out, FlushDecompress::None)
            .map_err(|e| e.to_string())?;
        let used = (self.z.total_in() - in0) as usize;
        let produced = (self.z.total_out() - out0) as usize;
        self.crc.update(&out[..produced]);
        match status {
            Status::StreamEnd => self.done = true,
            Status::Ok | Status::BufError => {
                if used == 0 && produced == 0 && !input.is_empty() {
                    return Err("the inflater made no progress".into());
                }
            }
        }
        Ok((used, produced))
    }

    /// Whether the deflate stream's final block has been inflated and
    /// handed out.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// CRC-32 of everything inflated.
    pub(crate) fn crc(&self) -> u32 {
        self.crc.sum()
    }

    /// Compressed bytes consumed.
    pub(crate) fn total_in(&self) -> u64 {
        self.z.total_in()
    }

    /// Bytes inflated.
    pub(crate) fn total_out(&self) -> u64 {
        self.z.total_out()
    }
}

/// The decompressor of a whole package; see the module documentation.
pub struct Decompressor {
    compression: Compression,
    codec: Codec,
    /// Compressed bytes consumed.
    consumed: u64,
    /// The output buffer; pieces are split off it.
    out: BytesMut,
    finished: bool,
    /// Sticky: once failed, every call returns this error.
    failed: Option<DecompressError>,
}

impl fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decompressor")
            .field("compression", &self.compression)
            .field("consumed", &self.consumed)
            .field("finished", &self.finished)
            .field("failed", &self.failed)
            .finish()
    }
}

enum Codec {
    Gzip(Box<Gzip>),
    Xz(Box<XzStream>),
    Zstd(Box<Zstd>),
}

/// What one codec call did.
struct Progress {
    used: usize,
    produced: usize,
}

/// A codec's own failure, turned into a [`DecompressError`] by the caller.
enum Failure {
    /// What is wrong, and where in the package when the codec knows.
    Corrupt(String, Option<u64>),
    Truncated(&'static str),
    Memory,
}

impl Decompressor {
    /// A decompressor at the start of a `compression` stream.
    pub fn new(compression: Compression) -> Result<Self, DecompressError> {
        let setup = |reason: String| DecompressError::Corrupt {
            compression,
            offset: None,
            reason,
        };
        let codec = match compression {
            Compression::Gzip => Codec::Gzip(Box::new(Gzip::new())),
            Compression::Xz => Codec::Xz(Box::new(
                XzStream::new_stream_decoder(
                    limits::MAX_DECOMPRESSOR_WINDOW,
                    liblzma::stream::CONCATENATED,
                )
                .map_err(|e| setup(e.to_string()))?,
            )),
            Compression::Zstd => {
                let mut d = ZstdDecoder::new().map_err(|e| setup(e.to_string()))?;
                d.set_parameter(DParameter::WindowLogMax(
                    limits::MAX_DECOMPRESSOR_WINDOW.trailing_zeros(),
                ))
                .map_err(|e| setup(e.to_string()))?;
                Codec::Zstd(Box::new(Zstd {
                    d,
                    frame_open: false,
                }))
            }
        };
        Ok(Decompressor {
            compression,
            codec,
            consumed: 0,
            out: BytesMut::new(),
            finished: false,
            failed: None,
        })
    }

    /// The compression being undone.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Compressed bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Consumes a prefix of `input` and returns how much, with the next
    /// piece of decompressed bytes if any came out.
    ///
    /// With non-empty input the result is never `(0, None)`. A piece may
    /// come with 0 bytes consumed (output the codec still held); call
    /// again with the rest. Once the input is used up, call `step(&[])`
    /// until it returns `None`, so that nothing stays held; when the
    /// source ends, call [`Decompressor::finish`].
    ///
    /// Errors are sticky: after one, every call returns it again.
    pub fn step(&mut self, input: &[u8]) -> Result<(usize, Option<Bytes>), DecompressError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.out.len() < limits::DECOMPRESSED_CHUNK {
            self.out.resize(limits::DECOMPRESSED_CHUNK, 0);
        }
        let out = &mut self.out[..limits::DECOMPRESSED_CHUNK];
        let result = match &mut self.codec {
            Codec::Gzip(g) => g.run(input, out, self.consumed),
            Codec::Xz(x) => xz_run(x, input, out, Action::Run),
            Codec::Zstd(z) => z.run(input, out),
        };
        let p = self.account(result)?;
        if p.used == 0 && p.produced == 0 && !input.is_empty() {
            return Err(self.fail(Failure::Corrupt(
                "the decompressor made no progress".into(),
                None,
            )));
        }
        Ok((p.used, self.piece(p.produced)))
    }

    /// The source ended: returns what the codec still held, piece by
    /// piece, then `None` once the compressed stream is known to be
    /// complete; an error if it is not.
    pub fn finish(&mut self) -> Result<Option<Bytes>, DecompressError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.finished {
            return Ok(None);
        }
        if self.out.len() < limits::DECOMPRESSED_CHUNK {
            self.out.resize(limits::DECOMPRESSED_CHUNK, 0);
        }
        let out = &mut self.out[..limits::DECOMPRESSED_CHUNK];
        let result = match &mut self.codec {
            Codec::Gzip(g) => g.finish(out, self.consumed),
            Codec::Xz(x) => xz_finish(x, out),
            Codec::Zstd(z) => z.finish(out),
        };
        match result {
            // A piece still held; completeness is judged once it is out.
            Ok((p, done)) if p.produced > 0 => {
                let p = self.account(Ok(p))?;
                self.finished = done;
                Ok(self.piece(p.produced))
            }
            Ok((_, true)) => {
                self.finished = true;
                Ok(None)
            }
            Ok((_, false)) => Err(self.fail(Failure::Corrupt(
                "the decompressor made no progress at the end of its input".into(),
                None,
            ))),
            Err(f) => Err(self.fail(f)),
        }
    }

    fn account(&mut self, r: Result<Progress, Failure>) -> Result<Progress, DecompressError> {
        match r {
            Ok(p) => {
                self.consumed += p.used as u64;
                Ok(p)
            }
            Err(f) => Err(self.fail(f)),
        }
    }

    fn piece(&mut self, produced: usize) -> Option<Bytes> {
        (produced > 0).then(|| self.out.split_to(produced).freeze())
    }

    fn fail(&mut self, f: Failure) -> DecompressError {
        let (compression, offset) = (self.compression, self.consumed);
        let e = match f {
            Failure::Corrupt(reason, at) => DecompressError::Corrupt {
                compression,
                offset: at,
                reason,
            },
            Failure::Truncated(what) => DecompressError::Truncated {
                compression,
                offset,
                what,
            },
            Failure::Memory => DecompressError::Memory {
                compression,
                offset,
            },
        };
        self.failed = Some(e.clone());
        e
    }
}

fn xz_run(
    x: &mut XzStream,
    input: &[u8],
    out: &mut [u8],
    action: Action,
) -> Result<Progress, Failure> {
    let (in0, out0) = (x.total_in(), x.total_out());
    let r = x.process(input, out, action);
    let p = Progress {
        used: (x.total_in() - in0) as usize,
        produced: (x.total_out() - out0) as usize,
    };
    match r {
        Ok(_) => Ok(p),
        Err(liblzma::stream::Error::MemLimit) => Err(Failure::Memory),
        Err(e) => Err(Failure::Corrupt(e.to_string(), None)),
    }
}

/// Ends an xz decode: output still held, then whether the last stream is
/// complete (liblzma says so with `StreamEnd` once told the input ended).
fn xz_finish(x: &mut XzStream, out: &mut [u8]) -> Result<(Progress, bool), Failure> {
    let (in0, out0) = (x.total_in(), x.total_out());
    let r = x.process(&[], out, Action::Finish);
    let p = Progress {
        used: (x.total_in() - in0) as usize,
        produced: (x.total_out() - out0) as usize,
    };
    match r {
        Ok(liblzma::stream::Status::StreamEnd) => Ok((p, true)),
        Ok(_) if p.produced > 0 => Ok((p, false)),
        Ok(_) => Err(Failure::Truncated("an xz stream")),
        Err(liblzma::stream::Error::MemLimit) => Err(Failure::Memory),
        Err(e) => Err(Failure::Corrupt(e.to_string(), None)),
    }
}

/// libzstd's streaming decoder and whether a frame is open.
struct Zstd {
    d: ZstdDecoder<'static>,
    /// A frame has begun and not ended: the input may not end here.
    frame_open: bool,
}

impl Zstd {
    fn run(&mut self, input: &[u8], out: &mut [u8]) -> Result<Progress, Failure> {
        let mut inb = InBuffer::around(input);
        let mut outb = OutBuffer::around(out);
        let hint = self.d.run(&mut inb, &mut outb).map_err(|e| {
            let reason = e.to_string();
            if reason.contains("too much memory") || reason.contains("too large") {
                Failure::Memory
            } else {
                Failure::Corrupt(reason, None)
            }
        })?;
        let p = Progress {
            used: inb.pos(),
            produced: outb.pos(),
        };
        // Between frames the decoder asks for a header again whatever was
        // fed; only a call that moved says where the stream stands.
        if p.used > 0 || p.produced > 0 {
            self.frame_open = hint != 0;
        }
        Ok(p)
    }

    fn finish(&mut self, out: &mut [u8]) -> Result<(Progress, bool), Failure> {
        let p = self.run(&[], out)?;
        if p.produced > 0 {
            return Ok((p, false));
        }
        if self.frame_open {
            return Err(Failure::Truncated("a zstd frame"));
        }
        Ok((p, true))
    }
}

/// Where a gzip stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GzState {
    /// The 10 fixed header bytes.
    Fixed,
    /// `XLEN`, two bytes.
    ExtraLen,
    /// `XLEN` bytes of extra field, this many left.
    Extra(usize),
    /// The zero-terminated file name.
    Name,
    /// The zero-terminated comment.
    Comment,
    /// The header's own CRC-16.
    HeaderCrc,
    /// The deflate data.
    Body,
    /// CRC-32 and ISIZE.
    Trailer,
    /// After a member: another member, zero padding, or the end.
    Between,
    /// Zero bytes after the last member.
    Padding,
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

/// gzip framing around [`Inflate`].
struct Gzip {
    state: GzState,
    inflate: Inflate,
    /// Fixed-size fields being assembled.
    field: [u8; 10],
    fill: usize,
    flags: u8,
    /// CRC-32 of the member's header bytes so far, for `FHCRC`.
    header_crc: Crc,
    /// Package offset of the current member's first byte.
    member_start: u64,
}

impl Gzip {
    fn new() -> Self {
        Gzip {
            state: GzState::Fixed,
            inflate: Inflate::new(),
            field: [0; 10],
            fill: 0,
            flags: 0,
            header_crc: Crc::new(),
            member_start: 0,
        }
    }

    /// Copies up to `want` bytes of a fixed-size field from `input`;
    /// returns how many, and whether the field is complete.
    fn gather(&mut self, input: &[u8], want: usize) -> (usize, bool) {
        let n = (want - self.fill).min(input.len());
        self.field[self.fill..self.fill + n].copy_from_slice(&input[..n]);
        self.fill += n;
        (n, self.fill == want)
    }

    /// Runs over `input`, which starts at package offset `base`.
    fn run(&mut self, input: &[u8], out: &mut [u8], base: u64) -> Result<Progress, Failure> {
        let mut used = 0;
        let mut produced = 0;
        loop {
            let rest = &input[used..];
            let member = Some(self.member_start);
            match self.state {
                GzState::Body => {
                    let (u, p) = self
                        .inflate
                        .run(rest, &mut out[produced..])
                        .map_err(|why| {
                            Failure::Corrupt(
                                format!("invalid deflate data in the gzip member that starts here: {why}"),
                                member,
                            )
                        })?;
                    used += u;
                    produced += p;
                    if self.inflate.is_done() {
                        self.state = GzState::Trailer;
                        self.fill = 0;
                        continue;
                    }
                    return Ok(Progress { used, produced });
                }
                _ if rest.is_empty() => return Ok(Progress { used, produced }),
                GzState::Between => match rest[0] {
                    0x1f => self.start_member(base + used as u64),
                    0 => self.state = GzState::Padding,
                    _ => {
                        return Err(Failure::Corrupt(
                            "data after the end of the gzip stream".into(),
                            Some(base + used as u64),
                        ));
                    }
                },
                GzState::Padding => {
                    if let Some(i) = rest.iter().position(|&b| b != 0) {
                        return Err(Failure::Corrupt(
                            "data after the zero padding that ends the gzip stream".into(),
                            Some(base + (used + i) as u64),
                        ));
                    }
                    used += rest.len();
                }
                GzState::Fixed => {
                    let (n, whole) = self.gather(rest, 10);
                    self.header_crc.update(&rest[..n]);
                    used += n;
                    if whole {
                        self.fixed_header()
                            .map_err(|why| Failure::Corrupt(why, member))?;
                    }
                }
                GzState::ExtraLen => {
                    let (n, whole) = self.gather(rest, 2);
                    self.header_crc.update(&rest[..n]);
                    used += n;
                    if whole {
                        let len = u16::from_le_bytes([self.field[0], self.field[1]]);
                        self.state = GzState::Extra(usize::from(len));
                        self.fill = 0;
                    }
                }
                GzState::Extra(left) => {
                    let n = left.min(rest.len());
                    self.header_crc.update(&rest[..n]);
                    used += n;
                    self.state = GzState::Extra(left - n);
                    if left == n {
                        self.after_extra();
                    }
                }
                GzState::Name | GzState::Comment => {
                    let (n, end) = match rest.iter().position(|&b| b == 0) {
                        Some(i) => (i + 1, true),
                        None => (rest.len(), false),
                    };
                    self.header_crc.update(&rest[..n]);
                    used += n;
                    if end {
                        if self.state == GzState::Name {
                            self.after_name();
                        } else {
                            self.after_comment();
                        }
                    }
                }
                GzState::HeaderCrc => {
                    let (n, whole) = self.gather(rest, 2);
                    used += n;
                    if whole {
                        let stored = u16::from_le_bytes([self.field[0], self.field[1]]);
                        if u32::from(stored) != self.header_crc.sum() & 0xffff {
                            return Err(Failure::Corrupt(
                                "the CRC-16 of the gzip member header that starts here does not match"
                                    .into(),
                                member,
                            ));
                        }
                        self.state = GzState::Body;
                    }
                }
                GzState::Trailer => {
                    let (n, whole) = self.gather(rest, 8);
                    used += n;
                    if whole {
                        self.trailer()
                            .map_err(|why| Failure::Corrupt(why, member))?;
                    }
                }
            }
        }
    }

    fn start_member(&mut self, at: u64) {
        self.member_start = at;
        self.state = GzState::Fixed;
        self.fill = 0;
        self.header_crc = Crc::new();
        self.inflate = Inflate::new();
    }

    fn fixed_header(&mut self) -> Result<(), String> {
        let h = self.field;
        if h[0] != 0x1f || h[1] != 0x8b {
            return Err("not a gzip member header".into());
        }
        if h[2] != 8 {
            return Err(format!(
                "the gzip member that starts here uses compression method {}, not deflate",
                h[2]
            ));
        }
        if h[3] & 0xe0 != 0 {
            return Err("reserved flags are set in the gzip member header that starts here".into());
        }
        self.flags = h[3];
        self.fill = 0;
        if self.flags & FEXTRA != 0 {
            self.state = GzState::ExtraLen;
        } else {
            self.after_extra();
        }
        Ok(())
    }

    fn after_extra(&mut self) {
        if self.flags & FNAME != 0 {
            self.state = GzState::Name;
        } else {
            self.after_name();
        }
    }

    fn after_name(&mut self) {
        if self.flags & FCOMMENT != 0 {
            self.state = GzState::Comment;
        } else {
            self.after_comment();
        }
    }

    fn after_comment(&mut self) {
        self.fill = 0;
        self.state = if self.flags & FHCRC != 0 {
            GzState::HeaderCrc
        } else {
            GzState::Body
        };
    }

    fn trailer(&mut self) -> Result<(), String> {
        let t = self.field;
        let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
        let size = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        if crc != self.inflate.crc() {
            return Err(format!(
                "CRC-32 mismatch in the gzip member that starts here: its trailer says {crc:08x}, the data is {:08x}",
                self.inflate.crc()
            ));
        }
        // ISIZE is the length modulo 2^32.
        if size != self.inflate.total_out() as u32 {
            return Err(format!(
                "length mismatch in the gzip member that starts here: its trailer says {size} (mod 2^32), the data is {} bytes",
                self.inflate.total_out()
            ));
        }
        self.state = GzState::Between;
        Ok(())
    }

    /// Nothing is held back between calls; the stream must end between
    /// members.
    fn finish(&mut self, out: &mut [u8], base: u64) -> Result<(Progress, bool), Failure> {
        let p = self.run(&[], out, base)?;
        if p.produced > 0 {
            return Ok((p, false));
        }
        match self.state {
            GzState::Between | GzState::Padding => Ok((p, true)),
            GzState::Body => Err(Failure::Truncated("the deflate data of a gzip member")),
            GzState::Trailer => Err(Failure::Truncated("a gzip member trailer")),
            _ => Err(Failure::Truncated("a gzip member header")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gz(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// With a content checksum, as the zstd tool writes by default.
    fn zst(data: &[u8]) -> Vec<u8> {
        let mut e = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        e.include_checksum(true).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Runs `input` through a decompressor in pieces cut at `cuts`
    /// (offsets, increasing), checking the step contract on the way.
    fn run_cut(c: Compression, input: &[u8], cuts: &[usize]) -> Result<Vec<u8>, DecompressError> {
        let mut d = Decompressor::new(c)?;
        let mut out = Vec::new();
        let mut last = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            let mut piece = &input[last..cut.max(last)];
            last = cut.max(last);
            loop {
                let (n, b) = d.step(piece)?;
                assert!(n <= piece.len());
                assert!(n > 0 || b.is_some() || piece.is_empty(), "(0, None)");
                if let Some(b) = &b {
                    assert!(!b.is_empty() && b.len() <= limits::DECOMPRESSED_CHUNK);
                    out.extend_from_slice(b);
                }
                piece = &piece[n..];
                if piece.is_empty() && b.is_none() {
                    break;
                }
            }
        }
        while let Some(b) = d.finish()? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    fn run(c: Compression, input: &[u8], piece: usize) -> Result<Vec<u8>, DecompressError> {
        let cuts: Vec<usize> = (1..input.len().div_ceil(piece))
            .map(|i| i * piece)
            .collect();
        run_cut(c, input, &cuts)
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 % 7)
            .collect()
    }

    /// Every split in two, and byte by byte, gives the same bytes.
    fn every_split(c: Compression, input: &[u8], want: &[u8]) {
        for cut in 0..=input.len() {
            assert_eq!(run_cut(c, input, &[cut]).unwrap(), want, "{c} cut at {cut}");
        }
        assert_eq!(run(c, input, 1).unwrap(), want, "{c} byte by byte");
    }

    #[test]
    fn gzip_members_and_padding_in_every_split() {
        let a = sample(3000);
        let b = b"second member".to_vec();
        let mut input = gz(&a, 6);
        // A member with every optional header field, as RFC 1952 lays out.
        let mut hdr = vec![
            0x1f,
            0x8b,
            8,
            FEXTRA | FNAME | FCOMMENT | FHCRC,
            0,
            0,
            0,
            0,
            0,
            3,
        ];
        hdr.extend_from_slice(&[4, 0, b'a', b'b', 2, 0]);
        hdr.extend_from_slice(b"name\0comment\0");
        let mut crc = Crc::new();
        crc.update(&hdr);
        hdr.extend_from_slice(&(crc.sum() as u16).to_le_bytes());
        let plain = gz(&b, 1);
        hdr.extend_from_slice(&plain[10..]);
        input.extend_from_slice(&hdr);
        input.extend_from_slice(&[0; 5]);
        let mut want = a.clone();
        want.extend_from_slice(&b);
        every_split(Compression::Gzip, &input, &want);
    }

    #[test]
    fn xz_streams_in_every_split() {
        let a = sample(3000);
        let mut input = xz(&a);
        input.extend_from_slice(&[0; 4]); // stream padding
        input.extend_from_slice(&xz(b"second stream"));
        let mut want = a;
        want.extend_from_slice(b"second stream");
        every_split(Compression::Xz, &input, &want);
    }

    #[test]
    fn zstd_frames_in_every_split() {
        let a = sample(3000);
        // A skippable frame first, as pzstd writes one.
        let mut input = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3];
        input.extend_from_slice(&zst(&a));
        input.extend_from_slice(&zst(b"second frame"));
        let mut want = a;
        want.extend_from_slice(b"second frame");
        every_split(Compression::Zstd, &input, &want);
    }

    #[test]
    fn output_comes_in_bounded_pieces() {
        // A bomb: 16 MiB of zeros from a few KiB of input.
        let zeros = vec![0u8; 16 << 20];
        for (c, input) in [
            (Compression::Gzip, gz(&zeros, 9)),
            (Compression::Xz, xz(&zeros)),
            (Compression::Zstd, zst(&zeros)),
        ] {
            assert!(input.len() < 32 << 10, "{c}: {} bytes", input.len());
            let mut d = Decompressor::new(c).unwrap();
            let mut rest = &input[..];
            let mut total = 0u64;
            loop {
                let (n, b) = d.step(rest).unwrap();
                rest = &rest[n..];
                match b {
                    Some(b) => {
                        assert!(b.len() <= limits::DECOMPRESSED_CHUNK, "{c}");
                        total += b.len() as u64;
                    }
                    None if rest.is_empty() => break,
                    None => {}
                }
            }
            while let Some(b) = d.finish().unwrap() {
                total += b.len() as u64;
            }
            assert_eq!(total, zeros.len() as u64, "{c}");
        }
    }

    #[test]
    fn truncation_is_reported_wherever_the_data_ends() {
        let a = sample(5000);
        for (c, input) in [
            (Compression::Gzip, gz(&a, 6)),
            (Compression::Xz, xz(&a)),
            (Compression::Zstd, zst(&a)),
        ] {
            for end in 1..input.len() {
                let e = run(c, &input[..end], 100).expect_err("truncated");
                assert_eq!(e.kind(), ErrorKind::CorruptImage, "{c} at {end}: {e}");
            }
            let e = run(c, &input[..input.len() - 1], 7).unwrap_err();
            assert!(
                matches!(
                    e,
                    DecompressError::Truncated { .. } | DecompressError::Corrupt { .. }
                ),
                "{e}"
            );
        }
        // The message names the part that was cut and the offset.
        let input = gz(&a, 6);
        let e = run(Compression::Gzip, &input[..input.len() - 3], 64).unwrap_err();
        assert_eq!(
            e,
            DecompressError::Truncated {
                compression: Compression::Gzip,
                offset: input.len() as u64 - 3,
                what: "a gzip member trailer"
            }
        );
    }

    #[test]
    fn corruption_is_reported() {
        let a = sample(20_000);
        for (c, input) in [
            (Compression::Gzip, gz(&a, 6)),
            (Compression::Xz, xz(&a)),
            (Compression::Zstd, zst(&a)),
        ] {
            let mut bad = input.clone();
            let at = bad.len() / 2;
            bad[at] ^= 0x55;
            bad[at + 1] ^= 0xaa;
            let e = run(c, &bad, 1000).expect_err("corrupt");
            assert_eq!(e.kind(), ErrorKind::CorruptImage, "{c}: {e}");
            // Garbage after a complete stream is not ignored.
            let mut tail = input.clone();
            tail.extend_from_slice(b"garbage");
            assert!(run(c, &tail, 1000).is_err(), "{c}: trailing garbage");
            // Every error is sticky.
            let mut d = Decompressor::new(c).unwrap();
            let mut rest = &bad[..];
            let first = loop {
                match d.step(rest) {
                    Err(e) => break e,
                    Ok((n, b)) => {
                        rest = &rest[n..];
                        if rest.is_empty() && b.is_none() {
                            match d.finish() {
                                Err(e) => break e,
                                Ok(Some(_)) => {}
                                Ok(None) => panic!("{c}: corrupt data accepted"),
                            }
                        }
                    }
                }
            };
            assert_eq!(d.step(b"x").unwrap_err(), first, "{c}");
            assert_eq!(d.finish().unwrap_err(), first, "{c}");
        }
        let mut bad = gz(&a, 6);
        let n = bad.len();
        bad[n - 8] ^= 1; // the CRC-32
        let e = run(Compression::Gzip, &bad, 4096).unwrap_err();
        assert!(e.to_string().contains("CRC-32 mismatch"), "{e}");
    }

    #[test]
    fn windows_over_the_limit_are_refused() {
        // A zstd frame header asking for a 1 GiB window.
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x90];
        frame.extend_from_slice(&[0; 16]);
        let e = run(Compression::Zstd, &frame, 1024).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
        // An xz stream whose block header asks for a 1 GiB LZMA2
        // dictionary (properties byte 36), its CRC-32 made right again.
        let mut input = xz(b"small");
        let size = (usize::from(input[12]) + 1) * 4;
        let header = &mut input[12..12 + size];
        let at = header
            .windows(2)
            .position(|w| w == [0x21, 0x01])
            .expect("LZMA2 filter flags");
        header[at + 2] = 36;
        let mut crc = Crc::new();
        crc.update(&header[..size - 4]);
        header[size - 4..].copy_from_slice(&crc.sum().to_le_bytes());
        let e = run(Compression::Xz, &input, 1024).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    }

    #[test]
    fn inflate_stops_at_the_end_of_its_stream() {
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        raw.write_all(&sample(10_000)).unwrap();
        let mut data = raw.finish().unwrap();
        let len = data.len();
        data.extend_from_slice(b"after");
        for piece in [1, 3, 100, 1 << 20] {
            let mut inf = Inflate::new();
            let mut out = vec![0u8; 4096];
            let mut rest = &data[..];
            let mut total = Vec::new();
            while !inf.is_done() {
                let (u, p) = inf.run(&rest[..piece.min(rest.len())], &mut out).unwrap();
                total.extend_from_slice(&out[..p]);
                rest = &rest[u..];
            }
            assert_eq!(inf.total_in(), len as u64, "piece {piece}");
            assert_eq!(rest, b"after");
            assert_eq!(total, sample(10_000));
        }
    }
}
