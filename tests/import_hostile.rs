//! `ovaio import` against broken and hostile packages. Every case must
//! fail with one `ovaio: error: ` line naming the offending entry, and must
//! leave nothing behind in the target directory: no target at its final
//! name and no `.partial`.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use support::image::{self, MAIN, ODD, SMALL, Source};
use support::ova::{self, Disk, MF_NAME, Manifest, OVF_NAME, Ova, Placement, ovf_xml};
use support::tar::{self, TarWriter, pax_record, ustar_header};
use support::{Outcome, Work, assert_dir_empty, ovaio, tool};

/// Imports `ova` into the fresh directory `w/out` and returns the outcome
/// and the directory.
fn import(w: &Work, ova: &Path) -> (Outcome, PathBuf) {
    let out = w.mkdir("out");
    let run = ovaio()
        .arg("import")
        .arg(ova)
        .arg("--dir")
        .arg(&out)
        .arg("--format")
        .arg("qcow2")
        .run();
    (run, out)
}

/// Asserts the failure contract for `ova` imported into `w/out`.
fn assert_rejected(w: &Work, ova: &Path, mentions: &[&str]) {
    let (run, out) = import(w, ova);
    run.assert_error(mentions);
    assert_dir_empty(&out);
}

// ---------------------------------------------------------------------------
// Streams that end too early or lie about their contents.

/// Two disks; the second (qcow2) is cut in the middle of its data.
fn truncated_package(w: &Work) -> PathBuf {
    let a = ova::prepare(w.root(), "a", &ODD, Source::Raw);
    let b = ova::prepare(w.root(), "b", &MAIN, Source::Qcow2V3);
    let path = Ova::new()
        .disk(a.disk(1, "disk1.img"))
        .disk(b.disk(2, "disk2.qcow2"))
        .format(tar::TarFormat::Ustar)
        .build(w.root(), "in.ova");
    let listing = tar::list(&path);
    let entry = listing
        .iter()
        .find(|l| l.name == "disk2.qcow2")
        .expect("disk2 listed");
    let cut = entry.header_offset + 512 + entry.size / 2;
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open ova");
    f.set_len(cut).expect("truncate");
    path
}

#[test]
fn truncated_mid_disk() {
    let w = Work::new();
    let path = truncated_package(&w);
    assert_rejected(&w, &path, &["disk2.qcow2"]);
}

#[test]
fn truncated_mid_disk_from_pipe() {
    let w = Work::new();
    let path = truncated_package(&w);
    let out = w.mkdir("out");
    ovaio()
        .arg("import")
        .arg("-")
        .arg("--dir")
        .arg(&out)
        .stdin(fs::read(&path).expect("read ova"))
        .run()
        .assert_error(&["disk2.qcow2"]);
    assert_dir_empty(&out);
}

/// Two disks with a SHA256 manifest at the end whose digest for `disk1.vmdk`
/// has one hex digit changed: the disks are complete before the lie shows.
#[test]
fn manifest_digest_mismatch() {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let b = ova::prepare(w.root(), "b", &ODD, Source::Qcow2Zlib);
    let mut ova = Ova::new()
        .disk(a.disk(1, "disk1.vmdk"))
        .disk(b.disk(2, "disk2.qcow2"));
    let text = ova.manifest_for(Manifest::Sha256, &ova.ovf());
    let good = Manifest::Sha256.digest_file(&a.file);
    let mut bad = good.clone().into_bytes();
    bad[17] = if bad[17] == b'0' { b'1' } else { b'0' };
    let bad = String::from_utf8(bad).expect("hex");
    assert!(text.contains(&good));
    ova.manifest_text = Some(text.replace(&good, &bad));
    let path = ova.manifest(Manifest::Sha256).build(w.root(), "in.ova");
    assert_rejected(&w, &path, &["disk1.vmdk"]);
}

#[test]
fn manifest_sha1_digest_mismatch_manifest_first() {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &ODD, Source::Gzip);
    let mut ova = Ova::new()
        .disk(a.disk(1, "disk1.img"))
        .placement(Placement::ManifestAfterOvf);
    let text = ova.manifest_for(Manifest::Sha1Spaced, &ova.ovf());
    let good = Manifest::Sha1Spaced.digest_file(&a.file);
    let bad = format!(
        "{}{}",
        &good[..39],
        if good.ends_with('f') { 'e' } else { 'f' }
    );
    ova.manifest_text = Some(text.replace(&good, &bad));
    let path = ova.manifest(Manifest::Sha1Spaced).build(w.root(), "in.ova");
    assert_rejected(&w, &path, &["disk1.img"]);
}

