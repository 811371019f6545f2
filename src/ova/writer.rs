//! The tar multiplexer of the export side: writes an OVA's entries (OVF
//! descriptor, disks, manifest) into any [`std::io::Write`] sink in one
//! sequential pass, and predicts the archive's exact size and layout
//! beforehand ([`archive_layout`]) so that a `Content-Length`, or the
//! offsets a caller wants to report, are known before the first byte.
//!
//! What is written:
//!
//! * POSIX ustar headers: magic `ustar\0`, version `00`, mode `0644`, uid
//!   and gid 0, owner and group `root`, typeflag `'0'`, one fixed mtime
//!   chosen by the caller ([`TarWriter::with_mtime`]).
//! * Entries of 8 GiB and more (their size does not fit the 11 octal
//!   digits of the ustar size field) are preceded by a PAX `x` header with
//!   a `size` record, **and** their ustar size field holds the same value
//!   in GNU base-256. PAX readers (GNU tar, Python's `tarfile`, bsdtar,
//!   ovaio's demux) take the PAX record; readers that know GNU base-256 but
//!   not PAX get the same number from the header. A zero in the field, as
//!   Python writes it, would make those readers desynchronize.
//! * Names longer than 100 bytes get a PAX `path` record; the ustar name
//!   field holds the first 100 bytes (at a character boundary).
//! * With alignment on ([`TarWriter::with_align`]), each entry after the
//!   first whose content would not start on a 4 KiB boundary is preceded
//!   by a regular file named `pad`, filled with zeros and sized so that it
//!   does (oVirt's writer uses the same name for the same purpose). The
//!   first entry, the OVF descriptor, is never padded.
//! * The archive ends with two zero blocks.
//!
//! [`archive_layout`] and [`TarWriter`] share the functions that decide
//! header lengths and padding, so the prediction and the bytes agree.

use std::io::Write;

use crate::error::{Classify, ErrorKind};
use crate::limits;

/// Size of a tar block.
const BLOCK: u64 = 512;
/// Alignment of entry contents when padding is on.
pub const ALIGNMENT: u64 = 4096;
/// Name of the padding entries.
pub const PAD_NAME: &str = "pad";
/// Smallest entry size that needs a PAX `size` record (8 GiB): the ustar
/// size field holds at most 11 octal digits.
pub const PAX_SIZE_THRESHOLD: u64 = 1 << 33;
/// Largest name the ustar name field holds without a PAX `path` record.
const NAME_FIELD: usize = 100;

/// One entry the caller intends to write, in archive order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPlan {
    /// Entry name.
    pub name: String,
    /// Exact number of content bytes.
    pub size: u64,
}

/// Where one entry (a caller's entry or an inserted `pad`) lies in the
/// archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEntry {
    /// Entry name.
    pub name: String,
    /// Number of content bytes.
    pub size: u64,
    /// Offset of the entry's first header block (its PAX header, if any).
    pub header_offset: u64,
    /// Offset of the entry's first content byte.
    pub data_offset: u64,
    /// True for a `pad` entry inserted for alignment.
    pub is_pad: bool,
}

/// The exact layout of an archive, computed before writing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLayout {
    /// Total archive size in bytes, end-of-archive blocks included.
    pub total_size: u64,
    /// Every entry in archive order, inserted `pad` entries included.
    pub entries: Vec<PlannedEntry>,
}

