//! `GET /images/{ticket}/status`: where the ticket's transfer stands, for
//! its holder — the upload page, or any client with the ticket — without
//! the control API: the state, the committed offset of a resumable
//! upload, each disk's bytes and state, and why it failed.
//!
//! It shows less than `GET /tickets/{id}`: nothing of the ticket as the
//! engine installed it (volume URLs and paths, the engine's transfer id),
//! only what a client moving the bytes may know. Reading it is no
//! activity on the ticket ([`TicketStore::peek`]): a page left open
//! polling does not keep the ticket from expiring.

use http::StatusCode;
use http::header::{CACHE_CONTROL, HeaderValue};
use serde::Serialize;

use crate::server::http::{self as h, Response};
use crate::ticket::{Op, TicketHandle, TicketKind, TicketStore, TransferState};

/// The answer.
#[derive(Debug, Serialize)]
struct Status {
    /// `image`, `ova-import` or `ova-export`.
    kind: &'static str,
    /// As `GET /tickets/{id}` shows it.
    state: TransferState,
    /// Whether the ticket allows writing.
    writable: bool,
    /// `image`: the volume's size; OVA kinds: the package size when the
    /// engine gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    /// `image`: the volume's format, `raw` or `qcow2` (guest data).
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'static str>,
    /// Bytes moved through the data API so far.
    transferred: u64,
    /// `ova-import`: the committed offset, where an upload goes on.
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    /// `ova-import`: the package's length, once declared.
    #[serde(skip_serializing_if = "Option::is_none")]
    length: Option<u64>,
    /// Unix time (s) the ticket expires unless used or extended.
    expires: u64,
    /// Seconds a paused upload waits for its client before it fails; 0:
    /// until the ticket expires.
    inactivity_timeout: u64,
    /// Why the transfer failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// `ova-import`, once succeeded: `verified` or `absent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<String>,
    /// OVA kinds: one per disk of the ticket, in its order.
    disks: Vec<Disk>,
}

/// One disk of [`Status`].
#[derive(Debug, Serialize)]
struct Disk {
    #[serde(skip_serializing_if = "String::is_empty")]
    href: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    disk_id: Option<String>,
    bytes: u64,
    state: TransferState,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `GET /images/{ticket}/status`: 200 with [`Status`], 403 for an unknown
/// or expired ticket.
pub(super) fn get(store: &TicketStore, id: &str) -> Response {
    let mut r = match store.peek(id) {
        Ok(t) => h::json(StatusCode::OK, &status(&t)),
        Err(e) => h::error_text(&e),
    };
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn status(t: &TicketHandle) -> Status {
    let s = t.status();
    let image = t.kind() == TicketKind::Image;
    Status {
        kind: t.kind().name(),
        state: s.state,
        writable: t.ops().contains(&Op::Write),
        size: t.size(),
        format: t
            .format()
            .filter(|_| image)
            .map(crate::volume::Format::name),
        transferred: s.transferred,
        offset: s.offset,
        length: s.length,
        expires: s.expires,
        inactivity_timeout: t.inactivity_timeout(),
        error: s.error,
        manifest: s.manifest,
        disks: s
            .disks
            .into_iter()
            .map(|d| Disk {
                href: d.href,
                disk_id: d.disk_id,
                bytes: d.bytes,
                state: d.state,
                error: d.error,
            })
            .collect(),
    }
}
