//! Credentials and bootstrap tokens. Pure: parsing a token Secret and deciding whether a
//! presented token admits a device are functions of their inputs and the time.
//!
//! A device credential is 32 random bytes; the gateway stores only its sha256 in
//! `Device.status.enrollment`, so a leaked Device object admits no one. The credential has
//! 256 bits of entropy, so a plain hash (not a slow password hash) is enough.
use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use sha2::{Digest, Sha256};

/// The Secret type of bootstrap tokens.
pub const BOOTSTRAP_TOKEN_TYPE: &str = "edgevisor.dev/bootstrap-token";
const CREDENTIAL_PREFIX: &str = "evd1_";
/// The annotation on a token Secret counting the Devices it enrolled: `<count>/<tag>`, where
/// the tag is the start of the token's hash, so a new token value in the same Secret starts
/// from zero. Written with the Secret's resourceVersion as a precondition, so the count is
/// exact across gateway replicas.
pub const USAGE_ANNOTATION: &str = "edgevisor.dev/enrollments";

/// A parsed bootstrap token Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct BootstrapToken {
    pub secret_name: String,
    token_sha256: [u8; 32],
    pub expiration: Option<Timestamp>,
    pub usage_limit: Option<usize>,
    /// The namespace its Devices are created in.
    pub device_namespace: String,
    /// Labels every Device it enrolls gets.
    pub labels: BTreeMap<String, String>,
    /// Devices enrolled with this token value so far ([`USAGE_ANNOTATION`]).
    pub used: usize,
    /// The Secret's resourceVersion, the precondition of a usage write.
    pub resource_version: Option<String>,
}

/// Why a presented bootstrap token does not admit a device.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown bootstrap token")]
    Unknown,
    #[error("bootstrap token {0} expired at {1}")]
    Expired(String, String),
    #[error("bootstrap token {0} has enrolled its limit of {1} devices")]
    UsedUp(String, usize),
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha256(bytes))
}

fn usage_tag(token_sha256: &[u8; 32]) -> String {
    hex::encode(&token_sha256[..6])
}

/// Equal in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new device credential (from the kernel's CSPRNG).
pub fn new_credential() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!(
        "{CREDENTIAL_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The `Bearer` token of an `Authorization` header.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 512)
        .then_some(token)
}

fn data<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
}

fn text(secret: &Secret, key: &str) -> Result<Option<String>, String> {
    data(secret, key)
        .map(|b| {
            String::from_utf8(b.to_vec())
                .map(|s| s.trim().to_string())
                .map_err(|_| format!("{key} is not UTF-8"))
        })
        .transpose()
}

