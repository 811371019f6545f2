//! A real browser uploads to the data API the way an administration portal
//! would. Headless Chromium, driven by selenium, opens
//! `tests/browser/upload.html` from `file://` (origin `null`), picks a file
//! with the file input, types the ticket URL and clicks Upload; the page
//! `PUT`s the file to `https://127.0.0.1:PORT/images/{ticket}`. The request
//! crosses origins with a non-simple method, so the browser sends a CORS
//! preflight first and only lets the page see the answer when the server's
//! CORS headers allow it. The page writes the final status into
//! `#result[data-status]` and the response body into `#result`.
//!
//! Chromium trusts exactly the server's generated key
//! (`--ignore-certificate-errors-spki-list` with the SHA-256 of the
//! certificate's SubjectPublicKeyInfo), not every certificate.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use support::image::{
    Fill, Layout, MAIN, ODD, Run, SMALL, Source, Target, assert_same_content, assert_target,
};
use support::ova::{Manifest, OVF_NAME, Ova, prepare};
use support::server::Server;
use support::{Work, assert_absent, file_len};

/// The upload page.
const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/upload.html");
/// The browser (Debian `chromium`).
const CHROMIUM: &str = "/usr/bin/chromium";
/// Its WebDriver (Debian `chromium-driver`).
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the driver waits for the page to report an outcome.
const WAIT_SECONDS: u32 = 30;

/// A body small enough to reach the server with the request head, for
/// uploads the server refuses before reading any body.
const TINY: Layout = Layout {
    size: 4096,
    runs: &[Run {
        offset: 0,
        len: 4096,
        fill: Fill::Text,
    }],
};

/// The selenium side: launches Chromium, drives the page, waits for
/// `#result[data-status]` and prints one line, `RESULT {json}`, with what
/// the page showed, the browser's own record of the requests to the upload
/// URL (preflight included) and its console messages.
const DRIVER: &str = r##"
import base64, hashlib, json, pathlib, ssl, sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

page, url, path, mode, profile, cert, chromium, chromedriver, wait, log = sys.argv[1:11]


def tlv(b, i):
    """One DER element at i: (tag, start of contents, end)."""
    tag, n = b[i], b[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[i:i + k], "big")
        i += k
    return tag, i, i + n


def spki_pin(pem):
    """base64(SHA-256(SubjectPublicKeyInfo)) of a PEM certificate."""
    with open(pem) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    _, tbs, _ = tlv(der, 0)
    _, i, _ = tlv(der, tbs)
    tag, _, end = tlv(der, i)
    if tag == 0xA0:  # [0] version
        i = end
    for _ in range(5):  # serial, signature, issuer, validity, subject
        i = tlv(der, i)[2]
    end = tlv(der, i)[2]
    return base64.b64encode(hashlib.sha256(der[i:end]).digest()).decode()


opts = webdriver.ChromeOptions()
opts.binary_location = chromium
for flag in (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--user-data-dir=" + profile,
    "--ignore-certificate-errors-spki-list=" + spki_pin(cert),
):
    opts.add_argument(flag)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
driver = webdriver.Chrome(
    service=Service(executable_path=chromedriver, log_output=log), options=opts
)
try:
    driver.get(pathlib.Path(page).as_uri())
    driver.find_element(By.ID, "file").send_keys(path)
    field = driver.find_element(By.ID, "url")
    field.clear()
    field.send_keys(url)
    Select(driver.find_element(By.ID, "mode")).select_by_value(mode)
    driver.find_element(By.ID, "upload").click()
    result = driver.find_element(By.ID, "result")
    WebDriverWait(driver, float(wait)).until(
        lambda d: result.get_attribute("data-status")
    )
    progress = driver.find_element(By.ID, "progress")
    # The browser's record of each request to the upload URL (the preflight
    # has its own id) and of the response it got, if any.
    by_id = {}
    exchanges = []
    for entry in driver.get_log("performance"):
        m = json.loads(entry["message"])["message"]
        p = m.get("params", {})
        if m["method"] == "Network.requestWillBeSent" and p["request"]["url"] == url:
            x = {"method": p["request"]["method"], "status": None, "allow_origin": None}
            by_id[p["requestId"]] = x
            exchanges.append(x)
        elif m["method"] == "Network.responseReceived" and p["requestId"] in by_id:
            headers = {k.lower(): v for k, v in p["response"]["headers"].items()}
            by_id[p["requestId"]].update(
                status=p["response"]["status"],
                allow_origin=headers.get("access-control-allow-origin"),
            )
    print("RESULT " + json.dumps({
        "status": result.get_attribute("data-status"),
        "body": result.get_attribute("textContent"),
        "progress": progress.text,
        "sent": int(progress.get_attribute("data-sent")),
        "origin": driver.execute_script("return self.origin"),
        "exchanges": exchanges,
        "console": [e["message"] for e in driver.get_log("browser")],
    }))
