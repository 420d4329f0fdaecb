//! What the story reads of Devices and Fleets.

use super::*;

// === what the story reads of Devices and Fleets ===

pub(super) fn update_of(d: &Device) -> Option<&edgevisor_crds::device::UpdateProgress> {
    d.status.as_ref().and_then(|s| s.update.as_ref())
}

pub(super) fn current(d: &Device) -> Option<&str> {
    d.status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
}

pub(super) fn target(d: &Device) -> Option<&str> {
    d.spec.revision.as_deref()
}

/// The device runs `rev`, its update to it ended DONE, and both containers run.
pub(super) fn done_on(d: &Device, rev: &str) -> bool {
    let update_done =
        update_of(d).is_some_and(|u| u.revision == rev && u.status == UpdateStatus::Done);
    let containers = d
        .status
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .filter(|c| c.state == "running")
                .map(|c| c.name.as_str())
                .collect::<BTreeSet<_>>()
        })
        .unwrap_or_default();
    current(d) == Some(rev) && update_done && containers == BTreeSet::from(["app", "side"])
}

/// Why a device's update failed, as it reported it.
#[derive(Clone, Debug, Default)]
pub struct Failure {
    /// `status.update.reason` (empty when only the history has the failure).
    pub reason: String,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reason.is_empty() {
            write!(f, "(history) message {:?}", self.message)
        } else {
            write!(f, "reason {:?}, message {:?}", self.reason, self.message)
        }
    }
}

/// The device's update to `rev` ended in ERROR: now, or in its history.
pub(super) fn failed_on(d: &Device, rev: &str) -> Option<Failure> {
    if let Some(u) = update_of(d)
        && u.revision == rev
        && u.status == UpdateStatus::Error
    {
        return Some(Failure {
            reason: u.reason.clone().unwrap_or_default(),
            message: u.message.clone().unwrap_or_default(),
        });
    }
    d.status.as_ref().and_then(|s| {
        s.history
            .iter()
            .find(|h| h.revision == rev && h.status == UpdateStatus::Error)
            .map(|h| Failure {
                reason: String::new(),
                message: h.message.clone().unwrap_or_default(),
            })
    })
}

pub(super) fn condition<'a>(
    fleet: &'a Fleet,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    fleet
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

pub(super) fn ready_reason(fleet: &Fleet) -> String {
    condition(fleet, "Ready")
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}
