//! The data API (`/images/{ticket}`), compatible with ovirt-imageio's:
//! every request names a ticket, which decides what it may do and on
//! which volume. `image` tickets get imageio's ranged reads and writes on
//! a raw file or a qcow2 image's guest view ([`image`]); OVA tickets
//! stream a whole package in or out ([`ova`]), an upload resumable across
//! connections ([`upload`], spoken as imageio-style ranged `PUT` or tus
//! 1.0, [`tus`]). `HEAD` answers every kind's size ([`head`]).
//! `/images/{ticket}/status` tells the ticket's holder where its transfer
//! stands ([`status`]), and `/upload/{ticket}` serves a page to upload
//! with from a browser ([`page`]).

mod blocking;
pub mod checksum;
mod head;
mod image;
mod ova;
mod page;
mod status;
mod tus;
mod upload;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use http::header::{ALLOW, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use serde_json::json;
use tracing::Instrument;

use super::config::DataConfig;
use super::http::{self as h, Request, Response};
use super::metrics::{self, Metrics, Transfer};
use crate::error::{ErrorKind, Result};
use crate::ticket::{Op, TicketHandle, TicketKind, TicketStore, TicketWatch};
use crate::volume::Registry;

/// What `OPTIONS` advertises for writers and readers at once per ticket.
pub const MAX_READERS: u32 = 8;
/// See [`MAX_READERS`].
pub const MAX_WRITERS: u32 = 8;

/// The data API's shared state.
#[derive(Debug)]
pub struct DataApi {
    store: Arc<TicketStore>,
    cfg: DataConfig,
    /// OVA tickets with an upload or download in progress: one at a time.
    busy: Arc<Mutex<HashSet<String>>>,
    metrics: Arc<Metrics>,
    /// The volumes `image` requests have open, one per file.
    volumes: Arc<Registry>,
    /// Resumable `ova-import` uploads, by ticket.
    uploads: Arc<upload::Uploads>,
}

/// Which resource under `/images/{ticket}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Image,
    Extents,
    Checksum,
    Algorithms,
    Status,
}

/// The transfer a request may start, handed to its handler, which starts
/// it once the request is accepted (an OVA upload only after its length
/// was checked against the ticket). [`Meter::finish`] ends it by the
/// handler's answer, unless a response body took it over.
#[derive(Debug)]
pub(crate) struct Meter {
    metrics: Arc<Metrics>,
    kind: TicketKind,
    watch: TicketWatch,
    transfer: Option<Transfer>,
}

impl Meter {
    /// Starts the transfer as `op`.
    pub(crate) fn start(&mut self, op: metrics::Op) -> Transfer {
        let t = self.metrics.start(self.kind, op, self.watch.clone());
        self.transfer = Some(t.clone());
        t
    }

    /// Ends a started transfer by the handler's result: an error or an
    /// error status fails it, a success completes it, unless a response
    /// body is still sending it.
    fn finish(self, r: &Result<Response>) {
        // An `ova-import` upload is counted by its session, across requests.
        let Some(t) = self.transfer else {
            return;
        };
        match r {
            Err(e) => t.fail(e),
            Ok(resp) if !resp.status().is_success() => t.fail_status(resp.status()),
            Ok(_) if t.is_handed_off() => {}
            Ok(_) => t.succeed(),
        }
    }
}

impl DataApi {
    /// The data API over `store`, counting into `metrics`.
    pub fn new(store: Arc<TicketStore>, cfg: DataConfig, metrics: Arc<Metrics>) -> Self {
        DataApi {
            uploads: upload::Uploads::new(store.clone(), metrics.clone()),
            store,
            cfg,
            busy: Arc::new(Mutex::new(HashSet::new())),
            metrics,
            volumes: Arc::new(Registry::new()),
        }
    }

    /// Ends every resumable upload (the server is stopping) and waits, at
    /// most `limit`, for their partial targets to be removed.
    pub async fn stop_uploads(&self, limit: std::time::Duration) {
        self.uploads.shutdown(limit).await;
    }

    /// Answers one request; never fails (errors become responses).
    pub async fn handle(self: Arc<Self>, req: Request) -> Response {
        let method = req.method().clone();
        let r = self.route(req).await;
        self.complete(&method, r)
    }

    /// Adds what every data API response carries (CORS headers) and
    /// counts it.
    pub fn complete(&self, method: &Method, mut resp: Response) -> Response {
        cors(resp.headers_mut());
        self.metrics.request(method, resp.status());
        resp
    }

