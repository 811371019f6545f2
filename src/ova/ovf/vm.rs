//! The virtual machine a generated descriptor describes ([`VmSpec`]): CPUs,
//! memory, guest operating system, the disk controller every disk hangs
//! from, network adapters and the optional product and annotation text.
//!
//! The values are what importers need to build a VM that boots: VMware
//! (ovftool, vSphere), VirtualBox and the Common OVF Tool read the CPU and
//! memory Items, the `OperatingSystemSection` and a disk's `Parent`
//! controller, and refuse or guess when one is missing. Each value is
//! parsed from the text an operator types ([`parse_cpus`],
//! [`parse_memory`], [`GuestOs::parse`], [`Controller::parse`]); the
//! errors say what is accepted, and the caller names the flag or field.

use std::borrow::Cow;

use crate::error::{Classify, ErrorKind};

/// Virtual CPUs when none are asked for.
pub const DEFAULT_CPUS: u32 = 1;
/// Memory when none is asked for (MiB): what current Linux and Windows
/// installers ask as their minimum.
pub const DEFAULT_MEMORY_MIB: u64 = 2048;
/// Most virtual CPUs (vSphere 8's maximum per VM).
pub const MAX_CPUS: u32 = 768;
/// Most memory (MiB): 24 TiB, vSphere 8's maximum per VM.
pub const MAX_MEMORY_MIB: u64 = 24 << 20;
/// Most network adapters (VMware's maximum per VM).
pub const MAX_NICS: usize = 10;
/// Most disk controllers of one kind (VMware's maximum for SCSI and SATA).
pub const MAX_CONTROLLERS: usize = 4;
/// Longest product, vendor, version, annotation or network name (bytes).
pub const MAX_TEXT: usize = 4096;
/// The hardware families the generated descriptor names: VMware virtual
/// hardware 13 (ESXi 6.5 and later, Workstation 14 and later; SATA needs
/// 10) and VirtualBox's own family. Importers take the first family they
/// know, as they do with portable appliances.
pub const VIRTUAL_SYSTEM_TYPE: &str = "vmx-13 virtualbox-2.2";
/// The network adapter model: the one VMware, VirtualBox and every guest
/// operating system know.
pub const NIC_MODEL: &str = "E1000";

/// The kind of controller the disks are attached to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Controller {
    /// SATA (AHCI): every current guest has its driver; VMware hardware 10
    /// and later, VirtualBox.
    #[default]
    Sata,
    /// Parallel SCSI (LSI Logic): VMware's classic default, known to
    /// VirtualBox too.
    Scsi,
}

impl Controller {
    /// Every controller kind, in the order help texts list them.
    pub const ALL: [Controller; 2] = [Controller::Sata, Controller::Scsi];

    /// The name used on the command line and in tickets.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Sata => "sata",
            Controller::Scsi => "scsi",
        }
    }

    /// `sata` or `scsi`, in any case.
    pub fn parse(s: &str) -> Result<Controller, String> {
        Controller::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("'{s}' is not a controller kind: give sata or scsi"))
    }

    /// CIM `ResourceType`: 20 (other storage device, how VMware and
    /// VirtualBox describe SATA) or 6 (parallel SCSI HBA).
    pub fn resource_type(self) -> u16 {
        match self {
            Controller::Sata => 20,
            Controller::Scsi => 6,
        }
    }

    /// `ResourceSubType`, as ovftool writes it (VirtualBox 5 and later read
    /// `vmware.sata.ahci` as well as its own `AHCI`).
    pub fn subtype(self) -> &'static str {
        match self {
            Controller::Sata => "vmware.sata.ahci",
            Controller::Scsi => "lsilogic",
        }
    }

    /// What the controller's Item is called.
    pub fn label(self) -> &'static str {
        match self {
            Controller::Sata => "SATA Controller",
            Controller::Scsi => "SCSI Controller",
        }
    }

    /// Disks one controller holds: 30 SATA ports, 15 SCSI units (unit 7 is
    /// the controller's own).
    pub fn slots(self) -> usize {
        match self {
            Controller::Sata => 30,
            Controller::Scsi => 15,
        }
    }

    /// `AddressOnParent` of the `i`th disk on one controller.
    pub fn unit(self, i: usize) -> usize {
        match self {
            Controller::Scsi if i >= 7 => i + 1,
            _ => i,
        }
    }
}

