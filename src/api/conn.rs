//! Client connections: how many may be open, and how long one may sit idle.
//!
//! Every client listener (gRPC, HTTP, RESP) asks one shared [`ConnLimiter`] before it
//! serves an accepted connection. Beyond `max_connections` the connection is answered with
//! the protocol's refusal ([`REFUSED_RESP`], [`refused_http`]; gRPC simply closes, which a
//! client sees as `UNAVAILABLE` and retries elsewhere) and closed, so a flood of idle
//! sockets can use up neither the process's file descriptors (which RocksDB needs for its
//! own files) nor its memory. The limit is also kept below the process's open-file limit,
//! which the server raises to its hard limit at start.
//!
//! With client TLS on, an admitted connection is then opened by
//! [`crate::api::tls::ListenerTls::open`] (the bounded handshake) before its protocol
//! runs ([`ConnLimiter::open`]); a connection over the limit is then closed without an
//! answer (a plaintext refusal means nothing to a TLS client).
//!
//! [`Guarded`] wraps an accepted stream: it holds the connection's place in the limit and
//! fails a read or a write with `TimedOut` once nothing has been read or written for the
//! idle timeout (a client that sends nothing, or stops reading its replies), which ends
//! the connection in every protocol server.
//!
//! Invariants:
//! - open client connections never exceed the limit: a place is taken before the
//!   connection is served and given back when its stream is dropped;
//! - a refused connection costs one short-lived task and is closed within a second;
//! - the gauge `paxosdb_client_connections` counts exactly the places taken, each under
//!   the listener that took it.

use crate::api::tls::{ClientStream, ListenerTls, Protocol};
use crate::metrics::Metrics;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// File descriptors kept for everything but client connections (RocksDB's files, peer
/// connections, state transfers).
pub const RESERVED_FDS: u64 = 1024;

/// What a RESP client gets when the limit is reached (Redis' own words).
pub const REFUSED_RESP: &[u8] = b"-ERR max number of clients reached\r\n";

/// What an HTTP client gets when the limit is reached.
pub fn refused_http() -> Vec<u8> {
    let body = r#"{"error":{"code":"overloaded","message":"too many client connections (max_connections); retry shortly"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The connection limit and idle timeout shared by every client listener of a node.
pub struct ConnLimiter {
    places: Arc<Semaphore>,
    idle: Option<Duration>,
    tls: Option<ListenerTls>,
    metrics: Arc<Metrics>,
}

/// One connection's place in the limit; given back when dropped.
pub struct Place {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
    listener: Protocol,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.metrics
            .listener(self.listener)
            .open
            .fetch_sub(1, Relaxed);
    }
}

impl ConnLimiter {
    /// `limit` connections at most (lowered to fit the open-file limit), closing those idle
    /// for `idle` (`None`: never), each opened with `tls` if given.
    pub fn new(
        limit: usize,
        idle: Option<Duration>,
        tls: Option<ListenerTls>,
        metrics: Arc<Metrics>,
    ) -> Arc<ConnLimiter> {
        let fds = open_file_limit();
        let fit = fds.saturating_sub(RESERVED_FDS).max(16) as usize;
        if fit < limit {
            tracing::warn!(
                max_connections = limit,
                open_file_limit = fds,
                "the open-file limit is too low for max_connections; serving at most {fit} \
                 client connections (raise `ulimit -n`)"
            );
        }
        Arc::new(ConnLimiter {
            places: Arc::new(Semaphore::new(limit.min(fit))),
            idle,
            tls,
            metrics,
        })
    }

