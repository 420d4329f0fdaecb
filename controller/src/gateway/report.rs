//! From what a device reports to what `Device.status` shows. Pure: the gateway calls these
//! with the cached status and the time, and writes what they return.
use edgevisor_crds::common::condition::{ONLINE, READY, UP_TO_DATE};
use edgevisor_crds::device::{ContainerStatus, HistoryEntry, UpdateProgress};
use edgevisor_crds::{DeviceStatus, UpdateStatus};
use edgevisor_protocol::gateway::{ContainerReport, DeviceReport};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::status::merge_conditions;

const HISTORY: usize = 10;
/// Progress is shown in steps this big: finer steps would be a write each.
const PROGRESS_STEP: i32 = 25;

fn container(c: &ContainerReport) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        state: c.state.clone(),
        ready: c.ready,
        restarts: i32::try_from(c.restarts).unwrap_or(i32::MAX),
        exit_code: c.exit_code,
        message: c.message.clone(),
    }
}

/// The fields of a Device's status the gateway owns (field manager `edgevisor-gateway`);
/// each write applies all of them, so none is dropped by server-side apply.
pub fn owned(status: &DeviceStatus) -> DeviceStatus {
    DeviceStatus {
        current_revision: status.current_revision.clone(),
        update: status.update.clone(),
        history: status.history.clone(),
        containers: status.containers.clone(),
        last_seen: status.last_seen.clone(),
        conditions: status
            .conditions
            .iter()
            .filter(|c| [ONLINE, READY, UP_TO_DATE].contains(&c.type_.as_str()))
            .cloned()
            .collect(),
        ..Default::default()
    }
}

/// The report merged into the previous status, as of `now`. `target` is the Device's
/// `spec.revision`.
pub fn merge(
    previous: &DeviceStatus,
    report: &DeviceReport,
    target: Option<&str>,
    now: Timestamp,
) -> DeviceStatus {
    let mut next = owned(previous);
    if let Some(current) = &report.current_revision {
        next.current_revision = Some(current.clone());
    }
    if let Some(u) = &report.update {
        let status = u.status;
        let before = previous
            .update
            .as_ref()
            .filter(|p| p.revision == u.revision);
        let started_at = before
            .and_then(|p| p.started_at.clone())
            .unwrap_or(Time(now));
        let finished_at = status.is_final().then(|| {
            before
                .filter(|p| p.status == status)
                .and_then(|p| p.finished_at.clone())
                .unwrap_or(Time(now))
        });
        let ended_now = status.is_final() && before.is_none_or(|p| p.status != status);
        if ended_now {
            next.history.insert(
                0,
                HistoryEntry {
                    revision: u.revision.clone(),
                    status,
                    message: u.message.clone().or_else(|| u.reason.clone()),
                    finished_at: finished_at.clone(),
                },
            );
            next.history.truncate(HISTORY);
        }
        next.update = Some(UpdateProgress {
            revision: u.revision.clone(),
            status,
            progress: i32::from(u.progress.min(100)),
            message: u.message.clone(),
            reason: u.reason.clone(),
            downloaded_bytes: (u.total_bytes > 0)
                .then(|| i64::try_from(u.downloaded_bytes).unwrap_or(i64::MAX)),
            total_bytes: (u.total_bytes > 0)
                .then(|| i64::try_from(u.total_bytes).unwrap_or(i64::MAX)),
            started_at: Some(started_at),
            finished_at,
        });
    }
    next.containers = report.containers.iter().map(container).collect();
    alive(&mut next, target, now);
    next
}

/// An update that ended, for the metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    /// `DONE`, `WONTGO` or `ERROR`.
    pub outcome: &'static str,
    /// Why it failed (the device's reason, `Unknown` if it gave none); `None` when it did not.
    pub failure: Option<String>,
    /// From its start to its end, when both are known.
    pub seconds: Option<f64>,
}

