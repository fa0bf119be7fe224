//! A remote page source: images served over TCP by another node (`ember snap serve`), so
//! that a pool of images can live on a central node (WarmSwap's remote pool).
//!
//! The protocol, all integers little-endian:
//!
//! ```text
//! client -> server   "EMBRPGS1" | token length u16 | token | image id [16]
//! server -> client   0 | page count u64 | chunk count u32          (accepted)
//!                    1 | message length u16 | message               (refused: bad token,
//!                                                                      unknown image)
//! then, any number of times:
//! client -> server   n u16 (1..=64) | n x chunk index u32
//! server -> client   n x ( chunk index u32 | length u32 | bytes )    (in request order)
//! ```
//!
//! The server needs no trust from the client: every chunk is checked against the hashes in
//! the client's own copy of the image's metadata before any of it is installed, and a bad
//! chunk, a short or garbled reply, a disconnection or a timeout (2 s for each request's
//! whole reply, however the server trickles it; 1 s to connect) is an error naming the
//! server. The token is compared in constant time; a client must say who it is within 5 s.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::source::ChunkCache;
use super::{PageSource, SourceError};
use crate::image::format::{CHUNK_PAGES, chunk_failed, chunk_ok};
use crate::image::pack::chunk_bytes;
use crate::image::{LoadedImage, Meta, PAGE};

pub const MAGIC: [u8; 8] = *b"EMBRPGS1";
/// Chunks per request at most.
pub const MAX_BATCH: usize = 64;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_TOKEN: usize = 4096;

fn eq_const(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A chunk's index and its checked bytes.
type Chunk = (u64, Arc<[u8]>);

/// Pages fetched from a page server, checked, kept.
pub struct RemoteSource {
    addr: SocketAddr,
    meta: Meta,
    conn: Mutex<TcpStream>,
    cache: ChunkCache,
}

impl RemoteSource {
    /// Connects to the server at `addr` and asks for the image `meta` describes. Fails
    /// within a second or two when the server is unreachable or refuses.
    pub fn connect(addr: &str, token: &str, meta: &Meta) -> Result<RemoteSource, SourceError> {
        let err = |why: String| SourceError {
            source_name: format!("page server {addr}"),
            why,
        };
        let sa = addr
            .to_socket_addrs()
            .map_err(|e| err(format!("cannot resolve: {e}")))?
            .next()
            .ok_or_else(|| err("no address".into()))?;
        let mut s = TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT)
            .map_err(|e| err(format!("cannot connect: {e}")))?;
        s.set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| s.set_write_timeout(Some(REPLY_TIMEOUT)))
            .and_then(|()| s.set_nodelay(true))
            .map_err(|e| err(e.to_string()))?;
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&(token.len() as u16).to_le_bytes());
        hello.extend_from_slice(token.as_bytes());
        hello.extend_from_slice(&meta.id);
        s.write_all(&hello)
            .map_err(|e| err(format!("hello: {e}")))?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut status = [0u8; 1];
        read_by(&mut s, &mut status, deadline)
            .map_err(|e| err(format!("no answer to hello: {e}")))?;
        if status[0] != 0 {
            let mut len = [0u8; 2];
            read_by(&mut s, &mut len, deadline).map_err(|e| err(e.to_string()))?;
            let mut msg = vec![0u8; u16::from_le_bytes(len) as usize];
            read_by(&mut s, &mut msg, deadline).map_err(|e| err(e.to_string()))?;
            return Err(err(format!("refused: {}", String::from_utf8_lossy(&msg))));
        }
        let mut counts = [0u8; 12];
        read_by(&mut s, &mut counts, deadline).map_err(|e| err(e.to_string()))?;
        let pages = u64::from_le_bytes(counts[..8].try_into().unwrap_or_default());
        let chunks = u32::from_le_bytes(counts[8..].try_into().unwrap_or_default());
        if pages != meta.pages.count || chunks as usize != meta.pages.chunks.len() {
            return Err(err(format!(
                "it serves {pages} pages in {chunks} chunks; the image has {} in {}",
                meta.pages.count,
                meta.pages.chunks.len()
            )));
        }
        Ok(RemoteSource {
            addr: sa,
            meta: meta.clone(),
            conn: Mutex::new(s),
            cache: ChunkCache::new(),
        })
    }

    /// Asks for `chunks` in one request and checks each reply.
    fn fetch(&self, chunks: &[u64]) -> Result<Vec<Chunk>, String> {
        let got = self.fetch_raw(chunks, true)?;
        Ok(got.into_iter().map(|(c, d)| (c, d.into())).collect())
    }

    /// Asks for `chunks` in one request: each reply's framing checked (which chunk, its
    /// size), its bytes against the image's hashes too with `check`.
    fn fetch_raw(&self, chunks: &[u64], check: bool) -> Result<Vec<(u64, Vec<u8>)>, String> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| "connection poisoned".to_string())?;
        let mut req = (chunks.len() as u16).to_le_bytes().to_vec();
        for &c in chunks {
            req.extend_from_slice(&(c as u32).to_le_bytes());
        }
        conn.write_all(&req).map_err(|e| format!("request: {e}"))?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut out = Vec::with_capacity(chunks.len());
        for &c in chunks {
            let mut head = [0u8; 8];
            read_by(&mut conn, &mut head, deadline)
                .map_err(|e| format!("reply for chunk {c}: {e}"))?;
            let got = u32::from_le_bytes(head[..4].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(head[4..].try_into().unwrap_or_default());
            let want = chunk_bytes(self.meta.pages.count, c);
            if u64::from(got) != c || u64::from(len) != want {
                return Err(format!(
                    "reply for chunk {c} names chunk {got} of {len} bytes (want {want})"
                ));
            }
            let mut data = vec![0u8; len as usize];
            read_by(&mut conn, &mut data, deadline)
                .map_err(|e| format!("chunk {c} cut short: {e}"))?;
            if check && !chunk_ok(&self.meta, c, &data) {
                return Err(chunk_failed(c));
            }
            out.push((c, data));
        }
        Ok(out)
    }
}

