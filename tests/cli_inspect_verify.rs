//! A new user's first hour with `ovaio import` and `ovaio inspect`: a file
//! that is not an OVA at all (a bare disk image, a README, a compressed
//! package) is named for what it looks like; and `inspect` checks what
//! import would check (manifest digests, disk formats) unless `--quick`
//! asks for headers only.
//!
//! Fixtures come from the real tools: disk images from `qemu-img`,
//! packages from GNU tar, the compressed package from `gzip`.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha512};
use support::image::{self, Fill, Layout, Run, SMALL, Source, VMDK_URI};
use support::ova::{self, MF_NAME, Manifest, OVF_NAME, Ova, Placement};
use support::tar;
use support::{Outcome, Work, assert_dir_empty, ovaio, tool};

// ------------------------------------------------------------ not an OVA

/// A file that is not an OVA, and what the error must say about it.
struct NotOva {
    file: PathBuf,
    /// Words of the error line naming what the file looks like.
    looks_like: &'static [&'static str],
    /// Words of the suggestion `import` makes for it.
    hint: &'static [&'static str],
}

fn not_ovas(w: &Work) -> Vec<NotOva> {
    let raw = SMALL.write_raw(&w.path("small.raw"));
    let readme = w.path("README");
    fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"), &readme).expect("copy README");
    // A gzip-compressed package is decompressed and imported; a
    // gzip-compressed disk image is named as what it holds.
    let gzipped = w.path("disk.qcow2.gz");
    let qcow2 = Source::Qcow2V3.convert(&raw, &w.path("gzipped.qcow2"));
    fs::write(
        &gzipped,
        image::gzip(&fs::read(&qcow2).expect("read qcow2")),
    )
    .expect("write disk.qcow2.gz");
    let blank = w.path("blank.img");
    tool(
        "qemu-img",
        &[
            OsStr::new("create"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new("raw"),
            blank.as_os_str(),
            OsStr::new("1M"),
        ],
    );
    vec![
        NotOva {
            file: Source::Qcow2V3.convert(&raw, &w.path("disk.qcow2")),
            looks_like: &["qcow2 disk image"],
            hint: &["ovaio export --name", "qemu-img convert"],
        },
        NotOva {
            file: Source::Vmdk.convert(&raw, &w.path("disk.vmdk")),
            looks_like: &["VMDK streamOptimized"],
            hint: &["qemu-img convert"],
        },
        NotOva {
            file: readme,
            looks_like: &["looks like text"],
            hint: &[],
        },
        NotOva {
            // The sample image starts with random bytes, as a disk with a
            // boot sector does.
            file: raw,
            looks_like: &["raw disk image"],
            hint: &["ovaio export --name"],
        },
        NotOva {
            file: gzipped,
            looks_like: &["compressed with gzip; decompressed, it looks like a qcow2 disk image"],
            hint: &["qemu-img convert"],
        },
        NotOva {
            // All zeros: to tar, two zero blocks are an empty archive.
            file: blank,
            looks_like: &["no tar entries", "blank raw disk image"],
            hint: &[],
        },
    ]
}

/// Exit 1 (bad input) with one error line that names the file, says it is
/// not an OVA and what it looks like.
fn assert_not_ova(run: &Outcome, case: &NotOva, extra: &[&str]) {
    let path = case.file.display().to_string();
    let mut words = vec![path.as_str(), "not an OVA package"];
    words.extend_from_slice(case.looks_like);
    words.extend_from_slice(extra);
    run.assert_error(&words);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(!run.stderr.contains("checksum"), "{}", run.stderr);
}

#[test]
fn import_names_what_a_file_that_is_not_an_ova_looks_like() {
    let w = Work::new();
    for case in not_ovas(&w) {
        let out = w.mkdir(&format!(
            "out-{}",
            case.file.file_name().unwrap().to_string_lossy()
        ));
        let run = ovaio()
            .arg("import")
            .arg(&case.file)
            .arg("--dir")
            .arg(&out)
            .run();
        assert_not_ova(&run, &case, case.hint);
        assert_dir_empty(&out);
    }
}

#[test]
fn inspect_names_what_a_file_that_is_not_an_ova_looks_like() {
    let w = Work::new();
    for case in not_ovas(&w) {
        for quick in [false, true] {
            let mut cmd = ovaio().arg("inspect").arg(&case.file);
            if quick {
                cmd = cmd.arg("--quick");
            }
            let run = cmd.run();
            assert_not_ova(&run, &case, &[]);
            assert!(run.stdout.is_empty(), "no report: {}", run.stdout);
        }
    }
}

#[test]
fn a_disk_image_on_stdin_is_named_too() {
    let w = Work::new();
    let raw = SMALL.write_raw(&w.path("small.raw"));
    let qcow2 = Source::Qcow2V3.convert(&raw, &w.path("disk.qcow2"));
    let bytes = fs::read(&qcow2).expect("read qcow2");
    let out = w.mkdir("out");
    let run = ovaio()
        .arg("import")
        .arg("-")
        .arg("--dir")
        .arg(&out)
        .stdin(bytes.clone())
        .run();
    run.assert_error(&["not an OVA package", "qcow2 disk image"]);
    assert_eq!(run.status.code(), Some(1));
    assert_dir_empty(&out);
    let run = ovaio().arg("inspect").arg("-").stdin(bytes).run();
    run.assert_error(&["not an OVA package", "qcow2 disk image"]);
    assert_eq!(run.status.code(), Some(1));
}

#[test]
fn a_package_damaged_after_its_first_header_keeps_the_tar_message() {
    let w = Work::new();
    let disk = ova::prepare(w.root(), "a", &SMALL, Source::Raw);
    let path = Ova::new()
        .disk(disk.disk(1, "disk1.img"))
        .build(w.root(), "vm.ova");
    // The second entry's header: the OVF is first and smaller than a block.
    let mut bytes = fs::read(&path).expect("read package");
    let listed = tar::list(&path);
    let second = usize::try_from(listed[1].header_offset).expect("offset");
    bytes[second + 148] ^= 0x01;
    let damaged = w.path("damaged.ova");
    fs::write(&damaged, bytes).expect("write");
    let out = w.mkdir("out");
    let run = ovaio()
        .arg("import")
        .arg(&damaged)
        .arg("--dir")
        .arg(&out)
        .run();
    run.assert_error(&["checksum"]);
    assert!(!run.stderr.contains("not an OVA"), "{}", run.stderr);
    assert_dir_empty(&out);
}

// ------------------------------------------------------- verification

/// Two disks: a streamOptimized VMDK and a gzip-compressed raw image.
fn two_disks(w: &Work) -> Ova {
    let a = ova::prepare(w.root(), "a", &SMALL, Source::Vmdk);
    let b = ova::prepare(w.root(), "b", &SMALL, Source::Gzip);
    Ova::new()
        .disk(a.disk(1, "disk1.vmdk"))
        .disk(b.disk(2, "disk2.img"))
}

fn inspect(path: &Path, extra: &[&str]) -> Outcome {
    let mut cmd = ovaio().arg("inspect").arg(path);
    for a in extra {
        cmd = cmd.arg(a);
    }
    cmd.run()
}

fn line_statuses(json: &Value) -> Vec<(String, String)> {
    json["verification"]["manifest"]["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no manifest lines in {json}"))
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap_or_default().to_owned(),
                l["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn a_good_package_is_verified_whether_the_manifest_comes_first_or_last() {
    let w = Work::new();
    for (i, placement) in [Placement::ManifestAfterOvf, Placement::OvfFirst]
        .into_iter()
        .enumerate()
    {
        let path = two_disks(&w)
            .manifest(Manifest::Sha256)
            .placement(placement)
            .build(w.root(), &format!("good{i}.ova"));
        let run = inspect(&path, &[]);
        run.assert_success();
        for line in [
            "Manifest: verified (3 entries)",
            "disk1.vmdk: format ok (vmdk)",
            "disk2.img: format ok (raw, gzip)",
        ] {
            assert!(run.stdout.contains(line), "{line:?} in:\n{}", run.stdout);
        }
        let run = inspect(&path, &["--json"]);
        run.assert_success();
        let json = run.json();
        assert_eq!(json["verification"]["manifest"]["status"], "verified");
        assert_eq!(
            line_statuses(&json),
            owned(&[
                (OVF_NAME, "verified"),
                ("disk1.vmdk", "verified"),
                ("disk2.img", "verified")
            ])
        );
        let disks = json["verification"]["disks"].as_array().expect("disks");
        assert!(disks.iter().all(|d| d["status"] == "ok"), "{json}");
    }
}

/// The manifest `Ova::manifest_for` would write, with disk1's digest taken
/// of other bytes.
fn wrong_disk1_manifest(ova: &Ova) -> String {
    let style = Manifest::Sha256;
    let mut text = style.line(OVF_NAME, &style.digest(ova.ovf().as_bytes()));
    text.push_str(&style.line("disk1.vmdk", &style.digest(b"not the disk")));
    text.push_str(&style.line("disk2.img", &style.digest_file(&ova.disks[1].file)));
    text
}

#[test]
fn a_wrong_digest_prints_the_report_then_exits_5_naming_the_entry() {
    let w = Work::new();
    let mut ova = two_disks(&w).manifest(Manifest::Sha256);
    ova.manifest_text = Some(wrong_disk1_manifest(&ova));
    let path = ova.build(w.root(), "bad.ova");

    let run = inspect(&path, &[]);
    run.assert_error(&["disk1.vmdk", "digest mismatch"]);
    assert_eq!(run.status.code(), Some(5));
    for line in [
        "Manifest: MISMATCH for disk1.vmdk",
        "Manifest: 2 of 3 entries verified",
        "Entries:",
    ] {
        assert!(run.stdout.contains(line), "{line:?} in:\n{}", run.stdout);
    }

    let json_run = inspect(&path, &["--json"]);
    assert_eq!(json_run.status.code(), Some(5));
    let json = json_run.json();
    assert_eq!(json["verification"]["manifest"]["status"], "failed");
    assert_eq!(
        line_statuses(&json),
        owned(&[
            (OVF_NAME, "verified"),
            ("disk1.vmdk", "mismatch"),
            ("disk2.img", "verified")
        ])
    );
    // The same verdict, in the same words, as import's.
    let out = w.mkdir("out");
    let import = ovaio()
        .arg("import")
        .arg(&path)
        .arg("--dir")
        .arg(&out)
        .run();
    assert_eq!(import.status.code(), Some(5));
    assert_eq!(import.stderr.trim(), run.stderr.trim());
    assert_dir_empty(&out);
}

#[test]
fn a_manifest_line_naming_no_entry_exits_5() {
    let w = Work::new();
    let mut ova = two_disks(&w).manifest(Manifest::Sha256);
    ova.manifest_extra = Manifest::Sha256.line("ghost.vmdk", &Manifest::Sha256.digest(b"boo"));
    let path = ova.build(w.root(), "ghost.ova");
    let run = inspect(&path, &["--json"]);
    run.assert_error(&["ghost.vmdk", "no such entry"]);
    assert_eq!(run.status.code(), Some(5));
    let json = run.json();
    assert_eq!(
        line_statuses(&json).last(),
        Some(&("ghost.vmdk".to_owned(), "missing".to_owned()))
    );
}

#[test]
fn sha512_lines_are_checked_wherever_the_manifest_is() {
    let w = Work::new();
    let line = |name: &str, data: &[u8]| {
        format!("SHA512({name})= {}\n", hex::encode(Sha512::digest(data)))
    };
    // Before the manifest every algorithm is computed; the OVF, held in
    // memory, is hashed in the line's algorithm whenever it came.
    for (i, placement) in [Placement::ManifestAfterOvf, Placement::OvfFirst]
        .into_iter()
        .enumerate()
    {
        let mut ova = two_disks(&w)
            .manifest(Manifest::Sha256)
            .placement(placement);
        let mut text = line(OVF_NAME, ova.ovf().as_bytes());
        for d in &ova.disks {
            text.push_str(&line(&d.href, &fs::read(&d.file).expect("read disk")));
        }
        ova.manifest_text = Some(text);
        let path = ova.build(w.root(), &format!("sha512-{i}.ova"));
        let run = inspect(&path, &["--json"]);
        run.assert_success();
        let json = run.json();
        assert_eq!(json["manifest"]["algorithm"], "SHA512");
        assert_eq!(json["verification"]["manifest"]["status"], "verified");
        assert_eq!(
            line_statuses(&json),
            owned(&[
                (OVF_NAME, "verified"),
                ("disk1.vmdk", "verified"),
                ("disk2.img", "verified")
            ])
        );
        let text = inspect(&path, &[]);
        text.assert_success();
        assert!(
            text.stdout.contains("Manifest: verified (3 entries)"),
            "{}",
            text.stdout
        );
    }
}

#[test]
fn a_format_the_content_contradicts_is_reported() {
    let w = Work::new();
    let q = ova::prepare(w.root(), "q", &SMALL, Source::Qcow2V3);
    let mut disk = q.disk(1, "disk1.vmdk");
    disk.ovf.format_uri = Some(VMDK_URI.to_owned());
    let path = Ova::new()
        .disk(disk)
        .manifest(Manifest::Sha256)
        .build(w.root(), "mislabelled.ova");
    let run = inspect(&path, &[]);
    // Import goes by the content, so this is a finding, not a failure.
    run.assert_success();
    let want = "disk1.vmdk: declared vmdk (streamOptimized) but content is qcow2";
    assert!(run.stdout.contains(want), "{want:?} in:\n{}", run.stdout);
    let json = inspect(&path, &["--json"]).json();
    let d = &json["verification"]["disks"][0];
    assert_eq!(d["status"], "mismatch");
    assert_eq!(d["content_format"], "qcow2");
}

/// 64 MiB with data at both ends and in the middle: a disk entry large
/// enough that reading it all and skipping it differ by orders of
/// magnitude.
const BIG: Layout = Layout {
    size: 64 << 20,
    runs: &[
        Run {
            offset: 0,
            len: 1 << 20,
            fill: Fill::Random(31),
        },
        Run {
            offset: 30 << 20,
            len: 4 << 20,
            fill: Fill::Text,
        },
        Run {
            offset: (64 << 20) - 65536,
            len: 65536,
            fill: Fill::Random(32),
        },
    ],
};

fn entries(json: &Value) -> Vec<(String, u64, u64)> {
    json["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries in {json}"))
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_owned(),
                e["size"].as_u64().unwrap_or_default(),
                e["offset"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn quick_reads_headers_only_and_verifies_nothing() {
    let w = Work::new();
    let big = ova::prepare(w.root(), "big", &BIG, Source::Raw);
    let small = ova::prepare(w.root(), "small", &SMALL, Source::Vmdk);
    let mut ova = Ova::new()
        .disk(big.disk(1, "disk1.img"))
        .disk(small.disk(2, "disk2.vmdk"))
        .manifest(Manifest::Sha256);
    // A wrong digest that only a full read can notice.
    ova.manifest_text = Some({
        let style = Manifest::Sha256;
        let mut text = style.line(OVF_NAME, &style.digest(ova.ovf().as_bytes()));
        text.push_str(&style.line("disk1.img", &style.digest(b"not the disk")));
        text
    });
    let path = ova.build(w.root(), "big.ova");

    let full = inspect(&path, &["--json"]);
    assert_eq!(full.status.code(), Some(5), "{}", full.stderr);
    let full = full.json();
    assert_eq!(full["verification"]["manifest"]["status"], "failed");

    let quick = inspect(&path, &["--json", "--quick"]);
    quick.assert_success();
    let quick = quick.json();
    // The same entries at the same offsets, which GNU tar confirms.
    assert_eq!(entries(&quick), entries(&full));
    let listed = tar::list(&path);
    let names: Vec<String> = listed.iter().map(|l| l.name.clone()).collect();
    assert_eq!(
        names,
        [OVF_NAME, "disk1.img", "disk2.vmdk", MF_NAME].map(str::to_owned)
    );
    for ((name, size, offset), l) in entries(&quick).iter().zip(&listed) {
        assert_eq!((name, *size), (&l.name, l.size));
        assert_eq!(*offset, l.header_offset + 512, "{name}");
    }
    assert_eq!(
        quick["disks"], full["disks"],
        "the probe sees the same heads"
    );
    let v = &quick["verification"];
    assert_eq!(v["mode"], "quick");
    assert_eq!(v["manifest"]["status"], "not verified");
    assert!(
        v["disks"]
            .as_array()
            .expect("disks")
            .iter()
            .all(|d| d["status"] == "not checked"),
        "{v}"
    );

    let text = inspect(&path, &["--quick"]);
    text.assert_success();
    assert!(
        text.stdout.contains("Manifest: not verified (--quick)"),
        "{}",
        text.stdout
    );

    // From a pipe nothing can be skipped: read through, still unverified.
    let piped = ovaio()
        .arg("inspect")
        .arg("-")
        .arg("--quick")
        .arg("--json")
        .stdin(fs::read(&path).expect("read package"))
        .run();
    piped.assert_success();
    let piped = piped.json();
    assert_eq!(entries(&piped), entries(&full));
    assert_eq!(piped["verification"]["manifest"]["status"], "not verified");
}
