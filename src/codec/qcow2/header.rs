//! qcow2 on-disk layout: header fields, feature bits and L1/L2 entry
//! encoding, decoded and validated without I/O. Shared by the stream
//! decoder, the qcow2 file sink and the stream encoder.

use super::Qcow2Error;
use crate::limits;

/// The four magic bytes at offset 0: `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Length of a version 2 header (and of the fields common to v2 and v3).
pub const V2_HEADER_LEN: u32 = 72;
/// Smallest version 3 header (`header_length` ≥ this).
pub const V3_MIN_HEADER_LEN: u32 = 104;
/// A v3 header of at least this length carries the compression type byte.
pub const V3_COMPRESSION_HEADER_LEN: u32 = 105;
/// Length of the v3 header qemu writes (compression type plus padding).
pub const V3_HEADER_LEN: u32 = 112;
/// Smallest cluster_bits accepted (512-byte clusters).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster_bits accepted (2 MiB clusters).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Longest backing file name qemu accepts (bytes).
pub const MAX_BACKING_FILE_NAME: u32 = 1023;
/// Largest refcount_order (64-bit refcounts).
pub const MAX_REFCOUNT_ORDER: u32 = 6;

/// Incompatible feature bit 0: the image was not closed cleanly (refcounts
/// may be stale). Harmless for reading.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: the image is marked corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: the compression type field is used.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: extended L2 entries (subclusters).
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;

/// Host offset bits of an L1 entry (the L2 table's offset).
pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Host offset bits of a standard L2 entry (the data cluster's offset).
pub const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63 of L1 and L2 entries: refcount is exactly one.
pub const OFLAG_COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: the cluster is compressed.
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard L2 entry: the cluster reads as zeros.
pub const OFLAG_ZERO: u64 = 1;
/// Compressed cluster lengths are counted in units of this many bytes.
pub const COMPRESSED_SECTOR: u64 = 512;

/// Byte offsets of header fields, for error messages and encoders.
pub mod field {
    /// `magic` (u32).
    pub const MAGIC: u64 = 0;
    /// `version` (u32).
    pub const VERSION: u64 = 4;
    /// `backing_file_offset` (u64).
    pub const BACKING_FILE_OFFSET: u64 = 8;
    /// `backing_file_size` (u32).
    pub const BACKING_FILE_SIZE: u64 = 16;
    /// `cluster_bits` (u32).
    pub const CLUSTER_BITS: u64 = 20;
    /// `size` (u64): the virtual size.
    pub const SIZE: u64 = 24;
    /// `crypt_method` (u32).
    pub const CRYPT_METHOD: u64 = 32;
    /// `l1_size` (u32): entries in the active L1 table.
    pub const L1_SIZE: u64 = 36;
    /// `l1_table_offset` (u64).
    pub const L1_TABLE_OFFSET: u64 = 40;
    /// `refcount_table_offset` (u64).
    pub const REFCOUNT_TABLE_OFFSET: u64 = 48;
    /// `refcount_table_clusters` (u32).
    pub const REFCOUNT_TABLE_CLUSTERS: u64 = 56;
    /// `nb_snapshots` (u32).
    pub const NB_SNAPSHOTS: u64 = 60;
    /// `snapshots_offset` (u64).
    pub const SNAPSHOTS_OFFSET: u64 = 64;
    /// `incompatible_features` (u64, v3).
    pub const INCOMPATIBLE_FEATURES: u64 = 72;
    /// `compatible_features` (u64, v3).
    pub const COMPATIBLE_FEATURES: u64 = 80;
    /// `autoclear_features` (u64, v3).
    pub const AUTOCLEAR_FEATURES: u64 = 88;
    /// `refcount_order` (u32, v3).
    pub const REFCOUNT_ORDER: u64 = 96;
    /// `header_length` (u32, v3).
    pub const HEADER_LENGTH: u64 = 100;
    /// `compression_type` (u8, v3 with `header_length` ≥ 105).
    pub const COMPRESSION_TYPE: u64 = 104;
}

/// How compressed clusters are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionType {
    /// Raw deflate (no zlib header), type 0.
    #[default]
    Zlib,
    /// One zstd frame per cluster, type 1.
    Zstd,
}

impl CompressionType {
    /// The header byte for this type.
    pub fn to_byte(self) -> u8 {
        match self {
            CompressionType::Zlib => 0,
            CompressionType::Zstd => 1,
        }
    }
}

