//! What the device tells the gateway, and when.
//!
//! Every part of the agent writes into one desired [`DeviceReport`] (a `watch` channel);
//! one task, [`run_reporter`], sends it. The gateway writes `Device.status` from these
//! reports, so they must stay few: a report goes out only when something a user would
//! see changed ([`urgency`]), progress-only changes at most every `--status-interval-ms`,
//! and a report that could not be delivered is retried with backoff, always sending the
//! newest picture rather than a queue of old ones.

use std::time::{Duration, Instant};

use edgevisor_protocol::control::{self, Container, RunState, Step};
use tokio::sync::watch;

use super::backoff::Backoff;
use super::credential::Credential;
use super::gateway::{Gateway, GatewayError};
use edgevisor_protocol::gateway::{
    ContainerReport, DeviceReport, MAX_CONTAINERS, MAX_MESSAGE, UpdateReport, is_dns_label,
};
use edgevisor_protocol::lifecycle::{Progress, Status};

/// How soon a changed report must go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// Nothing changed.
    Same,
    /// Only progress moved (percent, bytes, message): throttled.
    Soon,
    /// A status, revision, reason or container changed, or nothing was sent yet.
    Now,
}

/// Compares what was last sent with what is to be sent. Pure.
pub fn urgency(last: Option<&DeviceReport>, next: &DeviceReport) -> Urgency {
    let Some(last) = last else {
        return Urgency::Now;
    };
    if last == next {
        return Urgency::Same;
    }
    if last.current_revision != next.current_revision || last.containers != next.containers {
        return Urgency::Now;
    }
    match (&last.update, &next.update) {
        (Some(a), Some(b))
            if a.revision == b.revision && a.status == b.status && a.reason == b.reason =>
        {
            Urgency::Soon
        }
        _ => Urgency::Now,
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary, control characters (but newline
/// and tab) replaced, so the gateway's checks never refuse a whole report over one field.
pub fn clean_text(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() && c != '\n' && c != '\t' {
            ' '
        } else {
            c
        };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Makes a report pass [`DeviceReport::validate`]: bounded texts and counts, and a
/// revision name the gateway accepts (revisions installed by hand with `evctl` need not
/// be DNS labels; they are left out rather than failing the report).
pub fn sanitize(mut r: DeviceReport) -> DeviceReport {
    if r.current_revision
        .as_deref()
        .is_some_and(|c| !is_dns_label(c))
    {
        r.current_revision = None;
    }
    if let Some(u) = &mut r.update {
        u.progress = u.progress.min(100);
        if u.total_bytes > 0 {
            u.downloaded_bytes = u.downloaded_bytes.min(u.total_bytes);
        }
        for s in [&mut u.message, &mut u.reason].into_iter().flatten() {
            *s = clean_text(s, MAX_MESSAGE);
        }
    }
    if r.update
        .as_ref()
        .is_some_and(|u| !is_dns_label(&u.revision))
    {
        r.update = None;
    }
    r.containers.retain(|c| is_dns_label(&c.name));
    r.containers.truncate(MAX_CONTAINERS);
    for c in &mut r.containers {
        c.state = clean_text(&c.state, 32);
        if let Some(m) = &mut c.message {
            *m = clean_text(m, MAX_MESSAGE);
        }
    }
    r
}

/// `GET /containers` of the runtime → reports. `ready` is whether the container is at
/// its goal (running; healthy or signalled ready when it has such a check; or a job that
/// completed), which is what a user asks of "ready".
pub fn containers_from_runtime(list: &[Container]) -> Vec<ContainerReport> {
    let mut out: Vec<ContainerReport> = list
        .iter()
        .map(|c| {
            let message = match (c.state, c.last_exit) {
                (RunState::Backoff, Some(code)) => {
                    Some(format!("exited with code {code}; restarting"))
                }
                (RunState::Exited, Some(code)) => Some(format!("exited with code {code}")),
                _ => None,
            };
            ContainerReport {
                name: c.name.clone(),
                state: c.state.to_string(),
                ready: c.at_goal(),
                restarts: c.restarts,
                exit_code: c.last_exit,
                message,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The committed revision in `GET /steps`.
pub fn committed_revision(steps: &[Step]) -> Option<String> {
    control::committed(steps).map(|s| s.rev.clone())
}

/// Overall progress while the agent downloads: the runtime's `DOWNLOADING` is 10 % and
/// its next phase 40 %, so downloads fill 10..40 and the percentage never goes back.
pub fn download_percent(done: u64, total: u64) -> u8 {
    let lo = Status::Downloading.progress_percent();
    let hi = Status::Inprogress.progress_percent();
    if total == 0 {
        return lo;
    }
    let frac = done.min(total) as f64 / total as f64;
    let p = lo as f64 + (hi - lo - 1) as f64 * frac;
    (p as u8).clamp(lo, hi - 1)
}

/// A failure in one CamelCase word, as Kubernetes reasons are (`ContainerExited`,
/// `GoalTimeout`, …), from the sentence the runtime or the download gave; the sentence itself
/// goes into the message.
pub fn reason_code(status: Status, why: &str) -> &'static str {
    let w = why.to_ascii_lowercase();
    let has = |s: &str| w.contains(s);
    if has("signature") {
        "SignatureInvalid"
    } else if has("denied by the device's policy") {
        "PolicyDenied"
    } else if has("could not start") {
        "ContainerFailedToStart"
    } else if has("exited") {
        "ContainerExited"
    } else if has("did not become") || has("left its goal") || has("timed out") {
        "GoalTimeout"
    } else if has("restart") || has("interrupted") {
        "Interrupted"
    } else if has("space") {
        "NoSpace"
    } else if has("download") || has("registry") || has("upload") {
        "DownloadFailed"
    } else if has("missing") {
        "MissingObjects"
    } else if has("invalid") || has("digest") || has("does not match") {
        "InvalidState"
    } else if status == Status::Wontgo {
        "Refused"
    } else {
        "UpdateFailed"
    }
}

/// The runtime's progress of `rev` → an update report; `bytes` are what the agent
/// downloaded for it (downloaded, total). On failure the last log lines follow the
/// message, since they usually say why.
pub fn update_from_progress(rev: &str, p: &Progress, bytes: (u64, u64)) -> UpdateReport {
    let mut message = p.status_msg.clone();
    let tail: Vec<&String> = p.logs.iter().rev().take(5).rev().collect();
    if !tail.is_empty() {
        for l in tail {
            message.push_str("\n| ");
            message.push_str(l);
        }
    }
    UpdateReport {
        revision: rev.to_owned(),
        status: p.status,
        progress: p.progress.min(100),
        message: (!message.is_empty()).then(|| clean_text(&message, MAX_MESSAGE)),
        reason: p
            .reason
            .as_deref()
            .map(|r| reason_code(p.status, r).to_string()),
        downloaded_bytes: bytes.0,
        total_bytes: bytes.1,
    }
}

/// The handle every part of the agent writes the desired report through.
#[derive(Clone)]
pub struct Reporter {
    tx: watch::Sender<DeviceReport>,
}

impl Reporter {
    pub fn new() -> (Reporter, watch::Receiver<DeviceReport>) {
        let (tx, rx) = watch::channel(DeviceReport::default());
        (Reporter { tx }, rx)
    }

    /// Changes the desired report; wakes the sender only when it really changed.
    pub fn update(&self, f: impl FnOnce(&mut DeviceReport)) {
        self.tx.send_if_modified(|r| {
            let before = r.clone();
            f(r);
            *r != before
        });
    }

    pub fn set_update(&self, u: UpdateReport) {
        self.update(|r| r.update = Some(u));
    }

    pub fn current(&self) -> DeviceReport {
        self.tx.borrow().clone()
    }
}

/// Sends the desired report whenever [`urgency`] says so, until the channel closes.
pub async fn run_reporter(
    mut rx: watch::Receiver<DeviceReport>,
    gateway: Gateway,
    cred: Credential,
    interval: Duration,
) {
    let mut last: Option<DeviceReport> = None;
    let mut last_at = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut refused = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
    loop {
        let next = sanitize(rx.borrow_and_update().clone());
        match urgency(last.as_ref(), &next) {
            Urgency::Same => {
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Urgency::Soon => {
                let due = last_at + interval;
                if Instant::now() < due {
                    // Wake for a change that cannot wait, or when the interval is up.
                    tokio::select! {
                        _ = tokio::time::sleep_until(due.into()) => {}
                        r = rx.changed() => if r.is_err() { return },
                    }
                    continue;
                }
            }
            Urgency::Now => {}
        }
        match gateway.report(&cred, &next).await {
            Ok(()) => {
                tracing::debug!(?next, "reported");
                last = Some(next);
                last_at = Instant::now();
                backoff.reset();
                refused.reset();
            }
            Err(GatewayError::Rejected { status, message }) => {
                // The same report would be refused again: drop it and wait for the next.
                tracing::error!("the gateway refused a status report ({status}): {message}");
                last = Some(next);
                last_at = Instant::now();
            }
            Err(GatewayError::Refused { status, message }) => {
                let d = refused.next_delay();
                tracing::error!(
                    "credential refused: revoked or device deleted ({status}: {message}); \
                     status report retried in {d:?}"
                );
                tokio::time::sleep(d).await;
            }
            Err(GatewayError::Transient(e)) => {
                let d = backoff.next_delay();
                tracing::warn!("status report failed, retrying in {d:?}: {e}");
                tokio::time::sleep(d).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn failures_get_a_one_word_reason() {
        for (status, why, code) in [
            (
                Status::Error,
                "container app exited with code 3",
                "ContainerExited",
            ),
            (
                Status::Error,
                "container app could not start: no such file",
                "ContainerFailedToStart",
            ),
            (
                Status::Error,
                "container web did not become healthy within 60s",
                "GoalTimeout",
            ),
            (
                Status::Error,
                "interrupted by a runtime restart",
                "Interrupted",
            ),
            (
                Status::Wontgo,
                "download of sha256:ab: 404",
                "DownloadFailed",
            ),
            (
                Status::Wontgo,
                "objects missing: sha256:ab",
                "MissingObjects",
            ),
            (
                Status::Wontgo,
                "WONTGO: denied by the device's policy: containers[a].allowSetuid: no",
                "PolicyDenied",
            ),
            (
                Status::Wontgo,
                "refused: the revision's signature is not valid: the revision carries no signature",
                "SignatureInvalid",
            ),
            (Status::Wontgo, "something new", "Refused"),
            (Status::Error, "something new", "UpdateFailed"),
        ] {
            assert_eq!(reason_code(status, why), code, "{why}");
        }
    }

    fn upd(status: Status, progress: u8) -> UpdateReport {
        UpdateReport {
            revision: "web-1".into(),
            status,
            progress,
            message: None,
            reason: None,
            downloaded_bytes: 0,
            total_bytes: 0,
        }
    }

    fn report(u: Option<UpdateReport>) -> DeviceReport {
        DeviceReport {
            current_revision: Some("web-0".into()),
            update: u,
            containers: vec![],
        }
    }

    #[test]
    fn only_visible_changes_are_urgent() {
        let a = report(Some(upd(Status::Downloading, 10)));
        assert_eq!(urgency(None, &a), Urgency::Now);
        assert_eq!(urgency(Some(&a), &a.clone()), Urgency::Same);
        let mut b = a.clone();
        b.update.as_mut().unwrap().progress = 20;
        b.update.as_mut().unwrap().downloaded_bytes = 5;
        assert_eq!(urgency(Some(&a), &b), Urgency::Soon);
        let mut c = b.clone();
        c.update.as_mut().unwrap().status = Status::Inprogress;
        assert_eq!(urgency(Some(&b), &c), Urgency::Now);
        let mut d = c.clone();
        d.containers.push(ContainerReport {
            name: "app".into(),
            state: "running".into(),
            ready: true,
            restarts: 0,
            exit_code: None,
            message: None,
        });
        assert_eq!(urgency(Some(&c), &d), Urgency::Now);
        let mut e = d.clone();
        e.current_revision = Some("web-1".into());
        assert_eq!(urgency(Some(&d), &e), Urgency::Now);
        let mut f = e.clone();
        f.update.as_mut().unwrap().reason = Some("boom".into());
        assert_eq!(urgency(Some(&e), &f), Urgency::Now);
        assert_eq!(urgency(Some(&f), &report(None)), Urgency::Now);
    }

    #[test]
    fn sanitized_reports_pass_the_gateways_validation() {
        let mut u = upd(Status::Error, 250);
        u.message = Some(format!("bad\u{1b}[31m{}", "é".repeat(MAX_MESSAGE)));
        u.downloaded_bytes = 10;
        u.total_bytes = 5;
        let mut r = report(Some(u));
        r.current_revision = Some("v1.2_hand".into());
        for i in 0..100 {
            r.containers.push(ContainerReport {
                name: format!("c{i}"),
                state: "running".into(),
                ready: true,
                restarts: 0,
                exit_code: None,
                message: Some("\u{7}".into()),
            });
        }
        assert!(!r.validate().is_empty());
        let s = sanitize(r);
        assert!(s.validate().is_empty(), "{:?}", s.validate());
        assert_eq!(s.current_revision, None);
        assert_eq!(s.containers.len(), MAX_CONTAINERS);
        let m = s.update.unwrap().message.unwrap();
        assert!(m.starts_with("bad [31m") && m.len() <= MAX_MESSAGE);
    }

    #[test]
    fn runtime_containers_map_to_reports() {
        use edgevisor_protocol::control::Goal;
        let c = |name: &str, state, goal| Container::new(name, "r1", name, state, goal);
        let mut web = c("web", RunState::Running, Goal::Running);
        web.restarts = 2;
        let db = c("db", RunState::Running, Goal::Healthy);
        let mut sig = c("sig", RunState::Running, Goal::Ready);
        sig.ready = true;
        let mut job = c("job", RunState::Exited, Goal::Running);
        (job.completed, job.last_exit) = (true, Some(0));
        let mut crash = c("crash", RunState::Backoff, Goal::Running);
        (crash.last_exit, crash.restarts) = (Some(3), u32::MAX);
        let r = containers_from_runtime(&[web, db, sig, job, crash]);
        let by: std::collections::BTreeMap<_, _> = r.iter().map(|c| (c.name.as_str(), c)).collect();
        assert_eq!(r.len(), 5);
        assert!(by["web"].ready && by["web"].restarts == 2);
        assert_eq!(by["web"].state, "running");
        assert!(!by["db"].ready);
        assert!(by["sig"].ready);
        assert!(by["job"].ready && by["job"].exit_code == Some(0));
        assert!(!by["crash"].ready && by["crash"].restarts == u32::MAX);
        assert_eq!(
            by["crash"].message.as_deref(),
            Some("exited with code 3; restarting")
        );
        assert_eq!(r[0].name, "crash", "sorted by name");
    }

    #[test]
    fn committed_revision_and_download_percent() {
        let steps: Vec<Step> = serde_json::from_value(json!([
            {"rev": "a", "committed": false},
            {"rev": "b", "committed": true}
        ]))
        .unwrap();
        assert_eq!(committed_revision(&steps).as_deref(), Some("b"));
        assert_eq!(committed_revision(&[]), None);
        assert_eq!(download_percent(0, 0), 10);
        assert_eq!(download_percent(0, 100), 10);
        assert_eq!(download_percent(50, 100), 24);
        assert_eq!(download_percent(100, 100), 39);
        assert_eq!(download_percent(500, 100), 39);
    }

    #[test]
    fn failures_carry_their_last_log_lines() {
        let mut p = Progress::failed(
            Status::Error,
            "container app exited with code 3",
            (0..8).map(|i| format!("line {i}")).collect(),
        );
        p.progress = 100;
        let u = update_from_progress("web-2", &p, (7, 9));
        assert_eq!(u.status, Status::Error);
        assert_eq!(u.reason.as_deref(), Some("ContainerExited"));
        let m = u.message.unwrap();
        assert!(
            m.starts_with("container app exited with code 3\n| line 3\n"),
            "{m}"
        );
        assert!(m.ends_with("| line 7"));
        assert_eq!((u.downloaded_bytes, u.total_bytes), (7, 9));
    }
}
