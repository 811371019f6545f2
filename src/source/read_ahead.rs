//! Reading a source on a thread of its own, ahead of the import.
//!
//! Reading a pipe or a file is a copy the kernel makes on the reading
//! thread (and, from a pipe, a wait on the writer's lock); done inline it
//! adds to the time of every decode and write. [`ReadAhead`] moves the
//! reads to their own thread, which fills [`limits::READ_CHUNK`] buffers
//! and hands them over a channel of [`limits::READ_AHEAD`] chunks, so
//! reading overlaps with the rest.
//!
//! Each buffer is a fresh allocation, freed by whichever stage lets go of
//! it last; the allocator hands the same memory out again. Taking the
//! buffers back explicitly ([`crate::buffers::Recycler`]) was measured
//! against this on a 2 GiB image (943 MB qcow2 and 738 MB VMDK packages,
//! from a file and from a pipe): a third of the page faults, but 0.25 to
//! 0.5 CPU-s more system time per import, nearly all of it in the kernel's
//! copy into the taken-back buffers, and no shorter wall time.
//!
//! The import may stop early (a bad package, a cancellation): it then drops
//! the [`ReadAhead`], and the thread ends once its current read returns and
//! it finds nobody to hand the chunk to.

use std::sync::mpsc::{Receiver, sync_channel};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::limits;
use crate::source::SourceReader;

/// What the reading thread hands over.
#[derive(Debug)]
enum Chunk {
    Data(Bytes),
    End,
    Failed(std::io::Error),
}

/// The chunks of a source, read on a thread of their own.
#[derive(Debug)]
pub struct ReadAhead {
    rx: Receiver<Chunk>,
    ended: bool,
}

impl ReadAhead {
    /// Starts reading `reader` from where it is.
    pub fn start(mut reader: Box<dyn SourceReader>) -> Result<Self> {
        let (tx, rx) = sync_channel(limits::READ_AHEAD);
        std::thread::Builder::new()
            .name("read".into())
            .spawn(move || {
                loop {
                    let mut buf = Vec::with_capacity(limits::READ_CHUNK);
                    let read = reader.fill(&mut buf);
                    if !buf.is_empty() && tx.send(Chunk::Data(Bytes::from(buf))).is_err() {
                        return;
                    }
                    let last = match read {
                        Ok(0) => Chunk::End,
                        Ok(_) => continue,
                        Err(e) => Chunk::Failed(e),
                    };
                    let _ = tx.send(last);
                    return;
                }
            })
            .map_err(|e| Error::internal(format!("cannot start the reading thread: {e}")))?;
        Ok(ReadAhead { rx, ended: false })
    }

    /// The next chunk, in order; `None` at the end of the source. A read
    /// error comes after every chunk read before it.
    pub fn next_chunk(&mut self) -> std::result::Result<Option<Bytes>, std::io::Error> {
        if self.ended {
            return Ok(None);
        }
        match self.rx.recv() {
            Ok(Chunk::Data(b)) => Ok(Some(b)),
            Ok(Chunk::End) => {
                self.ended = true;
                Ok(None)
            }
            Ok(Chunk::Failed(e)) => {
                self.ended = true;
                Err(e)
            }
            // The thread is gone without a word: it panicked.
            Err(_) => {
                self.ended = true;
                Err(std::io::Error::other("the reading thread stopped"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its bytes in reads of at most 3, then fails or ends.
    struct Slow {
        bytes: Vec<u8>,
        at: usize,
        fail: bool,
    }

    impl std::io::Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.bytes.len() && self.fail {
                return Err(std::io::Error::other("disk on fire"));
            }
            let n = buf.len().min(3).min(self.bytes.len() - self.at);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    impl SourceReader for Slow {}

    fn collect(fail: bool, len: usize) -> (Vec<u8>, Option<std::io::Error>) {
        let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut r = ReadAhead::start(Box::new(Slow { bytes, at: 0, fail })).unwrap();
        let mut got = Vec::new();
        loop {
            match r.next_chunk() {
                Ok(Some(b)) => got.extend_from_slice(&b),
                Ok(None) => return (got, None),
                Err(e) => {
                    assert!(r.next_chunk().unwrap().is_none(), "nothing after an error");
                    return (got, Some(e));
                }
            }
        }
    }

    #[test]
    fn every_byte_in_order_then_the_end() {
        let len = 3 * limits::READ_CHUNK + 17;
        let (got, err) = collect(false, len);
        assert!(err.is_none());
        assert_eq!(got.len(), len);
        assert!(got.iter().enumerate().all(|(i, &b)| b == i as u8));
    }

    #[test]
    fn an_error_comes_after_the_bytes_read_before_it() {
        let (got, err) = collect(true, limits::READ_CHUNK + 5);
        assert_eq!(got.len(), limits::READ_CHUNK + 5);
        assert_eq!(err.expect("the read error").to_string(), "disk on fire");
    }

    #[test]
    fn an_empty_source_ends_at_once() {
        let (got, err) = collect(false, 0);
        assert!(got.is_empty() && err.is_none());
    }
}
