//! The OVA layer: tar demultiplexing, the OVF descriptor and the manifest.

pub mod demux;
pub mod digest;
pub mod layout;
pub mod manifest;
pub mod ovf;
pub mod writer;
