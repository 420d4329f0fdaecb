//! `evctl`: the command line of the control socket. Human output by default,
//! `--json` for scripts.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use device_runtime::cli::{EvctlArgs, EvctlCommand};
use device_runtime::client::Client;
use hyper::Method;
use serde_json::Value;

fn main() -> std::process::ExitCode {
    let args = EvctlArgs::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("evctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

async fn run(args: EvctlArgs) -> Result<()> {
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
                for st in v.as_array().into_iter().flatten() {
                    let flags: Vec<&str> = ["committed", "trying", "factory", "running"]
                        .into_iter()
                        .filter(|f| st[*f].as_bool() == Some(true))
                        .collect();
                    println!(
                        "{:<24} {:<12} {}",
                        s(&st["rev"]),
                        s(&st["status"]),
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
            let parsed: Value = serde_json::from_slice(&bytes).context("state is not JSON")?;
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
                println!("installed {rev}: {}", s(&p["status"]));
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
            let v = c.get_json("/objects").await?;
            if json {
                print_json(&v);
            } else {
                for o in v.as_array().into_iter().flatten() {
                    println!("sha256:{}  {}", s(&o["sha256"]), s(&o["size"]));
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
            let (hex, v) = c.put_object_file(&file).await?;
            if json {
                print_json(&v);
            } else {
                println!("sha256:{hex} {}", v["status"].as_str().unwrap_or("stored"));
            }
        }
        EvctlCommand::Containers => {
            let v = c.get_json("/containers").await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{:<16} {:<12} {:<9} {:<8} {:<8} GOAL",
                    "NAME", "REVISION", "STATE", "PID", "RESTARTS"
                );
                for x in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<16} {:<12} {:<9} {:<8} {:<8} {}",
                        s(&x["name"]),
                        s(&x["revision"]),
                        s(&x["state"]),
                        s(&x["pid"]),
                        s(&x["restarts"]),
                        s(&x["goal"])
                    );
                }
            }
        }
        EvctlCommand::Container { action, name } => {
            let body = serde_json::to_vec(&serde_json::json!({"action": action}))?;
            let r = c
                .call(Method::PUT, &format!("/containers/{name}"), body)
                .await?;
            if json {
                print_json(&r.json());
            } else {
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
            let v = c.command("gc", Value::Null).await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "removed {} revisions {:?}, {} objects ({} bytes), {} unpacked images",
                    v["revisions"].as_array().map_or(0, Vec::len),
                    v["revisions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(s)
                        .collect::<Vec<_>>(),
                    s(&v["objects"]),
                    s(&v["bytes"]),
                    s(&v["rootfs"])
                );
            }
        }
        EvctlCommand::Reboot => {
            let v = c.command("reboot", Value::Null).await?;
            if json {
                print_json(&v);
            } else {
                println!("rebooting");
            }
        }
        EvctlCommand::Signal { container } => {
            let body =
                serde_json::to_vec(&serde_json::json!({"type": "ready", "container": container}))?;
            let r = c.call(Method::POST, "/signal", body).await?;
            if json {
                print_json(&r.json());
            } else {
                println!("ready: {}", s(&r.json()["container"]));
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
                    let v = c.get_json(&base).await?;
                    if json {
                        print_json(&v);
                    } else {
                        for (k, val) in v.as_object().into_iter().flatten() {
                            println!("{k}={}", s(val));
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
        EvctlCommand::Bench { path, requests } => {
            c.get_json(&path).await?;
            let t = std::time::Instant::now();
            for _ in 0..requests {
                c.get_json(&path).await?;
            }
            let secs = t.elapsed().as_secs_f64();
            println!("{:.0}", requests as f64 / secs);
        }
        EvctlCommand::Schema => {}
        EvctlCommand::Buildinfo => {
            let v = c.get_json("/buildinfo").await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "runtime {} (commit {}), {}, {}",
                    s(&v["version"]),
                    s(&v["gitCommit"]),
                    s(&v["stateSpec"]),
                    s(&v["ociRuntime"])
                );
            }
        }
    }
    Ok(())
}

fn print_progress(rev: &str, p: &Value) {
    println!(
        "{rev}: {} {}% {}",
        s(&p["status"]),
        s(&p["progress"]),
        s(&p["status-msg"])
    );
    for m in p["missing"].as_array().into_iter().flatten() {
        println!("  missing {}", s(m));
    }
    for l in p["logs"].as_array().into_iter().flatten() {
        println!("  | {}", s(l));
    }
}

async fn watch(c: &Client, rev: &str, json: bool) -> Result<()> {
    let mut last = String::new();
    loop {
        let p = c.progress(rev).await?;
        let status = s(&p["status"]);
        let line = format!("{status} {}", s(&p["status-msg"]));
        if line != last {
            if json {
                println!("{}", serde_json::to_string(&p).unwrap_or_default());
            } else {
                print_progress(rev, &p);
            }
            last = line;
        }
        match status.as_str() {
            "DONE" => return Ok(()),
            "ERROR" | "WONTGO" => bail!("{rev} ended in {status}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Uploads every object the state names that the runtime lacks.
async fn upload_objects(c: &Client, state: &Value, dir: &Path, json: bool) -> Result<()> {
    let have: std::collections::BTreeSet<String> = c
        .get_json("/objects")
        .await?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["sha256"].as_str().map(str::to_owned))
        .collect();
    let mut wanted = std::collections::BTreeSet::new();
    for ct in state["containers"].as_array().into_iter().flatten() {
        wanted.extend(ct["image"]["config"]["digest"].as_str().map(str::to_owned));
        for l in ct["image"]["layers"].as_array().into_iter().flatten() {
            wanted.extend(l["digest"].as_str().map(str::to_owned));
        }
    }
    for f in state["files"].as_array().into_iter().flatten() {
        wanted.extend(f["digest"].as_str().map(str::to_owned));
    }
    for d in wanted {
        let hex = d.trim_start_matches("sha256:").to_owned();
        if have.contains(&hex) {
            continue;
        }
        let candidates = [dir.join(&hex), dir.join(&d), dir.join("sha256").join(&hex)];
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            bail!("object {d} is not in {}", dir.display());
        };
        let (_, v) = c.put_object_file(path).await?;
        if !json {
            println!(
                "uploaded {d} ({})",
                v["size"]
                    .as_u64()
                    .map_or("exists".into(), |n| format!("{n} bytes"))
            );
        }
    }
    Ok(())
}
