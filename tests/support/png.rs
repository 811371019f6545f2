//! Enough of PNG to read back what Chromium's screenshots are: 8-bit RGB
//! or RGBA, not interlaced. The tests look at pixels with it (how far a
//! progress bar is filled, which colour a verdict has), as a person would.

use std::io::Read;

/// A decoded image: `width × height` pixels, RGB.
#[derive(Debug, Clone)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    rgb: Vec<[u8; 3]>,
}

impl Image {
    /// Decodes a PNG; panics on anything but 8-bit RGB(A), not interlaced.
    pub fn decode(png: &[u8]) -> Image {
        assert!(
            png.len() > 8 && png[..8] == *b"\x89PNG\r\n\x1a\n",
            "not a PNG"
        );
        let mut at = 8;
        let (mut width, mut height, mut channels) = (0usize, 0usize, 0usize);
        let mut idat = Vec::new();
        while at + 8 <= png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes")) as usize;
            let kind = &png[at + 4..at + 8];
            let data = &png[at + 8..at + 8 + len];
            match kind {
                b"IHDR" => {
                    width = u32::from_be_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
                    height = u32::from_be_bytes(data[4..8].try_into().expect("4 bytes")) as usize;
                    assert_eq!(data[8], 8, "bit depth");
                    channels = match data[9] {
                        2 => 3,
                        6 => 4,
                        t => panic!("PNG colour type {t}"),
                    };
                    assert_eq!(data[12], 0, "interlaced PNG");
                }
                b"IDAT" => idat.extend_from_slice(data),
                b"IEND" => break,
                _ => {}
            }
            at += 12 + len;
        }
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .expect("inflate PNG data");
        let stride = width * channels;
        assert_eq!(raw.len(), height * (stride + 1), "PNG data size");
        let mut prev = vec![0u8; stride];
        let mut rgb = Vec::with_capacity(width * height);
        for y in 0..height {
            let row = &raw[y * (stride + 1)..(y + 1) * (stride + 1)];
            let (filter, line) = (row[0], &row[1..]);
            let mut cur = vec![0u8; stride];
            for i in 0..stride {
                let a = if i >= channels { cur[i - channels] } else { 0 };
                let b = prev[i];
                let c = if i >= channels { prev[i - channels] } else { 0 };
                let p = match filter {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                    4 => paeth(a, b, c),
                    f => panic!("PNG filter {f}"),
                };
                cur[i] = line[i].wrapping_add(p);
            }
            rgb.extend(cur.chunks(channels).map(|px| [px[0], px[1], px[2]]));
            prev = cur;
        }
        Image { width, height, rgb }
    }

    /// The pixel at (x, y).
    pub fn at(&self, x: usize, y: usize) -> [u8; 3] {
        self.rgb[y * self.width + x]
    }

    /// The pixels of row `y`.
    pub fn row(&self, y: usize) -> &[[u8; 3]] {
        &self.rgb[y * self.width..(y + 1) * self.width]
    }
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = (
        (p - i16::from(a)).abs(),
        (p - i16::from(b)).abs(),
        (p - i16::from(c)).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

/// Whether two colours are within `tolerance` on every channel.
pub fn near(a: [u8; 3], b: [u8; 3], tolerance: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tolerance)
}

/// `#rrggbb` as a colour.
pub fn hex(c: &str) -> [u8; 3] {
    let c = c.trim_start_matches('#');
    let v = |i: usize| u8::from_str_radix(&c[i..i + 2], 16).expect("hex colour");
    [v(0), v(2), v(4)]
}
