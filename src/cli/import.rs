//! `ovaio import SRC.ova|URL|- (--disk HREF|DISKID=PATH[:raw|qcow2])... | --dir DIR [--format raw|qcow2]`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::cli::progress::Bar;
use crate::error::{Error, ErrorKind, Result};
use crate::names::printable;
use crate::pipeline::import::{DiskTarget, Importer, Targets};
use crate::pipeline::progress::Progress;
use crate::sink::partial::Existing;
use crate::source;
use crate::source::url::SourceSpec;
use crate::volume::Format as VolumeFormat;

/// Arguments of `ovaio import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The OVA package to read: a file, `-` for standard input, an
    /// http:// or https:// URL (resumed with ranges when the connection
    /// drops), or s3://BUCKET/KEY (endpoint and credentials from the
    /// AWS_* environment variables).
    source: String,
    /// Where a disk goes: `HREF=PATH[:raw|qcow2]` (HREF as in the OVF
    /// References; for a blank disk, one the OVF gives no file, its
    /// ovf:diskId); repeat for each disk. Format defaults to --format.
    /// PATH may also be an NBD URL or a remote volume,
    /// `https://HOST:PORT/images/TICKET`, written in place.
    #[arg(
        long = "disk",
        value_name = "HREF=PATH[:FORMAT]",
        conflicts_with = "dir"
    )]
    disks: Vec<String>,
    /// Write every disk to DIR/<href without extension>.<format> (a blank
    /// disk to DIR/<diskId>.<format>).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Target format: raw (sparse) or qcow2.
    #[arg(long, value_name = "raw|qcow2", default_value = "raw", value_parser = parse_format)]
    format: VolumeFormat,
    /// Print a machine-readable JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// Compute no digests and do not check the manifest (faster; for
    /// packages verified by other means).
    #[arg(long)]
    no_verify: bool,
    /// Replace targets that already exist (without it they are refused
    /// before anything is written).
    #[arg(long)]
    force: bool,
    /// PEM CA bundle trusted for remote volumes in --disk [default: the
    /// system roots].
    #[arg(long, value_name = "FILE")]
    remote_ca: Option<PathBuf>,
    /// PEM CA bundle trusted for an https:// source or the S3 endpoint
    /// [default: the system roots].
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// No progress bar even on a terminal.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_format(s: &str) -> std::result::Result<VolumeFormat, String> {
    VolumeFormat::parse(s).ok_or_else(|| format!("unknown format '{s}' (raw or qcow2)"))
}

fn parse_disk(spec: &str, default: VolumeFormat) -> Result<(String, DiskTarget)> {
    let (href, path, format) = crate::cli::split_disk_spec(spec, &["raw", "qcow2"])?;
    let net = crate::volume::NetUrl::parse(path).map_err(|why| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("--disk {href}=…: {why}"),
        )
    })?;
    Ok((
        href.to_owned(),
        DiskTarget {
            path: match &net {
                Some(u) => PathBuf::from(u.to_string()),
                None => PathBuf::from(path),
            },
            format: format.and_then(VolumeFormat::parse).unwrap_or(default),
            net,
        },
    ))
}

/// The trust for the source (`--cacert`) and for remote disks
/// (`--remote-ca`): the source's CA for every host unless a remote disk's
/// host is given its own.
fn trust(a: &ImportArgs) -> Result<()> {
    let mut cfg = crate::volume::imageio::RemoteConfig {
        ca_file: a.cacert.clone().or_else(|| a.remote_ca.clone()),
        ..Default::default()
    };
    if let (Some(_), Some(remote)) = (&a.cacert, &a.remote_ca) {
        for spec in &a.disks {
            if let Ok((_, t)) = parse_disk(spec, a.format)
                && let Some(crate::volume::NetUrl::Imageio(u)) = &t.net
            {
                cfg.ca_files.insert(u.authority(), remote.clone());
            }
        }
    }
    crate::volume::imageio::configure(&cfg)?;
    crate::s3::configure(&crate::s3::S3Config {
        ca_file: a.cacert.clone(),
        ..Default::default()
    })
}

