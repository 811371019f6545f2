//! The import pipeline: package bytes in, verified target volumes out.
//!
//! [`Importer`] is pushed the package in pieces of any size. It drives the
//! tar demux, routes each entry (descriptor, manifest, disk, known extra),
//! digests every entry while it passes, decodes disks into target volumes
//! written under `.partial` names, and on [`Importer::finish`] checks the
//! package against its OVF and manifest before renaming any target.
//! Dropping an unfinished importer removes every partial target.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use crate::codec::probe;
use crate::codec::select::Decoder;
use crate::codec::{DiskDecoder, ExtentSink, SourceFormat};
use crate::error::{Error, ErrorKind, Result};
use crate::limits;
use crate::ova::demux::{Demux, EntryHeader, EntryType, Event};
use crate::ova::manifest::{self, Algorithm, Manifest};
use crate::ova::ovf::{self, Compression, Envelope};
use crate::pipeline::digests::{self, DigestTap};
use crate::pipeline::package_head::PackageHead;
use crate::pipeline::progress::Progress;
use crate::roots::{AllowedRoots, Dir};
use crate::sink::format::TargetFormat;
use crate::sink::partial::{self, Existing, PartialFile};
use crate::sink::spool::FileSpool;
use crate::sink::target::TargetVolume;
use crate::sink::writer::VolumeWriter;

/// Entries oVirt and others add beside the disks; skipped (but digested).
const KNOWN_EXTRAS: [&str; 3] = ["tpm.dat", "nvram.dat", "pad"];

/// Where one disk goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskTarget {
    /// Final path of the target volume.
    pub path: PathBuf,
    /// Format of the target volume.
    pub format: TargetFormat,
}

/// How disks are mapped to targets.
#[derive(Debug, Clone)]
pub enum Targets {
    /// Explicit `href → target` mapping; every disk must be named.
    Map(BTreeMap<String, DiskTarget>),
    /// Every disk to `DIR/<href stem>.<format>`.
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The format of every target.
        format: TargetFormat,
    },
}

impl Targets {
    /// Where the disk `href` goes; `None` when no `--disk` names it.
    fn target_for(&self, href: &str) -> Result<Option<DiskTarget>> {
        match self {
            Targets::Map(m) => Ok(m.get(href).cloned()),
            Targets::Dir { dir, format } => {
                if let Some(why) = crate::names::unfit_for_file_name(href) {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "--dir cannot make a file name of this href: {why}; name its target with --disk"
                        ),
                    ));
                }
                let stem = Path::new(href)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| href.to_owned());
                Ok(Some(DiskTarget {
                    path: dir.join(format!("{stem}.{}", format.extension())),
                    format: *format,
                }))
            }
        }
    }
}

/// What an import did, for `--json` and logs.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    /// Bytes of the package consumed.
    pub bytes_read: u64,
    /// Name of the OVF entry.
    pub ovf: String,
    /// `verified`, `absent` or `not verified`.
    pub manifest: &'static str,
    /// One record per disk written.
    pub disks: Vec<DiskSummary>,
    /// Entries passed over (known extras, non-disk files).
    pub skipped: Vec<String>,
}

/// One imported disk.
#[derive(Debug, Clone, Serialize)]
pub struct DiskSummary {
    /// Entry name (OVF href).
    pub href: String,
    /// Format found in the entry: the content decides, whatever the OVF
    /// declares.
    pub source_format: &'static str,
    /// The format the OVF's `Disk/@ovf:format` names (`vmdk
    /// (streamOptimized)`, `qcow2`, ...; the URI itself when it names none
    /// ovaio knows); `None` when the OVF names none.
    pub declared_format: Option<String>,
    /// `none` or `gzip`, as found in the entry.
    pub compression: &'static str,
    /// Final path of the target.
    pub target: PathBuf,
    /// Format of the target.
    pub target_format: &'static str,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// Where the OVF's declarations and the content disagree, one line
    /// each, starting with the href: what was declared and what was done.
    pub warnings: Vec<String>,
}

/// One tar entry seen so far.
#[derive(Debug)]
struct EntryRecord {
    name: String,
    size: u64,
    digests: Vec<(Algorithm, Vec<u8>)>,
}

