//! What the plugin prints, from the objects as read. Pure.
use edgevisor_crds::common::condition::{ONLINE, READY, STALLED};
use edgevisor_crds::{Device, Fleet, UpdateStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::ResourceExt;

/// Where a Fleet's rollout stands, as `kubectl rollout status` reads a Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every device it could reach runs the update revision (exit 0).
    Complete(String),
    /// Aborted, stalled, or the template cannot be rendered (exit 1).
    Failed(String),
    /// Still moving, paused or waiting (exit 2 when not waiting for the end).
    InProgress(String),
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The rollout's outcome; a status older than the spec is still in progress.
pub fn outcome(fleet: &Fleet) -> Outcome {
    let Some(status) = fleet.status.as_ref() else {
        return Outcome::InProgress("waiting for the controller to see the fleet".into());
    };
    if status.observed_generation != fleet.metadata.generation {
        return Outcome::InProgress("waiting for the controller to see the latest spec".into());
    }
    let ready = condition(&status.conditions, READY);
    let message = ready.map(|c| c.message.clone()).unwrap_or_default();
    if let Some(stalled) = condition(&status.conditions, STALLED).filter(|c| c.status == "True") {
        return Outcome::Failed(format!("{}: {}", stalled.reason, stalled.message));
    }
    match ready {
        Some(c) if c.status == "True" => Outcome::Complete(message),
        Some(c) => Outcome::InProgress(format!("{}: {message}", c.reason)),
        None => Outcome::InProgress("waiting for the controller's first status".into()),
    }
}

/// A label selector as `kubectl -l` writes it.
pub fn selector_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

fn online(device: &Device) -> bool {
    device
        .status
        .as_ref()
        .and_then(|s| condition(&s.conditions, ONLINE))
        .is_some_and(|c| c.status == "True")
}

/// `DOWNLOADING 40%`, `DONE`, or `-`.
fn update_line(device: &Device) -> String {
    match device.status.as_ref().and_then(|s| s.update.as_ref()) {
        Some(u) if u.status.is_failure() || u.status == UpdateStatus::Done => {
            format!("{} {:?}", u.revision, u.status).to_uppercase()
        }
        Some(u) => format!("{} {:?} {}%", u.revision, u.status, u.progress).to_uppercase(),
        None => "-".into(),
    }
}

fn bar(done: i32, total: i32, width: usize) -> String {
    let filled = if total > 0 {
        usize::try_from(done.clamp(0, total)).unwrap_or(0) * width
            / usize::try_from(total).unwrap_or(1)
    } else {
        0
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// The live view of `rollout status`: revision, step, counts, per architecture, a progress bar,
/// the devices in flight and the failed ones with why.
pub fn rollout_view(fleet: &Fleet, devices: &[Device]) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let ns = fleet.namespace().unwrap_or_default();
    line(format!("Fleet:     {} (namespace {ns})", fleet.name_any()));
    let Some(s) = fleet.status.as_ref() else {
        line("Status:    not reconciled yet".into());
        return out;
    };
    let update = s.update_revision.as_deref().unwrap_or("-");
    line(format!(
        "Revision:  {update} (stable: {})",
        s.stable_revision.as_deref().unwrap_or("none")
    ));
    let steps = fleet.spec.strategy.steps.len();
    let step = match s.current_step.as_deref() {
        Some(n) if n.parse::<usize>().is_ok() => {
            format!("{} of {steps}", n.parse::<usize>().unwrap_or(0) + 1)
        }
        Some(word) => word.to_string(),
        None => "-".into(),
    };
    line(format!("Step:      {step}"));
    let status = match outcome(fleet) {
        Outcome::Complete(m) => format!("Complete: {m}"),
        Outcome::Failed(m) => format!("Failed: {m}"),
        Outcome::InProgress(m) => format!("In progress: {m}"),
    };
    line(format!("Status:    {status}"));
    let reachable = s.devices - s.unsupported;
    line(format!(
        "Devices:   {} {}/{reachable} updated, {} updating, {} failed, {} offline, {} unsupported",
        bar(s.updated, reachable, 20),
        s.updated,
        s.updating,
        s.failed,
        s.offline,
        s.unsupported
    ));
    for a in &s.architectures {
        line(format!(
            "  {:<9} {}/{} updated",
            a.architecture.as_str(),
            a.updated,
            a.devices
        ));
    }
    let mut in_flight = Vec::new();
    let mut failed = Vec::new();
    for d in devices {
        let Some(u) = d.status.as_ref().and_then(|s| s.update.as_ref()) else {
            continue;
        };
        if u.revision != update {
            continue;
        }
        if u.status.is_failure() {
            failed.push(format!(
                "  {}: {} {}",
                d.name_any(),
                u.reason.as_deref().unwrap_or("Failed"),
                u.message.as_deref().unwrap_or_default()
            ));
        } else if u.status != UpdateStatus::Done {
            in_flight.push(format!("  {} {}", d.name_any(), update_line(d)));
        }
    }
    if !in_flight.is_empty() {
        line("In flight:".into());
        in_flight.into_iter().for_each(&mut line);
    }
    if !failed.is_empty() {
        line("Failed:".into());
        failed.into_iter().for_each(&mut line);
    }
    out
}

/// `get devices`: one line per device.
pub fn devices_table(devices: &[Device]) -> String {
    let rows: Vec<[String; 6]> = devices
        .iter()
        .map(|d| {
            let status = d.status.as_ref();
            [
                d.name_any(),
                status
                    .and_then(|s| s.architecture)
                    .map(|a| a.as_str().to_string())
                    .unwrap_or_else(|| "-".into()),
                d.spec.revision.clone().unwrap_or_else(|| "-".into()),
                status
                    .and_then(|s| s.current_revision.clone())
                    .unwrap_or_else(|| "-".into()),
                update_line(d),
                if online(d) { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    let header = ["NAME", "ARCH", "TARGET", "CURRENT", "UPDATE", "ONLINE"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `describe device`: its target and what it runs, the update in progress or its last failure
/// and why, its containers, and its update history.
pub fn describe_device(device: &Device) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "Name:       {} (namespace {})",
        device.name_any(),
        device.namespace().unwrap_or_default()
    ));
    let labels: Vec<String> = device
        .labels()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    line(format!("Labels:     {}", labels.join(",")));
    line(format!(
        "Target:     {}{}{}",
        device.spec.revision.as_deref().unwrap_or("-"),
        if device.spec.paused { " (held)" } else { "" },
        device
            .spec
            .pinned_revision
            .as_deref()
            .map(|p| format!(" (pinned to {p})"))
            .unwrap_or_default()
    ));
    let Some(s) = device.status.as_ref() else {
        line("Status:     never reported".into());
        return out;
    };
    line(format!(
        "Running:    {}",
        s.current_revision.as_deref().unwrap_or("-")
    ));
    line(format!(
        "Online:     {}{}",
        if online(device) { "yes" } else { "no" },
        s.last_seen
            .as_ref()
            .map(|t| format!(" (last seen {})", t.0))
            .unwrap_or_default()
    ));
    if let Some(a) = s.architecture {
        line(format!("Arch:       {}", a.as_str()));
    }
    if let Some(u) = &s.update {
        line(format!("Update:     {}", update_line(device)));
        if let Some(reason) = &u.reason {
            line(format!("  Reason:   {reason}"));
        }
        if let Some(message) = &u.message {
            for (i, m) in message.lines().enumerate() {
                line(format!(
                    "  {} {m}",
                    if i == 0 { "Message: " } else { "         " }
                ));
            }
        }
    }
    if !s.containers.is_empty() {
        line("Containers:".into());
        for c in &s.containers {
            line(format!(
                "  {:<16} {:<10} ready={} restarts={}{}",
                c.name,
                c.state,
                c.ready,
                c.restarts,
                c.message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            ));
        }
    }
    if !s.history.is_empty() {
        line("History:".into());
        for h in &s.history {
            line(format!(
                "  {:<24} {:<8} {}",
                h.revision,
                format!("{:?}", h.status).to_uppercase(),
                h.message.as_deref().unwrap_or_default()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fleet(ready: &str, stalled: &str, generation: i64, observed: i64) -> Fleet {
        serde_json::from_value(json!({
            "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet",
            "metadata": {"name": "kiosks", "namespace": "ns", "generation": generation},
            "spec": {"selector": {"matchLabels": {"role": "kiosk"}},
                     "template": {"containers": [{"name": "a", "image": "r/a:1"}]},
                     "strategy": {"steps": [{"devices": 1}]}},
            "status": {"observedGeneration": observed, "updateRevision": "kiosks-2222222222",
                "currentStep": "0", "devices": 4, "updated": 1, "updating": 1, "failed": 1,
                "conditions": [
                    {"type": "Ready", "status": ready, "reason": "RollingOut", "message": "1 of 4 devices updated",
                     "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "Stalled", "status": stalled, "reason": "RolloutAborted", "message": "1 devices failed",
                     "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .expect("fleet")
    }

    fn device(name: &str, update: serde_json::Value) -> Device {
        serde_json::from_value(json!({
            "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device",
            "metadata": {"name": name, "namespace": "ns", "labels": {"role": "kiosk"}},
            "spec": {"revision": "kiosks-2222222222"},
            "status": {"currentRevision": "kiosks-1111111111", "update": update,
                "containers": [{"name": "app", "state": "running", "ready": true, "restarts": 0}]}
        }))
        .expect("device")
    }

    #[test]
    fn the_outcome_reads_as_kubectl_rollout_status_does() {
        assert!(matches!(
            outcome(&fleet("True", "False", 2, 2)),
            Outcome::Complete(_)
        ));
        assert_eq!(
            outcome(&fleet("False", "True", 2, 2)),
            Outcome::Failed("RolloutAborted: 1 devices failed".into())
        );
        assert!(
            matches!(outcome(&fleet("False", "False", 2, 2)), Outcome::InProgress(m) if m.contains("RollingOut"))
        );
        assert!(
            matches!(outcome(&fleet("True", "False", 3, 2)), Outcome::InProgress(m) if m.contains("latest spec"))
        );
    }

    #[test]
    fn the_rollout_view_names_devices_in_flight_and_failed_with_why() {
        let devices = vec![
            device(
                "kiosk-1",
                json!({"revision": "kiosks-2222222222", "status": "DOWNLOADING", "progress": 40}),
            ),
            device(
                "kiosk-2",
                json!({"revision": "kiosks-2222222222", "status": "ERROR", "progress": 100,
                "reason": "ContainerExited", "message": "container app exited with code 3"}),
            ),
        ];
        let view = rollout_view(&fleet("False", "False", 1, 1), &devices);
        assert!(view.contains("Step:      1 of 1"), "{view}");
        assert!(view.contains("1/4 updated, 1 updating, 1 failed"), "{view}");
        assert!(
            view.contains("kiosk-1 KIOSKS-2222222222 DOWNLOADING 40%"),
            "{view}"
        );
        assert!(
            view.contains("kiosk-2: ContainerExited container app exited with code 3"),
            "{view}"
        );
        let table = devices_table(&devices);
        assert!(table.starts_with("NAME"), "{table}");
        assert_eq!(table.lines().count(), 3);
        let described = describe_device(&devices[1]);
        assert!(
            described.contains("Reason:   ContainerExited"),
            "{described}"
        );
        assert!(described.contains("app"), "{described}");
    }

    #[test]
    fn selectors_read_as_kubectl_writes_them() {
        let s: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"role": "kiosk"},
            "matchExpressions": [{"key": "site", "operator": "In", "values": ["a", "b"]},
                                 {"key": "lab", "operator": "DoesNotExist"}]
        }))
        .expect("selector");
        assert_eq!(selector_string(&s), "role=kiosk,site in (a,b),!lab");
    }
}
