//! Entry points for `cargo fuzz` targets (see `fuzz/`); not a stable API.
//! Each takes arbitrary bytes and must never panic.

pub use crate::codec::qcow2::encoder::fuzz_roundtrip as qcow2_encode;
pub use crate::codec::qcow2::fuzz_entry as qcow2;
pub use crate::codec::vdi::fuzz_entry as vdi;
pub use crate::codec::vhd::fuzz_entry as vhd;
pub use crate::codec::vmdk::encoder::fuzz_roundtrip as vmdk_encode;
pub use crate::codec::vmdk::fuzz_entry as vmdk;
pub use crate::ova::demux::fuzz_entry as tar_demux;
pub use crate::ova::manifest::fuzz_entry as manifest;
pub use crate::ova::ovf::fuzz_entry as ovf;
pub use crate::ova::unpack::fuzz_entry as package;
pub use crate::ova::zip::fuzz_entry as zip;
/// A remote volume's `extents` answer and remote volume URLs.
pub use crate::source::http::fuzz_entry as source_answers;
pub use crate::volume::imageio::fuzz_entry as remote_answers;
/// The NBD client over arbitrary server bytes: a handshake, then a
/// read, a block status, a write, a zeroing and a flush answered from the
/// rest of the input.
pub use crate::volume::nbd::fuzz_entry as nbd_client;

/// `Range`, `Content-Range` and query-string parsing of the data API: the
/// first byte (mod 9) counts the little-endian resource-size bytes that
/// follow, the rest is the header text given to each parser.
pub fn http_headers(data: &[u8]) {
    crate::server::range::fuzz_entry(data);
}

/// Decoder selection over one disk entry: the content probe picks a
/// decoder (or refuses a container), which then decodes the rest. The
/// first byte splits the input in two feeds. Every extent must lie inside
/// the capacity the decoder announced.
pub fn disk(data: &[u8]) {
    use crate::codec::qcow2::MemSpool;
    use crate::codec::select::Decoder;
    use crate::codec::{DiskDecoder, ExtentSink};

    /// Checks the extent contract and keeps nothing.
    struct Check {
        capacity: Option<u64>,
    }
    impl Check {
        fn check(&self, offset: u64, len: u64) {
            if let Some(cap) = self.capacity {
                let end = offset.checked_add(len);
                assert!(
                    end.is_some_and(|e| e <= cap),
                    "extent {offset}+{len} past capacity {cap}"
                );
            }
        }
    }
    impl ExtentSink for Check {
        fn capacity(&mut self, bytes: u64) -> crate::Result<()> {
            assert!(self.capacity.is_none(), "capacity announced twice");
            self.capacity = Some(bytes);
            Ok(())
        }
        fn data(&mut self, offset: u64, data: &[u8]) -> crate::Result<()> {
            self.check(offset, data.len() as u64);
            Ok(())
        }
        fn zero(&mut self, offset: u64, len: u64) -> crate::Result<()> {
            self.check(offset, len);
            Ok(())
        }
    }

    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let split = (split as usize * rest.len() / 255).min(rest.len());
    let mut d = Decoder::sniffing_any(Some(rest.len() as u64), 64 << 20)
        .with_spool(Box::new(MemSpool::new(4 << 20)));
    let mut out = Check { capacity: None };
    let _ = d
        .feed(&rest[..split], &mut out)
        .and_then(|()| d.feed(&rest[split..], &mut out))
        .and_then(|()| d.finish(&mut out));
}

/// A whole package through `ovaio inspect`'s pass: tar, OVF, manifest,
/// digests and the probe of every entry; then through the quick pass,
/// which skips entry contents and must see the same entries.
pub fn inspect(data: &[u8]) {
    use crate::pipeline::inspect::{Mode, inspect};
    let full = inspect(&mut &data[..], Mode::Verify);
    let quick = inspect(&mut std::io::Cursor::new(data), Mode::Quick);
    match (&full, &quick) {
        (Ok(f), Ok(q)) => {
            let names = |r: &crate::pipeline::inspect::InspectReport| {
                r.entries
                    .iter()
                    .map(|e| (e.name.clone(), e.size, e.offset))
                    .collect::<Vec<_>>()
            };
            assert_eq!(names(f), names(q), "quick inspect saw other entries");
        }
        (Err(_), Err(_)) => {}
        _ => panic!(
            "full and quick inspect disagree: {:?} vs {:?}",
            full.as_ref().err(),
            quick.as_ref().err()
        ),
    }
}
