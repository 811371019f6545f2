use std::time::SystemTime;

use super::super::clock::ManualClock;
use super::super::model::{OvaDisk, OvaSpec};
use super::*;
use crate::ErrorKind;

const ID: &str = "5a1d3c7e-1f0b-4b8e-8a57-2d6c0e4f9a13";
const T0: u64 = 1_700_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    clock: Arc<ManualClock>,
    store: TicketStore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let root = std::fs::canonicalize(&root).unwrap();
    std::fs::write(root.join("vol.raw"), b"").unwrap();
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0),
    ));
    let roots = AllowedRoots::new(std::slice::from_ref(&root)).unwrap();
    let store = TicketStore::with_clock(roots, clock.clone());
    Fixture {
        _dir: dir,
        root,
        clock,
        store,
    }
}

impl Fixture {
    fn url(&self, name: &str) -> String {
        format!("file://{}", self.root.join(name).display())
    }

    fn image(&self, ops: &[Op]) -> TicketRequest {
        TicketRequest {
            uuid: ID.into(),
            size: Some(1 << 30),
            url: Some(self.url("vol.raw")),
            ops: ops.to_vec(),
            timeout: 300,
            inactivity_timeout: Some(60),
            sparse: None,
            format: None,
            dirty: None,
            transfer_id: Some("tr-1".into()),
            filename: None,
            kind: TicketKind::Image,
            ova: None,
        }
    }

    fn ova_import(&self) -> TicketRequest {
        TicketRequest {
            url: None,
            size: None,
            kind: TicketKind::OvaImport,
            ova: Some(OvaSpec {
                disks: vec![
                    OvaDisk {
                        href: "d1.vmdk".into(),
                        disk_id: None,
                        url: self.url("new1.qcow2"),
                        format: Some("qcow2".into()),
                    },
                    OvaDisk {
                        href: "d2.vmdk".into(),
                        disk_id: None,
                        url: self.url("new2.raw"),
                        format: None,
                    },
                ],
                ovf: None,
                name: None,
                vm: None,
                manifest: None,
                disk_format: None,
                compress: None,
            }),
            ..self.image(&[Op::Write])
        }
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    fn visible(&self) -> bool {
        match self.store.get_status(ID) {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => panic!("{e}"),
        }
    }

    /// An `ova-export` ticket reading the existing `vol.raw`.
    fn ova_export(&self) -> TicketRequest {
        TicketRequest {
            kind: TicketKind::OvaExport,
            ops: vec![Op::Read],
            ova: Some(OvaSpec {
                disks: vec![OvaDisk {
                    href: "vol.qcow2".into(),
                    disk_id: None,
                    url: self.url("vol.raw"),
                    format: None,
                }],
                ovf: None,
                name: Some("vm".into()),
                vm: None,
                manifest: None,
                disk_format: None,
                compress: None,
            }),
            ..self.ova_import()
        }
    }

    /// Adds `req` under `id` (its `uuid` set to match).
    fn add_as(&self, id: &str, mut req: TicketRequest) {
        req.uuid = id.into();
        self.store.add(id, req).unwrap();
    }

    /// The ids `list` returns, in its order.
    fn listed(&self) -> Vec<String> {
        self.store
            .list()
            .into_iter()
            .map(|s| s.ticket.uuid)
            .collect()
    }
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<TicketStore>();
    check::<TicketHandle>();
}

#[test]
fn status_shows_ticket_and_live_fields() {
    let f = fixture();
    f.store.add(ID, f.image(&[Op::Read])).unwrap();
    f.advance(10);
    let s = f.store.get_status(ID).unwrap();
    assert_eq!(s.ticket.uuid, ID);
    assert_eq!(s.ticket.url, Some(f.url("vol.raw")));
    assert_eq!(s.expires, T0 + 300);
    assert_eq!(s.idle_time, 10);
    assert!(!s.active);
    assert_eq!(s.connections, 0);
    assert_eq!(s.state, TransferState::Pending);
    assert_eq!(s.transferred, 0);

    let h = f.store.authorize(ID, Op::Read).unwrap();
    assert_eq!(h.path(), Some(f.root.join("vol.raw").as_path()));
    assert_eq!(h.size(), Some(1 << 30));
    // Authorized is not started: a request refused now changes nothing.
    assert_eq!(
        f.store.get_status(ID).unwrap().state,
        TransferState::Pending
    );
    h.begin().unwrap();
    h.add_transferred(4096);
    let s = f.store.get_status(ID).unwrap();
    assert!(s.active);
    assert_eq!(s.connections, 1);
    assert_eq!(s.idle_time, 0);
    assert_eq!(s.transferred, 4096);
    assert_eq!(s.state, TransferState::Active);
    // Activity moved the expiry.
    assert_eq!(s.expires, T0 + 10 + 300);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["uuid"], ID);
    assert_eq!(json["active"], true);
}

