//! Packages compressed as a whole and zip archives, made by the real
//! tools: a two-disk OVA (a qcow2 and a streamOptimized VMDK, with a
//! SHA-256 manifest) packed by GNU tar, then compressed with the `gzip`,
//! `xz` and `zstd` command-line tools (also in two concatenated parts:
//! gzip members, xz streams, zstd frames), and zip archives written by
//! Python's zipfile (deflated, stored, and deflated to a pipe, which gives
//! each member a data descriptor). Each is imported from a file and from
//! standard input into raw and qcow2 targets that `qemu-img` judges;
//! `inspect` lists its members; the gzip'd package is uploaded to an
//! `ova-import` ticket and imported by a job of a real `ovaio serve`. A
//! truncated or corrupt package, and a zip member ovaio cannot stream,
//! fail with one error line and leave nothing behind.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::image::{self, MAIN, ODD, Source, Target};
use support::ova::{self, MF_NAME, Manifest, OVF_NAME, Ova, Prepared};
use support::poll;
use support::server::Server;
use support::{Outcome, Work, assert_dir_empty, ovaio, tool};

/// The package and what it was made from.
struct Package {
    w: Work,
    /// Entry `disk1.qcow2`.
    qcow2: Prepared,
    /// Entry `disk2.vmdk`.
    vmdk: Prepared,
    /// The plain tar archive.
    tar: PathBuf,
    /// The descriptor and manifest files tar packed.
    ovf: PathBuf,
    mf: PathBuf,
}

const QCOW2: &str = "disk1.qcow2";
const VMDK: &str = "disk2.vmdk";

fn package() -> Package {
    let w = Work::new();
    let qcow2 = ova::prepare(w.root(), "a", &MAIN, Source::Qcow2V3);
    let vmdk = ova::prepare(w.root(), "b", &ODD, Source::Vmdk);
    let tar = Ova::new()
        .disk(qcow2.disk(1, QCOW2))
        .disk(vmdk.disk(2, VMDK))
        .manifest(Manifest::Sha256)
        .build(w.root(), "vm.ova");
    let scratch = w.path("vm.ova.d");
    Package {
        ovf: scratch.join("descriptor"),
        mf: scratch.join("manifest"),
        w,
        qcow2,
        vmdk,
        tar,
    }
}

/// How a variant of the package was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gzip,
    Xz,
    Zstd,
    /// Deflated members, written to a file.
    ZipDeflated,
    /// Stored members, written to a file.
    ZipStored,
    /// Deflated members written to a pipe: sizes in data descriptors.
    ZipStreamed,
}

impl Kind {
    /// `compression` and `archive` as the summaries name them.
    fn summary(self) -> (&'static str, &'static str) {
        match self {
            Kind::Gzip => ("gzip", "tar"),
            Kind::Xz => ("xz", "tar"),
            Kind::Zstd => ("zstd", "tar"),
            _ => ("none", "zip"),
        }
    }
}

