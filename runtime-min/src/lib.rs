//! `edgepack-node`'s library: loading signed bundles and enforcing their policy on HTTP
//! traffic.
//!
//! It depends on `edgepack-bundles` only, never on the policy language or the compiler, so
//! an edge node carries no KDL parser and no code generator. The serving runtime arrives with
//! the node stage; until then only the binary's command line exists.
