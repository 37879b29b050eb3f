//! One module per `edgepack` subcommand.

pub mod check;
pub mod fmt;
