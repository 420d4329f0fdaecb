//! Rollout decisions, as pure functions: no I/O, no clock, no Kubernetes client.
//!
//! The fleet reconciler reads the Fleet from a watch cache and its Devices, summed up in a
//! [`Tally`] that the device index keeps as Devices change, calls [`plan_tally`], and writes what
//! it returns: new targets (`Device.spec.revision`, server-side apply) and the Fleet's status.
//! [`plan`] is the same decision from a list of devices (the tally summed from scratch). Everything the plan needs to remember between
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
