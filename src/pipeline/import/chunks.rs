//! The chunks of one chunked file (`ovf:chunkSize`), checked as they pass.
//!
//! ovftool splits a file into consecutive entries `href.000000000`,
//! `href.000000001`, ... of `ovf:chunkSize` bytes each, the last one
//! fewer, and gives the whole file's size in `ovf:size`. The importer
//! concatenates them into one stream for the disk's decoder, so they must
//! arrive in order, one right after the other: a chunk that is missing,
//! out of order or separated from the previous one by another entry is
//! refused, naming it, before its bytes reach the decoder.
//!
//! Before the OVF arrives the chunk size is not known: the first chunk's
//! size stands for it (every chunk but the last holds that many bytes),
//! and [`ChunkRun::check`] compares both with the OVF once it is known.

use crate::error::{Error, ErrorKind, Result};
use crate::names::printable;
use crate::ova::ovf::{FileRef, chunk_name};

/// What the OVF declares about a chunked file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Declared {
    /// `ovf:chunkSize`.
    pub(super) chunk_size: u64,
    /// `ovf:size`: the whole file's.
    pub(super) size: Option<u64>,
}

impl Declared {
    /// The declaration of `f`, when it is a chunked file.
    pub(super) fn of(f: &FileRef) -> Option<Declared> {
        f.chunk_size.map(|chunk_size| Declared {
            chunk_size,
            size: f.size,
        })
    }
}

/// The chunks of one file seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChunkRun {
    href: String,
    count: u64,
    first: u64,
    last: u64,
    total: u64,
}

/// A chunk the package lacks (exit status as for any missing entry).
fn missing(what: String) -> Error {
    Error::new(ErrorKind::NotFound, what)
}

fn corrupt(what: String) -> Error {
    Error::new(ErrorKind::CorruptImage, what)
}

impl ChunkRun {
    /// No chunk of `href` yet.
    pub(super) fn new(href: &str) -> Self {
        ChunkRun {
            href: href.to_owned(),
            count: 0,
            first: 0,
            last: 0,
            total: 0,
        }
    }

    /// Bytes in the chunks so far.
    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// Chunks so far.
    pub(super) fn count(&self) -> u64 {
        self.count
    }

    fn name(&self, index: u64) -> String {
        printable(&chunk_name(&self.href, index)).into_owned()
    }

    /// Chunk `index` of `size` bytes begins. `adjacent`: the entry before
    /// it was this file's previous chunk. `declared` once the OVF is known.
    pub(super) fn begin(
        &mut self,
        index: u64,
        size: u64,
        adjacent: bool,
        declared: Option<Declared>,
    ) -> Result<()> {
        let this = self.name(index);
        if index != self.count {
            let after = if self.count == 0 {
                "as the first chunk of its file".to_owned()
            } else {
                format!("after '{}'", self.name(self.count - 1))
            };
            return Err(missing(format!(
                "chunk '{}' is missing: '{this}' comes {after}",
                self.name(self.count)
            )));
        }
        if self.count > 0 {
            let prev = self.name(self.count - 1);
            if !adjacent {
                return Err(corrupt(format!(
                    "chunk '{this}' does not follow '{prev}' directly: the chunks of a file are consecutive entries"
                )));
            }
            let (full, what) = match declared {
                Some(d) => (d.chunk_size, "the ovf:chunkSize"),
                None => (self.first, "the size of the first chunk"),
            };
            if self.last != full {
                return Err(corrupt(format!(
                    "chunk '{prev}' holds {} bytes but is not the last: every chunk but the last holds {full} bytes ({what})",
                    self.last
                )));
            }
            if size > full {
                return Err(corrupt(format!(
                    "chunk holds {size} bytes, more than {what} of {full} bytes"
                )));
            }
        }
        if let Some(d) = declared {
            if size > d.chunk_size {
                return Err(corrupt(format!(
                    "chunk holds {size} bytes, more than the ovf:chunkSize of {} bytes",
                    d.chunk_size
                )));
            }
            if let Some(s) = d.size
                && self.total.saturating_add(size) > s
            {
                return Err(corrupt(format!(
                    "the chunks of '{}' hold more than its ovf:size of {s} bytes",
                    printable(&self.href)
                )));
            }
        }
        if self.count == 0 {
            self.first = size;
        }
        self.count += 1;
        self.last = size;
        self.total = self.total.saturating_add(size);
        Ok(())
    }

