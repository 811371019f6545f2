//! Packages written by `ovaio export`, judged by other tools: the Common
//! OVF Tool (`cot info`, COT from PyPI in the test venv that
//! `scripts/test.sh` makes) must read the VM the generated descriptor
//! describes without a warning or an error, and `xmllint` must validate
//! that descriptor against the DMTF OVF envelope schema (DSP8023 1.1.1,
//! `tests/fixtures/ovf-schema`). A missing tool fails the test.

mod support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::image::{Fill, Layout, Run};
use support::{Work, ovaio, tool};

const MIB: u64 = 1 << 20;

/// 3 MiB with data at both ends and a hole between.
const SMALL: Layout = Layout {
    size: 3 * MIB,
    runs: &[
        Run {
            offset: 0,
            len: 300_000,
            fill: Fill::Random(5),
        },
        Run {
            offset: 2 * MIB + 4096,
            len: 70_000,
            fill: Fill::Text,
        },
    ],
};

/// The `cot` of the test venv, next to its Python.
fn cot() -> PathBuf {
    let p = support::server::python().with_file_name("cot");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test.sh (it installs COT into the test venv)",
        p.display()
    );
    p
}

/// `text` without ANSI colour sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What `cot info` printed: stdout, and its log lines (level, text).
struct CotReport {
    stdout: String,
    log: Vec<(String, String)>,
}

impl CotReport {
    /// Log records of level WARNING, ERROR or CRITICAL.
    fn problems(&self) -> Vec<&(String, String)> {
        self.log
            .iter()
            .filter(|(l, _)| matches!(l.as_str(), "WARNING" | "ERROR" | "CRITICAL"))
            .collect()
    }

    /// The `None (default)` configuration profile: CPUs, memory, NICs,
    /// disks as COT counts them.
    fn profile(&self) -> Vec<String> {
        let line = self
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with("None (default)"))
            .unwrap_or_else(|| panic!("no configuration profile in:\n{}", self.stdout));
        line.split_whitespace().skip(2).map(str::to_owned).collect()
    }
}

/// Runs `cot info` on `ova`; it must exit 0.
fn cot_info(ova: &Path) -> CotReport {
    let out = Command::new(cot())
        .arg("info")
        .arg(ova)
        .output()
        .expect("run cot");
    let stdout = strip_ansi(&String::from_utf8_lossy(&out.stdout));
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "cot info {} failed ({}):\n{stdout}\n{stderr}",
        ova.display(),
        out.status
    );
    // Records look like `LEVEL   : text`, continued on further lines.
    let mut log: Vec<(String, String)> = Vec::new();
    for line in stderr.lines() {
        match line.split_once(':') {
            Some((level, text))
                if !level.trim().is_empty()
                    && level.trim().chars().all(|c| c.is_ascii_uppercase()) =>
            {
                log.push((level.trim().to_owned(), text.trim().to_owned()));
            }
            _ => match log.last_mut() {
                Some((_, text)) => {
                    text.push('\n');
                    text.push_str(line);
                }
                None => log.push(("?".into(), line.to_owned())),
            },
        }
    }
    CotReport { stdout, log }
}

/// Panics unless COT reads `ova` without a warning or an error.
fn assert_cot_clean(ova: &Path) -> CotReport {
    let r = cot_info(ova);
    let problems = r.problems();
    assert!(
        problems.is_empty(),
        "cot info {} reports:\n{problems:#?}\n{}",
        ova.display(),
        r.stdout
    );
    r
}

