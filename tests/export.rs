//! `ovaio export` end to end: the OVA it writes is read back by GNU tar,
//! Python's `tarfile` and `sha256sum`, every disk is judged by `qemu-img`
//! against its source, and `ovaio import` restores the sources. Failures
//! (bad sources, full disks, signals) leave neither `OUT.ova` nor
//! `OUT.ova.partial` behind.

mod support;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::image::{self, Fill, Layout, MAIN, ODD, QCOW2_URI, Run, Source, VMDK_URI};
use support::ova::{self, OvfDisk};
use support::{Cmd, Outcome, Work, assert_absent, assert_dir_empty, file_len, ovaio, tool};

const MIB: u64 = 1 << 20;

/// 2 MiB of incompressible data, every byte allocated.
const FULL: Layout = Layout {
    size: 2 * MIB,
    runs: &[Run {
        offset: 0,
        len: 2 * MIB,
        fill: Fill::Random(31),
    }],
};

/// 4 MiB of holes.
const EMPTY: Layout = Layout {
    size: 4 * MIB,
    runs: &[],
};

/// 1 000 000 bytes: not even a whole number of sectors, data in the last
/// partial sector.
const BYTES_1E6: Layout = Layout {
    size: 1_000_000,
    runs: &[
        Run {
            offset: 0,
            len: 5000,
            fill: Fill::Random(41),
        },
        Run {
            offset: 999_000,
            len: 1000,
            fill: Fill::Text,
        },
    ],
};

/// One source volume handed to `ovaio export`.
#[derive(Debug, Clone)]
struct Src {
    /// Entry name in the OVA.
    href: String,
    /// The volume file.
    path: PathBuf,
    /// The `--disk` format suffix (`:raw`, `:qcow2`, or empty: probed).
    suffix: &'static str,
    /// Format `qemu-img` reads the volume as.
    format: &'static str,
    /// Virtual size.
    capacity: u64,
}

impl Src {
    fn new(href: &str, path: PathBuf, suffix: &'static str, format: &'static str) -> Src {
        // qemu rounds a raw file up to whole sectors; ovaio takes its length.
        let capacity = if format == "raw" {
            file_len(&path)
        } else {
            image::info(&path, format)["virtual-size"]
                .as_u64()
                .expect("virtual-size")
        };
        Src {
            href: href.to_owned(),
            path,
            suffix,
            format,
            capacity,
        }
    }

    fn spec(&self) -> String {
        format!("{}={}{}", self.href, self.path.display(), self.suffix)
    }

    /// The href without its extension, as `import --dir` names targets.
    fn stem(&self) -> &str {
        self.href.rsplit_once('.').map_or(&self.href, |(s, _)| s)
    }
}

fn raw_src(w: &Work, href: &str, stem: &str, layout: &Layout, suffix: &'static str) -> Src {
    let path = layout.write_raw(&w.path(&format!("{stem}.raw")));
    Src::new(href, path, suffix, "raw")
}

fn qcow2_src(w: &Work, href: &str, stem: &str, layout: &Layout) -> Src {
    let raw = layout.write_raw(&w.path(&format!("{stem}.raw")));
    let path = Source::Qcow2V3.convert(&raw, &w.path(&format!("{stem}.qcow2")));
    Src::new(href, path, "", "qcow2")
}

/// Runs `qemu-io` commands on `path`.
fn qemu_io(path: &Path, format: &str, cmds: &[&str]) {
    let mut args: Vec<&OsStr> = vec![OsStr::new("-f"), OsStr::new(format)];
    for c in cmds {
        args.push(OsStr::new("-c"));
        args.push(OsStr::new(c));
    }
    args.push(path.as_os_str());
    tool("qemu-io", &args);
}

