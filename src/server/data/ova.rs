//! OVA tickets: `PUT` streams a whole package through the import
//! pipeline while it arrives; `GET` streams an export with its exact
//! `Content-Length`.
//!
//! The pipelines are blocking code; each transfer runs one on the
//! blocking pool and talks to the request through a channel of at most
//! `queue_depth` buffers. The ticket records the outcome: `succeeded`
//! only after the import verified and renamed every target, `failed` with
//! the reason otherwise (a client that disconnects included), and then no
//! target is left under its final name.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE, RANGE,
};
use http::{HeaderValue, StatusCode};
use tokio::sync::mpsc;

use super::blocking::{self, ChannelWriter};
use super::image::{add_disposition, range_error};
use super::{BusyGuard, Meter, checksum};
use crate::error::{Error, ErrorKind, Result};
use crate::ova::ovf::split_chunk_name;
use crate::pipeline::export::ExportPlan;
use crate::pipeline::import::Importer;
use crate::pipeline::tickets::{export_request, import_targets, sources_mtime};
use crate::server::config::DataConfig;
use crate::server::http::{self as h, Batch, BodyReader, Request, Response};
use crate::server::metrics::{Op, Transfer};
use crate::server::range;
use crate::source::volume::AllowedRoots;
use crate::ticket::{ResolvedOva, TicketHandle, TransferState};

/// What the blocking import thread receives.
#[derive(Debug)]
enum Msg {
    Data(Batch),
    /// The body ended where it should: verify and commit.
    End,
}

fn ova_of(t: &TicketHandle) -> Result<&ResolvedOva> {
    t.ova().filter(|o| !o.disks.is_empty()).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidArgument,
            "the ticket's ova object names no disk",
        )
    })
}

/// The disk an entry feeds: the disk whose href is its name, or the
/// chunked file it is a chunk of.
fn disk_of<'a>(hrefs: &'a [String], entry: &str) -> Option<&'a String> {
    hrefs.iter().find(|h| *h == entry).or_else(|| {
        let (href, _) = split_chunk_name(entry)?;
        hrefs.iter().find(|h| *h == href)
    })
}

/// Bytes of every entry of the disk `href` seen so far: its chunks add up.
fn disk_bytes(hrefs: &[String], seen: &BTreeMap<String, u64>, href: &str) -> u64 {
    seen.iter()
        .filter(|(e, _)| disk_of(hrefs, e).is_some_and(|h| h == href))
        .map(|(_, b)| b)
        .sum()
}

/// Reports the current disk's bytes from the pipeline's progress record
/// and remembers each entry's, so the final state keeps the count.
fn report_disk(
    t: &TicketHandle,
    hrefs: &[String],
    p: &crate::pipeline::progress::Progress,
    seen: &mut BTreeMap<String, u64>,
) {
    // The entry that ended inside the last chunk, with its final count.
    let (prev, prev_bytes) = p.previous_entry();
    if let Some(h) = disk_of(hrefs, &prev)
        && seen.get(&prev) != Some(&prev_bytes)
    {
        seen.insert(prev, prev_bytes);
        t.set_disk_progress(h, disk_bytes(hrefs, seen, h), TransferState::Active);
    }
    let entry = p.entry();
    if let Some(h) = disk_of(hrefs, &entry) {
        seen.insert(entry, p.entry_bytes());
        t.set_disk_progress(h, disk_bytes(hrefs, seen, h), TransferState::Active);
    }
}

/// Sets every disk's final state, keeping the bytes last seen; a blank
/// disk has no bytes, only the outcome.
fn finish_disks(
    t: &TicketHandle,
    ova: &ResolvedOva,
    hrefs: &[String],
    seen: &BTreeMap<String, u64>,
    state: TransferState,
) {
    for h in hrefs {
        t.set_disk_progress(h, disk_bytes(hrefs, seen, h), state);
    }
    for id in ova.disks.iter().filter_map(|d| d.disk_id.as_deref()) {
        t.set_blank_disk_state(id, state);
    }
}

/// An upload larger than the ticket's `size`.
fn over_size(limit: u64) -> Error {
    Error::new(
        ErrorKind::LimitExceeded,
        format!("the upload is larger than the ticket's size of {limit} bytes"),
    )
}

