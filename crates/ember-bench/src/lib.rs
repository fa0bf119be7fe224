//! `ember bench`: workloads (the examples), a load driver over HTTP, order statistics and
//! reports (a table on the terminal, raw samples as JSON for later plots).

pub mod driver;
pub mod report;
pub mod stats;
pub mod workloads;

pub use driver::{BenchOptions, Sample};
pub use report::Report;
