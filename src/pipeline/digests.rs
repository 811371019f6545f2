//! Entry digests computed beside the pipeline, on their own threads.
//!
//! Hashing costs more CPU than demultiplexing and decoding a raw disk, so
//! it runs in parallel: each digest thread is sent the same package
//! chunks (`Bytes`, shared, not copied), runs its own tar demux to find
//! entry boundaries, and hashes every regular entry.
//!
//! Entries are keyed by their names in the package ([`Layout`]: without
//! the package's top-level directory, if it has one), the names manifests
//! and hrefs use.
//!
//! Which digests an entry gets depends on what has passed before it:
//! * an entry a manifest before it lists: exactly the algorithms listed
//!   for it;
//! * otherwise, after an OVF 2.x descriptor, SHA-256 (the algorithm OVF
//!   2.x names), else SHA-1 and SHA-256: OVF 1.x packages carry either
//!   (VirtualBox writes a SHA-1 manifest last, ovaio and newer ovftool
//!   SHA-256); and after a manifest also every algorithm the manifests so
//!   far use, since a package may carry a manifest per disk and a later
//!   one may list the entry.
//!
//! A manifest whose algorithm was not computed for an entry fails the
//! import as unverifiable; it never passes silently. The channel is
//! bounded, so memory stays at a few chunks.
//!
//! [`check_manifest`] compares the manifest with what was computed, line
//! by line: import stops at the first line that does not verify, `inspect`
//! reports every line.

use std::collections::HashMap;
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

/// What the stream has told so far about the digests to expect.
#[derive(Debug, Default)]
struct Seen {
    /// The algorithms every manifest so far uses, together.
    manifest: Vec<Algorithm>,
    /// The algorithms the manifests so far list for each entry.
    listed: HashMap<String, Vec<Algorithm>>,
    /// Major OVF version of the descriptor, once it passed.
    ovf_major: Option<u8>,
}

impl Seen {
    fn expected(&self, name: &str) -> Vec<Algorithm> {
        if let Some(algs) = self.listed.get(name) {
            return algs.clone();
        }
        let mut algs = match self.ovf_major {
            Some(2) => vec![Algorithm::Sha256],
            _ => vec![Algorithm::Sha1, Algorithm::Sha256],
        };
        algs.extend(&self.manifest);
        algs.sort();
        algs.dedup();
        algs
    }

    fn manifest_passed(&mut self, m: &Manifest) {
        for line in &m.entries {
            let algs = self.listed.entry(line.name.clone()).or_default();
            if !algs.contains(&line.algorithm) {
                algs.push(line.algorithm);
                algs.sort();
            }
        }
        self.manifest.extend(m.algorithms());
        self.manifest.sort();
        self.manifest.dedup();
    }
}

/// The major OVF version of a descriptor, from its envelope namespace.
fn ovf_major(xml: &[u8]) -> u8 {
    const V2: &[u8] = b"http://schemas.dmtf.org/ovf/envelope/2";
    if xml.windows(V2.len()).any(|w| w == V2) {
        2
    } else {
        1
    }
}

