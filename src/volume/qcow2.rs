//! qcow2 volumes through `imago`, seen as the guest sees them: reads,
//! the allocation map and writes go through the whole backing chain (a
//! write allocates in the top image; a partial cluster is completed from
//! the layers below).
//!
//! imago's driver does what a qcow2 writer must: clusters are allocated at
//! the end of the file with their refcounts raised before any L2 entry
//! points at them (its metadata caches write the refcount blocks before
//! the L2 tables that depend on them, and L2 tables before refcounts that
//! drop), zero clusters use the v3 zero flag, a write to a compressed
//! cluster reallocates it, and unknown autoclear features are cleared when
//! an image is opened for writing. A process that dies between two flushes
//! leaves at worst leaked clusters; the oracle tests hold it to that with
//! `qemu-img check`.
//!
//! imago is never allowed to open a file by itself (each layer is opened
//! with `open_image`, which follows no reference). The chain is walked
//! here instead: each backing file name is resolved like qemu does
//! (relative to the directory of the image naming it), checked against the
//! [`AllowedRoots`], opened read-only, and attached with `set_backing` from
//! the bottom up. External data files are refused.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatAccess, Mapping};

use super::{
    Extent, ExtentKind, Extents, Flush, Format, ReadAt, Size, VolumeError, WriteAt, ZEROS, Zero,
    check_bounds, imago_err, io_at, push_extent, raw,
};
use crate::codec::map::{AllocationMap, RangeKind};
use crate::codec::qcow2::header::{
    INCOMPAT_COMPRESSION, MAGIC, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, V3_MIN_HEADER_LEN, field,
};
use crate::error::{Error, ErrorKind, Result};
use crate::limits::MAX_BACKING_CHAIN;
use crate::roots::AllowedRoots;

/// A raw file at the bottom of a backing chain, kept so that the map can
/// tell its holes from its data (imago reports a raw layer as all data).
#[derive(Debug)]
struct RawBase {
    /// Address of the imago storage object inside the chain, to recognise
    /// mappings that resolve to this file.
    storage_addr: usize,
    /// The file's own data ranges (host offset == guest offset of the base).
    map: AllocationMap,
}

/// An open qcow2 image with its backing chain attached.
///
/// Reads, writes and zeroing that keeps the allocation share the image
/// (imago serializes what must be); zeroing that gives clusters back takes
/// it alone, since it can move mappings that a concurrent write holds.
#[derive(Debug)]
pub struct Qcow2File {
    top: RwLock<FormatAccess<ImagoFile>>,
    raw_base: Option<RawBase>,
    path: PathBuf,
    size: u64,
    cluster_size: u64,
    /// A v3 image: it has zero clusters (a v2 one gets zeros written).
    zero_clusters: bool,
    writable: bool,
}

/// One opened layer before the chain is assembled.
struct Layer {
    image: Qcow2<ImagoFile>,
}