finally:
    driver.quit()
"##;

/// What the page reported after one upload.
#[derive(Debug)]
struct Page {
    /// `#result[data-status]`: the HTTP status, or `error` when no response
    /// reached the page.
    status: String,
    /// `#result`'s text: the response body, or the browser's error.
    body: String,
    /// `#progress`'s text.
    progress: String,
    /// `#progress[data-sent]`: bytes the browser reported as sent.
    sent: u64,
    /// The page's origin as the browser sees it.
    origin: String,
    /// The browser's requests to the upload URL, as it logged them:
    /// `method`, and the response's `status` and `allow_origin` header
    /// (null when none arrived).
    exchanges: Vec<Value>,
    /// Console messages (CORS refusals land here).
    console: Vec<String>,
}

impl Page {
    /// The response body as JSON.
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("page result is not JSON ({e}): {self:#?}"))
    }

    /// The browser's first exchange with the upload URL using `method`.
    fn exchange(&self, method: &str) -> Option<&Value> {
        self.exchanges.iter().find(|x| x["method"] == method)
    }

    /// Checks that the upload really crossed origins and that CORS let the
    /// answer through: the page is not same-origin with the server, the
    /// browser preflighted the `PUT` with `OPTIONS` and got a 2xx allowing
    /// any origin, then got the `PUT`'s response (the status the page
    /// shows), which allows any origin too, and blocked nothing.
    fn assert_cross_origin(&self) {
        assert_eq!(self.origin, "null", "page origin: {self:#?}");
        // The browser logs the PUT before the preflight it triggers, or
        // after: only their presence is certain.
        let Some(preflight) = self.exchange("OPTIONS") else {
            panic!("no CORS preflight: {self:#?}");
        };
        let Some(put) = self.exchange("PUT") else {
            panic!("no PUT: {self:#?}");
        };
        let ok = preflight["status"]
            .as_u64()
            .is_some_and(|s| (200..300).contains(&s));
        assert!(ok, "preflight refused: {self:#?}");
        assert_eq!(preflight["allow_origin"], "*", "preflight: {self:#?}");
        assert_eq!(
            put["status"].as_u64().map(|s| s.to_string()).as_deref(),
            Some(self.status.as_str()),
            "the page shows the PUT's status: {self:#?}"
        );
        assert_eq!(put["allow_origin"], "*", "PUT response: {self:#?}");
        assert!(
            !self.console.iter().any(|m| m.contains("CORS policy")),
            "the browser blocked a response: {self:#?}"
        );
    }
}

/// Panics with a useful message unless the browser is installed.
fn require_browser() {
    for p in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(p).exists(),
            "{p} is missing: install chromium and chromium-driver (scripts/test.sh does)"
        );
    }
}