#[test]
fn default_inactivity_timeout_is_filled_in() {
    let f = fixture();
    let mut req = f.image(&[Op::Read]);
    req.inactivity_timeout = None;
    f.store.add(ID, req).unwrap();
    let s = f.store.get_status(ID).unwrap();
    assert_eq!(
        s.ticket.inactivity_timeout,
        Some(DEFAULT_INACTIVITY_TIMEOUT)
    );
}

#[test]
fn validation_errors_reach_the_caller() {
    let f = fixture();
    let e = f.store.add("other", f.image(&[Op::Read])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("does not match"), "{e}");

    let e = f.store.add(ID, f.image(&[])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);

    let mut req = f.image(&[Op::Read]);
    req.url = Some("file://vol.raw".into());
    assert_eq!(
        f.store.add(ID, req).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );

    let mut req = f.ova_import();
    req.ova = None;
    let e = f.store.add(ID, req).unwrap_err();
    assert!(e.to_string().contains("'ova'"), "{e}");
    assert!(!f.visible());
}

#[test]
fn path_outside_roots_is_refused_by_name() {
    let f = fixture();
    let outside = f.root.parent().unwrap().join("secret.raw");
    std::fs::write(&outside, b"").unwrap();
    let mut req = f.image(&[Op::Read]);
    req.url = Some(format!("file://{}", outside.display()));
    let e = f.store.add(ID, req).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.one_line().contains(&outside.display().to_string()), "{e}");

    // `..` cannot climb out either.
    let mut req = f.image(&[Op::Read]);
    req.url = Some(f.url("../secret.raw"));
    assert!(f.store.add(ID, req).is_err());

    // A new target is judged by its directory.
    let mut req = f.ova_import();
    req.ova.as_mut().unwrap().disks[1].url = f.url("../new.raw");
    let e = f.store.add(ID, req).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(!f.visible());
}

#[test]
fn missing_sources_and_directories_are_refused() {
    let f = fixture();
    let mut req = f.image(&[Op::Read]);
    req.url = Some(f.url("missing.raw"));
    let e = f.store.add(ID, req).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);

    // A write target may be new.
    let mut req = f.image(&[Op::Write]);
    req.url = Some(f.url("new.raw"));
    f.store.add(ID, req).unwrap();

    let mut req = f.image(&[Op::Write]);
    req.url = Some(format!("file://{}", f.root.display()));
    let e = f.store.add(ID, req).unwrap_err();
    assert!(e.to_string().contains("is a directory"), "{e}");

    let mut req = f.ova_import();
    req.kind = TicketKind::OvaExport;
    req.ops = vec![Op::Read];
    let e = f.store.add(ID, req).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[test]
fn ova_import_resolves_new_targets() {
    let f = fixture();
    f.store.add(ID, f.ova_import()).unwrap();
    let h = f.store.authorize(ID, Op::Write).unwrap();
    assert_eq!(h.kind(), TicketKind::OvaImport);
    let ova = h.ova().unwrap();
    assert_eq!(ova.disks[0].href, "d1.vmdk");
    assert_eq!(ova.disks[0].path, f.root.join("new1.qcow2"));
    assert_eq!(ova.disks[0].format.as_deref(), Some("qcow2"));
    assert_eq!(ova.disks[1].path, f.root.join("new2.raw"));

    h.set_disk_progress("d1.vmdk", 1 << 20, TransferState::Active);
    let s = f.store.get_status(ID).unwrap();
    assert_eq!(s.disks.len(), 2);
    assert_eq!(s.disks[0].bytes, 1 << 20);
    assert_eq!(s.disks[0].state, TransferState::Active);
    assert_eq!(s.disks[1].state, TransferState::Pending);

    h.fail("entry 'd2.vmdk' at byte 512: bad magic");
    let s = f.store.get_status(ID).unwrap();
    assert_eq!(s.state, TransferState::Failed);
    assert_eq!(
        s.error.as_deref(),
        Some("entry 'd2.vmdk' at byte 512: bad magic")
    );

    // Two disks may not share a target.
    let mut req = f.ova_import();
    let o = req.ova.as_mut().unwrap();
    o.disks[1].url = o.disks[0].url.clone();
    let e = f.store.add(ID, req).unwrap_err();
    assert!(e.to_string().contains("another disk"), "{e}");
}

