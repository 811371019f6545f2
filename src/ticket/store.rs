//! The ticket store: tickets by id, their expiry, and the live state of the
//! transfers using them. One `std` mutex guards the map and one guards each
//! ticket's live state (always taken in that order); no lock is held
//! across I/O or while bytes move.
//!
//! With a [`Journal`] ([`TicketStore::with_journal`]) every change that
//! `GET /tickets/{id}` would show other than byte counts and idle time is
//! written to the ticket's record before the call that made it returns
//! (an outcome before it becomes visible, so a restart never takes a
//! `succeeded` back), and [`TicketStore::restore`] reads the records
//! again at start-up. The journal's own lock comes first, before the map:
//! the record written is always the state the store holds at that moment.
//!
//! A ticket expires `timeout` seconds after it was added or extended, or
//! after the last data-plane request completed (whichever is later), and
//! also when it has had no connection for `inactivity_timeout` seconds
//! (unless its transfer has finished: the outcome stays readable).
//! The inactivity clocks stand still while the server holds them
//! ([`TicketStore::hold_idle_clocks`]: clients are waiting to be served,
//! and the ticket's own may be among them).
//! An expired ticket is invisible; it is dropped, and any transfer still
//! attached to it cancelled, on the next call into the store.
//!
//! A ticket's `state` moves when a request starts moving bytes
//! ([`TicketHandle::begin`], by the rules of [`TransferState::start`]) and
//! when its transfer reports an outcome; an authorized request that is
//! refused before it starts leaves the state as it was.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::clock::{Clock, SystemClock};
use super::journal::Journal;
use super::model::{
    DiskStatus, Op, TicketKind, TicketRequest, TicketStatus, TransferState, VolumeUrl,
    file_url_path, volume_url,
};
use super::{DEFAULT_INACTIVITY_TIMEOUT, TicketError, ct_eq};
use crate::error::{Error, ErrorKind, Result};
use crate::limits::{MAX_TICKET_TIMEOUT, MAX_TICKETS};
use crate::pipeline::progress::Progress;
use crate::source::volume::AllowedRoots;
use crate::volume::Format;
use crate::volume::nbd::NbdUrl;

/// One disk of an OVA ticket with its path resolved under the storage roots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedDisk {
    /// The disk's href; empty for a blank disk.
    pub href: String,
    /// A blank disk's `ovf:diskId`, instead of an href.
    pub disk_id: Option<String>,
    /// Canonical path of the volume (for an import target that does not
    /// exist yet: its canonical directory joined with its file name); for
    /// an NBD target, its URL (no file).
    pub path: PathBuf,
    /// Import only: the target is this NBD export, written in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<NbdUrl>,
    /// `raw` or `qcow2`, as given.
    pub format: Option<String>,
}

/// The `ova` object of a ticket with its paths resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedOva {
    /// The disks, in the ticket's order.
    pub disks: Vec<ResolvedDisk>,
    /// Export: canonical path of the descriptor to complete.
    pub ovf: Option<PathBuf>,
    /// Export: the VM name.
    pub name: Option<String>,
    /// Export: the VM of a generated descriptor.
    pub vm: Option<super::VmFields>,
    /// Export: the manifest's algorithm (`sha1`, `sha256`, `sha512`).
    pub manifest: Option<String>,
    /// Export: `qcow2` or `vmdk`.
    pub disk_format: Option<String>,
    /// Export: deflate VMDK grains.
    pub compress: Option<bool>,
}

/// What [`TicketStore::restore`] found in the journal.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Tickets known again.
    pub tickets: usize,
    /// Records dropped: expired while the server was down, or naming
    /// paths outside today's storage roots.
    pub dropped: usize,
    /// Transfers a restart cut short, now `failed`.
    pub interrupted: usize,
    /// The import targets of those transfers, whose partial files are left
    /// over.
    pub interrupted_targets: Vec<PathBuf>,
}

/// What never changes for the life of a ticket.
#[derive(Debug)]
struct Spec {
    req: TicketRequest,
    path: Option<PathBuf>,
    /// `image`: the volume is this NBD export, not a file.
    nbd: Option<NbdUrl>,
    /// `image`: the volume's format, stated or probed when the ticket was
    /// added (`None` only where it could not be decided for a record from
    /// before formats were kept: probed at each open).
    format: Option<Format>,
    ova: Option<ResolvedOva>,
}

/// Live state shared between the store and the handles of one ticket.
#[derive(Debug)]
struct Live {
    clock: Arc<dyn Clock>,
    timeout: Duration,
    /// `None`: idle tickets do not expire.
    inactivity: Option<Duration>,
    /// The ticket's own progress record, handed to every transfer.
    progress: Arc<Progress>,
    /// Where changes are journaled, if anywhere.
    persist: Option<Arc<Persist>>,
    state: Mutex<LiveState>,
}

#[derive(Debug)]
struct LiveState {
    deadline: Instant,
    last_activity: Instant,
    connections: usize,
    canceled: bool,
    state: TransferState,
    error: Option<String>,
    disks: Vec<DiskStatus>,
    /// Further progress records attached by transfers.
    attached: Vec<Arc<Progress>>,
    /// The deadline and byte count the journal record holds: activity
    /// moves the deadline without a write until it runs
    /// [`JOURNAL_EXPIRY_SLACK`] ahead, and shutdown writes what moved.
    journaled: (Instant, u64),
    /// Why the ticket was cancelled, the first reason only.
    cancel_cause: Option<CancelCause>,
    /// SHA-256 of the package an `ova-export` ticket last sent whole.
    sha256: Option<String>,
    /// `ova-import`: the committed offset and the declared length of the
    /// upload, once one started.
    upload: Option<(u64, Option<u64>)>,
}

/// Why a ticket's transfers were cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelCause {
    /// The ticket was removed, or replaced by another under its id.
    Removed,
    /// The ticket expired.
    Expired,
    /// The server is stopping.
    Shutdown,
}

#[derive(Debug)]
struct Entry {
    spec: Arc<Spec>,
    live: Arc<Live>,
}

type Map = HashMap<String, Entry>;

/// How far activity may move a ticket's expiry past the one in its
/// journal record before the record is rewritten. Requests end (and move
/// the expiry) many times a second on a busy image ticket; rewriting the
/// record each time would put an fsync on every request. A server killed
/// outright may so bring a ticket's expiry up to this much earlier after
/// its restart; a stopped one writes the exact expiry first.
pub const JOURNAL_EXPIRY_SLACK: Duration = Duration::from_secs(60);

/// The reason `GET` shows for a transfer a restart cut short.
pub const RESTARTED: &str = "server restarted";

/// Tickets by id. Share it in an `Arc` between the control API and the
/// data API.
#[derive(Debug)]
pub struct TicketStore {
    roots: AllowedRoots,
    clock: Arc<dyn Clock>,
    tickets: Arc<Mutex<Map>>,
    persist: Option<Arc<Persist>>,
    /// Live [`IdleHold`]s; changed only under the `tickets` lock, so a
    /// purge and a release never interleave.
    idle_holds: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TicketStore {
    /// A store whose ticket paths must resolve under `roots`, on the
    /// system clock.
    pub fn new(roots: AllowedRoots) -> Self {
        TicketStore::with_clock(roots, Arc::new(SystemClock))
    }

    /// A store on the given clock.
    pub fn with_clock(roots: AllowedRoots, clock: Arc<dyn Clock>) -> Self {
        TicketStore {
            roots,
            clock,
            tickets: Arc::new(Mutex::new(HashMap::new())),
            persist: None,
            idle_holds: AtomicUsize::new(0),
        }
    }

    /// Journals every ticket in `journal` from now on; call
    /// [`TicketStore::restore`] first thing to read back what it holds.
    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.persist = Some(Arc::new(Persist {
            journal,
            tickets: Arc::downgrade(&self.tickets),
            clock: self.clock.clone(),
        }));
        self
    }