/// Panics unless xmllint validates `ovf` against DSP8023 1.1.1.
fn assert_schema_valid(ovf: &Path) {
    let schema =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ovf-schema/dsp8023_1.1.1.xsd");
    let out = Command::new("xmllint")
        .args(["--noout", "--nonet", "--schema"])
        .arg(&schema)
        .arg(ovf)
        .output()
        .expect("xmllint (Debian libxml2-utils) is needed: run scripts/test.sh");
    assert!(
        out.status.success(),
        "{} does not validate:\n{}",
        ovf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Extracts the member `name` of `ova` into `dir`.
fn extract_member(ova: &Path, name: &str, dir: &Path) -> PathBuf {
    tool(
        "tar",
        &[
            OsStr::new("-xf"),
            ova.as_os_str(),
            OsStr::new("-C"),
            dir.as_os_str(),
            OsStr::new(name),
        ],
    );
    dir.join(name)
}

/// Writes the SMALL source once and returns its path.
fn source(w: &Work) -> PathBuf {
    SMALL.write_raw(&w.path("src.raw"))
}

/// The disk formats `export` writes: flags, entry extension.
const FORMATS: [(&[&str], &str); 3] = [
    (&[], "qcow2"),
    (&["--disk-format", "vmdk"], "vmdk"),
    (&["--disk-format", "vmdk", "--compress"], "vmdk"),
];

/// Every disk format with every manifest algorithm, each with 1, 2 and 3
/// disks across the matrix: COT reads the VM with no warning and no error
/// (for SHA-256 and SHA-512 manifests, none but its OVF 1.x SHA-1 rule,
/// see [`assert_only_cot_sha1_rule`]), every disk on the SATA controller,
/// and xmllint validates the descriptor.
#[test]
fn cot_reads_every_format_and_manifest_for_one_two_and_three_disks() {
    let w = Work::new();
    let src = source(&w);
    for (f, (flags, ext)) in FORMATS.iter().enumerate() {
        for (a, alg) in ALGORITHMS.iter().enumerate() {
            let n = 1 + (f + a) % 3;
            let tag = format!("{f}-{}-{n}", alg.0);
            let out = w.path(&format!("{tag}.ova"));
            let mut cmd = ovaio()
                .arg("export")
                .arg("-q")
                .arg("--name")
                .arg("testvm")
                .arg("--manifest")
                .arg(alg.0)
                .arg("-o")
                .arg(&out);
            for flag in *flags {
                cmd = cmd.arg(flag);
            }
            for i in 1..=n {
                cmd = cmd
                    .arg("--disk")
                    .arg(format!("disk{i}.{ext}={}", src.display()));
            }
            cmd.run().assert_success();
            let dir = w.mkdir(&tag);
            tool(
                "tar",
                &[
                    OsStr::new("-xf"),
                    out.as_os_str(),
                    OsStr::new("-C"),
                    dir.as_os_str(),
                ],
            );
            let r = cot_info(&out);
            if alg.0 == "sha1" {
                let problems = r.problems();
                assert!(problems.is_empty(), "{tag}: {problems:#?}\n{}", r.stdout);
            } else {
                assert_only_cot_sha1_rule(&r, &dir, "testvm.mf");
            }
            // The defaults: 1 CPU, 2 GiB, no NIC, every disk on SATA 0.
            let p = r.profile();
            assert_eq!(&p[..4], ["1", "2", "GiB", "0"], "{tag}: {}", r.stdout);
            assert_eq!(p[5], n.to_string(), "{tag}: {}", r.stdout);
            for i in 0..n {
                assert!(
                    r.stdout.contains(&format!("disk{}.{ext}", i + 1))
                        && r.stdout.contains(&format!("harddisk @ SATA 0:{i}")),
                    "{tag}: disk {i} is not on the SATA controller:\n{}",
                    r.stdout
                );
            }
            assert!(r.stdout.contains("vmx-13 virtualbox-2.2"), "{}", r.stdout);
            assert_schema_valid(&dir.join("testvm.ovf"));
            let text = std::fs::read_to_string(dir.join("testvm.ovf")).expect("read ovf");
            let uri = if *ext == "vmdk" {
                "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
            } else {
                "http://www.gnome.org/~markmc/qcow-image-format.html"
            };
            assert_eq!(text.matches(uri).count(), n, "{tag}: {text}");
        }
    }
}

#[test]
fn vm_flags_reach_the_descriptor() {
    let w = Work::new();
    let src = source(&w);
    let out = w.path("app.ova");
    let mut cmd = ovaio().arg("export").arg("-q").arg("--no-manifest");
    for a in [
        "--name",
        "app",
        "--cpus",
        "4",
        "--memory",
        "8G",
        "--os",
        "ubuntu64",
        "--controller",
        "scsi",
        "--nic",
        "VM Network",
        "--nic",
        "backend",
        "--product",
        "Appliance",
        "--vendor",
        "Example & Co",
        "--product-version",
        "1.2",
        "--annotation",
        "A test appliance",
    ] {
        cmd = cmd.arg(a);
    }
    cmd.arg("--disk")
        .arg(format!("a.qcow2={}", src.display()))
        .arg("--disk")
        .arg(format!("b.qcow2={}", src.display()))
        .arg("-o")
        .arg(&out)
        .run()
        .assert_success();
    let r = assert_cot_clean(&out);
    let p = r.profile();
    assert_eq!(&p[..4], ["4", "8", "GiB", "2"], "{}", r.stdout);
    for want in [
        "harddisk @ SCSI 0:0",
        "harddisk @ SCSI 0:1",
        "Appliance",
        "Example & Co",
        "A test appliance",
        "Network adapter 1 : VM Network",
        "Network adapter 2 : backend",
        "E1000",
    ] {
        assert!(r.stdout.contains(want), "no {want:?} in:\n{}", r.stdout);
    }
    let dir = w.mkdir("x");
    let ovf = extract_member(&out, "app.ovf", &dir);
    assert_schema_valid(&ovf);
    let text = std::fs::read_to_string(&ovf).expect("read ovf");
    assert!(
        text.contains("<OperatingSystemSection ovf:id=\"94\" vmw:osType=\"ubuntu64Guest\">"),
        "{text}"
    );
}

#[test]
fn bad_vm_flag_values_name_the_flag() {
    let w = Work::new();
    let src = source(&w);
    let disk = format!("d.qcow2={}", src.display());
    let out = w.path("x.ova");
    for (flag, value, says) in [
        ("--cpus", "0", "1 to 768"),
        ("--cpus", "many", "whole number"),
        ("--memory", "2X", "2G"),
        ("--memory", "0", "memory"),
        ("--os", "plan9", "ubuntu64"),
        ("--controller", "ide", "sata or scsi"),
        ("--nic", "", "empty"),
        ("--product", "a\u{7}b", "control character"),
    ] {
        let o = ovaio()
            .arg("export")
            .arg("--name")
            .arg("vm")
            .arg(flag)
            .arg(value)
            .arg("--disk")
            .arg(&disk)
            .arg("-o")
            .arg(&out)
            .run();
        assert_eq!(o.status.code(), Some(2), "{flag} {value:?}: {}", o.stderr);
        assert!(
            o.stderr.contains(flag) && o.stderr.contains(says),
            "{flag} {value:?}: {}",
            o.stderr
        );
        assert!(!out.exists());
    }
    // Eleven NICs, or more disks than four SCSI controllers hold: refused
    // before any source is read, naming the flag.
    let mut cmd = ovaio().arg("export").arg("--name").arg("vm");
    for i in 0..11 {
        cmd = cmd.arg("--nic").arg(format!("net{i}"));
    }
    cmd.arg("--disk")
        .arg(&disk)
        .arg("-o")
        .arg(&out)
        .run()
        .assert_error(&["--nic", "at most 10"]);
    let mut cmd = ovaio()
        .arg("export")
        .arg("--name")
        .arg("vm")
        .arg("--controller")
        .arg("scsi");
    for i in 0..61 {
        cmd = cmd
            .arg("--disk")
            .arg(format!("d{i}.qcow2=/nonexistent/{i}.raw"));
    }
    cmd.arg("-o").arg(&out).run().assert_error(&[
        "--controller",
        "61 disks",
        "sata controllers hold 120",
    ]);
    // The VM flags describe the generated descriptor, not a given one.
    let ovf = w.path("given.ovf");
    std::fs::write(&ovf, "<Envelope/>").expect("write");
    let o = ovaio()
        .arg("export")
        .arg("--ovf")
        .arg(&ovf)
        .arg("--cpus")
        .arg("2")
        .arg("--disk")
        .arg(&disk)
        .arg("-o")
        .arg(&out)
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", o.stderr);
    assert!(
        o.stderr.contains("--cpus") && o.stderr.contains("--ovf"),
        "{}",
        o.stderr
    );
}

/// An `ova-export` ticket and an export job with a `vm` object: the
/// downloaded and the written package describe that VM; a bad value is a
/// 400 naming its field.
#[test]
fn tickets_and_jobs_describe_the_vm() {
    use serde_json::json;
    use support::server::Server;

    let w = Work::new();
    let s = Server::start(&w);
    SMALL.write_raw(&s.root.join("vol.raw"));
    let vm = json!({"cpus": 2, "memory": "3G", "os": 101, "controller": "scsi",
                    "nics": ["lan"], "product": "P", "annotation": "from a ticket"});
    s.add_ticket(&json!({
        "uuid": "t1", "kind": "ova-export", "ops": ["read"], "timeout": 120,
        "ova": {"name": "tvm", "vm": vm,
                "disks": [{"href": "d1.qcow2", "url": s.file_url("vol.raw")}]},
    }));
    let shown = s.ticket("t1");
    assert_eq!(shown["ova"]["vm"], vm, "GET shows the vm as given");
    let r = s.data("GET", "/images/t1", &[]);
    assert_eq!(r.status, 200, "download: {}\n{}", r.text(), s.log());
    let dl = w.path("tvm.ova");
    std::fs::write(&dl, &r.body).expect("save the download");
    // The default SHA-256 manifest is what COT's OVF 1.x rule misreads;
    // the VM itself must read cleanly, so look only at the hardware.
    let report = cot_info(&dl);
    let p = report.profile();
    assert_eq!(&p[..4], ["2", "3", "GiB", "1"], "{}", report.stdout);
    assert!(
        report.stdout.contains("harddisk @ SCSI 0:0") && report.stdout.contains("from a ticket"),
        "{}",
        report.stdout
    );
    assert!(
        report
            .problems()
            .iter()
            .all(|(_, t)| t.contains("checksum")),
        "{:#?}",
        report.problems()
    );
    let x = w.mkdir("t");
    assert_schema_valid(&extract_member(&dl, "tvm.ovf", &x));

    let job = json!({"type": "export", "target": s.file_url("job.ova"), "name": "jvm",
                     "vm": {"memory": 512, "os": "debian64"},
                     "disks": [{"href": "d1.qcow2", "url": s.file_url("vol.raw")}]});
    let r = s.control("POST", "/jobs", Some(&job));
    assert_eq!(r.status, 201, "POST /jobs: {}", r.text());
    let id = r.json()["id"].as_str().expect("job id").to_owned();
    // Each poll is a curl run against the control socket.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let done = loop {
        let j = s.control("GET", &format!("/jobs/{id}"), None).json();
        if !matches!(j["state"].as_str(), Some("pending" | "active")) {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "job {id} hangs: {j}");
    };
    assert_eq!(done["state"], "succeeded", "{done}\n{}", s.log());
    let out = s.root.join("job.ova");
    let report = cot_info(&out);
    let p = report.profile();
    assert_eq!(&p[..4], ["1", "512", "MiB", "0"], "{}", report.stdout);
    let x = w.mkdir("j");
    let text = std::fs::read_to_string(extract_member(&out, "jvm.ovf", &x)).expect("read");
    assert!(
        text.contains("ovf:id=\"96\" vmw:osType=\"debian9_64Guest\""),
        "{text}"
    );

    for (body, field) in [
        (json!({"cpus": 0}), "ova.vm.cpus"),
        (json!({"memory": "lots"}), "ova.vm.memory"),
        (json!({"controller": "ide"}), "ova.vm.controller"),
        (json!({"nics": [""]}), "ova.vm.nics"),
        (json!({"cores": 2}), "cores"),
    ] {
        let r = s.control(
            "PUT",
            "/tickets/bad",
            Some(&json!({
                "uuid": "bad", "kind": "ova-export", "ops": ["read"], "timeout": 120,
                "ova": {"name": "x", "vm": body,
                        "disks": [{"href": "d1.qcow2", "url": s.file_url("vol.raw")}]},
            })),
        );
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(field), "{body}: {}", r.text());
    }
    let mut bad_job = job.clone();
    bad_job["vm"] = json!({"os": "plan9"});
    let r = s.control("POST", "/jobs", Some(&bad_job));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("vm.os"), "{}", r.text());
}

