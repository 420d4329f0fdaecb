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

/// The annotation by which an operator who created a Device lets a bootstrap token adopt it:
/// the token Secret's name (or several, comma-separated). Without it no token can take over a
/// Device it did not create and receive that Device's configuration.
pub const ENROLL_WITH_ANNOTATION: &str = "edgevisor.dev/enroll-with";
/// Enrollment rereads and retries after a lost write race at most this often (each lost race
/// is another enrollment winning, so this bounds the concurrency one request outlasts).
const ATTEMPTS: usize = 32;

/// Why an enrollment failed, with the HTTP status it maps to. Messages are for the device: they
/// never carry the apiserver's text (that is logged).
#[derive(Debug, PartialEq, thiserror::Error)]
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

/// A write that lost an optimistic-concurrency race: read again and decide again.
struct Lost;

fn api_error(what: &str, e: kube::Error) -> EnrollError {
    warn!(%what, error = %e, "enrollment: Kubernetes API");
    EnrollError::Unavailable("the gateway could not complete the enrollment; try again".into())
}

/// Splits a write's result into done, lost a race (409), or failed.
fn raced<T>(what: &str, r: Result<T, kube::Error>) -> Result<Result<T, Lost>, EnrollError> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Err(Lost)),
        Err(e) => Err(api_error(what, e)),
    }
}

/// What an enrollment does with the Device of the name it asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// No such Device: create it. Uses one of the token's enrollments.
    Create,
    /// A Device the operator created for this token: enroll it. Uses one enrollment.
    Adopt,
    /// A Device this token created whose enrollment has not been written yet (a concurrent
    /// or interrupted enrollment): its enrollment was already counted.
    Finish,
    /// A revoked Device enrolling again: counted when it first enrolled.
    Reenroll,
}

impl Admission {
    fn uses_enrollment(&self) -> bool {
        matches!(self, Admission::Create | Admission::Adopt)
    }
}

/// Decides what an enrollment with `token` may do with `existing`, the Device of its name.
/// Pure: called again after every lost race, on what was read again.
pub fn admission(
    existing: Option<&Device>,
    token: &BootstrapToken,
) -> Result<Admission, EnrollError> {
    let Some(d) = existing else {
        return Ok(Admission::Create);
    };
    let name = d.name_any();
    let enrolled = d
        .status
        .as_ref()
        .and_then(|s| s.enrollment.as_ref())
        .is_some();
    if enrolled {
        return if d.spec.revoked {
            Ok(Admission::Reenroll)
        } else {
            Err(EnrollError::Conflict(format!(
                "device {name} is already enrolled; to enroll it again, an operator revokes it \
                 (spec.revoked: true) or deletes the Device"
            )))
        };
    }
    if d.labels().get(TOKEN_LABEL) == Some(&token.secret_name) {
        return Ok(Admission::Finish);
    }
    let allowed = d
        .annotations()
        .get(ENROLL_WITH_ANNOTATION)
        .is_some_and(|v| v.split(',').any(|t| t.trim() == token.secret_name));
    if allowed {
        Ok(Admission::Adopt)
    } else {
        Err(EnrollError::Forbidden(format!(
            "device {name} was created by an operator and does not allow this bootstrap token \
             (annotation {ENROLL_WITH_ANNOTATION})"
        )))
    }
}

impl TokenCache {
    /// The token Secret `presented` belongs to, from the cache (so garbage costs no API call).
    pub async fn find(&self, gw: &Gateway, presented: &str) -> Option<String> {
        self.tokens(gw)
            .await
            .into_iter()
            .find(|t| t.matches(presented))
            .map(|t| t.secret_name)
    }

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

/// The token Secret as it is now (expiry, limit, count and resourceVersion are never taken
/// from the cache), if it still holds `presented`.
async fn read_token(
    secrets: &Api<Secret>,
    name: &str,
    presented: &str,
) -> Result<BootstrapToken, EnrollError> {
    let unknown = || EnrollError::Unauthorized(Refusal::Unknown.to_string());
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| api_error("reading the bootstrap token", e))?
        .ok_or_else(unknown)?;
    let token = BootstrapToken::parse(&secret).map_err(|why| {
        warn!(%why, "ignoring a bootstrap token");
        unknown()
    })?;
    if token.matches(presented) {
        Ok(token)
    } else {
        Err(unknown())
    }
}