/// A qcow2 overlay (backing file named relative to it) over a qcow2 copy
/// of MAIN, with new data in a backing hole, a zeroed cluster hiding
/// backing data and a partial-cluster overwrite of backing data.
fn overlay_src(w: &Work, href: &str) -> Src {
    let dir = w.mkdir("chain");
    let raw = MAIN.write_raw(&dir.join("base.raw"));
    Source::Qcow2V3.convert(&raw, &dir.join("base.qcow2"));
    let overlay = dir.join("overlay.qcow2");
    tool(
        "qemu-img",
        &[
            OsStr::new("create"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new("qcow2"),
            OsStr::new("-b"),
            OsStr::new("base.qcow2"),
            OsStr::new("-F"),
            OsStr::new("qcow2"),
            overlay.as_os_str(),
        ],
    );
    qemu_io(
        &overlay,
        "qcow2",
        &[
            "write -P 0x5a 1M 100k",
            "write -z 0 64k",
            "write -P 0x77 5242980 1000",
        ],
    );
    Src::new(href, overlay, ":qcow2", "qcow2")
}

/// Every kind of source the export must handle.
fn all_sources(w: &Work) -> Vec<Src> {
    let empty_qcow2 = w.path("empty.qcow2");
    tool(
        "qemu-img",
        &[
            OsStr::new("create"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new("qcow2"),
            empty_qcow2.as_os_str(),
            OsStr::new("5M"),
        ],
    );
    vec![
        raw_src(w, "sparse.qcow2", "sparse", &MAIN, ":raw"),
        qcow2_src(w, "qcow.qcow2", "qcow", &ODD),
        overlay_src(w, "overlay.qcow2"),
        raw_src(w, "empty.qcow2", "empty", &EMPTY, ""),
        Src::new("emptyq.qcow2", empty_qcow2, "", "qcow2"),
        raw_src(w, "full.qcow2", "full", &FULL, ":raw"),
        raw_src(w, "odd.qcow2", "odd", &ODD, ":raw"),
        raw_src(w, "million.qcow2", "million", &BYTES_1E6, ""),
    ]
}

/// `ovaio export -q` with one `--disk` per source; the caller adds the
/// descriptor and output flags.
fn export(srcs: &[Src]) -> Cmd {
    let mut cmd = ovaio().arg("export").arg("-q");
    for s in srcs {
        cmd = cmd.arg("--disk").arg(s.spec());
    }
    cmd
}

/// One tar entry as Python's `tarfile` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    size: u64,
    /// Offset of the (first) header block.
    header: u64,
    /// Offset of the first data byte.
    data: u64,
}

fn python(script: &str, arg: &Path) -> Value {
    let out = tool(
        "python3",
        &[OsStr::new("-c"), OsStr::new(script), arg.as_os_str()],
    );
    serde_json::from_str(&out).expect("python output JSON")
}

/// The entries of `ova`, read by Python's `tarfile`.
fn entries(ova: &Path) -> Vec<Entry> {
    const SCRIPT: &str = r#"
import json, sys, tarfile
with tarfile.open(sys.argv[1], "r:") as t:
    print(json.dumps([[m.name, m.size, m.offset, m.offset_data, m.isreg()] for m in t]))
"#;
    let v = python(SCRIPT, ova);
    v.as_array()
        .expect("entry list")
        .iter()
        .map(|e| {
            assert_eq!(e[4], true, "entry {e} is not a regular file");
            Entry {
                name: e[0].as_str().expect("name").to_owned(),
                size: e[1].as_u64().expect("size"),
                header: e[2].as_u64().expect("offset"),
                data: e[3].as_u64().expect("offset_data"),
            }
        })
        .collect()
}

/// `tar -tvf ova`: `(name, size)` per entry, as GNU tar lists them.
fn gnu_listing(ova: &Path) -> Vec<(String, u64)> {
    tool(
        "tar",
        &[OsStr::new("-tvf"), ova.as_os_str(), OsStr::new("--utc")],
    )
    .lines()
    .map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 6, "unexpected tar -tv line: {l}");
        (f[5].to_owned(), f[2].parse().expect("tar size column"))
    })
    .collect()
}

/// Extracts `ova` with GNU tar into a new directory `dir` of `w`.
fn extract(w: &Work, ova: &Path, dir: &str) -> PathBuf {
    let d = w.mkdir(dir);
    tool(
        "tar",
        &[
            OsStr::new("-xf"),
            ova.as_os_str(),
            OsStr::new("-C"),
            d.as_os_str(),
        ],
    );
    d
}

/// `File` and `Disk` attributes of an OVF (namespace prefixes dropped).
fn ovf_elements(ovf: &Path) -> (Vec<Value>, Vec<Value>) {
    const SCRIPT: &str = r#"
import json, sys, xml.etree.ElementTree as ET
N = "{http://schemas.dmtf.org/ovf/envelope/1}"
root = ET.parse(sys.argv[1]).getroot()
def attrs(e):
    return {k.replace(N, ""): v for k, v in e.attrib.items()}
print(json.dumps([[attrs(e) for e in root.iter(N + "File")],
                  [attrs(e) for e in root.iter(N + "Disk")]]))
"#;
    let v = python(SCRIPT, ovf);
    (
        v[0].as_array().expect("files").clone(),
        v[1].as_array().expect("disks").clone(),
    )
}

fn attr_u64(v: &Value, name: &str) -> u64 {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("attribute {name} missing in {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("attribute {name} of {v}: {e}"))
}

/// The `Disk` element whose file is `href`.
fn disk_of<'a>(files: &[Value], disks: &'a [Value], href: &str) -> &'a Value {
    let file = files
        .iter()
        .find(|f| f["href"] == href)
        .unwrap_or_else(|| panic!("no File for {href}"));
    disks
        .iter()
        .find(|d| d["fileRef"] == file["id"])
        .unwrap_or_else(|| panic!("no Disk for {href}"))
}

/// `(name, hex)` per line of a `SHA256(name)= hex` manifest.
fn manifest_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|l| {
            let rest = l
                .strip_prefix("SHA256(")
                .unwrap_or_else(|| panic!("bad manifest line {l:?}"));
            let (name, hex) = rest
                .split_once(")= ")
                .unwrap_or_else(|| panic!("bad manifest line {l:?}"));
            (name.to_owned(), hex.to_owned())
        })
        .collect()
}

fn sha256sum(path: &Path) -> String {
    tool("sha256sum", &[path.as_os_str()])
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_owned()
}

