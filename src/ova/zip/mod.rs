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

#[cfg(test)]
mod tests;

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

/// Why a zip archive was refused. Every variant carries the archive
/// offset of the problem, and the member's name where one is concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZipError {
    /// A feature ovaio does not read.
    #[error("{what}")]
    Unsupported {
        /// Offset of the record.
        offset: u64,
        /// The member, if known.
        member: Option<String>,
        /// What it is, and what to do.
        what: String,
    },
    /// A stored member with a data descriptor.
    #[error(
        "stored zip member with a data descriptor (general purpose flag bit 3): its local header does not give its size and stored data does not mark its own end, so it cannot be read as a stream; store it with its sizes in the local header, or deflate it"
    )]
    StoredWithDescriptor {
        /// Offset of the local header.
        offset: u64,
        /// The member.
        member: String,
    },
    /// The archive or a member is inconsistent.
    #[error("{reason}")]
    Corrupt {
        /// Offset of the record or data.
        offset: u64,
        /// The member, if one is concerned.
        member: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// A member name longer than [`limits::MAX_ZIP_NAME`].
    #[error("zip member name of {len} bytes exceeds the limit of {limit} bytes")]
    NameTooLong {
        /// Offset of the local header.
        offset: u64,
        /// The name's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// More members than [`limits::MAX_ENTRIES`].
    #[error("zip archive with more than {limit} members")]
    TooManyMembers {
        /// Offset of the local header over the limit.
        offset: u64,
        /// The limit.
        limit: usize,
    },
    /// The archive ended before its end record.
    #[error("zip archive truncated in {what}")]
    Truncated {
        /// Where it ended.
        offset: u64,
        /// The member being read, if any.
        member: Option<String>,
        /// The part that was cut.
        what: &'static str,
    },
}

impl ZipError {
    /// The member concerned, if any.
    pub fn member(&self) -> Option<&str> {
        match self {
            ZipError::Unsupported { member, .. }
            | ZipError::Corrupt { member, .. }
            | ZipError::Truncated { member, .. } => member.as_deref(),
            ZipError::StoredWithDescriptor { member, .. } => Some(member),
            ZipError::NameTooLong { .. } | ZipError::TooManyMembers { .. } => None,
        }
    }
}

impl Classify for ZipError {
    fn kind(&self) -> ErrorKind {
        match self {
            ZipError::Unsupported { .. } | ZipError::StoredWithDescriptor { .. } => {
                ErrorKind::Unsupported
            }
            ZipError::NameTooLong { .. } | ZipError::TooManyMembers { .. } => {
                ErrorKind::LimitExceeded
            }
            ZipError::Corrupt { .. } | ZipError::Truncated { .. } => ErrorKind::CorruptImage,
        }
    }

    /// Offset in the archive: the package itself.
    fn offset(&self) -> Option<u64> {
        match *self {
            ZipError::Unsupported { offset, .. }
            | ZipError::StoredWithDescriptor { offset, .. }
            | ZipError::Corrupt { offset, .. }
            | ZipError::NameTooLong { offset, .. }
            | ZipError::TooManyMembers { offset, .. }
            | ZipError::Truncated { offset, .. } => Some(offset),
        }
    }
}

/// The name of a compression method, for messages.
fn method_name(m: u16) -> &'static str {
    match m {
        1 => "shrunk",
        2..=5 => "reduced",
        6 => "imploded",
        9 => "deflate64",
        12 => "bzip2",
        14 => "LZMA",
        93 => "zstd",
        95 => "xz",
        96 => "JPEG",
        97 => "WavPack",
        98 => "PPMd",
        _ => "unknown",
    }
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

    /// A whole signature is in `buf`: the record it starts.
    fn signature(&mut self) -> Result<(), ZipError> {
        let at = self.record_offset();
        let sig: [u8; 4] = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
        self.state = match sig {
            LOCAL if self.central_start.is_some() => {
                return Err(
                    self.corrupt(at, "a local file header after the central directory began")
                );
            }
            LOCAL => State::Local,
            CENTRAL => {
                self.central_start.get_or_insert(at);
                State::Central
            }
            END => State::EndRecord,
            ZIP64_END | ZIP64_LOCATOR => {
                return Err(ZipError::Unsupported {
                    offset: at,
                    member: None,
                    what: "zip64 end of central directory record: zip64 archives are not read by ovaio".into(),
                });
            }
            _ => {
                return Err(self.corrupt(
                    at,
                    format!(
                        "expected a zip local file header, central directory record or end record, found bytes {:02x} {:02x} {:02x} {:02x}",
                        sig[0], sig[1], sig[2], sig[3]
                    ),
                ));
            }
        };
        Ok(())
    }

    /// A whole local header is in `buf`: checks it and starts its member.
    fn local(&mut self) -> Result<MemberHeader, ZipError> {
        let at = self.record_offset();
        let b = std::mem::take(&mut self.buf);
        if self.members.len() >= limits::MAX_ENTRIES {
            return Err(ZipError::TooManyMembers {
                offset: at,
                limit: limits::MAX_ENTRIES,
            });
        }
        let flags = le16(&b, 6);
        let method = le16(&b, 8);
        let crc = le32(&b, 14);
        let csize = le32(&b, 18);
        let usize = le32(&b, 22);
        let name_len = usize::from(le16(&b, 26));
        let raw_name = b[LOCAL_LEN..LOCAL_LEN + name_len].to_vec();
        let extra = &b[LOCAL_LEN + name_len..];
        if name_len > limits::MAX_ZIP_NAME {
            return Err(ZipError::NameTooLong {
                offset: at,
                len: name_len,
                limit: limits::MAX_ZIP_NAME,
            });
        }
        let corrupt = |member: Option<&str>, reason: String| ZipError::Corrupt {
            offset: at,
            member: member.map(str::to_owned),
            reason,
        };
        let name = decode_name(&raw_name, flags).map_err(|why| corrupt(None, why))?;
        let unsupported = |what: String| ZipError::Unsupported {
            offset: at,
            member: Some(name.clone()),
            what,
        };
        if flags & (ENCRYPTED | STRONG_ENCRYPTION | MASKED_HEADERS) != 0 || method == 99 {
            return Err(unsupported(
                "encrypted zip member, which ovaio does not read; give the package unencrypted"
                    .into(),
            ));
        }
        if flags & PATCHED != 0 {
            return Err(unsupported(
                "zip member of compressed patched data (general purpose flag bit 5), which ovaio does not read".into(),
            ));
        }
        let method = match method {
            0 => Method::Stored,
            8 => Method::Deflated,
            m => {
                return Err(unsupported(format!(
                    "zip member compressed with method {m} ({}), which ovaio does not read: only stored (0) and deflated (8) members are",
                    method_name(m)
                )));
            }
        };
        check_extra(extra, &name).map_err(|e| match e {
            ExtraProblem::Zip64 => unsupported(
                "zip member with a zip64 extra field: zip64 archives are not read by ovaio"
                    .into(),
            ),
            ExtraProblem::Encrypted => unsupported(
                "encrypted zip member (AES), which ovaio does not read; give the package unencrypted"
                    .into(),
            ),
            ExtraProblem::Bad(why) => corrupt(Some(&name), why),
        })?;
        if csize == ZIP64_MARK || usize == ZIP64_MARK {
            return Err(unsupported(
                "zip member whose sizes are in a zip64 record: zip64 archives are not read by ovaio"
                    .into(),
            ));
        }
        let descriptor = flags & DATA_DESCRIPTOR != 0;
        if descriptor && method == Method::Stored {
            return Err(ZipError::StoredWithDescriptor {
                offset: at,
                member: name,
            });
        }
        if !descriptor && method == Method::Stored && csize != usize {
            return Err(corrupt(
                Some(&name),
                format!(
                    "stored zip member whose compressed size ({csize}) differs from its size ({usize})"
                ),
            ));
        }
        let directory = name.ends_with('/');
        if directory && !descriptor && usize != 0 {
            return Err(corrupt(
                Some(&name),
                format!("zip directory member holding {usize} bytes of data"),
            ));
        }
        let data_offset = self.pos;
        self.current = Some(Current {
            name: name.clone(),
            raw_name,
            flags,
            method: le16(&b, 8),
            directory,
            header_offset: at,
            data_offset,
            crc,
            csize,
            usize,
            stored_crc: Crc::new(),
            stored_len: 0,
            inflate: None,
        });
        self.state = match method {
            Method::Stored => State::Stored {
                remaining: u64::from(csize),
            },
            Method::Deflated => State::Deflated {
                remaining: (!descriptor).then_some(u64::from(csize)),
            },
        };
        Ok(MemberHeader {
            name,
            size: (!descriptor).then_some(u64::from(usize)),
            method,
            directory,
            header_offset: at,
            data_offset,
        })
    }

    /// The deflate stream of the current member ended.
    fn after_deflate(&mut self) -> Result<(), ZipError> {
        let at = self.pos;
        let Some(c) = &self.current else {
            return Err(self.corrupt(at, "deflate data outside a member"));
        };
        if let State::Deflated {
            remaining: Some(r @ 1..),
        } = self.state
        {
            return Err(self.corrupt(
                at,
                format!(
                    "the deflate data ends {r} bytes before the member's compressed size of {} bytes",
                    c.csize
                ),
            ));
        }
        if c.flags & DATA_DESCRIPTOR == 0 {
            return self.end_member();
        }
        // With a descriptor the local header's fields are meant to be
        // zero; any that are not must still tell the truth.
        let (crc, csize, usize) = c.actual();
        let lies = (c.crc != 0 && c.crc != crc)
            || (c.csize != 0 && u64::from(c.csize) != csize)
            || (c.usize != 0 && u64::from(c.usize) != usize);
        if lies {
            return Err(self.corrupt(
                c.header_offset,
                "the local header's CRC-32 or sizes differ from the member's data",
            ));
        }
        self.buf.clear();
        self.state = State::Descriptor;
        Ok(())
    }

    /// A data descriptor of 12 bytes, or 16 starting with its signature,
    /// is in `buf`: it must give what was read.
    fn descriptor(&mut self) -> Result<(), ZipError> {
        let at = self.record_offset();
        let Some(c) = &self.current else {
            return Err(self.corrupt(at, "data descriptor outside a member"));
        };
        let (crc, csize, usize) = c.actual();
        let says = |b: &[u8]| {
            le32(b, 0) == crc && u64::from(le32(b, 4)) == csize && u64::from(le32(b, 8)) == usize
        };
        let b = std::mem::take(&mut self.buf);
        if b.len() == 16 && says(&b[4..]) {
            // With its signature.
        } else if says(&b[..12]) {
            // Without: the bytes after it start the next record.
            self.buf = b[12..].to_vec();
        } else {
            return Err(self.corrupt(
                at,
                format!(
                    "the data descriptor does not match the member's data (CRC-32 {crc:08x}, {csize} compressed bytes, {usize} bytes)"
                ),
            ));
        }
        self.end_member()
    }

    /// The current member's data is complete: checks it against its
    /// local header (or descriptor, already checked) and makes `End` due.
    fn end_member(&mut self) -> Result<(), ZipError> {
        let at = self.pos;
        let Some(c) = &self.current else {
            return Err(self.corrupt(at, "member end outside a member"));
        };
        let (crc, csize, usize) = c.actual();
        if c.flags & DATA_DESCRIPTOR == 0 {
            if crc != c.crc {
                return Err(self.corrupt(
                    c.data_offset,
                    format!(
                        "CRC-32 mismatch: the local header says {:08x}, the data is {crc:08x}",
                        c.crc
                    ),
                ));
            }
            if csize != u64::from(c.csize) || usize != u64::from(c.usize) {
                return Err(self.corrupt(
                    c.data_offset,
                    format!(
                        "the member's data is {csize} compressed and {usize} uncompressed bytes, its local header says {} and {}",
                        c.csize, c.usize
                    ),
                ));
            }
        }
        if c.directory && usize != 0 {
            return Err(self.corrupt(
                c.data_offset,
                format!("zip directory member holding {usize} bytes of data"),
            ));
        }
        self.state = State::EndDue;
        Ok(())
    }

    /// A whole central directory record is in `buf`: it must describe
    /// the member the stream held at its place.
    fn central(&mut self) -> Result<(), ZipError> {
        let at = self.record_offset();
        let b = std::mem::take(&mut self.buf);
        self.state = State::Signature;
        let k = self.central_seen;
        self.central_seen += 1;
        let Some(seen) = self.members.get(k) else {
            return Err(ZipError::Corrupt {
                offset: at,
                member: None,
                reason: format!(
                    "the central directory lists more members than the {} the archive holds",
                    self.members.len()
                ),
            });
        };
        let name_len = usize::from(le16(&b, 28));
        let extra_len = usize::from(le16(&b, 30));
        let raw_name = &b[CENTRAL_LEN..CENTRAL_LEN + name_len];
        let extra = &b[CENTRAL_LEN + name_len..CENTRAL_LEN + name_len + extra_len];
        let member = Some(String::from_utf8_lossy(&seen.name).into_owned());
        let (csize, usize, offset) = (le32(&b, 20), le32(&b, 24), le32(&b, 42));
        if [csize, usize, offset].contains(&ZIP64_MARK) {
            return Err(ZipError::Unsupported {
                offset: at,
                member,
                what: "central directory record with zip64 sizes or offset: zip64 archives are not read by ovaio".into(),
            });
        }
        if le16(&b, 34) != 0 {
            return Err(ZipError::Unsupported {
                offset: at,
                member,
                what: "zip archive split over several disks, which ovaio does not read".into(),
            });
        }
        let flags = le16(&b, 8);
        let differs = if u64::from(offset) != seen.offset {
            Some("local header offset")
        } else if raw_name != seen.name.as_slice() {
            Some("name")
        } else if !seen.name.is_ascii() && (flags ^ seen.flags) & UTF8 != 0 {
            Some("name encoding (flag bit 11)")
        } else if le16(&b, 10) != seen.method {
            Some("compression method")
        } else if le32(&b, 16) != seen.crc {
            Some("CRC-32")
        } else if u64::from(csize) != seen.csize {
            Some("compressed size")
        } else if u64::from(usize) != seen.usize {
            Some("size")
        } else {
            None
        };
        if let Some(field) = differs {
            return Err(ZipError::Corrupt {
                offset: at,
                member,
                reason: format!(
                    "the central directory gives another {field} than the member's local header and data: readers that go by the directory would see another archive"
                ),
            });
        }
        let name = String::from_utf8_lossy(raw_name);
        check_extra_central(extra, &name).map_err(|why| ZipError::Corrupt {
            offset: at,
            member: member.clone(),
            reason: why,
        })?;
        Ok(())
    }

    /// A whole end of central directory record is in `buf`.
    fn end_record(&mut self) -> Result<(), ZipError> {
        let at = self.record_offset();
        let b = std::mem::take(&mut self.buf);
        let corrupt = |reason: String| ZipError::Corrupt {
            offset: at,
            member: None,
            reason,
        };
        if le16(&b, 4) != 0 || le16(&b, 6) != 0 {
            return Err(ZipError::Unsupported {
                offset: at,
                member: None,
                what: "zip archive split over several disks, which ovaio does not read".into(),
            });
        }
        let (on_disk, entries) = (le16(&b, 8), le16(&b, 10));
        let (cd_size, cd_offset) = (le32(&b, 12), le32(&b, 16));
        if entries == u16::MAX || cd_size == ZIP64_MARK || cd_offset == ZIP64_MARK {
            return Err(ZipError::Unsupported {
                offset: at,
                member: None,
                what: "zip64 end of central directory: zip64 archives are not read by ovaio".into(),
            });
        }
        let held = self.members.len();
        if usize::from(entries) != held || on_disk != entries || self.central_seen != held {
            return Err(corrupt(format!(
                "the archive holds {held} members, its central directory lists {} and its end record counts {entries}: readers that go by the directory would see another archive",
                self.central_seen
            )));
        }
        let start = self.central_start.unwrap_or(at);
        if u64::from(cd_offset) != start || u64::from(cd_size) != at - start {
            return Err(corrupt(format!(
                "the end record places the central directory at byte {cd_offset} ({cd_size} bytes), but it is at byte {start} ({} bytes)",
                at - start
            )));
        }
        let comment = u64::from(le16(&b, 20));
        self.state = if comment == 0 {
            State::EofDue
        } else {
            State::Comment { remaining: comment }
        };
        Ok(())
    }
}

