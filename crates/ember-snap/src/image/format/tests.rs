//! The image format, its checks and its loading, on made-up images (no root needed).

use super::*;
use crate::image::{
    AltStack, Fd, FileId, ITimer, Ident, MmFields, PageIndex, PageRun, PosixTimer, ProcState,
    Requires, Source, Task, VdsoLayout, Vma,
};
use crate::image::{FdKind, VmaKind, vma_flags};

/// A small consistent image (one file mapping, a heap of two stored pages).
pub(crate) fn sample() -> (Meta, Vec<u8>) {
    let meta = Meta {
        id: [7; 16],
        created: 1,
        parent: None,
        source: Source {
            pid: 1,
            comm: "t".into(),
            exe: "/bin/t".into(),
            kernel: "k".into(),
        },
        requires: Requires {
            vdso: VdsoLayout {
                areas: vec![("[vdso]".into(), 0x7000_0000, 0x7000_2000)],
                vdso_hash: [1; 32],
            },
            xfeatures: 7,
            xstate_size: 2432,
            cpu_features: vec!["avx".into()],
        },
        files: vec![FileId {
            path: "/bin/t".into(),
            size: 10,
            mtime_ns: 5,
            ident: Ident::BuildId(vec![1, 2, 3]),
        }],
        vmas: vec![
            Vma {
                start: 0x40_0000,
                end: 0x40_1000,
                prot: 5,
                shared: false,
                kind: VmaKind::File { file: 0, offset: 0 },
                flags: 0,
                name: None,
            },
            Vma {
                start: 0x50_0000,
                end: 0x50_2000,
                prot: 3,
                shared: false,
                kind: VmaKind::Heap,
                flags: 0,
                name: None,
            },
        ],
        pages: PageIndex {
            runs: vec![PageRun {
                addr: 0x50_0000,
                pages: 2,
                first: 0,
            }],
            count: 2,
            chunks: Vec::new(),
        },
        task: Task {
            regs: vec![0; 27],
            xstate: vec![0; 64],
            sigmask: 0,
            sigactions: Vec::new(),
            sigaltstack: AltStack::default(),
            tid_address: 0,
            robust_list: (0, 0),
            rseq: None,
            glibc_tid_offset: None,
            syscall_insn: 0x40_0010,
            personality: 0,
            umask: 0o22,
            cwd: "/".into(),
            comm: "t".into(),
            creds: crate::creds::Creds::default(),
            tid: 1,
        },
        mm: MmFields::default(),
        fds: vec![Fd {
            fd: 0,
            cloexec: false,
            kind: FdKind::Inherited {
                what: "pipe".into(),
            },
        }],
        process: ProcState {
            rlimits: vec![(7, 1024, 4096)],
            seccomp: vec![vec![6, 0x7fff_0000_0000_0006]],
            pending_thread: vec![vec![1; 128]],
            itimers: vec![ITimer::default(); 3],
            timers: vec![PosixTimer::default()],
            ..ProcState::default()
        },
    };
    (meta, vec![0xab; 2 * PAGE as usize])
}

#[test]
fn an_image_round_trips() {
    let d = tempfile::tempdir().unwrap();
    let (mut m, pages) = sample();
    write_image(d.path(), &mut m, &pages).unwrap();
    let img = LoadedImage::load(d.path()).unwrap();
    assert_eq!(img.meta, m);
    assert_eq!(img.page_data(), &pages[..]);
}

/// Every byte of the metadata flipped, with the hash made to match again (a hostile
/// writer, not a disk error): loading refuses or accepts a consistent image, never panics.
#[test]
fn hostile_metadata_never_panics_the_loader() {
    let d = tempfile::tempdir().unwrap();
    let (mut m, pages) = sample();
    write_image(d.path(), &mut m, &pages).unwrap();
    let good = std::fs::read(d.path().join(META_FILE)).unwrap();
    let body_len = good.len() - META_HEADER;
    let mut refused = 0;
    for i in 0..body_len {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[META_HEADER + i] ^= flip;
            let hash = *blake3::hash(&bad[META_HEADER..]).as_bytes();
            bad[24..56].copy_from_slice(&hash);
            std::fs::write(d.path().join(META_FILE), &bad).unwrap();
            if LoadedImage::load(d.path()).is_err() {
                refused += 1;
            }
        }
    }
    // Register values, sizes and names may take any value; ids, indices, addresses and
    // the encoding itself may not.
    assert!(
        refused > body_len / 2,
        "only {refused} of {} refused",
        3 * body_len
    );
}

