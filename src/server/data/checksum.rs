//! `GET /images/{ticket}/checksum` and `…/checksum/algorithms`, as
//! ovirt-imageio defines them, so that its client's `checksum()` of a
//! local image can be compared with the server's volume.
//!
//! imageio's block checksum (`ovirt_imageio/_internal/blkhash.py`): the
//! image is cut into consecutive blocks of `block_size` bytes (the last
//! one may be shorter); each block is hashed on its own, and the digests
//! of the blocks, in order, are hashed into the checksum. Every hash is
//! the same `algorithm`; the blake2 ones with a 32-byte digest (a
//! parameter of blake2, not a truncation). A block of zeros has the
//! digest of its zeros, so it is never read when the volume's allocation
//! map shows it reading as zeros (a hole, a qcow2 zero cluster), nor
//! hashed when it reads as zeros: its digest is computed once per
//! request. A qcow2 volume sums its guest data, as imageio's does.
//!
//! Only `image` tickets have a block checksum. An `ova-export` ticket
//! answers with the SHA-256 of the package (and of each disk entry) its
//! last complete download sent, which a client compares with the file it
//! saved.

use std::sync::atomic::{AtomicBool, Ordering};

use blake2::digest::DynDigest;
use http::StatusCode;
use serde_json::json;

use crate::error::{Error, ErrorKind, Result};
use crate::server::http::{self as h, Response};
use crate::ticket::TicketHandle;
use crate::volume::{Extent, Extents, ReadAt, ZEROS};

/// imageio's default block size.
pub const DEFAULT_BLOCK_SIZE: u64 = 4 << 20;
/// The smallest block size imageio accepts (a quarter of the default).
pub const MIN_BLOCK_SIZE: u64 = DEFAULT_BLOCK_SIZE / 4;
/// The largest block size imageio accepts (four times the default).
pub const MAX_BLOCK_SIZE: u64 = DEFAULT_BLOCK_SIZE * 4;
/// Block sizes are multiples of this.
const BLOCK_ALIGN: u64 = 4096;
/// The digest size imageio asks of the blake2 algorithms.
const BLAKE2_DIGEST_SIZE: usize = 32;

/// The algorithms imageio's checksum computes: those Python's `hashlib`
/// always provides as attributes (imageio looks them up with `getattr`),
/// less the `shake` ones, whose `digest()` needs a length imageio does
/// not give. imageio lists `hashlib.algorithms_available`, which on most
/// machines also names OpenSSL extras (`sm3`, `md5-sha1`...) that its own
/// checksum then fails on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// BLAKE2b with a 32-byte digest: imageio's default.
    Blake2b,
    /// BLAKE2s (32 bytes).
    Blake2s,
    /// MD5.
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// SHA3-224.
    Sha3_224,
    /// SHA3-256.
    Sha3_256,
    /// SHA3-384.
    Sha3_384,
    /// SHA3-512.
    Sha3_512,
}

impl Algorithm {
    /// Every algorithm, in the order `…/algorithms` lists them (sorted by
    /// name, as imageio sorts its list).
    pub const ALL: [Algorithm; 12] = [
        Algorithm::Blake2b,
        Algorithm::Blake2s,
        Algorithm::Md5,
        Algorithm::Sha1,
        Algorithm::Sha224,
        Algorithm::Sha256,
        Algorithm::Sha384,
        Algorithm::Sha3_224,
        Algorithm::Sha3_256,
        Algorithm::Sha3_384,
        Algorithm::Sha3_512,
        Algorithm::Sha512,
    ];

    /// The default, imageio's.
    pub const DEFAULT: Algorithm = Algorithm::Blake2b;

