//! `image` tickets: ovirt-imageio's ranged reads and writes on a volume —
//! a raw file's bytes, or the guest view of a qcow2 image, as imageio's
//! nbd backend serves one. Everything below HTTP is the volume layer's
//! ([`crate::volume`]); this module parses requests and shapes answers.
//!
//! * `GET` — the whole volume (200) or one `Range` (206, `Content-Range`),
//!   416 with `Content-Range: bytes */size` when the range is outside.
//! * `PUT` — the body at the `Content-Range` start (or 0); Content-Length
//!   or chunked; `?flush=n` skips the flush; 200.
//! * `PATCH` — `{"op": "zero", "offset", "size", "flush"}` or
//!   `{"op": "flush"}`; 200.
//! * `GET …/extents?context=zero` — the allocation map as imageio's
//!   `{start, length, zero, hole}` list.
//!
//! Volume I/O runs on the blocking pool; request bodies and responses move
//! through channels of `queue_depth` buffers, so memory per request is
//! bounded whatever its length. Requests on one file share one open
//! volume ([`Registry`]).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::checksum::{self, Options};
use super::{Meter, blocking};
use crate::error::{Error, ErrorKind, Result};
use crate::limits;
use crate::roots::AllowedRoots;
use crate::server::config::DataConfig;
use crate::server::http::{self as h, Batch, BodyReader, Request, Response};
use crate::server::metrics::Op;
use crate::server::range::{self, ByteRange, RangeError};
use crate::ticket::{Op as TicketOp, TicketHandle};
use crate::volume::{
    Extent as VolumeExtent, Extents, Flush, OpenOptions, ReadAt, Registry, Size, Volume, Zero,
};

/// What an `image` request needs besides the ticket: where volumes may be
/// opened and the volumes already open.
#[derive(Debug, Clone)]
pub(super) struct Volumes {
    pub(super) roots: AllowedRoots,
    pub(super) registry: Arc<Registry>,
}

fn volume_path(t: &TicketHandle) -> Result<PathBuf> {
    t.path().map(Path::to_path_buf).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidArgument,
            "the ticket names no volume (url)",
        )
    })
}

fn idle(t: &TicketHandle) -> Duration {
    Duration::from_secs(t.inactivity_timeout())
}

impl Volumes {
    /// Opens the ticket's volume beneath its storage root (the path is the
    /// canonical one the ticket was accepted with; a symbolic link anywhere
    /// on it now is refused, never followed), in the format the ticket was
    /// accepted with, sharing the volume other requests have open. A
    /// write ticket opens it for writing even to read it, so that its
    /// readers and writers share one qcow2 image's caches; with `create`,
    /// a raw volume that does not exist yet is created, sized to the
    /// ticket's `size`.
    /// The ticket's volume as its requests share it, for what `OPTIONS`
    /// says of a remote one.
    pub(super) async fn open_for_options(&self, t: &TicketHandle) -> Result<Arc<Volume>> {
        self.open(t, false).await
    }

    async fn open(&self, t: &TicketHandle, create: bool) -> Result<Arc<Volume>> {
        let write = t.ops().contains(&TicketOp::Write);
        if let Some(url) = t.net() {
            // An NBD export or a remote volume: connected to (or shared)
            // by URL, not a path.
            let (this, url) = (self.clone(), url.clone());
            return blocking::run(move || this.registry.open_net(&url, write)).await;
        }
        let path = volume_path(t)?;
        let opts = OpenOptions {
            format: t.format(),
            write,
            create: if write && create { t.size() } else { None },
        };
        let this = self.clone();
        blocking::run(move || this.registry.open(&this.roots, &path, &opts)).await
    }
}

/// The response for a bad `Range`/`Content-Range`/query: 416 with
/// `Content-Range: bytes */size` when outside the resource.
pub(super) fn range_error(e: RangeError) -> Response {
    match e {
        RangeError::Unsatisfiable { size } => {
            unsatisfiable(size, "requested range not satisfiable")
        }
        e => h::error_text(&Error::from(e)),
    }
}

fn unsatisfiable(size: u64, msg: &str) -> Response {
    let mut r = h::text(StatusCode::RANGE_NOT_SATISFIABLE, msg);
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        r.headers_mut().insert(CONTENT_RANGE, v);
    }
    r
}

