//! A `qemu-nbd` serving one image on a Unix socket for the length of a
//! test: started with the options vdsm uses for a transfer, awaited by
//! polling the socket, killed when dropped. qemu-nbd (qemu-utils) is
//! required: a missing one fails the test.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running qemu-nbd.
pub struct QemuNbd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl QemuNbd {
    /// Serves `image` of `format` (`raw`, `qcow2`) with `extra` options.
    pub fn start(image: &Path, format: &str, extra: &[&str]) -> QemuNbd {
        let dir = tempfile::tempdir().expect("socket dir");
        let socket = dir.path().join("nbd.sock");
        let child = Command::new("qemu-nbd")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--format={format}"))
            .args(["--persistent", "--shared=8", "--discard=unmap"])
            .args(extra)
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("qemu-nbd (qemu-utils) is required: {e}"));
        let mut q = QemuNbd {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = q.child.try_wait() {
                let mut err = String::new();
                if let Some(e) = q.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("qemu-nbd exited at start ({status}): {err}");
            }
            if UnixStream::connect(&q.socket).is_ok() {
                return q;
            }
            assert!(Instant::now() < deadline, "qemu-nbd did not listen in 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `nbd:unix:/path.sock`, the form vdsm puts in a ticket.
    pub fn url(&self) -> String {
        format!("nbd:unix:{}", self.socket.display())
    }

    /// Stops the server, so that qemu-img may open the image.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        self.kill();
    }
}
