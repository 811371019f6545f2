//! `ovaio download URL DST`: the package of an `ova-export` ticket, or
//! the disk of an `image` ticket as raw or qcow2; the ticket's `OPTIONS`
//! says which. Cut connections are resumed (see [`crate::client`]); `DST`
//! takes its name only when complete.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::cli::progress::Bar;
use crate::cli::upload::connect;
use crate::client::{TicketKind, image, ova};
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::progress::Progress;
use crate::volume::Format as VolumeFormat;

/// Arguments of `ovaio download`.
#[derive(Debug, Args)]
pub(crate) struct DownloadArgs {
    /// The ticket's data API URL, `https://HOST:PORT/images/TICKET`.
    url: String,
    /// Where the package or the disk goes.
    dst: PathBuf,
    /// PEM CA bundle the server's certificate is checked against
    /// [default: the system roots].
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Check no certificate at all.
    #[arg(long, conflicts_with = "cacert")]
    insecure: bool,
    /// The disk's format for an `image` ticket.
    #[arg(long, value_name = "raw|qcow2", default_value = "raw", value_parser = parse_format)]
    format: VolumeFormat,
    /// Replace DST if it exists (without it an existing file is refused
    /// before anything is fetched).
    #[arg(long)]
    force: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar even on a terminal.
    #[arg(short, long)]
    quiet: bool,
}

fn parse_format(s: &str) -> std::result::Result<VolumeFormat, String> {
    VolumeFormat::parse(s).ok_or_else(|| format!("unknown format '{s}' (raw or qcow2)"))
}

pub(crate) fn run(a: DownloadArgs) -> Result<()> {
    if !a.force && std::fs::symlink_metadata(&a.dst).is_ok() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "the destination exists (give --force to replace it)",
        )
        .at_path(&a.dst));
    }
    let (url, kind) = connect(&a.url, &a.cacert, a.insecure)?;
    let progress = Arc::new(Progress::new(None));
    let _cancel = crate::cli::signals::cancel_on_signals(&progress)?;
    let bar = Bar::start(progress.clone(), !a.quiet && !a.json);
    let summary = match kind {
        TicketKind::OvaExport => {
            let d = ova::download(&url, &a.dst, &progress)?;
            serde_json::json!({"path": d.path, "bytes": d.bytes, "resumed": d.resumed})
        }
        TicketKind::Image => {
            let (path, s) = image::download(&url, &a.dst, a.format, &progress)?;
            serde_json::json!({
                "path": path, "format": a.format.name(), "capacity": s.capacity,
                "data_bytes": s.data,
            })
        }
        TicketKind::OvaImport => {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{url} takes an upload (an ova-import ticket): use ovaio upload"),
            ));
        }
    };
    drop(bar);
    if a.json {
        outln!("{summary}")?;
    } else if !a.quiet {
        outln!("downloaded {url} to {}", a.dst.display())?;
    }
    Ok(())
}
