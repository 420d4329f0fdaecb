//! The update flow for one target revision (DESIGN §5): ask the runtime what it has,
//! install the state, learn from its `WONTGO` answer which objects are missing, download
//! only those (layers and configs from their registries, files from the gateway), upload
//! them, install again, run, and forward the runtime's progress until it rests.
//!
//! Until `run` is sent, an update can be cancelled when the target changes (a download
//! of a revision nobody wants any more is wasted time); from `run` on the runtime owns
//! the try and the agent only watches it ([`Gate`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgevisor_protocol::control::{ErrorBody, Step};
use futures::StreamExt;
use hyper::StatusCode;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::backoff::Backoff;
use super::credential::Credential;
use super::gateway::Gateway;
use super::registry::{Downloader, Fetch, Source};
use super::report::{
    Reporter, committed_revision, containers_from_runtime, download_percent, update_from_progress,
};
use device_runtime::client::{Client, ClientError};
use edgevisor_protocol::gateway::{BlobSource, Target, UpdateReport};
use edgevisor_protocol::lifecycle::{Progress, Status};
use edgevisor_protocol::state::{State, is_sha256_hex, parse_digest};

/// What to do for a target revision, given what the runtime has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Committed and running: nothing to do but say so.
    Done,
    /// An earlier try of this very revision failed; trying the same bytes again would
    /// fail the same way (and take the device through another rollback), so the failure
    /// is reported again and the agent waits for a new target.
    Failed(Status),
    /// The runtime is trying it now (the agent restarted mid-update): watch.
    Follow,
    /// The runtime is busy trying another revision; wait for it to rest.
    WaitBusy(String),
    /// Installed but not running (never run, or rolled away from): run it.
    Run,
    /// Not on the device.
    Install,
}

/// Decides what to do for `rev`. Pure.
pub fn plan(rev: &str, steps: &[Step]) -> Plan {
    let active = |s: &Step| s.trying || s.status.is_some_and(Status::is_active);
    let mine = steps.iter().find(|s| s.rev == rev);
    if let Some(s) = mine
        && active(s)
    {
        return Plan::Follow;
    }
    if let Some(other) = steps.iter().find(|s| s.rev != rev && active(s)) {
        return Plan::WaitBusy(other.rev.clone());
    }
    match mine {
        None => Plan::Install,
        Some(s) if s.committed && s.running => Plan::Done,
        Some(Step {
            status: Some(st @ (Status::Error | Status::Wontgo)),
            ..
        }) => Plan::Failed(*st),
        Some(_) => Plan::Run,
    }
}

/// Where a missing object comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Registry(BlobSource),
    /// A file of the state, served by the gateway.
    Gateway,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    pub hex: String,
    pub size: u64,
    pub origin: Origin,
}

/// The `missing` list of a `WONTGO` answer of `PUT /steps/{rev}`, as hex.
pub fn missing_objects(body: &ErrorBody) -> Option<Vec<String>> {
    if body.status != Some(Status::Wontgo) {
        return None;
    }
    Some(
        body.missing
            .iter()
            .map(|s| s.strip_prefix("sha256:").unwrap_or(s).to_owned())
            .collect(),
    )
}

/// Sizes of every object of a state, by hex digest.
pub fn object_sizes(state: &State) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let descs = state.descriptors();
    for (digest, size) in descs {
        if let Some(h) = parse_digest(digest) {
            out.insert(h.to_owned(), size);
        }
    }
    out
}

/// Splits the missing objects into registry blobs (those the target lists in `blobs`)
/// and files from the gateway (the rest), each once, with the size the state names
/// (the runtime refuses an object of another size). Pure.
pub fn needed_objects(
    missing: &[String],
    blobs: &[BlobSource],
    sizes: &BTreeMap<String, u64>,
) -> Result<Vec<Needed>, String> {
    let mut out: Vec<Needed> = Vec::new();
    for hex in missing {
        if !is_sha256_hex(hex) {
            return Err(format!("the runtime named a bad object {hex:?} as missing"));
        }
        if out.iter().any(|n| &n.hex == hex) {
            continue;
        }
        let blob = blobs
            .iter()
            .find(|b| parse_digest(&b.digest) == Some(hex.as_str()));
        let size = sizes
            .get(hex)
            .copied()
            .or(blob.map(|b| b.size))
            .ok_or_else(|| format!("object sha256:{hex} is missing but not in the state"))?;
        out.push(Needed {
            hex: hex.clone(),
            size,
            origin: match blob {
                Some(b) => Origin::Registry(b.clone()),
                None => Origin::Gateway,
            },
        });
    }
    Ok(out)
}

