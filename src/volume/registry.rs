//! One open volume per file for the data API: concurrent requests on a
//! qcow2 image must share its metadata caches and allocator (two
//! instances would hand out the same clusters), and sharing costs a raw
//! file nothing.
//!
//! Every request still opens its path beneath the storage root — a
//! symbolic link swapped in since the last request is refused — and only
//! then looks for the volume already open on the same file (device and
//! inode), which it shares. The registry holds no volume alive: the last
//! request to finish closes it, and with it flushes a qcow2 image's
//! caches.
//!
//! An NBD export is shared by its URL: one pool of connections serves
//! every request of its tickets.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::{NetUrl, OpenOptions, Volume, open_file, open_net};
use crate::error::{Error, ErrorKind, Result};
use crate::roots::AllowedRoots;

/// (device, inode, writable) of an open volume.
type Key = (u64, u64, bool);

/// The volumes open for requests; see the module docs.
#[derive(Debug, Default)]
pub struct Registry {
    open: Mutex<HashMap<Key, Weak<Volume>>>,
    net: Mutex<HashMap<(NetUrl, bool), Weak<Volume>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Opens `path` beneath `roots` as [`super::open`] does, sharing the
    /// volume already open on the same file with the same access. A shared
    /// volume keeps the format it was opened with: asking for another one
    /// is a conflict, never a second view of the same bytes.
    pub fn open(
        &self,
        roots: &AllowedRoots,
        path: &Path,
        opts: &OpenOptions,
    ) -> Result<Arc<Volume>> {
        let file = open_file(roots, path, opts)?;
        let meta = file.metadata().map_err(|e| Error::from(e).at_path(path))?;
        let key = (meta.dev(), meta.ino(), opts.write);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = open.get(&key).and_then(Weak::upgrade) {
            return match opts.format {
                Some(f) if f != v.format() => Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "the file is open as a {} volume by another transfer, not as {f}",
                        v.format()
                    ),
                )
                .at_path(path)),
                _ => Ok(v),
            };
        }
        // Opening a qcow2 image reads its header and L1 table: done under
        // the lock, so that two first requests do not open two instances.
        let v = Arc::new(Volume::from_file(file, path, path, opts, roots)?);
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(key, Arc::downgrade(&v));
        Ok(v)
    }

    /// Connects to the NBD export or remote volume at `url` (for writing
    /// when `write`),
    /// sharing the volume already open on it with the same access. The
    /// connection is made outside the registry's lock, so that a slow
    /// server holds up no other open; when two first requests race, the
    /// first volume registered wins and the other is closed.
    pub fn open_net(&self, url: &NetUrl, write: bool) -> Result<Arc<Volume>> {
        let key = (url.clone(), write);
        let lookup = || {
            let open = self.net.lock().unwrap_or_else(PoisonError::into_inner);
            open.get(&key).and_then(Weak::upgrade)
        };
        if let Some(v) = lookup() {
            return Ok(v);
        }
        let v = Arc::new(open_net(url, write)?);
        let mut open = self.net.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(other) = open.get(&key).and_then(Weak::upgrade) {
            return Ok(other);
        }
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(key, Arc::downgrade(&v));
        Ok(v)
    }

    /// How many volumes are open.
    pub fn len(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let net = self.net.lock().unwrap_or_else(PoisonError::into_inner);
        open.values()
            .chain(net.values())
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// Whether no volume is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
