//! `ovaio export -o s3://…` and `ovaio import s3://…` against a real
//! S3-compatible server (s3s-fs, see `support::s3`): the object is the
//! same package a local export writes, GNU tar lists it, and importing it
//! gives back volumes `qemu-img compare` finds equal to the sources. The
//! object appears only when the upload is complete: an existing one is
//! kept without `--force`, and an export that fails or is killed leaves
//! no object, and none of its parts once it could abort the upload.
//!
//! Needs s3s-fs (`OVAIO_TEST_S3S` or `target/tools/bin/s3s-fs`), awscli in
//! the test venv (`OVAIO_TEST_PYTHON`), qemu-img, qemu-io and GNU tar, all
//! installed by `scripts/test.sh`.

mod support;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use support::s3::S3Server;
use support::{Cmd, Work, assert_dir_empty, file_len, ovaio, poll, tool};

const MIB: u64 = 1 << 20;

/// The part size the tests ask for: S3's smallest.
const PART: u64 = 5 * MIB;

/// One source volume of an export.
#[derive(Debug)]
struct Disk {
    /// Entry name in the OVA.
    href: String,
    /// The volume file.
    path: PathBuf,
    /// `raw` or `qcow2`.
    format: &'static str,
}

impl Disk {
    /// A volume made by `qemu-img create` and filled by `qemu-io` commands.
    fn new(w: &Work, href: &str, format: &'static str, size: &str, writes: &[String]) -> Disk {
        let stem = href.rsplit_once('.').map_or(href, |(s, _)| s);
        let path = w.path(&format!("{stem}.src.{format}"));
        tool(
            "qemu-img",
            &[
                OsStr::new("create"),
                OsStr::new("-q"),
                OsStr::new("-f"),
                OsStr::new(format),
                path.as_os_str(),
                OsStr::new(size),
            ],
        );
        let mut args = vec![OsStr::new("-f"), OsStr::new(format)];
        for c in writes {
            args.push(OsStr::new("-c"));
            args.push(OsStr::new(c));
        }
        args.push(path.as_os_str());
        tool("qemu-io", &args);
        Disk {
            href: href.to_owned(),
            path,
            format,
        }
    }

    fn spec(&self) -> String {
        format!("{}={}:{}", self.href, self.path.display(), self.format)
    }

    /// Where `import --dir DIR --format FORMAT` writes this disk.
    fn target(&self, dir: &Path, format: &str) -> PathBuf {
        let stem = self.href.rsplit_once('.').map_or(&*self.href, |(s, _)| s);
        dir.join(format!("{stem}.{format}"))
    }
}

/// `write -P PATTERN OFFSET LEN` commands for `qemu-io`.
fn writes(runs: &[(u8, u64, u64)]) -> Vec<String> {
    runs.iter()
        .map(|(p, off, len)| format!("write -P {p:#04x} {off} {len}"))
        .collect()
}

/// Two disks, a qcow2 and a raw, whose package is between one and two
/// 5 MiB parts: runs off cluster boundaries, holes between them.
fn two_part_disks(w: &Work) -> Vec<Disk> {
    vec![
        Disk::new(
            w,
            "a.qcow2",
            "qcow2",
            "16M",
            &writes(&[
                (0x11, 0, MIB),
                (0x22, 3 * MIB + 4096, 2 * MIB + 100),
                (0x33, 12 * MIB + 512, 1500 * 1024),
            ]),
        ),
        Disk::new(
            w,
            "b.qcow2",
            "raw",
            "8M",
            &writes(&[(0x44, 512, MIB), (0x55, 4 * MIB, 2 * MIB + 7)]),
        ),
    ]
}

/// `ovaio export -q --json --name vm` of `disks` (the caller adds `-o`).
fn export(disks: &[Disk]) -> Cmd {
    let mut cmd = ovaio()
        .arg("export")
        .arg("-q")
        .arg("--json")
        .arg("--name")
        .arg("vm");
    for d in disks {
        cmd = cmd.arg("--disk").arg(d.spec());
    }
    cmd
}