#[derive(Debug)]
enum Role {
    Ovf(Vec<u8>),
    Manifest(Vec<u8>),
    Disk(usize),
    Skip,
}

#[derive(Debug)]
struct Current {
    record: usize,
    role: Role,
    /// Package offset of the entry's first content byte.
    data_offset: u64,
    received: u64,
}

/// One disk being written.
#[derive(Debug)]
struct DiskState {
    href: String,
    target: DiskTarget,
    decoder: Decoder,
    out: TargetSlot,
}

/// A target volume opened lazily, once its capacity is known.
///
/// The result must not depend on whether the OVF came before the disk or
/// after it. With the OVF first, its capacity is known when the volume is
/// opened. A disk before the OVF is opened at the image's own capacity
/// (qcow2, VMDK) or provisionally (raw, gzip), and everything that rule
/// would have decided is settled when the OVF arrives: see
/// [`TargetSlot::settle`].
#[derive(Debug)]
struct TargetSlot {
    target: DiskTarget,
    /// The target's directory, opened when the disk's entry began.
    dir: Arc<Dir>,
    /// The target's file name in `dir`.
    name: OsString,
    /// What happens to a file already at the target's name.
    existing: Existing,
    /// Capacity from the OVF DiskSection.
    capacity_hint: Option<u64>,
    /// Size of a raw entry's disk data.
    entry_hint: Option<u64>,
    /// Size of a raw entry whose last sector may be a fixed VHD's footer
    /// rather than data: what a refusal names, whether the OVF comes
    /// before the entry's end or after it.
    entry_size: Option<u64>,
    /// Opened before any capacity was known (raw or gzip before the OVF).
    provisional: bool,
    /// The image counts whole sectors past the OVF's exact capacity: bytes
    /// from here on must be zero and are dropped.
    zero_tail_from: Option<u64>,
    /// An image before the OVF: its last sector, held back until the OVF
    /// says whether the capacity ends inside it.
    tail: Option<Tail>,
    opened: Option<(PartialFile, VolumeWriter<TargetVolume>)>,
}

/// The last sector of an image that arrived before the OVF.
#[derive(Debug)]
struct Tail {
    /// Guest offset of its first byte.
    start: u64,
    /// Its bytes (zero where nothing was written).
    bytes: Vec<u8>,
}

/// A raw entry larger than the disk it is the content of.
fn raw_too_large(entry: u64, capacity: u64) -> Error {
    Error::new(
        ErrorKind::CorruptImage,
        format!(
            "raw disk entry is {entry} bytes, more than the disk capacity of {capacity} bytes in the OVF"
        ),
    )
}

/// Non-zero image bytes past the exact capacity the OVF gives.
fn past_ovf_capacity(capacity: u64) -> Error {
    Error::new(
        ErrorKind::CorruptImage,
        format!("non-zero data past the OVF capacity of {capacity} bytes"),
    )
}

impl TargetSlot {
    fn open(&mut self, capacity: u64) -> Result<&mut VolumeWriter<TargetVolume>> {
        if self.opened.is_none() {
            if capacity > limits::MAX_CAPACITY {
                return Err(Error::new(
                    ErrorKind::LimitExceeded,
                    format!("disk capacity {capacity} exceeds the limit"),
                ));
            }
            let (partial, file) =
                PartialFile::create_in(self.dir.clone(), &self.name, self.existing)?;
            let volume = self
                .target
                .format
                .create(file, capacity)
                .map_err(|e| e.at_path(partial.partial_path()))?;
            self.opened = Some((partial, VolumeWriter::new(volume)));
        }
        match &mut self.opened {
            Some((_, w)) => Ok(w),
            None => Err(Error::new(ErrorKind::Io, "target not open")),
        }
    }

