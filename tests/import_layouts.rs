//! `ovaio import` (and `inspect`) on packages laid out the way other
//! producers write them: a file split into chunks as ovftool's
//! `--chunkSize` writes it, every entry under one top-level directory as
//! `tar cf vm.ova vm/` writes it (virt-v2v's subfolder case), a manifest
//! per disk, and blank disks (a `Disk` with no file, such as Cisco IOSv's
//! flash disk) created empty. GNU tar and Python's tarfile build the
//! packages, qemu-img the disks, and qemu-img judges every target.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::image::{self, MAIN, ODD, SMALL, Source, Target};
use support::ova::{self, Manifest, Prepared, ovf_xml};
use support::server::Server;
use support::{Outcome, Work, assert_dir_empty, file_len, ovaio, tool};

const OVF: &str = "vm.ovf";

/// A package under construction: entry names and the files holding them.
#[derive(Debug, Default)]
struct Entries {
    list: Vec<(String, PathBuf)>,
    /// Directory entries (`vm/`), written where they stand in `order`.
    dirs: Vec<String>,
    /// Every name in archive order, files and directories.
    order: Vec<String>,
}

impl Entries {
    fn file(mut self, name: &str, path: &Path) -> Entries {
        self.list.push((name.to_owned(), path.to_owned()));
        self.order.push(name.to_owned());
        self
    }

    fn dir(mut self, name: &str) -> Entries {
        self.dirs.push(name.to_owned());
        self.order.push(name.to_owned());
        self
    }

    /// Writes the archive with GNU tar, entries in their order (no
    /// recursion: a directory entry holds nothing by itself).
    fn gnu_tar(&self, w: &Work, name: &str) -> PathBuf {
        let out = w.path(name);
        let stage = w.mkdir(&format!("{name}.stage"));
        for d in &self.dirs {
            fs::create_dir_all(stage.join(d)).expect("stage dir");
        }
        for (n, file) in &self.list {
            let at = stage.join(n);
            if let Some(parent) = at.parent() {
                fs::create_dir_all(parent).expect("stage parent");
            }
            symlink(fs::canonicalize(file).expect("canonical"), at).expect("stage entry");
        }
        let mut args: Vec<&OsStr> = [
            "-c",
            "--dereference",
            "--no-recursion",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@1700000000",
            "--format=gnu",
            "-f",
        ]
        .iter()
        .map(OsStr::new)
        .collect();
        args.push(out.as_os_str());
        args.push(OsStr::new("-C"));
        args.push(stage.as_os_str());
        args.push(OsStr::new("--"));
        args.extend(self.order.iter().map(OsStr::new));
        tool("tar", &args);
        out
    }

    /// Writes the archive with Python's tarfile (its default, PAX).
    fn python_tar(&self, w: &Work, name: &str) -> PathBuf {
        const SCRIPT: &str = "import sys, tarfile\n\
            with tarfile.open(sys.argv[1], 'w') as t:\n\
            \x20   for name, path in zip(sys.argv[2::2], sys.argv[3::2]):\n\
            \x20       t.add(path, arcname=name, recursive=False)\n";
        assert!(self.dirs.is_empty(), "directories are for GNU tar here");
        let out = w.path(name);
        let mut args: Vec<&OsStr> = vec![OsStr::new("-c"), OsStr::new(SCRIPT), out.as_os_str()];
        for (n, file) in &self.list {
            args.push(OsStr::new(n));
            args.push(file.as_os_str());
        }
        tool("python3", &args);
        out
    }
}

/// Writes `text` to `dir/name` and returns the path.
fn write(w: &Work, name: &str, text: &[u8]) -> PathBuf {
    let p = w.path(name);
    fs::write(&p, text).expect("write fixture");
    p
}

/// A SHA-256 manifest of `(entry name, file)` pairs.
fn manifest(entries: &[(&str, &Path)]) -> String {
    let m = Manifest::Sha256;
    entries
        .iter()
        .map(|(n, p)| m.line(n, &m.digest_file(p)))
        .collect()
}

