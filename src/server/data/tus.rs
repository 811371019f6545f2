//! The HTTP side of resumable `ova-import` uploads (see [`super::upload`]):
//! `HEAD` tells the committed offset (`Upload-Offset`, and `Upload-Length`
//! once known), and a client continues with an imageio-style `PUT` with
//! `Content-Range: bytes N-(L-1)/L` (or `bytes N-*/*`), or with tus 1.0:
//! `PATCH` with `Upload-Offset`, `POST` to create (answered with the
//! ticket's own URL), `DELETE` to terminate.
//!
//! A write that starts before the committed offset has the overlap
//! skipped; one that starts after it is refused (`416` for `PUT`, `409`
//! for tus) and changes nothing.

use std::sync::Arc;

use http::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderName, LOCATION,
};
use http::{HeaderValue, Method, StatusCode};
use serde_json::json;

use super::upload::{self, Uploads, WriteError, WriteReq, Written};
use crate::error::{Error, ErrorKind, Result};
use crate::limits;
use crate::server::config::DataConfig;
use crate::server::http::{self as h, Request, Response};
use crate::server::range;
use crate::source::volume::AllowedRoots;
use crate::ticket::{TicketHandle, TicketStore, TransferState};

/// The tus protocol version served.
pub(super) const TUS_VERSION: &str = "1.0.0";
/// The tus extensions offered.
pub(super) const TUS_EXTENSIONS: &str = "creation,creation-defer-length,termination";
/// The content type of a tus `PATCH` body.
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");
const UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");

fn set(r: &mut Response, name: HeaderName, v: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
        r.headers_mut().insert(name, v);
    }
}

/// Adds `Tus-Resumable`, which every response on an `ova-import` ticket
/// carries.
pub(super) fn mark(r: &mut Response) {
    set(r, TUS_RESUMABLE, TUS_VERSION);
}

/// A 412 for a request naming a tus version other than 1.0.0.
pub(super) fn version_refused(req: &Request) -> Option<Response> {
    let v = req.headers().get(TUS_RESUMABLE)?;
    if v.as_bytes() == TUS_VERSION.as_bytes() {
        return None;
    }
    let mut r = h::text(
        StatusCode::PRECONDITION_FAILED,
        &format!("only tus {TUS_VERSION} is served"),
    );
    set(&mut r, HeaderName::from_static("tus-version"), TUS_VERSION);
    Some(r)
}

/// The tus headers of an `OPTIONS` answer on an `ova-import` ticket.
pub(super) fn options(t: &TicketHandle, r: &mut Response) {
    set(r, HeaderName::from_static("tus-version"), TUS_VERSION);
    set(r, HeaderName::from_static("tus-extension"), TUS_EXTENSIONS);
    if let Some(size) = t.size() {
        set(r, HeaderName::from_static("tus-max-size"), size);
    }
}

/// Where the upload stands: committed offset, length, metadata.
fn position(t: &TicketHandle, uploads: &Uploads) -> (u64, Option<u64>, Option<String>) {
    match uploads.find(t) {
        Some(s) => (s.offset(), s.length(), s.metadata()),
        None => match t.upload() {
            Some((offset, length)) => (offset, length, None),
            None => (0, t.size(), None),
        },
    }
}

/// Adds `Upload-Offset` and `Upload-Length` (or `Upload-Defer-Length`).
fn upload_headers(r: &mut Response, offset: u64, length: Option<u64>) {
    set(r, UPLOAD_OFFSET, offset);
    match length {
        Some(l) => set(r, UPLOAD_LENGTH, l),
        None => set(r, UPLOAD_DEFER_LENGTH, 1),
    }
}

