//! Manifests in SHA-1, SHA-256, SHA-512 or a mix of them, line by line,
//! verify wherever the manifest is placed: first, right after the OVF or
//! last, in OVF 1.0 and OVF 2.0 packages alike. `import` writes the disks
//! and says `manifest: verified`; `inspect` (the same digest threads)
//! reports every line verified; a wrong SHA-512 digest placed last fails
//! with exit 5, naming the entry and the algorithm as manifests spell it.
//!
//! Fixtures come from the real tools: the disks from `qemu-img`, the
//! expected digests from `sha1sum`, `sha256sum` and `sha512sum`, the
//! packages from GNU tar; `qemu-img` judges the targets.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::image::{self, MAIN, ODD, Source, Target};
use support::ova::{self, Prepared, ovf_xml};
use support::tar::{self, TarFormat, gnu_tar};
use support::{Outcome, Work, assert_dir_empty, file_len, ovaio, tool};

/// Where the manifest goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Manifest, OVF, disks, extras.
    First,
    /// OVF, manifest, disks, extras.
    AfterOvf,
    /// OVF, disks, extras, manifest (ovftool, open-vmdk's ova-compose).
    Last,
}

const OVF_NAME: &str = "vm.ovf";
const MF_NAME: &str = "vm.mf";
/// An extra entry listed in the manifest, small enough to be held whole.
const NVRAM: &str = "nvram.dat";

/// Two disks made by `qemu-img`, imported and compared in every test.
struct Disks {
    vmdk: Prepared,
    qcow2: Prepared,
}

impl Disks {
    fn new(w: &Work) -> Disks {
        let d = Disks {
            vmdk: ova::prepare(w.root(), "a", &MAIN, Source::Vmdk),
            qcow2: ova::prepare(w.root(), "b", &ODD, Source::Qcow2V3),
        };
        // Larger than the entries the digest threads keep whole, so the
        // disks are hashed while they stream, as real disks are.
        for p in [&d.vmdk, &d.qcow2] {
            assert!(file_len(&p.file) > 64 << 10, "{}", p.file.display());
        }
        d
    }

    fn hrefs(&self) -> [(&'static str, &Prepared); 2] {
        [("disk1.vmdk", &self.vmdk), ("disk2.qcow2", &self.qcow2)]
    }
}

/// The hex digest `sha1sum`, `sha256sum` or `sha512sum` gives for `file`;
/// `alg` is spelt as in manifests.
fn sum(alg: &str, file: &Path) -> String {
    let program = match alg {
        "SHA1" => "sha1sum",
        "SHA256" => "sha256sum",
        "SHA512" => "sha512sum",
        other => panic!("no tool for {other}"),
    };
    let out = tool(program, &[file.as_os_str()]);
    let hex = out.split_whitespace().next().expect("a digest").to_owned();
    assert!(
        hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{program}: {out}"
    );
    hex
}

/// One package to build.
struct Spec<'a> {
    name: &'a str,
    ovf2: bool,
    place: Place,
    /// The algorithm of each entry's line.
    alg_of: &'a dyn Fn(&str) -> &'static str,
    /// An entry whose line gets a wrong digest.
    corrupt: Option<&'a str>,
}