#[test]
fn a_working_set_round_trips_and_a_bad_one_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (mut m, pages) = sample();
    write_image(d.path(), &mut m, &pages).unwrap();
    assert_eq!(read_working_set(d.path(), &m).unwrap(), None);
    write_working_set(d.path(), &m, &[1, 0, 1, 99]).unwrap();
    assert_eq!(read_working_set(d.path(), &m).unwrap(), Some(vec![1, 0]));
    let f = d.path().join(WORKING_SET_FILE);
    let mut raw = std::fs::read(&f).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    std::fs::write(&f, &raw).unwrap();
    let e = read_working_set(d.path(), &m).unwrap_err().to_string();
    assert!(
        e.contains("workingset") && e.contains("hash mismatch"),
        "{e}"
    );
}

/// New fields are checked: area flags, names, shared descriptors, descriptor flags.
#[test]
fn bad_flags_names_and_descriptors_are_refused() {
    let d = tempfile::tempdir().unwrap();
    type Break = fn(&mut Meta);
    let cases: [(&str, Break); 6] = [
        ("unknown flags", |m| m.vmas[1].flags = 1 << 30),
        ("wipes on fork", |m| m.vmas[0].flags = vma_flags::WIPEONFORK),
        ("named but not anonymous", |m| {
            m.vmas[1].name = Some("x".into())
        }),
        ("descriptor 0 has unknown flags", |m| {
            m.fds[0].kind = FdKind::File {
                file: 0,
                pos: 0,
                flags: libc::O_CREAT as u32,
            }
        }),
        ("shares descriptor 0", |m| {
            m.fds.push(crate::image::Fd {
                fd: 3,
                cloexec: false,
                kind: FdKind::Dup { of: 0 },
            })
        }),
        ("out of order", |m| {
            let first = m.fds[0].clone();
            m.fds.push(first)
        }),
    ];
    for (want, break_it) in cases {
        let (mut m, pages) = sample();
        break_it(&mut m);
        write_image(d.path(), &mut m, &pages).unwrap();
        let e = read_meta(d.path()).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
    let (mut m, pages) = sample();
    m.vmas.insert(
        1,
        crate::image::Vma {
            start: 0x48_0000,
            end: 0x48_1000,
            prot: 3,
            shared: false,
            kind: VmaKind::Anon,
            flags: vma_flags::GROWSDOWN | vma_flags::LOCKED | vma_flags::WIPEONFORK,
            name: Some("a name".into()),
        },
    );
    write_image(d.path(), &mut m, &pages).unwrap();
    assert_eq!(read_meta(d.path()).unwrap(), m);
    m.vmas[1].name = Some("[bad]".into());
    write_image(d.path(), &mut m, &pages).unwrap();
    let e = read_meta(d.path()).unwrap_err().to_string();
    assert!(e.contains("invalid name"), "{e}");
}

/// Writes `sample()` with distinct pages as the parent at `dir/p`, and a layer over it
/// at `dir/l` whose first page is the parent's second and second page its own.
fn layered(dir: &Path) -> (PathBuf, PathBuf, Meta) {
    let (mut pm, _) = sample();
    let mut pdata = vec![0x11u8; PAGE as usize];
    pdata.extend(vec![0x22u8; PAGE as usize]);
    let p = dir.join("p");
    write_image(&p, &mut pm, &pdata).unwrap();
    let (_, hash) = read_meta_hashed(&p).unwrap();
    let (mut lm, _) = sample();
    lm.id = [9; 16];
    lm.parent = Some(crate::image::ParentRef {
        id: pm.id,
        meta_hash: hash,
        space: 2,
        path: p.display().to_string(),
    });
    lm.pages.runs = vec![
        PageRun {
            addr: 0x50_0000,
            pages: 1,
            first: 1 + 1,
        },
        PageRun {
            addr: 0x50_1000,
            pages: 1,
            first: 0,
        },
    ];
    let l = dir.join("l");
    write_image(&l, &mut lm, &vec![0x33u8; PAGE as usize]).unwrap();
    (p, l, lm)
}

#[test]
fn a_layer_loads_flattened_over_its_parent() {
    let d = tempfile::tempdir().unwrap();
    let (p, l, _) = layered(d.path());
    let img = LoadedImage::load(&l).unwrap();
    assert_eq!(img.depth(), 1);
    assert_eq!(img.meta.pages.count, 2);
    assert_eq!(img.page_at(0x50_0000), Some(0));
    assert_eq!(img.page_data()[0], 0x22);
    assert_eq!(img.page_data()[PAGE as usize], 0x33);
    assert_eq!((img.space_index(0), img.space_index(1)), (2, 0));
    assert!(chunk_ok(&img.meta, 0, img.page_data()));
    let parent = LoadedImage::load(&p).unwrap();
    let again = LoadedImage::load_with_parent(&l, &parent).unwrap();
    assert_eq!(again.page_data(), img.page_data());
    // Not from its page file: it holds only the layer's own page.
    let e = crate::lazy::FileSource::open(&l, &img.meta).err().unwrap();
    let e = e.to_string();
    assert!(
        e.contains("is a layer") && e.contains("--source memory"),
        "{e}"
    );
}

#[test]
fn a_layer_pointing_past_its_index_space_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (_, l, mut lm) = layered(d.path());
    lm.pages.runs[0].first = 3;
    write_image(&l, &mut lm, &vec![0x33u8; PAGE as usize]).unwrap();
    let e = read_meta(&l).unwrap_err().to_string();
    assert!(e.contains("index space of 3"), "{e}");
    lm.pages.runs[0].first = 1;
    lm.parent.as_mut().unwrap().space = u64::MAX;
    write_image(&l, &mut lm, &vec![0x33u8; PAGE as usize]).unwrap();
    let e = read_meta(&l).unwrap_err().to_string();
    assert!(e.contains("parent's index space"), "{e}");
}

