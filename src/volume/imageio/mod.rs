//! Remote volumes: an image transfer on another host, reached through its
//! imageio data API (`https://HOST:PORT/images/TICKET`, served by an
//! ovirt-imageio daemon or by another ovaio), so that every pipeline —
//! OVA import and export, the image data API — works across hosts.
//!
//! The volume learns the remote's abilities with `OPTIONS` (`zero`,
//! `flush`, `extents`, `max_writers`) and its size from its extents (or
//! `HEAD`); it reads with ranged `GET`, writes with `PUT` and
//! `Content-Range` (`flush=n`, then one flush), zeroes with
//! `PATCH {"op": "zero"}` (writing zeros where the remote lacks it), and
//! maps allocation with `GET …/extents?context=zero`.
//!
//! Requests go over keep-alive HTTP/1.1 connections from one pool per
//! trusted CA ([`remotes`]); concurrent callers get connections of their
//! own. A request whose connection fails is sent again, a bounded number
//! of times ([`REMOTE_RETRIES`]): every request names its whole range, so
//! sending it again is safe. A remote's error answer ends the operation
//! with its status and text. The ticket id is shown cut short in every
//! message ([`ImageioUrl`]).

pub mod remotes;
pub mod url;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use ureq::http::Response;
use ureq::{Agent, Body};

pub use remotes::{RemoteConfig, check_allowed, configure};
pub use url::ImageioUrl;

use super::{Extent, ExtentKind, Extents, Flush, ReadAt, Size, WriteAt, ZEROS, Zero, push_extent};
use crate::error::{Error, ErrorKind, Result};
use crate::limits::{
    MAX_REMOTE_EXTENTS_BODY, MAX_REMOTE_SMALL_BODY, REMOTE_MAX_WRITERS, REMOTE_REQUEST,
    REMOTE_RETRIES,
};
use remotes::remotes;

/// What the remote said it can do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// `PATCH {"op": "zero"}`.
    pub zero: bool,
    /// `PATCH {"op": "flush"}` and `PUT ?flush=n`.
    pub flush: bool,
    /// `GET …/extents`.
    pub extents: bool,
}

/// A remote volume; see the module docs.
#[derive(Debug)]
pub struct ImageioVolume {
    url: ImageioUrl,
    /// The URL as shown (ticket id cut short), for messages.
    name: PathBuf,
    agent: Agent,
    size: u64,
    features: Features,
    max_writers: usize,
    writable: bool,
}

/// How one attempt at a request ended, when it did not succeed.
enum Attempt {
    /// The connection failed: worth sending again.
    Retry(String),
    /// Anything else: final.
    Fail(Error),
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Self {
        Attempt::Fail(e)
    }
}

#[derive(Deserialize)]
struct Options {
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    max_writers: Option<u64>,
}

#[derive(Deserialize)]
struct WireExtent {
    start: u64,
    length: u64,
    zero: bool,
    #[serde(default)]
    hole: bool,
}

impl ImageioVolume {
    /// Connects to the remote at `url` (for writing when `writable`):
    /// its abilities and its size.
    pub fn connect(url: &ImageioUrl, writable: bool) -> Result<Self> {
        let mut v = ImageioVolume {
            url: url.clone(),
            name: PathBuf::from(url.to_string()),
            agent: remotes().agent(url).clone(),
            size: 0,
            features: Features::default(),
            max_writers: 1,
            writable,
        };
        let opts: Options = v.retry("OPTIONS", || {
            let resp = v.agent.options(url.full()).call().map_err(transport)?;
            let body = v.expect(resp, "OPTIONS", &[200])?;
            let text = read_limited(body, MAX_REMOTE_SMALL_BODY, "the OPTIONS answer")?;
            serde_json::from_slice(&text).map_err(|e| {
                Attempt::Fail(v.invalid(format!("the OPTIONS answer is not imageio's JSON: {e}")))
            })
        })?;
        let has = |f: &str| opts.features.iter().any(|x| x == f);
        v.features = Features {
            zero: has("zero"),
            flush: has("flush"),
            extents: has("extents"),
        };
        v.max_writers = opts
            .max_writers
            .map_or(1, |n| n.clamp(1, REMOTE_MAX_WRITERS as u64) as usize);
        v.size = if v.features.extents {
            v.fetch_extents()?.last().map_or(0, Extent::end)
        } else {
            v.head_size()?
        };
        tracing::debug!(remote = %v.url, size = v.size, features = ?v.features, max_writers = v.max_writers, "remote volume");
        Ok(v)
    }

