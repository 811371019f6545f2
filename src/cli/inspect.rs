//! `ovaio inspect SRC.ova [--json]`

use clap::Args;

use crate::error::{Error, ErrorKind, Result};
use crate::names::printable as p;
use crate::pipeline::inspect::inspect;
use crate::source;

/// Arguments of `ovaio inspect`.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The OVA package, or `-` for standard input.
    source: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: InspectArgs) -> Result<()> {
    let mut src = source::open(&a.source)?;
    let report = inspect(&mut src.reader).map_err(|e| match &src.path {
        Some(p) => e.at_path(p),
        None => e,
    })?;
    if a.json {
        let s = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?;
        println!("{s}");
        return Ok(());
    }
    println!("OVF: {}", p(&report.ovf));
    if let Some(n) = &report.name {
        println!("Name: {}", p(n));
    }
    println!("Disks:");
    for d in &report.disks {
        println!(
            "  {:<12} {:<28} capacity {:>14}  format {} ({})",
            p(&d.disk_id),
            p(d.href.as_deref().unwrap_or("-")),
            d.capacity,
            d.detected_format.unwrap_or("?"),
            p(d.format_uri.as_deref().unwrap_or("no format URI")),
        );
    }
    println!("Files:");
    for f in &report.files {
        println!(
            "  {:<12} {:<28} size {:>14}  compression {}",
            p(&f.id),
            p(&f.href),
            f.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            f.compression
        );
    }
    match &report.manifest {
        Some(m) => println!(
            "Manifest: {} ({}, {} entries)",
            p(&m.name),
            m.algorithm,
            m.entries
        ),
        None => println!("Manifest: none"),
    }
    println!("Entries:");
    for e in &report.entries {
        println!("  {:<40} {:>14} bytes at {}", p(&e.name), e.size, e.offset);
    }
    Ok(())
}
