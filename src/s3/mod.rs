//! S3-compatible object storage: where packages are exported to and
//! imported from (`s3://bucket/key`), through the `object_store` crate
//! (SigV4 signing, multipart uploads, presigned URLs, retries).
//!
//! Endpoint, region and credentials come from the standard `AWS_*`
//! environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, …),
//! overridden by the server's `[s3]` settings ([`S3Config`]). They are set
//! once per process ([`configure`]).
//!
//! `object_store` is asynchronous; the pipelines are threads. A small
//! runtime of its own ([`runtime`]) runs the requests, and the pipeline
//! threads wait on them.

pub mod upload;
mod url;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{ClientOptions, ObjectStoreExt};
use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};
use crate::limits::S3_PRESIGN_VALIDITY;
use crate::source::url::HttpUrl;

pub use url::S3Url;

/// The `[s3]` settings; each one left out comes from its `AWS_*`
/// environment variable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The service's URL, `https://HOST[:PORT]` (`AWS_ENDPOINT_URL`);
    /// AWS itself when neither is set.
    pub endpoint: Option<String>,
    /// The region (`AWS_REGION`, `AWS_DEFAULT_REGION`; default us-east-1).
    pub region: Option<String>,
    /// The access key id (`AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// The secret key (`AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<String>,
    /// A file holding the secret key (instead of `secret_access_key`).
    pub secret_access_key_file: Option<PathBuf>,
    /// Bucket in the host name (`bucket.endpoint`) rather than the path
    /// (`AWS_VIRTUAL_HOSTED_STYLE_REQUEST`; default false with an
    /// endpoint set).
    pub virtual_hosted_style: Option<bool>,
    /// A PEM CA bundle trusted for the endpoint besides the system roots.
    pub ca_file: Option<PathBuf>,
}

static CONFIG: OnceLock<S3Config> = OnceLock::new();

/// Sets this process's object storage settings (the first call wins;
/// another, different one is an internal error).
pub fn configure(cfg: &S3Config) -> Result<()> {
    if let Some(p) = &cfg.ca_file {
        read_certificates(p)?;
    }
    if let Some(p) = &cfg.secret_access_key_file {
        read_secret(p)?;
    }
    let set = CONFIG.get_or_init(|| cfg.clone());
    if set == cfg {
        Ok(())
    } else {
        Err(Error::internal("object storage settings configured twice"))
    }
}

fn config() -> &'static S3Config {
    CONFIG.get_or_init(S3Config::default)
}

/// The runtime object storage requests run on.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ovaio-s3")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the object storage runtime: {e}"))
    })
}

/// A client for the bucket of `url`.
pub(crate) fn store(url: &S3Url) -> Result<Arc<AmazonS3>> {
    // reqwest is built without a crypto provider of its own: the process
    // default is ring, as everywhere else (an error only says it is set).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = config();
    let mut b = AmazonS3Builder::from_env().with_bucket_name(url.bucket());
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let endpoint = cfg
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| env("AWS_ENDPOINT"));
    if let Some(e) = &cfg.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(r) = &cfg.region {
        b = b.with_region(r);
    } else if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
        b = b.with_region("us-east-1");
    }
    if let Some(k) = &cfg.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(k) = &cfg.secret_access_key {
        b = b.with_secret_access_key(k);
    }
    if let Some(p) = &cfg.secret_access_key_file {
        b = b.with_secret_access_key(read_secret(p)?);
    }
    if let Some(v) = cfg.virtual_hosted_style {
        b = b.with_config(AmazonS3ConfigKey::VirtualHostedStyleRequest, v.to_string());
    }
    // An endpoint named `http://` was chosen knowingly: plain HTTP is
    // allowed to it (and only then).
    let http = endpoint
        .as_deref()
        .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"));
    let mut opts = ClientOptions::new().with_allow_http(http);
    let ca = cfg.ca_file.clone().or_else(|| {
        crate::volume::imageio::remotes::configured()
            .ca_file
            .clone()
    });
    if let Some(p) = &ca {
        for c in read_certificates(p)? {
            opts = opts.with_root_certificate(c);
        }
    }
    let s3 = b.with_client_options(opts).build().map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("{url}: object storage settings: {e}"),
        )
    })?;
    Ok(Arc::new(s3))
}

/// A presigned `GET` URL of the object `url` names, valid long enough to
/// resume a long import.
pub fn presigned_get(url: &S3Url) -> Result<HttpUrl> {
    let s3 = store(url)?;
    let path = url.object_path()?;
    let signed = runtime()
        .block_on(s3.signed_url(http::Method::GET, &path, S3_PRESIGN_VALIDITY))
        .map_err(|e| storage_error(url, "presigning a GET", e))?;
    HttpUrl::parse(signed.as_str())
        .map_err(|why| Error::internal(format!("{url}: the presigned URL: {why}")))
}

/// Whether the object `url` names exists.
pub fn exists(url: &S3Url) -> Result<bool> {
    let s3 = store(url)?;
    let path = url.object_path()?;
    match runtime().block_on(s3.head(&path)) {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(storage_error(url, "HEAD", e)),
    }
}

/// Fails when the object `url` names exists; the message ends with how
/// to replace it (`how`: "pass --force").
pub fn refuse_existing(url: &S3Url, how: &str) -> Result<()> {
    if exists(url)? {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("{url} exists; {how} to replace it"),
        ));
    }
    Ok(())
}

/// An error of the object store, as ours.
pub(crate) fn storage_error(url: &S3Url, what: &str, e: object_store::Error) -> Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => ErrorKind::Auth,
        object_store::Error::AlreadyExists { .. } => ErrorKind::Conflict,
        _ => ErrorKind::Io,
    };
    Error::new(kind, format!("{url}: {what}: {e}"))
}

fn read_certificates(p: &std::path::Path) -> Result<Vec<object_store::Certificate>> {
    let pem = std::fs::read(p).map_err(|e| {
        Error::from(e)
            .at_path(p)
            .with_message("cannot read the object storage CA file")
    })?;
    let certs = object_store::Certificate::from_pem_bundle(&pem).map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("the object storage CA file is not valid PEM: {e}"),
        )
        .at_path(p)
    })?;
    if certs.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "the object storage CA file holds no certificate",
        )
        .at_path(p));
    }
    Ok(certs)
}

fn read_secret(p: &std::path::Path) -> Result<String> {
    let s = std::fs::read_to_string(p).map_err(|e| {
        Error::from(e)
            .at_path(p)
            .with_message("cannot read the object storage secret key file")
    })?;
    let s = s.trim();
    if s.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "the object storage secret key file is empty",
        )
        .at_path(p));
    }
    Ok(s.to_owned())
}

impl S3Url {
    /// The key as the store's path; keys the store would rewrite (empty
    /// segments, `.` or `..`) are refused rather than silently changed.
    pub(crate) fn object_path(&self) -> Result<ObjectPath> {
        ObjectPath::parse(self.key()).map_err(|e| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("{self}: the key is not usable: {e}"),
            )
        })
    }
}
