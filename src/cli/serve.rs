//! `ovaio serve [--config FILE]`: the data and control APIs.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, ErrorKind, Result};
use crate::server::config::ServeConfig;

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
    /// Data API connections served at once.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
}

impl ServeArgs {
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
        if let Some(n) = self.max_connections {
            c.data.max_connections = n;
        }
        Ok(c)
    }
}

pub(crate) fn run(a: ServeArgs) -> Result<()> {
    let cfg = a.config()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ovaio-serve")
        .build()
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot start the runtime: {e}")))?;
    rt.block_on(crate::server::serve(cfg, shutdown_signal(), |ep| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "ovaio serve: data API https://{}/images/ (certificate {}{})",
            ep.data,
            ep.cert.display(),
            if ep.cert_generated { ", generated" } else { "" }
        );
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
        let _ = writeln!(out, "ovaio serve: ready (SIGTERM or Ctrl-C stops)");
        let _ = out.flush();
    }))
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
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