/// `GET /images/{ticket}`.
pub(super) async fn get(
    t: TicketHandle,
    req: Request,
    volumes: &Volumes,
    cfg: &DataConfig,
    meter: &mut Meter,
) -> Result<Response> {
    let transfer = meter.start(Op::Read);
    let (parts, _) = req.into_parts();
    let volume = volumes.open(&t, false).await?;
    let size = volume.size();
    let (code, range) = match h::header(&parts, RANGE) {
        Some(v) => match range::parse_range(v, size) {
            Ok(r) => (StatusCode::PARTIAL_CONTENT, Some(r)),
            Err(e) => return Ok(range_error(e)),
        },
        None => (StatusCode::OK, None),
    };
    let (start, len) = match range {
        Some(r) => (r.start, r.len()),
        None => (0, size),
    };
    let t_filename = t.request().filename.clone();
    let (tx, rx) = mpsc::channel(cfg.queue_depth);
    let chunk = cfg.buffer_size;
    let cancel = t.progress().cancel_flag();
    let producer = transfer.clone();
    tokio::task::spawn_blocking(move || {
        let mut off = start;
        let end = start + len;
        while off < end {
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                producer.fail_kind(ErrorKind::Cancelled);
                let _ = tx.blocking_send(Err(io::Error::other("ticket cancelled")));
                return;
            }
            let n = (end - off).min(chunk as u64) as usize;
            let mut buf = BytesMut::zeroed(n);
            if let Err(e) = volume.read_at(off, &mut buf) {
                tracing::warn!(offset = off, error = %e.one_line(), "read failed");
                producer.fail_kind(e.kind());
                let _ = tx.blocking_send(Err(io::Error::other(e.one_line())));
                return;
            }
            if tx.blocking_send(Ok(buf.freeze())).is_err() {
                tracing::info!(offset = off, "client went away during a read");
                return;
            }
            t.add_transferred(n as u64);
            off += n as u64;
        }
    });
    let mut r = h::streaming(code, rx, Some(len), Some(transfer));
    let hd = r.headers_mut();
    hd.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(ByteRange { start, end }) = range
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}"))
    {
        hd.insert(CONTENT_RANGE, v);
    }
    if range.is_none() {
        add_disposition(&mut r, t_filename.as_deref());
    }
    Ok(r)
}

/// `PUT /images/{ticket}`.
pub(super) async fn put(
    t: TicketHandle,
    req: Request,
    volumes: &Volumes,
    cfg: &DataConfig,
    meter: &mut Meter,
) -> Result<Response> {
    let received = meter.start(Op::Write).counter();
    let (parts, body) = req.into_parts();
    let query = match range::parse_query(parts.uri.query()) {
        Ok(q) => q,
        Err(e) => return Ok(range_error(e)),
    };
    let flush = query.flush.unwrap_or(true);
    let length: Option<u64> = match h::header(&parts, CONTENT_LENGTH) {
        Some(v) => Some(v.trim().parse().map_err(|_| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("bad Content-Length '{v}'"),
            )
        })?),
        None => None,
    };
    let offset = match h::header(&parts, CONTENT_RANGE) {
        Some(v) => {
            let cr = match range::parse_content_range(v) {
                Ok(cr) => cr,
                Err(e) => return Ok(range_error(e)),
            };
            if let Some(len) = length
                && len != cr.range.len()
            {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "Content-Range {v} covers {} bytes but Content-Length is {len}",
                        cr.range.len()
                    ),
                ));
            }
            cr.range.start
        }
        None => 0,
    };
    let volume = volumes.open(&t, true).await?;
    let size = volume.size();
    if let Some(len) = length
        && offset.checked_add(len).is_none_or(|end| end > size)
    {
        h::drain_in_background(body);
        return Ok(unsatisfiable(
            size,
            &format!(
                "writing {len} bytes at offset {offset} would pass the end of the {size}-byte image"
            ),
        ));
    }
    // The writer thread: whole blocks (O_DIRECT on a raw file where the
    // file system allows it) or whole clusters; the flush comes after.
    let (tx, mut rx) = mpsc::channel::<Batch>(cfg.queue_depth);
    let v = volume.clone();
    let chunk = cfg.buffer_size;
    let writer = tokio::task::spawn_blocking(move || -> Result<u64> {
        if let (Volume::Imageio(remote), Some(len)) = (&*v, length) {
            // A remote volume: the client's request forwarded as one,
            // streamed as it arrives.
            let mut body = BatchReader::new(&mut rx, received.as_ref());
            remote.put_stream(offset, len, &mut body)?;
            return Ok(body.total());
        }
        let mut w = v.stream_writer(offset, chunk)?;
        // Bytes count once the file has them, not while the writer
        // holds them for an aligned block.
        let mut counted = offset;
        let mut count = |through: u64| {
            if let Some(c) = &received {
                c.inc_by(through - counted);
            }
            counted = through;
        };
        while let Some(batch) = rx.blocking_recv() {
            for b in batch.into_pieces() {
                w.write(&b)?;
                count(w.written_through());
            }
        }
        let end = w.finish()?;
        count(end);
        Ok(end - offset)
    });
    let mut reader = BodyReader::new(body, idle(&t)).cancelled_by(t.progress().cancel_flag());
    let mut sent = 0u64;
    let mut failure = None;
    loop {
        match reader.next_batch(cfg.buffer_size).await {
            Ok(Some(b)) => {
                let end = offset + sent + b.len();
                if end > size {
                    failure = Some(Err(unsatisfiable(
                        size,
                        &format!(
                            "the body passes the end of the {size}-byte image at offset {end}"
                        ),
                    )));
                    break;
                }
                sent += b.len();
                t.add_transferred(b.len());
                if tx.send(b).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                failure = Some(Ok(e));
                break;
            }
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| Error::internal(format!("writer thread failed: {e}")))??;
    match failure {
        Some(Err(resp)) => return Ok(resp),
        Some(Ok(e)) => {
            tracing::info!(offset, written, error = %e.one_line(), "upload interrupted");
            return Err(e);
        }
        None => {}
    }
    blocking::run(move || {
        if flush {
            volume.flush()?;
        }
        // The last request on a volume closes it here, off the runtime.
        drop(volume);
        Ok(())
    })
    .await?;
    tracing::debug!(offset, written, flush, "write done");
    Ok(h::status(StatusCode::OK))
}