    /// The name as Python's `hashlib` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Blake2b => "blake2b",
            Algorithm::Blake2s => "blake2s",
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha224 => "sha224",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
            Algorithm::Sha3_224 => "sha3_224",
            Algorithm::Sha3_256 => "sha3_256",
            Algorithm::Sha3_384 => "sha3_384",
            Algorithm::Sha3_512 => "sha3_512",
        }
    }

    /// The algorithm named `name` (exactly as listed).
    pub fn parse(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    fn hasher(self) -> Box<dyn DynDigest + Send> {
        use blake2::digest::consts::U32;
        const _: () = assert!(BLAKE2_DIGEST_SIZE == 32);
        match self {
            Algorithm::Blake2b => Box::new(blake2::Blake2b::<U32>::default()),
            Algorithm::Blake2s => Box::new(blake2::Blake2s::<U32>::default()),
            Algorithm::Md5 => Box::new(md5::Md5::default()),
            Algorithm::Sha1 => Box::new(sha1::Sha1::default()),
            Algorithm::Sha224 => Box::new(sha2::Sha224::default()),
            Algorithm::Sha256 => Box::new(sha2::Sha256::default()),
            Algorithm::Sha384 => Box::new(sha2::Sha384::default()),
            Algorithm::Sha512 => Box::new(sha2::Sha512::default()),
            Algorithm::Sha3_224 => Box::new(sha3::Sha3_224::default()),
            Algorithm::Sha3_256 => Box::new(sha3::Sha3_256::default()),
            Algorithm::Sha3_384 => Box::new(sha3::Sha3_384::default()),
            Algorithm::Sha3_512 => Box::new(sha3::Sha3_512::default()),
        }
    }
}

/// The options of a checksum request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The hash.
    pub algorithm: Algorithm,
    /// Bytes per block.
    pub block_size: u64,
}

impl Options {
    /// Checks the query's `algorithm` and `block_size` as imageio does:
    /// a known algorithm, a block size from 1 to 16 MiB in multiples of
    /// 4096 bytes.
    pub fn parse(algorithm: Option<&str>, block_size: Option<&str>) -> Result<Options> {
        let algorithm = match algorithm {
            None => Algorithm::DEFAULT,
            Some(a) => Algorithm::parse(a).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "invalid algorithm: not one of {}",
                        Algorithm::ALL.map(Algorithm::name).join(", ")
                    ),
                )
            })?,
        };
        let block_size = match block_size {
            None => DEFAULT_BLOCK_SIZE,
            Some(v) => v.parse::<u64>().map_err(|_| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    "invalid block size: not a number",
                )
            })?,
        };
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("block size out of allowed range: {MIN_BLOCK_SIZE}-{MAX_BLOCK_SIZE}"),
            ));
        }
        if block_size % BLOCK_ALIGN != 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("block size is not aligned to {BLOCK_ALIGN}"),
            ));
        }
        Ok(Options {
            algorithm,
            block_size,
        })
    }
}

/// imageio's `blkhash.Hash`: feed it the blocks in order, each either as
/// bytes or as a length of zeros.
pub struct BlockHash {
    algorithm: Algorithm,
    block_size: u64,
    outer: Box<dyn DynDigest + Send>,
    block: Box<dyn DynDigest + Send>,
    /// The digest of a whole block of zeros.
    zero_block: Box<[u8]>,
}

impl std::fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockHash")
            .field("algorithm", &self.algorithm)
            .field("block_size", &self.block_size)
            .finish()
    }
}

impl BlockHash {
    /// A hash of `opts.block_size` blocks.
    pub fn new(opts: Options) -> BlockHash {
        let mut block = opts.algorithm.hasher();
        let zero_block = zeros_digest(block.as_mut(), opts.block_size);
        BlockHash {
            algorithm: opts.algorithm,
            block_size: opts.block_size,
            outer: opts.algorithm.hasher(),
            block,
            zero_block,
        }
    }

    /// Adds a block: a whole one, or the shorter last one.
    pub fn update(&mut self, block: &[u8]) {
        self.block.update(block);
        self.end_block();
    }

