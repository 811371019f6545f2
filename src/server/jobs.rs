//! Server-side jobs: an import from, or an export to, a path under the
//! storage roots, run without a data-plane client (`POST /jobs`). Each
//! job runs the same pipeline as the command line on a thread of its own
//! and reports into a [`Progress`] the control API shows.
//!
//! With a journal ([`Jobs::with_journal`]) each job is recorded when it
//! is accepted and when it ends (the outcome before it becomes visible),
//! and [`Jobs::restore`] reads the records back at start-up: a finished
//! job keeps its outcome, one that was running is `failed` with the
//! reason [`RESTARTED`].
//!
//! ```json
//! {"type": "import", "source": "file:///nfs/in/vm.ova",
//!  "disks": [{"href": "disk1.vmdk", "url": "file:///srv/images/d1.qcow2", "format": "qcow2"}]}
//! {"type": "export", "target": "file:///nfs/out/vm.ova", "name": "vm",
//!  "disks": [{"href": "disk1.qcow2", "url": "file:///srv/images/d1.raw"}]}
//! ```
//!
//! An import's `source` may also be a URL — another server's `ova-export`
//! ticket (`https://site-a:54322/images/TICKET`: replication, no copy on
//! disk between), a catalog's `http(s)://` URL, or `s3://bucket/key` —
//! fetched once and resumed where a dropped connection left it; the
//! status then shows `retries`. An export's `target` may be
//! `s3://bucket/key`: a multipart upload that appears only when complete.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::export::ExportPlan;
use crate::pipeline::import::Importer;
use crate::pipeline::progress::Progress;
use crate::pipeline::tickets::{export_request, import_targets};
use crate::s3::S3Url;
use crate::server::metrics::{JobType, Metrics};
use crate::sink::partial::{self, Existing, PartialFile};
use crate::source::url::SourceSpec;
use crate::source::volume::AllowedRoots;
use crate::ticket::journal::Journal;
use crate::ticket::{
    OvaDisk, RESTARTED, ResolvedDisk, ResolvedOva, TicketStore, TransferState, VmFields,
};
use crate::volume::imageio::remotes::remotes;

/// Jobs kept at once (finished ones included), in memory and in the
/// journal; older finished jobs are dropped first.
pub const MAX_JOBS: usize = 256;

/// The body of `POST /jobs`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum JobRequest {
    /// Import an OVA file into target volumes.
    Import {
        /// The package: `file:///path`, an `http(s)://` URL (another
        /// server's `ova-export` ticket, a catalog) or `s3://bucket/key`.
        source: String,
        /// Where each disk goes (`format`: target format, default raw).
        disks: Vec<OvaDisk>,
        /// Check the manifest (default true).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verify: Option<bool>,
        /// Replace existing targets (default false).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        overwrite: Option<bool>,
    },
    /// Export volumes into an OVA file.
    Export {
        /// The OVA to write: `file:///path` (written as `.partial` first)
        /// or `s3://bucket/key` (a multipart upload).
        target: String,
        /// The disks in References order (`format`: source format, default probed).
        disks: Vec<OvaDisk>,
        /// An OVF descriptor to complete, `file:///path`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ovf: Option<String>,
        /// The VM name when no descriptor is given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The VM of the generated descriptor (as a ticket's `ova.vm`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vm: Option<Box<VmFields>>,
        /// The manifest's algorithm: sha1, sha256 (default) or sha512.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        manifest: Option<String>,
        /// The disks' format: qcow2 (default) or vmdk.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_format: Option<String>,
        /// With vmdk: deflate the grains.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compress: Option<bool>,
        /// Replace an existing target (default false).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        overwrite: Option<bool>,
    },
}

/// What `GET /jobs/{id}` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job id.
    pub id: String,
    /// The request as given.
    pub request: JobRequest,
    /// pending, active, succeeded, failed, cancelled.
    pub state: TransferState,
    /// Bytes read from the source (import) or written (export).
    pub bytes: u64,
    /// Bytes `bytes` reaches at the end, when known: an import's package
    /// size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Bytes per second while the job ran (so far, while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// Times a source fetched from a URL lost its connection and was
    /// taken up again where it stopped.
    #[serde(default)]
    pub retries: u64,
    /// The tar entry in progress.
    pub entry: String,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The pipeline's summary once succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Unix time the job was created.
    pub created: u64,
    /// Unix time it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<u64>,
}