/// Why an entry cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarWriteError {
    /// An entry name is empty.
    #[error("tar entry name is empty")]
    EmptyName,
    /// An entry name contains a NUL byte, which tar cannot store.
    #[error("tar entry name '{name}' contains a NUL byte")]
    NulInName {
        /// The name, NUL shown as `\0`.
        name: String,
    },
    /// An entry name is longer than [`limits::MAX_LONG_NAME`].
    #[error("tar entry name of {len} bytes is longer than the limit of {limit}")]
    NameTooLong {
        /// Length of the name in bytes.
        len: usize,
        /// The limit.
        limit: u64,
    },
    /// An entry size above `i64::MAX`, which no tar reader accepts.
    #[error("entry '{name}': size {size} is larger than tar allows")]
    SizeTooLarge {
        /// The entry name.
        name: String,
        /// The size asked for.
        size: u64,
    },
    /// The archive would be larger than `u64::MAX` bytes.
    #[error("the archive size overflows 64 bits")]
    ArchiveTooLarge,
    /// `begin_entry` or `finish` while an entry is still open.
    #[error("entry '{name}' is still open ({written} of {size} bytes written)")]
    EntryOpen {
        /// The open entry.
        name: String,
        /// Bytes written so far.
        written: u64,
        /// Bytes announced.
        size: u64,
    },
    /// `write_data` or `end_entry` with no entry open.
    #[error("no tar entry is open")]
    NoEntry,
    /// More content than the header announced.
    #[error(
        "entry '{name}': writing {len} bytes at byte {offset} overruns the announced size {size}"
    )]
    Overrun {
        /// The entry.
        name: String,
        /// Offset within the entry where the write starts.
        offset: u64,
        /// Length of the write.
        len: usize,
        /// Bytes announced.
        size: u64,
    },
    /// `end_entry` before the announced size was written.
    #[error("entry '{name}' ended at byte {written}, {size} bytes were announced")]
    Short {
        /// The entry.
        name: String,
        /// Bytes written.
        written: u64,
        /// Bytes announced.
        size: u64,
    },
    /// A previous write to the sink failed; the archive is unusable.
    #[error("the tar writer failed earlier at archive byte {offset}")]
    Poisoned {
        /// Archive position when the earlier failure happened.
        offset: u64,
    },
}

impl Classify for TarWriteError {
    fn kind(&self) -> ErrorKind {
        match self {
            TarWriteError::NameTooLong { .. }
            | TarWriteError::SizeTooLarge { .. }
            | TarWriteError::ArchiveTooLarge => ErrorKind::LimitExceeded,
            TarWriteError::Poisoned { .. } => ErrorKind::Internal,
            _ => ErrorKind::InvalidArgument,
        }
    }
}

/// Checks that `name` and `size` can be written.
fn validate(name: &str, size: u64) -> Result<(), TarWriteError> {
    if name.is_empty() {
        return Err(TarWriteError::EmptyName);
    }
    if name.contains('\0') {
        return Err(TarWriteError::NulInName {
            name: name.replace('\0', "\\0"),
        });
    }
    if name.len() as u64 > limits::MAX_LONG_NAME {
        return Err(TarWriteError::NameTooLong {
            len: name.len(),
            limit: limits::MAX_LONG_NAME,
        });
    }
    if size > i64::MAX as u64 {
        return Err(TarWriteError::SizeTooLarge {
            name: name.to_owned(),
            size,
        });
    }
    Ok(())
}

/// Bytes of padding after `size` content bytes.
fn block_padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// One PAX record `"<len> <key>=<value>\n"`, whose length counts itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    format!("{len} {key}={value}\n")
}

/// The PAX records an entry needs, empty when none.
fn pax_records(name: &str, size: u64) -> String {
    let mut s = String::new();
    if name.len() > NAME_FIELD {
        s.push_str(&pax_record("path", name));
    }
    if size >= PAX_SIZE_THRESHOLD {
        s.push_str(&pax_record("size", &size.to_string()));
    }
    s
}

/// Bytes of header (PAX header and records if needed, then the ustar
/// header) before an entry's content.
fn header_len(name: &str, size: u64) -> u64 {
    let pax = pax_records(name, size).len() as u64;
    if pax == 0 {
        BLOCK
    } else {
        BLOCK + pax + block_padding(pax) + BLOCK
    }
}

/// The content size of the `pad` entry needed before an entry whose
/// headers start at `pos` and take `header_len` bytes, or `None` when the
/// content already starts aligned. `pos` is a multiple of 512, so the
/// padding needed is too, and at least one block (the pad's header).
fn pad_size(pos: u64, header_len: u64) -> Option<u64> {
    let misalign = (pos + header_len) % ALIGNMENT;
    (misalign != 0).then(|| ALIGNMENT - misalign - BLOCK)
}

