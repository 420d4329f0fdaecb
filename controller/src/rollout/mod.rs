//! Rollout decisions, as pure functions: no I/O, no clock, no Kubernetes client.
//!
//! The fleet reconciler reads the Fleet and its Devices from watch caches, turns them into the
//! views below, calls [`plan`], and writes what it returns: new targets (`Device.spec.revision`,
//! server-side apply) and the Fleet's status. Everything the plan needs to remember between
//! calls (the step reached, when a pause began, whether the rollout was aborted) lives in the
//! Fleet's status, so a controller killed at any point resumes from what the apiserver holds,
//! without exceeding `maxUnavailable` or retargeting a device twice.
pub mod plan;
pub mod sizes;
pub mod tally;

pub use plan::{
    DeviceView, FleetView, Phase, Plan, RolloutMemory, UpdateReport, effective_memory, plan,
    plan_tally,
};
pub use tally::{Basis, Name, Tally};
