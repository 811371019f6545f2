//! A disk into an `image` ticket and back, over the volume layer's remote
//! backend ([`ImageioVolume`]): what the `ovirt_imageio` client does, in
//! one process.
//!
//! Upload: the source (raw or qcow2, probed) gives its extents; data goes
//! in requests of [`REMOTE_REQUEST`] bytes from up to the server's
//! `max_writers` threads at once; ranges that read as zeros are zeroed
//! with `PATCH zero` unless the target already reads as zeros there;
//! then one flush. Download: the ticket's extents, data fetched in ranges
//! (holes and zeros never fetched) into a sparse raw file from several
//! threads, or in order into a fresh qcow2 image; the file takes its name
//! only when complete. Every request names its whole range, so a cut
//! connection costs at most that request, sent again by the backend.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::ova::{RemoveOnDrop, partial_name};
use crate::error::{Error, ErrorKind, Result};
use crate::limits::REMOTE_REQUEST;
use crate::pipeline::progress::Progress;
use crate::roots::AllowedRoots;
use crate::sink::Target;
use crate::volume::imageio::{ImageioUrl, ImageioVolume};
use crate::volume::{ExtentKind, Extents, Flush, Format, OpenOptions, ReadAt, Size, WriteAt, Zero};

/// What an image transfer moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageSummary {
    /// The disk's virtual size.
    pub capacity: u64,
    /// Data bytes sent or fetched.
    pub data: u64,
    /// Bytes zeroed without sending them.
    pub zeroed: u64,
}

/// One piece of work: a range, data or zeros.
#[derive(Debug, Clone, Copy)]
struct Piece {
    start: u64,
    len: u64,
    data: bool,
}

/// Data ranges split in requests; other ranges whole.
fn pieces(extents: &[crate::volume::Extent], zeros: bool) -> VecDeque<Piece> {
    let mut out = VecDeque::new();
    for e in extents {
        let data = e.kind == ExtentKind::Data;
        if !data && !zeros {
            continue;
        }
        let step = if data { REMOTE_REQUEST as u64 } else { e.len };
        let mut pos = e.start;
        while pos < e.end() {
            let n = step.min(e.end() - pos);
            out.push_back(Piece {
                start: pos,
                len: n,
                data,
            });
            pos += n;
        }
    }
    out
}

/// Runs `work` on up to `threads` threads over `queue`, stopping at the
/// first error.
fn run_pieces(
    threads: usize,
    queue: VecDeque<Piece>,
    progress: &Progress,
    work: impl Fn(Piece, &mut Vec<u8>) -> Result<()> + Sync,
) -> Result<()> {
    let queue = Mutex::new(queue);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    let stop = failure.lock().map(|f| f.is_some()).unwrap_or(true)
                        || progress.check_cancelled().is_err();
                    let next = if stop {
                        None
                    } else {
                        queue.lock().ok().and_then(|mut q| q.pop_front())
                    };
                    let Some(p) = next else {
                        return;
                    };
                    if let Err(e) = work(p, &mut buf) {
                        if let Ok(mut f) = failure.lock()
                            && f.is_none()
                        {
                            *f = Some(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    progress.check_cancelled()?;
    match failure.into_inner() {
        Ok(Some(e)) => Err(e),
        Ok(None) => Ok(()),
        Err(_) => Err(Error::internal("a transfer thread panicked")),
    }
}

/// Sends the disk at `src` (`format`: stated, else probed) into the
/// `image` ticket at `url`.
pub fn upload(
    src: &Path,
    format: Option<Format>,
    url: &ImageioUrl,
    progress: &Progress,
) -> Result<ImageSummary> {
    let source = crate::volume::open(
        &AllowedRoots::any(),
        src,
        &OpenOptions {
            format,
            ..OpenOptions::default()
        },
    )?;
    let capacity = source.size();
    let target = ImageioVolume::connect(url, true)?;
    if target.size() < capacity {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "{url}: the ticket's image has {} bytes, the disk {capacity}",
                target.size()
            ),
        ));
    }
    let extents = source.extents(0, capacity)?;
    // Zeroing is needed only where the target holds data now.
    let clean = target
        .extents(0, target.size())?
        .iter()
        .all(|e| e.kind.reads_zero());
    let queue = pieces(&extents, !clean);
    progress.set_total(capacity);
    let done = std::sync::atomic::AtomicU64::new(0);
    let (data, zeroed) = (
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    );
    run_pieces(target.max_writers(), queue, progress, |p, buf| {
        if p.data {
            buf.resize(p.len as usize, 0);
            source.read_at(p.start, buf).map_err(|e| e.at_path(src))?;
            target.write_at(p.start, buf)?;
            data.fetch_add(p.len, std::sync::atomic::Ordering::Relaxed);
        } else {
            target.zero(p.start, p.len, true)?;
            zeroed.fetch_add(p.len, std::sync::atomic::Ordering::Relaxed);
        }
        let d = done.fetch_add(p.len, std::sync::atomic::Ordering::Relaxed) + p.len;
        progress.set_read(d);
        Ok(())
    })?;
    target.flush()?;
    progress.set_read(capacity);
    Ok(ImageSummary {
        capacity,
        data: data.into_inner(),
        zeroed: zeroed.into_inner(),
    })
}

/// Fetches the disk of the `image` ticket at `url` into `dst` as `format`.
pub fn download(
    url: &ImageioUrl,
    dst: &Path,
    format: Format,
    progress: &Progress,
) -> Result<(PathBuf, ImageSummary)> {
    let source = ImageioVolume::connect(url, false)?;
    let capacity = source.size();
    let extents = source.extents(0, capacity)?;
    let queue = pieces(&extents, false);
    let total: u64 = queue.iter().map(|p| p.len).sum();
    progress.set_total(total);
    let partial = partial_name(dst);
    let file = File::create(&partial).map_err(|e| Error::from(e).at_path(&partial))?;
    let guard = RemoveOnDrop(Some(partial.clone()));
    let done = std::sync::atomic::AtomicU64::new(0);
    match format {
        Format::Raw => {
            file.set_len(capacity)
                .map_err(|e| Error::from(e).at_path(&partial))?;
            run_pieces(source.max_writers(), queue, progress, |p, buf| {
                buf.resize(p.len as usize, 0);
                source.read_at(p.start, buf)?;
                file.write_all_at(buf, p.start)
                    .map_err(|e| Error::from(e).at_path(&partial))?;
                let d = done.fetch_add(p.len, std::sync::atomic::Ordering::Relaxed) + p.len;
                progress.set_read(d);
                Ok(())
            })?;
            file.sync_all()
                .map_err(|e| Error::from(e).at_path(&partial))?;
        }
        Format::Qcow2 => {
            let mut out = Format::Qcow2.create(file, capacity)?;
            let mut buf = Vec::new();
            for p in queue {
                progress.check_cancelled()?;
                buf.resize(p.len as usize, 0);
                source.read_at(p.start, &mut buf)?;
                out.write_at(p.start, &buf)
                    .map_err(|e| e.at_path(&partial))?;
                let d = done.fetch_add(p.len, std::sync::atomic::Ordering::Relaxed) + p.len;
                progress.set_read(d);
            }
            out.finish().map_err(|e| e.at_path(&partial))?;
        }
    }
    std::fs::rename(&partial, dst).map_err(|e| Error::from(e).at_path(dst))?;
    drop(guard.disarm());
    Ok((
        dst.to_path_buf(),
        ImageSummary {
            capacity,
            data: total,
            zeroed: 0,
        },
    ))
}
