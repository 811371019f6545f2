//! qcow2 source volumes, read through `imago` with the backing chain
//! collapsed: every read and the allocation map show the guest view
//! through all layers.
//!
//! imago is never allowed to open a file by itself (each layer is opened
//! with `open_image`, which follows no reference). The chain is walked
//! here instead: each backing file name is resolved like qemu does
//! (relative to the directory of the image naming it), checked against the
//! [`AllowedRoots`], opened, and attached with `set_backing` from the bottom
//! up. External data files are refused.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatAccess, Mapping};

use super::{VolumeError, VolumeFormat, imago_err, io_at, raw};
use crate::codec::map::{AllocationMap, RangeKind};
use crate::codec::qcow2::header::{INCOMPAT_COMPRESSION, MAGIC, V3_MIN_HEADER_LEN, field};
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

/// An opened qcow2 image with its backing chain attached.
#[derive(Debug)]
pub(crate) struct Qcow2Volume {
    top: FormatAccess<ImagoFile>,
    raw_base: Option<RawBase>,
    path: PathBuf,
}

/// One opened layer before the chain is assembled.
struct Layer {
    image: Qcow2<ImagoFile>,
}

impl Qcow2Volume {
    /// Opens the image in `file` (already checked against `roots`; `path`
    /// is the name the caller gave) and its backing chain.
    pub(crate) fn open(
        file: File,
        canonical: PathBuf,
        path: &Path,
        roots: &AllowedRoots,
    ) -> Result<Self> {
        let mut seen = vec![canonical];
        let mut layers: Vec<Layer> = Vec::new();
        let mut cur_file = file;
        let mut cur_path = path.to_path_buf();
        let mut cur_format = VolumeFormat::Qcow2;
        let mut base: Option<FormatAccess<ImagoFile>> = None;
        let mut raw_base = None;

        loop {
            match cur_format {
                VolumeFormat::Raw => {
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
                VolumeFormat::Qcow2 => {
                    precheck(&cur_file, &cur_path)?;
                    let storage = ImagoFile::try_from(cur_file)
                        .map_err(|e| imago_err(e, &cur_path, "cannot open qcow2 image"))?;
                    let image = Qcow2::<ImagoFile>::open_image(storage, false)
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
                        Some("qcow2") => VolumeFormat::Qcow2,
                        Some("raw") | Some("file") => VolumeFormat::Raw,
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
        Ok(Qcow2Volume {
            top,
            raw_base,
            path: path.to_path_buf(),
        })
    }

    /// Virtual size of the top image.
    pub(crate) fn capacity(&self) -> u64 {
        self.top.size()
    }

    /// The guest view's map: data from any layer (compressed clusters
    /// included) is `Data`; zero clusters of the top image are `Zero`;
    /// ranges unallocated through the whole chain (and zero clusters of
    /// lower layers) are left out. Holes of a raw base are left out too.
    pub(crate) fn allocation_map(&self) -> Result<AllocationMap> {
        let capacity = self.capacity();
        let mut map = AllocationMap::new(capacity);
        let mut off = 0u64;
        while off < capacity {
            let (mapping, len) = self.top.get_mapping(off, capacity - off).map_err(|e| {
                imago_err(
                    e,
                    &self.path,
                    &format!("mapping query at guest offset {off} failed"),
                )
            })?;
            let len = len.min(capacity - off);
            match mapping {
                Mapping::Eof { .. } => break,
                _ if len == 0 => {
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
                            push_raw_base(&mut map, &b.map, off, host, len)?;
                        }
                        _ => map.push(off, len, RangeKind::Data)?,
                    }
                }
                Mapping::Special { .. } => map.push(off, len, RangeKind::Data)?,
                Mapping::Zero { explicit: true, .. } => map.push(off, len, RangeKind::Zero)?,
                Mapping::Zero { .. } => {}
                // `Mapping` is non-exhaustive: anything new is read as data.
                _ => map.push(off, len, RangeKind::Data)?,
            }
            off += len;
        }
        Ok(map)
    }

    /// Reads guest bytes through the whole chain.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.top.read(&mut *buf, offset).map_err(|e| {
            imago_err(
                e,
                &self.path,
                &format!("read at guest offset {offset} failed"),
            )
        })
    }
}

/// Pushes guest `[guest, guest+len)`, mapped to host `[host, host+len)` of
/// the raw base, as data where the base holds data and leaves its holes out.
fn push_raw_base(
    map: &mut AllocationMap,
    base: &AllocationMap,
    guest: u64,
    host: u64,
    len: u64,
) -> Result<()> {
    let end = host.saturating_add(len);
    let ranges = base.ranges();
    let first = ranges.partition_point(|r| r.offset + r.len <= host);
    for r in &ranges[first..] {
        if r.offset >= end {
            break;
        }
        let s = r.offset.max(host);
        let e = (r.offset + r.len).min(end);
        if e > s {
            map.push(guest + (s - host), e - s, r.kind)?;
        }
    }
    Ok(())
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
/// zstd-compressed clusters (imago only decodes zlib).
fn precheck(file: &File, path: &Path) -> Result<()> {
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
    Ok(())
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