/// Moves the token's count by `delta`, if nobody wrote the Secret since `token` was read.
async fn count_usage(
    secrets: &Api<Secret>,
    token: &BootstrapToken,
    delta: isize,
) -> Result<Result<(), Lost>, EnrollError> {
    let patch = json!({"metadata": {
        "resourceVersion": token.resource_version,
        "annotations": {auth::USAGE_ANNOTATION: token.usage_after(delta)},
    }});
    raced(
        "counting a bootstrap token's use",
        secrets
            .patch(
                &token.secret_name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .map(drop),
    )
}

/// Gives back an enrollment taken by an attempt that then lost its race. Best effort: a use
/// not given back makes the token admit one device fewer, never one more.
async fn give_back(secrets: &Api<Secret>, name: &str, presented: &str) {
    for _ in 0..ATTEMPTS {
        let Ok(token) = read_token(secrets, name, presented).await else {
            return;
        };
        if token.used == 0 {
            return;
        }
        // Only a lost race is worth another try; a refused or failed write stays refused.
        match count_usage(secrets, &token, -1).await {
            Ok(Err(Lost)) => continue,
            Ok(Ok(())) | Err(_) => return,
        }
    }
}

/// Enrolls a device presenting `presented`, a bootstrap token of the Secret `secret_name`
/// ([`TokenCache::find`]).
pub async fn enroll(
    gw: &Gateway,
    secret_name: &str,
    presented: &str,
    request: &EnrollRequest,
) -> Result<EnrollResponse, EnrollError> {
    let problems = request.validate();
    if !problems.is_empty() {
        return Err(EnrollError::Invalid(problems.join("; ")));
    }
    let architecture: Architecture = serde_json::from_value(json!(request.architecture))
        .map_err(|e| EnrollError::Invalid(e.to_string()))?;
    let secrets: Api<Secret> = Api::namespaced(gw.client.clone(), &gw.config.token_namespace);
    for _ in 0..ATTEMPTS {
        let token = read_token(&secrets, secret_name, presented).await?;
        let namespace = token.device_namespace.clone();
        let api: Api<Device> = Api::namespaced(gw.client.clone(), &namespace);
        let existing = api
            .get_opt(&request.name)
            .await
            .map_err(|e| api_error("reading the Device", e))?;
        let admission = admission(existing.as_ref(), &token)?;
        let now = Timestamp::now();
        let refused = |r: Refusal| EnrollError::Forbidden(r.to_string());
        if admission.uses_enrollment() {
            token.admits(now).map_err(refused)?;
            if token.usage_limit.is_some() && count_usage(&secrets, &token, 1).await?.is_err() {
                continue;
            }
        } else {
            token.unexpired(now).map_err(refused)?;
        }
        let counted = admission.uses_enrollment() && token.usage_limit.is_some();
        let device = match existing {
            Some(d) => d,
            None => {
                let mut d = Device::new(&request.name, DeviceSpec::default());
                let mut labels = token.labels.clone();
                labels.insert(TOKEN_LABEL.into(), token.secret_name.clone());
                d.metadata.labels = Some(labels);
                match raced(
                    "creating the Device",
                    api.create(&PostParams::default(), &d).await,
                )? {
                    Ok(created) => created,
                    Err(Lost) => {
                        if counted {
                            give_back(&secrets, secret_name, presented).await;
                        }
                        continue;
                    }
                }
            }
        };
        let credential = auth::new_credential()
            .map_err(|e| EnrollError::Unavailable(format!("no randomness: {e}")))?;
        let status = json!({
            "apiVersion": "edgevisor.dev/v1alpha1",
            "kind": "Device",
            // The write fails if the Device changed since it was read: of concurrent
            // enrollments of one name, one wins and the others decide again on what it wrote.
            "metadata": {"resourceVersion": device.resource_version()},
            "status": {
                "enrollment": Enrollment {
                    credential_sha256: auth::sha256_hex(credential.as_bytes()),
                    bootstrap_token: token.secret_name.clone(),
                    enrolled_at: Time(now),
                },
                "architecture": architecture,
                "info": request.info,
            },
        });
        let written = api
            .patch_status(
                &request.name,
                &PatchParams::apply(ENROLLMENT_MANAGER).force(),
                &Patch::Apply(status),
            )
            .await;
        if raced("writing the enrollment", written)?.is_err() {
            // A created Device stays: the winner of the race finishes it (Admission::Finish),
            // so its counted use is the winner's.
            if counted && admission == Admission::Adopt {
                give_back(&secrets, secret_name, presented).await;
            }
            continue;
        }
        gw.metrics.enrolled();
        info!(%namespace, device = %request.name, token = %token.secret_name, ?admission, "enrolled");
        return Ok(EnrollResponse {
            namespace,
            name: request.name.clone(),
            credential,
        });
    }
    Err(EnrollError::Conflict(
        "too many enrollments at once for this name or token; try again".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgevisor_crds::DeviceStatus;
    use k8s_openapi::ByteString;

    fn token(name: &str) -> BootstrapToken {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            type_: Some(auth::BOOTSTRAP_TOKEN_TYPE.into()),
            data: Some(
                [(
                    "token".to_string(),
                    ByteString(b"0123456789abcdef".to_vec()),
                )]
                .into_iter()
                .collect(),
            ),
            ..Default::default()
        };
        BootstrapToken::parse(&secret).unwrap()
    }

    fn device(
        enrolled: bool,
        revoked: bool,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> Device {
        let mut d = Device::new("d", DeviceSpec::default());
        d.spec.revoked = revoked;
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        d.metadata.labels = map(labels);
        d.metadata.annotations = map(annotations);
        if enrolled {
            d.status = Some(DeviceStatus {
                enrollment: Some(Enrollment {
                    credential_sha256: "h".into(),
                    bootstrap_token: "tok".into(),
                    enrolled_at: Time(Timestamp::UNIX_EPOCH),
                }),
                ..Default::default()
            });
        }
        d
    }

    #[test]
    fn who_may_enroll_a_name_that_exists() {
        let t = token("tok");
        assert_eq!(admission(None, &t), Ok(Admission::Create));
        assert!(matches!(
            admission(Some(&device(true, false, &[], &[])), &t),
            Err(EnrollError::Conflict(_))
        ));
        assert_eq!(
            admission(Some(&device(true, true, &[], &[])), &t),
            Ok(Admission::Reenroll)
        );
        // Operator-created: only a token the Device names may adopt it.
        let err = admission(Some(&device(false, false, &[], &[])), &t).unwrap_err();
        assert!(matches!(&err, EnrollError::Forbidden(m) if m.contains(ENROLL_WITH_ANNOTATION)));
        assert!(matches!(
            admission(
                Some(&device(
                    false,
                    false,
                    &[],
                    &[(ENROLL_WITH_ANNOTATION, "other")]
                )),
                &t
            ),
            Err(EnrollError::Forbidden(_))
        ));
        assert_eq!(
            admission(
                Some(&device(
                    false,
                    false,
                    &[],
                    &[(ENROLL_WITH_ANNOTATION, "other, tok")]
                )),
                &t
            ),
            Ok(Admission::Adopt)
        );
        // Created by this token, enrollment not written yet: finished without a second use;
        // another token may not.
        let half = device(false, false, &[(TOKEN_LABEL, "tok")], &[]);
        assert_eq!(admission(Some(&half), &t), Ok(Admission::Finish));
        assert!(matches!(
            admission(Some(&half), &token("other")),
            Err(EnrollError::Forbidden(_))
        ));
    }
}