/// The guest operating system: its CIM `OSType` (what
/// `OperatingSystemSection/@ovf:id` holds) and VMware's guest id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestOs {
    /// CIM_OperatingSystem.OSType.
    pub cim_id: u16,
    /// Its description (the `Description` element).
    pub description: Cow<'static, str>,
    /// VMware's guest id (`vmw:osType`), which vSphere prefers to the CIM
    /// number when it knows it.
    pub vmware: Option<&'static str>,
}

/// A named guest type: `(name, CIM OSType, description, VMware guest id)`.
type OsRow = (&'static str, u16, &'static str, &'static str);

/// The guest types `--os` knows by name. The VMware ids are those ESXi
/// 6.5 (hardware 13) knows; later versions know them too.
pub const GUEST_OSES: &[OsRow] = &[
    ("other", 1, "Other", "otherGuest"),
    ("other64", 102, "Other 64-Bit", "otherGuest64"),
    ("linux", 36, "LINUX", "otherLinuxGuest"),
    ("linux64", 101, "Linux 64-Bit", "otherLinux64Guest"),
    ("debian64", 96, "Debian 64-Bit", "debian9_64Guest"),
    ("ubuntu64", 94, "Ubuntu 64-Bit", "ubuntu64Guest"),
    (
        "rhel64",
        80,
        "RedHat Enterprise Linux 64-Bit",
        "rhel7_64Guest",
    ),
    ("centos64", 107, "CentOS 64-bit", "centos7_64Guest"),
    (
        "oracle64",
        109,
        "Oracle Linux 64-bit",
        "oracleLinux7_64Guest",
    ),
    ("sles64", 85, "SLES 64-Bit", "sles12_64Guest"),
    ("freebsd64", 78, "FreeBSD 64-Bit", "freebsd11_64Guest"),
    (
        "windows7-64",
        105,
        "Microsoft Windows 7",
        "windows7_64Guest",
    ),
    (
        "windows2012r2",
        115,
        "Microsoft Windows Server 2012 R2",
        "windows8Server64Guest",
    ),
    (
        "windows2016",
        118,
        "Microsoft Windows Server 2016",
        "windows9Server64Guest",
    ),
    (
        "windows10-64",
        120,
        "Microsoft Windows 10 64-Bit",
        "windows9_64Guest",
    ),
];

/// The guest type when none is asked for: nothing is known about the
/// guest, and every current one is 64-bit.
pub const DEFAULT_OS: &str = "other64";

impl Default for GuestOs {
    fn default() -> Self {
        // The default is a row of the table.
        GuestOs::parse(DEFAULT_OS).unwrap_or(GuestOs {
            cim_id: 102,
            description: Cow::Borrowed("Other 64-Bit"),
            vmware: None,
        })
    }
}

impl GuestOs {
    /// A name from [`GUEST_OSES`] (any case), or a CIM OSType number
    /// (0 to 65535; a number of the table takes its row).
    pub fn parse(s: &str) -> Result<GuestOs, String> {
        let s = s.trim();
        let row = |r: &OsRow| GuestOs {
            cim_id: r.1,
            description: Cow::Borrowed(r.2),
            vmware: Some(r.3),
        };
        if let Some(r) = GUEST_OSES.iter().find(|r| r.0.eq_ignore_ascii_case(s)) {
            return Ok(row(r));
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            let id: u16 = s
                .parse()
                .map_err(|_| format!("'{s}' is not a CIM OSType number (0 to 65535)"))?;
            return Ok(match GUEST_OSES.iter().find(|r| r.1 == id) {
                Some(r) => row(r),
                None => GuestOs {
                    cim_id: id,
                    description: Cow::Owned(format!("CIM OSType {id}")),
                    vmware: None,
                },
            });
        }
        let names: Vec<&str> = GUEST_OSES.iter().map(|r| r.0).collect();
        Err(format!(
            "'{s}' is not a guest type: give one of {} or a CIM OSType number",
            names.join(", ")
        ))
    }
}

/// `N` virtual CPUs, 1 to [`MAX_CPUS`].
pub fn parse_cpus(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number of CPUs"))?;
    if !(1..=MAX_CPUS).contains(&n) {
        return Err(format!("{n} CPUs: give 1 to {MAX_CPUS}"));
    }
    Ok(n)
}

/// A memory size in MiB: a number with an optional binary unit, `M`/`MB`/
/// `MiB` (the default), `G`/`GB`/`GiB` or `T`/`TB`/`TiB`, any case (VMware
/// and VirtualBox count MB in powers of two too). It must be a whole
/// number of MiB, at least 1 MiB and at most [`MAX_MEMORY_MIB`].
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 0,
        "g" | "gb" | "gib" => 10,
        "t" | "tb" | "tib" => 20,
        _ => {
            return Err(format!(
                "'{s}' is not a memory size: give MiB (2048), or a number with M, G or T (2G)"
            ));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a memory size: give MiB (2048), or 2G"))?;
    let mib = n
        .checked_mul(1 << shift)
        .filter(|&m| m <= MAX_MEMORY_MIB)
        .ok_or_else(|| format!("'{s}' is more than {} TiB", MAX_MEMORY_MIB >> 20))?;
    if mib == 0 {
        return Err(format!("'{s}': the VM needs some memory"));
    }
    Ok(mib)
}

/// Text for the product, vendor, version, annotation or a network name:
/// not empty, at most [`MAX_TEXT`] bytes, no control characters but tab
/// and newline (XML 1.0 cannot carry the others).
pub fn check_text(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_TEXT {
        return Err(format!("is longer than {MAX_TEXT} bytes"));
    }
    if s.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' || c == '\u{fffe}' || c == '\u{ffff}')
    {
        return Err("holds a control character".into());
    }
    Ok(())
}

/// The `ProductSection` of the generated descriptor; written when any
/// field is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Product {
    /// `Product`: the name of the software in the VM.
    pub product: Option<String>,
    /// `Vendor`.
    pub vendor: Option<String>,
    /// `Version`.
    pub version: Option<String>,
}