/// The exact layout of an archive holding `entries` in order, as
/// [`TarWriter`] writes it (with [`TarWriter::with_align`]`(align_pad)`).
pub fn archive_layout(entries: &[EntryPlan], align_pad: bool) -> crate::Result<ArchiveLayout> {
    let mut pos: u64 = 0;
    let mut out = Vec::with_capacity(entries.len() * 2);
    let overflow = || TarWriteError::ArchiveTooLarge;
    let push = |out: &mut Vec<PlannedEntry>, pos: &mut u64, name: &str, size: u64, is_pad| {
        let hl = header_len(name, size);
        let data_offset = pos.checked_add(hl).ok_or_else(overflow)?;
        let end = data_offset
            .checked_add(size)
            .and_then(|e| e.checked_add(block_padding(size)))
            .ok_or_else(overflow)?;
        out.push(PlannedEntry {
            name: name.to_owned(),
            size,
            header_offset: *pos,
            data_offset,
            is_pad,
        });
        *pos = end;
        Ok::<(), TarWriteError>(())
    };
    for (i, e) in entries.iter().enumerate() {
        validate(&e.name, e.size)?;
        if align_pad
            && i > 0
            && let Some(p) = pad_size(pos, header_len(&e.name, e.size))
        {
            push(&mut out, &mut pos, PAD_NAME, p, true)?;
        }
        push(&mut out, &mut pos, &e.name, e.size, false)?;
    }
    let total_size = pos.checked_add(2 * BLOCK).ok_or_else(overflow)?;
    Ok(ArchiveLayout {
        total_size,
        entries: out,
    })
}

/// Writes `value` as zero-padded octal digits followed by a NUL, filling
/// `field`; values too large are clamped to the largest that fits.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let max = (1u64 << (3 * digits as u32)) - 1;
    let s = format!("{:0width$o}", value.min(max), width = digits);
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

/// GNU base-256: high bit of the first byte set, the value big-endian in
/// the remaining bits.
fn put_base256(field: &mut [u8; 12], value: u64) {
    *field = [0; 12];
    field[4..].copy_from_slice(&value.to_be_bytes());
    field[0] = 0x80;
}

