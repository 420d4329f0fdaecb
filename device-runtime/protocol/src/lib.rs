//! The contracts between edgevisor's components, and nothing else: the state document
//! a device installs (`edgevisor-state@1`, [`state`]), the update lifecycle it reports
//! ([`lifecycle`]), the control socket's wire types ([`control`]) and the gateway's
//! device API ([`gateway`]), and registry authentication as both the controller and the
//! agent speak it ([`registry_auth`]), and what a signed revision signs ([`signature`]). Pure types and validation, serde and little else, so the
//! controller, the runtime, the agent and `evctl` share them without sharing code
//! they do not need.
#![forbid(unsafe_code)]

pub mod control;
pub mod digest;
pub mod gateway;
pub mod lifecycle;
pub mod paths;
pub mod registry_auth;
pub mod signature;
pub mod state;

pub use digest::Digest;