/// Panics unless `qemu-img compare` finds the two images equal.
fn assert_equal_images(a: &Path, fa: &str, b: &Path, fb: &str) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", fa, "-F", fb])
        .arg(a)
        .arg(b)
        .output()
        .expect("run qemu-img compare");
    assert!(
        out.status.success(),
        "qemu-img compare {} ({fa}) {} ({fb}): {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bytes of the clusters of size `cluster` that hold guest data in `src`,
/// per `qemu-img map` (backing data counts, zero clusters do not).
fn populated_by_map(src: &Src, cluster: u64) -> u64 {
    let text = tool(
        "qemu-img",
        &[
            OsStr::new("map"),
            OsStr::new("--output=json"),
            OsStr::new("-f"),
            OsStr::new(src.format),
            src.path.as_os_str(),
        ],
    );
    let map: Value = serde_json::from_str(&text).expect("qemu-img map JSON");
    let mut clusters = std::collections::BTreeSet::new();
    for ext in map.as_array().expect("map list") {
        if ext["data"] != true {
            continue;
        }
        let start = ext["start"].as_u64().expect("start");
        let end = start + ext["length"].as_u64().expect("length");
        clusters.extend(start / cluster..end.div_ceil(cluster));
    }
    clusters.len() as u64 * cluster
}

/// Checks an extracted disk: a clean standalone qcow2 of the source's
/// virtual size (rounded up to a sector, as `qemu-img convert` records
/// it) with the source's content.
fn assert_exported_disk(disk: &Path, src: &Src) {
    image::assert_qcow2_clean(disk);
    let info = image::info(disk, "qcow2");
    assert_eq!(info["format"], "qcow2", "{}", src.href);
    assert_eq!(
        info["virtual-size"].as_u64(),
        Some(src.capacity.next_multiple_of(512)),
        "{}: virtual size",
        src.href
    );
    assert!(
        info.get("backing-filename").is_none() && info.get("full-backing-filename").is_none(),
        "{}: exported image has a backing file: {info}",
        src.href
    );
    assert_equal_images(&src.path, src.format, disk, "qcow2");
}

#[test]
fn gnu_tar_reads_the_archive_and_the_ovf_and_manifest_agree() {
    let w = Work::new();
    // Not in alphabetical order: the archive keeps the command-line order.
    let srcs = vec![
        raw_src(&w, "zeta.qcow2", "zeta", &MAIN, ""),
        qcow2_src(&w, "alpha.qcow2", "alpha", &ODD),
        raw_src(&w, "mid.qcow2", "mid", &EMPTY, ":raw"),
    ];
    let out_dir = w.mkdir("out");
    let out = out_dir.join("appliance.ova");
    let run = export(&srcs)
        .arg("--name")
        .arg("appliance")
        .arg("--json")
        .arg("-o")
        .arg(&out)
        .run();
    run.assert_success();
    let summary = run.json();
    assert_eq!(summary["size"].as_u64(), Some(file_len(&out)));
    assert_eq!(file_len(&out) % 512, 0, "OVA length not whole tar blocks");
    let left: Vec<_> = fs::read_dir(&out_dir).expect("read out dir").collect();
    assert_eq!(left.len(), 1, "only the OVA is left: {left:?}");

    let listing = gnu_listing(&out);
    let names: Vec<&str> = listing.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "appliance.ovf",
            "zeta.qcow2",
            "alpha.qcow2",
            "mid.qcow2",
            "appliance.mf"
        ]
    );

    let x = extract(&w, &out, "x");
    let (files, disks) = ovf_elements(&x.join("appliance.ovf"));
    let hrefs: Vec<&str> = files.iter().map(|f| f["href"].as_str().unwrap()).collect();
    assert_eq!(hrefs, ["zeta.qcow2", "alpha.qcow2", "mid.qcow2"]);
    for (i, src) in srcs.iter().enumerate() {
        let size = attr_u64(&files[i], "size");
        assert_eq!(size, listing[i + 1].1, "{}: ovf:size vs tar size", src.href);
        assert_eq!(size, file_len(&x.join(&src.href)));
        assert_eq!(
            summary["disks"][i]["size"].as_u64(),
            Some(size),
            "{}",
            src.href
        );
        let disk = disk_of(&files, &disks, &src.href);
        assert_eq!(disk["format"], QCOW2_URI, "{}", src.href);
        let units = disk["capacityAllocationUnits"].as_str().unwrap_or("byte");
        assert_eq!(units, "byte", "{}", src.href);
        assert_eq!(attr_u64(disk, "capacity"), src.capacity, "{}", src.href);
        assert!(attr_u64(disk, "populatedSize") <= src.capacity.next_multiple_of(1 << 16));
    }

    let mf = fs::read_to_string(x.join("appliance.mf")).expect("read manifest");
    let lines = manifest_lines(&mf);
    let listed: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        listed,
        ["appliance.ovf", "zeta.qcow2", "alpha.qcow2", "mid.qcow2"]
    );
    for (name, hex) in &lines {
        assert_eq!(*hex, sha256sum(&x.join(name)), "manifest digest of {name}");
    }
}