/// A decoded and validated qcow2 header (the fixed part, v2 or v3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Host offset of the backing file name, 0 when none.
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual size in bytes.
    pub size: u64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Host offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Host offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters occupied by the refcount table.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Host offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (v3; 0 for v2).
    pub incompatible_features: u64,
    /// Compatible feature bits (v3; 0 for v2).
    pub compatible_features: u64,
    /// Autoclear feature bits (v3; 0 for v2).
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (4 for v2).
    pub refcount_order: u32,
    /// Length of the fixed header (72 for v2).
    pub header_length: u32,
    /// How compressed clusters are encoded.
    pub compression_type: CompressionType,
}

fn be32(b: &[u8], at: u64) -> u32 {
    let at = at as usize;
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: u64) -> u64 {
    let at = at as usize;
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn invalid(offset: u64, field: &'static str, reason: impl Into<String>) -> Qcow2Error {
    Qcow2Error::InvalidHeader {
        offset,
        field,
        reason: reason.into(),
    }
}

fn unsupported(offset: u64, feature: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Unsupported {
        offset,
        feature: feature.into(),
    }
}

/// Entries needed in the L1 table to map `size` bytes with clusters of
/// `1 << cluster_bits` bytes.
pub fn l1_entries_for(size: u64, cluster_bits: u32) -> u64 {
    let per_l2 = 1u64 << (cluster_bits + cluster_bits - 3);
    size.div_ceil(per_l2)
}

impl Header {
    /// How many bytes the fixed header occupies, judged from its first
    /// bytes: `Ok(None)` means "give me at least 104 bytes" (or 8 before the
    /// version is known).
    pub fn required_len(prefix: &[u8]) -> Result<Option<u32>, Qcow2Error> {
        if prefix.len() < 8 {
            if !MAGIC.starts_with(&prefix[..prefix.len().min(4)]) {
                return Err(Qcow2Error::BadMagic);
            }
            return Ok(None);
        }
        if prefix[..4] != MAGIC {
            return Err(Qcow2Error::BadMagic);
        }
        match be32(prefix, field::VERSION) {
            2 => Ok(Some(V2_HEADER_LEN)),
            3 => {
                if prefix.len() < V3_MIN_HEADER_LEN as usize {
                    return Ok(None);
                }
                let len = be32(prefix, field::HEADER_LENGTH);
                if len < V3_MIN_HEADER_LEN {
                    return Err(invalid(
                        field::HEADER_LENGTH,
                        "header_length",
                        format!("{len} is less than {V3_MIN_HEADER_LEN}"),
                    ));
                }
                if u64::from(len) > limits::MAX_QCOW2_HEADER {
                    return Err(Qcow2Error::Limit {
                        offset: field::HEADER_LENGTH,
                        what: "qcow2 header length",
                        value: u64::from(len),
                        limit: limits::MAX_QCOW2_HEADER,
                    });
                }
                Ok(Some(len))
            }
            v => Err(Qcow2Error::UnsupportedVersion(v)),
        }
    }

    /// Decodes and validates the fixed header from `bytes`, which holds at
    /// least [`Header::required_len`] bytes.
    pub fn parse(bytes: &[u8]) -> Result<Header, Qcow2Error> {
        let len = match Header::required_len(bytes)? {
            Some(len) if bytes.len() >= len as usize => len,
            _ => {
                return Err(Qcow2Error::Truncated {
                    what: "qcow2 header",
                    offset: 0,
                    end: bytes.len() as u64,
                });
            }
        };
        let version = be32(bytes, field::VERSION);
        let cluster_bits = be32(bytes, field::CLUSTER_BITS);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits)
            || (1u64 << cluster_bits) > limits::MAX_QCOW2_CLUSTER
        {
            return Err(invalid(
                field::CLUSTER_BITS,
                "cluster_bits",
                format!("{cluster_bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"),
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file_offset: be64(bytes, field::BACKING_FILE_OFFSET),
            backing_file_size: be32(bytes, field::BACKING_FILE_SIZE),
            cluster_bits,
            size: be64(bytes, field::SIZE),
            crypt_method: be32(bytes, field::CRYPT_METHOD),
            l1_size: be32(bytes, field::L1_SIZE),
            l1_table_offset: be64(bytes, field::L1_TABLE_OFFSET),
            refcount_table_offset: be64(bytes, field::REFCOUNT_TABLE_OFFSET),
            refcount_table_clusters: be32(bytes, field::REFCOUNT_TABLE_CLUSTERS),
            nb_snapshots: be32(bytes, field::NB_SNAPSHOTS),
            snapshots_offset: be64(bytes, field::SNAPSHOTS_OFFSET),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: len,
            compression_type: CompressionType::Zlib,
        };
        if version >= 3 {
            h.incompatible_features = be64(bytes, field::INCOMPATIBLE_FEATURES);
            h.compatible_features = be64(bytes, field::COMPATIBLE_FEATURES);
            h.autoclear_features = be64(bytes, field::AUTOCLEAR_FEATURES);
            h.refcount_order = be32(bytes, field::REFCOUNT_ORDER);
            if len >= V3_COMPRESSION_HEADER_LEN {
                h.compression_type = match bytes[field::COMPRESSION_TYPE as usize] {
                    0 => CompressionType::Zlib,
                    1 => CompressionType::Zstd,
                    t => {
                        return Err(unsupported(
                            field::COMPRESSION_TYPE,
                            format!("compression type {t}"),
                        ));
                    }
                };
            }
        }
        h.validate()?;
        if u64::from(len) > cluster_size {
            return Err(invalid(
                field::HEADER_LENGTH,
                "header_length",
                format!("{len} is larger than the cluster size {cluster_size}"),
            ));
        }
        Ok(h)
    }

    /// Checks the fields this crate relies on; the feature checks are those
    /// of a reader that emits only what the image itself contains.
    pub fn validate(&self) -> Result<(), Qcow2Error> {
        let cs = self.cluster_size();
        if self.crypt_method != 0 {
            return Err(unsupported(
                field::CRYPT_METHOD,
                format!("encryption (crypt_method {})", self.crypt_method),
            ));
        }
        let f = self.incompatible_features;
        if f & INCOMPAT_CORRUPT != 0 {
            return Err(Qcow2Error::MarkedCorrupt);
        }
        if f & INCOMPAT_DATA_FILE != 0 {
            return Err(unsupported(
                field::INCOMPATIBLE_FEATURES,
                "external data file (incompatible feature bit 2)",
            ));
        }
        if f & INCOMPAT_EXTENDED_L2 != 0 {
            return Err(unsupported(
                field::INCOMPATIBLE_FEATURES,
                "extended L2 entries (incompatible feature bit 4)",
            ));
        }
        let unknown = f & !(INCOMPAT_DIRTY | INCOMPAT_COMPRESSION);
        if unknown & !(INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_EXTENDED_L2) != 0 {
            return Err(unsupported(
                field::INCOMPATIBLE_FEATURES,
                format!("unknown incompatible features {unknown:#x}"),
            ));
        }
        if f & INCOMPAT_COMPRESSION != 0 && self.header_length < V3_COMPRESSION_HEADER_LEN {
            return Err(invalid(
                field::INCOMPATIBLE_FEATURES,
                "incompatible_features",
                "compression type bit set but the header has no compression type field",
            ));
        }
        if self.compression_type != CompressionType::Zlib && f & INCOMPAT_COMPRESSION == 0 {
            return Err(invalid(
                field::COMPRESSION_TYPE,
                "compression_type",
                "non-zlib compression type without incompatible feature bit 3",
            ));
        }
        if self.refcount_order > MAX_REFCOUNT_ORDER {
            return Err(invalid(
                field::REFCOUNT_ORDER,
                "refcount_order",
                format!(
                    "{} is larger than {MAX_REFCOUNT_ORDER}",
                    self.refcount_order
                ),
            ));
        }
        if self.size > limits::MAX_CAPACITY {
            return Err(Qcow2Error::Limit {
                offset: field::SIZE,
                what: "virtual size",
                value: self.size,
                limit: limits::MAX_CAPACITY,
            });
        }
        if self.has_backing_file() {
            if self.backing_file_size > MAX_BACKING_FILE_NAME {
                return Err(invalid(
                    field::BACKING_FILE_SIZE,
                    "backing_file_size",
                    format!(
                        "{} is longer than {MAX_BACKING_FILE_NAME}",
                        self.backing_file_size
                    ),
                ));
            }
            let end = self
                .backing_file_offset
                .saturating_add(u64::from(self.backing_file_size));
            if end > cs {
                return Err(invalid(
                    field::BACKING_FILE_OFFSET,
                    "backing_file_offset",
                    format!(
                        "backing file name at {} ends at {end}, outside the first cluster",
                        self.backing_file_offset
                    ),
                ));
            }
            let hl = u64::from(self.header_length);
            if self.backing_file_offset < hl && end > hl {
                return Err(invalid(
                    field::BACKING_FILE_OFFSET,
                    "backing_file_offset",
                    "backing file name overlaps the end of the header",
                ));
            }
        }
        if u64::from(self.l1_size) > limits::MAX_QCOW2_L1_ENTRIES {
            return Err(Qcow2Error::Limit {
                offset: field::L1_SIZE,
                what: "L1 table entries",
                value: u64::from(self.l1_size),
                limit: limits::MAX_QCOW2_L1_ENTRIES,
            });
        }
        let needed = l1_entries_for(self.size, self.cluster_bits);
        if u64::from(self.l1_size) < needed {
            return Err(Qcow2Error::Corrupt {
                offset: field::L1_SIZE,
                reason: format!(
                    "L1 table has {} entries, the virtual size {} needs {needed}",
                    self.l1_size, self.size
                ),
            });
        }
        if needed > 0 {
            let o = self.l1_table_offset;
            if o & (cs - 1) != 0 {
                return Err(Qcow2Error::Corrupt {
                    offset: field::L1_TABLE_OFFSET,
                    reason: format!("L1 table offset {o} is not aligned to the cluster size {cs}"),
                });
            }
            if o < cs {
                return Err(Qcow2Error::Corrupt {
                    offset: field::L1_TABLE_OFFSET,
                    reason: format!("L1 table offset {o} overlaps the header cluster"),
                });
            }
            if o > L1E_OFFSET_MASK {
                return Err(Qcow2Error::Corrupt {
                    offset: field::L1_TABLE_OFFSET,
                    reason: format!("L1 table offset {o} is out of range"),
                });
            }
        }
        Ok(())
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        1u64 << (self.cluster_bits - 3)
    }

    /// L1 entries that map guest bytes below `size` (the rest of the table,
    /// if any, is ignored).
    pub fn l1_entries_needed(&self) -> u64 {
        l1_entries_for(self.size, self.cluster_bits)
    }

    /// Whether the header names a backing file.
    pub fn has_backing_file(&self) -> bool {
        self.backing_file_offset != 0 && self.backing_file_size != 0
    }

    /// Encodes the fixed header: 72 bytes for v2, `header_length` bytes for
    /// v3 (compression type at byte 104 when the length allows it).
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = if self.version >= 3 {
            self.header_length.max(V3_MIN_HEADER_LEN)
        } else {
            V2_HEADER_LEN
        };
        let mut b = vec![0u8; len as usize];
        let put32 = |b: &mut Vec<u8>, at: u64, v: u32| {
            b[at as usize..at as usize + 4].copy_from_slice(&v.to_be_bytes())
        };
        let put64 = |b: &mut Vec<u8>, at: u64, v: u64| {
            b[at as usize..at as usize + 8].copy_from_slice(&v.to_be_bytes())
        };
        b[..4].copy_from_slice(&MAGIC);
        put32(&mut b, field::VERSION, self.version);
        put64(&mut b, field::BACKING_FILE_OFFSET, self.backing_file_offset);
        put32(&mut b, field::BACKING_FILE_SIZE, self.backing_file_size);
        put32(&mut b, field::CLUSTER_BITS, self.cluster_bits);
        put64(&mut b, field::SIZE, self.size);
        put32(&mut b, field::CRYPT_METHOD, self.crypt_method);
        put32(&mut b, field::L1_SIZE, self.l1_size);
        put64(&mut b, field::L1_TABLE_OFFSET, self.l1_table_offset);
        put64(
            &mut b,
            field::REFCOUNT_TABLE_OFFSET,
            self.refcount_table_offset,
        );
        put32(
            &mut b,
            field::REFCOUNT_TABLE_CLUSTERS,
            self.refcount_table_clusters,
        );
        put32(&mut b, field::NB_SNAPSHOTS, self.nb_snapshots);
        put64(&mut b, field::SNAPSHOTS_OFFSET, self.snapshots_offset);
        if self.version >= 3 {
            put64(
                &mut b,
                field::INCOMPATIBLE_FEATURES,
                self.incompatible_features,
            );
            put64(&mut b, field::COMPATIBLE_FEATURES, self.compatible_features);
            put64(&mut b, field::AUTOCLEAR_FEATURES, self.autoclear_features);
            put32(&mut b, field::REFCOUNT_ORDER, self.refcount_order);
            put32(&mut b, field::HEADER_LENGTH, len);
            if len >= V3_COMPRESSION_HEADER_LEN {
                b[field::COMPRESSION_TYPE as usize] = self.compression_type.to_byte();
            }
        }
        b
    }
}

/// What one L2 entry says about its guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Entry {
    /// Not allocated: reads from the backing file, or zeros without one.
    Unallocated,
    /// Reads as zeros (zero flag); `host` is a preallocated cluster or 0.
    Zero {
        /// Preallocated host cluster, 0 when none.
        host: u64,
    },
    /// Stored uncompressed at host offset `host` (cluster aligned when valid).
    Standard {
        /// Host offset of the data cluster.
        host: u64,
    },
    /// Stored compressed: `len` bytes from host offset `host` hold the
    /// compressed stream (possibly followed by unrelated bytes).
    Compressed {
        /// Host offset of the first compressed byte.
        host: u64,
        /// Bytes reserved for it (whole sectors minus the offset into the first).
        len: u64,
    },
}