/// The command line that compresses a file to stdout.
fn compressor(kind: Kind) -> (&'static str, &'static [&'static str]) {
    match kind {
        Kind::Gzip => ("gzip", &["-c", "-n"]),
        Kind::Xz => ("xz", &["-c", "-T1"]),
        Kind::Zstd => ("zstd", &["-c", "-q"]),
        _ => unreachable!("not a compressor"),
    }
}

/// Runs `program` with stdout to `out`, panicking unless it exits 0 (a
/// missing tool fails the test).
fn run_to(program: &str, args: &[&OsStr], out: &Path) {
    let file = fs::File::create(out).expect("create output");
    let st = std::process::Command::new(program)
        .args(args)
        .stdout(file)
        .status()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(st.success(), "{program} {args:?} failed: {st}");
}

/// The tar compressed by the real tool; with `parts`, its two halves
/// compressed apart and concatenated (two gzip members, two xz streams,
/// two zstd frames), which the tools read as one stream.
fn compressed(p: &Package, kind: Kind, parts: bool) -> PathBuf {
    let (program, flags) = compressor(kind);
    let out = p.w.path(&format!(
        "vm.ova.{program}{}",
        if parts { ".parts" } else { "" }
    ));
    let compress = |input: &Path, out: &Path| {
        let mut args: Vec<&OsStr> = flags.iter().map(OsStr::new).collect();
        args.push(input.as_os_str());
        run_to(program, &args, out);
    };
    if !parts {
        compress(&p.tar, &out);
        return out;
    }
    let bytes = fs::read(&p.tar).expect("read tar");
    // Off any block or sector boundary.
    let half = bytes.len() / 2 + 777;
    let mut joined = Vec::new();
    for (i, part) in [&bytes[..half], &bytes[half..]].into_iter().enumerate() {
        let input = p.w.path(&format!("part{i}-{program}"));
        fs::write(&input, part).expect("write part");
        let packed = p.w.path(&format!("part{i}-{program}.out"));
        compress(&input, &packed);
        joined.extend(fs::read(&packed).expect("read part"));
    }
    fs::write(&out, joined).expect("write joined");
    out
}

/// Writes a zip archive of `members` (`(name, file, method)`) with
/// Python's zipfile, to a file or, with `pipe`, to a pipe (unseekable:
/// zipfile then puts each member's sizes in a data descriptor).
const ZIP_SCRIPT: &str = r#"
import io, sys, zipfile
class Pipe(io.RawIOBase):
    """A file that cannot seek or tell, as a pipe."""
    def __init__(self, f):
        self.f = f
    def writable(self):
        return True
    def write(self, b):
        return self.f.write(b)
out, pipe = sys.argv[1], sys.argv[2] == "pipe"
methods = {"stored": zipfile.ZIP_STORED, "deflated": zipfile.ZIP_DEFLATED,
           "bzip2": zipfile.ZIP_BZIP2}
target = Pipe(open(out, "wb")) if pipe else out
with zipfile.ZipFile(target, "w") as z:
    for spec in sys.argv[3:]:
        name, path, method = spec.split("=")
        z.write(path, arcname=name, compress_type=methods[method])
"#;

fn python_zip(out: &Path, pipe: bool, members: &[(&str, &Path, &str)]) {
    let mut args: Vec<String> = vec![
        "-c".into(),
        ZIP_SCRIPT.into(),
        out.display().to_string(),
        if pipe { "pipe" } else { "file" }.into(),
    ];
    for (name, path, method) in members {
        args.push(format!("{name}={}={method}", path.display()));
    }
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    tool("python3", &args);
    let flags = u16::from_le_bytes(
        fs::read(out).expect("read zip")[6..8]
            .try_into()
            .expect("two bytes"),
    );
    assert_eq!(
        flags & 8 != 0,
        pipe,
        "data descriptor flag of the first member"
    );
}

/// The package as a zip archive, every member with `method`.
fn zipped(p: &Package, kind: Kind) -> PathBuf {
    let (method, pipe) = match kind {
        Kind::ZipDeflated => ("deflated", false),
        Kind::ZipStored => ("stored", false),
        Kind::ZipStreamed => ("deflated", true),
        _ => unreachable!("not a zip"),
    };
    let out = p.w.path(&format!(
        "vm-{method}{}.zip",
        if pipe { "-pipe" } else { "" }
    ));
    python_zip(
        &out,
        pipe,
        &[
            (OVF_NAME, &p.ovf, method),
            (QCOW2, &p.qcow2.file, method),
            (VMDK, &p.vmdk.file, method),
            (MF_NAME, &p.mf, method),
        ],
    );
    out
}

fn variant(p: &Package, kind: Kind) -> PathBuf {
    match kind {
        Kind::Gzip | Kind::Xz | Kind::Zstd => compressed(p, kind, false),
        _ => zipped(p, kind),
    }
}

/// `ovaio import` of `src` (a file, or its bytes on stdin) into `dir` as
/// `format`, with `--json`.
fn import(src: &Path, stdin: bool, dir: &Path, format: Target) -> Outcome {
    let cmd = ovaio().arg("import");
    let cmd = if stdin {
        cmd.arg("-").stdin(fs::read(src).expect("read package"))
    } else {
        cmd.arg(src)
    };
    cmd.arg("--dir")
        .arg(dir)
        .arg("--format")
        .arg(format.name())
        .arg("--json")
        .run()
}

/// Both targets in `dir` against their sources, and the summary.
fn check_import(p: &Package, run: &Outcome, kind: Kind, dir: &Path, format: Target) {
    run.assert_success();
    let s = run.json();
    let (compression, archive) = kind.summary();
    assert_eq!(s["compression"], compression, "{kind:?}: {s}");
    assert_eq!(s["archive"], archive, "{kind:?}: {s}");
    assert_eq!(s["manifest"], "verified", "{kind:?}: {s}");
    assert_eq!(s["disks"].as_array().map(Vec::len), Some(2), "{s}");
    let ext = format.name();
    for (href, prep, stem) in [(QCOW2, &p.qcow2, "disk1"), (VMDK, &p.vmdk, "disk2")] {
        let target = dir.join(format!("{stem}.{ext}"));
        let d = s["disks"]
            .as_array()
            .and_then(|ds| ds.iter().find(|d| d["href"] == href))
            .unwrap_or_else(|| panic!("no {href} in {s}"));
        assert_eq!(d["source_format"], prep.source.json_format(), "{d}");
        assert_eq!(d["target_format"], ext, "{d}");
        image::assert_target(&prep.raw, &target, format, prep.capacity);
    }
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read target dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [format!("disk1.{ext}"), format!("disk2.{ext}")]);
}

