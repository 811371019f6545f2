//! OVA tickets: what an import maps (its targets, and the ticket's
//! per-disk progress, reported by the resumable upload of [`super::upload`]),
//! and `GET`, which streams an export with its exact `Content-Length`.
//!
//! The pipelines are blocking code; each transfer runs one on the
//! blocking pool and talks to the request through a channel of at most
//! `queue_depth` buffers. The ticket records the outcome: `succeeded`
//! only after the import verified and renamed every target, `failed` with
//! the reason otherwise, and then no target is left under its final name.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use http::header::{ACCEPT_RANGES, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE, RANGE};
use http::{HeaderValue, StatusCode};
use tokio::sync::mpsc;

use super::blocking::{self, ChannelWriter};
use super::image::{add_disposition, range_error};
use super::{BusyGuard, checksum};
use crate::error::{Error, ErrorKind, Result};
use crate::ova::ovf::split_chunk_name;
use crate::pipeline::export::ExportPlan;
use crate::pipeline::tickets::{export_request, sources_mtime};
use crate::server::config::DataConfig;
use crate::server::http::{self as h, Request, Response};
use crate::server::metrics::Transfer;
use crate::server::range;
use crate::source::volume::AllowedRoots;
use crate::ticket::{ResolvedOva, TicketHandle, TransferState};

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
pub(super) fn disk_of<'a>(hrefs: &'a [String], entry: &str) -> Option<&'a String> {
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
pub(super) fn report_disk(
    t: &TicketHandle,
    hrefs: &[String],
    p: &crate::pipeline::progress::Progress,
    seen: &mut BTreeMap<String, u64>,
) {
    // The entries that ended since the last look (several may end inside
    // one chunk: small disks), with their final counts.
    for (prev, prev_bytes) in p.ended_entries() {
        if let Some(h) = disk_of(hrefs, &prev)
            && seen.get(&prev) != Some(&prev_bytes)
        {
            seen.insert(prev, prev_bytes);
            t.set_disk_progress(h, disk_bytes(hrefs, seen, h), TransferState::Active);
        }
    }
    let entry = p.entry();
    if let Some(h) = disk_of(hrefs, &entry) {
        seen.insert(entry, p.entry_bytes());
        t.set_disk_progress(h, disk_bytes(hrefs, seen, h), TransferState::Active);
    }
}

/// Sets every disk's final state, keeping the bytes last seen; a blank
/// disk has no bytes, only the outcome.
pub(super) fn finish_disks(
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
pub(super) fn over_size(limit: u64) -> Error {
    Error::new(
        ErrorKind::LimitExceeded,
        format!("the upload is larger than the ticket's size of {limit} bytes"),
    )
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
    let (plan, mtime) = match prepare(&t, roots).await {
        Ok(p) => p,
        Err(e) => {
            t.fail(e.one_line());
            return Err(e);
        }
    };
    let t = Arc::new(t);
    let total = plan.total_size();
    let etag = etag(total, mtime);
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

/// The export an `ova-export` ticket describes, planned (its exact size
/// known), and the newest modification time of its sources.
pub(super) async fn prepare(t: &TicketHandle, roots: AllowedRoots) -> Result<(ExportPlan, u64)> {
    let ova = ova_of(t)?.clone();
    // A deleted ticket also stops a VMDK counting pass.
    let watch = t.progress();
    blocking::run(move || {
        let mtime = sources_mtime(&ova, &roots)?;
        Ok((
            ExportPlan::prepare_watched(export_request(&ova, roots)?, &watch)?
                .with_mtime(mtime)
                // The ticket's checksums are SHA-256, whatever the manifest's.
                .with_sha256(),
            mtime,
        ))
    })
    .await
}

/// The `ETag` of an export: its size and sources' time.
pub(super) fn etag(total: u64, mtime: u64) -> String {
    format!("\"{total:x}-{mtime:x}\"")
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
