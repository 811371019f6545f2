//! The README's walkthrough works when pasted: the shell block between its
//! `<!-- walkthrough:begin -->` and `<!-- walkthrough:end -->` markers is
//! run as it stands with `bash -euo pipefail` against the built binary,
//! in a scratch directory and on a free port, and what it says it does is
//! checked: the upload cut part way and resumed from the committed offset,
//! the disk imported, the OVA downloaded, both tickets deleted,
//! the server stopped. A README edit that breaks a command fails here.

mod support;

use std::ffi::OsStr;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};
use support::{Work, tool};

/// How long the whole walkthrough may take; it needs about 3 seconds.
const WALKTHROUGH_TIMEOUT: Duration = Duration::from_secs(120);

const BEGIN: &str = "<!-- walkthrough:begin -->";
const END: &str = "<!-- walkthrough:end -->";

/// The script inside the README's walkthrough markers: exactly one
/// fenced `sh` block and nothing else.
fn walkthrough() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let start = readme
        .find(BEGIN)
        .unwrap_or_else(|| panic!("README.md has no {BEGIN} marker"))
        + BEGIN.len();
    let len = readme[start..]
        .find(END)
        .unwrap_or_else(|| panic!("README.md has no {END} marker after {BEGIN}"));
    assert_eq!(
        readme.matches(BEGIN).count(),
        1,
        "README.md must mark one walkthrough"
    );
    let block = readme[start..start + len].trim();
    let script = block
        .strip_prefix("```sh\n")
        .and_then(|b| b.strip_suffix("```"))
        .unwrap_or_else(|| {
            panic!("the walkthrough markers must hold exactly one ```sh block, found:\n{block}")
        });
    assert!(
        !script.contains("```"),
        "the walkthrough markers hold more than one block:\n{block}"
    );
    script.to_owned()
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Reads a pipe to its end on a thread of its own, so that neither pipe
/// fills up while the other is read.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Control API requests the server logged (at debug level), in order:
/// `(method, path, status)`.
fn control_requests(log: &str) -> Vec<(String, String, String)> {
    const MARK: &str = "DEBUG control ";
    log.lines()
        .filter_map(|l| l.find(MARK).map(|i| &l[i + MARK.len()..]))
        .map(|fields| {
            let field = |name: &str| {
                fields
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix(name))
                    .unwrap_or_default()
                    .to_owned()
            };
            (field("method="), field("path="), field("status="))
        })
        .collect()
}

