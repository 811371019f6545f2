//! The OVF descriptor on the export side: completing a descriptor the user
//! provides with the exact sizes of the entries about to be streamed
//! ([`fill_sizes`]), or generating a minimal one ([`generate`]).
//!
//! The export pipeline needs the descriptor's bytes, hence its length,
//! before it lays out the archive, so both functions are deterministic:
//! the same inputs give the same bytes.
//!
//! [`fill_sizes`] edits the input in place rather than re-serializing it:
//! the descriptor is read with the same namespace rules as
//! [`super::parse`] to find the `File` and `Disk` elements and the byte
//! spans of their attributes, then only those attribute values are
//! replaced (or attributes added, or `ovf:compression` removed). Every
//! other byte (declaration, comments, whitespace, quoting, entity
//! references, namespace prefixes, attribute order) is copied unchanged.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, QName, ResolveResult};
use quick_xml::reader::NsReader;

use super::{Envelope, OvfError, is_ovf, is_ovf_namespace};
use crate::error::{Classify, ErrorKind};

/// oVirt's `ovf:format` URI for qcow2 disks, written for every exported
/// disk.
pub const QCOW2_FORMAT_URI: &str = "http://www.gnome.org/~markmc/qcow-image-format.html";

/// Why a descriptor cannot be completed with the sizes given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OvfWriteError {
    /// A size was given for a file the descriptor does not reference.
    #[error("'{href}' is not listed in the OVF References (no <File ovf:href=\"{href}\">)")]
    UnknownHref {
        /// The href given.
        href: String,
    },
    /// A populated size was given for a file that no `Disk` uses.
    #[error("no <Disk> in the OVF DiskSection refers to the file '{href}'")]
    NoDisk {
        /// The href given.
        href: String,
    },
    /// The same href was given twice in one list.
    #[error("'{href}' is given twice")]
    DuplicateHref {
        /// The repeated href.
        href: String,
    },
    /// An element's attributes could not be located for editing.
    #[error("byte {offset}: cannot edit the attributes of <{element}>: {reason}")]
    Unparsable {
        /// Start of the element.
        offset: u64,
        /// The element's local name.
        element: &'static str,
        /// What the attribute scan met.
        reason: &'static str,
    },
}

impl Classify for OvfWriteError {
    fn kind(&self) -> ErrorKind {
        match self {
            OvfWriteError::Unparsable { .. } => ErrorKind::InvalidFormat,
            _ => ErrorKind::InvalidArgument,
        }
    }
}

/// Values to set on one `Disk` element.
#[derive(Debug, Clone, Default)]
struct DiskEdit {
    populated: Option<u64>,
}

/// What to change, keyed by `File/@ovf:id` and `Disk/@ovf:fileRef`.
struct Edits {
    files: HashMap<String, u64>,
    disks: HashMap<String, DiskEdit>,
}

fn check_unique<'a>(list: impl Iterator<Item = &'a str>) -> Result<(), OvfWriteError> {
    let mut seen = HashSet::new();
    for h in list {
        if !seen.insert(h) {
            return Err(OvfWriteError::DuplicateHref { href: h.to_owned() });
        }
    }
    Ok(())
}

impl Edits {
    fn new(
        env: &Envelope,
        sizes: &[(String, u64)],
        populated: &[(String, u64)],
    ) -> Result<Edits, OvfWriteError> {
        check_unique(sizes.iter().map(|(h, _)| h.as_str()))?;
        check_unique(populated.iter().map(|(h, _)| h.as_str()))?;
        let mut files = HashMap::new();
        let mut disks: HashMap<String, DiskEdit> = HashMap::new();
        for (href, size) in sizes {
            let f = env
                .file_by_href(href)
                .ok_or_else(|| OvfWriteError::UnknownHref { href: href.clone() })?;
            files.insert(f.id.clone(), *size);
            if env.disk_for_href(href).is_some() {
                disks.entry(f.id.clone()).or_default();
            }
        }
        for (href, pop) in populated {
            let f = env
                .file_by_href(href)
                .ok_or_else(|| OvfWriteError::UnknownHref { href: href.clone() })?;
            if env.disk_for_href(href).is_none() {
                return Err(OvfWriteError::NoDisk { href: href.clone() });
            }
            disks.entry(f.id.clone()).or_default().populated = Some(*pop);
        }
        Ok(Edits { files, disks })
    }
}