#[derive(Debug)]
struct Job {
    id: String,
    request: JobRequest,
    progress: Arc<Progress>,
    created: u64,
    outcome: Mutex<Outcome>,
    /// The files the job writes, whose partial files an interruption
    /// leaves behind.
    targets: Vec<PathBuf>,
    timing: Mutex<Timing>,
}

/// When a job ran, for its rate.
#[derive(Debug, Default)]
struct Timing {
    started: Option<Instant>,
    ended: Option<Instant>,
    /// A restored job's rate, as recorded.
    recorded: Option<u64>,
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    state: Option<TransferState>,
    error: Option<String>,
    result: Option<serde_json::Value>,
    finished: Option<u64>,
}

type Map = HashMap<String, Arc<Job>>;

/// Every job, by id.
#[derive(Debug)]
pub struct Jobs {
    store: Arc<TicketStore>,
    jobs: Arc<Mutex<Map>>,
    next: AtomicU64,
    journal: Option<Arc<JobJournal>>,
    metrics: Arc<Metrics>,
}

/// What a job's journal record holds: its status as `GET` shows it and
/// the files it writes.
#[derive(Debug, Serialize, Deserialize)]
struct JobRecord {
    /// [`RECORD_VERSION`].
    version: u32,
    status: JobStatus,
    targets: Vec<PathBuf>,
}

/// The layout of [`JobRecord`].
const RECORD_VERSION: u32 = 1;

/// The jobs' journal, shared with the job threads.
#[derive(Debug)]
struct JobJournal {
    journal: Journal,
    jobs: Arc<Mutex<Map>>,
    /// Set at shutdown: cancellations from then on are not journaled, so
    /// that a restarted server reports those jobs as cut short.
    stopping: AtomicBool,
}

/// What [`Jobs::restore`] found in the journal.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoredJobs {
    /// Jobs known again.
    pub jobs: usize,
    /// Jobs that were running, now `failed`.
    pub interrupted: usize,
    /// The files those jobs were writing, whose partial files are left over.
    pub interrupted_targets: Vec<PathBuf>,
}

impl JobJournal {
    /// Makes the record of `id` say what the job list holds (with
    /// `outcome` in place of the job's own), then runs `apply`, all in
    /// the journal's lock.
    fn write(&self, id: &str, outcome: Option<&Outcome>, apply: impl FnOnce()) {
        let _held = self.journal.lock();
        let job = lock_map(&self.jobs).get(id).cloned();
        let r = match job {
            None => self.journal.remove(id),
            Some(job) => {
                let mut status = job.status();
                if let Some(o) = outcome {
                    status.state = o.state.unwrap_or(status.state);
                    status.error.clone_from(&o.error);
                    status.result.clone_from(&o.result);
                    status.finished = o.finished;
                }
                let record = JobRecord {
                    version: RECORD_VERSION,
                    status,
                    targets: job.targets.clone(),
                };
                serde_json::to_vec(&record)
                    .map_err(std::io::Error::other)
                    .and_then(|data| self.journal.write(id, &data))
            }
        };
        if let Err(e) = r {
            tracing::warn!(job = %id, error = %e, "cannot journal the job; a restart would not know this change");
        }
        apply();
    }
}

