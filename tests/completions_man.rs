//! `ovaio completions SHELL` and `ovaio man`: the scripts and the page are
//! generated from the command-line definitions, so these tests compare
//! them against those definitions, and run them through the real tools:
//! bash parses and uses the completion script, groff renders the page
//! (`scripts/test.sh` installs groff-base; without groff these fail).

mod support;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

use clap::CommandFactory;
use ovaio::cli::Cli;
use support::{Work, ovaio};

/// The subcommands a user can type, from the definitions themselves (clap's
/// own `help` aside).
fn subcommands() -> Vec<clap::Command> {
    let mut cmd = Cli::command();
    cmd.build();
    cmd.get_subcommands()
        .filter(|s| s.get_name() != "help" && !s.is_hide_set())
        .cloned()
        .collect()
}

/// The long flags of a subcommand (`--dir`), hidden ones aside.
fn long_flags(sub: &clap::Command) -> Vec<String> {
    sub.get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .map(|l| format!("--{l}"))
        .collect()
}

/// Whether rendered page text has an option entry for `flag`: a line
/// starting with it (`--dir <DIR>`) or with a short form and it
/// (`-q, --quiet`). A mention in the synopsis is not an entry.
fn documents(text: &str, flag: &str) -> bool {
    text.lines().map(str::trim_start).any(|l| {
        l.starts_with(flag)
            || l.split_once(", ")
                .is_some_and(|(short, rest)| short.starts_with('-') && rest.starts_with(flag))
    })
}

/// Runs a bash script with `args` as `$1`...; panics unless it exits 0.
fn bash(script: &str, args: &[&OsStr]) -> String {
    let out: Output = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("bash")
        .args(args)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the bash completion script offers for the words typed so far,
/// the last one being completed: the function `complete -p ovaio` names is
/// called as bash's programmable completion would.
fn bash_completions(script: &Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let out = bash(
        r#"
        source "$1"; shift
        spec=$(complete -p ovaio)
        func=$(sed -n 's/.* -F \([^ ]*\) .*/\1/p' <<<"$spec")
        [ -n "$func" ] || { echo "no completion function in: $spec" >&2; exit 1; }
        COMP_LINE=$1; COMP_POINT=${#1}; shift
        COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
        "$func" ovaio "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
        "#,
        &std::iter::once(script.as_os_str())
            .chain(std::iter::once(OsStr::new(&line)))
            .chain(words.iter().map(OsStr::new))
            .collect::<Vec<_>>(),
    );
    out.lines().map(str::to_owned).collect()
}

#[test]
fn bash_completion_parses_registers_and_completes() {
    let work = Work::new();
    let out = ovaio().arg("completions").arg("bash").run();
    out.assert_success();
    let script = work.path("ovaio.bash");
    std::fs::write(&script, &out.stdout).expect("write the script");

    // Valid bash, and sourcing it registers a completion for `ovaio`.
    bash(r#"bash -n "$1""#, &[script.as_os_str()]);
    let spec = bash(r#"source "$1"; complete -p ovaio"#, &[script.as_os_str()]);
    assert!(
        spec.contains(" -F ") && spec.trim_end().ends_with(" ovaio"),
        "complete -p ovaio: {spec}"
    );

    assert_eq!(bash_completions(&script, &["ovaio", "imp"]), ["import"]);
    let all = bash_completions(&script, &["ovaio", ""]);
    for sub in subcommands() {
        assert!(
            all.iter().any(|w| w == sub.get_name()),
            "`ovaio <TAB>` does not offer {}: {all:?}",
            sub.get_name()
        );
    }
    let import_flags = bash_completions(&script, &["ovaio", "import", "--"]);
    for flag in ["--dir", "--disk", "--format"] {
        assert!(
            import_flags.iter().any(|w| w == flag),
            "`ovaio import --<TAB>` does not offer {flag}: {import_flags:?}"
        );
    }
    let shells = bash_completions(&script, &["ovaio", "completions", ""]);
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        assert!(
            shells.iter().any(|w| w == shell),
            "`ovaio completions <TAB>` does not offer {shell}: {shells:?}"
        );
    }
}

#[test]
fn every_shell_gets_a_script_naming_every_subcommand() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = ovaio().arg("completions").arg(shell).run();
        out.assert_success();
        for sub in subcommands() {
            assert!(
                out.stdout.contains(sub.get_name()),
                "the {shell} script does not know {}",
                sub.get_name()
            );
        }
    }
    // A shell it has no generator for is a usage error.
    let tcsh = ovaio().arg("completions").arg("tcsh").run();
    assert_eq!(tcsh.status.code(), Some(2), "{}", tcsh.stderr);
    assert!(tcsh.stdout.is_empty(), "{}", tcsh.stdout);
}

#[test]
fn man_page_renders_and_documents_every_subcommand_and_flag() {
    let work = Work::new();
    let out = ovaio().arg("man").run();
    out.assert_success();
    assert!(
        out.stdout.starts_with(".ie ") || out.stdout.starts_with(".TH "),
        "not a roff page: {}",
        &out.stdout[..out.stdout.len().min(200)]
    );
    let page = work.path("ovaio.1");
    std::fs::write(&page, &out.stdout).expect("write the page");

    // groff with every warning on: the page must render without any. Plain
    // text (-P-cbou), wide lines and no hyphenation keep flags whole.
    let rendered = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P-cbou", "-rLL=300n", "-rHY=0"])
        .arg(&page)
        .output()
        .expect("run groff (scripts/test.sh installs groff-base)");
    let warnings = String::from_utf8_lossy(&rendered.stderr);
    assert!(
        rendered.status.success() && warnings.trim().is_empty(),
        "groff ({}): {warnings}",
        rendered.status
    );
    let text = String::from_utf8_lossy(&rendered.stdout).into_owned();
    assert!(text.contains("OVAIO(1)"), "no OVAIO(1) header:\n{text}");

    // One section per subcommand, each with its synopsis and flags.
    let mut starts = Vec::new();
    for sub in subcommands() {
        let heading = format!("\nOVAIO {}\n", sub.get_name().to_uppercase());
        let at = text
            .find(&heading)
            .unwrap_or_else(|| panic!("no section {heading:?} in:\n{text}"));
        starts.push((at, sub));
    }
    starts.sort_by_key(|(at, _)| *at);
    let sections: Vec<(&str, &clap::Command)> = starts
        .iter()
        .enumerate()
        .map(|(i, (at, sub))| {
            let end = starts.get(i + 1).map_or(text.len(), |(next, _)| *next);
            (&text[*at..end], sub)
        })
        .collect();
    for (section, sub) in &sections {
        let name = sub.get_name();
        assert!(
            section.contains(&format!("ovaio {name} ")),
            "section of {name} has no synopsis:\n{section}"
        );
        for flag in long_flags(sub) {
            assert!(
                documents(section, &flag),
                "section of {name} does not document {flag}:\n{section}"
            );
        }
    }
    let (import, _) = sections
        .iter()
        .find(|(_, s)| s.get_name() == "import")
        .expect("an import section");
    for flag in ["--dir", "--disk", "--format"] {
        assert!(
            documents(import, flag),
            "import does not document {flag}:\n{import}"
        );
    }
}
