//! Resolving image references against OCI registries (the distribution API, read only).
//!
//! [`Registry::resolve`] turns `registry.example.com/app:1.4` into, for every Linux architecture
//! the image provides, the platform manifest's digest, its config and its layers. A
//! multi-architecture index yields one entry per platform; a single manifest yields the platform
//! its config declares. Every document fetched is checked against the digest it was asked by,
//! and is size-capped, since a registry is outside input like any other.
//!
//! Authentication follows the registry's challenge: anonymous first, then `Basic` with the
//! credentials of a docker-config, or `Bearer` with a token from the challenge's realm.
use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use edgevisor_crds::Architecture;
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

/// Credentials for one registry host.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Reads the `auths` of a docker-config JSON (`.dockerconfigjson`) into credentials per host.
pub fn parse_docker_config(json: &[u8]) -> Result<HashMap<String, Credentials>, String> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        auths: HashMap<String, Auth>,
    }
    #[derive(Deserialize)]
    struct Auth {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let config: Config =
        serde_json::from_slice(json).map_err(|e| format!("not a docker config: {e}"))?;
    let mut out = HashMap::new();
    for (host, auth) in config.auths {
        let host = host
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let host = host.split('/').next().unwrap_or_default().to_string();
        let credentials = match (auth.auth, auth.username, auth.password) {
            (Some(encoded), _, _) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| format!("auth of {host} is not base64"))?;
                let text = String::from_utf8(decoded)
                    .map_err(|_| format!("auth of {host} is not UTF-8"))?;
                let (username, password) = text
                    .split_once(':')
                    .ok_or_else(|| format!("auth of {host} is not user:password"))?;
                Credentials {
                    username: username.into(),
                    password: password.into(),
                }
            }
            (None, Some(username), Some(password)) => Credentials { username, password },
            _ => {
                return Err(format!(
                    "auths.{host} has neither auth nor username and password"
                ));
            }
        };
        out.insert(host, credentials);
    }
    Ok(out)
}

/// A read-only client of OCI registries.
#[derive(Clone)]
pub struct Registry {
    http: reqwest::Client,
    /// Hosts spoken to over plain HTTP.
    insecure: Vec<String>,
    credentials: HashMap<String, Credentials>,
}

impl Registry {
    /// A client; `insecure` lists `host[:port]`s served over plain HTTP.
    pub fn new(
        insecure: Vec<String>,
        credentials: HashMap<String, Credentials>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("edgevisor-controller/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()?;
        Ok(Registry {
            http,
            insecure,
            credentials,
        })
    }

    /// Replaces the credentials (when their Secret changes).
    pub fn with_credentials(mut self, credentials: HashMap<String, Credentials>) -> Self {
        self.credentials = credentials;
        self
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
        let mut auth: Option<String> = None;
        for _attempt in 0..2 {
            let mut request = self.http.get(url).header(reqwest::header::ACCEPT, accept);
            if let Some(value) = &auth {
                request = request.header(reqwest::header::AUTHORIZATION, value);
            }
            let mut response = request.send().await.map_err(http_err)?;
            let status = response.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && auth.is_none() {
                let challenge = response
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                auth = Some(self.authorize(image, r, &challenge).await?);
                continue;
            }
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(RegistryError::Status {
                    image: image.into(),
                    url: url.into(),
                    status: status.as_u16(),
                    body: body.chars().take(300).collect(),
                });
            }
            if response
                .content_length()
                .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
            {
                return Err(RegistryError::Invalid {
                    image: image.into(),
                    what: format!("{url} is larger than 4 MiB"),
                });
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(http_err)? {
                if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                    return Err(RegistryError::Invalid {
                        image: image.into(),
                        what: format!("{url} is larger than 4 MiB"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(body);
        }
        Err(RegistryError::Status {
            image: image.into(),
            url: url.into(),
            status: 401,
            body: "credentials refused".into(),
        })
    }

    /// The `Authorization` value a challenge asks for.
    async fn authorize(
        &self,
        image: &str,
        r: &Reference,
        challenge: &str,
    ) -> Result<String, RegistryError> {
        let credentials = self.credentials.get(&r.registry);
        let basic = credentials.map(|c| {
            let raw = format!("{}:{}", c.username, c.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        });
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return basic.ok_or_else(|| RegistryError::Status {
                image: image.into(),
                url: r.registry.clone(),
                status: 401,
                body: "the registry wants credentials; name a docker-config Secret with --registry-secret".into(),
            });
        };
        let params = parse_challenge(params);
        let realm = params.get("realm").ok_or_else(|| RegistryError::Invalid {
            image: image.into(),
            what: "bearer challenge without realm".into(),
        })?;
        let scope = params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", r.repository));
        let mut request = self.http.get(realm).query(&[("scope", scope.as_str())]);
        if let Some(service) = params.get("service") {
            request = request.query(&[("service", service.as_str())]);
        }
        if let Some(value) = basic {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let response = request.send().await.map_err(|source| RegistryError::Http {
            image: image.into(),
            url: realm.clone(),
            source,
        })?;
        if !response.status().is_success() {
            return Err(RegistryError::Status {
                image: image.into(),
                url: realm.clone(),
                status: response.status().as_u16(),
                body: "token request refused".into(),
            });
        }
        let token: Token = response
            .json()
            .await
            .map_err(|source| RegistryError::Http {
                image: image.into(),
                url: realm.clone(),
                source,
            })?;
        let token = token
            .token
            .or(token.access_token)
            .ok_or_else(|| RegistryError::Invalid {
                image: image.into(),
                what: "token response without token".into(),
            })?;
        Ok(format!("Bearer {token}"))
    }
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

/// `realm="https://auth",service="registry",scope="repository:x:pull"` → map.
fn parse_challenge(params: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = params.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((v, r)) => (v.to_string(), r),
                None => (quoted.to_string(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, r)) => (v.to_string(), r),
                None => (after.to_string(), ""),
            }
        };
        out.insert(key, value);
        rest = remaining.trim_start_matches(',').trim();
    }
    out
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

    #[test]
    fn docker_configs_give_credentials_per_host() {
        let auth = base64::engine::general_purpose::STANDARD.encode("bot:s3cret");
        let json = format!(
            r#"{{"auths":{{"https://reg.example.com/v1/":{{"auth":"{auth}"}},"other:5000":{{"username":"u","password":"p"}}}}}}"#
        );
        let creds = parse_docker_config(json.as_bytes()).unwrap();
        assert_eq!(creds["reg.example.com"].username, "bot");
        assert_eq!(creds["reg.example.com"].password, "s3cret");
        assert_eq!(creds["other:5000"].password, "p");
        assert!(parse_docker_config(br#"{"auths":{"x":{"auth":"%%%"}}}"#).is_err());
        assert!(parse_docker_config(b"not json").is_err());
    }

    #[test]
    fn bearer_challenges_parse() {
        let p = parse_challenge(
            r#"realm="https://auth.example.com/token",service="registry.example.com",scope="repository:app:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.example.com/token");
        assert_eq!(p["service"], "registry.example.com");
        assert_eq!(p["scope"], "repository:app:pull");
    }
}
