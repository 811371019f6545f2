//! Opening a relative path beneath a directory descriptor without ever
//! leaving it: `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`
//! where the kernel has it (Linux 5.6), else a walk that opens one
//! component at a time with `O_NOFOLLOW`. Both refuse `..`, absolute
//! paths and every symbolic link on the way, so what is opened is the
//! file that was beneath the directory at the moment of the open, whatever
//! was renamed or swapped for a link since a path was last checked.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Set once `openat2` answered `ENOSYS` (an old kernel, or a seccomp filter
/// that does not know it): later opens go straight to the walk.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// How many times an `openat2` interrupted by a concurrent rename
/// (`EAGAIN`) is tried again before giving up.
const AGAIN_RETRIES: usize = 8;

/// Opens `rel` beneath `dir` with `flags` (`O_CLOEXEC` is added). `rel`
/// must be relative and free of `..`; an empty path or `.` opens `dir`
/// itself. A symbolic link anywhere on the way fails with `ELOOP`, a path
/// that would leave `dir` with `EXDEV`.
pub(super) fn open(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
    mode: Mode,
) -> rustix::io::Result<OwnedFd> {
    check_relative(rel)?;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let flags = flags | OFlags::CLOEXEC;
    // openat2 refuses a mode where nothing is created.
    // (O_TMPFILE includes O_DIRECTORY: test for all of its bits.)
    let mode = if flags.contains(OFlags::CREATE) || flags.contains(OFlags::TMPFILE) {
        mode
    } else {
        Mode::empty()
    };
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(dir, rel, flags, mode, resolve) {
                Ok(fd) => return Ok(fd),
                Err(Errno::NOSYS) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    break;
                }
                Err(Errno::AGAIN) if tries < AGAIN_RETRIES => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }
    walk(dir, rel, flags, mode)
}

/// The fallback: every directory on the way is opened with
/// `O_NOFOLLOW | O_DIRECTORY` relative to the one before, the last
/// component with `O_NOFOLLOW`.
fn walk(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> rustix::io::Result<OwnedFd> {
    let names: Vec<_> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = names.split_last() else {
        return rustix::fs::openat(dir, ".", flags, mode);
    };
    let mut held: Option<OwnedFd> = None;
    for name in parents {
        let at = held.as_ref().map_or(dir, |f| f.as_fd());
        let next = rustix::fs::openat(
            at,
            *name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| symlink_as_loop(at, name, e))?;
        held = Some(next);
    }
    let at = held.as_ref().map_or(dir, |f| f.as_fd());
    rustix::fs::openat(at, *last, flags | OFlags::NOFOLLOW, mode)
}

/// `O_PATH | O_DIRECTORY | O_NOFOLLOW` on a symbolic link says `ENOTDIR`;
/// report it as `openat2` would, `ELOOP`.
fn symlink_as_loop(at: BorrowedFd<'_>, name: &std::ffi::OsStr, e: Errno) -> Errno {
    if e == Errno::NOTDIR
        && let Ok(st) = rustix::fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW)
        && FileType::from_raw_mode(st.st_mode) == FileType::Symlink
    {
        return Errno::LOOP;
    }
    e
}

/// Refuses absolute paths and `..`, which could only lead out.
fn check_relative(rel: &Path) -> rustix::io::Result<()> {
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => {
                return Err(Errno::XDEV);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn root(dir: &Path) -> OwnedFd {
        rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    /// Both the `openat2` path and the walk must give the same answers.
    fn both(dir: &OwnedFd, rel: &str, flags: OFlags) -> [Option<i32>; 2] {
        let a = open(
            dir.as_fd(),
            Path::new(rel),
            flags,
            Mode::from_raw_mode(0o600),
        );
        let b = walk(
            dir.as_fd(),
            Path::new(rel),
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        );
        [
            a.err().map(|e| e.raw_os_error()),
            b.err().map(|e| e.raw_os_error()),
        ]
    }

    #[test]
    fn plain_paths_open_and_links_are_refused_everywhere() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("sub")).unwrap();
        std::fs::write(t.path().join("sub/f"), b"x").unwrap();
        std::fs::write(outside.path().join("f"), b"secret").unwrap();
        symlink(outside.path(), t.path().join("link")).unwrap();
        symlink(outside.path().join("f"), t.path().join("sub/flink")).unwrap();
        symlink("f", t.path().join("sub/inner")).unwrap();
        let dir = root(t.path());
        let loop_ = Some(Errno::LOOP.raw_os_error());
        assert_eq!(both(&dir, "sub/f", OFlags::RDONLY), [None, None]);
        assert_eq!(
            both(&dir, "", OFlags::RDONLY | OFlags::DIRECTORY),
            [None, None]
        );
        assert_eq!(both(&dir, "link/f", OFlags::RDONLY), [loop_, loop_]);
        assert_eq!(both(&dir, "sub/flink", OFlags::RDONLY), [loop_, loop_]);
        // Even a link that stays inside is refused: paths are canonical.
        assert_eq!(both(&dir, "sub/inner", OFlags::RDONLY), [loop_, loop_]);
        // Creating through a linked directory is refused too.
        let create = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL;
        assert_eq!(both(&dir, "link/new", create), [loop_, loop_]);
        assert!(!outside.path().join("new").exists());
    }

    #[test]
    fn dotdot_and_absolute_paths_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = root(t.path());
        for rel in ["../x", "sub/../../x", "/etc/passwd"] {
            let e = open(dir.as_fd(), Path::new(rel), OFlags::RDONLY, Mode::empty()).unwrap_err();
            assert_eq!(e, Errno::XDEV, "{rel}");
        }
    }
}
