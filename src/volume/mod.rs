//! Volumes: the bytes of one virtual disk at guest offsets, whatever file
//! format holds them. The image data API, the export sources and the
//! import sinks stand on this layer, so that the rules of each format —
//! holes, `O_DIRECT` and `SEEK_DATA` for raw files; clusters, L2 tables
//! and refcounts for qcow2 — are written once.
//!
//! ```text
//! image tickets (ranged GET/PUT/PATCH) ─┐
//! export sources (allocation map)      ─┼─► Volume ─┬─ raw::RawFile    (pread/pwrite, O_DIRECT, punch, SEEK_DATA)
//! import sinks (extent streams)        ─┘           ├─ qcow2::Qcow2File (guest view, allocating writes, zero clusters)
//!                                                   ├─ nbd::NbdVolume   (an NBD export: qemu-nbd on an oVirt host)
//!                                                   └─ imageio::ImageioVolume (an image transfer on another host)
//! ```
//!
//! A volume's abilities are small traits — [`Size`], [`ReadAt`],
//! [`WriteAt`], [`Zero`], [`Flush`], [`Extents`] — and [`Volume`] is the
//! closed set of backends behind all of them. Every method takes `&self`:
//! one open volume serves concurrent requests, and [`Registry`] makes the
//! data API share one per file, which a qcow2 image needs (two writers
//! with their own metadata caches would allocate the same clusters).
//!
//! Volumes are opened beneath the storage roots ([`open`]): the path is
//! resolved at the moment of the open with no symbolic link followed, and
//! every backing file a qcow2 image names must lie under a root too. NBD
//! and remote volumes are no files: they are opened by URL ([`open_net`]),
//! which only the control API (a ticket, a job) or the command line can
//! name.

pub mod direct;
pub mod imageio;
pub mod nbd;
pub mod net;
pub mod qcow2;
pub mod raw;
mod registry;
mod stream;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};

pub use net::NetUrl;
pub use registry::Registry;
use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};
pub use stream::StreamWriter;

use crate::error::{Classify, Error, ErrorKind, Result};
use crate::roots::AllowedRoots;

/// One cluster of zeros: the bounded source of zeroing writes.
pub(crate) static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The file format of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Guest bytes as they are.
    Raw,
    /// qcow2, possibly with a backing chain.
    Qcow2,
}

impl Format {
    /// The name used on the command line, in tickets and in summaries.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// Parses `raw` or `qcow2`.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Tells qcow2 from raw by the first four bytes (`QFI\xfb`).
///
/// Only for volumes whose format nobody stated: a raw volume may hold
/// anything, a qcow2 header written by its guest included, so a stated
/// `raw` is never second-guessed.
pub fn probe(file: &File, path: &Path) -> Result<Format> {
    Ok(if qcow2::has_qcow2_magic(file, path)? {
        Format::Qcow2
    } else {
        Format::Raw
    })
}

/// How the guest bytes of one range are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentKind {
    /// Allocated data (which may still read as zeros).
    Data,
    /// Reads as zeros and says so: a qcow2 zero cluster.
    Zero,
    /// Nothing is stored (a hole in a raw file, a cluster unallocated
    /// through the whole backing chain): reads as zeros.
    Hole,
}

impl ExtentKind {
    /// Whether the range reads as zeros whatever the file holds.
    pub fn reads_zero(self) -> bool {
        self != ExtentKind::Data
    }
}

/// One range of a volume's allocation map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Guest offset.
    pub start: u64,
    /// Length in bytes (> 0).
    pub len: u64,
    /// How it is stored.
    pub kind: ExtentKind,
}

