//! Entry digests computed beside the pipeline, on their own threads.
//!
//! A manifest may use SHA-1, SHA-256 or SHA-512, even a different one on
//! each line, and may come first, right after the OVF or last; nothing
//! before it tells which (OVF 2.x packages carry SHA-1 manifests too). So
//! what an entry gets depends only on what has passed before it:
//! * entries held in memory, namely the OVF descriptor, the manifest and
//!   entries of at most [`limits::MAX_DIGEST_HELD_ENTRY`] bytes (up to
//!   [`limits::MAX_DIGEST_HELD_TOTAL`] of them), are kept whole and hashed
//!   at the end, in the algorithm each manifest line naming them asks for;
//! * another entry before the manifest is hashed in every algorithm a line
//!   may ask for: SHA-1, SHA-256 and SHA-512;
//! * an entry a manifest before it lists, in exactly the algorithms listed
//!   for it; one no manifest so far lists is hashed in all three, since a
//!   package may carry a manifest per disk and a later one may list it.
//!
//! Entries are keyed by their names in the package ([`Layout`]: without
//! the package's top-level directory, if it has one), the names manifests
//! and hrefs use.
//!
//! Each algorithm has its own thread, so that the three cost the wall time
//! of the slowest rather than their sum, beside decoding and writing. The
//! threads are sent the same batches of package chunks (`Bytes`, shared,
//! never copied); each runs its own tar demux and applies the same rules
//! to the same headers, so they agree without talking to each other. The
//! channels are bounded ([`limits::DIGEST_QUEUE`] batches of
//! [`limits::DIGEST_BATCH`] bytes), so a slow algorithm slows the pipeline
//! instead of piling up memory.
//!
//! A package read from a regular file need not be guessed at: before the
//! import reads it, [`scan_manifests`] reads its tar headers, seeking over
//! the entries' contents, and keeps the text of every manifest. The tap
//! then starts [knowing](DigestTap::knowing) them: an entry is hashed in
//! the algorithms their lines name for it, wherever the manifests are,
//! and an entry no line names in none (a package without a manifest
//! costs no hashing at all). Should a manifest turn up that the scan did
//! not see (the file changed in between), its lines fail as not computed;
//! they never pass.
//!
//! A zip package has no tar stream: its members are sent one by one
//! ([`DigestTap::begin_member`]), uncompressed, and digested alike.
//!
//! [`check_manifest`] compares the manifest with what was computed, line
//! by line: import stops at the first line that does not verify, `inspect`
//! reports every line.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::error::{Error, ErrorKind};
use crate::limits;
use crate::names::printable;
use crate::ova::demux::{Demux, EntryType, Event};
use crate::ova::digest::MultiDigest;
use crate::ova::layout::Layout;
use crate::ova::manifest::{self, Algorithm, Manifest, ManifestEntry};
use crate::ova::role::{Role, RoleError, Roles};
use crate::source::SourceReader;

/// Digests per entry name, in [`Algorithm::ALL`] order.
pub type EntryDigests = HashMap<String, Vec<(Algorithm, Vec<u8>)>>;

/// What a digest thread is sent.
#[derive(Debug)]
enum Piece {
    /// Bytes of the tar stream: the thread finds the entries itself.
    Tar(Bytes),
    /// A zip member starts: its name, and its size when known.
    Begin(String, Option<u64>),
    /// Uncompressed bytes of the current zip member.
    Data(Bytes),
    /// The current zip member ended.
    End,
}

/// Pieces handed to every digest thread at once.
type Batch = Arc<Vec<Piece>>;

/// How one entry is digested.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Treatment {
    /// The first manifest: every thread reads it to learn what later
    /// entries need; it is held as well.
    Manifest,
    /// Kept whole and hashed at the end in what the manifest asks for.
    Held,
    /// Hashed while it streams, in these algorithms.
    Streamed(Vec<Algorithm>),
}

/// The algorithms the manifests so far ask for, per entry.
#[derive(Debug, Default)]
struct Wanted {
    by_name: HashMap<String, Vec<Algorithm>>,
}

impl Wanted {
    fn add(&mut self, m: &Manifest) {
        for line in &m.entries {
            let algs = self.by_name.entry(line.name.clone()).or_default();
            if !algs.contains(&line.algorithm) {
                algs.push(line.algorithm);
                algs.sort();
            }
        }
    }

    fn for_entry(&self, name: &str) -> &[Algorithm] {
        self.by_name.get(name).map_or(&[], Vec::as_slice)
    }
}

/// What the headers seen so far decide. Every digest thread keeps its own
/// copy and feeds it the same headers, so all threads decide alike.
#[derive(Debug, Default)]
struct Policy {
    /// The wishes of the manifests that have passed and parsed.
    wanted: Wanted,
    /// Which entries are the descriptor and the manifests, as the
    /// pipeline decides.
    roles: Roles,
    /// Bytes of small entries held so far.
    held: u64,
    /// `wanted` already holds every manifest of the package (read before
    /// the stream): an entry no line names needs no digest.
    complete: bool,
}

