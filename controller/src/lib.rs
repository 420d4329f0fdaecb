//! The edgevisor cluster controller and device gateway (DESIGN §2, §5, §6).
//!
//! `rollout` holds the decisions (pure functions, tested without a cluster); the reconcilers
//! that read watch caches and write what those decisions say come on top of it.
#![forbid(unsafe_code)]

pub mod cli;
pub mod device_index;
pub mod error;
pub mod gateway;
pub mod heard;
pub mod leader;
pub mod liveness;
pub mod metrics;
pub mod probe;
pub mod reconcile;
pub mod registry;
pub mod render;
pub mod rollout;
pub mod run;
pub mod serve;
pub mod signing;
pub mod status;
pub mod views;
pub mod watched;

pub use error::Error;
pub use run::{Ended, run};
