//! The CRDs as a user meets them: the examples apply, `kubectl get` shows how far along things
//! are, `kubectl explain` shows the docs, spec and status are separate, revisions are immutable.
use edgevisor_crds::fleet_revision::{ArchitectureState, FleetRevisionSpec};
use edgevisor_crds::{Architecture, Device, Fleet, FleetRevision};
use edgevisor_e2e::Env;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

#[test]
fn every_example_applies_client_side_and_server_side() {
    let env = Env::get();
    env.ensure_crds();
    for server_side in [false, true] {
        let ns = env.namespace("examples");
        let mut apply = env.kubectl(["apply", "-n", &ns, "-f", "examples/"]);
        if server_side {
            apply = apply.args(["--server-side", "--field-manager=e2e-user"]);
        }
        apply.run().expect_ok("applying examples/");
        let names = env
            .kubectl(["get", "edgevisor", "-n", &ns, "-o", "name"])
            .run()
            .expect_ok("listing what the examples made");
        for expected in [
            "fleet.edgevisor.dev/kiosks",
            "fleet.edgevisor.dev/sensors",
            "device.edgevisor.dev/kiosk-001",
            "device.edgevisor.dev/kiosk-002",
            "device.edgevisor.dev/kiosk-003",
        ] {
            assert!(
                names.lines().any(|l| l == expected),
                "{expected} missing after apply; got:\n{names}"
            );
        }
        // Applying again changes nothing: the manifests round-trip through the schema.
        let again = env
            .kubectl([
                "apply",
                "-n",
                &ns,
                "-f",
                "examples/",
                "--server-side",
                "--field-manager=e2e-user",
            ])
            .run()
            .expect_ok("re-applying examples/");
        assert!(
            !again.contains("configured") || !server_side,
            "re-apply changed something:\n{again}"
        );
    }
}

/// `kubectl get KIND`: checks the header is `columns` and returns the cells of `name`'s row.
fn table_row(env: &Env, kind: &str, ns: &str, name: &str, columns: &[&str]) -> Vec<String> {
    let table = env
        .kubectl(["get", kind, "-n", ns])
        .run()
        .expect_ok("kubectl get");
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, columns, "columns of `kubectl get {kind}`");
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"));
    row.split_whitespace().map(str::to_string).collect()
}

