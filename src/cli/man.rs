//! `ovaio man`: the manual page, in roff, generated from the command-line
//! definitions. It is one page, ovaio(1), holding every subcommand's
//! synopsis and options, so that installing a single file documents the
//! whole command.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_mangen::Man;

use crate::error::{Error, ErrorKind, Result};

/// Arguments of `ovaio man` (none).
#[derive(Debug, Args)]
pub(crate) struct ManArgs {}

pub(crate) fn run(_: ManArgs) -> Result<()> {
    let page = render().map_err(|e| Error::wrap(ErrorKind::Io, e))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&page)
        .and_then(|()| out.flush())
        .map_err(|e| Error::wrap(ErrorKind::Io, e))
}

/// The whole page: the top-level command's sections, then one section per
/// subcommand with its own synopsis, description and options as
/// subsections.
fn render() -> std::io::Result<Vec<u8>> {
    let mut cmd = super::Cli::command();
    // Sets every subcommand's full name (`ovaio import`) for its synopsis.
    cmd.build();
    let top = Man::new(cmd.clone()).title("OVAIO");
    let mut parts = Vec::new();
    top.render_title(&mut parts)?;
    top.render_name_section(&mut parts)?;
    top.render_synopsis_section(&mut parts)?;
    top.render_description_section(&mut parts)?;
    top.render_options_section(&mut parts)?;
    // `help` only repeats what this page says.
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let man = Man::new(sub.clone());
        let name = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
        writeln!(parts, ".SH \"{}\"", name.to_uppercase())?;
        let mut sections = Vec::new();
        man.render_synopsis_section(&mut sections)?;
        man.render_description_section(&mut sections)?;
        man.render_options_section(&mut sections)?;
        // A subcommand's sections become subsections of its own section;
        // section headings are the only lines clap_mangen starts with `.SH`.
        for line in String::from_utf8_lossy(&sections).lines() {
            match line.strip_prefix(".SH ") {
                Some(heading) => writeln!(parts, ".SS {heading}")?,
                None => writeln!(parts, "{line}")?,
            }
        }
    }
    top.render_version_section(&mut parts)?;
    // Each rendered part starts with the same two-line preamble (it defines
    // the apostrophe string); the page needs it once, at its top.
    let mut page = Vec::new();
    let mut seen = Vec::new();
    for line in String::from_utf8_lossy(&parts).lines() {
        if line.starts_with(".ie \\n(.g ") || line.starts_with(".el .ds Aq ") {
            if seen.contains(&line) {
                continue;
            }
            seen.push(line);
        }
        writeln!(page, "{line}")?;
    }
    Ok(page)
}
