//! What the compiler and the node share: the ABI between a compiled policy module and its
//! host, the request block both sides read, the region plan a bundle carries, and the signed
//! bundle format.
//!
//! This crate is the one place these layouts are defined, so the code generator, the
//! reference evaluator and the node can never disagree about them. It holds no policy
//! language and no code generator: `runtime-min` depends on it and on nothing of the
//! compiler.

pub mod abi;
pub mod bundle;
pub mod detect;
pub mod multipart;
pub mod plan;
pub mod request;
pub mod time;
pub mod wire;
