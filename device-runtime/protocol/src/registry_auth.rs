//! Registry authentication as the OCI distribution protocol and Docker define it, parsed
//! once for every client (the controller resolving images, the agent fetching blobs):
//! docker `config.json` credentials, `WWW-Authenticate` challenges, token answers.
//! Pure: the HTTP calls stay with each client.

use std::collections::HashMap;

use base64::Engine;

/// A registry's `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

impl Challenge {
    /// The query of a token request for this Bearer challenge: `service` as given, and
    /// the challenge's scope, or pull access to `repository` when it names none.
    pub fn token_query(&self, repository: &str) -> Option<(String, Vec<(&'static str, String)>)> {
        let Challenge::Bearer {
            realm,
            service,
            scope,
        } = self
        else {
            return None;
        };
        let mut q = Vec::new();
        if let Some(s) = service {
            q.push(("service", s.clone()));
        }
        let scope = scope
            .clone()
            .unwrap_or_else(|| format!("repository:{repository}:pull"));
        q.push(("scope", scope));
        Some((realm.clone(), q))
    }
}

/// Parses `Bearer realm="…",service="…",scope="…"` (or `Basic realm="…"`). Quoted values
/// may hold commas (`scope="repository:a:pull,push"`) and backslash escapes. `None` for
/// other schemes and for a Bearer challenge without a realm.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm").filter(|r| !r.is_empty())?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `k1="v, 1", k2=v2` → pairs; malformed pieces are skipped, never a panic.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ',') {
            key.push(c);
        }
        if chars.next_if_eq(&'=').is_none() {
            if chars.peek().is_none() {
                return out;
            }
            continue;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
            value = value.trim().to_owned();
        }
        let key = key.trim();
        if !key.is_empty() {
            out.push((key.to_owned(), value));
        }
    }
}

/// `https://host:5000/v1/` or `host:5000` → `host:5000` (lowercase), the key docker
/// configs and registry URLs are matched by.
pub fn normalize_host(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    s.split('/').next().unwrap_or_default().to_ascii_lowercase()
}

/// Credentials for one registry host, as a ready `Authorization: Basic …` value.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    basic: String,
}

impl Credentials {
    pub fn new(username: &str, password: &str) -> Credentials {
        let b64 = base64::engine::general_purpose::STANDARD;
        Credentials {
            basic: format!("Basic {}", b64.encode(format!("{username}:{password}"))),
        }
    }

    /// The `Authorization` header value.
    pub fn basic_header(&self) -> &str {
        &self.basic
    }
}

// Never print a password, not even in a debug log.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(…)")
    }
}

/// A docker `config.json` (`{"auths": {"host": {"auth": base64(user:pass)} | {"username",
/// "password"}}}`) → credentials by normalized host. Docker Hub is named by its index in
/// configs and by its registry in image references, so it is found under both.
pub fn parse_docker_config(bytes: &[u8]) -> Result<HashMap<String, Credentials>, String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        auth: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    }
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not a docker config.json: {e}"))?;
    if !v.is_object() {
        return Err("not a docker config.json: not a JSON object".into());
    }
    let cfg: Config =
        serde_json::from_value(v).map_err(|e| format!("not a docker config.json: {e}"))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = HashMap::new();
    for (key, e) in cfg.auths {
        let credentials = match (e.auth.filter(|a| !a.is_empty()), e.username) {
            (Some(auth), _) => {
                let pair = b64
                    .decode(auth.trim())
                    .ok()
                    .and_then(|raw| String::from_utf8(raw).ok())
                    .and_then(|s| s.split_once(':').map(|(u, p)| Credentials::new(u, p)));
                pair.ok_or_else(|| format!("auths[{key}].auth must be base64 of user:password"))?
            }
            (None, Some(user)) => Credentials::new(&user, &e.password.unwrap_or_default()),
            (None, None) => continue,
        };
        let host = normalize_host(&key);
        if host == "index.docker.io" || host == "docker.io" {
            out.insert("registry-1.docker.io".into(), credentials.clone());
        }
        out.insert(host, credentials);
    }
    Ok(out)
}

/// A token service's answer: `{"token": …}` or `{"access_token": …}` (both are in use),
/// with `expires_in` seconds (60 when absent, as the distribution spec says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub token: String,
    pub expires_in: u64,
}

/// The most a token answer may hold; a larger one is refused, not buffered.
pub const MAX_TOKEN_ANSWER_BYTES: usize = 64 << 10;

/// The rule for every URL a registry client sends requests, credentials or tokens to:
/// https, or plain http to a host (`host[:port]`) listed as insecure (tests, labs). `Err`
/// names the host refused.
pub fn check_transport(url: &str, insecure: &[String]) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Ok(());
    }
    let plain = lower.strip_prefix("http://");
    let rest = plain.unwrap_or(&lower);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host.strip_suffix(":80").unwrap_or(host);
    if plain.is_some() && insecure.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        Ok(())
    } else {
        Err(host.to_owned())
    }
}