/// Completes a user-provided descriptor for export:
///
/// * `File/@ovf:size` of each href in `sizes` is set (added if absent),
///   and its `ovf:compression` and `ovf:chunkSize` removed: the entry is
///   written whole, as is;
/// * `Disk/@ovf:populatedSize` of the disk using each href in `populated`
///   is set;
/// * `Disk/@ovf:format` of the disk using each href in either list is set
///   to [`QCOW2_FORMAT_URI`].
///
/// Existing attributes are edited where they stand, with their quoting;
/// new ones are appended after the element's last attribute with the
/// namespace prefix the element's `href` (File) or `diskId` (Disk)
/// attribute uses. Everything else is copied byte for byte.
///
/// Errors: the descriptor does not parse ([`super::parse`]), an href is
/// not in References, a populated size names a file no disk uses, or an
/// href is given twice.
pub fn fill_sizes(
    ovf: &[u8],
    sizes: &[(String, u64)],
    populated: &[(String, u64)],
) -> crate::Result<Vec<u8>> {
    let env = super::parse(ovf)?;
    let edits = Edits::new(&env, sizes, populated)?;
    // `parse` accepted it, so it is UTF-8 after an optional BOM.
    let base = if ovf.starts_with(b"\xef\xbb\xbf") {
        3
    } else {
        0
    };
    let text = std::str::from_utf8(&ovf[base..]).map_err(|e| OvfError::NotUtf8 {
        offset: (base + e.valid_up_to()) as u64,
    })?;
    let mut splices = collect_splices(text, base, &edits)?;
    splices.sort_by_key(|s| (s.range.start, s.range.end));
    let mut out = Vec::with_capacity(ovf.len() + 64 * splices.len());
    let mut at = 0usize;
    for s in &splices {
        out.extend_from_slice(&ovf[at..s.range.start]);
        out.extend_from_slice(s.text.as_bytes());
        at = s.range.end;
    }
    out.extend_from_slice(&ovf[at..]);
    Ok(out)
}

/// Replace `range` of the input with `text` (an empty range inserts).
#[derive(Debug)]
struct Splice {
    range: Range<usize>,
    text: String,
}

/// Where an element sits, as far as editing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Envelope,
    References,
    DiskSection,
    Other,
}

/// Walks the descriptor and lists the splices `edits` call for.
fn collect_splices(text: &str, base: usize, edits: &Edits) -> crate::Result<Vec<Splice>> {
    let mut reader = NsReader::from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut splices = Vec::new();
    loop {
        let start = reader.buffer_position() as usize;
        let event = reader.read_event().map_err(|e| OvfError::Xml {
            offset: (base as u64) + reader.error_position(),
            message: e.to_string(),
        })?;
        let end = reader.buffer_position() as usize;
        let (e, empty) = match &event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                stack.pop();
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let frame = classify(&reader, e, stack.last().copied());
        let tag = Tag {
            text: &text[start..end],
            at: base + start,
        };
        match frame {
            Target::File => file_splices(&reader, &tag, edits, &mut splices)?,
            Target::Disk => disk_splices(&reader, &tag, edits, &mut splices)?,
            Target::Frame(_) => {}
        }
        if !empty {
            stack.push(match frame {
                Target::Frame(f) => f,
                _ => Frame::Other,
            });
        }
    }
    Ok(splices)
}

/// What an element is.
enum Target {
    File,
    Disk,
    Frame(Frame),
}

/// Mirrors the element matching of [`super::parse`].
fn classify(reader: &NsReader<&[u8]>, e: &BytesStart<'_>, parent: Option<Frame>) -> Target {
    let (ns, local) = reader.resolver().resolve_element(e.name());
    let ovf = is_ovf(&ns);
    let Some(parent) = parent else {
        return Target::Frame(Frame::Envelope);
    };
    if !ovf {
        return Target::Frame(Frame::Other);
    }
    match (parent, local.as_ref()) {
        (Frame::Envelope, "References") => Target::Frame(Frame::References),
        (Frame::Envelope, "DiskSection" | "SharedDiskSection" | "Section") => {
            Target::Frame(Frame::DiskSection)
        }
        (Frame::References, "File") => Target::File,
        (Frame::DiskSection, "Disk") => Target::Disk,
        _ => Target::Frame(Frame::Other),
    }
}

