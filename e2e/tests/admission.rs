//! The chart's ValidatingAdmissionPolicy on the real apiserver: an identity with every RBAC
//! right on the edgevisor CRDs still cannot create a FleetRevision or set a Device's target;
//! the controller's ServiceAccount can, and everyone keeps what RBAC gives them otherwise
//! (Devices without a target, labels, pausing).
use edgevisor_e2e::Env;
use edgevisor_e2e::release::{RELEASE_NAMESPACE, install_chart};
use serde_json::json;

fn revision(name: &str) -> String {
    json!({
        "apiVersion": "edgevisor.dev/v1alpha1", "kind": "FleetRevision",
        "metadata": {"name": name},
        "spec": {"fleet": "app", "revision": 1, "templateHash": "a".repeat(64),
            "architectures": [{"architecture": "amd64", "stateDigest": "0".repeat(64),
                "state": "{\"#spec\":\"edgevisor-state@1\",\"containers\":[]}", "images": []}]}
    })
    .to_string()
}

fn device(name: &str, revision: Option<&str>) -> String {
    let mut spec = json!({});
    if let Some(r) = revision {
        spec["revision"] = r.into();
    }
    json!({"apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device",
        "metadata": {"name": name}, "spec": spec})
    .to_string()
}

#[test]
fn only_the_controller_writes_revisions_and_targets() {
    let env = Env::get();
    install_chart(env);
    let ns = env.namespace("admission");
    let controller = format!("system:serviceaccount:{RELEASE_NAMESPACE}:edgevisor-controller");
    let controller = controller.as_str();
    let intruder = format!("system:serviceaccount:{ns}:intruder");
    // Every right on the CRDs, as a fleet author with too much RBAC would have.
    env.kubectl(["create", "serviceaccount", "intruder", "-n", &ns])
        .run()
        .expect_ok("the intruder's ServiceAccount");
    env.kubectl(["apply", "-f", "-"])
        .stdin(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "edgevisor-everything", "namespace": &ns},
                "rules": [{"apiGroups": ["edgevisor.dev"], "resources": ["*"], "verbs": ["*"]}]})
            .to_string(),
        )
        .run()
        .expect_ok("a Role with every right on the CRDs");
    env.kubectl([
        "create",
        "rolebinding",
        "intruder",
        "-n",
        &ns,
        "--role=edgevisor-everything",
        &format!("--serviceaccount={ns}:intruder"),
    ])
    .run()
    .expect_ok("binding it");
    let as_ = |who: &str, args: &[&str], stdin: Option<String>| {
        let mut full = vec!["-n", ns.as_str(), "--as", who];
        if who == intruder {
            full.extend(["--as-group", "system:serviceaccounts"]);
        }
        full.extend_from_slice(args);
        let cmd = env.kubectl(full);
        match stdin {
            Some(s) => cmd.stdin(s).run(),
            None => cmd.run(),
        }
    };
    let patch = |who: &str, kind: &str, name: &str, json: &str| {
        as_(
            who,
            &["patch", kind, name, "--type=merge", "-p", json],
            None,
        )
    };
    let can = env
        .kubectl([
            "auth",
            "can-i",
            "create",
            "fleetrevisions.edgevisor.dev",
            "-n",
            &ns,
            "--as",
            &intruder,
        ])
        .run();
    assert_eq!(can.stdout.trim(), "yes", "RBAC alone would let it");

    // A policy just installed takes a moment to hold: wait for it with server-side dry runs
    // (admission runs, nothing is stored).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while as_(
        &intruder,
        &["create", "--dry-run=server", "-f", "-"],
        Some(revision("app-00000000aa")),
    )
    .code
        == Some(0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the admission policy never took effect"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    // Refused, with a message that says who may.
    let refused = as_(
        &intruder,
        &["create", "-f", "-"],
        Some(revision("app-00000000aa")),
    );
    assert!(
        refused.code != Some(0),
        "a forged FleetRevision was created"
    );
    assert!(
        refused
            .stderr
            .contains("FleetRevisions are made only by the edgevisor controller")
            && refused.stderr.contains(controller),
        "{}",
        refused.stderr
    );
    let refused = as_(
        &intruder,
        &["create", "-f", "-"],
        Some(device("targeted", Some("app-00000000aa"))),
    );
    assert!(
        refused.code != Some(0),
        "a Device was created with a target"
    );
    assert!(
        refused.stderr.contains("spec.revision (its target)"),
        "{}",
        refused.stderr
    );

    // What RBAC gives otherwise still works: a Device without a target, labels, pausing.
    as_(
        &intruder,
        &["create", "-f", "-"],
        Some(device("kiosk", None)),
    )
    .expect_ok("creating a Device without a target");
    as_(&intruder, &["label", "device", "kiosk", "site=lab"], None).expect_ok("labelling it");
    patch(&intruder, "device", "kiosk", r#"{"spec":{"paused":true}}"#).expect_ok("pausing it");
    let refused = patch(
        &intruder,
        "device",
        "kiosk",
        r#"{"spec":{"revision":"app-00000000aa"}}"#,
    );
    assert!(refused.code != Some(0), "the intruder set a target");

    // The controller's ServiceAccount may do both.
    as_(
        controller,
        &["create", "-f", "-"],
        Some(revision("app-0123456789")),
    )
    .expect_ok("the controller creating a FleetRevision");
    patch(
        controller,
        "device",
        "kiosk",
        r#"{"spec":{"revision":"app-0123456789"}}"#,
    )
    .expect_ok("the controller setting a target");
    // Now the intruder can neither move nor clear it, but may still label the revision's
    // Device and leave the revision's spec alone.
    for json in [
        r#"{"spec":{"revision":"app-00000000aa"}}"#,
        r#"{"spec":{"revision":null}}"#,
    ] {
        let refused = patch(&intruder, "device", "kiosk", json);
        assert!(refused.code != Some(0), "{json} went through");
    }
    let refused = patch(
        &intruder,
        "fleetrevision",
        "app-0123456789",
        r#"{"spec":{"revision":2}}"#,
    );
    assert!(refused.code != Some(0), "the intruder changed a revision");
    as_(
        &intruder,
        &["annotate", "fleetrevision", "app-0123456789", "note=seen"],
        None,
    )
    .expect_ok("annotating a revision");
    let target = env
        .kubectl([
            "get",
            "device",
            "kiosk",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.revision}",
        ])
        .run()
        .expect_ok("reading the target");
    assert_eq!(target.trim(), "app-0123456789");
}
