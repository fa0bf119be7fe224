//! ember-snap: Ember's own checkpoint/restore engine for Linux x86_64.
//!
//! It knows nothing about functions. [`dump`] freezes a single-threaded process, writes an
//! image directory ([`image::format`] draws the layout) and lets the process go on;
//! [`LoadedImage::load`] reads an image once and checks every hash; [`restore`] turns a
//! stopped process (forked by the engine, or created by the caller inside its sandbox) into
//! the image, as many times and as concurrently as wanted.
//!
//! Design notes are in `docs/snap.md`; the kernel facts it relies on are in the project's
//! RESTORE-NOTES. All syscalls are in [`sys`]; the code that runs inside the restored
//! process while its memory is replaced is the [`restorer`] blob.

pub mod cpu;
pub mod creds;
pub mod dump;
pub mod image;
pub mod lazy;
pub mod proc;
pub mod restore;
pub mod restorer;
pub mod state;
pub mod stopper;
pub mod sys;
pub mod template;
pub mod tracee;

pub use dump::{DumpError, DumpOptions, DumpStats, Lineage, dump, dump_layer, dump_restored};
pub use image::{ImageError, LoadedImage, Meta};
pub use restore::{Handoff, RestoreError, RestoreOptions, RestoreStats, Restored, Target, restore};

/// An error and its sources on one line, as the CLI prints them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        // A source whose text the message already quotes is not repeated.
        let more = c.to_string();
        if !s.contains(&more) {
            s.push_str(": ");
            s.push_str(&more);
        }
        cur = c.source();
    }
    s
}
