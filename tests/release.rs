//! What an adopter or a packager checks first: the version names the
//! commit it was built from, the crate package holds the sources, the
//! licences and the changelog, not the repository's test artefacts, and
//! the Debian package installs what the README says where it says.

mod support;

use std::process::Command;

use support::{Work, ovaio};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn version_names_the_commit_of_a_checkout() {
    let run = ovaio().arg("--version").run();
    run.assert_success();
    let version = run.stdout.trim();
    assert!(
        version.starts_with(&format!("ovaio {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(MANIFEST_DIR)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match commit {
        // Built from a git checkout (CI runs on a clone).
        Some(c) => assert!(version.contains(&c), "{version} should name {c}"),
        // A source package: the version stands alone.
        None => assert!(!version.contains('('), "{version}"),
    }
}

#[test]
fn the_crate_package_holds_sources_licences_and_changelog() {
    let out = Command::new(env!("CARGO"))
        .args(["package", "--list", "--allow-dirty", "--offline"])
        .current_dir(MANIFEST_DIR)
        .output()
        .expect("run cargo package --list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8_lossy(&out.stdout);
    let files: Vec<&str> = list.lines().collect();
    for needed in [
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "CHANGELOG.md",
        "README.md",
        "Cargo.lock",
        "src/main.rs",
        "src/lib.rs",
        "build.rs",
    ] {
        assert!(files.contains(&needed), "{needed} missing from the package");
    }
    for f in &files {
        assert!(
            !f.starts_with("fuzz/") && !f.starts_with(".ci/") && !f.ends_with(".ova"),
            "{f} does not belong in the package"
        );
    }
}

/// The paths the README's "Debian package" section lists in its first
/// code block.
fn readme_deb_paths() -> Vec<String> {
    let readme = std::fs::read_to_string(format!("{MANIFEST_DIR}/README.md")).expect("README");
    let section = readme
        .split("### Debian package")
        .nth(1)
        .expect("README has a Debian package section");
    let block = section
        .split("```")
        .nth(1)
        .expect("the section lists the installed paths in a code block");
    block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_debian_package_installs_what_the_readme_lists() {
    let w = Work::new();
    let out = w.mkdir("deb");
    // The package of the debug binary the tests run: the same files, and
    // no release build inside the test suite.
    let run = Command::new("bash")
        .arg(format!("{MANIFEST_DIR}/scripts/deb.sh"))
        .args(["--profile", "dev", "--no-build"])
        .env("OUT", &out)
        .current_dir(MANIFEST_DIR)
        .output()
        .expect("run scripts/deb.sh");
    assert!(
        run.status.success(),
        "scripts/deb.sh failed (is cargo-deb installed? scripts/test.sh installs it):\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let debs: Vec<_> = std::fs::read_dir(&out)
        .expect("read the output directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one .deb expected in {}", out.display());
    let deb = &debs[0];
    let name = deb
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(&format!("ovaio_{}-1_", env!("CARGO_PKG_VERSION"))),
        "{name}"
    );

    let root = w.mkdir("root");
    let control = w.mkdir("control");
    for (flag, dir) in [("-x", &root), ("-e", &control)] {
        let st = Command::new("dpkg-deb")
            .arg(flag)
            .arg(deb)
            .arg(dir)
            .status()
            .expect("run dpkg-deb");
        assert!(st.success(), "dpkg-deb {flag} failed");
    }

    let paths = readme_deb_paths();
    assert!(paths.len() >= 8, "README lists {paths:?}");
    for p in &paths {
        let f = root.join(p.trim_start_matches('/'));
        assert!(f.is_file(), "{p} is not in the package");
    }
    // The binary runs and is the one built here.
    let bin = root.join("usr/bin/ovaio");
    let v = Command::new(&bin)
        .arg("--version")
        .output()
        .expect("run the packaged binary");
    assert!(v.status.success());
    assert!(
        String::from_utf8_lossy(&v.stdout)
            .starts_with(&format!("ovaio {}", env!("CARGO_PKG_VERSION")))
    );
    // The unit starts what the package installs, with its configuration.
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/ovaio.service")).expect("unit");
    assert!(
        unit.contains("ExecStart=/usr/bin/ovaio serve --config /etc/ovaio/ovaio.toml"),
        "{unit}"
    );
    // The manual page is a gzip'd roff page of the whole command.
    let man = std::fs::read(root.join("usr/share/man/man1/ovaio.1.gz")).expect("man page");
    assert_eq!(&man[..2], &[0x1f, 0x8b], "the man page is gzip'd");
    let bash = std::fs::read_to_string(root.join("usr/share/bash-completion/completions/ovaio"))
        .expect("bash completion");
    assert!(
        bash.contains("ovaio") && bash.contains("import"),
        "bash completion"
    );

    // Control: the configuration is a conffile, the user is created and
    // systemd reloaded by the maintainer scripts.
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    assert!(
        conffiles.lines().any(|l| l == "/etc/ovaio/ovaio.toml"),
        "{conffiles}"
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    assert!(
        postinst.contains("systemd-sysusers ovaio.conf"),
        "{postinst}"
    );
    assert!(postinst.contains("systemctl daemon-reload"), "{postinst}");
    let fields = std::fs::read_to_string(control.join("control")).expect("control");
    assert!(fields.contains("Package: ovaio"), "{fields}");
    assert!(fields.contains("Depends: "), "{fields}");
}
