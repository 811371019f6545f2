//! The upload page: `GET /upload/{ticket}` on the data port serves a
//! page from which a person uploads to the ticket with a browser, for
//! `ova-import` and writable `image` tickets. The page, its style sheet
//! and its script are compiled into the binary (`upload.html`,
//! `upload.css`, `upload.js`); nothing is fetched from elsewhere.
//!
//! As for the data API, the ticket id in the URL is the authorization.
//! The page is rendered with what the ticket allows; an unknown or
//! expired ticket, or one of another kind, gets a page that says so in
//! words instead of a form. The script speaks the data API of the same
//! origin: the resumable `HEAD`/`PUT Content-Range` protocol for an OVA
//! ([`super::tus`]), ranged `PUT`s and `PATCH` zero for an image, and
//! `GET /images/{ticket}/status` ([`super::status`]) for what the server
//! has done. Looking at the page is no activity on the ticket
//! ([`TicketStore::peek`]).
//!
//! Every answer carries a Content-Security-Policy that allows only the
//! page's own script and style sheet and requests to its own origin, so
//! the script and style are separate files (`/upload/assets/…`, the same
//! for every ticket and cacheable) and the page has no inline script,
//! style or event handler.

use std::sync::OnceLock;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use sha2::{Digest, Sha256};

use crate::server::http::{self as h, Response};
use crate::ticket::{Op, TicketHandle, TicketKind, TicketStore};

const HTML: &str = include_str!("upload.html");
const CSS: &str = include_str!("upload.css");
const JS: &str = include_str!("upload.js");

/// Where the assets are served, under `/upload/`.
const ASSETS: &str = "assets/";

/// What the page may load and run: its own script and style sheet,
/// requests to its own origin; no frames, forms, plugins or base URL.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Answers `GET` or `HEAD` of `/upload/{rest}`.
pub(super) fn answer(store: &TicketStore, method: &Method, rest: &str) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let mut r = h::text(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not allowed on the upload page"),
        );
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return secure(r);
    }
    let r = match rest.strip_prefix(ASSETS) {
        Some("upload.css") => asset(CSS, "text/css; charset=utf-8"),
        Some("upload.js") => asset(JS, "text/javascript; charset=utf-8"),
        Some(_) => not_found(),
        None if rest.is_empty() || rest.contains('/') => not_found(),
        None => match store.peek(rest) {
            Ok(t) => ticket_page(&t),
            Err(_) => gone(),
        },
    };
    secure(r)
}

/// A short digest of the assets, in their URLs: a new build's page never
/// runs an old cached script.
fn version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        let mut d = Sha256::new();
        d.update(JS.as_bytes());
        d.update(CSS.as_bytes());
        hex::encode(&d.finalize()[..6])
    })
}

fn asset(body: &'static str, ctype: &'static str) -> Response {
    let mut r = hyper::Response::new(h::full(body));
    let hd = r.headers_mut();
    hd.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    hd.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    r
}

/// The headers every answer under `/upload/` carries.
fn secure(mut r: Response) -> Response {
    let hd = r.headers_mut();
    let set = |hd: &mut http::HeaderMap, name: &'static str, v: &'static str| {
        hd.insert(HeaderName::from_static(name), HeaderValue::from_static(v));
    };
    set(hd, "content-security-policy", CSP);
    set(hd, "x-content-type-options", "nosniff");
    // The page's URL holds the ticket: never send it on.
    set(hd, "referrer-policy", "no-referrer");
    set(hd, "x-frame-options", "DENY");
    set(hd, "cross-origin-opener-policy", "same-origin");
    set(hd, "cross-origin-resource-policy", "same-origin");
    if !hd.contains_key(CACHE_CONTROL) {
        set(hd, "cache-control", "no-store");
    }
    r
}

