//! An HTTP origin serving one package, for imports from a URL: an
//! HTTP/1.1 server on std (one thread per connection, `Connection: close`
//! on every answer), plain or over TLS (rustls, with a self-signed
//! certificate made by rcgen), that honours `Range: bytes=N-` and
//! `If-Range`, and misbehaves on request — connections cut after so many
//! body bytes (reset or ended early), `Range` ignored, a package that
//! changes after some requests, a fixed error status, `5xx` on chosen
//! requests, redirects, no `ETag`. Every request is recorded with the
//! headers that matter for resuming and the body bytes written on its
//! connection.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::ServerConnection;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpSocket;

/// `ETag` of the package as first served (strong).
pub const ETAG_1: &str = "\"ova-v1\"";
/// `ETag` of the package once it has changed.
pub const ETAG_2: &str = "\"ova-v2\"";
/// `Last-Modified` of the package as first served.
pub const LAST_MODIFIED_1: &str = "Tue, 03 Mar 2026 10:00:00 GMT";
/// `Last-Modified` of the package once it has changed.
pub const LAST_MODIFIED_2: &str = "Tue, 03 Mar 2026 10:05:00 GMT";

/// Body bytes written per `write` call.
const CHUNK: usize = 64 << 10;

/// The send buffer asked for on every connection (the kernel doubles
/// it): what a reset throws away unsent stays small, so the bytes counted
/// as written on a cut connection are close to what left the server.
const SEND_BUFFER: u32 = 64 << 10;

/// How long a connection may stay silent before the server gives up on it.
const IDLE: Duration = Duration::from_secs(30);

/// How long [`HttpSource::requests`] waits for connections to finish.
const SETTLE: Duration = Duration::from_secs(30);

/// How a cut connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cut {
    /// An abortive close (`SO_LINGER` 0): the client reads a reset.
    #[default]
    Reset,
    /// A clean close (over TLS, `close_notify` first): the client reads a
    /// body shorter than its `Content-Length`.
    Close,
}

/// A path that answers a redirect.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// The path redirected (no query).
    pub from: String,
    /// The `Location` sent (a path or an absolute URL).
    pub to: String,
    /// 301, 302, 307 or 308.
    pub status: u16,
}

/// How the server behaves; [`Options::default`] is a well-behaved origin.
#[derive(Debug, Clone)]
pub struct Options {
    /// The path the package is served at (requests may add a query).
    pub path: String,
    /// Cut each connection after this many body bytes.
    pub reset_every: Option<u64>,
    /// How cuts end.
    pub cut: Cut,
    /// Answer every request 200 with the whole package, `Range` or not
    /// (while still sending `Accept-Ranges: bytes`, as a cache that drops
    /// `Range` in front of an origin that takes it would).
    pub ignore_range: bool,
    /// After this many requests for the package, its content, `ETag` and
    /// `Last-Modified` change ([`ETAG_2`], [`LAST_MODIFIED_2`]).
    pub change_etag_after: Option<u32>,
    /// Answer every request for the package with this status and a short
    /// text body.
    pub status: Option<u16>,
    /// Answer the package's requests of these indices (0-based, in order
    /// of arrival) with these statuses instead.
    pub status_at: HashMap<usize, u16>,
    /// Paths that redirect.
    pub redirects: Vec<Redirect>,
    /// Send `Last-Modified` only, no `ETag`.
    pub no_etag: bool,
    /// Serve `https://` with a self-signed certificate for `127.0.0.1`
    /// and `localhost` ([`HttpSource::cert_pem`]).
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            path: "/vm.ova".to_owned(),
            reset_every: None,
            cut: Cut::default(),
            ignore_range: false,
            change_etag_after: None,
            status: None,
            status_at: HashMap::new(),
            redirects: Vec::new(),
            no_etag: false,
            tls: false,
        }
    }
}

/// One request, as the server saw and answered it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Its place among all requests, in order of arrival.
    pub seq: usize,
    /// Its place among the package's requests, if it was one.
    pub index: Option<usize>,
    /// Request method.
    pub method: String,
    /// Request target as sent (path and query).
    pub target: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `If-Range` header, if any.
    pub if_range: Option<String>,
    /// Status answered.
    pub status: u16,
    /// The `ETag` answered, if any.
    pub etag: Option<String>,
    /// Package offset of the first body byte sent (the range's start on a
    /// 206, else 0).
    pub start: u64,
    /// Body bytes the socket accepted on this connection.
    pub sent: u64,
    /// Whether the server cut the connection before the body's end.
    pub cut: bool,
    /// Whether writing the body failed (the client went away).
    pub broken: bool,
}

impl Request {
    /// The start of `Range: bytes=N-`, if the header has that form.
    pub fn range_start(&self) -> Option<u64> {
        self.range
            .as_deref()?
            .strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse()
            .ok()
    }
}

