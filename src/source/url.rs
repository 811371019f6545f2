//! What a package source names: a path, standard input, an `http(s)://`
//! URL or an `s3://bucket/key` object.
//!
//! A URL's query may carry a credential (a presigned object URL's
//! signature), so it is shown everywhere as `?…`; only requests use it
//! whole.

use std::fmt;
use std::path::PathBuf;

use crate::s3::S3Url;
use crate::volume::imageio::ImageioUrl;

/// A package source as given on the command line or in a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// Standard input (`-`).
    Stdin,
    /// A local or NFS file.
    File(PathBuf),
    /// An HTTP(S) URL, fetched with one GET and resumed with ranges.
    Http(HttpUrl),
    /// An object in S3-compatible storage, fetched as a presigned URL.
    S3(S3Url),
}

impl SourceSpec {
    /// Reads a command-line source: `-`, a URL (`http://`, `https://`,
    /// `s3://`) or else a path.
    pub fn parse(spec: &str) -> Result<SourceSpec, String> {
        if spec == "-" {
            return Ok(SourceSpec::Stdin);
        }
        match scheme(spec).as_deref() {
            Some("http" | "https") => HttpUrl::parse(spec).map(SourceSpec::Http),
            Some("s3") => S3Url::parse(spec).map(SourceSpec::S3),
            _ => Ok(SourceSpec::File(PathBuf::from(spec))),
        }
    }

    /// Whether the source is fetched over the network.
    pub fn is_remote(&self) -> bool {
        matches!(self, SourceSpec::Http(_) | SourceSpec::S3(_))
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Stdin => f.write_str("-"),
            SourceSpec::File(p) => write!(f, "{}", p.display()),
            SourceSpec::Http(u) => u.fmt(f),
            SourceSpec::S3(u) => u.fmt(f),
        }
    }
}

/// The lower-cased scheme of `s` when it starts with `SCHEME://`.
pub fn scheme(s: &str) -> Option<String> {
    let (scheme, _) = s.split_once("://")?;
    (!scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)))
    .then(|| scheme.to_ascii_lowercase())
}

/// An `http://` or `https://` URL of a package.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl {
    full: String,
    host: String,
    authority: String,
    /// Where the query starts in `full`, if there is one.
    query_at: Option<usize>,
    /// A data API ticket URL (`…/images/TICKET`): its id is a credential,
    /// shown cut short as a remote volume's is.
    ticket: Option<ImageioUrl>,
}

impl HttpUrl {
    /// Parses an absolute `http(s)://HOST[:PORT]/PATH[?QUERY]`; the error
    /// says why not, in a phrase.
    pub fn parse(s: &str) -> Result<HttpUrl, String> {
        if s.contains(['\0', '\n', '\r', ' ', '\t']) {
            return Err("NUL, spaces and line breaks are not allowed in a URL".into());
        }
        let https = match scheme(s).as_deref() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("not an http:// or https:// URL".into()),
        };
        let uri: http::Uri = s.parse().map_err(|e| format!("not a valid URL: {e}"))?;
        let auth = uri.authority().ok_or("the URL names no host")?;
        if auth.as_str().contains('@') {
            return Err("user information in the URL is not allowed (it would be shown in logs); use a presigned URL or a ticket".into());
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("the URL names no host".into());
        }
        let port = auth.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = if host.contains(':') {
            format!("[{}]:{port}", host.to_ascii_lowercase())
        } else {
            format!("{}:{port}", host.to_ascii_lowercase())
        };
        let scheme_len = if https { 8 } else { 7 };
        let query_at = s[scheme_len..].find('?').map(|i| i + scheme_len);
        Ok(HttpUrl {
            full: s.to_owned(),
            host: host.to_ascii_lowercase(),
            authority,
            query_at,
            ticket: ImageioUrl::parse(s).ok(),
        })
    }

    /// The whole URL, for requests only.
    pub fn full(&self) -> &str {
        &self.full
    }

    /// The host (no brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `host:port` (`[v6]:port`), lower-cased, the port always given.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// `text` with the query, wherever it appears, replaced by `…`, and a
    /// ticket id cut short.
    pub fn redact(&self, text: &str) -> String {
        let text = match self.query_at {
            Some(i) if i + 1 < self.full.len() => text.replace(&self.full[i + 1..], "…"),
            _ => text.to_owned(),
        };
        match &self.ticket {
            Some(t) => t.redact(&text),
            None => text,
        }
    }
}

impl fmt::Display for HttpUrl {
    /// The URL with its query, if any, as `?…`, and a ticket id cut to
    /// its first characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(t) = &self.ticket {
            return t.fmt(f);
        }
        match self.query_at {
            Some(i) => write!(f, "{}?…", &self.full[..i]),
            None => f.write_str(&self.full),
        }
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_by_form() {
        assert_eq!(SourceSpec::parse("-").unwrap(), SourceSpec::Stdin);
        assert_eq!(
            SourceSpec::parse("/a/b.ova").unwrap(),
            SourceSpec::File("/a/b.ova".into())
        );
        assert_eq!(
            SourceSpec::parse("odd:name.ova").unwrap(),
            SourceSpec::File("odd:name.ova".into())
        );
        assert!(matches!(
            SourceSpec::parse("HTTPS://h/x.ova").unwrap(),
            SourceSpec::Http(_)
        ));
        assert!(matches!(
            SourceSpec::parse("s3://bucket/k/x.ova").unwrap(),
            SourceSpec::S3(_)
        ));
        assert!(SourceSpec::parse("s3://bucket").is_err());
        assert!(SourceSpec::parse("http://").is_err());
    }

    #[test]
    fn the_query_is_never_shown() {
        let u = HttpUrl::parse("https://Store.example:9000/b/vm.ova?X-Amz-Signature=abc").unwrap();
        assert_eq!(u.to_string(), "https://Store.example:9000/b/vm.ova?…");
        assert!(!format!("{u:?}").contains("abc"));
        assert_eq!(u.authority(), "store.example:9000");
        assert!(u.full().ends_with("abc"));
        let v = HttpUrl::parse("http://[::1]/vm.ova").unwrap();
        assert_eq!(v.authority(), "[::1]:80");
        assert_eq!(v.host(), "::1");
        assert_eq!(v.to_string(), "http://[::1]/vm.ova");
    }

    #[test]
    fn a_ticket_id_is_cut_short() {
        let u = HttpUrl::parse("https://site-a:54322/images/rep-7f3c0b2e9a").unwrap();
        assert!(!u.to_string().contains("7f3c0b2e9a"), "{u}");
        assert!(
            u.to_string()
                .starts_with("https://site-a:54322/images/rep-")
        );
        assert!(
            !u.redact("no such ticket rep-7f3c0b2e9a")
                .contains("7f3c0b2e9a")
        );
    }

    #[test]
    fn refusals_say_why() {
        assert!(
            HttpUrl::parse("https://user:pw@h/x")
                .unwrap_err()
                .contains("user information")
        );
        assert!(
            HttpUrl::parse("https://h/a b")
                .unwrap_err()
                .contains("spaces")
        );
        assert!(HttpUrl::parse("ftp://h/x").is_err());
    }
}