/// The raw text of a start or empty tag and its offset in the input.
struct Tag<'a> {
    text: &'a str,
    at: usize,
}

/// One attribute of a tag, located.
#[derive(Debug)]
struct RawAttr<'a> {
    /// The qualified name.
    key: &'a str,
    /// From the whitespace before the key to the closing quote.
    whole: Range<usize>,
    /// The value between the quotes.
    value: Range<usize>,
    quote: char,
}

/// Scans the attributes of a well-formed start tag `<name a="v" ...>`
/// (offsets relative to the tag). Also returns the offset just after the
/// last attribute, or after the name when there is none.
fn scan_attrs(tag: &str) -> Result<(Vec<RawAttr<'_>>, usize), &'static str> {
    let b = tag.as_bytes();
    let is_space = |c: u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let mut i = 1; // past '<'
    while i < b.len() && !is_space(b[i]) && b[i] != b'/' && b[i] != b'>' {
        i += 1;
    }
    let mut attrs = Vec::new();
    let mut after = i;
    loop {
        let ws = i;
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        match b.get(i) {
            None => return Err("tag ends without '>'"),
            Some(b'/' | b'>') => return Ok((attrs, after)),
            Some(_) => {}
        }
        if i == ws {
            return Err("no space before an attribute");
        }
        let key_start = i;
        while i < b.len() && !is_space(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let key = &tag[key_start..i];
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err("attribute without '='");
        }
        i += 1;
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        let quote = match b.get(i) {
            Some(&q @ (b'"' | b'\'')) => q,
            _ => return Err("attribute value not quoted"),
        };
        let value_start = i + 1;
        let value_end = b[value_start..]
            .iter()
            .position(|&c| c == quote)
            .map(|p| value_start + p)
            .ok_or("unterminated attribute value")?;
        i = value_end + 1;
        after = i;
        attrs.push(RawAttr {
            key,
            whole: ws..i,
            value: value_start..value_end,
            quote: char::from(quote),
        });
    }
}

/// How an attribute relates to OVF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttrNs {
    /// Bound to an OVF namespace through a prefix.
    Ovf,
    /// No prefix (what [`super::parse`] falls back to).
    Unprefixed,
    /// Some other namespace (or `xmlns` declarations).
    Foreign,
}

/// The attributes of one tag, located and resolved.
struct Located<'a> {
    tag: &'a Tag<'a>,
    element: &'static str,
    attrs: Vec<(RawAttr<'a>, AttrNs, &'a str)>,
    after: usize,
}

impl<'a> Located<'a> {
    fn new(
        reader: &NsReader<&[u8]>,
        tag: &'a Tag<'a>,
        element: &'static str,
    ) -> Result<Self, OvfWriteError> {
        let (raw, after) = scan_attrs(tag.text).map_err(|reason| OvfWriteError::Unparsable {
            offset: tag.at as u64,
            element,
            reason,
        })?;
        let attrs = raw
            .into_iter()
            .map(|a| {
                let (ns, local) = reader.resolver().resolve_attribute(QName(a.key));
                let kind = match ns {
                    ResolveResult::Bound(Namespace(uri)) if is_ovf_namespace(uri) => AttrNs::Ovf,
                    ResolveResult::Unbound => AttrNs::Unprefixed,
                    _ => AttrNs::Foreign,
                };
                // `local` borrows the key, which lives in the tag text.
                let local_len = local.as_ref().len();
                let local = &a.key[a.key.len() - local_len..];
                (a, kind, local)
            })
            .collect();
        Ok(Located {
            tag,
            element,
            attrs,
            after,
        })
    }

