//! Random 64 KiB writes into a qcow2 volume through ovaio's volume layer,
//! the way the image data API writes a ranged PUT: `write_at` per request,
//! one `flush` at the end. Driven by `benches/compare_volumes.sh`, which
//! times `qemu-io` on the same pattern:
//!
//! ```sh
//! cargo bench --bench volume_writes -- IMAGE COUNT SEED
//! ```
//!
//! IMAGE is an existing qcow2 image (empty, as `qemu-img create` makes it);
//! COUNT writes of 64 KiB land at offsets drawn uniformly from its 64 KiB
//! slots (a xorshift generator seeded with SEED, the same one the script
//! uses to write qemu-io's commands). Prints the writes per second,
//! flush included. Run without arguments (as `cargo bench` does) it
//! writes a small image of its own and checks nothing: a smoke run.

use std::path::PathBuf;
use std::time::Instant;

use ovaio::roots::AllowedRoots;
use ovaio::volume::{self, Flush, Format, OpenOptions, Size, WriteAt};

const WRITE: u64 = 64 << 10;

/// The same generator as the script's: xorshift64*.
fn offsets(seed: u64, slots: u64, count: usize) -> Vec<u64> {
    let mut x = seed.max(1);
    (0..count)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) % slots) * WRITE
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let _smoke;
    let (image, count, seed) = match args.as_slice() {
        [image, count, seed] => (
            PathBuf::from(image),
            count.parse().expect("COUNT is a number"),
            seed.parse().expect("SEED is a number"),
        ),
        _ => {
            let dir = tempfile::tempdir().expect("tempdir");
            let image = dir.path().join("smoke.qcow2");
            let ok = std::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&image)
                .arg("64M")
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("volume_writes: qemu-img is needed for the smoke run");
                return;
            }
            _smoke = dir;
            (image, 256, 1)
        }
    };
    let opts = OpenOptions {
        format: Some(Format::Qcow2),
        write: true,
        create: None,
    };
    let v = volume::open(&AllowedRoots::any(), &image, &opts).expect("open the image");
    let slots = v.size() / WRITE;
    let plan = offsets(seed, slots, count);
    let data: Vec<u8> = (0..WRITE as usize)
        .map(|i| (i as u8).wrapping_mul(151) | 1)
        .collect();
    let start = Instant::now();
    for &o in &plan {
        v.write_at(o, &data).expect("write");
    }
    v.flush().expect("flush");
    let secs = start.elapsed().as_secs_f64();
    println!("{:.0}", count as f64 / secs);
}
