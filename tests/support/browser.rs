//! A headless Chromium that a test drives step by step: selenium (in the
//! test venv) runs in a Python process that takes one JSON command per
//! line on stdin and answers one JSON line on stdout, so the test decides
//! what to do next from what the page shows. Chromium trusts exactly the
//! server's generated key (`--ignore-certificate-errors-spki-list`), and
//! keeps its performance log (every request the page made) and console.
//!
//! What a person would see is read from screenshots: [`ocr`] runs
//! tesseract on them, and [`super::png`] decodes them for pixel checks.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use super::Work;
use super::server::{Server, python};

/// The browser (Debian `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Its WebDriver (Debian `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The OCR engine (Debian `tesseract-ocr`).
pub const TESSERACT: &str = "tesseract";
/// How long one command may take (a wait included).
const CALL_LIMIT: Duration = Duration::from_secs(240);

const DRIVER: &str = r##"
import base64, hashlib, json, ssl, sys, time, traceback
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.common.action_chains import ActionChains

cert, profile, chromium, chromedriver, log, scale, width, height = sys.argv[1:9]

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
             "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--force-color-profile=srgb", "--lang=en-US",
             "--force-device-scale-factor=" + scale,
             "--window-size=%s,%s" % (width, height),
             "--user-data-dir=" + profile,
             "--ignore-certificate-errors-spki-list=" + spki_pin(cert)):
    opts.add_argument(flag)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
driver = webdriver.Chrome(service=Service(executable_path=chromedriver, log_output=log), options=opts)
driver.execute_cdp_cmd("Network.enable", {})
console = []
seen, by_id = [], {}

def requests():
    # The log hands each entry out once: what was read is kept.
    for entry in driver.get_log("performance"):
        m = json.loads(entry["message"])["message"]
        p = m.get("params", {})
        if m["method"] == "Network.requestWillBeSent":
            r = p["request"]
            x = {"method": r["method"], "url": r["url"], "headers": r.get("headers", {}),
                 "body": r.get("postData"), "status": None}
            by_id.setdefault(p["requestId"], []).append(x)
            seen.append(x)
        elif m["method"] == "Network.responseReceived" and p["requestId"] in by_id:
            by_id[p["requestId"]][-1]["status"] = p["response"]["status"]
    return seen

for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    value = None
    try:
        if op == "quit":
            break
        elif op == "open":
            driver.get(cmd["url"])
        elif op == "refresh":
            driver.refresh()
        elif op == "js":
            value = driver.execute_script("return " + cmd["expr"])
        elif op == "wait":
            deadline = time.time() + cmd["seconds"]
            while True:
                value = driver.execute_script("return " + cmd["expr"])
                if value:
                    break
                if time.time() > deadline:
                    raise Exception("waited %ss for %s; last %s" % (cmd["seconds"], cmd["expr"], json.dumps(value)))
                time.sleep(0.05)
        elif op == "pick":
            driver.find_element(By.ID, cmd["id"]).send_keys(cmd["path"])
        elif op == "click":
            driver.find_element(By.ID, cmd["id"]).click()
        elif op == "tab":
            ActionChains(driver).send_keys(Keys.TAB).perform()
        elif op == "screenshot":
            driver.save_screenshot(cmd["path"])
        elif op == "element_png":
            value = base64.b64encode(driver.find_element(By.ID, cmd["id"]).screenshot_as_png).decode()
        elif op == "throttle":
            driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
                "offline": False, "latency": 0, "downloadThroughput": -1,
                "uploadThroughput": cmd["upload"]})
        elif op == "viewport":
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": cmd["width"], "height": cmd["height"],
                "deviceScaleFactor": cmd["scale"], "mobile": cmd["mobile"]})
        elif op == "requests":
            value = requests()
        elif op == "console":
            console.extend(e["message"] for e in driver.get_log("browser"))
            value = console
        else:
            raise Exception("unknown op " + op)
        print(json.dumps({"ok": True, "value": value}), flush=True)
    except Exception:
        print(json.dumps({"ok": False, "error": traceback.format_exc()}), flush=True)
driver.quit()
"##;

/// Panics, naming what to install, unless Chromium, its driver and
/// tesseract are there; `OVAIO_SKIP_MISSING_TOOLS=1` makes it a skip
/// (false).
pub fn require() -> bool {
    let tesseract = Command::new(TESSERACT)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .chain((!tesseract).then_some(TESSERACT))
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("OVAIO_SKIP_MISSING_TOOLS").is_some_and(|v| v == "1") {
        eprintln!("{missing:?} not installed: skipping (OVAIO_SKIP_MISSING_TOOLS=1)");
        return false;
    }
    panic!(
        "{missing:?} missing: install chromium, chromium-driver and tesseract-ocr \
         (OVAIO_SKIP_MISSING_TOOLS=1 skips such tests)"
    );
}

/// A running browser; quits when dropped.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
    log: PathBuf,
    /// Where [`Browser::shot`] saves screenshots: the test's work dir.
    pub shots: PathBuf,
}