fn lock_map(m: &Mutex<Map>) -> MutexGuard<'_, Map> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `id` can name a record file: the ids this server makes.
fn is_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Jobs {
    /// Jobs whose paths resolve under the store's roots.
    pub fn new(store: Arc<TicketStore>) -> Self {
        Jobs {
            store,
            jobs: Arc::new(Mutex::new(HashMap::new())),
            next: AtomicU64::new(1),
            journal: None,
            metrics: Arc::default(),
        }
    }

    /// Counts jobs into `metrics` (by default a registry of their own).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Journals every job in `journal` from now on; call
    /// [`Jobs::restore`] first thing to read back what it holds.
    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.journal = Some(Arc::new(JobJournal {
            journal,
            jobs: self.jobs.clone(),
            stopping: AtomicBool::new(false),
        }));
        self
    }

    /// Reads back the jobs journaled by an earlier run (the newest
    /// [`MAX_JOBS`]). A finished job keeps its outcome; one that was
    /// pending or running is marked `failed` with the reason
    /// [`RESTARTED`], finished now, and the files it was writing are
    /// returned so that their partial files can be removed.
    pub fn restore(&self) -> RestoredJobs {
        let mut out = RestoredJobs::default();
        let Some(jj) = &self.journal else {
            return out;
        };
        let mut records: Vec<JobRecord> = Vec::new();
        for (name, data) in jj.journal.load() {
            match serde_json::from_slice::<JobRecord>(&data) {
                Ok(r) if r.version == RECORD_VERSION && r.status.id == name && is_job_id(&name) => {
                    records.push(r)
                }
                Ok(_) => {
                    tracing::warn!(record = %name, "journal record of another layout or name skipped")
                }
                Err(e) => {
                    tracing::warn!(record = %name, error = %e, "unreadable journal record skipped")
                }
            }
        }
        records.sort_by(|a, b| {
            (a.status.created, &a.status.id).cmp(&(b.status.created, &b.status.id))
        });
        let excess = records.len().saturating_sub(MAX_JOBS);
        for r in records.drain(..excess) {
            if let Err(e) = jj.journal.remove(&r.status.id) {
                tracing::warn!(job = %r.status.id, error = %e, "cannot remove a journal record");
            }
        }
        let mut changed = Vec::new();
        let mut next = 1;
        for r in records {
            let st = r.status;
            let mut outcome = Outcome {
                state: Some(st.state),
                error: st.error,
                result: st.result,
                finished: st.finished,
            };
            if !st.state.is_final() {
                outcome.state = Some(TransferState::Failed);
                outcome.error = Some(RESTARTED.to_owned());
                outcome.finished = Some(now());
                out.interrupted += 1;
                out.interrupted_targets.extend(r.targets.iter().cloned());
                tracing::warn!(job = %st.id, "job cut short by a restart: marked failed");
                changed.push(st.id.clone());
            }
            if let Some(n) = st.id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()) {
                next = next.max(n.saturating_add(1));
            }
            let progress = Progress::new(st.total);
            progress.add_read(st.bytes);
            progress.set_entry(&st.entry);
            progress
                .retries_counter()
                .store(st.retries, Ordering::Relaxed);
            let job = Job {
                id: st.id.clone(),
                request: st.request,
                progress: Arc::new(progress),
                created: st.created,
                outcome: Mutex::new(outcome),
                targets: r.targets,
                timing: Mutex::new(Timing {
                    recorded: st.rate,
                    ..Timing::default()
                }),
            };
            self.lock().insert(st.id, Arc::new(job));
            out.jobs += 1;
        }
        // Ids go on from the restored ones, so that none is given twice.
        self.next.fetch_max(next, Ordering::Relaxed);
        for id in changed {
            jj.write(&id, None, || {});
        }
        out
    }

    /// Checks the request, then starts it on its own thread. Every path is
    /// resolved under the roots before anything starts.
    pub fn start(&self, request: JobRequest) -> Result<JobStatus> {
        let work = self.resolve(&request)?;
        let id = format!("{:x}-{}", now(), self.next.fetch_add(1, Ordering::Relaxed));
        let progress = Arc::new(Progress::new(work.total()));
        let job = Arc::new(Job {
            id: id.clone(),
            request,
            progress: progress.clone(),
            created: now(),
            outcome: Mutex::new(Outcome::default()),
            targets: work.targets(),
            timing: Mutex::new(Timing::default()),
        });
        let mut evicted = None;
        {
            let mut map = self.lock();
            if map.len() >= MAX_JOBS {
                let mut done: Vec<_> = map
                    .values()
                    .filter(|j| j.outcome().finished.is_some())
                    .map(|j| (j.created, j.id.clone()))
                    .collect();
                done.sort();
                match done.first() {
                    Some((_, old)) => {
                        map.remove(&old.clone());
                        evicted = Some(old.clone());
                    }
                    None => {
                        return Err(Error::new(
                            ErrorKind::LimitExceeded,
                            format!("{MAX_JOBS} jobs are running; wait for one to end"),
                        ));
                    }
                }
            }
            map.insert(id.clone(), job.clone());
        }
        if let Some(jj) = &self.journal {
            if let Some(old) = evicted {
                jj.write(&old, None, || {});
            }
            jj.write(&id, None, || {});
        }
        let j = job.clone();
        let job_type = match &job.request {
            JobRequest::Import { .. } => JobType::Import,
            JobRequest::Export { .. } => JobType::Export,
        };
        let metrics = self.metrics.clone();
        metrics.job_started(job_type);
        let journal = self.journal.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("job-{id}"))
            .spawn(move || {
                let span = tracing::info_span!("job", id = %j.id);
                let _e = span.enter();
                j.set_state(TransferState::Active);
                j.timing().started = Some(Instant::now());
                let r = work.run(j.progress.clone());
                j.timing().ended = Some(Instant::now());
                metrics.job_ended(job_type, r.as_ref().err());
                let mut o = Outcome {
                    finished: Some(now()),
                    ..Outcome::default()
                };
                match r {
                    Ok(v) => {
                        tracing::info!("job succeeded");
                        o.state = Some(TransferState::Succeeded);
                        o.result = Some(v);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.one_line(), "job failed");
                        o.state = Some(if e.kind() == ErrorKind::Cancelled {
                            TransferState::Cancelled
                        } else {
                            TransferState::Failed
                        });
                        o.error = Some(e.one_line());
                    }
                }
                let apply = || *j.outcome() = o.clone();
                match &journal {
                    Some(jj)
                        if !(o.state == Some(TransferState::Cancelled)
                            && jj.stopping.load(Ordering::SeqCst)) =>
                    {
                        jj.write(&j.id, Some(&o), apply)
                    }
                    _ => apply(),
                }
            });
        if let Err(e) = spawned {
            // Not started: forget it, record included.
            self.remove(&id);
            let e = Error::new(ErrorKind::Io, format!("cannot start a job thread: {e}"));
            self.metrics.job_ended(job_type, Some(&e));
            return Err(e);
        }
        Ok(job.status())
    }

    /// One job's status.
    pub fn get(&self, id: &str) -> Result<JobStatus> {
        self.lock()
            .get(id)
            .map(|j| j.status())
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no such job '{id}'")))
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<JobStatus> {
        let mut v: Vec<_> = self.lock().values().map(|j| j.status()).collect();
        v.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        v
    }

    /// Cancels a running job and forgets it; unknown ids succeed (a retry).
    pub fn remove(&self, id: &str) {
        let removed = self.lock().remove(id);
        if let Some(j) = removed {
            j.progress.cancel();
        }
        if let Some(jj) = &self.journal
            && is_job_id(id)
        {
            jj.write(id, None, || {});
        }
    }

    /// Cancels every running job (server shutdown). Their records keep
    /// the state before the cancellation (see [`Jobs::restore`]).
    pub fn cancel_all(&self) {
        if let Some(jj) = &self.journal {
            jj.stopping.store(true, Ordering::SeqCst);
        }
        for j in self.lock().values() {
            j.progress.cancel();
        }
    }

    /// Jobs still running.
    pub fn running(&self) -> usize {
        self.lock()
            .values()
            .filter(|j| j.outcome().finished.is_none())
            .count()
    }

    fn lock(&self) -> MutexGuard<'_, Map> {
        lock_map(&self.jobs)
    }

    fn resolve(&self, r: &JobRequest) -> Result<Work> {
        let url =
            |field: &str, u: &str| crate::ticket::file_url_path(field, u).map_err(Error::from);
        let disks = |list: &[OvaDisk], create: bool| -> Result<Vec<ResolvedDisk>> {
            if list.is_empty() {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "the job names no disk",
                ));
            }
            list.iter()
                .enumerate()
                .map(|(i, d)| {
                    let field = format!("disks[{i}].url");
                    let (path, net) = match crate::ticket::volume_url(&field, &d.url)? {
                        crate::ticket::VolumeUrl::Net(u) => (PathBuf::from(u.to_string()), Some(u)),
                        crate::ticket::VolumeUrl::File(p) => {
                            (self.store.resolve_path(&field, &p, create)?, None)
                        }
                    };
                    Ok(ResolvedDisk {
                        href: d.href.clone(),
                        disk_id: d.disk_id.clone(),
                        path,
                        net,
                        format: d.format.clone(),
                    })
                })
                .collect()
        };
        match r {
            JobRequest::Import {
                source,
                disks: d,
                verify,
                overwrite,
            } => {
                let src = match crate::source::url::scheme(source).as_deref() {
                    Some("http" | "https" | "s3") => {
                        let spec = SourceSpec::parse(source).map_err(|why| {
                            Error::new(ErrorKind::InvalidArgument, format!("source: {why}"))
                        })?;
                        if let SourceSpec::Http(u) = &spec {
                            remotes()
                                .check_host(u.host(), u.authority())
                                .map_err(|why| {
                                    Error::new(ErrorKind::InvalidArgument, format!("source: {why}"))
                                })?;
                        }
                        JobSource::Url(spec)
                    }
                    _ => JobSource::File(self.store.resolve_path(
                        "source",
                        &url("source", source)?,
                        false,
                    )?),
                };
                let targets = disks(d, true)?;
                // Refused now rather than when the job reaches the disk.
                if existing(*overwrite) == Existing::Keep {
                    for t in targets.iter().filter(|t| t.net.is_none()) {
                        let (dir, name) = partial::target_dir(self.store.roots(), &t.path)?;
                        partial::refuse_existing(&dir, &name)?;
                    }
                }
                Ok(Work::Import {
                    source: src,
                    ova: ResolvedOva {
                        disks: targets,
                        ovf: None,
                        name: None,
                        vm: None,
                        manifest: None,
                        disk_format: None,
                        compress: None,
                    },
                    verify: verify.unwrap_or(true),
                    existing: existing(*overwrite),
                    roots: self.store.roots().clone(),
                })
            }
            JobRequest::Export {
                target,
                disks: d,
                ovf,
                name,
                vm,
                manifest,
                disk_format,
                compress,
                overwrite,
            } => {
                crate::ticket::export_format(disk_format.as_deref(), *compress).map_err(
                    |(f, r)| Error::new(ErrorKind::InvalidArgument, format!("{f}: {r}")),
                )?;
                if let Some(m) = manifest {
                    crate::ticket::manifest_algorithm(m).map_err(|r| {
                        Error::new(ErrorKind::InvalidArgument, format!("manifest: {r}"))
                    })?;
                }
                if let Some(vm) = vm {
                    if ovf.is_some() {
                        return Err(Error::new(
                            ErrorKind::InvalidArgument,
                            "vm: describes a generated descriptor; not used with ovf",
                        ));
                    }
                    vm.spec(name.as_deref().unwrap_or("vm"), d.len(), "vm")?;
                }
                let target = match crate::source::url::scheme(target).as_deref() {
                    // Whether the object exists is asked when the job runs:
                    // the control API does not wait on object storage.
                    Some("s3") => JobTarget::Object(S3Url::parse(target).map_err(|why| {
                        Error::new(ErrorKind::InvalidArgument, format!("target: {why}"))
                    })?),
                    _ => {
                        let target =
                            self.store
                                .resolve_path("target", &url("target", target)?, true)?;
                        if existing(*overwrite) == Existing::Keep {
                            let (dir, name) = partial::target_dir(self.store.roots(), &target)?;
                            partial::refuse_existing(&dir, &name)?;
                        }
                        JobTarget::File(target)
                    }
                };
                let ovf = match ovf {
                    Some(u) => Some(self.store.resolve_path("ovf", &url("ovf", u)?, false)?),
                    None => None,
                };
                Ok(Work::Export {
                    target,
                    ova: ResolvedOva {
                        disks: disks(d, false)?,
                        ovf,
                        name: name.clone(),
                        vm: vm.as_deref().cloned(),
                        manifest: manifest.clone(),
                        disk_format: disk_format.clone(),
                        compress: *compress,
                    },
                    existing: existing(*overwrite),
                    roots: self.store.roots().clone(),
                })
            }
        }
    }
}