/// The page for a ticket the lookup found.
fn ticket_page(t: &TicketHandle) -> Response {
    let writable = t.ops().contains(&Op::Write);
    match t.kind() {
        TicketKind::OvaImport => form(
            "ova-import",
            "Upload a virtual machine",
            &format!(
                "<p class=\"lead\">Send the virtual machine as an OVA package. The server \
                 unpacks it while it arrives, writes each disk and checks the disks against \
                 the package's manifest.</p>\n{}",
                RESUME_NOTE
            ),
            "Drop the .ova file here",
            ".ova,.ovf,.tar,.gz,.xz,.zst,.zip,application/x-tar,application/gzip",
        ),
        TicketKind::Image if writable => form(
            "image",
            "Upload a disk image",
            &format!(
                "<p class=\"lead\">Send a <strong>raw</strong> disk image of at most \
                 <span id=\"limit\">{}</span>. The disk receives the file's bytes as they \
                 are, so convert a qcow2 or VMDK image to raw first \
                 (<code>qemu-img convert -O raw</code>). Runs of zeros are not sent: the \
                 server zeroes them. At the end the page compares the server's checksum of \
                 the disk with the file's.</p>\n{}",
                bytes_text(t.size().unwrap_or(0)),
                RESUME_NOTE
            ),
            "Drop the disk image here",
            "",
        ),
        TicketKind::Image => message(
            StatusCode::FORBIDDEN,
            "This link cannot upload",
            "<p>This link lets you read the disk, not write to it. Ask whoever gave you \
             the link for an upload link.</p>",
        ),
        TicketKind::OvaExport => message(
            StatusCode::OK,
            "This link is a download",
            &format!(
                "<p>This link is for downloading a virtual machine, not for uploading \
                 one.</p>\n<p><a class=\"button primary\" href=\"/images/{}\" \
                 download>Download the OVA package</a></p>",
                escape(t.id())
            ),
        ),
    }
}

const RESUME_NOTE: &str = "<p class=\"hint\">If the connection drops or you reload this \
    page, choose the same file again: the upload goes on where it stopped.</p>";

/// The upload form.
fn form(kind: &str, title: &str, intro: &str, drop: &str, accept: &str) -> Response {
    let accept = if accept.is_empty() {
        String::new()
    } else {
        format!(" accept=\"{}\"", escape(accept))
    };
    let main = FORM
        .replace("{{title}}", &escape(title))
        .replace("{{intro}}", intro)
        .replace("{{drop}}", &escape(drop))
        .replace("{{accept}}", &accept);
    render(StatusCode::OK, kind, title, &main)
}

/// The form's body; see `upload.html` for the page around it.
const FORM: &str = r#"<h1>{{title}}</h1>
{{intro}}
<section id="pick" aria-label="Choose the file">
  <input type="file" id="file" class="sr-only"{{accept}}>
  <label for="file" id="drop" class="drop">
    <span class="drop-title">{{drop}}</span>
    <span class="drop-or">or</span>
    <span class="button primary">Choose a file</span>
  </label>
  <p id="notice" class="notice" role="status" hidden></p>
</section>
<section id="transfer" class="card" aria-labelledby="file-name" hidden>
  <p class="file"><span id="file-name" class="name"></span> <span id="file-size" class="num"></span></p>
  <div id="bar" class="bar" role="progressbar" aria-label="Upload progress" aria-valuemin="0" aria-valuemax="100" aria-valuenow="0"><div id="fill" class="fill"></div></div>
  <dl class="stats">
    <div><dt>Sent</dt><dd id="sent" class="num">&#8212;</dd></div>
    <div><dt>Speed</dt><dd id="rate" class="num">&#8212;</dd></div>
    <div><dt>Time left</dt><dd id="eta" class="num">&#8212;</dd></div>
  </dl>
  <p id="phase" class="phase" aria-live="polite">&#160;</p>
  <div class="actions">
    <button type="button" id="pause">Pause</button>
    <button type="button" id="resume" class="primary" hidden>Resume</button>
  </div>
</section>
<section id="verdict" class="verdict" role="status" hidden>
  <h2 id="verdict-title"></h2>
  <div id="verdict-text"></div>
</section>
<section id="disks" class="card" aria-labelledby="disks-title" hidden>
  <h2 id="disks-title">Disks</h2>
  <table>
    <thead><tr><th scope="col">Disk</th><th scope="col">Received</th><th scope="col">State</th></tr></thead>
    <tbody id="disk-rows"></tbody>
  </table>