impl Product {
    /// Whether nothing is given (no section is written).
    pub fn is_empty(&self) -> bool {
        self.product.is_none() && self.vendor.is_none() && self.version.is_none()
    }
}

/// What a generated descriptor says about the VM besides its disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The VM's name (`VirtualSystem/@ovf:id`, `Name`); `vm` when empty.
    pub name: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// The guest operating system.
    pub os: GuestOs,
    /// The kind of controller every disk is attached to (as many as the
    /// disks need, up to [`MAX_CONTROLLERS`]).
    pub controller: Controller,
    /// One network adapter per entry, connected to the named network.
    pub networks: Vec<String>,
    /// The `ProductSection`.
    pub product: Product,
    /// The `AnnotationSection` text.
    pub annotation: Option<String>,
}

impl VmSpec {
    /// A VM named `name` with the defaults: [`DEFAULT_CPUS`],
    /// [`DEFAULT_MEMORY_MIB`], [`DEFAULT_OS`], SATA, no network adapter.
    pub fn new(name: &str) -> VmSpec {
        VmSpec {
            name: name.to_owned(),
            cpus: DEFAULT_CPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            os: GuestOs::default(),
            controller: Controller::default(),
            networks: Vec::new(),
            product: Product::default(),
            annotation: None,
        }
    }

    /// The name written: `vm` when empty.
    pub fn display_name(&self) -> &str {
        if self.name.is_empty() {
            "vm"
        } else {
            &self.name
        }
    }

    /// Checks every value and that `disks` disks fit the controllers.
    pub fn check(&self, disks: usize) -> Result<(), VmError> {
        let bad = |field: &'static str, message: String| Err(VmError { field, message });
        if !(1..=MAX_CPUS).contains(&self.cpus) {
            return bad("cpus", format!("{} CPUs: give 1 to {MAX_CPUS}", self.cpus));
        }
        if !(1..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return bad(
                "memory",
                format!(
                    "{} MiB: give 1 MiB to {} TiB",
                    self.memory_mib,
                    MAX_MEMORY_MIB >> 20
                ),
            );
        }
        if self.networks.len() > MAX_NICS {
            return bad(
                "nic",
                format!(
                    "{} network adapters: at most {MAX_NICS}",
                    self.networks.len()
                ),
            );
        }
        for n in &self.networks {
            check_text(n).or_else(|m| bad("nic", format!("network name {m}")))?;
        }
        let texts = [
            ("product", &self.product.product),
            ("vendor", &self.product.vendor),
            ("product_version", &self.product.version),
            ("annotation", &self.annotation),
        ];
        for (field, v) in texts {
            if let Some(v) = v {
                check_text(v).or_else(|m| bad(field, m))?;
            }
        }
        check_text(self.display_name()).or_else(|m| bad("name", format!("the VM name {m}")))?;
        let room = self.controller.slots() * MAX_CONTROLLERS;
        if disks > room {
            let other = Controller::ALL
                .into_iter()
                .find(|c| *c != self.controller)
                .unwrap_or_default();
            return bad(
                "controller",
                format!(
                    "{disks} disks do not fit {MAX_CONTROLLERS} {} controllers ({room} disks){}",
                    self.controller.name().to_uppercase(),
                    if other.slots() * MAX_CONTROLLERS >= disks {
                        format!(
                            "; {} controllers hold {}",
                            other.name(),
                            other.slots() * MAX_CONTROLLERS
                        )
                    } else {
                        String::new()
                    }
                ),
            );
        }
        Ok(())
    }
}

