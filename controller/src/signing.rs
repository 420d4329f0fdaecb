//! The controller's revision-signing key: an Ed25519 key in a Secret of the controller's
//! namespace that only its ServiceAccount may read, created on first start. Every rendered
//! state is signed with it ([`edgevisor_protocol::signature`] says which bytes); devices get
//! the public key with their bootstrap material and refuse a state it did not sign, so neither
//! the gateway nor anyone who can write FleetRevisions without this key can make a device run
//! something.
use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use edgevisor_protocol::signature::{self, RevisionSignature};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use ring::signature::{Ed25519KeyPair, KeyPair};
use tracing::info;

use crate::error::Error;

/// The Secret's key holding the private key (PKCS#8 DER).
pub const PRIVATE_KEY: &str = "ed25519.pk8";
/// The Secret's key holding the public key as a device's public-key file (one base64 line).
pub const PUBLIC_KEY: &str = "ed25519.pub";

/// Signs rendered states.
pub struct Signer {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl Signer {
    /// A signer from a PKCS#8 Ed25519 private key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Signer, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?;
        let key_id = signature::key_id(pair.public_key().as_ref());
        Ok(Signer { pair, key_id })
    }

    /// A new random key, as PKCS#8 DER.
    pub fn generate() -> Result<Vec<u8>, String> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|e| format!("generating a key: {e}"))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key as a line of a device's public-key file.
    pub fn public_key_line(&self) -> String {
        signature::encode_public_key(self.pair.public_key().as_ref())
    }

    /// Signs the state `state_sha256` (hex) of `architecture` in revision `namespace/revision`.
    pub fn sign(
        &self,
        namespace: &str,
        revision: &str,
        architecture: &str,
        state_sha256: &str,
    ) -> RevisionSignature {
        let message = signature::message(namespace, revision, architecture, state_sha256);
        RevisionSignature {
            key_id: self.key_id.clone(),
            value: BASE64.encode(self.pair.sign(&message).as_ref()),
        }
    }
}

fn signing_error(name: &str, reason: impl Into<String>) -> Error {
    Error::SigningKey {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// Reads the signing key from the Secret `name`. A Secret without a key (the chart creates an
/// empty one, so the controller needs no right to create Secrets) gets a new key; a missing
/// Secret is created with one. Replicas racing agree on whichever write landed first: each
/// write carries the resourceVersion it read.
pub async fn load_or_create(client: &Client, namespace: &str, name: &str) -> Result<Signer, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..5 {
        let existing = api.get_opt(name).await?;
        if let Some(der) = existing
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(PRIVATE_KEY))
        {
            let signer = Signer::from_pkcs8(&der.0).map_err(|e| signing_error(name, e))?;
            info!(secret = %name, key_id = %signer.key_id(), public_key = %signer.public_key_line(), "signing revisions");
            return Ok(signer);
        }
        let der = Signer::generate().map_err(|e| signing_error(name, e))?;
        let signer = Signer::from_pkcs8(&der).map_err(|e| signing_error(name, e))?;
        let data = BTreeMap::from([
            (PRIVATE_KEY.to_string(), ByteString(der)),
            (
                PUBLIC_KEY.to_string(),
                ByteString(format!("{}\n", signer.public_key_line()).into_bytes()),
            ),
        ]);
        let written = match existing {
            Some(mut secret) => {
                secret.data = Some(data);
                api.replace(name, &PostParams::default(), &secret).await
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        ..Default::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(data),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &secret).await
            }
        };
        match written {
            Ok(_) => {
                info!(secret = %name, key_id = %signer.key_id(), public_key = %signer.public_key_line(), "created the revision-signing key; signing revisions");
                return Ok(signer);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(kube::Error::Api(e)) if e.code == 403 => {
                return Err(signing_error(
                    name,
                    format!(
                        "cannot write it ({}); create the Secret (the chart does) or let the \
                         controller's ServiceAccount write it",
                        e.message
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(signing_error(
        name,
        "changed under the controller five times; try again",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ED25519, UnparsedPublicKey};

    #[test]
    fn a_signature_verifies_for_exactly_what_was_signed() {
        let signer = Signer::from_pkcs8(&Signer::generate().unwrap()).unwrap();
        let sig = signer.sign("ns", "web-1", "amd64", "ab");
        let keys = signature::parse_public_keys(&signer.public_key_line()).unwrap();
        assert_eq!(sig.key_id, signature::key_id(&keys[0]));
        let verify = |ns, rev, arch, digest| {
            UnparsedPublicKey::new(&ED25519, &keys[0])
                .verify(
                    &signature::message(ns, rev, arch, digest),
                    &BASE64.decode(&sig.value).unwrap(),
                )
                .is_ok()
        };
        assert!(verify("ns", "web-1", "amd64", "ab"));
        assert!(!verify("other", "web-1", "amd64", "ab"));
        assert!(!verify("ns", "web-2", "amd64", "ab"));
        assert!(!verify("ns", "web-1", "arm64", "ab"));
        assert!(!verify("ns", "web-1", "amd64", "ac"));
        assert!(Signer::from_pkcs8(b"not a key").is_err());
    }
}