/// `ovaio import PKG --dir OUT --format FORMAT --json`.
fn import_dir(pkg: &Path, out: &Path, format: Target) -> Outcome {
    ovaio()
        .arg("import")
        .arg(pkg)
        .arg("--dir")
        .arg(out)
        .arg("--format")
        .arg(format.name())
        .arg("--json")
        .run()
}

fn exit_code(o: &Outcome) -> Option<i32> {
    o.status.code()
}

// ---------------------------------------------------------------------------
// Chunked files.

/// A streamOptimized VMDK split into three chunks of `chunk` bytes, the way
/// `ovftool --chunkSize` stores it, with its OVF.
struct ChunkedDisk {
    disk: Prepared,
    chunk: u64,
    chunks: Vec<(String, PathBuf)>,
    ovf: PathBuf,
}

fn chunked_disk(w: &Work) -> ChunkedDisk {
    let disk = ova::prepare(w.root(), "src", &MAIN, Source::Vmdk);
    let bytes = fs::read(&disk.file).expect("read vmdk");
    let chunk = (bytes.len() as u64).div_ceil(3);
    let chunks: Vec<(String, PathBuf)> = bytes
        .chunks(usize::try_from(chunk).expect("chunk size"))
        .enumerate()
        .map(|(i, c)| {
            let name = format!("disk1.vmdk.{i:09}");
            (name.clone(), write(w, &format!("{name}.part"), c))
        })
        .collect();
    assert_eq!(chunks.len(), 3, "three chunks");
    let d = disk.disk(1, "disk1.vmdk");
    let xml = ovf_xml(std::slice::from_ref(&d.ovf));
    let file = format!(r#"ovf:size="{}"/>"#, d.ovf.size);
    assert!(xml.contains(&file), "File element as expected");
    let xml = xml.replacen(
        &file,
        &format!(r#"ovf:size="{}" ovf:chunkSize="{chunk}"/>"#, d.ovf.size),
        1,
    );
    let ovf = write(w, "descriptor.ovf", xml.as_bytes());
    ChunkedDisk {
        disk,
        chunk,
        chunks,
        ovf,
    }
}

impl ChunkedDisk {
    /// The manifest: the OVF and every chunk by its own name.
    fn manifest(&self, w: &Work) -> PathBuf {
        let mut lines: Vec<(&str, &Path)> = vec![(OVF, &self.ovf)];
        lines.extend(self.chunks.iter().map(|(n, p)| (n.as_str(), p.as_path())));
        write(w, "manifest.mf", manifest(&lines).as_bytes())
    }

    /// The chunks whose index is in `keep`, as entries.
    fn with_chunks(&self, mut e: Entries, keep: &[usize]) -> Entries {
        for &i in keep {
            let (n, p) = &self.chunks[i];
            e = e.file(n, p);
        }
        e
    }
}

/// The OVF first, then the chunks, then a manifest with a line per chunk
/// (what ovftool writes), into raw and qcow2.
#[test]
fn chunked_vmdk_ovf_first() {
    let w = Work::new();
    let c = chunked_disk(&w);
    let mf = c.manifest(&w);
    let e = c.with_chunks(Entries::default().file(OVF, &c.ovf), &[0, 1, 2]);
    let pkg = e.file("vm.mf", &mf).gnu_tar(&w, "in.ova");
    for target in [Target::Raw, Target::Qcow2] {
        let out = w.mkdir(&format!("out-{}", target.name()));
        let run = import_dir(&pkg, &out, target);
        run.assert_success();
        let s = run.json();
        assert_eq!(s["manifest"], "verified", "{s}");
        let d = &s["disks"][0];
        assert_eq!(d["href"], "disk1.vmdk", "{s}");
        assert_eq!(d["chunks"], 3, "{s}");
        assert_eq!(d["source_format"], "vmdk", "{s}");
        assert_eq!(d["blank"], false, "{s}");
        let dest = out.join(format!("disk1.{}", target.name()));
        image::assert_target(&c.disk.raw, &dest, target, c.disk.capacity);
    }
    // Every chunk is an entry of its own to inspect, and the disk's
    // content is probed in the first.
    let run = ovaio().arg("inspect").arg(&pkg).arg("--json").run();
    run.assert_success();
    let r = run.json();
    assert_eq!(r["files"][0]["chunk_size"].as_u64(), Some(c.chunk), "{r}");
    assert_eq!(r["disks"][0]["detected_format"], "vmdk", "{r}");
    assert_eq!(r["verification"]["manifest"]["status"], "verified", "{r}");
    assert_eq!(r["verification"]["manifest"]["verified"], 4, "{r}");
}

/// The chunks first, the manifest, then the OVF last: the chunks are
/// recognised by their names and settled when the OVF arrives.
#[test]
fn chunked_vmdk_ovf_last() {
    let w = Work::new();
    let c = chunked_disk(&w);
    let mf = c.manifest(&w);
    let e = c.with_chunks(Entries::default(), &[0, 1, 2]);
    let pkg = e.file("vm.mf", &mf).file(OVF, &c.ovf).gnu_tar(&w, "in.ova");
    let out = w.mkdir("out");
    let run = import_dir(&pkg, &out, Target::Qcow2);
    run.assert_success();
    let s = run.json();
    assert_eq!(s["manifest"], "verified", "{s}");
    assert_eq!(s["disks"][0]["chunks"], 3, "{s}");
    image::assert_target(
        &c.disk.raw,
        &out.join("disk1.qcow2"),
        Target::Qcow2,
        c.disk.capacity,
    );
}

/// A missing middle chunk is named, wherever the OVF is, and nothing is
/// left behind.
#[test]
fn chunked_missing_middle_chunk() {
    let w = Work::new();
    let c = chunked_disk(&w);
    let first = c.with_chunks(Entries::default().file(OVF, &c.ovf), &[0, 2]);
    let last = c.with_chunks(Entries::default(), &[0, 2]).file(OVF, &c.ovf);
    for (name, e) in [("first.ova", first), ("last.ova", last)] {
        let pkg = e.gnu_tar(&w, name);
        let out = w.mkdir(&format!("{name}.out"));
        let run = import_dir(&pkg, &out, Target::Raw);
        run.assert_error(&[
            "entry 'disk1.vmdk.000000002'",
            "chunk 'disk1.vmdk.000000001' is missing",
        ]);
        assert_eq!(exit_code(&run), Some(4), "{name}: {}", run.stderr);
        assert_dir_empty(&out);
    }
}

/// A missing last chunk shows only against the OVF's ovf:size; a chunk
/// whose digest differs fails the manifest, naming that chunk.
#[test]
fn chunked_missing_last_chunk_and_wrong_digest() {
    let w = Work::new();
    let c = chunked_disk(&w);
    let pkg = c
        .with_chunks(Entries::default(), &[0, 1])
        .file(OVF, &c.ovf)
        .gnu_tar(&w, "short.ova");
    let out = w.mkdir("short");
    let run = import_dir(&pkg, &out, Target::Raw);
    run.assert_error(&["chunk 'disk1.vmdk.000000002' is missing"]);
    assert_eq!(exit_code(&run), Some(4), "{}", run.stderr);
    assert_dir_empty(&out);

    let mut text = fs::read_to_string(c.manifest(&w)).expect("manifest");
    let good = Manifest::Sha256.digest_file(&c.chunks[1].1);
    text = text.replace(&good, &"0".repeat(64));
    let mf = write(&w, "bad.mf", text.as_bytes());
    let pkg = c
        .with_chunks(Entries::default().file(OVF, &c.ovf), &[0, 1, 2])
        .file("vm.mf", &mf)
        .gnu_tar(&w, "bad.ova");
    let out = w.mkdir("bad");
    let run = import_dir(&pkg, &out, Target::Raw);
    run.assert_error(&[
        "entry 'disk1.vmdk.000000001'",
        "SHA256 digest mismatch",
        "'vm.mf'",
    ]);
    assert_eq!(exit_code(&run), Some(5), "{}", run.stderr);
    assert_dir_empty(&out);
}

// ---------------------------------------------------------------------------
// One top-level directory.

/// A qcow2 disk and a raw one with the OVF and a manifest that names them
/// without the directory, as virt-v2v's subfolder test builds them.
struct Folder {
    a: Prepared,
    b: Prepared,
    ovf: PathBuf,
    mf: PathBuf,
}

fn folder(w: &Work) -> Folder {
    let a = ova::prepare(w.root(), "a", &ODD, Source::Qcow2V3);
    let b = ova::prepare(w.root(), "b", &SMALL, Source::Raw);
    let xml = ovf_xml(&[a.disk(1, "disk1.qcow2").ovf, b.disk(2, "disk2.img").ovf]);
    let ovf = write(w, "descriptor.ovf", xml.as_bytes());
    let mf = manifest(&[
        (OVF, &ovf),
        ("disk1.qcow2", &a.file),
        ("disk2.img", &b.file),
    ]);
    let mf = write(w, "manifest.mf", mf.as_bytes());
    Folder { a, b, ovf, mf }
}

impl Folder {
    fn entries(&self, dir: &str, with_dir_entry: bool) -> Entries {
        let e = if with_dir_entry {
            Entries::default().dir(dir)
        } else {
            Entries::default()
        };
        e.file(&format!("{dir}/{OVF}"), &self.ovf)
            .file(&format!("{dir}/disk1.qcow2"), &self.a.file)
            .file(&format!("{dir}/disk2.img"), &self.b.file)
            .file(&format!("{dir}/vm.mf"), &self.mf)
    }
}

/// Every entry under `vm/`, with and without the directory's own entry,
/// and under `./` (what `tar -C dir .` writes): the directory is dropped
/// from every name, and the summary says which it was.
#[test]
fn common_top_level_directory() {
    let w = Work::new();
    let f = folder(&w);
    for (dir, with_entry) in [("vm", false), ("vm", true), (".", true)] {
        let tag = format!("{}-{with_entry}", if dir == "." { "dot" } else { dir });
        let pkg = f
            .entries(dir, with_entry)
            .gnu_tar(&w, &format!("{tag}.ova"));
        let listed: Vec<String> = support::tar::list(&pkg)
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(
            listed.first().map(String::as_str),
            Some(if with_entry {
                if dir == "." { "./" } else { "vm/" }
            } else {
                "vm/vm.ovf"
            }),
            "{listed:?}"
        );
        let out = w.mkdir(&format!("{tag}.out"));
        let run = import_dir(&pkg, &out, Target::Qcow2);
        run.assert_success();
        let s = run.json();
        assert_eq!(s["directory"], dir, "{s}");
        assert_eq!(s["ovf"], OVF, "{s}");
        assert_eq!(s["manifest"], "verified", "{s}");
        assert_eq!(s["manifests"], json!(["vm.mf"]), "{s}");
        let hrefs: Vec<&str> = s["disks"]
            .as_array()
            .expect("disks")
            .iter()
            .filter_map(|d| d["href"].as_str())
            .collect();
        assert_eq!(hrefs, ["disk1.qcow2", "disk2.img"], "{s}");
        image::assert_target(
            &f.a.raw,
            &out.join("disk1.qcow2"),
            Target::Qcow2,
            f.a.capacity,
        );
        image::assert_target(
            &f.b.raw,
            &out.join("disk2.qcow2"),
            Target::Qcow2,
            f.b.capacity,
        );

        let run = ovaio().arg("inspect").arg(&pkg).arg("--json").run();
        run.assert_success();
        let r = run.json();
        assert_eq!(r["directory"], dir, "{r}");
        let names: Vec<&str> = r["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert_eq!(names, [OVF, "disk1.qcow2", "disk2.img", "vm.mf"], "{r}");
        assert_eq!(r["verification"]["manifest"]["status"], "verified", "{r}");
    }
}

/// A second top-level directory, a file beside the directory and a
/// deeper one are each refused, naming the entry; nothing is left.
#[test]
fn entries_outside_the_directory_are_refused() {
    let w = Work::new();
    let f = folder(&w);
    let extra = write(&w, "notes.txt", b"notes");
    for (name, msg) in [
        ("other/notes.txt", "lies outside 'vm/'"),
        ("notes.txt", "lies outside 'vm/'"),
        ("vm/sub/notes.txt", "nested below 'vm/'"),
    ] {
        let pkg = f
            .entries("vm", true)
            .file(name, &extra)
            .gnu_tar(&w, &format!("{}.ova", name.replace('/', "_")));
        let out = w.mkdir(&format!("{}.out", name.replace('/', "_")));
        let run = import_dir(&pkg, &out, Target::Raw);
        run.assert_error(&[&format!("entry '{name}'"), msg]);
        assert_eq!(exit_code(&run), Some(1), "{}", run.stderr);
        assert_dir_empty(&out);
        let run = ovaio().arg("inspect").arg(&pkg).run();
        run.assert_error(&[&format!("entry '{name}'"), msg]);
    }
    // The second directory's own entry is refused too, before its files.
    let pkg = f
        .entries("vm", true)
        .dir("other")
        .file("other/notes.txt", &extra)
        .gnu_tar(&w, "otherdir.ova");
    let out = w.mkdir("otherdir.out");
    import_dir(&pkg, &out, Target::Raw).assert_error(&["entry 'other/'", "lies outside 'vm/'"]);
    assert_dir_empty(&out);
}

// ---------------------------------------------------------------------------
// Several manifests.

/// Two disks, each with its own manifest (one SHA-256, one SHA-1 in the
/// spaced form), written by Python's tarfile.
struct TwoManifests {
    a: Prepared,
    b: Prepared,
    ovf: PathBuf,
}

fn two_manifests(w: &Work) -> TwoManifests {
    let a = ova::prepare(w.root(), "a", &SMALL, Source::Vmdk);
    let b = ova::prepare(w.root(), "b", &ODD, Source::Qcow2V2);
    let xml = ovf_xml(&[a.disk(1, "disk1.vmdk").ovf, b.disk(2, "disk2.qcow2").ovf]);
    let ovf = write(w, "descriptor.ovf", xml.as_bytes());
    TwoManifests { a, b, ovf }
}

impl TwoManifests {
    fn package(&self, w: &Work, name: &str, disk2_mf: &str) -> PathBuf {
        let mf1 = manifest(&[(OVF, &self.ovf), ("disk1.vmdk", &self.a.file)]);
        let mf1 = write(w, &format!("{name}.disk1.mf"), mf1.as_bytes());
        let mf2 = write(w, &format!("{name}.disk2.mf"), disk2_mf.as_bytes());
        Entries::default()
            .file(OVF, &self.ovf)
            .file("disk1.mf", &mf1)
            .file("disk1.vmdk", &self.a.file)
            .file("disk2.qcow2", &self.b.file)
            .file("disk2.mf", &mf2)
            .python_tar(w, name)
    }

    fn disk2_mf(&self, digest: Option<&str>) -> String {
        let m = Manifest::Sha1Spaced;
        let d = digest.map_or_else(|| m.digest_file(&self.b.file), str::to_owned);
        m.line("disk2.qcow2", &d)
    }
}

/// Both manifests verified; a wrong digest in the second fails with exit
/// 5 naming that manifest, in import and in inspect.
#[test]
fn two_manifests_each_verified() {
    let w = Work::new();
    let t = two_manifests(&w);
    let good = t.package(&w, "good.ova", &t.disk2_mf(None));
    let out = w.mkdir("good");
    let run = import_dir(&good, &out, Target::Raw);
    run.assert_success();
    let s = run.json();
    assert_eq!(s["manifest"], "verified", "{s}");
    assert_eq!(s["manifests"], json!(["disk1.mf", "disk2.mf"]), "{s}");
    image::assert_target(&t.a.raw, &out.join("disk1.raw"), Target::Raw, t.a.capacity);
    image::assert_target(&t.b.raw, &out.join("disk2.raw"), Target::Raw, t.b.capacity);
    let run = ovaio().arg("inspect").arg(&good).run();
    run.assert_success();
    for line in [
        "Manifest: disk1.mf (SHA256, 2 entries)",
        "Manifest: disk2.mf (SHA1, 1 entries)",
        "Manifest: verified (3 entries)",
    ] {
        assert!(run.stdout.contains(line), "{line}:\n{}", run.stdout);
    }

    let bad = t.package(&w, "bad.ova", &t.disk2_mf(Some(&"a".repeat(40))));
    let out = w.mkdir("bad");
    let run = import_dir(&bad, &out, Target::Raw);
    run.assert_error(&["entry 'disk2.qcow2'", "manifest 'disk2.mf' says aaaa"]);
    assert_eq!(exit_code(&run), Some(5), "{}", run.stderr);
    assert_dir_empty(&out);
    let run = ovaio().arg("inspect").arg(&bad).arg("--json").run();
    assert_eq!(exit_code(&run), Some(5), "{}", run.stderr);
    let r = run.json();
    assert_eq!(r["manifests"].as_array().map(Vec::len), Some(2), "{r}");
    let lines = r["verification"]["manifest"]["lines"]
        .as_array()
        .expect("lines");
    let failed: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| l["status"] == "mismatch")
        .filter_map(|l| Some((l["manifest"].as_str()?, l["name"].as_str()?)))
        .collect();
    assert_eq!(failed, [("disk2.mf", "disk2.qcow2")], "{r}");
    assert!(run.stderr.contains("manifest 'disk2.mf'"), "{}", run.stderr);
}

/// Two manifests that give one entry different digests of one algorithm
/// contradict each other: exit 5, naming both.
#[test]
fn manifests_that_disagree_are_refused() {
    let w = Work::new();
    let t = two_manifests(&w);
    let wrong = Manifest::Sha256.line("disk1.vmdk", &"b".repeat(64));
    let pkg = t.package(&w, "clash.ova", &format!("{}{wrong}", t.disk2_mf(None)));
    let out = w.mkdir("clash");
    let run = import_dir(&pkg, &out, Target::Raw);
    run.assert_error(&[
        "entry 'disk2.mf'",
        "lists 'disk1.vmdk' with another SHA256 digest than manifest 'disk1.mf'",
    ]);
    assert_eq!(exit_code(&run), Some(5), "{}", run.stderr);
    assert_dir_empty(&out);
}

// ---------------------------------------------------------------------------
// Blank disks.

/// Capacity of the blank disk: 16 MiB and seven sectors, not a whole
/// number of clusters.
const BLANK: u64 = (16 << 20) + 7 * 512;

/// A VMDK disk and a blank disk `flash` (no `ovf:fileRef`), OVF first.
fn blank_package(w: &Work) -> (Prepared, PathBuf) {
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Vmdk);
    let xml = ovf_xml(&[a.disk(1, "disk1.vmdk").ovf]);
    let blank = format!(
        r#"    <Disk ovf:capacity="{BLANK}" ovf:diskId="flash" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>"#
    );
    assert!(xml.contains("  </DiskSection>"));
    let xml = xml.replacen("  </DiskSection>", &blank, 1);
    let ovf = write(w, "descriptor.ovf", xml.as_bytes());
    let pkg = Entries::default()
        .file(OVF, &ovf)
        .file("disk1.vmdk", &a.file)
        .gnu_tar(w, "in.ova");
    (a, pkg)
}

/// Panics unless `target` is an empty disk of [`BLANK`] bytes as qemu-img
/// sees it, compared with an empty image qemu-img made.
fn assert_blank(w: &Work, target: &Path, format: Target) {
    let info = image::info(target, format.name());
    assert_eq!(info["virtual-size"].as_u64(), Some(BLANK), "{info}");
    let empty = w.path(&format!("empty-{}.raw", format.name()));
    tool(
        "qemu-img",
        &[
            OsStr::new("create"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new("raw"),
            empty.as_os_str(),
            OsStr::new(&BLANK.to_string()),
        ],
    );
    image::assert_same_content(&empty, target, format.name());
    match format {
        Target::Raw => {
            assert_eq!(file_len(target), BLANK);
            let allocated = fs::metadata(target).expect("stat").blocks() * 512;
            assert!(
                allocated < 64 << 10,
                "blank raw target allocates {allocated} bytes"
            );
        }
        Target::Qcow2 => image::assert_qcow2_clean(target),
    }
}

/// With `--dir` the blank disk is named from its disk id, created empty
/// at its capacity next to the real disk, and reported as blank.
#[test]
fn blank_disk_next_to_a_real_one() {
    let w = Work::new();
    let (a, pkg) = blank_package(&w);
    for target in [Target::Raw, Target::Qcow2] {
        let out = w.mkdir(&format!("out-{}", target.name()));
        let run = import_dir(&pkg, &out, target);
        run.assert_success();
        let s = run.json();
        let disks = s["disks"].as_array().expect("disks");
        assert_eq!(disks.len(), 2, "{s}");
        assert_eq!(disks[0]["href"], "disk1.vmdk", "{s}");
        assert_eq!(disks[0]["blank"], false, "{s}");
        let b = &disks[1];
        assert_eq!(b["disk_id"], "flash", "{s}");
        assert_eq!(b["blank"], true, "{s}");
        assert_eq!(b["source_format"], "blank", "{s}");
        assert!(b.get("href").is_none(), "a blank disk has no href: {s}");
        assert_eq!(b["capacity"].as_u64(), Some(BLANK), "{s}");
        let blank = out.join(format!("flash.{}", target.name()));
        assert_eq!(b["target"].as_str(), blank.to_str(), "{s}");
        assert_blank(&w, &blank, target);
        image::assert_target(
            &a.raw,
            &out.join(format!("disk1.{}", target.name())),
            target,
            a.capacity,
        );
    }
    let run = ovaio().arg("inspect").arg(&pkg).arg("--json").run();
    run.assert_success();
    let r = run.json();
    assert_eq!(r["disks"][1]["disk_id"], "flash", "{r}");
    assert_eq!(r["disks"][1]["blank"], true, "{r}");
    assert_eq!(r["disks"][1]["href"], Value::Null, "{r}");
    let run = ovaio().arg("inspect").arg(&pkg).run();
    assert!(run.stdout.contains("blank (no file"), "{}", run.stdout);
}

/// With `--disk`, a blank disk is named by its disk id; left unnamed, the
/// import says what to give and writes nothing.
#[test]
fn blank_disk_named_by_disk_id() {
    let w = Work::new();
    let (a, pkg) = blank_package(&w);
    let out = w.mkdir("out");
    let d1 = out.join("d1.raw");
    let fl = out.join("fl.img");
    let run = ovaio()
        .arg("import")
        .arg(&pkg)
        .arg("--disk")
        .arg(format!("disk1.vmdk={}", d1.display()))
        .arg("--disk")
        .arg(format!("flash={}:qcow2", fl.display()))
        .run();
    run.assert_success();
    assert!(
        run.stdout.contains("flash (blank, created empty)"),
        "{}",
        run.stdout
    );
    image::assert_target(&a.raw, &d1, Target::Raw, a.capacity);
    assert_blank(&w, &fl, Target::Qcow2);

    let out = w.mkdir("unnamed");
    let run = ovaio()
        .arg("import")
        .arg(&pkg)
        .arg("--disk")
        .arg(format!("disk1.vmdk={}", out.join("d1.raw").display()))
        .run();
    run.assert_error(&["blank disk 'flash'", "--disk flash=PATH"]);
    assert_eq!(exit_code(&run), Some(2), "{}", run.stderr);
    assert_dir_empty(&out);
}

/// An `ova-import` ticket names the blank disk with `disk_id` and a
/// chunked disk by its href; both end succeeded in the ticket's status.
#[test]
fn ticket_names_a_blank_disk_by_disk_id() {
    let w = Work::new();
    let s = Server::start(&w);
    let c = chunked_disk(&w);
    let xml = fs::read_to_string(&c.ovf).expect("ovf");
    let xml = xml.replacen(
        "  </DiskSection>",
        &format!("    <Disk ovf:capacity=\"{BLANK}\" ovf:diskId=\"flash\"/>\n  </DiskSection>"),
        1,
    );
    let ovf = write(&w, "with-blank.ovf", xml.as_bytes());
    let pkg = c
        .with_chunks(Entries::default().file(OVF, &ovf), &[0, 1, 2])
        .gnu_tar(&w, "in.ova");
    s.add_ticket(&json!({
        "uuid": "blank-1", "kind": "ova-import", "ops": ["write"], "timeout": 120,
        "ova": {"disks": [
            {"href": "disk1.vmdk", "url": s.file_url("d1.qcow2"), "format": "qcow2"},
            {"disk_id": "flash", "url": s.file_url("flash.raw")},
        ]},
    }));
    let t = s.ticket("blank-1");
    assert_eq!(t["ova"]["disks"][1]["disk_id"], "flash", "{t}");
    assert!(t["ova"]["disks"][1].get("href").is_none(), "{t}");
    let pkg_arg = pkg.display().to_string();
    let r = s.data(
        "PUT",
        "/images/blank-1",
        &[
            "-T",
            &pkg_arg,
            "-H",
            "content-type: application/octet-stream",
        ],
    );
    assert_eq!(r.status, 200, "upload: {}\n{}", r.text(), s.log());
    let summary = r.json();
    assert_eq!(summary["disks"][1]["blank"], true, "{summary}");
    image::assert_target(
        &c.disk.raw,
        &s.root.join("d1.qcow2"),
        Target::Qcow2,
        c.disk.capacity,
    );
    assert_blank(&w, &s.root.join("flash.raw"), Target::Raw);
    let t = s.ticket("blank-1");
    assert_eq!(t["state"], "succeeded", "{t}");
    let disks = t["disks"].as_array().expect("ticket disks");
    assert_eq!(disks.len(), 2, "{t}");
    assert_eq!(disks[0]["href"], "disk1.vmdk", "{t}");
    assert!(disks[0]["bytes"].as_u64().is_some_and(|b| b > 0), "{t}");
    assert_eq!(disks[1]["disk_id"], "flash", "{t}");
    for d in disks {
        assert_eq!(d["state"], "succeeded", "{t}");
    }
    // An export has no blank disks to name.
    let r = s.control(
        "PUT",
        "/tickets/blank-2",
        Some(&json!({
            "uuid": "blank-2", "kind": "ova-export", "ops": ["read"], "timeout": 120,
            "ova": {"disks": [{"disk_id": "flash", "url": s.file_url("flash.raw")}]},
        })),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("ova.disks[0].disk_id"), "{}", r.text());
}