    /// No chunk follows: checks the file against the OVF's declaration.
    /// Without an `ovf:size` a missing last chunk cannot be told from a
    /// file that ends there; a manifest, which lists every chunk, can.
    pub(super) fn check(&self, d: Declared) -> Result<()> {
        if self.count == 0 {
            return Err(missing(format!(
                "the OVF stores '{}' in chunks, but the package has no chunk '{}'",
                printable(&self.href),
                self.name(0)
            )));
        }
        if (self.count > 1 && self.first != d.chunk_size) || self.first > d.chunk_size {
            return Err(corrupt(format!(
                "chunk '{}' holds {} bytes, but the ovf:chunkSize is {} bytes",
                self.name(0),
                self.first,
                d.chunk_size
            )));
        }
        if let Some(size) = d.size {
            let wanted = size.div_ceil(d.chunk_size).max(1);
            if self.count < wanted {
                return Err(missing(format!(
                    "chunk '{}' is missing: an ovf:size of {size} bytes in chunks of {} bytes takes {wanted} chunks, and no chunk follows '{}' directly",
                    self.name(self.count),
                    d.chunk_size,
                    self.name(self.count - 1)
                )));
            }
            if self.total != size {
                return Err(corrupt(format!(
                    "the chunks of '{}' hold {} bytes, but its ovf:size is {size} bytes",
                    printable(&self.href),
                    self.total
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Declared = Declared {
        chunk_size: 100,
        size: Some(250),
    };

    fn feed(run: &mut ChunkRun, chunks: &[(u64, u64)], declared: Option<Declared>) -> Result<()> {
        for &(i, size) in chunks {
            run.begin(i, size, true, declared)?;
        }
        Ok(())
    }

    fn message(r: Result<()>) -> (ErrorKind, String) {
        let e = r.unwrap_err();
        (e.kind(), e.to_string())
    }

    #[test]
    fn whole_runs_pass_before_and_after_the_ovf() {
        for declared in [Some(D), None] {
            let mut run = ChunkRun::new("d.vmdk");
            feed(&mut run, &[(0, 100), (1, 100), (2, 50)], declared).unwrap();
            run.check(D).unwrap();
            assert_eq!((run.count(), run.total()), (3, 250));
        }
        // One chunk, shorter than the chunk size; an empty file is one
        // empty chunk.
        let mut run = ChunkRun::new("d");
        feed(&mut run, &[(0, 7)], None).unwrap();
        run.check(Declared {
            chunk_size: 100,
            size: Some(7),
        })
        .unwrap();
        let mut run = ChunkRun::new("d");
        feed(&mut run, &[(0, 0)], None).unwrap();
        run.check(Declared {
            chunk_size: 100,
            size: Some(0),
        })
        .unwrap();
    }

    #[test]
    fn missing_and_misplaced_chunks_are_named() {
        let mut run = ChunkRun::new("d.vmdk");
        let (kind, msg) = message(feed(&mut run, &[(0, 100), (2, 100)], Some(D)));
        assert_eq!(kind, ErrorKind::NotFound);
        assert_eq!(
            msg,
            "chunk 'd.vmdk.000000001' is missing: 'd.vmdk.000000002' comes after 'd.vmdk.000000000'"
        );
        let mut run = ChunkRun::new("d.vmdk");
        let (_, msg) = message(feed(&mut run, &[(1, 100)], None));
        assert_eq!(
            msg,
            "chunk 'd.vmdk.000000000' is missing: 'd.vmdk.000000001' comes as the first chunk of its file"
        );
        // The last chunk is missing: only the ovf:size tells.
        let mut run = ChunkRun::new("d.vmdk");
        feed(&mut run, &[(0, 100), (1, 100)], None).unwrap();
        let (kind, msg) = message(run.check(D));
        assert_eq!(kind, ErrorKind::NotFound);
        assert!(
            msg.starts_with("chunk 'd.vmdk.000000002' is missing"),
            "{msg}"
        );
        run.check(Declared {
            chunk_size: 100,
            size: None,
        })
        .unwrap();
        // No chunk at all.
        let (_, msg) = message(ChunkRun::new("d.vmdk").check(D));
        assert!(msg.contains("no chunk 'd.vmdk.000000000'"), "{msg}");
        // Another entry between two chunks.
        let mut run = ChunkRun::new("d.vmdk");
        run.begin(0, 100, true, Some(D)).unwrap();
        let (kind, msg) = message(run.begin(1, 100, false, Some(D)));
        assert_eq!(kind, ErrorKind::CorruptImage);
        assert!(
            msg.contains("does not follow 'd.vmdk.000000000' directly"),
            "{msg}"
        );
    }

    #[test]
    fn sizes_follow_the_chunk_size() {
        // A short chunk that is not the last.
        let mut run = ChunkRun::new("d");
        let (_, msg) = message(feed(&mut run, &[(0, 100), (1, 60), (2, 90)], Some(D)));
        assert!(
            msg.contains("'d.000000001' holds 60 bytes but is not the last"),
            "{msg}"
        );
        let mut run = ChunkRun::new("d");
        let (_, msg) = message(feed(&mut run, &[(0, 100), (1, 60), (2, 90)], None));
        assert!(msg.contains("the size of the first chunk"), "{msg}");
        // Larger than the chunk size, declared or inferred.
        let (_, msg) = message(feed(&mut ChunkRun::new("d"), &[(0, 101)], Some(D)));
        assert!(msg.contains("more than the ovf:chunkSize of 100"), "{msg}");
        let (_, msg) = message(feed(&mut ChunkRun::new("d"), &[(0, 10), (1, 11)], None));
        assert!(
            msg.contains("more than the size of the first chunk"),
            "{msg}"
        );
        // More than ovf:size.
        let mut run = ChunkRun::new("d");
        let small = Declared {
            chunk_size: 100,
            size: Some(150),
        };
        let (_, msg) = message(feed(&mut run, &[(0, 100), (1, 100)], Some(small)));
        assert!(msg.contains("more than its ovf:size of 150"), "{msg}");
        // Seen before the OVF, then checked against it.
        let mut run = ChunkRun::new("d");
        feed(&mut run, &[(0, 80), (1, 80), (2, 10)], None).unwrap();
        let (_, msg) = message(run.check(D));
        assert!(
            msg.contains("holds 80 bytes, but the ovf:chunkSize is 100"),
            "{msg}"
        );
        let mut run = ChunkRun::new("d");
        feed(&mut run, &[(0, 100), (1, 100), (2, 40)], None).unwrap();
        let (kind, msg) = message(run.check(D));
        assert_eq!(kind, ErrorKind::CorruptImage);
        assert!(
            msg.contains("hold 240 bytes, but its ovf:size is 250"),
            "{msg}"
        );
    }
}