/// A member's name as readers read it.
fn decode_name(raw: &[u8], flags: u16) -> Result<String, String> {
    if raw.is_empty() {
        return Err("zip member with an empty name".into());
    }
    if raw.contains(&0) {
        return Err(format!(
            "zip member name '{}' holds a NUL byte; readers disagree on where it ends",
            crate::names::printable(&String::from_utf8_lossy(raw))
        ));
    }
    if flags & UTF8 != 0 {
        return String::from_utf8(raw.to_vec()).map_err(|_| {
            format!(
                "zip member name '{}' is marked UTF-8 (flag bit 11) but is not",
                crate::names::printable(&String::from_utf8_lossy(raw))
            )
        });
    }
    if raw.is_ascii() {
        return Ok(String::from_utf8_lossy(raw).into_owned());
    }
    Err(format!(
        "zip member name '{}' is not ASCII and not marked UTF-8 (flag bit 11); readers disagree on its characters",
        crate::names::printable(&String::from_utf8_lossy(raw))
    ))
}

/// What an extra field of a local header may hold that ovaio refuses.
enum ExtraProblem {
    Zip64,
    Encrypted,
    Bad(String),
}

/// The records of an extra field: `(id, data)`.
fn extra_records(extra: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    let mut out = Vec::new();
    let mut rest = extra;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err("malformed extra field (a record header is cut short)".into());
        }
        let id = le16(rest, 0);
        let len = usize::from(le16(rest, 2));
        if rest.len() < 4 + len {
            return Err(format!(
                "malformed extra field (record {id:#06x} runs past the field)"
            ));
        }
        out.push((id, &rest[4..4 + len]));
        rest = &rest[4 + len..];
    }
    Ok(out)
}

