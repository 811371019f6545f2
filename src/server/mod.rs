//! The HTTP front, `ovaio serve`: the HTTPS data API
//! ([`data`], imageio-compatible `/images/{ticket}`) and the control API
//! ([`control`], tickets and [`jobs`]) over one [`crate::ticket::TicketStore`].
//!
//! Each accepted connection is one tokio task running hyper's server: the
//! data API speaks HTTP/2 or HTTP/1.1 as the client chose by ALPN (see
//! [`tls::ALPN`]; HTTP/2 with flow-control windows large enough that an
//! upload is not held to the window's size per round trip), the control
//! API HTTP/1.1; blocking file and pipeline work runs on the blocking pool and
//! meets the connection through bounded channels. A data connection first
//! completes its TLS handshake within `data.tls_handshake_timeout`, among
//! at most [`MAX_PENDING_HANDSHAKES`] others, and only then takes one of
//! the `data.max_connections` slots: sockets that never start TLS cannot
//! keep clients that do from being served. Request heads are bounded in
//! size and time, transfer codings other than `chunked` are refused (501),
//! and on shutdown the listeners close, every transfer is cancelled (its
//! targets removed) and open connections get a grace period to finish.

pub mod config;
pub mod control;
pub mod data;
pub mod http;
pub mod io;
pub mod jobs;
pub mod metrics;
pub mod range;
pub mod state;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};
use tokio_rustls::TlsAcceptor;

use self::config::ServeConfig;
use self::control::ControlApi;
use self::data::DataApi;
use self::metrics::{ApiKind, HandshakeFailure, Metrics};
use crate::error::{Error, ErrorKind, Result};
use crate::limits;
use crate::source::volume::AllowedRoots;
use crate::ticket::TicketStore;

/// Control API connections at once.
const MAX_CONTROL_CONNECTIONS: usize = 64;
/// Data connections accepted but not yet holding a connection slot: in
/// their TLS handshake, or done with it and waiting for a slot. A real
/// client's handshake takes milliseconds, so this only fills up with
/// sockets that stall; it is well above a flood of a few hundred such
/// sockets and well below the usual 1024 open files a process may have.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Where a started server listens, for the start-up lines and tests.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The data API's address.
    pub data: SocketAddr,
    /// The certificate the data API presents.
    pub cert: PathBuf,
    /// Whether the certificate was generated at this start.
    pub cert_generated: bool,
    /// The data API's Unix socket, if it is served on one.
    pub data_socket: Option<PathBuf>,
    /// The control socket.
    pub control_socket: PathBuf,
    /// The control API's TCP address, if any.
    pub control_tcp: Option<SocketAddr>,
    /// Canonical storage roots.
    pub roots: Vec<PathBuf>,
    /// The data API's certificate, to reload on SIGHUP.
    pub certificate: Arc<tls::ReloadableCert>,
}