/// Whether the target's state is the one its digest names (a proxy or a half-updated
/// gateway must not make the device install something else).
pub fn state_matches(t: &Target) -> bool {
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(t.state.as_bytes())));
    actual == t.state_digest
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct GateState {
    cancelled: bool,
    passed: bool,
}

/// The point of no return of an update. The agent's main loop may [`cancel`](Gate::cancel)
/// an update as long as the update has not [`pass`](Gate::pass)ed (sent `run`); both are
/// decided under one lock, so an update is never cancelled after its `run` went out.
pub struct Gate {
    tx: watch::Sender<GateState>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            tx: watch::channel(GateState::default()).0,
        }
    }
}

impl Gate {
    /// Cancels unless past the point of no return; true when cancelled.
    pub fn cancel(&self) -> bool {
        let mut ok = false;
        self.tx.send_if_modified(|s| {
            if s.passed {
                return false;
            }
            ok = true;
            let changed = !s.cancelled;
            s.cancelled = true;
            changed
        });
        ok
    }

    /// Enters the point of no return; false when already cancelled.
    pub fn pass(&self) -> bool {
        let mut ok = false;
        self.tx.send_if_modified(|s| {
            if !s.cancelled {
                s.passed = true;
                ok = true;
            }
            false
        });
        ok
    }

    pub fn is_cancelled(&self) -> bool {
        self.tx.borrow().cancelled
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|s| s.cancelled).await;
    }

    /// Sleeps `d`; false when cancelled meanwhile.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.is_cancelled(),
            _ = self.cancelled() => false,
        }
    }
}

/// How an update ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It rests in this status (reported); nothing more until the target changes.
    Finished(Status),
    /// It failed for a reason that may pass (a registry down for long, no space):
    /// reported, to be tried again after this long if the target is still the same.
    RetryLater(Duration),
    /// A newer target arrived before `run`.
    Cancelled,
}

/// Everything an update needs, shared with the main loop.
pub struct Ctx {
    pub runtime: Client,
    pub gateway: Gateway,
    pub cred: Credential,
    pub downloader: Downloader,
    pub reporter: Reporter,
    pub parallel_downloads: usize,
    /// How often the runtime's progress is polled.
    pub poll: Duration,
    /// Delay before retrying an update whose downloads failed ([`Outcome::RetryLater`]).
    pub retry_later: Duration,
    /// The controller's keys; `None` installs unsigned targets (`--allow-unsigned-revisions`).
    pub revision_keys: Option<crate::signature::RevisionKeys>,
}

/// Runtime errors worth waiting out: the runtime restarting, or busy (503).
pub fn runtime_transient(e: &ClientError) -> bool {
    matches!(e, ClientError::Connect { .. } | ClientError::Decode(_))
        || e.status() == Some(StatusCode::SERVICE_UNAVAILABLE)
}

enum RtError {
    Cancelled,
    Api(ClientError),
}

/// Calls the runtime until it answers something other than a transient error.
async fn rt<T, F, Fut>(what: &str, gate: &Gate, mut f: F) -> Result<T, RtError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if runtime_transient(&e) => {
                let d = backoff.next_delay();
                if backoff.attempts() == 1 {
                    tracing::warn!("runtime: {what}: {e}; retrying");
                } else {
                    tracing::debug!("runtime: {what}: {e}; retrying in {d:?}");
                }
                if !gate.sleep(d).await {
                    return Err(RtError::Cancelled);
                }
            }
            Err(e) => return Err(RtError::Api(e)),
        }
    }
}

fn failed_report(rev: &str, status: Status, reason: String, bytes: (u64, u64)) -> UpdateReport {
    UpdateReport {
        revision: rev.to_owned(),
        status,
        progress: 100,
        reason: Some(super::report::reason_code(status, &reason).to_string()),
        message: Some(reason),
        downloaded_bytes: bytes.0,
        total_bytes: bytes.1,
    }
}

fn simple_report(rev: &str, status: Status, msg: &str, bytes: (u64, u64)) -> UpdateReport {
    UpdateReport {
        revision: rev.to_owned(),
        status,
        progress: status.progress_percent(),
        message: Some(msg.to_owned()),
        reason: None,
        downloaded_bytes: bytes.0,
        total_bytes: bytes.1,
    }
}

