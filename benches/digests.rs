//! The hashing stage of import. Each manifest algorithm alone, as ovaio
//! computes it (RustCrypto `sha1`/`sha2`, hardware backends picked at run
//! time) and as `ring` does; all three on one thread; and the digest tap,
//! one thread per algorithm, over a 64 MiB package whose manifest comes
//! right after the OVF (SHA-256 only) or last (all three until then).

mod support;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ovaio::ova::digest::{MultiDigest, digest};
use ovaio::ova::manifest::{Algorithm, format_line};
use ovaio::pipeline::digests::DigestTap;
use support::{noise, tar_entry};

const DATA: usize = 64 << 20;
const CHUNK: usize = 1 << 20;

fn ring_algorithm(alg: Algorithm) -> &'static ring::digest::Algorithm {
    match alg {
        Algorithm::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        Algorithm::Sha256 => &ring::digest::SHA256,
        Algorithm::Sha512 => &ring::digest::SHA512,
    }
}

fn algorithms(c: &mut Criterion) {
    let data = noise(DATA, 11);
    let mut g = c.benchmark_group("digest");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(DATA as u64));
    for alg in Algorithm::ALL {
        g.bench_function(format!("rustcrypto_{alg}"), |b| {
            b.iter(|| {
                let mut d = MultiDigest::new(&[alg]);
                for chunk in data.chunks(CHUNK) {
                    d.update(chunk);
                }
                black_box(d.finish())
            })
        });
        g.bench_function(format!("ring_{alg}"), |b| {
            b.iter(|| {
                let mut d = ring::digest::Context::new(ring_algorithm(alg));
                for chunk in data.chunks(CHUNK) {
                    d.update(chunk);
                }
                black_box(d.finish())
            })
        });
    }
    g.bench_function("rustcrypto_all_three_one_thread", |b| {
        b.iter(|| {
            let mut d = MultiDigest::new(&Algorithm::ALL);
            for chunk in data.chunks(CHUNK) {
                d.update(chunk);
            }
            black_box(d.finish())
        })
    });
    g.finish();
}

/// The package in reading chunks, made once: feeding clones the `Bytes`
/// handles, as the pipeline does.
fn chunks(tar: &[u8]) -> Vec<Bytes> {
    tar.chunks(CHUNK).map(Bytes::copy_from_slice).collect()
}

fn tap(c: &mut Criterion) {
    let ovf: &[u8] = br#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>"#;
    let disk = noise(DATA, 12);
    let mf = [
        format_line(Algorithm::Sha256, "vm.ovf", &digest(Algorithm::Sha256, ovf)),
        format_line(
            Algorithm::Sha256,
            "disk1.img",
            &digest(Algorithm::Sha256, &disk),
        ),
    ]
    .concat();
    let package = |mf_after_ovf: bool| {
        let mut tar = tar_entry("vm.ovf", ovf);
        if mf_after_ovf {
            tar.extend(tar_entry("vm.mf", mf.as_bytes()));
        }
        tar.extend(tar_entry("disk1.img", &disk));
        if !mf_after_ovf {
            tar.extend(tar_entry("vm.mf", mf.as_bytes()));
        }
        tar.extend([0u8; 1024]);
        chunks(&tar)
    };
    let mut g = c.benchmark_group("digest_tap");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(DATA as u64));
    for (name, after_ovf) in [
        ("manifest_after_ovf_sha256", true),
        ("manifest_last_all_three", false),
    ] {
        let chunks = package(after_ovf);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut tap = DigestTap::start();
                for c in &chunks {
                    tap.feed(c);
                }
                let d = tap.finish();
                assert_eq!(d["disk1.img"].len(), if after_ovf { 1 } else { 3 });
                black_box(d)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, algorithms, tap);
criterion_main!(benches);
