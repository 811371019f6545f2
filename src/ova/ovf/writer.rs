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

use super::parser::{is_ovf, is_ovf_namespace};
use super::vm::{NIC_MODEL, VIRTUAL_SYSTEM_TYPE, VmError, VmSpec};
use super::{Envelope, OvfError};
use crate::error::{Classify, ErrorKind};

/// oVirt's `ovf:format` URI for qcow2 disks.
pub const QCOW2_FORMAT_URI: &str = "http://www.gnome.org/~markmc/qcow-image-format.html";
/// VMware's `ovf:format` URI for streamOptimized VMDK disks.
pub const VMDK_STREAM_FORMAT_URI: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

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
#[derive(Debug, Clone)]
struct DiskEdit {
    populated: Option<u64>,
    format: &'static str,
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
        formats: &[(String, &'static str)],
    ) -> Result<Edits, OvfWriteError> {
        check_unique(sizes.iter().map(|(h, _)| h.as_str()))?;
        check_unique(populated.iter().map(|(h, _)| h.as_str()))?;
        check_unique(formats.iter().map(|(h, _)| h.as_str()))?;
        let format_of = |href: &str| {
            formats
                .iter()
                .find(|(h, _)| h == href)
                .map_or(QCOW2_FORMAT_URI, |(_, f)| *f)
        };
        let edit = |href: &str| DiskEdit {
            populated: None,
            format: format_of(href),
        };
        let mut files = HashMap::new();
        let mut disks: HashMap<String, DiskEdit> = HashMap::new();
        for (href, size) in sizes {
            let f = env
                .file_by_href(href)
                .ok_or_else(|| OvfWriteError::UnknownHref { href: href.clone() })?;
            files.insert(f.id.clone(), *size);
            if env.disk_for_href(href).is_some() {
                disks.entry(f.id.clone()).or_insert_with(|| edit(href));
            }
        }
        for (href, pop) in populated {
            let f = env
                .file_by_href(href)
                .ok_or_else(|| OvfWriteError::UnknownHref { href: href.clone() })?;
            if env.disk_for_href(href).is_none() {
                return Err(OvfWriteError::NoDisk { href: href.clone() });
            }
            disks
                .entry(f.id.clone())
                .or_insert_with(|| edit(href))
                .populated = Some(*pop);
        }
        for (href, _) in formats {
            let f = env
                .file_by_href(href)
                .ok_or_else(|| OvfWriteError::UnknownHref { href: href.clone() })?;
            if env.disk_for_href(href).is_none() {
                return Err(OvfWriteError::NoDisk { href: href.clone() });
            }
            disks.entry(f.id.clone()).or_insert_with(|| edit(href));
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
///   to [`QCOW2_FORMAT_URI`] ([`fill_sizes_and_formats`] sets others).
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
    fill_sizes_and_formats(ovf, sizes, populated, &[])
}

/// [`fill_sizes`], with the `Disk/@ovf:format` of each href in `formats`
/// set to the URI given (a disk named only in `sizes` or `populated`
/// gets [`QCOW2_FORMAT_URI`]). A format given for a file no disk uses is
/// an error, as a populated size is.
pub fn fill_sizes_and_formats(
    ovf: &[u8],
    sizes: &[(String, u64)],
    populated: &[(String, u64)],
    formats: &[(String, &'static str)],
) -> crate::Result<Vec<u8>> {
    let env = super::parse(ovf)?;
    let edits = Edits::new(&env, sizes, populated, formats)?;
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
        l.set("format", edit.format, prefix, out);
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
    /// The disk format URI (`Disk/@ovf:format`): [`QCOW2_FORMAT_URI`] or
    /// [`VMDK_STREAM_FORMAT_URI`].
    pub format: &'static str,
}

/// Text-content escaping (also safe inside double-quoted attributes).
fn esc(s: &str) -> String {
    escape_value(s, '"').replace('>', "&gt;")
}

/// Appends one `Item` of the VirtualHardwareSection: `(element, value)`
/// pairs in the order the CIM schema gives them (alphabetical).
fn item(s: &mut String, fields: &[(&str, &str)]) {
    use std::fmt::Write as _;
    s.push_str("      <Item>\n");
    for (k, v) in fields {
        // `write!` into a String cannot fail.
        let _ = writeln!(s, "        <rasd:{k}>{}</rasd:{k}>", esc(v));
    }
    s.push_str("      </Item>\n");
}

/// An OVF 1.0 descriptor for the VM `vm` with `disks`, which importers
/// (VMware, VirtualBox, the Common OVF Tool) turn into a VM that boots
/// and which validates against the DMTF envelope schema (DSP8023):
///
/// * `References`: one `File` per disk (`file1`, ...), and a `DiskSection`
///   with one `Disk` per file (`disk1`, ...; capacity in bytes, the
///   disk's format URI, populated size);
/// * a `NetworkSection` naming each network a NIC connects to;
/// * one `VirtualSystem`: `AnnotationSection` and `ProductSection` when
///   given, the `OperatingSystemSection` (CIM OSType and VMware's guest
///   id), and the `VirtualHardwareSection`: the hardware families
///   ([`VIRTUAL_SYSTEM_TYPE`]), CPU and memory Items, as many disk
///   controllers as the disks need, each disk attached to one (`Parent`,
///   `AddressOnParent`), then the NICs.
///
/// Deterministic in its inputs. Errors when a value of `vm` is out of
/// range or the disks do not fit [`vm::MAX_CONTROLLERS`] controllers.
pub fn generate(vm: &VmSpec, disks: &[GeneratedDisk]) -> Result<Vec<u8>, VmError> {
    use std::fmt::Write as _;
    vm.check(disks.len())?;
    let name = esc(vm.display_name());
    let mut s = String::with_capacity(4096 + 800 * disks.len());
    s.push_str(concat!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
        "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"",
        " xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\"",
        " xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData\"",
        " xmlns:vmw=\"http://www.vmware.com/schema/ovf\"",
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
             ovf:fileRef=\"file{n}\" ovf:format=\"{}\" ovf:populatedSize=\"{}\"/>",
            d.capacity,
            d.format,
            d.populated_size,
            n = i + 1
        );
    }
    s.push_str("  </DiskSection>\n");
    let mut networks: Vec<&str> = Vec::new();
    for n in &vm.networks {
        if !networks.contains(&n.as_str()) {
            networks.push(n);
        }
    }
    if !networks.is_empty() {
        s.push_str(
            "  <NetworkSection>\n    <Info>The logical networks the VM connects to</Info>\n",
        );
        for n in &networks {
            let _ = write!(
                s,
                "    <Network ovf:name=\"{n}\">\n      <Description>The {n} network</Description>\n    </Network>\n",
                n = esc(n)
            );
        }
        s.push_str("  </NetworkSection>\n");
    }
    let _ = write!(
        s,
        "  <VirtualSystem ovf:id=\"{name}\">\n    <Info>A virtual machine</Info>\n    <Name>{name}</Name>\n"
    );
    if let Some(a) = &vm.annotation {
        let _ = write!(
            s,
            "    <AnnotationSection>\n      <Info>A description of the VM</Info>\n      \
             <Annotation>{}</Annotation>\n    </AnnotationSection>\n",
            esc(a)
        );
    }
    if !vm.product.is_empty() {
        s.push_str("    <ProductSection>\n      <Info>The software the VM holds</Info>\n");
        let p = &vm.product;
        for (k, v) in [
            ("Product", &p.product),
            ("Vendor", &p.vendor),
            ("Version", &p.version),
        ] {
            if let Some(v) = v {
                let _ = writeln!(s, "      <{k}>{}</{k}>", esc(v));
            }
        }
        s.push_str("    </ProductSection>\n");
    }
    let vmw = vm
        .os
        .vmware
        .map(|id| format!(" vmw:osType=\"{id}\""))
        .unwrap_or_default();
    let _ = write!(
        s,
        "    <OperatingSystemSection ovf:id=\"{}\"{vmw}>\n      <Info>The kind of guest operating system</Info>\n      \
         <Description>{}</Description>\n    </OperatingSystemSection>\n",
        vm.os.cim_id,
        esc(&vm.os.description)
    );
    let _ = write!(
        s,
        "    <VirtualHardwareSection>\n      <Info>Virtual hardware requirements</Info>\n      <System>\n        \
         <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n        \
         <vssd:InstanceID>0</vssd:InstanceID>\n        \
         <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>\n        \
         <vssd:VirtualSystemType>{VIRTUAL_SYSTEM_TYPE}</vssd:VirtualSystemType>\n      </System>\n"
    );
    let mut id = 0u64;
    let mut next = || {
        id += 1;
        id.to_string()
    };
    let cpus = vm.cpus.to_string();
    item(
        &mut s,
        &[
            ("AllocationUnits", "hertz * 10^6"),
            ("Description", "Number of virtual CPUs"),
            ("ElementName", &format!("{cpus} virtual CPU(s)")),
            ("InstanceID", &next()),
            ("ResourceType", "3"),
            ("VirtualQuantity", &cpus),
        ],
    );
    let mib = vm.memory_mib.to_string();
    item(
        &mut s,
        &[
            ("AllocationUnits", "byte * 2^20"),
            ("Description", "Memory size"),
            ("ElementName", &format!("{mib}MB of memory")),
            ("InstanceID", &next()),
            ("ResourceType", "4"),
            ("VirtualQuantity", &mib),
        ],
    );
    let c = vm.controller;
    let controllers = disks.len().div_ceil(c.slots()).max(1);
    let mut controller_ids = Vec::with_capacity(controllers);
    for k in 0..controllers {
        let iid = next();
        item(
            &mut s,
            &[
                ("Address", &k.to_string()),
                ("Description", c.label()),
                ("ElementName", &format!("{} {k}", c.label())),
                ("InstanceID", &iid),
                ("ResourceSubType", c.subtype()),
                ("ResourceType", &c.resource_type().to_string()),
            ],
        );
        controller_ids.push(iid);
    }
    for i in 0..disks.len() {
        let parent = &controller_ids[i / c.slots()];
        item(
            &mut s,
            &[
                ("AddressOnParent", &c.unit(i % c.slots()).to_string()),
                ("ElementName", &format!("Hard disk {}", i + 1)),
                ("HostResource", &format!("ovf:/disk/disk{}", i + 1)),
                ("InstanceID", &next()),
                ("Parent", parent),
                ("ResourceType", "17"),
            ],
        );
    }
    for (i, n) in vm.networks.iter().enumerate() {
        item(
            &mut s,
            &[
                ("AutomaticAllocation", "true"),
                ("Connection", n),
                (
                    "Description",
                    &format!("{NIC_MODEL} ethernet adapter on \"{n}\""),
                ),
                ("ElementName", &format!("Network adapter {}", i + 1)),
                ("InstanceID", &next()),
                ("ResourceSubType", NIC_MODEL),
                ("ResourceType", "10"),
            ],
        );
    }
    s.push_str("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n");
    Ok(s.into_bytes())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
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
                format: QCOW2_FORMAT_URI,
            },
            GeneratedDisk {
                href: "b'c&d.qcow2".into(),
                size: 8_589_934_593,
                capacity: 20 << 30,
                populated_size: 0,
                format: QCOW2_FORMAT_URI,
            },
        ];
        let vm = VmSpec::new("my <vm> & \"co\"");
        let xml = generate(&vm, &disks).unwrap();
        minidom_ok(&xml);
        assert_eq!(generate(&vm, &disks).unwrap(), xml);
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
        let empty = generate(&VmSpec::new(""), &[]).unwrap();
        minidom_ok(&empty);
        assert_eq!(parse(&empty).unwrap().name.as_deref(), Some("vm"));
    }

    /// Validates `xml` against the DMTF OVF envelope schema (DSP8023
    /// 1.1.1, kept in `tests/fixtures/ovf-schema`) with xmllint.
    fn schema_ok(xml: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.ovf");
        std::fs::write(&path, xml).unwrap();
        let schema = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ovf-schema/dsp8023_1.1.1.xsd");
        let out = Command::new("xmllint")
            .args(["--noout", "--nonet", "--schema"])
            .arg(&schema)
            .arg(&path)
            .output()
            .expect("xmllint (Debian libxml2-utils) is needed to validate descriptors");
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(xml)
        );
    }

