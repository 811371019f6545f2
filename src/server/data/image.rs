//! `image` tickets: ovirt-imageio's ranged reads and writes on a raw file.
//!
//! * `GET` — the whole file (200) or one `Range` (206, `Content-Range`),
//!   416 with `Content-Range: bytes */size` when the range is outside.
//! * `PUT` — the body at the `Content-Range` start (or 0); Content-Length
//!   or chunked; `?flush=n` skips the fdatasync; 200.
//! * `PATCH` — `{"op": "zero", "offset", "size", "flush"}` or
//!   `{"op": "flush"}`; 200.
//! * `GET …/extents?context=zero` — data and hole extents from
//!   `SEEK_DATA`/`SEEK_HOLE`.
//!
//! File I/O runs on the blocking pool; request bodies and responses move
//! through channels of `queue_depth` buffers, so memory per request is
//! bounded whatever its length.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
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
use crate::codec::map::RangeKind;
use crate::error::{Error, ErrorKind, Result};
use crate::roots::AllowedRoots;
use crate::server::config::DataConfig;
use crate::server::http::{self as h, Batch, BodyReader, Request, Response};
use crate::server::metrics::Op;
use crate::server::range::{self, ByteRange, RangeError};
use crate::sink::direct::DirectWriter;
use crate::ticket::TicketHandle;

/// Largest `PATCH` message.
const MAX_PATCH_BODY: usize = 4096;

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

/// Opens the ticket's volume beneath its storage root (the path is the
/// canonical one the ticket was accepted with; a symbolic link anywhere on
/// it now is refused, never followed). A write ticket whose file does not
/// exist yet creates it, sized to the ticket's `size`.
fn open_volume(roots: &AllowedRoots, path: &Path, write: bool, size: Option<u64>) -> Result<File> {
    use rustix::fs::OFlags;
    if !write {
        return roots.open(path, OFlags::RDONLY, 0);
    }
    match roots.open(path, OFlags::RDWR, 0) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let f = roots.open(path, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL, 0o660)?;
            if let Some(s) = size {
                f.set_len(s).map_err(|e| Error::from(e).at_path(path))?;
            }
            Ok(f)
        }
        r => r,
    }
}

