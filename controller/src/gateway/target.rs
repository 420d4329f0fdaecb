//! A device's target, as the device API answers it. Pure: from the cached Device, its
//! FleetRevision and the gateway's registry map.
use std::collections::{BTreeMap, BTreeSet};

use edgevisor_crds::FleetRevision;
use edgevisor_protocol::gateway::{BlobSource, Target};

use crate::registry::Reference;

/// How devices reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryMap {
    /// A registry as the cluster names it (`host:port`) → its base URL as devices reach it.
    pub device_urls: BTreeMap<String, String>,
    /// Registries spoken to over plain HTTP.
    pub insecure: BTreeSet<String>,
}

impl RegistryMap {
    /// The base URL a device uses for a registry the cluster knows as `host`.
    pub fn url_for(&self, host: &str) -> String {
        if let Some(url) = self.device_urls.get(host) {
            return url.trim_end_matches('/').to_string();
        }
        let host = if host == "docker.io" {
            "registry-1.docker.io"
        } else {
            host
        };
        let scheme = if self.insecure.contains(host) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    /// Parses `HOST:PORT=URL`.
    pub fn parse_mapping(s: &str) -> Result<(String, String), String> {
        let (host, url) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected HOST[:PORT]=URL"))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "{s:?}: the URL must start with http:// or https://"
            ));
        }
        Ok((host.to_string(), url.to_string()))
    }
}

/// The target of a device of `architecture` that should run `revision`: `None` when the
/// revision has no state for that architecture (the controller counts it unsupported).
pub fn target(
    revision: &FleetRevision,
    architecture: &str,
    registries: &RegistryMap,
) -> Option<Target> {
    let name = revision.metadata.name.clone()?;
    let arch = revision
        .spec
        .architectures
        .iter()
        .find(|a| a.architecture.as_str() == architecture)?;
    let mut seen = BTreeSet::new();
    let mut blobs = Vec::new();
    for image in &arch.images {
        let Ok(reference) = Reference::parse(&image.image) else {
            continue;
        };
        let registry = registries.url_for(&reference.registry);
        let config = (image.config_digest.clone(), None);
        let layers = image
            .layers
            .iter()
            .map(|l| (l.digest.clone(), Some(l.size)));
        for (digest, size) in std::iter::once(config).chain(layers) {
            if !seen.insert(digest.clone()) {
                continue;
            }
            blobs.push(BlobSource {
                size: size.map(|s| s.max(0) as u64).unwrap_or(0),
                digest,
                registry: registry.clone(),
                repository: reference.repository.clone(),
            });
        }
    }
    // The config's size is in the state, not in the FleetRevision's image list.
    if let Ok(state) = edgevisor_protocol::state::State::parse(arch.state.as_bytes()) {
        for c in &state.containers {
            for b in blobs
                .iter_mut()
                .filter(|b| b.digest == c.image.config.digest)
            {
                b.size = c.image.config.size;
            }
        }
    }
    Some(Target {
        revision: name,
        architecture: architecture.to_string(),
        state_digest: format!("sha256:{}", arch.state_digest),
        state: arch.state.clone(),
        blobs,
        signature: arch.signature.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_reach_registries_by_the_urls_they_are_given() {
        let mut map = RegistryMap::default();
        map.device_urls
            .insert("127.0.0.1:5000".into(), "http://10.213.0.1:5001/".into());
        map.insecure.insert("reg.lan:5000".into());
        assert_eq!(map.url_for("127.0.0.1:5000"), "http://10.213.0.1:5001");
        assert_eq!(map.url_for("reg.lan:5000"), "http://reg.lan:5000");
        assert_eq!(map.url_for("ghcr.io"), "https://ghcr.io");
        assert!(RegistryMap::parse_mapping("a=ftp://x").is_err());
        assert!(RegistryMap::parse_mapping("a").is_err());
        assert_eq!(
            RegistryMap::parse_mapping("r:5000=https://r.example").unwrap(),
            ("r:5000".into(), "https://r.example".into())
        );
    }
}
