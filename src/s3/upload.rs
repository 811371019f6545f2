//! An export into object storage: a multipart upload fed as the package
//! is written, whose object appears only when it is complete.
//!
//! The part size is chosen before the first byte from the package's exact
//! size ([`part_size`]): at least S3's 5 MiB, large enough to stay within
//! its 10,000 parts. Each full part is handed to the runtime and uploaded
//! while the next fills; at most [`S3_PARTS_IN_FLIGHT`] are on their way,
//! so memory is that many parts plus the one filling, whatever the
//! package's size. [`ObjectWriter::finish`] uploads the last part and
//! completes the upload; a writer dropped before that (an error, a
//! cancellation) aborts it, and the object never appears — the object
//! storage's `.partial`. A process killed outright leaves an incomplete
//! upload that no listing of objects shows; a bucket lifecycle rule
//! (`AbortIncompleteMultipartUpload`) removes its parts.

use std::collections::VecDeque;
use std::io::Write;

use object_store::{MultipartUpload, ObjectStoreExt, PutPayload};
use tokio::task::JoinHandle;

use super::{S3Url, runtime, storage_error, store};
use crate::buffers::Recycler;
use crate::error::{Error, ErrorKind, Result};
use crate::limits::{S3_DEFAULT_PART, S3_MAX_PART, S3_MAX_PARTS, S3_MIN_PART, S3_PARTS_IN_FLIGHT};

/// The part size for a package of `total` bytes: `requested` (or the
/// default) unless more parts than S3 allows would be needed, then the
/// smallest whole MiB that fits.
pub fn part_size(total: u64, requested: Option<u64>) -> Result<u64> {
    if let Some(r) = requested
        && !(S3_MIN_PART..=S3_MAX_PART).contains(&r)
    {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "a part size of {r} bytes is outside S3's limits ({S3_MIN_PART} to {S3_MAX_PART})"
            ),
        ));
    }
    let needed = total.div_ceil(S3_MAX_PARTS).div_ceil(1 << 20) << 20;
    let size = requested.unwrap_or(S3_DEFAULT_PART).max(needed);
    if size > S3_MAX_PART {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!("a package of {total} bytes is larger than one S3 object can be"),
        ));
    }
    Ok(size)
}

/// A multipart upload being written.
#[allow(missing_debug_implementations)]
pub struct ObjectWriter {
    url: S3Url,
    upload: Option<Box<dyn MultipartUpload>>,
    part_size: usize,
    buf: Vec<u8>,
    /// Parts on their way.
    in_flight: VecDeque<JoinHandle<object_store::Result<()>>>,
    /// Buffers of parts uploaded, filled again: the allocator never sees
    /// part-sized blocks come and go (which it would keep, one per thread
    /// that freed one, beyond the parts live).
    buffers: Recycler,
    parts: u64,
}

impl ObjectWriter {
    /// Starts the multipart upload of `url` in parts of `part_size` bytes.
    pub fn create(url: &S3Url, part_size: u64) -> Result<ObjectWriter> {
        let s3 = store(url)?;
        let path = url.object_path()?;
        let upload = runtime()
            .block_on(s3.put_multipart(&path))
            .map_err(|e| storage_error(url, "starting the multipart upload", e))?;
        let part_size = usize::try_from(part_size)
            .map_err(|_| Error::internal("the part size does not fit in memory"))?;
        tracing::info!(url = %url, part_size, "multipart upload started");
        Ok(ObjectWriter {
            url: url.clone(),
            upload: Some(upload),
            part_size,
            buf: Vec::with_capacity(part_size),
            in_flight: VecDeque::new(),
            buffers: Recycler::new(part_size, S3_PARTS_IN_FLIGHT + 1),
            parts: 0,
        })
    }

    /// Sends the part in `buf`, first waiting for the oldest part when
    /// enough are on their way.
    fn send_part(&mut self) -> Result<()> {
        while self.in_flight.len() >= S3_PARTS_IN_FLIGHT {
            self.wait_oldest()?;
        }
        let Some(upload) = self.upload.as_mut() else {
            return Err(Error::internal("part after the upload ended"));
        };
        let next = self.buffers.take();
        let data = self.buffers.lend(std::mem::replace(&mut self.buf, next));
        let fut = upload.put_part(PutPayload::from(data));
        self.in_flight.push_back(runtime().spawn(fut));
        self.parts += 1;
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<()> {
        let Some(h) = self.in_flight.pop_front() else {
            return Ok(());
        };
        match runtime().block_on(h) {
            // The store let go of the part: the next take() reuses its buffer.
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(storage_error(&self.url, "uploading a part", e)),
            Err(e) => Err(Error::internal(format!("a part's upload failed: {e}"))),
        }
    }

    /// Uploads the last part and completes the upload: the object appears.
    pub fn finish(mut self) -> Result<u64> {
        if !self.buf.is_empty() || self.parts == 0 {
            self.send_part()?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        let Some(mut upload) = self.upload.take() else {
            return Err(Error::internal("the upload ended twice"));
        };
        let r = runtime().block_on(upload.complete());
        if let Err(e) = r {
            // Its parts are not left behind.
            let _ = runtime().block_on(upload.abort());
            return Err(storage_error(
                &self.url,
                "completing the multipart upload",
                e,
            ));
        }
        tracing::info!(url = %self.url, parts = self.parts, "object complete");
        Ok(self.parts)
    }
}

impl Write for ObjectWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = self.part_size - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.part_size {
            self.send_part()
                .map_err(|e| std::io::Error::other(e.one_line()))?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        for h in self.in_flight.drain(..) {
            h.abort();
        }
        match runtime().block_on(upload.abort()) {
            Ok(()) => {
                tracing::info!(url = %self.url, "multipart upload aborted; no object was made")
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "aborting the multipart upload failed; its parts stay until the bucket's lifecycle removes them")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fit_s3s_limits() {
        const MIB: u64 = 1 << 20;
        assert_eq!(part_size(100 * MIB, None).unwrap(), S3_DEFAULT_PART);
        assert_eq!(part_size(100 * MIB, Some(5 * MIB)).unwrap(), 5 * MIB);
        // 1 TiB in at most 10,000 parts: 105 MiB each.
        let tib = 1u64 << 40;
        let p = part_size(tib, None).unwrap();
        assert_eq!(p, 105 * MIB);
        assert!(tib.div_ceil(p) <= S3_MAX_PARTS);
        assert!(part_size(MIB, Some(MIB)).is_err());
        assert!(part_size(60 << 40, None).is_err());
    }
}
