//! kstatus: the status model of `sigs.k8s.io/cli-utils` by which kpt, Config Sync, Flux and
//! Helm 4's `--wait` judge an object: `Current`, `InProgress`, `Failed`, `Terminating` or
//! `Unknown`, with a message. It reads `metadata.generation` against `status.observedGeneration`,
//! then the `Reconciling` and `Stalled` conditions, then `Ready`.
//!
//! The real implementation runs here: `e2e/kstatus`, a Go command pinned to a cli-utils release,
//! which `e2e/env up` builds once into the tool cache (`ensure_kstatus` in `e2e/lib/tools.sh`).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};

/// What kstatus says of `object` (a whole Kubernetes object): its status (`Current`,
/// `InProgress`, `Failed`, …) and message.
pub fn kstatus(object: &serde_json::Value) -> anyhow::Result<(String, String)> {
    let binary = binary()?;
    let mut child = Command::new(binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", binary.display()))?;
    child
        .stdin
        .take()
        .context("kstatus has no standard input")?
        .write_all(&serde_json::to_vec(object)?)
        .context("writing the object to kstatus")?;
    let output = child.wait_with_output().context("waiting for kstatus")?;
    if !output.status.success() {
        bail!(
            "kstatus failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    let stdout = String::from_utf8(output.stdout).context("kstatus printed non-UTF-8")?;
    let line = stdout.strip_suffix('\n').unwrap_or(&stdout);
    let (status, message) = line
        .split_once('\t')
        .with_context(|| format!("kstatus printed {stdout:?}, not <status>\\t<message>"))?;
    Ok((status.to_string(), message.to_string()))
}

/// The binary `ensure_kstatus` built: `e2e/lib/tools.sh` says where it goes.
fn binary() -> anyhow::Result<&'static Path> {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    if let Some(binary) = BINARY.get() {
        return Ok(binary);
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("lib/tools.sh");
    let output = Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1" && printf %s "$EDGEVISOR_CACHE/kstatus-$KSTATUS_VERSION/kstatus""#)
        .arg("kstatus")
        .arg(&tools)
        .output()
        .with_context(|| format!("sourcing {}", tools.display()))?;
    if !output.status.success() {
        bail!(
            "sourcing {} failed: {}",
            tools.display(),
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    let binary = PathBuf::from(String::from_utf8(output.stdout)?);
    let complete = binary.with_file_name(".complete");
    if !complete.exists() {
        bail!(
            "kstatus is not built ({} is missing); run `e2e/env up` (or `make test`)",
            complete.display()
        );
    }
    Ok(BINARY.get_or_init(|| binary))
}
