//! Start-up: the tickets an earlier run journaled, read back.

use super::*;

impl TicketStore {
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
            let log_id = crate::ticket::log_id(&id).to_owned();
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
            // An NBD or remote volume is no file, and lies under no root.
            let paths = r.path.iter().chain(r.ova.iter().flat_map(|o| {
                o.disks
                    .iter()
                    .filter(|d| d.net.is_none())
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
                            .filter(|d| d.net.is_none())
                            .map(|d| d.path.clone())
                    }));
                    for url in r
                        .ova
                        .iter()
                        .flat_map(|o| o.disks.iter())
                        .filter_map(|d| d.net.as_ref())
                    {
                        tracing::warn!(ticket = %log_id, target = %url, "the {} target of the interrupted import may hold partial data", url.kind());
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
                net: r.net,
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
                s.manifest = r.manifest;
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
}
