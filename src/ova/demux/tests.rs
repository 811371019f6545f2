//! Tests of the tar demultiplexer: a small in-test writer, GNU tar as an
//! oracle, split-point equivalence and named regressions.

use crate::test_support::Rng;
use std::path::Path;
use std::process::Command;

use super::fuzz::{Owned, run_split};
use super::*;

// ---------------------------------------------------------------- writer

/// Sets the checksum field of a header block (unsigned sum).
fn set_checksum(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// A POSIX ustar header with an octal size.
fn ustar(name: &str, size: u64, flag: u8) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = flag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    set_checksum(&mut h);
    h
}

/// Rewrites the size field with GNU base-256 `bytes` (12 bytes).
fn with_base256(mut h: [u8; BLOCK], field: [u8; 12]) -> [u8; BLOCK] {
    h[124..136].copy_from_slice(&field);
    set_checksum(&mut h);
    h
}

fn base256(v: u64) -> [u8; 12] {
    let mut f = [0u8; 12];
    f[0] = 0x80;
    f[4..].copy_from_slice(&v.to_be_bytes());
    f
}

fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}")
}

#[derive(Default)]
struct W {
    out: Vec<u8>,
}

impl W {
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }
    fn pad(&mut self) -> &mut Self {
        let n = header::padding(self.out.len() as u64) as usize;
        self.out.resize(self.out.len() + n, 0);
        self
    }
    fn block(&mut self, h: [u8; BLOCK]) -> &mut Self {
        self.raw(&h)
    }
    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.block(ustar(name, data.len() as u64, b'0'));
        self.raw(data).pad()
    }
    fn ext(&mut self, flag: u8, content: &[u8]) -> &mut Self {
        self.block(ustar("././@LongLink", content.len() as u64, flag));
        self.raw(content).pad()
    }
    fn pax(&mut self, records: &[(&str, &str)]) -> &mut Self {
        let c: String = records.iter().map(|(k, v)| pax_record(k, v)).collect();
        self.ext(b'x', c.as_bytes())
    }
    fn end(&mut self) -> &mut Self {
        self.raw(&[0u8; 2 * BLOCK])
    }
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

// --------------------------------------------------------------- helpers

fn run(data: &[u8]) -> (Vec<Owned>, Result<(), TarError>) {
    run_split(data, &[usize::MAX])
}

fn begin(name: &str, size: u64, t: EntryType, header_offset: u64, data_offset: u64) -> Owned {
    Owned::Begin(EntryHeader {
        name: name.to_owned(),
        size,
        entry_type: t,
        header_offset,
        data_offset,
    })
}

fn begins(events: &[Owned]) -> Vec<&EntryHeader> {
    events
        .iter()
        .filter_map(|e| match e {
            Owned::Begin(h) => Some(h),
            _ => None,
        })
        .collect()
}

/// (name, content) of every entry.
fn contents(events: &[Owned]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in events {
        match e {
            Owned::Begin(h) => out.push((h.name.clone(), Vec::new())),
            Owned::Data(d) => out.last_mut().unwrap().1.extend_from_slice(d),
            _ => {}
        }
    }
    out
}

/// Whole, random small pieces, byte by byte and every two-way split give
/// the same result as `run`.
fn assert_split_invariant(data: &[u8]) {
    let whole = run(data);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ data.len() as u64);
    for _ in 0..4 {
        let cuts: Vec<usize> = (0..64).map(|_| 1 + (rng.next() % 97) as usize).collect();
        assert_eq!(run_split(data, &cuts), whole, "random pieces");
    }
    assert_eq!(run_split(data, &[1]), whole, "byte by byte");
    for at in 1..data.len() {
        assert_eq!(run_split(data, &[at, usize::MAX]), whole, "split at {at}");
    }
    fuzz_entry(data);
}

// ----------------------------------------------------------------- basics

