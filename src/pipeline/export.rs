//! The export pipeline: source volumes in, one OVA stream out.
//!
//! [`ExportPlan::prepare`] opens every source, computes its allocation map
//! and the exact layout of its disk (qcow2, or a streamOptimized VMDK),
//! fills the OVF sizes and lays out the whole archive, so
//! [`ExportPlan::total_size`] is known before the first byte (a tar
//! header, `ovf:size` and a `Content-Length` all need it). A VMDK with
//! deflated grains is the one layout that needs the data for that: its
//! grains are compressed once to be counted, in `prepare`.
//! [`ExportPlan::write_to`] then streams the archive in one pass: the OVF
//! first, the disks in References order, the manifest (SHA-256 unless
//! asked otherwise) last.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use crate::codec::qcow2::encoder::{Qcow2Encoder, Qcow2Layout};
use crate::codec::vmdk::encoder::{VmdkEncoder, VmdkLayout};
use crate::error::{Error, ErrorKind, Result};
use crate::limits;
use crate::ova::digest::MultiDigest;
use crate::ova::manifest::{self, Algorithm};
use crate::ova::ovf;
use crate::ova::ovf::vm::VmSpec;
use crate::ova::ovf::writer::{
    GeneratedDisk, QCOW2_FORMAT_URI, VMDK_STREAM_FORMAT_URI, fill_sizes_and_formats, generate,
};
use crate::ova::writer::{ArchiveLayout, EntryPlan, TarWriter, archive_layout};
use crate::pipeline::progress::Progress;
use crate::sink::partial::PartialFile;
use crate::source::volume::{AllowedRoots, SourceVolume};
use crate::volume::Format as VolumeFormat;

/// One disk to export.
#[derive(Debug, Clone)]
pub struct ExportDisk {
    /// Its href in the OVA (and the OVF References).
    pub href: String,
    /// The source volume (for one reached by URL, that URL as shown).
    pub path: PathBuf,
    /// Source format; `None` probes the file.
    pub format: Option<VolumeFormat>,
    /// The source is this NBD export or remote volume, not a file.
    pub net: Option<crate::volume::NetUrl>,
}

/// The format of the disks an export writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskFormat {
    /// qcow2 (oVirt, OpenStack, libvirt).
    #[default]
    Qcow2,
    /// VMDK streamOptimized (VMware, VirtualBox).
    Vmdk,
}

impl DiskFormat {
    /// The name on the command line, in tickets and in summaries.
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
        }
    }

    /// `qcow2` or `vmdk`, any case.
    pub fn parse(s: &str) -> std::result::Result<DiskFormat, String> {
        [DiskFormat::Qcow2, DiskFormat::Vmdk]
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("'{s}' is not a disk format to write: give qcow2 or vmdk"))
    }

    /// `Disk/@ovf:format`.
    pub fn format_uri(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => QCOW2_FORMAT_URI,
            DiskFormat::Vmdk => VMDK_STREAM_FORMAT_URI,
        }
    }
}

/// Where the OVF descriptor comes from.
#[derive(Debug, Clone)]
pub enum OvfSource {
    /// A descriptor to complete with the exact sizes.
    Descriptor(Vec<u8>),
    /// Generate an OVF 1.0 descriptor for this VM.
    Generate(VmSpec),
}

/// What to export and how.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// Disks in References order.
    pub disks: Vec<ExportDisk>,
    /// The descriptor.
    pub ovf: OvfSource,
    /// Name of the OVF entry (`<name>.ovf`).
    pub ovf_name: String,
    /// Write a manifest last, with digests in this algorithm.
    pub manifest: Option<Algorithm>,
    /// Align each disk's data to 4 KiB with `pad` entries.
    pub align: bool,
    /// Read allocated data and leave all-zero clusters out.
    pub detect_zeros: bool,
    /// The format of the disks written.
    pub disk_format: DiskFormat,
    /// VMDK only: deflate the grains (a counting pass reads and
    /// compresses every source once in [`ExportPlan::prepare`]) rather
    /// than store them.
    pub compress: bool,
    /// Where sources (and their backing files) may live.
    pub roots: AllowedRoots,
}

/// The exact layout of one disk entry.
#[derive(Debug)]
enum DiskLayout {
    Qcow2(Qcow2Layout),
    Vmdk(VmdkLayout),
}

impl DiskLayout {
    fn total_size(&self) -> u64 {
        match self {
            DiskLayout::Qcow2(l) => l.total_size(),
            DiskLayout::Vmdk(l) => l.total_size(),
        }
    }

