//! The ticket as the control API carries it: the `PUT /tickets/{id}` body
//! ([`TicketRequest`]), its checks that need no file system, and what
//! `GET /tickets/{id}` answers ([`TicketStatus`]).

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::TicketError;
use crate::limits::{MAX_CAPACITY, MAX_OVF_FILES, MAX_TICKET_ID_LEN, MAX_TICKET_TIMEOUT};
use crate::ova::manifest::Algorithm;
use crate::ova::ovf::vm::{self, Controller, GuestOs, VmSpec};
use crate::pipeline::export::DiskFormat;
use crate::volume::Format;
use crate::volume::NetUrl;

/// An operation a ticket allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Read bytes (`GET`).
    Read,
    /// Write bytes (`PUT`, `PATCH`).
    Write,
}

impl Op {
    /// The name used in tickets.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

/// What a ticket transfers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TicketKind {
    /// One volume, read or written at offsets (ovirt-imageio's only kind).
    #[default]
    Image,
    /// A whole OVA uploaded with one `PUT`, demultiplexed into volumes.
    OvaImport,
    /// A whole OVA streamed by one `GET`, built from volumes.
    OvaExport,
}

impl TicketKind {
    /// Every kind, in the order the README lists them.
    pub const ALL: [TicketKind; 3] = [
        TicketKind::Image,
        TicketKind::OvaImport,
        TicketKind::OvaExport,
    ];

    /// The name used in tickets.
    pub fn name(self) -> &'static str {
        match self {
            TicketKind::Image => "image",
            TicketKind::OvaImport => "ova-import",
            TicketKind::OvaExport => "ova-export",
        }
    }
}

/// One disk of an OVA ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OvaDisk {
    /// The disk's `File/@ovf:href`: its tar entry name (for a chunked
    /// file, the name its chunks' names extend). Empty, and left out, for
    /// a blank disk named by `disk_id`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub href: String,
    /// Import only, instead of `href`: the `ovf:diskId` of a blank disk,
    /// one the OVF gives no file, which the import creates empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_id: Option<String>,
    /// Target (import) or source (export) volume: `file:///path`, an NBD
    /// export (`nbd:unix:/path.sock`, `nbd://host:port/export`) or an
    /// image transfer on another host (`https://host:port/images/id`).
    pub url: String,
    /// `raw` or `qcow2`; on import the target format (default raw), on
    /// export the source format (default: probed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// The OVA part of an `ova-import` or `ova-export` ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OvaSpec {
    /// Every disk, in References order for an export.
    pub disks: Vec<OvaDisk>,
    /// Export only: an OVF descriptor to complete, `file:///path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovf: Option<String>,
    /// Export only: the VM name (names the `.ovf` entry; a descriptor is
    /// generated when `ovf` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Export only, without `ovf`: the VM the generated descriptor
    /// describes (the defaults of `ovaio export --name` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmFields>,
    /// Export only: the manifest's digest algorithm, `sha1`, `sha256`
    /// (the default) or `sha512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Export only: the format of the disks written, `qcow2` (the
    /// default) or `vmdk` (streamOptimized).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_format: Option<String>,
    /// Export only, with `disk_format` `vmdk`: deflate the grains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<bool>,
}

/// A number or a string: memory as MiB or `"4G"`, a guest OS as a CIM
/// OSType number or a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NumberOrText {
    /// As a JSON number.
    Number(u64),
    /// As a JSON string.
    Text(String),
}

impl NumberOrText {
    fn text(&self) -> String {
        match self {
            NumberOrText::Number(n) => n.to_string(),
            NumberOrText::Text(s) => s.clone(),
        }
    }
}

/// The VM of a generated descriptor, as an export ticket or job gives it:
/// the fields of `ovaio export`'s flags of the same names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmFields {
    /// Virtual CPUs (1 to 768).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory: MiB as a number, or a string with a unit (`"4G"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<NumberOrText>,
    /// Guest OS: a name (`"ubuntu64"`) or a CIM OSType number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<NumberOrText>,
    /// `"sata"` or `"scsi"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    /// One network adapter per network named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<String>,
    /// ProductSection: product name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// ProductSection: vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// ProductSection: version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_version: Option<String>,
    /// AnnotationSection text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation: Option<String>,
}

