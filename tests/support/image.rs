//! Deterministic raw source images and their conversions by `qemu-img`
//! and `gzip`; `qemu-img` also judges the targets ovaio writes.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{file_len, tool};

/// What a run of the source image holds.
#[derive(Debug, Clone, Copy)]
pub enum Fill {
    /// Incompressible bytes from a seeded PRNG.
    Random(u64),
    /// Explicitly written zero bytes: allocated in the raw file.
    Zeros,
    /// Compressible text that names its own offset.
    Text,
}

/// One written run of the source image; everything else is a hole.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Guest offset of the first byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Contents.
    pub fill: Fill,
}

/// A source image: virtual size and its written runs.
#[derive(Debug)]
pub struct Layout {
    /// Virtual size in bytes.
    pub size: u64,
    /// Written runs, in order, not overlapping.
    pub runs: &'static [Run],
}

const MIB: u64 = 1 << 20;

/// 6 MiB (a whole number of MiB, so OVFs can state it in `byte * 2^20`),
/// with runs that start and end off cluster boundaries, an allocated
/// all-zero run covering a whole 64 KiB cluster between data, sub-cluster
/// data inside a hole, a run crossing several clusters and a compressible
/// tail that ends at the last byte.
pub const MAIN: Layout = Layout {
    size: 6 * MIB,
    runs: &[
        Run {
            offset: 0,
            len: 300_000,
            fill: Fill::Random(1),
        },
        Run {
            offset: 300_000,
            len: 131_072,
            fill: Fill::Zeros,
        },
        Run {
            offset: 431_072,
            len: 168_928,
            fill: Fill::Random(2),
        },
        Run {
            offset: 2 * MIB + 4096,
            len: 8192,
            fill: Fill::Text,
        },
        Run {
            offset: 3 * MIB - 512,
            len: 3 * 65536 + 17,
            fill: Fill::Random(3),
        },
        Run {
            offset: 5 * MIB,
            len: MIB,
            fill: Fill::Text,
        },
    ],
};

/// 3 MiB + 3584 bytes: a virtual size that is a whole number of sectors
/// but not of 64 KiB clusters or grains, with data in the partial last
/// cluster.
pub const ODD: Layout = Layout {
    size: 3 * MIB + 3584,
    runs: &[
        Run {
            offset: 0,
            len: 70_000,
            fill: Fill::Random(11),
        },
        Run {
            offset: MIB,
            len: 60_000,
            fill: Fill::Text,
        },
        Run {
            offset: MIB + 60_000,
            len: 140_000,
            fill: Fill::Zeros,
        },
        Run {
            offset: MIB + 200_000,
            len: 60_000,
            fill: Fill::Text,
        },
        Run {
            offset: 3 * MIB + 3584 - 3000,
            len: 3000,
            fill: Fill::Random(12),
        },
    ],
};

/// A small image for the hand-built archives: 256 KiB, one hole.
pub const SMALL: Layout = Layout {
    size: 256 << 10,
    runs: &[
        Run {
            offset: 0,
            len: 70_000,
            fill: Fill::Random(21),
        },
        Run {
            offset: 196_608,
            len: 65_536,
            fill: Fill::Text,
        },
    ],
};

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fill_bytes(run: &Run) -> Vec<u8> {
    let len = usize::try_from(run.len).expect("run length");
    match run.fill {
        Fill::Zeros => vec![0; len],
        Fill::Random(seed) => {
            let mut state = seed ^ run.offset.rotate_left(17);
            let mut out = Vec::with_capacity(len + 8);
            while out.len() < len {
                out.extend_from_slice(&splitmix(&mut state).to_le_bytes());
            }
            out.truncate(len);
            out
        }
        Fill::Text => {
            let mut out = Vec::with_capacity(len + 64);
            let mut pos = run.offset;
            while out.len() < len {
                let line = format!("ovaio test pattern at guest offset {pos:012}\n");
                pos += line.len() as u64;
                out.extend_from_slice(line.as_bytes());
            }
            out.truncate(len);
            out
        }
    }
}

