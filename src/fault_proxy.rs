//! A TCP forwarder for tests that fault a real connection between two real endpoints:
//! it understands the peer protocol's framing (4-byte big-endian length, then the bytes)
//! and asks a rule what to do with every frame in either direction — forward it, delay
//! it, flip a byte in it, send half of it and hang up, or hang up before it.
//!
//! Invariants:
//! - every accepted client connection gets its own upstream connection; connections are
//!   numbered from 0 in accept order, frames from 0 per connection and direction;
//! - a frame is forwarded whole or, when the rule says so, damaged or cut: the proxy never
//!   reorders or invents frames;
//! - [`Action::Cut`] and [`Action::Truncate`] shut down both sockets of that connection
//!   (the other connections carry on);
//! - every frame the rule was asked about is reported on the [`Proxy::seen`] channel
//!   before it is acted on, so a test can wait for "frame K reached the proxy".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

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
    /// Forward its length and the first half of its payload, then shut both sockets.
    Truncate,
    /// Shut both sockets without forwarding it.
    Cut,
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
                let (client, client_ctl) = controllable(client);
                let (server, server_ctl) = controllable(server);
                let kill = Arc::new(move || {
                    let _ = client_ctl.shutdown(std::net::Shutdown::Both);
                    let _ = server_ctl.shutdown(std::net::Shutdown::Both);
                });
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (r, w, dir) in [(cr, sw, Dir::ToServer), (sr, cw, Dir::ToClient)] {
                    let (rule, tx, kill) = (rule.clone(), tx.clone(), kill.clone());
                    tokio::spawn(async move {
                        pump(r, w, conn, dir, rule, tx).await;
                        kill();
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

/// The stream and a handle on the same socket that can shut it down from anywhere.
fn controllable(s: TcpStream) -> (TcpStream, std::net::TcpStream) {
    let std = s.into_std().unwrap();
    let ctl = std.try_clone().unwrap();
    (TcpStream::from_std(std).unwrap(), ctl)
}

/// Moves frames from `r` to `w` until either side ends or the rule cuts the connection.
async fn pump(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    conn: usize,
    dir: Dir,
    rule: Rule,
    seen: mpsc::UnboundedSender<(usize, Dir, u64)>,
) {
    for frame in 0u64.. {
        let mut len = [0u8; 4];
        if r.read_exact(&mut len).await.is_err() {
            return;
        }
        let n = u32::from_be_bytes(len) as usize;
        let mut payload = vec![0u8; n];
        if r.read_exact(&mut payload).await.is_err() {
            // Pass on what there was of it: the receiver sees the same short frame.
            let _ = w.write_all(&len).await;
            return;
        }
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
        }
        if w.write_all(&len).await.is_err()
            || w.write_all(&payload).await.is_err()
            || w.flush().await.is_err()
        {
            return;
        }
    }
}
