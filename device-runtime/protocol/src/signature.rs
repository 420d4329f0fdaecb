//! Signed revisions: exactly which bytes the controller signs (Ed25519) for each rendered
//! state, and the public-key file devices hold. Both sides build the message here, so they
//! cannot disagree on it; the cryptography stays with them (the controller signs, the agent
//! verifies).
//!
//! The message binds the state to the Device namespace and revision name it was rendered for
//! and to its architecture, so a gateway cannot serve one fleet's signed state to another
//! namespace's devices, or relabel an old revision as a new one.
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The signature scheme's name, first in every signed message.
pub const SCHEME: &str = "edgevisor-revision-signature@1";
/// The length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// A state's signature, as FleetRevisions hold it and the gateway serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RevisionSignature {
    /// Which key signed ([`key_id`]), so devices holding several keys (during a rotation)
    /// know which one to try.
    #[schemars(length(min = 16, max = 16))]
    pub key_id: String,
    /// The Ed25519 signature of [`message`], base64.
    #[schemars(length(max = 128))]
    pub value: String,
}

/// The bytes signed for the state `state_sha256` (hex) of `architecture`, rendered as revision
/// `revision` in namespace `namespace`.
pub fn message(namespace: &str, revision: &str, architecture: &str, state_sha256: &str) -> Vec<u8> {
    // NUL never occurs in a namespace, a name, an architecture or hex: the fields cannot run
    // into each other.
    [SCHEME, namespace, revision, architecture, state_sha256]
        .join("\0")
        .into_bytes()
}

/// A public key's short name: the first 16 hex digits of its sha256.
pub fn key_id(public_key: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(public_key)[..8])
}

/// Encodes a public key as a line of a public-key file.
pub fn encode_public_key(public_key: &[u8]) -> String {
    BASE64.encode(public_key)
}

/// Reads a public-key file: one base64 Ed25519 public key per line; empty lines and lines
/// starting with `#` are ignored. Several keys are accepted so a rotation can add the new key
/// to devices before the controller signs with it.
pub fn parse_public_keys(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = BASE64
            .decode(line)
            .map_err(|e| format!("line {}: not base64: {e}", n + 1))?;
        if key.len() != PUBLIC_KEY_LEN {
            return Err(format!(
                "line {}: an Ed25519 public key is {PUBLIC_KEY_LEN} bytes, this is {}",
                n + 1,
                key.len()
            ));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("no public key in the file".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_separates_its_fields() {
        assert_ne!(
            message("ab", "c", "amd64", "00"),
            message("a", "bc", "amd64", "00")
        );
        assert!(message("ns", "web-1", "arm64", "ff").starts_with(SCHEME.as_bytes()));
    }

    #[test]
    fn public_key_files_hold_one_key_per_line() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let text = format!(
            "# rotation: old key, then new\n{}\n\n{}\n",
            encode_public_key(&a),
            encode_public_key(&b)
        );
        assert_eq!(
            parse_public_keys(&text).unwrap(),
            vec![a.to_vec(), b.to_vec()]
        );
        assert!(
            parse_public_keys("# nothing\n")
                .unwrap_err()
                .contains("no public key")
        );
        assert!(parse_public_keys("AAAA\n").unwrap_err().contains("line 1"));
        assert!(parse_public_keys("!!\n").unwrap_err().contains("base64"));
        assert_eq!(key_id(&a).len(), 16);
        assert_ne!(key_id(&a), key_id(&b));
    }
}
