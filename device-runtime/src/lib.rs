//! The edgevisor device runtime (see DESIGN §4): an update manager that installs
//! revisions of containers from a content-addressed store, tries them, and commits
//! or rolls back by itself. It does not know Kubernetes exists; everything it does is
//! driven through the control socket ([`api`]), which `evctl` ([`client`]) speaks, and
//! so does the cloud agent ([`agent`]), the device's client of the gateway.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod bundle;
pub mod cli;
pub mod client;
pub mod commit;
pub mod daemon;
pub mod gateway_api;
pub mod gc;
pub mod install;
pub mod layers;
pub mod lifecycle;
pub mod logging;
pub mod oci;
pub mod paths;
pub mod recover;
pub mod rollback;
pub mod run;
pub mod state;
pub mod store;
pub mod supervisor;
#[doc(hidden)]
pub mod testkit;
