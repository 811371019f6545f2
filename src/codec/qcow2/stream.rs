//! The one-pass qcow2 decoder: a no-I/O state machine fed the image bytes
//! in file order.
//!
//! It keeps a map of *needs*: host ranges whose role is known (the L1
//! table, each L2 table, runs of data clusters, compressed clusters) keyed
//! by the host offset where reading resumes. As the stream passes a need,
//! its bytes are parsed (tables) or emitted (data, passed through without
//! a copy). Bytes with no known role are written to the spool while some
//! table is still unread, since that table may map them; a need discovered
//! behind the stream position is served from the spool.

mod compressed;

use std::collections::BTreeMap;

use flate2::Decompress;
use zstd::stream::raw::Decoder as ZstdDecoder;

use super::Qcow2Error;
use super::header::{self, CompressionType, Header, L2Entry};
use super::spool::{RangeSet, Spool};
use crate::codec::{DiskDecoder, ExtentSink};
use crate::error::Result;
use crate::limits;

#[derive(Debug)]
enum Kind {
    /// The backing file name (recorded, never opened).
    Backing { buf: Vec<u8> },
    /// The needed part of the active L1 table.
    L1 { carry: Carry },
    /// One L2 table (the entries below the virtual size).
    L2 { l1_index: u64, carry: Carry },
    /// A run of uncompressed data clusters, contiguous in host and guest.
    Data { guest: u64 },
    /// One compressed cluster.
    Compressed { guest: u64, buf: Vec<u8> },
}

#[derive(Debug, Clone, Copy)]
enum Table {
    L1,
    L2(u64),
}

#[derive(Debug, Default, Clone, Copy)]
struct Carry {
    bytes: [u8; 8],
    len: usize,
}

#[derive(Debug)]
struct Need {
    /// Host offset of the first byte.
    start: u64,
    /// Host offset one past the last byte.
    end: u64,
    kind: Kind,
}

impl Need {
    fn what(&self) -> &'static str {
        match self.kind {
            Kind::Backing { .. } => "backing file name",
            Kind::L1 { .. } => "L1 table",
            Kind::L2 { .. } => "L2 table",
            Kind::Data { .. } => "data cluster",
            Kind::Compressed { .. } => "compressed cluster",
        }
    }
}

/// Header values the body needs, copied once parsed.
#[derive(Debug, Default, Clone, Copy)]
struct Geo {
    cs: u64,
    cb: u32,
    size: u64,
    l2_entries: u64,
    l1: u64,
    l1_end: u64,
    ctype: CompressionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Body,
    Done,
    Failed,
}

/// One-pass qcow2 decoder. Feed it the image bytes in file order; it emits
/// the guest data the image holds (never anything from a backing file).
///
/// * `capacity(size)` right after the header; extents are clipped to it.
/// * Standard clusters: `data`, passed through from the input slice, one
///   call per run of clusters contiguous in host and guest.
/// * Compressed clusters (raw deflate or zstd, per the header): inflated
///   into one cluster buffer; more output than a cluster is an error.
/// * Zero-flag entries: `zero`. Unallocated clusters: nothing.
///
/// Memory: one cluster of output buffer, the outstanding needs (bounded by
/// `limits::MAX_QCOW2_PENDING`), compressed bytes in flight (bounded by
/// `limits::MAX_QCOW2_COMPRESSED_BUFFERED`) and the spooled-range list.
pub struct Qcow2StreamDecoder {
    spool: Option<Box<dyn Spool + Send>>,
    spooled: RangeSet,
    entry_size: Option<u64>,
    state: State,
    head: Vec<u8>,
    header: Option<Header>,
    /// Geometry copied from the header.
    geo: Geo,
    /// Host offset of the next input byte.
    pos: u64,
    /// Needs not yet reached, keyed by (resume offset, sequence).
    pending: BTreeMap<(u64, u64), Need>,
    seq: u64,
    /// Needs the stream is inside of.
    active: Vec<Need>,
    /// Key of the last data run registered, to extend it.
    last_data: Option<(u64, u64)>,
    /// Tables (L1 and L2) registered but not completely read.
    tables_outstanding: u64,
    backing: Option<String>,
    /// Bytes held in compressed-cluster buffers.
    buffered: u64,
    /// Decompression output, one cluster.
    cluster_buf: Vec<u8>,
    /// Spool read-back buffer.
    readback: Vec<u8>,
    /// Zero extent being merged: (guest offset, length).
    zero_run: Option<(u64, u64)>,
    inflater: Option<Decompress>,
    zstd: Option<ZstdDecoder<'static>>,
}

