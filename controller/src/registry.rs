//! Resolving image references against OCI registries (the distribution API, read only).
//!
//! [`Registry::resolve`] turns `registry.example.com/app:1.4` into, for every Linux architecture
//! the image provides, the platform manifest's digest, its config and its layers. A
//! multi-architecture index yields one entry per platform; a single manifest yields the platform
//! its config declares. Every document fetched is checked against the digest it was asked by,
//! and is size-capped, since a registry is outside input like any other.
//!
//! Authentication follows the registry's challenge: anonymous first, then `Basic` with the
//! credentials of a docker-config, or `Bearer` with a token from the challenge's realm. A
//! token is kept until shortly before it expires and used for every request of its scope,
//! so resolving an image costs one token request, not one per document. The parsing of
//! configs, challenges and token answers is the protocol crate's, shared with the agent.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgevisor_crds::Architecture;
use edgevisor_protocol::registry_auth::{
    Challenge, MAX_TOKEN_ANSWER_BYTES, check_transport, normalize_host, parse_challenge,
    token_from_answer,
};
pub use edgevisor_protocol::registry_auth::{Credentials, parse_docker_config};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Media types of manifests and indexes we ask for and accept.
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// Manifests, indexes and configs are small; anything larger is refused rather than buffered.
const MAX_DOCUMENT_BYTES: usize = 4 << 20;

