//! Synthetic inputs and sinks for the criterion benches: seeded data,
//! images made once with qemu-img in a temporary directory, and a sink
//! that only counts what it is given.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use ovaio::Result;
use ovaio::codec::ExtentSink;

/// Counts extents without storing them.
#[derive(Debug, Default)]
pub struct CountingSink {
    pub data: u64,
    pub zero: u64,
}

impl ExtentSink for CountingSink {
    fn data(&mut self, _offset: u64, data: &[u8]) -> Result<()> {
        self.data += data.len() as u64;
        Ok(())
    }

    fn zero(&mut self, _offset: u64, len: u64) -> Result<()> {
        self.zero += len;
        Ok(())
    }
}

/// Deterministic bytes that do not compress well (xorshift).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A raw disk image of `len` bytes: runs of noise alternating with zeros.
pub fn half_data_image(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let run = 1 << 20;
    let mut off = 0;
    let mut seed = 7;
    while off < len {
        let end = (off + run).min(len);
        v[off..end].copy_from_slice(&noise(end - off, seed));
        seed += 1;
        off += 2 * run;
    }
    v
}

/// Converts a raw image with `qemu-img convert` and returns the result.
pub fn convert(raw: &[u8], dir: &Path, args: &[&str]) -> Vec<u8> {
    let src = dir.join("src.raw");
    let dst = dir.join("dst.img");
    std::fs::write(&src, raw).expect("write bench source");
    let ok = Command::new("qemu-img")
        .arg("convert")
        .args(["-f", "raw"])
        .args(args)
        .arg(&src)
        .arg(&dst)
        .status()
        .expect("qemu-img runs")
        .success();
    assert!(ok, "qemu-img convert {args:?}");
    std::fs::read(&dst).expect("read converted image")
}

/// A one-entry ustar archive holding `data` as `name`.
pub fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut out = tar_entry(name, data);
    out.resize(out.len() + 1024, 0);
    out
}

/// One ustar entry holding `data` as `name`, padded, without end blocks.
pub fn tar_entry(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    let size = format!("{:011o}\0", data.len());
    h[124..136].copy_from_slice(size.as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}