    /// Guest bytes stored: whole clusters or grains.
    fn populated(&self) -> u64 {
        match self {
            DiskLayout::Qcow2(l) => l.data_clusters() * l.cluster_size(),
            DiskLayout::Vmdk(l) => l.data_grains() * l.grain_size(),
        }
    }

    fn format(&self) -> DiskFormat {
        match self {
            DiskLayout::Qcow2(_) => DiskFormat::Qcow2,
            DiskLayout::Vmdk(_) => DiskFormat::Vmdk,
        }
    }
}

/// A disk's encoder, reading its source volume.
enum DiskEncoder {
    Qcow2(Qcow2Encoder<SourceVolume>),
    Vmdk(VmdkEncoder<SourceVolume>),
}

impl Read for DiskEncoder {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            DiskEncoder::Qcow2(e) => e.read(buf),
            DiskEncoder::Vmdk(e) => e.read(buf),
        }
    }
}

/// One disk of a prepared export.
#[derive(Debug)]
struct PlannedDisk {
    href: String,
    path: PathBuf,
    volume: SourceVolume,
    layout: DiskLayout,
    capacity: u64,
}

/// A fully laid out export; see the module documentation.
#[derive(Debug)]
pub struct ExportPlan {
    ovf_name: String,
    ovf_bytes: Vec<u8>,
    disks: Vec<PlannedDisk>,
    manifest_name: Option<String>,
    /// The manifest's algorithm (with `manifest_name`).
    manifest_alg: Option<Algorithm>,
    /// Also digest every disk with SHA-256 (for a ticket's checksums).
    sha256: bool,
    archive: ArchiveLayout,
    align: bool,
    /// Modification time of every tar entry; `None`: now.
    mtime: Option<u64>,
}

/// What an export wrote, for `--json` and logs.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    /// Total bytes of the OVA.
    pub size: u64,
    /// Name of the OVF entry.
    pub ovf: String,
    /// Name of the manifest entry, if written.
    pub manifest: Option<String>,
    /// The disks.
    pub disks: Vec<ExportedDisk>,
}

/// One exported disk.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedDisk {
    /// Entry name.
    pub href: String,
    /// Source path.
    pub source: PathBuf,
    /// Source format.
    pub source_format: &'static str,
    /// The entry's format: `qcow2` or `vmdk` (streamOptimized).
    pub format: &'static str,
    /// Virtual size.
    pub capacity: u64,
    /// Size of the entry.
    pub size: u64,
    /// Bytes of guest data in it.
    pub populated_size: u64,
    /// SHA-1 of the entry, hex, when the manifest is in SHA-1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    /// SHA-256 of the entry, hex, when the manifest is in SHA-256 (or the
    /// plan was asked for it, [`ExportPlan::with_sha256`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// SHA-512 of the entry, hex, when the manifest is in SHA-512.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha512: Option<String>,
}

fn manifest_text_len(alg: Algorithm, names: &[&str]) -> u64 {
    let zero = vec![0u8; alg.digest_len()];
    names
        .iter()
        .map(|n| manifest::format_line(alg, n, &zero).len() as u64)
        .sum()
}

impl ExportPlan {
    /// Opens the sources and lays out the archive.
    pub fn prepare(req: ExportRequest) -> Result<ExportPlan> {
        Self::prepare_watched(req, &Progress::new(None))
    }