#[test]
fn every_disk_is_a_clean_qcow2_equal_to_its_source() {
    let w = Work::new();
    let srcs = all_sources(&w);
    let out = w.path("all.ova");
    let run = export(&srcs)
        .arg("--name")
        .arg("vm")
        .arg("--json")
        .arg("-o")
        .arg(&out)
        .run();
    run.assert_success();
    let summary = run.json();
    let x = extract(&w, &out, "x");
    let (files, disks) = ovf_elements(&x.join("vm.ovf"));
    for (i, src) in srcs.iter().enumerate() {
        let disk = x.join(&src.href);
        assert_exported_disk(&disk, src);
        let cluster = image::info(&disk, "qcow2")["cluster-size"]
            .as_u64()
            .expect("cluster-size");
        let populated = attr_u64(disk_of(&files, &disks, &src.href), "populatedSize");
        assert_eq!(
            populated,
            populated_by_map(src, cluster),
            "{}: populatedSize",
            src.href
        );
        assert_eq!(
            summary["disks"][i]["populated_size"].as_u64(),
            Some(populated)
        );
        assert_eq!(summary["disks"][i]["capacity"].as_u64(), Some(src.capacity));
        assert_eq!(summary["disks"][i]["source_format"], src.format);
    }
    // The chain was collapsed, so the zeroed overlay cluster hides the
    // base's data (compare above), and the empty disks carry no data.
    for href in ["empty.qcow2", "emptyq.qcow2"] {
        let d = disk_of(&files, &disks, href);
        assert_eq!(attr_u64(d, "populatedSize"), 0, "{href}");
    }
}

#[test]
fn export_then_import_restores_the_sources() {
    let w = Work::new();
    let srcs = all_sources(&w);
    let out = w.path("rt.ova");
    export(&srcs)
        .arg("--name")
        .arg("vm")
        .arg("-o")
        .arg(&out)
        .run()
        .assert_success();
    for target in ["raw", "qcow2"] {
        let dir = w.mkdir(&format!("import-{target}"));
        ovaio()
            .arg("import")
            .arg(&out)
            .arg("--dir")
            .arg(&dir)
            .arg("--format")
            .arg(target)
            .arg("-q")
            .run()
            .assert_success();
        for src in &srcs {
            let t = dir.join(format!("{}.{target}", src.stem()));
            assert!(t.is_file(), "{} missing", t.display());
            if target == "qcow2" {
                image::assert_qcow2_clean(&t);
            }
            assert_equal_images(&src.path, src.format, &t, target);
        }
    }
}

#[test]
fn given_ovf_is_completed_and_otherwise_kept() {
    let w = Work::new();
    let srcs = vec![
        raw_src(&w, "testvm-disk1.qcow2", "d1", &MAIN, ":raw"),
        qcow2_src(&w, "testvm-disk2.qcow2", "d2", &ODD),
    ];
    // What ovftool wrote for VMDK disks: stale sizes and format.
    let stale = |i: usize, src: &Src, mib: bool| OvfDisk {
        file_id: format!("file{i}"),
        href: src.href.clone(),
        size: 12_345_678,
        gzip: false,
        disk_id: format!("vmdisk{i}"),
        capacity: src.capacity,
        mib_units: mib,
        format_uri: Some(VMDK_URI.to_owned()),
        populated_size: Some(7_777_777),
    };
    let before = vec![stale(1, &srcs[0], true), stale(2, &srcs[1], false)];
    let descriptor = w.path("testvm.ovf");
    fs::write(&descriptor, ova::ovf_xml(&before)).expect("write ovf");
    let out = w.path("testvm.ova");
    let run = export(&srcs)
        .arg("--ovf")
        .arg(&descriptor)
        .arg("--json")
        .arg("-o")
        .arg(&out)
        .run();
    run.assert_success();
    let summary = run.json();
    let listing = gnu_listing(&out);
    let names: Vec<&str> = listing.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "testvm.ovf",
            "testvm-disk1.qcow2",
            "testvm-disk2.qcow2",
            "testvm.mf"
        ]
    );

    let x = extract(&w, &out, "x");
    let text = fs::read_to_string(x.join("testvm.ovf")).expect("read ovf");
    for kept in [
        "<!-- Generated for ovaio integration tests -->",
        "<Name>testvm</Name>",
        r#"vmw:osType="otherLinux64Guest""#,
        r#"<Network ovf:name="VM Network">"#,
        "<rasd:ElementName>512MB of memory</rasd:ElementName>",
        "<rasd:HostResource>ovf:/disk/vmdisk2</rasd:HostResource>",
    ] {
        assert!(text.contains(kept), "output OVF lost {kept:?}:\n{text}");
    }
    assert!(!text.contains("12345678"), "stale ovf:size kept:\n{text}");
    assert!(
        !text.contains("7777777"),
        "stale populatedSize kept:\n{text}"
    );
    assert!(!text.contains(VMDK_URI), "VMDK format URI kept:\n{text}");

    let (files, disks) = ovf_elements(&x.join("testvm.ovf"));
    for (i, src) in srcs.iter().enumerate() {
        assert_eq!(
            attr_u64(&files[i], "size"),
            listing[i + 1].1,
            "{}",
            src.href
        );
        let d = disk_of(&files, &disks, &src.href);
        assert_eq!(d["format"], QCOW2_URI);
        assert_eq!(
            Some(attr_u64(d, "populatedSize")),
            summary["disks"][i]["populated_size"].as_u64()
        );
        assert_exported_disk(&x.join(&src.href), src);
    }
    // Capacities are the descriptor's own, units included.
    let d1 = disk_of(&files, &disks, "testvm-disk1.qcow2");
    assert_eq!(attr_u64(d1, "capacity"), MAIN.size >> 20);
    assert_eq!(d1["capacityAllocationUnits"], "byte * 2^20");

    // Apart from the completed values the descriptor is unchanged.
    let after: Vec<OvfDisk> = before
        .iter()
        .enumerate()
        .map(|(i, d)| OvfDisk {
            size: listing[i + 1].1,
            format_uri: Some(QCOW2_URI.to_owned()),
            populated_size: summary["disks"][i]["populated_size"].as_u64(),
            ..d.clone()
        })
        .collect();
    assert_eq!(text, ova::ovf_xml(&after));

    let mf = fs::read_to_string(x.join("testvm.mf")).expect("read manifest");
    for (name, hex) in manifest_lines(&mf) {
        assert_eq!(hex, sha256sum(&x.join(&name)), "manifest digest of {name}");
    }
}