impl Browser {
    /// Starts Chromium with a `width × height` window at device scale
    /// `scale`, trusting `s`'s certificate.
    pub fn start(s: &Server, w: &Work, width: u32, height: u32, scale: u32) -> Browser {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let profile = w.mkdir(&format!("chromium-profile-{n}"));
        let log = w.path(&format!("chromedriver-{n}.log"));
        let shots = w.mkdir("screenshots");
        let mut child = Command::new(python())
            .arg("-c")
            .arg(DRIVER)
            .arg(&s.cert)
            .arg(&profile)
            .arg(CHROMIUM)
            .arg(CHROMEDRIVER)
            .arg(&log)
            .arg(scale.to_string())
            .arg(width.to_string())
            .arg(height.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the browser driver");
        let stdin = child.stdin.take().expect("driver stdin");
        let stdout = child.stdout.take().expect("driver stdout");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Browser {
            child,
            stdin,
            answers,
            log,
            shots,
        }
    }

    fn call(&mut self, cmd: Value) -> Value {
        let line = format!("{cmd}\n");
        self.stdin
            .write_all(line.as_bytes())
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("browser driver gone ({e}): {}", self.driver_log()));
        let answer = self.answers.recv_timeout(CALL_LIMIT).unwrap_or_else(|e| {
            panic!(
                "no answer from the browser to {cmd} ({e}): {}",
                self.driver_log()
            )
        });
        let v: Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("driver answer {answer:?} is not JSON: {e}"));
        if v["ok"] != true {
            panic!(
                "browser command {cmd} failed:\n{}\nconsole: {:?}",
                v["error"].as_str().unwrap_or_default(),
                self.console_quiet()
            );
        }
        v["value"].clone()
    }

    fn driver_log(&self) -> String {
        std::fs::read_to_string(&self.log)
            .map(|l| l.lines().rev().take(40).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    fn console_quiet(&mut self) -> Vec<String> {
        let line = format!("{}\n", json!({"op": "console"}));
        if self.stdin.write_all(line.as_bytes()).is_err() {
            return Vec::new();
        }
        let _ = self.stdin.flush();
        self.answers
            .recv_timeout(Duration::from_secs(10))
            .ok()
            .and_then(|a| serde_json::from_str::<Value>(&a).ok())
            .and_then(|v| v["value"].as_array().cloned())
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Loads `url` and waits for it.
    pub fn open(&mut self, url: &str) {
        self.call(json!({"op": "open", "url": url}));
    }

    /// Reloads the page.
    pub fn refresh(&mut self) {
        self.call(json!({"op": "refresh"}));
    }

    /// The value of the JavaScript expression `expr`.
    pub fn js(&mut self, expr: &str) -> Value {
        self.call(json!({"op": "js", "expr": expr}))
    }

    /// Waits (at most `seconds`) until `expr` is truthy; returns its value.
    pub fn wait(&mut self, expr: &str, seconds: u32) -> Value {
        self.call(json!({"op": "wait", "expr": expr, "seconds": seconds}))
    }

    /// Gives the file input `id` the file `path`, as picking it does.
    pub fn pick(&mut self, id: &str, path: &Path) {
        self.call(json!({"op": "pick", "id": id, "path": path.display().to_string()}));
    }

    /// Clicks the element `id`.
    pub fn click(&mut self, id: &str) {
        self.call(json!({"op": "click", "id": id}));
    }

    /// Presses Tab.
    pub fn tab(&mut self) {
        self.call(json!({"op": "tab"}));
    }

    /// Saves a screenshot of the window as `name.png` in [`Browser::shots`]
    /// and returns its path.
    pub fn shot(&mut self, name: &str) -> PathBuf {
        let path = self.shots.join(format!("{name}.png"));
        self.call(json!({"op": "screenshot", "path": path.display().to_string()}));
        path
    }

    /// A screenshot of the element `id` alone, as PNG.
    pub fn element_png(&mut self, id: &str) -> Vec<u8> {
        let v = self.call(json!({"op": "element_png", "id": id}));
        base64_decode(v.as_str().expect("base64 PNG"))
    }

    /// Limits uploads to `bytes_per_second`; -1 lifts the limit.
    pub fn throttle(&mut self, bytes_per_second: i64) {
        self.call(json!({"op": "throttle", "upload": bytes_per_second}));
    }

    /// Emulates a `width × height` screen at device scale `scale`, as a
    /// phone when `mobile`.
    pub fn viewport(&mut self, width: u32, height: u32, scale: u32, mobile: bool) {
        self.call(json!({"op": "viewport", "width": width, "height": height,
            "scale": scale, "mobile": mobile}));
    }

    /// Every request the page made so far: `method`, `url`, `headers`,
    /// `body` (small ones) and the response's `status` (null when none).
    pub fn requests(&mut self) -> Vec<Value> {
        self.call(json!({"op": "requests"}))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Console messages so far (refusals by the content security policy
    /// land here).
    pub fn console(&mut self) -> Vec<String> {
        self.call(json!({"op": "console"}))
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.stdin.write_all(b"{\"op\": \"quit\"}\n");
        let _ = self.stdin.flush();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What tesseract reads in the image at `path`, whitespace runs made one
/// space.
pub fn ocr(path: &Path) -> String {
    let out = Command::new(TESSERACT)
        .arg(path)
        .arg("stdout")
        .args(["-l", "eng", "--psm", "3"])
        .output()
        .unwrap_or_else(|e| panic!("run tesseract: {e}"));
    assert!(
        out.status.success(),
        "tesseract {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` reduced to what OCR reads reliably: lower-case letters, digits
/// and dots, so that `12.0 MiB of 12.0 MiB` matches however the spaces
/// and punctuation came out.
pub fn squash(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Whether the OCR'd `seen` shows `wanted`, compared as [`squash`]ed.
pub fn shows(seen: &str, wanted: &str) -> bool {
    squash(seen).contains(&squash(wanted))
}

/// Sizes as the page writes them (binary units, one decimal), with a
/// plain space.
pub fn size_text(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn base64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