impl VmFields {
    /// The VM named `name` these fields describe, for `disks` disks; an
    /// error names the field under `prefix` (`ova.vm`, `vm`).
    pub fn spec(&self, name: &str, disks: usize, prefix: &str) -> Result<VmSpec, TicketError> {
        let at = |f: &str, reason: String| invalid(format!("{prefix}.{f}"), reason);
        let mut vm = VmSpec::new(name);
        if let Some(n) = self.cpus {
            vm.cpus = vm::parse_cpus(&n.to_string()).map_err(|r| at("cpus", r))?;
        }
        if let Some(m) = &self.memory {
            vm.memory_mib = vm::parse_memory(&m.text()).map_err(|r| at("memory", r))?;
        }
        if let Some(os) = &self.os {
            vm.os = GuestOs::parse(&os.text()).map_err(|r| at("os", r))?;
        }
        if let Some(c) = &self.controller {
            vm.controller = Controller::parse(c).map_err(|r| at("controller", r))?;
        }
        vm.networks = self.nics.clone();
        vm.product.product = self.product.clone();
        vm.product.vendor = self.vendor.clone();
        vm.product.version = self.product_version.clone();
        vm.annotation = self.annotation.clone();
        vm.check(disks).map_err(|e| {
            let field = if e.field == "nic" { "nics" } else { e.field };
            at(field, e.message)
        })?;
        Ok(vm)
    }
}

/// The body of `PUT /tickets/{id}`. Unknown fields are ignored, as
/// ovirt-imageio does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRequest {
    /// The ticket id; must equal the id in the path.
    pub uuid: String,
    /// Image size in bytes (required for `image`); for OVA kinds the
    /// package size when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The volume, `image` kind only: `file:///path`, an NBD export
    /// (`nbd:unix:/path.sock`, `nbd://host:port/export`) or an image
    /// transfer on another host (`https://host:port/images/id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Allowed operations; for `image`, `write` also allows reading.
    pub ops: Vec<Op>,
    /// Seconds until the ticket expires; each completed request moves the
    /// expiry this far ahead again.
    pub timeout: u64,
    /// Seconds without activity after which an unused ticket expires;
    /// default [`super::DEFAULT_INACTIVITY_TIMEOUT`], 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactivity_timeout: Option<u64>,
    /// Whether writing zeros may deallocate (punch holes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<bool>,
    /// `image` only: how to read the volume, `raw` (its bytes as they
    /// are) or `qcow2` (the guest view of the image). When absent, the
    /// format is probed from the file's header when the ticket is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Incremental-backup dirty extents; only `false` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty: Option<bool>,
    /// The engine's transfer id, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    /// A file name to suggest to browsers downloading the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// What the ticket transfers.
    #[serde(default)]
    pub kind: TicketKind,
    /// Disks and descriptor of an OVA kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ova: Option<OvaSpec>,
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    /// No request has moved bytes with the ticket yet.
    #[default]
    Pending,
    /// A transfer has started: a request began moving bytes.
    Active,
    /// `ova-import` only: the upload's connection dropped (or its client
    /// stopped sending) part way; the import keeps what it has accepted
    /// and waits `inactivity_timeout` seconds for the client to resume
    /// from the committed `offset`.
    Paused,
    /// The transfer completed and was verified.
    Succeeded,
    /// The transfer failed; see `error`.
    Failed,
    /// The ticket was removed or expired during the transfer.
    Cancelled,
}

impl TransferState {
    /// Every state, from first to final.
    pub const ALL: [TransferState; 6] = [
        TransferState::Pending,
        TransferState::Active,
        TransferState::Paused,
        TransferState::Succeeded,
        TransferState::Failed,
        TransferState::Cancelled,
    ];

    /// The name `GET /tickets/{id}` shows.
    pub fn name(self) -> &'static str {
        match self {
            TransferState::Pending => "pending",
            TransferState::Active => "active",
            TransferState::Paused => "paused",
            TransferState::Succeeded => "succeeded",
            TransferState::Failed => "failed",
            TransferState::Cancelled => "cancelled",
        }
    }

    /// Whether the transfer has an outcome. Matching every state here
    /// (no `_`) makes a new one, such as a pause between two parts of a
    /// resumed upload, decide whether it ends the transfer.
    pub fn is_final(self) -> bool {
        match self {
            TransferState::Pending | TransferState::Active | TransferState::Paused => false,
            TransferState::Succeeded | TransferState::Failed | TransferState::Cancelled => true,
        }
    }

    /// The state once a request of a ticket of `kind` starts moving bytes,
    /// or why it may not.
    ///
    /// An OVA import writes its targets once: after its outcome a further
    /// upload would replace volumes the engine was told are complete, or
    /// turn a failure into a success, so every final state refuses it.
    /// Image and export requests only repeat or resume what was done (a
    /// ranged write, a download resumed with `Range`): they may run after
    /// an outcome, which stays until the new request reports its own.
    /// Cancelled is final for every kind.
    pub fn start(self, kind: TicketKind) -> Result<TransferState, TicketError> {
        match (self, kind) {
            (TransferState::Pending | TransferState::Active | TransferState::Paused, _) => {
                Ok(TransferState::Active)
            }
            (TransferState::Succeeded | TransferState::Failed, TicketKind::OvaImport)
            | (TransferState::Cancelled, _) => Err(TicketError::Ended { state: self }),
            (
                TransferState::Succeeded | TransferState::Failed,
                TicketKind::Image | TicketKind::OvaExport,
            ) => Ok(self),
        }
    }
}

