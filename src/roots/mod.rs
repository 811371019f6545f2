//! Storage roots: the directories under which every file that a client, a
//! job or a package can influence is opened.
//!
//! A path is judged twice. When a ticket or job is accepted, [`AllowedRoots::check`]
//! resolves it (symbolic links followed) and keeps its canonical form if it
//! lies under a root. When the file is opened — possibly much later — it
//! is opened *beneath* a descriptor of that root held since start-up, with
//! no symbolic link allowed anywhere on the way ([`beneath`]). A directory
//! renamed or swapped for a link in between makes the open fail; it can
//! never lead out.
//!
//! Files created next to a target (`.partial` names, spools) go through a
//! [`Dir`] opened the same way, so they land in the directory that was
//! checked.

mod beneath;
mod dir;

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use dir::{Dir, is_file, is_symlink};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Classify, Error, ErrorKind, Result};

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    /// A path resolves outside every storage root.
    #[error("{} resolves to {}, outside the allowed storage roots", path.display(), canonical.display())]
    OutsideRoots {
        /// The path as given (or as named by an image).
        path: PathBuf,
        /// Where it resolves to.
        canonical: PathBuf,
    },
    /// A storage root is not a directory.
    #[error("storage root {} is not a directory", path.display())]
    RootNotDirectory {
        /// The root as given.
        path: PathBuf,
    },
    /// A path names a directory where a file is needed.
    #[error("{} is a directory", path.display())]
    IsDirectory {
        /// The path.
        path: PathBuf,
    },
    /// A component of the path became a symbolic link after the path was
    /// checked (or is one inside a root): it is not followed.
    #[error(
        "{} now leads through a symbolic link, which is not followed under a storage root",
        path.display()
    )]
    Symlink {
        /// The path.
        path: PathBuf,
    },
}

impl Classify for RootError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// One root: its canonical path and a descriptor held from start-up.
#[derive(Debug)]
struct Root {
    path: PathBuf,
    fd: OwnedFd,
}

