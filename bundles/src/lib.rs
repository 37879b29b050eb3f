//! The edgepack bundle format and the ABI between a compiled policy module and the node.
//!
//! This crate is the one place that writes and reads bundles, shared by the compiler and the
//! node, so the two can never disagree about a layout. It holds no policy language and no
//! code generator: `runtime-min` depends on it and on nothing of the compiler.
//!
//! The format (signed manifest, deterministic tar, zstd frames) and the ABI constants arrive
//! with the compiler and bundle stages; until then the crate only fixes its place in the
//! dependency graph.
