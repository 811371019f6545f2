//! What the store journals: a ticket record per ticket, written when it
//! changes and read back at start-up.

use super::*;

/// The ticket map with expired tickets dropped; unlocking it removes
/// their journal records (I/O the map's lock must not wait for).
pub(super) struct Purged<'a> {
    pub(super) map: Option<MutexGuard<'a, Map>>,
    pub(super) gone: Vec<String>,
    pub(super) store: &'a TicketStore,
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
pub(super) struct TicketRecord {
    /// [`RECORD_VERSION`].
    pub(super) version: u32,
    pub(super) ticket: RecordedTicket,
    /// Unix time (s) of expiry: absolute, so a restart keeps it.
    pub(super) expires: u64,
    pub(super) state: TransferState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<String>,
    pub(super) transferred: u64,
    #[serde(default)]
    pub(super) disks: Vec<DiskStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "nbd")]
    pub(super) net: Option<NetUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) ova: Option<ResolvedOva>,
    /// `ova-import`: the committed offset and the length, as `GET` shows
    /// them (`offset`, `length`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) upload: Option<(u64, Option<u64>)>,
    /// `ova-import`: the manifest verdict of a succeeded import, as `GET`
    /// shows it (`manifest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) manifest: Option<String>,
}

/// A ticket as the journal keeps it: the request as installed, and what
/// was decided about it then.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RecordedTicket {
    #[serde(flatten)]
    pub(super) req: TicketRequest,
    /// `image`: the volume's format, stated or probed when the ticket was
    /// added; the file's bytes since then do not change it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) volume_format: Option<Format>,
}

impl std::ops::Deref for RecordedTicket {
    type Target = TicketRequest;

    fn deref(&self) -> &TicketRequest {
        &self.req
    }
}

/// The layout of [`TicketRecord`]; a record of another version is
/// skipped at start-up.
pub(super) const RECORD_VERSION: u32 = 1;

/// A ticket's record name: a digest of its id, so that not even the
/// directory listing shows a credential.
pub(super) fn record_name(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..16])
}

/// The journal link shared by the store and its tickets' live states.
#[derive(Debug)]
pub(super) struct Persist {
    pub(super) journal: Journal,
    /// Weak: the map holds the live states that hold this.
    pub(super) tickets: Weak<Mutex<Map>>,
    pub(super) clock: Arc<dyn Clock>,
}

/// An outcome to journal before it is applied.
pub(super) struct Outcome<'a> {
    pub(super) live: &'a Arc<Live>,
    pub(super) state: TransferState,
    pub(super) error: Option<&'a str>,
}

impl Persist {
    /// Makes the record of `id` say what the store holds: the ticket as
    /// it stands, or no record once it is gone. A ticket cancelled by a
    /// shutdown keeps the record it had.
    pub(super) fn sync(&self, id: &str) {
        self.write(id, None);
    }

    /// Journals the outcome of the transfer on `live`, then (still in
    /// the journal's lock, so no other write can slip in between with the
    /// older state) runs `apply` to make it visible. A success reported
    /// after a shutdown cancelled the transfer is journaled all the same:
    /// its targets are in place. Any other outcome of a cancelled transfer
    /// is the cancellation's, and not journaled.
    pub(super) fn finish(
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

    pub(super) fn write(
        &self,
        id: &str,
        outcome: Option<Outcome<'_>>,
    ) -> crate::ticket::journal::JournalGuard<'_> {
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
            tracing::warn!(ticket = %crate::ticket::log_id(id), error = %e, "cannot journal the ticket; a restart would not know this change");
        }
        held
    }
}

impl Entry {
    /// The journal record, marking what it holds as journaled; `None`
    /// when nothing is to be written (see [`Persist::finish`]).
    pub(super) fn record(
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
            net: self.spec.net.clone(),
            ova: self.spec.ova.clone(),
            upload: s.upload,
            manifest: s.manifest.clone(),
        };
        drop(s);
        match serde_json::to_vec(&record) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(ticket = %crate::ticket::log_id(&self.spec.req.uuid), error = %e, "cannot journal the ticket");
                None
            }
        }
    }
}

/// `wall + remaining` as Unix seconds, as `expires` shows it.
pub(super) fn unix_secs(wall: SystemTime, remaining: Duration) -> u64 {
    wall.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(remaining)
        .as_secs()
}
