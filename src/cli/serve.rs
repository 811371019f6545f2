//! `ovaio serve [--config FILE]`: the data and control APIs, and what a
//! service manager needs from them: with `NOTIFY_SOCKET` set (systemd's
//! `Type=notify`) the server says `READY=1` once both APIs listen,
//! `RELOADING=1` then `READY=1` around a SIGHUP's certificate reload, and
//! `STOPPING=1` when asked to stop. The messages go through the
//! `sd-notify` crate (a datagram to the socket, abstract names included).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use sd_notify::NotifyState;

use crate::error::{Error, ErrorKind, Result};
use crate::server::config::{LogFormat, ServeConfig};
use crate::server::tls::ReloadableCert;

/// Arguments of `ovaio serve`; flags override the configuration file,
/// which overrides the embedded defaults.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML configuration file (see the README for its keys).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data API (HTTPS) address [default: 127.0.0.1:54322].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Storage root: every ticket and job path must lie under one; repeat
    /// for several [default: STATE_DIR/storage].
    #[arg(long = "root", value_name = "DIR")]
    roots: Vec<PathBuf>,
    /// Directory for the generated certificate and the control socket
    /// [default: $OVAIO_STATE_DIR, /var/lib/ovaio for root, else ~/.local/state/ovaio].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Also serve the data API as plain HTTP on this Unix socket, for
    /// clients on this host (advertised in OPTIONS as `unix_socket`;
    /// `ovirt_imageio` clients move to it by themselves) [default: off].
    #[arg(long, value_name = "PATH")]
    data_socket: Option<PathBuf>,
    /// Control API Unix socket [default: STATE_DIR/control.sock].
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Also serve the control API on this loopback TCP address.
    #[arg(long, value_name = "ADDR")]
    control_listen: Option<SocketAddr>,
    /// PEM certificate chain for the data API (with --key) instead of the
    /// generated self-signed one.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// PEM CA bundle trusted for remote volumes (`https://HOST/images/ID`
    /// URLs in tickets and jobs) [default: the configuration's
    /// remote.ca_file, else the system roots].
    #[arg(long, value_name = "FILE")]
    remote_ca: Option<PathBuf>,
    /// Only remote volumes on this host (`HOST` or `HOST:PORT`) may be
    /// named by tickets and jobs; repeat for several [default: the
    /// configuration's remote.allow, else any host].
    #[arg(long = "remote-allow", value_name = "HOST[:PORT]")]
    remote_allow: Vec<String>,
    /// Data API connections served at once.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Log lines on stderr as text, or as one JSON object per line (for
    /// the journal) [default: the configuration's log.format, else text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// The log format: the flag, else the configuration file's. A file
    /// that cannot be read gives text here; running reports its error.
    pub(crate) fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or_else(|| match &self.config {
            Some(p) => ServeConfig::load(p)
                .map(|c| c.log.format)
                .unwrap_or_default(),
            None => LogFormat::default(),
        })
    }

    fn config(&self) -> Result<ServeConfig> {
        let mut c = match &self.config {
            Some(p) => ServeConfig::load(p)?,
            None => ServeConfig::defaults(),
        };
        if let Some(d) = &self.state_dir {
            let default_roots = c.roots == [c.state_dir.join("storage")];
            c.state_dir = d.clone();
            if default_roots {
                c.roots = vec![d.join("storage")];
            }
        }
        if !self.roots.is_empty() {
            c.roots = self.roots.clone();
        }
        if let Some(l) = self.listen {
            c.data.listen = l;
        }
        if let Some(s) = &self.data_socket {
            c.data.socket = (!s.as_os_str().is_empty()).then(|| s.clone());
        }
        if let Some(s) = &self.control_socket {
            c.control.socket = Some(s.clone());
        }
        if let Some(l) = self.control_listen {
            c.control.listen = Some(l);
        }
        if self.cert.is_some() {
            c.data.cert = self.cert.clone();
            c.data.key = self.key.clone();
        }
        if let Some(f) = &self.remote_ca {
            c.remote.ca_file = Some(f.clone());
        }
        if !self.remote_allow.is_empty() {
            c.remote.allow = Some(self.remote_allow.clone());
        }
        if let Some(n) = self.max_connections {
            c.data.max_connections = n;
        }
        if let Some(f) = self.log_format {
            c.log.format = f;
        }
        Ok(c)
    }
}

pub(crate) fn run(a: ServeArgs) -> Result<()> {
    let cfg = a.config()?;
    crate::volume::imageio::configure(&cfg.remote)?;
    crate::s3::configure(&cfg.s3)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ovaio-serve")
        .build()
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        // Installed before anything can send it: SIGHUP's default action
        // would end the server.
        let hangup = signal(SignalKind::hangup());
        let shutdown = shutdown_signal();
        let stopping = async {
            shutdown.await;
            notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        };
        crate::server::serve(cfg, stopping, move |ep| {
            print_endpoints(ep);
            match hangup {
                Ok(h) => {
                    tokio::spawn(reload_on_hangup(h, ep.certificate.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP; the certificate cannot be reloaded"),
            }
            let status = format!("serving https://{}/images/", ep.data);
            notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        })
        .await
    })
}

/// Sends `states` to the service manager, when one asked for them.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Reloads the certificate and key on every SIGHUP. A pair that does not
/// load leaves the one in use, with an error line saying why.
async fn reload_on_hangup(mut hangup: tokio::signal::unix::Signal, cert: Arc<ReloadableCert>) {
    while hangup.recv().await.is_some() {
        // systemd 253 and later want the time with RELOADING=1.
        let mut states = vec![NotifyState::Reloading];
        states.extend(NotifyState::monotonic_usec_now().ok());
        notify(&states);
        let c = cert.clone();
        let r = tokio::task::spawn_blocking(move || c.reload()).await;
        let status = match r {
            Ok(Ok(fingerprint)) => {
                tracing::info!(cert = %cert.cert_path().display(), %fingerprint, "certificate reloaded");
                "serving; certificate reloaded".to_owned()
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e.one_line(), fingerprint = %cert.fingerprint(), "certificate not reloaded; the one in use stays");
                format!("serving; certificate reload failed: {}", e.one_line())
            }
            Err(e) => {
                tracing::error!(error = %e, "certificate reload did not finish; the one in use stays");
                "serving; certificate reload failed".to_owned()
            }
        };
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }
}

/// The start-up lines on stdout: where everything is, then `ready`.
fn print_endpoints(ep: &crate::server::Endpoints) {
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "ovaio serve: data API https://{}/images/ (certificate {}{})",
            ep.data,
            ep.cert.display(),
            if ep.cert_generated { ", generated" } else { "" }
        );
        if let Some(p) = &ep.data_socket {
            let _ = writeln!(
                out,
                "ovaio serve: data API unix:{} (plain HTTP, for clients on this host)",
                p.display()
            );
        }
        let _ = writeln!(
            out,
            "ovaio serve: control API unix:{}",
            ep.control_socket.display()
        );
        if let Some(a) = ep.control_tcp {
            let _ = writeln!(out, "ovaio serve: control API http://{a}/");
        }
        for r in &ep.roots {
            let _ = writeln!(out, "ovaio serve: storage root {}", r.display());
        }
        let _ = writeln!(
            out,
            "ovaio serve: ready (SIGHUP reloads the certificate; SIGTERM or Ctrl-C stops)"
        );
        let _ = out.flush();
    }
}

/// Completes on SIGTERM or SIGINT. The handlers are installed at the
/// call, not when the future is first polled, so that neither signal can
/// end the process by its default action once the server says it is
/// ready.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                tracing::error!("cannot install signal handlers; stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}
