//! A signal during an import cancels it: the command fails with status
//! 130 and no target, partial or final, is left behind.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Work;
use support::image::{MAIN, Source};
use support::ova::{self, Ova};

#[test]
fn sigterm_mid_import_removes_partial_targets() {
    let w = Work::new();
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Raw);
    let path = Ova::new()
        .disk(a.disk(1, "disk1.img"))
        .build(w.root(), "in.ova");
    let bytes = std::fs::read(&path).expect("read ova");
    let out = w.mkdir("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ovaio"))
        .args(["import", "-", "--dir"])
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ovaio");
    let mut stdin = child.stdin.take().expect("stdin");
    // Half the package: the disk's target exists as a partial file.
    stdin
        .write_all(&bytes[..bytes.len() / 2])
        .expect("write half");
    stdin.flush().expect("flush");
    let partial = out.join("disk1.raw.partial");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !partial.exists() {
        assert!(Instant::now() < deadline, "no partial target appeared");
        std::thread::yield_now();
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // The importer notices the flag at its next chunk: hand it the rest.
    let _ = stdin.write_all(&bytes[bytes.len() / 2..]);
    drop(stdin);
    let out_status = child.wait_with_output().expect("wait");
    assert_eq!(out_status.status.code(), Some(130), "{out_status:?}");
    let stderr = String::from_utf8_lossy(&out_status.stderr);
    assert!(stderr.contains("cancelled"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&out).expect("read out").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Starts `ovaio import - --dir OUT`, feeds it half of a package and
/// waits until its partial target exists; the pipe stays open and silent.
fn stalled_import(
    w: &Work,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    std::path::PathBuf,
) {
    let a = ova::prepare(w.root(), "a", &MAIN, Source::Raw);
    let path = Ova::new()
        .disk(a.disk(1, "disk1.img"))
        .build(w.root(), "in.ova");
    let bytes = std::fs::read(&path).expect("read ova");
    let out = w.mkdir("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ovaio"))
        .args(["import", "-", "--dir"])
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ovaio");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(&bytes[..bytes.len() / 2])
        .expect("write half");
    stdin.flush().expect("flush");
    let partial = out.join("disk1.raw.partial");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !partial.exists() {
        assert!(Instant::now() < deadline, "no partial target appeared");
        std::thread::yield_now();
    }
    (child, stdin, out)
}

fn signal(child: &std::process::Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn sigterm_while_the_input_stalls_cancels_within_a_second() {
    let w = Work::new();
    let (mut child, stdin, out) = stalled_import(&w);
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id().to_string();
    let waiter = std::thread::spawn(move || {
        let s = child.wait();
        let _ = tx.send(Instant::now());
        s
    });
    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    // The pipe stays open and sends nothing until the process is gone.
    let exited = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("still running 10 s after SIGTERM");
    let status = waiter.join().expect("waiter").expect("wait");
    let took = exited - sent;
    drop(stdin);
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
    assert_eq!(status.code(), Some(130));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut stderr_pipe, &mut stderr).expect("stderr");
    assert!(stderr.contains("cancelled"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&out).expect("read out").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_second_signal_exits_at_once_and_removes_the_partial_target() {
    let w = Work::new();
    let (mut child, stdin, out) = stalled_import(&w);
    signal(&child, "-INT");
    signal(&child, "-INT");
    let status = child.wait().expect("wait");
    drop(stdin);
    assert_eq!(status.code(), Some(130));
    let left: Vec<_> = std::fs::read_dir(&out).expect("read out").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
