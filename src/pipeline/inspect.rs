//! Inspection: one pass over a package that records its entries and
//! parses its OVF and manifests, without writing anything. Entries are
//! named as import names them ([`Layout`]: without the package's one
//! top-level directory, if it has one).
//!
//! By default the pass also checks what import would check, the way
//! import checks it: every line of every manifest against the digests of the
//! entries, computed while they stream by the same digest threads
//! ([`DigestTap`]) and compared by the same rule
//! ([`digests::check_manifest`]); and each disk's content, probed as
//! import's decoder choice probes it (inside gzip too), against the
//! OVF's declarations ([`probe::compare`]). The verdict is part of the
//! report; [`InspectReport::integrity_error`] says whether it fails.
//!
//! [`Mode::Quick`] reads headers only: the OVF, the manifest and the first
//! [`PROBE_LEN`] bytes of each entry. On a source that can skip (a regular
//! file) the rest of every entry is passed over with seeks; on a pipe it
//! is read and dropped. Nothing is verified.
//!
//! A package compressed as a whole is read through its decompression, and
//! a zip archive member by member ([`Unpacker`]), as import reads them;
//! quick mode then reads everything, since offsets in the source no longer
//! follow the entries.

mod report;

use bytes::{Bytes, BytesMut};

use crate::codec::gzip::InflatedHead;
use crate::codec::probe::{self, Format, PROBE_LEN, ProbeError};
use crate::codec::vhd::{self, FOOTER_LEN};
use crate::error::{Error, ErrorKind, Result};
use crate::limits;
use crate::ova::demux::{Demux, EntryHeader, EntryType, Event};
use crate::ova::layout::Layout;
use crate::ova::manifest::{self, ManifestEntry};
use crate::ova::ovf::{self, Compression, chunk_name};
use crate::ova::role::{Role, RoleError, Roles};
use crate::ova::unpack::{Container, Piece, Unpacker};
use crate::pipeline::digests::{self, DigestTap, EntryDigests, LineCheck};
use crate::pipeline::package_head::PackageHead;
use crate::source::SourceReader;

pub use report::*;

/// How much of the package `inspect` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read everything: digest every entry and check the manifest, probe
    /// every disk's content (inside gzip too) against its declaration.
    Verify,
    /// Headers only; nothing is verified.
    Quick,
}

/// Size of the reads in quick mode outside the OVF and the manifest: one
/// tar block, so that a skip lands on the next header without having read
/// the entry's content.
const QUICK_READ: usize = 512;

/// What `ovaio inspect` reports.
/// Reads a whole package and reports on it, checking it unless `mode`
/// is [`Mode::Quick`].
pub fn inspect(reader: &mut dyn SourceReader, mode: Mode) -> Result<InspectReport> {
    let can_skip = mode == Mode::Quick && reader.can_skip();
    let mut pass = Pass::new(mode);
    let mut buf = BytesMut::new();
    loop {
        let skips = can_skip && pass.unpack.is_plain();
        if skips && let Some(n) = pass.skippable() {
            // The demux is told only once the source has moved.
            if reader.skip(n)? {
                pass.demux.skip_content(n);
            }
        }
        let want = if skips {
            pass.quick_read()
        } else {
            limits::READ_CHUNK
        };
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::from(e)
                    .with_message("reading the package")
                    .at_offset(pass.demux.position()));
            }
        };
        let chunk = buf.split_to(n).freeze();
        pass.feed(chunk)?;
    }
    pass.finish()
}

/// What the OVF or manifest entry being read is kept as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collect {
    Ovf,
    Manifest,
}

/// The first bytes of one entry, for the probe; inside gzip too when
/// verifying. When verifying, also its last bytes: a fixed VHD is known
/// only by its footer at the end, as import's raw decoder knows it.
#[derive(Debug)]
struct EntryHead {
    /// At most [`PROBE_LEN`] bytes.
    head: Vec<u8>,
    /// The inflated head, once `head` shows gzip.
    inner: Option<InflatedHead>,
    look_inside: bool,
    /// The last bytes seen, at most a VHD footer's worth.
    tail: Vec<u8>,
    /// Bytes seen.
    len: u64,
    /// Once the entry ended: `Some(Ok)` if it ends with a fixed VHD's
    /// footer, `Some(Err(why))` if that footer makes import refuse it.
    fixed_vhd: Option<std::result::Result<(), String>>,
}

impl EntryHead {
    fn new(look_inside: bool) -> Self {
        EntryHead {
            head: Vec::new(),
            inner: None,
            look_inside,
            tail: Vec::new(),
            len: 0,
            fixed_vhd: None,
        }
    }

    fn feed(&mut self, d: &[u8]) {
        if self.look_inside {
            self.len += d.len() as u64;
            let keep = FOOTER_LEN.saturating_sub(d.len()).min(self.tail.len());
            self.tail.drain(..self.tail.len() - keep);
            self.tail
                .extend_from_slice(&d[d.len().saturating_sub(FOOTER_LEN)..]);
        }
        self.feed_head(d);
    }