#[test]
fn more_than_eight_layers_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let (_, mut below, _) = layered(d.path());
    // Each new layer: every page its parent's.
    for depth in 2..=MAX_DEPTH + 1 {
        let (meta, hash) = read_meta_hashed(&below).unwrap();
        let img = LoadedImage::load(&below);
        let (mut m, _) = sample();
        m.id = [depth as u8 + 20; 16];
        m.parent = Some(crate::image::ParentRef {
            id: meta.id,
            meta_hash: hash,
            space: meta.pages.count + meta.parent.as_ref().unwrap().space,
            path: below.display().to_string(),
        });
        // The pages the parent holds: its space indices 2 and 0 (as in `layered`).
        m.pages.runs = vec![
            PageRun {
                addr: 0x50_0000,
                pages: 1,
                first: 2,
            },
            PageRun {
                addr: 0x50_1000,
                pages: 1,
                first: 0,
            },
        ];
        let at = d.path().join(format!("l{depth}"));
        write_image(&at, &mut m, &[]).unwrap();
        let loaded = LoadedImage::load(&at);
        if depth <= MAX_DEPTH {
            assert!(img.is_ok());
            assert_eq!(loaded.unwrap().depth(), depth);
        } else {
            let e = loaded.err().unwrap().to_string();
            assert!(e.contains("more than 8 layers"), "{e}");
        }
        below = at;
    }
}

/// Every byte of a layer's metadata flipped (hash made to match): loading it over its
/// parent refuses or accepts, never panics.
#[test]
fn hostile_layer_metadata_never_panics_the_loader() {
    let d = tempfile::tempdir().unwrap();
    let (p, l, _) = layered(d.path());
    let parent = LoadedImage::load(&p).unwrap();
    let good = std::fs::read(l.join(META_FILE)).unwrap();
    for i in META_HEADER..good.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[i] ^= flip;
            let hash = *blake3::hash(&bad[META_HEADER..]).as_bytes();
            bad[24..56].copy_from_slice(&hash);
            std::fs::write(l.join(META_FILE), &bad).unwrap();
            let _ = LoadedImage::load_with_parent(&l, &parent);
            let _ = LoadedImage::load(&l);
        }
    }
}

#[test]
fn runs_outside_private_memory_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let (mut m, pages) = sample();
    m.pages.runs[0].addr = 0x40_0000 - PAGE;
    write_image(d.path(), &mut m, &pages).unwrap();
    let e = read_meta(d.path()).unwrap_err().to_string();
    assert!(e.contains("outside the image's private memory"), "{e}");
}

/// Process-wide state past its caps (an image the dump would have refused, or a
/// hostile one) is refused by name when the image is read.
#[test]
fn process_state_past_its_caps_is_refused() {
    let d = tempfile::tempdir().unwrap();
    type Spoil = fn(&mut ProcState);
    let cases: [(Spoil, &str); 5] = [
        (
            |p| p.pending_process = vec![vec![0; 128]; MAX_PENDING + 1],
            "queued signals",
        ),
        (|p| p.pending_thread = vec![vec![0; 64]], "queued signals"),
        (|p| p.seccomp = vec![vec![6]; MAX_FILTERS + 1], "seccomp"),
        (|p| p.seccomp = vec![vec![6; MAX_FILTER_LEN + 1]], "seccomp"),
        (|p| p.rlimits = vec![(16, 0, 0)], "resource limits"),
    ];
    for (spoil, what) in cases {
        let (mut m, pages) = sample();
        spoil(&mut m.process);
        write_image(d.path(), &mut m, &pages).unwrap();
        let e = read_meta(d.path()).unwrap_err().to_string();
        assert!(e.contains("is corrupted") && e.contains(what), "{e}");
    }
}