/// A value of a [`VmSpec`] that cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct VmError {
    /// The field (`cpus`, `memory`, `nic`, `controller`, ...).
    pub field: &'static str,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl Classify for VmError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory("2048"), Ok(2048));
        assert_eq!(parse_memory("2048M"), Ok(2048));
        assert_eq!(parse_memory("2g"), Ok(2048));
        assert_eq!(parse_memory("2 GiB"), Ok(2048));
        assert_eq!(parse_memory("1TB"), Ok(1 << 20));
        assert_eq!(parse_memory("24T"), Ok(MAX_MEMORY_MIB));
        for bad in [
            "",
            "0",
            "0G",
            "25T",
            "2K",
            "1.5G",
            "G",
            "-1",
            "99999999999999999999",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_memory("2X").unwrap_err().contains("2G"));
    }

    #[test]
    fn cpus_range() {
        assert_eq!(parse_cpus("1"), Ok(1));
        assert_eq!(parse_cpus(" 768 "), Ok(768));
        for bad in ["0", "769", "-1", "two", ""] {
            assert!(parse_cpus(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn guest_os_by_name_or_number() {
        let u = GuestOs::parse("Ubuntu64").unwrap();
        assert_eq!((u.cim_id, u.vmware), (94, Some("ubuntu64Guest")));
        assert_eq!(GuestOs::parse("94").unwrap(), u);
        let n = GuestOs::parse("42").unwrap();
        assert_eq!((n.cim_id, n.vmware), (42, None));
        assert_eq!(GuestOs::default().cim_id, 102);
        let e = GuestOs::parse("plan9").unwrap_err();
        assert!(e.contains("linux64") && e.contains("CIM OSType"), "{e}");
        assert!(GuestOs::parse("65536").is_err());
    }

    #[test]
    fn controller_units_skip_the_scsi_controller_id() {
        let scsi: Vec<usize> = (0..15).map(|i| Controller::Scsi.unit(i)).collect();
        assert!(!scsi.contains(&7));
        assert_eq!(scsi.last(), Some(&15));
        assert_eq!(Controller::Sata.unit(29), 29);
        assert_eq!(Controller::parse("SCSI"), Ok(Controller::Scsi));
        assert!(
            Controller::parse("ide")
                .unwrap_err()
                .contains("sata or scsi")
        );
    }

    #[test]
    fn check_names_the_field() {
        let mut vm = VmSpec::new("x");
        assert_eq!(vm.check(120), Ok(()));
        assert_eq!(vm.check(121).unwrap_err().field, "controller");
        vm.controller = Controller::Scsi;
        let e = vm.check(61).unwrap_err();
        assert!(e.message.contains("sata controllers hold 120"), "{e}");
        vm.networks = vec!["a\u{1}b".into()];
        assert_eq!(vm.check(1).unwrap_err().field, "nic");
        vm.networks = vec!["n".into(); MAX_NICS + 1];
        assert_eq!(vm.check(1).unwrap_err().field, "nic");
        let mut vm = VmSpec::new("x");
        vm.cpus = 0;
        assert_eq!(vm.check(1).unwrap_err().field, "cpus");
        let mut vm = VmSpec::new("x");
        vm.annotation = Some(String::new());
        assert_eq!(vm.check(1).unwrap_err().field, "annotation");
    }
}