    fn feed_head(&mut self, mut d: &[u8]) {
        if self.head.len() < PROBE_LEN {
            let take = (PROBE_LEN - self.head.len()).min(d.len());
            self.head.extend_from_slice(&d[..take]);
            d = &d[take..];
            if self.head.len() < PROBE_LEN {
                return;
            }
            self.start_inner();
        }
        if let Some(i) = &mut self.inner {
            i.feed(d);
        }
    }

    /// The entry ended: a shorter head is all of it.
    fn end(&mut self) {
        self.start_inner();
        if let Some(i) = &mut self.inner {
            i.finish();
        }
        if let Ok(tail) = <&[u8; FOOTER_LEN]>::try_from(self.tail.as_slice()) {
            let data = self.len - FOOTER_LEN as u64;
            self.fixed_vhd = match vhd::fixed_footer(tail, data) {
                Ok(Some(_)) => Some(Ok(())),
                Ok(None) => None,
                Err(e) => Some(Err(e.to_string())),
            };
        }
        self.tail = Vec::new();
    }

    /// What the probe and the footer say the entry is, outside any gzip.
    fn format(&self) -> Format {
        match (probe::probe(&self.head), &self.fixed_vhd) {
            (Format::Raw, Some(_)) => Format::Vhd,
            (f, _) => f,
        }
    }

    fn start_inner(&mut self) {
        if self.look_inside && self.inner.is_none() && probe::probe(&self.head) == Format::Gzip {
            let mut inner = InflatedHead::new();
            inner.feed(&self.head);
            self.inner = Some(inner);
        }
    }

    /// Whether the rest of the entry tells the probe nothing more.
    fn is_complete(&self) -> bool {
        self.head.len() >= PROBE_LEN && self.inner.as_ref().is_none_or(InflatedHead::is_done)
    }
}

/// The state of one inspection pass.
#[derive(Debug)]
struct Pass {
    mode: Mode,
    unpack: Unpacker,
    demux: Demux,
    head: PackageHead,
    /// Digest threads, when verifying.
    digests: Option<DigestTap>,
    entries: Vec<EntryInfo>,
    heads: Vec<EntryHead>,
    /// Entries of any type begun.
    begun: usize,
    layout: Layout,
    ovf_buf: Option<(String, Vec<u8>)>,
    /// Every manifest, in package order.
    mf_bufs: Vec<(String, Vec<u8>)>,
    /// What each entry is: descriptor, manifest or other.
    roles: Roles,
    collecting: Option<Collect>,
    /// Inside a regular entry: the content of any other belongs to no file.
    in_file: bool,
    /// Inside a zip member whose size only its data descriptor gives: its
    /// entry's size is counted as its bytes pass.
    counting: bool,
    /// Deflated zip members: offsets in them count inflated bytes.
    inflated: Vec<String>,
}

impl Pass {
    fn new(mode: Mode) -> Self {
        Pass {
            mode,
            unpack: Unpacker::new(),
            demux: Demux::new(),
            head: PackageHead::new(),
            digests: (mode == Mode::Verify).then(DigestTap::start),
            entries: Vec::new(),
            heads: Vec::new(),
            begun: 0,
            layout: Layout::new(),
            ovf_buf: None,
            mf_bufs: Vec::new(),
            roles: Roles::new(),
            collecting: None,
            in_file: false,
            counting: false,
            inflated: Vec::new(),
        }
    }

    /// Content bytes of the current entry that nothing here needs: the
    /// rest of an entry that is neither the OVF nor the manifest, once
    /// its head is probed.
    fn skippable(&self) -> Option<u64> {
        let n = self.demux.content_remaining().filter(|&n| n > 0)?;
        let done = !self.in_file || self.heads.last().is_some_and(EntryHead::is_complete);
        (self.collecting.is_none() && done).then_some(n)
    }

    /// How much to read next when entry contents are skipped: the rest of
    /// the OVF or manifest being collected, else one block (a header, or
    /// the head of an entry).
    fn quick_read(&self) -> usize {
        match (self.collecting, self.demux.content_remaining()) {
            (Some(_), Some(n)) if n > 0 => {
                usize::try_from(n).map_or(limits::READ_CHUNK, |n| n.min(limits::READ_CHUNK))
            }
            _ => QUICK_READ,
        }
    }

    fn feed(&mut self, chunk: Bytes) -> Result<()> {
        let mut input = chunk;
        loop {
            let (n, piece) = self.unpack.step(&input)?;
            let _ = input.split_to(n);
            match piece {
                Some(p) => self.piece(p)?,
                None if input.is_empty() => return Ok(()),
                None => {}
            }
        }
    }

