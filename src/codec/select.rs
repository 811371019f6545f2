//! Picks the decoder for an entry from its content: the first
//! [`PROBE_LEN`] bytes are held back until [`probe`] has seen them (or the
//! entry ended), then fed to the decoder of the format found. A format
//! ovaio cannot decode is refused here, before any byte reaches a target.

use crate::codec::gzip::GzipDecoder;
use crate::codec::probe::{Format, PROBE_LEN, ProbeError, probe};
use crate::codec::qcow2::{Qcow2StreamDecoder, Spool};
use crate::codec::raw::RawDecoder;
use crate::codec::vdi::VdiDecoder;
use crate::codec::vhd::VhdDynamicDecoder;
use crate::codec::vmdk::{VmdkSparseDecoder, VmdkStreamDecoder};
use crate::codec::{DiskDecoder, ExtentSink, SourceFormat};
use crate::error::{Error, ErrorKind, Result};

/// Any disk decoder: a closed set, dispatched by `match`.
#[derive(Debug)]
pub enum Decoder {
    /// Waiting for the first bytes to pick a format.
    Sniffing(Box<Sniffer>),
    /// Raw bytes (or a fixed VHD, told by its footer at the end).
    Raw(Box<RawDecoder>),
    /// qcow2, one pass (spooling what arrives before its tables).
    Qcow2(Box<Qcow2StreamDecoder>),
    /// VMDK streamOptimized.
    Vmdk(Box<VmdkStreamDecoder>),
    /// VMDK monolithicSparse.
    VmdkSparse(Box<VmdkSparseDecoder>),
    /// Dynamic VHD.
    Vhd(Box<VhdDynamicDecoder>),
    /// VDI, dynamic or static.
    Vdi(Box<VdiDecoder>),
    /// gzip around another decoder.
    Gzip(Box<GzipDecoder>),
}

/// State of a decoder that has not seen enough bytes to choose a format.
pub struct Sniffer {
    /// At most [`PROBE_LEN`] bytes.
    head: Vec<u8>,
    known_size: Option<u64>,
    spool: Option<Box<dyn Spool + Send>>,
    /// Cap for inflated output when gzip is recognised; `None` inside a
    /// gzip stream, where gzip again is refused.
    gzip_cap: Option<u64>,
}

impl std::fmt::Debug for Sniffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sniffer")
            .field("head", &self.head)
            .field("known_size", &self.known_size)
            .field("spool", &self.spool.is_some())
            .field("gzip_cap", &self.gzip_cap)
            .finish()
    }
}

impl Decoder {
    /// A decoder that picks the format from the content, refusing gzip
    /// (what a gzip decoder's inflated bytes are fed to).
    /// `entry_size` is the size of the (uncompressed) entry when known.
    pub fn sniffing(entry_size: Option<u64>) -> Decoder {
        Decoder::Sniffing(Box::new(Sniffer {
            head: Vec::with_capacity(PROBE_LEN),
            known_size: entry_size,
            spool: None,
            gzip_cap: None,
        }))
    }

    /// Like [`Decoder::sniffing`], but also recognises gzip and inflates
    /// it, capped at `gzip_cap` bytes: for whole entries, compressed or not
    /// whatever the OVF says.
    pub fn sniffing_any(entry_size: Option<u64>, gzip_cap: u64) -> Decoder {
        let mut d = Decoder::sniffing(entry_size);
        if let Decoder::Sniffing(s) = &mut d {
            s.gzip_cap = Some(gzip_cap);
        }
        d
    }

    /// Whether the entry turned out to be gzip-compressed.
    pub fn is_gzip(&self) -> bool {
        matches!(self, Decoder::Gzip(_))
    }

