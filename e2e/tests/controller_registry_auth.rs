//! Rendering from a registry that requires credentials: without them the Fleet says so in its
//! status; with a docker-config Secret named by the chart's `controller.registrySecrets` (the
//! only Secret its RBAC lets it read), the controller resolves the image.
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use edgevisor_crds::{Fleet, FleetRevision};
use edgevisor_e2e::Env;
use edgevisor_e2e::controller::{Controller, Options, RELEASE_NAMESPACE, controller_kubeconfig};
use edgevisor_e2e::images::{Registry, tiny_image};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

/// A CNCF distribution registry that wants `user`/`password` (htpasswd, bcrypt).
struct PrivateRegistry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn private_registry(user: &str, password: &str) -> PrivateRegistry {
    let dir = tempfile::tempdir().expect("tempdir");
    let htpasswd = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("htpasswd (apache2-utils)");
    assert!(htpasswd.status.success());
    std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).expect("htpasswd file");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let config = format!(
        "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {root}}}}}\n\
         http: {{addr: 127.0.0.1:{port}}}\nauth: {{htpasswd: {{realm: e2e, path: {auth}}}}}\n",
        root = dir.path().join("data").display(),
        auth = dir.path().join("htpasswd").display(),
    );
    std::fs::write(dir.path().join("config.yml"), config).expect("config");
    let child = Command::new("/usr/bin/docker-registry")
        .args(["serve", &dir.path().join("config.yml").to_string_lossy()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting docker-registry");
    let host = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&host).is_err() {
        assert!(
            Instant::now() < deadline,
            "the private registry did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    PrivateRegistry {
        child,
        host,
        _dir: dir,
    }
}

async fn condition(
    fleets: &Api<Fleet>,
    what: &str,
    check: impl Fn(&Fleet) -> bool,
    controller: &Controller,
) -> Fleet {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(f) = fleets.get("private").await
            && check(&f)
        {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            controller.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_in_a_private_registry_resolve_with_a_docker_config_secret() {
    let env = Env::get();
    let ns = env.namespace("auth");
    let client = env.client().await.expect("client");
    let private = private_registry("robot", "s3cret-pass");
    let registry = Registry::new(&private.host).with_basic_auth("robot", "s3cret-pass");
    registry
        .push_index(
            "team/app",
            "v1",
            &[tiny_image("amd64", None, "private").unwrap()],
        )
        .await
        .expect("push with credentials");
    assert!(
        Registry::new(&private.host)
            .push_index("team/app", "v2", &[tiny_image("amd64", None, "x").unwrap()])
            .await
            .is_err(),
        "the registry must refuse anonymous pushes"
    );

    // The docker-config Secret, and the chart told to let the controller read it (and only it).
    let secret = format!("regcred-{ns}");
    let auth = base64::engine::general_purpose::STANDARD.encode("robot:s3cret-pass");
    let config = json!({"auths": {private.host.clone(): {"auth": auth}}}).to_string();
    let controller_kubeconfig = controller_kubeconfig(env);
    env.kubectl([
        "create",
        "secret",
        "docker-registry",
        &secret,
        "-n",
        RELEASE_NAMESPACE,
        "--from-file=.dockerconfigjson=/dev/stdin",
    ])
    .stdin(config)
    .run()
    .expect_ok("creating the docker-config Secret");
    env.helm([
        "upgrade",
        "edgevisor",
        "charts/edgevisor",
        "-n",
        RELEASE_NAMESPACE,
        "--reuse-values",
        "--force-conflicts",
        "--set",
        &format!("controller.registrySecrets={{{secret}}}"),
    ])
    .run()
    .expect_ok("naming the Secret in the chart");
    let can = env
        .kubectl_as(
            controller_kubeconfig,
            [
                "auth",
                "can-i",
                "get",
                &format!("secrets/{secret}"),
                "-n",
                RELEASE_NAMESPACE,
            ],
        )
        .run();
    assert_eq!(
        can.stdout.trim(),
        "yes",
        "the controller may read the named Secret"
    );

    let fleets: Api<Fleet> = Api::namespaced(client.clone(), &ns);
    let fleet = json!({
        "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet", "metadata": {"name": "private"},
        "spec": {"selector": {"matchLabels": {"role": "private"}},
                 "template": {"containers": [{"name": "app", "image": format!("{}/team/app:v1", private.host)}]}}
    });
    fleets
        .patch(
            "private",
            &PatchParams::apply("e2e-user"),
            &Patch::Apply(fleet),
        )
        .await
        .expect("apply");

    // Without credentials: a Stalled condition that says what to do.
    let insecure = ["--insecure-registry", private.host.as_str()];
    let mut without = Controller::start(
        env,
        &Options {
            namespace: &ns,
            identity: "auth",
            lease_seconds: 15,
            args: &insecure,
        },
    )
    .expect("controller");
    let stalled = condition(
        &fleets,
        "a RenderFailed condition",
        |f| {
            f.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Stalled" && c.status == "True")
            })
        },
        &without,
    )
    .await;
    let message = stalled
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap()
        .message;
    assert!(
        message.contains("wants credentials") && message.contains("--registry-secret"),
        "{message}"
    );
    without.stop().expect("stop");

    // With the Secret: the image resolves and the revision is rendered.
    let args = [
        "--insecure-registry",
        private.host.as_str(),
        "--registry-secret",
        secret.as_str(),
    ];
    let with = Controller::start(
        env,
        &Options {
            namespace: &ns,
            identity: "auth",
            lease_seconds: 15,
            args: &args,
        },
    )
    .expect("controller");
    let rendered = condition(
        &fleets,
        "a rendered revision",
        |f| {
            f.status
                .as_ref()
                .and_then(|s| s.update_revision.as_ref())
                .is_some()
        },
        &with,
    )
    .await;
    let revisions: Api<FleetRevision> = Api::namespaced(client, &ns);
    let revision = revisions
        .get(rendered.status.unwrap().update_revision.as_deref().unwrap())
        .await
        .expect("revision");
    assert_eq!(revision.spec.architectures_label(), "amd64");
    assert!(
        revision.spec.architectures[0].images[0]
            .manifest_digest
            .starts_with("sha256:")
    );
}