    /// One piece of the unpacked package: tar bytes, or a zip member's
    /// event, handled as the tar demux's would be.
    fn piece(&mut self, p: Piece) -> Result<()> {
        match p {
            Piece::Tar(b) => {
                if let Some(Container::Compressed(c)) = self.unpack.container() {
                    self.head.decompressed_from(c);
                }
                self.feed_tar(&b).map_err(|e| self.unpack.in_tar(e))
            }
            Piece::Begin(m) => {
                let h = m.entry_header();
                if let Some(tap) = &mut self.digests
                    && h.entry_type == EntryType::Regular
                {
                    tap.begin_member(&h.name, m.size);
                }
                self.counting = m.size.is_none();
                if m.is_inflated() && h.entry_type == EntryType::Regular {
                    self.inflated.push(h.name.clone());
                }
                self.event(Event::Begin(h))
                    .map_err(|e| e.at_offset(m.header_offset))
            }
            Piece::Data(d) => {
                if let Some(tap) = &mut self.digests {
                    tap.member_data(&d);
                }
                if self.counting
                    && self.in_file
                    && let Some(e) = self.entries.last_mut()
                {
                    e.size += d.len() as u64;
                }
                self.event(Event::Data(&d))?;
                self.check_collected()
            }
            Piece::End => {
                if let Some(tap) = &mut self.digests {
                    tap.end_member();
                }
                self.counting = false;
                self.event(Event::End)
            }
        }
    }