#[test]
fn compressed_packages_import_from_a_file_and_from_stdin() {
    let p = package();
    for kind in [Kind::Gzip, Kind::Xz, Kind::Zstd] {
        for parts in [false, true] {
            let src = compressed(&p, kind, parts);
            assert!(
                support::file_len(&src) < support::file_len(&p.tar),
                "{kind:?} did not compress"
            );
            for (stdin, format) in [(false, Target::Raw), (true, Target::Qcow2)] {
                let dir = p.w.mkdir(&format!("out-{kind:?}-{parts}-{stdin}"));
                let run = import(&src, stdin, &dir, format);
                check_import(&p, &run, kind, &dir, format);
            }
        }
    }
    // The text summary says what the package was.
    let src = compressed(&p, Kind::Xz, false);
    let dir = p.w.mkdir("out-text");
    let run = ovaio().arg("import").arg(&src).arg("--dir").arg(&dir).run();
    run.assert_success();
    assert!(
        run.stdout.contains("(xz-compressed); manifest verified"),
        "{}",
        run.stdout
    );
}

#[test]
fn zip_packages_import_from_a_file_and_from_stdin() {
    let p = package();
    for kind in [Kind::ZipDeflated, Kind::ZipStored, Kind::ZipStreamed] {
        let src = zipped(&p, kind);
        for (stdin, format) in [(false, Target::Qcow2), (true, Target::Raw)] {
            let dir = p.w.mkdir(&format!("out-{kind:?}-{stdin}"));
            let run = import(&src, stdin, &dir, format);
            check_import(&p, &run, kind, &dir, format);
        }
    }
}

/// `inspect --json` of `src`.
fn inspect(src: &Path, quick: bool) -> Value {
    let mut cmd = ovaio().arg("inspect").arg(src).arg("--json");
    if quick {
        cmd = cmd.arg("--quick");
    }
    let run = cmd.run();
    run.assert_success();
    run.json()
}