#[test]
fn align_puts_every_disk_on_a_4k_boundary() {
    let w = Work::new();
    let srcs = vec![
        raw_src(&w, "a.qcow2", "a", &BYTES_1E6, ""),
        qcow2_src(&w, "b.qcow2", "b", &ODD),
        raw_src(&w, "c.qcow2", "c", &FULL, ":raw"),
    ];
    let out = w.path("aligned.ova");
    export(&srcs)
        .arg("--name")
        .arg("a-rather-long-virtual-machine-name")
        .arg("--align")
        .arg("-o")
        .arg(&out)
        .run()
        .assert_success();
    let list = entries(&out);
    let disk_entries: Vec<&Entry> = list.iter().filter(|e| e.name.ends_with(".qcow2")).collect();
    assert_eq!(disk_entries.len(), 3, "{list:?}");
    for e in &disk_entries {
        assert_eq!(e.data % 4096, 0, "{} data at {}: {list:?}", e.name, e.data);
    }
    let names: Vec<&str> = list
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| *n != "pad")
        .collect();
    assert_eq!(
        names,
        [
            "a-rather-long-virtual-machine-name.ovf",
            "a.qcow2",
            "b.qcow2",
            "c.qcow2",
            "a-rather-long-virtual-machine-name.mf"
        ]
    );
    assert!(
        list.iter().any(|e| e.name == "pad"),
        "no pad entry: {list:?}"
    );
    // GNU tar agrees on the block numbers.
    let blocks = tool(
        "tar",
        &[OsStr::new("-tvR"), OsStr::new("-f"), out.as_os_str()],
    );
    for e in &disk_entries {
        let line = blocks
            .lines()
            .find(|l| l.ends_with(&format!(" {}", e.name)))
            .unwrap_or_else(|| panic!("{} not in tar -tvR:\n{blocks}", e.name));
        let block: u64 = line
            .strip_prefix("block ")
            .and_then(|l| l.split(':').next())
            .and_then(|b| b.parse().ok())
            .unwrap_or_else(|| panic!("bad tar -tvR line {line}"));
        assert_eq!(block * 512 + 512, e.data, "{}", e.name);
    }
    let x = extract(&w, &out, "x");
    let mf = fs::read_to_string(x.join("a-rather-long-virtual-machine-name.mf")).expect("mf");
    assert!(!mf.contains("(pad)"), "manifest lists pad:\n{mf}");

    let dir = w.mkdir("imported");
    ovaio()
        .arg("import")
        .arg(&out)
        .arg("--dir")
        .arg(&dir)
        .arg("-q")
        .run()
        .assert_success();
    for src in &srcs {
        assert_equal_images(
            &src.path,
            src.format,
            &dir.join(format!("{}.raw", src.stem())),
            "raw",
        );
    }
}

