//! The connection loop of `entsync serve`: a TCP listener serving a router over HTTP/1.1
//! only, with the limits a public endpoint needs ([`Limits`]).
//!
//! hyper serves each connection (`hyper::server::conn::http1`, so an HTTP/2 preface is a
//! parse error, never an h2c upgrade); this module adds what hyper's HTTP/1 server does not
//! do by itself:
//!
//! - **Header timeout, idle timeout.** Each connection is in one of three phases:
//!   *head* (from accept, or from the first byte after an idle period, until the request
//!   head is parsed), *busy* (a request is being answered, until the last byte of its
//!   response body is handed over: the request body is the handler's business, see
//!   [`super::Options::body_timeout`]; a stream of the change feed stays busy for as long
//!   as it is open, however quiet), *idle* (keep-alive between requests). A connection
//!   whose head phase outlasts `header_timeout`, or whose idle phase sees no read or
//!   write for `idle_timeout`, is closed; so is a busy one whose response has been
//!   waiting for the client to read it (writes blocked) for `idle_timeout`. (hyper's own
//!   `header_read_timeout` restarts right after every response, so it would also close
//!   idle keep-alive connections after the header timeout: it is left off.)
//! - **A connection cap.** At most `max_connections` are served at once; the listener
//!   stops accepting meanwhile, so further connections wait in the kernel's backlog
//!   (1024 by default; beyond it the kernel drops their SYNs and clients retry) and are
//!   served as others close.
//! - **`accept` errors never spin.** A per-connection error (reset, aborted) is skipped;
//!   any other (EMFILE, ENFILE, ENOBUFS, ...) is logged and the listener backs off, from
//!   10 ms doubling to 1 s.
//! - **Graceful shutdown that does not wait for nothing.** When `shutdown` resolves, the
//!   listener closes, head-phase and idle connections are closed at once, and busy ones
//!   finish their request (hyper's graceful shutdown), then close. Handlers that wait
//!   for something that may never come hear of it too ([`ConnHandle::shutdown`]): a long
//!   poll answers its page at once and a stream ends, so that neither holds the drain.
//! - **A lingering close after an early answer.** A handler that answers before reading
//!   the request body (413, 408) marks the connection; after the response is written, the
//!   server half-closes, then reads and discards what the client still sends (at most
//!   [`LINGER_BYTES`], for at most [`LINGER_TIME`]) before closing, so that the client
//!   reads the answer instead of a TCP reset (which closing with unread bytes pending
//!   would send).

use super::{Receiver, Shared};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

/// Default [`Limits::header_timeout`]: 10 s.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Limits::idle_timeout`]: 60 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`Limits::max_connections`]: 1024.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The longest lingering close: after an early answer, how long the rest of a request
/// is read and discarded before the connection closes anyway.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// The most bytes a lingering close reads and discards.
pub const LINGER_BYTES: usize = 16 * 1024 * 1024;
/// The most connections [`Limits::max_connections`] may allow.
pub const MAX_CONNECTIONS_LIMIT: usize = 1 << 20;

/// Connection limits of [`serve`] and [`Receiver::serve`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request's head (request line and headers) must arrive within this, counted
    /// from the accept or from the request's first byte on a kept-alive connection.
    pub header_timeout: Duration,
    /// A kept-alive connection with no request and no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog. Clamped to
    /// 1..=[`MAX_CONNECTIONS_LIMIT`].
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serves `router` on `listener` over HTTP/1.1 under `limits` until `shutdown`
/// resolves; then stops accepting, closes idle connections, lets the requests in flight
/// finish, and returns once every connection is closed. (Race it against a timer for a
/// bounded drain.) [`Receiver::serve`] is the same with the receiver's routes and
/// connection counters in its `/metrics`.
///
/// # Example
///
/// ```no_run
/// use entitlement_sync::http::{serve, Limits};
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
/// serve(listener, app, Limits::default(), async {
///     let _ = tokio::signal::ctrl_c().await;
/// })
/// .await;
/// # Ok(())
/// # }
/// ```
pub async fn serve<F>(listener: TcpListener, router: Router, limits: Limits, shutdown: F)
where
    F: Future<Output = ()> + Send,
{
    serve_with(
        listener,
        router,
        limits,
        shutdown,
        Arc::new(ConnStats::default()),
    )
    .await;
}

impl Receiver {
    /// [`serve`] with [`Receiver::router`], counting connections in `/metrics`.
    pub async fn serve<F>(&self, listener: TcpListener, limits: Limits, shutdown: F)
    where
        F: Future<Output = ()> + Send,
    {
        let stats = Arc::clone(&self.shared.conns);
        serve_with(listener, self.router(), limits, shutdown, stats).await;
    }
}