    /// Gives a qcow2 decoder, if one is chosen, somewhere to spool bytes
    /// that arrive before the tables that describe them.
    pub fn with_spool(mut self, spool: Box<dyn Spool + Send>) -> Decoder {
        match &mut self {
            Decoder::Sniffing(s) => s.spool = Some(spool),
            Decoder::Gzip(g) => {
                if let Decoder::Sniffing(s) = g.inner_mut() {
                    s.spool = Some(spool);
                }
            }
            _ => {}
        }
        self
    }

    /// A gzip decoder whose inflated content is sniffed, capped at `cap` bytes.
    pub fn gzip(cap: u64) -> Decoder {
        Decoder::Gzip(Box::new(GzipDecoder::new(Decoder::sniffing(None), cap)))
    }

    /// The format of the disk inside any compression, once known.
    pub fn format(&self) -> Option<SourceFormat> {
        match self {
            Decoder::Sniffing(_) => None,
            Decoder::Raw(d) if d.is_fixed_vhd() => Some(SourceFormat::Vhd),
            Decoder::Raw(_) => Some(SourceFormat::Raw),
            Decoder::Qcow2(_) => Some(SourceFormat::Qcow2),
            Decoder::Vmdk(_) => Some(SourceFormat::Vmdk),
            Decoder::VmdkSparse(_) => Some(SourceFormat::VmdkSparse),
            Decoder::Vhd(_) => Some(SourceFormat::Vhd),
            Decoder::Vdi(_) => Some(SourceFormat::Vdi),
            Decoder::Gzip(g) => g.inner().format(),
        }
    }

    /// The decoder for an entry whose first bytes are `head` (all of them
    /// when the entry is shorter than [`PROBE_LEN`]).
    fn choose(head: &[u8], s: &mut Sniffer) -> Result<Decoder> {
        let format = probe(head);
        if format == Format::Gzip {
            let Some(cap) = s.gzip_cap else {
                return Err(refuse(ProbeError::NestedGzip));
            };
            let mut inner = Decoder::sniffing(None);
            if let (Decoder::Sniffing(i), Some(spool)) = (&mut inner, s.spool.take()) {
                i.spool = Some(spool);
            }
            return Ok(Decoder::Gzip(Box::new(GzipDecoder::new(inner, cap))));
        }
        let Some(source) = format.source() else {
            return Err(refuse(ProbeError::Unsupported(format)));
        };
        Ok(match source {
            SourceFormat::Raw => Decoder::Raw(Box::new(match s.known_size {
                Some(n) => RawDecoder::with_size_hint(n),
                None => RawDecoder::new(),
            })),
            SourceFormat::Vmdk => Decoder::Vmdk(Box::default()),
            SourceFormat::VmdkSparse => {
                let mut d = VmdkSparseDecoder::new();
                if let Some(n) = s.known_size {
                    d = d.with_entry_size(n);
                }
                Decoder::VmdkSparse(Box::new(d))
            }
            SourceFormat::Vhd => Decoder::Vhd(Box::new(match s.known_size {
                Some(n) => VhdDynamicDecoder::new().with_entry_size(n),
                None => VhdDynamicDecoder::new(),
            })),
            SourceFormat::Vdi => Decoder::Vdi(Box::new(match s.known_size {
                Some(n) => VdiDecoder::new().with_entry_size(n),
                None => VdiDecoder::new(),
            })),
            SourceFormat::Qcow2 => {
                let mut d = Qcow2StreamDecoder::new(s.spool.take());
                if let Some(n) = s.known_size {
                    d = d.with_entry_size(n);
                }
                Decoder::Qcow2(Box::new(d))
            }
        })
    }

    /// Leaves the sniffing state once the head is complete (`PROBE_LEN`
    /// bytes, or the whole entry at its end), then feeds the held bytes to
    /// the chosen decoder. A refusal keeps the head, so it repeats.
    fn decide(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        let Decoder::Sniffing(s) = self else {
            return Ok(());
        };
        let head = std::mem::take(&mut s.head);
        match Decoder::choose(&head, s) {
            Ok(d) => *self = d,
            Err(e) => {
                s.head = head;
                return Err(e);
            }
        }
        self.feed(&head, out)
    }

