//! Which remotes ovaio talks to and whom it trusts there: the CA bundle
//! for each remote (one for all, others per `host:port`; the system roots
//! when none is named) and the allow-list of hosts. Set once per process
//! ([`configure`]) by `ovaio serve` from `[remote]` and by the CLI from
//! its flags; a process that never configures trusts the system roots
//! and allows any host (the control API that names remotes is trusted).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ureq::Agent;
use ureq::tls::{RootCerts, TlsConfig};

use super::url::ImageioUrl;
use crate::error::{Error, ErrorKind, Result};
use crate::limits::{
    REMOTE_CONNECT_TIMEOUT, REMOTE_IO_TIMEOUT, REMOTE_MAX_WRITERS, SOURCE_MAX_REDIRECTS,
    SOURCE_READ_TIMEOUT,
};

/// The `[remote]` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteConfig {
    /// PEM CA bundle trusted for every remote without one of its own;
    /// `None`: the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM CA bundles by `host:port` (`[v6]:port`).
    pub ca_files: BTreeMap<String, PathBuf>,
    /// Hosts a ticket may name, as `host` (any port) or `host:port`;
    /// `None`: any.
    pub allow: Option<Vec<String>>,
    /// Check no certificate at all (`ovaio upload --insecure`; never the
    /// server's setting).
    pub insecure: bool,
}

/// The configured trust: HTTP agents (connection pools) per CA.
#[derive(Debug)]
pub(crate) struct Remotes {
    default: Agents,
    by_authority: BTreeMap<String, Agents>,
    allow: Option<Vec<String>>,
}

/// The agents of one trust: for remote volumes, and for package sources
/// (`ovaio import URL`: plain HTTP allowed, redirects followed, no limit
/// on a whole body's time).
#[derive(Debug)]
struct Agents {
    volume: Agent,
    source: Agent,
}

impl Agents {
    fn new(tls: TlsConfig) -> Agents {
        Agents {
            volume: volume_agent(tls.clone()),
            source: source_agent(tls),
        }
    }
}

static REMOTES: OnceLock<(RemoteConfig, Remotes)> = OnceLock::new();

/// Sets this process's remote settings; reads the CA files now, so that
/// a bad one stops the start rather than the first transfer. Settings
/// once in use do not change: configuring other ones later is an
/// internal error.
pub fn configure(cfg: &RemoteConfig) -> Result<()> {
    let remotes = Remotes::new(cfg)?;
    let (set, _) = REMOTES.get_or_init(|| (cfg.clone(), remotes));
    if set == cfg {
        Ok(())
    } else {
        Err(Error::internal("remote settings configured twice"))
    }
}

/// This process's remote settings.
pub(crate) fn remotes() -> &'static Remotes {
    &settings().1
}

/// The settings [`remotes`] were made from.
pub(crate) fn configured() -> &'static RemoteConfig {
    &settings().0
}

fn settings() -> &'static (RemoteConfig, Remotes) {
    REMOTES.get_or_init(|| {
        let r = Remotes {
            default: Agents::new(trusting(RootCerts::PlatformVerifier)),
            by_authority: BTreeMap::new(),
            allow: None,
        };
        (RemoteConfig::default(), r)
    })
}

/// Fails unless the allow-list (if any) names `url`'s host.
pub fn check_allowed(url: &ImageioUrl) -> std::result::Result<(), String> {
    remotes().check_allowed(url)
}

impl Remotes {
    fn new(cfg: &RemoteConfig) -> Result<Remotes> {
        let default = match &cfg.ca_file {
            _ if cfg.insecure => TlsConfig::builder().disable_verification(true).build(),
            Some(p) => trusting(load_ca(p)?),
            None => trusting(RootCerts::PlatformVerifier),
        };
        let mut by_authority = BTreeMap::new();
        for (authority, p) in &cfg.ca_files {
            by_authority.insert(
                authority.to_ascii_lowercase(),
                Agents::new(trusting(load_ca(p)?)),
            );
        }
        if let Some(allow) = &cfg.allow {
            for a in allow {
                if a.is_empty() || a.contains(['/', '@', ' ']) {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!("remote.allow: '{a}' is not a host or host:port"),
                    ));
                }
            }
        }
        Ok(Remotes {
            default: Agents::new(default),
            by_authority,
            allow: cfg
                .allow
                .as_ref()
                .map(|v| v.iter().map(|a| a.to_ascii_lowercase()).collect()),
        })
    }

    /// The agent whose CA the remote at `url` is checked against.
    pub(crate) fn agent(&self, url: &ImageioUrl) -> &Agent {
        &self.agents(&url.authority()).volume
    }

    /// The agent a package source at `authority` (`host:port`, as
    /// [`ImageioUrl::authority`] writes it) is fetched with.
    pub(crate) fn source_agent(&self, authority: &str) -> &Agent {
        &self.agents(authority).source
    }

    /// The agents of the CA configured for `authority` (`host:port`).
    fn agents(&self, authority: &str) -> &Agents {
        self.by_authority
            .get(&authority.to_ascii_lowercase())
            .unwrap_or(&self.default)
    }

    fn check_allowed(&self, url: &ImageioUrl) -> std::result::Result<(), String> {
        self.check_host(url.host(), &url.authority())
    }

    /// Fails unless the allow-list (if any) names `host` (no brackets)
    /// or `authority` (`host:port`).
    pub(crate) fn check_host(
        &self,
        host: &str,
        authority: &str,
    ) -> std::result::Result<(), String> {
        let Some(allow) = &self.allow else {
            return Ok(());
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_ascii_lowercase()
        };
        let authority = authority.to_ascii_lowercase();
        if allow.iter().any(|a| *a == host || *a == authority) {
            Ok(())
        } else {
            Err(format!("{authority} is not in remote.allow"))
        }
    }
}

