//! `edgevisor probe`: checks that URLs answer, from wherever the image runs. The image has no
//! shell and no curl, so `helm test` and a user debugging a pod's network use this; it resolves
//! names with the system resolver (glibc's `files` and `dns` sources, as the controller and the
//! gateway do when they reach a registry or the apiserver by name).
use std::time::Duration;

use anyhow::{Context as _, bail};

/// What one URL must answer.
#[derive(Clone, Debug)]
pub struct Probe {
    pub url: reqwest::Url,
    /// The status expected; `None` accepts any 2xx.
    pub expect: Option<u16>,
}

/// How long a refused connection waits before it is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// Fetches every URL (`GET`; a refused connection is tried again within `timeout`) and prints
/// one line per URL: the addresses its host resolved to and the status. Fails on the first URL
/// that does not answer as expected.
pub async fn run(probes: &[Probe], insecure: bool, timeout: Duration) -> anyhow::Result<()> {
    // The gateway's certificate names the devices' address for it, not a Service's: probing
    // that the Service reaches a gateway may skip verification, when asked.
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .tls_danger_accept_invalid_certs(insecure)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building an HTTP client")?;
    for probe in probes {
        let host = probe
            .url
            .host_str()
            .with_context(|| format!("{}: no host", probe.url))?;
        let port = probe
            .url
            .port_or_known_default()
            .with_context(|| format!("{}: no port", probe.url))?;
        let addresses: Vec<String> = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("{}: resolving {host}", probe.url))?
            .map(|a| a.ip().to_string())
            .collect();
        // A Service's rules reach every node a moment after its endpoints do: a refused or
        // unroutable connection is tried again until the URL's time is up.
        let started = std::time::Instant::now();
        let status = loop {
            match http.get(probe.url.clone()).send().await {
                Ok(response) => break response.status().as_u16(),
                Err(e) if e.is_connect() && started.elapsed() + RETRY < timeout => {
                    tokio::time::sleep(RETRY).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("{}: no answer", probe.url)));
                }
            }
        };
        println!("{} ({}): {status}", probe.url, addresses.join(", "));
        let ok = match probe.expect {
            Some(want) => status == want,
            None => (200..300).contains(&status),
        };
        if !ok {
            bail!(
                "{}: answered {status}, expected {}",
                probe.url,
                probe
                    .expect
                    .map_or_else(|| "2xx".to_string(), |s| s.to_string())
            );
        }
    }
    Ok(())
}

/// Parses `URL` or `STATUS=URL`.
pub fn parse(arg: &str) -> Result<Probe, String> {
    let (expect, url) = match arg.split_once('=') {
        Some((status, url)) if !status.is_empty() && status.bytes().all(|b| b.is_ascii_digit()) => {
            let status: u16 = status
                .parse()
                .map_err(|_| format!("{status}: not an HTTP status"))?;
            if !(100..600).contains(&status) {
                return Err(format!("{status}: not an HTTP status"));
            }
            (Some(status), url)
        }
        _ => (None, arg),
    };
    let url = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{url}: only http and https URLs are probed"));
    }
    Ok(Probe { url, expect })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn a_probe_is_a_url_with_an_optional_expected_status() {
        let p = parse("http://10.0.0.1:8080/readyz").expect("plain URL");
        assert_eq!(p.expect, None);
        assert_eq!(p.url.port(), Some(8080));
        let p = parse("401=https://gw:8443/v1/devices/a/b/target").expect("with status");
        assert_eq!(p.expect, Some(401));
        assert_eq!(p.url.host_str(), Some("gw"));
        // A query string with '=' is part of the URL, not a status.
        let p = parse("http://h/x?a=b").expect("query");
        assert_eq!(p.expect, None);
        assert!(parse("999=http://h/").is_err());
        assert!(parse("ftp://h/").is_err());
        assert!(parse("not a url").is_err());
    }
}
