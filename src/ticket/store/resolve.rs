//! A ticket request's paths resolved under the storage roots, and the
//! format of its volume decided once.

use super::*;

impl TicketStore {
    /// Resolves every path of a validated request under the roots.
    pub(super) fn resolve(&self, req: TicketRequest) -> Result<Spec> {
        let mut path = None;
        let mut net = None;
        let mut format = None;
        let mut ova = None;
        match req.kind {
            TicketKind::Image => match req.url.as_deref().map(|u| volume_url("url", u)) {
                Some(Ok(VolumeUrl::File(p))) => {
                    let canon = self.resolve_path("url", &p, req.ops.contains(&Op::Write))?;
                    let stated = req.format.as_deref().and_then(Format::parse);
                    format = Some(self.resolve_format(&canon, stated)?);
                    path = Some(canon);
                }
                // The export presents guest bytes whatever the format
                // behind it; it is connected to at the first request.
                Some(Ok(VolumeUrl::Net(u))) => net = Some(u),
                Some(Err(e)) => return Err(e.into()),
                None => {}
            },
            TicketKind::OvaImport | TicketKind::OvaExport => {
                let create = req.kind == TicketKind::OvaImport;
                if let Some(spec) = &req.ova {
                    let mut disks = Vec::with_capacity(spec.disks.len());
                    let mut seen = HashSet::new();
                    for (i, d) in spec.disks.iter().enumerate() {
                        let field = format!("ova.disks[{i}].url");
                        let (p, net) = match volume_url(&field, &d.url)? {
                            VolumeUrl::Net(u) => (PathBuf::from(u.to_string()), Some(u)),
                            VolumeUrl::File(p) => (self.resolve_path(&field, &p, create)?, None),
                        };
                        let key = match &net {
                            Some(u) => u.key(),
                            None => p.display().to_string(),
                        };
                        if !seen.insert(key) {
                            return Err(TicketError::InvalidField {
                                field,
                                reason: format!("{} is named by another disk", p.display()),
                            }
                            .into());
                        }
                        disks.push(ResolvedDisk {
                            href: d.href.clone(),
                            disk_id: d.disk_id.clone(),
                            path: p,
                            net,
                            format: d.format.clone(),
                        });
                    }
                    let ovf = match &spec.ovf {
                        Some(u) => Some(self.resolve_path(
                            "ova.ovf",
                            &file_url_path("ova.ovf", u)?,
                            false,
                        )?),
                        None => None,
                    };
                    ova = Some(ResolvedOva {
                        disks,
                        ovf,
                        name: spec.name.clone(),
                        vm: spec.vm.clone(),
                        manifest: spec.manifest.clone(),
                        disk_format: spec.disk_format.clone(),
                        compress: spec.compress,
                    });
                }
            }
        }
        Ok(Spec {
            req,
            path,
            net,
            format,
            ova,
        })
    }

    /// The format of the volume at the canonical `path`: the `stated` one,
    /// which for qcow2 must find a qcow2 header, or the one its header
    /// shows. A volume that does not exist yet is raw (it is created at
    /// the first write); a qcow2 one must exist. Decided once, here: the
    /// bytes an upload writes into a raw volume never turn it into
    /// another format.
    pub(super) fn resolve_format(&self, path: &Path, stated: Option<Format>) -> Result<Format> {
        let field_error = |reason: String| -> Error {
            TicketError::InvalidField {
                field: "format".to_owned(),
                reason: format!("{}: {reason}", path.display()),
            }
            .into()
        };
        // Non-blocking, so that a FIFO named by a ticket cannot hold the
        // control API; nothing is read from anything but a file's start.
        let file = match self.roots.open(path, OFlags::RDONLY | OFlags::NONBLOCK, 0) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return match stated {
                    Some(Format::Qcow2) => Err(field_error(
                        "a qcow2 volume must exist before its ticket is added".to_owned(),
                    )),
                    _ => Ok(Format::Raw),
                };
            }
            Err(e) => return Err(e),
        };
        let found = crate::volume::probe(&file, path)?;
        match (stated, found) {
            (Some(Format::Qcow2), Format::Raw) => {
                Err(field_error("has no qcow2 header".to_owned()))
            }
            // A raw volume's guest can write a qcow2 header naming any
            // file as its backing file; only the engine, by stating the
            // format, may have a backing chain followed.
            (None, Format::Qcow2) if crate::volume::qcow2::names_backing_file(&file, path)? => Err(field_error(
                "is a qcow2 image with a backing file: state \"format\": \"qcow2\" to serve it with its chain (the header of a raw volume can look like this too)"
                    .to_owned(),
            )),
            (Some(f), _) => Ok(f),
            (None, f) => Ok(f),
        }
    }

    /// The canonical form of `p` under the roots. A write target that does
    /// not exist yet (`create`) is judged by its directory.
    pub(crate) fn resolve_path(&self, field: &str, p: &Path, create: bool) -> Result<PathBuf> {
        let invalid = |reason: &str| -> Error {
            TicketError::InvalidField {
                field: field.to_owned(),
                reason: format!("{}: {reason}", p.display()),
            }
            .into()
        };
        let canon = match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() && std::fs::metadata(p).is_err() => {
                return Err(invalid("is a symbolic link to nothing"));
            }
            Ok(_) => self.roots.check(p)?,
            Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
                    return Err(invalid("names no file"));
                };
                self.roots.check(dir)?.join(name)
            }
            Err(e) => return Err(Error::from(e).at_path(p)),
        };
        if canon.is_dir() {
            return Err(invalid("is a directory"));
        }
        Ok(canon)
    }
}
