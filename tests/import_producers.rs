//! OVA packages laid out the way each real producer writes them, imported
//! into raw and into qcow2 targets and judged by `qemu-img compare` against
//! the source image (and `qemu-img check` for qcow2 targets).
//!
//! Each producer has one descriptor function, whose comment names the
//! repository and file its form was taken from: the namespaces and
//! prefixes, the attribute forms, the `ovf:format` URIs and
//! `ovf:capacityAllocationUnits`, the VirtualHardwareSection, and the
//! manifest's line form. The archives are written the way that producer
//! writes them too: Python's tarfile with the producer's tar format,
//! owner and modes (ovftool, VirtualBox, COT), GNU tar with the producer's
//! flags (open-vmdk's ova-compose, virt-v2v's tests), oVirt's
//! `pack_ova.py` header by header, Python's zipfile, `gzip`. Disks come
//! from `qemu-img` (streamOptimized and monolithicSparse VMDKs, qcow2) and
//! `qemu-io` (oVirt's volumes); every entry's order is checked against GNU
//! tar's listing. A missing `qemu-img`, `qemu-io`, `tar`, `gzip` or
//! `python3` fails these tests.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use support::image::{self, Fill, Layout, MAIN, ODD, Run, SMALL, Source, Target};
use support::{Work, file_len, ovaio, tool};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// `ovf:format` of a streamOptimized VMDK, as VMware and VirtualBox write it.
const STREAM_URI: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";
/// `ovf:format` of OVF 0.9's sparse VMDK (and of oVirt's raw volumes).
const SPARSE_09_URI: &str = "http://www.vmware.com/specifications/vmdk.html#sparse";
/// oVirt's `ovf:format` for a COW (qcow2) volume.
const QCOW_URI: &str = "http://www.gnome.org/~markmc/qcow-image-format.html";
/// Both targets, in the order every test imports them.
const TARGETS: [Target; 2] = [Target::Raw, Target::Qcow2];

// ---------------------------------------------------------------------------
// Source disks.

/// A source disk: the raw image a target must equal, the file its tar
/// entry carries, and its virtual size.
#[derive(Debug)]
struct Disk {
    raw: PathBuf,
    file: PathBuf,
    capacity: u64,
}

impl Disk {
    /// Bytes of the entry file.
    fn size(&self) -> u64 {
        file_len(&self.file)
    }

    /// Bytes the raw image allocates (an exporter's `populatedSize`).
    fn populated(&self) -> u64 {
        fs::metadata(&self.raw).expect("stat raw").blocks() * 512
    }
}

/// `layout` written as a sparse raw file and converted by `qemu-img` (or
/// gzip, or copied) into `source`.
fn converted(w: &Work, stem: &str, layout: &Layout, source: Source) -> Disk {
    let p = support::ova::prepare(w.root(), stem, layout, source);
    Disk {
        raw: p.raw,
        file: p.file,
        capacity: p.capacity,
    }
}

/// `layout` converted by plain `qemu-img convert -O vmdk`: a
/// monolithicSparse VMDK, qemu-img's default subformat.
fn monolithic_sparse(w: &Work, stem: &str, layout: &Layout) -> Disk {
    let raw = layout.write_raw(&w.path(&format!("{stem}.raw")));
    let file = w.path(&format!("{stem}.vmdk"));
    tool(
        "qemu-img",
        &[
            OsStr::new("convert"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new("raw"),
            OsStr::new("-O"),
            OsStr::new("vmdk"),
            raw.as_os_str(),
            file.as_os_str(),
        ],
    );
    let info = image::info(&file, "vmdk");
    assert_eq!(
        info["format-specific"]["data"]["create-type"], "monolithicSparse",
        "{info}"
    );
    Disk {
        raw,
        file,
        capacity: layout.size,
    }
}

/// A volume made the way a hypervisor's storage holds one: `qemu-img
/// create -f FORMAT` of `size` bytes, then each `(pattern, offset, len)`
/// written by `qemu-io -c 'write -P 0xNN OFF LEN'`, everything else a hole.
/// The raw reference is `qemu-img convert -O raw` of the volume.
fn volume(w: &Work, stem: &str, format: &str, size: u64, writes: &[(u8, u64, u64)]) -> Disk {
    let file = w.path(&format!("{stem}.{format}"));
    tool(
        "qemu-img",
        &[
            OsStr::new("create"),
            OsStr::new("-q"),
            OsStr::new("-f"),
            OsStr::new(format),
            file.as_os_str(),
            OsStr::new(&size.to_string()),
        ],
    );
    let mut args: Vec<String> = vec!["-f".into(), format.into()];
    for (pattern, offset, len) in writes {
        args.push("-c".into());
        args.push(format!("write -P {pattern:#04x} {offset} {len}"));
    }
    args.push(file.display().to_string());
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    tool("qemu-io", &args);
    let raw = if format == "raw" {
        file.clone()
    } else {
        let raw = w.path(&format!("{stem}.ref.raw"));
        tool(
            "qemu-img",
            &[
                OsStr::new("convert"),
                OsStr::new("-q"),
                OsStr::new("-f"),
                OsStr::new(format),
                OsStr::new("-O"),
                OsStr::new("raw"),
                file.as_os_str(),
                raw.as_os_str(),
            ],
        );
        raw
    };
    Disk {
        raw,
        file,
        capacity: size,
    }
}

/// A 5 MiB image whose data runs straddle 64 KiB grains and end at the
/// last byte, with holes between (for the second disk of a package).
const SECOND: Layout = Layout {
    size: 5 * MIB,
    runs: &[
        Run {
            offset: 4096,
            len: 100_000,
            fill: Fill::Text,
        },
        Run {
            offset: 2 * MIB - 700,
            len: 140_000,
            fill: Fill::Random(41),
        },
        Run {
            offset: 5 * MIB - 9000,
            len: 9000,
            fill: Fill::Random(42),
        },
    ],
};

// ---------------------------------------------------------------------------
// Manifests.

/// A manifest digest algorithm, spelt as manifests spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Sha1,
    Sha256,
    Sha512,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Sha1 => "SHA1",
            Alg::Sha256 => "SHA256",
            Alg::Sha512 => "SHA512",
        }
    }

    fn hex(self, file: &Path) -> String {
        let data = fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        match self {
            Alg::Sha1 => hex::encode(Sha1::digest(&data)),
            Alg::Sha256 => hex::encode(Sha256::digest(&data)),
            Alg::Sha512 => hex::encode(Sha512::digest(&data)),
        }
    }
}

/// The line forms producers write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineForm {
    /// `SHA256(name)= hex`: ovftool, ova-compose, COT, virt-v2v's tests.
    Ovftool,
    /// `SHA1 (name) = hex`: VirtualBox (IPRT's `RTManifestWriteStandard`,
    /// `"%s (%s) = %s\n"` in src/VBox/Runtime/common/checksum/manifest2.cpp).
    Iprt,
    /// `SHA1(name)= hex` ending in CR LF: virt-v2v's tests write their
    /// manifests with `echo -e "SHA1(disk1.vmdk)= $sha\r"`.
    Crlf,
}