    /// The remote's URL.
    pub fn url(&self) -> &ImageioUrl {
        &self.url
    }

    /// The URL as shown in messages.
    pub fn path(&self) -> &Path {
        &self.name
    }

    /// What the remote can do.
    pub fn features(&self) -> Features {
        self.features
    }

    /// Writers the remote accepts at once (at most [`REMOTE_MAX_WRITERS`]).
    pub fn max_writers(&self) -> usize {
        self.max_writers
    }

    /// Runs `op` until it succeeds, fails for good, or has been retried
    /// [`REMOTE_RETRIES`] times.
    fn retry<T>(&self, what: &str, mut op: impl FnMut() -> Result<T, Attempt>) -> Result<T> {
        let mut attempt = 0;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(Attempt::Fail(e)) => return Err(self.named(e, what)),
                Err(Attempt::Retry(why)) if attempt < REMOTE_RETRIES => {
                    // A remote that refuses a request may close the
                    // connection before it reads the body: the client
                    // sees only a broken pipe. Ask it what it thinks of
                    // the ticket before sending again.
                    if what != "OPTIONS"
                        && let Err(Attempt::Fail(e)) = self.probe()
                    {
                        return Err(self.named(e, what));
                    }
                    attempt += 1;
                    tracing::warn!(remote = %self.url, what, error = %why, attempt, "remote request failed; sending it again");
                    std::thread::sleep(Duration::from_millis(200) * attempt);
                }
                Err(Attempt::Retry(why)) => {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!(
                            "remote {}: {what} failed {} times: {why}",
                            self.url,
                            attempt + 1
                        ),
                    ));
                }
            }
        }
    }

    /// `OPTIONS` once, without retries: whether the remote still takes
    /// the ticket (a refusal is a [`Attempt::Fail`] with its status).
    fn probe(&self) -> Result<(), Attempt> {
        let resp = self
            .agent
            .options(self.url.full())
            .call()
            .map_err(|e| Attempt::Retry(e.to_string()))?;
        self.expect(resp, "OPTIONS", &[200, 204]).map(|_| ())
    }

    /// `e` naming the remote and the request, when it does not already.
    fn named(&self, e: Error, what: &str) -> Error {
        if e.to_string().contains("remote https://") {
            e
        } else {
            Error::new(
                e.kind(),
                format!("remote {}: {what}: {}", self.url, e.one_line()),
            )
        }
    }

    /// The body of `resp` if its status is one of `ok`; otherwise the
    /// remote's status and text as the error.
    fn expect(&self, resp: Response<Body>, what: &str, ok: &[u16]) -> Result<Body, Attempt> {
        let status = resp.status().as_u16();
        let body = resp.into_body();
        if ok.contains(&status) {
            return Ok(body);
        }
        if matches!(status, 502..=504) {
            // A gateway or a server busy for a moment: worth another try.
            return Err(Attempt::Retry(format!("{what} answered {status}")));
        }
        let text = read_limited(body, MAX_REMOTE_SMALL_BODY, "an error answer").unwrap_or_default();
        let text = answer_text(&self.url, &text);
        let kind = match status {
            401 | 403 => ErrorKind::Auth,
            404 => ErrorKind::NotFound,
            400 | 405 | 409 | 416 => ErrorKind::InvalidArgument,
            _ => ErrorKind::Io,
        };
        Err(Attempt::Fail(Error::new(
            kind,
            format!("remote {}: {what} answered {status}: {text}", self.url),
        )))
    }

    fn invalid(&self, msg: String) -> Error {
        Error::new(
            ErrorKind::InvalidFormat,
            format!("remote {}: {msg}", self.url),
        )
    }

    fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("remote {} is open for reading only", self.url),
            ))
        }
    }

    /// The size from `HEAD` (`Content-Length`), for a remote without
    /// extents.
    fn head_size(&self) -> Result<u64> {
        self.retry("HEAD", || {
            let resp = self.agent.head(self.url.full()).call().map_err(transport)?;
            let len = resp
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            self.expect(resp, "HEAD", &[200])?;
            len.ok_or_else(|| {
                Attempt::Fail(self.invalid(
                    "offers neither extents nor a HEAD with Content-Length: its size is unknown"
                        .into(),
                ))
            })
        })
    }

    /// The whole allocation map, checked: contiguous from 0.
    fn fetch_extents(&self) -> Result<Vec<Extent>> {
        let text = self.retry("GET extents", || {
            let resp = self
                .agent
                .get(self.url.sub("extents?context=zero"))
                .call()
                .map_err(transport)?;
            let body = self.expect(resp, "GET extents", &[200])?;
            read_limited(body, MAX_REMOTE_EXTENTS_BODY, "the extents answer")
        })?;
        let size = (self.size != 0).then_some(self.size);
        parse_extents(&text, size).map_err(|e| self.invalid(e))
    }

    fn put(&self, offset: u64, data: &[u8]) -> Result<()> {
        let what = format!("PUT bytes {offset}-{}", offset + data.len() as u64 - 1);
        let url = if self.features.flush {
            format!("{}?flush=n", self.url.full())
        } else {
            self.url.full()
        };
        let range = format!("bytes {offset}-{}/*", offset + data.len() as u64 - 1);
        self.retry(&what, || {
            let resp = self
                .agent
                .put(&url)
                .header("content-range", &range)
                .header("content-type", "application/octet-stream")
                .send(data)
                .map_err(transport)?;
            self.expect(resp, &what, &[200, 204])?;
            Ok(())
        })
    }

    /// Writes `len` bytes read from `body` at `offset` as one request,
    /// streamed: a proxied client's `PUT` forwarded whole, the remote
    /// receiving while the client still sends. A stream is not sent
    /// again; a failure asks the remote (`OPTIONS`) for its status.
    pub fn put_stream(&self, offset: u64, len: u64, body: &mut dyn Read) -> Result<()> {
        self.check_writable()?;
        super::check_bounds("write", offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        let what = format!("PUT bytes {offset}-{}", offset + len - 1);
        let url = if self.features.flush {
            format!("{}?flush=n", self.url.full())
        } else {
            self.url.full()
        };
        let sent = self
            .agent
            .put(&url)
            .header(
                "content-range",
                &format!("bytes {offset}-{}/*", offset + len - 1),
            )
            .header("content-length", &len.to_string())
            .header("content-type", "application/octet-stream")
            .send(ureq::SendBody::from_reader(body));
        let failed = |a: Attempt| match a {
            Attempt::Fail(e) => self.named(e, &what),
            Attempt::Retry(why) => self.named(Error::new(ErrorKind::Io, why), &what),
        };
        match sent {
            Ok(resp) => self
                .expect(resp, &what, &[200, 204])
                .map(|_| ())
                .map_err(failed),
            Err(e) => match self.probe() {
                Err(a @ Attempt::Fail(_)) => Err(failed(a)),
                _ => Err(failed(Attempt::Retry(e.to_string()))),
            },
        }
    }

    fn patch(&self, what: &str, msg: &serde_json::Value) -> Result<()> {
        let body = msg.to_string();
        self.retry(what, || {
            let resp = self
                .agent
                .patch(self.url.full())
                .header("content-type", "application/json")
                .send(body.as_bytes())
                .map_err(transport)?;
            self.expect(resp, what, &[200, 204])?;
            Ok(())
        })
    }
}

