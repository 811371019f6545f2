//! Connection wrappers: [`WriteTimeout`] fails a write the peer has not
//! accepted for too long (a client that stops reading a download would
//! otherwise hold its connection, and the transfer behind it, forever);
//! [`ReadReady`] gathers what is ready into one read, so that hyper reads
//! request bodies in large pieces.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `inner` whose writes fail with `TimedOut` after `timeout` without
/// progress. Reads are untouched (request heads and bodies have their own
/// limits).
#[derive(Debug)]
pub struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteTimeout<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Turns a pending write into an error once it has been pending for
    /// the whole timeout; any progress restarts the clock.
    fn watch<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(v) => {
                self.stalled = None;
                Poll::Ready(v)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client accepted no data for {} s", timeout.as_secs()),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, r)
    }
}

/// `inner` whose reads go on while it has bytes ready, up to the space
/// the caller offers. A TLS stream returns at most one record (16 KiB of
/// plaintext) per read; gathered, hyper fills its read buffer (up to
/// `READ_BUFFER`) in one go and hands request bodies on in frames of that
/// size instead of one per record, which is what the import pipeline then
/// works in. A read never waits once it has something; an error after some
/// bytes is kept for the next read.
#[derive(Debug)]
pub struct ReadReady<T> {
    inner: T,
    error: Option<io::Error>,
}

impl<T> ReadReady<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        ReadReady { inner, error: None }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadReady<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.error.take() {
            return Poll::Ready(Err(e));
        }
        let start = buf.filled().len();
        while buf.remaining() > 0 {
            let before = buf.filled().len();
            match Pin::new(&mut self.inner).poll_read(cx, buf) {
                // More may be ready.
                Poll::Ready(Ok(())) if buf.filled().len() > before => {}
                // The end: what was gathered now, the end on the next read.
                Poll::Ready(Ok(())) => break,
                Poll::Ready(Err(e)) if buf.filled().len() > start => {
                    self.error = Some(e);
                    break;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if buf.filled().len() > start => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadReady<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_times_the_write_out() {
        let (a, _b) = tokio::io::duplex(1024);
        let mut w = WriteTimeout::new(a, Duration::from_secs(5));
        // The first KiB fits the pipe; the rest waits for a reader that
        // never comes, and the paused clock runs to the deadline.
        let e = w.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    /// Returns its pieces one per read, each ready at once, then an error
    /// if given, then the end.
    struct Pieces(std::collections::VecDeque<io::Result<Vec<u8>>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.0.pop_front() {
                Some(Ok(mut p)) => {
                    let n = p.len().min(buf.remaining());
                    buf.put_slice(&p[..n]);
                    if n < p.len() {
                        self.0.push_front(Ok(p.split_off(n)));
                    }
                    Poll::Ready(Ok(()))
                }
                Some(Err(e)) => Poll::Ready(Err(e)),
                None => Poll::Ready(Ok(())),
            }
        }
    }

    #[tokio::test]
    async fn ready_bytes_are_gathered_into_one_read() {
        use tokio::io::AsyncReadExt;
        let pieces = [vec![1u8; 1000], vec![2u8; 1000], vec![3u8; 1000]];
        let mut b = ReadReady::new(Pieces(pieces.into_iter().map(Ok).collect()));
        let mut buf = vec![0u8; 2500];
        assert_eq!(b.read(&mut buf).await.unwrap(), 2500);
        assert_eq!(&buf[..1000], &[1u8; 1000][..]);
        assert_eq!(&buf[2000..], &[3u8; 500][..]);
        assert_eq!(b.read(&mut buf).await.unwrap(), 500);
        assert_eq!(b.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn an_error_after_some_bytes_comes_with_the_next_read() {
        use tokio::io::AsyncReadExt;
        let pieces = [Ok(b"abc".to_vec()), Err(io::Error::other("gone"))];
        let mut b = ReadReady::new(Pieces(pieces.into_iter().collect()));
        let mut buf = vec![0u8; 100];
        assert_eq!(b.read(&mut buf).await.unwrap(), 3);
        assert_eq!(b.read(&mut buf).await.unwrap_err().to_string(), "gone");
    }

    #[tokio::test(start_paused = true)]
    async fn progress_keeps_the_write_alive() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = WriteTimeout::new(a, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            while got < 8192 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                got += tokio::io::AsyncReadExt::read(&mut b, &mut buf)
                    .await
                    .unwrap();
            }
            got
        });
        w.write_all(&[1u8; 8192]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 8192);
    }
}
