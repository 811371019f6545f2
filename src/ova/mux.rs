//! The tar multiplexer of the export side: ustar headers, a PAX `size`
//! record for entries of 8 GiB and more (and a PAX `path` for names over
//! 100 bytes), optional `pad` entries that start each disk's data on a
//! 4 KiB boundary. [`archive_layout`] predicts every byte [`TarWriter`]
//! writes, so the archive size is known before streaming.

use std::io::Write;

use crate::error::{Error, ErrorKind, Result};

const BLOCK: u64 = 512;
/// Largest size the 11-digit octal field holds.
const OCTAL_SIZE_MAX: u64 = (1 << 33) - 1;
/// Alignment of disk data with `pad` entries.
pub const PAD_ALIGN: u64 = 4096;
/// Name of padding entries (what oVirt writes and readers skip).
pub const PAD_NAME: &str = "pad";

/// An entry to lay out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPlan {
    /// Entry name.
    pub name: String,
    /// Content size.
    pub size: u64,
    /// Start this entry's content on a 4 KiB boundary (when the layout aligns).
    pub align: bool,
}

/// Where an entry lands in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEntry {
    /// Entry name.
    pub name: String,
    /// Content size.
    pub size: u64,
    /// Offset of its first header block.
    pub header_offset: u64,
    /// Offset of its content.
    pub data_offset: u64,
    /// A padding entry inserted for alignment.
    pub is_pad: bool,
}

/// The whole archive, predicted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLayout {
    /// Exact archive size, end blocks included.
    pub total_size: u64,
    /// Entries in order, padding included.
    pub entries: Vec<PlannedEntry>,
}

fn pad512(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// One PAX record, `"<len> key=value\n"`, whose length counts itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    format!("{len} {key}={value}\n")
}

fn pax_records(name: &str, size: u64) -> Option<String> {
    let mut r = String::new();
    if name.len() > 100 {
        r.push_str(&pax_record("path", name));
    }
    if size > OCTAL_SIZE_MAX {
        r.push_str(&pax_record("size", &size.to_string()));
    }
    (!r.is_empty()).then_some(r)
}

/// Bytes of header (PAX extension included) before an entry's content.
fn header_len(name: &str, size: u64) -> u64 {
    match pax_records(name, size) {
        Some(r) => BLOCK + pad512(r.len() as u64) + BLOCK,
        None => BLOCK,
    }
}

/// Lays out `entries`; with `align`, a `pad` entry goes before each entry
/// marked `align` whose content would not start on a 4 KiB boundary.
pub fn archive_layout(entries: &[EntryPlan], align: bool) -> Result<ArchiveLayout> {
    let mut pos = 0u64;
    let mut out = Vec::with_capacity(entries.len() * 2);
    for e in entries {
        check_name(&e.name)?;
        let hdr = header_len(&e.name, e.size);
        if align && e.align && (pos + hdr) % PAD_ALIGN != 0 {
            let pad_data = (PAD_ALIGN - (pos + BLOCK + hdr) % PAD_ALIGN) % PAD_ALIGN;
            out.push(PlannedEntry {
                name: PAD_NAME.to_owned(),
                size: pad_data,
                header_offset: pos,
                data_offset: pos + BLOCK,
                is_pad: true,
            });
            pos += BLOCK + pad_data;
        }
        out.push(PlannedEntry {
            name: e.name.clone(),
            size: e.size,
            header_offset: pos,
            data_offset: pos + hdr,
            is_pad: false,
        });
        pos = pos
            .checked_add(hdr + pad512(e.size))
            .ok_or_else(|| Error::new(ErrorKind::LimitExceeded, "archive size overflows"))?;
    }
    Ok(ArchiveLayout {
        total_size: pos + 2 * BLOCK,
        entries: out,
    })
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name.contains('\0') || name == ".." {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("'{name}' is not a plain entry name"),
        ));
    }
    Ok(())
}

fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    let s = format!("{v:0w$o}");
    field[..w].copy_from_slice(s.as_bytes());
    field[w] = 0;
}