/// Carries out one target revision; see the module doc.
pub async fn handle_target(ctx: Arc<Ctx>, target: Target, gate: Arc<Gate>) -> Outcome {
    let out = handle(&ctx, &target, &gate).await;
    // At rest, nothing needs the spool; a retry or a newer target may resume from it.
    if let Outcome::Finished(_) = out {
        ctx.downloader.clear_spool().await;
    }
    out
}

async fn handle(ctx: &Ctx, target: &Target, gate: &Gate) -> Outcome {
    let rev = target.revision.clone();
    if !state_matches(target) {
        let reason = format!(
            "the gateway sent a state that does not match its digest {}",
            target.state_digest
        );
        tracing::error!("{rev}: {reason}");
        ctx.reporter
            .set_update(failed_report(&rev, Status::Wontgo, reason, (0, 0)));
        return Outcome::RetryLater(ctx.retry_later);
    }
    if let Some(keys) = &ctx.revision_keys
        && let Err(why) = keys.verify(&ctx.cred.namespace, target)
    {
        let reason = format!("refused: the revision's signature is not valid: {why}");
        return give_up(ctx, &rev, reason, (0, 0), false);
    }
    let mut bytes = (0u64, 0u64);
    let mut downloads = 0;
    let mut busy_logged = false;
    loop {
        if gate.is_cancelled() {
            return Outcome::Cancelled;
        }
        let steps = match rt("list revisions", gate, || ctx.runtime.steps()).await {
            Ok(v) => v,
            Err(RtError::Cancelled) => return Outcome::Cancelled,
            Err(RtError::Api(e)) => {
                tracing::error!("{rev}: the runtime refused to list revisions: {e}");
                return Outcome::RetryLater(ctx.retry_later);
            }
        };
        let plan = plan(&rev, &steps);
        tracing::debug!(rev, ?plan, "plan");
        match plan {
            Plan::Done => {
                tracing::info!("{rev} is committed and running");
                report_rest(ctx, &rev, None, bytes).await;
                return Outcome::Finished(Status::Done);
            }
            Plan::Failed(st) => {
                tracing::warn!(
                    "{rev} ended in {st} on an earlier try; not trying it again until the target changes"
                );
                report_rest(ctx, &rev, None, bytes).await;
                return Outcome::Finished(st);
            }
            Plan::Follow => {
                // The runtime owns the try now; nothing to cancel.
                gate.pass();
                return follow(ctx, &rev, None, bytes).await;
            }
            Plan::WaitBusy(other) => {
                if !busy_logged {
                    tracing::info!("{rev}: waiting for the runtime to finish updating {other}");
                    busy_logged = true;
                }
                ctx.reporter.set_update(simple_report(
                    &rev,
                    Status::Queued,
                    &format!("waiting for the update of {other} to finish"),
                    bytes,
                ));
                if !gate.sleep(Duration::from_secs(2)).await {
                    return Outcome::Cancelled;
                }
            }
            Plan::Run | Plan::Install => {
                if plan == Plan::Install && bytes == (0, 0) {
                    ctx.reporter.set_update(simple_report(
                        &rev,
                        Status::Queued,
                        "installing",
                        bytes,
                    ));
                }
                // PUT is idempotent: for an installed revision it only checks that the
                // device's state under this name is the target's, byte for byte.
                let state = target.state.as_bytes().to_vec();
                match rt("install", gate, || {
                    ctx.runtime.put_step(&rev, state.clone())
                })
                .await
                {
                    Ok(_) => {}
                    Err(RtError::Cancelled) => return Outcome::Cancelled,
                    Err(RtError::Api(e)) => {
                        let missing = match &e {
                            ClientError::Api { body, .. } => missing_objects(body),
                            _ => None,
                        };
                        match (e.status(), missing) {
                            (Some(StatusCode::UNPROCESSABLE_ENTITY), Some(m)) if !m.is_empty() => {
                                downloads += 1;
                                if downloads > 2 {
                                    let reason = format!(
                                        "{} objects still missing after downloading them",
                                        m.len()
                                    );
                                    return give_up(ctx, &rev, reason, bytes, true);
                                }
                                match download_missing(ctx, target, &m, gate, &mut bytes).await {
                                    Ok(()) => continue,
                                    Err(DlFail::Cancelled) => return Outcome::Cancelled,
                                    Err(DlFail::Failed(reason)) => {
                                        return give_up(ctx, &rev, reason, bytes, true);
                                    }
                                }
                            }
                            (Some(StatusCode::INSUFFICIENT_STORAGE), _) => {
                                return give_up(ctx, &rev, e.to_string(), bytes, true);
                            }
                            (Some(StatusCode::CONFLICT), _) => {
                                let reason = format!(
                                    "revision {rev} exists on the device with a different state: {e}"
                                );
                                return give_up(ctx, &rev, reason, bytes, false);
                            }
                            (Some(s), _) if s.is_client_error() => {
                                // Invalid state: the same bytes will be refused again.
                                return give_up(ctx, &rev, e.to_string(), bytes, false);
                            }
                            _ => return give_up(ctx, &rev, e.to_string(), bytes, true),
                        }
                    }
                }
                // Installed. Note the progress now, to tell the try's progress from the
                // previous one's after `run`.
                let before = read_progress(&ctx.runtime, &rev).await;
                if !gate.pass() {
                    return Outcome::Cancelled;
                }
                match ctx.runtime.run(&rev).await {
                    Ok(_) => {
                        tracing::info!(
                            "{rev}: running (the runtime tries it and commits or rolls back)"
                        );
                        return follow(ctx, &rev, before, bytes).await;
                    }
                    Err(e) if e.status() == Some(StatusCode::CONFLICT) => {
                        // Another try started meanwhile: plan again once it rests.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
                        // Collected between install and run: plan again (installs it).
                    }
                    Err(e) if runtime_transient(&e) => {
                        // Maybe it ran, maybe not: /steps tells, on the next round.
                        tracing::warn!("{rev}: run: {e}; checking again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return give_up(ctx, &rev, format!("run: {e}"), bytes, false),
                }
            }
        }
    }
}

/// Reports a failure before the runtime ran anything (`WONTGO`).
fn give_up(ctx: &Ctx, rev: &str, reason: String, bytes: (u64, u64), later: bool) -> Outcome {
    if later {
        tracing::error!(
            "{rev}: {reason}; trying again in {:?} unless the target changes",
            ctx.retry_later
        );
    } else {
        tracing::error!("{rev}: {reason}");
    }
    ctx.reporter
        .set_update(failed_report(rev, Status::Wontgo, reason, bytes));
    if later {
        Outcome::RetryLater(ctx.retry_later)
    } else {
        Outcome::Finished(Status::Wontgo)
    }
}

async fn read_progress(c: &Client, rev: &str) -> Option<Progress> {
    c.progress(rev).await.ok()
}

/// Forwards the runtime's progress of `rev` until it rests. `before` is the progress
/// seen before `run`: until it changes, what the runtime shows is the previous try's.
async fn follow(ctx: &Ctx, rev: &str, before: Option<Progress>, bytes: (u64, u64)) -> Outcome {
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match ctx.runtime.progress(rev).await {
            Ok(p) => {
                backoff.reset();
                // The try has not written its first progress yet.
                let stale =
                    before.as_ref() == Some(&p) && started.elapsed() < Duration::from_secs(10);
                if !stale {
                    let rests = !p.status.is_active() && p.status != Status::Queued;
                    if rests {
                        tracing::info!("{rev}: {} {}", p.status, p.status_msg);
                        report_rest(ctx, rev, Some(p.clone()), bytes).await;
                        return Outcome::Finished(p.status);
                    }
                    ctx.reporter
                        .set_update(update_from_progress(rev, &p, bytes));
                }
            }
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
                let reason = format!("revision {rev} disappeared from the runtime during its try");
                ctx.reporter
                    .set_update(failed_report(rev, Status::Error, reason, bytes));
                return Outcome::RetryLater(ctx.retry_later);
            }
            Err(e) => {
                // A restarting runtime marks an interrupted try ERROR: keep asking.
                let d = backoff.next_delay();
                tracing::debug!("{rev}: progress: {e}; retrying in {d:?}");
                tokio::time::sleep(d).await;
                continue;
            }
        }
        tokio::time::sleep(ctx.poll).await;
    }
}