#[test]
fn manifest_lists_absent_file() {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &ODD, Source::Qcow2V3);
    let mut ova = Ova::new()
        .disk(a.disk(1, "disk1.qcow2"))
        .manifest(Manifest::Sha256);
    ova.manifest_extra = Manifest::Sha256.line("ghost.img", &"ab".repeat(32));
    let path = ova.build(w.root(), "in.ova");
    assert_rejected(&w, &path, &["ghost.img"]);
}

/// The OVF names two disks; the archive only holds the first (which would
/// import fine on its own): the first target must not survive either.
#[test]
fn ovf_disk_without_entry() {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &ODD, Source::Qcow2V3);
    let disk1 = a.disk(1, "disk1.qcow2");
    let mut ghost = disk1.ovf.clone();
    ghost.file_id = "file2".into();
    ghost.disk_id = "vmdisk2".into();
    ghost.href = "disk2.qcow2".into();
    let mut ova = Ova::new().disk(disk1.clone());
    ova.ovf_text = Some(ovf_xml(&[disk1.ovf.clone(), ghost]));
    let path = ova.build(w.root(), "in.ova");
    assert_rejected(&w, &path, &["disk2.qcow2"]);
}

#[test]
fn entry_not_in_references() {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &ODD, Source::Qcow2V3);
    let path = Ova::new()
        .disk(a.disk(1, "disk1.qcow2"))
        .extra("extra.bin", &[7u8; 10_000])
        .build(w.root(), "in.ova");
    assert_rejected(&w, &path, &["extra.bin"]);
}

// ---------------------------------------------------------------------------
// Tar-level attacks, written by hand.

/// The PAX header of `disk.img` says one size and the ustar header another.
/// A correct reader (PAX wins, as GNU tar shows) sees a disk entry whose
/// digest does not match the manifest. A reader that trusts the ustar size
/// sees a shorter `disk.img` whose digest matches, then an end-of-archive
/// marker smuggled inside the data: a complete, "valid" package.
fn pax_desync_package(w: &Work) -> PathBuf {
    let content = SMALL.bytes();
    let small = content.len() as u64;
    let mut smuggled = content.clone();
    smuggled.extend_from_slice(&[0u8; 1024]); // fake end of archive
    smuggled.extend_from_slice(b"tail that only a PAX-aware reader sees\n");
    let big = smuggled.len() as u64;

    let ovf = ovf_xml(&[ova::raw_ovf_disk(1, "disk.img", small, small)]);
    let mf = format!(
        "{}{}",
        Manifest::Sha256.line(OVF_NAME, &Manifest::Sha256.digest(ovf.as_bytes())),
        Manifest::Sha256.line("disk.img", &Manifest::Sha256.digest(&content)),
    );
    let mut t = TarWriter::new();
    t.file(OVF_NAME, ovf.as_bytes());
    t.file(MF_NAME, mf.as_bytes());
    t.pax(&[("size", &big.to_string())]);
    t.header(ustar_header("disk.img", small, b'0'));
    t.data(&smuggled);
    t.end();
    let path = w.path("in.ova");
    t.write_to(&path);
    path
}

#[test]
fn pax_size_desync() {
    let w = Work::new();
    let path = pax_desync_package(&w);
    assert_rejected(&w, &path, &["disk.img"]);
}

#[test]
fn fixture_pax_desync_is_what_gnu_tar_sees() {
    let w = Work::new();
    let path = pax_desync_package(&w);
    let listing = tar::list(&path);
    let names: Vec<&str> = listing.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, [OVF_NAME, MF_NAME, "disk.img"]);
    assert_eq!(listing[2].size, SMALL.size + 1024 + 39);
    assert_eq!(pax_record("size", "12345"), "14 size=12345\n");
    assert_eq!(
        pax_record("k", &"v".repeat(95)),
        "102 k=".to_owned() + &"v".repeat(95) + "\n"
    );
}

/// A raw disk whose entry name (and href) climbs out of the target
/// directory.
fn named_disk_package(w: &Work, name: &str) -> PathBuf {
    let content = SMALL.bytes();
    let ovf = ovf_xml(&[ova::raw_ovf_disk(1, name, content.len() as u64, SMALL.size)]);
    let mut t = TarWriter::new();
    t.file(OVF_NAME, ovf.as_bytes());
    t.file(name, &content);
    t.end();
    let path = w.path("in.ova");
    t.write_to(&path);
    path
}

#[test]
fn traversal_entry_name() {
    let w = Work::new();
    let path = named_disk_package(&w, "../x.img");
    assert_rejected(&w, &path, &["../x.img"]);
    for escaped in ["x.img", "x.raw", "x.qcow2"] {
        support::assert_absent(&w.path(escaped));
    }
}