    async fn route(&self, req: Request) -> Response {
        let path = req.uri().path().to_owned();
        if path == "/info" || path == "/info/" {
            return h::json(
                StatusCode::OK,
                &json!({"version": env!("CARGO_PKG_VERSION"), "server": "ovaio"}),
            );
        }
        if let Some(rest) = path.strip_prefix("/upload/") {
            let method = req.method().clone();
            tracing::debug!(%method, path = %crate::ticket::log_path(&path), "upload page");
            h::drain_in_background(req.into_body());
            return page::answer(&self.store, &method, rest);
        }
        let Some(rest) = path.strip_prefix("/images/") else {
            h::drain_in_background(req.into_body());
            return h::text(StatusCode::NOT_FOUND, &format!("no resource {path}"));
        };
        let (id, res) = match rest.split_once('/') {
            None => (rest, Resource::Image),
            Some((id, "extents")) => (id, Resource::Extents),
            Some((id, "checksum")) => (id, Resource::Checksum),
            Some((id, "checksum/algorithms")) => (id, Resource::Algorithms),
            Some((id, "status")) => (id, Resource::Status),
            Some(_) => {
                h::drain_in_background(req.into_body());
                return h::text(StatusCode::NOT_FOUND, &format!("no resource {path}"));
            }
        };
        let method = method_of(&req);
        // A browser's CORS preflight carries no credentials and reveals
        // nothing: answer it for any ticket, so that the request itself
        // reaches the server and the page sees its real status (403 for a
        // bad ticket) instead of a network error.
        if method == Method::OPTIONS
            && req
                .headers()
                .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return h::status(StatusCode::NO_CONTENT);
        }
        if method == Method::OPTIONS && id == "*" {
            return options_response(
                &ALL_METHODS,
                &FULL_FEATURES,
                self.cfg.socket.as_deref(),
                MAX_WRITERS,
            );
        }
        // Server information, whatever the ticket (as imageio answers it).
        if res == Resource::Algorithms && method == Method::GET {
            return checksum::algorithms();
        }
        // Read about the ticket by its holder: no op, and no activity.
        if res == Resource::Status && method == Method::GET {
            tracing::debug!(%method, path = %crate::ticket::log_path(&path), "status");
            return status::get(&self.store, id);
        }
        let op = match (&method, res) {
            // HEAD answers any ticket's size: read (image, export) or the
            // upload's offset (import, a write-only ticket).
            (&Method::OPTIONS | &Method::HEAD, Resource::Image) => None,
            (&Method::GET, _) => Some(Op::Read),
            (&Method::PUT | &Method::PATCH | &Method::POST | &Method::DELETE, Resource::Image) => {
                Some(Op::Write)
            }
            _ => {
                let mut r = h::text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("{method} is not allowed on {path}"),
                );
                r.headers_mut().insert(
                    ALLOW,
                    HeaderValue::from_static(match res {
                        Resource::Image => "OPTIONS, GET, HEAD, PUT, PATCH, POST, DELETE",
                        Resource::Extents
                        | Resource::Checksum
                        | Resource::Algorithms
                        | Resource::Status => "GET",
                    }),
                );
                // Read a body away rather than reset the stream under the
                // answer (HTTP/2 cancels a request whose body is dropped).
                h::drain_in_background(req.into_body());
                return r;
            }
        };
        let ticket = match self.authorize(id, op) {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(%method, error = %e.one_line(), "refused");
                h::drain_in_background(req.into_body());
                return h::error_text(&e);
            }
        };
        let span = tracing::info_span!(
            "ticket",
            id = %crate::ticket::log_id(ticket.id()),
            transfer = ticket.request().transfer_id.as_deref().unwrap_or("-"),
        );
        async move {
            tracing::debug!(%method, path = %crate::ticket::log_path(&path), "request");
            let r = self.dispatch(ticket, method.clone(), res, req).await;
            if r.status().is_client_error() || r.status().is_server_error() {
                tracing::warn!(%method, status = r.status().as_u16(), "request failed");
            }
            r
        }
        .instrument(span)
        .await
    }

    async fn dispatch(
        &self,
        ticket: TicketHandle,
        method: Method,
        res: Resource,
        req: Request,
    ) -> Response {
        let kind = ticket.kind();
        if kind == TicketKind::OvaImport {
            if let Some(r) = tus::version_refused(&req) {
                h::drain_in_background(req.into_body());
                return r;
            }
            let mut r = self.dispatch_import(ticket, method, res, req).await;
            tus::mark(&mut r);
            return r;
        }
        // Every request that moves bytes starts (or continues) the ticket's
        // transfer here; an OVA upload starts in its handler, once its
        // declared length has been checked against the ticket.
        let moves_bytes = matches!(
            (kind, &method, res),
            (
                TicketKind::Image,
                &Method::GET | &Method::PUT | &Method::PATCH,
                _
            ) | (TicketKind::OvaExport, &Method::GET, Resource::Image)
        );
        if moves_bytes && let Err(e) = ticket.begin() {
            h::drain_in_background(req.into_body());
            return h::error_text(&e);
        }
        let mut meter = Meter {
            metrics: self.metrics.clone(),
            kind,
            watch: ticket.watch(),
            transfer: None,
        };
        let roots = self.store.roots().clone();
        let volumes = image::Volumes {
            roots: roots.clone(),
            registry: self.volumes.clone(),
        };
        let vols = &volumes;
        let cfg = &self.cfg;
        let m = &mut meter;
        let r: Result<Response> = match (kind, method, res) {
            (TicketKind::Image, Method::OPTIONS, _)
                if matches!(ticket.net(), Some(crate::volume::NetUrl::Imageio(_))) =>
            {
                // A remote volume: as many writers as the remote takes.
                match vols.open_for_options(&ticket).await {
                    Ok(v) => {
                        let writers = match &*v {
                            crate::volume::Volume::Imageio(v) => v.max_writers() as u32,
                            _ => MAX_WRITERS,
                        };
                        Ok(ticket_options(&ticket, self.cfg.socket.as_deref(), writers))
                    }
                    Err(e) => Err(e),
                }
            }
            (_, Method::OPTIONS, _) => Ok(ticket_options(
                &ticket,
                self.cfg.socket.as_deref(),
                MAX_WRITERS,
            )),
            (TicketKind::Image, Method::HEAD, Resource::Image) => head::image(&ticket, vols).await,
            (TicketKind::OvaExport, Method::HEAD, Resource::Image) => {
                head::ova_export(&ticket, roots).await
            }
            (TicketKind::Image, Method::GET, Resource::Image) => {
                image::get(ticket, req, vols, cfg, m).await
            }
            (TicketKind::Image, Method::GET, Resource::Extents) => {
                image::extents(ticket, req, vols).await
            }
            (TicketKind::Image, Method::GET, Resource::Checksum) => {
                image::checksum(ticket, req, vols, cfg).await
            }
            (TicketKind::OvaExport, Method::GET, Resource::Checksum) => {
                ova::checksum(&ticket, &req)
            }
            (TicketKind::Image, Method::PUT, Resource::Image) => {
                image::put(ticket, req, vols, cfg, m).await
            }
            (TicketKind::Image, Method::PATCH, Resource::Image) => {
                image::patch(ticket, req, vols, m).await
            }
            (TicketKind::OvaExport, Method::GET, Resource::Image) => {
                // A second download at once is a transfer refused.
                let transfer = m.start(metrics::Op::Read);
                match self.claim(ticket.id()) {
                    Some(guard) => ova::get(ticket, req, roots, cfg, guard, transfer).await,
                    None => Ok(busy()),
                }
            }
            (kind, method, _) => Ok(h::text(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{method} is not supported on an {} ticket", kind.name()),
            )),
        };
        meter.finish(&r);
        r.unwrap_or_else(|e| h::error_text(&e))
    }

    /// Answers a request on an `ova-import` ticket: the resumable upload
    /// ([`tus`], [`upload`]).
    async fn dispatch_import(
        &self,
        ticket: TicketHandle,
        method: Method,
        res: Resource,
        req: Request,
    ) -> Response {
        let cx = || tus::Ctx {
            uploads: &self.uploads,
            roots: self.store.roots(),
            cfg: &self.cfg,
        };
        let r = match (method, res) {
            (Method::OPTIONS, _) => Ok(ticket_options(
                &ticket,
                self.cfg.socket.as_deref(),
                MAX_WRITERS,
            )),
            (Method::HEAD, Resource::Image) => Ok(tus::head(&ticket, &self.uploads)),
            (Method::PUT, Resource::Image) => tus::put(ticket, req, cx()).await,
            (Method::PATCH, Resource::Image) => tus::patch(ticket, req, cx()).await,
            (Method::POST, Resource::Image) => tus::post(ticket, req, cx()).await,
            (Method::DELETE, Resource::Image) => {
                Ok(tus::delete(ticket, &self.store, &self.uploads).await)
            }
            (method, _) => {
                h::drain_in_background(req.into_body());
                Ok(h::text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("{method} is not supported on an ova-import ticket"),
                ))
            }
        };
        r.unwrap_or_else(|e| h::error_text(&e))
    }

    /// Authorizes `op`; `None` (OPTIONS) accepts any op the ticket has.
    fn authorize(&self, id: &str, op: Option<Op>) -> Result<TicketHandle> {
        match op {
            Some(op) => self.store.authorize(id, op),
            None => match self.store.authorize(id, Op::Read) {
                Err(e) if e.kind() == ErrorKind::Auth => self.store.authorize(id, Op::Write),
                r => r,
            },
        }
    }

    /// Marks an OVA ticket busy until the guard drops; `None` when it is.
    fn claim(&self, id: &str) -> Option<BusyGuard> {
        let mut set = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        set.insert(id.to_owned()).then(|| BusyGuard {
            set: self.busy.clone(),
            id: id.to_owned(),
        })
    }
}

