//! What a disk entry is, judged by its content: the one probe behind both
//! decoder selection ([`crate::codec::select`]) and `ovaio inspect`.
//!
//! The content decides, as in qemu's format probe: an OVF may call an entry
//! streamOptimized VMDK (or say nothing) while it holds a qcow2 or a VHD.
//! A format ovaio decodes is decoded as what it is, whatever the
//! declaration says ([`disagreements`] words the difference for the user);
//! a container format it cannot decode is recognised so that it is refused
//! by name instead of being copied into a raw target byte for byte. Raw is
//! what remains when nothing is recognised.
//!
//! The magics follow qemu's `*_probe` functions (block/vpc.c, vhdx.c,
//! vdi.c, qed.c, qcow.c, qcow2.c, vmdk.c, parallels.c, bochs.c and the LUKS
//! header check), all within the first [`PROBE_LEN`] bytes, qemu's own
//! probe buffer size.

use std::fmt;

use crate::codec::SourceFormat;
use crate::error::{Classify, ErrorKind};

/// Bytes of an entry's head the probe looks at; a shorter head (a shorter
/// entry) is probed as it is.
pub const PROBE_LEN: usize = 512;

/// A format recognised in an entry's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Nothing else recognised: the bytes are the disk.
    Raw,
    /// qcow2 (`QFI\xfb`, version 2 or later).
    Qcow2,
    /// VMDK sparse extent (`KDMV`) with compressed grains and markers.
    VmdkStream,
    /// gzip (`1f 8b`, deflate method).
    Gzip,
    /// qcow version 1 (`QFI\xfb`, version 1).
    Qcow1,
    /// VMDK hosted sparse extent (`KDMV`) without compressed grains and
    /// markers: monolithicSparse or one extent of twoGbMaxExtentSparse.
    VmdkSparse,
    /// VMDK ESX sparse extent (`COWD`).
    VmdkCowd,
    /// A VMDK text descriptor, which names its extents as other files.
    VmdkDescriptor,
    /// Microsoft VHD, dynamic or differencing (`conectix` at offset 0).
    Vhd,
    /// Microsoft VHDX (`vhdxfile`).
    Vhdx,
    /// VirtualBox VDI (signature `0xbeda107f` at offset 0x40).
    Vdi,
    /// QEMU Enhanced Disk (`QED\0`).
    Qed,
    /// A LUKS encrypted volume (`LUKS\xba\xbe`).
    Luks,
    /// Parallels (`WithoutFreeSpace` / `WithouFreSpacExt`).
    Parallels,
    /// Bochs growing image (`Bochs Virtual HD Image`).
    Bochs,
}

impl Format {
    /// Short machine name, as `inspect` shows it. The decodable formats
    /// keep the names of [`SourceFormat::name`], but for VMDK subformats
    /// other than streamOptimized, which are told apart here.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::VmdkStream => "vmdk",
            Format::Gzip => "gzip",
            Format::Qcow1 => "qcow",
            Format::VmdkSparse => "vmdk-sparse",
            Format::VmdkCowd => "vmdk-cowd",
            Format::VmdkDescriptor => "vmdk-descriptor",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
            Format::Qed => "qed",
            Format::Luks => "luks",
            Format::Parallels => "parallels",
            Format::Bochs => "bochs",
        }
    }

    /// The format family a declaration would name: every VMDK flavour is
    /// `vmdk`, the rest as [`Format::name`].
    pub fn family(self) -> &'static str {
        match self {
            Format::VmdkStream | Format::VmdkSparse | Format::VmdkCowd | Format::VmdkDescriptor => {
                "vmdk"
            }
            other => other.name(),
        }
    }

    /// How an error message names it.
    pub fn description(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::VmdkStream => "VMDK streamOptimized",
            Format::Gzip => "gzip",
            Format::Qcow1 => "qcow version 1",
            Format::VmdkSparse => "VMDK monolithicSparse (hosted sparse extent)",
            Format::VmdkCowd => "VMDK vmfsSparse (COWD extent)",
            Format::VmdkDescriptor => "VMDK text descriptor (its data lies in other files)",
            Format::Vhd => "VHD (Virtual PC, 'conectix')",
            Format::Vhdx => "VHDX",
            Format::Vdi => "VDI (VirtualBox)",
            Format::Qed => "QED",
            Format::Luks => "LUKS (encrypted)",
            Format::Parallels => "Parallels",
            Format::Bochs => "Bochs",
        }
    }

    /// The decoder for it, for the formats ovaio decodes into a disk
    /// (gzip is a compression around one of them, not a disk format).
    pub fn source(self) -> Option<SourceFormat> {
        match self {
            Format::Raw => Some(SourceFormat::Raw),
            Format::Qcow2 => Some(SourceFormat::Qcow2),
            Format::VmdkStream => Some(SourceFormat::Vmdk),
            Format::VmdkSparse => Some(SourceFormat::VmdkSparse),
            Format::Vhd => Some(SourceFormat::Vhd),
            Format::Vdi => Some(SourceFormat::Vdi),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// Why the content of an entry is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// A recognised format that ovaio does not decode.
    #[error(
        "the content is {0}, which ovaio does not import \
         (it reads raw, qcow2, VMDK streamOptimized or monolithicSparse, VHD and VDI disks, \
         gzip-compressed or not)"
    )]
    Unsupported(Format),
    /// gzip inside gzip: a second inflation would escape the size cap the
    /// first one enforces.
    #[error("the content is gzip-compressed inside gzip, which ovaio does not import")]
    NestedGzip,
}

