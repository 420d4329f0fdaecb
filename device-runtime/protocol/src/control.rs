//! The control socket's wire types (`device-runtime/openapi.yaml`): what the runtime
//! answers and what its clients (`evctl`, the agent, tests) read, one struct each, so
//! the server and every client agree by construction.

use serde::{Deserialize, Serialize};

use crate::digest;
pub use crate::digest::Digest;
use crate::lifecycle::Status;

/// One revision as `GET /steps` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub rev: String,
    /// `None` when the revision's progress cannot be read.
    #[serde(default)]
    pub status: Option<Status>,
    #[serde(default, rename = "status-msg")]
    pub status_msg: Option<String>,
    #[serde(default)]
    pub committed: bool,
    #[serde(default)]
    pub trying: bool,
    #[serde(default)]
    pub factory: bool,
    #[serde(default)]
    pub running: bool,
}

/// The committed revision of a `GET /steps` answer.
pub fn committed(steps: &[Step]) -> Option<&Step> {
    steps.iter().find(|s| s.committed)
}

/// One object as `GET /objects` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    #[serde(with = "digest::bare_hex")]
    pub sha256: Digest,
    pub size: u64,
}

/// The answer to `PUT /objects/{sha256}` (and to a `GET` probe before an upload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectUpload {
    #[serde(with = "digest::bare_hex")]
    pub sha256: Digest,
    /// `exists` when the object was already stored and nothing was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The object's size, once it is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Bytes stored so far of an upload that is not complete (`202`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_bytes: Option<u64>,
}

/// `POST /commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "payload", rename_all = "lowercase")]
pub enum Command {
    /// Try a revision on disk: install's next step, or a roll back or forward.
    Run(String),
    /// Delete what no retained revision needs.
    Gc,
    /// Run the configured reboot command.
    Reboot,
}

/// The answer to an accepted `run` or `reboot` (`202`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandAccepted {
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<String>,
}

/// The answer to `gc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub revisions: Vec<String>,
    pub objects: usize,
    pub rootfs: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Starting,
    Running,
    Exited,
    Backoff,
    Stopped,
}

/// What a container must reach for its revision to be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Running (no health check).
    Running,
    /// Running and passing its health check.
    Healthy,
    /// Running and having signalled ready over the socket.
    Ready,
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Exited => "exited",
            RunState::Backoff => "backoff",
            RunState::Stopped => "stopped",
        })
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Goal::Running => "running",
            Goal::Healthy => "healthy",
            Goal::Ready => "ready",
        })
    }
}

/// One container as `GET /containers` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub revision: String,
    pub id: String,
    pub state: RunState,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub last_exit: Option<i32>,
    /// Exited with a success code under a policy that does not restart it: a job
    /// that finished, which counts as reaching its goal.
    #[serde(default)]
    pub completed: bool,
    /// `None` until the first check ran (or when there is no check).
    #[serde(default)]
    pub healthy: Option<bool>,
    #[serde(default)]
    pub ready: bool,
    pub goal: Goal,
}

impl Container {
    /// A container that has not run yet.
    pub fn new(name: &str, revision: &str, id: &str, state: RunState, goal: Goal) -> Container {
        Container {
            name: name.to_owned(),
            revision: revision.to_owned(),
            id: id.to_owned(),
            state,
            pid: None,
            restarts: 0,
            last_exit: None,
            completed: false,
            healthy: None,
            ready: false,
            goal,
        }
    }

    /// Whether the container is where the state wants it: running and, depending on
    /// its goal, healthy or signalled ready; or a job that finished.
    pub fn at_goal(&self) -> bool {
        if self.completed {
            return true;
        }
        self.state == RunState::Running
            && match self.goal {
                Goal::Healthy => self.healthy == Some(true),
                Goal::Ready => self.ready,
                Goal::Running => true,
            }
    }
}

/// `PUT /containers/{name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerAction {
    Start,
    Stop,
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerActionBody {
    pub action: ContainerAction,
}

/// The answer to `PUT /containers/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerActionDone {
    pub name: String,
    pub action: ContainerAction,
}

/// `POST /signal`: a container reports ready. A container may leave `container` out (it
/// is known by the connection); a manager names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Only `ready` exists.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signalled {
    pub container: String,
    pub ready: bool,
}

/// The answer to `PUT /…-meta/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaWritten {
    pub key: String,
}

/// The answer to `DELETE /…-meta/{key}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaDeleted {
    pub deleted: String,
}

/// `GET /buildinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    pub version: String,
    pub git_commit: String,
    pub state_spec: String,
    pub oci_runtime: String,
}

/// Every error: `{"error": "…"}` and, where they help the caller, these fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error: String,
    /// `WONTGO` for a state that cannot be installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Objects a state needs that the store lacks (`sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// Bytes of a partial upload the runtime keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_bytes: Option<u64>,
    /// The revision whose update blocks this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(state: RunState, goal: Goal) -> Container {
        Container::new("a", "r1", "ev-a", state, goal)
    }

    #[test]
    fn goals() {
        assert!(container(RunState::Running, Goal::Running).at_goal());
        assert!(!container(RunState::Exited, Goal::Running).at_goal());
        let mut h = container(RunState::Running, Goal::Healthy);
        assert!(!h.at_goal());
        h.healthy = Some(true);
        assert!(h.at_goal());
        let mut r = container(RunState::Running, Goal::Ready);
        assert!(!r.at_goal());
        r.ready = true;
        assert!(r.at_goal());
        let mut job = container(RunState::Exited, Goal::Running);
        job.completed = true;
        assert!(job.at_goal());
    }

    #[test]
    fn commands_on_the_wire() {
        let run: Command = serde_json::from_str(r#"{"op":"run","payload":"r1"}"#).unwrap();
        assert_eq!(run, Command::Run("r1".into()));
        assert_eq!(
            serde_json::from_str::<Command>(r#"{"op":"gc"}"#).unwrap(),
            Command::Gc
        );
        assert_eq!(
            serde_json::from_str::<Command>(r#"{"op":"gc","payload":null}"#).unwrap(),
            Command::Gc
        );
        let e = serde_json::from_str::<Command>(r#"{"op":"format"}"#).unwrap_err();
        assert!(e.to_string().contains("run"), "{e}");
        assert!(serde_json::from_str::<Command>(r#"{"op":"run"}"#).is_err());
    }

    #[test]
    fn steps_read_what_the_runtime_writes() {
        let v = r#"[{"rev":"a","status":"DONE","status-msg":"ok","committed":true,"trying":false,"factory":true,"running":true},
                    {"rev":"b","status":null,"status-msg":null,"committed":false,"trying":false,"factory":false,"running":false}]"#;
        let steps: Vec<Step> = serde_json::from_str(v).unwrap();
        assert_eq!(committed(&steps).map(|s| s.rev.as_str()), Some("a"));
        assert_eq!(steps[0].status, Some(Status::Done));
        assert_eq!(steps[1].status, None);
    }
}
