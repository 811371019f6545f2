//! Entry digests computed beside the pipeline, on their own threads.
//!
//! Hashing costs more CPU than demultiplexing and decoding a raw disk, so
//! it runs in parallel: each digest thread is sent the same package
//! chunks (`Bytes`, shared, not copied), runs its own tar demux to find
//! entry boundaries, and hashes every regular entry. A thread also parses
//! the manifest when it passes, so that entries after it are hashed with
//! exactly the algorithms the manifest uses; before the manifest, the
//! threads compute SHA-1 and SHA-256 (what OVF 1.x and 2.x tools write).
//! The channel is bounded, so memory stays at a few chunks.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::limits;
use crate::ova::demux::{Demux, EntryType, Event};
use crate::ova::digest::MultiDigest;
use crate::ova::manifest::{self, Algorithm};

/// Chunks queued per digest thread before the pipeline waits.
const QUEUE: usize = 4;

/// Digests per entry name.
pub type EntryDigests = HashMap<String, Vec<(Algorithm, Vec<u8>)>>;

/// Which algorithms a thread is responsible for.
#[derive(Debug, Clone, Copy)]
enum Share {
    /// SHA-1 only.
    Sha1,
    /// Everything but SHA-1.
    Rest,
}

impl Share {
    fn algorithms(self, manifest: Option<&[Algorithm]>) -> Vec<Algorithm> {
        let all = manifest.unwrap_or(&[Algorithm::Sha1, Algorithm::Sha256]);
        all.iter()
            .copied()
            .filter(|a| matches!(self, Share::Sha1) == (*a == Algorithm::Sha1))
            .collect()
    }
}

/// Digest threads fed with the package stream.
#[derive(Debug)]
pub struct DigestTap {
    senders: Vec<SyncSender<Bytes>>,
    threads: Vec<JoinHandle<EntryDigests>>,
}

impl DigestTap {
    /// Starts the digest threads.
    pub fn start() -> DigestTap {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for share in [Share::Sha1, Share::Rest] {
            let (tx, rx) = sync_channel(QUEUE);
            senders.push(tx);
            threads.push(std::thread::spawn(move || digest_thread(share, rx)));
        }
        DigestTap { senders, threads }
    }

    /// A tap with no threads, for a pipeline that is done with its stream.
    pub fn idle() -> DigestTap {
        DigestTap {
            senders: Vec::new(),
            threads: Vec::new(),
        }
    }

    /// Hands the next chunk of the package to every digest thread.
    pub fn feed(&self, chunk: &Bytes) {
        for s in &self.senders {
            // A thread that stopped (its demux failed) gives up quietly:
            // the pipeline's own demux reports the same error.
            let _ = s.send(chunk.clone());
        }
    }

    /// Ends the stream and collects every entry's digests.
    pub fn finish(self) -> EntryDigests {
        drop(self.senders);
        let mut all = EntryDigests::new();
        for t in self.threads {
            if let Ok(map) = t.join() {
                for (name, mut ds) in map {
                    all.entry(name).or_default().append(&mut ds);
                }
            }
        }
        all
    }
}

fn digest_thread(share: Share, rx: Receiver<Bytes>) -> EntryDigests {
    let mut out = EntryDigests::new();
    let mut demux = Demux::new();
    let mut manifest_algs: Option<Vec<Algorithm>> = None;
    let mut current: Option<(String, MultiDigest, Option<Vec<u8>>)> = None;
    let mut finish_entry = |cur: &mut Option<(String, MultiDigest, Option<Vec<u8>>)>,
                            manifest_algs: &mut Option<Vec<Algorithm>>| {
        if let Some((name, d, mf)) = cur.take() {
            if let Some(text) = mf
                && let Ok(m) = manifest::parse(&text)
            {
                *manifest_algs = Some(m.algorithms());
            }
            out.insert(name, d.finish());
        }
    };
    let mut step = |buf: &[u8],
                    current: &mut Option<(String, MultiDigest, Option<Vec<u8>>)>,
                    manifest_algs: &mut Option<Vec<Algorithm>>|
     -> bool {
        let mut rest = buf;
        loop {
            let Ok((n, ev)) = demux.step(rest) else {
                return false;
            };
            rest = &rest[n..];
            match ev {
                Some(Event::Begin(h)) if h.entry_type == EntryType::Regular => {
                    let algs = share.algorithms(manifest_algs.as_deref());
                    let is_mf = h.name.to_ascii_lowercase().ends_with(".mf")
                        && manifest_algs.is_none()
                        && h.size <= limits::MAX_MANIFEST_SIZE;
                    *current = Some((h.name, MultiDigest::new(&algs), is_mf.then(Vec::new)));
                }
                Some(Event::Data(d)) => {
                    if let Some((_, md, mf)) = current.as_mut() {
                        md.update(d);
                        if let Some(t) = mf {
                            t.extend_from_slice(d);
                        }
                    }
                }
                Some(Event::End) => finish_entry(current, manifest_algs),
                Some(Event::Eof) => return true,
                _ => {}
            }
            if rest.is_empty() && n == 0 {
                return true;
            }
            if rest.is_empty() {
                // One more step with no input may still yield a pending End.
                continue;
            }
        }
    };
    while let Ok(chunk) = rx.recv() {
        if !step(&chunk, &mut current, &mut manifest_algs) {
            return out;
        }
    }
    // End of stream: a package without end blocks leaves its last End pending.
    step(&[], &mut current, &mut manifest_algs);
    out
}
