//! `edgevisor`: the cluster side of edgevisor. `edgevisor controller` runs the fleet
//! controller (leader-elected, with /metrics, /healthz, /readyz); `edgevisor gateway` runs the
//! device-facing HTTPS API (any number of replicas); `edgevisor probe` checks URLs answer (for
//! `helm test`: the image has no shell).
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use edgevisor_controller::cli::{Cli, Command};
use edgevisor_controller::gateway::{self, target::RegistryMap};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    // reqwest is built without a crypto provider of its own: use the one kube uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let command = Cli::parse().command;
    if let Command::Probe(p) = &command {
        return edgevisor_controller::probe::run(
            &p.probes,
            p.insecure_skip_tls_verify,
            Duration::from_secs(p.timeout_seconds),
        )
        .await;
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    match command {
        Command::Controller(config) => {
            let ended = edgevisor_controller::run(client, &config, shutdown_signal()).await?;
            if ended == edgevisor_controller::Ended::LostLease {
                anyhow::bail!("lost the leader lease; exiting so that only one replica acts");
            }
            tracing::info!("stopped");
        }
        Command::Gateway(a) => {
            let config = gateway::Config {
                token_namespace: a.token_namespace,
                token_secrets: a.bootstrap_token_secrets,
                registries: RegistryMap {
                    device_urls: a.device_registries.into_iter().collect(),
                    insecure: a.insecure_registries.into_iter().collect(),
                },
                liveness: Duration::from_secs(a.liveness_interval_seconds),
                coalesce: Duration::from_millis(a.status_coalesce_ms),
                owner: a
                    .pod_uid
                    .as_ref()
                    .zip(a.identity.as_ref())
                    .map(|(uid, name)| {
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                            api_version: "v1".into(),
                            kind: "Pod".into(),
                            name: name.clone(),
                            uid: uid.clone(),
                            ..Default::default()
                        }
                    }),
                identity: a
                    .identity
                    .unwrap_or_else(edgevisor_controller::run::default_identity),
                limits: gateway::http::Limits {
                    max_connections: usize::try_from(a.max_connections).unwrap_or(usize::MAX),
                    handshake: Duration::from_secs(a.client_timeout_seconds),
                    headers: Duration::from_secs(a.client_timeout_seconds),
                    body: Duration::from_secs(a.client_timeout_seconds),
                },
            };
            let tls = gateway::tls::ReloadingCert::open(&a.tls_cert, &a.tls_key)?;
            gateway::run(
                client,
                config,
                a.namespace,
                a.listen,
                a.metrics_addr,
                tls,
                shutdown_signal(),
            )
            .await?;
        }
        Command::Probe(_) => {}
    }
    Ok(())
}

async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
