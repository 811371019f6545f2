//! Entry digests computed beside the pipeline, on their own threads.
//!
//! Hashing costs more CPU than demultiplexing and decoding a raw disk, so
//! it runs in parallel: each digest thread is sent the same package
//! chunks (`Bytes`, shared, not copied), runs its own tar demux to find
//! entry boundaries, and hashes every regular entry.
//!
//! Which digests an entry gets depends on what has passed before it:
//! * after the manifest, exactly the algorithms it uses;
//! * after an OVF 2.x descriptor, SHA-256 (the algorithm OVF 2.x names);
//! * otherwise SHA-1 and SHA-256: OVF 1.x packages carry either (VirtualBox
//!   writes a SHA-1 manifest last, ovaio and newer ovftool SHA-256).
//!
//! A manifest whose algorithm was not computed for an entry fails the
//! import as unverifiable; it never passes silently. The channel is
//! bounded, so memory stays at a few chunks.
//!
//! A zip package has no tar stream: its members are sent one by one
//! ([`DigestTap::begin_member`]), uncompressed, and digested alike.
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
use crate::ova::demux::{Demux, EntryType, Event};
use crate::ova::digest::MultiDigest;
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
    manifest: Option<Vec<Algorithm>>,
    /// Major OVF version of the descriptor, once it passed.
    ovf_major: Option<u8>,
}

impl Seen {
    fn expected(&self) -> Vec<Algorithm> {
        match (&self.manifest, self.ovf_major) {
            (Some(m), _) => m.clone(),
            (None, Some(2)) => vec![Algorithm::Sha256],
            (None, _) => vec![Algorithm::Sha1, Algorithm::Sha256],
        }
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
    fn algorithms(self, seen: &Seen) -> Vec<Algorithm> {
        let all = seen.expected();
        all.iter()
            .copied()
            .filter(|a| matches!(self, Share::Sha1) == (*a == Algorithm::Sha1))
            .collect()
    }
}

/// What a digest thread is sent.
#[derive(Debug)]
enum Msg {
    /// Bytes of the tar stream: the thread finds the entries itself.
    Tar(Bytes),
    /// A zip member starts: its name, and its size when known.
    Begin(String, Option<u64>),
    /// Uncompressed bytes of the current zip member.
    Data(Bytes),
    /// The current zip member ended.
    End,
}

/// Digest threads fed with the package stream.
#[derive(Debug)]
pub struct DigestTap {
    senders: Vec<SyncSender<Msg>>,
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

    fn send(&self, m: impl Fn() -> Msg) {
        for s in &self.senders {
            // A thread that stopped (its demux failed) gives up quietly:
            // the pipeline's own demux reports the same error.
            let _ = s.send(m());
        }
    }

    /// Hands the next chunk of the tar stream to every digest thread.
    pub fn feed(&self, chunk: &Bytes) {
        self.send(|| Msg::Tar(chunk.clone()));
    }

    /// A zip member starts, `size` bytes long when known: its bytes are
    /// digested as a tar entry's are.
    pub fn begin_member(&self, name: &str, size: Option<u64>) {
        self.send(|| Msg::Begin(name.to_owned(), size));
    }

    /// Uncompressed bytes of the current zip member.
    pub fn member_data(&self, data: &Bytes) {
        self.send(|| Msg::Data(data.clone()));
    }

    /// The current zip member ended.
    pub fn end_member(&self) {
        self.send(|| Msg::End);
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
    /// Content kept when the entry is the manifest (`true`) or the OVF,
    /// while it stays within its size limit.
    text: Option<(Vec<u8>, bool)>,
}

/// One thread's share of the hashing, entry by entry.
struct Hasher {
    share: Share,
    seen: Seen,
    current: Option<Hashing>,
    out: EntryDigests,
}

impl Hasher {
    fn begin(&mut self, name: String, size: Option<u64>) {
        let lower = name.to_ascii_lowercase();
        let within = |limit: u64| size.is_none_or(|s| s <= limit);
        let text = if lower.ends_with(".mf")
            && self.seen.manifest.is_none()
            && within(limits::MAX_MANIFEST_SIZE)
        {
            Some((Vec::new(), true))
        } else if lower.ends_with(".ovf")
            && self.seen.ovf_major.is_none()
            && within(limits::MAX_OVF_SIZE)
        {
            Some((Vec::new(), false))
        } else {
            None
        };
        self.current = Some(Hashing {
            name,
            digest: MultiDigest::new(&self.share.algorithms(&self.seen)),
            text,
        });
    }

    fn data(&mut self, d: &[u8]) {
        if let Some(c) = self.current.as_mut() {
            c.digest.update(d);
            if let Some((t, manifest)) = &mut c.text {
                let limit = if *manifest {
                    limits::MAX_MANIFEST_SIZE
                } else {
                    limits::MAX_OVF_SIZE
                };
                if (t.len() + d.len()) as u64 > limit {
                    c.text = None;
                } else {
                    t.extend_from_slice(d);
                }
            }
        }
    }

