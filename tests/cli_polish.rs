//! The command line as a new user meets it: output into a closed pipe,
//! targets that already exist, missing arguments, and error lines that say
//! each thing once.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::image::{SMALL, Source};
use support::ova::{self, Ova};
use support::{Work, ovaio};

/// Runs ovaio with `args` and standard output a pipe whose reader is gone
/// (as after `| head -1` has exited): every write fails with EPIPE.
fn into_closed_pipe(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let (reader, writer) = rustix::pipe::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_ovaio"))
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .output()
        .expect("run ovaio")
}

fn package(w: &Work) -> PathBuf {
    let p = ova::prepare(w.root(), "a", &SMALL, Source::Raw);
    Ova::new()
        .disk(p.disk(1, "disk1.raw"))
        .build(w.root(), "in.ova")
}

fn assert_quiet_141(out: &std::process::Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(141),
        "{what}: {:?}\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert!(stderr.trim().is_empty(), "{what} exits quietly: {stderr}");
}

#[test]
fn output_into_a_closed_pipe_exits_141_without_a_panic() {
    let w = Work::new();
    let pkg = package(&w);
    let out = into_closed_pipe(&["inspect".as_ref(), pkg.as_os_str()]);
    assert_quiet_141(&out, "inspect");
    let out = into_closed_pipe(&["inspect".as_ref(), "--json".as_ref(), pkg.as_os_str()]);
    assert_quiet_141(&out, "inspect --json");
    for (i, json) in [false, true].into_iter().enumerate() {
        let dir = w.mkdir(&format!("out{i}"));
        let mut args = vec![
            "import".as_ref(),
            pkg.as_os_str(),
            "--dir".as_ref(),
            dir.as_os_str(),
        ];
        if json {
            args.push("--json".as_ref());
        }
        let out = into_closed_pipe(&args);
        assert_quiet_141(&out, "import");
        // The import itself was complete before its summary was printed.
        assert!(dir.join("disk1.raw").exists());
    }
    let src = SMALL.write_raw(&w.path("small.raw"));
    let out = into_closed_pipe(&[
        "export".as_ref(),
        "--name".as_ref(),
        "vm".as_ref(),
        "--disk".as_ref(),
        format!("disk1.qcow2={}", src.display()).as_ref(),
        "-o".as_ref(),
        "-".as_ref(),
    ]);
    assert_quiet_141(&out, "export -o -");
    let out = into_closed_pipe(&["completions".as_ref(), "bash".as_ref()]);
    assert_quiet_141(&out, "completions");
}

#[test]
fn output_through_head_exits_141() {
    // A real `| head -1` on output longer than a pipe holds, so that ovaio
    // is still writing when head has gone: a package of 3,000 entries.
    let w = Work::new();
    let ovf = ova::ovf_xml(&[ova::raw_ovf_disk(1, "disk1.raw", 4096, 4096)]);
    let mut t = support::tar::TarWriter::new();
    t.file(ova::OVF_NAME, ovf.as_bytes());
    t.file("disk1.raw", &[7u8; 4096]);
    for _ in 0..3000 {
        t.file("pad", &[]);
    }
    t.end();
    let pkg = w.path("long.ova");
    t.write_to(&pkg);
    for cmd in ["inspect", "inspect --json"] {
        let script = format!(
            "'{}' {cmd} '{}' | head -1 >/dev/null; echo ${{PIPESTATUS[0]}}",
            env!("CARGO_BIN_EXE_ovaio"),
            pkg.display()
        );
        let out = Command::new("bash")
            .args(["-c", &script])
            .output()
            .expect("bash");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{cmd}: {stderr}");
        assert_eq!(stdout.trim(), "141", "{cmd}: {stderr}");
    }
}

/// `ovaio export --name vm --disk … -o OUT [--force]`.
fn export(src: &Path, out: &Path, force: bool) -> support::Outcome {
    let mut cmd = ovaio()
        .arg("export")
        .arg("--name")
        .arg("vm")
        .arg("--disk")
        .arg(format!("disk1.qcow2={}", src.display()))
        .arg("-o")
        .arg(out);
    if force {
        cmd = cmd.arg("--force");
    }
    cmd.run()
}

#[test]
fn export_refuses_an_existing_output_unless_forced() {
    let w = Work::new();
    let src = SMALL.write_raw(&w.path("small.raw"));
    let out = w.path("vm.ova");
    fs::write(&out, b"precious").expect("existing output");
    let run = export(&src, &out, false);
    run.assert_error(&["vm.ova", "exists", "--force"]);
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(fs::read(&out).expect("read"), b"precious");
    assert!(!w.path("vm.ova.partial").exists());
    export(&src, &out, true).assert_success();
    assert_eq!(support::tar::list(&out).len(), 3);
}

#[test]
fn import_refuses_existing_targets_unless_forced() {
    let w = Work::new();
    let pkg = package(&w);
    let dir = w.mkdir("out");
    fs::write(dir.join("disk1.raw"), b"precious").expect("existing target");
    let run = ovaio().arg("import").arg(&pkg).arg("--dir").arg(&dir).run();
    run.assert_error(&["disk1.raw", "exists", "--force"]);
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(fs::read(dir.join("disk1.raw")).expect("read"), b"precious");
    assert!(!dir.join("disk1.raw.partial").exists());
    ovaio()
        .arg("import")
        .arg(&pkg)
        .arg("--dir")
        .arg(&dir)
        .arg("--force")
        .run()
        .assert_success();
    assert_eq!(support::file_len(&dir.join("disk1.raw")), SMALL.size);
}

#[test]
fn missing_arguments_name_the_alternatives() {
    let w = Work::new();
    let pkg = package(&w);
    let run = ovaio().arg("import").arg(&pkg).run();
    run.assert_error(&["--dir DIR", "--disk HREF=PATH"]);
    assert_eq!(run.status.code(), Some(2));
    let run = ovaio()
        .arg("export")
        .arg("--disk")
        .arg("a=b")
        .arg("-o")
        .arg(w.path("x.ova"))
        .run();
    run.assert_error(&["--ovf FILE.ovf", "--name NAME"]);
    assert_eq!(run.status.code(), Some(2));
}

#[test]
fn error_lines_say_the_package_offset_once_and_each_name_once() {
    let w = Work::new();
    // A VMDK whose header is damaged: the decoder's own offset (within the
    // entry) becomes the one package offset of the line.
    let p = ova::prepare(w.root(), "a", &SMALL, Source::Vmdk);
    let mut vmdk = fs::read(&p.file).expect("vmdk");
    vmdk[4..8].copy_from_slice(&9u32.to_le_bytes());
    fs::write(&p.file, &vmdk).expect("damage");
    let mut disk = p.disk(1, "disk1.vmdk");
    disk.ovf.size = vmdk.len() as u64;
    let pkg = Ova::new().disk(disk).build(w.root(), "bad.ova");
    let entries = support::tar::list(&pkg);
    let data_offset = entries
        .iter()
        .find(|e| e.name == "disk1.vmdk")
        .expect("disk entry")
        .header_offset
        + 512;
    let out = w.mkdir("out");
    let run = ovaio().arg("import").arg(&pkg).arg("--dir").arg(&out).run();
    let line = run.stderr.trim().to_owned();
    run.assert_error(&[&format!("entry 'disk1.vmdk' at byte {}", data_offset + 4)]);
    assert_eq!(line.matches("at byte").count(), 1, "{line}");
    assert_eq!(line.matches("disk1.vmdk").count(), 1, "{line}");
    assert_eq!(line.matches(&*pkg.to_string_lossy()).count(), 1, "{line}");
}
