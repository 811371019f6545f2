//! Resumable `ova-import` uploads: the import of a ticket outlives the
//! request that started it.
//!
//! An upload is a [`Session`] kept by the data API per ticket: the
//! [`Importer`] runs on a blocking thread fed through a bounded channel,
//! and whichever request writes holds the session's *lease* (one writer at
//! a time; a second is refused). The *committed offset* is the number of
//! package bytes handed to the import: the import takes every byte queued
//! to it in order, and `Importer::feed` either takes a piece whole or fails
//! the import, so the offset is exact. When a writer's body breaks off (the
//! connection dropped, or the client stopped sending for
//! `inactivity_timeout`), the session keeps everything and the ticket is
//! `paused`; the next writer continues from the committed offset, skipping
//! whatever it sends again of the bytes before it. A watcher task ends a
//! session that stays paused for `inactivity_timeout` seconds (the ticket
//! `failed`) and one whose ticket is removed or expires (`cancelled`);
//! either way the import is dropped, which removes its partial targets.
//!
//! The outcome is reported once, by whoever ends the session: the import
//! thread (verified and renamed, or failed by the package), a writer (the
//! ticket's size passed), or the watcher.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::ova::{disk_of, finish_disks, over_size, report_disk};
use crate::error::{Error, ErrorKind, Result};
use crate::limits;
use crate::pipeline::import::{ImportSummary, Importer};
use crate::pipeline::tickets::import_targets;
use crate::server::config::DataConfig;
use crate::server::http::{self as h, Batch, BodyReader};
use crate::server::metrics::{self, Metrics, Transfer};
use crate::source::volume::AllowedRoots;
use crate::ticket::{ResolvedOva, TicketError, TicketHandle, TicketStore, TransferState};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the import thread receives.
#[derive(Debug)]
enum Msg {
    Data(Batch),
    /// The package is complete: verify and commit, and answer.
    End(oneshot::Sender<Result<ImportSummary>>),
}

/// The sessions of the data API, by ticket id.
#[derive(Debug)]
pub(crate) struct Uploads {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    store: Arc<TicketStore>,
    metrics: Arc<Metrics>,
}

impl Uploads {
    pub(crate) fn new(store: Arc<TicketStore>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Uploads {
            sessions: Mutex::new(HashMap::new()),
            store,
            metrics,
        })
    }

    /// The live session of this very ticket, if an upload started.
    pub(crate) fn find(&self, t: &TicketHandle) -> Option<Arc<Session>> {
        lock(&self.sessions)
            .get(t.id())
            .filter(|s| s.ticket.same_ticket(t) && !s.is_ended())
            .cloned()
    }

    /// The ticket's session, started now if there is none: the import
    /// and its thread, and the watcher. An ended transfer starts none.
    pub(crate) fn open(
        self: &Arc<Self>,
        t: &TicketHandle,
        roots: &AllowedRoots,
        cfg: &DataConfig,
    ) -> Result<Arc<Session>> {
        let mut map = lock(&self.sessions);
        if let Some(s) = map
            .get(t.id())
            .filter(|s| s.ticket.same_ticket(t) && !s.is_ended())
        {
            return Ok(s.clone());
        }
        let state = t.state();
        if state.is_final() {
            return Err(TicketError::Ended { state }.into());
        }
        let ova = t
            .ova()
            .filter(|o| !o.disks.is_empty())
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    "the ticket's ova object names no disk",
                )
            })?;
        let targets = import_targets(&ova)?;
        let importer = Importer::new(targets, t.progress()).with_roots(roots.clone());
        let hrefs = ova
            .disks
            .iter()
            .filter(|d| !d.href.is_empty())
            .map(|d| d.href.clone())
            .collect();
        let (tx, rx) = mpsc::channel(cfg.queue_depth);
        let transfer = self.metrics.start(t.kind(), metrics::Op::Write, t.watch());
        let s = Arc::new(Session {
            ticket: t.detached(),
            lease: Arc::new(tokio::sync::Mutex::new(Pipe { tx: Some(tx) })),
            shared: Mutex::new(Shared {
                offset: 0,
                declared: None,
                paused_since: Some(Instant::now()),
                metadata: None,
                ended: None,
                import_dropped: false,
            }),
            changed: Notify::new(),
            transfer,
            metrics: self.metrics.clone(),
            ova,
            hrefs,
            seen: Mutex::new(BTreeMap::new()),
            idle: Some(Duration::from_secs(t.inactivity_timeout())).filter(|d| !d.is_zero()),
        });
        t.set_upload(0, s.length());
        let worker = s.clone();
        tokio::task::spawn_blocking(move || {
            work(&worker, importer, rx);
            // The import is dropped: its partial targets are gone.
            lock(&worker.shared).import_dropped = true;
            worker.changed.notify_waiters();
        });
        tokio::spawn(watch(s.clone(), self.clone()));
        // A session of a ticket since replaced is dropped by its watcher.
        map.insert(t.id().to_owned(), s.clone());
        tracing::info!("OVA upload session started");
        Ok(s)
    }

    /// Ends every session (the server is stopping; their tickets are
    /// cancelled already) and waits, at most `limit`, until each import
    /// has let go of its partial targets. Without this a paused upload's
    /// import thread would wait for a writer that never comes, and the
    /// runtime for that thread.
    pub(crate) async fn shutdown(&self, limit: Duration) {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).drain().map(|(_, s)| s).collect();
        let e = Error::new(ErrorKind::Cancelled, "the server is stopping");
        let deadline = Instant::now() + limit;
        for s in &sessions {
            s.end(Err(&e));
        }
        for s in &sessions {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Ok(mut pipe) = tokio::time::timeout(left, s.lease.lock()).await {
                pipe.tx = None;
            }
        }
        for s in &sessions {
            await_end(s, deadline.saturating_duration_since(Instant::now())).await;
        }
    }

    /// Forgets `s` if it is still the session of its ticket id.
    fn forget(&self, s: &Arc<Session>) {
        let mut map = lock(&self.sessions);
        if map.get(s.ticket.id()).is_some_and(|x| Arc::ptr_eq(x, s)) {
            map.remove(s.ticket.id());
        }
    }
}

