//! Leader election on a `coordination.k8s.io` Lease, so that of several controller replicas
//! exactly one acts. The holder renews the lease every `renew`; another replica takes it over
//! once `renewTime + leaseDurationSeconds` has passed. Updates go through the apiserver's
//! optimistic concurrency (`resourceVersion`), so two candidates never both win.
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

/// One candidate's view of the lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// Whether the lease as read may be taken by `identity` at `now`. Pure.
pub fn may_take(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match &spec.renew_time {
        Some(MicroTime(renewed)) => *renewed + SignedDuration::from_secs(duration) < now,
        None => true,
    }
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Elector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    /// Takes or renews the lease; `Ok(true)` when this candidate holds it now.
    pub async fn try_acquire(&self) -> kube::Result<bool> {
        let now = Timestamp::now();
        let spec = |acquire: Option<MicroTime>, transitions: i32| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().try_into().unwrap_or(15)),
            acquire_time: acquire.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        if !may_take(lease.spec.as_ref(), &self.identity, now) {
            return Ok(false);
        }
        let old = lease.spec.take().unwrap_or_default();
        let ours = old.holder_identity.as_deref() == Some(self.identity.as_str());
        let transitions = old.lease_transitions.unwrap_or(0) + i32::from(!ours);
        lease.spec = Some(spec(
            if ours { old.acquire_time } else { None },
            transitions,
        ));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote it since we read it: they won this round.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up so a standby takes over at once (on graceful shutdown).
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.identity.as_str())
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            let _ = self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await;
        }
    }
}

/// Stands by until `elector` holds the lease, asking every `retry`. `false` when
/// `shutdown` came first.
pub async fn wait_to_lead(
    elector: &Elector,
    retry: Duration,
    shutdown: impl Future<Output = ()>,
) -> bool {
    tokio::pin!(shutdown);
    loop {
        match elector.try_acquire().await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = &mut shutdown => return false,
        }
    }
}

/// Renews the lease every `retry` while it is held; resolves when it is lost: taken by
/// another replica, or not renewable for a whole `lease` (the apiserver unreachable), after
/// which another replica may act and this one must stop.
pub async fn hold(elector: &Elector, retry: Duration, lease: Duration) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(retry).await;
        match elector.try_acquire().await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => return,
            Err(e) if last_renewed.elapsed() < lease => {
                tracing::warn!(error = %e, "renewing the lease")
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_is_taken_only_when_free_ours_or_expired() {
        let at = |s| Timestamp::from_second(s).unwrap();
        assert!(may_take(None, "a", at(0)));
        assert!(may_take(Some(&held_by("a", 100)), "a", at(101)));
        assert!(!may_take(Some(&held_by("b", 100)), "a", at(110)));
        assert!(!may_take(Some(&held_by("b", 100)), "a", at(115)));
        assert!(may_take(Some(&held_by("b", 100)), "a", at(116)));
        assert!(may_take(Some(&LeaseSpec::default()), "a", at(0)));
    }
}
