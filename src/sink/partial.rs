//! Target files are written under a `.partial` name and renamed into place
//! only once complete, so that a failed or interrupted transfer never
//! leaves a file that looks like a finished volume.
//!
//! [`PartialFile`] owns the name, not the data: the volume writes through
//! the [`File`] returned by [`PartialFile::create`] and fsyncs it in its own
//! `finish()`; [`PartialFile::commit`] then renames `X.partial` to `X` and
//! fsyncs the directory so the rename itself is durable. Dropping an
//! uncommitted `PartialFile` removes `X.partial`.
//!
//! Every name is resolved in the target's directory, opened once (beneath
//! its storage root when there are roots), and a partial file is only ever
//! created new (`O_EXCL | O_NOFOLLOW`): a symbolic link planted at the
//! partial name is removed, never written through.
//!
//! A live transfer holds an exclusive `flock` on its partial file for as
//! long as it writes it. A partial file nobody holds was left by a process
//! that died; the next transfer to the same target removes it, and
//! [`remove_stale`] sweeps a whole root at server start.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustix::fs::{FileType, FlockOperation, OFlags};
use rustix::io::Errno;

use crate::error::{Classify, Error, ErrorKind, Result};
use crate::roots::{AllowedRoots, Dir, is_file, is_symlink};

/// Suffix appended to the final file name while a target is being written.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// What happens to a file already at the final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// The commit replaces it.
    Replace,
    /// It is an error, before anything is written and again at the commit
    /// (which never replaces a file that appeared meanwhile).
    Keep,
}

/// Directories deeper than this below a root are not swept for stale
/// partial files.
const SWEEP_DEPTH: usize = 32;

/// Every partial file of this process not yet committed or removed, so
/// that a process ending at once (a second SIGINT) can remove them first.
static LIVE: Mutex<BTreeMap<u64, (Arc<Dir>, OsString)>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn live() -> MutexGuard<'static, BTreeMap<u64, (Arc<Dir>, OsString)>> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes every partial file this process is still writing; for a
/// process about to exit without unwinding.
pub fn remove_all_live() {
    remove_live_where(|_| true);
}

/// Removes the live partial files whose directory `which` picks, and
/// forgets them.
fn remove_live_where(which: impl Fn(&Dir) -> bool) {
    let taken: Vec<(Arc<Dir>, OsString)> = {
        let mut map = live();
        let ids: Vec<u64> = map
            .iter()
            .filter(|(_, (dir, _))| which(dir))
            .map(|(&id, _)| id)
            .collect();
        ids.iter().filter_map(|id| map.remove(id)).collect()
    };
    for (dir, name) in taken {
        let _ = dir.unlink(&name);
    }
}

/// Why a `.partial` file could not be created or committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartialError {
    /// Another live transfer is writing the same target.
    #[error("{} is being written by another transfer (it holds the file's lock)", .0.display())]
    InUse(PathBuf),
    /// Something other than a file or a symbolic link has the partial name.
    #[error("{} exists and is not a regular file; remove it first", .0.display())]
    NotAFile(PathBuf),
    /// The target exists and the caller did not ask to replace it.
    #[error("{} exists; pass --force (\"overwrite\": true in a job) to replace it", .0.display())]
    TargetExists(PathBuf),
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
            PartialError::InUse(_)
            | PartialError::NotAFile(_)
            | PartialError::NoFileName(_)
            | PartialError::TargetExists(_) => ErrorKind::InvalidArgument,
            PartialError::MissingParent(_) => ErrorKind::NotFound,
        }
    }
}

/// The `.partial` name of one target file; see the module documentation.
#[derive(Debug)]
#[must_use = "an uncommitted PartialFile removes its file when dropped"]
pub struct PartialFile {
    dir: Arc<Dir>,
    name: OsString,
    partial_name: OsString,
    final_path: PathBuf,
    partial_path: PathBuf,
    /// A descriptor of the partial file kept open so that its lock lasts
    /// until the commit or the removal, whatever the volume does with its own.
    _lock: File,
    /// Its key in the registry of live partial files.
    id: u64,
    existing: Existing,
    committed: bool,
}

