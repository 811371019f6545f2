//! A package fetched from an `http(s)://` URL: one sequential `GET`, read
//! as the import consumes it (no scratch file, no second read).
//!
//! When the connection drops (an error, a stalled read, a body that ends
//! before its `Content-Length`) or the server answers a `5xx`, the next
//! request asks for the rest, `Range: bytes=N-` from the bytes already
//! handed to the import, with `If-Range` naming the first answer's
//! `ETag` (its `Last-Modified` when it gave no strong `ETag`). A `206`
//! whose `Content-Range` starts at `N` goes on; a `200` means the package
//! changed or the server ignores ranges, and the import fails rather than
//! mix two packages (the import then removes what it wrote). Attempts
//! that move nothing forward are bounded, with a backoff, as a client's
//! are ([`crate::client`]).

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ureq::Agent;

use super::url::HttpUrl;
use super::{Source, SourceReader};
use crate::client::{Attempts, read_small, refused};
use crate::error::{Error, ErrorKind, Result};
use crate::volume::imageio::{squash, transient};

/// An open package URL.
#[allow(missing_debug_implementations)]
pub struct HttpSource {
    url: HttpUrl,
    /// What messages call the package: the URL as shown, or the object
    /// (`s3://…`) a presigned URL stands for.
    label: String,
    agent: &'static Agent,
    body: Option<ureq::BodyReader<'static>>,
    /// Bytes handed to the reader so far.
    have: u64,
    /// The package size, from the first answer's `Content-Length`.
    total: Option<u64>,
    /// The first answer's `ETag` and `Last-Modified`.
    etag: Option<String>,
    modified: Option<String>,
    attempts: Attempts,
    /// Bytes `have` was at the last failed attempt.
    have_at_failure: u64,
    retries: Arc<AtomicU64>,
    /// A failure that ends the source: every later read repeats it.
    failed: Option<(ErrorKind, String)>,
}

/// What one request came to.
enum Answer {
    Body(ureq::BodyReader<'static>),
    Retry(String),
    Fail(Error),
}

/// Opens `url` with its first `GET`; `retries` counts the resumptions.
pub fn open(url: HttpUrl, retries: Arc<AtomicU64>) -> Result<Source> {
    let label = url.to_string();
    open_as(url, label, retries)
}

/// [`open`], the package called `label` in messages.
pub fn open_as(url: HttpUrl, label: String, retries: Arc<AtomicU64>) -> Result<Source> {
    let agent = crate::volume::imageio::remotes::remotes().source_agent(url.authority());
    let mut src = HttpSource {
        attempts: Attempts::new(&label, "the download"),
        label,
        url,
        agent,
        body: None,
        have: 0,
        total: None,
        etag: None,
        modified: None,
        have_at_failure: 0,
        retries,
        failed: None,
    };
    loop {
        match src.first() {
            Answer::Body(b) => {
                src.body = Some(b);
                break;
            }
            Answer::Retry(why) => src.attempts.failed(&why, false)?,
            Answer::Fail(e) => return Err(e),
        }
    }
    tracing::info!(url = %src.url, size = ?src.total, "fetching the package");
    Ok(Source {
        size: src.total,
        path: None,
        fd: None,
        reader: Box::new(src),
    })
}

impl HttpSource {
    /// The first request: the whole package.
    fn first(&mut self) -> Answer {
        let resp = match self.agent.get(self.url.full()).call() {
            Ok(r) => r,
            Err(e) => return self.failed_request(e),
        };
        let status = resp.status().as_u16();
        match status {
            200 => {
                let h = resp.headers();
                let text =
                    |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                self.etag = text("etag");
                self.modified = text("last-modified");
                self.total = resp.body().content_length();
                Answer::Body(resp.into_body().into_reader())
            }
            s if retried_status(s) => Answer::Retry(format!("answered {s}")),
            _ => Answer::Fail(self.refusal("GET", resp)),
        }
    }

    /// A request for the rest of the package, from `have`.
    fn rest(&mut self) -> Answer {
        let mut req = self
            .agent
            .get(self.url.full())
            .header("range", format!("bytes={}-", self.have));
        if let Some(v) = self.validator() {
            req = req.header("if-range", v);
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(e) => return self.failed_request(e),
        };
        let status = resp.status().as_u16();
        match status {
            206 => match self.check_range(&resp) {
                Ok(()) => Answer::Body(resp.into_body().into_reader()),
                Err(e) => Answer::Fail(e),
            },
            200 => Answer::Fail(self.not_resumable(&resp)),
            s if retried_status(s) => Answer::Retry(format!("answered {s}")),
            _ => Answer::Fail(self.refusal("GET (resuming)", resp)),
        }
    }

    /// The `If-Range` validator: a strong `ETag`, else `Last-Modified`.
    fn validator(&self) -> Option<&str> {
        match &self.etag {
            Some(t) if !t.starts_with("W/") => Some(t),
            _ => self.modified.as_deref(),
        }
    }

    /// A `206` must go on exactly where the package was left, and from a
    /// package of the same size.
    fn check_range(&self, resp: &http::Response<ureq::Body>) -> Result<()> {
        let cr = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let parsed = parse_content_range(cr);
        match parsed {
            Some((start, total)) if start == self.have => {
                if let (Some(t), Some(known)) = (total, self.total)
                    && t != known
                {
                    return Err(self.changed(format!("its size was {known} bytes and is now {t}")));
                }
                Ok(())
            }
            _ => Err(Error::new(
                ErrorKind::Io,
                format!(
                    "{}: asked for the bytes from {}, the server answered Content-Range '{}'",
                    self.label,
                    self.have,
                    crate::names::printable(cr)
                ),
            )),
        }
    }