/// The CA certificates in the PEM file at `path`.
fn load_ca(path: &Path) -> Result<RootCerts> {
    let pem = std::fs::read(path).map_err(|e| {
        Error::from(e)
            .at_path(path)
            .with_message("cannot read the remote CA file")
    })?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("the remote CA file is not valid PEM: {e}"),
                )
                .at_path(path));
            }
        }
    }
    if certs.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "the remote CA file holds no certificate",
        )
        .at_path(path));
    }
    Ok(RootCerts::Specific(Arc::new(certs)))
}

/// A TLS configuration trusting `roots`.
fn trusting(roots: RootCerts) -> TlsConfig {
    TlsConfig::builder().root_certs(roots).build()
}

/// What every agent shares: statuses returned rather than raised, no
/// Nagle delay, a connect timeout, ovaio's user agent.
fn base(tls: TlsConfig) -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .no_delay(true)
        .timeout_connect(Some(REMOTE_CONNECT_TIMEOUT))
        .user_agent(concat!("ovaio/", env!("CARGO_PKG_VERSION")))
}

/// An agent for remote volumes and the upload and download clients:
/// keep-alive connections (enough for every writer of a few transfers),
/// HTTPS only, no redirects (a ticket URL names its host), timeouts that
/// end a stalled remote. A body is limited per read and per write, not
/// as a whole: a whole package takes as long as it takes. (A limit on
/// the whole body also counts down, so the socket's timeout was set
/// again before every write.)
fn volume_agent(tls: TlsConfig) -> Agent {
    base(tls)
        .https_only(true)
        .max_redirects(0)
        .max_idle_connections(64)
        .max_idle_connections_per_host(4 * REMOTE_MAX_WRITERS)
        .timeout_per_write(Some(REMOTE_IO_TIMEOUT))
        .timeout_recv_response(Some(REMOTE_IO_TIMEOUT))
        .timeout_per_read(Some(REMOTE_IO_TIMEOUT))
        .build()
        .new_agent()
}

/// An agent for package sources: `http://` too (a catalog on a trusted
/// network, a presigned object URL), a few redirects, and no limit on a
/// body's whole time — a package takes as long as it takes — but one on
/// each read, so that a source that stops sending is given up on.
fn source_agent(tls: TlsConfig) -> Agent {
    base(tls)
        .https_only(false)
        .max_redirects(SOURCE_MAX_REDIRECTS)
        .max_idle_connections_per_host(2)
        .timeout_recv_response(Some(REMOTE_IO_TIMEOUT))
        .timeout_per_read(Some(SOURCE_READ_TIMEOUT))
        .build()
        .new_agent()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_names_hosts_or_host_ports() {
        let r = Remotes::new(&RemoteConfig {
            allow: Some(vec!["Host-A".into(), "b:54322".into(), "[::1]".into()]),
            ..RemoteConfig::default()
        })
        .unwrap();
        let u = |s: &str| ImageioUrl::parse(s).unwrap();
        assert!(r.check_allowed(&u("https://host-a:1/images/t")).is_ok());
        assert!(r.check_allowed(&u("https://b:54322/images/t")).is_ok());
        assert!(r.check_allowed(&u("https://[::1]:9/images/t")).is_ok());
        let e = r.check_allowed(&u("https://b:54323/images/t")).unwrap_err();
        assert_eq!(e, "b:54323 is not in remote.allow");
        assert!(r.check_allowed(&u("https://c/images/t")).is_err());
        let any = Remotes::new(&RemoteConfig::default()).unwrap();
        assert!(any.check_allowed(&u("https://c/images/t")).is_ok());
        let bad = Remotes::new(&RemoteConfig {
            allow: Some(vec!["https://x/".into()]),
            ..RemoteConfig::default()
        });
        assert!(bad.is_err());
    }

    /// A whole body has no time limit, only each read and write: an OVA
    /// upload or download that takes longer than `REMOTE_IO_TIMEOUT` is
    /// not cut.
    #[test]
    fn bodies_are_limited_per_read_and_write_not_as_a_whole() {
        let agent = volume_agent(trusting(RootCerts::PlatformVerifier));
        let c = agent.config();
        assert_eq!(c.timeout_per_write(), Some(REMOTE_IO_TIMEOUT));
        assert_eq!(c.timeout_per_read(), Some(REMOTE_IO_TIMEOUT));
        assert_eq!(c.timeouts().send_body, None);
        assert_eq!(c.timeouts().recv_body, None);
        assert_eq!(c.timeouts().global, None);
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not pem").unwrap();
        let cfg = RemoteConfig {
            ca_file: Some(p.clone()),
            ..RemoteConfig::default()
        };
        assert!(
            Remotes::new(&cfg)
                .unwrap_err()
                .to_string()
                .contains("no certificate")
        );
        let missing = RemoteConfig {
            ca_file: Some(dir.path().join("none.pem")),
            ..RemoteConfig::default()
        };
        assert!(Remotes::new(&missing).is_err());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["h".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&p, cert.pem()).unwrap();
        let r = Remotes::new(&cfg).unwrap();
        assert!(r.by_authority.is_empty());
    }
}
