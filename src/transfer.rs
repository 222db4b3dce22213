//! State transfer over the network: a node behind a peer's compacted log fetches the
//! peer's whole state machine instead of log entries.
//!
//! The fetching node dials the peer's peer port with a [`Hello`] whose purpose is
//! [`Purpose::FetchState`] (the same membership and incarnation checks as replication).
//! The serving node exports a consistent point-in-time copy of its state
//! ([`crate::kv::transfer`]) as a stream of [`StatePart`] frames — chunks of about 1 MiB,
//! each with a CRC, then an end frame with counts and a digest over everything — and the
//! fetching node writes each chunk into its staging area as it arrives.
//!
//! Invariants:
//! - neither side holds the whole state in memory: the exporter runs on a blocking thread
//!   and hands chunks through a channel of [`IN_FLIGHT`] chunks, so TCP back-pressure
//!   slows the export down; the importer writes each chunk before reading the next;
//! - the live state of the fetching node is untouched until the node core installs the
//!   complete, verified staged state in one atomic switch; a broken connection, a bad CRC,
//!   a missing end frame or a wrong digest fails the fetch, and the next fetch starts
//!   over with an empty staging area;
//! - a stalled transfer fails after [`STALL`] without a frame ([`fetch_with_stall`] takes
//!   another limit; only tests use it).

use crate::command::NodeId;
use crate::error::{Error, Result};
use crate::kv::transfer::StatePart;
use crate::kv::KvStore;
use crate::machine::StateMachine;
use crate::node::Event;
use crate::transport::{
    self, read_frame, write_frame, Hello, MembershipReply, Purpose, SharedMembership,
    TransportConfig,
};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};

/// Chunks exported ahead of the network.
pub const IN_FLIGHT: usize = 4;
/// A transfer that sees no frame for this long fails.
pub const STALL: Duration = Duration::from_secs(60);

/// Something whose state can be streamed to a peer.
pub trait StateSource: Send + Sync + 'static {
    /// Streams a consistent copy to `sink` (see [`KvStore::export`]).
    fn export(&self, sink: &mut dyn FnMut(StatePart) -> Result<()>) -> Result<()>;
}

impl StateSource for KvStore {
    fn export(&self, sink: &mut dyn FnMut(StatePart) -> Result<()>) -> Result<()> {
        KvStore::export(self, sink)
    }
}

/// Serves one state fetch on `stream` (after its hello was checked).
pub async fn serve(
    stream: transport::PeerStream,
    source: Arc<dyn StateSource>,
    max_frame: usize,
) -> Result<()> {
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<StatePart>(IN_FLIGHT);
    let export = tokio::task::spawn_blocking(move || {
        source.export(&mut |part| {
            tx.blocking_send(part)
                .map_err(|_| Error::Unavailable("the fetching peer went away".into()))
        })
    });
    let mut w = BufWriter::new(stream);
    let mut bytes = 0u64;
    while let Some(part) = rx.recv().await {
        if let StatePart::Chunk(c) = &part {
            bytes += c.payload_bytes();
        }
        write_frame(&mut w, &part, max_frame).await?;
    }
    w.flush().await?;
    // Dropping the receiver above ends a blocked export; its result says why it ended.
    export
        .await
        .map_err(|e| Error::Internal(format!("state export task: {e}")))??;
    tracing::info!(
        bytes,
        secs = started.elapsed().as_secs_f64(),
        "state sent to a peer"
    );
    Ok(())
}

/// Fetches `peer`'s state at `addr` into `kv`'s staging area; returns its applied index.
/// Fails after [`STALL`] without a frame.
pub async fn fetch(addr: &str, cfg: &TransportConfig, peer: NodeId, kv: KvStore) -> Result<u64> {
    fetch_with_stall(addr, cfg, peer, kv, STALL).await
}