    /// A whole answer (`200`) to a ranged request.
    fn not_resumable(&self, resp: &http::Response<ureq::Body>) -> Error {
        let now = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        if let (Some(before), Some(after)) = (&self.etag, now("etag"))
            && before != after
        {
            return self.changed(format!("its ETag was {before} and is now {after}"));
        }
        if let (Some(before), Some(after)) = (&self.modified, now("last-modified"))
            && before != after
        {
            return self.changed(format!("it was last modified {before} and is now {after}"));
        }
        Error::new(
            ErrorKind::Io,
            format!(
                "{}: the connection dropped at byte {} and the server does not honour Range requests (it answered the whole package again), so the import cannot go on",
                self.label, self.have
            ),
        )
    }

    fn changed(&self, how: String) -> Error {
        Error::new(
            ErrorKind::Integrity,
            format!(
                "{}: the package changed while it was being imported ({how}); nothing of it is kept",
                self.label
            ),
        )
    }

    fn failed_request(&self, e: ureq::Error) -> Answer {
        if transient(&e) {
            Answer::Retry(e.to_string())
        } else {
            Answer::Fail(Error::new(
                ErrorKind::Io,
                format!("{}: GET: {e}", self.label),
            ))
        }
    }

    fn refusal(&self, what: &str, resp: http::Response<ureq::Body>) -> Error {
        let status = resp.status().as_u16();
        let text = read_small(resp.into_body()).unwrap_or_default();
        let text = squash(&self.url.redact(&String::from_utf8_lossy(&text)));
        refused(&self.label, what, status, &text)
    }

    /// After the connection dropped (`why`): asks for the rest until a
    /// body comes, the attempts run out, or the source cannot go on.
    fn reconnect(&mut self, why: String) -> Result<()> {
        let mut why = why;
        loop {
            let progressed = self.have > self.have_at_failure;
            self.have_at_failure = self.have;
            // A drop after bytes came is no sign of a server in trouble:
            // the first request for the rest goes at once.
            self.attempts.failed_after(&why, progressed, progressed)?;
            match self.rest() {
                Answer::Body(b) => {
                    self.body = Some(b);
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(url = %self.label, offset = self.have, "resumed the download");
                    return Ok(());
                }
                Answer::Retry(w) => why = w,
                Answer::Fail(e) => return Err(e),
            }
        }
    }
}

/// `bytes START-END/TOTAL` (`TOTAL` may be `*`): the start and, when
/// given, the total.
pub fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(start) || !digits(end) {
        return None;
    }
    let (start, end) = (start.parse::<u64>().ok()?, end.parse::<u64>().ok()?);
    if end < start {
        return None;
    }
    let total = match total {
        "*" => None,
        t if digits(t) => {
            let t = t.parse::<u64>().ok()?;
            if end >= t {
                return None;
            }
            Some(t)
        }
        _ => return None,
    };
    Some((start, total))
}

/// The fuzz entry of the source's parsers: `Content-Range` values and
/// package URLs, which never panic and never show a URL's query.
pub fn fuzz_entry(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((start, Some(total))) = parse_content_range(s) {
        assert!(start < total);
    }
    if let Ok(u) = HttpUrl::parse(s) {
        let shown = u.to_string();
        if let Some((_, q)) = u.full().split_once('?')
            && !q.is_empty()
        {
            assert!(shown.ends_with("?…"));
        }
        assert_eq!(HttpUrl::parse(u.full()).as_ref(), Ok(&u));
    }
    let _ = super::url::SourceSpec::parse(s);
}

/// Statuses that may pass: the server in trouble or busy, or (409)
/// still holding the connection just dropped — an `ova-export` ticket
/// serves one download at a time, and lets the last go only when it
/// notices the drop.
fn retried_status(s: u16) -> bool {
    s >= 500 || s == 408 || s == 409 || s == 429
}

impl Read for HttpSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some((kind, why)) = &self.failed {
            return Err(std::io::Error::other(Error::new(*kind, why.clone())));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let why = match self.body.as_mut().map(|b| b.read(buf)) {
                Some(Ok(0)) => match self.total {
                    Some(t) if self.have < t => {
                        format!("the body ended at byte {} of {t}", self.have)
                    }
                    _ => return Ok(0),
                },
                Some(Ok(n)) => {
                    self.have += n as u64;
                    if let Some(t) = self.total
                        && self.have > t
                    {
                        let e = format!(
                            "{}: the server sent more than the {t} bytes it announced",
                            self.label
                        );
                        self.failed = Some((ErrorKind::Io, e.clone()));
                        return Err(std::io::Error::other(Error::new(ErrorKind::Io, e)));
                    }
                    return Ok(n);
                }
                Some(Err(e)) => e.to_string(),
                None => "no connection".to_owned(),
            };
            self.body = None;
            if let Err(e) = self.reconnect(why) {
                self.failed = Some((e.kind(), e.one_line()));
                return Err(std::io::Error::other(e));
            }
        }
    }
}

impl SourceReader for HttpSource {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5, Some(10))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes 5-9/9"), None);
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
        assert_eq!(parse_content_range("bytes -5/10"), None);
        assert_eq!(parse_content_range("bytes +5-9/10"), None);
        assert_eq!(parse_content_range("items 5-9/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
    }

    #[test]
    fn busy_and_failing_servers_are_tried_again() {
        assert!(retried_status(503));
        assert!(retried_status(429));
        assert!(!retried_status(404));
        assert!(!retried_status(403));
    }
}