    /// Takes a place for a new connection to the `listener` listener, or `None` at the
    /// limit.
    pub fn admit(&self, listener: Protocol) -> Option<Place> {
        let stats = self.metrics.listener(listener);
        match self.places.clone().try_acquire_owned() {
            Ok(p) => {
                stats.open.fetch_add(1, Relaxed);
                Some(Place {
                    _permit: p,
                    metrics: self.metrics.clone(),
                    listener,
                })
            }
            Err(_) => {
                stats.refused.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// The TLS setup of the client listeners, if client TLS is on.
    pub fn tls(&self) -> Option<&ListenerTls> {
        self.tls.as_ref()
    }

    /// Opens an admitted connection for protocol `p`: the TLS handshake if client TLS is
    /// on. `None`: the connection is over (failed handshake, plaintext client answered).
    pub async fn open(&self, tcp: TcpStream, p: Protocol) -> Option<ClientStream> {
        match &self.tls {
            None => Some(ClientStream::Plain(tcp)),
            Some(tls) => tls.open(tcp, p).await,
        }
    }

    /// Answers a connection refused at the limit with `refusal` and closes it, in the
    /// background and within a second (with client TLS on: closes it at once).
    pub fn refuse(&self, mut stream: TcpStream, refusal: &'static [u8]) {
        if self.tls.is_some() {
            return;
        }
        tokio::spawn(async move {
            let write = async {
                stream.write_all(refusal).await?;
                stream.shutdown().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
        });
    }

    /// Wraps an admitted stream with the idle timeout.
    pub fn guard<S>(&self, inner: S, place: Place) -> Guarded<S> {
        Guarded {
            inner,
            idle: self.idle,
            deadline: self.idle.map(|d| Box::pin(tokio::time::sleep(d))),
            metrics: self.metrics.clone(),
            place,
        }
    }
}

/// Waits up to `within` for a stopped listener's connection tasks to end, then aborts
/// the rest.
pub async fn drain(mut tasks: tokio::task::JoinSet<()>, within: Duration) {
    let wait = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(within, wait).await.is_err() {
        tasks.abort_all();
    }
}

/// The process's soft open-file limit, after raising it to the hard limit.
pub fn open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

/// An admitted client stream: holds its place in the limit and times out when idle.
pub struct Guarded<S> {
    inner: S,
    idle: Option<Duration>,
    deadline: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
    place: Place,
}

impl<S> Guarded<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn active(&mut self) {
        if let (Some(d), Some(idle)) = (self.deadline.as_mut(), self.idle) {
            d.as_mut().reset(Instant::now() + idle);
        }
    }

    /// What a write of the inner stream means for the deadline: progress resets it; a
    /// client that stops reading must not hold a reply (and its place) forever.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) if n > 0 => self.active(),
            Poll::Pending => {
                if let Some(e) = self.expired(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            _ => {}
        }
        r
    }

    /// After the inner stream said `Pending`: the idle deadline, if it has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        let d = self.deadline.as_mut()?;
        if d.as_mut().poll(cx).is_pending() {
            return None;
        }
        (self.metrics.listener(self.place.listener).timed_out).fetch_add(1, Relaxed);
        Some(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client connection idle for too long (sending nothing, or reading nothing)",
        ))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded<ClientStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.tcp().connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn places_are_limited_and_given_back() {
        let m = Metrics::new();
        let l = ConnLimiter::new(2, None, None, m.clone());
        let a = l.admit(Protocol::Grpc).unwrap();
        let _b = l.admit(Protocol::Resp).unwrap();
        assert!(l.admit(Protocol::Http).is_none());
        assert_eq!(m.connections(), 2);
        assert_eq!(m.listener(Protocol::Resp).open.load(Relaxed), 1);
        assert_eq!(m.listener(Protocol::Http).refused.load(Relaxed), 1);
        assert_eq!(m.listener(Protocol::Grpc).refused.load(Relaxed), 0);
        drop(a);
        assert_eq!(m.listener(Protocol::Grpc).open.load(Relaxed), 0);
        assert!(l.admit(Protocol::Grpc).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_times_out_and_an_active_one_does_not() {
        let m = Metrics::new();
        let l = ConnLimiter::new(4, Some(Duration::from_secs(10)), None, m.clone());
        let (mut client, server) = pair().await;
        let mut g = l.guard(server, l.admit(Protocol::Http).unwrap());
        let mut buf = [0u8; 8];
        // Activity keeps it open past the timeout.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(g.read(&mut buf).await.unwrap(), 1);
        }
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(m.listener(Protocol::Http).timed_out.load(Relaxed), 1);
        drop(g);
        assert_eq!(m.connections(), 0);
    }
}
