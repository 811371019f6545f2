//! The NBD backend against qemu-nbd, with qemu-img as the oracle: the
//! seeded random write/zero/read sequences of the file backends' tests
//! (unaligned, straddling clusters and L2 tables) go through a qemu-nbd
//! export of a qcow2 and of a raw image; every read must match the model
//! all along, and once qemu-nbd has stopped, `qemu-img check` must be
//! clean, `qemu-img compare` must find the model's bytes, and the extents
//! the export gave must be those of `qemu-img map`.
//!
//! qemu-nbd (qemu-utils) is required: a missing one fails these tests.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::proto::*;
use super::*;
use crate::test_support::Rng;
use crate::volume::tests::{
    KIB, MIB, assert_check_clean, assert_same_as, assert_same_extents, assert_well_formed, clip,
    create_qcow2, data_for, data_only, qemu_extents, random_raw, read_all, run_steps_on,
};
use crate::volume::{Format, NetUrl, Volume, open_net};

/// Connects to the NBD export at `url`.
fn open_nbd(url: &NbdUrl, write: bool) -> Result<Volume> {
    open_net(&NetUrl::Nbd(url.clone()), write)
}

/// A qemu-nbd serving one image on a Unix socket, killed when dropped.
pub(crate) struct QemuNbd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl QemuNbd {
    /// Starts `qemu-nbd --format=FORMAT EXTRA… IMAGE` on a fresh socket
    /// and waits until it accepts connections.
    pub(crate) fn start(image: &Path, format: Format, extra: &[&str]) -> QemuNbd {
        let dir = tempfile::tempdir().expect("socket dir");
        let socket = dir.path().join("nbd.sock");
        let child = Command::new("qemu-nbd")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--format={}", format.name()))
            .args(["--persistent", "--cache=writeback", "--discard=unmap"])
            .args(extra)
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("qemu-nbd (qemu-utils) is required for these tests: {e}"));
        let mut q = QemuNbd {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = q.child.try_wait() {
                let mut err = String::new();
                if let Some(e) = q.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("qemu-nbd exited at start ({status}): {err}");
            }
            if UnixStream::connect(&q.socket).is_ok() {
                return q;
            }
            assert!(Instant::now() < deadline, "qemu-nbd did not listen in 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The export's URL.
    pub(crate) fn url(&self) -> NbdUrl {
        NbdUrl::parse(&format!("nbd:unix:{}", self.socket.display())).expect("url")
    }

    /// Stops the server and waits for it, so that qemu-img may open the
    /// image.
    pub(crate) fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn open_rw(url: &NbdUrl) -> Volume {
    open_nbd(url, true).expect("open nbd volume")
}

/// Runs `count` steps of `seed` over the export, checking every read
/// against `model`; returns the open volume.
fn run_steps(url: &NbdUrl, model: &mut [u8], seed: u64, count: u64, cluster: u64) -> Volume {
    run_steps_on(|| open_rw(url), model, seed, count, cluster)
}

/// Steps through qemu-nbd, then qemu's word on the image once it has
/// stopped.
fn oracle(image: &Path, format: Format, mut model: Vec<u8>, seed: u64, count: u64, cluster: u64) {
    let extra: &[&str] = match format {
        Format::Qcow2 => &["--shared=8", "--allocation-depth"],
        Format::Raw => &["--shared=8"],
    };
    let server = QemuNbd::start(image, format, extra);
    let v = run_steps(&server.url(), &mut model, seed, count, cluster);
    assert!(read_all(&v) == model, "seed {seed}: final reads differ");
    v.flush().expect("flush");
    let ours = v.extents(0, v.size()).expect("extents");
    // A raw file's map is the file system's (SEEK_DATA), which reading
    // can change (ext4 counts cached pages over unwritten extents as
    // data): asked at once, beside the running server.
    let raw_map = (format == Format::Raw).then(|| qemu_map_shared(image));
    assert_well_formed(&ours, v.size());
    for e in &ours {
        if e.kind.reads_zero() {
            let r = e.start as usize..e.end() as usize;
            assert!(
                model[r].iter().all(|&b| b == 0),
                "seed {seed}: {e:?} holds data"
            );
        }
    }
    // A window of the map is the map cut to it.
    let (a, b) = (v.size() / 3 + 777, v.size() / 2);
    let part = v.extents(a, b - a).expect("extents window");
    assert_eq!(part, clip_to(&ours, a, b), "seed {seed}: window");
    v.flush().expect("flush");
    drop(v);
    server.stop();
    if format == Format::Qcow2 {
        assert_check_clean(image);
    }
    assert_same_as(&model, image, format, image.parent().expect("dir"));
    let theirs = qemu_extents(image, format);
    match raw_map {
        None => assert_same_extents(&ours, &theirs, seed),
        Some(theirs) => assert_eq!(
            data_only(&ours),
            data_only(&clip(&theirs, model.len() as u64)),
            "seed {seed}: data ranges differ from qemu-img map"
        ),
    }
}

/// `qemu-img map -U` of a raw image a server has open.
fn qemu_map_shared(image: &Path) -> Vec<Extent> {
    let out = crate::volume::tests::qemu_img_ok(&[
        "map",
        "-U",
        "--output=json",
        "-f",
        "raw",
        crate::volume::tests::p(image),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("map json");
    let mut list = Vec::new();
    for e in v.as_array().expect("map list") {
        let (Some(start), Some(len)) = (e["start"].as_u64(), e["length"].as_u64()) else {
            panic!("qemu-img map: {e}");
        };
        let kind = if e["data"].as_bool() == Some(true) {
            ExtentKind::Data
        } else {
            ExtentKind::Hole
        };
        push_extent(&mut list, start, len, kind);
    }
    list
}

/// `list` cut to `[a, b)`.
fn clip_to(list: &[Extent], a: u64, b: u64) -> Vec<Extent> {
    let mut out = Vec::new();
    for e in list {
        let (s, t) = (e.start.max(a), e.end().min(b));
        if t > s {
            push_extent(&mut out, s, t - s, e.kind);
        }
    }
    out
}

#[test]
fn qcow2_behind_qemu_nbd_random_steps() {
    for seed in [101u64, 102] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("v.qcow2");
        let size = 9 * MIB + 1536;
        create_qcow2(&img, size, "cluster_size=4096");
        oracle(
            &img,
            Format::Qcow2,
            vec![0; size as usize],
            seed,
            1500,
            4096,
        );
    }
}

#[test]
fn qcow2_64k_clusters_behind_qemu_nbd_random_steps() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("v.qcow2");
    let size = 40 * MIB;
    create_qcow2(&img, size, "cluster_size=65536");
    oracle(
        &img,
        Format::Qcow2,
        vec![0; size as usize],
        103,
        1000,
        65536,
    );
}

#[test]
fn raw_behind_qemu_nbd_random_steps() {
    for seed in [151u64, 152] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("v.raw");
        let size = 9 * MIB + 1024;
        let model = random_raw(&img, size, seed);
        oracle(&img, Format::Raw, model, seed, 1500, 4096);
    }
}

#[test]
fn multi_conn_makes_a_pool_and_a_single_connection_server_gets_one() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("v.qcow2");
    create_qcow2(&img, 4 * MIB, "cluster_size=65536");
    let server = QemuNbd::start(&img, Format::Qcow2, &["--shared=8"]);
    let v = open_rw(&server.url());
    let Volume::Nbd(n) = &v else {
        panic!("not an NBD volume")
    };
    assert!(n.multi_conn(), "qemu-nbd --shared=8 advertises multi-conn");
    assert_eq!(n.connections(), 1, "further connections only when needed");
    assert!(!n.has_allocation_depth());
    // Concurrent writers on all connections, then one flush.
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let v = &v;
            s.spawn(move || {
                for i in 0..16u64 {
                    let off = (t * 16 + i) * 32 * KIB;
                    v.write_at(off, &data_for(t, off, 32 * KIB)).unwrap();
                }
            });
        }
    });
    v.flush().unwrap();
    let Volume::Nbd(n) = &v else {
        panic!("not an NBD volume")
    };
    assert!(n.connections() > 1, "eight writers made the pool grow");
    let all = read_all(&v);
    for t in 0..8u64 {
        for i in 0..16u64 {
            let off = (t * 16 + i) * 32 * KIB;
            assert!(all[off as usize..(off + 32 * KIB) as usize] == data_for(t, off, 32 * KIB)[..]);
        }
    }
    drop(v);
    server.stop();

    let server = QemuNbd::start(&img, Format::Qcow2, &["--shared=1"]);
    let v = open_nbd(&server.url(), false).unwrap();
    let Volume::Nbd(n) = &v else {
        panic!("not an NBD volume")
    };
    if !n.multi_conn() {
        assert_eq!(n.connections(), 1);
    }
    let mut b = vec![0u8; 100];
    v.read_at(32 * KIB - 50, &mut b).unwrap();
    assert_eq!(b[..50], data_for(0, 32 * KIB - 50, 50)[..]);
    let e = v.write_at(0, b"x").unwrap_err();
    assert!(e.to_string().contains("reading only"), "{e}");
}

