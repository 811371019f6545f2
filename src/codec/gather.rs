//! Cursor steps shared by the decoders that read small structures (a
//! header, a grain marker, a footer) across feeds of any size: VMDK stream,
//! dynamic VHD and VDI.

/// Moves `input` on by `n` bytes and the entry position with it.
pub(crate) fn advance(input: &mut &[u8], pos: &mut u64, n: usize) {
    *input = input.get(n..).unwrap_or(&[]);
    *pos += n as u64;
}

/// Copies from `input` into `buf` until it holds `need` bytes (`fill` of
/// them are there already), moving `input` and `pos` on by what it took;
/// true once `need` bytes are held. `need` must fit in `buf`.
pub(crate) fn gather(
    buf: &mut [u8],
    fill: &mut usize,
    input: &mut &[u8],
    pos: &mut u64,
    need: usize,
) -> bool {
    if *fill < need {
        let n = (need - *fill).min(input.len());
        buf[*fill..*fill + n].copy_from_slice(&input[..n]);
        *fill += n;
        advance(input, pos, n);
    }
    *fill >= need
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_structure_gathers_across_any_split() {
        let data: Vec<u8> = (0..40).collect();
        for cut in 0..=data.len() {
            let (a, b) = data.split_at(cut);
            let (mut buf, mut fill, mut pos) = ([0u8; 32], 0, 0u64);
            let mut input = a;
            let done = gather(&mut buf, &mut fill, &mut input, &mut pos, 32);
            assert_eq!(done, cut >= 32);
            // What the first feed left over is still the caller's.
            assert_eq!(input.len(), cut.saturating_sub(32));
            let mut input = b;
            if !done {
                assert!(gather(&mut buf, &mut fill, &mut input, &mut pos, 32));
                assert_eq!(input.len(), data.len() - 32);
            }
            assert_eq!(&buf[..], &data[..32]);
            assert_eq!(pos, 32);
        }
    }
}
