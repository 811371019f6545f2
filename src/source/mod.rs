//! Byte sources of a package: a local (or NFS) file, or standard input.

pub mod volume;

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// An opened source.
#[allow(missing_debug_implementations)]
pub struct Source {
    /// The bytes.
    pub reader: Box<dyn Read + Send>,
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
    Ok(Source {
        reader: Box::new(file),
        size,
        path: Some(path),
    })
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