#[test]
fn an_ended_import_refuses_to_begin_and_keeps_its_outcome() {
    let f = fixture();
    f.store.add(ID, f.ova_import()).unwrap();
    let h = f.store.authorize(ID, Op::Write).unwrap();
    h.begin().unwrap();
    assert_eq!(h.state(), TransferState::Active);
    h.succeed();
    drop(h);

    let again = f.store.authorize(ID, Op::Write).unwrap();
    let e = again.begin().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains("succeeded"), "{e}");
    let s = f.store.get_status(ID).unwrap();
    assert_eq!(s.state, TransferState::Succeeded);
    assert_eq!(s.error, None);

    // The same ticket put again (a retried request) keeps the outcome.
    f.store.add(ID, f.ova_import()).unwrap();
    let s = f.store.get_status(ID).unwrap();
    assert_eq!(s.state, TransferState::Succeeded);

    let mut other = f.ova_import();
    other.transfer_id = Some("tr-2".into());
    f.store.add(ID, other).unwrap();
    let h = f.store.authorize(ID, Op::Write).unwrap();
    h.begin().unwrap();
    h.fail("entry 'd1.vmdk': bad magic");
    let e = h.begin().unwrap_err();
    assert!(e.to_string().contains("failed"), "{e}");
    let s = f.store.get_status(ID).unwrap();
    assert_eq!(s.state, TransferState::Failed);
    assert_eq!(s.error.as_deref(), Some("entry 'd1.vmdk': bad magic"));

    // A repeated request on an image ticket keeps the earlier outcome.
    f.store.add(ID, f.image(&[Op::Read])).unwrap();
    let h = f.store.authorize(ID, Op::Read).unwrap();
    h.begin().unwrap();
    h.succeed();
    h.begin().unwrap();
    assert_eq!(h.state(), TransferState::Succeeded);
}

#[test]
fn held_idle_clocks_do_not_expire_tickets() {
    let f = fixture();
    let mut long = f.image(&[Op::Read]);
    long.timeout = 1000;
    let short = f.image(&[Op::Read]);
    let clock = f.clock.clone();
    let store = Arc::new(f.store);
    store.add(ID, long).unwrap();
    let visible = || store.get_status(ID).is_ok();
    let advance = |s| clock.advance(Duration::from_secs(s));

    advance(30);
    let hold = store.hold_idle_clocks();
    let second = store.hold_idle_clocks();
    advance(100);
    assert!(visible(), "expired while the clocks were held");
    drop(hold);
    advance(100);
    assert!(visible(), "one hold still stands");
    drop(second);
    // The idle period starts afresh at the release.
    advance(59);
    assert!(visible());
    advance(1);
    assert!(!visible());

    // The absolute timeout runs regardless.
    store.add(ID, short).unwrap();
    let _hold = store.hold_idle_clocks();
    advance(299);
    assert!(visible());
    advance(1);
    assert!(!visible());
}

