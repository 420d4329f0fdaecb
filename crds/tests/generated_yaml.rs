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
            crd.spec.names.categories.as_deref().unwrap_or_default().contains(&"edgevisor".to_string()),
            "{file} is not in the edgevisor category"
        );
        for version in &crd.spec.versions {
            let status = version.subresources.as_ref().and_then(|s| s.status.as_ref());
            assert!(status.is_some(), "{file} {} has no /status subresource", version.name);
        }
    }
}