impl Classify for ProbeError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Unsupported
    }

    /// A refusal is about the entry's head.
    fn offset(&self) -> Option<u64> {
        Some(0)
    }
}

fn le32(head: &[u8], at: usize) -> Option<u32> {
    let b = head.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn be32(head: &[u8], at: usize) -> Option<u32> {
    let b = head.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// VMDK sparse extent flags that make a streamOptimized extent: compressed
/// grains (bit 16) and markers (bit 17).
const VMDK_STREAM_FLAGS: u32 = (1 << 16) | (1 << 17);
/// VDI's signature, little-endian at offset 0x40 (after 64 bytes of text).
const VDI_SIGNATURE: u32 = 0xbeda_107f;
const VDI_SIGNATURE_AT: usize = 0x40;

/// Recognises the format of an entry from its first bytes: `head` is the
/// first [`PROBE_LEN`] bytes, or the whole entry when it is shorter. A
/// magic only counts when `head` holds all of it, so the answer for a
/// short head is final.
pub fn probe(head: &[u8]) -> Format {
    let head = &head[..head.len().min(PROBE_LEN)];
    if head.starts_with(b"QFI\xfb") {
        // qcow and qcow2 share the magic; the big-endian version tells
        // them apart. A missing or odd version is the qcow2 decoder's to
        // report.
        return match be32(head, 4) {
            Some(1) => Format::Qcow1,
            _ => Format::Qcow2,
        };
    }
    if head.starts_with(b"KDMV") {
        // Too short to hold the flags: the decoder reports the truncation.
        return match le32(head, 8) {
            Some(flags) if flags & VMDK_STREAM_FLAGS != VMDK_STREAM_FLAGS => Format::VmdkSparse,
            _ => Format::VmdkStream,
        };
    }
    // Method 8 (deflate) and no reserved flag bits: two magic bytes alone
    // are too weak to take a raw disk's first sector for gzip.
    if let [0x1f, 0x8b, 8, flags, ..] = head
        && flags & 0xe0 == 0
    {
        return Format::Gzip;
    }
    if head.starts_with(b"COWD") {
        return Format::VmdkCowd;
    }
    if head.starts_with(b"conectix") {
        return Format::Vhd;
    }
    if head.starts_with(b"vhdxfile") {
        return Format::Vhdx;
    }
    if head.starts_with(b"QED\0") {
        return Format::Qed;
    }
    if head.starts_with(b"LUKS\xba\xbe") {
        return Format::Luks;
    }
    if head.starts_with(b"WithoutFreeSpace") || head.starts_with(b"WithouFreSpacExt") {
        return Format::Parallels;
    }
    if head.starts_with(b"Bochs Virtual HD Image\0") {
        return Format::Bochs;
    }
    // qemu wants the whole 512-byte VDI header; the signature alone is
    // enough to refuse a truncated VDI rather than copy it as a disk.
    if le32(head, VDI_SIGNATURE_AT) == Some(VDI_SIGNATURE) {
        return Format::Vdi;
    }
    if head.starts_with(b"# Disk DescriptorFile") || vmdk_descriptor_version_line(head) {
        return Format::VmdkDescriptor;
    }
    Format::Raw
}

/// qemu's test for a VMDK text descriptor (vmdk_probe): comment lines and
/// lines of spaces, then `version=1`, `2` or `3` ending a line.
fn vmdk_descriptor_version_line(head: &[u8]) -> bool {
    let mut p = head;
    while let Some(&c) = p.first() {
        match c {
            b'#' => {
                p = match p.iter().position(|&b| b == b'\n') {
                    Some(nl) => &p[nl + 1..],
                    None => return false,
                };
            }
            b' ' => {
                let spaces = p.iter().take_while(|&&b| b == b' ').count();
                p = &p[spaces..];
                if let Some(rest) = p.strip_prefix(b"\r") {
                    p = rest;
                }
                match p.strip_prefix(b"\n") {
                    Some(rest) => p = rest,
                    None => return false,
                }
            }
            _ => {
                return [&b"version=1"[..], b"version=2", b"version=3"]
                    .iter()
                    .any(|v| {
                        p.strip_prefix(*v).is_some_and(|rest| {
                            rest.starts_with(b"\n") || rest.starts_with(b"\r\n")
                        })
                    });
            }
        }
    }
    false
}

/// The format an OVF `Disk/@ovf:format` URI names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// The family as [`Format::family`] names it, when the URI names one
    /// ovaio knows.
    pub family: Option<&'static str>,
    /// How summaries show it: `vmdk (streamOptimized)`, `qcow2`, or the URI
    /// itself when it names nothing known.
    pub label: String,
}

/// oVirt writes this VMware URI for its raw volumes (and the qcow one for
/// qcow2 volumes), so it declares raw, not VMDK.
const OVIRT_RAW_URI: &str = "http://www.vmware.com/specifications/vmdk.html#sparse";

/// Words of the URIs of Microsoft's VHD specification, which XenServer
/// (`http://technet.microsoft.com/en-us/virtualserver/bb676673.aspx`) and
/// VirtualBox (`http://go.microsoft.com/fwlink/?LinkId=137171`) write for
/// VHD disks.
const VHD_URI_WORDS: [&str; 2] = ["bb676673", "137171"];

/// Reads an `ovf:format` URI. Words of the URI are matched (`vmdk`,
/// `qcow`/`qcow2`, `vhd`, `vhdx`, `vdi`, `qed`, `raw`); a VMDK URI's
/// fragment is its subformat.
pub fn declared(uri: &str) -> Declared {
    let uri = uri.trim();
    if uri.eq_ignore_ascii_case(OVIRT_RAW_URI) {
        return Declared {
            family: Some("raw"),
            label: "raw".into(),
        };
    }
    let lower = uri.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let has = |w: &str| words.contains(&w);
    let family = if has("vmdk") {
        Some("vmdk")
    } else if has("qcow") || has("qcow2") {
        Some("qcow2")
    } else if has("vhdx") {
        Some("vhdx")
    } else if has("vhd") || VHD_URI_WORDS.iter().any(|w| has(w)) {
        Some("vhd")
    } else if has("vdi") {
        Some("vdi")
    } else if has("qed") {
        Some("qed")
    } else if has("raw") {
        Some("raw")
    } else {
        None
    };
    let label = match family {
        Some("vmdk") => match uri.rsplit_once('#') {
            Some((_, sub)) if !sub.is_empty() => format!("vmdk ({sub})"),
            _ => "vmdk".into(),
        },
        Some(f) => f.into(),
        None => uri.into(),
    };
    Declared { family, label }
}

/// One way an OVF's declarations about a disk differ from its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disagreement {
    /// `Disk/@ovf:format` names another format family.
    Format {
        /// How the declaration reads ([`Declared::label`]).
        declared: String,
        /// What the content is ([`SourceFormat::name`]).
        content: &'static str,
    },
    /// `File/@ovf:compression="gzip"`, but the content is not compressed.
    NotCompressed,
    /// No compression declared, but the content is gzip.
    Compressed,
}