#[test]
fn tickets_expire_and_extend() {
    let f = fixture();
    let mut req = f.image(&[Op::Read]);
    req.inactivity_timeout = Some(0);
    f.store.add(ID, req).unwrap();
    f.advance(299);
    assert!(f.visible());
    f.advance(1);
    assert!(!f.visible());
    let e = f.store.authorize(ID, Op::Read).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert_eq!(
        f.store.extend(ID, 300).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    let mut req = f.image(&[Op::Read]);
    req.inactivity_timeout = Some(0);
    f.store.add(ID, req).unwrap();
    f.advance(200);
    f.store.extend(ID, 300).unwrap();
    assert_eq!(f.store.get_status(ID).unwrap().expires, T0 + 300 + 500);
    f.advance(299);
    assert!(f.visible());
    f.advance(1);
    assert!(!f.visible());

    f.store.add(ID, f.image(&[Op::Read])).unwrap();
    f.store.extend(ID, 0).unwrap();
    assert!(!f.visible());
    assert!(matches!(
        f.store
            .extend(ID, MAX_TICKET_TIMEOUT + 1)
            .map_err(|e| e.kind()),
        Err(ErrorKind::LimitExceeded)
    ));
}

#[test]
fn peeking_is_neither_a_connection_nor_activity() {
    let f = fixture();
    f.store.add(ID, f.image(&[Op::Read])).unwrap();
    f.advance(30);
    let h = f.store.peek(ID).unwrap();
    assert_eq!(h.status().connections, 0);
    assert_eq!(h.status().idle_time, 30);
    drop(h);
    f.advance(29);
    // Still counted from the ticket's start: the look was no activity.
    assert_eq!(f.store.peek(ID).unwrap().status().idle_time, 59);
    f.advance(1);
    let e = f.store.peek(ID).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert_eq!(
        f.store.peek("nope").unwrap_err().to_string(),
        "no such ticket"
    );
}

#[test]
fn idle_tickets_expire_unless_connected() {
    let f = fixture();
    f.store.add(ID, f.image(&[Op::Read])).unwrap();
    f.advance(59);
    assert!(f.visible());
    f.advance(1);
    assert!(!f.visible());

    f.store.add(ID, f.image(&[Op::Read])).unwrap();
    let h = f.store.authorize(ID, Op::Read).unwrap();
    f.advance(100);
    h.touch();
    f.advance(100);
    let s = f.store.get_status(ID).unwrap();
    assert_eq!(s.idle_time, 0);
    drop(h);
    // Dropping the handle is activity: a fresh idle period starts.
    f.advance(59);
    assert_eq!(f.store.get_status(ID).unwrap().idle_time, 59);
    f.advance(1);
    assert!(!f.visible());

    // The outcome of a finished transfer outlives the idle limit.
    f.store.add(ID, f.ova_import()).unwrap();
    f.store.authorize(ID, Op::Write).unwrap().succeed();
    f.advance(299);
    assert_eq!(
        f.store.get_status(ID).unwrap().state,
        TransferState::Succeeded
    );
    f.advance(1);
    assert!(!f.visible());
}

#[test]
fn a_paused_upload_is_timed_by_its_watcher_not_by_idle_expiry() {
    let f = fixture();
    f.store.add(ID, f.ova_import()).unwrap();
    let h = f.store.authorize(ID, Op::Write).unwrap();
    h.begin().unwrap();
    // What a session keeps: not a connection.
    let d = h.detached();
    assert!(d.same_ticket(&h));
    h.set_upload(4096, Some(10_000));
    h.pause();
    drop(h);
    let s = f.store.get_status(ID).unwrap();
    assert_eq!(s.state, TransferState::Paused);
    assert_eq!((s.offset, s.length), (Some(4096), Some(10_000)));
    assert_eq!(s.connections, 0);
    assert!(!s.active);
    // Past the idle limit (60 s) it stays; the ticket's timeout still
    // ends it, cancelling the transfer the detached handle sees.
    f.advance(120);
    assert!(f.visible());
    f.advance(180);
    f.store.purge();
    assert!(!f.visible());
    assert!(d.is_cancelled());
    assert_eq!(d.cancel_cause(), Some(CancelCause::Expired));
    drop(d);

    // A paused transfer resumes to active; a final one does not pause.
    f.store.add(ID, f.ova_import()).unwrap();
    let h = f.store.authorize(ID, Op::Write).unwrap();
    h.begin().unwrap();
    h.pause();
    h.begin().unwrap();
    assert_eq!(h.state(), TransferState::Active);
    h.fail("x");
    h.pause();
    assert_eq!(h.state(), TransferState::Failed);
}

#[test]
fn expiry_while_connected_cancels_the_transfer() {
    let f = fixture();
    f.store.add(ID, f.image(&[Op::Read])).unwrap();
    let h = f.store.authorize(ID, Op::Read).unwrap();
    f.advance(300);
    assert!(!f.visible());
    assert!(h.is_cancelled());
    assert_eq!(
        h.progress().check_cancelled().unwrap_err().kind(),
        ErrorKind::Cancelled
    );
}

#[test]
fn remove_is_idempotent_and_cancels() {
    let f = fixture();
    f.store.remove("never-added").unwrap();
    f.store.add(ID, f.ova_import()).unwrap();
    let h = f.store.authorize(ID, Op::Write).unwrap();
    let extra = Arc::new(Progress::new(None));
    h.attach(extra.clone());
    extra.add_read(10);
    h.progress().add_read(5);
    assert_eq!(f.store.get_status(ID).unwrap().transferred, 15);

    f.store.remove(ID).unwrap();
    f.store.remove(ID).unwrap();
    assert!(!f.visible());
    assert!(h.is_cancelled());
    assert!(h.progress().check_cancelled().is_err());
    assert!(extra.check_cancelled().is_err());
    // A late attach is cancelled at once.
    let late = Arc::new(Progress::new(None));
    h.attach(late.clone());
    assert!(late.check_cancelled().is_err());
    // A finished report does not hide the cancellation.
    h.succeed();
    assert_eq!(lock(&h.live.state).state, TransferState::Cancelled);
}

#[test]
fn replacing_a_ticket() {
    let f = fixture();
    f.store.add(ID, f.image(&[Op::Read])).unwrap();
    let h = f.store.authorize(ID, Op::Read).unwrap();
    // The same ticket again (a retried PUT) keeps the transfer.
    f.advance(100);
    f.store.add(ID, f.image(&[Op::Read])).unwrap();
    assert!(!h.is_cancelled());
    let s = f.store.get_status(ID).unwrap();
    assert_eq!(s.connections, 1);
    assert_eq!(s.expires, T0 + 100 + 300);
    // A different one cancels it.
    f.store.add(ID, f.image(&[Op::Read, Op::Write])).unwrap();
    assert!(h.is_cancelled());
    let s = f.store.get_status(ID).unwrap();
    assert_eq!(s.connections, 0);
    assert_eq!(s.state, TransferState::Pending);
}

#[test]
fn authorize_checks_ops_and_ids() {
    let f = fixture();
    f.store.add(ID, f.image(&[Op::Read])).unwrap();
    let e = f.store.authorize(ID, Op::Write).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert_eq!(e.to_string(), "transfer tr-1 does not allow write");

    for wrong in ["", "5a1d3c7e", &ID[..ID.len() - 1], &format!("{ID}0")] {
        let e = f.store.authorize(wrong, Op::Read).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Auth);
        assert_eq!(e.to_string(), "no such ticket");
    }

    // On an image ticket write implies read; not on an OVA ticket.
    f.store.add(ID, f.image(&[Op::Write])).unwrap();
    let a = f.store.authorize(ID, Op::Read).unwrap();
    let b = f.store.authorize(ID, Op::Write).unwrap();
    assert_eq!(f.store.get_status(ID).unwrap().connections, 2);
    drop(a);
    assert_eq!(f.store.get_status(ID).unwrap().connections, 1);
    drop(b);
    f.store.add(ID, f.ova_import()).unwrap();
    let e = f.store.authorize(ID, Op::Read).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
}

