//! The target formats a volume can be written in.

use std::fs::File;

use crate::error::Result;
use crate::sink::qcow2::Qcow2Volume;
use crate::sink::raw::RawVolume;
use crate::sink::target::TargetVolume;

/// Format of a target volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetFormat {
    /// A sparse raw file.
    Raw,
    /// qcow2 v3, 64 KiB clusters.
    Qcow2,
}

use serde::{Deserialize, Serialize};

impl TargetFormat {
    /// File extension used with `--dir`.
    pub fn extension(self) -> &'static str {
        self.name()
    }

    /// Name as written on the command line and in summaries.
    pub fn name(self) -> &'static str {
        match self {
            TargetFormat::Raw => "raw",
            TargetFormat::Qcow2 => "qcow2",
        }
    }

    /// Parses `raw` or `qcow2`.
    pub fn parse(s: &str) -> Option<TargetFormat> {
        match s {
            "raw" => Some(TargetFormat::Raw),
            "qcow2" => Some(TargetFormat::Qcow2),
            _ => None,
        }
    }

    /// Creates a volume whose capacity is not known yet (settled later
    /// with `set_capacity`), over a fresh, empty file.
    pub fn create_provisional(self, file: File) -> Result<TargetVolume> {
        Ok(match self {
            TargetFormat::Raw => TargetVolume::Raw(RawVolume::growable(file)?),
            TargetFormat::Qcow2 => {
                TargetVolume::Qcow2(Qcow2Volume::new(file, crate::limits::MAX_CAPACITY)?)
            }
        })
    }

    /// Creates a volume of this format over a fresh, empty file.
    pub fn create(self, file: File, capacity: u64) -> Result<TargetVolume> {
        Ok(match self {
            TargetFormat::Raw => TargetVolume::Raw(RawVolume::new(file, capacity)?),
            TargetFormat::Qcow2 => TargetVolume::Qcow2(Qcow2Volume::new(file, capacity)?),
        })
    }
}