    fn end(&mut self) {
        if let Some(c) = self.current.take() {
            match c.text {
                Some((t, true)) => {
                    if let Ok(m) = manifest::parse(&t) {
                        self.seen.manifest = Some(m.algorithms());
                    }
                }
                Some((t, false)) => self.seen.ovf_major = Some(ovf_major(&t)),
                None => {}
            }
            self.out.insert(c.name, c.digest.finish());
        }
    }
}

fn digest_thread(share: Share, rx: Receiver<Msg>) -> EntryDigests {
    let mut h = Hasher {
        share,
        seen: Seen::default(),
        current: None,
        out: EntryDigests::new(),
    };
    let mut demux = Demux::new();
    // Feeds tar bytes; false once the tar stream is over or broken.
    let mut step = |buf: &[u8], h: &mut Hasher| -> bool {
        let mut rest = buf;
        loop {
            let Ok((n, ev)) = demux.step(rest) else {
                return false;
            };
            rest = &rest[n..];
            match ev {
                Some(Event::Begin(e)) if e.entry_type == EntryType::Regular => {
                    h.begin(e.name, Some(e.size));
                }
                Some(Event::Data(d)) => h.data(d),
                Some(Event::End) => h.end(),
                Some(Event::Eof) => return true,
                _ => {}
            }
            if rest.is_empty() && n == 0 {
                return true;
            }
        }
    };
    let mut tar = false;
    while let Ok(m) = rx.recv() {
        match m {
            Msg::Tar(chunk) => {
                tar = true;
                if !step(&chunk, &mut h) {
                    return h.out;
                }
            }
            Msg::Begin(name, size) => h.begin(name, size),
            Msg::Data(d) => h.data(&d),
            Msg::End => h.end(),
        }
    }
    if tar {
        // End of stream: a package without end blocks leaves its last End pending.
        step(&[], &mut h);
    }
    h.out
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

    /// The error that stops an import at this line (`manifest` names the
    /// manifest entry); `None` for a verified line. A mismatch or a
    /// missing entry is an integrity error; a line that was not computed
    /// is unverifiable, which import refuses rather than pass silently.
    pub fn error(&self, line: &ManifestEntry, manifest: &str) -> Option<Error> {
        match self {
            LineCheck::Verified => None,
            LineCheck::Mismatch(got) => Some(
                Error::new(
                    ErrorKind::Integrity,
                    format!(
                        "{} digest mismatch: manifest says {}, content is {}",
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
                        line.name
                    ),
                )
                .in_entry(manifest),
            ),
            LineCheck::NotComputed => Some(
                Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "cannot verify: the manifest uses {}, which was not computed because the entry came before the manifest",
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
        tar.extend([0u8; 1024]);
        for piece in [1, 7, 512, 1 << 20] {
            let d = digests_of(tar.clone(), piece);
            assert_eq!(algs(&d, "a.img"), [Algorithm::Sha1, Algorithm::Sha256]);
            assert_eq!(algs(&d, "b.img"), [Algorithm::Sha256]);
            assert_eq!(algs(&d, "c.img"), [Algorithm::Sha512]);
            assert_eq!(
                d["c.img"][0].1,
                crate::ova::digest::digest(Algorithm::Sha512, b"third")
            );
        }
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
    fn zip_members_are_digested_like_entries() {
        let mf = format!(
            "SHA512(b.img)= {}\n",
            hex::encode(crate::ova::digest::digest(Algorithm::Sha512, b"second"))
        );
        let tap = DigestTap::start();
        let member = |name: &str, size: Option<u64>, data: &[u8]| {
            tap.begin_member(name, size);
            for piece in data.chunks(3) {
                tap.member_data(&Bytes::copy_from_slice(piece));
            }
            tap.end_member();
        };
        member("a.img", Some(5), b"first");
        // A manifest whose size only its data descriptor gave.
        member("vm.mf", None, mf.as_bytes());
        member("b.img", None, b"second");
        let d = tap.finish();
        assert_eq!(algs(&d, "a.img"), [Algorithm::Sha1, Algorithm::Sha256]);
        assert_eq!(
            d["a.img"][1].1,
            crate::ova::digest::digest(Algorithm::Sha256, b"first")
        );
        assert_eq!(algs(&d, "b.img"), [Algorithm::Sha512]);
        assert_eq!(
            d["b.img"][0].1,
            crate::ova::digest::digest(Algorithm::Sha512, b"second")
        );
    }

    #[test]
    fn ovf_one_keeps_both_digests() {
        assert_eq!(
            ovf_major(b"xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\""),
            1
        );
        let seen = Seen {
            manifest: None,
            ovf_major: Some(1),
        };
        assert_eq!(seen.expected(), [Algorithm::Sha1, Algorithm::Sha256]);
    }
}