/// `HEAD /images/{ticket}`: the committed offset. A transfer that failed
/// or was cancelled answers 409 (its `GET /tickets/{id}` says why).
pub(super) fn head(t: &TicketHandle, uploads: &Uploads) -> Response {
    let state = t.state();
    let mut r = if matches!(state, TransferState::Failed | TransferState::Cancelled) {
        h::status(StatusCode::CONFLICT)
    } else {
        let (offset, length, metadata) = position(t, uploads);
        let mut r = h::status(StatusCode::OK);
        upload_headers(&mut r, offset, length);
        if let Some(m) = metadata {
            set(&mut r, UPLOAD_METADATA, m);
        }
        r
    };
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A header's value as a number, `None` when absent; an error names it.
fn number(parts: &http::request::Parts, name: &HeaderName) -> Result<Option<u64>> {
    match parts.headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!("{name} must be a non-negative integer"),
                )
            }),
    }
}

/// The write a `PUT`'s `Content-Range` (or its absence) asks for:
/// `bytes N-M/L`, `bytes N-M/*`, `bytes N-*/*` or `bytes N-*/L` (from N
/// to the end of the package).
fn put_request(parts: &http::request::Parts) -> Result<WriteReq> {
    let content_length = number(parts, &CONTENT_LENGTH)?;
    let Some(v) = h::header(parts, CONTENT_RANGE) else {
        return Ok(WriteReq {
            start: 0,
            declared: content_length,
            body_len: content_length,
            ends_package: true,
        });
    };
    let open = v
        .trim()
        .strip_prefix("bytes ")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(range, complete)| {
            let start = range
                .trim()
                .strip_suffix("-*")?
                .trim()
                .parse::<u64>()
                .ok()?;
            let complete = match complete.trim() {
                "*" => None,
                n => Some(n.parse::<u64>().ok()?),
            };
            Some((start, complete))
        });
    let req = match open {
        Some((start, complete)) => WriteReq {
            start,
            declared: complete,
            body_len: content_length,
            ends_package: complete.is_none(),
        },
        None => {
            let cr = range::parse_content_range(v).map_err(Error::from)?;
            let n = cr.range.len();
            if content_length.is_some_and(|c| c != n) {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "Content-Range {v} covers {n} bytes, but the Content-Length is {}",
                        content_length.unwrap_or_default()
                    ),
                ));
            }
            WriteReq {
                start: cr.range.start,
                declared: cr.complete,
                body_len: Some(n),
                ends_package: false,
            }
        }
    };
    Ok(req)
}

/// Things a write handler needs.
pub(super) struct Ctx<'a> {
    pub uploads: &'a Arc<Uploads>,
    pub roots: &'a AllowedRoots,
    pub cfg: &'a DataConfig,
}

/// `PUT /images/{ticket}`: the package from its start, or from the
/// offset its `Content-Range` names. Answers 200 with the import summary
/// once the package is complete, 200 with the offset after a part.
pub(super) async fn put(t: TicketHandle, req: Request, cx: Ctx<'_>) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let w = match put_request(&parts) {
        Ok(w) => w,
        Err(e) => {
            h::drain_in_background(body);
            return Err(e);
        }
    };
    write(t, body, w, cx, Method::PUT).await
}

/// tus `PATCH /images/{ticket}`: bytes from `Upload-Offset`; 204 with
/// the new offset.
pub(super) async fn patch(t: TicketHandle, req: Request, cx: Ctx<'_>) -> Result<Response> {
    let (parts, body) = req.into_parts();
    let refuse = |e: Error, body| {
        h::drain_in_background(body);
        Err(e)
    };
    let ctype = h::header(&parts, CONTENT_TYPE).unwrap_or_default();
    if !ctype.trim().eq_ignore_ascii_case(OFFSET_OCTET_STREAM) {
        h::drain_in_background(body);
        return Ok(h::text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("a tus PATCH carries Content-Type: {OFFSET_OCTET_STREAM}"),
        ));
    }
    let start = match number(&parts, &UPLOAD_OFFSET) {
        Ok(Some(n)) => n,
        Ok(None) => {
            return refuse(
                Error::new(
                    ErrorKind::InvalidArgument,
                    "a tus PATCH needs Upload-Offset",
                ),
                body,
            );
        }
        Err(e) => return refuse(e, body),
    };
    let (declared, body_len) = match (
        number(&parts, &UPLOAD_LENGTH),
        number(&parts, &CONTENT_LENGTH),
    ) {
        (Ok(d), Ok(n)) => (d, n),
        (Err(e), _) | (_, Err(e)) => return refuse(e, body),
    };
    let w = WriteReq {
        start,
        declared,
        body_len,
        ends_package: false,
    };
    write(t, body, w, cx, Method::PATCH).await
}

