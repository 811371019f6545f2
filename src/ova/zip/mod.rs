//! The zip reader: a no-I/O state machine that streams a zip archive (which
//! virt-v2v accepts as an OVA) from its local file headers, fed in pieces
//! of any size, into member events (`Begin`, `Data`..., `End`, and
//! finally `Eof`): what the tar demux gives for a tar archive, so that the
//! import treats zip members as it treats tar entries.
//!
//! Stored (method 0) and deflated (method 8) members are read; `Data` is
//! the member's uncompressed bytes, in pieces of at most
//! [`limits::DECOMPRESSED_CHUNK`]. Each member's CRC-32 and sizes are
//! checked at its end.
//!
//! What cannot be streamed, or would not read alike in every reader, is
//! refused, naming the member:
//! * a stored member with a data descriptor (general purpose flag bit 3):
//!   its local header does not give its size, and nothing in stored data
//!   marks where it ends. A *deflated* member with a data descriptor is
//!   read: the deflate stream ends itself, and the descriptor after it
//!   (with or without its signature) must agree with what was inflated;
//! * zip64, encryption, methods other than stored and deflated, archives
//!   split over several disks;
//! * names holding a NUL byte, or non-ASCII names not marked UTF-8.
//!
//! Other readers (unzip, Python's zipfile) go by the central directory at
//! the end; a streaming reader goes by the local headers. So every record
//! of the directory must describe the member the stream held at that
//! place (offset, name, method, CRC-32, sizes, in the same order), and the
//! end record must count them and locate the directory where it was: an
//! archive that would read one way here and another way there is refused,
//! as the tar demux refuses what tar readers size differently.

mod error;
#[cfg(any(test, feature = "fuzzing"))]
mod fuzz;
mod names;
mod records;
#[cfg(test)]
mod tests;

pub use error::ZipError;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub use fuzz::fuzz_entry;

use bytes::{Bytes, BytesMut};
use flate2::Crc;

use crate::error::{Classify, ErrorKind};
use crate::limits;
use crate::ova::decompress::Inflate;

const LOCAL: [u8; 4] = *b"PK\x03\x04";
const CENTRAL: [u8; 4] = *b"PK\x01\x02";
const END: [u8; 4] = *b"PK\x05\x06";
const ZIP64_END: [u8; 4] = *b"PK\x06\x06";
const ZIP64_LOCATOR: [u8; 4] = *b"PK\x06\x07";
const DESCRIPTOR: [u8; 4] = *b"PK\x07\x08";

const LOCAL_LEN: usize = 30;
const CENTRAL_LEN: usize = 46;
const END_LEN: usize = 22;

const ENCRYPTED: u16 = 1 << 0;
const DATA_DESCRIPTOR: u16 = 1 << 3;
const PATCHED: u16 = 1 << 5;
const STRONG_ENCRYPTION: u16 = 1 << 6;
const UTF8: u16 = 1 << 11;
const MASKED_HEADERS: u16 = 1 << 13;

/// A 32-bit field at its maximum: the value lives in a zip64 record.
const ZIP64_MARK: u32 = u32::MAX;

/// How a member's data is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Method 0: the bytes as they are.
    Stored,
    /// Method 8: raw deflate.
    Deflated,
}

/// A member, as its local header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHeader {
    /// The member's name (UTF-8 when flagged, else ASCII).
    pub name: String,
    /// Uncompressed size, when the local header gives it (not for a
    /// member with a data descriptor).
    pub size: Option<u64>,
    /// Stored or deflated.
    pub method: Method,
    /// A directory member (its name ends with `/`); it holds no data.
    pub directory: bool,
    /// Archive offset of the local header.
    pub header_offset: u64,
    /// Archive offset of the member's (compressed) data.
    pub data_offset: u64,
}

/// One step's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member starts.
    Begin(MemberHeader),
    /// Uncompressed bytes of the current member.
    Data(Bytes),
    /// The current member is complete and its CRC-32 and sizes verified.
    End,
    /// The end record was read: the archive is complete. Bytes after it
    /// are consumed and ignored.
    Eof,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[derive(Debug)]
enum State {
    /// Expecting a record signature (assembled in `buf`).
    Signature,
    /// Assembling a local file header.
    Local,
    /// Stored data, this many bytes left.
    Stored { remaining: u64 },
    /// Deflate data; compressed bytes left when the local header gives
    /// the size.
    Deflated { remaining: Option<u64> },
    /// The data descriptor after a member with flag bit 3.
    Descriptor,
    /// The member is complete; `End` is due.
    EndDue,
    /// Assembling a central directory record.
    Central,
    /// Assembling the end of central directory record.
    EndRecord,
    /// The archive comment, this many bytes left.
    Comment { remaining: u64 },
    /// `Eof` is due.
    EofDue,
    /// After the end record.
    Done,
}

/// What the stream held for one member, to compare with its central
/// directory record.
#[derive(Debug)]
struct Seen {
    offset: u64,
    name: Vec<u8>,
    flags: u16,
    method: u16,
    crc: u32,
    csize: u64,
    usize: u64,
}