/// The batches of a request body as one byte stream, counted as they
/// are read.
struct BatchReader<'a> {
    rx: &'a mut mpsc::Receiver<Batch>,
    pieces: std::collections::VecDeque<bytes::Bytes>,
    received: Option<&'a prometheus_client::metrics::counter::Counter>,
    total: u64,
}

impl<'a> BatchReader<'a> {
    fn new(
        rx: &'a mut mpsc::Receiver<Batch>,
        received: Option<&'a prometheus_client::metrics::counter::Counter>,
    ) -> Self {
        BatchReader {
            rx,
            pieces: std::collections::VecDeque::new(),
            received,
            total: 0,
        }
    }

    fn total(&self) -> u64 {
        self.total
    }
}

impl Read for BatchReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(p) = self.pieces.front_mut() {
                let n = p.len().min(buf.len());
                buf[..n].copy_from_slice(&p[..n]);
                bytes::Buf::advance(p, n);
                if p.is_empty() {
                    self.pieces.pop_front();
                }
                self.total += n as u64;
                if let Some(c) = self.received {
                    c.inc_by(n as u64);
                }
                return Ok(n);
            }
            match self.rx.blocking_recv() {
                Some(b) => self.pieces.extend(b.into_pieces()),
                None => return Ok(0),
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum PatchOp {
    Zero {
        offset: u64,
        size: u64,
        #[serde(default)]
        flush: bool,
    },
    Flush,
}

/// `PATCH /images/{ticket}`.
pub(super) async fn patch(
    t: TicketHandle,
    req: Request,
    volumes: &Volumes,
    meter: &mut Meter,
) -> Result<Response> {
    let (_, body) = req.into_parts();
    let idle = idle(&t);
    let body = h::read_small_body(
        body,
        limits::MAX_PATCH_BODY,
        if idle.is_zero() {
            limits::PATCH_BODY_IDLE
        } else {
            idle
        },
    )
    .await?;
    let op: PatchOp = serde_json::from_slice(&body).map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("bad PATCH message: {e}"),
        )
    })?;
    let transfer = meter.start(match op {
        PatchOp::Zero { .. } => Op::Zero,
        PatchOp::Flush => Op::Flush,
    });
    let volume = volumes.open(&t, true).await?;
    let size = volume.size();
    let sparse = t.sparse();
    match op {
        PatchOp::Flush => {
            blocking::run(move || volume.flush()).await?;
        }
        PatchOp::Zero {
            offset,
            size: len,
            flush,
        } => {
            if offset.checked_add(len).is_none_or(|end| end > size) {
                return Ok(unsatisfiable(
                    size,
                    &format!(
                        "zeroing {len} bytes at offset {offset} would pass the end of the {size}-byte image"
                    ),
                ));
            }
            blocking::run(move || {
                volume.zero(offset, len, sparse)?;
                if flush {
                    volume.flush()?;
                }
                Ok(())
            })
            .await?;
            t.add_transferred(len);
            transfer.count(len);
        }
    }
    Ok(h::status(StatusCode::OK))
}