#[test]
fn a_read_only_export_is_refused_for_writing() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("v.raw");
    std::fs::write(&img, vec![5u8; 1 << 20]).unwrap();
    let server = QemuNbd::start(&img, Format::Raw, &["--read-only", "--shared=2"]);
    let url = server.url();
    let e = open_nbd(&url, true).unwrap_err();
    let msg = e.one_line();
    assert!(
        msg.contains("read-only") && msg.contains(&url.to_string()),
        "{msg}"
    );
    let v = open_nbd(&url, false).unwrap();
    let mut b = [0u8; 3];
    v.read_at((1 << 20) - 3, &mut b).unwrap();
    assert_eq!(b, [5; 3]);
    assert!(v.read_at((1 << 20) - 2, &mut b).is_err());
}

#[test]
fn a_named_export_and_errors_that_name_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("v.raw");
    std::fs::write(&img, vec![9u8; 65536]).unwrap();
    let server = QemuNbd::start(&img, Format::Raw, &["--export-name=disk1", "--shared=4"]);
    let good = NbdUrl::parse(&format!("{}:exportname=disk1", server.url())).unwrap();
    let v = open_nbd(&good, false).unwrap();
    assert_eq!(v.size(), 65536);
    drop(v);
    let bad = NbdUrl::parse(&format!("{}:exportname=nope", server.url())).unwrap();
    let e = open_nbd(&bad, false).unwrap_err().one_line();
    assert!(
        e.contains("exportname=nope") && e.contains("NBD_OPT_GO"),
        "{e}"
    );
    let missing = NbdUrl::parse(&format!(
        "nbd:unix:{}",
        dir.path().join("no.sock").display()
    ))
    .unwrap();
    let e = open_nbd(&missing, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.one_line().contains("no.sock"), "{}", e.one_line());
}