impl PartialFile {
    /// Creates `final_path` + `.partial`, opened for reading and writing,
    /// in the directory of `final_path` opened under `roots` (which must
    /// exist). A partial file no live process holds is replaced.
    pub fn create(
        roots: &AllowedRoots,
        final_path: &Path,
        existing: Existing,
    ) -> Result<(Self, File)> {
        let (dir, name) = target_dir(roots, final_path)?;
        Self::create_in(dir, &name, existing)
    }

    /// Like [`PartialFile::create`], for the file `name` in a directory
    /// already open.
    pub fn create_in(dir: Arc<Dir>, name: &OsStr, existing: Existing) -> Result<(Self, File)> {
        if existing == Existing::Keep {
            refuse_existing(&dir, name)?;
        }
        let mut partial_name = name.to_owned();
        partial_name.push(PARTIAL_SUFFIX);
        let partial_path = dir.join(&partial_name);
        let io_err = |e: io::Error| {
            Error::from(e)
                .with_message("cannot create the target file")
                .at_path(&partial_path)
        };
        // A stale file is removed and the name tried again; one that
        // reappears each time belongs to a competing transfer.
        for _ in 0..3 {
            let file = match dir.create_new(&partial_name) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    remove_unheld(&dir, &partial_name)?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(PartialError::MissingParent(dir.path().to_owned()).into());
                }
                Err(e) => return Err(io_err(e)),
            };
            if !try_lock(&file).map_err(io_err)? || !still_named(&dir, &partial_name, &file) {
                // Another process took the fresh file for a stale one.
                return Err(PartialError::InUse(partial_path).into());
            }
            let lock = file.try_clone().map_err(io_err)?;
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            live().insert(id, (dir.clone(), partial_name.clone()));
            return Ok((
                PartialFile {
                    final_path: dir.join(name),
                    name: name.to_owned(),
                    partial_name,
                    partial_path,
                    dir,
                    _lock: lock,
                    id,
                    existing,
                    committed: false,
                },
                file,
            ));
        }
        Err(PartialError::InUse(partial_path).into())
    }

    /// The name the file gets once committed.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// The name the file has while being written.
    pub fn partial_path(&self) -> &Path {
        &self.partial_path
    }

    /// The directory holding the file.
    pub fn dir(&self) -> &Arc<Dir> {
        &self.dir
    }

    /// Renames `X.partial` to `X` (replacing an existing `X`) and fsyncs the
    /// directory. The file's own data must already be synced (the volume's
    /// `finish()` does it).
    pub fn commit(mut self) -> Result<()> {
        let renamed = match self.existing {
            Existing::Replace => self.dir.rename(&self.partial_name, &self.name),
            Existing::Keep => self.dir.rename_new(&self.partial_name, &self.name),
        };
        if matches!(&renamed, Err(e) if e.kind() == io::ErrorKind::AlreadyExists) {
            return Err(PartialError::TargetExists(self.final_path.clone()).into());
        }
        renamed.map_err(|e| {
            Error::from(e)
                .with_message(format!("cannot rename to {}", self.final_path.display()))
                .at_path(&self.partial_path)
        })?;
        self.committed = true;
        live().remove(&self.id);
        self.dir.sync().map_err(|e| {
            Error::from(e)
                .with_message("cannot sync the directory")
                .at_path(self.dir.path())
        })
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the error that made us give up matters more.
            // The name is still ours: nobody removes a locked partial file.
            if live().remove(&self.id).is_some() {
                let _ = self.dir.unlink(&self.partial_name);
            }
        }
    }
}

