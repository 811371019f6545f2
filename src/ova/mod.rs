//! The OVA layer: the package container (plain tar, compressed tar or zip),
//! tar demultiplexing, the OVF descriptor and the manifest.

pub mod decompress;
pub mod demux;
pub mod digest;
pub mod layout;
pub mod manifest;
pub mod ovf;
pub mod role;
pub mod unpack;
pub mod writer;
pub mod zip;
