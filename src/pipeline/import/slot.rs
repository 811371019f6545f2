//! Where one disk's extents go: its target volume, opened lazily once its
//! capacity is known, and settled when the OVF arrives after the disk. A
//! file target is written under its `.partial` name; an NBD target in
//! place ([`crate::sink::nbd`]).

use std::ffi::OsString;
use std::sync::Arc;

use crate::codec::ExtentSink;
use crate::error::{Error, ErrorKind, Result};
use crate::limits;
use crate::roots::Dir;
use crate::sink::imageio::ImageioTarget;
use crate::sink::nbd::{Landing, NbdTarget};
use crate::sink::partial::{Existing, PartialFile};
use crate::sink::target::TargetVolume;
use crate::sink::writer::VolumeWriter;
use crate::volume::NetUrl;

use super::DiskTarget;

/// A target volume opened lazily, once its capacity is known.
///
/// The result must not depend on whether the OVF came before the disk or
/// after it. With the OVF first, its capacity is known when the volume is
/// opened. A disk before the OVF is opened at the image's own capacity
/// (qcow2, VMDK) or provisionally (raw, gzip), and everything that rule
/// would have decided is settled when the OVF arrives: see
/// [`TargetSlot::settle`].
#[derive(Debug)]
pub(super) struct TargetSlot {
    target: DiskTarget,
    /// The target's directory, opened when the disk's entry began, and
    /// its file name there; `None` for an NBD target.
    place: Option<(Arc<Dir>, OsString)>,
    /// What happens to a file already at the target's name.
    existing: Existing,
    /// Capacity from the OVF DiskSection.
    capacity_hint: Option<u64>,
    /// Size of a raw entry's disk data.
    entry_hint: Option<u64>,
    /// Size of a raw entry whose last sector may be a fixed VHD's footer
    /// rather than data: what a refusal names, whether the OVF comes
    /// before the entry's end or after it.
    entry_size: Option<u64>,
    /// Opened before any capacity was known (raw or gzip before the OVF).
    provisional: bool,
    /// The image counts whole sectors past the OVF's exact capacity: bytes
    /// from here on must be zero and are dropped.
    zero_tail_from: Option<u64>,
    /// An image before the OVF: its last sector, held back until the OVF
    /// says whether the capacity ends inside it.
    tail: Option<Tail>,
    opened: Option<(Landing, VolumeWriter<TargetVolume>)>,
}

/// The last sector of an image that arrived before the OVF.
#[derive(Debug)]
struct Tail {
    /// Guest offset of its first byte.
    start: u64,
    /// Its bytes (zero where nothing was written).
    bytes: Vec<u8>,
}

/// A raw entry larger than the disk it is the content of.
fn raw_too_large(entry: u64, capacity: u64) -> Error {
    Error::new(
        ErrorKind::CorruptImage,
        format!(
            "raw disk entry is {entry} bytes, more than the disk capacity of {capacity} bytes in the OVF"
        ),
    )
}

/// Non-zero image bytes past the exact capacity the OVF gives.
fn past_ovf_capacity(capacity: u64) -> Error {
    Error::new(
        ErrorKind::CorruptImage,
        format!("non-zero data past the OVF capacity of {capacity} bytes"),
    )
}

impl TargetSlot {
    /// A slot for `target`, whose file is `name` in `dir` (`None` for an
    /// NBD target); `capacity_hint` is the OVF's capacity when the OVF
    /// came first.
    pub(super) fn new(
        target: DiskTarget,
        place: Option<(Arc<Dir>, OsString)>,
        existing: Existing,
        capacity_hint: Option<u64>,
    ) -> Self {
        TargetSlot {
            target,
            place,
            existing,
            capacity_hint,
            entry_hint: None,
            entry_size: None,
            provisional: false,
            zero_tail_from: None,
            tail: None,
            opened: None,
        }
    }

    /// The target this slot writes.
    pub(super) fn target(&self) -> &DiskTarget {
        &self.target
    }

    /// Records how large a raw disk's content was, when no decoder could
    /// say it before the OVF: the chunks of a chunked file.
    pub(super) fn set_entry_size(&mut self, bytes: u64) {
        self.entry_hint = Some(bytes);
    }

