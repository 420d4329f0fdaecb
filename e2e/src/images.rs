//! Building OCI images and pushing them to the test registry with the distribution API, as a
//! CI pipeline would, without a container engine.
use std::io::Write;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// `sha256:<hex>` of bytes.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A gzipped tar layer holding `files` (path, content, mode); directories are implied.
pub fn layer(files: &[(&str, &[u8], u32)]) -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (path, content, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, *content)?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// A layer of Debian's static busybox and the links a shell needs.
pub fn busybox_layer() -> anyhow::Result<Vec<u8>> {
    let busybox =
        std::fs::read("/bin/busybox").context("reading /bin/busybox (install busybox-static)")?;
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    let mut header = tar::Header::new_gnu();
    header.set_size(busybox.len() as u64);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "bin/busybox", busybox.as_slice())?;
    for applet in [
        "sh", "sleep", "httpd", "cat", "echo", "true", "false", "date", "wget", "nc", "ls",
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// The [`busybox_layer`], made once per test binary (the same bytes every time, so every image
/// built on it shares the blob).
pub fn shared_busybox_layer() -> anyhow::Result<&'static [u8]> {
    static LAYER: OnceLock<Vec<u8>> = OnceLock::new();
    if let Some(layer) = LAYER.get() {
        return Ok(layer);
    }
    let layer = busybox_layer()?;
    Ok(LAYER.get_or_init(|| layer))
}

/// `n` bytes that do not compress, the same for the same `seed` (xorshift64*).
pub fn incompressible(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// An application layer: `app/run.sh` (mode 0755) holding `script`, and `app/payload`, `payload`
/// incompressible bytes from `seed` (so the layer's size is known and a change of `seed` is a
/// different layer of about the same size).
pub fn app_layer(script: &str, seed: u64, payload: usize) -> anyhow::Result<Vec<u8>> {
    let data = incompressible(seed, payload);
    layer(&[
        ("app/run.sh", script.as_bytes(), 0o755),
        ("app/payload", &data, 0o644),
    ])
}

/// A two-layer image pushed by [`push_app_image`]: busybox, then the application.
#[derive(Clone, Debug)]
pub struct AppImage {
    /// `<registry>/<repo>:<tag>`, for a Fleet template.
    pub reference: String,
    /// What was pushed.
    pub pushed: Pushed,
    /// The application layer's digest and (compressed) size: what a device lacks when only this
    /// layer changed.
    pub app_layer_digest: String,
    pub app_layer_size: u64,
    /// The busybox layer's digest and size (shared by every app image).
    pub base_layer_digest: String,
    pub base_layer_size: u64,
    /// The config's size (it changes with any layer).
    pub config_size: u64,
}

/// What [`push_app_image`] pushes.
#[derive(Clone, Debug)]
pub struct AppImageSpec<'a> {
    pub repo: &'a str,
    pub tag: &'a str,
    pub architecture: &'a str,
    /// The content of `/app/run.sh`.
    pub script: &'a str,
    /// Seed and size of `/app/payload`.
    pub seed: u64,
    pub payload: usize,
}

/// Pushes `<registry>/<repo>:<tag>` for `architecture`: the shared busybox layer and an
/// [`app_layer`] of `script` and `payload` bytes from `seed`; `Cmd` is `/bin/sh /app/run.sh`.
/// Two calls that differ only in `seed` (or `script`) give images that share the busybox layer
/// and differ in the application layer (and the config).
pub async fn push_app_image(
    registry: &Registry,
    spec: &AppImageSpec<'_>,
) -> anyhow::Result<AppImage> {
    let base = shared_busybox_layer()?.to_vec();
    let app = app_layer(spec.script, spec.seed, spec.payload)?;
    let image = Image {
        layers: vec![base, app],
        architecture: spec.architecture.to_string(),
        variant: None,
        cmd: vec!["/bin/sh".into(), "/app/run.sh".into()],
    };
    let pushed = registry
        .push_image(spec.repo, Some(spec.tag), &image)
        .await?;
    Ok(AppImage {
        reference: format!("{}/{}:{}", registry.host(), spec.repo, spec.tag),
        app_layer_digest: pushed.layer_digests[1].clone(),
        app_layer_size: pushed.layer_sizes[1] as u64,
        base_layer_digest: pushed.layer_digests[0].clone(),
        base_layer_size: pushed.layer_sizes[0] as u64,
        config_size: pushed.config_size as u64,
        pushed,
    })
}

/// An image to push: its layers and what its config says.
pub struct Image {
    pub layers: Vec<Vec<u8>>,
    pub architecture: String,
    pub variant: Option<String>,
    pub cmd: Vec<String>,
}

/// What was pushed for one platform.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub manifest_digest: String,
    pub manifest_size: usize,
    pub config_digest: String,
    pub config_size: usize,
    pub layer_digests: Vec<String>,
    /// The layers' (compressed) sizes, in order.
    pub layer_sizes: Vec<usize>,
    pub architecture: String,
    pub variant: Option<String>,
}

/// A client of the test registry (plain HTTP on loopback).
enum PushAuth {
    Basic(String, String),
    Bearer(String),
}

pub struct Registry {
    host: String,
    base: String,
    http: reqwest::Client,
    /// What registries that require it get: `user:password` (Basic) or a token (Bearer).
    auth: Option<PushAuth>,
}