/// Where an import job's package comes from.
#[derive(Debug)]
enum JobSource {
    /// A file under the roots, opened beneath its root.
    File(PathBuf),
    /// A URL or an object.
    Url(SourceSpec),
}

/// Where an export job's package goes.
#[derive(Debug)]
enum JobTarget {
    /// A file under the roots, written as `.partial` first.
    File(PathBuf),
    /// An object, written as a multipart upload.
    Object(S3Url),
}

/// A job with its paths resolved.
#[derive(Debug)]
enum Work {
    Import {
        source: JobSource,
        ova: ResolvedOva,
        verify: bool,
        existing: Existing,
        roots: AllowedRoots,
    },
    Export {
        target: JobTarget,
        ova: ResolvedOva,
        existing: Existing,
        roots: AllowedRoots,
    },
}

fn to_json<T: Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::internal(e.to_string()))
}

impl Work {
    /// The files the job writes.
    fn targets(&self) -> Vec<PathBuf> {
        match self {
            Work::Import { ova, .. } => ova
                .disks
                .iter()
                .filter(|d| d.net.is_none())
                .map(|d| d.path.clone())
                .collect(),
            Work::Export {
                target: JobTarget::File(target),
                ..
            } => vec![target.clone()],
            Work::Export { .. } => Vec::new(),
        }
    }

