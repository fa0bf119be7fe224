//! Re-dumps of restored processes and layers: a process restored under any policy dumps to a
//! complete image, and dumps as a layer over the image it came from (only the pages that
//! differ); a layer whose parent is missing, changed or corrupted, or that points outside its
//! parent, is refused by name.

mod common;

use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use common::{Conv, chain, privileged, tmp};
use ember_snap::image::format::CHUNK_PAGES;
use ember_snap::image::{PAGE, read_meta, write_image};
use ember_snap::lazy::{PageSource, Policy};
use ember_snap::{DumpOptions, LoadedImage, RestoreOptions};

const ALL: [Policy; 5] = [
    Policy::Eager,
    Policy::Lazy,
    Policy::Bulk,
    Policy::Prefetch,
    Policy::Mapped,
];

/// The fidelity case `redump_heap` (a spread of heap and anonymous pages, a sparse 256 MiB
/// area), compiled once per test binary.
fn case_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fidelity/redump_heap.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("layers-redump_heap-{}", std::process::id()));
        common::compile(&src, &out);
        out
    })
}

fn opts() -> DumpOptions {
    DumpOptions {
        inherited: vec![0, 1, 2],
        ..Default::default()
    }
}

/// Starts the case, dumps it into `dir/image` and loads that.
fn parent_image(dir: &Path) -> Arc<LoadedImage> {
    let mut cmd = Command::new(case_bin());
    // SAFETY: close_range is async-signal-safe; it drops descriptors the harness leaks.
    unsafe {
        cmd.pre_exec(|| {
            libc::close_range(3, u32::MAX, 0);
            Ok(())
        });
    }
    let mut original = Conv::spawn(&mut cmd);
    assert_eq!(original.line(), "ready");
    let out = dir.join("image");
    ember_snap::dump(original.pid, &out, &opts()).unwrap();
    Arc::new(LoadedImage::load(&out).unwrap())
}

/// Restores `img` under `policy`; for prefetch, with the working set a lazy restore's
/// `check` touched.
fn restore(img: &Arc<LoadedImage>, policy: Policy) -> (Conv, Option<ember_snap::lazy::PageServer>) {
    let working_set = (policy == Policy::Prefetch).then(|| {
        let (mut c, s) = restore(img, Policy::Lazy);
        assert_eq!(c.ask("check"), "ok");
        Arc::new(s.unwrap().working_set())
    });
    let o = RestoreOptions {
        policy,
        source: Some(img.clone() as Arc<dyn PageSource>),
        working_set,
        ..RestoreOptions::default()
    };
    if matches!(policy, Policy::Lazy | Policy::Bulk | Policy::Prefetch) {
        let (c, s) = common::restore_served(img, &o);
        (c, Some(s))
    } else {
        (common::restore_with(img, &o), None)
    }
}

/// The kernel facts the re-dump relies on (docs/snap.md): a page a lazy restore has not
/// given the process yet reads as EIO through /proc/PID/mem, and `process_vm_readv` of it
/// waits for the page server and gets the image's content.
#[test]
fn pages_not_yet_served_fail_in_proc_mem_and_fault_in_through_process_vm_readv() {
    if !privileged("pages_not_yet_served_fail_in_proc_mem_and_fault_in_through_process_vm_readv") {
        return;
    }
    let dir = tmp();
    let img = parent_image(dir.path());
    let (r, server) = restore(&img, Policy::Lazy);
    // The last stored page of the biggest run: anonymous memory nobody touched since.
    let run = img.meta.pages.runs.iter().max_by_key(|r| r.pages).unwrap();
    let addr = run.addr + (u64::from(run.pages) - 1) * 4096;
    let i = (run.first + u64::from(run.pages) - 1) as usize;
    let want = &img.page_data()[i * 4096..(i + 1) * 4096];
    let before = server.as_ref().unwrap().stats().pages_installed;
    let mem = std::fs::File::open(format!("/proc/{}/mem", r.pid)).unwrap();
    let mut buf = vec![0u8; 4096];
    let e = mem.read_exact_at(&mut buf, addr).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    ember_snap::sys::read_mem(r.pid, addr, &mut buf).unwrap();
    assert_eq!(&buf[..], want);
    // The copy wakes the reader before the server counts it: give the count a moment.
    let server = server.as_ref().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while server.stats().pages_installed <= before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        server.stats().pages_installed > before,
        "{:?}",
        server.stats()
    );
}

