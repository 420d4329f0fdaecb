//! The edgevisor cluster controller and device gateway (DESIGN §2, §5, §6).
#![forbid(unsafe_code)]
