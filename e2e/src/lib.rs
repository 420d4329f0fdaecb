//! Helpers for the end-to-end tests: the environment `e2e/env` brings up.
#![forbid(unsafe_code)]