    fn writer(&mut self) -> Result<&mut VolumeWriter<TargetVolume>> {
        if self.opened.is_none() {
            if let Some(cap) = self.capacity_hint {
                return self.open(cap);
            }
            // A raw disk before the OVF: its size is settled when the OVF
            // arrives.
            let (partial, file) =
                PartialFile::create_in(self.dir.clone(), &self.name, self.existing)?;
            let volume = self
                .target
                .format
                .create_provisional(file)
                .map_err(|e| e.at_path(partial.partial_path()))?;
            self.opened = Some((partial, VolumeWriter::new(volume)));
            self.provisional = true;
        }
        self.open(0)
    }

    /// The OVF arrived after this disk with `capacity`: settle what the
    /// OVF-first rules would have decided.
    fn settle(&mut self, capacity: u64) -> Result<()> {
        self.capacity_hint = Some(capacity);
        if self.provisional {
            if let Some(data) = self.entry_hint
                && data > capacity
            {
                return Err(raw_too_large(self.entry_size.unwrap_or(data), capacity));
            }
            if let Some((_, w)) = &mut self.opened {
                w.set_capacity(capacity)?;
            }
            self.provisional = false;
            return Ok(());
        }
        let Some(tail) = self.tail.take() else {
            return Ok(());
        };
        let image = tail.start + tail.bytes.len() as u64;
        let mut keep = tail.bytes.len();
        if capacity < image && image == capacity.div_ceil(512) * 512 {
            keep = (capacity - tail.start) as usize;
            if !crate::sink::writer::is_zero(&tail.bytes[keep..]) {
                return Err(past_ovf_capacity(capacity));
            }
            self.open(0)?.set_capacity(capacity)?;
        } else if capacity != image {
            self.warn_capacity(capacity, image);
        }
        if !crate::sink::writer::is_zero(&tail.bytes[..keep]) {
            self.open(0)?.data(tail.start, &tail.bytes[..keep])?;
        }
        Ok(())
    }

    fn warn_capacity(&self, ovf: u64, image: u64) {
        tracing::warn!(
            target = %self.target.path.display(),
            ovf,
            image,
            "OVF capacity differs from the image's own; using the image's"
        );
    }

    /// Copies what of `data` at `offset` falls into the held-back last
    /// sector (zeroes it for `data == None`, `len` bytes) and returns how
    /// much lies before it.
    fn hold_tail(&mut self, offset: u64, data: Option<&[u8]>, len: u64) -> Result<u64> {
        let Some(tail) = &mut self.tail else {
            return Ok(len);
        };
        let end = offset.saturating_add(len);
        if end <= tail.start {
            return Ok(len);
        }
        let image = tail.start + tail.bytes.len() as u64;
        if end > image {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!(
                    "extent at guest offset {offset} (+{len} bytes) lies beyond the disk capacity of {image} bytes"
                ),
            ));
        }
        let before = tail.start.saturating_sub(offset);
        let at = (offset + before - tail.start) as usize;
        let n = (len - before) as usize;
        let dst = &mut tail.bytes[at..at + n];
        match data {
            Some(d) => dst.copy_from_slice(&d[before as usize..]),
            None => dst.fill(0),
        }
        Ok(before)
    }
}

impl ExtentSink for TargetSlot {
    fn capacity(&mut self, bytes: u64) -> Result<()> {
        let Some(hint) = self.capacity_hint else {
            // Before the OVF: the last sector waits for its capacity.
            if bytes > 0 && bytes <= limits::MAX_CAPACITY {
                let start = (bytes - 1) / 512 * 512;
                self.tail = Some(Tail {
                    start,
                    bytes: vec![0; (bytes - start) as usize],
                });
            }
            return self.open(bytes).map(|_| ());
        };
        // qcow2 and VMDK count whole sectors: an image one partial sector
        // larger than the OVF capacity is that capacity, rounded up.
        if hint < bytes && bytes == hint.div_ceil(512) * 512 {
            self.zero_tail_from = Some(hint);
            return self.open(hint).map(|_| ());
        }
        if hint != bytes {
            self.warn_capacity(hint, bytes);
        }
        self.open(bytes).map(|_| ())
    }

    fn size_hint(&mut self, bytes: u64) -> Result<()> {
        if let Some(cap) = self.capacity_hint
            && bytes > cap
        {
            return Err(raw_too_large(self.entry_size.unwrap_or(bytes), cap));
        }
        self.entry_hint = Some(bytes);
        Ok(())
    }

