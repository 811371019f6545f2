//! Compressed clusters of a qcow2 stream: zlib (raw deflate) and zstd,
//! each inflated into one cluster and emitted below the virtual size.

use flate2::{Decompress, FlushDecompress, Status};
use zstd::stream::raw::{DParameter, Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

use super::Qcow2StreamDecoder;
use crate::codec::ExtentSink;
use crate::codec::qcow2::Qcow2Error;
use crate::codec::qcow2::header::CompressionType;
use crate::error::Result;

/// zstd window accepted for one compressed cluster (4 MiB ≥ 2 MiB cluster).
const ZSTD_WINDOW_LOG_MAX: u32 = 22;

impl Qcow2StreamDecoder {
    /// Decompresses one cluster and emits the part below the virtual size.
    pub(super) fn emit_compressed(
        &mut self,
        host: u64,
        guest: u64,
        data: &[u8],
        out: &mut dyn ExtentSink,
    ) -> Result<()> {
        let cs = self.geo.cs as usize;
        let want = self.geo.size.saturating_sub(guest).min(cs as u64) as usize;
        let ctype = self.geo.ctype;
        let mut buf = std::mem::take(&mut self.cluster_buf);
        buf.resize(cs, 0);
        let r = match ctype {
            CompressionType::Zlib => self.inflate_zlib(data, &mut buf, host, guest),
            CompressionType::Zstd => self.inflate_zstd(data, &mut buf, host, guest),
        };
        let result = r.and_then(|produced| {
            if produced < want {
                return Err(Qcow2Error::BadCompressed {
                    offset: host,
                    guest,
                    reason: format!("inflates to {produced} bytes, expected {cs}"),
                }
                .into());
            }
            out.data(guest, &buf[..want])
        });
        self.cluster_buf = buf;
        result
    }

    pub(super) fn inflate_zlib(
        &mut self,
        data: &[u8],
        buf: &mut [u8],
        host: u64,
        guest: u64,
    ) -> Result<usize> {
        let bad = |reason: String| Qcow2Error::BadCompressed {
            offset: host,
            guest,
            reason,
        };
        let d = self.inflater.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        let status = d
            .decompress(data, buf, FlushDecompress::None)
            .map_err(|e| bad(format!("deflate: {e}")))?;
        let produced = d.total_out() as usize;
        if status == Status::StreamEnd {
            return Ok(produced);
        }
        if produced < buf.len() {
            return Err(bad(format!(
                "deflate stream incomplete after {} bytes of input",
                d.total_in()
            ))
            .into());
        }
        // Output is full but the stream did not end: more output is a bomb.
        let used = d.total_in() as usize;
        let mut probe = [0u8; 1];
        let _ = d.decompress(
            &data[used.min(data.len())..],
            &mut probe,
            FlushDecompress::None,
        );
        if d.total_out() as usize > produced {
            return Err(Qcow2Error::CompressedBomb {
                offset: host,
                guest,
                cluster_size: buf.len() as u64,
            }
            .into());
        }
        Ok(produced)
    }

    pub(super) fn inflate_zstd(
        &mut self,
        data: &[u8],
        buf: &mut [u8],
        host: u64,
        guest: u64,
    ) -> Result<usize> {
        let bad = |reason: String| Qcow2Error::BadCompressed {
            offset: host,
            guest,
            reason,
        };
        if self.zstd.is_none() {
            let mut d = ZstdDecoder::new().map_err(|e| bad(format!("zstd: {e}")))?;
            d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                .map_err(|e| bad(format!("zstd: {e}")))?;
            self.zstd = Some(d);
        }
        let Some(d) = self.zstd.as_mut() else {
            return Err(bad("zstd decoder unavailable".into()).into());
        };
        d.reinit().map_err(|e| bad(format!("zstd: {e}")))?;
        let mut input = InBuffer::around(data);
        let mut output = OutBuffer::around(buf);
        let mut frame_done = false;
        loop {
            let (ip, op) = (input.pos(), output.pos());
            let hint = d
                .run(&mut input, &mut output)
                .map_err(|e| bad(format!("zstd: {e}")))?;
            if hint == 0 {
                frame_done = true;
                break;
            }
            if output.pos() == output.capacity() {
                break;
            }
            if input.pos() == ip && output.pos() == op {
                break;
            }
        }
        let produced = output.pos();
        let cap = output.capacity();
        if frame_done {
            return Ok(produced);
        }
        if produced < cap {
            return Err(bad(format!(
                "zstd frame incomplete after {} bytes of input",
                input.pos()
            ))
            .into());
        }
        let used = input.pos();
        let mut probe = [0u8; 1];
        let mut input = InBuffer::around(&data[used..]);
        let mut output = OutBuffer::around(&mut probe[..]);
        let _ = d.run(&mut input, &mut output);
        if output.pos() > 0 {
            return Err(Qcow2Error::CompressedBomb {
                offset: host,
                guest,
                cluster_size: cap as u64,
            }
            .into());
        }
        Ok(produced)
    }
}
