use std::io::Write;

use super::fuzz::{Owned, run_split};
use super::*;

/// How a test member is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Stored,
    Deflated,
    /// Deflated, sizes in a data descriptor with its signature.
    DescriptorSig,
    /// Deflated, sizes in a data descriptor without a signature.
    DescriptorBare,
}

/// A zip writer for crafted archives: local headers, data, descriptors,
/// a central directory that agrees, and the end record.
#[derive(Default)]
struct ZipWriter {
    out: Vec<u8>,
    central: Vec<u8>,
    count: u16,
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = Crc::new();
    c.update(data);
    c.sum()
}

impl ZipWriter {
    fn member(&mut self, name: &str, data: &[u8], how: How) -> &mut Self {
        self.raw_member(name.as_bytes(), data, how, 0, None, &[])
    }

    /// A member with extra `flags`, a `method` other than `how`'s, and an
    /// `extra` field.
    fn raw_member(
        &mut self,
        name: &[u8],
        data: &[u8],
        how: How,
        flags: u16,
        method: Option<u16>,
        extra: &[u8],
    ) -> &mut Self {
        let offset = self.out.len() as u32;
        let (payload, method_no) = match how {
            How::Stored => (data.to_vec(), 0u16),
            _ => (deflate(data), 8u16),
        };
        let method_no = method.unwrap_or(method_no);
        let descriptor = matches!(how, How::DescriptorSig | How::DescriptorBare);
        let flags = flags | if descriptor { DATA_DESCRIPTOR } else { 0 };
        let crc = crc32(data);
        let (lcrc, lc, lu) = if descriptor {
            (0, 0, 0)
        } else {
            (crc, payload.len() as u32, data.len() as u32)
        };
        let mut h = Vec::new();
        h.extend_from_slice(&LOCAL);
        h.extend_from_slice(&20u16.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&method_no.to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        h.extend_from_slice(&lcrc.to_le_bytes());
        h.extend_from_slice(&lc.to_le_bytes());
        h.extend_from_slice(&lu.to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        h.extend_from_slice(name);
        h.extend_from_slice(extra);
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(&payload);
        if how == How::DescriptorSig {
            self.out.extend_from_slice(&DESCRIPTOR);
        }
        if descriptor {
            self.out.extend_from_slice(&crc.to_le_bytes());
            self.out
                .extend_from_slice(&(payload.len() as u32).to_le_bytes());
            self.out
                .extend_from_slice(&(data.len() as u32).to_le_bytes());
        }
        let mut c = Vec::new();
        c.extend_from_slice(&CENTRAL);
        c.extend_from_slice(&20u16.to_le_bytes());
        c.extend_from_slice(&20u16.to_le_bytes());
        c.extend_from_slice(&flags.to_le_bytes());
        c.extend_from_slice(&method_no.to_le_bytes());
        c.extend_from_slice(&[0; 4]);
        c.extend_from_slice(&crc.to_le_bytes());
        c.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        c.extend_from_slice(&(data.len() as u32).to_le_bytes());
        c.extend_from_slice(&(name.len() as u16).to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&0u16.to_le_bytes());
        c.extend_from_slice(&[0; 8]);
        c.extend_from_slice(&offset.to_le_bytes());
        c.extend_from_slice(name);
        self.central.extend_from_slice(&c);
        self.count += 1;
        self
    }

    fn finish(&self, comment: &[u8]) -> Vec<u8> {
        let mut z = self.out.clone();
        let cd_offset = z.len() as u32;
        z.extend_from_slice(&self.central);
        z.extend_from_slice(&END);
        z.extend_from_slice(&[0; 4]);
        z.extend_from_slice(&self.count.to_le_bytes());
        z.extend_from_slice(&self.count.to_le_bytes());
        z.extend_from_slice(&(self.central.len() as u32).to_le_bytes());
        z.extend_from_slice(&cd_offset.to_le_bytes());
        z.extend_from_slice(&(comment.len() as u16).to_le_bytes());
        z.extend_from_slice(comment);
        z
    }
}

fn text(n: usize) -> Vec<u8> {
    (0..n).map(|i| b"ovaio zip member "[i % 17]).collect()
}

/// A member as read: name, size from its local header, data.
type Read = (String, Option<u64>, Vec<u8>);

/// The members of an archive, fed whole.
fn members(zip: &[u8]) -> Result<Vec<Read>, ZipError> {
    let (events, r) = run_split(zip, &[usize::MAX]);
    r?;
    let mut out: Vec<Read> = Vec::new();
    for e in events {
        match e {
            Owned::Begin(h) => out.push((h.name, h.size, Vec::new())),
            Owned::Data(d) => {
                if let Some(m) = out.last_mut() {
                    m.2.extend_from_slice(&d);
                }
            }
            Owned::End | Owned::Eof => {}
        }
    }
    Ok(out)
}

fn sample() -> Vec<u8> {
    let mut w = ZipWriter::default();
    w.member("vm.ovf", b"<Envelope/>", How::Stored)
        .member("dir/", b"", How::Stored)
        .member("disk1.vmdk", &text(3000), How::Deflated)
        .member("disk2.qcow2", &text(700), How::DescriptorSig)
        .member("vm.mf", b"SHA256(vm.ovf)= 00\n", How::DescriptorBare)
        .member("empty", b"", How::Deflated);
    w.finish(b"a comment")
}

#[test]
fn members_stream_out_with_their_sizes() {
    let got = members(&sample()).unwrap();
    let want: Vec<Read> = vec![
        ("vm.ovf".into(), Some(11), b"<Envelope/>".to_vec()),
        ("dir/".into(), Some(0), Vec::new()),
        ("disk1.vmdk".into(), Some(3000), text(3000)),
        ("disk2.qcow2".into(), None, text(700)),
        ("vm.mf".into(), None, b"SHA256(vm.ovf)= 00\n".to_vec()),
        ("empty".into(), Some(0), Vec::new()),
    ];
    assert_eq!(got, want);
    let (events, r) = run_split(&sample(), &[usize::MAX]);
    r.unwrap();
    assert_eq!(events.last(), Some(&Owned::Eof));
    let dirs: Vec<bool> = events
        .iter()
        .filter_map(|e| match e {
            Owned::Begin(h) => Some(h.directory),
            _ => None,
        })
        .collect();
    assert_eq!(dirs, [false, true, false, false, false, false]);
    // Offsets are the archive's: the first member's data follows its
    // 30-byte header and 6-byte name.
    let Some(Owned::Begin(h)) = events.first() else {
        panic!("no Begin first");
    };
    assert_eq!((h.header_offset, h.data_offset), (0, 36));
}

#[test]
fn every_split_gives_the_same_events() {
    let zip = sample();
    let whole = run_split(&zip, &[usize::MAX]);
    assert!(whole.1.is_ok());
    for cut in 1..zip.len() {
        assert_eq!(run_split(&zip, &[cut, usize::MAX]), whole, "cut at {cut}");
    }
    for piece in [1, 2, 3, 7, 64] {
        assert_eq!(run_split(&zip, &[piece]), whole, "pieces of {piece}");
    }
    fuzz_entry(&zip);
}

#[test]
fn truncation_anywhere_fails() {
    let zip = sample();
    for end in 0..zip.len() {
        let (_, r) = run_split(&zip[..end], &[usize::MAX]);
        let e = r.expect_err("a truncated archive");
        assert_eq!(e.kind(), ErrorKind::CorruptImage, "end {end}: {e}");
    }
}

#[test]
fn large_deflated_members_come_in_bounded_pieces() {
    let big = vec![0u8; 3 * limits::DECOMPRESSED_CHUNK + 5];
    let mut w = ZipWriter::default();
    w.member("zeros.img", &big, How::DescriptorSig);
    let zip = w.finish(b"");
    let (events, r) = run_split(&zip, &[usize::MAX]);
    r.unwrap();
    assert_eq!(members(&zip).unwrap()[0].2, big);
    assert!(events.len() >= 3);
}

fn refusal(zip: &[u8]) -> ZipError {
    let (_, r) = run_split(zip, &[usize::MAX]);
    let e = r.expect_err("refused");
    // Split feeds refuse it the same way.
    assert_eq!(run_split(zip, &[1]).1, Err(e.clone()));
    e
}

#[test]
fn stored_members_with_a_descriptor_are_refused_by_name() {
    let mut w = ZipWriter::default();
    w.member("vm.ovf", b"x", How::Stored).raw_member(
        b"disk1.img",
        b"data",
        How::Stored,
        DATA_DESCRIPTOR,
        None,
        &[],
    );
    let e = refusal(&w.finish(b""));
    assert!(matches!(e, ZipError::StoredWithDescriptor { .. }), "{e}");
    assert_eq!(e.member(), Some("disk1.img"));
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(e.offset(), Some(37));
    assert!(e.to_string().contains("data descriptor"), "{e}");
}

#[test]
fn unsupported_features_are_refused_by_name() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut w = ZipWriter::default();
                w.raw_member(b"d.img", b"x", How::Deflated, 0, Some(12), &[]);
                w.finish(b"")
            },
            "method 12 (bzip2)",
        ),
        (
            {
                let mut w = ZipWriter::default();
                w.raw_member(b"d.img", b"x", How::Stored, ENCRYPTED, None, &[]);
                w.finish(b"")
            },
            "encrypted",
        ),
        (
            {
                let mut w = ZipWriter::default();
                let zip64 = [1, 0, 16, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
                w.raw_member(b"d.img", b"x", How::Stored, 0, None, &zip64);
                w.finish(b"")
            },
            "zip64",
        ),
        (
            {
                let mut w = ZipWriter::default();
                w.raw_member(b"d.img", b"x", How::Stored, 0, Some(99), &[]);
                w.finish(b"")
            },
            "encrypted",
        ),
    ];
    for (zip, want) in cases {
        let e = refusal(&zip);
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert_eq!(e.member(), Some("d.img"), "{e}");
        assert!(e.to_string().contains(want), "{want:?} not in {e}");
    }
}