    /// A zip member's size may be known only at its end: the OVF or
    /// manifest being collected is held to its limit as it grows.
    fn check_collected(&self) -> Result<()> {
        let (buf, what, limit) = match self.collecting {
            Some(Collect::Ovf) => (
                self.ovf_buf.as_ref(),
                "OVF descriptor",
                limits::MAX_OVF_SIZE,
            ),
            Some(Collect::Manifest) => (self.mf_bufs.last(), "manifest", limits::MAX_MANIFEST_SIZE),
            None => return Ok(()),
        };
        match buf {
            Some((name, b)) if b.len() as u64 > limit => Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("{what} over the size limit"),
            )
            .in_entry(name)),
            _ => Ok(()),
        }
    }

    fn feed_tar(&mut self, chunk: &Bytes) -> Result<()> {
        if let Some(tap) = &mut self.digests {
            tap.feed(chunk);
        }
        self.head.observe(chunk);
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let (used, ev) = self.demux.step(rest).map_err(|e| self.head.tar_error(e))?;
            rest = &rest[used..];
            if let Some(ev) = ev {
                if ev == Event::Eof {
                    self.unpack.tar_ended();
                }
                self.event(ev)?;
            }
        }
        Ok(())
    }

    fn event(&mut self, ev: Event<'_>) -> Result<()> {
        match ev {
            Event::Begin(h) => self.begin(h),
            Event::Data(d) if self.in_file => {
                if let Some(h) = self.heads.last_mut() {
                    h.feed(d);
                }
                let buf = match self.collecting {
                    Some(Collect::Ovf) => self.ovf_buf.as_mut(),
                    Some(Collect::Manifest) => self.mf_bufs.last_mut(),
                    None => None,
                };
                if let Some((_, b)) = buf {
                    b.extend_from_slice(d);
                }
                Ok(())
            }
            Event::End => {
                if self.in_file
                    && let Some(h) = self.heads.last_mut()
                {
                    h.end();
                }
                self.collecting = None;
                self.in_file = false;
                Ok(())
            }
            Event::Data(_) | Event::Eof => Ok(()),
        }
    }

    fn begin(&mut self, h: EntryHeader) -> Result<()> {
        self.begun += 1;
        if !h.entry_type.is_known() {
            return Err(h.entry_type.unknown_error().in_entry(&h.name));
        }
        let placed = self
            .layout
            .place(&h.name, h.entry_type)
            .map_err(|e| Error::from(e).at_offset(h.header_offset))?;
        let (Some(name), EntryType::Regular) = (placed, h.entry_type) else {
            return Ok(());
        };
        self.in_file = true;
        self.collecting = None;
        // A second descriptor is reported as an entry, not refused: the
        // report is the point of inspecting.
        let role = match self.roles.classify(&name, Some(h.size)) {
            Ok(r) => r,
            Err(RoleError::SecondDescriptor) => Role::Other,
            Err(e) => return Err(Error::from(e).in_entry(&name)),
        };
        if role == Role::Descriptor {
            self.ovf_buf = Some((name.clone(), Vec::new()));
            self.collecting = Some(Collect::Ovf);
        } else if role == Role::Manifest {
            self.mf_bufs.push((name.clone(), Vec::new()));
            self.collecting = Some(Collect::Manifest);
        }
        self.entries.push(EntryInfo {
            name,
            size: h.size,
            offset: h.data_offset,
        });
        self.heads.push(EntryHead::new(self.mode == Mode::Verify));
        Ok(())
    }

    fn finish(mut self) -> Result<InspectReport> {
        // A compressed stream or a zip archive must be complete.
        while let Some(p) = self.unpack.finish()? {
            self.piece(p)?;
        }
        let container = self.unpack.container().unwrap_or(Container::Tar);
        if container != Container::Zip {
            // A package without end-of-archive blocks leaves its last End pending.
            if let (_, Some(ev)) = self.demux.step(&[]).map_err(|e| self.head.tar_error(e))? {
                self.event(ev).map_err(|e| self.unpack.in_tar(e))?;
            }
            self.demux
                .finish()
                .map_err(|e| self.unpack.in_tar(self.head.tar_error(e)))?;
        }
        if self.begun == 0 {
            if container == Container::Zip {
                return Err(Error::new(
                    ErrorKind::InvalidFormat,
                    "not an OVA package: the zip archive holds no members",
                ));
            }
            return Err(self.head.no_entries());
        }
        let computed = self.digests.take().map(DigestTap::finish);
        let Some((ovf_name, ovf_bytes)) = self.ovf_buf.take() else {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                "the package has no OVF descriptor (.ovf entry)",
            ));
        };
        // Errors inside the descriptor or manifest are placed in the package.
        let place = |e: Error, name: &str| {
            let offset = self
                .entries
                .iter()
                .find(|e| e.name == name)
                .map_or(0, |e| e.offset);
            if self.inflated.iter().any(|n| n == name) {
                e.inside("inflated zip member").in_entry_at(name, offset, 0)
            } else {
                self.unpack.in_tar(e.in_entry_at(name, offset, 0))
            }
        };
        let env = ovf::parse(&ovf_bytes).map_err(|e| place(e.into(), &ovf_name))?;
        let mut parsed = Vec::new();
        for (name, bytes) in std::mem::take(&mut self.mf_bufs) {
            let m = manifest::parse(&bytes).map_err(|e| place(e.into(), &name))?;
            parsed.push((name, m));
        }
        let manifests: Vec<ManifestInfo> = parsed
            .iter()
            .map(|(name, m)| {
                let algs: Vec<&str> = m.algorithms().iter().map(|a| a.name()).collect();
                ManifestInfo {
                    name: name.clone(),
                    algorithm: algs.join(","),
                    entries: m.entries.len(),
                }
            })
            .collect();
        let (manifest_check, failures) = match (parsed.is_empty(), &computed) {
            (true, _) => (
                ManifestCheck {
                    status: "absent",
                    verified: 0,
                    lines: Vec::new(),
                },
                Vec::new(),
            ),
            (false, None) => (
                ManifestCheck {
                    status: "not verified",
                    verified: 0,
                    lines: Vec::new(),
                },
                Vec::new(),
            ),
            (false, Some(computed)) => check_lines(&parsed, computed, &self.entries),
        };
        let files = env
            .files
            .iter()
            .map(|f| FileInfo {
                id: f.id.clone(),
                href: f.href.clone(),
                size: f.size,
                compression: match f.compression {
                    Compression::Gzip => "gzip",
                    _ => "none",
                },
                chunk_size: f.chunk_size,
            })
            .collect();
        // A chunked file's content starts in its first chunk.
        let entry_head = |f: &ovf::FileRef| {
            let name = match f.chunk_size {
                Some(_) => chunk_name(&f.href, 0),
                None => f.href.clone(),
            };
            let i = self.entries.iter().position(|e| e.name == name)?;
            self.heads.get(i)
        };
        let mut disks = Vec::new();
        let mut disk_checks = Vec::new();
        for d in &env.disks {
            let file = d
                .file_ref
                .as_ref()
                .and_then(|r| env.files.iter().find(|f| &f.id == r));
            let href = file.map(|f| f.href.clone());
            let head = file.and_then(entry_head);
            if let Some(f) = file {
                disk_checks.push(check_disk(
                    self.mode,
                    &d.disk_id,
                    &f.href,
                    head,
                    d.format.as_deref(),
                    f.compression == Compression::Gzip,
                ));
            }
            disks.push(DiskInfo {
                disk_id: d.disk_id.clone(),
                blank: d.file_ref.is_none(),
                href,
                capacity: d.capacity,
                format_uri: d.format.clone(),
                declared_format: d.format.as_deref().map(|u| probe::declared(u).label),
                populated_size: d.populated_size,
                detected_format: head.map(|h| h.format().name()),
            });
        }
        Ok(InspectReport {
            ovf: ovf_name,
            directory: self.layout.directory().map(str::to_owned),
            name: env.name.clone(),
            files,
            disks,
            manifest: manifests.first().cloned(),
            manifests,
            compression: container.compression(),
            archive: container.archive(),
            entries: self.entries,
            verification: Verification {
                mode: match self.mode {
                    Mode::Verify => "full",
                    Mode::Quick => "quick",
                },
                manifest: manifest_check,
                disks: disk_checks,
            },
            failures,
        })
    }
}