impl Qcow2File {
    /// Opens the image in `file` (already opened beneath `roots`, for
    /// writing when `writable`; `canonical` is its canonical path, `path`
    /// the name the caller gave) and its backing chain, read-only.
    pub fn open(
        file: File,
        canonical: PathBuf,
        path: &Path,
        roots: &AllowedRoots,
        writable: bool,
    ) -> Result<Self> {
        let mut seen = vec![canonical];
        let mut layers: Vec<Layer> = Vec::new();
        let mut cur_file = file;
        let mut cur_path = path.to_path_buf();
        let mut cur_format = Format::Qcow2;
        let mut base: Option<FormatAccess<ImagoFile>> = None;
        let mut raw_base = None;
        let mut cluster_size = 0;
        let mut version = 0;

        loop {
            match cur_format {
                Format::Raw => {
                    let seek_file = cur_file
                        .try_clone()
                        .map_err(|e| io_at(e, &cur_path, "cannot duplicate descriptor"))?;
                    let storage = ImagoFile::try_from(cur_file)
                        .map_err(|e| imago_err(e, &cur_path, "cannot open raw backing file"))?;
                    let raw = Raw::open_image(storage, false)
                        .map_err(|e| imago_err(e, &cur_path, "cannot open raw backing file"))?;
                    let access = FormatAccess::new(raw);
                    let capacity = access.size();
                    let map = raw::data_ranges(&seek_file, capacity, &cur_path)?;
                    let storage_addr = access
                        .inner()
                        .collect_storage_dependencies()
                        .first()
                        .map(|s| std::ptr::from_ref::<ImagoFile>(s) as usize);
                    if let Some(storage_addr) = storage_addr {
                        raw_base = Some(RawBase { storage_addr, map });
                    }
                    base = Some(access);
                    break;
                }
                Format::Qcow2 => {
                    let (bits, v) = precheck(&cur_file, &cur_path)?;
                    let top = layers.is_empty();
                    if top {
                        cluster_size = 1u64 << bits;
                        version = v;
                    }
                    let storage = ImagoFile::try_from(cur_file)
                        .map_err(|e| imago_err(e, &cur_path, "cannot open qcow2 image"))?;
                    let image = Qcow2::<ImagoFile>::open_image(storage, top && writable)
                        .map_err(|e| imago_err(e, &cur_path, "cannot open qcow2 image"))?;
                    if image.requires_external_data_file() {
                        return Err(VolumeError::ExternalDataFile { path: cur_path }.into());
                    }
                    let backing = image.implicit_backing_file().cloned();
                    let backing_format = image.implicit_backing_format().cloned();
                    layers.push(Layer { image });
                    let Some(name) = backing else {
                        break;
                    };
                    if layers.len() >= MAX_BACKING_CHAIN {
                        return Err(VolumeError::ChainTooLong {
                            path: path.to_path_buf(),
                            max: MAX_BACKING_CHAIN,
                        }
                        .into());
                    }
                    let next = resolve_backing(&cur_path, &name)?;
                    let canon = roots
                        .check(&next)
                        .map_err(|e| backing_err(e, &next, &cur_path))?;
                    if seen.contains(&canon) {
                        return Err(VolumeError::BackingLoop {
                            path: cur_path,
                            backing: next,
                        }
                        .into());
                    }
                    let (file, canon) = roots
                        .open_checked(&next)
                        .map_err(|e| backing_err(e, &next, &cur_path))?;
                    seen.push(canon);
                    cur_format = match backing_format.as_deref() {
                        Some("qcow2") => Format::Qcow2,
                        Some("raw") | Some("file") => Format::Raw,
                        Some(other) => {
                            return Err(VolumeError::UnknownBackingFormat {
                                path: cur_path,
                                format: other.to_owned(),
                            }
                            .into());
                        }
                        None => super::probe(&file, &next)?,
                    };
                    cur_file = file;
                    cur_path = next;
                }
            }
        }

        // Attach from the bottom up; no layer opens anything on its own.
        let mut below = base;
        for Layer { mut image } in layers.into_iter().rev() {
            image.set_data_file(None);
            image.set_backing(below.take());
            below = Some(FormatAccess::new(image));
        }
        let top = below.ok_or_else(|| {
            Error::new(ErrorKind::InvalidArgument, "no qcow2 layer opened").at_path(path)
        })?;
        Ok(Qcow2File {
            size: top.size(),
            top: RwLock::new(top),
            raw_base,
            path: path.to_path_buf(),
            cluster_size,
            zero_clusters: version >= 3,
            writable,
        })
    }

    /// The path the image was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The top image's cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    fn shared(&self) -> RwLockReadGuard<'_, FormatAccess<ImagoFile>> {
        self.top.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn exclusive(&self) -> RwLockWriteGuard<'_, FormatAccess<ImagoFile>> {
        self.top.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails unless the image was opened for writing.
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(VolumeError::ReadOnly {
                path: self.path.clone(),
            }
            .into())
        }
    }

    /// Zeroing without zero clusters: zeros written where anything but
    /// zeros reads now.
    fn write_zeros(&self, offset: u64, len: u64) -> Result<()> {
        for e in self.extents(offset, len)? {
            if e.kind.reads_zero() {
                continue;
            }
            let mut pos = e.start;
            while pos < e.end() {
                let n = (e.end() - pos).min(ZEROS.len() as u64);
                self.write_at(pos, &ZEROS[..n as usize])?;
                pos += n;
            }
        }
        Ok(())
    }

    /// The guest view's map for an export: data from any layer (compressed
    /// clusters included) is `Data`; zero clusters of the top image are
    /// `Zero`; ranges unallocated through the whole chain (and zero
    /// clusters of lower layers) are left out, and so are the holes of a
    /// raw base.
    pub(crate) fn allocation_map(&self) -> Result<AllocationMap> {
        let mut map = AllocationMap::new(self.size);
        for e in self.extents(0, self.size)? {
            match e.kind {
                ExtentKind::Data => map.push(e.start, e.len, RangeKind::Data)?,
                ExtentKind::Zero => map.push(e.start, e.len, RangeKind::Zero)?,
                ExtentKind::Hole => {}
            }
        }
        Ok(map)
    }
}