impl std::fmt::Debug for Qcow2StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2StreamDecoder")
            .field("state", &self.state)
            .field("pos", &self.pos)
            .field("header", &self.header)
            .field("pending", &self.pending.len())
            .field("active", &self.active.len())
            .field("spool", &self.spool.is_some())
            .finish()
    }
}

impl Qcow2StreamDecoder {
    /// A decoder; `spool` receives bytes passed before their role is known.
    /// Without one, images whose tables follow the data they map fail with
    /// [`Qcow2Error::NeedsSpool`].
    pub fn new(spool: Option<Box<dyn Spool + Send>>) -> Self {
        Qcow2StreamDecoder {
            spool,
            spooled: RangeSet::default(),
            entry_size: None,
            state: State::Header,
            head: Vec::new(),
            header: None,
            geo: Geo::default(),
            pos: 0,
            pending: BTreeMap::new(),
            seq: 0,
            active: Vec::new(),
            last_data: None,
            tables_outstanding: 0,
            backing: None,
            buffered: 0,
            cluster_buf: Vec::new(),
            readback: Vec::new(),
            zero_run: None,
            inflater: None,
            zstd: None,
        }
    }

    /// Declares the entry's size: any table or cluster beyond it is an
    /// error as soon as it is mapped.
    pub fn with_entry_size(mut self, n: u64) -> Self {
        self.entry_size = Some(n);
        self
    }

    /// The backing file name, once the stream passed it. The decoder never
    /// opens it; an image with one is incomplete on its own.
    pub fn backing_file(&self) -> Option<&str> {
        self.backing.as_deref()
    }

    /// Whether the header names a backing file (known right after the
    /// header, before the name itself is read).
    pub fn has_backing_file(&self) -> bool {
        self.header.as_ref().is_some_and(Header::has_backing_file)
    }

