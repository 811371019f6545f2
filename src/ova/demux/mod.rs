//! The tar demultiplexer: a no-I/O state machine that turns the bytes of an
//! OVA, fed in pieces of any size, into entry events
//! (`Begin`, `Data`..., `End`, and finally `Eof`).
//!
//! It sits between the byte source (after an optional gunzip) and the
//! per-entry router of the import pipeline. Entry contents are handed out
//! as slices of the caller's buffer, without copying.
//!
//! Formats: POSIX ustar (`prefix/name`), GNU (`L` long names, `K` long
//! links, base-256 sizes), old v7 headers, and PAX `x` records (`path`,
//! `size`) applied to the next entry only.
//!
//! The invariant that keeps the stream synchronized: the number of content
//! bytes consumed after a header is exactly the `size` reported in its
//! [`Event::Begin`]; an extension header must be followed directly by the
//! entry it describes; anything that readers are known to size differently
//! (non-zero sizes on links and directories, GNU sparse entries, a global
//! PAX `size`, repeated records) is rejected instead of guessed.
//!
//! ```
//! use ovaio::ova::demux::{Demux, Event};
//! # fn run(mut buf: &[u8]) -> Result<(), ovaio::ova::demux::TarError> {
//! let mut demux = Demux::new();
//! while !buf.is_empty() {
//!     let (n, ev) = demux.step(buf)?;
//!     buf = &buf[n..];
//!     if let Some(Event::Data(bytes)) = ev { /* ... */ let _ = bytes; }
//! }
//! let (_, last) = demux.step(&[])?; // a pending `End`, if the archive had no end marker
//! # let _ = last;
//! demux.finish()
//! # }
//! ```

mod error;
#[cfg(any(test, feature = "fuzzing"))]
mod fuzz;
mod header;
#[cfg(test)]
mod tests;

pub use error::TarError;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub use fuzz::fuzz_entry;

use header::{BLOCK, PaxRecords};

use crate::error::{Classify, ErrorKind};
use crate::limits;

/// The kind of a tar entry, as far as an OVA cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    /// A regular file (typeflag `'0'`, `'\0'` or `'7'`).
    Regular,
    /// A directory (typeflag `'5'`, or an old-style `'\0'` entry whose name
    /// ends with `/`). Its size is always 0.
    Directory,
    /// Anything else; carries the typeflag byte. Its content, if any, is
    /// still delivered as `Data` so that the stream stays in step.
    Other(u8),
}

impl EntryType {
    /// What the entry is, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            EntryType::Regular => "regular file",
            EntryType::Directory | EntryType::Other(b'D') => "directory",
            EntryType::Other(b'1') => "hard link",
            EntryType::Other(b'2') => "symbolic link",
            EntryType::Other(b'3') => "character device",
            EntryType::Other(b'4') => "block device",
            EntryType::Other(b'6') => "FIFO",
            EntryType::Other(b'V') => "volume label",
            EntryType::Other(b'S') => "GNU sparse file",
            EntryType::Other(b'M') => "multi-volume continuation",
            EntryType::Other(_) => "entry of an unknown type",
        }
    }

    /// Whether an OVA reader may pass over this entry: a regular file, or
    /// one that holds no file content (links, directories, devices, FIFOs,
    /// a volume label). Any other type is a regular file to GNU tar and
    /// Python's tarfile, holding content in a form ovaio may not read (a
    /// GNU sparse map, a continued file, or an unknown one), so it is
    /// refused rather than skipped: skipping it would let a package hide
    /// its manifest, or a disk, from ovaio but not from tar.
    pub fn is_known(self) -> bool {
        matches!(
            self,
            EntryType::Regular
                | EntryType::Directory
                | EntryType::Other(b'1' | b'2' | b'3' | b'4' | b'6' | b'D' | b'V')
        )
    }

    /// The error for an entry whose type is not [known](EntryType::is_known).
    pub fn unknown_error(self) -> crate::Error {
        let flag = match self {
            EntryType::Other(f) => f,
            _ => b'0',
        };
        crate::Error::new(
            ErrorKind::Unsupported,
            format!(
                "tar entry of type {:?} ({}) is not read by ovaio; GNU tar would extract it as a regular file",
                char::from(flag),
                self.describe()
            ),
        )
    }
}

