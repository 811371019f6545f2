//! What both APIs share: the body type, responses for errors and JSON,
//! reading request bodies with a size limit and an inactivity timeout, and
//! a streaming response body fed from a blocking thread.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::sync::mpsc;

use super::metrics::Transfer;
use crate::error::{Error, ErrorKind, Result};
use crate::limits;

/// Every response body.
pub type Body = BoxBody<Bytes, io::Error>;
/// Every response.
pub type Response = hyper::Response<Body>;
/// Every request.
pub type Request = hyper::Request<Incoming>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body of these bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A response with no body.
pub fn status(code: StatusCode) -> Response {
    let mut r = hyper::Response::new(empty());
    *r.status_mut() = code;
    r
}

/// A plain-text response: the message and a newline, as ovirt-imageio
/// sends its errors (its client shows the body as the error).
pub fn text(code: StatusCode, msg: &str) -> Response {
    let mut r = hyper::Response::new(full(format!("{msg}\n")));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON response.
pub fn json<T: Serialize>(code: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => {
            let mut r = hyper::Response::new(full(body));
            *r.status_mut() = code;
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The HTTP status for an error kind.
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Auth => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::InvalidArgument
        | ErrorKind::InvalidFormat
        | ErrorKind::CorruptImage
        | ErrorKind::Integrity => StatusCode::BAD_REQUEST,
        ErrorKind::LimitExceeded => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorKind::Cancelled | ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A plain-text error response with the error's one-line message.
pub fn error_text(e: &Error) -> Response {
    text(status_for(e.kind()), &e.one_line())
}

/// Reads a request body of at most `limit` bytes (control requests, PATCH
/// messages), giving up after `idle` without a byte.
pub async fn read_small_body(body: Incoming, limit: usize, idle: Duration) -> Result<Bytes> {
    let mut reader = BodyReader::new(body, idle);
    let mut out = Vec::new();
    while let Some(chunk) = reader.next().await? {
        if out.len() + chunk.len() > limit {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("request body larger than {limit} bytes"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// Reads and discards a request body in the background (up to
/// [`limits::DRAIN_LIMIT`] bytes and [`limits::DRAIN_TIME`]) while the error response goes
/// out. A client that keeps sending past that has its connection closed.
pub fn drain_in_background(body: Incoming) {
    tokio::spawn(async move {
        let mut body = body;
        let mut n = 0u64;
        let _ = tokio::time::timeout(limits::DRAIN_TIME, async {
            while let Some(Ok(f)) = body.frame().await {
                if let Ok(d) = f.into_data() {
                    n += d.len() as u64;
                    if n > limits::DRAIN_LIMIT {
                        break;
                    }
                }
            }
        })
        .await;
    });
}

/// Polls `f` once: its output if ready now, else `None` (and `f` is
/// dropped, which the body reads used here tolerate).
async fn ready_now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Consecutive pieces of a request body.
#[derive(Debug, Default)]
pub struct Batch {
    pieces: Vec<Bytes>,
    len: u64,
}

impl Batch {
    fn push(&mut self, b: Bytes) {
        self.len += b.len() as u64;
        self.pieces.push(b);
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order.
    pub fn into_pieces(self) -> Vec<Bytes> {
        self.pieces
    }

    /// Whether its pieces are under `min` bytes on average.
    pub fn is_small(&self, min: usize) -> bool {
        self.len < (min as u64).saturating_mul(self.pieces.len() as u64)
    }

    /// Moves the pieces of `other` behind these.
    pub fn append(&mut self, other: Batch) {
        self.len += other.len;
        self.pieces.extend(other.pieces);
    }

    /// Joins the pieces into one when they are small (under `min` bytes on
    /// average): an HTTP/2 body arrives in frames of the client's choosing,
    /// often 16 KiB, and what takes the batch (the import, its digest
    /// threads) pays per piece. Large pieces (an HTTP/1.1 body read in
    /// 256 KiB) are left as they are, uncopied.
    pub fn coalesce(&mut self, min: usize) {
        if self.pieces.len() < 2 || !self.is_small(min) {
            return;
        }
        let mut joined = bytes::BytesMut::with_capacity(self.len as usize);
        for p in self.pieces.drain(..) {
            joined.extend_from_slice(&p);
        }
        self.pieces.push(joined.freeze());
    }

    /// Drops the first `n` bytes (all of them when there are fewer): what
    /// a resumed upload sends again of what was already committed.
    pub fn skip_front(&mut self, n: u64) {
        let mut left = n;
        self.pieces.retain_mut(|p| {
            let k = left.min(p.len() as u64);
            let _ = p.split_to(k as usize);
            left -= k;
            !p.is_empty()
        });
        self.len -= n.min(self.len);
    }

    /// Keeps the first `len` bytes (all of them when there are fewer).
    pub fn truncate(&mut self, len: u64) {
        let mut left = len;
        self.pieces.retain_mut(|p| {
            let keep = left.min(p.len() as u64);
            p.truncate(keep as usize);
            left -= keep;
            !p.is_empty()
        });
        self.len = self.len.min(len);
    }
}

/// Reads a streamed request body chunk by chunk; a client silent for
/// longer than the idle limit, or gone, is an error.
#[derive(Debug)]
pub struct BodyReader {
    body: Incoming,
    idle: Option<Duration>,
    received: u64,
    cancel: Option<Arc<AtomicBool>>,
    /// An error met while gathering a batch, reported by the next call.
    failed: Option<Error>,
    /// The end was met while gathering a batch.
    ended: bool,
}

impl BodyReader {
    /// Reads `body`; `idle` zero means no limit.
    pub fn new(body: Incoming, idle: Duration) -> Self {
        BodyReader {
            body,
            idle: (!idle.is_zero()).then_some(idle),
            received: 0,
            cancel: None,
            failed: None,
            ended: false,
        }
    }

    /// Stops reading, with a `Cancelled` error, once `flag` is set (the
    /// ticket was removed), even while the client sends nothing.
    pub fn cancelled_by(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn cancelled(&self) -> Error {
        Error::new(
            ErrorKind::Cancelled,
            format!("transfer cancelled after {} bytes", self.received),
        )
    }

    /// The next frame, watching the cancellation flag while waiting.
    async fn frame(&mut self) -> Result<Option<std::result::Result<Frame<Bytes>, hyper::Error>>> {
        if self.cancel.is_none() {
            return Ok(self.body.frame().await);
        }
        let mut tick = tokio::time::interval(limits::CANCEL_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.is_cancelled() {
                return Err(self.cancelled());
            }
            tokio::select! {
                f = self.body.frame() => return Ok(f),
                _ = tick.tick() => {}
            }
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The rest of the body, unread.
    pub fn into_body(self) -> Incoming {
        self.body
    }

    /// The next piece of the body, `None` at its end: one frame, joined
    /// by the frames already received behind it up to `want` bytes, so
    /// that what follows (a disk write, the import pipeline) is handed
    /// large batches; never waits for more than one frame, never copies.
    pub async fn next_batch(&mut self, want: usize) -> Result<Option<Batch>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let Some(first) = self.next().await? else {
            return Ok(None);
        };
        let mut batch = Batch::default();
        batch.push(first);
        // Frames already here are taken without a timer; the end, an
        // error or a cancellation is left for the next call to meet.
        while batch.len() < want as u64 && !self.ended && !self.is_cancelled() {
            let Some(frame) = ready_now(self.body.frame()).await else {
                break;
            };
            match self.step(frame) {
                Ok(Step::Data(b)) => batch.push(b),
                Ok(Step::Skip) => {}
                Ok(Step::End) => self.ended = true,
                Err(e) => {
                    self.failed = Some(e);
                    break;
                }
            }
        }
        Ok(Some(batch))
    }

    /// The next data chunk, `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        loop {
            if self.ended {
                return Ok(None);
            }
            if self.is_cancelled() {
                return Err(self.cancelled());
            }
            // A frame that is already here needs no timer; under load
            // (an HTTP/2 upload arrives in 16 KiB frames) most are.
            let frame = match (ready_now(self.body.frame()).await, self.idle) {
                (Some(f), _) => f,
                (None, Some(idle)) => match tokio::time::timeout(idle, self.frame()).await {
                    Ok(f) => f?,
                    Err(_) => {
                        return Err(Error::new(
                            ErrorKind::Cancelled,
                            format!(
                                "client sent nothing for {} s after {} bytes",
                                idle.as_secs(),
                                self.received
                            ),
                        ));
                    }
                },
                (None, None) => self.frame().await?,
            };
            match self.step(frame)? {
                Step::Data(b) => return Ok(Some(b)),
                Step::Skip => {}
                Step::End => self.ended = true,
            }
        }
    }

    /// What one polled frame gives.
    fn step(
        &mut self,
        frame: Option<std::result::Result<Frame<Bytes>, hyper::Error>>,
    ) -> Result<Step> {
        let Some(frame) = frame else {
            return Ok(Step::End);
        };
        let frame = frame.map_err(|e| {
            Error::new(
                ErrorKind::Cancelled,
                format!("client connection lost after {} bytes: {e}", self.received),
            )
        })?;
        match frame.into_data() {
            Ok(data) if !data.is_empty() => {
                self.received += data.len() as u64;
                Ok(Step::Data(data))
            }
            // An empty data frame, or trailers.
            _ => Ok(Step::Skip),
        }
    }
}

/// What one frame of a request body gives.
enum Step {
    Data(Bytes),
    /// Nothing to hand on: an empty data frame, or trailers.
    Skip,
    End,
}

/// A response body fed through a bounded channel, typically by a blocking
/// thread reading a volume. An `Err` item aborts the response (the client
/// sees the connection close before `Content-Length` bytes).
///
/// With a [`Transfer`], the body is where a download's bytes are counted
/// (as each frame is handed to the connection, so a buffer still queued
/// when the client leaves is not) and where it ends: completed with its
/// last byte, abandoned when the connection drops the body before that.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    remaining: Option<u64>,
    transfer: Option<Transfer>,
}

impl ChannelBody {
    /// A body of exactly `len` bytes when given, read from `rx`.
    pub fn new(rx: mpsc::Receiver<io::Result<Bytes>>, len: Option<u64>) -> Self {
        ChannelBody {
            rx,
            remaining: len,
            transfer: None,
        }
    }

    /// Counts the body's bytes into `t` and ends it with the body.
    pub fn with_transfer(mut self, t: Transfer) -> Self {
        t.hand_off();
        self.transfer = Some(t);
        self
    }
}

impl Drop for ChannelBody {
    fn drop(&mut self) {
        // Ended already when the last byte went out or the producer
        // failed; otherwise the connection let go of the body early.
        if let Some(t) = &self.transfer {
            t.abandon();
        }
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                if let Some(r) = self.remaining.as_mut() {
                    *r = r.saturating_sub(b.len() as u64);
                }
                if let Some(t) = &self.transfer {
                    t.count(b.len() as u64);
                    // hyper asks no further once the length is reached.
                    if self.remaining == Some(0) {
                        t.succeed();
                    }
                }
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => {
                // The producer has said why, where it knew; this is the
                // fallback.
                if let Some(t) = &self.transfer {
                    t.fail_kind(ErrorKind::Io);
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => match self.remaining {
                Some(r) if r > 0 => {
                    if let Some(t) = &self.transfer {
                        t.fail_kind(ErrorKind::Io);
                    }
                    Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("response ended {r} bytes short"),
                    ))))
                }
                _ => {
                    if let Some(t) = &self.transfer {
                        t.succeed();
                    }
                    Poll::Ready(None)
                }
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(r) => SizeHint::with_exact(r),
            None => SizeHint::default(),
        }
    }
}

/// A streaming response of `len` bytes (when known) from `rx`; the body
/// counts and ends `transfer` (see [`ChannelBody`]).
pub fn streaming(
    code: StatusCode,
    rx: mpsc::Receiver<io::Result<Bytes>>,
    len: Option<u64>,
    transfer: Option<Transfer>,
) -> Response {
    let mut body = ChannelBody::new(rx, len);
    if let Some(t) = transfer {
        body = body.with_transfer(t);
    }
    let mut r = hyper::Response::new(body.boxed());
    *r.status_mut() = code;
    if let Some(len) = len {
        r.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    r
}

/// A 431 response when the request line and headers exceed `limit`
/// bytes (counted as sent: name, `: `, value, CRLF).
pub fn head_too_large(req: &Request, limit: usize) -> Option<Response> {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    let size = req.headers().iter().fold(line, |acc, (n, v)| {
        acc.saturating_add(n.as_str().len() + v.len() + 4)
    });
    (size > limit).then(|| {
        let r = text(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!("request head of {size} bytes is larger than the limit of {limit}"),
        );
        // The body (if any) is not read: the connection cannot be reused.
        let mut r = r;
        r.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        r
    })
}

/// A 501 when the request's body carries a transfer coding the server
/// does not decode (RFC 9112 §6.1). Only `chunked` alone is decoded, by
/// hyper. hyper answers 400 itself when `chunked` is missing or not last,
/// but with `gzip, chunked` it removes only the chunked framing and passes
/// the still-compressed bytes on as the body, which a handler would write
/// as if they were plain. The caller reads the refused body away, so a
/// client still sending reads the answer.
pub fn unknown_transfer_coding(req: &Request) -> Option<Response> {
    let codings = unknown_codings(req.headers())?;
    Some(text(
        StatusCode::NOT_IMPLEMENTED,
        &format!(
            "Transfer-Encoding '{codings}' is not implemented: send the body with a Content-Length or with Transfer-Encoding: chunked alone"
        ),
    ))
}

/// Every transfer coding named, in order, when they are anything other
/// than `chunked` once; `None` for a request without codings or with
/// `chunked` alone. Empty list elements are ignored (RFC 9110 §5.6.1).
fn unknown_codings(headers: &http::HeaderMap) -> Option<String> {
    let mut codings = Vec::new();
    for v in headers.get_all(http::header::TRANSFER_ENCODING) {
        let Ok(v) = v.to_str() else {
            return Some(String::from_utf8_lossy(v.as_bytes()).into_owned());
        };
        codings.extend(v.split(',').map(str::trim).filter(|c| !c.is_empty()));
    }
    match codings.as_slice() {
        [] => None,
        [c] if c.eq_ignore_ascii_case("chunked") => None,
        _ => Some(codings.join(", ")),
    }
}

/// The value of a header as text, if present and visible ASCII.
pub fn header(req: &http::request::Parts, name: http::header::HeaderName) -> Option<&str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    fn codings(values: &[&[u8]]) -> Option<String> {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(
                http::header::TRANSFER_ENCODING,
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        unknown_codings(&h)
    }

    #[test]
    fn only_chunked_alone_is_a_known_transfer_coding() {
        assert_eq!(codings(&[]), None);
        for ok in [
            &[&b"chunked"[..]][..],
            &[b"Chunked"],
            &[b"  CHUNKED\t"],
            &[b", chunked"],
            &[b"", b"chunked"],
        ] {
            assert_eq!(codings(ok), None, "{ok:?}");
        }
        assert_eq!(
            codings(&[b"gzip, chunked"]).as_deref(),
            Some("gzip, chunked")
        );
        assert_eq!(
            codings(&[b"gzip", b"chunked"]).as_deref(),
            Some("gzip, chunked")
        );
        assert_eq!(
            codings(&[b"chunked, chunked"]).as_deref(),
            Some("chunked, chunked")
        );
        assert_eq!(
            codings(&[b"x-custom;q=1, chunked"]).as_deref(),
            Some("x-custom;q=1, chunked")
        );
        assert_eq!(codings(&[b"identity"]).as_deref(), Some("identity"));
        assert!(codings(&[b"gz\xffip, chunked"]).is_some());
    }

    #[test]
    fn kinds_map_to_imageio_statuses() {
        assert_eq!(status_for(ErrorKind::Auth), StatusCode::FORBIDDEN);
        assert_eq!(status_for(ErrorKind::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(status_for(ErrorKind::Integrity), StatusCode::BAD_REQUEST);
        assert_eq!(status_for(ErrorKind::Io), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(status_for(ErrorKind::Conflict), StatusCode::CONFLICT);
        assert_eq!(
            status_for(ErrorKind::LimitExceeded),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn a_batch_truncates_inside_a_piece() {
        let mut b = Batch::default();
        for p in [&b"abc"[..], b"defg", b"hi"] {
            b.push(Bytes::from_static(p));
        }
        b.truncate(5);
        assert_eq!(b.len(), 5);
        assert_eq!(b.into_pieces(), [&b"abc"[..], b"de"]);

        let mut b = Batch::default();
        b.push(Bytes::from_static(b"abc"));
        b.truncate(10);
        assert_eq!(b.len(), 3);
        b.truncate(0);
        assert!(b.is_empty() && b.into_pieces().is_empty());

        let mut b = Batch::default();
        for p in [&b"abc"[..], b"defg", b"hi"] {
            b.push(Bytes::from_static(p));
        }
        b.skip_front(4);
        assert_eq!(b.len(), 5);
        assert_eq!(b.into_pieces(), [&b"efg"[..], b"hi"]);
        let mut b = Batch::default();
        for p in [&b"ab"[..], b"cd", b"e"] {
            b.push(Bytes::from_static(p));
        }
        b.coalesce(4);
        assert_eq!(b.len(), 5);
        assert_eq!(b.into_pieces(), [&b"abcde"[..]]);
        let mut b = Batch::default();
        for p in [&b"abcd"[..], b"efgh"] {
            b.push(Bytes::from_static(p));
        }
        b.coalesce(4);
        assert_eq!(b.into_pieces(), [&b"abcd"[..], b"efgh"]);

        let mut b = Batch::default();
        b.push(Bytes::from_static(b"abc"));
        b.skip_front(10);
        assert!(b.is_empty() && b.into_pieces().is_empty());
    }

    #[tokio::test]
    async fn channel_body_reports_a_short_stream() {
        let (tx, rx) = mpsc::channel(2);
        tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
        drop(tx);
        let body = ChannelBody::new(rx, Some(5));
        assert_eq!(body.size_hint().exact(), Some(5));
        let err = body.collect().await.unwrap_err();
        assert!(err.to_string().contains("2 bytes short"), "{err}");

        let (tx, rx) = mpsc::channel(2);
        tx.send(Ok(Bytes::from_static(b"abcde"))).await.unwrap();
        drop(tx);
        let got = ChannelBody::new(rx, Some(5)).collect().await.unwrap();
        assert_eq!(got.to_bytes(), Bytes::from_static(b"abcde"));
    }
}