/// Runs `f` on its own thread: its answer, or a failure if it takes over 30 s (a hostile
/// image must not hang the loader).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{what} did not answer in 30 s ({e})"))
}

/// 2^20 descriptors, the upper half sharing the last reopened file: checked by binary
/// search, not a scan of the list per descriptor (2.7e11 comparisons, hours).
#[test]
fn a_million_shared_descriptors_are_checked_quickly() {
    let (mut m, _) = sample();
    m.pages.chunks = vec![[0; 32]];
    let n = 1 << 20;
    m.fds = (0..=n)
        .map(|fd| Fd {
            fd,
            cloexec: false,
            kind: if fd < n / 2 {
                FdKind::File {
                    file: 0,
                    pos: 0,
                    flags: 0,
                }
            } else {
                FdKind::Dup { of: n / 2 - 1 }
            },
        })
        .collect();
    within("validate", move || validate(&m)).unwrap();
}

/// 2^20 one-page areas and a page run in each of the upper half: each run's area found
/// by binary search, not a scan of the areas per run.
#[test]
fn a_million_page_runs_are_checked_quickly() {
    let (mut m, _) = sample();
    let n: u64 = 1 << 20;
    let base = 0x1000_0000;
    m.vmas.truncate(1);
    m.vmas.extend((0..n).map(|i| Vma {
        start: base + i * PAGE,
        end: base + (i + 1) * PAGE,
        prot: 3,
        shared: false,
        kind: VmaKind::Anon,
        flags: 0,
        name: None,
    }));
    m.pages.runs = (0..n / 2)
        .map(|i| PageRun {
            addr: base + (n / 2 + i) * PAGE,
            pages: 1,
            first: i,
        })
        .collect();
    m.pages.count = n / 2;
    m.pages.chunks = vec![[0; 32]; (n / 2).div_ceil(CHUNK_PAGES) as usize];
    within("validate", move || validate(&m)).unwrap();
}

/// A layer whose runs name one page (the parent's, or its own) at two addresses is
/// refused: a few bytes of runs cannot make the loader copy gigabytes.
#[test]
fn a_layer_naming_a_page_twice_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (p, l, mut lm) = layered(d.path());
    let parent = LoadedImage::load(&p).unwrap();
    for first in [2, 0] {
        for r in &mut lm.pages.runs {
            r.first = first;
        }
        write_image(&l, &mut lm, &vec![0x33u8; PAGE as usize]).unwrap();
        let e = LoadedImage::load_with_parent(&l, &parent).err().unwrap();
        let e = e.to_string();
        assert!(
            e.contains(&format!("page {first} is named by two runs")),
            "{e}"
        );
    }
}

/// A NUMA policy area must be page-aligned, in order and whole inside one of the image's
/// areas: `mbind` never reaches the restorer's memory or the vDSO.
#[test]
fn numa_policy_areas_outside_the_image_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let area = |start: u64, end: u64| crate::image::AreaPolicy {
        start,
        end,
        policy: crate::image::MemPolicy {
            mode: 1,
            nodes: vec![1],
        },
    };
    let heap = area(0x50_0000, 0x50_2000);
    let cases = [
        vec![area(0x50_0000, 0x50_1800)],
        vec![area(0x7000_0000, 0x7000_1000)],
        vec![area(0x40_0000, 0x50_1000)],
        vec![area(0x50_1000, 0x50_2000), area(0x50_0000, 0x50_1000)],
        vec![heap.clone(), heap.clone()],
        vec![area(USER_END - PAGE, USER_END + PAGE)],
    ];
    for areas in cases {
        let (mut m, pages) = sample();
        m.process.area_policies = areas.clone();
        write_image(d.path(), &mut m, &pages).unwrap();
        let e = read_meta(d.path()).unwrap_err().to_string();
        assert!(e.contains("NUMA policy area"), "{areas:?}: {e}");
    }
    let (mut m, pages) = sample();
    m.process.area_policies = vec![area(0x40_0000, 0x40_1000), heap];
    write_image(d.path(), &mut m, &pages).unwrap();
    assert_eq!(read_meta(d.path()).unwrap(), m);
}

