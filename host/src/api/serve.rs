//! Serving the API over HTTP/1 on a TCP listener, bounded against hostile
//! clients: at most [`ServeConfig::max_connections`] connections, a
//! deadline for each request's head (which is also how long a connection
//! may sit idle) and one for its body, and a stop that lets requests in
//! progress finish for a bounded time. At the cap, a new connection closes
//! the connection that has waited longest for its next request (idle, or
//! still sending its head), so idle or slow-header sockets can never lock
//! other clients out; when every connection is in a request, new ones wait
//! in the listen backlog until one ends.

use super::ApiError;
use crate::wire::ErrorCode;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

/// Limits on the HTTP server. See [`ServeConfig::default`] for the
/// defaults.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Most connections open at once. At the cap a new connection closes
    /// the one that has waited longest for its next request; when all are
    /// in a request, new connections wait in the listen backlog. Default
    /// 512: with the host's other descriptors, within the usual limit of
    /// 1024 open files (`taskhost serve` raises its soft limit when it
    /// needs more).
    pub max_connections: usize,
    /// How long a connection may take to send a request's head, counted
    /// from when it connected or its previous response went out: also how
    /// long an idle connection stays open. Default 30 s.
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive, counted from its
    /// head. Past it the request is answered `408 request_timeout` and the
    /// connection closed. Default 60 s (the largest plugin upload, 64 MiB,
    /// needs about 1.1 MB/s).
    pub body_timeout: Duration,
    /// When stopping, how long requests in progress may take to finish
    /// before their connections are closed. Default 10 s.
    pub shutdown_grace: Duration,
    /// Serve HTTPS with this configuration (`serve --tls-cert/--tls-key`);
    /// plain HTTP when `None`. The handshake must end within
    /// `header_timeout`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// How often a full server looks again for an idle connection to close
/// while every connection is in a request.
const EVICT_RECHECK: Duration = Duration::from_millis(100);

/// How long accepting pauses after an error that is not one connection's
/// (out of file descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests in a handler.
    busy: AtomicUsize,
    /// When it last had no request in a handler (ms since the server
    /// started).
    idle_since_ms: AtomicU64,
    /// Asked to close (it was the longest idle at the cap).
    evicting: AtomicBool,
    evict: Notify,
}

/// The open connections (at most `max_connections`).
struct Conns {
    slots: Arc<Semaphore>,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    started: Instant,
}

impl Conns {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A free slot, closing idle connections to make one.
    async fn slot(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                return permit;
            }
            self.evict_longest_idle();
            if let Ok(permit) = tokio::time::timeout(EVICT_RECHECK, self.slots.clone().acquire_owned()).await {
                return permit.expect("the connection slots are never closed");
            }
        }
    }

    /// Asks the connection idle the longest (if any is idle) to close.
    fn evict_longest_idle(&self) {
        let open = crate::sync::lock(&self.open);
        let idle = open.values().filter(|c| c.busy.load(Ordering::SeqCst) == 0 && !c.evicting.load(Ordering::SeqCst));
        if let Some(conn) = idle.min_by_key(|c| c.idle_since_ms.load(Ordering::SeqCst)) {
            conn.evicting.store(true, Ordering::SeqCst);
            conn.evict.notify_one();
        }
    }

    fn register(&self) -> (u64, Arc<Conn>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            evicting: AtomicBool::new(false),
            evict: Notify::new(),
        });
        crate::sync::lock(&self.open).insert(id, conn.clone());
        (id, conn)
    }

    fn unregister(&self, id: u64) {
        crate::sync::lock(&self.open).remove(&id);
    }
}

/// Marks a connection busy while a request is in its handler.
struct Busy {
    conn: Arc<Conn>,
    conns: Arc<Conns>,
}