/// The writer's side of the import: the lease holds it.
#[derive(Debug)]
struct Pipe {
    /// `None` once the session ended: the import thread stops.
    tx: Option<mpsc::Sender<Msg>>,
}

#[derive(Debug)]
struct Shared {
    /// The committed offset.
    offset: u64,
    /// The package length a client declared.
    declared: Option<u64>,
    /// Since when no writer holds the lease; `None` while one does.
    paused_since: Option<Instant>,
    /// tus `Upload-Metadata` given at creation, echoed by `HEAD`.
    metadata: Option<String>,
    /// How the session ended: `Ok` succeeded, else the error's kind and
    /// one-line message.
    ended: Option<std::result::Result<(), (ErrorKind, String)>>,
    /// The import thread has let go of the import (its partial targets
    /// are removed, or its targets in place).
    import_dropped: bool,
}

/// One resumable upload; see the module documentation.
#[derive(Debug)]
pub(crate) struct Session {
    /// Not counted as a connection: a paused upload has none.
    ticket: TicketHandle,
    lease: Arc<tokio::sync::Mutex<Pipe>>,
    shared: Mutex<Shared>,
    /// Wakes the watcher when the session ends.
    changed: Notify,
    /// The metrics' record of the upload, from its start to its outcome,
    /// across every request that wrote to it.
    transfer: Transfer,
    metrics: Arc<Metrics>,
    ova: ResolvedOva,
    hrefs: Vec<String>,
    /// Bytes of each disk entry seen, for the ticket's per-disk progress.
    seen: Mutex<BTreeMap<String, u64>>,
    /// How long it may stay paused; `None`: until the ticket expires.
    idle: Option<Duration>,
}

/// What a write request asks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteReq {
    /// The package offset of the body's first byte.
    pub start: u64,
    /// The package's whole length, if the request declares it.
    pub declared: Option<u64>,
    /// The body's length, if known before it is read.
    pub body_len: Option<u64>,
    /// The body's end is the package's end (a plain `PUT`, or a
    /// `Content-Range` open to the end).
    pub ends_package: bool,
}