#[test]
fn list_is_sorted_by_id_and_shows_what_get_shows() {
    let f = fixture();
    assert!(f.store.list().is_empty());

    // Added out of order: the list sorts by id, not by insertion.
    f.add_as("c-export", f.ova_export());
    f.add_as("a-image", f.image(&[Op::Read, Op::Write]));
    f.add_as("b-import", f.ova_import());
    assert_eq!(f.listed(), ["a-image", "b-import", "c-export"]);

    let h = f.store.authorize("a-image", Op::Write).unwrap();
    h.begin().unwrap();
    h.add_transferred(8192);
    let i = f.store.authorize("b-import", Op::Write).unwrap();
    i.begin().unwrap();
    i.set_disk_progress("d1.vmdk", 4096, TransferState::Succeeded);
    i.fail("entry 'd2.vmdk': bad magic");
    f.advance(3);
    drop(i);
    f.advance(4);

    let list = f.store.list();
    for s in &list {
        assert_eq!(
            s,
            &f.store.get_status(&s.ticket.uuid).unwrap(),
            "{}",
            s.ticket.uuid
        );
    }
    let kinds: Vec<TicketKind> = list.iter().map(|s| s.ticket.kind).collect();
    assert_eq!(
        kinds,
        [
            TicketKind::Image,
            TicketKind::OvaImport,
            TicketKind::OvaExport
        ]
    );
    let (image, import, export) = (&list[0], &list[1], &list[2]);
    assert_eq!(image.state, TransferState::Active);
    assert_eq!(image.transferred, 8192);
    assert_eq!(image.connections, 1);
    assert!(image.active);
    assert_eq!(image.idle_time, 0);
    assert_eq!(image.ticket.ops, [Op::Read, Op::Write]);
    assert_eq!(image.ticket.size, Some(1 << 30));

    assert_eq!(import.state, TransferState::Failed);
    assert_eq!(import.error.as_deref(), Some("entry 'd2.vmdk': bad magic"));
    assert_eq!(import.connections, 0);
    assert_eq!(import.idle_time, 4);
    assert_eq!(import.disks.len(), 2);
    assert_eq!(import.disks[0].bytes, 4096);
    assert_eq!(import.disks[0].state, TransferState::Succeeded);
    assert_eq!(import.disks[1].state, TransferState::Pending);
    // The handle's drop was activity: the expiry moved with it.
    assert_eq!(import.expires, T0 + 3 + 300);
    assert_eq!(image.expires, T0 + 300);

    assert_eq!(export.state, TransferState::Pending);
    assert_eq!(export.ticket.ops, [Op::Read]);
    assert_eq!(export.disks[0].href, "vol.qcow2");
    assert_eq!(export.idle_time, 7);
    assert_eq!(export.expires, T0 + 300);
}