impl Disagreement {
    /// What was found, as `inspect` reports it.
    pub fn found(&self) -> String {
        match self {
            Disagreement::Format { declared, content } => {
                format!("declared {declared} but content is {content}")
            }
            Disagreement::NotCompressed => {
                "declared gzip compression but the content is not compressed".into()
            }
            Disagreement::Compressed => {
                "declared no compression but the content is gzip-compressed".into()
            }
        }
    }

    /// What was found and what import did about it: the content won.
    pub fn resolved(&self) -> String {
        match self {
            Disagreement::Format { declared, content } => {
                format!(
                    "OVF declares {declared} but the content is {content}; imported as {content}"
                )
            }
            Disagreement::NotCompressed => {
                "OVF declares gzip compression but the content is not compressed; imported as it is"
                    .into()
            }
            Disagreement::Compressed => {
                "OVF declares no compression but the content is gzip-compressed; inflated".into()
            }
        }
    }
}

/// Where an OVF's declarations about a disk differ from what its content
/// is (`content`, inside gzip when `content_gzip`): the one rule import
/// and `inspect` judge a disk by. Empty when they agree, or when the
/// format URI names nothing ovaio knows (nothing to compare with).
pub fn compare(
    format_uri: Option<&str>,
    declared_gzip: bool,
    content: SourceFormat,
    content_gzip: bool,
) -> Vec<Disagreement> {
    let mut out = Vec::new();
    if let Some(uri) = format_uri {
        let d = declared(uri);
        // The same URI means a VMDK in VMware's OVF 0.9 descriptors.
        let vmdk_too =
            uri.trim().eq_ignore_ascii_case(OVIRT_RAW_URI) && content == SourceFormat::Vmdk;
        if d.family.is_some_and(|f| f != content.name()) && !vmdk_too {
            out.push(Disagreement::Format {
                declared: d.label,
                content: content.name(),
            });
        }
    }
    match (declared_gzip, content_gzip) {
        (true, false) => out.push(Disagreement::NotCompressed),
        (false, true) => out.push(Disagreement::Compressed),
        _ => {}
    }
    out
}

