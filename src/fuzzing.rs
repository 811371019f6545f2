//! Entry points for `cargo fuzz` targets (see `fuzz/`); not a stable API.
//! Each takes arbitrary bytes and must never panic.

pub use crate::ova::demux::fuzz_entry as tar_demux;
pub use crate::codec::vmdk::fuzz_entry as vmdk;