impl Busy {
    fn enter(conn: Arc<Conn>, conns: Arc<Conns>) -> Self {
        conn.busy.fetch_add(1, Ordering::SeqCst);
        Self { conn, conns }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn.idle_since_ms.store(self.conns.now_ms(), Ordering::SeqCst);
        self.conn.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `router` on `listener` until `shutdown` completes; then stops
/// accepting, lets requests in progress finish (closing idle connections
/// at once) for at most [`ServeConfig::shutdown_grace`], and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) {
    serve_moving(listener, None, router, config, shutdown).await;
}

/// [`serve`], moving to each listener `moves` sends (a new address from
/// the configuration file): new connections arrive on it, those already
/// open on the old one carry on.
pub async fn serve_moving(
    mut listener: TcpListener,
    mut moves: Option<tokio::sync::mpsc::Receiver<TcpListener>>,
    router: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) {
    let conns = Arc::new(Conns {
        slots: Arc::new(Semaphore::new(config.max_connections.max(1))),
        open: Mutex::default(),
        next_id: AtomicU64::new(0),
        started: Instant::now(),
    });
    let (stop, stopping) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            moved = async { moves.as_mut().expect("checked").recv().await }, if moves.is_some() => {
                match moved {
                    Some(next) => listener = next,
                    None => moves = None,
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        while tasks.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = conns.slot() => permit,
        };
        tasks.spawn(connection(stream, permit, conns.clone(), router.clone(), config.clone(), stopping.clone()));
    }
    drop(listener);
    stop.send_replace(true);
    let drained = tokio::time::timeout(config.shutdown_grace, async { while tasks.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::warn!(connections = tasks.len(), "requests still in progress at shutdown were cut off");
        tasks.shutdown().await;
    }
}

/// Errors that concern one connection only (it went away before it was
/// accepted): accept the next at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Serves one connection until it ends, is closed to make room, or the
/// server stops.
async fn connection(
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    conns: Arc<Conns>,
    router: Router,
    config: ServeConfig,
    mut stopping: watch::Receiver<bool>,
) {
    // Registered before any byte is read (a TLS handshake included), so a
    // connection that never completes one can be closed to make room.
    let (id, conn) = conns.register();
    match config.tls.clone() {
        None => serve_io(TokioIo::new(stream), (&conns, &conn), router, config, stopping).await,
        Some(tls) => {
            let handshake =
                tokio::time::timeout(config.header_timeout, tokio_rustls::TlsAcceptor::from(tls).accept(stream));
            tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => serve_io(TokioIo::new(stream), (&conns, &conn), router, config, stopping).await,
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake did not end within the header timeout"),
                },
                // Closed to make room (it is idle until it completes a
                // request), or the server is stopping.
                () = conn.evict.notified() => {}
                _ = stopping.changed() => {}
            }
        }
    }
    conns.unregister(id);
}

/// Serves HTTP/1 on one connection's byte stream (plain or TLS).
async fn serve_io<I>(
    io: I,
    (conns, conn): (&Arc<Conns>, &Arc<Conn>),
    router: Router,
    config: ServeConfig,
    mut stopping: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let body_timeout = config.body_timeout;
    let service = {
        let (conn, conns) = (conn.clone(), conns.clone());
        let stop_signal = stopping.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let busy = Busy::enter(conn.clone(), conns.clone());
            let router = router.clone();
            let stop_signal = stop_signal.clone();
            async move {
                let timed_out = Arc::new(AtomicBool::new(false));
                let ended = Arc::new(AtomicBool::new(http_body::Body::is_end_stream(request.body())));
                let request =
                    request.map(|body| Body::new(Deadline::new(body, body_timeout, timed_out.clone(), ended.clone())));
                let response = tower::ServiceExt::oneshot(router, request).await.unwrap_or_else(|e| match e {});
                if timed_out.load(Ordering::SeqCst) {
                    return Ok::<_, Infallible>(body_timeout_response(body_timeout));
                }
                // Busy until its body is sent: a stream (events, logs) is
                // not an idle connection to close for room. A stream ends
                // with a `stopping` event as soon as the server stops,
                // rather than holding the shutdown for its grace period.
                let streaming = response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
                let stop = streaming.then(|| {
                    let mut stopping = stop_signal;
                    let stopped: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                        let _ = stopping.wait_for(|stop| *stop).await;
                    });
                    stopped
                });
                let mut response =
                    response.map(|body| Body::new(Sending { inner: body, _busy: busy, stop, ended: false }));
                if !ended.load(Ordering::SeqCst) {
                    // Answered before its body was read (a refusal): the
                    // connection closes after this response, so say so,
                    // or the client would send its next request into it.
                    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
                }
                Ok(response)
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(config.header_timeout);
    let serving = builder.serve_connection(io, service);
    tokio::pin!(serving);
    let mut graceful = *stopping.borrow();
    if graceful {
        serving.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = serving.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended");
                }
                break;
            }
            () = conn.evict.notified() => {
                if conn.busy.load(Ordering::SeqCst) == 0 {
                    break; // dropped: closed to make room
                }
                conn.evicting.store(false, Ordering::SeqCst);
            }
            _ = stopping.changed(), if !graceful => {
                graceful = true;
                serving.as_mut().graceful_shutdown();
            }
        }
    }
}

