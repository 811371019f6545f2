//! The end of an import: the package verified against its manifests and
//! descriptor, then every target committed, or none.

use super::*;

impl Importer {
    /// The stream ended: verify everything, then commit the targets.
    pub fn finish(self) -> Result<ImportSummary> {
        // Targets may be opened while finishing (a held-back tail).
        let mut notes: Vec<String> = self
            .disks
            .iter()
            .map(|d| &d.out)
            .chain(self.blanks.iter().map(|b| &b.out))
            .filter_map(|s| s.target().net.as_ref())
            .map(crate::sink::nbd::Landing::failure_note)
            .collect();
        notes.dedup();
        self.finish_all().map_err(|e| with_notes(e, &notes))
    }

    pub(super) fn finish_all(mut self) -> Result<ImportSummary> {
        self.progress.check_cancelled()?;
        // A compressed stream or a zip archive must be complete.
        while let Some(p) = self.unpack.finish()? {
            self.piece(p)?;
        }
        let container = self.unpack.container().unwrap_or(Container::Tar);
        if container != Container::Zip {
            self.finish_tar()?;
        }
        if let Some(name) = self.current_name() {
            return Err(
                Error::new(ErrorKind::CorruptImage, "package ends inside an entry").in_entry(name),
            );
        }
        // A package directory is set by an entry, even one that is only
        // the directory's own.
        if self.records.is_empty() && self.others.is_empty() && self.layout.directory().is_none() {
            if container == Container::Zip {
                return Err(Error::new(
                    ErrorKind::InvalidFormat,
                    "not an OVA package: the zip archive holds no members",
                ));
            }
            return Err(self.head.no_entries());
        }
        // The package may end with a chunk: so does its run.
        if let Some(open) = self.open_run.take() {
            self.end_run(open, &|e| e)?;
        }
        let Some((ovf_name, env)) = self.ovf.take() else {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                "the package has no OVF descriptor (.ovf entry)",
            ));
        };
        // Every referenced file must have arrived, with the size the OVF promised.
        for f in &env.files {
            if let Some(decl) = Declared::of(f) {
                let run = self.runs.get(&f.href).cloned();
                run.unwrap_or_else(|| ChunkRun::new(&f.href))
                    .check(decl)
                    .map_err(|e| e.in_entry(&ovf_name))?;
                continue;
            }
            let Some(&ri) = self.by_name.get(&f.href) else {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "the OVF references '{}' but the package has no such entry",
                        printable(&f.href)
                    ),
                )
                .in_entry(&ovf_name));
            };
            let rec = &self.records[ri];
            // Some writers (oVirt) put the image's allocated size in
            // ovf:size, so a difference is worth a warning, not a failure:
            // the tar header frames the stream and the manifest vouches for it.
            if let Some(size) = f.size
                && size != rec.size
            {
                tracing::warn!(
                    entry = %rec.name,
                    tar_size = rec.size,
                    ovf_size = size,
                    "entry size differs from the OVF's ovf:size"
                );
            }
        }
        // Every disk named on the command line must have been in the package.
        for name in self.targets.named() {
            if self.disks.iter().any(|d| d.href == name)
                || self.blanks.iter().any(|b| b.disk_id == name)
            {
                continue;
            }
            let with_file = env
                .disks
                .iter()
                .find(|d| d.disk_id == name)
                .and_then(|d| d.file_ref.as_deref())
                .and_then(|id| env.files.iter().find(|f| f.id == id));
            let why = match with_file {
                Some(f) => format!(
                    "--disk names disk '{}', which has a file: name it by its href '{}'",
                    printable(name),
                    printable(&f.href)
                ),
                None => format!(
                    "--disk names '{}' but the package has no such disk",
                    printable(name)
                ),
            };
            return Err(Error::new(ErrorKind::NotFound, why));
        }
        // Disks that came before the OVF but turned out not to be disks.
        let mut keep = vec![true; self.disks.len()];
        for (i, d) in self.disks.iter().enumerate() {
            if env.disk_for_href(&d.href).is_none() {
                keep[i] = false;
                match self.runs.get(&d.href) {
                    Some(run) if d.chunked => self
                        .skipped
                        .extend((0..run.count()).map(|c| chunk_name(&d.href, c))),
                    _ => self.skipped.push(d.href.clone()),
                }
            }
        }
        // Every disk of the DiskSection that has a file must have been written.
        for disk in &env.disks {
            let Some(file) = disk
                .file_ref
                .as_deref()
                .and_then(|id| env.files.iter().find(|f| f.id == id))
            else {
                continue;
            };
            let written = self
                .disks
                .iter()
                .zip(&keep)
                .any(|(d, &k)| k && d.href == file.href);
            if !written {
                let why = if role::is_extra_name(&file.href) {
                    "is a disk in the OVF but came before it under a name that is otherwise skipped (padding, TPM or NVRAM state, a certificate); put the OVF first or name the disk with --disk"
                } else {
                    "is a disk in the OVF but was not written"
                };
                return Err(Error::new(ErrorKind::CorruptImage, why).in_entry(&file.href));
            }
        }
        let digests = std::mem::replace(&mut self.digests, DigestTap::idle()).finish();
        for r in &mut self.records {
            if let Some(d) = digests.get(&r.name) {
                r.digests.clone_from(d);
            }
        }
        let manifest_state = self.verify_manifests()?;
        // Flush and fsync every target before renaming any.
        let mut summaries = Vec::new();
        let mut commits = Vec::new();
        for (i, d) in self.disks.into_iter().enumerate() {
            if !keep[i] {
                continue;
            }
            let format = d.decoder.format().unwrap_or(SourceFormat::Raw);
            let target_format = d.out.target().format.name();
            let Some((partial, writer)) = d.out.into_opened() else {
                return Err(
                    Error::new(ErrorKind::CorruptImage, "disk produced no target")
                        .in_entry(&d.href),
                );
            };
            let capacity = writer.capacity();
            writer
                .finish()
                .map_err(|e| e.at_path(partial.partial_path()))?;
            let desc = env.disk_for_href(&d.href);
            let format_uri = desc.and_then(|disk| disk.format.as_deref());
            let declared_gzip = env
                .file_by_href(&d.href)
                .is_some_and(|f| f.compression == Compression::Gzip);
            let warnings: Vec<String> =
                probe::disagreements(format_uri, declared_gzip, format, d.decoder.is_gzip())
                    .into_iter()
                    .map(|w| format!("{}: {w}", d.href))
                    .collect();
            for w in &warnings {
                tracing::warn!("{w}");
            }
            summaries.push(DiskSummary {
                disk_id: desc.map(|disk| disk.disk_id.clone()).unwrap_or_default(),
                blank: false,
                chunks: d
                    .chunked
                    .then(|| self.runs.get(&d.href).map_or(0, ChunkRun::count)),
                source_format: format.name(),
                declared_format: format_uri.map(|u| probe::declared(u).label),
                compression: if d.decoder.is_gzip() { "gzip" } else { "none" },
                target: partial.final_path().to_path_buf(),
                target_format,
                capacity,
                warnings,
                href: d.href,
            });
            commits.push(partial);
        }
        for b in self.blanks {
            let target_format = b.out.target().format.name();
            let Some((partial, writer)) = b.out.into_opened() else {
                return Err(Error::internal(format!(
                    "blank disk '{}' has no target",
                    printable(&b.disk_id)
                )));
            };
            let capacity = writer.capacity();
            writer
                .finish()
                .map_err(|e| e.at_path(partial.partial_path()))?;
            summaries.push(DiskSummary {
                href: String::new(),
                disk_id: b.disk_id,
                blank: true,
                chunks: None,
                source_format: "blank",
                declared_format: b.format_uri.map(|u| probe::declared(&u).label),
                compression: "none",
                target: partial.final_path().to_path_buf(),
                target_format,
                capacity,
                warnings: Vec::new(),
            });
            commits.push(partial);
        }
        summaries.sort_by_key(|s| env.disks.iter().position(|d| d.disk_id == s.disk_id));
        for p in commits {
            p.commit()?;
        }
        Ok(ImportSummary {
            bytes_read: self.fed,
            ovf: ovf_name,
            directory: self.layout.directory().map(str::to_owned),
            manifest: manifest_state,
            manifests: self.manifests.into_iter().map(|(n, _)| n).collect(),
            disks: summaries,
            skipped: self.skipped,
            compression: container.compression(),
            archive: container.archive(),
        })
    }

    /// The tar stream ended: it must end between entries.
    pub(super) fn finish_tar(&mut self) -> Result<()> {
        // A package without end-of-archive blocks leaves its last End pending.
        if let (_, Some(Event::End)) = self.demux.step(&[]).map_err(Error::from)? {
            self.end().map_err(|e| self.unpack.in_tar(e))?;
        }
        self.demux.finish().map_err(|e| {
            let e = self.head.tar_error(e);
            let e = match self.current_name() {
                Some(n) => e.in_entry(n),
                None => e,
            };
            self.unpack.in_tar(e)
        })
    }

    /// Every line of every manifest, each against the digests of its
    /// entry; the first that does not verify fails the import, naming its
    /// manifest.
    pub(super) fn verify_manifests(&self) -> Result<&'static str> {
        if self.manifests.is_empty() {
            return Ok("absent");
        }
        if !self.verify {
            for (mf_name, _) in &self.manifests {
                tracing::warn!(manifest = %mf_name, "manifest not checked (verification disabled)");
            }
            return Ok("not verified");
        }
        let computed = |name: &str| {
            self.by_name
                .get(name)
                .map(|&ri| self.records[ri].digests.as_slice())
        };
        for (mf_name, m) in &self.manifests {
            for (entry, check) in digests::check_manifest(m, computed) {
                if let Some(e) = check.error(entry, mf_name) {
                    return Err(e);
                }
            }
        }
        Ok("verified")
    }
}
