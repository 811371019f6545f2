//! What an import reports: the `--json` summary of `ovaio import`, the
//! answer to an `ova-import` upload and a job's `result`.

use std::path::PathBuf;

use serde::Serialize;

/// What an import did, for `--json` and logs. Entry names are the
/// package's: without its top-level directory, when it has one.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    /// Bytes of the package consumed.
    pub bytes_read: u64,
    /// Name of the OVF entry.
    pub ovf: String,
    /// The one top-level directory every entry was under, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// `verified` (every line of every manifest), `absent` or `not verified`.
    pub manifest: &'static str,
    /// Every manifest entry, in package order.
    pub manifests: Vec<String>,
    /// One record per disk written or created, in DiskSection order.
    pub disks: Vec<DiskSummary>,
    /// Entries passed over (known extras, non-disk files).
    pub skipped: Vec<String>,
    /// How the package itself was compressed: `none`, `gzip`, `xz` or
    /// `zstd`. For a compressed package, offsets in errors count the
    /// decompressed tar.
    pub compression: &'static str,
    /// `tar`, or `zip` for a zip archive whose members were the entries.
    pub archive: &'static str,
}

/// One imported disk.
#[derive(Debug, Clone, Serialize)]
pub struct DiskSummary {
    /// Its file's href: the entry name, or for a chunked file the name its
    /// chunks' names extend. Empty (and left out of JSON) for a blank disk.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub href: String,
    /// `ovf:diskId`.
    pub disk_id: String,
    /// The OVF gives the disk no file: it was created empty.
    pub blank: bool,
    /// How many entries the file was stored in, for a chunked file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    /// Format found in the entry: the content decides, whatever the OVF
    /// declares; `blank` for a blank disk.
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
