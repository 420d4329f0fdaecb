//! The test network of real devices: a bridge and network namespaces that reach each other and
//! the host, made again over leftovers, gone after `down`; and a forwarder that lets the
//! namespaces reach a loopback-only server of the host. Needs root (skips without it); no
//! apiserver.
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::Command;

use edgevisor_e2e::netns::{Lan, TcpForward};

fn root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping: network namespaces need root");
    false
}

fn run(mut command: Command) -> (bool, String) {
    let out = command.output().expect("running a command");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn netns_names() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .output()
        .expect("ip link show")
        .status
        .success()
}

#[test]
fn namespaces_reach_each_other_and_the_host_and_leave_nothing_behind() {
    if !root() {
        return;
    }
    // A Lan that was never cleaned up, as after a killed test…
    let stale = Lan::create("evnett", 31, 2).expect("a first lan");
    std::mem::forget(stale);
    assert!(link_exists("evnettbr"));
    // …is replaced by the next one of the same prefix.
    let mut lan = Lan::create("evnett", 31, 3).expect("a lan over leftovers");
    assert_eq!(lan.host().to_string(), "10.213.31.1");
    assert_eq!(lan.netns(2), "evnett-2");
    assert_eq!(lan.address(2).to_string(), "10.213.31.12");

    for (from, to) in [(0, lan.address(1)), (2, lan.address(0)), (1, lan.host())] {
        let mut ping = lan.command(from, "busybox");
        ping.args(["ping", "-c", "1", "-W", "3", &to.to_string()]);
        let (ok, out) = run(ping);
        assert!(ok, "{} cannot ping {to}: {out}", lan.netns(from));
    }
    // Each namespace has its own loopback, up.
    let mut lo = lan.command(0, "ip");
    lo.args(["-br", "addr", "show", "lo"]);
    let (ok, out) = run(lo);
    assert!(
        ok && out.contains("127.0.0.1") && out.contains("UNKNOWN"),
        "{out}"
    );
    // And one route out: the host.
    let mut route = lan.command(1, "ip");
    route.args(["route", "show", "default"]);
    let (_, out) = run(route);
    assert!(out.contains("via 10.213.31.1 dev eth0"), "{out}");

    lan.down().expect("down");
    assert!(!link_exists("evnettbr"));
    assert!(!link_exists("evnetth0"));
    assert!(
        !netns_names().lines().any(|l| l.starts_with("evnett-")),
        "{}",
        netns_names()
    );
    // A second subnet user is refused while the first is up.
    let _first = Lan::create("evneta", 31, 1).expect("a lan");
    let err = Lan::create("evnetb", 31, 1)
        .err()
        .expect("the subnet is taken");
    assert!(format!("{err:#}").contains("taken"), "{err:#}");
}

/// An HTTP server on loopback answering every request with `body`.
fn serve(body: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a server");
    let addr = listener.local_addr().expect("its address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            });
        }
    });
    addr
}

#[test]
fn a_forward_lets_namespaces_reach_a_loopback_server_until_dropped() {
    if !root() {
        return;
    }
    let lan = Lan::create("evnetf", 32, 1).expect("a lan");
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let server = serve(body.clone());
    let forward =
        TcpForward::start(SocketAddr::new(IpAddr::V4(lan.host()), 0), server).expect("forward");
    assert_eq!(forward.addr().ip(), IpAddr::V4(lan.host()));

    let curl = |url: String| {
        let mut curl = lan.command(0, "curl");
        curl.args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &url,
        ]);
        run(curl)
    };
    // Loopback in the namespace is the namespace's own: the server is not there.
    let (ok, _) = curl(format!("http://127.0.0.1:{}/", server.port()));
    assert!(!ok, "the namespace reached the host's loopback");
    // Through the forward it is.
    for _ in 0..3 {
        let (ok, out) = curl(format!("http://{}/", forward.addr()));
        assert!(ok, "through the forward: {out}");
        assert_eq!(out.trim(), body.len().to_string());
    }
    let sent = forward.bytes_to(IpAddr::V4(lan.address(0)));
    assert!(
        sent >= 3 * body.len() as u64 && sent < 3 * body.len() as u64 + 3 * 200,
        "counted {sent} bytes to the namespace"
    );
    assert_eq!(forward.connections(), 3);

    let addr = forward.addr();
    drop(forward);
    let (ok, _) = curl(format!("http://{addr}/"));
    assert!(!ok, "the forward still answers after drop");
}