/// An OVF 1.0 descriptor, or the same in the OVF 2.0 namespace.
fn descriptor(disks: &Disks, ovf2: bool) -> String {
    let xml = ovf_xml(
        &disks
            .hrefs()
            .iter()
            .enumerate()
            .map(|(i, (href, p))| p.disk(i + 1, href).ovf)
            .collect::<Vec<_>>(),
    );
    if !ovf2 {
        return xml;
    }
    let v1 = "http://schemas.dmtf.org/ovf/envelope/1";
    assert!(xml.contains(v1));
    xml.replace(v1, "http://schemas.dmtf.org/ovf/envelope/2")
        .replacen("<Envelope ", r#"<Envelope ovf:version="2.0" "#, 1)
}

/// Builds the package with GNU tar; the manifest's digests come from the
/// sum tools, over the very files tar archives.
fn build(w: &Work, disks: &Disks, spec: &Spec<'_>) -> PathBuf {
    let scratch = w.mkdir(&format!("{}.d", spec.name));
    let ovf_file = scratch.join("descriptor");
    fs::write(&ovf_file, descriptor(disks, spec.ovf2)).expect("write ovf");
    let nvram_file = scratch.join("nvram");
    fs::write(
        &nvram_file,
        b"NVRAM state kept beside the disks\n".repeat(30),
    )
    .expect("nvram");
    let mut content: Vec<(String, &Path)> = vec![(OVF_NAME.to_owned(), &ovf_file)];
    for (href, p) in disks.hrefs() {
        content.push((href.to_owned(), &p.file));
    }
    content.push((NVRAM.to_owned(), &nvram_file));

    let mut mf = String::new();
    for (name, file) in &content {
        let alg = (spec.alg_of)(name);
        let mut hex = sum(alg, file);
        if spec.corrupt == Some(name.as_str()) {
            let flipped = if hex.starts_with('0') { "1" } else { "0" };
            hex.replace_range(..1, flipped);
        }
        mf.push_str(&format!("{alg}({name})= {hex}\n"));
    }
    let mf_file = scratch.join("manifest");
    fs::write(&mf_file, mf).expect("write manifest");
    let mf_entry = (MF_NAME.to_owned(), mf_file.as_path());

    let mut entries = Vec::new();
    match spec.place {
        Place::First => {
            entries.push(mf_entry);
            entries.extend(content);
        }
        Place::AfterOvf => {
            let mut rest = content.into_iter();
            entries.extend(rest.next());
            entries.push(mf_entry);
            entries.extend(rest);
        }
        Place::Last => {
            entries.extend(content);
            entries.push(mf_entry);
        }
    }
    let out = w.path(spec.name);
    gnu_tar(TarFormat::Gnu, &scratch.join("stage"), &out, &entries);
    let names: Vec<String> = tar::list(&out).into_iter().map(|l| l.name).collect();
    let mf_at = names.iter().position(|n| n == MF_NAME);
    let want = match spec.place {
        Place::First => 0,
        Place::AfterOvf => 1,
        Place::Last => names.len() - 1,
    };
    assert_eq!(mf_at, Some(want), "{names:?}");
    out
}

fn import(pkg: &Path, out: &Path, target: Target) -> Outcome {
    ovaio()
        .arg("import")
        .arg(pkg)
        .arg("--dir")
        .arg(out)
        .arg("--format")
        .arg(target.name())
        .arg("--json")
        .run()
}

/// Imports `pkg` into raw and into qcow2 targets: the manifest verified,
/// every disk equal to its source.
fn assert_imports(w: &Work, disks: &Disks, pkg: &Path) {
    for target in [Target::Raw, Target::Qcow2] {
        let stem = pkg.file_name().and_then(OsStr::to_str).expect("name");
        let out = w.mkdir(&format!("out-{stem}-{}", target.name()));
        let run = import(pkg, &out, target);
        run.assert_success();
        let json = run.json();
        assert_eq!(json["manifest"], "verified", "{stem}: {json}");
        for (href, p) in disks.hrefs() {
            let stem = href.rsplit_once('.').map_or(href, |(s, _)| s);
            let file = out.join(format!("{stem}.{}", target.name()));
            image::assert_target(&p.raw, &file, target, p.capacity);
        }
    }
}

/// `inspect --json` of `pkg`.
fn inspect(pkg: &Path) -> (Outcome, Value) {
    let run = ovaio().arg("inspect").arg(pkg).arg("--json").run();
    let json = run.json();
    (run, json)
}

/// `inspect` finds every line verified, each in its own algorithm.
fn assert_inspect_verified(pkg: &Path, algs: &str, alg_of: &dyn Fn(&str) -> &'static str) {
    let (run, json) = inspect(pkg);
    run.assert_success();
    let m = &json["verification"]["manifest"];
    assert_eq!(m["status"], "verified", "{json}");
    assert_eq!(m["verified"], 4, "{json}");
    assert_eq!(json["manifest"]["algorithm"], algs, "{json}");
    let lines = m["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 4, "{json}");
    for l in lines {
        let name = l["name"].as_str().expect("name");
        assert_eq!(l["status"], "verified", "{json}");
        assert_eq!(l["algorithm"], alg_of(name), "{json}");
        assert_eq!(l["actual"], l["expected"], "{json}");
    }
    let text = ovaio().arg("inspect").arg(pkg).run();
    text.assert_success();
    assert!(
        text.stdout.contains("Manifest: verified (4 entries)"),
        "{}",
        text.stdout
    );
}

#[test]
fn sha512_manifest_first_and_last() {
    let w = Work::new();
    let disks = Disks::new(&w);
    for (i, place) in [Place::First, Place::AfterOvf, Place::Last]
        .into_iter()
        .enumerate()
    {
        let pkg = build(
            &w,
            &disks,
            &Spec {
                name: &format!("sha512-{i}.ova"),
                ovf2: false,
                place,
                alg_of: &|_| "SHA512",
                corrupt: None,
            },
        );
        assert_imports(&w, &disks, &pkg);
        assert_inspect_verified(&pkg, "SHA512", &|_| "SHA512");
    }
}

#[test]
fn sha1_manifest_last_with_an_ovf2_descriptor() {
    let w = Work::new();
    let disks = Disks::new(&w);
    let pkg = build(
        &w,
        &disks,
        &Spec {
            name: "ovf2-sha1-last.ova",
            ovf2: true,
            place: Place::Last,
            alg_of: &|_| "SHA1",
            corrupt: None,
        },
    );
    assert_imports(&w, &disks, &pkg);
    assert_inspect_verified(&pkg, "SHA1", &|_| "SHA1");
    // Read from a pipe, as an upload arrives.
    let out = w.mkdir("out-stdin");
    let run = ovaio()
        .arg("import")
        .arg("-")
        .arg("--dir")
        .arg(&out)
        .arg("--json")
        .stdin(fs::read(&pkg).expect("read package"))
        .run();
    run.assert_success();
    assert_eq!(run.json()["manifest"], "verified");
    image::assert_target(
        &disks.vmdk.raw,
        &out.join("disk1.raw"),
        Target::Raw,
        disks.vmdk.capacity,
    );
}

/// SHA-512 for the OVF, SHA-1 for the VMDK, SHA-256 for the qcow2 disk,
/// SHA-512 for the NVRAM.
fn mixed(name: &str) -> &'static str {
    match name {
        "disk1.vmdk" => "SHA1",
        "disk2.qcow2" => "SHA256",
        _ => "SHA512",
    }
}

#[test]
fn mixed_algorithms_with_the_manifest_last() {
    let w = Work::new();
    let disks = Disks::new(&w);
    for (ovf2, name) in [(false, "mixed-ovf1.ova"), (true, "mixed-ovf2.ova")] {
        let pkg = build(
            &w,
            &disks,
            &Spec {
                name,
                ovf2,
                place: Place::Last,
                alg_of: &mixed,
                corrupt: None,
            },
        );
        assert_imports(&w, &disks, &pkg);
        assert_inspect_verified(&pkg, "SHA1,SHA256,SHA512", &mixed);
    }
}

#[test]
fn mixed_algorithms_with_the_manifest_first() {
    let w = Work::new();
    let disks = Disks::new(&w);
    let pkg = build(
        &w,
        &disks,
        &Spec {
            name: "mixed-first.ova",
            ovf2: true,
            place: Place::First,
            alg_of: &mixed,
            corrupt: None,
        },
    );
    assert_imports(&w, &disks, &pkg);
    assert_inspect_verified(&pkg, "SHA1,SHA256,SHA512", &mixed);
}

#[test]
fn a_wrong_sha512_digest_placed_last_fails_naming_entry_and_algorithm() {
    let w = Work::new();
    let disks = Disks::new(&w);
    for (i, bad) in ["disk2.qcow2", OVF_NAME, NVRAM].into_iter().enumerate() {
        let pkg = build(
            &w,
            &disks,
            &Spec {
                name: &format!("bad-{i}.ova"),
                ovf2: false,
                place: Place::Last,
                alg_of: &|_| "SHA512",
                corrupt: Some(bad),
            },
        );
        for target in [Target::Raw, Target::Qcow2] {
            let out = w.mkdir(&format!("out-bad-{i}-{}", target.name()));
            let run = import(&pkg, &out, target);
            let entry = format!("entry '{bad}'");
            run.assert_error(&[&entry, "SHA512", "digest mismatch"]);
            assert_eq!(run.status.code(), Some(5), "{}", run.stderr);
            assert!(!run.stderr.contains("Sha512"), "{}", run.stderr);
            // No target left looking complete.
            assert_dir_empty(&out);
        }
        let (run, json) = inspect(&pkg);
        run.assert_error(&[bad, "SHA512"]);
        assert_eq!(run.status.code(), Some(5), "{}", run.stderr);
        let m = &json["verification"]["manifest"];
        assert_eq!(m["status"], "failed", "{json}");
        let statuses: Vec<(&str, &str)> = m["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap_or_default(),
                    l["status"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        for (name, status) in statuses {
            let want = if name == bad { "mismatch" } else { "verified" };
            assert_eq!(status, want, "{name}: {json}");
        }
    }
}
