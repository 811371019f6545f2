//! Entry points for `cargo fuzz` targets (see `fuzz/`); not a stable API.
//! Each takes arbitrary bytes and must never panic.

pub use crate::codec::qcow2::encoder::fuzz_roundtrip as qcow2_encode;
pub use crate::codec::qcow2::fuzz_entry as qcow2;
pub use crate::codec::vmdk::fuzz_entry as vmdk;
pub use crate::ova::demux::fuzz_entry as tar_demux;
pub use crate::ova::manifest::fuzz_entry as manifest;
pub use crate::ova::ovf::fuzz_entry as ovf;

/// `Range`, `Content-Range` and query-string parsing of the data API: the
/// first byte (mod 9) counts the little-endian resource-size bytes that
/// follow, the rest is the header text given to each parser.
pub fn http_headers(data: &[u8]) {
    crate::server::range::fuzz_entry(data);
}
