//! The device package as a user gets it (`make deb` builds it into target/dist first; `make
//! e2e-test` does that before running the tests): its systemd units pass `systemd-analyze
//! verify` against the package's own files; dpkg installs it into a fresh root (maintainer
//! scripts and conffiles included) without touching this machine; the binaries its units name,
//! started the way the units say with the configuration file filled in as the README tells,
//! enroll a device through the real gateway: the Device shows up in `kubectl get devices`. The
//! tarball holds the same files, and SHA256SUMS matches both.
//!
//! There is no systemd running here, so the tests play its part: `ExecStart=` and
//! `EnvironmentFile=` are read from the installed units, and the agent runs as an unprivileged
//! user in the group `edgevisor`, as `DynamicUser=` and `SupplementaryGroups=` would run it.
//! What the tests change, and why, is only where the package's paths are: the processes run on
//! this machine, not chrooted into the package's root (which holds no libc, no runc).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use edgevisor_e2e::Env;
use edgevisor_e2e::gateway::{self, BootstrapToken, Gateway};
use edgevisor_e2e::netns::{Lan, in_netns};
use edgevisor_e2e::process::{free_port_on, log_tail, spawn_logged};

/// The environment systemd gives services (its default `PATH`, nothing else of ours).
const SYSTEMD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The uid (and gid) the agent runs as: one of systemd's `DynamicUser=` range, as its unit asks.
const AGENT_UID: u32 = 61_873;
/// The device LAN: `10.213.41.0/24` (see `edgevisor_e2e::netns` for the subnets taken).
const LAN_PREFIX: &str = "evpkg";
const LAN_SUBNET: u8 = 41;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn dpkg_architecture() -> String {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .expect("running dpkg --print-architecture");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// target/dist/<name>, or a panic that says how to build it.
fn dist_file(name: &str) -> PathBuf {
    let path = repo().join("target/dist").join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the device packages first with `make deb` (`make e2e-test` does)",
        path.display()
    );
    path
}

fn deb() -> PathBuf {
    dist_file(&format!(
        "edgevisor-device_{}-1_{}.deb",
        env!("CARGO_PKG_VERSION"),
        dpkg_architecture()
    ))
}

fn tarball() -> PathBuf {
    dist_file(&format!(
        "edgevisor-device-{}-{}.tar.gz",
        env!("CARGO_PKG_VERSION"),
        dpkg_architecture()
    ))
}

/// Runs a command to its end; panics with what it printed unless it succeeded.
fn run(command: &mut Command, what: &str) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {command:?} exited {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The directives of `section` of a systemd unit file, in order (`Key=` may repeat).
fn directives(unit: &Path, section: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(unit).unwrap();
    let mut current = String::new();
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
        } else if current == section
            && let Some((k, v)) = line.split_once('=')
        {
            found.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    found
}

/// The one value of `key` in `section`; panics unless there is exactly one.
fn directive(unit: &Path, section: &str, key: &str) -> String {
    let values: Vec<String> = directives(unit, section)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        values.len(),
        1,
        "{}: [{section}] {key}= should be set once: {values:?}",
        unit.display()
    );
    values.into_iter().next().unwrap()
}

/// `path` (absolute, as the package names it) inside the package's root.
fn in_root(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// An environment file as systemd reads it: `KEY=VALUE` lines, `#` comments, quotes stripped.
fn read_env_file(path: &Path) -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut vars = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}: not KEY=VALUE: {line:?}", path.display()));
        let v = v.trim();
        let v = ["\"", "'"]
            .iter()
            .find_map(|q| v.strip_prefix(q).and_then(|v| v.strip_suffix(q)))
            .unwrap_or(v);
        vars.insert(k.trim().to_string(), v.to_string());
    }
    vars
}