impl Share {
    fn algorithms(self, seen: &Seen, name: &str) -> Vec<Algorithm> {
        let all = seen.expected(name);
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

/// The entry being hashed.
struct Hashing {
    name: String,
    digest: MultiDigest,
    /// Content kept when the entry is the manifest or the OVF.
    text: Option<(Vec<u8>, bool)>,
}

fn digest_thread(share: Share, rx: Receiver<Bytes>) -> EntryDigests {
    let mut out = EntryDigests::new();
    let mut demux = Demux::new();
    let mut layout = Layout::new();
    let mut seen = Seen::default();
    let mut current: Option<Hashing> = None;
    let mut step = |buf: &[u8], current: &mut Option<Hashing>, seen: &mut Seen| -> bool {
        let mut rest = buf;
        loop {
            let Ok((n, ev)) = demux.step(rest) else {
                return false;
            };
            rest = &rest[n..];
            match ev {
                Some(Event::Begin(h)) => {
                    // An entry the layout refuses fails the import there.
                    let Ok(name) = layout.place(&h.name, h.entry_type) else {
                        return false;
                    };
                    if let (Some(name), EntryType::Regular) = (name, h.entry_type) {
                        let lower = name.to_ascii_lowercase();
                        let text = if lower.ends_with(".mf") && h.size <= limits::MAX_MANIFEST_SIZE
                        {
                            Some((Vec::new(), true))
                        } else if lower.ends_with(".ovf")
                            && seen.ovf_major.is_none()
                            && h.size <= limits::MAX_OVF_SIZE
                        {
                            Some((Vec::new(), false))
                        } else {
                            None
                        };
                        *current = Some(Hashing {
                            digest: MultiDigest::new(&share.algorithms(seen, &name)),
                            name,
                            text,
                        });
                    }
                }
                Some(Event::Data(d)) => {
                    if let Some(c) = current.as_mut() {
                        c.digest.update(d);
                        if let Some((t, _)) = &mut c.text {
                            t.extend_from_slice(d);
                        }
                    }
                }
                Some(Event::End) => {
                    if let Some(c) = current.take() {
                        match c.text {
                            Some((t, true)) => {
                                if let Ok(m) = manifest::parse(&t) {
                                    seen.manifest_passed(&m);
                                }
                            }
                            Some((t, false)) => seen.ovf_major = Some(ovf_major(&t)),
                            None => {}
                        }
                        out.insert(c.name, c.digest.finish());
                    }
                }
                Some(Event::Eof) => return true,
                _ => {}
            }
            if rest.is_empty() && n == 0 {
                return true;
            }
        }
    };
    while let Ok(chunk) = rx.recv() {
        if !step(&chunk, &mut current, &mut seen) {
            return out;
        }
    }
    // End of stream: a package without end blocks leaves its last End pending.
    step(&[], &mut current, &mut seen);
    out
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
    /// The line's algorithm was not computed for the entry: the entry
    /// came before the manifest, when another algorithm was expected.
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
                        "cannot verify: manifest '{mf}' uses {}, which was not computed because the entry came before the manifest",
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

    fn digests_of(tar: Vec<u8>, piece: usize) -> EntryDigests {
        let tap = DigestTap::start();
        for p in tar.chunks(piece) {
            tap.feed(&Bytes::copy_from_slice(p));
        }
        tap.finish()
    }

    fn algs(d: &EntryDigests, name: &str) -> Vec<Algorithm> {
        d[name].iter().map(|(a, _)| *a).collect()
    }

    #[test]
    fn algorithms_follow_what_passed_before() {
        let ovf2 = br#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/2"/>"#;
        let mut tar = tar_entry("a.img", b"first");
        tar.extend(tar_entry("vm.ovf", ovf2));
        tar.extend(tar_entry("b.img", b"second"));
        let mf = format!(
            "SHA512(c.img)= {}\n",
            hex::encode(crate::ova::digest::digest(Algorithm::Sha512, b"third"))
        );
        tar.extend(tar_entry("vm.mf", mf.as_bytes()));
        tar.extend(tar_entry("c.img", b"third"));
        tar.extend(tar_entry("d.img", b"fourth"));
        tar.extend([0u8; 1024]);
        for piece in [1, 7, 512, 1 << 20] {
            let d = digests_of(tar.clone(), piece);
            assert_eq!(algs(&d, "a.img"), [Algorithm::Sha1, Algorithm::Sha256]);
            assert_eq!(algs(&d, "b.img"), [Algorithm::Sha256]);
            assert_eq!(algs(&d, "c.img"), [Algorithm::Sha512]);
            // Listed by no manifest yet: a later one may list it.
            assert_eq!(algs(&d, "d.img"), [Algorithm::Sha256, Algorithm::Sha512]);
            assert_eq!(
                d["c.img"][0].1,
                crate::ova::digest::digest(Algorithm::Sha512, b"third")
            );
        }
    }

    #[test]
    fn names_lose_the_package_directory() {
        let mf = format!(
            "SHA1(a.img)= {}\n",
            hex::encode(crate::ova::digest::digest(Algorithm::Sha1, b"first"))
        );
        let mut tar = tar_entry("vm/vm.mf", mf.as_bytes());
        tar.extend(tar_entry("vm/a.img", b"first"));
        tar.extend([0u8; 1024]);
        let d = digests_of(tar, 100);
        let mut names: Vec<&str> = d.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["a.img", "vm.mf"]);
        assert_eq!(algs(&d, "a.img"), [Algorithm::Sha1]);
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
    fn ovf_one_keeps_both_digests() {
        assert_eq!(
            ovf_major(b"xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\""),
            1
        );
        let seen = Seen {
            ovf_major: Some(1),
            ..Seen::default()
        };
        assert_eq!(seen.expected("a"), [Algorithm::Sha1, Algorithm::Sha256]);
    }
}
