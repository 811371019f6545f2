//! gzip-compressed entries (`File ovf:compression="gzip"`): possibly
//! multi-member; the inflated bytes go to an inner decoder chosen by
//! content. Inflated output is capped so a small entry cannot expand into
//! an unbounded amount of work.

use std::io::Write;

use flate2::write::MultiGzDecoder;

use crate::codec::probe::PROBE_LEN;
use crate::codec::select::Decoder;
use crate::codec::{DiskDecoder, ExtentSink};
use crate::error::{Classify, ErrorKind, Result};
use crate::limits;

/// Errors of the gzip layer.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GzipError {
    /// The inflated stream grew past the disk's capacity.
    #[error(
        "gzip stream inflates past {cap} bytes, more than the disk's capacity and its image format's metadata take"
    )]
    TooLarge {
        /// The cap in bytes.
        cap: u64,
        /// Offset in the compressed entry where it was noticed.
        offset: u64,
    },
    /// The gzip stream is malformed or truncated.
    #[error("invalid gzip data: {reason}")]
    Invalid {
        /// Offset in the compressed entry.
        offset: u64,
        /// What the inflater said.
        reason: String,
    },
}

/// What the offsets of a decoder inside gzip count.
const INFLATED: &str = "inflated data";

impl Classify for GzipError {
    /// Offset in the compressed entry.
    fn offset(&self) -> Option<u64> {
        match *self {
            GzipError::TooLarge { offset, .. } | GzipError::Invalid { offset, .. } => Some(offset),
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            GzipError::TooLarge { .. } => ErrorKind::LimitExceeded,
            GzipError::Invalid { .. } => ErrorKind::CorruptImage,
        }
    }
}

/// Inflates a gzip entry into an inner decoder.
pub struct GzipDecoder {
    inflater: MultiGzDecoder<Vec<u8>>,
    inner: Decoder,
    cap: u64,
    consumed: u64,
    produced: u64,
}

impl std::fmt::Debug for GzipDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzipDecoder")
            .field("cap", &self.cap)
            .field("consumed", &self.consumed)
            .field("produced", &self.produced)
            .finish()
    }
}

impl GzipDecoder {
    /// Inflates into `inner`, failing once more than `cap` bytes come out.
    pub fn new(inner: Decoder, cap: u64) -> Self {
        GzipDecoder {
            inflater: MultiGzDecoder::new(Vec::with_capacity(limits::GZIP_OUTPUT_BUFFER)),
            inner,
            cap,
            consumed: 0,
            produced: 0,
        }
    }

    /// The decoder of the inflated bytes.
    pub fn inner(&self) -> &Decoder {
        &self.inner
    }

    pub(crate) fn inner_mut(&mut self) -> &mut Decoder {
        &mut self.inner
    }

    fn invalid(&self, e: std::io::Error) -> GzipError {
        GzipError::Invalid {
            offset: self.consumed,
            reason: e.to_string(),
        }
    }

    fn drain(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        let buf = std::mem::take(self.inflater.get_mut());
        self.produced += buf.len() as u64;
        if self.produced > self.cap {
            return Err(GzipError::TooLarge {
                cap: self.cap,
                offset: self.consumed,
            }
            .into());
        }
        // The inner decoder's offsets count inflated bytes, not the entry's.
        let res = self.inner.feed(&buf, out).map_err(|e| e.inside(INFLATED));
        let mut buf = buf;
        buf.clear();
        *self.inflater.get_mut() = buf;
        res
    }
}

impl DiskDecoder for GzipDecoder {
    fn feed(&mut self, input: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        for slice in input.chunks(limits::GZIP_INPUT_SLICE) {
            let mut rest = slice;
            while !rest.is_empty() {
                let n = match self.inflater.write(rest) {
                    Ok(n) => n,
                    Err(e) => return Err(self.invalid(e).into()),
                };
                if n == 0 {
                    return Err(GzipError::Invalid {
                        offset: self.consumed,
                        reason: "inflater accepted no input".into(),
                    }
                    .into());
                }
                rest = &rest[n..];
                self.consumed += n as u64;
            }
            if let Err(e) = self.inflater.flush() {
                return Err(self.invalid(e).into());
            }
            self.drain(out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        if self.consumed == 0 {
            return Err(GzipError::Invalid {
                offset: 0,
                reason: "empty entry".into(),
            }
            .into());
        }
        if let Err(e) = self.inflater.try_finish() {
            return Err(self.invalid(e).into());
        }
        self.drain(out)?;
        self.inner.finish(out).map_err(|e| e.inside(INFLATED))
    }

    fn capacity(&self) -> Option<u64> {
        self.inner.capacity()
    }
}

/// Compressed bytes handed to the inflater at a time while only the head
/// of a gzip stream is wanted: deflate expands at most ~1032 times, so
/// this bounds what one write can inflate to about 64 KiB.
const HEAD_INPUT_SLICE: usize = 64;

/// The first [`PROBE_LEN`] inflated bytes of a gzip stream, for probing
/// what it holds without decoding the disk: `inspect` names the format
/// inside a gzip entry as import's decoder choice would see it.
pub struct InflatedHead {
    inflater: MultiGzDecoder<Vec<u8>>,
    /// Compressed bytes fed so far.
    consumed: u64,
    state: HeadState,
}

enum HeadState {
    Inflating,
    Done,
    Failed(GzipError),
}

impl std::fmt::Debug for InflatedHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflatedHead")
            .field("consumed", &self.consumed)
            .field("inflated", &self.inflater.get_ref().len())
            .finish()
    }
}

