//! Mutation test of `ovaio import` and `ovaio inspect`: small, valid base
//! packages (built with qemu-img, gzip and GNU tar, one PAX archive by hand)
//! are damaged by a seeded PRNG (bit flips and byte overwrites aimed at tar
//! headers, size fields, disk headers, OVF attribute values, manifest hex
//! and PAX records; truncations; duplicated, dropped and swapped blocks;
//! appended bytes; tar size fields and typeflags edited with and without a
//! recomputed checksum; reordered entries) and fed to the real binary, from
//! a file or a pipe, into `--dir` or `--disk` targets, raw or qcow2.
//!
//! Every run must end with a documented exit code and no panic. A failed
//! run prints exactly one `ovaio: error: ` line, and a failed import leaves
//! its target directory empty. A successful import is judged against GNU
//! tar and qemu-img, not against ovaio: its summary lists as many disks as
//! the OVF GNU tar extracts has `Disk` elements, every target exists at its
//! final name with nothing else beside it, a raw target is as long as the
//! capacity, a sample of qcow2 targets passes `qemu-img check`, a raw,
//! qcow2 or monolithicSparse VMDK entry reads the same to qemu-img as its
//! target, and a manifest GNU
//! tar extracts as a file was verified and holds the digests of the entries
//! GNU tar extracts.
//!
//! `OVAIO_MUTATION_SEED` (decimal or `0x` hex) changes the seed and
//! `OVAIO_MUTATION_CASE` runs a single case index; both are printed with
//! every failure. `OVAIO_MUTATION_CASES` changes the number of cases.
//! Packages of failing cases are saved under
//! `$CARGO_TARGET_TMPDIR/import-mutations/`.

mod support;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::Value;
use support::image::{self, Fill, Layout, Run, SMALL, Source};
use support::ova::{self, Disk, Manifest, OVF_NAME, Ova, OvfDisk, Placement, ovf_xml};
use support::tar::{self as suptar, TarFormat, TarWriter, ustar_header};
use support::{Cmd, Outcome, Work, ovaio, tool};

/// The seed used unless `OVAIO_MUTATION_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x6f76_6169_6f5f_6d75;
/// Mutated packages per run; each is imported and inspected.
const CASES: usize = 1200;
/// Worker threads (the binary under test is the heavy part).
const THREADS: usize = 3;
/// `qemu-img check` every this many successful qcow2 imports.
const QCOW2_CHECK_EVERY: usize = 20;
/// Failure lines shown in the final message.
const REPORT_LINES: usize = 20;
/// Exit codes the README documents for these commands.
const DOCUMENTED_EXITS: [i32; 7] = [0, 1, 2, 3, 4, 5, 6];
const ERROR_PREFIX: &str = "ovaio: error: ";
const BLOCK: usize = 512;

