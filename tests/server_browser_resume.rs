//! Resumable and streamed OVA uploads from a real headless Chromium
//! (driven by selenium, pages opened from `file://`, so every request
//! crosses origins and passes CORS):
//!
//! - tus-js-client (the npm package `scripts/test.sh` installs under
//!   `target/js`) uploads an OVA to an `ova-import` ticket through a proxy
//!   that cuts its connections, both creating the upload with a `POST` to
//!   the ticket URL (its default) and starting from the ticket URL as
//!   `uploadUrl`; it resumes after each cut from the offset `HEAD` tells,
//!   and the import completes with targets equal to the sources;
//! - `fetch` with a `ReadableStream` body and `duplex: 'half'`, which
//!   Chromium sends only over HTTP/2, streams an OVA into a ticket.

mod support;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use support::image::{MAIN, ODD, Source, Target, assert_target};
use support::ova::{Manifest, Ova, Prepared, prepare};
use support::proxy::CuttingProxy;
use support::server::Server;
use support::{Work, file_len};

const TUS_PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/tus.html");
const UPLOAD_PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/upload.html");
const TUS_JS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/js/node_modules/tus-js-client/dist/tus.min.js"
);
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT_SECONDS: u32 = 120;

/// Opens `page`, picks the file, types the URL, selects the mode, clicks
/// Upload and waits for `#result[data-status]`; prints `RESULT {json}`.
const DRIVER: &str = r##"
import base64, hashlib, json, pathlib, ssl, sys
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

page, url, path, mode, profile, cert, chromium, chromedriver, wait, log = sys.argv[1:11]

def tlv(b, i):
    tag, n = b[i], b[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(b[i:i + k], "big")
        i += k
    return tag, i, i + n

def spki_pin(pem):
    with open(pem) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    _, tbs, _ = tlv(der, 0)
    _, i, _ = tlv(der, tbs)
    tag, _, end = tlv(der, i)
    if tag == 0xA0:
        i = end
    for _ in range(5):
        i = tlv(der, i)[2]
    end = tlv(der, i)[2]
    return base64.b64encode(hashlib.sha256(der[i:end]).digest()).decode()

opts = webdriver.ChromeOptions()
opts.binary_location = chromium
for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-dev-shm-usage", "--allow-file-access-from-files",
             "--user-data-dir=" + profile,
             "--ignore-certificate-errors-spki-list=" + spki_pin(cert)):
    opts.add_argument(flag)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
driver = webdriver.Chrome(service=Service(executable_path=chromedriver, log_output=log), options=opts)
try:
    driver.get(pathlib.Path(page).as_uri())
    driver.find_element(By.ID, "file").send_keys(path)
    field = driver.find_element(By.ID, "url")
    field.clear()
    field.send_keys(url)
    Select(driver.find_element(By.ID, "mode")).select_by_value(mode)
    driver.find_element(By.ID, "upload").click()
    result = driver.find_element(By.ID, "result")
    WebDriverWait(driver, float(wait)).until(lambda d: result.get_attribute("data-status"))
    progress = driver.find_element(By.ID, "progress")
    protocols = {}
    methods = []
    for entry in driver.get_log("performance"):
        m = json.loads(entry["message"])["message"]
        p = m.get("params", {})
        if m["method"] == "Network.requestWillBeSent" and p["request"]["url"].startswith(url):
            methods.append(p["request"]["method"])
        if m["method"] == "Network.responseReceived" and p["response"]["url"].startswith(url):
            proto = p["response"].get("protocol", "?")
            protocols[proto] = protocols.get(proto, 0) + 1
    print("RESULT " + json.dumps({
        "status": result.get_attribute("data-status"),
        "body": result.get_attribute("textContent"),
        "retries": int(progress.get_attribute("data-retries") or 0),
        "methods": methods,
        "protocols": protocols,
        "console": [e["message"] for e in driver.get_log("browser")],
    }))
finally:
    driver.quit()
"##;

/// Runs [`DRIVER`]; returns what the page reported.
fn drive(s: &Server, w: &Work, page: &str, url: &str, file: &Path, mode: &str) -> Value {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    for p in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(p).exists(),
            "{p} is missing: install chromium and chromium-driver (scripts/test.sh does)"
        );
    }
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let profile = w.mkdir(&format!("chromium-profile-{n}"));
    let log = w.path(&format!("chromedriver-{n}.log"));
    let args = [
        page.to_owned(),
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
            "browser run failed:\n{out}\nchromedriver log:\n{}\nserver log:\n{}",
            fs::read_to_string(&log).unwrap_or_default(),
            s.log()
        );
    };
    serde_json::from_str(line).expect("driver result JSON")
}

