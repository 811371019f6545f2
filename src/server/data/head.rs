//! `HEAD /images/{ticket}` on the kinds that are read: the size a `GET`
//! of the whole resource would send, as its `Content-Length`, with
//! `Accept-Ranges: bytes` (both resume a download with `Range`). An
//! `ova-import` ticket answers its upload's offset instead ([`super::tus`]).

use http::header::{ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use http::{HeaderValue, StatusCode};

use super::image::Volumes;
use super::{blocking, ova};
use crate::error::{Error, ErrorKind, Result};
use crate::server::http::{self as h, Response};
use crate::source::volume::AllowedRoots;
use crate::ticket::{Op as TicketOp, TicketHandle};
use crate::volume::{OpenOptions, Size};

/// A bodiless answer announcing `len` bytes of `ctype`.
fn sized(len: u64, ctype: &'static str) -> Response {
    let mut r = h::status(StatusCode::OK);
    let hd = r.headers_mut();
    hd.insert(CONTENT_LENGTH, HeaderValue::from(len));
    hd.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    hd.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    hd.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `image`: the volume's size (its guest size for qcow2), as `GET` sends.
pub(super) async fn image(t: &TicketHandle, vols: &Volumes) -> Result<Response> {
    let path = t.path().map(std::path::Path::to_path_buf).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidArgument,
            "the ticket names no volume (url)",
        )
    })?;
    // Opened as `GET` opens it, so that both share the registry's volume.
    let opts = OpenOptions {
        format: t.format(),
        write: t.ops().contains(&TicketOp::Write),
        create: None,
    };
    let v = vols.clone();
    let volume = blocking::run(move || v.registry.open(&v.roots, &path, &opts)).await?;
    Ok(sized(volume.size(), "application/octet-stream"))
}

/// `ova-export`: the package's exact size and `ETag`, as `GET` sends them
/// (planning the export, which for a VMDK export may take a counting pass).
pub(super) async fn ova_export(t: &TicketHandle, roots: AllowedRoots) -> Result<Response> {
    let (plan, mtime) = ova::prepare(t, roots).await?;
    let total = plan.total_size();
    let mut r = sized(total, "application/x-tar");
    if let Ok(v) = HeaderValue::from_str(&ova::etag(total, mtime)) {
        r.headers_mut().insert(ETAG, v);
    }
    Ok(r)
}