/// Runs a write and answers it the way its protocol expects.
async fn write(
    t: TicketHandle,
    body: hyper::body::Incoming,
    w: WriteReq,
    cx: Ctx<'_>,
    method: Method,
) -> Result<Response> {
    let tus = method == Method::PATCH;
    // A request that would be refused does not start an upload: no
    // session (with its pause clock and metrics) for it.
    if cx.uploads.find(&t).is_none() {
        let refusal = if let (Some(d), Some(l)) = (w.declared, t.size())
            && d > l
        {
            Some(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the upload's length of {d} bytes is larger than the ticket's size of {l} bytes"
                ),
            ))
        } else if w.start > 0 && !t.state().is_final() {
            let mut r = ahead(tus, 0, w.start, t.size());
            upload_headers(&mut r, 0, t.size());
            h::drain_in_background(body);
            return Ok(r);
        } else {
            None
        };
        if let Some(e) = refusal {
            tracing::info!(error = %e.one_line(), "OVA upload refused");
            h::drain_in_background(body);
            return Err(e);
        }
    }
    let session = match cx.uploads.open(&t, cx.roots, cx.cfg) {
        Ok(s) => s,
        Err(e) => {
            h::drain_in_background(body);
            return Err(e);
        }
    };
    let r = session.write(&t, body, w, cx.cfg).await;
    let (offset, length) = (session.offset(), session.length());
    let mut resp = match r {
        Ok(Written::Complete(summary)) if !tus => h::json(StatusCode::OK, &summary),
        Ok(Written::Part) if !tus => h::json(
            StatusCode::OK,
            &json!({"state": "paused", "offset": offset, "length": length}),
        ),
        Ok(_) => h::status(StatusCode::NO_CONTENT),
        Err(WriteError::Ahead { offset }) => ahead(tus, offset, w.start, length),
        Err(WriteError::Failed(e)) => {
            // The summary of a failure is the error; the metrics counted
            // it with the session.
            let mut r = h::error_text(&e);
            if e.kind() == ErrorKind::Cancelled && !t.is_cancelled() && !session.is_ended() {
                // Paused (a body cut short or silent): the client may go on.
                *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
            }
            r
        }
    };
    upload_headers(&mut resp, offset, length);
    Ok(resp)
}

/// The refusal of a write starting at `start`, past the committed
/// `offset`: 409 for tus, 416 with `Content-Range: bytes */L` for `PUT`.
fn ahead(tus: bool, offset: u64, start: u64, length: Option<u64>) -> Response {
    let code = if tus {
        StatusCode::CONFLICT
    } else {
        StatusCode::RANGE_NOT_SATISFIABLE
    };
    let mut r = h::text(
        code,
        &format!(
            "the upload continues at offset {offset}, not at {start}: ask HEAD for the offset"
        ),
    );
    if !tus {
        let total = length.map_or_else(|| "*".to_owned(), |l| l.to_string());
        set(&mut r, CONTENT_RANGE, format!("bytes */{total}"));
    }
    r
}