#[test]
fn ustar_entries_and_eof() {
    let data = W::default()
        .file("vm.ovf", b"<xml/>")
        .block(ustar("dir/", 0, b'5'))
        .file("empty", b"")
        .end()
        .raw(&[0u8; 4096])
        .take();
    let (ev, r) = run(&data);
    r.unwrap();
    assert_eq!(
        ev,
        vec![
            begin("vm.ovf", 6, EntryType::Regular, 0, 512),
            Owned::Data(b"<xml/>".to_vec()),
            Owned::End,
            begin("dir/", 0, EntryType::Directory, 1024, 1536),
            Owned::End,
            begin("empty", 0, EntryType::Regular, 1536, 2048),
            Owned::End,
            Owned::Eof,
        ]
    );
    assert_split_invariant(&data);
}

#[test]
fn typeflags() {
    let mut w = W::default();
    for (name, flag) in [("a", b'0'), ("b", 0), ("c", b'7'), ("d", b'5'), ("e", b'2')] {
        w.block(ustar(name, 0, flag));
    }
    w.block(ustar("f/", 0, 0)).file("g", b"x");
    w.block(ustar("h", 1, b'N')).raw(b"y").pad();
    let data = w.end().take();
    let (ev, r) = run(&data);
    r.unwrap();
    let types: Vec<_> = begins(&ev).iter().map(|h| h.entry_type).collect();
    use EntryType::*;
    assert_eq!(
        types,
        [
            Regular,
            Regular,
            Regular,
            Directory,
            Other(b'2'),
            Directory,
            Regular,
            Other(b'N')
        ]
    );
    assert_split_invariant(&data);
}

#[test]
fn ustar_prefix_joined() {
    let mut h = ustar("disk.vmdk", 3, b'0');
    h[345..352].copy_from_slice(b"a/b/cde");
    set_checksum(&mut h);
    let data = W::default().block(h).raw(b"abc").pad().end().take();
    let (ev, r) = run(&data);
    r.unwrap();
    assert_eq!(begins(&ev)[0].name, "a/b/cde/disk.vmdk");
}

#[test]
fn gnu_magic_ignores_prefix_area() {
    let mut h = ustar("disk.vmdk", 0, b'0');
    h[257..265].copy_from_slice(b"ustar  \0");
    h[345..350].copy_from_slice(b"junk!"); // GNU atime field
    set_checksum(&mut h);
    let data = W::default().block(h).end().take();
    assert_eq!(begins(&run(&data).0)[0].name, "disk.vmdk");
}

#[test]
fn v7_header_and_signed_checksum() {
    // v7: no magic; old-style directory with a trailing slash.
    let mut h = [0u8; BLOCK];
    h[..4].copy_from_slice(b"old/");
    h[124..136].copy_from_slice(b"         0 \0");
    h[100..108].copy_from_slice(b"000755 \0");
    set_checksum(&mut h);
    // A name byte >= 0x80 and a checksum written as a signed sum.
    let mut s = [0u8; BLOCK];
    s[..3].copy_from_slice(&[b'n', 0xe9, b'e']);
    s[124..136].copy_from_slice(b" 5 \0\0\0\0\0\0\0\0\0");
    s[156] = b'0';
    s[148..156].fill(b' ');
    let signed: i64 = s.iter().map(|&b| i64::from(b as i8)).sum();
    s[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
    let data = W::default()
        .block(h)
        .block(s)
        .raw(b"hello")
        .pad()
        .end()
        .take();
    let (ev, r) = run(&data);
    r.unwrap();
    let b = begins(&ev);
    assert_eq!(
        (b[0].name.as_str(), b[0].entry_type),
        ("old/", EntryType::Directory)
    );
    assert_eq!((b[1].name.as_str(), b[1].size), ("n\u{fffd}e", 5));
    assert_split_invariant(&data);
}

#[test]
fn bad_checksum_names_offset() {
    let mut data = W::default()
        .file("a", b"12345")
        .file("b", b"x")
        .end()
        .take();
    data[1024 + 10] ^= 1;
    let (ev, r) = run(&data);
    assert_eq!(ev.len(), 3);
    assert!(
        matches!(r, Err(TarError::BadChecksum { offset: 1024, .. })),
        "{r:?}"
    );
    assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidFormat);
    assert_split_invariant(&data);
}

#[test]
fn bad_octal_size() {
    let mut h = ustar("a", 0, b'0');
    h[124..136].copy_from_slice(b"12x4\0\0\0\0\0\0\0\0");
    set_checksum(&mut h);
    let data = W::default().block(h).end().take();
    assert_eq!(
        run(&data).1,
        Err(TarError::BadField {
            offset: 0,
            field: "size",
            reason: "not an octal number"
        })
    );
}