/// The member being read.
#[derive(Debug)]
struct Current {
    name: String,
    raw_name: Vec<u8>,
    flags: u16,
    method: u16,
    directory: bool,
    header_offset: u64,
    data_offset: u64,
    /// From the local header.
    crc: u32,
    csize: u32,
    usize: u32,
    /// CRC-32 and length of stored data.
    stored_crc: Crc,
    stored_len: u64,
    inflate: Option<Inflate>,
}

impl Current {
    /// CRC-32, compressed and uncompressed size of what was read.
    fn actual(&self) -> (u32, u64, u64) {
        match &self.inflate {
            Some(i) => (i.crc(), i.total_in(), i.total_out()),
            None => (self.stored_crc.sum(), self.stored_len, self.stored_len),
        }
    }
}

/// The zip reader. See the module documentation.
#[derive(Debug)]
pub struct ZipDemux {
    state: State,
    /// Bytes consumed so far.
    pos: u64,
    /// A record being assembled (signature included), or a data
    /// descriptor.
    buf: Vec<u8>,
    current: Option<Current>,
    members: Vec<Seen>,
    /// Offset of the first central directory record.
    central_start: Option<u64>,
    /// Central directory records matched so far.
    central_seen: usize,
    out: BytesMut,
    /// Sticky: once failed, every call returns this error.
    failed: Option<ZipError>,
}

impl Default for ZipDemux {
    fn default() -> Self {
        ZipDemux {
            state: State::Signature,
            pos: 0,
            buf: Vec::new(),
            current: None,
            members: Vec::new(),
            central_start: None,
            central_seen: 0,
            out: BytesMut::new(),
            failed: None,
        }
    }
}

impl ZipDemux {
    /// A reader at the start of a zip archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Members begun so far.
    pub fn members(&self) -> usize {
        self.members.len() + usize::from(self.current.is_some())
    }