pub(crate) fn run(a: ImportArgs) -> Result<()> {
    trust(&a)?;
    let spec = SourceSpec::parse(&a.source)
        .map_err(|why| Error::new(ErrorKind::InvalidArgument, format!("{}: {why}", a.source)))?;
    if a.dir.is_none() && a.disks.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "say where the disks go: give --dir DIR, or --disk HREF=PATH once per disk",
        ));
    }
    let targets = match &a.dir {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(
                    Error::new(ErrorKind::NotFound, "target directory does not exist").at_path(dir),
                );
            }
            Targets::Dir {
                dir: dir.clone(),
                format: a.format,
            }
        }
        None => {
            let mut map = BTreeMap::new();
            for spec in &a.disks {
                let (href, t) = parse_disk(spec, a.format)?;
                if map.insert(href.clone(), t).is_some() {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!("--disk names '{href}' twice"),
                    ));
                }
            }
            Targets::Map(map)
        }
    };
    let progress = Arc::new(Progress::new(None));
    let wake = crate::cli::signals::cancel_on_signals(&progress)?;
    let src = source::open_spec(&spec, progress.retries_counter())?;
    if let Some(n) = src.size {
        progress.set_total(n);
    }
    let src = src.wake_on(wake);
    let bar = Bar::start(progress.clone(), !a.quiet && !a.json);
    let mut importer = Importer::new(targets, progress.clone()).existing_targets(if a.force {
        Existing::Replace
    } else {
        Existing::Keep
    });
    if a.no_verify {
        importer = importer.without_verification();
    }
    let summary = importer.run(src.reader).map_err(|e| match &src.path {
        Some(p) => e.at_path(p),
        None => e,
    })?;
    drop(bar);
    if a.json {
        let mut v = serde_json::to_value(&summary).map_err(|e| Error::internal(e.to_string()))?;
        v["source"] = serde_json::Value::String(spec.to_string());
        if spec.is_remote() {
            v["resumed"] = progress.retries().into();
        }
        outln!("{v}")?;
    } else {
        for d in &summary.disks {
            let source = if d.blank {
                format!("{} (blank, created empty)", printable(&d.disk_id))
            } else {
                format!(
                    "{} ({}{}{})",
                    printable(&d.href),
                    d.source_format,
                    if d.compression == "gzip" {
                        ", gzip"
                    } else {
                        ""
                    },
                    d.chunks
                        .map(|n| format!(", {n} chunks"))
                        .unwrap_or_default()
                )
            };
            outln!(
                "{source} -> {} ({}, {} bytes)",
                printable(&d.target.to_string_lossy()),
                d.target_format,
                d.capacity
            )?;
            for w in &d.warnings {
                outln!("warning: {w}")?;
            }
        }
        let package = match (summary.archive, summary.compression) {
            ("zip", _) => " (a zip archive)".to_owned(),
            (_, "none") => String::new(),
            (_, c) => format!(" ({c}-compressed)"),
        };
        outln!(
            "imported {} disk(s) from {} bytes{package}; manifest {}",
            summary.disks.len(),
            summary.bytes_read,
            summary.manifest
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_spec_forms() {
        let (h, t) = parse_disk("a.vmdk=/x/y.img", VolumeFormat::Raw).unwrap();
        assert_eq!(h, "a.vmdk");
        assert_eq!(t.path, PathBuf::from("/x/y.img"));
        assert_eq!(t.format, VolumeFormat::Raw);
        let (_, t) = parse_disk("a.vmdk=/x/y:qcow2", VolumeFormat::Raw).unwrap();
        assert_eq!(t.format, VolumeFormat::Qcow2);
        assert_eq!(t.path, PathBuf::from("/x/y"));
        let (_, t) = parse_disk("a=/x/c:d", VolumeFormat::Raw).unwrap();
        assert_eq!(t.path, PathBuf::from("/x/c:d"));
        assert!(parse_disk("novalue", VolumeFormat::Raw).is_err());
        assert!(parse_disk("=x", VolumeFormat::Raw).is_err());
    }
}