#[test]
fn list_leaves_out_expired_and_removed_tickets() {
    let f = fixture();
    let mut short = f.image(&[Op::Read]);
    short.timeout = 30;
    short.inactivity_timeout = Some(0);
    f.add_as("short", short);
    f.add_as("idle", f.image(&[Op::Read]));
    let mut long = f.ova_import();
    long.inactivity_timeout = Some(0);
    f.add_as("long", long);
    let held = f.store.authorize("short", Op::Read).unwrap();
    assert_eq!(f.listed(), ["idle", "long", "short"]);

    // `idle` passes its inactivity limit; `short` its timeout, though
    // a connection holds it, and the transfer is cancelled.
    f.advance(60);
    assert_eq!(f.listed(), ["long"]);
    assert!(held.is_cancelled());

    f.store.extend("long", 0).unwrap();
    assert!(f.store.list().is_empty());

    f.add_as("gone", f.image(&[Op::Read]));
    f.add_as("kept", f.image(&[Op::Read]));
    f.store.remove("gone").unwrap();
    assert_eq!(f.listed(), ["kept"]);
}

#[test]
fn a_replaced_ticket_is_listed_once_with_its_new_status() {
    let f = fixture();
    f.store.add(ID, f.image(&[Op::Read])).unwrap();
    let h = f.store.authorize(ID, Op::Read).unwrap();
    h.begin().unwrap();
    f.store.add(ID, f.ova_import()).unwrap();
    let list = f.store.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].ticket.kind, TicketKind::OvaImport);
    assert_eq!(list[0].state, TransferState::Pending);
    assert_eq!(list[0].connections, 0);
    assert!(h.is_cancelled());
}

/// A store journaling into `dir` on the fixture's roots and clock.
fn journaled(f: &Fixture, dir: &Path) -> TicketStore {
    let roots = AllowedRoots::new(std::slice::from_ref(&f.root)).unwrap();
    TicketStore::with_clock(roots, f.clock.clone()).with_journal(Journal::open(dir).unwrap())
}

fn records(dir: &Path) -> Vec<TicketRecord> {
    let mut v: Vec<TicketRecord> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    v.sort_by(|a, b| a.ticket.uuid.cmp(&b.ticket.uuid));
    v
}

/// What a restart may change in a status: the idle time.
fn stable(mut v: Vec<TicketStatus>) -> Vec<TicketStatus> {
    for s in &mut v {
        s.idle_time = 0;
    }
    v
}