/// How a write request ended well.
#[derive(Debug)]
pub(crate) enum Written {
    /// The package is complete, verified and its targets in place.
    Complete(ImportSummary),
    /// The body ended; the package goes on in a later request.
    Part,
}

/// How a write request ended otherwise.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// It starts past the committed offset: refused, nothing changed.
    Ahead { offset: u64 },
    /// Refused before anything changed, or the upload paused or failed.
    Failed(Error),
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        WriteError::Failed(e)
    }
}

/// Why the reading of a body stopped.
enum Stop {
    BodyEnd,
    BodyError(Error),
    /// The ticket's size or the declared length was passed.
    Over(Error),
    /// The import thread is gone: the session ended.
    PipelineGone,
}

impl Session {
    /// Whether the session has its outcome.
    pub(crate) fn is_ended(&self) -> bool {
        lock(&self.shared).ended.is_some()
    }

    /// The error the session ended with, if it failed.
    fn failure(&self) -> Option<Error> {
        match &lock(&self.shared).ended {
            Some(Err((kind, msg))) => Some(Error::new(*kind, msg.clone())),
            _ => None,
        }
    }

    /// The committed offset.
    pub(crate) fn offset(&self) -> u64 {
        lock(&self.shared).offset
    }

    /// The package length: as declared, else the ticket's `size`.
    pub(crate) fn length(&self) -> Option<u64> {
        lock(&self.shared).declared.or(self.ticket.size())
    }

    /// The declared length, if any.
    pub(crate) fn declared(&self) -> Option<u64> {
        lock(&self.shared).declared
    }

    /// tus `Upload-Metadata` from the creation request.
    pub(crate) fn metadata(&self) -> Option<String> {
        lock(&self.shared).metadata.clone()
    }

    /// Records a creation request's declared length and metadata; a
    /// length that differs from one declared before is refused.
    pub(crate) fn create(&self, declared: Option<u64>, metadata: Option<String>) -> Result<()> {
        let mut s = lock(&self.shared);
        if let Some(d) = declared {
            check_declared(&s, self.ticket.size(), d)?;
            s.declared = Some(d);
        }
        if metadata.is_some() {
            s.metadata = metadata;
        }
        drop(s);
        self.ticket.set_upload(self.offset(), self.length());
        Ok(())
    }

    fn set_offset(&self, offset: u64) {
        lock(&self.shared).offset = offset;
        self.ticket.set_upload(offset, self.length());
    }

    /// Ends the session once, reporting `r` to the ticket and the
    /// metrics; false when it had ended already.
    fn end(&self, r: std::result::Result<&ImportSummary, &Error>) -> bool {
        {
            let mut s = lock(&self.shared);
            if s.ended.is_some() {
                return false;
            }
            s.ended = Some(r.map(|_| ()).map_err(|e| (e.kind(), e.one_line())));
            s.paused_since = None;
        }
        self.report(r);
        true
    }

    /// What [`Session::end`] reports.
    fn report(&self, r: std::result::Result<&ImportSummary, &Error>) {
        // Held until the disks have their final states, so that the import
        // thread cannot report one as active after them.
        let seen = lock(&self.seen);
        let offset = self.offset();
        match r {
            Ok(summary) => {
                self.ticket.set_upload(offset, Some(offset));
                self.ticket.set_manifest(summary.manifest);
                finish_disks(
                    &self.ticket,
                    &self.ova,
                    &self.hrefs,
                    &seen,
                    TransferState::Succeeded,
                );
                self.ticket.succeed();
                self.transfer.succeed();
                tracing::info!(
                    bytes = offset,
                    disks = summary.disks.len(),
                    "OVA import succeeded"
                );
            }
            Err(e) => {
                let msg = e.one_line();
                finish_disks(
                    &self.ticket,
                    &self.ova,
                    &self.hrefs,
                    &seen,
                    TransferState::Failed,
                );
                if let Some(href) = e
                    .context()
                    .entry
                    .as_deref()
                    .and_then(|entry| disk_of(&self.hrefs, entry))
                {
                    self.ticket.set_disk_error(href, &msg);
                }
                self.ticket.fail(msg.clone());
                self.transfer.fail(e);
                if e.kind() == ErrorKind::Integrity {
                    self.metrics.digest_mismatch();
                }
                tracing::warn!(bytes = offset, error = %msg, "OVA import failed");
            }
        }
        self.changed.notify_waiters();
    }

