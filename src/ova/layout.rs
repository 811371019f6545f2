//! Where the files of a package sit in its tar archive.
//!
//! The OVF specification puts every file at the top level of the archive,
//! and most producers do. Some write them all under one top-level
//! directory instead (`tar cf vm.ova vm/`, `tar cf vm.ova -C dir .`), with
//! or without an entry for the directory itself. [`Layout`] maps each tar
//! entry name to the name the package means, the one OVF hrefs and
//! manifest lines use: unchanged at the top level, without the directory
//! otherwise.
//!
//! Entries stream, so the first entry decides: a name `dir/file`, or a
//! directory entry `dir/`, puts the whole package under `dir`; anything
//! else keeps it at the top level. Under a directory every later entry
//! must be `dir/name` with a plain `name` that is not a directory (or the
//! directory's own entry again), and one that is not is refused, naming it: an entry elsewhere
//! would be a second top-level directory or a file beside the package's,
//! and a deeper one a nesting no OVA producer writes. The directory itself
//! must be a plain name (`.` included, as `tar -C dir .` writes it; `..`,
//! an empty component and absolute names never are). At the top level
//! names pass through unchanged: the importer refuses those that are not
//! plain file names, as it always has.
//!
//! The import pipeline, the digest threads and `inspect` each run one,
//! so that all three see the same names.

use crate::error::{Error, ErrorKind};
use crate::names::printable;
use crate::ova::demux::EntryType;

/// What the first entry decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum State {
    /// No entry yet.
    #[default]
    Undecided,
    /// Files at the top level.
    TopLevel,
    /// Every entry under this directory.
    Under(String),
}

/// Maps tar entry names to package names; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    state: State,
}

/// Why an entry does not fit the layout the first entry set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The entry is not under the package's directory.
    #[error(
        "lies outside '{}/', the one directory every entry of this package is under (its first entry put it there)",
        printable(.dir)
    )]
    Outside {
        /// The entry's name as the archive gives it.
        name: String,
        /// The package's directory.
        dir: String,
    },
    /// The entry lies deeper than one directory.
    #[error(
        "nested below '{}/': a package holds its files directly in its one directory",
        printable(.dir)
    )]
    Nested {
        /// The entry's name as the archive gives it.
        name: String,
        /// The package's directory.
        dir: String,
    },
}

impl LayoutError {
    /// The entry's name as the archive gives it.
    pub fn name(&self) -> &str {
        match self {
            LayoutError::Outside { name, .. } | LayoutError::Nested { name, .. } => name,
        }
    }
}

/// The error names the entry in its context, as every entry error does.
impl From<LayoutError> for Error {
    fn from(e: LayoutError) -> Error {
        Error::new(ErrorKind::CorruptImage, e.to_string()).in_entry(e.name())
    }
}

/// A name that may be a package file's name or the package's directory:
/// one non-empty component other than `..`.
fn is_component(s: &str) -> bool {
    !s.is_empty() && s != ".." && !s.contains(['/', '\0'])
}

fn is_directory(ty: EntryType) -> bool {
    matches!(ty, EntryType::Directory | EntryType::Other(b'D'))
}

impl Layout {
    /// A layout no entry has decided yet.
    pub fn new() -> Self {
        Layout::default()
    }

    /// The package's directory, once the first entry put the package
    /// under one.
    pub fn directory(&self) -> Option<&str> {
        match &self.state {
            State::Under(d) => Some(d),
            _ => None,
        }
    }

