//! The crate's one public error: a matchable [`ErrorKind`], the place where
//! it happened ([`Context`]: path, tar entry, byte offset) and the leaf
//! error from the module that found it as its `source()`.
//!
//! Leaf modules define their own `thiserror` enums and implement
//! [`Classify`] for them; `?` then turns them into an [`Error`].

use std::fmt;
use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarsely: enough to pick an exit code or HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is not in the format it claims (bad magic, bad header).
    InvalidFormat,
    /// The input is in the right format but internally inconsistent.
    CorruptImage,
    /// A valid input that uses a feature ovaio does not implement.
    Unsupported,
    /// A digest or size does not match what the package promised.
    Integrity,
    /// A hostile-input limit was hit (see `limits.rs`).
    LimitExceeded,
    /// The caller asked for something inconsistent.
    InvalidArgument,
    /// A file or entry that must exist does not.
    NotFound,
    /// The operating system refused an operation.
    Io,
    /// The transfer was cancelled.
    Cancelled,
    /// A data-plane request is not authorized: no such ticket, an expired
    /// ticket, or an operation the ticket does not allow (HTTP 403).
    Auth,
    /// The request does not fit the state of what it addresses: a ticket
    /// whose transfer has ended takes no further upload (HTTP 409).
    Conflict,
    /// A bug in ovaio: a worker thread that panicked, a state the code
    /// rules out. Not the input's fault nor the system's (HTTP 500,
    /// exit 70).
    Internal,
}

impl ErrorKind {
    /// Process exit status for this kind (0 is success, 1 generic).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::InvalidArgument => 2,
            ErrorKind::Io => 3,
            ErrorKind::NotFound => 4,
            ErrorKind::Integrity => 5,
            ErrorKind::Unsupported => 6,
            ErrorKind::Cancelled => 130,
            ErrorKind::Internal => 70,
            _ => 1,
        }
    }
}

/// Implemented by every leaf error enum so that `?` can lift it.
pub trait Classify {
    /// The coarse kind of this error.
    fn kind(&self) -> ErrorKind;
    /// Where in its own input (a tar entry, a descriptor) the error lies,
    /// when the module that found it knows: the caller that knows where
    /// that input starts turns it into a package offset.
    fn offset(&self) -> Option<u64> {
        None
    }
}

/// Where an error happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// A file system path (source or target).
    pub path: Option<PathBuf>,
    /// A tar entry name inside the package.
    pub entry: Option<String>,
    /// A byte offset: in the package for import and inspect errors,
    /// in the archive being written for export errors.
    pub offset: Option<u64>,
}

/// The crate's error type.
pub struct Error {
    kind: ErrorKind,
    /// Boxed: errors travel through every `Result`, and are rare.
    context: Box<Context>,
    message: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    /// The leaf's own offset in its input ([`Classify::offset`]).
    inner_offset: Option<u64>,
    /// Says in what the leaf's offset counts, when that is not the entry.
    note: Option<String>,
    /// The offset counts bytes of the decompressed tar of a compressed
    /// package, not bytes of the package as given.
    decompressed: bool,
}