/// tus `POST /images/{ticket}` (creation): the ticket's URL is the
/// upload's, so the answer is 201 with `Location` the request's own path.
/// `Upload-Length` (or `Upload-Defer-Length: 1`) and `Upload-Metadata`
/// are recorded. The ticket's upload starts: it is paused until a `PATCH`
/// (or `PUT`) writes.
pub(super) async fn post(t: TicketHandle, req: Request, cx: Ctx<'_>) -> Result<Response> {
    let path = req.uri().path().to_owned();
    let (parts, body) = req.into_parts();
    let refuse = |e: Error, body| {
        h::drain_in_background(body);
        Err(e)
    };
    let declared = match number(&parts, &UPLOAD_LENGTH) {
        Ok(d) => d,
        Err(e) => return refuse(e, body),
    };
    if let Some(v) = parts.headers.get(UPLOAD_DEFER_LENGTH)
        && v.as_bytes() != b"1"
    {
        return refuse(
            Error::new(ErrorKind::InvalidArgument, "Upload-Defer-Length must be 1"),
            body,
        );
    }
    if number(&parts, &CONTENT_LENGTH).ok().flatten().unwrap_or(0) > 0 {
        return refuse(
            Error::new(
                ErrorKind::Unsupported,
                "creation-with-upload is not offered: create with an empty POST, then PATCH",
            ),
            body,
        );
    }
    let metadata = match parts.headers.get(UPLOAD_METADATA) {
        None => None,
        Some(v) if v.len() <= limits::MAX_TUS_METADATA && v.to_str().is_ok() => {
            v.to_str().ok().map(str::to_owned)
        }
        Some(_) => {
            return refuse(
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "Upload-Metadata must be visible ASCII of at most {} bytes",
                        limits::MAX_TUS_METADATA
                    ),
                ),
                body,
            );
        }
    };
    if let (Some(d), Some(l)) = (declared, t.size())
        && d > l
    {
        return refuse(
            Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "the upload's length of {d} bytes is larger than the ticket's size of {l} bytes"
                ),
            ),
            body,
        );
    }
    let session = match cx.uploads.open(&t, cx.roots, cx.cfg) {
        Ok(s) => s,
        Err(e) => return refuse(e, body),
    };
    session.create(declared, metadata)?;
    let mut r = h::status(StatusCode::CREATED);
    set(&mut r, LOCATION, path);
    upload_headers(&mut r, session.offset(), session.length());
    Ok(r)
}

/// tus `DELETE /images/{ticket}` (termination): cancels the transfer as
/// `DELETE /tickets/{id}` does, removing the ticket, and answers 204 once
/// the import has removed its partial targets (or after a while).
pub(super) async fn delete(t: TicketHandle, store: &TicketStore, uploads: &Uploads) -> Response {
    let session = uploads.find(&t);
    if let Err(e) = store.remove(t.id()) {
        return h::error_text(&e);
    }
    tracing::info!("ticket removed by its client (tus termination)");
    if let Some(s) = session {
        upload::await_end(&s, limits::TUS_TERMINATE_WAIT).await;
    }
    h::status(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method("PUT").uri("/images/t");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn put_ranges_say_where_the_body_goes() {
        let w = put_request(&parts(&[("content-length", "10")])).unwrap();
        assert_eq!(
            (w.start, w.declared, w.body_len, w.ends_package),
            (0, Some(10), Some(10), true)
        );
        let w = put_request(&parts(&[("content-range", "bytes 5-9/10")])).unwrap();
        assert_eq!(
            (w.start, w.declared, w.body_len, w.ends_package),
            (5, Some(10), Some(5), false)
        );
        let w = put_request(&parts(&[("content-range", "bytes 7-*/*")])).unwrap();
        assert_eq!(
            (w.start, w.declared, w.body_len, w.ends_package),
            (7, None, None, true)
        );
        let w = put_request(&parts(&[("content-range", "bytes 7-*/100")])).unwrap();
        assert_eq!((w.start, w.declared, w.ends_package), (7, Some(100), false));
        let w = put_request(&parts(&[("content-range", "bytes 3-4/*")])).unwrap();
        assert_eq!((w.start, w.declared, w.body_len), (3, None, Some(2)));
        for bad in ["bytes 5-3/10", "bytes x-*/*", "items 0-1/2", "bytes 0-1"] {
            assert!(
                put_request(&parts(&[("content-range", bad)])).is_err(),
                "{bad}"
            );
        }
        let e = put_request(&parts(&[
            ("content-range", "bytes 0-9/10"),
            ("content-length", "4"),
        ]))
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}
