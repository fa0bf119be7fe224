//! Lazy restore from a page server over TCP: a real one on loopback, an unreachable one, a
//! refusing one, and hostile ones (test fixtures) that turn bad mid-way.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{privileged, tmp};
use ember_snap::lazy::remote::{self, MAGIC};
use ember_snap::lazy::{PageSource, Policy, RemoteSource};
use ember_snap::{LoadedImage, RestoreOptions};

const TOKEN: &str = "t0ken";

fn memory_image(dir: &Path) -> Arc<LoadedImage> {
    Arc::new(common::dump_python("memory.py", &[], Path::new("/"), dir))
}

fn lazy_from(source: RemoteSource) -> RestoreOptions {
    RestoreOptions {
        policy: Policy::Lazy,
        source: Some(Arc::new(source) as Arc<dyn PageSource>),
        ..RestoreOptions::default()
    }
}

#[test]
fn a_lazy_restore_from_a_page_server_on_loopback_is_right() {
    if !privileged("a_lazy_restore_from_a_page_server_on_loopback_is_right") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let served = vec![img.clone()];
    std::thread::spawn(move || remote::serve(listener, TOKEN.into(), served));
    let meta_only = LoadedImage::open(&img.dir).unwrap();
    let src = RemoteSource::connect(&addr, TOKEN, &meta_only.meta).unwrap();
    let (mut r, server) = common::restore_served(&meta_only, &lazy_from(src));
    assert_eq!(r.ask("ping"), format!("pong {}", r.tid));
    assert_eq!(r.ask("grow"), "grow True");
    assert_eq!(r.ask("discard"), "discard True True");
    assert_eq!(r.ask("fork"), "fork 0");
    drop(r);
    let s = server.wait().unwrap();
    assert!(s.faults > 0 && s.bytes_fetched > 0, "{s:?}");

    // The wrong token, or an image it does not have: refused by name.
    let e = RemoteSource::connect(&addr, "nope", &meta_only.meta)
        .err()
        .unwrap();
    assert!(
        e.to_string().contains(&addr) && e.to_string().contains("bad token"),
        "{e}"
    );
    let mut other = meta_only.meta.clone();
    other.id = [9; 16];
    let e = RemoteSource::connect(&addr, TOKEN, &other).err().unwrap();
    assert!(e.to_string().contains("no such image"), "{e}");
}

#[test]
fn an_unreachable_page_server_fails_fast() {
    if !privileged("an_unreachable_page_server_fails_fast") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    // A port nobody listens on, and an address that drops packets (TEST-NET-1).
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    for addr in [closed.as_str(), "192.0.2.1:7070"] {
        let t = Instant::now();
        let e = RemoteSource::connect(addr, TOKEN, &img.meta).err().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{addr} took {:?}",
            t.elapsed()
        );
        assert!(e.to_string().contains(addr), "{e}");
    }
}

#[derive(Clone, Copy, Debug)]
enum Hostile {
    Garbage,
    Short,
    WrongHash,
    Disconnect,
    /// The right bytes, one every 100 ms.
    Trickle,
}

/// A page server that answers right until `bad` is set, then misbehaves in `how`.
fn hostile_server(img: Arc<LoadedImage>, how: Hostile, bad: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(s) = conn else { return };
            let (img, bad) = (img.clone(), bad.clone());
            std::thread::spawn(move || {
                let _ = hostile_conn(s, &img, how, &bad);
            });
        }
    });
    addr
}

