//! Each entry as it begins: its role, the disk or chunk it feeds, and the
//! entries that are not regular files.

use super::*;

impl Importer {
    pub(super) fn begin(&mut self, h: EntryHeader) -> Result<()> {
        self.begin_entry(h, true)
    }

    /// An entry starts; `size_known` is false for a zip member whose size
    /// only its data descriptor gives (`h.size` is then 0).
    pub(super) fn begin_entry(&mut self, h: EntryHeader, size_known: bool) -> Result<()> {
        if self.records.len() + self.others.len() >= limits::MAX_ENTRIES {
            return Err(Error::new(ErrorKind::LimitExceeded, "too many entries")
                .in_entry(&h.name)
                .at_offset(h.header_offset));
        }
        let placed = self
            .layout
            .place(&h.name, h.entry_type)
            .map_err(|e| Error::from(e).at_offset(h.header_offset))?;
        let chunk = match (&placed, h.entry_type) {
            (Some(n), EntryType::Regular) => self.chunk_of(n),
            _ => None,
        };
        // Any entry but the next chunk of a run of chunks ends that run.
        if let Some(open) = self
            .open_run
            .take_if(|r| chunk.as_ref().is_none_or(|c| c.0 != r.href))
        {
            let came = placed.as_deref().unwrap_or(&h.name);
            let at = |e: Error| e.in_entry(came).at_offset(h.header_offset);
            self.end_run(open, &at)?;
        }
        // The package directory's own entry is nothing of the package.
        let Some(name) = placed else {
            return Ok(());
        };
        let at = |e: Error| e.in_entry(&name).at_offset(h.header_offset);
        if let Some((_, what)) = self.others.iter().find(|(n, _)| *n == name) {
            return Err(at(Error::new(
                ErrorKind::CorruptImage,
                format!("entry name appears twice in the package (once as a {what})"),
            )));
        }
        if h.entry_type != EntryType::Regular {
            return self.not_a_file(&name, h.entry_type).map_err(at);
        }
        // oVirt pads with several `pad` entries; any other repeat is an error.
        if self.by_name.contains_key(&name) && name != "pad" {
            return Err(at(Error::new(
                ErrorKind::CorruptImage,
                "entry name appears twice in the package",
            )));
        }
        let extra = self.is_extra(&name);
        if !extra
            && (name.is_empty()
                || name.contains('/')
                || name.contains('\\')
                || name == ".."
                || name == ".")
        {
            return Err(at(Error::new(
                ErrorKind::CorruptImage,
                "entry name is not a plain file name (contains '/' or '..')",
            )));
        }
        self.progress.set_entry(&name);
        let mut chunk_start = 0;
        let named = if extra {
            PackageRole::Other
        } else {
            self.roles
                .classify(&name, size_known.then_some(h.size))
                .map_err(|e| at(e.into()))?
        };
        let role = if extra {
            self.skipped.push(name.clone());
            Role::Skip
        } else if named == PackageRole::Descriptor {
            Role::Ovf(Vec::with_capacity(h.size as usize))
        } else if named == PackageRole::Manifest {
            Role::Manifest(Vec::with_capacity(h.size as usize))
        } else if let Some((href, index)) = chunk {
            chunk_start = self.runs.get(&href).map_or(0, ChunkRun::total);
            let disk = self.begin_chunk(&href, index, h.size).map_err(at)?;
            self.open_run = Some(OpenRun {
                href,
                disk,
                name: name.clone(),
                data_offset: h.data_offset,
                size: h.size,
                chunk_start,
            });
            match disk {
                Some(i) => Role::Disk(i),
                None => {
                    self.skipped.push(name.clone());
                    Role::Skip
                }
            }
        } else {
            match self.start_disk(&name, size_known.then_some(h.size), false) {
                Ok(Some(i)) => Role::Disk(i),
                Ok(None) => {
                    self.skipped.push(name.clone());
                    Role::Skip
                }
                Err(e) => return Err(at(e)),
            }
        };
        let record = self.records.len();
        self.records.push(EntryRecord {
            name: name.clone(),
            size: h.size,
            digests: Vec::new(),
        });
        self.by_name.insert(name, record);
        self.current = Some(Current {
            record,
            role,
            data_offset: h.data_offset,
            received: 0,
            inflated: false,
            chunk_start,
        });
        Ok(())
    }