impl Extent {
    /// The guest offset after the extent.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Appends `[start, start+len)` of `kind` to `list`, merged with the last
/// extent when that one is of the same kind and ends at `start`.
pub(crate) fn push_extent(list: &mut Vec<Extent>, start: u64, len: u64, kind: ExtentKind) {
    if len == 0 {
        return;
    }
    if let Some(last) = list.last_mut()
        && last.kind == kind
        && last.end() == start
    {
        last.len += len;
        return;
    }
    list.push(Extent { start, len, kind });
}

/// The virtual size of a volume.
pub trait Size {
    /// Guest bytes, fixed while the volume is open.
    fn size(&self) -> u64;
}

/// Guest reads.
pub trait ReadAt: Size {
    /// Fills `buf` with the guest bytes at `offset` (zeros where nothing
    /// is stored). The range must lie inside the volume.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// Guest writes.
pub trait WriteAt: Size {
    /// Writes `data` at guest `offset`; the range must lie inside the
    /// volume. Durable only after [`Flush::flush`].
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()>;
}

/// Zeroing without sending zeros.
pub trait Zero: Size {
    /// Makes `[offset, offset+len)` read as zeros. With `punch` the
    /// storage may be given back (a hole, an unallocated or zero cluster);
    /// without it, what is allocated stays allocated.
    fn zero(&self, offset: u64, len: u64, punch: bool) -> Result<()>;
}

/// Durability.
pub trait Flush {
    /// Writes every cached change and syncs it to stable storage.
    fn flush(&self) -> Result<()>;
}

/// The allocation map.
pub trait Extents: Size {
    /// The extents covering `[offset, offset+len)` in order, without gaps,
    /// adjacent ones of a kind merged.
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>>;
}

/// Errors particular to volumes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// A backing chain returns to an image already in it.
    #[error("backing chain loop: {} names {}, which is already in the chain", path.display(), backing.display())]
    BackingLoop {
        /// The image naming the backing file.
        path: PathBuf,
        /// The backing file it names.
        backing: PathBuf,
    },
    /// A backing chain is longer than `MAX_BACKING_CHAIN`.
    #[error("backing chain of {} is longer than {max} images", path.display())]
    ChainTooLong {
        /// The top image.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// An image needs an external data file.
    #[error("{} uses an external data file, which is not supported", path.display())]
    ExternalDataFile {
        /// The image.
        path: PathBuf,
    },
    /// An encrypted qcow2 image.
    #[error("{} is encrypted, which is not supported", path.display())]
    Encrypted {
        /// The image.
        path: PathBuf,
    },
    /// A qcow2 image whose compressed clusters are zstd.
    #[error("{} uses zstd compression, which the volume reader does not support", path.display())]
    ZstdCompressed {
        /// The image.
        path: PathBuf,
    },
    /// A backing format other than qcow2 or raw.
    #[error("{} names a backing file of format '{format}', which is not supported", path.display())]
    UnknownBackingFormat {
        /// The image naming it.
        path: PathBuf,
        /// The format string from its header.
        format: String,
    },
    /// A backing file name that is not a plain path (`json:`, a URL).
    #[error("{} names backing file '{name}', which is not a local path", path.display())]
    BackingNotAFile {
        /// The image naming it.
        path: PathBuf,
        /// The name from its header.
        name: String,
    },
    /// SEEK_DATA/SEEK_HOLE answered inconsistently (the file changed).
    #[error("{}: SEEK_DATA/SEEK_HOLE inconsistent at byte {offset}", path.display())]
    SeekInconsistent {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
    },
    /// An access beyond the virtual size.
    #[error("{op} of {len} bytes at {offset} lies beyond the capacity of {capacity} bytes")]
    OutOfBounds {
        /// `read`, `write`, `zero`, `extents`.
        op: &'static str,
        /// Guest offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The volume's capacity.
        capacity: u64,
    },
    /// The volume was stated to be qcow2 but its file is not.
    #[error("{} was named as a qcow2 image but has no qcow2 header", path.display())]
    NotQcow2 {
        /// The file.
        path: PathBuf,
    },
    /// Probed, not stated, as qcow2 with a backing file, under storage
    /// roots: a raw volume's guest can write such a header naming any
    /// other volume, so the chain is followed only when the format is
    /// stated.
    #[error(
        "{} is a qcow2 image with a backing file, and its format was probed, not stated: name the format qcow2 to have its backing chain followed (a raw volume's guest can write such a header)",
        path.display()
    )]
    ProbedBacking {
        /// The file.
        path: PathBuf,
    },
    /// A qcow2 volume was to be created; only raw ones are.
    #[error("{} does not exist; a qcow2 volume must be created before it is served", path.display())]
    Qcow2Missing {
        /// The file.
        path: PathBuf,
    },
    /// A write to a volume opened for reading.
    #[error("{} is open for reading only", path.display())]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
}

