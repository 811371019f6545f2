// The upload page's script (see src/server/data/page/mod.rs). It speaks
// the data API of its own origin with the ticket of the page's URL:
//
// - an OVA goes up as imageio-style resumable PUTs: HEAD tells the
//   committed offset (Upload-Offset), and one PUT with Content-Range
//   "bytes N-(L-1)/L" sends the rest of the file from there. After a cut
//   connection, a reload or a pause, the next PUT starts again from the
//   offset the server tells, so nothing it has is sent twice;
// - a raw image goes up in blocks of 4 MiB: a block that holds only zeros
//   becomes PATCH {"op": "zero"} (runs of them one PATCH), every other
//   block a ranged PUT, then one PATCH {"op": "flush"}; the blocks the
//   server acknowledged are remembered in localStorage, so a reload goes
//   on after them, and at the end the server's SHA-256 block checksum of
//   the disk is compared with the file's;
// - GET /images/{ticket}/status tells what the server did: its state, each
//   disk's bytes and state, the verdict and the reason of a failure.
//
// Nothing here builds markup from strings: text goes in with textContent.

"use strict";

(function () {
  const kind = document.body.dataset.kind;
  if (kind !== "ova-import" && kind !== "image") {
    return;
  }

  const $ = (id) => document.getElementById(id);
  const parts = location.pathname.split("/");
  const ticket = decodeURIComponent(parts[parts.length - 1] || "");
  const api = "/images/" + encodeURIComponent(ticket);

  const MIB = 1 << 20;
  // Image: bytes per PUT, and the block of the checksum compared at the end.
  const BLOCK = 4 * MIB;
  // Image: the most one PATCH zero asks for.
  const MAX_ZERO_RUN = 1024 * MIB;
  // Image: requests in flight at once.
  const WRITERS = 3;
  // How often the server's status is asked while a transfer runs (ms).
  const POLL_MS = 1000;
  // Attempts in a row that move nothing before the page stops and waits
  // for the Resume button.
  const RETRY_LIMIT = 8;
  const NBSP = "\u00a0";
  const DASH = "\u2014";

  const S = {
    file: null,
    // idle, uploading, retrying, paused, verifying, done, failed
    phase: "idle",
    status: null,
    summary: null,
    // Bytes of the file the server has or is being sent (the bar).
    sent: 0,
    samples: [],
    paused: false,
    stopped: false,
    // Counts starts and stops: work started for an older run gives up.
    run: 0,
    xhrs: new Set(),
    // OVA: the size of each tar entry, by name, when the file is a tar.
    entries: null,
    // Image: which blocks the server acknowledged, and their digests.
    done: null,
    doneBytes: 0,
    zeroBytes: 0,
    inflight: new Map(),
    digests: [],
    next: 0,
    failures: 0,
    verify: false,
    // Image: what stopped a writer, which stops the others.
    halt: null,
    storeKey: null,
    pauseDeadline: null,
    polling: false,
    // [time, bytes] of the first progress since the last start or resume.
    since: null,
    average: null,
  };

  // ---- words and numbers -------------------------------------------------

  // Sizes as the server's page writes them: binary units, one decimal.
  function bytes(n) {
    if (n < 1024) {
      return n + NBSP + "B";
    }
    const units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    let v = n / 1024;
    let u = 0;
    while (v >= 1024 && u < units.length - 1) {
      v /= 1024;
      u += 1;
    }
    return v.toFixed(1) + NBSP + units[u];
  }

  function duration(seconds) {
    if (!Number.isFinite(seconds) || seconds < 0) {
      return DASH;
    }
    const s = Math.ceil(seconds);
    const two = (x) => String(x).padStart(2, "0");
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    return h > 0 ? `${h}:${two(m)}:${two(s % 60)}` : `${m}:${two(s % 60)}`;
  }

  function percent(part, whole) {
    return whole > 0 ? Math.floor((part * 100) / whole) : 0;
  }

  const final = (state) =>
    state === "succeeded" || state === "failed" || state === "cancelled";

  // ---- the page ------------------------------------------------------------

  function show(el, on) {
    el.hidden = !on;
  }

  function element(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) {
      e.textContent = text;
    }
    if (cls) {
      e.className = cls;
    }
    return e;
  }

  function notice(text, bad) {
    const n = $("notice");
    n.textContent = text;
    n.classList.toggle("bad", Boolean(bad));
    show(n, Boolean(text));
  }

  function setPhase(phase, text) {
    S.phase = phase;
    if (text !== undefined) {
      $("phase").textContent = text;
    }
    draw();
  }

  let drawTimer = null;
  // Draws at most ten times a second, whatever the progress events.
  function render() {
    if (drawTimer === null) {
      drawTimer = setTimeout(() => {
        drawTimer = null;
        draw();
      }, 100);
    }
  }

  function sample() {
    const now = performance.now();
    if (S.since === null) {
      // Where the average speed shown at the end counts from.
      S.since = [now, S.sent];
    }
    S.samples.push([now, S.sent]);
    while (S.samples.length > 2 && now - S.samples[0][0] > 5000) {
      S.samples.shift();
    }
  }

  // Bytes a second over the last few seconds; null until there is a second
  // of samples.
  function rate() {
    const s = S.samples;
    if (s.length < 2) {
      return null;
    }
    const [t0, b0] = s[0];
    const [t1, b1] = s[s.length - 1];
    return t1 - t0 < 1000 ? null : ((b1 - b0) * 1000) / (t1 - t0);
  }

  function draw() {
    if (!S.file) {
      return;
    }
    const size = S.file.size;
    const sent = Math.min(S.sent, size);
    const pct = percent(sent, size);
    const moving = S.phase === "uploading";
    $("fill").style.width = (size > 0 ? (sent * 100) / size : 0) + "%";
    const bar = $("bar");
    bar.setAttribute("aria-valuenow", String(pct));
    bar.setAttribute("aria-valuetext", `${bytes(sent)} of ${bytes(size)}`);
    bar.classList.toggle("done", S.phase === "done");
    bar.classList.toggle("failed", S.phase === "failed");
    $("sent").textContent = `${bytes(sent)} of ${bytes(size)} (${pct}${NBSP}%)`;
    const done = S.phase === "done";
    const r = moving ? rate() : done ? S.average : null;
    $("rate").textContent = r === null ? DASH : bytes(Math.round(r)) + "/s";
    $("eta").textContent = done
      ? duration(0)
      : r === null || r <= 0
        ? DASH
        : duration((size - sent) / r);
    show($("pause"), moving || S.phase === "retrying");
    show($("resume"), S.phase === "paused");
    if (S.phase === "paused" && S.pauseDeadline !== null) {
      $("phase").textContent = pausedText();
    }
    drawDisks();
  }

  // ---- the server ------------------------------------------------------------

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // The ticket's status, "gone" for an unknown or expired ticket, or null
  // when the server cannot be reached.
  async function getStatus() {
    let r;
    try {
      r = await fetch(api + "/status", { cache: "no-store" });
    } catch (e) {
      return null;
    }
    if (r.status === 403) {
      return "gone";
    }
    if (!r.ok) {
      return null;
    }
    try {
      return await r.json();
    } catch (e) {
      return null;
    }
  }

  // Asks the status every POLL_MS while a transfer runs.
  async function poll() {
    if (S.polling) {
      return;
    }
    S.polling = true;
    while (!S.stopped && S.phase !== "idle") {
      const st = await getStatus();
      if (S.stopped) {
        break;
      }
      if (st === "gone") {
        ticketGone();
        break;
      }
      if (st) {
        S.status = st;
        if (kind === "ova-import" && final(st.state)) {
          settle();
        }
        draw();
      }
      await sleep(POLL_MS);
    }
    S.polling = false;
  }

  // One request; resolves {status, text}, {status: 0} when no answer came,
  // or {aborted: true} when the page aborted it (a pause). `progress` gets
  // the bytes of the body sent so far.
  function request(method, url, headers, body, progress) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      S.xhrs.add(xhr);
      const end = (v) => {
        S.xhrs.delete(xhr);
        resolve(v);
      };
      xhr.open(method, url);
      for (const [k, v] of Object.entries(headers)) {
        xhr.setRequestHeader(k, v);
      }
      if (progress) {
        xhr.upload.addEventListener("progress", (e) => progress(e.loaded));
      }
      xhr.addEventListener("load", () =>
        end({ status: xhr.status, text: xhr.responseText }),
      );
      xhr.addEventListener("error", () => end({ status: 0, text: "" }));
      xhr.addEventListener("timeout", () => end({ status: 0, text: "" }));
      xhr.addEventListener("abort", () => end({ aborted: true }));
      xhr.send(body);
    });
  }

  // What went wrong with an answer, in words.
  function why(r) {
    const said = (r.text || "").trim();
    if (r.status === 0) {
      return "the connection to the server was lost";
    }
    if (r.status === 409 && !said) {
      return "the server is still letting go of the last connection";
    }
    if (r.status >= 500) {
      return `the server had a problem (${said || "status " + r.status})`;
    }
    return said || `the server answered with status ${r.status}`;
  }

  function retryable(r) {
    return (
      r.status === 0 ||
      r.status === 408 ||
      r.status === 409 ||
      r.status === 416 ||
      r.status === 429 ||
      r.status >= 500
    );
  }

  // Waits before attempt `n` after a failure, saying so; false when the
  // run was stopped meanwhile.
  async function backoff(run, n, reason) {
    const secs = Math.min(8, 0.5 * 2 ** (n - 1));
    S.samples = [];
    setPhase(
      "retrying",
      `The upload was interrupted: ${reason}. Trying again in ${secs} s.`,
    );
    await sleep(secs * 1000);
    return run === S.run && !S.paused;
  }

  // ---- starting, pausing, ending -------------------------------------------

  function pausedText() {
    const at = `Paused at ${bytes(Math.min(S.sent, S.file.size))}.`;
    if (S.pauseDeadline === null) {
      return `${at} Press Resume to go on.`;
    }
    const left = (S.pauseDeadline - Date.now()) / 1000;
    if (left <= 0) {
      return `${at} The server may have given up waiting; press Resume to find out.`;
    }
    return `${at} The server waits ${duration(left)} more for the upload to go on; press Resume before then.`;
  }

  function pause() {
    if (S.stopped) {
      return;
    }
    S.paused = true;
    S.run += 1;
    for (const x of [...S.xhrs]) {
      x.abort();
    }
    S.samples = [];
    const idle = S.status ? S.status.inactivity_timeout : 0;
    S.pauseDeadline = idle > 0 ? Date.now() + idle * 1000 : null;
    setPhase("paused", pausedText());
    $("resume").focus();
  }

  // Stops after attempts that moved nothing; Resume goes on.
  function stall(reason) {
    S.paused = true;
    S.run += 1;
    S.pauseDeadline = null;
    setPhase(
      "paused",
      `The upload stopped: ${reason}. Press Resume to go on from where it stopped.`,
    );
  }

  function resume() {
    if (S.stopped || !S.file) {
      return;
    }
    S.paused = false;
    S.pauseDeadline = null;
    S.since = null;
    S.run += 1;
    S.failures = 0;
    const run = S.run;
    if (kind === "image") {
      imageRun(run);
    } else {
      ovaRun(run);
    }
    $("pause").focus();
  }

  function begin(file) {
    S.file = file;
    S.sent = 0;
    S.samples = [];
    notice("");
    show($("pick"), false);
    show($("transfer"), true);
    $("file-name").textContent = file.name;
    $("file-size").textContent = bytes(file.size);
    S.run += 1;
    S.since = null;
    setPhase("uploading", "Starting.");
    poll();
    return S.run;
  }

  function refuse(text) {
    $("file").value = "";
    notice(text, true);
  }

  // Ends the page's work: the outcome stays on the screen.
  function stop(phase) {
    S.stopped = true;
    S.run += 1;
    for (const x of [...S.xhrs]) {
      x.abort();
    }
    if (S.file && S.since !== null) {
      const secs = (performance.now() - S.since[0]) / 1000;
      S.average = secs > 0 ? (S.file.size - S.since[1]) / secs : null;
    }
    S.phase = phase;
    $("transfer").classList.add("ended");
    show($("pause"), false);
    show($("resume"), false);
    draw();
  }

  function verdict(ok, title, paragraphs, detail) {
    const v = $("verdict");
    v.classList.toggle("ok", ok);
    v.classList.toggle("bad", !ok);
    $("verdict-title").textContent = title;
    const box = $("verdict-text");
    box.replaceChildren();
    for (const p of paragraphs) {
      box.append(element("p", p));
    }
    if (detail) {
      const d = element("details");
      d.append(element("summary", detail.label));
      d.append(element("pre", detail.text));
      box.append(d);
    }
    show(v, true);
  }

  function ticketGone() {
    if (S.stopped) {
      return;
    }
    stop("failed");
    $("phase").textContent = "";
    show($("pick"), false);
    verdict(false, "This upload link no longer works", [
      "The link has expired, or the transfer it was made for was cancelled. " +
        "Nothing more can be uploaded with it.",
      "Ask whoever gave you the link for a new one.",
    ]);
  }

  // ---- remembering the file across reloads -----------------------------------

  async function storeKey() {
    try {
      const d = await crypto.subtle.digest(
        "SHA-256",
        new TextEncoder().encode(ticket),
      );
      return "ovaio-upload-" + hex(d).slice(0, 32);
    } catch (e) {
      return null;
    }
  }

  function recall() {
    try {
      return S.storeKey ? JSON.parse(localStorage.getItem(S.storeKey)) : null;
    } catch (e) {
      return null;
    }
  }

  function remember(extra) {
    if (!S.storeKey || !S.file) {
      return;
    }
    const f = S.file;
    const v = { name: f.name, size: f.size, modified: f.lastModified, ...extra };
    try {
      localStorage.setItem(S.storeKey, JSON.stringify(v));
    } catch (e) {
      // Private windows may have no storage: a reload then starts over.
    }
  }

  function forget() {
    try {
      if (S.storeKey) {
        localStorage.removeItem(S.storeKey);
      }
    } catch (e) {
      // Nothing to forget.
    }
  }

  const sameFile = (saved, f) =>
    saved &&
    saved.name === f.name &&
    saved.size === f.size &&
    saved.modified === f.lastModified;

  // ---- looking at the file ---------------------------------------------------

  function hex(buf) {
    return Array.from(new Uint8Array(buf), (b) =>
      b.toString(16).padStart(2, "0"),
    ).join("");
  }

  function ascii(b, start, len) {
    let s = "";
    for (let i = start; i < start + len && i < b.length; i++) {
      s += String.fromCharCode(b[i]);
    }
    return s;
  }

  // The kind of disk image or archive the first bytes show, if any.
  function contentType(b) {
    if (ascii(b, 0, 4) === "QFI\xfb") return "qcow2 image";
    if (ascii(b, 0, 4) === "KDMV") return "VMDK image";
    if (ascii(b, 0, 21) === "# Disk DescriptorFile") return "VMDK descriptor";
    if (ascii(b, 0, 8) === "conectix") return "VHD image";
    if (ascii(b, 0, 8) === "vhdxfile") return "VHDX image";
    if (ascii(b, 64, 4) === "\x7f\x10\xda\xbe") return "VDI image";
    if (ascii(b, 257, 5) === "ustar") return "tar archive";
    if (b[0] === 0x1f && b[1] === 0x8b) return "gzip file";
    if (ascii(b, 0, 6) === "\xfd7zXZ\x00") return "xz file";
    if (ascii(b, 0, 4) === "\x28\xb5\x2f\xfd") return "zstd file";
    if (ascii(b, 0, 4) === "PK\x03\x04") return "zip archive";
    return null;
  }

  async function head(file) {
    return new Uint8Array(await file.slice(0, 512).arrayBuffer());
  }

  function octal(b, start, len) {
    if (b[start] & 0x80) {
      // GNU base-256.
      let v = b[start] & 0x7f;
      for (let i = start + 1; i < start + len; i++) {
        v = v * 256 + b[i];
      }
      return v;
    }
    const s = ascii(b, start, len).replace(/[\0 ]+$/g, "").trim();
    return s === "" ? 0 : parseInt(s, 8);
  }

  function cstring(b, start, len) {
    const s = ascii(b, start, len);
    const nul = s.indexOf("\0");
    return nul < 0 ? s : s.slice(0, nul);
  }

  // The sizes of an uncompressed tar's regular entries by name (without a
  // directory), read from their headers alone; null for anything else.
  async function tarEntries(file) {
    const entries = new Map();
    let pos = 0;
    let longName = null;
    let pax = {};
    for (let n = 0; n < 10000 && pos + 512 <= file.size; n++) {
      const b = new Uint8Array(await file.slice(pos, pos + 512).arrayBuffer());
      if (b.every((x) => x === 0)) {
        break;
      }
      if (ascii(b, 257, 5) !== "ustar") {
        return null;
      }
      let name = cstring(b, 0, 100);
      const prefix = cstring(b, 345, 155);
      if (prefix) {
        name = prefix + "/" + name;
      }
      let size = octal(b, 124, 12);
      const type = String.fromCharCode(b[156] || 48);
      const data = pos + 512;
      if (type === "L" || type === "x") {
        const text = await file.slice(data, data + Math.min(size, 65536)).text();
        if (type === "L") {
          longName = text.replace(/\0+$/, "");
        } else {
          pax = {};
          for (const line of text.split("\n")) {
            const m = /^\d+ ([^=]+)=(.*)$/.exec(line);
            if (m) {
              pax[m[1]] = m[2];
            }
          }
        }
      } else if (type !== "g") {
        if (pax.path) {
          name = pax.path;
        } else if (longName) {
          name = longName;
        }
        if (pax.size) {
          size = Number(pax.size);
        }
        if (type === "0" || type === "7") {
          entries.set(name.split("/").filter(Boolean).pop() || name, size);
        }
        longName = null;
        pax = {};
      }
      pos = data + Math.ceil(size / 512) * 512;
    }
    return entries;
  }

  // The size in the package of a disk's file: its entry, or its chunks.
  function diskSize(href) {
    if (!S.entries || !href) {
      return null;
    }
    if (S.entries.has(href)) {
      return S.entries.get(href);
    }
    let sum = 0;
    let found = false;
    for (const [name, size] of S.entries) {
      if (name.startsWith(href + ".") && /^\d{9}$/.test(name.slice(href.length + 1))) {
        sum += size;
        found = true;
      }
    }
    return found ? sum : null;
  }

  // ---- disks of an OVA -------------------------------------------------------

  function diskState(d, verified) {
    switch (d.state) {
      case "pending":
        return ["Waiting", ""];
      case "active": {
        const size = diskSize(d.href);
        return [size !== null && d.bytes >= size ? "Received" : "Receiving", ""];
      }
      case "succeeded":
        return [verified ? "Verified" : "Written", "state-ok"];
      case "failed":
        if (d.error) {
          return [
            /digest mismatch/.test(d.error)
              ? "Does not match the manifest"
              : "Failed",
            "state-bad",
          ];
        }
        return ["Not kept", "state-bad"];
      case "cancelled":
        return ["Cancelled", "state-bad"];
      default:
        return [d.state, ""];
    }
  }

  function drawDisks() {
    if (kind !== "ova-import" || !S.status || !Array.isArray(S.status.disks)) {
      return;
    }
    const verified = manifestVerdict() === "verified";
    const rows = $("disk-rows");
    rows.replaceChildren();
    for (const d of S.status.disks) {
      const tr = element("tr");
      tr.append(element("td", d.href || `blank disk ${d.disk_id || ""}`.trim(), "disk"));
      const size = diskSize(d.href);
      const got = element(
        "td",
        size === null ? bytes(d.bytes) : `${bytes(d.bytes)} of ${bytes(size)}`,
        "count",
      );
      if (size !== null && size > 0) {
        const bar = element("div", null, "bar small");
        const fill = element("div", null, "fill");
        fill.style.width = Math.min(100, (d.bytes * 100) / size) + "%";
        bar.append(fill);
        bar.classList.toggle("done", d.state === "succeeded");
        bar.classList.toggle("failed", d.state === "failed");
        got.append(bar);
      }
      tr.append(got);
      const [text, cls] = diskState(d, verified);
      tr.append(element("td", text, cls));
      rows.append(tr);
    }
    show($("disks"), S.status.disks.length > 0);
  }

  function manifestVerdict() {
    if (S.status && S.status.manifest) {
      return S.status.manifest;
    }
    return S.summary && S.summary.manifest ? S.summary.manifest : null;
  }

  // ---- an OVA ---------------------------------------------------------------

  async function startOva(file) {
    if (file.size === 0) {
      return refuse("This file is empty. Choose the .ova file of the virtual machine.");
    }
    const what = contentType(await head(file));
    if (what && / image$| descriptor$/.test(what)) {
      return refuse(
        `This is a ${what}, not an OVA package. Choose the .ova file of the virtual machine.`,
      );
    }
    const st = S.status || {};
    if (st.size != null && file.size > st.size) {
      return refuse(
        `This file is ${bytes(file.size)}, more than this upload allows (${bytes(st.size)}).`,
      );
    }
    const started = (st.offset || 0) > 0;
    if (started && st.length != null && st.length !== st.size && st.length !== file.size) {
      return refuse(
        `This is not the file this upload started with: that one is ${st.length} bytes, ` +
          `this one ${file.size}. Choose the same file again.`,
      );
    }
    try {
      S.entries = await tarEntries(file);
    } catch (e) {
      S.entries = null;
    }
    const run = begin(file);
    remember({});
    ovaRun(run);
  }

  // The committed offset: {offset, length}, {ended: true} once the
  // transfer failed or was cancelled, {gone: true}, or {error} when no
  // answer came.
  async function askOffset() {
    let r;
    try {
      r = await fetch(api, { method: "HEAD", cache: "no-store" });
    } catch (e) {
      return { error: "the server cannot be reached" };
    }
    if (r.status === 403) {
      return { gone: true };
    }
    if (r.status === 409) {
      return { ended: true };
    }
    if (!r.ok) {
      return { error: `the server answered with status ${r.status}` };
    }
    const offset = Number(r.headers.get("Upload-Offset") || "0");
    const length = r.headers.get("Upload-Length");
    return {
      offset: Number.isFinite(offset) ? offset : 0,
      length: length === null ? null : Number(length),
    };
  }

  async function ovaRun(run) {
    const size = S.file.size;
    while (run === S.run && !S.paused && !S.stopped) {
      const at = await askOffset();
      if (run !== S.run) {
        return;
      }
      if (at.gone) {
        return ticketGone();
      }
      if (at.ended) {
        return settle();
      }
      if (at.error) {
        S.failures += 1;
        if (S.failures > RETRY_LIMIT) {
          return stall(at.error);
        }
        if (!(await backoff(run, S.failures, at.error))) {
          return;
        }
        continue;
      }
      const ticketSize = S.status ? S.status.size : null;
      if (at.offset > 0 && at.length !== null && at.length !== size && at.length !== ticketSize) {
        return wrongFile(at.length);
      }
      if (at.offset >= size) {
        // Every byte is there; only the answer was lost.
        setPhase("verifying", checkingText());
        return settle();
      }
      S.sent = at.offset;
      S.samples = [];
      S.since = null;
      setPhase(
        "uploading",
        at.offset > 0
          ? `Uploading. The server already had ${bytes(at.offset)}: the upload goes on from there.`
          : "Uploading.",
      );
      const from = at.offset;
      const r = await request(
        "PUT",
        api,
        {
          "Content-Range": `bytes ${from}-${size - 1}/${size}`,
          "Content-Type": "application/octet-stream",
        },
        S.file.slice(from),
        (loaded) => {
          if (run !== S.run) {
            return;
          }
          S.sent = from + loaded;
          sample();
          if (S.sent >= size && S.phase === "uploading") {
            setPhase("verifying", checkingText());
          }
          render();
        },
      );
      if (run !== S.run || r.aborted) {
        return;
      }
      if (r.status === 200) {
        let answer = null;
        try {
          answer = JSON.parse(r.text);
        } catch (e) {
          answer = null;
        }
        if (answer && answer.state === "paused") {
          continue;
        }
        S.summary = answer;
        return settle();
      }
      if (r.status === 403) {
        return ticketGone();
      }
      if (S.sent > from) {
        S.failures = 0;
      }
      if (retryable(r)) {
        S.failures += 1;
        if (S.failures > RETRY_LIMIT) {
          return stall(why(r));
        }
        if (!(await backoff(run, S.failures, why(r)))) {
          return;
        }
        continue;
      }
      // Refused, or the import failed: the ticket's status says which.
      return settle(why(r));
    }
  }

  // The server has part of another file: back to the file chooser.
  function wrongFile(length) {
    S.run += 1;
    S.file = null;
    S.phase = "idle";
    show($("transfer"), false);
    show($("pick"), true);
    refuse(
      `This is not the file this upload started with: that one is ${length} bytes. ` +
        "Choose the same file again.",
    );
  }

  function checkingText() {
    return "Every byte is sent. The server is finishing the disks and checking them against the package's manifest.";
  }

  // Waits for the outcome of the transfer and shows it; `refusal`, the
  // words of an answer that ended the request, stops the page without an
  // outcome when the transfer goes on (a request the server refused).
  let settling = false;
  async function settle(refusal) {
    if (S.stopped || settling) {
      return;
    }
    settling = true;
    let tries = 0;
    for (;;) {
      const st = await getStatus();
      if (S.stopped) {
        break;
      }
      if (st === "gone") {
        ticketGone();
        break;
      }
      if (st) {
        S.status = st;
        if (final(st.state)) {
          showOutcome(st);
          break;
        }
        if (refusal !== undefined) {
          stall(refusal);
          break;
        }
      } else if (++tries > 60) {
        stall("the server cannot be reached to tell the outcome");
        break;
      }
      await sleep(POLL_MS);
    }
    settling = false;
  }

  // The verdict of an OVA ticket whose transfer ended.
  function showOutcome(st) {
    if (st.state === "succeeded") {
      stop("done");
      if (S.file) {
        S.sent = S.file.size;
      }
      forget();
      $("phase").textContent = "";
      const disks = st.disks ? st.disks.length : 0;
      const n = disks === 1 ? "The disk was" : `All ${disks} disks were`;
      if (manifestVerdict() === "verified") {
        verdict(true, "Verified", [
          `The package arrived whole. ${n} checked against the package's manifest and written.`,
        ]);
      } else {
        verdict(true, "Imported", [
          `The package arrived whole and ${n.toLowerCase()} written. ` +
            "It has no manifest, so there was nothing to check the disks against.",
        ]);
      }
    } else {
      stop("failed");
      forget();
      $("phase").textContent = "";
      if (st.state === "cancelled") {
        verdict(false, "The upload was cancelled", [
          "The link was withdrawn or expired during the upload. Nothing was kept.",
        ]);
      } else {
        failureVerdict(st);
      }
    }
    show($("pick"), false);
    draw();
  }

  function failureVerdict(st) {
    const error = st.error || "no reason was given";
    const culprit = (st.disks || []).find((d) => d.error);
    const kept = "Nothing was kept: the server removed every disk of this upload.";
    let words;
    if (culprit && /digest mismatch/.test(culprit.error)) {
      words = [
        `Disk ${culprit.href} does not match the package's manifest: the package is ` +
          "damaged, or was changed after its manifest was written.",
        kept,
      ];
    } else if (culprit) {
      words = [`Disk ${culprit.href} could not be imported.`, kept];
    } else if (/no client resumed it/.test(error)) {
      words = [
        "The upload stayed paused longer than the server waits, and was given up.",
        kept,
        "A new upload needs a new link.",
      ];
    } else if (/server restarted/.test(error)) {
      words = ["The server restarted during the upload.", kept, "A new upload needs a new link."];
    } else if (/the manifest lists/.test(error)) {
      words = ["The package's manifest names a file the package does not have.", kept];
    } else {
      words = ["The server could not import the package.", kept];
    }
    verdict(false, "The upload failed", words, {
      label: "What the server said",
      text: error,
    });
  }

  // ---- a raw image -------------------------------------------------------------

  const blockStart = (i) => i * BLOCK;
  const blockEnd = (i) => Math.min((i + 1) * BLOCK, S.file.size);

  async function startImage(file) {
    const st = S.status || {};
    if (file.size === 0) {
      return refuse("This file is empty. Choose the disk image.");
    }
    if (st.size != null && file.size > st.size) {
      return refuse(
        `This file is ${bytes(file.size)} (${file.size} bytes), larger than the disk ` +
          `(${bytes(st.size)}, ${st.size} bytes).`,
      );
    }
    const what = contentType(await head(file));
    if (what) {
      return refuse(
        `This is a ${what}, not a raw disk image. This page writes the file's bytes to ` +
          `the disk as they are, so the disk would hold the ${what} instead of what is ` +
          `inside it. Convert it to raw first, for example with ` +
          `"qemu-img convert -O raw ${file.name} disk.raw".`,
      );
    }
    const n = Math.ceil(file.size / BLOCK);
    S.done = new Uint8Array(n);
    S.doneBytes = 0;
    S.zeroBytes = 0;
    S.digests = new Array(n);
    S.verify = st.size === file.size && Boolean(crypto.subtle);
    const saved = recall();
    const run = begin(file);
    let from = 0;
    if (sameFile(saved, file) && saved.prefix > 0) {
      from = Math.min(saved.prefix, file.size);
      for (let i = 0; blockEnd(i) <= from && i < n; i++) {
        S.done[i] = 1;
        S.doneBytes += blockEnd(i) - blockStart(i);
      }
    }
    S.sent = S.doneBytes;
    remember({ prefix: S.doneBytes });
    imageRun(run);
  }

  function prefix() {
    let i = 0;
    while (i < S.done.length && S.done[i]) {
      i += 1;
    }
    return i < S.done.length ? blockStart(i) : S.file.size;
  }

  function claim() {
    while (S.next < S.done.length && S.done[S.next]) {
      S.next += 1;
    }
    if (S.next >= S.done.length) {
      return -1;
    }
    S.next += 1;
    return S.next - 1;
  }

  async function readBlock(i) {
    return S.file.slice(blockStart(i), blockEnd(i)).arrayBuffer();
  }

  function isZero(buf) {
    const words = new Uint32Array(buf, 0, buf.byteLength >> 2);
    for (let i = 0; i < words.length; i++) {
      if (words[i] !== 0) {
        return false;
      }
    }
    const tail = new Uint8Array(buf, words.length << 2);
    return tail.every((b) => b === 0);
  }

  const zeroDigests = new Map();
  async function zeroDigest(len) {
    if (!zeroDigests.has(len)) {
      zeroDigests.set(len, await crypto.subtle.digest("SHA-256", new ArrayBuffer(len)));
    }
    return zeroDigests.get(len);
  }

  async function digest(i, buf, zero) {
    if (!S.verify) {
      return;
    }
    S.digests[i] = zero
      ? await zeroDigest(buf.byteLength)
      : await crypto.subtle.digest("SHA-256", buf);
  }

  function updateSent() {
    let moving = 0;
    for (const v of S.inflight.values()) {
      moving += v;
    }
    S.sent = S.doneBytes + moving;
    sample();
    render();
  }

  let lastSave = 0;
  function markDone(first, last, zero) {
    for (let i = first; i <= last; i++) {
      if (!S.done[i]) {
        S.done[i] = 1;
        const len = blockEnd(i) - blockStart(i);
        S.doneBytes += len;
        if (zero) {
          S.zeroBytes += len;
        }
      }
    }
    S.failures = 0;
    updateSent();
    const now = Date.now();
    if (now - lastSave > 500 || S.doneBytes === S.file.size) {
      lastSave = now;
      remember({ prefix: prefix() });
    }
  }

  // Sends one request until it is answered 200; returns null, or what
  // stops the run: {gone}, {fatal: words}, {stall: words}, {aborted}.
  async function send(run, method, url, headers, body, track) {
    for (;;) {
      const key = {};
      const r = await request(method, url, headers, body, track ? (n) => {
        S.inflight.set(key, n);
        updateSent();
      } : null);
      S.inflight.delete(key);
      if (run !== S.run || r.aborted) {
        return { aborted: true };
      }
      if (r.status === 200) {
        return null;
      }
      if (r.status === 403) {
        return { gone: true };
      }
      if (!retryable(r) || r.status === 416) {
        return { fatal: why(r) };
      }
      S.failures += 1;
      if (S.failures > RETRY_LIMIT) {
        return { stall: why(r) };
      }
      if (!(await backoff(run, S.failures, why(r)))) {
        return { aborted: true };
      }
      setPhase("uploading", "Uploading.");
    }
  }

  async function writer(run) {
    for (;;) {
      if (run !== S.run || S.halt) {
        return { aborted: true };
      }
      const i = claim();
      if (i < 0) {
        return null;
      }
      const buf = await readBlock(i);
      if (run !== S.run) {
        return { aborted: true };
      }
      let data = null;
      if (isZero(buf)) {
        await digest(i, buf, true);
        // The zero blocks that follow, while no other writer took them.
        let last = i;
        while (
          S.next === last + 1 &&
          last + 1 < S.done.length &&
          !S.done[last + 1] &&
          blockEnd(last + 1) - blockStart(i) <= MAX_ZERO_RUN
        ) {
          S.next += 1;
          const b = await readBlock(last + 1);
          if (!isZero(b)) {
            data = [last + 1, b];
            break;
          }
          await digest(last + 1, b, true);
          last += 1;
        }
        const offset = blockStart(i);
        const size = blockEnd(last) - offset;
        const e = await send(
          run,
          "PATCH",
          api,
          { "Content-Type": "application/json" },
          JSON.stringify({ op: "zero", offset, size, flush: false }),
          false,
        );
        if (e) {
          return e;
        }
        markDone(i, last, true);
      } else {
        data = [i, buf];
      }
      if (data) {
        const [j, b] = data;
        await digest(j, b, false);
        const e = await send(
          run,
          "PUT",
          api + "?flush=n",
          {
            "Content-Range": `bytes ${blockStart(j)}-${blockEnd(j) - 1}/*`,
            "Content-Type": "application/octet-stream",
          },
          b,
          true,
        );
        if (e) {
          return e;
        }
        markDone(j, j, false);
      }
    }
  }

  async function imageRun(run) {
    const from = S.doneBytes;
    S.next = 0;
    S.inflight.clear();
    S.samples = [];
    S.since = null;
    setPhase(
      "uploading",
      from > 0
        ? `Uploading. The server already had the first ${bytes(prefix())}: the upload goes on from there.`
        : "Uploading.",
    );
    // The first writer that cannot go on stops the others.
    S.halt = null;
    const writers = [];
    for (let w = 0; w < WRITERS; w++) {
      writers.push(
        writer(run).then((e) => {
          if (e && !e.aborted && !S.halt) {
            S.halt = e;
            for (const x of [...S.xhrs]) {
              x.abort();
            }
          }
          return e;
        }),
      );
    }
    await Promise.all(writers);
    if (run !== S.run) {
      return;
    }
    const end = S.halt;
    S.halt = null;
    if (end && end.gone) {
      return ticketGone();
    }
    if (end && end.fatal) {
      return imageFailed(
        "The server refused the upload.",
        end.fatal,
      );
    }
    if (end && end.stall) {
      return stall(end.stall);
    }
    if (S.done.some((d) => !d)) {
      return;
    }
    setPhase("verifying", "Every byte is sent. The server is writing it to the disk.");
    const e = await send(
      run,
      "PATCH",
      api,
      { "Content-Type": "application/json" },
      JSON.stringify({ op: "flush" }),
      false,
    );
    if (run !== S.run) {
      return;
    }
    if (e && e.gone) {
      return ticketGone();
    }
    if (e && e.fatal) {
      return imageFailed("The server could not write the disk.", e.fatal);
    }
    if (e) {
      return stall(e.stall || "the server did not confirm the write");
    }
    if (!S.verify) {
      return imageWritten(false);
    }
    setPhase("verifying", "Comparing the disk on the server with the file.");
    const mine = await localChecksum(run);
    if (run !== S.run || mine === null) {
      return;
    }
    const theirs = await serverChecksum();
    if (run !== S.run) {
      return;
    }
    if (theirs.gone) {
      return ticketGone();
    }
    if (theirs.error) {
      return imageWritten(false, theirs.error);
    }
    if (theirs.checksum === mine) {
      return imageWritten(true, mine);
    }
    imageFailed(
      "The disk on the server differs from the file: their checksums do not match. " +
        "Upload the file again.",
      `server: ${theirs.checksum}\nfile:   ${mine}`,
    );
  }

  // imageio's block checksum of the file: SHA-256 of each 4 MiB block,
  // then of their digests in order.
  async function localChecksum(run) {
    const n = S.done.length;
    for (let i = 0; i < n; i++) {
      if (!S.digests[i]) {
        // A block sent before a reload: read it again.
        const buf = await readBlock(i);
        if (run !== S.run) {
          return null;
        }
        await digest(i, buf, isZero(buf));
      }
    }
    const all = new Uint8Array(n * 32);
    for (let i = 0; i < n; i++) {
      all.set(new Uint8Array(S.digests[i]), i * 32);
    }
    return hex(await crypto.subtle.digest("SHA-256", all));
  }

  async function serverChecksum() {
    let r;
    try {
      r = await fetch(`${api}/checksum?algorithm=sha256&block_size=${BLOCK}`, {
        cache: "no-store",
      });
    } catch (e) {
      return { error: "the server could not be asked for its checksum" };
    }
    if (r.status === 403) {
      return { gone: true };
    }
    if (!r.ok) {
      return { error: `the server's checksum failed: ${(await r.text()).trim()}` };
    }
    try {
      const v = await r.json();
      return { checksum: v.checksum };
    } catch (e) {
      return { error: "the server's checksum could not be read" };
    }
  }

  function imageSummary() {
    const data = S.file.size - S.zeroBytes;
    return (
      `${bytes(data)} of data were sent; ${bytes(S.zeroBytes)} of zeros were written by ` +
      "the server without being sent."
    );
  }

  function imageWritten(verified, detail) {
    stop("done");
    S.sent = S.file.size;
    forget();
    $("phase").textContent = "";
    if (verified) {
      verdict(
        true,
        "Written and verified",
        [
          "The disk on the server holds exactly this file: its SHA-256 block checksum " +
            "matches the file's.",
          imageSummary(),
        ],
        { label: "Checksum", text: detail },
      );
    } else {
      const why =
        detail ||
        (S.status && S.status.size !== S.file.size
          ? "The disk is larger than the file, so their checksums cannot be compared; " +
            "the rest of the disk is as it was."
          : "This browser cannot compute the checksum to compare.");
      verdict(true, "Written", ["The file was written to the disk.", why, imageSummary()]);
    }
    draw();
  }

  function imageFailed(words, detail) {
    stop("failed");
    $("phase").textContent = "";
    verdict(false, "The upload failed", [words], {
      label: "What the server said",
      text: detail,
    });
    draw();
  }

  // ---- the start -----------------------------------------------------------------

  function pick(file) {
    if (S.file || S.stopped) {
      return;
    }
    notice("");
    if (kind === "image") {
      startImage(file);
    } else {
      startOva(file);
    }
  }

  function wire() {
    const input = $("file");
    input.addEventListener("change", () => {
      if (input.files && input.files[0]) {
        pick(input.files[0]);
      }
    });
    const drop = $("drop");
    for (const type of ["dragenter", "dragover"]) {
      drop.addEventListener(type, (e) => {
        e.preventDefault();
        drop.classList.add("over");
      });
    }
    for (const type of ["dragleave", "drop"]) {
      drop.addEventListener(type, () => drop.classList.remove("over"));
    }
    drop.addEventListener("drop", (e) => {
      const f = e.dataTransfer && e.dataTransfer.files[0];
      if (f) {
        pick(f);
      }
    });
    // A file dropped beside the zone must not make the browser open it.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    $("pause").addEventListener("click", pause);
    $("resume").addEventListener("click", resume);
    setInterval(() => {
      if (S.phase === "uploading") {
        sample();
      }
      if (S.file && !S.stopped) {
        draw();
      }
    }, 1000);
  }

  async function init() {
    wire();
    S.storeKey = await storeKey();
    const st = await getStatus();
    if (st === "gone") {
      return ticketGone();
    }
    if (!st) {
      notice(
        "The server cannot be reached right now. Choose the file anyway: the upload " +
          "starts once it answers.",
        true,
      );
      return;
    }
    S.status = st;
    const saved = recall();
    const name = saved && saved.name ? ` (${saved.name})` : "";
    if (kind === "ova-import") {
      if (final(st.state)) {
        S.phase = "done";
        drawDisks();
        return showOutcome(st);
      }
      if (st.state === "active") {
        notice(
          `The server is receiving an upload to this link right now (${bytes(st.offset || 0)} ` +
            `so far). If it is yours from before a reload, choose the same file${name} ` +
            "again: this page takes over once the server lets the old connection go.",
        );
      } else if ((st.offset || 0) > 0) {
        const whole = st.length ? ` of ${bytes(st.length)}` : "";
        notice(
          `An upload to this link stopped at ${bytes(st.offset)}${whole}. Choose the same ` +
            `file${name} again to go on from there.`,
        );
      }
      drawDisks();
    } else if (saved && saved.prefix > 0) {
      notice(
        `An upload to this link stopped after ${bytes(saved.prefix)}. Choose the same ` +
          `file${name} again to go on from there.`,
      );
    }
  }

  init();
})();