    /// What an importer reads about the VM, through Python's ElementTree:
    /// the System, the Items (RASD element → text), the OS section, the
    /// networks, product and annotation.
    fn vm_view(xml: &[u8]) -> serde_json::Value {
        const SCRIPT: &str = r#"
import json, sys, xml.etree.ElementTree as ET
O = "{http://schemas.dmtf.org/ovf/envelope/1}"
R = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData}"
V = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData}"
W = "{http://www.vmware.com/schema/ovf}"
root = ET.parse(sys.argv[1]).getroot()
vs = root.find(O + "VirtualSystem")
hw = vs.find(O + "VirtualHardwareSection")
os_ = vs.find(O + "OperatingSystemSection")
prod = vs.find(O + "ProductSection")
ann = vs.find(O + "AnnotationSection")
print(json.dumps({
    "system": {c.tag.replace(V, ""): c.text for c in hw.find(O + "System")},
    "items": [{c.tag.replace(R, ""): c.text for c in i} for i in hw.findall(O + "Item")],
    "os": [os_.get(O + "id"), os_.get(W + "osType"), os_.find(O + "Description").text],
    "networks": [n.get(O + "name") for n in root.iter(O + "Network")],
    "product": None if prod is None else {c.tag.replace(O, ""): c.text for c in prod},
    "annotation": None if ann is None else ann.find(O + "Annotation").text,
}))
"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.ovf");
        std::fs::write(&path, xml).unwrap();
        let out = Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn disks(n: usize, format: &'static str) -> Vec<GeneratedDisk> {
        (1..=n)
            .map(|i| GeneratedDisk {
                href: format!("d{i}.img"),
                size: 1000 * i as u64,
                capacity: 1 << 30,
                populated_size: 0,
                format,
            })
            .collect()
    }

    /// Items of one resource type.
    fn of_type(v: &serde_json::Value, t: &str) -> Vec<serde_json::Value> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["ResourceType"] == t)
            .cloned()
            .collect()
    }

    #[test]
    fn generated_descriptor_describes_a_whole_vm() {
        let xml = generate(&VmSpec::new("testvm"), &disks(3, QCOW2_FORMAT_URI)).unwrap();
        schema_ok(&xml);
        let v = vm_view(&xml);
        assert_eq!(v["system"]["VirtualSystemType"], "vmx-13 virtualbox-2.2");
        assert_eq!(v["system"]["VirtualSystemIdentifier"], "testvm");
        assert_eq!(
            v["os"],
            serde_json::json!(["102", "otherGuest64", "Other 64-Bit"])
        );
        let cpu = of_type(&v, "3");
        assert_eq!(cpu.len(), 1);
        assert_eq!(cpu[0]["VirtualQuantity"], "1");
        let mem = of_type(&v, "4");
        assert_eq!(mem.len(), 1);
        assert_eq!(mem[0]["VirtualQuantity"], "2048");
        assert_eq!(mem[0]["AllocationUnits"], "byte * 2^20");
        let ctl = of_type(&v, "20");
        assert_eq!(ctl.len(), 1);
        assert_eq!(ctl[0]["ResourceSubType"], "vmware.sata.ahci");
        let hd = of_type(&v, "17");
        assert_eq!(hd.len(), 3);
        for (i, d) in hd.iter().enumerate() {
            assert_eq!(d["Parent"], ctl[0]["InstanceID"]);
            assert_eq!(d["AddressOnParent"], i.to_string());
            assert_eq!(d["HostResource"], format!("ovf:/disk/disk{}", i + 1));
        }
        let ids: HashSet<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["InstanceID"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 6, "InstanceIDs are unique");
        assert!(of_type(&v, "10").is_empty());
        assert_eq!(v["networks"], serde_json::json!([]));
        assert_eq!(v["product"], serde_json::Value::Null);
        assert_eq!(v["annotation"], serde_json::Value::Null);
        // What the import side reads of it.
        let env = parse(&xml).unwrap();
        assert_eq!(env.disks.len(), 3);
        assert_eq!(env.name.as_deref(), Some("testvm"));
    }

    #[test]
    fn generated_descriptor_with_every_option() {
        let mut vm = VmSpec::new("app & <co>");
        vm.cpus = 4;
        vm.memory_mib = 8192;
        vm.os = crate::ova::ovf::vm::GuestOs::parse("ubuntu64").unwrap();
        vm.controller = crate::ova::ovf::vm::Controller::Scsi;
        vm.networks = vec![
            "VM Network".into(),
            "back & \"end\"".into(),
            "VM Network".into(),
        ];
        vm.product.product = Some("Appliance <1>".into());
        vm.product.vendor = Some("Example & Co".into());
        vm.product.version = Some("1.2.3".into());
        vm.annotation = Some("line one\nline <two>".into());
        // 20 disks: two SCSI controllers, unit 7 left to the controller.
        let xml = generate(&vm, &disks(20, VMDK_STREAM_FORMAT_URI)).unwrap();
        schema_ok(&xml);
        minidom_ok(&xml);
        let v = vm_view(&xml);
        assert_eq!(
            v["os"],
            serde_json::json!(["94", "ubuntu64Guest", "Ubuntu 64-Bit"])
        );
        assert_eq!(of_type(&v, "3")[0]["VirtualQuantity"], "4");
        assert_eq!(of_type(&v, "4")[0]["VirtualQuantity"], "8192");
        let ctl = of_type(&v, "6");
        assert_eq!(ctl.len(), 2);
        assert!(ctl.iter().all(|c| c["ResourceSubType"] == "lsilogic"));
        let hd = of_type(&v, "17");
        assert_eq!(hd.len(), 20);
        let units: Vec<&str> = hd[..15]
            .iter()
            .map(|d| d["AddressOnParent"].as_str().unwrap())
            .collect();
        assert!(!units.contains(&"7") && units.contains(&"15"), "{units:?}");
        assert!(hd[..15].iter().all(|d| d["Parent"] == ctl[0]["InstanceID"]));
        assert!(hd[15..].iter().all(|d| d["Parent"] == ctl[1]["InstanceID"]));
        assert_eq!(hd[15]["AddressOnParent"], "0");
        assert_eq!(
            v["networks"],
            serde_json::json!(["VM Network", "back & \"end\""])
        );
        let nics = of_type(&v, "10");
        let conn: Vec<&str> = nics
            .iter()
            .map(|n| n["Connection"].as_str().unwrap())
            .collect();
        assert_eq!(conn, ["VM Network", "back & \"end\"", "VM Network"]);
        assert!(nics.iter().all(|n| n["ResourceSubType"] == "E1000"));
        assert_eq!(v["product"]["Product"], "Appliance <1>");
        assert_eq!(v["product"]["Vendor"], "Example & Co");
        assert_eq!(v["product"]["Version"], "1.2.3");
        assert_eq!(v["annotation"], "line one\nline <two>");
        let env = parse(&xml).unwrap();
        assert!(
            env.disks
                .iter()
                .all(|d| d.format.as_deref() == Some(VMDK_STREAM_FORMAT_URI))
        );
    }

    #[test]
    fn generated_descriptor_refuses_what_it_cannot_describe() {
        let mut vm = VmSpec::new("x");
        vm.controller = crate::ova::ovf::vm::Controller::Scsi;
        let e = generate(&vm, &disks(61, QCOW2_FORMAT_URI)).unwrap_err();
        assert_eq!(e.field, "controller");
        assert!(generate(&vm, &disks(60, QCOW2_FORMAT_URI)).is_ok());
        vm.memory_mib = 0;
        assert_eq!(generate(&vm, &[]).unwrap_err().field, "memory");
    }

    #[test]
    fn formats_are_set_per_href() {
        let out = fill_sizes_and_formats(
            VMWARE.as_bytes(),
            &s(&[("photon-disk1.vmdk", 1), ("photon-disk2.vmdk", 2)]),
            &[],
            &[("photon-disk1.vmdk".to_owned(), VMDK_STREAM_FORMAT_URI)],
        )
        .unwrap();
        let env = parse(&out).unwrap();
        let f = |h| env.disk_for_href(h).unwrap().format.clone();
        assert_eq!(
            f("photon-disk1.vmdk").as_deref(),
            Some(VMDK_STREAM_FORMAT_URI)
        );
        assert_eq!(f("photon-disk2.vmdk").as_deref(), Some(QCOW2_FORMAT_URI));
        let e = fill_sizes_and_formats(
            VMWARE.as_bytes(),
            &[],
            &[],
            &[("photon-file2.nvram".to_owned(), VMDK_STREAM_FORMAT_URI)],
        )
        .unwrap_err();
        assert!(
            e.one_line().contains("photon-file2.nvram"),
            "{}",
            e.one_line()
        );
    }
}
