//! The `transfer` fault family: faults aimed at state transfers, which faults at random
//! times almost never hit. Each waits, by observing the nodes, until the moment it is
//! about, and only counts when it landed there.
//!
//! - `kill-transfer-sender` / `pause-transfer-sender`: when the whole cluster is up to
//!   date (every member within [`UP_TO_DATE`] entries of the leader, none catching up), a
//!   follower F is killed; once every other member has trimmed its log past F's position
//!   (their `compacted_index` in `Status` above F's decided and applied index plus a
//!   [`MARGIN`] for entries F accepted but had not seen decided), F is restarted, so it
//!   must fetch a peer's state. The nemesis watches the other nodes' logs (every few
//!   milliseconds) for the line a node writes when it begins sending its state to F, and
//!   at once kills -9 (or SIGSTOPs) that sender S. The fault *landed* if S had not logged
//!   `state sent to a peer` by then — S's log is final once it is dead or stopped, so this
//!   is exact — and then, for a kill, if F logged its fetch from S as failed by the end
//!   of the fault (its stream broke), for a pause, if F still reports
//!   `catching_up_from = S` at the end of the fault (the stream stalled for the whole
//!   pause). A transfer that finished before
//!   the signal is a *miss*: logged, counted in [`super::Summary::transfer_missed`], not
//!   an injection. The heal restarts or resumes S; F fetches again (a kill) or finishes
//!   (a pause).
//! - `pause-past-retention`: when the cluster is up to date (as above; F is then inside
//!   the others' logs, which is checked), a follower F is paused; the nemesis overwrites
//!   the ballast keys with [`FILL_BYTES`] (what the others send F meanwhile waits in
//!   sockets and peer queues, from which F would catch up without the trimmed entries;
//!   this is more than those hold), waits until every other member has trimmed its log
//!   past F's position (as above), resumes F, and
//!   requires that F catches up (its applied index reaches what the others had applied at
//!   the resume) and that it did so by a state transfer (a `state installed` line in F's
//!   log after the resume). Catching up any other way, or not within [`CATCH_UP`], is an
//!   injection error: the retention did not work as the run assumes.
//!
//! These faults need the tiny log budget (trimming every 10 entries), and the sender
//! faults need transfers that last long enough to be caught: the run loads
//! [`BALLAST_VALUES`] values of about 1 MB before the workload starts, so every transfer
//! moves some 24 MB (a few hundred milliseconds on loopback). Not more: a transfer that
//! lasts longer than the cluster takes to write the 40 entries the tiny budget keeps
//! leaves the node behind the trimmed logs again when it installs the state, and it
//! fetches again, round after round (seen with 64 MB under this workload).
//!
//! Invariants:
//! - a fault counts only when it landed where it claims (the sender mid-stream; the
//!   follower behind the trimmed logs and caught up by a transfer);
//! - the waits end when the run stops, and are capped ([`WAIT_TRIM`], [`WAIT_SENDER`],
//!   [`CATCH_UP`]); what a cap cuts short is a miss or an injection error, never a pass.

use super::cluster::ProcCluster;
use super::faults::Fault;
use super::workload::Shared;
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Ballast values loaded when a sender fault is enabled, and their size.
pub const BALLAST_VALUES: usize = 24;
pub const BALLAST_VALUE_BYTES: usize = 1_000_000;
/// Longest wait for the others to trim past the lagging follower.
pub const WAIT_TRIM: Duration = Duration::from_secs(30);
/// Longest wait for a node to begin sending its state to the restarted follower.
pub const WAIT_SENDER: Duration = Duration::from_secs(20);
/// How far past a follower's decided index the others must have trimmed: it may hold
/// entries it accepted beyond its decided index (those in flight when it stopped), from
/// which a leader could still catch it up without a state transfer.
pub const MARGIN: u64 = 40;
/// How close to the leader's applied index every member must be for a follower to be
/// picked.
pub const UP_TO_DATE: u64 = 20;
/// Longest wait for the resumed follower to catch up.
pub const CATCH_UP: Duration = Duration::from_secs(30);

/// Why a transfer fault did not count.
#[derive(Debug)]
pub enum NotLanded {
    /// It ran, but not where it aims (the transfer had ended, or never began in time).
    Missed(String),
    /// It could not be made (a signal failed, a node did not catch up as it must).
    Failed(String),
}

/// The lines of a node log from byte `from` on.
fn lines_from(log: &Path, from: u64) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    let read = std::fs::File::open(log).and_then(|mut f| {
        f.seek(SeekFrom::Start(from))?;
        f.read_to_end(&mut bytes)
    });
    if read.is_err() {
        return Vec::new();
    }
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The value of field `name=` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

