//! Clients of a data API — `ovaio upload` and `ovaio download` — for
//! operators, the engine's scripts and CI pipelines: an OVA into an
//! `ova-import` ticket and back out of an `ova-export` one ([`ova`]), a
//! raw or qcow2 disk into an `image` ticket and back ([`image`]).
//!
//! Both sides survive dropped connections: a cut upload asks the server
//! where to go on (`HEAD` → `Upload-Offset` for a package; every image
//! request names its whole range) and sends nothing the server already
//! has; a cut download goes on with `Range` (and `If-Range` for a package,
//! so that a package that changed is fetched again whole). Attempts that
//! move no byte forward are bounded ([`CLIENT_ATTEMPTS`]), with a backoff
//! that doubles up to [`CLIENT_BACKOFF_MAX`].
//!
//! The ticket's kind is learnt from its `OPTIONS`: `resume` is an
//! `ova-import` ticket, `extents` an `image` ticket, neither an
//! `ova-export` ticket. Connections, trust and the URL's rules are those
//! of remote volumes ([`crate::volume::imageio`]).

pub mod image;
pub mod ova;
mod replay;

use std::time::Duration;

use serde::Deserialize;
use ureq::Agent;

use crate::error::{Error, ErrorKind, Result};
use crate::limits::{CLIENT_ATTEMPTS, CLIENT_BACKOFF, CLIENT_BACKOFF_MAX, MAX_REMOTE_SMALL_BODY};
use crate::pipeline::progress::Progress;
use crate::volume::imageio::ImageioUrl;
use crate::volume::imageio::answer_text;
use crate::volume::imageio::remotes::remotes;
pub(crate) use crate::volume::imageio::transient;

pub use replay::Replay;

/// What a ticket URL serves, from its `OPTIONS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketKind {
    /// An `ova-import` ticket: takes one package, resumably.
    OvaImport,
    /// An `ova-export` ticket: gives one package.
    OvaExport,
    /// An `image` ticket: a disk's guest bytes, ranged.
    Image,
}

#[derive(Deserialize)]
struct Options {
    #[serde(default)]
    features: Vec<String>,
}

/// Asks the server at `url` what it serves.
pub fn ticket_kind(url: &ImageioUrl) -> Result<TicketKind> {
    let agent = remotes().agent(url);
    let mut attempts = Attempts::new(url, "OPTIONS");
    loop {
        let r = agent.options(url.full()).call();
        match r {
            Ok(resp) if resp.status().as_u16() == 200 => {
                let body = read_small(resp.into_body())?;
                let o: Options = serde_json::from_slice(&body).map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidFormat,
                        format!("{url}: the OPTIONS answer is not a data API's: {e}"),
                    )
                })?;
                let has = |f: &str| o.features.iter().any(|x| x == f);
                return Ok(if has("resume") {
                    TicketKind::OvaImport
                } else if has("extents") {
                    TicketKind::Image
                } else {
                    TicketKind::OvaExport
                });
            }
            Ok(resp) if resp.status().is_server_error() => {
                attempts.failed(&format!("answered {}", resp.status().as_u16()), false)?;
            }
            Ok(resp) => return Err(refusal(url, "OPTIONS", resp)),
            Err(e) if transient(&e) => attempts.failed(&e.to_string(), false)?,
            Err(e) => return Err(Error::new(ErrorKind::Io, format!("{url}: {e}"))),
        }
    }
}

/// Counts attempts that moved nothing forward, and waits between them.
#[derive(Debug)]
pub(crate) struct Attempts {
    /// The URL as shown (never with its credential).
    url: String,
    what: String,
    stalled: u32,
    wait: Duration,
}

impl Attempts {
    pub(crate) fn new(url: &impl std::fmt::Display, what: &str) -> Self {
        Attempts {
            url: url.to_string(),
            what: what.to_owned(),
            stalled: 0,
            wait: CLIENT_BACKOFF,
        }
    }

    /// Records a failed attempt (`progressed`: it moved bytes forward,
    /// which starts the count again); fails once too many made no
    /// progress, else waits before the next.
    pub(crate) fn failed(&mut self, why: &str, progressed: bool) -> Result<()> {
        self.failed_after(why, progressed, false)
    }

    /// Like [`Attempts::failed`]; `sent`: the attempt sent bytes before it
    /// failed, so the next follows at once (a cut connection is no sign
    /// of a server in trouble) — still counted, unless it `progressed`.
    pub(crate) fn failed_after(&mut self, why: &str, progressed: bool, sent: bool) -> Result<()> {
        if progressed {
            self.stalled = 0;
            self.wait = CLIENT_BACKOFF;
        }
        self.stalled += 1;
        if self.stalled >= CLIENT_ATTEMPTS {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "{}: {} failed {} times in a row without progress; the last: {why}",
                    self.url, self.what, self.stalled
                ),
            ));
        }
        if sent {
            tracing::info!(url = %self.url, what = %self.what, error = why, "connection lost; going on at once");
            return Ok(());
        }
        tracing::warn!(url = %self.url, what = %self.what, error = why, wait_ms = self.wait.as_millis() as u64, "attempt failed; trying again");
        std::thread::sleep(self.wait);
        self.wait = (self.wait * 2).min(CLIENT_BACKOFF_MAX);
        Ok(())
    }
}

/// The error for a refusal: the status and the server's text.
pub(crate) fn refusal(url: &ImageioUrl, what: &str, resp: http::Response<ureq::Body>) -> Error {
    let status = resp.status().as_u16();
    let text = answer_text(url, &read_small(resp.into_body()).unwrap_or_default());
    refused(url, what, status, &text)
}

/// The error for the refusal `status` of the request `what` to `shown`,
/// whose answer said `text` (already made safe to show).
pub(crate) fn refused(shown: &dyn std::fmt::Display, what: &str, status: u16, text: &str) -> Error {
    let kind = match status {
        401 | 403 => ErrorKind::Auth,
        404 | 410 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        _ => ErrorKind::InvalidArgument,
    };
    let sep = if text.is_empty() { "" } else { ": " };
    Error::new(
        kind,
        format!("{shown}: {what} answered {status}{sep}{text}"),
    )
}

/// A small body (an answer, an error text), bounded.
pub(crate) fn read_small(body: ureq::Body) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    body.into_reader()
        .take(MAX_REMOTE_SMALL_BODY)
        .read_to_end(&mut out)
        .map_err(|e| Error::from(e).with_message("reading an answer"))?;
    Ok(out)
}

/// The agent for `url`.
pub(crate) fn agent(url: &ImageioUrl) -> &'static Agent {
    remotes().agent(url)
}

/// Progress counted as bytes move.
pub(crate) struct Counting<'a, R> {
    pub(crate) inner: R,
    pub(crate) progress: &'a Progress,
    pub(crate) pos: u64,
}

impl<R: std::io::Read> std::io::Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.progress.check_cancelled().is_err() {
            return Err(std::io::Error::other("transfer cancelled"));
        }
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        self.progress.set_read(self.pos);
        Ok(n)
    }
}
