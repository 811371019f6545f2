//! `ovaio serve` settings: embedded defaults, then a TOML file, then flags.
//!
//! ```toml
//! state_dir = "/var/lib/ovaio"        # certificate, control socket
//! roots = ["/srv/images"]             # every ticket and job path lies under one
//!
//! [data]
//! listen = "127.0.0.1:54322"          # HTTPS data API
//! cert = "/etc/pki/ovaio/server.crt"  # default: generated in state_dir/tls
//! key = "/etc/pki/ovaio/server.key"
//! max_connections = 64
//! tls_handshake_timeout = 5           # seconds to complete the TLS handshake
//! header_timeout = 30                 # seconds to send a request head
//! write_timeout = 60                  # seconds a client may leave a response unread
//! socket = "/run/ovaio/data.sock"     # also plain HTTP for clients on this host; default off
//!
//! [control]
//! socket = "/run/ovaio/control.sock"  # default: state_dir/control.sock
//! listen = "127.0.0.1:54324"          # optional loopback TCP
//!
//! [remote]                            # volumes on other hosts' imageio data APIs
//! ca_file = "/etc/pki/ovirt-engine/ca.pem"  # default: the system roots
//! allow = ["host1.example.com", "host2:54322"]  # default: any host
//! [remote.ca_files]                   # per host:port
//! "host3:54322" = "/etc/pki/host3-ca.pem"
//!                                     # (the same trust serves jobs whose source is a URL)
//!
//! [s3]                                # object storage of s3:// jobs; each unset one from AWS_*
//! endpoint = "https://s3.example.com:9000"
//! region = "us-east-1"
//! access_key_id = "…"
//! secret_access_key_file = "/etc/ovaio/s3-secret"   # or secret_access_key = "…"
//! virtual_hosted_style = false
//! ca_file = "/etc/pki/s3-ca.pem"      # besides the system roots
//!
//! [log]
//! format = "json"                     # one JSON object per line; default text
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};
pub use crate::s3::S3Config;
pub use crate::volume::imageio::RemoteConfig;

/// Default data API address (ovirt-imageio's port).
pub const DEFAULT_DATA_LISTEN: &str = "127.0.0.1:54322";
/// Default `data.tls_handshake_timeout`, seconds. A handshake is one or
/// two round trips and a signature, done in well under a second even
/// across continents or with a lost packet resent; five seconds leave a
/// wide margin and still free the place of a socket that never speaks
/// TLS six times sooner than the 30 s header timeout would.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: u64 = 5;

/// Everything `ovaio serve` needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Where the generated certificate and the control socket live.
    pub state_dir: PathBuf,
    /// Storage roots: every ticket and job path must resolve under one.
    pub roots: Vec<PathBuf>,
    /// The data API.
    pub data: DataConfig,
    /// The control API.
    pub control: ControlConfig,
    /// Remote volumes: whom to trust, which hosts to reach.
    pub remote: RemoteConfig,
    /// Object storage for `s3://` jobs.
    pub s3: S3Config,
    /// Logging.
    pub log: LogConfig,
}

/// Logging settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// How log lines are written on stderr.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line (level, fields, spans): for the journal
    /// and log collectors.
    Json,
}

/// Data API settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataConfig {
    /// HTTPS listen address.
    pub listen: SocketAddr,
    /// PEM certificate chain; `None`: generated in `state_dir/tls`.
    pub cert: Option<PathBuf>,
    /// PEM private key (with `cert`).
    pub key: Option<PathBuf>,
    /// Connections served at once, counted from the end of their TLS
    /// handshake; more wait for a slot.
    pub max_connections: usize,
    /// Largest request head (request line and headers), bytes.
    pub max_header_bytes: usize,
    /// Seconds a client may take, from the accepted connection, to
    /// complete its TLS handshake.
    pub tls_handshake_timeout: u64,
    /// Seconds a client may take to send a request head.
    pub header_timeout: u64,
    /// Seconds a client may leave response bytes unread before its
    /// connection is dropped (a stalled download).
    pub write_timeout: u64,
    /// Bytes per read or write on the volumes.
    pub buffer_size: usize,
    /// Buffers in flight between the network and the disk, per transfer.
    pub queue_depth: usize,
    /// A Unix socket also serving the data API, as plain HTTP, to clients
    /// on this host (mode 0660: the server's group may connect; tickets
    /// still authorize every request). `OPTIONS` advertises it as
    /// `unix_socket`, and an `ovirt_imageio` client on this host moves
    /// its transfer there, off TLS. `None`: not served.
    pub socket: Option<PathBuf>,
}

