//! A package read from a pipe, sent again from an earlier offset after a
//! cut: the last [`CLIENT_REPLAY_WINDOW`] bytes read are kept, enough to
//! cover what was in flight when the connection dropped (the server's
//! committed offset trails what was sent by its queues and the sockets').

use std::collections::VecDeque;
use std::io::{self, Read};

use crate::error::{Error, ErrorKind, Result};
use crate::limits::CLIENT_REPLAY_WINDOW;

/// A stream that can be read again from any offset still in its window.
#[derive(Debug)]
pub struct Replay<R> {
    inner: R,
    window: VecDeque<u8>,
    /// Stream offset of `window[0]`.
    base: u64,
    limit: usize,
}

impl<R: Read> Replay<R> {
    /// Wraps `inner`, keeping the last [`CLIENT_REPLAY_WINDOW`] bytes.
    pub fn new(inner: R) -> Self {
        Replay::with_window(inner, CLIENT_REPLAY_WINDOW)
    }

    /// Wraps `inner`, keeping the last `limit` bytes.
    pub fn with_window(inner: R, limit: usize) -> Self {
        Replay {
            inner,
            window: VecDeque::new(),
            base: 0,
            limit,
        }
    }

    /// A reader from stream offset `pos` on: the kept bytes, then the
    /// rest of the stream. An offset already dropped from the window, or
    /// past what was read, is an error.
    pub fn reader_at(&mut self, pos: u64) -> Result<ReplayReader<'_, R>> {
        let end = self.base + self.window.len() as u64;
        if pos < self.base || pos > end {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "the server needs the package from byte {pos}, but a pipe keeps only bytes {}..{end}: send the package again from the start",
                    self.base
                ),
            ));
        }
        Ok(ReplayReader { replay: self, pos })
    }
}

/// Reads a [`Replay`] from an offset; see [`Replay::reader_at`].
#[derive(Debug)]
pub struct ReplayReader<'a, R> {
    replay: &'a mut Replay<R>,
    pos: u64,
}

impl<R: Read> Read for ReplayReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = &mut *self.replay;
        let end = r.base + r.window.len() as u64;
        if self.pos < end {
            let from = (self.pos - r.base) as usize;
            let n = (r.window.len() - from).min(buf.len());
            let (a, b) = r.window.as_slices();
            // The kept bytes are `a` then `b`; copy [from, from + n).
            let mut filled = 0;
            for (part, at) in [(a, 0usize), (b, a.len())] {
                let s = from.max(at);
                let e = (from + n).min(at + part.len());
                if s < e {
                    buf[filled..filled + (e - s)].copy_from_slice(&part[s - at..e - at]);
                    filled += e - s;
                }
            }
            self.pos += n as u64;
            return Ok(n);
        }
        let n = r.inner.read(buf)?;
        r.window.extend(&buf[..n]);
        let over = r.window.len().saturating_sub(r.limit);
        if over > 0 {
            r.window.drain(..over);
            r.base += over as u64;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_again_from_any_offset_in_its_window() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = Replay::with_window(&data[..], 3000);
        let mut first = vec![0u8; 6000];
        r.reader_at(0).unwrap().read_exact(&mut first).unwrap();
        assert_eq!(first, data[..6000]);
        // 3000..6000 is kept; earlier is gone.
        assert!(r.reader_at(2999).is_err());
        assert!(r.reader_at(6001).is_err());
        let mut rest = Vec::new();
        r.reader_at(3500).unwrap().read_to_end(&mut rest).unwrap();
        assert_eq!(rest, data[3500..]);
        let e = r.reader_at(100).unwrap_err();
        assert!(e.to_string().contains("from byte 100"), "{e}");
    }
}
