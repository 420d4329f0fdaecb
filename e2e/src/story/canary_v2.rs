//! Chapter 3: v2, a canary first, then everyone once resumed.

use super::*;

impl World {
    /// Step 3: v2: one canary, a pause until resumed, then everyone. Returns the canary.
    pub(super) async fn canary_v2(&mut self, t2: &Value, r: &Revisions) -> anyhow::Result<String> {
        let (v1, v2) = (r.v1.as_str(), r.v2.as_str());
        self.n.step(&format!(
            "rolling out v2 ({v2}): one canary first, then wait for a human"
        ));
        self.n.say(
            "strategy: steps [{devices: 1, pause: {untilResumed: true}}], maxUnavailable 2, failureThreshold 1",
        );
        // Each Device's generation before: every change of its spec (its target) bumps it.
        let generations: BTreeMap<String, i64> = self
            .all_devices()
            .await
            .into_iter()
            .map(|(name, d)| (name, d.metadata.generation.unwrap_or_default()))
            .collect();
        self.apply(fleet(t2, true)).await?;
        let phase = Phase::new(format!("the canary runs {v2}, the rollout waits"));
        let mut most_targeted = 0;
        let canary = loop {
            let all = self.all_devices().await;
            let on_v2: Vec<&Device> = all.values().filter(|d| target(d) == Some(v2)).collect();
            most_targeted = most_targeted.max(on_v2.len());
            let waiting = self
                .fleet()
                .await
                .is_some_and(|f| ready_reason(&f) == "WaitingForResume");
            if waiting && on_v2.len() == 1 && done_on(on_v2[0], v2) {
                break on_v2[0].name_any();
            }
            phase.tick(self).await?;
        };
        phase.done(self);
        // Nothing else moves while the rollout waits.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for d in self.all_devices().await.values() {
            if d.name_any() == canary {
                continue;
            }
            ensure!(
                target(d) == Some(v1),
                "{} moved during the pause",
                d.name_any()
            );
            ensure!(
                current(d) == Some(v1),
                "{} runs {:?} during the pause, not {v1}",
                d.name_any(),
                current(d)
            );
        }
        ensure!(most_targeted == 1, "only the canary goes first");
        self.n.say(&format!(
            "canary: {canary} runs v2; the other {} wait on v1 until someone resumes the rollout:",
            DEVICES - 1
        ));
        let view = self.plugin(&["rollout", "status", FLEET], "rollout status", &[2])?;
        ensure!(
            view.contains("WaitingForResume"),
            "the plugin does not show the wait:\n{view}"
        );
        self.plugin(&["rollout", "promote", FLEET], "promote", &[0])?;
        self.delete_controller_mid_rollout(v2).await?;
        let phase = Phase::new(format!("resumed: {v2} on every device"));
        loop {
            let all = self.all_devices().await;
            let complete = self
                .fleet()
                .await
                .is_some_and(|f| ready_reason(&f) == "RolloutComplete");
            if complete && all.values().all(|d| done_on(d, v2)) {
                break;
            }
            phase.tick(self).await?;
        }
        phase.done(self);
        // The new pod finished the rollout: it holds the Lease, and no device was retargeted
        // twice (one spec change each: v1 to v2).
        let (old, new) = self.controller_pods.clone();
        let holder = self.release.lease_holder(self.env)?;
        ensure!(
            holder == new && new != old,
            "the Lease is held by {holder:?}, not the new controller pod {new}"
        );
        for (name, d) in self.all_devices().await {
            let before = generations.get(&name).copied().unwrap_or_default();
            let changes = d.metadata.generation.unwrap_or_default() - before;
            ensure!(
                changes == 1,
                "{name}'s spec changed {changes} times during the v2 rollout (retargeted twice?)"
            );
        }
        self.n.say(&format!(
            "the new controller pod {new} holds the Lease; each device's spec changed once"
        ));
        Ok(canary)
    }

    /// Once the promoted rollout is under way (devices besides the canary started, not all
    /// done), deletes the controller's pod; records the old pod and the one that replaces it.
    async fn delete_controller_mid_rollout(&mut self, v2: &str) -> anyhow::Result<()> {
        let old = self.release.pod(self.env, "controller")?;
        let phase = Phase::new("the promoted rollout under way");
        loop {
            let all = self.all_devices().await;
            let targeted = all.values().filter(|d| target(d) == Some(v2)).count();
            let done = all.values().filter(|d| done_on(d, v2)).count();
            ensure!(
                done < DEVICES,
                "every device finished before the controller's pod could be deleted mid-rollout"
            );
            if targeted > 1 {
                break;
            }
            phase.tick(self).await?;
        }
        phase.done(self);
        self.n
            .step("deleting the controller's pod mid-rollout; another replica must take over");
        self.delete_pod(&old, "30")?;
        let phase = Phase::new("a new controller pod leads");
        let new = loop {
            let holder = self.release.lease_holder(self.env).unwrap_or_default();
            if !holder.is_empty() && holder != old {
                break holder;
            }
            phase.tick(self).await?;
        };
        phase.done(self);
        self.controller_pods = (old, new);
        Ok(())
    }
}
