//! The descriptor parser: a streaming XML reader over quick-xml with the
//! limits and namespace rules of the module documentation.

use std::collections::HashSet;

use quick_xml::XmlVersion;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::reader::NsReader;

use crate::limits;

use super::*;

/// Parses a whole OVF descriptor.
pub fn parse(xml: &[u8]) -> Result<Envelope, OvfError> {
    if xml.len() as u64 > limits::MAX_OVF_SIZE {
        return Err(OvfError::TooLarge {
            limit: limits::MAX_OVF_SIZE,
        });
    }
    let (base, body) = match xml.strip_prefix(b"\xef\xbb\xbf") {
        Some(rest) => (3u64, rest),
        None => (0, xml),
    };
    let text = std::str::from_utf8(body).map_err(|e| OvfError::NotUtf8 {
        offset: base + e.valid_up_to() as u64,
    })?;
    Parser::new(base).run(text)
}

/// Collects an OVF descriptor fed in pieces of any size, enforcing
/// [`limits::MAX_OVF_SIZE`] as bytes arrive, and parses it on
/// [`finish`](Self::finish). XML needs the whole document before anything
/// in it can be trusted, and the descriptor is small, so it is kept whole.
#[derive(Debug, Default)]
pub struct OvfParser {
    buf: Vec<u8>,
}

impl OvfParser {
    /// An empty collector.
    pub fn new() -> Self {
        OvfParser::default()
    }

    /// Appends the next piece of the descriptor.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), OvfError> {
        if (self.buf.len() as u64).saturating_add(data.len() as u64) > limits::MAX_OVF_SIZE {
            return Err(OvfError::TooLarge {
                limit: limits::MAX_OVF_SIZE,
            });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Parses what was fed.
    pub fn finish(self) -> Result<Envelope, OvfError> {
        parse(&self.buf)
    }
}

/// VMware's namespace of OVF 0.9, the draft before the DMTF standard:
/// still written by older ovftool and VirtualBox exports and read by
/// ovftool. Its sections are `<Section xsi:type="ovf:DiskSection_Type">`
/// and its virtual system `<Content>`, which the parser accepts beside the
/// 1.x names; capacities are in bytes.
pub(super) const OVF_09_NAMESPACE: &str = "http://www.vmware.com/schema/ovf/1/envelope";

/// The URI OVF 0.9 descriptors write for a VMDK sparse extent. OVF 1.x
/// packages from oVirt write the same URI for raw volumes, so in a 0.9
/// envelope it is read as VMware's current spelling of the same format.
pub(super) const OVF_09_SPARSE_URI: &str = "http://www.vmware.com/specifications/vmdk.html#sparse";
pub(super) const VMDK_SPARSE_URI: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#sparse";

/// True for the OVF envelope namespaces: versions 1 and 2, with or without
/// a trailing slash, and VMware's 0.9.
pub(super) fn is_ovf_namespace(ns: &str) -> bool {
    let ns = ns.strip_suffix('/').unwrap_or(ns);
    ns == "http://schemas.dmtf.org/ovf/envelope/1"
        || ns == "http://schemas.dmtf.org/ovf/envelope/2"
        || ns == OVF_09_NAMESPACE
}

/// Whether a resolved name belongs to OVF: bound to an OVF namespace, or
/// (leniently) to no namespace at all.
pub(super) fn is_ovf(ns: &ResolveResult<'_>) -> bool {
    match ns {
        ResolveResult::Bound(Namespace(uri)) => is_ovf_namespace(uri),
        ResolveResult::Unbound => true,
        ResolveResult::Unknown(_) => false,
    }
}

/// Where an element sits, as far as the parser cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Frame {
    Envelope,
    References,
    DiskSection,
    /// The first virtual system (or collection) under the envelope.
    VirtualSystem,
    /// Its `Name` child, whose text is collected.
    Name,
    Other,
}

/// The OVF attributes of one element: OVF-namespaced ones win over
/// unprefixed ones of the same local name.
pub(super) struct Attrs {
    element: &'static str,
    offset: u64,
    list: Vec<(String, String, bool)>,
}