// ------------------------------------------------------- GNU extensions

#[test]
fn gnu_base256_size_begin_only() {
    let size = (8u64 << 30) + 1;
    let h = with_base256(ustar("big.raw", 0, b'0'), base256(size));
    let mut d = Demux::new();
    let (n, ev) = d.step(&h).unwrap();
    assert_eq!(n, BLOCK);
    assert_eq!(
        ev,
        Some(Event::Begin(EntryHeader {
            name: "big.raw".into(),
            size,
            entry_type: EntryType::Regular,
            header_offset: 0,
            data_offset: 512,
        }))
    );
    let (n, ev) = d.step(&[7u8; 100]).unwrap();
    assert_eq!((n, ev), (100, Some(Event::Data(&[7u8; 100][..]))));
    assert_eq!(
        d.finish(),
        Err(TarError::Truncated {
            offset: 612,
            entry: Some("big.raw".into()),
            what: "the content"
        })
    );
}

#[test]
fn huge_base256_size_rejected() {
    let field = [
        0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    let data = W::default()
        .block(with_base256(ustar("big.raw", 0, b'0'), field))
        .take();
    let r = run(&data).1;
    assert_eq!(
        r,
        Err(TarError::BadField {
            offset: 0,
            field: "size",
            reason: "base-256 value too large"
        })
    );
    let mut neg = [0xffu8; 12];
    neg[11] = 0xfe;
    let data = W::default()
        .block(with_base256(ustar("n", 0, b'0'), neg))
        .take();
    assert!(matches!(
        run(&data).1,
        Err(TarError::BadField {
            reason: "negative base-256 value",
            ..
        })
    ));
}

#[test]
fn gnu_long_name_and_link() {
    let long = "d/".repeat(80) + "disk1.vmdk";
    let data = W::default()
        .ext(b'K', b"target-of-link\0")
        .ext(b'L', format!("{long}\0").as_bytes())
        .file("d/d/d/trunc", b"data")
        .file("next", b"n")
        .end()
        .take();
    let (ev, r) = run(&data);
    r.unwrap();
    assert_eq!(
        ev[0],
        begin(&long, 4, EntryType::Regular, 0, 3 * 512 + 512 + 512)
    );
    assert_eq!(begins(&ev)[1].name, "next");
    assert_split_invariant(&data);
}

#[test]
fn long_name_over_limit() {
    let name = vec![b'a'; limits::MAX_LONG_NAME as usize + 1];
    let data = W::default().ext(b'L', &name).file("x", b"").end().take();
    assert_eq!(
        run(&data).1,
        Err(TarError::TooLarge {
            offset: 0,
            what: "GNU long name header",
            size: limits::MAX_LONG_NAME + 1,
            limit: limits::MAX_LONG_NAME
        })
    );
    assert_eq!(run(&data).1.unwrap_err().kind(), ErrorKind::LimitExceeded);
}

#[test]
fn gnu_sparse_unsupported() {
    let data = W::default().block(ustar("s", 0, b'S')).end().take();
    assert!(matches!(
        run(&data).1,
        Err(TarError::Unsupported { offset: 0, .. })
    ));
}

// ------------------------------------------------------------------ PAX

#[test]
fn pax_path_and_size() {
    let long = "x".repeat(300);
    let data = W::default()
        .pax(&[("path", &long), ("mtime", "1.25"), ("size", "3")])
        .file("short", b"abc")
        .end()
        .take();
    let (ev, r) = run(&data);
    r.unwrap();
    assert_eq!(ev[0], begin(&long, 3, EntryType::Regular, 0, 3 * 512));
    assert_split_invariant(&data);
}

/// CVE-2025-62518 class: the PAX size wins over the ustar size, exactly
/// that many bytes are consumed, and the next header is found.
#[test]
fn regression_pax_size_desync() {
    let inner = W::default().file("smuggled", b"evil").end().take();
    let mut w = W::default();
    w.pax(&[("size", "5")]);
    // The ustar size claims the smuggled archive is content; PAX says 5.
    w.block(ustar("disk.raw", 5 + inner.len() as u64, b'0'));
    w.raw(b"12345").pad();
    w.file("after", b"ok");
    let data = w.end().take();
    let (ev, r) = run(&data);
    r.unwrap();
    assert_eq!(
        contents(&ev),
        vec![
            ("disk.raw".into(), b"12345".to_vec()),
            ("after".into(), b"ok".to_vec())
        ]
    );
    assert_split_invariant(&data);

    // And the other way round: a PAX size larger than the ustar size.
    let mut w = W::default();
    w.pax(&[("size", "600")]);
    w.block(ustar("disk.raw", 0, b'0'));
    w.raw(&[1u8; 600]).pad();
    w.file("after", b"ok");
    let data = w.end().take();
    let (ev, r) = run(&data);
    r.unwrap();
    let c = contents(&ev);
    assert_eq!((c[0].1.len(), c[1].0.as_str()), (600, "after"));
}

#[test]
fn regression_pax_applies_to_next_entry_only() {
    let data = W::default()
        .pax(&[("path", "renamed"), ("size", "2")])
        .file("first", b"ab")
        .file("second", b"cdef")
        .end()
        .take();
    let (ev, r) = run(&data);
    r.unwrap();
    assert_eq!(
        contents(&ev),
        vec![
            ("renamed".into(), b"ab".to_vec()),
            ("second".into(), b"cdef".to_vec())
        ]
    );
    assert_split_invariant(&data);
}

#[test]
fn pax_size_8gib_plus_one_begin() {
    let size = (8u64 << 30) + 1;
    let data = W::default()
        .pax(&[("size", &size.to_string())])
        .block(ustar("disk.raw", 0, b'0'))
        .take();
    let (ev, r) = run(&data);
    assert_eq!(
        ev,
        vec![begin("disk.raw", size, EntryType::Regular, 0, 1536)]
    );
    assert!(matches!(r, Err(TarError::Truncated { offset: 1536, .. })));
}

#[test]
fn pax_then_end_or_pax_is_error() {
    let data = W::default().pax(&[("size", "1")]).end().take();
    assert_eq!(
        run(&data).1,
        Err(TarError::DanglingExtension {
            offset: 1024,
            what: "PAX extended header",
            found: "the end-of-archive marker"
        })
    );
    let data = W::default()
        .pax(&[("size", "1")])
        .pax(&[("size", "2")])
        .file("a", b"ab")
        .end()
        .take();
    assert!(matches!(
        run(&data).1,
        Err(TarError::DanglingExtension { offset: 1024, .. })
    ));
    let data = W::default()
        .pax(&[("path", "a")])
        .ext(b'g', b"")
        .file("a", b"ab")
        .end()
        .take();
    assert!(matches!(
        run(&data).1,
        Err(TarError::DanglingExtension { offset: 1024, .. })
    ));
    let data = W::default().ext(b'L', b"name\0").end().take();
    assert!(matches!(
        run(&data).1,
        Err(TarError::DanglingExtension { .. })
    ));
    // A stream that ends after the extension header is truncated.
    let data = W::default().ext(b'L', b"name\0").take();
    assert!(matches!(
        run(&data).1,
        Err(TarError::Truncated { offset: 1024, .. })
    ));
}

#[test]
fn pax_malformed_and_too_large() {
    let data = W::default()
        .ext(b'x', b"12 size=1x3\n")
        .file("a", b"")
        .end()
        .take();
    assert_eq!(
        run(&data).1,
        Err(TarError::BadPax {
            offset: 512,
            reason: "invalid size value"
        })
    );
    let big = vec![b'a'; limits::MAX_PAX_SIZE as usize + 1];
    let data = W::default().ext(b'x', &big).take();
    assert!(matches!(
        run(&data).1,
        Err(TarError::TooLarge { offset: 0, .. })
    ));
    let data = W::default()
        .ext(b'x', b"5 a=b\n")
        .file("a", b"")
        .end()
        .take();
    assert!(matches!(
        run(&data).1,
        Err(TarError::BadPax { offset: 512, .. })
    ));
}

#[test]
fn pax_global_validated_not_applied() {
    let g = pax_record("comment", "hello") + &pax_record("path", "everything");
    let data = W::default()
        .ext(b'g', g.as_bytes())
        .file("a", b"1")
        .pax(&[("path", "b2")])
        .file("b", b"2")
        .end()
        .take();
    let (ev, r) = run(&data);
    r.unwrap();
    let b = begins(&ev);
    assert_eq!((b[0].name.as_str(), b[0].header_offset), ("a", 1024));
    assert_eq!((b[1].name.as_str(), b[1].header_offset), ("b2", 2048));
    assert_split_invariant(&data);

    let data = W::default()
        .ext(b'g', pax_record("size", "1").as_bytes())
        .file("a", b"1")
        .end()
        .take();
    assert!(matches!(
        run(&data).1,
        Err(TarError::Unsupported { offset: 512, .. })
    ));
    let data = W::default()
        .ext(b'g', b"garbage")
        .file("a", b"1")
        .end()
        .take();
    assert!(matches!(
        run(&data).1,
        Err(TarError::BadPax { offset: 512, .. })
    ));
}

// ------------------------------------------------------ structural rules

#[test]
fn truncated_mid_header_data_padding() {
    let data = W::default()
        .file("disk", b"0123456789")
        .file("b", b"")
        .end()
        .take();
    let cut = |n: usize| run(&data[..n]).1;
    assert_eq!(
        cut(100),
        Err(TarError::Truncated {
            offset: 100,
            entry: None,
            what: "a header block"
        })
    );
    assert_eq!(
        cut(517),
        Err(TarError::Truncated {
            offset: 517,
            entry: Some("disk".into()),
            what: "the content"
        })
    );
    assert_eq!(
        cut(600),
        Err(TarError::Truncated {
            offset: 600,
            entry: Some("disk".into()),
            what: "the padding"
        })
    );
    assert_eq!(cut(1024 + 300).unwrap_err().offset(), 1324);
    assert_eq!(cut(1024 + 300).unwrap_err().kind(), ErrorKind::CorruptImage);
    assert_eq!(
        run(&[]).1,
        Err(TarError::Truncated {
            offset: 0,
            entry: None,
            what: "the first header"
        })
    );
    for n in 0..data.len() {
        fuzz_entry(&data[..n]);
    }
}

#[test]
fn missing_end_marker_accepted() {
    // GNU tar only warns about a missing end-of-archive marker.
    let data = W::default().file("a", &[5u8; 1024]).take();
    let (ev, r) = run(&data);
    r.unwrap();
    assert_eq!(*ev.last().unwrap(), Owned::End);
    // A lone zero block at the very end is accepted too.
    let mut d2 = data.clone();
    d2.extend_from_slice(&[0u8; 512]);
    run(&d2).1.unwrap();
    // Without the final step(&[]) the pending End is reported.
    let mut d = Demux::new();
    let mut buf = &data[..];
    while !buf.is_empty() {
        let (n, _) = d.step(buf).unwrap();
        buf = &buf[n..];
    }
    assert_eq!(
        d.finish(),
        Err(TarError::EndNotTaken {
            offset: 1536,
            entry: "a".into()
        })
    );
    assert_eq!(d.step(&[]).unwrap(), (0, Some(Event::End)));
    d.finish().unwrap();
}

#[test]
fn lone_zero_block_then_header() {
    let data = W::default()
        .file("a", b"x")
        .raw(&[0u8; 512])
        .file("b", b"y")
        .end()
        .take();
    assert_eq!(run(&data).1, Err(TarError::LoneZeroBlock { offset: 1024 }));
    assert_split_invariant(&data);
}

#[test]
fn trailing_garbage_after_eof_ignored() {
    let data = W::default()
        .file("a", b"x")
        .end()
        .raw(b"garbage after the end")
        .take();
    let (ev, r) = run(&data);
    r.unwrap();
    assert_eq!(*ev.last().unwrap(), Owned::Eof);
    let mut d = Demux::new();
    let (n, _) = d.step(&data).unwrap();
    assert_eq!(n, 512);
    assert_split_invariant(&data);
}

#[test]
fn sizes_on_links_and_dirs_rejected() {
    for flag in [b'1', b'2', b'3', b'4', b'5', b'6'] {
        let data = W::default()
            .block(ustar("l", 4, flag))
            .raw(b"abcd")
            .pad()
            .end()
            .take();
        assert!(
            matches!(
                run(&data).1,
                Err(TarError::UnexpectedSize {
                    offset: 0,
                    size: 4,
                    ..
                })
            ),
            "{flag}"
        );
    }
    // A PAX size on a directory is rejected the same way.
    let data = W::default()
        .pax(&[("size", "4")])
        .block(ustar("d", 0, b'5'))
        .take();
    assert!(matches!(
        run(&data).1,
        Err(TarError::UnexpectedSize { offset: 1024, .. })
    ));
}

#[test]
fn empty_name_rejected() {
    let data = W::default().block(ustar("", 0, b'0')).end().take();
    assert_eq!(run(&data).1, Err(TarError::EmptyName { offset: 0 }));
}

#[test]
fn entry_count_limit() {
    let mut w = W::default();
    let h = ustar("e", 0, b'0');
    for _ in 0..=limits::MAX_ENTRIES {
        w.block(h);
    }
    let data = w.end().take();
    let (ev, r) = run(&data);
    assert_eq!(begins(&ev).len(), limits::MAX_ENTRIES);
    assert_eq!(
        r,
        Err(TarError::TooManyEntries {
            offset: (limits::MAX_ENTRIES * BLOCK) as u64,
            limit: limits::MAX_ENTRIES
        })
    );
}

#[test]
fn errors_are_sticky() {
    let mut data = W::default().file("a", b"x").end().take();
    data[3] = 1;
    let mut d = Demux::new();
    let e = d.step(&data).unwrap_err();
    assert_eq!(d.step(&data[512..]).unwrap_err(), e);
    assert_eq!(d.finish().unwrap_err(), e);
    let lifted: crate::Error = e.into();
    assert_eq!(lifted.kind(), ErrorKind::InvalidFormat);
}

#[test]
fn fuzz_entry_survives_junk() {
    let mut rng = Rng(42);
    for len in [0usize, 1, 511, 512, 513, 1024, 3000] {
        let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        fuzz_entry(&junk);
    }
    // Valid archives with random bytes flipped.
    let base = W::default()
        .pax(&[("path", "p"), ("size", "700")])
        .file("f", &[9u8; 700])
        .ext(b'L', b"long\0")
        .file("g", b"abc")
        .end()
        .take();
    for _ in 0..200 {
        let mut d = base.clone();
        let i = (rng.next() as usize) % d.len();
        d[i] = rng.next() as u8;
        fuzz_entry(&d);
    }
}

// ------------------------------------------------------- GNU tar oracle

fn gnu_tar(dir: &Path, format: &str, names: &[&str]) -> Option<Vec<u8>> {
    let out = dir.join(format!("out-{format}.tar"));
    let status = Command::new("tar")
        .arg(format!("--format={format}"))
        .arg("-cf")
        .arg(&out)
        .arg("-C")
        .arg(dir.join("src"))
        .args(names)
        .status()
        .ok()?;
    assert!(status.success(), "tar --format={format} failed");
    Some(std::fs::read(out).unwrap())
}

#[test]
fn gnu_tar_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let deep = format!("{}/{}", "d".repeat(90), "e".repeat(60));
    std::fs::create_dir_all(src.join(&deep)).unwrap();
    let mut rng = Rng(7);
    let files: Vec<(String, Vec<u8>)> = vec![
        ("vm.ovf".into(), b"<Envelope/>\n".to_vec()),
        ("empty.dat".into(), Vec::new()),
        ("block.raw".into(), vec![0xab; 1024]),
        (
            "disk1.vmdk".into(),
            (0..70_001).map(|_| rng.next() as u8).collect(),
        ),
        (format!("{deep}/{}", "f".repeat(40)), b"deep".to_vec()),
    ];
    for (name, data) in &files {
        std::fs::write(src.join(name), data).unwrap();
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    if !crate::test_support::require_tool("tar") {
        return;
    }
    for format in ["ustar", "gnu", "pax"] {
        let tar = gnu_tar(tmp.path(), format, &names).expect("tar runs");
        let (ev, r) = run(&tar);
        r.unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(ev.last(), Some(&Owned::Eof), "{format}");
        assert_eq!(contents(&ev), files, "{format}");
        for h in begins(&ev) {
            assert_eq!(h.entry_type, EntryType::Regular, "{format}");
            assert_eq!(h.data_offset % 512, 0);
        }
        assert_split_invariant(&tar[..tar.len().min(8192)]);
        let cuts: Vec<usize> = (1..200).collect();
        assert_eq!(run_split(&tar, &cuts), (ev, Ok(())), "{format}");
    }
    // A directory entry, as GNU tar writes it.
    let tar = gnu_tar(tmp.path(), "gnu", &[&deep[..90]]).unwrap();
    let (ev, r) = run(&tar);
    r.unwrap();
    let b = begins(&ev);
    assert_eq!(b[0].entry_type, EntryType::Directory);
    assert_eq!(b[0].name, format!("{}/", &deep[..90]));
}

// ------------------------------------------------------------ skipping

/// Feeds `data`, passing over every entry's content after its first
/// `keep` bytes as a seeking reader would; returns the events, with the
/// data actually delivered.
fn run_skipping(data: &[u8], keep: u64) -> (Vec<Owned>, Result<(), TarError>) {
    let mut demux = Demux::new();
    let mut events = Vec::new();
    let mut at = 0usize;
    let mut delivered = 0u64;
    loop {
        let end = match demux.content_remaining() {
            Some(left) if left > 0 && delivered >= keep => {
                let skipped = demux.skip_content(left);
                assert_eq!(skipped, left, "skip_content passes over what remains");
                at += skipped as usize;
                continue;
            }
            // Up to the kept part of the content, no further.
            Some(left) if left > 0 => at + (keep - delivered).min(left) as usize,
            _ => data.len(),
        };
        let (n, ev) = match demux.step(&data[at.min(data.len())..end.min(data.len())]) {
            Ok(r) => r,
            Err(e) => return (events, Err(e)),
        };
        at += n;
        assert_eq!(demux.position(), at as u64, "position follows the skips");
        match ev {
            Some(Event::Begin(h)) => {
                delivered = 0;
                events.push(Owned::Begin(h));
            }
            Some(Event::Data(d)) => {
                delivered += d.len() as u64;
                events.push(Owned::Data(d.to_vec()));
            }
            Some(Event::End) => events.push(Owned::End),
            Some(Event::Eof) => events.push(Owned::Eof),
            None if at >= data.len() => break,
            None => {}
        }
    }
    (events, demux.finish())
}

#[test]
fn skipped_contents_keep_the_stream_in_step() {
    let data = W::default()
        .file("vm.ovf", b"<Envelope/>")
        .file("disk", &[7u8; 5000])
        .file("empty", b"")
        .file("vm.mf", b"SHA1(x)= 00\n")
        .end()
        .take();
    let (full, r) = run(&data);
    r.unwrap();
    for keep in [0, 1, 100, 512, 10_000] {
        let (skipped, r) = run_skipping(&data, keep);
        r.unwrap();
        assert_eq!(begins(&skipped), begins(&full), "keep {keep}");
        // Each entry delivered exactly its first `keep` bytes.
        for (name, bytes) in contents(&skipped) {
            let whole = &contents(&full)
                .into_iter()
                .find(|(n, _)| *n == name)
                .expect("entry")
                .1;
            let want = (keep as usize).min(whole.len());
            assert_eq!(bytes, whole[..want], "{name} keep {keep}");
        }
    }
    // Outside an entry's content there is nothing to pass over.
    let mut d = Demux::new();
    assert_eq!(d.content_remaining(), None);
    assert_eq!(d.skip_content(10), 0);
    assert_eq!(d.position(), 0);
    // More than remains is cut to what remains.
    let (_, ev) = d.step(&data[..512]).unwrap();
    assert!(matches!(ev, Some(Event::Begin(_))));
    assert_eq!(d.content_remaining(), Some(11));
    assert_eq!(d.skip_content(1000), 11);
    assert_eq!(d.position(), 512 + 11);
    assert_eq!(d.step(&[]).unwrap(), (0, Some(Event::End)));
}