/// `(algorithm, name, hex)` per manifest line, in the one form ovaio
/// writes (ovftool's): `SHA256(name)= hex`.
fn manifest_lines(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(|l| {
            let (alg, rest) = l
                .split_once('(')
                .unwrap_or_else(|| panic!("bad manifest line {l:?}"));
            let (name, hex) = rest
                .split_once(")= ")
                .unwrap_or_else(|| panic!("bad manifest line {l:?}"));
            (alg.to_owned(), name.to_owned(), hex.to_owned())
        })
        .collect()
}

/// The hex digest `program` (sha1sum, sha256sum, sha512sum) prints.
fn digest_of(program: &str, path: &Path) -> String {
    tool(program, &[path.as_os_str()])
        .split_whitespace()
        .next()
        .expect("digest output")
        .to_owned()
}

/// The manifest algorithms: flag value, manifest name, digest tool, hex
/// digits.
const ALGORITHMS: [(&str, &str, &str, usize); 3] = [
    ("sha1", "SHA1", "sha1sum", 40),
    ("sha256", "SHA256", "sha256sum", 64),
    ("sha512", "SHA512", "sha512sum", 128),
];

/// Checks the manifest of an extracted package in `dir`: every entry but
/// the manifest, in archive order, with its digest in `alg`.
fn assert_manifest(dir: &Path, mf: &str, names: &[&str], alg: (&str, &str, &str, usize)) {
    let text = std::fs::read_to_string(dir.join(mf)).expect("read manifest");
    let lines = manifest_lines(&text);
    let listed: Vec<&str> = lines.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(listed, names, "{text}");
    for (a, name, hex) in &lines {
        assert_eq!(a, alg.1, "{text}");
        assert_eq!(hex.len(), alg.3, "{text}");
        assert_eq!(*hex, digest_of(alg.2, &dir.join(name)), "digest of {name}");
    }
}