impl Policy {
    /// Decides how the regular entry `name` is digested. Names are matched
    /// as the import pipeline matches them: every `.mf` is a manifest (up
    /// to the limits the pipeline enforces), the first `.ovf` the
    /// descriptor.
    /// A zip member whose size only its data descriptor gives has `size`
    /// `None`: it can be the manifest or the OVF (capped while it streams),
    /// never another held entry.
    fn begin(&mut self, name: &str, size: Option<u64>) -> Treatment {
        // An entry that breaks its role's rules fails the import; here it
        // is digested like any other.
        match self.roles.classify(name, size) {
            Ok(Role::Manifest) => return Treatment::Manifest,
            Ok(Role::Descriptor) => return Treatment::Held,
            Ok(Role::Other) | Err(_) => {}
        }
        if let Some(size) = size
            && size <= limits::MAX_DIGEST_HELD_ENTRY
            && self.held + size <= limits::MAX_DIGEST_HELD_TOTAL
        {
            self.held += size;
            return Treatment::Held;
        }
        Treatment::Streamed(match self.wanted.for_entry(name) {
            [] if self.complete => Vec::new(),
            [] => Algorithm::ALL.to_vec(),
            listed => listed.to_vec(),
        })
    }

    /// A manifest ended. One that does not parse changes nothing: the
    /// pipeline reports it.
    fn manifest_passed(&mut self, text: &[u8]) {
        if let Ok(m) = manifest::parse(text) {
            self.wanted.add(&m);
        }
    }
}

/// Digest threads fed with the package stream.
#[derive(Debug)]
pub struct DigestTap {
    senders: Vec<SyncSender<Batch>>,
    threads: Vec<JoinHandle<EntryDigests>>,
    /// Pieces not yet handed on, and their length in bytes.
    pending: Vec<Piece>,
    pending_len: usize,
}

impl DigestTap {
    /// Starts one digest thread per algorithm.
    pub fn start() -> DigestTap {
        Self::spawn(&Algorithm::ALL, &[])
    }

    /// Starts the digest threads for a package whose manifests are all
    /// known before its stream (the texts [`scan_manifests`] found): only
    /// the algorithms their lines use get a thread, and each entry is
    /// hashed in the algorithms its lines name; none at all without a
    /// manifest. A text that does not parse is left to the pipeline to
    /// report.
    pub fn knowing(manifests: &[Vec<u8>]) -> DigestTap {
        let parsed: Vec<Manifest> = manifests
            .iter()
            .filter_map(|m| manifest::parse(m).ok())
            .collect();
        let algs: Vec<Algorithm> = Algorithm::ALL
            .into_iter()
            .filter(|a| {
                parsed
                    .iter()
                    .any(|m| m.entries.iter().any(|l| l.algorithm == *a))
            })
            .collect();
        if algs.is_empty() {
            return DigestTap::idle();
        }
        let mut wanted = Wanted::default();
        for m in &parsed {
            wanted.add(m);
        }
        Self::spawn(&algs, &wanted.by_name.into_iter().collect::<Vec<_>>())
    }

    /// One thread per algorithm of `algs`; with `known` wishes (entry name,
    /// algorithms) the policy starts complete.
    fn spawn(algs: &[Algorithm], known: &[(String, Vec<Algorithm>)]) -> DigestTap {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        let complete = !known.is_empty();
        for (i, alg) in algs.iter().copied().enumerate() {
            let (tx, rx) = sync_channel(limits::DIGEST_QUEUE);
            // One thread keeps the held entries; the SHA-1 thread, as the
            // fastest, has the most time to spare at the end.
            let keeper = i == 0;
            let mut policy = Policy {
                complete,
                ..Policy::default()
            };
            for (name, want) in known {
                policy.wanted.by_name.insert(name.clone(), want.clone());
            }
            let spawned = std::thread::Builder::new()
                .name(format!("digest {alg}"))
                .spawn(move || Follower::new(alg, keeper, policy).run(rx));
            match spawned {
                Ok(t) => {
                    senders.push(tx);
                    threads.push(t);
                }
                // Its lines then fail as not computed, never pass.
                Err(e) => {
                    tracing::warn!(algorithm = %alg, error = %e, "cannot start a digest thread")
                }
            }
        }
        DigestTap {
            senders,
            threads,
            pending: Vec::new(),
            pending_len: 0,
        }
    }

    /// A tap with no threads, for a pipeline that is done with its stream.
    pub fn idle() -> DigestTap {
        DigestTap {
            senders: Vec::new(),
            threads: Vec::new(),
            pending: Vec::new(),
            pending_len: 0,
        }
    }

    /// Hands the next chunk of the tar stream to every digest thread;
    /// waits when the slowest of them is [`limits::DIGEST_QUEUE`] batches
    /// behind.
    pub fn feed(&mut self, chunk: &Bytes) {
        if !chunk.is_empty() {
            self.push(Piece::Tar(chunk.clone()), chunk.len());
        }
    }

    /// A zip member starts, `size` bytes long when known: its bytes are
    /// digested as a tar entry's are.
    pub fn begin_member(&mut self, name: &str, size: Option<u64>) {
        self.push(Piece::Begin(name.to_owned(), size), 0);
    }

    /// Uncompressed bytes of the current zip member.
    pub fn member_data(&mut self, data: &Bytes) {
        if !data.is_empty() {
            self.push(Piece::Data(data.clone()), data.len());
        }
    }

