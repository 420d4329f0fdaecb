//! The Helm chart: it lints and renders, installs into the real apiserver, its ServiceAccounts
//! can do what they need and nothing they must not, and uninstalling keeps the CRDs and the
//! users' objects.
use std::path::{Path, PathBuf};

use edgevisor_e2e::Env;

const CHART: &str = "charts/edgevisor";

#[test]
fn chart_lints_and_renders_hardened_workloads() {
    let env = Env::get();
    env.helm(["lint", "--strict", CHART])
        .run()
        .expect_ok("helm lint");
    let docs = env.helm_template(["ev", CHART, "--namespace", "edgevisor-system"]);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in [
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert!(kinds.contains(&kind), "no {kind} rendered: {kinds:?}");
    }
    for deployment in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap_or_default();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let sc = &container["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{name}: not non-root");
        assert_eq!(
            sc["readOnlyRootFilesystem"], true,
            "{name}: writable root filesystem"
        );
        assert_eq!(
            sc["allowPrivilegeEscalation"], false,
            "{name}: may escalate"
        );
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}: keeps capabilities"
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{name}"
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{name}"
        );
    }
    // values.schema.json refuses nonsense.
    let bad = env
        .helm(["template", "ev", CHART, "--set", "gateway.replicas=-1"])
        .run();
    let err = bad.expect_err("a negative replica count");
    assert!(err.contains("replicas"), "{err}");
    let bad = env
        .helm(["template", "ev", CHART, "--set", "controller.bogus=1"])
        .run();
    let err = bad.expect_err("an unknown value");
    assert!(err.contains("bogus"), "{err}");
    // The ServiceMonitor is there only when asked for.
    assert!(!kinds.contains(&"ServiceMonitor"));
    let with_monitor = env
        .helm([
            "template",
            "ev",
            CHART,
            "--set",
            "metrics.serviceMonitor.enabled=true",
        ])
        .run()
        .expect_ok("helm template with a ServiceMonitor");
    assert!(with_monitor.contains("kind: ServiceMonitor"));
}

struct Release {
    name: String,
    namespace: String,
    controller: PathBuf,
    gateway: PathBuf,
}

fn sa_kubeconfig(env: &Env, ns: &str, sa: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{sa}.kubeconfig"));
    let path = out.to_string_lossy().into_owned();
    env.command_in_repo("e2e/env", ["sa-kubeconfig", ns, sa, &path])
        .run()
        .expect_ok("a token kubeconfig");
    out
}

/// `kubectl auth can-i` as a ServiceAccount. `resource` is `kind`, `kind/subresource`, or
/// `secrets/<name>` for one named Secret.
fn can_i(env: &Env, kubeconfig: &Path, namespace: &str, verb: &str, resource: &str) -> bool {
    let mut args: Vec<String> = vec!["auth".into(), "can-i".into(), verb.into()];
    match resource.split_once('/') {
        Some((kind, sub)) if kind != "secrets" => {
            args.push(kind.into());
            args.push(format!("--subresource={sub}"));
        }
        _ => args.push(resource.into()),
    }
    args.extend(["-n".into(), namespace.into()]);
    let run = env.kubectl_as(kubeconfig, args).run();
    match run.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl auth can-i {verb} {resource}: {other} {}",
            run.stderr
        ),
    }
}

