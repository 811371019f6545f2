//! Why a tar stream was rejected.

use super::*;

/// Why the tar stream was rejected. Every variant carries the stream
/// offset (bytes from the start of the tar stream) where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarError {
    /// The header checksum does not match.
    #[error(
        "tar header at byte {offset}: checksum mismatch (stored {stored}, computed {computed})"
    )]
    BadChecksum {
        /// Offset of the header block.
        offset: u64,
        /// The checksum stored in the header.
        stored: u64,
        /// The unsigned sum of the header bytes.
        computed: u64,
    },
    /// A numeric header field cannot be decoded.
    #[error("tar header at byte {offset}: bad {field} field: {reason}")]
    BadField {
        /// Offset of the header block.
        offset: u64,
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A PAX extended header record is malformed.
    #[error("PAX record at byte {offset}: {reason}")]
    BadPax {
        /// Offset of the record.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An extension header is too large.
    #[error("{what} at byte {offset}: size {size} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Offset of the extension header block.
        offset: u64,
        /// Which kind of extension header.
        what: &'static str,
        /// The size it declares.
        size: u64,
        /// The limit from `limits.rs`.
        limit: u64,
    },
    /// The archive holds more entries than `limits::MAX_ENTRIES`.
    #[error("tar header at byte {offset}: more than {limit} entries")]
    TooManyEntries {
        /// Offset of the header block of the entry over the limit.
        offset: u64,
        /// The limit.
        limit: usize,
    },
    /// An extension header (PAX `x`, GNU `L`/`K`) is not directly followed
    /// by the entry it describes.
    #[error("{what} at byte {offset} is followed by {found} instead of an entry")]
    DanglingExtension {
        /// Offset of the offending block (the end marker or the second
        /// extension header).
        offset: u64,
        /// The pending extension header.
        what: &'static str,
        /// What came instead.
        found: &'static str,
    },
    /// A zero block followed by a non-zero block.
    #[error("tar stream at byte {offset}: a lone zero block is followed by a header")]
    LoneZeroBlock {
        /// Offset of the zero block.
        offset: u64,
    },
    /// An entry has an empty name.
    #[error("tar header at byte {offset}: entry has an empty name")]
    EmptyName {
        /// Offset of the header block.
        offset: u64,
    },
    /// A link, device, FIFO or directory entry declares content; readers
    /// disagree on whether such content is present, so it is refused.
    #[error("entry '{entry}' at byte {offset}: typeflag '{typeflag}' with non-zero size {size}")]
    UnexpectedSize {
        /// Offset of the header block.
        offset: u64,
        /// The entry name.
        entry: String,
        /// The typeflag, as a character.
        typeflag: char,
        /// The declared size.
        size: u64,
    },
    /// A tar feature ovaio does not read.
    #[error("tar stream at byte {offset}: unsupported {what}")]
    Unsupported {
        /// Offset of the header block or record.
        offset: u64,
        /// The feature.
        what: &'static str,
    },
    /// The source ended before the archive was complete.
    #[error("tar stream truncated at byte {offset} in {what}{}", entry_suffix(.entry))]
    Truncated {
        /// Stream offset where the source ended.
        offset: u64,
        /// The entry being read, if any.
        entry: Option<String>,
        /// The part of the archive that was cut.
        what: &'static str,
    },
    /// `finish` was called while an `End` event was still pending.
    #[error(
        "entry '{entry}' ended at byte {offset} but its End event was not taken (call step with \
         empty input before finish)"
    )]
    EndNotTaken {
        /// Stream offset of the end of the entry's content.
        offset: u64,
        /// The entry name.
        entry: String,
    },
}

fn entry_suffix(entry: &Option<String>) -> String {
    match entry {
        Some(e) => format!(" of entry '{e}'"),
        None => String::new(),
    }
}

impl TarError {
    /// The stream offset the error refers to.
    pub fn offset(&self) -> u64 {
        match self {
            TarError::BadChecksum { offset, .. }
            | TarError::BadField { offset, .. }
            | TarError::BadPax { offset, .. }
            | TarError::TooLarge { offset, .. }
            | TarError::TooManyEntries { offset, .. }
            | TarError::DanglingExtension { offset, .. }
            | TarError::LoneZeroBlock { offset }
            | TarError::EmptyName { offset }
            | TarError::UnexpectedSize { offset, .. }
            | TarError::Unsupported { offset, .. }
            | TarError::Truncated { offset, .. }
            | TarError::EndNotTaken { offset, .. } => *offset,
        }
    }
}

impl Classify for TarError {
    fn kind(&self) -> ErrorKind {
        match self {
            TarError::TooLarge { .. } | TarError::TooManyEntries { .. } => ErrorKind::LimitExceeded,
            TarError::Unsupported { .. } => ErrorKind::Unsupported,
            TarError::Truncated { .. } => ErrorKind::CorruptImage,
            TarError::EndNotTaken { .. } => ErrorKind::InvalidArgument,
            _ => ErrorKind::InvalidFormat,
        }
    }
}
