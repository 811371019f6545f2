//! What a package says and what it is must lead to one reading: a disk is
//! never dropped for its name, a tar entry that is not a regular file never
//! stands for a file of the package, the entry order does not change the
//! result, and names that would break a file name or a line of output are
//! refused or escaped.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use support::image::{self, MAIN, ODD, SMALL, Source, Target};
use support::ova::{self, Disk, OVF_NAME, Ova, Placement, ovf_xml};
use support::tar::{TarWriter, ustar_header};
use support::{Outcome, Work, assert_dir_empty, file_len, ovaio};

/// `ovaio import PKG --dir OUT --format FORMAT --json`.
fn import_dir(pkg: &Path, out: &Path, format: &str) -> Outcome {
    ovaio()
        .arg("import")
        .arg(pkg)
        .arg("--dir")
        .arg(out)
        .arg("--format")
        .arg(format)
        .arg("--json")
        .run()
}

/// The hrefs of the disks an import summary lists.
fn summary_hrefs(run: &Outcome) -> Vec<String> {
    run.json()["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .map(|d| d["href"].as_str().expect("href").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// A disk whose file has a name that is otherwise skipped.

#[test]
fn d03_disks_named_like_skipped_extras_are_imported() {
    let w = Work::new();
    let p = ova::prepare(w.root(), "a", &SMALL, Source::Raw);
    for name in ["pad", "tpm.dat", "nvram.dat", "vm.cert"] {
        let pkg = Ova::new()
            .disk(p.disk(1, name))
            .build(w.root(), &format!("{name}.ova"));
        let out = w.mkdir(&format!("out-{name}"));
        let run = import_dir(&pkg, &out, "raw");
        run.assert_success();
        assert_eq!(summary_hrefs(&run), vec![name.to_owned()], "{name}");
        let stem = Path::new(name).file_stem().expect("stem").to_string_lossy();
        image::assert_target(
            &p.raw,
            &out.join(format!("{stem}.raw")),
            Target::Raw,
            p.capacity,
        );
    }
}

#[test]
fn d03_a_disk_named_pad_before_the_ovf_fails_unless_mapped() {
    let w = Work::new();
    let p = ova::prepare(w.root(), "a", &SMALL, Source::Raw);
    let pkg = Ova::new()
        .disk(p.disk(1, "pad"))
        .placement(Placement::OvfLast)
        .build(w.root(), "in.ova");
    let out = w.mkdir("out");
    import_dir(&pkg, &out, "raw").assert_error(&["entry 'pad'", "is a disk in the OVF", "--disk"]);
    assert_dir_empty(&out);
    // Named with --disk it is a disk from the start.
    let target = out.join("d.raw");
    let run = ovaio()
        .arg("import")
        .arg(&pkg)
        .arg("--disk")
        .arg(format!("pad={}", target.display()))
        .run();
    run.assert_success();
    image::assert_target(&p.raw, &target, Target::Raw, p.capacity);
}

// ---------------------------------------------------------------------------
// Tar entries that are not regular files.

/// A package: the OVF (one raw disk `disk1.raw` of 4 KiB), then the entries
/// `build` adds.
fn with_entries(w: &Work, name: &str, build: impl FnOnce(&mut TarWriter, &[u8])) -> PathBuf {
    let data = vec![0x5Au8; 4096];
    let ovf = ovf_xml(&[ova::raw_ovf_disk(1, "disk1.raw", 4096, 4096)]);
    let mut t = TarWriter::new();
    t.file(OVF_NAME, ovf.as_bytes());
    build(&mut t, &data);
    t.end();
    let path = w.path(name);
    t.write_to(&path);
    path
}

#[test]
fn d05_a_link_after_the_disk_under_its_name_is_refused() {
    let w = Work::new();
    for (flag, what) in [(b'2', "symbolic link"), (b'1', "hard link")] {
        let pkg = with_entries(&w, &format!("after-{}.ova", flag as char), |t, data| {
            t.file("disk1.raw", data);
            t.header(ustar_header("disk1.raw", 0, flag));
        });
        let out = w.mkdir(&format!("out-after-{}", flag as char));
        let run = import_dir(&pkg, &out, "raw");
        run.assert_error(&["entry 'disk1.raw'", what]);
        assert_eq!(run.status.code(), Some(1));
        assert_dir_empty(&out);
    }
}

#[test]
fn d05_a_link_before_the_disk_under_its_name_is_refused() {
    // The OVF last, so that the link is not yet known to be a referenced
    // file when it passes: the repeated name gives it away.
    let w = Work::new();
    let ovf = ovf_xml(&[ova::raw_ovf_disk(1, "disk1.raw", 4096, 4096)]);
    let mut t = TarWriter::new();
    t.header(ustar_header("disk1.raw", 0, b'2'));
    t.file("disk1.raw", &[0x5Au8; 4096]);
    t.file(OVF_NAME, ovf.as_bytes());
    t.end();
    let pkg = w.path("before.ova");
    t.write_to(&pkg);
    let out = w.mkdir("out");
    import_dir(&pkg, &out, "raw").assert_error(&[
        "entry 'disk1.raw'",
        "appears twice",
        "symbolic link",
    ]);
    assert_dir_empty(&out);
}

#[test]
fn d05_a_link_or_directory_shadowing_the_ovf_is_refused() {
    let w = Work::new();
    for (flag, what) in [(b'1', "hard link"), (b'5', "directory")] {
        let pkg = with_entries(&w, &format!("ovf-{}.ova", flag as char), |t, data| {
            t.file("disk1.raw", data);
            t.header(ustar_header(OVF_NAME, 0, flag));
        });
        let out = w.mkdir(&format!("out-{}", flag as char));
        import_dir(&pkg, &out, "raw").assert_error(&[&format!("entry '{OVF_NAME}'"), what]);
        assert_dir_empty(&out);
    }
}

#[test]
fn d05_a_referenced_file_that_is_a_link_is_refused_in_either_order() {
    let w = Work::new();
    let ovf = ovf_xml(&[ova::raw_ovf_disk(1, "disk1.raw", 0, 4096)]);
    for ovf_first in [true, false] {
        let mut t = TarWriter::new();
        if ovf_first {
            t.file(OVF_NAME, ovf.as_bytes());
        }
        t.header(ustar_header("disk1.raw", 0, b'2'));
        if !ovf_first {
            t.file(OVF_NAME, ovf.as_bytes());
        }
        t.end();
        let pkg = w.path(&format!("ref-{ovf_first}.ova"));
        t.write_to(&pkg);
        let out = w.mkdir(&format!("out-{ovf_first}"));
        let run = import_dir(&pkg, &out, "raw");
        run.assert_error(&["entry 'disk1.raw'", "symbolic link", "not a regular file"]);
        assert_eq!(run.status.code(), Some(1), "OVF first: {ovf_first}");
        assert_dir_empty(&out);
    }
}

#[test]
fn d05_unreferenced_directories_and_links_are_skipped() {
    let w = Work::new();
    let pkg = with_entries(&w, "dirs.ova", |t, data| {
        t.header(ustar_header("extras/", 0, b'5'));
        t.header(ustar_header("readme-link", 0, b'2'));
        t.file("disk1.raw", data);
    });
    let out = w.mkdir("out");
    let run = import_dir(&pkg, &out, "raw");
    run.assert_success();
    assert_eq!(summary_hrefs(&run), vec!["disk1.raw".to_owned()]);
    let skipped = run.json()["skipped"].to_string();
    assert!(
        skipped.contains("extras/") && skipped.contains("readme-link"),
        "{skipped}"
    );
}

// ---------------------------------------------------------------------------
// The OVF before or after the disk: one result.

/// Imports the single-disk package `disk` into a fresh directory, once with
/// the OVF first and once with it last; returns both outcomes and targets.
fn both_orders(w: &Work, tag: &str, disk: &Disk, format: &str) -> [(Outcome, PathBuf); 2] {
    [Placement::OvfFirst, Placement::OvfLast].map(|placement| {
        let name = format!("{tag}-{placement:?}");
        let pkg = Ova::new()
            .disk(disk.clone())
            .placement(placement)
            .build(w.root(), &format!("{name}.ova"));
        let out = w.mkdir(&name);
        let run = import_dir(&pkg, &out, format);
        let stem = Path::new(&disk.href)
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        (run, out.join(format!("{stem}.{format}")))
    })
}

/// The error line without the package path and the byte offset, which
/// differ with the order.
fn error_reason(run: &Outcome) -> String {
    let line = run.stderr.trim();
    let line = &line[line.find("entry ").unwrap_or(0)..];
    match (line.find(" at byte "), line.find(": ")) {
        (Some(a), Some(b)) if a < b => format!("{}{}", &line[..a], &line[b..]),
        _ => line.to_owned(),
    }
}

/// Both orders failed alike, leaving nothing.
fn assert_same_refusal(runs: &[(Outcome, PathBuf); 2], mentions: &[&str]) {
    for (run, target) in runs {
        run.assert_error(mentions);
        assert_dir_empty(target.parent().expect("dir"));
    }
    assert_eq!(runs[0].0.status.code(), runs[1].0.status.code());
    assert_eq!(error_reason(&runs[0].0), error_reason(&runs[1].0));
}

/// Both orders succeeded with the same target.
fn assert_same_target(runs: &[(Outcome, PathBuf); 2], format: &str, capacity: u64) {
    for (run, target) in runs {
        run.assert_success();
        let info = image::info(target, format);
        assert_eq!(
            info["virtual-size"].as_u64(),
            Some(capacity),
            "{}",
            target.display()
        );
    }
    let json: Vec<u64> = runs
        .iter()
        .map(|(r, _)| r.json()["disks"][0]["capacity"].as_u64().expect("capacity"))
        .collect();
    assert_eq!(json, vec![capacity, capacity]);
    support::tool(
        "qemu-img",
        &[
            "compare".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            format.as_ref(),
            "-F".as_ref(),
            format.as_ref(),
            runs[0].1.as_os_str(),
            runs[1].1.as_os_str(),
        ],
    );
}

#[test]
fn d06_a_raw_entry_larger_than_the_ovf_capacity_is_refused_in_either_order() {
    let w = Work::new();
    let p = ova::prepare(w.root(), "a", &SMALL, Source::Raw);
    let mut disk = p.disk(1, "disk1.raw");
    disk.ovf.capacity = SMALL.size - 4096;
    for format in ["raw", "qcow2"] {
        let runs = both_orders(&w, &format!("big-{format}"), &disk, format);
        assert_same_refusal(&runs, &["entry 'disk1.raw'", "more than the disk capacity"]);
    }
}

#[test]
fn d06_a_raw_entry_smaller_than_the_ovf_capacity_gets_the_ovf_size_in_either_order() {
    let w = Work::new();
    let p = ova::prepare(w.root(), "a", &SMALL, Source::Raw);
    let mut disk = p.disk(1, "disk1.raw");
    let capacity = SMALL.size + (1 << 20) + 512;
    disk.ovf.capacity = capacity;
    for format in ["raw", "qcow2"] {
        let runs = both_orders(&w, &format!("small-{format}"), &disk, format);
        assert_same_target(&runs, format, capacity);
        if format == "raw" {
            assert_eq!(file_len(&runs[1].1), capacity);
        }
    }
}

#[test]
fn d06_an_image_rounded_up_to_a_sector_gets_the_exact_ovf_size_in_either_order() {
    let w = Work::new();
    // ODD ends on a sector boundary; an OVF capacity 100 bytes short of it
    // lies inside the image's last sector.
    let p = ova::prepare(w.root(), "a", &ODD, Source::Qcow2V3);
    let last = fs::read(&p.raw).expect("raw");
    let exact = ODD.size - 100;
    let tail_zero = last[usize::try_from(exact).expect("size")..]
        .iter()
        .all(|&b| b == 0);
    let mut disk = p.disk(1, "disk1.qcow2");
    disk.ovf.capacity = exact;
    for format in ["raw", "qcow2"] {
        let runs = both_orders(&w, &format!("odd-{format}"), &disk, format);
        if tail_zero {
            assert_same_target(&runs, format, exact);
        } else {
            assert_same_refusal(&runs, &["entry 'disk1.qcow2'", "past the OVF capacity"]);
        }
    }
    // And an image whose last sector holds data past that capacity.
    let q = ova::prepare(w.root(), "b", &MAIN, Source::Qcow2V3);
    let mut disk = q.disk(1, "disk1.qcow2");
    disk.ovf.capacity = MAIN.size - 1;
    let main_tail = fs::read(&q.raw).expect("raw")[usize::try_from(MAIN.size - 1).expect("size")];
    assert_ne!(main_tail, 0, "MAIN ends in data");
    let runs = both_orders(&w, "main", &disk, "qcow2");
    assert_same_refusal(&runs, &["entry 'disk1.qcow2'", "past the OVF capacity"]);
}

// ---------------------------------------------------------------------------
// Names that would break a file name or a line of output.

/// A package with one raw disk under `href`.
fn named(w: &Work, file: &str, href: &str) -> PathBuf {
    let data = vec![0x42u8; 4096];
    let ovf = ovf_xml(&[ova::raw_ovf_disk(1, "HREF", 4096, 4096)])
        .replace("HREF", &href.replace('\n', "&#10;"));
    let mut t = TarWriter::new();
    t.file(OVF_NAME, ovf.as_bytes());
    t.file(href, &data);
    t.end();
    let path = w.path(file);
    t.write_to(&path);
    path
}

#[test]
fn d12_dir_refuses_hrefs_that_cannot_be_file_names() {
    let w = Work::new();
    for (i, (href, escaped)) in [
        ("disk1\n.raw", "disk1\\n.raw"),
        ("x\u{202E}war.exe", "x\\u{202E}war.exe"),
        (" disk1.raw", " disk1.raw"),
        ("disk1.raw ", "disk1.raw "),
    ]
    .into_iter()
    .enumerate()
    {
        let pkg = named(&w, &format!("n{i}.ova"), href);
        let out = w.mkdir(&format!("out{i}"));
        let run = ovaio().arg("import").arg(&pkg).arg("--dir").arg(&out).run();
        run.assert_error(&[
            &format!("entry '{escaped}'"),
            "--dir cannot make a file name",
            "--disk",
        ]);
        assert_eq!(run.status.code(), Some(2), "{href:?}");
        assert_dir_empty(&out);
    }
}

#[test]
fn d12_text_output_escapes_names_from_the_package() {
    let w = Work::new();
    let href = "disk1\n\u{202E}.raw";
    let pkg = named(&w, "n.ova", href);
    let out = w.mkdir("out");
    let target = out.join("d.raw");
    let run = ovaio()
        .arg("import")
        .arg(&pkg)
        .arg("--disk")
        .arg(format!("{href}={}", target.display()))
        .run();
    run.assert_success();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "one line per disk and the total:\n{}",
        run.stdout
    );
    assert!(
        lines[0].starts_with("disk1\\n\\u{202E}.raw (raw)"),
        "{}",
        lines[0]
    );
    assert_eq!(fs::read(&target).expect("target"), vec![0x42u8; 4096]);

    let run = ovaio().arg("inspect").arg(&pkg).run();
    run.assert_success();
    assert!(!run.stdout.contains('\u{202E}'), "{}", run.stdout);
    assert!(
        run.stdout.contains("disk1\\n\\u{202E}.raw"),
        "{}",
        run.stdout
    );
}

#[test]
fn d05_an_entry_of_unknown_type_is_refused_not_skipped() {
    // GNU tar extracts an unknown typeflag as a regular file: skipped, it
    // would hide this manifest (and its wrong digest) from ovaio alone.
    let w = Work::new();
    let data = vec![0x5Au8; 4096];
    let ovf = ovf_xml(&[ova::raw_ovf_disk(1, "disk1.raw", 4096, 4096)]);
    let manifest = format!("SHA256(disk1.raw)= {}\n", "00".repeat(32));
    for flag in [0x10u8, b'Z'] {
        let mut t = TarWriter::new();
        t.file(OVF_NAME, ovf.as_bytes());
        t.file("disk1.raw", &data);
        t.header(ustar_header("vm.mf", manifest.len() as u64, flag));
        t.data(manifest.as_bytes());
        t.end();
        let pkg = w.path(&format!("flag-{flag}.ova"));
        t.write_to(&pkg);
        let out = w.mkdir(&format!("out-{flag}"));
        let run = import_dir(&pkg, &out, "raw");
        run.assert_error(&[
            "entry 'vm.mf'",
            "GNU tar would extract it as a regular file",
        ]);
        assert_eq!(run.status.code(), Some(6), "typeflag {flag:#x}");
        assert_dir_empty(&out);
        ovaio()
            .arg("inspect")
            .arg(&pkg)
            .run()
            .assert_error(&["entry 'vm.mf'", "is not read by ovaio"]);
    }
}