impl Size for Qcow2File {
    fn size(&self) -> u64 {
        self.size
    }
}

impl ReadAt for Qcow2File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_bounds("read", offset, buf.len() as u64, self.size)?;
        self.shared().read(&mut *buf, offset).map_err(|e| {
            imago_err(
                e,
                &self.path,
                &format!("read at guest offset {offset} failed"),
            )
        })
    }
}

impl WriteAt for Qcow2File {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_writable()?;
        check_bounds("write", offset, data.len() as u64, self.size)?;
        self.shared().write(data, offset).map_err(|e| {
            imago_err(
                e,
                &self.path,
                &format!(
                    "write of {} bytes at guest offset {offset} failed",
                    data.len()
                ),
            )
        })
    }
}

impl Zero for Qcow2File {
    /// Whole clusters become zero clusters (v3): given back with `punch`,
    /// kept allocated without it; the partial clusters at either end, and
    /// every cluster of a v2 image, get zeros written.
    fn zero(&self, offset: u64, len: u64, punch: bool) -> Result<()> {
        self.check_writable()?;
        check_bounds("zero", offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        if !self.zero_clusters {
            return self.write_zeros(offset, len);
        }
        let r = if punch {
            self.exclusive().discard_to_zero(offset, len)
        } else {
            self.shared().write_zeroes(offset, len)
        };
        r.map_err(|e| {
            imago_err(
                e,
                &self.path,
                &format!("zeroing {len} bytes at guest offset {offset} failed"),
            )
        })
    }
}

impl Flush for Qcow2File {
    fn flush(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        let top = self.shared();
        top.flush()
            .and_then(|()| top.sync())
            .map_err(|e| imago_err(e, &self.path, "flush failed"))
    }
}

impl Extents for Qcow2File {
    /// Data from any layer (compressed clusters included) is `Data`; zero
    /// clusters of the top image are `Zero`; what is unallocated through
    /// the whole chain, zero clusters of lower layers and the holes of a
    /// raw base are `Hole`.
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_bounds("extents", offset, len, self.size)?;
        let end = offset + len;
        let top = self.shared();
        let mut out = Vec::new();
        let mut off = offset;
        while off < end {
            let (mapping, n) = top.get_mapping(off, end - off).map_err(|e| {
                imago_err(
                    e,
                    &self.path,
                    &format!("mapping query at guest offset {off} failed"),
                )
            })?;
            let n = n.min(end - off);
            match mapping {
                Mapping::Eof { .. } => break,
                _ if n == 0 => {
                    return Err(Error::new(
                        ErrorKind::CorruptImage,
                        format!("empty mapping at guest offset {off}"),
                    )
                    .at_path(&self.path));
                }
                Mapping::Raw {
                    storage,
                    offset: host,
                    ..
                } => {
                    let addr = std::ptr::from_ref::<ImagoFile>(storage) as usize;
                    match &self.raw_base {
                        Some(b) if b.storage_addr == addr => {
                            push_raw_base(&mut out, &b.map, off, host, n);
                        }
                        _ => push_extent(&mut out, off, n, ExtentKind::Data),
                    }
                }
                Mapping::Special { .. } => push_extent(&mut out, off, n, ExtentKind::Data),
                Mapping::Zero { explicit: true, .. } => {
                    push_extent(&mut out, off, n, ExtentKind::Zero);
                }
                Mapping::Zero { .. } => push_extent(&mut out, off, n, ExtentKind::Hole),
                // `Mapping` is non-exhaustive: anything new is read as data.
                _ => push_extent(&mut out, off, n, ExtentKind::Data),
            }
            off += n;
        }
        // A chain shorter than the top image reads as zeros past its end.
        push_extent(&mut out, off, end - off, ExtentKind::Hole);
        Ok(out)
    }
}

