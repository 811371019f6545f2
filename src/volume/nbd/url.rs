//! NBD URLs as tickets name them: the form vdsm puts in an oVirt ticket,
//! `nbd:unix:/path.sock[:exportname=X]`, and the URI forms of the NBD
//! URI spec, `nbd://host[:port][/export]` and
//! `nbd+unix:///export?socket=/path.sock`. TLS (`nbds://`) is not
//! offered.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::volume::nbd::proto::MAX_STRING;

/// The NBD port IANA assigned.
pub const DEFAULT_PORT: u16 = 10809;

/// Where an NBD export is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NbdAddress {
    /// A Unix socket (absolute path).
    Unix(PathBuf),
    /// A TCP host (name, IPv4, or IPv6 without brackets) and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
}

/// A parsed NBD URL: the server and the export name. It holds no
/// secret, so it may be shown in messages as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NbdUrl {
    /// The server.
    pub address: NbdAddress,
    /// The export name (empty: the default export).
    pub export: String,
}

impl NbdUrl {
    /// Whether `url` is meant as an NBD URL (whether or not it parses).
    pub fn is_nbd(url: &str) -> bool {
        url.starts_with("nbd:") || url.starts_with("nbd+") || url.starts_with("nbds")
    }

    /// Parses one of the forms in the module docs; the error says why
    /// not, in a phrase.
    pub fn parse(url: &str) -> Result<NbdUrl, String> {
        if url.contains(['\0', '\n', '\r']) {
            return Err("NUL and line breaks are not allowed".into());
        }
        let parsed = if let Some(rest) = url.strip_prefix("nbd:unix:") {
            parse_legacy_unix(rest)?
        } else if let Some(rest) = url.strip_prefix("nbd://") {
            parse_tcp(rest)?
        } else if let Some(rest) = url.strip_prefix("nbd+unix://") {
            parse_unix_uri(rest)?
        } else if url.starts_with("nbds") || url.starts_with("nbd+tls") {
            return Err("NBD over TLS is not supported".into());
        } else {
            return Err(
                "not an NBD URL of a supported form (nbd:unix:/path.sock[:exportname=NAME], nbd://host[:port]/export, nbd+unix:///export?socket=/path.sock)"
                    .into(),
            );
        };
        if parsed.export.len() > MAX_STRING {
            return Err(format!("the export name is longer than {MAX_STRING} bytes"));
        }
        Ok(parsed)
    }

    /// The socket path of a Unix-socket URL.
    pub fn socket(&self) -> Option<&Path> {
        match &self.address {
            NbdAddress::Unix(p) => Some(p),
            NbdAddress::Tcp { .. } => None,
        }
    }
}

fn absolute_socket(path: &str) -> Result<PathBuf, String> {
    if !path.starts_with('/') {
        return Err("the socket path must be absolute".into());
    }
    if path.len() > 4096 {
        return Err("the socket path is too long".into());
    }
    Ok(PathBuf::from(path))
}

/// `/path.sock[:exportname=X]`.
fn parse_legacy_unix(rest: &str) -> Result<NbdUrl, String> {
    let (path, export) = match rest.split_once(":exportname=") {
        Some((p, e)) => (p, e),
        None => (rest, ""),
    };
    Ok(NbdUrl {
        address: NbdAddress::Unix(absolute_socket(path)?),
        export: export.to_owned(),
    })
}

/// `host[:port][/export]`, host possibly `[v6]`.
fn parse_tcp(rest: &str) -> Result<NbdUrl, String> {
    if rest.contains(['?', '#']) {
        return Err("query and fragment are not supported in nbd:// URLs".into());
    }
    let (authority, export) = match rest.split_once('/') {
        Some((a, e)) => (a, e),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err("user information is not supported in nbd:// URLs".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return Err("unclosed '[' in the host".into());
        };
        match after {
            "" => (h, None),
            p => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return Err("junk after the IPv6 address".into()),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("'{p}' is not a port"))?,
    };
    Ok(NbdUrl {
        address: NbdAddress::Tcp {
            host: host.to_owned(),
            port,
        },
        export: percent_decode(export)?,
    })
}