    fn as_decoder(&mut self) -> Option<&mut dyn DiskDecoder> {
        match self {
            Decoder::Sniffing(_) => None,
            Decoder::Raw(d) => Some(d.as_mut()),
            Decoder::Qcow2(d) => Some(d.as_mut()),
            Decoder::Vmdk(d) => Some(d.as_mut()),
            Decoder::VmdkSparse(d) => Some(d.as_mut()),
            Decoder::Vhd(d) => Some(d.as_mut()),
            Decoder::Vdi(d) => Some(d.as_mut()),
            Decoder::Gzip(d) => Some(d.as_mut()),
        }
    }

    /// An image that needs another file to be complete is refused: ovaio
    /// never opens files named inside an image.
    fn refuse_backing(&self) -> Result<()> {
        if let Decoder::Qcow2(d) = self
            && let Some(name) = d.backing_file()
        {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "qcow2 image has a backing file '{name}'; backing files inside a package are never opened"
                ),
            ));
        }
        Ok(())
    }
}

/// A refusal is about the entry's head, wherever the chunk that completed
/// the head started.
fn refuse(e: ProbeError) -> Error {
    Error::from(e)
}

impl DiskDecoder for Decoder {
    fn feed(&mut self, input: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        if let Decoder::Sniffing(s) = self {
            let take = (PROBE_LEN - s.head.len()).min(input.len());
            s.head.extend_from_slice(&input[..take]);
            if s.head.len() < PROBE_LEN {
                return Ok(());
            }
            self.decide(out)?;
            return self.feed(&input[take..], out);
        }
        match self.as_decoder() {
            Some(d) => d.feed(input, out)?,
            None => return Ok(()),
        }
        self.refuse_backing()
    }

    fn finish(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        // An entry shorter than the probe: its head is all of it.
        self.decide(out)?;
        match self.as_decoder() {
            Some(d) => d.finish(out),
            None => Ok(()),
        }
    }

