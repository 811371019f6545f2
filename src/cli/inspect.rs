//! `ovaio inspect SRC.ova [--json] [--quick]`

use clap::Args;

use crate::error::{Error, Result};
use crate::names::printable as p;
use crate::pipeline::inspect::{InspectReport, Mode, inspect};
use crate::source;

/// Arguments of `ovaio inspect`.
#[derive(Debug, Args)]
#[command(after_help = "\
By default inspect reads the whole package and checks it as import would: \
every manifest line against the digest of its entry, and each disk's \
content format against the OVF's declaration. It exits 5 (integrity) when \
a digest differs or the manifest names an entry the package lacks, after \
printing the report.")]
pub(crate) struct InspectArgs {
    /// The OVA package, or `-` for standard input.
    source: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Headers only: read the OVF, the manifest and the first 512 bytes of
    /// each entry, skipping the rest of a regular file with seeks; verify
    /// nothing.
    #[arg(long)]
    quick: bool,
}

pub(crate) fn run(a: InspectArgs) -> Result<()> {
    let mut src = source::open(&a.source)?;
    let mode = if a.quick { Mode::Quick } else { Mode::Verify };
    let at_path = |e: Error| match &src.path {
        Some(path) => e.at_path(path),
        None => e,
    };
    let report = inspect(src.reader.as_mut(), mode).map_err(at_path)?;
    if a.json {
        let s =
            serde_json::to_string_pretty(&report).map_err(|e| Error::internal(e.to_string()))?;
        outln!("{s}")?;
    } else {
        print_table(&report)?;
    }
    // The report is out; a package that differs from its manifest still
    // fails the command.
    match report.integrity_error() {
        Some(e) => Err(at_path(e)),
        None => Ok(()),
    }
}

fn print_table(report: &InspectReport) -> Result<()> {
    outln!("OVF: {}", p(&report.ovf))?;
    if report.archive == "zip" {
        outln!("Package: zip archive (entry offsets are of each member's data in it)")?;
    } else if report.compression != "none" {
        outln!(
            "Package: tar compressed with {} (entry offsets count the decompressed tar)",
            report.compression
        )?;
    }
    if let Some(d) = &report.directory {
        outln!(
            "Directory: {}/ (every entry is under it; names here are without it)",
            p(d)
        )?;
    }
    if let Some(n) = &report.name {
        outln!("Name: {}", p(n))?;
    }
    outln!("Disks:")?;
    for d in &report.disks {
        if d.blank {
            outln!(
                "  {:<12} {:<28} capacity {:>14}  blank (no file: import creates it empty)",
                p(&d.disk_id),
                "-",
                d.capacity,
            )?;
            continue;
        }
        outln!(
            "  {:<12} {:<28} capacity {:>14}  format {} ({})",
            p(&d.disk_id),
            p(d.href.as_deref().unwrap_or("-")),
            d.capacity,
            d.detected_format.unwrap_or("?"),
            p(d.format_uri.as_deref().unwrap_or("no format URI")),
        )?;
    }
    outln!("Files:")?;
    for f in &report.files {
        outln!(
            "  {:<12} {:<28} size {:>14}  compression {}{}",
            p(&f.id),
            p(&f.href),
            f.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            f.compression,
            f.chunk_size
                .map(|c| format!(", in chunks of {c} bytes"))
                .unwrap_or_default()
        )?;
    }
    if report.manifests.is_empty() {
        outln!("Manifest: none")?;
    }
    for m in &report.manifests {
        outln!(
            "Manifest: {} ({}, {} entries)",
            p(&m.name),
            m.algorithm,
            m.entries
        )?;
    }
    outln!("Entries:")?;
    for e in &report.entries {
        outln!("  {:<40} {:>14} bytes at {}", p(&e.name), e.size, e.offset)?;
    }
    outln!("Verification:")?;
    for line in verification_lines(report) {
        outln!("  {line}")?;
    }
    Ok(())
}

/// The verdict, one line per finding: the manifest first, then each disk.
fn verification_lines(report: &InspectReport) -> Vec<String> {
    let v = &report.verification;
    let m = &v.manifest;
    let mut out = Vec::new();
    // With several manifests, each finding says which one it is from.
    let several = report.manifests.len() > 1;
    let from = |mf: &str| {
        if several {
            format!(" in {}", p(mf))
        } else {
            String::new()
        }
    };
    match m.status {
        "absent" => out.push("Manifest: none".to_owned()),
        "not verified" => out.push("Manifest: not verified (--quick)".to_owned()),
        "verified" => out.push(format!("Manifest: verified ({} entries)", m.verified)),
        _ => {
            for l in &m.lines {
                match l.status {
                    "mismatch" => out.push(format!(
                        "Manifest: MISMATCH for {}{} ({}: content is {}, manifest says {})",
                        p(&l.name),
                        from(&l.manifest),
                        l.algorithm,
                        l.actual.as_deref().unwrap_or("?"),
                        l.expected
                    )),
                    "missing" => out.push(format!(
                        "Manifest: MISSING {}{}: the manifest lists it, the package has no such entry",
                        p(&l.name),
                        from(&l.manifest)
                    )),
                    "not checked" => out.push(format!(
                        "Manifest: not checked for {}{}: its {} digest was not computed",
                        p(&l.name),
                        from(&l.manifest),
                        l.algorithm
                    )),
                    _ => {}
                }
            }
            out.push(format!(
                "Manifest: {} of {} entries verified",
                m.verified,
                m.lines.len()
            ));
        }
    }
    for d in &v.disks {
        let what = match d.status {
            "ok" => format!(
                "format ok ({}{})",
                d.content_format.unwrap_or("?"),
                if d.compression == Some("gzip") {
                    ", gzip"
                } else {
                    ""
                }
            ),
            "not checked" => "format not checked (--quick)".to_owned(),
            _ => d.findings.join("; "),
        };
        out.push(format!("{}: {what}", p(&d.href)));
    }
    out
}
