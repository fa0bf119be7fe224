//! Dump and restore of a C process: every piece of state the restored process must have,
//! asserted on what it says.

mod common;

use std::process::Command;

use common::{Conv, privileged, testee, tmp};
use ember_snap::{DumpOptions, LoadedImage};

struct Fixture {
    _dir: tempfile::TempDir,
    image: LoadedImage,
    original: Conv,
    data: std::path::PathBuf,
}

/// Starts the testee, dumps it, and keeps it alive (for comparisons).
fn fixture() -> Fixture {
    let dir = tmp();
    let data = dir.path().join("data.txt");
    std::fs::write(&data, format!("hello mapped file{}", " ".repeat(9000))).unwrap();
    let mut original = Conv::spawn(Command::new(testee()).arg(&data));
    let ready = original.line();
    assert!(ready.starts_with("ready"), "{ready}");
    let out = dir.path().join("image");
    let opts = DumpOptions {
        inherited: vec![0, 1, 2],
    };
    ember_snap::dump(original.pid, &out, &opts).unwrap();
    let image = LoadedImage::load(&out).unwrap();
    Fixture {
        _dir: dir,
        image,
        original,
        data,
    }
}

#[test]
fn restored_process_answers_and_keeps_its_state() {
    if !privileged("restored_process_answers_and_keeps_its_state") {
        return;
    }
    let mut f = fixture();
    // The original goes on after the dump.
    assert!(f.original.ask("ping").starts_with("pong"));
    assert_eq!(f.original.ask("heap"), "heap ok");
    let mut r = common::restore(&f.image);
    assert_eq!(r.ask("ping"), format!("pong {}", r.pid));
    assert_eq!(r.ask("relro"), "relro beta");
    assert_eq!(r.ask("file"), "file Xello hello");
    assert_eq!(r.ask("avx"), "avx ok");
    assert_eq!(r.ask("mask"), "mask usr2=1 usr1=0");
    assert_eq!(r.ask("sig"), "sig 2");
    assert_eq!(r.ask("heap"), "heap ok");
    assert_eq!(r.ask("thread"), "thread 42");
    assert_eq!(r.ask("fork"), "fork 42");
    assert_eq!(r.ask("pi"), "pi ok");
    let _ = f.data;
}
