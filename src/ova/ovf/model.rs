//! The descriptor's model: the files a package references and the disks
//! they carry.

/// How a referenced file is stored in the package.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    #[default]
    None,
    /// `ovf:compression="gzip"`: the entry is gzip (possibly multi-member);
    /// `ovf:size` and manifest digests are of the compressed bytes.
    Gzip,
}

/// A `References/File` element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// `ovf:id`, what `Disk/@ovf:fileRef` points at.
    pub id: String,
    /// `ovf:href`: the tar entry name (a plain file name, checked).
    pub href: String,
    /// `ovf:size`: bytes of the entry as stored (compressed if compressed).
    pub size: Option<u64>,
    /// `ovf:compression`.
    pub compression: Compression,
    /// `ovf:chunkSize`: the file is stored as consecutive entries
    /// [`chunk_name`]`(href, 0)`, `(href, 1)`, ... of this many bytes each
    /// (the last one fewer), and `size` is the whole file's.
    pub chunk_size: Option<u64>,
}

/// Digits of the index ovftool appends to the href of each chunk of a
/// chunked file (`disk.vmdk.000000000`, `disk.vmdk.000000001`, ...).
pub const CHUNK_INDEX_DIGITS: usize = 9;

/// The tar entry name of chunk `index` of the chunked file `href`.
pub fn chunk_name(href: &str, index: u64) -> String {
    format!("{href}.{index:0width$}", width = CHUNK_INDEX_DIGITS)
}

/// Splits an entry name shaped like a chunk (`href.` and
/// [`CHUNK_INDEX_DIGITS`] decimal digits) into the href and the index.
/// Only the OVF can say whether such an entry is a chunk; before it
/// arrives, the shape is all there is.
pub fn split_chunk_name(name: &str) -> Option<(&str, u64)> {
    let at = name.len().checked_sub(CHUNK_INDEX_DIGITS + 1)?;
    let (href, suffix) = (name.get(..at)?, name.get(at..)?);
    let digits = suffix.strip_prefix('.')?;
    if href.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((href, digits.parse().ok()?))
}

/// A `DiskSection/Disk` element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDesc {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// `ovf:fileRef`: the [`FileRef::id`] holding the disk's content; `None`
    /// for a blank disk to be created.
    pub file_ref: Option<String>,
    /// Virtual size in bytes (`ovf:capacity` × `ovf:capacityAllocationUnits`).
    pub capacity: u64,
    /// `ovf:format`: the disk format URI.
    pub format: Option<String>,
    /// `ovf:populatedSize`: bytes of guest data actually in use, if given.
    pub populated_size: Option<u64>,
}

/// The parts of an OVF envelope the data plane needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// `Envelope/@ovf:version` (OVF 2.0 writers put `2.0`; oVirt its own
    /// version).
    pub version: Option<String>,
    /// The first virtual system's `Name`, else its `ovf:id`.
    pub name: Option<String>,
    /// Files in References order; ids and hrefs are unique.
    pub files: Vec<FileRef>,
    /// Disks in DiskSection order; each `file_ref` names a file in `files`
    /// and no two disks share one.
    pub disks: Vec<DiskDesc>,
}

impl Envelope {
    /// The file whose `ovf:href` is `href`.
    pub fn file_by_href(&self, href: &str) -> Option<&FileRef> {
        self.files.iter().find(|f| f.href == href)
    }

    /// The disk whose content is the file with `ovf:href` `href`.
    pub fn disk_for_href(&self, href: &str) -> Option<&DiskDesc> {
        let file = self.file_by_href(href)?;
        self.disks
            .iter()
            .find(|d| d.file_ref.as_deref() == Some(file.id.as_str()))
    }

    /// The file a tar entry named `name` holds: the whole file (`None`
    /// index) when `name` is the href of an unchunked file, or one chunk
    /// of a chunked file. A chunked file's href alone names no entry.
    pub fn file_for_entry(&self, name: &str) -> Option<(&FileRef, Option<u64>)> {
        if let Some(f) = self.file_by_href(name)
            && f.chunk_size.is_none()
        {
            return Some((f, None));
        }
        let (href, index) = split_chunk_name(name)?;
        let f = self.file_by_href(href)?;
        f.chunk_size.map(|_| (f, Some(index)))
    }

    /// Disks with no file: blank disks the importer creates empty.
    pub fn blank_disks(&self) -> impl Iterator<Item = &DiskDesc> {
        self.disks.iter().filter(|d| d.file_ref.is_none())
    }
}
