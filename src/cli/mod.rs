//! The command line: one module per subcommand. Each parses its flags into
//! a pipeline request, runs it, and prints a human or `--json` summary.

/// Writes one line to standard output. A reader that went away (`| head`)
/// comes back as an error that ends the command with status 141, never as
/// the panic `println!` would raise.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
            .map_err(|e| $crate::error::Error::from(e).with_message("writing to standard output"))
    }};
}

mod completions;
mod download;
mod export;
mod import;
mod inspect;
mod man;
mod progress;
mod serve;
mod signals;
mod upload;

use clap::{Parser, Subcommand};

use crate::error::Result;
use crate::server::config::LogFormat;

/// Streams virtual-machine disks in and out of OVA packages.
#[derive(Debug, Parser)]
#[command(name = "ovaio", version = env!("OVAIO_VERSION"), about)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); logs go to stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream an OVA into target volumes, verifying its manifest.
    Import(import::ImportArgs),
    /// Stream volumes into an OVA with qcow2 or VMDK disks, OVF first, manifest last.
    Export(export::ExportArgs),
    /// Print the OVF summary of an OVA: disks, formats, capacities, files, manifest.
    Inspect(inspect::InspectArgs),
    /// Run the HTTPS data API and the control API (tickets, jobs).
    Serve(serve::ServeArgs),
    /// Send an OVA to an ova-import ticket, or a disk to an image ticket, resuming after cuts.
    Upload(upload::UploadArgs),
    /// Fetch an ova-export ticket's OVA, or an image ticket's disk, resuming after cuts.
    Download(download::DownloadArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the manual page (roff) covering every subcommand.
    Man(man::ManArgs),
}

impl Cli {
    /// Whether the command is a long-running server (logs at info by default).
    pub fn is_server(&self) -> bool {
        matches!(self.command, Command::Serve(_))
    }

    /// How the command's log lines are written: as `serve` is told, else
    /// text.
    pub fn log_format(&self) -> LogFormat {
        match &self.command {
            Command::Serve(a) => a.log_format(),
            _ => LogFormat::Text,
        }
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Export(a) => export::run(a),
        Command::Import(a) => import::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Upload(a) => upload::run(a),
        Command::Download(a) => download::run(a),
        Command::Completions(a) => completions::run(a),
        Command::Man(a) => man::run(a),
    }
}

/// Splits a `--disk HREF=PATH[:FORMAT]` value; `formats` lists the format
/// suffixes recognised (anything else after a `:` is part of the path).
pub(crate) fn split_disk_spec<'a>(
    spec: &'a str,
    formats: &[&str],
) -> Result<(&'a str, &'a str, Option<&'a str>)> {
    let bad = || {
        crate::error::Error::new(
            crate::error::ErrorKind::InvalidArgument,
            format!(
                "--disk '{spec}': expected HREF=PATH[:{}]",
                formats.join("|")
            ),
        )
    };
    let (href, rest) = spec.split_once('=').ok_or_else(bad)?;
    if href.is_empty() || rest.is_empty() {
        return Err(bad());
    }
    Ok(match rest.rsplit_once(':') {
        Some((p, f)) if !p.is_empty() && formats.contains(&f) => (href, p, Some(f)),
        _ => (href, rest, None),
    })
}

/// Installs a `tracing` subscriber writing to stderr: `RUST_LOG` when set,
/// else warnings (info for a server) raised by each `-v`. As JSON, each
/// line is one object with `timestamp`, `level`, `fields` (`message` and
/// the event's fields), the innermost `span` and the list of `spans`.
pub fn init_logging(verbose: u8, server: bool, format: LogFormat) {
    let level = match verbose + u8::from(server) {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("ovaio={level},warn")));
    // The HTTP client's own debug lines carry whole request URLs, and a
    // remote volume's URL holds its ticket id: never logged, whatever
    // RUST_LOG asks.
    // The platform verifier logs each refused certificate as an error
    // line of its own; the refusal is the command's error already.
    for d in [
        "ureq=info",
        "ureq_proto=info",
        "rustls_platform_verifier=off",
    ] {
        if let Ok(d) = d.parse() {
            filter = filter.add_directive(d);
        }
    }
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => fmt
            .json()
            .with_ansi(false)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}
