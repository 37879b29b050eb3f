//! `edgepack-node`'s library: hosting compiled policy modules, loading signed bundles and
//! enforcing them on HTTP traffic.
//!
//! It depends on `edgepack-bundles` only, never on the policy language or the compiler, so
//! an edge node carries no KDL parser and no code generator. [`host`] is the one host of
//! policy modules: the compiler's `explain`, `diff` and `test` and the differential tests
//! use it too. [`node::Node`] holds what every request shares, [`handler`] carries out one
//! request, [`server`] runs the listeners, the admin endpoints and the bundle watcher.

pub mod activation;
pub mod cache;
pub mod config;
pub mod decide;
pub mod framing;
pub mod functions;
pub mod golden;
pub mod handler;
pub mod host;
pub mod jwt;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod ratelimit;
pub mod registry;
pub mod server;
pub mod state;
