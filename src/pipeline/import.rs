//! The import pipeline: package bytes in, verified target volumes out.
//!
//! [`Importer`] is pushed the package in pieces of any size. It drives the
//! tar demux, names each entry as the package means it ([`Layout`]: a
//! package under one top-level directory loses it), routes each entry
//! (descriptor, manifest, disk or one chunk of a disk, known extra),
//! digests every entry while it passes, decodes disks into target volumes
//! written under `.partial` names, creates the blank disks the OVF
//! declares, and on [`Importer::finish`] checks the package against its
//! OVF and every manifest before renaming any target. Dropping an
//! unfinished importer removes every partial target.
//!
//! A package compressed as a whole, or a zip archive, is unpacked on the
//! way in ([`Unpacker`]): the tar demux reads the decompressed stream, and
//! a zip's members take the place of tar entries.

mod chunks;
mod slot;
mod summary;
mod targets;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use self::chunks::{ChunkRun, Declared};
use self::slot::TargetSlot;
pub use self::summary::{DiskSummary, ImportSummary};
pub use self::targets::{DiskTarget, Targets};
use crate::codec::probe;
use crate::codec::select::Decoder;
use crate::codec::{DiskDecoder, SourceFormat};
use crate::error::{Error, ErrorKind, Result};
use crate::limits;
use crate::names::printable;
use crate::ova::demux::{Demux, EntryHeader, EntryType, Event};
use crate::ova::layout::Layout;
use crate::ova::manifest::{self, Algorithm, Manifest};
use crate::ova::ovf::{self, Compression, Envelope, chunk_name, split_chunk_name};
use crate::ova::role::{self, Role as PackageRole, Roles};
use crate::ova::unpack::{Container, Piece, Unpacker};
use crate::pipeline::digests::{self, DigestTap};
use crate::pipeline::package_head::PackageHead;
use crate::pipeline::progress::Progress;
use crate::roots::{AllowedRoots, Dir};
use crate::sink::partial::{self, Existing};
use crate::sink::spool::FileSpool;
use crate::source::SourceReader;

/// What offsets inside a deflated zip member count.
const INFLATED_MEMBER: &str = "inflated zip member";

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
    /// A deflated zip member: offsets in it count inflated bytes.
    inflated: bool,
    /// Where the entry starts in its file: after the earlier chunks of a
    /// chunked file, 0 otherwise.
    chunk_start: u64,
}

/// One disk being written.
#[derive(Debug)]
struct DiskState {
    /// The file's href (for a chunked file, without a chunk's suffix).
    href: String,
    decoder: Decoder,
    out: TargetSlot,
    /// Its content arrives in chunks: the decoder finishes when they end.
    chunked: bool,
}

/// A disk the OVF gives no file, created empty.
#[derive(Debug)]
struct BlankDisk {
    disk_id: String,
    format_uri: Option<String>,
    out: TargetSlot,
}

/// The chunked file whose chunk was the last entry: the next entry either
/// continues it or ends it.
#[derive(Debug)]
struct OpenRun {
    href: String,
    disk: Option<usize>,
    /// The last chunk: name, package offset of its content, size, and
    /// where it starts in the file.
    name: String,
    data_offset: u64,
    size: u64,
    chunk_start: u64,
}

/// `e` with `notes` after its message, its kind kept.
fn with_notes(e: Error, notes: &[String]) -> Error {
    if notes.is_empty() {
        return e;
    }
    Error::new(e.kind(), format!("{} ({})", e.one_line(), notes.join("; ")))
}

fn referenced_non_file(what: &str) -> Error {
    Error::new(
        ErrorKind::CorruptImage,
        format!(
            "the OVF references this entry, but it is a {what}, not a regular file; an OVA carries only regular files"
        ),
    )
}

/// The entry `name`, or the file a run of chunks stands for, is not a file
/// of `env` in that form.
fn not_listed(env: &Envelope, name: &str, chunked: bool) -> Error {
    let why = match env.file_by_href(name) {
        Some(f) if f.chunk_size.is_some() && !chunked => format!(
            "the OVF stores this file in chunks ('{}', ...), not as one entry",
            printable(&chunk_name(name, 0))
        ),
        Some(_) if chunked => format!(
            "the OVF lists '{}' as one entry, not in chunks",
            printable(name)
        ),
        _ => "entry is not listed in the OVF References".to_owned(),
    };
    Error::new(ErrorKind::CorruptImage, why)
}

