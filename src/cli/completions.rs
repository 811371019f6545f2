//! `ovaio completions SHELL`: a completion script generated from the
//! command-line definitions, so it always knows every subcommand and flag.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::error::{Error, ErrorKind, Result};

/// Arguments of `ovaio completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell the script is for.
    #[arg(value_enum)]
    shell: Shell,
}

pub(crate) fn run(a: CompletionsArgs) -> Result<()> {
    // Generated into memory first: the generators panic on a failed write,
    // and a closed pipe (`ovaio completions bash | head`) must end the
    // command like any other write error instead.
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut super::Cli::command(), "ovaio", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .map_err(|e| Error::wrap(ErrorKind::Io, e))
}
