//! Prometheus metrics of `ovaio serve`, shown by `GET /metrics` on the
//! control API (never on the public data port).
//!
//! One [`Metrics`] registry belongs to the server and is handed to what
//! counts: the data API's handlers (bytes moved and how each transfer
//! ended), the accept loops (connections, TLS handshake failures) and the
//! jobs. The pipelines below the server count nothing; what they do is
//! measured where the server hands them bytes or takes their outcome.
//!
//! Counting costs an atomic add: the label sets are closed (ticket kinds,
//! operations, reason classes, status classes), every series exists from
//! the start, and the handles on those counted per buffer, per request
//! and per transfer are taken when the registry is made, so counting
//! neither looks a label set up nor takes a lock. Only the end of a
//! transfer takes one, its duration histogram's.
//!
//! A *transfer* is one request that moves bytes: on an `image` ticket a
//! `GET` (`read`), `PUT` (`write`) or `PATCH` (`zero`, `flush`); on an
//! `ova-import` ticket the upload, on an `ova-export` ticket the download.
//! It ends exactly once: succeeded, failed with a [`Reason`], or
//! cancelled with a [`Reason`]. Bytes are counted where they really move:
//! as a volume writer takes them (`image` `PUT`), as the import pipeline
//! consumes them (`ova-import`), as a response body hands them to the
//! connection (`GET`), as a range is zeroed (`PATCH`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::error::{Error, ErrorKind};
use crate::ticket::{CancelCause, TicketKind, TicketWatch};

/// Upper bounds of the transfer duration buckets, seconds: a ranged
/// request of an `image` ticket takes a fraction of a second, a whole
/// disk or OVA over a slow link hours.
const DURATION_BUCKETS: [f64; 16] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    14400.0,
];

/// What a transfer does with its ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Bytes to the client (`GET`).
    Read,
    /// Bytes from the client (`PUT`).
    Write,
    /// A range zeroed (`PATCH` `zero`).
    Zero,
    /// Written data made durable (`PATCH` `flush`).
    Flush,
}

impl Op {
    /// The `op` label.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Zero => "zero",
            Op::Flush => "flush",
        }
    }
}

/// Why a transfer or job did not succeed: a small closed set, so that
/// alerts can name it, mapped from [`ErrorKind`] and the ticket's
/// [`CancelCause`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The client disconnected, or went silent past a timeout.
    ClientGone,
    /// A digest or size did not match what the package promised.
    Integrity,
    /// The request or the package is malformed, corrupt or inconsistent.
    InvalidInput,
    /// The package uses a feature ovaio does not implement.
    Unsupported,
    /// A size limit was passed (the ticket's size, a parser limit).
    TooLarge,
    /// The request does not fit the ticket's state (a second upload).
    Conflict,
    /// The operating system refused an operation.
    Io,
    /// A bug in ovaio (a worker that panicked).
    Internal,
    /// The ticket was removed or replaced (the job was deleted).
    Removed,
    /// The ticket expired.
    Expired,
    /// The server is stopping.
    Shutdown,
}

impl Reason {
    const FAILED: [Reason; 8] = [
        Reason::ClientGone,
        Reason::Integrity,
        Reason::InvalidInput,
        Reason::Unsupported,
        Reason::TooLarge,
        Reason::Conflict,
        Reason::Io,
        Reason::Internal,
    ];
    const CANCELLED: [Reason; 3] = [Reason::Removed, Reason::Expired, Reason::Shutdown];