/// Connection counters, rendered by `/metrics`.
#[derive(Default)]
pub(crate) struct ConnStats {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub closed_at_shutdown: AtomicU64,
    pub lingered: AtomicU64,
    pub accept_errors: AtomicU64,
    /// Times the listener waited for a connection slot (`max_connections` reached).
    pub at_capacity: AtomicU64,
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

async fn serve_with<F>(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: F,
    stats: Arc<ConnStats>,
) where
    F: Future<Output = ()> + Send,
{
    let slots = limits.max_connections.clamp(1, MAX_CONNECTIONS_LIMIT);
    let permits = Arc::new(Semaphore::new(slots));
    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(10);
    loop {
        if permits.available_permits() == 0 {
            stats.at_capacity.fetch_add(1, Ordering::Relaxed);
        }
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accept failed; pausing the listener");
                drop(permit);
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let conn = connection(
            stream,
            router.clone(),
            Arc::clone(&limits),
            stop_rx.clone(),
            Arc::clone(&stats),
        );
        tokio::spawn(async move {
            conn.await;
            drop(permit);
        });
    }
    // Refuse new connections from here on, then ask the open ones to finish.
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it is closed.
    let _ = permits.acquire_many(slots as u32).await;
}

// ---------------------------------------------------------------------------------------
// One connection

const HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

/// What the connection is doing, shared by its IO, its service and its task.
pub(crate) struct ConnState {
    origin: Instant,
    phase: AtomicU8,
    /// Milliseconds since `origin`: when the head phase began, or the last traffic of
    /// the idle phase.
    since: AtomicU64,
    /// Milliseconds since `origin`, plus one, since when writes have been blocked (the
    /// client reads nothing of the response); 0 while they are not.
    blocked: AtomicU64,
    changed: Notify,
    linger: AtomicBool,
    /// The server's shutdown: true once it began (see [`ConnHandle::shutdown`]).
    stop: watch::Receiver<bool>,
}

impl ConnState {
    fn new(stop: watch::Receiver<bool>) -> ConnState {
        ConnState {
            origin: Instant::now(),
            phase: AtomicU8::new(HEAD),
            since: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            changed: Notify::new(),
            linger: AtomicBool::new(false),
            stop,
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn enter(&self, phase: u8) {
        self.since.store(self.now_ms(), Ordering::Release);
        self.phase.store(phase, Ordering::Release);
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle connection starts receiving a request head.
    fn on_read(&self) {
        if self.phase.load(Ordering::Acquire) == IDLE {
            self.since.store(self.now_ms(), Ordering::Release);
            if self
                .phase
                .compare_exchange(IDLE, HEAD, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.changed.notify_one();
            }
        }
    }

    /// Bytes left: an idle connection is not idle yet (the last response is going out),
    /// and writes are not blocked.
    fn on_write(&self) {
        self.blocked.store(0, Ordering::Release);
        if self.phase.load(Ordering::Acquire) == IDLE {
            self.since.store(self.now_ms(), Ordering::Release);
        }
    }

    /// A write found the socket full: the client is not reading (yet).
    fn on_write_blocked(&self) {
        let now = self.now_ms() + 1;
        if self
            .blocked
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// When the current phase runs out, and what it is; while busy, only when writes
    /// are blocked (a response the client does not read), else `None`.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Close)> {
        let since = Duration::from_millis(self.since.load(Ordering::Acquire));
        match self.phase.load(Ordering::Acquire) {
            HEAD => Some((
                self.origin + since + limits.header_timeout,
                Close::HeaderTimeout,
            )),
            IDLE => Some((
                self.origin + since + limits.idle_timeout,
                Close::IdleTimeout,
            )),
            _ => match self.blocked.load(Ordering::Acquire) {
                0 => None,
                b => Some((
                    self.origin + Duration::from_millis(b - 1) + limits.idle_timeout,
                    Close::IdleTimeout,
                )),
            },
        }
    }

    /// Asks for a lingering close once the current response is written (see the module
    /// docs); the handler also sets `Connection: close` on that response.
    pub(crate) fn linger(&self) {
        self.linger.store(true, Ordering::Release);
    }
}

/// The handle a handler finds in its request's extensions when served by [`serve`].
#[derive(Clone)]
pub(crate) struct ConnHandle(pub(crate) Arc<ConnState>);

impl ConnHandle {
    /// Resolves once the server is shutting down (at once if it already is): a handler
    /// waiting for something that may never come (a long poll, a stream) answers or
    /// ends then, so that the drain does not wait for it.
    pub(crate) async fn shutdown(&self) {
        let mut stop = self.0.stop.clone();
        // An error: the server is gone, which is a shutdown too.
        let _ = stop.wait_for(|s| *s).await;
    }
}

/// [`ConnHandle::shutdown`] of the request's connection, or never when the request is
/// not served by [`serve`] (e.g. under `axum::serve`, whose shutdown is its own).
pub(crate) async fn shutdown_of(conn: Option<ConnHandle>) {
    match conn {
        Some(conn) => conn.shutdown().await,
        None => std::future::pending().await,
    }
}

#[derive(Debug, Clone, Copy)]
enum Close {
    HeaderTimeout,
    IdleTimeout,
    Shutdown,
}

/// Sets the connection idle when the request's response body has ended or is dropped
/// (or the request was abandoned before its response).
struct BusyGuard(Arc<ConnState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.enter(IDLE);
    }
}

/// A response body that keeps its connection busy until it ends: hyper drops it once
/// the last frame is out (or the connection is gone), and a stream of the change feed,
/// which never ends by itself, keeps the connection busy for as long as it is open.
struct BusyBody {
    body: axum::body::Body,
    guard: Option<BusyGuard>,
}

impl hyper::body::Body for BusyBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[derive(Clone)]
struct ConnService {
    router: Router,
    state: Arc<ConnState>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        use tower::ServiceExt as _;
        self.state.enter(BUSY);
        let guard = BusyGuard(Arc::clone(&self.state));
        req.extensions_mut()
            .insert(ConnHandle(Arc::clone(&self.state)));
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(req).await;
            Ok(response?.map(|body| {
                axum::body::Body::new(BusyBody {
                    body,
                    guard: Some(guard),
                })
            }))
        })
    }
}