    /// The package name of the entry `raw` of type `ty`: `Ok(None)` for
    /// the directory's own entry (nothing of the package), otherwise the
    /// name without the directory, or unchanged at the top level.
    pub fn place(&mut self, raw: &str, ty: EntryType) -> Result<Option<String>, LayoutError> {
        if self.state == State::Undecided {
            self.state = State::TopLevel;
            let trimmed = raw.strip_suffix('/').unwrap_or(raw);
            if is_directory(ty) && is_component(trimmed) {
                self.state = State::Under(trimmed.to_owned());
            } else if let Some((dir, rest)) = raw.split_once('/')
                && is_component(dir)
                && is_component(rest)
                && rest != "."
            {
                self.state = State::Under(dir.to_owned());
            }
        }
        let State::Under(dir) = &self.state else {
            return Ok(Some(raw.to_owned()));
        };
        let outside = || LayoutError::Outside {
            name: raw.to_owned(),
            dir: dir.clone(),
        };
        let Some(rest) = raw.strip_prefix(dir.as_str()) else {
            return Err(outside());
        };
        if rest.is_empty() || rest == "/" {
            // The directory's own entry; a file of that name would be one
            // outside it.
            return if is_directory(ty) {
                Ok(None)
            } else {
                Err(outside())
            };
        }
        let Some(rest) = rest.strip_prefix('/') else {
            return Err(outside());
        };
        // A directory inside the directory is a nesting too, even empty.
        if is_directory(ty) || !is_component(rest) || rest == "." {
            return Err(LayoutError::Nested {
                name: raw.to_owned(),
                dir: dir.clone(),
            });
        }
        Ok(Some(rest.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: EntryType = EntryType::Regular;
    const DIR: EntryType = EntryType::Directory;

    fn run(entries: &[(&str, EntryType)]) -> Result<Vec<Option<String>>, LayoutError> {
        let mut l = Layout::new();
        entries.iter().map(|(n, t)| l.place(n, *t)).collect()
    }

    fn names(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|n| n.map(str::to_owned)).collect()
    }

    #[test]
    fn top_level_names_pass_through() {
        // Even names the importer refuses: that is its rule, not this one's.
        let got = run(&[
            ("vm.ovf", FILE),
            ("disk1.vmdk", FILE),
            ("sub/x", FILE),
            ("../y", FILE),
            ("dir/", DIR),
        ])
        .unwrap();
        assert_eq!(
            got,
            names(&[
                Some("vm.ovf"),
                Some("disk1.vmdk"),
                Some("sub/x"),
                Some("../y"),
                Some("dir/")
            ])
        );
    }

    #[test]
    fn one_directory_is_stripped_with_or_without_its_entry() {
        let with = run(&[
            ("vm/", DIR),
            ("vm/vm.ovf", FILE),
            ("vm/disk1.vmdk", FILE),
            ("vm", DIR),
        ])
        .unwrap();
        assert_eq!(
            with,
            names(&[None, Some("vm.ovf"), Some("disk1.vmdk"), None])
        );
        let mut l = Layout::new();
        assert_eq!(
            l.place("vm/vm.ovf", FILE).unwrap().as_deref(),
            Some("vm.ovf")
        );
        assert_eq!(l.directory(), Some("vm"));
        assert_eq!(l.place("vm/vm.mf", FILE).unwrap().as_deref(), Some("vm.mf"));
        // What `tar -C dir .` writes.
        let dot = run(&[("./", DIR), ("./vm.ovf", FILE), ("./d.vmdk", FILE)]).unwrap();
        assert_eq!(dot, names(&[None, Some("vm.ovf"), Some("d.vmdk")]));
    }

    #[test]
    fn entries_that_break_the_layout_are_named() {
        let outside = |name: &str| LayoutError::Outside {
            name: name.into(),
            dir: "vm".into(),
        };
        let nested = |name: &str| LayoutError::Nested {
            name: name.into(),
            dir: "vm".into(),
        };
        for (second, err) in [
            ("other/disk1.vmdk", outside("other/disk1.vmdk")),
            ("disk1.vmdk", outside("disk1.vmdk")),
            ("vmx/disk1.vmdk", outside("vmx/disk1.vmdk")),
            ("vm2/disk1.vmdk", outside("vm2/disk1.vmdk")),
            ("/vm/disk1.vmdk", outside("/vm/disk1.vmdk")),
            ("vm", outside("vm")),
            ("vm/sub/disk1.vmdk", nested("vm/sub/disk1.vmdk")),
            ("vm/../disk1.vmdk", nested("vm/../disk1.vmdk")),
            ("vm/..", nested("vm/..")),
            ("vm/.", nested("vm/.")),
            ("vm//disk1.vmdk", nested("vm//disk1.vmdk")),
        ] {
            let got = run(&[("vm/vm.ovf", FILE), (second, FILE)]);
            assert_eq!(got, Err(err), "{second}");
        }
        assert_eq!(
            run(&[("vm/", DIR), ("other/", DIR)]),
            Err(outside("other/"))
        );
        assert_eq!(
            run(&[("vm/", DIR), ("vm/sub/", DIR)]),
            Err(nested("vm/sub/"))
        );
    }

    #[test]
    fn only_a_plain_directory_decides() {
        // Absolute names, `..` and deeper names leave the package at the
        // top level, where the importer refuses them.
        for first in [
            "/vm/vm.ovf",
            "../vm.ovf",
            "a/b/vm.ovf",
            "/vm.ovf",
            "vm/",
            "vm/.",
        ] {
            let mut l = Layout::new();
            assert_eq!(
                l.place(first, FILE).unwrap().as_deref(),
                Some(first),
                "{first}"
            );
            assert_eq!(l.directory(), None, "{first}");
        }
        let mut l = Layout::new();
        assert_eq!(l.place("../", DIR).unwrap().as_deref(), Some("../"));
        assert_eq!(l.directory(), None);
    }
}