/// Bit position where the sector count of a compressed descriptor starts.
pub fn compressed_shift(cluster_bits: u32) -> u32 {
    62 - (cluster_bits - 8)
}

/// Decodes an L2 entry (standard L2 entries, not extended ones).
pub fn decode_l2_entry(raw: u64, cluster_bits: u32) -> L2Entry {
    if raw & OFLAG_COMPRESSED != 0 {
        let shift = compressed_shift(cluster_bits);
        let host = raw & ((1u64 << shift) - 1);
        let sectors = ((raw >> shift) & ((1u64 << (cluster_bits - 8)) - 1)) + 1;
        let len = sectors * COMPRESSED_SECTOR - (host % COMPRESSED_SECTOR);
        return L2Entry::Compressed { host, len };
    }
    let host = raw & L2E_OFFSET_MASK;
    if raw & OFLAG_ZERO != 0 {
        L2Entry::Zero { host }
    } else if host == 0 {
        L2Entry::Unallocated
    } else {
        L2Entry::Standard { host }
    }
}

/// Encodes a compressed L2 entry for `len` compressed bytes at `host`;
/// `None` when the host offset or the sector span does not fit the
/// descriptor for this cluster size.
pub fn compressed_l2_entry(host: u64, len: u64, cluster_bits: u32) -> Option<u64> {
    let shift = compressed_shift(cluster_bits);
    let first = host / COMPRESSED_SECTOR;
    let last = (host + len.max(1) - 1) / COMPRESSED_SECTOR;
    let extra = last - first;
    if host >= 1u64 << shift || extra >= 1u64 << (cluster_bits - 8) {
        return None;
    }
    Some(OFLAG_COMPRESSED | (extra << shift) | host)
}