/// The decoded header of one entry, with every extension header applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    /// Entry name: PAX `path`, else GNU long name, else `prefix/name`.
    /// Not a file system path; bytes that are not UTF-8 are replaced.
    pub name: String,
    /// Number of content bytes: PAX `size`, else the header's size field.
    pub size: u64,
    /// The entry's kind.
    pub entry_type: EntryType,
    /// Stream offset of the entry's first header block, including the
    /// `L`/`K`/`x` blocks that precede it.
    pub header_offset: u64,
    /// Stream offset of the first content byte.
    pub data_offset: u64,
}

/// One step's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// A new entry starts; exactly `size` bytes of `Data` follow.
    Begin(EntryHeader),
    /// Content bytes of the current entry, borrowed from the input.
    Data(&'a [u8]),
    /// The current entry's content is complete.
    End,
    /// The end-of-archive marker (two zero blocks) was read. Any bytes
    /// after it are consumed and ignored.
    Eof,
}

/// Which extension header is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExtKind {
    /// PAX `x` (or Solaris `X`): applies to the next entry.
    PaxLocal,
    /// PAX `g`: validated, not applied.
    PaxGlobal,
    /// GNU `L`: the next entry's name.
    LongName,
    /// GNU `K`: the next entry's link target (ignored).
    LongLink,
}

impl ExtKind {
    fn what(self) -> &'static str {
        match self {
            ExtKind::PaxLocal => "PAX extended header",
            ExtKind::PaxGlobal => "PAX global header",
            ExtKind::LongName => "GNU long name header",
            ExtKind::LongLink => "GNU long link header",
        }
    }

    fn limit(self) -> u64 {
        match self {
            ExtKind::PaxLocal | ExtKind::PaxGlobal => limits::MAX_PAX_SIZE,
            ExtKind::LongName | ExtKind::LongLink => limits::MAX_LONG_NAME,
        }
    }
}

/// Extension headers read since the last entry; they apply to the next one.
#[derive(Debug, Default)]
struct Pending {
    /// Offset of the first extension header block.
    start: Option<u64>,
    pax: Option<PaxRecords>,
    long_name: Option<String>,
    long_link: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.start.is_none()
    }

    /// Describes one pending header, for error messages.
    fn what(&self) -> &'static str {
        if self.pax.is_some() {
            ExtKind::PaxLocal.what()
        } else if self.long_name.is_some() {
            ExtKind::LongName.what()
        } else {
            ExtKind::LongLink.what()
        }
    }
}

