//! Enrollment: a bootstrap token admits a device; the gateway creates its Device (or adopts
//! one an operator created) and records the hash of a new credential in
//! `status.enrollment`, under its own field manager so status writes never drop it.
use std::time::{Duration, Instant};

use edgevisor_crds::device::Enrollment;
use edgevisor_crds::{Architecture, Device, DeviceSpec};
use edgevisor_protocol::gateway::{EnrollRequest, EnrollResponse};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::Gateway;
use super::auth::{self, BootstrapToken, Refusal};

/// The field manager of `status.enrollment`, `status.architecture` and `status.info`.
pub const ENROLLMENT_MANAGER: &str = "edgevisor-gateway-enrollment";
/// The label naming the bootstrap token a Device was created with.
pub const TOKEN_LABEL: &str = "edgevisor.dev/bootstrap-token";
/// Bootstrap tokens are read again after this long, so a deleted or edited token takes
/// effect within it.
const TOKEN_TTL: Duration = Duration::from_secs(5);

/// The bootstrap token Secrets, read on demand (enrollment is rare) and kept briefly.
#[derive(Default)]
pub struct TokenCache {
    inner: Mutex<Option<(Instant, Vec<BootstrapToken>)>>,
}

/// Why an enrollment failed, with the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<kube::Error> for EnrollError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) if s.code == 409 => EnrollError::Conflict(format!(
                "the Device changed while enrolling; try again ({})",
                s.message
            )),
            kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
                EnrollError::Invalid(s.message)
            }
            other => EnrollError::Unavailable(format!("Kubernetes API: {other}")),
        }
    }
}

impl TokenCache {
    async fn tokens(&self, gw: &Gateway) -> Vec<BootstrapToken> {
        let mut guard = self.inner.lock().await;
        if let Some((at, tokens)) = guard.as_ref()
            && at.elapsed() < TOKEN_TTL
        {
            return tokens.clone();
        }
        let api: Api<Secret> = Api::namespaced(gw.client.clone(), &gw.config.token_namespace);
        let mut tokens = Vec::new();
        for name in &gw.config.token_secrets {
            match api.get_opt(name).await {
                Ok(Some(secret)) => match BootstrapToken::parse(&secret) {
                    Ok(t) => tokens.push(t),
                    Err(why) => warn!(%why, "ignoring a bootstrap token"),
                },
                Ok(None) => {}
                Err(error) => warn!(secret = %name, %error, "reading a bootstrap token"),
            }
        }
        *guard = Some((Instant::now(), tokens.clone()));
        tokens
    }
}

/// Enrolls a device presenting `presented` (a bootstrap token).
pub async fn enroll(
    gw: &Gateway,
    presented: &str,
    request: &EnrollRequest,
) -> Result<EnrollResponse, EnrollError> {
    let tokens = gw.tokens.tokens(gw).await;
    let token = tokens
        .iter()
        .find(|t| t.matches(presented))
        .ok_or_else(|| EnrollError::Unauthorized(Refusal::Unknown.to_string()))?;
    let problems = request.validate();
    if !problems.is_empty() {
        return Err(EnrollError::Invalid(problems.join("; ")));
    }
    let architecture: Architecture = serde_json::from_value(json!(request.architecture))
        .map_err(|e| EnrollError::Invalid(e.to_string()))?;
    let namespace = token.device_namespace.clone();
    let api: Api<Device> = Api::namespaced(gw.client.clone(), &namespace);
    let existing = api.get_opt(&request.name).await?;
    let enrolled = existing
        .as_ref()
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.enrollment.as_ref());
    if let Some(d) = &existing
        && enrolled.is_some()
        && !d.spec.revoked
    {
        return Err(EnrollError::Conflict(format!(
            "device {namespace}/{} is already enrolled; to enroll it again, revoke it \
             (spec.revoked: true) or delete the Device",
            request.name
        )));
    }
    // A revoked device enrolling again was counted when it first enrolled.
    if enrolled.is_none() {
        token
            .admits(
                Timestamp::now(),
                gw.devices.enrolled_with(&token.secret_name),
            )
            .map_err(|r| EnrollError::Forbidden(r.to_string()))?;
    }
    let device = match existing {
        Some(d) => d,
        None => {
            let mut d = Device::new(&request.name, DeviceSpec::default());
            let mut labels = token.labels.clone();
            labels.insert(TOKEN_LABEL.into(), token.secret_name.clone());
            d.metadata.labels = Some(labels);
            match api.create(&PostParams::default(), &d).await {
                Ok(created) => created,
                Err(kube::Error::Api(s)) if s.code == 409 => api.get(&request.name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let credential = auth::new_credential()
        .map_err(|e| EnrollError::Unavailable(format!("no randomness: {e}")))?;
    let status = json!({
        "apiVersion": "edgevisor.dev/v1alpha1",
        "kind": "Device",
        // The write fails if the Device changed since it was read: two replicas enrolling
        // the same name cannot both win.
        "metadata": {"resourceVersion": device.resource_version()},
        "status": {
            "enrollment": Enrollment {
                credential_sha256: auth::sha256_hex(credential.as_bytes()),
                bootstrap_token: token.secret_name.clone(),
                enrolled_at: Time(Timestamp::now()),
            },
            "architecture": architecture,
            "info": request.info,
        },
    });
    api.patch_status(
        &request.name,
        &PatchParams::apply(ENROLLMENT_MANAGER).force(),
        &Patch::Apply(status),
    )
    .await?;
    gw.metrics.enrolled();
    info!(%namespace, device = %request.name, token = %token.secret_name, "enrolled");
    Ok(EnrollResponse {
        namespace,
        name: request.name.clone(),
        credential,
    })
}
