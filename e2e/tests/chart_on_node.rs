//! The chart on a real node, as a user installs it: the image `make image` built, `helm install
//! --wait` until both Deployments are Available, pods that run non-root on a read-only root
//! filesystem, the controller leading from inside its pod, the gateway's Service serving the
//! device API, `helm test`, the image resolving names, `helm upgrade` and `helm uninstall`
//! (CRDs kept).
use std::net::IpAddr;
use std::time::{Duration, Instant};

use edgevisor_e2e::Env;
use edgevisor_e2e::pods::PodRelease;

/// The gateway Service's address: free in the Service range, named by its certificate.
const GATEWAY_IP: &str = "10.96.213.10";

/// Host processes whose first argument is the image's binary with `role` (`controller` or
/// `gateway`): (pid, uid, root mount options).
fn pod_processes(role: &str) -> Vec<(u32, String, String)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.first() != Some(&&b"/edgevisor"[..]) || args.get(1) != Some(&role.as_bytes()) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        // mountinfo: id parent major:minor root mountpoint options ...
        let root_options = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(4) == Some(&"/"))
            .and_then(|f| f.get(5).map(|s| s.to_string()))
            .unwrap_or_default();
        found.push((pid, uid, root_options));
    }
    found
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + timeout;
    loop {
        if check().is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_chart_runs_on_a_node_with_the_image_make_image_builds() {
    let env = Env::get();
    let name = format!("evnode{}", std::process::id());
    let ns = format!("{name}-system");
    let watch = format!("{name}-fleets");
    let work = tempfile::tempdir().expect("tempdir");
    let gateway_ip: IpAddr = GATEWAY_IP.parse().expect("an IP");
    let release = PodRelease::install(env, &name, &ns, &watch, gateway_ip, work.path(), &[])
        .unwrap_or_else(|e| panic!("{e:#}"));

    // Both Deployments Available, as `helm install --wait` promised.
    for component in ["controller", "gateway"] {
        let available = env
            .kubectl([
                "get",
                "deployment",
                &format!("{name}-edgevisor-{component}"),
                "-n",
                &ns,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
            ])
            .run()
            .expect_ok("reading the Deployment");
        assert_eq!(available, "True", "{component} Deployment not Available");
    }

    // The pods' processes: non-root (the image's user 65532), read-only root filesystem.
    for role in ["controller", "gateway"] {
        let processes = pod_processes(role);
        assert!(
            !processes.is_empty(),
            "no /edgevisor {role} process on the node"
        );
        for (pid, uid, root) in processes {
            assert_eq!(uid, "65532", "{role} (pid {pid}) runs as uid {uid}");
            assert!(
                root.split(',').any(|o| o == "ro"),
                "{role} (pid {pid}): root filesystem mounted {root}"
            );
        }
    }

    // The controller took its Lease from inside the pod (in-cluster ServiceAccount config,
    // through the `kubernetes` Service).
    let controller_pod = release.pod(env, "controller").expect("controller pod");
    wait_until(
        "the controller pod to hold the Lease",
        Duration::from_secs(60),
        || {
            let holder = release.lease_holder(env).unwrap_or_default();
            (holder == controller_pod).then_some(holder)
        },
    );

    // The gateway's Service serves the device API over TLS with the certificate it was given:
    // from the host, through kube-proxy's rules, an unauthenticated target request is refused.
    let ca = release.tls.ca_cert.to_string_lossy().into_owned();
    let url = format!("https://{GATEWAY_IP}/v1/devices/{watch}/nobody/target");
    // kube-proxy programs a new Service's rules a moment after its endpoints appear.
    let mut last = String::new();
    wait_until(
        "the gateway Service to answer 401",
        Duration::from_secs(30),
        || {
            let curl = std::process::Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "5",
                ])
                .args(["--cacert", &ca, &url])
                .output()
                .expect("running curl");
            last = String::from_utf8_lossy(&curl.stdout).trim().to_string();
            (last == "401").then(|| last.clone())
        },
    );

    // `helm test`: the probe pod (the same image) reaches both Services.
    env.helm(["test", &name, "-n", &ns, "--timeout", "2m", "--logs"])
        .run()
        .expect_ok("helm test");

    // The image resolves names (glibc's resolver reads the pod's /etc/hosts and resolv.conf):
    // a pod of it reaches the gateway by a name only its /etc/hosts knows.
    let image = edgevisor_e2e::pods::image(env).expect("the image");
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "resolve-by-name", "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "hostAliases": [{"ip": GATEWAY_IP, "hostnames": ["gateway.edgevisor.test"]}],
            "securityContext": {"runAsNonRoot": true},
            "containers": [{
                "name": "probe", "image": image,
                "args": ["probe", "--insecure-skip-tls-verify",
                    format!("401=https://gateway.edgevisor.test/v1/devices/{watch}/x/target")],
                "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}}
            }]
        }
    });
    env.kubectl(["apply", "-f", "-"])
        .stdin(pod.to_string())
        .run()
        .expect_ok("a pod of the image");
    wait_until(
        "the name-resolving probe to finish",
        Duration::from_secs(90),
        || {
            let phase = env
                .kubectl([
                    "get",
                    "pod",
                    "resolve-by-name",
                    "-n",
                    &ns,
                    "-o",
                    "jsonpath={.status.phase}",
                ])
                .run()
                .stdout;
            match phase.trim() {
                "Succeeded" => Some(phase),
                "Failed" => {
                    let logs = env.kubectl(["logs", "resolve-by-name", "-n", &ns]).run();
                    panic!("the probe failed: {}{}", logs.stdout, logs.stderr)
                }
                _ => None,
            }
        },
    );
    let logs = env
        .kubectl(["logs", "resolve-by-name", "-n", &ns])
        .run()
        .expect_ok("the probe's output");
    assert!(
        logs.contains(&format!("({GATEWAY_IP}): 401")),
        "the probe did not resolve the name to the gateway: {logs}"
    );

    // `helm upgrade` rolls the pods and waits for them again.
    env.helm([
        "upgrade",
        &name,
        "charts/edgevisor",
        "-n",
        &ns,
        "--reuse-values",
        "--force-conflicts",
        "--wait",
        "--timeout",
        "3m",
        "--set",
        "controller.logLevel=debug",
    ])
    .run()
    .expect_ok("helm upgrade");
    let args = env
        .kubectl([
            "get",
            "deployment",
            &format!("{name}-edgevisor-controller"),
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[0].value}",
        ])
        .run()
        .expect_ok("the upgraded Deployment");
    assert_eq!(args, "debug");

    // `helm uninstall`: the workloads go, the CRDs stay.
    env.helm(["uninstall", &name, "-n", &ns, "--wait", "--timeout", "2m"])
        .run()
        .expect_ok("helm uninstall");
    let left = env
        .kubectl(["get", "deployments", "-n", &ns, "-o", "name"])
        .run()
        .expect_ok("listing Deployments");
    assert!(left.trim().is_empty(), "left after uninstall: {left}");
    env.kubectl([
        "get",
        "crd",
        "fleets.edgevisor.dev",
        "devices.edgevisor.dev",
    ])
    .run()
    .expect_ok("the CRDs after uninstall");
    let _ = env
        .kubectl(["delete", "namespace", &ns, &watch, "--wait=false"])
        .run();
}
