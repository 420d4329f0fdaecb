//! Invalid manifests are refused by the apiserver, each at the field at fault with a message a
//! user can act on, and nothing is created.
use edgevisor_e2e::Env;
use serde_json::{Value, json};

fn fleet(patch: impl FnOnce(&mut Value)) -> Value {
    let mut fleet = json!({
        "apiVersion": "edgevisor.dev/v1alpha1",
        "kind": "Fleet",
        "metadata": {"name": "bad"},
        "spec": {
            "selector": {"matchLabels": {"role": "kiosk"}},
            "template": {"containers": [{"name": "app", "image": "registry.example.com/app:1.0"}]}
        }
    });
    patch(&mut fleet["spec"]);
    fleet
}

fn device(spec: Value) -> Value {
    json!({"apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device", "metadata": {"name": "bad"}, "spec": spec})
}

struct Case {
    what: &'static str,
    manifest: Value,
    field: &'static str,
    message: &'static str,
}

fn cases() -> Vec<Case> {
    let step = |devices: Value| json!({"devices": devices});
    vec![
        Case {
            what: "two containers with one name",
            manifest: fleet(|s| {
                s["template"]["containers"] = json!([
                    {"name": "app", "image": "r.example.com/a:1"},
                    {"name": "app", "image": "r.example.com/b:1"}
                ])
            }),
            field: "spec.template.containers",
            message: "container names must be unique within the template",
        },
        Case {
            what: "a container name that is no DNS-1123 label",
            manifest: fleet(|s| s["template"]["containers"][0]["name"] = json!("Web_1")),
            field: "spec.template.containers[0].name",
            message: "container name must be a DNS-1123 label",
        },
        Case {
            what: "an image with neither tag nor digest",
            manifest: fleet(|s| {
                s["template"]["containers"][0]["image"] = json!("registry.example.com/app")
            }),
            field: "spec.template.containers[0].image",
            message: "image must be a reference with a tag or a digest",
        },
        Case {
            what: "an image with a malformed digest",
            manifest: fleet(|s| {
                s["template"]["containers"][0]["image"] =
                    json!("registry.example.com/app@sha256:abc")
            }),
            field: "spec.template.containers[0].image",
            message: "image must be a reference with a tag or a digest",
        },
        Case {
            what: "maxUnavailable of zero",
            manifest: fleet(|s| s["strategy"] = json!({"maxUnavailable": 0})),
            field: "spec.strategy.maxUnavailable",
            message: "must be a positive number of devices (e.g. 2) or a percentage from 1% to 100%",
        },
        Case {
            what: "maxUnavailable over 100%",
            manifest: fleet(|s| s["strategy"] = json!({"maxUnavailable": "150%"})),
            field: "spec.strategy.maxUnavailable",
            message: "must be a positive number of devices (e.g. 2) or a percentage from 1% to 100%",
        },
        Case {
            what: "failureThreshold of 0%",
            manifest: fleet(|s| s["strategy"] = json!({"failureThreshold": "0%"})),
            field: "spec.strategy.failureThreshold",
            message: "must be a positive number of devices (e.g. 2) or a percentage from 1% to 100%",
        },
        Case {
            what: "a step of zero devices",
            manifest: fleet(|s| s["strategy"] = json!({"steps": [step(json!(0))]})),
            field: "spec.strategy.steps[0].devices",
            message: "must be a positive number of devices",
        },
        Case {
            what: "steps that shrink",
            manifest: fleet(|s| s["strategy"] = json!({"steps": [step(json!(3)), step(json!(2))]})),
            field: "spec.strategy.steps",
            message: "steps must grow strictly",
        },
        Case {
            what: "two steps of the same size",
            manifest: fleet(|s| {
                s["strategy"] = json!({"steps": [step(json!("10%")), step(json!("10%"))]})
            }),
            field: "spec.strategy.steps",
            message: "steps must grow strictly",
        },
        Case {
            what: "a count step after a percentage step",
            manifest: fleet(|s| {
                s["strategy"] = json!({"steps": [step(json!("10%")), step(json!(50))]})
            }),
            field: "spec.strategy.steps",
            message: "steps must grow strictly: counts first",
        },
        Case {
            what: "a pause with both a duration and untilResumed",
            manifest: fleet(
                |s| s["strategy"] = json!({"steps": [{"devices": 1, "pause": {"durationSeconds": 60, "untilResumed": true}}]}),
            ),
            field: "spec.strategy.steps[0].pause",
            message: "a pause either lasts durationSeconds or waits until resumed",
        },
        Case {
            what: "a pause with neither",
            manifest: fleet(|s| s["strategy"] = json!({"steps": [{"devices": 1, "pause": {}}]})),
            field: "spec.strategy.steps[0].pause",
            message: "a pause either lasts durationSeconds or waits until resumed",
        },
        Case {
            what: "a health check of two kinds",
            manifest: fleet(|s| {
                s["template"]["containers"][0]["healthCheck"] =
                    json!({"tcp": {"port": 80}, "signal": true})
            }),
            field: "spec.template.containers[0].healthCheck",
            message: "a health check takes exactly one of exec, http, tcp or signal",
        },
        Case {
            what: "an http health check on an isolated network",
            manifest: fleet(|s| {
                s["template"]["containers"][0]["healthCheck"] = json!({"http": {"port": 80}})
            }),
            field: "spec.template.containers[0]",
            message: "http and tcp health checks reach the container on the device's loopback",
        },
        Case {
            what: "a file path that climbs out",
            manifest: fleet(|s| {
                s["template"]["files"] = json!([{"path": "../etc/passwd", "content": "x"}])
            }),
            field: "spec.template.files[0].path",
            message: "path must be relative, without '.', '..' or empty components",
        },
        Case {
            what: "a file with two sources",
            manifest: fleet(
                |s| s["template"]["files"] = json!([{"path": "a.conf", "content": "x", "configMapKeyRef": {"name": "c", "key": "k"}}]),
            ),
            field: "spec.template.files[0]",
            message: "a file takes exactly one of content, configMapKeyRef or secretKeyRef",
        },
        Case {
            what: "a mount of a volume and the files at once",
            manifest: fleet(|s| {
                s["template"]["containers"][0]["mounts"] =
                    json!([{"volume": "data", "files": true, "mountPath": "/d"}])
            }),
            field: "spec.template.containers[0].mounts[0]",
            message: "a mount takes either a volume or files, not both and not neither",
        },
        Case {
            what: "a relative mount path",
            manifest: fleet(|s| {
                s["template"]["containers"][0]["mounts"] =
                    json!([{"volume": "data", "mountPath": "data/../x"}])
            }),
            field: "spec.template.containers[0].mounts[0].mountPath",
            message: "mountPath must be an absolute path without '..'",
        },
        Case {
            what: "an unknown architecture",
            manifest: fleet(|s| {
                s["template"]["containers"][0]["imageOverrides"] =
                    json!([{"architecture": "mips", "image": "r.example.com/a:1"}])
            }),
            field: "spec.template.containers[0].imageOverrides[0].architecture",
            message: "Unsupported value: \"mips\"",
        },
        Case {
            what: "a rollbackTo that names no revision",
            manifest: fleet(|s| s["rollbackTo"] = json!("previous")),
            field: "spec.rollbackTo",
            message: "must name a FleetRevision as the controller names them: <fleet>-<10 hex digits>",
        },
        Case {
            what: "a device pinned to a tag instead of a revision",
            manifest: device(json!({"pinnedRevision": "latest"})),
            field: "spec.pinnedRevision",
            message: "must name a FleetRevision as the controller names them: <fleet>-<10 hex digits>",
        },
        Case {
            what: "more containers than a device state holds",
            manifest: fleet(|s| {
                s["template"]["containers"] = (0..17)
                    .map(|i| json!({"name": format!("c{i}"), "image": "r.example.com/a:1"}))
                    .collect::<Value>()
            }),
            field: "spec.template.containers",
            message: "must have at most 16 items",
        },
    ]
}

