//! Which target the agent works on, as a pure state machine.
//!
//! At most one target is *current* (its update task runs). A new target that arrives
//! meanwhile becomes *pending*: the current one is asked to stop (it stops at once if it
//! is still preparing; a try already in the runtime runs to its end) and the pending one
//! starts when it does. An update that failed for a passing reason (downloads, space)
//! is *retried* after a delay, unless a new target came first. The loop in
//! [`crate::run`] owns the tasks and timers and does what these functions answer.

use std::time::{Duration, Instant};

use edgevisor_protocol::gateway::Target;

/// How an update task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// At rest in the runtime (DONE, ERROR, WONTGO): nothing more to do for it.
    Finished,
    /// Stopped because a newer target superseded it.
    Cancelled,
    /// Failed for a passing reason: worth trying again after this long.
    RetryAfter(Duration),
}

/// What the loop should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Nothing,
    /// Start an update task for this target.
    Start(Target),
    /// Ask the current task to stop (it may be past the point where it can); the
    /// pending target starts when it ends.
    Supersede {
        current: String,
        next: String,
    },
}

#[derive(Debug, Default)]
pub struct Schedule {
    current: Option<Target>,
    pending: Option<Target>,
    retry: Option<(Instant, Target)>,
}

impl Schedule {
    /// The gateway answered with a target (a new one, or the same again).
    pub fn on_target(&mut self, t: Target) -> Action {
        // A target from the gateway is the newest word: an older retry is moot.
        self.retry = None;
        match &self.current {
            Some(c) if c.revision == t.revision => {
                self.pending = None;
                Action::Nothing
            }
            Some(c) => {
                let action = Action::Supersede {
                    current: c.revision.clone(),
                    next: t.revision.clone(),
                };
                self.pending = Some(t);
                action
            }
            None => self.start(t),
        }
    }

    /// The current task ended.
    pub fn on_outcome(&mut self, ended: Ended, now: Instant) -> Action {
        let Some(done) = self.current.take() else {
            return Action::Nothing;
        };
        if let Some(next) = self.pending.take() {
            return self.start(next);
        }
        if let Ended::RetryAfter(d) = ended {
            self.retry = Some((now + d, done));
        }
        Action::Nothing
    }

    /// The retry time came.
    pub fn on_retry_due(&mut self) -> Action {
        let Some((_, t)) = self.retry.take() else {
            return Action::Nothing;
        };
        if self.current.is_some() {
            self.pending.get_or_insert(t);
            return Action::Nothing;
        }
        self.start(t)
    }

    /// When [`on_retry_due`](Self::on_retry_due) should be called.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry.as_ref().map(|(at, _)| *at)
    }

    pub fn current(&self) -> Option<&str> {
        self.current.as_ref().map(|t| t.revision.as_str())
    }

    fn start(&mut self, t: Target) -> Action {
        self.current = Some(t.clone());
        Action::Start(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(rev: &str) -> Target {
        serde_json::from_value(serde_json::json!({
            "revision": rev, "architecture": "amd64", "stateDigest": "sha256:x",
            "state": "{}", "blobs": [],
        }))
        .expect("a target")
    }

    fn started(a: &Action) -> Option<&str> {
        match a {
            Action::Start(t) => Some(t.revision.as_str()),
            _ => None,
        }
    }

    #[test]
    fn a_target_starts_when_idle_and_the_same_target_again_changes_nothing() {
        let mut s = Schedule::default();
        assert_eq!(started(&s.on_target(target("r1"))), Some("r1"));
        assert_eq!(s.on_target(target("r1")), Action::Nothing);
        assert_eq!(s.current(), Some("r1"));
        assert_eq!(
            s.on_outcome(Ended::Finished, Instant::now()),
            Action::Nothing
        );
        assert_eq!(s.current(), None);
    }

    #[test]
    fn a_newer_target_supersedes_and_starts_when_the_current_ends() {
        let mut s = Schedule::default();
        s.on_target(target("r1"));
        assert_eq!(
            s.on_target(target("r2")),
            Action::Supersede {
                current: "r1".into(),
                next: "r2".into()
            }
        );
        // Only the newest pending target counts.
        s.on_target(target("r3"));
        let a = s.on_outcome(Ended::Cancelled, Instant::now());
        assert_eq!(started(&a), Some("r3"));
        assert_eq!(s.current(), Some("r3"));
    }

    #[test]
    fn going_back_to_the_current_target_drops_the_pending_one() {
        let mut s = Schedule::default();
        s.on_target(target("r1"));
        s.on_target(target("r2"));
        assert_eq!(s.on_target(target("r1")), Action::Nothing);
        assert_eq!(
            s.on_outcome(Ended::Finished, Instant::now()),
            Action::Nothing
        );
        assert_eq!(s.current(), None);
    }

    #[test]
    fn a_passing_failure_is_retried_after_its_delay_unless_a_target_comes_first() {
        let now = Instant::now();
        let mut s = Schedule::default();
        s.on_target(target("r1"));
        s.on_outcome(Ended::RetryAfter(Duration::from_secs(180)), now);
        assert_eq!(s.retry_at(), Some(now + Duration::from_secs(180)));
        assert_eq!(started(&s.on_retry_due()), Some("r1"));
        assert_eq!(s.retry_at(), None);

        s.on_outcome(Ended::RetryAfter(Duration::from_secs(5)), now);
        assert!(s.retry_at().is_some());
        assert_eq!(started(&s.on_target(target("r2"))), Some("r2"));
        assert_eq!(s.retry_at(), None, "a new target cancels the retry");
        assert_eq!(s.on_retry_due(), Action::Nothing);
    }

    #[test]
    fn a_retry_due_while_busy_waits_as_pending() {
        let now = Instant::now();
        let mut s = Schedule::default();
        s.on_target(target("r1"));
        s.on_outcome(Ended::RetryAfter(Duration::ZERO), now);
        // Not possible through on_target (it clears the retry), but a task may be
        // running when the timer fires if the loop started one another way.
        s.current = Some(target("r0"));
        assert_eq!(s.on_retry_due(), Action::Nothing);
        assert_eq!(started(&s.on_outcome(Ended::Finished, now)), Some("r1"));
    }

    #[test]
    fn an_outcome_without_a_current_task_is_ignored() {
        let mut s = Schedule::default();
        assert_eq!(
            s.on_outcome(Ended::Finished, Instant::now()),
            Action::Nothing
        );
        assert_eq!(s.on_retry_due(), Action::Nothing);
    }
}