/// `PUT /images/{ticket}` on an `ova-import` ticket. The ticket's `size`,
/// when given, bounds the body: a larger Content-Length is refused before
/// the import starts, and a chunked body is cut where it passes the size
/// (the import then fails and removes its partial targets).
pub(super) async fn put(
    t: TicketHandle,
    req: Request,
    roots: AllowedRoots,
    cfg: &DataConfig,
    meter: &mut Meter,
) -> Result<Response> {
    let ova = ova_of(&t)?.clone();
    let (parts, body) = req.into_parts();
    // Refusals before the import starts leave the ticket as it was and
    // read the body away, so that a client still sending sees the answer.
    let refuse = |e: Error, body| {
        h::drain_in_background(body);
        Err(e)
    };
    // An ended transfer is the first thing to tell, whatever else is
    // wrong with the request.
    if let Err(e) = t.state().start(t.kind()) {
        return refuse(e.into(), body);
    }
    if let Some(v) = h::header(&parts, CONTENT_RANGE) {
        let cr = range::parse_content_range(v).map_err(Error::from)?;
        if cr.range.start != 0 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "an OVA upload is one stream from its first byte; it cannot start at an offset",
            ));
        }
    }
    let length = h::header(&parts, CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
    let limit = t.size();
    if let (Some(len), Some(l)) = (length, limit)
        && len > l
    {
        tracing::info!(
            length = len,
            size = l,
            "OVA upload refused: larger than the ticket"
        );
        return refuse(
            Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the Content-Length of {len} bytes is larger than the ticket's size of {l} bytes"
                ),
            ),
            body,
        );
    }
    let targets = import_targets(&ova)?;
    t.begin()?;
    // What the import consumes is what counts as received.
    let consumed = meter.start(Op::Write).counter();
    let hrefs: Arc<Vec<String>> = Arc::new(
        ova.disks
            .iter()
            .filter(|d| !d.href.is_empty())
            .map(|d| d.href.clone())
            .collect(),
    );
    let progress = t.progress();
    let t = Arc::new(t);
    tracing::info!(length, disks = hrefs.len(), "OVA upload started");

    let (tx, mut rx) = mpsc::channel::<Msg>(cfg.queue_depth);
    let tt = t.clone();
    let hh = hrefs.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let mut importer = Importer::new(targets, progress.clone()).with_roots(roots);
        let mut seen = BTreeMap::new();
        let mut ended = false;
        while let Some(m) = rx.blocking_recv() {
            match m {
                Msg::Data(batch) => {
                    for b in batch.into_pieces() {
                        let n = b.len() as u64;
                        if let Err(e) = importer.feed(b) {
                            return (Err(e), seen);
                        }
                        if let Some(c) = &consumed {
                            c.inc_by(n);
                        }
                    }
                    report_disk(&tt, &hh, &progress, &mut seen);
                }
                Msg::End => {
                    ended = true;
                    break;
                }
            }
        }
        if !ended {
            // Dropping the importer removes every partial target.
            let e = Error::new(ErrorKind::Cancelled, "upload ended early");
            return (Err(importer.note_targets(e)), seen);
        }
        (importer.finish(), seen)
    });

    let mut reader = BodyReader::new(body, Duration::from_secs(t.inactivity_timeout()))
        .cancelled_by(t.progress().cancel_flag());
    let mut body_error = None;
    let mut body_done = false;
    loop {
        match reader.next_batch(cfg.buffer_size).await {
            Ok(Some(mut b)) => {
                t.touch();
                let over = limit.filter(|&l| reader.received() > l);
                if let Some(l) = over {
                    b.truncate(b.len() - (reader.received() - l));
                }
                if !b.is_empty() && tx.send(Msg::Data(b)).await.is_err() {
                    break; // the pipeline failed; its error says why
                }
                if let Some(l) = over {
                    body_error = Some(over_size(l));
                    break;
                }
            }
            Ok(None) => {
                body_done = true;
                let _ = tx.send(Msg::End).await;
                break;
            }
            Err(e) => {
                body_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let received = reader.received();
    // A body refused part way (the import failed, or the size was passed)
    // is read away for a while, so that a client still sending sees the
    // error response rather than a reset connection.
    if !body_done {
        h::drain_in_background(reader.into_body());
    }
    let (outcome, seen) = worker
        .await
        .map_err(|e| Error::internal(format!("import thread failed: {e}")))?;
    let outcome = match (outcome, body_error) {
        (Ok(s), _) => Ok(s),
        // The client's failure is the real reason when the pipeline only
        // saw the stream stop.
        (Err(_), Some(be)) => Err(be),
        (Err(e), None) => Err(e),
    };
    match outcome {
        Ok(summary) => {
            finish_disks(&t, &ova, &hrefs, &seen, TransferState::Succeeded);
            t.succeed();
            tracing::info!(
                bytes = received,
                disks = summary.disks.len(),
                "OVA import succeeded"
            );
            Ok(h::json(StatusCode::OK, &summary))
        }
        Err(e) => {
            let msg = e.one_line();
            finish_disks(&t, &ova, &hrefs, &seen, TransferState::Failed);
            t.fail(msg.clone());
            tracing::warn!(bytes = received, error = %msg, "OVA import failed");
            Err(e)
        }
    }
}

/// `GET /images/{ticket}` on an `ova-export` ticket: the whole package,
/// or one `Range` of it (206). Every entry carries the newest modification
/// time of the sources, so an export of unchanged sources is the same
/// bytes each time and an interrupted download can resume with a range;
/// the `ETag` names size and that time, and `If-Range` is honoured.
pub(super) async fn get(
    t: TicketHandle,
    req: Request,
    roots: AllowedRoots,
    cfg: &DataConfig,
    guard: BusyGuard,
    transfer: Transfer,
) -> Result<Response> {
    let ova = ova_of(&t)?.clone();
    let filename = t
        .request()
        .filename
        .clone()
        .unwrap_or_else(|| format!("{}.ova", ova.name.as_deref().unwrap_or("vm")));
    let t = Arc::new(t);
    // A deleted ticket also stops a VMDK counting pass.
    let watch = t.progress();
    let prepared = blocking::run(move || {
        let mtime = sources_mtime(&ova, &roots)?;
        Ok((
            ExportPlan::prepare_watched(export_request(&ova, roots)?, &watch)?
                .with_mtime(mtime)
                // The ticket's checksums are SHA-256, whatever the manifest's.
                .with_sha256(),
            mtime,
        ))
    })
    .await;
    let (plan, mtime) = match prepared {
        Ok(p) => p,
        Err(e) => {
            t.fail(e.one_line());
            return Err(e);
        }
    };
    let total = plan.total_size();
    let etag = format!("\"{total:x}-{mtime:x}\"");
    let (parts, _) = req.into_parts();
    let if_range_ok = h::header(&parts, IF_RANGE).is_none_or(|v| v == etag);
    let range = match h::header(&parts, RANGE).filter(|_| if_range_ok) {
        Some(v) => match range::parse_range(v, total) {
            Ok(r) => Some(r),
            Err(e) => return Ok(range_error(e)),
        },
        None => None,
    };
    let (skip, len) = range.map_or((0, total), |r| (r.start, r.len()));
    let to_end = skip + len == total;
    // Only a download of the whole package sees every byte to hash.
    let hash = (skip == 0 && to_end).then(PackageHash::start).flatten();
    tracing::info!(size = total, skip, len, "OVA download started");
    let (tx, rx) = mpsc::channel(cfg.queue_depth);
    let chunk = cfg.buffer_size;
    let progress = t.progress();
    let producer = transfer.clone();
    // The transfer outlives this handler: the thread keeps the ticket busy.
    let hrefs: Vec<String> = t
        .ova()
        .map(|o| o.disks.iter().map(|d| d.href.clone()).collect())
        .unwrap_or_default();
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        let mut seen = BTreeMap::new();
        let report = {
            let (t, hrefs, progress) = (t.clone(), hrefs.clone(), progress.clone());
            move || report_disk(&t, &hrefs, &progress, &mut seen)
        };
        let mut inner = ChannelWriter::new(tx, chunk).on_send(Box::new(report));
        let hash = hash.map(|(tap, thread)| {
            inner.tap(tap);
            thread
        });
        let mut w = RangeWriter {
            inner,
            skip,
            left: len,
        };
        let r = plan.write_to(&mut w, progress);
        // A range that ends before the package does stops the export early.
        let r = match r {
            Err(_) if w.left == 0 && !to_end => {
                let _ = w.inner.flush();
                tracing::info!(skip, len, "OVA range sent");
                return;
            }
            r => r.and_then(|s| w.flush().map(|()| s).map_err(Error::from)),
        };
        match r {
            Ok(s) => {
                for d in &s.disks {
                    t.set_disk_progress(&d.href, d.size, TransferState::Succeeded);
                }
                // The hash thread ends with the writer's tap.
                drop(w);
                if let Some(package) = hash.and_then(|h| h.join().ok()) {
                    let disks: Vec<(String, String)> = s
                        .disks
                        .iter()
                        .filter_map(|d| Some((d.href.clone(), d.sha256.clone()?)))
                        .collect();
                    t.set_checksums(package, &disks);
                }
                t.succeed();
                tracing::info!(size = s.size, "OVA download finished");
            }
            Err(e) => {
                producer.fail(&e);
                let msg = e.one_line();
                tracing::warn!(error = %msg, "OVA download failed");
                for h in &hrefs {
                    t.set_disk_progress(h, 0, TransferState::Failed);
                }
                t.fail(msg.clone());
                w.inner.abort(msg);
            }
        }
    });
    let code = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut r = h::streaming(code, rx, Some(len), Some(transfer));
    let hd = r.headers_mut();
    hd.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    hd.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        hd.insert(ETAG, v);
    }
    if let Some(rg) = range
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{total}", rg.start, rg.end))
    {
        hd.insert(CONTENT_RANGE, v);
    }
    add_disposition(&mut r, Some(&filename));
    Ok(r)
}

