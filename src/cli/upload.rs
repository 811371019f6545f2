//! `ovaio upload SRC URL`: an OVA (a file, or `-` for standard input)
//! into an `ova-import` ticket, or a raw or qcow2 disk into an `image`
//! ticket; the ticket's `OPTIONS` says which. Cut connections are resumed
//! where the server stands (see [`crate::client`]).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::cli::progress::Bar;
use crate::client::ova::Package;
use crate::client::{Replay, TicketKind, image, ova, ticket_kind};
use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::progress::Progress;
use crate::volume::Format as VolumeFormat;
use crate::volume::imageio::{ImageioUrl, RemoteConfig, configure};

/// Arguments of `ovaio upload`.
#[derive(Debug, Args)]
pub(crate) struct UploadArgs {
    /// The OVA (or `-` for standard input) for an `ova-import` ticket, or
    /// the disk (raw or qcow2) for an `image` ticket.
    source: String,
    /// The ticket's data API URL, `https://HOST:PORT/images/TICKET`.
    url: String,
    /// PEM CA bundle the server's certificate is checked against
    /// [default: the system roots].
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Check no certificate at all.
    #[arg(long, conflicts_with = "cacert")]
    insecure: bool,
    /// The disk's format for an `image` ticket [default: probed].
    #[arg(long, value_name = "raw|qcow2", value_parser = parse_format)]
    format: Option<VolumeFormat>,
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

/// The URL, the trust, and the ticket's kind.
pub(crate) fn connect(
    url: &str,
    cacert: &Option<PathBuf>,
    insecure: bool,
) -> Result<(ImageioUrl, TicketKind)> {
    let url = ImageioUrl::parse(url)
        .map_err(|why| Error::new(ErrorKind::InvalidArgument, format!("URL: {why}")))?;
    configure(&RemoteConfig {
        ca_file: cacert.clone(),
        insecure,
        ..RemoteConfig::default()
    })?;
    let kind = ticket_kind(&url)?;
    Ok((url, kind))
}

pub(crate) fn run(a: UploadArgs) -> Result<()> {
    let (url, kind) = connect(&a.url, &a.cacert, a.insecure)?;
    let progress = Arc::new(Progress::new(None));
    let _cancel = crate::cli::signals::cancel_on_signals(&progress)?;
    let bar = Bar::start(progress.clone(), !a.quiet && !a.json);
    let summary = match kind {
        TicketKind::OvaImport => {
            let package = if a.source == "-" {
                Package::Stream(Replay::new(std::io::stdin().lock()))
            } else {
                let file = std::fs::File::open(&a.source)
                    .map_err(|e| Error::from(e).at_path(&a.source))?;
                let len = file
                    .metadata()
                    .map_err(|e| Error::from(e).at_path(&a.source))?
                    .len();
                progress.set_total(len);
                Package::File { file, len }
            };
            ova::upload(&url, package, &progress)?
        }
        TicketKind::Image => {
            if a.source == "-" {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "an image ticket takes a disk file, not standard input",
                ));
            }
            let s = image::upload(a.source.as_ref(), a.format, &url, &progress)?;
            serde_json::json!({
                "capacity": s.capacity, "data_bytes": s.data, "zeroed_bytes": s.zeroed,
            })
        }
        TicketKind::OvaExport => {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{url} is a download (an ova-export ticket): use ovaio download"),
            ));
        }
    };
    drop(bar);
    if a.json {
        outln!("{summary}")?;
    } else if !a.quiet {
        outln!("uploaded {} to {url}", a.source)?;
    }
    Ok(())
}
