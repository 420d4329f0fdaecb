//! `socket-attacker`: run inside a container by the trust-boundary test. It tries to get
//! manager rights on the runtime's socket through every path a root container has, and
//! prints how each request was answered:
//!
//! - `plain`: connect and send a write;
//! - `exited-child`: a child makes the connection and exits before the parent writes on
//!   it, so the peer's pid names no process any more;
//! - `pid-reused`: a child makes the connection and then becomes another program (exec)
//!   under the same pid before the parent writes on it.
//!
//! Each write is one of `PUT /user-meta/…`, `PUT /device-meta/…`, `PUT /steps/…`; the
//! last line is `attempts=N forbidden=F other=O`, and every other answer is printed.
//! Usage: `socket-attacker SOCKET ROUNDS`.
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketType, connect, socket};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        // The child's part: connect the socket it was given as stdin, then exit or exec.
        Some("--connect") => {
            let (Some(path), Some(then)) = (args.get(2), args.get(3)) else {
                return ExitCode::FAILURE;
            };
            let Ok(addr) = SocketAddrUnix::new(path.as_str()) else {
                return ExitCode::FAILURE;
            };
            if connect(std::io::stdin(), &addr).is_err() {
                return ExitCode::FAILURE;
            }
            if then == "exec" {
                let e = Command::new("/bin/sleep").arg("1").exec();
                eprintln!("exec: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Some(sock) => {
            let rounds: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(100);
            attack(sock, rounds)
        }
        None => {
            eprintln!("usage: socket-attacker SOCKET ROUNDS");
            ExitCode::FAILURE
        }
    }
}

fn attack(sock: &str, rounds: usize) -> ExitCode {
    let (mut attempts, mut forbidden, mut other) = (0, 0, 0);
    for i in 0..rounds {
        for variant in ["plain", "exited-child", "pid-reused"] {
            let request = request(variant, i);
            let answer = match connection(sock, variant) {
                Ok(mut stream) => send(&mut stream, &request),
                Err(e) => Err(e),
            };
            attempts += 1;
            match answer {
                Ok(status) if status.contains(" 403 ") => forbidden += 1,
                Ok(status) => {
                    other += 1;
                    println!("{variant} {i}: {status}");
                }
                Err(e) => {
                    other += 1;
                    println!("{variant} {i}: {e}");
                }
            }
        }
    }
    println!("attempts={attempts} forbidden={forbidden} other={other}");
    ExitCode::SUCCESS
}

fn connection(sock: &str, variant: &str) -> std::io::Result<UnixStream> {
    if variant == "plain" {
        return UnixStream::connect(sock);
    }
    let fd: OwnedFd = socket(AddressFamily::UNIX, SocketType::STREAM, None)?;
    let exe = std::env::current_exe()?;
    let then = if variant == "pid-reused" {
        "exec"
    } else {
        "exit"
    };
    let mut child = Command::new(exe)
        .args(["--connect", sock, then])
        .stdin(Stdio::from(fd.try_clone()?))
        .spawn()?;
    if then == "exit" {
        let st = child.wait()?;
        if !st.success() {
            return Err(std::io::Error::other("the child could not connect"));
        }
    } else {
        // The child connects, then execs: wait (bounded) until the socket has its peer
        // and the pid runs the other program.
        let comm = format!("/proc/{}/comm", child.id());
        let t = std::time::Instant::now();
        while rustix::net::getpeername(&fd).is_err()
            || std::fs::read_to_string(&comm).map_or(true, |c| c.trim() != "sleep")
        {
            if t.elapsed() > std::time::Duration::from_secs(5) {
                return Err(std::io::Error::other("the child did not connect and exec"));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    let stream = UnixStream::from(fd);
    if then == "exec" {
        // Reaped later: the write happens while the pid runs another program.
        std::thread::spawn(move || child.wait());
    }
    Ok(stream)
}

fn request(variant: &str, i: usize) -> String {
    let (path, body) = match i % 3 {
        0 => (format!("/user-meta/pwned-{variant}-{i}"), "x".to_owned()),
        1 => (format!("/device-meta/pwned-{variant}-{i}"), "x".to_owned()),
        _ => (
            format!("/steps/pwned-{variant}-{i}"),
            r##"{"#spec":"edgevisor-state@1"}"##.to_owned(),
        ),
    };
    format!(
        "PUT {path} HTTP/1.1\r\nHost: runtime\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The status line of the answer.
fn send(stream: &mut UnixStream, request: &str) -> std::io::Result<String> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or("(no answer)").to_owned())
}