/// `GET /images/{ticket}/checksum` on an `ova-export` ticket.
pub(super) fn checksum(t: &TicketHandle, req: &Request) -> Result<Response> {
    let q = match range::parse_query(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return Ok(range_error(e)),
    };
    checksum::ova_export(t, q.algorithm.as_deref(), q.block_size.is_some())
}

/// SHA-256 of a whole package as it is sent, on its own thread (as the
/// export hashes its disk entries), so hashing costs the thread that
/// encodes the package no time: `start` gives the sender to tap the
/// response with and the thread, which ends with the hex digest once the
/// sender is dropped; `None` when no thread could be started (the
/// download goes on unhashed).
struct PackageHash;

impl PackageHash {
    /// Chunks queued before the response waits for the hash.
    const QUEUE: usize = 4;

    fn start() -> Option<(SyncSender<Bytes>, JoinHandle<String>)> {
        let (tx, rx) = sync_channel::<Bytes>(Self::QUEUE);
        let thread = std::thread::Builder::new()
            .name("ova-sha256".into())
            .spawn(move || {
                let mut h = Sha256::new();
                while let Ok(chunk) = rx.recv() {
                    h.update(&chunk);
                }
                hex::encode(h.finalize())
            });
        match thread {
            Ok(thread) => Some((tx, thread)),
            Err(e) => {
                tracing::warn!(error = %e, "no thread to hash the package; its checksum stays unknown");
                None
            }
        }
    }
}

/// Passes on the bytes of `[skip, skip + left)` of what is written to it;
/// once that is done, a further write fails, which stops the export.
struct RangeWriter<W> {
    inner: W,
    skip: u64,
    left: u64,
}

impl<W: Write> Write for RangeWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut d = data;
        if self.skip > 0 {
            let k = (self.skip.min(d.len() as u64)) as usize;
            self.skip -= k as u64;
            d = &d[k..];
            if d.is_empty() {
                return Ok(data.len());
            }
        }
        if self.left == 0 {
            return Err(std::io::Error::other("the requested range is complete"));
        }
        let m = (self.left.min(d.len() as u64)) as usize;
        self.inner.write_all(&d[..m])?;
        self.left -= m as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
