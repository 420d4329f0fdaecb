//! A throwaway certificate authority and a server certificate signed by it, made with the
//! `openssl` CLI (EC P-256), for the gateway's HTTPS in tests: devices trust the CA file.
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The files [`make_server_cert`] wrote.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The directory holding them.
    pub dir: PathBuf,
    /// The CA's certificate (PEM): what clients trust.
    pub ca_cert: PathBuf,
    /// The CA's key (PEM).
    pub ca_key: PathBuf,
    /// The server's certificate (PEM), with SANs `IP:127.0.0.1`, `DNS:localhost` and the IPs
    /// given.
    pub cert: PathBuf,
    /// The server's key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The CA certificate's PEM.
    pub fn ca_pem(&self) -> anyhow::Result<Vec<u8>> {
        std::fs::read(&self.ca_cert).with_context(|| format!("reading {}", self.ca_cert.display()))
    }
}

/// Makes a new CA and a server certificate for `127.0.0.1` and `ips` in `dir` (created; files
/// of an earlier call replaced).
pub fn make_server_cert(dir: &Path, ips: &[IpAddr]) -> anyhow::Result<TlsFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = TlsFiles {
        dir: dir.to_path_buf(),
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    let mut sans = vec!["IP:127.0.0.1".to_string(), "DNS:localhost".to_string()];
    sans.extend(ips.iter().map(|ip| format!("IP:{ip}")));
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        format!(
            "subjectAltName={}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
            sans.join(",")
        ),
    )?;
    let csr = dir.join("server.csr");
    let p = |path: &Path| path.to_string_lossy().into_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=edgevisor-e2e-gateway-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        &p(&files.ca_key),
        "-out",
        &p(&files.ca_cert),
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=edgevisor-gateway",
        "-keyout",
        &p(&files.key),
        "-out",
        &p(&csr),
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&files.ca_cert),
        "-CAkey",
        &p(&files.ca_key),
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&files.cert),
    ])?;
    Ok(files)
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