    /// Adds the ticket `id`, or replaces it (`PUT /tickets/{id}`).
    ///
    /// Every path must resolve under the storage roots: an existing file
    /// by its canonical path, a write target that does not exist yet by
    /// its directory. Putting the very same ticket again only renews its
    /// expiry (a retried request); a different ticket under the same id
    /// cancels the transfers of the old one, which may name another target.
    pub fn add(&self, id: &str, req: TicketRequest) -> Result<()> {
        req.validate(id)?;
        let mut req = req;
        req.inactivity_timeout = Some(req.inactivity_timeout.unwrap_or(DEFAULT_INACTIVITY_TIMEOUT));
        let spec = self.resolve(req)?;

        let now = self.clock.now();
        let deadline = deadline(now, spec.req.timeout)?;
        let mut map = self.purged(now);
        if let Some(old) = map.get(id) {
            if old.spec.req == spec.req {
                lock(&old.live.state).deadline = deadline;
                drop(map);
                self.sync(id);
                return Ok(());
            }
            old.live
                .cancel(&mut lock(&old.live.state), CancelCause::Removed);
        } else if map.len() >= MAX_TICKETS {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("{MAX_TICKETS} tickets are installed; remove finished ones first"),
            ));
        }
        let disks = spec
            .ova
            .iter()
            .flat_map(|o| &o.disks)
            .map(|d| DiskStatus {
                href: d.href.clone(),
                disk_id: d.disk_id.clone(),
                bytes: 0,
                state: TransferState::Pending,
                sha256: None,
            })
            .collect();
        let live = self.live(&spec, deadline, now, TransferState::Pending, None, disks);
        map.insert(
            id.to_owned(),
            Entry {
                spec: Arc::new(spec),
                live: Arc::new(live),
            },
        );
        drop(map);
        self.sync(id);
        Ok(())
    }

    /// The live state of a ticket installed at `now`.
    fn live(
        &self,
        spec: &Spec,
        deadline: Instant,
        now: Instant,
        state: TransferState,
        error: Option<String>,
        disks: Vec<DiskStatus>,
    ) -> Live {
        Live {
            clock: self.clock.clone(),
            timeout: Duration::from_secs(spec.req.timeout),
            inactivity: spec
                .req
                .inactivity_timeout
                .filter(|&t| t > 0)
                .map(Duration::from_secs),
            progress: Arc::new(Progress::new(spec.req.size)),
            persist: self.persist.clone(),
            state: Mutex::new(LiveState {
                deadline,
                last_activity: now,
                connections: 0,
                canceled: false,
                state,
                error,
                disks,
                attached: Vec::new(),
                journaled: (deadline, 0),
                cancel_cause: None,
                sha256: None,
                upload: None,
            }),
        }
    }

    /// The ticket with its live status (`GET /tickets/{id}`); `NotFound`
    /// for an unknown or expired ticket.
    pub fn get_status(&self, id: &str) -> Result<TicketStatus> {
        let now = self.clock.now();
        let wall = self.clock.wall();
        let map = self.purged(now);
        let entry = map.get(id).ok_or_else(|| not_found(id))?;
        Ok(entry.status(now, wall))
    }

    /// Every live ticket with its status (`GET /tickets`), sorted by id:
    /// ids are unique and do not change, so the order is stable from one
    /// call to the next whatever happens to the transfers. Expired tickets
    /// are dropped first, as for every other call.
    pub fn list(&self) -> Vec<TicketStatus> {
        let now = self.clock.now();
        let wall = self.clock.wall();
        let map = self.purged(now);
        let mut v: Vec<TicketStatus> = map.values().map(|e| e.status(now, wall)).collect();
        drop(map);
        v.sort_by(|a, b| a.ticket.uuid.cmp(&b.ticket.uuid));
        v
    }

    /// Makes the ticket expire `timeout` seconds from now (`PATCH
    /// /tickets/{id}`); 0 expires it at once.
    pub fn extend(&self, id: &str, timeout: u64) -> Result<()> {
        if timeout > MAX_TICKET_TIMEOUT {
            return Err(TicketError::TooLarge {
                field: "timeout",
                value: timeout,
                max: MAX_TICKET_TIMEOUT,
            }
            .into());
        }
        let now = self.clock.now();
        let deadline = deadline(now, timeout)?;
        let map = self.purged(now);
        let entry = map.get(id).ok_or_else(|| not_found(id))?;
        lock(&entry.live.state).deadline = deadline;
        drop(map);
        self.sync(id);
        Ok(())
    }

    /// Removes the ticket and cancels its transfers (`DELETE
    /// /tickets/{id}`). Removing an unknown ticket succeeds: the request
    /// may be a retry. Cancelled transfers stop at their next chunk; the
    /// store does not wait for them.
    pub fn remove(&self, id: &str) -> Result<()> {
        let now = self.clock.now();
        let mut map = self.purged(now);
        if let Some(entry) = map.remove(id) {
            entry
                .live
                .cancel(&mut lock(&entry.live.state), CancelCause::Removed);
        }
        drop(map);
        self.sync(id);
        Ok(())
    }

    /// Authorizes a data-plane request: the ticket must exist, be
    /// unexpired and allow `op` (on an `image` ticket `write` implies
    /// `read`, as in ovirt-imageio). The id is compared with every
    /// ticket's in constant time. Every failure is [`crate::ErrorKind::Auth`].
    pub fn authorize(&self, id: &str, op: Op) -> Result<TicketHandle> {
        let now = self.clock.now();
        let map = self.purged(now);
        let mut found = None;
        for (key, entry) in map.iter() {
            if ct_eq(key.as_bytes(), id.as_bytes()) {
                found = Some(entry);
            }
        }
        let Some(entry) = found else {
            return Err(forbidden("no such ticket".to_owned()));
        };
        let req = &entry.spec.req;
        let allowed = req.ops.contains(&op)
            || (req.kind == TicketKind::Image && op == Op::Read && req.ops.contains(&Op::Write));
        if !allowed {
            return Err(forbidden(format!(
                "transfer {} does not allow {}",
                req.transfer_id.as_deref().unwrap_or("(no transfer id)"),
                op.name()
            )));
        }
        let mut s = lock(&entry.live.state);
        s.connections += 1;
        s.last_activity = now;
        drop(s);
        Ok(TicketHandle {
            spec: entry.spec.clone(),
            live: entry.live.clone(),
            counted: true,
        })
    }

    /// Reads back the tickets journaled by an earlier run. A ticket keeps
    /// its absolute expiry, and one that expired while the server was
    /// down is dropped, as is one whose paths no longer lie under the
    /// storage roots. Outcomes stay as they were. A transfer of an OVA
    /// ticket that was under way is marked `failed` with the reason
    /// [`RESTARTED`], and its import targets are returned so that their
    /// partial files can be removed. An `image` ticket that was `active`
    /// stays so: its state says that a client has used it, not that a
    /// request was in progress, and its client may go on with it.
    /// Each ticket starts a fresh idle period, as after a connection.
    pub fn restore(&self) -> Restored {
        let mut out = Restored::default();
        let Some(p) = &self.persist else {
            return out;
        };
        let (now, wall) = (self.clock.now(), self.clock.wall());
        let wall_now = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut records = Vec::new();
        for (name, data) in p.journal.load() {
            match serde_json::from_slice::<TicketRecord>(&data) {
                Ok(r) if r.version == RECORD_VERSION && name == record_name(&r.ticket.uuid) => {
                    records.push(r)
                }
                Ok(_) => {
                    tracing::warn!(record = %name, "journal record of another layout or name skipped")
                }
                Err(e) => {
                    tracing::warn!(record = %name, error = %e, "unreadable journal record skipped")
                }
            }
        }
        // Beyond the limit (lowered since?), the tickets that live longest stay.
        records.sort_by_key(|r| std::cmp::Reverse(r.expires));
        let mut changed = Vec::new();
        for (i, r) in records.into_iter().enumerate() {
            let id = r.ticket.uuid.clone();
            let log_id = super::log_id(&id).to_owned();
            let drop_record = |why: &str| {
                tracing::info!(ticket = %log_id, "journaled ticket dropped: {why}");
                if let Err(e) = p.journal.remove(&record_name(&id)) {
                    tracing::warn!(ticket = %log_id, error = %e, "cannot remove a journal record");
                }
            };
            // `expires` is whole seconds, cut down from a deadline that lay
            // somewhere within the next second: take its middle, so that
            // `GET` shows the same `expires` as before the restart (the
            // monotonic and wall clocks are read microseconds apart, and a
            // deadline at the exact second would show the one before).
            let remaining = (Duration::from_secs(r.expires) + Duration::from_millis(500))
                .saturating_sub(wall_now);
            if r.expires <= wall_now.as_secs() {
                drop_record("it expired while the server was down");
                out.dropped += 1;
                continue;
            }
            if r.ticket.validate(&id).is_err() {
                drop_record("it is not a valid ticket");
                out.dropped += 1;
                continue;
            }
            // An NBD target is no file, and lies under no root.
            let paths = r.path.iter().chain(r.ova.iter().flat_map(|o| {
                o.disks
                    .iter()
                    .filter(|d| d.nbd.is_none())
                    .map(|d| &d.path)
                    .chain(o.ovf.as_ref())
            }));
            if !paths.into_iter().all(|p| self.roots.holds(p)) {
                drop_record("a path it names is no longer under a storage root");
                out.dropped += 1;
                continue;
            }
            if i >= MAX_TICKETS {
                drop_record("more tickets are journaled than the server holds");
                out.dropped += 1;
                continue;
            }
            let (mut state, mut error, mut disks) = (r.state, r.error, r.disks);
            if matches!(state, TransferState::Active | TransferState::Paused)
                && r.ticket.kind != TicketKind::Image
            {
                state = TransferState::Failed;
                error = Some(RESTARTED.to_owned());
                for d in disks.iter_mut().filter(|d| !d.state.is_final()) {
                    d.state = TransferState::Failed;
                }
                if r.ticket.kind == TicketKind::OvaImport {
                    out.interrupted_targets.extend(r.ova.iter().flat_map(|o| {
                        o.disks
                            .iter()
                            .filter(|d| d.nbd.is_none())
                            .map(|d| d.path.clone())
                    }));
                    for url in r
                        .ova
                        .iter()
                        .flat_map(|o| o.disks.iter())
                        .filter_map(|d| d.nbd.as_ref())
                    {
                        tracing::warn!(ticket = %log_id, target = %url, "the NBD target of the interrupted import may hold partial data");
                    }
                }
                tracing::warn!(ticket = %log_id, "transfer cut short by a restart: marked failed");
                out.interrupted += 1;
                changed.push(id.clone());
            }
            // A record from before formats were kept: decided now, once.
            let format = match (r.ticket.volume_format, &r.path) {
                (None, Some(p)) if r.ticket.kind == TicketKind::Image => {
                    let stated = r.ticket.format.as_deref().and_then(Format::parse);
                    self.resolve_format(p, stated).ok()
                }
                (f, _) => f,
            };
            let spec = Spec {
                req: r.ticket.req,
                path: r.path,
                nbd: r.nbd,
                format,
                ova: r.ova,
            };
            let remaining = remaining.min(Duration::from_secs(MAX_TICKET_TIMEOUT));
            let deadline = now.checked_add(remaining).unwrap_or(now);
            let live = self.live(&spec, deadline, now, state, error, disks);
            live.progress.add_read(r.transferred);
            {
                let mut s = lock(&live.state);
                s.journaled = (deadline, r.transferred);
                s.upload = r.upload;
            }
            lock(&self.tickets).insert(
                id,
                Entry {
                    spec: Arc::new(spec),
                    live: Arc::new(live),
                },
            );
            out.tickets += 1;
        }
        for id in changed {
            self.sync(&id);
        }
        out
    }

    /// Drops the tickets that expired (cancelling their transfers) now
    /// rather than on the next call: for a watcher of a paused upload,
    /// whose partial targets go with its ticket.
    pub fn purge(&self) {
        drop(self.purged(self.clock.now()));
    }

    /// The storage roots every path must resolve under.
    pub fn roots(&self) -> &AllowedRoots {
        &self.roots
    }

    /// Stops every ticket's inactivity clock until the hold is dropped;
    /// then each ticket starts a fresh idle period, as when a connection
    /// ends. The server holds the clocks while clients wait for a
    /// connection slot: a ticket's client may be one of them, and a wait
    /// the server imposes is not the client's inactivity. The absolute
    /// `timeout` still runs, so no ticket outlives it.
    pub fn hold_idle_clocks(self: &Arc<Self>) -> IdleHold {
        let _map = lock(&self.tickets);
        self.idle_holds.fetch_add(1, Ordering::Relaxed);
        IdleHold {
            store: self.clone(),
        }
    }

    /// Cancels every active transfer (server shutdown). The tickets stay,
    /// and so do their journal records, as they stood before: each first
    /// gets the expiry and byte count activity moved since it was written,
    /// and the cancellation itself is not journaled, so that a restarted
    /// server shows an interrupted transfer as one (see
    /// [`TicketStore::restore`]) and an unused ticket as still usable.
    pub fn cancel_all(&self) {
        if self.persist.is_some() {
            let moved: Vec<String> = lock(&self.tickets)
                .iter()
                .filter(|(_, e)| {
                    let s = lock(&e.live.state);
                    s.journaled != (s.deadline, e.live.transferred(&s))
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in moved {
                self.sync(&id);
            }
        }
        let map = lock(&self.tickets);
        for e in map.values() {
            e.live
                .cancel(&mut lock(&e.live.state), CancelCause::Shutdown);
        }
    }

    /// The map with expired tickets dropped (their transfers cancelled);
    /// their journal records are removed once the map is unlocked.
    fn purged(&self, now: Instant) -> Purged<'_> {
        let mut map = lock(&self.tickets);
        let idle_held = self.idle_holds.load(Ordering::Relaxed) > 0;
        let mut gone = Vec::new();
        map.retain(|id, e| {
            let mut s = lock(&e.live.state);
            if e.live.expired(&s, now, idle_held) {
                e.live.cancel(&mut s, CancelCause::Expired);
                gone.push(id.clone());
                false
            } else {
                true
            }
        });
        Purged {
            map: Some(map),
            gone,
            store: self,
        }
    }

    /// Makes the journal record of `id` say what the store holds now.
    fn sync(&self, id: &str) {
        if let Some(p) = &self.persist {
            p.sync(id);
        }
    }

    /// Resolves every path of a validated request under the roots.
    fn resolve(&self, req: TicketRequest) -> Result<Spec> {
        let mut path = None;
        let mut nbd = None;
        let mut format = None;
        let mut ova = None;
        match req.kind {
            TicketKind::Image => match req.url.as_deref().map(|u| volume_url("url", u)) {
                Some(Ok(VolumeUrl::File(p))) => {
                    let canon = self.resolve_path("url", &p, req.ops.contains(&Op::Write))?;
                    let stated = req.format.as_deref().and_then(Format::parse);
                    format = Some(self.resolve_format(&canon, stated)?);
                    path = Some(canon);
                }
                // The export presents guest bytes whatever the format
                // behind it; it is connected to at the first request.
                Some(Ok(VolumeUrl::Nbd(u))) => nbd = Some(u),
                Some(Err(e)) => return Err(e.into()),
                None => {}
            },
            TicketKind::OvaImport | TicketKind::OvaExport => {
                let create = req.kind == TicketKind::OvaImport;
                if let Some(spec) = &req.ova {
                    let mut disks = Vec::with_capacity(spec.disks.len());
                    let mut seen = HashSet::new();
                    for (i, d) in spec.disks.iter().enumerate() {
                        let field = format!("ova.disks[{i}].url");
                        let (p, nbd) = match volume_url(&field, &d.url)? {
                            VolumeUrl::Nbd(u) if create => (PathBuf::from(u.to_string()), Some(u)),
                            VolumeUrl::Nbd(_) => {
                                return Err(TicketError::InvalidField {
                                    field,
                                    reason: "NBD sources are not supported".into(),
                                }
                                .into());
                            }
                            VolumeUrl::File(p) => (self.resolve_path(&field, &p, create)?, None),
                        };
                        if !seen.insert(p.clone()) {
                            return Err(TicketError::InvalidField {
                                field,
                                reason: format!("{} is named by another disk", p.display()),
                            }
                            .into());
                        }
                        disks.push(ResolvedDisk {
                            href: d.href.clone(),
                            disk_id: d.disk_id.clone(),
                            path: p,
                            nbd,
                            format: d.format.clone(),
                        });
                    }
                    let ovf = match &spec.ovf {
                        Some(u) => Some(self.resolve_path(
                            "ova.ovf",
                            &file_url_path("ova.ovf", u)?,
                            false,
                        )?),
                        None => None,
                    };
                    ova = Some(ResolvedOva {
                        disks,
                        ovf,
                        name: spec.name.clone(),
                        vm: spec.vm.clone(),
                        manifest: spec.manifest.clone(),
                        disk_format: spec.disk_format.clone(),
                        compress: spec.compress,
                    });
                }
            }
        }
        Ok(Spec {
            req,
            path,
            nbd,
            format,
            ova,
        })
    }

    /// The format of the volume at the canonical `path`: the `stated` one,
    /// which for qcow2 must find a qcow2 header, or the one its header
    /// shows. A volume that does not exist yet is raw (it is created at
    /// the first write); a qcow2 one must exist. Decided once, here: the
    /// bytes an upload writes into a raw volume never turn it into
    /// another format.
    fn resolve_format(&self, path: &Path, stated: Option<Format>) -> Result<Format> {
        let field_error = |reason: String| -> Error {
            TicketError::InvalidField {
                field: "format".to_owned(),
                reason: format!("{}: {reason}", path.display()),
            }
            .into()
        };
        // Non-blocking, so that a FIFO named by a ticket cannot hold the
        // control API; nothing is read from anything but a file's start.
        let file = match self.roots.open(path, OFlags::RDONLY | OFlags::NONBLOCK, 0) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return match stated {
                    Some(Format::Qcow2) => Err(field_error(
                        "a qcow2 volume must exist before its ticket is added".to_owned(),
                    )),
                    _ => Ok(Format::Raw),
                };
            }
            Err(e) => return Err(e),
        };
        let found = crate::volume::probe(&file, path)?;
        match (stated, found) {
            (Some(Format::Qcow2), Format::Raw) => {
                Err(field_error("has no qcow2 header".to_owned()))
            }
            // A raw volume's guest can write a qcow2 header naming any
            // file as its backing file; only the engine, by stating the
            // format, may have a backing chain followed.
            (None, Format::Qcow2) if crate::volume::qcow2::names_backing_file(&file, path)? => Err(field_error(
                "is a qcow2 image with a backing file: state \"format\": \"qcow2\" to serve it with its chain (the header of a raw volume can look like this too)"
                    .to_owned(),
            )),
            (Some(f), _) => Ok(f),
            (None, f) => Ok(f),
        }
    }

    /// The canonical form of `p` under the roots. A write target that does
    /// not exist yet (`create`) is judged by its directory.
    pub(crate) fn resolve_path(&self, field: &str, p: &Path, create: bool) -> Result<PathBuf> {
        let invalid = |reason: &str| -> Error {
            TicketError::InvalidField {
                field: field.to_owned(),
                reason: format!("{}: {reason}", p.display()),
            }
            .into()
        };
        let canon = match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() && std::fs::metadata(p).is_err() => {
                return Err(invalid("is a symbolic link to nothing"));
            }
            Ok(_) => self.roots.check(p)?,
            Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
                    return Err(invalid("names no file"));
                };
                self.roots.check(dir)?.join(name)
            }
            Err(e) => return Err(Error::from(e).at_path(p)),
        };
        if canon.is_dir() {
            return Err(invalid("is a directory"));
        }
        Ok(canon)
    }
}

