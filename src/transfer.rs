//! State transfer over the network: a node behind a peer's compacted log fetches the
//! peer's whole state machine instead of log entries.
//!
//! The fetching node dials the peer's peer port with a [`Hello`] whose purpose is
//! [`Purpose::FetchState`] (the same membership and incarnation checks as replication).
//! The serving node exports each state machine's consistent point-in-time copy in turn
//! ([`Transferable`]; e.g. `kv::transfer`: chunks of about 1 MiB, each with a CRC, then an
//! end with counts and a digest over everything), framed as [`Frame::Part`]s tagged with
//! the machine, then [`Frame::Done`]; the fetching node hands each part to that machine's
//! importer, which stages it as it arrives. The transfer layer never decodes a part.
//! Meanwhile the members hold their logs from the state's index (transfer holds, see
//! `node::compaction`), so that the node follows the log once the state is installed.
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
use crate::machine::Machine;
use crate::metrics::Metrics;
use crate::node::Event;
use crate::transport::{
    self, read_frame, write_frame, Hello, MembershipReply, Purpose, SharedMembership,
    TransportConfig,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};

/// Frames exported ahead of the network.
pub const IN_FLIGHT: usize = 4;
/// A transfer that sees no frame for this long fails.
pub const STALL: Duration = Duration::from_secs(60);

/// One frame of a state transfer: a part of one machine's state, in that machine's own
/// encoding (its chunks, checksums and end marker; e.g. `kv::transfer`), and finally
/// `Done` once every machine's state was sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    Part {
        machine: Machine,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    Done,
}

/// One state machine's state as a transfer moves it; implemented beside each machine.
pub trait Transferable: Send + Sync + 'static {
    fn machine(&self) -> Machine;
    /// Streams a consistent point-in-time copy to `sink`, part by part, without holding
    /// the whole state in memory. `pinned` is called once, with the copy's applied index,
    /// as soon as the point in time is fixed and before the first part (a backup pins
    /// every machine while the node applies nothing, so that their copies agree).
    fn export(
        &self,
        pinned: &mut dyn FnMut(u64),
        sink: &mut dyn FnMut(Vec<u8>) -> Result<()>,
    ) -> Result<()>;
    /// Starts staging an incoming copy beside the live state (an earlier, unfinished one
    /// is discarded).
    fn importer(&self) -> Result<Box<dyn Import>>;
}

/// The receiving side of one machine's transfer.
pub trait Import: Send {
    /// Stages one part (a bad one is refused and changes nothing).
    fn part(&mut self, bytes: Vec<u8>) -> Result<()>;
    /// Verifies the whole staged copy and makes it durable and installable; returns its
    /// applied index. Fails if the machine's own end marker did not arrive.
    fn finish(self: Box<Self>) -> Result<u64>;
}

/// The states of every machine of a node, in the order they are sent, and where the bytes
/// moved are counted.
#[derive(Clone)]
pub struct States(Arc<Vec<Arc<dyn Transferable>>>, Option<Arc<Metrics>>);

impl States {
    pub fn new(all: Vec<Arc<dyn Transferable>>) -> States {
        States(Arc::new(all), None)
    }

    /// Counts the states and bytes sent and received in `m` from now on.
    pub fn with_metrics(mut self, m: Arc<Metrics>) -> States {
        self.1 = Some(m);
        self
    }

    /// Every machine, in the order they are sent.
    pub fn all(&self) -> &[Arc<dyn Transferable>] {
        &self.0
    }

    fn count(&self, f: impl FnOnce(&Metrics)) {
        if let Some(m) = &self.1 {
            f(m);
        }
    }
}