    /// The OVF attribute `local` as [`super::parse`] reads it: prefixed
    /// first, else unprefixed.
    fn get(&self, local: &str) -> Option<&'a str> {
        let find = |want: AttrNs| {
            self.attrs
                .iter()
                .find(|(_, ns, l)| *ns == want && *l == local)
                .map(|(a, _, _)| &self.tag.text[a.value.clone()])
        };
        find(AttrNs::Ovf).or_else(|| find(AttrNs::Unprefixed))
    }

    /// The prefix (with its colon) of the OVF attribute `local`, or "".
    fn prefix_of(&self, local: &str) -> &'a str {
        self.attrs
            .iter()
            .find(|(_, ns, l)| *ns != AttrNs::Foreign && *l == local)
            .map_or("", |(a, _, l)| &a.key[..a.key.len() - l.len()])
    }

    /// Sets every OVF or unprefixed attribute `local` to `value`, or adds
    /// `{prefix}{local}="value"` when there is none.
    fn set(&self, local: &str, value: &str, prefix: &str, out: &mut Vec<Splice>) {
        let mut found = false;
        for (a, ns, l) in &self.attrs {
            if *ns != AttrNs::Foreign && *l == local {
                found = true;
                out.push(Splice {
                    range: self.tag.at + a.value.start..self.tag.at + a.value.end,
                    text: escape_value(value, a.quote),
                });
            }
        }
        if !found {
            out.push(Splice {
                range: self.tag.at + self.after..self.tag.at + self.after,
                text: format!(" {prefix}{local}=\"{}\"", escape_value(value, '"')),
            });
        }
    }

    /// Removes every OVF or unprefixed attribute `local`.
    fn remove(&self, local: &str, out: &mut Vec<Splice>) {
        for (a, ns, l) in &self.attrs {
            if *ns != AttrNs::Foreign && *l == local {
                out.push(Splice {
                    range: self.tag.at + a.whole.start..self.tag.at + a.whole.end,
                    text: String::new(),
                });
            }
        }
    }

    fn missing(&self, attribute: &'static str) -> OvfError {
        OvfError::MissingAttribute {
            offset: self.tag.at as u64,
            element: self.element,
            attribute,
        }
    }
}

/// Escapes a value for an attribute quoted with `quote`.
fn escape_value(v: &str, quote: char) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '"' if quote == '"' => s.push_str("&quot;"),
            '\'' if quote == '\'' => s.push_str("&apos;"),
            c => s.push(c),
        }
    }
    s
}

/// The attribute value as [`super::parse`] compares it: entity references
/// resolved. Ids with references are rare; values that do not unescape
/// are compared raw.
fn unescaped(v: &str) -> String {
    quick_xml::escape::unescape(v).map_or_else(|_| v.to_owned(), |c| c.into_owned())
}

fn file_splices(
    reader: &NsReader<&[u8]>,
    tag: &Tag<'_>,
    edits: &Edits,
    out: &mut Vec<Splice>,
) -> crate::Result<()> {
    let l = Located::new(reader, tag, "File")?;
    let id = unescaped(l.get("id").ok_or_else(|| l.missing("id"))?);
    if let Some(size) = edits.files.get(&id) {
        let prefix = l.prefix_of("href");
        l.set("size", &size.to_string(), prefix, out);
        l.remove("compression", out);
        l.remove("chunkSize", out);
    }
    Ok(())
}

fn disk_splices(
    reader: &NsReader<&[u8]>,
    tag: &Tag<'_>,
    edits: &Edits,
    out: &mut Vec<Splice>,
) -> crate::Result<()> {
    let l = Located::new(reader, tag, "Disk")?;
    let Some(file_ref) = l.get("fileRef").map(|v| unescaped(v).trim().to_owned()) else {
        return Ok(());
    };
    if let Some(edit) = edits.disks.get(&file_ref) {
        let prefix = l.prefix_of("diskId");
        if let Some(p) = edit.populated {
            l.set("populatedSize", &p.to_string(), prefix, out);
        }
        l.set("format", QCOW2_FORMAT_URI, prefix, out);
    }
    Ok(())
}

