//! The control API (engine → ovaio), plain HTTP+JSON on a Unix socket and
//! optionally loopback TCP:
//!
//! | request | answer |
//! |---|---|
//! | `PUT /tickets/{id}` (ticket JSON) | 200 |
//! | `GET /tickets[?state=S][&kind=K]` | 200, every live ticket with its status, by id |
//! | `GET /tickets/{id}` | 200, the ticket with live status |
//! | `PATCH /tickets/{id}` `{"timeout": N}` | 200 |
//! | `DELETE /tickets/{id}` | 204, also for an unknown ticket |
//! | `POST /jobs` (job JSON) | 201, the job's status |
//! | `GET /jobs`, `GET /jobs/{id}` | 200 |
//! | `DELETE /jobs/{id}` | 204, cancels a running job |
//! | `GET /metrics` | 200, Prometheus text (OpenMetrics when the `Accept` header asks) |
//!
//! Errors are one line of text with a 4xx/5xx status, as ovirt-imageio's.
//!
//! A ticket id is the data API's bearer credential. Answers show ids
//! whole (the caller installs the tickets and holds every id anyway);
//! the log shows a request path with each segment cut to
//! [`ticket::log_id`] and never repeats an id from an error.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::http::{self as h, Request, Response};
use super::jobs::{JobRequest, Jobs};
use super::metrics::Metrics;
use crate::error::{Error, ErrorKind, Result};
use crate::limits;
use crate::ticket::{self, TicketKind, TicketRequest, TicketStatus, TicketStore, TransferState};

/// The control API's shared state.
#[derive(Debug)]
pub struct ControlApi {
    store: Arc<TicketStore>,
    jobs: Arc<Jobs>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Deserialize)]
struct Extend {
    timeout: u64,
}

impl ControlApi {
    /// The control API over the ticket store and job list.
    pub fn new(store: Arc<TicketStore>, jobs: Arc<Jobs>) -> Self {
        ControlApi {
            store,
            jobs,
            metrics: Arc::default(),
        }
    }

    /// Shows `metrics` on `GET /metrics` (by default a registry of its
    /// own, all zero).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Answers one request; never fails (errors become responses).
    pub async fn handle(self: Arc<Self>, req: Request) -> Response {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let r = self.route(req).await;
        let shown = log_path(&path);
        match r {
            Ok(r) => {
                tracing::debug!(%method, path = %shown, status = r.status().as_u16(), "control");
                r
            }
            Err(e) => {
                let error = log_text(&path, &e.one_line());
                tracing::info!(%method, path = %shown, %error, "control request refused");
                h::error_text(&e)
            }
        }
    }

    async fn route(&self, req: Request) -> Result<Response> {
        let path = req.uri().path().to_owned();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = req.method().clone();
        match (segs.as_slice(), &method) {
            (["info"], &Method::GET) => Ok(h::json(
                StatusCode::OK,
                &json!({"version": env!("CARGO_PKG_VERSION"), "server": "ovaio"}),
            )),
            (["tickets", id], &Method::PUT) => {
                let body = body(req).await?;
                let t: TicketRequest = parse(&body, "ticket")?;
                self.store.add(id, t)?;
                tracing::info!(ticket = %ticket::log_id(id), "ticket added");
                Ok(h::status(StatusCode::OK))
            }
            (["tickets"], &Method::GET) => {
                let filter = ListFilter::parse(req.uri().query())?;
                let list: Vec<TicketStatus> = self
                    .store
                    .list()
                    .into_iter()
                    .filter(|t| filter.keeps(t))
                    .collect();
                Ok(h::json(StatusCode::OK, &list))
            }
            (["tickets", id], &Method::GET) => {
                Ok(h::json(StatusCode::OK, &self.store.get_status(id)?))
            }
            (["tickets", id], &Method::PATCH) => {
                let body = body(req).await?;
                let e: Extend = parse(&body, "PATCH")?;
                self.store.extend(id, e.timeout)?;
                Ok(h::status(StatusCode::OK))
            }
            (["tickets", id], &Method::DELETE) => {
                self.store.remove(id)?;
                tracing::info!(ticket = %ticket::log_id(id), "ticket removed");
                Ok(h::status(StatusCode::NO_CONTENT))
            }
            (["jobs"], &Method::POST) => {
                let body = body(req).await?;
                let j: JobRequest = parse(&body, "job")?;
                let st = self.jobs.start(j)?;
                tracing::info!(job = %st.id, "job started");
                let mut r = h::json(StatusCode::CREATED, &st);
                if let Ok(v) = http::HeaderValue::from_str(&format!("/jobs/{}", st.id)) {
                    r.headers_mut().insert(http::header::LOCATION, v);
                }
                Ok(r)
            }
            (["metrics"], &Method::GET) => {
                let (text, ctype) = self.metrics.encode(wants_openmetrics(req.headers()));
                let mut r = hyper::Response::new(h::full(text));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(ctype),
                );
                Ok(r)
            }
            (["jobs"], &Method::GET) => Ok(h::json(StatusCode::OK, &self.jobs.list())),
            (["jobs", id], &Method::GET) => Ok(h::json(StatusCode::OK, &self.jobs.get(id)?)),
            (["jobs", id], &Method::DELETE) => {
                self.jobs.remove(id);
                Ok(h::status(StatusCode::NO_CONTENT))
            }
            (["tickets"] | ["tickets", _] | ["jobs", _] | ["jobs"] | ["info"] | ["metrics"], _) => {
                Ok(h::text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("{method} is not allowed on {path}"),
                ))
            }
            _ => Err(Error::new(
                ErrorKind::NotFound,
                format!("no resource {path}"),
            )),
        }
    }
}