/// `[localhost]/[export]?socket=/path`.
fn parse_unix_uri(rest: &str) -> Result<NbdUrl, String> {
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    let Some(rest) = rest.strip_prefix('/').or(if rest.starts_with('?') {
        Some(rest)
    } else {
        None
    }) else {
        return Err("nbd+unix:// takes no host: nbd+unix:///export?socket=/path.sock".into());
    };
    let Some((export, query)) = rest.split_once('?') else {
        return Err("nbd+unix:// needs ?socket=/path.sock".into());
    };
    let mut socket = None;
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("socket", v)) if socket.is_none() => socket = Some(percent_decode(v)?),
            _ => return Err(format!("query parameter '{kv}' is not supported")),
        }
    }
    let Some(socket) = socket else {
        return Err("nbd+unix:// needs ?socket=/path.sock".into());
    };
    Ok(NbdUrl {
        address: NbdAddress::Unix(absolute_socket(&socket)?),
        export: percent_decode(export)?,
    })
}

/// `%XX` escapes of a URI component.
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in '{s}'"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let out = String::from_utf8(out).map_err(|_| format!("'{s}' is not UTF-8 once decoded"))?;
    if out.contains('\0') {
        return Err("NUL is not allowed".into());
    }
    Ok(out)
}

impl fmt::Display for NbdUrl {
    /// The legacy form for a Unix socket (as vdsm writes it), the URI
    /// form for TCP.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            NbdAddress::Unix(p) => {
                write!(f, "nbd:unix:{}", p.display())?;
                if !self.export.is_empty() {
                    write!(f, ":exportname={}", self.export)?;
                }
                Ok(())
            }
            NbdAddress::Tcp { host, port } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{}", self.export)
            }
            NbdAddress::Tcp { host, port } => write!(f, "nbd://{host}:{port}/{}", self.export),
        }
    }
}

impl serde::Serialize for NbdUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NbdUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NbdUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(p: &str, e: &str) -> NbdUrl {
        NbdUrl {
            address: NbdAddress::Unix(p.into()),
            export: e.into(),
        }
    }

    fn tcp(h: &str, port: u16, e: &str) -> NbdUrl {
        NbdUrl {
            address: NbdAddress::Tcp {
                host: h.into(),
                port,
            },
            export: e.into(),
        }
    }

    #[test]
    fn forms() {
        let ok = |s: &str| NbdUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("nbd:unix:/run/v.sock"), unix("/run/v.sock", ""));
        assert_eq!(
            ok("nbd:unix:/run/v.sock:exportname=sda"),
            unix("/run/v.sock", "sda")
        );
        assert_eq!(ok("nbd://h:1234/exp"), tcp("h", 1234, "exp"));
        assert_eq!(ok("nbd://h"), tcp("h", DEFAULT_PORT, ""));
        assert_eq!(ok("nbd://h/"), tcp("h", DEFAULT_PORT, ""));
        assert_eq!(ok("nbd://[::1]:99/a%20b"), tcp("::1", 99, "a b"));
        assert_eq!(ok("nbd://[::1]/x"), tcp("::1", DEFAULT_PORT, "x"));
        assert_eq!(
            ok("nbd+unix:///e?socket=/tmp/s.sock"),
            unix("/tmp/s.sock", "e")
        );
        assert_eq!(ok("nbd+unix://?socket=/tmp/s"), unix("/tmp/s", ""));
        for u in [
            "nbd:unix:/run/v.sock:exportname=sda",
            "nbd:unix:/run/v.sock",
            "nbd://h:1234/exp",
            "nbd://[::1]:99/x",
        ] {
            assert_eq!(ok(u).to_string(), u);
            assert_eq!(ok(&ok(u).to_string()), ok(u));
        }
    }

    #[test]
    fn refusals() {
        for (u, why) in [
            ("nbd:unix:run/v.sock", "absolute"),
            ("nbd:unix:", "absolute"),
            ("nbd://", "host"),
            ("nbd://h:0/", "port"),
            ("nbd://h:x/", "port"),
            ("nbd://h:70000/", "port"),
            ("nbd://u@h/", "user"),
            ("nbd://h/e?x=1", "query"),
            ("nbd://[::1/", "unclosed"),
            ("nbds://h/", "TLS"),
            ("nbd+unix:///e", "socket="),
            ("nbd+unix:///e?socket=rel", "absolute"),
            ("nbd+unix://host/e?socket=/s", "no host"),
            ("nbd+unix:///e?socket=/s&tls=on", "not supported"),
            ("nbd:tcp:h:1", "supported form"),
            ("nbd:unix:/a\0b", "NUL"),
            ("nbd://h/%zz", "percent"),
        ] {
            let e = NbdUrl::parse(u).unwrap_err();
            assert!(e.contains(why), "{u}: {e}");
        }
        let long = format!("nbd:unix:/s:exportname={}", "x".repeat(MAX_STRING + 1));
        assert!(NbdUrl::parse(&long).is_err());
        assert!(NbdUrl::is_nbd("nbd:unix:x") && !NbdUrl::is_nbd("file:///x"));
    }
}