/// Every node's log length now.
fn mark(c: &ProcCluster) -> BTreeMap<u64, u64> {
    c.nodes
        .iter()
        .map(|n| (n.id, std::fs::metadata(&n.log).map_or(0, |m| m.len())))
        .collect()
}

/// Where node `sender` stands in sending its state to `to` since `mark`: None if it has
/// not begun, Some(false) while sending, Some(true) once it logged the end.
fn sending_to(c: &ProcCluster, mark: &BTreeMap<u64, u64>, sender: u64, to: u64) -> Option<bool> {
    let lines = lines_from(&c.node(sender).log, mark.get(&sender).copied().unwrap_or(0));
    let begun = lines.iter().position(|l| {
        l.contains("sending this node's state to a peer") && field(l, "peer") == Some(to)
    })?;
    Some(
        lines[begun + 1..]
            .iter()
            .any(|l| l.contains("state sent to a peer")),
    )
}

/// A running, unpaused member other than the leader that is up to date: not catching up,
/// and within [`UP_TO_DATE`] entries of the leader's applied index (so that what the
/// fault does to it, not an earlier fault, puts it behind). Returns it with its decided
/// or applied index, whichever is higher, and the other members' compacted indexes.
async fn pick_follower<R: Rng>(
    cluster: &tokio::sync::Mutex<ProcCluster>,
    shared: &Shared,
    rng: &mut R,
) -> Result<(u64, u64, Vec<(u64, u64)>), NotLanded> {
    let deadline = Instant::now() + WAIT_TRIM;
    loop {
        {
            let c = cluster.lock().await;
            if let Some(leader) = c.leader().await {
                let live = c.live();
                let mut st = BTreeMap::new();
                for id in c.members() {
                    if let Some(s) = c.status(id).await {
                        st.insert(id, s);
                    }
                }
                let lead_applied = st.get(&leader).map_or(u64::MAX, |s| s.applied_index);
                // The whole cluster healthy and up to date: otherwise the others may make
                // no progress (and trim nothing) once F stops.
                let healthy = st.len() == c.members().len()
                    && st.iter().all(|(id, s)| {
                        live.contains(id)
                            && s.catching_up_from == 0
                            && s.applied_index + UP_TO_DATE >= lead_applied
                    });
                let mut ok: Vec<u64> = if healthy {
                    st.keys().copied().filter(|&id| id != leader).collect()
                } else {
                    Vec::new()
                };
                ok.shuffle(rng);
                if let Some(&f) = ok.first() {
                    let s = &st[&f];
                    let others = st
                        .iter()
                        .filter(|(&id, _)| id != f)
                        .map(|(&id, s)| (id, s.compacted_index))
                        .collect();
                    return Ok((f, s.applied_index.max(s.decided_index), others));
                }
            }
        }
        if Instant::now() > deadline {
            return Err(NotLanded::Missed(format!(
                "no up-to-date follower within {WAIT_TRIM:?}"
            )));
        }
        if !nap(Duration::from_millis(100), shared).await {
            return Err(NotLanded::Missed("the run ended".into()));
        }
    }
}

/// Sleeps `d` unless the run stops first; false if it stopped.
async fn nap(d: Duration, shared: &Shared) -> bool {
    tokio::time::sleep(d).await;
    !shared.stop.load(Ordering::Relaxed)
}

/// Waits until every member but `f` reports a compacted index above `behind` +
/// [`MARGIN`]. Returns their compacted indexes.
async fn wait_trimmed(
    cluster: &tokio::sync::Mutex<ProcCluster>,
    shared: &Shared,
    f: u64,
    behind: u64,
) -> Result<Vec<(u64, u64)>, NotLanded> {
    let deadline = Instant::now() + WAIT_TRIM;
    loop {
        {
            let c = cluster.lock().await;
            let others: Vec<u64> = c.members().into_iter().filter(|&i| i != f).collect();
            let mut trimmed = Vec::new();
            for &o in &others {
                if let Some(st) = c.status(o).await {
                    if st.compacted_index > behind + MARGIN {
                        trimmed.push((o, st.compacted_index));
                    }
                }
            }
            if !others.is_empty() && trimmed.len() == others.len() {
                return Ok(trimmed);
            }
        }
        if Instant::now() > deadline {
            return Err(NotLanded::Failed(format!(
                "the other members did not trim their logs past node {f}'s index {behind} + {MARGIN} within {WAIT_TRIM:?}"
            )));
        }
        if !nap(Duration::from_millis(100), shared).await {
            return Err(NotLanded::Missed("the run ended".into()));
        }
    }
}

