//! Whether a package source is a tar archive at all.
//!
//! A user's first mistake is often to hand `import` or `inspect` a bare
//! disk image, a compressed `.ova.gz` or a text file. The tar demux
//! rejects those on their first header block with a checksum message that
//! says nothing useful, so both pipelines keep the first block of the
//! stream in a [`PackageHead`] and, when the demux rejects that very
//! block, name what the bytes look like instead: the content probe import
//! uses for disks ([`crate::codec::probe`]), a few compressors' magics,
//! and text. Errors later in the stream keep their tar messages: a package
//! whose first header is sound is a tar archive, however damaged.
//!
//! A package compressed as a whole is decompressed before the demux sees
//! it ([`crate::ova::unpack`]); then the head is the decompressed stream's,
//! and the message says what the compressed file holds.

use crate::codec::probe::{self, Format};
use crate::error::{Error, ErrorKind};
use crate::ova::decompress::Compression;
use crate::ova::demux::TarError;

/// Size of the block judged: one tar header.
const BLOCK: usize = 512;

/// The first block of a package stream, kept until the tar demux has
/// judged it.
#[derive(Debug, Default)]
pub struct PackageHead {
    /// At most [`BLOCK`] bytes: the start of the stream.
    bytes: Vec<u8>,
    /// The compression the stream was decompressed from.
    outer: Option<Compression>,
}

impl PackageHead {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Says that the stream observed is the decompressed content of a
    /// package compressed with `c`.
    pub fn decompressed_from(&mut self, c: Compression) {
        self.outer = Some(c);
    }

    /// Records the start of the stream from the next chunk fed to the
    /// demux; a no-op once the first block is complete.
    pub fn observe(&mut self, chunk: &[u8]) {
        let take = (BLOCK - self.bytes.len()).min(chunk.len());
        self.bytes.extend_from_slice(&chunk[..take]);
    }

    /// The error to report for `e`, a demux error: when it rejects the
    /// first block (not a tar header, or a source that ends within it),
    /// an error naming what the source looks like instead; otherwise `e`
    /// as it is.
    pub fn tar_error(&self, e: TarError) -> Error {
        if !rejects_first_block(&e) {
            return e.into();
        }
        match self.outer {
            Some(c) => compressed_not_an_ova(c, &self.bytes),
            None => not_an_ova(&self.bytes),
        }
    }

    /// The error for a stream that is a tar archive holding no entry at
    /// all: two zero blocks, which is also how a blank raw disk starts.
    pub fn no_entries(&self) -> Error {
        let why = "it holds no tar entries (an empty tar archive, or data that starts with \
             zero blocks, as a blank raw disk image does)";
        match self.outer {
            Some(c) => not_ova(format!("it is compressed with {c}; decompressed, {why}")),
            None => not_ova(why),
        }
    }
}

/// Whether the demux refused the stream on its first block: a checksum
/// that does not verify (any header written by tar does), a zero block
/// followed by something other than a second zero block, or a source
/// that ended before one whole header.
fn rejects_first_block(e: &TarError) -> bool {
    match e {
        TarError::BadChecksum { offset: 0, .. } | TarError::LoneZeroBlock { offset: 0 } => true,
        TarError::BadField {
            offset: 0,
            field: "checksum",
            ..
        } => true,
        TarError::Truncated {
            offset,
            entry: None,
            what,
        } => *offset < BLOCK as u64 || (*offset == BLOCK as u64 && *what == "the first header"),
        _ => false,
    }
}

fn not_ova(why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidFormat,
        format!("not an OVA package (a tar archive): {why}"),
    )
}

/// What to do with a disk image in place of a package.
const DISK_HINT: &str = "to use it as one disk, copy it to a volume with `qemu-img convert`, \
     or make an OVA of it with `ovaio export --name NAME --disk disk1.qcow2=FILE -o NAME.ova`";

/// The same for a format `ovaio export` does not read.
const CONVERT_HINT: &str = "to use it as one disk, copy it with `qemu-img convert` \
     (to raw or qcow2, which `ovaio export --name` can make an OVA of)";

/// Names what `head`, the start of the decompressed content of a package
/// compressed with `outer`, looks like (a gzip-compressed disk image, an
/// archive compressed twice).
pub fn compressed_not_an_ova(outer: Compression, head: &[u8]) -> Error {
    let why = if head.is_empty() {
        "it is empty".to_owned()
    } else if let Some(tool) =
        compressor(head).or((probe::probe(head) == Format::Gzip).then_some("gzip"))
    {
        format!(
            "it is compressed again, with {tool}; ovaio undoes one compression of a package, decompress it once first"
        )
    } else if head.starts_with(b"PK\x03\x04") {
        "it looks like a zip archive; ovaio reads a zip package only uncompressed".to_owned()
    } else {
        // What the bare bytes would be called, without the prefix.
        let e = not_an_ova(head).to_string();
        e.strip_prefix("not an OVA package (a tar archive): ")
            .unwrap_or(&e)
            .to_owned()
    };
    not_ova(format!(
        "it is compressed with {outer}; decompressed, {why}"
    ))
}