    /// [`ExportPlan::prepare`], cancelled through `progress`, which also
    /// counts the bytes a VMDK counting pass reads (the entry is
    /// `counting HREF` meanwhile).
    pub fn prepare_watched(req: ExportRequest, progress: &Progress) -> Result<ExportPlan> {
        if req.disks.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, "no disk to export"));
        }
        let mut disks = Vec::with_capacity(req.disks.len());
        for d in &req.disks {
            if d.href.is_empty() || d.href.contains('/') || d.href.contains("..") {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("href '{}' is not a plain file name", d.href),
                ));
            }
            if disks.iter().any(|p: &PlannedDisk| p.href == d.href) {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("href '{}' given twice", d.href),
                ));
            }
            let mut volume = match &d.net {
                Some(url) => SourceVolume::open_net(url),
                None => SourceVolume::open(&d.path, d.format, &req.roots),
            }
            .map_err(|e| e.at_path(&d.path))?;
            let map = volume
                .allocation_map(req.detect_zeros)
                .map_err(|e| e.at_path(&d.path))?;
            progress.check_cancelled()?;
            let layout = match (req.disk_format, req.compress) {
                (DiskFormat::Qcow2, false) => Qcow2Layout::new(&map).map(DiskLayout::Qcow2),
                (DiskFormat::Qcow2, true) => Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "compression applies to VMDK disks; qcow2 disks are written uncompressed",
                )),
                (DiskFormat::Vmdk, false) => {
                    VmdkLayout::stored(&map, &d.href).map(DiskLayout::Vmdk)
                }
                (DiskFormat::Vmdk, true) => {
                    progress.set_entry(&format!("counting {}", d.href));
                    let mut tick = |n: u64| {
                        progress.add_entry_bytes(n);
                        progress.check_cancelled()
                    };
                    VmdkLayout::deflate(&map, &d.href, &mut volume, &mut tick).map(DiskLayout::Vmdk)
                }
            }
            .map_err(|e| e.at_path(&d.path))?;
            disks.push(PlannedDisk {
                href: d.href.clone(),
                path: d.path.clone(),
                capacity: volume.capacity(),
                volume,
                layout,
            });
        }
        let sizes: Vec<(String, u64)> = disks
            .iter()
            .map(|d| (d.href.clone(), d.layout.total_size()))
            .collect();
        let populated: Vec<(String, u64)> = disks
            .iter()
            .map(|d| (d.href.clone(), d.layout.populated()))
            .collect();
        let formats: Vec<(String, &'static str)> = disks
            .iter()
            .map(|d| (d.href.clone(), d.layout.format().format_uri()))
            .collect();
        let ovf_bytes = match &req.ovf {
            OvfSource::Descriptor(xml) => {
                fill_sizes_and_formats(xml, &sizes, &populated, &formats)?
            }
            OvfSource::Generate(vm) => {
                let generated: Vec<GeneratedDisk> = disks
                    .iter()
                    .zip(&populated)
                    .map(|(d, (_, pop))| GeneratedDisk {
                        href: d.href.clone(),
                        size: d.layout.total_size(),
                        capacity: d.capacity,
                        populated_size: *pop,
                        format: d.layout.format().format_uri(),
                    })
                    .collect();
                generate(vm, &generated)?
            }
        };
        // The descriptor we write must be one we would read.
        let env = ovf::parse(&ovf_bytes).map_err(|e| {
            Error::from(e)
                .in_entry(&req.ovf_name)
                .with_message("the completed OVF descriptor does not parse")
        })?;
        for d in &disks {
            if env.file_by_href(&d.href).is_none() {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("the OVF References do not list '{}'", d.href),
                ));
            }
        }
        let manifest_name = req.manifest.map(|_| {
            let stem = req
                .ovf_name
                .strip_suffix(".ovf")
                .unwrap_or(&req.ovf_name)
                .to_owned();
            format!("{stem}.mf")
        });
        let mut plan = vec![EntryPlan {
            name: req.ovf_name.clone(),
            size: ovf_bytes.len() as u64,
        }];
        for d in &disks {
            plan.push(EntryPlan {
                name: d.href.clone(),
                size: d.layout.total_size(),
            });
        }
        if let Some(mf) = &manifest_name {
            let mut names: Vec<&str> = vec![req.ovf_name.as_str()];
            names.extend(disks.iter().map(|d| d.href.as_str()));
            plan.push(EntryPlan {
                name: mf.clone(),
                size: manifest_text_len(req.manifest.unwrap_or(Algorithm::Sha256), &names),
            });
        }
        let archive = archive_layout(&plan, req.align)?;
        Ok(ExportPlan {
            ovf_name: req.ovf_name,
            ovf_bytes,
            disks,
            manifest_name,
            manifest_alg: req.manifest,
            sha256: false,
            archive,
            align: req.align,
            mtime: None,
        })
    }

    /// Stamps every tar entry with this modification time (seconds since
    /// the epoch) instead of the time of writing. With it, two exports of
    /// unchanged sources are byte-identical, so a download can resume.
    pub fn with_mtime(mut self, mtime: u64) -> Self {
        self.mtime = Some(mtime);
        self
    }

    /// Digests every disk with SHA-256 too, whatever the manifest's
    /// algorithm (or without a manifest), so that the summary carries it.
    pub fn with_sha256(mut self) -> Self {
        self.sha256 = true;
        self
    }

    /// Exact size of the OVA in bytes.
    pub fn total_size(&self) -> u64 {
        self.archive.total_size
    }

    /// Writes the OVA into the `.partial` file made for it, fsyncs it and
    /// renames it to its final name; on any failure (or cancellation) the
    /// partial file is removed and no final file appears.
    pub fn write_partial(
        self,
        partial: PartialFile,
        file: File,
        progress: Arc<Progress>,
    ) -> Result<ExportSummary> {
        let at = |e: Error| e.at_path(partial.partial_path());
        let mut w = BufWriter::with_capacity(limits::EXPORT_COPY_CHUNK, file);
        let s = self.write_to(&mut w, progress.clone()).map_err(at)?;
        let file = w
            .into_inner()
            .map_err(|e| at(Error::from(e.into_error()).with_message("writing the OVA")))?;
        file.sync_all()
            .map_err(|e| at(Error::from(e).with_message("fsync of the OVA")))?;
        progress.check_cancelled()?;
        partial.commit()?;
        Ok(s)
    }

    /// Streams the OVA into the object `url` names, as a multipart upload
    /// of parts of `part_size` bytes (else chosen from the package's
    /// size); the object appears only once complete (see
    /// [`crate::s3::upload`]). Returns what was written, with the part
    /// count and size.
    pub fn write_object(
        self,
        url: &crate::s3::S3Url,
        part_size: Option<u64>,
        progress: Arc<Progress>,
    ) -> Result<(ExportSummary, ObjectParts)> {
        let size = crate::s3::upload::part_size(self.total_size(), part_size)?;
        let mut w = crate::s3::upload::ObjectWriter::create(url, size)?;
        let s = self.write_to(&mut w, progress.clone())?;
        progress.check_cancelled()?;
        let count = w.finish()?;
        Ok((
            s,
            ObjectParts {
                target: url.to_string(),
                count,
                size,
            },
        ))
    }

    /// Streams the OVA into `out`; returns what was written. `out` is not
    /// flushed to stable storage here: that is the caller's sink's job.
    pub fn write_to<W: Write>(self, out: W, progress: Arc<Progress>) -> Result<ExportSummary> {
        let counted = Counting {
            inner: out,
            progress: progress.clone(),
            written: 0,
        };
        // The writer inserts the `pad` entries the layout predicted.
        let mut tar = TarWriter::new(counted).with_align(self.align);
        if let Some(t) = self.mtime {
            tar = tar.with_mtime(t);
        }
        let mut lines = String::new();
        let mut summary_disks = Vec::new();
        let mut disks = self.disks.into_iter();
        for entry in &self.archive.entries {
            progress.check_cancelled()?;
            progress.set_entry(&entry.name);
            if entry.is_pad {
                continue;
            }
            if entry.name == self.ovf_name {
                tar.begin_entry(&self.ovf_name, self.ovf_bytes.len() as u64)?;
                tar.write_data(&self.ovf_bytes)?;
                tar.end_entry()?;
                if let Some(alg) = self.manifest_alg {
                    lines.push_str(&manifest::format_line(
                        alg,
                        &self.ovf_name,
                        &crate::ova::digest::digest(alg, &self.ovf_bytes),
                    ));
                }
            } else if Some(&entry.name) == self.manifest_name.as_ref() {
                if lines.len() as u64 != entry.size {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!(
                            "manifest is {} bytes, {} were planned",
                            lines.len(),
                            entry.size
                        ),
                    ));
                }
                tar.begin_entry(&entry.name, entry.size)?;
                tar.write_data(lines.as_bytes())?;
                tar.end_entry()?;
            } else {
                let Some(d) = disks.next() else {
                    return Err(Error::internal("the archive layout lists an unknown entry")
                        .in_entry(&entry.name));
                };
                let mut algs: Vec<Algorithm> = self.manifest_alg.into_iter().collect();
                if self.sha256 && !algs.contains(&Algorithm::Sha256) {
                    algs.push(Algorithm::Sha256);
                }
                let exported = write_disk(&mut tar, d, &algs, &progress)?;
                if let Some(alg) = self.manifest_alg {
                    let hex = match alg {
                        Algorithm::Sha1 => &exported.sha1,
                        Algorithm::Sha256 => &exported.sha256,
                        Algorithm::Sha512 => &exported.sha512,
                    };
                    let Some(hex) = hex else {
                        return Err(
                            Error::internal("a disk digest is missing").in_entry(&exported.href)
                        );
                    };
                    lines.push_str(&format!("{}({})= {hex}\n", alg.name(), exported.href));
                }
                summary_disks.push(exported);
            }
        }
        let counted = tar.finish()?;
        let written = counted.written;
        drop(counted);
        let size = self.archive.total_size;
        if written != size {
            return Err(Error::new(
                ErrorKind::Io,
                format!("wrote {written} bytes but the archive was laid out as {size}"),
            ));
        }
        Ok(ExportSummary {
            size,
            ovf: self.ovf_name,
            manifest: self.manifest_name,
            disks: summary_disks,
        })
    }
}

