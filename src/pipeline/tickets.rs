//! From tickets and jobs to pipelines: what an `ova-import` ticket's disks
//! map to ([`import_targets`]), the export an `ova-export` ticket
//! describes ([`export_request`]) and the modification time its download's
//! validator stands on ([`sources_mtime`]). The data API and the jobs both
//! take their pipelines from here.

use std::collections::BTreeMap;

use crate::error::{Error, ErrorKind, Result};
use crate::names::printable;
use crate::ova::manifest::Algorithm;
use crate::ova::ovf::vm::VmSpec;
use crate::pipeline::export::{ExportDisk, ExportRequest, OvfSource};
use crate::pipeline::import::{DiskTarget, Targets};
use crate::roots::AllowedRoots;
use crate::ticket::ResolvedOva;
use crate::volume::Format as VolumeFormat;

/// The import targets an `ova-import` ticket or job maps: a disk with a
/// file by its href, a blank disk by its disk id.
pub(crate) fn import_targets(ova: &ResolvedOva) -> Result<Targets> {
    let mut map = BTreeMap::new();
    for d in &ova.disks {
        let name = match (&d.disk_id, d.href.is_empty()) {
            (None, _) => &d.href,
            (Some(id), true) => id,
            (Some(_), false) => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "disk '{}': give href for a disk with a file, disk_id for a blank disk, not both",
                        printable(&d.href)
                    ),
                ));
            }
        };
        let format = match d.format.as_deref() {
            None => VolumeFormat::Raw,
            Some(f) => VolumeFormat::parse(f).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "disk '{}': unknown target format '{}'",
                        printable(name),
                        printable(f)
                    ),
                )
            })?,
        };
        let target = DiskTarget {
            path: d.path.clone(),
            format,
            net: d.net.clone(),
        };
        if map.insert(name.clone(), target).is_some() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("disk '{}' is named twice", printable(name)),
            ));
        }
    }
    Ok(Targets::Map(map))
}

/// Reads the OVF descriptor to complete, beneath the roots and no larger
/// than any descriptor ovaio accepts.
fn read_descriptor(roots: &AllowedRoots, p: &std::path::Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = roots.open(p, rustix::fs::OFlags::RDONLY, 0)?;
    let mut bytes = Vec::new();
    f.take(crate::limits::MAX_OVF_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::from(e).at_path(p))?;
    if bytes.len() as u64 > crate::limits::MAX_OVF_SIZE {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "the OVF descriptor is over the {} byte limit",
                crate::limits::MAX_OVF_SIZE
            ),
        )
        .at_path(p));
    }
    Ok(bytes)
}

/// The export request an `ova-export` ticket describes.
pub(crate) fn export_request(ova: &ResolvedOva, roots: AllowedRoots) -> Result<ExportRequest> {
    let disks = ova
        .disks
        .iter()
        .map(|d| {
            if let Some(id) = &d.disk_id {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "disk_id '{}': only an import creates blank disks; name each disk of an export by its href",
                        printable(id)
                    ),
                ));
            }
            let format = match d.format.as_deref() {
                None => None,
                Some(f) => Some(VolumeFormat::parse(f).ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "disk '{}': unknown source format '{}'",
                            printable(&d.href),
                            printable(f)
                        ),
                    )
                })?),
            };
            Ok(ExportDisk {
                href: d.href.clone(),
                path: d.path.clone(),
                format,
                net: d.net.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let name = ova.name.clone().unwrap_or_else(|| "vm".to_owned());
    let (ovf, ovf_name) = match &ova.ovf {
        Some(p) => {
            let bytes = read_descriptor(&roots, p)?;
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("{name}.ovf"));
            (OvfSource::Descriptor(bytes), n)
        }
        None => {
            let vm = match &ova.vm {
                Some(v) => v.spec(&name, disks.len(), "ova.vm")?,
                None => VmSpec::new(&name),
            };
            (OvfSource::Generate(vm), format!("{name}.ovf"))
        }
    };
    let (disk_format, compress) =
        crate::ticket::export_format(ova.disk_format.as_deref(), ova.compress)
            .map_err(|(f, r)| Error::new(ErrorKind::InvalidArgument, format!("{f}: {r}")))?;
    Ok(ExportRequest {
        disks,
        ovf,
        ovf_name,
        manifest: Some(match ova.manifest.as_deref() {
            None => Algorithm::Sha256,
            Some(m) => Algorithm::from_name(m).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!("manifest '{}': give sha1, sha256 or sha512", printable(m)),
                )
            })?,
        }),
        align: false,
        detect_zeros: false,
        disk_format,
        compress,
        roots,
    })
}

/// The newest modification time of the file sources and the descriptor,
/// in seconds since the epoch (an NBD or remote source has none).
pub(crate) fn sources_mtime(ova: &ResolvedOva, roots: &AllowedRoots) -> Result<u64> {
    let mut newest = 0;
    let files = ova.disks.iter().filter(|d| d.net.is_none());
    for p in files.map(|d| &d.path).chain(ova.ovf.iter()) {
        let f = roots.open(p, rustix::fs::OFlags::RDONLY, 0)?;
        let m = f.metadata().map_err(|e| Error::from(e).at_path(p))?;
        let t = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        newest = newest.max(t);
    }
    Ok(newest)
}