/// Names what `head`, the start of a source that is not a tar archive,
/// looks like, and what to do with it.
pub fn not_an_ova(head: &[u8]) -> Error {
    if head.is_empty() {
        return not_ova("it is empty");
    }
    if let Some(tool) = compressor(head) {
        let hint = if tool == "bzip2" {
            "ovaio decompresses gzip, xz and zstd but not bzip2: decompress it first (bunzip2)"
        } else {
            "decompress it first"
        };
        return not_ova(format!("it is compressed with {tool}; {hint}"));
    }
    if head.starts_with(b"PK\x03\x04") {
        return not_ova("it looks like a zip archive; an OVA is a tar archive");
    }
    match probe::probe(head) {
        Format::Gzip => not_ova("it is compressed with gzip; decompress it first (gunzip)"),
        Format::Qcow2 => not_ova(format!("it looks like a qcow2 disk image; {DISK_HINT}")),
        Format::Raw if head.iter().all(|&b| b == 0) => not_ova(format!(
            "it starts with zero bytes where a tar header belongs, as a raw disk image may; {DISK_HINT}"
        )),
        Format::Raw => match text(head) {
            Some(Text::Ovf) => not_ova(
                "it looks like an OVF descriptor; an OVA is a tar archive holding the \
                 descriptor and its disks",
            ),
            Some(Text::Other) => not_ova("it looks like text"),
            None => not_ova(format!(
                "it looks like a raw disk image or other binary data; {DISK_HINT}"
            )),
        },
        other => not_ova(format!(
            "it looks like a {} disk image; {CONVERT_HINT}",
            other.description()
        )),
    }
}

/// Compressors other than gzip (which the disk probe knows) whose output
/// is mistaken for an OVA: `.ova.bz2`, or xz and zstd inside a compressed
/// package.
fn compressor(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"\xfd7zXZ\0") {
        Some("xz")
    } else if head.starts_with(b"\x28\xb5\x2f\xfd") {
        Some("zstd")
    } else if head.len() >= 4 && head.starts_with(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
        Some("bzip2")
    } else {
        None
    }
}

/// Kinds of text worth telling apart.
#[derive(Debug, PartialEq, Eq)]
enum Text {
    /// An OVF descriptor given alone.
    Ovf,
    /// Anything else readable.
    Other,
}

