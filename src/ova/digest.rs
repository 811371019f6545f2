//! Streaming digests of package entries: every entry is hashed while it
//! passes through the demultiplexer, with each algorithm the manifest uses
//! (or may use, when the manifest has not been seen yet), in one pass.
//!
//! Implementations, chosen by measurement (`cargo bench --bench digests`,
//! group `digest_cpu`: CPU time of the hashing thread, 64 MiB in 1 MiB
//! updates, on a 2-core AMD EPYC with SHA-NI and AVX2, benches/README.md):
//! SHA-1 and SHA-256 from RustCrypto (`sha1`, `sha2`; SHA-NI picked at run
//! time), 1.53 and 1.44 GiB/s, where ring's SHA-1 (no SHA-NI) makes
//! 0.31 GiB/s and its SHA-256 the same 1.44 GiB/s; SHA-512 on x86-64 from
//! `ring` (already built for rustls), 325 MiB/s against RustCrypto's
//! 290 MiB/s (x86 has no SHA-512 instructions). Elsewhere, unmeasured,
//! SHA-512 stays with RustCrypto, which uses aarch64's SHA-512
//! instructions where present.

use std::fmt;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::ova::manifest::Algorithm;

/// Computes a chosen set of digests over bytes fed in pieces of any size.
#[derive(Clone, Default)]
pub struct MultiDigest {
    sha1: Option<Sha1>,
    sha256: Option<Sha256>,
    sha512: Option<Sha512>,
}

/// SHA-512 as measured fastest: ring on x86-64 (no SHA-512 instructions;
/// its assembly beats sha2's AVX2 code), sha2 elsewhere (unmeasured; on
/// aarch64 it uses the SHA-512 instructions where present).
#[cfg(target_arch = "x86_64")]
#[derive(Clone)]
struct Sha512(ring::digest::Context);

#[cfg(target_arch = "x86_64")]
impl Sha512 {
    fn new() -> Self {
        Sha512(ring::digest::Context::new(&ring::digest::SHA512))
    }

    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn finalize(self) -> Vec<u8> {
        self.0.finish().as_ref().to_vec()
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone)]
struct Sha512(sha2::Sha512);

#[cfg(not(target_arch = "x86_64"))]
impl Sha512 {
    fn new() -> Self {
        Sha512(sha2::Sha512::new())
    }

    fn update(&mut self, data: &[u8]) {
        Digest::update(&mut self.0, data);
    }

    fn finalize(self) -> Vec<u8> {
        self.0.finalize().to_vec()
    }
}

impl fmt::Debug for MultiDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiDigest")
            .field("algorithms", &self.algorithms())
            .finish()
    }
}

impl MultiDigest {
    /// A digest set computing each algorithm in `algs` (repeats ignored).
    pub fn new(algs: &[Algorithm]) -> Self {
        let mut d = MultiDigest::default();
        for a in algs {
            match a {
                Algorithm::Sha1 => d.sha1 = Some(Sha1::new()),
                Algorithm::Sha256 => d.sha256 = Some(Sha256::new()),
                Algorithm::Sha512 => d.sha512 = Some(Sha512::new()),
            }
        }
        d
    }

    /// The algorithms being computed, in [`Algorithm::ALL`] order.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut v = Vec::with_capacity(3);
        if self.sha1.is_some() {
            v.push(Algorithm::Sha1);
        }
        if self.sha256.is_some() {
            v.push(Algorithm::Sha256);
        }
        if self.sha512.is_some() {
            v.push(Algorithm::Sha512);
        }
        v
    }

    /// Hashes the next piece of the stream.
    pub fn update(&mut self, data: &[u8]) {
        if let Some(h) = &mut self.sha1 {
            h.update(data);
        }
        if let Some(h) = &mut self.sha256 {
            h.update(data);
        }
        if let Some(h) = &mut self.sha512 {
            h.update(data);
        }
    }

    /// The digests, one per algorithm, in [`Algorithm::ALL`] order.
    pub fn finish(self) -> Vec<(Algorithm, Vec<u8>)> {
        let mut v = Vec::with_capacity(3);
        if let Some(h) = self.sha1 {
            v.push((Algorithm::Sha1, h.finalize().to_vec()));
        }
        if let Some(h) = self.sha256 {
            v.push((Algorithm::Sha256, h.finalize().to_vec()));
        }
        if let Some(h) = self.sha512 {
            v.push((Algorithm::Sha512, h.finalize()));
        }
        v
    }
}