impl Error {
    /// An error with a message and no leaf source.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            context: Box::default(),
            message: Some(message.into()),
            source: None,
            inner_offset: None,
            note: None,
            decompressed: false,
        }
    }

    /// Wraps any error with an explicit kind.
    pub fn wrap(kind: ErrorKind, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error {
            kind,
            context: Box::default(),
            message: None,
            source: Some(Box::new(source)),
            inner_offset: None,
            note: None,
            decompressed: false,
        }
    }

    /// The coarse kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Where it happened.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Adds the tar entry name unless one is already set.
    pub fn in_entry(mut self, name: &str) -> Self {
        if self.context.entry.is_none() {
            self.context.entry = Some(name.to_owned());
        }
        self
    }

    /// Places the error in the entry `name` whose content starts at
    /// package offset `data_offset`: the leaf's own offset in the entry if
    /// it has one, else `fallback`, becomes the package offset.
    pub fn in_entry_at(self, name: &str, data_offset: u64, fallback: u64) -> Self {
        let rel = self.inner_offset.unwrap_or(fallback);
        self.in_entry(name)
            .at_offset(data_offset.saturating_add(rel))
    }

    /// Like [`Error::in_entry_at`] for an entry that is one chunk of a
    /// file, starting at `chunk_start` in it, whose decoder counts offsets
    /// in the whole file. An offset in an earlier chunk is named as one in
    /// the file, and the error placed at this chunk's start.
    pub fn in_chunk_at(
        mut self,
        name: &str,
        data_offset: u64,
        fallback: u64,
        chunk_start: u64,
    ) -> Self {
        if self.note.is_none()
            && let Some(o) = self.inner_offset
        {
            if o >= chunk_start {
                self.inner_offset = Some(o - chunk_start);
            } else {
                self = self.inside("file its chunks make up");
            }
        }
        self.in_entry_at(name, data_offset, fallback)
    }

    /// For a decoder nested in another (a disk inside gzip): the leaf's
    /// offset counts bytes of `what`, not of the entry, so it is named in
    /// the message and the error is placed at the entry's start.
    /// Nested twice (a gzip disk in a deflated zip member), the inner
    /// note comes first.
    pub fn inside(mut self, what: &str) -> Self {
        let here = match self.inner_offset.replace(0) {
            Some(0) | None => format!("in the {what}"),
            Some(o) => format!("in the {what} at offset {o}"),
        };
        self.note = Some(match self.note.take() {
            Some(inner) => format!("{inner}, {here}"),
            None => here,
        });
        self
    }

    /// Says that the error's offsets count the decompressed tar of a
    /// compressed package: `at byte N of the decompressed tar`.
    pub fn in_decompressed(mut self) -> Self {
        self.decompressed = true;
        self
    }

    /// Adds a byte offset unless one is already set.
    pub fn at_offset(mut self, offset: u64) -> Self {
        if self.context.offset.is_none() {
            self.context.offset = Some(offset);
        }
        self
    }

    /// Adds a path unless one is already set.
    pub fn at_path(mut self, path: impl Into<PathBuf>) -> Self {
        if self.context.path.is_none() {
            self.context.path = Some(path.into());
        }
        self
    }

    /// Adds a message in front of the source's own (one level of "why").
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// The whole chain on one line, for a command-line error report.
    pub fn one_line(&self) -> String {
        self.render(true)
    }

    /// The message (or leaf), and with `chain` every deeper source.
    fn body(&self, chain: bool) -> String {
        let mut s = match &self.note {
            Some(n) => format!("{n}: "),
            None => String::new(),
        };
        match (&self.message, &self.source) {
            (Some(m), _) => s.push_str(m),
            (None, Some(src)) => s.push_str(&src.to_string()),
            (None, None) => s.push_str(&format!("{:?}", self.kind)),
        }
        if chain {
            let mut cur = std::error::Error::source(self);
            // Without a message the first source is already the body.
            if self.message.is_none() {
                cur = cur.and_then(|e| e.source());
            }
            while let Some(e) = cur {
                s.push_str(": ");
                s.push_str(&e.to_string());
                cur = e.source();
            }
        }
        s
    }

    /// `path: entry 'name' at byte N: body`, leaving out a path or entry
    /// the body already names, so that each is said once.
    fn render(&self, chain: bool) -> String {
        let body = self.body(chain);
        let mut out = String::new();
        if let Some(p) = &self.context.path {
            let p = crate::names::printable(&p.to_string_lossy()).into_owned();
            if !body.contains(&p) {
                out.push_str(&p);
                out.push_str(": ");
            }
        }
        let offset = self.context.offset.or(self.inner_offset);
        let mut located = false;
        if let Some(e) = &self.context.entry {
            let e = format!("entry '{}'", crate::names::printable(e));
            if !body.contains(&e) {
                out.push_str(&e);
                located = true;
            }
        }
        if let Some(o) = offset {
            out.push_str(if located { " at byte " } else { "at byte " });
            out.push_str(&o.to_string());
            if self.decompressed {
                out.push_str(" of the decompressed tar");
            }
            located = true;
        } else if self.decompressed && body.contains("at byte ") {
            // A tar error gives its offset in its own words.
            out.push_str(if located {
                " in the decompressed tar"
            } else {
                "in the decompressed tar"
            });
            located = true;
        }
        if located {
            out.push_str(": ");
        }
        out.push_str(&body);
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("context", &self.context)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Error {
    /// A bug: a state the code rules out, or a worker that panicked.
    pub fn internal(msg: impl Into<String>) -> Error {
        Error::new(
            ErrorKind::Internal,
            format!("internal error: {}", msg.into()),
        )
    }
}

impl<E> From<E> for Error
where
    E: Classify + std::error::Error + Send + Sync + 'static,
{
    fn from(e: E) -> Self {
        let inner_offset = e.offset();
        let mut out = Error::wrap(e.kind(), e);
        out.inner_offset = inner_offset;
        out
    }
}

/// An I/O error carrying one of ours (a source that fails for a reason
/// of its own: a package that changed under a download) keeps its kind.
impl Classify for std::io::Error {
    fn kind(&self) -> ErrorKind {
        if let Some(e) = self.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
            return e.kind();
        }
        match self.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::UnexpectedEof => ErrorKind::CorruptImage,
            _ => ErrorKind::Io,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bug_is_internal_not_io() {
        let e = Error::internal("the digest thread panicked");
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert_eq!(e.kind().exit_code(), 70);
        assert!(
            e.one_line()
                .contains("internal error: the digest thread panicked")
        );
        assert_eq!(
            crate::server::http::status_for(ErrorKind::Internal),
            hyper::StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn offsets_in_a_chunked_file_are_placed_in_its_chunk() {
        let leaf = |o| {
            Error::from(crate::ova::ovf::OvfError::Xml {
                offset: o,
                message: "bad".into(),
            })
        };
        // In this chunk, which starts at file offset 1000.
        let e = leaf(1200).in_chunk_at("d.000000001", 5120, 7, 1000);
        assert_eq!(e.context().offset, Some(5320));
        // In an earlier chunk: said as an offset in the file.
        let e = leaf(10).in_chunk_at("d.000000001", 5120, 7, 1000);
        assert_eq!(e.context().offset, Some(5120));
        assert!(
            e.to_string()
                .contains("in the file its chunks make up at offset 10"),
            "{e}"
        );
        // No offset of its own: where the chunk's bytes had got to.
        let e = Error::new(ErrorKind::CorruptImage, "x").in_chunk_at("d", 5120, 7, 1000);
        assert_eq!(e.context().offset, Some(5127));
    }

    #[test]
    fn display_names_entry_and_offset() {
        let e = Error::new(ErrorKind::CorruptImage, "grain beyond capacity")
            .at_offset(4096)
            .in_entry("disk1.vmdk");
        assert_eq!(
            e.to_string(),
            "entry 'disk1.vmdk' at byte 4096: grain beyond capacity"
        );
        assert_eq!(e.kind(), ErrorKind::CorruptImage);
    }

    #[test]
    fn display_escapes_names_from_packages() {
        let e = Error::new(ErrorKind::CorruptImage, "bad").in_entry("a\nb\u{202E}c");
        assert_eq!(e.to_string(), "entry 'a\\nb\\u{202E}c': bad");
    }

    #[test]
    fn offsets_in_a_decompressed_tar_say_so() {
        let e = Error::new(ErrorKind::CorruptImage, "bad grain")
            .in_entry("disk1.vmdk")
            .at_offset(4096)
            .in_decompressed();
        assert_eq!(
            e.to_string(),
            "entry 'disk1.vmdk' at byte 4096 of the decompressed tar: bad grain"
        );
        let e =
            Error::new(ErrorKind::CorruptImage, "tar header at byte 512: bad").in_decompressed();
        assert_eq!(
            e.to_string(),
            "in the decompressed tar: tar header at byte 512: bad"
        );
        // Without an offset there is nothing to qualify.
        let e = Error::new(ErrorKind::Integrity, "digest mismatch").in_decompressed();
        assert_eq!(e.to_string(), "digest mismatch");
    }

    #[test]
    fn io_error_lifts_with_kind() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e: Error = io.into();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.one_line(), "gone");
    }
}