/// Runs the server until `shutdown` completes; `ready` is called once
/// every listener is bound.
pub async fn serve(
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(&Endpoints),
) -> Result<()> {
    cfg.validate()?;
    create_private_dir(&cfg.state_dir)?;
    if cfg.roots == [cfg.state_dir.join("storage")] {
        create_private_dir(&cfg.roots[0])?;
    }
    let roots = AllowedRoots::new(&cfg.roots)?;
    let canon_roots: Vec<_> = roots.paths().map(Path::to_path_buf).collect();
    sweep_stale_partials(&roots);

    let tls = match (&cfg.data.cert, &cfg.data.key) {
        (Some(c), Some(k)) => tls::TlsFiles {
            cert: c.clone(),
            key: k.clone(),
            generated: false,
        },
        _ => tls::ensure_self_signed(&cfg.state_dir.join("tls"), &[])?,
    };
    let certificate = tls::ReloadableCert::load(&tls.cert, &tls.key)?;
    let acceptor = TlsAcceptor::from(tls::server_config_for(certificate.clone())?);

    let metrics = Arc::new(Metrics::new());
    let (store, jobs) = state::open(&cfg.state_dir, roots, metrics.clone())?;
    let data_api = Arc::new(DataApi::new(
        store.clone(),
        cfg.data.clone(),
        metrics.clone(),
    ));
    let control_api =
        Arc::new(ControlApi::new(store.clone(), jobs.clone()).with_metrics(metrics.clone()));
    let uploads = data_api.clone();
    let data_api_local = data_api.clone();

    let data_listener = TcpListener::bind(cfg.data.listen)
        .await
        .map_err(|e| bind_error(e, &cfg.data.listen.to_string()))?;
    let socket_path = cfg.control_socket();
    let unix_listener = bind_unix(&socket_path, 0o600, "control")?;
    let data_unix = match &cfg.data.socket {
        Some(p) => Some(bind_unix(p, 0o660, "data")?),
        None => None,
    };
    let control_tcp = match cfg.control.listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| bind_error(e, &a.to_string()))?,
        ),
        None => None,
    };

    let endpoints = Endpoints {
        data: data_listener.local_addr()?,
        cert: tls.cert.clone(),
        cert_generated: tls.generated,
        data_socket: cfg.data.socket.clone(),
        control_socket: socket_path.clone(),
        control_tcp: match &control_tcp {
            Some(l) => Some(l.local_addr()?),
            None => None,
        },
        roots: canon_roots,
        certificate,
    };
    tracing::info!(data = %endpoints.data, control = %socket_path.display(), "serving");
    ready(&endpoints);

    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let http = {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(cfg.data.header_timeout))
            .max_buf_size(limits::READ_BUFFER.max(cfg.data.max_header_bytes))
            .keep_alive(true);
        b
    };
    let data_http = data_builder(&cfg.data);
    // A client that negotiated `http/1.1` (or nothing) is served HTTP/1.1
    // with the same settings, not sniffed for the HTTP/2 preface.
    let data_http1 = Arc::new((*data_http).clone().http1_only());

    let mut tasks = tokio::task::JoinSet::new();
    {
        let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        let slots = Arc::new(Semaphore::new(cfg.data.max_connections));
        let graceful = graceful.clone();
        let http = data_http.clone();
        let stop = stop_rx.clone();
        let handshake = Duration::from_secs(cfg.data.tls_handshake_timeout);
        let max_head = cfg.data.max_header_bytes;
        let write_timeout = Duration::from_secs(cfg.data.write_timeout);
        let waiting = Some(store.clone());
        let store = store.clone();
        let metrics = metrics.clone();
        tasks.spawn(accept_loop(
            data_listener,
            pending,
            waiting,
            stop,
            move |tcp: tokio::net::TcpStream, pending_permit| {
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let api = data_api.clone();
                let http = http.clone();
                let http1 = data_http1.clone();
                let watcher = graceful.watcher();
                let slots = slots.clone();
                let store = store.clone();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    // rustls reads the socket 4 KiB at a time: a buffer
                    // beneath it makes one receive of many of those.
                    let tcp = tokio::io::BufReader::with_capacity(limits::TCP_READ_BUFFER, tcp);
                    let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            metrics.handshake_failed(HandshakeFailure::Error);
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            metrics.handshake_failed(HandshakeFailure::Timeout);
                            return;
                        }
                    };
                    // The pending place is given back only once a slot is
                    // held, so connections waiting for a slot stay bounded
                    // too.
                    let Some(_slot) = acquire(&slots, Some(&store)).await else {
                        return;
                    };
                    drop(pending_permit);
                    let _counted = metrics.connection(ApiKind::Data);
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let io = TokioIo::new(io::WriteTimeout::new(
                        io::ReadReady::new(tls),
                        write_timeout,
                    ));
                    let svc = service(api, max_head);
                    let r = if h2 {
                        // Negotiated: no need to sniff for the preface.
                        watcher.watch(http.serve_connection(io, svc)).await
                    } else {
                        watcher.watch(http1.serve_connection(io, svc)).await
                    };
                    if let Err(e) = r {
                        tracing::info!(error = %chain(&*e), "data connection ended");
                    }
                });
            },
        ));
    }
    if let Some(l) = data_unix {
        // The same API and limits as over TLS, without the handshake: a
        // local client's transfer costs no encryption on either side.
        let slots = Arc::new(Semaphore::new(cfg.data.max_connections));
        let graceful = graceful.clone();
        let http = data_http.clone();
        let max_head = cfg.data.max_header_bytes;
        let write_timeout = Duration::from_secs(cfg.data.write_timeout);
        let api = data_api_local;
        let metrics = metrics.clone();
        tasks.spawn(accept_loop(
            UnixAccept(l),
            slots,
            Some(store.clone()),
            stop_rx.clone(),
            move |s: tokio::net::UnixStream, permit| {
                let api = api.clone();
                let http = http.clone();
                let watcher = graceful.watcher();
                let counted = metrics.connection(ApiKind::Data);
                tokio::spawn(async move {
                    let _permit = permit;
                    let _counted = counted;
                    let io = TokioIo::new(io::WriteTimeout::new(s, write_timeout));
                    if let Err(e) = watcher
                        .watch(http.serve_connection(io, service(api, max_head)))
                        .await
                    {
                        tracing::info!(error = %chain(&*e), "local data connection ended");
                    }
                });
            },
        ));
    }
    let control_conn = {
        let max_head = cfg.data.max_header_bytes;
        let graceful = graceful.clone();
        let http = http.clone();
        let metrics = metrics.clone();
        move |io: Box<dyn IoStream>, permit| {
            let api = control_api.clone();
            let http = http.clone();
            let watcher = graceful.watcher();
            let counted = metrics.connection(ApiKind::Control);
            tokio::spawn(async move {
                let _permit = permit;
                let _counted = counted;
                serve_conn(&http, TokioIo::new(io), api, max_head, watcher, "control").await;
            });
        }
    };
    let control_sem = Arc::new(Semaphore::new(MAX_CONTROL_CONNECTIONS));
    {
        let f = control_conn.clone();
        tasks.spawn(accept_loop(
            UnixAccept(unix_listener),
            control_sem.clone(),
            None,
            stop_rx.clone(),
            move |s: tokio::net::UnixStream, p| f(Box::new(s), p),
        ));
    }
    match control_tcp {
        Some(l) => {
            tasks.spawn(accept_loop(
                l,
                control_sem,
                None,
                stop_rx.clone(),
                move |s: tokio::net::TcpStream, p| control_conn(Box::new(s), p),
            ));
        }
        None => drop(control_conn),
    }

    shutdown.await;
    tracing::info!("shutting down: cancelling transfers");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    store.cancel_all();
    jobs.cancel_all();
    // The accept loops are gone, and with them every other reference.
    match Arc::try_unwrap(graceful) {
        Ok(g) => {
            if tokio::time::timeout(limits::SHUTDOWN_GRACE, g.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("connections still open after the grace period; closing them");
            }
        }
        Err(_) => tracing::warn!("connections not tracked; closing them"),
    }
    // Paused uploads have no connection to wait for: end them, and let
    // their imports remove their partial targets.
    uploads.stop_uploads(limits::SHUTDOWN_GRACE).await;
    drop(uploads);
    // Cancelled jobs remove their partial files; give them the same grace.
    let deadline = tokio::time::Instant::now() + limits::SHUTDOWN_GRACE;
    while jobs.running() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(&socket_path);
    if let Some(p) = &cfg.data.socket {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("stopped");
    Ok(())
}

