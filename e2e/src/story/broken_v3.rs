//! Chapter 4: a broken v3; the canary rolls back by itself and the rollout aborts.

use super::*;

impl World {
    /// Step 4: A broken v3: the canary fails and rolls back by itself, the rollout aborts. Returns
    /// the canary's cause, the Fleet's Ready message and its RolloutAborted event.
    pub(super) async fn broken_v3(
        &mut self,
        t3: &Value,
        r: &Revisions,
        canary: &str,
    ) -> anyhow::Result<(Failure, String, String)> {
        let (v2, v3) = (r.v2.as_str(), r.v3.as_str());
        self.n.step(&format!(
            "rolling out a broken v3 ({v3}, its app exits with code 3): the canary tries it first"
        ));
        self.apply(fleet(t3, true)).await?;
        let phase = Phase::new(format!("{canary} fails {v3} and the rollout aborts"));
        let mut moved: BTreeSet<String> = BTreeSet::new();
        let cause = loop {
            let all = self.all_devices().await;
            for d in all.values() {
                if d.name_any() != canary && target(d) == Some(v3) {
                    moved.insert(d.name_any());
                }
            }
            let aborted = self
                .fleet()
                .await
                .and_then(|f| condition(&f, "RolloutAborted").map(|c| c.status == "True"))
                .unwrap_or(false);
            if aborted && let Some(cause) = all.get(canary).and_then(|d| failed_on(d, v3)) {
                break cause;
            }
            phase.tick(self).await?;
        };
        phase.done(self);
        self.n.say(&format!("{canary} reported: {cause}"));
        ensure!(
            cause.to_string().to_lowercase().contains("exit"),
            "the device says why it failed: {cause:?}"
        );
        // The device went back to v2 by itself, and the controller sends it back there too.
        let phase = Phase::new(format!("{canary} runs {v2} again"));
        loop {
            let all = self.all_devices().await;
            for d in all.values() {
                if d.name_any() != canary && target(d) == Some(v3) {
                    moved.insert(d.name_any());
                }
            }
            let back = all
                .get(canary)
                .is_some_and(|d| target(d) == Some(v2) && current(d) == Some(v2));
            if back {
                break;
            }
            phase.tick(self).await?;
        }
        phase.done(self);
        let canary_device = self
            .devices
            .iter()
            .find(|d| d.name() == canary)
            .context("the canary")?;
        let containers = canary_device
            .client()
            .containers()
            .await
            .context("GET /containers")?;
        for c in &containers {
            ensure!(c.revision == v2, "{canary} runs v2 again: {containers:?}");
            ensure!(c.state == RunState::Running, "{containers:?}");
        }
        // The runtime's own record: it tried v3, which failed, and went back to its committed v2.
        let steps = canary_device.client().steps().await.context("GET /steps")?;
        let step = |rev: &str| steps.iter().find(|x| x.rev == rev);
        let (tried, committed) = (step(v3), step(v2));
        ensure!(
            tried.is_some_and(|t| t.status == Some(Status::Error) && !t.committed),
            "{steps:?}"
        );
        ensure!(
            committed.is_some_and(|c| c.committed && c.running),
            "{steps:?}"
        );
        self.n.say(&format!(
            "{canary}'s runtime: {v3} ERROR, not committed; {v2} committed and running again"
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
        for d in self.all_devices().await.values() {
            if d.name_any() != canary {
                ensure!(target(d) == Some(v2), "{} moved", d.name_any());
                ensure!(current(d) == Some(v2), "{} moved", d.name_any());
            }
        }
        ensure!(
            moved.is_empty(),
            "devices besides the canary were sent to v3: {moved:?}"
        );
        let table = self
            .env
            .kubectl(["get", "fleet", FLEET, "-n", &self.ns, "-o", "wide"])
            .run()
            .checked("kubectl get fleet")?;
        let why = self
            .env
            .kubectl([
                "get",
                "fleet",
                FLEET,
                "-n",
                &self.ns,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].message}",
            ])
            .run()
            .checked("the Ready message")?;
        self.n.say(&format!(
            "$ kubectl get fleet {FLEET} -n {} -o wide\n{}\nReady: {why}",
            self.ns,
            table.trim_end()
        ));
        ensure!(
            table.contains("RolloutAborted"),
            "kubectl get fleet shows the abort:\n{table}"
        );
        ensure!(
            why.contains("aborted") && why.contains(v3),
            "the Ready message says why: {why}"
        );
        let events = self
            .env
            .kubectl([
                "get",
                "events",
                "-n",
                &self.ns,
                "-o",
                "jsonpath={range .items[?(@.reason==\"RolloutAborted\")]}{.message}{\"\\n\"}{end}",
            ])
            .run()
            .checked("the Fleet's events")?;
        self.n
            .say(&format!("event RolloutAborted: {}", events.trim()));
        ensure!(
            events.contains(v3) && events.contains("1 devices failed"),
            "an event says how many devices failed: {events:?}"
        );
        Ok((cause, why, events.trim().to_string()))
    }
}
