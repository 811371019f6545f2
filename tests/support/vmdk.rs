//! streamOptimized VMDKs in VMware's layout, which qemu-img does not write:
//! a header whose grain directory is "at the end", grains, after the
//! grains of each grain table's range that table as a metadata marker,
//! then the grain directory, the footer and the end-of-stream marker.
//! Grains are written in the order given, even when that order is wrong,
//! and every grain table can be altered before it is written, so that the
//! tables and the grain markers can be made to disagree.

use std::io::Write;

use flate2::Compression;
use flate2::write::ZlibEncoder;

const SECTOR: usize = 512;
/// Grain size (sectors): 64 KiB, as VMware writes.
pub const GRAIN_SECTORS: u64 = 128;
/// Grain table entries per grain table, as VMware writes.
pub const GTES: u64 = 512;
/// Sectors before the first marker: header and descriptor.
const OVERHEAD: u64 = 128;
const GD_AT_END: u64 = u64::MAX;
/// Newline detection, compressed grains, markers.
const FLAGS: u32 = 0x0003_0001;

fn header(capacity_sectors: u64, gd_offset: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(SECTOR);
    h.extend_from_slice(b"KDMV");
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&FLAGS.to_le_bytes());
    h.extend_from_slice(&capacity_sectors.to_le_bytes());
    h.extend_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h.extend_from_slice(&1u64.to_le_bytes()); // descriptorOffset
    h.extend_from_slice(&20u64.to_le_bytes()); // descriptorSize
    h.extend_from_slice(&(GTES as u32).to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes()); // rgdOffset
    h.extend_from_slice(&gd_offset.to_le_bytes());
    h.extend_from_slice(&OVERHEAD.to_le_bytes());
    h.push(0); // uncleanShutdown
    h.extend_from_slice(b"\n \r\n");
    h.extend_from_slice(&1u16.to_le_bytes()); // deflate
    h.resize(SECTOR, 0);
    h
}

fn pad(buf: &mut Vec<u8>) {
    buf.resize(buf.len().next_multiple_of(SECTOR), 0);
}

fn sector(buf: &[u8]) -> u64 {
    (buf.len() / SECTOR) as u64
}

fn metadata(buf: &mut Vec<u8>, kind: u32, payload: &[u8]) {
    let sectors = payload.len().div_ceil(SECTOR) as u64;
    buf.extend_from_slice(&sectors.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf.extend_from_slice(&kind.to_le_bytes());
    pad(buf);
    buf.extend_from_slice(payload);
    pad(buf);
}

fn table_bytes(entries: &[u32]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// A VMware-layout streamOptimized VMDK of `capacity` bytes (a multiple
/// of 512) holding `grains` — `(lba, data)`, in file order — with `edit`
/// applied to each grain table (its range and entries) before it is
/// written. A grain table maps each grain of its range to the sector of
/// its marker (the later one when two grains share an lba); it is written
/// when the next grain belongs to another range, or at the end. Ranges
/// without grains get no table and a zero directory entry, as VMware does.
pub fn vmware_vmdk(
    capacity: u64,
    grains: &[(u64, Vec<u8>)],
    mut edit: impl FnMut(u64, &mut Vec<u32>),
) -> Vec<u8> {
    let capacity_sectors = capacity / SECTOR as u64;
    let descriptor = format!(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\n# Extent description\n\
         RW {capacity_sectors} SPARSE \"disk.vmdk\"\n\n# The Disk Data Base\n#DDB\n\n\
         ddb.adapterType = \"lsilogic\"\nddb.virtualHWVersion = \"4\"\n"
    );
    let mut buf = header(capacity_sectors, GD_AT_END);
    buf.extend_from_slice(descriptor.as_bytes());
    buf.resize(OVERHEAD as usize * SECTOR, 0);

    let tables = capacity_sectors.div_ceil(GRAIN_SECTORS * GTES) as usize;
    let mut directory = vec![0u32; tables];
    let mut table: Option<(u64, Vec<u32>)> = None;
    let mut flush = |buf: &mut Vec<u8>, table: &mut Option<(u64, Vec<u32>)>| {
        if let Some((range, mut entries)) = table.take() {
            edit(range, &mut entries);
            directory[range as usize] = sector(buf) as u32 + 1;
            metadata(buf, 1, &table_bytes(&entries));
        }
    };
    for (lba, data) in grains {
        let index = lba / GRAIN_SECTORS;
        let range = index / GTES;
        if table.as_ref().is_some_and(|t| t.0 != range) {
            flush(&mut buf, &mut table);
        }
        let entries = &mut table
            .get_or_insert_with(|| (range, vec![0; GTES as usize]))
            .1;
        entries[(index % GTES) as usize] = sector(&buf) as u32;
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(data).expect("deflate");
        let z = z.finish().expect("deflate");
        buf.extend_from_slice(&lba.to_le_bytes());
        buf.extend_from_slice(&(z.len() as u32).to_le_bytes());
        buf.extend_from_slice(&z);
        pad(&mut buf);
    }
    flush(&mut buf, &mut table);
    let gd_sector = sector(&buf) + 1;
    metadata(&mut buf, 2, &table_bytes(&directory));
    metadata(&mut buf, 3, &header(capacity_sectors, gd_sector));
    metadata(&mut buf, 0, &[]);
    buf
}