/// Two disks (a VMDK and a qcow2) with a manifest, and the ticket for
/// them (with `size` when given).
fn package(s: &Server, w: &Work, id: &str, size: bool) -> (std::path::PathBuf, Vec<Prepared>) {
    let src = w.mkdir("src");
    let d1 = prepare(&src, "d1", &MAIN, Source::Vmdk);
    let d2 = prepare(&src, "d2", &ODD, Source::Qcow2V3);
    let ova = Ova::new()
        .disk(d1.disk(1, "vm-disk1.vmdk"))
        .disk(d2.disk(2, "vm-disk2.qcow2"))
        .manifest(Manifest::Sha256)
        .build(&src, &format!("{id}.ova"));
    let mut t = json!({
        "uuid": id, "ops": ["write"], "timeout": 120, "kind": "ova-import",
        "ova": {"disks": [
            {"href": "vm-disk1.vmdk", "url": s.file_url(&format!("{id}-1.qcow2")), "format": "qcow2"},
            {"href": "vm-disk2.qcow2", "url": s.file_url(&format!("{id}-2.raw")), "format": "raw"},
        ]},
    });
    if size {
        t["size"] = json!(file_len(&ova));
    }
    s.add_ticket(&t);
    (ova, vec![d1, d2])
}

fn assert_imported(s: &Server, id: &str, disks: &[Prepared]) {
    let t = s.ticket(id);
    assert_eq!(t["state"], "succeeded", "{t:#}\n{}", s.log());
    assert_target(
        &disks[0].raw,
        &s.root.join(format!("{id}-1.qcow2")),
        Target::Qcow2,
        disks[0].capacity,
    );
    assert_target(
        &disks[1].raw,
        &s.root.join(format!("{id}-2.raw")),
        Target::Raw,
        disks[1].capacity,
    );
}

fn require_tus_js() {
    assert!(
        Path::new(TUS_JS).exists(),
        "{TUS_JS} is missing: scripts/test.sh installs tus-js-client (npm install in target/js)"
    );
}

/// tus-js-client with its defaults (a `POST` to the endpoint creates the
/// upload, here the ticket URL) through a proxy that cuts ten connections.
#[test]
fn tus_js_client_creates_and_resumes_through_cuts() {
    require_tus_js();
    let w = Work::new();
    let s = Server::start(&w);
    let (ova, disks) = package(&s, &w, "tus-post", false);
    let len = file_len(&ova);
    let proxy = CuttingProxy::start(s.port, 10, 96 << 10, (len / 12).max(160 << 10), len);

    let page = drive(
        &s,
        &w,
        TUS_PAGE,
        &proxy.image_url("tus-post"),
        &ova,
        "endpoint",
    );

    assert_eq!(page["status"], "success", "{page:#}\n{}", s.log());
    assert!(proxy.cuts() >= 10, "only {} cuts: {page:#}", proxy.cuts());
    // A cut may also take a preflight or a HEAD, which Chromium sends
    // again by itself; the PATCHes cut are what tus-js-client resumes.
    assert!(
        page["retries"].as_u64().unwrap_or_default() >= 2,
        "tus-js-client never resumed: {page:#}"
    );
    // Without the CORS preflights.
    let methods: Vec<&str> = page["methods"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter(|m| *m != "OPTIONS")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(methods.first(), Some(&"POST"), "{page:#}");
    assert!(methods.contains(&"HEAD"), "{page:#}");
    assert!(
        methods.iter().filter(|m| **m == "PATCH").count() >= 3,
        "{page:#}"
    );
    assert_imported(&s, "tus-post", &disks);
}

/// tus-js-client given the ticket URL as `uploadUrl`: no creation, the
/// first request is a `HEAD`; the ticket's `size` is the package's length.
#[test]
fn tus_js_client_with_the_ticket_as_upload_url() {
    require_tus_js();
    let w = Work::new();
    let s = Server::start(&w);
    let (ova, disks) = package(&s, &w, "tus-url", true);
    let len = file_len(&ova);
    let proxy = CuttingProxy::start(s.port, 4, 96 << 10, (len / 6).max(160 << 10), len + 1);

    let page = drive(
        &s,
        &w,
        TUS_PAGE,
        &proxy.image_url("tus-url"),
        &ova,
        "uploadUrl",
    );

    assert_eq!(page["status"], "success", "{page:#}\n{}", s.log());
    // Without the CORS preflights.
    let methods: Vec<&str> = page["methods"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter(|m| *m != "OPTIONS")
                .collect()
        })
        .unwrap_or_default();
    assert!(!methods.contains(&"POST"), "{page:#}");
    assert_eq!(methods.first(), Some(&"HEAD"), "{page:#}");
    assert_imported(&s, "tus-url", &disks);
}

/// `fetch` with a `ReadableStream` body (`duplex: 'half'`), which Chromium
/// sends only over HTTP/2, streams an OVA into a ticket.
#[test]
fn streamed_fetch_over_h2_imports_an_ova() {
    let w = Work::new();
    let s = Server::start(&w);
    let (ova, disks) = package(&s, &w, "stream", false);

    let page = drive(&s, &w, UPLOAD_PAGE, &s.image_url("stream"), &ova, "stream");

    assert_eq!(page["status"], "200", "{page:#}\n{}", s.log());
    let summary: Value = serde_json::from_str(page["body"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {page:#}"));
    assert_eq!(summary["manifest"], "verified", "{summary:#}");
    assert!(
        page["protocols"]
            .as_object()
            .is_some_and(|p| p.keys().all(|k| k == "h2") && !p.is_empty()),
        "not over HTTP/2: {page:#}"
    );
    assert_imported(&s, "stream", &disks);
}