/// `GET /images/{ticket}/checksum[?algorithm=A][&block_size=N]`: the
/// volume's block checksum (see [`checksum`]), with imageio's defaults.
pub(super) async fn checksum(
    t: TicketHandle,
    req: Request,
    volumes: &Volumes,
    cfg: &DataConfig,
) -> Result<Response> {
    let q = match range::parse_query(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return Ok(range_error(e)),
    };
    let opts = Options::parse(q.algorithm.as_deref(), q.block_size.as_deref())?;
    let buffer = cfg.buffer_size;
    let cancel = t.progress().cancel_flag();
    let volume = volumes.open(&t, false).await?;
    let sum = blocking::run(move || {
        checksum::checksum_volume(&*volume, volume.size(), opts, buffer, &cancel, || t.touch())
    })
    .await?;
    tracing::debug!(
        algorithm = opts.algorithm.name(),
        block_size = opts.block_size,
        "checksum"
    );
    Ok(h::json(
        StatusCode::OK,
        &serde_json::json!({
            "algorithm": opts.algorithm.name(),
            "block_size": opts.block_size,
            "checksum": sum,
        }),
    ))
}

/// One extent as ovirt-imageio reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Extent {
    start: u64,
    length: u64,
    zero: bool,
    hole: bool,
}

/// `GET /images/{ticket}/extents?context=zero`.
pub(super) async fn extents(t: TicketHandle, req: Request, volumes: &Volumes) -> Result<Response> {
    let q = match range::parse_query(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return Ok(range_error(e)),
    };
    match q.context.as_deref() {
        None | Some("zero") => {}
        Some(c) => {
            return Ok(h::text(
                StatusCode::NOT_FOUND,
                &format!("{c} extents are not supported"),
            ));
        }
    }
    let volume = volumes.open(&t, false).await?;
    let list = blocking::run(move || Ok(zero_extents(&volume.extents(0, volume.size())?))).await?;
    t.touch();
    Ok(h::json(StatusCode::OK, &list))
}

/// The allocation map as imageio's nbd backend reports it: whatever does
/// not hold data reads as zeros and is a hole (qemu-nbd's `NBD_STATE_HOLE`
/// is "not data"), adjacent extents of a kind merged.
pub(crate) fn zero_extents(map: &[VolumeExtent]) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for e in map {
        let zero = e.kind.reads_zero();
        if let Some(last) = out.last_mut()
            && last.zero == zero
            && last.start + last.length == e.start
        {
            last.length += e.len;
            continue;
        }
        out.push(Extent {
            start: e.start,
            length: e.len,
            zero,
            hole: zero,
        });
    }
    out
}

/// `Content-Disposition` for a download named `filename`.
pub(crate) fn disposition(filename: &str) -> Option<HeaderValue> {
    let safe: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")).ok()
}

/// Adds `Content-Disposition` when the ticket names a file.
pub(crate) fn add_disposition(r: &mut Response, filename: Option<&str>) {
    if let Some(v) = filename.and_then(disposition) {
        r.headers_mut().insert(CONTENT_DISPOSITION, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_in_imageio_form() {
        use crate::volume::ExtentKind::{Data, Hole, Zero};
        let e = |start, len, kind| VolumeExtent { start, len, kind };
        let list = zero_extents(&[
            e(0, 10, Hole),
            e(10, 5, Zero),
            e(15, 7, Data),
            e(22, 1, Hole),
        ]);
        let x = |start, length, zero| Extent {
            start,
            length,
            zero,
            hole: zero,
        };
        assert_eq!(list, vec![x(0, 15, true), x(15, 7, false), x(22, 1, true)]);
        assert!(zero_extents(&[]).is_empty());
    }

    #[test]
    fn disposition_quotes_safely() {
        let v = disposition("a\"b\\c\nd.ova").unwrap();
        assert_eq!(v.to_str().unwrap(), "attachment; filename=\"a_b_c_d.ova\"");
    }
}
