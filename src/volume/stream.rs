//! Consecutive writes into a volume, as an upload's body arrives: the
//! pieces are gathered so that the volume sees whole blocks — aligned
//! `O_DIRECT` blocks on a raw file ([`DirectWriter`]), whole clusters on a
//! qcow2 image (a partial cluster not yet allocated costs a copy of the
//! rest of it from below). Whole clusters that arrive aligned are written
//! from the caller's buffer, without a copy.

use super::direct::DirectWriter;
use super::{Volume, VolumeError, WriteAt, check_bounds, io_at};
use crate::error::Result;

/// Writes consecutive bytes from an offset on; see the module docs.
#[derive(Debug)]
#[must_use = "call finish() to write what is buffered"]
pub struct StreamWriter<'a> {
    volume: &'a Volume,
    inner: Inner<'a>,
}

#[derive(Debug)]
enum Inner<'a> {
    Direct(DirectWriter<'a>),
    Clusters {
        /// Guest offset of `buf[0]`.
        start: u64,
        buf: Vec<u8>,
        /// Clusters are written once this many bytes are gathered.
        capacity: usize,
        /// The cluster size.
        align: u64,
        /// The least a write from the caller's buffer carries: a cluster
        /// on a local image, a whole buffer where each write is a request
        /// over the network.
        direct_min: usize,
    },
}

impl<'a> StreamWriter<'a> {
    /// A writer at `offset` of `volume` with a buffer of about `buffer`
    /// bytes.
    pub(super) fn new(volume: &'a Volume, offset: u64, buffer: usize) -> Result<Self> {
        check_bounds("write", offset, 0, volume_size(volume))?;
        let inner = match volume {
            Volume::Raw(r) => {
                if !r.is_writable() {
                    return Err(VolumeError::ReadOnly {
                        path: r.path().to_path_buf(),
                    }
                    .into());
                }
                Inner::Direct(DirectWriter::new(r.file(), offset, buffer))
            }
            Volume::Qcow2(_) | Volume::Nbd(_) | Volume::Imageio(_) => {
                let align = match volume {
                    Volume::Qcow2(q) => {
                        q.check_writable()?;
                        q.cluster_size().max(1)
                    }
                    Volume::Nbd(n) => n.preferred_block().max(1),
                    Volume::Raw(_) | Volume::Imageio(_) => 1,
                };
                // A remote takes one request per write: send large ones.
                let buffer = match volume {
                    Volume::Imageio(_) => buffer.max(crate::limits::REMOTE_REQUEST),
                    _ => buffer,
                };
                let capacity = (buffer as u64).max(align).div_ceil(align) * align;
                let direct_min = match volume {
                    Volume::Qcow2(_) => align as usize,
                    _ => capacity as usize,
                };
                Inner::Clusters {
                    start: offset,
                    buf: Vec::new(),
                    capacity: capacity as usize,
                    align,
                    direct_min,
                }
            }
        };
        Ok(StreamWriter { volume, inner })
    }

    /// The guest offset up to which every byte given has reached the
    /// volume (the rest waits in the buffer).
    pub fn written_through(&self) -> u64 {
        match &self.inner {
            Inner::Direct(w) => w.written_through(),
            Inner::Clusters { start, .. } => *start,
        }
    }

    /// The guest offset of the next byte.
    fn position(&self) -> u64 {
        match &self.inner {
            Inner::Direct(w) => w.position(),
            Inner::Clusters { start, buf, .. } => start + buf.len() as u64,
        }
    }

    /// Appends `data`; it must fit inside the volume.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let pos = self.position();
        check_bounds("write", pos, data.len() as u64, volume_size(self.volume))?;
        let volume = self.volume;
        match &mut self.inner {
            Inner::Direct(w) => w.write(data).map_err(|e| {
                io_at(
                    e,
                    volume.path(),
                    &format!("write of {} bytes at offset {pos} failed", data.len()),
                )
            }),
            Inner::Clusters {
                start,
                buf,
                capacity,
                align,
                direct_min,
            } => {
                let mut data = data;
                while !data.is_empty() {
                    if buf.is_empty() && *start % *align == 0 && data.len() >= *direct_min {
                        // Whole clusters straight from the caller's
                        // buffer: no copy through ours (and over the
                        // network no smaller request than gathering
                        // would send).
                        let n = data.len() as u64 / *align * *align;
                        let n = n.min(*capacity as u64) as usize;
                        volume.write_at(*start, &data[..n])?;
                        data = &data[n..];
                        *start += n as u64;
                        continue;
                    }
                    if buf.capacity() < *capacity {
                        buf.reserve_exact(*capacity - buf.len());
                    }
                    let n = (*capacity - buf.len()).min(data.len());
                    buf.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if buf.len() == *capacity {
                        // Up to the last cluster boundary; the rest waits.
                        let end = *start + buf.len() as u64;
                        let cut = end / *align * *align;
                        let n = if cut > *start {
                            (cut - *start) as usize
                        } else {
                            buf.len()
                        };
                        volume.write_at(*start, &buf[..n])?;
                        buf.drain(..n);
                        *start += n as u64;
                    }
                }
                Ok(())
            }
        }
    }

    /// Writes what is buffered. Returns the offset after the last byte.
    pub fn finish(self) -> Result<u64> {
        let volume = self.volume;
        match self.inner {
            Inner::Direct(w) => w
                .finish()
                .map_err(|e| io_at(e, volume.path(), "write failed")),
            Inner::Clusters { start, buf, .. } => {
                if !buf.is_empty() {
                    volume.write_at(start, &buf)?;
                }
                Ok(start + buf.len() as u64)
            }
        }
    }
}

fn volume_size(v: &Volume) -> u64 {
    super::Size::size(v)
}
