//! Raw disks: the entry's bytes are the guest bytes. Zero detection is not
//! done here but once, in the volume writer.
//!
//! A fixed VHD is raw bytes followed by a 512-byte footer, with nothing at
//! its start to say so (qemu's own probe calls it raw). So the last 512
//! bytes of every raw entry are held back until the entry ends (of an
//! entry of known size, only those; of another, the last 512 bytes of
//! each piece fed, which the next piece releases): if they
//! are a fixed VHD's footer for the bytes before them
//! ([`vhd::fixed_footer`]), they are dropped and the disk is that VHD;
//! otherwise they are written like the rest. The sink learns the size in
//! two steps ([`ExtentSink::size_pending`], then [`ExtentSink::size_hint`]).

use crate::codec::vhd::{self, FOOTER_LEN};
use crate::codec::{DiskDecoder, ExtentSink};
use crate::error::Result;

/// Passes bytes through at a running guest offset, holding the last 512
/// back.
#[derive(Debug)]
pub struct RawDecoder {
    /// Bytes passed to the sink: the guest offset of `held[0]`.
    offset: u64,
    /// The entry's size, when known: the sink is told before any extent.
    size: Option<u64>,
    announced: bool,
    /// The last bytes seen, at most [`FOOTER_LEN`].
    held: [u8; FOOTER_LEN],
    held_len: usize,
    /// The entry ended with a fixed VHD footer, dropped.
    fixed_vhd: bool,
    finished: bool,
}

impl Default for RawDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RawDecoder {
    /// A decoder positioned at guest offset 0.
    pub fn new() -> Self {
        RawDecoder {
            offset: 0,
            size: None,
            announced: false,
            held: [0; FOOTER_LEN],
            held_len: 0,
            fixed_vhd: false,
            finished: false,
        }
    }

    /// A decoder that tells its sink the disk is `size` bytes (the entry's
    /// size) before the first extent, or, for an entry that may end with a
    /// VHD footer, at least `size - 512` bytes until the end says which.
    pub fn with_size_hint(size: u64) -> Self {
        RawDecoder {
            size: Some(size),
            ..Self::new()
        }
    }

    /// Whether the entry turned out to be a fixed VHD (its footer dropped).
    pub fn is_fixed_vhd(&self) -> bool {
        self.fixed_vhd
    }

    /// Whether the last bytes may still turn out not to be disk data.
    fn pending(&self) -> bool {
        self.size.is_some_and(|n| n >= FOOTER_LEN as u64)
    }

    fn announce(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        if self.announced {
            return Ok(());
        }
        self.announced = true;
        match self.size {
            Some(n) if self.pending() => out.size_pending(n, FOOTER_LEN as u64),
            Some(n) => out.size_hint(n),
            None => Ok(()),
        }
    }

    fn emit(&mut self, data: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        if !data.is_empty() {
            out.data(self.offset, data)?;
            self.offset += data.len() as u64;
        }
        Ok(())
    }
}

impl DiskDecoder for RawDecoder {
    fn feed(&mut self, mut input: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        if input.is_empty() {
            return Ok(());
        }
        self.announce(out)?;
        // With the entry's size known only its last 512 bytes can be a
        // footer: everything before them goes out straight from the
        // caller's buffer, in extents that end where the caller's do.
        if let Some(size) = self.size
            && self.held_len == 0
        {
            let tail = size.saturating_sub(FOOTER_LEN as u64);
            if self.offset < tail {
                let n = (tail - self.offset).min(input.len() as u64) as usize;
                self.emit(&input[..n], out)?;
                input = &input[n..];
                if input.is_empty() {
                    return Ok(());
                }
            }
        }
        let total = self.held_len + input.len();
        if total <= FOOTER_LEN {
            self.held[self.held_len..total].copy_from_slice(input);
            self.held_len = total;
            return Ok(());
        }
        // Everything but the last 512 bytes goes out: held bytes first,
        // then the input straight from the caller's buffer.
        let emit = total - FOOTER_LEN;
        let from_held = emit.min(self.held_len);
        let held = self.held;
        self.emit(&held[..from_held], out)?;
        let from_input = emit - from_held;
        self.emit(&input[..from_input], out)?;
        let kept = self.held_len - from_held;
        self.held.copy_within(from_held..self.held_len, 0);
        self.held[kept..].copy_from_slice(&input[from_input..]);
        self.held_len = FOOTER_LEN;
        Ok(())
    }