fn file_size(f: &File, path: &Path) -> Result<u64> {
    Ok(f.metadata()
        .map_err(|e| Error::from(e).at_path(path))?
        .len())
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
    roots: AllowedRoots,
    cfg: &DataConfig,
    meter: &mut Meter,
) -> Result<Response> {
    let transfer = meter.start(Op::Read);
    let path = volume_path(&t)?;
    let (parts, _) = req.into_parts();
    let p = path.clone();
    let file = blocking::run(move || open_volume(&roots, &p, false, None)).await?;
    let size = file_size(&file, &path)?;
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
            if let Err(e) = file.read_exact_at(&mut buf, off) {
                tracing::warn!(offset = off, error = %e, "read failed");
                producer.fail_kind(ErrorKind::Io);
                let _ = tx.blocking_send(Err(e));
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
    roots: AllowedRoots,
    cfg: &DataConfig,
    meter: &mut Meter,
) -> Result<Response> {
    let received = meter.start(Op::Write).counter();
    let path = volume_path(&t)?;
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
    let p = path.clone();
    let size_hint = t.size();
    let file = Arc::new(blocking::run(move || open_volume(&roots, &p, true, size_hint)).await?);
    let size = file_size(&file, &path)?;
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
    // The writer thread: whole blocks with O_DIRECT where the file system
    // allows it, the rest through the page cache; fdatasync at the end.
    let (tx, mut rx) = mpsc::channel::<Batch>(cfg.queue_depth);
    let f = file.clone();
    let wpath = path.clone();
    let chunk = cfg.buffer_size;
    let writer = tokio::task::spawn_blocking(move || -> Result<u64> {
        let mut w = DirectWriter::new(&f, offset, chunk);
        let fail = |e: io::Error| {
            Error::from(e)
                .at_path(&wpath)
                .with_message(format!("write at offset {offset} failed"))
        };
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
                w.write(&b).map_err(fail)?;
                count(w.written_through());
            }
        }
        let end = w.finish().map_err(fail)?;
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
        .map_err(|e| Error::new(ErrorKind::Io, format!("writer thread failed: {e}")))??;
    match failure {
        Some(Err(resp)) => return Ok(resp),
        Some(Ok(e)) => {
            tracing::info!(offset, written, error = %e.one_line(), "upload interrupted");
            return Err(e);
        }
        None => {}
    }
    if flush {
        let f = file.clone();
        let p = path.clone();
        blocking::run(move || f.sync_data().map_err(|e| Error::from(e).at_path(&p))).await?;
    }
    tracing::debug!(offset, written, flush, "write done");
    Ok(h::status(StatusCode::OK))
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
    roots: AllowedRoots,
    cfg: &DataConfig,
    meter: &mut Meter,
) -> Result<Response> {
    let path = volume_path(&t)?;
    let (_, body) = req.into_parts();
    let idle = idle(&t);
    let body = h::read_small_body(
        body,
        MAX_PATCH_BODY,
        if idle.is_zero() {
            Duration::from_secs(60)
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
    let p = path.clone();
    let size_hint = t.size();
    let file = blocking::run(move || open_volume(&roots, &p, true, size_hint)).await?;
    let size = file_size(&file, &path)?;
    let sparse = t.sparse();
    let chunk = cfg.buffer_size;
    match op {
        PatchOp::Flush => {
            blocking::run(move || file.sync_data().map_err(|e| Error::from(e).at_path(&path)))
                .await?;
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
                zero_range(&file, offset, len, sparse, chunk).map_err(|e| {
                    Error::from(e)
                        .at_path(&path)
                        .with_message(format!("zeroing at offset {offset} failed"))
                })?;
                if flush {
                    file.sync_data()
                        .map_err(|e| Error::from(e).at_path(&path))?;
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
    roots: AllowedRoots,
    cfg: &DataConfig,
) -> Result<Response> {
    let path = volume_path(&t)?;
    let q = match range::parse_query(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return Ok(range_error(e)),
    };
    let opts = Options::parse(q.algorithm.as_deref(), q.block_size.as_deref())?;
    let buffer = cfg.buffer_size;
    let cancel = t.progress().cancel_flag();
    let sum = blocking::run(move || {
        let file = open_volume(&roots, &path, false, None)?;
        let size = file_size(&file, &path)?;
        checksum::checksum_file(&file, size, opts, buffer, &cancel, || t.touch())
            .map_err(|e| e.at_path(&path))
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

/// Zeroes `[offset, offset+len)`: punches a hole on a sparse ticket,
/// else asks for allocated zeroes; writes zeroes where the file system
/// supports neither.
fn zero_range(f: &File, offset: u64, len: u64, sparse: bool, chunk: usize) -> io::Result<()> {
    use rustix::fs::FallocateFlags as F;
    if len == 0 {
        return Ok(());
    }
    let mode = if sparse {
        F::PUNCH_HOLE | F::KEEP_SIZE
    } else {
        F::ZERO_RANGE | F::KEEP_SIZE
    };
    match rustix::fs::fallocate(f, mode, offset, len) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) => {}
        Err(e) => return Err(e.into()),
    }
    let zeros = vec![0u8; chunk.min(len as usize).max(1)];
    let mut off = offset;
    let end = offset + len;
    while off < end {
        let n = (end - off).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    Ok(())
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
pub(super) async fn extents(
    t: TicketHandle,
    req: Request,
    roots: AllowedRoots,
) -> Result<Response> {
    let path = volume_path(&t)?;
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
    let list = blocking::run(move || {
        let file = open_volume(&roots, &path, false, None)?;
        let size = file_size(&file, &path)?;
        zero_extents(&file, size, &path)
    })
    .await?;
    t.touch();
    Ok(h::json(StatusCode::OK, &list))
}

/// Data and hole extents of `file`, adjacent ones of a kind merged.
pub(crate) fn zero_extents(file: &File, size: u64, path: &Path) -> Result<Vec<Extent>> {
    let map = crate::source::volume::data_ranges(file, size, path)?;
    let mut out: Vec<Extent> = Vec::new();
    let mut pos = 0u64;
    let mut push = |start: u64, length: u64, zero: bool| {
        if length == 0 {
            return;
        }
        if let Some(last) = out.last_mut()
            && last.zero == zero
            && last.start + last.length == start
        {
            last.length += length;
            return;
        }
        out.push(Extent {
            start,
            length,
            zero,
            hole: zero,
        });
    };
    for r in map.ranges() {
        if r.kind != RangeKind::Data {
            continue;
        }
        push(pos, r.offset - pos, true);
        push(r.offset, r.len, false);
        pos = r.offset + r.len;
    }
    push(pos, size - pos, true);
    Ok(out)
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
    fn extents_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.raw");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mib = 1u64 << 20;
        f.set_len(8 * mib).unwrap();
        f.write_all_at(&vec![1u8; mib as usize], 2 * mib).unwrap();
        let list = zero_extents(&f, 8 * mib, &p).unwrap();
        // Either the file system reports holes (three extents) or it does
        // not (one data extent); both cover the file without gaps.
        let mut pos = 0;
        for e in &list {
            assert_eq!(e.start, pos);
            assert_eq!(e.zero, e.hole);
            pos += e.length;
        }
        assert_eq!(pos, 8 * mib);
        if list.len() > 1 {
            assert!(
                list.iter()
                    .any(|e| !e.zero && e.start <= 2 * mib && e.start + e.length >= 3 * mib)
            );
            assert!(list[0].zero);
        }
        assert!(zero_extents(&f, 0, &p).unwrap().is_empty());
    }

    #[test]
    fn zero_range_zeroes_and_keeps_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.raw");
        std::fs::write(&p, vec![7u8; 10_000]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        zero_range(&f, 100, 5000, true, 4096).unwrap();
        zero_range(&f, 6000, 100, false, 4096).unwrap();
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), 10_000);
        assert!(got[100..5100].iter().all(|&b| b == 0));
        assert!(got[6000..6100].iter().all(|&b| b == 0));
        assert_eq!(got[99], 7);
        assert_eq!(got[5100], 7);
        assert_eq!(got[6100], 7);
    }

    #[test]
    fn disposition_quotes_safely() {
        let v = disposition("a\"b\\c\nd.ova").unwrap();
        assert_eq!(v.to_str().unwrap(), "attachment; filename=\"a_b_c_d.ova\"");
    }
}