#[test]
fn slash_in_entry_name() {
    let w = Work::new();
    let path = named_disk_package(&w, "sub/disk.img");
    assert_rejected(&w, &path, &["sub/disk.img"]);
}

#[test]
fn fixture_hostile_names_list_with_gnu_tar() {
    let w = Work::new();
    let path = named_disk_package(&w, "../x.img");
    let names: Vec<String> = tar::list(&path).into_iter().map(|l| l.name).collect();
    assert_eq!(names, [OVF_NAME, "../x.img"]);
}

#[test]
fn duplicate_entry_name() {
    let w = Work::new();
    let content = SMALL.bytes();
    let ovf = ovf_xml(&[ova::raw_ovf_disk(
        1,
        "disk1.img",
        content.len() as u64,
        SMALL.size,
    )]);
    let mut other = content.clone();
    other[..5].copy_from_slice(b"other");
    let mut t = TarWriter::new();
    t.file(OVF_NAME, ovf.as_bytes());
    t.file("disk1.img", &content);
    t.file("disk1.img", &other);
    t.end();
    let path = w.path("in.ova");
    t.write_to(&path);
    let listed = tar::list(&path);
    assert_eq!(listed.len(), 3, "GNU tar lists both copies");
    assert_rejected(&w, &path, &["disk1.img"]);
}

// ---------------------------------------------------------------------------
// Hostile descriptors.

#[test]
fn entity_bomb_ovf() {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &SMALL, Source::Raw);
    let disk = a.disk(1, "disk1.img");
    let mut text = ovf_xml(std::slice::from_ref(&disk.ovf));
    let mut dtd = String::from("<!DOCTYPE Envelope [\n  <!ENTITY lol0 \"lollollollollol\">\n");
    for i in 1..=9 {
        dtd.push_str(&format!(
            "  <!ENTITY lol{i} \"{}\">\n",
            format!("&lol{};", i - 1).repeat(10)
        ));
    }
    dtd.push_str("]>\n");
    let decl_end = text.find("?>\n").expect("xml declaration") + 3;
    text.insert_str(decl_end, &dtd);
    let text = text
        .replacen(
            "<Info>Virtual disk information</Info>",
            "<Info>&lol9;</Info>",
            1,
        )
        .replacen(r#"ovf:href="disk1.img""#, r#"ovf:href="&lol9;""#, 1);
    let mut ova = Ova::new().disk(disk);
    ova.ovf_text = Some(text);
    let path = ova.build(w.root(), "in.ova");
    assert_rejected(&w, &path, &[OVF_NAME]);
}

#[test]
fn oversized_ovf() {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &SMALL, Source::Raw);
    let disk = a.disk(1, "disk1.img");
    let text = ovf_xml(std::slice::from_ref(&disk.ovf));
    // A well-formed descriptor, padded past 4 MiB with a comment.
    let pad = format!("<!-- {} -->\n", "x".repeat((4 << 20) + 100));
    let decl_end = text.find("?>\n").expect("xml declaration") + 3;
    let mut big = text.clone();
    big.insert_str(decl_end, &pad);
    assert!(big.len() > 4 << 20);
    let mut ova = Ova::new().disk(disk);
    ova.ovf_text = Some(big);
    let path = ova.build(w.root(), "in.ova");
    assert_rejected(&w, &path, &[OVF_NAME]);
}

// ---------------------------------------------------------------------------
// Hostile disk images.

/// A streamOptimized VMDK whose header capacity is patched down to 1 MiB
/// while its grains go up to 6 MiB; the OVF agrees with the header.
fn vmdk_beyond_capacity(w: &Work) -> (PathBuf, Disk) {
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let mut bytes = fs::read(&a.file).expect("read vmdk");
    assert_eq!(&bytes[..4], b"KDMV");
    let sectors = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    assert_eq!(sectors * 512, MAIN.size);
    bytes[12..20].copy_from_slice(&(2048u64).to_le_bytes());
    let patched = w.path("patched.vmdk");
    fs::write(&patched, &bytes).expect("write patched vmdk");
    let disk = Disk::new(1, "disk1.vmdk", &patched, Source::Vmdk, 1 << 20);
    (patched, disk)
}

#[test]
fn vmdk_grain_beyond_capacity() {
    let w = Work::new();
    let (_, disk) = vmdk_beyond_capacity(&w);
    let path = Ova::new().disk(disk).build(w.root(), "in.ova");
    assert_rejected(&w, &path, &["disk1.vmdk"]);
}

