//! OVF descriptors, manifests and whole OVA packages as other vendors'
//! tools lay them out.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::file_len;
use super::image::{Layout, Source};
use super::tar::{TarFormat, gnu_tar};

/// One `File` + `Disk` pair of an OVF.
#[derive(Debug, Clone)]
pub struct OvfDisk {
    /// `File/@ovf:id`.
    pub file_id: String,
    /// `File/@ovf:href` (the tar entry name).
    pub href: String,
    /// `File/@ovf:size`: bytes of the entry (compressed if gzip).
    pub size: u64,
    /// `File/@ovf:compression="gzip"`.
    pub gzip: bool,
    /// `Disk/@ovf:diskId`.
    pub disk_id: String,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// State the capacity in `byte * 2^20` units (capacity must be whole MiB).
    pub mib_units: bool,
    /// `Disk/@ovf:format`.
    pub format_uri: Option<String>,
    /// `Disk/@ovf:populatedSize`.
    pub populated_size: Option<u64>,
}

/// The name every generated OVF gives its virtual system.
pub const VM_NAME: &str = "testvm";

/// An OVF 1.0 envelope in the shape VMware and oVirt write: References,
/// DiskSection, NetworkSection and one VirtualSystem with a disk controller
/// and one disk item per disk.
pub fn ovf_xml(disks: &[OvfDisk]) -> String {
    let mut refs = String::new();
    let mut disk_section = String::new();
    let mut items = String::new();
    for (i, d) in disks.iter().enumerate() {
        let compression = if d.gzip {
            r#" ovf:compression="gzip""#
        } else {
            ""
        };
        let _ = writeln!(
            refs,
            r#"    <File ovf:href="{}" ovf:id="{}" ovf:size="{}"{compression}/>"#,
            d.href, d.file_id, d.size
        );
        let (capacity, units) = if d.mib_units {
            assert_eq!(d.capacity % (1 << 20), 0, "capacity not whole MiB");
            (
                d.capacity >> 20,
                r#" ovf:capacityAllocationUnits="byte * 2^20""#,
            )
        } else {
            (d.capacity, "")
        };
        let format = d
            .format_uri
            .as_ref()
            .map(|f| format!(r#" ovf:format="{f}""#))
            .unwrap_or_default();
        let populated = d
            .populated_size
            .map(|p| format!(r#" ovf:populatedSize="{p}""#))
            .unwrap_or_default();
        let _ = writeln!(
            disk_section,
            r#"    <Disk ovf:capacity="{capacity}"{units} ovf:diskId="{}" ovf:fileRef="{}"{format}{populated}/>"#,
            d.disk_id, d.file_id
        );
        let _ = write!(
            items,
            r#"      <Item>
        <rasd:AddressOnParent>{i}</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk {n}</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/{id}</rasd:HostResource>
        <rasd:InstanceID>{inst}</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
"#,
            n = i + 1,
            id = d.disk_id,
            inst = 10 + i
        );
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated for ovaio integration tests -->
<Envelope vmw:buildId="build-0" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
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
  <VirtualSystem ovf:id="{VM_NAME}">
    <Info>A virtual machine</Info>
    <Name>{VM_NAME}</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{VM_NAME}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
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
        <rasd:ElementName>512MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>512</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
{items}    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

/// Manifest line styles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manifest {
    /// `SHA256(name)= hex` (what ovftool and ovaio write).
    Sha256,
    /// `SHA1 (name) = hex` (the spaced form `sha1sum --tag` prints).
    Sha1Spaced,
}

impl Manifest {
    /// Hex digest of `data`.
    pub fn digest(self, data: &[u8]) -> String {
        match self {
            Manifest::Sha256 => hex::encode(Sha256::digest(data)),
            Manifest::Sha1Spaced => hex::encode(Sha1::digest(data)),
        }
    }

    /// Hex digest of the file at `path`.
    pub fn digest_file(self, path: &Path) -> String {
        self.digest(&fs::read(path).expect("read file to digest"))
    }

    /// One manifest line (with its newline).
    pub fn line(self, name: &str, hex: &str) -> String {
        match self {
            Manifest::Sha256 => format!("SHA256({name})= {hex}\n"),
            Manifest::Sha1Spaced => format!("SHA1 ({name}) = {hex}\n"),
        }
    }

    /// Algorithm name as `inspect` reports it.
    pub fn algorithm(self) -> &'static str {
        match self {
            Manifest::Sha256 => "SHA256",
            Manifest::Sha1Spaced => "SHA1",
        }
    }
}

/// A disk of an OVA under construction.
#[derive(Debug, Clone)]
pub struct Disk {
    /// Entry name and `ovf:href`.
    pub href: String,
    /// File holding the entry's bytes.
    pub file: PathBuf,
    /// The OVF description (size filled in from `file`).
    pub ovf: OvfDisk,
}

impl Disk {
    /// A disk entry of format `source` read from `file`, of virtual size
    /// `capacity`; ids are derived from `index` (1-based).
    pub fn new(index: usize, href: &str, file: &Path, source: Source, capacity: u64) -> Disk {
        Disk {
            href: href.to_owned(),
            file: file.to_owned(),
            ovf: OvfDisk {
                file_id: format!("file{index}"),
                href: href.to_owned(),
                size: file_len(file),
                gzip: source.gzip(),
                disk_id: format!("vmdisk{index}"),
                capacity,
                mib_units: false,
                format_uri: source.format_uri().map(str::to_owned),
                populated_size: None,
            },
        }
    }

    /// States the capacity in `byte * 2^20` units.
    pub fn mib_units(mut self) -> Disk {
        self.ovf.mib_units = true;
        self
    }

    /// Sets `ovf:populatedSize`.
    pub fn populated(mut self, bytes: u64) -> Disk {
        self.ovf.populated_size = Some(bytes);
        self
    }
}

/// Where the descriptor and manifest go relative to the disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// OVF, disks, extras, manifest (what exporters write).
    OvfFirst,
    /// OVF, manifest, disks, extras (the spec's other allowed layout).
    ManifestAfterOvf,
    /// First disk, OVF, remaining disks, extras, manifest.
    OvfAfterFirstDisk,
    /// Disks, extras, manifest, OVF.
    OvfLast,
}

/// An OVA package to build with GNU tar.
#[derive(Debug, Clone)]
pub struct Ova {
    /// Disks, in References order.
    pub disks: Vec<Disk>,
    /// Non-disk entries (`tpm.dat`, ...): name and contents.
    pub extras: Vec<(String, Vec<u8>)>,
    /// Manifest style, or none.
    pub manifest: Option<Manifest>,
    /// Lines appended to the generated manifest.
    pub manifest_extra: String,
    /// Replaces the generated manifest text entirely.
    pub manifest_text: Option<String>,
    /// Replaces the generated OVF text.
    pub ovf_text: Option<String>,
    /// Entry order.
    pub placement: Placement,
    /// Tar flavour.
    pub format: TarFormat,
}

/// Descriptor entry name.
pub const OVF_NAME: &str = "vm.ovf";
/// Manifest entry name.
pub const MF_NAME: &str = "vm.mf";

impl Ova {
    /// An OVA with no disks yet, OVF first, no manifest, GNU format.
    pub fn new() -> Ova {
        Ova {
            disks: Vec::new(),
            extras: Vec::new(),
            manifest: None,
            manifest_extra: String::new(),
            manifest_text: None,
            ovf_text: None,
            placement: Placement::OvfFirst,
            format: TarFormat::Gnu,
        }
    }

    /// Adds a disk.
    pub fn disk(mut self, disk: Disk) -> Ova {
        self.disks.push(disk);
        self
    }

    /// Adds a non-disk entry.
    pub fn extra(mut self, name: &str, data: &[u8]) -> Ova {
        self.extras.push((name.to_owned(), data.to_vec()));
        self
    }

    /// Adds a manifest of the given style.
    pub fn manifest(mut self, style: Manifest) -> Ova {
        self.manifest = Some(style);
        self
    }

    /// Sets the entry order.
    pub fn placement(mut self, placement: Placement) -> Ova {
        self.placement = placement;
        self
    }

    /// Sets the tar flavour.
    pub fn format(mut self, format: TarFormat) -> Ova {
        self.format = format;
        self
    }

    /// The descriptor text.
    pub fn ovf(&self) -> String {
        self.ovf_text.clone().unwrap_or_else(|| {
            ovf_xml(&self.disks.iter().map(|d| d.ovf.clone()).collect::<Vec<_>>())
        })
    }

    /// The manifest text for the given descriptor: the OVF, then every disk.
    pub fn manifest_for(&self, style: Manifest, ovf: &str) -> String {
        if let Some(text) = &self.manifest_text {
            return text.clone();
        }
        let mut text = style.line(OVF_NAME, &style.digest(ovf.as_bytes()));
        for d in &self.disks {
            text.push_str(&style.line(&d.href, &style.digest_file(&d.file)));
        }
        text.push_str(&self.manifest_extra);
        text
    }

    /// Builds the package at `dir/name` with GNU tar and returns its path.
    /// Scratch files go to `dir/name.d`.
    pub fn build(&self, dir: &Path, name: &str) -> PathBuf {
        let out = dir.join(name);
        let scratch = dir.join(format!("{name}.d"));
        fs::create_dir(&scratch).expect("scratch dir");
        let ovf = self.ovf();
        let ovf_file = scratch.join("descriptor");
        fs::write(&ovf_file, &ovf).expect("write ovf");
        let mf_file = scratch.join("manifest");
        if let Some(style) = self.manifest {
            fs::write(&mf_file, self.manifest_for(style, &ovf)).expect("write manifest");
        }
        let mut extra_files = Vec::new();
        for (i, (name, data)) in self.extras.iter().enumerate() {
            let p = scratch.join(format!("extra{i}"));
            fs::write(&p, data).expect("write extra");
            extra_files.push((name.clone(), p));
        }

        let ovf_entry = (OVF_NAME.to_owned(), ovf_file.as_path());
        let mf_entry = self
            .manifest
            .map(|_| (MF_NAME.to_owned(), mf_file.as_path()));
        let disk_entries: Vec<(String, &Path)> = self
            .disks
            .iter()
            .map(|d| (d.href.clone(), d.file.as_path()))
            .collect();
        let extra_entries: Vec<(String, &Path)> = extra_files
            .iter()
            .map(|(n, p)| (n.clone(), p.as_path()))
            .collect();

        let mut entries = Vec::new();
        match self.placement {
            Placement::OvfFirst => {
                entries.push(ovf_entry);
                entries.extend(disk_entries);
                entries.extend(extra_entries);
                entries.extend(mf_entry);
            }
            Placement::ManifestAfterOvf => {
                entries.push(ovf_entry);
                entries.extend(mf_entry);
                entries.extend(disk_entries);
                entries.extend(extra_entries);
            }
            Placement::OvfAfterFirstDisk => {
                let mut disks = disk_entries.into_iter();
                entries.extend(disks.next());
                entries.push(ovf_entry);
                entries.extend(disks);
                entries.extend(extra_entries);
                entries.extend(mf_entry);
            }
            Placement::OvfLast => {
                entries.extend(disk_entries);
                entries.extend(extra_entries);
                entries.extend(mf_entry);
                entries.push(ovf_entry);
            }
        }
        gnu_tar(self.format, &scratch.join("stage"), &out, &entries);
        out
    }
}

impl Default for Ova {
    fn default() -> Ova {
        Ova::new()
    }
}

/// One prepared source disk: the raw reference image and the entry file in
/// the requested format.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The raw image targets are compared with.
    pub raw: PathBuf,
    /// The entry's bytes in the source format.
    pub file: PathBuf,
    /// Source format.
    pub source: Source,
    /// Virtual size.
    pub capacity: u64,
}

/// Writes `layout` as `dir/<stem>.raw` and converts it to `source` as
/// `dir/<stem>.src`.
pub fn prepare(dir: &Path, stem: &str, layout: &Layout, source: Source) -> Prepared {
    let raw = layout.write_raw(&dir.join(format!("{stem}.raw")));
    let file = source.convert(&raw, &dir.join(format!("{stem}.src")));
    Prepared {
        raw,
        file,
        source,
        capacity: layout.size,
    }
}

impl Prepared {
    /// An OVA disk for this source under `href`, index `index` (1-based).
    pub fn disk(&self, index: usize, href: &str) -> Disk {
        Disk::new(index, href, &self.file, self.source, self.capacity)
    }
}

/// An OVF description of a raw disk entry `href` of `size` bytes.
pub fn raw_ovf_disk(index: usize, href: &str, size: u64, capacity: u64) -> OvfDisk {
    OvfDisk {
        file_id: format!("file{index}"),
        href: href.to_owned(),
        size,
        gzip: false,
        disk_id: format!("vmdisk{index}"),
        capacity,
        mib_units: false,
        format_uri: None,
        populated_size: None,
    }
}
