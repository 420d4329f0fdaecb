//! Content digests. Every artifact edgevisor moves is named by the sha256 of its bytes;
//! a [`Digest`] can only hold a well-formed one, so code that has a `Digest` never checks
//! again and never builds a path or URL from an unchecked string.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A sha256 digest: 64 lowercase hex digits. Written `sha256:<hex>` in states and
/// manifests; the control socket's object routes use the bare hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a sha256 digest (sha256:<64 lowercase hex digits>)")]
pub struct DigestError(pub String);

impl Digest {
    /// Parses `sha256:<hex>`.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        s.strip_prefix("sha256:")
            .and_then(|h| Digest::from_hex(h).ok())
            .ok_or_else(|| DigestError(s.to_owned()))
    }

    /// Parses the bare hex form.
    pub fn from_hex(h: &str) -> Result<Digest, DigestError> {
        if is_sha256_hex(h) {
            Ok(Digest(h.to_owned()))
        } else {
            Err(DigestError(h.to_owned()))
        }
    }

    /// Either form, as the control socket accepts both in lists of missing objects.
    pub fn parse_either(s: &str) -> Result<Digest, DigestError> {
        Digest::parse(s).or_else(|_| Digest::from_hex(s))
    }

    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde for a [`Digest`] written as bare hex (`"sha256": "<hex>"` on the control socket).
pub mod bare_hex {
    use super::Digest;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

pub fn is_sha256_hex(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_digests_parse() {
        let hex = "ab".repeat(32);
        let d = Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.hex(), hex);
        assert_eq!(d.to_string(), format!("sha256:{hex}"));
        assert_eq!(Digest::parse_either(&hex).unwrap(), d);
        for bad in [
            hex.clone(),
            format!("sha512:{hex}"),
            format!("sha256:{}", "AB".repeat(32)),
            format!("sha256:{}", &hex[1..]),
            format!("sha256:../{}", &hex[3..]),
            String::new(),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad}");
        }
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }
}
