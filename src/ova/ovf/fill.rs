//! Writing OVF descriptors for export: completing a caller's descriptor
//! with the exact sizes (everything else copied through unchanged), or
//! generating a minimal OVF 1.0 one. The output is a deterministic
//! function of the input, so its length can be planned before streaming.

use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, Writer};

use crate::error::{Error, ErrorKind, Result};
use crate::ova::ovf;

/// oVirt's format URI for qcow2 disks.
pub const QCOW2_FORMAT_URI: &str = "http://www.gnome.org/~markmc/qcow-image-format.html";

/// A disk of a generated descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedDisk {
    /// Entry name.
    pub href: String,
    /// Size of the entry (the qcow2 image) in bytes.
    pub size: u64,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// Guest bytes stored in the image.
    pub populated_size: u64,
}

fn xml_error(e: impl std::fmt::Display, pos: u64) -> Error {
    Error::new(
        ErrorKind::InvalidFormat,
        format!("OVF descriptor at byte {pos}: {e}"),
    )
}

fn attr_value(e: &BytesStart<'_>, local: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find_map(|a| (a.key.local_name().as_ref() == local).then(|| a.value.to_string()))
}

/// Rebuilds `e` with attributes whose local name is in `set` replaced (or
/// added, with the prefix of `prefix_from`'s attribute).
fn with_attrs(
    e: &BytesStart<'_>,
    prefix_from: &str,
    set: &[(&str, String)],
) -> BytesStart<'static> {
    let name = e.name().as_ref().to_owned();
    let prefix = e
        .attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == prefix_from)
        .and_then(|a| a.key.prefix().map(|p| p.as_ref().to_owned()));
    let mut out = BytesStart::new(name);
    let mut done = vec![false; set.len()];
    for a in e.attributes().flatten() {
        let local = a.key.local_name();
        if let Some(i) = set.iter().position(|(k, _)| *k == local.as_ref()) {
            done[i] = true;
            let key = a.key.as_ref().to_owned();
            out.push_attribute((key.as_str(), set[i].1.as_str()));
        } else {
            out.push_attribute(Attribute {
                key: a.key,
                value: a.value.clone(),
            });
        }
    }
    for (i, (k, v)) in set.iter().enumerate() {
        if !done[i] {
            let key = match &prefix {
                Some(p) => format!("{p}:{k}"),
                None => (*k).to_owned(),
            };
            out.push_attribute((key.as_str(), v.as_str()));
        }
    }
    out
}

/// Completes a descriptor: `File/@ovf:size` for each `(href, size)`,
/// `Disk/@ovf:populatedSize` and `Disk/@ovf:format` (qcow2) for the disk
/// of each `(href, populated)`. Every other byte is copied through.
pub fn fill_sizes(
    xml: &[u8],
    sizes: &[(String, u64)],
    populated: &[(String, u64)],
) -> Result<Vec<u8>> {
    let env = ovf::parse(xml).map_err(Error::from)?;
    for (href, _) in sizes.iter().chain(populated) {
        if env.file_by_href(href).is_none() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("the OVF References do not list '{href}'"),
            ));
        }
    }
    let file_size = |id: &str| -> Option<u64> {
        let f = env.files.iter().find(|f| f.id == id)?;
        sizes.iter().find(|(h, _)| *h == f.href).map(|(_, s)| *s)
    };
    let disk_populated = |file_ref: &str| -> Option<u64> {
        let f = env.files.iter().find(|f| f.id == file_ref)?;
        populated
            .iter()
            .find(|(h, _)| *h == f.href)
            .map(|(_, s)| *s)
    };
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(false);
    let mut writer = Writer::new(Vec::with_capacity(xml.len() + 256));
    loop {
        let pos = reader.buffer_position();
        let ev = reader.read_event().map_err(|e| xml_error(e, pos))?;
        let ev = match ev {
            Event::Eof => break,
            Event::Start(e) if is_file_or_disk(&e) => {
                match rewrite(&e, &file_size, &disk_populated) {
                    Some(r) => Event::Start(r),
                    None => Event::Start(e.into_owned()),
                }
            }
            Event::Empty(e) if is_file_or_disk(&e) => {
                match rewrite(&e, &file_size, &disk_populated) {
                    Some(r) => Event::Empty(r),
                    None => Event::Empty(e.into_owned()),
                }
            }
            other => other.into_owned(),
        };
        writer
            .write_event(ev)
            .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?;
    }
    Ok(writer.into_inner())
}

fn is_file_or_disk(e: &BytesStart<'_>) -> bool {
    matches!(e.local_name().as_ref(), "File" | "Disk")
}

fn rewrite(
    e: &BytesStart<'_>,
    file_size: &dyn Fn(&str) -> Option<u64>,
    disk_populated: &dyn Fn(&str) -> Option<u64>,
) -> Option<BytesStart<'static>> {
    match e.local_name().as_ref() {
        "File" => {
            let id = attr_value(e, "id")?;
            let size = file_size(&id)?;
            Some(with_attrs(e, "href", &[("size", size.to_string())]))
        }
        "Disk" => {
            let file_ref = attr_value(e, "fileRef")?;
            let pop = disk_populated(&file_ref)?;
            Some(with_attrs(
                e,
                "diskId",
                &[
                    ("populatedSize", pop.to_string()),
                    ("format", QCOW2_FORMAT_URI.to_owned()),
                ],
            ))
        }
        _ => None,
    }
}

fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// A minimal valid OVF 1.0 descriptor for one virtual system named `name`.
pub fn generate(name: &str, disks: &[GeneratedDisk]) -> Vec<u8> {
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" \
         xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\" \
         xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData\" \
         xmlns:vssd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" ovf:version=\"1.0\">\n  <References>\n",
    );
    for (i, d) in disks.iter().enumerate() {
        s.push_str(&format!(
            "    <File ovf:id=\"file{}\" ovf:href=\"{}\" ovf:size=\"{}\"/>\n",
            i + 1,
            escape(&d.href),
            d.size
        ));
    }
    s.push_str("  </References>\n  <DiskSection>\n    <Info>Virtual disks</Info>\n");
    for (i, d) in disks.iter().enumerate() {
        s.push_str(&format!(
            "    <Disk ovf:diskId=\"disk{n}\" ovf:fileRef=\"file{n}\" ovf:capacity=\"{}\" \
             ovf:capacityAllocationUnits=\"byte\" ovf:populatedSize=\"{}\" ovf:format=\"{QCOW2_FORMAT_URI}\"/>\n",
            d.capacity,
            d.populated_size,
            n = i + 1
        ));
    }
    s.push_str(&format!(
        "  </DiskSection>\n  <VirtualSystem ovf:id=\"{id}\">\n    <Info>A virtual machine</Info>\n    \
         <Name>{id}</Name>\n  </VirtualSystem>\n</Envelope>\n",
        id = escape(name)
    ));
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMWARE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- keep me -->
<Envelope vmw:buildId="build-1" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="vm-disk1.vmdk" ovf:id="file1" ovf:size="123"/>
    <File ovf:href="vm.iso" ovf:id="file2" ovf:size="9"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="5"></Disk>
  </DiskSection>
  <VirtualSystem ovf:id="vm"><Info>A VM &amp; more</Info><Name>vm</Name></VirtualSystem>
</Envelope>
"#;

    #[test]
    fn fills_sizes_and_keeps_the_rest() {
        let out = fill_sizes(
            VMWARE.as_bytes(),
            &[("vm-disk1.vmdk".into(), 4_294_967_296)],
            &[("vm-disk1.vmdk".into(), 65536)],
        )
        .unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        let env = ovf::parse(&out).unwrap();
        assert_eq!(
            env.file_by_href("vm-disk1.vmdk").unwrap().size,
            Some(4_294_967_296)
        );
        assert_eq!(env.file_by_href("vm.iso").unwrap().size, Some(9));
        let d = env.disk_for_href("vm-disk1.vmdk").unwrap();
        assert_eq!(d.populated_size, Some(65536));
        assert_eq!(d.format.as_deref(), Some(QCOW2_FORMAT_URI));
        assert_eq!(d.capacity, 16 << 30);
        assert!(text.contains("<!-- keep me -->"));
        assert!(text.contains("A VM &amp; more"));
        assert!(text.contains(r#"vmw:buildId="build-1""#));
        // Deterministic: the same input gives the same bytes.
        let again = fill_sizes(
            VMWARE.as_bytes(),
            &[("vm-disk1.vmdk".into(), 4_294_967_296)],
            &[("vm-disk1.vmdk".into(), 65536)],
        )
        .unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn adds_missing_attributes_with_the_ovf_prefix() {
        let xml = r#"<Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns="http://schemas.dmtf.org/ovf/envelope/1"><References><File ovf:href="d.img" ovf:id="f"/></References><DiskSection><Disk ovf:diskId="d" ovf:fileRef="f" ovf:capacity="1048576"/></DiskSection></Envelope>"#;
        let out = fill_sizes(
            xml.as_bytes(),
            &[("d.img".into(), 77)],
            &[("d.img".into(), 0)],
        )
        .unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains(r#"ovf:size="77""#), "{text}");
        assert!(text.contains(r#"ovf:populatedSize="0""#), "{text}");
        assert_eq!(ovf::parse(&out).unwrap().files[0].size, Some(77));
    }

    #[test]
    fn unknown_href_is_an_error() {
        let e = fill_sizes(VMWARE.as_bytes(), &[("other.img".into(), 1)], &[]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("other.img"));
    }

    #[test]
    fn generated_descriptor_parses() {
        let disks = vec![
            GeneratedDisk {
                href: "a.qcow2".into(),
                size: 393216,
                capacity: 1 << 30,
                populated_size: 65536,
            },
            GeneratedDisk {
                href: "b&c.qcow2".into(),
                size: 262144,
                capacity: 5,
                populated_size: 0,
            },
        ];
        let xml = generate("my <vm>", &disks);
        let env = ovf::parse(&xml).unwrap();
        assert_eq!(env.files.len(), 2);
        assert_eq!(env.file_by_href("b&c.qcow2").unwrap().size, Some(262144));
        assert_eq!(env.disk_for_href("a.qcow2").unwrap().capacity, 1 << 30);
        assert_eq!(env.name.as_deref(), Some("my <vm>"));
    }
}
