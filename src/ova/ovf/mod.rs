//! The OVF descriptor: which files the package holds (`References/File`)
//! and which virtual disks they carry (`DiskSection/Disk`), with sizes,
//! compression, capacities and format URIs. The import pipeline uses it to
//! route tar entries to target volumes and to size those volumes.
//!
//! The descriptor is hostile input. It is capped in size
//! ([`limits::MAX_OVF_SIZE`]), nesting depth ([`limits::MAX_XML_DEPTH`]) and
//! number of files and disks ([`limits::MAX_OVF_FILES`]); a DOCTYPE that
//! declares entities is refused, and no entity is expanded except the five
//! predefined ones and numeric character references.
//!
//! Elements are matched by local name in the OVF 1.x and 2.x namespaces
//! (with or without a trailing `/`, as oVirt writes it) and, leniently, in
//! no namespace at all. Attributes are matched in the OVF namespace under
//! whatever prefix it is bound to, falling back to unprefixed attributes.

mod error;
mod model;
mod parser;
pub mod vm;
pub mod writer;

pub use error::OvfError;
pub use model::*;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub use parser::fuzz_entry;
pub use parser::{OvfParser, parse};

#[cfg(test)]
mod tests;