fn hostile_conn(
    mut s: TcpStream,
    img: &LoadedImage,
    how: Hostile,
    bad: &AtomicBool,
) -> std::io::Result<()> {
    let mut head = [0u8; 10];
    s.read_exact(&mut head)?;
    assert_eq!(head[..8], MAGIC);
    let mut rest = vec![0u8; u16::from_le_bytes([head[8], head[9]]) as usize + 16];
    s.read_exact(&mut rest)?;
    let mut ok = vec![0u8];
    ok.extend_from_slice(&img.meta.pages.count.to_le_bytes());
    ok.extend_from_slice(&(img.meta.pages.chunks.len() as u32).to_le_bytes());
    s.write_all(&ok)?;
    loop {
        let mut n = [0u8; 2];
        s.read_exact(&mut n)?;
        let mut idx = vec![0u8; 4 * u16::from_le_bytes(n) as usize];
        s.read_exact(&mut idx)?;
        let mut reply = Vec::new();
        for c in idx.chunks_exact(4) {
            let c = u32::from_le_bytes(c.try_into().unwrap());
            let chunk = ember_snap::image::format::CHUNK_PAGES as usize * 4096;
            let start = c as usize * chunk;
            let end = (start + chunk).min(img.page_data().len());
            reply.extend_from_slice(&c.to_le_bytes());
            reply.extend_from_slice(&((end - start) as u32).to_le_bytes());
            reply.extend_from_slice(&img.page_data()[start..end]);
        }
        if bad.load(Ordering::SeqCst) {
            match how {
                Hostile::Garbage => reply.iter_mut().for_each(|b| *b = 0x5a),
                Hostile::Short => reply.truncate(reply.len() / 2),
                Hostile::WrongHash => {
                    let last = reply.len() - 1;
                    reply[last] ^= 1;
                }
                Hostile::Disconnect => return Ok(()),
                Hostile::Trickle => {
                    for b in &reply {
                        s.write_all(std::slice::from_ref(b))?;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    return Ok(());
                }
            }
            s.write_all(&reply)?;
            return Ok(()); // and hang up
        }
        s.write_all(&reply)?;
    }
}

#[test]
fn a_hostile_page_server_gets_its_process_killed_and_named() {
    if !privileged("a_hostile_page_server_gets_its_process_killed_and_named") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    for how in [
        Hostile::Garbage,
        Hostile::Short,
        Hostile::WrongHash,
        Hostile::Disconnect,
    ] {
        let bad = Arc::new(AtomicBool::new(false));
        let addr = hostile_server(img.clone(), how, bad.clone());
        let meta_only = LoadedImage::open(&img.dir).unwrap();
        let src = RemoteSource::connect(&addr, TOKEN, &meta_only.meta).unwrap();
        let (mut r, server) = common::restore_served(&meta_only, &lazy_from(src));
        assert_eq!(r.ask("ping"), format!("pong {}", r.tid), "{how:?}");
        // From now on every reply is bad: the next fault that needs the server fails.
        bad.store(true, Ordering::SeqCst);
        writeln!(r.writer(), "grow").unwrap();
        let e = server.wait().unwrap_err();
        let text = common::chain(&e);
        assert!(
            text.contains(&addr) && text.contains("was killed"),
            "{how:?}: {text}"
        );
        assert!(
            text.contains(&img.dir.display().to_string()),
            "{how:?}: {text}"
        );
        assert_eq!(common::wait_signal(r.pid), libc::SIGKILL, "{how:?}");
        std::mem::forget(r);
    }
}

/// A server that answers one byte at a time cannot hold a page up past the reply deadline
/// (a timeout per read would let it stretch one chunk over hours).
#[test]
fn a_trickling_page_server_meets_the_reply_deadline() {
    if !privileged("a_trickling_page_server_meets_the_reply_deadline") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let addr = hostile_server(
        img.clone(),
        Hostile::Trickle,
        Arc::new(AtomicBool::new(true)),
    );
    let meta_only = LoadedImage::open(&img.dir).unwrap();
    let src = RemoteSource::connect(&addr, TOKEN, &meta_only.meta).unwrap();
    let t0 = Instant::now();
    let e = src.pages(0, 1).unwrap_err();
    assert!(
        t0.elapsed() < remote::REPLY_TIMEOUT + Duration::from_secs(1),
        "{e}"
    );
    assert!(e.to_string().contains(&addr), "{e}");
}

/// WarmSwap's pool: a source that tries several places. A peer that gives bad chunks is
/// passed over for the next place (here the image's own page file), and nothing it gave is
/// installed; a good peer (a lookup server, as a node runs) serves everything itself.
#[test]
fn a_pool_source_passes_over_a_hostile_peer_and_restores_right() {
    if !privileged("a_pool_source_passes_over_a_hostile_peer_and_restores_right") {
        return;
    }
    use ember_snap::lazy::{ChunkFetch, LayerFile, PoolSource};
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU64;
    let dir = tmp();
    let img = memory_image(dir.path());
    let meta_only = LoadedImage::open(&img.dir).unwrap();
    for how in [Hostile::Garbage, Hostile::WrongHash, Hostile::Disconnect] {
        let bad = Arc::new(AtomicBool::new(true));
        let addr = hostile_server(img.clone(), how, bad);
        let peer = RemoteSource::connect(&addr, TOKEN, &meta_only.meta).unwrap();
        let file = LayerFile::open(&img.dir, &meta_only.meta).unwrap();
        let places: Vec<Arc<dyn ChunkFetch>> = vec![Arc::new(peer), Arc::new(file)];
        let pool = Arc::new(PoolSource::new(meta_only.meta.clone(), places));
        let opts = RestoreOptions {
            policy: Policy::Lazy,
            source: Some(pool.clone() as Arc<dyn PageSource>),
            ..RestoreOptions::default()
        };
        let (mut r, server) = common::restore_served(&meta_only, &opts);
        assert_eq!(r.ask("ping"), format!("pong {}", r.tid), "{how:?}");
        assert_eq!(r.ask("grow"), "grow True", "{how:?}");
        drop(r);
        server.wait().unwrap();
        let given = pool.given();
        assert_eq!(given[0].1, 0, "{how:?}: {given:?}");
        assert!(given[1].1 > 0, "{how:?}: {given:?}");
    }

    // A page server as a node runs it: images looked up at each connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let served = Arc::new(AtomicU64::new(0));
    let images: HashMap<[u8; 16], Arc<LoadedImage>> =
        [(img.meta.id, img.clone())].into_iter().collect();
    let counted = served.clone();
    let counted = Arc::new(move |n: u64| {
        counted.fetch_add(n, Ordering::SeqCst);
    });
    std::thread::spawn(move || {
        remote::serve_lookup(listener, TOKEN.into(), Arc::new(images), counted)
    });
    let peer = RemoteSource::connect(&addr, TOKEN, &meta_only.meta).unwrap();
    let pool = Arc::new(PoolSource::new(
        meta_only.meta.clone(),
        vec![Arc::new(peer) as Arc<dyn ChunkFetch>],
    ));
    let opts = RestoreOptions {
        policy: Policy::Lazy,
        source: Some(pool.clone() as Arc<dyn PageSource>),
        ..RestoreOptions::default()
    };
    let (mut r, server) = common::restore_served(&meta_only, &opts);
    assert_eq!(r.ask("ping"), format!("pong {}", r.tid));
    assert_eq!(r.ask("fork"), "fork 0");
    drop(r);
    server.wait().unwrap();
    let from_peer = pool.given()[0].1;
    assert!(from_peer > 0 && from_peer == pool.kept());
    assert_eq!(served.load(Ordering::SeqCst), from_peer);
}