#[test]
fn fixture_patched_vmdk_claims_one_mib() {
    let w = Work::new();
    let (patched, _) = vmdk_beyond_capacity(&w);
    assert_eq!(
        image::info(&patched, "vmdk")["virtual-size"].as_u64(),
        Some(1 << 20)
    );
}

/// A qcow2 whose L1 table offset points far beyond the end of the entry.
fn qcow2_l1_outside(w: &Work) -> (PathBuf, Disk) {
    let a = ova::prepare(w.root(), "a", &ODD, Source::Qcow2V3);
    let mut bytes = fs::read(&a.file).expect("read qcow2");
    assert_eq!(&bytes[..4], b"QFI\xfb");
    let l1 = u64::from_be_bytes(bytes[40..48].try_into().expect("8 bytes"));
    assert!(l1 > 0 && l1 < bytes.len() as u64);
    bytes[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes());
    let patched = w.path("patched.qcow2");
    fs::write(&patched, &bytes).expect("write patched qcow2");
    let disk = Disk::new(1, "disk1.qcow2", &patched, Source::Qcow2V3, ODD.size);
    (patched, disk)
}

#[test]
fn qcow2_l1_table_outside_entry() {
    let w = Work::new();
    let (_, disk) = qcow2_l1_outside(&w);
    let path = Ova::new().disk(disk).build(w.root(), "in.ova");
    assert_rejected(&w, &path, &["disk1.qcow2"]);
}

#[test]
fn fixture_patched_qcow2_is_corrupt() {
    let w = Work::new();
    let (patched, _) = qcow2_l1_outside(&w);
    let out = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&patched)
        .output()
        .expect("run qemu-img check");
    assert!(!out.status.success(), "qemu-img accepts the patched qcow2");
}

/// A qcow2 overlay naming an existing raw image as its backing file.
fn qcow2_with_backing(w: &Work) -> PathBuf {
    let base = ODD.write_raw(&w.path("base.raw"));
    let overlay = w.path("overlay.qcow2");
    tool(
        "qemu-img",
        &[
            OsStr::new("create"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new("qcow2"),
            OsStr::new("-F"),
            OsStr::new("raw"),
            OsStr::new("-b"),
            base.as_os_str(),
            overlay.as_os_str(),
        ],
    );
    overlay
}

#[test]
fn qcow2_with_backing_file() {
    let w = Work::new();
    let overlay = qcow2_with_backing(&w);
    let path = Ova::new()
        .disk(Disk::new(
            1,
            "disk1.qcow2",
            &overlay,
            Source::Qcow2V3,
            ODD.size,
        ))
        .build(w.root(), "in.ova");
    assert_rejected(&w, &path, &["disk1.qcow2"]);
}

#[test]
fn fixture_backing_file_is_recorded() {
    let w = Work::new();
    let overlay = qcow2_with_backing(&w);
    let info = image::info(&overlay, "qcow2");
    assert!(
        info["backing-filename"]
            .as_str()
            .is_some_and(|b| b.ends_with("base.raw")),
        "{info}"
    );
    assert_eq!(info["virtual-size"].as_u64(), Some(ODD.size));
}

/// gzip of 100 MiB of zeros, declared as a 1 MiB raw disk.
fn gzip_bomb(w: &Work) -> PathBuf {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..100 {
        enc.write_all(&zeros).expect("compress");
    }
    let path = w.path("bomb.gz");
    fs::write(&path, enc.finish().expect("finish gzip")).expect("write bomb");
    path
}

#[test]
fn gzip_decompression_bomb() {
    let w = Work::new();
    let bomb = gzip_bomb(&w);
    let path = Ova::new()
        .disk(Disk::new(1, "disk1.img", &bomb, Source::Gzip, 1 << 20))
        .build(w.root(), "in.ova");
    assert_rejected(&w, &path, &["disk1.img"]);
}

#[test]
fn gzip_bomb_before_the_ovf() {
    // The disk arrives before the OVF, so its capacity is settled only when
    // the OVF comes: the inflated 100 MiB must still be refused.
    let w = Work::new();
    let bomb = gzip_bomb(&w);
    let path = Ova::new()
        .disk(Disk::new(1, "disk1.img", &bomb, Source::Gzip, 1 << 20))
        .placement(Placement::OvfLast)
        .build(w.root(), "in.ova");
    assert_rejected(&w, &path, &["disk1.img", "capacity"]);
}

#[test]
fn fixture_gzip_bomb_expands_to_100_mib() {
    let w = Work::new();
    let bomb = gzip_bomb(&w);
    assert!(support::file_len(&bomb) < 1 << 20);
    let list = tool("gzip", &[OsStr::new("-l"), bomb.as_os_str()]);
    assert!(list.contains("104857600"), "{list}");
}