/// A manifest of `lines` (`(entry name, file)`) in `form`.
fn manifest(alg: Alg, form: LineForm, lines: &[(&str, &Path)]) -> String {
    lines
        .iter()
        .map(|(name, file)| {
            let (a, hex) = (alg.name(), alg.hex(file));
            match form {
                LineForm::Ovftool => format!("{a}({name})= {hex}\n"),
                LineForm::Iprt => format!("{a} ({name}) = {hex}\n"),
                LineForm::Crlf => format!("{a}({name})= {hex}\r\n"),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Packages.

/// Writes `data` to `rel` under the scratch directory (parents created).
fn stage(w: &Work, rel: &str, data: impl AsRef<[u8]>) -> PathBuf {
    let p = w.path(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(&p, data).expect("write staged file");
    p
}

/// One entry of a package: its name in the archive, the file holding its
/// bytes (none for a directory entry) and its mode.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    file: Option<PathBuf>,
    mode: u32,
}

/// A package under construction: its entries in archive order, and the
/// archivers that write them as a producer does.
#[derive(Debug, Default)]
struct Package {
    entries: Vec<Entry>,
}

/// How a producer's tar writer fills the headers, for Python's tarfile.
#[derive(Debug, Clone, Copy)]
struct TarStyle {
    /// `ustar`, `gnu` or `pax`.
    format: &'static str,
    uname: &'static str,
    uid: u32,
    gname: &'static str,
    gid: u32,
}

/// Python's tarfile writing `spec` (JSON): every entry with the style's
/// owner and the entry's mode, one mtime.
const PY_TAR: &str = r#"
import json, os, sys, tarfile
spec = json.loads(sys.argv[1])
formats = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
with tarfile.open(spec["out"], "w", format=formats[spec["format"]]) as tar:
    for e in spec["entries"]:
        info = tarfile.TarInfo(e["name"])
        info.size = os.path.getsize(e["path"])
        info.mtime = 1700000000
        info.mode = e["mode"]
        info.uid, info.gid = spec["uid"], spec["gid"]
        info.uname, info.gname = spec["uname"], spec["gname"]
        with open(e["path"], "rb") as f:
            tar.addfile(info, f)
"#;

/// Python's zipfile writing every member with one method, as virt-v2v's
/// test-i-ova-formats.sh zips an OVA's files (`zip -r test ...`).
const PY_ZIP: &str = r#"
import sys, zipfile
out, method = sys.argv[1], sys.argv[2]
methods = {"stored": zipfile.ZIP_STORED, "deflated": zipfile.ZIP_DEFLATED}
with zipfile.ZipFile(out, "w", compression=methods[method]) as z:
    for member in sys.argv[3:]:
        name, path = member.split("=", 1)
        z.write(path, arcname=name)
"#;

impl Package {
    fn new() -> Package {
        Package::default()
    }

    /// Appends a file entry of mode 0644.
    fn file(self, name: &str, file: &Path) -> Package {
        self.file_mode(name, file, 0o644)
    }

    /// Appends a file entry of the given mode.
    fn file_mode(mut self, name: &str, file: &Path, mode: u32) -> Package {
        self.entries.push(Entry {
            name: name.to_owned(),
            file: Some(file.to_owned()),
            mode,
        });
        self
    }

    /// Appends a directory entry (`name` ends in `/`).
    fn dir(mut self, name: &str) -> Package {
        self.entries.push(Entry {
            name: name.to_owned(),
            file: None,
            mode: 0o755,
        });
        self
    }

    fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }

    /// Writes the archive with Python's tarfile in `style`.
    fn python_tar(&self, out: &Path, style: TarStyle) -> PathBuf {
        let entries: Vec<Value> = self
            .entries
            .iter()
            .map(|e| {
                let file = e.file.as_ref().expect("tarfile entries are files");
                json!({"name": e.name, "path": file, "mode": e.mode})
            })
            .collect();
        let spec = json!({
            "out": out, "format": style.format, "entries": entries,
            "uname": style.uname, "uid": style.uid, "gname": style.gname, "gid": style.gid,
        });
        tool(
            "python3",
            &[
                OsStr::new("-c"),
                OsStr::new(PY_TAR),
                OsStr::new(&spec.to_string()),
            ],
        );
        self.assert_listed(out);
        out.to_owned()
    }

    /// Writes the archive with GNU tar given `flags` (after `-c`), from a
    /// staging directory of links that `-h` dereferences; no recursion,
    /// so directory entries hold only themselves.
    fn gnu_tar(&self, out: &Path, flags: &[&str]) -> PathBuf {
        let stage_dir = out.with_extension("stage");
        fs::create_dir(&stage_dir).expect("stage dir");
        for e in &self.entries {
            let at = stage_dir.join(&e.name);
            match &e.file {
                None => fs::create_dir_all(&at).expect("stage dir entry"),
                Some(file) => {
                    fs::create_dir_all(at.parent().expect("parent")).expect("stage parent");
                    symlink(fs::canonicalize(file).expect("canonical"), &at).expect("link");
                }
            }
        }
        let mut args: Vec<&OsStr> = vec![OsStr::new("-c"), OsStr::new("-h")];
        args.extend(flags.iter().map(OsStr::new));
        args.extend(["--no-recursion", "-f"].map(OsStr::new));
        args.push(out.as_os_str());
        args.push(OsStr::new("-C"));
        args.push(stage_dir.as_os_str());
        args.push(OsStr::new("--"));
        args.extend(self.entries.iter().map(|e| OsStr::new(&e.name)));
        tool("tar", &args);
        self.assert_listed(out);
        out.to_owned()
    }

    /// Writes a zip archive with Python's zipfile (`stored` or `deflated`).
    fn python_zip(&self, out: &Path, method: &str) -> PathBuf {
        let mut args: Vec<String> = vec![
            "-c".into(),
            PY_ZIP.into(),
            out.display().to_string(),
            method.into(),
        ];
        for e in &self.entries {
            let file = e.file.as_ref().expect("zip members are files");
            args.push(format!("{}={}", e.name, file.display()));
        }
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        tool("python3", &args);
        out.to_owned()
    }

    /// GNU tar, the oracle, lists the entries in the order given.
    fn assert_listed(&self, archive: &Path) {
        let listed: Vec<String> = support::tar::list(archive)
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(listed, self.names(), "{}", archive.display());
    }
}

// ---------------------------------------------------------------------------
// Running ovaio and judging the targets.

/// `ovaio import PKG --dir OUT --format FORMAT --json`, which must succeed;
/// its summary.
fn import_dir(pkg: &Path, out: &Path, target: Target) -> Value {
    let run = ovaio()
        .arg("import")
        .arg(pkg)
        .arg("--dir")
        .arg(out)
        .arg("--format")
        .arg(target.name())
        .arg("--json")
        .run();
    run.assert_success();
    run.json()
}

/// `ovaio inspect PKG --json`, which must succeed; its report.
fn inspect(pkg: &Path) -> Value {
    let run = ovaio().arg("inspect").arg(pkg).arg("--json").run();
    run.assert_success();
    run.json()
}

/// The summary's record of the disk `href`.
fn disk_of<'a>(summary: &'a Value, href: &str) -> &'a Value {
    summary["disks"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["href"] == href))
        .unwrap_or_else(|| panic!("no disk {href} in {summary}"))
}

