//! Between chapters: the gateway's pod is deleted; its Deployment starts another and the agents
//! reconnect to it through the Service.

use super::*;

impl World {
    /// Between steps: the gateway's pod goes (`kubectl delete pod`) and a new one comes. The
    /// gateway keeps no state, so the agents only have to reconnect, with the credentials they
    /// stored.
    pub(super) async fn restart_gateway(&mut self) -> anyhow::Result<()> {
        let old = self.release.pod(self.env, "gateway")?;
        self.n
            .step("deleting the gateway's pod; its Deployment starts another");
        self.n.say("it keeps no state: the agents retry with backoff and long-poll the new pod through the Service with their stored credentials");
        self.delete_pod(&old, "1")?;
        let phase = Phase::new(format!(
            "all {DEVICES} agents long-poll the new gateway pod"
        ));
        loop {
            // While the old pod terminates, two may run: wait for the new one alone.
            let waiting = match self.release.pod(self.env, "gateway") {
                Ok(pod) if pod != old => self.waiting_polls(&pod).await,
                _ => 0,
            };
            if waiting >= DEVICES {
                break;
            }
            phase.tick(self).await?;
        }
        phase.done(self);
        Ok(())
    }

    /// `kubectl delete pod` of one of the release's pods, said first; does not wait for it to
    /// go (`grace` seconds for it to stop).
    pub(super) fn delete_pod(&self, pod: &str, grace: &str) -> anyhow::Result<()> {
        self.kubectl(
            &[
                "delete",
                "pod",
                pod,
                "-n",
                &self.release.namespace,
                &format!("--grace-period={grace}"),
                "--wait=false",
            ],
            "deleting a pod",
        )?;
        Ok(())
    }

    /// The long-polls `pod` holds open, from its metrics (0 when it does not answer).
    async fn waiting_polls(&self, pod: &str) -> usize {
        let Ok(ip) = self.release.pod_ip(self.env, pod) else {
            return 0;
        };
        crate::measure::metric(&format!("{ip}:8080"), "edgevisor_gateway_waiting_polls")
            .await
            .ok()
            .flatten()
            .map_or(0, |v| v as usize)
    }
}