#[test]
fn an_image_tickets_format_is_decided_once_and_survives_a_restart() {
    let f = fixture();
    let dir = f._dir.path().join("journal");
    let a = journaled(&f, &dir);
    // Not there yet: raw. An existing qcow2 file: qcow2 by its header.
    a.add(ID, f.image(&[Op::Write])).unwrap();
    assert_eq!(
        a.authorize(ID, Op::Read).unwrap().format(),
        Some(Format::Raw)
    );
    let mut q = f.image(&[Op::Read]);
    q.uuid = "q".into();
    q.url = Some(f.url("q.qcow2"));
    let mut header = b"QFI\xfb".to_vec();
    header.resize(512, 0);
    std::fs::write(f.root.join("q.qcow2"), &header).unwrap();
    a.add("q", q.clone()).unwrap();
    assert_eq!(
        a.authorize("q", Op::Read).unwrap().format(),
        Some(Format::Qcow2)
    );
    assert_eq!(
        a.get_status("q").unwrap().ticket.format,
        None,
        "shown as given"
    );
    // Stated: qcow2 must find its header; raw is taken as stated.
    let mut bad = f.image(&[Op::Read]);
    bad.uuid = "bad".into();
    bad.format = Some("qcow2".into());
    std::fs::write(f.root.join("vol.raw"), b"plain").unwrap();
    let e = a.add("bad", bad.clone()).unwrap_err();
    assert!(e.to_string().contains("no qcow2 header"), "{e}");
    bad.url = Some(f.url("missing.qcow2"));
    bad.ops = vec![Op::Write];
    let e = a.add("bad", bad).unwrap_err();
    assert!(e.to_string().contains("must exist"), "{e}");
    q.uuid = "r".into();
    q.format = Some("raw".into());
    a.add("r", q).unwrap();
    assert_eq!(
        a.authorize("r", Op::Read).unwrap().format(),
        Some(Format::Raw)
    );
    drop(a);

    // The upload into the raw volume writes a qcow2 header; after a
    // restart the ticket is still raw.
    std::fs::write(f.root.join("vol.raw"), &header).unwrap();
    let b = journaled(&f, &dir);
    assert_eq!(b.restore().tickets, 3);
    assert_eq!(
        b.authorize(ID, Op::Read).unwrap().format(),
        Some(Format::Raw)
    );
    assert_eq!(
        b.authorize("q", Op::Read).unwrap().format(),
        Some(Format::Qcow2)
    );
    assert_eq!(
        b.authorize("r", Op::Read).unwrap().format(),
        Some(Format::Raw)
    );
}

#[test]
fn journaled_tickets_come_back_after_a_stop_as_they_were() {
    let f = fixture();
    let dir = f._dir.path().join("journal");
    let a = journaled(&f, &dir);
    let add = |id: &str, mut req: TicketRequest| {
        req.uuid = id.into();
        a.add(id, req).unwrap();
    };
    add("a-image", f.image(&[Op::Read, Op::Write]));
    add("b-import", f.ova_import());
    add("c-export", f.ova_export());
    add("d-used", f.image(&[Op::Read]));
    let i = a.authorize("b-import", Op::Write).unwrap();
    i.begin().unwrap();
    i.set_disk_progress("d1.vmdk", 4096, TransferState::Succeeded);
    i.set_disk_progress("d2.vmdk", 512, TransferState::Succeeded);
    i.progress().add_read(8192);
    i.set_manifest("verified");
    i.succeed();
    // The outcome is on disk as soon as it is visible.
    let r = records(&dir);
    assert_eq!(r[1].state, TransferState::Succeeded);
    assert_eq!(r[1].manifest.as_deref(), Some("verified"));
    assert_eq!(r[1].transferred, 8192);
    assert_eq!(r[1].disks[1].bytes, 512);
    drop(i);
    let h = a.authorize("d-used", Op::Read).unwrap();
    h.begin().unwrap();
    h.add_transferred(4096);
    // Activity within the slack moves the expiry without a write...
    f.advance(20);
    drop(h);
    assert_eq!(records(&dir)[3].expires, T0 + 300);
    assert_eq!(a.get_status("d-used").unwrap().expires, T0 + 320);
    let before = stable(a.list());
    // ...and a stop writes it, but not the cancellation.
    a.cancel_all();
    drop(a);
    assert_eq!(records(&dir)[3].expires, T0 + 320);
    assert_eq!(records(&dir)[3].transferred, 4096);
    assert_eq!(records(&dir)[2].state, TransferState::Pending);

    f.advance(7);
    let b = journaled(&f, &dir);
    let restored = b.restore();
    assert_eq!(
        restored,
        Restored {
            tickets: 4,
            ..Restored::default()
        }
    );
    assert_eq!(stable(b.list()), before);
    // A restored ticket works as before: the pending export can start.
    let e = b.authorize("c-export", Op::Read).unwrap();
    e.begin().unwrap();
    assert_eq!(e.state(), TransferState::Active);
    // A fresh idle period starts at the restart.
    assert_eq!(b.get_status("a-image").unwrap().idle_time, 0);
}