    /// The current zip member ended.
    pub fn end_member(&mut self) {
        self.push(Piece::End, 0);
    }

    fn push(&mut self, piece: Piece, len: usize) {
        if self.senders.is_empty() {
            return;
        }
        self.pending.push(piece);
        self.pending_len += len;
        if self.pending_len >= limits::DIGEST_BATCH {
            self.send();
        }
    }

    fn send(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch: Batch = Arc::new(std::mem::take(&mut self.pending));
        self.pending_len = 0;
        for s in &self.senders {
            // A thread that stopped (its demux failed) has dropped its
            // receiver; the pipeline's own demux reports the error.
            let _ = s.send(batch.clone());
        }
    }

    /// Ends the stream and collects every entry's digests.
    pub fn finish(mut self) -> EntryDigests {
        self.send();
        drop(self.senders);
        let mut all = EntryDigests::new();
        for t in self.threads {
            if let Ok(map) = t.join() {
                for (name, mut ds) in map {
                    all.entry(name).or_default().append(&mut ds);
                }
            }
        }
        for ds in all.values_mut() {
            ds.sort_by_key(|(a, _)| *a);
        }
        all
    }
}

/// The entry a digest thread is in.
#[derive(Debug)]
struct Entry {
    name: String,
    hash: Option<MultiDigest>,
    /// The content, when this thread keeps it.
    kept: Option<Vec<u8>>,
    /// Most bytes kept.
    limit: u64,
    manifest: bool,
}

/// One digest thread: its own demux, layout and policy, one algorithm.
#[derive(Debug)]
struct Follower {
    alg: Algorithm,
    /// Whether this thread keeps the held entries (exactly one does).
    keeper: bool,
    demux: Demux,
    layout: Layout,
    policy: Policy,
    current: Option<Entry>,
    held: Vec<(String, Vec<u8>)>,
    out: EntryDigests,
}

impl Follower {
    fn new(alg: Algorithm, keeper: bool, policy: Policy) -> Follower {
        Follower {
            alg,
            keeper,
            demux: Demux::new(),
            layout: Layout::new(),
            policy,
            current: None,
            held: Vec::new(),
            out: EntryDigests::new(),
        }
    }

    fn run(mut self, rx: Receiver<Batch>) -> EntryDigests {
        let mut tar = false;
        while let Ok(batch) = rx.recv() {
            for piece in batch.iter() {
                match piece {
                    Piece::Tar(chunk) => {
                        tar = true;
                        if !self.step(chunk) {
                            return self.out;
                        }
                    }
                    Piece::Begin(name, size) => self.begin(name, *size),
                    Piece::Data(d) => self.data(d),
                    Piece::End => self.end(),
                }
            }
        }
        if tar {
            // End of stream: a package without end blocks leaves its last
            // End pending.
            self.step(&[]);
        }
        self.hash_held();
        self.out
    }

    /// Runs the demux over one chunk; false once the tar stream is broken
    /// (the pipeline's own demux reports it).
    fn step(&mut self, chunk: &[u8]) -> bool {
        let mut rest = chunk;
        loop {
            let Ok((n, ev)) = self.demux.step(rest) else {
                return false;
            };
            rest = &rest[n..];
            match ev {
                None => return true,
                Some(Event::Begin(h)) => {
                    // An entry the layout refuses fails the import there.
                    let Ok(name) = self.layout.place(&h.name, h.entry_type) else {
                        return false;
                    };
                    if let (Some(name), EntryType::Regular) = (name, h.entry_type) {
                        self.begin(&name, Some(h.size));
                    }
                }
                Some(Event::Data(d)) => self.data(d),
                Some(Event::End) => self.end(),
                Some(Event::Eof) => {}
            }
        }
    }

    fn begin(&mut self, name: &str, size: Option<u64>) {
        let treatment = self.policy.begin(name, size);
        // Sizes are capped by the policy's limits before anything is reserved.
        let keep = || {
            Some(Vec::with_capacity(
                size.map_or(0, |s| usize::try_from(s).unwrap_or(0)),
            ))
        };
        let (hash, kept) = match &treatment {
            Treatment::Manifest => (None, keep()),
            Treatment::Held if self.keeper => (None, keep()),
            Treatment::Held => (None, None),
            Treatment::Streamed(algs) if algs.contains(&self.alg) => {
                (Some(MultiDigest::new(&[self.alg])), None)
            }
            Treatment::Streamed(_) => (None, None),
        };
        let manifest = treatment == Treatment::Manifest;
        let limit = if manifest {
            limits::MAX_MANIFEST_SIZE
        } else if kept.is_some() && size.is_none() {
            limits::MAX_OVF_SIZE
        } else {
            u64::MAX
        };
        self.current = Some(Entry {
            name: name.to_owned(),
            hash,
            kept,
            limit,
            manifest,
        });
    }

    fn data(&mut self, d: &[u8]) {
        let Some(e) = self.current.as_mut() else {
            return;
        };
        if let Some(h) = &mut e.hash {
            h.update(d);
        }
        if let Some(k) = &mut e.kept {
            // Only a zip member of unknown size can outgrow its cap: it is
            // then neither read nor hashed, and the pipeline refuses it.
            if (k.len() + d.len()) as u64 > e.limit {
                e.kept = None;
            } else {
                k.extend_from_slice(d);
            }
        }
    }