impl BootstrapToken {
    /// Parses a bootstrap token Secret; a malformed one admits no one, and says why.
    pub fn parse(secret: &Secret) -> Result<BootstrapToken, String> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let bad = |why: String| format!("bootstrap token Secret {name}: {why}");
        if secret.type_.as_deref() != Some(BOOTSTRAP_TOKEN_TYPE) {
            return Err(bad(format!("type must be {BOOTSTRAP_TOKEN_TYPE}")));
        }
        let token = text(secret, "token").map_err(&bad)?.unwrap_or_default();
        if token.len() < 16 {
            return Err(bad("token must be at least 16 characters".into()));
        }
        let expiration = text(secret, "expiration")
            .map_err(&bad)?
            .map(|t| {
                t.parse::<Timestamp>()
                    .map_err(|e| bad(format!("expiration {t:?} is not RFC 3339: {e}")))
            })
            .transpose()?;
        let usage_limit = text(secret, "usage-limit")
            .map_err(&bad)?
            .map(|t| {
                t.parse::<usize>()
                    .map_err(|_| bad(format!("usage-limit {t:?} is not a count")))
            })
            .transpose()?;
        let device_namespace = text(secret, "device-namespace")
            .map_err(&bad)?
            .unwrap_or_else(|| "default".into());
        if !edgevisor_protocol::gateway::is_dns_label(&device_namespace) {
            return Err(bad(format!(
                "device-namespace {device_namespace:?} is not a namespace name"
            )));
        }
        let mut labels = BTreeMap::new();
        for pair in text(secret, "labels")
            .map_err(&bad)?
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("label {pair:?} is not key=value")))?;
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        let token_sha256 = sha256(token.as_bytes());
        let tag = usage_tag(&token_sha256);
        // A count for another token value, or one nobody could have written, starts over;
        // an unreadable one fails closed.
        let used = match secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(USAGE_ANNOTATION))
            .and_then(|v| v.split_once('/'))
        {
            Some((n, t)) if t == tag => n
                .parse()
                .map_err(|_| bad(format!("{USAGE_ANNOTATION} {n:?} is not a count")))?,
            _ => 0,
        };
        Ok(BootstrapToken {
            secret_name: name,
            token_sha256,
            expiration,
            usage_limit,
            device_namespace,
            labels,
            used,
            resource_version: secret.metadata.resource_version.clone(),
        })
    }

    /// The [`USAGE_ANNOTATION`] value after `delta` more enrollments.
    pub fn usage_after(&self, delta: isize) -> String {
        format!(
            "{}/{}",
            self.used.saturating_add_signed(delta),
            usage_tag(&self.token_sha256)
        )
    }

    pub fn matches(&self, presented: &str) -> bool {
        same(&self.token_sha256, &sha256(presented.as_bytes()))
    }

    /// Whether this token is still valid at `now`: checked on every enrollment, also of a
    /// revoked device enrolling again.
    pub fn unexpired(&self, now: Timestamp) -> Result<(), Refusal> {
        match self.expiration {
            Some(exp) if now >= exp => {
                Err(Refusal::Expired(self.secret_name.clone(), exp.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// Whether this token may enroll one more device.
    pub fn admits(&self, now: Timestamp) -> Result<(), Refusal> {
        self.unexpired(now)?;
        if let Some(limit) = self.usage_limit
            && self.used >= limit
        {
            return Err(Refusal::UsedUp(self.secret_name.clone(), limit));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(pairs: &[(&str, &str)], type_: &str) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("tok".into()),
                ..Default::default()
            },
            type_: Some(type_.into()),
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_token_admits_until_it_expires_or_is_used_up() {
        let t = BootstrapToken::parse(&secret(
            &[
                ("token", "0123456789abcdef0123"),
                ("expiration", "2030-01-01T00:00:00Z"),
                ("usage-limit", "2"),
                ("device-namespace", "fleet-a"),
                ("labels", "site=lab, tier=edge"),
            ],
            BOOTSTRAP_TOKEN_TYPE,
        ))
        .unwrap();
        assert!(t.matches("0123456789abcdef0123"));
        assert!(!t.matches("0123456789abcdef0124"));
        assert_eq!(t.labels["tier"], "edge");
        assert_eq!(t.device_namespace, "fleet-a");
        let before: Timestamp = "2029-12-31T23:59:59Z".parse().unwrap();
        let after: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(t.used, 0);
        assert_eq!(t.admits(before), Ok(()));
        assert!(matches!(t.admits(after), Err(Refusal::Expired(..))));
        assert!(matches!(t.unexpired(after), Err(Refusal::Expired(..))));
        // The count written back is read as this token's, up to the limit.
        let mut counted = secret(
            &[
                ("token", "0123456789abcdef0123"),
                ("expiration", "2030-01-01T00:00:00Z"),
                ("usage-limit", "2"),
            ],
            BOOTSTRAP_TOKEN_TYPE,
        );
        counted.metadata.annotations = Some(
            [(USAGE_ANNOTATION.to_string(), t.usage_after(2))]
                .into_iter()
                .collect(),
        );
        let used_up = BootstrapToken::parse(&counted).unwrap();
        assert_eq!(used_up.used, 2);
        assert!(matches!(used_up.admits(before), Err(Refusal::UsedUp(_, 2))));
        assert_eq!(used_up.usage_after(-1), t.usage_after(1));
        // A new token value in the same Secret starts from zero.
        let mut rotated = counted.clone();
        if let Some(d) = rotated.data.as_mut() {
            d.insert(
                "token".into(),
                ByteString(b"another-token-value-0".to_vec()),
            );
        }
        assert_eq!(BootstrapToken::parse(&rotated).unwrap().used, 0);
    }

    #[test]
    fn a_malformed_token_secret_says_what_is_wrong() {
        let cases = [
            (
                vec![("token", "short")],
                BOOTSTRAP_TOKEN_TYPE,
                "at least 16",
            ),
            (
                vec![("token", "0123456789abcdef")],
                "Opaque",
                "type must be",
            ),
            (
                vec![("token", "0123456789abcdef"), ("expiration", "tomorrow")],
                BOOTSTRAP_TOKEN_TYPE,
                "RFC 3339",
            ),
            (
                vec![("token", "0123456789abcdef"), ("usage-limit", "-1")],
                BOOTSTRAP_TOKEN_TYPE,
                "not a count",
            ),
            (
                vec![("token", "0123456789abcdef"), ("labels", "novalue")],
                BOOTSTRAP_TOKEN_TYPE,
                "key=value",
            ),
        ];
        for (pairs, type_, want) in cases {
            let err = BootstrapToken::parse(&secret(&pairs, type_)).unwrap_err();
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }

    #[test]
    fn credentials_are_random_and_bearer_headers_parse() {
        let a = new_credential().unwrap();
        let b = new_credential().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(CREDENTIAL_PREFIX) && a.len() > 40);
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(None), None);
    }
}
