//! The hashing stage of import. Each manifest algorithm alone, as ovaio
//! computes it (RustCrypto `sha1`/`sha2`, hardware backends picked at run
//! time) and as `ring` does; SHA-1 with SHA-256 and all three on one
//! thread; and the digest tap, one thread per algorithm, over a 64 MiB
//! package whose manifests come right after the OVF (each algorithm alone,
//! and SHA-1 with SHA-256 from two manifests) or last (all three until
//! then).

mod support;

use std::hint::black_box;
use std::time::Duration;

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
    g.bench_function("rustcrypto_sha1_sha256_one_thread", |b| {
        b.iter(|| {
            let mut d = MultiDigest::new(&[Algorithm::Sha1, Algorithm::Sha256]);
            for chunk in data.chunks(CHUNK) {
                d.update(chunk);
            }
            black_box(d.finish())
        })
    });
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

/// CPU time this thread has run so far (Linux `/proc/thread-self/schedstat`):
/// unlike wall time, it does not grow while other work holds the CPU.
fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("Linux schedstat");
    let ns = s
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("schedstat starts with nanoseconds on the CPU");
    Duration::from_nanos(ns)
}

/// The same implementations as `digest`, timed in the CPU time of the
/// hashing thread: the figures to compare on a machine that is busy.
fn algorithms_cpu(c: &mut Criterion) {
    let data = noise(DATA, 11);
    let mut g = c.benchmark_group("digest_cpu");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(DATA as u64));
    for alg in Algorithm::ALL {
        g.bench_function(format!("rustcrypto_{alg}"), |b| {
            b.iter_custom(|iters| {
                let start = thread_cpu();
                for _ in 0..iters {
                    let mut d = MultiDigest::new(&[alg]);
                    for chunk in data.chunks(CHUNK) {
                        d.update(chunk);
                    }
                    black_box(d.finish());
                }
                thread_cpu() - start
            })
        });
        g.bench_function(format!("ring_{alg}"), |b| {
            b.iter_custom(|iters| {
                let start = thread_cpu();
                for _ in 0..iters {
                    let mut d = ring::digest::Context::new(ring_algorithm(alg));
                    for chunk in data.chunks(CHUNK) {
                        d.update(chunk);
                    }
                    black_box(d.finish());
                }
                thread_cpu() - start
            })
        });
    }
    g.finish();
}

/// The package in reading chunks, made once: feeding clones the `Bytes`
/// handles, as the pipeline does.
fn chunks(tar: &[u8]) -> Vec<Bytes> {
    tar.chunks(CHUNK).map(Bytes::copy_from_slice).collect()
}

/// Where the package's manifests go, and which algorithms their lines use
/// (one manifest per algorithm, so that an entry can be listed in two).
#[derive(Clone, Copy)]
enum Place {
    AfterOvf(&'static [Algorithm]),
    Last,
}

fn tap(c: &mut Criterion) {
    let ovf: &[u8] = br#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>"#;
    let disk = noise(DATA, 12);
    let manifest = |alg: Algorithm| {
        [
            format_line(alg, "vm.ovf", &digest(alg, ovf)),
            format_line(alg, "disk1.img", &digest(alg, &disk)),
        ]
        .concat()
    };
    let package = |place: Place| {
        let mut tar = tar_entry("vm.ovf", ovf);
        if let Place::AfterOvf(algs) = place {
            for (i, &alg) in algs.iter().enumerate() {
                tar.extend(tar_entry(&format!("vm{i}.mf"), manifest(alg).as_bytes()));
            }
        }
        tar.extend(tar_entry("disk1.img", &disk));
        if let Place::Last = place {
            tar.extend(tar_entry("vm.mf", manifest(Algorithm::Sha256).as_bytes()));
        }
        tar.extend([0u8; 1024]);
        chunks(&tar)
    };
    let mut g = c.benchmark_group("digest_tap");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(DATA as u64));
    let cases: [(&str, Place, usize); 6] = [
        (
            "manifest_after_ovf_sha1",
            Place::AfterOvf(&[Algorithm::Sha1]),
            1,
        ),
        (
            "manifest_after_ovf_sha256",
            Place::AfterOvf(&[Algorithm::Sha256]),
            1,
        ),
        (
            "manifest_after_ovf_sha512",
            Place::AfterOvf(&[Algorithm::Sha512]),
            1,
        ),
        (
            "manifests_after_ovf_sha1_sha256",
            Place::AfterOvf(&[Algorithm::Sha1, Algorithm::Sha256]),
            2,
        ),
        ("manifest_last_all_three", Place::Last, 3),
        ("no_manifest_all_three", Place::AfterOvf(&[]), 3),
    ];
    for (name, place, algs) in cases {
        let chunks = package(place);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut tap = DigestTap::start();
                for c in &chunks {
                    tap.feed(c);
                }
                let d = tap.finish();
                assert_eq!(d["disk1.img"].len(), algs);
                black_box(d)
            })
        });
    }
    // What the pipeline pays with verification off: nothing runs.
    let chunks = package(Place::AfterOvf(&[Algorithm::Sha256]));
    g.bench_function("idle", |b| {
        b.iter(|| {
            let mut tap = DigestTap::idle();
            for c in &chunks {
                tap.feed(c);
            }
            black_box(tap.finish())
        })
    });
    g.finish();
}

criterion_group!(benches, algorithms, algorithms_cpu, tap);
criterion_main!(benches);