    /// Adds the digest of the block the pieces given to
    /// [`BlockHash::update_piece`] since the last block make up.
    fn end_block(&mut self) {
        let d = self.block.finalize_reset();
        self.outer.update(&d);
    }

    /// Adds a piece of the block being hashed.
    fn update_piece(&mut self, piece: &[u8]) {
        self.block.update(piece);
    }

    /// Adds a block of `len` zeros.
    pub fn zero(&mut self, len: u64) {
        if len == self.block_size {
            self.outer.update(&self.zero_block);
        } else {
            let d = zeros_digest(self.block.as_mut(), len);
            self.outer.update(&d);
        }
    }

    /// The checksum, lower-case hex.
    pub fn hexdigest(self) -> String {
        hex::encode(self.outer.finalize())
    }
}

/// The digest of `len` zeros (leaves `h` reset).
fn zeros_digest(h: &mut dyn DynDigest, len: u64) -> Box<[u8]> {
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..n]);
        left -= n as u64;
    }
    h.finalize_reset()
}

/// Whether `b` holds only zeros; checked a page at a time so the
/// compiler vectorizes the test and a data block stops it early.
fn is_zero(b: &[u8]) -> bool {
    b.chunks(4096)
        .all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

/// The block checksum of the first `size` bytes of `volume`, reading
/// through a buffer of `buffer` bytes. Blocks that the allocation map
/// shows reading as zeros (holes, zero clusters) are not read;
/// `progress` is called after each block (the ticket's activity); a set
/// `cancel` stops it.
pub fn checksum_volume<V: ReadAt + Extents>(
    volume: &V,
    size: u64,
    opts: Options,
    buffer: usize,
    cancel: &AtomicBool,
    mut progress: impl FnMut(),
) -> Result<String> {
    let mut h = BlockHash::new(opts);
    let mut buf = vec![0u8; buffer.clamp(BLOCK_ALIGN as usize, opts.block_size as usize)];
    let data: Vec<Extent> = volume
        .extents(0, size)?
        .into_iter()
        .filter(|e| !e.kind.reads_zero())
        .collect();
    // The first data extent that ends after the block being hashed.
    let mut next = 0usize;
    let mut start = 0u64;
    while start < size {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::new(ErrorKind::Cancelled, "checksum cancelled"));
        }
        let end = size.min(start + opts.block_size);
        while data.get(next).is_some_and(|e| e.end() <= start) {
            next += 1;
        }
        if data.get(next).is_none_or(|e| e.start >= end) {
            h.zero(end - start);
        } else {
            hash_block(&mut h, volume, start, end, &mut buf)?;
        }
        start = end;
        progress();
    }
    Ok(h.hexdigest())
}

/// Reads `[start, end)` and adds it to `h` as one block. Leading zeros
/// are held back, so that a block that reads as zeros costs no hashing.
fn hash_block<V: ReadAt>(
    h: &mut BlockHash,
    volume: &V,
    start: u64,
    end: u64,
    buf: &mut [u8],
) -> Result<()> {
    let mut off = start;
    let mut zeros = 0u64;
    let mut data = false;
    while off < end {
        let n = (end - off).min(buf.len() as u64) as usize;
        let piece = &mut buf[..n];
        volume.read_at(off, piece)?;
        if !data && is_zero(piece) {
            zeros += n as u64;
        } else {
            if !data {
                data = true;
                let mut left = zeros;
                while left > 0 {
                    let k = left.min(ZEROS.len() as u64) as usize;
                    h.update_piece(&ZEROS[..k]);
                    left -= k as u64;
                }
            }
            h.update_piece(piece);
        }
        off += n as u64;
    }
    if data {
        h.end_block();
    } else {
        h.zero(end - start);
    }
    Ok(())
}

/// `GET /images/{ticket}/checksum/algorithms`: what any ticket's image
/// checksum takes. Like imageio, it needs no ticket.
pub(super) fn algorithms() -> Response {
    h::json(
        StatusCode::OK,
        &json!({"algorithms": Algorithm::ALL.map(Algorithm::name)}),
    )
}

