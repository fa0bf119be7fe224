//! Serving connections: the accept loop, the connection cap, and the timeouts that keep a
//! slow or idle client from holding a connection (and its descriptor and buffers) forever.
//!
//! ```text
//!  accept ── cap reached? ── yes ──► 503 TooManyConnections, Connection: close
//!    │                               (at most REFUSALS answers at once; beyond, closed)
//!    │ no
//!    ▼
//!  reading a head ── not complete header_timeout after the connection opened, or after
//!    │  ▲             the first byte of a later request ──► closed
//!    │  │ first byte
//!    │  idle ── no byte for idle_timeout ──► closed
//!    ▼  ▲
//!  busy: the route runs; it reads the body within body_timeout (`routes::read_body`);
//!    │   a response the client stops reading for idle_timeout ──► closed
//!    └── response sent: idle (seen within LOOK, 1 s: no wake-up per request)
//! ```
//!
//! HTTP/1.1 only, as before: hyper's connection, with these deadlines kept by `Watched`
//! around the socket. The cap is never more than half the process's descriptor limit.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use crate::ConnectionLimits;

/// Connections over the cap answered with 503 at once; more are closed unanswered.
const REFUSALS: usize = 64;
/// How long answering a refused connection may take.
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// How often a connection whose request is being served looks whether it has ended, to arm
/// its idle deadline: the idle deadline counts from at most this long after a response.
const LOOK: Duration = Duration::from_secs(1);
/// How long, and for how many bytes, a connection the server closes (an answer before the
/// whole request body was read, such as 413) keeps reading what the client still sends:
/// closing with unread data resets the connection, and the client would lose the answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 << 20;
/// Connections lingering at once (each holds a descriptor outside the cap for LINGER).
const LINGERING: usize = 256;
/// Between two log lines about the same trouble (a client can cause them).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then waits for open requests.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let cap = connection_cap(limits.max_connections);
    let slots = Arc::new(Semaphore::new(cap));
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // Watched keeps the head deadline: hyper's own would also close idle connections.
    http.timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    let (mut full_log, mut accept_log) = (Every::new(LOG_EVERY), Every::new(LOG_EVERY));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    accept_failed(e, &mut accept_log).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if full_log.ready() {
                tracing::warn!(
                    "the API holds its cap of {cap} connections: new ones get 503 until some close"
                );
            }
            refuse(stream, cap, &refusals);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::new(ConnState::default());
        let io = TokioIo::new(Watched::new(stream, state.clone(), limits));
        let app = app.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                // Counted from here (the head is in) to the end of the response's body.
                let busy = Busy::start(state.clone());
                // A Router is always ready: no poll_ready needed.
                let fut = tower_service::Service::call(&mut app.clone(), req);
                async move {
                    let resp = fut.await?;
                    Ok::<_, Infallible>(
                        resp.map(|body| axum::body::Body::new(Tracked { body, _busy: busy })),
                    )
                }
            });
        let conn = graceful.watch(http.serve_connection(io, svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The configured cap, but never more than half the descriptors this process may open (the
/// other half is for instances, images and logs).
fn connection_cap(configured: usize) -> usize {
    let Ok((soft, _)) = crate::sys::nofile_limit() else {
        return configured.max(1);
    };
    let allowed = usize::try_from(soft / 2)
        .unwrap_or(usize::MAX)
        .saturating_sub(REFUSALS)
        .max(1);
    if configured > allowed {
        tracing::info!(
            "serving at most {allowed} connections, not {configured}: the descriptor limit is \
             {soft} (raise it with `ulimit -n`)"
        );
    }
    configured.clamp(1, allowed)
}

async fn accept_failed(e: io::Error, log: &mut Every) {
    use io::ErrorKind::*;
    // The client gave up before it was accepted: nothing to do.
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    // Out of descriptors or memory: wait for some to free rather than spin.
    if log.ready() {
        tracing::warn!("accepting a connection failed: {e}; retrying");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Answers a connection over the cap with 503 and closes it, in a task of its own.
fn refuse(mut stream: TcpStream, cap: usize, refusals: &Arc<Semaphore>) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return; // dropped: closed unanswered
    };
    tokio::spawn(async move {
        let _permit = permit;
        let body = serde_json::json!({"error": {
            "code": "TooManyConnections",
            "message": format!(
                "the API holds its limit of {cap} connections; retry shortly"
            ),
        }})
        .to_string();
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut buf = vec![0u8; 4096];
        // The request head first: HTTP clients take an answer before their request for a
        // broken server.
        let _ = tokio::time::timeout(REFUSAL_TIME / 2, async {
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
                match stream.read(&mut buf).await? {
                    0 => break,
                    n => head.extend_from_slice(&buf[..n]),
                }
            }
            io::Result::Ok(())
        })
        .await;
        let _ = tokio::time::timeout(REFUSAL_TIME / 2, async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            // Read what else the client sent: closing with unread data would reset the
            // connection, and the client might lose the answer.
            let mut read = 0;
            while read < 64 << 10 {
                match stream.read(&mut buf).await? {
                    0 => break,
                    n => read += n,
                }
            }
            io::Result::Ok(())
        })
        .await;
    });
}

/// At most one `true` per period.
struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    fn new(period: Duration) -> Every {
        Every { period, last: None }
    }

    fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.period)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// What the requests of one connection are doing, shared by its service and its socket.
