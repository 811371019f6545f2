//! The upload page (`GET /upload/{ticket}`) in a real headless Chromium,
//! driven step by step as a person would use it: open the link, choose
//! the file, watch it go up, pause or reload, read the verdict.
//!
//! What the page shows is judged from screenshots, not only from the DOM:
//! tesseract reads each one (the numbers, the words of the verdict), and
//! the pixels of the progress bar and of the verdict box are measured.
//! Screenshots of the idle, uploading, finished and failed states are
//! saved in the test's work dir (`screenshots/`); with
//! `OVAIO_SCREENSHOTS=DIR` they are also copied to `DIR`, and with
//! `OVAIO_UPDATE_DOCS=1` the finished page is saved as the README's
//! `docs/upload-page.png`.
//!
//! Uploads are slowed down with Chromium's own network throttling where a
//! test needs to see them in flight.

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::browser::{self, Browser, ocr, shows, size_text, squash};
use support::image::{Fill, Layout, Run, SMALL, Source, assert_same_content, assert_target};
use support::ova::prepare;
use support::png::{Image, hex, near};
use support::resume::{Package, import_ticket, received, three_disks};
use support::server::Server;
use support::{Work, assert_absent, file_len};

const ID: &str = "0c5a9e1f-page-upload";

/// The page's colours (upload.css, light scheme).
const ACCENT: &str = "#0b57d0";
const OK: &str = "#1a7f37";
const BAD: &str = "#b42318";

fn page_url(s: &Server, id: &str) -> String {
    format!("{}/upload/{id}", s.base)
}

/// A browser on the page of `id`, once it has the ticket's status.
fn open(s: &Server, w: &Work, id: &str, rows: usize) -> Browser {
    let mut b = Browser::start(s, w, 1000, 1100, 2);
    b.open(&page_url(s, id));
    b.wait(
        &format!("document.querySelectorAll('#disk-rows tr').length === {rows}"),
        30,
    );
    b
}

/// The progress as the DOM has it: `pct` (the bar's value), `sent` and
/// `phase` texts.
fn progress(b: &mut Browser) -> Value {
    b.js(
        "{pct: Number(document.getElementById('bar').getAttribute('aria-valuenow')), \
          sent: document.getElementById('sent').textContent, \
          phase: document.getElementById('phase').textContent}",
    )
}

fn pct(v: &Value) -> u64 {
    v["pct"].as_u64().expect("percent")
}