/// An error answer's text for a message: on one line, at most 300
/// characters, the ticket id of `url` cut short.
pub(crate) fn answer_text(url: &ImageioUrl, body: &[u8]) -> String {
    squash(&url.redact(&String::from_utf8_lossy(body)))
}

/// A text on one line, its runs of white space made one space, cut to
/// 300 characters.
pub(crate) fn squash(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect()
}

/// The extents of an imageio `extents?context=zero` answer, checked:
/// contiguous from 0, none empty, ending at `size` when it is known.
pub fn parse_extents(text: &[u8], size: Option<u64>) -> std::result::Result<Vec<Extent>, String> {
    let wire: Vec<WireExtent> = serde_json::from_slice(text)
        .map_err(|e| format!("the extents answer is not imageio's JSON: {e}"))?;
    let mut out = Vec::with_capacity(wire.len().min(1 << 16));
    let mut pos = 0u64;
    for (i, e) in wire.iter().enumerate() {
        let end = match e.start.checked_add(e.length) {
            Some(end) if e.start == pos && e.length > 0 => end,
            _ => {
                return Err(format!(
                    "extent {i} ({}+{}) does not follow the one before, which ends at {pos}",
                    e.start, e.length
                ));
            }
        };
        let kind = match (e.zero, e.hole) {
            (false, _) => ExtentKind::Data,
            (true, false) => ExtentKind::Zero,
            (true, true) => ExtentKind::Hole,
        };
        push_extent(&mut out, e.start, e.length, kind);
        pos = end;
    }
    if let Some(size) = size
        && pos != size
    {
        return Err(format!("the extents end at {pos}, the volume at {size}"));
    }
    Ok(out)
}