    fn end(&mut self) {
        let Some(e) = self.current.take() else {
            return;
        };
        if let Some(h) = e.hash {
            self.out.insert(e.name.clone(), h.finish());
        }
        if let Some(k) = e.kept {
            if e.manifest {
                self.policy.manifest_passed(&k);
            }
            if self.keeper {
                self.held.push((e.name, k));
            }
        }
    }

    /// Hashes each held entry in the algorithms the manifest's lines for
    /// it name.
    fn hash_held(&mut self) {
        for (name, content) in self.held.drain(..) {
            let algs = self.policy.wanted.for_entry(&name);
            if algs.is_empty() {
                continue;
            }
            let mut d = MultiDigest::new(algs);
            d.update(&content);
            self.out.insert(name, d.finish());
        }
    }
}

/// Reads the tar headers of the package `reader` holds, seeking over
/// every entry's content but a manifest's, and returns the text of each
/// manifest (every regular entry named `*.mf`, as the import pipeline
/// names them). `None` when the source cannot seek, when it is not a
/// plain tar archive (compressed, zip, broken: the import reports it),
/// or when a manifest is over the limits the pipeline enforces. Leaves
/// the source anywhere: the caller rewinds it.
pub fn scan_manifests(reader: &mut dyn SourceReader) -> Option<Vec<Vec<u8>>> {
    if !reader.can_skip() {
        return None;
    }
    let mut demux = Demux::new();
    let mut layout = Layout::new();
    let mut found = Vec::new();
    let mut roles = Roles::new();
    let mut collecting: Option<Vec<u8>> = None;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let remaining = demux.content_remaining().filter(|&n| n > 0);
        if collecting.is_none()
            && let Some(n) = remaining
            && reader.skip(n).ok()?
        {
            demux.skip_content(n);
        }
        // A header block at a time, or the rest of a manifest.
        let want = match (&collecting, demux.content_remaining()) {
            (Some(_), Some(n)) if n > 0 => {
                usize::try_from(n).map_or(buf.len(), |n| n.min(buf.len()))
            }
            _ => 512,
        };
        let n = loop {
            match reader.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        };
        if n == 0 {
            break;
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let (used, ev) = demux.step(rest).ok()?;
            rest = &rest[used..];
            match ev {
                Some(Event::Begin(h)) => {
                    let name = layout.place(&h.name, h.entry_type).ok()?;
                    if let (Some(name), EntryType::Regular) = (name, h.entry_type) {
                        match roles.classify(&name, Some(h.size)) {
                            Ok(Role::Manifest) => {
                                collecting = Some(Vec::with_capacity(h.size as usize));
                            }
                            Err(
                                RoleError::ManifestTooLarge { .. } | RoleError::ManifestsTooLarge,
                            ) => {
                                return None;
                            }
                            _ => {}
                        }
                    }
                }
                Some(Event::Data(d)) => {
                    if let Some(c) = &mut collecting {
                        c.extend_from_slice(d);
                    }
                }
                Some(Event::End) => found.extend(collecting.take()),
                Some(Event::Eof) => return Some(found),
                None => {}
            }
        }
    }
    // Without end blocks: the last entry may still end here.
    if let Ok((_, Some(Event::End))) = demux.step(&[]) {
        found.extend(collecting.take());
    }
    demux.finish().ok()?;
    Some(found)
}

/// What the package says about one manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineCheck {
    /// The entry's content has the digest the line gives.
    Verified,
    /// The entry's content has another digest: this one.
    Mismatch(Vec<u8>),
    /// The package has no regular entry of this name.
    NoSuchEntry,
    /// The line's algorithm was not computed for the entry. The digest
    /// threads compute every algorithm a line can ask for, so this means
    /// one of them could not run.
    NotComputed,
}

impl LineCheck {
    /// Whether the line proves the package differs from its manifest (as
    /// opposed to a line verified, or one that could not be checked).
    pub fn is_failure(&self) -> bool {
        matches!(self, LineCheck::Mismatch(_) | LineCheck::NoSuchEntry)
    }

    /// The error that stops an import at this line of the manifest entry
    /// `manifest`; `None` for a verified line. A mismatch or a missing
    /// entry is an integrity error; a line that was not computed is
    /// unverifiable, which import refuses rather than pass silently. The
    /// manifest is named, since a package may carry several.
    pub fn error(&self, line: &ManifestEntry, manifest: &str) -> Option<Error> {
        let mf = printable(manifest);
        match self {
            LineCheck::Verified => None,
            LineCheck::Mismatch(got) => Some(
                Error::new(
                    ErrorKind::Integrity,
                    format!(
                        "{} digest mismatch: manifest '{mf}' says {}, content is {}",
                        line.algorithm,
                        hex::encode(&line.digest),
                        hex::encode(got)
                    ),
                )
                .in_entry(&line.name),
            ),
            LineCheck::NoSuchEntry => Some(
                Error::new(
                    ErrorKind::Integrity,
                    format!(
                        "the manifest lists '{}' but the package has no such entry",
                        printable(&line.name)
                    ),
                )
                .in_entry(manifest),
            ),
            LineCheck::NotComputed => Some(
                Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "cannot verify: manifest '{mf}' uses {} for this entry, which was not computed",
                        line.algorithm
                    ),
                )
                .in_entry(&line.name),
            ),
        }
    }
}

