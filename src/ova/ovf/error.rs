//! What is wrong with an OVF descriptor.

use crate::error::{Classify, ErrorKind};

/// What is wrong with an OVF descriptor. `offset` is a byte offset within
/// the descriptor: the start of the element at fault, or where the XML
/// reader stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OvfError {
    /// The descriptor is larger than [`limits::MAX_OVF_SIZE`].
    #[error("OVF descriptor is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The descriptor is not UTF-8.
    #[error("OVF descriptor is not valid UTF-8")]
    NotUtf8 {
        /// First invalid byte.
        offset: u64,
    },
    /// Not well-formed XML.
    #[error("malformed XML: {message}")]
    Xml {
        /// Where the reader stopped.
        offset: u64,
        /// The XML reader's message.
        message: String,
    },
    /// A DOCTYPE declares entities (the "billion laughs" family).
    #[error("the DOCTYPE declares entities, which are not accepted")]
    EntityDeclaration {
        /// Start of the DOCTYPE.
        offset: u64,
    },
    /// A reference to an entity other than the five predefined ones.
    #[error("unknown entity reference '&{name};'")]
    UnknownEntity {
        /// Where the reference is.
        offset: u64,
        /// The entity name.
        name: String,
    },
    /// Elements nested deeper than [`limits::MAX_XML_DEPTH`].
    #[error("elements nested deeper than {limit} levels")]
    TooDeep {
        /// The element that went too deep.
        offset: u64,
        /// The limit.
        limit: usize,
    },
    /// More `File` or `Disk` elements than [`limits::MAX_OVF_FILES`].
    #[error("more than {limit} <{element}> elements")]
    TooMany {
        /// The element over the limit.
        offset: u64,
        /// `File` or `Disk`.
        element: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The root element is not an OVF `Envelope`, or there is none.
    #[error("expected an OVF <Envelope> root element, found {found}")]
    NotOvf {
        /// Where the root element (or the end) is.
        offset: u64,
        /// What was found instead.
        found: String,
    },
    /// A required attribute is missing.
    #[error("<{element}> lacks the ovf:{attribute} attribute")]
    MissingAttribute {
        /// Start of the element.
        offset: u64,
        /// The element's local name.
        element: &'static str,
        /// The attribute's local name.
        attribute: &'static str,
    },
    /// An attribute has a value that cannot be used.
    #[error("<{element} ovf:{attribute}=\"{value}\">: {reason}")]
    BadAttribute {
        /// Start of the element.
        offset: u64,
        /// The element's local name.
        element: &'static str,
        /// The attribute's local name.
        attribute: &'static str,
        /// The value as found.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A disk larger than [`limits::MAX_CAPACITY`].
    #[error("disk '{disk_id}' has a capacity of {capacity} bytes, over the limit of {limit}")]
    CapacityTooLarge {
        /// Start of the `Disk` element.
        offset: u64,
        /// The disk's `ovf:diskId`.
        disk_id: String,
        /// The capacity in bytes.
        capacity: u64,
        /// The limit.
        limit: u64,
    },
    /// A valid OVF feature ovaio does not implement.
    #[error("{what} are not supported")]
    Unsupported {
        /// Start of the element using it.
        offset: u64,
        /// The feature, e.g. `compressions other than gzip`.
        what: String,
    },
    /// Two `File` elements share an `ovf:id`, or two `Disk`s an `ovf:diskId`.
    #[error("<{element}> id '{id}' appears twice")]
    DuplicateId {
        /// Start of the second element.
        offset: u64,
        /// `File` or `Disk`.
        element: &'static str,
        /// The repeated id.
        id: String,
    },
    /// Two `File` elements share an `ovf:href`.
    #[error("<File> href '{href}' appears twice")]
    DuplicateHref {
        /// Start of the second element.
        offset: u64,
        /// The repeated href.
        href: String,
    },
    /// A `Disk` names a file that References does not list.
    #[error("disk '{disk_id}' refers to file '{file_ref}', which References does not list")]
    DanglingFileRef {
        /// Start of the `Disk` element.
        offset: u64,
        /// The disk's `ovf:diskId`.
        disk_id: String,
        /// The missing file id.
        file_ref: String,
    },
    /// Two `Disk` elements name the same file.
    #[error("disk '{disk_id}' refers to file '{file_ref}', which another disk already uses")]
    SharedFileRef {
        /// Start of the second `Disk` element.
        offset: u64,
        /// The disk's `ovf:diskId`.
        disk_id: String,
        /// The shared file id.
        file_ref: String,
    },
    /// A `File` href is also the entry name of a chunk of a chunked file,
    /// so one tar entry would stand for two files.
    #[error("<File> href '{href}' is also the name of a chunk of the chunked file '{chunked}'")]
    ChunkNameClash {
        /// Start of the `File` element with the plain href.
        offset: u64,
        /// The href that looks like a chunk.
        href: String,
        /// The chunked file's href.
        chunked: String,
    },
}

impl Classify for OvfError {
    /// Offset within the descriptor.
    fn offset(&self) -> Option<u64> {
        match *self {
            OvfError::TooLarge { .. } => None,
            OvfError::NotUtf8 { offset, .. }
            | OvfError::Xml { offset, .. }
            | OvfError::EntityDeclaration { offset, .. }
            | OvfError::UnknownEntity { offset, .. }
            | OvfError::TooDeep { offset, .. }
            | OvfError::TooMany { offset, .. }
            | OvfError::NotOvf { offset, .. }
            | OvfError::MissingAttribute { offset, .. }
            | OvfError::BadAttribute { offset, .. }
            | OvfError::CapacityTooLarge { offset, .. }
            | OvfError::Unsupported { offset, .. }
            | OvfError::DuplicateId { offset, .. }
            | OvfError::DuplicateHref { offset, .. }
            | OvfError::DanglingFileRef { offset, .. }
            | OvfError::SharedFileRef { offset, .. }
            | OvfError::ChunkNameClash { offset, .. } => Some(offset),
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            OvfError::TooLarge { .. }
            | OvfError::TooDeep { .. }
            | OvfError::TooMany { .. }
            | OvfError::CapacityTooLarge { .. } => ErrorKind::LimitExceeded,
            OvfError::Unsupported { .. } => ErrorKind::Unsupported,
            OvfError::DuplicateId { .. }
            | OvfError::DuplicateHref { .. }
            | OvfError::DanglingFileRef { .. }
            | OvfError::SharedFileRef { .. }
            | OvfError::ChunkNameClash { .. } => ErrorKind::CorruptImage,
            _ => ErrorKind::InvalidFormat,
        }
    }
}