/// A disk of a generated descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedDisk {
    /// Entry name of the disk image (`File/@ovf:href`).
    pub href: String,
    /// Size of the entry in bytes (`File/@ovf:size`).
    pub size: u64,
    /// Virtual size in bytes (`Disk/@ovf:capacity`, unit byte).
    pub capacity: u64,
    /// Guest bytes stored in the image (`Disk/@ovf:populatedSize`).
    pub populated_size: u64,
}

/// Text-content escaping (also safe inside double-quoted attributes).
fn esc(s: &str) -> String {
    escape_value(s, '"').replace('>', "&gt;")
}

/// A minimal OVF 1.0 descriptor: one `VirtualSystem` named `name` (`vm`
/// when empty), `References` with one `File` per disk (`file1`, ...),
/// a `DiskSection` with one `Disk` per file (`disk1`, ...; capacity in
/// bytes, [`QCOW2_FORMAT_URI`], populated size) and a
/// `VirtualHardwareSection` attaching each disk (`ResourceType` 17).
/// Deterministic in its inputs.
pub fn generate(name: &str, disks: &[GeneratedDisk]) -> Vec<u8> {
    use std::fmt::Write as _;
    let name = if name.is_empty() { "vm" } else { name };
    let mut s = String::with_capacity(1024 + 600 * disks.len());
    s.push_str(concat!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
        "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"",
        " xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\"",
        " xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData\"",
        " xmlns:vssd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData\">\n",
        "  <References>\n",
    ));
    // `write!` into a String cannot fail.
    for (i, d) in disks.iter().enumerate() {
        let _ = writeln!(
            s,
            "    <File ovf:href=\"{}\" ovf:id=\"file{}\" ovf:size=\"{}\"/>",
            esc(&d.href),
            i + 1,
            d.size
        );
    }
    s.push_str("  </References>\n  <DiskSection>\n    <Info>Virtual disk information</Info>\n");
    for (i, d) in disks.iter().enumerate() {
        let _ = writeln!(
            s,
            "    <Disk ovf:capacity=\"{}\" ovf:capacityAllocationUnits=\"byte\" ovf:diskId=\"disk{n}\" \
             ovf:fileRef=\"file{n}\" ovf:format=\"{QCOW2_FORMAT_URI}\" ovf:populatedSize=\"{}\"/>",
            d.capacity,
            d.populated_size,
            n = i + 1
        );
    }
    let _ = write!(
        s,
        "  </DiskSection>\n  <VirtualSystem ovf:id=\"{n}\">\n    <Info>A virtual machine</Info>\n    \
         <Name>{n}</Name>\n    <VirtualHardwareSection>\n      <Info>Virtual hardware requirements</Info>\n",
        n = esc(name)
    );
    for i in 1..=disks.len() {
        let _ = write!(
            s,
            "      <Item>\n        <rasd:AddressOnParent>{a}</rasd:AddressOnParent>\n        \
             <rasd:ElementName>Hard disk {i}</rasd:ElementName>\n        \
             <rasd:HostResource>ovf:/disk/disk{i}</rasd:HostResource>\n        \
             <rasd:InstanceID>{i}</rasd:InstanceID>\n        \
             <rasd:ResourceType>17</rasd:ResourceType>\n      </Item>\n",
            a = i - 1
        );
    }
    s.push_str("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n");
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::ova::ovf::parse;

    const VMWARE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!--Generated by VMware ovftool 4.4.0 (build-15722219), UTC time: 2020-05-05T10:00:00.000Z-->
<Envelope vmw:buildId="build-15722219" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="photon-disk1.vmdk" ovf:id="file1" ovf:size="301619712"/>
    <File ovf:href="photon-disk2.vmdk" ovf:id="file3" ovf:compression='gzip'/>
    <File ovf:href="photon-file2.nvram" ovf:id="file2" ovf:size="8684"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="1003683840"/>
    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30"
          ovf:diskId='vmdisk2' ovf:fileRef="file3"
          ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"></Disk>
  </DiskSection>
  <VirtualSystem ovf:id="photon-vm">
    <Info>A virtual machine</Info>
    <Name>photon &amp; friends</Name>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <Item>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:ResourceType>17</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="backing.writeThrough" vmw:value="false"/>
      </Item>
      <vmw:ExtraConfig ovf:required="false" vmw:key="nvram" vmw:value="ovf:/file/file2"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#;

    const OVIRT: &str = r#"<?xml version='1.0' encoding='UTF-8'?>