/// `cmd` pointed at `s3` with `env` (normally `s3.env()`).
fn with_env(mut cmd: Cmd, env: &[(String, String)]) -> Cmd {
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    cmd
}

/// Exports `disks` to `key` in parts of `part_size`; returns the summary.
fn export_to(s3: &S3Server, disks: &[Disk], key: &str, part_size: &str) -> Value {
    let run = with_env(export(disks), &s3.env())
        .arg("--part-size")
        .arg(part_size)
        .arg("-o")
        .arg(s3.url(key))
        .run();
    run.assert_success();
    let json = run.json();
    assert_eq!(json["target"].as_str(), Some(&*s3.url(key)), "{json}");
    json
}

/// Imports `key` into a fresh directory `dir` as `format` and checks that
/// every disk equals its source; returns the summary.
fn import_and_compare(w: &Work, s3: &S3Server, key: &str, disks: &[Disk], format: &str) -> Value {
    let dir = w.mkdir(&format!("imported-{format}"));
    let run = with_env(ovaio(), &s3.env())
        .arg("import")
        .arg(s3.url(key))
        .arg("--dir")
        .arg(&dir)
        .arg("--format")
        .arg(format)
        .arg("--json")
        .arg("-q")
        .run();
    run.assert_success();
    let json = run.json();
    assert_eq!(json["source"].as_str(), Some(&*s3.url(key)), "{json}");
    assert_eq!(
        json["bytes_read"].as_u64(),
        Some(file_len(&s3.object_path(key))),
        "{json}"
    );
    assert_eq!(json["resumed"].as_u64(), Some(0), "{json}");
    for d in disks {
        assert_same(d, &d.target(&dir, format), format);
    }
    json
}

/// Panics unless `qemu-img compare` finds `target` equal to the source.
fn assert_same(src: &Disk, target: &Path, format: &str) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", src.format, "-F", format])
        .arg(&src.path)
        .arg(target)
        .output()
        .expect("run qemu-img compare");
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        src.path.display(),
        target.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The offsets of the tar header blocks of `ova` (PAX headers included).
fn tar_headers(ova: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= ova.len() && ova[at..at + 512].iter().any(|&b| b != 0) {
        out.push(at);
        let field = String::from_utf8_lossy(&ova[at + 124..at + 136]);
        let size = u64::from_str_radix(field.trim_matches(|c| c == '\0' || c == ' '), 8)
            .unwrap_or_else(|e| panic!("tar header at {at}: size {field:?}: {e}"));
        at += 512 + usize::try_from(size.div_ceil(512) * 512).expect("size");
    }
    out
}

/// Panics unless the packages `a` and `b` are byte for byte the same but
/// for their headers' mtime and checksum fields (the time of writing).
fn assert_same_package(a: &[u8], b: &[u8]) {
    assert_eq!(a.len(), b.len(), "package lengths differ");
    let headers = tar_headers(a);
    assert_eq!(headers, tar_headers(b), "tar layouts differ");
    assert!(headers.len() >= 3, "too few tar entries: {headers:?}");
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    for h in headers {
        a[h + 136..h + 156].fill(0);
        b[h + 136..h + 156].fill(0);
    }
    if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
        panic!("the packages differ from offset {i} on");
    }
}