/// Whether the scraper takes OpenMetrics text (Prometheus asks for it
/// first in its `Accept` header); anything else gets the classic text
/// format, which every scraper reads.
fn wants_openmetrics(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            let mut parts = m.split(';').map(str::trim);
            let kind = parts.next().unwrap_or_default();
            // A quality of zero refuses the type.
            kind.eq_ignore_ascii_case("application/openmetrics-text")
                && !parts.any(|p| {
                    matches!(
                        p.replace(' ', "").as_str(),
                        "q=0" | "q=0.0" | "q=0.00" | "q=0.000"
                    )
                })
        })
}

async fn body(req: Request) -> Result<bytes::Bytes> {
    h::read_small_body(
        req.into_body(),
        limits::MAX_CONTROL_BODY,
        limits::CONTROL_BODY_IDLE,
    )
    .await
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("bad {what} JSON: {e}")))
}

/// The request path as the log shows it: job ids are not credentials and
/// stay whole; anywhere else every segment is cut to
/// [`ticket::log_id`], since a ticket id may sit in any of them.
fn log_path(path: &str) -> String {
    match path.trim_start_matches('/').split('/').next() {
        Some("jobs") => path.to_owned(),
        _ => ticket::log_path(path),
    }
}

/// `text` about a request on `path` as the log shows it: the error of a
/// ticket names it by its log id already, but another may quote the path
/// (`no resource ...`) or a part of it, so every segment [`log_path`] cuts
/// is cut in the text too.
fn log_text(path: &str, text: &str) -> String {
    let mut text = text.to_owned();
    if log_path(path) != path {
        for seg in path.split('/').filter(|s| ticket::log_id(s) != *s) {
            text = text.replace(seg, &ticket::shown_id(seg));
        }
    }
    text
}

/// What `GET /tickets` keeps: tickets in any of `states` and of any of
/// `kinds` (each list empty: no condition). A parameter may repeat
/// (`?state=pending&state=active`).
#[derive(Debug, Default, PartialEq, Eq)]
struct ListFilter {
    states: Vec<TransferState>,
    kinds: Vec<TicketKind>,
}

impl ListFilter {
    /// Parses the query of `GET /tickets`. Values are the plain names
    /// tickets show, so nothing is percent-decoded. Refusals do not quote
    /// what was sent: a query may hold anything, a ticket id included,
    /// and the refusal is logged.
    fn parse(query: Option<&str>) -> Result<ListFilter> {
        let mut f = ListFilter::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "state" => f.states.push(
                    TransferState::ALL
                        .into_iter()
                        .find(|s| s.name() == value)
                        .ok_or_else(|| bad_query("state", &TransferState::ALL.map(|s| s.name())))?,
                ),
                "kind" => f.kinds.push(
                    TicketKind::ALL
                        .into_iter()
                        .find(|k| k.name() == value)
                        .ok_or_else(|| bad_query("kind", &TicketKind::ALL.map(|k| k.name())))?,
                ),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        "GET /tickets takes only the query parameters state and kind",
                    ));
                }
            }
        }
        Ok(f)
    }

    fn keeps(&self, t: &TicketStatus) -> bool {
        (self.states.is_empty() || self.states.contains(&t.state))
            && (self.kinds.is_empty() || self.kinds.contains(&t.ticket.kind))
    }
}

fn bad_query(name: &str, allowed: &[&str]) -> Error {
    Error::new(
        ErrorKind::InvalidArgument,
        format!(
            "the {name} to list by must be one of {}",
            allowed.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "9f7d0e3a-0c6e-4c59-9f4b-1d1f1b2f6c11";

    #[test]
    fn list_filters_parse() {
        assert_eq!(ListFilter::parse(None).unwrap(), ListFilter::default());
        assert_eq!(ListFilter::parse(Some("")).unwrap(), ListFilter::default());
        let f = ListFilter::parse(Some("state=active&kind=ova-import&state=pending")).unwrap();
        assert_eq!(
            f,
            ListFilter {
                states: vec![TransferState::Active, TransferState::Pending],
                kinds: vec![TicketKind::OvaImport],
            }
        );
        for q in [
            "state=done",
            "state=",
            "kind=ova",
            "State=active",
            "sort=id",
        ] {
            let e = ListFilter::parse(Some(q)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{q}");
        }
        let e = ListFilter::parse(Some("state=running")).unwrap_err();
        assert!(
            e.to_string()
                .contains("pending, active, paused, succeeded, failed, cancelled"),
            "{e}"
        );
        // A refusal never quotes the query, which is logged.
        let e = ListFilter::parse(Some(&format!("{ID}=1"))).unwrap_err();
        assert!(!e.to_string().contains(ID), "{e}");
        let e = ListFilter::parse(Some(&format!("kind={ID}"))).unwrap_err();
        assert!(!e.to_string().contains(ID), "{e}");
    }

    #[test]
    fn logged_paths_and_errors_cut_ticket_ids() {
        assert_eq!(log_path(&format!("/tickets/{ID}")), "/tickets/9f7d0e3a...");
        assert_eq!(log_path("/tickets"), "/tickets");
        // Job ids are not credentials.
        assert_eq!(log_path("/jobs/18c2f3a4b5-12"), "/jobs/18c2f3a4b5-12");

        let path = format!("/tickets/{ID}/more");
        let text = log_text(&path, &format!("no resource {path}"));
        assert_eq!(text, "no resource /tickets/9f7d0e3a.../more");
        let text = log_text(
            &format!("/tickets/{ID}"),
            &format!("bad ticket JSON: '{ID}'"),
        );
        assert_eq!(text, "bad ticket JSON: '9f7d0e3a...'");
        let text = log_text("/jobs/18c2f3a4b5-12", "no such job '18c2f3a4b5-12'");
        assert_eq!(text, "no such job '18c2f3a4b5-12'");
    }
}