#[derive(Debug)]
enum State {
    /// Expecting a header block (assembled in `Demux::block`).
    Header,
    /// Reading the content of an extension header.
    Ext {
        kind: ExtKind,
        /// Stream offset of the content's first byte.
        base: u64,
        size: u64,
        buf: Vec<u8>,
    },
    /// Delivering entry content; `End` is due when `remaining` is 0.
    Data { remaining: u64, padding: u64 },
    /// Skipping block padding silently.
    Pad { remaining: u64, what: &'static str },
    /// After the end-of-archive marker.
    Eof,
}

/// The tar demultiplexer. See the module documentation.
#[derive(Debug)]
pub struct Demux {
    state: State,
    /// Bytes consumed so far.
    pos: u64,
    /// A header block being assembled across calls.
    block: [u8; BLOCK],
    fill: usize,
    /// Offset of a zero block just read (a second one ends the archive).
    zero_at: Option<u64>,
    pending: Pending,
    /// Entries begun so far.
    entries: usize,
    /// Name of the last entry begun, for error messages.
    current: Option<String>,
    /// Sticky: once failed, every call returns this error.
    failed: Option<TarError>,
}

impl Default for Demux {
    fn default() -> Self {
        Demux {
            state: State::Header,
            pos: 0,
            block: [0; BLOCK],
            fill: 0,
            zero_at: None,
            pending: Pending::default(),
            entries: 0,
            current: None,
            failed: None,
        }
    }
}

impl Demux {
    /// A demultiplexer at the start of a tar stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Consumes a prefix of `input`; returns how many bytes were consumed
    /// and at most one event.
    ///
    /// With non-empty input the result is never `(0, None)`: when no event
    /// is ready, all of `input` was consumed (partial header blocks are
    /// buffered internally). An event may come with 0 bytes consumed
    /// (`End` of an entry); call again with the rest.
    ///
    /// When the source ends, call `step(&[])` once more: it returns the
    /// `End` of an entry whose last byte ended the source (archives
    /// without an end marker), then call [`Demux::finish`].
    ///
    /// Errors are sticky: after one, every call returns it again.
    pub fn step<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<Event<'a>>), TarError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.step_inner(input);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    /// Content bytes of the current entry not yet delivered, while an
    /// entry's content is being delivered; `None` between entries.
    pub fn content_remaining(&self) -> Option<u64> {
        match (&self.failed, &self.state) {
            (None, State::Data { remaining, .. }) => Some(*remaining),
            _ => None,
        }
    }

    /// Passes over up to `n` content bytes of the current entry that the
    /// caller will not feed, because it moved its source past them (a seek
    /// in a regular file). Returns how many were passed over: at most
    /// [`Demux::content_remaining`], and 0 outside an entry's content, so
    /// the caller moves its source by the returned count only. The
    /// position advances as if the bytes had been fed; the next `step`
    /// delivers the rest of the content (or `End`) and the stream stays
    /// in step.
    pub fn skip_content(&mut self, n: u64) -> u64 {
        if self.failed.is_some() {
            return 0;
        }
        let State::Data { remaining, .. } = &mut self.state else {
            return 0;
        };
        let n = n.min(*remaining);
        *remaining -= n;
        self.pos += n;
        n
    }

    /// The source ended: `Ok` if the end-of-archive marker was read, or if
    /// the stream ended cleanly at a block boundary after at least one
    /// complete entry (GNU tar only warns about a missing marker);
    /// otherwise [`TarError::Truncated`] naming the entry and offset.
    pub fn finish(&self) -> Result<(), TarError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let truncated = |what, entry: Option<&String>| TarError::Truncated {
            offset: self.pos,
            entry: entry.cloned(),
            what,
        };
        match &self.state {
            State::Eof => Ok(()),
            State::Header if self.fill > 0 => Err(truncated("a header block", None)),
            State::Header if !self.pending.is_empty() => {
                Err(truncated("the entry after an extension header", None))
            }
            State::Header if self.entries == 0 => Err(truncated("the first header", None)),
            State::Header => Ok(()),
            State::Ext { kind, .. } => Err(truncated(kind.what(), None)),
            State::Data { remaining: 0, .. } => Err(TarError::EndNotTaken {
                offset: self.pos,
                entry: self.current.clone().unwrap_or_default(),
            }),
            State::Data { .. } => Err(truncated("the content", self.current.as_ref())),
            State::Pad { what, .. } => Err(truncated(what, self.current.as_ref())),
        }
    }

