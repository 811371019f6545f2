//! One authorized use of a ticket ([`TicketHandle`]), how a transfer
//! reports into the store, and the holds on its clocks.

use super::*;

/// One authorized use of a ticket, held by a data-plane connection for the
/// length of a request or transfer. It carries what the transfer needs
/// and reports back into the store; dropping it ends the connection's use
/// (and counts as activity).
#[derive(Debug)]
pub struct TicketHandle {
    pub(super) spec: Arc<Spec>,
    pub(super) live: Arc<Live>,
    /// Counted among the ticket's connections (see [`TicketHandle::detached`]).
    pub(super) counted: bool,
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
    pub fn net(&self) -> Option<&NetUrl> {
        self.spec.net.as_ref()
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

    /// The ticket with its live status, as `GET /tickets/{id}` shows it.
    pub fn status(&self) -> TicketStatus {
        let clock = &self.live.clock;
        status_of(&self.spec, &self.live, clock.now(), clock.wall())
    }

    /// Records what the manifest check of a succeeded `ova-import` said
    /// (`verified`, `absent`); call it before [`TicketHandle::succeed`],
    /// which journals it with the outcome.
    pub fn set_manifest(&self, verdict: &str) {
        lock(&self.live.state).manifest = Some(verdict.to_owned());
    }

    /// Records why the import failed in one disk's entry; call it before
    /// [`TicketHandle::fail`], which journals it with the outcome. An
    /// unknown href is ignored.
    pub fn set_disk_error(&self, href: &str, error: &str) {
        let mut s = lock(&self.live.state);
        if let Some(d) = s
            .disks
            .iter_mut()
            .find(|d| !d.href.is_empty() && d.href == href)
        {
            d.error = Some(error.to_owned());
        }
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
    pub(super) live: Arc<Live>,
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
    pub(super) store: Arc<TicketStore>,
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
