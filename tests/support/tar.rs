//! Tar archives: GNU tar for the archives real tools write, and a
//! hand-written writer for layouts GNU tar refuses to produce (PAX size
//! desynchronization, `../` names, duplicates).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use super::tool;

/// The archive formats GNU tar writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarFormat {
    /// POSIX.1-1988 ustar.
    Ustar,
    /// GNU (long names as `././@LongLink` entries).
    Gnu,
    /// POSIX.1-2001 pax (extended `x` headers).
    Pax,
}

impl TarFormat {
    fn flag(self) -> &'static str {
        match self {
            TarFormat::Ustar => "--format=ustar",
            TarFormat::Gnu => "--format=gnu",
            TarFormat::Pax => "--format=pax",
        }
    }
}

/// Writes `out` with GNU tar from `entries` (`(name, file)`), in that
/// order. Files are staged as symlinks under `stage` (which must not exist)
/// and dereferenced, so large disks are not copied.
pub fn gnu_tar(format: TarFormat, stage: &Path, out: &Path, entries: &[(String, &Path)]) {
    fs::create_dir(stage).expect("create stage dir");
    for (name, file) in entries {
        let abs = fs::canonicalize(file).expect("canonicalize entry file");
        symlink(abs, stage.join(name)).expect("stage entry");
    }
    let flags = [
        "-c",
        "--dereference",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "--mtime=@1700000000",
        "--mode=0644",
        format.flag(),
        "-f",
    ];
    let mut args: Vec<&OsStr> = flags.iter().map(OsStr::new).collect();
    args.push(out.as_os_str());
    args.push(OsStr::new("-C"));
    args.push(stage.as_os_str());
    args.push(OsStr::new("--"));
    for (name, _) in entries {
        args.push(OsStr::new(name.as_str()));
    }
    tool("tar", &args);
}

/// One line of `tar -tvR`: the entry name, its size and the byte offset of
/// its (last, ustar) header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Entry name.
    pub name: String,
    /// Entry size in bytes.
    pub size: u64,
    /// Offset of the entry's ustar header; data starts 512 bytes later.
    pub header_offset: u64,
}

/// Lists `archive` with GNU tar (`-tv --block-number`), the oracle for what
/// a correct reader sees.
pub fn list(archive: &Path) -> Vec<Listed> {
    let text = tool(
        "tar",
        &[
            OsStr::new("-tv"),
            OsStr::new("--block-number"),
            OsStr::new("--numeric-owner"),
            OsStr::new("-f"),
            archive.as_os_str(),
        ],
    );
    let mut out = Vec::new();
    for line in text.lines() {
        // block 2: -rw-r--r-- 0/0         3 2023-11-14 22:13 name
        let Some(rest) = line.strip_prefix("block ") else {
            panic!("unexpected tar listing line {line:?}")
        };
        let (block, rest) = rest.split_once(": ").expect("block number");
        if rest.starts_with("** ") {
            continue; // end-of-archive marker
        }
        // mode owner size date time name
        let mut it = rest.split_whitespace();
        let _mode = it.next();
        let _owner = it.next();
        let size: u64 = it.next().expect("size").parse().expect("size number");
        let date = it.next().expect("date");
        let time = it.next().expect("time");
        let marker = format!("{date} {time} ");
        let name = rest
            .split_once(&marker)
            .map(|(_, n)| n.to_owned())
            .expect("name");
        out.push(Listed {
            name,
            size,
            header_offset: block.parse::<u64>().expect("block") * 512,
        });
    }
    out
}

/// A tar archive written header by header, for hostile layouts.
#[derive(Debug, Default)]
pub struct TarWriter {
    out: Vec<u8>,
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    assert_eq!(text.len(), digits, "value {value} does not fit the field");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

/// A ustar header block for `name` (≤ 100 bytes) declaring `size` bytes.
pub fn ustar_header(name: &str, size: u64, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    assert!(name.len() <= 100, "name too long for a plain ustar header");
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

/// One PAX record, `"<len> <key>=<value>\n"` with its own length counted.
pub fn pax_record(key: &str, value: &str) -> String {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    format!("{len} {key}={value}\n")
}

impl TarWriter {
    /// An empty archive.
    pub fn new() -> TarWriter {
        TarWriter::default()
    }

    /// Appends a raw header block.
    pub fn header(&mut self, header: [u8; 512]) -> &mut TarWriter {
        self.out.extend_from_slice(&header);
        self
    }

    /// Appends `data` padded with zeros to a whole block.
    pub fn data(&mut self, data: &[u8]) -> &mut TarWriter {
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    /// Appends a regular file entry.
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut TarWriter {
        self.header(ustar_header(name, data.len() as u64, b'0'));
        self.data(data)
    }

    /// Appends a PAX extended header (`x`) applying to the next entry.
    pub fn pax(&mut self, records: &[(&str, &str)]) -> &mut TarWriter {
        let body: String = records.iter().map(|(k, v)| pax_record(k, v)).collect();
        self.header(ustar_header("./PaxHeaders/entry", body.len() as u64, b'x'));
        self.data(body.as_bytes())
    }

    /// Appends the end-of-archive marker (two zero blocks).
    pub fn end(&mut self) -> &mut TarWriter {
        self.out.extend_from_slice(&[0u8; 1024]);
        self
    }

    /// Writes the archive to `path`.
    pub fn write_to(&self, path: &Path) {
        fs::write(path, &self.out).expect("write archive");
    }
}
