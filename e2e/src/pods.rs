//! The chart as users run it: the image `make image` builds, installed with Helm on the local
//! environment's node, the controller and the gateway as pods (see `e2e/lib/node.sh`).
use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, bail, ensure};

use crate::Env;
use crate::tls::{TlsFiles, make_server_cert};

static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();

/// The edgevisor image in the local registry, by digest: built and pushed by
/// `controller/image/build` (`make image`) once per test binary (a no-op build when `make test`
/// built it already).
pub fn image(env: &Env) -> anyhow::Result<String> {
    IMAGE
        .get_or_init(|| {
            if let Some(built) = pushed_image(env) {
                return Ok(built);
            }
            env.command_in_repo("controller/image/build", Vec::<String>::new())
                .env("REGISTRY", &env.registry)
                .run()
                .checked("make image")
                .map_err(|e| format!("{e:#}"))
                .and_then(|out| {
                    out.lines()
                        .last()
                        .filter(|l| l.contains("@sha256:"))
                        .map(str::to_string)
                        .ok_or_else(|| format!("make image printed no reference by digest: {out}"))
                })
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The reference `make image` wrote (`target/image/amd64.ref`), if the registry has it: the
/// registry's data goes with `e2e/env down`, the file stays.
fn pushed_image(env: &Env) -> Option<String> {
    let reference = std::fs::read_to_string(env.repo.join("target/image/amd64.ref")).ok()?;
    let reference = reference.trim();
    let rest = reference.strip_prefix(&format!("{}/", env.registry))?;
    let (repository, digest) = rest.split_once('@')?;
    let url = format!("http://{}/v2/{repository}/manifests/{digest}", env.registry);
    let head = std::process::Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-I", "--max-time", "5"])
        .args([
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            &url,
        ])
        .status()
        .ok()?;
    head.success().then(|| reference.to_string())
}

/// A release whose controller and gateway run as pods.
pub struct PodRelease {
    pub name: String,
    pub namespace: String,
    /// The namespace its controller and gateway manage.
    pub watch: String,
    /// The gateway Service's fixed cluster IP, which its certificate names.
    pub gateway_ip: IpAddr,
    pub tls: TlsFiles,
}

impl PodRelease {
    /// Installs release `name` into `namespace` (created here) with the image by digest, one
    /// gateway replica serving `gateway_ip` (a free address of the Service range), managing only
    /// `watch`; `extra` are more `helm` arguments. Waits (`--wait`) until both Deployments are
    /// Available.
    pub fn install(
        env: &Env,
        name: &str,
        namespace: &str,
        watch: &str,
        gateway_ip: IpAddr,
        work_dir: &Path,
        extra: &[String],
    ) -> anyhow::Result<PodRelease> {
        let image = image(env)?;
        let (repository, digest) = image
            .split_once('@')
            .with_context(|| format!("{image}: not a reference by digest"))?;
        let tls = make_server_cert(&work_dir.join("gateway-tls"), &[gateway_ip])?;
        for ns in [namespace, watch] {
            let exists = env.kubectl(["get", "namespace", ns]).run().ok();
            if !exists {
                env.kubectl(["create", "namespace", ns])
                    .run()
                    .checked("creating a namespace")?;
            }
            // Its own admission policy holds here, the shared release's does not (release.rs).
            env.kubectl([
                "label",
                "--overwrite",
                "namespace",
                ns,
                &format!("{}={name}", crate::release::OTHER_RELEASE_LABEL),
            ])
            .run()
            .checked("labelling the namespace")?;
        }
        let p = |path: &Path| path.to_string_lossy().into_owned();
        let secret = env
            .kubectl([
                "create",
                "secret",
                "tls",
                "gateway-tls",
                "-n",
                namespace,
                "--cert",
                &p(&tls.cert),
                "--key",
                &p(&tls.key),
                "--dry-run=client",
                "-o",
                "yaml",
            ])
            .run()
            .checked("the gateway's TLS Secret")?;
        env.kubectl(["apply", "--server-side", "-f", "-"])
            .stdin(secret)
            .run()
            .checked("applying the gateway's TLS Secret")?;
        let selector =
            serde_json::json!({"matchLabels": {crate::release::OTHER_RELEASE_LABEL: name}});
        let mut args: Vec<String> = [
            "upgrade",
            "--install",
            name,
            "charts/edgevisor",
            "--namespace",
            namespace,
            "--force-conflicts",
            "--wait",
            "--timeout",
            "4m",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for set in [
            format!("image.repository={repository}"),
            format!("image.digest={digest}"),
            format!("watchNamespace={watch}"),
            "gateway.replicas=1".to_string(),
            "gateway.tls.secretName=gateway-tls".to_string(),
            format!("gateway.service.clusterIP={gateway_ip}"),
        ] {
            args.push("--set".into());
            args.push(set);
        }
        args.push("--set-json".into());
        args.push(format!("admission.namespaceSelector={selector}"));
        args.extend(extra.iter().cloned());
        let run = env.helm(&args).run();
        if !run.ok() {
            let pods = env
                .kubectl(["get", "pods,events", "-n", namespace, "-o", "wide"])
                .run();
            bail!(
                "helm install --wait: {}{}\n{}{}",
                run.stdout,
                run.stderr,
                pods.stdout,
                pods.stderr
            );
        }
        Ok(PodRelease {
            name: name.to_string(),
            namespace: namespace.to_string(),
            watch: watch.to_string(),
            gateway_ip,
            tls,
        })
    }

    /// The chart's `edgevisor.fullname`: the prefix of every object of the release.
    pub fn fullname(&self) -> String {
        if self.name.contains("edgevisor") {
            self.name.clone()
        } else {
            format!("{}-edgevisor", self.name)
        }
    }

    /// The Secret whose `ed25519.pub` devices are given.
    pub fn signing_key_secret(&self) -> String {
        format!("{}-revision-signing-key", self.fullname())
    }

    /// The pod's address (reachable from the host: the node's pod network is routed here).
    pub fn pod_ip(&self, env: &Env, pod: &str) -> anyhow::Result<String> {
        let ip = env
            .kubectl([
                "get",
                "pod",
                pod,
                "-n",
                &self.namespace,
                "-o",
                "jsonpath={.status.podIP}",
            ])
            .run()
            .checked("reading a pod's IP")?;
        ensure!(!ip.trim().is_empty(), "pod {pod} has no IP yet");
        Ok(ip.trim().to_string())
    }

    /// `kubectl logs` of `component`'s Deployment (its current pod), the last `tail` lines.
    pub fn logs(&self, env: &Env, component: &str, tail: usize) -> String {
        let run = env
            .kubectl([
                "logs",
                "-n",
                &self.namespace,
                &format!("deployment/{}-{component}", self.fullname()),
                &format!("--tail={tail}"),
            ])
            .run();
        format!("{}{}", run.stdout, run.stderr)
    }

    /// The command a user runs for `component`'s logs.
    pub fn logs_command(&self, component: &str) -> String {
        format!(
            "kubectl logs -n {} deployment/{}-{component}",
            self.namespace,
            self.fullname()
        )
    }

    /// Who holds the controller's Lease (empty when nobody does).
    pub fn lease_holder(&self, env: &Env) -> anyhow::Result<String> {
        let holder = env
            .kubectl([
                "get",
                "lease",
                "edgevisor-controller",
                "-n",
                &self.namespace,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .run()
            .checked("reading the controller's Lease")?;
        Ok(holder.trim().to_string())
    }

    /// The name of the running pod of `component` (`controller` or `gateway`); fails unless
    /// exactly one runs.
    pub fn pod(&self, env: &Env, component: &str) -> anyhow::Result<String> {
        let out = env
            .kubectl([
                "get",
                "pods",
                "-n",
                &self.namespace,
                "-l",
                &format!(
                    "app.kubernetes.io/instance={},app.kubernetes.io/component={component}",
                    self.name
                ),
                "--field-selector=status.phase=Running",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ])
            .run()
            .checked("listing pods")?;
        let pods: Vec<&str> = out.split_whitespace().collect();
        ensure!(
            pods.len() == 1,
            "expected one running {component} pod, found {pods:?}"
        );
        Ok(pods[0].to_string())
    }
}