/// COT reads an OVF 1.x manifest as SHA-1 whatever a line says (the OVF
/// 1.x rule; `COT/vm_description/ovf/ovf.py`, `checksum_algorithm`). So
/// for a SHA-256 or SHA-512 manifest its only complaints must be one per
/// entry, each expecting our digest and finding the entry's SHA-1: that
/// proves the digests right in COT's own terms and leaves nothing else.
fn assert_only_cot_sha1_rule(r: &CotReport, dir: &Path, mf: &str) {
    let text = std::fs::read_to_string(dir.join(mf)).expect("read manifest");
    let lines = manifest_lines(&text);
    let problems = r.problems();
    assert_eq!(problems.len(), lines.len(), "{problems:#?}");
    for (_, name, hex) in &lines {
        let sha1 = digest_of("sha1sum", &dir.join(name));
        assert!(
            problems.iter().any(|(level, t)| level == "ERROR"
                && t.contains(&format!("sha1 checksum for file '{name}'"))
                && t.contains(hex.as_str())
                && t.contains(&sha1)),
            "no SHA-1 rule complaint for {name}: {problems:#?}"
        );
    }
}

#[test]
fn manifest_in_each_algorithm() {
    let w = Work::new();
    let src = source(&w);
    for alg in ALGORITHMS {
        let out = w.path(&format!("{}.ova", alg.0));
        let run = ovaio()
            .arg("export")
            .arg("-q")
            .arg("--json")
            .arg("--name")
            .arg("vm")
            .arg("--manifest")
            .arg(alg.0)
            .arg("--disk")
            .arg(format!("a.qcow2={}", src.display()))
            .arg("--disk")
            .arg(format!("b.qcow2={}:raw", src.display()))
            .arg("-o")
            .arg(&out)
            .run();
        run.assert_success();
        let summary = run.json();
        let x = w.mkdir(alg.0);
        tool(
            "tar",
            &[
                OsStr::new("-xf"),
                out.as_os_str(),
                OsStr::new("-C"),
                x.as_os_str(),
            ],
        );
        assert_manifest(&x, "vm.mf", &["vm.ovf", "a.qcow2", "b.qcow2"], alg);
        for (i, href) in ["a.qcow2", "b.qcow2"].iter().enumerate() {
            let d = &summary["disks"][i];
            assert_eq!(d[alg.0], digest_of(alg.2, &x.join(href)), "{summary}");
            for (other, ..) in ALGORITHMS.iter().filter(|a| a.0 != alg.0) {
                assert!(d.get(other).is_none(), "{other} in {summary}");
            }
        }
        let r = cot_info(&out);
        if alg.0 == "sha1" {
            let problems = r.problems();
            assert!(problems.is_empty(), "{problems:#?}\n{}", r.stdout);
        } else {
            assert_only_cot_sha1_rule(&r, &x, "vm.mf");
        }
        // ovaio verifies each algorithm on import.
        let dir = w.mkdir(&format!("in-{}", alg.0));
        let imported = ovaio()
            .arg("import")
            .arg(&out)
            .arg("--dir")
            .arg(&dir)
            .arg("--json")
            .arg("-q")
            .run();
        imported.assert_success();
        assert_eq!(
            imported.json()["manifest"],
            "verified",
            "{}",
            imported.stdout
        );
    }
    let o = ovaio()
        .arg("export")
        .arg("--name")
        .arg("vm")
        .arg("--manifest")
        .arg("md5")
        .arg("--disk")
        .arg(format!("a.qcow2={}", src.display()))
        .arg("-o")
        .arg(w.path("md5.ova"))
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", o.stderr);
    assert!(
        o.stderr.contains("--manifest") && o.stderr.contains("sha1, sha256 or sha512"),
        "{}",
        o.stderr
    );
    let o = ovaio()
        .arg("export")
        .arg("--name")
        .arg("vm")
        .arg("--manifest")
        .arg("sha1")
        .arg("--no-manifest")
        .arg("--disk")
        .arg(format!("a.qcow2={}", src.display()))
        .arg("-o")
        .arg(w.path("both.ova"))
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("--no-manifest"), "{}", o.stderr);
}