/// The final report of a revision at rest: its status, and with it the committed
/// revision and the containers (one change, so one report).
async fn report_rest(ctx: &Ctx, rev: &str, p: Option<Progress>, bytes: (u64, u64)) {
    let p = match p {
        Some(p) => Some(p),
        None => read_progress(&ctx.runtime, rev).await,
    };
    let update = match p {
        Some(p) => update_from_progress(rev, &p, bytes),
        None => simple_report(rev, Status::Done, "committed", bytes),
    };
    let steps = ctx.runtime.steps().await.ok();
    let containers = ctx.runtime.containers().await.ok();
    ctx.reporter.update(|r| {
        if let Some(s) = &steps {
            r.current_revision = committed_revision(s);
        }
        if let Some(c) = &containers {
            r.containers = containers_from_runtime(c);
        }
        r.update = Some(update);
    });
}

enum DlFail {
    Cancelled,
    Failed(String),
}

/// Downloads the missing objects and uploads each to the runtime, `--parallel-downloads`
/// at a time, reporting `DOWNLOADING` with byte counts as they go.
async fn download_missing(
    ctx: &Ctx,
    target: &Target,
    missing: &[String],
    gate: &Gate,
    bytes: &mut (u64, u64),
) -> Result<(), DlFail> {
    let rev = target.revision.as_str();
    let state = State::parse(target.state.as_bytes())
        .map_err(|e| DlFail::Failed(format!("invalid state: {e}")))?;
    let needed =
        needed_objects(missing, &target.blobs, &object_sizes(&state)).map_err(DlFail::Failed)?;
    let mut fetches = Vec::new();
    for n in &needed {
        let source = match &n.origin {
            Origin::Registry(b) => Source::Registry {
                base: reqwest::Url::parse(&b.registry).map_err(|e| {
                    DlFail::Failed(format!("bad registry URL {:?}: {e}", b.registry))
                })?,
                repository: b.repository.clone(),
            },
            Origin::Gateway => Source::Gateway {
                url: ctx
                    .gateway
                    .file_url(&ctx.cred, &n.hex)
                    .map_err(|e| DlFail::Failed(e.to_string()))?,
                credential: ctx.cred.credential.clone(),
            },
        };
        fetches.push(Fetch {
            hex: n.hex.clone(),
            size: n.size,
            source,
        });
    }
    let total: u64 = needed.iter().map(|n| n.size).sum();
    tracing::info!(
        "{rev}: downloading {} objects, {total} bytes ({} from registries)",
        needed.len(),
        needed
            .iter()
            .filter(|n| matches!(n.origin, Origin::Registry(_)))
            .count()
    );
    let done = AtomicU64::new(0);
    let report = |done: u64| {
        let mut u = simple_report(rev, Status::Downloading, "downloading", (done, total));
        u.progress = download_percent(done, total);
        u.message = Some(format!(
            "downloading {} objects: {done} of {total} bytes",
            needed.len()
        ));
        ctx.reporter.set_update(u);
    };
    report(0);
    let done_ref = &done;
    // Owned fetches: a closure over references trips the compiler's lifetime inference
    // for futures that must be `Send` (tokio::spawn).
    let mut jobs = futures::stream::iter(fetches)
        .map(move |f| fetch_and_upload(ctx, f, done_ref))
        .buffer_unordered(ctx.parallel_downloads.max(1));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            r = jobs.next() => match r {
                None => break,
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    *bytes = (done.load(Ordering::Relaxed), total);
                    return Err(DlFail::Failed(e));
                }
            },
            _ = tick.tick() => report(done.load(Ordering::Relaxed)),
            _ = gate.cancelled() => return Err(DlFail::Cancelled),
        }
    }
    *bytes = (total, total);
    report(total);
    Ok(())
}