/// How an export into object storage was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectParts {
    /// The object, `s3://bucket/key`.
    pub target: String,
    /// Parts uploaded.
    pub count: u64,
    /// Bytes in each part but the last.
    pub size: u64,
}

impl ObjectParts {
    /// Adds `target`, `parts` and `part_size` to an export's summary.
    pub fn add_to(&self, summary: &mut serde_json::Value) {
        summary["target"] = self.target.clone().into();
        summary["parts"] = self.count.into();
        summary["part_size"] = self.size.into();
    }
}

/// Hashes a disk's chunks on its own thread, so that the digest of a
/// disk costs no time on the thread that encodes and writes it.
struct HashThread {
    tx: SyncSender<Bytes>,
    thread: JoinHandle<Vec<(Algorithm, Vec<u8>)>>,
}

impl HashThread {
    fn start(algs: &[Algorithm]) -> HashThread {
        let (tx, rx) = sync_channel::<Bytes>(4);
        let algs = algs.to_vec();
        let thread = std::thread::spawn(move || {
            let mut d = MultiDigest::new(&algs);
            while let Ok(chunk) = rx.recv() {
                d.update(&chunk);
            }
            d.finish()
        });
        HashThread { tx, thread }
    }

    fn feed(&self, chunk: Bytes) -> Result<()> {
        self.tx
            .send(chunk)
            .map_err(|_| Error::internal("the digest thread stopped"))
    }

