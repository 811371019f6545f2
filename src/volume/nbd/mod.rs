//! NBD volumes: a disk served by an NBD server — what an oVirt host
//! hands the data plane for every disk, qcow2 or raw (vdsm starts
//! `qemu-nbd` for the volume and puts its socket in the ticket). The
//! export presents guest bytes, so an NBD volume is read and written
//! like a raw one whatever image lies behind the server; zeroing is
//! `NBD_CMD_WRITE_ZEROES` (with `NBD_CMD_FLAG_NO_HOLE` when the storage
//! must stay allocated), the allocation map is `NBD_CMD_BLOCK_STATUS`
//! over `base:allocation`, refined by `qemu:allocation-depth` where the
//! server offers it (depth 0: unallocated through the whole chain).
//!
//! ## Why our own client
//!
//! The client is ours, in safe Rust, about 1 500 lines over `std` sockets:
//!
//! * libnbd's Rust bindings are not on crates.io (they live in libnbd's
//!   source tree, from libnbd 1.18 on), and Debian bookworm ships libnbd
//!   1.14 without them; binding its C API ourselves would need `unsafe`,
//!   which the crate forbids, and a new runtime library in the package.
//! * The NBD crates on crates.io are either servers (`tokio-nbd`,
//!   `nbdkit`) or a client without structured replies, block status or
//!   write-zeroes, unchanged for years (`nbd` 0.3).
//!
//! What it speaks is the small part of the protocol a data plane needs:
//! the fixed-newstyle handshake with `NBD_OPT_STRUCTURED_REPLY`,
//! `NBD_OPT_SET_META_CONTEXT` and `NBD_OPT_GO` (with the block size
//! constraints, which cap and align every request), then READ, WRITE,
//! WRITE_ZEROES, FLUSH and BLOCK_STATUS, one at a time per connection.
//! Everything the server sends is decoded by [`proto`], which checks
//! each length against the request before reading it and never panics
//! (the `nbd_client` fuzz target holds it to that).
//!
//! ## Connections
//!
//! When the export advertises `NBD_FLAG_CAN_MULTI_CONN`, up to
//! [`MAX_NBD_CONNECTIONS`] connections serve concurrent requests, and a
//! flush on any one of them covers the writes completed on all; without
//! it, one connection behind a mutex. The pool grows only when every
//! connection is busy, and stops growing at the first connection the
//! server does not take within [`NBD_EXTRA_CONNECTION_TIMEOUT`]
//! (qemu-nbd's `--shared` limit, counting other clients' connections,
//! leaves a further one waiting unanswered). A connection whose stream
//! broke (a protocol violation, a timeout, a reset) is dropped and made
//! again by the next request.

mod conn;
pub(crate) mod proto;
#[cfg(test)]
mod tests;
mod url;

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub(crate) use conn::Connection;
use conn::{ExportInfo, Status};
pub use url::{DEFAULT_PORT, NbdAddress, NbdUrl};

use super::{Extent, ExtentKind, Extents, Flush, ReadAt, Size, WriteAt, ZEROS, Zero, push_extent};
use crate::error::{Classify, Error, ErrorKind, Result};
use crate::limits::{
    MAX_NBD_CONNECTIONS, MAX_NBD_STATUS_REQUEST, MAX_NBD_ZERO_REQUEST,
    NBD_EXTRA_CONNECTION_TIMEOUT, NBD_HANDSHAKE_TIMEOUT, NBD_IO_TIMEOUT,
};

/// What went wrong talking to an NBD server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NbdError {
    /// The server broke the protocol.
    #[error("NBD protocol error: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// The server wants something this client does not do.
    #[error("the NBD server needs {what}, which is not supported")]
    Unsupported {
        /// What.
        what: &'static str,
    },
    /// The server refused an option of the handshake.
    #[error("the NBD server refused {option} (reply {reply:#x}){}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Refused {
        /// The option.
        option: &'static str,
        /// The error reply type.
        reply: u32,
        /// The server's message.
        message: String,
    },
    /// The server failed a command.
    #[error("the NBD server answered {}{}", proto::errno_name(*errno), if message.is_empty() { String::new() } else { format!(": {message}") })]
    Server {
        /// The errno it sent.
        errno: u32,
        /// Its message, if any.
        message: String,
    },
    /// A length past a cap.
    #[error("{what} of {len} bytes is larger than the limit of {max}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// The socket failed.
    #[error("{reason}")]
    Io {
        /// The io error kind.
        kind: std::io::ErrorKind,
        /// What failed, and the system's message.
        reason: String,
    },
    /// The export is read-only and a write was asked for.
    #[error("the NBD export is read-only")]
    ReadOnly,
}