#[test]
fn export_in_two_parts_is_the_local_package_and_imports_back() {
    let w = Work::new();
    let s3 = S3Server::start(&w);
    let disks = two_part_disks(&w);

    let json = export_to(&s3, &disks, "vms/vm.ova", "5M");
    let size = json["size"].as_u64().expect("size");
    assert!(
        size > PART && size <= 2 * PART,
        "size {size}: not two parts"
    );
    assert_eq!(json["parts"].as_u64(), Some(2), "{json}");
    assert_eq!(json["part_size"].as_u64(), Some(PART), "{json}");
    assert_eq!(json["disks"].as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(s3.list(), ["vms/vm.ova"]);
    assert!(s3.uploads_in_progress().is_empty());
    let object = fs::read(s3.object_path("vms/vm.ova")).expect("read the object");
    assert_eq!(object.len() as u64, size);

    // The same disks exported to a file: the same package.
    let local = w.path("local.ova");
    let run = export(&disks).arg("-o").arg(&local).run();
    run.assert_success();
    assert_eq!(run.json()["size"].as_u64(), Some(size));
    assert_same_package(&object, &fs::read(&local).expect("read local export"));

    // What a client downloads is a package GNU tar reads.
    let downloaded = w.path("downloaded.ova");
    s3.download("vms/vm.ova", &downloaded);
    assert!(
        fs::read(&downloaded).expect("read download") == object,
        "the download differs from the stored object"
    );
    let listing = tool("tar", &[OsStr::new("tvf"), downloaded.as_os_str()]);
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert_eq!(
        names,
        ["vm.ovf", "a.qcow2", "b.qcow2", "vm.mf"],
        "{listing}"
    );

    import_and_compare(&w, &s3, "vms/vm.ova", &disks, "raw");
}

#[test]
fn export_in_many_parts_imports_back() {
    let w = Work::new();
    let s3 = S3Server::start(&w);
    // 48 MiB of data, each MiB with its own pattern, so that a part out
    // of place cannot go unseen.
    let runs: Vec<(u8, u64, u64)> = (0..48u8)
        .map(|i| {
            let mib = u64::from(i);
            // A hole every eighth MiB, and runs that end mid-cluster.
            (i + 1, (mib + mib / 8) * MIB, MIB - u64::from(i) * 512)
        })
        .collect();
    let disks = vec![
        Disk::new(&w, "big.qcow2", "raw", "64M", &writes(&runs)),
        Disk::new(
            &w,
            "small.qcow2",
            "qcow2",
            "4M",
            &writes(&[(0xee, 100_000, 300_000)]),
        ),
    ];
    let json = export_to(&s3, &disks, "many.ova", "5M");
    let size = json["size"].as_u64().expect("size");
    let parts = json["parts"].as_u64().expect("parts");
    assert!(parts >= 8, "{json}");
    assert_eq!(parts, size.div_ceil(PART), "{json}");
    assert_eq!(json["part_size"].as_u64(), Some(PART), "{json}");
    assert_eq!(s3.list(), ["many.ova"]);
    assert_eq!(file_len(&s3.object_path("many.ova")), size);
    assert!(s3.uploads_in_progress().is_empty());
    import_and_compare(&w, &s3, "many.ova", &disks, "qcow2");
}

#[test]
fn an_existing_object_is_replaced_only_with_force() {
    let w = Work::new();
    let s3 = S3Server::start(&w);
    let first = [Disk::new(
        &w,
        "d.qcow2",
        "raw",
        "2M",
        &writes(&[(0x61, 0, MIB)]),
    )];
    let second = [Disk::new(
        &w,
        "e.qcow2",
        "qcow2",
        "3M",
        &writes(&[(0x62, 4096, 2 * MIB)]),
    )];
    export_to(&s3, &first, "vm.ova", "5M");
    let before = fs::read(s3.object_path("vm.ova")).expect("read the object");

    let run = with_env(export(&second), &s3.env())
        .arg("-o")
        .arg(s3.url("vm.ova"))
        .run();
    run.assert_error(&["exists"]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        fs::read(s3.object_path("vm.ova")).expect("read the object") == before,
        "a refused export changed the object"
    );
    assert_eq!(s3.list(), ["vm.ova"]);
    assert!(s3.uploads_in_progress().is_empty());

    let run = with_env(export(&second), &s3.env())
        .arg("--force")
        .arg("-o")
        .arg(s3.url("vm.ova"))
        .run();
    run.assert_success();
    let size = run.json()["size"].as_u64().expect("size");
    let after = fs::read(s3.object_path("vm.ova")).expect("read the object");
    assert_eq!(after.len() as u64, size);
    assert!(after != before, "--force did not replace the object");
    assert_eq!(s3.list(), ["vm.ova"]);
    import_and_compare(&w, &s3, "vm.ova", &second, "raw");
}

/// Starts an export of 300 MiB of data (a sparse 2 GiB raw disk) to
/// `big.ova` and returns it once the server holds one of its parts.
fn start_long_export(w: &Work, s3: &S3Server) -> Child {
    let big = w.path("big.raw");
    File::create(&big)
        .expect("create")
        .set_len(2 << 30)
        .expect("size");
    tool(
        "qemu-io",
        &[
            OsStr::new("-f"),
            OsStr::new("raw"),
            OsStr::new("-c"),
            OsStr::new("write -P 0x33 0 150M"),
            OsStr::new("-c"),
            OsStr::new("write -P 0x44 1G 150M"),
            big.as_os_str(),
        ],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_ovaio"))
        .args([
            "export",
            "-q",
            "--name",
            "vm",
            "--part-size",
            "5M",
            "--disk",
        ])
        .arg(format!("big.qcow2={}:raw", big.display()))
        .arg("-o")
        .arg(s3.url("big.ova"))
        .envs(s3.env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ovaio");
    poll("a part of the export stored", || {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("the export ended ({status}) before it could be interrupted");
        }
        (s3.parts_stored() > 0).then_some(())
    });
    child
}

#[test]
fn sigkill_mid_export_leaves_no_object() {
    let w = Work::new();
    let s3 = S3Server::start(&w);
    let mut child = start_long_export(&w, &s3);
    child.kill().expect("SIGKILL the export");
    child.wait().expect("wait");
    assert!(s3.list().is_empty(), "{:?}", s3.list());
    assert!(!s3.object_path("big.ova").exists());
    // Killed outright, it could not abort: the upload stays incomplete
    // (a bucket lifecycle rule removes such), invisible to listings.
    assert_eq!(s3.uploads_in_progress().len(), 1);
}

#[test]
fn sigterm_mid_export_aborts_the_upload() {
    let w = Work::new();
    let s3 = S3Server::start(&w);
    let child = start_long_export(&w, &s3);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let done = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(130), "{}: {stderr}", done.status);
    assert!(
        stderr.starts_with("ovaio: error: ") && stderr.contains("cancelled"),
        "{stderr}"
    );
    assert!(s3.list().is_empty(), "{:?}", s3.list());
    assert!(
        s3.uploads_in_progress().is_empty(),
        "the upload was not aborted:\n{}",
        s3.log()
    );
    assert_eq!(s3.parts_stored(), 0, "parts left behind:\n{}", s3.log());
}

#[test]
fn a_wrong_secret_is_refused_and_leaves_nothing() {
    let w = Work::new();
    let s3 = S3Server::start(&w);
    let disks = two_part_disks(&w);
    let mut env = s3.env();
    for (k, v) in &mut env {
        if k == "AWS_SECRET_ACCESS_KEY" {
            v.push_str("-wrong");
        }
    }
    let run = with_env(export(&disks), &env)
        .arg("-o")
        .arg(s3.url("vm.ova"))
        .run();
    run.assert_error(&["403"]);
    assert!(s3.list().is_empty(), "{:?}", s3.list());
    assert!(s3.uploads_in_progress().is_empty());
    assert_eq!(s3.parts_stored(), 0);

    // An object the right keys wrote is not read with the wrong one.
    export_to(&s3, &disks, "vm.ova", "5M");
    let dir = w.mkdir("out");
    with_env(ovaio(), &env)
        .arg("import")
        .arg(s3.url("vm.ova"))
        .arg("--dir")
        .arg(&dir)
        .run()
        .assert_error(&["403"]);
    assert_dir_empty(&dir);
}

#[test]
fn importing_a_missing_object_exits_4() {
    let w = Work::new();
    let s3 = S3Server::start(&w);
    let dir = w.mkdir("out");
    let run = with_env(ovaio(), &s3.env())
        .arg("import")
        .arg(s3.url("no/such.ova"))
        .arg("--dir")
        .arg(&dir)
        .run();
    // The object is named as the user wrote it, not by its presigned URL.
    run.assert_error(&["404", &s3.url("no/such.ova")]);
    assert!(!run.stderr.contains("X-Amz"), "{}", run.stderr);
    assert_eq!(run.status.code(), Some(4), "{}", run.stderr);
    assert_dir_empty(&dir);
}
