//! Storage roots: the directories under which source volumes (and the
//! backing files they name) may be opened. A path is judged by its
//! canonical form, so `..` components and symbolic links cannot lead out.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::VolumeError;
use crate::error::{Error, Result};

/// Canonicalized directories; a path is allowed only if its canonical path
/// lies under one of them. `AllowedRoots::any()` allows every path.
#[derive(Debug, Clone)]
pub struct AllowedRoots {
    /// `None`: no restriction.
    roots: Option<Vec<PathBuf>>,
}

impl AllowedRoots {
    /// Allows paths under `roots` only. Each root must exist and be a
    /// directory; an empty list allows nothing.
    pub fn new(roots: &[PathBuf]) -> Result<Self> {
        let mut out = Vec::with_capacity(roots.len());
        for root in roots {
            let canon = std::fs::canonicalize(root).map_err(|e| {
                Error::from(e)
                    .at_path(root)
                    .with_message("cannot resolve storage root")
            })?;
            if !canon.is_dir() {
                return Err(VolumeError::RootNotDirectory { path: root.clone() }.into());
            }
            out.push(canon);
        }
        Ok(AllowedRoots { roots: Some(out) })
    }

    /// No restriction: every path is allowed (the command-line default,
    /// where the operator names the files).
    pub fn any() -> Self {
        AllowedRoots { roots: None }
    }

    /// Returns the canonical form of `p` if it lies under an allowed root.
    /// A missing file is a `NotFound` error naming `p`.
    pub fn check(&self, p: &Path) -> Result<PathBuf> {
        let canon = std::fs::canonicalize(p).map_err(|e| Error::from(e).at_path(p))?;
        if self.allows(&canon) {
            Ok(canon)
        } else {
            Err(VolumeError::OutsideRoots {
                path: p.to_path_buf(),
                canonical: canon,
            }
            .into())
        }
    }

    /// Whether the canonical path `canon` lies under an allowed root.
    fn allows(&self, canon: &Path) -> bool {
        match &self.roots {
            None => true,
            Some(roots) => roots.iter().any(|r| canon.starts_with(r)),
        }
    }

    /// Checks `p`, opens its canonical path read-only and checks again what
    /// was actually opened (through `/proc/self/fd`, where available), so a
    /// path component swapped for a symbolic link between the check and the
    /// open cannot lead out of the roots.
    pub(crate) fn open_checked(&self, p: &Path) -> Result<(File, PathBuf)> {
        let canon = self.check(p)?;
        let file = File::open(&canon).map_err(|e| Error::from(e).at_path(p))?;
        if self.roots.is_some() {
            use std::os::fd::AsRawFd;
            let link = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            if let Ok(opened) = std::fs::read_link(&link)
                && opened.is_absolute()
                && !self.allows(&opened)
            {
                return Err(VolumeError::OutsideRoots {
                    path: p.to_path_buf(),
                    canonical: opened,
                }
                .into());
            }
        }
        let meta = file.metadata().map_err(|e| Error::from(e).at_path(p))?;
        if meta.is_dir() {
            return Err(VolumeError::IsDirectory {
                path: p.to_path_buf(),
            }
            .into());
        }
        Ok((file, canon))
    }
}
