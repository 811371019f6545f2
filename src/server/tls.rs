//! TLS for the data API: a self-signed certificate on first start and the
//! rustls server configuration built from PEM files.
//!
//! The certificate is served through [`ReloadableCert`], so that SIGHUP
//! can replace it while the server runs: handshakes after a reload
//! present the new one, connections already open keep theirs, and files
//! that do not make a usable pair leave the old one in place.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};

/// File name of the certificate inside the TLS directory.
const CERT_NAME: &str = "server.crt";
/// File name of the private key inside the TLS directory.
const KEY_NAME: &str = "server.key";
/// Validity of a generated certificate: ten years.
const VALIDITY: Duration = Duration::from_secs(10 * 36525 * 864);
/// Back-dating of `not_before`, so clients with a slow clock accept it.
const BACKDATE: Duration = Duration::from_secs(86_400);

/// The protocols the data API offers by ALPN, in its order of preference:
/// HTTP/2 first (a browser streams a request body only over it), HTTP/1.1
/// for every other client. A client that names neither gets HTTP/1.1 (or
/// HTTP/2 if it opens with the HTTP/2 preface).
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Certificate and key files the data API serves.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// true when this call created them
    pub generated: bool,
}

/// Returns `dir/server.crt` and `dir/server.key`, generating a self-signed
/// certificate (ECDSA P-256, SANs: localhost, 127.0.0.1, ::1 and every name
/// in `extra_names`, IP literals as IP SANs, valid 10 years) when either file
/// is missing. Creates `dir` (mode 0700) if needed; the key is written with
/// mode 0600 through a temporary name and a rename, so a crash never leaves
/// half a key behind.
pub fn ensure_self_signed(dir: &Path, extra_names: &[String]) -> Result<TlsFiles> {
    let cert = dir.join(CERT_NAME);
    let key = dir.join(KEY_NAME);
    if cert.is_file() && key.is_file() {
        return Ok(TlsFiles {
            cert,
            key,
            generated: false,
        });
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(e, "cannot create TLS directory", dir))?;

    let (cert_pem, key_pem) = generate(extra_names)?;
    // Key first: a crash in between leaves the certificate missing, and the
    // next start generates a fresh pair.
    write_atomic(dir, &key, key_pem.as_bytes(), 0o600)?;
    write_atomic(dir, &cert, cert_pem.as_bytes(), 0o644)?;
    if let Ok(d) = File::open(dir) {
        // Best effort: make the renames durable.
        let _ = d.sync_all();
    }
    Ok(TlsFiles {
        cert,
        key,
        generated: true,
    })
}

/// Generates a self-signed certificate and its key, both as PEM.
fn generate(extra_names: &[String]) -> Result<(String, String)> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for n in extra_names.iter().map(|n| n.trim()) {
        if !n.is_empty() && !names.iter().any(|x| x.eq_ignore_ascii_case(n)) {
            names.push(n.to_owned());
        }
    }
    let bad = |e: rcgen::Error| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("cannot create certificate: {e}"),
        )
    };
    let mut params = rcgen::CertificateParams::new(names).map_err(bad)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::new(ErrorKind::InvalidArgument, "system clock is before 1970"))?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(BACKDATE);
    params.not_after = epoch + now + VALIDITY;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ovaio");
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(bad)?;
    let cert = params.self_signed(&key).map_err(bad)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `data` to `dest` through a temporary file in `dir` created with
/// `mode`, synced, then renamed over `dest`.
fn write_atomic(dir: &Path, dest: &Path, data: &[u8], mode: u32) -> Result<()> {
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("tls");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // A leftover from a crashed run may carry other permissions: start fresh.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(e, "cannot remove stale temporary file", &tmp)),
    }
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_error(e, "cannot write", dest)
    })
}

/// An [`Error`] of kind `Io` for `path`, keeping the OS reason in the text.
fn io_error(e: std::io::Error, what: &str, path: &Path) -> Error {
    Error::new(ErrorKind::Io, format!("{what}: {e}")).at_path(path)
}

/// The certificate and key the data API presents, read from two PEM files
/// and read again from the same files by [`ReloadableCert::reload`].
pub struct ReloadableCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Loads `cert` and `key`; errors name the file and what is wrong.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ReloadableCert>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = certified_key(cert, key, &provider)?;
        Ok(Arc::new(ReloadableCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new(current),
        }))
    }

    /// Reads both files again and, if they make a usable pair, serves
    /// them to every handshake from now on; returns the new fingerprint.
    /// On an error the certificate in use stays.
    pub fn reload(&self) -> Result<String> {
        let new = certified_key(&self.cert, &self.key, &self.provider)?;
        let fp = fingerprint(&new);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = new;
        Ok(fp)
    }

    /// The SHA-256 of the end-entity certificate in use (hex, as
    /// `openssl x509 -fingerprint -sha256` shows it, without colons).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.current())
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Names the files and the certificate in use, never the key.
impl std::fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn fingerprint(k: &CertifiedKey) -> String {
    k.cert
        .first()
        .map(|c| hex::encode(Sha256::digest(c.as_ref())))
        .unwrap_or_default()
}

