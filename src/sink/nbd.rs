//! Import targets on NBD exports (an `ova-import` ticket whose disk URL
//! is `nbd:…`): the disk's guest bytes go through the volume layer's NBD
//! backend, whatever image format the server keeps them in, so a qcow2
//! behind qemu-nbd is written as guest data, never as qcow2 bytes.
//!
//! An export is no file: there is no `.partial` name to rename, and a
//! failed import leaves whatever it had written in the export. Where a
//! file target is left looking absent, an NBD target is named in the
//! error instead ([`Landing::failure_note`]). The export is zeroed where
//! it does not already read as zeros when it is opened, so that the
//! ranges a package leaves out read as zeros afterwards, as they do in a
//! fresh file.

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::sink::Target;
use crate::sink::partial::PartialFile;
use crate::sink::target::check_range;
use crate::volume::NetUrl;
use crate::volume::nbd::{NbdUrl, NbdVolume};
use crate::volume::{ExtentKind, Extents, Flush, Size, WriteAt, Zero};

/// An import target on an NBD export.
#[derive(Debug)]
pub struct NbdTarget {
    volume: NbdVolume,
    capacity: u64,
}

impl NbdTarget {
    /// Connects to `url` for writing and clears it: a disk of `capacity`
    /// bytes (`None`: not known yet, the export's size until it is
    /// settled) must fit in the export.
    pub fn open(url: &NbdUrl, capacity: Option<u64>) -> Result<Self> {
        let volume = NbdVolume::connect(url, true)?;
        let size = volume.size();
        let capacity = capacity.unwrap_or(size);
        check_fits(url, capacity, size)?;
        for e in volume.extents(0, size)? {
            if e.kind == ExtentKind::Data {
                volume.zero(e.start, e.len, true)?;
            }
        }
        Ok(NbdTarget { volume, capacity })
    }
}

fn check_fits(url: &NbdUrl, capacity: u64, size: u64) -> Result<()> {
    if capacity > size {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "{url}: the disk's capacity of {capacity} bytes is larger than the NBD export's {size} bytes"
            ),
        ));
    }
    Ok(())
}

impl Target for NbdTarget {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        check_range(offset, data.len() as u64, self.capacity)?;
        self.volume.write_at(offset, data)
    }

    /// The export was cleared when opened: zeroing again is for ranges
    /// written earlier in this import (a package may overwrite).
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.capacity)?;
        self.volume.zero(offset, len, true)
    }

    fn finish(&mut self) -> Result<()> {
        self.volume.flush()
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn set_capacity(&mut self, capacity: u64) -> Result<()> {
        check_fits(self.volume.url(), capacity, self.volume.size())?;
        self.capacity = capacity;
        Ok(())
    }
}

/// Where an import target lands: a file written under its `.partial`
/// name and renamed when complete, or an NBD export or remote volume
/// written in place.
#[derive(Debug)]
#[must_use = "an uncommitted partial file is removed when dropped"]
pub enum Landing {
    /// A file target.
    Partial(PartialFile),
    /// An NBD export or a remote volume: nothing to rename.
    InPlace {
        /// The URL as shown, as a path, for messages and summaries.
        name: PathBuf,
    },
}

impl Landing {
    /// The landing of a volume written in place at `url`.
    pub fn in_place(url: Option<&NetUrl>) -> Self {
        Landing::InPlace {
            name: PathBuf::from(url.map(ToString::to_string).unwrap_or_default()),
        }
    }

    /// Where the bytes are being written.
    pub fn partial_path(&self) -> &Path {
        match self {
            Landing::Partial(p) => p.partial_path(),
            Landing::InPlace { name } => name,
        }
    }

    /// Where they are once complete.
    pub fn final_path(&self) -> &Path {
        match self {
            Landing::Partial(p) => p.final_path(),
            Landing::InPlace { name } => name,
        }
    }

    /// Renames a partial file to its final name; nothing for an export.
    pub fn commit(self) -> Result<()> {
        match self {
            Landing::Partial(p) => p.commit(),
            Landing::InPlace { .. } => Ok(()),
        }
    }

    /// What an import that failed after opening this target must say of
    /// it: an export or a remote volume keeps what was written.
    pub fn failure_note(url: &NetUrl) -> String {
        format!("the {} target {url} may hold partial data", url.kind())
    }
}
