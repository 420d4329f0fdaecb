//! Helpers for the end-to-end tests: the environment `e2e/env up` brings up (a real etcd,
//! kube-apiserver and registry), the `kubectl` and `helm` it built, and a kube client for it.
//!
//! Tests never bring the environment up themselves (that is `make test`'s first step), but each
//! fails at once with what to run when it is not there.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

pub mod controller;
pub mod dashboard;
pub mod devices;
pub mod gateway;
pub mod gateway_role;
pub mod images;
pub mod kstatus;
pub mod measure;
pub mod netns;
pub mod plugin;
pub mod pods;
pub mod process;
pub mod release;
pub mod story;
pub mod tls;
pub mod token_registry;

/// The running test environment.
pub struct Env {
    /// The repository's root.
    pub repo: PathBuf,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// `PATH` with the built kubectl and helm first.
    path: String,
    /// `host:port` of the OCI registry.
    pub registry: String,
    /// Base URL of the environment's Prometheus (it runs with the node).
    pub prometheus: Option<String>,
}

static ENV: OnceLock<Env> = OnceLock::new();
static CRDS: OnceLock<()> = OnceLock::new();

impl Env {
    /// The environment, with the CRDs installed, or a panic that says how to start it.
    pub fn get() -> &'static Env {
        let env = ENV.get_or_init(|| match Self::load() {
            Ok(env) => env,
            Err(e) => {
                panic!("the e2e environment is not up ({e:#}); run `e2e/env up` (or `make test`)")
            }
        });
        env.ensure_crds();
        env
    }

    /// The environment, with the CRDs installed, or an error that says how to start it (for
    /// programs, which report rather than panic).
    pub fn try_get() -> anyhow::Result<&'static Env> {
        if ENV.get().is_none() {
            let env = Self::load().context("the e2e environment is not up; run `e2e/env up`")?;
            // Another thread may have won the race; either value is the same environment.
            let _ = ENV.set(env);
        }
        let env = ENV.get().context("the e2e environment")?;
        env.ensure_crds();
        Ok(env)
    }

    fn load() -> anyhow::Result<Env> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("e2e crate has no parent directory")?
            .to_path_buf();
        let out = Command::new(repo.join("e2e/env"))
            .arg("env")
            .output()
            .context("running e2e/env env")?;
        if !out.status.success() {
            bail!(
                "e2e/env env failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let vars: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .with_context(|| format!("e2e/env env did not set {k}"))
        };
        let kubeconfig = PathBuf::from(get("KUBECONFIG")?);
        if !kubeconfig.exists() {
            bail!("{} does not exist", kubeconfig.display());
        }
        let path = get("PATH")?.replace("$PATH", &std::env::var("PATH").unwrap_or_default());
        let env = Env {
            repo,
            kubeconfig,
            path,
            registry: get("EDGEVISOR_REGISTRY")?,
            prometheus: vars.get("EDGEVISOR_PROMETHEUS").cloned(),
        };
        let version = env.kubectl(["get", "--raw", "/readyz"]).run();
        if !version.ok() {
            bail!("the apiserver does not answer: {}", version.stderr);
        }
        Ok(env)
    }

    /// `kubectl` as the admin.
    pub fn kubectl<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.command("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig.to_string_lossy())
            .args(args)
    }

    /// `kubectl <args>` as the admin (by `KUBECONFIG`, which kubectl passes on to plugins), with
    /// `extra_path` ahead of the tools on the PATH (where kubectl finds plugins).
    pub fn kubectl_with_path<I, S>(&self, extra_path: &Path, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.command("kubectl")
            .env("KUBECONFIG", self.kubeconfig.to_string_lossy())
            .env("PATH", format!("{}:{}", extra_path.display(), self.path))
            .args(args)
    }

    /// `kubectl` with another kubeconfig (a ServiceAccount's).
    pub fn kubectl_as<I, S>(&self, kubeconfig: &Path, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.command("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig.to_string_lossy())
            .args(args)
    }

    /// `helm` as the admin.
    pub fn helm<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.command("helm")
            .arg("--kubeconfig")
            .arg(self.kubeconfig.to_string_lossy())
            .args(args)
    }

    /// `helm template <args>`, its documents parsed (the empty ones dropped).
    pub fn helm_template<I, S>(&self, args: I) -> Vec<serde_json::Value>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.command("helm")
            .arg("template")
            .args(args)
            .run()
            .expect_ok("helm template")
            .split("\n---")
            .filter_map(|doc| serde_norway::from_str::<serde_json::Value>(doc).ok())
            .filter(|v| v.is_object())
            .collect()
    }

    /// A program of the repository (`e2e/env`, …), run from the repository's root.
    pub fn command_in_repo<I, S>(&self, program: &str, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.command(&self.repo.join(program).to_string_lossy())
            .args(args)
    }

    /// A program the environment built (`promtool`, `kubectl`, …), found on its `PATH`.
    pub fn tool<I, S>(&self, program: &str, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.command(program).args(args)
    }

    fn command(&self, program: &str) -> Cmd {
        let mut command = Command::new(program);
        command.env("PATH", &self.path).current_dir(&self.repo);
        Cmd {
            command,
            stdin: None,
        }
    }

    /// A kube client with admin rights, for setting up what a test needs.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Installs the chart's CRDs (once per test binary) and waits until they are served.
    pub fn ensure_crds(&self) {
        CRDS.get_or_init(|| {
            self.kubectl([
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=edgevisor-e2e",
                "-f",
                "charts/edgevisor/crds",
            ])
            .run()
            .expect_ok("installing the CRDs");
            self.kubectl(["wait", "--for=condition=Established", "--timeout=60s"])
                .args([
                    "crd/fleets.edgevisor.dev",
                    "crd/fleetrevisions.edgevisor.dev",
                    "crd/devices.edgevisor.dev",
                ])
                .run()
                .expect_ok("waiting for the CRDs");
        });
    }

    /// Creates a namespace of its own for one test: `<prefix>-<pid>-<n>`. Namespaces are not
    /// deleted (what a failed test leaves is kept to look at); `e2e/env down` wipes them all.
    pub fn namespace(&self, prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.kubectl(["create", "namespace", &name])
            .run()
            .expect_ok("creating a namespace");
        name
    }
}

