//! The control API (engine → ovaio), plain HTTP+JSON on a Unix socket and
//! optionally loopback TCP:
//!
//! | request | answer |
//! |---|---|
//! | `PUT /tickets/{id}` (ticket JSON) | 200 |
//! | `GET /tickets/{id}` | 200, the ticket with live status |
//! | `PATCH /tickets/{id}` `{"timeout": N}` | 200 |
//! | `DELETE /tickets/{id}` | 204, also for an unknown ticket |
//! | `POST /jobs` (job JSON) | 201, the job's status |
//! | `GET /jobs`, `GET /jobs/{id}` | 200 |
//! | `DELETE /jobs/{id}` | 204, cancels a running job |
//!
//! Errors are one line of text with a 4xx/5xx status, as ovirt-imageio's.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::http::{self as h, Request, Response};
use super::jobs::{JobRequest, Jobs};
use crate::error::{Error, ErrorKind, Result};
use crate::ticket::{TicketRequest, TicketStore};

/// Largest control request body.
const MAX_BODY: usize = 1 << 20;
/// How long a control client may pause while sending a body.
const BODY_IDLE: Duration = Duration::from_secs(30);

/// The control API's shared state.
#[derive(Debug)]
pub struct ControlApi {
    store: Arc<TicketStore>,
    jobs: Arc<Jobs>,
}

#[derive(Debug, Deserialize)]
struct Extend {
    timeout: u64,
}

impl ControlApi {
    /// The control API over the ticket store and job list.
    pub fn new(store: Arc<TicketStore>, jobs: Arc<Jobs>) -> Self {
        ControlApi { store, jobs }
    }

    /// Answers one request; never fails (errors become responses).
    pub async fn handle(self: Arc<Self>, req: Request) -> Response {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let r = self.route(req).await;
        match r {
            Ok(r) => {
                tracing::debug!(%method, %path, status = r.status().as_u16(), "control");
                r
            }
            Err(e) => {
                tracing::info!(%method, %path, error = %e.one_line(), "control request refused");
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
                tracing::info!(ticket = %crate::ticket::log_id(id), "ticket added");
                Ok(h::status(StatusCode::OK))
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
                tracing::info!(ticket = %crate::ticket::log_id(id), "ticket removed");
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
            (["jobs"], &Method::GET) => Ok(h::json(StatusCode::OK, &self.jobs.list())),
            (["jobs", id], &Method::GET) => Ok(h::json(StatusCode::OK, &self.jobs.get(id)?)),
            (["jobs", id], &Method::DELETE) => {
                self.jobs.remove(id);
                Ok(h::status(StatusCode::NO_CONTENT))
            }
            (["tickets", _] | ["jobs", _] | ["jobs"] | ["info"], _) => Ok(h::text(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{method} is not allowed on {path}"),
            )),
            _ => Err(Error::new(
                ErrorKind::NotFound,
                format!("no resource {path}"),
            )),
        }
    }
}

async fn body(req: Request) -> Result<bytes::Bytes> {
    h::read_small_body(req.into_body(), MAX_BODY, BODY_IDLE).await
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("bad {what} JSON: {e}")))
}