impl Registry {
    pub fn new(host: &str) -> Self {
        // reqwest is built without a TLS crypto provider of its own (the controller's choice,
        // unified across the workspace): use ring, as kube does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registry {
            host: host.to_string(),
            base: format!("http://{host}/v2"),
            http: reqwest::Client::new(),
            auth: None,
        }
    }

    /// `host:port` of the registry, as image references name it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The same client, sending these credentials.
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some(PushAuth::Basic(user.to_string(), password.to_string()));
        self
    }

    /// The same client, sending this Bearer token.
    pub fn with_bearer_token(mut self, token: &str) -> Self {
        self.auth = Some(PushAuth::Bearer(token.to_string()));
        self
    }

    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.auth {
            Some(PushAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            Some(PushAuth::Bearer(token)) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Uploads a blob (monolithic POST then PUT), unless the registry has it.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> anyhow::Result<String> {
        let digest = digest(bytes);
        let head = self
            .request(
                reqwest::Method::HEAD,
                format!("{}/{repo}/blobs/{digest}", self.base),
            )
            .send()
            .await?;
        if head.status().is_success() {
            return Ok(digest);
        }
        let start = self
            .request(
                reqwest::Method::POST,
                format!("{}/{repo}/blobs/uploads/", self.base),
            )
            .send()
            .await?;
        if start.status() != reqwest::StatusCode::ACCEPTED {
            bail!("starting an upload to {repo}: {}", start.status());
        }
        let location = start
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .context("upload without Location")?
            .to_string();
        let url = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.base.trim_end_matches("/v2"))
        };
        let separator = if url.contains('?') { '&' } else { '?' };
        let put = self
            .request(
                reqwest::Method::PUT,
                format!("{url}{separator}digest={digest}"),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await?;
        if put.status() != reqwest::StatusCode::CREATED {
            bail!(
                "finishing the upload of {digest} to {repo}: {}",
                put.status()
            );
        }
        Ok(digest)
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let response = self
            .request(
                reqwest::Method::PUT,
                format!("{}/{repo}/manifests/{reference}", self.base),
            )
            .header(reqwest::header::CONTENT_TYPE, media_type)
            .body(body.to_vec())
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::CREATED {
            bail!(
                "putting manifest {reference} of {repo}: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Pushes one platform's image; tags it when `tag` is given.
    pub async fn push_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        image: &Image,
    ) -> anyhow::Result<Pushed> {
        let mut diff_ids = Vec::new();
        let mut layers = Vec::new();
        for layer in &image.layers {
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(layer.as_slice()).read_to_end_into(&mut raw)?;
            diff_ids.push(digest(&raw));
            let d = self.push_blob(repo, layer).await?;
            layers.push(json!({"mediaType": LAYER, "digest": d, "size": layer.len()}));
        }
        let mut config = json!({
            "architecture": image.architecture,
            "os": "linux",
            "config": {"Cmd": image.cmd, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(v) = &image.variant {
            config["variant"] = json!(v);
        }
        let config = serde_json::to_vec(&config)?;
        let config_digest = self.push_blob(repo, &config).await?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layers,
        }))?;
        let manifest_digest = digest(&manifest);
        self.put_manifest(repo, tag.unwrap_or(&manifest_digest), MANIFEST, &manifest)
            .await?;
        Ok(Pushed {
            manifest_digest,
            manifest_size: manifest.len(),
            config_digest,
            config_size: config.len(),
            layer_digests: layers
                .iter()
                .filter_map(|l| l["digest"].as_str().map(String::from))
                .collect(),
            layer_sizes: image.layers.iter().map(Vec::len).collect(),
            architecture: image.architecture.clone(),
            variant: image.variant.clone(),
        })
    }

    /// Pushes each platform's image untagged and a multi-architecture index over them, tagged.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        images: &[Image],
    ) -> anyhow::Result<(String, Vec<Pushed>)> {
        let mut pushed = Vec::new();
        for image in images {
            pushed.push(self.push_image(repo, None, image).await?);
        }
        let manifests: Vec<serde_json::Value> = pushed
            .iter()
            .map(|p| {
                let mut platform = json!({"architecture": p.architecture, "os": "linux"});
                if let Some(v) = &p.variant {
                    platform["variant"] = json!(v);
                }
                json!({"mediaType": MANIFEST, "digest": p.manifest_digest, "size": p.manifest_size, "platform": platform})
            })
            .collect();
        let index = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests}),
        )?;
        self.put_manifest(repo, tag, INDEX, &index).await?;
        Ok((digest(&index), pushed))
    }
}

trait ReadToEndInto {
    fn read_to_end_into(self, out: &mut Vec<u8>) -> std::io::Result<usize>;
}

impl<R: std::io::Read> ReadToEndInto for R {
    fn read_to_end_into(mut self, out: &mut Vec<u8>) -> std::io::Result<usize> {
        self.read_to_end(out)
    }
}

/// A small image for tests that do not run it: one file, distinct per `tag`.
pub fn tiny_image(
    architecture: &str,
    variant: Option<&str>,
    content: &str,
) -> anyhow::Result<Image> {
    let mut text = Vec::new();
    writeln!(text, "{content}")?;
    Ok(Image {
        layers: vec![layer(&[("etc/edgevisor-test", &text, 0o644)])?],
        architecture: architecture.into(),
        variant: variant.map(String::from),
        cmd: vec!["/bin/sh".into()],
    })
}
