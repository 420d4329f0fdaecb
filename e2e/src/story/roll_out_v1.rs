//! Chapter 2: v1 reaches every device.

use super::*;

impl World {
    /// Step 2: v1 reaches every device. Returns what each downloaded.
    pub(super) async fn roll_out_v1(
        &mut self,
        t1: &Value,
        v1: &str,
    ) -> anyhow::Result<BTreeMap<String, u64>> {
        self.n.step(&format!(
            "rolling out v1 ({v1}) to all {DEVICES} devices at once"
        ));
        self.n.say(&format!(
            "Fleet {FLEET}: devices labelled role={ROLE}; containers app ({}) and side ({})",
            self.images.app_v1.reference, self.images.side.reference
        ));
        self.apply(fleet(t1, false)).await?;
        let phase = Phase::new(format!("{v1} runs on all {DEVICES} devices"));
        loop {
            let all = self.all_devices().await;
            let fleet = self.fleet().await;
            let ready = fleet
                .as_ref()
                .and_then(|f| condition(f, "Ready"))
                .is_some_and(|c| c.status == "True");
            if ready && all.len() == DEVICES && all.values().all(|d| done_on(d, v1)) {
                let status = fleet
                    .and_then(|f| f.status)
                    .context("the fleet has a status")?;
                ensure!(
                    status.update_revision.as_deref() == Some(v1),
                    "the fleet's updateRevision is {:?}, not {v1}",
                    status.update_revision
                );
                ensure!(
                    (status.updated, status.ready, status.failed) == (5, 5, 0),
                    "the fleet counts updated/ready/failed {:?}, not (5, 5, 0)",
                    (status.updated, status.ready, status.failed)
                );
                break;
            }
            phase.tick(self).await?;
        }
        phase.done(self);
        let mut downloaded = BTreeMap::new();
        for d in self.all_devices().await.values() {
            let u = update_of(d).context("a device that ran v1 has an update")?;
            self.n.say(&format!(
                "{} downloaded {} of {} bytes for v1",
                d.name_any(),
                u.downloaded_bytes.unwrap_or(0),
                u.total_bytes.unwrap_or(0)
            ));
            downloaded.insert(d.name_any(), u.downloaded_bytes.unwrap_or(0) as u64);
        }
        // The runtime itself says so, on its control socket.
        let first = &self.devices[0];
        let running = first
            .client()
            .containers()
            .await
            .context("GET /containers")?;
        let running: BTreeSet<(String, String, String)> = running
            .iter()
            .map(|c| (c.name.clone(), c.state.to_string(), c.revision.clone()))
            .collect();
        let want = BTreeSet::from([
            ("app".to_string(), "running".to_string(), v1.to_string()),
            ("side".to_string(), "running".to_string(), v1.to_string()),
        ]);
        ensure!(
            running == want,
            "GET /containers on {}: {running:?}, not {want:?}",
            first.name()
        );
        Ok(downloaded)
    }
}
