//! A local network of "hosts" for tests that need devices on machines of their own: a Linux
//! bridge in the root network namespace and one network namespace per host, each wired to the
//! bridge with a veth pair.
//!
//! ```text
//!  root namespace                        namespace <prefix>-<i>
//!  ┌──────────────────────────────┐      ┌──────────────────────────────┐
//!  │ <prefix>br  10.213.<k>.1/24  │      │ eth0  10.213.<k>.<10+i>/24   │
//!  │   └─ <prefix>h<i> ◀──veth────┼──────┼─▶ default via 10.213.<k>.1   │
//!  │ gateway, TcpForward to the   │      │ lo up                        │
//!  │ loopback-only registry       │      │ runtime, agent               │
//!  └──────────────────────────────┘      └──────────────────────────────┘
//! ```
//!
//! The hosts reach the root namespace at [`Lan::host`] (a local address there, so nothing is
//! routed or forwarded) and each other over the bridge; they cannot reach loopback services of
//! the root namespace, which is what [`TcpForward`] is for.
//!
//! `k` and the prefix keep users apart; taken so far: 21 (`device_story`), 31 and 32
//! (`tests/netns.rs`), 41 (`tests/device_package.rs`, prefix `evpkg`); 50 and up are the
//! demo's (`demo-story`, prefix `evdemo`, 50 by default). Creating a `Lan` deletes the
//! leftovers of an earlier one with the same prefix (a test killed before its `Drop`), and
//! refuses a subnet another interface already uses.
//!
//! Commands run in a namespace with `nsenter --net`, not `ip netns exec`: the latter also
//! remounts `/sys` in a new mount namespace, which hides `/sys/fs/cgroup`, and runc needs it.
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};

/// Longest prefix: `<prefix>h<i>` must fit the kernel's 15 characters with three digits.
pub const MAX_PREFIX: usize = 10;
/// Most namespaces in one `Lan` (addresses `.10` to `.209`).
pub const MAX_HOSTS: usize = 200;

/// A bridge and its namespaces; removed on drop.
pub struct Lan {
    prefix: String,
    subnet: u8,
    bridge: String,
    hosts: Vec<Host>,
    up: bool,
}

/// One namespace of a [`Lan`].
#[derive(Clone, Debug)]
pub struct Host {
    /// The network namespace's name (`ip netns`): `<prefix>-<i>`.
    pub netns: String,
    /// Its address on the bridge.
    pub address: Ipv4Addr,
    /// The root namespace's end of its veth pair.
    pub host_veth: String,
}

// === impl Lan ===