    /// The chunked file and index a regular entry `name` is a chunk of.
    /// The OVF decides; before it, the name's shape does, unless the
    /// caller's mapping names the entry itself.
    pub(super) fn chunk_of(&self, name: &str) -> Option<(String, u64)> {
        if let Some((_, env)) = &self.ovf {
            let (f, index) = env.file_for_entry(name)?;
            return index.map(|i| (f.href.clone(), i));
        }
        let (href, index) = split_chunk_name(name)?;
        if self.targets.names(name) && !self.targets.names(href) {
            return None;
        }
        Some((href.to_owned(), index))
    }

    /// Chunk `index` of `href`, of `size` bytes, begins: checks its place
    /// in the run and says which disk it feeds, if any.
    pub(super) fn begin_chunk(
        &mut self,
        href: &str,
        index: u64,
        size: u64,
    ) -> Result<Option<usize>> {
        let adjacent = self.open_run.as_ref().is_some_and(|r| r.href == href);
        let declared = self
            .ovf
            .as_ref()
            .and_then(|(_, env)| env.file_by_href(href))
            .and_then(Declared::of);
        self.runs
            .entry(href.to_owned())
            .or_insert_with(|| ChunkRun::new(href))
            .begin(index, size, adjacent, declared)?;
        if index == 0 {
            self.start_disk(href, declared.and_then(|d| d.size), true)
        } else {
            Ok(self.disks.iter().position(|d| d.chunked && d.href == href))
        }
    }

    /// No more chunk of `open` follows: the run must be the whole file,
    /// and its disk's content is complete. `at` places what is wrong with
    /// the run where the package went on instead. Before the OVF neither
    /// can be told yet: the run waits for it.
    pub(super) fn end_run(&mut self, open: OpenRun, at: &dyn Fn(Error) -> Error) -> Result<()> {
        let Some((_, env)) = &self.ovf else {
            self.ended_runs.push(open);
            return Ok(());
        };
        if let Some(d) = env.file_by_href(&open.href).and_then(Declared::of)
            && let Some(run) = self.runs.get(&open.href)
        {
            run.check(d).map_err(at)?;
        }
        match open.disk {
            Some(i) => finish_decoder(&mut self.disks[i], Some(&open)),
            None => Ok(()),
        }
    }

    /// Whether `name` is one of the files producers add beside the disks
    /// (padding, TPM and NVRAM state, a signing certificate), skipped
    /// unless the OVF or the caller's mapping makes it a disk. Before the
    /// OVF only the mapping can say so; a disk skipped that way is caught
    /// when the import finishes.
    pub(super) fn is_extra(&self, name: &str) -> bool {
        if !role::is_extra_name(name) {
            return false;
        }
        let ovf_disk = self
            .ovf
            .as_ref()
            .is_some_and(|(_, env)| env.disk_for_href(name).is_some());
        !ovf_disk && !self.targets.names(name)
    }

    /// A tar entry that is not a regular file: GNU tar and Python's tarfile
    /// would resolve its name to something else, so it may not stand for
    /// a file of the package or shadow another entry.
    pub(super) fn not_a_file(&mut self, name: &str, ty: EntryType) -> Result<()> {
        if !ty.is_known() {
            return Err(ty.unknown_error());
        }
        let what = ty.describe();
        if self.by_name.contains_key(name) {
            return Err(Error::new(
                ErrorKind::CorruptImage,
                format!(
                    "a {what} entry has the name of an earlier entry; an OVA carries only regular files"
                ),
            ));
        }
        if let Some((_, env)) = &self.ovf
            && env.file_for_entry(name).is_some()
        {
            return Err(referenced_non_file(what));
        }
        tracing::debug!(
            name,
            what,
            "skipping a tar entry that is not a regular file"
        );
        self.others.push((name.to_owned(), what));
        self.skipped.push(name.to_owned());
        Ok(())
    }
}
