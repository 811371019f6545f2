//! `s3://BUCKET/KEY`: an object in S3-compatible storage.

use std::fmt;

/// A parsed object URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    bucket: String,
    key: String,
}

impl S3Url {
    /// Parses `s3://BUCKET/KEY`; the error says why not, in a phrase.
    pub fn parse(s: &str) -> Result<S3Url, String> {
        let rest = match s.get(..5) {
            Some(p) if p.eq_ignore_ascii_case("s3://") => &s[5..],
            _ => return Err("not an s3:// URL".into()),
        };
        if s.contains(['\0', '\n', '\r']) {
            return Err("NUL and line breaks are not allowed".into());
        }
        let (bucket, key) = rest
            .split_once('/')
            .ok_or("no key after the bucket: write s3://BUCKET/KEY")?;
        if !(3..=63).contains(&bucket.len())
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            || !bucket.as_bytes()[0].is_ascii_alphanumeric()
        {
            return Err(format!(
                "'{bucket}' is not a bucket name (3 to 63 of a-z, 0-9, '.' and '-')"
            ));
        }
        if key.is_empty() {
            return Err("the key is empty: write s3://BUCKET/KEY".into());
        }
        if key.len() > 1024 {
            return Err("the key is longer than 1024 bytes".into());
        }
        if key.contains('?') || key.contains('#') {
            return Err("'?' and '#' are not allowed in the key".into());
        }
        Ok(S3Url {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object's key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_and_key() {
        let u = S3Url::parse("s3://catalog-1/site-a/vm.ova").unwrap();
        assert_eq!(u.bucket(), "catalog-1");
        assert_eq!(u.key(), "site-a/vm.ova");
        assert_eq!(u.to_string(), "s3://catalog-1/site-a/vm.ova");
        assert!(
            S3Url::parse("s3://Bucket/k")
                .unwrap_err()
                .contains("bucket name")
        );
        assert!(S3Url::parse("s3://ab/k").is_err());
        assert!(S3Url::parse("s3://bucket/").unwrap_err().contains("empty"));
        assert!(S3Url::parse("s3://bucket").unwrap_err().contains("no key"));
        assert!(S3Url::parse("s3://bucket/k?x").is_err());
    }
}
