use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::ova::writer::TarWriter;
use crate::volume::Format as VolumeFormat;

/// A tar archive of `entries`, in order.
fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = TarWriter::new(Vec::new()).with_mtime(0);
    for (name, data) in entries {
        w.begin_entry(name, data.len() as u64).unwrap();
        w.write_data(data).unwrap();
        w.end_entry().unwrap();
    }
    w.finish().unwrap()
}

/// An OVF 1.0 descriptor with these `File` and `Disk` elements.
fn ovf(files: &str, disks: &str) -> Vec<u8> {
    format!(
        r#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>{files}</References>
  <DiskSection><Info>disks</Info>{disks}</DiskSection>
</Envelope>"#
    )
    .into_bytes()
}

/// Imports `pkg` fed in pieces of `piece` bytes into `dir` as raw.
fn import(pkg: &[u8], piece: usize, dir: &Path) -> Result<ImportSummary> {
    let targets = Targets::Dir {
        dir: dir.to_owned(),
        format: VolumeFormat::Raw,
    };
    let mut imp = Importer::new(targets, Arc::new(Progress::new(None)));
    for p in pkg.chunks(piece) {
        imp.feed(Bytes::copy_from_slice(p))?;
    }
    imp.finish()
}

/// Raw disk content that no probe takes for anything else.
fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// `data` split into chunk entries of `href`, `chunk` bytes each.
fn chunks<'a>(href: &str, data: &'a [u8], chunk: usize) -> Vec<(String, &'a [u8])> {
    data.chunks(chunk)
        .enumerate()
        .map(|(i, c)| (chunk_name(href, i as u64), c))
        .collect()
}

#[test]
fn chunked_raw_disk_whatever_the_ovf_place_and_the_pieces() {
    let data = content(10_000);
    let descriptor = ovf(
        r#"<File ovf:href="disk.img" ovf:id="f" ovf:size="10000" ovf:chunkSize="4096"/>"#,
        r#"<Disk ovf:diskId="d" ovf:fileRef="f" ovf:capacity="16384"/>"#,
    );
    let parts = chunks("disk.img", &data, 4096);
    let mut first: Vec<(&str, &[u8])> = vec![("vm.ovf", &descriptor)];
    first.extend(parts.iter().map(|(n, c)| (n.as_str(), *c)));
    let mut last: Vec<(&str, &[u8])> = parts.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    last.push(("vm.ovf", &descriptor));
    let mut want = data.clone();
    want.resize(16384, 0);
    for (order, entries) in [("first", first), ("last", last)] {
        let pkg = tar(&entries);
        for piece in [1, 7, 512, 1 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let s = import(&pkg, piece, dir.path()).unwrap();
            assert_eq!(s.disks[0].chunks, Some(3), "OVF {order}, piece {piece}");
            assert_eq!(s.disks[0].href, "disk.img");
            let got = std::fs::read(dir.path().join("disk.raw")).unwrap();
            assert!(got == want, "OVF {order}, piece {piece}: content differs");
        }
    }
}

#[test]
fn an_entry_named_like_a_chunk_is_a_file_when_the_ovf_says_so() {
    let data = content(3000);
    let descriptor = ovf(
        r#"<File ovf:href="data.000000000" ovf:id="f"/>"#,
        r#"<Disk ovf:diskId="d" ovf:fileRef="f" ovf:capacity="4096"/>"#,
    );
    for pkg in [
        tar(&[("data.000000000", &data), ("vm.ovf", &descriptor)]),
        tar(&[("vm.ovf", &descriptor), ("data.000000000", &data)]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let s = import(&pkg, 1000, dir.path()).unwrap();
        assert_eq!(s.disks[0].href, "data.000000000");
        assert_eq!(s.disks[0].chunks, None);
        let got = std::fs::read(dir.path().join("data.raw")).unwrap();
        assert_eq!(&got[..3000], &data[..]);
        assert_eq!(got.len(), 4096);
    }
    // Not listed whole, and not a chunk of a chunked file either.
    let descriptor = ovf(
        r#"<File ovf:href="data" ovf:id="f"/>"#,
        r#"<Disk ovf:diskId="d" ovf:fileRef="f" ovf:capacity="4096"/>"#,
    );
    let pkg = tar(&[("data.000000000", &data), ("vm.ovf", &descriptor)]);
    let dir = tempfile::tempdir().unwrap();
    let e = import(&pkg, 1000, dir.path()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "entry 'data.000000000': the OVF lists 'data' as one entry, not in chunks"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn raw_chunks_beyond_the_capacity_are_refused_either_way() {
    let data = content(10_000);
    let descriptor = ovf(
        r#"<File ovf:href="disk.img" ovf:id="f" ovf:size="10000" ovf:chunkSize="4096"/>"#,
        r#"<Disk ovf:diskId="d" ovf:fileRef="f" ovf:capacity="8192"/>"#,
    );
    let parts = chunks("disk.img", &data, 4096);
    let mut first: Vec<(&str, &[u8])> = vec![("vm.ovf", &descriptor)];
    first.extend(parts.iter().map(|(n, c)| (n.as_str(), *c)));
    let mut last: Vec<(&str, &[u8])> = parts.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    last.push(("vm.ovf", &descriptor));
    for entries in [first, last] {
        let dir = tempfile::tempdir().unwrap();
        let e = import(&tar(&entries), 4096, dir.path()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CorruptImage);
        assert!(
            e.to_string()
                .contains("10000 bytes, more than the disk capacity of 8192 bytes"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

#[test]
fn a_blank_disk_alone_is_created_empty() {
    let descriptor = ovf(
        "",
        r#"<Disk ovf:diskId="scratch" ovf:capacity="3" ovf:capacityAllocationUnits="byte * 2^20"/>"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let s = import(&tar(&[("vm.ovf", &descriptor)]), 512, dir.path()).unwrap();
    let d = &s.disks[0];
    assert!(d.blank);
    assert_eq!((d.disk_id.as_str(), d.source_format), ("scratch", "blank"));
    assert_eq!(d.capacity, 3 << 20);
    let path = dir.path().join("scratch.raw");
    assert_eq!(d.target, path);
    let got = std::fs::read(&path).unwrap();
    assert_eq!(got.len(), 3 << 20);
    assert!(got.iter().all(|&b| b == 0));
}
