//! Remote volume URLs: the data API URL of an image transfer on another
//! host, `https://HOST[:PORT]/images/TICKET`, as an oVirt engine hands it
//! out (an ovirt-imageio daemon serves it, and so does ovaio).
//!
//! The ticket id in the path is the credential to the remote volume, so
//! the URL is shown everywhere ([`fmt::Display`]) with the id cut to its
//! first four characters; only requests use it whole.

use std::fmt;

/// The port ovirt-imageio's data API listens on when none is given.
pub const DEFAULT_PORT: u16 = 443;

/// Characters of the ticket id shown in messages.
const SHOWN: usize = 4;

/// A parsed remote volume URL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageioUrl {
    host: String,
    port: u16,
    ticket: String,
}

impl ImageioUrl {
    /// Whether `url` is meant as a remote volume URL (whether or not it
    /// parses): an `http` or `https` URL.
    pub fn is_remote(url: &str) -> bool {
        let l = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        l.starts_with("https://") || l.starts_with("http://")
    }

    /// Parses `https://HOST[:PORT]/images/TICKET`; the error says why
    /// not, in a phrase.
    pub fn parse(url: &str) -> Result<ImageioUrl, String> {
        if url.contains(['\0', '\n', '\r', ' ', '\t']) {
            return Err("NUL, spaces and line breaks are not allowed".into());
        }
        let rest = match url.get(..8).map(str::to_ascii_lowercase).as_deref() {
            Some("https://") => &url[8..],
            _ if ImageioUrl::is_remote(url) => {
                return Err("remote volumes are reached over HTTPS only".into());
            }
            _ => return Err("not an https:// URL".into()),
        };
        let (authority, path) = rest
            .split_once('/')
            .ok_or("no /images/TICKET path after the host")?;
        if authority.contains('@') {
            return Err("user information in the URL is not allowed".into());
        }
        let (host, port) = split_host_port(authority)?;
        let ticket = path
            .strip_prefix("images/")
            .ok_or("the path must be /images/TICKET")?;
        if ticket.is_empty() {
            return Err("the ticket id is empty".into());
        }
        if ticket.len() > 256 {
            return Err("the ticket id is longer than 256 characters".into());
        }
        if !ticket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            || ticket == "."
            || ticket == ".."
        {
            return Err(
                "the ticket id may hold only A-Z, a-z, 0-9, '.', '_' and '-' (no query or further path)"
                    .into(),
            );
        }
        Ok(ImageioUrl {
            host: host.to_ascii_lowercase(),
            port,
            ticket: ticket.to_owned(),
        })
    }

    /// The host: a name, an IPv4 address or an IPv6 one (no brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` (`[v6]:port`), as an allow-list names it.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The whole URL, ticket id included: for requests only.
    pub fn full(&self) -> String {
        format!("https://{}/images/{}", self.authority(), self.ticket)
    }

    /// `text` (a remote's answer) with the ticket id cut short wherever
    /// it appears.
    pub fn redact(&self, text: &str) -> String {
        if self.ticket.chars().count() <= SHOWN {
            return text.to_owned();
        }
        let shown: String = self.ticket.chars().take(SHOWN).collect();
        text.replace(&self.ticket, &format!("{shown}…"))
    }

    /// The URL of a resource under the image: `/extents` and the like.
    pub fn sub(&self, rest: &str) -> String {
        format!("{}/{rest}", self.full())
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
fn split_host_port(authority: &str) -> Result<(&str, u16), String> {
    let port_of = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("bad port '{p}'")),
        }
    };
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("an unclosed '[' in the host")?;
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err("a bad IPv6 address".into());
        }
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, port_of(p)?)),
            None if after.is_empty() => Ok((host, DEFAULT_PORT)),
            None => Err("junk after the IPv6 address".into()),
        };
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, port_of(p)?),
        None => (authority, DEFAULT_PORT),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(format!("a bad host name '{host}'"));
    }
    Ok((host, port))
}

impl fmt::Display for ImageioUrl {
    /// The URL with the ticket id cut to its first characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.ticket.chars().take(SHOWN).collect();
        let more = if self.ticket.len() > SHOWN { "…" } else { "" };
        write!(f, "https://{}/images/{shown}{more}", self.authority())
    }
}

impl fmt::Debug for ImageioUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageioUrl({self})")
    }
}

impl serde::Serialize for ImageioUrl {
    /// Whole: the journal keeps the ticket to resume with.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full())
    }
}

impl<'de> serde::Deserialize<'de> for ImageioUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ImageioUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_an_engine_hands_out() {
        let u = ImageioUrl::parse("https://Host-1.example.com:54322/images/abcdef-123").unwrap();
        assert_eq!(u.host(), "host-1.example.com");
        assert_eq!(u.port(), 54322);
        assert_eq!(
            u.full(),
            "https://host-1.example.com:54322/images/abcdef-123"
        );
        assert_eq!(
            u.to_string(),
            "https://host-1.example.com:54322/images/abcd…"
        );
        assert_eq!(
            format!("{u:?}"),
            "ImageioUrl(https://host-1.example.com:54322/images/abcd…)"
        );
        assert_eq!(
            u.sub("extents"),
            "https://host-1.example.com:54322/images/abcdef-123/extents"
        );
        let u = ImageioUrl::parse("https://[::1]:8443/images/t").unwrap();
        assert_eq!(u.authority(), "[::1]:8443");
        assert_eq!(u.to_string(), "https://[::1]:8443/images/t");
        let u = ImageioUrl::parse("https://10.0.0.1/images/t").unwrap();
        assert_eq!(u.port(), DEFAULT_PORT);
        let back: ImageioUrl = serde_json::from_str(&serde_json::to_string(&u).unwrap()).unwrap();
        assert_eq!(back, u);
    }

    #[test]
    fn refuses_what_is_not_one() {
        for (url, why) in [
            ("http://h:1/images/t", "HTTPS only"),
            ("https://h:1/image/t", "/images/TICKET"),
            ("https://h:1/images/", "empty"),
            ("https://h:1/images/a/b", "may hold only"),
            ("https://h:1/images/a?x=1", "may hold only"),
            ("https://h:1/images/..", "may hold only"),
            ("https://u:p@h:1/images/t", "user information"),
            ("https://h:0/images/t", "bad port"),
            ("https://h:x/images/t", "bad port"),
            ("https://h_1/images/t", "bad host"),
            ("https://[::1/images/t", "unclosed"),
            ("https://h", "no /images"),
            ("https://h/images/t t", "spaces"),
            ("file:///x", "not an https"),
        ] {
            let e = ImageioUrl::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
        assert!(ImageioUrl::is_remote("HTTPS://x"));
        assert!(ImageioUrl::is_remote("http://x"));
        assert!(!ImageioUrl::is_remote("file:///x"));
        assert!(!ImageioUrl::is_remote("nbd:unix:/s"));
    }
}