impl Default for InflatedHead {
    fn default() -> Self {
        InflatedHead {
            inflater: MultiGzDecoder::new(Vec::with_capacity(PROBE_LEN)),
            consumed: 0,
            state: HeadState::Inflating,
        }
    }
}

impl InflatedHead {
    /// Waiting for the first compressed bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the head is complete (or the stream failed): the rest of
    /// the entry need not be fed.
    pub fn is_done(&self) -> bool {
        !matches!(self.state, HeadState::Inflating)
    }

    /// Feeds the next compressed bytes; ignored once done.
    pub fn feed(&mut self, input: &[u8]) {
        for slice in input.chunks(HEAD_INPUT_SLICE) {
            if self.is_done() {
                return;
            }
            let step = self
                .inflater
                .write_all(slice)
                .and_then(|()| self.inflater.flush());
            self.consumed += slice.len() as u64;
            if let Err(e) = step {
                self.fail(e);
                return;
            }
            self.keep_head();
        }
    }

    /// The compressed stream ended: whatever inflated is the whole head.
    pub fn finish(&mut self) {
        if self.is_done() {
            return;
        }
        if let Err(e) = self.inflater.try_finish() {
            self.fail(e);
            return;
        }
        self.keep_head();
        self.state = HeadState::Done;
    }

    /// The inflated head (at most [`PROBE_LEN`] bytes), or why the stream
    /// could not be inflated.
    pub fn head(&self) -> std::result::Result<&[u8], &GzipError> {
        match &self.state {
            HeadState::Failed(e) => Err(e),
            _ => Ok(self.inflater.get_ref()),
        }
    }

    fn keep_head(&mut self) {
        let out = self.inflater.get_mut();
        if out.len() >= PROBE_LEN {
            out.truncate(PROBE_LEN);
            self.state = HeadState::Done;
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        self.state = HeadState::Failed(GzipError::Invalid {
            offset: self.consumed,
            reason: e.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_support::MemSink;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn run(input: &[u8], cap: u64, piece: usize) -> Result<Vec<u8>> {
        let mut d = GzipDecoder::new(Decoder::sniffing(None), cap);
        let mut sink = MemSink::default();
        for p in input.chunks(piece) {
            d.feed(p, &mut sink)?;
        }
        d.finish(&mut sink)?;
        Ok(sink.bytes)
    }

    #[test]
    fn multi_member_inflates_in_any_split() {
        let a: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let b = vec![7u8; 30_000];
        let mut input = gz(&a);
        input.extend(gz(&b));
        let mut want = a.clone();
        want.extend(&b);
        for piece in [1, 7, 4096, 1 << 20] {
            assert_eq!(run(&input, 1 << 30, piece).unwrap(), want, "piece {piece}");
        }
    }

    #[test]
    fn inflated_head_stops_at_the_probe_length() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        // Two members, the first shorter than the head.
        let mut input = gz(&data[..100]);
        input.extend(gz(&data[100..]));
        for piece in [1, 7, 4096, 1 << 20] {
            let mut h = InflatedHead::new();
            for p in input.chunks(piece) {
                h.feed(p);
            }
            assert!(h.is_done(), "piece {piece}");
            assert_eq!(h.head().unwrap(), &data[..PROBE_LEN], "piece {piece}");
        }
        // A stream shorter than the head is all of it once finished.
        let mut h = InflatedHead::new();
        h.feed(&gz(b"tiny"));
        h.finish();
        assert_eq!(h.head().unwrap(), b"tiny");
        // Data that does not inflate is reported, not panicked on.
        let mut h = InflatedHead::new();
        let mut bad = gz(&data)[..20].to_vec();
        bad.extend_from_slice(&[0xff; 300]);
        h.feed(&bad);
        h.finish();
        assert!(matches!(h.head(), Err(GzipError::Invalid { .. })));
    }

    #[test]
    fn bomb_is_capped() {
        let input = gz(&vec![0u8; 4 << 20]);
        let err = run(&input, 1 << 20, 1 << 16).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);
    }

    #[test]
    fn truncated_stream_fails() {
        let input = gz(&[1u8; 10_000]);
        let err = run(&input[..input.len() - 4], 1 << 20, 512).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CorruptImage);
    }

    #[test]
    fn trailing_garbage_fails() {
        let mut input = gz(&[1u8; 1000]);
        input.extend_from_slice(b"garbage!");
        assert!(run(&input, 1 << 20, 512).is_err());
    }
}
