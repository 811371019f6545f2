//! Fixtures and harness shared by the integration tests: deterministic disk
//! images converted by `qemu-img`, OVF and manifest writers, OVA archives
//! built by GNU tar or by a hand-written tar writer for hostile layouts, and
//! a runner for the real `ovaio` binary.
//!
//! Every fixture is built inside the calling test's own temporary directory,
//! so tests are hermetic and can run in parallel.

// Each test binary uses a subset of the helpers; `pub` items of this
// private module are shared between binaries, not exported.
#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod http_source;
pub mod image;
pub mod imageio;
pub mod nbd;
pub mod ova;
pub mod png;
pub mod proxy;
pub mod resume;
pub mod s3;
pub mod server;
pub mod tar;
pub mod vmdk;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

/// How long one `ovaio` run may take before it is considered hung.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`poll`] waits for what it waits for.
pub const POLL_LIMIT: Duration = Duration::from_secs(60);

/// Calls `probe` until it yields a value (every 20 ms), failing the test
/// naming `what` after [`POLL_LIMIT`].
pub fn poll<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + POLL_LIMIT;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not reached within {POLL_LIMIT:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A per-test scratch directory, removed when dropped.
#[derive(Debug)]
pub struct Work {
    dir: TempDir,
}

impl Work {
    /// A fresh, empty scratch directory.
    pub fn new() -> Work {
        let dir = tempfile::Builder::new()
            .prefix("ovaio-test-")
            .tempdir()
            .expect("create scratch dir");
        Work { dir }
    }

    /// The scratch directory itself.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `name` inside the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Creates (empty) and returns the directory `name` inside the scratch directory.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        fs::create_dir_all(&p).expect("mkdir");
        p
    }
}

/// Builder for one run of the `ovaio` binary.
#[derive(Debug, Default)]
pub struct Cmd {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
}

/// Starts a command line for the `ovaio` binary under test.
pub fn ovaio() -> Cmd {
    Cmd::default()
}

impl Cmd {
    /// Appends one argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Sets one environment variable for the run.
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Cmd {
        self.env
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// Feeds `data` on stdin, written from a separate thread while the
    /// process runs (as a pipe, not a file).
    pub fn stdin(mut self, data: Vec<u8>) -> Cmd {
        self.stdin = Some(data);
        self
    }

    /// Runs to completion (or panics after [`RUN_TIMEOUT`]).
    pub fn run(self) -> Outcome {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ovaio"));
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().expect("spawn ovaio");
        let writer = self.stdin.map(|data| {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            thread::spawn(move || {
                // The process may legitimately stop reading early (on an
                // error); a broken pipe here is not the test's concern.
                let _ = pipe.write_all(&data);
            })
        });
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        let waiter = thread::spawn(move || {
            let out = child.wait_with_output();
            let _ = tx.send(());
            out
        });
        let timed_out = rx.recv_timeout(RUN_TIMEOUT).is_err();
        if timed_out {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        let out = waiter
            .join()
            .expect("waiter thread")
            .expect("wait for ovaio");
        if let Some(w) = writer {
            w.join().expect("stdin writer thread");
        }
        assert!(
            !timed_out,
            "ovaio {:?} did not finish within {RUN_TIMEOUT:?}",
            self.args
        );
        Outcome {
            args: self.args,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// What one run of `ovaio` produced.
#[derive(Debug)]
pub struct Outcome {
    /// The arguments it ran with (for messages).
    pub args: Vec<OsString>,
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Outcome {
    /// Panics with the full output unless the run exited 0.
    pub fn assert_success(&self) -> &Outcome {
        assert!(
            self.status.success(),
            "ovaio {:?} failed ({}):\nstdout: {}\nstderr: {}",
            self.args,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Parses stdout as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "ovaio {:?}: stdout is not JSON ({e}):\n{}",
                self.args, self.stdout
            )
        })
    }

    /// Checks the failure contract: a non-zero exit that is not a crash,
    /// and exactly one line on stderr, starting with `ovaio: error: ` and
    /// containing every string of `mentions`.
    pub fn assert_error(&self, mentions: &[&str]) -> &Outcome {
        let code = self.status.code();
        assert!(
            code.is_some_and(|c| c != 0),
            "ovaio {:?} should have failed, status {}:\nstdout: {}\nstderr: {}",
            self.args,
            self.status,
            self.stdout,
            self.stderr
        );
        assert_ne!(
            code,
            Some(101),
            "ovaio {:?} panicked:\n{}",
            self.args,
            self.stderr
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "ovaio {:?}: expected one line on stderr, got:\n{}",
            self.args,
            self.stderr
        );
        let line = lines[0];
        assert!(
            line.starts_with("ovaio: error: "),
            "ovaio {:?}: stderr does not start with `ovaio: error: `: {line}",
            self.args
        );
        for m in mentions {
            assert!(
                line.contains(m),
                "ovaio {:?}: error line does not mention {m:?}: {line}",
                self.args
            );
        }
        self
    }
}

/// Panics unless `dir` exists and holds no entry at all (no target, no
/// `.partial`, no stray temporary).
pub fn assert_dir_empty(dir: &Path) {
    let left: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    assert!(
        left.is_empty(),
        "{} should be empty after a failed import, holds {left:?}",
        dir.display()
    );
}

/// Panics if `path` or `path.partial` exists.
pub fn assert_absent(path: &Path) {
    assert!(!path.exists(), "{} should not exist", path.display());
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    assert!(!partial.exists(), "{} should not exist", partial.display());
}

/// Runs an external tool, panicking with its output unless it exits 0.
pub fn tool(program: &str, args: &[&OsStr]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Size of a file in bytes.
pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .len()
}
