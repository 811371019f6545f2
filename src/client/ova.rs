//! A package into an `ova-import` ticket, resumably, and out of an
//! `ova-export` ticket, resumably.
//!
//! Upload: `HEAD` says how much of the package the server has taken
//! (`Upload-Offset`, 0 at first); one `PUT` sends the rest, with
//! `Content-Range: bytes N-(L-1)/L` (`bytes N-*/*`, chunked, when the
//! length is unknown: a pipe). A cut connection, a `5xx`, a `409` (the
//! server has not yet let the last connection go) or an answer that the
//! upload is `paused` start the next round from a fresh `HEAD`: nothing
//! the server has is sent again. The server's last answer — the import
//! summary — is the result.
//!
//! Download: `GET` into `DST.partial`; after a cut, `Range: bytes=N-`
//! with `If-Range` naming the first answer's `ETag`, so that a package
//! that changed meanwhile comes whole (200) and the file starts over. The
//! file takes its name only when every byte `Content-Length` announced
//! is in it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Attempts, Counting, Replay, agent, read_small, refusal, transient};
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::progress::Progress;
use crate::volume::imageio::ImageioUrl;

/// Where the package comes from.
#[derive(Debug)]
pub enum Package<R> {
    /// A file of known length, read again from any offset.
    File {
        /// The file.
        file: File,
        /// Its length.
        len: u64,
    },
    /// A pipe: read once, its recent bytes kept.
    Stream(Replay<R>),
}