/// Whether `head` reads as text: UTF-8 (a character cut by the end of the
/// head allowed) without control characters other than tab, line and
/// page breaks.
fn text(head: &[u8]) -> Option<Text> {
    let s = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).ok()?,
        Err(_) => return None,
    };
    let s = s.strip_prefix('\u{feff}').unwrap_or(s);
    if s.is_empty()
        || s.chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0c'))
    {
        return None;
    }
    Some(if s.contains("<Envelope") || s.contains(":Envelope") {
        Text::Ovf
    } else {
        Text::Other
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ova::demux::Demux;

    /// The demux's verdict on a whole stream, through a [`PackageHead`]
    /// fed in pieces of `piece` bytes, as the pipelines feed it.
    fn judge(data: &[u8], piece: usize) -> Option<Error> {
        let mut demux = Demux::new();
        let mut head = PackageHead::new();
        for chunk in data.chunks(piece) {
            head.observe(chunk);
            let mut rest = chunk;
            while !rest.is_empty() {
                match demux.step(rest) {
                    Ok((n, _)) => rest = &rest[n..],
                    Err(e) => return Some(head.tar_error(e)),
                }
            }
        }
        let _ = demux.step(&[]);
        demux.finish().err().map(|e| head.tar_error(e))
    }

    fn message(data: &[u8]) -> String {
        let mut seen = None;
        // The verdict does not depend on how the stream is cut.
        for piece in [1, 7, 100, 512, 4096] {
            let e = judge(data, piece).expect("an error");
            assert_eq!(e.kind(), ErrorKind::InvalidFormat, "{e}");
            let m = e.to_string();
            if let Some(s) = &seen {
                assert_eq!(&m, s, "piece {piece}");
            }
            seen = Some(m);
        }
        seen.unwrap_or_default()
    }

    fn padded(prefix: &[u8], len: usize) -> Vec<u8> {
        let mut v = prefix.to_vec();
        v.resize(len, 0);
        v
    }

    #[test]
    fn names_what_the_source_looks_like() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (padded(b"QFI\xfb\0\0\0\x03", 4096), "qcow2 disk image"),
            (
                padded(b"KDMV\x01\0\0\0\x03\0\x03\0", 4096),
                "VMDK streamOptimized",
            ),
            (padded(b"conectix", 4096), "VHD"),
            (padded(b"\x1f\x8b\x08\0", 4096), "compressed with gzip"),
            (padded(b"\xfd7zXZ\0", 4096), "compressed with xz"),
            (padded(b"\x28\xb5\x2f\xfd", 4096), "compressed with zstd"),
            (padded(b"PK\x03\x04", 4096), "zip archive"),
            (b"# ovaio\n\nStreams disks.\n".repeat(40), "looks like text"),
            // A character cut in two by the end of the first block.
            ("\u{e9}t\u{e9}! ".repeat(80).into_bytes(), "looks like text"),
            (
                b"<?xml version=\"1.0\"?>\n<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\">"
                    .to_vec(),
                "OVF descriptor",
            ),
            (
                (0..4096u32).map(|i| (i * 131 + 7) as u8).collect(),
                "raw disk image",
            ),
            (Vec::new(), "it is empty"),
            (b"short".to_vec(), "looks like text"),
            // A zero sector, then data: no tar archive follows its zero block.
            (
                [vec![0u8; 512], vec![0xabu8; 512]].concat(),
                "starts with zero bytes",
            ),
            // One zero block and nothing more.
            (vec![0u8; 512], "starts with zero bytes"),
        ];
        for (data, want) in cases {
            let m = message(&data);
            assert!(m.starts_with("not an OVA package"), "{m}");
            assert!(m.contains(want), "{want:?} not in {m:?}");
        }
    }

    #[test]
    fn disk_images_get_a_suggestion() {
        assert!(message(&padded(b"QFI\xfb\0\0\0\x03", 1024)).contains("ovaio export --name"));
        let vmdk = message(&padded(b"KDMV\x01\0\0\0\x03\0\x03\0", 1024));
        assert!(vmdk.contains("qemu-img convert"), "{vmdk}");
        assert!(!message(b"hello\n").contains("qemu-img"));
    }

    #[test]
    fn later_errors_keep_their_tar_message() {
        // A sound first header, then a second block that is not one.
        let mut h = [0u8; 512];
        h[..4].copy_from_slice(b"a.mf");
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(b"00000000000\0");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut data = h.to_vec();
        data.extend_from_slice(&padded(b"QFI\xfb", 512));
        let e = judge(&data, 512).expect("an error");
        let m = e.to_string();
        assert!(m.contains("checksum"), "{m}");
        assert!(!m.contains("not an OVA"), "{m}");
        // A sound header whose content the source cuts short is a
        // truncated tar archive, not something else.
        let e = judge(&h[..], 512);
        assert!(e.is_none(), "an empty entry ends cleanly");
        let mut big = h;
        big[124..136].copy_from_slice(b"00000001000\0");
        big[148..156].fill(b' ');
        let sum: u32 = big.iter().map(|&b| u32::from(b)).sum();
        big[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let m = judge(&big[..], 512).expect("an error").to_string();
        assert!(m.contains("truncated"), "{m}");
    }

    #[test]
    fn empty_archive_is_named() {
        let m = PackageHead::new().no_entries().to_string();
        assert!(m.contains("no tar entries"), "{m}");
        let mut head = PackageHead::new();
        head.decompressed_from(Compression::Xz);
        let m = head.no_entries().to_string();
        assert!(
            m.contains("compressed with xz; decompressed, it holds no tar entries"),
            "{m}"
        );
    }

    #[test]
    fn decompressed_content_is_named_with_its_compression() {
        let qcow2 = padded(b"QFI\xfb\0\0\0\x03", 4096);
        let m = compressed_not_an_ova(Compression::Gzip, &qcow2).to_string();
        assert!(
            m.starts_with(
                "not an OVA package (a tar archive): it is compressed with gzip; decompressed, it looks like a qcow2 disk image; to use it"
            ),
            "{m}"
        );
        let m =
            compressed_not_an_ova(Compression::Zstd, &padded(b"\x1f\x8b\x08\0", 512)).to_string();
        assert!(m.contains("compressed again, with gzip"), "{m}");
        let m = compressed_not_an_ova(Compression::Gzip, &padded(b"PK\x03\x04", 512)).to_string();
        assert!(m.contains("zip package only uncompressed"), "{m}");
        let m = compressed_not_an_ova(Compression::Xz, b"").to_string();
        assert!(m.ends_with("decompressed, it is empty"), "{m}");
    }

    #[test]
    fn text_rules() {
        assert_eq!(text(b"plain\ttext\r\n"), Some(Text::Other));
        // A multi-byte character cut by the end of the head.
        assert_eq!(text(b"caf\xc3"), Some(Text::Other));
        assert_eq!(text(b"bin\0ary"), None);
        assert_eq!(text(b"\xff\xfe"), None);
        assert_eq!(text(b"<ovf:Envelope>"), Some(Text::Ovf));
    }
}