    /// Ends a session paused for longer than its idle limit; false while
    /// it is not (or a writer came back first).
    fn expire_pause(&self) -> bool {
        let Some(idle) = self.idle else {
            return false;
        };
        let e = {
            let mut s = lock(&self.shared);
            match s.paused_since {
                Some(since) if s.ended.is_none() && since.elapsed() >= idle => {}
                _ => return false,
            }
            let e = Error::new(
                ErrorKind::Cancelled,
                format!(
                    "the upload was paused at offset {} for {} s and no client resumed it",
                    s.offset,
                    idle.as_secs()
                ),
            );
            let e = in_place_notes(&self.ticket, s.offset, e);
            s.ended = Some(Err((e.kind(), e.one_line())));
            s.paused_since = None;
            e
        };
        self.report(Err(&e));
        true
    }

    /// Writes a request body into the import; see [`WriteReq`]. `t` is
    /// the request's own handle on the ticket (its activity).
    pub(crate) async fn write(
        self: &Arc<Self>,
        t: &TicketHandle,
        body: Incoming,
        req: WriteReq,
        cfg: &DataConfig,
    ) -> std::result::Result<Written, WriteError> {
        let Ok(mut pipe) = self.lease.clone().try_lock_owned() else {
            h::drain_in_background(body);
            return Err(Error::new(
                ErrorKind::Conflict,
                "another client is writing this upload; one writer at a time",
            )
            .into());
        };
        let (offset, length) = match self.take_lease(t, &req) {
            Ok(v) => v,
            Err(e) => {
                h::drain_in_background(body);
                return Err(e);
            }
        };
        let Some(tx) = pipe.tx.clone() else {
            return Err(self.ended_error().into());
        };
        self.changed.notify_waiters();
        if offset == 0 && req.start == 0 {
            tracing::info!(length = req.declared, "OVA upload started");
        } else {
            tracing::info!(
                start = req.start,
                offset,
                length = req.declared,
                "OVA upload resumed"
            );
        }
        let limit = match (length, self.ticket.size()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut skip = offset - req.start;
        let mut cur = offset;
        let mut reader = BodyReader::new(body, Duration::from_secs(t.inactivity_timeout()))
            .cancelled_by(t.progress().cancel_flag());
        // Small pieces (HTTP/2 frames) wait here until they make a piece
        // worth the import's while (the import pays per piece: its digest
        // threads take each through a channel); whatever waits is
        // committed when the body ends or breaks off, so no received byte
        // is lost to a cut, and none waits longer than
        // `limits::UPLOAD_HOLD_WAIT` for more.
        let mut held = Batch::default();
        let stop = loop {
            let next = if held.is_empty() {
                reader.next_batch(cfg.buffer_size).await
            } else {
                // Bytes wait only while more are coming: a client that
                // pauses mid-body has them committed (and its offset and
                // progress moved) after a short wait. `next_batch` gives
                // up nothing when cancelled at its first wait.
                match tokio::time::timeout(
                    limits::UPLOAD_HOLD_WAIT,
                    reader.next_batch(cfg.buffer_size),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => {
                        if !self.commit(&tx, &mut held, &mut cur).await {
                            break Stop::PipelineGone;
                        }
                        continue;
                    }
                }
            };
            match next {
                Ok(Some(mut b)) => {
                    t.touch();
                    self.transfer.count(b.len());
                    if skip > 0 {
                        let k = skip.min(b.len());
                        b.skip_front(k);
                        skip -= k;
                    }
                    let at = cur + held.len();
                    let over = limit.filter(|&l| at + b.len() > l);
                    if let Some(l) = over {
                        b.truncate(l - at);
                    }
                    held.append(b);
                    if (held.len() >= limits::UPLOAD_JOINED
                        || !held.is_small(limits::UPLOAD_MIN_PIECE)
                        || over.is_some())
                        && !self.commit(&tx, &mut held, &mut cur).await
                    {
                        break Stop::PipelineGone;
                    }
                    if let Some(l) = over {
                        break Stop::Over(match self.declared() {
                            Some(d) if d == l => Error::new(
                                ErrorKind::InvalidArgument,
                                format!("the upload sends more than the {d} bytes it declared"),
                            ),
                            _ => over_size(l),
                        });
                    }
                }
                Ok(None) if !self.commit(&tx, &mut held, &mut cur).await => {
                    break Stop::PipelineGone;
                }
                Ok(None) => break Stop::BodyEnd,
                Err(_) if !self.commit(&tx, &mut held, &mut cur).await => {
                    break Stop::PipelineGone;
                }
                Err(e) => break Stop::BodyError(e),
            }
        };
        let received = reader.received();
        let r = match stop {
            Stop::BodyEnd => {
                let complete = req.ends_package || self.length() == Some(cur);
                if complete {
                    if req.ends_package {
                        lock(&self.shared).declared = Some(cur);
                    }
                    self.finish(&tx).await.map(Written::Complete)
                } else {
                    self.pause(t, "the request's body ended");
                    Ok(Written::Part)
                }
            }
            Stop::BodyError(e) if !t.is_cancelled() => {
                if self.declared() == Some(cur) {
                    // Every byte is here; only the request's end was lost.
                    self.finish(&tx).await.map(Written::Complete)
                } else {
                    self.pause(t, &e.one_line());
                    Err(Error::new(
                        e.kind(),
                        format!("upload paused at offset {cur}: {}", e.one_line()),
                    ))
                }
            }
            Stop::BodyError(e) | Stop::Over(e) => {
                h::drain_in_background(reader.into_body());
                self.end(Err(&e));
                Err(e)
            }
            Stop::PipelineGone => {
                h::drain_in_background(reader.into_body());
                Err(self.ended_error())
            }
        };
        if self.is_ended() {
            pipe.tx = None;
        }
        tracing::debug!(received, offset = cur, "OVA upload request ended");
        r.map_err(WriteError::Failed)
    }

    /// Hands what `held` holds to the import (joined into one piece when
    /// small) and commits it; false when the import is gone.
    async fn commit(&self, tx: &mpsc::Sender<Msg>, held: &mut Batch, cur: &mut u64) -> bool {
        if held.is_empty() {
            return true;
        }
        let mut batch = std::mem::take(held);
        batch.coalesce(limits::UPLOAD_MIN_PIECE);
        let n = batch.len();
        if tx.send(Msg::Data(batch)).await.is_err() {
            return false;
        }
        *cur += n;
        self.set_offset(*cur);
        true
    }

    /// Checks a write against the session under the lease, and if it may
    /// go on, resumes the upload: the committed offset and the length.
    fn take_lease(
        &self,
        t: &TicketHandle,
        req: &WriteReq,
    ) -> std::result::Result<(u64, Option<u64>), WriteError> {
        let mut s = lock(&self.shared);
        if s.ended.is_some() {
            drop(s);
            return Err(self.ended_error().into());
        }
        if req.start > s.offset {
            return Err(WriteError::Ahead { offset: s.offset });
        }
        if let Some(d) = req.declared {
            check_declared(&s, self.ticket.size(), d)?;
        }
        let length = req.declared.or(s.declared).or(self.ticket.size());
        if let (Some(n), Some(l)) = (req.body_len, length)
            && req.start.saturating_add(n) > l
        {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "the body of {n} bytes at offset {} passes the end of the {l}-byte package",
                    req.start
                ),
            )
            .into());
        }
        t.begin()?;
        s.declared = req.declared.or(s.declared);
        s.paused_since = None;
        let offset = s.offset;
        drop(s);
        self.ticket.set_upload(offset, length);
        Ok((offset, length))
    }

    /// The upload waits for a client again.
    fn pause(&self, t: &TicketHandle, why: &str) {
        let offset = {
            let mut s = lock(&self.shared);
            if s.ended.is_some() {
                return;
            }
            s.paused_since = Some(Instant::now());
            s.offset
        };
        t.pause();
        tracing::info!(offset, reason = why, "OVA upload paused");
    }

    /// Asks the import to verify and commit, and waits for it.
    async fn finish(&self, tx: &mpsc::Sender<Msg>) -> Result<ImportSummary> {
        let (reply, answer) = oneshot::channel();
        if tx.send(Msg::End(reply)).await.is_err() {
            return Err(self.ended_error());
        }
        match answer.await {
            Ok(r) => r,
            Err(_) => Err(self.ended_error()),
        }
    }

    /// Why a session that ended refuses a request.
    fn ended_error(&self) -> Error {
        self.failure().unwrap_or_else(|| {
            TicketError::Ended {
                state: self.ticket.state(),
            }
            .into()
        })
    }
}