#[test]
fn stdout_export_equals_file_export() {
    let w = Work::new();
    let srcs = vec![
        raw_src(&w, "one.qcow2", "one", &MAIN, ":raw"),
        qcow2_src(&w, "two.qcow2", "two", &ODD),
    ];
    let file_out = w.path("file.ova");
    let file_run = export(&srcs)
        .arg("--name")
        .arg("vm")
        .arg("--align")
        .arg("--json")
        .arg("-o")
        .arg(&file_out)
        .run();
    file_run.assert_success();

    let stream_out = w.path("stream.ova");
    let out = Command::new(env!("CARGO_BIN_EXE_ovaio"))
        .arg("export")
        .arg("-q")
        .args(srcs.iter().flat_map(|s| ["--disk".to_owned(), s.spec()]))
        .args(["--name", "vm", "--align", "--json", "-o", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(File::create(&stream_out).expect("create")))
        .stderr(Stdio::piped())
        .output()
        .expect("run ovaio");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    // The summary went to stderr, the archive alone to stdout.
    let summary: Value = serde_json::from_str(stderr.trim())
        .unwrap_or_else(|e| panic!("stderr is not one JSON summary ({e}): {stderr}"));
    assert_eq!(summary, file_run.json());
    assert_eq!(summary["size"].as_u64(), Some(file_len(&stream_out)));

    let a = fs::read(&file_out).expect("read file export");
    let b = fs::read(&stream_out).expect("read stream export");
    assert_eq!(a.len(), b.len(), "lengths differ");
    let list = entries(&file_out);
    assert_eq!(list, entries(&stream_out));
    // Only the headers' mtime and checksum fields may differ.
    let in_mtime_or_checksum = |i: usize| {
        list.iter()
            .any(|e| (e.header + 136..e.header + 156).contains(&(i as u64)))
    };
    let differing: Vec<usize> = (0..a.len())
        .filter(|&i| a[i] != b[i] && !in_mtime_or_checksum(i))
        .collect();
    assert!(
        differing.is_empty(),
        "stream and file exports differ at {} offsets, first {:?}",
        differing.len(),
        &differing[..differing.len().min(10)]
    );
    let xa = extract(&w, &file_out, "xa");
    let xb = extract(&w, &stream_out, "xb");
    for e in list.iter().filter(|e| e.name != "pad") {
        assert_eq!(
            sha256sum(&xa.join(&e.name)),
            sha256sum(&xb.join(&e.name)),
            "{}",
            e.name
        );
    }
}

/// Runs a failing export into `out_dir/o.ova` and checks the error line
/// and that nothing is left in `out_dir`.
fn assert_export_fails(cmd: Cmd, out_dir: &Path, mentions: &[&str]) -> Outcome {
    let run = cmd.arg("-o").arg(out_dir.join("o.ova")).run();
    run.assert_error(mentions);
    assert_dir_empty(out_dir);
    run
}

#[test]
fn missing_source_fails_and_leaves_nothing() {
    let w = Work::new();
    let good = raw_src(&w, "good.qcow2", "good", &ODD, ":raw");
    let missing = Src {
        href: "gone.qcow2".into(),
        path: w.path("no-such-volume.raw"),
        suffix: "",
        format: "raw",
        capacity: 0,
    };
    let out = w.mkdir("out");
    assert_export_fails(
        export(&[good, missing]).arg("--name").arg("vm"),
        &out,
        &["no-such-volume.raw", "No such file"],
    );
}

#[test]
fn backing_file_outside_root_is_refused() {
    let w = Work::new();
    let outside = w.mkdir("outside");
    let inside = w.mkdir("inside");
    let base = outside.join("secret-base.qcow2");
    let overlay = inside.join("overlay.qcow2");
    tool(
        "qemu-img",
        &[
            OsStr::new("create"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new("qcow2"),
            base.as_os_str(),
            OsStr::new("1M"),
        ],
    );
    qemu_io(&base, "qcow2", &["write -P 0x66 0 64k"]);
    tool(
        "qemu-img",
        &[
            OsStr::new("create"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new("qcow2"),
            OsStr::new("-b"),
            base.as_os_str(),
            OsStr::new("-F"),
            OsStr::new("qcow2"),
            overlay.as_os_str(),
        ],
    );
    let src = Src::new("d.qcow2", overlay, ":qcow2", "qcow2");
    let out = w.mkdir("out");
    assert_export_fails(
        export(std::slice::from_ref(&src))
            .arg("--name")
            .arg("vm")
            .arg("--root")
            .arg(&inside),
        &out,
        &["secret-base.qcow2", "outside"],
    );
    // The same chain is fine when its root is allowed.
    export(&[src])
        .arg("--name")
        .arg("vm")
        .arg("--root")
        .arg(&inside)
        .arg("--root")
        .arg(&outside)
        .arg("-o")
        .arg(out.join("ok.ova"))
        .run()
        .assert_success();
}

#[test]
fn backing_loop_is_refused() {
    let w = Work::new();
    let a = w.path("A.qcow2");
    let b = w.path("B.qcow2");
    let create = |args: &[&OsStr]| {
        let mut all: Vec<&OsStr> = vec![
            OsStr::new("create"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new("qcow2"),
        ];
        all.extend_from_slice(args);
        tool("qemu-img", &all);
    };
    create(&[b.as_os_str(), OsStr::new("1M")]);
    create(&[
        OsStr::new("-b"),
        OsStr::new("B.qcow2"),
        OsStr::new("-F"),
        OsStr::new("qcow2"),
        a.as_os_str(),
    ]);
    tool(
        "qemu-img",
        &[
            OsStr::new("rebase"),
            OsStr::new("-u"),
            OsStr::new("-b"),
            OsStr::new("A.qcow2"),
            OsStr::new("-F"),
            OsStr::new("qcow2"),
            b.as_os_str(),
        ],
    );
    let out = w.mkdir("out");
    let src = Src {
        href: "d.qcow2".into(),
        path: a,
        suffix: "",
        format: "qcow2",
        capacity: MIB,
    };
    assert_export_fails(
        export(&[src]).arg("--name").arg("vm"),
        &out,
        &["loop", "A.qcow2"],
    );
}

#[test]
fn ovf_not_referencing_the_disk_is_refused() {
    let w = Work::new();
    let src = raw_src(&w, "mine.qcow2", "mine", &ODD, ":raw");
    let descriptor = w.path("other.ovf");
    let other = OvfDisk {
        file_id: "file1".into(),
        href: "theirs.vmdk".into(),
        size: 1,
        gzip: false,
        disk_id: "vmdisk1".into(),
        capacity: ODD.size,
        mib_units: false,
        format_uri: Some(VMDK_URI.to_owned()),
        populated_size: None,
    };
    fs::write(&descriptor, ova::ovf_xml(&[other])).expect("write ovf");
    let out = w.mkdir("out");
    assert_export_fails(
        export(&[src]).arg("--ovf").arg(&descriptor),
        &out,
        &["mine.qcow2"],
    );
}

#[test]
fn missing_output_directory_is_refused() {
    let w = Work::new();
    let src = raw_src(&w, "d.qcow2", "d", &ODD, ":raw");
    let missing = w.path("no-such-dir");
    let run = export(&[src])
        .arg("--name")
        .arg("vm")
        .arg("-o")
        .arg(missing.join("o.ova"))
        .run();
    run.assert_error(&["no-such-dir"]);
    assert!(!missing.exists(), "the output directory was created");
}

#[test]
fn full_stdout_fails_with_enospc() {
    let w = Work::new();
    let src = raw_src(&w, "d.qcow2", "d", &MAIN, ":raw");
    let full = File::options()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full");
    let out = Command::new(env!("CARGO_BIN_EXE_ovaio"))
        .args([
            "export",
            "-q",
            "--name",
            "vm",
            "--disk",
            &src.spec(),
            "-o",
            "-",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(full))
        .stderr(Stdio::piped())
        .output()
        .expect("run ovaio");
    let run = Outcome {
        args: vec![],
        status: out.status,
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    run.assert_error(&["No space left"]);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`, or says why it cannot.
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_owned()))
        } else {
            Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_filesystem_fails_and_leaves_nothing() {
    let w = Work::new();
    // 4 MiB of incompressible data cannot fit in 2 MiB.
    const BIG: Layout = Layout {
        size: 4 * MIB,
        runs: &[Run {
            offset: 0,
            len: 4 * MIB,
            fill: Fill::Random(51),
        }],
    };
    let src = raw_src(&w, "d.qcow2", "d", &BIG, ":raw");
    let mnt = w.mkdir("small");
    let fs = match Tmpfs::mount(&mnt, "2M") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipping the tmpfs case: {why}");
            return;
        }
    };
    let run = assert_export_fails(
        export(&[src]).arg("--name").arg("vm"),
        &mnt,
        &["No space left"],
    );
    assert!(run.stderr.contains("o.ova"), "{}", run.stderr);
    drop(fs);
}

#[test]
fn sigterm_mid_export_leaves_no_output() {
    let w = Work::new();
    let big = w.path("big.raw");
    File::create(&big)
        .expect("create")
        .set_len(2 << 30)
        .expect("size");
    qemu_io(
        &big,
        "raw",
        &["write -P 0x33 0 100M", "write -P 0x44 1G 100M"],
    );
    let out_dir = w.mkdir("out");
    let out = out_dir.join("big.ova");
    let partial = out_dir.join("big.ova.partial");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ovaio"))
        .arg("export")
        .arg("-q")
        .args(["--name", "vm", "--disk"])
        .arg(format!("big.qcow2={}:raw", big.display()))
        .arg("-o")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ovaio");
    // Streaming has begun once the partial holds bytes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::metadata(&partial).map_or(0, |m| m.len()) == 0 {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("export ended ({status}) before it could be interrupted");
        }
        assert!(Instant::now() < deadline, "no data reached the partial");
        std::thread::yield_now();
    }
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
    assert_absent(&out);
    assert_dir_empty(&out_dir);
}

/// A size that is not a multiple of 512 survives export → import to raw
/// exactly: qcow2 counts whole sectors, the OVF keeps the byte count.
#[test]
fn round_trip_keeps_a_byte_exact_size() {
    let w = Work::new();
    let src = w.path("odd.raw");
    let f = File::create(&src).expect("create");
    f.set_len(1_000_000).expect("size");
    drop(f);
    qemu_io(&src, "raw", &["write -P 0x77 999000 1000"]);
    let ova = w.path("o.ova");
    ovaio()
        .arg("export")
        .arg("--name")
        .arg("vm")
        .arg("--disk")
        .arg(format!("odd.qcow2={}", src.display()))
        .arg("-o")
        .arg(&ova)
        .run()
        .assert_success();
    let out = w.mkdir("out");
    ovaio()
        .arg("import")
        .arg(&ova)
        .arg("--dir")
        .arg(&out)
        .run()
        .assert_success();
    let got = fs::read(out.join("odd.raw")).expect("read target");
    assert_eq!(got.len(), 1_000_000);
    assert_eq!(got, fs::read(&src).expect("read source"));
}

/// Checks an extracted streamOptimized disk: `qemu-img check` clean, a
/// streamOptimized VMDK of the source's virtual size (rounded up to a
/// sector) with the source's content.
fn assert_exported_vmdk(disk: &Path, src: &Src) {
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
    let info = image::info(disk, "vmdk");
    assert_eq!(info["format"], "vmdk", "{}", src.href);
    assert_eq!(
        info["format-specific"]["data"]["create-type"], "streamOptimized",
        "{}: {info}",
        src.href
    );
    assert_eq!(
        info["virtual-size"].as_u64(),
        Some(src.capacity.next_multiple_of(512)),
        "{}: virtual size",
        src.href
    );
    assert_equal_images(&src.path, src.format, disk, "vmdk");
}

/// Every kind of source exported as streamOptimized VMDK, with stored and
/// with deflated grains: each disk is a clean VMDK equal to its source,
/// the OVF names VMware's format URI with exact sizes, `inspect` and
/// `import` (to raw and qcow2) read the package back.
#[test]
fn vmdk_disks_are_clean_stream_optimized_images_equal_to_their_sources() {
    let w = Work::new();
    let srcs: Vec<Src> = all_sources(&w)
        .into_iter()
        .map(|mut s| {
            s.href = format!("{}.vmdk", s.stem());
            s
        })
        .collect();
    let mut sizes = Vec::new();
    for compress in [false, true] {
        let tag = if compress { "deflate" } else { "stored" };
        let out = w.path(&format!("{tag}.ova"));
        let mut cmd = export(&srcs)
            .arg("--name")
            .arg("vm")
            .arg("--disk-format")
            .arg("vmdk")
            .arg("--json")
            .arg("-o")
            .arg(&out);
        if compress {
            cmd = cmd.arg("--compress");
        }
        let run = cmd.run();
        run.assert_success();
        let summary = run.json();
        assert_eq!(summary["size"].as_u64(), Some(file_len(&out)));
        let listing = gnu_listing(&out);
        let x = extract(&w, &out, tag);
        let (files, disks) = ovf_elements(&x.join("vm.ovf"));
        for (i, src) in srcs.iter().enumerate() {
            let disk = x.join(&src.href);
            assert_exported_vmdk(&disk, src);
            assert_eq!(
                attr_u64(&files[i], "size"),
                listing[i + 1].1,
                "{}",
                src.href
            );
            assert_eq!(attr_u64(&files[i], "size"), file_len(&disk), "{}", src.href);
            let d = disk_of(&files, &disks, &src.href);
            assert_eq!(d["format"], VMDK_URI, "{}", src.href);
            assert_eq!(
                attr_u64(d, "populatedSize"),
                populated_by_map(src, 64 << 10),
                "{}: populatedSize",
                src.href
            );
            assert_eq!(summary["disks"][i]["format"], "vmdk");
        }
        sizes.push(summary["size"].as_u64().expect("size"));
        let inspected = ovaio().arg("inspect").arg(&out).arg("--json").run();
        inspected.assert_success();
        let text = inspected.stdout.clone();
        assert!(!text.contains("mismatch"), "{text}");
        for target in ["raw", "qcow2"] {
            let dir = w.mkdir(&format!("import-{tag}-{target}"));
            ovaio()
                .arg("import")
                .arg(&out)
                .arg("--dir")
                .arg(&dir)
                .arg("--format")
                .arg(target)
                .arg("-q")
                .run()
                .assert_success();
            for src in &srcs {
                let t = dir.join(format!("{}.{target}", src.stem()));
                assert_equal_images(&src.path, src.format, &t, target);
            }
        }
    }
    assert!(
        sizes[1] < sizes[0],
        "deflated {} vs stored {}",
        sizes[1],
        sizes[0]
    );
}

/// A given descriptor completed for VMDK disks names VMware's format URI.
#[test]
fn given_ovf_gets_the_vmdk_format_uri() {
    let w = Work::new();
    let src = raw_src(&w, "d1.vmdk", "d1", &ODD, ":raw");
    let before = vec![OvfDisk {
        file_id: "file1".into(),
        href: src.href.clone(),
        size: 1,
        gzip: false,
        disk_id: "vmdisk1".into(),
        capacity: src.capacity,
        mib_units: false,
        format_uri: Some(QCOW2_URI.to_owned()),
        populated_size: None,
    }];
    let descriptor = w.path("given.ovf");
    fs::write(&descriptor, ova::ovf_xml(&before)).expect("write ovf");
    let out = w.path("given.ova");
    export(std::slice::from_ref(&src))
        .arg("--ovf")
        .arg(&descriptor)
        .arg("--disk-format")
        .arg("vmdk")
        .arg("-o")
        .arg(&out)
        .run()
        .assert_success();
    let x = extract(&w, &out, "x");
    let (files, disks) = ovf_elements(&x.join("given.ovf"));
    assert_eq!(disk_of(&files, &disks, "d1.vmdk")["format"], VMDK_URI);
    assert_exported_vmdk(&x.join("d1.vmdk"), &src);
}

#[test]
fn bad_disk_format_flags_are_refused() {
    let w = Work::new();
    let src = raw_src(&w, "d.vmdk", "d", &ODD, "");
    let out = w.path("x.ova");
    let o = export(std::slice::from_ref(&src))
        .arg("--name")
        .arg("vm")
        .arg("--disk-format")
        .arg("vhd")
        .arg("-o")
        .arg(&out)
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", o.stderr);
    assert!(
        o.stderr.contains("--disk-format") && o.stderr.contains("qcow2 or vmdk"),
        "{}",
        o.stderr
    );
    export(std::slice::from_ref(&src))
        .arg("--name")
        .arg("vm")
        .arg("--compress")
        .arg("-o")
        .arg(&out)
        .run()
        .assert_error(&["--compress", "--disk-format vmdk"]);
    assert_absent(&out);
}
