//! Live progress of a transfer, shared between the pipeline and whoever
//! displays it (a terminal bar, later the control API).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters updated by the pipeline as bytes go through.
#[derive(Debug, Default)]
pub struct Progress {
    bytes_read: AtomicU64,
    total: AtomicU64,
    entry: Mutex<String>,
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

    pub(crate) fn add_read(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_entry(&self, name: &str) {
        if let Ok(mut e) = self.entry.lock() {
            name.clone_into(&mut e);
        }
    }
}