#[tokio::test]
async fn kubectl_get_shows_how_far_along_a_rollout_is() {
    let env = Env::get();
    env.ensure_crds();
    let ns = env.namespace("columns");
    env.kubectl(["apply", "-n", &ns, "-f", "examples/"])
        .run()
        .expect_ok("applying examples/");
    let client = env.client().await.expect("client");

    // The controller's and the gateway's status writes, done here by hand.
    let fleets: Api<Fleet> = Api::namespaced(client.clone(), &ns);
    fleets
        .patch_status(
            "kiosks",
            &PatchParams::apply("e2e-controller"),
            &Patch::Apply(json!({
                "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet",
                "status": {"devices": 3, "updated": 2, "ready": 1, "failed": 1,
                           "updateRevision": "kiosks-0123456789", "currentStep": "1"}
            })),
        )
        .await
        .expect("patching fleet status");
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    devices
        .patch_status(
            "kiosk-001",
            &PatchParams::apply("e2e-gateway"),
            &Patch::Apply(json!({
                "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device",
                "status": {"architecture": "arm64", "currentRevision": "kiosks-aaaaaaaaaa",
                           "update": {"revision": "kiosks-0123456789", "status": "DOWNLOADING", "progress": 42},
                           "conditions": [{"type": "Online", "status": "True", "reason": "Heartbeat",
                                           "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            })),
        )
        .await
        .expect("patching device status");

    let cells = table_row(
        env,
        "fleets",
        &ns,
        "kiosks",
        &[
            "NAME", "DEVICES", "UPDATED", "READY", "FAILED", "REVISION", "STEP", "AGE",
        ],
    );
    assert_eq!(
        &cells[..7],
        ["kiosks", "3", "2", "1", "1", "kiosks-0123456789", "1"]
    );
    let cells = table_row(
        env,
        "devices",
        &ns,
        "kiosk-001",
        &[
            "NAME", "ARCH", "CURRENT", "TARGET", "UPDATE", "PROGRESS", "ONLINE", "AGE",
        ],
    );
    assert_eq!(
        &cells[..6],
        [
            "kiosk-001",
            "arm64",
            "kiosks-aaaaaaaaaa",
            "DOWNLOADING",
            "42",
            "True"
        ]
    );

    let revisions: Api<FleetRevision> = Api::namespaced(client, &ns);
    revisions
        .create(&PostParams::default(), &revision("kiosks-0123456789"))
        .await
        .expect("creating a revision");
    revisions
        .patch_status(
            "kiosks-0123456789",
            &PatchParams::apply("e2e-controller"),
            &Patch::Apply(json!({
                "apiVersion": "edgevisor.dev/v1alpha1", "kind": "FleetRevision",
                "status": {"architectures": "amd64,arm64", "devices": 2}
            })),
        )
        .await
        .expect("patching revision status");
    let cells = table_row(
        env,
        "fleetrevisions",
        &ns,
        "kiosks-0123456789",
        &[
            "NAME",
            "FLEET",
            "REVISION",
            "ARCHITECTURES",
            "DEVICES",
            "AGE",
        ],
    );
    assert_eq!(
        &cells[..5],
        ["kiosks-0123456789", "kiosks", "1", "amd64,arm64", "2"]
    );

    // The category lists all three kinds at once.
    let all = env
        .kubectl(["get", "edgevisor", "-n", &ns, "-o", "name"])
        .run()
        .expect_ok("kubectl get edgevisor");
    for kind in [
        "fleet.edgevisor.dev/",
        "device.edgevisor.dev/",
        "fleetrevision.edgevisor.dev/",
    ] {
        assert!(
            all.contains(kind),
            "`kubectl get edgevisor` lacks {kind}:\n{all}"
        );
    }
}

fn revision(name: &str) -> FleetRevision {
    let state = |architecture| ArchitectureState {
        architecture,
        state_digest: "0".repeat(64),
        state: r##"{"#spec":"edgevisor-state@1","containers":[]}"##.to_string(),
        images: vec![],
        signature: None,
    };
    FleetRevision::new(
        name,
        FleetRevisionSpec {
            fleet: "kiosks".into(),
            revision: 1,
            template_hash: "a".repeat(64),
            architectures: vec![state(Architecture::Amd64), state(Architecture::Arm64)],
            files: vec![],
        },
    )
}

#[test]
fn kubectl_explain_shows_the_doc_comments() {
    let env = Env::get();
    env.ensure_crds();
    for (field, expected) in [
        (
            "fleet.spec.strategy.maxUnavailable",
            "Most devices updating at once: a count or a percentage of the fleet",
        ),
        (
            "fleet.spec.resume",
            "A resume naming another revision has no effect",
        ),
        (
            "device.spec.pinnedRevision",
            "Run this FleetRevision whatever its fleet rolls out.",
        ),
        ("device.status.update.status", "Where the update is."),
        (
            "fleetrevision.spec.architectures.state",
            "exactly the bytes devices install",
        ),
    ] {
        let out = env
            .kubectl(["explain", field])
            .run()
            .expect_ok("kubectl explain");
        // kubectl wraps at 80 columns; compare with the wrapping undone.
        let text = out.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            text.contains(expected),
            "`kubectl explain {field}` lacks {expected:?}:\n{out}"
        );
    }
}

#[tokio::test]
async fn spec_and_status_are_written_separately() {
    let env = Env::get();
    env.ensure_crds();
    let ns = env.namespace("subresource");
    env.kubectl(["apply", "-n", &ns, "-f", "examples/devices.yaml"])
        .run()
        .expect_ok("applying devices");
    let devices: Api<Device> = Api::namespaced(env.client().await.expect("client"), &ns);
    let before = devices.get("kiosk-001").await.expect("get");

    // A status write leaves spec and generation alone.
    devices
        .patch_status(
            "kiosk-001",
            &PatchParams::apply("e2e-gateway"),
            &Patch::Apply(json!({
                "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device",
                "spec": {"paused": true},
                "status": {"currentRevision": "kiosks-1111111111"}
            })),
        )
        .await
        .expect("status patch");
    let after_status = devices.get("kiosk-001").await.expect("get");
    assert_eq!(
        after_status.spec, before.spec,
        "a /status write changed spec"
    );
    assert_eq!(after_status.metadata.generation, before.metadata.generation);
    assert_eq!(
        after_status
            .status
            .as_ref()
            .and_then(|s| s.current_revision.as_deref()),
        Some("kiosks-1111111111")
    );

    // A spec write leaves status alone and bumps the generation.
    devices
        .patch(
            "kiosk-001",
            &PatchParams::apply("edgevisor-controller"),
            &Patch::Apply(json!({
                "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device",
                "spec": {"revision": "kiosks-2222222222"},
                "status": {"currentRevision": "kiosks-9999999999"}
            })),
        )
        .await
        .expect("spec patch");
    let after_spec = devices.get("kiosk-001").await.expect("get");
    assert_eq!(
        after_spec.spec.revision.as_deref(),
        Some("kiosks-2222222222")
    );
    assert_eq!(
        after_spec.status, after_status.status,
        "a spec write changed status"
    );
    assert!(after_spec.metadata.generation > after_status.metadata.generation);

    // Each writer owns its fields under its own manager.
    let managers: Vec<String> = after_spec
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    for m in ["e2e-gateway", "edgevisor-controller"] {
        assert!(
            managers.iter().any(|x| x == m),
            "no field manager {m}: {managers:?}"
        );
    }
}

#[tokio::test]
async fn a_fleet_revision_cannot_change_after_creation() {
    let env = Env::get();
    env.ensure_crds();
    let ns = env.namespace("immutable");
    let revisions: Api<FleetRevision> = Api::namespaced(env.client().await.expect("client"), &ns);
    revisions
        .create(&PostParams::default(), &revision("kiosks-abcdef0123"))
        .await
        .expect("create");

    let err = revisions
        .patch(
            "kiosks-abcdef0123",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"templateHash": "b".repeat(64)}})),
        )
        .await
        .expect_err("changing a revision's content must be refused");
    let message = err.to_string();
    assert!(
        message.contains("a FleetRevision's content is immutable"),
        "{message}"
    );

    // Labels and annotations may still change (the controller marks revisions in use).
    revisions
        .patch(
            "kiosks-abcdef0123",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"edgevisor.dev/in-use": "true"}}})),
        )
        .await
        .expect("metadata stays writable");
    let stored = revisions.get("kiosks-abcdef0123").await.expect("get");
    assert_eq!(stored.spec.template_hash, "a".repeat(64));
}