/// Refuses a declared length over the ticket's size or other than one
/// declared before.
fn check_declared(s: &Shared, size: Option<u64>, d: u64) -> Result<()> {
    if let Some(l) = size
        && d > l
    {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "the upload's length of {d} bytes is larger than the ticket's size of {l} bytes"
            ),
        ));
    }
    match s.declared {
        Some(prev) if prev != d => Err(Error::new(
            ErrorKind::Conflict,
            format!("the upload's length is {prev} bytes, not {d}"),
        )),
        _ => Ok(()),
    }
}

/// The import thread: feeds what writers queue, in order, and ends the
/// session with the import's outcome. Returning drops an unfinished
/// import, which removes its partial targets.
fn work(s: &Arc<Session>, mut importer: Importer, mut rx: mpsc::Receiver<Msg>) {
    let progress = s.ticket.progress();
    while let Some(m) = rx.blocking_recv() {
        if s.is_ended() {
            return;
        }
        match m {
            Msg::Data(batch) => {
                for b in batch.into_pieces() {
                    if let Err(e) = importer.feed(b) {
                        s.end(Err(&e));
                        return;
                    }
                }
                let mut seen = lock(&s.seen);
                if s.is_ended() {
                    return;
                }
                report_disk(&s.ticket, &s.hrefs, &progress, &mut seen);
            }
            Msg::End(reply) => {
                let r = importer.finish();
                match &r {
                    Ok(summary) => s.end(Ok(summary)),
                    Err(e) => s.end(Err(e)),
                };
                let _ = reply.send(r);
                return;
            }
        }
    }
}