pub fn token_from_answer(body: &[u8]) -> Option<Token> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let token = ["token", "access_token"]
        .iter()
        .find_map(|k| v[*k].as_str().filter(|t| !t.is_empty()))?;
    Some(Token {
        token: token.to_owned(),
        expires_in: v["expires_in"].as_u64().filter(|s| *s > 0).unwrap_or(60),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_a_listed_plain_http_host_is_spoken_to() {
        let listed = vec!["127.0.0.1:5000".to_string(), "lab.local".to_string()];
        assert_eq!(check_transport("https://auth.example/token", &[]), Ok(()));
        assert_eq!(
            check_transport("http://127.0.0.1:5000/v2/", &listed),
            Ok(())
        );
        assert_eq!(
            check_transport("HTTP://user@Lab.Local:80/token?x", &listed),
            Ok(())
        );
        assert_eq!(
            check_transport("http://127.0.0.1:5001/token", &listed),
            Err("127.0.0.1:5001".into())
        );
        assert_eq!(
            check_transport("http://evil.example/x", &[]),
            Err("evil.example".into())
        );
        assert!(check_transport("ftp://127.0.0.1:5000/", &listed).is_err());
    }

    #[test]
    fn bearer_challenges_are_parsed_with_quotes_commas_and_escapes() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:team/app:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:team/app:pull,push".into()),
            })
        );
        let c = parse_challenge(r#"bearer  Realm=http://a/t , service = "s\"x""#);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "http://a/t".into(),
                service: Some("s\"x".into()),
                scope: None,
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge(r#"Bearer service="s""#), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(""), None);
        // Garbage never panics.
        for s in [
            "Bearer =",
            "Bearer realm=\"unterminated",
            "Bearer ,,,=,=\"",
            "Bearer a",
        ] {
            let _ = parse_challenge(s);
        }
        assert_eq!(
            parse_challenge("Bearer realm=\"unterminated"),
            Some(Challenge::Bearer {
                realm: "unterminated".into(),
                service: None,
                scope: None
            })
        );
    }

    #[test]
    fn token_queries_default_to_pull_of_the_repository() {
        let c = parse_challenge(r#"Bearer realm="https://a/t",service="reg""#).unwrap();
        assert_eq!(
            c.token_query("team/app"),
            Some((
                "https://a/t".to_string(),
                vec![
                    ("service", "reg".to_string()),
                    ("scope", "repository:team/app:pull".to_string())
                ]
            ))
        );
        assert_eq!(Challenge::Basic.token_query("x"), None);
    }

    #[test]
    fn docker_configs_map_hosts_to_basic_credentials() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let auth = b64.encode("alice:pw");
        let cfg = format!(
            r#"{{"auths": {{
                "https://Registry.Example:5000/v2/": {{"auth": "{auth}"}},
                "https://index.docker.io/v1/": {{"username": "bob", "password": "x:y"}},
                "empty.example": {{}}
            }}, "credsStore": "desktop"}}"#
        );
        let m = parse_docker_config(cfg.as_bytes()).unwrap();
        assert_eq!(
            m["registry.example:5000"].basic_header(),
            format!("Basic {auth}")
        );
        let bob = format!("Basic {}", b64.encode("bob:x:y"));
        assert_eq!(m["index.docker.io"].basic_header(), bob);
        assert_eq!(m["registry-1.docker.io"].basic_header(), bob);
        assert!(!m.contains_key("empty.example"));
        assert!(!format!("{:?}", m["index.docker.io"]).contains("bob"));
        assert!(parse_docker_config(br#"{"auths":{"h":{"auth":"!!"}}}"#).is_err());
        let no_colon = b64.encode("nocolon");
        let cfg = format!(r#"{{"auths":{{"h":{{"auth":"{no_colon}"}}}}}}"#);
        assert!(parse_docker_config(cfg.as_bytes()).is_err());
        assert!(parse_docker_config(b"[]").is_err());
        assert!(parse_docker_config(b"not json").is_err());
        assert!(parse_docker_config(b"{}").unwrap().is_empty());
        assert_eq!(normalize_host("r.example:5000"), "r.example:5000");
    }

    #[test]
    fn token_answers() {
        let t = |b: &[u8]| token_from_answer(b).map(|t| (t.token, t.expires_in));
        assert_eq!(t(br#"{"token":"t1"}"#), Some(("t1".into(), 60)));
        assert_eq!(
            t(br#"{"access_token":"t2","expires_in":300}"#),
            Some(("t2".into(), 300))
        );
        assert_eq!(
            t(br#"{"token":"","access_token":"t3","expires_in":0}"#),
            Some(("t3".into(), 60))
        );
        assert_eq!(t(b"nope"), None);
        assert_eq!(t(br#"{"expires_in":5}"#), None);
    }
}