/// Fuzzing entry: the extents parser and the URL parser on any bytes.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_entry(data: &[u8]) {
    if let Ok(v) = parse_extents(data, None) {
        let mut pos = 0;
        for e in &v {
            assert_eq!(e.start, pos);
            assert!(e.len > 0);
            pos = e.end();
        }
    }
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(u) = ImageioUrl::parse(s)
    {
        // The whole URL parses back to itself; the shown one never holds
        // more than four characters of the ticket id.
        assert_eq!(ImageioUrl::parse(&u.full()).as_ref(), Ok(&u));
        let shown = u.to_string();
        let id = shown.rsplit('/').next().unwrap_or_default();
        assert!(id.trim_end_matches('…').chars().count() <= 4);
    }
}

/// A transport error: a failed connection is worth another attempt, a
/// bad URL, a protocol violation or a certificate that does not verify is
/// not.
fn transport(e: ureq::Error) -> Attempt {
    if transient(&e) {
        Attempt::Retry(e.to_string())
    } else {
        Attempt::Fail(Error::new(ErrorKind::Io, e.to_string()))
    }
}

/// Whether `e` is a failed or dropped connection (worth another try),
/// not a TLS verdict or a bad request.
pub(crate) fn transient(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            .is_none(),
        ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed | ureq::Error::Protocol(_) => true,
        _ => false,
    }
}

/// At most `limit` bytes of `body`; more is an error naming `what`.
fn read_limited(body: Body, limit: u64, what: &str) -> Result<Vec<u8>, Attempt> {
    let mut out = Vec::new();
    body.into_reader()
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Attempt::Retry(e.to_string()))?;
    if out.len() as u64 > limit {
        return Err(Attempt::Fail(Error::new(
            ErrorKind::LimitExceeded,
            format!("{what} is larger than {limit} bytes"),
        )));
    }
    Ok(out)
}

impl Size for ImageioVolume {
    fn size(&self) -> u64 {
        self.size
    }
}

