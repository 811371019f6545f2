//! Where each disk of a package goes: the caller's mapping, or a name
//! made in a directory from the disk's href (a disk with a file) or its
//! `ovf:diskId` (a blank disk, which has no href).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::names::{printable, unfit_for_file_name};
use crate::volume::Format as VolumeFormat;
use crate::volume::NetUrl;

/// Where one disk goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskTarget {
    /// Final path of the target volume.
    pub path: PathBuf,
    /// Format of the target volume.
    pub format: VolumeFormat,
    /// The target is this NBD export or remote volume, written in place
    /// as guest bytes (`path` is then its URL as shown, for messages, and
    /// `format` is not used).
    pub net: Option<NetUrl>,
}

/// How disks are mapped to targets.
#[derive(Debug, Clone)]
pub enum Targets {
    /// Explicit mapping; every disk must be named: a disk with a file by
    /// its href, a blank disk by its `ovf:diskId`.
    Map(BTreeMap<String, DiskTarget>),
    /// Every disk to `DIR/<href stem>.<format>`, a blank disk to
    /// `DIR/<diskId>.<format>`.
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The format of every target.
        format: VolumeFormat,
    },
}

impl Targets {
    /// Where the disk `href` goes; `None` when no `--disk` names it.
    pub(super) fn target_for(&self, href: &str) -> Result<Option<DiskTarget>> {
        match self {
            Targets::Map(m) => Ok(m.get(href).cloned()),
            Targets::Dir { dir, format } => {
                if let Some(why) = unfit_for_file_name(href) {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "--dir cannot make a file name of this href: {why}; name its target with --disk"
                        ),
                    ));
                }
                let stem = Path::new(href)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| href.to_owned());
                Ok(Some(DiskTarget {
                    path: dir.join(format!("{stem}.{}", format.extension())),
                    format: *format,
                    net: None,
                }))
            }
        }
    }

    /// Where the blank disk `disk_id` goes; `None` when no `--disk` names
    /// it. Unlike an href, which the OVF parser already holds to a plain
    /// file name, a disk id may be anything, so `--dir` checks here what
    /// the parser checks of hrefs, then what it checks of every href.
    pub(super) fn blank_target_for(&self, disk_id: &str) -> Result<Option<DiskTarget>> {
        match self {
            Targets::Map(m) => Ok(m.get(disk_id).cloned()),
            Targets::Dir { dir, format } => {
                let why = if disk_id.is_empty() {
                    Some("it is empty")
                } else if disk_id.contains(['/', '\\']) {
                    Some("it holds '/'")
                } else if disk_id.contains("..") {
                    Some("it holds '..'")
                } else {
                    unfit_for_file_name(disk_id)
                };
                if let Some(why) = why {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "--dir cannot make a file name of the blank disk id '{}': {why}; name its target with --disk DISKID=PATH",
                            printable(disk_id)
                        ),
                    ));
                }
                Ok(Some(DiskTarget {
                    path: dir.join(format!("{disk_id}.{}", format.extension())),
                    format: *format,
                    net: None,
                }))
            }
        }
    }

    /// The names a mapping gives, to check each named a disk.
    pub(super) fn named(&self) -> impl Iterator<Item = &str> {
        let names = match self {
            Targets::Map(m) => Some(m.keys().map(String::as_str)),
            Targets::Dir { .. } => None,
        };
        names.into_iter().flatten()
    }

    /// Whether the mapping names `name` (the `--dir` rule names none).
    pub(super) fn names(&self, name: &str) -> bool {
        matches!(self, Targets::Map(m) if m.contains_key(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_blank_disks_by_id() {
        let t = Targets::Dir {
            dir: PathBuf::from("/out"),
            format: VolumeFormat::Qcow2,
        };
        let got = t.blank_target_for("flash.disk").unwrap().unwrap();
        assert_eq!(got.path, PathBuf::from("/out/flash.disk.qcow2"));
        assert_eq!(
            t.target_for("vm-disk1.vmdk").unwrap().unwrap().path,
            PathBuf::from("/out/vm-disk1.qcow2")
        );
        for bad in ["", "../x", "a/b", "..", "x\n", " x", "\u{202E}x", r"a\b"] {
            let e = t.blank_target_for(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
            assert!(e.to_string().contains("--disk DISKID=PATH"), "{e}");
        }
        let e = t.blank_target_for("x\n").unwrap_err().to_string();
        assert!(e.contains("'x\\n'"), "{e}");
    }

    #[test]
    fn a_map_names_disks_by_href_or_id() {
        let mut m = BTreeMap::new();
        let target = DiskTarget {
            path: PathBuf::from("/t/flash.raw"),
            format: VolumeFormat::Raw,
            net: None,
        };
        m.insert("flash".to_owned(), target.clone());
        let t = Targets::Map(m);
        assert_eq!(t.blank_target_for("flash").unwrap(), Some(target));
        assert_eq!(t.blank_target_for("other").unwrap(), None);
        assert!(t.names("flash") && !t.names("other"));
        assert_eq!(t.named().collect::<Vec<_>>(), ["flash"]);
    }
}
