//! What `inspect` reports: the package, its files and disks, and the
//! verdict of each check.

use serde::Serialize;

use crate::error::Error;
use crate::ova::manifest::ManifestEntry;
use crate::pipeline::digests::LineCheck;

#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// Name of the OVF entry.
    pub ovf: String,
    /// The one top-level directory every entry is under, if any; entry
    /// names here are without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// The virtual system's name, if the OVF gives one.
    pub name: Option<String>,
    /// OVF References.
    pub files: Vec<FileInfo>,
    /// OVF DiskSection.
    pub disks: Vec<DiskInfo>,
    /// The first manifest, if any.
    pub manifest: Option<ManifestInfo>,
    /// How the package itself is compressed: `none`, `gzip`, `xz` or
    /// `zstd`; entry offsets then count the decompressed tar.
    pub compression: &'static str,
    /// `tar`, or `zip` for a zip archive whose members are the entries.
    pub archive: &'static str,
    /// Every manifest, in package order.
    pub manifests: Vec<ManifestInfo>,
    /// Every regular tar entry (or zip member), in package order.
    pub entries: Vec<EntryInfo>,
    /// What was checked, and the verdict.
    pub verification: Verification,
    /// The manifest lines that prove the package differs from a manifest,
    /// each with its manifest's entry name: what
    /// [`InspectReport::integrity_error`] reports.
    #[serde(skip)]
    pub(super) failures: Vec<(String, ManifestEntry, LineCheck)>,
}

impl InspectReport {
    /// The error owed once the report is out: an integrity error naming
    /// the first manifest line whose entry has another digest, or that
    /// names no entry of the package, in the words import uses. `None`
    /// when no line fails (lines that could not be checked do not).
    pub fn integrity_error(&self) -> Option<Error> {
        let (manifest, line, check) = self.failures.first()?;
        check.error(line, manifest)
    }
}

/// What `inspect` checked, and how it came out.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// `full`, or `quick` (headers only: nothing was checked).
    pub mode: &'static str,
    /// The manifest against the entries' digests.
    pub manifest: ManifestCheck,
    /// Each disk of the DiskSection that has a file, in OVF order.
    pub disks: Vec<DiskCheck>,
}

/// Every manifest against the entries' digests.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestCheck {
    /// `verified` (every line of every manifest), `failed` (an entry's
    /// digest differs, or a line names no entry), `incomplete` (some lines
    /// could not be checked, none failed), `absent` (no manifest) or `not
    /// verified` (`--quick`).
    pub status: &'static str,
    /// Lines whose digest matched.
    pub verified: usize,
    /// One record per manifest line, manifests in package order and each
    /// in its own order; empty when not verified.
    pub lines: Vec<LineReport>,
}

/// One manifest line and what the package says about it.
#[derive(Debug, Clone, Serialize)]
pub struct LineReport {
    /// The manifest entry the line is in.
    pub manifest: String,
    /// The entry it names.
    pub name: String,
    /// `SHA1`, `SHA256` or `SHA512`.
    pub algorithm: &'static str,
    /// `verified`, `mismatch`, `missing` (no such entry in the package) or
    /// `not checked` (the algorithm was not computed for the entry: a
    /// digest thread could not run).
    pub status: &'static str,
    /// The digest the manifest gives, in hex.
    pub expected: String,
    /// The content's digest in hex, when computed.
    pub actual: Option<String>,
}

/// One disk's content against the OVF's declarations.
#[derive(Debug, Clone, Serialize)]
pub struct DiskCheck {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// The href of its file.
    pub href: String,
    /// `ok`, `mismatch` (the declarations differ from the content, which
    /// import goes by), `unsupported` (content import refuses, exit 6),
    /// `unreadable` (gzip data that does not inflate), `missing` (no entry
    /// of that name) or `not checked` (`--quick`).
    pub status: &'static str,
    /// What the content is, inside any compression (`raw`, `qcow2`,
    /// `vmdk`, `vhd`, ...); `None` when not probed.
    pub content_format: Option<&'static str>,
    /// `gzip` or `none`, as found; `None` when not probed.
    pub compression: Option<&'static str>,
    /// One sentence per difference or problem found.
    pub findings: Vec<String>,
}

/// One OVF File reference.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`.
    pub href: String,
    /// `ovf:size` (of the whole file, for a chunked one).
    pub size: Option<u64>,
    /// `none` or `gzip`.
    pub compression: &'static str,
    /// `ovf:chunkSize`: the file is stored in entries `href.000000000`,
    /// `href.000000001`, ... of this many bytes each (the last one fewer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
}

/// One OVF Disk.
#[derive(Debug, Clone, Serialize)]
pub struct DiskInfo {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// The href of its file; `None` for a blank disk.
    pub href: Option<String>,
    /// The OVF gives the disk no file: import creates it empty.
    pub blank: bool,
    /// Capacity in bytes.
    pub capacity: u64,
    /// `ovf:format`.
    pub format_uri: Option<String>,
    /// The format `ovf:format` names (`vmdk (streamOptimized)`, `qcow2`,
    /// ...), or the URI itself when it names none ovaio knows.
    pub declared_format: Option<String>,
    /// `ovf:populatedSize`.
    pub populated_size: Option<u64>,
    /// Format recognised from the entry's content (a chunked file's
    /// first chunk) by the probe import decides with; the content wins
    /// over `declared_format`.
    pub detected_format: Option<&'static str>,
}

/// The manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestInfo {
    /// Entry name.
    pub name: String,
    /// Digest algorithm(s) used.
    pub algorithm: String,
    /// How many files it lists.
    pub entries: usize,
}

/// One tar entry.
#[derive(Debug, Clone, Serialize)]
pub struct EntryInfo {
    /// Entry name.
    pub name: String,
    /// Content size.
    pub size: u64,
    /// Offset of the content in the package (in the decompressed tar of a
    /// compressed package; of the compressed data of a deflated zip
    /// member).
    pub offset: u64,
}
