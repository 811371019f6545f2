//! Volumes reached by URL rather than by path: an NBD export (qemu-nbd on
//! an oVirt host) or an image transfer on another host's imageio data
//! API. Neither is a file beneath a storage root, so only the control API
//! (a ticket, a job) or the command line can name one; both are written
//! in place, with no `.partial` name.

use std::fmt;

use super::imageio::ImageioUrl;
use super::nbd::NbdUrl;

/// A volume's URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NetUrl {
    /// `nbd:unix:/path.sock[:exportname=X]`, `nbd://host:port/export`,
    /// `nbd+unix:///export?socket=/path.sock`.
    Nbd(NbdUrl),
    /// `https://HOST:PORT/images/TICKET`.
    Imageio(ImageioUrl),
}

impl NetUrl {
    /// Parses `url` if it is meant as a network volume (`Ok(None)`: it
    /// is not, e.g. a `file://` URL); the error says why it does not
    /// parse, in a phrase.
    pub fn parse(url: &str) -> Result<Option<NetUrl>, String> {
        if NbdUrl::is_nbd(url) {
            return NbdUrl::parse(url).map(|u| Some(NetUrl::Nbd(u)));
        }
        if ImageioUrl::is_remote(url) {
            return ImageioUrl::parse(url).map(|u| Some(NetUrl::Imageio(u)));
        }
        Ok(None)
    }

    /// The whole URL, secrets included: tells two volumes apart (never
    /// shown).
    pub fn key(&self) -> String {
        match self {
            NetUrl::Nbd(u) => u.to_string(),
            NetUrl::Imageio(u) => u.full(),
        }
    }

    /// What the volume is, for messages: `NBD` or `remote`.
    pub fn kind(&self) -> &'static str {
        match self {
            NetUrl::Nbd(_) => "NBD",
            NetUrl::Imageio(_) => "remote",
        }
    }
}

impl fmt::Display for NetUrl {
    /// The URL as it may be shown (a remote ticket id cut short).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetUrl::Nbd(u) => u.fmt(f),
            NetUrl::Imageio(u) => u.fmt(f),
        }
    }
}

impl serde::Serialize for NetUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NetUrl::Nbd(u) => u.serialize(s),
            NetUrl::Imageio(u) => u.serialize(s),
        }
    }
}

impl<'de> serde::Deserialize<'de> for NetUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match NetUrl::parse(&s) {
            Ok(Some(u)) => Ok(u),
            Ok(None) => Err(serde::de::Error::custom("not an NBD or https:// URL")),
            Err(e) => Err(serde::de::Error::custom(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_the_kinds_apart_and_round_trips() {
        assert_eq!(NetUrl::parse("file:///x"), Ok(None));
        let n = NetUrl::parse("nbd:unix:/run/s.sock").unwrap().unwrap();
        assert_eq!(n.kind(), "NBD");
        let r = NetUrl::parse("https://h:1/images/secret-id")
            .unwrap()
            .unwrap();
        assert_eq!(r.kind(), "remote");
        assert_eq!(r.to_string(), "https://h:1/images/secr…");
        for u in [n, r] {
            let back: NetUrl = serde_json::from_str(&serde_json::to_string(&u).unwrap()).unwrap();
            assert_eq!(back, u);
        }
        assert!(
            NetUrl::parse("http://h/images/x")
                .unwrap_err()
                .contains("HTTPS")
        );
    }
}