    fn capacity(&self) -> Option<u64> {
        match self {
            Decoder::Sniffing(_) => None,
            Decoder::Raw(d) => d.capacity(),
            Decoder::Qcow2(d) => d.capacity(),
            Decoder::Vmdk(d) => d.capacity(),
            Decoder::VmdkSparse(d) => d.capacity(),
            Decoder::Vhd(d) => d.capacity(),
            Decoder::Vdi(d) => d.capacity(),
            Decoder::Gzip(d) => d.capacity(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::codec::map::{AllocationMap, GuestReader, RangeKind};
    use crate::codec::qcow2::encoder::{Qcow2Encoder, Qcow2Layout};
    use crate::codec::test_support::MemSink;
    use crate::test_support::Rng;

    /// What feeding an entry produced: the result, the decoder chosen
    /// (with its compression) and the guest bytes written.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        result: std::result::Result<(), (ErrorKind, String)>,
        format: Option<SourceFormat>,
        gzip: bool,
        bytes: Vec<u8>,
    }

    /// Feeds `input` cut at `cuts` (ascending offsets) to a decoder that
    /// recognises gzip, as the import pipeline builds it.
    fn feed_cut(input: &[u8], cuts: &[usize]) -> Outcome {
        let mut d = Decoder::sniffing_any(Some(input.len() as u64), 1 << 30);
        let mut sink = MemSink::default();
        let mut start = 0;
        let mut result = Ok(());
        for &end in cuts.iter().chain([input.len()].iter()) {
            result = d.feed(&input[start..end], &mut sink);
            start = end;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = d.finish(&mut sink);
        }
        Outcome {
            result: result.map_err(|e| (e.kind(), e.one_line())),
            format: d.format(),
            gzip: d.is_gzip(),
            bytes: sink.bytes,
        }
    }

    /// The outcome of `input` fed whole, after checking that every split
    /// point around the probe, and byte-by-byte feeding of the head, give
    /// the same.
    fn same_for_every_split(input: &[u8]) -> Outcome {
        let whole = feed_cut(input, &[]);
        for at in 0..=input.len().min(PROBE_LEN + 8) {
            assert_eq!(feed_cut(input, &[at]), whole, "split at {at}");
        }
        let bytewise: Vec<usize> = (1..input.len().min(PROBE_LEN + 8)).collect();
        assert_eq!(feed_cut(input, &bytewise), whole, "byte by byte");
        let mut rng = Rng(input.len() as u64);
        let mut cuts = Vec::new();
        let mut at = 0;
        while at < input.len() {
            at += 1 + rng.below(700) as usize;
            cuts.push(at.min(input.len()));
        }
        assert_eq!(feed_cut(input, &cuts), whole, "random cuts {cuts:?}");
        whole
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    struct Flat(Vec<u8>);

    impl GuestReader for Flat {
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
            let at = offset as usize;
            buf.copy_from_slice(&self.0[at..at + buf.len()]);
            Ok(())
        }
    }

    /// A qcow2 image of `guest` with 512-byte clusters, written by the
    /// stream encoder.
    fn qcow2_of(guest: &[u8]) -> Vec<u8> {
        let mut map = AllocationMap::new(guest.len() as u64);
        map.push(0, guest.len() as u64, RangeKind::Data).unwrap();
        let layout = Qcow2Layout::with_cluster_bits(&map, 9).unwrap();
        let mut out = Vec::new();
        Qcow2Encoder::new(layout, Flat(guest.to_vec()))
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// A streamOptimized VMDK of one 4 KiB grain, the way qemu-img ends it
    /// (no GT/GD/footer markers).
    fn vmdk_of(grain: &[u8; 4096]) -> Vec<u8> {
        let mut h = b"KDMV".to_vec();
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&0x0003_0001u32.to_le_bytes());
        h.extend_from_slice(&8u64.to_le_bytes()); // capacity (sectors)
        h.extend_from_slice(&8u64.to_le_bytes()); // grain (sectors)
        h.extend_from_slice(&1u64.to_le_bytes()); // descriptor offset
        h.extend_from_slice(&1u64.to_le_bytes()); // descriptor size
        h.extend_from_slice(&512u32.to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes()); // rgd
        h.extend_from_slice(&u64::MAX.to_le_bytes()); // gd at end
        h.extend_from_slice(&2u64.to_le_bytes()); // overhead (sectors)
        h.push(0);
        h.extend_from_slice(b"\n \r\n");
        h.extend_from_slice(&1u16.to_le_bytes());
        h.resize(512, 0);
        h.extend_from_slice(b"# Disk DescriptorFile\nversion=1\n");
        h.resize(1024, 0);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(grain).unwrap();
        let z = z.finish().unwrap();
        let header = h[..512].to_vec();
        h.extend_from_slice(&0u64.to_le_bytes());
        h.extend_from_slice(&(z.len() as u32).to_le_bytes());
        h.extend_from_slice(&z);
        h.resize(h.len().div_ceil(512) * 512, 0);
        // VMware's tail: the grain table mapping the grain (its marker is
        // at sector 2), the directory, the footer, end of stream.
        let meta = |h: &mut Vec<u8>, kind: u32, payload: &[u8]| {
            let sectors = payload.len().div_ceil(512) as u64;
            h.extend_from_slice(&sectors.to_le_bytes());
            h.extend_from_slice(&0u32.to_le_bytes());
            h.extend_from_slice(&kind.to_le_bytes());
            h.resize(h.len().div_ceil(512) * 512, 0);
            h.extend_from_slice(payload);
            h.resize(h.len().div_ceil(512) * 512, 0);
        };
        let mut gt = vec![0u8; 512 * 4];
        gt[..4].copy_from_slice(&2u32.to_le_bytes());
        let gt_sector = h.len() as u32 / 512 + 1;
        meta(&mut h, 1, &gt);
        let gd_sector = h.len() as u64 / 512 + 1;
        meta(&mut h, 2, &gt_sector.to_le_bytes());
        let mut footer = header;
        footer[56..64].copy_from_slice(&gd_sector.to_le_bytes());
        meta(&mut h, 3, &footer);
        meta(&mut h, 0, &[]);
        h
    }

    /// A monolithicSparse VMDK of one 4 KiB grain: header, a one-sector
    /// descriptor, the grain directory, its table, then the grain.
    fn sparse_of(grain: &[u8; 4096]) -> Vec<u8> {
        let mut h = b"KDMV".to_vec();
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&3u32.to_le_bytes()); // newline test, redundant GD
        h.extend_from_slice(&8u64.to_le_bytes()); // capacity (sectors)
        h.extend_from_slice(&8u64.to_le_bytes()); // grain (sectors)
        h.extend_from_slice(&1u64.to_le_bytes()); // descriptor offset
        h.extend_from_slice(&1u64.to_le_bytes()); // descriptor size
        h.extend_from_slice(&512u32.to_le_bytes());
        h.extend_from_slice(&2u64.to_le_bytes()); // rgd
        h.extend_from_slice(&7u64.to_le_bytes()); // gd
        h.extend_from_slice(&16u64.to_le_bytes()); // overhead (sectors)
        h.push(0);
        h.extend_from_slice(b"\n \r\n");
        h.extend_from_slice(&0u16.to_le_bytes());
        h.resize(512, 0);
        h.extend_from_slice(b"# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n");
        h.resize(1024, 0);
        // Redundant directory (sector 2) and table (3..7), then the
        // directory (7) and its table (8..12); the grain at 16.
        for (gd, gt) in [(2u32, 3u32), (7, 8)] {
            h.resize(gd as usize * 512, 0);
            h.extend_from_slice(&gt.to_le_bytes());
            h.resize(gt as usize * 512, 0);
            h.extend_from_slice(&16u32.to_le_bytes());
        }
        h.resize(16 * 512, 0);
        h.extend_from_slice(grain);
        h
    }

    fn guest(n: usize) -> Vec<u8> {
        let mut rng = Rng(7);
        let mut g = rng.bytes(n);
        // A first sector that probes as raw whatever the generator gives.
        g[..4].copy_from_slice(b"\xeb\x63\x90\x00");
        g
    }

    fn refused(input: &[u8], want: ProbeError) {
        let o = same_for_every_split(input);
        let (kind, line) = o.result.expect_err("refused");
        assert_eq!(kind, ErrorKind::Unsupported);
        let expected = if o.gzip {
            refuse(want).inside("inflated data")
        } else {
            refuse(want)
        };
        assert_eq!(line, expected.one_line());
        assert!(line.ends_with(&want.to_string()), "{line}");
        assert!(o.bytes.is_empty(), "nothing reaches the sink");
    }

    #[test]
    fn decodable_formats_in_every_split() {
        let g = guest(3072);
        let raw = same_for_every_split(&g);
        assert_eq!(raw.result, Ok(()));
        assert_eq!((raw.format, raw.gzip), (Some(SourceFormat::Raw), false));
        assert_eq!(raw.bytes, g);

        let q = same_for_every_split(&qcow2_of(&g));
        assert_eq!(q.result, Ok(()));
        assert_eq!((q.format, q.gzip), (Some(SourceFormat::Qcow2), false));
        assert_eq!(q.bytes, g);

        let grain: [u8; 4096] = std::array::from_fn(|i| (i % 251) as u8);
        let v = same_for_every_split(&vmdk_of(&grain));
        assert_eq!(v.result, Ok(()));
        assert_eq!((v.format, v.gzip), (Some(SourceFormat::Vmdk), false));
        assert_eq!(v.bytes, grain);

        let sp = same_for_every_split(&sparse_of(&grain));
        assert_eq!(sp.result, Ok(()));
        assert_eq!(
            (sp.format, sp.gzip),
            (Some(SourceFormat::VmdkSparse), false)
        );
        assert_eq!(sp.bytes, grain);

        let zsp = same_for_every_split(&gz(&sparse_of(&grain)));
        assert_eq!(zsp.result, Ok(()));
        assert_eq!(
            (zsp.format, zsp.gzip),
            (Some(SourceFormat::VmdkSparse), true)
        );
        assert_eq!(zsp.bytes, grain);

        let zq = same_for_every_split(&gz(&qcow2_of(&g)));
        assert_eq!(zq.result, Ok(()));
        assert_eq!((zq.format, zq.gzip), (Some(SourceFormat::Qcow2), true));
        assert_eq!(zq.bytes, g);
    }

    #[test]
    fn foreign_formats_are_refused_in_every_split() {
        let with = |magic: &[u8]| {
            let mut v = magic.to_vec();
            v.extend_from_slice(&guest(2000));
            v
        };
        let mut vdi = guest(2000);
        vdi[0x40..0x44].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        for (input, format) in [
            (with(b"vhdxfile"), Format::Vhdx),
            (with(b"QED\0"), Format::Qed),
            (with(b"LUKS\xba\xbe\0\x01"), Format::Luks),
            (with(b"QFI\xfb\0\0\0\x01"), Format::Qcow1),
            (
                b"# Disk DescriptorFile\nversion=1\nRW 8 FLAT \"d-flat.vmdk\" 0\n".to_vec(),
                Format::VmdkDescriptor,
            ),
        ] {
            refused(&input, ProbeError::Unsupported(format));
            // Inside gzip the inflated content is probed the same way.
            refused(&gz(&input), ProbeError::Unsupported(format));
        }
        refused(&gz(&gz(&guest(2000))), ProbeError::NestedGzip);
        // VHD and VDI heads go to their decoders, which judge the rest.
        for (input, format) in [
            (with(b"conectix"), SourceFormat::Vhd),
            (vdi, SourceFormat::Vdi),
        ] {
            let o = same_for_every_split(&input);
            assert_eq!(o.format, Some(format));
            let (_, line) = o.result.expect_err("not a sound image");
            assert!(!line.contains("does not import"), "{line}");
        }
    }

    #[test]
    fn entries_shorter_than_the_probe() {
        // A tiny entry is raw unless its head matches something.
        for tiny in [&b""[..], b"x", b"hello, world", b"conecti"] {
            let o = same_for_every_split(tiny);
            assert_eq!(o.result, Ok(()), "{tiny:?}");
            assert_eq!(o.format, Some(SourceFormat::Raw));
            assert_eq!(o.bytes, tiny);
        }
        refused(b"vhdxfile", ProbeError::Unsupported(Format::Vhdx));
        refused(b"QED\0\0\0\0\0", ProbeError::Unsupported(Format::Qed));
        // Exactly the probe length: decided in `feed`, not in `finish`.
        let mut vhdx = b"vhdxfile".to_vec();
        vhdx.resize(PROBE_LEN, 0);
        refused(&vhdx, ProbeError::Unsupported(Format::Vhdx));
        // A truncated qcow2 goes to the qcow2 decoder, which says so.
        let o = same_for_every_split(b"QFI\xfb\0\0\0\x03");
        assert_eq!(o.format, Some(SourceFormat::Qcow2));
        assert!(o.result.is_err());
    }

    #[test]
    fn a_refusal_repeats() {
        let mut d = Decoder::sniffing_any(None, 1 << 20);
        let mut sink = MemSink::default();
        let mut vhdx = b"vhdxfile".to_vec();
        vhdx.resize(PROBE_LEN + 10, 0);
        let first = d.feed(&vhdx, &mut sink).unwrap_err().one_line();
        assert_eq!(d.feed(b"more", &mut sink).unwrap_err().one_line(), first);
        assert_eq!(d.finish(&mut sink).unwrap_err().one_line(), first);
    }
}
