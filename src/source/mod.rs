//! Byte sources of a package: a local (or NFS) file, standard input, an
//! `http(s)://` URL ([`http`]) or an object in S3-compatible storage
//! (fetched through a presigned URL).

pub mod http;
pub mod read_ahead;
pub mod url;
pub mod volume;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use rustix::event::{PollFd, PollFlags};

use crate::error::{Error, Result};
use crate::limits;

/// An opened source.
#[allow(missing_debug_implementations)]
pub struct Source {
    /// The bytes.
    pub reader: Box<dyn SourceReader>,
    /// Total size when known (a regular file).
    pub size: Option<u64>,
    /// The path, for error messages; `None` for stdin.
    pub path: Option<PathBuf>,
    /// A descriptor of the same input, to wait on with poll.
    fd: Option<OwnedFd>,
}

/// Opens what `spec` names; a URL's resumptions are counted in `retries`.
pub fn open_spec(spec: &url::SourceSpec, retries: Arc<AtomicU64>) -> Result<Source> {
    match spec {
        url::SourceSpec::Stdin => open("-"),
        url::SourceSpec::File(p) => open_path(p.clone()),
        url::SourceSpec::Http(u) => http::open(u.clone(), retries),
        url::SourceSpec::S3(u) => {
            let signed = crate::s3::presigned_get(u)?;
            http::open_as(signed, u.to_string(), retries)
        }
    }
}

/// Opens `spec`: a path, or `-` for standard input.
pub fn open(spec: &str) -> Result<Source> {
    if spec == "-" {
        // Its own descriptor, unbuffered, so that a wait for input can be
        // watched with poll (see `Source::wake_on`).
        let stdin = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::from(e).with_message("standard input"))?;
        widen_pipe(&stdin);
        let fd = stdin.try_clone().ok();
        return Ok(Source {
            reader: Box::new(File::from(stdin)),
            size: None,
            path: None,
            fd,
        });
    }
    open_path(PathBuf::from(spec))
}

/// Opens the file at `path`.
fn open_path(path: PathBuf) -> Result<Source> {
    let file = File::open(&path).map_err(|e| Error::from(e).at_path(&path))?;
    from_file(file, path)
}

/// A source reading the already opened `file`, named `path` in messages.
pub fn from_file(file: File, path: PathBuf) -> Result<Source> {
    let meta = file.metadata().map_err(|e| Error::from(e).at_path(&path))?;
    let size = meta.is_file().then_some(meta.len());
    let fd = file.as_fd().try_clone_to_owned().ok();
    let reader: Box<dyn SourceReader> = match size {
        Some(len) => {
            let mut file = file;
            let start = file.stream_position().unwrap_or(0);
            Box::new(RegularFile { file, len, start })
        }
        None => Box::new(file),
    };
    Ok(Source {
        reader,
        size,
        path: Some(path),
        fd,
    })
}

impl Source {
    /// Makes a read that waits for input (a pipe that sends nothing) end
    /// as soon as `wake` becomes readable: it then reports the end of the
    /// input, and the pipeline, which was cancelled, says so. Files are
    /// never waited for and read as before.
    pub fn wake_on(mut self, wake: Arc<OwnedFd>) -> Source {
        // Regular files never make a read wait.
        if self.size.is_some() {
            return self;
        }
        let Some(fd) = self.fd.take() else {
            return self;
        };
        Source {
            reader: Box::new(Wakeable {
                inner: self.reader,
                fd,
                wake,
                woken: false,
            }),
            ..self
        }
    }
}

/// A reader that polls its descriptor together with a wake-up descriptor.
struct Wakeable {
    inner: Box<dyn SourceReader>,
    fd: OwnedFd,
    wake: Arc<OwnedFd>,
    woken: bool,
}

/// Waits until `fd` is readable (true) or `wake` is (false, and from then
/// on always false: `woken` remembers it).
/// Whether `fd` has input to read without waiting.
fn readable_now(fd: impl AsFd) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0)
}