impl Layout {
    /// The whole image in memory (holes as zeros).
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; usize::try_from(self.size).expect("size")];
        for run in self.runs {
            let start = usize::try_from(run.offset).expect("offset");
            let data = fill_bytes(run);
            out[start..start + data.len()].copy_from_slice(&data);
        }
        out
    }

    /// Writes the image as a sparse raw file: runs written (zeros too),
    /// holes left unallocated.
    pub fn write_raw(&self, path: &Path) -> PathBuf {
        let f = File::create(path).expect("create raw image");
        f.set_len(self.size).expect("size raw image");
        for run in self.runs {
            assert!(run.offset + run.len <= self.size, "run beyond the image");
            f.write_all_at(&fill_bytes(run), run.offset)
                .expect("write run");
        }
        f.sync_all().expect("sync raw image");
        path.to_owned()
    }
}

/// The source formats an OVA disk entry can come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The raw image as is.
    Raw,
    /// `gzip -c` of the raw image (`ovf:compression="gzip"`).
    Gzip,
    /// Two gzip members (each half gzipped, concatenated).
    GzipMulti,
    /// `qemu-img convert -O qcow2` (v3, compat 1.1).
    Qcow2V3,
    /// `qemu-img convert -O qcow2 -o compat=0.10` (v2).
    Qcow2V2,
    /// `qemu-img convert -O qcow2 -c` (zlib-compressed clusters).
    Qcow2Zlib,
    /// `qemu-img convert -O qcow2 -c -o compression_type=zstd`.
    Qcow2Zstd,
    /// `qemu-img convert -O vmdk -o subformat=streamOptimized`.
    Vmdk,
}

/// OVF format URI for VMDK streamOptimized.
pub const VMDK_URI: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";
/// OVF format URI for qcow2, as oVirt writes it.
pub const QCOW2_URI: &str = "http://www.gnome.org/~markmc/qcow-image-format.html";

impl Source {
    /// Every source format.
    pub const ALL: [Source; 8] = [
        Source::Raw,
        Source::Gzip,
        Source::GzipMulti,
        Source::Qcow2V3,
        Source::Qcow2V2,
        Source::Qcow2Zlib,
        Source::Qcow2Zstd,
        Source::Vmdk,
    ];

    /// A file extension for an href of this format.
    pub fn extension(self) -> &'static str {
        match self {
            Source::Raw | Source::Gzip | Source::GzipMulti => "img",
            Source::Vmdk => "vmdk",
            _ => "qcow2",
        }
    }

    /// `ovf:format` for the Disk element (none for raw).
    pub fn format_uri(self) -> Option<&'static str> {
        match self {
            Source::Raw | Source::Gzip | Source::GzipMulti => None,
            Source::Vmdk => Some(VMDK_URI),
            _ => Some(QCOW2_URI),
        }
    }

    /// Whether the entry carries `ovf:compression="gzip"`.
    pub fn gzip(self) -> bool {
        matches!(self, Source::Gzip | Source::GzipMulti)
    }

    /// `source_format` as the import summary names it.
    pub fn json_format(self) -> &'static str {
        match self {
            Source::Raw | Source::Gzip | Source::GzipMulti => "raw",
            Source::Vmdk => "vmdk",
            _ => "qcow2",
        }
    }

    /// `compression` as the import summary names it.
    pub fn json_compression(self) -> &'static str {
        if self.gzip() { "gzip" } else { "none" }
    }

    /// Converts the raw image `raw` into this format at `out`.
    pub fn convert(self, raw: &Path, out: &Path) -> PathBuf {
        let qemu = |extra: &[&str]| {
            let mut args: Vec<&OsStr> = ["convert", "-q", "-f", "raw"]
                .iter()
                .map(OsStr::new)
                .collect();
            args.extend(extra.iter().map(OsStr::new));
            args.push(raw.as_os_str());
            args.push(out.as_os_str());
            tool("qemu-img", &args);
        };
        match self {
            Source::Raw => {
                // A sparse copy: keep holes, keep the allocated zero run.
                tool(
                    "cp",
                    &[
                        OsStr::new("--sparse=always"),
                        raw.as_os_str(),
                        out.as_os_str(),
                    ],
                );
            }
            Source::Gzip => {
                let data = fs::read(raw).expect("read raw");
                fs::write(out, gzip(&data)).expect("write gzip");
            }
            Source::GzipMulti => {
                let data = fs::read(raw).expect("read raw");
                // Split off a sector boundary to catch members assumed aligned.
                let half = data.len() / 2 + 12_345;
                let mut both = gzip(&data[..half]);
                both.extend_from_slice(&gzip(&data[half..]));
                fs::write(out, both).expect("write gzip");
            }
            Source::Qcow2V3 => qemu(&["-O", "qcow2", "-o", "compat=1.1"]),
            Source::Qcow2V2 => qemu(&["-O", "qcow2", "-o", "compat=0.10"]),
            Source::Qcow2Zlib => qemu(&["-O", "qcow2", "-c"]),
            Source::Qcow2Zstd => qemu(&["-O", "qcow2", "-c", "-o", "compression_type=zstd"]),
            Source::Vmdk => qemu(&["-O", "vmdk", "-o", "subformat=streamOptimized"]),
        }
        out.to_owned()
    }

    /// The format `qemu-img` reads the converted file as (gzip is
    /// decompressed by the caller first).
    pub fn qemu_format(self) -> &'static str {
        match self {
            Source::Raw | Source::Gzip | Source::GzipMulti => "raw",
            Source::Vmdk => "vmdk",
            _ => "qcow2",
        }
    }
}