/// A rustls server configuration from PEM files: the ring crypto provider,
/// TLS 1.3 and 1.2 only, no client authentication, ALPN `h2` (preferred)
/// and `http/1.1`.
/// Errors name the file and what is wrong with it.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    server_config_for(ReloadableCert::load(cert, key)?)
}

/// The configuration of [`server_config`], presenting whatever `cert`
/// holds at each handshake.
pub fn server_config_for(cert: Arc<ReloadableCert>) -> Result<Arc<rustls::ServerConfig>> {
    let provider = cert.provider.clone();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::new(ErrorKind::Unsupported, format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Reads a certificate chain and its private key and checks that they
/// belong together.
fn certified_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>> {
    let invalid = |p: &Path, msg: String| Error::new(ErrorKind::InvalidArgument, msg).at_path(p);
    let pem_error = |p: &Path, what: &str, e: rustls::pki_types::pem::Error| match e {
        rustls::pki_types::pem::Error::Io(io) => io_error(io, &format!("cannot read {what}"), p),
        other => invalid(p, format!("malformed PEM {what}: {other}")),
    };

    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error(cert, "certificate", e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, "certificate", e))?;
    if chain.is_empty() {
        return Err(invalid(cert, "no certificate in file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            invalid(key, "no private key in file".into())
        }
        other => pem_error(key, "private key", other),
    })?;

    CertifiedKey::from_der(chain, key_der, provider)
        .map(Arc::new)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => invalid(
                key,
                format!(
                    "private key does not match the certificate {}",
                    cert.display()
                ),
            ),
            e @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
                invalid(cert, format!("unusable certificate: {e}"))
            }
            other => invalid(key, format!("unusable private key: {other}")),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client(
        cert: &Path,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(cert).expect("open cert") {
            roots.add(c.expect("parse cert")).expect("add root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }

    /// Handshakes over an in-memory pipe, echoes one byte, returns the
    /// negotiated version and ALPN as the client sees them.
    async fn handshake(
        files: &TlsFiles,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> (rustls::ProtocolVersion, Option<Vec<u8>>) {
        let acceptor = tokio_rustls::TlsAcceptor::from(
            server_config(&files.cert, &files.key).expect("config"),
        );
        let connector = client(&files.cert, versions, alpn);
        let (c, s) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut tls = acceptor.accept(s).await.expect("server handshake");
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.expect("server read");
            tls.write_all(&b).await.expect("server write");
            tls.flush().await.expect("server flush");
        });
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, c).await.expect("client handshake");
        tls.write_all(b"x").await.expect("client write");
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.expect("client read");
        assert_eq!(&b, b"x");
        server.await.expect("server task");
        let (_, conn) = tls.get_ref();
        (
            conn.protocol_version().expect("version"),
            conn.alpn_protocol().map(<[u8]>::to_vec),
        )
    }

    #[test]
    fn generates_once_then_reuses() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("tls");
        let first = ensure_self_signed(&dir, &["example.test".into(), "10.0.0.7".into()])
            .expect("generate");
        assert!(first.generated);
        assert_eq!(first.cert, dir.join("server.crt"));
        assert_eq!(first.key, dir.join("server.key"));
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&first.key), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let cert_bytes = std::fs::read(&first.cert).expect("read cert");
        let key_bytes = std::fs::read(&first.key).expect("read key");
        assert!(String::from_utf8_lossy(&cert_bytes).contains("BEGIN CERTIFICATE"));
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 2);

        let second = ensure_self_signed(&dir, &[]).expect("reuse");
        assert!(!second.generated);
        assert_eq!(std::fs::read(&second.cert).expect("read"), cert_bytes);
        assert_eq!(std::fs::read(&second.key).expect("read"), key_bytes);
        server_config(&second.cert, &second.key).expect("config loads");
    }

    #[test]
    fn regenerates_when_one_file_is_missing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = ensure_self_signed(tmp.path(), &[]).expect("generate");
        let old = std::fs::read(&first.key).expect("read");
        std::fs::remove_file(&first.cert).expect("remove");
        let again = ensure_self_signed(tmp.path(), &[]).expect("regenerate");
        assert!(again.generated);
        assert_ne!(std::fs::read(&again.key).expect("read"), old);
        server_config(&again.cert, &again.key).expect("pair matches");
    }

    #[tokio::test]
    async fn handshake_tls13_and_tls12_with_alpn() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = ensure_self_signed(tmp.path(), &[]).expect("generate");
        let both = [&rustls::version::TLS13, &rustls::version::TLS12];
        let h1: &[&[u8]] = &[b"http/1.1"];
        let (v, alpn) = handshake(&files, &both, h1).await;
        assert_eq!(v, rustls::ProtocolVersion::TLSv1_3);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        let (v, alpn) = handshake(&files, &[&rustls::version::TLS12], h1).await;
        assert_eq!(v, rustls::ProtocolVersion::TLSv1_2);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        // A client offering both gets HTTP/2, whatever its order.
        for offer in [&[&b"http/1.1"[..], b"h2"][..], &[b"h2", b"http/1.1"]] {
            let (_, alpn) = handshake(&files, &both, offer).await;
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "{offer:?}");
        }
    }

    #[test]
    fn bad_files_name_the_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = ensure_self_signed(tmp.path(), &[]).expect("generate");
        let garbage = tmp.path().join("garbage.key");
        std::fs::write(&garbage, b"this is not a key\n").expect("write");
        let e = server_config(&files.cert, &garbage).expect_err("garbage key");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let text = e.to_string();
        assert!(
            text.contains("garbage.key") && text.contains("no private key"),
            "{text}"
        );

        let e = server_config(&garbage, &files.key).expect_err("garbage cert");
        assert!(e.to_string().contains("no certificate"), "{e}");

        let other = tempfile::tempdir().expect("tempdir");
        let other = ensure_self_signed(other.path(), &[]).expect("generate");
        let e = server_config(&files.cert, &other.key).expect_err("mismatch");
        assert!(e.to_string().contains("does not match"), "{e}");

        let e = server_config(&tmp.path().join("absent.crt"), &files.key).expect_err("missing");
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(e.to_string().contains("absent.crt"), "{e}");
    }

    /// The end-entity certificate a client is shown in a fresh handshake.
    async fn presented(acceptor: &tokio_rustls::TlsAcceptor, trust: &[&Path]) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        for p in trust {
            for c in CertificateDer::pem_file_iter(p).expect("open cert") {
                roots.add(c.expect("parse cert")).expect("add root");
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let (c, s) = tokio::io::duplex(64 * 1024);
        let acceptor = acceptor.clone();
        let server = tokio::spawn(async move {
            let mut tls = acceptor.accept(s).await.expect("server handshake");
            tls.write_all(b"x").await.expect("server write");
            tls.flush().await.expect("flush");
        });
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, c).await.expect("client handshake");
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.expect("client read");
        server.await.expect("server task");
        let (_, conn) = tls.get_ref();
        conn.peer_certificates().expect("peer certificates")[0].to_vec()
    }

    #[tokio::test]
    async fn reload_serves_new_pairs_and_keeps_the_old_on_a_bad_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let live = ensure_self_signed(&tmp.path().join("live"), &[]).expect("generate");
        let next = ensure_self_signed(&tmp.path().join("next"), &[]).expect("generate");
        let der = |p: &Path| {
            CertificateDer::from_pem_file(p)
                .expect("read cert")
                .as_ref()
                .to_vec()
        };
        let (first, second) = (der(&live.cert), der(&next.cert));
        let old_cert = tmp.path().join("old.crt");
        std::fs::copy(&live.cert, &old_cert).expect("keep a copy");
        let trust = [old_cert.as_path(), next.cert.as_path()];

        let rc = ReloadableCert::load(&live.cert, &live.key).expect("load");
        let acceptor =
            tokio_rustls::TlsAcceptor::from(server_config_for(rc.clone()).expect("config"));
        assert_eq!(presented(&acceptor, &trust).await, first);
        let fp0 = rc.fingerprint();
        assert_eq!(fp0, hex::encode(Sha256::digest(&first)));

        std::fs::copy(&next.cert, &live.cert).expect("new cert");
        std::fs::copy(&next.key, &live.key).expect("new key");
        let fp1 = rc.reload().expect("reload");
        assert_ne!(fp1, fp0);
        assert_eq!(presented(&acceptor, &trust).await, second);

        // A key that is not one, then a key of another pair: refused, and
        // the certificate in use stays.
        std::fs::write(&live.key, b"garbage\n").expect("write");
        let e = rc.reload().expect_err("garbage key");
        assert!(e.to_string().contains("no private key"), "{e}");
        let other = ensure_self_signed(&tmp.path().join("other"), &[]).expect("generate");
        std::fs::copy(&other.key, &live.key).expect("mismatched key");
        let e = rc.reload().expect_err("mismatch");
        assert!(e.to_string().contains("does not match"), "{e}");
        assert_eq!(rc.fingerprint(), fp1);
        assert_eq!(presented(&acceptor, &trust).await, second);
    }
}
