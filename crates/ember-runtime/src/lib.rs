//! Ember's runtimes: how a function's process is started and how the node talks to it.
//!
//! - [`protocol`]: the framed wire protocol on the inherited descriptor.
//! - [`python`]: the Python runtime (bootstrap shipped in the binary, instance lifecycle).
//! - [`provided`]: Lambda's custom runtimes: a `bootstrap` executable served by a Runtime API.
//! - [`native`]: one process per request, the event on stdin and the result on stdout.
//! - [`exec`]: what the two executable runtimes share.
//! - [`lambda_env`]: what every runtime tells a function about itself, as Lambda does.

pub mod exec;
pub mod lambda_env;
pub mod native;
mod process;
pub mod protocol;
pub mod provided;
pub mod python;
mod sys;

pub use sys::{die_with_daemon_tree, kill_and_collect, kill_with_daemon};

pub use python::{
    BootTiming, Instance, LogSink, Outcome, Prepared, RestoredTiming, SnapshotPointError,
    SnapshotReady, StartSpec, Stream,
};