/// Imports `pkg` with `--dir` into raw and into qcow2 targets; every disk
/// `(href, target stem, source)` must equal its source and every blank
/// disk `(disk id, capacity)` must be created empty as `DISKID.FORMAT`,
/// and nothing else is written. Returns the two summaries.
fn import_both(
    w: &Work,
    tag: &str,
    pkg: &Path,
    disks: &[(&str, &str, &Disk)],
    blanks: &[(&str, u64)],
) -> Vec<Value> {
    TARGETS
        .iter()
        .map(|&target| {
            let out = w.mkdir(&format!("{tag}-{}", target.name()));
            let s = import_dir(pkg, &out, target);
            assert_eq!(
                s["disks"].as_array().map(Vec::len),
                Some(disks.len() + blanks.len()),
                "{s}"
            );
            let mut expected = Vec::new();
            for (href, stem, disk) in disks {
                let d = disk_of(&s, href);
                assert_eq!(d["blank"], false, "{d}");
                assert_eq!(d["target_format"], target.name(), "{d}");
                assert_eq!(d["capacity"].as_u64(), Some(disk.capacity), "{d}");
                let file = out.join(format!("{stem}.{}", target.name()));
                assert_eq!(d["target"].as_str(), file.to_str(), "{d}");
                image::assert_target(&disk.raw, &file, target, disk.capacity);
                expected.push(format!("{stem}.{}", target.name()));
            }
            for (disk_id, capacity) in blanks {
                let d = s["disks"]
                    .as_array()
                    .and_then(|ds| ds.iter().find(|d| d["disk_id"] == *disk_id))
                    .unwrap_or_else(|| panic!("no blank disk {disk_id} in {s}"));
                assert_eq!(d["blank"], true, "{d}");
                assert_eq!(d["source_format"], "blank", "{d}");
                assert!(d.get("href").is_none(), "{d}");
                assert_eq!(d["capacity"].as_u64(), Some(*capacity), "{d}");
                let file = out.join(format!("{disk_id}.{}", target.name()));
                assert_eq!(d["target"].as_str(), file.to_str(), "{d}");
                assert_blank(w, &file, target, *capacity);
                expected.push(format!("{disk_id}.{}", target.name()));
            }
            let mut written: Vec<String> = fs::read_dir(&out)
                .expect("read target dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            written.sort();
            expected.sort();
            assert_eq!(written, expected, "{tag}: files in {}", out.display());
            s
        })
        .collect()
}

/// Panics unless `target` (of `format`) is an empty disk of `capacity`
/// bytes: `qemu-img compare` finds it equal to a fresh zero image of that
/// size, a qcow2 one is clean.
fn assert_blank(w: &Work, target: &Path, format: Target, capacity: u64) {
    let info = image::info(target, format.name());
    assert_eq!(info["virtual-size"].as_u64(), Some(capacity), "{info}");
    let zeros = w.path(&format!("zeros-{capacity}.raw"));
    if !zeros.exists() {
        tool(
            "qemu-img",
            &[
                OsStr::new("create"),
                OsStr::new("-q"),
                OsStr::new("-f"),
                OsStr::new("raw"),
                zeros.as_os_str(),
                OsStr::new(&capacity.to_string()),
            ],
        );
    }
    image::assert_same_content(&zeros, target, format.name());
    match format {
        Target::Raw => assert_eq!(file_len(target), capacity),
        Target::Qcow2 => image::assert_qcow2_clean(target),
    }
}

/// Panics unless `inspect --json` verified every manifest line, `lines`
/// of them, all with `alg`, and lists exactly `hrefs` as disks with a
/// file, each detected as `format`.
fn assert_inspected(report: &Value, alg: Alg, lines: usize, hrefs: &[&str], format: &str) {
    let m = &report["verification"]["manifest"];
    assert_eq!(m["status"], "verified", "{report}");
    assert_eq!(m["verified"].as_u64(), Some(lines as u64), "{report}");
    let all = m["lines"].as_array().expect("manifest lines");
    assert_eq!(all.len(), lines, "{report}");
    for l in all {
        assert_eq!(l["status"], "verified", "{l}");
        assert_eq!(l["algorithm"], alg.name(), "{l}");
    }
    let listed: Vec<&str> = report["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .filter_map(|d| d["href"].as_str())
        .collect();
    assert_eq!(listed, hrefs, "{report}");
    for d in report["disks"].as_array().expect("disks") {
        if d["href"].is_string() {
            assert_eq!(d["detected_format"], format, "{d}");
        }
    }
    for d in report["verification"]["disks"]
        .as_array()
        .expect("verified disks")
    {
        if d["href"].is_string() {
            assert_eq!(d["status"], "ok", "{d}");
        }
    }
}

/// `(capacity, units)` the way VMware's tools state a capacity: in GiB or
/// MiB when it is a whole number of them, else in bytes (govmomi's
/// ttylinux OVF says `30` `byte * 2^20`, its Nostalgia OVF `107373568`
/// `byte`).
fn vmware_units(bytes: u64) -> (u64, &'static str) {
    if bytes.is_multiple_of(GIB) {
        (bytes / GIB, "byte * 2^30")
    } else if bytes.is_multiple_of(MIB) {
        (bytes / MIB, "byte * 2^20")
    } else {
        (bytes, "byte")
    }
}

// ---------------------------------------------------------------------------
// 1, 2, 11: VMware ovftool 4.x.

/// ovftool's tar headers: ustar, `someone/someone`, uid and gid 64, mode
/// 0644 (what `tar tvf` shows for OVAs exported by ovftool and vCenter in
/// the blog posts and READMEs indexed for "someone/someone", e.g. a
/// `moxz.ova` from `ovftool vi://...`, and `1 64 64` in vCenter's VCSA OVA).
const OVFTOOL_TAR: TarStyle = TarStyle {
    format: "ustar",
    uname: "someone",
    uid: 64,
    gname: "someone",
    gid: 64,
};

/// One disk as a VMware descriptor describes it.
struct VmwDisk<'a> {
    href: &'a str,
    disk: &'a Disk,
    /// `ovf:size`: the whole file's, even when chunked.
    size: u64,
    /// `ovf:chunkSize`, for `ovftool --chunkSize`.
    chunk: Option<u64>,
}

/// The descriptor ovftool 4.x writes (OVF 1.0). Its form is that of
/// vmware/govmomi's vapi/library/testdata/ttylinux-pc_i486-16.1.ovf
/// ("Generated by VMware ovftool 4.0.0 (build-2060496)") and of
/// libguestfs/virt-v2v's tests/test-i-ova-chunked-gap.ovf (an export
/// with `ovf:chunkSize`): the generator comment, `vmw:buildId`, the default
/// and `ovf:` namespaces both bound to envelope/1 beside cim, rasd, vmw,
/// vssd and xsi; `File` attributes in the order `ovf:chunkSize`, `href`,
/// `id`, `size` (govmomi's ovf/fixtures/external/nostalgia-chunkdisk.ovf);
/// `Disk` with the capacity in VMware units, `diskId`, `fileRef`, the
/// streamOptimized URI and `populatedSize`; an ESXi VM's hardware with
/// `vmw:Config` items; and the run of spaces ovftool pads the
/// descriptor with after `</Envelope>`.
fn ovftool_ovf(vm: &str, disks: &[VmwDisk<'_>]) -> String {
    let mut refs = String::new();
    let mut disk_section = String::new();
    let mut items = String::new();
    for (i, d) in disks.iter().enumerate() {
        let n = i + 1;
        let chunk = d
            .chunk
            .map(|c| format!(r#" ovf:chunkSize="{c}""#))
            .unwrap_or_default();
        refs += &format!(
            "    <File{chunk} ovf:href=\"{}\" ovf:id=\"file{n}\" ovf:size=\"{}\"/>\n",
            d.href, d.size
        );
        let (capacity, units) = vmware_units(d.disk.capacity);
        disk_section += &format!(
            "    <Disk ovf:capacity=\"{capacity}\" ovf:capacityAllocationUnits=\"{units}\" ovf:diskId=\"vmdisk{n}\" ovf:fileRef=\"file{n}\" ovf:format=\"{STREAM_URI}\" ovf:populatedSize=\"{}\"/>\n",
            d.disk.populated()
        );
        items += &format!(
            r#"      <Item>
        <rasd:AddressOnParent>{i}</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk {n}</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk{n}</rasd:HostResource>
        <rasd:InstanceID>{id}</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="backing.writeThrough" vmw:value="false"/>
      </Item>
"#,
            id = 8 + i
        );
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!--Generated by VMware ovftool 4.4.3 (build-18663434), UTC time: 2023-11-14T22:13:20.314159Z-->
<Envelope vmw:buildId="build-18663434" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
{refs}  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
{disk_section}  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{vm}">
    <Info>A virtual machine</Info>
    <Name>{vm}</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest">
      <Info>The kind of installed guest operating system</Info>
      <Description>Other Linux (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{vm}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>1 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>1024MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1024</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="slotInfo.pciSlotNumber" vmw:value="160"/>
      </Item>
      <Item>
        <rasd:Address>1</rasd:Address>
        <rasd:Description>IDE Controller</rasd:Description>
        <rasd:ElementName>IDE 1</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>IDE Controller</rasd:Description>
        <rasd:ElementName>IDE 0</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:ElementName>Video card</rasd:ElementName>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:ResourceType>24</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="videoRamSizeInKB" vmw:value="4096"/>
      </Item>
      <Item ovf:required="false">
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:ElementName>VMCI device</rasd:ElementName>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:ResourceSubType>vmware.vmci</rasd:ResourceSubType>
        <rasd:ResourceType>1</rasd:ResourceType>
      </Item>
{items}      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on &quot;VM Network&quot;</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>20</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="wakeOnLanEnabled" vmw:value="true"/>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:Config ovf:required="false" vmw:key="powerOpInfo.powerOffType" vmw:value="soft"/>
      <vmw:Config ovf:required="false" vmw:key="tools.toolsUpgradePolicy" vmw:value="upgradeAtPowerCycle"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>{pad}
"#,
        pad = " ".repeat(33)
    )
}

/// Two streamOptimized disks by `qemu-img convert -O vmdk -o
/// subformat=streamOptimized` (6 MiB and 5 MiB) for the ovftool packages.
fn ovftool_disks(w: &Work) -> (Disk, Disk) {
    (
        converted(w, "ovftool-a", &MAIN, Source::Vmdk),
        converted(w, "ovftool-b", &SECOND, Source::Vmdk),
    )
}

/// An `ovftool vm.vmx vm.ova` package: `vm.ovf`, the SHA-256 manifest
/// right after it (ovftool 4's default `--shaAlgorithm`), the disks, and a
/// `vm.cert` last (a signed package; ovaio does not check signatures, so
/// a certificate file of the form open-vmdk's ova-compose writes, a
/// `SHA256(vm.mf)= signature` line and a PEM certificate, stands in).
fn ovftool_package(w: &Work, a: &Disk, b: &Disk) -> PathBuf {
    let disks = [
        VmwDisk {
            href: "vm-disk1.vmdk",
            disk: a,
            size: a.size(),
            chunk: None,
        },
        VmwDisk {
            href: "vm-disk2.vmdk",
            disk: b,
            size: b.size(),
            chunk: None,
        },
    ];
    let ovf = stage(w, "ovftool/vm.ovf", ovftool_ovf("vm", &disks));
    let mf = stage(
        w,
        "ovftool/vm.mf",
        manifest(
            Alg::Sha256,
            LineForm::Ovftool,
            &[
                ("vm.ovf", &ovf),
                ("vm-disk1.vmdk", &a.file),
                ("vm-disk2.vmdk", &b.file),
            ],
        ),
    );
    let cert = stage(
        w,
        "ovftool/vm.cert",
        format!(
            "SHA256(vm.mf)= {}\n-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUb3ZhaW8gdGVzdCBjZXJ0aWZpY2F0ZTAKBggqhkjOPQQD\n-----END CERTIFICATE-----\n",
            "5a".repeat(256)
        ),
    );
    Package::new()
        .file("vm.ovf", &ovf)
        .file("vm.mf", &mf)
        .file("vm-disk1.vmdk", &a.file)
        .file("vm-disk2.vmdk", &b.file)
        .file("vm.cert", &cert)
        .python_tar(&w.path("ovftool.ova"), OVFTOOL_TAR)
}

#[test]
fn ovftool_4_sha256_manifest_after_the_ovf_and_a_cert_last() {
    let w = Work::new();
    let (a, b) = ovftool_disks(&w);
    let pkg = ovftool_package(&w, &a, &b);
    let summaries = import_both(
        &w,
        "ovftool",
        &pkg,
        &[
            ("vm-disk1.vmdk", "vm-disk1", &a),
            ("vm-disk2.vmdk", "vm-disk2", &b),
        ],
        &[],
    );
    for s in &summaries {
        assert_eq!(s["manifest"], "verified", "{s}");
        assert_eq!(s["manifests"], json!(["vm.mf"]), "{s}");
        assert_eq!(s["skipped"], json!(["vm.cert"]), "{s}");
        for href in ["vm-disk1.vmdk", "vm-disk2.vmdk"] {
            let d = disk_of(s, href);
            assert_eq!(d["source_format"], "vmdk", "{d}");
            assert_eq!(d["declared_format"], "vmdk (streamOptimized)", "{d}");
            assert_eq!(d["warnings"], json!([]), "{d}");
        }
    }
    let r = inspect(&pkg);
    assert_eq!(r["name"], "vm", "{r}");
    assert_inspected(
        &r,
        Alg::Sha256,
        3,
        &["vm-disk1.vmdk", "vm-disk2.vmdk"],
        "vmdk",
    );
}

#[test]
fn ovftool_sha512_manifest_and_chunked_disk() {
    let w = Work::new();
    let a = converted(&w, "chunked", &MAIN, Source::Vmdk);
    // `ovftool --chunkSize=N --shaAlgorithm=SHA512`: the file is split
    // into entries `vm-disk1.vmdk.000000000`, ... of N bytes but the last
    // (virt-v2v's test-i-ova-chunked.sh splits the same way with `split
    // -b N -d -a 9`), the File keeps the whole size and gains
    // `ovf:chunkSize`, and the manifest lists every chunk.
    let bytes = fs::read(&a.file).expect("read vmdk");
    let chunk = (bytes.len() as u64).div_ceil(3).next_multiple_of(512) + 512;
    let chunks: Vec<(String, PathBuf)> = bytes
        .chunks(usize::try_from(chunk).expect("chunk"))
        .enumerate()
        .map(|(i, c)| {
            let name = format!("vm-disk1.vmdk.{i:09}");
            let file = stage(&w, &format!("chunked/{name}"), c);
            (name, file)
        })
        .collect();
    assert_eq!(chunks.len(), 3, "three chunks of {chunk}");
    let ovf = stage(
        &w,
        "chunked/vm.ovf",
        ovftool_ovf(
            "vm",
            &[VmwDisk {
                href: "vm-disk1.vmdk",
                disk: &a,
                size: a.size(),
                chunk: Some(chunk),
            }],
        ),
    );
    let mut lines: Vec<(&str, &Path)> = vec![("vm.ovf", ovf.as_path())];
    lines.extend(chunks.iter().map(|(n, f)| (n.as_str(), f.as_path())));
    let mf = stage(
        &w,
        "chunked/vm.mf",
        manifest(Alg::Sha512, LineForm::Ovftool, &lines),
    );
    assert!(
        fs::read_to_string(&mf)
            .expect("mf")
            .starts_with("SHA512(vm.ovf)= ")
    );
    let mut p = Package::new().file("vm.ovf", &ovf).file("vm.mf", &mf);
    for (name, file) in &chunks {
        p = p.file(name, file);
    }
    let pkg = p.python_tar(&w.path("chunked.ova"), OVFTOOL_TAR);

    // Named with --disk by the href, into each target format.
    for target in TARGETS {
        let dest = w.path(&format!("chunked-disk1.{}", target.name()));
        let run = ovaio()
            .arg("import")
            .arg(&pkg)
            .arg("--disk")
            .arg(format!(
                "vm-disk1.vmdk={}:{}",
                dest.display(),
                target.name()
            ))
            .arg("--json")
            .run();
        run.assert_success();
        let s = run.json();
        assert_eq!(s["manifest"], "verified", "{s}");
        let d = disk_of(&s, "vm-disk1.vmdk");
        assert_eq!(d["chunks"], 3, "{d}");
        assert_eq!(d["source_format"], "vmdk", "{d}");
        image::assert_target(&a.raw, &dest, target, a.capacity);
    }
    let r = inspect(&pkg);
    assert_eq!(r["files"][0]["chunk_size"].as_u64(), Some(chunk), "{r}");
    assert_inspected(&r, Alg::Sha512, 4, &["vm-disk1.vmdk"], "vmdk");
}

#[test]
fn gzip_compressed_ovftool_package() {
    let w = Work::new();
    let (a, b) = ovftool_disks(&w);
    let pkg = ovftool_package(&w, &a, &b);
    // `gzip -c vm.ova > vm.ova.gz`.
    let gz = w.path("ovftool.ova.gz");
    fs::write(&gz, image::gzip(&fs::read(&pkg).expect("read ova"))).expect("write gz");
    assert!(file_len(&gz) < file_len(&pkg), "gzip did not compress");
    let summaries = import_both(
        &w,
        "gz",
        &gz,
        &[
            ("vm-disk1.vmdk", "vm-disk1", &a),
            ("vm-disk2.vmdk", "vm-disk2", &b),
        ],
        &[],
    );
    for s in &summaries {
        assert_eq!(s["compression"], "gzip", "{s}");
        assert_eq!(s["archive"], "tar", "{s}");
        assert_eq!(s["manifest"], "verified", "{s}");
    }
}

// ---------------------------------------------------------------------------
// 3: vSphere 8 export with an NVRAM file.

/// A VM exported from vSphere 8 (`ovftool vi://host/vm vm.ova`, or the
/// client's Export OVF Template): the form of vmware/govmomi's
/// ovf/fixtures/external/VM_with_nvram/newVM-with-nvram.ovf, with the
/// hardware version of ESXi 8 (`vmx-20`): single-quoted XML declaration;
/// xmlns, ovf, vmw, rasd and vssd only; the disk's `File` without
/// `ovf:size` and the NVRAM's with one; `Disk` attributes in the order
/// `capacityAllocationUnits="byte"`, `format`, `diskId`, `capacity`,
/// `fileRef`; the NVRAM named by `<vmw:ExtraConfig vmw:key="nvram"
/// vmw:value="ovf:/file/file2"/>`. The entry names are those of `tar tvf`
/// of real exports (`moxz.ovf`, `moxz.mf`, `moxz-disk1.vmdk`,
/// `moxz-file1.nvram`).
fn vsphere8_ovf(disk: &Disk, nvram_size: u64) -> String {
    format!(
        r#"<?xml version='1.0' encoding='UTF-8'?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
    <File ovf:id="file1" ovf:href="vm8-disk1.vmdk"/>
    <File ovf:id="file2" ovf:href="vm8-file1.nvram" ovf:size="{nvram_size}"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks</Info>
    <Disk ovf:capacityAllocationUnits="byte" ovf:format="{STREAM_URI}" ovf:diskId="vmdisk1" ovf:capacity="{capacity}" ovf:fileRef="file1"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="vm8">
    <Info>A Virtual system</Info>
    <Name>vm8</Name>
    <OperatingSystemSection ovf:id="80" ovf:version="9" vmw:osType="rhel9_64Guest">
      <Info>The operating system installed</Info>
      <Description>Red Hat Enterprise Linux 9 (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-20</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
        <vmw:CoresPerSocket ovf:required="false">2</vmw:CoresPerSocket>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>2048MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 1</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="slotInfo.pciSlotNumber" vmw:value="160"/>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="slotInfo.pciSlotNumber" vmw:value="192"/>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:Config ovf:required="false" vmw:key="bootOptions.efiSecureBootEnabled" vmw:value="true"/>
      <vmw:Config ovf:required="false" vmw:key="virtualICH7MPresent" vmw:value="false"/>
      <vmw:ExtraConfig ovf:required="false" vmw:key="nvram" vmw:value="ovf:/file/file2"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#,
        capacity = disk.capacity
    )
}

#[test]
fn vsphere_8_export_skips_the_referenced_nvram_file() {
    let w = Work::new();
    let a = converted(&w, "vsphere", &ODD, Source::Vmdk);
    // An EFI variable store: binary, as ESXi keeps it (8684 bytes in the
    // listings above).
    let nvram_bytes: Vec<u8> = (0..8684u32).map(|i| (i * 7 % 251) as u8).collect();
    let nvram = stage(&w, "vsphere/vm8-file1.nvram", &nvram_bytes);
    let ovf = stage(
        &w,
        "vsphere/vm8.ovf",
        vsphere8_ovf(&a, nvram_bytes.len() as u64),
    );
    let mf = stage(
        &w,
        "vsphere/vm8.mf",
        manifest(
            Alg::Sha256,
            LineForm::Ovftool,
            &[
                ("vm8.ovf", &ovf),
                ("vm8-disk1.vmdk", &a.file),
                ("vm8-file1.nvram", &nvram),
            ],
        ),
    );
    let pkg = Package::new()
        .file("vm8.ovf", &ovf)
        .file("vm8.mf", &mf)
        .file("vm8-disk1.vmdk", &a.file)
        .file("vm8-file1.nvram", &nvram)
        .python_tar(&w.path("vsphere8.ova"), OVFTOOL_TAR);
    let summaries = import_both(
        &w,
        "vsphere",
        &pkg,
        &[("vm8-disk1.vmdk", "vm8-disk1", &a)],
        &[],
    );
    // `import_both` found only the disk's target written: the referenced
    // NVRAM file, verified against the manifest, is skipped.
    for s in &summaries {
        assert_eq!(s["manifest"], "verified", "{s}");
        assert_eq!(s["skipped"], json!(["vm8-file1.nvram"]), "{s}");
    }
    let r = inspect(&pkg);
    assert_eq!(r["files"].as_array().map(Vec::len), Some(2), "{r}");
    assert_inspected(&r, Alg::Sha256, 3, &["vm8-disk1.vmdk"], "vmdk");
}

// ---------------------------------------------------------------------------
// 4, 5: VirtualBox 7.

/// `VBoxManage export vm -o vm.ova --options manifest`, as VirtualBox's
/// src/VBox/Main/src-server/ApplianceImplExport.cpp (mirror/vbox) writes
/// it: a ustar archive (`RTZIPTARFORMAT_USTAR`) whose owner names the OVF
/// version (`vboxovf10`, `vboxovf20`) with uid VBOX_VERSION_MAJOR, group
/// `vbox_v7.0.18r162988` with gid VBOX_VERSION_MINOR, modes masked by
/// 0660 and or-ed with 0440 (`-rw-r----- vboxovf10/vbox_v7.0.16r162802`
/// for the OVF and `-rw-rw----` for the disk in a `tar tvf` of a real
/// export); the OVF first, the disks (`%s-disk%.3d.vmdk`, written
/// streamOptimized), the manifest last, digested as SHA-1 for OVF 1.0 and
/// SHA-256 for 2.0 (`m->fDigestTypes = ovfF >= ovf::OVFVersion_2_0 ?
/// RTMANIFEST_ATTR_SHA256 : RTMANIFEST_ATTR_SHA1`), in IPRT's spaced line
/// form.
fn vbox_package(w: &Work, tag: &str, ovf2: bool, disks: &[(&str, &Disk)]) -> PathBuf {
    let (alg, owner) = if ovf2 {
        (Alg::Sha256, "vboxovf20")
    } else {
        (Alg::Sha1, "vboxovf10")
    };
    let ovf = stage(w, &format!("{tag}/vbox.ovf"), vbox_ovf(ovf2, disks));
    let mut lines: Vec<(&str, &Path)> = vec![("vbox.ovf", ovf.as_path())];
    lines.extend(disks.iter().map(|(n, d)| (*n, d.file.as_path())));
    let mf = stage(
        w,
        &format!("{tag}/vbox.mf"),
        manifest(alg, LineForm::Iprt, &lines),
    );
    let mut p = Package::new().file_mode("vbox.ovf", &ovf, 0o640);
    for (name, d) in disks {
        p = p.file_mode(name, &d.file, 0o660);
    }
    p.file_mode("vbox.mf", &mf, 0o640).python_tar(
        &w.path(&format!("{tag}.ova")),
        TarStyle {
            format: "ustar",
            uname: owner,
            uid: 7,
            gname: "vbox_v7.0.18r162988",
            gid: 0,
        },
    )
}

/// The descriptor VirtualBox 7 writes, OVF 1.0 or 2.0, as
/// ApplianceImplExport.cpp builds it (`i_buildXML`,
/// `i_buildXMLForOneVirtualSystem`) and as copies of real exports show
/// it (kalopa/robobsd's buildbox.sh, an OVF 1.0 export with
/// `vbox:Machine version="1.12-linux"`; untangle/ngfw_isotools-stretch's
/// ova/untangle.ovf.tpl, an OVF 2.0 one): `ovf:version` and `xml:lang` on
/// the envelope, the vbox namespace (and for 2.0 the envelope/2 namespace
/// with epasd and sasd); `File` with `ovf:id` and `ovf:href` but no
/// `ovf:size` (not known before the disk is compressed, the code says);
/// `Disk` capacity in bytes with `vbox:uuid`; `virtualbox-2.2` hardware
/// with `rasd:Caption`s and `/disk/vmdiskN` host resources (in
/// `sasd:` StorageItems for 2.0), and the whole machine again in
/// `vbox:Machine` (settings version 1.19, VirtualBox 7).
fn vbox_ovf(ovf2: bool, disks: &[(&str, &Disk)]) -> String {
    let (ns, version, extra_ns) = if ovf2 {
        (
            "http://schemas.dmtf.org/ovf/envelope/2",
            "2.0",
            r#" xmlns:epasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData.xsd" xmlns:sasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData.xsd""#,
        )
    } else {
        ("http://schemas.dmtf.org/ovf/envelope/1", "1.0", "")
    };
    let mut refs = String::new();
    let mut disk_section = String::new();
    let mut items = String::new();
    let mut attached = String::new();
    for (i, (href, d)) in disks.iter().enumerate() {
        let n = i + 1;
        let uuid = format!("4f6d2c1a-9b7e-4c3d-8a21-5e0b9c7d6a{n:02}");
        refs += &format!("    <File ovf:id=\"file{n}\" ovf:href=\"{href}\"/>\n");
        disk_section += &format!(
            "    <Disk ovf:capacity=\"{}\" ovf:diskId=\"vmdisk{n}\" ovf:fileRef=\"file{n}\" ovf:format=\"{STREAM_URI}\" vbox:uuid=\"{uuid}\"/>\n",
            d.capacity
        );
        let p = if ovf2 { "sasd" } else { "rasd" };
        let element = if ovf2 { "StorageItem" } else { "Item" };
        items += &format!(
            r#"      <{element}>
        <{p}:AddressOnParent>{i}</{p}:AddressOnParent>
        <{p}:Caption>disk{n}</{p}:Caption>
        <{p}:Description>Disk Image</{p}:Description>
        <{p}:ElementName>disk{n}</{p}:ElementName>
        <{p}:HostResource>/disk/vmdisk{n}</{p}:HostResource>
        <{p}:InstanceID>{id}</{p}:InstanceID>
        <{p}:Parent>3</{p}:Parent>
        <{p}:ResourceType>17</{p}:ResourceType>
      </{element}>
"#,
            id = 4 + i
        );
        attached += &format!(
            "          <AttachedDevice type=\"HardDisk\" hotpluggable=\"false\" port=\"{i}\" device=\"0\">\n            <Image uuid=\"{{{uuid}}}\"/>\n          </AttachedDevice>\n"
        );
    }
    let nic = if ovf2 {
        r#"      <EthernetPortItem>
        <epasd:AutomaticAllocation>true</epasd:AutomaticAllocation>
        <epasd:Caption>Ethernet adapter on 'NAT'</epasd:Caption>
        <epasd:Connection>NAT</epasd:Connection>
        <epasd:ElementName>Ethernet adapter on 'NAT'</epasd:ElementName>
        <epasd:InstanceID>10</epasd:InstanceID>
        <epasd:ResourceSubType>E1000</epasd:ResourceSubType>
        <epasd:ResourceType>10</epasd:ResourceType>
      </EthernetPortItem>
"#
    } else {
        r#"      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Caption>Ethernet adapter on 'NAT'</rasd:Caption>
        <rasd:Connection>NAT</rasd:Connection>
        <rasd:ElementName>Ethernet adapter on 'NAT'</rasd:ElementName>
        <rasd:InstanceID>10</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
"#
    };
    format!(
        r#"<?xml version="1.0"?>
<Envelope ovf:version="{version}" xml:lang="en-US" xmlns="{ns}" xmlns:ovf="{ns}" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine"{extra_ns}>
  <References>
{refs}  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
{disk_section}  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT">
      <Description>Logical network used by this appliance.</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="vbox">
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="96">
      <Info>The kind of installed guest operating system</Info>
      <Description>Debian_64</Description>
      <vbox:OSType ovf:required="false">Debian_64</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>vbox</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>1 virtual CPU</rasd:Caption>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>1 virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:Caption>1024 MB of memory</rasd:Caption>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>1024 MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1024</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Caption>sataController0</rasd:Caption>
        <rasd:Description>SATA Controller</rasd:Description>
        <rasd:ElementName>sataController0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>AHCI</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
{items}{nic}    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.19-linux" uuid="{{6a3e1f2b-8c4d-4e5f-9a0b-1c2d3e4f5a6b}}" name="vbox" OSType="Debian_64" snapshotFolder="Snapshots" lastStateChange="2023-11-14T22:13:20Z">
      <ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info>
      <Hardware>
        <CPU count="1">
          <PAE enabled="true"/>
        </CPU>
        <Memory RAMSize="1024"/>
        <Display controller="VMSVGA" VRAMSize="16"/>
        <Network>
          <Adapter slot="0" enabled="true" MACAddress="080027FAE441" type="82540EM">
            <NAT localhost-reachable="true"/>
          </Adapter>
        </Network>
      </Hardware>
      <StorageControllers>
        <StorageController name="SATA" type="AHCI" PortCount="{ports}" useHostIOCache="false" Bootable="true" IDE0MasterEmulationPort="0" IDE0SlaveEmulationPort="1" IDE1MasterEmulationPort="2" IDE1SlaveEmulationPort="3">
{attached}        </StorageController>
      </StorageControllers>
    </vbox:Machine>
  </VirtualSystem>
</Envelope>
"#,
        ports = disks.len()
    )
}

#[test]
fn virtualbox_7_ovf_1_0_sha1_manifest_last() {
    let w = Work::new();
    let a = converted(&w, "vbox1-a", &ODD, Source::Vmdk);
    let b = converted(&w, "vbox1-b", &SMALL, Source::Vmdk);
    let disks = [("vbox-disk001.vmdk", &a), ("vbox-disk002.vmdk", &b)];
    let pkg = vbox_package(&w, "vbox10", false, &disks);
    let mf = fs::read_to_string(w.path("vbox10/vbox.mf")).expect("mf");
    assert!(mf.starts_with("SHA1 (vbox.ovf) = "), "{mf}");
    let summaries = import_both(
        &w,
        "vbox10",
        &pkg,
        &[
            ("vbox-disk001.vmdk", "vbox-disk001", &a),
            ("vbox-disk002.vmdk", "vbox-disk002", &b),
        ],
        &[],
    );
    for s in &summaries {
        assert_eq!(s["manifest"], "verified", "{s}");
        assert_eq!(s["manifests"], json!(["vbox.mf"]), "{s}");
        for (href, _) in disks {
            let d = disk_of(s, href);
            assert_eq!(d["source_format"], "vmdk", "{d}");
            assert_eq!(d["warnings"], json!([]), "{d}");
        }
    }
    let r = inspect(&pkg);
    assert_eq!(r["name"], "vbox", "{r}");
    // No ovf:size: VirtualBox does not know it when it writes the OVF.
    assert!(
        r["files"]
            .as_array()
            .expect("files")
            .iter()
            .all(|f| f["size"].is_null()),
        "{r}"
    );
    assert_inspected(
        &r,
        Alg::Sha1,
        3,
        &["vbox-disk001.vmdk", "vbox-disk002.vmdk"],
        "vmdk",
    );
}

#[test]
fn virtualbox_ovf_2_0_sha256_manifest_last() {
    let w = Work::new();
    let a = converted(&w, "vbox2", &MAIN, Source::Vmdk);
    let pkg = vbox_package(&w, "vbox20", true, &[("vbox-disk001.vmdk", &a)]);
    let mf = fs::read_to_string(w.path("vbox20/vbox.mf")).expect("mf");
    assert!(mf.starts_with("SHA256 (vbox.ovf) = "), "{mf}");
    let summaries = import_both(
        &w,
        "vbox20",
        &pkg,
        &[("vbox-disk001.vmdk", "vbox-disk001", &a)],
        &[],
    );
    for s in &summaries {
        assert_eq!(s["manifest"], "verified", "{s}");
        assert_eq!(disk_of(s, "vbox-disk001.vmdk")["source_format"], "vmdk");
    }
}

// ---------------------------------------------------------------------------
// 6: oVirt / RHV export.

/// oVirt's packaging/ansible-runner-service-project/project/roles/
/// ovirt-ova-pack/files/pack_ova.py (oVirt/ovirt-engine), run without its
/// loop device: every header is `TarInfo(name).tobuf(GNU_FORMAT)` (mode
/// 0644, root, empty owner names); `ENTITY.ovf`, then `tpm.dat` and
/// `nvram.dat`, then a `pad` entry of zeros so that the first disk's data
/// starts on a 4 KiB boundary (`pad_to_fs_block_size`); each disk is the
/// `qemu-img convert -O qcow2` of its volume, its entry grown with zeros
/// so that the next entry's data is aligned too (`convert_disk_and_trim`:
/// `((actual + 512 + 4095) // 4096) * 4096 - 512`); two zero blocks end
/// the archive, without tarfile's padding to a record.
const PACK_OVA: &str = r#"
import json, sys, tarfile
TAR_BLOCK_SIZE = 512
FS_BLOCK_SIZE = 4096
NUL = b"\0"
spec = json.loads(sys.argv[1])

def create_tar_info(name, size):
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 1700000000.25
    return info

def pad_to_block_size(f):
    remainder = f.tell() % TAR_BLOCK_SIZE
    if remainder:
        f.write(NUL * (TAR_BLOCK_SIZE - remainder))

def write_file(name, f, data):
    f.write(create_tar_info(name, len(data)).tobuf(format=tarfile.GNU_FORMAT))
    f.write(data)
    pad_to_block_size(f)

def write_padding_file(f, padding_size):
    file_size = padding_size - TAR_BLOCK_SIZE
    f.write(create_tar_info("pad", file_size).tobuf(format=tarfile.GNU_FORMAT))
    pad_to_block_size(f)
    if file_size:
        f.write(NUL * file_size)

def pad_to_fs_block_size(f):
    remainder = (f.tell() + TAR_BLOCK_SIZE) % FS_BLOCK_SIZE
    if remainder:
        write_padding_file(f, FS_BLOCK_SIZE - remainder)

def convert_disk_and_trim(f, path, name):
    header_offset = f.tell()
    data_offset = header_offset + TAR_BLOCK_SIZE
    with open(path, "rb") as src:
        data = src.read()
    f.seek(data_offset)
    f.write(data)
    actual_size = len(data)
    aligned_size = ((actual_size + TAR_BLOCK_SIZE + FS_BLOCK_SIZE - 1)
                    // FS_BLOCK_SIZE) * FS_BLOCK_SIZE - TAR_BLOCK_SIZE
    f.seek(header_offset)
    f.write(create_tar_info(name, aligned_size).tobuf(format=tarfile.GNU_FORMAT))
    new_end = data_offset + aligned_size
    f.truncate(new_end)
    f.seek(new_end)

with open(spec["out"], "wb") as f:
    write_file(spec["entity"] + ".ovf", f, spec["ovf"].encode())
    write_file("tpm.dat", f, spec["tpm"].encode())
    write_file("nvram.dat", f, spec["nvram"].encode())
    pad_to_fs_block_size(f)
    for d in spec["disks"]:
        convert_disk_and_trim(f, d["path"], d["name"])
    f.write(NUL * 2 * TAR_BLOCK_SIZE)
"#;

/// One oVirt disk: its ids and its volume.
struct OvirtDisk<'a> {
    disk_id: &'a str,
    image_id: &'a str,
    /// `COW` (qcow2) or `RAW`.
    volume_format: &'a str,
    volume: &'a Disk,
}

/// The descriptor oVirt writes into an OVA, as oVirt/ovirt-engine's
/// backend/manager/modules/utils/src/main/java/org/ovirt/engine/core/utils/
/// ovf/OvfOvaWriter.java and OvfWriter.java write it (and as the oVirt
/// sample in ovaio's src/ova/ovf/writer.rs shows it): one line; the
/// `ovf:`-prefixed `Envelope` with the namespace URI
/// `http://schemas.dmtf.org/ovf/envelope/1/` (trailing slash, IOvfBuilder's
/// OVF_URI) bound to `ovf` and as the default namespace, and the ovirt
/// namespace; `File` href and id both the image id (no extension), size
/// the volume's actual size; `tpm.dat` and `nvram.dat` as `File`s too;
/// `Disk` with the capacity in whole GiB (`byte * 2^30`), `populatedSize`,
/// `parentRef`, the format URI of the *volume* (`getVolumeImageFormat`:
/// the qcow URI for COW, VMware's `vmdk.html#sparse` for RAW, although
/// pack_ova.py converts every disk to qcow2) and oVirt's own attributes.
fn ovirt_ovf(vm_id: &str, disks: &[OvirtDisk<'_>], tpm: usize, nvram: usize) -> String {
    let mut refs = String::new();
    let mut disk_section = String::new();
    let mut items = String::new();
    for (i, d) in disks.iter().enumerate() {
        let actual = fs::metadata(&d.volume.file).expect("stat").blocks() * 512;
        refs += &format!(
            r#"<File ovf:href="{0}" ovf:id="{0}" ovf:size="{actual}"></File>"#,
            d.image_id
        );
        assert!(
            d.volume.capacity.is_multiple_of(GIB),
            "oVirt sizes are whole GiB"
        );
        let (format, volume_type) = if d.volume_format == "COW" {
            (QCOW_URI, "Sparse")
        } else {
            (SPARSE_09_URI, "Preallocated")
        };
        disk_section += &format!(
            r#"<Disk ovf:diskId="{id}" ovf:capacity="{gib}" ovf:capacityAllocationUnits="byte * 2^30" ovf:populatedSize="{actual}" ovf:parentRef="" ovf:fileRef="{image}" ovf:format="{format}" ovf:volume-format="{vf}" ovf:volume-type="{volume_type}" ovf:disk-interface="VirtIO_SCSI" ovf:boot="{boot}" ovf:pass-discard="false" ovf:disk-alias="vm_Disk{n}" ovf:disk-description="" ovf:wipe-after-delete="false" ovf:description="" ovf:disk_storage_type="IMAGE" ovf:cinder_volume_type=""></Disk>"#,
            id = d.disk_id,
            gib = d.volume.capacity / GIB,
            image = d.image_id,
            vf = d.volume_format,
            boot = i == 0,
            n = i + 1,
        );
        items += &format!(
            r#"<Item><rasd:Caption>vm_Disk{n}</rasd:Caption><rasd:InstanceId>{image}</rasd:InstanceId><rasd:ResourceType>17</rasd:ResourceType><rasd:HostResource>ovf:/disk/{id}</rasd:HostResource><rasd:Parent>00000000-0000-0000-0000-000000000000</rasd:Parent><rasd:Template>00000000-0000-0000-0000-000000000000</rasd:Template><rasd:ApplicationList></rasd:ApplicationList><rasd:StorageId>7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d</rasd:StorageId><rasd:StoragePoolId>5f4e3d2c-1b0a-4c9d-8e7f-6a5b4c3d2e1f</rasd:StoragePoolId><rasd:CreationDate>2023/11/14 22:13:20</rasd:CreationDate><rasd:LastModified>2023/11/14 22:13:20</rasd:LastModified></Item>"#,
            n = i + 1,
            image = d.image_id,
            id = d.disk_id,
        );
    }
    format!(
        r#"<?xml version='1.0' encoding='UTF-8'?><ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns="http://schemas.dmtf.org/ovf/envelope/1/" xmlns:ovirt="http://www.ovirt.org/ovf" ovf:version="4.4.0.0"><References>{refs}<File ovf:href="tpm.dat" ovf:id="tpm.dat" ovf:size="{tpm}"></File><File ovf:href="nvram.dat" ovf:id="nvram.dat" ovf:size="{nvram}"></File></References><NetworkSection><Info>List of networks</Info><Network ovf:name="ovirtmgmt"></Network></NetworkSection><DiskSection><Info>List of Virtual Disks</Info>{disk_section}</DiskSection><VirtualSystem ovf:id="{vm_id}"><Name>vm</Name><Description></Description><Comment></Comment><CreationDate>2023/11/14 22:13:20</CreationDate><ExportDate>2023/11/14 22:13:20</ExportDate><DeleteProtected>false</DeleteProtected><IsSmartcardEnabled>false</IsSmartcardEnabled><TimeZone>Etc/GMT</TimeZone><default_boot_sequence>0</default_boot_sequence><Generation>1</Generation><ClusterCompatibilityVersion>4.7</ClusterCompatibilityVersion><VmType>1</VmType><MinAllocatedMem>1024</MinAllocatedMem><IsStateless>false</IsStateless><IsRunAndPause>false</IsRunAndPause><AutoStartup>false</AutoStartup><Priority>1</Priority><BiosType>4</BiosType><MaxMemorySizeMb>4096</MaxMemorySizeMb><OperatingSystemSection ovf:id="80" ovirt:id="33" ovf:required="false"><Info>Guest Operating System</Info><Description>rhel_8x64</Description></OperatingSystemSection><VirtualHardwareSection><Info>1 CPU, 1024 Memory</Info><System><vssd:VirtualSystemType>ENGINE 4.4.0.0</vssd:VirtualSystemType></System><Item><rasd:Caption>1 virtual cpu</rasd:Caption><rasd:Description>Number of virtual CPU</rasd:Description><rasd:InstanceId>1</rasd:InstanceId><rasd:ResourceType>3</rasd:ResourceType><rasd:num_of_sockets>1</rasd:num_of_sockets><rasd:cpu_per_socket>1</rasd:cpu_per_socket><rasd:threads_per_cpu>1</rasd:threads_per_cpu><rasd:max_num_of_vcpus>16</rasd:max_num_of_vcpus><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item><Item><rasd:Caption>1024 MB of memory</rasd:Caption><rasd:Description>Memory Size</rasd:Description><rasd:InstanceId>2</rasd:InstanceId><rasd:ResourceType>4</rasd:ResourceType><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>{items}<Item><rasd:ResourceType>0</rasd:ResourceType><rasd:HostResource>ovf:/file/tpm.dat</rasd:HostResource></Item></VirtualHardwareSection></VirtualSystem></ovf:Envelope>"#
    )
}

#[test]
fn ovirt_export_qcow2_disks_with_pad_entries_and_no_manifest() {
    let w = Work::new();
    // A thin (COW) volume and a preallocated-style RAW one, both 1 GiB
    // with data scattered from the first sector to the last, as oVirt
    // holds them on a storage domain.
    let cow = volume(
        &w,
        "ovirt-cow",
        "qcow2",
        GIB,
        &[
            (0xa1, 0, 70_000),
            (0x3c, 8 * MIB + 4096, 65_536 * 3 + 512),
            (0x00, 64 * MIB, 65_536),
            (0xe7, 600 * MIB - 512, 1024),
            (0x5d, GIB - 40_960, 40_960),
        ],
    );
    let raw = volume(
        &w,
        "ovirt-raw",
        "raw",
        GIB,
        &[
            (0x11, 512, 1536),
            (0x99, 300 * MIB, 200_000),
            (0x42, GIB - 4096, 4096),
        ],
    );
    // pack_ova.py converts every volume with `qemu-img convert -O qcow2`.
    let to_qcow2 = |d: &Disk, stem: &str| -> PathBuf {
        let out = w.path(&format!("{stem}.in-ova.qcow2"));
        tool(
            "qemu-img",
            &[
                OsStr::new("convert"),
                OsStr::new("-q"),
                OsStr::new("-O"),
                OsStr::new("qcow2"),
                d.file.as_os_str(),
                out.as_os_str(),
            ],
        );
        out
    };
    let cow_entry = to_qcow2(&cow, "ovirt-cow");
    let raw_entry = to_qcow2(&raw, "ovirt-raw");
    let (cow_image, raw_image) = (
        "8f5b2c9e-3d1a-4b7c-9e2f-1a0b3c4d5e6f",
        "c2d4e6f8-0a1b-4c3d-8e5f-7a9b1c3d5e7f",
    );
    let disks = [
        OvirtDisk {
            disk_id: "2b3a33c4-5d6e-4f70-8192-a3b4c5d6e7f8",
            image_id: cow_image,
            volume_format: "COW",
            volume: &cow,
        },
        OvirtDisk {
            disk_id: "9e8d7c6b-5a4f-4e3d-2c1b-0a9f8e7d6c5b",
            image_id: raw_image,
            volume_format: "RAW",
            volume: &raw,
        },
    ];
    // oVirt keeps the TPM and NVRAM data base64-encoded.
    let tpm = "dHBtLXN0YXRlLWZvci12bQ==".repeat(20);
    let nvram = "T1ZNRi1ub24tdm9sYXRpbGUtc3RvcmU=".repeat(30);
    let ovf = ovirt_ovf(
        "0e1d2c3b-4a59-4687-a5b4-c3d2e1f0a9b8",
        &disks,
        tpm.len(),
        nvram.len(),
    );
    let pkg = w.path("ovirt.ova");
    let spec = json!({
        "out": pkg, "entity": "vm", "ovf": ovf, "tpm": tpm, "nvram": nvram,
        "disks": [
            {"path": cow_entry, "name": cow_image},
            {"path": raw_entry, "name": raw_image},
        ],
    });
    tool(
        "python3",
        &[
            OsStr::new("-c"),
            OsStr::new(PACK_OVA),
            OsStr::new(&spec.to_string()),
        ],
    );
    // The layout pack_ova.py gives: a pad entry, each disk's data on a
    // 4 KiB boundary, entries larger than the qcow2 files they hold.
    let listed = support::tar::list(&pkg);
    let names: Vec<&str> = listed.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "vm.ovf",
            "tpm.dat",
            "nvram.dat",
            "pad",
            cow_image,
            raw_image
        ]
    );
    for (l, entry) in listed[4..].iter().zip([&cow_entry, &raw_entry]) {
        assert_eq!((l.header_offset + 512) % 4096, 0, "{l:?}");
        assert!(l.size > file_len(entry), "{l:?} pads its qcow2");
    }

    let summaries = import_both(
        &w,
        "ovirt",
        &pkg,
        &[(cow_image, cow_image, &cow), (raw_image, raw_image, &raw)],
        &[],
    );
    for s in &summaries {
        assert_eq!(s["manifest"], "absent", "{s}");
        let mut skipped: Vec<&str> = s["skipped"]
            .as_array()
            .expect("skipped")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        skipped.sort_unstable();
        assert_eq!(skipped, ["nvram.dat", "pad", "tpm.dat"], "{s}");
        let d = disk_of(s, cow_image);
        assert_eq!(d["source_format"], "qcow2", "{d}");
        assert_eq!(d["warnings"], json!([]), "{d}");
        // Declared raw (the RAW volume's URI), holding qcow2: the content
        // decides, and the summary says so.
        let d = disk_of(s, raw_image);
        assert_eq!(d["source_format"], "qcow2", "{d}");
        assert_eq!(d["declared_format"], "raw", "{d}");
        assert_eq!(
            d["warnings"],
            json!([format!(
                "{raw_image}: OVF declares raw but the content is qcow2; imported as qcow2"
            )]),
            "{d}"
        );
    }
    // inspect reports the contradiction without failing, and no manifest.
    let r = inspect(&pkg);
    assert_eq!(r["verification"]["manifest"]["status"], "absent", "{r}");
    let checked: Vec<(&str, &str, &str)> = r["verification"]["disks"]
        .as_array()
        .expect("verified disks")
        .iter()
        .filter_map(|d| {
            Some((
                d["href"].as_str()?,
                d["status"].as_str()?,
                d["content_format"].as_str()?,
            ))
        })
        .collect();
    assert_eq!(
        checked,
        [(cow_image, "ok", "qcow2"), (raw_image, "mismatch", "qcow2")],
        "{r}"
    );
}

// ---------------------------------------------------------------------------
// 7: virt-v2v's test packages.

/// The descriptor of libguestfs/virt-v2v's tests/test-i-ova-subfolders.ovf
/// (a vSphere export by ovftool `build-1750787`), with the capacity of
/// the disk it is packed with: default and `ovf:` namespaces on
/// envelope/1, the streamOptimized URI, `byte * 2^20` capacity units
/// (the original says `50` `byte * 2^30` for a 10 KiB test disk).
fn virt_v2v_ovf(disk: &Disk) -> String {
    let (capacity, units) = vmware_units(disk.capacity);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-1750787" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="disk1.vmdk" ovf:id="file1" ovf:size="{size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="{units}" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="{STREAM_URI}" ovf:populatedSize="{populated}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="PG-VLAN60">
      <Description>The PG-VLAN60 network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="2K8R2EESP1_2_Medium">
    <Info>A virtual machine</Info>
    <Name>2K8R2EESP1_2_Medium</Name>
    <OperatingSystemSection ovf:id="103" vmw:osType="windows7Server64Guest">
      <Info>The kind of installed guest operating system</Info>
      <Description>Microsoft Windows Server 2008 R2 (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>2K8R2EESP1_2_Medium</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-10</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>1 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogicsas</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>9</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#,
        size = disk.size(),
        populated = disk.populated()
    )
}

#[test]
fn virt_v2v_subfolder_tar_and_zip_packages() {
    let w = Work::new();
    // test-i-ova.sh makes its disk with plain `qemu-img convert -O vmdk`
    // (monolithicSparse) under an OVF that declares streamOptimized;
    // test-i-ova-subfolders.sh writes `disk1.mf` alone, one CR LF line
    // naming only the disk, and packs with `tar -cf test.ova subfolder`
    // (GNU tar's default format, the directory's entry first).
    let a = monolithic_sparse(&w, "v2v", &MAIN);
    let ovf = stage(&w, "v2v/test-i-ova-subfolders.ovf", virt_v2v_ovf(&a));
    let mf = stage(
        &w,
        "v2v/disk1.mf",
        manifest(Alg::Sha1, LineForm::Crlf, &[("disk1.vmdk", &a.file)]),
    );
    let tar_pkg = Package::new()
        .dir("subfolder/")
        .file("subfolder/test-i-ova-subfolders.ovf", &ovf)
        .file("subfolder/disk1.vmdk", &a.file)
        .file("subfolder/disk1.mf", &mf)
        .gnu_tar(&w.path("v2v-subfolder.ova"), &[]);
    let summaries = import_both(&w, "v2v-tar", &tar_pkg, &[("disk1.vmdk", "disk1", &a)], &[]);
    for s in &summaries {
        assert_eq!(s["directory"], "subfolder", "{s}");
        assert_eq!(s["ovf"], "test-i-ova-subfolders.ovf", "{s}");
        assert_eq!(s["manifest"], "verified", "{s}");
        assert_eq!(s["manifests"], json!(["disk1.mf"]), "{s}");
        assert_eq!(disk_of(s, "disk1.vmdk")["source_format"], "vmdk", "{s}");
    }
    let r = inspect(&tar_pkg);
    assert_eq!(r["directory"], "subfolder", "{r}");
    assert_inspected(&r, Alg::Sha1, 1, &["disk1.vmdk"], "vmdk-sparse");

    // test-i-ova-formats.sh: the same files zipped (`zip -r test
    // test-i-ova-formats.ovf disk1.vmdk disk1.mf`), here by Python's
    // zipfile, deflated and stored.
    for method in ["deflated", "stored"] {
        let zip = Package::new()
            .file("test-i-ova-formats.ovf", &ovf)
            .file("disk1.vmdk", &a.file)
            .file("disk1.mf", &mf)
            .python_zip(&w.path(&format!("v2v-{method}.ova")), method);
        let summaries = import_both(
            &w,
            &format!("v2v-zip-{method}"),
            &zip,
            &[("disk1.vmdk", "disk1", &a)],
            &[],
        );
        for s in &summaries {
            assert_eq!(s["archive"], "zip", "{method}: {s}");
            assert_eq!(s["manifest"], "verified", "{method}: {s}");
        }
    }
}

// ---------------------------------------------------------------------------
// 8: open-vmdk's ova-compose.

/// The descriptor vmware/open-vmdk's ova-compose/ova-compose.py writes
/// (OVF 1.0, its only version) for a config with a root disk in `MB`
/// units, a data disk in the default `byte` units and an empty disk
/// (`disk_capacity`, `OVFEmptyDisk`): lxml's single-quoted declaration
/// and the generator comment `write_xml` inserts; NS_MAP's default
/// namespace and prefixes in its order (cim and xsi, unused, dropped by
/// `cleanup_namespaces`); `File` href/id/size; `Disk` attributes in the
/// order `diskId`, `capacity`, `capacityAllocationUnits`, `fileRef`,
/// `populatedSize`, `format`; ids counted from 0 (`file0`, `vmdisk0`);
/// the empty disk with no `fileRef` and its capacity in MB;
/// `VirtualSystem ovf:id="vm"`; the rasd children of each item sorted by
/// tag; `vmw:Config` settings from CONFIG_DEFAULTS at the end.
fn ova_compose_ovf(root: &Disk, data: &Disk, empty_mib: u64) -> String {
    format!(
        r#"<?xml version='1.0' encoding='UTF-8'?>
<!-- Generated by ova-compose 14-11-2023 22:13:20 +0000 -->
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
    <File ovf:href="root.vmdk" ovf:id="file0" ovf:size="{root_size}"/>
    <File ovf:href="data.vmdk" ovf:id="file1" ovf:size="{data_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:diskId="vmdisk0" ovf:capacity="{root_mib}" ovf:capacityAllocationUnits="byte * 2^20" ovf:fileRef="file0" ovf:populatedSize="{root_used}" ovf:format="{STREAM_URI}"/>
    <Disk ovf:diskId="vmdisk1" ovf:capacity="{data_bytes}" ovf:capacityAllocationUnits="byte" ovf:fileRef="file1" ovf:populatedSize="{data_used}" ovf:format="{STREAM_URI}"/>
    <Disk ovf:capacity="{empty_mib}" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk2" ovf:format="{STREAM_URI}"/>
  </DiskSection>
  <NetworkSection>
    <Info>Virtual Networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network Network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="vm">
    <Info>Virtual System</Info>
    <Name>compose</Name>
    <OperatingSystemSection ovf:id="100" vmw:osType="other4xLinux64Guest">
      <Info>Operating System</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual Hardware</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>compose</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-20</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Virtual CPUs</rasd:Description>
        <rasd:ElementName>cpus</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Virtual Memory</rasd:Description>
        <rasd:ElementName>memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>scsi1</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:Description>Hard Disk</rasd:Description>
        <rasd:ElementName>rootdisk</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk0</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="virtualDiskFormat" vmw:value="native_512"/>
      </Item>
      <Item>
        <rasd:AddressOnParent>1</rasd:AddressOnParent>
        <rasd:Description>Hard Disk</rasd:Description>
        <rasd:ElementName>datadisk</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="virtualDiskFormat" vmw:value="native_512"/>
      </Item>
      <Item>
        <rasd:AddressOnParent>2</rasd:AddressOnParent>
        <rasd:Description>Hard Disk</rasd:Description>
        <rasd:ElementName>scratchdisk</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk2</rasd:HostResource>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>Ethernet Adapter</rasd:Description>
        <rasd:ElementName>ethernet1</rasd:ElementName>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="wakeOnLanEnabled" vmw:value="false"/>
        <vmw:Config ovf:required="false" vmw:key="connectable.allowGuestControl" vmw:value="true"/>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="cpuHotAddEnabled" vmw:value="false"/>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:Config ovf:required="false" vmw:key="tools.toolsUpgradePolicy" vmw:value="manual"/>
      <vmw:Config ovf:required="false" vmw:key="bootOptions.efiSecureBootEnabled" vmw:value="true"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#,
        root_size = root.size(),
        data_size = data.size(),
        root_mib = root.capacity / MIB,
        root_used = root.populated(),
        data_bytes = data.capacity,
        data_used = data.populated(),
    )
}

#[test]
fn open_vmdk_ova_compose_sha512_with_an_empty_disk() {
    let w = Work::new();
    let root = converted(&w, "compose-root", &MAIN, Source::Vmdk);
    let data = converted(&w, "compose-data", &ODD, Source::Vmdk);
    let empty_mib = 24;
    let ovf = stage(
        &w,
        "compose/compose.ovf",
        ova_compose_ovf(&root, &data, empty_mib),
    );
    // `ova-compose -i compose.yaml -o compose.ova --checksum-type sha512`:
    // `write_manifest` digests the OVF and every File, one
    // `SHA512(name)= hex` line each; `main` packs `[ovf, mf] + files` with
    // `tar --format=gnu -h --owner=0 --group=0 --mode=0644 -cf`.
    let mf = stage(
        &w,
        "compose/compose.mf",
        manifest(
            Alg::Sha512,
            LineForm::Ovftool,
            &[
                ("compose.ovf", &ovf),
                ("root.vmdk", &root.file),
                ("data.vmdk", &data.file),
            ],
        ),
    );
    let pkg = Package::new()
        .file("compose.ovf", &ovf)
        .file("compose.mf", &mf)
        .file("root.vmdk", &root.file)
        .file("data.vmdk", &data.file)
        .gnu_tar(
            &w.path("compose.ova"),
            &["--format=gnu", "--owner=0", "--group=0", "--mode=0644"],
        );
    // The empty disk is created blank, named by its disk id.
    let empty = empty_mib * MIB;
    let summaries = import_both(
        &w,
        "compose",
        &pkg,
        &[("root.vmdk", "root", &root), ("data.vmdk", "data", &data)],
        &[("vmdisk2", empty)],
    );
    for s in &summaries {
        assert_eq!(s["manifest"], "verified", "{s}");
        assert_eq!(s["manifests"], json!(["compose.mf"]), "{s}");
    }
    let r = inspect(&pkg);
    assert_inspected(&r, Alg::Sha512, 3, &["root.vmdk", "data.vmdk"], "vmdk");
    assert_eq!(r["disks"][2]["disk_id"], "vmdisk2", "{r}");
    assert_eq!(r["disks"][2]["blank"], true, "{r}");
    assert_eq!(r["disks"][2]["capacity"].as_u64(), Some(empty), "{r}");
}

// ---------------------------------------------------------------------------
// 9: Cisco IOSv, as COT writes it.

/// The descriptor of a Cisco IOSv package as the Common OVF Tool writes
/// it, from glennmatthews/cot's COT/tests/iosv.ovf: every element
/// `ovf:`-prefixed and no default namespace; the blank `flash2` disk
/// first in the DiskSection, with no `ovf:fileRef`, `128` `byte * 2^20`;
/// the image's `File` and `Disk` sharing the id
/// `vios-adventerprisek9-m.vmdk`, its capacity in `byte`; DeploymentOption
/// profiles; the `ovf:/disk/flash2` host resource of an optional item.
fn iosv_ovf(disk: &Disk) -> String {
    format!(
        r#"<?xml version='1.0' encoding='utf-8'?>
<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <ovf:References>
    <ovf:File ovf:href="input.vmdk" ovf:id="vios-adventerprisek9-m.vmdk" ovf:size="{size}" />
  </ovf:References>
  <ovf:DiskSection>
    <ovf:Info>Virtual disk information</ovf:Info>
    <ovf:Disk ovf:capacity="128" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="flash2" ovf:format="{STREAM_URI}" />
    <ovf:Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vios-adventerprisek9-m.vmdk" ovf:fileRef="vios-adventerprisek9-m.vmdk" ovf:format="{STREAM_URI}" />
  </ovf:DiskSection>
  <ovf:NetworkSection>
    <ovf:Info>The list of logical networks that NICs can be assigned to</ovf:Info>
    <ovf:Network ovf:name="GigabitEthernet0_0">
      <ovf:Description>Data network 1</ovf:Description>
    </ovf:Network>
    <ovf:Network ovf:name="GigabitEthernet0_1">
      <ovf:Description>Data network 2</ovf:Description>
    </ovf:Network>
  </ovf:NetworkSection>
  <ovf:DeploymentOptionSection>
    <ovf:Info>Predefined Configuration Profiles</ovf:Info>
    <ovf:Configuration ovf:default="true" ovf:id="1CPU-384MB-2NIC">
      <ovf:Label>Small</ovf:Label>
      <ovf:Description>Minimal hardware profile - 1 vCPU, 384 MB RAM, 2 NICs</ovf:Description>
    </ovf:Configuration>
  </ovf:DeploymentOptionSection>
  <ovf:VirtualSystem ovf:id="com.cisco.iosv">
    <ovf:Info>IOSv virtual machine</ovf:Info>
    <ovf:Name>Cisco IOSv</ovf:Name>
    <ovf:OperatingSystemSection ovf:id="100" vmw:osType="otherGuest">
      <ovf:Info>The kind of installed guest operating system</ovf:Info>
      <ovf:Description>IOSv</ovf:Description>
    </ovf:OperatingSystemSection>
    <ovf:VirtualHardwareSection>
      <ovf:Info>Virtual hardware requirements</ovf:Info>
      <ovf:System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-08 Cisco:Internal:VMCloud-01</vssd:VirtualSystemType>
      </ovf:System>
      <ovf:Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>1 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </ovf:Item>
      <ovf:Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>384 MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>384</rasd:VirtualQuantity>
      </ovf:Item>
      <ovf:Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>IDE/VirtIO Controller</rasd:Description>
        <rasd:ElementName>IDE Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>virtio</rasd:ResourceSubType>
        <rasd:ResourceType>5</rasd:ResourceType>
      </ovf:Item>
      <ovf:Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk Drive</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vios-adventerprisek9-m.vmdk</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </ovf:Item>
      <ovf:Item ovf:required="false">
        <rasd:AddressOnParent>1</rasd:AddressOnParent>
        <rasd:Description>Disk device corresponding to flash2:; may be used for bootstrap configuration.</rasd:Description>
        <rasd:ElementName>flash2</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/flash2</rasd:HostResource>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </ovf:Item>
      <ovf:Item>
        <rasd:AddressOnParent>11</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>GigabitEthernet0_0</rasd:Connection>
        <rasd:Description>NIC representing GigabitEthernet0/0 interface</rasd:Description>
        <rasd:ElementName>GigabitEthernet0/0</rasd:ElementName>
        <rasd:InstanceID>11</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </ovf:Item>
    </ovf:VirtualHardwareSection>
  </ovf:VirtualSystem>
</ovf:Envelope>
"#,
        size = disk.size(),
        capacity = disk.capacity
    )
}

#[test]
fn cisco_iosv_with_a_blank_flash_disk() {
    let w = Work::new();
    let a = converted(&w, "iosv", &MAIN, Source::Vmdk);
    let ovf = stage(&w, "iosv/iosv.ovf", iosv_ovf(&a));
    // COT's `generate_manifest`: `SHA1(name)= hex`, the OVF then every
    // File; its `tar`: Python's tarfile (`tarfile.open(tar_file, 'w',
    // dereference=True)`, PAX by default on Python 3), the OVF first, the
    // manifest, then the References' files.
    let mf = stage(
        &w,
        "iosv/iosv.mf",
        manifest(
            Alg::Sha1,
            LineForm::Ovftool,
            &[("iosv.ovf", &ovf), ("input.vmdk", &a.file)],
        ),
    );
    let pkg = Package::new()
        .file("iosv.ovf", &ovf)
        .file("iosv.mf", &mf)
        .file("input.vmdk", &a.file)
        .python_tar(
            &w.path("iosv.ova"),
            TarStyle {
                format: "pax",
                uname: "root",
                uid: 0,
                gname: "root",
                gid: 0,
            },
        );
    let summaries = import_both(
        &w,
        "iosv",
        &pkg,
        &[("input.vmdk", "input", &a)],
        &[("flash2", 128 * MIB)],
    );
    for s in &summaries {
        assert_eq!(s["manifest"], "verified", "{s}");
        let d = disk_of(s, "input.vmdk");
        assert_eq!(d["disk_id"], "vios-adventerprisek9-m.vmdk", "{d}");
        assert_eq!(d["source_format"], "vmdk", "{d}");
    }
}

// ---------------------------------------------------------------------------
// 10: VMware's OVF 0.9.

/// An OVF 0.9 descriptor as VMware wrote it before OVF 1.0 (ESX 3.5,
/// ovftool 1.0), from sassoftware/catalog-service's
/// catalogService_test/vmwaretest.py (`testSanitizeOvfDescriptor`, a
/// VMware export of a "ginkgo" VM): only the `Envelope` is
/// `ovf:`-prefixed, in the namespace
/// `http://www.vmware.com/schema/ovf/1/envelope`, its children unqualified
/// with no default namespace; `ovf:version="0.9"`; typed `Section`s and
/// a `Content` for the virtual system; the capacity in bytes; the
/// `http://www.vmware.com/specifications/vmdk.html#sparse` format URI;
/// `vssd:InstanceId` and `rasd:InstanceId`, `MegaHertz`, `MegaBytes`,
/// `/disk/vmdisk1`.
fn ovf_0_9(href: &str, disk: &Disk) -> String {
    format!(
        r#"<ovf:Envelope xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://www.vmware.com/schema/ovf/1/envelope" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ovf:version="0.9">
  <References>
    <File ovf:href="{href}" ovf:id="file1" ovf:size="{size}"/>
  </References>
  <Section xsi:type="ovf:DiskSection_Type">
    <Info>Meta-information about the virtual disks</Info>
    <Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="{SPARSE_09_URI}"/>
  </Section>
  <Section xsi:type="ovf:NetworkSection_Type">
    <Info>The list of logical networks</Info>
    <Network ovf:name="bridged">
      <Description>The bridged network</Description>
    </Network>
  </Section>
  <Content ovf:id="ginkgo" xsi:type="ovf:VirtualSystem_Type">
    <Info>A virtual machine</Info>
    <Section ovf:id="36" xsi:type="ovf:OperatingSystemSection_Type">
      <Info>The kind of installed guest operating system</Info>
    </Section>
    <Section xsi:type="ovf:VirtualHardwareSection_Type">
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:InstanceId>0</vssd:InstanceId>
        <vssd:VirtualSystemIdentifier>ginkgo</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-04</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>1 virtual CPU(s)</rasd:Caption>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:InstanceId>1</rasd:InstanceId>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:AllocationUnits>MegaHertz</rasd:AllocationUnits>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Caption>256MB of memory</rasd:Caption>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:InstanceId>2</rasd:InstanceId>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:VirtualQuantity>256</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Caption>scsiController0</rasd:Caption>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:InstanceId>4</rasd:InstanceId>
        <rasd:ResourceType>6</rasd:ResourceType>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:Address>0</rasd:Address>
        <rasd:BusNumber>0</rasd:BusNumber>
      </Item>
      <Item>
        <rasd:Caption>disk1</rasd:Caption>
        <rasd:InstanceId>1001</rasd:InstanceId>
        <rasd:ResourceType>17</rasd:ResourceType>
        <rasd:HostResource>/disk/vmdisk1</rasd:HostResource>
        <rasd:Parent>4</rasd:Parent>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
      </Item>
    </Section>
    <Section ovf:required="false" xsi:type="ovf:AnnotationSection_Type">
      <Info>A human-readable annotation</Info>
      <Annotation></Annotation>
    </Section>
  </Content>
</ovf:Envelope>
"#,
        size = disk.size(),
        capacity = disk.capacity
    )
}

#[test]
fn vmware_ovf_0_9_monolithic_sparse_disk() {
    let w = Work::new();
    let a = monolithic_sparse(&w, "ginkgo", &ODD);
    let href = "ginkgo-1-x86.vmdk";
    let ovf = stage(&w, "ginkgo/ginkgo.ovf", ovf_0_9(href, &a));
    let mf = stage(
        &w,
        "ginkgo/ginkgo.mf",
        manifest(
            Alg::Sha1,
            LineForm::Ovftool,
            &[("ginkgo.ovf", &ovf), (href, &a.file)],
        ),
    );
    let pkg = Package::new()
        .file("ginkgo.ovf", &ovf)
        .file("ginkgo.mf", &mf)
        .file(href, &a.file)
        .python_tar(&w.path("ginkgo.ova"), OVFTOOL_TAR);
    let summaries = import_both(&w, "ginkgo", &pkg, &[(href, "ginkgo-1-x86", &a)], &[]);
    for s in &summaries {
        assert_eq!(s["manifest"], "verified", "{s}");
        let d = disk_of(s, href);
        assert_eq!(d["source_format"], "vmdk", "{d}");
        assert_eq!(d["warnings"], json!([]), "{d}");
    }
    let r = inspect(&pkg);
    assert_eq!(r["name"], "ginkgo", "{r}");
    assert_inspected(&r, Alg::Sha1, 2, &[href], "vmdk-sparse");
}