/// The session's watcher: ends it when its ticket is cancelled (removed,
/// replaced or expired) or it stays paused too long, and then stops the
/// import thread.
async fn watch(s: Arc<Session>, uploads: Arc<Uploads>) {
    let mut tick = tokio::time::interval(limits::UPLOAD_WATCH_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = s.changed.notified() => {}
            _ = tick.tick() => {}
        }
        if s.is_ended() {
            break;
        }
        // Expiry is applied on the next call into the store: make it now,
        // so that an expired ticket's partial targets go with it.
        uploads.store.purge();
        if s.ticket.is_cancelled() {
            let e = Error::new(
                ErrorKind::Cancelled,
                "the ticket was removed or expired during the upload",
            );
            let e = in_place_notes(&s.ticket, s.offset(), e);
            s.end(Err(&e));
            break;
        }
        if s.expire_pause() {
            break;
        }
    }
    uploads.forget(&s);
    // A writer still holding the lease sees the end and lets go.
    lock_pipe(&s).await.tx = None;
}

/// `e` with a note for each NBD or remote target of the ticket, once the
/// upload has passed `offset` 0: those keep what was written when an
/// upload ends outside the import's own thread (an expiry, a pause too
/// long), where the import cannot say which it had opened.
fn in_place_notes(t: &TicketHandle, offset: u64, e: Error) -> Error {
    if offset == 0 {
        return e;
    }
    let notes: Vec<String> = t
        .ova()
        .into_iter()
        .flat_map(|o| o.disks.iter())
        .filter_map(|d| d.net.as_ref())
        .map(crate::sink::nbd::Landing::failure_note)
        .collect();
    crate::pipeline::import::with_notes(e, &notes)
}

async fn lock_pipe(s: &Session) -> tokio::sync::MutexGuard<'_, Pipe> {
    s.lease.lock().await
}

/// Waits (at most `limit`) until the session has ended and its import
/// thread let go of the import.
pub(crate) async fn await_end(s: &Arc<Session>, limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        loop {
            let notified = s.changed.notified();
            if lock(&s.shared).import_dropped {
                break;
            }
            notified.await;
        }
    })
    .await;
}