/// `gzip -c -n` of `data`, through the real tool.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    pipe_through("gzip", &["-c", "-n"], data)
}

/// `gzip -d -c` of `data`, through the real tool.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    pipe_through("gzip", &["-d", "-c"], data)
}

fn pipe_through(program: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("read");
    writer.join().expect("writer").expect("write");
    assert!(child.wait().expect("wait").success(), "{program} failed");
    out
}

/// A target format ovaio writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Sparse raw file.
    Raw,
    /// qcow2 file.
    Qcow2,
}

impl Target {
    /// The name used on the command line, in file names and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Target::Raw => "raw",
            Target::Qcow2 => "qcow2",
        }
    }
}

/// `qemu-img info --output=json` of `path` read as `format`.
pub fn info(path: &Path, format: &str) -> Value {
    let text = tool(
        "qemu-img",
        &[
            OsStr::new("info"),
            OsStr::new("--output=json"),
            OsStr::new("-f"),
            OsStr::new(format),
            path.as_os_str(),
        ],
    );
    serde_json::from_str(&text).expect("qemu-img info JSON")
}

/// Panics unless `qemu-img compare` finds `image` (read as `format`) equal
/// to the raw image `raw`.
pub fn assert_same_content(raw: &Path, image: &Path, format: &str) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", format])
        .arg(raw)
        .arg(image)
        .output()
        .expect("run qemu-img compare");
    assert!(
        out.status.success(),
        "qemu-img compare {} {} ({format}): {}{}",
        raw.display(),
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Panics unless `qemu-img check` finds the qcow2 `image` clean.
pub fn assert_qcow2_clean(image: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(image)
        .output()
        .expect("run qemu-img check");
    assert!(
        out.status.success(),
        "qemu-img check {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Full verification of one imported target against the raw source `raw`
/// of virtual size `capacity`: a raw target is exactly `capacity` bytes, a
/// qcow2 target is a clean qcow2 of that virtual size, and `qemu-img
/// compare` finds the content equal.
pub fn assert_target(raw: &Path, target: &Path, format: Target, capacity: u64) {
    assert!(target.is_file(), "target {} missing", target.display());
    match format {
        Target::Raw => {
            assert_eq!(
                file_len(target),
                capacity,
                "raw target {} length",
                target.display()
            );
        }
        Target::Qcow2 => {
            assert_qcow2_clean(target);
            let info = info(target, "qcow2");
            assert_eq!(info["format"], "qcow2");
            assert_eq!(
                info["virtual-size"].as_u64(),
                Some(capacity),
                "qcow2 target {} virtual size",
                target.display()
            );
            assert!(
                info["backing-filename"].is_null(),
                "qcow2 target has a backing file"
            );
        }
    }
    assert_same_content(raw, target, format.name());
}
