//! Why a zip archive was refused.

use super::*;

/// Why a zip archive was refused. Every variant carries the archive
/// offset of the problem, and the member's name where one is concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZipError {
    /// A feature ovaio does not read.
    #[error("{what}")]
    Unsupported {
        /// Offset of the record.
        offset: u64,
        /// The member, if known.
        member: Option<String>,
        /// What it is, and what to do.
        what: String,
    },
    /// A stored member with a data descriptor.
    #[error(
        "stored zip member with a data descriptor (general purpose flag bit 3): its local header does not give its size and stored data does not mark its own end, so it cannot be read as a stream; store it with its sizes in the local header, or deflate it"
    )]
    StoredWithDescriptor {
        /// Offset of the local header.
        offset: u64,
        /// The member.
        member: String,
    },
    /// The archive or a member is inconsistent.
    #[error("{reason}")]
    Corrupt {
        /// Offset of the record or data.
        offset: u64,
        /// The member, if one is concerned.
        member: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// A member name longer than [`limits::MAX_ZIP_NAME`].
    #[error("zip member name of {len} bytes exceeds the limit of {limit} bytes")]
    NameTooLong {
        /// Offset of the local header.
        offset: u64,
        /// The name's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// More members than [`limits::MAX_ENTRIES`].
    #[error("zip archive with more than {limit} members")]
    TooManyMembers {
        /// Offset of the local header over the limit.
        offset: u64,
        /// The limit.
        limit: usize,
    },
    /// The archive ended before its end record.
    #[error("zip archive truncated in {what}")]
    Truncated {
        /// Where it ended.
        offset: u64,
        /// The member being read, if any.
        member: Option<String>,
        /// The part that was cut.
        what: &'static str,
    },
}

impl ZipError {
    /// The member concerned, if any.
    pub fn member(&self) -> Option<&str> {
        match self {
            ZipError::Unsupported { member, .. }
            | ZipError::Corrupt { member, .. }
            | ZipError::Truncated { member, .. } => member.as_deref(),
            ZipError::StoredWithDescriptor { member, .. } => Some(member),
            ZipError::NameTooLong { .. } | ZipError::TooManyMembers { .. } => None,
        }
    }
}

impl Classify for ZipError {
    fn kind(&self) -> ErrorKind {
        match self {
            ZipError::Unsupported { .. } | ZipError::StoredWithDescriptor { .. } => {
                ErrorKind::Unsupported
            }
            ZipError::NameTooLong { .. } | ZipError::TooManyMembers { .. } => {
                ErrorKind::LimitExceeded
            }
            ZipError::Corrupt { .. } | ZipError::Truncated { .. } => ErrorKind::CorruptImage,
        }
    }

    /// Offset in the archive: the package itself.
    fn offset(&self) -> Option<u64> {
        match *self {
            ZipError::Unsupported { offset, .. }
            | ZipError::StoredWithDescriptor { offset, .. }
            | ZipError::Corrupt { offset, .. }
            | ZipError::NameTooLong { offset, .. }
            | ZipError::TooManyMembers { offset, .. }
            | ZipError::Truncated { offset, .. } => Some(offset),
        }
    }
}

/// The name of a compression method, for messages.
pub(super) fn method_name(m: u16) -> &'static str {
    match m {
        1 => "shrunk",
        2..=5 => "reduced",
        6 => "imploded",
        9 => "deflate64",
        12 => "bzip2",
        14 => "LZMA",
        93 => "zstd",
        95 => "xz",
        96 => "JPEG",
        97 => "WavPack",
        98 => "PPMd",
        _ => "unknown",
    }
}
