//! How the story is told: step and event lines, live `kubectl get -w`-like rows.

use super::*;

// === narration ===

/// Prints the story: headings, lines, and time-stamped events.
#[derive(Clone, Debug)]
pub struct Narrator {
    started: Instant,
    stdout: bool,
    bold: bool,
}

impl Narrator {
    /// On standard error, plain (tests: their standard output is for `bench:` lines).
    pub fn stderr() -> Narrator {
        Narrator {
            started: Instant::now(),
            stdout: false,
            bold: false,
        }
    }

    /// On standard output, headings in bold on a terminal (the demo).
    pub fn stdout() -> Narrator {
        Narrator {
            started: Instant::now(),
            stdout: true,
            bold: std::io::stdout().is_terminal(),
        }
    }

    /// Time since the narrator was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// A heading: `==> text`.
    pub fn step(&self, text: &str) {
        if self.bold {
            self.emit(&format!("\n\x1b[1m==> {text}\x1b[0m"));
        } else {
            self.emit(&format!("\n==> {text}"));
        }
    }

    /// Lines under a heading, indented.
    pub fn say(&self, text: &str) {
        self.emit(&indent(text, "    "));
    }

    /// A time-stamped line: `[ 12s] text`.
    pub fn event(&self, text: &str) {
        self.say(&format!("[{:3}s] {text}", self.started.elapsed().as_secs()));
    }

    /// Text as it is (tables).
    pub fn raw(&self, text: &str) {
        self.emit(text.trim_end());
    }

    pub(super) fn emit(&self, text: &str) {
        // One write per call, so lines from the live view and the story do not mix.
        let line = format!("{text}\n");
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        } else {
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
}

/// Every line of `text` prefixed with `prefix`.
pub fn indent(text: &str, prefix: &str) -> String {
    text.trim_end()
        .lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Short names of revisions (`v1`, …) for the live view.
#[derive(Clone, Debug, Default)]
pub(super) struct Labels(pub(super) Arc<Mutex<BTreeMap<String, String>>>);

impl Labels {
    pub(super) fn set(&self, revision: &str, label: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(revision.to_string(), label.to_string());
    }

    pub(super) fn of(&self, revision: &str) -> String {
        let labels = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match labels.get(revision) {
            Some(label) => label.clone(),
            None if revision.chars().count() > 12 => {
                format!("{}…", revision.chars().take(12).collect::<String>())
            }
            None => revision.to_string(),
        }
    }
}

/// The live view's line for a Device.
pub(super) fn device_row(d: &Device, labels: &Labels) -> String {
    let status = d.status.as_ref();
    let arch = status
        .and_then(|s| s.architecture)
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into());
    let update = match update_of(d) {
        None => "-".to_string(),
        Some(u) => {
            let mut text = format!("{}: {}", labels.of(&u.revision), status_word(u.status));
            if !u.status.is_final() {
                text.push_str(&format!(" {}%", u.progress));
            }
            if u.status.is_failure()
                && let Some(reason) = &u.reason
            {
                text.push_str(&format!(" ({reason})"));
            }
            text
        }
    };
    let current = current(d)
        .map(|r| labels.of(r))
        .unwrap_or_else(|| "-".into());
    let target = target(d)
        .map(|r| labels.of(r))
        .unwrap_or_else(|| "-".into());
    let online = status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Online"))
        .map(|c| {
            if c.status == "True" {
                "Online"
            } else {
                "Offline"
            }
        })
        .unwrap_or("-");
    let mut row = format!(
        "{:<7} {arch:<6} {update:<28} current {current:<3} target {target:<3} {online}",
        d.name_any()
    );
    if d.spec.revoked {
        row.push_str("  revoked");
    }
    row
}

/// The live view's line for the Fleet.
pub(super) fn fleet_row(f: &Fleet, labels: &Labels) -> String {
    let Some(s) = f.status.as_ref() else {
        return format!("{} (no status yet)", f.name_any());
    };
    format!(
        "{} {:<3} step {:<7} updated {}/{}  updating {}  failed {}  {}",
        f.name_any(),
        s.update_revision
            .as_deref()
            .map(|r| labels.of(r))
            .unwrap_or_else(|| "-".into()),
        s.current_step.as_deref().unwrap_or("-"),
        s.updated,
        s.devices,
        s.updating,
        s.failed,
        ready_reason(f)
    )
}

pub(super) fn status_word(status: UpdateStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{status:?}"))
}

/// Watches Devices and Fleets of a namespace and prints a line when one's row changes; stops
/// when dropped.
pub(super) struct LiveView {
    tasks: Vec<JoinHandle<()>>,
}

impl LiveView {
    pub(super) fn start(
        client: &kube::Client,
        ns: &str,
        narrator: &Narrator,
        labels: &Labels,
    ) -> LiveView {
        let devices: Api<Device> = Api::namespaced(client.clone(), ns);
        let fleets: Api<Fleet> = Api::namespaced(client.clone(), ns);
        LiveView {
            tasks: vec![
                tokio::spawn(print_changes(
                    devices,
                    narrator.clone(),
                    labels.clone(),
                    device_row,
                )),
                tokio::spawn(print_changes(
                    fleets,
                    narrator.clone(),
                    labels.clone(),
                    fleet_row,
                )),
            ],
        }
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub(super) async fn print_changes<K>(
    api: Api<K>,
    narrator: Narrator,
    labels: Labels,
    row: fn(&K, &Labels) -> String,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                let line = row(&object, &labels);
                if shown.get(&object.name_any()) != Some(&line) {
                    narrator.event(&line);
                    shown.insert(object.name_any(), line);
                }
            }
            Ok(watcher::Event::Delete(object)) => {
                shown.remove(&object.name_any());
                narrator.event(&format!("{} deleted", object.name_any()));
            }
            _ => {}
        }
    }
}