/// The update `next` shows, if it ended since `previous` (which did not show that revision
/// in that final status): counted once, however often the device repeats it.
pub fn ended(previous: &DeviceStatus, next: &DeviceStatus) -> Option<Ended> {
    let u = next.update.as_ref()?;
    let before = previous
        .update
        .as_ref()
        .filter(|p| p.revision == u.revision);
    if before.is_some_and(|p| p.status == u.status) {
        return None;
    }
    let outcome = match u.status {
        UpdateStatus::Done => "DONE",
        UpdateStatus::Wontgo => "WONTGO",
        UpdateStatus::Error => "ERROR",
        _ => return None,
    };
    let seconds = match (&u.started_at, &u.finished_at) {
        (Some(start), Some(end)) => {
            Some((end.0.as_millisecond() - start.0.as_millisecond()).max(0) as f64 / 1000.0)
        }
        _ => None,
    };
    Some(Ended {
        outcome,
        failure: u
            .status
            .is_failure()
            .then(|| u.reason.clone().unwrap_or_else(|| "Unknown".to_string())),
        seconds,
    })
}

/// Whether the status says the device is online.
pub fn online(status: &DeviceStatus) -> bool {
    crate::views::condition_true(&status.conditions, ONLINE)
}

/// Marks the status as heard from now: `lastSeen`, `Online`, and the conditions derived from
/// what the device runs.
pub fn alive(status: &mut DeviceStatus, target: Option<&str>, now: Timestamp) {
    status.last_seen = Some(Time(now));
    let ready = !status.containers.is_empty() && status.containers.iter().all(|c| c.ready);
    let not_ready = status
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>();
    let up_to_date = target.is_some() && status.current_revision.as_deref() == target;
    status.conditions = merge_conditions(
        &status.conditions,
        vec![
            (
                ONLINE,
                true,
                "Heartbeat",
                "the device is polling its gateway".into(),
            ),
            (
                READY,
                ready,
                if ready {
                    "ContainersReady"
                } else {
                    "ContainersNotReady"
                },
                if ready {
                    "every container reached its goal".into()
                } else if status.containers.is_empty() {
                    "no containers running".into()
                } else {
                    format!("not ready: {}", not_ready.join(", "))
                },
            ),
            (
                UP_TO_DATE,
                up_to_date,
                if up_to_date {
                    "RunsTarget"
                } else {
                    "NotOnTarget"
                },
                match (target, status.current_revision.as_deref()) {
                    (None, _) => "no target revision".into(),
                    (Some(t), Some(c)) if t == c => format!("runs {t}"),
                    (Some(t), Some(c)) => format!("runs {c}, target {t}"),
                    (Some(t), None) => format!("runs nothing yet, target {t}"),
                },
            ),
        ],
        None,
        now,
    );
}

/// What a user sees of a status in `kubectl get`/`describe`: a write is due when this
/// changes. Byte counts and fine progress ride along with writes, they do not cause them.
#[derive(Debug, PartialEq)]
pub struct Visible<'a> {
    current: Option<&'a str>,
    update: Option<VisibleUpdate<'a>>,
    containers: Vec<(&'a str, &'a str, bool, i32, Option<i32>)>,
}

#[derive(Debug, PartialEq)]
struct VisibleUpdate<'a> {
    revision: &'a str,
    status: UpdateStatus,
    progress_step: i32,
    message: Option<&'a str>,
    reason: Option<&'a str>,
}

