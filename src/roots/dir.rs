//! [`Dir`]: an open directory under which files are created, renamed,
//! locked and removed by name. Once a directory is open, swapping it or
//! one of its parents for a symbolic link changes nothing: every name is
//! resolved in the directory that was opened, never through a link.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat};
use rustix::io::Errno;

/// An open directory and the path it was opened by (for messages only).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Mode of files ovaio creates (before the umask): owner and group.
const FILE_MODE: u32 = 0o660;

impl Dir {
    pub(super) fn new(fd: OwnedFd, path: PathBuf) -> Self {
        Dir { fd, path }
    }

    /// The path the directory was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside this directory, for messages.
    pub fn join(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    /// Creates `name`, which must not exist (not even as a symbolic link),
    /// opened for reading and writing.
    pub fn create_new(&self, name: &OsStr) -> io::Result<File> {
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        self.openat(name, flags, Mode::from_raw_mode(FILE_MODE))
    }

    /// Opens the existing `name` with `flags`; a symbolic link is refused
    /// (`ELOOP`), never followed.
    pub fn open(&self, name: &OsStr, flags: OFlags) -> io::Result<File> {
        self.openat(
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }

    fn openat(&self, name: &OsStr, flags: OFlags, mode: Mode) -> io::Result<File> {
        check_name(name)?;
        Ok(File::from(rustix::fs::openat(&self.fd, name, flags, mode)?))
    }

    /// `lstat` of `name`.
    pub fn stat(&self, name: &OsStr) -> io::Result<Stat> {
        check_name(name)?;
        Ok(rustix::fs::statat(
            &self.fd,
            name,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Removes the file (or symbolic link) `name`.
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        check_name(name)?;
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// Renames `from` to `to` inside this directory, replacing `to`.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        check_name(from)?;
        check_name(to)?;
        Ok(rustix::fs::renameat(&self.fd, from, &self.fd, to)?)
    }

    /// Renames `from` to `to` inside this directory unless `to` exists
    /// (`AlreadyExists`). File systems without `RENAME_NOREPLACE` get a
    /// check before an ordinary rename.
    pub fn rename_new(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        check_name(from)?;
        check_name(to)?;
        match rustix::fs::renameat_with(&self.fd, from, &self.fd, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => match self.stat(to) {
                Ok(_) => Err(Errno::EXIST.into()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.rename(from, to),
                Err(e) => Err(e),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Makes renames and removals in this directory durable.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
    }

    /// Opens the subdirectory `name`; a symbolic link is not followed.
    pub fn subdir(&self, name: &OsStr) -> io::Result<Dir> {
        let f = self.open(name, OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok(Dir::new(OwnedFd::from(f), self.join(name)))
    }

    /// The names in this directory (without `.` and `..`) and their types
    /// as the directory reports them (`Unknown` on some file systems).
    pub fn entries(&self) -> io::Result<Vec<(OsString, FileType)>> {
        use std::os::unix::ffi::OsStrExt;
        let mut out = Vec::new();
        for e in rustix::fs::Dir::read_from(&self.fd)? {
            let e = e?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            out.push((OsStr::from_bytes(name).to_owned(), e.file_type()));
        }
        Ok(out)
    }

    /// An anonymous file in this directory, gone when closed: `O_TMPFILE`
    /// where the file system has it, else a new random name removed at once.
    pub fn tempfile(&self) -> io::Result<File> {
        let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
        match rustix::fs::openat(&self.fd, ".", flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => return Ok(File::from(fd)),
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        for _ in 0..16 {
            let name = OsString::from(format!(".ovaio-spool-{:016x}", random_u64()));
            match self.create_new(&name) {
                Ok(f) => {
                    self.unlink(&name)?;
                    return Ok(f);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary name",
        ))
    }
}

/// Whether `st` describes a symbolic link.
pub fn is_symlink(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Symlink
}

/// Whether `st` describes a regular file.
pub fn is_file(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
}

/// A name is one path component: never a path that could lead elsewhere.
fn check_name(name: &OsStr) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{}' is not a plain file name", name.to_string_lossy()),
        ));
    }
    Ok(())
}

/// Unpredictable enough for a temporary name: the std hasher is seeded
/// randomly per process, mixed with the time and a counter.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}