/// Uploads `file` to `url` from the page in a fresh Chromium, in `mode`
/// (`fetch`, `xhr` or `stream`), and returns what the page reported.
fn browser_upload(s: &Server, work: &Work, url: &str, file: &Path, mode: &str) -> Page {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    require_browser();
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let profile = work.mkdir(&format!("chromium-profile-{n}"));
    let log = work.path(&format!("chromedriver-{n}.log"));
    let args = [
        PAGE.to_owned(),
        url.to_owned(),
        file.display().to_string(),
        mode.to_owned(),
        profile.display().to_string(),
        s.cert.display().to_string(),
        CHROMIUM.to_owned(),
        CHROMEDRIVER.to_owned(),
        WAIT_SECONDS.to_string(),
        log.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = s.python(DRIVER, &args);
    let line = out.lines().find_map(|l| l.strip_prefix("RESULT "));
    let Some(line) = line.filter(|_| ok) else {
        panic!(
            "browser upload failed:\n{out}\nchromedriver log:\n{}\nserver log:\n{}",
            fs::read_to_string(&log).unwrap_or_default(),
            s.log()
        );
    };
    let v: Value = serde_json::from_str(line).expect("driver result JSON");
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    Page {
        status: text("status"),
        body: text("body"),
        progress: text("progress"),
        sent: v["sent"].as_u64().unwrap_or_default(),
        origin: text("origin"),
        exchanges: v["exchanges"].as_array().cloned().unwrap_or_default(),
        console: v["console"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Writes `layout` as a raw image `work/src/{name}` and creates the
/// equally sized, empty target `{name}` in the storage root; returns
/// (source, target).
fn raw_pair(s: &Server, work: &Work, name: &str, layout: &Layout) -> (PathBuf, PathBuf) {
    let src = layout.write_raw(&work.mkdir("src").join(name));
    let target = s.root.join(name);
    fs::File::create(&target)
        .and_then(|f| f.set_len(layout.size))
        .expect("create target");
    (src, target)
}

/// An image ticket on `target` of `size` bytes allowing `ops`.
fn image_ticket(s: &Server, id: &str, target: &str, size: u64, ops: &[&str]) {
    s.add_ticket(&json!({
        "uuid": id, "size": size, "url": s.file_url(target), "ops": ops,
        "timeout": 60, "transfer_id": format!("{id}-transfer"),
    }));
}

#[test]
fn ova_uploaded_from_the_browser_is_imported() {
    let work = Work::new();
    let s = Server::start(&work);
    let src = work.mkdir("src");
    let d1 = prepare(&src, "disk1", &MAIN, Source::Vmdk);
    let d2 = prepare(&src, "disk2", &ODD, Source::Qcow2V3);
    let ova = Ova::new()
        .disk(d1.disk(1, "vm-disk1.vmdk"))
        .disk(d2.disk(2, "vm-disk2.qcow2"))
        .manifest(Manifest::Sha256)
        .build(&src, "vm.ova");
    s.add_ticket(&json!({
        "uuid": "ova-browser", "size": file_len(&ova), "ops": ["write"], "timeout": 60,
        "kind": "ova-import", "transfer_id": "browser-import",
        "ova": {"disks": [
            {"href": "vm-disk1.vmdk", "url": s.file_url("disk1.qcow2"), "format": "qcow2"},
            {"href": "vm-disk2.qcow2", "url": s.file_url("disk2.raw"), "format": "raw"},
        ]},
    }));

    let page = browser_upload(&s, &work, &s.image_url("ova-browser"), &ova, "fetch");

    assert_eq!(page.status, "200", "{page:#?}\n{}", s.log());
    page.assert_cross_origin();
    let summary = page.json();
    assert_eq!(summary["manifest"], "verified", "{summary:#}");
    let disks = summary["disks"].as_array().expect("disks in summary");
    assert_eq!(disks.len(), 2, "{summary:#}");
    let ticket = s.ticket("ova-browser");
    assert_eq!(ticket["state"], "succeeded", "{ticket:#}");
    for d in ticket["disks"].as_array().expect("ticket disks") {
        assert_eq!(d["state"], "succeeded", "{ticket:#}");
    }
    assert_target(
        &d1.raw,
        &s.root.join("disk1.qcow2"),
        Target::Qcow2,
        d1.capacity,
    );
    assert_target(&d2.raw, &s.root.join("disk2.raw"), Target::Raw, d2.capacity);
}

#[test]
fn ova_rejected_by_the_server_reports_the_error_to_the_page() {
    let work = Work::new();
    let s = Server::start(&work);
    let src = work.mkdir("src");
    let d1 = prepare(&src, "disk1", &SMALL, Source::Qcow2V3);
    let mut ova = Ova::new()
        .disk(d1.disk(1, "vm-disk1.qcow2"))
        .manifest(Manifest::Sha256);
    // A manifest naming the right entries with a wrong digest for the disk.
    let ovf = ova.ovf();
    ova.manifest_text = Some(format!(
        "{}{}",
        Manifest::Sha256.line(OVF_NAME, &Manifest::Sha256.digest(ovf.as_bytes())),
        Manifest::Sha256.line("vm-disk1.qcow2", &"0".repeat(64)),
    ));
    let ova = ova.build(&src, "bad.ova");
    s.add_ticket(&json!({
        "uuid": "ova-bad", "ops": ["write"], "timeout": 60, "kind": "ova-import",
        "ova": {"disks": [{"href": "vm-disk1.qcow2", "url": s.file_url("disk1.raw")}]},
    }));

    let page = browser_upload(&s, &work, &s.image_url("ova-bad"), &ova, "fetch");

    assert_eq!(page.status, "400", "{page:#?}\n{}", s.log());
    page.assert_cross_origin();
    let ticket = s.ticket("ova-bad");
    assert_eq!(ticket["state"], "failed", "{ticket:#}");
    let error = ticket["error"].as_str().expect("ticket error");
    assert_eq!(
        page.body.trim(),
        error,
        "the page shows the server's reason"
    );
    assert_absent(&s.root.join("disk1.raw"));
}

#[test]
fn image_uploaded_from_the_browser_is_written() {
    let work = Work::new();
    let s = Server::start(&work);
    let (src, target) = raw_pair(&s, &work, "disk.raw", &MAIN);
    image_ticket(&s, "img-browser", "disk.raw", MAIN.size, &["write"]);

    let page = browser_upload(&s, &work, &s.image_url("img-browser"), &src, "fetch");

    assert_eq!(page.status, "200", "{page:#?}\n{}", s.log());
    page.assert_cross_origin();
    assert_eq!(file_len(&target), MAIN.size);
    assert_same_content(&src, &target, "raw");
}

#[test]
fn image_upload_with_xhr_shows_progress() {
    let work = Work::new();
    let s = Server::start(&work);
    // An odd size: not a whole number of 64 KiB clusters.
    let (src, target) = raw_pair(&s, &work, "odd.raw", &ODD);
    image_ticket(&s, "img-xhr", "odd.raw", ODD.size, &["write"]);

    let page = browser_upload(&s, &work, &s.image_url("img-xhr"), &src, "xhr");

    assert_eq!(page.status, "200", "{page:#?}\n{}", s.log());
    page.assert_cross_origin();
    assert_eq!(page.sent, ODD.size, "upload progress events: {page:#?}");
    assert_eq!(
        page.progress,
        format!("Sent {0} of {0} bytes.", ODD.size),
        "{page:#?}"
    );
    assert_same_content(&src, &target, "raw");
}

#[test]
fn unknown_ticket_reaches_the_page_as_403() {
    let work = Work::new();
    let s = Server::start(&work);
    let (src, _) = raw_pair(&s, &work, "none.raw", &TINY);

    let page = browser_upload(&s, &work, &s.image_url("no-such-ticket"), &src, "fetch");

    assert_eq!(page.status, "403", "{page:#?}\n{}", s.log());
    page.assert_cross_origin();
    assert!(page.body.contains("no such ticket"), "{page:#?}");
}

#[test]
fn write_refused_by_a_read_only_ticket_reaches_the_page_as_403() {
    let work = Work::new();
    let s = Server::start(&work);
    let (src, target) = raw_pair(&s, &work, "ro.raw", &TINY);
    let before = b"this volume must stay as it is\n".repeat(128);
    fs::write(&target, &before).expect("write target");
    image_ticket(&s, "img-ro", "ro.raw", TINY.size, &["read"]);

    let page = browser_upload(&s, &work, &s.image_url("img-ro"), &src, "xhr");

    assert_eq!(page.status, "403", "{page:#?}\n{}", s.log());
    page.assert_cross_origin();
    assert!(
        page.body.contains("img-ro-transfer does not allow write"),
        "{page:#?}"
    );
    assert_eq!(fs::read(&target).expect("read target"), before);
}

#[test]
fn large_upload_refused_reaches_the_page_as_403() {
    let work = Work::new();
    let s = Server::start(&work);
    let (src, _) = raw_pair(&s, &work, "big.raw", &MAIN);

    let page = browser_upload(&s, &work, &s.image_url("no-such-ticket"), &src, "fetch");

    assert_eq!(page.status, "403", "{page:#?}\n{}", s.log());
    page.assert_cross_origin();
    assert!(page.body.contains("no such ticket"), "{page:#?}");
}