pub fn visible(status: &DeviceStatus) -> Visible<'_> {
    Visible {
        current: status.current_revision.as_deref(),
        update: status.update.as_ref().map(|u| VisibleUpdate {
            revision: u.revision.as_str(),
            status: u.status,
            progress_step: u.progress / PROGRESS_STEP,
            message: u.message.as_deref(),
            reason: u.reason.as_deref(),
        }),
        containers: status
            .containers
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.state.as_str(),
                    c.ready,
                    c.restarts,
                    c.exit_code,
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgevisor_protocol::gateway::UpdateReport;
    use edgevisor_protocol::lifecycle::Status;

    fn report(status: Status, progress: u8, downloaded: u64) -> DeviceReport {
        DeviceReport {
            current_revision: Some("web-1".into()),
            update: Some(UpdateReport {
                revision: "web-2".into(),
                status,
                progress,
                message: Some(format!("{status:?}")),
                reason: None,
                downloaded_bytes: downloaded,
                total_bytes: 1000,
            }),
            containers: vec![ContainerReport {
                name: "app".into(),
                state: "running".into(),
                ready: true,
                restarts: 0,
                exit_code: None,
                message: None,
            }],
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn byte_counts_do_not_make_a_write_but_status_changes_do() {
        let s0 = merge(
            &DeviceStatus::default(),
            &report(Status::Downloading, 10, 100),
            Some("web-2"),
            at(0),
        );
        let s1 = merge(
            &s0,
            &report(Status::Downloading, 12, 120),
            Some("web-2"),
            at(1),
        );
        assert_eq!(visible(&s0), visible(&s1));
        assert_eq!(s1.update.as_ref().unwrap().downloaded_bytes, Some(120));
        let s2 = merge(
            &s1,
            &report(Status::Downloading, 60, 600),
            Some("web-2"),
            at(2),
        );
        assert_ne!(visible(&s1), visible(&s2));
        let s3 = merge(
            &s2,
            &report(Status::Testing, 90, 1000),
            Some("web-2"),
            at(3),
        );
        assert_ne!(visible(&s2), visible(&s3));
        // The start time is the first report's.
        assert_eq!(s3.update.as_ref().unwrap().started_at, Some(Time(at(0))));
    }

    #[test]
    fn an_ended_update_goes_into_history_once_and_conditions_follow() {
        let mut done = report(Status::Done, 100, 1000);
        done.current_revision = Some("web-2".into());
        let s0 = merge(
            &DeviceStatus::default(),
            &report(Status::Testing, 90, 1000),
            Some("web-2"),
            at(0),
        );
        assert!(s0.history.is_empty());
        let s1 = merge(&s0, &done, Some("web-2"), at(5));
        let s2 = merge(&s1, &done, Some("web-2"), at(9));
        assert_eq!(s2.history.len(), 1);
        assert_eq!(s2.history[0].status, UpdateStatus::Done);
        assert_eq!(s2.update.as_ref().unwrap().finished_at, Some(Time(at(5))));
        let cond = |s: &DeviceStatus, t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| c.status.clone())
        };
        assert_eq!(cond(&s0, UP_TO_DATE).as_deref(), Some("False"));
        assert_eq!(cond(&s2, UP_TO_DATE).as_deref(), Some("True"));
        assert_eq!(cond(&s2, ONLINE).as_deref(), Some("True"));
        assert_eq!(cond(&s2, READY).as_deref(), Some("True"));
        assert_eq!(s2.last_seen, Some(Time(at(9))));
        // The metrics see the end once, with its duration; not the repeats, not progress.
        assert_eq!(ended(&DeviceStatus::default(), &s0), None);
        assert_eq!(
            ended(&s0, &s1),
            Some(Ended {
                outcome: "DONE",
                failure: None,
                seconds: Some(5.0)
            })
        );
        assert_eq!(ended(&s1, &s2), None);
        let mut failed = report(Status::Error, 70, 1000);
        failed.update.as_mut().unwrap().reason = Some("ContainerExited".into());
        let s3 = merge(&s0, &failed, Some("web-2"), at(7));
        let e = ended(&s0, &s3).expect("a failure ends the update");
        assert_eq!(
            (e.outcome, e.failure.as_deref()),
            ("ERROR", Some("ContainerExited"))
        );
    }

    #[test]
    fn history_is_bounded() {
        let mut s = DeviceStatus::default();
        for i in 0..15u8 {
            let mut r = report(Status::Error, 100, 0);
            r.update.as_mut().unwrap().revision = format!("web-{i}");
            s = merge(&s, &r, None, at(i64::from(i)));
        }
        assert_eq!(s.history.len(), HISTORY);
        assert_eq!(s.history[0].revision, "web-14");
    }
}