/// Sends `package` to the `ova-import` ticket at `url`; returns the
/// server's summary.
pub fn upload<R: Read>(
    url: &ImageioUrl,
    mut package: Package<R>,
    progress: &Progress,
) -> Result<serde_json::Value> {
    let agent = agent(url);
    let len = match &package {
        Package::File { len, .. } => Some(*len),
        Package::Stream(_) => None,
    };
    let mut attempts = Attempts::new(url, "the upload");
    let mut last_offset = None;
    loop {
        progress.check_cancelled()?;
        let offset = match committed(url) {
            Ok(o) => o,
            Err(e) if e.kind() == ErrorKind::Io => {
                attempts.failed(&e.one_line(), false)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let progressed = last_offset.is_some_and(|l| offset > l);
        last_offset = Some(offset);
        if len.is_some_and(|l| offset >= l) && progressed {
            // The whole package arrived before the answer was lost.
            progress.set_read(offset);
            return Ok(
                serde_json::json!({"bytes_read": offset, "answer": "lost; the server has the whole package"}),
            );
        }
        if offset > 0 {
            tracing::info!(url = %url, offset, "going on from the server's offset");
        }
        progress.set_read(offset);
        let mut req = agent
            .put(url.full())
            .header("content-type", "application/octet-stream");
        match len {
            Some(l) => {
                req = req.header("content-length", (l - offset).to_string());
                if offset > 0 && offset < l {
                    req = req.header("content-range", format!("bytes {offset}-{}/{l}", l - 1));
                }
            }
            None => {
                if offset > 0 {
                    req = req.header("content-range", format!("bytes {offset}-*/*"));
                }
            }
        }
        let reached;
        let outcome = match &mut package {
            Package::File { file, .. } => {
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| Error::from(e).with_message("seeking in the package"))?;
                let mut body = Counting {
                    inner: &mut *file,
                    progress,
                    pos: offset,
                };
                let r = req.send(ureq::SendBody::from_reader(&mut body));
                reached = body.pos;
                r
            }
            Package::Stream(replay) => {
                let mut body = Counting {
                    inner: replay.reader_at(offset)?,
                    progress,
                    pos: offset,
                };
                let r = req.send(ureq::SendBody::from_reader(&mut body));
                reached = body.pos;
                r
            }
        };
        progress.check_cancelled()?;
        // Bytes went out on this attempt: a cut is then no reason to wait.
        let sent = reached > offset;
        let resp = match outcome {
            Ok(r) => r,
            Err(e) if transient(&e) => {
                attempts.failed_after(&e.to_string(), progressed, sent)?;
                continue;
            }
            Err(e) => return Err(Error::new(ErrorKind::Io, format!("{url}: PUT: {e}"))),
        };
        let status = resp.status().as_u16();
        match status {
            200 | 201 | 204 => {
                let body = read_small(resp.into_body())?;
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if v["state"] == "paused" {
                    attempts.failed_after(
                        "the server holds the upload paused",
                        progressed,
                        sent,
                    )?;
                    continue;
                }
                progress.set_read(len.unwrap_or(offset));
                return Ok(v);
            }
            409 | 416 => {
                // Another connection still holds it, or the offset moved:
                // ask again.
                attempts.failed(&format!("answered {status}"), progressed)?;
            }
            s if s >= 500 => attempts.failed(&format!("answered {s}"), progressed)?,
            _ => return Err(refusal(url, "PUT", resp)),
        }
    }
}

/// The server's committed offset (`HEAD` → `Upload-Offset`).
fn committed(url: &ImageioUrl) -> Result<u64> {
    let resp = agent(url)
        .head(url.full())
        .header("tus-resumable", "1.0.0")
        .call()
        .map_err(|e| {
            // Only a dropped connection is tried again (kind Io).
            let kind = if transient(&e) {
                ErrorKind::Io
            } else {
                ErrorKind::InvalidArgument
            };
            Error::new(kind, format!("{url}: HEAD failed: {e}"))
        })?;
    let status = resp.status().as_u16();
    if resp.status().is_server_error() {
        return Err(Error::new(
            ErrorKind::Io,
            format!("{url}: HEAD answered {status}"),
        ));
    }
    if !resp.status().is_success() {
        return Err(refusal(url, "HEAD", resp));
    }
    Ok(resp
        .headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// What a download wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// The file.
    pub path: PathBuf,
    /// Its length.
    pub bytes: u64,
    /// Connections that were cut and resumed.
    pub resumed: u32,
}

/// Fetches the package of the `ova-export` ticket at `url` into `dst`.
pub fn download(url: &ImageioUrl, dst: &Path, progress: &Progress) -> Result<Downloaded> {
    let partial = partial_name(dst);
    let mut file = File::create(&partial).map_err(|e| Error::from(e).at_path(&partial))?;
    let guard = RemoveOnDrop(Some(partial.clone()));
    let agent = agent(url);
    let mut attempts = Attempts::new(url, "the download");
    let mut have = 0u64;
    let mut total: Option<u64> = None;
    let mut etag: Option<String> = None;
    let mut resumed = 0;
    loop {
        progress.check_cancelled()?;
        if total == Some(have) {
            break;
        }
        let mut req = agent.get(url.full());
        if have > 0 {
            req = req.header("range", format!("bytes={have}-"));
            if let Some(t) = &etag {
                req = req.header("if-range", t.as_str());
            }
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(e) if transient(&e) => {
                attempts.failed(&e.to_string(), false)?;
                continue;
            }
            Err(e) => return Err(Error::new(ErrorKind::Io, format!("{url}: GET: {e}"))),
        };
        let status = resp.status().as_u16();
        match status {
            200 => {
                // Whole (first, or the package changed): start over.
                if have > 0 {
                    tracing::warn!(url = %url, "the package changed; fetching it again whole");
                }
                have = 0;
                file.set_len(0)
                    .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
                    .map_err(|e| Error::from(e).at_path(&partial))?;
                etag = resp
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                total = resp.body().content_length();
            }
            206 => resumed += 1,
            // 409: the server still holds the connection just dropped.
            s if s >= 500 || s == 409 => {
                attempts.failed(&format!("answered {s}"), false)?;
                continue;
            }
            _ => return Err(refusal(url, "GET", resp)),
        }
        progress.set_total(total.unwrap_or(0));
        let before = have;
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 20];
        let cut = loop {
            progress.check_cancelled()?;
            match body.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => {
                    file.write_all(&buf[..n])
                        .map_err(|e| Error::from(e).at_path(&partial))?;
                    have += n as u64;
                    progress.set_read(have);
                }
                Err(e) => break Some(e.to_string()),
            }
        };
        match cut {
            None if total.is_none_or(|t| t == have) => break,
            None => attempts.failed("the body ended early", have > before)?,
            Some(why) => attempts.failed(&why, have > before)?,
        }
    }
    file.sync_all()
        .map_err(|e| Error::from(e).at_path(&partial))?;
    std::fs::rename(&partial, dst).map_err(|e| Error::from(e).at_path(dst))?;
    drop(guard.disarm());
    Ok(Downloaded {
        path: dst.to_path_buf(),
        bytes: have,
        resumed,
    })
}

/// `DST.partial`.
pub(crate) fn partial_name(dst: &Path) -> PathBuf {
    let mut s = dst.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Removes a partial file unless the download completed.
pub(crate) struct RemoveOnDrop(pub(crate) Option<PathBuf>);

impl RemoveOnDrop {
    /// Keeps the file: the download completed.
    pub(crate) fn disarm(mut self) -> Self {
        self.0 = None;
        self
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}
