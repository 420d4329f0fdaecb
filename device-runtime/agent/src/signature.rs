//! Signed revisions on the device: the controller's public keys, given with the bootstrap
//! material (never learned from the gateway), and the check every target passes before the
//! runtime sees its state. A gateway that serves a forged or altered state, or one fleet's
//! state to another namespace, gets nothing installed.
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use edgevisor_protocol::gateway::Target;
use edgevisor_protocol::signature;
use ring::signature::{ED25519, UnparsedPublicKey};

use crate::error::Error;

/// The controller's public keys this device trusts (several during a key rotation).
#[derive(Debug, Clone)]
pub struct RevisionKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl RevisionKeys {
    /// Reads a public-key file ([`signature::parse_public_keys`]).
    pub fn load(path: &Path) -> Result<RevisionKeys, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::File {
            flag: "--revision-key",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
            .map_err(|e| Error::Config(format!("--revision-key {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<RevisionKeys, String> {
        Ok(RevisionKeys {
            keys: signature::parse_public_keys(text)?
                .into_iter()
                .map(|k| (signature::key_id(&k), k))
                .collect(),
        })
    }

    /// Whether the target's state was signed by one of the keys for this device's namespace,
    /// the target's revision name and architecture. The target's state must already match its
    /// digest.
    pub fn verify(&self, namespace: &str, target: &Target) -> Result<(), String> {
        let sig = target
            .signature
            .as_ref()
            .ok_or("the revision carries no signature")?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| *id == sig.key_id)
            .ok_or_else(|| {
                format!(
                    "the signature is by key {}, which this device was not given",
                    sig.key_id
                )
            })?;
        let value = BASE64
            .decode(&sig.value)
            .map_err(|_| "the signature is not base64".to_string())?;
        let digest = target
            .state_digest
            .strip_prefix("sha256:")
            .unwrap_or(&target.state_digest);
        let message = signature::message(namespace, &target.revision, &target.architecture, digest);
        UnparsedPublicKey::new(&ED25519, key)
            .verify(&message, &value)
            .map_err(|_| {
                format!(
                    "the signature by key {} does not verify for {namespace}/{} ({})",
                    sig.key_id, target.revision, target.architecture
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgevisor_protocol::signature::RevisionSignature;
    use ring::signature::{Ed25519KeyPair, KeyPair};
    use sha2::{Digest, Sha256};

    fn pair() -> Ed25519KeyPair {
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap()
    }

    fn signed(pair: &Ed25519KeyPair, ns: &str, state: &str) -> Target {
        let digest = hex::encode(Sha256::digest(state.as_bytes()));
        let sig = pair.sign(&signature::message(ns, "web-1", "amd64", &digest));
        Target {
            revision: "web-1".into(),
            architecture: "amd64".into(),
            state_digest: format!("sha256:{digest}"),
            state: state.into(),
            blobs: vec![],
            signature: Some(RevisionSignature {
                key_id: signature::key_id(pair.public_key().as_ref()),
                value: BASE64.encode(sig.as_ref()),
            }),
        }
    }

    #[test]
    fn only_what_a_trusted_key_signed_for_this_device_verifies() {
        let (old, new, stranger) = (pair(), pair(), pair());
        let keys = RevisionKeys::parse(&format!(
            "{}\n{}\n",
            signature::encode_public_key(old.public_key().as_ref()),
            signature::encode_public_key(new.public_key().as_ref())
        ))
        .unwrap();
        assert_eq!(keys.verify("ns", &signed(&old, "ns", "{}")), Ok(()));
        assert_eq!(keys.verify("ns", &signed(&new, "ns", "{}")), Ok(()));
        // Another namespace's state, a key the device does not hold, no signature, a state
        // changed after signing (its digest recomputed), a renamed revision.
        assert!(keys.verify("other", &signed(&new, "ns", "{}")).is_err());
        let err = keys
            .verify("ns", &signed(&stranger, "ns", "{}"))
            .unwrap_err();
        assert!(err.contains("not given"), "{err}");
        let mut unsigned = signed(&new, "ns", "{}");
        unsigned.signature = None;
        assert!(
            keys.verify("ns", &unsigned)
                .unwrap_err()
                .contains("no signature")
        );
        let mut altered = signed(&new, "ns", "{}");
        altered.state = "{\"x\":1}".into();
        altered.state_digest = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(altered.state.as_bytes()))
        );
        assert!(
            keys.verify("ns", &altered)
                .unwrap_err()
                .contains("does not verify")
        );
        let mut renamed = signed(&new, "ns", "{}");
        renamed.revision = "web-2".into();
        assert!(keys.verify("ns", &renamed).is_err());
    }
}