/// Control API settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Unix socket path; `None`: `state_dir/control.sock`.
    pub socket: Option<PathBuf>,
    /// Optional loopback TCP address (plain HTTP).
    pub listen: Option<SocketAddr>,
}

impl ServeConfig {
    /// The embedded defaults: loopback data API on 54322, state under the
    /// user's state directory, one storage root `state_dir/storage`.
    pub fn defaults() -> Self {
        let state_dir = default_state_dir();
        ServeConfig {
            roots: vec![state_dir.join("storage")],
            state_dir,
            data: DataConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 54322)),
                cert: None,
                key: None,
                max_connections: 64,
                max_header_bytes: 16 << 10,
                tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
                header_timeout: 30,
                write_timeout: 60,
                buffer_size: 1 << 20,
                queue_depth: 4,
                socket: None,
            },
            control: ControlConfig {
                socket: None,
                listen: None,
            },
            remote: RemoteConfig::default(),
            s3: S3Config::default(),
            log: LogConfig::default(),
        }
    }

    /// The defaults overridden by the TOML file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::from(e).at_path(path))?;
        Self::from_toml(&text).map_err(|e| e.at_path(path))
    }

    /// The defaults overridden by a TOML document.
    pub fn from_toml(text: &str) -> Result<Self> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("bad configuration: {}", e.message()),
            )
        })?;
        let mut c = ServeConfig::defaults();
        let state_given = file.state_dir.is_some();
        if let Some(s) = file.state_dir {
            c.state_dir = s;
        }
        match file.roots {
            Some(r) => c.roots = r,
            None if state_given => c.roots = vec![c.state_dir.join("storage")],
            None => {}
        }
        if let Some(d) = file.data {
            if let Some(l) = d.listen {
                c.data.listen = parse_addr("data.listen", &l)?;
            }
            c.data.cert = d.cert.or(c.data.cert);
            c.data.key = d.key.or(c.data.key);
            set(&mut c.data.max_connections, d.max_connections);
            set(&mut c.data.max_header_bytes, d.max_header_bytes);
            set(&mut c.data.tls_handshake_timeout, d.tls_handshake_timeout);
            set(&mut c.data.header_timeout, d.header_timeout);
            set(&mut c.data.write_timeout, d.write_timeout);
            set(&mut c.data.buffer_size, d.buffer_size);
            set(&mut c.data.queue_depth, d.queue_depth);
            if let Some(p) = d.socket {
                c.data.socket = (!p.as_os_str().is_empty()).then_some(p);
            }
        }
        if let Some(k) = file.control {
            c.control.socket = k.socket.or(c.control.socket);
            if let Some(l) = k.listen {
                c.control.listen = Some(parse_addr("control.listen", &l)?);
            }
        }
        if let Some(l) = file.log {
            set(&mut c.log.format, l.format);
        }
        if let Some(r) = file.remote {
            c.remote.ca_file = r.ca_file;
            c.remote.ca_files = r.ca_files.unwrap_or_default();
            c.remote.allow = r.allow;
        }
        if let Some(s3) = file.s3 {
            c.s3 = s3;
        }
        Ok(c)
    }

    /// Checks the values that cannot be right.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::new(ErrorKind::InvalidArgument, m));
        if self.roots.is_empty() {
            return bad("at least one storage root is needed".into());
        }
        if self.data.cert.is_some() != self.data.key.is_some() {
            return bad("data.cert and data.key go together".into());
        }
        if !(1..=65_536).contains(&self.data.max_connections) {
            return bad("data.max_connections must be 1..=65536".into());
        }
        if !(8 << 10..=1 << 20).contains(&self.data.max_header_bytes) {
            return bad("data.max_header_bytes must be 8 KiB..=1 MiB".into());
        }
        if !(4 << 10..=16 << 20).contains(&self.data.buffer_size) {
            return bad("data.buffer_size must be 4 KiB..=16 MiB".into());
        }
        if !(1..=64).contains(&self.data.queue_depth) {
            return bad("data.queue_depth must be 1..=64".into());
        }
        if self.data.header_timeout == 0
            || self.data.write_timeout == 0
            || self.data.tls_handshake_timeout == 0
        {
            return bad(
                "data.tls_handshake_timeout, data.header_timeout and data.write_timeout must be at least 1 second"
                    .into(),
            );
        }
        if let Some(p) = &self.data.socket {
            if !p.is_absolute() {
                return bad(format!(
                    "data.socket {} is not an absolute path",
                    p.display()
                ));
            }
            if *p == self.control_socket() {
                return bad(format!(
                    "data.socket {} is the control socket: the two APIs need their own",
                    p.display()
                ));
            }
        }
        if let Some(l) = self.control.listen
            && !l.ip().is_loopback()
        {
            return bad(format!(
                "control.listen {l} is not a loopback address: the control API has no authentication"
            ));
        }
        Ok(())
    }

    /// The control socket path.
    pub fn control_socket(&self) -> PathBuf {
        self.control
            .socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("control.sock"))
    }
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