#[test]
fn chart_installs_with_least_privilege_and_uninstall_keeps_crds_and_objects() {
    let env = Env::get();
    let ns = env.namespace("chart");
    let name = format!("ev{}", std::process::id());
    // A second release in one cluster: each release's admission policy holds in its own
    // namespaces, or it would refuse the other release's controller (see release.rs).
    let elsewhere = env.namespace("tenant");
    for namespace in [&ns, &elsewhere] {
        env.kubectl([
            "label",
            "namespace",
            namespace,
            &format!("{}={name}", edgevisor_e2e::release::OTHER_RELEASE_LABEL),
        ])
        .run()
        .expect_ok("giving the namespace to the second release");
    }
    let selector = format!(
        "admission.namespaceSelector={}",
        serde_json::json!({"matchLabels": {edgevisor_e2e::release::OTHER_RELEASE_LABEL: &name}})
    );
    env.helm([
        "install",
        &name,
        CHART,
        "--namespace",
        &ns,
        "--force-conflicts",
        "--values",
        edgevisor_e2e::release::LOCAL_PROCESSES_VALUES,
        "--set-json",
        &selector,
    ])
    .run()
    .expect_ok("helm install");
    let tmp = tempfile::tempdir().expect("tempdir");
    let release = Release {
        controller: sa_kubeconfig(
            env,
            &ns,
            &format!("{name}-edgevisor-controller"),
            tmp.path(),
        ),
        gateway: sa_kubeconfig(env, &ns, &format!("{name}-edgevisor-gateway"), tmp.path()),
        name,
        namespace: ns,
    };
    env.kubectl([
        "create",
        "secret",
        "generic",
        "unrelated",
        "-n",
        &release.namespace,
        "--from-literal=k=v",
    ])
    .run()
    .expect_ok("a secret the chart must not read");

    let ns = release.namespace.as_str();
    let other = elsewhere.as_str();
    // (who, namespace, verb, resource, allowed)
    let checks: &[(&Path, &str, &str, &str, bool)] = &[
        // The controller: targets, revisions, fleet status, events, its lease.
        (
            &release.controller,
            other,
            "patch",
            "devices.edgevisor.dev",
            true,
        ),
        (
            &release.controller,
            other,
            "watch",
            "devices.edgevisor.dev",
            true,
        ),
        (
            &release.controller,
            other,
            "create",
            "fleetrevisions.edgevisor.dev",
            true,
        ),
        (
            &release.controller,
            other,
            "delete",
            "fleetrevisions.edgevisor.dev",
            true,
        ),
        (
            &release.controller,
            other,
            "patch",
            "fleets.edgevisor.dev/status",
            true,
        ),
        (&release.controller, other, "create", "events", true),
        (
            &release.controller,
            ns,
            "update",
            "leases.coordination.k8s.io",
            true,
        ),
        (
            &release.controller,
            ns,
            "create",
            "leases.coordination.k8s.io",
            true,
        ),
        // ...and nothing else.
        (
            &release.controller,
            other,
            "patch",
            "devices.edgevisor.dev/status",
            true,
        ),
        (
            &release.controller,
            other,
            "create",
            "devices.edgevisor.dev",
            false,
        ),
        (
            &release.controller,
            other,
            "delete",
            "devices.edgevisor.dev",
            false,
        ),
        (
            &release.controller,
            other,
            "update",
            "fleets.edgevisor.dev",
            false,
        ),
        (
            &release.controller,
            other,
            "delete",
            "fleets.edgevisor.dev",
            false,
        ),
        (&release.controller, ns, "get", "secrets/unrelated", false),
        (&release.controller, other, "list", "secrets", false),
        (
            &release.controller,
            other,
            "create",
            "leases.coordination.k8s.io",
            false,
        ),
        (
            &release.controller,
            "",
            "delete",
            "customresourcedefinitions.apiextensions.k8s.io",
            false,
        ),
        (&release.controller, other, "create", "pods", false),
        // The gateway: enroll devices, read targets, write device status, read its tokens.
        (
            &release.gateway,
            other,
            "create",
            "devices.edgevisor.dev",
            true,
        ),
        (
            &release.gateway,
            other,
            "watch",
            "devices.edgevisor.dev",
            true,
        ),
        (
            &release.gateway,
            other,
            "patch",
            "devices.edgevisor.dev/status",
            true,
        ),
        (
            &release.gateway,
            other,
            "list",
            "fleetrevisions.edgevisor.dev",
            true,
        ),
        (
            &release.gateway,
            ns,
            "get",
            "secrets/edgevisor-bootstrap-token",
            true,
        ),
        // ...and nothing else: not a device's target, not fleets, not other secrets.
        (
            &release.gateway,
            other,
            "patch",
            "devices.edgevisor.dev",
            false,
        ),
        (
            &release.gateway,
            other,
            "delete",
            "devices.edgevisor.dev",
            false,
        ),
        (
            &release.gateway,
            other,
            "patch",
            "fleets.edgevisor.dev",
            false,
        ),
        (
            &release.gateway,
            other,
            "patch",
            "fleets.edgevisor.dev/status",
            false,
        ),
        (
            &release.gateway,
            other,
            "create",
            "fleetrevisions.edgevisor.dev",
            false,
        ),
        (&release.gateway, ns, "get", "secrets/unrelated", false),
        (&release.gateway, ns, "patch", "secrets/unrelated", false),
        (&release.gateway, ns, "list", "secrets", false),
        (
            &release.gateway,
            ns,
            "patch",
            "secrets/edgevisor-bootstrap-token",
            true,
        ),
        (
            &release.gateway,
            other,
            "get",
            "secrets/edgevisor-bootstrap-token",
            false,
        ),
        // The heard-from summaries: the gateway writes its own in the release namespace, and
        // reads none; the controller reads them (it reads the ConfigMaps Fleet templates name
        // anywhere) and writes none.
        (&release.gateway, ns, "create", "configmaps", true),
        (&release.gateway, ns, "patch", "configmaps", true),
        (&release.gateway, ns, "list", "configmaps", false),
        (&release.gateway, other, "create", "configmaps", false),
        (&release.controller, ns, "watch", "configmaps", true),
        (&release.controller, ns, "patch", "configmaps", false),
        (&release.controller, other, "create", "configmaps", false),
        (
            &release.gateway,
            ns,
            "update",
            "leases.coordination.k8s.io",
            false,
        ),
        (
            &release.gateway,
            "",
            "delete",
            "customresourcedefinitions.apiextensions.k8s.io",
            false,
        ),
    ];
    let mut wrong = Vec::new();
    for (who, namespace, verb, resource, allowed) in checks {
        let sa = if *who == release.controller.as_path() {
            "controller"
        } else {
            "gateway"
        };
        if can_i(env, who, namespace, verb, resource) != *allowed {
            wrong.push(format!(
                "{sa} {} {verb} {resource} in {namespace:?}",
                if *allowed { "cannot" } else { "can" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "RBAC is not what it must be:\n{}",
        wrong.join("\n")
    );

    // A real write under the controller's identity, as it will do it: server-side apply of a
    // Device's target with its field manager. And the refused one, for real, not just can-i.
    env.kubectl(["apply", "-n", other, "-f", "examples/devices.yaml"])
        .run()
        .expect_ok("devices");
    env.kubectl_as(
        &release.controller,
        [
            "patch",
            "device",
            "kiosk-001",
            "-n",
            other,
            "--type=merge",
            "-p",
            r#"{"spec":{"revision":"kiosks-0123456789"}}"#,
        ],
    )
    .run()
    .expect_ok("the controller sets a target");
    let err = env
        .kubectl_as(
            &release.controller,
            [
                "patch",
                "device",
                "kiosk-001",
                "-n",
                other,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"currentRevision":"x"}}"#,
            ],
        )
        .run()
        .expect_err("the controller writing device status");
    assert!(err.contains("forbidden"), "{err}");

    // Uninstall: the chart's objects go, the CRDs and the users' objects stay.
    env.helm(["uninstall", &release.name, "--namespace", ns])
        .run()
        .expect_ok("helm uninstall");
    for crd in [
        "fleets.edgevisor.dev",
        "fleetrevisions.edgevisor.dev",
        "devices.edgevisor.dev",
    ] {
        env.kubectl(["get", "crd", crd])
            .run()
            .expect_ok("a CRD after uninstall");
    }
    env.kubectl(["get", "device", "kiosk-001", "-n", other])
        .run()
        .expect_ok("a Device after uninstall");
    let left = env
        .kubectl([
            "get",
            "deployments,serviceaccounts,roles,rolebindings",
            "-n",
            ns,
            "-o",
            "name",
        ])
        .run()
        .expect_ok("listing what is left");
    assert!(!left.contains(&release.name), "uninstall left:\n{left}");
}

#[test]
fn both_deployments_pass_flags_the_binary_knows() {
    let env = Env::get();
    let docs = env.helm_template([
        "ev",
        CHART,
        "--set",
        "controller.registrySecrets={regcred}",
        "--set",
        "controller.insecureRegistries={10.0.0.5:5000}",
        "--set",
        "gateway.bootstrapTokenSecrets={token-a,token-b}",
        "--set-json",
        r#"gateway.deviceRegistries={"registry.internal:5000":"https://registry.example.com"}"#,
    ]);
    let binary = edgevisor_e2e::controller::binary(env);
    for (name, expected) in [
        ("ev-edgevisor-controller", "--registry-secret=regcred"),
        ("ev-edgevisor-gateway", "--bootstrap-token-secret=token-b"),
        (
            "ev-edgevisor-gateway",
            "--device-registry=registry.internal:5000=https://registry.example.com",
        ),
    ] {
        let deployment = docs
            .iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the Deployment {name}"));
        let args: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        assert!(args.contains(&expected.to_string()), "{name}: {args:?}");
        // clap refuses an unknown flag before it reaches --help.
        let run = env
            .command_in_repo(
                &binary.to_string_lossy(),
                args.iter().map(String::as_str).chain(["--help"]),
            )
            .run();
        assert!(
            run.ok(),
            "the binary refuses {name}'s args {args:?}: {}",
            run.stderr
        );
    }
}
