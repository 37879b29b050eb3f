//! One module per `edgepack` subcommand.

pub mod build;
pub mod check;
pub mod explain;
pub mod fmt;
