//! Lazy and bulk restore: pages on demand from a page server, with the process moving,
//! freeing and discarding memory it has not touched yet.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{Conv, privileged, tmp};
use ember_snap::lazy::{PageSource, Policy};
use ember_snap::{DumpOptions, LoadedImage, RestoreOptions};

/// An image of the memory target, loaded (the in-memory page source).
fn memory_image(dir: &Path) -> Arc<LoadedImage> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/memory.py");
    let mut original = Conv::spawn(Command::new("/usr/bin/python3").arg("-I").arg(&script));
    assert_eq!(original.line(), "ready");
    let out = dir.join("image");
    ember_snap::dump(
        original.pid,
        &out,
        &DumpOptions {
            inherited: vec![0, 1, 2],
        },
    )
    .unwrap();
    Arc::new(LoadedImage::load(&out).unwrap())
}

fn options(img: &Arc<LoadedImage>, policy: Policy) -> RestoreOptions {
    RestoreOptions {
        policy,
        source: Some(img.clone() as Arc<dyn PageSource>),
        ..RestoreOptions::default()
    }
}

fn check_memory(r: &mut Conv) {
    assert_eq!(r.ask("ping"), format!("pong {}", r.pid));
    assert_eq!(r.ask("grow"), "grow True");
    assert_eq!(r.ask("free"), "free True");
    assert_eq!(r.ask("discard"), "discard True True");
    assert_eq!(r.ask("fork"), "fork 0");
}

#[test]
fn lazy_restore_serves_moved_freed_and_discarded_memory_right() {
    if !privileged("lazy_restore_serves_moved_freed_and_discarded_memory_right") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let (mut r, server) = common::restore_served(&img, &options(&img, Policy::Lazy));
    check_memory(&mut r);
    let live = server.stats();
    assert!(live.faults > 0 && live.events > 0, "{live:?}");
    assert!(
        live.pages_installed < img.meta.pages.count,
        "lazy installs only what is touched: {live:?}"
    );
    drop(r); // kills the process: the server ends with it
    let end = server.wait().unwrap();
    assert!(end.bytes_fetched >= end.pages_installed * 4096, "{end:?}");
}

#[test]
fn bulk_restore_fills_everything_then_its_server_ends() {
    if !privileged("bulk_restore_fills_everything_then_its_server_ends") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let (mut r, server) = common::restore_served(&img, &options(&img, Policy::Bulk));
    assert_eq!(r.ask("ping"), format!("pong {}", r.pid));
    // The first fault started the background fill; it ends on its own, process alive.
    for _ in 0..500 {
        if server.is_finished() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        server.is_finished(),
        "bulk server still running: {:?}",
        server.stats()
    );
    let s = server.wait().unwrap();
    // Everything but the few pages installed before the process ran (file-private copies,
    // arguments, glibc's thread descriptor).
    assert!(
        s.pages_installed * 10 >= img.meta.pages.count * 9,
        "{s:?} of {}",
        img.meta.pages.count
    );
    check_memory(&mut r);
}
