//! Chapter 5: a revoked device is refused.

use super::*;

impl World {
    /// Step 5: Revocation: a revoked credential, and a device naming another, are refused. Returns
    /// the revoked device and what its credential gets now.
    pub(super) async fn revoke(
        &mut self,
        r: &Revisions,
        canary: &str,
    ) -> anyhow::Result<(String, u16)> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(&self.tls.ca_pem()?).context("a CA certificate")?;
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(20))
            .build()
            .context("an HTTPS client")?;
        let victim = self
            .devices
            .iter()
            .rev()
            .find(|d| d.name() != canary)
            .context("a device that is not the canary")?;
        let victim_name = victim.name().to_string();
        let theirs = victim.credential().context("the victim's credential")?;
        let mine = self
            .devices
            .iter()
            .find(|d| d.name() == canary)
            .context("the canary")?
            .credential()
            .context("the canary's credential")?;
        let (ns, url) = (self.ns.clone(), self.gateway_url.clone());
        let target_url = |name: &str| format!("{url}/v1/devices/{ns}/{name}/target?waitSeconds=0");
        self.n.step(&format!(
            "revoking {victim_name}: the gateway refuses its credential from then on"
        ));
        let phase = Phase::new(format!("{victim_name} is refused"));
        let response = http
            .get(target_url(&victim_name))
            .bearer_auth(&theirs.credential)
            .send()
            .await
            .context("the victim's own target")?;
        ensure!(
            response.status().as_u16() == 200,
            "before revocation: {}",
            response.status()
        );
        let served: edgevisor_protocol::gateway::Target =
            response.json().await.context("a Target")?;
        ensure!(
            served.revision == r.v2,
            "{victim_name} is served {}, not {}",
            served.revision,
            r.v2
        );
        ensure!(
            served.architecture == "amd64",
            "{victim_name} is served {}",
            served.architecture
        );
        let cross = call(
            &http,
            reqwest::Method::GET,
            &target_url(&victim_name),
            &mine.credential,
        )
        .await?;
        ensure!(cross == 403, "{canary} asked for {victim_name}'s target");
        let unknown = call(
            &http,
            reqwest::Method::GET,
            &target_url(canary),
            "not-a-credential",
        )
        .await?;
        ensure!(unknown == 401, "an unknown credential");
        self.n.say(&format!(
            "before: {victim_name}'s credential gets its target (200, v2); {canary}'s credential asking for \
             {victim_name}'s target gets 403; a made-up credential gets 401"
        ));
        self.kubectl(
            &[
                "patch",
                "device",
                &victim_name,
                "-n",
                &ns,
                "--type",
                "merge",
                "-p",
                r#"{"spec":{"revoked":true}}"#,
            ],
            "revoking",
        )?;
        let refused = loop {
            let code = call(
                &http,
                reqwest::Method::GET,
                &target_url(&victim_name),
                &theirs.credential,
            )
            .await?;
            if code == 403 {
                break code;
            }
            phase.tick(self).await?;
        };
        let status_url = format!("{url}/v1/devices/{ns}/{victim_name}/status");
        let put = call(&http, reqwest::Method::PUT, &status_url, &theirs.credential).await?;
        ensure!(
            put == 403,
            "{victim_name} reported its status after revocation: {put}"
        );
        // The others are still served.
        let others = call(
            &http,
            reqwest::Method::GET,
            &target_url(canary),
            &mine.credential,
        )
        .await?;
        ensure!(others == 200, "{canary} is refused its target: {others}");
        self.n.say(&format!(
            "after: {victim_name}'s credential gets 403 for its target and for its status report; {canary} is still served (200)"
        ));
        phase.done(self);
        Ok((victim_name, refused))
    }
}