/// The content of `disk` is complete: its decoder finishes, and an empty
/// raw disk still gets its target. `run` is the run of chunks it came in,
/// to place an error in its last chunk (the caller places others).
fn finish_decoder(disk: &mut DiskState, run: Option<&OpenRun>) -> Result<()> {
    disk.decoder
        .finish(&mut disk.out)
        .and_then(|()| disk.out.create())
        .map_err(|e| match run {
            Some(r) => e.in_chunk_at(&r.name, r.data_offset, r.size, r.chunk_start),
            None => e,
        })
}

/// The import pipeline; see the module documentation.
#[derive(Debug)]
pub struct Importer {
    targets: Targets,
    roots: AllowedRoots,
    existing: Existing,
    /// Tells a plain, compressed or zip package apart, and unpacks it.
    unpack: Unpacker,
    demux: Demux,
    /// The start of the stream, to name a source that is not a tar archive.
    head: PackageHead,
    layout: Layout,
    records: Vec<EntryRecord>,
    by_name: HashMap<String, usize>,
    current: Option<Current>,
    ovf: Option<(String, Envelope)>,
    manifests: Vec<(String, Manifest)>,
    /// What each entry is: descriptor, manifest or other.
    roles: Roles,
    disks: Vec<DiskState>,
    blanks: Vec<BlankDisk>,
    /// Chunks of each chunked file seen so far, by href.
    runs: BTreeMap<String, ChunkRun>,
    open_run: Option<OpenRun>,
    /// Runs that ended before the OVF: their decoders finish once the OVF
    /// has said whether a chunk is missing, which is the better error
    /// than the decoder's about content that stops short.
    ended_runs: Vec<OpenRun>,
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
            unpack: Unpacker::new(),
            demux: Demux::new(),
            head: PackageHead::new(),
            layout: Layout::new(),
            records: Vec::new(),
            by_name: HashMap::new(),
            current: None,
            ovf: None,
            manifests: Vec::new(),
            roles: Roles::new(),
            disks: Vec::new(),
            blanks: Vec::new(),
            runs: BTreeMap::new(),
            open_run: None,
            ended_runs: Vec::new(),
            skipped: Vec::new(),
            others: Vec::new(),
            progress,
            digests: DigestTap::start(),
            verify: true,
            fed: 0,
        }
    }

    /// Computes no digests: manifests in the package are parsed but not
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
        self.feed_chunk(chunk).map_err(|e| self.note_targets(e))
    }

    fn feed_chunk(&mut self, chunk: Bytes) -> Result<()> {
        self.progress.check_cancelled()?;
        self.progress.add_read(chunk.len() as u64);
        self.fed += chunk.len() as u64;
        let mut input = chunk;
        loop {
            let (n, piece) = self.unpack.step(&input)?;
            let _ = input.split_to(n);
            match piece {
                Some(p) => {
                    // One chunk of a compressed package may expand a lot.
                    self.progress.check_cancelled()?;
                    self.piece(p)?;
                }
                None if input.is_empty() => return Ok(()),
                None => {}
            }
        }
    }

    /// Hands one piece of the unpacked package on: tar bytes to the tar
    /// demux, zip members to the entry logic.
    fn piece(&mut self, p: Piece) -> Result<()> {
        match p {
            Piece::Tar(b) => {
                if let Some(Container::Compressed(c)) = self.unpack.container() {
                    self.head.decompressed_from(c);
                }
                self.feed_tar(b).map_err(|e| self.unpack.in_tar(e))
            }
            Piece::Begin(m) => {
                let h = m.entry_header();
                if h.entry_type == EntryType::Regular {
                    self.digests.begin_member(&h.name, m.size);
                }
                self.begin_entry(h, m.size.is_some())?;
                if let Some(c) = self.current.as_mut() {
                    c.inflated = m.is_inflated();
                }
                Ok(())
            }
            Piece::Data(d) => {
                self.digests.member_data(&d);
                let pos = self.current.as_ref().map_or(0, |c| c.data_offset);
                self.data(&d).map_err(|e| self.locate(e, pos))
            }
            Piece::End => {
                self.digests.end_member();
                self.end()
            }
        }
    }

    /// Pushes bytes of the tar stream.
    fn feed_tar(&mut self, chunk: Bytes) -> Result<()> {
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
                Some(Event::Eof) => self.unpack.tar_ended(),
            }
        }
        Ok(())
    }

    /// Reads the whole package from `reader`, then finishes. Each read
    /// fills a fresh [`limits::READ_CHUNK`] buffer that becomes the
    /// pieces every later stage shares: nothing is copied on the way.
    ///
    /// A source that can seek is first scanned for its manifests
    /// ([`digests::scan_manifests`]), so that only the digests they ask
    /// for are computed, wherever in the package they are.
    pub fn run(mut self, reader: &mut dyn SourceReader) -> Result<ImportSummary> {
        if self.verify && self.fed == 0 && reader.can_skip() {
            let scanned = digests::scan_manifests(reader);
            let back = reader.rewind().map_err(|e| {
                Error::from(e).with_message("returning to the start of the package")
            })?;
            if !back {
                return Err(Error::new(
                    ErrorKind::Io,
                    "cannot return to the start of the package after reading its manifests",
                ));
            }
            if let Some(manifests) = scanned {
                self.digests = DigestTap::knowing(&manifests);
            }
        }
        loop {
            let mut buf = Vec::with_capacity(limits::READ_CHUNK);
            let read = reader.fill(&mut buf);
            let n = buf.len();
            if n > 0 {
                self.feed(Bytes::from(buf))?;
            }
            match read {
                Ok(_) if n == 0 => break,
                Ok(_) => {}
                Err(e) => {
                    return Err(self.note_targets(
                        Error::from(e)
                            .with_message("reading the package")
                            .at_offset(self.fed),
                    ));
                }
            }
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
            Some(c) if c.inflated => e.inside(INFLATED_MEMBER).in_entry_at(
                &self.records[c.record].name,
                c.data_offset,
                0,
            ),
            Some(c) => e.in_chunk_at(
                &self.records[c.record].name,
                c.data_offset,
                c.received,
                c.chunk_start,
            ),
            None => e.at_offset(stream_pos),
        }
    }

    fn begin(&mut self, h: EntryHeader) -> Result<()> {
        self.begin_entry(h, true)
    }

    /// An entry starts; `size_known` is false for a zip member whose size
    /// only its data descriptor gives (`h.size` is then 0).
    fn begin_entry(&mut self, h: EntryHeader, size_known: bool) -> Result<()> {
        if self.records.len() + self.others.len() >= limits::MAX_ENTRIES {
            return Err(Error::new(ErrorKind::LimitExceeded, "too many entries")
                .in_entry(&h.name)
                .at_offset(h.header_offset));
        }
        let placed = self
            .layout
            .place(&h.name, h.entry_type)
            .map_err(|e| Error::from(e).at_offset(h.header_offset))?;
        let chunk = match (&placed, h.entry_type) {
            (Some(n), EntryType::Regular) => self.chunk_of(n),
            _ => None,
        };
        // Any entry but the next chunk of a run of chunks ends that run.
        if let Some(open) = self
            .open_run
            .take_if(|r| chunk.as_ref().is_none_or(|c| c.0 != r.href))
        {
            let came = placed.as_deref().unwrap_or(&h.name);
            let at = |e: Error| e.in_entry(came).at_offset(h.header_offset);
            self.end_run(open, &at)?;
        }
        // The package directory's own entry is nothing of the package.
        let Some(name) = placed else {
            return Ok(());
        };
        let at = |e: Error| e.in_entry(&name).at_offset(h.header_offset);
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
        let mut chunk_start = 0;
        let named = if extra {
            PackageRole::Other
        } else {
            self.roles
                .classify(&name, size_known.then_some(h.size))
                .map_err(|e| at(e.into()))?
        };
        let role = if extra {
            self.skipped.push(name.clone());
            Role::Skip
        } else if named == PackageRole::Descriptor {
            Role::Ovf(Vec::with_capacity(h.size as usize))
        } else if named == PackageRole::Manifest {
            Role::Manifest(Vec::with_capacity(h.size as usize))
        } else if let Some((href, index)) = chunk {
            chunk_start = self.runs.get(&href).map_or(0, ChunkRun::total);
            let disk = self.begin_chunk(&href, index, h.size).map_err(at)?;
            self.open_run = Some(OpenRun {
                href,
                disk,
                name: name.clone(),
                data_offset: h.data_offset,
                size: h.size,
                chunk_start,
            });
            match disk {
                Some(i) => Role::Disk(i),
                None => {
                    self.skipped.push(name.clone());
                    Role::Skip
                }
            }
        } else {
            match self.start_disk(&name, size_known.then_some(h.size), false) {
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
            inflated: false,
            chunk_start,
        });
        Ok(())
    }

    /// The chunked file and index a regular entry `name` is a chunk of.
    /// The OVF decides; before it, the name's shape does, unless the
    /// caller's mapping names the entry itself.
    fn chunk_of(&self, name: &str) -> Option<(String, u64)> {
        if let Some((_, env)) = &self.ovf {
            let (f, index) = env.file_for_entry(name)?;
            return index.map(|i| (f.href.clone(), i));
        }
        let (href, index) = split_chunk_name(name)?;
        if self.targets.names(name) && !self.targets.names(href) {
            return None;
        }
        Some((href.to_owned(), index))
    }

    /// Chunk `index` of `href`, of `size` bytes, begins: checks its place
    /// in the run and says which disk it feeds, if any.
    fn begin_chunk(&mut self, href: &str, index: u64, size: u64) -> Result<Option<usize>> {
        let adjacent = self.open_run.as_ref().is_some_and(|r| r.href == href);
        let declared = self
            .ovf
            .as_ref()
            .and_then(|(_, env)| env.file_by_href(href))
            .and_then(Declared::of);
        self.runs
            .entry(href.to_owned())
            .or_insert_with(|| ChunkRun::new(href))
            .begin(index, size, adjacent, declared)?;
        if index == 0 {
            self.start_disk(href, declared.and_then(|d| d.size), true)
        } else {
            Ok(self.disks.iter().position(|d| d.chunked && d.href == href))
        }
    }

    /// No more chunk of `open` follows: the run must be the whole file,
    /// and its disk's content is complete. `at` places what is wrong with
    /// the run where the package went on instead. Before the OVF neither
    /// can be told yet: the run waits for it.
    fn end_run(&mut self, open: OpenRun, at: &dyn Fn(Error) -> Error) -> Result<()> {
        let Some((_, env)) = &self.ovf else {
            self.ended_runs.push(open);
            return Ok(());
        };
        if let Some(d) = env.file_by_href(&open.href).and_then(Declared::of)
            && let Some(run) = self.runs.get(&open.href)
        {
            run.check(d).map_err(at)?;
        }
        match open.disk {
            Some(i) => finish_decoder(&mut self.disks[i], Some(&open)),
            None => Ok(()),
        }
    }

    /// Whether `name` is one of the files producers add beside the disks
    /// (padding, TPM and NVRAM state, a signing certificate), skipped
    /// unless the OVF or the caller's mapping makes it a disk. Before the
    /// OVF only the mapping can say so; a disk skipped that way is caught
    /// when the import finishes.
    fn is_extra(&self, name: &str) -> bool {
        if !role::is_extra_name(name) {
            return false;
        }
        let ovf_disk = self
            .ovf
            .as_ref()
            .is_some_and(|(_, env)| env.disk_for_href(name).is_some());
        !ovf_disk && !self.targets.names(name)
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
            && env.file_for_entry(name).is_some()
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

    /// Refuses a second disk for a target already taken.
    fn claim(&self, path: &Path) -> Result<()> {
        let mut taken = self
            .disks
            .iter()
            .map(|d| d.out.target())
            .chain(self.blanks.iter().map(|b| b.out.target()));
        if taken.any(|t| t.path == path) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("two disks map to the same target {}", path.display()),
            ));
        }
        Ok(())
    }

    /// The directory and file name of a file target, opened beneath the
    /// roots (an existing file refused unless it may be replaced); `None`
    /// for an NBD target, which is no file.
    fn place_of(&self, target: &DiskTarget) -> Result<Option<(Arc<Dir>, OsString)>> {
        if target.nbd.is_some() {
            return Ok(None);
        }
        let (dir, file_name) = partial::target_dir(&self.roots, &target.path)?;
        if self.existing == Existing::Keep {
            partial::refuse_existing(&dir, &file_name)?;
        }
        Ok(Some((dir, file_name)))
    }

    /// What a failed import must say of its NBD targets, which keep what
    /// was written (file targets are removed): `e` with a note naming
    /// each export opened. Call it with an error of the caller's own
    /// before dropping the importer; [`Importer::feed`],
    /// [`Importer::finish`] and [`Importer::run`] add it themselves.
    pub fn note_targets(&self, e: Error) -> Error {
        with_notes(e, &self.nbd_notes())
    }

    fn nbd_notes(&self) -> Vec<String> {
        self.disks
            .iter()
            .map(|d| &d.out)
            .chain(self.blanks.iter().map(|b| &b.out))
            .filter_map(|s| s.opened_nbd())
            .map(crate::sink::nbd::Landing::failure_note)
            .collect()
    }

    /// Decides whether the file `href` is a disk and where it goes.
    /// `entry_size` is the size of its content when known (a chunked
    /// file's before the OVF is not).
    fn start_disk(
        &mut self,
        href: &str,
        entry_size: Option<u64>,
        chunked: bool,
    ) -> Result<Option<usize>> {
        let mut capacity_hint = None;
        if let Some((_, env)) = &self.ovf {
            // A chunk's file was found by the entry's name already.
            if !chunked && !matches!(env.file_for_entry(href), Some((_, None))) {
                return Err(not_listed(env, href, false));
            }
            match env.disk_for_href(href) {
                Some(d) => capacity_hint = Some(d.capacity),
                // A referenced file that no disk uses (an ISO, say).
                None => return Ok(None),
            }
        }
        let target = self.targets.target_for(href)?.ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                "no --disk target names this disk",
            )
        })?;
        self.claim(&target.path)?;
        // The content decides format and compression, whatever the OVF
        // declares; before the OVF, a raw disk is as large as its entry
        // until the OVF says otherwise.
        let decoder = Decoder::sniffing_any(
            entry_size,
            capacity_hint.map_or(limits::MAX_CAPACITY, limits::gzip_inflated_cap),
        );
        let place = self.place_of(&target)?;
        // An NBD target has no directory to spool in: a qcow2 entry whose
        // data come before its tables is refused there.
        let decoder = match &place {
            Some((dir, _)) => decoder.with_spool(Box::new(FileSpool::new(dir.clone()))),
            None => decoder,
        };
        self.disks.push(DiskState {
            href: href.to_owned(),
            decoder,
            out: TargetSlot::new(target, place, self.existing, capacity_hint),
            chunked,
        });
        Ok(Some(self.disks.len() - 1))
    }

    fn data(&mut self, d: &[u8]) -> Result<()> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(());
        };
        // A zip member's size may be known only at its end.
        let (what, limit) = match cur.role {
            Role::Ovf(_) => ("OVF descriptor", limits::MAX_OVF_SIZE),
            _ => ("manifest", limits::MAX_MANIFEST_SIZE),
        };
        match &mut cur.role {
            Role::Ovf(buf) | Role::Manifest(buf) => {
                if (buf.len() + d.len()) as u64 > limit {
                    return Err(Error::new(
                        ErrorKind::LimitExceeded,
                        format!("{what} over the {limit} byte limit"),
                    ));
                }
                buf.extend_from_slice(d);
            }
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
        // Where a zip member's data descriptor gave its size.
        self.records[cur.record].size = received;
        let inflated = cur.inflated;
        let wrap = |e: Error| {
            if inflated {
                e.inside(INFLATED_MEMBER).in_entry_at(&name, data_offset, 0)
            } else {
                e.in_entry_at(&name, data_offset, received)
            }
        };
        match cur.role {
            Role::Ovf(buf) => {
                let env = ovf::parse(&buf).map_err(|e| wrap(e.into()))?;
                self.ovf_arrived(name, env)?;
            }
            Role::Manifest(buf) => {
                let m = manifest::parse(&buf).map_err(|e| wrap(e.into()))?;
                self.manifest_arrived(name, m)?;
            }
            // A chunked disk's content goes on in its next chunk; the run
            // ends when another entry comes, or the package does.
            Role::Disk(i) if !self.disks[i].chunked => {
                finish_decoder(&mut self.disks[i], None).map_err(wrap)?;
            }
            Role::Disk(_) | Role::Skip => {}
        }
        Ok(())
    }

    /// A manifest arrived: one that gives an entry another digest than an
    /// earlier manifest, with the same algorithm, contradicts it.
    fn manifest_arrived(&mut self, name: String, m: Manifest) -> Result<()> {
        for line in &m.entries {
            for (other, earlier) in &self.manifests {
                if let Some(e) = earlier.get(&line.name)
                    && e.algorithm == line.algorithm
                    && e.digest != line.digest
                {
                    return Err(Error::new(
                        ErrorKind::Integrity,
                        format!(
                            "lists '{}' with another {} digest than manifest '{}' does",
                            printable(&line.name),
                            line.algorithm,
                            printable(other)
                        ),
                    )
                    .in_entry(&name));
                }
            }
        }
        self.manifests.push((name, m));
        Ok(())
    }

    /// The descriptor arrived: check the entries that came before it,
    /// settle their disks, and create the blank disks.
    fn ovf_arrived(&mut self, name: String, env: Envelope) -> Result<()> {
        if let Some((n, what)) = self
            .others
            .iter()
            .find(|(n, _)| env.file_for_entry(n).is_some())
        {
            return Err(referenced_non_file(what).in_entry(n));
        }
        for (i, d) in self.disks.iter_mut().enumerate() {
            if d.chunked {
                let first = chunk_name(&d.href, 0);
                let count = self.runs.get(&d.href).map_or(0, ChunkRun::count);
                match env.file_by_href(&d.href).and_then(Declared::of) {
                    Some(decl) => {
                        if let Some(run) = self.runs.get(&d.href) {
                            run.check(decl).map_err(|e| e.in_entry(&name))?;
                        }
                    }
                    // Only the name looked like a chunk's: the OVF lists
                    // the entry as a file of its own.
                    None if count == 1 && matches!(env.file_for_entry(&first), Some((_, None))) => {
                        self.runs.remove(&d.href);
                        d.href = first;
                        d.chunked = false;
                    }
                    None => return Err(not_listed(&env, &d.href, true).in_entry(&first)),
                }
            } else if !matches!(env.file_for_entry(&d.href), Some((_, None))) {
                return Err(not_listed(&env, &d.href, false).in_entry(&d.href));
            }
            if let Some(at) = self.ended_runs.iter().position(|r| r.disk == Some(i)) {
                let open = self.ended_runs.swap_remove(at);
                finish_decoder(d, Some(&open))?;
            }
            if let Some(disk) = env.disk_for_href(&d.href) {
                let raw = d.decoder.format() == Some(SourceFormat::Raw) && !d.decoder.is_gzip();
                if let (true, true, Some(run)) = (d.chunked, raw, self.runs.get(&d.href)) {
                    d.out.set_entry_size(run.total());
                }
                d.out
                    .settle(disk.capacity)
                    .map_err(|e| e.in_entry(&d.href))?;
            }
        }
        self.create_blanks(&env).map_err(|e| e.in_entry(&name))?;
        self.ovf = Some((name, env));
        Ok(())
    }

    /// Creates the target of every disk the OVF gives no file, empty at
    /// its capacity.
    fn create_blanks(&mut self, env: &Envelope) -> Result<()> {
        for disk in env.blank_disks() {
            let id = &disk.disk_id;
            let target = self.targets.blank_target_for(id)?.ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "no --disk target names the blank disk '{}' (the OVF gives it no file: it is created empty); give --disk {0}=PATH",
                        printable(id)
                    ),
                )
            })?;
            self.claim(&target.path)?;
            let place = self.place_of(&target)?;
            let mut out = TargetSlot::new(target, place, self.existing, Some(disk.capacity));
            out.create()?;
            self.blanks.push(BlankDisk {
                disk_id: id.clone(),
                format_uri: disk.format.clone(),
                out,
            });
        }
        Ok(())
    }

    /// The stream ended: verify everything, then commit the targets.
    pub fn finish(self) -> Result<ImportSummary> {
        // Targets may be opened while finishing (a held-back tail).
        let mut notes: Vec<String> = self
            .disks
            .iter()
            .map(|d| &d.out)
            .chain(self.blanks.iter().map(|b| &b.out))
            .filter_map(|s| s.target().nbd.as_ref())
            .map(crate::sink::nbd::Landing::failure_note)
            .collect();
        notes.dedup();
        self.finish_all().map_err(|e| with_notes(e, &notes))
    }

    fn finish_all(mut self) -> Result<ImportSummary> {
        self.progress.check_cancelled()?;
        // A compressed stream or a zip archive must be complete.
        while let Some(p) = self.unpack.finish()? {
            self.piece(p)?;
        }
        let container = self.unpack.container().unwrap_or(Container::Tar);
        if container != Container::Zip {
            self.finish_tar()?;
        }
        if let Some(name) = self.current_name() {
            return Err(
                Error::new(ErrorKind::CorruptImage, "package ends inside an entry").in_entry(name),
            );
        }
        // A package directory is set by an entry, even one that is only
        // the directory's own.
        if self.records.is_empty() && self.others.is_empty() && self.layout.directory().is_none() {
            if container == Container::Zip {
                return Err(Error::new(
                    ErrorKind::InvalidFormat,
                    "not an OVA package: the zip archive holds no members",
                ));
            }
            return Err(self.head.no_entries());
        }
        // The package may end with a chunk: so does its run.
        if let Some(open) = self.open_run.take() {
            self.end_run(open, &|e| e)?;
        }
        let Some((ovf_name, env)) = self.ovf.take() else {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                "the package has no OVF descriptor (.ovf entry)",
            ));
        };
        // Every referenced file must have arrived, with the size the OVF promised.
        for f in &env.files {
            if let Some(decl) = Declared::of(f) {
                let run = self.runs.get(&f.href).cloned();
                run.unwrap_or_else(|| ChunkRun::new(&f.href))
                    .check(decl)
                    .map_err(|e| e.in_entry(&ovf_name))?;
                continue;
            }
            let Some(&ri) = self.by_name.get(&f.href) else {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "the OVF references '{}' but the package has no such entry",
                        printable(&f.href)
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
        for name in self.targets.named() {
            if self.disks.iter().any(|d| d.href == name)
                || self.blanks.iter().any(|b| b.disk_id == name)
            {
                continue;
            }
            let with_file = env
                .disks
                .iter()
                .find(|d| d.disk_id == name)
                .and_then(|d| d.file_ref.as_deref())
                .and_then(|id| env.files.iter().find(|f| f.id == id));
            let why = match with_file {
                Some(f) => format!(
                    "--disk names disk '{}', which has a file: name it by its href '{}'",
                    printable(name),
                    printable(&f.href)
                ),
                None => format!(
                    "--disk names '{}' but the package has no such disk",
                    printable(name)
                ),
            };
            return Err(Error::new(ErrorKind::NotFound, why));
        }
        // Disks that came before the OVF but turned out not to be disks.
        let mut keep = vec![true; self.disks.len()];
        for (i, d) in self.disks.iter().enumerate() {
            if env.disk_for_href(&d.href).is_none() {
                keep[i] = false;
                match self.runs.get(&d.href) {
                    Some(run) if d.chunked => self
                        .skipped
                        .extend((0..run.count()).map(|c| chunk_name(&d.href, c))),
                    _ => self.skipped.push(d.href.clone()),
                }
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
                let why = if role::is_extra_name(&file.href) {
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
        let manifest_state = self.verify_manifests()?;
        // Flush and fsync every target before renaming any.
        let mut summaries = Vec::new();
        let mut commits = Vec::new();
        for (i, d) in self.disks.into_iter().enumerate() {
            if !keep[i] {
                continue;
            }
            let format = d.decoder.format().unwrap_or(SourceFormat::Raw);
            let target_format = d.out.target().format.name();
            let Some((partial, writer)) = d.out.into_opened() else {
                return Err(
                    Error::new(ErrorKind::CorruptImage, "disk produced no target")
                        .in_entry(&d.href),
                );
            };
            let capacity = writer.capacity();
            writer
                .finish()
                .map_err(|e| e.at_path(partial.partial_path()))?;
            let desc = env.disk_for_href(&d.href);
            let format_uri = desc.and_then(|disk| disk.format.as_deref());
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
                disk_id: desc.map(|disk| disk.disk_id.clone()).unwrap_or_default(),
                blank: false,
                chunks: d
                    .chunked
                    .then(|| self.runs.get(&d.href).map_or(0, ChunkRun::count)),
                source_format: format.name(),
                declared_format: format_uri.map(|u| probe::declared(u).label),
                compression: if d.decoder.is_gzip() { "gzip" } else { "none" },
                target: partial.final_path().to_path_buf(),
                target_format,
                capacity,
                warnings,
                href: d.href,
            });
            commits.push(partial);
        }
        for b in self.blanks {
            let target_format = b.out.target().format.name();
            let Some((partial, writer)) = b.out.into_opened() else {
                return Err(Error::internal(format!(
                    "blank disk '{}' has no target",
                    printable(&b.disk_id)
                )));
            };
            let capacity = writer.capacity();
            writer
                .finish()
                .map_err(|e| e.at_path(partial.partial_path()))?;
            summaries.push(DiskSummary {
                href: String::new(),
                disk_id: b.disk_id,
                blank: true,
                chunks: None,
                source_format: "blank",
                declared_format: b.format_uri.map(|u| probe::declared(&u).label),
                compression: "none",
                target: partial.final_path().to_path_buf(),
                target_format,
                capacity,
                warnings: Vec::new(),
            });
            commits.push(partial);
        }
        summaries.sort_by_key(|s| env.disks.iter().position(|d| d.disk_id == s.disk_id));
        for p in commits {
            p.commit()?;
        }
        Ok(ImportSummary {
            bytes_read: self.fed,
            ovf: ovf_name,
            directory: self.layout.directory().map(str::to_owned),
            manifest: manifest_state,
            manifests: self.manifests.into_iter().map(|(n, _)| n).collect(),
            disks: summaries,
            skipped: self.skipped,
            compression: container.compression(),
            archive: container.archive(),
        })
    }

    /// The tar stream ended: it must end between entries.
    fn finish_tar(&mut self) -> Result<()> {
        // A package without end-of-archive blocks leaves its last End pending.
        if let (_, Some(Event::End)) = self.demux.step(&[]).map_err(Error::from)? {
            self.end().map_err(|e| self.unpack.in_tar(e))?;
        }
        self.demux.finish().map_err(|e| {
            let e = self.head.tar_error(e);
            let e = match self.current_name() {
                Some(n) => e.in_entry(n),
                None => e,
            };
            self.unpack.in_tar(e)
        })
    }

    /// Every line of every manifest, each against the digests of its
    /// entry; the first that does not verify fails the import, naming its
    /// manifest.
    fn verify_manifests(&self) -> Result<&'static str> {
        if self.manifests.is_empty() {
            return Ok("absent");
        }
        if !self.verify {
            for (mf_name, _) in &self.manifests {
                tracing::warn!(manifest = %mf_name, "manifest not checked (verification disabled)");
            }
            return Ok("not verified");
        }
        let computed = |name: &str| {
            self.by_name
                .get(name)
                .map(|&ri| self.records[ri].digests.as_slice())
        };
        for (mf_name, m) in &self.manifests {
            for (entry, check) in digests::check_manifest(m, computed) {
                if let Some(e) = check.error(entry, mf_name) {
                    return Err(e);
                }
            }
        }
        Ok("verified")
    }
}

#[cfg(test)]
mod tests;
