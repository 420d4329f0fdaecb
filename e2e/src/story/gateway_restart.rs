//! Between chapters: the gateway is killed and restarted; the agents reconnect.

use super::*;

impl World {
    /// Between steps: the gateway dies (SIGKILL) and comes back. It keeps no state, so the
    /// agents only have to reconnect, with the credentials they stored.
    pub(super) async fn restart_gateway(&mut self) -> anyhow::Result<()> {
        self.n
            .step("killing the gateway (SIGKILL) and starting it again");
        self.n.say("it keeps no state: the agents retry with backoff and long-poll again with their stored credentials");
        self.gateway.kill();
        self.gateway =
            Gateway::start(self.env, &self.gateway_options).context("restarting the gateway")?;
        if let Some(pid_file) = &self.options.pid_file {
            std::fs::write(
                pid_file,
                format!("{}\n{}\n", self.controller.pid(), self.gateway.pid()),
            )
            .with_context(|| format!("writing {}", pid_file.display()))?;
        }
        let phase = Phase::new(format!("all {DEVICES} agents long-poll the new gateway"));
        let metrics = format!("http://{}/metrics", self.gateway.metrics);
        loop {
            let waiting = match reqwest::get(&metrics).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
            .lines()
            .find_map(|l| l.strip_prefix("edgevisor_gateway_waiting_polls "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
            if waiting >= DEVICES {
                break;
            }
            phase.tick(self).await?;
        }
        phase.done(self);
        Ok(())
    }
}