/// Every line of every manifest against the digests computed; the
/// failing lines are returned apart for [`InspectReport::integrity_error`].
fn check_lines(
    manifests: &[(String, manifest::Manifest)],
    computed: &EntryDigests,
    entries: &[EntryInfo],
) -> (ManifestCheck, Vec<(String, ManifestEntry, LineCheck)>) {
    // An entry whose content was empty of digests (none expected) is still
    // an entry of the package.
    let digests_of = |name: &str| {
        entries
            .iter()
            .any(|e| e.name == name)
            .then(|| computed.get(name).map_or(&[][..], Vec::as_slice))
    };
    let checks = manifests.iter().flat_map(|(mf, m)| {
        digests::check_manifest(m, digests_of)
            .into_iter()
            .map(move |(line, check)| (mf, line, check))
    });
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    let mut verified = 0;
    let mut unchecked = 0;
    for (mf, line, check) in checks {
        let actual = digests_of(&line.name)
            .and_then(|ds| ds.iter().find(|(a, _)| *a == line.algorithm))
            .map(|(_, d)| hex::encode(d));
        let status = match &check {
            LineCheck::Verified => {
                verified += 1;
                "verified"
            }
            LineCheck::Mismatch(_) => "mismatch",
            LineCheck::NoSuchEntry => "missing",
            LineCheck::NotComputed => {
                unchecked += 1;
                "not checked"
            }
        };
        lines.push(LineReport {
            manifest: mf.clone(),
            name: line.name.clone(),
            algorithm: line.algorithm.name(),
            status,
            expected: hex::encode(&line.digest),
            actual,
        });
        if check.is_failure() {
            failures.push((mf.clone(), line.clone(), check));
        }
    }
    let status = if !failures.is_empty() {
        "failed"
    } else if unchecked > 0 {
        "incomplete"
    } else {
        "verified"
    };
    (
        ManifestCheck {
            status,
            verified,
            lines,
        },
        failures,
    )
}