#[test]
fn invalid_manifests_are_refused_at_the_field_at_fault() {
    let env = Env::get();
    env.ensure_crds();
    let ns = env.namespace("invalid");
    let cases = cases();
    assert!(cases.len() >= 10);
    let mut failures = Vec::new();
    for case in &cases {
        for server_side in [false, true] {
            let mut apply = env
                .kubectl(["apply", "-n", &ns, "-f", "-"])
                .stdin(case.manifest.to_string());
            if server_side {
                apply = apply.args(["--server-side", "--field-manager=e2e-user"]);
            }
            let run = apply.run();
            if run.ok() {
                failures.push(format!("{}: accepted ({})", case.what, run.stdout.trim()));
                continue;
            }
            // One line of the error names the field and carries the message.
            let matched = run
                .stderr
                .lines()
                .any(|l| l.contains(&format!("{}:", case.field)) && l.contains(case.message));
            if !matched {
                failures.push(format!(
                    "{}: expected `{}` with {:?}, got:\n{}",
                    case.what, case.field, case.message, run.stderr
                ));
            }
        }
        let kind = case.manifest["kind"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        let left = env
            .kubectl([
                "get",
                &kind,
                "bad",
                "-n",
                &ns,
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .run();
        if !left.stdout.trim().is_empty() {
            failures.push(format!(
                "{}: a refused manifest left {}",
                case.what,
                left.stdout.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
