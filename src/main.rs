//! The `ovaio` command: parses the command line, installs logging, runs
//! the library and maps its errors to exit codes.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use ovaio::cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    ovaio::cli::init_logging(cli.verbose, cli.is_server(), cli.log_format());
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::from(141);
            }
            // A closed standard error is no reason to panic.
            let _ = writeln!(std::io::stderr(), "ovaio: error: {}", e.one_line());
            ExitCode::from(e.kind().exit_code().clamp(1, 255) as u8)
        }
    }
}

fn is_broken_pipe(e: &ovaio::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = cur {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::BrokenPipe;
        }
        cur = s.source();
    }
    false
}