fn deadline(now: Instant, secs: u64) -> Result<Instant> {
    now.checked_add(Duration::from_secs(secs)).ok_or_else(|| {
        TicketError::TooLarge {
            field: "timeout",
            value: secs,
            max: MAX_TICKET_TIMEOUT,
        }
        .into()
    })
}

fn not_found(id: &str) -> Error {
    TicketError::NotFound { id: id.to_owned() }.into()
}

fn forbidden(reason: String) -> Error {
    TicketError::Forbidden { reason }.into()
}

impl Entry {
    /// The ticket's status at `now` (monotonic) and `wall` (the same
    /// instant on the system clock, for `expires`).
    fn status(&self, now: Instant, wall: SystemTime) -> TicketStatus {
        let s = lock(&self.live.state);
        let expires = unix_secs(wall, s.deadline.saturating_duration_since(now));
        let idle_time = if s.connections > 0 {
            0
        } else {
            now.saturating_duration_since(s.last_activity).as_secs()
        };
        TicketStatus {
            ticket: self.spec.req.clone(),
            expires,
            idle_time,
            active: s.connections > 0,
            canceled: s.canceled,
            transferred: self.live.transferred(&s),
            connections: s.connections as u64,
            state: s.state,
            error: s.error.clone(),
            disks: s.disks.clone(),
            sha256: s.sha256.clone(),
            offset: s.upload.map(|u| u.0),
            length: s.upload.and_then(|u| u.1),
        }
    }
}

impl Live {
    fn expired(&self, s: &LiveState, now: Instant, idle_held: bool) -> bool {
        if now >= s.deadline {
            return true;
        }
        // A finished transfer keeps its ticket until `timeout`, so the
        // engine can read the outcome however slowly it polls. A paused
        // upload is timed by its own watcher, which fails it (and so
        // keeps the reason readable) after `inactivity_timeout`.
        let finished = s.state.is_final() || s.state == TransferState::Paused;
        match self.inactivity {
            Some(idle) if s.connections == 0 && !finished && !idle_held => {
                now.saturating_duration_since(s.last_activity) >= idle
            }
            _ => false,
        }
    }

    fn cancel(&self, s: &mut LiveState, cause: CancelCause) {
        s.canceled = true;
        s.cancel_cause.get_or_insert(cause);
        if matches!(
            s.state,
            TransferState::Pending | TransferState::Active | TransferState::Paused
        ) {
            s.state = TransferState::Cancelled;
        }
        self.progress.cancel();
        for p in &s.attached {
            p.cancel();
        }
    }

    fn transferred(&self, s: &LiveState) -> u64 {
        s.attached
            .iter()
            .filter(|p| !Arc::ptr_eq(p, &self.progress))
            .fold(self.progress.bytes_read(), |acc, p| {
                acc.saturating_add(p.bytes_read())
            })
    }

