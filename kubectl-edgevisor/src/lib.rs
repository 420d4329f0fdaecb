//! `kubectl edgevisor`: the operator's verbs on a Fleet's rollout, and a readable view of Fleets
//! and Devices. Every verb is a patch of the Fleet's spec (`spec.paused`, `spec.resume`,
//! `spec.abort`, `spec.retry`, `spec.rollbackTo`), so what the plugin does, GitOps and
//! `kubectl patch` can do too, and the controller acts on it the same way.
//!
//! - [`verbs`]: which patch each verb makes, from the Fleet and its revisions (pure).
//! - [`show`]: the rollout view, the device table and description, and whether a rollout has
//!   ended (pure).
#![forbid(unsafe_code)]

pub mod show;
pub mod verbs;