    fn size_pending(&mut self, entry: u64, trailer: u64) -> Result<()> {
        // Too large even if its last sector is a footer: refused at once,
        // as a raw entry is; otherwise the size at its end decides.
        if let Some(cap) = self.capacity_hint
            && entry.saturating_sub(trailer) > cap
        {
            return Err(raw_too_large(entry, cap));
        }
        self.entry_size = Some(entry);
        Ok(())
    }

    fn data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let before = self.hold_tail(offset, Some(data), data.len() as u64)?;
        let mut data = &data[..before as usize];
        if let Some(cap) = self.zero_tail_from
            && offset.saturating_add(data.len() as u64) > cap
        {
            let keep = cap.saturating_sub(offset).min(data.len() as u64) as usize;
            if !crate::sink::writer::is_zero(&data[keep..]) {
                return Err(past_ovf_capacity(cap));
            }
            data = &data[..keep];
        }
        if data.is_empty() {
            return Ok(());
        }
        self.writer()?.data(offset, data)
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        let len = self.hold_tail(offset, None, len)?;
        // A fresh volume reads zero past the exact capacity.
        let len = match self.zero_tail_from {
            Some(cap) => len.min(cap.saturating_sub(offset)),
            None => len,
        };
        if len == 0 {
            return Ok(());
        }
        self.writer()?.zero(offset, len)
    }
}

fn referenced_non_file(what: &str) -> Error {
    Error::new(
        ErrorKind::CorruptImage,
        format!(
            "the OVF references this entry, but it is a {what}, not a regular file; an OVA carries only regular files"
        ),
    )
}

/// The import pipeline; see the module documentation.
#[derive(Debug)]
pub struct Importer {
    targets: Targets,
    roots: AllowedRoots,
    existing: Existing,
    demux: Demux,
    /// The start of the stream, to name a source that is not a tar archive.
    head: PackageHead,
    records: Vec<EntryRecord>,
    by_name: HashMap<String, usize>,
    current: Option<Current>,
    ovf: Option<(String, Envelope)>,
    manifest: Option<(String, Manifest)>,
    disks: Vec<DiskState>,
    skipped: Vec<String>,
    /// Entries that are not regular files: name and what they are.
    others: Vec<(String, &'static str)>,
    progress: Arc<Progress>,
    digests: DigestTap,
    verify: bool,
    /// Bytes fed to this import (the progress record may be shared).
    fed: u64,
}

impl Importer {
    /// A new import into `targets`, reporting to `progress`.
    pub fn new(targets: Targets, progress: Arc<Progress>) -> Self {
        Importer {
            targets,
            roots: AllowedRoots::any(),
            existing: Existing::Replace,
            demux: Demux::new(),
            head: PackageHead::new(),
            records: Vec::new(),
            by_name: HashMap::new(),
            current: None,
            ovf: None,
            manifest: None,
            disks: Vec::new(),
            skipped: Vec::new(),
            others: Vec::new(),
            progress,
            digests: DigestTap::start(),
            verify: true,
            fed: 0,
        }
    }

    /// Computes no digests: a manifest in the package is parsed but not
    /// checked (the summary says `not verified`). For callers that verify
    /// the package by other means and want the CPU back.
    pub fn without_verification(mut self) -> Self {
        self.digests = DigestTap::idle();
        self.verify = false;
        self
    }

    /// Opens every target (and spool) beneath `roots`: target paths must
    /// be the canonical paths the roots accepted.
    pub fn with_roots(mut self, roots: AllowedRoots) -> Self {
        self.roots = roots;
        self
    }

    /// Whether existing targets are replaced (the default) or refused,
    /// before anything is written.
    pub fn existing_targets(mut self, existing: Existing) -> Self {
        self.existing = existing;
        self
    }