    fn step_inner<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<Event<'a>>), TarError> {
        let mut used = 0usize;
        loop {
            let rest = &input[used..];
            match &mut self.state {
                State::Data { remaining, padding } => {
                    if *remaining == 0 {
                        let padding = *padding;
                        self.set_pad(padding, "the padding");
                        return Ok((used, Some(Event::End)));
                    }
                    if rest.is_empty() {
                        return Ok((used, None));
                    }
                    let n = usize::try_from(*remaining).map_or(rest.len(), |r| r.min(rest.len()));
                    *remaining -= n as u64;
                    self.pos += n as u64;
                    return Ok((used + n, Some(Event::Data(&rest[..n]))));
                }
                State::Pad { remaining, .. } => {
                    if rest.is_empty() {
                        return Ok((used, None));
                    }
                    let n = usize::try_from(*remaining).map_or(rest.len(), |r| r.min(rest.len()));
                    *remaining -= n as u64;
                    self.pos += n as u64;
                    used += n;
                    if *remaining == 0 {
                        self.state = State::Header;
                    }
                }
                State::Ext {
                    kind,
                    base,
                    size,
                    buf,
                } => {
                    let want = (*size - buf.len() as u64) as usize;
                    let n = want.min(rest.len());
                    buf.extend_from_slice(&rest[..n]);
                    self.pos += n as u64;
                    used += n;
                    if buf.len() as u64 == *size {
                        let (kind, base, size) = (*kind, *base, *size);
                        let buf = std::mem::take(buf);
                        self.apply_ext(kind, base, &buf)?;
                        self.set_pad(header::padding(size), "extension header padding");
                    } else {
                        return Ok((used, None));
                    }
                }
                State::Header => {
                    if rest.is_empty() {
                        return Ok((used, None));
                    }
                    let block: [u8; BLOCK] = if self.fill == 0 && rest.len() >= BLOCK {
                        let mut b = [0u8; BLOCK];
                        b.copy_from_slice(&rest[..BLOCK]);
                        b
                    } else {
                        let n = (BLOCK - self.fill).min(rest.len());
                        self.block[self.fill..self.fill + n].copy_from_slice(&rest[..n]);
                        self.fill += n;
                        if self.fill < BLOCK {
                            self.pos += n as u64;
                            return Ok((used + n, None));
                        }
                        // Account for the bytes copied above; the block is whole.
                        self.fill = 0;
                        used += n;
                        self.pos += n as u64;
                        let b = self.block;
                        if let Some(ev) = self.header(b, self.pos - BLOCK as u64)? {
                            return Ok((used, Some(ev)));
                        }
                        continue;
                    };
                    used += BLOCK;
                    self.pos += BLOCK as u64;
                    if let Some(ev) = self.header(block, self.pos - BLOCK as u64)? {
                        return Ok((used, Some(ev)));
                    }
                }
                State::Eof => {
                    self.pos += rest.len() as u64;
                    return Ok((input.len(), None));
                }
            }
        }
    }

    fn set_pad(&mut self, n: u64, what: &'static str) {
        self.state = if n == 0 {
            State::Header
        } else {
            State::Pad { remaining: n, what }
        };
    }

    /// Handles one complete header block read at stream offset `at`.
    fn header(&mut self, block: [u8; BLOCK], at: u64) -> Result<Option<Event<'static>>, TarError> {
        if header::is_zero(&block) {
            if !self.pending.is_empty() {
                return Err(TarError::DanglingExtension {
                    offset: at,
                    what: self.pending.what(),
                    found: "the end-of-archive marker",
                });
            }
            if self.zero_at.is_some() {
                self.state = State::Eof;
                return Ok(Some(Event::Eof));
            }
            self.zero_at = Some(at);
            return Ok(None);
        }
        if let Some(z) = self.zero_at {
            return Err(TarError::LoneZeroBlock { offset: z });
        }
        header::verify_checksum(&block, at)?;
        let flag = header::typeflag(&block);
        let ext = match flag {
            b'x' | b'X' => Some(ExtKind::PaxLocal),
            b'g' => Some(ExtKind::PaxGlobal),
            b'L' => Some(ExtKind::LongName),
            b'K' => Some(ExtKind::LongLink),
            b'S' => {
                return Err(TarError::Unsupported {
                    offset: at,
                    what: "GNU sparse file (typeflag 'S')",
                });
            }
            _ => None,
        };
        if let Some(kind) = ext {
            let repeated = match kind {
                ExtKind::PaxLocal => self.pending.pax.is_some(),
                ExtKind::PaxGlobal => !self.pending.is_empty(),
                ExtKind::LongName => self.pending.long_name.is_some(),
                ExtKind::LongLink => self.pending.long_link,
            };
            if repeated {
                return Err(TarError::DanglingExtension {
                    offset: at,
                    what: self.pending.what(),
                    found: kind.what(),
                });
            }
            let size = header::size_field(&block, at)?;
            if size > kind.limit() {
                return Err(TarError::TooLarge {
                    offset: at,
                    what: kind.what(),
                    size,
                    limit: kind.limit(),
                });
            }
            if kind != ExtKind::PaxGlobal {
                self.pending.start.get_or_insert(at);
            }
            self.state = State::Ext {
                kind,
                base: at + BLOCK as u64,
                size,
                buf: Vec::with_capacity(size as usize),
            };
            return Ok(None);
        }
        self.entry(&block, flag, at).map(Some)
    }

    /// Records an extension header's content (starting at offset `base`).
    fn apply_ext(&mut self, kind: ExtKind, base: u64, data: &[u8]) -> Result<(), TarError> {
        match kind {
            ExtKind::PaxLocal => {
                self.pending.pax = Some(header::parse_pax(data, base)?);
            }
            ExtKind::PaxGlobal => {
                // A global `size` would set the length of every following
                // entry. GNU tar and Python's tarfile disagree on whether
                // it applies, so honouring or ignoring it silently would
                // let one archive read differently in different tools;
                // no real writer emits one, so it is refused. A global
                // `path` would name every entry alike and is ignored.
                let records = header::parse_pax(data, base)?;
                if records.size.is_some() {
                    return Err(TarError::Unsupported {
                        offset: base,
                        what: "size record in a PAX global header",
                    });
                }
            }
            ExtKind::LongName => {
                let name = header::until_nul(data);
                if name.is_empty() {
                    return Err(TarError::EmptyName { offset: base });
                }
                self.pending.long_name = Some(String::from_utf8_lossy(name).into_owned());
            }
            ExtKind::LongLink => self.pending.long_link = true,
        }
        Ok(())
    }

    /// Builds the `Begin` event of a file entry whose header is at `at`.
    fn entry(
        &mut self,
        block: &[u8; BLOCK],
        flag: u8,
        at: u64,
    ) -> Result<Event<'static>, TarError> {
        let pending = std::mem::take(&mut self.pending);
        let (pax_path, pax_size) = match pending.pax {
            Some(p) => (p.path, p.size),
            None => (None, None),
        };
        let name = pax_path
            .or(pending.long_name)
            .unwrap_or_else(|| header::header_name(block));
        if name.is_empty() {
            return Err(TarError::EmptyName { offset: at });
        }
        let size = match pax_size {
            Some(s) => s,
            None => header::size_field(block, at)?,
        };
        let entry_type = match flag {
            b'0' | b'7' => EntryType::Regular,
            // Pre-POSIX archives mark directories by a trailing slash.
            0 if name.ends_with('/') => EntryType::Directory,
            0 => EntryType::Regular,
            b'5' => EntryType::Directory,
            other => EntryType::Other(other),
        };
        // Python's tarfile never skips content after these typeflags while
        // GNU tar and others do: a non-zero size would read differently.
        if size != 0 && (entry_type == EntryType::Directory || (b'1'..=b'6').contains(&flag)) {
            return Err(TarError::UnexpectedSize {
                offset: at,
                entry: name,
                typeflag: char::from(flag),
                size,
            });
        }
        if self.entries >= limits::MAX_ENTRIES {
            return Err(TarError::TooManyEntries {
                offset: at,
                limit: limits::MAX_ENTRIES,
            });
        }
        self.entries += 1;
        self.current = Some(name.clone());
        let data_offset = at + BLOCK as u64;
        self.state = State::Data {
            remaining: size,
            padding: header::padding(size),
        };
        Ok(Event::Begin(EntryHeader {
            name,
            size,
            entry_type,
            header_offset: pending.start.unwrap_or(at),
            data_offset,
        }))
    }
}