#[derive(Debug, Default)]
struct State {
    requests: Vec<Request>,
    /// Requests parsed so far.
    seen: usize,
    /// Requests for the package so far.
    package_requests: usize,
    /// Connections accepted and not yet finished.
    active: usize,
}

#[derive(Debug)]
struct Shared {
    options: Options,
    /// The package as first served, then as changed.
    versions: [Arc<Vec<u8>>; 2],
    state: Mutex<State>,
    idle: Condvar,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// A running server; stops accepting when dropped.
#[derive(Debug)]
pub struct HttpSource {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// The certificate served over TLS (PEM), to be trusted by clients.
    cert_pem: Option<String>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl HttpSource {
    /// Serves `package` on 127.0.0.1 (an ephemeral port) as `options` say.
    pub fn start(package: Vec<u8>, options: Options) -> HttpSource {
        let changed = if options.change_etag_after.is_some() {
            // Same length, different bytes from the middle on.
            let mut c = package.clone();
            let half = c.len() / 2;
            c[half..].iter_mut().for_each(|b| *b ^= 0x5a);
            Arc::new(c)
        } else {
            Arc::new(Vec::new())
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP source");
        let port = listener.local_addr().expect("HTTP source address").port();
        let (tls, cert_pem) = if options.tls {
            let (config, pem) = tls_config();
            (Some(config), Some(pem))
        } else {
            (None, None)
        };
        let shared = Arc::new(Shared {
            options,
            versions: [Arc::new(package), changed],
            state: Mutex::new(State::default()),
            idle: Condvar::new(),
            tls,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, sp) = (shared.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                sh.state.lock().expect("source state").active += 1;
                let sh = sh.clone();
                thread::spawn(move || {
                    let record = serve(conn, &sh);
                    let mut s = sh.state.lock().expect("source state");
                    if let Some(r) = record {
                        s.requests.push(r);
                    }
                    s.active -= 1;
                    sh.idle.notify_all();
                });
            }
        });
        HttpSource {
            port,
            cert_pem,
            shared,
            stop,
        }
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS) followed by
    /// `path_and_query`.
    pub fn url_of(&self, path_and_query: &str) -> String {
        let scheme = if self.cert_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}{path_and_query}", self.port)
    }

    /// The certificate served over TLS, as PEM (`None` without TLS).
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }

    /// The package's URL.
    pub fn url(&self) -> String {
        self.url_of(&self.shared.options.path)
    }

    /// Every request so far, in order of arrival, once no connection is
    /// open any more (a finished client's last connection may still be
    /// closing when it exits).
    pub fn requests(&self) -> Vec<Request> {
        let deadline = Instant::now() + SETTLE;
        let mut s = self.shared.state.lock().expect("source state");
        while s.active > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "HTTP source: {} connections still open after {SETTLE:?}",
                s.active
            );
            s = self
                .shared
                .idle
                .wait_timeout(s, left)
                .expect("source state")
                .0;
        }
        let mut r = s.requests.clone();
        r.sort_by_key(|q| q.seq);
        r
    }

    /// The requests for the package (not for a redirecting path), in
    /// order of arrival.
    pub fn package_requests(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|q| q.index.is_some())
            .collect()
    }

    /// Body bytes written on every connection together.
    pub fn body_bytes(&self) -> u64 {
        self.requests().iter().map(|r| r.sent).sum()
    }
}

impl Drop for HttpSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A server configuration with a fresh self-signed certificate for
/// `127.0.0.1` and `localhost`, and that certificate as PEM.
fn tls_config() -> (Arc<rustls::ServerConfig>, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("TLS key");
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("certificate parameters");
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server certificate");
    (Arc::new(config), cert.pem())
}

/// A connection, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<ServerConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl Stream {
    /// Ends the connection cleanly: TLS `close_notify`, then FIN.
    fn finish(&mut self) {
        let tcp = match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
                &mut s.sock
            }
        };
        let _ = tcp.shutdown(Shutdown::Write);
    }
}

/// A second handle on `conn`'s socket, for the options std does not set
/// (the send buffer, `SO_LINGER`); `None` if the descriptor cannot be
/// duplicated.
fn control(conn: &TcpStream) -> Option<TcpSocket> {
    let fd = conn.as_fd().try_clone_to_owned().ok()?;
    Some(TcpSocket::from_std_stream(TcpStream::from(fd)))
}