/// `kill-transfer-sender` or `pause-transfer-sender` (see the module docs). Returns what
/// happened when the fault landed; the sender is left killed or paused for the heal.
pub async fn sender_fault<R: Rng>(
    fault: Fault,
    cluster: &tokio::sync::Mutex<ProcCluster>,
    shared: &Shared,
    fault_duration: Duration,
    rng: &mut R,
    log: &dyn Fn(String),
) -> Result<String, NotLanded> {
    let pause = fault == Fault::PauseTransferSender;
    let (f, behind, _) = pick_follower(cluster, shared, rng).await?;
    cluster.lock().await.kill(f).map_err(NotLanded::Failed)?;
    log(format!(
        "{fault}: killed follower {f} at index {behind} so that it falls behind the trimmed logs"
    ));
    let trimmed = wait_trimmed(cluster, shared, f, behind).await?;
    let marks = {
        let mut c = cluster.lock().await;
        let marks = mark(&c);
        c.spawn(f)
            .map_err(|e| NotLanded::Failed(format!("restarting node {f}: {e}")))?;
        marks
    };
    log(format!(
        "{fault}: others trimmed past it (node: compacted index) {trimmed:?}; restarted node {f}"
    ));
    let deadline = Instant::now() + WAIT_SENDER;
    let sender = loop {
        {
            let mut c = cluster.lock().await;
            let others: Vec<u64> = c.running().into_iter().filter(|&i| i != f).collect();
            let found = others
                .iter()
                .copied()
                .find(|&s| sending_to(&c, &marks, s, f) == Some(false));
            if let Some(s) = found {
                let res = if pause { c.pause(s) } else { c.kill(s) };
                res.map_err(NotLanded::Failed)?;
                let finished = sending_to(&c, &marks, s, f) == Some(true);
                if finished {
                    return Err(NotLanded::Missed(format!(
                        "node {s} had finished sending its state to node {f} when it was {}",
                        if pause { "paused" } else { "killed" }
                    )));
                }
                break s;
            }
            let done = others
                .iter()
                .find(|&&s| sending_to(&c, &marks, s, f) == Some(true));
            if let Some(s) = done {
                return Err(NotLanded::Missed(format!(
                    "node {s} sent its state to node {f} before the nemesis saw it begin"
                )));
            }
        }
        if Instant::now() > deadline {
            return Err(NotLanded::Missed(format!(
                "no node began sending its state to node {f} within {WAIT_SENDER:?}"
            )));
        }
        if !nap(Duration::from_millis(5), shared).await {
            return Err(NotLanded::Missed("the run ended".into()));
        }
    };
    let end = Instant::now() + fault_duration;
    while Instant::now() < end && nap(Duration::from_millis(50), shared).await {}
    if pause {
        // Still fetching from S at the end of the pause: the stream stalled throughout.
        let c = cluster.lock().await;
        let from = c.status(f).await.map(|st| st.catching_up_from);
        if from != Some(sender) {
            return Err(NotLanded::Missed(format!(
                "node {f} was not fetching from the paused node {sender} at the end of the pause (catching up from {from:?})"
            )));
        }
        Ok(format!(
            "paused node {sender} while it was sending its state to node {f}; node {f} still fetching from it at the end of the pause"
        ))
    } else {
        // The receiving side saw its stream break: F's fetch from S failed.
        let c = cluster.lock().await;
        let failed = lines_from(&c.node(f).log, marks.get(&f).copied().unwrap_or(0))
            .iter()
            .any(|l| l.contains("state fetch failed") && field(l, "peer") == Some(sender));
        if !failed {
            return Err(NotLanded::Missed(format!(
                "node {f}'s fetch from the killed node {sender} did not fail: the stream had ended"
            )));
        }
        Ok(format!(
            "killed node {sender} while it was sending its state to node {f}; node {f}'s fetch from it failed"
        ))
    }
}