/// `GET /images/{ticket}/checksum` on an `ova-export` ticket: the SHA-256
/// of the package and of each disk entry, known once a download of the
/// whole package has completed (an export of unchanged sources is the
/// same bytes each time).
pub(super) fn ova_export(
    t: &TicketHandle,
    algorithm: Option<&str>,
    block_size: bool,
) -> Result<Response> {
    if algorithm.is_some_and(|a| a != "sha256") || block_size {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "an ova-export ticket's checksum is the SHA-256 of the package: algorithm=sha256 only, no block_size",
        ));
    }
    let Some((package, disks)) = t.checksums() else {
        return Err(Error::new(
            ErrorKind::Conflict,
            "the package's checksum is known once a download of the whole package has completed",
        ));
    };
    let disks: Vec<_> = disks
        .iter()
        .map(|d| json!({"href": d.href, "sha256": d.sha256}))
        .collect();
    Ok(h::json(
        StatusCode::OK,
        &json!({"algorithm": "sha256", "checksum": package, "disks": disks}),
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use blake2::digest::Digest;

    /// imageio's definition, spelt out: digests of every block, hashed.
    fn reference(data: &[u8], opts: Options) -> String {
        let mut outer = opts.algorithm.hasher();
        for block in data.chunks(opts.block_size as usize) {
            let mut b = opts.algorithm.hasher();
            b.update(block);
            outer.update(&b.finalize());
        }
        hex::encode(outer.finalize())
    }

    /// The file as a raw volume (read-only: nothing here writes).
    fn raw(f: &std::fs::File) -> crate::volume::raw::RawFile {
        crate::volume::raw::RawFile::new(
            f.try_clone().unwrap(),
            std::path::Path::new("v.raw"),
            false,
        )
        .unwrap()
    }

    fn opts(algorithm: Algorithm, block_size: u64) -> Options {
        Options {
            algorithm,
            block_size,
        }
    }

    #[test]
    fn blake2b_256_is_a_parameter_not_a_truncation() {
        // Python: hashlib.blake2b(b"abc", digest_size=32).hexdigest()
        let mut h = Algorithm::Blake2b.hasher();
        h.update(b"abc");
        assert_eq!(
            hex::encode(h.finalize()),
            "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319"
        );
        let full = blake2::Blake2b512::digest(b"abc");
        assert_ne!(
            &full[..32],
            hex::decode("bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319")
                .unwrap()
        );
        // hashlib.blake2s(b"abc", digest_size=32).hexdigest()
        let mut h = Algorithm::Blake2s.hasher();
        h.update(b"abc");
        assert_eq!(
            hex::encode(h.finalize()),
            "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
        );
    }

    #[test]
    fn options_are_checked_as_imageio_checks_them() {
        let o = Options::parse(None, None).unwrap();
        assert_eq!(o, opts(Algorithm::Blake2b, 4 << 20));
        let o = Options::parse(Some("sha3_256"), Some("1048576")).unwrap();
        assert_eq!(o, opts(Algorithm::Sha3_256, 1 << 20));
        // 1 MiB and a page.
        assert!(Options::parse(None, Some("1052672")).is_ok());
        for (a, b) in [
            (Some("shake_128"), None),
            (Some("BLAKE2B"), None),
            (Some("sm3"), None),
            (None, Some("1048575")),
            (None, Some("524288")),
            (None, Some("33554432")),
            (None, Some("4M")),
            (None, Some("")),
        ] {
            let r = Options::parse(a, b).map_err(|e| e.kind());
            assert_eq!(r, Err(ErrorKind::InvalidArgument), "{a:?} {b:?}");
        }
        let e = Options::parse(None, Some("1050000")).unwrap_err();
        assert!(e.to_string().contains("aligned to 4096"), "{e}");
    }

    #[test]
    fn zero_blocks_and_pieces_hash_as_their_bytes() {
        // The definition holds for any block size; a small one keeps the
        // test quick.
        let bs = 64 << 10;
        let mut data = vec![0u8; (bs * 3 + 12345) as usize];
        // Data after leading zeros inside the second block, none in the
        // first and third, some in the short last one.
        data[(bs + 7_000) as usize] = 7;
        let n = data.len();
        data[n - 1] = 1;
        for alg in Algorithm::ALL {
            let o = opts(alg, bs);
            let want = reference(&data, o);
            // Block by block as bytes.
            let mut h = BlockHash::new(o);
            for b in data.chunks(bs as usize) {
                h.update(b);
            }
            assert_eq!(h.hexdigest(), want, "{alg:?} bytes");
            // Zero blocks by length.
            let mut h = BlockHash::new(o);
            for b in data.chunks(bs as usize) {
                if is_zero(b) {
                    h.zero(b.len() as u64);
                } else {
                    h.update(b);
                }
            }
            assert_eq!(h.hexdigest(), want, "{alg:?} zeros");
        }
    }

    #[test]
    fn holes_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hole.raw");
        let size = 64 << 30;
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        // Written through a descriptor that cannot be read: a read of
        // any block would fail.
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        let o = opts(Algorithm::Blake2b, DEFAULT_BLOCK_SIZE);
        let stop = AtomicBool::new(false);
        let got = checksum_volume(&raw(&f), size, o, 1 << 20, &stop, || {}).unwrap();
        let mut want = BlockHash::new(o);
        for _ in 0..size / DEFAULT_BLOCK_SIZE {
            want.zero(DEFAULT_BLOCK_SIZE);
        }
        assert_eq!(got, want.hexdigest());
        // Data in one block: that block is read, and here cannot be.
        f.write_all_at(b"x", 5 << 30).unwrap();
        let e = checksum_volume(&raw(&f), size, o, 1 << 20, &stop, || {}).unwrap_err();
        assert!(
            e.to_string().contains(&format!("offset {}", 5u64 << 30)),
            "{e}"
        );
    }

    #[test]
    fn a_sparse_file_checksums_as_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.raw");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mib = 1u64 << 20;
        let size = 9 * mib + 4096 * 3 + 100;
        f.set_len(size).unwrap();
        // Data, an allocated run of zeros, a hole, data ending unaligned.
        f.write_all_at(&vec![0x5au8; 300_000], 10).unwrap();
        f.write_all_at(&vec![0u8; 2 * mib as usize], 3 * mib)
            .unwrap();
        f.write_all_at(&vec![0xa5u8; 5000], size - 5000).unwrap();
        let content = std::fs::read(&p).unwrap();
        let stop = AtomicBool::new(false);
        for (alg, bs, buffer) in [
            (Algorithm::Blake2b, DEFAULT_BLOCK_SIZE, 1 << 20),
            (Algorithm::Sha256, MIN_BLOCK_SIZE, 4096),
            (Algorithm::Md5, MAX_BLOCK_SIZE, 1 << 20),
        ] {
            let o = opts(alg, bs);
            let mut blocks = 0;
            let got = checksum_volume(&raw(&f), size, o, buffer, &stop, || blocks += 1).unwrap();
            assert_eq!(got, reference(&content, o), "{alg:?} {bs}");
            assert_eq!(blocks, size.div_ceil(bs), "{alg:?} {bs}");
        }
        assert_eq!(
            checksum_volume(
                &raw(&f),
                0,
                opts(Algorithm::Sha1, MIN_BLOCK_SIZE),
                4096,
                &stop,
                || {}
            )
            .unwrap(),
            reference(&[], opts(Algorithm::Sha1, MIN_BLOCK_SIZE))
        );
        stop.store(true, Ordering::Relaxed);
        let e = checksum_volume(
            &raw(&f),
            size,
            opts(Algorithm::Sha1, MIN_BLOCK_SIZE),
            4096,
            &stop,
            || {},
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
    }
}