/// One of the two APIs.
pub trait Api: Send + Sync + 'static {
    /// Answers one request.
    fn handle(self: Arc<Self>, req: http::Request) -> impl Future<Output = http::Response> + Send;

    /// Completes a response to a `method` request refused before it
    /// reached [`Api::handle`] (a refused head or transfer coding) with
    /// what every response of this API carries.
    fn complete(&self, _method: &::http::Method, resp: http::Response) -> http::Response {
        resp
    }
}

impl Api for DataApi {
    fn handle(self: Arc<Self>, req: http::Request) -> impl Future<Output = http::Response> + Send {
        DataApi::handle(self, req)
    }

    fn complete(&self, method: &::http::Method, resp: http::Response) -> http::Response {
        DataApi::complete(self, method, resp)
    }
}

impl Api for ControlApi {
    fn handle(self: Arc<Self>, req: http::Request) -> impl Future<Output = http::Response> + Send {
        ControlApi::handle(self, req)
    }
}

/// The data API's connection builder: HTTP/2 with the windows, frame
/// size and limits above, HTTP/1.1 as for the control API.
fn data_builder(cfg: &config::DataConfig) -> Arc<auto::Builder<TokioExecutor>> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(cfg.header_timeout))
        .max_buf_size(limits::READ_BUFFER.max(cfg.max_header_bytes))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(limits::H2_STREAM_WINDOW)
        .initial_connection_window_size(limits::H2_CONNECTION_WINDOW)
        .max_frame_size(limits::H2_MAX_FRAME)
        .max_send_buf_size(limits::H2_SEND_BUFFER)
        .max_concurrent_streams(limits::H2_MAX_STREAMS)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(cfg.header_timeout.max(20)));
    Arc::new(b)
}

/// The service answering one connection's requests: request heads over
/// `max_head` bytes get 431, bodies in a transfer coding other than
/// `chunked` 501, before any handler sees them.
fn service<A: Api>(
    api: Arc<A>,
    max_head: usize,
) -> impl hyper::service::Service<
    http::Request,
    Response = http::Response,
    Error = Infallible,
    Future = impl Future<Output = std::result::Result<http::Response, Infallible>> + Send,
