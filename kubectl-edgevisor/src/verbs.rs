//! The rollout verbs as merge patches of a Fleet's spec. Pure: from the Fleet as read and its
//! FleetRevisions, the patch to send, or why the verb does not apply now (naming the Fleet).
use edgevisor_crds::common::condition::ROLLOUT_ABORTED;
use edgevisor_crds::{Fleet, FleetRevision};
use kube::ResourceExt;
use serde_json::{Value, json};

fn update_revision(fleet: &Fleet) -> Result<&str, String> {
    fleet
        .status
        .as_ref()
        .and_then(|s| s.update_revision.as_deref())
        .ok_or_else(|| {
            format!(
                "fleet {} has no rollout yet (the controller has not reconciled it)",
                fleet.name_any()
            )
        })
}

fn aborted(fleet: &Fleet) -> bool {
    fleet.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == ROLLOUT_ABORTED && c.status == "True")
    })
}

/// `rollout pause` / `rollout resume`: hold the whole fleet, or let it move again.
pub fn pause(paused: bool) -> Value {
    json!({"spec": {"paused": paused}})
}

/// `rollout promote [--full]`: end the pause of the current step (timed or until resumed), or
/// with `full` skip every remaining step.
pub fn promote(fleet: &Fleet, full: bool) -> Result<Value, String> {
    let revision = update_revision(fleet)?;
    let step = fleet
        .status
        .as_ref()
        .and_then(|s| s.current_step.as_deref())
        .and_then(|s| s.parse::<i32>().ok());
    match (step, full) {
        (Some(step), _) => {
            Ok(json!({"spec": {"resume": {"revision": revision, "step": step, "full": full}}}))
        }
        // Past the last step there is nothing to promote, unless in full (a no-op then).
        (None, true) => {
            Ok(json!({"spec": {"resume": {"revision": revision, "step": 0, "full": true}}}))
        }
        (None, false) => Err(format!(
            "fleet {} is not at a step (it is {}): nothing to promote",
            fleet.name_any(),
            fleet
                .status
                .as_ref()
                .and_then(|s| s.current_step.as_deref())
                .unwrap_or("unknown")
        )),
    }
}

/// `rollout abort`: stop the rollout of the update revision now.
pub fn abort(fleet: &Fleet) -> Result<Value, String> {
    let revision = update_revision(fleet)?;
    Ok(json!({"spec": {"abort": {"revision": revision}}}))
}

/// `rollout retry`: run the aborted update revision again from step 0 (and drop an abort of
/// it that would stop it again).
pub fn retry(fleet: &Fleet) -> Result<Value, String> {
    let revision = update_revision(fleet)?;
    if !aborted(fleet) {
        return Err(format!(
            "the rollout of {revision} (fleet {}) is not aborted: nothing to retry",
            fleet.name_any()
        ));
    }
    let attempt = fleet
        .status
        .as_ref()
        .and_then(|s| s.retry_attempt)
        .unwrap_or(0)
        + 1;
    let mut patch = json!({"spec": {"retry": {"revision": revision, "attempt": attempt}}});
    if fleet
        .spec
        .abort
        .as_ref()
        .is_some_and(|a| a.revision == revision)
    {
        patch["spec"]["abort"] = Value::Null;
    }
    Ok(patch)
}

/// The revisions of `fleet`, newest first by their number.
pub fn history<'a>(fleet: &Fleet, revisions: &'a [FleetRevision]) -> Vec<&'a FleetRevision> {
    let name = fleet.name_any();
    let mut own: Vec<&FleetRevision> = revisions.iter().filter(|r| r.spec.fleet == name).collect();
    own.sort_by_key(|r| std::cmp::Reverse(r.spec.revision));
    own
}

