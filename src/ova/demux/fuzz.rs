//! The fuzz target's harness: the demux fed in pieces of every size must
//! give the same entries as when fed whole.

use super::*;

/// An owned copy of an [`Event`], for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg(any(test, feature = "fuzzing"))]
pub(super) enum Owned {
    Begin(EntryHeader),
    Data(Vec<u8>),
    End,
    Eof,
}

/// Runs the demux over `data` fed in pieces of the sizes `cuts` yields
/// (cycled), merging adjacent data, and checks the step contract and
/// the size invariant on the way. Panics only on an invariant breach.
#[cfg(any(test, feature = "fuzzing"))]
pub(super) fn run_split(data: &[u8], cuts: &[usize]) -> (Vec<Owned>, Result<(), TarError>) {
    let mut demux = Demux::new();
    let mut events: Vec<Owned> = Vec::new();
    let mut open: Option<(u64, u64)> = None; // (size, delivered)
    let mut rest = data;
    let mut i = 0usize;
    let push = |events: &mut Vec<Owned>, ev: Event<'_>, open: &mut Option<(u64, u64)>| match ev {
        Event::Begin(h) => {
            assert!(open.is_none(), "Begin inside an entry");
            assert!(
                h.data_offset >= h.header_offset + BLOCK as u64,
                "offsets out of order"
            );
            *open = Some((h.size, 0));
            events.push(Owned::Begin(h));
        }
        Event::Data(d) => {
            let (size, got) = open.as_mut().expect("Data outside an entry");
            assert!(!d.is_empty(), "empty Data event");
            *got += d.len() as u64;
            assert!(*got <= *size, "more Data than the Begin size");
            match events.last_mut() {
                Some(Owned::Data(v)) => v.extend_from_slice(d),
                _ => events.push(Owned::Data(d.to_vec())),
            }
        }
        Event::End => {
            let (size, got) = open.take().expect("End outside an entry");
            assert_eq!(size, got, "End before the Begin size was delivered");
            events.push(Owned::End);
        }
        Event::Eof => {
            assert!(open.is_none(), "Eof inside an entry");
            events.push(Owned::Eof);
        }
    };
    while !rest.is_empty() {
        let cut = cuts
            .get(i % cuts.len().max(1))
            .copied()
            .unwrap_or(usize::MAX);
        i += 1;
        let mut piece = &rest[..cut.clamp(1, rest.len())];
        rest = &rest[piece.len()..];
        while !piece.is_empty() {
            let before = demux.position();
            match demux.step(piece) {
                Ok((n, ev)) => {
                    assert!(n <= piece.len(), "consumed more than given");
                    assert!(n > 0 || ev.is_some(), "(0, None) on non-empty input");
                    assert_eq!(demux.position(), before + n as u64, "position drift");
                    piece = &piece[n..];
                    if let Some(ev) = ev {
                        push(&mut events, ev, &mut open);
                    }
                }
                Err(e) => return (events, Err(e)),
            }
        }
    }
    match demux.step(&[]) {
        Ok((0, ev)) => {
            if let Some(ev) = ev {
                assert_eq!(ev, Event::End, "only End may be pending at the end");
                push(&mut events, ev, &mut open);
            }
        }
        Ok(_) => panic!("consumed bytes from empty input"),
        Err(e) => return (events, Err(e)),
    }
    let r = demux.finish();
    if r.is_ok() {
        assert!(open.is_none(), "finish Ok inside an entry");
    }
    (events, r)
}

/// Fuzzing entry point: runs the demux over `data` whole and split in two
/// different ways and panics if the event sequences or results differ, or
/// if the step contract is broken. Not a stable API.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_entry(data: &[u8]) {
    let whole = run_split(data, &[usize::MAX]);
    let seed = data
        .iter()
        .fold(7usize, |a, &b| a.wrapping_mul(31) ^ usize::from(b));
    let odd: Vec<usize> = (0..16).map(|k| 1 + (seed >> (k % 8)) % 700).collect();
    let small = run_split(data, &odd);
    let bytes = run_split(data, &[1, 3, 511, 2]);
    assert_eq!(whole, small, "split changed the result");
    assert_eq!(whole, bytes, "split changed the result");
}