    /// Consumes a prefix of `input`; returns how many bytes were consumed
    /// and at most one event.
    ///
    /// With non-empty input the result is never `(0, None)`. An event may
    /// come with 0 bytes consumed (an `End`, or inflated bytes the
    /// inflater still held); call again with the rest. Once the input is
    /// used up, call `step(&[])` until it returns `None`; when the source
    /// ends, call [`ZipDemux::finish`].
    ///
    /// Errors are sticky: after one, every call returns it again.
    pub fn step(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), ZipError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.step_inner(input);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    /// The source ended: an error unless the end record was read.
    pub fn finish(&mut self) -> Result<(), ZipError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let what = match self.state {
            State::Done | State::EofDue => return Ok(()),
            State::Signature if self.central_start.is_some() => "the central directory",
            State::Signature => "the members: the archive ends without its central directory",
            State::Local => "a local file header",
            State::Stored { .. } | State::Deflated { .. } | State::EndDue => "the data of a member",
            State::Descriptor => "the data descriptor of a member",
            State::Central => "the central directory",
            State::EndRecord => "the end of central directory record",
            State::Comment { .. } => "the archive comment",
        };
        let e = ZipError::Truncated {
            offset: self.pos,
            member: self.current.as_ref().map(|c| c.name.clone()),
            what,
        };
        self.failed = Some(e.clone());
        Err(e)
    }

    /// Copies bytes of the record being assembled until it holds `want`;
    /// returns how many were taken and whether it is whole.
    fn gather(&mut self, rest: &[u8], want: usize) -> (usize, bool) {
        let n = want.saturating_sub(self.buf.len()).min(rest.len());
        self.buf.extend_from_slice(&rest[..n]);
        self.pos += n as u64;
        (n, self.buf.len() >= want)
    }

    /// Archive offset of the record being assembled.
    fn record_offset(&self) -> u64 {
        self.pos - self.buf.len() as u64
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> ZipError {
        ZipError::Corrupt {
            offset,
            member: self.current.as_ref().map(|c| c.name.clone()),
            reason: reason.into(),
        }
    }

    fn step_inner(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), ZipError> {
        let mut used = 0usize;
        loop {
            let rest = &input[used..];
            match self.state {
                State::EndDue => {
                    if let Some(c) = self.current.take() {
                        let (crc, csize, usize) = c.actual();
                        self.members.push(Seen {
                            offset: c.header_offset,
                            name: c.raw_name,
                            flags: c.flags,
                            method: c.method,
                            crc,
                            csize,
                            usize,
                        });
                    }
                    self.state = State::Signature;
                    return Ok((used, Some(Event::End)));
                }
                State::EofDue => {
                    self.state = State::Done;
                    return Ok((used, Some(Event::Eof)));
                }
                State::Done => {
                    self.pos += rest.len() as u64;
                    return Ok((input.len(), None));
                }
                State::Stored { remaining } => {
                    if remaining == 0 {
                        self.end_member()?;
                        continue;
                    }
                    if rest.is_empty() {
                        return Ok((used, None));
                    }
                    let n = usize::try_from(remaining)
                        .map_or(rest.len(), |r| r.min(rest.len()))
                        .min(limits::DECOMPRESSED_CHUNK);
                    let data = &rest[..n];
                    if let Some(c) = &mut self.current {
                        c.stored_crc.update(data);
                        c.stored_len += n as u64;
                    }
                    self.pos += n as u64;
                    self.state = State::Stored {
                        remaining: remaining - n as u64,
                    };
                    return Ok((used + n, Some(Event::Data(Bytes::copy_from_slice(data)))));
                }
                State::Deflated { remaining } => {
                    let avail = match remaining {
                        Some(r) => usize::try_from(r).map_or(rest.len(), |r| r.min(rest.len())),
                        None => rest.len(),
                    };
                    if self.out.len() < limits::DECOMPRESSED_CHUNK {
                        self.out.resize(limits::DECOMPRESSED_CHUNK, 0);
                    }
                    // Where the inflater notices a problem depends on how
                    // the input was cut: errors are placed at the data's start.
                    let Some(c) = self.current.as_mut() else {
                        return Err(self.corrupt(self.pos, "deflate data outside a member"));
                    };
                    let data = c.data_offset;
                    let inflate = c.inflate.get_or_insert_with(Inflate::new);
                    let r =
                        inflate.run(&rest[..avail], &mut self.out[..limits::DECOMPRESSED_CHUNK]);
                    let (u, p) = match r {
                        Ok(v) => v,
                        Err(why) => {
                            return Err(self.corrupt(data, format!("invalid deflate data: {why}")));
                        }
                    };
                    let (done, total_out) = (inflate.is_done(), inflate.total_out());
                    let declared = (c.flags & DATA_DESCRIPTOR == 0).then_some(c.usize);
                    used += u;
                    self.pos += u as u64;
                    let remaining = remaining.map(|r| r - u as u64);
                    self.state = State::Deflated { remaining };
                    if let Some(size) = declared
                        && total_out > u64::from(size)
                    {
                        return Err(self.corrupt(
                            data,
                            format!("deflate data inflates past the member's size of {size} bytes"),
                        ));
                    }
                    if total_out >= u64::from(ZIP64_MARK) {
                        return Err(ZipError::Unsupported {
                            offset: data,
                            member: self.current.as_ref().map(|c| c.name.clone()),
                            what: "zip member of 4 GiB or more (zip64), which ovaio does not read"
                                .into(),
                        });
                    }
                    if p > 0 {
                        let piece = self.out.split_to(p).freeze();
                        return Ok((used, Some(Event::Data(piece))));
                    }
                    if done {
                        self.after_deflate()?;
                        continue;
                    }
                    if remaining == Some(0) {
                        return Err(self.corrupt(
                            self.pos,
                            "the deflate data does not end within the member's compressed size",
                        ));
                    }
                    return Ok((used, None));
                }
                _ if rest.is_empty() => return Ok((used, None)),
                State::Signature => {
                    let (n, whole) = self.gather(rest, 4);
                    used += n;
                    if whole {
                        self.signature()?;
                    }
                }
                State::Local => {
                    let (n, whole) = self.gather(rest, LOCAL_LEN);
                    used += n;
                    if !whole {
                        continue;
                    }
                    let need = LOCAL_LEN
                        + usize::from(le16(&self.buf, 26))
                        + usize::from(le16(&self.buf, 28));
                    let (n, whole) = self.gather(&rest[n..], need);
                    used += n;
                    if whole {
                        let h = self.local()?;
                        return Ok((used, Some(Event::Begin(h))));
                    }
                }
                State::Descriptor => {
                    let (n, whole) = self.gather(rest, 12);
                    used += n;
                    if !whole {
                        continue;
                    }
                    if self.buf[..4] == DESCRIPTOR {
                        let (n, whole) = self.gather(&rest[n..], 16);
                        used += n;
                        if !whole {
                            continue;
                        }
                    }
                    self.descriptor()?;
                }
                State::Central => {
                    let (n, whole) = self.gather(rest, CENTRAL_LEN);
                    used += n;
                    if !whole {
                        continue;
                    }
                    let need = CENTRAL_LEN
                        + usize::from(le16(&self.buf, 28))
                        + usize::from(le16(&self.buf, 30))
                        + usize::from(le16(&self.buf, 32));
                    let (n, whole) = self.gather(&rest[n..], need);
                    used += n;
                    if whole {
                        self.central()?;
                    }
                }
                State::EndRecord => {
                    let (n, whole) = self.gather(rest, END_LEN);
                    used += n;
                    if whole {
                        self.end_record()?;
                    }
                }
                State::Comment { remaining } => {
                    let n = usize::try_from(remaining).map_or(rest.len(), |r| r.min(rest.len()));
                    used += n;
                    self.pos += n as u64;
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 {
                        State::EofDue
                    } else {
                        State::Comment { remaining }
                    };
                }
            }
        }
    }
}