/// One ustar header block.
fn ustar_header(name: &str, size: u64, typeflag: u8, mtime: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.as_bytes();
    let n = &n[..n.len().min(100)];
    h[..n.len()].copy_from_slice(n);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if size > OCTAL_SIZE_MAX {
        // GNU base-256 as well, for readers without PAX; PAX's size wins.
        h[124] = 0x80;
        h[124 + 4..136].copy_from_slice(&size.to_be_bytes());
    } else {
        octal(&mut h[124..136], size);
    }
    octal(&mut h[136..148], mtime.min(OCTAL_SIZE_MAX));
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// Writes a tar stream entry by entry; see the module documentation.
#[derive(Debug)]
#[must_use = "call finish() to write the end-of-archive blocks"]
pub struct TarWriter<W: Write> {
    out: W,
    pos: u64,
    mtime: u64,
    /// Bytes of the current entry still to come.
    remaining: Option<(String, u64, u64)>,
}

impl<W: Write> TarWriter<W> {
    /// A writer at offset 0 with entries dated now.
    pub fn new(out: W) -> Self {
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        TarWriter {
            out,
            pos: 0,
            mtime,
            remaining: None,
        }
    }

    /// Dates entries at `t` (seconds since the epoch).
    pub fn with_mtime(mut self, t: u64) -> Self {
        self.mtime = t;
        self
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.out
            .write_all(b)
            .map_err(|e| Error::from(e).with_message("writing the archive"))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Writes the header(s) of an entry of `size` bytes.
    pub fn begin_entry(&mut self, name: &str, size: u64) -> Result<()> {
        if let Some((n, _, _)) = &self.remaining {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("entry '{n}' is still open"),
            ));
        }
        check_name(name)?;
        if let Some(records) = pax_records(name, size) {
            let pax_name = format!("PaxHeaders/{}", &name[..name.len().min(80)]);
            let h = ustar_header(&pax_name, records.len() as u64, b'x', self.mtime);
            self.put(&h)?;
            self.put(records.as_bytes())?;
            self.zero_pad(records.len() as u64)?;
        }
        let h = ustar_header(name, size, b'0', self.mtime);
        self.put(&h)?;
        self.remaining = Some((name.to_owned(), size, size));
        Ok(())
    }

    /// Writes content of the open entry; no more than announced.
    pub fn write_data(&mut self, data: &[u8]) -> Result<()> {
        let Some((name, _, left)) = &mut self.remaining else {
            return Err(Error::new(ErrorKind::InvalidArgument, "no entry is open"));
        };
        if data.len() as u64 > *left {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("more content than the {} bytes announced", *left),
            )
            .in_entry(name));
        }
        *left -= data.len() as u64;
        self.put(data)
    }

    /// Closes the entry (all announced bytes must have been written).
    pub fn end_entry(&mut self) -> Result<()> {
        let Some((name, size, left)) = self.remaining.take() else {
            return Err(Error::new(ErrorKind::InvalidArgument, "no entry is open"));
        };
        if left != 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{left} of the {size} announced bytes were not written"),
            )
            .in_entry(&name));
        }
        self.zero_pad(size)
    }

    /// A whole entry of `size` zero bytes (a `pad` entry).
    pub fn zero_entry(&mut self, name: &str, size: u64) -> Result<()> {
        self.begin_entry(name, size)?;
        let zeros = [0u8; BLOCK as usize];
        let mut left = size;
        while left > 0 {
            let n = left.min(BLOCK);
            self.write_data(&zeros[..n as usize])?;
            left -= n;
        }
        self.end_entry()
    }

    fn zero_pad(&mut self, len: u64) -> Result<()> {
        let pad = pad512(len) - len;
        if pad > 0 {
            self.put(&[0u8; BLOCK as usize][..pad as usize])?;
        }
        Ok(())
    }

    /// Writes the two end-of-archive blocks and returns the sink.
    pub fn finish(mut self) -> Result<W> {
        if let Some((n, _, _)) = &self.remaining {
            return Err(Error::new(ErrorKind::InvalidArgument, "entry still open").in_entry(n));
        }
        self.put(&[0u8; 2 * BLOCK as usize])?;
        self.out
            .flush()
            .map_err(|e| Error::from(e).with_message("writing the archive"))?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ova::demux::{Demux, Event};

    fn plan(name: &str, size: u64, align: bool) -> EntryPlan {
        EntryPlan {
            name: name.into(),
            size,
            align,
        }
    }

    fn write(entries: &[EntryPlan], align: bool) -> (ArchiveLayout, Vec<u8>) {
        let layout = archive_layout(entries, align).unwrap();
        let mut w = TarWriter::new(Vec::new()).with_mtime(0);
        for e in &layout.entries {
            if e.is_pad {
                w.zero_entry(&e.name, e.size).unwrap();
                continue;
            }
            assert_eq!(w.position(), e.header_offset);
            w.begin_entry(&e.name, e.size).unwrap();
            assert_eq!(w.position(), e.data_offset);
            let data: Vec<u8> = (0..e.size).map(|i| (i % 251) as u8).collect();
            w.write_data(&data).unwrap();
            w.end_entry().unwrap();
        }
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() as u64, layout.total_size);
        (layout, bytes)
    }

    fn demux_names(bytes: &[u8]) -> Vec<(String, u64, u64)> {
        let mut d = Demux::new();
        let mut rest = bytes;
        let mut out = Vec::new();
        while !rest.is_empty() {
            let (n, ev) = d.step(rest).unwrap();
            rest = &rest[n..];
            if let Some(Event::Begin(h)) = ev {
                out.push((h.name, h.size, h.data_offset));
            }
        }
        d.finish().unwrap();
        out
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for v in ["1", "123456789", &"x".repeat(95), &"x".repeat(96)] {
            let r = pax_record("path", v);
            let (len, _) = r.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "{r:?}");
        }
    }

    #[test]
    fn layout_matches_writer_and_demux() {
        let long = "d".repeat(150) + ".qcow2";
        let entries = [
            plan("vm.ovf", 700, false),
            plan("disk1.qcow2", 196_608 + 3, true),
            plan(&long, 1000, true),
            plan("vm.mf", 80, false),
        ];
        for align in [false, true] {
            let (layout, bytes) = write(&entries, align);
            let seen = demux_names(&bytes);
            let want: Vec<_> = layout
                .entries
                .iter()
                .map(|e| (e.name.clone(), e.size, e.data_offset))
                .collect();
            assert_eq!(seen, want);
            if align {
                for e in layout.entries.iter().filter(|e| e.name.ends_with(".qcow2")) {
                    assert_eq!(e.data_offset % PAD_ALIGN, 0, "{}", e.name);
                }
                assert!(layout.entries.iter().any(|e| e.is_pad));
            }
        }
    }

    #[test]
    fn gnu_tar_lists_and_extracts_it() {
        let long = "l".repeat(120) + ".img";
        let entries = [
            plan("vm.ovf", 700, false),
            plan("disk1.qcow2", 5000, true),
            plan(&long, 10, true),
        ];
        let (_, bytes) = write(&entries, true);
        let dir = tempfile::tempdir().unwrap();
        let ova = dir.path().join("t.ova");
        std::fs::write(&ova, &bytes).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&ova)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let list = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = list
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .collect();
        assert_eq!(names.first(), Some(&"vm.ovf"));
        assert!(names.contains(&"pad"));
        assert!(names.contains(&long.as_str()));
        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let st = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&ova)
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            std::fs::metadata(x.join("disk1.qcow2")).unwrap().len(),
            5000
        );
        assert_eq!(std::fs::metadata(x.join(&long)).unwrap().len(), 10);
    }

    #[test]
    fn eight_gib_plus_one_gets_a_pax_size() {
        let size = (8u64 << 30) + 1;
        let layout = archive_layout(&[plan("big.qcow2", size, false)], false).unwrap();
        let mut w = TarWriter::new(Vec::new()).with_mtime(0);
        w.begin_entry("big.qcow2", size).unwrap();
        let header = w.out.clone();
        assert_eq!(header.len() as u64, layout.entries[0].data_offset);
        assert_eq!(
            layout.total_size,
            layout.entries[0].data_offset + pad512(size) + 1024
        );
        let text = String::from_utf8_lossy(&header[512..1024]);
        assert!(text.contains(&format!("size={size}\n")), "{text}");
        // The demux reads the PAX size from the headers alone.
        let mut d = Demux::new();
        let mut rest = &header[..];
        let mut begin = None;
        while !rest.is_empty() {
            let (n, ev) = d.step(rest).unwrap();
            rest = &rest[n..];
            if let Some(Event::Begin(h)) = ev {
                begin = Some(h);
            }
        }
        let h = begin.expect("a Begin event");
        assert_eq!(h.name, "big.qcow2");
        assert_eq!(h.size, size);
    }

    #[test]
    fn writer_enforces_announced_sizes() {
        let mut w = TarWriter::new(Vec::new());
        w.begin_entry("a", 3).unwrap();
        assert!(w.write_data(b"abcd").is_err());
        w.write_data(b"ab").unwrap();
        assert!(w.end_entry().is_err());
        assert!(archive_layout(&[plan("../x", 1, false)], false).is_err());
    }
}
