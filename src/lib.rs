//! ovaio: a streaming data plane for virtual-machine disk images.
//!
//! ```text
//! import:  source ──► [gunzip | unxz | unzstd] ──► tar demux ──► per entry: OVF | manifest | disk
//!                 └──► [zip reader: members as entries] ──────────┘
//!                                      │ digest of every entry   │ disk decoder
//!                                      ▼ (checked vs manifest)   ▼ raw | qcow2 | vmdk
//!                                                     extents (offset, data | zero)
//!                                                                ▼
//!                                              volume sink: raw file (sparse) | qcow2 file
//!
//! export:  volume (raw | qcow2) ──► allocation map ──► qcow2 | VMDK streamOptimized encoder
//!          OVF (exact sizes) ──► tar mux: OVF, disks, manifest ──► FILE.partial | HTTP GET | stdout | S3 multipart
//! ```
//!
//! * [`source`] yields the package bytes (file, stdin, an HTTP(S) URL
//!   resumed with ranges, an object in S3-compatible storage).
//! * [`ova`] unpacks the package (plain, compressed or zip), demultiplexes
//!   the tar stream and parses the OVF and manifest.
//! * [`codec`] turns each disk entry into an extent stream, and a volume
//!   into a qcow2 or VMDK entry of known size.
//! * [`sink`] writes extents into target volumes under `.partial` names.
//! * [`volume`] is what every path reads and writes disks through: raw
//!   files and qcow2 images behind one set of capabilities.
//! * [`s3`] reaches S3-compatible object storage: packages imported from
//!   it and exported into it as multipart uploads.
//! * [`roots`] confines every file a ticket, job or package names to the
//!   storage roots.
//! * [`pipeline`] glues them together; [`cli`] is the command line.

// Library code handles what it is given: no panicking shortcuts outside
// tests and the fuzz harness (which must panic on a broken invariant).
#![cfg_attr(
    not(any(test, feature = "fuzzing")),
    warn(clippy::unwrap_used, clippy::expect_used)
)]

pub mod buffers;
pub mod cli;
pub mod client;
pub mod codec;
pub mod error;
pub mod limits;
pub mod names;
pub mod ova;
pub mod pipeline;
pub mod roots;
pub mod s3;
pub mod server;
pub mod sink;
pub mod source;
#[cfg(test)]
mod test_support;
pub mod ticket;
pub mod volume;

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

pub use error::{Error, ErrorKind, Result};