fn parse_addr(field: &str, s: &str) -> Result<SocketAddr> {
    s.parse().map_err(|_| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("{field} '{s}' is not an address like 127.0.0.1:54322"),
        )
    })
}

/// `$OVAIO_STATE_DIR`, else `/var/lib/ovaio` for root, else
/// `$XDG_STATE_HOME/ovaio`, else `~/.local/state/ovaio`.
fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OVAIO_STATE_DIR") {
        return PathBuf::from(d);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/ovaio");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("ovaio");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/ovaio"),
        None => PathBuf::from("/tmp/ovaio"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    roots: Option<Vec<PathBuf>>,
    data: Option<FileData>,
    control: Option<FileControl>,
    log: Option<FileLog>,
    remote: Option<FileRemote>,
    s3: Option<S3Config>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRemote {
    ca_file: Option<PathBuf>,
    ca_files: Option<std::collections::BTreeMap<String, PathBuf>>,
    allow: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    format: Option<LogFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileData {
    listen: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    max_connections: Option<usize>,
    max_header_bytes: Option<usize>,
    tls_handshake_timeout: Option<u64>,
    header_timeout: Option<u64>,
    write_timeout: Option<u64>,
    buffer_size: Option<usize>,
    queue_depth: Option<usize>,
    socket: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileControl {
    socket: Option<PathBuf>,
    listen: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_settings_are_read() {
        let c = ServeConfig::from_toml(
            "[remote]\nca_file = \"/ca.pem\"\nallow = [\"h1\", \"h2:54322\"]\n[remote.ca_files]\n\"h3:1\" = \"/h3.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.remote.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.remote.allow, Some(vec!["h1".into(), "h2:54322".into()]));
        assert_eq!(
            c.remote.ca_files.get("h3:1"),
            Some(&PathBuf::from("/h3.pem"))
        );
        assert_eq!(ServeConfig::defaults().remote, RemoteConfig::default());
        assert!(ServeConfig::from_toml("[remote]\nbogus = 1\n").is_err());
        let c = ServeConfig::from_toml(
            "[s3]\nendpoint = \"http://127.0.0.1:9000\"\naccess_key_id = \"k\"\nsecret_access_key_file = \"/s\"\n",
        )
        .unwrap();
        assert_eq!(c.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.s3.secret_access_key_file, Some(PathBuf::from("/s")));
        assert!(ServeConfig::from_toml("[s3]\nbogus = 1\n").is_err());
    }

    #[test]
    fn the_data_socket_is_off_by_default_absolute_and_apart_from_control() {
        assert_eq!(ServeConfig::defaults().data.socket, None);
        let c = ServeConfig::from_toml("[data]\nsocket = \"/run/ovaio/data.sock\"\n").unwrap();
        assert_eq!(c.data.socket, Some(PathBuf::from("/run/ovaio/data.sock")));
        c.validate().unwrap();
        let off = ServeConfig::from_toml("[data]\nsocket = \"\"\n").unwrap();
        assert_eq!(off.data.socket, None);
        let rel = ServeConfig::from_toml("[data]\nsocket = \"data.sock\"\n").unwrap();
        assert!(
            rel.validate()
                .unwrap_err()
                .to_string()
                .contains("not an absolute path")
        );
        let same = ServeConfig::from_toml(
            "[data]\nsocket = \"/run/o/c.sock\"\n[control]\nsocket = \"/run/o/c.sock\"\n",
        )
        .unwrap();
        assert!(
            same.validate()
                .unwrap_err()
                .to_string()
                .contains("control socket")
        );
    }

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = ServeConfig::defaults();
        c.validate().unwrap();
        assert_eq!(c.data.listen.to_string(), DEFAULT_DATA_LISTEN);
        assert!(c.control.listen.is_none());
        assert_eq!(c.control_socket(), c.state_dir.join("control.sock"));
        assert_eq!(c.roots, vec![c.state_dir.join("storage")]);
    }

    #[test]
    fn toml_overrides_defaults() {
        let c = ServeConfig::from_toml(
            r#"
state_dir = "/s"
[data]
listen = "127.0.0.1:0"
max_connections = 8
tls_handshake_timeout = 2
[control]
listen = "127.0.0.1:54324"
"#,
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/s"));
        assert_eq!(c.roots, vec![PathBuf::from("/s/storage")]);
        assert_eq!(c.data.listen.port(), 0);
        assert_eq!(c.data.max_connections, 8);
        assert_eq!(c.data.tls_handshake_timeout, 2);
        assert_eq!(c.data.header_timeout, 30);
        assert_eq!(c.data.queue_depth, 4);
        assert_eq!(c.control.listen.map(|a| a.port()), Some(54324));
        assert_eq!(c.log.format, LogFormat::Text);
        c.validate().unwrap();
        let c = ServeConfig::from_toml("[log]\nformat = \"json\"").unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        let e = ServeConfig::from_toml("[log]\nformat = \"xml\"").unwrap_err();
        assert!(e.to_string().contains("xml"), "{e}");
    }

    #[test]
    fn the_shipped_service_configuration_is_valid() {
        let c = ServeConfig::from_toml(include_str!("../../dist/ovaio.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/ovaio"));
        assert_eq!(c.roots, vec![PathBuf::from("/var/lib/ovaio/storage")]);
        assert_eq!(c.control_socket(), PathBuf::from("/run/ovaio/control.sock"));
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn bad_files_are_refused_with_the_field() {
        let e = ServeConfig::from_toml("[data]\nlisten = \"nowhere\"").unwrap_err();
        assert!(e.to_string().contains("data.listen"), "{e}");
        let e = ServeConfig::from_toml("[data]\nlistn = \"x\"").unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
        let c = ServeConfig::from_toml("[control]\nlisten = \"0.0.0.0:1\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("loopback"));
        let c = ServeConfig::from_toml("roots = []").unwrap();
        assert!(c.validate().is_err());
        let c = ServeConfig::from_toml("[data]\ncert = \"/c\"").unwrap();
        assert!(c.validate().is_err());
        let c = ServeConfig::from_toml("[data]\ntls_handshake_timeout = 0").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("tls_handshake_timeout")
        );
    }
}
