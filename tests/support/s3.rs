//! An S3-compatible object store for the `s3://` tests: `s3s-fs`, which
//! keeps a bucket as a directory and an object as a file, checks SigV4
//! signatures against the keys it is given and implements multipart
//! uploads. `scripts/test.sh` installs it into `target/tools`; awscli, from
//! the test venv, is the independent client that lists and downloads.
//!
//! s3s-fs 0.14.1 does not implement `ListMultipartUploads`; the uploads
//! in progress are read from its root instead: `.upload-ID.json` records
//! an upload until it is completed or aborted, and each part received is
//! `.upload_id-ID.part-N` (written as `.tmp.*` and renamed when whole).

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::{Work, poll};

/// The bucket every server is started with.
const BUCKET: &str = "ovaio-test";

/// A running `s3s-fs` with one empty bucket, killed when dropped.
#[derive(Debug)]
pub struct S3Server {
    child: Option<Child>,
    root: PathBuf,
    log: PathBuf,
    endpoint: String,
    access_key: String,
    secret_key: String,
}

impl S3Server {
    /// Starts a server on a port of its choosing, with fresh random keys,
    /// storing under a fresh directory of `work` (`s3`, `s3-2`, ...), and
    /// waits until it answers. Panics when s3s-fs is not installed: these
    /// tests have no other judge.
    pub fn start(work: &Work) -> S3Server {
        let bin = s3s_fs();
        let dir = (1..)
            .map(|n| match n {
                1 => work.path("s3"),
                n => work.path(&format!("s3-{n}")),
            })
            .find(|p| !p.exists())
            .expect("a free directory name");
        let root = dir.join("root");
        fs::create_dir_all(root.join(BUCKET)).expect("create the bucket directory");
        let log = dir.join("s3s-fs.log");
        let out = File::create(&log).expect("create the s3s-fs log");
        let err = out.try_clone().expect("dup the s3s-fs log");
        let access_key = random_hex(10);
        let secret_key = random_hex(20);
        // Port 0: the server binds a free port and logs which, so no other
        // process can be listening where the tests connect.
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .arg("--access-key")
            .arg(&access_key)
            .arg("--secret-key")
            .arg(&secret_key)
            .arg(&root)
            .env("RUST_LOG", "s3s_fs=info,warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut s = S3Server {
            child: Some(child),
            root,
            log,
            endpoint: String::new(),
            access_key,
            secret_key,
        };
        let port = poll("s3s-fs listening", || {
            let text = fs::read_to_string(&s.log).unwrap_or_default();
            if let Some(port) = listening_port(&text) {
                return Some(port);
            }
            let child = s.child.as_mut().expect("running");
            if let Ok(Some(status)) = child.try_wait() {
                panic!("s3s-fs exited at start ({status}):\n{text}");
            }
            None
        });
        s.endpoint = format!("http://127.0.0.1:{port}");
        // It answers a signed request with our keys, and awscli is there.
        let keys = s.list();
        assert!(keys.is_empty(), "a fresh bucket lists {keys:?}");
        s
    }

    /// The `AWS_*` variables that point `ovaio` at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".to_owned(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".to_owned(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), self.secret_key.clone()),
            ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
        ]
    }

    /// `s3://BUCKET/key`.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{BUCKET}/{key}")
    }

    /// The file that holds the object `key` once it exists.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(BUCKET).join(key)
    }

    /// The keys of the bucket, as `aws s3api list-objects-v2` lists them.
    pub fn list(&self) -> Vec<String> {
        let out = self.aws(&["s3api", "list-objects-v2", "--bucket", BUCKET]);
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("list-objects-v2 answered no JSON ({e}):\n{out}"));
        v["Contents"]
            .as_array()
            .map(|objects| {
                objects
                    .iter()
                    .map(|o| o["Key"].as_str().expect("Key").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Downloads the object `key` into `dest` with `aws s3api get-object`.
    pub fn download(&self, key: &str, dest: &Path) {
        let dest = dest.to_str().expect("UTF-8 path");
        self.aws(&[
            "s3api",
            "get-object",
            "--bucket",
            BUCKET,
            "--key",
            key,
            dest,
        ]);
    }

    /// The ids of the multipart uploads neither completed nor aborted.
    pub fn uploads_in_progress(&self) -> Vec<String> {
        self.root_names()
            .iter()
            .filter_map(|n| n.strip_prefix(".upload-")?.strip_suffix(".json"))
            .map(str::to_owned)
            .collect()
    }

    /// How many whole parts of uploads in progress the server holds.
    pub fn parts_stored(&self) -> usize {
        self.root_names()
            .iter()
            .filter(|n| n.starts_with(".upload_id-"))
            .count()
    }

    /// What the server logged so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn root_names(&self) -> Vec<String> {
        fs::read_dir(&self.root)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.root.display()))
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    /// Runs awscli against this server with its keys; returns stdout.
    fn aws(&self, args: &[&str]) -> String {
        let aws = aws();
        let out = Command::new(&aws)
            .arg("--endpoint-url")
            .arg(&self.endpoint)
            .args(["--output", "json"])
            .args(args)
            .envs(self.env())
            .env("AWS_DEFAULT_REGION", "us-east-1")
            // No profile or credentials file of the machine's.
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", aws.display()));
        assert!(
            out.status.success(),
            "aws {args:?} failed ({}):\n{}{}\ns3s-fs log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The s3s-fs binary: `$OVAIO_TEST_S3S`, else `target/tools/bin/s3s-fs`
/// (installed by `scripts/test.sh`).
fn s3s_fs() -> PathBuf {
    let p = match std::env::var_os("OVAIO_TEST_S3S") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/s3s-fs"),
    };
    assert!(
        p.is_file(),
        "s3s-fs, the object store the s3:// tests run against, is missing at {}: \
         run scripts/test.sh (it installs s3s-fs 0.14.1 into target/tools) or set OVAIO_TEST_S3S",
        p.display()
    );
    p
}

/// awscli, next to the test venv's Python.
fn aws() -> PathBuf {
    let python = super::server::python();
    let p = python.with_file_name("aws");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/test.sh (it installs awscli into the test venv)",
        p.display()
    );
    p
}

/// The port of s3s-fs's `server is running at http://HOST:PORT` line.
fn listening_port(log: &str) -> Option<u16> {
    let rest = log.split("server is running at http://").nth(1)?;
    let addr = rest.split_whitespace().next()?;
    addr.rsplit_once(':')?.1.parse().ok()
}

/// `bytes` random bytes from the kernel, in hex.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
