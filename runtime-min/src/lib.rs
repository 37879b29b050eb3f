//! `edgepack-node`'s library: hosting compiled policy modules, and (with the node stage)
//! loading signed bundles and enforcing them on HTTP traffic.
//!
//! It depends on `edgepack-bundles` only, never on the policy language or the compiler, so
//! an edge node carries no KDL parser and no code generator. [`host`] is the one host of
//! policy modules: the compiler's `explain` and the differential tests use it too.

pub mod host;