/// A command to run, with its output captured.
pub struct Cmd {
    command: Command,
    stdin: Option<String>,
}

impl Cmd {
    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<str>) -> Self {
        self.command.arg(arg.as_ref());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for a in args {
            self.command.arg(a.as_ref());
        }
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: impl AsRef<str>) -> Self {
        self.command.env(key, value.as_ref());
        self
    }

    /// Feeds `input` to the command's standard input.
    pub fn stdin(mut self, input: impl Into<String>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// Runs the command to its end.
    pub fn run(mut self) -> Run {
        let described = format!("{:?}", self.command);
        self.command.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.command.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = match self.command.spawn() {
            Ok(child) => child,
            Err(e) => panic!("could not start {described}: {e}"),
        };
        if let (Some(input), Some(mut pipe)) = (self.stdin.take(), child.stdin.take())
            && let Err(e) = pipe.write_all(input.as_bytes())
        {
            panic!("writing to {described}: {e}");
        }
        let output: Output = match child.wait_with_output() {
            Ok(output) => output,
            Err(e) => panic!("waiting for {described}: {e}"),
        };
        Run {
            command: described,
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// What a command did.
#[derive(Debug)]
pub struct Run {
    /// The command line, for messages.
    pub command: String,
    /// Its exit code.
    pub code: Option<i32>,
    /// What it printed.
    pub stdout: String,
    /// What it printed on standard error.
    pub stderr: String,
}

impl Run {
    /// Whether it exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with everything it printed unless it exited 0; returns its standard output.
    pub fn expect_ok(self, what: &str) -> String {
        assert!(
            self.ok(),
            "{what}: {} exited {:?}\nstdout:\n{}\nstderr:\n{}",
            self.command,
            self.code,
            self.stdout,
            self.stderr
        );
        self.stdout
    }

    /// Its standard output if it exited 0, else an error with everything it printed.
    pub fn checked(self, what: &str) -> anyhow::Result<String> {
        if !self.ok() {
            bail!(
                "{what}: {} exited {:?}\nstdout:\n{}\nstderr:\n{}",
                self.command,
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self.stdout)
    }

    /// Panics unless it failed; returns its standard error.
    pub fn expect_err(self, what: &str) -> String {
        assert!(
            !self.ok(),
            "{what}: {} succeeded but should have failed\nstdout:\n{}",
            self.command,
            self.stdout
        );
        self.stderr
    }
}