/// The TCP stream, telling the connection's state about traffic.
struct Tracked {
    stream: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.on_read();
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        match poll {
            Poll::Ready(Ok(n)) if n > 0 => this.state.on_write(),
            Poll::Pending => this.state.on_write_blocked(),
            _ => {}
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        match poll {
            Poll::Ready(Ok(n)) if n > 0 => this.state.on_write(),
            Poll::Pending => this.state.on_write_blocked(),
            _ => {}
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

async fn connection(
    stream: TcpStream,
    router: Router,
    limits: Arc<Limits>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<ConnStats>,
) {
    let state = Arc::new(ConnState::new(stop.clone()));
    let io = TokioIo::new(Tracked {
        stream,
        state: Arc::clone(&state),
    });
    let service = ConnService {
        router,
        state: Arc::clone(&state),
    };
    // No timer for hyper: its header_read_timeout is enforced here instead (see the
    // module docs), and without a timer it stays off.
    let mut conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    let mut draining = false;
    let closed = loop {
        let deadline = state.deadline(&limits);
        tokio::select! {
            result = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break None;
            }
            () = sleep_until(deadline.map(|(at, _)| at)) => {
                // The phase may have moved on since the deadline was read.
                if let Some((at, why)) = state.deadline(&limits) {
                    if Instant::now() >= at {
                        break Some(why);
                    }
                }
            }
            () = state.changed.notified() => {}
            _ = stop.wait_for(|s| *s), if !draining => {
                if state.phase.load(Ordering::Acquire) == BUSY {
                    // Finish the request in flight, then close.
                    Pin::new(&mut conn).graceful_shutdown();
                    draining = true;
                } else {
                    break Some(Close::Shutdown);
                }
            }
        }
    };
    stats.closed.fetch_add(1, Ordering::Relaxed);
    match closed {
        Some(Close::HeaderTimeout) => {
            stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("closing a connection: request head not received in time");
        }
        Some(Close::IdleTimeout) => {
            stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        Some(Close::Shutdown) => {
            stats.closed_at_shutdown.fetch_add(1, Ordering::Relaxed);
        }
        None if state.linger.load(Ordering::Acquire) => {
            stats.lingered.fetch_add(1, Ordering::Relaxed);
            let stream = conn.into_parts().io.into_inner().stream;
            linger(stream).await;
        }
        None => {
            let mut stream = conn.into_parts().io.into_inner().stream;
            let _ = stream.shutdown().await;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Half-closes, then reads and discards until the client closes too, or
/// [`LINGER_TIME`] or [`LINGER_BYTES`] runs out.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = vec![0u8; 64 * 1024];
    let mut discarded = 0usize;
    while discarded < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => discarded += n,
        }
    }
}

impl Shared {
    /// The connection counters, for `/metrics`.
    pub(crate) fn conn_stats(&self) -> &ConnStats {
        &self.conns
    }
}