/// Opens the directory of the target file `path` under `roots` and
/// returns it with the file's name; a missing directory is named.
pub fn target_dir(roots: &AllowedRoots, path: &Path) -> Result<(Arc<Dir>, OsString)> {
    let Some(name) = path.file_name() else {
        return Err(PartialError::NoFileName(path.to_owned()).into());
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = roots.open_dir(parent).map_err(|e| match e.kind() {
        ErrorKind::NotFound => PartialError::MissingParent(parent.to_owned()).into(),
        _ => e,
    })?;
    Ok((Arc::new(dir), name.to_owned()))
}

/// Fails if `name` exists in `dir` (as anything, a link included).
pub fn refuse_existing(dir: &Dir, name: &OsStr) -> Result<()> {
    match dir.stat(name) {
        Ok(_) => Err(PartialError::TargetExists(dir.join(name)).into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::from(e).at_path(dir.join(name))),
    }
}

/// Takes the exclusive lock of `file` without waiting; `false` when a
/// live process holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether `name` in `dir` is still the file `file` is open on.
fn still_named(dir: &Dir, name: &OsStr, file: &File) -> bool {
    match (dir.stat(name), file.metadata()) {
        (Ok(st), Ok(m)) => st.st_dev == m.dev() && st.st_ino == m.ino(),
        _ => false,
    }
}

/// Removes the partial file `name` unless a live transfer holds its lock.
/// A symbolic link at that name is removed (never followed); anything
/// else that is not a regular file is an error.
fn remove_unheld(dir: &Dir, name: &OsStr) -> Result<()> {
    let path = || dir.join(name);
    let io_err = |e: io::Error| Error::from(e).at_path(path());
    let st = match dir.stat(name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(e)),
    };
    if is_symlink(&st) {
        tracing::warn!(path = %path().display(), "removing a symbolic link at a partial file's name");
        return match dir.unlink(name) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(e)),
            _ => Ok(()),
        };
    }
    if !is_file(&st) {
        return Err(PartialError::NotAFile(path()).into());
    }
    // O_NONBLOCK: never wait on whatever was swapped in since the stat.
    let f = match dir.open(name, OFlags::RDONLY | OFlags::NONBLOCK) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(e)),
    };
    if !try_lock(&f).map_err(io_err)? || !still_named(dir, name, &f) {
        return Err(PartialError::InUse(path()).into());
    }
    tracing::info!(path = %path().display(), "removing a partial file no live transfer holds");
    match dir.unlink(name) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(e)),
        _ => Ok(()),
    }
}

/// Removes the partial file of the target `path` unless a live transfer
/// holds it; true when there was one to remove. For a transfer known to
/// have been cut short (a server restarted mid-import).
pub fn remove_stale_of(roots: &AllowedRoots, path: &Path) -> Result<bool> {
    let (dir, name) = target_dir(roots, path)?;
    let mut partial = name;
    partial.push(PARTIAL_SUFFIX);
    match dir.stat(&partial) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        _ => {}
    }
    remove_unheld(&dir, &partial)?;
    Ok(true)
}