    /// Creates the target now, if nothing has yet: an empty raw entry, or
    /// a blank disk, which no extent ever opens.
    pub(super) fn create(&mut self) -> Result<()> {
        if self.opened.is_none() {
            self.writer()?;
        }
        Ok(())
    }

    /// Where the target lands and its writer, once opened.
    pub(super) fn into_opened(self) -> Option<(Landing, VolumeWriter<TargetVolume>)> {
        self.opened
    }

    /// The NBD export or remote volume this slot has opened, if any: a
    /// failed import must say that it may hold partial data.
    pub(super) fn opened_net(&self) -> Option<&NetUrl> {
        self.opened.as_ref().and(self.target.net.as_ref())
    }

    /// Creates the landing and the volume: a fresh file of `capacity`
    /// bytes (`None`: provisional), or the NBD export or remote volume,
    /// cleared.
    fn create_volume(&self, capacity: Option<u64>) -> Result<(Landing, TargetVolume)> {
        match &self.target.net {
            Some(NetUrl::Nbd(url)) => {
                let t = NbdTarget::open(url, capacity)?;
                return Ok((
                    Landing::in_place(self.target.net.as_ref()),
                    TargetVolume::Nbd(t),
                ));
            }
            Some(NetUrl::Imageio(url)) => {
                let t = ImageioTarget::open(url, capacity)?;
                return Ok((
                    Landing::in_place(self.target.net.as_ref()),
                    TargetVolume::Imageio(t),
                ));
            }
            None => {}
        }
        let Some((dir, name)) = &self.place else {
            return Err(Error::new(ErrorKind::Io, "target has no directory"));
        };
        let (partial, file) = PartialFile::create_in(dir.clone(), name, self.existing)?;
        let format = self.target.format;
        let volume = match capacity {
            Some(c) => format.create(file, c),
            None => format.create_provisional(file),
        }
        .map_err(|e| e.at_path(partial.partial_path()))?;
        Ok((Landing::Partial(partial), volume))
    }

    fn open(&mut self, capacity: u64) -> Result<&mut VolumeWriter<TargetVolume>> {
        if self.opened.is_none() {
            if capacity > limits::MAX_CAPACITY {
                return Err(Error::new(
                    ErrorKind::LimitExceeded,
                    format!("disk capacity {capacity} exceeds the limit"),
                ));
            }
            let (landing, volume) = self.create_volume(Some(capacity))?;
            self.opened = Some((landing, VolumeWriter::new(volume)));
        }
        match &mut self.opened {
            Some((_, w)) => Ok(w),
            None => Err(Error::internal("target not open")),
        }
    }

    fn writer(&mut self) -> Result<&mut VolumeWriter<TargetVolume>> {
        if self.opened.is_none() {
            if let Some(cap) = self.capacity_hint {
                return self.open(cap);
            }
            // A raw disk before the OVF: its size is settled when the OVF
            // arrives.
            let (landing, volume) = self.create_volume(None)?;
            self.opened = Some((landing, VolumeWriter::new(volume)));
            self.provisional = true;
        }
        self.open(0)
    }

    /// The OVF arrived after this disk with `capacity`: settle what the
    /// OVF-first rules would have decided.
    pub(super) fn settle(&mut self, capacity: u64) -> Result<()> {
        self.capacity_hint = Some(capacity);
        if self.provisional {
            if let Some(data) = self.entry_hint
                && data > capacity
            {
                return Err(raw_too_large(self.entry_size.unwrap_or(data), capacity));
            }
            if let Some((_, w)) = &mut self.opened {
                w.set_capacity(capacity)?;
            }
            self.provisional = false;
            return Ok(());
        }
        let Some(tail) = self.tail.take() else {
            return Ok(());
        };
        let image = tail.start + tail.bytes.len() as u64;
        let mut keep = tail.bytes.len();
        if capacity < image && image == capacity.div_ceil(512) * 512 {
            keep = (capacity - tail.start) as usize;
            if !crate::sink::writer::is_zero(&tail.bytes[keep..]) {
                return Err(past_ovf_capacity(capacity));
            }
            self.open(0)?.set_capacity(capacity)?;
        } else if capacity != image {
            self.warn_capacity(capacity, image);
        }
        if !crate::sink::writer::is_zero(&tail.bytes[..keep]) {
            self.open(0)?.data(tail.start, &tail.bytes[..keep])?;
        }
        Ok(())
    }