/// Checks every line of `manifest`, in its order, against the digests
/// computed while the package streamed: `computed(name)` gives an entry's
/// digests, or `None` when the package has no regular entry of that name.
pub fn check_manifest<'a, 'm>(
    manifest: &'m Manifest,
    computed: impl Fn(&str) -> Option<&'a [(Algorithm, Vec<u8>)]>,
) -> Vec<(&'m ManifestEntry, LineCheck)> {
    manifest
        .entries
        .iter()
        .map(|line| {
            let check = match computed(&line.name) {
                None => LineCheck::NoSuchEntry,
                Some(digests) => match digests.iter().find(|(a, _)| *a == line.algorithm) {
                    None => LineCheck::NotComputed,
                    Some((_, got)) if *got == line.digest => LineCheck::Verified,
                    Some((_, got)) => LineCheck::Mismatch(got.clone()),
                },
            };
            (line, check)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_entry(name: &str, data: &[u8]) -> Vec<u8> {
        let mut w = Vec::new();
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        w.extend_from_slice(&h);
        w.extend_from_slice(data);
        w.resize(w.len().div_ceil(512) * 512, 0);
        w
    }

    /// A tar archive of `entries`, with its end blocks.
    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = Vec::new();
        for (name, data) in entries {
            tar.extend(tar_entry(name, data));
        }
        tar.extend([0u8; 1024]);
        tar
    }

    fn feed_pieces<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> EntryDigests {
        let mut tap = DigestTap::start();
        for p in pieces {
            tap.feed(&Bytes::copy_from_slice(p));
        }
        tap.finish()
    }

    fn digests_of(tar: &[u8], piece: usize) -> EntryDigests {
        feed_pieces(tar.chunks(piece))
    }

    /// `tar` cut at pseudo-random points (xorshift from `seed`), pieces of
    /// 1 byte up to a little more than a digest batch.
    fn random_pieces(tar: &[u8], seed: u64) -> Vec<&[u8]> {
        let mut state = seed | 1;
        let mut pieces = Vec::new();
        let mut rest = tar;
        while !rest.is_empty() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let max = match state % 4 {
                0 => 16,
                1 => 4096,
                2 => 300_000,
                _ => limits::DIGEST_BATCH + 1000,
            };
            let n = ((state >> 8) as usize % max + 1).min(rest.len());
            pieces.push(&rest[..n]);
            rest = &rest[n..];
        }
        pieces
    }

    fn algs(d: &EntryDigests, name: &str) -> Vec<Algorithm> {
        d.get(name)
            .map(|ds| ds.iter().map(|(a, _)| *a).collect())
            .unwrap_or_default()
    }

    fn line(alg: Algorithm, name: &str, data: &[u8]) -> String {
        manifest::format_line(alg, name, &crate::ova::digest::digest(alg, data))
    }

    /// Every line of `mf` checked against `d`.
    fn verdicts(mf: &str, d: &EntryDigests) -> Vec<(String, LineCheck)> {
        let m = manifest::parse(mf.as_bytes()).expect("test manifest parses");
        check_manifest(&m, |n| d.get(n).map(Vec::as_slice))
            .into_iter()
            .map(|(l, c)| (l.name.clone(), c))
            .collect()
    }

    fn assert_all_verified(mf: &str, d: &EntryDigests, what: &str) {
        for (name, check) in verdicts(mf, d) {
            assert_eq!(check, LineCheck::Verified, "{what}: line for {name}");
        }
    }

    const OVF1: &[u8] = br#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>"#;
    const OVF2: &[u8] = br#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/2"/>"#;

    /// Content larger than an entry that is held, so it is streamed.
    fn big(seed: u8) -> Vec<u8> {
        let len = limits::MAX_DIGEST_HELD_ENTRY as usize * 2 + 777;
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Place {
        First,
        AfterOvf,
        Last,
    }

    /// vm.ovf, disk1.img, nvram.dat (small), disk2.img and vm.mf, the
    /// manifest placed as asked; its lines use `line_alg` for each entry.
    fn package(
        ovf: &[u8],
        place: Place,
        line_alg: impl Fn(&str) -> Algorithm,
    ) -> (Vec<u8>, String) {
        let (d1, d2, nv) = (big(1), big(2), vec![7u8; 1000]);
        let content: [(&str, &[u8]); 4] = [
            ("vm.ovf", ovf),
            ("disk1.img", &d1),
            ("nvram.dat", &nv),
            ("disk2.img", &d2),
        ];
        let mf: String = content
            .iter()
            .map(|(n, data)| line(line_alg(n), n, data))
            .collect();
        let mf_entry = ("vm.mf", mf.as_bytes());
        let mut entries: Vec<(&str, &[u8])> = Vec::new();
        match place {
            Place::First => {
                entries.push(mf_entry);
                entries.extend(content);
            }
            Place::AfterOvf => {
                entries.push(content[0]);
                entries.push(mf_entry);
                entries.extend(&content[1..]);
            }
            Place::Last => {
                entries.extend(content);
                entries.push(mf_entry);
            }
        }
        (tar_of(&entries), mf)
    }

    #[test]
    fn one_algorithm_verifies_wherever_the_manifest_is() {
        for ovf in [OVF1, OVF2] {
            for alg in Algorithm::ALL {
                for place in [Place::First, Place::AfterOvf, Place::Last] {
                    let what = format!("{alg} manifest {place:?}, {}", ovf.len());
                    let (tar, mf) = package(ovf, place, |_| alg);
                    let d = digests_of(&tar, 1 << 20);
                    assert_all_verified(&mf, &d, &what);
                    // Held entries are hashed on demand, in the line's
                    // algorithm only, wherever the manifest is.
                    assert_eq!(algs(&d, "vm.ovf"), [alg], "{what}");
                    assert_eq!(algs(&d, "nvram.dat"), [alg], "{what}");
                    // Streamed entries: exactly the manifest's algorithm
                    // after it, every algorithm before it.
                    let disks = if place == Place::Last {
                        Algorithm::ALL.to_vec()
                    } else {
                        vec![alg]
                    };
                    assert_eq!(algs(&d, "disk1.img"), disks, "{what}");
                    assert_eq!(algs(&d, "disk2.img"), disks, "{what}");
                }
            }
        }
    }

    /// The digests of `tar` with the tap started from a scan of it.
    fn digests_knowing(tar: &[u8]) -> EntryDigests {
        let mut source = std::io::Cursor::new(tar.to_vec());
        let manifests = scan_manifests(&mut source).expect("a plain tar is scanned");
        let mut tap = DigestTap::knowing(&manifests);
        for p in tar.chunks(100_000) {
            tap.feed(&Bytes::copy_from_slice(p));
        }
        tap.finish()
    }

    #[test]
    fn a_scanned_package_is_hashed_only_as_its_manifests_ask() {
        for alg in Algorithm::ALL {
            for place in [Place::First, Place::AfterOvf, Place::Last] {
                let what = format!("{alg} manifest {place:?}");
                let (tar, mf) = package(OVF2, place, |_| alg);
                let d = digests_knowing(&tar);
                assert_all_verified(&mf, &d, &what);
                for n in ["vm.ovf", "disk1.img", "nvram.dat", "disk2.img"] {
                    assert_eq!(algs(&d, n), [alg], "{what}: {n}");
                }
            }
        }
        let alg_of = |n: &str| match n {
            "disk1.img" => Algorithm::Sha1,
            "disk2.img" => Algorithm::Sha512,
            _ => Algorithm::Sha256,
        };
        let (tar, mf) = package(OVF1, Place::Last, alg_of);
        let d = digests_knowing(&tar);
        assert_all_verified(&mf, &d, "mixed lines, manifest last");
        assert_eq!(algs(&d, "disk1.img"), [Algorithm::Sha1]);
        assert_eq!(algs(&d, "disk2.img"), [Algorithm::Sha512]);
    }

    #[test]
    fn a_scanned_package_without_a_manifest_is_not_hashed() {
        let tar = tar_of(&[("vm.ovf", OVF1), ("disk1.img", &big(1))]);
        assert_eq!(
            scan_manifests(&mut std::io::Cursor::new(tar.clone())),
            Some(Vec::new())
        );
        assert!(digests_knowing(&tar).is_empty());
    }

    #[test]
    fn the_scan_finds_manifests_under_a_directory_and_without_end_blocks() {
        let data = big(2);
        let mf = line(Algorithm::Sha512, "a.img", &data);
        let mut tar = tar_entry("vm/a.img", &data);
        tar.extend(tar_entry("vm/vm.mf", mf.as_bytes()));
        let found = scan_manifests(&mut std::io::Cursor::new(tar.clone()));
        assert_eq!(found, Some(vec![mf.clone().into_bytes()]));
        let d = digests_knowing(&tar);
        assert_all_verified(&mf, &d, "under a directory, no end blocks");
        assert_eq!(algs(&d, "a.img"), [Algorithm::Sha512]);
    }

    #[test]
    fn the_scan_declines_what_it_cannot_read_as_a_plain_tar() {
        let (tar, _) = package(OVF1, Place::Last, |_| Algorithm::Sha256);
        // A pipe cannot be read twice.
        assert_eq!(scan_manifests(&mut &tar[..]), None);
        // Not a tar archive (a gzip stream, say): the import says what it is.
        let mut gz = vec![0x1f, 0x8b, 8, 0];
        gz.resize(4096, 7);
        assert_eq!(scan_manifests(&mut std::io::Cursor::new(gz)), None);
        // Cut inside an entry.
        let cut = tar[..tar.len() - 3000].to_vec();
        assert_eq!(scan_manifests(&mut std::io::Cursor::new(cut)), None);
        // A manifest over the pipeline's limit.
        let huge = vec![b'#'; limits::MAX_MANIFEST_SIZE as usize + 1];
        let tar = tar_of(&[("vm.ovf", OVF1), ("vm.mf", &huge)]);
        assert_eq!(scan_manifests(&mut std::io::Cursor::new(tar)), None);
    }

    #[test]
    fn sha1_manifest_last_in_an_ovf2_package_verifies() {
        let (tar, mf) = package(OVF2, Place::Last, |_| Algorithm::Sha1);
        let d = digests_of(&tar, 4096);
        assert_all_verified(&mf, &d, "OVF 2.0, SHA-1 manifest last");
    }

    #[test]
    fn an_in_memory_ovf_line_in_sha512_with_the_manifest_last() {
        let (tar, mf) = package(OVF1, Place::Last, |n| {
            if n == "vm.ovf" {
                Algorithm::Sha512
            } else {
                Algorithm::Sha256
            }
        });
        let d = digests_of(&tar, 512);
        assert_all_verified(&mf, &d, "SHA512 OVF line, manifest last");
        assert_eq!(
            d["vm.ovf"],
            [(
                Algorithm::Sha512,
                crate::ova::digest::digest(Algorithm::Sha512, OVF1)
            )]
        );
    }

    #[test]
    fn mixed_lines_verify_and_after_the_manifest_each_entry_gets_its_own() {
        let alg_of = |n: &str| match n {
            "vm.ovf" => Algorithm::Sha512,
            "disk1.img" => Algorithm::Sha1,
            "nvram.dat" => Algorithm::Sha256,
            _ => Algorithm::Sha512,
        };
        for place in [Place::First, Place::AfterOvf, Place::Last] {
            let (tar, mf) = package(OVF1, place, alg_of);
            let d = digests_of(&tar, 1 << 16);
            assert_all_verified(&mf, &d, &format!("mixed, {place:?}"));
            for n in ["vm.ovf", "nvram.dat"] {
                assert_eq!(algs(&d, n), [alg_of(n)], "{place:?} {n}");
            }
            if place != Place::Last {
                assert_eq!(algs(&d, "disk1.img"), [Algorithm::Sha1]);
                assert_eq!(algs(&d, "disk2.img"), [Algorithm::Sha512]);
            }
        }
    }

    #[test]
    fn an_entry_no_manifest_lists_yet_gets_every_algorithm() {
        let data = big(3);
        let mf1 = line(Algorithm::Sha256, "vm.ovf", OVF1);
        let mf2 = line(Algorithm::Sha512, "iso.img", &data);
        let tar = tar_of(&[
            ("vm.ovf", OVF1),
            ("vm.mf", mf1.as_bytes()),
            ("iso.img", &data),
            ("iso.mf", mf2.as_bytes()),
        ]);
        let d = digests_of(&tar, 1 << 20);
        assert_all_verified(&mf1, &d, "first manifest");
        assert_all_verified(&mf2, &d, "second manifest, after its entry");
        assert_eq!(algs(&d, "iso.img"), Algorithm::ALL);
    }

    #[test]
    fn names_lose_the_package_directory() {
        let mf = line(Algorithm::Sha1, "a.img", b"first");
        let tar = tar_of(&[("vm/vm.mf", mf.as_bytes()), ("vm/a.img", b"first")]);
        let d = digests_of(&tar, 100);
        let mut names: Vec<&str> = d.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["a.img"]);
        assert_eq!(algs(&d, "a.img"), [Algorithm::Sha1]);
        assert_all_verified(&mf, &d, "under a directory");
    }

    #[test]
    fn held_entries_are_capped_and_the_rest_streamed() {
        let each = limits::MAX_DIGEST_HELD_ENTRY as usize;
        let count = (limits::MAX_DIGEST_HELD_TOTAL as usize / each) + 2;
        let contents: Vec<(String, Vec<u8>)> = (0..count)
            .map(|i| (format!("small{i}.dat"), vec![i as u8; each]))
            .collect();
        let mut entries: Vec<(&str, &[u8])> = contents
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_slice()))
            .collect();
        let mf: String = contents
            .iter()
            .map(|(n, c)| line(Algorithm::Sha512, n, c))
            .collect();
        entries.push(("vm.mf", mf.as_bytes()));
        let d = digests_of(&tar_of(&entries), 1 << 20);
        assert_all_verified(&mf, &d, "many small entries");
        let held = limits::MAX_DIGEST_HELD_TOTAL as usize / each;
        assert_eq!(algs(&d, "small0.dat"), [Algorithm::Sha512]);
        assert_eq!(
            algs(&d, &format!("small{}.dat", held - 1)),
            [Algorithm::Sha512]
        );
        assert_eq!(algs(&d, &format!("small{held}.dat")), Algorithm::ALL);
    }

    #[test]
    fn any_split_gives_the_same_digests() {
        let alg_of = |n: &str| match n {
            "vm.ovf" => Algorithm::Sha512,
            "disk1.img" => Algorithm::Sha1,
            _ => Algorithm::Sha256,
        };
        for place in [Place::First, Place::AfterOvf, Place::Last] {
            let (tar, mf) = package(OVF2, place, alg_of);
            let whole = digests_of(&tar, tar.len());
            assert_all_verified(&mf, &whole, &format!("{place:?} in one piece"));
            for seed in 1..=8u64 {
                let d = feed_pieces(random_pieces(&tar, seed * 0x9e37_79b9).into_iter());
                assert_eq!(d, whole, "{place:?}, seed {seed}");
            }
            for piece in [7, 511, 512, 513] {
                assert_eq!(digests_of(&tar, piece), whole, "{place:?}, piece {piece}");
            }
        }
    }

    #[test]
    fn a_package_without_end_blocks_still_gets_its_last_digest() {
        let data = big(4);
        let tar = tar_entry("disk1.img", &data);
        let d = digests_of(&tar, 1000);
        assert_eq!(algs(&d, "disk1.img"), Algorithm::ALL);
        assert_eq!(
            d["disk1.img"][2].1,
            crate::ova::digest::digest(Algorithm::Sha512, &data)
        );
    }

    #[test]
    fn a_broken_stream_ends_the_threads_without_a_panic() {
        let mut tar = tar_entry("disk1.img", &big(5));
        tar.extend([0xffu8; 512]);
        tar.extend([0u8; 4096]);
        // The pipeline reports the broken header; the tap only must not hang.
        let d = digests_of(&tar, 100);
        assert_eq!(algs(&d, "disk1.img"), Algorithm::ALL);
    }

    #[test]
    fn zip_members_are_digested_like_entries() {
        let large = big(7);
        let mf = line(Algorithm::Sha1, "a.img", b"first")
            + &line(Algorithm::Sha256, "large.img", &large)
            + &line(Algorithm::Sha512, "b.img", b"second");
        let mut tap = DigestTap::start();
        let mut member = |name: &str, size: Option<u64>, data: &[u8]| {
            tap.begin_member(name, size);
            for piece in data.chunks(3000) {
                tap.member_data(&Bytes::copy_from_slice(piece));
            }
            tap.end_member();
        };
        // Small and held; large, of unknown size, and streamed in all.
        member("a.img", Some(5), b"first");
        member("large.img", None, &large);
        // A manifest whose size only its data descriptor gave.
        member("vm.mf", None, mf.as_bytes());
        member("b.img", None, b"second");
        let d = tap.finish();
        assert_eq!(algs(&d, "a.img"), [Algorithm::Sha1]);
        assert_eq!(algs(&d, "large.img"), Algorithm::ALL);
        assert_eq!(algs(&d, "b.img"), [Algorithm::Sha512]);
        assert_all_verified(&mf, &d, "zip members");
    }

    #[test]
    fn manifest_lines_are_checked_in_order() {
        let d = |a, data: &[u8]| (a, crate::ova::digest::digest(a, data));
        let line = |a, name: &str, data: &[u8]| {
            format!(
                "{}({name})= {}\n",
                Algorithm::name(a),
                hex::encode(crate::ova::digest::digest(a, data))
            )
        };
        let text = [
            line(Algorithm::Sha256, "good", b"good"),
            line(Algorithm::Sha256, "bad", b"expected"),
            line(Algorithm::Sha1, "gone", b"x"),
            line(Algorithm::Sha512, "early", b"early"),
        ]
        .concat();
        let m = manifest::parse(text.as_bytes()).unwrap();
        let mut digests = EntryDigests::new();
        digests.insert("good".into(), vec![d(Algorithm::Sha256, b"good")]);
        digests.insert("bad".into(), vec![d(Algorithm::Sha256, b"actual")]);
        digests.insert(
            "early".into(),
            vec![d(Algorithm::Sha1, b"early"), d(Algorithm::Sha256, b"early")],
        );
        let checks = check_manifest(&m, |n| digests.get(n).map(Vec::as_slice));
        let got: Vec<(&str, &LineCheck)> =
            checks.iter().map(|(l, c)| (l.name.as_str(), c)).collect();
        let actual = crate::ova::digest::digest(Algorithm::Sha256, b"actual");
        assert_eq!(
            got,
            [
                ("good", &LineCheck::Verified),
                ("bad", &LineCheck::Mismatch(actual)),
                ("gone", &LineCheck::NoSuchEntry),
                ("early", &LineCheck::NotComputed),
            ]
        );
        let kinds: Vec<Option<ErrorKind>> = checks
            .iter()
            .map(|(l, c)| c.error(l, "vm.mf").map(|e| e.kind()))
            .collect();
        assert_eq!(
            kinds,
            [
                None,
                Some(ErrorKind::Integrity),
                Some(ErrorKind::Integrity),
                Some(ErrorKind::Unsupported)
            ]
        );
        let failures: Vec<bool> = checks.iter().map(|(_, c)| c.is_failure()).collect();
        assert_eq!(failures, [false, true, true, false]);
        let e = checks[2].1.error(checks[2].0, "vm.mf").unwrap();
        assert_eq!(
            e.to_string(),
            "entry 'vm.mf': the manifest lists 'gone' but the package has no such entry"
        );
    }

    #[test]
    fn messages_spell_algorithms_as_manifests_do() {
        for alg in Algorithm::ALL {
            let entry = ManifestEntry {
                algorithm: alg,
                name: "disk1.vmdk".into(),
                digest: vec![0; alg.digest_len()],
            };
            for check in [
                LineCheck::Mismatch(vec![1; alg.digest_len()]),
                LineCheck::NotComputed,
            ] {
                let msg = check.error(&entry, "vm.mf").expect("an error").to_string();
                assert!(msg.contains(alg.name()), "{msg}");
                assert!(msg.contains("disk1.vmdk"), "{msg}");
                assert!(!msg.contains(&format!("{alg:?}")), "{msg}");
            }
        }
    }
}