/// The digest of one whole buffer.
pub fn digest(alg: Algorithm, data: &[u8]) -> Vec<u8> {
    let mut d = MultiDigest::new(&[alg]);
    d.update(data);
    d.finish().pop().map(|(_, v)| v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1_ABC: &str = "a9993e364706816aba3e25717850c26c9cd0d89d";
    const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const SHA512_ABC: &str = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                              2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";
    const SHA256_EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn known_vectors() {
        let mut d = MultiDigest::new(&[Algorithm::Sha512, Algorithm::Sha1, Algorithm::Sha256]);
        d.update(b"a");
        d.update(b"");
        d.update(b"bc");
        let got: Vec<(Algorithm, String)> = d
            .finish()
            .into_iter()
            .map(|(a, v)| (a, hex::encode(v)))
            .collect();
        assert_eq!(
            got,
            vec![
                (Algorithm::Sha1, SHA1_ABC.to_owned()),
                (Algorithm::Sha256, SHA256_ABC.to_owned()),
                (Algorithm::Sha512, SHA512_ABC.to_owned()),
            ]
        );
        assert_eq!(hex::encode(digest(Algorithm::Sha256, b"")), SHA256_EMPTY);
        for a in Algorithm::ALL {
            assert_eq!(digest(a, b"abc").len(), a.digest_len());
        }
    }

    #[test]
    fn subset_and_repeats() {
        let d = MultiDigest::new(&[Algorithm::Sha256, Algorithm::Sha256]);
        assert_eq!(d.algorithms(), vec![Algorithm::Sha256]);
        assert_eq!(d.finish().len(), 1);
        assert!(MultiDigest::new(&[]).finish().is_empty());
    }

    #[test]
    fn every_split_gives_the_same_digest() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = {
            let mut d = MultiDigest::new(&Algorithm::ALL);
            d.update(&data);
            d.finish()
        };
        for cut in 0..=data.len() {
            let mut d = MultiDigest::new(&Algorithm::ALL);
            d.update(&data[..cut]);
            d.update(&data[cut..]);
            assert_eq!(d.finish(), whole, "split at {cut}");
        }
        let mut state = 0x1234_5678_9abc_def1_u64;
        let mut d = MultiDigest::new(&Algorithm::ALL);
        let mut rest = &data[..];
        while !rest.is_empty() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = ((state % 70) as usize + 1).min(rest.len());
            d.update(&rest[..n]);
            rest = &rest[n..];
        }
        assert_eq!(d.finish(), whole);
    }

    /// Prints the throughput of each algorithm over 1 GiB in 1 MiB updates.
    #[test]
    #[ignore = "benchmark; run with --release -- --ignored --nocapture"]
    fn throughput() {
        let buf: Vec<u8> = (0..1usize << 20).map(|i| (i * 31 + 7) as u8).collect();
        let rounds = 1024;
        let mut sets: Vec<Vec<Algorithm>> = Algorithm::ALL.iter().map(|&a| vec![a]).collect();
        sets.push(vec![Algorithm::Sha1, Algorithm::Sha256]);
        sets.push(Algorithm::ALL.to_vec());
        for set in sets {
            let start = std::time::Instant::now();
            let mut d = MultiDigest::new(&set);
            for _ in 0..rounds {
                d.update(&buf);
            }
            let out = d.finish();
            let secs = start.elapsed().as_secs_f64();
            let mib = rounds as f64;
            println!(
                "{:<24} {:>8.0} MiB/s ({} MiB in {:.3} s) {}",
                format!("{set:?}"),
                mib / secs,
                rounds,
                secs,
                hex::encode(&out[0].1[..4])
            );
        }
    }
}
