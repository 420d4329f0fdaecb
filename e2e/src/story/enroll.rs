//! Chapter 1: five devices enroll with one bootstrap token.

use super::*;

impl World {
    /// Step 1: Five devices enroll with one token. Returns their names.
    pub(super) async fn enroll(&mut self) -> anyhow::Result<Vec<String>> {
        let n = self.n.clone();
        n.step(&format!(
            "enrolling {DEVICES} devices with one bootstrap token"
        ));
        n.say(&format!(
            "Secret {}/{} holds the token; it enrolls devices into namespace {} with the label role={ROLE}.\n\
             Each device is a runtime (containers run by runc) and an agent, in a network namespace of\n\
             its own ({}-0 … {}-{}, 10.213.{}.10 …); only its agent holds the token.",
            self.token.namespace,
            self.token.secret,
            self.ns,
            self.lan.prefix(),
            self.lan.prefix(),
            DEVICES - 1,
            self.options.subnet,
        ));
        let phase = Phase::new(format!(
            "{DEVICES} devices enrolled and reported their architecture"
        ));
        let revision_key = crate::controller::revision_public_key(
            &self.devices_api.clone().into(),
            &self.release.namespace,
            &self.release.signing_key_secret(),
        )
        .await?;
        n.say(&format!(
            "Each device is also given the controller's revision-signing public key (Secret {}/{}, \
             ed25519.pub): it installs only states the controller signed.",
            self.release.namespace,
            self.release.signing_key_secret(),
        ));
        for i in 0..DEVICES {
            let name = format!("edge-{i}");
            let mut o = DeviceOptions::new(
                &name,
                self.lan.netns(i),
                &self.options.device_dir,
                &self.gateway_url,
                &self.tls.ca_cert,
                &self.token.token,
            );
            o.info = vec![("model".into(), "e2e-netns".into())];
            o.revision_key = Some(revision_key.clone());
            // The local registry speaks plain http (blobs are verified by digest).
            o.agent_args = vec![
                "--insecure-registry".into(),
                self.forward.addr().to_string(),
            ];
            let device =
                RealDevice::start(self.env, &o).with_context(|| format!("device {name}"))?;
            if i == 0 {
                self.logs
                    .push((format!("{name} agent"), device.agent_log()));
                self.logs
                    .push((format!("{name} runtime"), device.runtime_log()));
            }
            self.devices.push(device);
        }
        for device in &mut self.devices {
            let credential = device.wait_enrolled(ENROLL).map_err(|e| {
                anyhow!(
                    "{e:#}\ngateway:\n{}",
                    self.release.logs(self.env, "gateway", 30)
                )
            })?;
            ensure!(
                (credential.namespace.as_str(), credential.name.as_str())
                    == (self.ns.as_str(), device.name()),
                "{} enrolled as {}/{}",
                device.name(),
                credential.namespace,
                credential.name
            );
        }
        loop {
            let all = self.all_devices().await;
            let enrolled = all
                .values()
                .filter(|d| {
                    d.status
                        .as_ref()
                        .and_then(|s| s.architecture)
                        .is_some_and(|a| a.as_str() == "amd64")
                        && d.labels().get("role").map(String::as_str) == Some(ROLE)
                })
                .count();
            if enrolled == DEVICES {
                for d in all.values() {
                    let info = &d
                        .status
                        .as_ref()
                        .context("an enrolled Device has a status")?
                        .info;
                    ensure!(
                        info.get("model").map(String::as_str) == Some("e2e-netns"),
                        "{info:?}"
                    );
                }
                break;
            }
            phase.tick(self).await?;
        }
        phase.done(self);
        Ok(self.devices.iter().map(|d| d.name().to_string()).collect())
    }
}