fn wait(fd: &OwnedFd, wake: &OwnedFd, woken: &mut bool) -> std::io::Result<bool> {
    loop {
        if *woken {
            return Ok(false);
        }
        let mut fds = [
            PollFd::new(fd, PollFlags::IN),
            PollFd::new(wake, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if !fds[1].revents().is_empty() {
            *woken = true;
            continue;
        }
        if !fds[0].revents().is_empty() {
            return Ok(true);
        }
    }
}

impl Read for Wakeable {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if wait(&self.fd, &self.wake, &mut self.woken)? {
            self.inner.read(buf)
        } else {
            Ok(0)
        }
    }
}

/// Only pipes and terminals are waited on: they are read through, from
/// the descriptor polled (the same open file as the inner reader's, which
/// buffers nothing).
impl SourceReader for Wakeable {
    fn fill(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        let Wakeable {
            fd, wake, woken, ..
        } = self;
        fill_fd(&*fd, buf, true, || wait(fd, wake, woken))
    }
}

/// The bytes of a package source. A reader that can move forward without
/// reading (a regular file) lets a pass that needs only the headers of a
/// package skip the contents of its entries.
pub trait SourceReader: Read + Send {
    /// Appends the next bytes to `buf`, up to its capacity: as many reads
    /// as it takes to fill it, fewer only where the source ends (or, for a
    /// source waited on with [`Source::wake_on`], is woken). Returns how
    /// many bytes were appended; 0 means the end. Bytes appended before an
    /// error stay in `buf`.
    ///
    /// Descriptors read straight into the spare capacity, so a fresh
    /// buffer is written once, by the kernel; other readers zero it first.
    fn fill(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        let start = buf.len();
        let cap = buf.capacity();
        buf.resize(cap, 0);
        let mut at = start;
        let r = loop {
            if at == cap {
                break Ok(());
            }
            match self.read(&mut buf[at..]) {
                Ok(0) => break Ok(()),
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(at);
        r.map(|()| at - start)
    }

    /// Moves back to where the package starts, when this source can;
    /// returns whether it did.
    fn rewind(&mut self) -> std::io::Result<bool> {
        Ok(false)
    }

    /// Whether [`SourceReader::skip`] can ever move this source.
    fn can_skip(&self) -> bool {
        false
    }

    /// Moves `n` bytes forward without reading them, when this source can
    /// and all of them lie before its end; returns whether it did. When it
    /// returns `false` nothing moved, and the bytes are to be read (a pipe,
    /// or a file shorter than the skip, whose end reading reports).
    fn skip(&mut self, _n: u64) -> std::io::Result<bool> {
        Ok(false)
    }
}

/// A file that is not a regular file (a FIFO, a character device) is read
/// through.
impl SourceReader for File {
    fn fill(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        fill_fd(self, buf, true, || Ok(true))
    }
}

/// [`SourceReader::fill`] for a descriptor: reads into `buf`'s spare
/// capacity until it is full or the input ends; `ready` is asked before
/// each read and ends the fill (as if the input ended) when it says no.
/// A `pipe` fills only with what is there: once something was read, the
/// fill ends rather than waits for more, so that a slow writer's bytes
/// reach the import (and its progress) as they come.
fn fill_fd(
    fd: impl AsFd,
    buf: &mut Vec<u8>,
    pipe: bool,
    mut ready: impl FnMut() -> std::io::Result<bool>,
) -> std::io::Result<usize> {
    let start = buf.len();
    while buf.len() < buf.capacity() {
        if pipe && buf.len() > start && !readable_now(&fd) {
            break;
        }
        if !ready()? {
            break;
        }
        match rustix::io::read(&fd, rustix::buffer::spare_capacity(buf)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf.len() - start)
}

impl SourceReader for &[u8] {}

/// Tests and in-memory sources skip as a file does.
impl<T: AsRef<[u8]> + Send> SourceReader for std::io::Cursor<T> {
    fn rewind(&mut self) -> std::io::Result<bool> {
        self.set_position(0);
        Ok(true)
    }

    fn can_skip(&self) -> bool {
        true
    }

    fn skip(&mut self, n: u64) -> std::io::Result<bool> {
        let len = self.get_ref().as_ref().len() as u64;
        match self.position().checked_add(n) {
            Some(to) if to <= len => {
                self.set_position(to);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// A regular file of `len` bytes: skips are seeks.
#[derive(Debug)]
struct RegularFile {
    file: File,
    len: u64,
    /// Where the package starts: the file's position when opened.
    start: u64,
}

impl Read for RegularFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl SourceReader for RegularFile {
    fn fill(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        fill_fd(&self.file, buf, false, || Ok(true))
    }

    fn rewind(&mut self) -> std::io::Result<bool> {
        self.file.seek(SeekFrom::Start(self.start))?;
        Ok(true)
    }

    fn can_skip(&self) -> bool {
        true
    }

    fn skip(&mut self, n: u64) -> std::io::Result<bool> {
        let at = self.file.stream_position()?;
        match at.checked_add(n) {
            Some(to) if to <= self.len => {
                let n = i64::try_from(n).map_err(std::io::Error::other)?;
                self.file.seek(SeekFrom::Current(n))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Grows the kernel buffer of a pipe so each read returns up to 1 MiB
/// instead of 64 KiB. Not a pipe, or not allowed: nothing happens.
fn widen_pipe(fd: &impl AsFd) {
    if let Ok(cur) = rustix::pipe::fcntl_getpipe_size(fd)
        && cur < limits::PIPE_SIZE
    {
        let _ = rustix::pipe::fcntl_setpipe_size(fd, limits::PIPE_SIZE);
    }
}
