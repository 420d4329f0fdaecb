//! The update lifecycle a revision goes through, in the vocabulary device update
//! managers already use: `QUEUED → DOWNLOADING → INPROGRESS → TESTING → DONE`, or
//! `WONTGO` (refused before anything changed) or `ERROR` (failed while installing or
//! testing, the committed revision restored). Transitions are pure and checked here,
//! so a bug elsewhere can never record an impossible history.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a device is in installing a revision. The names are those of established update
/// managers, so tools that know them read ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Accepted, waiting to start.
    Queued,
    /// Fetching the objects the revision needs.
    Downloading,
    /// Installing: unpacking, stopping the old containers, starting the new.
    Inprogress,
    /// Running the new revision and waiting for every container to reach its goal.
    Testing,
    /// Committed: the revision passed its test and is the device's revision now.
    Done,
    /// Refused before install (invalid state, missing objects, no space); nothing changed.
    Wontgo,
    /// Failed while installing or testing; the device went back to its committed revision.
    Error,
}

impl Status {
    /// Whether the update has ended, for good or bad.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Wontgo | Self::Error)
    }

    /// Whether the update ended in failure.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Wontgo | Self::Error)
    }

    /// Statuses during which the device is changing; only one revision at a time.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Status::Downloading | Status::Inprogress | Status::Testing
        )
    }

    /// A revision on disk can be (re)run from any resting status: that is how roll
    /// back and roll forward work. `WONTGO` may be retried once objects arrive.
    pub fn can_run(self) -> bool {
        !self.is_active()
    }

    pub fn can_transition(self, to: Status) -> bool {
        use Status::*;
        match (self, to) {
            (from, Downloading) => from.can_run(),
            (Downloading, Inprogress) | (Inprogress, Testing) | (Testing, Done) => true,
            // Refused before anything changed: a new revision, or a re-run of a resting
            // one whose state cannot be read (it must not keep showing its old status).
            (from, Wontgo) => from == Downloading || from.can_run(),
            (Downloading | Inprogress | Testing, Error) => true,
            // A restart while trying: recovery marks the try as failed.
            (Queued, Queued) => true,
            _ => false,
        }
    }

    pub fn can_gc(self) -> bool {
        !self.is_active()
    }

    pub fn progress_percent(self) -> u8 {
        match self {
            Status::Queued => 0,
            Status::Downloading => 10,
            Status::Inprogress => 40,
            Status::Testing => 70,
            Status::Done | Status::Wontgo | Status::Error => 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("impossible lifecycle transition {from} -> {to}")]
pub struct TransitionError {
    pub from: Status,
    pub to: Status,
}

/// Whether a revision whose recorded status is `from` (none yet: a new revision) may
/// record `to`. Staying in a status (more progress of the same kind) is always allowed.
pub fn check_transition(from: Option<Status>, to: Status) -> Result<(), TransitionError> {
    match from {
        Some(from) if from != to && !from.can_transition(to) => Err(TransitionError { from, to }),
        _ => Ok(()),
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Queued => "QUEUED",
            Status::Downloading => "DOWNLOADING",
            Status::Inprogress => "INPROGRESS",
            Status::Testing => "TESTING",
            Status::Done => "DONE",
            Status::Wontgo => "WONTGO",
            Status::Error => "ERROR",
        };
        f.write_str(s)
    }
}

/// `revisions/<rev>/progress.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub status: Status,
    #[serde(rename = "status-msg")]
    pub status_msg: String,
    pub progress: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloads: Option<Downloads>,
    /// Why it failed (ERROR, WONTGO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Objects the state needs and the store lacks (WONTGO).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// Last log lines of the failing container (ERROR).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
    /// Seconds since the epoch.
    pub updated: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downloads {
    pub total_bytes: u64,
    pub present_bytes: u64,
    pub objects: usize,
}

impl Progress {
    pub fn new(status: Status, msg: impl Into<String>) -> Progress {
        Progress {
            status,
            status_msg: msg.into(),
            progress: status.progress_percent(),
            downloads: None,
            reason: None,
            missing: Vec::new(),
            logs: Vec::new(),
            updated: now_secs(),
        }
    }

    pub fn failed(status: Status, reason: impl Into<String>, logs: Vec<String>) -> Progress {
        let reason = reason.into();
        let mut p = Progress::new(status, reason.clone());
        p.reason = Some(reason);
        p.logs = logs;
        p
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::Status::*;
    use super::*;

    #[test]
    fn happy_path_is_allowed() {
        let path = [Queued, Downloading, Inprogress, Testing, Done];
        for w in path.windows(2) {
            assert!(w[0].can_transition(w[1]), "{} -> {}", w[0], w[1]);
        }
    }

    #[test]
    fn no_skipping_or_going_back() {
        assert!(!Queued.can_transition(Testing));
        assert!(!Queued.can_transition(Done));
        assert!(!Testing.can_transition(Inprogress));
        assert!(!Done.can_transition(Testing));
        assert!(!Wontgo.can_transition(Error));
    }

    #[test]
    fn impossible_transitions_are_errors() {
        assert!(check_transition(None, Queued).is_ok());
        assert!(check_transition(Some(Downloading), Downloading).is_ok());
        assert!(check_transition(Some(Testing), Done).is_ok());
        let e = check_transition(Some(Done), Testing).unwrap_err();
        assert_eq!(
            e.to_string(),
            "impossible lifecycle transition DONE -> TESTING"
        );
        assert!(check_transition(Some(Wontgo), Error).is_err());
        // A re-run refused at once says so rather than keeping its old status.
        assert!(check_transition(Some(Done), Wontgo).is_ok());
        assert!(check_transition(Some(Testing), Wontgo).is_err());
    }

    #[test]
    fn resting_revisions_can_run_again() {
        for s in [Queued, Done, Error, Wontgo] {
            assert!(
                s.can_run() && s.can_transition(Downloading) && s.can_gc(),
                "{s}"
            );
        }
        for s in [Downloading, Inprogress, Testing] {
            assert!(!s.can_run() && !s.can_gc(), "{s}");
            assert!(s.can_transition(Error), "{s}");
        }
    }

    #[test]
    fn progress_json_uses_the_documented_names() {
        let p = Progress::failed(Error, "boom", vec!["x".into()]);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["status"], "ERROR");
        assert_eq!(v["status-msg"], "boom");
        assert_eq!(v["progress"], 100);
        assert_eq!(v["logs"][0], "x");
    }
}