#[derive(Default)]
struct ConnState {
    /// Requests whose head is in and whose response has not been sent.
    busy: AtomicUsize,
    /// Requests answered so far.
    finished: AtomicU64,
}

struct Busy(Arc<ConnState>);

impl Busy {
    fn start(state: Arc<ConnState>) -> Busy {
        state.busy.fetch_add(1, Ordering::SeqCst);
        Busy(state)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::SeqCst);
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as busy until hyper is done with it.
struct Tracked {
    body: axum::body::Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Between requests, no byte of the next yet.
    Idle,
    /// A head is on its way.
    Head,
    Busy,
}

/// The socket of a connection, closing it (a read or write error hyper ends the connection
/// on) when a deadline of its phase passes.
struct Watched {
    io: TcpStream,
    state: Arc<ConnState>,
    limits: ConnectionLimits,
    phase: Phase,
    /// `state.finished` when the phase was last set.
    finished: u64,
    read_deadline: Pin<Box<Sleep>>,
    /// Armed while a write waits for the client to read.
    write_deadline: Option<Pin<Box<Sleep>>>,
    /// The server shut its side down (it closes the connection).
    shut: bool,
    /// The client's side is at its end.
    eof: bool,
}

impl Watched {
    fn new(io: TcpStream, state: Arc<ConnState>, limits: ConnectionLimits) -> Watched {
        Watched {
            io,
            state,
            limits,
            // A new connection has header_timeout for its first head, bytes or not.
            phase: Phase::Head,
            finished: 0,
            read_deadline: Box::pin(tokio::time::sleep(limits.header_timeout)),
            write_deadline: None,
            shut: false,
            eof: false,
        }
    }

    fn set_phase(&mut self, phase: Phase, timeout: Duration) {
        self.phase = phase;
        self.read_deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + timeout);
    }

    /// Moves to the phase the requests say, before a read.
    fn update_phase(&mut self) {
        if self.state.busy.load(Ordering::SeqCst) > 0 {
            if self.phase != Phase::Busy {
                self.set_phase(Phase::Busy, LOOK.min(self.limits.idle_timeout));
            }
            return;
        }
        let finished = self.state.finished.load(Ordering::SeqCst);
        if self.phase == Phase::Busy || finished != self.finished {
            self.finished = finished;
            self.set_phase(Phase::Idle, self.limits.idle_timeout);
        }
    }

    /// Pending, or the error that ends the connection once the write deadline passed.
    fn write_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.limits.idle_timeout;
        let deadline = self
            .write_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client read none of the response for {} s",
                timeout.as_secs_f64()
            ),
        ))
    }

    fn wrote<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.write_stalled(cx).map(Err),
            done => {
                self.write_deadline = None;
                done
            }
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.update_phase();
        let before = buf.filled().len();
        if let Poll::Ready(r) = Pin::new(&mut this.io).poll_read(cx, buf) {
            let got = buf.filled().len() > before;
            if this.phase == Phase::Idle && got {
                this.set_phase(Phase::Head, this.limits.header_timeout);
            }
            if r.is_ok() && !got && buf.remaining() > 0 {
                this.eof = true;
            }
            return Poll::Ready(r);
        }
        // While a request is served the client has no deadline; the timer only looks, every
        // LOOK, whether the request has ended, to arm the idle deadline then. (Waking the
        // connection when each request ends cost a cross-thread wake-up per request.)
        while this.phase == Phase::Busy {
            ready!(this.read_deadline.as_mut().poll(cx));
            this.update_phase();
            if this.phase == Phase::Busy {
                let look = LOOK.min(this.limits.idle_timeout);
                this.set_phase(Phase::Busy, look);
            }
        }
        ready!(this.read_deadline.as_mut().poll(cx));
        let (what, after) = match this.phase {
            Phase::Idle => ("idle", this.limits.idle_timeout),
            _ => ("sending its request head", this.limits.header_timeout),
        };
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("closed after {} s {what}", after.as_secs_f64()),
        )))
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A socket's flush is a no-op: it says nothing of the client reading.
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = ready!(Pin::new(&mut this.io).poll_shutdown(cx));
        this.shut = r.is_ok();
        Poll::Ready(r)
    }
}