/// A fake server on a Unix socket that answers the handshake with
/// `script` and then closes.
fn fake_server(script: Vec<u8>) -> (tempfile::TempDir, NbdUrl, std::thread::JoinHandle<()>) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fake.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let h = std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.write_all(&script);
            let mut sink = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
    let url = NbdUrl::parse(&format!("nbd:unix:{}", sock.display())).unwrap();
    (dir, url, h)
}

fn greeting() -> Vec<u8> {
    let mut g = NBDMAGIC.to_be_bytes().to_vec();
    g.extend_from_slice(&IHAVEOPT.to_be_bytes());
    g.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

fn opt_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut r = OPT_REPLY_MAGIC.to_be_bytes().to_vec();
    r.extend_from_slice(&option.to_be_bytes());
    r.extend_from_slice(&reply.to_be_bytes());
    r.extend_from_slice(&(data.len() as u32).to_be_bytes());
    r.extend_from_slice(data);
    r
}

/// A handshake without structured replies or meta contexts, exporting
/// `size` bytes with `flags`.
fn plain_handshake(size: u64, flags: u16) -> Vec<u8> {
    let mut s = greeting();
    s.extend(opt_reply(OPT_STRUCTURED_REPLY, REP_FLAG_ERROR | 1, b""));
    let mut info = INFO_EXPORT.to_be_bytes().to_vec();
    info.extend_from_slice(&size.to_be_bytes());
    info.extend_from_slice(&flags.to_be_bytes());
    s.extend(opt_reply(OPT_GO, REP_INFO, &info));
    s.extend(opt_reply(OPT_GO, REP_ACK, b""));
    s
}

#[test]
fn bad_servers_give_errors_not_panics() {
    // Garbage instead of a greeting.
    let (_d, url, h) = fake_server(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec());
    let e = open_nbd(&url, false).unwrap_err().one_line();
    assert!(
        e.contains("NBDMAGIC") && e.contains(&url.to_string()),
        "{e}"
    );
    h.join().unwrap();

    // An option reply larger than the cap.
    let mut s = greeting();
    let mut r = OPT_REPLY_MAGIC.to_be_bytes().to_vec();
    r.extend_from_slice(&OPT_STRUCTURED_REPLY.to_be_bytes());
    r.extend_from_slice(&REP_ACK.to_be_bytes());
    r.extend_from_slice(&u32::MAX.to_be_bytes());
    s.extend(r);
    let (_d, url, h) = fake_server(s);
    let e = open_nbd(&url, false).unwrap_err().one_line();
    assert!(e.contains("larger than the limit"), "{e}");
    h.join().unwrap();

    // A simple reply with another cookie to the first read.
    let mut s = plain_handshake(4096, TF_HAS_FLAGS | TF_SEND_FLUSH);
    s.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    s.extend_from_slice(&0u32.to_be_bytes());
    s.extend_from_slice(&99u64.to_be_bytes());
    let (_d, url, h) = fake_server(s);
    let v = open_nbd(&url, false).unwrap();
    let mut b = [0u8; 512];
    let e = v.read_at(512, &mut b).unwrap_err().one_line();
    assert!(
        e.contains("read of 512 bytes at offset 512") && e.contains("request 99"),
        "{e}"
    );
    // Without structured replies there is no map: all data.
    drop(v);
    h.join().unwrap();

    // A server error on a write is reported with its errno; the
    // connection stays usable.
    let mut s = plain_handshake(4096, TF_HAS_FLAGS);
    for (cookie, err) in [(1u64, 28u32), (2, 0)] {
        s.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        s.extend_from_slice(&err.to_be_bytes());
        s.extend_from_slice(&cookie.to_be_bytes());
    }
    let (_d, url, h) = fake_server(s);
    let v = open_nbd(&url, true).unwrap();
    let e = v.write_at(0, b"abc").unwrap_err().one_line();
    assert!(
        e.contains("ENOSPC") && e.contains("write of 3 bytes at offset 0"),
        "{e}"
    );
    v.write_at(0, b"abc").unwrap();
    assert_eq!(
        v.extents(0, 4096).unwrap(),
        vec![Extent {
            start: 0,
            len: 4096,
            kind: ExtentKind::Data
        }]
    );
    drop(v);
    h.join().unwrap();
}