/// Right after a lazy restore (nothing touched), a layer holds nearly nothing of its own,
/// and restores exactly under every policy; a whole re-dump is complete too.
#[test]
fn a_layer_after_a_lazy_restore_is_complete_and_smaller_than_a_whole_dump() {
    if !privileged("a_layer_after_a_lazy_restore_is_complete_and_smaller_than_a_whole_dump") {
        return;
    }
    let dir = tmp();
    let img = parent_image(dir.path());
    for policy in [Policy::Lazy, Policy::Bulk, Policy::Prefetch, Policy::Eager] {
        let (r, server) = restore(&img, policy);
        let layer = dir.path().join(format!("layer-{policy}"));
        let whole = dir.path().join(format!("whole-{policy}"));
        let ls = ember_snap::dump_layer(r.pid, &layer, &opts(), &img).unwrap();
        let ws = ember_snap::dump(r.pid, &whole, &opts()).unwrap();
        drop(r);
        let served = server.as_ref().map(|s| s.stats());
        eprintln!("after {policy}: layer {ls:?}\n  whole {ws:?}\n  server {served:?}");
        // The layer's reads of the untouched sparse area fault through the server: one zero
        // fault fills a window of pages, not one page each (66,924 faults, 1.8-3.8 s stopped).
        if let Some(s) = served.filter(|_| ls.faulted_in > 0) {
            assert!(
                s.zero_faults * 20 < ls.faulted_in,
                "{policy}: {s:?} for {ls:?}"
            );
        }
        // Every page of the image, whatever the restore had given the process (a few may
        // differ in content, none is missing).
        assert!(
            ws.pages + 4 >= img.meta.pages.count,
            "{policy}: whole re-dump {ws:?} of {}",
            img.meta.pages.count
        );
        assert!(
            ls.pages * 20 < ws.pages && ls.parent_pages + ls.pages == ws.pages,
            "{policy}: layer {ls:?} against whole {ws:?}"
        );
        let meta = read_meta(&layer).unwrap();
        let p = meta.parent.as_ref().unwrap();
        assert_eq!(p.id, img.meta.id);
        assert_eq!(p.meta_hash, img.meta_hash());
        let l = Arc::new(LoadedImage::load(&layer).unwrap());
        assert_eq!(l.depth(), 1);
        for p2 in ALL {
            let (mut q, _s) = restore(&l, p2);
            assert_eq!(
                q.ask("check"),
                "ok",
                "layer taken after {policy}, restored {p2}"
            );
        }
    }
}

/// With the page server of its lazy restore at hand, a dump reads the pages not installed
/// yet from the server's source and faults nothing in (the sparse area stays untouched);
/// the image is the same.
#[test]
fn a_dump_given_the_page_server_faults_nothing_in() {
    if !privileged("a_dump_given_the_page_server_faults_nothing_in") {
        return;
    }
    let dir = tmp();
    let img = parent_image(dir.path());
    for policy in [Policy::Lazy, Policy::Bulk, Policy::Prefetch] {
        let (r, server) = restore(&img, policy);
        let server = server.unwrap();
        let before = server.stats();
        let lineage = ember_snap::Lineage {
            parent: Some(&img),
            server: Some(&server),
        };
        let at = dir.path().join(format!("served-{policy}"));
        let st = ember_snap::dump_restored(r.pid, &at, &opts(), lineage).unwrap();
        let after = server.stats();
        eprintln!("{policy}: {st:?}");
        assert_eq!(st.faulted_in, 0, "{policy}: {st:?}");
        assert_eq!(after.zero_faults, before.zero_faults, "{policy}");
        assert!(st.pages * 20 < st.parent_pages, "{policy}: {st:?}");
        drop(r);
        let l = Arc::new(LoadedImage::load(&at).unwrap());
        let (mut q, _s) = restore(&l, Policy::Eager);
        assert_eq!(q.ask("check"), "ok", "{policy}");
    }
}

/// A layer served by a page server (`ember snap serve` loads it flattened, as the client
/// does) restores lazily from it; its page file alone is refused as a source.
#[test]
fn a_layer_restores_lazily_from_a_page_server() {
    if !privileged("a_layer_restores_lazily_from_a_page_server") {
        return;
    }
    let dir = tmp();
    let img = parent_image(dir.path());
    let (mut r, _s) = restore(&img, Policy::Lazy);
    assert_eq!(r.ask("check"), "ok");
    let at = dir.path().join("layer");
    ember_snap::dump_layer(r.pid, &at, &opts(), &img).unwrap();
    drop(r);
    let served = Arc::new(LoadedImage::load(&at).unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || ember_snap::lazy::remote::serve(listener, "t".into(), vec![served]));
    let here = Arc::new(LoadedImage::open(&at).unwrap());
    let src = ember_snap::lazy::RemoteSource::connect(&addr, "t", &here.meta).unwrap();
    let o = RestoreOptions {
        policy: Policy::Lazy,
        source: Some(Arc::new(src) as Arc<dyn PageSource>),
        ..RestoreOptions::default()
    };
    let (mut q, _server) = common::restore_served(&here, &o);
    assert_eq!(q.ask("check"), "ok");
    let e = ember_snap::lazy::FileSource::open(&at, &here.meta)
        .err()
        .unwrap();
    assert!(e.to_string().contains("is a layer"), "{e}");
}

