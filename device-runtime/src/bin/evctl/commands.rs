//! What each `evctl` command does: a request to the control socket, its answer printed
//! for people or, with `--json`, as the wire type.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use device_runtime::cli::{EvctlArgs, EvctlCommand};
use device_runtime::client::Client;
use device_runtime::control::{ContainerAction, ContainerActionBody, Signal, Signalled};
use device_runtime::lifecycle::{Progress, Status};
use device_runtime::state::State;
use hyper::Method;
use serde::Serialize;

fn print_json(v: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

pub async fn run(args: EvctlArgs) -> Result<()> {
    if let EvctlCommand::Schema = args.command {
        let schema = device_runtime::state::State::json_schema();
        println!("{}", serde_json::to_string_pretty(&schema)?);
        return Ok(());
    }
    let c = Client::new(&args.socket);
    let json = args.json;
    match args.command {
        EvctlCommand::Steps => {
            let v = c.steps().await?;
            if json {
                print_json(&v);
            } else {
                println!("{:<24} {:<12} FLAGS", "REVISION", "STATUS");
                for st in &v {
                    let flags: Vec<&str> = [
                        ("committed", st.committed),
                        ("trying", st.trying),
                        ("factory", st.factory),
                        ("running", st.running),
                    ]
                    .into_iter()
                    .filter_map(|(f, on)| on.then_some(f))
                    .collect();
                    println!(
                        "{:<24} {:<12} {}",
                        st.rev,
                        or_dash(st.status),
                        flags.join(",")
                    );
                }
            }
        }
        EvctlCommand::Show { rev } => {
            let r = c.call(Method::GET, &format!("/steps/{rev}"), "").await?;
            println!("{}", String::from_utf8_lossy(&r.body));
        }
        EvctlCommand::Install {
            state,
            objects,
            rev,
            no_run,
            wait,
        } => {
            let bytes = std::fs::read(&state).with_context(|| format!("{}", state.display()))?;
            let parsed = State::parse(&bytes)?;
            let rev = rev.unwrap_or_else(|| {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&bytes))[..12].to_owned()
            });
            if let Some(dir) = objects {
                upload_objects(&c, &parsed, &dir, json).await?;
            }
            let p = c.put_step(&rev, bytes).await?;
            if json {
                print_json(&p);
            } else {
                println!("installed {rev}: {}", p.status);
            }
            if !no_run {
                c.run(&rev).await?;
                if !json {
                    println!("running {rev}");
                }
                if wait {
                    return watch(&c, &rev, json).await;
                }
            }
        }
        EvctlCommand::Run { rev, wait } => {
            let v = c.run(&rev).await?;
            if json && !wait {
                print_json(&v);
            } else if !json {
                println!("running {rev}");
            }
            if wait {
                return watch(&c, &rev, json).await;
            }
        }
        EvctlCommand::Progress { rev, watch: w } => {
            if w {
                return watch(&c, &rev, json).await;
            }
            let p = c.progress(&rev).await?;
            if json {
                print_json(&p);
            } else {
                print_progress(&rev, &p);
            }
        }
        EvctlCommand::Objects => {
            let v = c.objects().await?;
            if json {
                print_json(&v);
            } else {
                for o in &v {
                    println!("{}  {}", o.sha256, o.size);
                }
            }
        }
        EvctlCommand::GetObject { digest, output } => {
            let hex = digest.trim_start_matches("sha256:");
            let r = c.call(Method::GET, &format!("/objects/{hex}"), "").await?;
            if output.as_os_str() == "-" {
                use std::io::Write;
                std::io::stdout().write_all(&r.body)?;
            } else {
                std::fs::write(&output, &r.body)
                    .with_context(|| format!("{}", output.display()))?;
            }
        }
        EvctlCommand::PutObject { file } => {
            let v = c.put_object_file(&file).await?;
            if json {
                print_json(&v);
            } else {
                println!("{} {}", v.sha256, v.status.as_deref().unwrap_or("stored"));
            }
        }
        EvctlCommand::Containers => {
            let v = c.containers().await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{:<16} {:<12} {:<9} {:<8} {:<8} GOAL",
                    "NAME", "REVISION", "STATE", "PID", "RESTARTS"
                );
                for x in &v {
                    println!(
                        "{:<16} {:<12} {:<9} {:<8} {:<8} {}",
                        x.name,
                        x.revision,
                        x.state,
                        or_dash(x.pid),
                        x.restarts,
                        x.goal
                    );
                }
            }
        }
        EvctlCommand::Container { action, name } => {
            let action: ContainerAction = serde_json::from_value(serde_json::json!(action))
                .with_context(|| format!("{action:?}: use start, stop or restart"))?;
            let body = serde_json::to_vec(&ContainerActionBody { action })?;
            let r = c
                .call(Method::PUT, &format!("/containers/{name}"), body)
                .await?;
            if json {
                print_json(&r.decode::<device_runtime::control::ContainerActionDone>()?);
            } else {
                let action = serde_json::to_value(action)?;
                let action = action.as_str().unwrap_or_default();
                println!("{action} {name}: ok");
            }
        }
        EvctlCommand::Logs { name, lines } => {
            let r = c
                .call(
                    Method::GET,
                    &format!("/containers/{name}/logs?lines={lines}"),
                    "",
                )
                .await?;
            print!("{}", String::from_utf8_lossy(&r.body));
        }
        EvctlCommand::Gc => {
            let v = c.gc().await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "removed {} revisions {:?}, {} objects ({} bytes), {} unpacked images",
                    v.revisions.len(),
                    v.revisions,
                    v.objects,
                    v.bytes,
                    v.rootfs
                );
            }
        }
        EvctlCommand::Reboot => {
            let v = c.reboot().await?;
            if json {
                print_json(&v);
            } else {
                println!("rebooting");
            }
        }
        EvctlCommand::Signal { container } => {
            let body = serde_json::to_vec(&Signal {
                container,
                kind: Some("ready".into()),
            })?;
            let r: Signalled = c.call(Method::POST, "/signal", body).await?.decode()?;
            if json {
                print_json(&r);
            } else {
                println!("ready: {}", r.container);
            }
        }
        EvctlCommand::Meta {
            kind,
            key,
            value,
            delete,
        } => {
            let base = format!("/{kind}-meta");
            match (key, value, delete) {
                (None, _, _) => {
                    let v: std::collections::BTreeMap<String, String> = c.get(&base).await?;
                    if json {
                        print_json(&v);
                    } else {
                        for (k, val) in &v {
                            println!("{k}={val}");
                        }
                    }
                }
                (Some(k), _, true) => {
                    c.call(Method::DELETE, &format!("{base}/{k}"), "").await?;
                }
                (Some(k), Some(val), false) => {
                    c.call(Method::PUT, &format!("{base}/{k}"), val).await?;
                }
                (Some(k), None, false) => {
                    let r = c.call(Method::GET, &format!("{base}/{k}"), "").await?;
                    println!("{}", String::from_utf8_lossy(&r.body));
                }
            }
        }
        EvctlCommand::Bench {
            path,
            requests,
            latency_seconds: Some(seconds),
            interval_ms,
        } => {
            let _ = requests;
            let (p50, p99, max) = latencies(&args.socket, &path, seconds, interval_ms).await?;
            println!("{p50:.6} {p99:.6} {max:.6}");
        }
        EvctlCommand::Bench { path, requests, .. } => {
            c.call(Method::GET, &path, "").await?;
            let t = std::time::Instant::now();
            for _ in 0..requests {
                c.call(Method::GET, &path, "").await?;
            }
            let secs = t.elapsed().as_secs_f64();
            println!("{:.0}", requests as f64 / secs);
        }
        EvctlCommand::Schema => {}
        EvctlCommand::Buildinfo => {
            let v = c.buildinfo().await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "runtime {} (commit {}), {}, {}",
                    v.version, v.git_commit, v.state_spec, v.oci_runtime
                );
            }
        }
    }
    Ok(())
}