impl std::fmt::Display for TransferState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Progress of one disk of an OVA ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStatus {
    /// The disk's href; empty, and left out, for a blank disk.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub href: String,
    /// A blank disk's `ovf:diskId`, as the ticket names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_id: Option<String>,
    /// Bytes of the disk's tar entry received (import) or produced
    /// (export) so far, as the package carries them (compressed, for a
    /// compressed entry).
    pub bytes: u64,
    /// Where this disk stands.
    pub state: TransferState,
    /// `ova-export`: SHA-256 of the disk's tar entry, once a download of
    /// the whole package completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `ova-import`: why the import failed, when the failure lies in this
    /// disk's entry (its digest differs from the manifest's, its content
    /// is corrupt); the ticket's `error` says the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `GET /tickets/{id}` answers, and each item of `GET /tickets`: the
/// ticket as installed, plus live status under ovirt-imageio's names
/// (`expires`, `idle_time`, `active`, `canceled`, `connections`,
/// `transferred`) and ovaio's (`state`, `error`, `disks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketStatus {
    /// The ticket (with `inactivity_timeout` filled in).
    #[serde(flatten)]
    pub ticket: TicketRequest,
    /// When the ticket expires unless used or extended, Unix seconds.
    pub expires: u64,
    /// Seconds since the last activity; 0 while a client is connected.
    pub idle_time: u64,
    /// Whether a client is connected.
    pub active: bool,
    /// Whether the ticket was cancelled (always false for a visible one;
    /// kept because imageio's clients look for it).
    pub canceled: bool,
    /// Bytes moved through the data plane so far.
    pub transferred: u64,
    /// Connections currently using the ticket.
    pub connections: u64,
    /// Where the transfer stands.
    pub state: TransferState,
    /// Why the transfer failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Per-disk progress (OVA kinds).
    #[serde(default)]
    pub disks: Vec<DiskStatus>,
    /// `ova-export`: SHA-256 of the whole package, once a download of all
    /// of it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `ova-import`, once an upload started: the committed offset, the
    /// package bytes the import has accepted (where a resumed upload
    /// continues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// `ova-import`: the package's length, once the client declared it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// `ova-import`, once it succeeded: `verified` (every line of every
    /// manifest matched) or `absent` (the package has none), as the
    /// import summary says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

impl TicketRequest {
    /// Checks everything that needs no file system: the id, `ops` against
    /// the kind, limits, URL syntax, the `ova` object.
    pub fn validate(&self, id: &str) -> Result<(), TicketError> {
        validate_id(id)?;
        if self.uuid != id {
            return Err(TicketError::IdMismatch {
                id: id.to_owned(),
                uuid: self.uuid.clone(),
            });
        }
        if self.ops.is_empty() {
            return Err(invalid("ops", "must name at least one of read, write"));
        }
        max("timeout", self.timeout, MAX_TICKET_TIMEOUT)?;
        if let Some(t) = self.inactivity_timeout {
            max("inactivity_timeout", t, MAX_TICKET_TIMEOUT)?;
        }
        if self.dirty == Some(true) {
            return Err(TicketError::Unsupported {
                field: "dirty",
                reason: "dirty extents (incremental backup) are not served",
            });
        }
        match self.kind {
            TicketKind::Image => self.validate_image(),
            TicketKind::OvaImport | TicketKind::OvaExport => self.validate_ova(),
        }
    }

    fn validate_image(&self) -> Result<(), TicketError> {
        let Some(url) = &self.url else {
            return Err(invalid("url", "required for an image ticket"));
        };
        volume_url("url", url)?;
        let Some(size) = self.size else {
            return Err(invalid("size", "required for an image ticket"));
        };
        max("size", size, MAX_CAPACITY)?;
        if let Some(f) = &self.format
            && Format::parse(f).is_none()
        {
            return Err(invalid("format", format!("'{f}' is not raw or qcow2")));
        }
        if self.ova.is_some() {
            return Err(invalid("ova", "only for ova-import and ova-export tickets"));
        }
        Ok(())
    }

