//! The subcommands, each a thin layer over library calls.

pub mod client;
pub mod eval;
pub mod render;
pub mod serve;
pub mod spec;
pub mod train;