/// `rollout undo [--to-revision N]`: roll the fleet to the revision before the update revision,
/// or to revision number `to`. Going to the template's own revision removes `rollbackTo`.
pub fn undo(fleet: &Fleet, revisions: &[FleetRevision], to: Option<i64>) -> Result<Value, String> {
    let name = fleet.name_any();
    let current = update_revision(fleet)?;
    let own = history(fleet, revisions);
    let current_number = own
        .iter()
        .find(|r| r.name_any() == current)
        .map(|r| r.spec.revision)
        .ok_or_else(|| format!("fleet {name}: its update revision {current} is not retained"))?;
    let target = match to {
        Some(n) => own.iter().find(|r| r.spec.revision == n).ok_or_else(|| {
            let known: Vec<String> = own.iter().map(|r| r.spec.revision.to_string()).collect();
            format!(
                "fleet {name} has no revision {n} (retained: {})",
                known.join(", ")
            )
        })?,
        None => own
            .iter()
            .find(|r| r.spec.revision < current_number)
            .ok_or_else(|| format!("fleet {name} has no revision before {current}"))?,
    };
    let target_name = target.name_any();
    if target_name == current {
        return Err(format!("fleet {name} is already rolling out {current}"));
    }
    // The newest revision is the template's: following it again is removing rollbackTo.
    let template = own.first().map(|r| r.name_any());
    if template.as_deref() == Some(target_name.as_str()) {
        Ok(json!({"spec": {"rollbackTo": null}}))
    } else {
        Ok(json!({"spec": {"rollbackTo": target_name}}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgevisor_crds::fleet::{Abort, FleetStatus};
    use edgevisor_crds::fleet_revision::FleetRevisionSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn fleet(step: &str, aborted: bool) -> Fleet {
        let mut f: Fleet = serde_json::from_value(json!({
            "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet",
            "metadata": {"name": "kiosks", "namespace": "ns"},
            "spec": {"selector": {}, "template": {"containers": [{"name": "a", "image": "r/a:1"}]}}
        }))
        .expect("fleet");
        f.status = Some(FleetStatus {
            update_revision: Some("kiosks-2222222222".into()),
            current_step: Some(step.into()),
            conditions: vec![Condition {
                type_: ROLLOUT_ABORTED.into(),
                status: if aborted { "True" } else { "False" }.into(),
                reason: "x".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
            }],
            ..FleetStatus::default()
        });
        f
    }

    fn revision(n: i64, hash: &str) -> FleetRevision {
        FleetRevision::new(
            &format!("kiosks-{hash}"),
            FleetRevisionSpec {
                fleet: "kiosks".into(),
                revision: n,
                template_hash: "a".repeat(64),
                architectures: vec![],
                files: vec![],
            },
        )
    }

    #[test]
    fn promote_names_the_revision_and_step_it_ends() {
        assert_eq!(
            promote(&fleet("1", false), false).unwrap(),
            json!({"spec": {"resume": {"revision": "kiosks-2222222222", "step": 1, "full": false}}})
        );
        assert_eq!(
            promote(&fleet("1", false), true).unwrap()["spec"]["resume"]["full"],
            true
        );
        let err = promote(&fleet("done", false), false).unwrap_err();
        assert!(err.contains("kiosks") && err.contains("done"), "{err}");
    }

    #[test]
    fn retry_needs_an_abort_and_counts_its_attempts() {
        assert!(
            retry(&fleet("0", false))
                .unwrap_err()
                .contains("not aborted")
        );
        let mut f = fleet("aborted", true);
        f.spec.abort = Some(Abort {
            revision: "kiosks-2222222222".into(),
        });
        if let Some(s) = f.status.as_mut() {
            s.retry_attempt = Some(2);
        }
        assert_eq!(
            retry(&f).unwrap(),
            json!({"spec": {"retry": {"revision": "kiosks-2222222222", "attempt": 3}, "abort": null}})
        );
        assert_eq!(
            abort(&fleet("0", false)).unwrap(),
            json!({"spec": {"abort": {"revision": "kiosks-2222222222"}}})
        );
    }

    #[test]
    fn undo_goes_to_the_revision_before_or_the_one_asked_for() {
        let revisions = vec![
            revision(1, "1111111111"),
            revision(2, "2222222222"),
            revision(3, "3333333333"),
        ];
        let f = fleet("0", false);
        assert_eq!(
            undo(&f, &revisions, None).unwrap(),
            json!({"spec": {"rollbackTo": "kiosks-1111111111"}})
        );
        // Revision 3 is the template's own: going there is following the template again.
        assert_eq!(
            undo(&f, &revisions, Some(3)).unwrap(),
            json!({"spec": {"rollbackTo": null}})
        );
        let err = undo(&f, &revisions, Some(7)).unwrap_err();
        assert!(
            err.contains("no revision 7") && err.contains("3, 2, 1"),
            "{err}"
        );
        assert!(
            undo(&f, &revisions, Some(2))
                .unwrap_err()
                .contains("already")
        );
        assert!(
            undo(&f, &revisions[1..], None)
                .unwrap_err()
                .contains("before")
        );
    }
}
