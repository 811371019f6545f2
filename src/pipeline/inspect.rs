//! Inspection: one pass over a package that records its entries and
//! parses its OVF and manifest, without writing anything.

use std::io::Read;

use serde::Serialize;

use crate::codec::probe::{self, PROBE_LEN};
use crate::error::{Error, ErrorKind, Result};
use crate::limits;
use crate::ova::demux::{Demux, EntryType, Event};
use crate::ova::manifest;
use crate::ova::ovf::{self, Compression};

/// What `ovaio inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// Name of the OVF entry.
    pub ovf: String,
    /// The virtual system's name, if the OVF gives one.
    pub name: Option<String>,
    /// OVF References.
    pub files: Vec<FileInfo>,
    /// OVF DiskSection.
    pub disks: Vec<DiskInfo>,
    /// The manifest, if any.
    pub manifest: Option<ManifestInfo>,
    /// Every regular tar entry, in package order.
    pub entries: Vec<EntryInfo>,
}

/// One OVF File reference.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`.
    pub href: String,
    /// `ovf:size`.
    pub size: Option<u64>,
    /// `none` or `gzip`.
    pub compression: &'static str,
}

/// One OVF Disk.
#[derive(Debug, Clone, Serialize)]
pub struct DiskInfo {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// The href of its file.
    pub href: Option<String>,
    /// Capacity in bytes.
    pub capacity: u64,
    /// `ovf:format`.
    pub format_uri: Option<String>,
    /// The format `ovf:format` names (`vmdk (streamOptimized)`, `qcow2`,
    /// ...), or the URI itself when it names none ovaio knows.
    pub declared_format: Option<String>,
    /// `ovf:populatedSize`.
    pub populated_size: Option<u64>,
    /// Format recognised from the entry's content by the probe import
    /// decides with; the content wins over `declared_format`.
    pub detected_format: Option<&'static str>,
}

/// The manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestInfo {
    /// Entry name.
    pub name: String,
    /// Digest algorithm(s) used.
    pub algorithm: String,
    /// How many files it lists.
    pub entries: usize,
}

/// One tar entry.
#[derive(Debug, Clone, Serialize)]
pub struct EntryInfo {
    /// Entry name.
    pub name: String,
    /// Content size.
    pub size: u64,
    /// Offset of the content in the package.
    pub offset: u64,
}

/// Reads a whole package and reports on it.
pub fn inspect(reader: &mut dyn Read) -> Result<InspectReport> {
    let mut demux = Demux::new();
    let mut entries: Vec<EntryInfo> = Vec::new();
    let mut heads: Vec<Vec<u8>> = Vec::new();
    let mut ovf_buf: Option<(String, Vec<u8>)> = None;
    let mut mf_buf: Option<(String, Vec<u8>)> = None;
    let mut collecting: Option<usize> = None; // 0 ovf, 1 mf
    // Inside a regular entry: the content of any other belongs to no file.
    let mut in_file = false;
    let mut buf = vec![0u8; limits::READ_CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let (used, ev) = demux.step(rest)?;
            rest = &rest[used..];
            match ev {
                Some(Event::Begin(h)) if !h.entry_type.is_known() => {
                    return Err(h.entry_type.unknown_error().in_entry(&h.name));
                }
                Some(Event::Begin(h)) if h.entry_type == EntryType::Regular => {
                    in_file = true;
                    let lower = h.name.to_ascii_lowercase();
                    collecting = None;
                    if lower.ends_with(".ovf") && ovf_buf.is_none() {
                        if h.size > limits::MAX_OVF_SIZE {
                            return Err(Error::new(
                                ErrorKind::LimitExceeded,
                                "OVF descriptor over the size limit",
                            )
                            .in_entry(&h.name));
                        }
                        ovf_buf = Some((h.name.clone(), Vec::new()));
                        collecting = Some(0);
                    } else if lower.ends_with(".mf") && mf_buf.is_none() {
                        if h.size > limits::MAX_MANIFEST_SIZE {
                            return Err(Error::new(
                                ErrorKind::LimitExceeded,
                                "manifest over the size limit",
                            )
                            .in_entry(&h.name));
                        }
                        mf_buf = Some((h.name.clone(), Vec::new()));
                        collecting = Some(1);
                    }
                    entries.push(EntryInfo {
                        name: h.name,
                        size: h.size,
                        offset: h.data_offset,
                    });
                    heads.push(Vec::new());
                }
                Some(Event::Data(d)) if in_file => {
                    if let Some(h) = heads.last_mut()
                        && h.len() < PROBE_LEN
                    {
                        let take = (PROBE_LEN - h.len()).min(d.len());
                        h.extend_from_slice(&d[..take]);
                    }
                    match collecting {
                        Some(0) => {
                            if let Some((_, b)) = &mut ovf_buf {
                                b.extend_from_slice(d)
                            }
                        }
                        Some(1) => {
                            if let Some((_, b)) = &mut mf_buf {
                                b.extend_from_slice(d)
                            }
                        }
                        _ => {}
                    }
                }
                Some(Event::End) => {
                    collecting = None;
                    in_file = false;
                }
                _ => {}
            }
        }
    }
    // A package without end-of-archive blocks leaves its last End pending.
    let _ = demux.step(&[])?;
    demux.finish()?;
    let Some((ovf_name, ovf_bytes)) = ovf_buf else {
        return Err(Error::new(
            ErrorKind::CorruptImage,
            "the package has no OVF descriptor (.ovf entry)",
        ));
    };
    let env = ovf::parse(&ovf_bytes).map_err(|e| Error::from(e).in_entry(&ovf_name))?;
    let manifest = match mf_buf {
        Some((name, bytes)) => {
            let m = manifest::parse(&bytes).map_err(|e| Error::from(e).in_entry(&name))?;
            let algs: Vec<String> = m
                .algorithms()
                .iter()
                .map(|a| format!("{a:?}").to_uppercase())
                .collect();
            Some(ManifestInfo {
                name,
                algorithm: algs.join(","),
                entries: m.entries.len(),
            })
        }
        None => None,
    };
    let files = env
        .files
        .iter()
        .map(|f| FileInfo {
            id: f.id.clone(),
            href: f.href.clone(),
            size: f.size,
            compression: match f.compression {
                Compression::Gzip => "gzip",
                _ => "none",
            },
        })
        .collect();
    let disks = env
        .disks
        .iter()
        .map(|d| {
            let href = d
                .file_ref
                .as_ref()
                .and_then(|r| env.files.iter().find(|f| &f.id == r))
                .map(|f| f.href.clone());
            let detected_format = href.as_ref().and_then(|h| {
                let i = entries.iter().position(|e| &e.name == h)?;
                Some(probe::probe(&heads[i]).name())
            });
            DiskInfo {
                disk_id: d.disk_id.clone(),
                href,
                capacity: d.capacity,
                format_uri: d.format.clone(),
                declared_format: d.format.as_deref().map(|u| probe::declared(u).label),
                populated_size: d.populated_size,
                detected_format,
            }
        })
        .collect();
    Ok(InspectReport {
        ovf: ovf_name,
        name: env.name.clone(),
        files,
        disks,
        manifest,
        entries,
    })
}
