//! What an adopter or a packager checks first: the version names the
//! commit it was built from, and the crate package holds the sources, the
//! licences and the changelog, not the repository's test artefacts.

mod support;

use std::process::Command;

use support::ovaio;

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
