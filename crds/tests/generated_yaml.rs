//! The CRD YAML committed in the chart is exactly what the Rust types generate.
use std::path::Path;

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/edgevisor/crds");
    for (file, crd) in edgevisor_crds::crds() {
        let generated = edgevisor_crds::to_yaml(&crd).expect("CRDs serialize");
        let path = dir.join(file);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        assert!(
            committed == generated,
            "{} is stale: the Rust types generate something else. Run `make crds` and commit.",
            path.display()
        );
    }
}

#[test]
fn every_kind_is_namespaced_with_status_and_in_the_edgevisor_category() {
    for (file, crd) in edgevisor_crds::crds() {
        assert_eq!(crd.spec.group, edgevisor_crds::GROUP, "{file}");
        assert_eq!(crd.spec.scope, "Namespaced", "{file}");
        assert!(
            crd.spec
                .names
                .categories
                .as_deref()
                .unwrap_or_default()
                .contains(&"edgevisor".to_string()),
            "{file} is not in the edgevisor category"
        );
        for version in &crd.spec.versions {
            let status = version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref());
            assert!(
                status.is_some(),
                "{file} {} has no /status subresource",
                version.name
            );
        }
    }
}

/// Every string and list is bounded, so that the apiserver's CEL cost estimation accepts the
/// rules and no field can grow without limit.
#[test]
fn every_string_and_list_is_bounded() {
    fn walk(node: &serde_json::Value, path: &str, unbounded: &mut Vec<String>) {
        let Some(map) = node.as_object() else { return };
        let is = |t: &str| map.get("type").and_then(|v| v.as_str()) == Some(t);
        let has = |k: &str| map.contains_key(k);
        if is("string") && !has("maxLength") && !has("enum") && !has("format") {
            unbounded.push(path.to_string());
        }
        if is("array") && !has("maxItems") {
            unbounded.push(format!("{path} (list)"));
        }
        if is("object")
            && map
                .get("additionalProperties")
                .is_some_and(|a| a.is_object())
            && !has("maxProperties")
        {
            unbounded.push(format!("{path} (map)"));
        }
        for (name, child) in map
            .get("properties")
            .and_then(|p| p.as_object())
            .into_iter()
            .flatten()
        {
            walk(child, &format!("{path}.{name}"), unbounded);
        }
        if let Some(items) = map.get("items") {
            walk(items, &format!("{path}[]"), unbounded);
        }
        if let Some(values) = map.get("additionalProperties") {
            walk(values, &format!("{path}{{}}"), unbounded);
        }
    }
    for (file, crd) in edgevisor_crds::crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
        let mut unbounded = Vec::new();
        walk(
            &schema["openAPIV3Schema"]["properties"]["spec"],
            ".spec",
            &mut unbounded,
        );
        walk(
            &schema["openAPIV3Schema"]["properties"]["status"],
            ".status",
            &mut unbounded,
        );
        assert!(
            unbounded.is_empty(),
            "{file}: unbounded fields: {unbounded:#?}"
        );
    }
}