/// Waits for the verdict and returns its title.
fn await_verdict(b: &mut Browser) -> String {
    b.wait(
        "!document.getElementById('verdict').hidden && document.getElementById('verdict-title').textContent",
        120,
    )
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

/// The percentage the screenshot text shows after `of TOTAL (`.
fn shown_percent(text: &str, total: &str) -> Option<u64> {
    let keep = |c: &char| c.is_ascii_alphanumeric() || *c == '.' || *c == '%';
    let sq: String = text
        .chars()
        .filter(keep)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let key = squash(&format!("of {total}"));
    let rest = &sq[sq.find(&key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    rest[digits.len()..]
        .starts_with('%')
        .then(|| digits.parse().ok())
        .flatten()
}

/// The share of the middle row of `img` in colour `c`.
fn filled(img: &Image, c: &str) -> f64 {
    let row = img.row(img.height / 2);
    let n = row.iter().filter(|p| near(**p, hex(c), 48)).count();
    n as f64 / img.width as f64
}

/// The colour of the verdict box's left border, in its middle.
fn verdict_colour(b: &mut Browser) -> [u8; 3] {
    let img = Image::decode(&b.element_png("verdict"));
    img.at(1, img.height / 2)
}

/// Saves the screenshot `name` (also in `$OVAIO_SCREENSHOTS`).
fn save(b: &mut Browser, name: &str) -> PathBuf {
    let path = b.shot(name);
    if let Some(dir) = std::env::var_os("OVAIO_SCREENSHOTS") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::copy(&path, dir.join(format!("{name}.png"))).expect("copy the screenshot");
    }
    path
}

/// Saves the screenshot `name` and returns (its path, what OCR reads).
fn look(b: &mut Browser, name: &str) -> (PathBuf, String) {
    let path = save(b, name);
    let text = ocr(&path);
    (path, text)
}

fn assert_shows(text: &str, shot: &Path, wanted: &[&str]) {
    for w in wanted {
        assert!(
            shows(text, w),
            "{} does not show {w:?}; OCR read:\n{text}",
            shot.display()
        );
    }
}

/// Only the server itself was asked for anything, and the policy refused
/// nothing the page tried.
fn assert_self_contained(b: &mut Browser, s: &Server) {
    for r in b.requests() {
        // Network requests only: the browser's own pages (its new tab,
        // chrome://) load their resources too.
        let url = r["url"].as_str().unwrap_or_default();
        let network = ["http:", "https:", "ws:", "wss:"]
            .iter()
            .any(|scheme| url.starts_with(scheme));
        assert!(
            !network || url.starts_with(&format!("{}/", s.base)),
            "the page asked another origin: {r:#}"
        );
    }
    let console = b.console();
    assert!(
        !console
            .iter()
            .any(|m| m.contains("Content Security Policy") || m.contains("Refused to")),
        "{console:#?}"
    );
}

fn assert_imported(s: &Server, p: &Package) {
    let t = s.ticket(ID);
    assert_eq!(t["state"], "succeeded", "{t:#}\n{}", s.log());
    for (d, _, file, format) in &p.disks {
        assert_target(&d.raw, &s.root.join(file), *format, d.capacity);
    }
}

/// The PUTs the page sent, as their `Content-Range`s.
fn put_ranges(b: &mut Browser) -> Vec<String> {
    b.requests()
        .iter()
        .filter(|r| r["method"] == "PUT")
        .map(|r| {
            r["headers"]["Content-Range"]
                .as_str()
                .unwrap_or("(none)")
                .to_owned()
        })
        .collect()
}

#[test]
fn an_ova_uploaded_from_the_page_is_verified() {
    if !browser::require() {
        return;
    }
    let w = Work::new();
    let s = Server::start(&w);
    let p = three_disks(&w, false);
    import_ticket(&s, ID, &p, json!({}));
    let len = file_len(&p.path);
    let total = size_text(len);
    let mut b = open(&s, &w, ID, 3);

    // Before a file is chosen.
    let (shot, text) = look(&mut b, "ova-1-idle");
    assert_shows(
        &text,
        &shot,
        &[
            "Upload a virtual machine",
            "Drop the .ova file here",
            "Choose a file",
            "disk1.vmdk",
            "disk2.qcow2",
            "disk3.img.gz",
            "Waiting",
        ],
    );
    // The keyboard reaches the file chooser first.
    b.tab();
    assert_eq!(b.js("document.activeElement.id"), "file");

    // On its way: slowed down to take some ten seconds.
    b.throttle((len / 10).max(64 << 10) as i64);
    b.pick("file", &p.path);
    b.wait(
        "Number(document.getElementById('bar').getAttribute('aria-valuenow')) >= 20 && \
         document.querySelector('#disk-rows td:nth-child(3)').textContent !== 'Waiting' && \
         document.getElementById('rate').textContent.includes('/s')",
        60,
    );
    // The screenshot and the bar's pixels first, read afterwards: the
    // upload goes on meanwhile.
    let before = progress(&mut b);
    let shot = save(&mut b, "ova-2-uploading");
    let after = progress(&mut b);
    let bar_before = progress(&mut b);
    let bar = Image::decode(&b.element_png("bar"));
    let bar_after = progress(&mut b);
    let text = ocr(&shot);
    assert_shows(
        &text,
        &shot,
        &[
            "Uploading",
            "Pause",
            "Speed",
            "Time left",
            &format!("of {total}"),
            "/s",
            "Receiving",
        ],
    );
    let shown = shown_percent(&text, &total)
        .unwrap_or_else(|| panic!("{}: no percentage in {text}", shot.display()));
    assert!(
        pct(&before) <= shown && shown <= pct(&after),
        "the screenshot shows {shown} %, the page went from {before} to {after}"
    );
    assert!(shown < 100, "{text}");
    let drawn = filled(&bar, ACCENT) * 100.0;
    assert!(
        pct(&bar_before) as f64 - 2.0 <= drawn && drawn <= pct(&bar_after) as f64 + 2.0,
        "the bar is drawn {drawn:.1} % full, the page went from {bar_before} to {bar_after}"
    );

    // Done: the verdict, every disk verified.
    b.throttle(-1);
    assert_eq!(await_verdict(&mut b), "Verified");
    let (shot, text) = look(&mut b, "ova-3-finished");
    assert_shows(
        &text,
        &shot,
        &[
            "Verified",
            "The package arrived whole",
            "All 3 disks were checked against the package's manifest and written",
            &format!("{total} of {total} (100 %)"),
        ],
    );
    // The title and each of the three disks.
    assert!(
        squash(&text).matches("verified").count() >= 4,
        "{}: {text}",
        shot.display()
    );
    assert!(
        near(verdict_colour(&mut b), hex(OK), 48),
        "the verdict is not drawn green"
    );
    let bar = Image::decode(&b.element_png("bar"));
    assert!(filled(&bar, OK) > 0.98, "the bar is not full and green");
    assert_imported(&s, &p);
    assert_eq!(put_ranges(&mut b), [format!("bytes 0-{}/{len}", len - 1)]);
    assert_self_contained(&mut b, &s);

    // On a phone: nothing wider than the screen.
    b.viewport(390, 844, 2, true);
    assert_eq!(
        b.js("document.documentElement.scrollWidth <= window.innerWidth"),
        true
    );
    let (shot, text) = look(&mut b, "ova-4-finished-phone");
    assert_shows(&text, &shot, &["Verified", "All 3 disks were checked"]);

    if std::env::var_os("OVAIO_UPDATE_DOCS").is_some_and(|v| v == "1") {
        let height = b
            .js("document.documentElement.scrollHeight")
            .as_u64()
            .unwrap_or(900);
        b.viewport(900, 900, 1, false);
        let height = b
            .js("document.documentElement.scrollHeight")
            .as_u64()
            .unwrap_or(height);
        b.viewport(900, height as u32, 1, false);
        let shot = b.shot("docs");
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).expect("docs/");
        let docs = docs.join("upload-page.png");
        std::fs::copy(&shot, &docs).expect("write docs/upload-page.png");
    }
}

#[test]
fn pausing_and_reloading_mid_upload_go_on_from_the_server_offset() {
    if !browser::require() {
        return;
    }
    let w = Work::new();
    let s = Server::start(&w);
    let p = three_disks(&w, false);
    import_ticket(&s, ID, &p, json!({}));
    let len = file_len(&p.path);
    let range = |from: u64| format!("bytes {from}-{}/{len}", len - 1);
    let mut b = open(&s, &w, ID, 3);

    b.throttle((len / 10).max(64 << 10) as i64);
    b.pick("file", &p.path);
    b.wait(
        "Number(document.getElementById('bar').getAttribute('aria-valuenow')) >= 15",
        60,
    );

    // Paused: the server keeps what it has, and the page says for how long.
    b.click("pause");
    let t = s.await_ticket(ID, &["active"]);
    assert_eq!(t["state"], "paused", "{t:#}");
    let paused_at = t["offset"].as_u64().expect("offset");
    b.wait(
        "document.getElementById('phase').textContent.startsWith('Paused at') && \
         !document.getElementById('resume').hidden",
        30,
    );
    let (shot, text) = look(&mut b, "resume-1-paused");
    assert_shows(
        &text,
        &shot,
        &[
            "Paused at",
            "The server waits",
            "press Resume before then",
            "Resume",
        ],
    );
    b.click("resume");
    support::poll("a third of the package on the server", || {
        (s.ticket(ID)["offset"].as_u64().unwrap_or(0) >= len / 3).then_some(())
    });
    assert_eq!(put_ranges(&mut b), [range(0), range(paused_at)]);

    // Reloaded: the page, loaded again, says what to do.
    b.refresh();
    let t = s.await_ticket(ID, &["active"]);
    assert_eq!(t["state"], "paused", "{t:#}");
    let offset = t["offset"].as_u64().expect("offset");
    assert!(offset >= len / 3 && offset < len, "{t:#}");
    b.wait("!document.getElementById('notice').hidden", 30);
    let (shot, text) = look(&mut b, "resume-2-reloaded");
    assert_shows(&text, &shot, &["choose the same file", "again"]);
    assert!(
        text.contains("KiB") || text.contains("MiB"),
        "{}: the notice names no size: {text}",
        shot.display()
    );

    // The same file again: the upload goes on where the server stopped.
    b.throttle(-1);
    b.pick("file", &p.path);
    assert_eq!(await_verdict(&mut b), "Verified");
    let (shot, text) = look(&mut b, "resume-3-finished");
    assert_shows(&text, &shot, &["Verified", "The package arrived whole"]);
    assert_imported(&s, &p);
    // After the reload the page sent the rest only, from the offset the
    // server had, and the server received each byte once.
    assert_eq!(put_ranges(&mut b).last(), Some(&range(offset)));
    assert_eq!(received(&s), len, "bytes sent twice");
}

#[test]
fn a_lying_manifest_shows_which_disk_failed() {
    if !browser::require() {
        return;
    }
    let w = Work::new();
    let s = Server::start(&w);
    let p = three_disks(&w, true);
    import_ticket(&s, ID, &p, json!({}));
    let mut b = open(&s, &w, ID, 3);

    b.pick("file", &p.path);
    assert_eq!(await_verdict(&mut b), "The upload failed");
    let (shot, text) = look(&mut b, "lying-1-failed");
    assert_shows(
        &text,
        &shot,
        &[
            "The upload failed",
            "Disk disk2.qcow2 does not match the package's manifest",
            "Nothing was kept",
            // The table's words, as their cells wrap them.
            "Does not match",
            "Not kept",
        ],
    );
    assert!(
        near(verdict_colour(&mut b), hex(BAD), 48),
        "the verdict is not drawn red"
    );
    let states = b.js("Array.from(document.querySelectorAll('#disk-rows tr'), \
         r => r.cells[0].textContent + ': ' + r.cells[2].textContent)");
    assert_eq!(
        states,
        json!([
            "disk1.vmdk: Not kept",
            "disk2.qcow2: Does not match the manifest",
            "disk3.img.gz: Not kept"
        ])
    );
    // The server's own words are one click away.
    let said = b.js("document.querySelector('#verdict pre').textContent");
    let t = s.ticket(ID);
    assert_eq!(t["state"], "failed", "{t:#}");
    assert_eq!(said, t["error"]);
    for (_, _, file, _) in &p.disks {
        assert_absent(&s.root.join(file));
    }
    assert_self_contained(&mut b, &s);
}

#[test]
fn an_expired_link_shows_a_message_instead_of_a_form() {
    if !browser::require() {
        return;
    }
    let w = Work::new();
    let s = Server::start(&w);
    let p = three_disks(&w, false);
    import_ticket(&s, ID, &p, json!({}));
    let e = s.control(
        "PATCH",
        &format!("/tickets/{ID}"),
        Some(&json!({"timeout": 0})),
    );
    assert_eq!(e.status, 200, "{}", e.text());

    let mut b = Browser::start(&s, &w, 1000, 1100, 2);
    b.open(&page_url(&s, ID));
    let (shot, text) = look(&mut b, "expired-1-opened");
    assert_shows(
        &text,
        &shot,
        &[
            "This upload link does not work",
            "The link has expired",
            "Ask whoever gave you the link for a new one",
        ],
    );
    assert_eq!(b.js("document.getElementById('file') === null"), true);

    // A link that stops working while its page is open says so when used.
    import_ticket(&s, "second-link", &p, json!({}));
    b.open(&page_url(&s, "second-link"));
    b.wait(
        "document.querySelectorAll('#disk-rows tr').length === 3",
        30,
    );
    let r = s.control("DELETE", "/tickets/second-link", None);
    assert_eq!(r.status, 204);
    b.pick("file", &p.path);
    assert_eq!(await_verdict(&mut b), "This upload link no longer works");
    let (shot, text) = look(&mut b, "expired-2-used");
    assert_shows(
        &text,
        &shot,
        &[
            "This upload link no longer works",
            "Ask whoever gave you the link",
        ],
    );
}

/// 32 MiB: data in the first five 4 MiB blocks and in the last one,
/// zeros in the two between.
const SPARSE: Layout = Layout {
    size: 32 << 20,
    runs: &[
        Run {
            offset: 0,
            len: 20 << 20,
            fill: Fill::Random(41),
        },
        Run {
            offset: (29 << 20) + 4096,
            len: 500_000,
            fill: Fill::Text,
        },
    ],
};

/// The byte ranges of the `PUT`s in `requests`, as (first, last).
fn put_blocks(requests: &[Value]) -> Vec<(u64, u64)> {
    requests
        .iter()
        .filter(|r| r["method"] == "PUT")
        .filter_map(|r| r["headers"]["Content-Range"].as_str())
        .map(|v| {
            let range = v
                .strip_prefix("bytes ")
                .and_then(|v| v.strip_suffix("/*"))
                .unwrap_or_else(|| panic!("Content-Range {v}"));
            let (a, b) = range.split_once('-').expect("first-last");
            (a.parse().expect("first"), b.parse().expect("last"))
        })
        .collect()
}

#[test]
fn a_raw_image_goes_up_with_its_zeros_as_zero_ranges_and_is_verified() {
    if !browser::require() {
        return;
    }
    const MIB: u64 = 1 << 20;
    let w = Work::new();
    let s = Server::start(&w);
    let src = SPARSE.write_raw(&w.mkdir("src").join("disk.raw"));
    let target = s.root.join("disk.raw");
    std::fs::File::create(&target)
        .and_then(|f| f.set_len(SPARSE.size))
        .expect("create the volume");
    s.add_ticket(&json!({
        "uuid": ID, "size": SPARSE.size, "url": s.file_url("disk.raw"), "ops": ["write"],
        "timeout": 300,
    }));
    let mut b = Browser::start(&s, &w, 1000, 1100, 2);
    b.open(&page_url(&s, ID));
    b.wait("document.body.dataset.kind === 'image'", 30);
    let (shot, text) = look(&mut b, "image-1-idle");
    assert_shows(
        &text,
        &shot,
        &["Upload a disk image", "raw", "32.0 MiB", "Choose a file"],
    );

    // A qcow2 file is refused, in words, before anything is sent.
    let qcow = prepare(&w.mkdir("q"), "q", &SMALL, Source::Qcow2V3);
    b.pick("file", &qcow.file);
    b.wait("!document.getElementById('notice').hidden", 30);
    let (shot, text) = look(&mut b, "image-2-refused");
    assert_shows(
        &text,
        &shot,
        &[
            "This is a qcow2 image, not a raw disk image",
            "qemu-img convert -O raw",
        ],
    );
    assert!(b.requests().iter().all(|r| r["method"] != "PUT"));

    // The raw image, slowed down, reloaded once some blocks are in: the
    // page remembers which the server acknowledged and sends the rest.
    b.throttle(1 << 20);
    b.pick("file", &src);
    let saved = "Object.keys(localStorage).filter(k => k.startsWith('ovaio-upload-')) \
                 .map(k => JSON.parse(localStorage.getItem(k)).prefix)[0] || 0";
    let prefix = b
        .wait(
            &format!("(p => p >= {} && p < {} && p)({saved})", 8 * MIB, 20 * MIB),
            60,
        )
        .as_u64()
        .expect("prefix");
    b.refresh();
    b.wait("!document.getElementById('notice').hidden", 30);
    let notice = b.js("document.getElementById('notice').textContent");
    let kept = b.js(saved).as_u64().expect("prefix after the reload");
    assert!(kept >= prefix, "{notice}");
    assert!(
        notice.as_str().is_some_and(|n| n.contains(&format!(
            "stopped after {}",
            size_text(kept).replace(' ', "\u{a0}")
        ))),
        "{notice}"
    );
    let before = b.requests().len();
    b.throttle(-1);
    b.pick("file", &src);
    assert_eq!(await_verdict(&mut b), "Written and verified");
    let (shot, text) = look(&mut b, "image-3-finished");
    assert_shows(
        &text,
        &shot,
        &[
            "Written and verified",
            "its SHA-256 block checksum matches the file's",
            "of zeros were written by the server without being sent",
            "32.0 MiB of 32.0 MiB (100 %)",
        ],
    );
    assert!(near(verdict_colour(&mut b), hex(OK), 48));
    assert_same_content(&src, &target, "raw");

    // Data blocks went up as PUTs, the zero blocks as PATCH zero, then
    // one flush and the checksum; after the reload nothing below what the
    // server had acknowledged was sent again.
    let requests = b.requests();
    let puts = put_blocks(&requests);
    let blocks: std::collections::BTreeSet<(u64, u64)> = puts.iter().copied().collect();
    let want: std::collections::BTreeSet<(u64, u64)> = [0, 1, 2, 3, 4, 7]
        .iter()
        .map(|i| (i * 4 * MIB, (i + 1) * 4 * MIB - 1))
        .collect();
    assert_eq!(blocks, want, "{puts:?}");
    for (first, _) in put_blocks(&requests[before..]) {
        assert!(
            first >= kept,
            "block at {first} sent again after the reload"
        );
    }
    let patches: Vec<Value> = requests
        .iter()
        .filter(|r| r["method"] == "PATCH")
        .filter_map(|r| r["body"].as_str())
        .map(|b| serde_json::from_str(b).expect("PATCH body"))
        .collect();
    let zeros: Vec<(u64, u64)> = patches
        .iter()
        .filter(|p| p["op"] == "zero")
        .map(|p| {
            (
                p["offset"].as_u64().unwrap_or(0),
                p["size"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(!zeros.is_empty(), "{patches:?}");
    for (offset, size) in &zeros {
        assert!(
            *offset >= 20 * MIB && offset + size <= 28 * MIB,
            "zeroed {size} at {offset}: {patches:?}"
        );
    }
    assert!(
        zeros.iter().map(|z| z.1).sum::<u64>() >= 8 * MIB,
        "{zeros:?}"
    );
    assert_eq!(patches.last().map(|p| &p["op"]), Some(&json!("flush")));
    assert!(
        requests.iter().any(|r| r["url"]
            .as_str()
            .is_some_and(|u| u.contains("/checksum?algorithm=sha256"))),
        "no checksum asked"
    );
    assert_self_contained(&mut b, &s);
}
