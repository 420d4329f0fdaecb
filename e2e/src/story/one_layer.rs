//! Chapter 6: v4 changes one layer; each device fetches only that layer.

use super::*;

impl World {
    /// Step 6: One changed layer: each device downloads only that layer. Returns what each fetched,
    /// the worst ratio to the layer and the most bytes downloaded.
    pub(super) async fn one_layer(
        &mut self,
        t4: &Value,
        v4: &str,
        revoked: &str,
    ) -> anyhow::Result<(Vec<Fetched>, f64, u64)> {
        let layer = self.images.app_v4.app_layer_size;
        self.n.step(&format!(
            "rolling out v4 ({v4}): one layer of the app image changed ({layer} bytes); each device fetches only that"
        ));
        let served_before: BTreeMap<String, u64> = self
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    d.name().to_string(),
                    self.forward.bytes_to(IpAddr::V4(self.lan.address(i))),
                )
            })
            .collect();
        self.apply(fleet(t4, false)).await?;
        let phase = Phase::new(format!(
            "{v4} (one new layer) on the {} remaining devices",
            DEVICES - 1
        ));
        let updated = loop {
            let all = self.all_devices().await;
            let remaining: Vec<&Device> =
                all.values().filter(|d| d.name_any() != revoked).collect();
            let complete = self.fleet().await.is_some_and(|f| {
                ready_reason(&f) == "RolloutComplete"
                    // The revoked device is still selected, but not waited for.
                    && f.status.as_ref().is_some_and(|s| s.devices == DEVICES as i32)
            });
            if complete && remaining.iter().all(|d| done_on(d, v4)) {
                break remaining.into_iter().cloned().collect::<Vec<Device>>();
            }
            phase.tick(self).await?;
        };
        phase.done(self);
        let mut worst = 0.0f64;
        let mut fetched = Vec::new();
        for d in &updated {
            let name = d.name_any();
            let downloaded = update_of(d).and_then(|u| u.downloaded_bytes).unwrap_or(0) as u64;
            let i = self
                .devices
                .iter()
                .position(|x| x.name() == name)
                .with_context(|| format!("device {name}"))?;
            let over_the_wire =
                self.forward.bytes_to(IpAddr::V4(self.lan.address(i))) - served_before[&name];
            let ratio = downloaded as f64 / layer as f64;
            worst = worst.max(ratio);
            self.n.say(&format!(
                "{name}: downloadedBytes {downloaded}, from the registry {over_the_wire} (HTTP included), changed layer {layer}, config {}",
                self.images.app_v4.config_size
            ));
            ensure!(
                downloaded >= layer,
                "{name} reports {downloaded} bytes, less than the new layer's {layer}"
            );
            ensure!(
                over_the_wire >= layer && (over_the_wire as f64) < 1.25 * layer as f64,
                "{name} pulled {over_the_wire} bytes from the registry for a {layer}-byte layer"
            );
            fetched.push(Fetched {
                device: name,
                downloaded_bytes: downloaded,
                from_registry: over_the_wire,
            });
        }
        let downloaded_max = fetched
            .iter()
            .map(|f| f.downloaded_bytes)
            .max()
            .unwrap_or(0);
        Ok((fetched, worst, downloaded_max))
    }
}