/// Sets `key` in a configuration file's text as a user editing it would: the line documenting
/// it (`KEY=…` or `#KEY=…`) becomes `KEY=value`. Panics when the file does not mention the key.
fn set_setting(text: &str, key: &str, value: &str) -> String {
    let mut found = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let bare = line.trim_start_matches('#');
            if !found && bare.starts_with(&format!("{key}=")) {
                found = true;
                format!("{key}={value}")
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(found, "the configuration file does not document {key}");
    lines.join("\n") + "\n"
}

/// The gid of `group` in the package root's /etc/group (where the package's postinst made it).
fn root_gid(root: &Path, group: &str) -> u32 {
    let groups = std::fs::read_to_string(root.join("etc/group")).unwrap();
    groups
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == group).then(|| f[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no group {group} in the package root's /etc/group:\n{groups}"))
}

/// `ExecStart=` of an installed unit: its program inside the root, and its arguments.
fn exec_start(root: &Path, unit: &Path) -> (PathBuf, Vec<String>) {
    let line = directive(unit, "Service", "ExecStart");
    let mut words = line.split_whitespace().map(str::to_string);
    let program = words.next().unwrap();
    assert!(
        program.starts_with('/'),
        "ExecStart= should name its program by absolute path: {line}"
    );
    (in_root(root, &program), words.collect())
}

/// A process leading its own process group; the group is killed on drop.
struct Service {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Service {
    fn start(name: &'static str, command: &mut Command, log: PathBuf) -> Service {
        let child = spawn_logged(command.process_group(0), &log).unwrap();
        Service { name, child, log }
    }

    fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}):\n{}",
                self.name,
                log_tail(&self.log, 40)
            );
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

/// A copy of the package's files plus this machine's own systemd units (the targets and
/// services the package's units refer to), for `systemd-analyze verify --root`.
fn verify_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    run(
        Command::new("dpkg-deb").arg("-x").arg(deb()).arg(&root),
        "unpacking the .deb",
    );
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    run(
        Command::new("cp")
            .args(["-a", "/usr/lib/systemd/system"])
            .arg(root.join("usr/lib/systemd/")),
        "copying this machine's systemd units",
    );
    root
}

fn systemd_verify(root: &Path, units: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(
            units
                .iter()
                .map(|u| root.join("lib/systemd/system").join(u)),
        )
        .output()
        .expect("running systemd-analyze (apt-get install systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn units_pass_systemd_analyze_verify_against_the_packaged_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = verify_root(dir.path());
    let units = ["edgevisor-runtime.service", "edgevisor-agent.service"];
    // Not a word: a warning (an unknown or misplaced directive, which systemd ignores) exits 0.
    let (ok, said) = systemd_verify(&root, &units);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        if ok { "warnings" } else { "failed" }
    );

    // What the verification checks, and the user relies on: the agent comes with the runtime
    // and after it; both are installed where the units say; the agent may use the socket.
    let unit = |name: &str| root.join("lib/systemd/system").join(name);
    let agent = unit("edgevisor-agent.service");
    let runtime = unit("edgevisor-runtime.service");
    for key in ["Requires", "After"] {
        let value = directive(&agent, "Unit", key);
        assert!(
            value
                .split_whitespace()
                .any(|u| u == "edgevisor-runtime.service"),
            "the agent's {key}= should name the runtime: {value}"
        );
    }
    assert_eq!(directive(&agent, "Service", "DynamicUser"), "yes");
    assert_eq!(
        directive(&agent, "Service", "SupplementaryGroups"),
        "edgevisor"
    );
    let (_, runtime_args) = exec_start(&root, &runtime);
    assert!(
        runtime_args
            .windows(2)
            .any(|w| w == ["--group", "edgevisor"]),
        "the runtime should open its socket to the group edgevisor: {runtime_args:?}"
    );

    // The check can fail: without the binary the runtime's unit names, it does.
    std::fs::remove_file(root.join("usr/bin/edgevisor-runtime")).unwrap();
    let (ok, said) = systemd_verify(&root, &units[..1]);
    assert!(
        !ok && said.contains("/usr/bin/edgevisor-runtime"),
        "systemd-analyze verify should refuse a unit whose program is missing:\n{said}"
    );
}

