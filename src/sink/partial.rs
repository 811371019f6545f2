//! Target files are written under a `.partial` name and renamed into place
//! only once complete, so that a failed or interrupted transfer never
//! leaves a file that looks like a finished volume.
//!
//! [`PartialFile`] owns the name, not the data: the volume writes through
//! the [`File`] returned by [`PartialFile::create`] and fsyncs it in its own
//! `finish()`; [`PartialFile::commit`] then renames `X.partial` to `X` and
//! fsyncs the directory so the rename itself is durable. Dropping an
//! uncommitted `PartialFile` removes `X.partial`.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Classify, Error, ErrorKind, Result};

/// Suffix appended to the final file name while a target is being written.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Why a `.partial` file could not be created or committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartialError {
    /// A `.partial` file from an earlier run is in the way.
    #[error("{} already exists (left by an earlier failed run?); remove it first", .0.display())]
    Stale(PathBuf),
    /// The directory that should hold the target does not exist.
    #[error("directory {} does not exist", .0.display())]
    MissingParent(PathBuf),
    /// The target path does not end in a file name.
    #[error("{} does not name a file", .0.display())]
    NoFileName(PathBuf),
}

impl Classify for PartialError {
    fn kind(&self) -> ErrorKind {
        match self {
            PartialError::Stale(_) | PartialError::NoFileName(_) => ErrorKind::InvalidArgument,
            PartialError::MissingParent(_) => ErrorKind::NotFound,
        }
    }
}

/// The `.partial` name of one target file; see the module documentation.
#[derive(Debug)]
#[must_use = "an uncommitted PartialFile removes its file when dropped"]
pub struct PartialFile {
    final_path: PathBuf,
    partial_path: PathBuf,
    committed: bool,
}

impl PartialFile {
    /// Creates `final_path` + `.partial` exclusively, opened for reading and
    /// writing. A stale `.partial` file is an error naming it; the parent
    /// directory must exist.
    pub fn create(final_path: &Path) -> Result<(Self, File)> {
        Self::create_with(final_path, false)
    }

    /// Like [`PartialFile::create`], but with `overwrite` a stale `.partial`
    /// file is truncated and reused instead of being an error.
    pub fn create_with(final_path: &Path, overwrite: bool) -> Result<(Self, File)> {
        let name = match final_path.file_name() {
            Some(n) => n,
            None => return Err(PartialError::NoFileName(final_path.to_owned()).into()),
        };
        let mut partial_name = OsString::from(name);
        partial_name.push(PARTIAL_SUFFIX);
        let partial_path = final_path.with_file_name(partial_name);
        let parent = parent_dir(final_path);
        if !parent.is_dir() {
            return Err(PartialError::MissingParent(parent.to_owned()).into());
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if overwrite {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        let file = match opts.open(&partial_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(PartialError::Stale(partial_path).into());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(PartialError::MissingParent(parent.to_owned()).into());
            }
            Err(e) => {
                return Err(Error::from(e)
                    .with_message("cannot create the target file")
                    .at_path(partial_path));
            }
        };
        Ok((
            PartialFile {
                final_path: final_path.to_owned(),
                partial_path,
                committed: false,
            },
            file,
        ))
    }

    /// The name the file gets once committed.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// The name the file has while being written.
    pub fn partial_path(&self) -> &Path {
        &self.partial_path
    }

    /// Renames `X.partial` to `X` (replacing an existing `X`) and fsyncs the
    /// directory. The file's own data must already be synced (the volume's
    /// `finish()` does it).
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.partial_path, &self.final_path).map_err(|e| {
            Error::from(e)
                .with_message(format!("cannot rename to {}", self.final_path.display()))
                .at_path(&self.partial_path)
        })?;
        self.committed = true;
        let dir = parent_dir(&self.final_path);
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
            Error::from(e)
                .with_message("cannot sync the directory")
                .at_path(dir)
        })
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the error that made us give up matters more.
            let _ = std::fs::remove_file(&self.partial_path);
        }
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_renames() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.raw");
        let (p, f) = PartialFile::create(&target).unwrap();
        assert_eq!(p.partial_path(), dir.path().join("disk.raw.partial"));
        assert_eq!(p.final_path(), target);
        std::os::unix::fs::FileExt::write_all_at(&f, b"hello", 0).unwrap();
        f.sync_all().unwrap();
        drop(f);
        assert!(!target.exists());
        p.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        assert!(!dir.path().join("disk.raw.partial").exists());
    }

    #[test]
    fn drop_without_commit_removes() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.qcow2");
        let (p, f) = PartialFile::create(&target).unwrap();
        let partial = p.partial_path().to_owned();
        assert!(partial.exists());
        drop(p);
        drop(f);
        assert!(!partial.exists());
        assert!(!target.exists());
    }

    #[test]
    fn stale_partial_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.raw");
        let stale = dir.path().join("disk.raw.partial");
        std::fs::write(&stale, b"old").unwrap();
        let e = PartialFile::create(&target).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains(&*stale.to_string_lossy()), "{e}");
        // The stale file is not ours to remove.
        assert_eq!(std::fs::read(&stale).unwrap(), b"old");
        // With overwrite it is truncated and reused.
        let (p, f) = PartialFile::create_with(&target, true).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0);
        drop(p);
        assert!(!stale.exists());
    }

    #[test]
    fn missing_parent_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("nope");
        let target = parent.join("disk.raw");
        let e = PartialFile::create(&target).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains(&*parent.to_string_lossy()), "{e}");
    }

    #[test]
    fn path_without_file_name_is_rejected() {
        let e = PartialFile::create(Path::new("/")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}