    /// Records activity: the idle clock restarts and the ticket lives at
    /// least `timeout` more seconds (an extension is never shortened).
    /// True when the expiry moved [`JOURNAL_EXPIRY_SLACK`] past the
    /// journaled one: the caller then rewrites the record.
    #[must_use]
    fn touch(&self, s: &mut LiveState) -> bool {
        let now = self.clock.now();
        s.last_activity = now;
        if let Some(d) = now.checked_add(self.timeout)
            && d > s.deadline
        {
            s.deadline = d;
        }
        self.persist.is_some()
            && !s.canceled
            && s.deadline.saturating_duration_since(s.journaled.0) > JOURNAL_EXPIRY_SLACK
    }
}

/// One authorized use of a ticket, held by a data-plane connection for the
/// length of a request or transfer. It carries what the transfer needs
/// and reports back into the store; dropping it ends the connection's use
/// (and counts as activity).
#[derive(Debug)]
pub struct TicketHandle {
    spec: Arc<Spec>,
    live: Arc<Live>,
    /// Counted among the ticket's connections (see [`TicketHandle::detached`]).
    counted: bool,
}

impl TicketHandle {
    /// The ticket id.
    pub fn id(&self) -> &str {
        &self.spec.req.uuid
    }

    /// The ticket kind.
    pub fn kind(&self) -> TicketKind {
        self.spec.req.kind
    }

    /// Allowed operations, as given.
    pub fn ops(&self) -> &[Op] {
        &self.spec.req.ops
    }

    /// Image size (`image`), or the package size when the engine gave one.
    pub fn size(&self) -> Option<u64> {
        self.spec.req.size
    }

    /// Canonical path of the volume of an `image` ticket.
    pub fn path(&self) -> Option<&Path> {
        self.spec.path.as_deref()
    }

    /// The NBD export of an `image` ticket whose volume is one.
    pub fn nbd(&self) -> Option<&NbdUrl> {
        self.spec.nbd.as_ref()
    }

    /// The format of the volume of an `image` ticket, decided when the
    /// ticket was added; `None` when it is to be probed at each open.
    pub fn format(&self) -> Option<Format> {
        self.spec.format
    }

    /// Resolved disks and descriptor of an OVA ticket.
    pub fn ova(&self) -> Option<&ResolvedOva> {
        self.spec.ova.as_ref()
    }

    /// Whether zeroing may deallocate.
    pub fn sparse(&self) -> bool {
        self.spec.req.sparse.unwrap_or(false)
    }

    /// The ticket as installed (with `inactivity_timeout` filled in).
    pub fn request(&self) -> &TicketRequest {
        &self.spec.req
    }

    /// Seconds a connection may stay silent; 0 means no limit.
    pub fn inactivity_timeout(&self) -> u64 {
        self.spec.req.inactivity_timeout.unwrap_or(0)
    }

    /// The ticket's progress record: give it to the pipeline; its bytes
    /// show as `transferred`, and removing the ticket cancels it.
    pub fn progress(&self) -> Arc<Progress> {
        self.live.progress.clone()
    }

    /// Registers another progress record of this transfer (counted in
    /// `transferred`, cancelled with the ticket). Cancelled at once when
    /// the ticket already is.
    pub fn attach(&self, progress: Arc<Progress>) {
        let mut s = lock(&self.live.state);
        if s.canceled {
            progress.cancel();
        }
        if !Arc::ptr_eq(&progress, &self.live.progress)
            && !s.attached.iter().any(|p| Arc::ptr_eq(p, &progress))
        {
            s.attached.push(progress);
        }
    }

    /// Counts `n` bytes moved by a ranged request and records activity.
    pub fn add_transferred(&self, n: u64) {
        self.live.progress.add_read(n);
        self.touch();
    }

    /// Records activity: keeps an active ticket from expiring. Call it as
    /// bytes flow (at least every few seconds) and when a request ends.
    pub fn touch(&self) {
        let rewrite = self.live.touch(&mut lock(&self.live.state));
        if rewrite {
            self.sync();
        }
    }

    /// Rewrites the ticket's journal record from the store.
    fn sync(&self) {
        if let Some(p) = &self.live.persist {
            p.sync(self.id());
        }
    }

    /// A handle on the same ticket that is not one of its connections:
    /// for what outlives a request (a paused upload waiting for its
    /// client), which must neither keep the ticket from going idle nor
    /// show as a connected client.
    pub fn detached(&self) -> TicketHandle {
        TicketHandle {
            spec: self.spec.clone(),
            live: self.live.clone(),
            counted: false,
        }
    }

    /// Whether `other` is a handle on this very ticket (not one since
    /// replaced under the same id).
    pub fn same_ticket(&self, other: &TicketHandle) -> bool {
        Arc::ptr_eq(&self.live, &other.live)
    }

    /// An `ova-import` upload stopped part way: `paused` until a client
    /// resumes it (see [`TransferState::Paused`]). Only an `active`
    /// transfer pauses.
    pub fn pause(&self) {
        let mut s = lock(&self.live.state);
        let changed = s.state == TransferState::Active;
        if changed {
            s.state = TransferState::Paused;
        }
        drop(s);
        if changed {
            self.sync();
        }
    }

    /// Records the committed offset of an `ova-import` upload and its
    /// declared length, as `GET /tickets/{id}` shows them.
    pub fn set_upload(&self, offset: u64, length: Option<u64>) {
        lock(&self.live.state).upload = Some((offset, length));
    }

    /// The committed offset and declared length [`TicketHandle::set_upload`]
    /// recorded last.
    pub fn upload(&self) -> Option<(u64, Option<u64>)> {
        lock(&self.live.state).upload
    }

    /// Where the transfer stands now.
    pub fn state(&self) -> TransferState {
        lock(&self.live.state).state
    }

    /// Starts (or continues) the ticket's transfer for a request that is
    /// about to move bytes: `active`, or the refusal of
    /// [`TransferState::start`] with nothing changed. Checked and applied
    /// under one lock, so two requests never both start on an ended
    /// transfer.
    pub fn begin(&self) -> Result<()> {
        let mut s = lock(&self.live.state);
        let before = s.state;
        s.state = s.state.start(self.kind())?;
        let changed = s.state != before;
        drop(s);
        if changed {
            self.sync();
        }
        Ok(())
    }

    /// Whether the ticket was removed, replaced or expired: the transfer
    /// must stop (the progress record says so too).
    pub fn is_cancelled(&self) -> bool {
        lock(&self.live.state).canceled
    }

    /// Reports the progress of one disk of an OVA ticket; an unknown href
    /// is ignored.
    pub fn set_disk_progress(&self, href: &str, bytes: u64, state: TransferState) {
        let mut s = lock(&self.live.state);
        if let Some(d) = s
            .disks
            .iter_mut()
            .find(|d| !d.href.is_empty() && d.href == href)
        {
            d.bytes = bytes;
            d.state = state;
        }
    }

    /// Reports where a blank disk of an import ticket stands: it has no
    /// entry, so no bytes, only an outcome. An unknown id is ignored.
    pub fn set_blank_disk_state(&self, disk_id: &str, state: TransferState) {
        let mut s = lock(&self.live.state);
        if let Some(d) = s
            .disks
            .iter_mut()
            .find(|d| d.disk_id.as_deref() == Some(disk_id))
        {
            d.state = state;
        }
    }

    /// Why the ticket was cancelled, once it is.
    pub fn cancel_cause(&self) -> Option<CancelCause> {
        lock(&self.live.state).cancel_cause
    }

    /// A view of the ticket's cancellation that outlives this handle and
    /// does not count as a connection: what is left of a transfer after
    /// its request (a response body still streaming) asks it.
    pub fn watch(&self) -> TicketWatch {
        TicketWatch {
            live: self.live.clone(),
        }
    }

    /// Records the SHA-256 of a whole package sent and of each disk entry
    /// in it (`ova-export`), shown until a later whole download replaces
    /// them. Unknown hrefs are ignored.
    pub fn set_checksums(&self, package: String, disks: &[(String, String)]) {
        let mut s = lock(&self.live.state);
        s.sha256 = Some(package);
        for (href, hex) in disks {
            if let Some(d) = s.disks.iter_mut().find(|d| &d.href == href) {
                d.sha256 = Some(hex.clone());
            }
        }
    }

    /// The checksums [`TicketHandle::set_checksums`] recorded: the
    /// package's, and each disk's by href.
    pub fn checksums(&self) -> Option<(String, Vec<DiskStatus>)> {
        let s = lock(&self.live.state);
        s.sha256.clone().map(|p| (p, s.disks.clone()))
    }

    /// Marks the transfer complete and verified.
    pub fn succeed(&self) {
        self.finish(TransferState::Succeeded, None);
    }

    /// Marks the transfer failed, with the one-line reason `GET` shows.
    pub fn fail(&self, error: impl Into<String>) {
        self.finish(TransferState::Failed, Some(error.into()));
    }

    /// Records the outcome, journaled before it becomes visible.
    fn finish(&self, state: TransferState, error: Option<String>) {
        let apply = || {
            let mut s = lock(&self.live.state);
            if s.state != TransferState::Cancelled {
                s.state = state;
                s.error = error.clone();
            }
        };
        match &self.live.persist {
            Some(p) => p.finish(self.id(), &self.live, state, error.as_deref(), apply),
            None => apply(),
        }
    }
}

/// See [`TicketHandle::watch`].
#[derive(Debug, Clone)]
pub struct TicketWatch {
    live: Arc<Live>,
}

impl TicketWatch {
    /// Why the ticket was cancelled, once it is.
    pub fn cancel_cause(&self) -> Option<CancelCause> {
        lock(&self.live.state).cancel_cause
    }
}

/// Keeps the store's inactivity clocks standing; see
/// [`TicketStore::hold_idle_clocks`].
#[derive(Debug)]
#[must_use = "the clocks run again as soon as the hold is dropped"]
pub struct IdleHold {
    store: Arc<TicketStore>,
}