</section>
"#;

/// A page with a message instead of a form.
fn message(code: StatusCode, title: &str, text: &str) -> Response {
    let main = format!(
        "<section class=\"message\">\n<h1>{}</h1>\n{text}\n</section>\n",
        escape(title)
    );
    render(code, "", title, &main)
}

/// The page for a ticket id that names no live ticket: expired, removed,
/// or never installed look the same (an expired ticket is forgotten).
fn gone() -> Response {
    message(
        StatusCode::FORBIDDEN,
        "This upload link does not work",
        "<p>The link has expired, or the transfer it was made for was cancelled, or the \
         link is not complete. Nothing can be uploaded with it.</p>\n<p>Ask whoever gave \
         you the link for a new one.</p>",
    )
}

fn not_found() -> Response {
    message(
        StatusCode::NOT_FOUND,
        "No such page",
        "<p>An upload link looks like <code>https://HOST:PORT/upload/TICKET</code>.</p>",
    )
}

/// The whole page around `main`.
fn render(code: StatusCode, kind: &str, title: &str, main: &str) -> Response {
    let html = HTML
        .replace("{{title}}", &escape(title))
        .replace("{{kind}}", kind)
        .replace("{{v}}", version())
        .replace("{{server}}", env!("CARGO_PKG_VERSION"))
        .replace(
            "{{footer}}",
            if kind.is_empty() {
                ""
            } else {
                " This link is the permission to upload: do not pass it on."
            },
        )
        .replace("{{main}}", main);
    let mut r = hyper::Response::new(h::full(html));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// `n` bytes as the page shows sizes: binary units, one decimal.
fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n}\u{a0}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}\u{a0}{}", UNITS[unit])
}

/// Text for HTML content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_the_script_writes_them() {
        assert_eq!(bytes_text(0), "0\u{a0}B");
        assert_eq!(bytes_text(1023), "1023\u{a0}B");
        assert_eq!(bytes_text(1024), "1.0\u{a0}KiB");
        assert_eq!(bytes_text(6 << 20), "6.0\u{a0}MiB");
        assert_eq!(bytes_text((3 << 30) + (512 << 20)), "3.5\u{a0}GiB");
    }

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    /// Whether `text` has an attribute `on…=`, an inline event handler.
    fn has_handler(text: &str) -> bool {
        let lower = text.to_ascii_lowercase();
        lower.match_indices(" on").any(|(i, _)| {
            let rest = &lower[i + 3..];
            let name = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name > 0 && rest[name..].trim_start().starts_with('=')
        })
    }

    #[test]
    fn the_page_has_no_inline_script_style_or_handler() {
        // The policy forbids them; a page that used one would break.
        for text in [HTML, FORM, RESUME_NOTE] {
            let lower = text.to_ascii_lowercase();
            assert!(!lower.contains("<script>"), "inline script");
            assert!(!lower.contains("<style"), "inline style sheet");
            assert!(!lower.contains(" style="), "style attribute");
            assert!(!has_handler(text), "event handler attribute");
        }
        assert!(has_handler("<b onclick=\"x()\">"));
        assert!(!has_handler("<p>one only</p>"));
        assert!(!JS.contains("innerHTML"), "markup built from strings");
        assert!(!JS.contains("eval("), "eval");
    }

    #[test]
    fn every_placeholder_is_filled() {
        for p in [
            "{{title}}",
            "{{kind}}",
            "{{v}}",
            "{{server}}",
            "{{footer}}",
            "{{main}}",
        ] {
            assert!(HTML.contains(p), "{p} missing from upload.html");
        }
        let filled = HTML
            .replace("{{title}}", "")
            .replace("{{kind}}", "")
            .replace("{{v}}", "")
            .replace("{{server}}", "")
            .replace("{{footer}}", "")
            .replace("{{main}}", "");
        assert!(!filled.contains("{{"), "unknown placeholder in upload.html");
    }
}