impl Classify for VolumeError {
    fn kind(&self) -> ErrorKind {
        match self {
            VolumeError::OutOfBounds { .. } | VolumeError::ReadOnly { .. } => {
                ErrorKind::InvalidArgument
            }
            VolumeError::BackingLoop { .. } | VolumeError::SeekInconsistent { .. } => {
                ErrorKind::CorruptImage
            }
            VolumeError::ChainTooLong { .. } => ErrorKind::LimitExceeded,
            VolumeError::NotQcow2 { .. } | VolumeError::ProbedBacking { .. } => {
                ErrorKind::InvalidFormat
            }
            VolumeError::Qcow2Missing { .. } => ErrorKind::NotFound,
            VolumeError::ExternalDataFile { .. }
            | VolumeError::Encrypted { .. }
            | VolumeError::ZstdCompressed { .. }
            | VolumeError::UnknownBackingFormat { .. }
            | VolumeError::BackingNotAFile { .. } => ErrorKind::Unsupported,
        }
    }
}

/// Fails unless `[offset, offset+len)` lies inside `[0, capacity)`.
pub(crate) fn check_bounds(
    op: &'static str,
    offset: u64,
    len: u64,
    capacity: u64,
) -> Result<(), VolumeError> {
    match offset.checked_add(len) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(VolumeError::OutOfBounds {
            op,
            offset,
            len,
            capacity,
        }),
    }
}

/// How to open a volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// The format; `None` probes the header ([`probe`]). A stated `qcow2`
    /// must find a qcow2 header.
    pub format: Option<Format>,
    /// Open for writing as well as reading.
    pub write: bool,
    /// With `write`: a raw volume that does not exist yet is created
    /// (never through an existing name) and sized to this many bytes.
    pub create: Option<u64>,
}

/// An open volume: one of the backends.
#[derive(Debug)]
pub enum Volume {
    /// A raw file or block device.
    Raw(raw::RawFile),
    /// A qcow2 image, seen as its guest sees it.
    Qcow2(qcow2::Qcow2File),
    /// An NBD export: guest bytes, whatever image the server reads.
    Nbd(nbd::NbdVolume),
    /// An image transfer on another host: guest bytes, through its data
    /// API.
    Imageio(imageio::ImageioVolume),
}

/// Connects to the volume at `url`, for writing when `write`.
pub fn open_net(url: &NetUrl, write: bool) -> Result<Volume> {
    Ok(match url {
        NetUrl::Nbd(u) => Volume::Nbd(nbd::NbdVolume::connect(u, write)?),
        NetUrl::Imageio(u) => Volume::Imageio(imageio::ImageioVolume::connect(u, write)?),
    })
}

/// Opens the volume at `path` beneath its storage root. Under roots,
/// `path` must be the canonical form [`AllowedRoots::check`] gave; it is
/// resolved again at the open with no symbolic link followed.
pub fn open(roots: &AllowedRoots, path: &Path, opts: &OpenOptions) -> Result<Volume> {
    let file = open_file(roots, path, opts)?;
    Volume::from_file(file, path, path, opts, roots)
}

/// Opens the file of a volume; see [`open`].
pub(crate) fn open_file(roots: &AllowedRoots, path: &Path, opts: &OpenOptions) -> Result<File> {
    if !opts.write {
        return roots.open(path, OFlags::RDONLY, 0);
    }
    match roots.open(path, OFlags::RDWR, 0) {
        Err(e) if e.kind() == ErrorKind::NotFound && opts.format == Some(Format::Qcow2) => {
            Err(VolumeError::Qcow2Missing {
                path: path.to_path_buf(),
            }
            .into())
        }
        Err(e) if e.kind() == ErrorKind::NotFound && opts.create.is_some() => {
            let f = roots.open(path, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL, 0o660)?;
            if let Some(s) = opts.create {
                f.set_len(s).map_err(|e| Error::from(e).at_path(path))?;
            }
            Ok(f)
        }
        r => r,
    }
}