impl Lan {
    /// Creates the bridge with `10.213.<subnet>.1/24` and `count` namespaces, after deleting
    /// what an earlier `Lan` of the same prefix left behind.
    pub fn create(prefix: &str, subnet: u8, count: usize) -> anyhow::Result<Lan> {
        check_prefix(prefix)?;
        if count > MAX_HOSTS {
            bail!("at most {MAX_HOSTS} namespaces, not {count}");
        }
        if !(1..=254).contains(&subnet) {
            bail!("subnet {subnet} must be 1..=254");
        }
        remove_leftovers(prefix)?;
        let network = format!("10.213.{subnet}.");
        let addresses = ip(&["-o", "-4", "addr", "show"])?;
        if let Some(line) = addresses
            .lines()
            .find(|l| l.contains(&format!("inet {network}")))
        {
            bail!(
                "10.213.{subnet}.0/24 is taken by another interface ({}); pick another subnet",
                line.split_whitespace().nth(1).unwrap_or("?")
            );
        }
        let mut lan = Lan {
            prefix: prefix.to_string(),
            subnet,
            bridge: format!("{prefix}br"),
            hosts: Vec::new(),
            up: true,
        };
        // From here on, Drop cleans up whatever was made if a step fails.
        let host = lan.host().to_string();
        ip(&["link", "add", &lan.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{host}/24"), "dev", &lan.bridge])?;
        ip(&["link", "set", &lan.bridge, "up"])?;
        for i in 0..count {
            let member = Host {
                netns: format!("{prefix}-{i}"),
                address: Ipv4Addr::new(10, 213, subnet, 10 + i as u8),
                host_veth: format!("{prefix}h{i}"),
            };
            ip(&["netns", "add", &member.netns])?;
            lan.hosts.push(member.clone());
            // The peer is created in the namespace directly, so it may be called eth0 there.
            ip(&[
                "link",
                "add",
                &member.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &member.netns,
            ])?;
            ip(&["link", "set", &member.host_veth, "master", &lan.bridge])?;
            ip(&["link", "set", &member.host_veth, "up"])?;
            let n = member.netns.as_str();
            let address = format!("{}/24", member.address);
            ip(&["-n", n, "link", "set", "lo", "up"])?;
            ip(&["-n", n, "addr", "add", &address, "dev", "eth0"])?;
            ip(&["-n", n, "link", "set", "eth0", "up"])?;
            ip(&["-n", n, "route", "add", "default", "via", &host])?;
        }
        Ok(lan)
    }

    /// The bridge's address in the root namespace: where the namespaces reach the host.
    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 1)
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The prefix every name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespaces.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// How many namespaces.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The name of namespace `i`.
    pub fn netns(&self, i: usize) -> &str {
        &self.hosts[i].netns
    }

    /// The address of namespace `i`.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].address
    }

    /// `program` to be run in namespace `i` (see [`in_netns`]).
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        in_netns(&self.hosts[i].netns, program)
    }

    /// Removes the namespaces and the bridge. Processes still running in a namespace keep it
    /// (and their end of the veth) alive until they exit; their link to the bridge is gone.
    pub fn down(&mut self) -> anyhow::Result<()> {
        if !self.up {
            return Ok(());
        }
        self.up = false;
        let mut errors = Vec::new();
        for member in &self.hosts {
            if let Err(e) = ip_absent_ok(&["link", "del", &member.host_veth]) {
                errors.push(format!("{e:#}"));
            }
            if let Err(e) = ip_absent_ok(&["netns", "del", &member.netns]) {
                errors.push(format!("{e:#}"));
            }
        }
        if let Err(e) = ip_absent_ok(&["link", "del", &self.bridge]) {
            errors.push(format!("{e:#}"));
        }
        if !errors.is_empty() {
            bail!("removing {}: {}", self.prefix, errors.join("; "));
        }
        Ok(())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("netns: {e:#}");
        }
    }
}

/// `program` to be run in network namespace `netns` (`nsenter --net=/run/netns/<netns>`):
/// only the network namespace changes; mounts, cgroups and the rest stay the caller's. With no
/// fork, the child's pid is the program's. An empty `netns` is the host's own (a device
/// reaching a gateway on the host's loopback).
pub fn in_netns(netns: &str, program: impl AsRef<OsStr>) -> Command {
    if netns.is_empty() {
        return Command::new(program);
    }
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{netns}"))
        .arg("--")
        .arg(program);
    command
}

/// Deletes the namespaces, veths and bridge named with `prefix` (as [`Lan::create`] names
/// them), whatever made them.
pub fn remove_leftovers(prefix: &str) -> anyhow::Result<()> {
    check_prefix(prefix)?;
    let numbered = |name: &str, sep: &str| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(sep))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    for line in ip(&["netns", "list"])?.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if numbered(name, "-") {
            ip_absent_ok(&["netns", "del", name])?;
        }
    }
    let bridge = format!("{prefix}br");
    for line in ip(&["-o", "link", "show"])?.lines() {
        // `7: evsh0@if2: <BROADCAST,...`
        let name = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .trim_end_matches(':');
        let name = name.split('@').next().unwrap_or_default();
        if numbered(name, "h") {
            ip_absent_ok(&["link", "del", name])?;
        }
    }
    ip_absent_ok(&["link", "del", &bridge])?;
    Ok(())
}