#[test]
fn readme_walkthrough_runs_as_written() {
    let script = walkthrough();
    let work = Work::new();
    let demo = work.path("demo");
    let bin = Path::new(env!("CARGO_BIN_EXE_ovaio"));
    let path = std::env::join_paths(
        std::iter::once(bin.parent().expect("binary directory").to_path_buf()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ),
    )
    .expect("PATH");

    let mut bash = Command::new("bash");
    bash.args(["-euo", "pipefail", "-c"])
        .arg(&script)
        // The walkthrough names examples/demo.ova relative to the checkout.
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PATH", path)
        // HOME too, so that nothing it might write by default lands in
        // the real one.
        .env("HOME", work.root())
        .env("DEMO", &demo)
        .env("ADDR", format!("127.0.0.1:{}", free_port()))
        // The control requests, logged at debug level, show which
        // tickets were deleted before the server stopped.
        .env("RUST_LOG", "ovaio=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so that a server the walkthrough left
    // behind (by failing before its last line) can be found and ended.
    std::os::unix::process::CommandExt::process_group(&mut bash, 0);
    let mut child = bash.spawn().expect("run bash");
    let group = Pid::from_child(&child);
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        status
    });
    let timed_out = rx.recv_timeout(WALKTHROUGH_TIMEOUT).is_err();
    // Whatever is still in the group once bash is gone (or hung) was left
    // running by the walkthrough; ending it also closes the pipes.
    let left_running = test_kill_process_group(group).is_ok();
    if timed_out || left_running {
        let _ = kill_process_group(group, Signal::KILL);
    }
    let status = waiter
        .join()
        .expect("waiter thread")
        .expect("wait for bash");
    let (out, err) = (
        stdout.join().expect("stdout reader"),
        stderr.join().expect("stderr reader"),
    );
    assert!(
        !timed_out,
        "the walkthrough did not finish within {WALKTHROUGH_TIMEOUT:?}:\n{out}\n{err}"
    );
    assert!(
        status.success(),
        "the walkthrough failed ({status}):\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        !left_running,
        "the walkthrough left processes running:\n{out}\n{err}"
    );

    // The first attempt was cut part way, and the second went on from
    // the offset the server committed, not from the start.
    let demo_ova = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.ova");
    let package_len = std::fs::metadata(demo_ova).expect("demo.ova").len();
    let resumed_at: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("resuming at byte "))
        .unwrap_or_else(|| panic!("the walkthrough printed no resume offset:\n{out}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("the resume offset is not a number ({e}):\n{out}"));
    assert!(
        resumed_at > 0 && resumed_at < package_len,
        "resumed at byte {resumed_at} of {package_len}: the first attempt was not cut part way"
    );
    assert!(
        out.contains("cut (curl exit 28)"),
        "the first attempt was not cut by its time limit:\n{out}"
    );

    // The disk imported from the upload is the demo package's disk.
    let reference = work.mkdir("reference");
    tool(
        "tar",
        &[
            OsStr::new("-xf"),
            OsStr::new(demo_ova),
            OsStr::new("-C"),
            reference.as_os_str(),
            OsStr::new("demo-disk1.qcow2"),
        ],
    );
    let demo_disk = reference.join("demo-disk1.qcow2");
    let imported = demo.join("images/demo.qcow2");
    assert!(imported.exists(), "{} was not imported", imported.display());
    let compare = |image: &PathBuf| {
        tool(
            "qemu-img",
            &[
                OsStr::new("compare"),
                OsStr::new("-f"),
                OsStr::new("qcow2"),
                OsStr::new("-F"),
                OsStr::new("qcow2"),
                demo_disk.as_os_str(),
                image.as_os_str(),
            ],
        )
    };
    compare(&imported);

    // The downloaded OVA is a tar GNU tar reads, OVF first, manifest
    // last, and its disk is the same disk again.
    let downloaded = demo.join("demo.ova");
    let listing = tool("tar", &[OsStr::new("-tf"), downloaded.as_os_str()]);
    assert_eq!(
        listing.lines().collect::<Vec<_>>(),
        ["demo.ovf", "disk1.qcow2", "demo.mf"],
        "entries of {}",
        downloaded.display()
    );
    let unpacked = work.mkdir("downloaded");
    tool(
        "tar",
        &[
            OsStr::new("-xf"),
            downloaded.as_os_str(),
            OsStr::new("-C"),
            unpacked.as_os_str(),
            OsStr::new("disk1.qcow2"),
        ],
    );
    compare(&unpacked.join("disk1.qcow2"));

    // Every ticket the walkthrough added was deleted afterwards (204),
    // before the server stopped.
    let requests = control_requests(&err);
    let added: Vec<&str> = requests
        .iter()
        .filter(|(m, p, s)| m == "PUT" && p.starts_with("/tickets/") && s == "200")
        .map(|(_, p, _)| p.as_str())
        .collect();
    assert_eq!(
        added.len(),
        2,
        "the walkthrough adds an upload and a download ticket; the server logged:\n{err}"
    );
    for ticket in added {
        let last = requests
            .iter()
            .rev()
            .find(|(m, p, _)| p == ticket && (m == "PUT" || m == "DELETE"))
            .expect("the ticket's requests");
        assert_eq!(
            (last.0.as_str(), last.2.as_str()),
            ("DELETE", "204"),
            "{ticket} was not deleted at the end:\n{err}"
        );
    }
    let stopped = err.find("INFO stopped").unwrap_or_else(|| {
        panic!("the server did not log its orderly stop:\n{err}");
    });
    let last_delete = err.rfind("method=DELETE").expect("a DELETE");
    assert!(
        last_delete < stopped,
        "the tickets were deleted only after the server stopped:\n{err}"
    );
    assert!(
        !demo.join("state/control.sock").exists(),
        "the control socket outlived the server"
    );
}
