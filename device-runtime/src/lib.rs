//! The edgevisor device runtime (see DESIGN §4): an update manager that installs
//! revisions of containers from a content-addressed store, tries them, and commits
//! or rolls back by itself. It does not know Kubernetes exists; everything it does is
//! driven through the control socket ([`api`]), which `evctl` ([`client`]) speaks, and
//! so does the cloud agent (crate `edgevisor-agent`), the device's client of the gateway.
#![forbid(unsafe_code)]

// The contracts live in the protocol crate; these names keep the runtime's modules reading
// as one vocabulary.
pub use edgevisor_protocol::{control, lifecycle, paths, state};

pub mod api;
pub mod bundle;
pub mod cli;
pub mod client;
pub mod commit;
pub mod daemon;
pub mod gc;
pub mod install;
pub mod layers;
pub mod logging;
pub mod oci;
pub mod policy;
pub mod recover;
pub mod rollback;
pub mod run;
pub mod service;
pub mod signals;
pub mod sockets;
pub mod store;
pub mod supervisor;
#[doc(hidden)]
pub mod testkit;
