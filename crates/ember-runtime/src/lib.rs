//! Ember's runtimes: how a function's process is started and how the node talks to it.
//!
//! - [`protocol`]: the framed wire protocol on the inherited descriptor.
//! - [`python`]: the Python runtime (bootstrap shipped in the binary, instance lifecycle).

pub mod protocol;
pub mod python;
mod sys;

pub use sys::kill_with_daemon;

pub use python::{
    BootTiming, Instance, LogSink, Outcome, Prepared, RestoredTiming, StartSpec, Stream,
};
