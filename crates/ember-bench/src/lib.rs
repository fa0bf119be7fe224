//! `ember bench`: workloads (the examples), a load driver over HTTP, order statistics and
//! reports (a table on the terminal, an SVG plot, raw samples as JSON for later experiments).

pub mod cluster;
pub mod driver;
pub mod images;
pub mod knix;
pub mod lambda;
pub mod plot;
pub mod report;
pub mod sandbox;
pub mod snap;
pub mod snapshot_cache;
pub mod stats;
pub mod trace;
pub mod vhive;
pub mod workloads;

pub use driver::{BenchOptions, Sample};
pub use report::Report;