/// Reads a request head (through the blank line); `None` if the
/// connection ends first or the head is unreasonably long.
fn read_head(conn: &mut Stream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 64 << 10 {
            return None;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// `bytes=N-` or `bytes=N-M` as the half-open range it asks for, clipped
/// to `len`; `Err(())` when it is not satisfiable.
fn parse_range(value: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let (first, last) = value.strip_prefix("bytes=")?.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let end = match last.trim() {
        "" => len,
        l => l.parse::<u64>().ok()?.saturating_add(1).min(len),
    };
    Some(if first < end {
        Ok((first, end))
    } else {
        Err(())
    })
}

/// Answers one request on `conn` and closes it; the request as recorded.
fn serve(tcp: TcpStream, sh: &Shared) -> Option<Request> {
    let _ = tcp.set_read_timeout(Some(IDLE));
    let _ = tcp.set_write_timeout(Some(IDLE));
    let _ = tcp.set_nodelay(true);
    let socket = control(&tcp);
    if let Some(s) = &socket {
        let _ = s.set_send_buffer_size(SEND_BUFFER);
    }
    let mut conn = match &sh.tls {
        None => Stream::Plain(tcp),
        Some(config) => {
            let server = ServerConnection::new(config.clone()).expect("TLS server connection");
            Stream::Tls(Box::new(rustls::StreamOwned::new(server, tcp)))
        }
    };
    let head = read_head(&mut conn)?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let header = |name: &str| {
        lines.clone().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let mut req = Request {
        method,
        range: header("range"),
        if_range: header("if-range"),
        ..Request::default()
    };
    let path = target.split('?').next().unwrap_or_default().to_owned();
    req.target = target;
    let o = &sh.options;
    {
        let mut s = sh.state.lock().expect("source state");
        req.seq = s.seen;
        s.seen += 1;
        if path == o.path {
            req.index = Some(s.package_requests);
            s.package_requests += 1;
        }
    }

    let mut headers: Vec<(&str, String)> = Vec::new();
    let mut body: Option<(Arc<Vec<u8>>, u64, u64)> = None;
    let mut text = String::new();
    if let Some(r) = o.redirects.iter().find(|r| r.from == path) {
        req.status = r.status;
        headers.push(("Location", r.to.clone()));
        text = format!("moved to {}\n", r.to);
    } else if let Some(index) = req.index {
        if let Some(&status) = o.status_at.get(&index).or(o.status.as_ref()) {
            req.status = status;
            text = format!("{status} {}\n", reason(status));
        } else if req.method != "GET" && req.method != "HEAD" {
            req.status = 405;
            text = "GET or HEAD only\n".to_owned();
        } else {
            let v = usize::from(o.change_etag_after.is_some_and(|k| index >= k as usize));
            let data = sh.versions[v].clone();
            let len = data.len() as u64;
            let (etag, modified) = [(ETAG_1, LAST_MODIFIED_1), (ETAG_2, LAST_MODIFIED_2)][v];
            let validator_holds = match &req.if_range {
                None => true,
                Some(val) => (!o.no_etag && val == etag) || val == modified,
            };
            let range = match &req.range {
                Some(r) if !o.ignore_range && validator_holds => parse_range(r, len),
                _ => None,
            };
            headers.push(("Accept-Ranges", "bytes".to_owned()));
            if !o.no_etag {
                headers.push(("ETag", etag.to_owned()));
                req.etag = Some(etag.to_owned());
            }
            headers.push(("Last-Modified", modified.to_owned()));
            match range {
                Some(Ok((start, end))) => {
                    req.status = 206;
                    req.start = start;
                    headers.push(("Content-Range", format!("bytes {start}-{}/{len}", end - 1)));
                    body = Some((data, start, end));
                }
                Some(Err(())) => {
                    req.status = 416;
                    headers.push(("Content-Range", format!("bytes */{len}")));
                }
                None => {
                    req.status = 200;
                    body = Some((data, 0, len));
                }
            }
        }
    } else {
        req.status = 404;
        text = "no such file\n".to_owned();
    }

    let length = body.as_ref().map_or(text.len() as u64, |(_, s, e)| e - s);
    let mut out = format!("HTTP/1.1 {} {}\r\n", req.status, reason(req.status));
    for (k, v) in &headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    let kind = if body.is_some() {
        "application/octet-stream"
    } else {
        "text/plain"
    };
    out.push_str(&format!(
        "Content-Type: {kind}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    ));
    if req.method != "HEAD" && body.is_none() {
        out.push_str(&text);
    }
    if conn.write_all(out.as_bytes()).is_err() {
        req.broken = true;
        return Some(req);
    }

    if let (Some((data, start, end)), true) = (body, req.method != "HEAD") {
        let limit = o.reset_every.unwrap_or(u64::MAX);
        req.cut = end - start > limit;
        let stop = start + (end - start).min(limit);
        let mut at = start;
        while at < stop {
            let upto = stop.min(at + CHUNK as u64);
            match conn.write(&data[at as usize..upto as usize]) {
                Ok(0) | Err(_) => {
                    req.broken = true;
                    break;
                }
                Ok(n) => at += n as u64,
            }
        }
        req.sent = at - start;
    }
    if req.cut && !req.broken && o.cut == Cut::Reset {
        if let Some(s) = &socket {
            let _ = s.set_zero_linger();
        }
    } else {
        // A clean end after what was written.
        conn.finish();
    }
    drop(conn);
    drop(socket);
    Some(req)
}
