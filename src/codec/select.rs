//! Picks the decoder for an entry: declared compression first, then the
//! content magic of the first bytes (`QFI\xfb` qcow2, `KDMV` VMDK,
//! otherwise raw).

use crate::codec::gzip::GzipDecoder;
use crate::codec::qcow2::{Qcow2StreamDecoder, Spool};
use crate::codec::raw::RawDecoder;
use crate::codec::vmdk::VmdkStreamDecoder;
use crate::codec::{DiskDecoder, ExtentSink, SourceFormat};
use crate::error::{Error, ErrorKind, Result};

/// Bytes needed to recognise a format by its magic.
const MAGIC_LEN: usize = 4;

/// Any disk decoder: a closed set, dispatched by `match`.
#[derive(Debug)]
pub enum Decoder {
    /// Waiting for the first bytes to pick a format.
    Sniffing(Box<Sniffer>),
    /// Raw bytes.
    Raw(RawDecoder),
    /// qcow2, one pass (spooling what arrives before its tables).
    Qcow2(Box<Qcow2StreamDecoder>),
    /// VMDK streamOptimized.
    Vmdk(Box<VmdkStreamDecoder>),
    /// gzip around another decoder.
    Gzip(Box<GzipDecoder>),
}

/// State of a decoder that has not seen enough bytes to choose a format.
pub struct Sniffer {
    head: Vec<u8>,
    known_size: Option<u64>,
    spool: Option<Box<dyn Spool + Send>>,
    /// Cap for inflated output when gzip magic is recognised; `None`
    /// when gzip must not be guessed (the OVF said the entry is plain).
    gzip_cap: Option<u64>,
}

impl std::fmt::Debug for Sniffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sniffer")
            .field("head", &self.head)
            .field("known_size", &self.known_size)
            .field("spool", &self.spool.is_some())
            .finish()
    }
}

impl Decoder {
    /// A decoder that picks the format from the content.
    /// `entry_size` is the size of the (uncompressed) entry when known.
    pub fn sniffing(entry_size: Option<u64>) -> Decoder {
        Decoder::Sniffing(Box::new(Sniffer {
            head: Vec::with_capacity(MAGIC_LEN),
            known_size: entry_size,
            spool: None,
            gzip_cap: None,
        }))
    }

    /// Like [`Decoder::sniffing`], but also recognises gzip (`1f 8b`) and
    /// inflates it, capped at `gzip_cap` bytes: for entries that arrive
    /// before the OVF says whether they are compressed.
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
            Decoder::Raw(_) => Some(SourceFormat::Raw),
            Decoder::Qcow2(_) => Some(SourceFormat::Qcow2),
            Decoder::Vmdk(_) => Some(SourceFormat::Vmdk),
            Decoder::Gzip(g) => g.inner().format(),
        }
    }

    fn choose(head: &[u8], s: &mut Sniffer) -> Decoder {
        if let Some(cap) = s.gzip_cap
            && head.starts_with(&[0x1f, 0x8b])
        {
            let mut inner = Decoder::sniffing(None);
            if let (Decoder::Sniffing(i), Some(spool)) = (&mut inner, s.spool.take()) {
                i.spool = Some(spool);
            }
            return Decoder::Gzip(Box::new(GzipDecoder::new(inner, cap)));
        }
        match SourceFormat::sniff(head) {
            SourceFormat::Raw => Decoder::Raw(match s.known_size {
                Some(n) => RawDecoder::with_size_hint(n),
                None => RawDecoder::new(),
            }),
            SourceFormat::Vmdk => Decoder::Vmdk(Box::default()),
            SourceFormat::Qcow2 => {
                let mut d = Qcow2StreamDecoder::new(s.spool.take());
                if let Some(n) = s.known_size {
                    d = d.with_entry_size(n);
                }
                Decoder::Qcow2(Box::new(d))
            }
        }
    }

    fn as_decoder(&mut self) -> Option<&mut dyn DiskDecoder> {
        match self {
            Decoder::Sniffing(_) => None,
            Decoder::Raw(d) => Some(d),
            Decoder::Qcow2(d) => Some(d.as_mut()),
            Decoder::Vmdk(d) => Some(d.as_mut()),
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

impl DiskDecoder for Decoder {
    fn feed(&mut self, input: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        if let Decoder::Sniffing(s) = self {
            let take = (MAGIC_LEN - s.head.len()).min(input.len());
            if s.head.len() + take < MAGIC_LEN {
                s.head.extend_from_slice(&input[..take]);
                return Ok(());
            }
            let mut head = std::mem::take(&mut s.head);
            head.extend_from_slice(&input[..take]);
            *self = Decoder::choose(&head, s);
            self.feed(&head, out)?;
            return self.feed(&input[take..], out);
        }
        match self.as_decoder() {
            Some(d) => d.feed(input, out)?,
            None => return Ok(()),
        }
        self.refuse_backing()
    }

    fn finish(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        if let Decoder::Sniffing(s) = self {
            // Shorter than any magic: a (tiny) raw disk.
            let head = std::mem::take(&mut s.head);
            *self = Decoder::Raw(match s.known_size {
                Some(n) => RawDecoder::with_size_hint(n),
                None => RawDecoder::new(),
            });
            self.feed(&head, out)?;
        }
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
            Decoder::Gzip(d) => d.capacity(),
        }
    }
}