// ---------------------------------------------------------------------------
// Deterministic randomness.

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xorshift64*, seeded through splitmix64.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut s = seed;
        Rng(splitmix(&mut s) | 1)
    }

    /// The generator of case `index` under `seed`: every case can be
    /// rebuilt on its own.
    fn for_case(seed: u64, index: usize) -> Rng {
        let mut s = seed ^ (index as u64 + 1).wrapping_mul(0xd6e8_feb8_6659_fd93);
        Rng::new(splitmix(&mut s))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0)");
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..hi` (`lo < hi`).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo)
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------
// The structure of a (valid) base archive, for aiming mutations.

/// One tar entry: its extended headers, its ustar header and its data.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    /// Offset of its first header block (a PAX `x` or GNU `L` one, if any).
    start: usize,
    /// Offset of its ustar header block.
    header: usize,
    /// Offset of its data.
    data: usize,
    /// Data size.
    size: usize,
}

impl Entry {
    /// Offset just past its padded data.
    fn end(&self) -> usize {
        self.data + self.size.div_ceil(BLOCK) * BLOCK
    }
}

/// What a tar reader sees in a base archive.
#[derive(Debug, Clone)]
struct TarLayout {
    /// Every header block, extended ones included.
    headers: Vec<usize>,
    /// Data ranges of PAX `x` headers.
    pax_data: Vec<(usize, usize)>,
    entries: Vec<Entry>,
    /// Offset of the end-of-archive marker.
    end: usize,
}

fn octal_field(field: &[u8]) -> usize {
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| b as char)
        .collect();
    usize::from_str_radix(text.trim_start(), 8).expect("octal field of a base archive")
}

fn c_string(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8(field[..end].to_vec()).expect("utf-8 name")
}

/// Walks a well-formed archive (ustar, GNU `L`, PAX `size` and `path`).
fn walk(bytes: &[u8]) -> TarLayout {
    let mut layout = TarLayout {
        headers: Vec::new(),
        pax_data: Vec::new(),
        entries: Vec::new(),
        end: 0,
    };
    let mut off = 0;
    let mut start = None;
    let mut pax_size = None;
    let mut pax_path = None;
    let mut long_name = None;
    loop {
        assert!(
            off + BLOCK <= bytes.len(),
            "base archive without end marker"
        );
        let h = &bytes[off..off + BLOCK];
        if h.iter().all(|&b| b == 0) {
            layout.end = off;
            return layout;
        }
        layout.headers.push(off);
        let first = *start.get_or_insert(off);
        let stored = octal_field(&h[124..136]);
        let data = off + BLOCK;
        match h[156] {
            b'x' => {
                layout.pax_data.push((data, data + stored));
                for rec in String::from_utf8_lossy(&bytes[data..data + stored]).lines() {
                    let (_, kv) = rec.split_once(' ').expect("pax record length");
                    let (k, v) = kv.split_once('=').expect("pax record key");
                    match k {
                        "size" => pax_size = Some(v.parse::<usize>().expect("pax size")),
                        "path" => pax_path = Some(v.to_owned()),
                        _ => {}
                    }
                }
                off = data + stored.div_ceil(BLOCK) * BLOCK;
            }
            b'L' => {
                long_name = Some(c_string(&bytes[data..data + stored]));
                off = data + stored.div_ceil(BLOCK) * BLOCK;
            }
            b'0' | 0 => {
                let size = pax_size.take().unwrap_or(stored);
                let name = pax_path
                    .take()
                    .or_else(|| long_name.take())
                    .unwrap_or_else(|| c_string(&h[..100]));
                let e = Entry {
                    name,
                    start: first,
                    header: off,
                    data,
                    size,
                };
                off = e.end();
                layout.entries.push(e);
                start = None;
            }
            other => panic!("unexpected typeflag {other} in a base archive"),
        }
    }
}

/// Name of the ustar header field at `pos` within a header block.
fn header_field(pos: usize) -> &'static str {
    match pos {
        0..100 => "name",
        100..108 => "mode",
        108..124 => "uid/gid",
        124..136 => "size",
        136..148 => "mtime",
        148..156 => "checksum",
        156 => "typeflag",
        157..257 => "linkname",
        257..265 => "magic/version",
        265..329 => "uname/gname",
        329..345 => "devmajor/minor",
        345..500 => "prefix",
        _ => "padding",
    }
}

/// Recomputes the checksum of the header block at `h` (unsigned sum, as
/// GNU tar writes it).
fn fix_checksum(h: &mut [u8]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h[..BLOCK].iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

// ---------------------------------------------------------------------------
// Base packages.

/// A base package and what mutations aim at.
#[derive(Debug)]
struct Base {
    name: &'static str,
    bytes: Vec<u8>,
    /// Disk hrefs, in References order.
    hrefs: Vec<String>,
    layout: TarLayout,
    /// Offsets of bytes inside OVF attribute values.
    ovf_values: Vec<usize>,
    /// Offsets of the manifest's hex digits.
    manifest_hex: Vec<usize>,
    /// Indices (into `layout.entries`) of the disk entries.
    disks: Vec<usize>,
}

impl Base {
    fn new(name: &'static str, bytes: Vec<u8>, hrefs: &[&str]) -> Base {
        let layout = walk(&bytes);
        let mut ovf_values = Vec::new();
        let mut manifest_hex = Vec::new();
        let mut disks = Vec::new();
        for (i, e) in layout.entries.iter().enumerate() {
            let data = &bytes[e.data..e.data + e.size];
            if e.name.ends_with(".ovf") {
                let mut inside = false;
                for (j, w) in data.windows(2).enumerate() {
                    if inside && w[1] == b'"' {
                        inside = false;
                    } else if inside {
                        ovf_values.push(e.data + j + 1);
                    } else if w == b"=\"" {
                        inside = true;
                    }
                }
            } else if e.name.ends_with(".mf") {
                let mut line_start = 0;
                for (j, &b) in data.iter().enumerate() {
                    if b == b'\n' {
                        line_start = j + 1;
                    } else if b.is_ascii_hexdigit() {
                        // Hex after the `=`: the first digit follows a
                        // space, the others follow a digit.
                        let before = &data[line_start..j];
                        let value = before.ends_with(b"= ")
                            || (before.contains(&b'=')
                                && before.last().is_some_and(u8::is_ascii_hexdigit));
                        if !value {
                            continue;
                        }
                        manifest_hex.push(e.data + j);
                    }
                }
            }
            if hrefs.contains(&e.name.as_str()) {
                disks.push(i);
            }
        }
        assert_eq!(disks.len(), hrefs.len(), "{name}: every href has an entry");
        assert!(!ovf_values.is_empty(), "{name}: OVF attribute values found");
        Base {
            name,
            bytes,
            hrefs: hrefs.iter().map(|h| (*h).to_owned()).collect(),
            layout,
            ovf_values,
            manifest_hex,
            disks,
        }
    }

    /// Where `at` lies in the base archive, for messages.
    fn locate(&self, at: usize) -> String {
        if let Some(&h) = self
            .layout
            .headers
            .iter()
            .find(|&&h| h <= at && at < h + BLOCK)
        {
            let owner = self
                .layout
                .entries
                .iter()
                .find(|e| e.start <= h && h <= e.header)
                .map_or("?", |e| e.name.as_str());
            let kind = if self.layout.entries.iter().any(|e| e.header == h) {
                "header"
            } else {
                "extended header"
            };
            return format!("{kind} of '{owner}' +{} ({})", at - h, header_field(at - h));
        }
        if let Some(&(s, e)) = self
            .layout
            .pax_data
            .iter()
            .find(|&&(s, e)| s <= at && at < e)
        {
            return format!("PAX records +{} of {}", at - s, e - s);
        }
        if let Some(e) = self
            .layout
            .entries
            .iter()
            .find(|e| e.data <= at && at < e.end())
        {
            return format!("data of '{}' +{}", e.name, at - e.data);
        }
        if at >= self.bytes.len() {
            "past the base's end".to_owned()
        } else {
            format!(
                "end-of-archive area +{}",
                at.saturating_sub(self.layout.end)
            )
        }
    }
}

const L64: Layout = Layout {
    size: 64 << 10,
    runs: &[
        Run {
            offset: 0,
            len: 20_000,
            fill: Fill::Random(31),
        },
        Run {
            offset: 40_960,
            len: 24_576,
            fill: Fill::Text,
        },
    ],
};

const L128: Layout = Layout {
    size: 128 << 10,
    runs: &[
        Run {
            offset: 0,
            len: 30_000,
            fill: Fill::Random(32),
        },
        Run {
            offset: 30_000,
            len: 10_000,
            fill: Fill::Zeros,
        },
        Run {
            offset: 98_304,
            len: 32_768,
            fill: Fill::Text,
        },
    ],
};

const L192: Layout = Layout {
    size: 192 << 10,
    runs: &[
        Run {
            offset: 512,
            len: 49_488,
            fill: Fill::Random(33),
        },
        Run {
            offset: 131_072,
            len: 65_536,
            fill: Fill::Text,
        },
    ],
};

/// `qemu-img convert` of `raw` into a qcow2 with `opts`, at `out`.
fn qcow2_with(raw: &Path, out: &Path, compressed: bool, opts: &str) -> PathBuf {
    let mut args: Vec<&OsStr> = ["convert", "-q", "-f", "raw", "-O", "qcow2", "-o", opts]
        .into_iter()
        .map(OsStr::new)
        .collect();
    if compressed {
        args.push(OsStr::new("-c"));
    }
    args.push(raw.as_os_str());
    args.push(out.as_os_str());
    tool("qemu-img", &args);
    out.to_owned()
}

/// The raw reference images the bases were made from, by disk href.
type References = BTreeMap<String, (PathBuf, u64)>;

/// Builds every base package inside `w`.
fn build_bases(w: &Work) -> (Vec<Base>, References) {
    let dir = w.root();
    let mut refs = References::new();
    let mut bases = Vec::new();
    let mut remember = |href: &str, raw: &Path, size: u64| {
        refs.insert(href.to_owned(), (raw.to_owned(), size));
    };

    // 1. A raw disk, OVF first, plus a skipped tpm.dat; ustar; no manifest.
    let raw = ova::prepare(dir, "b1", &L128, Source::Raw);
    remember("b1-disk1.img", &raw.raw, L128.size);
    let p = Ova::new()
        .disk(raw.disk(1, "b1-disk1.img"))
        .extra("tpm.dat", b"tpm state that is skipped\n")
        .format(TarFormat::Ustar)
        .build(dir, "b1.ova");
    bases.push(Base::new(
        "raw-ovf-first",
        fs::read(p).expect("read b1"),
        &["b1-disk1.img"],
    ));

    // 2. A qcow2 disk (4 KiB clusters), OVF last, SHA-256 manifest.
    let r2 = SMALL.write_raw(&dir.join("b2.raw"));
    let q2 = qcow2_with(
        &r2,
        &dir.join("b2.qcow2"),
        false,
        "compat=1.1,cluster_size=4096",
    );
    remember("b2-disk1.qcow2", &r2, SMALL.size);
    let p = Ova::new()
        .disk(Disk::new(
            1,
            "b2-disk1.qcow2",
            &q2,
            Source::Qcow2V3,
            SMALL.size,
        ))
        .manifest(Manifest::Sha256)
        .placement(Placement::OvfLast)
        .build(dir, "b2.ova");
    bases.push(Base::new(
        "qcow2-ovf-last-sha256",
        fs::read(p).expect("read b2"),
        &["b2-disk1.qcow2"],
    ));

    // 3. A VMDK streamOptimized disk written by qemu-img.
    let v = ova::prepare(dir, "b3", &L192, Source::Vmdk);
    remember("b3-disk1.vmdk", &v.raw, L192.size);
    let p = Ova::new()
        .disk(v.disk(1, "b3-disk1.vmdk"))
        .build(dir, "b3.ova");
    bases.push(Base::new(
        "vmdk-stream",
        fs::read(p).expect("read b3"),
        &["b3-disk1.vmdk"],
    ));

    // 4. gzip-compressed raw (two members), ovf:compression="gzip".
    let g = ova::prepare(dir, "b4", &L128, Source::GzipMulti);
    remember("b4-disk1.img", &g.raw, L128.size);
    let p = Ova::new()
        .disk(g.disk(1, "b4-disk1.img"))
        .build(dir, "b4.ova");
    bases.push(Base::new(
        "gzip-raw",
        fs::read(p).expect("read b4"),
        &["b4-disk1.img"],
    ));

    // 5. Two disks (raw, zlib-compressed qcow2 with 8 KiB clusters) and a
    //    SHA-1 manifest in the spaced form.
    let a = ova::prepare(dir, "b5a", &L64, Source::Raw);
    let r5 = L128.write_raw(&dir.join("b5b.raw"));
    let q5 = qcow2_with(&r5, &dir.join("b5b.qcow2"), true, "cluster_size=8192");
    remember("b5-disk1.img", &a.raw, L64.size);
    remember("b5-disk2.qcow2", &r5, L128.size);
    let p = Ova::new()
        .disk(a.disk(1, "b5-disk1.img"))
        .disk(Disk::new(
            2,
            "b5-disk2.qcow2",
            &q5,
            Source::Qcow2Zlib,
            L128.size,
        ))
        .manifest(Manifest::Sha1Spaced)
        .build(dir, "b5.ova");
    bases.push(Base::new(
        "two-disks-sha1",
        fs::read(p).expect("read b5"),
        &["b5-disk1.img", "b5-disk2.qcow2"],
    ));

    // 6. PAX: the OVF behind an `x` header with an mtime, a qcow2 v2 disk
    //    whose long name and size come from PAX records.
    let r6 = L64.write_raw(&dir.join("b6.raw"));
    let q6 = qcow2_with(
        &r6,
        &dir.join("b6.qcow2"),
        false,
        "compat=0.10,cluster_size=4096",
    );
    let disk = fs::read(&q6).expect("read b6 qcow2");
    let href = format!("b6-{}-disk1.qcow2", "pax-long-name".repeat(8));
    remember(&href, &r6, L64.size);
    let ovf = ovf_xml(&[OvfDisk {
        file_id: "file1".into(),
        href: href.clone(),
        size: disk.len() as u64,
        gzip: false,
        disk_id: "vmdisk1".into(),
        capacity: L64.size,
        mib_units: false,
        format_uri: Some(image::QCOW2_URI.into()),
        populated_size: None,
    }]);
    let mut t = TarWriter::new();
    t.pax(&[("mtime", "1700000000.5")]);
    t.file(OVF_NAME, ovf.as_bytes());
    t.pax(&[("path", &href), ("size", &disk.len().to_string())]);
    t.header(ustar_header(&href[..100], disk.len() as u64, b'0'));
    t.data(&disk);
    t.end();
    let p = dir.join("b6.ova");
    t.write_to(&p);
    bases.push(Base::new(
        "pax-qcow2",
        fs::read(p).expect("read b6"),
        &[href.as_str()],
    ));

    // 7. A VMDK monolithicSparse disk written by qemu-img (what it writes
    //    by default), with the zeroed-grain flag.
    let r7 = L192.write_raw(&dir.join("b7.raw"));
    let v7 = dir.join("b7.vmdk");
    tool(
        "qemu-img",
        &[
            OsStr::new("convert"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new("raw"),
            OsStr::new("-O"),
            OsStr::new("vmdk"),
            OsStr::new("-o"),
            OsStr::new("zeroed_grain=on"),
            r7.as_os_str(),
            v7.as_os_str(),
        ],
    );
    remember("b7-disk1.vmdk", &r7, L192.size);
    let p = Ova::new()
        .disk(Disk::new(1, "b7-disk1.vmdk", &v7, Source::Vmdk, L192.size))
        .build(dir, "b7.ova");
    bases.push(Base::new(
        "vmdk-sparse",
        fs::read(p).expect("read b7"),
        &["b7-disk1.vmdk"],
    ));

    (bases, refs)
}

// ---------------------------------------------------------------------------
// Mutations. Each applies itself to the buffer and returns a description.

/// A byte to write: random, a digit, or a value that means something to
/// tar, XML or a number parser.
fn interesting_byte(rng: &mut Rng) -> u8 {
    const SPECIAL: &[u8] = b"\x00\xff\x7f\x80 \"<>/.=\n7xL5gZ-";
    match rng.below(100) {
        0..35 => rng.next() as u8,
        35..60 => b'0' + rng.below(10) as u8,
        _ => *rng.pick(SPECIAL),
    }
}

/// A byte for messages: `'0'` when printable, else `0x10`.
fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("{b:#04x}")
    }
}

/// An offset aimed at structure: tar headers (mostly their size field),
/// the head of a disk entry, OVF attribute values, manifest hex, PAX
/// records, or anywhere.
fn spot(rng: &mut Rng, base: &Base, len: usize) -> usize {
    let at = match rng.below(100) {
        0..30 => {
            let h = *rng.pick(&base.layout.headers);
            h + match rng.below(100) {
                0..40 => rng.range(124, 136),
                40..55 => rng.range(148, 156),
                55..65 => 156,
                65..80 => {
                    let name_len = if rng.percent(70) { 16 } else { 100 };
                    rng.below(name_len)
                }
                80..90 => rng.range(257, 265),
                _ => rng.below(BLOCK),
            }
        }
        30..52 => {
            let e = &base.layout.entries[*rng.pick(&base.disks)];
            e.data
                + match rng.below(100) {
                    0..60 => rng.below(e.size.min(BLOCK)),
                    60..80 => rng.below(e.size.min(16 << 10)),
                    // Where VMDK markers and qcow2 tables start.
                    _ => {
                        (rng.below(e.size.div_ceil(BLOCK)) * BLOCK + rng.below(16)).min(e.size - 1)
                    }
                }
        }
        52..70 => *rng.pick(&base.ovf_values),
        70..78 if !base.manifest_hex.is_empty() => *rng.pick(&base.manifest_hex),
        78..85 if !base.layout.pax_data.is_empty() => {
            let (s, e) = *rng.pick(&base.layout.pax_data);
            rng.range(s, e)
        }
        _ => rng.below(len),
    };
    at.min(len - 1)
}

/// A size for a tar header's size field.
fn edited_size(rng: &mut Rng, old: usize, archive: usize) -> usize {
    match rng.below(11) {
        0 => 0,
        1 => old + 1,
        2 => old.saturating_sub(1),
        3 => old + BLOCK,
        4 => old.saturating_sub(BLOCK),
        5 => old * 2,
        6 => old / 2,
        7 => archive,
        8 => 0o777_7777_7777,
        9 => old + rng.range(1, 4096),
        _ => rng.below(archive * 2),
    }
}

/// After a byte of a header block other than its checksum changed: half
/// the time, recompute the checksum so that the edit reaches the parser
/// behind the checksum test. Returns what it did, for the description.
fn refresh_checksum(rng: &mut Rng, base: &Base, buf: &mut [u8], at: usize) -> &'static str {
    let Some(&h) = base
        .layout
        .headers
        .iter()
        .find(|&&h| h <= at && at < h + BLOCK)
    else {
        return "";
    };
    if (148..156).contains(&(at - h)) || h + BLOCK > buf.len() || rng.percent(50) {
        return "";
    }
    fix_checksum(&mut buf[h..h + BLOCK]);
    ", checksum recomputed"
}

/// One mutation of `buf` (never empty), derived from `base`'s structure.
fn mutate_once(rng: &mut Rng, base: &Base, buf: &mut Vec<u8>) -> String {
    let len = buf.len();
    let blocks = len.div_ceil(BLOCK);
    let header_block = |rng: &mut Rng| {
        let b = if rng.percent(50) {
            rng.pick(&base.layout.headers) / BLOCK
        } else {
            rng.below(blocks)
        };
        b.min(blocks - 1)
    };
    match rng.below(100) {
        0..24 => {
            let at = spot(rng, base, len);
            let bit = rng.below(8);
            buf[at] ^= 1 << bit;
            let sum = refresh_checksum(rng, base, buf, at);
            format!("flip bit {bit} at {at} ({}){sum}", base.locate(at))
        }
        24..44 => {
            let at = spot(rng, base, len);
            let mut value = interesting_byte(rng);
            if value == buf[at] {
                value ^= 0x01;
            }
            let old = buf[at];
            buf[at] = value;
            let sum = refresh_checksum(rng, base, buf, at);
            format!(
                "byte {at} {old:#04x} -> {value:#04x} ({}){sum}",
                base.locate(at)
            )
        }
        44..54 => {
            let cut = match rng.below(4) {
                0 => *rng.pick(&base.layout.headers) + rng.below(BLOCK),
                1 => {
                    let e = &base.layout.entries[*rng.pick(&base.disks)];
                    e.data + rng.below(e.size)
                }
                2 => rng.below(blocks) * BLOCK,
                _ => rng.below(len),
            }
            .min(len - 1);
            buf.truncate(cut);
            format!("truncate to {cut} bytes ({})", base.locate(cut))
        }
        54..60 => {
            let b = header_block(rng);
            let end = ((b + 1) * BLOCK).min(len);
            let copy = buf[b * BLOCK..end].to_vec();
            buf.splice(end..end, copy);
            format!("duplicate block {b} ({})", base.locate(b * BLOCK))
        }
        60..66 => {
            let b = header_block(rng);
            let end = ((b + 1) * BLOCK).min(len);
            buf.drain(b * BLOCK..end);
            format!("drop block {b} ({})", base.locate(b * BLOCK))
        }
        66..72 => {
            let a = header_block(rng);
            let b = rng.below(blocks);
            if a == b || (a + 1) * BLOCK > len || (b + 1) * BLOCK > len {
                return format!("swap blocks {a} and {b} (no-op)");
            }
            let (lo, hi) = (a.min(b), a.max(b));
            let (head, tail) = buf.split_at_mut(hi * BLOCK);
            head[lo * BLOCK..(lo + 1) * BLOCK].swap_with_slice(&mut tail[..BLOCK]);
            format!(
                "swap blocks {a} ({}) and {b} ({})",
                base.locate(a * BLOCK),
                base.locate(b * BLOCK)
            )
        }
        72..78 => {
            let n = rng.range(1, 4096);
            let mut extra = Vec::new();
            if rng.percent(30) {
                let name = if rng.percent(50) {
                    OVF_NAME
                } else {
                    rng.pick(&base.hrefs).as_str()
                };
                let name = &name[..name.len().min(100)];
                extra.extend_from_slice(&ustar_header(name, n as u64, b'0'));
            }
            extra.extend(rng.bytes(n));
            let total = extra.len();
            buf.extend(extra);
            format!("append {total} bytes")
        }
        78..91 => {
            let h = *rng.pick(&base.layout.headers);
            if h + BLOCK > len {
                return format!("edit size field at {h} (no-op: truncated)");
            }
            let old = octal_field(&base.bytes[h + 124..h + 136]);
            let size = edited_size(rng, old, len);
            let text = format!("{size:011o}\0");
            buf[h + 124..h + 136].copy_from_slice(&text.as_bytes()[..12]);
            let fix = rng.percent(65);
            if fix {
                fix_checksum(&mut buf[h..h + BLOCK]);
            }
            format!(
                "size field edit at {} {old} -> {size}, checksum {}",
                base.locate(h + 124),
                if fix { "recomputed" } else { "stale" }
            )
        }
        91..96 => {
            // Typeflags that mean something to some tar (links, devices,
            // directories, PAX and GNU extensions, contiguous files) and
            // some that mean nothing, which POSIX readers take as regular
            // files.
            const FLAGS: &[u8] = b"\x001234567xgLKVSAD8Z\x10\xb0";
            let h = *rng.pick(&base.layout.headers);
            if h + BLOCK > len {
                return format!("edit typeflag at {h} (no-op: truncated)");
            }
            let old = buf[h + 156];
            let mut flag = *rng.pick(FLAGS);
            if flag == old {
                flag = b'8';
            }
            buf[h + 156] = flag;
            fix_checksum(&mut buf[h..h + BLOCK]);
            format!(
                "typeflag edit at {} {} -> {}, checksum recomputed",
                base.locate(h + 156),
                show_byte(old),
                show_byte(flag)
            )
        }
        _ => {
            let n = base.layout.entries.len();
            let mut order: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut order);
            if order.iter().enumerate().all(|(i, &o)| i == o) {
                order.swap(0, n - 1);
            }
            if base.layout.end > len {
                return format!("reorder entries {order:?} (no-op: truncated)");
            }
            let mut out = Vec::with_capacity(len);
            for &i in &order {
                let e = &base.layout.entries[i];
                out.extend_from_slice(&buf[e.start..e.end()]);
            }
            out.extend_from_slice(&buf[base.layout.end..]);
            *buf = out;
            let names: Vec<&str> = order
                .iter()
                .map(|&i| base.layout.entries[i].name.as_str())
                .collect();
            format!("reorder entries to {names:?}")
        }
    }
}

/// The mutated package of one case: one to three mutations.
fn mutate(rng: &mut Rng, base: &Base) -> (Vec<u8>, String) {
    let mut buf = base.bytes.clone();
    let rounds = match rng.below(100) {
        0..88 => 1,
        88..96 => 2,
        _ => 3,
    };
    let mut what = Vec::new();
    // A round may turn out to be a no-op; go on until the bytes differ.
    while !buf.is_empty() && (what.len() < rounds || buf == base.bytes) {
        what.push(mutate_once(rng, base, &mut buf));
    }
    (buf, what.join("; then "))
}

// ---------------------------------------------------------------------------
// Running and judging one case.

/// How a case names its targets.
#[derive(Debug, Clone, Copy)]
enum Mode {
    DirRaw,
    DirQcow2,
    DiskRaw,
    DiskQcow2,
}

impl Mode {
    fn of(index: usize, bases: usize) -> Mode {
        match (index / bases) % 4 {
            0 => Mode::DirRaw,
            1 => Mode::DiskQcow2,
            2 => Mode::DirQcow2,
            _ => Mode::DiskRaw,
        }
    }

    fn format(self) -> &'static str {
        match self {
            Mode::DirRaw | Mode::DiskRaw => "raw",
            Mode::DirQcow2 | Mode::DiskQcow2 => "qcow2",
        }
    }

    /// The import command line (source `src`) into `out`.
    fn import(self, src: &OsStr, out: &Path, hrefs: &[String]) -> Cmd {
        let mut cmd = ovaio().arg("import").arg(src).arg("--json").arg("-q");
        match self {
            Mode::DirRaw | Mode::DirQcow2 => {
                cmd = cmd.arg("--dir").arg(out).arg("--format").arg(self.format());
            }
            Mode::DiskRaw | Mode::DiskQcow2 => {
                for (i, href) in hrefs.iter().enumerate() {
                    let mut spec = format!("{href}={}", out.join(format!("t{i}.img")).display());
                    if matches!(self, Mode::DiskQcow2) {
                        spec.push_str(":qcow2");
                    }
                    cmd = cmd.arg("--disk").arg(spec);
                }
            }
        }
        cmd
    }
}

/// Counters over the whole run.
#[derive(Debug, Default)]
struct Stats {
    import_exits: BTreeMap<i32, usize>,
    inspect_exits: BTreeMap<i32, usize>,
    by_base: BTreeMap<&'static str, (usize, usize)>,
    qcow2_checked: usize,
    oracle_missing: usize,
}

/// What the checks of one case found.
#[derive(Debug, Default)]
struct Verdict {
    problems: Vec<String>,
    import_exit: Option<i32>,
    inspect_exit: Option<i32>,
    qcow2_checked: bool,
    oracle_missing: bool,
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with(ERROR_PREFIX))
        .collect()
}

fn first_error(stderr: &str) -> String {
    let line = error_lines(stderr)
        .first()
        .copied()
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .to_owned();
    line.chars().take(300).collect()
}

/// The checks every run shares: an exit code, no crash, and the number of
/// error lines its outcome calls for.
fn common_checks(what: &str, run: &Outcome, problems: &mut Vec<String>) -> Option<i32> {
    let code = run.status.code();
    let Some(c) = code else {
        problems.push(format!("{what}: killed by {}", run.status));
        return None;
    };
    if c == 101 || run.stderr.contains("panicked") {
        problems.push(format!("{what}: panicked (exit {c})"));
    } else if !DOCUMENTED_EXITS.contains(&c) {
        problems.push(format!(
            "{what}: exit code {c} is not one of {DOCUMENTED_EXITS:?}"
        ));
    }
    let errors = error_lines(&run.stderr).len();
    if c == 0 && errors != 0 {
        problems.push(format!("{what}: exit 0 with {errors} error line(s)"));
    }
    if c != 0 && errors != 1 {
        problems.push(format!(
            "{what}: exit {c} with {errors} `{ERROR_PREFIX}` lines (expected exactly one)"
        ));
    }
    code
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
        })
        .unwrap_or_else(|e| vec![format!("<unreadable: {e}>")]);
    names.sort();
    names
}

/// Number of `Disk` elements in an OVF text (comments left out).
fn ovf_disk_count(text: &str) -> usize {
    let mut rest = text;
    let mut plain = String::new();
    while let Some(i) = rest.find("<!--") {
        plain.push_str(&rest[..i]);
        rest = rest[i..].find("-->").map_or("", |j| &rest[i + j + 3..]);
    }
    plain.push_str(rest);
    plain
        .match_indices("Disk")
        .filter(|&(i, _)| {
            // `<Disk` or `<prefix:Disk`, then the end of the element name.
            let before = &plain[..i];
            let opens = before.ends_with('<')
                || before.strip_suffix(':').is_some_and(|b| {
                    b.rfind('<').is_some_and(|j| {
                        let prefix = &b[j + 1..];
                        !prefix.is_empty() && prefix.bytes().all(|c| c.is_ascii_alphanumeric())
                    })
                });
            let after = plain.as_bytes().get(i + 4).copied();
            opens && after.is_some_and(|b| b.is_ascii_whitespace() || b == b'/' || b == b'>')
        })
        .count()
}

/// The entry `name` (its first occurrence) as GNU tar extracts it, when
/// GNU tar can.
fn gnu_tar_entry(pkg: &Path, name: &str) -> Option<Vec<u8>> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(pkg)
        .arg("--occurrence=1")
        .arg("--")
        .arg(name)
        .output()
        .expect("run tar");
    out.status.success().then_some(out.stdout)
}

/// The OVF entry `name` as GNU tar extracts it, when GNU tar can.
fn ovf_by_gnu_tar(pkg: &Path, name: &str) -> Option<String> {
    gnu_tar_entry(pkg, name).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Names of the entries GNU tar extracts as files (regular and contiguous
/// ones, and those of an unknown type, which POSIX readers take as
/// regular), when GNU tar can list the archive.
fn gnu_tar_files(pkg: &Path) -> Option<Vec<String>> {
    let out = Command::new("tar")
        .arg("-tvf")
        .arg(pkg)
        .output()
        .expect("run tar");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let names = text
        .lines()
        .filter(|l| l.starts_with(['-', 'C', '?']))
        .filter_map(|l| {
            // mode owner size date time name[ unknown file type ...]
            let mut rest = l;
            for _ in 0..5 {
                rest = rest.trim_start();
                rest = &rest[rest.find(' ')?..];
            }
            let name = &rest[1..];
            Some(
                name.split_once(" unknown file type ")
                    .map_or(name, |(n, _)| n)
                    .to_owned(),
            )
        })
        .collect();
    Some(names)
}

/// One manifest line, `ALG(name)= hex` or `ALG (name) = hex`.
fn manifest_line(line: &str) -> Option<(String, String, String)> {
    let (before, hex) = line.rsplit_once('=')?;
    let before = before.trim_end().strip_suffix(')')?;
    let (alg, name) = before.split_once('(')?;
    Some((
        alg.trim().to_ascii_uppercase(),
        name.to_owned(),
        hex.trim().to_ascii_lowercase(),
    ))
}

fn digest_hex(alg: &str, data: &[u8]) -> Option<String> {
    use sha2::Digest;
    Some(match alg {
        "SHA1" => hex::encode(sha1::Sha1::digest(data)),
        "SHA256" => hex::encode(sha2::Sha256::digest(data)),
        "SHA512" => hex::encode(sha2::Sha512::digest(data)),
        _ => return None,
    })
}

/// A success that says the manifest was verified: every line of the
/// manifest GNU tar extracts holds the digest of the entry GNU tar
/// extracts under that name.
fn check_manifest(pkg: &Path, json: &Value, v: &mut Verdict) {
    let Some(names) = gnu_tar_files(pkg) else {
        v.oracle_missing = true;
        return;
    };
    let manifests: Vec<&String> = names.iter().filter(|n| n.ends_with(".mf")).collect();
    if json["manifest"] != "verified" {
        if !manifests.is_empty() && json["manifest"] != "not verified" {
            v.problems.push(format!(
                "import: GNU tar extracts the manifest {manifests:?} as a file, but the summary says manifest {}",
                json["manifest"]
            ));
        }
        return;
    }
    let [mf] = manifests.as_slice() else {
        v.problems.push(format!(
            "import: manifest verified, but GNU tar lists manifests {manifests:?}"
        ));
        return;
    };
    let Some(text) = gnu_tar_entry(pkg, mf) else {
        v.oracle_missing = true;
        return;
    };
    for line in String::from_utf8_lossy(&text).lines() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((alg, name, hex)) = manifest_line(line) else {
            v.problems.push(format!(
                "import: manifest verified, but its line {line:?} does not parse"
            ));
            continue;
        };
        let Some(data) = gnu_tar_entry(pkg, &name) else {
            v.problems.push(format!(
                "import: manifest verified, but GNU tar finds no entry '{name}' it lists"
            ));
            continue;
        };
        match digest_hex(&alg, &data) {
            Some(d) if d == hex => {}
            Some(d) => v.problems.push(format!(
                "import: manifest verified, but {alg} of '{name}' as GNU tar extracts it is {d}, the manifest says {hex}"
            )),
            None => v.problems.push(format!(
                "import: manifest verified, with an unknown algorithm in {line:?}"
            )),
        }
    }
}

/// A success: the target holds what `qemu-img` reads from the entry GNU
/// tar extracts (inflated when the summary says gzip), when both can read
/// it. Not for a streamOptimized VMDK: ovaio places each grain where its
/// marker says, in one pass, while qemu-img follows the grain directory,
/// so the two legitimately differ once that metadata is damaged. A
/// monolithicSparse VMDK has no markers: both read it through its grain
/// directory, so they must agree.
fn check_content(pkg: &Path, d: &Value, target: &Path, scratch: &Path, v: &mut Verdict) {
    let href = d["href"].as_str().unwrap_or("?");
    let source = d["source_format"].as_str().unwrap_or("raw");
    if !matches!(source, "raw" | "qcow2" | "vmdk") {
        return;
    }
    let Some(mut entry) = gnu_tar_entry(pkg, href) else {
        v.oracle_missing = true;
        return;
    };
    if d["compression"] == "gzip" {
        let mut inflated = Vec::new();
        let mut dec = flate2::read::MultiGzDecoder::new(entry.as_slice());
        if std::io::Read::read_to_end(&mut dec, &mut inflated).is_err() {
            v.oracle_missing = true;
            return;
        }
        entry = inflated;
    }
    // Compressed grains and markers (flag bits 16 and 17) make a stream.
    let stream_flags = 0x0003_0000;
    let flags = entry.get(8..12).map_or(stream_flags, |f| {
        u32::from_le_bytes([f[0], f[1], f[2], f[3]])
    });
    if source == "vmdk" && flags & stream_flags == stream_flags {
        return;
    }
    let copy = scratch.join("entry-for-qemu-img");
    fs::write(&copy, &entry).expect("write entry copy");
    let target_format = d["target_format"].as_str().unwrap_or("raw");
    let cmp = Command::new("qemu-img")
        .args(["compare", "-q", "-f", source, "-F", target_format])
        .arg(&copy)
        .arg(target)
        .output()
        .expect("run qemu-img compare");
    match cmp.status.code() {
        Some(0) => {}
        Some(1) => v.problems.push(format!(
            "import: target of '{href}' differs from qemu-img's reading of the {source} entry GNU tar extracts"
        )),
        _ => v.oracle_missing = true,
    }
    let _ = fs::remove_file(&copy);
}

/// Checks a successful import's summary against the target directory.
fn check_success(
    run: &Outcome,
    mode: Mode,
    pkg: &Path,
    out: &Path,
    qcow2_successes: &AtomicUsize,
    v: &mut Verdict,
) {
    let json: Value = match serde_json::from_str(run.stdout.trim()) {
        Ok(j) => j,
        Err(e) => {
            v.problems
                .push(format!("import: exit 0 but stdout is not JSON ({e})"));
            return;
        }
    };
    let Some(disks) = json["disks"].as_array() else {
        v.problems
            .push("import: exit 0 but the summary has no disks array".into());
        return;
    };
    if disks.is_empty() {
        v.problems
            .push("import: exit 0 with no disk imported".into());
    }
    match json["ovf"].as_str().and_then(|n| ovf_by_gnu_tar(pkg, n)) {
        Some(text) => {
            let expected = ovf_disk_count(&text);
            if expected != disks.len() {
                v.problems.push(format!(
                    "import: summary lists {} disk(s), the OVF GNU tar extracts has {expected} Disk element(s)",
                    disks.len()
                ));
            }
        }
        None => v.oracle_missing = true,
    }
    check_manifest(pkg, &json, v);
    let scratch = out.parent().expect("target dir has a parent");
    let mut targets = Vec::new();
    for d in disks {
        let href = d["href"].as_str().unwrap_or("?");
        let Some(target) = d["target"].as_str().map(PathBuf::from) else {
            v.problems
                .push(format!("import: summary disk '{href}' has no target"));
            continue;
        };
        if target.parent() != Some(out) {
            v.problems.push(format!(
                "import: target {} of '{href}' is not in {}",
                target.display(),
                out.display()
            ));
        }
        if d["target_format"] != mode.format() {
            v.problems.push(format!(
                "import: '{href}' written as {} instead of {}",
                d["target_format"],
                mode.format()
            ));
        }
        let Ok(meta) = fs::metadata(&target) else {
            v.problems.push(format!(
                "import: target {} of '{href}' does not exist",
                target.display()
            ));
            continue;
        };
        if !meta.is_file() {
            v.problems
                .push(format!("import: target {} is not a file", target.display()));
            continue;
        }
        let capacity = d["capacity"].as_u64();
        if mode.format() == "raw" && capacity != Some(meta.len()) {
            v.problems.push(format!(
                "import: raw target of '{href}' is {} bytes, capacity {capacity:?}",
                meta.len()
            ));
        }
        if mode.format() == "qcow2"
            && qcow2_successes
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(QCOW2_CHECK_EVERY)
        {
            v.qcow2_checked = true;
            let check = Command::new("qemu-img")
                .args(["check", "-q", "-f", "qcow2"])
                .arg(&target)
                .output()
                .expect("run qemu-img check");
            if !check.status.success() {
                v.problems.push(format!(
                    "import: qemu-img check of '{href}' target failed: {}",
                    String::from_utf8_lossy(&check.stderr).trim()
                ));
            } else {
                let info = image::info(&target, "qcow2");
                if info["virtual-size"].as_u64() != capacity {
                    v.problems.push(format!(
                        "import: qcow2 target of '{href}' has virtual size {}, capacity {capacity:?}",
                        info["virtual-size"]
                    ));
                }
            }
        }
        check_content(pkg, d, &target, scratch, v);
        targets.push(target.file_name().map(|n| n.to_string_lossy().into_owned()));
    }
    let left = listing(out);
    for name in &left {
        if name.ends_with(".partial") {
            v.problems
                .push(format!("import: exit 0 but {name} is left"));
        } else if !targets.iter().any(|t| t.as_deref() == Some(name.as_str())) {
            v.problems
                .push(format!("import: stray file {name} beside the targets"));
        }
    }
}

/// Builds, runs and judges case `index`.
fn run_case(
    seed: u64,
    index: usize,
    bases: &[Base],
    qcow2_successes: &AtomicUsize,
) -> (Verdict, Vec<u8>, String, Mode) {
    let mut rng = Rng::for_case(seed, index);
    let base = &bases[index % bases.len()];
    let mode = Mode::of(index, bases.len());
    let (pkg_bytes, what) = mutate(&mut rng, base);
    let import_stdin = rng.percent(20);
    let inspect_stdin = rng.percent(20);

    let w = Work::new();
    let pkg = w.path("pkg.ova");
    fs::write(&pkg, &pkg_bytes).expect("write mutated package");
    let out = w.mkdir("out");
    let mut v = Verdict::default();

    let src = if import_stdin {
        OsStr::new("-")
    } else {
        pkg.as_os_str()
    };
    let mut cmd = mode.import(src, &out, &base.hrefs);
    if import_stdin {
        cmd = cmd.stdin(pkg_bytes.clone());
    }
    let run = cmd.run();
    v.import_exit = common_checks("import", &run, &mut v.problems);
    match v.import_exit {
        Some(0) => check_success(&run, mode, &pkg, &out, qcow2_successes, &mut v),
        _ => {
            let left = listing(&out);
            if !left.is_empty() {
                v.problems.push(format!(
                    "import: failed and left {left:?} in the target directory"
                ));
            }
        }
    }
    if !v.problems.is_empty() && !run.stderr.trim().is_empty() {
        v.problems
            .push(format!("import stderr: {}", first_error(&run.stderr)));
    }

    let mut cmd = ovaio().arg("inspect");
    cmd = if inspect_stdin {
        cmd.arg("-").stdin(pkg_bytes.clone())
    } else {
        cmd.arg(&pkg)
    };
    let run = cmd.arg("--json").run();
    let before = v.problems.len();
    v.inspect_exit = common_checks("inspect", &run, &mut v.problems);
    if v.inspect_exit == Some(0) && serde_json::from_str::<Value>(run.stdout.trim()).is_err() {
        v.problems
            .push("inspect: exit 0 but stdout is not JSON".into());
    }
    if v.problems.len() > before && !run.stderr.trim().is_empty() {
        v.problems
            .push(format!("inspect stderr: {}", first_error(&run.stderr)));
    }
    let how = format!(
        "{what}; import from {}, inspect from {}",
        if import_stdin { "stdin" } else { "file" },
        if inspect_stdin { "stdin" } else { "file" }
    );
    (v, pkg_bytes, how, mode)
}

fn seed_from_env() -> u64 {
    match std::env::var("OVAIO_MUTATION_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("OVAIO_MUTATION_SEED={s}: {e}"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

/// `OVAIO_MUTATION_CASES`, or [`CASES`].
fn cases_from_env() -> usize {
    std::env::var("OVAIO_MUTATION_CASES").map_or(CASES, |s| {
        s.trim()
            .parse()
            .unwrap_or_else(|e| panic!("OVAIO_MUTATION_CASES={s}: {e}"))
    })
}

/// Where packages of failing cases are kept after the run.
fn keep_dir(seed: u64) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("import-mutations")
        .join(format!("seed-{seed:#x}"))
}

#[test]
fn mutated_packages_fail_cleanly_or_import_completely() {
    let started = Instant::now();
    let seed = seed_from_env();
    let only: Option<usize> = std::env::var("OVAIO_MUTATION_CASE").ok().map(|s| {
        s.trim()
            .parse()
            .unwrap_or_else(|e| panic!("OVAIO_MUTATION_CASE={s}: {e}"))
    });
    let w = Work::new();
    let (bases, _) = build_bases(&w);
    let indices: Vec<usize> = match only {
        Some(i) => vec![i],
        None => (0..cases_from_env()).collect(),
    };

    let next = AtomicUsize::new(0);
    let qcow2_successes = AtomicUsize::new(0);
    let stats = Mutex::new(Stats::default());
    let failures: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    let keep = keep_dir(seed);
    std::thread::scope(|s| {
        for _ in 0..THREADS.min(indices.len()) {
            s.spawn(|| {
                while let Some(&index) = indices.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let base = &bases[index % bases.len()];
                    let result = panic::catch_unwind(AssertUnwindSafe(|| {
                        run_case(seed, index, &bases, &qcow2_successes)
                    }));
                    let (v, pkg, how, mode) = match result {
                        Ok(r) => r,
                        Err(e) => {
                            let msg = e
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                                .unwrap_or_default();
                            failures.lock().expect("failures").push((
                                index,
                                format!(
                                    "case {index} (seed {seed:#x}, base {}): the harness panicked: {msg}",
                                    base.name
                                ),
                            ));
                            continue;
                        }
                    };
                    {
                        let mut st = stats.lock().expect("stats");
                        if let Some(c) = v.import_exit {
                            *st.import_exits.entry(c).or_default() += 1;
                            let e = st.by_base.entry(base.name).or_default();
                            if c == 0 {
                                e.0 += 1;
                            } else {
                                e.1 += 1;
                            }
                        }
                        if let Some(c) = v.inspect_exit {
                            *st.inspect_exits.entry(c).or_default() += 1;
                        }
                        st.qcow2_checked += usize::from(v.qcow2_checked);
                        st.oracle_missing += usize::from(v.oracle_missing);
                    }
                    if !v.problems.is_empty() {
                        fs::create_dir_all(&keep).expect("create keep dir");
                        let saved = keep.join(format!("case-{index}.ova"));
                        fs::write(&saved, &pkg).expect("save failing package");
                        failures.lock().expect("failures").push((
                            index,
                            format!(
                                "case {index} (seed {seed:#x}, base {}, target {mode:?}, {how}): {} [saved {}]",
                                base.name,
                                v.problems.join(" | "),
                                saved.display()
                            ),
                        ));
                    }
                }
            });
        }
    });

    let stats = stats.into_inner().expect("stats");
    let mut failures = failures.into_inner().expect("failures");
    failures.sort();
    let elapsed = started.elapsed();
    println!(
        "seed {seed:#x}: {} case(s) in {elapsed:.1?}; import exits {:?}; inspect exits {:?}; \
         per base (ok, failed) {:?}; qcow2 targets checked {}; GNU tar or qemu-img oracle unavailable after a success {}",
        indices.len(),
        stats.import_exits,
        stats.inspect_exits,
        stats.by_base,
        stats.qcow2_checked,
        stats.oracle_missing,
    );

    let mut report: Vec<String> = failures
        .iter()
        .take(REPORT_LINES)
        .map(|(_, m)| m.clone())
        .collect();
    if failures.len() > REPORT_LINES {
        report.push(format!("... and {} more", failures.len() - REPORT_LINES));
    }
    assert!(
        failures.is_empty(),
        "{} of {} mutated package(s) broke the import/inspect contract (seed {seed:#x}; \
         rerun one with OVAIO_MUTATION_SEED={seed:#x} OVAIO_MUTATION_CASE=<index>):\n{}",
        failures.len(),
        indices.len(),
        report.join("\n")
    );

    if only.is_none() {
        // The mutations must exercise both outcomes on every base, and
        // the sampled qcow2 check must have run.
        let imports: usize = stats.import_exits.values().sum();
        assert!(
            imports >= 1000,
            "seed {seed:#x}: only {imports} import runs"
        );
        let ok = stats.import_exits.get(&0).copied().unwrap_or(0);
        assert!(
            ok * 20 >= imports && ok * 10 <= imports * 7,
            "seed {seed:#x}: {ok} of {imports} mutated imports succeeded; the mutations are too weak or too strong"
        );
        for b in &bases {
            let (ok, bad) = stats.by_base.get(b.name).copied().unwrap_or_default();
            assert!(
                ok > 0 && bad > 0,
                "seed {seed:#x}: base {} had {ok} successful and {bad} failed imports",
                b.name
            );
        }
        assert!(
            stats.import_exits.keys().filter(|&&c| c != 0).count() >= 3,
            "seed {seed:#x}: failures show too few exit codes: {:?}",
            stats.import_exits
        );
        assert!(
            stats.qcow2_checked >= 2,
            "seed {seed:#x}: only {} qcow2 target(s) checked",
            stats.qcow2_checked
        );
    }
}

// ---------------------------------------------------------------------------
// The harness itself.

/// Every base package is valid: GNU tar lists what the walker found, and
/// each imports completely in every target mode, content equal to its
/// source.
#[test]
fn base_packages_import_in_every_mode() {
    let w = Work::new();
    let (bases, refs) = build_bases(&w);
    for (bi, base) in bases.iter().enumerate() {
        let pkg = w.path(&format!("base-{bi}.ova"));
        fs::write(&pkg, &base.bytes).expect("write base");
        let listed = suptar::list(&pkg);
        let names: Vec<&str> = listed.iter().map(|l| l.name.as_str()).collect();
        let walked: Vec<&str> = base
            .layout
            .entries
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, walked, "{}: entries", base.name);
        for (l, e) in listed.iter().zip(&base.layout.entries) {
            assert_eq!(l.size as usize, e.size, "{}: size of {}", base.name, e.name);
            assert_eq!(
                l.header_offset as usize, e.header,
                "{}: header of {}",
                base.name, e.name
            );
        }
        assert_eq!(
            gnu_tar_files(&pkg).as_deref(),
            Some(
                walked
                    .iter()
                    .map(|n| (*n).to_owned())
                    .collect::<Vec<_>>()
                    .as_slice()
            ),
            "{}: GNU tar's files",
            base.name
        );
        let ovf = ovf_by_gnu_tar(&pkg, OVF_NAME).expect("GNU tar extracts the OVF");
        assert_eq!(ovf_disk_count(&ovf), base.hrefs.len(), "{}", base.name);

        for m in 0..4 {
            let mode = Mode::of(m * bases.len(), bases.len());
            let out = w.mkdir(&format!("out-{bi}-{m}"));
            let run = mode.import(pkg.as_os_str(), &out, &base.hrefs).run();
            run.assert_success();
            let mut v = Verdict::default();
            let counter = AtomicUsize::new(0);
            check_success(&run, mode, &pkg, &out, &counter, &mut v);
            assert!(
                v.problems.is_empty(),
                "{} {mode:?}: {:?}",
                base.name,
                v.problems
            );
            assert!(!v.oracle_missing, "{}: OVF oracle", base.name);
            assert_eq!(v.qcow2_checked, mode.format() == "qcow2");
            for d in run.json()["disks"].as_array().expect("disks") {
                let (raw, size) = &refs[d["href"].as_str().expect("href")];
                assert_eq!(d["capacity"].as_u64(), Some(*size));
                image::assert_same_content(
                    raw,
                    Path::new(d["target"].as_str().expect("target")),
                    mode.format(),
                );
            }
        }
        ovaio()
            .arg("inspect")
            .arg(&pkg)
            .arg("--json")
            .run()
            .assert_success();
    }
}

/// The oracles reject what they must: a failure with two error lines or a
/// leftover file, a summary whose disk count disagrees with the OVF.
#[test]
fn judges_catch_broken_outcomes() {
    let w = Work::new();
    let (bases, _) = build_bases(&w);
    let base = &bases[4];
    let pkg = w.path("two.ova");
    fs::write(&pkg, &base.bytes).expect("write base");
    let out = w.mkdir("out");
    let run = Mode::DirRaw
        .import(pkg.as_os_str(), &out, &base.hrefs)
        .run();
    run.assert_success();

    // A stray file beside the targets, and a leftover .partial.
    fs::write(out.join("junk.partial"), b"x").expect("write junk");
    let mut v = Verdict::default();
    check_success(&run, Mode::DirRaw, &pkg, &out, &AtomicUsize::new(1), &mut v);
    assert!(
        v.problems.iter().any(|p| p.contains("junk.partial")),
        "{:?}",
        v.problems
    );
    fs::remove_file(out.join("junk.partial")).expect("remove junk");

    // A summary that drops one disk.
    let mut json = run.json();
    json["disks"].as_array_mut().expect("disks").pop();
    let fake = Outcome {
        args: run.args.clone(),
        status: run.status,
        stdout: json.to_string(),
        stderr: String::new(),
    };
    let mut v = Verdict::default();
    check_success(
        &fake,
        Mode::DirRaw,
        &pkg,
        &out,
        &AtomicUsize::new(1),
        &mut v,
    );
    assert!(
        v.problems.iter().any(|p| p.contains("Disk element")),
        "{:?}",
        v.problems
    );

    // A summary that says the manifest is absent, or verified although one
    // of its digests is wrong.
    let json = run.json();
    let mut v = Verdict::default();
    check_manifest(&pkg, &json, &mut v);
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    let mut absent = json.clone();
    absent["manifest"] = "absent".into();
    check_manifest(&pkg, &absent, &mut v);
    assert!(
        v.problems.iter().any(|p| p.contains("manifest")),
        "{:?}",
        v.problems
    );
    let mut lying = base.bytes.clone();
    let at = base.manifest_hex[50];
    lying[at] = if lying[at] == b'0' { b'1' } else { b'0' };
    let lying_pkg = w.path("lying.ova");
    fs::write(&lying_pkg, &lying).expect("write lying package");
    let mut v = Verdict::default();
    check_manifest(&lying_pkg, &json, &mut v);
    assert!(
        v.problems.iter().any(|p| p.contains("the manifest says")),
        "{:?}",
        v.problems
    );

    // An entry of an unknown type is a file to GNU tar; a dump directory
    // or a volume label is not.
    let mf = base.layout.entries.last().expect("manifest entry");
    assert!(mf.name.ends_with(".mf"));
    for (flag, listed) in [
        (b'7', true),
        (b'8', true),
        (0x10, true),
        (b'D', false),
        (b'V', false),
    ] {
        let mut odd = base.bytes.clone();
        odd[mf.header + 156] = flag;
        fix_checksum(&mut odd[mf.header..mf.header + BLOCK]);
        let odd_pkg = w.path("odd.ova");
        fs::write(&odd_pkg, &odd).expect("write odd package");
        let files = gnu_tar_files(&odd_pkg).expect("GNU tar lists it");
        assert_eq!(
            files.contains(&mf.name),
            listed,
            "typeflag {flag:#x}: {files:?}"
        );
        assert_eq!(
            files.len(),
            base.layout.entries.len() - usize::from(!listed)
        );
    }

    // A target whose content is not the entry's.
    let d = &json["disks"][1];
    let target = PathBuf::from(d["target"].as_str().expect("target"));
    let mut v = Verdict::default();
    check_content(&pkg, d, &target, w.root(), &mut v);
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .expect("open target");
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 70_000).expect("change target");
    check_content(&pkg, d, &target, w.root(), &mut v);
    assert!(
        v.problems.iter().any(|p| p.contains("differs")),
        "{:?}",
        v.problems
    );

    // A failure with two error lines, and a success with one.
    let mut problems = Vec::new();
    let failed = ovaio().arg("inspect").arg(w.path("absent.ova")).run();
    assert_eq!(common_checks("inspect", &failed, &mut problems), Some(4));
    assert!(problems.is_empty(), "{problems:?}");
    let doubled = Outcome {
        stderr: format!("{}{}", failed.stderr, failed.stderr),
        ..failed
    };
    common_checks("inspect", &doubled, &mut problems);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let noisy = Outcome {
        stderr: "ovaio: error: x\nthread 'main' panicked at src/x.rs".into(),
        ..run
    };
    let mut problems = Vec::new();
    common_checks("import", &noisy, &mut problems);
    assert_eq!(problems.len(), 2, "{problems:?}");
}

/// The mutators do what they say: a recomputed checksum is the one tar
/// writes, the walker reads a PAX size, reordering keeps every entry, and
/// a case is the same bytes each time it is built.
#[test]
fn mutators_are_sound_and_reproducible() {
    let mut h = ustar_header("disk.img", 12_345, b'0');
    let good = h;
    h[148..156].copy_from_slice(b"00000000");
    fix_checksum(&mut h);
    assert_eq!(h, good);

    let w = Work::new();
    let (bases, _) = build_bases(&w);
    let pax = &bases[5];
    assert_eq!(pax.layout.pax_data.len(), 2);
    assert!(pax.layout.entries[1].name.len() > 100);
    assert!(!bases[1].manifest_hex.is_empty());
    assert_eq!(bases[1].manifest_hex.len(), 2 * 64);
    assert_eq!(bases[4].manifest_hex.len(), 3 * 40);

    let mut seen = std::collections::BTreeSet::new();
    for index in 0..600 {
        let base = &bases[index % bases.len()];
        let (a, what_a) = mutate(&mut Rng::for_case(DEFAULT_SEED, index), base);
        let (b, what_b) = mutate(&mut Rng::for_case(DEFAULT_SEED, index), base);
        assert_eq!(a, b, "case {index} is not reproducible");
        assert_eq!(what_a, what_b);
        assert_ne!(
            a, base.bytes,
            "case {index} did not change the package: {what_a}"
        );
        seen.insert(what_a.split(' ').next().map(str::to_owned));
        if what_a.starts_with("reorder entries to") && !what_a.contains("; then") {
            let pkg = w.path(&format!("reordered-{index}.ova"));
            fs::write(&pkg, &a).expect("write reordered");
            let mut listed: Vec<String> = suptar::list(&pkg).into_iter().map(|l| l.name).collect();
            let mut names: Vec<String> =
                base.layout.entries.iter().map(|e| e.name.clone()).collect();
            listed.sort();
            names.sort();
            assert_eq!(listed, names, "case {index}: {what_a}");
        }
    }
    for kind in [
        "flip",
        "byte",
        "truncate",
        "duplicate",
        "drop",
        "swap",
        "append",
        "size",
        "typeflag",
        "reorder",
    ] {
        assert!(
            seen.contains(&Some(kind.to_owned())),
            "no {kind} mutation in {seen:?}"
        );
    }
}