/// The server's chunks for a source that tries several places ([`super::PoolSource`]):
/// framed right, their bytes unchecked here, as [`super::ChunkFetch`] says (the caller
/// checks each against the image's hashes before it keeps it: once, not twice).
impl super::ChunkFetch for RemoteSource {
    fn describe(&self) -> String {
        PageSource::describe(self)
    }

    fn fetch(&self, chunks: &[u64]) -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::with_capacity(chunks.len());
        for batch in chunks.chunks(MAX_BATCH) {
            out.extend(self.fetch_raw(batch, false)?.into_iter().map(|(_, d)| d));
        }
        Ok(out)
    }
}

impl PageSource for RemoteSource {
    fn describe(&self) -> String {
        format!("page server {}", self.addr)
    }

    fn warm(&self, ranges: &[(u64, u64)]) {
        let mut want: Vec<u64> = ranges
            .iter()
            .filter(|&&(_, n)| n > 0)
            .flat_map(|&(f, n)| f / CHUNK_PAGES..=(f + n - 1) / CHUNK_PAGES)
            .filter(|&c| c < self.meta.pages.chunks.len() as u64 && !self.cache.has(c))
            .collect();
        want.sort_unstable();
        want.dedup();
        for batch in want.chunks(MAX_BATCH) {
            match self.fetch(batch) {
                Ok(got) => {
                    for (c, d) in got {
                        self.cache.put(c, d);
                    }
                }
                Err(_) => return,
            }
        }
    }

    fn pages(&self, first: u64, pages: u64) -> Result<Cow<'_, [u8]>, SourceError> {
        let err = |why: String| SourceError {
            source_name: self.describe(),
            why,
        };
        if pages == 0 || first + pages > self.meta.pages.count {
            return Err(err(format!(
                "pages {first}..{} are outside the image",
                first + pages
            )));
        }
        // The chunks the range needs and the cache lacks, batched 64 to a request.
        let (c0, c1) = (first / CHUNK_PAGES, (first + pages - 1) / CHUNK_PAGES);
        let missing: Vec<u64> = (c0..=c1).filter(|&c| !self.cache.has(c)).collect();
        let mut got = HashMap::new();
        for batch in missing.chunks(MAX_BATCH) {
            got.extend(self.fetch(batch).map_err(err)?);
        }
        self.cache
            .pages(&self.meta, first, pages, |c| {
                got.get(&c)
                    .cloned()
                    .ok_or_else(|| format!("chunk {c} was not fetched"))
            })
            .map(Cow::Owned)
            .map_err(err)
    }
}

/// Which images a page server serves, looked up by id at each connection (a node's pool
/// changes while it serves).
pub trait ImageLookup: Send + Sync {
    /// The in-memory copy of image `id` (its pages loaded and checked), if served now.
    fn image(&self, id: &[u8; 16]) -> Option<Arc<LoadedImage>>;
}

impl ImageLookup for HashMap<[u8; 16], Arc<LoadedImage>> {
    fn image(&self, id: &[u8; 16]) -> Option<Arc<LoadedImage>> {
        self.get(id).filter(|i| i.is_loaded()).cloned()
    }
}