async fn fetch_and_upload(ctx: &Ctx, f: Fetch, done: &AtomicU64) -> Result<(), String> {
    let path = ctx
        .downloader
        .download(&f, done)
        .await
        .map_err(|e| format!("download of {e}"))?;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match ctx.runtime.put_object_file(&path).await {
            Ok(_) => break,
            Err(e) if runtime_transient(&e) && backoff.attempts() < 8 => backoff.wait().await,
            Err(e) => {
                if e.status() == Some(StatusCode::UNPROCESSABLE_ENTITY) {
                    // The runtime hashed it and disagrees: the spool is no good.
                    let _ = tokio::fs::remove_file(&path).await;
                }
                return Err(format!("upload of sha256:{} to the runtime: {e}", f.hex));
            }
        }
    }
    let _ = tokio::fs::remove_file(&path).await;
    tracing::debug!(
        "sha256:{} ({} bytes) downloaded and uploaded",
        f.hex,
        f.size
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rev: &str, status: Status, committed: bool, running: bool) -> Step {
        Step {
            rev: rev.into(),
            status: Some(status),
            status_msg: None,
            committed,
            running,
            trying: false,
            factory: false,
        }
    }

    #[test]
    fn plans_follow_what_the_runtime_has() {
        use Status::*;
        assert_eq!(plan("r2", &[]), Plan::Install);
        let s = [step("r1", Done, true, true)];
        assert_eq!(plan("r1", &s), Plan::Done);
        assert_eq!(plan("r2", &s), Plan::Install);
        let s = [
            step("r1", Done, true, true),
            step("r2", Error, false, false),
        ];
        assert_eq!(plan("r2", &s), Plan::Failed(Error));
        let s = [
            step("r1", Done, true, true),
            step("r2", Wontgo, false, false),
        ];
        assert_eq!(plan("r2", &s), Plan::Failed(Wontgo));
        // Rolled away from, or installed and never run: run it.
        let s = [step("r1", Done, false, false), step("r2", Done, true, true)];
        assert_eq!(plan("r1", &s), Plan::Run);
        let s = [
            step("r1", Done, true, true),
            step("r2", Queued, false, false),
        ];
        assert_eq!(plan("r2", &s), Plan::Run);
        // Mid-try: follow our own, wait for another.
        let s = [
            step("r1", Done, true, true),
            step("r2", Testing, false, true),
        ];
        assert_eq!(plan("r2", &s), Plan::Follow);
        assert_eq!(plan("r3", &s), Plan::WaitBusy("r2".into()));
        let mut trying = step("r2", Queued, false, false);
        trying.trying = true;
        assert_eq!(plan("r3", &[trying]), Plan::WaitBusy("r2".into()));
        // A committed revision that a later failed re-run left in ERROR still runs.
        let s = [step("r1", Error, true, true)];
        assert_eq!(plan("r1", &s), Plan::Done);
    }

    #[test]
    fn missing_objects_split_into_registry_blobs_and_gateway_files() {
        let h = |c: char| c.to_string().repeat(64);
        let blob = |c: char, size| BlobSource {
            digest: format!("sha256:{}", h(c)),
            size,
            registry: "http://127.0.0.1:5000".into(),
            repository: "team/app".into(),
        };
        let body = ErrorBody {
            error: "WONTGO".into(),
            status: Some(Status::Wontgo),
            missing: vec![
                format!("sha256:{}", h('a')),
                h('b'),
                format!("sha256:{}", h('a')),
            ],
            ..ErrorBody::default()
        };
        let missing = missing_objects(&body).unwrap();
        let sizes: BTreeMap<String, u64> = [(h('a'), 10), (h('b'), 20), (h('c'), 30)].into();
        let n = needed_objects(&missing, &[blob('a', 10), blob('c', 30)], &sizes).unwrap();
        assert_eq!(n.len(), 2, "deduplicated");
        assert_eq!(n[0].origin, Origin::Registry(blob('a', 10)));
        assert_eq!(
            (n[1].hex.as_str(), n[1].size, &n[1].origin),
            (h('b').as_str(), 20, &Origin::Gateway)
        );
        // The state's size wins over the blob list's.
        let n = needed_objects(&[h('a')], &[blob('a', 99)], &sizes).unwrap();
        assert_eq!(n[0].size, 10);
        assert!(needed_objects(&[h('d')], &[], &sizes).is_err());
        assert!(needed_objects(&["../x".into()], &[], &sizes).is_err());
        let bad = ErrorBody {
            error: "bad".into(),
            ..ErrorBody::default()
        };
        assert_eq!(missing_objects(&bad), None);
    }

    #[test]
    fn state_digests_are_checked() {
        let state = r##"{"#spec":"edgevisor-state@1","containers":[]}"##.to_string();
        let mut t = Target {
            revision: "r".into(),
            architecture: "amd64".into(),
            state_digest: format!("sha256:{}", hex::encode(Sha256::digest(state.as_bytes()))),
            state,
            blobs: vec![],
            signature: None,
        };
        assert!(state_matches(&t));
        t.state.push(' ');
        assert!(!state_matches(&t));
    }

    #[tokio::test]
    async fn the_gate_cancels_only_before_the_point_of_no_return() {
        let g = Gate::default();
        assert!(g.cancel());
        assert!(!g.pass(), "a cancelled update must not run");
        tokio::time::timeout(Duration::from_secs(1), g.cancelled())
            .await
            .unwrap();
        assert!(!g.sleep(Duration::from_secs(60)).await);

        let g = Arc::new(Gate::default());
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.sleep(Duration::from_secs(60)).await })
        };
        tokio::task::yield_now().await;
        assert!(g.cancel());
        assert!(!waiter.await.unwrap(), "sleep wakes on cancel");

        let g = Gate::default();
        assert!(g.pass());
        assert!(!g.cancel(), "past run, an update is only watched");
        assert!(!g.is_cancelled());
    }
}