impl ReadAt for ImageioVolume {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        super::check_bounds("read", offset, buf.len() as u64, self.size)?;
        for (i, piece) in buf.chunks_mut(REMOTE_REQUEST).enumerate() {
            let at = offset + (i * REMOTE_REQUEST) as u64;
            let last = at + piece.len() as u64 - 1;
            let what = format!("GET bytes {at}-{last}");
            self.retry(&what, || {
                let resp = self
                    .agent
                    .get(self.url.full())
                    .header("range", &format!("bytes={at}-{last}"))
                    .call()
                    .map_err(transport)?;
                let body = self.expect(resp, &what, &[206, 200])?;
                let mut r = body.into_reader();
                r.read_exact(piece)
                    .map_err(|e| Attempt::Retry(format!("the body ended early: {e}")))
            })?;
        }
        Ok(())
    }
}

impl WriteAt for ImageioVolume {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_writable()?;
        super::check_bounds("write", offset, data.len() as u64, self.size)?;
        for (i, piece) in data.chunks(REMOTE_REQUEST).enumerate() {
            self.put(offset + (i * REMOTE_REQUEST) as u64, piece)?;
        }
        Ok(())
    }
}

impl Zero for ImageioVolume {
    /// `PATCH zero` (the remote decides whether storage is given back),
    /// or zeros written where the remote cannot zero.
    fn zero(&self, offset: u64, len: u64, _punch: bool) -> Result<()> {
        self.check_writable()?;
        super::check_bounds("zero", offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        if self.features.zero {
            return self.patch(
                &format!("PATCH zero {offset}+{len}"),
                &serde_json::json!({"op": "zero", "offset": offset, "size": len, "flush": false}),
            );
        }
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(ZEROS.len() as u64);
            self.put(pos, &ZEROS[..n as usize])?;
            pos += n;
        }
        Ok(())
    }
}

impl Flush for ImageioVolume {
    fn flush(&self) -> Result<()> {
        if !self.writable || !self.features.flush {
            return Ok(());
        }
        self.patch("PATCH flush", &serde_json::json!({"op": "flush"}))
    }
}

impl Extents for ImageioVolume {
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        super::check_bounds("extents", offset, len, self.size)?;
        let end = offset + len;
        if !self.features.extents {
            let mut out = Vec::new();
            push_extent(&mut out, offset, len, ExtentKind::Data);
            return Ok(out);
        }
        let mut out = Vec::new();
        for e in self.fetch_extents()? {
            let s = e.start.max(offset);
            let t = e.end().min(end);
            if s < t {
                push_extent(&mut out, s, t - s, e.kind);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_answers_are_checked() {
        let ok = br#"[{"start":0,"length":4096,"zero":false,"hole":false},
            {"start":4096,"length":4096,"zero":true,"hole":true},
            {"start":8192,"length":8192,"zero":true}]"#;
        let v = parse_extents(ok, Some(16384)).unwrap();
        assert_eq!(
            v,
            vec![
                Extent {
                    start: 0,
                    len: 4096,
                    kind: ExtentKind::Data
                },
                Extent {
                    start: 4096,
                    len: 4096,
                    kind: ExtentKind::Hole
                },
                Extent {
                    start: 8192,
                    len: 8192,
                    kind: ExtentKind::Zero
                },
            ]
        );
        assert!(
            parse_extents(ok, Some(1))
                .unwrap_err()
                .contains("end at 16384")
        );
        for bad in [
            &br#"[{"start":1,"length":1,"zero":false}]"#[..],
            br#"[{"start":0,"length":0,"zero":false}]"#,
            br#"[{"start":0,"length":18446744073709551615,"zero":false},{"start":18446744073709551615,"length":2,"zero":false}]"#,
            br#"{"start":0}"#,
            b"",
        ] {
            assert!(parse_extents(bad, None).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        fuzz_entry(ok);
        fuzz_entry(b"https://h:1/images/abcdefg");
    }
}