    fn warn_capacity(&self, ovf: u64, image: u64) {
        tracing::warn!(
            target = %self.target.path.display(),
            ovf,
            image,
            "OVF capacity differs from the image's own; using the image's"
        );
    }

    /// Copies what of `data` at `offset` falls into the held-back last
    /// sector (zeroes it for `data == None`, `len` bytes) and returns how
    /// much lies before it.
    fn hold_tail(&mut self, offset: u64, data: Option<&[u8]>, len: u64) -> Result<u64> {
        let Some(tail) = &mut self.tail else {
            return Ok(len);
        };
        let end = offset.saturating_add(len);
        if end <= tail.start {
            return Ok(len);
        }
        let image = tail.start + tail.bytes.len() as u64;
        if end > image {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!(
                    "extent at guest offset {offset} (+{len} bytes) lies beyond the disk capacity of {image} bytes"
                ),
            ));
        }
        let before = tail.start.saturating_sub(offset);
        let at = (offset + before - tail.start) as usize;
        let n = (len - before) as usize;
        let dst = &mut tail.bytes[at..at + n];
        match data {
            Some(d) => dst.copy_from_slice(&d[before as usize..]),
            None => dst.fill(0),
        }
        Ok(before)
    }
}

impl ExtentSink for TargetSlot {
    fn capacity(&mut self, bytes: u64) -> Result<()> {
        let Some(hint) = self.capacity_hint else {
            // Before the OVF: the last sector waits for its capacity.
            if bytes > 0 && bytes <= limits::MAX_CAPACITY {
                let start = (bytes - 1) / 512 * 512;
                self.tail = Some(Tail {
                    start,
                    bytes: vec![0; (bytes - start) as usize],
                });
            }
            return self.open(bytes).map(|_| ());
        };
        // qcow2 and VMDK count whole sectors: an image one partial sector
        // larger than the OVF capacity is that capacity, rounded up.
        if hint < bytes && bytes == hint.div_ceil(512) * 512 {
            self.zero_tail_from = Some(hint);
            return self.open(hint).map(|_| ());
        }
        if hint != bytes {
            self.warn_capacity(hint, bytes);
        }
        self.open(bytes).map(|_| ())
    }

    fn size_hint(&mut self, bytes: u64) -> Result<()> {
        if let Some(cap) = self.capacity_hint
            && bytes > cap
        {
            return Err(raw_too_large(self.entry_size.unwrap_or(bytes), cap));
        }
        self.entry_hint = Some(bytes);
        Ok(())
    }

    fn size_pending(&mut self, entry: u64, trailer: u64) -> Result<()> {
        // Too large even if its last sector is a footer: refused at once,
        // as a raw entry is; otherwise the size at its end decides.
        if let Some(cap) = self.capacity_hint
            && entry.saturating_sub(trailer) > cap
        {
            return Err(raw_too_large(entry, cap));
        }
        self.entry_size = Some(entry);
        Ok(())
    }

    fn data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let before = self.hold_tail(offset, Some(data), data.len() as u64)?;
        let mut data = &data[..before as usize];
        if let Some(cap) = self.zero_tail_from
            && offset.saturating_add(data.len() as u64) > cap
        {
            let keep = cap.saturating_sub(offset).min(data.len() as u64) as usize;
            if !crate::sink::writer::is_zero(&data[keep..]) {
                return Err(past_ovf_capacity(cap));
            }
            data = &data[..keep];
        }
        if data.is_empty() {
            return Ok(());
        }
        self.writer()?.data(offset, data)
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        let len = self.hold_tail(offset, None, len)?;
        // A fresh volume reads zero past the exact capacity.
        let len = match self.zero_tail_from {
            Some(cap) => len.min(cap.saturating_sub(offset)),
            None => len,
        };
        if len == 0 {
            return Ok(());
        }
        self.writer()?.zero(offset, len)
    }
}