    /// The `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            Reason::ClientGone => "client_gone",
            Reason::Integrity => "integrity",
            Reason::InvalidInput => "invalid_input",
            Reason::Unsupported => "unsupported",
            Reason::TooLarge => "too_large",
            Reason::Conflict => "conflict",
            Reason::Io => "io",
            Reason::Internal => "internal",
            Reason::Removed => "removed",
            Reason::Expired => "expired",
            Reason::Shutdown => "shutdown",
        }
    }

    /// Whether the transfer was stopped from outside (counted as
    /// cancelled) rather than failed.
    pub fn is_cancel(self) -> bool {
        Reason::CANCELLED.contains(&self)
    }

    /// The reason for an error of `kind`; `cause` tells a cancelled
    /// ticket from a client that went away, which both end a transfer
    /// with [`ErrorKind::Cancelled`].
    pub fn of(kind: ErrorKind, cause: Option<CancelCause>) -> Reason {
        match kind {
            ErrorKind::Cancelled => match cause {
                Some(CancelCause::Removed) => Reason::Removed,
                Some(CancelCause::Expired) => Reason::Expired,
                Some(CancelCause::Shutdown) => Reason::Shutdown,
                None => Reason::ClientGone,
            },
            ErrorKind::Integrity => Reason::Integrity,
            ErrorKind::InvalidFormat
            | ErrorKind::CorruptImage
            | ErrorKind::InvalidArgument
            | ErrorKind::Auth => Reason::InvalidInput,
            ErrorKind::Unsupported => Reason::Unsupported,
            ErrorKind::LimitExceeded => Reason::TooLarge,
            ErrorKind::Conflict => Reason::Conflict,
            ErrorKind::Internal => Reason::Internal,
            _ => Reason::Io,
        }
    }

    /// The reason for an error answered without an [`Error`] (a 416
    /// built by the handler).
    pub fn of_status(code: StatusCode) -> Reason {
        match code {
            StatusCode::CONFLICT => Reason::Conflict,
            StatusCode::PAYLOAD_TOO_LARGE => Reason::TooLarge,
            StatusCode::NOT_IMPLEMENTED => Reason::Unsupported,
            c if c.is_client_error() => Reason::InvalidInput,
            _ => Reason::Io,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindOp {
    kind: &'static str,
    op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindOpReason {
    kind: &'static str,
    op: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabel {
    api: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobReason {
    r#type: &'static str,
    reason: &'static str,
}

/// The operations each ticket kind has transfers for.
const KIND_OPS: [(TicketKind, Op); 6] = [
    (TicketKind::Image, Op::Read),
    (TicketKind::Image, Op::Write),
    (TicketKind::Image, Op::Zero),
    (TicketKind::Image, Op::Flush),
    (TicketKind::OvaImport, Op::Write),
    (TicketKind::OvaExport, Op::Read),
];

/// Methods the data API serves, each its own `method` label; any other
/// is `other`, so a client cannot add series.
const METHODS: [&str; 8] = [
    "GET", "PUT", "PATCH", "OPTIONS", "HEAD", "POST", "DELETE", "other",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Which server-side job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobType {
    /// `{"type": "import"}`.
    Import,
    /// `{"type": "export"}`.
    Export,
}

impl JobType {
    fn name(self) -> &'static str {
        match self {
            JobType::Import => "import",
            JobType::Export => "export",
        }
    }
}

/// Which API a connection serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// The HTTPS data API.
    Data,
    /// The control API (Unix socket or loopback TCP).
    Control,
}

impl ApiKind {
    fn name(self) -> &'static str {
        match self {
            ApiKind::Data => "data",
            ApiKind::Control => "control",
        }
    }
}

/// How a TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer sent something that is not an acceptable handshake, or
    /// closed the connection.
    Error,
    /// The handshake did not complete within `data.tls_handshake_timeout`.
    Timeout,
}

/// The server's registry and every metric in it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    received: Family<KindOp, Counter>,
    sent: Family<KindOp, Counter>,
    zeroed: Family<KindOp, Counter>,
    started: Family<KindOp, Counter>,
    succeeded: Family<KindOp, Counter>,
    failed: Family<KindOpReason, Counter>,
    cancelled: Family<KindOpReason, Counter>,
    active: Family<KindOp, Gauge>,
    duration: Family<KindOp, Histogram, fn() -> Histogram>,
    digest_mismatches: Counter,
    handshake_failures: Family<ReasonLabel, Counter>,
    connections: Family<ApiLabel, Gauge>,
    requests: Family<RequestLabels, Counter>,
    jobs_started: Family<JobLabel, Counter>,
    jobs_succeeded: Family<JobLabel, Counter>,
    jobs_failed: Family<JobReason, Counter>,
    jobs_cancelled: Family<JobLabel, Counter>,
    /// Handles on the series of each of [`KIND_OPS`], in its order.
    transfers: Vec<Arc<Series>>,
    /// Handles on `requests`, [`METHODS`] by [`STATUS_CLASSES`].
    request_counts: Vec<Counter>,
}

/// Handles on every series of one kind and op, taken when the registry is
/// made: a transfer counts through them without looking anything up
/// (a `Family` lookup takes a read lock and hashes the labels).
#[derive(Debug)]
struct Series {
    /// The bytes counter; `None` for a flush.
    bytes: Option<Counter>,
    started: Counter,
    succeeded: Counter,
    /// By [`Reason::FAILED`].
    failed: Vec<Counter>,
    /// By [`Reason::CANCELLED`].
    cancelled: Vec<Counter>,
    active: Gauge,
    duration: Histogram,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every series at zero.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("ovaio"),
            received: Family::default(),
            sent: Family::default(),
            zeroed: Family::default(),
            started: Family::default(),
            succeeded: Family::default(),
            failed: Family::default(),
            cancelled: Family::default(),
            active: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            digest_mismatches: Counter::default(),
            handshake_failures: Family::default(),
            connections: Family::default(),
            requests: Family::default(),
            jobs_started: Family::default(),
            jobs_succeeded: Family::default(),
            jobs_failed: Family::default(),
            jobs_cancelled: Family::default(),
            transfers: Vec::new(),
            request_counts: Vec::new(),
        };
        m.create_series();
        m.register()
    }

    /// Creates every series of the closed label sets, so that each is
    /// shown from the start (at 0) and a rate over it is defined before
    /// its first event; keeps handles on those counted per transfer and
    /// per request.
    fn create_series(&mut self) {
        for (kind, op) in KIND_OPS {
            let l = kind_op(kind, op);
            let bytes = match op {
                Op::Read => Some(self.sent.get_or_create_owned(&l)),
                Op::Write => Some(self.received.get_or_create_owned(&l)),
                Op::Zero => Some(self.zeroed.get_or_create_owned(&l)),
                Op::Flush => None,
            };
            self.transfers.push(Arc::new(Series {
                bytes,
                started: self.started.get_or_create_owned(&l),
                succeeded: self.succeeded.get_or_create_owned(&l),
                failed: Reason::FAILED
                    .iter()
                    .map(|&r| self.failed.get_or_create_owned(&with_reason(&l, r)))
                    .collect(),
                cancelled: Reason::CANCELLED
                    .iter()
                    .map(|&r| self.cancelled.get_or_create_owned(&with_reason(&l, r)))
                    .collect(),
                active: self.active.get_or_create_owned(&l),
                duration: self.duration.get_or_create_owned(&l),
            }));
        }
        for r in [HandshakeFailure::Error, HandshakeFailure::Timeout] {
            drop(self.handshake_failures.get_or_create(&handshake_label(r)));
        }
        for a in [ApiKind::Data, ApiKind::Control] {
            drop(self.connections.get_or_create(&ApiLabel { api: a.name() }));
        }
        for method in METHODS {
            for status in STATUS_CLASSES {
                self.request_counts.push(
                    self.requests
                        .get_or_create_owned(&RequestLabels { method, status }),
                );
            }
        }
        for t in [JobType::Import, JobType::Export] {
            let l = JobLabel { r#type: t.name() };
            drop(self.jobs_started.get_or_create(&l));
            drop(self.jobs_succeeded.get_or_create(&l));
            drop(self.jobs_cancelled.get_or_create(&l));
            for r in Reason::FAILED
                .into_iter()
                .filter(|&r| r != Reason::ClientGone)
            {
                drop(self.jobs_failed.get_or_create(&JobReason {
                    r#type: t.name(),
                    reason: r.name(),
                }));
            }
        }
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register_with_unit(
            "received",
            "Bytes taken from clients: written to an image ticket's volume, or read into an OVA import (bytes a resumed upload sends again of what was committed included)",
            Unit::Bytes,
            self.received.clone(),
        );
        r.register_with_unit(
            "sent",
            "Bytes handed to client connections in download responses",
            Unit::Bytes,
            self.sent.clone(),
        );
        r.register_with_unit(
            "zeroed",
            "Bytes of image volumes zeroed by PATCH requests",
            Unit::Bytes,
            self.zeroed.clone(),
        );
        r.register(
            "transfers_started",
            "Transfers started: data requests that move bytes, OVA uploads and downloads",
            self.started.clone(),
        );
        r.register(
            "transfers_succeeded",
            "Transfers that completed",
            self.succeeded.clone(),
        );
        r.register(
            "transfers_failed",
            "Transfers that failed, by reason class",
            self.failed.clone(),
        );
        r.register(
            "transfers_cancelled",
            "Transfers stopped because their ticket was removed or expired, or the server stopped",
            self.cancelled.clone(),
        );
        r.register(
            "transfers_active",
            "Transfers in progress",
            self.active.clone(),
        );
        r.register_with_unit(
            "transfer_duration",
            "How long transfers took, from their start to their end whatever the outcome",
            Unit::Seconds,
            self.duration.clone(),
        );
        r.register(
            "digest_mismatches",
            "OVA imports (tickets and jobs) refused by their manifest: an entry's digest differs, or a listed entry is missing",
            self.digest_mismatches.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Data API connections closed before their TLS handshake completed",
            self.handshake_failures.clone(),
        );
        r.register(
            "connections",
            "Open connections, data API ones counted from the end of their TLS handshake",
            self.connections.clone(),
        );
        r.register(
            "data_requests",
            "Data API requests answered, by method and status class",
            self.requests.clone(),
        );
        r.register(
            "jobs_started",
            "Server-side jobs started",
            self.jobs_started.clone(),
        );
        r.register(
            "jobs_succeeded",
            "Server-side jobs that completed",
            self.jobs_succeeded.clone(),
        );
        r.register(
            "jobs_failed",
            "Server-side jobs that failed, by reason class",
            self.jobs_failed.clone(),
        );
        r.register(
            "jobs_cancelled",
            "Server-side jobs deleted while running, or stopped with the server",
            self.jobs_cancelled.clone(),
        );
        self
    }

    /// The registry in the Prometheus text format, or in OpenMetrics text
    /// when `openmetrics`; with its content type.
    pub fn encode(&self, openmetrics: bool) -> (String, &'static str) {
        let mut out = String::new();
        // Writing into a String cannot fail.
        if openmetrics {
            let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
            (
                out,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
            (
                out,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )
        }
    }

    /// Starts a transfer of `op` on a ticket of `kind`.
    pub fn start(self: &Arc<Self>, kind: TicketKind, op: Op, watch: TicketWatch) -> Transfer {
        let series = match KIND_OPS.iter().position(|&ko| ko == (kind, op)) {
            Some(i) => self.transfers[i].clone(),
            // A kind without this op: counted nowhere, as the request is
            // refused before it moves anything. Not reached by the data
            // API, which starts only the transfers of KIND_OPS.
            None => Arc::new(Series::detached()),
        };
        series.started.inc();
        series.active.inc();
        Transfer(Arc::new(TransferInner {
            series,
            begun: Instant::now(),
            ended: AtomicBool::new(false),
            handed_off: AtomicBool::new(false),
            watch,
        }))
    }

    /// Counts an OVA import refused by its manifest (a digest that
    /// differs, or an entry it lists that is missing).
    pub fn digest_mismatch(&self) {
        self.digest_mismatches.inc();
    }

    /// Counts a data connection that never completed its TLS handshake.
    pub fn handshake_failed(&self, how: HandshakeFailure) {
        self.handshake_failures
            .get_or_create(&handshake_label(how))
            .inc();
    }

    /// Counts an open connection until the guard is dropped.
    pub fn connection(&self, api: ApiKind) -> ConnectionGuard {
        let gauge = self
            .connections
            .get_or_create_owned(&ApiLabel { api: api.name() });
        gauge.inc();
        ConnectionGuard(gauge)
    }

    /// Counts a data API response.
    pub fn request(&self, method: &http::Method, status: StatusCode) {
        let m = METHODS
            .iter()
            .position(|m| *m == method.as_str())
            .unwrap_or(METHODS.len() - 1);
        let s = usize::from(status.as_u16() / 100)
            .checked_sub(1)
            .filter(|&s| s < STATUS_CLASSES.len())
            .unwrap_or(STATUS_CLASSES.len() - 1);
        self.request_counts[m * STATUS_CLASSES.len() + s].inc();
    }

    /// Counts a job started.
    pub fn job_started(&self, t: JobType) {
        self.jobs_started
            .get_or_create(&JobLabel { r#type: t.name() })
            .inc();
    }

    /// Counts a job ended: `None` succeeded, else the error it ended with.
    pub fn job_ended(&self, t: JobType, error: Option<&Error>) {
        let l = JobLabel { r#type: t.name() };
        match error.map(Error::kind) {
            None => self.jobs_succeeded.get_or_create(&l).inc(),
            Some(ErrorKind::Cancelled) => self.jobs_cancelled.get_or_create(&l).inc(),
            Some(kind) => {
                if kind == ErrorKind::Integrity && t == JobType::Import {
                    self.digest_mismatch();
                }
                self.jobs_failed
                    .get_or_create(&JobReason {
                        r#type: t.name(),
                        reason: Reason::of(kind, None).name(),
                    })
                    .inc()
            }
        };
    }
}

fn kind_op(kind: TicketKind, op: Op) -> KindOp {
    KindOp {
        kind: kind.name(),
        op: op.name(),
    }
}

fn with_reason(l: &KindOp, r: Reason) -> KindOpReason {
    KindOpReason {
        kind: l.kind,
        op: l.op,
        reason: r.name(),
    }
}

fn handshake_label(how: HandshakeFailure) -> ReasonLabel {
    ReasonLabel {
        reason: match how {
            HandshakeFailure::Error => "error",
            HandshakeFailure::Timeout => "timeout",
        },
    }
}

/// Holds one connection in the `connections` gauge.
#[derive(Debug)]
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One transfer in the metrics: shared by whatever moves its bytes (a
/// request handler, a blocking thread, a response body); the first to
/// say how it ended decides. If every holder lets go without saying, the
/// client went away (or the ticket was cancelled, if it was).
#[derive(Debug, Clone)]
pub struct Transfer(Arc<TransferInner>);

#[derive(Debug)]
struct TransferInner {
    /// The series of its kind and op.
    series: Arc<Series>,
    begun: Instant,
    ended: AtomicBool,
    /// A response body counts and ends the transfer.
    handed_off: AtomicBool,
    watch: TicketWatch,
}

impl Transfer {
    /// Marks the transfer as a response body's to count and end: the
    /// handler's success is only the start of the download.
    pub fn hand_off(&self) {
        self.0.handed_off.store(true, Ordering::Release);
    }

    /// Whether [`Transfer::hand_off`] was called.
    pub fn is_handed_off(&self) -> bool {
        self.0.handed_off.load(Ordering::Acquire)
    }

    /// Counts `n` bytes moved.
    pub fn count(&self, n: u64) {
        if let Some(c) = &self.0.series.bytes {
            c.inc_by(n);
        }
    }

    /// A handle on the bytes counter, for a thread that counts without
    /// holding the transfer (and so without keeping it from ending).
    pub fn counter(&self) -> Option<Counter> {
        self.0.series.bytes.clone()
    }

    /// Ends the transfer as completed.
    pub fn succeed(&self) {
        self.0.end(None);
    }

    /// Ends the transfer with the reason for `e`.
    pub fn fail(&self, e: &Error) {
        self.fail_kind(e.kind());
    }

    /// Ends the transfer with the reason for an error of `kind`.
    pub fn fail_kind(&self, kind: ErrorKind) {
        self.0
            .end(Some(Reason::of(kind, self.0.watch.cancel_cause())));
    }

    /// Ends the transfer with the reason for an error response.
    pub fn fail_status(&self, code: StatusCode) {
        self.0.end(Some(Reason::of_status(code)));
    }

    /// Ends the transfer as abandoned: the client went away, unless the
    /// ticket was cancelled.
    pub fn abandon(&self) {
        self.fail_kind(ErrorKind::Cancelled);
    }

    /// Whether the transfer has ended.
    pub fn has_ended(&self) -> bool {
        self.0.ended.load(Ordering::Acquire)
    }
}

impl TransferInner {
    /// Records the end once: `None` succeeded, else why not.
    fn end(&self, reason: Option<Reason>) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        let s = &self.series;
        let counter = match reason {
            None => Some(&s.succeeded),
            Some(r) if r.is_cancel() => Reason::CANCELLED
                .iter()
                .position(|&x| x == r)
                .map(|i| &s.cancelled[i]),
            Some(r) => Reason::FAILED
                .iter()
                .position(|&x| x == r)
                .map(|i| &s.failed[i]),
        };
        // Every reason is in one of the lists.
        if let Some(c) = counter {
            c.inc();
        }
        s.active.dec();
        s.duration.observe(self.begun.elapsed().as_secs_f64());
    }
}

impl Series {
    /// Series registered nowhere.
    fn detached() -> Series {
        Series {
            bytes: None,
            started: Counter::default(),
            succeeded: Counter::default(),
            failed: Reason::FAILED.map(|_| Counter::default()).to_vec(),
            cancelled: Reason::CANCELLED.map(|_| Counter::default()).to_vec(),
            active: Gauge::default(),
            duration: duration_histogram(),
        }
    }
}

impl Drop for TransferInner {
    fn drop(&mut self) {
        let cause = self.watch.cancel_cause();
        self.end(Some(Reason::of(ErrorKind::Cancelled, cause)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_a_closed_set_mapped_from_kinds() {
        assert_eq!(Reason::of(ErrorKind::Cancelled, None), Reason::ClientGone);
        assert_eq!(
            Reason::of(ErrorKind::Cancelled, Some(CancelCause::Expired)),
            Reason::Expired
        );
        assert_eq!(
            Reason::of(ErrorKind::Cancelled, Some(CancelCause::Removed)),
            Reason::Removed
        );
        // A failure of its own stays that, whatever happened to the ticket.
        assert_eq!(
            Reason::of(ErrorKind::Integrity, Some(CancelCause::Removed)),
            Reason::Integrity
        );
        assert_eq!(
            Reason::of(ErrorKind::CorruptImage, None),
            Reason::InvalidInput
        );
        assert_eq!(Reason::of(ErrorKind::LimitExceeded, None), Reason::TooLarge);
        assert_eq!(Reason::of(ErrorKind::NotFound, None), Reason::Io);
        assert_eq!(Reason::of(ErrorKind::Internal, None), Reason::Internal);
        assert_eq!(
            Reason::of_status(StatusCode::RANGE_NOT_SATISFIABLE),
            Reason::InvalidInput
        );
        assert_eq!(Reason::of_status(StatusCode::CONFLICT), Reason::Conflict);
        for r in Reason::FAILED {
            assert!(!r.is_cancel(), "{r:?}");
        }
        for r in Reason::CANCELLED {
            assert!(r.is_cancel(), "{r:?}");
        }
    }

    #[test]
    fn every_series_is_shown_from_the_start() {
        let m = Metrics::new();
        let (text, ctype) = m.encode(false);
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        for line in [
            "ovaio_received_bytes_total{kind=\"image\",op=\"write\"} 0",
            "ovaio_sent_bytes_total{kind=\"ova-export\",op=\"read\"} 0",
            "ovaio_transfers_failed_total{kind=\"ova-import\",op=\"write\",reason=\"integrity\"} 0",
            "ovaio_transfers_cancelled_total{kind=\"image\",op=\"read\",reason=\"expired\"} 0",
            "ovaio_transfer_duration_seconds_bucket{kind=\"image\",op=\"write\",le=\"14400\"} 0",
            "ovaio_data_requests_total{method=\"other\",status=\"4xx\"} 0",
            "ovaio_tls_handshake_failures_total{reason=\"timeout\"} 0",
            "ovaio_digest_mismatches_total 0",
            "ovaio_jobs_failed_total{type=\"import\",reason=\"io\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let (om, ctype) = m.encode(true);
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        assert!(om.ends_with("# EOF\n"), "{om}");
    }

    /// A watch on an installed `image` ticket `t`, and the store.
    fn ticket() -> (tempfile::TempDir, crate::ticket::TicketStore, TicketWatch) {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(root.join("v.raw"), b"x").unwrap();
        let roots = crate::roots::AllowedRoots::new(std::slice::from_ref(&root)).unwrap();
        let store = crate::ticket::TicketStore::new(roots);
        let req = serde_json::from_value(serde_json::json!({
            "uuid": "t", "size": 1, "url": format!("file://{}/v.raw", root.display()),
            "ops": ["read"], "timeout": 60,
        }))
        .unwrap();
        store.add("t", req).unwrap();
        let watch = store
            .authorize("t", crate::ticket::Op::Read)
            .unwrap()
            .watch();
        (dir, store, watch)
    }

    #[test]
    fn a_transfer_ends_once_and_by_its_first_outcome() {
        let (_dir, store, watch) = ticket();
        let m = Arc::new(Metrics::new());
        let l = kind_op(TicketKind::Image, Op::Read);
        let failed = |r: Reason| m.failed.get_or_create(&with_reason(&l, r)).get();
        let cancelled = |r: Reason| m.cancelled.get_or_create(&with_reason(&l, r)).get();

        let t = m.start(TicketKind::Image, Op::Read, watch.clone());
        assert_eq!(m.active.get_or_create(&l).get(), 1);
        t.count(10);
        t.clone().count(5);
        t.succeed();
        t.fail_kind(ErrorKind::Io);
        t.abandon();
        drop(t);
        assert_eq!(m.sent.get_or_create(&l).get(), 15);
        assert_eq!(m.succeeded.get_or_create(&l).get(), 1);
        assert_eq!(failed(Reason::Io), 0);
        assert_eq!(failed(Reason::ClientGone), 0);

        // Let go of without an outcome: the client went away.
        let t = m.start(TicketKind::Image, Op::Read, watch.clone());
        let body = t.clone();
        drop(t);
        assert_eq!(failed(Reason::ClientGone), 0, "a holder is left");
        drop(body);
        assert_eq!(failed(Reason::ClientGone), 1);

        // A cancellation of the ticket is not the client's doing.
        let t = m.start(TicketKind::Image, Op::Read, watch.clone());
        store.remove("t").unwrap();
        t.fail_kind(ErrorKind::Cancelled);
        assert_eq!(cancelled(Reason::Removed), 1);
        assert_eq!(failed(Reason::ClientGone), 1);

        assert_eq!(m.started.get_or_create(&l).get(), 3);
        assert_eq!(m.active.get_or_create(&l).get(), 0);
        let (text, _) = m.encode(false);
        assert!(
            text.contains("ovaio_transfer_duration_seconds_count{kind=\"image\",op=\"read\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn requests_count_by_method_and_status_class() {
        let m = Metrics::new();
        m.request(&http::Method::PUT, StatusCode::OK);
        m.request(
            &http::Method::from_bytes(b"BREW").unwrap(),
            StatusCode::FORBIDDEN,
        );
        let get = |method, status| {
            m.requests
                .get_or_create(&RequestLabels { method, status })
                .get()
        };
        assert_eq!(get("PUT", "2xx"), 1);
        assert_eq!(get("other", "4xx"), 1);
        assert_eq!(get("GET", "2xx"), 0);
    }
}
