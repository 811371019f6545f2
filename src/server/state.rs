//! What the server remembers across a restart: the tickets and jobs
//! journaled under `STATE_DIR/journal/` (see [`crate::ticket::journal`]).
//!
//! At start-up the records are read back before either API listens. A
//! transfer that was under way when the server stopped (or was killed)
//! cannot go on: its ticket or job is marked `failed` with the reason
//! [`crate::ticket::RESTARTED`], and the partial files of its targets are
//! removed (the sweep of the storage roots would find most of them; a
//! target is removed here by name too, so that the outcome shown and the
//! files agree whatever the sweep's depth).

use std::path::Path;
use std::sync::Arc;

use super::jobs::Jobs;
use super::metrics::Metrics;
use crate::error::Result;
use crate::sink::partial;
use crate::source::volume::AllowedRoots;
use crate::ticket::TicketStore;
use crate::ticket::journal::Journal;

/// The journal directory inside the state directory.
pub const JOURNAL_DIR: &str = "journal";

/// The ticket store and job list over `roots`, journaled in `state_dir`
/// and restored from what an earlier run journaled there; jobs count
/// themselves in `metrics`.
pub fn open(
    state_dir: &Path,
    roots: AllowedRoots,
    metrics: Arc<Metrics>,
) -> Result<(Arc<TicketStore>, Arc<Jobs>)> {
    let dir = state_dir.join(JOURNAL_DIR);
    // Opened first so that the parent is created 0700 before its children.
    Journal::open(&dir)?;
    let tickets = Journal::open(&dir.join("tickets"))?;
    let jobs_journal = Journal::open(&dir.join("jobs"))?;

    let store = TicketStore::new(roots.clone()).with_journal(tickets);
    let t = store.restore();
    let store = Arc::new(store);
    let jobs = Jobs::new(store.clone())
        .with_journal(jobs_journal)
        .with_metrics(metrics);
    let j = jobs.restore();

    let mut removed = 0;
    for target in t.interrupted_targets.iter().chain(&j.interrupted_targets) {
        match partial::remove_stale_of(&roots, target) {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(path = %target.display(), error = %e.one_line(), "partial file of an interrupted transfer kept")
            }
        }
    }
    if t.tickets + t.dropped + j.jobs > 0 {
        tracing::info!(
            tickets = t.tickets,
            dropped = t.dropped,
            jobs = j.jobs,
            interrupted = t.interrupted + j.interrupted,
            partial_files_removed = removed,
            "restored from the journal"
        );
    }
    Ok((store, Arc::new(jobs)))
}