    /// Pushes the next bytes of the package.
    pub fn feed(&mut self, chunk: Bytes) -> Result<()> {
        self.progress.check_cancelled()?;
        self.progress.add_read(chunk.len() as u64);
        self.fed += chunk.len() as u64;
        self.digests.feed(&chunk);
        self.head.observe(&chunk);
        let mut buf = &chunk[..];
        while !buf.is_empty() {
            let pos = self.demux.position();
            let (n, ev) = self.demux.step(buf).map_err(|e| {
                let e = self.head.tar_error(e);
                match self.current_name() {
                    Some(name) => e.in_entry(name),
                    None => e,
                }
            })?;
            buf = &buf[n..];
            match ev {
                None => {}
                Some(Event::Begin(h)) => self.begin(h)?,
                Some(Event::Data(d)) => self.data(d).map_err(|e| self.locate(e, pos))?,
                Some(Event::End) => self.end()?,
                Some(Event::Eof) => {}
            }
        }
        Ok(())
    }

    /// Reads the whole package from `reader`, then finishes.
    pub fn run(mut self, reader: &mut dyn Read) -> Result<ImportSummary> {
        let mut buf = BytesMut::new();
        loop {
            if buf.len() < limits::READ_CHUNK {
                buf.resize(limits::READ_CHUNK, 0);
            }
            let n = match reader.read(&mut buf[..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::from(e)
                        .with_message("reading the package")
                        .at_offset(self.demux.position()));
                }
            };
            self.feed(buf.split_to(n).freeze())?;
        }
        self.finish()
    }

    fn current_name(&self) -> Option<&str> {
        self.current
            .as_ref()
            .map(|c| self.records[c.record].name.as_str())
    }

    /// Adds the current entry's name and the package offset to an error.
    fn locate(&self, e: Error, stream_pos: u64) -> Error {
        match &self.current {
            Some(c) => e.in_entry_at(&self.records[c.record].name, c.data_offset, c.received),
            None => e.at_offset(stream_pos),
        }
    }

    fn begin(&mut self, h: EntryHeader) -> Result<()> {
        let name = h.name;
        let at = |e: Error| e.in_entry(&name).at_offset(h.header_offset);
        if self.records.len() + self.others.len() >= limits::MAX_ENTRIES {
            return Err(at(Error::new(ErrorKind::LimitExceeded, "too many entries")));
        }
        if let Some((_, what)) = self.others.iter().find(|(n, _)| *n == name) {
            return Err(at(Error::new(
                ErrorKind::CorruptImage,
                format!("entry name appears twice in the package (once as a {what})"),
            )));
        }
        if h.entry_type != EntryType::Regular {
            return self.not_a_file(&name, h.entry_type).map_err(at);
        }
        // oVirt pads with several `pad` entries; any other repeat is an error.
        if self.by_name.contains_key(&name) && name != "pad" {
            return Err(at(Error::new(
                ErrorKind::CorruptImage,
                "entry name appears twice in the package",
            )));
        }
        let extra = self.is_extra(&name);
        if !extra
            && (name.is_empty()
                || name.contains('/')
                || name.contains('\\')
                || name == ".."
                || name == ".")
        {
            return Err(at(Error::new(
                ErrorKind::CorruptImage,
                "entry name is not a plain file name (contains '/' or '..')",
            )));
        }
        self.progress.set_entry(&name);
        let lower = name.to_ascii_lowercase();
        let role = if extra {
            self.skipped.push(name.clone());
            Role::Skip
        } else if lower.ends_with(".ovf") {
            if self.ovf.is_some() {
                return Err(at(Error::new(
                    ErrorKind::CorruptImage,
                    "a second OVF descriptor in the package",
                )));
            }
            if h.size > limits::MAX_OVF_SIZE {
                return Err(at(Error::new(
                    ErrorKind::LimitExceeded,
                    format!(
                        "OVF descriptor is {} bytes, over the {} byte limit",
                        h.size,
                        limits::MAX_OVF_SIZE
                    ),
                )));
            }
            Role::Ovf(Vec::with_capacity(h.size as usize))
        } else if lower.ends_with(".mf") {
            if self.manifest.is_some() {
                return Err(at(Error::new(
                    ErrorKind::CorruptImage,
                    "a second manifest in the package",
                )));
            }
            if h.size > limits::MAX_MANIFEST_SIZE {
                return Err(at(Error::new(
                    ErrorKind::LimitExceeded,
                    "manifest over the size limit",
                )));
            }
            Role::Manifest(Vec::with_capacity(h.size as usize))
        } else {
            match self.start_disk(&name, h.size) {
                Ok(Some(i)) => Role::Disk(i),
                Ok(None) => {
                    self.skipped.push(name.clone());
                    Role::Skip
                }
                Err(e) => return Err(at(e)),
            }
        };
        let record = self.records.len();
        self.records.push(EntryRecord {
            name: name.clone(),
            size: h.size,
            digests: Vec::new(),
        });
        self.by_name.insert(name, record);
        self.current = Some(Current {
            record,
            role,
            data_offset: h.data_offset,
            received: 0,
        });
        Ok(())
    }

