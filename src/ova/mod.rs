//! The OVA layer: tar demultiplexing, the OVF descriptor and the manifest.

pub mod demux;
pub mod manifest;
pub mod ovf;