/// A layer's parent path is a plain one: no `.` or `..` anywhere.
#[test]
fn a_parent_path_with_dots_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (p, l, mut lm) = layered(d.path());
    for bad in ["../p", "x/../../p", "/a/../p", "./p", ""] {
        lm.parent.as_mut().unwrap().path = bad.into();
        write_image(&l, &mut lm, &vec![0x33u8; PAGE as usize]).unwrap();
        let e = LoadedImage::load(&l).err().unwrap().to_string();
        assert!(e.contains(&format!("parent path {bad:?}")), "{e}");
    }
    // Relative to the layer's directory, below it.
    std::fs::rename(&p, l.join("p")).unwrap();
    lm.parent.as_mut().unwrap().path = "p".into();
    write_image(&l, &mut lm, &vec![0x33u8; PAGE as usize]).unwrap();
    assert_eq!(LoadedImage::load(&l).unwrap().depth(), 1);
}

/// A FIFO or a device in place of `meta`, `pages` or `workingset` (of an image or of a
/// layer's parent) is refused by name; opening it does not block.
#[test]
fn a_fifo_or_device_in_place_of_an_image_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (p, l, _) = layered(d.path());
    let (m, _) = read_meta_hashed(&p).unwrap();
    for name in [META_FILE, PAGES_FILE, WORKING_SET_FILE] {
        for device in [true, false] {
            let at = p.join(name);
            let _ = std::fs::remove_file(&at);
            if device {
                std::os::unix::fs::symlink("/dev/zero", &at).unwrap();
            } else {
                let made = std::process::Command::new("mkfifo").arg(&at).status();
                assert!(made.unwrap().success());
            }
            let (pd, ld, m2) = (p.clone(), l.clone(), m.clone());
            let errors = within("loading", move || {
                [
                    read_working_set(&pd, &m2).err(),
                    LoadedImage::load(&pd).err(),
                    LoadedImage::load(&ld).err(),
                ]
                .map(|e| e.map(|e| error_chain(&e)))
            });
            let wanted = format!("{} is not an Ember image: not a regular file", at.display());
            let refused = match name {
                WORKING_SET_FILE => &errors[..1],
                _ => &errors[1..],
            };
            for e in refused {
                let e = e.as_deref().unwrap_or("accepted");
                assert!(e.contains(&wanted), "{name}: {e}");
            }
        }
        // Put the real file back.
        let (mut pm, _) = sample();
        let mut pdata = vec![0x11u8; PAGE as usize];
        pdata.extend(vec![0x22u8; PAGE as usize]);
        std::fs::remove_file(p.join(name)).unwrap();
        write_image(&p, &mut pm, &pdata).unwrap();
    }
}

/// An error and its sources, one line (as the CLI prints it).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

/// POSIX timers only on realtime, monotonic, boottime and the process's own CPU clocks:
/// not an `_ALARM` clock (a timer is made as root, before a handoff drops it), not
/// another process's CPU time.
#[test]
fn timers_on_other_clocks_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let thread_sched = -2;
    for (clock, ok) in [
        (libc::CLOCK_REALTIME, true),
        (libc::CLOCK_MONOTONIC, true),
        (libc::CLOCK_BOOTTIME, true),
        (-6, true),
        (thread_sched, true),
        (libc::CLOCK_REALTIME_ALARM, false),
        (libc::CLOCK_BOOTTIME_ALARM, false),
        (libc::CLOCK_TAI, false),
        (-5, false),
        (!1 << 3 | 2, false),
        (i32::MAX, false),
    ] {
        let (mut m, pages) = sample();
        m.process.timers[0].clock = clock;
        write_image(d.path(), &mut m, &pages).unwrap();
        match read_meta(d.path()) {
            Ok(_) => assert!(ok, "clock {clock} accepted"),
            Err(e) => {
                let e = e.to_string();
                assert!(!ok && e.contains(&format!("uses clock {clock}")), "{e}");
            }
        }
    }
}

/// A layer whose parent is gone says where to put it back.
#[test]
fn a_missing_parent_is_named_with_where_to_put_it() {
    let d = tempfile::tempdir().unwrap();
    let (p, l, _) = layered(d.path());
    std::fs::remove_dir_all(&p).unwrap();
    let e = LoadedImage::load(&l).err().unwrap().to_string();
    let want = format!("put the parent image back at {}", p.display());
    assert!(e.contains(&want), "{e}");
}