/// Holds an OVA ticket's single transfer slot.
#[derive(Debug)]
pub(crate) struct BusyGuard {
    set: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

fn busy() -> Response {
    h::text(
        StatusCode::CONFLICT,
        "another transfer is already using this ticket",
    )
}

const FULL_FEATURES: [&str; 4] = ["checksum", "extents", "zero", "flush"];
/// Every method the data API answers on some ticket.
const ALL_METHODS: [&str; 7] = ["OPTIONS", "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"];

fn ticket_options(t: &TicketHandle, socket: Option<&Path>, writers: u32) -> Response {
    let can_write = t.ops().contains(&Op::Write);
    let opts =
        |methods: &[&str], features: &[&str]| options_response(methods, features, socket, writers);
    match t.kind() {
        TicketKind::Image if can_write => {
            opts(&["OPTIONS", "GET", "HEAD", "PUT", "PATCH"], &FULL_FEATURES)
        }
        TicketKind::Image => opts(&["OPTIONS", "GET", "HEAD"], &["checksum", "extents"]),
        TicketKind::OvaImport => {
            let mut r = opts(
                &["OPTIONS", "HEAD", "PUT", "PATCH", "POST", "DELETE"],
                &["resume"],
            );
            tus::options(t, &mut r);
            r
        }
        TicketKind::OvaExport => opts(&["OPTIONS", "GET", "HEAD"], &[]),
    }
}

/// The request's method, or the one its `X-HTTP-Method-Override` names
/// on a `POST` (tus clients in environments without `PATCH`).
fn method_of(req: &Request) -> Method {
    let m = req.method();
    if m == Method::POST
        && let Some(o) = req
            .headers()
            .get("x-http-method-override")
            .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        && [Method::PATCH, Method::DELETE, Method::HEAD].contains(&o)
    {
        return o;
    }
    m.clone()
}

/// The OPTIONS answer. `unix_socket` is advertised only when the data API
/// is served on one: an `ovirt_imageio` client on this host then moves
/// its transfer there, off TLS.
fn options_response(
    methods: &[&str],
    features: &[&str],
    socket: Option<&Path>,
    writers: u32,
) -> Response {
    let mut body = json!({
        "features": features,
        "max_readers": MAX_READERS,
        "max_writers": writers,
    });
    if let Some(p) = socket {
        body["unix_socket"] = json!(p.to_string_lossy());
    }
    let mut r = h::json(StatusCode::OK, &body);
    if let Ok(v) = HeaderValue::from_str(&methods.join(", ")) {
        r.headers_mut().insert(ALLOW, v);
    }
    r
}

/// CORS headers on every data API response, so a browser page from any
/// origin can upload with a ticket (the ticket is the credential; no
/// cookies are involved).
fn cors(headers: &mut http::HeaderMap) {
    let set = |headers: &mut http::HeaderMap, name: &'static str, v: &'static str| {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(v));
    };
    set(headers, "access-control-allow-origin", "*");
    set(
        headers,
        "access-control-allow-methods",
        "OPTIONS, GET, HEAD, PUT, PATCH, POST, DELETE",
    );
    set(
        headers,
        "access-control-allow-headers",
        "content-type, content-range, range, if-range, upload-offset, upload-length, \
         upload-defer-length, upload-metadata, upload-concat, tus-resumable, \
         x-http-method-override, x-requested-with",
    );
    set(
        headers,
        "access-control-expose-headers",
        "content-length, content-range, content-disposition, accept-ranges, etag, location, \
         upload-offset, upload-length, upload-defer-length, upload-metadata, tus-resumable, \
         tus-version, tus-extension, tus-max-size",
    );
    set(headers, "access-control-max-age", "300");
}