fn body_timeout_response(timeout: Duration) -> Response {
    let message =
        format!("the request body did not arrive within {} (`--body-timeout`)", humantime::format_duration(timeout));
    let mut response = ApiError::new(ErrorCode::RequestTimeout, message).into_response();
    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

/// The request body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
struct BodyTimedOut(Duration);

/// A request body that fails once its deadline passes, and says so.
/// A response body that keeps its connection [`Busy`] until it is sent
/// (or dropped).
struct Sending {
    inner: Body,
    _busy: Busy,
    /// For a stream: completes when the server stops.
    stop: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The stream's `stopping` event was sent: nothing follows.
    ended: bool,
}

/// The last frame of a stream when the server stops.
fn stopping_event() -> bytes::Bytes {
    let data = serde_json::to_string(&crate::wire::Stopping::new()).unwrap_or_default();
    bytes::Bytes::from(format!("event: {}\ndata: {data}\n\n", crate::wire::Stopping::EVENT))
}

impl http_body::Body for Sending {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(stop) = &mut this.stop
            && stop.as_mut().poll(cx).is_ready()
        {
            this.ended = true;
            return Poll::Ready(Some(Ok(http_body::Frame::data(stopping_event()))));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

struct Deadline {
    inner: Incoming,
    timeout: Duration,
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: Arc<AtomicBool>,
    /// Set once the whole body was read.
    ended: Arc<AtomicBool>,
}

impl Deadline {
    fn new(inner: Incoming, timeout: Duration, timed_out: Arc<AtomicBool>, ended: Arc<AtomicBool>) -> Self {
        Self { inner, timeout, deadline: tokio::time::Instant::now() + timeout, sleep: None, timed_out, ended }
    }
}

impl http_body::Body for Deadline {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if frame.is_none() || this.inner.is_end_stream() {
                this.ended.store(true, Ordering::SeqCst);
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::SeqCst);
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_idle_connection_is_asked_to_close_and_never_a_busy_one() {
        let conns = Conns {
            slots: Arc::new(Semaphore::new(3)),
            open: Mutex::default(),
            next_id: AtomicU64::new(0),
            started: Instant::now(),
        };
        let (_, recent) = conns.register();
        let (_, busy) = conns.register();
        let (_, oldest) = conns.register();
        recent.idle_since_ms.store(5, Ordering::SeqCst);
        busy.idle_since_ms.store(1, Ordering::SeqCst);
        busy.busy.store(1, Ordering::SeqCst);
        oldest.idle_since_ms.store(3, Ordering::SeqCst);
        let asked = || [&recent, &busy, &oldest].map(|c| c.evicting.load(Ordering::SeqCst));
        conns.evict_longest_idle();
        assert_eq!(asked(), [false, false, true]);
        conns.evict_longest_idle();
        assert_eq!(asked(), [true, false, true]);
        conns.evict_longest_idle();
        assert_eq!(asked(), [true, false, true], "a connection in a request is never closed to make room");
    }
}