<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns="http://schemas.dmtf.org/ovf/envelope/1/" ovf:version="4.4.0.0"><References><File ovf:href="6f9a1c2e" ovf:id="6f9a1c2e"></File><File ovf:href="tpm.dat" ovf:id="tpm.dat" ovf:size="1024"></File></References><DiskSection><Info>List of Virtual Disks</Info><Disk ovf:diskId="2b3a33c4" ovf:capacity="10" ovf:capacityAllocationUnits="byte * 2^30" ovf:parentRef="" ovf:fileRef="6f9a1c2e" ovf:volume-format="COW"></Disk></DiskSection><VirtualSystem ovf:id="c9a1d6c2"><Name>vm1</Name></VirtualSystem></ovf:Envelope>"#;

    fn s(v: &[(&str, u64)]) -> Vec<(String, u64)> {
        v.iter().map(|&(h, n)| (h.to_owned(), n)).collect()
    }

    /// Checks XML well-formedness with Python's minidom.
    fn minidom_ok(xml: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.ovf");
        std::fs::write(&path, xml).unwrap();
        let out = Command::new("python3")
            .args([
                "-c",
                "import xml.dom.minidom,sys; xml.dom.minidom.parse(sys.argv[1])",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(xml)
        );
    }

    /// Removes the attributes `fill_sizes` may change from a descriptor's
    /// text, normalizing quotes, so that before and after can be compared.
    fn strip_changed(xml: &str) -> String {
        let mut out = String::new();
        let mut rest = xml;
        'outer: while !rest.is_empty() {
            for key in [
                " ovf:size=",
                " ovf:populatedSize=",
                " ovf:format=",
                " ovf:compression=",
                "\n          ovf:format=",
            ] {
                if let Some(r) = rest.strip_prefix(key) {
                    let q = r.chars().next().unwrap();
                    let end = r[1..].find(q).unwrap();
                    rest = &r[end + 2..];
                    continue 'outer;
                }
            }
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    #[test]
    fn vmware_sizes_filled_rest_preserved() {
        let sizes = s(&[
            ("photon-disk1.vmdk", 4_295_032_832),
            ("photon-disk2.vmdk", 196_608),
        ]);
        let populated = s(&[("photon-disk1.vmdk", 65_536), ("photon-disk2.vmdk", 0)]);
        let out = fill_sizes(VMWARE.as_bytes(), &sizes, &populated).unwrap();
        minidom_ok(&out);
        let env = parse(&out).unwrap();
        let before = parse(VMWARE.as_bytes()).unwrap();
        let f1 = env.file_by_href("photon-disk1.vmdk").unwrap();
        assert_eq!(f1.size, Some(4_295_032_832));
        let f2 = env.file_by_href("photon-disk2.vmdk").unwrap();
        assert_eq!(f2.size, Some(196_608));
        assert_eq!(f2.compression, super::super::Compression::None);
        assert_eq!(
            env.file_by_href("photon-file2.nvram"),
            before.file_by_href("photon-file2.nvram")
        );
        let d1 = env.disk_for_href("photon-disk1.vmdk").unwrap();
        assert_eq!(d1.populated_size, Some(65_536));
        assert_eq!(d1.format.as_deref(), Some(QCOW2_FORMAT_URI));
        assert_eq!(d1.capacity, 16 << 30);
        let d2 = env.disk_for_href("photon-disk2.vmdk").unwrap();
        assert_eq!(d2.populated_size, Some(0));
        assert_eq!(d2.format.as_deref(), Some(QCOW2_FORMAT_URI));
        assert_eq!(env.name, before.name);
        assert_eq!(env.version, before.version);
        let text = String::from_utf8(out.clone()).unwrap();
        // Edited in place: quoting kept, new attributes appended.
        assert!(
            text.contains(
                r#"<File ovf:href="photon-disk2.vmdk" ovf:id="file3" ovf:size="196608"/>"#
            )
        );
        assert!(text.contains("ovf:diskId='vmdisk2' ovf:fileRef=\"file3\"\n          ovf:format=\"http://www.gnome.org/~markmc/qcow-image-format.html\" ovf:populatedSize=\"0\"></Disk>"), "{text}");
        // Everything but the changed attributes is byte-identical.
        assert_eq!(strip_changed(&text), strip_changed(VMWARE));
        // Deterministic.
        assert_eq!(
            fill_sizes(VMWARE.as_bytes(), &sizes, &populated).unwrap(),
            out
        );
    }

    #[test]
    fn ovirt_style_prefixed_root_and_start_end_pairs() {
        let out = fill_sizes(
            OVIRT.as_bytes(),
            &s(&[("6f9a1c2e", 1_769_472)]),
            &s(&[("6f9a1c2e", 1_048_576)]),
        )
        .unwrap();
        minidom_ok(&out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.contains(
                r#"<File ovf:href="6f9a1c2e" ovf:id="6f9a1c2e" ovf:size="1769472"></File>"#
            )
        );
        assert!(text.starts_with("<?xml version='1.0' encoding='UTF-8'?>\n<ovf:Envelope"));
        let env = parse(&out).unwrap();
        let d = env.disk_for_href("6f9a1c2e").unwrap();
        assert_eq!(d.populated_size, Some(1_048_576));
        assert_eq!(d.format.as_deref(), Some(QCOW2_FORMAT_URI));
        assert_eq!(env.file_by_href("tpm.dat").unwrap().size, Some(1024));
        assert_eq!(strip_changed(&text), strip_changed(OVIRT));
    }

    #[test]
    fn other_prefixes_and_unprefixed_attributes() {
        // An OVF prefix other than `ovf`, a foreign `size` left alone, an
        // unprefixed OVF attribute, and a BOM.
        let xml = "\u{feff}<e:Envelope xmlns:e=\"http://schemas.dmtf.org/ovf/envelope/2\" xmlns:x=\"urn:x\">\
                   <e:References><e:File e:href=\"a.img\" e:id=\"f\" x:size=\"5\"/>\
                   <e:File href=\"b.img\" id=\"g\" size=\"1\"/></e:References>\
                   <e:DiskSection><e:Disk e:diskId=\"d\" e:fileRef=\"f\" e:capacity=\"1024\"/>\
                   <e:Disk diskId=\"d2\" fileRef=\"g\" capacity=\"1024\"/></e:DiskSection></e:Envelope>";
        let out = fill_sizes(
            xml.as_bytes(),
            &s(&[("a.img", 7), ("b.img", 9)]),
            &s(&[("a.img", 3), ("b.img", 4)]),
        )
        .unwrap();
        minidom_ok(&out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with('\u{feff}'));
        assert!(
            text.contains(r#"<e:File e:href="a.img" e:id="f" x:size="5" e:size="7"/>"#),
            "{text}"
        );
        assert!(
            text.contains(r#"<e:File href="b.img" id="g" size="9"/>"#),
            "{text}"
        );
        assert!(text.contains(&format!(
            r#"<e:Disk e:diskId="d" e:fileRef="f" e:capacity="1024" e:populatedSize="3" e:format="{QCOW2_FORMAT_URI}"/>"#
        )), "{text}");
        assert!(text.contains(&format!(
            r#"<e:Disk diskId="d2" fileRef="g" capacity="1024" populatedSize="4" format="{QCOW2_FORMAT_URI}"/>"#
        )), "{text}");
        let env = parse(&out).unwrap();
        assert_eq!(env.files[0].size, Some(7));
        assert_eq!(env.files[1].size, Some(9));
        assert_eq!(env.disks[1].populated_size, Some(4));
    }

    #[test]
    fn only_given_hrefs_change() {
        let out = fill_sizes(VMWARE.as_bytes(), &s(&[("photon-file2.nvram", 9000)]), &[]).unwrap();
        let env = parse(&out).unwrap();
        let before = parse(VMWARE.as_bytes()).unwrap();
        assert_eq!(
            env.file_by_href("photon-file2.nvram").unwrap().size,
            Some(9000)
        );
        // Not a disk: no format changed anywhere.
        assert_eq!(env.disks, before.disks);
        assert_eq!(
            fill_sizes(VMWARE.as_bytes(), &[], &[]).unwrap(),
            VMWARE.as_bytes()
        );
    }

    #[test]
    fn a_chunked_file_is_written_whole() {
        let xml = VMWARE.replace(
            r#"ovf:size="301619712"/>"#,
            r#"ovf:size="301619712" ovf:chunkSize="100000000"/>"#,
        );
        assert_eq!(
            parse(xml.as_bytes()).unwrap().files[0].chunk_size,
            Some(100_000_000)
        );
        let out = fill_sizes(xml.as_bytes(), &s(&[("photon-disk1.vmdk", 4096)]), &[]).unwrap();
        let f = &parse(&out).unwrap().files[0];
        assert_eq!((f.size, f.chunk_size), (Some(4096), None));
    }

    #[test]
    fn errors_name_the_href() {
        let e = fill_sizes(VMWARE.as_bytes(), &s(&[("nope.vmdk", 1)]), &[]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.one_line().contains("'nope.vmdk' is not listed"),
            "{}",
            e.one_line()
        );
        let e = fill_sizes(VMWARE.as_bytes(), &[], &s(&[("photon-file2.nvram", 1)])).unwrap_err();
        assert!(
            e.one_line().contains("photon-file2.nvram"),
            "{}",
            e.one_line()
        );
        let e = fill_sizes(
            VMWARE.as_bytes(),
            &s(&[("photon-disk1.vmdk", 1), ("photon-disk1.vmdk", 2)]),
            &[],
        )
        .unwrap_err();
        assert!(e.one_line().contains("twice"), "{}", e.one_line());
        let e = fill_sizes(b"<a/>", &[], &[]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidFormat);
    }

    #[test]
    fn scan_attrs_forms() {
        let (a, after) = scan_attrs("<a x = \"1\"\n\ty='2' >").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].key, "x");
        assert_eq!(a[1].quote, '\'');
        assert_eq!(after, 17);
        let (a, after) = scan_attrs("<a/>").unwrap();
        assert!(a.is_empty());
        assert_eq!(after, 2);
        assert!(scan_attrs("<a x=1>").is_err());
        assert!(scan_attrs("<a x=\"1").is_err());
    }

    #[test]
    fn generated_descriptor_parses() {
        let disks = vec![
            GeneratedDisk {
                href: "a.qcow2".into(),
                size: 393_216,
                capacity: 1 << 30,
                populated_size: 65_536,
            },
            GeneratedDisk {
                href: "b'c&d.qcow2".into(),
                size: 8_589_934_593,
                capacity: 20 << 30,
                populated_size: 0,
            },
        ];
        let xml = generate("my <vm> & \"co\"", &disks);
        minidom_ok(&xml);
        assert_eq!(generate("my <vm> & \"co\"", &disks), xml);
        let env = parse(&xml).unwrap();
        assert_eq!(env.name.as_deref(), Some("my <vm> & \"co\""));
        assert_eq!(env.files.len(), 2);
        assert_eq!(env.disks.len(), 2);
        for d in &disks {
            let f = env.file_by_href(&d.href).unwrap();
            assert_eq!(f.size, Some(d.size));
            let disk = env.disk_for_href(&d.href).unwrap();
            assert_eq!(disk.capacity, d.capacity);
            assert_eq!(disk.populated_size, Some(d.populated_size));
            assert_eq!(disk.format.as_deref(), Some(QCOW2_FORMAT_URI));
        }
        // Filling a generated descriptor with new sizes changes only them.
        let refilled = fill_sizes(&xml, &s(&[("a.qcow2", 1)]), &s(&[("a.qcow2", 2)])).unwrap();
        let env2 = parse(&refilled).unwrap();
        assert_eq!(env2.files[0].size, Some(1));
        assert_eq!(env2.disks[0].populated_size, Some(2));
        assert_eq!(env2.files[1], env.files[1]);
        let empty = generate("", &[]);
        minidom_ok(&empty);
        assert_eq!(parse(&empty).unwrap().name.as_deref(), Some("vm"));
    }
}
