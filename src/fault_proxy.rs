//! A TCP forwarder for tests that fault a real connection between two real endpoints:
//! it understands the peer protocol's framing (4-byte big-endian length, then the bytes)
//! and asks a rule what to do with every frame in either direction — forward it, delay
//! it, flip a byte in it, send half of it and hang up, hang up before it, or hang up on
//! the client only and deliver it to the server later (a frame still in flight on an old
//! connection while the client already uses a new one).
//!
//! Invariants:
//! - every accepted client connection gets its own upstream connection; connections are
//!   numbered from 0 in accept order, frames from 0 per connection and direction;
//! - a frame is forwarded whole or, when the rule says so, damaged or cut: the proxy never
//!   reorders or invents frames;
//! - [`Action::Cut`] and [`Action::Truncate`] close both sockets of that connection,
//!   [`Action::Hold`] the client's at once and the server's after delivering the frame
//!   (the other connections carry on);
//! - every frame the rule was asked about is reported on the [`Proxy::seen`] channel
//!   before it is acted on, so a test can wait for "frame K reached the proxy".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// Which way a frame travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// From the client that dialed the proxy to the upstream server.
    ToServer,
    /// From the upstream server back to the client.
    ToClient,
}

/// What to do with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Forward,
    /// Wait this long, then forward it.
    Pause(Duration),
    /// Flip one bit in the middle of its payload, then forward it.
    Corrupt,
    /// Forward its length and the first half of its payload, then close both sockets.
    Truncate,
    /// Close both sockets without forwarding it.
    Cut,
    /// Close the client's socket at once (its next writes fail), wait this long, then
    /// forward this frame to the server and close that socket too. Only [`Dir::ToServer`].
    Hold(Duration),
}

/// Decides the fate of frame `frame` of connection `conn` travelling `dir`.
pub type Rule = Arc<dyn Fn(usize, Dir, u64) -> Action + Send + Sync>;

/// A running proxy; dropping it stops accepting (live connections end with the runtime).
pub struct Proxy {
    pub addr: SocketAddr,
    /// `(conn, dir, frame)` of every frame the rule was asked about.
    pub seen: mpsc::UnboundedReceiver<(usize, Dir, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` under `rule`.
    pub async fn start(upstream: SocketAddr, rule: Rule) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            for conn in 0usize.. {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let gone = Gone::default();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (r, w, dir) in [(cr, sw, Dir::ToServer), (sr, cw, Dir::ToClient)] {
                    let (rule, tx, gone) = (rule.clone(), tx.clone(), gone.clone());
                    tokio::spawn(async move {
                        pump(r, w, conn, dir, rule, tx, &gone).await;
                        // Whatever ended this direction ends the other one too.
                        let _ = gone.all.send(true);
                    });
                }
            }
        });
        Proxy { addr, seen, task }
    }

    /// Waits until frame `frame` of connection `conn` going `dir` reached the proxy.
    pub async fn wait_seen(&mut self, conn: usize, dir: Dir, frame: u64) {
        let wanted = (conn, dir, frame);
        tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(s) = self.seen.recv().await {
                if s == wanted {
                    return;
                }
            }
            panic!("the proxy stopped before {wanted:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("{wanted:?} never reached the proxy"));
    }
}

/// One connection's hang-up signals: the client's socket, or both.
#[derive(Clone)]
struct Gone {
    client: Arc<watch::Sender<bool>>,
    all: Arc<watch::Sender<bool>>,
}

impl Default for Gone {
    fn default() -> Gone {
        Gone {
            client: Arc::new(watch::channel(false).0),
            all: Arc::new(watch::channel(false).0),
        }
    }
}

/// Resolves once `w` says true (never, if its sender is gone first).
async fn signalled(mut w: watch::Receiver<bool>) {
    if w.wait_for(|&v| v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Moves frames from `r` to `w` until either side ends or the rule hangs up. Returning
/// drops (closes) this direction's halves; the caller then ends the other direction.
async fn pump(
    r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    conn: usize,
    dir: Dir,
    rule: Rule,
    seen: mpsc::UnboundedSender<(usize, Dir, u64)>,
    gone: &Gone,
) {
    let mut r = Some(r);
    // The client's socket is closed once both its halves are dropped: the half this
    // direction owns goes as soon as the client is gone.
    let client_gone = signalled(gone.client.subscribe());
    let all_gone = signalled(gone.all.subscribe());
    tokio::pin!(client_gone, all_gone);
    for frame in 0u64.. {
        let Some(reader) = r.as_mut() else { return };
        let mut len = [0u8; 4];
        let mut payload = Vec::new();
        let read = async {
            reader.read_exact(&mut len).await?;
            payload.resize(u32::from_be_bytes(len) as usize, 0);
            reader.read_exact(&mut payload).await.map(|_| ())
        };
        let ok = tokio::select! {
            res = read => res.is_ok(),
            _ = &mut all_gone => return,
            _ = &mut client_gone, if dir == Dir::ToClient => return,
        };
        if !ok {
            // Pass on what there was of it: the receiver sees a short frame too.
            if !payload.is_empty() {
                let _ = w.write_all(&len).await;
            }
            return;
        }
        let n = payload.len();
        let _ = seen.send((conn, dir, frame));
        match rule(conn, dir, frame) {
            Action::Forward => {}
            Action::Pause(d) => tokio::time::sleep(d).await,
            Action::Corrupt => {
                if n > 0 {
                    payload[n / 2] ^= 0x10;
                }
            }
            Action::Truncate => {
                let _ = w.write_all(&len).await;
                let _ = w.write_all(&payload[..n / 2]).await;
                let _ = w.flush().await;
                return;
            }
            Action::Cut => return,
            Action::Hold(d) => {
                assert_eq!(dir, Dir::ToServer, "only frames to the server can be held");
                drop(r.take());
                let _ = gone.client.send(true);
                tokio::time::sleep(d).await;
            }
        }
        if w.write_all(&len).await.is_err()
            || w.write_all(&payload).await.is_err()
            || w.flush().await.is_err()
        {
            return;
        }
    }
}
