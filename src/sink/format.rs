//! The formats an import target can be written in: the volume layer's
//! [`Format`], here with the constructors of fresh targets.

use std::fs::File;

use crate::error::Result;
use crate::sink::qcow2::Qcow2Volume;
use crate::sink::raw::RawVolume;
use crate::sink::target::TargetVolume;
use crate::volume::Format;

impl Format {
    /// File extension used with `--dir`.
    pub fn extension(self) -> &'static str {
        self.name()
    }

    /// Creates a target whose capacity is not known yet (settled later
    /// with `set_capacity`), over a fresh, empty file: a sparse raw file,
    /// or a qcow2 v3 image with 64 KiB clusters.
    pub fn create_provisional(self, file: File) -> Result<TargetVolume> {
        Ok(match self {
            Format::Raw => TargetVolume::Raw(RawVolume::growable(file)?),
            Format::Qcow2 => {
                TargetVolume::Qcow2(Qcow2Volume::new(file, crate::limits::MAX_CAPACITY)?)
            }
        })
    }

    /// Creates a target of this format over a fresh, empty file.
    pub fn create(self, file: File, capacity: u64) -> Result<TargetVolume> {
        Ok(match self {
            Format::Raw => TargetVolume::Raw(RawVolume::new(file, capacity)?),
            Format::Qcow2 => TargetVolume::Qcow2(Qcow2Volume::new(file, capacity)?),
        })
    }
}