impl Volume {
    /// The volume in `file`, opened at `canonical` (its canonical path,
    /// the start of a backing chain's loop check) and named `path` in
    /// messages. A qcow2 image's backing files are opened beneath `roots`.
    pub fn from_file(
        file: File,
        canonical: &Path,
        path: &Path,
        opts: &OpenOptions,
        roots: &AllowedRoots,
    ) -> Result<Volume> {
        let format = match opts.format {
            Some(Format::Qcow2) => {
                if !qcow2::has_qcow2_magic(&file, path)? {
                    return Err(VolumeError::NotQcow2 {
                        path: path.to_path_buf(),
                    }
                    .into());
                }
                Format::Qcow2
            }
            Some(Format::Raw) => Format::Raw,
            None => {
                let found = probe(&file, path)?;
                if found == Format::Qcow2
                    && roots.paths().next().is_some()
                    && qcow2::names_backing_file(&file, path)?
                {
                    return Err(VolumeError::ProbedBacking {
                        path: path.to_path_buf(),
                    }
                    .into());
                }
                found
            }
        };
        Ok(match format {
            Format::Raw => Volume::Raw(raw::RawFile::new(file, path, opts.write)?),
            Format::Qcow2 => Volume::Qcow2(qcow2::Qcow2File::open(
                file,
                canonical.to_path_buf(),
                path,
                roots,
                opts.write,
            )?),
        })
    }

    /// The volume's format: an NBD export presents raw guest bytes.
    pub fn format(&self) -> Format {
        match self {
            Volume::Raw(_) | Volume::Nbd(_) | Volume::Imageio(_) => Format::Raw,
            Volume::Qcow2(_) => Format::Qcow2,
        }
    }

    /// The path the volume was opened by (an NBD volume's URL), for
    /// messages.
    pub fn path(&self) -> &Path {
        match self {
            Volume::Raw(v) => v.path(),
            Volume::Qcow2(v) => v.path(),
            Volume::Nbd(v) => v.path(),
            Volume::Imageio(v) => v.path(),
        }
    }

    /// A writer of consecutive bytes from `offset` on, through a buffer of
    /// about `buffer` bytes: whole blocks with `O_DIRECT` on a raw file,
    /// whole clusters on a qcow2 image.
    pub fn stream_writer(&self, offset: u64, buffer: usize) -> Result<StreamWriter<'_>> {
        StreamWriter::new(self, offset, buffer)
    }
}

impl Size for Volume {
    fn size(&self) -> u64 {
        match self {
            Volume::Raw(v) => v.size(),
            Volume::Qcow2(v) => v.size(),
            Volume::Nbd(v) => v.size(),
            Volume::Imageio(v) => v.size(),
        }
    }
}

impl ReadAt for Volume {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match self {
            Volume::Raw(v) => v.read_at(offset, buf),
            Volume::Qcow2(v) => v.read_at(offset, buf),
            Volume::Nbd(v) => v.read_at(offset, buf),
            Volume::Imageio(v) => v.read_at(offset, buf),
        }
    }
}

impl WriteAt for Volume {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        match self {
            Volume::Raw(v) => v.write_at(offset, data),
            Volume::Qcow2(v) => v.write_at(offset, data),
            Volume::Nbd(v) => v.write_at(offset, data),
            Volume::Imageio(v) => v.write_at(offset, data),
        }
    }
}

impl Zero for Volume {
    fn zero(&self, offset: u64, len: u64, punch: bool) -> Result<()> {
        match self {
            Volume::Raw(v) => v.zero(offset, len, punch),
            Volume::Qcow2(v) => v.zero(offset, len, punch),
            Volume::Nbd(v) => v.zero(offset, len, punch),
            Volume::Imageio(v) => v.zero(offset, len, punch),
        }
    }
}

impl Flush for Volume {
    fn flush(&self) -> Result<()> {
        match self {
            Volume::Raw(v) => v.flush(),
            Volume::Qcow2(v) => v.flush(),
            Volume::Nbd(v) => v.flush(),
            Volume::Imageio(v) => v.flush(),
        }
    }
}

impl Extents for Volume {
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        match self {
            Volume::Raw(v) => v.extents(offset, len),
            Volume::Qcow2(v) => v.extents(offset, len),
            Volume::Nbd(v) => v.extents(offset, len),
            Volume::Imageio(v) => v.extents(offset, len),
        }
    }
}

/// An I/O error on `path` with a one-level message.
pub(crate) fn io_at(e: std::io::Error, path: &Path, what: &str) -> Error {
    Error::from(e).at_path(path).with_message(what)
}

/// An error from imago on `path`, classified by its io kind.
pub(crate) fn imago_err(e: std::io::Error, path: &Path, what: &str) -> Error {
    let kind = match e.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
            ErrorKind::CorruptImage
        }
        std::io::ErrorKind::Unsupported => ErrorKind::Unsupported,
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorKind::InvalidArgument,
        _ => ErrorKind::Io,
    };
    Error::wrap(kind, e).at_path(path).with_message(what)
}