#[test]
fn inspect_lists_the_members_of_every_variant() {
    let p = package();
    // GNU tar is the oracle for the entries and where their data lies in
    // the (decompressed) tar.
    let listed: Vec<(String, u64, u64)> = support::tar::list(&p.tar)
        .into_iter()
        .map(|l| (l.name, l.size, l.header_offset + 512))
        .collect();
    let names: Vec<&str> = listed.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(names, [OVF_NAME, QCOW2, VMDK, MF_NAME]);
    for kind in [
        Kind::Gzip,
        Kind::Xz,
        Kind::Zstd,
        Kind::ZipDeflated,
        Kind::ZipStored,
        Kind::ZipStreamed,
    ] {
        let src = variant(&p, kind);
        let (compression, archive) = kind.summary();
        for quick in [false, true] {
            let r = inspect(&src, quick);
            assert_eq!(r["compression"], compression, "{kind:?}: {r}");
            assert_eq!(r["archive"], archive, "{kind:?}: {r}");
            let entries: Vec<(String, u64, u64)> = r["entries"]
                .as_array()
                .expect("entries")
                .iter()
                .map(|e| {
                    (
                        e["name"].as_str().unwrap_or_default().to_owned(),
                        e["size"].as_u64().unwrap_or(u64::MAX),
                        e["offset"].as_u64().unwrap_or(u64::MAX),
                    )
                })
                .collect();
            if archive == "tar" {
                // Offsets count the decompressed tar.
                assert_eq!(entries, listed, "{kind:?} quick={quick}");
            } else {
                let sizes: Vec<(String, u64)> =
                    entries.iter().map(|e| (e.0.clone(), e.1)).collect();
                let want: Vec<(String, u64)> = listed.iter().map(|e| (e.0.clone(), e.1)).collect();
                assert_eq!(sizes, want, "{kind:?} quick={quick}");
                // Each member's data lies after its local header in the zip.
                let bytes = fs::read(&src).expect("read zip");
                for (name, _, offset) in &entries {
                    let at = usize::try_from(*offset).expect("offset");
                    let header = &bytes[..at];
                    assert!(header.ends_with(name.as_bytes()), "{name} at {offset}");
                }
            }
            let v = &r["verification"];
            if quick {
                assert_eq!(v["manifest"]["status"], "not verified", "{r}");
            } else {
                assert_eq!(v["manifest"]["status"], "verified", "{kind:?}: {r}");
                assert_eq!(v["manifest"]["verified"].as_u64(), Some(3), "{r}");
                for d in v["disks"].as_array().expect("disks") {
                    assert_eq!(d["status"], "ok", "{kind:?}: {d}");
                }
            }
        }
    }
    let run = ovaio()
        .arg("inspect")
        .arg(compressed(&p, Kind::Zstd, true))
        .run();
    run.assert_success();
    assert!(
        run.stdout.contains(
            "Package: tar compressed with zstd (entry offsets count the decompressed tar)"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Manifest: verified (3 entries)"),
        "{}",
        run.stdout
    );
}

/// Asserts the failure contract of an import of `src` into a fresh
/// directory: exit `code`, one error line naming the file and `mentions`,
/// and nothing left in the directory.
fn import_fails(w: &Work, src: &Path, code: i32, mentions: &[&str]) -> String {
    let dir = w.mkdir(&format!(
        "fail-{}",
        src.file_name().unwrap_or_default().to_string_lossy()
    ));
    let run = ovaio().arg("import").arg(src).arg("--dir").arg(&dir).run();
    let path = src.display().to_string();
    let mut words = vec![path.as_str()];
    words.extend_from_slice(mentions);
    run.assert_error(&words);
    assert_eq!(run.status.code(), Some(code), "{}", run.stderr);
    assert_dir_empty(&dir);
    // From stdin too.
    let run = ovaio()
        .arg("import")
        .arg("-")
        .arg("--dir")
        .arg(&dir)
        .stdin(fs::read(src).expect("read package"))
        .run();
    run.assert_error(mentions);
    assert_eq!(run.status.code(), Some(code), "{}", run.stderr);
    assert_dir_empty(&dir);
    run.stderr
}

#[test]
fn truncated_and_corrupt_packages_fail_and_leave_nothing() {
    let p = package();
    for kind in [
        Kind::Gzip,
        Kind::Xz,
        Kind::Zstd,
        Kind::ZipDeflated,
        Kind::ZipStored,
        Kind::ZipStreamed,
    ] {
        let src = variant(&p, kind);
        let bytes = fs::read(&src).expect("read package");
        // Cut inside the second disk's data.
        let cut = p.w.path(&format!("cut-{kind:?}"));
        fs::write(&cut, &bytes[..bytes.len() * 3 / 4]).expect("write cut");
        import_fails(&p.w, &cut, 1, &["truncated"]);
        // Cut in the last few bytes: everything but the end decompressed.
        let cut = p.w.path(&format!("cut-end-{kind:?}"));
        fs::write(&cut, &bytes[..bytes.len() - 3]).expect("write cut");
        import_fails(&p.w, &cut, 1, &["truncated"]);
    }
    // Corrupt: the check each format ends a stream with, so that all the
    // data decompresses and only the check can tell.
    let corrupt = |kind: Kind, from_end: usize, mentions: &[&str]| {
        let src = variant(&p, kind);
        let mut bytes = fs::read(&src).expect("read package");
        let at = bytes.len() - from_end;
        bytes[at] ^= 0x5a;
        let bad = p.w.path(&format!("bad-{kind:?}"));
        fs::write(&bad, &bytes).expect("write corrupt");
        import_fails(&p.w, &bad, 1, mentions)
    };
    // gzip's trailer: CRC-32, then the length.
    corrupt(Kind::Gzip, 8, &["corrupt gzip data", "CRC-32 mismatch"]);
    // xz's stream footer, after the index.
    corrupt(Kind::Xz, 10, &["corrupt xz data"]);
    // zstd's content checksum, the frame's last four bytes.
    corrupt(Kind::Zstd, 2, &["corrupt zstd data"]);
    // The CRC-32 in a zip member's local header: the member's data no
    // longer matches it, and the error names the member.
    let src = zipped(&p, Kind::ZipStored);
    let mut bytes = fs::read(&src).expect("read zip");
    let listed = inspect(&src, true);
    let data = listed["entries"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["name"] == VMDK))
        .and_then(|e| e["offset"].as_u64())
        .expect("vmdk offset");
    // zipfile writes no extra field: the name ends the 30-byte header.
    let header = usize::try_from(data).expect("offset") - 30 - VMDK.len();
    assert_eq!(&bytes[header..header + 4], b"PK\x03\x04");
    bytes[header + 14] ^= 0x01;
    let bad = p.w.path("bad-stored.zip");
    fs::write(&bad, &bytes).expect("write");
    import_fails(&p.w, &bad, 1, &["entry 'disk2.vmdk'", "CRC-32 mismatch"]);
}