#[test]
fn damaged_members_are_refused() {
    // A CRC-32 that does not match the stored data.
    let mut zip = {
        let mut w = ZipWriter::default();
        w.member("a.img", b"hello", How::Stored);
        w.finish(b"")
    };
    zip[14] ^= 1;
    let e = refusal(&zip);
    assert!(e.to_string().contains("CRC-32 mismatch"), "{e}");
    assert_eq!(e.member(), Some("a.img"));
    // A descriptor that does not give the data's CRC-32.
    let mut w = ZipWriter::default();
    w.member("b.img", &text(100), How::DescriptorSig);
    let mut zip = w.finish(b"");
    let d = zip.windows(4).position(|x| x == DESCRIPTOR).unwrap();
    zip[d + 4] ^= 1;
    let e = refusal(&zip);
    assert!(
        e.to_string().contains("data descriptor does not match"),
        "{e}"
    );
    // Deflate data that ends before the compressed size.
    let mut w = ZipWriter::default();
    w.member("c.img", &text(100), How::Deflated);
    let mut zip = w.finish(b"");
    zip[18] += 1; // compressed size one more than the data
    assert!(refusal(&zip).to_string().contains("deflate data"));
    // Names readers would read differently.
    let mut w = ZipWriter::default();
    w.raw_member(b"caf\xe9.img", b"x", How::Stored, 0, None, &[]);
    let e = refusal(&w.finish(b""));
    assert!(e.to_string().contains("not marked UTF-8"), "{e}");
    let mut w = ZipWriter::default();
    w.raw_member(b"a\0b", b"x", How::Stored, 0, None, &[]);
    assert!(refusal(&w.finish(b"")).to_string().contains("NUL"));
    // A directory member holding data.
    let mut w = ZipWriter::default();
    w.member("d/", b"data", How::Stored);
    assert!(refusal(&w.finish(b"")).to_string().contains("directory"));
}

