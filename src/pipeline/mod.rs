//! Pipelines: glue between sources, the OVA layer, codecs and sinks.
//!
//! # Copies of each byte on import
//!
//! Counted from the code, for one byte of disk data on its way from the
//! source to the target's page cache. A *copy* writes the byte to other
//! memory; the stages that only read it in place are listed apart.
//!
//! Into the pipeline, by source kind:
//!
//! | source | copies | how |
//! |---|---|---|
//! | pipe (`ovaio import -`) | 1 | `read(2)`, on a reading thread of its own ([`crate::source::read_ahead`]), into the spare capacity of a 1 MiB buffer ([`crate::source::SourceReader::fill`]); that buffer, frozen into `Bytes`, is what every later stage borrows or shares |
//! | file (`ovaio import FILE`, jobs) | 1 | the same, large reads straight into the buffer the decoder consumes |
//! | HTTP body (`ovaio serve`, TLS) | 3, and decryption | `recv` into rustls's buffer; AES-GCM in place; rustls copies each record's plaintext into a buffer of its own, and tokio-rustls copies it into hyper's read buffer, whose body frames (`Bytes`, split off without a copy) cross the channel to the blocking import |
//!
//! Through it, by disk format (the same for every source kind):
//!
//! | disk | decode | write | total from a pipe or file |
//! |---|---|---|---|
//! | raw | 0: extents are slices of the read buffer; only the entry's last 512 bytes wait in the decoder (a fixed VHD's footer?) | 1: `pwrite(2)` from the slice | 2 |
//! | qcow2, uncompressed | 0: data clusters are slices of the read buffer (2 more for bytes that come before the table mapping them: spooled to a file and read back) | 1 | 2 |
//! | qcow2, compressed | inflating into a cluster buffer | 1 | 3 |
//! | VMDK streamOptimized | inflating each grain, straight from the read buffer, into one reused grain buffer (a stored deflate block is a copy) | 1 | 3 |
//! | gzip-compressed raw | inflating into a 256 KiB buffer | 1 | 3 |
//!
//! A raw or qcow2 *target* writes every extent from the slice it is given;
//! a qcow2 target copies only the parts of clusters an extent covers
//! partly (at most one cluster at each end of an extent) into a cluster
//! buffer, to write each cluster once.
//!
//! Read in place, never copied: the tar demux (headers; data passes as
//! slices), the digests (each algorithm's thread reads every byte once,
//! from `Bytes` shared by reference count, see [`digests`]), and zero
//! detection (each aligned 4 KiB block up to its first non-zero word, in
//! [`crate::sink::writer::VolumeWriter`]).
//!
//! The kernel makes the first and the last copy (into the read buffer, into
//! the page cache); a raw or uncompressed qcow2 disk is not copied in user
//! space at all.

pub mod digests;
pub mod export;
pub mod import;
pub mod inspect;
pub mod package_head;
pub mod progress;
pub mod tickets;