impl Drop for IdleHold {
    fn drop(&mut self) {
        let store = &self.store;
        let now = store.clock.now();
        let map = lock(&store.tickets);
        if store.idle_holds.fetch_sub(1, Ordering::Relaxed) == 1 {
            for e in map.values() {
                let mut s = lock(&e.live.state);
                s.last_activity = s.last_activity.max(now);
            }
        }
    }
}

impl Drop for TicketHandle {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let mut s = lock(&self.live.state);
        s.connections = s.connections.saturating_sub(1);
        let rewrite = self.live.touch(&mut s);
        drop(s);
        if rewrite {
            self.sync();
        }
    }
}

/// The ticket map with expired tickets dropped; unlocking it removes
/// their journal records (I/O the map's lock must not wait for).
struct Purged<'a> {
    map: Option<MutexGuard<'a, Map>>,
    gone: Vec<String>,
    store: &'a TicketStore,
}

impl std::ops::Deref for Purged<'_> {
    type Target = Map;
    fn deref(&self) -> &Map {
        self.map
            .as_deref()
            .unwrap_or_else(|| unreachable!("taken only in drop"))
    }
}

impl std::ops::DerefMut for Purged<'_> {
    fn deref_mut(&mut self) -> &mut Map {
        self.map
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("taken only in drop"))
    }
}

impl Drop for Purged<'_> {
    fn drop(&mut self) {
        drop(self.map.take());
        for id in std::mem::take(&mut self.gone) {
            self.store.sync(&id);
        }
    }
}

/// What a journal record of a ticket holds: the ticket as `GET` shows it,
/// less what only a running server knows (connections, idle time), plus
/// the paths it resolved to.
#[derive(Debug, Serialize, Deserialize)]
struct TicketRecord {
    /// [`RECORD_VERSION`].
    version: u32,
    ticket: RecordedTicket,
    /// Unix time (s) of expiry: absolute, so a restart keeps it.
    expires: u64,
    state: TransferState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    transferred: u64,
    #[serde(default)]
    disks: Vec<DiskStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbd: Option<NbdUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ova: Option<ResolvedOva>,
    /// `ova-import`: the committed offset and the length, as `GET` shows
    /// them (`offset`, `length`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upload: Option<(u64, Option<u64>)>,
}

/// A ticket as the journal keeps it: the request as installed, and what
/// was decided about it then.
#[derive(Debug, Serialize, Deserialize)]
struct RecordedTicket {
    #[serde(flatten)]
    req: TicketRequest,
    /// `image`: the volume's format, stated or probed when the ticket was
    /// added; the file's bytes since then do not change it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    volume_format: Option<Format>,
}

impl std::ops::Deref for RecordedTicket {
    type Target = TicketRequest;

    fn deref(&self) -> &TicketRequest {
        &self.req
    }
}

/// The layout of [`TicketRecord`]; a record of another version is
/// skipped at start-up.
const RECORD_VERSION: u32 = 1;

/// A ticket's record name: a digest of its id, so that not even the
/// directory listing shows a credential.
fn record_name(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..16])
}

/// The journal link shared by the store and its tickets' live states.
#[derive(Debug)]
struct Persist {
    journal: Journal,
    /// Weak: the map holds the live states that hold this.
    tickets: Weak<Mutex<Map>>,
    clock: Arc<dyn Clock>,
}

/// An outcome to journal before it is applied.
struct Outcome<'a> {
    live: &'a Arc<Live>,
    state: TransferState,
    error: Option<&'a str>,
}

impl Persist {
    /// Makes the record of `id` say what the store holds: the ticket as
    /// it stands, or no record once it is gone. A ticket cancelled by a
    /// shutdown keeps the record it had.
    fn sync(&self, id: &str) {
        self.write(id, None);
    }

    /// Journals the outcome of the transfer on `live`, then (still in
    /// the journal's lock, so no other write can slip in between with the
    /// older state) runs `apply` to make it visible. A success reported
    /// after a shutdown cancelled the transfer is journaled all the same:
    /// its targets are in place. Any other outcome of a cancelled transfer
    /// is the cancellation's, and not journaled.
    fn finish(
        &self,
        id: &str,
        live: &Arc<Live>,
        state: TransferState,
        error: Option<&str>,
        apply: impl FnOnce(),
    ) {
        let _held = self.write(id, Some(Outcome { live, state, error }));
        apply();
    }

    fn write(&self, id: &str, outcome: Option<Outcome<'_>>) -> super::journal::JournalGuard<'_> {
        let held = self.journal.lock();
        let Some(tickets) = self.tickets.upgrade() else {
            return held;
        };
        let (now, wall) = (self.clock.now(), self.clock.wall());
        let record = {
            let map = lock(&tickets);
            match map.get(id) {
                None => Some(None),
                Some(e) => match &outcome {
                    Some(o) if !Arc::ptr_eq(&e.live, o.live) => None,
                    _ => e.record(now, wall, outcome.as_ref()).map(Some),
                },
            }
        };
        let name = record_name(id);
        let r = match record {
            Some(Some(data)) => self.journal.write(&name, &data),
            Some(None) => self.journal.remove(&name),
            None => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!(ticket = %super::log_id(id), error = %e, "cannot journal the ticket; a restart would not know this change");
        }
        held
    }
}

impl Entry {
    /// The journal record, marking what it holds as journaled; `None`
    /// when nothing is to be written (see [`Persist::finish`]).
    fn record(
        &self,
        now: Instant,
        wall: SystemTime,
        outcome: Option<&Outcome<'_>>,
    ) -> Option<Vec<u8>> {
        let mut s = lock(&self.live.state);
        let (mut state, mut error) = (s.state, s.error.clone());
        match outcome {
            Some(o) if s.canceled && o.state != TransferState::Succeeded => return None,
            Some(o) => {
                state = o.state;
                error = o.error.map(str::to_owned);
            }
            None if s.canceled => return None,
            None => {}
        }
        let transferred = self.live.transferred(&s);
        s.journaled = (s.deadline, transferred);
        let record = TicketRecord {
            version: RECORD_VERSION,
            ticket: RecordedTicket {
                req: self.spec.req.clone(),
                volume_format: self.spec.format,
            },
            expires: unix_secs(wall, s.deadline.saturating_duration_since(now)),
            state,
            error,
            transferred,
            disks: s.disks.clone(),
            path: self.spec.path.clone(),
            nbd: self.spec.nbd.clone(),
            ova: self.spec.ova.clone(),
            upload: s.upload,
        };
        drop(s);
        match serde_json::to_vec(&record) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(ticket = %super::log_id(&self.spec.req.uuid), error = %e, "cannot journal the ticket");
                None
            }
        }
    }
}