#[test]
fn status_of_both_contexts_is_merged() {
    let st = Status {
        base: vec![
            (4096, 0),
            (8192, STATE_HOLE | STATE_ZERO),
            (4096, STATE_ZERO),
        ],
        depth: Some(vec![(8192, 1), (4096, 0), (2048, 1)]),
    };
    let mut out = Vec::new();
    let reached = merge_status(&mut out, 0, 1 << 20, &st);
    // Depth ends first, at 14336.
    assert_eq!(reached, 14336);
    let e = |start, len, kind| Extent { start, len, kind };
    assert_eq!(
        out,
        vec![
            e(0, 4096, ExtentKind::Data),
            e(4096, 4096, ExtentKind::Zero),
            e(8192, 4096, ExtentKind::Hole),
            e(12288, 2048, ExtentKind::Zero),
        ]
    );
    let only_base = Status {
        base: vec![
            (100, STATE_HOLE | STATE_ZERO),
            (100, STATE_ZERO),
            (100, STATE_HOLE),
        ],
        depth: None,
    };
    let mut out = Vec::new();
    assert_eq!(merge_status(&mut out, 0, 250, &only_base), 250);
    assert_eq!(
        out,
        vec![
            e(0, 100, ExtentKind::Hole),
            e(100, 100, ExtentKind::Zero),
            e(200, 50, ExtentKind::Data)
        ]
    );
}

/// The fuzz seed: a whole session with structured replies (data and
/// hole chunks, block status of both contexts, an error chunk).
const SEED: &[u8] = include_bytes!("../../../fuzz/seeds/nbd_client/session");

#[test]
fn the_fuzz_seed_is_a_session_the_client_follows_to_its_end() {
    // The seed's replies, one by one, as the fuzz entry asks for them.
    struct Fake<'a>(&'a [u8]);
    impl Read for Fake<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Fake<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Connection::handshake(Fake(SEED), "").unwrap();
    assert_eq!(c.info().size, 65536);
    assert_eq!((c.info().base_ctx, c.info().depth_ctx), (Some(1), Some(2)));
    let mut buf = vec![1u8; 65536];
    c.read(0, &mut buf).unwrap();
    assert!(buf[..32768].iter().all(|&b| b == 0x5a) && buf[32768..].iter().all(|&b| b == 0));
    let st = c.block_status(0, 65536).unwrap();
    let mut out = Vec::new();
    assert_eq!(merge_status(&mut out, 0, 65536, &st), 65536);
    assert_eq!(out[1].kind, ExtentKind::Zero);
    c.write(0, b"abc").unwrap();
    c.write_zeroes(0, 4096, false).unwrap();
    let e = c.trim(0, 4096).unwrap_err();
    assert!(e.to_string().contains("EIO") && !c.is_broken(), "{e}");
    c.flush().unwrap();
    for cut in (0..SEED.len()).step_by(61) {
        fuzz_entry(&SEED[..cut]);
    }
}

#[test]
fn fuzz_entry_survives_truncations_of_a_real_session() {
    // A well-formed handshake and replies, then every prefix of it.
    let mut s = plain_handshake(65536, TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_WRITE_ZEROES);
    s.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    s.extend_from_slice(&0u32.to_be_bytes());
    s.extend_from_slice(&1u64.to_be_bytes());
    s.extend(vec![7u8; 65536]);
    for cut in (0..s.len()).step_by(97).chain([s.len()]) {
        fuzz_entry(&s[..cut]);
    }
    let mut rng = Rng(7);
    for _ in 0..200 {
        let mut t = s[..200.min(s.len())].to_vec();
        let i = rng.below(t.len() as u64) as usize;
        t[i] ^= 1 << rng.below(8);
        fuzz_entry(&t);
    }
}
