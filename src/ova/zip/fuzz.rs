//! The fuzz target's harness: the reader fed in pieces of every size must
//! give the same members as when fed whole.

use super::*;

/// An owned copy of an [`Event`] stream, for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg(any(test, feature = "fuzzing"))]
pub(super) enum Owned {
    Begin(MemberHeader),
    Data(Vec<u8>),
    End,
    Eof,
}

/// Runs the reader over `data` fed in pieces of the sizes `cuts` yields
/// (cycled), merging adjacent data, and checks the step contract on the
/// way. Panics only on a contract breach.
#[cfg(any(test, feature = "fuzzing"))]
pub(super) fn run_split(data: &[u8], cuts: &[usize]) -> (Vec<Owned>, Result<(), ZipError>) {
    let mut z = ZipDemux::new();
    let mut events: Vec<Owned> = Vec::new();
    let mut open = false;
    let push = |events: &mut Vec<Owned>, ev: Event, open: &mut bool| match ev {
        Event::Begin(h) => {
            assert!(!*open, "Begin inside a member");
            *open = true;
            events.push(Owned::Begin(h));
        }
        Event::Data(d) => {
            assert!(*open, "Data outside a member");
            assert!(!d.is_empty(), "empty Data event");
            assert!(d.len() <= limits::DECOMPRESSED_CHUNK, "oversized Data");
            match events.last_mut() {
                Some(Owned::Data(v)) => v.extend_from_slice(&d),
                _ => events.push(Owned::Data(d.to_vec())),
            }
        }
        Event::End => {
            assert!(*open, "End outside a member");
            *open = false;
            events.push(Owned::End);
        }
        Event::Eof => {
            assert!(!*open, "Eof inside a member");
            events.push(Owned::Eof);
        }
    };
    let mut rest = data;
    let mut i = 0usize;
    let mut drive = |piece: &[u8], events: &mut Vec<Owned>, open: &mut bool| {
        let mut piece = piece;
        loop {
            let before = z.position();
            match z.step(piece) {
                Ok((n, ev)) => {
                    assert!(n <= piece.len(), "consumed more than given");
                    assert!(
                        n > 0 || ev.is_some() || piece.is_empty(),
                        "(0, None) on non-empty input"
                    );
                    assert_eq!(z.position(), before + n as u64, "position drift");
                    piece = &piece[n..];
                    let none = ev.is_none();
                    if let Some(ev) = ev {
                        push(events, ev, open);
                    }
                    if none && piece.is_empty() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    };
    while !rest.is_empty() {
        let cut = cuts
            .get(i % cuts.len().max(1))
            .copied()
            .unwrap_or(usize::MAX);
        i += 1;
        let piece = &rest[..cut.clamp(1, rest.len())];
        rest = &rest[piece.len()..];
        if let Err(e) = drive(piece, &mut events, &mut open) {
            return (events, Err(e));
        }
    }
    if let Err(e) = drive(&[], &mut events, &mut open) {
        return (events, Err(e));
    }
    let r = z.finish();
    if r.is_ok() {
        assert!(!open, "finish Ok inside a member");
    }
    (events, r)
}

/// The events of a run, less the data a failed run handed out of the
/// member it failed in: how much of it passed before the inflater noticed
/// the damage depends on how the input was cut, and nothing of it counts
/// (the member never ends).
#[cfg(any(test, feature = "fuzzing"))]
pub(super) fn settled(
    run: (Vec<Owned>, Result<(), ZipError>),
) -> (Vec<Owned>, Result<(), ZipError>) {
    let (mut events, r) = run;
    if r.is_err() {
        while matches!(events.last(), Some(Owned::Data(_))) {
            events.pop();
        }
    }
    (events, r)
}

/// Fuzzing entry point: runs the reader over `data` whole and split in
/// two different ways and panics if the events or results differ, or if
/// the step contract is broken. Not a stable API.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_entry(data: &[u8]) {
    let whole = settled(run_split(data, &[usize::MAX]));
    let seed = data
        .iter()
        .fold(7usize, |a, &b| a.wrapping_mul(31) ^ usize::from(b));
    let odd: Vec<usize> = (0..16).map(|k| 1 + (seed >> (k % 8)) % 700).collect();
    let small = settled(run_split(data, &odd));
    let bytes = settled(run_split(data, &[1, 3, 29, 2]));
    assert_eq!(whole, small, "split changed the result");
    assert_eq!(whole, bytes, "split changed the result");
}