/// [`fetch`], failing once no frame arrived for `stall` (tests use a short one).
pub async fn fetch_with_stall(
    addr: &str,
    cfg: &TransportConfig,
    peer: NodeId,
    kv: KvStore,
    stall: Duration,
) -> Result<u64> {
    let started = Instant::now();
    let stream = transport::dial(addr, cfg, peer).await?;
    let (r, w) = tokio::io::split(stream);
    let mut w = BufWriter::new(w);
    let hello: Hello = cfg.hello(peer, Purpose::FetchState);
    write_frame(&mut w, &hello, transport::MAX_HELLO_FRAME).await?;
    w.flush().await?;
    let mut r = BufReader::with_capacity(1 << 20, r);
    let mut importer = Some(blocking(move || kv.importer()).await?);
    let mut bytes = 0u64;
    loop {
        let part: StatePart = tokio::time::timeout(stall, read_frame(&mut r, cfg.max_frame))
            .await
            .map_err(|_| {
                Error::Unavailable(format!("no state frame from node {peer} for {stall:?}"))
            })?
            .map_err(|e| Error::Unavailable(format!("state stream from node {peer}: {e}")))?;
        let mut imp = importer.take().expect("importer present until the end");
        match part {
            StatePart::Chunk(c) => {
                bytes += c.payload_bytes();
                importer = Some(
                    blocking(move || {
                        imp.chunk(c)?;
                        Ok(imp)
                    })
                    .await?,
                );
            }
            StatePart::End(end) => {
                let applied = blocking(move || imp.finish(end)).await?;
                tracing::info!(
                    peer,
                    applied,
                    bytes,
                    secs = started.elapsed().as_secs_f64(),
                    "state received and staged"
                );
                return Ok(applied);
            }
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("state import task: {e}")))?
}

/// The node's [`crate::transport::Fetcher`]: fetches in the background on `rt` and reports
/// [`Event::StateFetched`] to the node.
pub fn fetcher(
    rt: tokio::runtime::Handle,
    cfg: TransportConfig,
    kv: KvStore,
    events: mpsc::Sender<Event>,
    membership: SharedMembership,
) -> transport::Fetcher {
    Box::new(move |peer| {
        let (cfg, kv, events) = (cfg.clone(), kv.clone(), events.clone());
        let addr = membership.read().unwrap().addr_of(peer).map(str::to_string);
        rt.spawn(async move {
            let res = match addr {
                Some(addr) => fetch(&addr, &cfg, peer, kv).await,
                None => Err(Error::Internal(format!("node {peer} is not a member"))),
            };
            if let Err(e) = &res {
                tracing::warn!(peer, "state fetch failed: {e}");
                // Do not come back at once: the peer asks again on its next resend.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let _ = events.send(Event::StateFetched(res));
        });
    })
}

/// Asks the node at `addr` for the membership in force.
pub async fn query_membership(addr: &str, cfg: &TransportConfig) -> Result<MembershipReply> {
    let mut stream = transport::dial(addr, cfg, 0).await?;
    let hello = cfg.hello(0, Purpose::Membership);
    write_frame(&mut stream, &hello, transport::MAX_HELLO_FRAME).await?;
    stream.flush().await?;
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        read_frame(&mut stream, transport::MAX_HELLO_FRAME),
    )
    .await
    .map_err(|_| Error::Unavailable(format!("{addr} did not answer the membership query")))??;
    Ok(reply)
}

/// Joins a running cluster through the members at `join` (comma-separated peer
/// addresses): waits until a membership change added this node, then fetches and installs
/// a member's state (which records the membership). Asks the given addresses and every
/// member it has heard of in turn, so one member leaving does not strand the joiner.
/// Returns once this node's state is installed.
pub async fn join(join: &str, cfg: &TransportConfig, kv: &mut KvStore) -> Result<()> {
    let mut candidates: Vec<String> = join
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if candidates.is_empty() {
        return Err(Error::Config("--join needs a member's peer address".into()));
    }
    let mut announced = false;
    for attempt in 0usize.. {
        let via = candidates[attempt % candidates.len()].clone();
        match query_membership(&via, cfg).await {
            Ok(r) if r.membership.contains(cfg.id) => {
                let addr = r.membership.addr_of(r.id).unwrap_or(&via).to_string();
                tracing::info!(
                    from = r.id,
                    config = r.membership.config_id,
                    "this node is a member now: fetching the cluster's state"
                );
                match fetch(&addr, cfg, r.id, kv.clone()).await {
                    Ok(_) => {
                        let mut installed = kv.clone();
                        *kv = blocking(move || {
                            installed.install_staged()?;
                            Ok(installed)
                        })
                        .await?;
                        return Ok(());
                    }
                    Err(e) => tracing::warn!("state fetch from node {} failed: {e}", r.id),
                }
            }
            Ok(r) => {
                if !announced {
                    tracing::info!(
                        "waiting to be added to the cluster (members: {}): run \
                         `paxosdb cluster add-node {} <this node's peer address>`",
                        r.membership.describe(),
                        cfg.id
                    );
                    announced = true;
                }
                for m in &r.membership.members {
                    if m.id != cfg.id && !candidates.contains(&m.addr) {
                        candidates.push(m.addr.clone());
                    }
                }
            }
            Err(e) => tracing::warn!("cannot reach {via} to join: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    unreachable!("the join loop only ends by returning")
}

#[cfg(test)]
#[path = "transfer_net_tests.rs"]
mod net_tests;
