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

mod handle;
mod persist;
mod resolve;
mod restore;
#[cfg(test)]
mod tests;

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
use crate::volume::NetUrl;

pub use handle::{IdleHold, TicketHandle, TicketWatch};
use persist::*;

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
    /// The volume is this NBD export or remote volume, not a file: an
    /// import target written in place, or an export source.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "nbd")]
    pub net: Option<NetUrl>,
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
    /// `image`: the volume is this NBD export or remote volume, not a
    /// file.
    net: Option<NetUrl>,
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
    /// `ova-import`: what the manifest check said of a succeeded import.
    manifest: Option<String>,
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
                error: None,
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
                manifest: None,
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
        let entry = lookup(&map, id)?;
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

    /// Looks a ticket up for a data-plane client that only reads about it
    /// (the status of its transfer, the upload page): the same
    /// constant-time lookup as [`TicketStore::authorize`], for a ticket
    /// allowing any op, but the handle is not one of its connections and
    /// the lookup is no activity, so a page left open polling does not
    /// keep a ticket alive. Every failure is [`crate::ErrorKind::Auth`].
    pub fn peek(&self, id: &str) -> Result<TicketHandle> {
        let now = self.clock.now();
        let map = self.purged(now);
        let entry = lookup(&map, id)?;
        Ok(TicketHandle {
            spec: entry.spec.clone(),
            live: entry.live.clone(),
            counted: false,
        })
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

/// The data plane's lookup of a ticket by the id a client sent: compared
/// with every ticket's in constant time, so that response times tell
/// nothing of how much of an id was right.
fn lookup<'a>(map: &'a Map, id: &str) -> Result<&'a Entry> {
    let mut found = None;
    for (key, entry) in map.iter() {
        if ct_eq(key.as_bytes(), id.as_bytes()) {
            found = Some(entry);
        }
    }
    found.ok_or_else(|| forbidden("no such ticket".to_owned()))
}

fn forbidden(reason: String) -> Error {
    TicketError::Forbidden { reason }.into()
}

impl Entry {
    /// The ticket's status at `now` (monotonic) and `wall` (the same
    /// instant on the system clock, for `expires`).
    fn status(&self, now: Instant, wall: SystemTime) -> TicketStatus {
        status_of(&self.spec, &self.live, now, wall)
    }
}

/// What `GET /tickets/{id}` shows of the ticket of `spec` and `live`.
fn status_of(spec: &Spec, live: &Live, now: Instant, wall: SystemTime) -> TicketStatus {
    let s = lock(&live.state);
    let expires = unix_secs(wall, s.deadline.saturating_duration_since(now));
    let idle_time = if s.connections > 0 {
        0
    } else {
        now.saturating_duration_since(s.last_activity).as_secs()
    };
    TicketStatus {
        ticket: spec.req.clone(),
        expires,
        idle_time,
        active: s.connections > 0,
        canceled: s.canceled,
        transferred: live.transferred(&s),
        connections: s.connections as u64,
        state: s.state,
        error: s.error.clone(),
        disks: s.disks.clone(),
        sha256: s.sha256.clone(),
        offset: s.upload.map(|u| u.0),
        length: s.upload.and_then(|u| u.1),
        manifest: s.manifest.clone(),
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
