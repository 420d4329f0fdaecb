//! Which devices a gateway replica heard from, published as one ConfigMap per replica every
//! liveness interval: the fine-grained liveness of a whole fleet in a few writes, instead of a
//! `lastSeen` write per device per interval. The gateway writes a Device's `Online` condition
//! only when it changes; the controller reads these summaries (a watch on a handful of objects)
//! to tell when an online device went quiet. Pure: encoding, decoding, the object.
use std::io::{Read, Write};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;

/// The label every summary carries (its value: the replica's name).
pub const LABEL: &str = "edgevisor.dev/heard-by";
/// When the summary was taken (RFC 3339).
pub const AT: &str = "edgevisor.dev/heard-at";
/// The key of the gzip-compressed list (`namespace/name` per line) in `binaryData`.
pub const KEY: &str = "devices.gz";
/// Most bytes a summary may decompress to: 25,000 connections of 253-character names and
/// more; anything larger is refused, not read.
const MAX_DECODED: u64 = 16 << 20;

pub type Key = (String, String);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("summary {0}: no {AT} annotation with an RFC 3339 time")]
    NoTime(String),
    #[error("summary {0}: no {KEY}")]
    NoDevices(String),
    #[error("summary {0}: {1}")]
    Corrupt(String, String),
}

/// The gzip of `namespace/name` lines, sorted (the same set gives the same bytes).
pub fn encode<'a>(keys: impl IntoIterator<Item = &'a Key>) -> Vec<u8> {
    let mut lines: Vec<String> = keys
        .into_iter()
        .map(|(ns, n)| format!("{ns}/{n}"))
        .collect();
    lines.sort_unstable();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for line in &lines {
        // Writing to a Vec cannot fail.
        let _ = gz.write_all(line.as_bytes());
        let _ = gz.write_all(b"\n");
    }
    gz.finish().unwrap_or_default()
}

/// The keys of an [`encode`]d list; a line that is not `namespace/name` of DNS names is skipped
/// (a summary comes from a gateway, but its ConfigMap is editable by whoever may write there).
pub fn decode(name: &str, bytes: &[u8]) -> Result<Vec<Key>, Error> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_DECODED + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::Corrupt(name.to_string(), e.to_string()))?;
    if text.len() as u64 > MAX_DECODED {
        return Err(Error::Corrupt(
            name.to_string(),
            format!("more than {MAX_DECODED} bytes"),
        ));
    }
    let dns = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('/'))
        .filter(|(ns, n)| dns(ns) && dns(n))
        .map(|(ns, n)| (ns.to_string(), n.to_string()))
        .collect())
}

/// The summary object of replica `name` in `namespace`, owned by its pod when `owner` is given
/// (so it goes with the pod).
pub fn config_map(
    name: &str,
    namespace: &str,
    owner: Option<OwnerReference>,
    at: Timestamp,
    keys: &[Key],
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(object_name(name)),
            namespace: Some(namespace.to_string()),
            labels: Some([(LABEL.to_string(), label_value(name))].into()),
            annotations: Some([(AT.to_string(), at.to_string())].into()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        binary_data: Some([(KEY.to_string(), ByteString(encode(keys)))].into()),
        ..Default::default()
    }
}

/// The ConfigMap's name for replica `name`.
pub fn object_name(name: &str) -> String {
    let mut n = format!("edgevisor-heard-{name}");
    n.truncate(253);
    n
}

fn label_value(name: &str) -> String {
    let mut v: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    v.truncate(63);
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// When a summary was taken and whom it lists.
pub fn read(cm: &ConfigMap) -> Result<(Timestamp, Vec<Key>), Error> {
    let name = cm.metadata.name.clone().unwrap_or_default();
    let at = cm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(AT))
        .and_then(|t| t.parse::<Timestamp>().ok())
        .ok_or_else(|| Error::NoTime(name.clone()))?;
    let bytes = cm
        .binary_data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .ok_or_else(|| Error::NoDevices(name.clone()))?;
    Ok((at, decode(&name, &bytes.0)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, n: &str) -> Key {
        (ns.to_string(), n.to_string())
    }

    #[test]
    fn a_summary_round_trips_and_is_small() {
        let keys: Vec<Key> = (0..20_000)
            .map(|i| key("shops", &format!("kiosk-{i:05}")))
            .collect();
        let cm = config_map(
            "gw-0",
            "edgevisor-system",
            None,
            Timestamp::UNIX_EPOCH,
            &keys,
        );
        let bytes = &cm.binary_data.as_ref().expect("data")[KEY].0;
        // 20,000 devices in well under a ConfigMap's 1 MiB.
        assert!(bytes.len() < 200_000, "{} bytes", bytes.len());
        let (at, mut back) = read(&cm).expect("readable");
        back.sort();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(back, want);
        assert_eq!(at, Timestamp::UNIX_EPOCH);
        assert_eq!(cm.metadata.name.as_deref(), Some("edgevisor-heard-gw-0"));
    }

    #[test]
    fn bad_summaries_are_refused_or_filtered() {
        let mut cm = config_map("gw", "ns", None, Timestamp::UNIX_EPOCH, &[key("a", "b")]);
        cm.metadata.annotations = None;
        assert!(matches!(read(&cm), Err(Error::NoTime(_))));
        assert!(matches!(decode("x", b"not gzip"), Err(Error::Corrupt(..))));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"ok/dev\nno-slash\nBAD/Upper\n/empty\nns/../x\n")
            .expect("write");
        let keys = decode("x", &gz.finish().expect("gzip")).expect("decodes");
        assert_eq!(keys, vec![key("ok", "dev")]);
        // A bomb is refused, not inflated into memory.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![b'a'; 1 << 20];
        for _ in 0..17 {
            gz.write_all(&zeros).expect("write");
        }
        assert!(decode("bomb", &gz.finish().expect("gzip")).is_err());
    }
}
