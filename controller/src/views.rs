//! From Kubernetes objects to the plain views the rollout plan reads. Pure.
use edgevisor_crds::common::condition::{ONLINE, READY};
use edgevisor_crds::{Device, Fleet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::device_index::Interner;
use crate::rollout::{DeviceView, Tally, UpdateReport};

/// The annotation beside `spec.revision` that records when the controller set it, so a
/// device's progress deadline survives a controller restart.
pub const TARGETED_AT: &str = "edgevisor.dev/targeted-at";

/// Whether `conditions` has `type_` with status `True`.
pub fn condition_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// The plan's view of a Device, its names shared through `names`.
pub fn device_view(device: &Device, names: &mut Interner) -> DeviceView {
    let status = device.status.as_ref();
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let targeted_at = device
        .annotations()
        .get(TARGETED_AT)
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| t.as_second());
    DeviceView {
        name: names.name(&device.name_any()),
        architecture: status.and_then(|s| s.architecture),
        target: device.spec.revision.as_deref().map(|r| names.name(r)),
        current: status
            .and_then(|s| s.current_revision.as_deref())
            .map(|r| names.name(r)),
        update: status
            .and_then(|s| s.update.as_ref())
            .map(|u| UpdateReport {
                revision: names.name(&u.revision),
                status: u.status,
                started_at: u.started_at.as_ref().map(|t| t.0.as_second()),
            }),
        targeted_at,
        paused: device.spec.paused,
        pinned: device
            .spec
            .pinned_revision
            .as_deref()
            .map(|r| names.name(r)),
        // Judged by the reconciler, which knows the fleet's revisions.
        pin_refused: false,
        online: condition_true(conditions, ONLINE),
        ready: condition_true(conditions, READY),
        revoked: device.spec.revoked,
        failed_revisions: status
            .map(|s| {
                s.history
                    .iter()
                    .filter(|h| h.status.is_failure())
                    .map(|h| names.name(&h.revision))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The fleet's label selector; a selector that cannot be parsed selects nothing.
pub fn selector(fleet: &Fleet) -> Option<Selector> {
    Selector::try_from(fleet.spec.selector.clone()).ok()
}

/// Whether `fleet` selects `device`: same namespace, labels match.
pub fn selects(fleet: &Fleet, selector: &Selector, device: &Device) -> bool {
    fleet.namespace() == device.namespace() && selector.matches(device.labels())
}

/// The Fleet a revision name belongs to: the name without its `-<10 hex>` suffix.
pub fn fleet_of_revision(revision: &str) -> Option<&str> {
    let (fleet, hash) = revision.rsplit_once('-')?;
    (hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some(fleet)
}

/// A fleet's figures for its metrics: its devices (by state, revision, architecture) and its
/// new status (offline count, phase, step, share updated). `steps` is how many steps the
/// strategy has: a `done` rollout is at the step past the last; a paused or aborted one at -1.
pub fn fleet_figures(
    tally: &Tally,
    status: &edgevisor_crds::FleetStatus,
    steps: usize,
) -> crate::metrics::FleetFigures {
    let revisions = tally
        .revisions()
        .iter()
        .map(|(r, n)| (r.as_deref().unwrap_or("none").to_string(), *n))
        .collect();
    let architectures = tally
        .architectures()
        .iter()
        .map(|(a, t)| (a.map_or("unknown", |a| a.as_str()).to_string(), t.devices))
        .collect();
    let step = match status.current_step.as_deref() {
        Some("done") => i64::try_from(steps).unwrap_or(i64::MAX),
        Some(n) => n.parse().unwrap_or(-1),
        None => 0,
    };
    crate::metrics::FleetFigures {
        states: tally.states().clone(),
        revisions,
        architectures,
        offline: usize::try_from(status.offline).unwrap_or(0),
        phase: status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| c.reason.clone())
            .unwrap_or_default(),
        step,
        updated_ratio: f64::from(status.updated) / f64::from(status.devices.max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgevisor_crds::common::Architecture;

    #[test]
    fn revision_names_lead_back_to_their_fleet() {
        assert_eq!(fleet_of_revision("kiosks-0123456789"), Some("kiosks"));
        assert_eq!(fleet_of_revision("my-fleet-abcdef0123"), Some("my-fleet"));
        assert_eq!(fleet_of_revision("kiosks-latest"), None);
        assert_eq!(fleet_of_revision("kiosks"), None);
    }

    #[test]
    fn fleet_figures_count_devices_by_revision_and_architecture_and_read_the_status() {
        let device = |name: &str, current: Option<&str>, arch: Option<Architecture>| DeviceView {
            current: current.map(Into::into),
            target: Some("f-2".into()),
            architecture: arch,
            ..device_view(
                &Device::new(name, Default::default()),
                &mut Interner::default(),
            )
        };
        let devices = [
            device("a", Some("f-2"), Some(Architecture::Amd64)),
            device("b", Some("f-1"), Some(Architecture::Arm64)),
            device("c", None, None),
        ];
        let status = edgevisor_crds::FleetStatus {
            devices: 3,
            updated: 1,
            offline: 1,
            current_step: Some("1".into()),
            conditions: vec![Condition {
                type_: READY.into(),
                status: "False".into(),
                reason: "WaitingForResume".into(),
                message: String::new(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            }],
            ..Default::default()
        };
        let tally = Tally::of(
            crate::rollout::Basis::default(),
            0,
            devices.iter().cloned().map(std::sync::Arc::new),
        );
        let f = fleet_figures(&tally, &status, 3);
        assert_eq!(f.revisions["f-2"], 1);
        assert_eq!(f.revisions["f-1"], 1);
        assert_eq!(f.revisions["none"], 1);
        assert_eq!(f.architectures["amd64"], 1);
        assert_eq!(f.architectures["unknown"], 1);
        assert_eq!((f.offline, f.step), (1, 1));
        assert_eq!(f.phase, "WaitingForResume");
        assert!((f.updated_ratio - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(f.states["current"], 1);
        let done = edgevisor_crds::FleetStatus {
            current_step: Some("done".into()),
            ..status.clone()
        };
        assert_eq!(fleet_figures(&tally, &done, 3).step, 3);
        let aborted = edgevisor_crds::FleetStatus {
            current_step: Some("aborted".into()),
            ..status
        };
        assert_eq!(fleet_figures(&tally, &aborted, 3).step, -1);
    }

    #[test]
    fn a_device_without_status_is_offline_and_of_unknown_architecture() {
        let device = Device::new("d", Default::default());
        let view = device_view(&device, &mut Interner::default());
        assert!(!view.online);
        assert_eq!(view.architecture, None);
    }
}