    fn validate_ova(&self) -> Result<(), TicketError> {
        let kind = self.kind;
        let Some(ova) = &self.ova else {
            return Err(invalid(
                "ova",
                format!("required for an {} ticket", kind.name()),
            ));
        };
        if self.url.is_some() {
            return Err(invalid(
                "url",
                format!(
                    "not used by an {} ticket; name the volumes in ova.disks",
                    kind.name()
                ),
            ));
        }
        if self.format.is_some() {
            return Err(invalid(
                "format",
                format!(
                    "not used by an {} ticket; give each of ova.disks its format",
                    kind.name()
                ),
            ));
        }
        let wanted = if kind == TicketKind::OvaImport {
            Op::Write
        } else {
            Op::Read
        };
        if self.ops.iter().any(|&op| op != wanted) {
            return Err(invalid(
                "ops",
                format!(
                    "an {} ticket allows only [\"{}\"]",
                    kind.name(),
                    wanted.name()
                ),
            ));
        }
        if let Some(size) = self.size {
            max(
                "size",
                size,
                MAX_CAPACITY.saturating_mul(MAX_OVF_FILES as u64),
            )?;
        }
        if ova.disks.is_empty() {
            return Err(invalid("ova.disks", "must name at least one disk"));
        }
        max("ova.disks", ova.disks.len() as u64, MAX_OVF_FILES as u64)?;
        // Hrefs and disk ids share one namespace: the import's mapping.
        let mut names = HashSet::new();
        for (i, d) in ova.disks.iter().enumerate() {
            let (field, name) = match &d.disk_id {
                None => (format!("ova.disks[{i}].href"), d.href.as_str()),
                Some(_) if !d.href.is_empty() => {
                    return Err(invalid(
                        format!("ova.disks[{i}].disk_id"),
                        "give href for a disk with a file, disk_id for a blank disk, not both",
                    ));
                }
                Some(_) if kind != TicketKind::OvaImport => {
                    return Err(invalid(
                        format!("ova.disks[{i}].disk_id"),
                        "only an import creates blank disks; name each disk of an export by its href",
                    ));
                }
                Some(id) => (format!("ova.disks[{i}].disk_id"), id.as_str()),
            };
            if name.is_empty() || name.contains('\0') {
                return Err(invalid(
                    field,
                    if d.disk_id.is_some() {
                        "must be a non-empty disk id"
                    } else {
                        "must be a non-empty entry name"
                    },
                ));
            }
            if !names.insert(name) {
                return Err(invalid(field, format!("'{name}' is named twice")));
            }
            let field = format!("ova.disks[{i}].url");
            volume_url(&field, &d.url)?;
            if let Some(f) = &d.format
                && f != "raw"
                && f != "qcow2"
            {
                return Err(invalid(
                    format!("ova.disks[{i}].format"),
                    format!("'{f}' is not raw or qcow2"),
                ));
            }
        }
        if kind == TicketKind::OvaImport {
            if ova.ovf.is_some() {
                return Err(invalid("ova.ovf", "only for ova-export tickets"));
            }
            if ova.name.is_some() {
                return Err(invalid("ova.name", "only for ova-export tickets"));
            }
            if ova.vm.is_some() {
                return Err(invalid("ova.vm", "only for ova-export tickets"));
            }
            if ova.manifest.is_some() {
                return Err(invalid("ova.manifest", "only for ova-export tickets"));
            }
            if ova.disk_format.is_some() {
                return Err(invalid("ova.disk_format", "only for ova-export tickets"));
            }
            if ova.compress.is_some() {
                return Err(invalid("ova.compress", "only for ova-export tickets"));
            }
        } else {
            if let Some(ovf) = &ova.ovf {
                file_url_path("ova.ovf", ovf)?;
            }
            if let Some(name) = &ova.name
                && (name.is_empty() || name.contains(['/', '\0']))
            {
                return Err(invalid("ova.name", "must be non-empty, without '/'"));
            }
            if let Some(m) = &ova.manifest {
                manifest_algorithm(m).map_err(|r| invalid("ova.manifest", r))?;
            }
            export_format(ova.disk_format.as_deref(), ova.compress)
                .map_err(|(f, r)| invalid(format!("ova.{f}"), r))?;
            if let Some(vm) = &ova.vm {
                if ova.ovf.is_some() {
                    return Err(invalid(
                        "ova.vm",
                        "describes a generated descriptor; not used with ova.ovf",
                    ));
                }
                let name = ova.name.as_deref().unwrap_or("vm");
                vm.spec(name, ova.disks.len(), "ova.vm")?;
            }
        }
        Ok(())
    }
}

/// The manifest algorithm an export ticket or job names: `sha1`,
/// `sha256` or `sha512` (any case, `sha-256` too).
pub fn manifest_algorithm(name: &str) -> Result<Algorithm, String> {
    Algorithm::from_name(name)
        .ok_or_else(|| format!("'{name}' is not a manifest algorithm: give sha1, sha256 or sha512"))
}

/// The disk format and grain coding an export ticket or job names:
/// `disk_format` `qcow2` (default) or `vmdk`, and `compress` only with
/// `vmdk`. An error names the field.
pub fn export_format(
    disk_format: Option<&str>,
    compress: Option<bool>,
) -> Result<(DiskFormat, bool), (&'static str, String)> {
    let f = match disk_format {
        None => DiskFormat::Qcow2,
        Some(f) => DiskFormat::parse(f).map_err(|r| ("disk_format", r))?,
    };
    let compress = compress.unwrap_or(false);
    if compress && f != DiskFormat::Vmdk {
        return Err((
            "compress",
            "deflates VMDK grains: give it with \"disk_format\": \"vmdk\"".into(),
        ));
    }
    Ok((f, compress))
}

/// Ticket ids appear in URLs (`/images/{id}`): keep them to unreserved
/// characters.
fn validate_id(id: &str) -> Result<(), TicketError> {
    let reason = if id.is_empty() {
        "empty"
    } else if id.len() > MAX_TICKET_ID_LEN {
        "too long"
    } else if id == "." || id == ".." {
        "a dot segment"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(TicketError::InvalidId { reason })
}

/// Where a ticket's volume is: a file beneath the storage roots, or an
/// NBD export or remote volume (which is no file, and so lies under no
/// root: only the control API can name one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VolumeUrl {
    /// `file:///path`.
    File(PathBuf),
    /// An NBD export or a remote volume.
    Net(NetUrl),
}

/// The volume a `file://`, NBD or `https://` URL names. A remote must be
/// on the allow-list, when there is one. A remote URL is never echoed
/// whole: its ticket id is a credential.
pub(crate) fn volume_url(field: &str, url: &str) -> Result<VolumeUrl, TicketError> {
    let shown = |url: &str| match url.find("/images/") {
        Some(i) if !url.starts_with("nbd") => {
            let id: String = url[i + 8..].chars().take(4).collect();
            format!("{}{id}…", &url[..i + 8])
        }
        _ => url.to_owned(),
    };
    match NetUrl::parse(url) {
        Ok(Some(u)) => {
            if let NetUrl::Imageio(r) = &u {
                crate::volume::imageio::check_allowed(r)
                    .map_err(|reason| invalid(field, reason))?;
            }
            Ok(VolumeUrl::Net(u))
        }
        Ok(None) => file_url_path(field, url).map(VolumeUrl::File),
        Err(reason) => Err(invalid(field, format!("'{}': {reason}", shown(url)))),
    }
}

/// The absolute path named by a `file:///path` (or
/// `file://localhost/path`) URL. Like ovirt-imageio, the path is taken as
/// written: no percent-decoding.
pub(crate) fn file_url_path(field: &str, url: &str) -> Result<PathBuf, TicketError> {
    let bad = |reason: &str| invalid(field, format!("'{url}': {reason}"));
    let Some(rest) = url.strip_prefix("file://") else {
        return Err(bad("not a file:// URL"));
    };
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return Err(bad("the path must be absolute (file:///path)"));
    }
    if path.contains(['?', '#', '\0']) {
        return Err(bad("query, fragment and NUL are not allowed"));
    }
    Ok(PathBuf::from(path))
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> TicketError {
    TicketError::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

fn max(field: &'static str, value: u64, max: u64) -> Result<(), TicketError> {
    if value > max {
        return Err(TicketError::TooLarge { field, value, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "7c2b1f5e-3c51-4e53-9a0d-0e9f6f0a1b2c";

    /// A ticket as the engine (through vdsm) installs it for an upload.
    const IMAGEIO_TICKET: &str = r#"{
        "uuid": "7c2b1f5e-3c51-4e53-9a0d-0e9f6f0a1b2c",
        "timeout": 300,
        "ops": ["write"],
        "size": 10737418240,
        "url": "file:///rhev/data-center/mnt/sd/images/img/vol",
        "transfer_id": "a4e0c1c2-2f4b-43a8-9a4f-6c8e1e7f0d55",
        "filename": "fedora.qcow2",
        "sparse": true,
        "dirty": false,
        "inactivity_timeout": 120,
        "some_future_field": {"ignored": true}
    }"#;

    fn image() -> TicketRequest {
        serde_json::from_str(IMAGEIO_TICKET).unwrap()
    }

    fn ova(kind: TicketKind, op: Op) -> TicketRequest {
        TicketRequest {
            uuid: ID.into(),
            size: None,
            url: None,
            ops: vec![op],
            timeout: 300,
            inactivity_timeout: None,
            sparse: None,
            format: None,
            dirty: None,
            transfer_id: None,
            filename: None,
            kind,
            ova: Some(OvaSpec {
                disks: vec![OvaDisk {
                    href: "vm-disk1.vmdk".into(),
                    disk_id: None,
                    url: "file:///data/vm-disk1.raw".into(),
                    format: Some("raw".into()),
                }],
                ovf: None,
                name: None,
                vm: None,
                manifest: None,
                disk_format: None,
                compress: None,
            }),
        }
    }

    fn field_of(e: TicketError) -> String {
        match e {
            TicketError::InvalidField { field, .. } => field,
            other => panic!("not an invalid field: {other:?}"),
        }
    }

    #[test]
    fn imageio_ticket_round_trips() {
        let t = image();
        assert_eq!(t.uuid, ID);
        assert_eq!(t.ops, vec![Op::Write]);
        assert_eq!(t.size, Some(10 << 30));
        assert_eq!(t.timeout, 300);
        assert_eq!(t.inactivity_timeout, Some(120));
        assert_eq!(t.sparse, Some(true));
        assert_eq!(t.dirty, Some(false));
        assert_eq!(t.filename.as_deref(), Some("fedora.qcow2"));
        assert_eq!(t.kind, TicketKind::Image);
        assert_eq!(t.ova, None);
        t.validate(ID).unwrap();

        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["ops"], serde_json::json!(["write"]));
        assert_eq!(json["kind"], "image");
        assert!(json.get("ova").is_none());
        assert!(json.get("some_future_field").is_none());
        let back: TicketRequest = serde_json::from_value(json).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn kinds_and_ova_object_parse() {
        let t: TicketRequest = serde_json::from_str(
            r#"{"uuid": "t1", "timeout": 60, "ops": ["write"], "kind": "ova-import",
                "ova": {"disks": [{"href": "d1.vmdk", "url": "file:///s/d1.qcow2", "format": "qcow2"},
                                  {"href": "d2.vmdk", "url": "file:///s/d2.raw"}]}}"#,
        )
        .unwrap();
        assert_eq!(t.kind, TicketKind::OvaImport);
        let o = t.ova.as_ref().unwrap();
        assert_eq!(o.disks.len(), 2);
        assert_eq!(o.disks[0].format.as_deref(), Some("qcow2"));
        assert_eq!(o.disks[1].format, None);
        t.validate("t1").unwrap();

        let t: TicketRequest = serde_json::from_str(
            r#"{"uuid": "t2", "timeout": 60, "ops": ["read"], "kind": "ova-export",
                "ova": {"disks": [{"href": "d1.qcow2", "url": "file:///s/d1.qcow2"}],
                        "ovf": "file:///s/vm.ovf", "name": "vm"}}"#,
        )
        .unwrap();
        assert_eq!(t.kind, TicketKind::OvaExport);
        t.validate("t2").unwrap();
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["kind"], "ova-export");
        assert_eq!(json["ova"]["ovf"], "file:///s/vm.ovf");

        let bad = serde_json::from_str::<TicketRequest>(
            r#"{"uuid": "t", "timeout": 1, "ops": ["delete"]}"#,
        );
        assert!(bad.is_err());
        let bad = serde_json::from_str::<TicketRequest>(r#"{"uuid": "t", "timeout": 1, "ops": []"#);
        assert!(bad.is_err());
    }

    #[test]
    fn status_serializes_flat() {
        let s = TicketStatus {
            ticket: image(),
            expires: 1_700_000_300,
            idle_time: 0,
            active: true,
            canceled: false,
            transferred: 4096,
            connections: 2,
            state: TransferState::Active,
            error: None,
            disks: vec![],
            sha256: None,
            offset: None,
            length: None,
            manifest: None,
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["uuid"], ID);
        assert_eq!(
            json["url"],
            "file:///rhev/data-center/mnt/sd/images/img/vol"
        );
        assert_eq!(json["state"], "active");
        assert_eq!(json["transferred"], 4096);
        assert!(json.get("error").is_none());
        let back: TicketStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn every_kind_and_state_is_listed_once_under_its_json_name() {
        let kinds: Vec<_> = TicketKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(kinds, ["image", "ova-import", "ova-export"]);
        for k in TicketKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
        let states: Vec<_> = TransferState::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            states,
            [
                "pending",
                "active",
                "paused",
                "succeeded",
                "failed",
                "cancelled"
            ]
        );
        // A new state stops this match compiling, so it cannot be left
        // out of `ALL` (and of `GET /tickets?state=`) unnoticed.
        for s in TransferState::ALL {
            let i = match s {
                TransferState::Pending => 0,
                TransferState::Active => 1,
                TransferState::Paused => 2,
                TransferState::Succeeded => 3,
                TransferState::Failed => 4,
                TransferState::Cancelled => 5,
            };
            assert_eq!(TransferState::ALL[i], s);
        }
    }

    #[test]
    fn state_names_match_the_json() {
        for st in TransferState::ALL {
            assert_eq!(serde_json::to_value(st).unwrap(), st.name());
        }
    }

    #[test]
    fn an_import_never_starts_again_after_its_outcome() {
        use TransferState::*;
        for kind in [
            TicketKind::Image,
            TicketKind::OvaImport,
            TicketKind::OvaExport,
        ] {
            assert_eq!(Pending.start(kind), Ok(Active), "{kind:?}");
            assert_eq!(Active.start(kind), Ok(Active), "{kind:?}");
            assert_eq!(Paused.start(kind), Ok(Active), "{kind:?}");
            assert_eq!(
                Cancelled.start(kind),
                Err(TicketError::Ended { state: Cancelled }),
                "{kind:?}"
            );
        }
        for st in [Succeeded, Failed] {
            assert!(st.is_final());
            assert_eq!(
                st.start(TicketKind::OvaImport),
                Err(TicketError::Ended { state: st })
            );
            // A repeated or resumed download keeps the outcome until it
            // reports its own.
            assert_eq!(st.start(TicketKind::OvaExport), Ok(st));
            assert_eq!(st.start(TicketKind::Image), Ok(st));
        }
        assert!(!Pending.is_final() && !Active.is_final() && Cancelled.is_final());
        assert!(!Paused.is_final());
        let e = TicketError::Ended { state: Succeeded }.to_string();
        assert!(e.contains("succeeded"), "{e}");
    }

    #[test]
    fn uuid_must_match_id() {
        assert_eq!(
            image().validate("other").unwrap_err(),
            TicketError::IdMismatch {
                id: "other".into(),
                uuid: ID.into()
            }
        );
    }

    #[test]
    fn ids_are_url_safe() {
        for id in ["", ".", "..", "a/b", "a b", "é"] {
            let mut t = image();
            t.uuid = id.into();
            assert!(
                matches!(t.validate(id), Err(TicketError::InvalidId { .. })),
                "{id:?}"
            );
        }
        let long = "a".repeat(MAX_TICKET_ID_LEN + 1);
        let mut t = image();
        t.uuid = long.clone();
        assert!(t.validate(&long).is_err());
    }

    #[test]
    fn ops_must_not_be_empty() {
        let mut t = image();
        t.ops.clear();
        assert_eq!(field_of(t.validate(ID).unwrap_err()), "ops");
    }

    #[test]
    fn image_url_must_be_absolute_file_url() {
        for url in [
            "file://relative/path",
            "file://data/x",
            "http://host/x",
            "/data/x",
            "file:///data/x?y",
        ] {
            let mut t = image();
            t.url = Some(url.into());
            let e = t.validate(ID).unwrap_err();
            assert!(e.to_string().contains(url), "{e}");
            assert_eq!(field_of(e), "url");
        }
        assert_eq!(
            file_url_path("url", "file://localhost/a/b").unwrap(),
            PathBuf::from("/a/b")
        );
        let mut t = image();
        t.url = None;
        assert_eq!(field_of(t.validate(ID).unwrap_err()), "url");
    }

    #[test]
    fn sizes_and_timeouts_are_bounded() {
        let mut t = image();
        t.size = None;
        assert_eq!(field_of(t.validate(ID).unwrap_err()), "size");
        t.size = Some(MAX_CAPACITY + 1);
        assert!(matches!(
            t.validate(ID),
            Err(TicketError::TooLarge { field: "size", .. })
        ));
        let mut t = image();
        t.timeout = MAX_TICKET_TIMEOUT + 1;
        assert!(matches!(
            t.validate(ID),
            Err(TicketError::TooLarge {
                field: "timeout",
                ..
            })
        ));
        let mut t = image();
        t.dirty = Some(true);
        assert!(matches!(
            t.validate(ID),
            Err(TicketError::Unsupported { field: "dirty", .. })
        ));
    }

    #[test]
    fn ova_kinds_need_ova_and_matching_ops() {
        let mut t = ova(TicketKind::OvaImport, Op::Write);
        t.validate(ID).unwrap();
        t.ova = None;
        assert_eq!(field_of(t.validate(ID).unwrap_err()), "ova");

        let t = ova(TicketKind::OvaImport, Op::Read);
        assert_eq!(field_of(t.validate(ID).unwrap_err()), "ops");
        let t = ova(TicketKind::OvaExport, Op::Write);
        assert_eq!(field_of(t.validate(ID).unwrap_err()), "ops");
        ova(TicketKind::OvaExport, Op::Read).validate(ID).unwrap();

        let mut t = image();
        t.ova = ova(TicketKind::OvaImport, Op::Write).ova;
        assert_eq!(field_of(t.validate(ID).unwrap_err()), "ova");

        let mut t = ova(TicketKind::OvaImport, Op::Write);
        t.url = Some("file:///x".into());
        assert_eq!(field_of(t.validate(ID).unwrap_err()), "url");
    }

    #[test]
    fn blank_disks_are_named_by_disk_id_on_import_only() {
        let t: TicketRequest = serde_json::from_str(
            r#"{"uuid": "t1", "timeout": 60, "ops": ["write"], "kind": "ova-import",
                "ova": {"disks": [{"href": "d1.vmdk", "url": "file:///s/d1.raw"},
                                  {"disk_id": "flash", "url": "file:///s/flash.raw"}]}}"#,
        )
        .unwrap();
        t.validate("t1").unwrap();
        let o = t.ova.as_ref().unwrap();
        assert_eq!(o.disks[1].disk_id.as_deref(), Some("flash"));
        assert_eq!(o.disks[1].href, "");
        let json = serde_json::to_value(&t).unwrap();
        assert!(json["ova"]["disks"][1].get("href").is_none(), "{json}");
        assert!(json["ova"]["disks"][0].get("disk_id").is_none(), "{json}");

        let with = |kind, op, href: &str, id: Option<&str>| {
            let mut t = ova(kind, op);
            let d = &mut t.ova.as_mut().unwrap().disks[0];
            d.href = href.into();
            d.disk_id = id.map(str::to_owned);
            t.validate(ID).map_err(field_of)
        };
        let import = (TicketKind::OvaImport, Op::Write);
        assert_eq!(with(import.0, import.1, "", Some("flash")), Ok(()));
        let both = with(import.0, import.1, "d.vmdk", Some("flash"));
        assert_eq!(both, Err("ova.disks[0].disk_id".into()));
        let empty = with(import.0, import.1, "", Some(""));
        assert_eq!(empty, Err("ova.disks[0].disk_id".into()));
        let neither = with(import.0, import.1, "", None);
        assert_eq!(neither, Err("ova.disks[0].href".into()));
        let export = with(TicketKind::OvaExport, Op::Read, "", Some("flash"));
        assert_eq!(export, Err("ova.disks[0].disk_id".into()));

        // An href and a disk id are names in one mapping.
        let mut t = ova(TicketKind::OvaImport, Op::Write);
        let mut d = t.ova.as_ref().unwrap().disks[0].clone();
        d.disk_id = Some(std::mem::take(&mut d.href));
        d.url = "file:///data/other.raw".into();
        t.ova.as_mut().unwrap().disks.push(d);
        assert_eq!(
            field_of(t.validate(ID).unwrap_err()),
            "ova.disks[1].disk_id"
        );
    }

    #[test]
    fn ova_disks_are_checked() {
        let mut t = ova(TicketKind::OvaImport, Op::Write);
        let d = t.ova.as_ref().unwrap().disks[0].clone();
        t.ova.as_mut().unwrap().disks.push(d);
        assert_eq!(field_of(t.validate(ID).unwrap_err()), "ova.disks[1].href");

        let mut t = ova(TicketKind::OvaImport, Op::Write);
        t.ova.as_mut().unwrap().disks[0].format = Some("vmdk".into());
        assert_eq!(field_of(t.validate(ID).unwrap_err()), "ova.disks[0].format");

        let mut t = ova(TicketKind::OvaImport, Op::Write);
        t.ova.as_mut().unwrap().disks[0].url = "file://d.raw".into();
        assert_eq!(field_of(t.validate(ID).unwrap_err()), "ova.disks[0].url");

        let mut t = ova(TicketKind::OvaImport, Op::Write);
        t.ova.as_mut().unwrap().disks.clear();
        assert_eq!(field_of(t.validate(ID).unwrap_err()), "ova.disks");

        let mut t = ova(TicketKind::OvaImport, Op::Write);
        t.ova.as_mut().unwrap().ovf = Some("file:///x.ovf".into());
        assert_eq!(field_of(t.validate(ID).unwrap_err()), "ova.ovf");

        let mut t = ova(TicketKind::OvaExport, Op::Read);
        t.ova.as_mut().unwrap().name = Some("a/b".into());
        assert_eq!(field_of(t.validate(ID).unwrap_err()), "ova.name");
    }
}
