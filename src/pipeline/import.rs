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
mod entries;
mod finish;
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
use crate::source::read_ahead::ReadAhead;

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
pub(crate) fn with_notes(e: Error, notes: &[String]) -> Error {
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

    /// Reads the whole package from `reader`, then finishes. The reads run
    /// on a thread of their own ([`ReadAhead`]), each filling a
    /// [`limits::READ_CHUNK`] buffer that becomes the pieces every later
    /// stage shares: nothing is copied on the way.
    ///
    /// A source that can seek is first scanned for its manifests
    /// ([`digests::scan_manifests`]), so that only the digests they ask
    /// for are computed, wherever in the package they are.
    pub fn run(mut self, mut reader: Box<dyn SourceReader>) -> Result<ImportSummary> {
        if self.verify && self.fed == 0 && reader.can_skip() {
            let scanned = digests::scan_manifests(&mut *reader);
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
        let mut chunks = ReadAhead::start(reader)?;
        loop {
            match chunks.next_chunk() {
                Ok(Some(chunk)) => self.feed(chunk)?,
                Ok(None) => break,
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
    /// for an NBD or remote target, which is no file.
    fn place_of(&self, target: &DiskTarget) -> Result<Option<(Arc<Dir>, OsString)>> {
        if target.net.is_some() {
            return Ok(None);
        }
        let (dir, file_name) = partial::target_dir(&self.roots, &target.path)?;
        if self.existing == Existing::Keep {
            partial::refuse_existing(&dir, &file_name)?;
        }
        Ok(Some((dir, file_name)))
    }

    /// What a failed import must say of its NBD and remote targets, which keep what
    /// was written (file targets are removed): `e` with a note naming
    /// each export opened. Call it with an error of the caller's own
    /// before dropping the importer; [`Importer::feed`],
    /// [`Importer::finish`] and [`Importer::run`] add it themselves.
    pub fn note_targets(&self, e: Error) -> Error {
        with_notes(e, &self.net_notes())
    }

    fn net_notes(&self) -> Vec<String> {
        self.disks
            .iter()
            .map(|d| &d.out)
            .chain(self.blanks.iter().map(|b| &b.out))
            .filter_map(|s| s.opened_net())
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
}

#[cfg(test)]
mod tests;