/// Connections served at once at most; one more is closed at once (each holds a thread).
pub const MAX_CONNECTIONS: usize = 256;
/// A client must say who it is within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection idle this long between requests is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Serves `images` (by id) to clients that present `token`, one thread per connection,
/// until the listener fails.
pub fn serve(
    listener: TcpListener,
    token: String,
    images: Vec<Arc<LoadedImage>>,
) -> std::io::Result<()> {
    let images: HashMap<[u8; 16], Arc<LoadedImage>> =
        images.into_iter().map(|i| (i.meta.id, i)).collect();
    serve_lookup(listener, token, Arc::new(images), Arc::new(|_| {}))
}

/// Serves the images `images` finds to clients that present `token`, one thread per
/// connection (at most [`MAX_CONNECTIONS`]), until the listener fails; tells `served` how
/// many chunks each reply sent.
pub fn serve_lookup(
    listener: TcpListener,
    token: String,
    images: Arc<dyn ImageLookup>,
    served: Arc<dyn Fn(u64) + Send + Sync>,
) -> std::io::Result<()> {
    let token = Arc::new(token);
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            // A client that went away before it was accepted, or descriptors running out for
            // a moment: the listener itself is fine.
            Err(e) if e.kind() != std::io::ErrorKind::InvalidInput => {
                tracing::debug!(error = %e, "page server: accepting a connection failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(e),
        };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(
                "page server: {MAX_CONNECTIONS} connections open already; one more closed"
            );
            continue;
        }
        let (images, token, served, open) =
            (images.clone(), token.clone(), served.clone(), open.clone());
        let spawned = std::thread::Builder::new()
            .name("ember-page-serve".into())
            .spawn(move || {
                if let Err(e) = serve_one(conn, &token, images.as_ref(), served.as_ref()) {
                    tracing::debug!(error = %e, "page server connection ended");
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "page server: no thread for a connection");
        }
    }
    Ok(())
}

fn serve_one(
    mut s: TcpStream,
    token: &str,
    images: &dyn ImageLookup,
    served: &(dyn Fn(u64) + Send + Sync),
) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(REPLY_TIMEOUT * 5))?;
    let hello_by = Instant::now() + HELLO_TIMEOUT;
    let mut head = [0u8; 10];
    read_by(&mut s, &mut head, hello_by)?;
    let tlen = u16::from_le_bytes([head[8], head[9]]) as usize;
    if head[..8] != MAGIC || tlen > MAX_TOKEN {
        return refuse(&mut s, "not an Ember page-server client");
    }
    let mut tok = vec![0u8; tlen];
    read_by(&mut s, &mut tok, hello_by)?;
    let mut id = [0u8; 16];
    read_by(&mut s, &mut id, hello_by)?;
    if !eq_const(&tok, token.as_bytes()) {
        return refuse(&mut s, "bad token");
    }
    let Some(img) = images.image(&id) else {
        return refuse(&mut s, "no such image here");
    };
    s.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut ok = vec![0u8];
    ok.extend_from_slice(&img.meta.pages.count.to_le_bytes());
    ok.extend_from_slice(&(img.meta.pages.chunks.len() as u32).to_le_bytes());
    s.write_all(&ok)?;
    let data = img.page_data();
    loop {
        let mut n = [0u8; 2];
        if s.read_exact(&mut n).is_err() {
            return Ok(()); // the client is done
        }
        let n = u16::from_le_bytes(n) as usize;
        if n == 0 || n > MAX_BATCH {
            return Ok(());
        }
        let mut idx = vec![0u8; 4 * n];
        s.read_exact(&mut idx)?;
        let mut reply = Vec::new();
        for c in idx.chunks_exact(4) {
            let c = u32::from_le_bytes(c.try_into().unwrap_or_default());
            if c as usize >= img.meta.pages.chunks.len() {
                return Ok(());
            }
            let start = (u64::from(c) * CHUNK_PAGES * PAGE) as usize;
            let len = chunk_bytes(img.meta.pages.count, u64::from(c)) as usize;
            let Some(bytes) = data.get(start..start + len) else {
                return Ok(());
            };
            reply.extend_from_slice(&c.to_le_bytes());
            reply.extend_from_slice(&(len as u32).to_le_bytes());
            reply.extend_from_slice(bytes);
        }
        s.write_all(&reply)?;
        served(n as u64);
    }
}

/// Reads `buf` whole from `s` before `deadline`: each read waits at most what is left, so a
/// peer that trickles bytes cannot stretch a reply (or a hello) past it.
fn read_by(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> std::io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no whole answer in time",
            ));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf[off..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn refuse(s: &mut TcpStream, why: &str) -> std::io::Result<()> {
    let mut r = vec![1u8];
    r.extend_from_slice(&(why.len() as u16).to_le_bytes());
    r.extend_from_slice(why.as_bytes());
    s.write_all(&r)
}