/// Canonicalized directories; a path is allowed only if it lies under one
/// of them. `AllowedRoots::any()` allows every path.
#[derive(Debug, Clone)]
pub struct AllowedRoots {
    /// `None`: no restriction.
    roots: Option<Arc<[Root]>>,
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
            let fd = rustix::fs::open(
                &canon,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::NOTDIR => RootError::RootNotDirectory { path: root.clone() }.into(),
                e => Error::from(std::io::Error::from(e)).at_path(root),
            })?;
            out.push(Root { path: canon, fd });
        }
        Ok(AllowedRoots {
            roots: Some(out.into()),
        })
    }

    /// No restriction: every path is allowed (the command-line default,
    /// where the operator names the files).
    pub fn any() -> Self {
        AllowedRoots { roots: None }
    }

    /// The canonical root directories; empty when unrestricted.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.roots
            .iter()
            .flat_map(|r| r.iter().map(|r| r.path.as_path()))
    }

    /// Returns the canonical form of `p` if it lies under an allowed root.
    /// A missing file is a `NotFound` error naming `p`.
    pub fn check(&self, p: &Path) -> Result<PathBuf> {
        let canon = std::fs::canonicalize(p).map_err(|e| Error::from(e).at_path(p))?;
        match &self.roots {
            Some(_) if self.root_of(&canon).is_none() => Err(RootError::OutsideRoots {
                path: p.to_path_buf(),
                canonical: canon,
            }
            .into()),
            _ => Ok(canon),
        }
    }

    /// Whether the canonical path `canon` (as [`AllowedRoots::check`] once
    /// gave it) lies under a root now, judged by its text alone: for paths
    /// kept across a restart, whose roots may have changed meanwhile. Any
    /// later open still goes beneath the root.
    pub fn holds(&self, canon: &Path) -> bool {
        use std::path::Component;
        canon.is_absolute()
            && canon
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
            && (self.roots.is_none() || self.root_of(canon).is_some())
    }

    /// The root holding the canonical path `canon`, and the rest of it.
    fn root_of<'a>(&'a self, canon: &'a Path) -> Option<(&'a Root, &'a Path)> {
        self.roots
            .as_ref()?
            .iter()
            .find_map(|r| canon.strip_prefix(&r.path).ok().map(|rest| (r, rest)))
    }

    /// Opens `path` with `flags` (and `mode` when creating). Under roots,
    /// `path` must be the canonical form [`AllowedRoots::check`] gave: it
    /// is opened beneath its root with no symbolic link followed. With no
    /// roots it is opened as given.
    pub fn open(&self, path: &Path, flags: OFlags, mode: u32) -> Result<File> {
        let mode = Mode::from_raw_mode(mode);
        let fd = match &self.roots {
            None => rustix::fs::open(path, flags | OFlags::CLOEXEC, mode)
                .map_err(|e| open_error(e, path))?,
            Some(_) => {
                let (root, rel) = self.root_of(path).ok_or_else(|| {
                    Error::from(RootError::OutsideRoots {
                        path: path.to_path_buf(),
                        canonical: path.to_path_buf(),
                    })
                })?;
                beneath::open(root.fd.as_fd(), rel, flags, mode).map_err(|e| open_error(e, path))?
            }
        };
        Ok(File::from(fd))
    }

    /// Checks `p`, then opens its canonical path read-only beneath its root.
    /// Returns the file and the canonical path. A directory is refused.
    pub fn open_checked(&self, p: &Path) -> Result<(File, PathBuf)> {
        let canon = self.check(p)?;
        let file = self
            .open(&canon, OFlags::RDONLY, 0)
            .map_err(|e| e.at_path(p))?;
        let meta = file.metadata().map_err(|e| Error::from(e).at_path(p))?;
        if meta.is_dir() {
            return Err(RootError::IsDirectory {
                path: p.to_path_buf(),
            }
            .into());
        }
        Ok((file, canon))
    }

    /// Opens the directory `dir` (canonical under roots, as for
    /// [`AllowedRoots::open`]).
    pub fn open_dir(&self, dir: &Path) -> Result<Dir> {
        let f = self.open(dir, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
        Ok(Dir::new(OwnedFd::from(f), dir.to_path_buf()))
    }

    /// Opens the directory holding the file `path` and returns it with
    /// the file's name.
    pub fn open_parent(&self, path: &Path) -> Result<(Dir, OsString)> {
        let Some(name) = path.file_name() else {
            return Err(
                Error::new(ErrorKind::InvalidArgument, "does not name a file").at_path(path),
            );
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Ok((self.open_dir(parent)?, name.to_owned()))
    }
}

/// One error per way an open can fail, naming the path.
fn open_error(e: Errno, path: &Path) -> Error {
    match e {
        Errno::LOOP => RootError::Symlink {
            path: path.to_path_buf(),
        }
        .into(),
        Errno::XDEV => RootError::OutsideRoots {
            path: path.to_path_buf(),
            canonical: path.to_path_buf(),
        }
        .into(),
        Errno::ISDIR => RootError::IsDirectory {
            path: path.to_path_buf(),
        }
        .into(),
        e => Error::from(std::io::Error::from(e)).at_path(path),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn a_parent_swapped_for_a_link_after_the_check_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/img.raw"), b"inside").unwrap();
        std::fs::write(outside.path().join("img.raw"), b"outside").unwrap();
        let roots = AllowedRoots::new(std::slice::from_ref(&root)).unwrap();
        let canon = roots.check(&root.join("sub/img.raw")).unwrap();
        // Swap `sub` for a link leading out.
        std::fs::rename(root.join("sub"), root.join("old")).unwrap();
        symlink(outside.path(), root.join("sub")).unwrap();
        let e = roots.open(&canon, OFlags::RDWR, 0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = roots.open_parent(&canon).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(
            std::fs::read(outside.path().join("img.raw")).unwrap(),
            b"outside"
        );
    }

    #[test]
    fn paths_outside_are_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(t.path().join("x"), b"x").unwrap();
        let roots = AllowedRoots::new(std::slice::from_ref(&root)).unwrap();
        let e = roots.check(&root.join("../x")).unwrap_err();
        assert!(
            e.to_string().contains("outside the allowed storage roots"),
            "{e}"
        );
        let e = roots
            .open(&t.path().join("x"), OFlags::RDONLY, 0)
            .unwrap_err();
        assert!(
            e.to_string().contains("outside the allowed storage roots"),
            "{e}"
        );
    }

    #[test]
    fn a_root_that_is_a_file_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, b"").unwrap();
        let e = AllowedRoots::new(&[f]).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
    }
}