    /// What `total` shows: an import reads its package whole, so its size
    /// is known at the start; an export's is known only once the plan is
    /// made, and its `result` then carries it.
    fn total(&self) -> Option<u64> {
        match self {
            Work::Import {
                source: JobSource::File(source),
                ..
            } => std::fs::metadata(source).ok().map(|m| m.len()),
            // A URL's size is known once it answers.
            Work::Import { .. } | Work::Export { .. } => None,
        }
    }

    fn run(self, progress: Arc<Progress>) -> Result<serde_json::Value> {
        match self {
            Work::Import {
                source,
                ova,
                verify,
                existing,
                roots,
            } => {
                let targets = import_targets(&ova)?;
                let (src, shown) = match source {
                    JobSource::File(path) => {
                        // The canonical path accepted with the job, opened beneath its root.
                        let file = roots.open(&path, rustix::fs::OFlags::RDONLY, 0)?;
                        let shown = path.display().to_string();
                        (crate::source::from_file(file, path)?, shown)
                    }
                    JobSource::Url(spec) => {
                        let src = crate::source::open_spec(&spec, progress.retries_counter())?;
                        if let Some(n) = src.size {
                            progress.set_total(n);
                        }
                        (src, spec.to_string())
                    }
                };
                let mut importer = Importer::new(targets, progress)
                    .with_roots(roots)
                    .existing_targets(existing);
                if !verify {
                    importer = importer.without_verification();
                }
                let s = importer.run(src.reader).map_err(|e| e.at_path(&shown))?;
                to_json(&s)
            }
            Work::Export {
                target,
                ova,
                existing,
                roots,
            } => {
                // Fails at once when the target cannot be made (or exists
                // and may not be replaced: it may have appeared since the
                // job was accepted).
                enum Out {
                    File(PartialFile, std::fs::File),
                    Object(S3Url),
                }
                let out = match target {
                    JobTarget::File(t) => {
                        let (partial, file) = PartialFile::create(&roots, &t, existing)?;
                        Out::File(partial, file)
                    }
                    JobTarget::Object(url) => {
                        if existing == Existing::Keep {
                            crate::s3::refuse_existing(&url, "pass \"overwrite\": true")?;
                        }
                        Out::Object(url)
                    }
                };
                // Backing chains are checked against the same roots.
                let plan = ExportPlan::prepare_watched(export_request(&ova, roots)?, &progress)?;
                progress.set_total(plan.total_size());
                match out {
                    Out::File(partial, file) => {
                        to_json(&plan.write_partial(partial, file, progress)?)
                    }
                    Out::Object(url) => {
                        let (s, parts) = plan.write_object(&url, None, progress)?;
                        let mut v = to_json(&s)?;
                        parts.add_to(&mut v);
                        Ok(v)
                    }
                }
            }
        }
    }
}