/// A small compressed tail can stand for any amount of data after the
/// tar's end, which no entry or capacity limit counts: past 16 MiB the
/// import stops.
#[test]
fn a_long_decompressed_tail_after_the_tar_is_refused() {
    let p = package();
    let mut bytes = fs::read(&p.tar).expect("read tar");
    bytes.resize(bytes.len() + (20 << 20), 0);
    let long = p.w.path("long.tar");
    fs::write(&long, &bytes).expect("write");
    let out = p.w.path("long.tar.zst");
    run_to(
        "zstd",
        &[OsStr::new("-c"), OsStr::new("-q"), long.as_os_str()],
        &out,
    );
    assert!(support::file_len(&out) < support::file_len(&p.tar));
    import_fails(&p.w, &out, 1, &["after the end of its tar archive"]);
    // Tar's own record padding passes.
    let mut bytes = fs::read(&p.tar).expect("read tar");
    bytes.resize(bytes.len() + (1 << 20), 0);
    fs::write(&long, &bytes).expect("write");
    run_to(
        "zstd",
        &[OsStr::new("-c"), OsStr::new("-q"), long.as_os_str()],
        &out,
    );
    let dir = p.w.mkdir("out-padded");
    let run = import(&out, false, &dir, Target::Raw);
    check_import(&p, &run, Kind::Zstd, &dir, Target::Raw);
}