> + Clone
+ Send {
    service_fn(move |req: http::Request| {
        let api = api.clone();
        async move {
            if let Some(r) = http::head_too_large(&req, max_head) {
                return Ok::<_, Infallible>(api.complete(req.method(), r));
            }
            if let Some(r) = http::unknown_transfer_coding(&req) {
                let method = req.method().clone();
                http::drain_in_background(req.into_body());
                return Ok(api.complete(&method, r));
            }
            // A HEAD answer carries no body, error texts included: over
            // HTTP/2 one would break the stream.
            let head = req.method() == ::http::Method::HEAD;
            let mut resp = api.handle(req).await;
            if head {
                *resp.body_mut() = http::empty();
            }
            Ok::<_, Infallible>(resp)
        }
    })
}

/// Serves HTTP/1.1 on one connection until it ends or the server stops
/// (the control API; see [`service`]).
async fn serve_conn<A: Api, I>(
    builder: &http1::Builder,
    io: TokioIo<I>,
    api: Arc<A>,
    max_head: usize,
    watcher: hyper_util::server::graceful::Watcher,
    what: &'static str,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let conn = builder.serve_connection(io, service(api, max_head));
    if let Err(e) = watcher.watch(conn).await {
        tracing::info!(error = %chain(&e), "{what} connection ended");
    }
}

/// A byte stream hyper can serve: a TCP or Unix socket.
pub trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> IoStream for T {}

/// A listener of some socket kind.
trait Accept: Send + 'static {
    type Stream: Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

struct UnixAccept(UnixListener);

impl Accept for UnixAccept {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        self.0.accept().await.map(|(s, _)| s)
    }
}

/// A permit of `sem`; `None` once it is closed. While none is free, the
/// inactivity clocks of `waiting`'s tickets stand still: clients are kept
/// waiting by the server, and a ticket's own client may be among them.
async fn acquire(
    sem: &Arc<Semaphore>,
    waiting: Option<&Arc<TicketStore>>,
) -> Option<OwnedSemaphorePermit> {
    match sem.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(TryAcquireError::Closed) => None,
        Err(TryAcquireError::NoPermits) => {
            let _hold = waiting.map(|s| s.hold_idle_clocks());
            sem.clone().acquire_owned().await.ok()
        }
    }
}

/// Accepts connections while a permit is free, until `stop`; see
/// [`acquire`] for `waiting`.
async fn accept_loop<L: Accept>(
    listener: L,
    sem: Arc<Semaphore>,
    waiting: Option<Arc<TicketStore>>,
    mut stop: watch::Receiver<bool>,
    on_conn: impl Fn(L::Stream, OwnedSemaphorePermit) + Send + 'static,
) {
    loop {
        let permit = tokio::select! {
            p = acquire(&sem, waiting.as_ref()) => match p {
                Some(p) => p,
                None => return,
            },
            _ = stop.changed() => return,
        };
        let stream = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        match stream {
            Ok(s) => on_conn(s, permit),
            Err(e) => {
                // Out of file descriptors and the like: back off a little
                // rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// An error with its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Removes the `.partial` files a killed process left under the roots (no
/// live process holds their lock), so their targets can be written again.
fn sweep_stale_partials(roots: &AllowedRoots) {
    for root in roots.paths() {
        match roots.open_dir(root) {
            Ok(dir) => {
                let removed = crate::sink::partial::remove_stale(dir);
                if !removed.is_empty() {
                    tracing::info!(root = %root.display(), count = removed.len(), "removed stale partial files");
                }
            }
            Err(e) => {
                tracing::warn!(root = %root.display(), error = %e, "cannot sweep a storage root")
            }
        }
    }
}

fn bind_error(e: std::io::Error, what: &str) -> Error {
    Error::new(ErrorKind::Io, format!("cannot listen on {what}: {e}"))
}

/// Binds the `what` API's Unix socket with `mode`. A stale socket file
/// from an earlier run is replaced; any other file in the way is an error.
fn bind_unix(path: &Path, mode: u32, what: &str) -> Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("another server is listening on the {what} socket"),
                )
                .at_path(path));
            }
            std::fs::remove_file(path).map_err(|e| Error::from(e).at_path(path))?;
        }
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("the {what} socket path exists and is not a socket"),
            )
            .at_path(path));
        }
        Err(_) => {}
    }
    let l = UnixListener::bind(path).map_err(|e| bind_error(e, &path.display().to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::from(e).at_path(path))?;
    Ok(l)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            Error::from(e)
                .at_path(dir)
                .with_message("cannot create directory")
        })
}