#[test]
fn a_central_directory_that_disagrees_is_refused() {
    let zip = sample();
    let cd = zip.windows(4).position(|x| x == CENTRAL).unwrap();
    // Another name for the first member in the directory.
    let mut bad = zip.clone();
    bad[cd + CENTRAL_LEN] = b'V';
    let e = refusal(&bad);
    assert!(e.to_string().contains("another name"), "{e}");
    assert_eq!(e.member(), Some("vm.ovf"));
    // Another offset.
    let mut bad = zip.clone();
    bad[cd + 42] = 1;
    assert!(refusal(&bad).to_string().contains("offset"));
    // An end record that counts fewer members (one hidden from directory
    // readers).
    let end = zip.windows(4).rposition(|x| x == END).unwrap();
    let mut bad = zip.clone();
    bad[end + 8] -= 1;
    bad[end + 10] -= 1;
    assert!(refusal(&bad).to_string().contains("end record counts"));
    // The directory placed elsewhere.
    let mut bad = zip.clone();
    bad[end + 16] ^= 4;
    assert!(
        refusal(&bad)
            .to_string()
            .contains("places the central directory")
    );
    // A local header after the directory.
    let mut w = ZipWriter::default();
    w.member("a", b"x", How::Stored);
    let mut bad = w.out.clone();
    bad.extend_from_slice(&w.central);
    bad.extend_from_slice(&w.out);
    assert!(
        refusal(&bad)
            .to_string()
            .contains("after the central directory")
    );
    // Something that is no zip record at all.
    let mut bad = w.out.clone();
    bad.extend_from_slice(b"junkjunk");
    let e = refusal(&bad);
    assert!(e.to_string().contains("expected a zip"), "{e}");
    assert_eq!(e.offset(), Some(w.out.len() as u64));
}

