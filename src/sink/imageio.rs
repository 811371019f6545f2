//! Import targets on remote volumes (an `ova-import` ticket, a job or
//! `--disk` naming `https://host:port/images/id`): the disk's guest bytes
//! go to the remote's data API as they arrive, the package demultiplexed
//! here, at the edge.
//!
//! Consecutive writes are gathered into requests of [`REMOTE_REQUEST`]
//! bytes, and up to the remote's `max_writers` of them are in flight at
//! once on their own connections, fed through a queue of
//! [`REMOTE_QUEUE`]: the memory a remote disk holds is bounded by those
//! three numbers, whatever its size. The first failure stops the writers
//! and is the target's error from then on. Zeroing a range already
//! written waits for the writes in flight, so that it lands after them;
//! ranges past everything written are already zero, since the volume is
//! cleared when it is opened (as an NBD target is: a remote volume is no
//! file, has no `.partial` name, and keeps what was written when an
//! import fails, which the import's error then says).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::error::{Error, ErrorKind, Result};
use crate::limits::{REMOTE_QUEUE, REMOTE_REQUEST};
use crate::sink::Target;
use crate::sink::target::check_range;
use crate::volume::imageio::{ImageioUrl, ImageioVolume};
use crate::volume::{ExtentKind, Extents, Flush, Size, WriteAt, Zero};

/// What the writers share with the target.
#[derive(Debug, Default)]
struct Shared {
    /// Requests sent and not yet done.
    in_flight: Mutex<usize>,
    done: Condvar,
    /// The first failure: its kind and its message.
    failure: Mutex<Option<(ErrorKind, String)>>,
    /// Set by a failure or by dropping the target: writers skip the rest.
    stop: AtomicBool,
    /// Buffers given back, to fill again.
    spare: Mutex<Vec<Vec<u8>>>,
}

impl Shared {
    fn fail(&self, e: Error) {
        let mut f = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if f.is_none() {
            *f = Some((e.kind(), e.to_string()));
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    fn failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(kind, msg)| Error::new(*kind, msg.clone()))
    }

    /// Waits until no request is in flight.
    fn wait_idle(&self) {
        let mut n = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *n > 0 {
            n = self.done.wait(n).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// An import target on a remote volume; see the module docs.
#[derive(Debug)]
pub struct ImageioTarget {
    volume: Arc<ImageioVolume>,
    capacity: u64,
    /// Guest offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
    /// The end of the furthest write so far: everything past it is zero.
    written_end: u64,
    tx: Option<SyncSender<(u64, Vec<u8>)>>,
    writers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl ImageioTarget {
    /// Connects to `url` for writing and clears it: a disk of `capacity`
    /// bytes (`None`: not known yet, the volume's size until settled)
    /// must fit in the remote volume.
    pub fn open(url: &ImageioUrl, capacity: Option<u64>) -> Result<Self> {
        let volume = Arc::new(ImageioVolume::connect(url, true)?);
        let size = volume.size();
        let capacity = capacity.unwrap_or(size);
        check_fits(url, capacity, size)?;
        for e in volume.extents(0, size)? {
            if e.kind == ExtentKind::Data {
                volume.zero(e.start, e.len, true)?;
            }
        }
        let shared = Arc::new(Shared::default());
        let (tx, rx) = sync_channel::<(u64, Vec<u8>)>(REMOTE_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let writers = (0..volume.max_writers())
            .map(|i| {
                let (volume, shared, rx) = (volume.clone(), shared.clone(), rx.clone());
                std::thread::Builder::new()
                    .name(format!("remote-writer-{i}"))
                    .spawn(move || write_loop(&volume, &shared, &rx))
                    .map_err(|e| Error::from(e).with_message("cannot start a remote writer"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ImageioTarget {
            volume,
            capacity,
            start: 0,
            buf: Vec::new(),
            written_end: 0,
            tx: Some(tx),
            writers,
            shared,
        })
    }

    /// Fails with the writers' first failure, if there was one.
    fn check(&self) -> Result<()> {
        match self.shared.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Hands the gathered bytes to a writer.
    fn send(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let spare = self
            .shared
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        let buf = std::mem::replace(&mut self.buf, spare);
        let at = self.start;
        self.start += buf.len() as u64;
        *self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send((at, buf)).is_ok());
        if !sent {
            self.check()?;
            return Err(Error::internal("the remote writers are gone"));
        }
        Ok(())
    }

    /// Sends what is gathered and waits for every request in flight.
    fn drain(&mut self) -> Result<()> {
        self.send()?;
        self.shared.wait_idle();
        self.check()
    }
}

/// One writer: requests until the queue closes; after a failure, the
/// rest are dropped unsent.
fn write_loop(volume: &ImageioVolume, shared: &Shared, rx: &Mutex<Receiver<(u64, Vec<u8>)>>) {
    loop {
        let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((at, mut buf)) = next else {
            return;
        };
        if !shared.stop.load(Ordering::SeqCst)
            && let Err(e) = volume.write_at(at, &buf)
        {
            shared.fail(e);
        }
        buf.clear();
        shared
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(buf);
        let mut n = shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *n = n.saturating_sub(1);
        shared.done.notify_all();
    }
}

fn check_fits(url: &ImageioUrl, capacity: u64, size: u64) -> Result<()> {
    if capacity > size {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "{url}: the disk's capacity of {capacity} bytes is larger than the remote volume's {size} bytes"
            ),
        ));
    }
    Ok(())
}

impl Target for ImageioTarget {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        check_range(offset, data.len() as u64, self.capacity)?;
        self.check()?;
        if data.is_empty() {
            return Ok(());
        }
        self.written_end = self.written_end.max(offset + data.len() as u64);
        if !self.buf.is_empty() && offset != self.start + self.buf.len() as u64 {
            self.send()?;
        }
        if self.buf.is_empty() {
            self.start = offset;
        }
        let mut data = data;
        while !data.is_empty() {
            if self.buf.capacity() < REMOTE_REQUEST {
                self.buf.reserve_exact(REMOTE_REQUEST - self.buf.len());
            }
            let n = (REMOTE_REQUEST - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == REMOTE_REQUEST {
                self.send()?;
            }
        }
        Ok(())
    }

    /// Past everything written the volume reads as zeros already;
    /// otherwise the zeroing waits for the writes in flight.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.capacity)?;
        if offset >= self.written_end || len == 0 {
            return Ok(());
        }
        self.drain()?;
        self.volume.zero(offset, len, true)
    }

    fn finish(&mut self) -> Result<()> {
        self.drain()?;
        self.tx = None;
        for w in self.writers.drain(..) {
            if w.join().is_err() {
                return Err(Error::internal("a remote writer panicked"));
            }
        }
        self.check()?;
        self.volume.flush()
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn set_capacity(&mut self, capacity: u64) -> Result<()> {
        check_fits(self.volume.url(), capacity, self.volume.size())?;
        self.capacity = capacity;
        Ok(())
    }
}

impl Drop for ImageioTarget {
    /// An unfinished target (a failed or cancelled import): the writers
    /// drop what is queued and end.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.tx = None;
        for w in self.writers.drain(..) {
            let _ = w.join();
        }
    }
}