impl Classify for NbdError {
    fn kind(&self) -> ErrorKind {
        match self {
            NbdError::Protocol { .. } | NbdError::TooLarge { .. } => ErrorKind::CorruptImage,
            NbdError::Unsupported { .. } => ErrorKind::Unsupported,
            NbdError::Refused { .. } => ErrorKind::NotFound,
            NbdError::ReadOnly => ErrorKind::InvalidArgument,
            NbdError::Server { errno, .. } => match errno {
                22 | 75 => ErrorKind::InvalidArgument,
                95 => ErrorKind::Unsupported,
                _ => ErrorKind::Io,
            },
            NbdError::Io { kind, .. } => match kind {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                _ => ErrorKind::Io,
            },
        }
    }
}

/// The byte stream under a connection.
#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_timeouts(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s
                .set_read_timeout(Some(t))
                .and_then(|()| s.set_write_timeout(Some(t))),
            Stream::Tcp(s) => s
                .set_read_timeout(Some(t))
                .and_then(|()| s.set_write_timeout(Some(t))),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

fn io_err(e: &std::io::Error, what: String) -> NbdError {
    NbdError::Io {
        kind: e.kind(),
        reason: format!("{what}: {e}"),
    }
}

/// Connects to `url` and negotiates its export within `timeout`.
fn connect(url: &NbdUrl, timeout: Duration) -> Result<Connection<Stream>, NbdError> {
    let stream = match &url.address {
        NbdAddress::Unix(p) => UnixStream::connect(p)
            .map(Stream::Unix)
            .map_err(|e| io_err(&e, format!("cannot connect to {}", p.display())))?,
        NbdAddress::Tcp { host, port } => {
            let addrs = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| io_err(&e, format!("cannot resolve {host}")))?;
            let mut last = None;
            let mut found = None;
            for a in addrs {
                match TcpStream::connect_timeout(&a, timeout) {
                    Ok(s) => {
                        found = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let s = found.ok_or_else(|| match last {
                Some(e) => io_err(&e, format!("cannot connect to {host}:{port}")),
                None => NbdError::Io {
                    kind: std::io::ErrorKind::NotFound,
                    reason: format!("{host} has no address"),
                },
            })?;
            let _ = s.set_nodelay(true);
            Stream::Tcp(s)
        }
    };
    stream
        .set_timeouts(timeout)
        .map_err(|e| io_err(&e, "cannot set a timeout".into()))?;
    let c = Connection::handshake(stream, &url.export)?;
    c.stream()
        .set_timeouts(NBD_IO_TIMEOUT)
        .map_err(|e| io_err(&e, "cannot set a timeout".into()))?;
    Ok(c)
}

/// An open NBD volume: a pool of connections to one export.
#[derive(Debug)]
pub struct NbdVolume {
    url: NbdUrl,
    /// The URL as a path, for the messages of the volume layer.
    name: PathBuf,
    info: ExportInfo,
    writable: bool,
    /// One connection per slot; the first `opened` have been made.
    slots: Vec<Mutex<Option<Connection<Stream>>>>,
    opened: AtomicUsize,
    /// The server did not take a further connection: stop trying.
    full: AtomicBool,
    next: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NbdVolume {
    /// Connects to `url`, for writing when `writable` (a read-only
    /// export is then refused). Further connections, where the server
    /// allows them, are made when requests need them.
    pub fn connect(url: &NbdUrl, writable: bool) -> Result<Self> {
        let first = connect(url, NBD_HANDSHAKE_TIMEOUT)
            .map_err(|e| wrap(url, e, "cannot open the export"))?;
        let info = *first.info();
        if writable && info.has(proto::TF_READ_ONLY) {
            return Err(wrap(
                url,
                NbdError::ReadOnly,
                "cannot open the export for writing",
            ));
        }
        let n = if info.has(proto::TF_CAN_MULTI_CONN) {
            MAX_NBD_CONNECTIONS
        } else {
            1
        };
        let mut slots = vec![Mutex::new(Some(first))];
        slots.extend((1..n).map(|_| Mutex::new(None)));
        Ok(NbdVolume {
            name: PathBuf::from(url.to_string()),
            url: url.clone(),
            info,
            writable,
            slots,
            opened: AtomicUsize::new(1),
            full: AtomicBool::new(n == 1),
            next: AtomicUsize::new(0),
        })
    }

    /// The URL the volume was opened by.
    pub fn url(&self) -> &NbdUrl {
        &self.url
    }

    /// The URL as a path, for messages.
    pub fn path(&self) -> &Path {
        &self.name
    }

    /// How many connections serve the volume.
    pub fn connections(&self) -> usize {
        self.opened.load(Ordering::Acquire)
    }

    /// Whether the server allows several connections.
    pub fn multi_conn(&self) -> bool {
        self.info.has(proto::TF_CAN_MULTI_CONN)
    }

    /// Whether the server offers `qemu:allocation-depth`.
    pub fn has_allocation_depth(&self) -> bool {
        self.info.depth_ctx.is_some()
    }

    /// The block size the server prefers: the unit a stream of writes is
    /// gathered into.
    pub fn preferred_block(&self) -> u64 {
        u64::from(self.info.preferred_block)
    }

    /// The alignment the server requires of requests.
    fn align(&self) -> u64 {
        u64::from(self.info.min_block)
    }

    /// A further connection when every one is busy and the server may
    /// take one more; `None` otherwise.
    fn grow(&self) -> Option<MutexGuard<'_, Option<Connection<Stream>>>> {
        if self.full.load(Ordering::Acquire) {
            return None;
        }
        let i = self.opened.load(Ordering::Acquire);
        let mut guard = self.slots.get(i)?.try_lock().ok()?;
        if guard.is_some() || self.opened.load(Ordering::Acquire) != i {
            return None;
        }
        match connect(&self.url, NBD_EXTRA_CONNECTION_TIMEOUT) {
            Ok(c) if c.info().size == self.info.size && c.info().flags == self.info.flags => {
                *guard = Some(c);
                self.opened.store(i + 1, Ordering::Release);
                if i + 1 == self.slots.len() {
                    self.full.store(true, Ordering::Release);
                }
                Some(guard)
            }
            other => {
                if let Err(e) = other {
                    tracing::debug!(url = %self.url, connections = i, error = %e, "the NBD server takes no further connection");
                }
                self.full.store(true, Ordering::Release);
                None
            }
        }
    }

    /// Runs `f` on a free connection (a new one if all are busy and the
    /// server allows more, else waiting for one), making it again if an
    /// earlier request broke it.
    fn with_conn<T>(
        &self,
        mut f: impl FnMut(&mut Connection<Stream>) -> Result<T, NbdError>,
    ) -> Result<T, NbdError> {
        let n = self.opened.load(Ordering::Acquire).max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut guard = (0..n)
            .find_map(|i| self.slots[(start + i) % n].try_lock().ok())
            .or_else(|| self.grow())
            .unwrap_or_else(|| lock(&self.slots[start]));
        if guard.as_ref().is_none_or(Connection::is_broken) {
            *guard = None;
            let c = connect(&self.url, NBD_HANDSHAKE_TIMEOUT)?;
            if c.info().size != self.info.size {
                return Err(NbdError::Protocol {
                    reason: "the export changed size".into(),
                });
            }
            *guard = Some(c);
        }
        let Some(c) = guard.as_mut() else {
            return Err(NbdError::Protocol {
                reason: "no connection".into(),
            });
        };
        let r = f(c);
        if c.is_broken() {
            *guard = None;
        }
        r
    }

    fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(super::VolumeError::ReadOnly {
                path: self.name.clone(),
            }
            .into())
        }
    }

    fn fail(&self, e: NbdError, op: &str, offset: u64, len: u64) -> Error {
        wrap(
            &self.url,
            e,
            &format!("{op} of {len} bytes at offset {offset} failed"),
        )
    }

    /// Reads an aligned range whose length is at most the payload cap.
    fn read_aligned(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.with_conn(|c| c.read(offset, buf))
            .map_err(|e| self.fail(e, "read", offset, buf.len() as u64))
    }

    /// Writes an aligned range whose length is at most the payload cap.
    fn write_aligned(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.with_conn(|c| c.write(offset, data))
            .map_err(|e| self.fail(e, "write", offset, data.len() as u64))
    }

    /// The largest aligned piece of a request at most `max` long.
    fn piece(&self, max: u64) -> u64 {
        let a = self.align();
        (max / a * a).max(a)
    }

    /// Reads `buf` at `offset` in pieces the server accepts: an
    /// unaligned start or end reads the whole blocks around it.
    fn read_range(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let a = self.align();
        let max = self.piece(u64::from(self.info.max_payload));
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let block = pos / a * a;
            let n = if !pos.is_multiple_of(a) || end - pos < a {
                // One block, read whole and copied in part.
                let bend = (block + a).min(self.info.size);
                let mut tmp = vec![0u8; (bend - block) as usize];
                self.read_aligned(block, &mut tmp)?;
                let take = (bend.min(end) - pos) as usize;
                let at = (pos - offset) as usize;
                buf[at..at + take].copy_from_slice(&tmp[(pos - block) as usize..][..take]);
                take as u64
            } else {
                let n = ((end - pos) / a * a).min(max);
                let at = (pos - offset) as usize;
                self.read_aligned(pos, &mut buf[at..at + n as usize])?;
                n
            };
            pos += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset`; an unaligned start or end is read,
    /// patched and written back whole.
    fn write_range(&self, offset: u64, data: &[u8]) -> Result<()> {
        let a = self.align();
        let max = self.piece(u64::from(self.info.max_payload));
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let at = (pos - offset) as usize;
            let n = if !pos.is_multiple_of(a) || (end - pos < a && end != self.info.size) {
                let block = pos / a * a;
                let bend = (block + a).min(self.info.size);
                let mut tmp = vec![0u8; (bend - block) as usize];
                self.read_aligned(block, &mut tmp)?;
                let take = (bend.min(end) - pos) as usize;
                tmp[(pos - block) as usize..][..take].copy_from_slice(&data[at..at + take]);
                self.write_aligned(block, &tmp)?;
                take as u64
            } else {
                let n = (end - pos).min(max);
                let n = if n > a { n / a * a } else { n };
                self.write_aligned(pos, &data[at..at + n as usize])?;
                n
            };
            pos += n;
        }
        Ok(())
    }
}

/// `error` on `url` with a one-level message; the URL holds no secret.
fn wrap(url: &NbdUrl, error: NbdError, what: &str) -> Error {
    let kind = error.kind();
    Error::wrap(kind, error).with_message(format!("{url}: {what}"))
}

impl Drop for NbdVolume {
    fn drop(&mut self) {
        for s in &self.slots {
            if let Some(c) = lock(s).as_mut() {
                c.disconnect();
            }
        }
    }
}

impl Size for NbdVolume {
    fn size(&self) -> u64 {
        self.info.size
    }
}

impl ReadAt for NbdVolume {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        super::check_bounds("read", offset, buf.len() as u64, self.info.size)?;
        self.read_range(offset, buf)
    }
}

impl WriteAt for NbdVolume {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_writable()?;
        super::check_bounds("write", offset, data.len() as u64, self.info.size)?;
        self.write_range(offset, data)
    }
}

impl Zero for NbdVolume {
    /// WRITE_ZEROES over the aligned middle (with `NO_HOLE` unless
    /// `punch`); zeros written at unaligned ends, and everywhere when the
    /// server has no WRITE_ZEROES.
    fn zero(&self, offset: u64, len: u64, punch: bool) -> Result<()> {
        self.check_writable()?;
        super::check_bounds("zero", offset, len, self.info.size)?;
        let end = offset + len;
        let write_zeros = |from: u64, to: u64| -> Result<()> {
            let mut p = from;
            while p < to {
                let n = (to - p).min(ZEROS.len() as u64);
                self.write_range(p, &ZEROS[..n as usize])?;
                p += n;
            }
            Ok(())
        };
        if !self.info.has(proto::TF_SEND_WRITE_ZEROES) {
            return write_zeros(offset, end);
        }
        let a = self.align();
        let head = offset.div_ceil(a) * a;
        let tail = if end == self.info.size {
            end
        } else {
            end / a * a
        };
        if head >= tail {
            return write_zeros(offset, end);
        }
        write_zeros(offset, head)?;
        let max = self.piece(MAX_NBD_ZERO_REQUEST);
        let mut pos = head;
        while pos < tail {
            let n = (tail - pos).min(max);
            self.with_conn(|c| c.write_zeroes(pos, n as u32, punch))
                .map_err(|e| self.fail(e, "zeroing", pos, n))?;
            pos += n;
        }
        write_zeros(tail, end)
    }
}

impl Flush for NbdVolume {
    /// FLUSH on one connection: with multi-conn that covers every write
    /// completed on any of them; without, there is only one.
    fn flush(&self) -> Result<()> {
        if !self.writable || !self.info.has(proto::TF_SEND_FLUSH) {
            return Ok(());
        }
        self.with_conn(Connection::flush)
            .map_err(|e| wrap(&self.url, e, "flush failed"))
    }
}

/// The kind of a range by its `base:allocation` flags and, where the
/// server offers it, its allocation depth.
fn kind_of(flags: u32, depth: Option<u32>) -> ExtentKind {
    if flags & proto::STATE_ZERO == 0 {
        return ExtentKind::Data;
    }
    match depth {
        Some(0) => ExtentKind::Hole,
        Some(_) => ExtentKind::Zero,
        None if flags & proto::STATE_HOLE != 0 => ExtentKind::Hole,
        None => ExtentKind::Zero,
    }
}

/// Appends to `out` the ranges of one BLOCK_STATUS answer for `[offset,
/// offset+len)`, cut where either context's answer ends; returns where
/// that is.
fn merge_status(out: &mut Vec<Extent>, offset: u64, len: u64, st: &Status) -> u64 {
    let end = offset + len;
    let mut pos = offset;
    let (mut bi, mut boff) = (0usize, offset);
    let (mut di, mut doff) = (0usize, offset);
    while pos < end {
        let Some(&(blen, bflags)) = st.base.get(bi) else {
            break;
        };
        let bend = boff + u64::from(blen);
        let (dend, depth) = match &st.depth {
            Some(d) => match d.get(di) {
                Some(&(dlen, dv)) => (doff + u64::from(dlen), Some(dv)),
                None => break,
            },
            None => (u64::MAX, None),
        };
        let stop = bend.min(dend).min(end);
        push_extent(out, pos, stop - pos, kind_of(bflags, depth));
        pos = stop;
        if bend == stop {
            bi += 1;
            boff = bend;
        }
        if dend == stop {
            di += 1;
            doff = dend;
        }
    }
    pos
}

impl Extents for NbdVolume {
    /// BLOCK_STATUS from `offset` on until the range is covered; a server
    /// without `base:allocation` has everything as data.
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        super::check_bounds("extents", offset, len, self.info.size)?;
        let mut out = Vec::new();
        let end = offset + len;
        if self.info.base_ctx.is_none() {
            push_extent(&mut out, offset, len, ExtentKind::Data);
            return Ok(out);
        }
        let a = self.align();
        let max = self.piece(MAX_NBD_STATUS_REQUEST);
        let mut pos = offset;
        while pos < end {
            // Asked from the block's start; what comes before `pos` is
            // cut off below.
            let start = pos / a * a;
            let n = (end.div_ceil(a) * a)
                .min(self.info.size)
                .saturating_sub(start)
                .min(max);
            let st = self
                .with_conn(|c| c.block_status(start, n as u32))
                .map_err(|e| self.fail(e, "block status", start, n))?;
            let mut part = Vec::new();
            let reached = merge_status(&mut part, start, n, &st);
            if reached <= pos {
                return Err(self.fail(
                    NbdError::Protocol {
                        reason: "BLOCK_STATUS made no progress".into(),
                    },
                    "block status",
                    start,
                    n,
                ));
            }
            for e in part {
                let s = e.start.max(pos);
                let t = e.end().min(end);
                if t > s {
                    push_extent(&mut out, s, t - s, e.kind);
                }
            }
            pos = reached.min(end);
        }
        Ok(out)
    }
}

/// The NBD client's reply parsing over arbitrary server bytes: a
/// handshake, then a read, a block status, a write, a zeroing and a
/// flush, each answered from the rest of `data`. Nothing may panic;
/// whatever a read returns lies in its buffer.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_entry(data: &[u8]) {
    /// Reads from the fuzz input, takes any write.
    struct Fake<'a>(&'a [u8]);
    impl Read for Fake<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Fake<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let Ok(mut c) = Connection::handshake(Fake(data), "") else {
        return;
    };
    let size = c.info().size;
    let len = size.min(64 << 10) as usize;
    let mut buf = vec![0u8; len];
    let _ = c.read(0, &mut buf);
    if let Ok(st) = c.block_status(0, len as u32) {
        let mut out = Vec::new();
        merge_status(&mut out, 0, len as u64, &st);
    }
    let _ = c.write(0, &buf[..len.min(16)]);
    let _ = c.write_zeroes(0, len as u32, false);
    let _ = c.trim(0, len as u32);
    let _ = c.flush();
}