/// A layer over a layer: what the second process changed is the second layer's own; the
/// rest resolves through both parents.
#[test]
fn a_layer_over_a_layer_restores_what_each_changed() {
    if !privileged("a_layer_over_a_layer_restores_what_each_changed") {
        return;
    }
    let dir = tmp();
    let img = parent_image(dir.path());
    let (mut r, _s) = restore(&img, Policy::Lazy);
    assert_eq!(r.ask("check"), "ok");
    let l1 = dir.path().join("l1");
    ember_snap::dump_layer(r.pid, &l1, &opts(), &img).unwrap();
    drop(r);
    let l1 = Arc::new(LoadedImage::load(&l1).unwrap());
    let (mut r, _s) = restore(&l1, Policy::Lazy);
    assert_eq!(r.ask("check"), "ok");
    let l2 = dir.path().join("l2");
    let st = ember_snap::dump_layer(r.pid, &l2, &opts(), &l1).unwrap();
    drop(r);
    assert!(st.parent_pages > st.pages, "{st:?}");
    let l2 = Arc::new(LoadedImage::load(&l2).unwrap());
    assert_eq!(l2.depth(), 2);
    for p in ALL {
        let (mut q, _s) = restore(&l2, p);
        assert_eq!(q.ask("check"), "ok", "{p}");
    }
}

fn load_err(dir: &Path) -> String {
    match LoadedImage::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => chain(&e),
    }
}