/// `pause-past-retention` (see the module docs). Returns what happened; the follower is
/// running again when it returns Ok.
pub async fn pause_past_retention<R: Rng>(
    cluster: &tokio::sync::Mutex<ProcCluster>,
    shared: &Shared,
    rng: &mut R,
    log: &dyn Fn(String),
) -> Result<String, NotLanded> {
    let fault = Fault::PausePastRetention;
    let (f, applied, compacted) = pick_follower(cluster, shared, rng).await?;
    if compacted.iter().any(|&(_, c)| c > applied) {
        return Err(NotLanded::Missed(format!(
            "node {f} (index {applied}) was already behind a trimmed log {compacted:?}"
        )));
    }
    cluster.lock().await.pause(f).map_err(NotLanded::Failed)?;
    log(format!(
        "{fault}: paused follower {f} at index {applied}; the others' logs began at (node: compacted index) {compacted:?}"
    ));
    // What the others send F while it is paused waits in sockets and in their peer queues,
    // and F would catch up from it on resume without needing the trimmed entries: write
    // more than those hold (the queue drops messages beyond its byte bound).
    let filled = fill(shared).await;
    let trimmed = match filled {
        Ok(()) => wait_trimmed(cluster, shared, f, applied).await,
        Err(e) => Err(e),
    };
    let (marks, target) = {
        let mut c = cluster.lock().await;
        let marks = mark(&c);
        // Resumed whatever happened: the heal must not find it paused for nothing.
        if c.paused().contains(&f) {
            c.resume(f).map_err(NotLanded::Failed)?;
        }
        let target = c.applied().await.into_iter().flatten().max().unwrap_or(0);
        (marks, target)
    };
    let trimmed = trimmed?;
    log(format!(
        "{fault}: others trimmed past node {f} (node: compacted index) {trimmed:?}; resumed it, the others had applied {target}"
    ));
    let deadline = Instant::now() + CATCH_UP;
    loop {
        {
            let c = cluster.lock().await;
            let installed = lines_from(&c.node(f).log, marks.get(&f).copied().unwrap_or(0))
                .iter()
                .any(|l| l.contains("state installed"));
            let now = c.status(f).await.map(|st| st.applied_index);
            if installed && now.is_some_and(|a| a >= target) {
                return Ok(format!(
                    "paused follower {f} at index {applied} until the others trimmed past it {trimmed:?}; it caught up to {target} by a state transfer"
                ));
            }
            if Instant::now() > deadline {
                return Err(NotLanded::Failed(if now.is_some_and(|a| a >= target) {
                    format!("node {f} caught up to {target} without a state transfer, although the others had trimmed past its index {applied}")
                } else {
                    format!("node {f} did not catch up to {target} within {CATCH_UP:?} (applied {now:?}, state installed: {installed})")
                }));
            }
        }
        if !nap(Duration::from_millis(100), shared).await {
            return Err(NotLanded::Missed("the run ended".into()));
        }
    }
}

/// Bytes written while a follower is paused (see [`pause_past_retention`]): more than
/// a peer queue (64 MiB by default) and the sockets hold.
pub const FILL_BYTES: usize = 96 * BALLAST_VALUE_BYTES;

/// Overwrites the ballast keys with [`FILL_BYTES`] of new values (the state keeps its
/// size), four writes at a time, through the members' gRPC endpoints.
async fn fill(shared: &Shared) -> Result<(), NotLanded> {
    let (_, client) = shared
        .endpoints
        .client(0)
        .map_err(|e| NotLanded::Failed(e.to_string()))?;
    let value = vec![b'f'; BALLAST_VALUE_BYTES];
    let n = FILL_BYTES / BALLAST_VALUE_BYTES;
    for round in 0..n / 4 {
        if shared.stop.load(Ordering::Relaxed) {
            return Err(NotLanded::Missed("the run ended".into()));
        }
        let puts = (0..4).map(|i| {
            let key = format!("ballast/{}", (round * 4 + i) % BALLAST_VALUES);
            let (client, value) = (&client, &value);
            async move { client.put(key.as_bytes(), value, false).await }
        });
        // A write that fails is no harm: the trim is what is waited for next.
        futures::future::join_all(puts).await;
    }
    Ok(())
}

/// Loads the ballast that makes every state transfer last long enough to be caught.
pub async fn load_ballast(client: &crate::client::Client, seed: u64) -> crate::error::Result<()> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xba11a57);
    let values: Vec<Vec<u8>> = (0..BALLAST_VALUES)
        .map(|_| {
            let mut v = vec![0u8; BALLAST_VALUE_BYTES];
            rng.fill(&mut v[..]);
            v
        })
        .collect();
    // A put whose outcome is unknown (1 MB on a loaded machine can outlast the client's
    // timeout) is sent again: writing the same value to the same key twice is harmless.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for (chunk_no, chunk) in values.chunks(4).enumerate() {
        let puts = chunk.iter().enumerate().map(|(i, v)| async move {
            let key = format!("ballast/{}", chunk_no * 4 + i);
            loop {
                match client.put(key.as_bytes(), v, false).await {
                    Err(crate::error::Error::OutcomeUnknown(_))
                        if std::time::Instant::now() < deadline => {}
                    r => return r,
                }
            }
        });
        for r in futures::future::join_all(puts).await {
            r?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields_parse() {
        let l = "2026-11-30T04:06:00.511852Z  INFO sending this node's state to a peer that is behind peer=3";
        assert_eq!(field(l, "peer"), Some(3));
        assert_eq!(field(l, "from"), None);
        let w = "WARN state fetch failed peer=2: unavailable: state stream from node 2: eof";
        assert_eq!(field(w, "peer"), None, "a field glued to text is not taken");
    }
}