fn check_prefix(prefix: &str) -> anyhow::Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        bail!(
            "network prefix {prefix:?} must be 1..={MAX_PREFIX} lowercase letters and digits, starting with a letter"
        );
    }
    Ok(())
}

/// Runs `ip` with `args`; its standard output, or an error with what it printed.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`ip`] for deletions: what is already gone is fine.
fn ip_absent_ok(args: &[&str]) -> anyhow::Result<()> {
    match ip(args) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = format!("{e:#}");
            if text.contains("Cannot find device")
                || text.contains("No such file")
                || text.contains("does not exist")
            {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

// === impl TcpForward ===

/// Most connections a [`TcpForward`] carries at once; more are closed as they arrive.
pub const MAX_CONNECTIONS: usize = 64;

/// A TCP forwarder: accepts on one address (say, the bridge's) and relays each connection to a
/// target (say, a registry that listens on loopback only). Plain threads, so it works with or
/// without a tokio runtime; stops, closing every connection, on drop.
pub struct TcpForward {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    next: AtomicU64,
    /// Open connections (client side, target side), to close them on stop.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    /// Bytes relayed from the target to each client address.
    to_client: Mutex<HashMap<IpAddr, u64>>,
    /// Connections accepted in all.
    accepted: AtomicU64,
}

impl TcpForward {
    /// Listens on `listen` (port 0: a free one) and relays to `target`.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> anyhow::Result<TcpForward> {
        let listener =
            TcpListener::bind(listen).with_context(|| format!("forward: binding {listen}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("forward-{addr}"))
                .spawn(move || accept_loop(listener, target, shared))?
        };
        Ok(TcpForward {
            addr,
            target,
            shared,
            accept: Some(accept),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it relays to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Bytes relayed from the target to clients at `client` so far.
    pub fn bytes_to(&self, client: IpAddr) -> u64 {
        let to_client = self
            .shared
            .to_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        to_client.get(&client).copied().unwrap_or(0)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes every open connection.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let open = std::mem::take(&mut *self.shared.open.lock().unwrap_or_else(|e| e.into_inner()));
        for (client, server) in open.values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for TcpForward {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, peer)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                let full =
                    shared.open.lock().unwrap_or_else(|e| e.into_inner()).len() >= MAX_CONNECTIONS;
                if full {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let shared = shared.clone();
                let _ = std::thread::Builder::new()
                    .name(format!("forward-{peer}"))
                    .spawn(move || relay(client, peer, target, shared));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Relays one connection both ways until both sides are done.
fn relay(client: TcpStream, peer: SocketAddr, target: SocketAddr, shared: Arc<Shared>) {
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nonblocking(false);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let id = shared.next.fetch_add(1, Ordering::Relaxed);
    let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    ) else {
        return;
    };
    shared
        .open
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, (c3, s3));
    // A stop between the check in the accept loop and the insert above must still close it.
    if shared.stop.load(Ordering::Relaxed) {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    }
    let upstream = std::thread::Builder::new()
        .name(format!("forward-up-{peer}"))
        .spawn(move || {
            let _ = pump(c2, s2, |_| {});
        });
    let counter = shared.clone();
    let _ = pump(server, client, |n| {
        *counter
            .to_client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer.ip())
            .or_default() += n as u64;
    });
    // The target is done: close both sides, so a client that keeps its end open does not keep
    // the upstream thread reading.
    let ends = shared
        .open
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    if let Some((client, server)) = ends {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    }
    if let Ok(upstream) = upstream {
        let _ = upstream.join();
    }
}

/// Copies `from` to `to` until end of stream, then closes `to` for writing.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    mut counted: impl FnMut(usize),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let result = loop {
        match from.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = to.write_all(&buf[..n]) {
                    break Err(e);
                }
                counted(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let _ = to.shutdown(Shutdown::Write);
    result
}