/// Rewrites the image at `dir` (a layer) with `change` applied to its on-disk metadata and
/// its own pages kept.
fn rewrite_layer(dir: &Path, change: impl FnOnce(&mut ember_snap::Meta)) {
    let mut m = read_meta(dir).unwrap();
    let own = std::fs::read(dir.join("pages")).unwrap()[4096..].to_vec();
    change(&mut m);
    write_image(dir, &mut m, &own).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_layer_whose_parent_is_missing_changed_corrupted_or_out_of_range_is_refused() {
    if !privileged("a_layer_whose_parent_is_missing_changed_corrupted_or_out_of_range_is_refused") {
        return;
    }
    let dir = tmp();
    let img = parent_image(dir.path());
    let parent_dir = dir.path().join("image");
    let (mut r, _s) = restore(&img, Policy::Lazy);
    assert_eq!(r.ask("check"), "ok");
    let layer = dir.path().join("layer");
    ember_snap::dump_layer(r.pid, &layer, &opts(), &img).unwrap();
    drop(r);
    LoadedImage::load(&layer).unwrap();

    // Parent moved away: refused, naming it; given by the caller, it loads.
    let moved = dir.path().join("moved");
    std::fs::rename(&parent_dir, &moved).unwrap();
    let e = load_err(&layer);
    assert!(
        e.contains("is a layer over") && e.contains(&parent_dir.display().to_string()),
        "{e}"
    );
    let p = LoadedImage::load(&moved).unwrap();
    LoadedImage::load_with_parent(&layer, &p).unwrap();

    // Another image in its place (same pages, other id): refused.
    let other = dir.path().join("other");
    copy_dir(&moved, &other);
    {
        let mut m = read_meta(&other).unwrap();
        let data = LoadedImage::load(&other).unwrap().page_data().to_vec();
        m.id[0] ^= 1;
        write_image(&other, &mut m, &data).unwrap();
    }
    std::fs::rename(&other, &parent_dir).unwrap();
    let e = load_err(&layer);
    assert!(e.contains("is another image"), "{e}");

    // The parent changed (same id, other metadata): refused.
    std::fs::remove_dir_all(&parent_dir).unwrap();
    copy_dir(&moved, &parent_dir);
    {
        let mut m = read_meta(&parent_dir).unwrap();
        let data = LoadedImage::load(&parent_dir).unwrap().page_data().to_vec();
        m.created += 1;
        write_image(&parent_dir, &mut m, &data).unwrap();
    }
    let e = load_err(&layer);
    assert!(e.contains("has changed since the layer was taken"), "{e}");

    // The parent's pages corrupted: refused, naming the parent's page file.
    std::fs::remove_dir_all(&parent_dir).unwrap();
    copy_dir(&moved, &parent_dir);
    LoadedImage::load(&layer).unwrap();
    let pages = parent_dir.join("pages");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .unwrap();
    f.write_all_at(b"X", 4096 * 3 + 5).unwrap();
    let e = load_err(&layer);
    assert!(
        e.contains("the parent cannot be loaded") && e.contains(&pages.display().to_string()),
        "{e}"
    );
    std::fs::remove_dir_all(&parent_dir).unwrap();
    copy_dir(&moved, &parent_dir);

    // A hostile layer: a run past the end of its index space (own pages, then the
    // parent's).
    let good = read_meta(&layer).unwrap();
    let space = good.pages.count + good.parent.as_ref().unwrap().space;
    rewrite_layer(&layer, |m| {
        let r = m.pages.runs.iter_mut().max_by_key(|r| r.pages).unwrap();
        r.first = space - 1;
    });
    let e = load_err(&layer);
    assert!(e.contains("corrupted") && e.contains("index space"), "{e}");
}

/// A layer's own chunks from a [`ChunkFetch`] (here its page file, read as a store would be,
/// with a switch that garbles what it returns), counted.
struct Fetcher {
    file: std::fs::File,
    count: u64,
    garble: std::sync::atomic::AtomicBool,
    asked: std::sync::atomic::AtomicU64,
}

impl ember_snap::lazy::ChunkFetch for Fetcher {
    fn describe(&self) -> String {
        "test fetcher".into()
    }
    fn fetch(&self, chunks: &[u64]) -> Result<Vec<Vec<u8>>, String> {
        use std::sync::atomic::Ordering;
        self.asked.fetch_add(chunks.len() as u64, Ordering::SeqCst);
        chunks
            .iter()
            .map(|&c| {
                let len = ember_snap::image::pack::chunk_bytes(self.count, c);
                let mut b = vec![0u8; len as usize];
                self.file
                    .read_exact_at(&mut b, PAGE * (1 + c * CHUNK_PAGES))
                    .map_err(|e| e.to_string())?;
                if self.garble.load(Ordering::SeqCst) {
                    b[7] ^= 0x40;
                }
                Ok(b)
            })
            .collect()
    }
}

/// A layer opened without its own pages over its loaded parent restores exactly from a
/// [`LayerSource`]: with its recorded working set installed first from its pack (the pack
/// alone serves what the working set names: nothing else is fetched before the process
/// runs), the rest fetched on fault; a fetched chunk that fails its hash is never installed
/// (the process is killed, the server names the chunk); a garbled pack is refused.
#[test]
fn a_layer_restores_over_its_parent_with_its_own_pages_fetched_and_checked() {
    use ember_snap::image::{pack, read_working_set, write_working_set};
    use ember_snap::lazy::LayerSource;
    use std::sync::atomic::Ordering;
    if !privileged("a_layer_restores_over_its_parent_with_its_own_pages_fetched_and_checked") {
        return;
    }
    let dir = tmp();
    let img = parent_image(dir.path());
    // A layer holding every page of the process as its own (a dump of a process restored
    // from its image holds only what it changed: a page or two here): a whole re-dump, made
    // a layer over the image, its runs all pointing at its own pages.
    let (mut r, _s) = restore(&img, Policy::Lazy);
    assert_eq!(r.ask("check"), "ok");
    let whole = dir.path().join("whole");
    ember_snap::dump(r.pid, &whole, &opts()).unwrap();
    drop(r);
    let at = dir.path().join("layer");
    std::fs::create_dir(&at).unwrap();
    let mut own = read_meta(&whole).unwrap();
    let data = std::fs::read(whole.join("pages")).unwrap()[4096..].to_vec();
    own.parent = Some(ember_snap::image::ParentRef {
        id: img.meta.id,
        meta_hash: img.meta_hash(),
        space: img.space_len(),
        path: dir.path().join("image").display().to_string(),
    });
    write_image(&at, &mut own, &data).unwrap();
    let own = read_meta(&at).unwrap();
    assert!(
        own.pages.chunks.len() > 50,
        "{} own chunks",
        own.pages.chunks.len()
    );

    // The working set a lazy restore of the flattened layer touches, in its index space.
    let flat = Arc::new(LoadedImage::load_with_parent(&at, &img).unwrap());
    let (mut q, s) = restore(&flat, Policy::Lazy);
    assert_eq!(q.ask("check"), "ok");
    drop(q);
    // With what any lazy restore installs before the process runs.
    let mut touched = ember_snap::restore::first_pages(&flat);
    touched.extend(s.unwrap().working_set());
    let space: Vec<u64> = touched.iter().map(|&i| flat.space_index(i)).collect();
    write_working_set(&at, &own, &space).unwrap();
    let packed = pack::write_pack(&at, &own, &space).unwrap();
    assert!(packed > 0, "the working set names own pages");

    let fetcher = |garble: bool| {
        Arc::new(Fetcher {
            file: std::fs::File::open(at.join("pages")).unwrap(),
            count: own.pages.count,
            garble: garble.into(),
            asked: 0.into(),
        })
    };
    // Prefetch: the pack serves the working set.
    let (lazy_img, lp) = LoadedImage::open_layer(&at, &img).unwrap();
    assert!(!lazy_img.is_loaded());
    assert_eq!(lazy_img.meta.pages.runs, flat.meta.pages.runs);
    let f = fetcher(false);
    let src = Arc::new(LayerSource::new(lp, img.clone(), f.clone()));
    let read = pack::read_pack(&at, &own).unwrap().unwrap();
    for (c, data) in read.chunks() {
        assert!(
            src.offer(*c, data.clone()),
            "chunk {c} passes its check again"
        );
    }
    assert!(src.offer_pack(read));
    let ws = read_working_set(&at, &own).unwrap().unwrap();
    let o = RestoreOptions {
        policy: Policy::Prefetch,
        source: Some(src.clone() as Arc<dyn PageSource>),
        working_set: Some(Arc::new(lazy_img.flat_indices(&ws))),
        ..RestoreOptions::default()
    };
    let (mut q, server) = common::restore_served(&lazy_img, &o);
    let before_run = f.asked.load(Ordering::SeqCst);
    assert_eq!(q.ask("check"), "ok");
    eprintln!(
        "own chunks {}, packed {packed}, fetched before running {before_run}, after {}, stats {:?}",
        own.pages.chunks.len(),
        f.asked.load(Ordering::SeqCst),
        server.stats()
    );
    assert_eq!(
        before_run, 0,
        "the pack held what the restore installs first"
    );
    drop(q);

    // Lazy without the pack: every own chunk fetched on fault (or with what is installed
    // first), each once.
    let (lazy_img, lp) = LoadedImage::open_layer(&at, &img).unwrap();
    let f = fetcher(false);
    let src = Arc::new(LayerSource::new(lp, img.clone(), f.clone()));
    let o = RestoreOptions {
        policy: Policy::Lazy,
        source: Some(src.clone() as Arc<dyn PageSource>),
        ..RestoreOptions::default()
    };
    let (mut q, _server) = common::restore_served(&lazy_img, &o);
    assert_eq!(q.ask("check"), "ok");
    let asked = f.asked.load(Ordering::SeqCst);
    assert!(
        asked > 0 && asked <= own.pages.chunks.len() as u64,
        "{asked}"
    );
    assert_eq!(src.fetched_chunks(), asked);
    assert!(src.missing().len() as u64 + asked == own.pages.chunks.len() as u64);
    drop(q);

    // Lazy, every own chunk fetched and garbled: nothing garbled runs.
    let (lazy_img, lp) = LoadedImage::open_layer(&at, &img).unwrap();
    let src = Arc::new(LayerSource::new(lp, img.clone(), fetcher(true)));
    let o = RestoreOptions {
        policy: Policy::Lazy,
        source: Some(src as Arc<dyn PageSource>),
        ..RestoreOptions::default()
    };
    match common::try_restore_served(&lazy_img, &o) {
        // Failed while installing what cannot wait for a fault.
        Err(e) => assert!(chain(&e).contains("fails its hash check"), "{}", chain(&e)),
        Ok((mut q, server)) => {
            q.send("check");
            let sig = common::wait_signal(q.pid);
            assert_eq!(sig, libc::SIGKILL);
            let e = server.wait().unwrap_err();
            assert!(chain(&e).contains("fails its hash check"), "{}", chain(&e));
        }
    }

    // A garbled pack: refused by name.
    let p = at.join(pack::PACK_FILE);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let len = f.metadata().unwrap().len();
    f.write_all_at(b"X", len - 100).unwrap();
    let e = chain(&pack::read_pack(&at, &own).unwrap_err());
    assert!(e.contains("fails its hash check"), "{e}");
    f.set_len(len - 1).unwrap();
    let e = chain(&pack::read_pack(&at, &own).unwrap_err());
    assert!(e.contains("its chunks need"), "{e}");
    // Not a layer: refused.
    let e = chain(
        &LoadedImage::open_layer(&dir.path().join("image"), &img)
            .err()
            .unwrap(),
    );
    assert!(e.contains("not a layer"), "{e}");
}