/// Lingering slots (see [`LINGER`]).
static LINGER_SLOTS: Semaphore = Semaphore::const_new(LINGERING);

impl Drop for Watched {
    /// A connection the server closed while the client may still be sending (its body was
    /// answered before it was read) is read and discarded for a while, in a task of its own:
    /// closing a socket with unread data sends a reset, which can reach the client before it
    /// has read the answer (a 413 would show as a broken pipe).
    fn drop(&mut self) {
        if !self.shut || self.eof {
            return;
        }
        let Ok(slot) = LINGER_SLOTS.try_acquire() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        use std::os::fd::AsFd;
        let Ok(fd) = self.io.as_fd().try_clone_to_owned() else {
            return;
        };
        let std_stream = std::net::TcpStream::from(fd);
        if std_stream.set_nonblocking(true).is_err() {
            return;
        }
        let _guard = handle.enter();
        let Ok(mut stream) = TcpStream::from_std(std_stream) else {
            return;
        };
        handle.spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(LINGER, async {
                let mut buf = vec![0u8; 64 << 10];
                let mut read = 0;
                while read < LINGER_BYTES {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_in_half_the_descriptor_limit() {
        let (soft, _) = crate::sys::nofile_limit().unwrap();
        let cap = connection_cap(usize::MAX) as u64;
        assert!(cap >= 1 && cap + REFUSALS as u64 <= (soft / 2).max(REFUSALS as u64 + 1));
        assert_eq!(connection_cap(4), 4);
        assert_eq!(connection_cap(0), 1);
    }

    /// A connected pair of sockets: (server side, client side).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (l.accept().await.unwrap().0, client)
    }

    fn limits(ms: u64) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_millis(ms),
            body_timeout: Duration::from_millis(ms),
            idle_timeout: Duration::from_millis(ms),
            max_connections: 1,
            max_buffered_body_bytes: 1 << 20,
        }
    }

    #[tokio::test]
    async fn a_client_that_reads_nothing_of_a_response_is_cut() {
        let (server, _client) = pair().await;
        let state = Arc::new(ConnState::default());
        let _busy = Busy::start(state.clone());
        let mut w = Watched::new(server, state, limits(200));
        // Far more than the socket buffers hold: the writes stall, then fail.
        let chunk = vec![0u8; 1 << 20];
        let failed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Err(e) = w.write_all(&chunk).await {
                    return e;
                }
            }
        })
        .await
        .expect("the stalled write is cut");
        assert_eq!(failed.kind(), io::ErrorKind::TimedOut, "{failed}");
    }

    #[tokio::test]
    async fn a_busy_connection_has_no_read_deadline() {
        let (server, mut client) = pair().await;
        let state = Arc::new(ConnState::default());
        let busy = Busy::start(state.clone());
        let mut w = Watched::new(server, state, limits(100));
        let mut buf = [0u8; 1];
        // Busy: a read waits past the deadlines for the client.
        let read = tokio::time::timeout(Duration::from_millis(500), w.read(&mut buf)).await;
        assert!(read.is_err(), "{read:?}");
        // The request answered: idle, and closed after the idle timeout.
        drop(busy);
        let e = tokio::time::timeout(Duration::from_secs(30), w.read(&mut buf))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("idle"), "{e}");
        client.write_all(b"x").await.unwrap();
    }

    /// The server answers and closes while the client is still sending: the client's writes
    /// still succeed (an HTTP client reads the answer only once its body is sent; a broken
    /// pipe would lose the 413), and it reads the whole answer.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_client_still_sending_reads_the_answer_of_a_closing_server() {
        for _ in 0..5 {
            let (server, client) = pair().await;
            let (mut rd, mut wr) = client.into_split();
            let sending = tokio::spawn(async move {
                let chunk = vec![b'x'; 64 << 10];
                for _ in 0..64 {
                    wr.write_all(&chunk).await?;
                }
                io::Result::Ok(())
            });
            let mut w = Watched::new(server, Arc::new(ConnState::default()), limits(5_000));
            // Part of the body is in; the rest is still coming when the answer goes.
            let mut head = vec![0u8; 64 << 10];
            let mut got = 0;
            while got < 256 << 10 {
                got += w.read(&mut head).await.unwrap();
            }
            w.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            w.shutdown().await.unwrap();
            drop(w);
            let sent = sending.await.unwrap();
            assert!(sent.is_ok(), "the client's body write failed: {sent:?}");
            let mut answer = Vec::new();
            let read = rd.read_to_end(&mut answer).await;
            assert!(read.is_ok(), "{read:?}");
            assert!(answer.starts_with(b"HTTP/1.1 413"), "{answer:?}");
        }
    }

    #[test]
    fn logs_are_rate_limited() {
        let mut every = Every::new(Duration::from_secs(3600));
        assert!(every.ready());
        assert!(!every.ready());
    }
}