    fn finish(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.announce(out)?;
        if self.held_len == FOOTER_LEN && vhd::fixed_footer(&self.held, self.offset)?.is_some() {
            self.fixed_vhd = true;
            if self.pending() {
                out.size_hint(self.offset)?;
            }
            return Ok(());
        }
        if self.pending() {
            out.size_hint(self.offset + self.held_len as u64)?;
        }
        let held = self.held;
        let n = self.held_len;
        self.held_len = 0;
        self.emit(&held[..n], out)
    }

    fn capacity(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_support::MemSink;
    use crate::test_support::Rng;

    /// Records the size calls and the bytes, in order.
    #[derive(Debug, Default, PartialEq)]
    struct Calls {
        sizes: Vec<(&'static str, u64)>,
        bytes: Vec<u8>,
        /// Size calls after the first extent.
        late: Vec<(&'static str, u64)>,
    }

    impl ExtentSink for Calls {
        fn size_hint(&mut self, bytes: u64) -> Result<()> {
            let to = if self.bytes.is_empty() {
                &mut self.sizes
            } else {
                &mut self.late
            };
            to.push(("hint", bytes));
            Ok(())
        }
        fn size_pending(&mut self, entry: u64, trailer: u64) -> Result<()> {
            assert!(self.bytes.is_empty() && self.sizes.is_empty());
            self.sizes.push(("pending", entry - trailer));
            Ok(())
        }
        fn data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
            assert_eq!(offset, self.bytes.len() as u64, "raw data in order");
            self.bytes.extend_from_slice(data);
            Ok(())
        }
        fn zero(&mut self, _offset: u64, _len: u64) -> Result<()> {
            unreachable!("raw emits no zero extents")
        }
    }

    fn feed_cut(input: &[u8], sized: bool, cuts: &[usize]) -> (Calls, bool) {
        let mut d = if sized {
            RawDecoder::with_size_hint(input.len() as u64)
        } else {
            RawDecoder::new()
        };
        let mut sink = Calls::default();
        let mut at = 0;
        for &c in cuts.iter().chain([input.len()].iter()) {
            d.feed(&input[at..c], &mut sink).unwrap();
            at = c;
        }
        d.finish(&mut sink).unwrap();
        (sink, d.is_fixed_vhd())
    }

    /// The outcome of `input`, checked to be the same for every split
    /// point and byte-by-byte feeding.
    fn every_split(input: &[u8], sized: bool) -> (Calls, bool) {
        let whole = feed_cut(input, sized, &[]);
        for at in 0..=input.len() {
            assert_eq!(feed_cut(input, sized, &[at]), whole, "split at {at}");
        }
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(feed_cut(input, sized, &bytewise), whole);
        whole
    }

    /// A fixed VHD footer (creator `tap\0`, sized by its current size).
    pub(crate) fn footer(size: u64) -> [u8; FOOTER_LEN] {
        let mut f = [0u8; FOOTER_LEN];
        f[..8].copy_from_slice(b"conectix");
        f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        f[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
        f[28..32].copy_from_slice(b"tap\0");
        f[40..48].copy_from_slice(&size.to_be_bytes());
        f[48..56].copy_from_slice(&size.to_be_bytes());
        f[60..64].copy_from_slice(&2u32.to_be_bytes());
        let sum = f.iter().fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
        f[64..68].copy_from_slice(&(!sum).to_be_bytes());
        f
    }

    #[test]
    fn raw_bytes_pass_through_in_every_split() {
        let data = Rng(5).bytes(1500);
        let (calls, fixed) = every_split(&data, true);
        assert!(!fixed);
        assert_eq!(calls.bytes, data);
        // The sink first hears the size without the possible footer, then
        // the whole size before the held-back bytes.
        assert_eq!(calls.sizes, [("pending", 1500 - 512)]);
        assert_eq!(calls.late, [("hint", 1500)]);
        let (calls, _) = every_split(&data, false);
        assert_eq!(calls.bytes, data);
        assert!(calls.sizes.is_empty() && calls.late.is_empty());
    }

    #[test]
    fn short_entries_get_their_size_first() {
        for n in [0, 1, 511] {
            let data = vec![7u8; n];
            let (calls, fixed) = every_split(&data, true);
            assert!(!fixed);
            assert_eq!(calls.bytes, data);
            assert_eq!(calls.sizes, [("hint", n as u64)]);
            assert!(calls.late.is_empty());
        }
    }

    #[test]
    fn a_fixed_vhd_footer_is_dropped_in_every_split() {
        let mut data = Rng(9).bytes(1024);
        data.extend_from_slice(&footer(1024));
        let (calls, fixed) = every_split(&data, true);
        assert!(fixed);
        assert_eq!(calls.bytes, &data[..1024]);
        assert_eq!(calls.sizes, [("pending", 1024)]);
        // The data is what was first announced, less nothing.
        assert_eq!(calls.late, [("hint", 1024)]);
        // Not knowing the entry's size changes nothing but the hints.
        let (calls, fixed) = every_split(&data, false);
        assert!(fixed);
        assert_eq!(calls.bytes, &data[..1024]);
        // A footer alone is a fixed VHD of no bytes.
        let (calls, fixed) = every_split(&footer(0), true);
        assert!(fixed);
        assert!(calls.bytes.is_empty());
    }

    #[test]
    fn near_footers_are_data() {
        let data = Rng(3).bytes(2048);
        let good = footer(2048);
        let mut cases = Vec::new();
        let mut bad_sum = good;
        bad_sum[200] ^= 1;
        cases.push(bad_sum);
        cases.push(footer(2047));
        cases.push(footer(2560));
        let mut dynamic = good;
        dynamic[63] = 3;
        dynamic[64..68].copy_from_slice(
            &(u32::from_be_bytes([good[64], good[65], good[66], good[67]]) - 1).to_be_bytes(),
        );
        cases.push(dynamic);
        for tail in cases {
            let mut entry = data.clone();
            entry.extend_from_slice(&tail);
            let mut sink = MemSink::default();
            let mut d = RawDecoder::with_size_hint(entry.len() as u64);
            d.feed(&entry, &mut sink).unwrap();
            d.finish(&mut sink).unwrap();
            assert!(!d.is_fixed_vhd());
            assert_eq!(sink.bytes, entry);
        }
    }

    #[test]
    fn a_fixed_vhd_qemu_would_size_otherwise_is_refused() {
        let mut f = footer(1024);
        // Creator qemu: sized by a CHS geometry of 4 × 4 × 17 sectors.
        f[28..32].copy_from_slice(b"qemu");
        f[56..60].copy_from_slice(&[0, 4, 4, 17]);
        f[64..68].fill(0);
        let sum = f.iter().fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
        f[64..68].copy_from_slice(&(!sum).to_be_bytes());
        let mut entry = vec![1u8; 1024];
        entry.extend_from_slice(&f);
        let mut d = RawDecoder::with_size_hint(entry.len() as u64);
        let mut sink = MemSink::default();
        d.feed(&entry, &mut sink).unwrap();
        let e = d.finish(&mut sink).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        assert!(
            e.to_string()
                .contains("qemu reads 139264 bytes (its CHS geometry)"),
            "{e}"
        );
        assert_eq!(
            e.one_line(),
            crate::Error::from(vhd::VhdError::FixedSize {
                offset: 1024,
                current: 1024,
                reads: 139_264,
                rule: "its CHS geometry",
                creator: "qemu".into()
            })
            .one_line()
        );
        // A current size of no whole number of sectors.
        let mut entry = vec![1u8; 1000];
        entry.extend_from_slice(&footer(1000));
        let mut d = RawDecoder::with_size_hint(entry.len() as u64);
        let mut sink = MemSink::default();
        d.feed(&entry, &mut sink).unwrap();
        let e = d.finish(&mut sink).unwrap_err();
        assert!(
            e.to_string()
                .contains("qemu reads 512 bytes (whole sectors of the current size)"),
            "{e}"
        );
    }
}
