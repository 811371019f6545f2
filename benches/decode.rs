//! Hot paths of the import pipeline: tar demux, zero detection, and each
//! disk decoder over a 64 MiB image that is half data, half zeros.

mod support;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ovaio::codec::DiskDecoder;
use ovaio::codec::qcow2::Qcow2StreamDecoder;
use ovaio::codec::select::Decoder;
use ovaio::codec::vmdk::VmdkStreamDecoder;
use ovaio::ova::demux::{Demux, Event};
use ovaio::sink::writer::is_zero;
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

fn zero_detect(c: &mut Criterion) {
    let img = half_data_image(IMAGE);
    let mut g = c.benchmark_group("zero_detect");
    g.throughput(Throughput::Bytes(img.len() as u64));
    g.bench_function("4KiB_blocks", |b| {
        b.iter(|| img.chunks(4096).filter(|c| is_zero(c)).count())
    });
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