/// What went wrong resolving an image; the message is shown to users in the Fleet's status.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {0:?}: {1}")]
    Reference(String, &'static str),
    #[error("{image}: {status} from {url}: {body}")]
    Status {
        image: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{image}: cannot reach the registry at {url}: {source}")]
    Http {
        image: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{image}: {what}")]
    Invalid { image: String, what: String },
    #[error("{image}: the image provides no Linux platform edgevisor supports")]
    NoPlatform { image: String },
}

/// A parsed reference: `host[:port]/repository[:tag][@sha256:…]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// Parses a reference as the CRD allows it (a tag or a digest is required).
    pub fn parse(image: &str) -> Result<Self, RegistryError> {
        let bad = |why| RegistryError::Reference(image.to_string(), why);
        let (rest, digest) = match image.split_once('@') {
            Some((rest, digest)) => {
                let hex = digest
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("only sha256 digests are supported"))?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                {
                    return Err(bad("a digest is sha256: and 64 lowercase hex digits"));
                }
                (rest, Some(digest.to_string()))
            }
            None => (image, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, Some(tag.to_string())),
            _ => (rest, None),
        };
        if tag.is_none() && digest.is_none() {
            return Err(bad("a tag or a digest is required"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((host, path))
                if host.contains('.') || host.contains(':') || host == "localhost" =>
            {
                (host.to_string(), path.to_string())
            }
            Some(_) => ("registry-1.docker.io".to_string(), name.to_string()),
            None => (
                "registry-1.docker.io".to_string(),
                format!("library/{name}"),
            ),
        };
        if repository.is_empty() || repository.split('/').any(str::is_empty) {
            return Err(bad("empty repository path"));
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

/// A blob: digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Blob {
    pub media_type: Option<String>,
    pub digest: String,
    pub size: u64,
}

/// An image for one platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformImage {
    pub manifest_digest: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    media_type: Option<String>,
    config: Option<Blob>,
    #[serde(default)]
    layers: Vec<Blob>,
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct ImageConfig {
    architecture: Option<String>,
    os: Option<String>,
    variant: Option<String>,
}

/// Maps an OCI platform to an architecture edgevisor serves; `None` for anything else.
pub fn architecture_of(
    os: &str,
    architecture: &str,
    variant: Option<&str>,
) -> Option<Architecture> {
    if os != "linux" {
        return None;
    }
    Some(match (architecture, variant) {
        ("amd64", _) => Architecture::Amd64,
        ("arm64", _) => Architecture::Arm64,
        ("arm", Some("v7") | None) => Architecture::ArmV7,
        ("arm", Some("v6")) => Architecture::ArmV6,
        ("riscv64", _) => Architecture::Riscv64,
        ("386", _) => Architecture::I386,
        ("ppc64le", _) => Architecture::Ppc64le,
        ("s390x", _) => Architecture::S390x,
        _ => return None,
    })
}

/// A read-only client of OCI registries.
#[derive(Clone)]
pub struct Registry {
    http: reqwest::Client,
    /// Hosts spoken to over plain HTTP.
    insecure: Vec<String>,
    credentials: HashMap<String, Credentials>,
    tokens: Arc<Mutex<TokenCache>>,
}

/// `Authorization` values by (registry, repository), with when they stop being used.
type TokenCache = HashMap<(String, String), (String, Instant)>;

/// A token is dropped this long before its expiry, so it never expires mid-request.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);

impl Registry {
    /// A client; `insecure` lists `host[:port]`s served over plain HTTP.
    pub fn new(
        insecure: Vec<String>,
        credentials: HashMap<String, Credentials>,
    ) -> Result<Self, reqwest::Error> {
        // reqwest is built without a crypto provider of its own: ring, as kube uses it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("edgevisor-controller/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()?;
        Ok(Registry {
            http,
            insecure,
            credentials,
            tokens: Arc::default(),
        })
    }

    /// Replaces the credentials (when their Secret changes).
    pub fn with_credentials(mut self, credentials: HashMap<String, Credentials>) -> Self {
        self.credentials = credentials;
        self.tokens = Arc::default();
        self
    }

    fn token_key(r: &Reference) -> (String, String) {
        (normalize_host(&r.registry), r.repository.clone())
    }

    fn cached_token(&self, r: &Reference) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        let (value, until) = tokens.get(&Self::token_key(r))?;
        (Instant::now() < *until).then(|| value.clone())
    }

    fn base(&self, host: &str) -> String {
        let scheme = if self.insecure.iter().any(|h| h == host) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}/v2")
    }

    /// Every supported platform of `image`.
    pub async fn resolve(
        &self,
        image: &str,
    ) -> Result<BTreeMap<Architecture, PlatformImage>, RegistryError> {
        let reference = Reference::parse(image)?;
        let (digest, body) = self
            .manifest(image, &reference, reference.reference())
            .await?;
        let manifest: Manifest = parse_json(image, &body)?;
        let mut out = BTreeMap::new();
        if !manifest.manifests.is_empty()
            || manifest
                .media_type
                .as_deref()
                .is_some_and(|t| INDEX_TYPES.contains(&t))
        {
            for entry in manifest.manifests {
                let Some(platform) = entry.platform else {
                    continue;
                };
                let Some(arch) = architecture_of(
                    &platform.os,
                    &platform.architecture,
                    platform.variant.as_deref(),
                ) else {
                    continue;
                };
                if out.contains_key(&arch) {
                    continue;
                }
                let (digest, body) = self.manifest(image, &reference, &entry.digest).await?;
                let child: Manifest = parse_json(image, &body)?;
                out.insert(arch, platform_image(image, digest, child)?);
            }
        } else {
            let image_manifest = platform_image(image, digest, manifest)?;
            let config_body = self
                .blob(image, &reference, &image_manifest.config.digest)
                .await?;
            let config: ImageConfig = parse_json(image, &config_body)?;
            let arch = architecture_of(
                config.os.as_deref().unwrap_or("linux"),
                config.architecture.as_deref().unwrap_or_default(),
                config.variant.as_deref(),
            );
            if let Some(arch) = arch {
                out.insert(arch, image_manifest);
            }
        }
        if out.is_empty() {
            return Err(RegistryError::NoPlatform {
                image: image.to_string(),
            });
        }
        Ok(out)
    }

    async fn manifest(
        &self,
        image: &str,
        r: &Reference,
        reference: &str,
    ) -> Result<(String, Vec<u8>), RegistryError> {
        let url = format!(
            "{}/{}/manifests/{reference}",
            self.base(&r.registry),
            r.repository
        );
        let accept = INDEX_TYPES
            .iter()
            .chain(MANIFEST_TYPES.iter())
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        let body = self.get(image, r, &url, &accept).await?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if reference.starts_with("sha256:") && digest != reference {
            return Err(RegistryError::Invalid {
                image: image.into(),
                what: format!(
                    "manifest {reference} has digest {digest}: the registry returned other content"
                ),
            });
        }
        Ok((digest, body))
    }

    async fn blob(
        &self,
        image: &str,
        r: &Reference,
        digest: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let url = format!("{}/{}/blobs/{digest}", self.base(&r.registry), r.repository);
        let body = self.get(image, r, &url, "*/*").await?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if actual != digest {
            return Err(RegistryError::Invalid {
                image: image.into(),
                what: format!("blob {digest} has digest {actual}"),
            });
        }
        Ok(body)
    }

    /// GET with the registry's authentication dance and a size cap.
    async fn get(
        &self,
        image: &str,
        r: &Reference,
        url: &str,
        accept: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let http_err = |source| RegistryError::Http {
            image: image.into(),
            url: url.into(),
            source,
        };
        let mut auth: Option<String> = self.cached_token(r);
        let mut fresh = auth.is_none();
        for _attempt in 0..3 {
            let mut request = self.http.get(url).header(reqwest::header::ACCEPT, accept);
            if let Some(value) = &auth {
                request = request.header(reqwest::header::AUTHORIZATION, value);
            }
            let mut response = request.send().await.map_err(http_err)?;
            let status = response.status();
            // A first 401, or one with a cached token that the registry no longer takes:
            // answer the challenge (once).
            if status == reqwest::StatusCode::UNAUTHORIZED && (auth.is_none() || !fresh) {
                let challenge = response
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                auth = Some(self.authorize(image, r, &challenge).await?);
                fresh = true;
                continue;
            }
            if !status.is_success() {
                // An error page is read for the user's message, never whole.
                let body = read_capped(&mut response, 64 << 10, image, url)
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|_| "(a larger answer)".into());
                return Err(RegistryError::Status {
                    image: image.into(),
                    url: url.into(),
                    status: status.as_u16(),
                    body: body.chars().take(300).collect(),
                });
            }
            return read_capped(&mut response, MAX_DOCUMENT_BYTES, image, url).await;
        }
        Err(RegistryError::Status {
            image: image.into(),
            url: url.into(),
            status: 401,
            body: "credentials refused".into(),
        })
    }

    /// The `Authorization` value a challenge asks for; a Bearer token is cached.
    async fn authorize(
        &self,
        image: &str,
        r: &Reference,
        challenge: &str,
    ) -> Result<String, RegistryError> {
        let basic = self
            .credentials
            .get(&normalize_host(&r.registry))
            .map(|c| c.basic_header().to_owned());
        let refused = |url: &str, body: &str| RegistryError::Status {
            image: image.into(),
            url: url.into(),
            status: 401,
            body: body.into(),
        };
        let challenge = parse_challenge(challenge);
        let (realm, query) = match &challenge {
            Some(c @ Challenge::Bearer { .. }) => c.token_query(&r.repository).unwrap_or_default(),
            // Basic, or no challenge this client can answer otherwise: the docker-config's
            // credentials, as the controller has always sent them.
            Some(Challenge::Basic) | None => {
                return basic.ok_or_else(|| {
                    refused(
                        &r.registry,
                        "the registry wants credentials; name a docker-config Secret with --registry-secret",
                    )
                });
            }
        };
        // Any host may issue tokens (public registries do), but credentials and tokens
        // travel over TLS only, as the agent's do.
        if let Err(host) = check_transport(&realm, &self.insecure) {
            return Err(RegistryError::Invalid {
                image: image.into(),
                what: format!(
                    "the token service {realm} is plain http: refused (credentials and tokens \
                     go over TLS only; --insecure-registry {host} allows it, for tests)"
                ),
            });
        }
        let mut request = self.http.get(&realm).query(&query);
        if let Some(value) = basic {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let http_err = |source| RegistryError::Http {
            image: image.into(),
            url: realm.clone(),
            source,
        };
        let mut response = request.send().await.map_err(http_err)?;
        if !response.status().is_success() {
            return Err(RegistryError::Status {
                image: image.into(),
                url: realm.clone(),
                status: response.status().as_u16(),
                body: "token request refused".into(),
            });
        }
        let body = read_capped(&mut response, MAX_TOKEN_ANSWER_BYTES, image, &realm).await?;
        let token = token_from_answer(&body).ok_or_else(|| RegistryError::Invalid {
            image: image.into(),
            what: "token response without token".into(),
        })?;
        let value = format!("Bearer {}", token.token);
        let until =
            Instant::now() + Duration::from_secs(token.expires_in).saturating_sub(TOKEN_MARGIN);
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(Self::token_key(r), (value.clone(), until));
        }
        Ok(value)
    }
}

/// A response body of at most `max` bytes; a larger one is refused rather than buffered.
async fn read_capped(
    response: &mut reqwest::Response,
    max: usize,
    image: &str,
    url: &str,
) -> Result<Vec<u8>, RegistryError> {
    let too_large = || RegistryError::Invalid {
        image: image.into(),
        what: format!("{url} answered more than {} KiB", max >> 10),
    };
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| RegistryError::Http {
            image: image.into(),
            url: url.into(),
            source,
        })?
    {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse_json<T: for<'de> Deserialize<'de>>(image: &str, body: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(body).map_err(|e| RegistryError::Invalid {
        image: image.into(),
        what: format!("malformed document: {e}"),
    })
}

fn platform_image(
    image: &str,
    digest: String,
    manifest: Manifest,
) -> Result<PlatformImage, RegistryError> {
    let config = manifest.config.ok_or_else(|| RegistryError::Invalid {
        image: image.into(),
        what: format!("manifest {digest} has no config"),
    })?;
    if manifest.layers.is_empty() {
        return Err(RegistryError::Invalid {
            image: image.into(),
            what: format!("manifest {digest} has no layers"),
        });
    }
    for blob in std::iter::once(&config).chain(&manifest.layers) {
        let hex = blob.digest.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RegistryError::Invalid {
                image: image.into(),
                what: format!("unsupported digest {}", blob.digest),
            });
        }
    }
    Ok(PlatformImage {
        manifest_digest: digest,
        config,
        layers: manifest.layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_registries_write_them() {
        let r = Reference::parse("127.0.0.1:5000/edgevisor/hello:1.0").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "edgevisor/hello", Some("1.0"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("registry.example.com/app:2@{d}")).unwrap();
        assert_eq!(r.reference(), d);
        let r = Reference::parse("busybox:1.36").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("registry-1.docker.io", "library/busybox")
        );
        for bad in [
            "app",
            "localhost:5000/app",
            "r.example.com/app@sha256:abc",
            "r.example.com//app:1",
            "r.example.com/app@md5:00",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn platforms_map_to_architectures() {
        assert_eq!(
            architecture_of("linux", "arm", Some("v7")),
            Some(Architecture::ArmV7)
        );
        assert_eq!(
            architecture_of("linux", "arm64", Some("v8")),
            Some(Architecture::Arm64)
        );
        assert_eq!(architecture_of("windows", "amd64", None), None);
        assert_eq!(architecture_of("unknown", "unknown", None), None);
    }
}