#[test]
fn tarball_holds_the_debs_files_and_sha256sums_match() {
    let dir = tempfile::tempdir().unwrap();
    let from_deb = dir.path().join("deb");
    let from_tar = dir.path().join("tar");
    std::fs::create_dir_all(&from_deb).unwrap();
    std::fs::create_dir_all(&from_tar).unwrap();
    run(
        Command::new("dpkg-deb").arg("-x").arg(deb()).arg(&from_deb),
        "unpacking the .deb",
    );
    run(
        Command::new("tar")
            .arg("-xzf")
            .arg(tarball())
            .arg("-C")
            .arg(&from_tar),
        "unpacking the tarball",
    );
    // Same files, same modes, same bytes (directories aside: the tarball has no entries for
    // them, so that unpacking it over a merged-/usr system's /lib symlink leaves it alone).
    let listing = |root: &Path| {
        let out = run(
            Command::new("find")
                .arg(".")
                .args(["(", "-type", "f", "-o", "-type", "l", ")"])
                .args(["-printf", "%P %m\n"])
                .current_dir(root),
            "listing files",
        );
        let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    let files = listing(&from_deb);
    assert_eq!(files, listing(&from_tar), "the tarball's files differ");
    for expected in [
        "usr/bin/edgevisor-runtime 755",
        "usr/bin/edgevisor-agent 755",
        "usr/bin/evctl 755",
        "lib/systemd/system/edgevisor-runtime.service 644",
        "lib/systemd/system/edgevisor-agent.service 644",
        "etc/edgevisor/agent.env 644",
        "etc/edgevisor/runtime.env 644",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "{expected} missing: {files:?}"
        );
    }
    for file in &files {
        let path = file.rsplit_once(' ').unwrap().0;
        assert_eq!(
            std::fs::read(from_deb.join(path)).unwrap(),
            std::fs::read(from_tar.join(path)).unwrap(),
            "{path} differs between the .deb and the tarball"
        );
    }
    let tar = Command::new("tar")
        .arg("-tvzf")
        .arg(tarball())
        .output()
        .unwrap();
    let tar = String::from_utf8_lossy(&tar.stdout);
    assert!(
        tar.lines().all(|l| l.contains(" 0/0 ")),
        "every file should be owned by root (0/0):\n{tar}"
    );

    // What a user runs after downloading: every package in SHA256SUMS, every sum right.
    let sums = std::fs::read_to_string(dist_file("SHA256SUMS")).unwrap();
    for package in [deb(), tarball()] {
        let name = package.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            sums.lines().any(|l| l.ends_with(&format!("  {name}"))),
            "SHA256SUMS does not list {name}:\n{sums}"
        );
    }
    run(
        Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(repo().join("target/dist")),
        "sha256sum --check SHA256SUMS",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deb_installs_into_a_fresh_root_and_its_services_enroll_a_device() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    assert!(
        rustix::process::geteuid().is_root(),
        "installing with dpkg and network namespaces need root"
    );
    let env = Env::get();
    let client = env.client().await.unwrap();
    let ns = env.namespace("package");
    let deb = deb();
    let dir = tempfile::tempdir().unwrap();
    // The agent's unprivileged user must be able to walk to its files, as it can in / .
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // --- install: a fresh root with an empty dpkg database; dpkg runs the maintainer scripts
    // outside it (there is no shell inside) with DPKG_ROOT set, which they must honour. The
    // root has no libc6 or runc packages to satisfy Depends.
    let root = dir.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
        std::fs::write(root.join(f), "").unwrap();
    }
    let host_groups = std::fs::read_to_string("/etc/group").unwrap();
    run(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["--force-script-chrootless", "--force-depends", "-i"])
            .arg(&deb),
        "dpkg -i into a fresh root",
    );
    let query = |field: &str| {
        run(
            Command::new("dpkg-query")
                .arg(format!("--root={}", root.display()))
                .args(["-W", &format!("-f=${{{field}}}"), "edgevisor-device"]),
            "dpkg-query",
        )
    };
    assert_eq!(query("Status"), "install ok installed");
    let depends = query("Depends");
    assert!(
        depends.split(',').any(|d| d.trim() == "runc") && depends.contains("libc6"),
        "the package should depend on runc and libc6: {depends}"
    );
    let conffiles = query("Conffiles");
    for conffile in ["/etc/edgevisor/agent.env", "/etc/edgevisor/runtime.env"] {
        assert!(
            conffiles.contains(conffile),
            "{conffile} should be a conffile (an upgrade keeps the user's edits): {conffiles}"
        );
    }
    let gid = root_gid(&root, "edgevisor");
    assert_eq!(
        std::fs::read_to_string("/etc/group").unwrap(),
        host_groups,
        "installing into another root changed this machine's /etc/group"
    );

    // --- the cluster side: a gateway on the device LAN, the chart's bootstrap-token Secret.
    let lan = Lan::create(LAN_PREFIX, LAN_SUBNET, 1).unwrap();
    let tls =
        edgevisor_e2e::tls::make_server_cert(&dir.path().join("tls"), &[IpAddr::V4(lan.host())])
            .unwrap();
    let token = BootstrapToken::new(&ns).unwrap();
    gateway::apply_bootstrap_token(&client, &token)
        .await
        .unwrap();
    let listen = SocketAddr::new(
        IpAddr::V4(lan.host()),
        free_port_on(IpAddr::V4(lan.host())).unwrap(),
    );
    let mut options = gateway::Options::new(&format!("package-{ns}"), listen, &tls);
    options.namespace = Some(ns.clone());
    let gateway = Gateway::start(env, &options).unwrap();

    // --- configure the device as the README says: the CA, the token (readable by the group
    // edgevisor only), the revision-signing key, and agent.env filled in.
    let etc = root.join("etc/edgevisor");
    std::fs::copy(&tls.ca_cert, etc.join("ca.crt")).unwrap();
    let token_file = etc.join("bootstrap-token");
    std::fs::write(&token_file, &token.token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&token_file, Some(0), Some(gid)).unwrap();
    std::fs::write(etc.join("revision.pub"), revision_public_key()).unwrap();
    let name = "edge-packaged";
    let config = etc.join("agent.env");
    let mut text = std::fs::read_to_string(&config).unwrap();
    for (key, value) in [
        ("EDGEVISOR_AGENT_GATEWAY", gateway.url.clone()),
        ("EDGEVISOR_AGENT_NAME", name.to_string()),
        // The paths are the package root's, where the files are on this machine.
        ("EDGEVISOR_AGENT_CA_CERT", path_str(&etc.join("ca.crt"))),
        (
            "EDGEVISOR_AGENT_BOOTSTRAP_TOKEN_FILE",
            path_str(&token_file),
        ),
        (
            "EDGEVISOR_AGENT_REVISION_KEY",
            path_str(&etc.join("revision.pub")),
        ),
        ("EDGEVISOR_AGENT_INFO", "model=e2e-package".to_string()),
    ] {
        text = set_setting(&text, key, &value);
    }
    std::fs::write(&config, text).unwrap();

    // --- start what the units start. systemd's share, done here: StateDirectory= (created,
    // owned by the service's user), the environment file, DynamicUser= and
    // SupplementaryGroups= for the agent. Only the state paths move into the package root.
    let units = root.join("lib/systemd/system");
    let runtime_unit = units.join("edgevisor-runtime.service");
    let agent_unit = units.join("edgevisor-agent.service");
    let storage = root.join("var/lib/edgevisor");
    let socket = storage.join("control.sock");
    let state_dir = root.join("var/lib/edgevisor-agent");
    assert_eq!(
        directive(&runtime_unit, "Service", "StateDirectory"),
        "edgevisor"
    );
    assert_eq!(
        directive(&agent_unit, "Service", "StateDirectory"),
        "edgevisor-agent"
    );
    std::fs::create_dir_all(&state_dir).unwrap();
    std::os::unix::fs::chown(&state_dir, Some(AGENT_UID), Some(AGENT_UID)).unwrap();
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    let environment = |unit: &Path, relocated: &[(&str, &Path)]| {
        let file = directive(unit, "Service", "EnvironmentFile");
        let (optional, file) = match file.strip_prefix('-') {
            Some(f) => (true, f.to_string()),
            None => (false, file),
        };
        let file = in_root(&root, &file);
        let mut vars = if optional && !file.exists() {
            BTreeMap::new()
        } else {
            read_env_file(&file)
        };
        vars.insert("PATH".into(), SYSTEMD_PATH.into());
        for (k, v) in relocated {
            vars.insert(k.to_string(), path_str(v));
        }
        vars
    };

    let (program, mut args) = exec_start(&root, &runtime_unit);
    // The group by number: the name is in the package root's /etc/group, not this machine's.
    for i in 1..args.len() {
        if args[i - 1] == "--group" {
            args[i] = root_gid(&root, &args[i]).to_string();
        }
    }
    let mut command = in_netns(lan.netns(0), &program);
    command.args(&args).env_clear().envs(environment(
        &runtime_unit,
        &[("EDGEVISOR_STORAGE", &storage)],
    ));
    let mut runtime = Service::start("the runtime", &mut command, dir.path().join("runtime.log"));
    let started = Instant::now();
    while !socket.exists() {
        runtime.check_running();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the runtime's socket did not appear:\n{}",
            log_tail(&runtime.log, 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let socket_meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        (socket_meta.mode() & 0o777, socket_meta.gid()),
        (0o660, gid),
        "the control socket should be 0660, group edgevisor"
    );

    let (program, args) = exec_start(&root, &agent_unit);
    let mut command = in_netns(lan.netns(0), "setpriv");
    command
        .args(as_agent_user(Some(gid)))
        .arg(&program)
        .args(&args)
        .env_clear()
        .envs(environment(
            &agent_unit,
            &[
                ("EDGEVISOR_AGENT_STATE_DIR", &state_dir),
                ("EDGEVISOR_SOCKET", &socket),
            ],
        ));
    let mut agent = Service::start("the agent", &mut command, dir.path().join("agent.log"));

    // --- what the user checks: the Device is there, with what the device said about itself.
    let started = Instant::now();
    let row = loop {
        agent.check_running();
        runtime.check_running();
        let listed = env
            .kubectl(["get", "devices", "-n", &ns])
            .run()
            .expect_ok("kubectl get devices");
        let row = listed
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(str::to_string);
        if let Some(row) = row.filter(|r| r.split_whitespace().any(|c| c == "amd64")) {
            break row;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the Device {name} did not appear in `kubectl get devices -n {ns}`:\n{listed}\n\
             agent:\n{}\ngateway:\n{}",
            log_tail(&agent.log, 40),
            gateway.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("kubectl get devices -n {ns}: {row}");
    let model = env
        .kubectl([
            "get",
            "device",
            name,
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.info.model}",
        ])
        .run()
        .expect_ok("kubectl get device");
    assert_eq!(
        model, "e2e-package",
        "EDGEVISOR_AGENT_INFO should reach the Device"
    );
    let credential = state_dir.join("credential.json");
    let meta =
        std::fs::metadata(&credential).unwrap_or_else(|e| panic!("{}: {e}", credential.display()));
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (AGENT_UID, 0o600),
        "the credential should belong to the agent's user, and to no one else"
    );

    // The group edgevisor is what lets the agent's user drive the runtime: the packaged evctl
    // works as that user in the group, and is refused without it.
    let evctl = in_root(&root, "/usr/bin/evctl");
    let evctl_as = |groups: Option<u32>| {
        Command::new("setpriv")
            .args(as_agent_user(groups))
            .arg(&evctl)
            .arg("--socket")
            .arg(&socket)
            .arg("steps")
            .output()
            .unwrap()
    };
    let with = evctl_as(Some(gid));
    assert!(
        with.status.success(),
        "evctl steps in the group edgevisor failed: {}",
        String::from_utf8_lossy(&with.stderr)
    );
    let without = evctl_as(None);
    assert!(
        !without.status.success(),
        "evctl steps outside the group edgevisor should be refused"
    );
    drop(agent);
    drop(runtime);
}

/// `setpriv` arguments that run a program as the agent's unit would: its own uid and gid, the
/// supplementary group given (`SupplementaryGroups=`), no capabilities, no new privileges.
fn as_agent_user(group: Option<u32>) -> Vec<String> {
    let mut args = vec![
        format!("--reuid={AGENT_UID}"),
        format!("--regid={AGENT_UID}"),
    ];
    args.push(match group {
        Some(gid) => format!("--groups={gid}"),
        None => "--clear-groups".to_string(),
    });
    args.extend(
        [
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ]
        .map(String::from),
    );
    args
}

/// A fresh Ed25519 public key in the controller's `ed25519.pub` format (base64, one a line):
/// enrollment needs the agent to start, which needs a key; no target is signed here.
fn revision_public_key() -> String {
    use base64::Engine;
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref()) + "\n"
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
