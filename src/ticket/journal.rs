//! Records that outlive the server: one small JSON file per ticket or job
//! in a directory of the state directory, so that a restarted server knows
//! them again.
//!
//! A record is replaced whole and atomically: written under a temporary
//! name (mode 0600), fsynced, renamed over the old one, and the directory
//! fsynced, so a crash at any point leaves either the old record or the
//! new one, never a mix. The directory is mode 0700: ticket records hold
//! ticket ids, which are credentials.
//!
//! Records are written when a ticket or job changes (added, extended,
//! started, finished, removed), never as bytes move, so a transfer's
//! throughput does not depend on the journal. Callers take
//! [`Journal::lock`] around "read the state, write it": two writers then
//! never leave an older state on disk than the one memory holds.

use std::ffi::OsStr;
use std::fs::{DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{Error, Result};
use crate::limits::MAX_JOURNAL_RECORD;

/// Suffix of every record file.
const RECORD_SUFFIX: &str = ".json";
/// Prefix of the temporary file a record is written to before its rename.
const TEMP_PREFIX: &str = ".tmp-";

/// One directory of records.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// The directory, open for the fsync that makes a rename durable.
    handle: File,
    lock: Mutex<()>,
}

/// Held while a caller reads the state it is about to write.
#[derive(Debug)]
pub struct JournalGuard<'a> {
    _held: MutexGuard<'a, ()>,
}

impl Journal {
    /// Opens (creating it, mode 0700) the record directory `dir`. An
    /// existing directory that others may read is narrowed to 0700.
    pub fn open(dir: &Path) -> Result<Journal> {
        let err = |e: io::Error| {
            Error::from(e)
                .at_path(dir)
                .with_message("cannot open the journal directory")
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        let meta = std::fs::metadata(dir).map_err(err)?;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        let handle = File::open(dir).map_err(err)?;
        Ok(Journal {
            dir: dir.to_owned(),
            handle,
            lock: Mutex::new(()),
        })
    }

    /// The record directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Serializes writers; see the module documentation.
    pub fn lock(&self) -> JournalGuard<'_> {
        JournalGuard {
            _held: self.lock.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Replaces the record `name` (a plain file name without the suffix)
    /// with `data`, durably.
    pub fn write(&self, name: &str, data: &[u8]) -> io::Result<()> {
        off_the_runtime(|| {
            let mut tmp = tempfile::Builder::new()
                .prefix(TEMP_PREFIX)
                .tempfile_in(&self.dir)?;
            tmp.write_all(data)?;
            tmp.as_file().sync_all()?;
            tmp.persist(self.path(name)).map_err(|e| e.error)?;
            self.handle.sync_all()
        })
    }

    /// Removes the record `name`, durably; a missing record is no error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        off_the_runtime(|| match std::fs::remove_file(self.path(name)) {
            Ok(()) => self.handle.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
    }

    /// Every record as (name, contents), sorted by name. Temporary files
    /// a crash left are removed; unreadable or oversized records are
    /// logged and skipped (left in place for the operator).
    pub fn load(&self) -> Vec<(String, Vec<u8>)> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list the journal");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if file_name.starts_with(TEMP_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(name) = file_name.strip_suffix(RECORD_SUFFIX) else {
                continue;
            };
            match read_record(&entry.path()) {
                Ok(data) => out.push((name.to_owned(), data)),
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "journal record skipped")
                }
            }
        }
        out.sort();
        out
    }

    fn path(&self, name: &str) -> PathBuf {
        let mut file = name.to_owned();
        file.push_str(RECORD_SUFFIX);
        self.dir.join(OsStr::new(&file))
    }
}

/// Runs file I/O that waits for the disk (two fsyncs, a few
/// milliseconds). Called on a worker of tokio's multi-thread runtime (a
/// control request, a transfer starting or ending), the worker first hands
/// its other tasks to another thread, so that an fsync never holds up
/// requests that have nothing to do with it. Anywhere else (a job's
/// thread, the blocking pool, a single-threaded runtime) it just runs.
fn off_the_runtime<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Reads one record, refusing anything but a regular file of at most
/// [`MAX_JOURNAL_RECORD`] bytes.
fn read_record(path: &Path) -> io::Result<Vec<u8>> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_JOURNAL_RECORD {
        return Err(io::Error::other(format!(
            "larger than {MAX_JOURNAL_RECORD} bytes"
        )));
    }
    let mut data = Vec::new();
    File::open(path)?
        .take(MAX_JOURNAL_RECORD + 1)
        .read_to_end(&mut data)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn records_are_private_replaced_whole_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("journal/tickets");
        let j = Journal::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        j.write("a", b"{\"v\":1}").unwrap();
        j.write("b", b"{}").unwrap();
        j.write("a", b"{\"v\":2}").unwrap();
        assert_eq!(mode(&dir.join("a.json")), 0o600);
        assert_eq!(
            j.load(),
            vec![
                ("a".to_owned(), b"{\"v\":2}".to_vec()),
                ("b".to_owned(), b"{}".to_vec())
            ]
        );
        j.remove("a").unwrap();
        j.remove("a").unwrap();
        assert_eq!(j.load().len(), 1);
        // Nothing but the records is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["b.json"]);
    }

    #[test]
    fn load_drops_temporaries_and_skips_what_is_not_a_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("j");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let j = Journal::open(&dir).unwrap();
        // A directory others could read is narrowed.
        assert_eq!(mode(&dir), 0o700);
        std::fs::write(dir.join(".tmp-crashed"), b"half").unwrap();
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        std::fs::create_dir(dir.join("sub.json")).unwrap();
        let big = File::create(dir.join("big.json")).unwrap();
        big.set_len(MAX_JOURNAL_RECORD + 1).unwrap();
        j.write("ok", b"1").unwrap();
        assert_eq!(j.load(), vec![("ok".to_owned(), b"1".to_vec())]);
        assert!(!dir.join(".tmp-crashed").exists());
        assert!(dir.join("big.json").exists(), "kept for the operator");
    }

    #[test]
    fn writes_from_runtime_threads_of_either_flavour() {
        let tmp = tempfile::tempdir().unwrap();
        let j = std::sync::Arc::new(Journal::open(tmp.path()).unwrap());
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let j2 = j.clone();
        let spawned = multi.spawn(async move {
            j2.write("worker", b"1").unwrap();
            let j3 = j2.clone();
            tokio::task::spawn_blocking(move || j3.write("pool", b"2").unwrap())
                .await
                .unwrap();
            j2.remove("worker").unwrap();
        });
        multi.block_on(spawned).unwrap();
        let single = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        single.block_on(async { j.write("single", b"3").unwrap() });
        let names: Vec<String> = j.load().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["pool", "single"]);
    }
}