/// One disk's content, as import's decoder choice would find it, against
/// the OVF's declarations.
fn check_disk(
    mode: Mode,
    disk_id: &str,
    href: &str,
    head: Option<&EntryHead>,
    format_uri: Option<&str>,
    declared_gzip: bool,
) -> DiskCheck {
    let verdict = |status, content: Option<Format>, gzip: Option<bool>, findings| DiskCheck {
        disk_id: disk_id.to_owned(),
        href: href.to_owned(),
        status,
        content_format: content.map(Format::name),
        compression: gzip.map(|g| if g { "gzip" } else { "none" }),
        findings,
    };
    let Some(head) = head else {
        return verdict(
            "missing",
            None,
            None,
            vec!["the package has no entry of this name".into()],
        );
    };
    if mode == Mode::Quick {
        return verdict("not checked", None, None, Vec::new());
    }
    if head.format() == Format::Vhd
        && let Some(Err(why)) = &head.fixed_vhd
    {
        return verdict(
            "unsupported",
            Some(Format::Vhd),
            Some(false),
            vec![why.clone()],
        );
    }
    let outer = head.format();
    let (content, gzip) = match (outer, &head.inner) {
        (Format::Gzip, Some(inner)) => match inner.head() {
            Ok(h) => (probe::probe(h), true),
            Err(e) => {
                return verdict("unreadable", None, Some(true), vec![e.to_string()]);
            }
        },
        (other, _) => (other, false),
    };
    if gzip && content == Format::Gzip {
        let why = ProbeError::NestedGzip.to_string();
        return verdict("unsupported", Some(content), Some(true), vec![why]);
    }
    let Some(source) = content.source() else {
        let why = ProbeError::Unsupported(content).to_string();
        return verdict("unsupported", Some(content), Some(gzip), vec![why]);
    };
    let found: Vec<String> = probe::compare(format_uri, declared_gzip, source, gzip)
        .iter()
        .map(probe::Disagreement::found)
        .collect();
    let status = if found.is_empty() { "ok" } else { "mismatch" };
    verdict(status, Some(content), Some(gzip), found)
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Read, Write};

    use super::*;
    use crate::ova::digest::digest;
    use crate::ova::manifest::Algorithm;
    use crate::ova::writer::TarWriter;

    const VMDK_URI: &str =
        "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

    /// An OVF 1.0 descriptor with one disk `href` of `format_uri`.
    fn ovf(href: &str, gzip: bool, format_uri: Option<&str>) -> String {
        let compression = if gzip {
            r#" ovf:compression="gzip""#
        } else {
            ""
        };
        let format = format_uri
            .map(|f| format!(r#" ovf:format="{f}""#))
            .unwrap_or_default();
        format!(
            r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="{href}" ovf:id="file1"{compression}/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="16777216"{format}/>
  </DiskSection>
  <VirtualSystem ovf:id="vm"><Info>vm</Info><Name>vm</Name></VirtualSystem>
</Envelope>
"#
        )
    }

    /// A tar archive of `entries`, in order, written by ovaio's own writer.
    fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new()).with_mtime(0);
        for (name, data) in entries {
            w.begin_entry(name, data.len() as u64).unwrap();
            w.write_data(data).unwrap();
            w.end_entry().unwrap();
        }
        w.finish().unwrap()
    }

    fn mf_line(alg: Algorithm, name: &str, data: &[u8]) -> String {
        manifest::format_line(alg, name, &digest(alg, data))
    }

    /// A 2 MiB raw disk whose bytes are not all alike.
    fn disk() -> Vec<u8> {
        (0..2u32 << 20).map(|i| (i % 251) as u8).collect()
    }

    /// A source that counts the bytes read from it and hands out at most
    /// `piece` bytes per read; it skips when `skips`.
    struct Counting {
        inner: Cursor<Vec<u8>>,
        piece: usize,
        skips: bool,
        read: u64,
    }

    impl Counting {
        fn new(data: Vec<u8>, piece: usize, skips: bool) -> Self {
            Counting {
                inner: Cursor::new(data),
                piece,
                skips,
                read: 0,
            }
        }
    }

    impl Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.piece);
            let n = self.inner.read(&mut buf[..n])?;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl SourceReader for Counting {
        fn can_skip(&self) -> bool {
            self.skips
        }
        fn skip(&mut self, n: u64) -> std::io::Result<bool> {
            if self.skips {
                self.inner.skip(n)
            } else {
                Ok(false)
            }
        }
    }

    fn entries(r: &InspectReport) -> Vec<(String, u64, u64)> {
        r.entries
            .iter()
            .map(|e| (e.name.clone(), e.size, e.offset))
            .collect()
    }

    fn statuses(r: &InspectReport) -> Vec<&'static str> {
        r.verification
            .manifest
            .lines
            .iter()
            .map(|l| l.status)
            .collect()
    }

    #[test]
    fn manifest_verified_first_or_last() {
        let d = disk();
        let o = ovf("disk1.img", false, None);
        let mf = [
            mf_line(Algorithm::Sha256, "vm.ovf", o.as_bytes()),
            mf_line(Algorithm::Sha256, "disk1.img", &d),
        ]
        .concat();
        let last = tar(&[
            ("vm.ovf", o.as_bytes()),
            ("disk1.img", &d),
            ("vm.mf", mf.as_bytes()),
        ]);
        let first = tar(&[
            ("vm.ovf", o.as_bytes()),
            ("vm.mf", mf.as_bytes()),
            ("disk1.img", &d),
        ]);
        for pkg in [last, first] {
            let r = inspect(&mut &pkg[..], Mode::Verify).unwrap();
            let m = &r.verification.manifest;
            assert_eq!(m.status, "verified");
            assert_eq!(m.verified, 2);
            assert_eq!(statuses(&r), ["verified", "verified"]);
            assert!(r.integrity_error().is_none());
            let disk = &r.verification.disks[0];
            assert_eq!(
                (disk.status, disk.content_format, disk.compression),
                ("ok", Some("raw"), Some("none"))
            );
        }
    }

    #[test]
    fn digest_mismatch_and_missing_entry_fail() {
        let d = disk();
        let o = ovf("disk1.img", false, None);
        let mf = [
            mf_line(Algorithm::Sha256, "vm.ovf", o.as_bytes()),
            mf_line(Algorithm::Sha256, "disk1.img", b"other bytes"),
            mf_line(Algorithm::Sha1, "ghost.img", b"x"),
        ]
        .concat();
        let pkg = tar(&[
            ("vm.ovf", o.as_bytes()),
            ("disk1.img", &d),
            ("vm.mf", mf.as_bytes()),
        ]);
        let r = inspect(&mut &pkg[..], Mode::Verify).unwrap();
        assert_eq!(r.verification.manifest.status, "failed");
        assert_eq!(statuses(&r), ["verified", "mismatch", "missing"]);
        let line = &r.verification.manifest.lines[1];
        assert_eq!(
            line.actual.as_deref(),
            Some(hex::encode(digest(Algorithm::Sha256, &d)).as_str())
        );
        let e = r.integrity_error().expect("an integrity error");
        assert_eq!(e.kind(), ErrorKind::Integrity);
        assert_eq!(e.context().entry.as_deref(), Some("disk1.img"));
        assert!(e.to_string().contains("digest mismatch"), "{e}");
    }

    #[test]
    fn sha512_lines_verify_wherever_the_manifest_is() {
        let d = disk();
        let o = ovf("disk1.img", false, None);
        let mf = [
            mf_line(Algorithm::Sha512, "vm.ovf", o.as_bytes()),
            mf_line(Algorithm::Sha512, "disk1.img", &d),
        ]
        .concat();
        for pkg in [
            tar(&[
                ("vm.ovf", o.as_bytes()),
                ("vm.mf", mf.as_bytes()),
                ("disk1.img", &d),
            ]),
            tar(&[
                ("vm.ovf", o.as_bytes()),
                ("disk1.img", &d),
                ("vm.mf", mf.as_bytes()),
            ]),
        ] {
            let r = inspect(&mut &pkg[..], Mode::Verify).unwrap();
            assert_eq!(statuses(&r), ["verified", "verified"]);
            assert_eq!(r.verification.manifest.status, "verified");
            assert!(r.integrity_error().is_none());
        }
    }

    #[test]
    fn disk_formats_are_probed_inside_gzip() {
        // A qcow2 head, gzip-compressed, declared as an uncompressed VMDK.
        let mut qcow2 = b"QFI\xfb\0\0\0\x03".to_vec();
        qcow2.resize(64 << 10, 0);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&qcow2).unwrap();
        let gz = gz.finish().unwrap();
        let o = ovf("disk1.vmdk", false, Some(VMDK_URI));
        let pkg = tar(&[("vm.ovf", o.as_bytes()), ("disk1.vmdk", &gz)]);
        let r = inspect(&mut &pkg[..], Mode::Verify).unwrap();
        let disk = &r.verification.disks[0];
        assert_eq!(disk.status, "mismatch");
        assert_eq!(disk.content_format, Some("qcow2"));
        assert_eq!(disk.compression, Some("gzip"));
        assert_eq!(
            disk.findings,
            [
                "declared vmdk (streamOptimized) but content is qcow2",
                "declared no compression but the content is gzip-compressed"
            ]
        );
        // A VHDX is named as what import refuses; a VHD is imported.
        let mut vhdx = b"vhdxfile".to_vec();
        vhdx.resize(4096, 0);
        let pkg = tar(&[("vm.ovf", o.as_bytes()), ("disk1.vmdk", &vhdx)]);
        let r = inspect(&mut &pkg[..], Mode::Verify).unwrap();
        let disk = &r.verification.disks[0];
        assert_eq!(
            (disk.status, disk.content_format),
            ("unsupported", Some("vhdx"))
        );
        let mut vhd = b"conectix".to_vec();
        vhd.resize(4096, 0);
        let pkg = tar(&[("vm.ovf", o.as_bytes()), ("disk1.vmdk", &vhd)]);
        let r = inspect(&mut &pkg[..], Mode::Verify).unwrap();
        let disk = &r.verification.disks[0];
        assert_eq!(
            (disk.status, disk.content_format),
            ("mismatch", Some("vhd"))
        );
        // gzip data that does not inflate.
        let mut bad = gz[..20].to_vec();
        bad.extend_from_slice(&[0xff; 600]);
        let pkg = tar(&[("vm.ovf", o.as_bytes()), ("disk1.vmdk", &bad)]);
        let r = inspect(&mut &pkg[..], Mode::Verify).unwrap();
        assert_eq!(r.verification.disks[0].status, "unreadable");
    }

    #[test]
    fn quick_skips_contents_of_a_file_and_sees_the_same_entries() {
        let d = disk();
        let o = ovf("disk1.img", false, None);
        let mf = [
            mf_line(Algorithm::Sha256, "vm.ovf", o.as_bytes()),
            // Wrong on purpose: quick mode must not notice.
            mf_line(Algorithm::Sha256, "disk1.img", b"other"),
        ]
        .concat();
        let pkg = tar(&[
            ("vm.ovf", o.as_bytes()),
            ("disk1.img", &d),
            ("tpm.dat", &d[..100_000]),
            ("vm.mf", mf.as_bytes()),
        ]);
        let mut full_src = Counting::new(pkg.clone(), usize::MAX, true);
        let full = inspect(&mut full_src, Mode::Verify).unwrap();
        assert_eq!(full_src.read, pkg.len() as u64);
        assert!(full.integrity_error().is_some());

        let mut quick_src = Counting::new(pkg.clone(), usize::MAX, true);
        let quick = inspect(&mut quick_src, Mode::Quick).unwrap();
        assert_eq!(entries(&quick), entries(&full));
        assert_eq!(quick.disks[0].detected_format, Some("raw"));
        // Headers, the OVF, the manifest and one block of each other
        // entry: a few KiB of a package of more than 2 MiB.
        assert!(
            quick_src.read < 16 << 10,
            "quick read {} bytes",
            quick_src.read
        );
        assert_eq!(quick.verification.mode, "quick");
        assert_eq!(quick.verification.manifest.status, "not verified");
        assert!(quick.verification.manifest.lines.is_empty());
        assert_eq!(quick.verification.disks[0].status, "not checked");
        assert!(quick.integrity_error().is_none());

        // A source that cannot skip (a pipe) is read through.
        let mut pipe = Counting::new(pkg.clone(), usize::MAX, false);
        let piped = inspect(&mut pipe, Mode::Quick).unwrap();
        assert_eq!(pipe.read, pkg.len() as u64);
        assert_eq!(entries(&piped), entries(&full));
    }

    #[test]
    fn quick_on_a_truncated_file_reports_the_truncation() {
        let d = disk();
        let o = ovf("disk1.img", false, None);
        let pkg = tar(&[("vm.ovf", o.as_bytes()), ("disk1.img", &d)]);
        let cut = pkg[..pkg.len() - 1024 - 4096].to_vec();
        let full = inspect(&mut &cut[..], Mode::Verify).unwrap_err();
        let quick = inspect(&mut Cursor::new(cut), Mode::Quick).unwrap_err();
        assert_eq!(quick.to_string(), full.to_string());
        assert!(full.to_string().contains("truncated"), "{full}");
    }

    #[test]
    fn quick_and_full_agree_on_damaged_packages() {
        // The fuzz target's invariant, over seeded damage: the pass that
        // skips contents sees the same entries, and fails where the full
        // one fails.
        let o = ovf("disk1.img", false, None);
        let d: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
        let mf = mf_line(Algorithm::Sha256, "disk1.img", &d);
        let pkg = tar(&[
            ("vm.ovf", o.as_bytes()),
            ("disk1.img", &d),
            ("vm.mf", mf.as_bytes()),
        ]);
        crate::fuzzing::inspect(&pkg);
        let mut rng = crate::test_support::Rng(0x1a5b_0c7e);
        for _ in 0..300 {
            let mut bad = pkg.clone();
            match rng.below(3) {
                0 => bad.truncate(rng.below(pkg.len() as u64) as usize),
                1 => {
                    let at = rng.below(pkg.len() as u64) as usize;
                    bad[at] ^= 1 << rng.below(8);
                }
                _ => {
                    // Where a size field lies if the block is a header:
                    // a size is what a skip trusts.
                    let at = 124 + rng.below(12) as usize + 512 * rng.below(4) as usize;
                    bad[at] = b"0123456789 \0"[rng.below(12) as usize];
                }
            }
            crate::fuzzing::inspect(&bad);
        }
    }

    #[test]
    fn reports_do_not_depend_on_read_sizes() {
        let d = disk();
        let o = ovf("disk1.img", true, None);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&d[..1 << 20]).unwrap();
        let gz = gz.finish().unwrap();
        let mf = [
            mf_line(Algorithm::Sha1, "vm.ovf", o.as_bytes()),
            mf_line(Algorithm::Sha1, "disk1.img", &gz),
        ]
        .concat();
        let pkg = tar(&[
            ("disk1.img", &gz),
            ("vm.mf", mf.as_bytes()),
            ("vm.ovf", o.as_bytes()),
        ]);
        let json = |mode, piece, skips| {
            let mut src = Counting::new(pkg.clone(), piece, skips);
            serde_json::to_string(&inspect(&mut src, mode).unwrap()).unwrap()
        };
        for mode in [Mode::Verify, Mode::Quick] {
            let whole = json(mode, usize::MAX, true);
            for piece in [1, 7, 511, 4096] {
                assert_eq!(json(mode, piece, true), whole, "{mode:?} piece {piece}");
                assert_eq!(json(mode, piece, false), whole, "{mode:?} piece {piece}");
            }
        }
        let r: serde_json::Value = serde_json::from_str(&json(Mode::Verify, 4096, false)).unwrap();
        assert_eq!(r["verification"]["manifest"]["status"], "verified");
        assert_eq!(r["verification"]["disks"][0]["compression"], "gzip");
        assert_eq!(r["verification"]["disks"][0]["status"], "ok");
    }

    #[test]
    fn a_fixed_vhd_is_named_by_its_footer() {
        let mut d = disk();
        let data = d.len() as u64;
        let mut footer = [0u8; 512];
        footer[..8].copy_from_slice(b"conectix");
        footer[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
        footer[28..32].copy_from_slice(b"tap\0");
        footer[48..56].copy_from_slice(&data.to_be_bytes());
        footer[60..64].copy_from_slice(&2u32.to_be_bytes());
        let sum = footer
            .iter()
            .fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
        footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
        d.extend_from_slice(&footer);
        let xen = "http://technet.microsoft.com/en-us/virtualserver/bb676673.aspx";
        for (uri, status) in [
            (Some(xen), "ok"),
            (None, "ok"),
            (Some(VMDK_URI), "mismatch"),
        ] {
            let o = ovf("disk1.vhd", false, uri);
            let pkg = tar(&[("vm.ovf", o.as_bytes()), ("disk1.vhd", &d)]);
            let r = inspect(&mut &pkg[..], Mode::Verify).unwrap();
            assert_eq!(r.disks[0].detected_format, Some("vhd"));
            let check = &r.verification.disks[0];
            assert_eq!((check.status, check.content_format), (status, Some("vhd")));
            // Reading headers only, the footer is not seen.
            let q = inspect(&mut Counting::new(pkg.clone(), 1 << 20, true), Mode::Quick).unwrap();
            assert_eq!(q.disks[0].detected_format, Some("raw"));
        }
        // The same bytes without a sound footer are a raw disk.
        let n = d.len();
        d[n - 100] ^= 1;
        let o = ovf("disk1.vhd", false, Some(xen));
        let pkg = tar(&[("vm.ovf", o.as_bytes()), ("disk1.vhd", &d)]);
        let r = inspect(&mut &pkg[..], Mode::Verify).unwrap();
        assert_eq!(r.disks[0].detected_format, Some("raw"));
        assert_eq!(r.verification.disks[0].status, "mismatch");
    }
}