    /// The decoded header, once read.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    fn feed_inner(&mut self, mut input: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        match self.state {
            State::Failed => return Err(Qcow2Error::Poisoned.into()),
            State::Done => return Ok(()),
            State::Header => {
                let used = self.feed_header(input, out)?;
                input = &input[used..];
            }
            State::Body => {}
        }
        if self.state == State::Body && !input.is_empty() {
            self.feed_body(input, out)?;
        }
        Ok(())
    }

    /// Collects the fixed header; returns how many input bytes it took.
    fn feed_header(&mut self, input: &[u8], out: &mut dyn ExtentSink) -> Result<usize> {
        let mut used = 0;
        loop {
            let want = match Header::required_len(&self.head)? {
                Some(n) => n as usize,
                None if self.head.len() < 8 => 8,
                None => header::V3_MIN_HEADER_LEN as usize,
            };
            if self.head.len() >= want {
                break;
            }
            let take = (want - self.head.len()).min(input.len() - used);
            if take == 0 {
                return Ok(used);
            }
            self.head.extend_from_slice(&input[used..used + take]);
            used += take;
        }
        let h = Header::parse(&self.head)?;
        self.pos = self.head.len() as u64;
        out.capacity(h.size)?;
        let cs = h.cluster_size();
        if h.has_backing_file() {
            let (o, e) = (
                h.backing_file_offset,
                h.backing_file_offset + u64::from(h.backing_file_size),
            );
            if e <= self.pos {
                self.backing =
                    Some(String::from_utf8_lossy(&self.head[o as usize..e as usize]).into_owned());
            }
        }
        let needed = h.l1_entries_needed();
        let l1 = h.l1_table_offset;
        let backing = h.has_backing_file().then_some((
            h.backing_file_offset,
            h.backing_file_offset + u64::from(h.backing_file_size),
        ));
        self.geo = Geo {
            cs,
            cb: h.cluster_bits,
            size: h.size,
            l2_entries: h.l2_entries(),
            l1: h.l1_table_offset,
            l1_end: h.l1_table_offset.saturating_add(u64::from(h.l1_size) * 8),
            ctype: h.compression_type,
        };
        self.header = Some(h);
        self.head = Vec::new();
        self.state = State::Body;
        if let Some((o, e)) = backing
            && o >= self.pos
        {
            self.register(o, e, Kind::Backing { buf: Vec::new() }, out)?;
        }
        if needed > 0 {
            let end = l1 + needed * 8;
            self.check_in_entry("L1 table", l1, end)?;
            self.tables_outstanding += 1;
            self.register(
                l1,
                end,
                Kind::L1 {
                    carry: Carry::default(),
                },
                out,
            )?;
        }
        Ok(used)
    }

    fn check_in_entry(&self, what: &'static str, offset: u64, end: u64) -> Result<()> {
        if let Some(n) = self.entry_size
            && end > n
        {
            return Err(Qcow2Error::OutsideEntry {
                what,
                offset,
                end,
                entry_size: n,
            }
            .into());
        }
        Ok(())
    }

    fn feed_body(&mut self, input: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        let mut i = 0usize;
        while i < input.len() {
            // Activate needs that start here.
            while let Some(entry) = self.pending.first_entry() {
                if entry.key().0 > self.pos {
                    break;
                }
                let need = entry.remove();
                self.active.push(need);
            }
            let mut b = self.pos + (input.len() - i) as u64;
            if let Some((&(k, _), _)) = self.pending.first_key_value() {
                b = b.min(k);
            }
            for n in &self.active {
                b = b.min(n.end);
            }
            let len = (b - self.pos) as usize;
            let seg = &input[i..i + len];
            let at = self.pos;
            self.pos = b;
            i += len;
            if self.active.is_empty() {
                self.unknown(at, seg)?;
                continue;
            }
            // Compressed clusters share sectors: bytes read for one may
            // start another that a table not yet read maps. Spool them too.
            if self.tables_outstanding > 0
                && self.spool.is_some()
                && self
                    .active
                    .iter()
                    .all(|n| matches!(n.kind, Kind::Compressed { .. } | Kind::Backing { .. }))
            {
                self.unknown(at, seg)?;
            }
            let mut active = std::mem::take(&mut self.active);
            let mut result = Ok(());
            for need in active.iter_mut() {
                result = self.consume(need, at, seg, out);
                if result.is_err() {
                    break;
                }
            }
            let pos = self.pos;
            active.retain(|n| n.end > pos);
            self.active = active;
            result?;
        }
        Ok(())
    }

    /// Bytes of no known role: spool them while a table is still unread.
    fn unknown(&mut self, at: u64, seg: &[u8]) -> Result<()> {
        if self.tables_outstanding == 0 || seg.is_empty() {
            return Ok(());
        }
        if let Some(spool) = self.spool.as_mut() {
            spool.write_at(at, seg)?;
            self.spooled.add(at, at + seg.len() as u64)?;
        }
        Ok(())
    }

    /// Registers a need for `[start, end)`; one behind the stream position
    /// is served from the spool right away.
    fn register(
        &mut self,
        start: u64,
        end: u64,
        kind: Kind,
        out: &mut dyn ExtentSink,
    ) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        if start >= self.pos {
            // Extend the previous data run when contiguous in host and guest.
            if let Kind::Data { guest } = kind
                && let Some(key) = self.last_data
                && let Some(prev) = self.pending.get_mut(&key)
                && let Kind::Data { guest: pg } = prev.kind
                && prev.end == start
                && pg + (prev.end - prev.start) == guest
            {
                prev.end = end;
                return Ok(());
            }
            self.insert_pending(start, Need { start, end, kind })?;
            return Ok(());
        }
        let mut need = Need { start, end, kind };
        let passed = end.min(self.pos);
        if !self.spooled.covers(start, passed) {
            let what = need.what();
            return Err(if self.spool.is_none() {
                Qcow2Error::NeedsSpool {
                    what,
                    offset: start,
                }
            } else {
                Qcow2Error::NotSpooled {
                    what,
                    offset: start,
                }
            }
            .into());
        }
        let mut buf = std::mem::take(&mut self.readback);
        let mut off = start;
        let mut result = Ok(());
        while off < passed {
            let n = (passed - off).min(limits::SPOOL_READBACK_CHUNK);
            buf.resize(n as usize, 0);
            let r = match self.spool.as_mut() {
                Some(spool) => spool.read_at(off, &mut buf),
                None => Ok(()),
            };
            result = r.and_then(|()| self.consume(&mut need, off, &buf, out));
            if result.is_err() {
                break;
            }
            off += n;
        }
        buf.clear();
        self.readback = buf;
        result?;
        if end > self.pos {
            let pos = self.pos;
            self.insert_pending(pos, need)?;
        }
        Ok(())
    }

    fn insert_pending(&mut self, key: u64, need: Need) -> Result<()> {
        if self.pending.len() >= limits::MAX_QCOW2_PENDING {
            return Err(Qcow2Error::Limit {
                offset: need.start,
                what: "outstanding qcow2 tables and clusters",
                value: self.pending.len() as u64 + 1,
                limit: limits::MAX_QCOW2_PENDING as u64,
            }
            .into());
        }
        let is_data = matches!(need.kind, Kind::Data { .. });
        let k = (key, self.seq);
        self.seq += 1;
        self.pending.insert(k, need);
        if is_data {
            self.last_data = Some(k);
        }
        Ok(())
    }

    /// Hands `bytes` (at host offset `at`, inside `need`) to the need; when
    /// they complete it, finishes it.
    fn consume(
        &mut self,
        need: &mut Need,
        at: u64,
        bytes: &[u8],
        out: &mut dyn ExtentSink,
    ) -> Result<()> {
        let complete = at + bytes.len() as u64 == need.end;
        let start = need.start;
        match &mut need.kind {
            Kind::Data { guest } => {
                out.data(*guest + (at - start), bytes)?;
            }
            Kind::Backing { buf } => {
                buf.extend_from_slice(bytes);
                if complete {
                    self.backing = Some(String::from_utf8_lossy(buf).into_owned());
                }
            }
            Kind::Compressed { guest, buf } => {
                let guest = *guest;
                self.buffered += bytes.len() as u64;
                if self.buffered > limits::MAX_QCOW2_COMPRESSED_BUFFERED {
                    return Err(Qcow2Error::Limit {
                        offset: at,
                        what: "buffered compressed clusters",
                        value: self.buffered,
                        limit: limits::MAX_QCOW2_COMPRESSED_BUFFERED,
                    }
                    .into());
                }
                buf.extend_from_slice(bytes);
                if complete {
                    let data = std::mem::take(buf);
                    self.buffered -= data.len() as u64;
                    self.emit_compressed(start, guest, &data, out)?;
                }
            }
            Kind::L1 { carry } => {
                self.table_bytes(carry, Table::L1, start, at, bytes, out)?;
                if complete {
                    self.tables_outstanding -= 1;
                }
            }
            Kind::L2 { l1_index, carry } => {
                self.table_bytes(carry, Table::L2(*l1_index), start, at, bytes, out)?;
                if complete {
                    self.tables_outstanding -= 1;
                    self.flush_zero(out)?;
                }
            }
        }
        Ok(())
    }

    /// Splits table bytes into big-endian u64 entries.
    fn table_bytes(
        &mut self,
        carry: &mut Carry,
        table: Table,
        start: u64,
        at: u64,
        mut bytes: &[u8],
        out: &mut dyn ExtentSink,
    ) -> Result<()> {
        let entry = |me: &mut Self, index: u64, raw: u64, out: &mut dyn ExtentSink| match table {
            Table::L1 => me.l1_entry(start, index, raw, out),
            Table::L2(l1_index) => me.l2_entry(start, l1_index, index, raw, out),
        };
        let mut off = at;
        while !bytes.is_empty() {
            if carry.len > 0 || bytes.len() < 8 {
                let take = (8 - carry.len).min(bytes.len());
                carry.bytes[carry.len..carry.len + take].copy_from_slice(&bytes[..take]);
                carry.len += take;
                bytes = &bytes[take..];
                off += take as u64;
                if carry.len == 8 {
                    carry.len = 0;
                    let index = (off - 8 - start) / 8;
                    entry(self, index, u64::from_be_bytes(carry.bytes), out)?;
                }
                continue;
            }
            let (e, rest) = bytes.split_at(8);
            let mut a = [0u8; 8];
            a.copy_from_slice(e);
            let index = (off - start) / 8;
            entry(self, index, u64::from_be_bytes(a), out)?;
            bytes = rest;
            off += 8;
        }
        Ok(())
    }

    /// Refuses host ranges that overlap the header cluster or the L1 table.
    fn check_host(&self, what: &'static str, entry_at: u64, host: u64, end: u64) -> Result<()> {
        let Geo { cs, l1, l1_end, .. } = self.geo;
        if host < cs {
            return Err(Qcow2Error::Corrupt {
                offset: entry_at,
                reason: format!("{what} at byte {host} overlaps the header cluster"),
            }
            .into());
        }
        if host < l1_end && end > l1 {
            return Err(Qcow2Error::Corrupt {
                offset: entry_at,
                reason: format!("{what} at byte {host} overlaps the L1 table at byte {l1}"),
            }
            .into());
        }
        self.check_in_entry(what, host, end)
    }

    fn l1_entry(
        &mut self,
        l1_start: u64,
        index: u64,
        raw: u64,
        out: &mut dyn ExtentSink,
    ) -> Result<()> {
        let Some(l2) = header::decode_l1_entry(raw) else {
            return Ok(());
        };
        let entry_at = l1_start + index * 8;
        let g = self.geo;
        let cs = g.cs;
        if l2 & (cs - 1) != 0 {
            return Err(Qcow2Error::Corrupt {
                offset: entry_at,
                reason: format!("L2 table offset {l2} is not aligned to the cluster size {cs}"),
            }
            .into());
        }
        let base = index * cs * g.l2_entries;
        let entries = g.size.saturating_sub(base).div_ceil(cs).min(g.l2_entries);
        let end = l2 + entries * 8;
        self.check_host("L2 table", entry_at, l2, end)?;
        self.tables_outstanding += 1;
        self.register(
            l2,
            end,
            Kind::L2 {
                l1_index: index,
                carry: Carry::default(),
            },
            out,
        )
    }

    fn l2_entry(
        &mut self,
        l2_start: u64,
        l1_index: u64,
        index: u64,
        raw: u64,
        out: &mut dyn ExtentSink,
    ) -> Result<()> {
        let entry_at = l2_start + index * 8;
        let Geo {
            cs,
            cb,
            size,
            l2_entries,
            ..
        } = self.geo;
        let guest = l1_index * cs * l2_entries + index * cs;
        if guest >= size {
            return Ok(());
        }
        let len = cs.min(size - guest);
        match header::decode_l2_entry(raw, cb) {
            L2Entry::Unallocated => Ok(()),
            L2Entry::Zero { .. } => {
                match &mut self.zero_run {
                    Some((g, l)) if *g + *l == guest => *l += len,
                    _ => {
                        self.flush_zero(out)?;
                        self.zero_run = Some((guest, len));
                    }
                }
                Ok(())
            }
            L2Entry::Standard { host } => {
                if host & (cs - 1) != 0 {
                    return Err(Qcow2Error::Corrupt {
                        offset: entry_at,
                        reason: format!(
                            "data cluster offset {host} for guest offset {guest} is not aligned to the cluster size {cs}"
                        ),
                    }
                    .into());
                }
                self.check_host("data cluster", entry_at, host, host + len)?;
                self.register(host, host + len, Kind::Data { guest }, out)
            }
            L2Entry::Compressed { host, len: clen } => {
                let mut end = host + clen;
                if let Some(n) = self.entry_size {
                    // The last compressed cluster may reserve sectors past
                    // the end of the file.
                    if host < n {
                        end = end.min(n);
                    }
                }
                self.check_host("compressed cluster", entry_at, host, end)?;
                self.register(
                    host,
                    end,
                    Kind::Compressed {
                        guest,
                        buf: Vec::new(),
                    },
                    out,
                )
            }
        }
    }

    fn flush_zero(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        if let Some((g, l)) = self.zero_run.take() {
            out.zero(g, l)?;
        }
        Ok(())
    }

    fn finish_inner(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        match self.state {
            State::Failed => return Err(Qcow2Error::Poisoned.into()),
            State::Done => return Ok(()),
            State::Header => {
                return Err(Qcow2Error::Truncated {
                    what: "qcow2 header",
                    offset: 0,
                    end: self.head.len() as u64,
                }
                .into());
            }
            State::Body => {}
        }
        let end = self.pos;
        let mut active = std::mem::take(&mut self.active);
        active.sort_by_key(|n| n.start);
        for need in active {
            match need.kind {
                // The last compressed cluster may reserve bytes past the end
                // of the file: decode what is there.
                Kind::Compressed { guest, buf } => {
                    self.buffered -= buf.len() as u64;
                    self.emit_compressed(need.start, guest, &buf, out)
                        .map_err(|_| Qcow2Error::MissingCluster {
                            offset: need.start,
                            guest,
                            end,
                        })?;
                }
                _ => return Err(unreached(&need, end).into()),
            }
        }
        if let Some((_, need)) = self.pending.pop_first() {
            return Err(unreached(&need, end).into());
        }
        self.flush_zero(out)?;
        self.state = State::Done;
        Ok(())
    }
}

fn unreached(need: &Need, end: u64) -> Qcow2Error {
    match need.kind {
        Kind::Data { guest } | Kind::Compressed { guest, .. } => Qcow2Error::MissingCluster {
            offset: need.start,
            guest,
            end,
        },
        _ => Qcow2Error::Truncated {
            what: need.what(),
            offset: need.start,
            end,
        },
    }
}

impl DiskDecoder for Qcow2StreamDecoder {
    fn feed(&mut self, input: &[u8], out: &mut dyn ExtentSink) -> Result<()> {
        let r = self.feed_inner(input, out);
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    fn finish(&mut self, out: &mut dyn ExtentSink) -> Result<()> {
        let r = self.finish_inner(out);
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    fn capacity(&self) -> Option<u64> {
        self.header.as_ref().map(|h| h.size)
    }
}
