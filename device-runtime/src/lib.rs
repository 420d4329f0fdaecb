//! The edgevisor device runtime (see DESIGN §4): an update manager that installs
//! revisions of containers from a content-addressed store, tries them, and commits
//! or rolls back by itself. It does not know Kubernetes exists; everything it does is
//! driven through the control socket ([`api`]), which `evctl` ([`client`]) speaks.
#![forbid(unsafe_code)]

pub mod layers;
pub mod lifecycle;
pub mod paths;
pub mod state;
pub mod store;
#[doc(hidden)]
pub mod testkit;