    /// Whether `name` is one of the files producers add beside the disks
    /// (padding, TPM and NVRAM state, a signing certificate), skipped
    /// unless the OVF or the caller's mapping makes it a disk. Before the
    /// OVF only the mapping can say so; a disk skipped that way is caught
    /// when the import finishes.
    fn is_extra(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        if !KNOWN_EXTRAS.contains(&name) && !lower.ends_with(".cert") {
            return false;
        }
        let ovf_disk = self
            .ovf
            .as_ref()
            .is_some_and(|(_, env)| env.disk_for_href(name).is_some());
        let mapped = matches!(&self.targets, Targets::Map(m) if m.contains_key(name));
        !ovf_disk && !mapped
    }

    /// A tar entry that is not a regular file: GNU tar and Python's tarfile
    /// would resolve its name to something else, so it may not stand for
    /// a file of the package or shadow another entry.
    fn not_a_file(&mut self, name: &str, ty: EntryType) -> Result<()> {
        if !ty.is_known() {
            return Err(ty.unknown_error());
        }
        let what = ty.describe();
        if self.by_name.contains_key(name) {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!(
                    "a {what} entry has the name of an earlier entry; an OVA carries only regular files"
                ),
            ));
        }
        if let Some((_, env)) = &self.ovf
            && env.file_by_href(name).is_some()
        {
            return Err(referenced_non_file(what));
        }
        tracing::debug!(
            name,
            what,
            "skipping a tar entry that is not a regular file"
        );
        self.others.push((name.to_owned(), what));
        self.skipped.push(name.to_owned());
        Ok(())
    }

    /// Decides whether an entry is a disk and where it goes.
    fn start_disk(&mut self, name: &str, size: u64) -> Result<Option<usize>> {
        let mut capacity_hint = None;
        if let Some((_, env)) = &self.ovf {
            env.file_by_href(name).ok_or_else(|| {
                Error::new(
                    ErrorKind::CorruptImage,
                    "entry is not listed in the OVF References",
                )
            })?;
            match env.disk_for_href(name) {
                Some(d) => capacity_hint = Some(d.capacity),
                // A referenced file that no disk uses (an ISO, say).
                None => return Ok(None),
            }
        }
        let target = self.targets.target_for(name)?.ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                "no --disk target names this disk",
            )
        })?;
        if self.disks.iter().any(|d| d.target.path == target.path) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("two disks map to the same target {}", target.path.display()),
            ));
        }
        // The content decides format and compression, whatever the OVF
        // declares; before the OVF, a raw disk is as large as its entry
        // until the OVF says otherwise.
        let decoder = Decoder::sniffing_any(
            Some(size),
            capacity_hint.map_or(limits::MAX_CAPACITY, limits::gzip_inflated_cap),
        );
        let (dir, file_name) = partial::target_dir(&self.roots, &target.path)?;
        if self.existing == Existing::Keep {
            partial::refuse_existing(&dir, &file_name)?;
        }
        let decoder = decoder.with_spool(Box::new(FileSpool::new(dir.clone())));
        self.disks.push(DiskState {
            href: name.to_owned(),
            target: target.clone(),
            decoder,
            out: TargetSlot {
                target,
                dir,
                name: file_name,
                existing: self.existing,
                capacity_hint,
                entry_hint: None,
                entry_size: None,
                provisional: false,
                zero_tail_from: None,
                tail: None,
                opened: None,
            },
        });
        Ok(Some(self.disks.len() - 1))
    }

    fn data(&mut self, d: &[u8]) -> Result<()> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(());
        };
        match &mut cur.role {
            Role::Ovf(buf) | Role::Manifest(buf) => buf.extend_from_slice(d),
            Role::Disk(i) => {
                let disk = &mut self.disks[*i];
                disk.decoder.feed(d, &mut disk.out)?;
            }
            Role::Skip => {}
        }
        cur.received += d.len() as u64;
        self.progress.add_entry_bytes(d.len() as u64);
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let name = self.records[cur.record].name.clone();
        let received = cur.received;
        let data_offset = cur.data_offset;
        let wrap = |e: Error| e.in_entry_at(&name, data_offset, received);
        match cur.role {
            Role::Ovf(buf) => {
                let env = ovf::parse(&buf).map_err(|e| wrap(e.into()))?;
                self.ovf_arrived(name, env)?;
            }
            Role::Manifest(buf) => {
                let m = manifest::parse(&buf).map_err(|e| wrap(e.into()))?;
                self.manifest = Some((name, m));
            }
            Role::Disk(i) => {
                let disk = &mut self.disks[i];
                disk.decoder.finish(&mut disk.out).map_err(wrap)?;
                if disk.out.opened.is_none() {
                    // An empty raw disk: still create the target.
                    disk.out.writer().map_err(wrap)?;
                }
            }
            Role::Skip => {}
        }
        Ok(())
    }

    /// The descriptor arrived: check the entries that came before it.
    fn ovf_arrived(&mut self, name: String, env: Envelope) -> Result<()> {
        if let Some((n, what)) = self
            .others
            .iter()
            .find(|(n, _)| env.file_by_href(n).is_some())
        {
            return Err(referenced_non_file(what).in_entry(n));
        }
        for d in &mut self.disks {
            let at = |e: Error| e.in_entry(&d.href);
            env.file_by_href(&d.href).ok_or_else(|| {
                at(Error::new(
                    ErrorKind::CorruptImage,
                    "entry is not listed in the OVF References",
                ))
            })?;
            if let Some(disk) = env.disk_for_href(&d.href) {
                d.out.settle(disk.capacity).map_err(at)?;
            }
        }
        self.ovf = Some((name, env));
        Ok(())
    }

    /// The stream ended: verify everything, then commit the targets.
    pub fn finish(mut self) -> Result<ImportSummary> {
        self.progress.check_cancelled()?;
        // A package without end-of-archive blocks leaves its last End pending.
        if let (_, Some(Event::End)) = self.demux.step(&[]).map_err(Error::from)? {
            self.end()?;
        }
        self.demux.finish().map_err(|e| {
            let e = self.head.tar_error(e);
            match self.current_name() {
                Some(n) => e.in_entry(n),
                None => e,
            }
        })?;
        if let Some(name) = self.current_name() {
            return Err(
                Error::new(ErrorKind::CorruptImage, "package ends inside an entry").in_entry(name),
            );
        }
        if self.records.is_empty() && self.others.is_empty() {
            return Err(self.head.no_entries());
        }
        let Some((ovf_name, env)) = self.ovf.take() else {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                "the package has no OVF descriptor (.ovf entry)",
            ));
        };
        // Every referenced file must have arrived, with the size the OVF promised.
        for f in &env.files {
            let Some(&ri) = self.by_name.get(&f.href) else {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "the OVF references '{}' but the package has no such entry",
                        f.href
                    ),
                )
                .in_entry(&ovf_name));
            };
            let rec = &self.records[ri];
            // Some writers (oVirt) put the image's allocated size in
            // ovf:size, so a difference is worth a warning, not a failure:
            // the tar header frames the stream and the manifest vouches for it.
            if let Some(size) = f.size
                && size != rec.size
            {
                tracing::warn!(
                    entry = %rec.name,
                    tar_size = rec.size,
                    ovf_size = size,
                    "entry size differs from the OVF's ovf:size"
                );
            }
        }
        // Every disk named on the command line must have been in the package.
        if let Targets::Map(map) = &self.targets
            && let Some(href) = map
                .keys()
                .find(|h| !self.disks.iter().any(|d| &d.href == *h))
        {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("--disk names '{href}' but the package has no such disk"),
            ));
        }
        // Disks that came before the OVF but turned out not to be disks.
        let mut keep = vec![true; self.disks.len()];
        for (i, d) in self.disks.iter().enumerate() {
            if env.disk_for_href(&d.href).is_none() {
                keep[i] = false;
                self.skipped.push(d.href.clone());
            }
        }
        // Every disk of the DiskSection that has a file must have been written.
        for disk in &env.disks {
            let Some(file) = disk
                .file_ref
                .as_deref()
                .and_then(|id| env.files.iter().find(|f| f.id == id))
            else {
                continue;
            };
            let written = self
                .disks
                .iter()
                .zip(&keep)
                .any(|(d, &k)| k && d.href == file.href);
            if !written {
                let why = if KNOWN_EXTRAS.contains(&file.href.as_str())
                    || file.href.to_ascii_lowercase().ends_with(".cert")
                {
                    "is a disk in the OVF but came before it under a name that is otherwise skipped (padding, TPM or NVRAM state, a certificate); put the OVF first or name the disk with --disk"
                } else {
                    "is a disk in the OVF but was not written"
                };
                return Err(Error::new(ErrorKind::CorruptImage, why).in_entry(&file.href));
            }
        }
        let digests = std::mem::replace(&mut self.digests, DigestTap::idle()).finish();
        for r in &mut self.records {
            if let Some(d) = digests.get(&r.name) {
                r.digests.clone_from(d);
            }
        }
        let manifest_state = self.verify_manifest()?;
        // Flush and fsync every target before renaming any.
        let mut summaries = Vec::new();
        let mut commits = Vec::new();
        for (i, d) in self.disks.into_iter().enumerate() {
            if !keep[i] {
                continue;
            }
            let format = d.decoder.format().unwrap_or(SourceFormat::Raw);
            let Some((partial, writer)) = d.out.opened else {
                return Err(
                    Error::new(ErrorKind::CorruptImage, "disk produced no target")
                        .in_entry(&d.href),
                );
            };
            let capacity = writer.capacity();
            writer
                .finish()
                .map_err(|e| e.at_path(partial.partial_path()))?;
            let format_uri = env
                .disk_for_href(&d.href)
                .and_then(|disk| disk.format.as_deref());
            let declared_gzip = env
                .file_by_href(&d.href)
                .is_some_and(|f| f.compression == Compression::Gzip);
            let warnings: Vec<String> =
                probe::disagreements(format_uri, declared_gzip, format, d.decoder.is_gzip())
                    .into_iter()
                    .map(|w| format!("{}: {w}", d.href))
                    .collect();
            for w in &warnings {
                tracing::warn!("{w}");
            }
            summaries.push(DiskSummary {
                href: d.href,
                source_format: format.name(),
                declared_format: format_uri.map(|u| probe::declared(u).label),
                compression: if d.decoder.is_gzip() { "gzip" } else { "none" },
                target: partial.final_path().to_path_buf(),
                target_format: d.target.format.name(),
                capacity,
                warnings,
            });
            commits.push(partial);
        }
        for p in commits {
            p.commit()?;
        }
        Ok(ImportSummary {
            bytes_read: self.fed,
            ovf: ovf_name,
            manifest: manifest_state,
            disks: summaries,
            skipped: self.skipped,
        })
    }

    fn verify_manifest(&self) -> Result<&'static str> {
        let Some((mf_name, m)) = &self.manifest else {
            return Ok("absent");
        };
        if !self.verify {
            tracing::warn!(manifest = %mf_name, "manifest not checked (verification disabled)");
            return Ok("not verified");
        }
        let computed = |name: &str| {
            self.by_name
                .get(name)
                .map(|&ri| self.records[ri].digests.as_slice())
        };
        for (entry, check) in digests::check_manifest(m, computed) {
            if let Some(e) = check.error(entry, mf_name) {
                return Err(e);
            }
        }
        Ok("verified")
    }
}