#[test]
fn zip_members_that_cannot_be_streamed_are_refused_by_name() {
    let p = package();
    // A method other than stored and deflated.
    let bz = p.w.path("bzip2.zip");
    python_zip(
        &bz,
        false,
        &[
            (OVF_NAME, &p.ovf, "deflated"),
            (QCOW2, &p.qcow2.file, "deflated"),
            (VMDK, &p.vmdk.file, "bzip2"),
        ],
    );
    let err = import_fails(&p.w, &bz, 6, &["entry 'disk2.vmdk'", "method 12 (bzip2)"]);
    assert!(err.contains("only stored (0) and deflated (8)"), "{err}");
    // Stored members written to a pipe: their sizes come after their data.
    let piped = p.w.path("stored-pipe.zip");
    python_zip(
        &piped,
        true,
        &[
            (OVF_NAME, &p.ovf, "stored"),
            (QCOW2, &p.qcow2.file, "stored"),
        ],
    );
    let err = import_fails(
        &p.w,
        &piped,
        6,
        &["entry 'vm.ovf'", "stored zip member with a data descriptor"],
    );
    assert!(err.contains("cannot be read as a stream"), "{err}");
    // inspect refuses the same way.
    let run = ovaio().arg("inspect").arg(&piped).run();
    run.assert_error(&["entry 'vm.ovf'", "data descriptor"]);
    assert_eq!(run.status.code(), Some(6));
}

// ---------------------------------------------------------------- server

#[test]
fn a_gzip_package_uploaded_to_a_ticket_and_an_xz_package_imported_by_a_job() {
    let p = package();
    let s = Server::start(&p.w);
    let gz = compressed(&p, Kind::Gzip, false);
    let disks = json!([
        {"href": QCOW2, "url": s.file_url("up1.raw"), "format": "raw"},
        {"href": VMDK, "url": s.file_url("up2.qcow2"), "format": "qcow2"},
    ]);
    s.add_ticket(&json!({
        "uuid": "gz", "kind": "ova-import", "ops": ["write"], "timeout": 120,
        "transfer_id": "transfer-gz", "ova": {"disks": disks},
    }));
    let r = s.data(
        "PUT",
        "/images/gz",
        &[
            "-T",
            &gz.display().to_string(),
            "-H",
            "content-type: application/octet-stream",
        ],
    );
    assert_eq!(r.status, 200, "upload: {}\n{}", r.text(), s.log());
    let summary = r.json();
    assert_eq!(summary["compression"], "gzip", "{summary}");
    assert_eq!(summary["manifest"], "verified", "{summary}");
    assert_eq!(
        summary["bytes_read"].as_u64(),
        Some(support::file_len(&gz)),
        "{summary}"
    );
    image::assert_target(
        &p.qcow2.raw,
        &s.root.join("up1.raw"),
        Target::Raw,
        p.qcow2.capacity,
    );
    image::assert_target(
        &p.vmdk.raw,
        &s.root.join("up2.qcow2"),
        Target::Qcow2,
        p.vmdk.capacity,
    );

    let xz = compressed(&p, Kind::Xz, true);
    fs::copy(&xz, s.root.join("in.ova.xz")).expect("copy into the root");
    let r = s.control(
        "POST",
        "/jobs",
        Some(&json!({
            "type": "import", "source": s.file_url("in.ova.xz"), "verify": true,
            "disks": [
                {"href": QCOW2, "url": s.file_url("j1.qcow2"), "format": "qcow2"},
                {"href": VMDK, "url": s.file_url("j2.raw")},
            ],
        })),
    );
    assert_eq!(r.status, 201, "POST /jobs: {}", r.text());
    let id = r.json()["id"].as_str().expect("job id").to_owned();
    let done = poll("the import job to end", || {
        let j = s.control("GET", &format!("/jobs/{id}"), None).json();
        (!matches!(j["state"].as_str(), Some("pending" | "active"))).then_some(j)
    });
    assert_eq!(done["state"], "succeeded", "{done}\n{}", s.log());
    assert_eq!(done["result"]["compression"], "xz", "{done}");
    image::assert_target(
        &p.qcow2.raw,
        &s.root.join("j1.qcow2"),
        Target::Qcow2,
        p.qcow2.capacity,
    );
    image::assert_target(
        &p.vmdk.raw,
        &s.root.join("j2.raw"),
        Target::Raw,
        p.vmdk.capacity,
    );
}