impl Attrs {
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        let mut fallback = None;
        for (local, value, prefixed) in &self.list {
            if local == name {
                if *prefixed {
                    return Some(value);
                }
                fallback = Some(value.as_str());
            }
        }
        fallback
    }

    pub(super) fn required(&self, name: &'static str) -> Result<&str, OvfError> {
        self.get(name).ok_or(OvfError::MissingAttribute {
            offset: self.offset,
            element: self.element,
            attribute: name,
        })
    }

    pub(super) fn bad(
        &self,
        attribute: &'static str,
        value: &str,
        reason: &'static str,
    ) -> OvfError {
        OvfError::BadAttribute {
            offset: self.offset,
            element: self.element,
            attribute,
            value: value.to_owned(),
            reason,
        }
    }

    pub(super) fn number(&self, name: &'static str) -> Result<Option<u64>, OvfError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => parse_u64(v)
                .map(Some)
                .ok_or_else(|| self.bad(name, v, "not a non-negative decimal integer")),
        }
    }
}

/// A decimal `u64`, surrounding whitespace allowed.
pub(super) fn parse_u64(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Bytes per unit of an `ovf:capacityAllocationUnits` value: DMTF
/// programmatic units (`byte`, `byte * 2^30`, `byte * 10^9`, `byte * 512`)
/// and the common `KB`/`MB`/`GB`/`TB` (binary) shorthands. Empty means byte.
pub(super) fn parse_units(units: &str) -> Option<u64> {
    let u: String = units
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let shift = match u.as_str() {
        "" | "b" | "byte" | "bytes" => Some(0),
        "kb" | "kib" | "kilobyte" | "kilobytes" => Some(10),
        "mb" | "mib" | "megabyte" | "megabytes" => Some(20),
        "gb" | "gib" | "gigabyte" | "gigabytes" => Some(30),
        "tb" | "tib" | "terabyte" | "terabytes" => Some(40),
        _ => None,
    };
    if let Some(s) = shift {
        return Some(1 << s);
    }
    let rest = u
        .strip_prefix("bytes*")
        .or_else(|| u.strip_prefix("byte*"))?;
    let n = if let Some(e) = rest.strip_prefix("2^") {
        let e: u32 = parse_u64(e)?.try_into().ok()?;
        1u64.checked_shl(e).filter(|_| e < 64)?
    } else if let Some(e) = rest.strip_prefix("10^") {
        let e: u32 = parse_u64(e)?.try_into().ok()?;
        10u64.checked_pow(e)?
    } else {
        parse_u64(rest)?
    };
    (n > 0).then_some(n)
}

/// Validates an `ovf:href`: a plain file name matched against tar entry
/// names, never a path or URL.
pub(super) fn check_href(a: &Attrs, href: &str) -> Result<(), OvfError> {
    let reason = if href.is_empty() {
        "empty file name"
    } else if href.contains(['/', '\\']) {
        "must be a plain file name, without '/'"
    } else if href.contains("..") {
        "must not contain '..'"
    } else if href.contains('\0') {
        "must not contain NUL"
    } else {
        return Ok(());
    };
    Err(a.bad("href", href, reason))
}

/// The descriptor walk: one pass over the events, building the envelope.
pub(super) struct Parser {
    base: u64,
    env: Envelope,
    file_ids: HashSet<String>,
    hrefs: HashSet<String>,
    disk_ids: HashSet<String>,
    /// Offset of each disk's element, for errors found at the end.
    disk_offsets: Vec<u64>,
    /// Offset of each file's element, likewise.
    file_offsets: Vec<u64>,
    seen_system: bool,
    system_id: Option<String>,
    system_name: Option<String>,
    /// The envelope is in VMware's OVF 0.9 namespace.
    ovf09: bool,
}

impl Parser {
    pub(super) fn new(base: u64) -> Self {
        Parser {
            base,
            env: Envelope::default(),
            file_ids: HashSet::new(),
            hrefs: HashSet::new(),
            disk_ids: HashSet::new(),
            ovf09: false,
            disk_offsets: Vec::new(),
            file_offsets: Vec::new(),
            seen_system: false,
            system_id: None,
            system_name: None,
        }
    }

    pub(super) fn run(mut self, text: &str) -> Result<Envelope, OvfError> {
        let mut reader = NsReader::from_str(text);
        let mut stack: Vec<Frame> = Vec::new();
        let mut root_done = false;
        loop {
            let at = self.base + reader.buffer_position();
            let event = match reader.read_event() {
                Ok(ev) => ev,
                Err(e) => {
                    return Err(OvfError::Xml {
                        offset: self.base + reader.error_position(),
                        message: e.to_string(),
                    });
                }
            };
            match event {
                Event::Start(e) | Event::Empty(e) if root_done => {
                    return Err(OvfError::Xml {
                        offset: at,
                        message: format!("element <{}> after the root element", e.name().0),
                    });
                }
                Event::Start(e) => {
                    let frame = self.open(&reader, &e, at, &stack)?;
                    stack.push(frame);
                }
                Event::Empty(e) => {
                    self.open(&reader, &e, at, &stack)?;
                    if stack.is_empty() {
                        root_done = true;
                    }
                }
                Event::End(_) => {
                    stack.pop();
                    if stack.is_empty() {
                        root_done = true;
                    }
                }
                Event::Text(t) => {
                    if stack.last() == Some(&Frame::Name) {
                        self.push_name(&t.xml_content(XmlVersion::Implicit1_0));
                    }
                }
                Event::CData(c) => {
                    if stack.last() == Some(&Frame::Name) {
                        self.push_name(&c.xml_content(XmlVersion::Implicit1_0));
                    }
                }
                Event::GeneralRef(r) => {
                    let mut tmp = [0u8; 4];
                    let s: &str = if r.is_char_ref() {
                        match r.resolve_char_ref() {
                            Ok(Some(c)) => c.encode_utf8(&mut tmp),
                            _ => {
                                return Err(OvfError::Xml {
                                    offset: at,
                                    message: format!("invalid character reference '&{};'", &*r),
                                });
                            }
                        }
                    } else if let Some(s) = resolve_predefined_entity(&r) {
                        s
                    } else {
                        return Err(OvfError::UnknownEntity {
                            offset: at,
                            name: r.to_string(),
                        });
                    };
                    if stack.last() == Some(&Frame::Name) {
                        self.push_name(s);
                    }
                }
                Event::DocType(d) => {
                    if d.to_ascii_uppercase().contains("<!ENTITY") {
                        return Err(OvfError::EntityDeclaration { offset: at });
                    }
                }
                Event::Eof => {
                    if !stack.is_empty() {
                        return Err(OvfError::Xml {
                            offset: self.base + reader.buffer_position(),
                            message: format!(
                                "document ends inside {} open element(s)",
                                stack.len()
                            ),
                        });
                    }
                    if !root_done {
                        return Err(OvfError::NotOvf {
                            offset: self.base + reader.buffer_position(),
                            found: "no element".into(),
                        });
                    }
                    break;
                }
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            }
        }
        self.finish()
    }

    pub(super) fn push_name(&mut self, s: &str) {
        self.system_name.get_or_insert_with(String::new).push_str(s);
    }

    /// Handles a start (or empty) element and says what frame it opens.
    pub(super) fn open(
        &mut self,
        reader: &NsReader<&[u8]>,
        e: &BytesStart<'_>,
        at: u64,
        stack: &[Frame],
    ) -> Result<Frame, OvfError> {
        if stack.len() >= limits::MAX_XML_DEPTH {
            return Err(OvfError::TooDeep {
                offset: at,
                limit: limits::MAX_XML_DEPTH,
            });
        }
        let (ns, local) = reader.resolver().resolve_element(e.name());
        let ovf = is_ovf(&ns);
        let local: &str = local.as_ref();
        let Some(&parent) = stack.last() else {
            if !(ovf && local == "Envelope") {
                let name = e.name().0;
                let found = match &ns {
                    ResolveResult::Bound(Namespace(uri)) if local == "Envelope" => {
                        match uri
                            .trim_end_matches('/')
                            .strip_prefix("http://schemas.dmtf.org/ovf/envelope/")
                        {
                            Some(v) => format!(
                                "<{name}> of OVF version {v} (namespace '{uri}'), which is not supported: ovaio reads OVF 0.9, 1.x and 2.x"
                            ),
                            None => format!("<{name}> in namespace '{uri}', not an OVF one"),
                        }
                    }
                    ResolveResult::Unknown(p) if local == "Envelope" => {
                        format!("<{name}> with the undeclared prefix '{p}'")
                    }
                    _ => format!("<{name}>"),
                };
                return Err(OvfError::NotOvf { offset: at, found });
            }
            let attrs = self.attrs(reader, e, "Envelope", at)?;
            self.env.version = attrs.get("version").map(str::to_owned);
            self.ovf09 = matches!(&ns, ResolveResult::Bound(Namespace(uri))
                if uri.strip_suffix('/').unwrap_or(uri) == OVF_09_NAMESPACE);
            return Ok(Frame::Envelope);
        };
        if !ovf {
            return Ok(Frame::Other);
        }
        Ok(match (parent, local) {
            (Frame::Envelope, "References") => Frame::References,
            (Frame::Envelope, "DiskSection" | "SharedDiskSection" | "Section") => {
                Frame::DiskSection
            }
            (Frame::Envelope, "VirtualSystem" | "VirtualSystemCollection" | "Content")
                if !self.seen_system =>
            {
                self.seen_system = true;
                let attrs = self.attrs(reader, e, "VirtualSystem", at)?;
                self.system_id = attrs.get("id").map(str::to_owned);
                Frame::VirtualSystem
            }
            (Frame::VirtualSystem, "Name") if self.system_name.is_none() => Frame::Name,
            (Frame::References, "File") => {
                let attrs = self.attrs(reader, e, "File", at)?;
                self.file(&attrs)?;
                Frame::Other
            }
            (Frame::DiskSection, "Disk") => {
                let attrs = self.attrs(reader, e, "Disk", at)?;
                self.disk(&attrs)?;
                Frame::Other
            }
            _ => Frame::Other,
        })
    }

    /// A Disk's `ovf:format` as the rest of ovaio reads it (see
    /// [`OVF_09_SPARSE_URI`]).
    pub(super) fn format_uri(&self, uri: &str) -> String {
        if self.ovf09 && uri.trim().eq_ignore_ascii_case(OVF_09_SPARSE_URI) {
            VMDK_SPARSE_URI.to_owned()
        } else {
            uri.to_owned()
        }
    }

    /// Collects the OVF attributes of an element.
    pub(super) fn attrs(
        &self,
        reader: &NsReader<&[u8]>,
        e: &BytesStart<'_>,
        element: &'static str,
        offset: u64,
    ) -> Result<Attrs, OvfError> {
        let mut list = Vec::new();
        for attr in e.attributes() {
            let attr = attr.map_err(|err| OvfError::Xml {
                offset,
                message: format!("<{element}>: {err}"),
            })?;
            let (ns, local) = reader.resolver().resolve_attribute(attr.key);
            let prefixed = match ns {
                ResolveResult::Bound(Namespace(uri)) if is_ovf_namespace(uri) => true,
                ResolveResult::Unbound => false,
                _ => continue,
            };
            let local: &str = local.as_ref();
            let value = attr
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|err| OvfError::Xml {
                    offset,
                    message: format!("<{element}> attribute '{}': {err}", attr.key.0),
                })?;
            list.push((local.to_owned(), value.into_owned(), prefixed));
        }
        Ok(Attrs {
            element,
            offset,
            list,
        })
    }

    pub(super) fn file(&mut self, a: &Attrs) -> Result<(), OvfError> {
        if self.env.files.len() >= limits::MAX_OVF_FILES {
            return Err(OvfError::TooMany {
                offset: a.offset,
                element: "File",
                limit: limits::MAX_OVF_FILES,
            });
        }
        let id = a.required("id")?;
        let href = a.required("href")?;
        check_href(a, href)?;
        let size = a.number("size")?;
        let chunk_size = a.number("chunkSize")?;
        if chunk_size == Some(0) {
            let v = a.get("chunkSize").unwrap_or_default();
            return Err(a.bad("chunkSize", v, "a chunk must hold at least one byte"));
        }
        let compression = match a.get("compression").map(str::trim) {
            None | Some("" | "identity" | "none") => Compression::None,
            Some(c) if c.eq_ignore_ascii_case("gzip") => Compression::Gzip,
            Some(c) => {
                return Err(OvfError::Unsupported {
                    offset: a.offset,
                    what: format!("compressions other than gzip (ovf:compression=\"{c}\")"),
                });
            }
        };
        if !self.file_ids.insert(id.to_owned()) {
            return Err(OvfError::DuplicateId {
                offset: a.offset,
                element: "File",
                id: id.to_owned(),
            });
        }
        if !self.hrefs.insert(href.to_owned()) {
            return Err(OvfError::DuplicateHref {
                offset: a.offset,
                href: href.to_owned(),
            });
        }
        self.env.files.push(FileRef {
            id: id.to_owned(),
            href: href.to_owned(),
            size,
            compression,
            chunk_size,
        });
        self.file_offsets.push(a.offset);
        Ok(())
    }

    pub(super) fn disk(&mut self, a: &Attrs) -> Result<(), OvfError> {
        if self.env.disks.len() >= limits::MAX_OVF_FILES {
            return Err(OvfError::TooMany {
                offset: a.offset,
                element: "Disk",
                limit: limits::MAX_OVF_FILES,
            });
        }
        let disk_id = a.required("diskId")?;
        let raw = a.required("capacity")?;
        let value = parse_u64(raw)
            .ok_or_else(|| a.bad("capacity", raw, "not a non-negative decimal integer"))?;
        let units_text = a.get("capacityAllocationUnits").unwrap_or("byte");
        let unit = parse_units(units_text).ok_or_else(|| {
            a.bad(
                "capacityAllocationUnits",
                units_text,
                "unknown unit (expected e.g. 'byte * 2^30')",
            )
        })?;
        let capacity = value
            .checked_mul(unit)
            .ok_or_else(|| a.bad("capacity", raw, "capacity in bytes overflows 64 bits"))?;
        if capacity > limits::MAX_CAPACITY {
            return Err(OvfError::CapacityTooLarge {
                offset: a.offset,
                disk_id: disk_id.to_owned(),
                capacity,
                limit: limits::MAX_CAPACITY,
            });
        }
        let populated_size = a.number("populatedSize")?;
        let file_ref = a
            .get("fileRef")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if !self.disk_ids.insert(disk_id.to_owned()) {
            return Err(OvfError::DuplicateId {
                offset: a.offset,
                element: "Disk",
                id: disk_id.to_owned(),
            });
        }
        self.env.disks.push(DiskDesc {
            disk_id: disk_id.to_owned(),
            file_ref,
            capacity,
            format: a.get("format").map(|f| self.format_uri(f)),
            populated_size,
        });
        self.disk_offsets.push(a.offset);
        Ok(())
    }

    /// Cross-checks disks against files and settles the name.
    pub(super) fn finish(mut self) -> Result<Envelope, OvfError> {
        for (f, &offset) in self.env.files.iter().zip(&self.file_offsets) {
            if let Some((href, _)) = split_chunk_name(&f.href)
                && self
                    .env
                    .file_by_href(href)
                    .is_some_and(|c| c.chunk_size.is_some())
            {
                return Err(OvfError::ChunkNameClash {
                    offset,
                    href: f.href.clone(),
                    chunked: href.to_owned(),
                });
            }
        }
        let mut used = HashSet::new();
        for (d, &offset) in self.env.disks.iter().zip(&self.disk_offsets) {
            let Some(r) = &d.file_ref else { continue };
            if !self.file_ids.contains(r) {
                return Err(OvfError::DanglingFileRef {
                    offset,
                    disk_id: d.disk_id.clone(),
                    file_ref: r.clone(),
                });
            }
            if !used.insert(r.as_str()) {
                return Err(OvfError::SharedFileRef {
                    offset,
                    disk_id: d.disk_id.clone(),
                    file_ref: r.clone(),
                });
            }
        }
        let name = self
            .system_name
            .take()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty());
        self.env.name = name.or(self.system_id.take().filter(|id| !id.trim().is_empty()));
        Ok(self.env)
    }
}

/// Fuzzing entry point: parses `data` whole and through [`OvfParser`] in
/// two pieces; must never panic.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_entry(data: &[u8]) {
    let whole = parse(data);
    let mut p = OvfParser::new();
    let mid = data.len() / 2;
    let split = p
        .feed(&data[..mid])
        .and_then(|()| p.feed(&data[mid..]))
        .and_then(|()| p.finish());
    assert_eq!(whole, split, "split parse differs");
    if let Ok(env) = whole {
        for f in &env.files {
            let _ = env.disk_for_href(&f.href);
        }
    }
}
