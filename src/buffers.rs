//! Buffers that come back.
//!
//! An object part being uploaded becomes shared [`Bytes`] that the object
//! store's client holds until the part is sent, and the last one to let go
//! frees it, on whatever thread that is. Parts are large (8 MiB and more):
//! allocated fresh each time, the allocator kept about 4.2 part sizes
//! resident for 3 in use. [`Recycler`] keeps a handle on the buffers it
//! lent and reuses one as soon as nobody else holds it.
//!
//! Read chunks are not recycled: see [`crate::source::read_ahead`] for
//! what that was measured to cost.

use std::collections::VecDeque;

use bytes::Bytes;

/// Hands out buffers and takes back those every holder let go of.
#[derive(Debug)]
pub struct Recycler {
    capacity: usize,
    keep: usize,
    lent: VecDeque<Bytes>,
    /// Fresh buffers made so far.
    allocated: u64,
}

impl Recycler {
    /// Buffers of `capacity` bytes; at most `keep` lent ones are watched,
    /// so at most `keep` idle buffers stay allocated.
    pub fn new(capacity: usize, keep: usize) -> Self {
        Recycler {
            capacity,
            keep: keep.max(1),
            lent: VecDeque::with_capacity(keep.max(1)),
            allocated: 0,
        }
    }

    /// An empty buffer of the configured capacity: one that came back
    /// (the oldest first), else a fresh one.
    pub fn take(&mut self) -> Vec<u8> {
        if let Some(i) = self.lent.iter().position(Bytes::is_unique)
            && let Some(b) = self.lent.remove(i)
            && let Ok(mut m) = b.try_into_mut()
        {
            // Emptied first, so that turning it back into a vector moves
            // no byte. (Emptied as `BytesMut`: `Bytes::clear` frees the
            // buffer.)
            m.clear();
            let v = Vec::from(m);
            if v.capacity() >= self.capacity {
                return v;
            }
        }
        self.allocated += 1;
        Vec::with_capacity(self.capacity)
    }

    /// How many fresh buffers [`Recycler::take`] has made.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Freezes `buf` into shared bytes, watching it to take it back.
    pub fn lend(&mut self, buf: Vec<u8>) -> Bytes {
        let b = Bytes::from(buf);
        if self.lent.len() == self.keep {
            // Forgotten: whoever holds it last frees it.
            self.lent.pop_front();
        }
        self.lent.push_back(b.clone());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_nobody_holds_comes_back() {
        let mut r = Recycler::new(4096, 4);
        let mut v = r.take();
        v.extend_from_slice(b"abc");
        let at = v.as_ptr();
        let held = r.lend(v);
        // Still held: a fresh one.
        let other = r.take();
        assert_ne!(other.as_ptr(), at);
        drop(held);
        let again = r.take();
        assert_eq!(again.as_ptr(), at, "the released buffer is reused");
        assert_eq!(r.allocated(), 2, "no third buffer was made");
        assert!(again.is_empty());
        assert!(again.capacity() >= 4096);
    }

    /// Regression: emptying the shared bytes before taking them back
    /// freed the buffer (bytes 1.12 `Bytes::clear`), so every take made a
    /// fresh one and faulted its pages in again.
    #[test]
    fn full_and_partly_filled_buffers_come_back_whole() {
        for fill in [1 << 20, 3 << 18, 1] {
            let mut r = Recycler::new(1 << 20, 4);
            let mut v = r.take();
            v.resize(fill, 0xa5);
            let at = v.as_ptr();
            let b = r.lend(v);
            let mut piece = b.slice(..);
            drop(b);
            let _ = piece.split_to(fill / 2);
            drop(piece);
            let back = r.take();
            assert_eq!(r.allocated(), 1, "filled {fill}: taken back, not made");
            assert_eq!(back.as_ptr(), at);
            assert!(back.is_empty());
            assert!(back.capacity() >= 1 << 20);
        }
    }

    #[test]
    fn slices_of_a_lent_buffer_keep_it() {
        let mut r = Recycler::new(64, 2);
        let mut v = r.take();
        v.extend_from_slice(&[7; 64]);
        let at = v.as_ptr();
        let b = r.lend(v);
        let tail = b.slice(32..);
        drop(b);
        let fresh = r.take();
        assert_ne!(fresh.as_ptr(), at, "a slice still holds it");
        assert_eq!(&tail[..], &[7; 32]);
        drop(tail);
        let back = r.take();
        assert_eq!(back.as_ptr(), at);
        assert_eq!(r.allocated(), 2);
    }

    #[test]
    fn at_most_keep_buffers_are_watched() {
        let mut r = Recycler::new(64, 2);
        let held: Vec<Bytes> = (0..5)
            .map(|_| {
                let mut v = r.take();
                v.push(1);
                r.lend(v)
            })
            .collect();
        assert_eq!(r.lent.len(), 2);
        drop(held);
        assert!(r.take().capacity() >= 64);
    }
}
