//! Live progress of a transfer, shared between the pipeline and whoever
//! displays it (a terminal bar, later the control API).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, ErrorKind, Result};

/// Ended entries [`Progress`] keeps for whoever reports them.
pub const ENDED_KEPT: usize = 256;

/// Counters updated by the pipeline as bytes go through.
#[derive(Debug, Default)]
pub struct Progress {
    bytes_read: AtomicU64,
    total: AtomicU64,
    entry: Mutex<String>,
    entry_bytes: AtomicU64,
    /// The entries that ended last, with their final byte counts, the
    /// newest last (at most [`ENDED_KEPT`]): several may end between two
    /// looks of whoever reports them.
    ended: Mutex<std::collections::VecDeque<(String, u64)>>,
    cancel: Arc<AtomicBool>,
    retries: Arc<AtomicU64>,
}

impl Progress {
    /// A fresh progress record; `total` is the source size when known (0 otherwise).
    pub fn new(total: Option<u64>) -> Self {
        let p = Progress::default();
        p.total.store(total.unwrap_or(0), Ordering::Relaxed);
        p
    }

    /// Bytes of the source consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Source size, when known.
    pub fn total(&self) -> Option<u64> {
        match self.total.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// The entry being processed.
    pub fn entry(&self) -> String {
        self.entry.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Bytes of the current entry's data consumed so far.
    pub fn entry_bytes(&self) -> u64 {
        self.entry_bytes.load(Ordering::Relaxed)
    }

    /// The entries that ended last (up to [`ENDED_KEPT`]), oldest first,
    /// with their final byte counts.
    pub fn ended_entries(&self) -> Vec<(String, u64)> {
        self.ended
            .lock()
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Times the source's connection was lost and taken up again (a
    /// package fetched from a URL).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The counter [`Progress::retries`] reads, for the source to count in.
    pub fn retries_counter(&self) -> Arc<AtomicU64> {
        self.retries.clone()
    }

    /// The flag that cancels the transfer when set (by a signal handler,
    /// or a control-API DELETE).
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Asks the transfer to stop at its next chunk.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Fails with [`ErrorKind::Cancelled`] once cancelled.
    pub fn check_cancelled(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Error::new(ErrorKind::Cancelled, "transfer cancelled"));
        }
        Ok(())
    }

    /// Sets the total once it is known.
    pub(crate) fn set_total(&self, n: u64) {
        self.total.store(n, Ordering::Relaxed);
    }

    /// Sets the bytes done outright: a resumed transfer may go back.
    pub(crate) fn set_read(&self, n: u64) {
        self.bytes_read.store(n, Ordering::Relaxed);
    }

    pub(crate) fn add_read(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_entry_bytes(&self, n: u64) {
        self.entry_bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_entry(&self, name: &str) {
        if let Ok(mut e) = self.entry.lock() {
            let bytes = self.entry_bytes.swap(0, Ordering::Relaxed);
            if let Ok(mut p) = self.ended.lock() {
                if p.len() == ENDED_KEPT {
                    p.pop_front();
                }
                p.push_back((std::mem::replace(&mut *e, name.to_owned()), bytes));
            }
        }
    }
}