/// Removes every `*.partial` file under `root` that no live transfer
/// holds (a process that died mid-transfer left it), without following
/// symbolic links. Returns the paths removed; files that could not be
/// judged are logged and kept.
pub fn remove_stale(root: Dir) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let mut stack = vec![(root, 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let entries = match dir.entries() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %dir.path().display(), error = %e, "cannot list a directory for stale partial files");
                continue;
            }
        };
        for (name, mut kind) in entries {
            // Some file systems do not say in the listing.
            if kind == FileType::Unknown
                && let Ok(st) = dir.stat(&name)
            {
                kind = FileType::from_raw_mode(st.st_mode);
            }
            if kind == FileType::Directory {
                if depth < SWEEP_DEPTH
                    && let Ok(sub) = dir.subdir(&name)
                {
                    stack.push((sub, depth + 1));
                }
                continue;
            }
            let is_partial = name.as_encoded_bytes().ends_with(PARTIAL_SUFFIX.as_bytes());
            if !is_partial || kind == FileType::Symlink {
                continue;
            }
            match remove_unheld(&dir, &name) {
                Ok(()) => removed.push(dir.join(&name)),
                Err(e) => {
                    tracing::info!(path = %dir.join(&name).display(), reason = %e, "partial file kept")
                }
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn any() -> AllowedRoots {
        AllowedRoots::any()
    }

    #[test]
    fn commit_renames() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.raw");
        let (p, f) = PartialFile::create(&any(), &target, Existing::Replace).unwrap();
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
        let (p, f) = PartialFile::create(&any(), &target, Existing::Replace).unwrap();
        let partial = p.partial_path().to_owned();
        assert!(partial.exists());
        drop(p);
        drop(f);
        assert!(!partial.exists());
        assert!(!target.exists());
    }

    #[test]
    fn a_stale_partial_nobody_holds_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.raw");
        let stale = dir.path().join("disk.raw.partial");
        std::fs::write(&stale, b"old").unwrap();
        let (p, f) = PartialFile::create(&any(), &target, Existing::Replace).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0);
        drop(p);
        assert!(!stale.exists());
    }

    #[test]
    fn a_held_partial_is_an_error_naming_it_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.raw");
        let (live, f) = PartialFile::create(&any(), &target, Existing::Replace).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"live", 0).unwrap();
        let e = PartialFile::create(&any(), &target, Existing::Replace).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("another transfer"), "{e}");
        assert!(e.to_string().contains("disk.raw.partial"), "{e}");
        assert_eq!(std::fs::read(live.partial_path()).unwrap(), b"live");
        // The lock outlives the volume's own descriptor.
        drop(f);
        assert!(PartialFile::create(&any(), &target, Existing::Replace).is_err());
        drop(live);
        let (p, _) = PartialFile::create(&any(), &target, Existing::Replace).unwrap();
        drop(p);
    }

    #[test]
    fn a_symlink_at_the_partial_name_is_removed_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let target = dir.path().join("vm.ova");
        symlink(&victim, dir.path().join("vm.ova.partial")).unwrap();
        let (p, f) = PartialFile::create(&any(), &target, Existing::Replace).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"ova", 0).unwrap();
        p.commit().unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let m = std::fs::symlink_metadata(&target).unwrap();
        assert!(m.file_type().is_file(), "the target is a regular file");
        assert_eq!(std::fs::read(&target).unwrap(), b"ova");
    }

    #[test]
    fn keep_refuses_an_existing_target_before_and_at_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("vm.ova");
        std::fs::write(&target, b"old").unwrap();
        let e = PartialFile::create(&any(), &target, Existing::Keep).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert!(!dir.path().join("vm.ova.partial").exists());
        std::fs::remove_file(&target).unwrap();
        let (p, _f) = PartialFile::create(&any(), &target, Existing::Keep).unwrap();
        // A file that appears meanwhile is not replaced by the commit.
        std::fs::write(&target, b"newer").unwrap();
        let e = p.commit().unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"newer");
        assert!(!dir.path().join("vm.ova.partial").exists());
    }

    #[test]
    fn a_second_signal_removes_the_live_partial_files() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _f) =
            PartialFile::create(&any(), &dir.path().join("a.raw"), Existing::Replace).unwrap();
        let partial = p.partial_path().to_owned();
        // What `remove_all_live` does, limited to this test's directory:
        // tests running beside it have live partial files of their own.
        let here = p.dir().path().to_owned();
        remove_live_where(|d| d.path() == here);
        assert!(!partial.exists());
        // Dropped afterwards, it does not remove a name it no longer owns.
        std::fs::write(&partial, b"someone else's").unwrap();
        drop(p);
        assert!(partial.exists());
    }

    #[test]
    fn missing_parent_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("nope");
        let target = parent.join("disk.raw");
        let e = PartialFile::create(&any(), &target, Existing::Replace).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains(&*parent.to_string_lossy()), "{e}");
    }

    #[test]
    fn path_without_file_name_is_rejected() {
        let e = PartialFile::create(&any(), Path::new("/"), Existing::Replace).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn sweep_removes_unheld_partials_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.raw.partial"), b"dead").unwrap();
        std::fs::write(root.join("keep.raw"), b"done").unwrap();
        let (live, _f) =
            PartialFile::create(&any(), &root.join("b.raw"), Existing::Replace).unwrap();
        let roots = AllowedRoots::new(std::slice::from_ref(&root)).unwrap();
        let removed = remove_stale(roots.open_dir(&root).unwrap());
        assert_eq!(removed, vec![root.join("sub/a.raw.partial")]);
        assert!(live.partial_path().exists());
        assert!(root.join("keep.raw").exists());
    }
}
