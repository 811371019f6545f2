//! Byte sources of a package: a local (or NFS) file, or standard input.

pub mod volume;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Stdin};
use std::path::PathBuf;

use crate::error::{Error, Result};

/// An opened source.
#[allow(missing_debug_implementations)]
pub struct Source {
    /// The bytes.
    pub reader: Box<dyn SourceReader>,
    /// Total size when known (a regular file).
    pub size: Option<u64>,
    /// The path, for error messages; `None` for stdin.
    pub path: Option<PathBuf>,
}

/// Opens `spec`: a path, or `-` for standard input.
pub fn open(spec: &str) -> Result<Source> {
    if spec == "-" {
        widen_pipe(&std::io::stdin());
        return Ok(Source {
            reader: Box::new(std::io::stdin()),
            size: None,
            path: None,
        });
    }
    let path = PathBuf::from(spec);
    let file = File::open(&path).map_err(|e| Error::from(e).at_path(&path))?;
    from_file(file, path)
}

/// A source reading the already opened `file`, named `path` in messages.
pub fn from_file(file: File, path: PathBuf) -> Result<Source> {
    let meta = file.metadata().map_err(|e| Error::from(e).at_path(&path))?;
    let size = meta.is_file().then_some(meta.len());
    let reader: Box<dyn SourceReader> = match size {
        Some(len) => Box::new(RegularFile { file, len }),
        None => Box::new(file),
    };
    Ok(Source {
        reader,
        size,
        path: Some(path),
    })
}

/// The bytes of a package source. A reader that can move forward without
/// reading (a regular file) lets a pass that needs only the headers of a
/// package skip the contents of its entries.
pub trait SourceReader: Read + Send {
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

impl SourceReader for Stdin {}

/// A file that is not a regular file (a FIFO, a character device) is read
/// through.
impl SourceReader for File {}

impl SourceReader for &[u8] {}

/// Tests and in-memory sources skip as a file does.
impl<T: AsRef<[u8]> + Send> SourceReader for std::io::Cursor<T> {
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
}

impl Read for RegularFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl SourceReader for RegularFile {
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

/// Pipe buffer asked for when reading from a pipe: fewer, larger reads.
const PIPE_SIZE: usize = 1 << 20;

/// Grows the kernel buffer of a pipe so each read returns up to 1 MiB
/// instead of 64 KiB. Not a pipe, or not allowed: nothing happens.
fn widen_pipe(fd: &impl std::os::fd::AsFd) {
    if let Ok(cur) = rustix::pipe::fcntl_getpipe_size(fd)
        && cur < PIPE_SIZE
    {
        let _ = rustix::pipe::fcntl_setpipe_size(fd, PIPE_SIZE);
    }
}