/// The sentences owed to the user when an OVF's declarations about a disk
/// differ from what its content turned out to be ([`compare`]). The
/// content has already won: each sentence says what was done instead.
pub fn disagreements(
    format_uri: Option<&str>,
    declared_gzip: bool,
    content: SourceFormat,
    content_gzip: bool,
) -> Vec<String> {
    compare(format_uri, declared_gzip, content, content_gzip)
        .iter()
        .map(Disagreement::resolved)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 512-byte head starting with `prefix`, zero-filled.
    fn head(prefix: &[u8]) -> Vec<u8> {
        let mut h = prefix.to_vec();
        h.resize(PROBE_LEN, 0);
        h
    }

    fn vmdk_head(flags: u32) -> Vec<u8> {
        let mut h = b"KDMV".to_vec();
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        head(&h)
    }

    fn vdi_head() -> Vec<u8> {
        let mut h = head(b"<<< Oracle VM VirtualBox Disk Image >>>\n");
        h[0x40..0x44].copy_from_slice(&VDI_SIGNATURE.to_le_bytes());
        h
    }

    #[test]
    fn each_magic() {
        let cases: Vec<(Vec<u8>, Format)> = vec![
            (head(b"QFI\xfb\0\0\0\x03"), Format::Qcow2),
            (head(b"QFI\xfb\0\0\0\x02"), Format::Qcow2),
            (head(b"QFI\xfb\0\0\0\x01"), Format::Qcow1),
            (vmdk_head(0x0003_0001), Format::VmdkStream),
            (vmdk_head(0x0000_0003), Format::VmdkSparse),
            (vmdk_head(0x0001_0001), Format::VmdkSparse),
            (vmdk_head(0x0002_0001), Format::VmdkSparse),
            (head(b"\x1f\x8b\x08\x00"), Format::Gzip),
            (head(b"\x1f\x8b\x08\x08"), Format::Gzip),
            (head(b"COWD\x01\0\0\0"), Format::VmdkCowd),
            (head(b"conectix\0\0\0\x02"), Format::Vhd),
            (head(b"vhdxfileQ\0E\0M\0U\0"), Format::Vhdx),
            (vdi_head(), Format::Vdi),
            (head(b"QED\0\0\0\x01\0"), Format::Qed),
            (head(b"LUKS\xba\xbe\0\x01"), Format::Luks),
            (head(b"LUKS\xba\xbe\0\x02"), Format::Luks),
            (head(b"WithoutFreeSpace"), Format::Parallels),
            (head(b"WithouFreSpacExt"), Format::Parallels),
            (head(b"Bochs Virtual HD Image\0"), Format::Bochs),
            (
                head(b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\n"),
                Format::VmdkDescriptor,
            ),
            (
                head(b"# made by hand\n   \r\nversion=3\r\nCID=1\n"),
                Format::VmdkDescriptor,
            ),
            (head(b""), Format::Raw),
            (head(b"\xeb\x63\x90\x10\x8e\xd0\xbc\0"), Format::Raw),
        ];
        for (h, want) in cases {
            assert_eq!(probe(&h), want, "{:02x?}", &h[..16]);
        }
    }

    #[test]
    fn near_misses_are_raw() {
        for h in [
            head(b"\x1f\x8b\x07\x00"),          // not deflate
            head(b"\x1f\x8b\x08\x20"),          // reserved flag bit
            head(b"QFI\xfa"),                   // one bit off
            head(b"conectiX"),                  // case
            head(b"vhdxfil"),                   // one byte short, then zeros
            head(b"QED\x01"),                   // no NUL
            head(b"LUKS\xba\xbf"),              // one bit off
            head(b"# just a comment\nhello\n"), // no version line
            head(b"# comment\nversion=4\n"),    // not a VMDK version
            head(b"version=1"),                 // no line end within the head
            head(b"\nversion=1\n"),             // qemu accepts no bare blank line
        ] {
            assert_eq!(probe(&h), Format::Raw, "{:02x?}", &h[..16]);
        }
    }

    #[test]
    fn short_heads_decide_on_what_they_hold() {
        // Whole magics count, wherever the entry ends.
        assert_eq!(probe(b"conectix"), Format::Vhd);
        assert_eq!(probe(b"QED\0"), Format::Qed);
        assert_eq!(probe(b"\x1f\x8b\x08\x00"), Format::Gzip);
        assert_eq!(probe(b"# Disk DescriptorFile"), Format::VmdkDescriptor);
        // A magic cut short is not recognised ...
        assert_eq!(probe(b"conect"), Format::Raw);
        assert_eq!(probe(b"\x1f\x8b\x08"), Format::Raw);
        assert_eq!(probe(b"QED"), Format::Raw);
        assert_eq!(probe(b""), Format::Raw);
        // ... except where the decoder it leads to reports the truncation.
        assert_eq!(probe(b"KDMV"), Format::VmdkStream);
        assert_eq!(probe(b"KDMV\x01\0\0\0\x03\0"), Format::VmdkStream);
        assert_eq!(probe(b"QFI\xfb"), Format::Qcow2);
        assert_eq!(probe(b"QFI\xfb\0\0\0"), Format::Qcow2);
        // VDI's signature sits at 0x40: 0x44 bytes hold it, 0x43 do not.
        let vdi = vdi_head();
        assert_eq!(probe(&vdi[..0x44]), Format::Vdi);
        assert_eq!(probe(&vdi[..0x43]), Format::Raw);
    }

    #[test]
    fn bytes_past_the_probe_length_are_ignored() {
        let mut h = vec![0u8; PROBE_LEN];
        h.extend_from_slice(b"conectix");
        assert_eq!(probe(&h), Format::Raw);
        let mut d = b"# c\n".repeat(PROBE_LEN / 4);
        d.extend_from_slice(b"version=1\n");
        assert_eq!(probe(&d), Format::Raw);
    }

    #[test]
    fn names_and_decoders() {
        assert_eq!(Format::Raw.source(), Some(SourceFormat::Raw));
        assert_eq!(Format::Qcow2.source(), Some(SourceFormat::Qcow2));
        assert_eq!(Format::VmdkStream.source(), Some(SourceFormat::Vmdk));
        assert_eq!(Format::Vhd.source(), Some(SourceFormat::Vhd));
        assert_eq!(Format::Vdi.source(), Some(SourceFormat::Vdi));
        for f in [
            Format::Raw,
            Format::Qcow2,
            Format::VmdkStream,
            Format::Vhd,
            Format::Vdi,
        ] {
            assert_eq!(f.source().map(SourceFormat::name), Some(f.name()));
        }
        // Both VMDK subformats are `vmdk` to summaries and declarations;
        // only the probe's name tells them apart.
        assert_eq!(Format::VmdkSparse.source(), Some(SourceFormat::VmdkSparse));
        assert_eq!(SourceFormat::VmdkSparse.name(), "vmdk");
        assert_eq!(Format::VmdkSparse.name(), "vmdk-sparse");
        for f in [Format::Gzip, Format::Vhdx, Format::VmdkCowd, Format::Qed] {
            assert_eq!(f.source(), None);
        }
        assert_eq!(Format::VmdkSparse.family(), "vmdk");
        assert_eq!(Format::Vhd.family(), "vhd");
        let msg = ProbeError::Unsupported(Format::VmdkCowd).to_string();
        assert!(msg.contains("VMDK vmfsSparse"), "{msg}");
        assert_eq!(
            crate::Error::from(ProbeError::Unsupported(Format::Vhdx)).kind(),
            ErrorKind::Unsupported
        );
    }

    #[test]
    fn declared_uris() {
        let cases = [
            (
                "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
                Some("vmdk"),
                "vmdk (streamOptimized)",
            ),
            (
                "http://www.vmware.com/specifications/vmdk.html#compressed",
                Some("vmdk"),
                "vmdk (compressed)",
            ),
            (
                "http://www.vmware.com/specifications/vmdk.html#sparse",
                Some("raw"),
                "raw",
            ),
            (
                "http://www.gnome.org/~markmc/qcow-image-format.html",
                Some("qcow2"),
                "qcow2",
            ),
            ("https://example.org/formats/qcow2", Some("qcow2"), "qcow2"),
            ("https://example.org/formats/raw", Some("raw"), "raw"),
            ("urn:example:vhdx", Some("vhdx"), "vhdx"),
            ("urn:example:vhd", Some("vhd"), "vhd"),
            (
                "http://technet.microsoft.com/en-us/virtualserver/bb676673.aspx",
                Some("vhd"),
                "vhd",
            ),
            (
                "http://technet.microsoft.com/en-us/library/bb676673.aspx",
                Some("vhd"),
                "vhd",
            ),
            (
                "http://go.microsoft.com/fwlink/?LinkId=137171",
                Some("vhd"),
                "vhd",
            ),
            (
                "http://www.virtualbox.org/manual/ch12.html#vdi",
                Some("vdi"),
                "vdi",
            ),
            ("https://example.org/disk", None, "https://example.org/disk"),
            (
                "https://example.org/drawing",
                None,
                "https://example.org/drawing",
            ),
        ];
        for (uri, family, label) in cases {
            let d = declared(uri);
            assert_eq!(d.family, family, "{uri}");
            assert_eq!(d.label, label, "{uri}");
        }
    }

    #[test]
    fn disagreements_are_worded_once_each() {
        let vmdk = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";
        assert_eq!(
            disagreements(Some(vmdk), false, SourceFormat::Qcow2, false),
            ["OVF declares vmdk (streamOptimized) but the content is qcow2; imported as qcow2"]
        );
        assert!(disagreements(Some(vmdk), false, SourceFormat::Vmdk, false).is_empty());
        // A declared subformat other than the content's is no disagreement:
        // import goes by the content's own header.
        let sparse = "http://www.vmware.com/interfaces/specifications/vmdk.html#monolithicSparse";
        assert!(disagreements(Some(sparse), false, SourceFormat::VmdkSparse, false).is_empty());
        assert!(disagreements(Some(vmdk), false, SourceFormat::VmdkSparse, false).is_empty());
        assert!(disagreements(None, false, SourceFormat::VmdkSparse, false).is_empty());
        assert!(disagreements(None, false, SourceFormat::Qcow2, false).is_empty());
        assert!(disagreements(Some("urn:x:unknown"), false, SourceFormat::Raw, false).is_empty());
        assert!(disagreements(None, true, SourceFormat::Raw, true).is_empty());
        let both = disagreements(Some(vmdk), true, SourceFormat::Raw, false);
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(both[1].contains("declares gzip"), "{both:?}");
        let inflated = disagreements(None, false, SourceFormat::Raw, true);
        assert_eq!(inflated.len(), 1);
        assert!(
            inflated[0].contains("gzip-compressed; inflated"),
            "{inflated:?}"
        );
    }

    #[test]
    fn inspect_and_import_judge_by_one_rule() {
        let vmdk = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";
        let found = compare(Some(vmdk), true, SourceFormat::Qcow2, false);
        assert_eq!(
            found,
            [
                Disagreement::Format {
                    declared: "vmdk (streamOptimized)".into(),
                    content: "qcow2"
                },
                Disagreement::NotCompressed
            ]
        );
        let words: Vec<String> = found.iter().map(Disagreement::found).collect();
        assert_eq!(
            words,
            [
                "declared vmdk (streamOptimized) but content is qcow2",
                "declared gzip compression but the content is not compressed"
            ]
        );
        // Import's sentences are the same findings, resolved.
        let resolved: Vec<String> = found.iter().map(Disagreement::resolved).collect();
        assert_eq!(
            resolved,
            disagreements(Some(vmdk), true, SourceFormat::Qcow2, false)
        );
        assert_eq!(
            compare(None, false, SourceFormat::Raw, true),
            [Disagreement::Compressed]
        );
    }
}
