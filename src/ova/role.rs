//! What a package entry is: the OVF descriptor, a manifest, or something
//! else (a disk, a certificate, an extra file). Import, inspect and the
//! digest threads all ask [`Roles`], so that they agree on every entry:
//! the first `.ovf` is the descriptor, every `.mf` a manifest, each within
//! its size limit.

use thiserror::Error;

use crate::error::{Classify, ErrorKind};
use crate::limits;

/// The part an entry plays in its package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The OVF descriptor (the first `.ovf` entry).
    Descriptor,
    /// A manifest (`.mf`): one per package, or one per disk.
    Manifest,
    /// Anything else: a disk, a certificate, a second `.ovf`, an extra.
    Other,
}

/// Why an entry cannot play the part its name gives it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RoleError {
    /// A second `.ovf` entry: which one describes the package?
    #[error("a second OVF descriptor in the package")]
    SecondDescriptor,
    /// The descriptor is larger than [`limits::MAX_OVF_SIZE`].
    #[error(
        "OVF descriptor is {size} bytes, over the {} byte limit",
        limits::MAX_OVF_SIZE
    )]
    DescriptorTooLarge {
        /// Its size.
        size: u64,
    },
    /// One manifest is larger than [`limits::MAX_MANIFEST_SIZE`].
    #[error(
        "manifest is {size} bytes, over the {} byte limit",
        limits::MAX_MANIFEST_SIZE
    )]
    ManifestTooLarge {
        /// Its size.
        size: u64,
    },
    /// The manifests together pass [`limits::MAX_MANIFESTS_SIZE`].
    #[error(
        "the package's manifests together are over the {} byte limit",
        limits::MAX_MANIFESTS_SIZE
    )]
    ManifestsTooLarge,
}

impl Classify for RoleError {
    fn kind(&self) -> ErrorKind {
        match self {
            RoleError::SecondDescriptor => ErrorKind::CorruptImage,
            _ => ErrorKind::LimitExceeded,
        }
    }
}

/// The role of each entry of one package, in order.
#[derive(Debug, Default, Clone)]
pub struct Roles {
    descriptor_seen: bool,
    manifest_bytes: u64,
}

impl Roles {
    /// A package none of whose entries has been seen.
    pub fn new() -> Roles {
        Roles::default()
    }

    /// The role the entry `name` of `size` bytes plays (`None`: a zip
    /// member whose size comes after its data; the caller caps it while it
    /// streams). An entry that breaks a rule of its role is an error, and
    /// counts as [`Role::Other`] for a later entry.
    pub fn classify(&mut self, name: &str, size: Option<u64>) -> Result<Role, RoleError> {
        match name_role(name) {
            Role::Descriptor => {
                if self.descriptor_seen {
                    return Err(RoleError::SecondDescriptor);
                }
                if let Some(size) = size.filter(|&s| s > limits::MAX_OVF_SIZE) {
                    return Err(RoleError::DescriptorTooLarge { size });
                }
                self.descriptor_seen = true;
                Ok(Role::Descriptor)
            }
            Role::Manifest => {
                let size = size.unwrap_or(0);
                if size > limits::MAX_MANIFEST_SIZE {
                    return Err(RoleError::ManifestTooLarge { size });
                }
                if self.manifest_bytes + size > limits::MAX_MANIFESTS_SIZE {
                    return Err(RoleError::ManifestsTooLarge);
                }
                self.manifest_bytes += size;
                Ok(Role::Manifest)
            }
            Role::Other => Ok(Role::Other),
        }
    }

    /// Whether the descriptor has been seen.
    pub fn descriptor_seen(&self) -> bool {
        self.descriptor_seen
    }
}

/// Files producers add beside the disks: oVirt's padding, TPM and NVRAM
/// state.
const KNOWN_EXTRAS: [&str; 3] = ["tpm.dat", "nvram.dat", "pad"];

/// Whether `name` ends with the extension `ext` (with its dot), in any case.
fn has_extension(name: &str, ext: &str) -> bool {
    name.len() >= ext.len()
        && name.is_char_boundary(name.len() - ext.len())
        && name[name.len() - ext.len()..].eq_ignore_ascii_case(ext)
}

/// Whether `name` is one of the files producers add beside the disks
/// (padding, TPM and NVRAM state, a signing certificate): skipped unless
/// the OVF or the caller makes it a disk.
pub fn is_extra_name(name: &str) -> bool {
    KNOWN_EXTRAS.contains(&name) || has_extension(name, ".cert")
}

/// The role an entry's name alone gives it (case-insensitive extension).
pub fn name_role(name: &str) -> Role {
    let ext = |e: &str| has_extension(name, e);
    if ext(".ovf") {
        Role::Descriptor
    } else if ext(".mf") {
        Role::Manifest
    } else {
        Role::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_decide_roles_case_insensitively() {
        assert_eq!(name_role("vm.ovf"), Role::Descriptor);
        assert_eq!(name_role("VM.OVF"), Role::Descriptor);
        assert_eq!(name_role("vm.mf"), Role::Manifest);
        assert_eq!(name_role("disk1.Mf"), Role::Manifest);
        assert_eq!(name_role("vm.cert"), Role::Other);
        assert_eq!(name_role("disk.vmdk"), Role::Other);
        assert_eq!(name_role(".ovf"), Role::Descriptor);
        assert_eq!(name_role("ovf"), Role::Other);
        assert_eq!(name_role("é.mf"), Role::Manifest);
        assert_eq!(name_role("ü"), Role::Other);
        assert!(is_extra_name("pad") && is_extra_name("tpm.dat") && is_extra_name("VM.CERT"));
        assert!(!is_extra_name("disk.vmdk") && !is_extra_name("Pad"));
    }

    #[test]
    fn the_first_descriptor_counts_and_a_second_is_refused() {
        let mut r = Roles::new();
        assert_eq!(r.classify("a.ovf", Some(10)), Ok(Role::Descriptor));
        assert!(r.descriptor_seen());
        assert_eq!(
            r.classify("b.ovf", Some(10)),
            Err(RoleError::SecondDescriptor)
        );
        assert_eq!(r.classify("d.vmdk", Some(1 << 40)), Ok(Role::Other));
    }

    #[test]
    fn sizes_are_held_to_the_limits() {
        let mut r = Roles::new();
        let big = limits::MAX_OVF_SIZE + 1;
        assert_eq!(
            r.classify("a.ovf", Some(big)),
            Err(RoleError::DescriptorTooLarge { size: big })
        );
        // A refused descriptor is not seen: the next one may still be it.
        assert_eq!(r.classify("a.ovf", None), Ok(Role::Descriptor));
        let one = limits::MAX_MANIFEST_SIZE;
        let mut seen = 0;
        let err = loop {
            match r.classify("x.mf", Some(one)) {
                Ok(role) => {
                    assert_eq!(role, Role::Manifest);
                    seen += one;
                }
                Err(e) => break e,
            }
        };
        assert_eq!(err, RoleError::ManifestsTooLarge);
        assert_eq!(seen, limits::MAX_MANIFESTS_SIZE);
        assert_eq!(
            Roles::new().classify("x.mf", Some(one + 1)),
            Err(RoleError::ManifestTooLarge { size: one + 1 })
        );
    }
}