/// Refuses zip64 and AES records, and an Info-ZIP Unicode Path that names
/// the member otherwise than its header (unzip would use that name).
fn check_extra(extra: &[u8], name: &str) -> Result<(), ExtraProblem> {
    for (id, data) in extra_records(extra).map_err(ExtraProblem::Bad)? {
        match id {
            0x0001 => return Err(ExtraProblem::Zip64),
            0x9901 => return Err(ExtraProblem::Encrypted),
            0x7075 => unicode_path(data, name).map_err(ExtraProblem::Bad)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_extra_central(extra: &[u8], name: &str) -> Result<(), String> {
    for (id, data) in extra_records(extra)? {
        if id == 0x7075 {
            unicode_path(data, name)?;
        }
    }
    Ok(())
}

fn unicode_path(data: &[u8], name: &str) -> Result<(), String> {
    let path = data.get(5..).map(String::from_utf8_lossy);
    if path.as_deref() == Some(name) {
        Ok(())
    } else {
        Err("an Info-ZIP Unicode Path extra field names the member otherwise than its header; readers disagree on its name".into())
    }
}

/// An owned copy of an [`Event`] stream, for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg(any(test, feature = "fuzzing"))]
enum Owned {
    Begin(MemberHeader),
    Data(Vec<u8>),
    End,
    Eof,
}

/// Runs the reader over `data` fed in pieces of the sizes `cuts` yields
/// (cycled), merging adjacent data, and checks the step contract on the
/// way. Panics only on a contract breach.
#[cfg(any(test, feature = "fuzzing"))]
fn run_split(data: &[u8], cuts: &[usize]) -> (Vec<Owned>, Result<(), ZipError>) {
    let mut z = ZipDemux::new();
    let mut events: Vec<Owned> = Vec::new();
    let mut open = false;
    let push = |events: &mut Vec<Owned>, ev: Event, open: &mut bool| match ev {
        Event::Begin(h) => {
            assert!(!*open, "Begin inside a member");
            *open = true;
            events.push(Owned::Begin(h));
        }
        Event::Data(d) => {
            assert!(*open, "Data outside a member");
            assert!(!d.is_empty(), "empty Data event");
            assert!(d.len() <= limits::DECOMPRESSED_CHUNK, "oversized Data");
            match events.last_mut() {
                Some(Owned::Data(v)) => v.extend_from_slice(&d),
                _ => events.push(Owned::Data(d.to_vec())),
            }
        }
        Event::End => {
            assert!(*open, "End outside a member");
            *open = false;
            events.push(Owned::End);
        }
        Event::Eof => {
            assert!(!*open, "Eof inside a member");
            events.push(Owned::Eof);
        }
    };
    let mut rest = data;
    let mut i = 0usize;
    let mut drive = |piece: &[u8], events: &mut Vec<Owned>, open: &mut bool| {
        let mut piece = piece;
        loop {
            let before = z.position();
            match z.step(piece) {
                Ok((n, ev)) => {
                    assert!(n <= piece.len(), "consumed more than given");
                    assert!(
                        n > 0 || ev.is_some() || piece.is_empty(),
                        "(0, None) on non-empty input"
                    );
                    assert_eq!(z.position(), before + n as u64, "position drift");
                    piece = &piece[n..];
                    let none = ev.is_none();
                    if let Some(ev) = ev {
                        push(events, ev, open);
                    }
                    if none && piece.is_empty() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    };
    while !rest.is_empty() {
        let cut = cuts
            .get(i % cuts.len().max(1))
            .copied()
            .unwrap_or(usize::MAX);
        i += 1;
        let piece = &rest[..cut.clamp(1, rest.len())];
        rest = &rest[piece.len()..];
        if let Err(e) = drive(piece, &mut events, &mut open) {
            return (events, Err(e));
        }
    }
    if let Err(e) = drive(&[], &mut events, &mut open) {
        return (events, Err(e));
    }
    let r = z.finish();
    if r.is_ok() {
        assert!(!open, "finish Ok inside a member");
    }
    (events, r)
}

/// The events of a run, less the data a failed run handed out of the
/// member it failed in: how much of it passed before the inflater noticed
/// the damage depends on how the input was cut, and nothing of it counts
/// (the member never ends).
#[cfg(any(test, feature = "fuzzing"))]
fn settled(run: (Vec<Owned>, Result<(), ZipError>)) -> (Vec<Owned>, Result<(), ZipError>) {
    let (mut events, r) = run;
    if r.is_err() {
        while matches!(events.last(), Some(Owned::Data(_))) {
            events.pop();
        }
    }
    (events, r)
}

/// Fuzzing entry point: runs the reader over `data` whole and split in
/// two different ways and panics if the events or results differ, or if
/// the step contract is broken. Not a stable API.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_entry(data: &[u8]) {
    let whole = settled(run_split(data, &[usize::MAX]));
    let seed = data
        .iter()
        .fold(7usize, |a, &b| a.wrapping_mul(31) ^ usize::from(b));
    let odd: Vec<usize> = (0..16).map(|k| 1 + (seed >> (k % 8)) % 700).collect();
    let small = settled(run_split(data, &odd));
    let bytes = settled(run_split(data, &[1, 3, 29, 2]));
    assert_eq!(whole, small, "split changed the result");
    assert_eq!(whole, bytes, "split changed the result");
}