/// `wall + remaining` as Unix seconds, as `expires` shows it.
fn unix_secs(wall: SystemTime, remaining: Duration) -> u64 {
    wall.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(remaining)
        .as_secs()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::super::clock::ManualClock;
    use super::super::model::{OvaDisk, OvaSpec};
    use super::*;
    use crate::ErrorKind;

    const ID: &str = "5a1d3c7e-1f0b-4b8e-8a57-2d6c0e4f9a13";
    const T0: u64 = 1_700_000_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        clock: Arc<ManualClock>,
        store: TicketStore,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        std::fs::write(root.join("vol.raw"), b"").unwrap();
        let clock = Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(T0),
        ));
        let roots = AllowedRoots::new(std::slice::from_ref(&root)).unwrap();
        let store = TicketStore::with_clock(roots, clock.clone());
        Fixture {
            _dir: dir,
            root,
            clock,
            store,
        }
    }

    impl Fixture {
        fn url(&self, name: &str) -> String {
            format!("file://{}", self.root.join(name).display())
        }

        fn image(&self, ops: &[Op]) -> TicketRequest {
            TicketRequest {
                uuid: ID.into(),
                size: Some(1 << 30),
                url: Some(self.url("vol.raw")),
                ops: ops.to_vec(),
                timeout: 300,
                inactivity_timeout: Some(60),
                sparse: None,
                format: None,
                dirty: None,
                transfer_id: Some("tr-1".into()),
                filename: None,
                kind: TicketKind::Image,
                ova: None,
            }
        }

        fn ova_import(&self) -> TicketRequest {
            TicketRequest {
                url: None,
                size: None,
                kind: TicketKind::OvaImport,
                ova: Some(OvaSpec {
                    disks: vec![
                        OvaDisk {
                            href: "d1.vmdk".into(),
                            disk_id: None,
                            url: self.url("new1.qcow2"),
                            format: Some("qcow2".into()),
                        },
                        OvaDisk {
                            href: "d2.vmdk".into(),
                            disk_id: None,
                            url: self.url("new2.raw"),
                            format: None,
                        },
                    ],
                    ovf: None,
                    name: None,
                    vm: None,
                    manifest: None,
                    disk_format: None,
                    compress: None,
                }),
                ..self.image(&[Op::Write])
            }
        }

        fn advance(&self, secs: u64) {
            self.clock.advance(Duration::from_secs(secs));
        }

        fn visible(&self) -> bool {
            match self.store.get_status(ID) {
                Ok(_) => true,
                Err(e) if e.kind() == ErrorKind::NotFound => false,
                Err(e) => panic!("{e}"),
            }
        }

        /// An `ova-export` ticket reading the existing `vol.raw`.
        fn ova_export(&self) -> TicketRequest {
            TicketRequest {
                kind: TicketKind::OvaExport,
                ops: vec![Op::Read],
                ova: Some(OvaSpec {
                    disks: vec![OvaDisk {
                        href: "vol.qcow2".into(),
                        disk_id: None,
                        url: self.url("vol.raw"),
                        format: None,
                    }],
                    ovf: None,
                    name: Some("vm".into()),
                    vm: None,
                    manifest: None,
                    disk_format: None,
                    compress: None,
                }),
                ..self.ova_import()
            }
        }

        /// Adds `req` under `id` (its `uuid` set to match).
        fn add_as(&self, id: &str, mut req: TicketRequest) {
            req.uuid = id.into();
            self.store.add(id, req).unwrap();
        }

        /// The ids `list` returns, in its order.
        fn listed(&self) -> Vec<String> {
            self.store
                .list()
                .into_iter()
                .map(|s| s.ticket.uuid)
                .collect()
        }
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<TicketStore>();
        check::<TicketHandle>();
    }

    #[test]
    fn status_shows_ticket_and_live_fields() {
        let f = fixture();
        f.store.add(ID, f.image(&[Op::Read])).unwrap();
        f.advance(10);
        let s = f.store.get_status(ID).unwrap();
        assert_eq!(s.ticket.uuid, ID);
        assert_eq!(s.ticket.url, Some(f.url("vol.raw")));
        assert_eq!(s.expires, T0 + 300);
        assert_eq!(s.idle_time, 10);
        assert!(!s.active);
        assert_eq!(s.connections, 0);
        assert_eq!(s.state, TransferState::Pending);
        assert_eq!(s.transferred, 0);

        let h = f.store.authorize(ID, Op::Read).unwrap();
        assert_eq!(h.path(), Some(f.root.join("vol.raw").as_path()));
        assert_eq!(h.size(), Some(1 << 30));
        // Authorized is not started: a request refused now changes nothing.
        assert_eq!(
            f.store.get_status(ID).unwrap().state,
            TransferState::Pending
        );
        h.begin().unwrap();
        h.add_transferred(4096);
        let s = f.store.get_status(ID).unwrap();
        assert!(s.active);
        assert_eq!(s.connections, 1);
        assert_eq!(s.idle_time, 0);
        assert_eq!(s.transferred, 4096);
        assert_eq!(s.state, TransferState::Active);
        // Activity moved the expiry.
        assert_eq!(s.expires, T0 + 10 + 300);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["uuid"], ID);
        assert_eq!(json["active"], true);
    }

    #[test]
    fn default_inactivity_timeout_is_filled_in() {
        let f = fixture();
        let mut req = f.image(&[Op::Read]);
        req.inactivity_timeout = None;
        f.store.add(ID, req).unwrap();
        let s = f.store.get_status(ID).unwrap();
        assert_eq!(
            s.ticket.inactivity_timeout,
            Some(DEFAULT_INACTIVITY_TIMEOUT)
        );
    }

    #[test]
    fn validation_errors_reach_the_caller() {
        let f = fixture();
        let e = f.store.add("other", f.image(&[Op::Read])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("does not match"), "{e}");

        let e = f.store.add(ID, f.image(&[])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);

        let mut req = f.image(&[Op::Read]);
        req.url = Some("file://vol.raw".into());
        assert_eq!(
            f.store.add(ID, req).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );

        let mut req = f.ova_import();
        req.ova = None;
        let e = f.store.add(ID, req).unwrap_err();
        assert!(e.to_string().contains("'ova'"), "{e}");
        assert!(!f.visible());
    }

    #[test]
    fn path_outside_roots_is_refused_by_name() {
        let f = fixture();
        let outside = f.root.parent().unwrap().join("secret.raw");
        std::fs::write(&outside, b"").unwrap();
        let mut req = f.image(&[Op::Read]);
        req.url = Some(format!("file://{}", outside.display()));
        let e = f.store.add(ID, req).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.one_line().contains(&outside.display().to_string()), "{e}");

        // `..` cannot climb out either.
        let mut req = f.image(&[Op::Read]);
        req.url = Some(f.url("../secret.raw"));
        assert!(f.store.add(ID, req).is_err());

        // A new target is judged by its directory.
        let mut req = f.ova_import();
        req.ova.as_mut().unwrap().disks[1].url = f.url("../new.raw");
        let e = f.store.add(ID, req).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(!f.visible());
    }

    #[test]
    fn missing_sources_and_directories_are_refused() {
        let f = fixture();
        let mut req = f.image(&[Op::Read]);
        req.url = Some(f.url("missing.raw"));
        let e = f.store.add(ID, req).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);

        // A write target may be new.
        let mut req = f.image(&[Op::Write]);
        req.url = Some(f.url("new.raw"));
        f.store.add(ID, req).unwrap();

        let mut req = f.image(&[Op::Write]);
        req.url = Some(format!("file://{}", f.root.display()));
        let e = f.store.add(ID, req).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");

        let mut req = f.ova_import();
        req.kind = TicketKind::OvaExport;
        req.ops = vec![Op::Read];
        let e = f.store.add(ID, req).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn ova_import_resolves_new_targets() {
        let f = fixture();
        f.store.add(ID, f.ova_import()).unwrap();
        let h = f.store.authorize(ID, Op::Write).unwrap();
        assert_eq!(h.kind(), TicketKind::OvaImport);
        let ova = h.ova().unwrap();
        assert_eq!(ova.disks[0].href, "d1.vmdk");
        assert_eq!(ova.disks[0].path, f.root.join("new1.qcow2"));
        assert_eq!(ova.disks[0].format.as_deref(), Some("qcow2"));
        assert_eq!(ova.disks[1].path, f.root.join("new2.raw"));

        h.set_disk_progress("d1.vmdk", 1 << 20, TransferState::Active);
        let s = f.store.get_status(ID).unwrap();
        assert_eq!(s.disks.len(), 2);
        assert_eq!(s.disks[0].bytes, 1 << 20);
        assert_eq!(s.disks[0].state, TransferState::Active);
        assert_eq!(s.disks[1].state, TransferState::Pending);

        h.fail("entry 'd2.vmdk' at byte 512: bad magic");
        let s = f.store.get_status(ID).unwrap();
        assert_eq!(s.state, TransferState::Failed);
        assert_eq!(
            s.error.as_deref(),
            Some("entry 'd2.vmdk' at byte 512: bad magic")
        );

        // Two disks may not share a target.
        let mut req = f.ova_import();
        let o = req.ova.as_mut().unwrap();
        o.disks[1].url = o.disks[0].url.clone();
        let e = f.store.add(ID, req).unwrap_err();
        assert!(e.to_string().contains("another disk"), "{e}");
    }

    #[test]
    fn an_ended_import_refuses_to_begin_and_keeps_its_outcome() {
        let f = fixture();
        f.store.add(ID, f.ova_import()).unwrap();
        let h = f.store.authorize(ID, Op::Write).unwrap();
        h.begin().unwrap();
        assert_eq!(h.state(), TransferState::Active);
        h.succeed();
        drop(h);

        let again = f.store.authorize(ID, Op::Write).unwrap();
        let e = again.begin().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.to_string().contains("succeeded"), "{e}");
        let s = f.store.get_status(ID).unwrap();
        assert_eq!(s.state, TransferState::Succeeded);
        assert_eq!(s.error, None);

        // The same ticket put again (a retried request) keeps the outcome.
        f.store.add(ID, f.ova_import()).unwrap();
        let s = f.store.get_status(ID).unwrap();
        assert_eq!(s.state, TransferState::Succeeded);

        let mut other = f.ova_import();
        other.transfer_id = Some("tr-2".into());
        f.store.add(ID, other).unwrap();
        let h = f.store.authorize(ID, Op::Write).unwrap();
        h.begin().unwrap();
        h.fail("entry 'd1.vmdk': bad magic");
        let e = h.begin().unwrap_err();
        assert!(e.to_string().contains("failed"), "{e}");
        let s = f.store.get_status(ID).unwrap();
        assert_eq!(s.state, TransferState::Failed);
        assert_eq!(s.error.as_deref(), Some("entry 'd1.vmdk': bad magic"));

        // A repeated request on an image ticket keeps the earlier outcome.
        f.store.add(ID, f.image(&[Op::Read])).unwrap();
        let h = f.store.authorize(ID, Op::Read).unwrap();
        h.begin().unwrap();
        h.succeed();
        h.begin().unwrap();
        assert_eq!(h.state(), TransferState::Succeeded);
    }

    #[test]
    fn held_idle_clocks_do_not_expire_tickets() {
        let f = fixture();
        let mut long = f.image(&[Op::Read]);
        long.timeout = 1000;
        let short = f.image(&[Op::Read]);
        let clock = f.clock.clone();
        let store = Arc::new(f.store);
        store.add(ID, long).unwrap();
        let visible = || store.get_status(ID).is_ok();
        let advance = |s| clock.advance(Duration::from_secs(s));

        advance(30);
        let hold = store.hold_idle_clocks();
        let second = store.hold_idle_clocks();
        advance(100);
        assert!(visible(), "expired while the clocks were held");
        drop(hold);
        advance(100);
        assert!(visible(), "one hold still stands");
        drop(second);
        // The idle period starts afresh at the release.
        advance(59);
        assert!(visible());
        advance(1);
        assert!(!visible());

        // The absolute timeout runs regardless.
        store.add(ID, short).unwrap();
        let _hold = store.hold_idle_clocks();
        advance(299);
        assert!(visible());
        advance(1);
        assert!(!visible());
    }

    #[test]
    fn tickets_expire_and_extend() {
        let f = fixture();
        let mut req = f.image(&[Op::Read]);
        req.inactivity_timeout = Some(0);
        f.store.add(ID, req).unwrap();
        f.advance(299);
        assert!(f.visible());
        f.advance(1);
        assert!(!f.visible());
        let e = f.store.authorize(ID, Op::Read).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Auth);
        assert_eq!(
            f.store.extend(ID, 300).unwrap_err().kind(),
            ErrorKind::NotFound
        );

        let mut req = f.image(&[Op::Read]);
        req.inactivity_timeout = Some(0);
        f.store.add(ID, req).unwrap();
        f.advance(200);
        f.store.extend(ID, 300).unwrap();
        assert_eq!(f.store.get_status(ID).unwrap().expires, T0 + 300 + 500);
        f.advance(299);
        assert!(f.visible());
        f.advance(1);
        assert!(!f.visible());

        f.store.add(ID, f.image(&[Op::Read])).unwrap();
        f.store.extend(ID, 0).unwrap();
        assert!(!f.visible());
        assert!(matches!(
            f.store
                .extend(ID, MAX_TICKET_TIMEOUT + 1)
                .map_err(|e| e.kind()),
            Err(ErrorKind::LimitExceeded)
        ));
    }

    #[test]
    fn idle_tickets_expire_unless_connected() {
        let f = fixture();
        f.store.add(ID, f.image(&[Op::Read])).unwrap();
        f.advance(59);
        assert!(f.visible());
        f.advance(1);
        assert!(!f.visible());

        f.store.add(ID, f.image(&[Op::Read])).unwrap();
        let h = f.store.authorize(ID, Op::Read).unwrap();
        f.advance(100);
        h.touch();
        f.advance(100);
        let s = f.store.get_status(ID).unwrap();
        assert_eq!(s.idle_time, 0);
        drop(h);
        // Dropping the handle is activity: a fresh idle period starts.
        f.advance(59);
        assert_eq!(f.store.get_status(ID).unwrap().idle_time, 59);
        f.advance(1);
        assert!(!f.visible());

        // The outcome of a finished transfer outlives the idle limit.
        f.store.add(ID, f.ova_import()).unwrap();
        f.store.authorize(ID, Op::Write).unwrap().succeed();
        f.advance(299);
        assert_eq!(
            f.store.get_status(ID).unwrap().state,
            TransferState::Succeeded
        );
        f.advance(1);
        assert!(!f.visible());
    }

    #[test]
    fn a_paused_upload_is_timed_by_its_watcher_not_by_idle_expiry() {
        let f = fixture();
        f.store.add(ID, f.ova_import()).unwrap();
        let h = f.store.authorize(ID, Op::Write).unwrap();
        h.begin().unwrap();
        // What a session keeps: not a connection.
        let d = h.detached();
        assert!(d.same_ticket(&h));
        h.set_upload(4096, Some(10_000));
        h.pause();
        drop(h);
        let s = f.store.get_status(ID).unwrap();
        assert_eq!(s.state, TransferState::Paused);
        assert_eq!((s.offset, s.length), (Some(4096), Some(10_000)));
        assert_eq!(s.connections, 0);
        assert!(!s.active);
        // Past the idle limit (60 s) it stays; the ticket's timeout still
        // ends it, cancelling the transfer the detached handle sees.
        f.advance(120);
        assert!(f.visible());
        f.advance(180);
        f.store.purge();
        assert!(!f.visible());
        assert!(d.is_cancelled());
        assert_eq!(d.cancel_cause(), Some(CancelCause::Expired));
        drop(d);

        // A paused transfer resumes to active; a final one does not pause.
        f.store.add(ID, f.ova_import()).unwrap();
        let h = f.store.authorize(ID, Op::Write).unwrap();
        h.begin().unwrap();
        h.pause();
        h.begin().unwrap();
        assert_eq!(h.state(), TransferState::Active);
        h.fail("x");
        h.pause();
        assert_eq!(h.state(), TransferState::Failed);
    }

    #[test]
    fn expiry_while_connected_cancels_the_transfer() {
        let f = fixture();
        f.store.add(ID, f.image(&[Op::Read])).unwrap();
        let h = f.store.authorize(ID, Op::Read).unwrap();
        f.advance(300);
        assert!(!f.visible());
        assert!(h.is_cancelled());
        assert_eq!(
            h.progress().check_cancelled().unwrap_err().kind(),
            ErrorKind::Cancelled
        );
    }

    #[test]
    fn remove_is_idempotent_and_cancels() {
        let f = fixture();
        f.store.remove("never-added").unwrap();
        f.store.add(ID, f.ova_import()).unwrap();
        let h = f.store.authorize(ID, Op::Write).unwrap();
        let extra = Arc::new(Progress::new(None));
        h.attach(extra.clone());
        extra.add_read(10);
        h.progress().add_read(5);
        assert_eq!(f.store.get_status(ID).unwrap().transferred, 15);

        f.store.remove(ID).unwrap();
        f.store.remove(ID).unwrap();
        assert!(!f.visible());
        assert!(h.is_cancelled());
        assert!(h.progress().check_cancelled().is_err());
        assert!(extra.check_cancelled().is_err());
        // A late attach is cancelled at once.
        let late = Arc::new(Progress::new(None));
        h.attach(late.clone());
        assert!(late.check_cancelled().is_err());
        // A finished report does not hide the cancellation.
        h.succeed();
        assert_eq!(lock(&h.live.state).state, TransferState::Cancelled);
    }

    #[test]
    fn replacing_a_ticket() {
        let f = fixture();
        f.store.add(ID, f.image(&[Op::Read])).unwrap();
        let h = f.store.authorize(ID, Op::Read).unwrap();
        // The same ticket again (a retried PUT) keeps the transfer.
        f.advance(100);
        f.store.add(ID, f.image(&[Op::Read])).unwrap();
        assert!(!h.is_cancelled());
        let s = f.store.get_status(ID).unwrap();
        assert_eq!(s.connections, 1);
        assert_eq!(s.expires, T0 + 100 + 300);
        // A different one cancels it.
        f.store.add(ID, f.image(&[Op::Read, Op::Write])).unwrap();
        assert!(h.is_cancelled());
        let s = f.store.get_status(ID).unwrap();
        assert_eq!(s.connections, 0);
        assert_eq!(s.state, TransferState::Pending);
    }

    #[test]
    fn authorize_checks_ops_and_ids() {
        let f = fixture();
        f.store.add(ID, f.image(&[Op::Read])).unwrap();
        let e = f.store.authorize(ID, Op::Write).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Auth);
        assert_eq!(e.to_string(), "transfer tr-1 does not allow write");

        for wrong in ["", "5a1d3c7e", &ID[..ID.len() - 1], &format!("{ID}0")] {
            let e = f.store.authorize(wrong, Op::Read).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Auth);
            assert_eq!(e.to_string(), "no such ticket");
        }

        // On an image ticket write implies read; not on an OVA ticket.
        f.store.add(ID, f.image(&[Op::Write])).unwrap();
        let a = f.store.authorize(ID, Op::Read).unwrap();
        let b = f.store.authorize(ID, Op::Write).unwrap();
        assert_eq!(f.store.get_status(ID).unwrap().connections, 2);
        drop(a);
        assert_eq!(f.store.get_status(ID).unwrap().connections, 1);
        drop(b);
        f.store.add(ID, f.ova_import()).unwrap();
        let e = f.store.authorize(ID, Op::Read).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Auth);
    }

    #[test]
    fn list_is_sorted_by_id_and_shows_what_get_shows() {
        let f = fixture();
        assert!(f.store.list().is_empty());

        // Added out of order: the list sorts by id, not by insertion.
        f.add_as("c-export", f.ova_export());
        f.add_as("a-image", f.image(&[Op::Read, Op::Write]));
        f.add_as("b-import", f.ova_import());
        assert_eq!(f.listed(), ["a-image", "b-import", "c-export"]);

        let h = f.store.authorize("a-image", Op::Write).unwrap();
        h.begin().unwrap();
        h.add_transferred(8192);
        let i = f.store.authorize("b-import", Op::Write).unwrap();
        i.begin().unwrap();
        i.set_disk_progress("d1.vmdk", 4096, TransferState::Succeeded);
        i.fail("entry 'd2.vmdk': bad magic");
        f.advance(3);
        drop(i);
        f.advance(4);

        let list = f.store.list();
        for s in &list {
            assert_eq!(
                s,
                &f.store.get_status(&s.ticket.uuid).unwrap(),
                "{}",
                s.ticket.uuid
            );
        }
        let kinds: Vec<TicketKind> = list.iter().map(|s| s.ticket.kind).collect();
        assert_eq!(
            kinds,
            [
                TicketKind::Image,
                TicketKind::OvaImport,
                TicketKind::OvaExport
            ]
        );
        let (image, import, export) = (&list[0], &list[1], &list[2]);
        assert_eq!(image.state, TransferState::Active);
        assert_eq!(image.transferred, 8192);
        assert_eq!(image.connections, 1);
        assert!(image.active);
        assert_eq!(image.idle_time, 0);
        assert_eq!(image.ticket.ops, [Op::Read, Op::Write]);
        assert_eq!(image.ticket.size, Some(1 << 30));

        assert_eq!(import.state, TransferState::Failed);
        assert_eq!(import.error.as_deref(), Some("entry 'd2.vmdk': bad magic"));
        assert_eq!(import.connections, 0);
        assert_eq!(import.idle_time, 4);
        assert_eq!(import.disks.len(), 2);
        assert_eq!(import.disks[0].bytes, 4096);
        assert_eq!(import.disks[0].state, TransferState::Succeeded);
        assert_eq!(import.disks[1].state, TransferState::Pending);
        // The handle's drop was activity: the expiry moved with it.
        assert_eq!(import.expires, T0 + 3 + 300);
        assert_eq!(image.expires, T0 + 300);

        assert_eq!(export.state, TransferState::Pending);
        assert_eq!(export.ticket.ops, [Op::Read]);
        assert_eq!(export.disks[0].href, "vol.qcow2");
        assert_eq!(export.idle_time, 7);
        assert_eq!(export.expires, T0 + 300);
    }

    #[test]
    fn list_leaves_out_expired_and_removed_tickets() {
        let f = fixture();
        let mut short = f.image(&[Op::Read]);
        short.timeout = 30;
        short.inactivity_timeout = Some(0);
        f.add_as("short", short);
        f.add_as("idle", f.image(&[Op::Read]));
        let mut long = f.ova_import();
        long.inactivity_timeout = Some(0);
        f.add_as("long", long);
        let held = f.store.authorize("short", Op::Read).unwrap();
        assert_eq!(f.listed(), ["idle", "long", "short"]);

        // `idle` passes its inactivity limit; `short` its timeout, though
        // a connection holds it, and the transfer is cancelled.
        f.advance(60);
        assert_eq!(f.listed(), ["long"]);
        assert!(held.is_cancelled());

        f.store.extend("long", 0).unwrap();
        assert!(f.store.list().is_empty());

        f.add_as("gone", f.image(&[Op::Read]));
        f.add_as("kept", f.image(&[Op::Read]));
        f.store.remove("gone").unwrap();
        assert_eq!(f.listed(), ["kept"]);
    }

    #[test]
    fn a_replaced_ticket_is_listed_once_with_its_new_status() {
        let f = fixture();
        f.store.add(ID, f.image(&[Op::Read])).unwrap();
        let h = f.store.authorize(ID, Op::Read).unwrap();
        h.begin().unwrap();
        f.store.add(ID, f.ova_import()).unwrap();
        let list = f.store.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].ticket.kind, TicketKind::OvaImport);
        assert_eq!(list[0].state, TransferState::Pending);
        assert_eq!(list[0].connections, 0);
        assert!(h.is_cancelled());
    }

    /// A store journaling into `dir` on the fixture's roots and clock.
    fn journaled(f: &Fixture, dir: &Path) -> TicketStore {
        let roots = AllowedRoots::new(std::slice::from_ref(&f.root)).unwrap();
        TicketStore::with_clock(roots, f.clock.clone()).with_journal(Journal::open(dir).unwrap())
    }

    fn records(dir: &Path) -> Vec<TicketRecord> {
        let mut v: Vec<TicketRecord> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
            .collect();
        v.sort_by(|a, b| a.ticket.uuid.cmp(&b.ticket.uuid));
        v
    }

    /// What a restart may change in a status: the idle time.
    fn stable(mut v: Vec<TicketStatus>) -> Vec<TicketStatus> {
        for s in &mut v {
            s.idle_time = 0;
        }
        v
    }

    #[test]
    fn an_image_tickets_format_is_decided_once_and_survives_a_restart() {
        let f = fixture();
        let dir = f._dir.path().join("journal");
        let a = journaled(&f, &dir);
        // Not there yet: raw. An existing qcow2 file: qcow2 by its header.
        a.add(ID, f.image(&[Op::Write])).unwrap();
        assert_eq!(
            a.authorize(ID, Op::Read).unwrap().format(),
            Some(Format::Raw)
        );
        let mut q = f.image(&[Op::Read]);
        q.uuid = "q".into();
        q.url = Some(f.url("q.qcow2"));
        let mut header = b"QFI\xfb".to_vec();
        header.resize(512, 0);
        std::fs::write(f.root.join("q.qcow2"), &header).unwrap();
        a.add("q", q.clone()).unwrap();
        assert_eq!(
            a.authorize("q", Op::Read).unwrap().format(),
            Some(Format::Qcow2)
        );
        assert_eq!(
            a.get_status("q").unwrap().ticket.format,
            None,
            "shown as given"
        );
        // Stated: qcow2 must find its header; raw is taken as stated.
        let mut bad = f.image(&[Op::Read]);
        bad.uuid = "bad".into();
        bad.format = Some("qcow2".into());
        std::fs::write(f.root.join("vol.raw"), b"plain").unwrap();
        let e = a.add("bad", bad.clone()).unwrap_err();
        assert!(e.to_string().contains("no qcow2 header"), "{e}");
        bad.url = Some(f.url("missing.qcow2"));
        bad.ops = vec![Op::Write];
        let e = a.add("bad", bad).unwrap_err();
        assert!(e.to_string().contains("must exist"), "{e}");
        q.uuid = "r".into();
        q.format = Some("raw".into());
        a.add("r", q).unwrap();
        assert_eq!(
            a.authorize("r", Op::Read).unwrap().format(),
            Some(Format::Raw)
        );
        drop(a);

        // The upload into the raw volume writes a qcow2 header; after a
        // restart the ticket is still raw.
        std::fs::write(f.root.join("vol.raw"), &header).unwrap();
        let b = journaled(&f, &dir);
        assert_eq!(b.restore().tickets, 3);
        assert_eq!(
            b.authorize(ID, Op::Read).unwrap().format(),
            Some(Format::Raw)
        );
        assert_eq!(
            b.authorize("q", Op::Read).unwrap().format(),
            Some(Format::Qcow2)
        );
        assert_eq!(
            b.authorize("r", Op::Read).unwrap().format(),
            Some(Format::Raw)
        );
    }

    #[test]
    fn journaled_tickets_come_back_after_a_stop_as_they_were() {
        let f = fixture();
        let dir = f._dir.path().join("journal");
        let a = journaled(&f, &dir);
        let add = |id: &str, mut req: TicketRequest| {
            req.uuid = id.into();
            a.add(id, req).unwrap();
        };
        add("a-image", f.image(&[Op::Read, Op::Write]));
        add("b-import", f.ova_import());
        add("c-export", f.ova_export());
        add("d-used", f.image(&[Op::Read]));
        let i = a.authorize("b-import", Op::Write).unwrap();
        i.begin().unwrap();
        i.set_disk_progress("d1.vmdk", 4096, TransferState::Succeeded);
        i.set_disk_progress("d2.vmdk", 512, TransferState::Succeeded);
        i.progress().add_read(8192);
        i.succeed();
        // The outcome is on disk as soon as it is visible.
        let r = records(&dir);
        assert_eq!(r[1].state, TransferState::Succeeded);
        assert_eq!(r[1].transferred, 8192);
        assert_eq!(r[1].disks[1].bytes, 512);
        drop(i);
        let h = a.authorize("d-used", Op::Read).unwrap();
        h.begin().unwrap();
        h.add_transferred(4096);
        // Activity within the slack moves the expiry without a write...
        f.advance(20);
        drop(h);
        assert_eq!(records(&dir)[3].expires, T0 + 300);
        assert_eq!(a.get_status("d-used").unwrap().expires, T0 + 320);
        let before = stable(a.list());
        // ...and a stop writes it, but not the cancellation.
        a.cancel_all();
        drop(a);
        assert_eq!(records(&dir)[3].expires, T0 + 320);
        assert_eq!(records(&dir)[3].transferred, 4096);
        assert_eq!(records(&dir)[2].state, TransferState::Pending);

        f.advance(7);
        let b = journaled(&f, &dir);
        let restored = b.restore();
        assert_eq!(
            restored,
            Restored {
                tickets: 4,
                ..Restored::default()
            }
        );
        assert_eq!(stable(b.list()), before);
        // A restored ticket works as before: the pending export can start.
        let e = b.authorize("c-export", Op::Read).unwrap();
        e.begin().unwrap();
        assert_eq!(e.state(), TransferState::Active);
        // A fresh idle period starts at the restart.
        assert_eq!(b.get_status("a-image").unwrap().idle_time, 0);
    }

    #[test]
    fn a_restart_fails_cut_short_ova_transfers_and_keeps_image_tickets() {
        let f = fixture();
        let dir = f._dir.path().join("journal");
        let a = journaled(&f, &dir);
        a.add(ID, f.ova_import()).unwrap();
        let mut image = f.image(&[Op::Write]);
        image.uuid = "img".into();
        a.add("img", image).unwrap();
        let i = a.authorize(ID, Op::Write).unwrap();
        i.begin().unwrap();
        // Paused when the server was killed: as cut short as an active one.
        i.pause();
        i.set_disk_progress("d1.vmdk", 4096, TransferState::Succeeded);
        let m = a.authorize("img", Op::Write).unwrap();
        m.begin().unwrap();
        // Killed: no stop, handles never dropped.
        std::mem::forget((i, m));
        drop(a);

        let b = journaled(&f, &dir);
        let r = b.restore();
        assert_eq!(r.tickets, 2);
        assert_eq!(r.interrupted, 1);
        assert_eq!(
            r.interrupted_targets,
            [f.root.join("new1.qcow2"), f.root.join("new2.raw")]
        );
        let s = b.get_status(ID).unwrap();
        assert_eq!(s.state, TransferState::Failed);
        assert_eq!(s.error.as_deref(), Some(RESTARTED));
        // Disk progress is not journaled (it changes as bytes move), and
        // no target of an unfinished import was renamed into place.
        assert!(s.disks.iter().all(|d| d.state == TransferState::Failed));
        assert_eq!(s.connections, 0);
        let e = b.authorize(ID, Op::Write).unwrap().begin().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(b.get_status("img").unwrap().state, TransferState::Active);
        b.authorize("img", Op::Write).unwrap().begin().unwrap();
        drop(b);

        // The verdict is journaled: the next start finds nothing to do.
        let c = journaled(&f, &dir);
        let r = c.restore();
        assert_eq!((r.tickets, r.interrupted), (2, 0));
        assert_eq!(c.get_status(ID).unwrap().error.as_deref(), Some(RESTARTED));
    }

    #[test]
    fn gone_tickets_leave_no_record_and_expired_ones_do_not_come_back() {
        let f = fixture();
        let dir = f._dir.path().join("journal");
        let a = journaled(&f, &dir);
        a.add(ID, f.image(&[Op::Read])).unwrap();
        a.remove(ID).unwrap();
        assert!(records(&dir).is_empty());
        // Expired by inactivity though its record says it lives on.
        a.add(ID, f.image(&[Op::Read])).unwrap();
        f.advance(60);
        assert!(a.get_status(ID).is_err());
        assert!(records(&dir).is_empty());
        // Expired while the server was down.
        let mut long = f.image(&[Op::Read]);
        long.inactivity_timeout = Some(0);
        a.add(ID, long).unwrap();
        a.extend(ID, 100).unwrap();
        assert_eq!(records(&dir)[0].expires, T0 + 60 + 100);
        drop(a);
        f.advance(99);
        let b = journaled(&f, &dir);
        assert_eq!(b.restore().tickets, 1);
        drop(b);
        f.advance(1);
        let c = journaled(&f, &dir);
        let r = c.restore();
        assert_eq!((r.tickets, r.dropped), (0, 1));
        assert!(records(&dir).is_empty());

        // A path outside today's roots drops the ticket.
        c.add(ID, f.image(&[Op::Read])).unwrap();
        drop(c);
        let other = f._dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let roots = AllowedRoots::new(&[other]).unwrap();
        let d = TicketStore::with_clock(roots, f.clock.clone())
            .with_journal(Journal::open(&dir).unwrap());
        assert_eq!(d.restore().dropped, 1);
        assert!(records(&dir).is_empty());
    }

    #[test]
    fn the_number_of_tickets_is_bounded() {
        let f = fixture();
        for i in 0..MAX_TICKETS {
            f.add_as(&format!("t{i}"), f.image(&[Op::Read]));
        }
        let mut req = f.image(&[Op::Read]);
        req.uuid = "one-more".into();
        let e = f.store.add("one-more", req).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
        assert!(e.to_string().contains("4096 tickets"), "{e}");
        // Replacing one is still allowed, and an expired one frees a place.
        f.add_as("t0", f.image(&[Op::Read, Op::Write]));
        f.advance(60);
        f.add_as("one-more", f.image(&[Op::Read]));
    }
}
