//! Transfer tickets: what the engine installs over the control API and what
//! authorizes every data-plane request. The field names follow
//! ovirt-imageio's tickets so that engine-side habits carry over.
//!
//! This module knows no HTTP: the server parses a request body into a
//! [`TicketRequest`], calls the [`TicketStore`], and maps
//! [`crate::ErrorKind`] to a status (`InvalidArgument` → 400, `NotFound` →
//! 404, `Auth` → 403, `Conflict` → 409).
//!
//! Time comes from a [`Clock`], so expiry is tested without sleeping.

mod clock;
pub mod journal;
mod model;
mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use model::{
    DiskStatus, NumberOrText, Op, OvaDisk, OvaSpec, TicketKind, TicketRequest, TicketStatus,
    TransferState, VmFields,
};
pub(crate) use model::{VolumeUrl, file_url_path, volume_url};
pub use model::{export_format, manifest_algorithm};
pub use store::{
    CancelCause, IdleHold, JOURNAL_EXPIRY_SLACK, RESTARTED, ResolvedDisk, ResolvedOva, Restored,
    TicketHandle, TicketStore, TicketWatch,
};

use crate::error::{Classify, ErrorKind};

/// Idle time after which a ticket without an `inactivity_timeout` expires
/// (seconds); ovirt-imageio's daemon default.
pub const DEFAULT_INACTIVITY_TIMEOUT: u64 = 60;

/// Why a ticket was refused or could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// The ticket id is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid ticket id: {reason}")]
    InvalidId {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The body's `uuid` differs from the id in the request path. Both
    /// are ticket ids, so the message shows only their [`log_id`] forms:
    /// the caller knows what it sent, and the message is also logged.
    #[error(
        "ticket uuid '{}' does not match the id '{}' in the path",
        shown_id(uuid),
        shown_id(id)
    )]
    IdMismatch {
        /// The id from the path.
        id: String,
        /// The `uuid` field.
        uuid: String,
    },
    /// A field is missing or has a value that is not allowed.
    #[error("invalid ticket field '{field}': {reason}")]
    InvalidField {
        /// The field name, as in the JSON body (`ops`, `url`, `ova.disks[1].format`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A number is beyond its limit.
    #[error("ticket field '{field}' is {value}, more than the limit of {max}")]
    TooLarge {
        /// The field name.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The largest value accepted.
        max: u64,
    },
    /// A field asks for a feature ovaio does not implement.
    #[error("ticket field '{field}' asks for an unsupported feature: {reason}")]
    Unsupported {
        /// The field name.
        field: &'static str,
        /// What is not supported.
        reason: &'static str,
    },
    /// No ticket with this id, or it expired (control API). The message
    /// shows the id's [`log_id`] form, as the log does.
    #[error("no such ticket '{}'", shown_id(id))]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The ticket's transfer has an outcome that a further request would
    /// change (see [`TransferState::start`]).
    #[error("the transfer on this ticket has ended ({state}); a new transfer needs a new ticket")]
    Ended {
        /// The final state, as `GET /tickets/{id}` shows it.
        state: TransferState,
    },
    /// A data-plane request is refused. The message never repeats the id
    /// the client sent.
    #[error("{reason}")]
    Forbidden {
        /// Why.
        reason: String,
    },
}

impl Classify for TicketError {
    fn kind(&self) -> ErrorKind {
        match self {
            TicketError::InvalidId { .. }
            | TicketError::IdMismatch { .. }
            | TicketError::InvalidField { .. } => ErrorKind::InvalidArgument,
            TicketError::TooLarge { .. } => ErrorKind::LimitExceeded,
            TicketError::Unsupported { .. } => ErrorKind::Unsupported,
            TicketError::NotFound { .. } => ErrorKind::NotFound,
            TicketError::Forbidden { .. } => ErrorKind::Auth,
            TicketError::Ended { .. } => ErrorKind::Conflict,
        }
    }
}

/// The first 8 characters of a ticket id: enough to tell tickets apart
/// in logs without writing the whole credential there.
pub fn log_id(id: &str) -> &str {
    let end = id.char_indices().nth(8).map_or(id.len(), |(i, _)| i);
    &id[..end]
}