#[test]
fn errors_are_sticky() {
    let mut w = ZipWriter::default();
    w.raw_member(b"d.img", b"x", How::Deflated, 0, Some(12), &[]);
    let zip = w.finish(b"");
    let mut z = ZipDemux::new();
    let e = z.step(&zip).unwrap_err();
    assert_eq!(z.step(b"PK").unwrap_err(), e);
    assert_eq!(z.finish().unwrap_err(), e);
}

#[test]
fn empty_archive_and_trailing_bytes() {
    let empty = ZipWriter::default().finish(b"");
    assert_eq!(members(&empty).unwrap(), Vec::new());
    let mut after = sample();
    after.extend_from_slice(b"bytes after the end record");
    assert_eq!(members(&after).unwrap(), members(&sample()).unwrap());
}

#[test]
fn seeded_damage_never_breaks_the_contract() {
    let zip = sample();
    let mut rng = crate::test_support::Rng(0x21b_0c7e);
    for _ in 0..400 {
        let mut bad = zip.clone();
        match rng.below(3) {
            0 => bad.truncate(rng.below(zip.len() as u64) as usize),
            1 => {
                let at = rng.below(zip.len() as u64) as usize;
                bad[at] ^= 1 << rng.below(8);
            }
            _ => {
                let at = rng.below(zip.len() as u64) as usize;
                bad[at] = 0xff;
            }
        }
        fuzz_entry(&bad);
    }
}

#[test]
fn zips_from_pythons_zipfile_read() {
    // Written to a file (sizes in the local headers) and to a pipe (sizes
    // in data descriptors after deflated data).
    for zip in [
        &include_bytes!("../../../fuzz/seeds/zip/small.zip")[..],
        &include_bytes!("../../../fuzz/seeds/zip/descriptors.zip")[..],
    ] {
        let got = members(zip).unwrap();
        let names: Vec<&str> = got.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(names, ["vm.ovf", "vm.mf"]);
        assert_eq!(got[0].2, b"<Envelope/>\n");
        assert_eq!(got[1].2, b"SHA256(vm.ovf)= 00\n");
        fuzz_entry(zip);
    }
}