    fn finish(self) -> Result<Vec<(Algorithm, Vec<u8>)>> {
        drop(self.tx);
        self.thread
            .join()
            .map_err(|_| Error::internal("the digest thread panicked"))
    }
}

/// Streams one disk entry through its encoder; returns what was written,
/// with the entry's digests in `algs`.
fn write_disk<W: Write>(
    tar: &mut TarWriter<W>,
    d: PlannedDisk,
    algs: &[Algorithm],
    progress: &Progress,
) -> Result<ExportedDisk> {
    let size = d.layout.total_size();
    let populated = d.layout.populated();
    let format = d.layout.format().name();
    let source_format = d.volume.format().name();
    tar.begin_entry(&d.href, size)?;
    let mut enc = match d.layout {
        DiskLayout::Qcow2(l) => DiskEncoder::Qcow2(Qcow2Encoder::new(l, d.volume)),
        DiskLayout::Vmdk(l) => DiskEncoder::Vmdk(VmdkEncoder::new(l, d.volume)),
    };
    let hasher = (!algs.is_empty()).then(|| HashThread::start(algs));
    let mut buf = BytesMut::new();
    let mut written = 0u64;
    loop {
        progress.check_cancelled()?;
        buf.resize(limits::EXPORT_COPY_CHUNK, 0);
        let n = match enc.read(&mut buf[..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::from(e)
                    .with_message("reading the source volume")
                    .at_path(&d.path));
            }
        };
        match &hasher {
            // The chunk is shared with the digest thread; the next one
            // gets a fresh buffer.
            Some(h) => {
                let chunk = buf.split_to(n).freeze();
                tar.write_data(&chunk)?;
                h.feed(chunk)?;
            }
            // No digest: the one buffer is reused, never re-zeroed.
            None => tar.write_data(&buf[..n])?,
        }
        written += n as u64;
    }
    if written != size {
        return Err(Error::new(
            ErrorKind::Io,
            format!("encoder produced {written} bytes, {size} were announced"),
        )
        .in_entry(&d.href));
    }
    tar.end_entry()?;
    let digests = hasher
        .map(HashThread::finish)
        .transpose()?
        .unwrap_or_default();
    let hex_of = |alg: Algorithm| {
        digests
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, h)| hex::encode(h))
    };
    Ok(ExportedDisk {
        href: d.href,
        source: d.path,
        source_format,
        format,
        capacity: d.capacity,
        size,
        populated_size: populated,
        sha1: hex_of(Algorithm::Sha1),
        sha256: hex_of(Algorithm::Sha256),
        sha512: hex_of(Algorithm::Sha512),
    })
}

/// Counts bytes into the progress record as they are written.
struct Counting<W> {
    inner: W,
    progress: Arc<Progress>,
    /// Bytes written through this writer (the progress record may be
    /// shared by several transfers).
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        self.progress.add_read(n as u64);
        self.progress.add_entry_bytes(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