/// How logs and error messages show a ticket id: its [`log_id`], with
/// `...` when the id is longer.
pub fn shown_id(id: &str) -> String {
    let short = log_id(id);
    if short.len() < id.len() {
        format!("{short}...")
    } else {
        short.to_owned()
    }
}

/// A request path as logs show it: every segment as [`shown_id`]. A ticket id
/// may sit in any segment (`/images/{id}`, `/tickets/{id}`, or a mistyped
/// path), and the log must not hand its reader the credential; the names
/// of the APIs' resources (`images`, `extents`, `tickets`, `jobs`, `info`)
/// are short enough to stay whole.
pub fn log_path(path: &str) -> String {
    path.split('/').map(shown_id).collect::<Vec<_>>().join("/")
}

/// Compares two byte strings in time that depends only on their lengths,
/// never on where they first differ, so a client cannot guess a ticket id
/// byte by byte from response times.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    // Different lengths never compare equal, but the loop still runs over
    // the longer one so the work does not depend on the contents.
    let mut acc = u8::from(a.len() != b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        acc |= x ^ y;
    }
    std::hint::black_box(acc) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_compares_whole_strings() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"xbc"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"ab", b"abc"));
        assert!(!ct_eq(b"", b"a"));
        // A shorter string padded with the zeros the loop substitutes is
        // still different.
        assert!(!ct_eq(b"ab", b"ab\0"));
        let id = "9f7d0e3a-0c6e-4c59-9f4b-1d1f1b2f6c11";
        assert!(ct_eq(id.as_bytes(), id.to_owned().as_bytes()));
    }

    #[test]
    fn logs_show_ids_cut_short() {
        let id = "9f7d0e3a-0c6e-4c59-9f4b-1d1f1b2f6c11";
        assert_eq!(log_id(id), "9f7d0e3a");
        assert_eq!(shown_id(id), "9f7d0e3a...");
        // A short id is shown whole, without a mark that it was cut.
        assert_eq!(shown_id("t1"), "t1");
        assert_eq!(shown_id("12345678"), "12345678");
        // Characters, not bytes: a cut never splits one.
        assert_eq!(shown_id("éééééééééé"), "éééééééé...");

        assert_eq!(log_path(&format!("/tickets/{id}")), "/tickets/9f7d0e3a...");
        assert_eq!(
            log_path(&format!("/images/{id}/extents")),
            "/images/9f7d0e3a.../extents"
        );
        // A mistyped path hides the id as well, wherever it sits.
        assert_eq!(
            log_path(&format!("/ticket/x/{id}/")),
            "/ticket/x/9f7d0e3a.../"
        );
        assert_eq!(log_path(&format!("/{id}")), "/9f7d0e3a...");
        assert_eq!(log_path("/tickets"), "/tickets");
        assert_eq!(log_path("/"), "/");
        assert_eq!(log_path(""), "");
    }

    #[test]
    fn ticket_errors_never_carry_a_whole_id() {
        let id = "9f7d0e3a-0c6e-4c59-9f4b-1d1f1b2f6c11";
        let other = "0b1e2f3a-aaaa-bbbb-cccc-dddddddddddd";
        let e = TicketError::NotFound { id: id.into() }.to_string();
        assert_eq!(e, "no such ticket '9f7d0e3a...'");
        let e = TicketError::IdMismatch {
            id: id.into(),
            uuid: other.into(),
        }
        .to_string();
        assert_eq!(
            e,
            "ticket uuid '0b1e2f3a...' does not match the id '9f7d0e3a...' in the path"
        );
    }

    #[test]
    fn errors_map_to_kinds() {
        let e: crate::Error = TicketError::Forbidden {
            reason: "no such ticket".into(),
        }
        .into();
        assert_eq!(e.kind(), ErrorKind::Auth);
        assert_eq!(e.kind().exit_code(), 1);
        let e: crate::Error = TicketError::NotFound { id: "x".into() }.into();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}