/// Serves one state fetch on `stream` (after its hello was checked).
pub async fn serve(stream: transport::PeerStream, states: States, max_frame: usize) -> Result<()> {
    let started = Instant::now();
    let counted = states.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Frame>(IN_FLIGHT);
    let export = tokio::task::spawn_blocking(move || {
        let gone = || Error::Unavailable("the fetching peer went away".into());
        for m in states.0.iter() {
            let machine = m.machine();
            m.export(&mut |_| {}, &mut |bytes| {
                tx.blocking_send(Frame::Part { machine, bytes })
                    .map_err(|_| gone())
            })?;
        }
        tx.blocking_send(Frame::Done).map_err(|_| gone())
    });
    let mut w = BufWriter::new(stream);
    let mut bytes = 0u64;
    while let Some(frame) = rx.recv().await {
        if let Frame::Part { bytes: b, .. } = &frame {
            bytes += b.len() as u64;
            let n = b.len() as u64;
            counted.count(|m| {
                m.transfer_bytes_sent.fetch_add(n, Relaxed);
            });
        }
        write_frame(&mut w, &frame, max_frame).await?;
    }
    w.flush().await?;
    // Dropping the receiver above ends a blocked export; its result says why it ended.
    export
        .await
        .map_err(|e| Error::Internal(format!("state export task: {e}")))??;
    counted.count(|m| {
        m.transfers_sent.fetch_add(1, Relaxed);
    });
    tracing::info!(
        bytes,
        secs = started.elapsed().as_secs_f64(),
        "state sent to a peer"
    );
    Ok(())
}

/// Fetches `peer`'s state at `addr` into the staging areas of `states`; returns the
/// smallest applied index among the staged machines. Fails after [`STALL`] without a
/// frame.
pub async fn fetch(addr: &str, cfg: &TransportConfig, peer: NodeId, states: States) -> Result<u64> {
    fetch_with_stall(addr, cfg, peer, states, STALL).await
}

/// [`fetch`], failing once no frame arrived for `stall` (tests use a short one).
pub async fn fetch_with_stall(
    addr: &str,
    cfg: &TransportConfig,
    peer: NodeId,
    states: States,
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
    let all = states.clone();
    let mut importers: Vec<Option<(Machine, Box<dyn Import>)>> = blocking(move || {
        all.0
            .iter()
            .map(|m| Ok(Some((m.machine(), m.importer()?))))
            .collect()
    })
    .await?;
    let mut bytes = 0u64;
    loop {
        let frame: Frame = tokio::time::timeout(stall, read_frame(&mut r, cfg.max_frame))
            .await
            .map_err(|_| {
                Error::Unavailable(format!("no state frame from node {peer} for {stall:?}"))
            })?
            .map_err(|e| Error::Unavailable(format!("state stream from node {peer}: {e}")))?;
        match frame {
            Frame::Part { machine, bytes: b } => {
                bytes += b.len() as u64;
                let n = b.len() as u64;
                states.count(|m| {
                    m.transfer_bytes_received.fetch_add(n, Relaxed);
                });
                let slot = importers
                    .iter_mut()
                    .find(|i| i.as_ref().is_some_and(|(m, _)| *m == machine))
                    .ok_or_else(|| {
                        Error::Unavailable(format!(
                            "node {peer} sent state of a {machine:?} machine this node lacks"
                        ))
                    })?;
                let (m, mut imp) = slot.take().expect("found above");
                *slot = Some(
                    blocking(move || {
                        imp.part(b)?;
                        Ok((m, imp))
                    })
                    .await?,
                );
            }
            Frame::Done => {
                let applied = blocking(move || {
                    let mut applied = u64::MAX;
                    for (_, imp) in importers.into_iter().flatten() {
                        applied = applied.min(imp.finish()?);
                    }
                    Ok(applied)
                })
                .await?;
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

/// Runs `f` on the blocking pool; a task that died is an internal error.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task: {e}")))?
}

/// The node's [`crate::transport::Fetcher`]: fetches in the background on `rt` and reports
/// [`Event::StateFetched`] to the node.
pub fn fetcher(
    rt: tokio::runtime::Handle,
    cfg: TransportConfig,
    states: States,
    events: mpsc::Sender<Event>,
    membership: SharedMembership,
) -> transport::Fetcher {
    Box::new(move |peer| {
        let (cfg, states, events) = (cfg.clone(), states.clone(), events.clone());
        let addr = membership.read().unwrap().addr_of(peer).map(str::to_string);
        rt.spawn(async move {
            let res = match addr {
                Some(addr) => fetch(&addr, &cfg, peer, states).await,
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
/// Returns once this node's state is staged: the caller installs it.
pub async fn join(join: &str, cfg: &TransportConfig, states: &States) -> Result<()> {
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
                match fetch(&addr, cfg, r.id, states.clone()).await {
                    Ok(_) => return Ok(()),
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
