//! Hot paths of the import pipeline: tar demux, zero detection (alone and
//! through the volume writer, on zeros, noise and a mix), and each disk
//! decoder over a 64 MiB image that is half data, half zeros.

mod support;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ovaio::codec::qcow2::Qcow2StreamDecoder;
use ovaio::codec::select::Decoder;
use ovaio::codec::vmdk::VmdkStreamDecoder;
use ovaio::codec::{DiskDecoder, ExtentSink};
use ovaio::ova::demux::{Demux, Event};
use ovaio::sink::Target;
use ovaio::sink::writer::{VolumeWriter, is_zero};
use support::{CountingSink, convert, half_data_image, tar_of};

const IMAGE: usize = 64 << 20;
const CHUNK: usize = 1 << 20;

fn demux(c: &mut Criterion) {
    let tar = tar_of("disk1.img", &half_data_image(IMAGE));
    let mut g = c.benchmark_group("demux");
    g.throughput(Throughput::Bytes(tar.len() as u64));
    g.bench_function("ustar_64MiB", |b| {
        b.iter(|| {
            let mut d = Demux::new();
            let mut n = 0u64;
            for chunk in tar.chunks(CHUNK) {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let (used, ev) = d.step(rest).expect("valid tar");
                    rest = &rest[used..];
                    if let Some(Event::Data(x)) = ev {
                        n += x.len() as u64;
                    }
                }
            }
            black_box(n)
        })
    });
    g.finish();
}

/// A target that only counts: what zero detection hands on.
#[derive(Debug, Default)]
struct NullTarget {
    data: u64,
    zero: u64,
}

impl Target for NullTarget {
    fn write_at(&mut self, _offset: u64, data: &[u8]) -> ovaio::Result<()> {
        self.data += data.len() as u64;
        Ok(())
    }
    fn write_zeroes(&mut self, _offset: u64, len: u64) -> ovaio::Result<()> {
        self.zero += len;
        Ok(())
    }
    fn finish(&mut self) -> ovaio::Result<()> {
        Ok(())
    }
    fn capacity(&self) -> u64 {
        u64::MAX / 2
    }
}

/// Zero detection alone (`is_zero` over 4 KiB blocks) on data that is all
/// zeros (every byte read), all noise (each block stops at its first 64
/// bytes) and half of each; and as the pipeline runs it, through
/// `VolumeWriter::data` in 1 MiB extents onto a target that only counts.
fn zero_detect(c: &mut Criterion) {
    let mut g = c.benchmark_group("zero_detect");
    let images = [
        ("zeros", vec![0u8; IMAGE]),
        ("noise", support::noise(IMAGE, 5)),
        ("half_data", half_data_image(IMAGE)),
    ];
    g.throughput(Throughput::Bytes(IMAGE as u64));
    for (name, img) in &images {
        g.bench_function(format!("is_zero_4KiB_{name}"), |b| {
            b.iter(|| img.chunks(4096).filter(|c| is_zero(c)).count())
        });
        g.bench_function(format!("volume_writer_{name}"), |b| {
            b.iter(|| {
                let mut w = VolumeWriter::new(NullTarget::default());
                for (i, chunk) in img.chunks(CHUNK).enumerate() {
                    w.data((i * CHUNK) as u64, chunk).expect("in range");
                }
                black_box(w.data_bytes())
            })
        });
    }
    g.finish();
}

fn run(dec: &mut dyn DiskDecoder, input: &[u8]) -> u64 {
    let mut sink = CountingSink::default();
    for chunk in input.chunks(CHUNK) {
        dec.feed(chunk, &mut sink).expect("decodes");
    }
    dec.finish(&mut sink).expect("finishes");
    sink.data + sink.zero
}

fn decoders(c: &mut Criterion) {
    let raw = half_data_image(IMAGE);
    let dir = tempfile::tempdir().expect("tempdir");
    let vmdk = convert(
        &raw,
        dir.path(),
        &["-O", "vmdk", "-o", "subformat=streamOptimized"],
    );
    let qcow2 = convert(&raw, dir.path(), &["-O", "qcow2"]);
    let qcow2_zlib = convert(&raw, dir.path(), &["-O", "qcow2", "-c"]);
    let qcow2_zstd = convert(
        &raw,
        dir.path(),
        &["-O", "qcow2", "-c", "-o", "compression_type=zstd"],
    );
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&raw).expect("gzip");
        e.finish().expect("gzip")
    };
    let mut g = c.benchmark_group("decode");
    g.sample_size(10);
    // Throughput in guest bytes, so formats compare directly.
    g.throughput(Throughput::Bytes(IMAGE as u64));
    g.bench_function("raw", |b| {
        b.iter(|| run(&mut Decoder::sniffing(Some(raw.len() as u64)), &raw))
    });
    g.bench_function("gzip_raw", |b| {
        b.iter(|| run(&mut Decoder::gzip(1 << 40), &gz))
    });
    g.bench_function("vmdk_stream", |b| {
        b.iter(|| run(&mut VmdkStreamDecoder::new(), &vmdk))
    });
    g.bench_function("qcow2", |b| {
        b.iter(|| run(&mut Qcow2StreamDecoder::new(None), &qcow2))
    });
    g.bench_function("qcow2_zlib", |b| {
        b.iter(|| run(&mut Qcow2StreamDecoder::new(None), &qcow2_zlib))
    });
    g.bench_function("qcow2_zstd", |b| {
        b.iter(|| run(&mut Qcow2StreamDecoder::new(None), &qcow2_zstd))
    });
    g.finish();
}

criterion_group!(benches, demux, zero_detect, decoders);
criterion_main!(benches);