#[test]
fn a_restart_fails_cut_short_ova_transfers_and_keeps_image_tickets() {
    let f = fixture();
    let dir = f._dir.path().join("journal");
    let a = journaled(&f, &dir);
    a.add(ID, f.ova_import()).unwrap();
    let mut image = f.image(&[Op::Write]);
    image.uuid = "img".into();
    a.add("img", image).unwrap();
    let i = a.authorize(ID, Op::Write).unwrap();
    i.begin().unwrap();
    // Paused when the server was killed: as cut short as an active one.
    i.pause();
    i.set_disk_progress("d1.vmdk", 4096, TransferState::Succeeded);
    let m = a.authorize("img", Op::Write).unwrap();
    m.begin().unwrap();
    // Killed: no stop, handles never dropped.
    std::mem::forget((i, m));
    drop(a);

    let b = journaled(&f, &dir);
    let r = b.restore();
    assert_eq!(r.tickets, 2);
    assert_eq!(r.interrupted, 1);
    assert_eq!(
        r.interrupted_targets,
        [f.root.join("new1.qcow2"), f.root.join("new2.raw")]
    );
    let s = b.get_status(ID).unwrap();
    assert_eq!(s.state, TransferState::Failed);
    assert_eq!(s.error.as_deref(), Some(RESTARTED));
    // Disk progress is not journaled (it changes as bytes move), and
    // no target of an unfinished import was renamed into place.
    assert!(s.disks.iter().all(|d| d.state == TransferState::Failed));
    assert_eq!(s.connections, 0);
    let e = b.authorize(ID, Op::Write).unwrap().begin().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(b.get_status("img").unwrap().state, TransferState::Active);
    b.authorize("img", Op::Write).unwrap().begin().unwrap();
    drop(b);

    // The verdict is journaled: the next start finds nothing to do.
    let c = journaled(&f, &dir);
    let r = c.restore();
    assert_eq!((r.tickets, r.interrupted), (2, 0));
    assert_eq!(c.get_status(ID).unwrap().error.as_deref(), Some(RESTARTED));
}

#[test]
fn gone_tickets_leave_no_record_and_expired_ones_do_not_come_back() {
    let f = fixture();
    let dir = f._dir.path().join("journal");
    let a = journaled(&f, &dir);
    a.add(ID, f.image(&[Op::Read])).unwrap();
    a.remove(ID).unwrap();
    assert!(records(&dir).is_empty());
    // Expired by inactivity though its record says it lives on.
    a.add(ID, f.image(&[Op::Read])).unwrap();
    f.advance(60);
    assert!(a.get_status(ID).is_err());
    assert!(records(&dir).is_empty());
    // Expired while the server was down.
    let mut long = f.image(&[Op::Read]);
    long.inactivity_timeout = Some(0);
    a.add(ID, long).unwrap();
    a.extend(ID, 100).unwrap();
    assert_eq!(records(&dir)[0].expires, T0 + 60 + 100);
    drop(a);
    f.advance(99);
    let b = journaled(&f, &dir);
    assert_eq!(b.restore().tickets, 1);
    drop(b);
    f.advance(1);
    let c = journaled(&f, &dir);
    let r = c.restore();
    assert_eq!((r.tickets, r.dropped), (0, 1));
    assert!(records(&dir).is_empty());

    // A path outside today's roots drops the ticket.
    c.add(ID, f.image(&[Op::Read])).unwrap();
    drop(c);
    let other = f._dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let roots = AllowedRoots::new(&[other]).unwrap();
    let d =
        TicketStore::with_clock(roots, f.clock.clone()).with_journal(Journal::open(&dir).unwrap());
    assert_eq!(d.restore().dropped, 1);
    assert!(records(&dir).is_empty());
}

#[test]
fn the_number_of_tickets_is_bounded() {
    let f = fixture();
    for i in 0..MAX_TICKETS {
        f.add_as(&format!("t{i}"), f.image(&[Op::Read]));
    }
    let mut req = f.image(&[Op::Read]);
    req.uuid = "one-more".into();
    let e = f.store.add("one-more", req).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    assert!(e.to_string().contains("4096 tickets"), "{e}");
    // Replacing one is still allowed, and an expired one frees a place.
    f.add_as("t0", f.image(&[Op::Read, Op::Write]));
    f.advance(60);
    f.add_as("one-more", f.image(&[Op::Read]));
}
