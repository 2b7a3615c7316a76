//! Tapio etcd collector — not implemented yet.
//!
//! This crate reserves the name and its place in the workspace; the collector
//! itself is tracked as issue #6. It exports nothing until then, so nothing
//! can be built on a stub.