/// Pushes guest `[guest, guest+len)`, mapped to host `[host, host+len)` of
/// the raw base: data where the base holds data, holes where it has holes.
fn push_raw_base(out: &mut Vec<Extent>, base: &AllocationMap, guest: u64, host: u64, len: u64) {
    let end = host.saturating_add(len);
    let ranges = base.ranges();
    let first = ranges.partition_point(|r| r.offset + r.len <= host);
    let mut pos = host;
    for r in &ranges[first..] {
        if r.offset >= end {
            break;
        }
        let s = r.offset.max(host);
        let e = (r.offset + r.len).min(end);
        if e > s {
            push_extent(out, guest + (pos - host), s - pos, ExtentKind::Hole);
            push_extent(out, guest + (s - host), e - s, ExtentKind::Data);
            pos = e;
        }
    }
    push_extent(out, guest + (pos - host), end - pos, ExtentKind::Hole);
}

/// Names the backing file and the image naming it in an error.
fn backing_err(e: Error, backing: &Path, image: &Path) -> Error {
    e.at_path(backing)
        .with_message(format!("backing file named by {}", image.display()))
}

/// Resolves a backing file name as qemu does: relative names are relative
/// to the directory of the image that names them. Protocol and `json:`
/// names are refused.
fn resolve_backing(image: &Path, name: &str) -> Result<PathBuf> {
    if name.starts_with("json:") || name.contains("://") || name.is_empty() {
        return Err(VolumeError::BackingNotAFile {
            path: image.to_path_buf(),
            name: name.to_owned(),
        }
        .into());
    }
    let p = Path::new(name);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let dir = image.parent().unwrap_or(Path::new(""));
    Ok(dir.join(p))
}

/// Refuses, by name, what imago 0.2 cannot read: encrypted images and
/// zstd-compressed clusters (imago only decodes zlib). Returns the
/// image's `cluster_bits` (imago checks them again) and version.
fn precheck(file: &File, path: &Path) -> Result<(u32, u32)> {
    // Bytes past the end of a short file stay zero: no feature is seen.
    let mut h = [0u8; V3_MIN_HEADER_LEN as usize];
    read_prefix(file, &mut h, path)?;
    let be32 = |o: u64| {
        let o = o as usize;
        h.get(o..o + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
    };
    if be32(field::CRYPT_METHOD).unwrap_or(0) != 0 {
        return Err(VolumeError::Encrypted {
            path: path.to_path_buf(),
        }
        .into());
    }
    if be32(field::VERSION).unwrap_or(0) >= 3 {
        let o = field::INCOMPATIBLE_FEATURES as usize;
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        if u64::from_be_bytes(b) & INCOMPAT_COMPRESSION != 0 {
            return Err(VolumeError::ZstdCompressed {
                path: path.to_path_buf(),
            }
            .into());
        }
    }
    let bits = be32(field::CLUSTER_BITS)
        .unwrap_or(MIN_CLUSTER_BITS)
        .clamp(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS);
    Ok((bits, be32(field::VERSION).unwrap_or(0)))
}

/// Reads up to `buf.len()` bytes from the start of `file`; returns how many.
fn read_prefix(file: &File, buf: &mut [u8], path: &Path) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_at(e, path, "cannot read the image header")),
        }
    }
    Ok(got)
}

/// Reads the first bytes of `file` to tell qcow2 from raw.
pub(crate) fn has_qcow2_magic(file: &File, path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let n = read_prefix(file, &mut magic, path)?;
    Ok(n == magic.len() && magic == MAGIC)
}

/// Whether the qcow2 header at the start of `file` names a backing file
/// (a non-zero `backing_file_offset`, bytes 8 to 15).
pub(crate) fn names_backing_file(file: &File, path: &Path) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut field = [0u8; 8];
    file.read_exact_at(&mut field, 8)
        .map_err(|e| io_at(e, path, "cannot read the qcow2 header"))?;
    Ok(u64::from_be_bytes(field) != 0)
}
