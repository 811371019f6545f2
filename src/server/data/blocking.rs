//! Bridges between async request handling and the blocking file and
//! pipeline code: run a closure on the blocking pool, and a `Write` that
//! hands its bytes to a streaming response.

use std::io::{self, Write};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Runs `f` on tokio's blocking pool.
pub(crate) async fn run<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("worker thread failed: {e}")))?
}

/// A `Write` that sends full buffers of `chunk` bytes down a bounded
/// channel to a [`super::super::http::ChannelBody`]; blocks while the
/// client is slower than the producer. Writing fails once the response is
/// gone (the client disconnected).
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
    chunk: usize,
    on_send: Option<Box<dyn FnMut() + Send>>,
    tap: Option<std::sync::mpsc::SyncSender<Bytes>>,
}

impl std::fmt::Debug for ChannelWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelWriter")
            .field("buffered", &self.buf.len())
            .field("chunk", &self.chunk)
            .finish()
    }
}

impl ChannelWriter {
    pub(crate) fn new(tx: mpsc::Sender<io::Result<Bytes>>, chunk: usize) -> Self {
        ChannelWriter {
            tx,
            buf: BytesMut::with_capacity(chunk),
            chunk,
            on_send: None,
            tap: None,
        }
    }

    /// Also hands every buffer to `tap` (shared, not copied) before it
    /// goes to the response; a tap that has gone is left alone.
    pub(crate) fn tap(&mut self, tap: std::sync::mpsc::SyncSender<Bytes>) {
        self.tap = Some(tap);
    }

    /// Calls `f` after each buffer is handed on (progress reports).
    pub(crate) fn on_send(mut self, f: Box<dyn FnMut() + Send>) -> Self {
        self.on_send = Some(f);
        self
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let b = self.buf.split().freeze();
        self.buf.reserve(self.chunk);
        if let Some(t) = &self.tap
            && t.send(b.clone()).is_err()
        {
            self.tap = None;
        }
        self.tx
            .blocking_send(Ok(b))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client disconnected"))?;
        if let Some(f) = self.on_send.as_mut() {
            f();
        }
        Ok(())
    }

    /// Aborts the response: the client sees the connection end early.
    pub(crate) fn abort(self, msg: String) {
        let _ = self.tx.blocking_send(Err(io::Error::other(msg)));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.chunk - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_sends_whole_chunks_then_the_rest_on_flush() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut w = ChannelWriter::new(tx, 4);
        w.write_all(b"abcdefghij").unwrap();
        w.flush().unwrap();
        drop(w);
        let mut got = Vec::new();
        while let Some(b) = rx.blocking_recv() {
            got.push(b.unwrap());
        }
        assert_eq!(got, vec![&b"abcd"[..], &b"efgh"[..], &b"ij"[..]]);
    }

    #[test]
    fn writer_fails_once_the_receiver_is_gone() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut w = ChannelWriter::new(tx, 2);
        let e = w.write_all(b"abcd").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