/// `manifest` in an export ticket and an export job; the ticket's
/// checksums stay SHA-256 whatever the manifest's algorithm.
#[test]
fn tickets_and_jobs_choose_the_manifest() {
    use serde_json::json;
    use support::server::Server;

    let w = Work::new();
    let s = Server::start(&w);
    SMALL.write_raw(&s.root.join("vol.raw"));
    s.add_ticket(&json!({
        "uuid": "t1", "kind": "ova-export", "ops": ["read"], "timeout": 120,
        "ova": {"name": "tvm", "manifest": "sha1",
                "disks": [{"href": "d1.qcow2", "url": s.file_url("vol.raw")}]},
    }));
    assert_eq!(s.ticket("t1")["ova"]["manifest"], "sha1");
    let r = s.data("GET", "/images/t1", &[]);
    assert_eq!(r.status, 200, "download: {}\n{}", r.text(), s.log());
    let dl = w.path("tvm.ova");
    std::fs::write(&dl, &r.body).expect("save the download");
    let x = w.mkdir("t");
    tool(
        "tar",
        &[
            OsStr::new("-xf"),
            dl.as_os_str(),
            OsStr::new("-C"),
            x.as_os_str(),
        ],
    );
    assert_manifest(&x, "tvm.mf", &["tvm.ovf", "d1.qcow2"], ALGORITHMS[0]);
    assert_cot_clean(&dl);
    // The download completed: the ticket's checksums are SHA-256.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let t = loop {
        let t = s.ticket("t1");
        if t["state"] == "succeeded" {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "ticket: {t}");
    };
    assert_eq!(
        t["disks"][0]["sha256"],
        digest_of("sha256sum", &x.join("d1.qcow2")),
        "{t}"
    );

    let r = s.control(
        "POST",
        "/jobs",
        Some(
            &json!({"type": "export", "target": s.file_url("job.ova"), "name": "jvm",
                     "manifest": "SHA512",
                     "disks": [{"href": "d1.qcow2", "url": s.file_url("vol.raw")}]}),
        ),
    );
    assert_eq!(r.status, 201, "POST /jobs: {}", r.text());
    let id = r.json()["id"].as_str().expect("job id").to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let done = loop {
        let j = s.control("GET", &format!("/jobs/{id}"), None).json();
        if !matches!(j["state"].as_str(), Some("pending" | "active")) {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "job {id} hangs: {j}");
    };
    assert_eq!(done["state"], "succeeded", "{done}\n{}", s.log());
    let x = w.mkdir("j");
    let out = s.root.join("job.ova");
    tool(
        "tar",
        &[
            OsStr::new("-xf"),
            out.as_os_str(),
            OsStr::new("-C"),
            x.as_os_str(),
        ],
    );
    assert_manifest(&x, "jvm.mf", &["jvm.ovf", "d1.qcow2"], ALGORITHMS[2]);
    assert_eq!(
        done["result"]["disks"][0]["sha512"],
        digest_of("sha512sum", &x.join("d1.qcow2"))
    );

    let r = s.control(
        "PUT",
        "/tickets/bad",
        Some(&json!({
            "uuid": "bad", "kind": "ova-export", "ops": ["read"], "timeout": 120,
            "ova": {"name": "x", "manifest": "md5",
                    "disks": [{"href": "d1.qcow2", "url": s.file_url("vol.raw")}]},
        })),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("ova.manifest"), "{}", r.text());
    let r = s.control(
        "POST",
        "/jobs",
        Some(
            &json!({"type": "export", "target": s.file_url("bad.ova"), "manifest": "md5",
                     "disks": [{"href": "d1.qcow2", "url": s.file_url("vol.raw")}]}),
        ),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("manifest"), "{}", r.text());
}