/// The longest prefix of `name` that fits the name field, cut at a
/// character boundary.
fn name_field(name: &str) -> &str {
    if name.len() <= NAME_FIELD {
        return name;
    }
    let mut end = NAME_FIELD;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// One ustar header block.
fn ustar_header(name: &str, size: u64, typeflag: u8, mtime: u64) -> [u8; BLOCK as usize] {
    let mut h = [0u8; BLOCK as usize];
    let n = name_field(name).as_bytes();
    h[..n.len()].copy_from_slice(n);
    put_octal(&mut h[100..108], 0o644);
    put_octal(&mut h[108..116], 0);
    put_octal(&mut h[116..124], 0);
    if size < PAX_SIZE_THRESHOLD {
        put_octal(&mut h[124..136], size);
    } else {
        let mut f = [0u8; 12];
        put_base256(&mut f, size);
        h[124..136].copy_from_slice(&f);
    }
    put_octal(&mut h[136..148], mtime);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    put_octal(&mut h[329..337], 0);
    put_octal(&mut h[337..345], 0);
    // Checksum: the unsigned byte sum with the field itself as spaces,
    // stored as six octal digits, NUL, space.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// Name of the PAX header entry describing `name`.
fn pax_header_name(name: &str) -> String {
    name_field(&format!("PaxHeaders/{name}")).to_owned()
}

/// Every header byte of one entry: PAX header and records (padded) if
/// needed, then the ustar header. Its length is [`header_len`].
fn headers(name: &str, size: u64, mtime: u64) -> Vec<u8> {
    let pax = pax_records(name, size);
    let mut out = Vec::with_capacity(header_len(name, size) as usize);
    if !pax.is_empty() {
        let len = pax.len() as u64;
        out.extend_from_slice(&ustar_header(&pax_header_name(name), len, b'x', mtime));
        out.extend_from_slice(pax.as_bytes());
        out.resize(out.len() + block_padding(len) as usize, 0);
    }
    out.extend_from_slice(&ustar_header(name, size, b'0', mtime));
    out
}

const ZEROS: [u8; ALIGNMENT as usize] = [0; ALIGNMENT as usize];

/// The entry being written.
#[derive(Debug)]
struct Open {
    name: String,
    size: u64,
    written: u64,
}

/// Streams a tar archive into `W`. Call [`begin_entry`](Self::begin_entry),
/// [`write_data`](Self::write_data) until the announced size is reached,
/// [`end_entry`](Self::end_entry), for each entry, then
/// [`finish`](Self::finish), which writes the end-of-archive blocks and
/// returns the sink. The sink is not flushed: that is its owner's job.
#[must_use = "a tar archive is incomplete until finish() is called"]
#[derive(Debug)]
pub struct TarWriter<W: Write> {
    w: W,
    pos: u64,
    mtime: u64,
    align: bool,
    entries: usize,
    open: Option<Open>,
    /// Archive position of a failed write; every later call fails.
    failed_at: Option<u64>,
}

impl<W: Write> TarWriter<W> {
    /// A writer at the start of an archive, mtime now, alignment off.
    pub fn new(w: W) -> Self {
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        TarWriter {
            w,
            pos: 0,
            mtime,
            align: false,
            entries: 0,
            open: None,
            failed_at: None,
        }
    }

    /// Sets the modification time (seconds since the epoch) written in
    /// every header; a fixed value makes archives reproducible.
    pub fn with_mtime(mut self, t: u64) -> Self {
        self.mtime = t;
        self
    }

    /// Turns 4 KiB alignment of entry contents with `pad` entries on or off
    /// (see the module documentation). The first entry is never padded.
    pub fn with_align(mut self, align: bool) -> Self {
        self.align = align;
        self
    }

    /// Archive bytes written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn check(&self) -> Result<(), TarWriteError> {
        match self.failed_at {
            Some(offset) => Err(TarWriteError::Poisoned { offset }),
            None => Ok(()),
        }
    }

    fn put(&mut self, buf: &[u8]) -> crate::Result<()> {
        if let Err(e) = self.w.write_all(buf) {
            self.failed_at = Some(self.pos);
            return Err(crate::Error::from(e).at_offset(self.pos));
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn put_zeros(&mut self, mut n: u64) -> crate::Result<()> {
        while n > 0 {
            let k = n.min(ZEROS.len() as u64);
            self.put(&ZEROS[..k as usize])?;
            n -= k;
        }
        Ok(())
    }

    /// Writes the header(s) of an entry of exactly `size` bytes, preceded
    /// by a `pad` entry when alignment asks for one.
    pub fn begin_entry(&mut self, name: &str, size: u64) -> crate::Result<()> {
        self.check()?;
        if let Some(o) = &self.open {
            return Err(TarWriteError::EntryOpen {
                name: o.name.clone(),
                written: o.written,
                size: o.size,
            }
            .into());
        }
        validate(name, size)?;
        if self.align
            && self.entries > 0
            && let Some(p) = pad_size(self.pos, header_len(name, size))
        {
            let h = headers(PAD_NAME, p, self.mtime);
            self.put(&h)?;
            self.put_zeros(p + block_padding(p))?;
        }
        let h = headers(name, size, self.mtime);
        self.put(&h)?;
        self.entries += 1;
        self.open = Some(Open {
            name: name.to_owned(),
            size,
            written: 0,
        });
        Ok(())
    }

    /// Writes content bytes of the open entry; refuses to go past the
    /// announced size.
    pub fn write_data(&mut self, data: &[u8]) -> crate::Result<()> {
        self.check()?;
        let Some(o) = &self.open else {
            return Err(TarWriteError::NoEntry.into());
        };
        if (data.len() as u64) > o.size - o.written {
            return Err(TarWriteError::Overrun {
                name: o.name.clone(),
                offset: o.written,
                len: data.len(),
                size: o.size,
            }
            .into());
        }
        self.put(data)?;
        if let Some(o) = &mut self.open {
            o.written += data.len() as u64;
        }
        Ok(())
    }

    /// Closes the open entry, writing the padding to the next block;
    /// refuses when fewer bytes than announced were written.
    pub fn end_entry(&mut self) -> crate::Result<()> {
        self.check()?;
        let Some(o) = self.open.take() else {
            return Err(TarWriteError::NoEntry.into());
        };
        if o.written != o.size {
            let err = TarWriteError::Short {
                name: o.name.clone(),
                written: o.written,
                size: o.size,
            };
            self.open = Some(o);
            return Err(err.into());
        }
        self.put_zeros(block_padding(o.size))
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the
    /// sink, unflushed.
    pub fn finish(mut self) -> crate::Result<W> {
        self.check()?;
        if let Some(o) = &self.open {
            return Err(TarWriteError::EntryOpen {
                name: o.name.clone(),
                written: o.written,
                size: o.size,
            }
            .into());
        }
        self.put_zeros(2 * BLOCK)?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::Rng;
    use std::process::Command;

    use super::*;
    use crate::ova::demux::{Demux, EntryType, Event};

    const MTIME: u64 = 1_700_000_000;

    fn content(name: &str, size: u64) -> Vec<u8> {
        let mut r = Rng(0x9e37_79b9 ^ name.len() as u64 ^ size);
        (0..size).map(|_| r.next() as u8).collect()
    }

    /// Writes `plan` with contents from `content`, in uneven pieces.
    fn write(plan: &[EntryPlan], align: bool) -> Vec<u8> {
        let mut t = TarWriter::new(Vec::new())
            .with_mtime(MTIME)
            .with_align(align);
        let mut r = Rng(42);
        for e in plan {
            t.begin_entry(&e.name, e.size).unwrap();
            let data = content(&e.name, e.size);
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = (1 + r.next() % 1500).min(rest.len() as u64) as usize;
                t.write_data(&rest[..n]).unwrap();
                rest = &rest[n..];
            }
            t.end_entry().unwrap();
        }
        t.finish().unwrap()
    }

    /// (name, size, header_offset, data_offset, content) per entry, as
    /// the demux reads them; checks that the archive ends properly.
    fn demux(bytes: &[u8]) -> Vec<(String, u64, u64, u64, Vec<u8>)> {
        let mut d = Demux::new();
        let mut out: Vec<(String, u64, u64, u64, Vec<u8>)> = Vec::new();
        let mut rest = bytes;
        let mut eof = false;
        while !rest.is_empty() {
            let (n, ev) = d.step(rest).unwrap();
            rest = &rest[n..];
            match ev {
                Some(Event::Begin(h)) => {
                    assert_eq!(h.entry_type, EntryType::Regular);
                    out.push((h.name, h.size, h.header_offset, h.data_offset, Vec::new()));
                }
                Some(Event::Data(b)) => out.last_mut().unwrap().4.extend_from_slice(b),
                Some(Event::Eof) => eof = true,
                _ => {}
            }
        }
        assert!(eof, "no end-of-archive marker");
        d.finish().unwrap();
        out
    }

    fn plan(entries: &[(&str, u64)]) -> Vec<EntryPlan> {
        entries
            .iter()
            .map(|&(name, size)| EntryPlan {
                name: name.to_owned(),
                size,
            })
            .collect()
    }

    fn long_name() -> String {
        format!("{}-disk.qcow2", "x".repeat(140))
    }

    fn sample() -> Vec<EntryPlan> {
        let long = long_name();
        plan(&[
            ("vm.ovf", 1234),
            ("disk1.qcow2", 10_000),
            ("empty.qcow2", 0),
            (&long, 512),
            ("disk3.qcow2", 4096 * 3 + 7),
            ("vm.mf", 300),
        ])
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for (k, v) in [
            ("size", "8589934593"),
            ("path", "a"),
            ("path", &"y".repeat(90)),
            ("path", &"y".repeat(93)),
            ("path", &"y".repeat(994)),
        ] {
            let r = pax_record(k, v);
            let (n, _) = r.split_once(' ').unwrap();
            assert_eq!(n.parse::<usize>().unwrap(), r.len(), "{r:?}");
            assert!(r.ends_with('\n'));
        }
        assert_eq!(pax_record("size", "8589934593"), "19 size=8589934593\n");
    }

    #[test]
    fn layout_matches_bytes_and_demux() {
        for align in [false, true] {
            let plan = sample();
            let layout = archive_layout(&plan, align).unwrap();
            let bytes = write(&plan, align);
            assert_eq!(layout.total_size, bytes.len() as u64, "align={align}");
            let got = demux(&bytes);
            assert_eq!(got.len(), layout.entries.len());
            for (g, p) in got.iter().zip(&layout.entries) {
                assert_eq!(
                    (&g.0, g.1, g.2, g.3),
                    (&p.name, p.size, p.header_offset, p.data_offset)
                );
                if p.is_pad {
                    assert_eq!(p.name, PAD_NAME);
                    assert!(g.4.iter().all(|&b| b == 0));
                } else {
                    assert_eq!(g.4, content(&p.name, p.size), "{}", p.name);
                }
            }
            let names: Vec<&str> = layout
                .entries
                .iter()
                .filter(|e| !e.is_pad)
                .map(|e| e.name.as_str())
                .collect();
            let want: Vec<&str> = plan.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(names, want);
            if align {
                assert!(layout.entries.iter().any(|e| e.is_pad));
                for e in layout.entries.iter().skip(1).filter(|e| !e.is_pad) {
                    assert_eq!(e.data_offset % ALIGNMENT, 0, "{}", e.name);
                }
            } else {
                assert!(layout.entries.iter().all(|e| !e.is_pad));
            }
        }
    }

    #[test]
    fn no_pad_when_already_aligned() {
        // 512 header + 3584 content = 4096: the next header is at 4096, its
        // content at 4608; a pad of header only (size 3072 + 512) would
        // bring it to 8192.
        let p = plan(&[("a", 3584), ("b", 10)]);
        let l = archive_layout(&p, true).unwrap();
        assert_eq!(l.entries[1].name, PAD_NAME);
        assert_eq!(l.entries[1].size, 3072);
        assert_eq!(l.entries[2].data_offset, 8192);
        // Content of the first entry ends so that the next header is at
        // 3584: its content lands at 4096 without a pad.
        let p = plan(&[("a", 3072), ("b", 10)]);
        let l = archive_layout(&p, true).unwrap();
        assert_eq!(l.entries.len(), 2);
        assert_eq!(l.entries[1].data_offset, 4096);
        // Zero-size pad: the header alone fixes the alignment.
        let p = plan(&[("a", 2560), ("b", 10)]);
        let l = archive_layout(&p, true).unwrap();
        assert_eq!(l.entries[1].size, 0);
        assert_eq!(l.entries[2].data_offset, 4096);
        assert_eq!(write(&p, true).len() as u64, l.total_size);
    }

    #[test]
    fn header_fields() {
        let mut t = TarWriter::new(Vec::new()).with_mtime(MTIME);
        t.begin_entry("vm.ovf", 1000).unwrap();
        let h = t.w.clone();
        assert_eq!(h.len(), 512);
        assert_eq!(&h[..7], b"vm.ovf\0");
        assert_eq!(&h[100..108], b"0000644\0");
        assert_eq!(&h[124..136], b"00000001750\0");
        assert_eq!(&h[136..148], format!("{MTIME:011o}\0").as_bytes());
        assert_eq!(h[156], b'0');
        assert_eq!(&h[257..265], b"ustar\x0000");
        assert_eq!(&h[265..270], b"root\0");
        let stored = std::str::from_utf8(&h[148..154]).unwrap();
        let mut copy = h.clone();
        copy[148..156].copy_from_slice(b"        ");
        let sum: u32 = copy.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(&h[154..156], b"\0 ");
    }

    /// Writes only the headers of one entry of `size` bytes.
    fn headers_only(name: &str, size: u64) -> Vec<u8> {
        let mut t = TarWriter::new(Vec::new()).with_mtime(MTIME);
        t.begin_entry(name, size).unwrap();
        assert_eq!(t.position(), header_len(name, size));
        t.w
    }

    #[test]
    fn pax_size_at_8_gib_plus_one() {
        let size = PAX_SIZE_THRESHOLD + 1;
        let h = headers_only("big.qcow2", size);
        assert_eq!(h.len(), 1536);
        // The PAX header.
        assert_eq!(h[156], b'x');
        assert_eq!(&h[..21], b"PaxHeaders/big.qcow2\0");
        assert_eq!(&h[124..136], b"00000000023\0");
        assert_eq!(&h[512..531], b"19 size=8589934593\n");
        assert!(h[531..1024].iter().all(|&b| b == 0));
        // The ustar header: base-256 size.
        let u = &h[1024..];
        assert_eq!(u[156], b'0');
        assert_eq!(&u[124..136], &[0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1]);
        // The demux reads it, fed the header blocks whole and byte by byte.
        for piece in [h.len(), 1] {
            let mut d = Demux::new();
            let mut begin = None;
            for chunk in h.chunks(piece) {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let (n, ev) = d.step(rest).unwrap();
                    rest = &rest[n..];
                    if let Some(Event::Begin(b)) = ev {
                        begin = Some(b);
                    }
                }
            }
            let b = begin.expect("no Begin event");
            assert_eq!(b.name, "big.qcow2");
            assert_eq!(b.size, size);
            assert_eq!(b.header_offset, 0);
            assert_eq!(b.data_offset, 1536);
        }
        // Just under the threshold: plain octal, no PAX header.
        let h = headers_only("big.qcow2", PAX_SIZE_THRESHOLD - 1);
        assert_eq!(h.len(), 512);
        assert_eq!(&h[124..136], b"77777777777\0");
        // Exactly 8 GiB needs PAX.
        assert_eq!(headers_only("big.qcow2", PAX_SIZE_THRESHOLD).len(), 1536);
    }

    #[test]
    fn pax_size_read_by_python() {
        let size = PAX_SIZE_THRESHOLD + 1;
        let name = long_name();
        let h = headers_only(&name, size);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head.tar");
        std::fs::write(&path, &h).unwrap();
        let script = "import sys, tarfile\n\
                      t = tarfile.open(sys.argv[1], mode='r|')\n\
                      m = t.next()\n\
                      print(m.name, m.size, m.offset, m.offset_data, m.type.decode())";
        let out = Command::new("python3")
            .args(["-c", script])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = format!("{name} {size} 0 {} 0\n", h.len());
        assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    }

    /// A complete archive of an 8 GiB + 1 entry as a sparse file: headers
    /// written, content and end blocks left as holes. GNU tar seeks over
    /// the content of a regular file when listing.
    #[test]
    fn pax_size_listed_by_gnu_tar_sparse() {
        let size = PAX_SIZE_THRESHOLD + 1;
        let p = plan(&[("vm.ovf", 10), ("big.qcow2", size), ("vm.mf", 5)]);
        let layout = archive_layout(&p, true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.ova");
        let f = std::fs::File::create(&path).unwrap();
        {
            use std::os::unix::fs::FileExt;
            for e in &layout.entries {
                let hs = headers(&e.name, e.size, MTIME);
                assert_eq!(e.data_offset - e.header_offset, hs.len() as u64);
                f.write_at(&hs, e.header_offset).unwrap();
                if !e.is_pad {
                    f.write_at(&content(&e.name, e.size.min(16)), e.data_offset)
                        .unwrap();
                }
            }
        }
        f.set_len(layout.total_size).unwrap();
        drop(f);
        let out = Command::new("tar")
            .args(["-tvf"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        let rows: Vec<(u64, &str)> = listing
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[2].parse().unwrap(), f[5])
            })
            .collect();
        let want: Vec<(u64, &str)> = layout
            .entries
            .iter()
            .map(|e| (e.size, e.name.as_str()))
            .collect();
        assert_eq!(rows, want);
        assert_eq!(rows[2], (size, "big.qcow2"));
    }

    #[test]
    fn gnu_tar_lists_and_extracts() {
        let plan = sample();
        let bytes = write(&plan, true);
        let layout = archive_layout(&plan, true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.ova");
        std::fs::write(&path, &bytes).unwrap();
        let out = Command::new("tar")
            .args(["-tvf"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        let rows: Vec<(String, u64, String)> = listing
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[1].to_owned(), f[2].parse().unwrap(), f[5].to_owned())
            })
            .collect();
        let want: Vec<(String, u64, String)> = layout
            .entries
            .iter()
            .map(|e| ("root/root".to_owned(), e.size, e.name.clone()))
            .collect();
        assert_eq!(rows, want);
        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let out = Command::new("tar")
            .args(["-xf"])
            .arg(&path)
            .arg("-C")
            .arg(&x)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for e in &plan {
            let got = std::fs::read(x.join(&e.name)).unwrap();
            assert_eq!(got, content(&e.name, e.size), "{}", e.name);
        }
        let pad = std::fs::read(x.join(PAD_NAME)).unwrap();
        assert!(pad.iter().all(|&b| b == 0));
    }

    #[test]
    fn python_offsets_match_layout() {
        for align in [false, true] {
            let plan = sample();
            let bytes = write(&plan, align);
            let layout = archive_layout(&plan, align).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.ova");
            std::fs::write(&path, &bytes).unwrap();
            let script = "import sys, tarfile\n\
                          for m in tarfile.open(sys.argv[1]):\n\
                          \x20   print(m.name, m.size, m.offset, m.offset_data)";
            let out = Command::new("python3")
                .args(["-c", script])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let want: String = layout
                .entries
                .iter()
                .map(|e| {
                    format!(
                        "{} {} {} {}\n",
                        e.name, e.size, e.header_offset, e.data_offset
                    )
                })
                .collect();
            assert_eq!(String::from_utf8_lossy(&out.stdout), want);
        }
    }

    #[test]
    fn misuse_is_refused() {
        let mut t = TarWriter::new(Vec::new()).with_mtime(MTIME);
        assert_eq!(
            t.write_data(b"x").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert!(t.end_entry().is_err());
        assert!(t.begin_entry("", 1).is_err());
        assert!(t.begin_entry("a\0b", 1).is_err());
        assert!(t.begin_entry(&"n".repeat(5000), 1).is_err());
        assert!(t.begin_entry("big", u64::MAX).is_err());
        assert_eq!(t.position(), 0);
        t.begin_entry("a", 3).unwrap();
        assert!(t.begin_entry("b", 1).is_err());
        t.write_data(b"ab").unwrap();
        let e = t.write_data(b"cd").unwrap_err();
        assert!(e.to_string().contains("overruns"), "{e}");
        let e = t.end_entry().unwrap_err();
        assert!(e.to_string().contains("ended at byte 2"), "{e}");
        t.write_data(b"c").unwrap();
        t.end_entry().unwrap();
        t.begin_entry("b", 1).unwrap();
        assert!(t.finish().is_err());
        assert!(archive_layout(&plan(&[("", 1)]), false).is_err());
    }

    /// A sink that fails after some bytes.
    struct Failing(usize);
    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk full"));
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn sink_errors_are_sticky() {
        let mut t = TarWriter::new(Failing(700)).with_mtime(MTIME);
        t.begin_entry("a", 1000).unwrap();
        let e = t.write_data(&[1; 1000]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.context().offset, Some(512));
        let e = t.write_data(&[1; 10]).unwrap_err();
        assert!(e.to_string().contains("failed earlier"), "{e}");
    }

    #[test]
    fn random_plans_agree() {
        let mut r = Rng(7);
        for round in 0..40 {
            let n = 1 + (r.next() % 5) as usize;
            let plan: Vec<EntryPlan> = (0..n)
                .map(|i| EntryPlan {
                    name: if r.next().is_multiple_of(4) {
                        format!("{}{round}-{i}", "é".repeat(60))
                    } else {
                        format!("e{round}-{i}")
                    },
                    size: r.next() % 9000,
                })
                .collect();
            let align = r.next().is_multiple_of(2);
            let layout = archive_layout(&plan, align).unwrap();
            let bytes = write(&plan, align);
            assert_eq!(layout.total_size, bytes.len() as u64);
            let got = demux(&bytes);
            let got: Vec<(String, u64, u64, u64)> =
                got.into_iter().map(|g| (g.0, g.1, g.2, g.3)).collect();
            let want: Vec<(String, u64, u64, u64)> = layout
                .entries
                .iter()
                .map(|e| (e.name.clone(), e.size, e.header_offset, e.data_offset))
                .collect();
            assert_eq!(got, want);
        }
    }
}