/// Latencies of `GET path`, one request every `interval_ms` for `seconds`, each from a new
/// client (as a tool polling the runtime would): (p50, p99, max) in seconds. Requests are
/// sent on schedule whether or not the previous one answered, so a stalled socket shows
/// as the latency of every request it held.
async fn latencies(
    socket: &Path,
    path: &str,
    seconds: f64,
    interval_ms: u64,
) -> Result<(f64, f64, f64)> {
    let mut tasks = Vec::new();
    let start = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    while start.elapsed().as_secs_f64() < seconds {
        tick.tick().await;
        let (socket, path) = (socket.to_owned(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let t = std::time::Instant::now();
            Client::new(&socket)
                .call(Method::GET, &path, "")
                .await
                .map(|_| t.elapsed().as_secs_f64())
        }));
    }
    let mut all = Vec::with_capacity(tasks.len());
    for t in tasks {
        all.push(t.await??);
    }
    if all.is_empty() {
        bail!("no request was sent");
    }
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99), at(1.0)))
}

fn print_progress(rev: &str, p: &Progress) {
    println!("{rev}: {} {}% {}", p.status, p.progress, p.status_msg);
    for m in &p.missing {
        println!("  missing {m}");
    }
    for l in &p.logs {
        println!("  | {l}");
    }
}

async fn watch(c: &Client, rev: &str, json: bool) -> Result<()> {
    let mut last = String::new();
    loop {
        let p = c.progress(rev).await?;
        let line = format!("{} {}", p.status, p.status_msg);
        if line != last {
            if json {
                println!("{}", serde_json::to_string(&p).unwrap_or_default());
            } else {
                print_progress(rev, &p);
            }
            last = line;
        }
        match p.status {
            Status::Done => return Ok(()),
            Status::Error | Status::Wontgo => bail!("{rev} ended in {}", p.status),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Uploads every object the state names that the runtime lacks.
async fn upload_objects(c: &Client, state: &State, dir: &Path, json: bool) -> Result<()> {
    let have: std::collections::BTreeSet<String> = c
        .objects()
        .await?
        .into_iter()
        .map(|o| o.sha256.hex().to_owned())
        .collect();
    for hex in state.objects() {
        if have.contains(&hex) {
            continue;
        }
        let d = format!("sha256:{hex}");
        let candidates = [dir.join(&hex), dir.join(&d), dir.join("sha256").join(&hex)];
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            bail!("object {d} is not in {}", dir.display());
        };
        let v = c.put_object_file(path).await?;
        if !json {
            println!(
                "uploaded {d} ({})",
                v.size.map_or("exists".into(), |n| format!("{n} bytes"))
            );
        }
    }
    Ok(())
}