/// `"overwrite": true` replaces existing targets; the default keeps them.
fn existing(overwrite: Option<bool>) -> Existing {
    if overwrite.unwrap_or(false) {
        Existing::Replace
    } else {
        Existing::Keep
    }
}

impl Job {
    fn outcome(&self) -> MutexGuard<'_, Outcome> {
        self.outcome.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn timing(&self) -> MutexGuard<'_, Timing> {
        self.timing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes per second over the time the job ran.
    fn rate(&self) -> Option<u64> {
        let t = self.timing();
        let Some(start) = t.started else {
            return t.recorded;
        };
        let secs = t
            .ended
            .unwrap_or_else(Instant::now)
            .duration_since(start)
            .as_secs_f64();
        (secs > 0.0).then(|| (self.progress.bytes_read() as f64 / secs) as u64)
    }

    fn set_state(&self, s: TransferState) {
        self.outcome().state = Some(s);
    }

    fn status(&self) -> JobStatus {
        let o = self.outcome();
        JobStatus {
            id: self.id.clone(),
            request: self.request.clone(),
            state: o.state.unwrap_or(TransferState::Pending),
            bytes: self.progress.bytes_read(),
            total: self.progress.total(),
            rate: self.rate(),
            retries: self.progress.retries(),
            entry: self.progress.entry(),
            error: o.error.clone(),
            result: o.result.clone(),
            created: self.created,
            finished: o.finished,
        }
    }
}