/// The L2 table offset of an L1 entry, `None` when unallocated.
pub fn decode_l1_entry(raw: u64) -> Option<u64> {
    match raw & L1E_OFFSET_MASK {
        0 => None,
        o => Some(o),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3() -> Header {
        Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 1 << 20,
            crypt_method: 0,
            l1_size: 1,
            l1_table_offset: 3 << 16,
            refcount_table_offset: 1 << 16,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V3_HEADER_LEN,
            compression_type: CompressionType::Zlib,
        }
    }

    #[test]
    fn header_round_trips() {
        let mut h = v3();
        assert_eq!(Header::parse(&h.to_bytes()), Ok(h.clone()));
        h.incompatible_features = INCOMPAT_COMPRESSION;
        h.compression_type = CompressionType::Zstd;
        assert_eq!(Header::parse(&h.to_bytes()), Ok(h.clone()));
        let mut v2 = v3();
        v2.version = 2;
        v2.header_length = V2_HEADER_LEN;
        assert_eq!(Header::parse(&v2.to_bytes()), Ok(v2));
    }

    #[test]
    fn compressed_descriptor_round_trips() {
        for cb in MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS {
            for (host, len) in [(0x50000u64, 0xadu64), (0x500ad, 0x200), (0x50168, 700)] {
                let Some(e) = compressed_l2_entry(host, len, cb) else {
                    assert_eq!(cb, 9, "only 512-byte clusters limit the span");
                    continue;
                };
                match decode_l2_entry(e, cb) {
                    L2Entry::Compressed { host: h, len: l } => {
                        assert_eq!(h, host);
                        assert!(l >= len && l < len + 512, "cb {cb} len {len} -> {l}");
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn l2_entry_kinds() {
        assert_eq!(decode_l2_entry(0, 16), L2Entry::Unallocated);
        assert_eq!(decode_l2_entry(1, 16), L2Entry::Zero { host: 0 });
        assert_eq!(
            decode_l2_entry(OFLAG_COPIED | 0x50000 | 1, 16),
            L2Entry::Zero { host: 0x50000 }
        );
        assert_eq!(
            decode_l2_entry(OFLAG_COPIED | 0x50000, 16),
            L2Entry::Standard { host: 0x50000 }
        );
        assert_eq!(decode_l1_entry(OFLAG_COPIED | 0x40000), Some(0x40000));
        assert_eq!(decode_l1_entry(OFLAG_COPIED), None);
    }
}