/// `disk_format` and `compress` in an export ticket and an export job:
/// the disks are streamOptimized VMDKs that qemu-img finds clean and
/// equal to the source; bad values are a 400 naming the field.
#[test]
fn tickets_and_jobs_write_vmdk() {
    use serde_json::json;
    use support::server::Server;

    let w = Work::new();
    let s = Server::start(&w);
    let raw = SMALL.write_raw(&s.root.join("vol.raw"));
    let check = |disk: &Path| {
        tool(
            "qemu-img",
            &[
                OsStr::new("check"),
                OsStr::new("-q"),
                OsStr::new("-f"),
                OsStr::new("vmdk"),
                disk.as_os_str(),
            ],
        );
        tool(
            "qemu-img",
            &[
                OsStr::new("compare"),
                OsStr::new("-q"),
                OsStr::new("-f"),
                OsStr::new("raw"),
                OsStr::new("-F"),
                OsStr::new("vmdk"),
                raw.as_os_str(),
                disk.as_os_str(),
            ],
        );
    };
    s.add_ticket(&json!({
        "uuid": "t1", "kind": "ova-export", "ops": ["read"], "timeout": 120,
        "ova": {"name": "tvm", "disk_format": "vmdk", "compress": true, "manifest": "sha1",
                "disks": [{"href": "d1.vmdk", "url": s.file_url("vol.raw")}]},
    }));
    let r = s.data("GET", "/images/t1", &[]);
    assert_eq!(r.status, 200, "download: {}\n{}", r.text(), s.log());
    assert_eq!(
        r.header("content-length")
            .and_then(|v| v.parse::<usize>().ok()),
        Some(r.body.len())
    );
    let dl = w.path("tvm.ova");
    std::fs::write(&dl, &r.body).expect("save the download");
    assert_cot_clean(&dl);
    let x = w.mkdir("t");
    check(&extract_member(&dl, "d1.vmdk", &x));
    // Downloaded again, the same bytes (a download can resume).
    let again = s.data("GET", "/images/t1", &[]);
    assert!(again.body == r.body, "a second download differs");

    let job = json!({"type": "export", "target": s.file_url("job.ova"), "name": "jvm",
                     "disk_format": "vmdk",
                     "disks": [{"href": "d1.vmdk", "url": s.file_url("vol.raw")}]});
    let r = s.control("POST", "/jobs", Some(&job));
    assert_eq!(r.status, 201, "POST /jobs: {}", r.text());
    let id = r.json()["id"].as_str().expect("job id").to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let done = loop {
        let j = s.control("GET", &format!("/jobs/{id}"), None).json();
        if !matches!(j["state"].as_str(), Some("pending" | "active")) {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "job {id} hangs: {j}");
    };
    assert_eq!(done["state"], "succeeded", "{done}\n{}", s.log());
    assert_eq!(done["result"]["disks"][0]["format"], "vmdk", "{done}");
    let x = w.mkdir("j");
    check(&extract_member(&s.root.join("job.ova"), "d1.vmdk", &x));

    for (extra, field) in [
        (json!({"disk_format": "vhd"}), "ova.disk_format"),
        (json!({"compress": true}), "ova.compress"),
    ] {
        let mut ova = json!({"name": "x",
                             "disks": [{"href": "d1.vmdk", "url": s.file_url("vol.raw")}]});
        for (k, v) in extra.as_object().expect("object") {
            ova[k] = v.clone();
        }
        let r = s.control(
            "PUT",
            "/tickets/bad",
            Some(
                &json!({"uuid": "bad", "kind": "ova-export", "ops": ["read"],
                         "timeout": 120, "ova": ova}),
            ),
        );
        assert_eq!(r.status, 400, "{extra}: {}", r.text());
        assert!(r.text().contains(field), "{extra}: {}", r.text());
    }
    let mut bad_job = job.clone();
    bad_job["disk_format"] = json!("qcow2");
    bad_job["compress"] = json!(true);
    let r = s.control("POST", "/jobs", Some(&bad_job));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("compress"), "{}", r.text());
}
